//! From the cluster's objects to the scheduling [`Snapshot`]: which pods need capacity, what capacity exists or is
//! coming, and which node groups may grow. Pure over [`ClusterObjects`], so the provisioner's reading of the
//! cluster is tested without a cluster.
//!
//! Capacity that is coming counts as capacity, so one burst never launches twice:
//! - a Machine launched (or about to be) whose Node has not registered is in flight, with the instance type it
//!   launched as, or the first of its shape's types before the launch answered;
//! - replicas the provisioner added whose Machines the MachineSet has not created yet are in flight too, as the
//!   deployment's queued launch shapes that no Machine has taken.
//!
//! Both stop counting after the registration timeout, when the Machine controller fails them anyway.
//!
//! An in-flight machine is named by its launch shape's id (the Machine's name when it has none), so the
//! provisioner's nominations (pod → the shape planned for it) follow a shape from the queue to its Machine. A
//! nominated pod rides on its machine while the machine is coming: in flight, or registered as a node that is not
//! Ready yet. Once the node is Ready the kube-scheduler places pods on it in its own order, not the plan's, and may
//! fill it with pods berth planned elsewhere. A nominated pod keeps riding the Ready node while the node can still
//! hold it; one crowded off waits, unplanned, while the scheduler is still binding pods onto the new nodes (it may
//! well land on another of them), and once the scheduler has settled it is planned again at once. After
//! [`NOMINATION_GRACE`] of the node being Ready, a pod still unschedulable is pending like any other.

use super::cluster::ClusterObjects;
use crate::api::common::{TaintEffectSpec, TaintSpec};
use crate::api::keys;
use crate::api::launch_shapes::{read_shape_queue, LaunchShapeEntry};
use crate::api::machine_class::CapacityTypeSpec;
use crate::api::{Cluster, Machine, MachineDeployment, MachinePhase};
use crate::clock::from_k8s;
use crate::fx::{Fx, FxMap};
use crate::model::instance_type::{labels, CapacityType, Catalog};
use crate::model::node::Node;
use crate::model::pod::is_unschedulable;
use crate::model::pod::{OwnerRef, Pod};
use crate::model::quantity::{parse_cpu_millis, parse_units};
use crate::model::requirements::{Operator, Requirement, Requirements};
use crate::model::resources::Resources;
use crate::model::taints::{Taint, TaintEffect, Toleration, TolerationOperator};
use crate::scheduling::{
    ClusterLimits, ExistingNode, Expander, InFlightMachine, NodeGroup, Snapshot,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1 as core;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hasher;
use std::sync::Arc;

/// How long a nominated pod may ride its node after the node turns Ready: time for the scheduler to bind it there.
pub const NOMINATION_GRACE: chrono::Duration = chrono::Duration::seconds(15);

/// How long the scheduler must have bound nothing onto new nodes (nor seen one turn Ready) before a pod crowded
/// off its nominated node is planned again: until then it may still land on another new node.
pub const SCHEDULER_SETTLE: chrono::Duration = chrono::Duration::seconds(2);

/// Namespace of the placeholder pods that stand for headroom; they never exist in the cluster.
pub const HEADROOM_NAMESPACE: &str = "berth-headroom";

/// When the pod became unschedulable (the condition's transition time, else its creation).
pub fn unschedulable_since(pod: &core::Pod) -> Option<DateTime<Utc>> {
    let condition = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    condition
        .and_then(|c| c.last_transition_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| from_k8s(t.0))
}

/// How the autoscaler reads the cluster.
#[derive(Debug, Clone)]
pub struct ObserveSettings {
    /// The Cluster object to follow (by spec.clusterName); None: the only Cluster, if there is exactly one.
    pub cluster_name: Option<String>,
    pub registration_timeout: std::time::Duration,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        ObserveSettings {
            cluster_name: None,
            registration_timeout: crate::scheduling::DEFAULT_REGISTRATION_TIMEOUT,
        }
    }
}

/// A node group as the provisioner writes it back: which MachineDeployment, and what it has queued.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupTarget {
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub replicas: u32,
    pub max_replicas: u32,
    /// Queued shapes no Machine has taken yet (those taken are pruned when the provisioner writes the queue).
    pub open_shapes: Vec<LaunchShapeEntry>,
}

/// Prefix of the scheduling group names of Auto Scaling groups (MachineDeployments keep their plain names).
pub const ASG_GROUP_PREFIX: &str = "asg:";
/// Cluster Autoscaler's node-template tags, which describe an empty group's nodes; berth reads the same ones.
const ASG_LABEL_TAG: &str = "k8s.io/cluster-autoscaler/node-template/label/";
const ASG_TAINT_TAG: &str = "k8s.io/cluster-autoscaler/node-template/taint/";

/// A pod berth will not plan for, and why (becomes a NotTriggerScaleUp Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPod {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// What the provisioner plans from, and what it needs to apply the plan.
#[derive(Debug, Clone)]
pub struct Observation {
    pub snapshot: Snapshot,
    /// By group name (the MachineDeployment's name, which its nodes carry in berth.dev/machine-deployment).
    pub groups: BTreeMap<String, GroupTarget>,
    /// Unschedulable pods that cannot be planned for.
    pub skipped: Vec<SkippedPod>,
    /// MachineDeployments left out of planning, and why (becomes a Warning Event on them).
    pub invalid_groups: Vec<(String, String, String)>,
    /// When each pending pod (by `namespace/name`) became unschedulable.
    pub pending_since: HashMap<String, DateTime<Utc>>,
    /// Unschedulable pods held on the machine nominated for them, not planned for now (see the module's doc).
    pub riding: HashSet<String>,
    /// Riding pods whose machine's Node has registered: pod → node name, where berth expects the scheduler to put
    /// them (it says so in their `status.nominatedNodeName`).
    pub expected_nodes: HashMap<String, String>,
    /// The unschedulable pods as the API has them, by `namespace/name` (what berth writes to them is conditioned on
    /// the version read).
    pub pending_objects: HashMap<String, Arc<core::Pod>>,
    /// When a pod riding a Ready node will be planned again if nothing changes before: the scheduler settled, or
    /// the node's grace over. Nothing in the cluster changes at that moment, so the provisioner must look itself.
    pub revisit_at: Option<DateTime<Utc>>,
    /// The Cluster followed, if any.
    pub cluster: Option<Cluster>,
    /// Auto Scaling groups planned for, by scheduling group name: (ASG name, desired capacity).
    pub auto_scaling_groups: BTreeMap<String, (String, u32)>,
}

/// Pods as the planner reads them, kept from one observation to the next: a cluster of 30,000 running pods changes a
/// few of them between two passes, and reading every one again cost a second a pass.
///
/// Pending pods are kept by uid and resourceVersion. A node's bound pods are kept as a whole, by a fingerprint of
/// their resourceVersions: most nodes hold the same pods from one pass to the next, and the snapshot then
/// shares the list instead of copying every pod into it; a node whose pods changed has them all read again. Nodes
/// themselves are kept by resourceVersion.
#[derive(Debug, Default)]
pub struct PodReadings {
    by_uid: HashMap<String, (String, Result<Pod, String>)>,
    seen: HashSet<String>,
    /// Node name → a fingerprint of its bound pods' resourceVersions, and their readings.
    by_node: HashMap<String, (u64, NodePods)>,
    /// Nodes as read, by name, with the resourceVersion they were read at.
    nodes: FxMap<String, (String, Arc<Node>)>,
}

