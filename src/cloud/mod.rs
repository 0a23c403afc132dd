//! Cloud providers: where Machines become instances.
//!
//! [`CloudProvider`] is the one interface the controllers use to launch, find and terminate instances, to read the
//! instance-type catalog with its offerings and prices, and to drive Auto Scaling groups as node groups. Two
//! implementations: [`aws::AwsCloud`] (EC2 and Auto Scaling through the AWS SDK) and [`sim::SimulatedCloud`] (in
//! memory, for the emulator, simulations, benchmarks and error-path tests).
//!
//! The launch inputs here are plain data, independent of the CRD types, so the machine controller maps a
//! MachineClass and a Machine onto a [`LaunchRequest`] and this module never depends on `api`.

pub mod action;
pub mod aws;
pub mod bootstrap;
pub mod clock;
pub mod error;
pub mod launch_plan;
pub mod launcher;
pub mod metrics;
pub mod queue;
pub mod rate_limit;
pub mod resolve;
pub mod retry;
pub mod sim;
pub mod unavailable;

use crate::model::instance_type::{CapacityType, Catalog};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use bootstrap::{Bootstrap, BootstrapFormat};
pub use error::{CloudError, OfferingFailure};
pub use unavailable::UnavailableOfferings;

/// Tag keys berth writes on everything it launches, and reads to find what it owns.
pub mod tags {
    /// The cluster an instance belongs to; only instances carrying this cluster's value are ever terminated.
    pub const CLUSTER: &str = "berth.dev/cluster";
    /// Present (value `true`) on every resource berth created.
    pub const MANAGED: &str = "berth.dev/managed";
    pub const MACHINE_NAMESPACE: &str = "berth.dev/machine-namespace";
    pub const MACHINE_NAME: &str = "berth.dev/machine";
    /// The Machine's uid: lets a restarted controller adopt an instance its Machine has not recorded yet.
    pub const MACHINE_UID: &str = "berth.dev/machine-uid";
    pub const MACHINE_DEPLOYMENT: &str = "berth.dev/machine-deployment";
    pub const MACHINE_CLASS: &str = "berth.dev/machine-class";
    pub const MACHINE_CLASS_REVISION: &str = "berth.dev/machine-class-revision";
    /// Launch-template key: a hash of everything the template holds.
    pub const LAUNCH_TEMPLATE_KEY: &str = "berth.dev/launch-template-key";
    /// Auto Scaling groups berth may scale carry `berth.dev/enabled=true` and `berth.dev/cluster=<name>`.
    pub const ASG_ENABLED: &str = "berth.dev/enabled";
    /// The conventional Name tag.
    pub const NAME: &str = "Name";
}

/// The Machine an instance is launched for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MachineRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// The MachineClass revision a launch template is made for (templates of revisions no longer live are deleted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassRevision {
    pub name: String,
    pub revision: String,
}

/// Which AMI to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSpec {
    /// An AMI id (`ami-...`).
    Id(String),
    /// DescribeImages filters; among the matches for the instance's architecture the newest wins.
    Selector(ImageSelector),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSelector {
    /// Owner account ids or aliases (`amazon`, `self`); empty = any owner.
    pub owners: Vec<String>,
    /// Image name, `*` and `?` wildcards allowed.
    pub name: Option<String>,
    /// Tags that must all match.
    pub tags: BTreeMap<String, String>,
}

/// Subnets or security groups, by id or by tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSelector {
    Ids(Vec<String>),
    /// All tags must match; `*` as a value means "the key is present".
    Tags(BTreeMap<String, String>),
}

/// One candidate instance type, in the order of preference, with the zones it may be launched in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeChoice {
    pub name: String,
    /// Allowed zones; empty = every zone of the selected subnets.
    pub zones: Vec<String>,
}

impl InstanceTypeChoice {
    pub fn new(name: impl Into<String>) -> InstanceTypeChoice {
        InstanceTypeChoice {
            name: name.into(),
            zones: Vec::new(),
        }
    }

