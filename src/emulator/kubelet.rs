//! The simulated kubelets: when the (simulated) cloud reports an instance launched, a Node registers after the
//! instance's boot delay, with the labels, providerID, taints, capacity and conditions a real EKS node has, and
//! turns Ready after its ready delay (a real node registers NotReady until its network plugin is up); when
//! the instance terminates, the Node goes away, and with it the pods bound there (as the pod garbage collector
//! does for pods of a deleted node).
//!
//! The events are plain structs so that the simulated cloud can produce them without depending on the emulator's
//! internals. Node names are the instance ids (real EKS nodes are named after the private DNS name).
//!
//! Kubelets can fail ([`KubeletSimulator::fail`]): one stops posting (its heartbeat ages until the node lifecycle
//! controller, [`super::node_lifecycle`], marks the Node `Ready=Unknown`), or keeps posting but reports
//! `Ready=False`; and the control plane can lose every kubelet at once
//! ([`KubeletSimulator::set_control_plane_reachable`]). A real kubelet renews a Lease in `kube-node-lease` every
//! 10 s; here the heartbeat is an in-process record per node ([`Heartbeat`]) from which the time of the last
//! renewal is computed, so that thousands of simulated nodes cost no API writes (and no watch events waking berth
//! and the binder) every 10 s. The Node's own status is written when the kubelet registers and whenever what it
//! reports changes, as a real kubelet writes it when a condition changes.

use super::clock::format_time;
use super::error::ApiError;
use super::store::{DeleteOptions, ListQuery, PatchKind, WriteOptions};
use super::Emulator;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Taint;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cloud launched an instance that will join the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceLaunched {
    /// EC2 instance id, e.g. `i-0123456789abcdef0`; also the Node name.
    pub instance_id: String,
    /// e.g. `m5.large`
    pub instance_type: String,
    /// e.g. `us-west-2a`
    pub zone: String,
    /// e.g. `us-west-2`
    pub region: String,
    /// `on-demand` or `spot`
    pub capacity_type: String,
    /// `amd64` or `arm64`
    pub arch: String,
    /// Labels from the machine template (added to the well-known ones).
    pub labels: BTreeMap<String, String>,
    /// Taints from the machine template.
    pub taints: Vec<Taint>,
    /// Resource name -> quantity string.
    pub capacity: BTreeMap<String, String>,
    /// Resource name -> quantity string.
    pub allocatable: BTreeMap<String, String>,
    /// Time from launch to the Node registering.
    pub boot_delay: Duration,
    /// Time from registering to Ready (zero: it registers Ready).
    pub ready_delay: Duration,
}

/// The cloud terminated an instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceTerminated {
    /// EC2 instance id.
    pub instance_id: String,
}

/// What the kubelet simulator consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceEvent {
    /// An instance is running.
    Launched(Box<InstanceLaunched>),
    /// An instance is gone.
    Terminated(InstanceTerminated),
}

/// The Node object a kubelet on this instance registers, Ready or not yet.
pub fn node_object(i: &InstanceLaunched, ready: bool, now: &str) -> Value {
    let mut labels: BTreeMap<String, String> = i.labels.clone();
    for (k, v) in [
        ("kubernetes.io/hostname", i.instance_id.as_str()),
        ("topology.kubernetes.io/zone", i.zone.as_str()),
        ("topology.kubernetes.io/region", i.region.as_str()),
        ("node.kubernetes.io/instance-type", i.instance_type.as_str()),
        ("kubernetes.io/arch", i.arch.as_str()),
        ("kubernetes.io/os", "linux"),
        ("karpenter.sh/capacity-type", i.capacity_type.as_str()),
        ("berth.dev/capacity-type", i.capacity_type.as_str()),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    let mut spec = json!({"providerID": format!("aws:///{}/{}", i.zone, i.instance_id)});
    if !i.taints.is_empty() {
        spec["taints"] = serde_json::to_value(&i.taints).unwrap_or(Value::Null);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": i.instance_id, "labels": labels},
        "spec": spec,
        "status": {
            "capacity": i.capacity,
            "allocatable": i.allocatable,
            "conditions": kubelet_conditions(ready, now, &[]),
            "addresses": [{"type": "Hostname", "address": i.instance_id}],
            "nodeInfo": {"architecture": i.arch, "operatingSystem": "linux", "kubeletVersion": "v1.33.0-eks", "kubeProxyVersion": "v1.33.0-eks",
                         "containerRuntimeVersion": "containerd://1.7.0", "osImage": "Amazon Linux 2023", "kernelVersion": "6.1.0",
                         "machineID": i.instance_id, "systemUUID": i.instance_id, "bootID": i.instance_id},
        }
    })
}

