//! Pure: which Machines are unhealthy, and which of them to remediate now.
//!
//! A node controller's worst failure is replacing a healthy fleet because it lost sight of it. When the control
//! plane stops hearing kubelets (an API server upgrade, an etcd hiccup, a partition), kube-controller-manager marks
//! every Node `Ready=Unknown` after 40 s; nothing is wrong with the machines. So remediation is bounded three ways:
//!
//! 1. **Evidence, not absence.** A condition is unhealthy only once it has held for its timeout. For conditions
//!    that mean "no news" (status Unknown, a missing Node) the clock starts no earlier than `evidence_since`: the
//!    moment berth last had a trustworthy view (its caches synced, its watches steady, the cluster's heartbeats
//!    not stale at large). Time spent blind is never counted as time spent dead.
//! 2. **A cluster-wide guard** ([`cluster_guard`]): while berth's view is stale, or more than half of the cluster's
//!    nodes have stale heartbeats at once, nothing is remediated anywhere.
//! 3. **A group cap** (`maxUnhealthy`): while more of a group's Machines than that are unhealthy, none of them is
//!    remediated; and at most that many are remediated at once, one more per pass.
//!
//! The controller (`controllers::health`) observes, calls [`plan_group`] per group, and applies.

use crate::api::common::ConditionStatus;
use crate::api::machine_deployment::HealthCheckSpec;
use crate::model::duration::parse_duration;
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Why a health check cannot be read; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error("spec.healthCheck.{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl HealthError {
    pub fn category(&self) -> &'static str {
        match self {
            HealthError::Invalid { .. } => "invalid_health_check",
        }
    }
}

/// A node condition that, held for `timeout`, makes its Machine unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionRule {
    pub type_: String,
    pub status: String,
    pub timeout: Duration,
}

/// How many unhealthy Machines a group tolerates before it holds remediation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnhealthy {
    Count(u32),
    Percent(u32),
}

impl MaxUnhealthy {
    /// The most unhealthy Machines that still allow remediation in a group of `total`. A percentage rounds down
    /// (as Cluster API's does) but allows at least one, so a group of one or two can heal its one node; the
    /// cluster-wide guard, not this cap, is what protects a small cluster from a control-plane blip.
    pub fn allowed(self, total: usize) -> usize {
        match self {
            MaxUnhealthy::Count(n) => n as usize,
            MaxUnhealthy::Percent(0) => 0,
            MaxUnhealthy::Percent(p) => (total * p as usize / 100).max(1),
        }
    }
}

/// A group's health check, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub conditions: Vec<ConditionRule>,
    pub node_missing_timeout: Duration,
    pub max_unhealthy: MaxUnhealthy,
    pub drain_timeout: Duration,
    /// Overrides the MachineClass's nodeStartupTimeout when set.
    pub node_startup_timeout: Option<Duration>,
}

const DEFAULT_TIMEOUT_MINUTES: i64 = 5;

impl Default for HealthPolicy {
    fn default() -> Self {
        let rule = |status: &str| ConditionRule {
            type_: "Ready".into(),
            status: status.into(),
            timeout: Duration::minutes(DEFAULT_TIMEOUT_MINUTES),
        };
        HealthPolicy {
            conditions: vec![rule("False"), rule("Unknown")],
            node_missing_timeout: Duration::minutes(DEFAULT_TIMEOUT_MINUTES),
            max_unhealthy: MaxUnhealthy::Percent(40),
            drain_timeout: Duration::minutes(DEFAULT_TIMEOUT_MINUTES),
            node_startup_timeout: None,
        }
    }
}

fn duration(field: &str, value: &str) -> Result<Duration, HealthError> {
    let d = parse_duration(value).map_err(|e| HealthError::Invalid {
        field: field.into(),
        reason: e.to_string(),
    })?;
    Duration::from_std(d).map_err(|_| HealthError::Invalid {
        field: field.into(),
        reason: format!("duration {value:?} is too large"),
    })
}

