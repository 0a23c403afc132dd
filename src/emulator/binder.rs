//! The binder: a stand-in for kube-scheduler (and the kubelet's "pod started"). It binds pending pods to Ready
//! nodes where they fit, marks bound pods Running, and marks pods that fit nowhere `PodScheduled=False` with reason
//! `Unschedulable`, as kube-scheduler does.
//!
//! Feasibility uses the pure predicates of `crate::scheduling::predicates` (nodeSelector and required node
//! affinity, taints and tolerations, host ports, volume zones) and `crate::model` (resources); required pod affinity
//! and anti-affinity and topology spread with `DoNotSchedule` are checked here over the placed pods, because the
//! scheduling module exposes those only inside its solver's indexed engine. Among feasible nodes it picks the least allocated (CPU then memory fraction), ties by name.
//!
//! A pending pod's `status.nominatedNodeName` (set by an autoscaler that launched a node for it, KEP-5278) is honoured
//! as kube-scheduler does: the pod tries that node first, and the room it needs there is held against pods of equal
//! or lower priority (pods of higher priority ignore it). Binding clears it, as the API server does.
//!
//! Not modelled: preferred (soft) terms, the symmetric anti-affinity of already running pods, preemption,
//! scheduling gates, volumes.

use super::clock::format_time;
use super::error::ApiError;
use super::store::{set_condition, EventType, ListQuery, Stored, WriteOptions};
use super::Emulator;
use crate::fx::FxMap;
use crate::model::instance_type::labels::ZONE;
use crate::model::node::Node;
use crate::model::pod::{HostPort, Pod, SchedulingSpec, WhenUnsatisfiable};
use crate::model::resources::Resources;
use crate::model::taints::first_blocking_taint;
use crate::scheduling::predicates::{
    host_ports_free, node_affinity_matches, taints_tolerated, volume_zone_ok,
};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BindReport {
    /// `namespace/name -> node` bindings made.
    pub bound: Vec<(String, String)>,
    /// Pods marked Running.
    pub started: Vec<String>,
    /// Pods marked Unschedulable (newly, or with a changed message).
    pub unschedulable: Vec<String>,
}

/// A pod as the binder needs it, parsed once per change.
struct Parsed {
    pod: Result<Pod, String>,
    default_scheduler: bool,
    deleting: bool,
    /// The message of its `PodScheduled=False/Unschedulable` condition, if it has one.
    unschedulable_message: Option<String>,
    /// `status.nominatedNodeName`: where an autoscaler (or a preemption) expects the pod to go.
    nominated_node: Option<String>,
}

impl Parsed {
    fn of(s: &Stored) -> Parsed {
        let k8s = decode::<k8s_openapi::api::core::v1::Pod>(s);
        let spec = k8s.as_ref().and_then(|p| p.spec.as_ref());
        Parsed {
            pod: k8s
                .as_ref()
                .ok_or_else(|| "pod does not decode".to_string())
                .and_then(|p| Pod::from_k8s(p).map_err(|e| e.to_string())),
            default_scheduler: spec
                .and_then(|sp| sp.scheduler_name.as_deref())
                .is_none_or(|n| n == "default-scheduler"),
            deleting: k8s
                .as_ref()
                .is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
            unschedulable_message: k8s
                .as_ref()
                .and_then(|p| {
                    p.status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_ == "PodScheduled")
                        .cloned()
                })
                .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
                .map(|c| c.message.unwrap_or_default()),
            nominated_node: k8s
                .as_ref()
                .and_then(|p| p.status.as_ref()?.nominated_node_name.clone())
                .filter(|n| !n.is_empty()),
        }
    }

    fn spec(&self) -> Option<&crate::model::pod::SchedulingSpec> {
        self.pod.as_ref().ok().map(|p| &p.spec)
    }
    fn namespace(&self) -> &str {
        self.spec()
            .map(|s| s.namespace.as_str())
            .unwrap_or_default()
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.spec().map(|s| &s.labels).unwrap_or(&NONE)
    }
    fn host_ports(&self) -> &[HostPort] {
        self.spec()
            .map(|s| s.host_ports.as_slice())
            .unwrap_or_default()
    }
}