/// The conditions a kubelet posts: no pressure, and Ready as it reports it. Every condition carries the time of
/// this post as its lastHeartbeatTime; lastTransitionTime moves only when the status differs from the one in
/// `previous` (the Node's current conditions; a condition the node lifecycle controller set to Unknown counts as
/// a change).
pub fn kubelet_conditions(ready: bool, now: &str, previous: &[Value]) -> Vec<Value> {
    let (ready_status, ready_reason, ready_message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        (
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false",
        )
    };
    [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "KubeletHasSufficientMemory",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "KubeletHasNoDiskPressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "KubeletHasSufficientPID",
        ),
        ("Ready", ready_status, ready_reason, ready_message),
    ]
    .into_iter()
    .map(|(t, status, reason, message)| {
        let transition = previous
            .iter()
            .find(|c| c["type"] == t && c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(now);
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": transition})
    })
    .collect()
}

/// How often a kubelet renews its heartbeat (its Lease: a quarter of the 40 s lease duration).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How a node's kubelet fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletFailure {
    /// The kubelet is up and keeps its heartbeat, but reports `Ready=False` (reason KubeletNotReady).
    NotReady,
    /// The kubelet stops posting: its heartbeat ages and the node lifecycle controller marks the Node Unknown.
    Unknown,
}

impl KubeletFailure {
    /// The scenario file's spelling (the Ready condition's status each ends in).
    pub fn parse(s: &str) -> Option<KubeletFailure> {
        match s {
            "NotReady" => Some(KubeletFailure::NotReady),
            "Unknown" => Some(KubeletFailure::Unknown),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KubeletFailure::NotReady => "NotReady",
            KubeletFailure::Unknown => "Unknown",
        }
    }
}

/// A kubelet's heartbeat: renewed every [`HEARTBEAT_INTERVAL`] from `since` while its posts reach the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// When its renewals (last) began to reach the API: registration, a recovery, the end of an outage.
    pub since: DateTime<Utc>,
    /// When they stopped reaching it; None while they do.
    pub stopped: Option<DateTime<Utc>>,
}

impl Heartbeat {
    /// The last renewal the API received by `now`.
    pub fn last(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let end = self.stopped.map_or(now, |s| s.min(now));
        let elapsed = (end - self.since).num_seconds().max(0);
        let interval = HEARTBEAT_INTERVAL.as_secs() as i64;
        self.since + chrono::Duration::seconds(elapsed - elapsed % interval)
    }
}

/// One registered node's kubelet.
#[derive(Debug, Clone)]
struct KubeletState {
    heartbeat: Heartbeat,
    /// The kubelet is down (a failure "Unknown"): nothing it would post reaches the API.
    down: bool,
    /// What it reports when it posts: false while its network plugin starts, or under a NotReady failure.
    ready: bool,
}

/// The kubelets' shared record, and whether the control plane hears them at all.
#[derive(Debug, Default)]
struct Kubelets {
    nodes: BTreeMap<String, KubeletState>,
    /// Since when no kubelet's post reaches the API (a control-plane outage); None while they do.
    unreachable_since: Option<DateTime<Utc>>,
}

impl Kubelets {
    fn posting(&self, k: &KubeletState) -> bool {
        !k.down && self.unreachable_since.is_none()
    }
}

/// Kubelets of all simulated instances of one emulator.
#[derive(Clone)]
pub struct KubeletSimulator {
    emu: Emulator,
    booting: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    kubelets: Arc<Mutex<Kubelets>>,
}

impl KubeletSimulator {
    /// Kubelets registering into this emulator.
    pub fn new(emu: Emulator) -> Self {
        KubeletSimulator {
            emu,
            booting: Arc::new(Mutex::new(HashMap::new())),
            kubelets: Arc::new(Mutex::new(Kubelets::default())),
        }
    }

    fn kubelets(&self) -> std::sync::MutexGuard<'_, Kubelets> {
        self.kubelets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> DateTime<Utc> {
        self.emu.store().clock().now()
    }

