//! One table test per rule, on a synthetic catalog whose allocatable figures are exact.

use super::budget::{Budget, NodeLimit, Window};
use super::cron::Schedule;
use super::*;
use crate::model::instance_type::{labels, Arch, InstanceType, Offering};
use crate::model::node::Node;
use crate::model::pod::OwnerRef;

const GIB: u64 = 1 << 30;
const ZONE: &str = "z1";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

fn instance(name: &str, cpu: u64, mem_gib: u64, offerings: &[(CapacityType, f64)]) -> InstanceType {
    InstanceType {
        name: name.into(),
        vcpu: cpu as u32,
        memory_mib: mem_gib * 1024,
        arch: Arch::Amd64,
        gpus: 0,
        gpu_manufacturer: None,
        max_network_interfaces: 4,
        ipv4_per_interface: 15,
        current_generation: true,
        bare_metal: false,
        burstable: false,
        local_storage_gb: 0,
        offerings: offerings
            .iter()
            .map(|(c, p)| Offering {
                zone: ZONE.into(),
                capacity_type: *c,
                price: *p,
                available: true,
            })
            .collect(),
        allocatable_override: Some(Resources {
            cpu_millis: cpu * 1000,
            memory_bytes: mem_gib * GIB,
            ephemeral_bytes: 100 * GIB,
            pods: 110,
            ..Default::default()
        }),
    }
}

/// On-demand only; the largest size is much cheaper per cpu, so one big node beats several small ones.
fn catalog() -> Catalog {
    use CapacityType::OnDemand as OD;
    Catalog {
        instance_types: vec![
            instance("s.large", 2, 8, &[(OD, 0.10)]),
            instance("s.xlarge", 4, 16, &[(OD, 0.20)]),
            instance("s.2xlarge", 8, 32, &[(OD, 0.25)]),
        ],
    }
}

fn pod(name: &str, cpu_millis: u64, mem_gib: u64) -> Pod {
    let mut p = Pod::new("default", name, Resources::new(cpu_millis, mem_gib * GIB));
    p.owner = Some(OwnerRef {
        kind: "ReplicaSet".into(),
        name: "web-abc".into(),
        uid: "rs-1".into(),
    });
    p
}

fn daemon(name: &str) -> Pod {
    let mut p = Pod::new("kube-system", name, Resources::new(100, GIB / 4));
    p.owner = Some(OwnerRef {
        kind: "DaemonSet".into(),
        name: "agent".into(),
        uid: "ds-1".into(),
    });
    p
}

fn node(
    name: &str,
    instance_type: &str,
    catalog: &Catalog,
    capacity: CapacityType,
    pods: Vec<Pod>,
) -> ExistingNode {
    let it = catalog.get(instance_type).expect("type in catalog");
    let mut n = Node::new(name, it.allocatable(0));
    n.labels
        .insert(labels::INSTANCE_TYPE.into(), instance_type.into());
    n.labels.insert(labels::ZONE.into(), ZONE.into());
    n.labels
        .insert(labels::CAPACITY_TYPE.into(), capacity.as_str().into());
    let pods = pods
        .into_iter()
        .map(|p| Pod {
            node_name: Some(name.into()),
            ..p
        })
        .collect();
    ExistingNode::new(n, pods)
}

fn candidate(name: &str, instance_type: &str, pods: Vec<Pod>) -> Candidate {
    candidate_in(
        &catalog(),
        name,
        instance_type,
        CapacityType::OnDemand,
        pods,
    )
}

fn candidate_in(
    catalog: &Catalog,
    name: &str,
    instance_type: &str,
    capacity: CapacityType,
    pods: Vec<Pod>,
) -> Candidate {
    let price = catalog
        .get(instance_type)
        .and_then(|t| t.offerings.iter().find(|o| o.capacity_type == capacity))
        .map(|o| o.price)
        .unwrap_or(1.0);
    Candidate {
        node: node(name, instance_type, catalog, capacity, pods),
        group: "g".into(),
        machine: format!("m-{name}"),
        instance_type: instance_type.into(),
        zone: ZONE.into(),
        capacity_type: capacity,
        price,
        created_at: now() - minutes(60),
        do_not_disrupt: false,
        do_not_disrupt_pods: BTreeSet::new(),
        at_risk: None,
    }
}

fn group(replicas: u32) -> GroupState {
    GroupState {
        name: "g".into(),
        min_replicas: 0,
        replicas,
        nodes: replicas,
        budgets: vec![],
        disrupting: 0,
        last_scale_up: None,
        rolling_out: false,
        replaceable: true,
    }
}

