//! `MachineSet`: keeps `replicas` Machines of one template revision.

use super::common::{Condition, MachineTemplate};
use super::machine_deployment::DeletePolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Replicas of one machine template revision. Usually owned by a MachineDeployment.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "MachineSet",
    plural = "machinesets",
    shortname = "ms",
    category = "berth",
    namespaced,
    status = "MachineSetStatus",
    doc = "Keeps a number of Machines of one template revision.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Current", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetSpec {
    /// How many Machines to keep (default 1).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Selects the Machines of this set; must match template.metadata.labels.
    pub selector: LabelSelector,
    /// The Machines' template.
    pub template: MachineTemplate,
    /// Seconds a Machine's Node must be Ready before the Machine counts as available.
    #[serde(default)]
    pub min_ready_seconds: u32,
    /// Which Machines go first when scaling down. Annotated (berth.dev/delete-machine) and unhealthy Machines
    /// always go first.
    #[serde(default)]
    pub delete_policy: DeletePolicy,
}

fn one() -> u32 {
    1
}

/// The observed state of the set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetStatus {
    /// Machines the set owns, those being deleted included (they still run until drained and terminated).
    #[serde(default)]
    pub replicas: u32,
    /// Machines whose labels match the template's labels.
    #[serde(default)]
    pub fully_labeled_replicas: u32,
    /// Machines whose Node is Ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Machines Ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: u32,
    /// The selector in string form, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Why the set cannot make progress, if it cannot (for example a missing MachineClass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Details of failureReason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    /// Ready, MachinesCreated, Valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
