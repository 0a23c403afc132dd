//! B1: the Karpenter-shaped scheduling benchmark (see BENCHMARKS.md): 400 synthetic instance types, one node
//! group, "diverse" pods in five kinds and the "preference" pods; solve time per size.

use super::{instance_types_json, plan_json, write_json, BenchError, Rng};
use crate::model::instance_type::{Arch, CapacityType, Catalog, InstanceType, Offering};
use crate::model::pod::Pod;
use crate::model::resources::Resources;
use crate::scheduling::{solve, NodeGroup, Plan, Snapshot};
use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

pub const SIZES: [usize; 9] = [1, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000];
pub const PREFERENCE_PODS: usize = 4_000;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const LABEL_VALUES: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];
const CPUS: [&str; 5] = ["100m", "250m", "500m", "1000m", "1500m"];
const MEMS: [&str; 6] = ["100Mi", "256Mi", "512Mi", "1Gi", "2Gi", "4Gi"];
const ZONE: &str = "topology.kubernetes.io/zone";
const HOSTNAME: &str = "kubernetes.io/hostname";

/// The 400 `fake-it-{i}` types.
pub fn catalog() -> Catalog {
    let mut types = vec![];
    for i in 0..400u64 {
        let cpu = i + 1;
        let mem = 2 * cpu * GIB;
        let price = 0.1 * cpu as f64 + 0.1 * mem as f64 / 1e9;
        let offering = |zone: &str, ct| Offering {
            zone: zone.into(),
            capacity_type: ct,
            price,
            available: true,
        };
        types.push(InstanceType {
            name: format!("fake-it-{i}"),
            vcpu: cpu as u32,
            memory_mib: mem / MIB,
            arch: Arch::Amd64,
            gpus: 0,
            gpu_manufacturer: None,
            max_network_interfaces: 0,
            ipv4_per_interface: 0,
            current_generation: true,
            bare_metal: false,
            burstable: false,
            local_storage_gb: 0,
            offerings: vec![
                offering("zone-1", CapacityType::Spot),
                offering("zone-2", CapacityType::Spot),
                offering("zone-1", CapacityType::OnDemand),
                offering("zone-2", CapacityType::OnDemand),
                offering("zone-3", CapacityType::OnDemand),
            ],
            allocatable_override: Some(Resources {
                cpu_millis: cpu * 1000 - 100,
                memory_bytes: mem - 10 * MIB,
                ephemeral_bytes: 100 * GIB,
                pods: 10 * cpu,
                ..Default::default()
            }),
        });
    }
    Catalog {
        instance_types: types,
    }
}

fn base_pod(name: &str, labels: Value, rng: &mut Rng) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "pause",
            "resources": {"requests": {"cpu": rng.pick(&CPUS), "memory": rng.pick(&MEMS)}}}]}
    })
}

fn spread(key: &str, rng: &mut Rng) -> Value {
    json!([{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"my-label": rng.pick(&LABEL_VALUES)}}}])
}

/// N diverse pods as Kubernetes objects: five equal parts (generic, zone spread, hostname spread, zone
/// affinity, hostname anti-affinity), the remainder generic.
pub fn diverse_pods(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = Rng::new(seed);
    let part = n / 5;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kind = if i < 4 * part { i / part.max(1) + 1 } else { 0 };
        let name = format!("pod-{i}");
        let pod = match kind {
            1 => {
                let mut p = base_pod(
                    &name,
                    json!({"my-label": rng.pick(&LABEL_VALUES)}),
                    &mut rng,
                );
                p["spec"]["topologySpreadConstraints"] = spread(ZONE, &mut rng);
                p
            }
            2 => {
                let mut p = base_pod(
                    &name,
                    json!({"my-label": rng.pick(&LABEL_VALUES)}),
                    &mut rng,
                );
                p["spec"]["topologySpreadConstraints"] = spread(HOSTNAME, &mut rng);
                p
            }
            3 => {
                let v = *rng.pick(&LABEL_VALUES);
                let mut p = base_pod(&name, json!({"my-affininity": v}), &mut rng);
                p["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"my-affininity": v}}, "topologyKey": ZONE}]}});
                p
            }
            4 => {
                let mut p = base_pod(&name, json!({"app": "nginx"}), &mut rng);
                p["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "nginx"}}, "topologyKey": HOSTNAME}]}});
                p
            }
            _ => base_pod(
                &name,
                json!({"my-label": rng.pick(&LABEL_VALUES)}),
                &mut rng,
            ),
        };
        out.push(pod);
    }
    out
}

/// The preference pods: preferred zone-1, preferred anti-affinity to app=nginx (weight 10 zone, 1 hostname).
pub fn preference_pods(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut p = base_pod(&format!("pref-{i}"), json!({"app": "nginx"}), &mut rng);
            p["spec"]["affinity"] = json!({
                "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["zone-1"]}]}}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "nginx"}}, "topologyKey": ZONE}},
                    {"weight": 1, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "nginx"}}, "topologyKey": HOSTNAME}}]}
            });
            p
        })
        .collect()
}

