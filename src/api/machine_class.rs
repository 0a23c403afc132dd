//! `MachineClass`: how to launch an instance on EC2 (image, instance-type requirements, capacity types, network,
//! bootstrap, storage). Cluster-scoped and shared by node groups, like Karpenter's EC2NodeClass.

use super::common::{Condition, Range, DURATION_PATTERN, QUANTITY_PATTERN};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How berth launches an EC2 instance for a Machine.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "MachineClass",
    plural = "machineclasses",
    shortname = "mc",
    category = "berth",
    status = "MachineClassStatus",
    doc = "How to launch an EC2 instance: image, instance-type requirements, capacity types, network, bootstrap, storage.",
    printcolumn(name = "Family", type_ = "string", json_path = ".spec.image.family"),
    printcolumn(name = "Capacity", type_ = "string", json_path = ".spec.capacityTypes"),
    printcolumn(
        name = "Types",
        type_ = "integer",
        json_path = ".status.instanceTypeCount"
    ),
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
pub struct MachineClassSpec {
    /// The machine image.
    pub image: ImageSpec,
    /// Which instance types machines of this class may be.
    #[serde(default)]
    pub instance_requirements: InstanceRequirements,
    /// Capacity types to launch, most preferred first: spot, on-demand. Default: on-demand.
    #[serde(default = "default_capacity_types")]
    #[schemars(length(min = 1, max = 2))]
    pub capacity_types: Vec<CapacityTypeSpec>,
    /// When spot capacity is unavailable for every allowed type, launch on-demand instead.
    #[serde(default)]
    pub spot_fallback_to_on_demand: bool,
    /// The subnets to launch into (one zone each); the zones of these subnets are the zones the class offers.
    pub subnets: ResourceSelector,
    /// The security groups of the instances.
    pub security_groups: ResourceSelector,
    /// The IAM instance profile name the nodes run with.
    #[schemars(length(min = 1))]
    pub instance_profile: String,
    /// Extra user data. For AL2023 it is merged as a further MIME part after berth's NodeConfig; for Bottlerocket
    /// it is TOML merged after berth's settings; for Custom it is the whole template, rendered with
    /// {{clusterName}}, {{apiServerEndpoint}}, {{certificateAuthority}}, {{nodeLabels}}, {{nodeTaints}}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Block devices; the first is the root volume. Default: one 20Gi encrypted gp3 root volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_devices: Vec<BlockDevice>,
    /// Tags added to instances, volumes and launch templates (berth's own tags always win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Instance metadata service options. Default: IMDSv2 required, hop limit 1.
    #[serde(default)]
    pub metadata_options: MetadataOptions,
    /// How long a Node may take to register before its Machine is marked Failed and replaced (default 15m).
    #[serde(default = "fifteen_minutes")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub node_startup_timeout: String,
    /// How long a drain may take. Unset: no limit, the Machine waits for its pods to be evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drain_timeout: Option<String>,
    /// After drainTimeout, terminate the instance even though pods remain (PodDisruptionBudgets are then not
    /// honoured). Default false: keep waiting.
    #[serde(default)]
    pub terminate_after_drain_timeout: bool,
    /// berth removes a Machine's startupTaints from its Node once the Node is Ready, and only then counts the
    /// Machine Running. Set it when nothing on the node removes them. Default false: a node agent (a CNI, a GPU
    /// driver installer) removes them when it has done its work.
    #[serde(default)]
    pub remove_startup_taints_when_ready: bool,
    /// What berth does when EC2 recommends rebalancing a spot instance of this class away from its pool (an EC2
    /// Instance Rebalance Recommendation, often minutes before an interruption warning, sometimes with none).
    #[serde(default, skip_serializing_if = "RebalanceSpec::is_default")]
    pub rebalance: RebalanceSpec,
}

/// The answer to a rebalance recommendation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Ignore (the default: an Event and berth_interruptions_total, nothing more) or Replace: launch a replacement
    /// in another pool first, wait until it is Ready, then drain the recommended node, never more at once than the
    /// group's disruption budget allows.
    #[serde(default)]
    pub action: RebalanceAction,
    /// Replace only when the replacement costs at most this many percent more per hour than the node it replaces
    /// (default 0: never more). A recommendation is a risk, not a certainty; a spot interruption warning, when it
    /// comes, is acted on whatever the price.
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub max_price_increase_percent: u32,
}