fn node_group(catalog: &Catalog) -> NodeGroup {
    NodeGroup::new(
        "g",
        catalog
            .instance_types
            .iter()
            .map(|t| t.name.clone())
            .collect(),
    )
}

/// An input over these candidates, with every underutilized node's clock already past `unneeded_time`.
fn input(candidates: Vec<Candidate>) -> DisruptionInput {
    let ripe = candidates
        .iter()
        .map(|c| (c.name().to_string(), now() - minutes(30)))
        .collect();
    DisruptionInput {
        groups: vec![group(candidates.len() as u32)],
        node_groups: vec![node_group(&catalog())],
        candidates,
        underutilized_since: ripe,
        ..Default::default()
    }
}

fn deleted(plan: &DisruptionPlan) -> Vec<(String, Reason)> {
    plan.commands
        .iter()
        .filter_map(|c| match c {
            Command::Delete { node, reason, .. } => Some((node.clone(), *reason)),
            _ => None,
        })
        .collect()
}

fn blocker_of<'p>(plan: &'p DisruptionPlan, node: &str) -> &'p Blocker {
    &plan
        .kept
        .iter()
        .find(|k| k.node == node)
        .unwrap_or_else(|| panic!("{node} not kept: {plan:#?}"))
        .blocker
}

fn run(input: &DisruptionInput) -> DisruptionPlan {
    plan(input, &catalog(), now())
}

#[test]
fn an_empty_node_is_deleted_and_a_busy_one_kept() {
    let mut i = input(vec![
        candidate("empty", "s.xlarge", vec![daemon("agent-1")]),
        candidate("busy", "s.xlarge", vec![pod("a", 3500, 8)]),
    ]);
    let p = run(&i);
    assert_eq!(deleted(&p), [("empty".to_string(), Reason::Empty)]);
    assert_eq!(
        blocker_of(&p, "busy").as_str(),
        "budget_exhausted",
        "one node at a time by default"
    );
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Count(5))];
    let p = run(&i);
    assert_eq!(deleted(&p), [("empty".to_string(), Reason::Empty)]);
    assert_eq!(blocker_of(&p, "busy").as_str(), "utilized");
    assert!(
        p.commands[0]
            .message()
            .contains("node empty (s.xlarge, $0.200/h) is empty"),
        "{}",
        p.commands[0].message()
    );
}

#[test]
fn a_group_rolling_out_is_left_to_its_rollout() {
    let mut i = input(vec![candidate(
        "empty",
        "s.xlarge",
        vec![daemon("agent-1")],
    )]);
    i.groups[0].rolling_out = true;
    let p = run(&i);
    assert!(p.commands.is_empty(), "{:?}", p.commands);
    assert_eq!(blocker_of(&p, "empty").as_str(), "rollout_in_progress");
    i.groups[0].rolling_out = false;
    assert_eq!(deleted(&run(&i)), [("empty".to_string(), Reason::Empty)]);
}

#[test]
fn underutilized_only_after_unneeded_time() {
    // "small" is 10% used; its pod fits on "roomy".
    let mut i = input(vec![
        candidate("small", "s.xlarge", vec![pod("a", 400, 1)]),
        candidate("roomy", "s.xlarge", vec![pod("b", 2500, 9)]),
    ]);
    i.underutilized_since.clear();
    let first = run(&i);
    assert!(first.commands.is_empty(), "{:?}", first.commands);
    assert_eq!(blocker_of(&first, "small").as_str(), "not_unneeded_yet");
    assert_eq!(
        first.underutilized_since.get("small"),
        Some(&now()),
        "the clock starts"
    );
    assert!(
        !first.underutilized_since.contains_key("roomy"),
        "62% used is not underutilized"
    );

    // Nine minutes later: still waiting. Eleven: gone.
    i.underutilized_since = first.underutilized_since.clone();
    assert!(plan(&i, &catalog(), now() + minutes(9)).commands.is_empty());
    let later = plan(&i, &catalog(), now() + minutes(11));
    assert_eq!(
        deleted(&later),
        [("small".to_string(), Reason::Underutilized)]
    );
    assert_eq!(
        later.underutilized_since.get("small"),
        Some(&now()),
        "the clock stays, so a confirming plan agrees"
    );
    i.underutilized_since = later.underutilized_since.clone();
    assert_eq!(
        deleted(&plan(&i, &catalog(), now() + minutes(11))),
        [("small".to_string(), Reason::Underutilized)],
        "the confirming plan"
    );
}

