//! `Cluster`: this cluster's fleet policy. One per cluster (berth acts on the one its `--cluster` flag names).

use super::common::{Condition, DURATION_PATTERN, QUANTITY_PATTERN};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The fleet policy of one Kubernetes cluster: how nodes join it, how large it may grow, how berth chooses
/// between node groups, when it scales down, and how much spare capacity it keeps.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Cluster",
    plural = "clusters",
    shortname = "bcl",
    category = "berth",
    status = "ClusterStatus",
    doc = "The fleet policy of one Kubernetes cluster: bootstrap endpoint, global limits, expander, scale-down and headroom.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(name = "Cost/h", type_ = "string", json_path = ".status.hourlyCost"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The cluster's name as EKS knows it. It is written into every instance's tags (berth.dev/cluster) and into
    /// the nodes' bootstrap configuration.
    #[schemars(length(min = 1, max = 100))]
    pub cluster_name: String,
    /// The AWS region (defaults to the controller's --region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The API server endpoint nodes join (https://...).
    #[schemars(regex(pattern = r"^https?://"))]
    pub api_server_endpoint: String,
    /// The cluster's certificate authority, base64-encoded PEM, given to nodes at bootstrap.
    #[serde(default)]
    pub certificate_authority: String,
    /// The service CIDR (nodeadm requires it; for example 10.100.0.0/16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// Global limits on the capacity berth manages.
    #[serde(default)]
    pub limits: ClusterLimits,
    /// How berth chooses among node groups that could all host the pending pods.
    #[serde(default)]
    pub expander: Expander,
    /// When and how berth removes capacity.
    #[serde(default)]
    pub scale_down: ScaleDownPolicy,
    /// Spare capacity kept across the cluster, so bursts land without waiting for machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<ClusterHeadroom>,
    /// The SQS queue (a name in berth's account and region, or a queue URL) that EventBridge feeds with EC2 spot
    /// interruption warnings, rebalance recommendations, AWS Health scheduled changes and instance state changes
    /// (deploy/interruption-queue.yaml creates both). berth drains an interrupted node within EC2's two-minute
    /// warning and launches its replacement at once. Overrides berth run --interruption-queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub interruption_queue: Option<String>,
}

/// Global limits. A scale-up that would cross one is refused with an Event naming the limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterLimits {
    /// The most nodes berth will have at once, across all groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<u32>,
    /// The most cpu (a quantity, such as 1000) across the nodes berth manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub max_cpu: Option<String>,
    /// The most memory (a quantity, such as 4Ti) across the nodes berth manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub max_memory: Option<String>,
}

/// The strategy for choosing among node groups that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Expander {
    /// The lowest hourly price for the pods placed (the default).
    #[default]
    Cheapest,
    /// The least idle cpu and memory left on the new nodes.
    LeastWaste,
    /// The group with the highest spec.autoscaling.priority, then the cheapest.
    Priority,
    /// A random group among those that fit (seeded, for reproducible simulations).
    Random,
}

/// Scale-down and consolidation policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownPolicy {
    /// Whether berth removes capacity at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether berth replaces nodes with cheaper ones (single- and multi-node consolidation).
    #[serde(default = "yes")]
    pub consolidation: bool,
    /// How long after a scale-up berth waits before scaling down (default 10m).
    #[serde(default = "ten_minutes")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub delay_after_scale_up: String,
    /// How long a node must be underutilized before it is removed (default 10m).
    #[serde(default = "ten_minutes")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub unneeded_time: String,
    /// A node whose requested cpu and memory are both below this percentage of allocatable is underutilized.
    #[serde(default = "fifty")]
    #[schemars(range(min = 1, max = 100))]
    pub utilization_threshold_percent: u32,
    /// Nodes younger than this are never disrupted (default 5m).
    #[serde(default = "five_minutes")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub min_node_age: String,
    /// Whether nodes running kube-system pods that no PodDisruptionBudget covers are kept.
    #[serde(default = "yes")]
    pub skip_nodes_with_system_pods: bool,
    /// Whether nodes running pods that no controller owns are kept.
    #[serde(default = "yes")]
    pub skip_nodes_with_unowned_pods: bool,
}

impl Default for ScaleDownPolicy {
    fn default() -> Self {
        ScaleDownPolicy {
            enabled: true,
            consolidation: true,
            delay_after_scale_up: ten_minutes(),
            unneeded_time: ten_minutes(),
            utilization_threshold_percent: 50,
            min_node_age: five_minutes(),
            skip_nodes_with_system_pods: true,
            skip_nodes_with_unowned_pods: true,
        }
    }
}

fn yes() -> bool {
    true
}
fn fifty() -> u32 {
    50
}
fn ten_minutes() -> String {
    "10m".into()
}
fn five_minutes() -> String {
    "5m".into()
}

/// Spare capacity as a share of the cluster's allocatable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterHeadroom {
    /// Keep this percentage of the cluster's allocatable cpu and memory unrequested.
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
}

/// What berth observed about the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Nodes berth manages.
    #[serde(default)]
    pub nodes: u32,
    /// Their summed hourly price in USD, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_cost: Option<String>,
    /// Ready (the spec is valid and berth acts on it), LimitReached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