/// The readings of the pods bound to one node.
#[derive(Debug, Clone, Default)]
pub struct NodePods {
    /// The unfinished pods that could be read, sorted by key.
    pub pods: Arc<Vec<Pod>>,
    /// Pods that could not be read (`namespace/name`, why): the autoscaler plans without them, the disruption
    /// planner leaves their node alone.
    pub unreadable: Vec<(String, String)>,
}

impl PodReadings {
    fn read(&mut self, k8s: &core::Pod) -> Result<Pod, String> {
        let (Some(uid), Some(rv)) = (
            k8s.metadata.uid.as_deref(),
            k8s.metadata.resource_version.as_deref(),
        ) else {
            return Pod::from_k8s(k8s).map_err(|e| e.to_string());
        };
        self.seen.insert(uid.to_string());
        match self.by_uid.get(uid) {
            Some((at, reading)) if at == rv => reading.clone(),
            _ => {
                let reading = Pod::from_k8s(k8s).map_err(|e| e.to_string());
                self.by_uid
                    .insert(uid.to_string(), (rv.to_string(), reading.clone()));
                reading
            }
        }
    }

    /// The readings of the unfinished pods bound to `node` (sorted by key), shared with the last observation when
    /// the node holds the very same pods at the same resourceVersions.
    pub fn read_node(&mut self, node: &str, pods: &[&core::Pod]) -> NodePods {
        // The resourceVersions alone tell the pods apart: every write of any object gets a new one. Summed, so the
        // order the cache lists pods in does not matter; each hash is mixed first, so that sums of the fast hash's
        // values do not collide.
        let fingerprint = pods.iter().fold(pods.len() as u64, |sum, p| {
            let mut h = Fx::default();
            match p.metadata.resource_version.as_deref() {
                Some(rv) if !rv.is_empty() => h.write(rv.as_bytes()),
                // Objects not from an API server (tests, files) may have none: their identity then.
                _ => {
                    for part in [&p.metadata.uid, &p.metadata.namespace, &p.metadata.name] {
                        h.write(part.as_deref().unwrap_or_default().as_bytes());
                        h.write_u8(0xff);
                    }
                }
            }
            sum.wrapping_add(mix(h.finish()))
        });
        if let Some((at, readings)) = self.by_node.get(node) {
            if *at == fingerprint {
                return readings.clone();
            }
        }
        let mut readings = Vec::with_capacity(pods.len());
        let mut unreadable = Vec::new();
        // Read afresh rather than through `by_uid`: the node's list is the cache for its pods, and keeping 30,000
        // bound pods' readings by uid as well only to drop them at the next sweep took a third of a pass.
        for p in pods.iter().filter(|p| !finished(p)) {
            match Pod::from_k8s(p).map_err(|e| e.to_string()) {
                Ok(pod) => readings.push(pod),
                Err(e) => unreadable.push((
                    format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.name.as_deref().unwrap_or_default()
                    ),
                    e,
                )),
            }
        }
        readings.sort_by(by_key);
        let node_pods = NodePods {
            pods: Arc::new(readings),
            unreadable,
        };
        self.by_node
            .insert(node.to_string(), (fingerprint, node_pods.clone()));
        node_pods
    }

    /// Forgets pods not read since the last call, and nodes the cluster no longer has.
    pub fn sweep(&mut self, objects: &ClusterObjects) {
        let nodes: HashSet<&str> = objects
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let seen = std::mem::take(&mut self.seen);
        self.by_uid.retain(|uid, _| seen.contains(uid));
        self.by_node.retain(|name, _| nodes.contains(name.as_str()));
        self.nodes.retain(|name, _| nodes.contains(name.as_str()));
    }

    /// A node as the planners read it, read again only when its resourceVersion changed; the error says why it
    /// cannot be read.
    pub fn read_node_object(&mut self, k8s: &core::Node) -> Result<Arc<Node>, String> {
        let name = k8s.metadata.name.as_deref().unwrap_or_default();
        let rv = k8s.metadata.resource_version.as_deref().unwrap_or_default();
        if let Some((at, node)) = self.nodes.get(name) {
            if at == rv && !rv.is_empty() {
                return Ok(node.clone());
            }
        }
        let node = Arc::new(Node::from_k8s(k8s).map_err(|e| e.to_string())?);
        self.nodes
            .insert(name.to_string(), (rv.to_string(), node.clone()));
        Ok(node)
    }
}

/// Murmur3's 64-bit finalizer: spreads a hash's bits before fingerprints add them up.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Pods in the order the plan reads them: caches hand objects out in no particular order, and the plan must not
/// depend on it.
fn by_key(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    (&a.spec.namespace, &a.name).cmp(&(&b.spec.namespace, &b.name))
}