    /// Each registered node's last heartbeat the API received by now, by node name.
    pub fn heartbeats(&self) -> BTreeMap<String, DateTime<Utc>> {
        let now = self.now();
        self.kubelets()
            .nodes
            .iter()
            .map(|(n, k)| (n.clone(), k.heartbeat.last(now)))
            .collect()
    }

    /// Registered nodes whose kubelet is up, posting and reporting Ready: those a failure can hit. Sorted.
    pub fn healthy_nodes(&self) -> Vec<String> {
        let k = self.kubelets();
        k.nodes
            .iter()
            .filter(|(_, s)| s.ready && k.posting(s))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Fails these nodes' kubelets; answers the nodes it knew (registered, not terminated). A `NotReady` kubelet
    /// posts `Ready=False` at once (if its posts reach the API); an `Unknown` one just stops posting.
    pub fn fail(&self, nodes: &[String], failure: KubeletFailure) -> Result<Vec<String>, ApiError> {
        let now = self.now();
        let mut known = Vec::new();
        let mut post = Vec::new();
        {
            let mut k = self.kubelets();
            let unreachable = k.unreachable_since.is_some();
            for n in nodes {
                let Some(s) = k.nodes.get_mut(n) else {
                    continue;
                };
                known.push(n.clone());
                match failure {
                    KubeletFailure::Unknown => {
                        if !s.down && !unreachable {
                            s.heartbeat.stopped = Some(now);
                        }
                        s.down = true;
                    }
                    KubeletFailure::NotReady => {
                        s.ready = false;
                        if !s.down && !unreachable {
                            post.push(n.clone());
                        }
                    }
                }
            }
        }
        for n in post {
            self.post_status(&n, false)?;
        }
        Ok(known)
    }

    /// The failed kubelets of these nodes come back up and report Ready; answers the nodes it knew.
    pub fn recover(&self, nodes: &[String]) -> Result<Vec<String>, ApiError> {
        let now = self.now();
        let mut known = Vec::new();
        let mut post = Vec::new();
        {
            let mut k = self.kubelets();
            let unreachable = k.unreachable_since.is_some();
            for n in nodes {
                let Some(s) = k.nodes.get_mut(n) else {
                    continue;
                };
                known.push(n.clone());
                let was_silent = s.down;
                s.down = false;
                s.ready = true;
                if unreachable {
                    continue;
                }
                if was_silent {
                    s.heartbeat = Heartbeat {
                        since: now,
                        stopped: None,
                    };
                }
                post.push(n.clone());
            }
        }
        for n in post {
            self.post_status(&n, true)?;
        }
        Ok(known)
    }

    /// Whether the kubelets' posts reach the API server (false: a control-plane outage, or a partition between
    /// the nodes and the control plane; the API itself stays up). When they reach it again, every kubelet that is
    /// up posts its status and its heartbeat resumes.
    pub fn set_control_plane_reachable(&self, reachable: bool) -> Result<(), ApiError> {
        let now = self.now();
        let mut post = Vec::new();
        {
            let mut k = self.kubelets();
            match (reachable, k.unreachable_since.is_some()) {
                (false, false) => {
                    k.unreachable_since = Some(now);
                    for s in k.nodes.values_mut().filter(|s| !s.down) {
                        s.heartbeat.stopped = Some(now);
                    }
                }
                (true, true) => {
                    k.unreachable_since = None;
                    for (n, s) in k.nodes.iter_mut().filter(|(_, s)| !s.down) {
                        s.heartbeat = Heartbeat {
                            since: now,
                            stopped: None,
                        };
                        post.push((n.clone(), s.ready));
                    }
                }
                _ => {}
            }
        }
        for (n, ready) in post {
            match self.post_status(&n, ready) {
                // Terminated meanwhile: nothing to post.
                Ok(()) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The kubelet posts its conditions (Ready as given) to the Node's status.
    fn post_status(&self, node: &str, ready: bool) -> Result<(), ApiError> {
        let store = self.emu.store();
        let rt = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let current = store.get(&rt, "", node)?.value()?;
        let previous = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let now = format_time(store.clock().now());
        let patch = json!({"status": {"conditions": kubelet_conditions(ready, &now, &previous)}});
        let opts = WriteOptions {
            field_manager: "kubelet".into(),
            subresource: Some("status".into()),
            ..Default::default()
        };
        store
            .patch(&rt, "", node, PatchKind::Merge, &patch, &opts)
            .map(|_| ())
    }

    /// Registers the Node now (the boot delay already elapsed), Ready unless it has a ready delay. An already
    /// registered node is left alone.
    pub fn register(&self, instance: &InstanceLaunched) -> Result<(), ApiError> {
        let store = self.emu.store();
        let rt = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let ready = instance.ready_delay.is_zero();
        let now = store.clock().now();
        let node = node_object(instance, ready, &format_time(now));
        let opts = WriteOptions {
            field_manager: "kubelet".into(),
            ..Default::default()
        };
        match store.create(&rt, "", node, &opts) {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => {
                let mut k = self.kubelets();
                // A node registering during an outage: its later renewals do not reach the API either.
                let stopped = k.unreachable_since.map(|_| now);
                k.nodes
                    .entry(instance.instance_id.clone())
                    .or_insert(KubeletState {
                        heartbeat: Heartbeat {
                            since: now,
                            stopped,
                        },
                        down: false,
                        ready,
                    });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the Node of a terminated instance and the pods bound to it; cancels a pending registration.
    pub fn terminate(&self, instance_id: &str) -> Result<(), ApiError> {
        if let Some(h) = self
            .booting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(instance_id)
        {
            h.abort();
        }
        self.kubelets().nodes.remove(instance_id);
        let store = self.emu.store();
        let nodes = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        match store.delete(&nodes, "", instance_id, &DeleteOptions::default()) {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let pods = store
            .resource_type("", "pods")
            .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
        let on_node = ListQuery {
            field: super::selector::FieldSelector::parse(&format!("spec.nodeName={instance_id}"))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            ..Default::default()
        };
        for p in store.list(&pods, None, &on_node)?.items {
            // Pods with finalizers stay Terminating, as with the real pod garbage collector.
            match store.delete(&pods, &p.namespace, &p.name, &DeleteOptions::default()) {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Handles one event: a launch registers after its boot delay and turns Ready after its ready delay (on tokio
    /// time, so paused or virtual clocks work); a termination takes effect at once. Must be called inside a tokio
    /// runtime.
    pub fn handle(&self, event: InstanceEvent) -> Result<(), ApiError> {
        match event {
            InstanceEvent::Launched(i) => {
                let i = *i;
                if i.boot_delay.is_zero() && i.ready_delay.is_zero() {
                    return self.register(&i);
                }
                let me = self.clone();
                let id = i.instance_id.clone();
                let task = tokio::spawn(async move {
                    tokio::time::sleep(i.boot_delay).await;
                    let registered = me.register(&i);
                    // Still in `booting` while not Ready: a termination meanwhile cancels the readiness too.
                    if registered.is_ok() && !i.ready_delay.is_zero() {
                        tokio::time::sleep(i.ready_delay).await;
                    }
                    me.booting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&i.instance_id);
                    let result = registered.and_then(|()| match i.ready_delay.is_zero() {
                        true => Ok(()),
                        false => me.set_ready(&i.instance_id, true),
                    });
                    if let Err(e) = result {
                        tracing::warn!(instance = %i.instance_id, error = %e, "simulated kubelet could not register its node or make it Ready");
                    }
                });
                self.booting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, task.abort_handle());
                Ok(())
            }
            InstanceEvent::Terminated(t) => self.terminate(&t.instance_id),
        }
    }

    /// Consumes events until the channel closes.
    pub fn spawn(
        self,
        mut events: tokio::sync::mpsc::Receiver<InstanceEvent>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let Err(e) = self.handle(ev) {
                    tracing::warn!(error = %e, "simulated kubelet event failed");
                }
            }
        })
    }

    /// Instances launched whose nodes have not registered, or not turned Ready, yet.
    pub fn booting(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .booting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The kubelet reports Ready (or not) from now on and posts it, unless its posts do not reach the API (it is
    /// down, or the control plane is unreachable). A node no kubelet of this simulator registered gets the post
    /// all the same (tests make nodes NotReady by hand).
    pub fn set_ready(&self, node: &str, ready: bool) -> Result<(), ApiError> {
        let posting = {
            let mut k = self.kubelets();
            let unreachable = k.unreachable_since.is_some();
            match k.nodes.get_mut(node) {
                Some(s) => {
                    s.ready = ready;
                    !s.down && !unreachable
                }
                None => true,
            }
        };
        if posting {
            self.post_status(node, ready)
        } else {
            Ok(())
        }
    }
}
