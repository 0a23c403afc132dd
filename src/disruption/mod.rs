//! Scale-down and consolidation: which nodes to remove, and which to replace with one cheaper node; and at-risk
//! nodes, which to move off first.
//!
//! [`plan`] is a pure, deterministic function of plain data ([`DisruptionInput`]), the instance-type [`Catalog`]
//! and `now`. It imports nothing from kube or tokio, so every rule is a table test, a decision can be re-checked
//! by planning again on a fresh snapshot (the controller's validation step), and a simulation can replay it on
//! virtual time. The controller (`controllers::disruption`) only observes, calls it twice, and applies.
//!
//! # Candidates, in order
//!
//! 0. **At risk** (EC2 sent a rebalance recommendation for a node of a `Replace` class, or AWS Health a scheduled
//!    change: [`Candidate::at_risk`]), the earliest deadline first, before everything else and whatever the policy
//!    (scale-down or consolidation disabled included: the node goes anyway). Each is deleted when its pods fit on
//!    the other nodes, else replaced by the one new node the solver picks for its pods with the node's own pool
//!    (instance type, zone and capacity type) made unavailable; for a rebalance only if that node costs at most
//!    `price × (1 + maxPriceIncreasePercent/100)`, and its launch keeps only the alternatives within that bound, so
//!    whatever EC2 picks respects it (a scheduled change has no bound: the solver's cheapest). Within the group's
//!    budget (these use it first) and minimum (at the minimum a node is replaced one for one); the node's age and
//!    the delay after a scale-up do not hold it, the do-not-disrupt, pod and PDB rules do. A node that cannot go
//!    is kept with the reason ([`Blocker::NoReplacement`], [`Blocker::ReplacementTooExpensive`], ...), and no later
//!    rule looks at an at-risk node.
//! 1. **Empty** nodes (no pods but DaemonSet and mirror pods) are deleted at once, most expensive first.
//! 2. **Underutilized** nodes (requested cpu and memory both below `utilization_threshold_percent` of
//!    allocatable, DaemonSet pods included as the cluster autoscaler counts them) for at least `unneeded_time`,
//!    whose pods fit on the remaining nodes without any new node, are deleted, least utilized first.
//! 3. **Multi-node consolidation**: the least utilized nodes (at most [`MAX_MULTI_NODE`]) are replaced by one
//!    cheaper node: the whole list first, then prefixes by binary search for the largest whose pods fit on the
//!    remaining nodes plus one new node, as Karpenter does. A handful of simulations, whatever the cluster's size.
//! 4. **Single-node consolidation**: one node replaced by one strictly cheaper node. A spot node is replaced by a
//!    spot node only when at least [`MIN_SPOT_TO_SPOT_TYPES`] cheaper instance types could hold its pods, and the
//!    launch is then limited to the cheapest of them (Karpenter's guard against churning through spot
//!    interruptions towards ever cheaper, ever less available pools). Multi-node consolidation lowers the node
//!    count, so it is not held to that guard.
//!
//! Consolidation never turns into a plain deletion: when a set of nodes' pods fit without a new node, removing them
//! is left to the underutilized rule and its `unneeded_time`. Cost is the objective: a replacement happens only if
//! its hourly price is strictly below the sum of the nodes it replaces, and the launch is restricted to instance
//! types that keep it so.
//!
//! Whether pods fit is decided by `scheduling::solve`, the same simulation that decides scale-up: a snapshot whose
//! pending pods are the candidates' reschedulable pods and whose nodes exclude the candidates (and, for a
//! replacement, the node groups a new node may come from). Accepted deletions move their pods onto the nodes the
//! simulation chose, so later decisions in the same plan see those nodes fuller. At most
//! [`DisruptionInput::max_simulations`] simulations run per plan (a cheap resource-sum check rules out hopeless ones
//! first), so a plan stays bounded on 1,000 nodes; candidates left over are examined in a later round.
//!
//! # Never disrupted
//!
//! Nodes (or nodes running pods) annotated `berth.dev/do-not-disrupt: "true"`; nodes with pods no controller owns
//! (unless `skip_nodes_with_unowned_pods` is off); nodes with kube-system pods no PodDisruptionBudget covers (unless
//! `skip_nodes_with_system_pods` is off); nodes with pods whose PDB allows no disruption (each evicted pod uses one
//! of its PDB's allowed disruptions, shared across the plan's decisions); nodes of a group at its minimum; nodes
//! younger than `min_node_age`; nodes of a group that scaled up less than `delay_after_scale_up` ago; and beyond
//! the group's disruption budget (see [`budget`]), counting nodes already being removed.
//!
//! # Underutilized since when
//!
//! "Underutilized for ten minutes" needs memory, and the planner has none: the caller passes the map of nodes to the
//! time they were first seen underutilized ([`DisruptionInput::underutilized_since`]) and keeps the updated map the
//! plan returns ([`DisruptionPlan::underutilized_since`]). The controller holds it in memory only: after a restart
//! the clock starts again, which delays a scale-down by at most `unneeded_time` and never causes one.

pub mod budget;
pub mod cron;
#[cfg(test)]
mod tests;

use crate::model::instance_type::{CapacityType, Catalog};
use crate::model::label_selector::Selector;
use crate::model::pod::Pod;
use crate::model::resources::Resources;
use crate::scheduling::{self, ExistingNode, NewMachine, NodeGroup, Snapshot};
use budget::{allowed_disruptions, Budget};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// The most nodes one multi-node consolidation replaces (Karpenter's practice is to keep such commands small).
pub const MAX_MULTI_NODE: usize = 10;
/// Cheaper instance types a single spot node's replacement must be able to use (Karpenter's figure).
pub const MIN_SPOT_TO_SPOT_TYPES: usize = 15;
/// Default bound on scheduling simulations per plan.
pub const DEFAULT_MAX_SIMULATIONS: usize = 64;
/// The namespace whose pods need a PDB before their node may go (when `skip_nodes_with_system_pods`).
pub const SYSTEM_NAMESPACE: &str = "kube-system";
/// Prices are compared with this much slack (USD per hour): a bound computed in floating point never refuses the
/// price it was computed from.
const PRICE_EPSILON: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisruptionError {
    #[error("disruption budget schedule {schedule:?}: {reason}")]
    InvalidSchedule { schedule: String, reason: String },
    #[error("disruption budget nodes {value:?}: {reason}")]
    InvalidBudget { value: String, reason: String },
    #[error("scale-down policy {field}: {reason}")]
    InvalidPolicy { field: &'static str, reason: String },
}

impl DisruptionError {
    pub fn category(&self) -> &'static str {
        match self {
            DisruptionError::InvalidSchedule { .. } => "invalid_schedule",
            DisruptionError::InvalidBudget { .. } => "invalid_budget",
            DisruptionError::InvalidPolicy { .. } => "invalid_policy",
        }
    }
}