/// Reads the objects into a scheduling snapshot; `nominations` maps pending pods (`namespace/name`) to the
/// in-flight machine (shape id) planned for them.
pub fn observe(
    objects: &ClusterObjects,
    catalog: &Catalog,
    settings: &ObserveSettings,
    nominations: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Observation {
    observe_with(
        objects,
        catalog,
        settings,
        nominations,
        now,
        &mut PodReadings::default(),
    )
}

/// [`observe`], reusing the pod readings of earlier observations.
pub fn observe_with(
    objects: &ClusterObjects,
    catalog: &Catalog,
    settings: &ObserveSettings,
    nominations: &HashMap<String, String>,
    now: DateTime<Utc>,
    readings: &mut PodReadings,
) -> Observation {
    let cluster = objects.cluster(settings.cluster_name.as_deref()).cloned();
    let mut skipped = Vec::new();
    let mut invalid_groups = Vec::new();

    // Node groups: MachineDeployments with autoscaling bounds and a class that allows something.
    let classes: HashMap<&str, &crate::api::MachineClass> = objects
        .machine_classes
        .iter()
        .map(|c| (c.metadata.name.as_deref().unwrap_or_default(), c.as_ref()))
        .collect();
    let daemon_pods = daemon_pods(objects);
    let taken_shapes: BTreeSet<&str> = objects
        .machines
        .iter()
        .filter_map(|m| annotation(m.metadata.annotations.as_ref(), keys::SHAPE_ID))
        .collect();
    let mut groups = Vec::new();
    let mut targets = BTreeMap::new();
    let mut seen_names = BTreeSet::new();
    let mut sorted_deployments: Vec<&MachineDeployment> = objects
        .machine_deployments
        .iter()
        .map(|d| d.as_ref())
        .collect();
    sorted_deployments.sort_by_key(|d| (d.metadata.namespace.clone(), d.metadata.name.clone()));
    for md in sorted_deployments {
        let Some(autoscaling) = &md.spec.autoscaling else {
            continue;
        };
        if md.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = md.metadata.name.clone().unwrap_or_default();
        let namespace = md
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut reject = |why: String| invalid_groups.push((namespace.clone(), name.clone(), why));
        if !seen_names.insert(name.clone()) {
            reject(format!("another autoscaled MachineDeployment is also named {name}; its nodes could not be told apart"));
            continue;
        }
        let class_name = &md.spec.template.spec.class_ref.name;
        let Some(class) = classes.get(class_name.as_str()) else {
            reject(format!("MachineClass {class_name} does not exist"));
            continue;
        };
        let allowed = match crate::state::class::allowed_instance_types(&class.spec, catalog, &[]) {
            Ok(a) => a,
            Err(why) => {
                reject(format!("MachineClass {class_name}: {why}"));
                continue;
            }
        };
        let mut group = NodeGroup::new(&name, allowed.iter().map(|t| t.name.clone()).collect());
        group.requirements = capacity_requirement(&class.spec);
        group.labels = md.spec.template.spec.node_labels.clone();
        group
            .labels
            .insert(labels::MACHINE_DEPLOYMENT.into(), name.clone());
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
        group.min_replicas = autoscaling.min_replicas;
        group.max_replicas = autoscaling.max_replicas;
        let replicas = md.spec.replicas.unwrap_or(0);
        group.current_replicas = replicas;
        group.priority = autoscaling.priority;
        group.daemon_pods = daemon_pods.clone();
        let queue = read_shape_queue(md.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()))
            .unwrap_or_default();
        let open_shapes = queue
            .into_iter()
            .filter(|e| !taken_shapes.contains(e.id.as_str()))
            .collect();
        targets.insert(
            name.clone(),
            GroupTarget {
                namespace,
                name,
                resource_version: md.metadata.resource_version.clone(),
                replicas,
                max_replicas: autoscaling.max_replicas,
                open_shapes,
            },
        );
        groups.push(group);
    }

    // Pods: bound ones by node (finished ones too: their binding tells when the scheduler last acted), unschedulable
    // ones pending.
    let mut bound: FxMap<&str, Vec<&core::Pod>> = FxMap::default();
    bound.reserve(objects.nodes.len());
    let mut pending = Vec::new();
    let mut pending_since = HashMap::new();
    let mut pending_objects = HashMap::new();
    // Nodes EC2 is reclaiming (a spot interruption warning): gone already as far as planning goes, and their pods
    // pending, so the capacity they need is launched within the warning rather than after the pods die.
    let interrupted: HashMap<&str, DateTime<Utc>> = objects
        .machines
        .iter()
        .filter(|m| {
            m.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(crate::api::INTERRUPTION_ANNOTATION))
        })
        .filter_map(|m| {
            let node = m.status.as_ref()?.node_ref.as_ref()?.name.as_str();
            let since = m
                .metadata
                .deletion_timestamp
                .as_ref()
                .map_or(now, |t| from_k8s(t.0));
            Some((node, since))
        })
        .collect();
    for k8s_pod in &objects.pods {
        let node_name = k8s_pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        if let Some(since) = interrupted.get(node_name) {
            if crate::model::pod::is_evictable(k8s_pod) {
                if let Ok(mut p) = readings.read(k8s_pod) {
                    p.node_name = None;
                    pending_since.insert(p.key(), *since);
                    pending.push(p);
                }
            }
            continue;
        }
        if !node_name.is_empty() {
            bound.entry(node_name).or_default().push(k8s_pod);
            continue;
        }
        if !is_unschedulable(k8s_pod) {
            continue;
        }
        match readings.read(k8s_pod) {
            Ok(p) => {
                if let Some(since) = unschedulable_since(k8s_pod) {
                    pending_since.insert(p.key(), since);
                }
                pending_objects.insert(p.key(), k8s_pod.clone());
                pending.push(p);
            }
            Err(e) => skipped.push(SkippedPod {
                namespace: k8s_pod.metadata.namespace.clone().unwrap_or_default(),
                name: k8s_pod.metadata.name.clone().unwrap_or_default(),
                reason: format!("cannot read the pod: {e}"),
            }),
        }
    }

    // Registered nodes, with the group's startup taints set apart.
    let startup: HashMap<&str, &[Taint]> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.startup_taints.as_slice()))
        .collect();
    let mut nodes = Vec::new();
    let mut registered_providers = BTreeSet::new();
    let timeout =
        chrono::Duration::from_std(settings.registration_timeout).unwrap_or(chrono::Duration::MAX);
    // Registered nodes on which nominated pods still ride, by providerID: not Ready yet (within the registration
    // timeout), or Ready within the nomination grace.
    let mut new_nodes: HashMap<String, (usize, NewNode)> = HashMap::new();
    // The last time the scheduler changed what the Ready new nodes hold (a binding, or a node turning Ready).
    let mut scheduler_active: Option<DateTime<Utc>> = None;
    for k8s_node in &objects.nodes {
        if k8s_node.metadata.deletion_timestamp.is_some()
            || k8s_node
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| interrupted.contains_key(n))
        {
            continue;
        }
        let Ok(mut node) = readings.read_node_object(k8s_node) else {
            continue;
        };
        if let Some(p) = &node.provider_id {
            registered_providers.insert(p.clone());
            let registered = k8s_node
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| from_k8s(t.0));
            match ready_since(k8s_node) {
                None if registered.is_none_or(|t| now - t <= timeout) => {
                    new_nodes.insert(p.clone(), (nodes.len(), NewNode::Booting));
                }
                Some(ready) if now - ready < NOMINATION_GRACE => {
                    new_nodes.insert(
                        p.clone(),
                        (nodes.len(), NewNode::Ready(ready + NOMINATION_GRACE)),
                    );
                    // Read only for the few new nodes: a scan of every pod's conditions costs each pass.
                    let bound_at = bound
                        .get(node.name.as_str())
                        .into_iter()
                        .flatten()
                        .filter_map(|p| condition_since(p, "PodScheduled", "True"))
                        .max();
                    let latest = bound_at.map_or(ready, |b| b.max(ready));
                    scheduler_active = Some(scheduler_active.map_or(latest, |a| a.max(latest)));
                }
                _ => {}
            }
        }
        if let Some(t) = node
            .labels
            .get(labels::MACHINE_DEPLOYMENT)
            .and_then(|g| startup.get(g.as_str()))
        {
            if !t.is_empty() {
                Arc::make_mut(&mut node).mark_startup_taints(t);
            }
        }
        let pods = readings
            .read_node(
                &node.name,
                bound.get(node.name.as_str()).map_or(&[][..], Vec::as_slice),
            )
            .pods;
        nodes.push(ExistingNode { node, pods });
    }
    readings.sweep(objects);

    // In-flight machines, then replicas whose Machines do not exist yet.
    let mut in_flight = Vec::new();
    let mut live_machines: HashMap<&str, u32> = HashMap::new();
    for m in &objects.machines {
        let Some(group) = annotation(m.metadata.labels.as_ref(), keys::MACHINE_DEPLOYMENT) else {
            continue;
        };
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        *live_machines.entry(group).or_default() += 1;
        if !targets.contains_key(group) {
            continue;
        }
        if let Some(f) = in_flight_machine(m, group, &registered_providers, now, timeout) {
            in_flight.push(f);
        }
    }
    for (name, target) in &targets {
        let missing = target
            .replicas
            .saturating_sub(live_machines.get(name.as_str()).copied().unwrap_or(0));
        let since = objects
            .machine_deployments
            .iter()
            .find(|d| {
                d.metadata.name.as_deref() == Some(name)
                    && d.metadata.namespace.as_deref() == Some(&target.namespace)
            })
            .and_then(|d| annotation(d.metadata.annotations.as_ref(), keys::LAST_SCALE_UP))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now);
        for entry in target.open_shapes.iter().take(missing as usize) {
            let (Some(instance_type), Some(zone)) = (
                entry.shape.instance_types.first(),
                entry.shape.zones.first(),
            ) else {
                continue;
            };
            if now - since > timeout {
                continue;
            }
            in_flight.push(InFlightMachine {
                name: entry.id.clone(),
                pods: vec![],
                group: name.clone(),
                instance_type: instance_type.clone(),
                zone: zone.clone(),
                capacity_type: entry
                    .shape
                    .capacity_types
                    .first()
                    .map(capacity_of)
                    .unwrap_or(CapacityType::OnDemand),
                launched_at: since,
            });
        }
    }
    in_flight.retain(|m| catalog.get(&m.instance_type).is_some());
    pending.sort_by(by_key);
    let mut riding = HashSet::new();
    let mut expected_nodes = HashMap::new();
    let mut revisit_at: Option<DateTime<Utc>> = None;
    let mut revisit = |t: DateTime<Utc>| revisit_at = Some(revisit_at.map_or(t, |r| r.min(t)));
    if !nominations.is_empty() {
        enum Ride {
            InFlight(usize),
            Node(usize, NewNode),
        }
        let mut ride: HashMap<&str, Ride> = in_flight
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), Ride::InFlight(i)))
            .collect();
        for m in &objects.machines {
            let (Some(shape), Some(provider)) = (
                annotation(m.metadata.annotations.as_ref(), keys::SHAPE_ID),
                m.status.as_ref().and_then(|s| s.provider_id.as_ref()),
            ) else {
                continue;
            };
            if let Some(&(n, state)) = new_nodes.get(provider) {
                ride.insert(shape, Ride::Node(n, state));
            }
        }
        let settling = scheduler_active.is_some_and(|t| now - t < SCHEDULER_SETTLE);
        let mut still_pending = Vec::with_capacity(pending.len());
        riding.reserve(nominations.len());
        let mut on_machines = vec![Vec::new(); in_flight.len()];
        for pod in pending {
            let key = pod.key();
            match nominations.get(&key).and_then(|n| ride.get(n.as_str())) {
                Some(Ride::InFlight(i)) => on_machines[*i].push(pod),
                Some(Ride::Node(n, NewNode::Booting)) => {
                    expected_nodes.insert(key.clone(), nodes[*n].node.name.clone());
                    Arc::make_mut(&mut nodes[*n].pods).push(pod)
                }
                Some(Ride::Node(n, NewNode::Ready(grace_over)))
                    if still_holds(&nodes[*n], &pod) =>
                {
                    revisit(*grace_over);
                    expected_nodes.insert(key.clone(), nodes[*n].node.name.clone());
                    Arc::make_mut(&mut nodes[*n].pods).push(pod)
                }
                // Crowded off while the scheduler is still placing pods: neither planned nor holding room.
                Some(Ride::Node(_, NewNode::Ready(_))) if settling => {
                    revisit(scheduler_active.unwrap_or(now) + SCHEDULER_SETTLE);
                }
                _ => {
                    still_pending.push(pod);
                    continue;
                }
            }
            riding.insert(key);
        }
        for (m, pods) in in_flight.iter_mut().zip(on_machines) {
            m.pods = pods;
        }
        pending = still_pending;
    }
    nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
    in_flight.sort_by(|a, b| a.name.cmp(&b.name));
    for m in &mut in_flight {
        m.pods.sort_by(by_key);
    }
    for n in &mut nodes {
        // Only nodes that riders joined are out of order; the others share their list with the readings.
        if !n.pods.is_sorted_by(|a, b| by_key(a, b).is_le()) {
            Arc::make_mut(&mut n.pods).sort_by(by_key);
        }
    }

    let (limits, expander) = match &cluster {
        Some(c) => (cluster_limits(c), expander_of(c)),
        None => (ClusterLimits::default(), Expander::Cheapest),
    };
    let mut snapshot = Snapshot {
        pending,
        nodes,
        in_flight,
        groups,
        limits,
        expander,
        registration_timeout: settings.registration_timeout,
        ..Snapshot::default()
    };
    add_headroom(&mut snapshot, objects, cluster.as_ref());
    Observation {
        snapshot,
        groups: targets,
        skipped,
        invalid_groups,
        pending_since,
        riding,
        expected_nodes,
        pending_objects,
        revisit_at,
        cluster,
        auto_scaling_groups: BTreeMap::new(),
    }
}

