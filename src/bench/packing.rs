//! B2: plan cost against the fractional lower bound on the bundled us-east-1 catalog (on-demand prices,
//! current generation, no bare metal, no GPU), for seeded workload mixes or a workload file.

use super::{instance_types_json, plan_json, write_json, BenchError, Rng};
use crate::model::aws_catalog::{bundled_catalog, CatalogFilter};
use crate::model::instance_type::{labels, Catalog, DEFAULT_ROOT_VOLUME_BYTES};
use crate::model::pod::Pod;
use crate::model::requirements::Requirements;
use crate::scheduling::lp::max_packing;
use crate::scheduling::{solve, NodeGroup, Plan, Snapshot};
use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};
use std::path::Path;

/// The fractional optimum: min Σ p_t x_t with Σ cpu_t x_t ≥ C and Σ mem_t x_t ≥ M, x ≥ 0. An optimal basis has
/// at most two types, so every single type and every pair is tried.
pub fn lower_bound(types: &[(f64, f64, f64)], cpu: f64, mem: f64) -> f64 {
    let mut best = f64::INFINITY;
    for &(c, m, p) in types {
        if c > 0.0 && m > 0.0 {
            best = best.min(p * (cpu / c).max(mem / m));
        }
    }
    for (i, &(c1, m1, p1)) in types.iter().enumerate() {
        for &(c2, m2, p2) in &types[i + 1..] {
            let det = c1 * m2 - c2 * m1;
            if det.abs() < 1e-12 {
                continue;
            }
            let x1 = (cpu * m2 - c2 * mem) / det;
            let x2 = (c1 * mem - cpu * m1) / det;
            if x1 >= 0.0 && x2 >= 0.0 {
                best = best.min(p1 * x1 + p2 * x2);
            }
        }
    }
    best
}

/// A pod size class for the whole-pod bound: `count` pods each need at least `cpu` millis and `mem` bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeClass {
    pub cpu: f64,
    pub mem: f64,
    pub count: f64,
}

/// A node type for the whole-pod bound: allocatable cpu millis, memory bytes, pod slots, and $/h.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundType {
    pub cpu: f64,
    pub mem: f64,
    pub pods: f64,
    pub price: f64,
}

/// A lower bound on the cost of any plan that places whole pods: the fractional LP above plus, for every size
/// class, Σ k_t · x_t ≥ count, where k_t is how many pods of at least that size fit on one node of type t
/// (⌊cpu_t / cpu⌋, ⌊mem_t / mem⌋ and the pod slots, whichever is least). Every integral plan satisfies each of
/// these rows (its node counts are an x), so the LP optimum is a valid bound; unlike the fractional one it knows
/// that three 16-vCPU pods, not four, fit on a 64-vCPU node. Infinite when some class fits no type.
pub fn integral_bound(types: &[BoundType], cpu: f64, mem: f64, classes: &[SizeClass]) -> f64 {
    // The LP's dual, max Σ demand_j · y_j s.t. Σ_j coeff_tj · y_j ≤ price_t, y ≥ 0, starts feasible at y = 0 (prices
    // are non-negative), so one simplex phase solves it; its optimum equals the primal minimum. Units are cores
    // and GiB so the tableau stays well scaled.
    const GIB: f64 = (1u64 << 30) as f64;
    let mut demand = vec![cpu / 1000.0, mem / GIB];
    let mut rows: Vec<Vec<f64>> = types
        .iter()
        .map(|t| vec![t.cpu / 1000.0, t.mem / GIB])
        .collect();
    for c in classes {
        if c.count <= 0.0 {
            continue;
        }
        demand.push(c.count);
        for (row, t) in rows.iter_mut().zip(types) {
            let mut k = t.pods;
            if c.cpu > 0.0 {
                k = k.min((t.cpu / c.cpu).floor());
            }
            if c.mem > 0.0 {
                k = k.min((t.mem / c.mem).floor());
            }
            row.push(k.max(0.0));
        }
    }
    let prices: Vec<f64> = types.iter().map(|t| t.price).collect();
    // None when some class fits no type (the LP is unbounded) or the solver's pivot budget runs out: no finite bound.
    max_packing(&rows, &prices, &demand).map_or(f64::INFINITY, |o| o.value)
}

/// A seeded workload: deployments as (name, replicas, cpu millis, memory MiB) with an optional constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    None,
    ZoneSpread,
    HostnameAntiAffinity,
}

