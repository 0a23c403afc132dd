//! Scheduling simulation and bin-packing: the pure core that decides what to launch.
//!
//! [`solve`] takes a [`Snapshot`] (pending pods, existing nodes with their pods, in-flight machines, node groups,
//! limits, the expander) and the instance-type [`Catalog`], and returns a [`Plan`]: which pending pods go onto
//! existing or in-flight nodes, which new machines to launch (group, instance type, zone, capacity type, price,
//! the alternatives that would also fit) and which pods cannot be placed, each with the constraint that failed.
//!
//! The simulation follows the kube-scheduler's filters ([`predicates`] holds them as plain functions, and
//! [`verify`] checks a finished plan against them independently of the solver), so a launched node is one the
//! scheduler will actually use. The packer (`engine`) groups identical pods into equivalence classes, sorts them
//! largest first, places them first-fit on open nodes and opens new nodes with the instance type that holds the
//! most of the remaining work per dollar; a final pass re-sizes every new node down to the cheapest type that
//! still holds its pods. Preferences (preferred node and pod affinity, ScheduleAnyway spread, PreferNoSchedule)
//! are first treated as requirements and relaxed one by one when they cannot be met.

mod engine;
pub mod lp;
pub mod predicates;
mod repack;
pub mod verify;

use crate::model::instance_type::{CapacityType, Catalog};
use crate::model::node::Node;
use crate::model::pod::Pod;
use crate::model::requirements::Requirements;
use crate::model::resources::Resources;
use crate::model::taints::Taint;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use engine::solve;

/// How many alternative instance types a new machine carries (CreateFleet practice is at most 60 overrides).
pub const MAX_LAUNCH_TYPES: usize = 60;
/// In-flight machines older than this without a node are presumed failed and no longer count as capacity.
pub const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulingError {
    #[error("node group {group}: instance type {instance_type} is not in the catalog")]
    UnknownInstanceType {
        group: String,
        instance_type: String,
    },
    #[error("in-flight machine {machine}: node group {group} does not exist")]
    UnknownGroup { machine: String, group: String },
    #[error("duplicate node group name {0}")]
    DuplicateGroup(String),
}

impl SchedulingError {
    pub fn category(&self) -> &'static str {
        match self {
            SchedulingError::UnknownInstanceType { .. } => "unknown_instance_type",
            SchedulingError::UnknownGroup { .. } => "unknown_group",
            SchedulingError::DuplicateGroup(_) => "duplicate_group",
        }
    }
}

/// A group of identically configured machines (a MachineDeployment with its MachineClass).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGroup {
    pub name: String,
    /// The catalog instance types the group's class allows.
    pub instance_types: Vec<String>,
    /// Further requirements the class puts on offerings (zones, capacity types, ...), matched like node affinity
    /// against each (instance type, zone, capacity type).
    pub requirements: Requirements,
    /// Labels every node of the group carries.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Taints present only while the node initialises: ignored for fit.
    pub startup_taints: Vec<Taint>,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Machines the group has now (registered or not).
    pub current_replicas: u32,
    /// Higher wins under the priority expander.
    pub priority: i32,
    /// DaemonSet pods that would land on each new node; those whose affinity and tolerations admit a node count
    /// against that node's allocatable, per instance type.
    pub daemon_pods: Vec<Pod>,
    /// A fixed per-node overhead on top of the daemon pods.
    pub daemon_overhead: Resources,
    pub root_volume_bytes: u64,
}

impl NodeGroup {
    pub fn new(name: &str, instance_types: Vec<String>) -> NodeGroup {
        NodeGroup {
            name: name.to_string(),
            instance_types,
            requirements: Requirements::new(),
            labels: BTreeMap::new(),
            taints: vec![],
            startup_taints: vec![],
            min_replicas: 0,
            max_replicas: u32::MAX,
            current_replicas: 0,
            priority: 0,
            daemon_pods: vec![],
            daemon_overhead: Resources::default(),
            root_volume_bytes: crate::model::instance_type::DEFAULT_ROOT_VOLUME_BYTES,
        }
    }
}

/// A registered node and the pods bound to it. Shared, because the disruption planner hands the same nodes to
/// dozens of what-if solves per round: a clone is two reference counts, not every pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingNode {
    pub node: Arc<Node>,
    pub pods: Arc<Vec<Pod>>,
}