#[test]
fn pods_that_do_not_fit_elsewhere_keep_the_node() {
    let mut i = input(vec![
        candidate("small", "s.xlarge", vec![pod("a", 1500, 2)]),
        candidate("full", "s.xlarge", vec![pod("b", 3000, 12)]),
    ]);
    i.policy.consolidation = false;
    let p = run(&i);
    assert!(p.commands.is_empty());
    assert_eq!(blocker_of(&p, "small").as_str(), "pods_do_not_fit");
}

#[test]
fn a_do_not_disrupt_pod_or_node_keeps_the_node() {
    let mut c = candidate("small", "s.xlarge", vec![pod("precious", 400, 1)]);
    c.do_not_disrupt_pods.insert("default/precious".into());
    let p = run(&input(vec![c, candidate("roomy", "s.xlarge", vec![])]));
    assert_eq!(blocker_of(&p, "small").as_str(), "pod_do_not_disrupt");

    let mut c = candidate("empty", "s.xlarge", vec![]);
    c.do_not_disrupt = true;
    let p = run(&input(vec![c]));
    assert_eq!(blocker_of(&p, "empty").as_str(), "node_do_not_disrupt");
}

#[test]
fn an_unowned_pod_keeps_the_node_unless_configured_off() {
    let mut bare = pod("bare", 400, 1);
    bare.owner = None;
    let mut i = input(vec![
        candidate("small", "s.xlarge", vec![bare]),
        candidate("roomy", "s.xlarge", vec![pod("b", 2500, 9)]),
    ]);
    assert_eq!(blocker_of(&run(&i), "small").as_str(), "unowned_pod");
    i.policy.skip_nodes_with_unowned_pods = false;
    assert_eq!(
        deleted(&run(&i)),
        [("small".to_string(), Reason::Underutilized)]
    );
}

#[test]
fn a_kube_system_pod_without_a_pdb_keeps_the_node() {
    let mut dns = pod("coredns-1", 400, 1);
    dns.spec.namespace = "kube-system".into();
    dns.spec.labels.insert("k8s-app".into(), "kube-dns".into());
    let mut i = input(vec![
        candidate("small", "s.xlarge", vec![dns]),
        candidate("roomy", "s.xlarge", vec![pod("b", 2500, 9)]),
    ]);
    assert_eq!(
        blocker_of(&run(&i), "small").as_str(),
        "system_pod_without_pdb"
    );

    // Covered by a PDB that allows a disruption: fine.
    let selector = Selector::from_labels(&[("k8s-app".to_string(), "kube-dns".to_string())].into());
    i.pdbs.push(PdbView {
        namespace: "kube-system".into(),
        name: "coredns".into(),
        selector,
        disruptions_allowed: 1,
    });
    assert_eq!(
        deleted(&run(&i)),
        [("small".to_string(), Reason::Underutilized)]
    );

    // Or the rule is off.
    i.pdbs.clear();
    i.policy.skip_nodes_with_system_pods = false;
    assert_eq!(
        deleted(&run(&i)),
        [("small".to_string(), Reason::Underutilized)]
    );
}

#[test]
fn a_pdb_allowing_no_disruption_keeps_the_node() {
    let mut web = pod("web-1", 400, 1);
    web.spec.labels.insert("app".into(), "web".into());
    let selector = Selector::from_labels(&[("app".to_string(), "web".to_string())].into());
    let mut i = input(vec![
        candidate("small", "s.xlarge", vec![web]),
        candidate("roomy", "s.xlarge", vec![pod("b", 2500, 9)]),
    ]);
    i.pdbs.push(PdbView {
        namespace: "default".into(),
        name: "web".into(),
        selector,
        disruptions_allowed: 0,
    });
    let p = run(&i);
    assert!(p.commands.is_empty());
    assert_eq!(blocker_of(&p, "small").as_str(), "pdb_exhausted");
}

#[test]
fn one_pdb_disruption_is_shared_across_the_plan() {
    let labelled = |name: &str| {
        let mut p = pod(name, 300, 1);
        p.spec.labels.insert("app".into(), "web".into());
        p
    };
    let selector = Selector::from_labels(&[("app".to_string(), "web".to_string())].into());
    let mut i = input(vec![
        candidate("a", "s.xlarge", vec![labelled("w1")]),
        candidate("b", "s.xlarge", vec![labelled("w2")]),
        candidate("roomy", "s.2xlarge", vec![pod("x", 4500, 9)]),
    ]);
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Count(5))];
    i.pdbs.push(PdbView {
        namespace: "default".into(),
        name: "web".into(),
        selector,
        disruptions_allowed: 1,
    });
    i.policy.consolidation = false;
    let p = run(&i);
    assert_eq!(deleted(&p).len(), 1, "{p:#?}");
    assert!(p.kept.iter().any(|k| k.blocker.as_str() == "pdb_exhausted"));
}