/// `(namespace, name)` of a pod.
type PodKey = (String, String);

/// Where a pod holds room that pending pods are checked against.
#[derive(PartialEq)]
enum Holds {
    /// Bound to this node.
    Bound(String),
    /// Pending, nominated to this node.
    Nominated(String),
}

/// A node name as the binder sees it: the node (once it exists and parses) and the pods bound to it.
#[derive(Default)]
struct Slot {
    /// The node, and whether it is Ready and not being deleted. `None` while only pods name it.
    node: Option<(Node, bool)>,
    /// The pods bound to it whose specs parse, and what they request in sum.
    pods: BTreeMap<PodKey, Arc<Parsed>>,
    used: Resources,
    /// Pending pods nominated to this node (their specs parse): the room they hold here.
    nominated: BTreeMap<PodKey, Arc<Parsed>>,
}

impl Slot {
    /// What the pods nominated here hold against `pod`: those of equal or higher priority, `pod` itself aside.
    fn reserved_against(&self, key: &PodKey, pod: &Pod) -> Resources {
        let mut held = Resources::default();
        for (k, p) in &self.nominated {
            if let Ok(other) = &p.pod {
                if k != key && other.spec.priority >= pod.spec.priority {
                    held.add(&other.spec.requests);
                }
            }
        }
        held
    }

    /// Whether the slot can go: no node, no pods and no nominations name it.
    fn is_vacant(&self) -> bool {
        self.node.is_none() && self.pods.is_empty() && self.nominated.is_empty()
    }

    fn ready_node(&self) -> Option<&Node> {
        self.node
            .as_ref()
            .filter(|(_, ready)| *ready)
            .map(|(n, _)| n)
    }
}

/// The binder's view of pods and nodes, kept up to date from the store's change history: a pass reads what
/// changed since the last one, not the whole cluster (a 1,000-node cluster has 30,000 pods; listing and indexing
/// them all took a third of a second a pass, on every pod created).
#[derive(Default)]
struct View {
    /// Changes are applied up to this resourceVersion; `None` until the first full read.
    rv: Option<u64>,
    /// Pods or nodes changed since the last pass (a pass over an unchanged cluster decides nothing new).
    changed: bool,
    /// By node name, in name order (the tie-break among equally good nodes).
    slots: BTreeMap<String, Slot>,
    /// How many slots have a node.
    node_count: usize,
    /// Every pod not yet Succeeded or Failed.
    pods: HashMap<PodKey, (Arc<Stored>, Arc<Parsed>)>,
    /// Unbound, not deleting pods for the default scheduler.
    pending: BTreeSet<PodKey>,
    /// Bound pods still in phase Pending, not deleting.
    unstarted: BTreeSet<PodKey>,
    /// Pending pods put since the last pass: the only ones a pass must look at while placements stay as they were.
    fresh: BTreeSet<PodKey>,
    /// Whether what a pending pod is checked against (the nodes, and the pods placed on them) changed since the
    /// last pass. Until it does, a pod that fit nowhere fits nowhere still, with the same message: kube-scheduler's
    /// unschedulable queue waits for such a cluster event too.
    placements_changed: bool,
    /// Scheduling specs that fit nowhere since placements last changed, with their message. Pods with equal specs
    /// are interchangeable: a burst of a few shapes into a full cluster is a few scans, not one per pod and node.
    failed: FxMap<SchedulingSpec, String>,
}

const WATCHED: &[(&str, &str)] = &[("", "pods"), ("", "nodes")];

