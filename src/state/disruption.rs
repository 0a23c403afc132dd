//! From API objects to the disruption planner's input ([`crate::disruption::DisruptionInput`]).
//!
//! A node is a candidate when it is the Node of a Running Machine of a MachineDeployment with `spec.autoscaling`
//! (groups without it are left alone, as the API promises) and the Machine is not already leaving: deleted,
//! annotated `berth.dev/delete-machine`, or waiting for its consolidation replacement (`berth.dev/replaced-by`).
//! Leaving Machines count against their group's budget and their nodes take no pods in the simulation. Every other
//! Ready, schedulable node is somewhere pods may go. A candidate is at risk when its Machine carries
//! `berth.dev/at-risk` ([`at_risk_of`]).
//!
//! What cannot be read (a malformed pod, an invalid budget) never widens what berth may do: the node or group
//! concerned is kept out (an invalid budget becomes a budget of zero), and the problem is returned for an Event.

use super::cluster::ClusterObjects;
use crate::api::cluster::ScaleDownPolicy;
use crate::api::keys;
use crate::api::machine_class::CapacityTypeSpec;
use crate::api::machine_deployment::DisruptionBudget;
use crate::api::{
    Cluster, Machine, MachinePhase, DELETE_MACHINE_ANNOTATION, DO_NOT_DISRUPT_ANNOTATION,
};
use crate::clock::from_k8s;
use crate::disruption::budget::{Budget, NodeLimit, Window};
use crate::disruption::cron::Schedule;
use crate::disruption::{
    AtRisk, AtRiskKind, Candidate, DisruptionError, DisruptionInput, GroupState, PdbView, Policy,
    DEFAULT_MAX_SIMULATIONS,
};
use crate::model::duration::parse_duration;
use crate::model::instance_type::{labels, CapacityType, Catalog};
use crate::model::label_selector::Selector;
use crate::model::pod::Pod;
use crate::model::resources::Resources;
use crate::scheduling::{ExistingNode, NodeGroup};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Something that could not be read, for an Event or a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `kind namespace/name`.
    pub object: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Built {
    pub input: DisruptionInput,
    /// Group name → the MachineDeployment's namespace.
    pub namespaces: BTreeMap<String, String>,
    pub problems: Vec<Problem>,
}

/// The policy, durations parsed.
pub fn policy_from_api(p: &ScaleDownPolicy) -> Result<Policy, DisruptionError> {
    let duration = |field: &'static str, text: &str| {
        parse_duration(text)
            .map_err(|e| e.to_string())
            .and_then(|d| chrono::Duration::from_std(d).map_err(|e| e.to_string()))
            .map_err(|reason| DisruptionError::InvalidPolicy { field, reason })
    };
    if !(1..=100).contains(&p.utilization_threshold_percent) {
        return Err(DisruptionError::InvalidPolicy {
            field: "utilizationThresholdPercent",
            reason: format!("{} is not in 1..100", p.utilization_threshold_percent),
        });
    }
    Ok(Policy {
        enabled: p.enabled,
        consolidation: p.consolidation,
        delay_after_scale_up: duration("delayAfterScaleUp", &p.delay_after_scale_up)?,
        unneeded_time: duration("unneededTime", &p.unneeded_time)?,
        utilization_threshold_percent: p.utilization_threshold_percent,
        min_node_age: duration("minNodeAge", &p.min_node_age)?,
        skip_nodes_with_system_pods: p.skip_nodes_with_system_pods,
        skip_nodes_with_unowned_pods: p.skip_nodes_with_unowned_pods,
    })
}

