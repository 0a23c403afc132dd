//! The binder: a stand-in for kube-scheduler (and the kubelet's "pod started"). It binds pending pods to Ready
//! nodes where they fit, marks bound pods Running, and marks pods that fit nowhere `PodScheduled=False` with reason
//! `Unschedulable`, as kube-scheduler does.
//!
//! Feasibility uses the pure predicates of `crate::scheduling::predicates` (nodeSelector and required node
//! affinity, taints and tolerations, host ports, volume zones) and `crate::model` (resources); required pod affinity
//! and anti-affinity and topology spread with `DoNotSchedule` are checked here over the placed pods, because the
//! scheduling module exposes those only inside its solver's indexed engine. Among feasible nodes it picks the least allocated (CPU then memory fraction), ties by name.
//! Not modelled: preferred (soft) terms, the symmetric anti-affinity of already running pods, preemption,
//! scheduling gates, volumes.

use super::clock::format_time;
use super::error::ApiError;
use super::store::{set_condition, ListQuery, Stored, WriteOptions};
use super::Emulator;
use crate::model::instance_type::labels::ZONE;
use crate::model::node::Node;
use crate::model::pod::{HostPort, Pod, WhenUnsatisfiable};
use crate::model::resources::Resources;
use crate::model::taints::first_blocking_taint;
use crate::scheduling::predicates::{
    host_ports_free, node_affinity_matches, taints_tolerated, volume_zone_ok,
};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
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

struct NodeState {
    node: Node,
    ready: bool,
    used: Resources,
}

/// A pod on a node, sharing the parse the pod cache holds (a full cluster has tens of thousands).
struct Placed {
    node: String,
    parsed: Arc<Parsed>,
}