impl View {
    /// Reads every pod and node again: at the start, or when history no longer reaches back to the view.
    fn reload(&mut self, store: &super::store::Store) -> Result<(), ApiError> {
        let (pods_rt, nodes_rt) = resource_types(store)?;
        // Changes after this version are replayed by the next catch-up; replaying one the lists already show is
        // harmless, since each change carries the whole object and the last one wins.
        let rv = store.resource_version();
        let nodes = store.list(&nodes_rt, None, &ListQuery::default())?.items;
        let pods = store.list(&pods_rt, None, &ListQuery::default())?.items;
        *self = View::default();
        for n in nodes {
            self.put_node(&n);
        }
        for p in pods {
            self.put_pod(p);
        }
        self.rv = Some(rv);
        self.changed = true;
        Ok(())
    }

    /// Applies the changes since the last call (or reloads).
    fn catch_up(&mut self, store: &super::store::Store) -> Result<(), ApiError> {
        let Some(rv) = self.rv else {
            return self.reload(store);
        };
        let (events, latest) = match store.changes_since(rv, WATCHED) {
            Ok(changes) => changes,
            Err(ApiError::Gone(_)) => return self.reload(store),
            Err(e) => return Err(e),
        };
        for e in events {
            self.changed = true;
            let o = &e.object;
            match (e.resource.as_str(), e.kind) {
                ("pods", EventType::Deleted) => {
                    self.remove_pod(&(o.namespace.clone(), o.name.clone()))
                }
                ("pods", _) => self.put_pod(o.clone()),
                ("nodes", EventType::Deleted) => self.remove_node(&o.name),
                _ => self.put_node(o),
            }
        }
        self.rv = Some(latest);
        Ok(())
    }

    fn put_node(&mut self, s: &Stored) {
        let parsed = decode::<k8s_openapi::api::core::v1::Node>(s).and_then(|k8s| {
            let node = Node::from_k8s(&k8s).ok()?;
            Some((node, is_ready(&k8s) && !s.deleting))
        });
        let Some(parsed) = parsed else {
            // A node that does not parse is no place for a pod.
            return self.remove_node(&s.name);
        };
        let slot = self.slots.entry(s.name.clone()).or_default();
        if slot.node.is_none() {
            self.node_count += 1;
        }
        if slot.node.as_ref() != Some(&parsed) {
            slot.node = Some(parsed);
            self.note_placement_change();
        }
    }

    fn remove_node(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let removed = slot.node.take().is_some();
        if slot.is_vacant() {
            self.slots.remove(name);
        }
        if removed {
            self.node_count -= 1;
            self.note_placement_change();
        }
    }

    fn put_pod(&mut self, s: Arc<Stored>) {
        let key = (s.namespace.clone(), s.name.clone());
        let was_placed = self.take_pod(&key);
        if matches!(s.phase.as_str(), "Succeeded" | "Failed") {
            if was_placed.is_some() {
                self.note_placement_change();
            }
            return;
        }
        let parsed = Arc::new(Parsed::of(&s));
        let mut placed = None;
        if !s.node_name.is_empty() {
            if let Ok(pod) = &parsed.pod {
                let slot = self.slots.entry(s.node_name.clone()).or_default();
                slot.used.add(&pod.spec.requests);
                slot.pods.insert(key.clone(), parsed.clone());
                placed = Some((Holds::Bound(s.node_name.clone()), parsed.clone()));
                if s.phase == "Pending" && !parsed.deleting {
                    self.unstarted.insert(key.clone());
                }
            }
        } else if !parsed.deleting && parsed.default_scheduler {
            self.pending.insert(key.clone());
            self.fresh.insert(key.clone());
            if let (Some(node), Ok(_)) = (&parsed.nominated_node, &parsed.pod) {
                let slot = self.slots.entry(node.clone()).or_default();
                slot.nominated.insert(key.clone(), parsed.clone());
                placed = Some((Holds::Nominated(node.clone()), parsed.clone()));
            }
        }
        self.pods.insert(key, (s, parsed));
        // A status write (Running, say) leaves what pending pods are checked against as it was.
        fn placement(p: &Option<(Holds, Arc<Parsed>)>) -> Option<(&Holds, &Result<Pod, String>)> {
            p.as_ref().map(|(holds, parsed)| (holds, &parsed.pod))
        }
        if placement(&placed) != placement(&was_placed) {
            self.note_placement_change();
        }
    }

