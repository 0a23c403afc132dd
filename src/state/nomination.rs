//! What berth tells the scheduler about its plan: a pending pod's `status.nominatedNodeName` names the new node
//! berth launched for it, once that node has registered (KEP-5278, on by default since Kubernetes 1.35).
//!
//! Without it, kube-scheduler fills each new node as it turns Ready with whatever pods come first in its queue, not
//! the pods the node was sized for; in a burst whose nodes turn Ready one after another, pods planned for later
//! nodes take the room of those planned for earlier ones, and what is left over no longer fits anywhere: another
//! scale-up for pods that had machines. A nominated pod tries its node first, and the room it needs there is held
//! against pods of equal or lower priority.
//!
//! The rules are the KEP's: berth sets a nomination where there is none, and changes or clears only one it wrote
//! itself (the scheduler's, set for a preemption, is left alone); each write carries the resourceVersion read, so it
//! never lands on a pod that was bound or changed meanwhile. A pod crowded off its node (by a higher-priority pod)
//! has the nomination cleared: it would hold room on a node that cannot take it.

use k8s_openapi::api::core::v1 as core;
use std::collections::HashMap;
use std::sync::Arc;

/// One `status.nominatedNodeName` write.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NominationWrite {
    pub namespace: String,
    pub name: String,
    /// The node to nominate; `None` clears berth's nomination.
    pub node: Option<String>,
    /// The pod's resourceVersion when read: the write's precondition.
    pub resource_version: String,
}

/// The writes that make pending pods' nominations say where berth expects them.
///
/// `expected`: pod (`namespace/name`) → the registered node it rides. `pending`: the unschedulable pods as read.
/// `written`: pod → the node berth last nominated it to (what it may change or clear). In pod order.
pub fn nomination_writes(
    expected: &HashMap<String, String>,
    pending: &HashMap<String, Arc<core::Pod>>,
    written: &HashMap<String, String>,
) -> Vec<NominationWrite> {
    let mut writes = Vec::new();
    for (key, pod) in pending {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty());
        let wanted = expected.get(key).map(String::as_str);
        if current == wanted {
            continue;
        }
        let ours = current.is_none() || current == written.get(key).map(String::as_str);
        if !ours || (wanted.is_none() && current.is_none()) {
            continue;
        }
        let Some(resource_version) = pod.metadata.resource_version.clone() else {
            continue;
        };
        writes.push(NominationWrite {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: wanted.map(str::to_string),
            resource_version,
        });
    }
    writes.sort();
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, nominated: Option<&str>) -> (String, Arc<core::Pod>) {
        let pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "7"},
            "status": {"nominatedNodeName": nominated}
        }))
        .unwrap();
        (format!("default/{name}"), Arc::new(pod))
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("default/{k}"), v.to_string()))
            .collect()
    }

    fn writes(
        expected: &[(&str, &str)],
        pods: &[(&str, Option<&str>)],
        written: &[(&str, &str)],
    ) -> Vec<(String, Option<String>)> {
        let pending = pods.iter().map(|(n, nn)| pod(n, *nn)).collect();
        nomination_writes(&map(expected), &pending, &map(written))
            .into_iter()
            .map(|w| (w.name, w.node))
            .collect()
    }

    #[test]
    fn a_pod_riding_a_registered_node_is_nominated_to_it_once() {
        assert_eq!(
            writes(&[("a", "n1")], &[("a", None), ("b", None)], &[]),
            vec![("a".into(), Some("n1".into()))]
        );
        assert!(writes(&[("a", "n1")], &[("a", Some("n1"))], &[("a", "n1")]).is_empty());
    }

    #[test]
    fn berths_own_nomination_follows_the_plan_and_is_cleared_when_the_pod_no_longer_rides() {
        assert_eq!(
            writes(&[("a", "n2")], &[("a", Some("n1"))], &[("a", "n1")]),
            vec![("a".into(), Some("n2".into()))]
        );
        assert_eq!(
            writes(&[], &[("a", Some("n1"))], &[("a", "n1")]),
            vec![("a".into(), None)]
        );
    }

    #[test]
    fn a_nomination_berth_did_not_write_is_left_alone() {
        // The scheduler nominated it for a preemption, or berth restarted and forgot: either way not berth's to undo.
        assert!(writes(&[("a", "n2")], &[("a", Some("victims-node"))], &[]).is_empty());
        assert!(writes(&[], &[("a", Some("victims-node"))], &[("a", "n1")]).is_empty());
    }

    #[test]
    fn every_write_is_conditioned_on_the_version_read() {
        let pending = [pod("a", None)].into_iter().collect();
        let w = nomination_writes(&map(&[("a", "n1")]), &pending, &HashMap::new());
        assert_eq!(w[0].resource_version, "7");
        assert_eq!(w[0].namespace, "default");
    }
}
