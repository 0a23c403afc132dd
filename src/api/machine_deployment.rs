//! `MachineDeployment`: a node group. Declares a machine template, replicas, autoscaling bounds and a rollout
//! strategy; berth keeps one MachineSet per template revision and rolls between them like a Deployment.

use super::common::{Condition, MachineTemplate, PERCENT_RULE, QUANTITY_PATTERN};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A node group: Machines from one template, rolled out across template changes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "MachineDeployment",
    plural = "machinedeployments",
    shortname = "md",
    category = "berth",
    namespaced,
    status = "MachineDeploymentStatus",
    doc = "A node group: replicas of a machine template, autoscaling bounds and a rollout strategy.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.autoscaling) || !has(self.replicas) || !has(self.autoscaling.minReplicas) || self.replicas >= self.autoscaling.minReplicas", "message": "replicas must be at least autoscaling.minReplicas"},
    {"rule": "!has(self.autoscaling) || !has(self.replicas) || !has(self.autoscaling.maxReplicas) || self.replicas <= self.autoscaling.maxReplicas", "message": "replicas must be at most autoscaling.maxReplicas"}
]))]
pub struct MachineDeploymentSpec {
    /// How many Machines the group should have. The autoscaler changes it within spec.autoscaling; `kubectl scale`
    /// changes it through the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Selects the Machines of this group; must match template.metadata.labels.
    pub selector: LabelSelector,
    /// The Machines' template. Changing it starts a rollout.
    pub template: MachineTemplate,
    /// Bounds and preferences for the autoscaler. Without it the autoscaler leaves this group alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// How a template change replaces Machines.
    #[serde(default)]
    pub strategy: DeploymentStrategy,
    /// Seconds a Machine's Node must be Ready before the Machine counts as available (default 0).
    #[serde(default)]
    pub min_ready_seconds: u32,
    /// How many old MachineSets (with zero replicas) are kept for rollback (default 1).
    #[serde(default = "one")]
    pub revision_history_limit: u32,
    /// Pauses rollouts: template changes are not acted on until unpaused. Scaling still works.
    #[serde(default)]
    pub paused: bool,
    /// Seconds a rollout may make no progress before the Progressing condition turns False (default 600).
    #[serde(default = "six_hundred")]
    pub progress_deadline_seconds: u32,
    /// Limits on how many of this group's nodes voluntary disruption (scale-down, consolidation, drift) may take
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<DisruptionSpec>,
    /// When a Machine counts as unhealthy and how berth remediates it (replaces it through its MachineSet).
    /// Unset: the defaults of every field below apply, so a dead node is replaced after 5 minutes; set
    /// `maxUnhealthy: 0` to turn remediation off for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
}

fn one() -> u32 {
    1
}
fn six_hundred() -> u32 {
    600
}

/// Autoscaling bounds and preferences for a group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas", "message": "minReplicas must be less than or equal to maxReplicas"}]))]
pub struct AutoscalingSpec {
    /// The fewest Machines the autoscaler leaves (default 0).
    #[serde(default)]
    pub min_replicas: u32,
    /// The most Machines the autoscaler creates.
    pub max_replicas: u32,
    /// Used by the priority expander: higher wins.
    #[serde(default)]
    pub priority: i32,
    /// Spare capacity kept in this group: room for `count` pods of this size at all times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<HeadroomSpec>,
}

/// Room for `count` pods requesting `cpu` and `memory` each (Ocean-style headroom).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadroomSpec {
    /// Cpu of one unit (a quantity, such as 500m).
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub cpu: String,
    /// Memory of one unit (a quantity, such as 1Gi).
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub memory: String,
    /// How many units.
    pub count: u32,
}

/// How Machines are replaced when the template changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    /// RollingUpdate (default) replaces Machines within maxSurge and maxUnavailable; OnDelete creates new ones
    /// only as old ones are deleted by hand.
    #[serde(default, rename = "type")]
    pub type_: StrategyType,
    /// Parameters of RollingUpdate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StrategyType {
    #[default]
    RollingUpdate,
    OnDelete,
}