/// Adds the cloud's discovered Auto Scaling groups as node groups: their instance types and zones, their bounds,
/// their nodes' labels and taints from Cluster Autoscaler's node-template tags, and their instances that have no
/// node yet (plus desired capacity not yet started) as in-flight capacity.
pub fn add_auto_scaling_groups(
    observation: &mut Observation,
    groups: &[crate::cloud::NodeGroup],
    catalog: &Catalog,
    now: DateTime<Utc>,
) {
    let registered: BTreeSet<&str> = observation
        .snapshot
        .nodes
        .iter()
        .filter_map(|n| n.node.provider_id.as_deref())
        .collect();
    let mut in_flight = Vec::new();
    for asg in groups {
        let types: Vec<String> = asg
            .instance_types
            .iter()
            .filter(|t| catalog.get(t).is_some())
            .cloned()
            .collect();
        let Some(first_type) = types.first().cloned() else {
            continue;
        };
        let name = format!("{ASG_GROUP_PREFIX}{}", asg.name);
        let mut group = NodeGroup::new(&name, types);
        if !asg.zones.is_empty() {
            if let Ok(zones) = Requirement::new(labels::ZONE, Operator::In, &asg.zones) {
                group.requirements.add(labels::ZONE, zones);
            }
        }
        for (key, value) in &asg.tags {
            if let Some(label) = key.strip_prefix(ASG_LABEL_TAG) {
                group.labels.insert(label.to_string(), value.clone());
            } else if let Some(taint_key) = key.strip_prefix(ASG_TAINT_TAG) {
                // "value:Effect", as Cluster Autoscaler reads it.
                let (v, effect) = value.rsplit_once(':').unwrap_or(("", value));
                if let Ok(t) = TaintEffect::parse(effect).and_then(|e| Taint::new(taint_key, v, e))
                {
                    group.taints.push(t);
                }
            }
        }
        group.min_replicas = asg.min_size;
        group.max_replicas = asg.max_size;
        group.current_replicas = asg.desired_capacity;
        group.daemon_pods = observation
            .snapshot
            .groups
            .first()
            .map(|g| g.daemon_pods.clone())
            .unwrap_or_default();
        let live: Vec<_> = asg
            .instances
            .iter()
            .filter(|i| !i.lifecycle_state.starts_with("Terminat"))
            .collect();
        for i in &live {
            let provider = crate::cloud::provider_id(&i.zone, &i.instance_id);
            if registered.contains(provider.as_str()) {
                continue;
            }
            let instance_type = i
                .instance_type
                .clone()
                .unwrap_or_else(|| first_type.clone());
            in_flight.push(InFlightMachine {
                name: i.instance_id.clone(),
                pods: vec![],
                group: name.clone(),
                instance_type,
                zone: i.zone.clone(),
                capacity_type: CapacityType::OnDemand,
                launched_at: now,
            });
        }
        // Desired capacity the group has not started yet is capacity on its way too.
        let zone = asg.zones.first().cloned().unwrap_or_default();
        for k in live.len() as u32..asg.desired_capacity {
            in_flight.push(InFlightMachine {
                name: format!("{}-pending-{k}", asg.name),
                pods: vec![],
                group: name.clone(),
                instance_type: first_type.clone(),
                zone: zone.clone(),
                capacity_type: CapacityType::OnDemand,
                launched_at: now,
            });
        }
        observation
            .auto_scaling_groups
            .insert(name, (asg.name.clone(), asg.desired_capacity));
        observation.snapshot.groups.push(group);
    }
    observation.snapshot.in_flight.extend(in_flight);
}