fn deployment_pods(
    name: &str,
    replicas: usize,
    cpu_m: u64,
    mem_mi: u64,
    constraint: Constraint,
) -> Vec<Value> {
    (0..replicas)
        .map(|i| {
            let mut p = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{name}-{i}"), "namespace": "bench", "labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app",
                    "resources": {"requests": {"cpu": format!("{cpu_m}m"), "memory": format!("{mem_mi}Mi")}}}]}
            });
            match constraint {
                Constraint::None => {}
                Constraint::ZoneSpread => {
                    p["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": labels::ZONE,
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": name}}}]);
                }
                Constraint::HostnameAntiAffinity => {
                    p["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": name}}, "topologyKey": labels::HOSTNAME}]}});
                }
            }
            p
        })
        .collect()
}

/// The seeded mixes: name, constrained, pod objects.
pub fn workloads(seed: u64) -> Vec<(String, bool, Vec<Value>)> {
    let mut rng = Rng::new(seed);
    let mut mix = |name: &str,
                   deployments: usize,
                   shapes: &[(u64, u64)],
                   replicas: (usize, usize),
                   constraint: Constraint| {
        let mut pods = vec![];
        for d in 0..deployments {
            let (cpu, mem) = *rng.pick(shapes);
            let n = replicas.0 + rng.below(replicas.1 - replicas.0 + 1);
            pods.extend(deployment_pods(
                &format!("{name}-{d}"),
                n,
                cpu,
                mem,
                constraint,
            ));
        }
        (name.to_string(), constraint != Constraint::None, pods)
    };
    let web = [
        (100, 128),
        (250, 256),
        (250, 512),
        (500, 512),
        (500, 1024),
        (1000, 2048),
    ];
    let batch = [
        (2000, 4096),
        (4000, 8192),
        (8000, 16384),
        (16000, 32768),
        (16000, 65536),
    ];
    let caches = [(1000, 8192), (2000, 16384), (4000, 32768), (500, 4096)];
    let general: Vec<(u64, u64)> = web.iter().chain(&batch).chain(&caches).copied().collect();
    vec![
        mix("web-mix", 30, &web, (5, 60), Constraint::None),
        mix("batch-mix", 12, &batch, (2, 20), Constraint::None),
        mix("memory-heavy", 12, &caches, (3, 25), Constraint::None),
        mix("general-mix", 40, &general, (2, 40), Constraint::None),
        mix("large-web", 60, &web, (50, 200), Constraint::None),
        mix("zone-spread-web", 20, &web, (6, 40), Constraint::ZoneSpread),
        mix(
            "hostname-anti-general",
            20,
            &general,
            (3, 12),
            Constraint::HostnameAntiAffinity,
        ),
    ]
}

/// Pods from a workload file: Pod or Deployment objects, YAML or JSON, one document, several, or a List.
pub fn load_workload(path: &Path) -> Result<Vec<Value>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |message: String| BenchError::Workload {
        path: path.display().to_string(),
        message,
    };
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let mut pods = vec![];
    while let Some(v) = docs.pop() {
        match v.get("kind").and_then(Value::as_str) {
            Some("List") | Some("PodList") | Some("DeploymentList") => {
                docs.extend(
                    v.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            Some("Pod") => pods.push(v),
            Some("Deployment") => {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("a Deployment has no metadata.name".into()))?;
                let replicas = v
                    .pointer("/spec/replicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(1);
                let template = v
                    .pointer("/spec/template")
                    .cloned()
                    .ok_or_else(|| bad(format!("Deployment {name} has no spec.template")))?;
                let ns = v
                    .pointer("/metadata/namespace")
                    .cloned()
                    .unwrap_or(json!("default"));
                for i in 0..replicas {
                    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(Value::Null)});
                    p["metadata"]["name"] = json!(format!("{name}-{i}"));
                    p["metadata"]["namespace"] = ns.clone();
                    pods.push(p);
                }
            }
            other => {
                return Err(bad(format!(
                    "unsupported kind {other:?}; expected Pod, Deployment or a List"
                )))
            }
        }
    }
    pods.reverse();
    Ok(pods)
}