fn status_name(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

/// Reads a group's health check; unset reads as every default.
pub fn policy_of(spec: Option<&HealthCheckSpec>) -> Result<HealthPolicy, HealthError> {
    let mut policy = HealthPolicy::default();
    let Some(spec) = spec else {
        return Ok(policy);
    };
    if let Some(rules) = &spec.unhealthy_node_conditions {
        policy.conditions = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.type_.is_empty() {
                    return Err(HealthError::Invalid {
                        field: format!("unhealthyNodeConditions[{i}].type"),
                        reason: "must not be empty".into(),
                    });
                }
                Ok(ConditionRule {
                    type_: r.type_.clone(),
                    status: status_name(r.status).into(),
                    timeout: duration(
                        &format!("unhealthyNodeConditions[{i}].timeout"),
                        &r.timeout,
                    )?,
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(t) = &spec.node_missing_timeout {
        policy.node_missing_timeout = duration("nodeMissingTimeout", t)?;
    }
    if let Some(t) = &spec.drain_timeout {
        policy.drain_timeout = duration("drainTimeout", t)?;
    }
    if let Some(t) = &spec.node_startup_timeout {
        policy.node_startup_timeout = Some(duration("nodeStartupTimeout", t)?);
    }
    if let Some(m) = &spec.max_unhealthy {
        policy.max_unhealthy = parse_max_unhealthy(m)?;
    }
    Ok(policy)
}

fn parse_max_unhealthy(value: &IntOrString) -> Result<MaxUnhealthy, HealthError> {
    let invalid = |reason: String| HealthError::Invalid {
        field: "maxUnhealthy".into(),
        reason,
    };
    match value {
        IntOrString::Int(n) if *n >= 0 => Ok(MaxUnhealthy::Count(*n as u32)),
        IntOrString::Int(n) => Err(invalid(format!(
            "{n} is negative; expected a count of 0 or more"
        ))),
        IntOrString::String(s) => {
            let p = s
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| {
                    invalid(format!("{s:?} is not a count or a percentage such as 40%"))
                })?;
            if p > 100 {
                return Err(invalid(format!("{s} is over 100%")));
            }
            Ok(MaxUnhealthy::Percent(p))
        }
    }
}

/// A Node condition as berth reads it: its status and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    pub type_: String,
    pub status: String,
    pub since: DateTime<Utc>,
}

/// What berth sees of a Machine that has been Running (Machines still starting are the startup timeout's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    Present(Vec<NodeCondition>),
    /// The Machine's Node is gone; first seen missing at `since` (by this process: a restart starts over).
    Missing {
        since: DateTime<Utc>,
    },
}

/// One Machine of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineHealth {
    pub name: String,
    /// None while the Machine has not been Running yet: not this planner's to judge.
    pub node: Option<NodeState>,
    /// Already marked and on its way out by remediation.
    pub remediating: bool,
    /// Being deleted for any other reason (scale-down, a rollout): no longer part of the group's count.
    pub deleting: bool,
}

/// Why remediation is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// berth's own view of the cluster is not to be trusted (caches syncing, watches restarting).
    ViewStale(String),
    /// Most of the cluster's nodes stopped heartbeating at once: the control plane, not the machines.
    HeartbeatsStale { stale: usize, total: usize },
    /// More of the group is unhealthy than maxUnhealthy allows.
    TooManyUnhealthy {
        unhealthy: usize,
        total: usize,
        allowed: usize,
    },
    /// The group's health check does not parse.
    InvalidHealthCheck(String),
}

impl Hold {
    /// Every reason [`Hold::reason`] gives.
    pub const REASONS: [&'static str; 4] = [
        "ClusterViewStale",
        "HeartbeatsStale",
        "TooManyUnhealthy",
        "InvalidHealthCheck",
    ];