/// A registered node whose machine's nominated pods still ride on it.
#[derive(Clone, Copy)]
enum NewNode {
    /// Not Ready: the scheduler cannot place anything there yet.
    Booting,
    /// Ready within the nomination grace (over at the time held): the scheduler is placing pods there, in its
    /// own order.
    Ready(DateTime<Utc>),
}

/// Whether `node` can still take `pod` beside its bound pods and the pods already riding it.
fn still_holds(node: &ExistingNode, pod: &Pod) -> bool {
    let mut used = pod.spec.requests.clone();
    for p in node.pods.iter() {
        used.add(&p.spec.requests);
    }
    used.fits_in(&node.node.allocatable)
}

/// When the node last turned Ready (None: not Ready).
fn ready_since(node: &core::Node) -> Option<DateTime<Utc>> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map(|t| from_k8s(t.0))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

/// Whether the pod has run to its end (it holds no room on its node any more).
fn finished(pod: &core::Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod's condition `kind` last turned `status` (None: it is not `status`, or says not when).
fn condition_since(pod: &core::Pod, kind: &str, status: &str) -> Option<DateTime<Utc>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == status)?;
    c.last_transition_time.as_ref().map(|t| from_k8s(t.0))
}

fn annotation<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).map(String::as_str)
}

fn capacity_of(c: &CapacityTypeSpec) -> CapacityType {
    match c {
        CapacityTypeSpec::Spot => CapacityType::Spot,
        CapacityTypeSpec::OnDemand => CapacityType::OnDemand,
    }
}

/// The class's capacity types as a requirement on offerings (spot with fallback admits on-demand too).
pub fn capacity_requirement(spec: &crate::api::machine_class::MachineClassSpec) -> Requirements {
    let mut allowed: BTreeSet<String> = crate::state::class::capacity_types(spec)
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    if spec.spot_fallback_to_on_demand {
        allowed.insert(CapacityType::OnDemand.as_str().to_string());
    }
    let values: Vec<String> = allowed.into_iter().collect();
    let mut r = Requirements::new();
    if let Ok(req) = Requirement::new(labels::CAPACITY_TYPE, Operator::In, &values) {
        r.add(labels::CAPACITY_TYPE, req);
    }
    r
}

/// A template's taint as the model's (the CRD schema has checked key and effect; an invalid one is left out).
pub fn taint_of(t: &TaintSpec) -> Option<Taint> {
    let effect = match t.effect {
        TaintEffectSpec::NoSchedule => TaintEffect::NoSchedule,
        TaintEffectSpec::PreferNoSchedule => TaintEffect::PreferNoSchedule,
        TaintEffectSpec::NoExecute => TaintEffect::NoExecute,
    };
    Taint::new(&t.key, &t.value, effect).ok()
}

/// Every DaemonSet's pod template as a pod: the engine counts those whose affinity and tolerations admit a new
/// node against that node's allocatable.
fn daemon_pods(objects: &ClusterObjects) -> Vec<Pod> {
    let mut out = Vec::new();
    for ds in &objects.daemon_sets {
        let Some(spec) = ds.spec.as_ref() else {
            continue;
        };
        let name = ds.metadata.name.clone().unwrap_or_default();
        let pod = core::Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!("{name}-daemon")),
                namespace: ds.metadata.namespace.clone(),
                labels: spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: spec.template.spec.clone(),
            status: None,
        };
        if let Ok(mut p) = Pod::from_k8s(&pod) {
            p.owner = Some(OwnerRef {
                kind: "DaemonSet".into(),
                name,
                uid: ds.metadata.uid.clone().unwrap_or_default(),
            });
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.key());
    out
}

fn in_flight_machine(
    m: &Machine,
    group: &str,
    registered: &BTreeSet<String>,
    now: DateTime<Utc>,
    timeout: chrono::Duration,
) -> Option<InFlightMachine> {
    let status = m.status.clone().unwrap_or_default();
    if matches!(
        status.phase,
        MachinePhase::Running | MachinePhase::Deleting | MachinePhase::Failed
    ) {
        return None;
    }
    if status
        .provider_id
        .as_ref()
        .is_some_and(|p| registered.contains(p))
    {
        return None; // its Node is in the snapshot already
    }
    let shape = m.spec.shape.as_ref();
    let instance_type = status
        .instance_type
        .clone()
        .or_else(|| shape.and_then(|s| s.instance_types.first().cloned()))?;
    let zone = status
        .zone
        .clone()
        .or_else(|| shape.and_then(|s| s.zones.first().cloned()))?;
    let capacity_type = status
        .capacity_type
        .as_ref()
        .or_else(|| shape.and_then(|s| s.capacity_types.first()))
        .map(capacity_of)
        .unwrap_or(CapacityType::OnDemand);
    let created = m
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| from_k8s(t.0))
        .unwrap_or(now);
    if now - created > timeout {
        return None;
    }
    let name = annotation(m.metadata.annotations.as_ref(), keys::SHAPE_ID)
        .map(str::to_string)
        .or_else(|| m.metadata.name.clone())
        .unwrap_or_default();
    Some(InFlightMachine {
        name,
        pods: vec![],
        group: group.to_string(),
        instance_type,
        zone,
        capacity_type,
        launched_at: created,
    })
}

