//! kube-controller-manager's node lifecycle controller, as far as a cluster of simulated kubelets needs it: a Node
//! whose kubelet's heartbeat is older than the grace period (node-monitor-grace-period, 40 s) gets its conditions
//! set to `Unknown` (reason NodeStatusUnknown, "Kubelet stopped posting node status.", lastTransitionTime now,
//! lastHeartbeatTime left at the last post) and the `node.kubernetes.io/unreachable` taints, NoSchedule and
//! NoExecute; once its kubelet posts `Ready` again, the taints go.
//!
//! Differences from the real controller, each deliberate:
//! - Heartbeats are the simulated kubelets' in-process records ([`KubeletSimulator::heartbeats`]), not Leases;
//!   Nodes no simulated kubelet registered (made by hand in tests) are not monitored.
//! - The `node.kubernetes.io/not-ready` taints of a `Ready=False` node are not added: nodes register NotReady
//!   while their network plugin starts, and tainting them would change what every simulation measures.
//! - No taint-based eviction: pods stay bound to an Unknown node (as in a real cluster until the NoExecute
//!   taint's tolerationSeconds, 300 s by the DefaultTolerationSeconds admission plugin, run out). A remediation
//!   controller that drains and deletes the Machine removes them, as do the kubelets when the instance is
//!   terminated. Nor is there the "full disruption" mode that stops evictions when every zone is unhealthy,
//!   which matters only with evictions.

use super::clock::format_time;
use super::error::ApiError;
use super::kubelet::KubeletSimulator;
use super::store::{PatchKind, WriteOptions};
use super::Emulator;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// node-monitor-grace-period: how old a heartbeat may get before the Node is marked Unknown.
pub const NODE_MONITOR_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// node-monitor-period: how often the controller looks.
pub const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// The taint key of a Node whose kubelet the control plane cannot hear.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint effects an unreachable Node gets.
pub const UNREACHABLE_EFFECTS: [&str; 2] = ["NoSchedule", "NoExecute"];
/// The conditions the controller sets to Unknown (the kubelet's own).
const KUBELET_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// What the controller needs to know of one Node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    /// The Ready condition's status (`True`, `False`, `Unknown`); None without one.
    pub ready: Option<String>,
    /// The effects of the unreachable taints it carries.
    pub unreachable_effects: BTreeSet<String>,
}

/// What to change on a Node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// Set its kubelet's conditions to Unknown.
    pub mark_unknown: bool,
    /// Unreachable taints to add (by effect).
    pub add_taints: Vec<&'static str>,
    /// Remove every unreachable taint.
    pub remove_taints: bool,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        !self.mark_unknown && self.add_taints.is_empty() && !self.remove_taints
    }
}

/// The controller's decision for one Node whose last heartbeat is `heartbeat_age` old: Unknown past the grace
/// period; an Unknown Node is tainted unreachable, any other one untainted (its kubelet posted since).
pub fn decide(view: &NodeView, heartbeat_age: Duration) -> Change {
    let mark_unknown =
        heartbeat_age > NODE_MONITOR_GRACE_PERIOD && view.ready.as_deref() != Some("Unknown");
    let unknown = mark_unknown || view.ready.as_deref() == Some("Unknown");
    Change {
        mark_unknown,
        add_taints: match unknown {
            true => UNREACHABLE_EFFECTS
                .into_iter()
                .filter(|e| !view.unreachable_effects.contains(*e))
                .collect(),
            false => Vec::new(),
        },
        remove_taints: !unknown && !view.unreachable_effects.is_empty(),
    }
}