    /// A CamelCase reason, for conditions, Events and the `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::ViewStale(_) => "ClusterViewStale",
            Hold::HeartbeatsStale { .. } => "HeartbeatsStale",
            Hold::TooManyUnhealthy { .. } => "TooManyUnhealthy",
            Hold::InvalidHealthCheck(_) => "InvalidHealthCheck",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Hold::ViewStale(why) => format!("berth's view of the cluster is stale ({why}): nothing is remediated until it is whole"),
            Hold::HeartbeatsStale { stale, total } => format!(
                "{stale} of {total} nodes stopped heartbeating at once: a control-plane or network fault, not {stale} dead machines; nothing is remediated until heartbeats resume"
            ),
            Hold::TooManyUnhealthy { unhealthy, total, allowed } => format!(
                "{unhealthy} of {total} Machines are unhealthy, more than maxUnhealthy allows ({allowed}): none is remediated"
            ),
            Hold::InvalidHealthCheck(why) => why.clone(),
        }
    }
}

/// What berth knows of the cluster as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Why berth's view is stale, if it is (caches not synced, a watch restarting).
    pub stale: Option<String>,
    pub nodes: usize,
    /// Nodes whose Ready condition is Unknown or absent: no heartbeat reaches the API.
    pub nodes_heartbeat_stale: usize,
}

/// The cluster-wide guard: holds every group's remediation while berth's view is stale, or while more than half of
/// the cluster's nodes (and at least two) have stale heartbeats at once. Machines die one at a time; heartbeats stop
/// together when the control plane or the network is at fault.
pub fn cluster_guard(view: &ClusterView) -> Option<Hold> {
    if let Some(why) = &view.stale {
        return Some(Hold::ViewStale(why.clone()));
    }
    if view.nodes_heartbeat_stale >= 2 && view.nodes_heartbeat_stale * 2 > view.nodes {
        return Some(Hold::HeartbeatsStale {
            stale: view.nodes_heartbeat_stale,
            total: view.nodes,
        });
    }
    None
}

/// Why one Machine is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub machine: String,
    /// `UnhealthyNode` or `NodeNotFound`.
    pub reason: &'static str,
    pub message: String,
    /// When it became unhealthy (the timeout ran out).
    pub since: DateTime<Utc>,
}

/// The decision for one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupPlan {
    /// Every Machine unhealthy now, remediating ones included, oldest first.
    pub unhealthy: Vec<Unhealthy>,
    /// Machines to remediate now (a subset of `unhealthy` not yet remediating).
    pub remediate: Vec<Unhealthy>,
    /// Why unhealthy Machines are left alone, if they are.
    pub hold: Option<Hold>,
    /// The earliest moment a Machine that is not unhealthy yet will be, if one is on its way: look again then.
    pub recheck_at: Option<DateTime<Utc>>,
}

/// Judges one Machine: unhealthy now, unhealthy from some later moment, or healthy.
fn judge(
    machine: &MachineHealth,
    policy: &HealthPolicy,
    evidence_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<Unhealthy>, Option<DateTime<Utc>>) {
    let Some(node) = &machine.node else {
        return (None, None);
    };
    let mut due: Option<(DateTime<Utc>, &'static str, String)> = None;
    let mut consider = |at: DateTime<Utc>, reason: &'static str, message: String| {
        if due.as_ref().is_none_or(|(d, _, _)| at < *d) {
            due = Some((at, reason, message));
        }
    };
    match node {
        NodeState::Missing { since } => {
            let from = (*since).max(evidence_since);
            consider(
                from + policy.node_missing_timeout,
                "NodeNotFound",
                format!(
                    "the Machine's Node has been missing for more than {}s",
                    policy.node_missing_timeout.num_seconds()
                ),
            );
        }
        NodeState::Present(conditions) => {
            for rule in &policy.conditions {
                let held = conditions
                    .iter()
                    .find(|c| c.type_ == rule.type_)
                    .map(|c| (c.status.as_str(), c.since));
                // A Node without the condition at all is treated as Unknown: nothing reported it.
                let (status, since) = match held {
                    Some(h) => h,
                    None if rule.status == "Unknown" => ("Unknown", evidence_since),
                    None => continue,
                };
                if status != rule.status {
                    continue;
                }
                // "Unknown" is the absence of news: the time berth could not see does not count.
                let from = if status == "Unknown" {
                    since.max(evidence_since)
                } else {
                    since
                };
                consider(
                    from + rule.timeout,
                    "UnhealthyNode",
                    format!(
                        "Node condition {}={} for more than {}s",
                        rule.type_,
                        rule.status,
                        rule.timeout.num_seconds()
                    ),
                );
            }
        }
    }
    match due {
        Some((at, reason, message)) if at <= now => (
            Some(Unhealthy {
                machine: machine.name.clone(),
                reason,
                message,
                since: at,
            }),
            None,
        ),
        Some((at, _, _)) => (None, Some(at)),
        None => (None, None),
    }
}