#[test]
fn a_group_at_its_minimum_keeps_its_nodes() {
    let mut i = input(vec![
        candidate("e1", "s.xlarge", vec![]),
        candidate("e2", "s.xlarge", vec![]),
    ]);
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Count(5))];
    i.groups[0].min_replicas = 1;
    let p = run(&i);
    assert_eq!(deleted(&p).len(), 1, "2 replicas, minimum 1: one goes");
    i.groups[0].min_replicas = 2;
    let p = run(&i);
    assert!(p.commands.is_empty());
    assert_eq!(blocker_of(&p, "e1").as_str(), "group_at_minimum");
}

#[test]
fn a_young_node_is_kept() {
    let mut c = candidate("fresh", "s.xlarge", vec![]);
    c.created_at = now() - minutes(2);
    let p = run(&input(vec![c]));
    assert_eq!(blocker_of(&p, "fresh").as_str(), "too_young");
    // The controller may skip planning the same input until the node is old enough, and no longer.
    let min_age = Policy::default().min_node_age;
    assert_eq!(p.revisit_at, Some(now() - minutes(2) + min_age));
}

#[test]
fn a_plan_that_waits_on_nothing_has_no_revisit_time() {
    let p = run(&input(vec![candidate(
        "busy",
        "s.xlarge",
        vec![pod("a", 3500, 8)],
    )]));
    assert!(p.commands.is_empty());
    assert_eq!(p.revisit_at, None, "{:?}", p.kept);
}

#[test]
fn nothing_goes_within_the_delay_after_a_scale_up() {
    let mut i = input(vec![candidate("e1", "s.xlarge", vec![])]);
    i.groups[0].last_scale_up = Some(now() - minutes(4));
    assert_eq!(blocker_of(&run(&i), "e1").as_str(), "recent_scale_up");
    i.groups[0].last_scale_up = Some(now() - minutes(11));
    assert_eq!(deleted(&run(&i)).len(), 1);
}

#[test]
fn budgets_count_percent_and_windows() {
    let five_empty = || {
        input(
            (0..5)
                .map(|n| candidate(&format!("e{n}"), "s.xlarge", vec![]))
                .collect(),
        )
    };
    let deletions = |budgets: Vec<Budget>, disrupting: u32| {
        let mut i = five_empty();
        i.groups[0].budgets = budgets;
        i.groups[0].disrupting = disrupting;
        deleted(&run(&i)).len()
    };
    assert_eq!(deletions(vec![], 0), 1, "no budget: one at a time");
    assert_eq!(
        deletions(vec![], 1),
        0,
        "one already going uses the default budget"
    );
    assert_eq!(deletions(vec![Budget::always(NodeLimit::Count(2))], 0), 2);
    assert_eq!(
        deletions(vec![Budget::always(NodeLimit::Percent(50))], 0),
        3,
        "50% of 5 rounds up to 3"
    );
    assert_eq!(
        deletions(
            vec![
                Budget::always(NodeLimit::Count(4)),
                Budget::always(NodeLimit::Percent(40))
            ],
            1
        ),
        1,
        "the most restrictive, less those going"
    );
    // No disruption during business hours (09:00-17:00 UTC on weekdays; now is Tuesday 12:00).
    let business = || {
        Some(Window {
            schedule: Schedule::parse("0 9 * * mon-fri").unwrap(),
            duration: chrono::Duration::hours(8),
        })
    };
    assert_eq!(
        deletions(
            vec![
                Budget {
                    nodes: NodeLimit::Count(0),
                    window: business()
                },
                Budget::always(NodeLimit::Count(3))
            ],
            0
        ),
        0,
        "window open"
    );
    let night = Some(Window {
        schedule: Schedule::parse("0 22 * * *").unwrap(),
        duration: chrono::Duration::hours(6),
    });
    assert_eq!(
        deletions(
            vec![
                Budget {
                    nodes: NodeLimit::Count(0),
                    window: night.clone()
                },
                Budget::always(NodeLimit::Count(3))
            ],
            0
        ),
        3,
        "window closed"
    );
    assert_eq!(
        deletions(
            vec![Budget {
                nodes: NodeLimit::Count(4),
                window: night
            }],
            0
        ),
        1,
        "every window closed: the default"
    );
    let mut p = five_empty();
    p.groups[0].budgets = vec![Budget {
        nodes: NodeLimit::Count(0),
        window: business(),
    }];
    assert_eq!(blocker_of(&run(&p), "e0").as_str(), "budget_exhausted");
}

