//! `Machine`: one EC2 instance and the Node it becomes.

use super::common::{ClassReference, Condition, NodeReference, TaintSpec};
use super::machine_class::CapacityTypeSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One instance: what to launch, and what it became.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Machine",
    plural = "machines",
    shortname = "ma",
    category = "berth",
    namespaced,
    status = "MachineStatus",
    doc = "One EC2 instance: the shape chosen for it, its lifecycle phase and the Node it became.",
    printcolumn(
        name = "Instance-Type",
        type_ = "string",
        json_path = ".status.instanceType"
    ),
    printcolumn(name = "Zone", type_ = "string", json_path = ".status.zone"),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.capacityType"
    ),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// The MachineClass that says how to launch the instance.
    pub class_ref: ClassReference,
    /// Labels put on the Node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Taints the Node registers with and keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<TaintSpec>,
    /// Taints the Node registers with that a node agent removes once ready (or berth, when the class sets
    /// removeStartupTaintsWhenReady).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<TaintSpec>,
    /// The shape the autoscaler chose for this Machine. Unset: the cheapest shape the class allows that fits the
    /// group's pending pods, decided at launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<MachineShape>,
    /// The cloud's id for the instance (aws:///ZONE/INSTANCE_ID), once launched.
    #[serde(
        default,
        rename = "providerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
}

/// Instance types, zones and capacity types the instance may be launched as, in order of preference. The cloud
/// picks among them (CreateFleet overrides), so a shortage of one type does not block the launch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineShape {
    /// Instance types, cheapest first.
    #[schemars(length(min = 1))]
    pub instance_types: Vec<String>,
    /// Zones allowed. Empty: any zone of the class's subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// Capacity types allowed, preferred first. Empty: the class's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity_types: Vec<CapacityTypeSpec>,
}

/// Where a Machine is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MachinePhase {
    /// Created; no launch attempted yet.
    #[default]
    Pending,
    /// Launch requested; waiting for the instance.
    Provisioning,
    /// The instance runs; waiting for its Node.
    Provisioned,
    /// The Node registered and is Ready.
    Running,
    /// Being drained and terminated.
    Deleting,
    /// Cannot become Running (see failureReason); its MachineSet replaces it.
    Failed,
}

/// What the Machine became.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Pending, Provisioning, Provisioned, Running, Deleting or Failed.
    #[serde(default)]
    pub phase: MachinePhase,
    /// The EC2 instance id.
    #[serde(
        default,
        rename = "instanceID",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_id: Option<String>,
    /// aws:///ZONE/INSTANCE_ID, as the Node's spec.providerID.
    #[serde(
        default,
        rename = "providerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    /// The instance type launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// The availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// spot or on-demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_type: Option<CapacityTypeSpec>,
    /// Hourly price in USD when launched, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// The AMI launched.
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The launch attempt, part of the launch's idempotency token. It moves on only after a launch that certainly
    /// started nothing, so a retry after a timeout or a controller restart can never launch a second instance.
    #[serde(default)]
    pub launch_attempt: u32,
    /// When the launch call succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<Time>,
    /// The Node this Machine became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ref: Option<NodeReference>,
    /// A CamelCase reason when phase is Failed (for example NodeStartupTimeout, InstanceTerminated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Details of failureReason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    /// InstanceLaunched, NodeRegistered, Ready, Drained, InstanceTerminated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
