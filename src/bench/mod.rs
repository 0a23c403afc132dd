//! Benchmarks as commands (`berth bench NAME`): each prints a human table and, last, one JSON line.
//!
//! - [`scheduling`]: B1, the Karpenter-shaped scheduling benchmark on a synthetic 400-type catalog;
//! - [`packing`]: B2, plan cost against the fractional lower bound on the bundled us-east-1 catalog;
//! - [`launch`]: a burst of machine launches against the simulated cloud with EC2's real rate limits;
//! - [`reaction`]: B3, pending pod to launch call with the controllers, the emulator and the simulated cloud;
//! - [`footprint`]: B4, berth's memory and time to a first decision in a large emulated cluster;
//! - [`chaos`]: berth crashed at random moments, under API and cloud faults, and a ledger of what went wrong.

pub mod chaos;
pub mod footprint;
pub mod launch;
pub mod packing;
pub mod reaction;
pub mod scheduling;

use crate::model::instance_type::Catalog;
use crate::scheduling::Plan;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("workload {path}: {message}")]
    Workload { path: String, message: String },
    #[error(transparent)]
    Catalog(#[from] crate::model::aws_catalog::AwsCatalogError),
    #[error(transparent)]
    Scheduling(#[from] crate::scheduling::SchedulingError),
}

impl BenchError {
    pub fn category(&self) -> &'static str {
        match self {
            BenchError::Write { .. } => "write",
            BenchError::Read { .. } => "read",
            BenchError::Workload { .. } => "workload",
            BenchError::Catalog(_) => "catalog",
            BenchError::Scheduling(_) => "scheduling",
        }
    }
}

/// Deterministic ([`crate::fx::splitmix64`]), so runs with one seed are identical.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        crate::fx::splitmix64(&mut self.0)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `instance-types.json` of a dump: what the types offer and cost.
pub fn instance_types_json(catalog: &Catalog, root_volume: u64) -> Value {
    let types: Vec<Value> = catalog
        .instance_types
        .iter()
        .map(|t| {
            let alloc = t.allocatable(root_volume);
            let (cpu, mem) = match &t.allocatable_override {
                Some(_) => (t.vcpu as u64 * 1000, t.memory_mib << 20),
                None => (t.vcpu as u64 * 1000, t.memory_mib << 20),
            };
            json!({
                "name": t.name,
                "cpu": t.vcpu,
                "memory": mem,
                "maxPods": alloc.pods,
                "allocatable": {"cpu": alloc.cpu_millis, "memory": alloc.memory_bytes, "pods": alloc.pods},
                "overhead": {"cpu": cpu.saturating_sub(alloc.cpu_millis), "memory": mem.saturating_sub(alloc.memory_bytes)},
                "offerings": t.offerings.iter().map(|o| json!({"zone": o.zone, "capacityType": o.capacity_type.as_str(), "price": o.price})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!(types)
}

/// `plan.json` of a dump.
pub fn plan_json(plan: &Plan) -> Value {
    let strip = |k: &str| {
        k.split_once('/')
            .map_or(k.to_string(), |(_, n)| n.to_string())
    };
    json!({
        "nodes": plan.new_machines.iter().map(|m| json!({
            "name": m.name, "instanceType": m.instance_type, "zone": m.zone, "capacityType": m.capacity_type.as_str(),
            "price": m.price, "instanceTypes": m.instance_types, "pods": m.pods.iter().map(|p| strip(p)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "existing": plan.assignments.iter().map(|a| json!({"pod": strip(&a.pod), "node": a.node})).collect::<Vec<_>>(),
        "unscheduled": plan.unschedulable.iter().map(|u| json!({"pod": strip(&u.pod), "reason": u.reason})).collect::<Vec<_>>(),
    })
}

pub fn write_json(dir: &Path, name: &str, value: &Value) -> Result<(), BenchError> {
    let path = dir.join(name);
    let err = |source| BenchError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(&path, text).map_err(|source| BenchError::Write {
        path: path.display().to_string(),
        source,
    })
}