    fn note_placement_change(&mut self) {
        self.placements_changed = true;
        self.failed.clear();
    }

    fn remove_pod(&mut self, key: &PodKey) {
        if self.take_pod(key).is_some() {
            self.note_placement_change();
        }
    }

    /// Takes a pod out of the view; returns where it was placed or nominated, and its spec (what other pods are
    /// checked against), for the caller to say whether placements changed.
    fn take_pod(&mut self, key: &PodKey) -> Option<(Holds, Arc<Parsed>)> {
        let (old, parsed) = self.pods.remove(key)?;
        self.pending.remove(key);
        self.fresh.remove(key);
        self.unstarted.remove(key);
        if old.node_name.is_empty() {
            let node = parsed.nominated_node.as_ref()?;
            let slot = self.slots.get_mut(node)?;
            let held = slot.nominated.remove(key)?;
            if slot.is_vacant() {
                self.slots.remove(node);
            }
            return Some((Holds::Nominated(node.clone()), held));
        }
        let slot = self.slots.get_mut(&old.node_name)?;
        let placed = slot.pods.remove(key);
        if let Some(Ok(pod)) = placed.as_ref().map(|p| &p.pod) {
            slot.used = slot.used.saturating_sub(&pod.spec.requests);
        }
        if slot.is_vacant() {
            self.slots.remove(&old.node_name);
        }
        placed.map(|parsed| (Holds::Bound(old.node_name.clone()), parsed))
    }
}

fn resource_types(
    store: &super::store::Store,
) -> Result<
    (
        Arc<super::resources::ResourceType>,
        Arc<super::resources::ResourceType>,
    ),
    ApiError,
> {
    let pods = store
        .resource_type("", "pods")
        .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
    let nodes = store
        .resource_type("", "nodes")
        .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
    Ok((pods, nodes))
}

/// Binds pods of one emulator.
#[derive(Clone)]
pub struct Binder {
    emu: Emulator,
    view: Arc<Mutex<View>>,
}

/// Whether the node's Ready condition says True (a node without one is not ready).
fn is_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn decode<T: serde::de::DeserializeOwned>(s: &Stored) -> Option<T> {
    serde_json::from_slice(&s.bytes).ok()
}

impl Binder {
    /// A binder for this emulator.
    pub fn new(emu: Emulator) -> Self {
        Binder {
            emu,
            view: Arc::default(),
        }
    }

    /// One scheduling pass: starts bound pods, then binds or marks unschedulable every pending one.
    pub fn run_once(&self) -> Result<BindReport, ApiError> {
        let store = self.emu.store();
        let (pods_rt, _) = resource_types(store)?;
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        view.catch_up(store)?;
        if !view.changed {
            return Ok(BindReport::default());
        }
        let result = self.pass(store, &pods_rt, &mut view);
        if result.is_err() {
            // A pass cut short may have left fresh pods unlooked-at: the next one looks at every pending pod.
            view.changed = true;
            view.note_placement_change();
        }
        result
    }