#[test]
fn three_half_empty_nodes_become_one_cheaper_node() {
    // Three s.xlarge ($0.20 each) at 45%: their pods fit on one s.2xlarge ($0.25).
    let mut i = input(
        (0..3)
            .map(|n| {
                candidate(
                    &format!("half{n}"),
                    "s.xlarge",
                    vec![pod(&format!("p{n}"), 1800, 7)],
                )
            })
            .collect(),
    );
    i.underutilized_since.clear();
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Percent(100))];
    let p = run(&i);
    assert_eq!(p.commands.len(), 1, "{p:#?}");
    match &p.commands[0] {
        Command::Replace {
            nodes,
            machines,
            replacement,
            savings,
            reason,
            ..
        } => {
            assert_eq!(*reason, Reason::ConsolidationMulti);
            assert_eq!(nodes, &["half0", "half1", "half2"]);
            assert_eq!(machines, &["m-half0", "m-half1", "m-half2"]);
            assert_eq!(replacement.instance_type, "s.2xlarge");
            assert!((savings - 0.35).abs() < 1e-9, "{savings}");
            assert_eq!(
                replacement.instance_types,
                ["s.2xlarge"],
                "only types below $0.60 that hold the pods"
            );
        }
        other => panic!("expected a replacement, got {other:?}"),
    }
    assert!(
        p.simulations <= 3,
        "the whole set first, then a binary search, not every subset: {}",
        p.simulations
    );
}

#[test]
fn auto_scaling_group_nodes_are_removed_when_empty_or_underutilized_but_never_replaced() {
    // The three half-empty nodes above, in a group berth cannot launch a chosen shape into.
    let mut i = input(
        (0..3)
            .map(|n| {
                candidate(
                    &format!("half{n}"),
                    "s.xlarge",
                    vec![pod(&format!("p{n}"), 1800, 7)],
                )
            })
            .collect(),
    );
    i.underutilized_since.clear();
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Percent(100))];
    i.groups[0].replaceable = false;
    let p = run(&i);
    assert!(p.commands.is_empty(), "{p:#?}");
    // Empty nodes still go, within the group's minimum and the default one-at-a-time budget.
    let mut i = input(vec![
        candidate("e1", "s.xlarge", vec![daemon("agent-1")]),
        candidate("e2", "s.xlarge", vec![]),
        candidate("e3", "s.xlarge", vec![]),
    ]);
    i.groups[0].replaceable = false;
    i.groups[0].min_replicas = 1;
    let p = run(&i);
    assert_eq!(deleted(&p).len(), 1, "one at a time by default: {p:#?}");
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Count(5))];
    let p = run(&i);
    assert_eq!(deleted(&p).len(), 2, "3 nodes, minimum 1: {p:#?}");
}