/// The scale-down policy (the Cluster's `spec.scaleDown`, durations parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    pub consolidation: bool,
    pub delay_after_scale_up: chrono::Duration,
    pub unneeded_time: chrono::Duration,
    pub utilization_threshold_percent: u32,
    pub min_node_age: chrono::Duration,
    pub skip_nodes_with_system_pods: bool,
    pub skip_nodes_with_unowned_pods: bool,
}

impl Default for Policy {
    /// The API's defaults.
    fn default() -> Self {
        Policy {
            enabled: true,
            consolidation: true,
            delay_after_scale_up: chrono::Duration::minutes(10),
            unneeded_time: chrono::Duration::minutes(10),
            utilization_threshold_percent: 50,
            min_node_age: chrono::Duration::minutes(5),
            skip_nodes_with_system_pods: true,
            skip_nodes_with_unowned_pods: true,
        }
    }
}

/// A node berth may remove: a Machine's node in an autoscaled group.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The node and every pod bound to it (DaemonSet pods included; mirror and finished pods left out).
    pub node: ExistingNode,
    pub group: String,
    /// The Machine's name (in the group's namespace).
    pub machine: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    /// USD per hour.
    pub price: f64,
    pub created_at: DateTime<Utc>,
    /// The node itself carries `berth.dev/do-not-disrupt: "true"`.
    pub do_not_disrupt: bool,
    /// `namespace/name` of its pods annotated `berth.dev/do-not-disrupt: "true"`.
    pub do_not_disrupt_pods: BTreeSet<String>,
    /// EC2 warned about it (`berth.dev/at-risk`): it is moved away first, see [`AtRisk`].
    pub at_risk: Option<AtRisk>,
}

/// Why a node is at risk, from its Machine's `berth.dev/at-risk` annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct AtRisk {
    pub kind: AtRiskKind,
    /// When EC2 acts (a scheduled change's start); None for a rebalance recommendation.
    pub deadline: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AtRiskKind {
    /// An EC2 rebalance recommendation on a class whose `spec.rebalance.action` is Replace. A replacement may cost
    /// at most this many percent more per hour than the node (the class's `maxPriceIncreasePercent`).
    Rebalance { max_price_increase_percent: u32 },
    /// An AWS Health scheduled change (maintenance, retirement): no price bound.
    ScheduledChange,
}

impl AtRiskKind {
    pub fn reason(self) -> Reason {
        match self {
            AtRiskKind::Rebalance { .. } => Reason::RebalanceRecommended,
            AtRiskKind::ScheduledChange => Reason::ScheduledChange,
        }
    }
}

impl Candidate {
    pub fn name(&self) -> &str {
        &self.node.node.name
    }
}

/// A node group as far as disruption is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    pub name: String,
    pub min_replicas: u32,
    /// spec.replicas.
    pub replicas: u32,
    /// Nodes the group has (what budget percentages are of).
    pub nodes: u32,
    pub budgets: Vec<Budget>,
    /// Nodes of the group already being removed: they use budget.
    pub disrupting: u32,
    pub last_scale_up: Option<DateTime<Utc>>,
    /// Its Machines belong to more than one MachineSet: a rollout is replacing them. The rollout planner moves
    /// replicas between the sets, so a replica berth removes now could be taken from the old set while the Machine
    /// berth marked stays in the new one, marked forever and holding the budget. The rollout goes first.
    pub rolling_out: bool,
    /// Its nodes may be replaced by consolidation. False for Auto Scaling groups: berth removes their empty and
    /// underutilized nodes (TerminateInstanceInAutoScalingGroup with a decrement) but cannot launch a node of a
    /// chosen shape into them, and a replacement elsewhere would leave the group's desired capacity to refill it.
    pub replaceable: bool,
}

/// A PodDisruptionBudget's view.
#[derive(Debug, Clone, PartialEq)]
pub struct PdbView {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    pub disruptions_allowed: u32,
}

impl PdbView {
    pub fn covers(&self, pod: &Pod) -> bool {
        pod.spec.namespace == self.namespace && self.selector.matches(&pod.spec.labels)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DisruptionInput {
    pub candidates: Vec<Candidate>,
    pub groups: Vec<GroupState>,
    pub pdbs: Vec<PdbView>,
    pub policy: Policy,
    /// Schedulable nodes that are not candidates (other groups, unmanaged nodes), with their pods: where pods may go.
    pub others: Vec<ExistingNode>,
    /// Groups a replacement node may come from (`current_replicas` as now).
    pub node_groups: Vec<NodeGroup>,
    /// Node name → when it was first seen underutilized (the previous plan's map).
    pub underutilized_since: BTreeMap<String, DateTime<Utc>>,
    pub max_simulations: usize,
}

impl Default for DisruptionInput {
    fn default() -> Self {
        DisruptionInput {
            candidates: vec![],
            groups: vec![],
            pdbs: vec![],
            policy: Policy::default(),
            others: vec![],
            node_groups: vec![],
            underutilized_since: BTreeMap::new(),
            max_simulations: DEFAULT_MAX_SIMULATIONS,
        }
    }
}

/// Why a node is disrupted; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Empty,
    Underutilized,
    ConsolidationSingle,
    ConsolidationMulti,
    /// At risk: EC2 recommended rebalancing it away from its spot pool.
    RebalanceRecommended,
    /// At risk: an AWS Health scheduled change (maintenance, retirement).
    ScheduledChange,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Empty,
        Reason::Underutilized,
        Reason::ConsolidationSingle,
        Reason::ConsolidationMulti,
        Reason::RebalanceRecommended,
        Reason::ScheduledChange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::Underutilized => "underutilized",
            Reason::ConsolidationSingle => "consolidation_single",
            Reason::ConsolidationMulti => "consolidation_multi",
            Reason::RebalanceRecommended => "rebalance_recommended",
            Reason::ScheduledChange => "scheduled_change",
        }
    }

    /// The reason `as_str` wrote.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The node is at risk (EC2 warned): it goes whatever it costs or saves.
    pub fn at_risk(self) -> bool {
        matches!(self, Reason::RebalanceRecommended | Reason::ScheduledChange)
    }
}

/// One node to remove or several to replace.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Delete {
        node: String,
        machine: String,
        group: String,
        reason: Reason,
        /// What the node costs, for the Event.
        instance_type: String,
        price: f64,
    },
    Replace {
        nodes: Vec<String>,
        machines: Vec<String>,
        groups: Vec<String>,
        reason: Reason,
        /// The node to launch first; its `instance_types` are only those that keep the replacement cheaper (for
        /// an at-risk node: those within the class's price bound, never the node's own pool).
        replacement: NewMachine,
        /// USD per hour saved at the replacement's price (negative when an at-risk node's replacement costs more).
        savings: f64,
        /// What the replaced nodes cost together.
        replaced_price: f64,
    },
}

impl Command {
    pub fn reason(&self) -> Reason {
        match self {
            Command::Delete { reason, .. } | Command::Replace { reason, .. } => *reason,
        }
    }

