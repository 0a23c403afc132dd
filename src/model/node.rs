//! The planner's view of a Node: its labels, taints and allocatable resources.
//!
//! [`Node::from_k8s`] reads a Kubernetes Node; malformed taints or quantities are errors naming the node.

use crate::model::resources::{ResourceError, Resources};
use crate::model::taints::{Taint, TaintEffect, TaintError};
use k8s_openapi::api::core::v1 as core;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node has no metadata.name")]
    MissingName,
    #[error("node {node}: allocatable: {source}")]
    Allocatable { node: String, source: ResourceError },
    #[error("node {node}: taint {index}: {source}")]
    Taint {
        node: String,
        index: usize,
        source: TaintError,
    },
}

impl NodeError {
    pub fn category(&self) -> &'static str {
        match self {
            NodeError::MissingName => "missing_name",
            NodeError::Allocatable { .. } => "invalid_allocatable",
            NodeError::Taint { .. } => "invalid_taint",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Taints that keep pods off (or, PreferNoSchedule, discourage them).
    pub taints: Vec<Taint>,
    /// Taints the node carries only until it is initialised (e.g. a CNI's `not-ready` taint); ignored for fit,
    /// because they will be gone by the time the kube-scheduler places pods there.
    pub startup_taints: Vec<Taint>,
    pub allocatable: Resources,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    pub provider_id: Option<String>,
}

impl Node {
    pub fn new(name: &str, allocatable: Resources) -> Node {
        let labels = [(
            crate::model::instance_type::labels::HOSTNAME.to_string(),
            name.to_string(),
        )]
        .into();
        Node {
            name: name.to_string(),
            labels,
            taints: vec![],
            startup_taints: vec![],
            allocatable,
            unschedulable: false,
            provider_id: None,
        }
    }

    pub fn from_k8s(node: &core::Node) -> Result<Node, NodeError> {
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(NodeError::MissingName)?;
        let spec = node.spec.as_ref();
        let mut taints = Vec::new();
        for (index, t) in spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let err = |source| NodeError::Taint {
                node: name.clone(),
                index,
                source,
            };
            let effect = TaintEffect::parse(&t.effect).map_err(err)?;
            taints.push(Taint::new(&t.key, t.value.as_deref().unwrap_or(""), effect).map_err(err)?);
        }
        let allocatable = match node.status.as_ref().and_then(|s| s.allocatable.as_ref()) {
            Some(list) => {
                Resources::from_quantities(list.iter().map(|(k, v)| (k.as_str(), v.0.as_str())))
                    .map_err(|source| NodeError::Allocatable {
                        node: name.clone(),
                        source,
                    })?
            }
            None => Resources::default(),
        };
        Ok(Node {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            startup_taints: vec![],
            allocatable,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            provider_id: spec.and_then(|s| s.provider_id.clone()),
            name,
        })
    }

    /// Moves the taints listed as startup taints (matched by key and effect) out of `taints`.
    pub fn mark_startup_taints(&mut self, startup: &[Taint]) {
        let (s, keep): (Vec<Taint>, Vec<Taint>) = self.taints.drain(..).partition(|t| {
            startup
                .iter()
                .any(|s| s.key == t.key && s.effect == t.effect)
        });
        self.taints = keep;
        self.startup_taints.extend(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_node() {
        let n: core::Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "a"}},
            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                                {"key": "node.cilium.io/agent-not-ready", "effect": "NoExecute"}],
                     "unschedulable": true, "providerID": "aws:///a/i-1"},
            "status": {"allocatable": {"cpu": "1930m", "memory": "6903Mi", "pods": "29"}}
        }))
        .unwrap();
        let mut node = Node::from_k8s(&n).unwrap();
        assert_eq!(node.allocatable.cpu_millis, 1930);
        assert_eq!(node.allocatable.pods, 29);
        assert!(node.unschedulable);
        assert_eq!(node.taints.len(), 2);
        node.mark_startup_taints(&[Taint::new(
            "node.cilium.io/agent-not-ready",
            "",
            TaintEffect::NoExecute,
        )
        .unwrap()]);
        assert_eq!(node.taints.len(), 1);
        assert_eq!(node.startup_taints.len(), 1);
    }

    #[test]
    fn malformed_nodes_are_errors() {
        let bad_taint: core::Node =
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "k", "effect": "Maybe"}]}})).unwrap();
        assert_eq!(
            Node::from_k8s(&bad_taint).unwrap_err().category(),
            "invalid_taint"
        );
        let bad_alloc: core::Node = serde_json::from_value(
            json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "x"}}}),
        )
        .unwrap();
        assert_eq!(
            Node::from_k8s(&bad_alloc).unwrap_err().category(),
            "invalid_allocatable"
        );
        let unnamed: core::Node = serde_json::from_value(json!({"metadata": {}})).unwrap();
        assert_eq!(
            Node::from_k8s(&unnamed).unwrap_err().category(),
            "missing_name"
        );
    }
}