/// A MachineDeployment's budgets.
pub fn budgets_from_api(budgets: &[DisruptionBudget]) -> Result<Vec<Budget>, DisruptionError> {
    budgets
        .iter()
        .map(|b| {
            let nodes = match &b.nodes {
                IntOrString::Int(n) if *n >= 0 => NodeLimit::Count(*n as u32),
                IntOrString::Int(n) => {
                    return Err(DisruptionError::InvalidBudget {
                        value: n.to_string(),
                        reason: "must not be negative".into(),
                    })
                }
                IntOrString::String(s) => NodeLimit::parse(s)?,
            };
            let window = match (&b.schedule, &b.duration) {
                (None, None) => None,
                (Some(schedule), Some(duration)) => {
                    let duration = parse_duration(duration)
                        .ok()
                        .and_then(|d| chrono::Duration::from_std(d).ok())
                        .ok_or_else(|| DisruptionError::InvalidSchedule {
                            schedule: schedule.clone(),
                            reason: format!("duration {duration:?} is not valid"),
                        })?;
                    Some(Window {
                        schedule: Schedule::parse(schedule)?,
                        duration,
                    })
                }
                (Some(schedule), None) => {
                    return Err(DisruptionError::InvalidSchedule {
                        schedule: schedule.clone(),
                        reason: "a schedule needs a duration".into(),
                    })
                }
                (None, Some(d)) => {
                    return Err(DisruptionError::InvalidSchedule {
                        schedule: String::new(),
                        reason: format!("duration {d} needs a schedule"),
                    })
                }
            };
            Ok(Budget { nodes, window })
        })
        .collect()
}

