//! Plain data shared by the pure planners: quantities, label requirements, taints and tolerations, durations.
//!
//! Nothing here talks to Kubernetes or AWS; everything is deterministic and table-tested against the rules the
//! Kubernetes documentation gives, so the planners built on it agree with the kubelet and the kube-scheduler.

pub mod duration;
pub mod quantity;
pub mod requirements;
pub mod taints;