    pub fn allows_zone(&self, zone: &str) -> bool {
        self.zones.is_empty() || self.zones.iter().any(|z| z == zone)
    }
}

/// An EBS volume of the launch template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub device_name: String,
    pub volume_size_gib: u32,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    /// Encrypted unless the class says otherwise.
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub delete_on_termination: bool,
}

impl BlockDevice {
    /// The root volume used when a class names none: 20 GiB gp3, encrypted.
    pub fn default_root() -> BlockDevice {
        BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_size_gib: 20,
            volume_type: "gp3".into(),
            iops: None,
            throughput: None,
            encrypted: true,
            kms_key_id: None,
            delete_on_termination: true,
        }
    }
}

/// Instance metadata service options; the default requires IMDSv2 tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataOptions {
    pub http_endpoint_enabled: bool,
    /// `required` = IMDSv2 only.
    pub http_tokens_required: bool,
    /// 1 keeps pods (one hop further away) off the node's credentials; 2 lets them in.
    pub http_put_response_hop_limit: u32,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_endpoint_enabled: true,
            http_tokens_required: true,
            http_put_response_hop_limit: 1,
        }
    }
}

/// Everything needed to launch one instance for one Machine.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRequest {
    pub machine: MachineRef,
    pub deployment: Option<String>,
    pub cluster_name: String,
    pub class: ClassRevision,
    /// Candidates in the order of preference; at least one.
    pub instance_types: Vec<InstanceTypeChoice>,
    /// Capacity types allowed, tried spot first when both are given.
    pub capacity_types: Vec<CapacityType>,
    /// When spot is allowed and every spot offering fails, try on-demand (only if on-demand is not already in
    /// `capacity_types`, this adds it for the fallback).
    pub fallback_to_on_demand: bool,
    pub image: ImageSpec,
    pub subnets: ResourceSelector,
    pub security_groups: ResourceSelector,
    /// Instance profile name or ARN.
    pub instance_profile: Option<String>,
    pub bootstrap: Bootstrap,
    /// Empty = [`BlockDevice::default_root`].
    pub block_devices: Vec<BlockDevice>,
    /// The class's extra tags (berth's own tag keys win over them).
    pub tags: BTreeMap<String, String>,
    pub metadata_options: MetadataOptions,
    /// Launch attempt of this Machine, part of the client token. The controller keeps it in the Machine status and
    /// increases it only after a launch that definitely started nothing (errors whose
    /// [`CloudError::launch_may_have_happened`] is false), so a retry after a timeout or a restart reuses the token
    /// and EC2 returns the instance it already launched instead of launching a second one.
    pub attempt: u32,
}

impl LaunchRequest {
    /// The capacity types in the order they are tried: spot first, then on-demand (if allowed or as fallback).
    pub fn capacity_type_order(&self) -> Vec<CapacityType> {
        let mut order = Vec::new();
        if self.capacity_types.contains(&CapacityType::Spot) {
            order.push(CapacityType::Spot);
        }
        let on_demand_allowed = self.capacity_types.contains(&CapacityType::OnDemand)
            || (self.fallback_to_on_demand && self.capacity_types.contains(&CapacityType::Spot));
        if on_demand_allowed {
            order.push(CapacityType::OnDemand);
        }
        order
    }
}

/// The tags every instance and volume launched for `request` carries (the class's tags, then berth's).
pub fn instance_tags(request: &LaunchRequest) -> BTreeMap<String, String> {
    let mut t = request.tags.clone();
    t.insert(tags::CLUSTER.into(), request.cluster_name.clone());
    t.insert(tags::MANAGED.into(), "true".into());
    t.insert(
        tags::MACHINE_NAMESPACE.into(),
        request.machine.namespace.clone(),
    );
    t.insert(tags::MACHINE_NAME.into(), request.machine.name.clone());
    t.insert(tags::MACHINE_UID.into(), request.machine.uid.clone());
    t.insert(tags::MACHINE_CLASS.into(), request.class.name.clone());
    if let Some(d) = &request.deployment {
        t.insert(tags::MACHINE_DEPLOYMENT.into(), d.clone());
    }
    t.entry(tags::NAME.into())
        .or_insert_with(|| format!("{}/{}", request.machine.namespace, request.machine.name));
    t
}