/// The Node's Ready condition is True.
pub(crate) fn node_ready(node: &core::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ready(pod: &core::Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods that occupy a node for as long as it lives and would have to move: not finished, not being deleted, not
/// mirror pods (static pods go with their node and are not evicted).
fn occupies(pod: &core::Pod) -> bool {
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    !finished && !mirror && pod.metadata.deletion_timestamp.is_none()
}

fn annotated_true(annotations: &BTreeMap<String, String>, key: &str) -> bool {
    annotations.get(key).is_some_and(|v| v == "true")
}

/// How many MachineSets own the group's Machines that are not being deleted.
fn owning_sets(members: &[&Machine]) -> usize {
    members
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter_map(|m| {
            m.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.as_str())
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// Whether a Machine is on its way out (so not a candidate, and counted against its group's budget).
pub fn leaving(machine: &Machine) -> bool {
    machine.metadata.deletion_timestamp.is_some()
        || machine
            .annotations()
            .contains_key(DELETE_MACHINE_ANNOTATION)
        || machine.annotations().contains_key(keys::REPLACED_BY)
}

/// A PDB's view: `status.disruptionsAllowed` when the disruption controller has seen the current spec, else
/// computed from the spec and the pods' readiness as that controller would.
pub fn pdb_view(pdb: &PodDisruptionBudget, pods: &[Arc<core::Pod>]) -> Result<PdbView, String> {
    let namespace = pdb.namespace().unwrap_or_else(|| "default".into());
    let spec = pdb.spec.clone().unwrap_or_default();
    // policy/v1: a missing selector selects nothing, an empty one everything.
    let selector = match &spec.selector {
        Some(s) => Some(Selector::from_api(s).map_err(|e| format!("spec.selector: {e}"))?),
        None => None,
    };
    let current = pdb.status.as_ref().filter(|s| {
        s.observed_generation.is_some() && s.observed_generation >= pdb.metadata.generation
    });
    let disruptions_allowed = match current {
        Some(status) => status.disruptions_allowed.max(0) as u32,
        None => {
            let matching: Vec<&core::Pod> = pods
                .iter()
                .map(|p| p.as_ref())
                .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && occupies(p))
                .filter(|p| selector.as_ref().is_some_and(|s| s.matches(p.labels())))
                .collect();
            let expected = matching.len() as i64;
            let healthy = matching.iter().filter(|p| pod_ready(p)).count() as i64;
            let scaled = |v: &IntOrString, round_up: bool| -> Result<i64, String> {
                match v {
                    IntOrString::Int(n) => Ok(*n as i64),
                    IntOrString::String(s) => {
                        let p: i64 = s
                            .strip_suffix('%')
                            .and_then(|p| p.parse().ok())
                            .ok_or_else(|| format!("{s:?} is not a number or a percentage"))?;
                        Ok(if round_up {
                            (expected * p + 99) / 100
                        } else {
                            expected * p / 100
                        })
                    }
                }
            };
            let allowed = match (&spec.min_available, &spec.max_unavailable) {
                (_, Some(max)) => scaled(max, true)? - (expected - healthy),
                (Some(min), None) => healthy - scaled(min, true)?,
                (None, None) => healthy - expected,
            };
            allowed.max(0) as u32
        }
    };
    Ok(PdbView {
        name: pdb.name_any(),
        namespace,
        // A missing selector selects nothing: a selector on a key no pod can carry.
        selector: selector.unwrap_or_else(|| {
            Selector::from_labels(&[("\u{0}none".to_string(), String::new())].into())
        }),
        disruptions_allowed,
    })
}

use super::snapshot::{taint_of, PodReadings, ASG_GROUP_PREFIX};

/// What the planner reads of `berth.dev/at-risk` (the interruption controller writes `{reason, detail, deadline,
/// since}`; `detail` and `since` are for people).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct AtRiskAnnotation {
    reason: String,
    #[serde(default)]
    deadline: Option<String>,
}

/// Reads a Machine's `berth.dev/at-risk` annotation: None when it has none, or (with the problem) when it cannot be
/// read; an unreadable mark never makes a node at risk. A rebalance takes its price bound from the Machine's class,
/// and counts only while that class still says `Replace` (setting it back to Ignore stops the replacements).
pub fn at_risk_of(
    machine: &Machine,
    class: Option<&crate::api::MachineClass>,
) -> Result<Option<AtRisk>, String> {
    use crate::api::machine_class::RebalanceAction;
    let Some(text) = machine.annotations().get(keys::AT_RISK) else {
        return Ok(None);
    };
    let value: AtRiskAnnotation =
        serde_json::from_str(text).map_err(|e| format!("annotation {}: {e}", keys::AT_RISK))?;
    let deadline = value
        .deadline
        .as_deref()
        .map(|d| {
            DateTime::parse_from_rfc3339(d)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("annotation {}: deadline {d:?}: {e}", keys::AT_RISK))
        })
        .transpose()?;
    let kind = match value.reason.as_str() {
        "RebalanceRecommended" => match class.map(|c| &c.spec.rebalance) {
            Some(r) if r.action == RebalanceAction::Replace => AtRiskKind::Rebalance {
                max_price_increase_percent: r.max_price_increase_percent,
            },
            // The class is gone or says Ignore now.
            _ => return Ok(None),
        },
        "ScheduledChange" => AtRiskKind::ScheduledChange,
        other => {
            return Err(format!(
                "annotation {}: unknown reason {other:?} (RebalanceRecommended or ScheduledChange)",
                keys::AT_RISK
            ))
        }
    };
    Ok(Some(AtRisk { kind, deadline }))
}

fn capacity_type_of(spec: &CapacityTypeSpec) -> CapacityType {
    match spec {
        CapacityTypeSpec::Spot => CapacityType::Spot,
        CapacityTypeSpec::OnDemand => CapacityType::OnDemand,
    }
}

/// Builds the planner's input. An error only for an invalid scale-down policy (nothing can be decided then).
///
/// `auto_scaling_groups` are the cloud's berth-enabled groups: each becomes a group (its bounds, the default
/// one-node-at-a-time budget, not replaceable) whose Ready nodes are candidates named by instance id, and whose
/// nodes berth already marked ([`keys::DISRUPTION_REASON`] on the Node) count as leaving.
pub fn build(
    objects: &ClusterObjects,
    cluster: Option<&Cluster>,
    catalog: &Catalog,
    auto_scaling_groups: &[crate::cloud::NodeGroup],
    underutilized_since: &BTreeMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
    readings: &mut PodReadings,
) -> Result<Built, DisruptionError> {
    let mut problems = vec![];
    let policy = policy_from_api(
        &cluster
            .map(|c| c.spec.scale_down.clone())
            .unwrap_or_default(),
    )?;

    // Pods per node.
    let mut pods_on: BTreeMap<&str, Vec<&core::Pod>> = BTreeMap::new();
    for p in &objects.pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            if occupies(p) {
                pods_on.entry(node).or_default().push(p);
            }
        }
    }
    let nodes_by_name: BTreeMap<String, &core::Node> = objects
        .nodes
        .iter()
        .map(|n| (n.name_any(), n.as_ref()))
        .collect();
    let node_of = |m: &Machine| -> Option<&core::Node> {
        let status = m.status.as_ref()?;
        if let Some(r) = &status.node_ref {
            return nodes_by_name.get(&r.name).copied();
        }
        let provider = status.provider_id.as_ref()?;
        objects
            .nodes
            .iter()
            .find(|n| n.spec.as_ref().and_then(|s| s.provider_id.as_ref()) == Some(provider))
            .map(|n| n.as_ref())
    };
    let group_of = |m: &Machine| m.labels().get(keys::MACHINE_DEPLOYMENT).cloned();

    // Groups.
    let mut groups = vec![];
    let mut node_groups = vec![];
    let mut namespaces = BTreeMap::new();
    for md in &objects.machine_deployments {
        let Some(bounds) = &md.spec.autoscaling else {
            continue;
        };
        let name = md.name_any();
        let namespace = md.namespace().unwrap_or_default();
        let members: Vec<&Machine> = objects
            .machines
            .iter()
            .map(|m| m.as_ref())
            .filter(|m| {
                group_of(m).as_deref() == Some(name.as_str()) && m.namespace() == md.namespace()
            })
            .collect();
        let budgets = match budgets_from_api(
            md.spec
                .disruption
                .as_ref()
                .map(|d| d.budgets.as_slice())
                .unwrap_or(&[]),
        ) {
            Ok(b) => b,
            Err(e) => {
                problems.push(Problem {
                    object: format!("MachineDeployment {namespace}/{name}"),
                    message: e.to_string(),
                });
                vec![Budget::always(NodeLimit::Count(0))]
            }
        };
        let last_scale_up = md.annotations().get(keys::LAST_SCALE_UP).map(|t| {
            match DateTime::parse_from_rfc3339(t) {
                Ok(t) => t.with_timezone(&Utc),
                Err(e) => {
                    problems.push(Problem {
                        object: format!("MachineDeployment {namespace}/{name}"),
                        message: format!("annotation {}: {e}", keys::LAST_SCALE_UP),
                    });
                    // Unreadable: act as if it had just scaled up.
                    now
                }
            }
        });
        let replicas = md.spec.replicas.unwrap_or(1);
        groups.push(GroupState {
            name: name.clone(),
            min_replicas: bounds.min_replicas,
            replicas,
            nodes: members
                .iter()
                .filter(|m| m.metadata.deletion_timestamp.is_none())
                .count() as u32,
            budgets,
            // A Machine the health check remediates is involuntary: it takes nothing from the voluntary budget.
            disrupting: members
                .iter()
                .filter(|m| leaving(m) && !m.annotations().contains_key(keys::REMEDIATION))
                .count() as u32,
            last_scale_up,
            rolling_out: owning_sets(&members) > 1,
            replaceable: true,
        });
        namespaces.insert(name.clone(), namespace.clone());
        let class_name = &md.spec.template.spec.class_ref.name;
        let Some(class) = objects
            .machine_classes
            .iter()
            .find(|c| &c.name_any() == class_name)
        else {
            continue;
        };
        let allowed = match crate::state::class::allowed_instance_types(&class.spec, catalog, &[]) {
            Ok(a) => a,
            Err(message) => {
                problems.push(Problem {
                    object: format!("MachineClass {class_name}"),
                    message,
                });
                continue;
            }
        };
        let mut group = NodeGroup::new(&name, allowed.iter().map(|t| t.name.clone()).collect());
        group.requirements = crate::state::snapshot::capacity_requirement(&class.spec);
        group.labels = md.spec.template.spec.node_labels.clone();
        group.taints = md
            .spec
            .template
            .spec
            .taints
            .iter()
            .filter_map(taint_of)
            .collect();
        group.startup_taints = md
            .spec
            .template
            .spec
            .startup_taints
            .iter()
            .filter_map(taint_of)
            .collect();
        group.min_replicas = bounds.min_replicas;
        group.max_replicas = bounds.max_replicas;
        group.current_replicas = replicas;
        group.priority = bounds.priority;
        // A new node carries the DaemonSet pods its group's nodes carry now (the largest such set).
        group.daemon_overhead = members
            .iter()
            .filter_map(|m| node_of(m))
            .map(|n| {
                let mut sum = Resources::default();
                for p in pods_on.get(n.name_any().as_str()).into_iter().flatten() {
                    if p.owner_references().iter().any(|o| o.kind == "DaemonSet") {
                        if let Ok(pod) = Pod::from_k8s(p) {
                            sum.add(&pod.spec.requests);
                        }
                    }
                }
                sum
            })
            .max_by_key(|r| (r.cpu_millis, r.memory_bytes))
            .unwrap_or_default();
        node_groups.push(group);
    }
    let autoscaled: BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();

    // Converts a node and its pods (reusing the last round's readings of pods that did not change); None (with a
    // problem) when something cannot be read.
    let mut existing =
        |n: &core::Node, problems: &mut Vec<Problem>| -> Option<(ExistingNode, BTreeSet<String>)> {
            let node = match readings.read_node_object(n) {
                Ok(node) => node,
                Err(message) => {
                    problems.push(Problem {
                        object: format!("Node {}", n.name_any()),
                        message,
                    });
                    return None;
                }
            };
            let bound = pods_on
                .get(node.name.as_str())
                .map_or(&[][..], Vec::as_slice);
            let read = readings.read_node(&node.name, bound);
            if !read.unreadable.is_empty() {
                problems.extend(read.unreadable.into_iter().map(|(pod, why)| Problem {
                    object: format!("Pod {pod}"),
                    message: why,
                }));
                return None;
            }
            let protected = bound
                .iter()
                .filter(|p| annotated_true(p.annotations(), DO_NOT_DISRUPT_ANNOTATION))
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            Some((
                ExistingNode {
                    node,
                    pods: read.pods,
                },
                protected,
            ))
        };

    let mut candidates = vec![];
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    let mut leaving_nodes: BTreeSet<String> = BTreeSet::new();
    for m in &objects.machines {
        let Some(n) = node_of(m) else { continue };
        if leaving(m) {
            leaving_nodes.insert(n.name_any());
            continue;
        }
        let Some(group) = group_of(m).filter(|g| autoscaled.contains(g.as_str())) else {
            continue;
        };
        let status = m.status.clone().unwrap_or_default();
        if status.phase != MachinePhase::Running || !node_ready(n) {
            continue;
        }
        claimed.insert(n.name_any());
        let Some((node, protected)) = existing(n, &mut problems) else {
            continue;
        };
        let instance_type = status
            .instance_type
            .clone()
            .or_else(|| n.labels().get(labels::INSTANCE_TYPE).cloned())
            .unwrap_or_default();
        let zone = status
            .zone
            .clone()
            .or_else(|| n.labels().get(labels::ZONE).cloned())
            .unwrap_or_default();
        let capacity_type = status
            .capacity_type
            .as_ref()
            .map(capacity_type_of)
            .or_else(|| {
                n.labels()
                    .get(labels::CAPACITY_TYPE)
                    .and_then(|c| CapacityType::parse(c))
            })
            .unwrap_or(CapacityType::OnDemand);
        let catalog_price = || {
            catalog
                .get(&instance_type)
                .and_then(|t| {
                    t.offerings
                        .iter()
                        .find(|o| o.zone == zone && o.capacity_type == capacity_type)
                })
                .map(|o| o.price)
        };
        let Some(price) = status
            .price
            .as_deref()
            .and_then(|p| p.parse::<f64>().ok())
            .or_else(catalog_price)
        else {
            problems.push(Problem {
                object: format!("Machine {}", m.name_any()),
                message: format!("no price known for {instance_type} in {zone} ({capacity_type})"),
            });
            continue;
        };
        let created_at = n
            .metadata
            .creation_timestamp
            .clone()
            .map(|t| from_k8s(t.0))
            .unwrap_or(now);
        let class = objects
            .machine_classes
            .iter()
            .find(|c| c.name_any() == m.spec.class_ref.name);
        let at_risk = at_risk_of(m, class.map(|c| c.as_ref())).unwrap_or_else(|message| {
            problems.push(Problem {
                object: format!(
                    "Machine {}/{}",
                    m.namespace().unwrap_or_default(),
                    m.name_any()
                ),
                message,
            });
            None
        });
        candidates.push(Candidate {
            node,
            group,
            machine: m.name_any(),
            instance_type,
            zone,
            capacity_type,
            price,
            created_at,
            do_not_disrupt: annotated_true(n.annotations(), DO_NOT_DISRUPT_ANNOTATION),
            do_not_disrupt_pods: protected,
            at_risk,
        });
    }
    // Auto Scaling groups: their live instances' Nodes, by provider ID.
    for asg in auto_scaling_groups {
        let group = format!("{ASG_GROUP_PREFIX}{}", asg.name);
        let live: Vec<_> = asg
            .instances
            .iter()
            .filter(|i| !i.lifecycle_state.starts_with("Terminat"))
            .collect();
        let mut disrupting = 0;
        for i in &live {
            let provider = crate::cloud::provider_id(&i.zone, &i.instance_id);
            let Some(n) = objects.nodes.iter().find(|n| {
                n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(provider.as_str())
            }) else {
                continue;
            };
            let name = n.name_any();
            if claimed.contains(&name) {
                continue;
            }
            if n.annotations().contains_key(keys::DISRUPTION_REASON) {
                disrupting += 1;
                leaving_nodes.insert(name);
                continue;
            }
            if !node_ready(n) || n.metadata.deletion_timestamp.is_some() {
                continue;
            }
            claimed.insert(name.clone());
            let Some((node, protected)) = existing(n, &mut problems) else {
                continue;
            };
            let instance_type = i
                .instance_type
                .clone()
                .or_else(|| n.labels().get(labels::INSTANCE_TYPE).cloned())
                .unwrap_or_default();
            let Some(price) = catalog
                .get(&instance_type)
                .and_then(|t| {
                    t.offerings
                        .iter()
                        .find(|o| o.zone == i.zone && o.capacity_type == CapacityType::OnDemand)
                })
                .map(|o| o.price)
            else {
                problems.push(Problem {
                    object: format!("Node {name}"),
                    message: format!("no price known for {instance_type} in {}", i.zone),
                });
                continue;
            };
            candidates.push(Candidate {
                node,
                group: group.clone(),
                machine: i.instance_id.clone(),
                instance_type,
                zone: i.zone.clone(),
                capacity_type: CapacityType::OnDemand,
                price,
                created_at: n
                    .metadata
                    .creation_timestamp
                    .clone()
                    .map(|t| from_k8s(t.0))
                    .unwrap_or(now),
                do_not_disrupt: annotated_true(n.annotations(), DO_NOT_DISRUPT_ANNOTATION),
                do_not_disrupt_pods: protected,
                // Interruption notices name Machines' instances only.
                at_risk: None,
            });
        }
        groups.push(GroupState {
            name: group,
            min_replicas: asg.min_size,
            replicas: asg.desired_capacity,
            nodes: live.len() as u32,
            // No budget field on a group: the default, one node at a time.
            budgets: vec![],
            disrupting,
            last_scale_up: None,
            rolling_out: false,
            replaceable: false,
        });
    }
    let mut others = vec![];
    for n in &objects.nodes {
        let name = n.name_any();
        if claimed.contains(&name)
            || leaving_nodes.contains(&name)
            || !node_ready(n)
            || n.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if let Some((node, _)) = existing(n, &mut problems) {
            if !node.node.unschedulable {
                others.push(node);
            }
        }
    }
    readings.sweep(objects);
    let mut pdbs = vec![];
    for pdb in &objects.pdbs {
        match pdb_view(pdb, &objects.pods) {
            Ok(v) => pdbs.push(v),
            Err(message) => {
                problems.push(Problem {
                    object: format!(
                        "PodDisruptionBudget {}/{}",
                        pdb.namespace().unwrap_or_default(),
                        pdb.name_any()
                    ),
                    message,
                });
                // Unreadable: assume it protects every pod of its namespace and allows nothing.
                pdbs.push(PdbView {
                    name: pdb.name_any(),
                    namespace: pdb.namespace().unwrap_or_default(),
                    selector: Selector::default(),
                    disruptions_allowed: 0,
                });
            }
        }
    }
    let since = underutilized_since
        .iter()
        .filter(|(n, _)| candidates.iter().any(|c| c.name() == n.as_str()))
        .map(|(n, t)| (n.clone(), *t))
        .collect();
    Ok(Built {
        input: DisruptionInput {
            candidates,
            groups,
            pdbs,
            policy,
            others,
            node_groups,
            underutilized_since: since,
            max_simulations: DEFAULT_MAX_SIMULATIONS,
        },
        namespaces,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_and_budgets_parse_or_say_why() {
        let p = policy_from_api(&ScaleDownPolicy::default()).unwrap();
        assert_eq!(p, Policy::default());
        let bad = ScaleDownPolicy {
            unneeded_time: "ten minutes".into(),
            ..Default::default()
        };
        assert_eq!(
            policy_from_api(&bad).unwrap_err().category(),
            "invalid_policy"
        );
        let budgets: Vec<DisruptionBudget> = serde_json::from_value(json!([
            {"nodes": 2}, {"nodes": "20%"}, {"nodes": 0, "schedule": "0 9 * * mon-fri", "duration": "8h"}
        ]))
        .unwrap();
        let parsed = budgets_from_api(&budgets).unwrap();
        assert_eq!(parsed[0].nodes, NodeLimit::Count(2));
        assert_eq!(parsed[1].nodes, NodeLimit::Percent(20));
        assert_eq!(
            parsed[2].window.as_ref().unwrap().duration,
            chrono::Duration::hours(8)
        );
        let broken: Vec<DisruptionBudget> = serde_json::from_value(
            json!([{"nodes": 1, "schedule": "0 25 * * *", "duration": "1h"}]),
        )
        .unwrap();
        assert_eq!(
            budgets_from_api(&broken).unwrap_err().category(),
            "invalid_schedule"
        );
    }

    #[test]
    fn pdb_allowance_from_status_or_from_pods() {
        let pod = |name: &str, ready: bool| -> core::Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap()
        };
        let pods = vec![
            Arc::new(pod("a", true)),
            Arc::new(pod("b", true)),
            Arc::new(pod("c", false)),
        ];
        let pdb = |spec: serde_json::Value,
                   status: Option<serde_json::Value>|
         -> PodDisruptionBudget {
            let mut v = json!({"metadata": {"name": "web", "namespace": "default", "generation": 1}, "spec": spec});
            if let Some(s) = status {
                v["status"] = s;
            }
            serde_json::from_value(v).unwrap()
        };
        let sel = json!({"matchLabels": {"app": "web"}});
        // minAvailable 1 of 2 healthy: 1 allowed; maxUnavailable 1 with one already unhealthy: 0.
        assert_eq!(
            pdb_view(
                &pdb(json!({"selector": sel, "minAvailable": 1}), None),
                &pods
            )
            .unwrap()
            .disruptions_allowed,
            1
        );
        assert_eq!(
            pdb_view(
                &pdb(json!({"selector": sel, "maxUnavailable": 1}), None),
                &pods
            )
            .unwrap()
            .disruptions_allowed,
            0
        );
        assert_eq!(
            pdb_view(
                &pdb(json!({"selector": sel, "maxUnavailable": "50%"}), None),
                &pods
            )
            .unwrap()
            .disruptions_allowed,
            1
        );
        let status = json!({"observedGeneration": 1, "disruptionsAllowed": 3, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 3});
        assert_eq!(
            pdb_view(
                &pdb(json!({"selector": sel, "minAvailable": 1}), Some(status)),
                &pods
            )
            .unwrap()
            .disruptions_allowed,
            3
        );
        let none = pdb_view(&pdb(json!({"minAvailable": 1}), None), &pods).unwrap();
        assert!(
            !none.covers(&Pod::from_k8s(&pods[0]).unwrap()),
            "no selector selects nothing"
        );
    }

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn class(rebalance: serde_json::Value) -> Arc<crate::api::MachineClass> {
        from(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
            "spec": {"image": {"id": "ami-1"}, "instanceRequirements": {"families": ["m7i"]}, "capacityTypes": ["on-demand"],
                     "subnets": {"ids": ["subnet-1"]}, "securityGroups": {"ids": ["sg-1"]}, "instanceProfile": "node",
                     "rebalance": rebalance}
        }))
    }

    /// A Running Machine of group "general" on Ready node `n-<name>`, with `berth.dev/at-risk` set to `mark`.
    fn machine(name: &str, mark: Option<&str>) -> Arc<Machine> {
        let annotations = mark.map_or(json!({}), |m| json!({keys::AT_RISK: m}));
        from(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "default", "labels": {keys::MACHINE_DEPLOYMENT: "general"},
                         "annotations": annotations},
            "spec": {"classRef": {"name": "general"}},
            "status": {"phase": "Running", "instanceType": "m7i.large", "zone": "us-east-1a", "capacityType": "on-demand",
                       "price": "0.1008", "nodeRef": {"name": format!("n-{name}")}}
        }))
    }

    fn node(name: &str) -> Arc<core::Node> {
        from(json!({
            "metadata": {"name": name, "creationTimestamp": "2026-12-01T10:00:00Z"},
            "status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    const REBALANCE: &str = r#"{"reason": "RebalanceRecommended", "detail": "rebalance recommendation", "deadline": null, "since": "2026-12-01T11:00:00Z"}"#;
    const RETIREMENT: &str = r#"{"reason": "ScheduledChange", "detail": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", "deadline": "2026-12-03T09:00:00Z", "since": "2026-12-01T11:00:00Z"}"#;

    #[test]
    fn the_at_risk_mark_is_read_with_its_class_price_bound() {
        let replace = class(json!({"action": "Replace", "maxPriceIncreasePercent": 20}));
        let ignore = class(json!({}));
        assert_eq!(
            at_risk_of(&machine("m", Some(REBALANCE)), Some(&replace)).unwrap(),
            Some(AtRisk {
                kind: AtRiskKind::Rebalance {
                    max_price_increase_percent: 20
                },
                deadline: None
            })
        );
        assert_eq!(
            at_risk_of(&machine("m", Some(REBALANCE)), Some(&ignore)).unwrap(),
            None,
            "the class says Ignore now"
        );
        assert_eq!(
            at_risk_of(&machine("m", Some(REBALANCE)), None).unwrap(),
            None,
            "no class: no price bound to go by"
        );
        let retirement = at_risk_of(&machine("m", Some(RETIREMENT)), Some(&ignore))
            .unwrap()
            .unwrap();
        assert_eq!(retirement.kind, AtRiskKind::ScheduledChange);
        assert_eq!(
            retirement.deadline.map(|d| d.to_rfc3339()).as_deref(),
            Some("2026-12-03T09:00:00+00:00")
        );
        assert_eq!(
            at_risk_of(&machine("m", None), Some(&replace)).unwrap(),
            None
        );
        for bad in [
            "not json",
            r#"{"reason": "Mystery", "deadline": null, "since": "2026-12-01T11:00:00Z"}"#,
            r#"{"reason": "ScheduledChange", "deadline": "tomorrow", "since": "2026-12-01T11:00:00Z"}"#,
            r#"{"detail": "no reason"}"#,
        ] {
            let e = at_risk_of(&machine("m", Some(bad)), Some(&replace)).unwrap_err();
            assert!(e.contains(keys::AT_RISK), "{bad}: {e}");
        }
    }

    #[test]
    fn a_malformed_at_risk_mark_is_a_problem_and_the_node_is_not_at_risk() {
        let md: Arc<crate::api::MachineDeployment> = from(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
            "metadata": {"name": "general", "namespace": "default"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"g": "general"}},
                     "template": {"metadata": {"labels": {"g": "general"}}, "spec": {"classRef": {"name": "general"}}},
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 10}}
        }));
        let objects = ClusterObjects {
            machine_classes: vec![class(json!({"action": "Replace"}))],
            machine_deployments: vec![md],
            machines: vec![
                machine("good", Some(REBALANCE)),
                machine("bad", Some("{broken")),
                machine("plain", None),
            ],
            nodes: vec![node("n-good"), node("n-bad"), node("n-plain")],
            ..Default::default()
        };
        let catalog = crate::model::aws_catalog::bundled_catalog("us-east-1").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let built = build(
            &objects,
            None,
            &catalog,
            &[],
            &BTreeMap::new(),
            now,
            &mut PodReadings::default(),
        )
        .unwrap();
        let risk: BTreeMap<&str, Option<AtRisk>> = built
            .input
            .candidates
            .iter()
            .map(|c| (c.machine.as_str(), c.at_risk.clone()))
            .collect();
        assert_eq!(risk.len(), 3, "every node stays a candidate: {risk:?}");
        assert_eq!(
            risk["good"],
            Some(AtRisk {
                kind: AtRiskKind::Rebalance {
                    max_price_increase_percent: 0
                },
                deadline: None
            })
        );
        assert_eq!(risk["bad"], None);
        assert_eq!(risk["plain"], None);
        assert_eq!(built.problems.len(), 1, "{:?}", built.problems);
        assert_eq!(built.problems[0].object, "Machine default/bad");
        assert!(
            built.problems[0].message.contains(keys::AT_RISK),
            "{:?}",
            built.problems[0]
        );
    }
}