/// The Node's view from its JSON.
pub fn view_of(node: &Value) -> NodeView {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .map(str::to_string);
    let unreachable_effects = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == UNREACHABLE_TAINT)
        .filter_map(|t| t["effect"].as_str().map(str::to_string))
        .collect();
    NodeView {
        ready,
        unreachable_effects,
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifecycleReport {
    pub marked_unknown: Vec<String>,
    pub tainted: Vec<String>,
    pub untainted: Vec<String>,
}

/// The controller over one emulator's simulated kubelets.
#[derive(Clone)]
pub struct NodeLifecycle {
    emu: Emulator,
    kubelets: KubeletSimulator,
    /// Nodes it marked or tainted and must look at again (to untaint them when their kubelet is back), so a pass
    /// reads only those and the stale ones: a healthy cluster costs no API call.
    watched: Arc<Mutex<BTreeSet<String>>>,
}

impl NodeLifecycle {
    pub fn new(emu: Emulator, kubelets: KubeletSimulator) -> Self {
        NodeLifecycle {
            emu,
            kubelets,
            watched: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// One pass over the Nodes (the real controller makes one every [`NODE_MONITOR_PERIOD`]).
    pub fn run_once(&self) -> Result<LifecycleReport, ApiError> {
        let store = self.emu.store();
        let rt = store
            .resource_type("", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let now = store.clock().now();
        let heartbeats = self.kubelets.heartbeats();
        let age = |hb: DateTime<Utc>| (now - hb).to_std().unwrap_or(Duration::ZERO);
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut candidates: BTreeSet<String> = heartbeats
            .iter()
            .filter(|(_, hb)| age(**hb) > NODE_MONITOR_GRACE_PERIOD)
            .map(|(n, _)| n.clone())
            .collect();
        candidates.extend(watched.iter().cloned());
        let mut report = LifecycleReport::default();
        for name in candidates {
            // A node without a kubelet record is gone (terminated) or not a simulated one: forget it.
            let Some(hb) = heartbeats.get(&name) else {
                watched.remove(&name);
                continue;
            };
            let node = match store.get(&rt, "", &name) {
                Ok(s) => s.value()?,
                Err(ApiError::NotFound(_)) => {
                    watched.remove(&name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let change = decide(&view_of(&node), age(*hb));
            if change.mark_unknown {
                let patch = json!({"status": {"conditions": unknown_conditions(&node, now)}});
                let opts = WriteOptions {
                    field_manager: "node-lifecycle-controller".into(),
                    subresource: Some("status".into()),
                    ..Default::default()
                };
                store.patch(&rt, "", &name, PatchKind::Merge, &patch, &opts)?;
                report.marked_unknown.push(name.clone());
            }
            if !change.add_taints.is_empty() || change.remove_taints {
                let patch = json!({"spec": {"taints": taints_after(&node, &change, now)}});
                let opts = WriteOptions {
                    field_manager: "node-lifecycle-controller".into(),
                    ..Default::default()
                };
                store.patch(&rt, "", &name, PatchKind::Merge, &patch, &opts)?;
                match change.remove_taints {
                    true => report.untainted.push(name.clone()),
                    false => report.tainted.push(name.clone()),
                }
            }
            // Still Unknown: look again to untaint it once its kubelet posts. Otherwise it is untainted now.
            if change.mark_unknown || view_of(&node).ready.as_deref() == Some("Unknown") {
                watched.insert(name);
            } else {
                watched.remove(&name);
            }
        }
        Ok(report)
    }
}

/// The Node's conditions with the kubelet's own set to Unknown as the real controller sets them: reason, message
/// and lastTransitionTime new, lastHeartbeatTime kept (the last time the kubelet posted).
fn unknown_conditions(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let now = format_time(now);
    let mut conditions = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in conditions
        .iter_mut()
        .filter(|c| KUBELET_CONDITIONS.iter().any(|t| c["type"] == *t))
    {
        if c["status"] != "Unknown" {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!("Unknown");
        c["reason"] = json!("NodeStatusUnknown");
        c["message"] = json!("Kubelet stopped posting node status.");
    }
    if !conditions.iter().any(|c| c["type"] == "Ready") {
        conditions.push(json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
            "message": "Kubelet never posted node status.", "lastHeartbeatTime": now, "lastTransitionTime": now}));
    }
    conditions
}

/// The Node's taints after the change: unreachable ones added (with timeAdded) or removed, others kept.
fn taints_after(node: &Value, change: &Change, now: DateTime<Utc>) -> Vec<Value> {
    let mut taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if change.remove_taints {
        taints.retain(|t| t["key"] != UNREACHABLE_TAINT);
    }
    for effect in &change.add_taints {
        taints.push(
            json!({"key": UNREACHABLE_TAINT, "effect": effect, "timeAdded": format_time(now)}),
        );
    }
    taints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ready: &str, effects: &[&str]) -> NodeView {
        NodeView {
            ready: Some(ready.to_string()),
            unreachable_effects: effects.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_heartbeat_older_than_the_grace_period_marks_the_node_unknown_and_taints_it() {
        let c = decide(&view("True", &[]), Duration::from_secs(41));
        assert!(c.mark_unknown);
        assert_eq!(c.add_taints, vec!["NoSchedule", "NoExecute"]);
        assert!(!c.remove_taints);
        // Exactly at the grace period it is not stale yet.
        assert!(decide(&view("True", &[]), NODE_MONITOR_GRACE_PERIOD).is_empty());
        // A NotReady node that stops posting goes Unknown too.
        assert!(decide(&view("False", &[]), Duration::from_secs(60)).mark_unknown);
    }

    #[test]
    fn an_unknown_node_gets_only_the_taints_it_lacks_and_is_not_marked_twice() {
        let c = decide(&view("Unknown", &["NoSchedule"]), Duration::from_secs(90));
        assert!(!c.mark_unknown);
        assert_eq!(c.add_taints, vec!["NoExecute"]);
        assert!(decide(
            &view("Unknown", &["NoSchedule", "NoExecute"]),
            Duration::from_secs(90)
        )
        .is_empty());
    }

    #[test]
    fn a_node_that_posts_again_loses_the_unreachable_taints() {
        for ready in ["True", "False"] {
            let c = decide(&view(ready, &["NoSchedule", "NoExecute"]), Duration::ZERO);
            assert!(c.remove_taints && !c.mark_unknown && c.add_taints.is_empty());
        }
        assert!(decide(&view("True", &[]), Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn taints_keep_the_nodes_own() {
        let node = json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": UNREACHABLE_TAINT, "effect": "NoSchedule"}]}});
        let v = view_of(&node);
        assert_eq!(v.ready, None);
        let removed = taints_after(
            &node,
            &Change {
                remove_taints: true,
                ..Default::default()
            },
            Utc::now(),
        );
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0]["key"], "dedicated");
    }
}
