//! The simulated kubelets: when the (simulated) cloud reports an instance launched, a Node registers after the
//! instance's boot delay, with the labels, providerID, taints, capacity and conditions a real EKS node has, and
//! turns Ready after its ready delay (a real node registers NotReady until its network plugin is up); when
//! the instance terminates, the Node goes away, and with it the pods bound there (as the pod garbage collector
//! does for pods of a deleted node).
//!
//! The events are plain structs so that the simulated cloud can produce them without depending on the emulator's
//! internals. Node names are the instance ids (real EKS nodes are named after the private DNS name).

use super::clock::format_time;
use super::error::ApiError;
use super::store::{DeleteOptions, ListQuery, PatchKind, WriteOptions};
use super::Emulator;
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
    let condition = |t: &str, status: &str, reason: &str| json!({"type": t, "status": status, "reason": reason, "message": reason, "lastHeartbeatTime": now, "lastTransitionTime": now});
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
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                if ready {
                    condition("Ready", "True", "KubeletReady")
                } else {
                    condition("Ready", "False", "KubeletNotReady")
                },
            ],
            "addresses": [{"type": "Hostname", "address": i.instance_id}],
            "nodeInfo": {"architecture": i.arch, "operatingSystem": "linux", "kubeletVersion": "v1.33.0-eks", "kubeProxyVersion": "v1.33.0-eks",
                         "containerRuntimeVersion": "containerd://1.7.0", "osImage": "Amazon Linux 2023", "kernelVersion": "6.1.0",
                         "machineID": i.instance_id, "systemUUID": i.instance_id, "bootID": i.instance_id},
        }
    })
}

/// Kubelets of all simulated instances of one emulator.
#[derive(Clone)]
pub struct KubeletSimulator {
    emu: Emulator,
    booting: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
}

impl KubeletSimulator {
    /// Kubelets registering into this emulator.
    pub fn new(emu: Emulator) -> Self {
        KubeletSimulator {
            emu,
            booting: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Registers the Node now (the boot delay already elapsed), Ready unless it has a ready delay. An already
    /// registered node is left alone.
    pub fn register(&self, instance: &InstanceLaunched) -> Result<(), ApiError> {
        let store = self.emu.store();
        let rt = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let ready = instance.ready_delay.is_zero();
        let node = node_object(instance, ready, &format_time(store.clock().now()));
        let opts = WriteOptions {
            field_manager: "kubelet".into(),
            ..Default::default()
        };
        match store.create(&rt, "", node, &opts) {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
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

    /// Sets a Node's Ready condition (tests of NotReady nodes).
    pub fn set_ready(&self, node: &str, ready: bool) -> Result<(), ApiError> {
        let store = self.emu.store();
        let rt = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let current = store.get(&rt, "", node)?.value()?;
        let mut conditions = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let now = format_time(store.clock().now());
        let status = if ready { "True" } else { "False" };
        for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(if ready {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            });
        }
        let patch = json!({"status": {"conditions": conditions}});
        let opts = WriteOptions {
            field_manager: "kubelet".into(),
            subresource: Some("status".into()),
            ..Default::default()
        };
        store
            .patch(&rt, "", node, PatchKind::Merge, &patch, &opts)
            .map(|_| ())
    }
}