#[test]
fn a_single_node_is_replaced_only_by_a_strictly_cheaper_one() {
    // A s.xlarge at 45% whose pod fits a s.large: replaced, saving $0.10/h.
    let i = input(vec![candidate("big", "s.xlarge", vec![pod("a", 1800, 7)])]);
    let p = run(&i);
    match &p.commands[..] {
        [Command::Replace {
            reason: Reason::ConsolidationSingle,
            replacement,
            savings,
            ..
        }] => {
            assert_eq!(replacement.instance_type, "s.large");
            assert!((savings - 0.10).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    // A s.large whose pod needs a s.large: nothing cheaper exists.
    let i = input(vec![candidate("snug", "s.large", vec![pod("a", 1800, 7)])]);
    let p = run(&i);
    assert!(p.commands.is_empty(), "{:?}", p.commands);
    assert_eq!(blocker_of(&p, "snug").as_str(), "utilized");
}

/// A spot catalog: `cheap` types cheaper than the node's $0.06, then dearer ones; every type holds a 1-cpu pod.
fn spot_catalog(cheap: usize) -> Catalog {
    let mut types = vec![instance("big.xlarge", 4, 16, &[(CapacityType::Spot, 0.06)])];
    for n in 0..20 {
        let price = if n < cheap {
            0.01 + n as f64 * 0.001
        } else {
            0.07 + n as f64 * 0.001
        };
        types.push(instance(
            &format!("t{n:02}.large"),
            2,
            8,
            &[(CapacityType::Spot, price)],
        ));
    }
    Catalog {
        instance_types: types,
    }
}

#[test]
fn spot_is_replaced_by_spot_only_with_fifteen_cheaper_types() {
    for (cheap, replaced) in [(10, false), (16, true)] {
        let catalog = spot_catalog(cheap);
        let c = candidate_in(
            &catalog,
            "spot",
            "big.xlarge",
            CapacityType::Spot,
            vec![pod("a", 1000, 4)],
        );
        let mut i = input(vec![c]);
        i.node_groups = vec![node_group(&catalog)];
        let p = plan(&i, &catalog, now());
        if replaced {
            match &p.commands[..] {
                [Command::Replace { replacement, .. }] => {
                    assert_eq!(replacement.capacity_type, CapacityType::Spot);
                    assert_eq!(
                        replacement.instance_types.len(),
                        MIN_SPOT_TO_SPOT_TYPES,
                        "the launch keeps the 15 cheapest"
                    );
                    assert_eq!(replacement.instance_types[0], "t00.large");
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert!(p.commands.is_empty());
            assert_eq!(
                blocker_of(&p, "spot"),
                &Blocker::SpotToSpotTooFewTypes { cheaper: 10 }
            );
        }
    }
}

#[test]
fn disabled_scale_down_does_nothing() {
    let mut i = input(vec![candidate("e1", "s.xlarge", vec![])]);
    i.policy.enabled = false;
    let p = run(&i);
    assert!(p.commands.is_empty());
    assert_eq!(blocker_of(&p, "e1").as_str(), "disabled");
}

fn mixed_input() -> DisruptionInput {
    let mut candidates = vec![];
    for n in 0..12 {
        let pods = match n % 4 {
            0 => vec![],
            1 => vec![pod(&format!("s{n}"), 300, 1)],
            2 => vec![pod(&format!("h{n}"), 1800, 7)],
            _ => vec![pod(&format!("f{n}"), 3500, 14)],
        };
        candidates.push(candidate(&format!("n{n:02}"), "s.xlarge", pods));
    }
    let mut i = input(candidates);
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Percent(50))];
    i
}

#[test]
fn the_same_input_gives_the_same_plan_whatever_the_order() {
    let i = mixed_input();
    let first = run(&i);
    assert!(!first.commands.is_empty());
    assert_eq!(first, run(&i));
    let mut reversed = i.clone();
    reversed.candidates.reverse();
    assert_eq!(first, run(&reversed));
}

#[test]
fn simulations_stay_bounded_on_a_large_cluster() {
    // 1,000 nodes at 45%, every one underutilized long enough and able to shed its pod: each deletion costs a
    // simulation, and the planner stops at its bound; the rest wait for a later round.
    let candidates = (0..1000)
        .map(|n| {
            candidate(
                &format!("n{n:04}"),
                "s.xlarge",
                vec![pod(&format!("p{n}"), 1800, 7)],
            )
        })
        .collect();
    let mut i = input(candidates);
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Percent(100))];
    let started = std::time::Instant::now();
    let p = run(&i);
    eprintln!(
        "1,000 nodes: {} simulations, {} deletions, {:?} (debug build)",
        p.simulations,
        p.commands.len(),
        started.elapsed()
    );
    assert!(
        p.simulations <= DEFAULT_MAX_SIMULATIONS,
        "{}",
        p.simulations
    );
    assert_eq!(
        p.commands.len(),
        DEFAULT_MAX_SIMULATIONS,
        "each simulation found a node to remove"
    );
    assert!(p
        .kept
        .iter()
        .any(|k| k.blocker.as_str() == "simulation_limit"));
}

fn at_risk(kind: AtRiskKind, deadline: Option<DateTime<Utc>>) -> Option<AtRisk> {
    Some(AtRisk { kind, deadline })
}

fn rebalance(max_price_increase_percent: u32) -> Option<AtRisk> {
    at_risk(
        AtRiskKind::Rebalance {
            max_price_increase_percent,
        },
        None,
    )
}

fn scheduled(in_minutes: i64) -> Option<AtRisk> {
    at_risk(
        AtRiskKind::ScheduledChange,
        Some(now() + minutes(in_minutes)),
    )
}

/// A full s.xlarge (its pod fits nowhere else, and no cheaper node holds it).
fn full(name: &str) -> Candidate {
    candidate(name, "s.xlarge", vec![pod(&format!("{name}-pod"), 3500, 8)])
}

fn replaced(plan: &DisruptionPlan) -> Vec<(Vec<String>, Reason, NewMachine)> {
    plan.commands
        .iter()
        .filter_map(|c| match c {
            Command::Replace {
                nodes,
                reason,
                replacement,
                ..
            } => Some((nodes.clone(), *reason, replacement.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn at_risk_nodes_are_replaced_one_budget_at_a_time() {
    // Three full nodes EC2 recommends rebalancing; the only place for their pods is a new s.2xlarge ($0.25, 25% above
    // $0.20: allowed at 25%). The group's budget is the default, one node at a time.
    let mut i = input(vec![full("a"), full("b"), full("c")]);
    for c in &mut i.candidates {
        c.at_risk = rebalance(25);
    }
    let p = run(&i);
    let r = replaced(&p);
    assert_eq!(p.commands.len(), 1, "one node at a time: {p:#?}");
    assert_eq!(r[0].0, ["a"]);
    assert_eq!(r[0].1, Reason::RebalanceRecommended);
    assert_eq!(r[0].2.instance_type, "s.2xlarge");
    for n in ["b", "c"] {
        assert_eq!(blocker_of(&p, n).as_str(), "budget_exhausted");
    }
    assert!(
        p.commands[0].message().contains("Replacing at-risk node a"),
        "{}",
        p.commands[0].message()
    );
    // One already waiting for its replacement uses the budget.
    i.groups[0].disrupting = 1;
    assert!(run(&i).commands.is_empty());
    // A budget of two: two commands.
    i.groups[0].disrupting = 0;
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Count(2))];
    assert_eq!(replaced(&run(&i)).len(), 2);
}

#[test]
fn a_rebalance_replacement_costs_at_most_what_the_class_allows() {
    // Outside its own pool (s.xlarge in z1, on demand) the node's pod needs a s.2xlarge: $0.25 against $0.20.
    let mut i = input(vec![full("a")]);
    i.candidates[0].at_risk = rebalance(0);
    let p = run(&i);
    assert!(p.commands.is_empty(), "{p:#?}");
    let b = blocker_of(&p, "a");
    assert_eq!(b.as_str(), "replacement_too_expensive");
    assert!(b.to_string().contains("s.2xlarge"), "{b}");
    i.candidates[0].at_risk = rebalance(24);
    assert_eq!(
        blocker_of(&run(&i), "a").as_str(),
        "replacement_too_expensive",
        "$0.248 is the bound"
    );
    i.candidates[0].at_risk = rebalance(25);
    let p = run(&i);
    let r = replaced(&p);
    assert_eq!(r.len(), 1, "{p:#?}");
    assert_eq!(r[0].2.instance_types, ["s.2xlarge"]);
    // Consolidation is not involved: it stays off, and the price goes up.
    match &p.commands[0] {
        Command::Replace { savings, .. } => assert!((savings + 0.05).abs() < 1e-9),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_at_risk_pool_is_never_the_replacement_and_the_launch_keeps_to_the_bound() {
    // s.xlarge in two zones: the replacement of a node in z1 is the same type in z2, the cheapest elsewhere.
    use CapacityType::OnDemand as OD;
    let mut xl = instance("s.xlarge", 4, 16, &[(OD, 0.20)]);
    xl.offerings.push(Offering {
        zone: "z2".into(),
        capacity_type: OD,
        price: 0.21,
        available: true,
    });
    let mut xl2 = instance("m.xlarge", 4, 16, &[(OD, 0.30)]);
    xl2.offerings.push(Offering {
        zone: "z2".into(),
        capacity_type: OD,
        price: 0.215,
        available: true,
    });
    let catalog = Catalog {
        instance_types: vec![
            instance("s.large", 2, 8, &[(OD, 0.10)]),
            xl,
            xl2,
            instance("s.2xlarge", 8, 32, &[(OD, 0.25)]),
        ],
    };
    let mut c = candidate_in(&catalog, "a", "s.xlarge", OD, vec![pod("p", 3500, 8)]);
    c.at_risk = rebalance(6);
    let mut i = input(vec![c]);
    i.node_groups = vec![node_group(&catalog)];
    let p = plan(&i, &catalog, now());
    let r = replaced(&p);
    assert_eq!(r.len(), 1, "{p:#?}");
    let shape = &r[0].2;
    assert_eq!(
        (shape.instance_type.as_str(), shape.zone.as_str()),
        ("s.xlarge", "z2")
    );
    assert_eq!(
        shape.instance_types,
        ["s.xlarge"],
        "m.xlarge in z2 ($0.215) is above the bound of $0.212"
    );
    // A scheduled change has no bound: every alternative the solver found stays, cheapest first.
    i.candidates[0].at_risk = scheduled(60);
    let p = plan(&i, &catalog, now());
    let r = replaced(&p);
    assert_eq!(r[0].1, Reason::ScheduledChange);
    assert_eq!(r[0].2.instance_types, ["s.xlarge", "m.xlarge"]);

    // In a single zone, the pool's own type never appears in the launch.
    let mut i = input(vec![full("a")]);
    i.candidates[0].at_risk = scheduled(60);
    let r = replaced(&run(&i));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].2.instance_type, "s.2xlarge");
    assert!(
        !r[0].2.instance_types.contains(&"s.xlarge".to_string()),
        "{:?}",
        r[0].2.instance_types
    );
}

#[test]
fn a_scheduled_change_acts_whatever_the_scale_down_policy() {
    let mut young = full("a");
    young.at_risk = scheduled(30);
    young.created_at = now() - minutes(1);
    let mut i = input(vec![young, full("b")]);
    i.groups[0].last_scale_up = Some(now() - minutes(1));
    for (enabled, consolidation) in [(true, false), (false, false), (false, true)] {
        i.policy.enabled = enabled;
        i.policy.consolidation = consolidation;
        let p = run(&i);
        let r = replaced(&p);
        assert_eq!(
            r.len(),
            1,
            "enabled {enabled}, consolidation {consolidation}: {p:#?}"
        );
        assert_eq!(r[0].0, ["a"]);
        assert_eq!(r[0].1, Reason::ScheduledChange);
        let b = blocker_of(&p, "b").as_str();
        assert!(
            (b == "disabled") != enabled,
            "the node not at risk follows the policy: {b}"
        );
    }
    // Safety rules still hold: a do-not-disrupt node stays.
    i.candidates[0].do_not_disrupt = true;
    let p = run(&i);
    assert!(p.commands.is_empty());
    assert_eq!(blocker_of(&p, "a").as_str(), "node_do_not_disrupt");
}

#[test]
fn the_earliest_deadline_goes_first() {
    let mut i = input(vec![full("a"), full("b"), full("c")]);
    i.candidates[0].at_risk = rebalance(100);
    i.candidates[1].at_risk = scheduled(120);
    i.candidates[2].at_risk = scheduled(30);
    let r = replaced(&run(&i));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, ["c"]);
}

#[test]
fn an_at_risk_node_whose_pods_fit_elsewhere_is_deleted_and_not_consolidated_too() {
    // "small" is underutilized long enough and its pod fits on "roomy": the underutilized rule would delete it too.
    let mut small = candidate("small", "s.xlarge", vec![pod("a", 400, 1)]);
    small.at_risk = rebalance(0);
    let mut i = input(vec![
        small,
        candidate("roomy", "s.xlarge", vec![pod("b", 2500, 9)]),
    ]);
    i.groups[0].budgets = vec![Budget::always(NodeLimit::Count(5))];
    let p = run(&i);
    assert_eq!(
        deleted(&p),
        [("small".to_string(), Reason::RebalanceRecommended)],
        "{p:#?}"
    );
    assert_eq!(p.commands.len(), 1, "{p:#?}");
    assert!(p.commands[0]
        .message()
        .contains("its pods fit on other nodes"));
    // An empty one too.
    let mut empty = candidate("empty", "s.xlarge", vec![daemon("agent")]);
    empty.at_risk = scheduled(10);
    let p = run(&input(vec![empty]));
    assert_eq!(
        deleted(&p),
        [("empty".to_string(), Reason::ScheduledChange)]
    );
    assert_eq!(p.commands.len(), 1);
}

#[test]
fn an_at_risk_node_of_a_group_at_its_minimum_is_replaced_not_deleted() {
    let mut small = candidate("small", "s.xlarge", vec![pod("a", 400, 1)]);
    small.at_risk = scheduled(10);
    let mut i = input(vec![
        small,
        candidate("roomy", "s.xlarge", vec![pod("b", 2500, 9)]),
    ]);
    i.groups[0].min_replicas = 2;
    let p = run(&i);
    let r = replaced(&p);
    assert_eq!(r.len(), 1, "{p:#?}");
    assert_eq!(r[0].0, ["small"]);
    assert_eq!(
        r[0].2.instance_type, "s.large",
        "the cheapest that holds it"
    );
    // Same group: its replicas go up by one before the old node goes, so the minimum holds.
}

#[test]
fn at_risk_reasons_are_labels() {
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
    }
    assert!(Reason::RebalanceRecommended.at_risk() && Reason::ScheduledChange.at_risk());
    assert!(!Reason::Empty.at_risk());
}
