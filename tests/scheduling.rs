//! Golden plans, Kubernetes documentation examples and property tests for the scheduling core.

use berth::model::instance_type::{labels, Arch, CapacityType, Catalog, InstanceType, Offering};
use berth::model::node::Node;
use berth::model::pod::Pod;
use berth::model::resources::Resources;
use berth::model::taints::{Taint, TaintEffect, Toleration};
use berth::scheduling::verify::verify;
use berth::scheduling::{
    solve, ExistingNode, Expander, InFlightMachine, NodeGroup, Plan, Snapshot,
};
use chrono::Utc;
use k8s_openapi::api::core::v1 as core;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;

fn it(name: &str, cpu: u64, mem_gib: u64, price: f64, zones: &[&str]) -> InstanceType {
    InstanceType {
        name: name.into(),
        vcpu: cpu as u32,
        memory_mib: mem_gib * 1024,
        arch: Arch::Amd64,
        gpus: 0,
        gpu_manufacturer: None,
        max_network_interfaces: 0,
        ipv4_per_interface: 0,
        current_generation: true,
        bare_metal: false,
        burstable: false,
        local_storage_gb: 0,
        offerings: zones
            .iter()
            .map(|z| Offering {
                zone: z.to_string(),
                capacity_type: CapacityType::OnDemand,
                price,
                available: true,
            })
            .collect(),
        allocatable_override: Some(Resources {
            cpu_millis: cpu * 1000,
            memory_bytes: mem_gib * GIB,
            ephemeral_bytes: 100 * GIB,
            pods: 10 * cpu,
            ..Default::default()
        }),
    }
}

fn catalog() -> Catalog {
    let z = ["a", "b", "c"];
    Catalog {
        instance_types: vec![
            it("t-2", 2, 4, 0.10, &z),
            it("t-4", 4, 8, 0.20, &z),
            it("t-8", 8, 16, 0.45, &z),
        ],
    }
}

fn group(name: &str) -> NodeGroup {
    NodeGroup::new(name, vec!["t-2".into(), "t-4".into(), "t-8".into()])
}

fn pod_json(name: &str, cpu: &str, mem: &str, extra: serde_json::Value) -> Pod {
    let mut v = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}});
    if let serde_json::Value::Object(m) = extra {
        for (k, val) in m {
            if k == "labels" {
                v["metadata"]["labels"] = val;
            } else {
                v["spec"][k] = val;
            }
        }
    }
    let p: core::Pod = serde_json::from_value(v).unwrap();
    Pod::from_k8s(&p).unwrap()
}

fn pods(n: usize, cpu: &str, extra: serde_json::Value) -> Vec<Pod> {
    (0..n)
        .map(|i| pod_json(&format!("p{i}"), cpu, "1Gi", extra.clone()))
        .collect()
}

fn solve_ok(snap: &Snapshot, cat: &Catalog) -> Plan {
    let now = Utc::now();
    let plan = solve(snap, cat, now).unwrap();
    let errors = verify(snap, cat, &plan, now);
    assert!(errors.is_empty(), "plan violates: {errors:#?}\n{plan:#?}");
    plan
}

fn existing(name: &str, zone: &str, cpu: u64, pods: Vec<Pod>) -> ExistingNode {
    let mut node = Node::new(
        name,
        Resources {
            cpu_millis: cpu * 1000,
            memory_bytes: 64 * GIB,
            pods: 110,
            ephemeral_bytes: 100 * GIB,
            ..Default::default()
        },
    );
    node.labels.insert(labels::ZONE.into(), zone.into());
    let pods = pods
        .into_iter()
        .map(|mut p| {
            p.node_name = Some(name.into());
            p
        })
        .collect();
    ExistingNode::new(node, pods)
}

