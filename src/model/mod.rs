//! Plain data shared by the pure planners: quantities, resources, label requirements, taints and tolerations,
//! instance types and their offerings, durations.
//!
//! Nothing here talks to Kubernetes or AWS; everything is deterministic and table-tested against the rules the
//! Kubernetes documentation gives, so the planners built on it agree with the kubelet and the kube-scheduler.

pub mod aws_catalog;
pub mod duration;
pub mod instance_type;
pub mod label_selector;
pub mod node;
pub mod pod;
pub mod quantity;
pub mod requirements;
pub mod resources;
pub mod taints;