impl RebalanceSpec {
    fn is_default(&self) -> bool {
        *self == RebalanceSpec::default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RebalanceAction {
    #[default]
    Ignore,
    Replace,
}

impl MachineClassSpec {
    /// The class's answer to a rebalance recommendation, for the pure interruption planner.
    pub fn rebalance_policy(&self) -> crate::interruption::RebalancePolicy {
        match self.rebalance.action {
            RebalanceAction::Ignore => crate::interruption::RebalancePolicy::Ignore,
            RebalanceAction::Replace => crate::interruption::RebalancePolicy::Replace,
        }
    }
}

fn default_capacity_types() -> Vec<CapacityTypeSpec> {
    vec![CapacityTypeSpec::OnDemand]
}

fn fifteen_minutes() -> String {
    "15m".into()
}

/// The machine image: an AMI id, or a selector resolved to the newest matching image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.id) != has(self.selector)", "message": "set exactly one of image.id and image.selector"}]))]
pub struct ImageSpec {
    /// How the image bootstraps: AL2023 (nodeadm), Bottlerocket, or Custom (userData is the whole template).
    #[serde(default)]
    pub family: ImageFamily,
    /// An AMI id (ami-...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ami-[0-9a-f]+$"))]
    pub id: Option<String>,
    /// Find the newest AMI matching all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<ImageSelector>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImageFamily {
    #[default]
    AL2023,
    Bottlerocket,
    Custom,
}

/// DescribeImages filters; the newest image matching all of them wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSelector {
    /// Image name, wildcards allowed (for example amazon-eks-node-al2023-x86_64-standard-1.33-*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Owner account id or alias (amazon, self).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Tags the image must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Which instance types are allowed. Every field narrows the set; an empty object allows every current-generation,
/// non-metal, non-GPU type the zones offer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRequirements {
    /// Allowed families (m6i, c7g, ...). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<String>,
    /// Families never used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_families: Vec<String>,
    /// Allowed sizes (large, 2xlarge, ...). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<String>,
    /// Allowed instance types by name. Empty: any that the other fields allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<String>,
    /// Instance types never used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_instance_types: Vec<String>,
    /// Allowed vCPU counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<Range>,
    /// Allowed memory in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<Range>,
    /// Allowed architectures. Default: amd64.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<Architecture>,
    /// Allowed GPU counts. Default: none (types with GPUs are left out unless this allows them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Range>,
    /// Only current-generation types (default true).
    #[serde(default = "yes")]
    pub current_generation_only: bool,
    /// Allow bare-metal types (default false).
    #[serde(default)]
    pub allow_bare_metal: bool,
    /// Allow burstable (t-family) types (default true).
    #[serde(default = "yes")]
    pub allow_burstable: bool,
}

impl Default for InstanceRequirements {
    fn default() -> Self {
        InstanceRequirements {
            families: vec![],
            excluded_families: vec![],
            sizes: vec![],
            instance_types: vec![],
            excluded_instance_types: vec![],
            vcpu: None,
            memory_gib: None,
            architectures: default_architectures(),
            gpus: None,
            current_generation_only: true,
            allow_bare_metal: false,
            allow_burstable: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_architectures() -> Vec<Architecture> {
    vec![Architecture::Amd64]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Architecture {
    #[serde(rename = "amd64")]
    Amd64,
    #[serde(rename = "arm64")]
    Arm64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CapacityTypeSpec {
    #[serde(rename = "spot")]
    Spot,
    #[serde(rename = "on-demand")]
    OnDemand,
}

/// AWS resources chosen by id or by tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "(has(self.ids) && size(self.ids) > 0) || (has(self.tags) && size(self.tags) > 0)", "message": "set ids or tags"}]))]
pub struct ResourceSelector {
    /// Explicit ids (subnet-..., sg-...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Tags the resources must carry (all of them); a value of "*" matches any value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// An EBS volume attached at launch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDevice {
    /// The device name (/dev/xvda for the root volume of AL2023).
    pub device_name: String,
    /// Volume size (a quantity, such as 100Gi).
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub volume_size: String,
    /// gp3 (default), gp2, io1, io2, st1, sc1.
    #[serde(default = "gp3")]
    pub volume_type: String,
    /// Provisioned IOPS (gp3, io1, io2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// Throughput in MiB/s (gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u32>,
    /// Encrypt the volume (default true).
    #[serde(default = "yes")]
    pub encrypted: bool,
    /// The KMS key for encryption (default: the account's EBS key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Delete the volume with the instance (default true).
    #[serde(default = "yes")]
    pub delete_on_termination: bool,
}

fn gp3() -> String {
    "gp3".into()
}

/// Instance metadata service options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOptions {
    /// required (IMDSv2 only, the default) or optional.
    #[serde(default = "required")]
    #[schemars(regex(pattern = "^(required|optional)$"))]
    pub http_tokens: String,
    /// The PUT response hop limit (default 1, so pods cannot reach the node's credentials).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: u32,
    /// Whether the metadata endpoint is enabled (default true).
    #[serde(default = "yes")]
    pub http_endpoint_enabled: bool,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_tokens: required(),
            http_put_response_hop_limit: 1,
            http_endpoint_enabled: true,
        }
    }
}

fn required() -> String {
    "required".into()
}
fn one() -> u32 {
    1
}

/// What berth resolved from the class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineClassStatus {
    /// The AMI the selector resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Resolved subnets and their zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<ResolvedSubnet>,
    /// Resolved security group ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// How many instance types the requirements allow in the resolved zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type_count: Option<u32>,
    /// Ready (image, subnets, security groups resolved and some instance type allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A subnet and the zone it is in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSubnet {
    /// The subnet id.
    pub id: String,
    /// Its availability zone.
    pub zone: String,
}