#[test]
fn golden_three_small_pods_take_one_t4() {
    let cat = catalog();
    let snap = Snapshot {
        pending: pods(3, "1", json!({})),
        groups: vec![group("general")],
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert_eq!(plan.new_machines.len(), 1);
    let m = &plan.new_machines[0];
    assert_eq!(m.instance_type, "t-4");
    assert_eq!(m.pods.len(), 3);
    // t-8 also holds them and comes second; t-2 does not.
    assert_eq!(m.instance_types, vec!["t-4".to_string(), "t-8".to_string()]);
    assert!(plan.unschedulable.is_empty());
}

#[test]
fn golden_seven_pods_cost_no_more_than_two_t4() {
    let cat = catalog();
    let snap = Snapshot {
        pending: pods(7, "1", json!({})),
        groups: vec![group("general")],
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert!((plan.new_cost_per_hour() - 0.40).abs() < 1e-9, "{plan:#?}");
    assert_eq!(
        plan.new_machines
            .iter()
            .map(|m| m.pods.len())
            .sum::<usize>(),
        7
    );
    assert!(plan.new_machines.iter().all(|m| m.instance_type != "t-8"));
}

#[test]
fn gpu_request_without_gpu_types_names_the_resource() {
    let cat = catalog();
    let gpu = pod_json(
        "trainer",
        "1",
        "1Gi",
        json!({"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}),
    );
    let mut g = group("gpu");
    g.instance_types = vec!["t-8".into()];
    let snap = Snapshot {
        pending: vec![gpu],
        groups: vec![g],
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert_eq!(plan.unschedulable.len(), 1);
    assert_eq!(
        plan.unschedulable[0].reason,
        "no instance type in group gpu has 8 nvidia.com/gpu"
    );
}

#[test]
fn max_replicas_is_respected_and_named() {
    let cat = catalog();
    let mut g = group("general");
    g.max_replicas = 20;
    g.current_replicas = 19;
    // Two pods of 6 cpu: each needs its own t-8.
    let snap = Snapshot {
        pending: pods(2, "6", json!({})),
        groups: vec![g],
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert_eq!(plan.new_machines.len(), 1);
    assert_eq!(plan.unschedulable.len(), 1);
    assert_eq!(
        plan.unschedulable[0].reason,
        "max replicas 20 reached in group general"
    );
}

#[test]
fn cluster_node_limit_is_respected() {
    let cat = catalog();
    let mut snap = Snapshot {
        pending: pods(3, "6", json!({})),
        groups: vec![group("general")],
        ..Default::default()
    };
    snap.limits.max_nodes = Some(2);
    let plan = solve_ok(&snap, &cat);
    assert_eq!(plan.new_machines.len(), 2);
    assert_eq!(
        plan.unschedulable[0].reason,
        "cluster limit of 2 nodes reached"
    );
}

#[test]
fn in_flight_capacity_prevents_a_second_launch() {
    let cat = catalog();
    let mut snap = Snapshot {
        pending: pods(10, "1", json!({})),
        groups: vec![group("general")],
        ..Default::default()
    };
    let first = solve_ok(&snap, &cat);
    assert!(!first.new_machines.is_empty());
    snap.in_flight = first
        .new_machines
        .iter()
        .map(|m| InFlightMachine {
            name: m.name.clone(),
            pods: vec![],
            group: m.group.clone(),
            instance_type: m.instance_type.clone(),
            zone: m.zone.clone(),
            capacity_type: m.capacity_type,
            launched_at: Utc::now(),
        })
        .collect();
    let second = solve_ok(&snap, &cat);
    assert!(second.new_machines.is_empty(), "{second:#?}");
    assert_eq!(second.assignments.len(), 10);
    // An in-flight machine that never registered stops counting after the timeout.
    for m in &mut snap.in_flight {
        m.launched_at = Utc::now() - chrono::Duration::hours(1);
    }
    assert!(!solve_ok(&snap, &cat).new_machines.is_empty());
}

#[test]
fn existing_capacity_is_used_first() {
    let cat = catalog();
    let snap = Snapshot {
        pending: pods(3, "1", json!({})),
        nodes: vec![existing("n1", "a", 4, vec![])],
        groups: vec![group("general")],
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert_eq!(plan.assignments.len(), 3);
    assert!(plan.new_machines.is_empty());
}

#[test]
fn taints_route_pods_and_startup_taints_are_ignored() {
    let cat = catalog();
    let mut gpu = group("tainted");
    gpu.taints = vec![Taint::new("dedicated", "x", TaintEffect::NoSchedule).unwrap()];
    let plan = solve_ok(
        &Snapshot {
            pending: pods(1, "1", json!({})),
            groups: vec![gpu.clone()],
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(
        plan.unschedulable[0].reason,
        "group tainted has taint dedicated=x:NoSchedule that the pod does not tolerate"
    );
    let tolerating = pods(
        1,
        "1",
        json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
    );
    assert_eq!(
        solve_ok(
            &Snapshot {
                pending: tolerating,
                groups: vec![gpu],
                ..Default::default()
            },
            &cat
        )
        .new_machines
        .len(),
        1
    );
    let mut starting = group("starting");
    starting.startup_taints =
        vec![Taint::new("node.cilium.io/agent-not-ready", "", TaintEffect::NoExecute).unwrap()];
    assert_eq!(
        solve_ok(
            &Snapshot {
                pending: pods(1, "1", json!({})),
                groups: vec![starting],
                ..Default::default()
            },
            &cat
        )
        .new_machines
        .len(),
        1
    );
    let _ = Toleration::new("", "Exists", "", "").unwrap();
}

/// A PreferNoSchedule taint is avoided while an untainted group can take the pod (as Karpenter does, and as
/// kube-scheduler's scoring would among the nodes that result), tolerated when nothing else can, and ignored by a pod
/// that tolerates it.
#[test]
fn prefer_no_schedule_taints_are_avoided_then_relaxed() {
    let cat = catalog();
    let mut soft = group("soft");
    soft.taints = vec![Taint::new("spot", "x", TaintEffect::PreferNoSchedule).unwrap()];
    // The untainted group offers only the dearest type: cost alone would choose the tainted one.
    let plain = NodeGroup::new("plain", vec!["t-8".into()]);
    let groups_of = |plan: &Plan| -> Vec<String> {
        plan.new_machines.iter().map(|m| m.group.clone()).collect()
    };
    let avoiding = solve_ok(
        &Snapshot {
            pending: pods(2, "1", json!({})),
            groups: vec![soft.clone(), plain.clone()],
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(groups_of(&avoiding), ["plain"], "{avoiding:#?}");
    let tolerating = solve_ok(
        &Snapshot {
            pending: pods(
                2,
                "1",
                json!({"tolerations": [{"key": "spot", "operator": "Exists"}]}),
            ),
            groups: vec![soft.clone(), plain],
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(groups_of(&tolerating), ["soft"], "{tolerating:#?}");
    let only_tainted = solve_ok(
        &Snapshot {
            pending: pods(2, "1", json!({})),
            groups: vec![soft],
            ..Default::default()
        },
        &cat,
    );
    assert!(only_tainted.unschedulable.is_empty(), "{only_tainted:#?}");
    assert_eq!(groups_of(&only_tainted), ["soft"]);
}

#[test]
fn preferred_zone_is_honoured_then_relaxed() {
    let cat = catalog();
    let pref = |zone: &str| {
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": labels::ZONE, "operator": "In", "values": [zone]}]}}]}}})
    };
    let plan = solve_ok(
        &Snapshot {
            pending: pods(2, "1", pref("c")),
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    assert!(plan.new_machines.iter().all(|m| m.zone == "c"), "{plan:#?}");
    let plan = solve_ok(
        &Snapshot {
            pending: pods(2, "1", pref("nowhere")),
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    assert!(plan.unschedulable.is_empty());
}

#[test]
fn required_zone_and_volume_zone() {
    let cat = catalog();
    let req = json!({"nodeSelector": {labels::ZONE: "b"}});
    let plan = solve_ok(
        &Snapshot {
            pending: pods(2, "1", req),
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    assert!(plan.new_machines.iter().all(|m| m.zone == "b"));
    let mut p = pods(1, "1", json!({}));
    p[0].spec.volume_zones = Some(["c".to_string()].into());
    let plan = solve_ok(
        &Snapshot {
            pending: p,
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(plan.new_machines[0].zone, "c");
}

#[test]
fn hostname_anti_affinity_gives_each_pod_its_node() {
    let cat = catalog();
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": labels::HOSTNAME}]}}});
    let plan = solve_ok(
        &Snapshot {
            pending: pods(3, "100m", anti),
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(plan.new_machines.len(), 3);
    assert!(plan.new_machines.iter().all(|m| m.instance_type == "t-2"));
}

#[test]
fn zone_spread_balances_new_nodes() {
    let cat = catalog();
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": labels::ZONE, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "x"}}}]});
    let plan = solve_ok(
        &Snapshot {
            pending: pods(6, "1", spread),
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for m in &plan.new_machines {
        *per_zone.entry(m.zone.clone()).or_default() += m.pods.len();
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
}

/// kubernetes.io/docs/concepts/scheduling-eviction/topology-spread-constraints: four nodes in two zones, three
/// `foo: bar` pods (two in zone A, one in zone B); with a zone constraint and a node constraint of maxSkew 1 the
/// incoming pod can only go to node4 (zone B, no matching pod).
#[test]
fn documentation_example_two_spread_constraints() {
    let cat = catalog();
    let foo = |name: &str| pod_json(name, "100m", "100Mi", json!({"labels": {"foo": "bar"}}));
    let nodes = vec![
        existing("node1", "zoneA", 4, vec![foo("a1")]),
        existing("node2", "zoneA", 4, vec![foo("a2")]),
        existing("node3", "zoneB", 4, vec![foo("b1")]),
        existing("node4", "zoneB", 4, vec![]),
    ];
    let constraint = |key: &str| json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"foo": "bar"}}});
    let incoming = pod_json(
        "mypod",
        "100m",
        "100Mi",
        json!({"labels": {"foo": "bar"}, "topologySpreadConstraints": [constraint(labels::ZONE), constraint(labels::HOSTNAME)]}),
    );
    let snap = Snapshot {
        pending: vec![incoming],
        nodes,
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert_eq!(plan.assignments.len(), 1);
    assert_eq!(plan.assignments[0].node, "node4");
}

/// The affinity documentation's example: pod affinity to security=S1 on zone, anti-affinity to security=S2 on zone.
#[test]
fn documentation_example_affinity_and_anti_affinity() {
    let cat = catalog();
    let labeled = |name: &str, sec: &str| {
        pod_json(name, "100m", "100Mi", json!({"labels": {"security": sec}}))
    };
    let nodes = vec![
        existing(
            "n-a",
            "a",
            4,
            vec![labeled("s1", "S1"), labeled("s2", "S2")],
        ),
        existing("n-b", "b", 4, vec![labeled("s1b", "S1")]),
        existing("n-c", "c", 4, vec![]),
    ];
    let incoming = pod_json(
        "with-pod-affinity",
        "100m",
        "100Mi",
        json!({"affinity": {
        "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "security", "operator": "In", "values": ["S1"]}]}, "topologyKey": labels::ZONE}]},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "security", "operator": "In", "values": ["S2"]}]}, "topologyKey": labels::ZONE}]}}}),
    );
    let plan = solve_ok(
        &Snapshot {
            pending: vec![incoming],
            nodes,
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(plan.assignments[0].node, "n-b");
}

#[test]
fn existing_pods_anti_affinity_is_symmetric() {
    let cat = catalog();
    let loner = pod_json(
        "loner",
        "100m",
        "100Mi",
        json!({"labels": {"app": "loner"}, "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": labels::HOSTNAME}]}}}),
    );
    let snap = Snapshot {
        pending: pods(1, "100m", json!({})),
        nodes: vec![existing("n1", "a", 4, vec![loner])],
        groups: vec![group("g")],
        ..Default::default()
    };
    let plan = solve_ok(&snap, &cat);
    assert!(plan.assignments.is_empty());
    assert_eq!(plan.new_machines.len(), 1);
}

#[test]
fn expanders_choose_between_groups() {
    let cat = catalog();
    let mut cheap = group("cheap");
    cheap.instance_types = vec!["t-2".into(), "t-4".into()];
    let mut pricey = group("pricey");
    pricey.instance_types = vec!["t-8".into()];
    pricey.priority = 10;
    let snap = |e| Snapshot {
        pending: pods(2, "1", json!({})),
        groups: vec![cheap.clone(), pricey.clone()],
        expander: e,
        ..Default::default()
    };
    assert_eq!(
        solve_ok(&snap(Expander::Cheapest), &cat).new_machines[0].group,
        "cheap"
    );
    assert_eq!(
        solve_ok(&snap(Expander::Priority), &cat).new_machines[0].group,
        "pricey"
    );
    let a = solve_ok(&snap(Expander::Random { seed: 7 }), &cat);
    let b = solve_ok(&snap(Expander::Random { seed: 7 }), &cat);
    assert_eq!(a, b, "random expander is deterministic per seed");
}

#[test]
fn host_ports_conflict_forces_another_node() {
    let cat = catalog();
    let port = json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}], "resources": {"requests": {"cpu": "100m"}}}]});
    let plan = solve_ok(
        &Snapshot {
            pending: pods(2, "100m", port),
            groups: vec![group("g")],
            ..Default::default()
        },
        &cat,
    );
    assert_eq!(plan.new_machines.len(), 2);
}

// Property: whatever the mix of constraints, every placement is feasible in the final state and nothing is
// over-committed (the verifier checks both), and every pod is accounted for.
fn arb_pod(i: usize) -> impl Strategy<Value = Pod> {
    (0usize..6, 0usize..5, 0usize..3, 0usize..3).prop_map(move |(kind, cpu, mem, label)| {
        let cpus = ["100m", "250m", "500m", "1", "3"];
        let mems = ["128Mi", "1Gi", "3Gi"];
        let app = ["a", "b", "c"][label];
        let sel = json!({"matchLabels": {"app": app}});
        let extra = match kind {
            0 => json!({"labels": {"app": app}}),
            1 => json!({"labels": {"app": app}, "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": labels::ZONE, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": sel}]}),
            2 => json!({"labels": {"app": app}, "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": labels::HOSTNAME, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": sel}]}),
            3 => json!({"labels": {"app": app}, "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": sel, "topologyKey": labels::HOSTNAME}]}}}),
            4 => json!({"labels": {"app": app}, "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": sel, "topologyKey": labels::ZONE}]}}}),
            _ => json!({"labels": {"app": app}, "nodeSelector": {labels::ZONE: "b"}}),
        };
        pod_json(&format!("p{i}"), cpus[cpu], mems[mem], extra)
    })
}

fn arb_pods() -> impl Strategy<Value = Vec<Pod>> {
    (1usize..40).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn every_plan_is_feasible(pods in arb_pods(), with_node in any::<bool>(), max in 2u32..30) {
        let cat = catalog();
        let mut g = group("g");
        g.max_replicas = max;
        let nodes = if with_node { vec![existing("n1", "a", 4, vec![])] } else { vec![] };
        let snap = Snapshot { pending: pods, nodes, groups: vec![g], ..Default::default() };
        let now = Utc::now();
        let plan = solve(&snap, &cat, now).unwrap();
        let errors = verify(&snap, &cat, &plan, now);
        prop_assert!(errors.is_empty(), "{:#?}", errors);
        let placed = plan.assignments.len() + plan.new_machines.iter().map(|m| m.pods.len()).sum::<usize>();
        prop_assert_eq!(placed + plan.unschedulable.len(), snap.pending.len());
    }
}