    /// The nodes it disrupts.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Command::Delete { node, .. } => vec![node.clone()],
            Command::Replace { nodes, .. } => nodes.clone(),
        }
    }

    /// Same kind, reason and nodes: the validation step keeps a command only if the second plan has its twin.
    pub fn same_decision(&self, other: &Command) -> bool {
        let mut a = self.nodes();
        let mut b = other.nodes();
        a.sort();
        b.sort();
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.reason() == other.reason()
            && a == b
    }

    /// A one-line explanation for an Event.
    pub fn message(&self) -> String {
        match self {
            Command::Delete { node, instance_type, price, reason, .. } if reason.at_risk() => format!(
                "Moving off an at-risk node: node {node} ({instance_type}, ${price:.3}/h) {}; its pods fit on other nodes",
                at_risk_why(*reason)
            ),
            Command::Delete { node, instance_type, price, reason, .. } => {
                let why = match reason {
                    Reason::Empty => "is empty".to_string(),
                    _ => "is underutilized and its pods fit on other nodes".to_string(),
                };
                format!("Consolidating: node {node} ({instance_type}, ${price:.3}/h) {why}")
            }
            Command::Replace { nodes, replacement, replaced_price, reason, .. } if reason.at_risk() => format!(
                "Replacing at-risk node {} (${replaced_price:.3}/h, {}) with one {} in {} ({}, ${:.3}/h) first; it is drained once the replacement is Ready",
                nodes.join(", "),
                at_risk_why(*reason),
                replacement.instance_type,
                replacement.zone,
                replacement.capacity_type,
                replacement.price
            ),
            Command::Replace { nodes, replacement, savings, replaced_price, .. } => format!(
                "Consolidating: replacing {} (${replaced_price:.3}/h) with one {} in {} ({}, ${:.3}/h), saving ${savings:.3}/h",
                nodes.join(", "),
                replacement.instance_type,
                replacement.zone,
                replacement.capacity_type,
                replacement.price
            ),
        }
    }
}

fn at_risk_why(reason: Reason) -> &'static str {
    match reason {
        Reason::RebalanceRecommended => "EC2 recommends rebalancing it",
        _ => "EC2 scheduled a maintenance or retirement",
    }
}

/// Why a candidate stays.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocker {
    Disabled,
    UnknownGroup {
        group: String,
    },
    NodeDoNotDisrupt,
    PodDoNotDisrupt {
        pod: String,
    },
    UnownedPod {
        pod: String,
    },
    SystemPodWithoutPdb {
        pod: String,
    },
    PdbExhausted {
        pdb: String,
        pod: String,
    },
    GroupAtMinimum {
        group: String,
        min: u32,
    },
    TooYoung {
        age_seconds: i64,
    },
    RecentScaleUp {
        group: String,
        seconds_ago: i64,
    },
    BudgetExhausted {
        group: String,
    },
    RolloutInProgress {
        group: String,
    },
    /// Underutilized, waiting out `unneeded_time`.
    NotUnneededYet {
        since: DateTime<Utc>,
    },
    PodsDoNotFit {
        detail: String,
    },
    NotCheaper {
        detail: String,
    },
    SpotToSpotTooFewTypes {
        cheaper: usize,
    },
    SimulationLimit,
    /// Nothing to gain: not empty, not underutilized, and no cheaper replacement.
    Utilized,
    /// At risk, but its pods fit neither on other nodes nor on one new node outside its own pool.
    NoReplacement {
        detail: String,
    },
    /// At risk (rebalance), but the cheapest replacement outside its pool costs more than the class allows.
    ReplacementTooExpensive {
        instance_type: String,
        price: f64,
        bound: f64,
        max_price_increase_percent: u32,
    },
}

impl Blocker {
    /// A short label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Blocker::Disabled => "disabled",
            Blocker::UnknownGroup { .. } => "unknown_group",
            Blocker::NodeDoNotDisrupt => "node_do_not_disrupt",
            Blocker::PodDoNotDisrupt { .. } => "pod_do_not_disrupt",
            Blocker::UnownedPod { .. } => "unowned_pod",
            Blocker::SystemPodWithoutPdb { .. } => "system_pod_without_pdb",
            Blocker::PdbExhausted { .. } => "pdb_exhausted",
            Blocker::GroupAtMinimum { .. } => "group_at_minimum",
            Blocker::TooYoung { .. } => "too_young",
            Blocker::RecentScaleUp { .. } => "recent_scale_up",
            Blocker::BudgetExhausted { .. } => "budget_exhausted",
            Blocker::RolloutInProgress { .. } => "rollout_in_progress",
            Blocker::NotUnneededYet { .. } => "not_unneeded_yet",
            Blocker::PodsDoNotFit { .. } => "pods_do_not_fit",
            Blocker::NotCheaper { .. } => "not_cheaper",
            Blocker::SpotToSpotTooFewTypes { .. } => "spot_to_spot_too_few_types",
            Blocker::SimulationLimit => "simulation_limit",
            Blocker::Utilized => "utilized",
            Blocker::NoReplacement { .. } => "no_replacement",
            Blocker::ReplacementTooExpensive { .. } => "replacement_too_expensive",
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::Disabled => write!(f, "scale-down is disabled"),
            Blocker::UnknownGroup { group } => write!(f, "group {group} is not autoscaled"),
            Blocker::NodeDoNotDisrupt => write!(f, "node is annotated berth.dev/do-not-disrupt"),
            Blocker::PodDoNotDisrupt { pod } => {
                write!(f, "pod {pod} is annotated berth.dev/do-not-disrupt")
            }
            Blocker::UnownedPod { pod } => write!(f, "pod {pod} has no controller"),
            Blocker::SystemPodWithoutPdb { pod } => {
                write!(f, "kube-system pod {pod} has no PodDisruptionBudget")
            }
            Blocker::PdbExhausted { pdb, pod } => write!(
                f,
                "PodDisruptionBudget {pdb} allows no disruption of pod {pod}"
            ),
            Blocker::GroupAtMinimum { group, min } => {
                write!(f, "group {group} is at its minimum of {min}")
            }
            Blocker::TooYoung { age_seconds } => write!(f, "node is only {age_seconds}s old"),
            Blocker::RecentScaleUp { group, seconds_ago } => {
                write!(f, "group {group} scaled up {seconds_ago}s ago")
            }
            Blocker::BudgetExhausted { group } => {
                write!(f, "group {group}'s disruption budget is used up")
            }
            Blocker::RolloutInProgress { group } => {
                write!(f, "group {group} is rolling out")
            }
            Blocker::NotUnneededYet { since } => {
                write!(f, "underutilized since {}", since.to_rfc3339())
            }
            Blocker::PodsDoNotFit { detail } => {
                write!(f, "its pods do not fit elsewhere: {detail}")
            }
            Blocker::NotCheaper { detail } => write!(f, "no cheaper replacement: {detail}"),
            Blocker::SpotToSpotTooFewTypes { cheaper } => {
                write!(f, "spot-to-spot replacement needs {MIN_SPOT_TO_SPOT_TYPES} cheaper instance types, found {cheaper}")
            }
            Blocker::SimulationLimit => write!(f, "not examined this round (simulation limit)"),
            Blocker::Utilized => write!(f, "utilized and no cheaper replacement"),
            Blocker::NoReplacement { detail } => write!(
                f,
                "at risk, but no replacement outside its pool holds its pods: {detail}"
            ),
            Blocker::ReplacementTooExpensive {
                instance_type,
                price,
                bound,
                max_price_increase_percent,
            } => write!(
                f,
                "at risk, but the cheapest replacement outside its pool, {instance_type} at ${price:.4}/h, costs more than ${bound:.4}/h (maxPriceIncreasePercent {max_price_increase_percent})"
            ),
        }
    }
}