impl Placed {
    fn spec(&self) -> Option<&crate::model::pod::SchedulingSpec> {
        self.parsed.pod.as_ref().ok().map(|p| &p.spec)
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

/// A pod as the binder needs it, parsed once per resourceVersion.
struct Parsed {
    pod: Result<Pod, String>,
    default_scheduler: bool,
    deleting: bool,
    /// The message of its `PodScheduled=False/Unschedulable` condition, if it has one.
    unschedulable_message: Option<String>,
}

/// Parsed pods by uid, with the resourceVersion they were parsed at: a pass re-parses only what changed.
type PodCache = HashMap<String, (u64, Arc<Parsed>)>;
/// Parsed nodes (and whether they are Ready and not deleting) by uid, the same way.
type NodeCache = HashMap<String, (u64, Arc<(Node, bool)>)>;

/// Binds pods of one emulator.
#[derive(Clone)]
pub struct Binder {
    emu: Emulator,
    cache: Arc<Mutex<PodCache>>,
    nodes: Arc<Mutex<NodeCache>>,
    /// The pods' and nodes' versions the last pass started from: a pass over an unchanged cluster would decide
    /// nothing new, and at 30,000 pods reading them all costs a tenth of a second.
    seen: Arc<Mutex<Option<(u64, u64)>>>,
}

fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn decode<T: serde::de::DeserializeOwned>(s: &Stored) -> Option<T> {
    serde_json::from_slice(&s.bytes).ok()
}

impl Binder {
    /// A binder for this emulator.
    pub fn new(emu: Emulator) -> Self {
        Binder {
            emu,
            cache: Arc::default(),
            nodes: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// One scheduling pass over all pods.
    pub fn run_once(&self) -> Result<BindReport, ApiError> {
        let store = self.emu.store();
        let nodes_rt = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let pods_rt = store
            .resource_type("", "pods")
            .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
        let versions = (
            store.collection_version(&pods_rt),
            store.collection_version(&nodes_rt),
        );
        if *self.seen.lock().unwrap_or_else(|e| e.into_inner()) == Some(versions) {
            return Ok(BindReport::default());
        }
        let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
        {
            let mut node_cache = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let mut fresh: NodeCache = HashMap::with_capacity(node_cache.len());
            for s in store.list(&nodes_rt, None, &ListQuery::default())?.items {
                let parsed = match node_cache.get(&s.uid) {
                    Some((rv, p)) if *rv == s.rv => p.clone(),
                    _ => {
                        let Ok(raw) = s.value() else { continue };
                        let Some(k8s) = decode::<k8s_openapi::api::core::v1::Node>(&s) else {
                            continue;
                        };
                        let Ok(node) = Node::from_k8s(&k8s) else {
                            continue;
                        };
                        let ready =
                            is_ready(&raw) && raw.pointer("/metadata/deletionTimestamp").is_none();
                        Arc::new((node, ready))
                    }
                };
                fresh.insert(s.uid.clone(), (s.rv, parsed.clone()));
                let (node, ready) = (parsed.0.clone(), parsed.1);
                nodes.insert(
                    node.name.clone(),
                    NodeState {
                        node,
                        ready,
                        used: Resources::default(),
                    },
                );
            }
            *node_cache = fresh;
        }
        let pods = store.list(&pods_rt, None, &ListQuery::default())?.items;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh: PodCache = HashMap::with_capacity(pods.len());
        let mut placed: Vec<Placed> = Vec::new();
        let mut to_start: Vec<Arc<Stored>> = Vec::new();
        let mut pending: Vec<(Arc<Stored>, Arc<Parsed>)> = Vec::new();
        for s in pods {
            if matches!(s.phase.as_str(), "Succeeded" | "Failed") {
                continue;
            }
            let parsed = match cache.get(&s.uid) {
                Some((rv, p)) if *rv == s.rv => p.clone(),
                _ => {
                    let k8s = decode::<k8s_openapi::api::core::v1::Pod>(&s);
                    let spec = k8s.as_ref().and_then(|p| p.spec.as_ref());
                    Arc::new(Parsed {
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
                            .filter(|c| {
                                c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
                            })
                            .map(|c| c.message.unwrap_or_default()),
                    })
                }
            };
            fresh.insert(s.uid.clone(), (s.rv, parsed.clone()));
            let deleting = parsed.deleting;
            if !s.node_name.is_empty() {
                if let (Some(n), Ok(p)) = (nodes.get_mut(&s.node_name), &parsed.pod) {
                    n.used.add(&p.spec.requests);
                    placed.push(Placed {
                        node: s.node_name.clone(),
                        parsed: parsed.clone(),
                    });
                    if s.phase == "Pending" && n.ready && !deleting {
                        to_start.push(s.clone());
                    }
                }
                continue;
            }
            if deleting || !parsed.default_scheduler {
                continue;
            }
            pending.push((s, parsed));
        }
        *cache = fresh;
        drop(cache);
        // Higher priority first, then oldest (lowest resourceVersion at creation is not kept; name is stable).
        pending.sort_by(|(a, pa), (b, pb)| {
            let prio = |p: &Arc<Parsed>| p.pod.as_ref().map(|p| p.spec.priority).unwrap_or(0);
            prio(pb)
                .cmp(&prio(pa))
                .then_with(|| a.namespace.cmp(&b.namespace))
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut report = BindReport::default();
        for s in to_start {
            if self.mark_running(&s)? {
                report.started.push(format!("{}/{}", s.namespace, s.name));
            }
        }
        // Pods with equal scheduling specs are interchangeable, and a pod that fits nowhere changes nothing: until
        // the next binding, a spec that failed fails again with the same message. (A burst of a few shapes into a
        // full cluster is then a few scans, not one per pod and node.)
        let mut failed: HashMap<crate::model::pod::SchedulingSpec, String> = HashMap::new();
        for (s, parsed) in pending {
            let key = format!("{}/{}", s.namespace, s.name);
            let pod = match &parsed.pod {
                Ok(p) => p,
                Err(e) => {
                    if self.mark_unschedulable(
                        &s,
                        &parsed,
                        &format!(
                            "0/{} nodes are available: pod spec is invalid: {e}.",
                            nodes.len()
                        ),
                    )? {
                        report.unschedulable.push(key);
                    }
                    continue;
                }
            };
            if let Some(msg) = failed.get(&pod.spec) {
                if self.mark_unschedulable(&s, &parsed, msg)? {
                    report.unschedulable.push(key);
                }
                continue;
            }
            let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
            let mut best: Option<(String, (u64, u64))> = None;
            for (name, n) in &nodes {
                match feasible(pod, n, &nodes, &placed) {
                    Ok(()) => {
                        let free = n
                            .node
                            .allocatable
                            .saturating_sub(&n.used)
                            .saturating_sub(&pod.spec.requests);
                        let score = (
                            free.cpu_millis.saturating_mul(1000)
                                / n.node.allocatable.cpu_millis.max(1),
                            free.memory_bytes.saturating_mul(1000)
                                / n.node.allocatable.memory_bytes.max(1),
                        );
                        if best.as_ref().is_none_or(|(_, b)| score > *b) {
                            best = Some((name.clone(), score));
                        }
                    }
                    Err(reason) => *reasons.entry(reason).or_default() += 1,
                }
            }
            match best {
                Some((node, _)) => {
                    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": s.name, "namespace": s.namespace},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                    match store.bind(&s.namespace, &s.name, &binding) {
                        Ok(()) => {}
                        Err(ApiError::NotFound(_)) | Err(ApiError::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    }
                    if let Some(n) = nodes.get_mut(&node) {
                        n.used.add(&pod.spec.requests);
                    }
                    failed.clear();
                    placed.push(Placed {
                        node: node.clone(),
                        parsed: parsed.clone(),
                    });
                    report.bound.push((key.clone(), node));
                    if let Ok(bound) = store.get(&pods_rt, &s.namespace, &s.name) {
                        if self.mark_running(&bound)? {
                            report.started.push(key);
                        }
                    }
                }
                None => {
                    let detail: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                    let msg = if nodes.is_empty() {
                        "0/0 nodes are available: no nodes available to schedule pods.".to_string()
                    } else {
                        format!(
                            "0/{} nodes are available: {}.",
                            nodes.len(),
                            detail.join(", ")
                        )
                    };
                    if self.mark_unschedulable(&s, &parsed, &msg)? {
                        report.unschedulable.push(key);
                    }
                    failed.insert(pod.spec.clone(), msg);
                }
            }
        }
        // Versions from before this pass's own writes: the next pass looks once more, after them.
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(versions);
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

/// Whether `pod` may go to node `n`; the error is the kube-scheduler style reason.
///
/// Reasons are static where they can be: a pending pod in a full cluster is checked against every node on every
/// pass, and allocating a message per node made the binder (kube-scheduler's stand-in) the slowest part of a burst.
fn feasible(
    pod: &Pod,
    n: &NodeState,
    nodes: &BTreeMap<String, NodeState>,
    placed: &[Placed],
) -> Result<(), Cow<'static, str>> {
    if !n.ready {
        return Err(Cow::Borrowed("node(s) were not ready"));
    }
    if n.node.unschedulable {
        return Err("node(s) were unschedulable".into());
    }
    if !node_affinity_matches(&pod.spec, &n.node.name, &n.node.labels) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    if !taints_tolerated(&pod.spec, &n.node.taints) {
        let t = first_blocking_taint(&n.node.taints, &pod.spec.tolerations);
        return Err(t
            .map(|t| {
                Cow::Owned(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key, t.value
                ))
            })
            .unwrap_or(Cow::Borrowed("node(s) had untolerated taint")));
    }
    if !volume_zone_ok(&pod.spec, n.node.labels.get(ZONE).map(String::as_str)) {
        return Err("node(s) had volume node affinity conflict".into());
    }
    let free = n.node.allocatable.saturating_sub(&n.used);
    if let Some(r) = pod.spec.requests.first_exceeding(&free) {
        return Err(match r {
            "cpu" => Cow::Borrowed("Insufficient cpu"),
            "memory" => Cow::Borrowed("Insufficient memory"),
            "pods" => Cow::Borrowed("Too many pods"),
            "ephemeral-storage" => Cow::Borrowed("Insufficient ephemeral-storage"),
            other => Cow::Owned(format!("Insufficient {other}")),
        });
    }
    let domain_of = |node: &str, key: &str| {
        nodes
            .get(node)
            .and_then(|ns| ns.node.labels.get(key).cloned())
    };
    let used_ports = || -> Vec<HostPort> {
        placed
            .iter()
            .filter(|p| p.node == n.node.name)
            .flat_map(|p| p.host_ports().iter().cloned())
            .collect()
    };
    if !pod.spec.host_ports.is_empty() && !host_ports_free(&pod.spec.host_ports, &used_ports()) {
        return Err("node(s) didn't have free ports for the requested pod ports".into());
    }
    for term in &pod.spec.pod_anti_affinity {
        let mine = n.node.labels.get(&term.topology_key);
        if mine.is_some()
            && placed.iter().any(|p| {
                term.selects(p.namespace(), p.labels(), None)
                    && domain_of(&p.node, &term.topology_key).as_ref() == mine
            })
        {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    for term in &pod.spec.pod_affinity {
        let mine = n.node.labels.get(&term.topology_key);
        let any_match = placed
            .iter()
            .any(|p| term.selects(p.namespace(), p.labels(), None));
        let satisfied = mine.is_some()
            && placed.iter().any(|p| {
                term.selects(p.namespace(), p.labels(), None)
                    && domain_of(&p.node, &term.topology_key).as_ref() == mine
            });
        // The first pod of a group may land anywhere if it matches its own affinity term.
        let self_match = !any_match && term.selects(&pod.spec.namespace, &pod.spec.labels, None);
        if !satisfied && !self_match {
            return Err("node(s) didn't match pod affinity rules".into());
        }
    }
    for c in pod
        .spec
        .topology_spread
        .iter()
        .filter(|c| c.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule)
    {
        let Some(mine) = n.node.labels.get(&c.topology_key) else {
            return Err(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for (name, other) in nodes {
            if !node_affinity_matches(&pod.spec, name, &other.node.labels) {
                continue;
            }
            if let Some(d) = other.node.labels.get(&c.topology_key) {
                let count = placed
                    .iter()
                    .filter(|p| {
                        p.node == *name
                            && p.namespace() == pod.spec.namespace
                            && c.selects(p.labels())
                    })
                    .count() as u32;
                *counts.entry(d.clone()).or_default() += count;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let here = counts.get(mine).copied().unwrap_or(0);
        if here + 1 > min + c.max_skew {
            return Err("node(s) didn't match pod topology spread constraints".into());
        }
    }
    Ok(())
}