    fn pass(
        &self,
        store: &super::store::Store,
        pods_rt: &super::resources::ResourceType,
        view: &mut View,
    ) -> Result<BindReport, ApiError> {
        // This pass's own writes come back as changes: the next pass looks once more, after them.
        view.changed = false;
        let mut report = BindReport::default();
        let to_start: Vec<Arc<Stored>> = view
            .unstarted
            .iter()
            .filter_map(|key| {
                let (s, _) = view.pods.get(key)?;
                view.slots.get(&s.node_name)?.ready_node()?;
                Some(s.clone())
            })
            .collect();
        for s in to_start {
            if self.mark_running(&s)? {
                report.started.push(format!("{}/{}", s.namespace, s.name));
            }
        }
        // Every pending pod when placements changed, else only those new or changed since the last pass.
        // Higher priority first, then by namespace and name (the set's order; the sort is stable).
        let candidates = if std::mem::take(&mut view.placements_changed) {
            view.fresh.clear();
            &view.pending
        } else {
            &std::mem::take(&mut view.fresh)
        };
        let mut pending: Vec<(Arc<Stored>, Arc<Parsed>)> = candidates
            .iter()
            .filter_map(|key| view.pods.get(key).cloned())
            .collect();
        let priority = |p: &Parsed| p.pod.as_ref().map(|p| p.spec.priority).unwrap_or(0);
        pending.sort_by_key(|(_, p)| std::cmp::Reverse(priority(p)));
        for (s, parsed) in pending {
            let key = format!("{}/{}", s.namespace, s.name);
            let pod = match &parsed.pod {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!(
                        "0/{} nodes are available: pod spec is invalid: {e}.",
                        view.node_count
                    );
                    if self.mark_unschedulable(&s, &parsed, &msg)? {
                        report.unschedulable.push(key);
                    }
                    continue;
                }
            };
            // A nominated pod sees its own node without its own reservation: unlike its spec's twins.
            let nominated = parsed.nominated_node.as_deref();
            if nominated.is_none() {
                if let Some(msg) = view.failed.get(&pod.spec) {
                    if self.mark_unschedulable(&s, &parsed, msg)? {
                        report.unschedulable.push(key);
                    }
                    continue;
                }
            }
            let pod_key = (s.namespace.clone(), s.name.clone());
            let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
            let mut best: Option<(&str, (u64, u64))> = None;
            // kube-scheduler tries the nominated node first, and takes it when the pod fits there.
            let nominated_fit = nominated
                .and_then(|n| view.slots.get_key_value(n))
                .filter(|(_, slot)| feasible(&pod_key, pod, slot, &view.slots).is_ok())
                .map(|(n, _)| (n.as_str(), (0, 0)));
            for (name, slot) in view.slots.iter().filter(|_| nominated_fit.is_none()) {
                let Some((node, _)) = &slot.node else {
                    continue;
                };
                match feasible(&pod_key, pod, slot, &view.slots) {
                    Ok(()) => {
                        let free = node
                            .allocatable
                            .saturating_sub(&slot.used)
                            .saturating_sub(&pod.spec.requests);
                        let score = (
                            free.cpu_millis.saturating_mul(1000)
                                / node.allocatable.cpu_millis.max(1),
                            free.memory_bytes.saturating_mul(1000)
                                / node.allocatable.memory_bytes.max(1),
                        );
                        if best.is_none_or(|(_, b)| score > b) {
                            best = Some((name.as_str(), score));
                        }
                    }
                    Err(reason) => *reasons.entry(reason).or_default() += 1,
                }
            }
            match nominated_fit.or(best).map(|(name, _)| name.to_string()) {
                Some(node) => {
                    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": s.name, "namespace": s.namespace},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                    match store.bind(&s.namespace, &s.name, &binding) {
                        Ok(()) => {}
                        Err(ApiError::NotFound(_)) | Err(ApiError::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    }
                    report.bound.push((key.clone(), node));
                    // The view takes the binding now (the pods after this one see it); replaying the change later
                    // leaves it as it is.
                    if let Ok(bound) = store.get(pods_rt, &s.namespace, &s.name) {
                        view.put_pod(bound.clone());
                        if self.mark_running(&bound)? {
                            report.started.push(key);
                        }
                    }
                }
                None => {
                    let detail: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                    let msg = if view.node_count == 0 {
                        "0/0 nodes are available: no nodes available to schedule pods.".to_string()
                    } else {
                        format!(
                            "0/{} nodes are available: {}.",
                            view.node_count,
                            detail.join(", ")
                        )
                    };
                    if self.mark_unschedulable(&s, &parsed, &msg)? {
                        report.unschedulable.push(key);
                    }
                    if nominated.is_none() {
                        view.failed.insert(pod.spec.clone(), msg);
                    }
                }
            }
        }
        Ok(report)
    }

    fn write_status(
        &self,
        s: &Stored,
        edit: impl FnOnce(&mut Value, &str),
    ) -> Result<bool, ApiError> {
        let store = self.emu.store();
        let rt = store
            .resource_type("", "pods")
            .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
        let mut v = s.value()?;
        let before = v.clone();
        edit(&mut v, &format_time(store.clock().now()));
        if v == before {
            return Ok(false);
        }
        let opts = WriteOptions {
            field_manager: "berth-emulator-binder".into(),
            subresource: Some("status".into()),
            ..Default::default()
        };
        match store.update(&rt, &s.namespace, &s.name, v, &opts) {
            Ok(_) => Ok(true),
            // Changed or deleted meanwhile: the next pass looks again.
            Err(ApiError::Conflict(_)) | Err(ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn mark_running(&self, s: &Stored) -> Result<bool, ApiError> {
        self.write_status(s, |v, now| {
            v["status"]["phase"] = json!("Running");
            if v.pointer("/status/startTime").is_none() {
                v["status"]["startTime"] = json!(now);
            }
            for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
                set_condition(v, c, "True", None, None, now);
            }
        })
    }

    fn mark_unschedulable(
        &self,
        s: &Stored,
        parsed: &Parsed,
        message: &str,
    ) -> Result<bool, ApiError> {
        if parsed.unschedulable_message.as_deref() == Some(message) {
            return Ok(false);
        }
        self.write_status(s, |v, now| {
            set_condition(
                v,
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some(message),
                now,
            )
        })
    }

    /// Runs a pass whenever the cluster changes (and at least every `interval`), until the task is aborted.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut events = self.emu.store().subscribe();
            loop {
                let started = std::time::Instant::now();
                match self.run_once() {
                    Ok(r) => tracing::debug!(
                        bound = r.bound.len(),
                        started = r.started.len(),
                        unschedulable = r.unschedulable.len(),
                        millis = started.elapsed().as_millis() as u64,
                        "emulator binder pass"
                    ),
                    Err(e) => tracing::warn!(error = %e, "emulator binder pass failed"),
                }
                tokio::select! {
                    r = events.recv() => {
                        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            return;
                        }
                        // Coalesce bursts of changes into one pass.
                        while events.try_recv().is_ok() {}
                    }
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })
    }
}