fn to_pods(objects: &[Value], path: &str) -> Result<Vec<Pod>, BenchError> {
    objects
        .iter()
        .map(|v| {
            let p: core::Pod =
                serde_json::from_value(v.clone()).map_err(|e| BenchError::Workload {
                    path: path.into(),
                    message: e.to_string(),
                })?;
            Pod::from_k8s(&p).map_err(|e| BenchError::Workload {
                path: path.into(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// The B2 catalog: bundled us-east-1, current generation, no metal, GPU only if asked, and no burstable (t*)
/// types: their nominal vCPUs are not sustained capacity, and the fractional bound would otherwise buy cpu from
/// t4g.nano (2 vCPU, 15 MiB allocatable) at a tenth of any real node's price per vCPU.
pub fn catalog(include_gpu: bool) -> Result<Catalog, BenchError> {
    Ok(CatalogFilter {
        include_gpu,
        include_burstable: false,
        ..Default::default()
    }
    .apply(&bundled_catalog("us-east-1")?))
}

/// One on-demand node group over the whole catalog.
pub fn group(catalog: &Catalog) -> NodeGroup {
    let mut g = NodeGroup::new(
        "general",
        catalog
            .instance_types
            .iter()
            .map(|t| t.name.clone())
            .collect(),
    );
    let mut r = Requirements::new();
    r.add_expression(labels::CAPACITY_TYPE, "In", &["on-demand".to_string()])
        .unwrap_or_default();
    g.requirements = r;
    g
}

#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub constrained: bool,
    pub pods: usize,
    pub nodes: usize,
    pub cost: f64,
    pub bound: f64,
    /// The whole-pod bound ([`integral_bound`]): at least `bound`; no plan of whole pods costs less.
    pub integral_bound: f64,
    pub cpu_util: f64,
    pub mem_util: f64,
    pub unscheduled: usize,
    pub seconds: f64,
}

/// One size class per distinct (cpu, memory) request, counting every pod at least that large in both.
pub fn size_classes(pods: &[Pod]) -> Vec<SizeClass> {
    let mut shapes: std::collections::BTreeMap<(u64, u64), u64> = std::collections::BTreeMap::new();
    for p in pods {
        *shapes
            .entry((p.spec.requests.cpu_millis, p.spec.requests.memory_bytes))
            .or_default() += 1;
    }
    shapes
        .keys()
        .map(|&(c, m)| SizeClass {
            cpu: c as f64,
            mem: m as f64,
            count: shapes
                .iter()
                .filter(|((c2, m2), _)| *c2 >= c && *m2 >= m)
                .map(|(_, n)| *n as f64)
                .sum(),
        })
        .collect()
}

pub fn evaluate(
    name: &str,
    constrained: bool,
    objects: &[Value],
    dump: Option<&Path>,
) -> Result<Row, BenchError> {
    let pods = to_pods(objects, name)?;
    let gpu = pods
        .iter()
        .any(|p| p.spec.requests.extended.values().any(|v| *v > 0));
    let catalog = catalog(gpu)?;
    let g = group(&catalog);
    let (cpu, mem): (u64, u64) = pods.iter().fold((0, 0), |(c, m), p| {
        (
            c + p.spec.requests.cpu_millis,
            m + p.spec.requests.memory_bytes,
        )
    });
    let snap = Snapshot {
        pending: pods,
        groups: vec![g.clone()],
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let plan: Plan = solve(
        &snap,
        &catalog,
        crate::clock::Clock::now(&crate::clock::SystemClock),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let lp: Vec<(f64, f64, f64)> = catalog
        .instance_types
        .iter()
        .filter_map(|t| {
            let a = t.allocatable(DEFAULT_ROOT_VOLUME_BYTES);
            let p = t
                .cheapest_offering(|o| {
                    o.capacity_type == crate::model::instance_type::CapacityType::OnDemand
                })?
                .price;
            Some((a.cpu_millis as f64, a.memory_bytes as f64, p))
        })
        .collect();
    let bound = lower_bound(&lp, cpu as f64, mem as f64);
    let whole: Vec<BoundType> = catalog
        .instance_types
        .iter()
        .filter_map(|t| {
            let a = t.allocatable(DEFAULT_ROOT_VOLUME_BYTES);
            let p = t
                .cheapest_offering(|o| {
                    o.capacity_type == crate::model::instance_type::CapacityType::OnDemand
                })?
                .price;
            Some(BoundType {
                cpu: a.cpu_millis as f64,
                mem: a.memory_bytes as f64,
                pods: a.pods as f64,
                price: p,
            })
        })
        .collect();
    let integral = integral_bound(&whole, cpu as f64, mem as f64, &size_classes(&snap.pending));
    let (mut used_c, mut used_m, mut alloc_c, mut alloc_m) = (0f64, 0f64, 0f64, 0f64);
    let by_key: std::collections::HashMap<String, &Pod> =
        snap.pending.iter().map(|p| (p.key(), p)).collect();
    for m in &plan.new_machines {
        if let Some(t) = catalog.get(&m.instance_type) {
            let a = t.allocatable(DEFAULT_ROOT_VOLUME_BYTES);
            alloc_c += a.cpu_millis as f64;
            alloc_m += a.memory_bytes as f64;
        }
        for k in &m.pods {
            if let Some(p) = by_key.get(k) {
                used_c += p.spec.requests.cpu_millis as f64;
                used_m += p.spec.requests.memory_bytes as f64;
            }
        }
    }
    if let Some(dir) = dump {
        let dir = dir.join(name);
        write_json(&dir, "pods.json", &json!(objects))?;
        write_json(
            &dir,
            "instance-types.json",
            &instance_types_json(&catalog, DEFAULT_ROOT_VOLUME_BYTES),
        )?;
        write_json(&dir, "plan.json", &plan_json(&plan))?;
    }
    Ok(Row {
        workload: name.to_string(),
        constrained,
        pods: snap.pending.len(),
        nodes: plan.new_machines.len(),
        cost: plan.new_cost_per_hour(),
        bound,
        integral_bound: integral,
        cpu_util: used_c / alloc_c.max(1.0),
        mem_util: used_m / alloc_m.max(1.0),
        unscheduled: plan.unschedulable.len(),
        seconds,
    })
}

/// Runs B2 on the seeded mixes, or on one workload file. Returns whether every unconstrained mix met the
/// targets (ratio ≤ 1.10, binding utilisation ≥ 0.85) with no pod left out.
pub fn run(pods_file: Option<&Path>, seed: u64, dump: Option<&Path>) -> Result<bool, BenchError> {
    let inputs = match pods_file {
        Some(path) => {
            let name = path
                .file_stem()
                .map_or("workload".to_string(), |s| s.to_string_lossy().to_string());
            let objects = load_workload(path)?;
            let constrained = objects.iter().any(|o| {
                o.pointer("/spec/affinity").is_some()
                    || o.pointer("/spec/topologySpreadConstraints").is_some()
            });
            vec![(name, constrained, objects)]
        }
        None => workloads(seed),
    };
    let mut rows = vec![];
    for (name, constrained, objects) in &inputs {
        rows.push(evaluate(name, *constrained, objects, dump)?);
    }
    println!(
        "{:<24} {:>5} {:>6} {:>6} {:>10} {:>10} {:>6} {:>10} {:>7} {:>6} {:>6} {:>7} {:>8}",
        "workload",
        "cons",
        "pods",
        "nodes",
        "$/h",
        "bound",
        "ratio",
        "int.bnd",
        "i.ratio",
        "cpu",
        "mem",
        "unsched",
        "seconds"
    );
    let mut ok = true;
    for r in &rows {
        let ratio = r.cost / r.bound;
        println!(
            "{:<24} {:>5} {:>6} {:>6} {:>10.3} {:>10.3} {:>6.3} {:>10.3} {:>7.3} {:>6.3} {:>6.3} {:>7} {:>8.4}",
            r.workload, r.constrained, r.pods, r.nodes, r.cost, r.bound, ratio, r.integral_bound, r.cost / r.integral_bound, r.cpu_util, r.mem_util, r.unscheduled, r.seconds
        );
        if !r.constrained
            && (ratio > 1.10 || r.cpu_util.max(r.mem_util) < 0.85 || r.unscheduled > 0)
        {
            ok = false;
        }
    }
    let results: Vec<Value> = rows
        .iter()
        .map(|r| json!({"workload": r.workload, "constrained": r.constrained, "pods": r.pods, "nodes": r.nodes,
            "cost_per_hour": r.cost, "lower_bound": r.bound, "ratio": r.cost / r.bound,
            "integral_bound": r.integral_bound, "integral_ratio": r.cost / r.integral_bound,
            "cpu_utilization": r.cpu_util, "memory_utilization": r.mem_util, "unscheduled": r.unscheduled}))
        .collect();
    println!("{}", json!({"bench": "packing", "results": results}));
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_bound_mixes_two_types() {
        // cpu-type: 4 cpu, 1 mem, $1; mem-type: 1 cpu, 4 mem, $1. Demand 5 cpu, 5 mem: one of each, $2.
        let types = [(4.0, 1.0, 1.0), (1.0, 4.0, 1.0), (4.0, 4.0, 3.0)];
        assert!((lower_bound(&types, 5.0, 5.0) - 2.0).abs() < 1e-9);
        // Only cpu: 1.25 of the cpu type.
        assert!((lower_bound(&types, 5.0, 0.0) - 1.25).abs() < 1e-9);
    }

    fn bt(cpu: f64, mem: f64, price: f64) -> BoundType {
        BoundType {
            cpu,
            mem,
            pods: 110.0,
            price,
        }
    }

    #[test]
    fn integral_bound_without_classes_is_the_fractional_bound() {
        let types = [
            (4000.0, 1.0e9, 1.0),
            (1000.0, 4.0e9, 1.0),
            (4000.0, 4.0e9, 3.0),
            (8000.0, 3.0e9, 1.7),
        ];
        let whole: Vec<BoundType> = types.iter().map(|&(c, m, p)| bt(c, m, p)).collect();
        for (cpu, mem) in [
            (5000.0, 5.0e9),
            (5000.0, 0.0),
            (0.0, 7.0e9),
            (123_000.0, 17.0e9),
        ] {
            let (f, i) = (
                lower_bound(&types, cpu, mem),
                integral_bound(&whole, cpu, mem, &[]),
            );
            assert!((f - i).abs() < 1e-6 * f.max(1.0), "{cpu} {mem}: {f} vs {i}");
        }
    }

    #[test]
    fn integral_bound_counts_whole_pods_per_node() {
        // 63.77 allocatable cores: four 16-core pods need two nodes, not the 1.004 the fractional bound buys.
        let types = [bt(63_770.0, 120.0e9, 1.0)];
        let classes = [SizeClass {
            cpu: 16_000.0,
            mem: 30.0e9,
            count: 4.0,
        }];
        let frac = lower_bound(&[(63_770.0, 120.0e9, 1.0)], 64_000.0, 120.0e9);
        let whole = integral_bound(&types, 64_000.0, 120.0e9, &classes);
        assert!((frac - 64_000.0 / 63_770.0).abs() < 1e-9);
        // The LP allows 4/3 nodes: a bound, not the integral optimum (2), but far tighter than 1.004.
        assert!((whole - 4.0 / 3.0).abs() < 1e-9, "{whole}");
        // A class no type holds makes every plan infeasible.
        let too_big = [SizeClass {
            cpu: 70_000.0,
            mem: 1.0,
            count: 1.0,
        }];
        assert!(integral_bound(&types, 70_000.0, 1.0, &too_big).is_infinite());
    }

    #[test]
    fn size_classes_count_every_pod_at_least_as_large() {
        let pod = |cpu: u64, mem: u64| {
            Pod::new(
                "bench",
                "p",
                crate::model::resources::Resources {
                    cpu_millis: cpu,
                    memory_bytes: mem,
                    ..Default::default()
                },
            )
        };
        let classes = size_classes(&[pod(1000, 10), pod(1000, 10), pod(2000, 5), pod(2000, 20)]);
        let count = |c: f64, m: f64| {
            classes
                .iter()
                .find(|k| k.cpu == c && k.mem == m)
                .map(|k| k.count)
        };
        assert_eq!(classes.len(), 3);
        assert_eq!(count(1000.0, 10.0), Some(3.0));
        assert_eq!(count(2000.0, 5.0), Some(2.0));
        assert_eq!(count(2000.0, 20.0), Some(1.0));
    }

    #[test]
    fn workload_files_accept_deployments_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: a, resources: {requests: {cpu: 500m}}}]\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: []}}\n").unwrap();
        let pods = load_workload(&path).unwrap();
        assert_eq!(pods.len(), 4);
        std::fs::write(&path, "kind: Service\nmetadata: {name: s}\n").unwrap();
        assert_eq!(load_workload(&path).unwrap_err().category(), "workload");
    }
}