/// Where and how an instance type can be bought.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OfferingKey {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
}

impl std::fmt::Display for OfferingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.instance_type, self.zone, self.capacity_type
        )
    }
}

/// An instance a launch produced.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchedInstance {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    pub region: String,
    pub capacity_type: CapacityType,
    pub image_id: String,
    pub subnet_id: Option<String>,
    pub launch_time: DateTime<Utc>,
}

impl LaunchedInstance {
    /// `aws:///<zone>/<instance-id>`, what the Node's spec.providerID will say.
    pub fn provider_id(&self) -> String {
        provider_id(&self.zone, &self.instance_id)
    }
}

pub fn provider_id(zone: &str, instance_id: &str) -> String {
    format!("aws:///{zone}/{instance_id}")
}

/// The result of a successful launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOutcome {
    pub instance: LaunchedInstance,
    /// Offerings that failed on the way (partial fleet errors, spot before the on-demand fallback); they are now in
    /// the unavailable-offerings cache.
    pub failed_offerings: Vec<OfferingFailure>,
    /// True when spot was tried, failed, and on-demand succeeded.
    pub fell_back_to_on_demand: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub fn parse(s: &str) -> Option<InstanceState> {
        Some(match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    /// Gone or on its way out.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

/// An instance as DescribeInstances reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub state: InstanceState,
    pub image_id: String,
    pub private_dns_name: Option<String>,
    pub launch_time: Option<DateTime<Utc>>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    pub fn provider_id(&self) -> String {
        provider_id(&self.zone, &self.instance_id)
    }

    /// The Machine the instance was launched for, from its tags.
    pub fn machine(&self) -> Option<MachineRef> {
        Some(MachineRef {
            uid: self.tags.get(tags::MACHINE_UID)?.clone(),
            namespace: self.tags.get(tags::MACHINE_NAMESPACE)?.clone(),
            name: self.tags.get(tags::MACHINE_NAME)?.clone(),
        })
    }
}

/// What a terminate call did with each id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminateOutcome {
    /// Now shutting down (or already were).
    pub terminating: Vec<String>,
    /// Already terminated.
    pub already_terminated: Vec<String>,
    /// Not found with this cluster's tag: either gone or not berth's; left alone.
    pub not_owned_or_missing: Vec<String>,
}

/// What EC2 answers about one instance id when asked by id, whatever the instance's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceLookup {
    /// EC2 knows the instance (terminated ones stay visible for about an hour).
    Found(InstanceState),
    /// EC2 answered that no such instance exists (`InvalidInstanceID.NotFound`): a positive observation that it is
    /// gone, unlike an instance missing from a tag-filtered listing.
    NotFound,
}

impl InstanceLookup {
    /// Terminated, or unknown to EC2.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceLookup::NotFound | InstanceLookup::Found(InstanceState::Terminated)
        )
    }
}

/// An Auto Scaling group berth may scale.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGroup {
    pub name: String,
    pub min_size: u32,
    pub max_size: u32,
    pub desired_capacity: u32,
    /// From the launch template, or every override of the mixed-instances policy.
    pub instance_types: Vec<String>,
    pub zones: Vec<String>,
    pub instances: Vec<NodeGroupInstance>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupInstance {
    pub instance_id: String,
    pub instance_type: Option<String>,
    pub zone: String,
    /// Auto Scaling lifecycle state (`InService`, `Pending`, `Terminating`, ...).
    pub lifecycle_state: String,
}