impl ExistingNode {
    pub fn new(node: Node, pods: Vec<Pod>) -> ExistingNode {
        ExistingNode {
            node: Arc::new(node),
            pods: Arc::new(pods),
        }
    }
}

/// A machine launched whose node has not registered yet: it counts as capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlightMachine {
    pub name: String,
    /// Pods already nominated to it (the pods it was launched for): they occupy it as bound pods occupy a node,
    /// so no other pod is planned into their room and they are not planned again.
    pub pods: Vec<Pod>,
    pub group: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub launched_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterLimits {
    pub max_nodes: Option<u64>,
    pub max_cores: Option<u64>,
    pub max_memory_bytes: Option<u64>,
}

/// How to choose among node groups that can all host a new machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expander {
    /// The lowest cost for the pods it will carry.
    #[default]
    Cheapest,
    /// The least idle cpu and memory once the pods are on it.
    LeastWaste,
    /// The highest group priority, then the cheapest.
    Priority,
    /// Uniformly at random among the feasible groups, from this seed.
    Random { seed: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub pending: Vec<Pod>,
    pub nodes: Vec<ExistingNode>,
    pub in_flight: Vec<InFlightMachine>,
    pub groups: Vec<NodeGroup>,
    pub limits: ClusterLimits,
    pub expander: Expander,
    /// Namespace labels, for pod affinity terms with a namespaceSelector.
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// False ignores every preference (the benchmark's "preference-ignore" run).
    pub respect_preferences: bool,
    pub registration_timeout: Duration,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            pending: vec![],
            nodes: vec![],
            in_flight: vec![],
            groups: vec![],
            limits: ClusterLimits::default(),
            expander: Expander::Cheapest,
            namespace_labels: BTreeMap::new(),
            respect_preferences: true,
            registration_timeout: DEFAULT_REGISTRATION_TIMEOUT,
        }
    }
}

/// A pending pod placed on an existing or in-flight node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// `namespace/name`.
    pub pod: String,
    pub node: String,
}

/// A machine to launch.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMachine {
    /// The planned node's name within this plan (its hostname domain for the simulation).
    pub name: String,
    pub group: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    /// USD per hour of the chosen offering.
    pub price: f64,
    /// Every instance type that would hold these pods in this zone and capacity type, cheapest first (at most
    /// [`MAX_LAUNCH_TYPES`]), so the launcher can fall back when an offering has no capacity.
    pub instance_types: Vec<String>,
    /// `namespace/name` of the pods it carries.
    pub pods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub pod: String,
    /// The constraint that failed, e.g. "no instance type in group gpu has 8 nvidia.com/gpu".
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub assignments: Vec<Assignment>,
    pub new_machines: Vec<NewMachine>,
    pub unschedulable: Vec<Unschedulable>,
}

impl Plan {
    /// Total $/h of the new machines.
    pub fn new_cost_per_hour(&self) -> f64 {
        self.new_machines.iter().map(|m| m.price).sum()
    }
}

/// Whether an in-flight machine still counts as capacity at `now`.
pub fn in_flight_counts(m: &InFlightMachine, now: DateTime<Utc>, timeout: Duration) -> bool {
    match chrono::Duration::from_std(timeout) {
        Ok(t) => now.signed_duration_since(m.launched_at) <= t,
        Err(_) => true,
    }
}

/// Checks the snapshot refers only to instance types and groups that exist.
pub fn validate(snapshot: &Snapshot, catalog: &Catalog) -> Result<(), SchedulingError> {
    let mut names = std::collections::HashSet::new();
    for g in &snapshot.groups {
        if !names.insert(g.name.as_str()) {
            return Err(SchedulingError::DuplicateGroup(g.name.clone()));
        }
        for t in &g.instance_types {
            if catalog.get(t).is_none() {
                return Err(SchedulingError::UnknownInstanceType {
                    group: g.name.clone(),
                    instance_type: t.clone(),
                });
            }
        }
    }
    for m in &snapshot.in_flight {
        if !names.contains(m.group.as_str()) {
            return Err(SchedulingError::UnknownGroup {
                machine: m.name.clone(),
                group: m.group.clone(),
            });
        }
        if catalog.get(&m.instance_type).is_none() {
            return Err(SchedulingError::UnknownInstanceType {
                group: m.group.clone(),
                instance_type: m.instance_type.clone(),
            });
        }
    }
    Ok(())
}