/// Bounds of a rolling update, as numbers or percentages of replicas (Cluster API rounding: surge up,
/// unavailable down).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.maxSurge) && has(self.maxUnavailable) && (type(self.maxSurge) == int ? self.maxSurge == 0 : self.maxSurge == '0%') && (type(self.maxUnavailable) == int ? self.maxUnavailable == 0 : self.maxUnavailable == '0%'))",
    "message": "maxSurge and maxUnavailable must not both be zero"
}]))]
pub struct RollingUpdate {
    /// Machines that may exist above replicas during the rollout (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": PERCENT_RULE, "message": "must be a non-negative integer or a percentage from 0% to 100%"}]))]
    pub max_surge: Option<IntOrString>,
    /// Machines that may be unavailable below replicas during the rollout (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": PERCENT_RULE, "message": "must be a non-negative integer or a percentage from 0% to 100%"}]))]
    pub max_unavailable: Option<IntOrString>,
    /// Which Machines go first when scaling down: Random (default), Newest, Oldest. Machines annotated
    /// berth.dev/delete-machine and unhealthy ones always go first.
    #[serde(default)]
    pub delete_policy: DeletePolicy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletePolicy {
    #[default]
    Random,
    Newest,
    Oldest,
}

/// Voluntary-disruption limits of a group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionSpec {
    /// Budgets; the most restrictive active one applies. None: one node at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<DisruptionBudget>,
}

/// How many nodes may be disrupted at once, optionally only during a schedule window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.schedule) == has(self.duration)", "message": "schedule and duration go together"}]))]
pub struct DisruptionBudget {
    /// A number or a percentage of the group's nodes (for example 1 or 10%).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": PERCENT_RULE, "message": "must be a non-negative integer or a percentage from 0% to 100%"}]))]
    pub nodes: IntOrString,
    /// A cron schedule (UTC, five fields) when the window opens; unset: always active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// How long the window stays open after each schedule time (a Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::DURATION_PATTERN))]
    pub duration: Option<String>,
}

/// A group's health check, in the shape of Cluster API's MachineHealthCheck, scoped to the group it is declared on.
///
/// A Machine whose Node was once Ready is unhealthy when one of `unhealthyNodeConditions` has held for its timeout,
/// or when its Node has been missing for `nodeMissingTimeout`. Unhealthy Machines are remediated (marked
/// `HealthCheckSucceeded=False`, drained, terminated, replaced) only while no more than `maxUnhealthy` of the group
/// are unhealthy at once, and never while the cluster's own heartbeats or berth's view of the cluster are stale.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Node conditions that make a Machine unhealthy once they have held for their timeout. Unset: Ready=False for
    /// 5m and Ready=Unknown for 5m. An empty list checks no condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_node_conditions: Option<Vec<UnhealthyNodeCondition>>,
    /// How long a launched Machine's Node may take to register and turn Ready before the Machine fails and is
    /// replaced. Unset: the MachineClass's nodeStartupTimeout (default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::DURATION_PATTERN))]
    pub node_startup_timeout: Option<String>,
    /// How long the Node of a Machine that was Running may be missing before the Machine is unhealthy (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::DURATION_PATTERN))]
    pub node_missing_timeout: Option<String>,
    /// While more of the group's Machines than this are unhealthy at once, none is remediated: so many failing
    /// together points at something a new machine would not fix. A count or a percentage of the group's Machines
    /// (default 40%; a percentage allows at least one; 0 turns remediation off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": PERCENT_RULE, "message": "must be a non-negative integer or a percentage from 0% to 100%"}]))]
    pub max_unhealthy: Option<IntOrString>,
    /// How long the drain of a remediated Machine may take before its instance is terminated with pods left
    /// (default 5m). Evictions from an unreachable node cannot complete gracefully: pods whose deletion has begun
    /// are not waited for, and PodDisruptionBudgets are honoured only until this timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::common::DURATION_PATTERN))]
    pub drain_timeout: Option<String>,
}

/// A node condition that, held for `timeout`, makes its Machine unhealthy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnhealthyNodeCondition {
    /// The condition's type (Ready, MemoryPressure, a node-problem-detector condition, ...).
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub type_: String,
    /// The status that is unhealthy: True, False or Unknown.
    pub status: crate::api::common::ConditionStatus,
    /// How long the condition must hold (a Go duration, such as 5m).
    #[schemars(regex(pattern = super::common::DURATION_PATTERN))]
    pub timeout: String,
}

/// The observed state of the group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentStatus {
    /// Machines of all revisions, those being deleted included.
    #[serde(default)]
    pub replicas: u32,
    /// Machines of the current template revision.
    #[serde(default)]
    pub updated_replicas: u32,
    /// Machines whose Node is Ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Machines Ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: u32,
    /// replicas minus availableReplicas.
    #[serde(default)]
    pub unavailable_replicas: u32,
    /// The label selector in string form, for the scale subresource (and HPA-style tooling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Running, ScalingUp, ScalingDown, RollingOut, Paused or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The current template revision number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// When the rollout last made progress (a MachineSet's replica counts changed); measured against
    /// progressDeadlineSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_time: Option<Time>,
    /// Available, Progressing, ScalingLimited, Valid; RemediationAllowed once the health check has held remediation
    /// (absent means allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