/// Decides one group: who is unhealthy, whom to remediate now, or why not.
pub fn plan_group(
    policy: &HealthPolicy,
    machines: &[MachineHealth],
    cluster_hold: Option<&Hold>,
    evidence_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> GroupPlan {
    let mut plan = GroupPlan::default();
    let counted: Vec<&MachineHealth> = machines
        .iter()
        .filter(|m| !m.deleting || m.remediating)
        .collect();
    for m in &counted {
        let (unhealthy, later) = judge(m, policy, evidence_since, now);
        match unhealthy {
            Some(u) => plan.unhealthy.push(u),
            // A Machine already being remediated counts as unhealthy whatever its Node shows now.
            None if m.remediating => plan.unhealthy.push(Unhealthy {
                machine: m.name.clone(),
                reason: "Remediating",
                message: "being remediated".into(),
                since: now,
            }),
            None => {}
        }
        if let Some(at) = later {
            plan.recheck_at = Some(plan.recheck_at.map_or(at, |r| r.min(at)));
        }
    }
    plan.unhealthy.sort_by(|a, b| {
        a.since
            .cmp(&b.since)
            .then_with(|| a.machine.cmp(&b.machine))
    });
    let remediating = counted.iter().filter(|m| m.remediating).count();
    let waiting: Vec<&Unhealthy> = plan
        .unhealthy
        .iter()
        .filter(|u| !counted.iter().any(|m| m.remediating && m.name == u.machine))
        .collect();
    if waiting.is_empty() {
        return plan;
    }
    if let Some(hold) = cluster_hold {
        plan.hold = Some(hold.clone());
        return plan;
    }
    let allowed = policy.max_unhealthy.allowed(counted.len());
    if plan.unhealthy.len() > allowed {
        plan.hold = Some(Hold::TooManyUnhealthy {
            unhealthy: plan.unhealthy.len(),
            total: counted.len(),
            allowed,
        });
        return plan;
    }
    // Rate: one new remediation per group per pass, and never more in flight than maxUnhealthy.
    if remediating < allowed {
        plan.remediate.push(waiting[0].clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine_deployment::UnhealthyNodeCondition;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn ready(status: &str, since: i64) -> NodeState {
        NodeState::Present(vec![NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            since: t(since),
        }])
    }

    fn machine(name: &str, node: NodeState) -> MachineHealth {
        MachineHealth {
            name: name.into(),
            node: Some(node),
            remediating: false,
            deleting: false,
        }
    }

    fn fleet(n: usize) -> Vec<MachineHealth> {
        (0..n)
            .map(|i| machine(&format!("m{i}"), ready("True", 0)))
            .collect()
    }

    #[test]
    fn not_ready_past_its_timeout_is_remediated_once() {
        let policy = HealthPolicy::default();
        let mut group = fleet(5);
        group[2] = machine("m2", ready("False", 100));
        let before = plan_group(&policy, &group, None, t(0), t(399));
        assert!(before.unhealthy.is_empty());
        assert_eq!(before.recheck_at, Some(t(400)));
        let plan = plan_group(&policy, &group, None, t(0), t(401));
        assert_eq!(plan.remediate.len(), 1);
        assert_eq!(plan.remediate[0].machine, "m2");
        assert_eq!(plan.remediate[0].reason, "UnhealthyNode");
        assert_eq!(plan.hold, None);
        group[2].remediating = true;
        group[2].deleting = true;
        let again = plan_group(&policy, &group, None, t(0), t(500));
        assert!(again.remediate.is_empty(), "never remediated twice");
    }

    #[test]
    fn three_of_five_with_forty_percent_holds_all() {
        let policy = HealthPolicy::default();
        let mut group = fleet(5);
        for (i, m) in group.iter_mut().enumerate().take(3) {
            *m = machine(&format!("m{i}"), ready("False", 0));
        }
        let plan = plan_group(&policy, &group, None, t(0), t(1000));
        assert_eq!(plan.unhealthy.len(), 3);
        assert!(plan.remediate.is_empty());
        assert_eq!(
            plan.hold,
            Some(Hold::TooManyUnhealthy {
                unhealthy: 3,
                total: 5,
                allowed: 2
            })
        );
        assert!(plan.hold.unwrap().message().contains("3 of 5"));
    }

    #[test]
    fn unknown_time_spent_blind_does_not_count() {
        let policy = HealthPolicy::default();
        let mut group = fleet(4);
        group[0] = machine("m0", ready("Unknown", 0));
        // berth's view became trustworthy at t=250: the node's 10 minutes of Unknown count from there.
        let plan = plan_group(&policy, &group, None, t(250), t(549));
        assert!(plan.unhealthy.is_empty());
        assert_eq!(plan.recheck_at, Some(t(550)));
        let plan = plan_group(&policy, &group, None, t(250), t(551));
        assert_eq!(plan.remediate.len(), 1);
        // A kubelet's own NotReady report is evidence whatever berth saw: its clock is the condition's.
        group[0] = machine("m0", ready("False", 0));
        let plan = plan_group(&policy, &group, None, t(250), t(301));
        assert_eq!(plan.remediate.len(), 1);
    }

    #[test]
    fn a_cluster_hold_holds_every_group() {
        let policy = HealthPolicy::default();
        let mut group = fleet(5);
        group[0] = machine("m0", ready("False", 0));
        let hold = cluster_guard(&ClusterView {
            stale: None,
            nodes: 10,
            nodes_heartbeat_stale: 6,
        })
        .unwrap();
        assert_eq!(hold.reason(), "HeartbeatsStale");
        let plan = plan_group(&policy, &group, Some(&hold), t(0), t(1000));
        assert!(plan.remediate.is_empty());
        assert_eq!(plan.hold, Some(hold));
        assert_eq!(
            cluster_guard(&ClusterView {
                stale: None,
                nodes: 10,
                nodes_heartbeat_stale: 5
            }),
            None,
            "half is not more than half"
        );
        assert_eq!(
            cluster_guard(&ClusterView {
                stale: Some("caches not synced".into()),
                nodes: 10,
                nodes_heartbeat_stale: 0
            })
            .map(|h| h.reason()),
            Some("ClusterViewStale")
        );
        assert_eq!(
            cluster_guard(&ClusterView {
                stale: None,
                nodes: 1,
                nodes_heartbeat_stale: 1
            }),
            None,
            "one node alone is judged by its group"
        );
    }

    #[test]
    fn a_missing_node_counts_from_when_it_was_first_seen_missing() {
        let policy = HealthPolicy::default();
        let mut group = fleet(3);
        group[1] = machine("m1", NodeState::Missing { since: t(100) });
        assert!(plan_group(&policy, &group, None, t(0), t(399))
            .unhealthy
            .is_empty());
        let plan = plan_group(&policy, &group, None, t(0), t(401));
        assert_eq!(plan.remediate[0].reason, "NodeNotFound");
    }

    #[test]
    fn in_flight_remediations_are_capped_by_max_unhealthy() {
        let policy = HealthPolicy {
            max_unhealthy: MaxUnhealthy::Count(2),
            ..Default::default()
        };
        let mut group = fleet(10);
        group[0] = machine("m0", ready("False", 0));
        group[1] = machine("m1", ready("False", 10));
        let first = plan_group(&policy, &group, None, t(0), t(1000));
        assert_eq!(first.remediate.len(), 1, "one per pass");
        assert_eq!(first.remediate[0].machine, "m0", "oldest first");
        group[0].remediating = true;
        group[0].deleting = true;
        let second = plan_group(&policy, &group, None, t(0), t(1010));
        assert_eq!(second.remediate[0].machine, "m1");
        group[1].remediating = true;
        group[1].deleting = true;
        group[2] = machine("m2", ready("False", 20));
        let third = plan_group(&policy, &group, None, t(0), t(1020));
        assert!(third.remediate.is_empty());
        assert!(matches!(
            third.hold,
            Some(Hold::TooManyUnhealthy { unhealthy: 3, .. })
        ));
    }

    #[test]
    fn machines_not_yet_running_and_deleting_ones_are_not_judged() {
        let policy = HealthPolicy::default();
        let mut group = fleet(2);
        group[0].node = None;
        group[1] = machine("m1", ready("False", 0));
        group[1].deleting = true;
        let plan = plan_group(&policy, &group, None, t(0), t(10_000));
        assert!(plan.unhealthy.is_empty());
    }

    #[test]
    fn max_unhealthy_rounds_down_but_allows_one_and_zero_turns_it_off() {
        assert_eq!(MaxUnhealthy::Percent(40).allowed(5), 2);
        assert_eq!(MaxUnhealthy::Percent(40).allowed(1), 1);
        assert_eq!(MaxUnhealthy::Percent(0).allowed(100), 0);
        assert_eq!(MaxUnhealthy::Count(0).allowed(100), 0);
        let policy = HealthPolicy {
            max_unhealthy: MaxUnhealthy::Count(0),
            ..Default::default()
        };
        let mut group = fleet(3);
        group[0] = machine("m0", ready("False", 0));
        assert!(plan_group(&policy, &group, None, t(0), t(1000))
            .remediate
            .is_empty());
    }

    #[test]
    fn the_spec_parses_with_defaults_and_bad_fields_are_named() {
        assert_eq!(policy_of(None).unwrap(), HealthPolicy::default());
        let spec = HealthCheckSpec {
            unhealthy_node_conditions: Some(vec![UnhealthyNodeCondition {
                type_: "DiskPressure".into(),
                status: ConditionStatus::True,
                timeout: "90s".into(),
            }]),
            node_startup_timeout: Some("20m".into()),
            max_unhealthy: Some(IntOrString::Int(3)),
            ..Default::default()
        };
        let p = policy_of(Some(&spec)).unwrap();
        assert_eq!(p.conditions[0].status, "True");
        assert_eq!(p.conditions[0].timeout, Duration::seconds(90));
        assert_eq!(p.node_startup_timeout, Some(Duration::minutes(20)));
        assert_eq!(p.max_unhealthy, MaxUnhealthy::Count(3));
        let bad = |s: HealthCheckSpec| policy_of(Some(&s)).unwrap_err().to_string();
        assert!(bad(HealthCheckSpec {
            max_unhealthy: Some(IntOrString::String("140%".into())),
            ..Default::default()
        })
        .contains("spec.healthCheck.maxUnhealthy"));
        assert!(bad(HealthCheckSpec {
            max_unhealthy: Some(IntOrString::Int(-1)),
            ..Default::default()
        })
        .contains("negative"));
        assert!(bad(HealthCheckSpec {
            unhealthy_node_conditions: Some(vec![UnhealthyNodeCondition {
                type_: "Ready".into(),
                status: ConditionStatus::False,
                timeout: "five minutes".into(),
            }]),
            ..Default::default()
        })
        .contains("unhealthyNodeConditions[0].timeout"));
    }
}