/// The operations berth needs from a cloud.
#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// A short name for logs and metrics (`aws`, `sim`).
    fn name(&self) -> &'static str;

    /// The region the provider acts in (its zones start with it): a provider ID in another region's zone is not
    /// this provider's to judge.
    fn region(&self) -> &str;

    /// Launches one instance for one Machine. Idempotent per (machine uid, attempt, parameters).
    async fn launch(&self, request: &LaunchRequest) -> Result<LaunchOutcome, CloudError>;

    /// Terminates the given instances, but only those tagged for this cluster.
    async fn terminate(&self, instance_ids: &[String]) -> Result<TerminateOutcome, CloudError>;

    /// Every instance tagged for this cluster and not terminated.
    async fn describe_instances(&self) -> Result<Vec<Instance>, CloudError>;

    /// What EC2 says about each of `instance_ids`, whatever their tags (batched). An id missing from the answer got
    /// no usable answer (a malformed id, say): never take that for "gone".
    async fn lookup_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<BTreeMap<String, InstanceLookup>, CloudError>;

    /// Instance types with their offerings and prices; offerings in the unavailable cache are marked unavailable.
    async fn instance_types(&self) -> Result<Arc<Catalog>, CloudError>;

    /// The insufficient-capacity cache the planner consults (also applied to [`CloudProvider::instance_types`]).
    fn unavailable_offerings(&self) -> &UnavailableOfferings;

    /// Auto Scaling groups tagged `berth.dev/enabled=true` and `berth.dev/cluster=<this cluster>`.
    async fn node_groups(&self) -> Result<Vec<NodeGroup>, CloudError>;

    /// Sets a discovered group's desired capacity (must be within its min and max).
    async fn set_node_group_desired_capacity(
        &self,
        group: &str,
        desired: u32,
    ) -> Result<(), CloudError>;

    /// Terminates one instance of a discovered group and decrements its desired capacity.
    async fn terminate_node_group_instance(
        &self,
        group: &str,
        instance_id: &str,
    ) -> Result<(), CloudError>;

    /// Deletes the launch templates berth made for class revisions not in `live` and created before
    /// `created_before` (a template made for a launch in flight may name a revision the caller did not see yet);
    /// a no-op for clouds without them.
    async fn garbage_collect_launch_templates(
        &self,
        live: &[ClassRevision],
        created_before: DateTime<Utc>,
    ) -> Result<usize, CloudError>;

    /// Opens the interruption queue `queue` (a name or a URL), checking that it exists and may be read.
    async fn interruption_queue(
        &self,
        queue: &str,
    ) -> Result<Arc<dyn queue::InterruptionQueue>, queue::QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_type_order_spot_first_with_fallback() {
        let mut r = sim::fixtures::request("m-1");
        r.capacity_types = vec![CapacityType::Spot];
        r.fallback_to_on_demand = false;
        assert_eq!(r.capacity_type_order(), vec![CapacityType::Spot]);
        r.fallback_to_on_demand = true;
        assert_eq!(
            r.capacity_type_order(),
            vec![CapacityType::Spot, CapacityType::OnDemand]
        );
        r.capacity_types = vec![CapacityType::OnDemand, CapacityType::Spot];
        r.fallback_to_on_demand = false;
        assert_eq!(
            r.capacity_type_order(),
            vec![CapacityType::Spot, CapacityType::OnDemand]
        );
        r.capacity_types = vec![CapacityType::OnDemand];
        assert_eq!(r.capacity_type_order(), vec![CapacityType::OnDemand]);
    }

    #[test]
    fn berth_tags_win_over_class_tags() {
        let mut r = sim::fixtures::request("m-1");
        r.tags.insert(tags::CLUSTER.into(), "evil".into());
        r.tags.insert("team".into(), "a".into());
        let t = instance_tags(&r);
        assert_eq!(t[tags::CLUSTER], "test-cluster");
        assert_eq!(t["team"], "a");
        assert_eq!(t[tags::MANAGED], "true");
        assert_eq!(t[tags::MACHINE_NAME], "m-1");
        assert_eq!(t[tags::MACHINE_DEPLOYMENT], "web");
    }
}