pub fn to_pods(objects: &[Value]) -> Result<Vec<Pod>, BenchError> {
    objects
        .iter()
        .map(|v| {
            let p: core::Pod =
                serde_json::from_value(v.clone()).map_err(|e| BenchError::Workload {
                    path: "generated".into(),
                    message: e.to_string(),
                })?;
            Pod::from_k8s(&p).map_err(|e| BenchError::Workload {
                path: "generated".into(),
                message: e.to_string(),
            })
        })
        .collect()
}

pub fn snapshot(catalog: &Catalog, pods: Vec<Pod>, respect_preferences: bool) -> Snapshot {
    let group = NodeGroup::new(
        "default",
        catalog
            .instance_types
            .iter()
            .map(|t| t.name.clone())
            .collect(),
    );
    Snapshot {
        pending: pods,
        groups: vec![group],
        respect_preferences,
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub kind: &'static str,
    pub pods: usize,
    pub nodes: usize,
    pub seconds: f64,
    pub unscheduled: usize,
    pub cost: f64,
}

fn measure(
    kind: &'static str,
    catalog: &Catalog,
    objects: &[Value],
    respect: bool,
    runs: usize,
    dump: Option<&Path>,
) -> Result<Row, BenchError> {
    let pods = to_pods(objects)?;
    let n = pods.len();
    let snap = snapshot(catalog, pods, respect);
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let mut times = vec![];
    let mut plan = Plan::default();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        plan = solve(&snap, catalog, now)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    if let Some(dir) = dump {
        write_json(dir, "pods.json", &json!(objects))?;
        write_json(dir, "instance-types.json", &instance_types_json(catalog, 0))?;
        write_json(dir, "plan.json", &plan_json(&plan))?;
    }
    Ok(Row {
        kind,
        pods: n,
        nodes: plan.new_machines.len(),
        seconds: times[times.len() / 2],
        unscheduled: plan.unschedulable.len(),
        cost: plan.new_cost_per_hour(),
    })
}

/// Runs B1 and prints the table and the JSON line. `pods`: one diverse size instead of all; `preference`: only
/// the preference runs. Returns false when a pod was left unscheduled.
pub fn run(
    pods: Option<usize>,
    preference: bool,
    dump: Option<&Path>,
    seed: u64,
) -> Result<bool, BenchError> {
    let catalog = catalog();
    let mut rows = vec![];
    if !preference {
        let sizes: Vec<usize> = pods.map_or(SIZES.to_vec(), |n| vec![n]);
        for n in sizes {
            let runs = if n <= 5_000 { 5 } else { 3 };
            rows.push(measure(
                "diverse",
                &catalog,
                &diverse_pods(n, seed),
                true,
                runs,
                dump,
            )?);
        }
    }
    if preference || pods.is_none() {
        let n = if preference {
            pods.unwrap_or(PREFERENCE_PODS)
        } else {
            PREFERENCE_PODS
        };
        let objects = preference_pods(n, seed);
        rows.push(measure(
            "preference-respect",
            &catalog,
            &objects,
            true,
            3,
            dump,
        )?);
        rows.push(measure(
            "preference-ignore",
            &catalog,
            &objects,
            false,
            3,
            None,
        )?);
    }
    println!(
        "{:<20} {:>7} {:>7} {:>10} {:>11} {:>11} {:>10}",
        "kind", "pods", "nodes", "seconds", "pods/s", "unscheduled", "$/h"
    );
    for r in &rows {
        println!(
            "{:<20} {:>7} {:>7} {:>10.4} {:>11.0} {:>11} {:>10.2}",
            r.kind,
            r.pods,
            r.nodes,
            r.seconds,
            r.pods as f64 / r.seconds,
            r.unscheduled,
            r.cost
        );
    }
    let results: Vec<Value> = rows
        .iter()
        .map(|r| json!({"kind": r.kind, "pods": r.pods, "nodes": r.nodes, "seconds": r.seconds, "pods_per_sec": (r.pods as f64 / r.seconds).round(), "unscheduled": r.unscheduled}))
        .collect();
    println!("{}", json!({"bench": "scheduling", "results": results}));
    Ok(rows.iter().all(|r| r.unscheduled == 0))
}