/// A candidate kept, and why (log fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub node: String,
    pub blocker: Blocker,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DisruptionPlan {
    pub commands: Vec<Command>,
    pub kept: Vec<Kept>,
    /// The updated underutilization clock, for the next plan.
    pub underutilized_since: BTreeMap<String, DateTime<Utc>>,
    /// Scheduling simulations run.
    pub simulations: usize,
    /// The earliest moment a rule that depends on the clock (minimum node age, the delay after a scale-up, the
    /// unneeded time, a budget's schedule window) may decide differently: until then the same input plans the same.
    /// None: nothing here waits on the clock.
    pub revisit_at: Option<DateTime<Utc>>,
}

/// Plans one round of scale-down and consolidation.
pub fn plan(input: &DisruptionInput, catalog: &Catalog, now: DateTime<Utc>) -> DisruptionPlan {
    let mut planner = Planner::new(input, catalog, now);
    // At-risk nodes first, and whatever the policy says: EC2 is taking them away anyway (a rebalance recommendation
    // usually comes before an interruption, a scheduled change has a date), so disabling scale-down or
    // consolidation cannot keep them; it would only turn an orderly move, replacement first and within the budget,
    // into an abrupt one. The budget and the group's minimum still apply, and they use the budget first.
    planner.move_at_risk();
    if !input.policy.enabled {
        for i in planner.order.clone() {
            if planner.open(i) {
                planner.kept.insert(i, Blocker::Disabled);
            }
        }
        return planner.finish();
    }
    planner.delete_empty();
    planner.delete_underutilized();
    if input.policy.consolidation {
        planner.consolidate_multi();
        planner.consolidate_single();
    }
    planner.finish()
}

/// What the planner works out once per candidate.
struct Facts {
    /// Pods that must move (everything but DaemonSet pods).
    movable: Vec<Pod>,
    utilization_percent: f64,
    underutilized: bool,
    /// A rule that keeps the node whatever the others do.
    blocker: Option<Blocker>,
}

struct Planner<'a> {
    input: &'a DisruptionInput,
    catalog: &'a Catalog,
    now: DateTime<Utc>,
    /// Candidate indices by name.
    order: Vec<usize>,
    facts: Vec<Facts>,
    /// Where pods may go: others first, then the candidates (same index offset).
    pool: Vec<ExistingNode>,
    pool_index: BTreeMap<String, usize>,
    /// Pool entries leaving (chosen for disruption).
    leaving: Vec<bool>,
    groups: BTreeMap<&'a str, &'a GroupState>,
    /// Per group: nodes it may still lose this round.
    allowance: BTreeMap<String, u32>,
    /// Per group: replicas it will have after this plan's commands.
    replicas: BTreeMap<String, u32>,
    pdb_left: Vec<u32>,
    commands: Vec<Command>,
    kept: BTreeMap<usize, Blocker>,
    /// Why a node could not simply be deleted; consolidation may still replace it.
    soft: BTreeMap<usize, Blocker>,
    since: BTreeMap<String, DateTime<Utc>>,
    simulations: usize,
}

/// The replacement's launch shape: these types (priced, sorted cheapest first), with the one the solver chose
/// among them whatever its price.
fn set_launch_types(replacement: &mut scheduling::NewMachine, priced: Vec<(f64, String)>) {
    replacement.instance_types = priced.into_iter().map(|(_, t)| t).collect();
    if !replacement
        .instance_types
        .contains(&replacement.instance_type)
    {
        replacement
            .instance_types
            .insert(0, replacement.instance_type.clone());
    }
}

/// The price of instance type `t` in `zone` as `capacity_type`, when the catalog offers it there.
fn offering_price(
    catalog: &Catalog,
    t: &str,
    zone: &str,
    capacity_type: CapacityType,
) -> Option<f64> {
    catalog
        .get(t)?
        .offerings
        .iter()
        .find(|o| o.zone == zone && o.capacity_type == capacity_type)
        .map(|o| o.price)
}

fn utilization(node: &ExistingNode) -> f64 {
    let mut used = Resources::default();
    for p in node.pods.iter() {
        used.add(&p.spec.requests);
    }
    let a = &node.node.allocatable;
    let share = |u: u64, c: u64| {
        if c == 0 {
            100.0
        } else {
            u as f64 * 100.0 / c as f64
        }
    };
    share(used.cpu_millis, a.cpu_millis).max(share(used.memory_bytes, a.memory_bytes))
}

