//! berth's API: the five kinds of group `berth.dev/v1alpha1`, and the CRDs generated from them.
//!
//! Field names follow Cluster API where the concept is the same (`spec.replicas`, `spec.strategy.rollingUpdate`,
//! `spec.template`, the `berth.dev/delete-machine` annotation). Every field's doc comment becomes its
//! `kubectl explain` text, and cross-field rules are CEL `x-kubernetes-validations` the API server enforces.

// kube-derive's `printcolumn(...)` attributes each carry their own `type_ = ...`; clippy reads the repeats as one
// attribute given twice.
#![allow(clippy::duplicated_attributes)]

pub mod cluster;
pub mod common;
pub mod keys;
pub mod launch_shapes;
pub mod machine;
pub mod machine_class;
pub mod machine_deployment;
pub mod machine_set;
mod schema_check;

pub use cluster::{Cluster, ClusterSpec, ClusterStatus};
pub use common::{
    ClassReference, Condition, ConditionStatus, MachineTemplate, MachineTemplateSpec, TaintSpec,
};
pub use machine::{Machine, MachinePhase, MachineShape, MachineSpec, MachineStatus};
pub use machine_class::{MachineClass, MachineClassSpec, MachineClassStatus};
pub use machine_deployment::{MachineDeployment, MachineDeploymentSpec, MachineDeploymentStatus};
pub use machine_set::{MachineSet, MachineSetSpec, MachineSetStatus};
pub use schema_check::{check_structural, StructuralError};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every berth kind.
pub const GROUP: &str = "berth.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Annotation that marks a Machine to be deleted first when its set scales down.
pub const DELETE_MACHINE_ANNOTATION: &str = "berth.dev/delete-machine";
/// Annotation on a Machine EC2 is reclaiming (a spot interruption warning): "<Reason>: <message>", written before the
/// Machine is deleted. From then on its node counts as gone and its pods as pending to the scheduling snapshot, so
/// their capacity is launched while they still run.
pub const INTERRUPTION_ANNOTATION: &str = "berth.dev/interruption";
/// Annotation on a pod (or node) that forbids voluntary disruption of its node.
pub const DO_NOT_DISRUPT_ANNOTATION: &str = "berth.dev/do-not-disrupt";

/// The CRDs of all five kinds, in dependency order (classes before the groups that reference them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Cluster::crd(),
        MachineClass::crd(),
        MachineDeployment::crd(),
        MachineSet::crd(),
        Machine::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `berth crds` prints it and charts/berth/crds/ stores it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