/// Whether `pod` may go to the node of `slot`; the error is the kube-scheduler style reason.
///
/// Reasons are static where they can be: a pending pod in a full cluster is checked against every node on every
/// pass, and allocating a message per node made the binder (kube-scheduler's stand-in) the slowest part of a burst.
fn feasible(
    key: &PodKey,
    pod: &Pod,
    slot: &Slot,
    slots: &BTreeMap<String, Slot>,
) -> Result<(), Cow<'static, str>> {
    let Some((node, ready)) = &slot.node else {
        return Err(Cow::Borrowed("node(s) were not found"));
    };
    if !ready {
        return Err(Cow::Borrowed("node(s) were not ready"));
    }
    if node.unschedulable {
        return Err("node(s) were unschedulable".into());
    }
    if !node_affinity_matches(&pod.spec, &node.name, &node.labels) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    if !taints_tolerated(&pod.spec, &node.taints) {
        let t = first_blocking_taint(&node.taints, &pod.spec.tolerations);
        return Err(t
            .map(|t| {
                Cow::Owned(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key, t.value
                ))
            })
            .unwrap_or(Cow::Borrowed("node(s) had untolerated taint")));
    }
    if !volume_zone_ok(&pod.spec, node.labels.get(ZONE).map(String::as_str)) {
        return Err("node(s) had volume node affinity conflict".into());
    }
    let mut free = node.allocatable.saturating_sub(&slot.used);
    if !slot.nominated.is_empty() {
        free = free.saturating_sub(&slot.reserved_against(key, pod));
    }
    if let Some(r) = pod.spec.requests.first_exceeding(&free) {
        return Err(match r {
            "cpu" => Cow::Borrowed("Insufficient cpu"),
            "memory" => Cow::Borrowed("Insufficient memory"),
            "pods" => Cow::Borrowed("Too many pods"),
            "ephemeral-storage" => Cow::Borrowed("Insufficient ephemeral-storage"),
            other => Cow::Owned(format!("Insufficient {other}")),
        });
    }
    if !pod.spec.host_ports.is_empty() {
        let used: Vec<HostPort> = slot
            .pods
            .values()
            .flat_map(|p| p.host_ports().iter().cloned())
            .collect();
        if !host_ports_free(&pod.spec.host_ports, &used) {
            return Err("node(s) didn't have free ports for the requested pod ports".into());
        }
    }
    let pods_in_domain = |key, value| pods_in_domain(slots, key, value);
    let all_placed = || {
        slots
            .values()
            .filter(|other| other.node.is_some())
            .flat_map(|other| other.pods.values())
    };
    for term in &pod.spec.pod_anti_affinity {
        if let Some(mine) = node.labels.get(&term.topology_key) {
            if pods_in_domain(&term.topology_key, mine)
                .any(|p| term.selects(p.namespace(), p.labels(), None))
            {
                return Err("node(s) didn't match pod anti-affinity rules".into());
            }
        }
    }
    for term in &pod.spec.pod_affinity {
        let satisfied = node.labels.get(&term.topology_key).is_some_and(|mine| {
            pods_in_domain(&term.topology_key, mine)
                .any(|p| term.selects(p.namespace(), p.labels(), None))
        });
        // The first pod of a group may land anywhere if it matches its own affinity term.
        let self_match = || {
            !all_placed().any(|p| term.selects(p.namespace(), p.labels(), None))
                && term.selects(&pod.spec.namespace, &pod.spec.labels, None)
        };
        if !satisfied && !self_match() {
            return Err("node(s) didn't match pod affinity rules".into());
        }
    }
    for c in pod
        .spec
        .topology_spread
        .iter()
        .filter(|c| c.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule)
    {
        let Some(mine) = node.labels.get(&c.topology_key) else {
            return Err(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for (name, other) in slots {
            let Some((other_node, _)) = &other.node else {
                continue;
            };
            if !node_affinity_matches(&pod.spec, name, &other_node.labels) {
                continue;
            }
            if let Some(d) = other_node.labels.get(&c.topology_key) {
                let count = other
                    .pods
                    .values()
                    .filter(|p| p.namespace() == pod.spec.namespace && c.selects(p.labels()))
                    .count() as u32;
                *counts.entry(d.as_str()).or_default() += count;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let here = counts.get(mine.as_str()).copied().unwrap_or(0);
        if here + 1 > min + c.max_skew {
            return Err("node(s) didn't match pod topology spread constraints".into());
        }
    }
    Ok(())
}

/// The pods placed on nodes whose label `key` has `value`.
fn pods_in_domain<'a>(
    slots: &'a BTreeMap<String, Slot>,
    key: &'a str,
    value: &'a str,
) -> impl Iterator<Item = &'a Arc<Parsed>> {
    slots
        .values()
        .filter(move |slot| {
            slot.node
                .as_ref()
                .and_then(|(n, _)| n.labels.get(key))
                .is_some_and(|v| v == value)
        })
        .flat_map(|slot| slot.pods.values())
}