impl<'a> Planner<'a> {
    fn new(input: &'a DisruptionInput, catalog: &'a Catalog, now: DateTime<Utc>) -> Planner<'a> {
        let mut order: Vec<usize> = (0..input.candidates.len()).collect();
        order.sort_by(|a, b| input.candidates[*a].name().cmp(input.candidates[*b].name()));
        let groups: BTreeMap<&str, &GroupState> =
            input.groups.iter().map(|g| (g.name.as_str(), g)).collect();
        let mut pool: Vec<ExistingNode> = input.others.clone();
        pool.extend(input.candidates.iter().map(|c| c.node.clone()));
        let pool_index = pool
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.name.clone(), i))
            .collect();
        let allowance = input
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    allowed_disruptions(&g.budgets, g.nodes, now).saturating_sub(g.disrupting),
                )
            })
            .collect();
        let replicas = input
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.replicas))
            .collect();
        let mut planner = Planner {
            input,
            catalog,
            now,
            order,
            facts: vec![],
            leaving: vec![false; pool.len()],
            pool,
            pool_index,
            groups,
            allowance,
            replicas,
            pdb_left: input.pdbs.iter().map(|p| p.disruptions_allowed).collect(),
            commands: vec![],
            kept: BTreeMap::new(),
            soft: BTreeMap::new(),
            since: BTreeMap::new(),
            simulations: 0,
        };
        planner.facts = input
            .candidates
            .iter()
            .map(|c| planner.facts_of(c))
            .collect();
        for (i, c) in input.candidates.iter().enumerate() {
            if planner.facts[i].underutilized {
                let since = input
                    .underutilized_since
                    .get(c.name())
                    .copied()
                    .filter(|s| *s <= now)
                    .unwrap_or(now);
                planner.since.insert(c.name().to_string(), since);
            }
        }
        planner
    }

    fn facts_of(&self, c: &Candidate) -> Facts {
        let p = &self.input.policy;
        let movable: Vec<Pod> = c
            .node
            .pods
            .iter()
            .filter(|p| !p.is_daemon())
            .cloned()
            .collect();
        let utilization_percent = utilization(&c.node);
        let underutilized =
            movable.is_empty() || utilization_percent < p.utilization_threshold_percent as f64;
        let blocker = self.static_blocker(c, &movable, c.at_risk.is_some());
        Facts {
            movable,
            utilization_percent,
            underutilized,
            blocker,
        }
    }

    /// Rules that depend on the candidate alone, most fundamental first. An `at_risk` node is not held for its age
    /// or its group's last scale-up: those guard against removing capacity just launched, and it goes anyway.
    fn static_blocker(&self, c: &Candidate, movable: &[Pod], at_risk: bool) -> Option<Blocker> {
        let p = &self.input.policy;
        let Some(group) = self.groups.get(c.group.as_str()) else {
            return Some(Blocker::UnknownGroup {
                group: c.group.clone(),
            });
        };
        if c.do_not_disrupt {
            return Some(Blocker::NodeDoNotDisrupt);
        }
        if let Some(pod) = movable
            .iter()
            .find(|pod| c.do_not_disrupt_pods.contains(&pod.key()))
        {
            return Some(Blocker::PodDoNotDisrupt { pod: pod.key() });
        }
        let age = self.now - c.created_at;
        if age < p.min_node_age && !at_risk {
            return Some(Blocker::TooYoung {
                age_seconds: age.num_seconds(),
            });
        }
        if let Some(at) = group.last_scale_up.filter(|_| !at_risk) {
            let ago = self.now - at;
            if ago < p.delay_after_scale_up {
                return Some(Blocker::RecentScaleUp {
                    group: group.name.clone(),
                    seconds_ago: ago.num_seconds(),
                });
            }
        }
        for pod in movable {
            if p.skip_nodes_with_unowned_pods && pod.owner.is_none() {
                return Some(Blocker::UnownedPod { pod: pod.key() });
            }
            let covered: Vec<usize> = (0..self.input.pdbs.len())
                .filter(|i| self.input.pdbs[*i].covers(pod))
                .collect();
            if p.skip_nodes_with_system_pods
                && pod.spec.namespace == SYSTEM_NAMESPACE
                && covered.is_empty()
            {
                return Some(Blocker::SystemPodWithoutPdb { pod: pod.key() });
            }
            if let Some(i) = covered
                .iter()
                .find(|i| self.input.pdbs[**i].disruptions_allowed == 0)
            {
                let pdb = &self.input.pdbs[*i];
                return Some(Blocker::PdbExhausted {
                    pdb: format!("{}/{}", pdb.namespace, pdb.name),
                    pod: pod.key(),
                });
            }
        }
        None
    }

    fn cand(&self, i: usize) -> &'a Candidate {
        &self.input.candidates[i]
    }

    fn pool_of(&self, i: usize) -> usize {
        self.input.others.len() + i
    }

    fn open(&self, i: usize) -> bool {
        !self.leaving[self.pool_of(i)] && !self.kept.contains_key(&i)
    }

    /// Group minimum and budget for removing `nodes` (candidate indices), with `added` replacement nodes in a
    /// group. Returns the blocker of the first group that refuses.
    fn group_check(&self, nodes: &[usize], added: Option<&str>) -> Result<(), Blocker> {
        if let Some(group) = added.filter(|g| self.groups.get(*g).is_some_and(|g| g.rolling_out)) {
            return Err(Blocker::RolloutInProgress {
                group: group.to_string(),
            });
        }
        let mut removed: BTreeMap<&str, u32> = BTreeMap::new();
        for &i in nodes {
            *removed.entry(self.cand(i).group.as_str()).or_default() += 1;
        }
        for (group, n) in &removed {
            let Some(g) = self.groups.get(group) else {
                return Err(Blocker::UnknownGroup {
                    group: group.to_string(),
                });
            };
            if g.rolling_out {
                return Err(Blocker::RolloutInProgress {
                    group: group.to_string(),
                });
            }
            if self.allowance.get(*group).copied().unwrap_or(0) < *n {
                return Err(Blocker::BudgetExhausted {
                    group: group.to_string(),
                });
            }
            let back = u32::from(added == Some(*group));
            let replicas = self.replicas.get(*group).copied().unwrap_or(g.replicas);
            if (replicas + back).saturating_sub(*n) < g.min_replicas || replicas + back < *n {
                return Err(Blocker::GroupAtMinimum {
                    group: group.to_string(),
                    min: g.min_replicas,
                });
            }
        }
        Ok(())
    }

    /// The PDB disruptions the nodes' pods would use, or the first PDB that cannot afford them.
    fn pdb_take(&self, nodes: &[usize]) -> Result<Vec<u32>, Blocker> {
        let mut left = self.pdb_left.clone();
        for &i in nodes {
            for pod in &self.facts[i].movable {
                for (k, pdb) in self.input.pdbs.iter().enumerate() {
                    if pdb.covers(pod) {
                        if left[k] == 0 {
                            return Err(Blocker::PdbExhausted {
                                pdb: format!("{}/{}", pdb.namespace, pdb.name),
                                pod: pod.key(),
                            });
                        }
                        left[k] -= 1;
                    }
                }
            }
        }
        Ok(left)
    }

    /// Books a decision: the nodes leave, budgets and replicas shrink, pods land where the simulation put them.
    fn commit(
        &mut self,
        nodes: &[usize],
        pdb_left: Vec<u32>,
        assignments: &[scheduling::Assignment],
        added: Option<&str>,
        command: Command,
    ) {
        for &i in nodes {
            let c = self.cand(i);
            let p = self.pool_of(i);
            self.leaving[p] = true;
            if let Some(a) = self.allowance.get_mut(&c.group) {
                *a = a.saturating_sub(1);
            }
            if let Some(r) = self.replicas.get_mut(&c.group) {
                *r = r.saturating_sub(1);
            }
        }
        if let Some(g) = added {
            if let Some(r) = self.replicas.get_mut(g) {
                *r += 1;
            }
        }
        self.pdb_left = pdb_left;
        let moving: BTreeMap<String, &Pod> = nodes
            .iter()
            .flat_map(|i| self.facts[*i].movable.iter())
            .map(|p| (p.key(), p))
            .collect();
        for a in assignments {
            if let (Some(pod), Some(&target)) = (moving.get(&a.pod), self.pool_index.get(&a.node)) {
                let mut pod = (*pod).clone();
                pod.node_name = Some(a.node.clone());
                Arc::make_mut(&mut self.pool[target].pods).push(pod);
            }
        }
        self.commands.push(command);
    }

    /// Free cpu and memory on the nodes pods could still go to: a quick necessary condition before a simulation.
    fn room_for(&self, nodes: &[usize]) -> bool {
        let mut need = Resources::default();
        for &i in nodes {
            for p in &self.facts[i].movable {
                need.add(&p.spec.requests);
            }
        }
        let mut free = Resources::default();
        for (k, n) in self.pool.iter().enumerate() {
            if self.leaving[k]
                || n.node.unschedulable
                || nodes.iter().any(|i| self.pool_of(*i) == k)
            {
                continue;
            }
            let mut used = Resources::default();
            for p in n.pods.iter() {
                used.add(&p.spec.requests);
            }
            free.add(&n.node.allocatable.saturating_sub(&used));
        }
        need.cpu_millis <= free.cpu_millis && need.memory_bytes <= free.memory_bytes
    }

    /// Simulates moving the nodes' pods to the remaining nodes, plus the node groups when `allow_new`.
    fn simulate(&mut self, nodes: &[usize], allow_new: bool) -> Result<scheduling::Plan, Blocker> {
        self.simulate_in(nodes, allow_new, true, self.catalog)
    }

    /// [`Planner::simulate`] against another catalog (one with an offering made unavailable), and with the
    /// remaining nodes as destinations only when `existing`.
    fn simulate_in(
        &mut self,
        nodes: &[usize],
        allow_new: bool,
        existing: bool,
        catalog: &Catalog,
    ) -> Result<scheduling::Plan, Blocker> {
        if self.simulations >= self.input.max_simulations {
            return Err(Blocker::SimulationLimit);
        }
        self.simulations += 1;
        let excluded: BTreeSet<usize> = nodes.iter().map(|i| self.pool_of(*i)).collect();
        let pending: Vec<Pod> = nodes
            .iter()
            .flat_map(|i| self.facts[*i].movable.iter())
            .map(|p| Pod {
                node_name: None,
                ..p.clone()
            })
            .collect();
        let destinations: Vec<ExistingNode> = self
            .pool
            .iter()
            .enumerate()
            .filter(|(k, _)| existing && !self.leaving[*k] && !excluded.contains(k))
            .map(|(_, n)| n.clone())
            .collect();
        let groups = if allow_new {
            self.input
                .node_groups
                .iter()
                .map(|g| {
                    let mut g = g.clone();
                    if let Some(r) = self.replicas.get(&g.name) {
                        g.current_replicas = g.current_replicas.max(*r);
                    }
                    g
                })
                .collect()
        } else {
            vec![]
        };
        let snapshot = Snapshot {
            pending,
            nodes: destinations,
            groups,
            ..Default::default()
        };
        let result =
            scheduling::solve(&snapshot, catalog, self.now).map_err(|e| Blocker::PodsDoNotFit {
                detail: e.to_string(),
            })?;
        if let Some(u) = result.unschedulable.first() {
            return Err(Blocker::PodsDoNotFit {
                detail: format!("{}: {}", u.pod, u.reason),
            });
        }
        Ok(result)
    }

    fn delete_empty(&mut self) {
        let mut empty: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|i| self.open(*i) && self.facts[*i].movable.is_empty())
            .collect();
        // The most expensive first: the budget goes where it saves most.
        empty.sort_by(|a, b| {
            self.cand(*b)
                .price
                .total_cmp(&self.cand(*a).price)
                .then(self.cand(*a).name().cmp(self.cand(*b).name()))
        });
        for i in empty {
            if let Some(b) = self.facts[i].blocker.clone() {
                self.kept.insert(i, b);
                continue;
            }
            if let Err(b) = self.group_check(&[i], None) {
                self.kept.insert(i, b);
                continue;
            }
            let c = self.cand(i);
            let command = Command::Delete {
                node: c.name().to_string(),
                machine: c.machine.clone(),
                group: c.group.clone(),
                reason: Reason::Empty,
                instance_type: c.instance_type.clone(),
                price: c.price,
            };
            let left = self.pdb_left.clone();
            self.commit(&[i], left, &[], None, command);
        }
    }

    /// At-risk nodes, the earliest deadline first (a rebalance recommendation has none: last), each deleted when
    /// its pods fit on the other nodes, else replaced first by one new node outside its own pool. Every at-risk
    /// node leaves this stage chosen or kept, so no later stage looks at it again.
    fn move_at_risk(&mut self) {
        let mut list: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|i| self.cand(*i).at_risk.is_some())
            .collect();
        let deadline = |i: usize| self.cand(i).at_risk.as_ref().and_then(|r| r.deadline);
        list.sort_by(|a, b| match (deadline(*a), deadline(*b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        for i in list {
            let Some(risk) = self.cand(i).at_risk.clone() else {
                continue;
            };
            if let Some(b) = self.facts[i].blocker.clone() {
                self.kept.insert(i, b);
                continue;
            }
            // Budget and rollout refuse both a deletion and a replacement; the group's minimum only a deletion.
            let delete = self.group_check(&[i], None);
            if let Err(
                b @ (Blocker::BudgetExhausted { .. }
                | Blocker::RolloutInProgress { .. }
                | Blocker::UnknownGroup { .. }),
            ) = &delete
            {
                self.kept.insert(i, b.clone());
                continue;
            }
            let left = match self.pdb_take(&[i]) {
                Ok(left) => left,
                Err(b) => {
                    self.kept.insert(i, b);
                    continue;
                }
            };
            let reason = risk.kind.reason();
            if delete.is_ok() {
                let fits = if self.facts[i].movable.is_empty() {
                    Ok(vec![])
                } else if self.room_for(&[i]) {
                    match self.simulate(&[i], false) {
                        Ok(result) if result.new_machines.is_empty() => Ok(result.assignments),
                        Err(Blocker::SimulationLimit) => Err(Some(Blocker::SimulationLimit)),
                        _ => Err(None),
                    }
                } else {
                    Err(None)
                };
                match fits {
                    Ok(assignments) => {
                        let c = self.cand(i);
                        let command = Command::Delete {
                            node: c.name().to_string(),
                            machine: c.machine.clone(),
                            group: c.group.clone(),
                            reason,
                            instance_type: c.instance_type.clone(),
                            price: c.price,
                        };
                        self.commit(&[i], left, &assignments, None, command);
                        continue;
                    }
                    Err(Some(b)) => {
                        self.kept.insert(i, b);
                        continue;
                    }
                    Err(None) => {}
                }
            }
            let group = self.cand(i).group.as_str();
            if !self.groups.get(group).is_some_and(|g| g.replaceable) {
                let b = match delete {
                    Err(b) => b,
                    Ok(()) => Blocker::NoReplacement {
                        detail: format!("its pods do not fit on other nodes and berth cannot launch into group {group}"),
                    },
                };
                self.kept.insert(i, b);
                continue;
            }
            // At its group's minimum the node is replaced one for one, even when its pods would fit elsewhere.
            let at_minimum = matches!(delete, Err(Blocker::GroupAtMinimum { .. }));
            match self.at_risk_replacement(i, &risk, at_minimum) {
                Ok((command, assignments, group)) => {
                    self.commit(&[i], left, &assignments, Some(&group), command)
                }
                Err(b) => {
                    self.kept.insert(i, b);
                }
            }
        }
    }

    /// The at-risk node's replacement: the solver's own choice for its pods, with the node's pool (its instance
    /// type in its zone and capacity type) unavailable, and for a rebalance only if it costs at most
    /// `price × (1 + maxPriceIncreasePercent/100)`. The launch keeps only the alternatives within that bound (all
    /// of them for a scheduled change), cheapest first, so whatever EC2 picks among them respects it. With
    /// `only_new`, the pods may go nowhere but the new node (the group must keep its size).
    fn at_risk_replacement(
        &mut self,
        i: usize,
        risk: &AtRisk,
        only_new: bool,
    ) -> Result<(Command, Vec<scheduling::Assignment>, String), Blocker> {
        let c = self.cand(i);
        let own_pool = |t: &str, zone: &str, capacity: CapacityType| {
            t == c.instance_type && zone == c.zone && capacity == c.capacity_type
        };
        let mut catalog = self.catalog.clone();
        for t in catalog
            .instance_types
            .iter_mut()
            .filter(|t| t.name == c.instance_type)
        {
            for o in t
                .offerings
                .iter_mut()
                .filter(|o| o.zone == c.zone && o.capacity_type == c.capacity_type)
            {
                o.available = false;
            }
        }
        let result = self
            .simulate_in(&[i], true, !only_new, &catalog)
            .map_err(|b| match b {
                Blocker::PodsDoNotFit { detail } => Blocker::NoReplacement { detail },
                other => other,
            })?;
        let mut replacement = match result.new_machines.as_slice() {
            [one] => one.clone(),
            [] if only_new => return Err(Blocker::NoReplacement {
                detail:
                    "its group is at its minimum and the node has no pods to size a replacement by"
                        .into(),
            }),
            [] => {
                return Err(Blocker::NoReplacement {
                    detail: "the simulation placed its pods without a new node".into(),
                })
            }
            more => {
                return Err(Blocker::NoReplacement {
                    detail: format!("its pods need {} new nodes", more.len()),
                })
            }
        };
        self.group_check(&[i], Some(&replacement.group))?;
        let bound = match risk.kind {
            AtRiskKind::Rebalance {
                max_price_increase_percent,
            } => {
                let bound = c.price * (1.0 + f64::from(max_price_increase_percent) / 100.0);
                if replacement.price > bound + PRICE_EPSILON {
                    return Err(Blocker::ReplacementTooExpensive {
                        instance_type: replacement.instance_type.clone(),
                        price: replacement.price,
                        bound,
                        max_price_increase_percent,
                    });
                }
                Some(bound)
            }
            AtRiskKind::ScheduledChange => None,
        };
        let price_of = |t: &str| {
            offering_price(
                self.catalog,
                t,
                &replacement.zone,
                replacement.capacity_type,
            )
        };
        let mut allowed: Vec<(f64, String)> = replacement
            .instance_types
            .iter()
            .filter(|t| !own_pool(t, &replacement.zone, replacement.capacity_type))
            .filter_map(|t| {
                price_of(t)
                    .filter(|p| bound.is_none_or(|b| *p <= b + PRICE_EPSILON))
                    .map(|p| (p, t.clone()))
            })
            .collect();
        allowed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        set_launch_types(&mut replacement, allowed);
        let group = replacement.group.clone();
        let command = Command::Replace {
            nodes: vec![c.name().to_string()],
            machines: vec![c.machine.clone()],
            groups: vec![c.group.clone()],
            reason: risk.kind.reason(),
            savings: c.price - replacement.price,
            replaced_price: c.price,
            replacement,
        };
        Ok((command, result.assignments, group))
    }

    fn by_utilization(&self, list: &mut [usize]) {
        list.sort_by(|a, b| {
            self.facts[*a]
                .utilization_percent
                .total_cmp(&self.facts[*b].utilization_percent)
                .then(self.cand(*b).price.total_cmp(&self.cand(*a).price))
                .then(self.cand(*a).name().cmp(self.cand(*b).name()))
        });
    }

    fn delete_underutilized(&mut self) {
        let unneeded = self.input.policy.unneeded_time;
        let mut list: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|i| self.open(*i) && self.facts[*i].underutilized)
            .collect();
        self.by_utilization(&mut list);
        for i in list {
            if let Some(b) = self.facts[i].blocker.clone() {
                self.kept.insert(i, b);
                continue;
            }
            let since = self
                .since
                .get(self.cand(i).name())
                .copied()
                .unwrap_or(self.now);
            if self.now - since < unneeded {
                // Not yet; consolidation may still replace it.
                continue;
            }
            let left = match self
                .group_check(&[i], None)
                .and_then(|_| self.pdb_take(&[i]))
            {
                Ok(left) => left,
                Err(b) => {
                    self.kept.insert(i, b);
                    continue;
                }
            };
            if !self.room_for(&[i]) {
                self.soft.insert(
                    i,
                    Blocker::PodsDoNotFit {
                        detail: "the remaining nodes lack the free cpu or memory".into(),
                    },
                );
                continue;
            }
            match self.simulate(&[i], false) {
                Ok(result) if result.new_machines.is_empty() => {
                    let c = self.cand(i);
                    let command = Command::Delete {
                        node: c.name().to_string(),
                        machine: c.machine.clone(),
                        group: c.group.clone(),
                        reason: Reason::Underutilized,
                        instance_type: c.instance_type.clone(),
                        price: c.price,
                    };
                    self.commit(&[i], left, &result.assignments, None, command);
                }
                Ok(_) => {
                    self.soft.insert(
                        i,
                        Blocker::PodsDoNotFit {
                            detail: "they would need a new node".into(),
                        },
                    );
                }
                Err(Blocker::SimulationLimit) => {
                    self.kept.insert(i, Blocker::SimulationLimit);
                }
                Err(b) => {
                    self.soft.insert(i, b);
                }
            }
        }
    }

    /// Nodes consolidation may look at: open, not statically blocked, with pods to move.
    fn consolidation_candidates(&mut self) -> Vec<usize> {
        let mut list = vec![];
        for i in self.order.clone() {
            if !self.open(i) || self.facts[i].movable.is_empty() {
                continue;
            }
            if let Some(b) = self.facts[i].blocker.clone() {
                self.kept.insert(i, b);
                continue;
            }
            let group = self.cand(i).group.as_str();
            if !self.groups.get(group).is_some_and(|g| g.replaceable) {
                continue;
            }
            list.push(i);
        }
        self.by_utilization(&mut list);
        list
    }

    /// Tries to replace `nodes` with one new node; the command if it fits and is strictly cheaper.
    fn try_replace(
        &mut self,
        nodes: &[usize],
        reason: Reason,
    ) -> Result<(Command, Vec<u32>, Vec<scheduling::Assignment>, String), Blocker> {
        let left = self
            .group_check(nodes, None)
            .and_then(|_| self.pdb_take(nodes))?;
        let result = self.simulate(nodes, true)?;
        let mut replacement = match result.new_machines.as_slice() {
            [] => {
                return Err(Blocker::NotCheaper {
                    detail: "the pods fit without a new node (left to the underutilized rule)"
                        .into(),
                })
            }
            [one] => one.clone(),
            more => {
                return Err(Blocker::NotCheaper {
                    detail: format!("the pods need {} new nodes", more.len()),
                })
            }
        };
        self.group_check(nodes, Some(&replacement.group))?;
        let replaced_price: f64 = nodes.iter().map(|i| self.cand(*i).price).sum();
        if replacement.price >= replaced_price {
            return Err(Blocker::NotCheaper {
                detail: format!(
                    "{} at ${:.4}/h is not below ${replaced_price:.4}/h",
                    replacement.instance_type, replacement.price
                ),
            });
        }
        // Launch only types that keep the replacement cheaper, whichever the cloud picks.
        let price_of = |t: &str| {
            offering_price(
                self.catalog,
                t,
                &replacement.zone,
                replacement.capacity_type,
            )
        };
        let mut cheaper: Vec<(f64, String)> = replacement
            .instance_types
            .iter()
            .filter_map(|t| {
                price_of(t)
                    .filter(|p| *p < replaced_price)
                    .map(|p| (p, t.clone()))
            })
            .collect();
        cheaper.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let all_spot = nodes
            .iter()
            .all(|i| self.cand(*i).capacity_type == CapacityType::Spot);
        if nodes.len() == 1 && all_spot && replacement.capacity_type == CapacityType::Spot {
            if cheaper.len() < MIN_SPOT_TO_SPOT_TYPES {
                return Err(Blocker::SpotToSpotTooFewTypes {
                    cheaper: cheaper.len(),
                });
            }
            cheaper.truncate(MIN_SPOT_TO_SPOT_TYPES);
        }
        set_launch_types(&mut replacement, cheaper);
        let group = replacement.group.clone();
        let command = Command::Replace {
            nodes: nodes
                .iter()
                .map(|i| self.cand(*i).name().to_string())
                .collect(),
            machines: nodes
                .iter()
                .map(|i| self.cand(*i).machine.clone())
                .collect(),
            groups: nodes.iter().map(|i| self.cand(*i).group.clone()).collect(),
            reason,
            savings: replaced_price - replacement.price,
            replaced_price,
            replacement,
        };
        Ok((command, left, result.assignments, group))
    }

    fn consolidate_multi(&mut self) {
        let list = self.consolidation_candidates();
        // The prefix respects budgets and minimums as a whole.
        let mut prefix: Vec<usize> = vec![];
        for i in list {
            if prefix.len() >= MAX_MULTI_NODE {
                break;
            }
            let mut with = prefix.clone();
            with.push(i);
            if self.group_check(&with, None).is_ok() && self.pdb_take(&with).is_ok() {
                prefix = with;
            }
        }
        if prefix.len() < 2 {
            return;
        }
        // All of them first (the common case: several idle nodes into one), then a binary search below, which
        // assumes that a set that fits has fitting prefixes (not always true, but cheap and usually right).
        let mut best = None;
        let (mut lo, mut hi) = (2, prefix.len() - 1);
        match self.try_replace(&prefix, Reason::ConsolidationMulti) {
            Ok(found) => {
                best = Some((prefix.len(), found));
                hi = 0;
            }
            Err(Blocker::SimulationLimit) => hi = 0,
            Err(_) => {}
        }
        while lo <= hi {
            let mid = (lo + hi) / 2;
            match self.try_replace(&prefix[..mid], Reason::ConsolidationMulti) {
                Ok(found) => {
                    best = Some((mid, found));
                    lo = mid + 1;
                }
                Err(Blocker::SimulationLimit) => break,
                Err(_) => hi = mid - 1,
            }
        }
        if let Some((n, (command, left, assignments, group))) = best {
            self.commit(&prefix[..n], left, &assignments, Some(&group), command);
        }
    }

    fn consolidate_single(&mut self) {
        for i in self.consolidation_candidates() {
            match self.try_replace(&[i], Reason::ConsolidationSingle) {
                Ok((command, left, assignments, group)) => {
                    self.commit(&[i], left, &assignments, Some(&group), command)
                }
                Err(b) => {
                    // "No cheaper replacement" says little: say what the node is waiting for instead.
                    let b = match (b, self.soft.remove(&i), self.since.get(self.cand(i).name())) {
                        (Blocker::NotCheaper { .. }, Some(soft), _) => soft,
                        (Blocker::NotCheaper { .. }, None, Some(since))
                            if self.facts[i].underutilized =>
                        {
                            Blocker::NotUnneededYet { since: *since }
                        }
                        (Blocker::NotCheaper { .. }, None, _) => Blocker::Utilized,
                        (other, _, _) => other,
                    };
                    self.kept.insert(i, b);
                }
            }
        }
    }

    fn finish(mut self) -> DisruptionPlan {
        let mut kept = vec![];
        for &i in &self.order {
            if self.leaving[self.pool_of(i)] {
                continue;
            }
            let blocker = match self.kept.remove(&i).or_else(|| self.soft.remove(&i)) {
                Some(b) => b,
                None => match self.since.get(self.cand(i).name()) {
                    Some(since) if self.facts[i].underutilized => {
                        Blocker::NotUnneededYet { since: *since }
                    }
                    _ => Blocker::Utilized,
                },
            };
            kept.push(Kept {
                node: self.cand(i).name().to_string(),
                blocker,
            });
        }
        let revisit_at = self.revisit_at();
        // Nodes chosen keep their clock: the confirming plan must see them as unneeded as this one did. A clock
        // goes when its node stops being a candidate.
        DisruptionPlan {
            commands: self.commands,
            kept,
            underutilized_since: self.since,
            simulations: self.simulations,
            revisit_at,
        }
    }

    fn revisit_at(&self) -> Option<DateTime<Utc>> {
        let p = &self.input.policy;
        // Schedule windows open and close on their own; a minute is soon enough to notice.
        let windows = self
            .input
            .groups
            .iter()
            .any(|g| g.budgets.iter().any(|b| b.window.is_some()))
            .then(|| self.now + chrono::Duration::minutes(1));
        let groups = self
            .input
            .groups
            .iter()
            .filter_map(|g| g.last_scale_up.map(|t| t + p.delay_after_scale_up));
        let nodes = self.order.iter().flat_map(|&i| {
            let c = self.cand(i);
            let unneeded = self
                .since
                .get(c.name())
                .filter(|_| self.facts[i].underutilized)
                .map(|t| *t + p.unneeded_time);
            [Some(c.created_at + p.min_node_age), unneeded]
        });
        windows
            .into_iter()
            .chain(groups)
            .chain(nodes.flatten())
            .filter(|t| *t > self.now)
            .min()
    }
}