fn cluster_limits(c: &Cluster) -> ClusterLimits {
    let l = &c.spec.limits;
    ClusterLimits {
        max_nodes: l.max_nodes.map(u64::from),
        // The CRD schema checks these are quantities; an unparsable one is no limit rather than no scaling.
        max_cores: l
            .max_cpu
            .as_deref()
            .and_then(|q| parse_cpu_millis(q).ok())
            .map(|m| m / 1000),
        max_memory_bytes: l.max_memory.as_deref().and_then(|q| parse_units(q).ok()),
    }
}

fn expander_of(c: &Cluster) -> Expander {
    use crate::api::cluster::Expander as Api;
    match c.spec.expander {
        Api::Cheapest => Expander::Cheapest,
        Api::LeastWaste => Expander::LeastWaste,
        Api::Priority => Expander::Priority,
        Api::Random => Expander::Random { seed: 0 },
    }
}

/// Headroom as placeholder pods: per group, `count` pods of the unit size that only that group's nodes take; for
/// the Cluster's percentage, enough 1-cpu pods (memory in proportion) to keep that share of berth's nodes'
/// allocatable free. Existing free space absorbs them first, so headroom launches only what is missing.
fn add_headroom(snapshot: &mut Snapshot, objects: &ClusterObjects, cluster: Option<&Cluster>) {
    let tolerate_all = Toleration {
        key: String::new(),
        operator: TolerationOperator::Exists,
        value: String::new(),
        effect: None,
    };
    let placeholder = |name: String, requests: Resources, group: Option<&str>| {
        let mut pod = Pod::new(HEADROOM_NAMESPACE, &name, requests);
        pod.spec.tolerations = vec![tolerate_all.clone()];
        if let Some(g) = group {
            let label = (labels::MACHINE_DEPLOYMENT.to_string(), g.to_string());
            pod.spec.node_selector = Requirements::from_labels([(&label.0, &label.1)]);
        }
        pod
    };
    for md in &objects.machine_deployments {
        let Some(h) = md
            .spec
            .autoscaling
            .as_ref()
            .and_then(|a| a.headroom.as_ref())
        else {
            continue;
        };
        let name = md.metadata.name.clone().unwrap_or_default();
        if !snapshot.groups.iter().any(|g| g.name == name) {
            continue;
        }
        let (Ok(cpu), Ok(memory)) = (parse_cpu_millis(&h.cpu), parse_units(&h.memory)) else {
            continue;
        };
        for i in 0..h.count {
            let requests = Resources {
                cpu_millis: cpu,
                memory_bytes: memory,
                pods: 1,
                ..Resources::default()
            };
            snapshot
                .pending
                .push(placeholder(format!("{name}-{i}"), requests, Some(&name)));
        }
    }
    let Some(percent) = cluster
        .and_then(|c| c.spec.headroom.as_ref())
        .map(|h| h.percent)
        .filter(|p| *p > 0)
    else {
        return;
    };
    let (cpu, memory) = snapshot
        .nodes
        .iter()
        .filter(|n| n.node.labels.contains_key(labels::MACHINE_DEPLOYMENT))
        .fold((0u64, 0u64), |(c, m), n| {
            (
                c + n.node.allocatable.cpu_millis,
                m + n.node.allocatable.memory_bytes,
            )
        });
    let spare_cpu = cpu * percent as u64 / 100;
    let spare_memory = memory * percent as u64 / 100;
    let units = spare_cpu.div_ceil(1000);
    for i in 0..units {
        let requests = Resources {
            cpu_millis: spare_cpu / units,
            memory_bytes: spare_memory / units,
            pods: 1,
            ..Resources::default()
        };
        snapshot
            .pending
            .push(placeholder(format!("cluster-{i}"), requests, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn catalog() -> Catalog {
        crate::model::aws_catalog::bundled_catalog("us-east-1").unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn class() -> Arc<crate::api::MachineClass> {
        from(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
            "spec": {"image": {"id": "ami-1"}, "instanceRequirements": {"families": ["m7i"]}, "capacityTypes": ["on-demand"],
                     "subnets": {"ids": ["subnet-1"]}, "securityGroups": {"ids": ["sg-1"]}, "instanceProfile": "node"}
        }))
    }

    fn deployment(
        name: &str,
        class: &str,
        replicas: u32,
        annotations: serde_json::Value,
    ) -> Arc<MachineDeployment> {
        from(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "7", "annotations": annotations},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"g": name}},
                     "template": {"metadata": {"labels": {"g": name}}, "spec": {"classRef": {"name": class}, "nodeLabels": {"team": "a"}}},
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 10, "headroom": {"cpu": "1", "memory": "1Gi", "count": 2}}}
        }))
    }

    fn pod(name: &str, unschedulable: bool, owner_kind: &str) -> Arc<core::Pod> {
        let conditions = if unschedulable {
            json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": "2026-12-01T11:59:00Z"}])
        } else {
            json!([])
        };
        from(json!({
            "metadata": {"name": name, "namespace": "default",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": "o", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"phase": "Pending", "conditions": conditions}
        }))
    }

    fn machine(
        name: &str,
        shape_id: Option<&str>,
        phase: &str,
        instance_type: &str,
    ) -> Arc<Machine> {
        let annotations = shape_id
            .map(|id| json!({keys::SHAPE_ID: id}))
            .unwrap_or(json!({}));
        from(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-12-01T11:58:00Z",
                         "labels": {keys::MACHINE_DEPLOYMENT: "general"}, "annotations": annotations},
            "spec": {"classRef": {"name": "general"}},
            "status": {"phase": phase, "instanceType": instance_type, "zone": "us-east-1a", "capacityType": "on-demand"}
        }))
    }

    fn shapes(ids: &[&str]) -> serde_json::Value {
        let entries: Vec<_> = ids.iter().map(|id| json!({"id": id, "instanceTypes": ["m7i.large"], "zones": ["us-east-1b"], "capacityTypes": ["on-demand"]})).collect();
        json!({keys::LAUNCH_SHAPES: serde_json::to_string(&entries).unwrap(), keys::LAST_SCALE_UP: "2026-12-01T11:59:30Z"})
    }

    #[test]
    fn unschedulable_pods_are_pending_and_daemons_and_scheduled_pods_are_not() {
        let objects = ClusterObjects {
            pods: vec![
                pod("a", true, "ReplicaSet"),
                pod("b", false, "ReplicaSet"),
                pod("d", true, "DaemonSet"),
            ],
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("general", "general", 0, json!({}))],
            ..Default::default()
        };
        let o = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &HashMap::new(),
            now(),
        );
        assert!(o.invalid_groups.is_empty(), "{:?}", o.invalid_groups);
        assert_eq!(o.snapshot.groups.len(), 1);
        let real: Vec<String> = o
            .snapshot
            .pending
            .iter()
            .filter(|p| p.spec.namespace != HEADROOM_NAMESPACE)
            .map(|p| p.key())
            .collect();
        assert_eq!(real, vec!["default/a".to_string()]);
        assert_eq!(
            o.pending_since["default/a"].to_rfc3339(),
            "2026-12-01T11:59:00+00:00"
        );
        let group = &o.snapshot.groups[0];
        assert_eq!(group.name, "general");
        assert!(group.instance_types.iter().all(|t| t.starts_with("m7i.")));
        assert_eq!(group.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            group
                .labels
                .get(labels::MACHINE_DEPLOYMENT)
                .map(String::as_str),
            Some("general")
        );
    }

    #[test]
    fn machines_on_their_way_and_queued_replicas_are_capacity() {
        // replicas 3: one Machine launched (shape s1 taken), one Machine not launched yet with a shape, one replica
        // without a Machine whose shape s3 is still queued. s1 is pruned from the open queue.
        let objects = ClusterObjects {
            machine_classes: vec![class()],
            machine_deployments: vec![deployment(
                "general",
                "general",
                3,
                shapes(&["s1", "s2", "s3"]),
            )],
            machines: vec![
                machine("m1", Some("s1"), "Provisioned", "m7i.xlarge"),
                machine("m2", Some("s2"), "Pending", "m7i.large"),
            ],
            ..Default::default()
        };
        let o = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &HashMap::new(),
            now(),
        );
        let names: Vec<&str> = o
            .snapshot
            .in_flight
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, vec!["s1", "s2", "s3"]);
        assert_eq!(o.snapshot.in_flight[0].instance_type, "m7i.xlarge");
        assert_eq!(o.snapshot.in_flight[2].zone, "us-east-1b");
        let open: Vec<&str> = o.groups["general"]
            .open_shapes
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(open, vec!["s3"]);
        assert_eq!(o.groups["general"].resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn a_nominated_pod_rides_on_its_machine_until_the_node_registers() {
        let objects = ClusterObjects {
            pods: vec![pod("a", true, "ReplicaSet"), pod("b", true, "ReplicaSet")],
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("general", "general", 1, shapes(&["s1"]))],
            machines: vec![machine("m1", Some("s1"), "Provisioning", "m7i.large")],
            ..Default::default()
        };
        let nominations = HashMap::from([
            ("default/a".to_string(), "s1".to_string()),
            ("default/b".to_string(), "gone".to_string()),
        ]);
        let o = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &nominations,
            now(),
        );
        assert_eq!(
            o.snapshot.in_flight[0]
                .pods
                .iter()
                .map(|p| p.key())
                .collect::<Vec<_>>(),
            vec!["default/a"]
        );
        // b's machine is no longer coming: b is planned again.
        assert!(o.snapshot.pending.iter().any(|p| p.key() == "default/b"));
        assert!(!o.snapshot.pending.iter().any(|p| p.key() == "default/a"));
    }

    /// A booting node (not Ready) with pod a nominated to it, and a node Ready since `ready_at` with room for one
    /// 1-cpu pod, b and c nominated to it, and, with `bound_at`, a 1-cpu pod d the scheduler bound there then;
    /// observed at `now()` with the registration timeout given.
    fn new_nodes(ready_at: &str, bound_at: Option<&str>, registration_timeout: u64) -> Observation {
        let registered = |name: &str, provider: &str, ready: &str, at: &str| -> Arc<core::Node> {
            from(json!({
                "metadata": {"name": name, "creationTimestamp": "2026-12-01T11:59:30Z"},
                "spec": {"providerID": provider},
                "status": {"allocatable": {"cpu": "1930m", "memory": "7Gi", "pods": "29"},
                           "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": at}]}
            }))
        };
        let with_provider = |name: &str, shape: &str, provider: &str| {
            let mut m: Machine = (*machine(name, Some(shape), "Running", "m7i.large")).clone();
            m.status.as_mut().unwrap().provider_id = Some(provider.into());
            Arc::new(m)
        };
        let mut pods = ["a", "b", "c"].map(|n| pod(n, true, "ReplicaSet")).to_vec();
        if let Some(at) = bound_at {
            let mut d: core::Pod = (*pod("d", false, "ReplicaSet")).clone();
            d.spec.as_mut().unwrap().node_name = Some("ready".into());
            d.status = Some(
                serde_json::from_value(json!({"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at}]}))
                .unwrap(),
            );
            pods.push(Arc::new(d));
        }
        let objects = ClusterObjects {
            pods,
            nodes: vec![
                registered(
                    "booting",
                    "aws:///us-east-1a/i-1",
                    "False",
                    "2026-12-01T11:59:30Z",
                ),
                registered("ready", "aws:///us-east-1a/i-2", "True", ready_at),
            ],
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("general", "general", 2, json!({}))],
            machines: vec![
                with_provider("m1", "s1", "aws:///us-east-1a/i-1"),
                with_provider("m2", "s2", "aws:///us-east-1a/i-2"),
            ],
            ..Default::default()
        };
        let nominations = HashMap::from([
            ("default/a".to_string(), "s1".to_string()),
            ("default/b".to_string(), "s2".to_string()),
            ("default/c".to_string(), "s2".to_string()),
        ]);
        let settings = ObserveSettings {
            registration_timeout: std::time::Duration::from_secs(registration_timeout),
            ..Default::default()
        };
        observe(&objects, &catalog(), &settings, &nominations, now())
    }

    /// Real pods the observation plans for, and the pods riding the node named.
    fn planned_and_riding(o: &Observation, node: &str) -> (Vec<String>, Vec<String>) {
        let pods = o
            .snapshot
            .pending
            .iter()
            .filter(|p| p.spec.namespace != HEADROOM_NAMESPACE);
        let on = o
            .snapshot
            .nodes
            .iter()
            .find(|n| n.node.name == node)
            .unwrap();
        (
            pods.map(|p| p.key()).collect(),
            on.pods.iter().map(|p| p.key()).collect(),
        )
    }

    #[test]
    fn a_nominated_pod_rides_its_new_node_while_the_node_can_hold_it() {
        // Ready 5 s ago, nothing bound since: the scheduler has settled, so c, crowded off, is planned again.
        let o = new_nodes("2026-12-01T11:59:55Z", None, 600);
        assert_eq!(planned_and_riding(&o, "booting").1, vec!["default/a"]);
        let (planned, riding) = planned_and_riding(&o, "ready");
        assert_eq!(riding, vec!["default/b"]);
        assert_eq!(planned, vec!["default/c"]);
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        assert_eq!(
            o.revisit_at,
            Some(at("2026-12-01T12:00:10Z")),
            "b is planned again when the grace is over"
        );

        // Ready 1 s ago: the scheduler is still placing pods, and c may yet land elsewhere; it waits, unplanned.
        let o = new_nodes("2026-12-01T11:59:59Z", None, 600);
        let (planned, riding) = planned_and_riding(&o, "ready");
        assert_eq!(riding, vec!["default/b"]);
        assert!(planned.is_empty(), "{planned:?}");
        assert!(o.riding.contains("default/c"));
        assert_eq!(
            o.revisit_at,
            Some(at("2026-12-01T12:00:01Z")),
            "c is looked at again once settled"
        );

        // Ready 5 s ago, but the scheduler bound d there 1 s ago: still placing pods, so b and c (no room left
        // beside d) both wait.
        let o = new_nodes("2026-12-01T11:59:55Z", Some("2026-12-01T11:59:59Z"), 600);
        let (planned, riding) = planned_and_riding(&o, "ready");
        assert_eq!(riding, vec!["default/d"]);
        assert!(planned.is_empty(), "{planned:?}");
        assert!(o.riding.contains("default/b") && o.riding.contains("default/c"));

        // Ready for longer than the grace: b and c are pending like any pod; a still rides its booting node.
        let o = new_nodes("2026-12-01T11:59:40Z", None, 600);
        assert_eq!(
            planned_and_riding(&o, "ready").0,
            vec!["default/b", "default/c"]
        );
        assert_eq!(planned_and_riding(&o, "booting").1, vec!["default/a"]);

        // Past the registration timeout a node that never turned Ready holds nobody.
        let o = new_nodes("2026-12-01T11:59:40Z", None, 5);
        assert_eq!(
            planned_and_riding(&o, "booting").0,
            vec!["default/a", "default/b", "default/c"]
        );
    }

    #[test]
    fn a_pod_that_cannot_be_read_is_named_with_the_reason_beside_its_nodes_readable_pods() {
        let bound = |name: &str, cpu: &str| -> Arc<core::Pod> {
            from(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "1"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
                "status": {"phase": "Running"}
            }))
        };
        let (good, bad) = (bound("good", "500m"), bound("bad", "lots"));
        let mut readings = PodReadings::default();
        let read = readings.read_node("n1", &[bad.as_ref(), good.as_ref()]);
        assert_eq!(read.pods.len(), 1);
        assert_eq!(read.pods[0].name, "good");
        assert_eq!(read.unreadable.len(), 1);
        assert_eq!(read.unreadable[0].0, "default/bad");
        assert!(
            read.unreadable[0].1.contains("lots"),
            "{:?}",
            read.unreadable
        );
        // Read again unchanged: the same list, and the same complaint (the disruption planner must keep skipping it).
        let again = readings.read_node("n1", &[good.as_ref(), bad.as_ref()]);
        assert!(Arc::ptr_eq(&read.pods, &again.pods));
        assert_eq!(again.unreadable, read.unreadable);
    }

    #[test]
    fn a_node_holding_the_same_pods_shares_their_readings_with_the_last_observation() {
        let bound = |name: &str, node: &str, rv: &str| -> Arc<core::Pod> {
            let mut p: core::Pod = (*pod(name, false, "ReplicaSet")).clone();
            p.metadata.uid = Some(format!("uid-{name}"));
            p.metadata.resource_version = Some(rv.into());
            p.spec.as_mut().unwrap().node_name = Some(node.into());
            Arc::new(p)
        };
        let node = |name: &str| -> Arc<core::Node> {
            from(json!({"metadata": {"name": name},
                        "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "29"}}}))
        };
        let mut objects = ClusterObjects {
            pods: vec![
                bound("b", "n1", "1"),
                bound("a", "n1", "1"),
                bound("c", "n2", "1"),
            ],
            nodes: vec![node("n1"), node("n2")],
            ..Default::default()
        };
        let mut readings = PodReadings::default();
        let settings = ObserveSettings::default();
        let mut look = |objects: &ClusterObjects| {
            let o = observe_with(
                objects,
                &catalog(),
                &settings,
                &HashMap::new(),
                now(),
                &mut readings,
            );
            o.snapshot.nodes
        };
        let first = look(&objects);
        let names: Vec<&str> = first[0].pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "sorted by key");
        // Listed in another order, nothing changed: both lists are shared.
        objects.pods.reverse();
        let second = look(&objects);
        assert!(Arc::ptr_eq(&first[0].pods, &second[0].pods));
        assert!(Arc::ptr_eq(&first[1].pods, &second[1].pods));
        // One pod of n2 changes: n2 is read again, n1 still shared.
        objects.pods[0] = bound("c", "n2", "2");
        objects.pods.push(bound("d", "n2", "1"));
        let third = look(&objects);
        assert!(Arc::ptr_eq(&first[0].pods, &third[0].pods));
        let names: Vec<&str> = third[1].pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c", "d"]);
    }

    #[test]
    fn the_snapshot_does_not_depend_on_the_order_the_cache_lists_objects() {
        let pods: Vec<_> = (0..20)
            .map(|i| pod(&format!("p{i}"), true, "ReplicaSet"))
            .collect();
        let mut objects = ClusterObjects {
            pods: pods.clone(),
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("general", "general", 0, json!({}))],
            ..Default::default()
        };
        let forward = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &HashMap::new(),
            now(),
        );
        objects.pods.reverse();
        let backward = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &HashMap::new(),
            now(),
        );
        assert_eq!(forward.snapshot, backward.snapshot);
    }

    #[test]
    fn machines_past_the_registration_timeout_no_longer_count() {
        let objects = ClusterObjects {
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("general", "general", 1, json!({}))],
            machines: vec![machine("m1", None, "Provisioned", "m7i.xlarge")],
            ..Default::default()
        };
        let settings = ObserveSettings {
            registration_timeout: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let o = observe(&objects, &catalog(), &settings, &HashMap::new(), now());
        assert!(
            o.snapshot.in_flight.is_empty(),
            "{:?}",
            o.snapshot.in_flight
        );
    }

    #[test]
    fn a_group_whose_class_is_missing_is_left_out_with_the_reason() {
        let objects = ClusterObjects {
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("gpu", "accelerated", 0, json!({}))],
            ..Default::default()
        };
        let o = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &HashMap::new(),
            now(),
        );
        assert!(o.snapshot.groups.is_empty());
        assert_eq!(
            o.invalid_groups,
            vec![(
                "default".into(),
                "gpu".into(),
                "MachineClass accelerated does not exist".into()
            )]
        );
    }

    #[test]
    fn headroom_becomes_placeholder_pods_that_only_the_group_takes() {
        let objects = ClusterObjects {
            machine_classes: vec![class()],
            machine_deployments: vec![deployment("general", "general", 0, json!({}))],
            ..Default::default()
        };
        let o = observe(
            &objects,
            &catalog(),
            &ObserveSettings::default(),
            &HashMap::new(),
            now(),
        );
        let headroom: Vec<&Pod> = o
            .snapshot
            .pending
            .iter()
            .filter(|p| p.spec.namespace == HEADROOM_NAMESPACE)
            .collect();
        assert_eq!(headroom.len(), 2);
        assert_eq!(headroom[0].spec.requests.cpu_millis, 1000);
        let plan = crate::scheduling::solve(&o.snapshot, &catalog(), now()).unwrap();
        assert!(plan.unschedulable.is_empty());
        assert!(plan.new_machines.iter().all(|m| m.group == "general"));
    }
}
