//! The simulated cloud: [`CloudProvider`] in memory, for the emulator, `berth simulate`, benchmarks and the tests of
//! every error path.
//!
//! It behaves like EC2 where berth can tell: the same launch sequence as the AWS provider ([`launcher::execute`]),
//! client tokens with EC2's idempotency rules, EC2's token buckets on the server side (calls beyond them answer
//! RequestLimitExceeded, as EC2 does) behind the same client-side rate limiter berth uses against AWS, per-offering
//! capacity limits, a boot delay, and faults scripted per test (insufficient capacity, throttling, server errors,
//! slow calls, instances that never join). Every call is recorded. Instance lifecycle is published on a broadcast
//! channel ([`SimInstanceEvent`]) that the emulator's simulated kubelets follow.
//!
//! Time: waits use tokio time (tests may pause it); timestamps come from the injected clock.

use crate::cloud::action::{Action, BucketSize};
use crate::cloud::bootstrap::BootstrapError;
use crate::cloud::clock::SharedClock;
use crate::cloud::error::{CloudError, OfferingFailure};
use crate::cloud::launch_plan::{plan_launch, SubnetInfo};
use crate::cloud::launcher::{
    self, FleetApi, FleetCall, FleetResponse, LaunchTemplateSpec, RunCall,
};
use crate::cloud::metrics::CloudMetrics;
use crate::cloud::queue::{InterruptionQueue, MemoryQueue, QueueError};
use crate::cloud::rate_limit::RateLimits;
use crate::cloud::resolve::{newest_image, tags_match, wildcard_match, ImageInfo};
use crate::cloud::retry::{ApiCaller, Backoff, Failure};
use crate::cloud::unavailable::{UnavailableOfferings, DEFAULT_TTL};
use crate::cloud::{
    tags, ClassRevision, CloudProvider, ImageSpec, Instance, InstanceLookup, InstanceState,
    LaunchOutcome, LaunchRequest, LaunchedInstance, MachineRef, NodeGroup, NodeGroupInstance,
    OfferingKey, ResourceSelector, TerminateOutcome,
};
use crate::model::instance_type::{labels, Arch, CapacityType, Catalog};
use crate::model::taints::Taint;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSubnet {
    pub id: String,
    pub zone: String,
    pub available_ips: u32,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSecurityGroup {
    pub id: String,
    pub tags: BTreeMap<String, String>,
}

/// An Auto Scaling group of the simulated cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNodeGroup {
    pub name: String,
    pub min_size: u32,
    pub max_size: u32,
    pub desired_capacity: u32,
    pub instance_type: String,
    pub zones: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct SimConfig {
    pub region: String,
    pub cluster_name: String,
    pub catalog: Catalog,
    pub subnets: Vec<SimSubnet>,
    pub security_groups: Vec<SimSecurityGroup>,
    pub images: Vec<ImageInfo>,
    pub node_groups: Vec<SimNodeGroup>,
    /// From launch to the kubelet registering.
    pub boot_delay: Duration,
    /// From the kubelet registering to its Node turning Ready (zero: it registers Ready).
    pub ready_delay: Duration,
    /// Most instances alive at once per offering; offerings not listed are unlimited.
    pub capacity_limits: HashMap<OfferingKey, u32>,
    /// Enforce EC2's request and resource buckets on the server side.
    pub ec2_rate_limits: bool,
    /// Pace calls on the client side as the AWS provider does (off only to show what EC2 would do without it).
    pub client_rate_limits: bool,
    pub unavailable_ttl: chrono::Duration,
    pub backoff: Backoff,
    pub jitter_seed: u64,
    pub clock: SharedClock,
    pub metrics: CloudMetrics,
    pub event_capacity: usize,
    /// EC2's eventual consistency (none by default).
    pub consistency: Consistency,
    /// A share of every kind of call (0 to 1) answered with a server error or a throttle, chosen by
    /// `jitter_seed`: the chaos benchmark's cloud faults.
    pub error_share: f64,
}

/// EC2's eventual consistency, as its documentation describes it: a new instance may be missing from
/// DescribeInstances for a while (InvalidInstanceID.NotFound when asked by id), and a terminated one may still
/// show as it was. Each instance draws its own delays, up to these, from the seed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Consistency {
    pub launch_invisible_for: Duration,
    pub terminated_visible_for: Duration,
}

/// The tag the default subnets and security groups carry, with the cluster's name as value.
pub const DISCOVERY_TAG: &str = "berth.dev/discovery";

impl SimConfig {
    /// A region with one subnet per zone of the catalog (tagged `berth.dev/discovery=<cluster>`), one security group
    /// with the same tag, an AL2023-like image per architecture, EC2's rate limits, a 30 s boot delay.
    pub fn new(
        region: &str,
        cluster_name: &str,
        catalog: Catalog,
        clock: SharedClock,
        metrics: CloudMetrics,
    ) -> SimConfig {
        let zones: BTreeSet<String> = catalog
            .instance_types
            .iter()
            .flat_map(|t| t.offerings.iter().map(|o| o.zone.clone()))
            .collect();
        let discovery = BTreeMap::from([(DISCOVERY_TAG.to_string(), cluster_name.to_string())]);
        let subnets = zones
            .iter()
            .map(|z| SimSubnet {
                id: format!("subnet-{z}"),
                zone: z.clone(),
                available_ips: 8000,
                tags: discovery.clone(),
            })
            .collect();
        let images = [(Arch::Amd64, "x86_64"), (Arch::Arm64, "arm64")]
            .into_iter()
            .map(|(arch, name)| ImageInfo {
                id: format!("ami-sim-{name}"),
                name: format!("amazon-eks-node-al2023-{name}-standard-1.33-v20250101"),
                owner: "amazon".into(),
                arch: Some(arch),
                creation_date: "2025-01-01T00:00:00.000Z".into(),
                tags: BTreeMap::new(),
            })
            .collect();
        SimConfig {
            region: region.into(),
            cluster_name: cluster_name.into(),
            catalog,
            subnets,
            security_groups: vec![SimSecurityGroup {
                id: "sg-sim-nodes".into(),
                tags: discovery,
            }],
            images,
            node_groups: Vec::new(),
            boot_delay: Duration::from_secs(30),
            ready_delay: Duration::ZERO,
            capacity_limits: HashMap::new(),
            ec2_rate_limits: true,
            client_rate_limits: true,
            unavailable_ttl: DEFAULT_TTL,
            backoff: Backoff::default(),
            jitter_seed: 1,
            clock,
            metrics,
            event_capacity: 16_384,
            consistency: Consistency::default(),
            error_share: 0.0,
        }
    }
}

impl SimConfig {
    /// [`SimConfig::new`] with the catalog bundled in the binary (instance types, zones, on-demand prices and
    /// deterministic synthetic spot prices of `region`).
    pub fn bundled(
        region: &str,
        cluster_name: &str,
        clock: SharedClock,
        metrics: CloudMetrics,
    ) -> Result<SimConfig, CloudError> {
        let catalog = crate::model::aws_catalog::bundled_catalog(region)
            .map_err(|e| CloudError::invalid(format!("bundled catalog: {e}")))?;
        Ok(SimConfig::new(
            region,
            cluster_name,
            catalog,
            clock,
            metrics,
        ))
    }
}

/// A fault the next matching calls run into.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Matching offerings have no capacity (a CreateFleet `Errors` entry, a RunInstances error). `None` matches any.
    InsufficientCapacity {
        instance_type: Option<String>,
        zone: Option<String>,
        capacity_type: Option<CapacityType>,
    },
    /// RequestLimitExceeded.
    Throttle { action: Action },
    /// HTTP 503 Unavailable.
    ServerError { action: Action },
    /// Any error code.
    ApiError {
        action: Action,
        code: String,
        message: String,
    },
    /// The call takes this long before it is served.
    SlowCall { action: Action, delay: Duration },
    /// The instance launches but its kubelet never joins the cluster.
    BootFailure,
}

impl Fault {
    fn action(&self) -> Option<Action> {
        match self {
            Fault::Throttle { action }
            | Fault::ServerError { action }
            | Fault::ApiError { action, .. } => Some(*action),
            Fault::SlowCall { action, .. } => Some(*action),
            Fault::InsufficientCapacity { .. } | Fault::BootFailure => None,
        }
    }

    fn matches_offering(&self, o: &OfferingKey) -> bool {
        match self {
            Fault::InsufficientCapacity {
                instance_type,
                zone,
                capacity_type,
            } => {
                instance_type.as_ref().is_none_or(|t| *t == o.instance_type)
                    && zone.as_ref().is_none_or(|z| *z == o.zone)
                    && capacity_type.is_none_or(|c| c == o.capacity_type)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct ScriptedFault {
    fault: Fault,
    /// None = every time.
    remaining: Option<u32>,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCall {
    pub action: Action,
    pub at: DateTime<Utc>,
    /// What the call asked for (client token, overrides, ids), for assertions.
    pub detail: String,
    /// `ok` or the error code answered.
    pub result: String,
}

/// An instance started: what a simulated kubelet needs to register its Node.
#[derive(Debug, Clone, PartialEq)]
pub struct SimInstanceLaunched {
    pub instance_id: String,
    pub provider_id: String,
    pub private_dns_name: String,
    pub instance_type: String,
    pub zone: String,
    pub region: String,
    pub capacity_type: CapacityType,
    pub arch: Arch,
    /// The Node's labels: well-known ones and the Machine's from the bootstrap.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Resource name → quantity string (`cpu` → `2`, `memory` → `7577Mi`, ...).
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
    /// How long after this event the kubelet registers.
    pub boot_delay: Duration,
    /// How long after registering the Node turns Ready.
    pub ready_delay: Duration,
    /// False when a BootFailure fault hit it: the instance runs but never becomes a Node.
    pub joins_cluster: bool,
    pub machine: Option<MachineRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimInstanceEvent {
    Launched(Box<SimInstanceLaunched>),
    Terminated {
        instance_id: String,
        provider_id: String,
    },
}

#[derive(Debug, Clone)]
struct SimInstance {
    instance: Instance,
    running_at: DateTime<Utc>,
    node_group: Option<String>,
    announced: bool,
    /// Before this, DescribeInstances does not show it (eventual consistency).
    visible_at: DateTime<Utc>,
    /// Once terminated: until when DescribeInstances still shows it, and in what state.
    shown_until: Option<(DateTime<Utc>, InstanceState)>,
}

/// EC2's discrete bucket: refilled once per whole second since the simulation began.
#[derive(Debug, Clone)]
struct ServerBucket {
    size: BucketSize,
    tokens: u32,
    second: u64,
}

impl ServerBucket {
    fn new(size: BucketSize) -> ServerBucket {
        ServerBucket {
            size,
            tokens: size.max,
            second: 0,
        }
    }

    fn take(&mut self, now_second: u64, n: u32) -> bool {
        if now_second > self.second {
            let refill =
                (now_second - self.second).saturating_mul(self.size.refill_per_second as u64);
            self.tokens = (self.tokens as u64 + refill).min(self.size.max as u64) as u32;
            self.second = now_second;
        }
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct TokenRecord {
    parameters: String,
    instance_ids: Vec<String>,
    errors: Vec<OfferingFailure>,
}

#[derive(Default)]
struct SimState {
    instances: BTreeMap<String, SimInstance>,
    next_id: u64,
    tokens: HashMap<String, TokenRecord>,
    launch_templates: BTreeMap<String, LaunchTemplateSpec>,
    /// When each launch template was created.
    launch_template_created: BTreeMap<String, DateTime<Utc>>,
    faults: Vec<ScriptedFault>,
    calls: Vec<SimCall>,
    request_buckets: HashMap<&'static str, ServerBucket>,
    resource_buckets: HashMap<&'static str, ServerBucket>,
    server_throttles: u64,
    node_groups: BTreeMap<String, SimNodeGroup>,
    error_rng: u64,
}

pub struct SimulatedCloud {
    config: SimConfig,
    caller: ApiCaller,
    unavailable: UnavailableOfferings,
    /// `config.catalog`, the one the cloud reads, shared with every reader of [`CloudProvider::instance_types`].
    catalog: Arc<Catalog>,
    state: Mutex<SimState>,
    events: broadcast::Sender<SimInstanceEvent>,
    origin: tokio::time::Instant,
    /// EC2's interruption events, as EventBridge would put them on the interruption queue (whatever its name).
    interruptions: Arc<MemoryQueue>,
}

impl SimulatedCloud {
    pub fn new(config: SimConfig) -> SimulatedCloud {
        let limits = if config.client_rate_limits {
            RateLimits::ec2_defaults(config.metrics.clone())
        } else {
            // Effectively unlimited: one call never waits.
            RateLimits::with_sizes(
                config.metrics.clone(),
                |_| BucketSize {
                    max: u32::MAX / 2,
                    refill_per_second: u32::MAX / 2,
                },
                |_| None,
            )
        };
        let caller = ApiCaller::new(
            limits,
            config.metrics.clone(),
            config.backoff,
            config.jitter_seed,
        );
        let unavailable = UnavailableOfferings::new(config.clock.clone(), config.unavailable_ttl);
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let mut state = SimState::default();
        for g in &config.node_groups {
            state.node_groups.insert(g.name.clone(), g.clone());
        }
        let cloud = SimulatedCloud {
            catalog: Arc::new(config.catalog.clone()),
            config,
            caller,
            unavailable,
            state: Mutex::new(state),
            events,
            origin: tokio::time::Instant::now(),
            interruptions: Arc::new(MemoryQueue::new("sim-interruptions")),
        };
        {
            let mut st = cloud.lock();
            let groups: Vec<SimNodeGroup> = st.node_groups.values().cloned().collect();
            for g in groups {
                cloud.reconcile_group(&mut st, &g.name);
            }
        }
        cloud
    }

    /// Lifecycle events of every instance launched or terminated from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SimInstanceEvent> {
        self.events.subscribe()
    }

    /// Scripts a fault for the next `times` matching calls (None = until [`SimulatedCloud::clear_faults`]).
    pub fn inject(&self, fault: Fault, times: Option<u32>) {
        self.lock().faults.push(ScriptedFault {
            fault,
            remaining: times,
        });
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<SimCall> {
        self.lock().calls.clone()
    }

    pub fn call_count(&self, action: Action) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .count()
    }

    /// Calls the server side answered with RequestLimitExceeded because EC2's bucket was empty.
    pub fn server_throttles(&self) -> u64 {
        self.lock().server_throttles
    }

    pub fn metrics(&self) -> &CloudMetrics {
        &self.config.metrics
    }

    /// Instances alive (not terminated), whatever their tags.
    pub fn live_instance_count(&self) -> usize {
        self.lock()
            .instances
            .values()
            .filter(|i| !i.instance.state.is_terminal())
            .count()
    }

    pub fn launch_template_names(&self) -> Vec<String> {
        self.lock().launch_templates.keys().cloned().collect()
    }

    /// Every instance ever started, terminated ones included, without an API call (for simulation reports).
    pub fn all_instances(&self) -> Vec<Instance> {
        self.lock()
            .instances
            .values()
            .map(|i| i.instance.clone())
            .collect()
    }

    /// EC2 reclaims a spot instance (a spot interruption): it terminates without any call from berth. Answers
    /// whether a live spot instance was reclaimed.
    pub fn interrupt(&self, instance_id: &str) -> bool {
        let mut st = self.lock();
        let live_spot = st.instances.get(instance_id).is_some_and(|i| {
            i.instance.capacity_type == CapacityType::Spot && !i.instance.state.is_terminal()
        });
        if live_spot {
            self.terminate_locked(&mut st, instance_id);
        }
        live_spot
    }

    /// EC2 warns that it will reclaim a spot instance in two minutes: the warning goes to the interruption queue; the
    /// caller reclaims it later with [`SimulatedCloud::interrupt`]. False when the instance is no live spot instance.
    pub fn warn_interruption(&self, instance_id: &str) -> bool {
        let live_spot = self.lock().instances.get(instance_id).is_some_and(|i| {
            i.instance.capacity_type == CapacityType::Spot && !i.instance.state.is_terminal()
        });
        if live_spot {
            self.interruptions
                .send(crate::interruption::events::spot_interruption_warning(
                    &self.config.region,
                    instance_id,
                    self.config.clock.now(),
                ));
        }
        live_spot
    }

    /// Puts any EventBridge event on the interruption queue (tests: rebalance recommendations, scheduled changes,
    /// malformed messages).
    pub fn send_interruption_event(&self, body: String) {
        self.interruptions.send(body);
    }

    /// The interruption queue itself (what is left in it, what was deleted).
    pub fn interruption_events(&self) -> &MemoryQueue {
        &self.interruptions
    }

    /// Adds an instance that is not berth's (another cluster's or hand-made), for ownership tests.
    pub fn add_foreign_instance(
        &self,
        instance_type: &str,
        zone: &str,
        tags: BTreeMap<String, String>,
    ) -> String {
        self.add_running_instance(instance_type, zone, "ami-foreign", tags)
    }

    /// Adds a running on-demand instance with these tags that no launch call of this cloud made, as a crashed
    /// launch leaves one behind (with berth's tags, for a Machine that never recorded it): what a garbage
    /// collector must find. It never joins the cluster (no kubelet event): a crash between the launch call and
    /// the Machine's status write would leave a Node too, but a Node without a Machine would also perturb
    /// scheduling, and the instance is what costs money and what the collector is for.
    pub fn add_stray_instance(
        &self,
        instance_type: &str,
        zone: &str,
        tags: BTreeMap<String, String>,
    ) -> String {
        self.add_running_instance(instance_type, zone, "ami-stray", tags)
    }

    fn add_running_instance(
        &self,
        instance_type: &str,
        zone: &str,
        image_id: &str,
        tags: BTreeMap<String, String>,
    ) -> String {
        let now = self.config.clock.now();
        let mut st = self.lock();
        let id = next_instance_id(&mut st);
        st.instances.insert(
            id.clone(),
            SimInstance {
                instance: Instance {
                    instance_id: id.clone(),
                    instance_type: instance_type.into(),
                    zone: zone.into(),
                    capacity_type: CapacityType::OnDemand,
                    state: InstanceState::Running,
                    image_id: image_id.into(),
                    private_dns_name: None,
                    launch_time: Some(now),
                    tags,
                },
                running_at: now,
                node_group: None,
                announced: true,
                visible_at: now,
                shown_until: None,
            },
        );
        id
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server side of one call: records it, applies scripted faults and EC2's buckets.
    async fn serve(&self, action: Action, instances: u32, detail: &str) -> Result<(), Failure> {
        let slow = {
            let mut st = self.lock();
            take_fault(
                &mut st,
                |f| matches!(f, Fault::SlowCall { action: a, .. } if *a == action),
            )
        };
        if let Some(Fault::SlowCall { delay, .. }) = slow {
            tokio::time::sleep(delay).await;
        }
        let now = self.config.clock.now();
        let second = self.origin.elapsed().as_secs();
        let mut st = self.lock();
        let fault = take_fault(&mut st, |f| {
            f.action() == Some(action) && !matches!(f, Fault::SlowCall { .. })
        });
        let fault = fault.or_else(|| self.random_error(&mut st, action));
        let failure = match fault {
            Some(Fault::Throttle { .. }) => Some(Failure::Throttled {
                code: "RequestLimitExceeded".into(),
                message: "Request limit exceeded.".into(),
            }),
            Some(Fault::ServerError { .. }) => Some(Failure::Server {
                status: 503,
                code: "Unavailable".into(),
                message: "The service is unavailable. Please try again shortly.".into(),
            }),
            Some(Fault::ApiError { code, message, .. }) => Some(Failure::Client {
                status: 400,
                code,
                message,
            }),
            _ => None,
        };
        let failure = failure.or_else(|| {
            if !self.config.ec2_rate_limits {
                return None;
            }
            let key = action.bucket_key();
            let request_ok = st
                .request_buckets
                .entry(key)
                .or_insert_with(|| ServerBucket::new(action.request_bucket()))
                .take(second, 1);
            let resource_ok = match action.resource_bucket() {
                Some(size) if request_ok => st
                    .resource_buckets
                    .entry(action.name())
                    .or_insert_with(|| ServerBucket::new(size))
                    .take(second, instances),
                _ => true,
            };
            if request_ok && resource_ok {
                None
            } else {
                st.server_throttles += 1;
                Some(Failure::Throttled {
                    code: "RequestLimitExceeded".into(),
                    message: "Request limit exceeded.".into(),
                })
            }
        });
        let result = failure
            .as_ref()
            .map_or_else(|| "ok".to_string(), |f| f.code().to_string());
        st.calls.push(SimCall {
            action,
            at: now,
            detail: detail.to_string(),
            result,
        });
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// With `error_share`: a throttle or a server error for this call, by the seeded generator.
    fn random_error(&self, st: &mut SimState, action: Action) -> Option<Fault> {
        if self.config.error_share <= 0.0 {
            return None;
        }
        let mut state = st.error_rng ^ self.config.jitter_seed;
        let roll = crate::fx::splitmix64(&mut state);
        st.error_rng = roll;
        let fraction = (roll >> 11) as f64 / (1u64 << 53) as f64;
        let fault = if roll & 1 == 0 {
            Fault::Throttle { action }
        } else {
            Fault::ServerError { action }
        };
        (fraction < self.config.error_share).then_some(fault)
    }

    async fn call<T>(
        &self,
        action: Action,
        instances: u32,
        detail: &str,
        body: impl Fn() -> Result<T, Failure>,
    ) -> Result<T, CloudError> {
        self.caller
            .call(action, instances, || async {
                self.serve(action, instances, detail).await?;
                body()
            })
            .await
            .map_err(|e| e.into_cloud_error())
    }

    fn resolve_ids_or_tags<'a, T>(
        &self,
        what: &str,
        selector: &ResourceSelector,
        items: &'a [T],
        id: impl Fn(&T) -> &str,
        item_tags: impl Fn(&T) -> &BTreeMap<String, String>,
    ) -> Result<Vec<&'a T>, CloudError> {
        match selector {
            ResourceSelector::Ids(ids) => {
                if ids.is_empty() {
                    return Err(CloudError::invalid(format!("the class names no {what}")));
                }
                ids.iter()
                    .map(|want| {
                        items.iter().find(|i| id(i) == want).ok_or_else(|| {
                            CloudError::invalid(format!("{what} {want} does not exist"))
                        })
                    })
                    .collect()
            }
            ResourceSelector::Tags(sel) => {
                let found: Vec<&T> = items
                    .iter()
                    .filter(|i| tags_match(sel, item_tags(i)))
                    .collect();
                if found.is_empty() {
                    return Err(CloudError::invalid(format!(
                        "no {what} matches the tag selector {sel:?}"
                    )));
                }
                Ok(found)
            }
        }
    }

    fn resolve_image(&self, spec: &ImageSpec, arch: Arch) -> Result<String, CloudError> {
        match spec {
            ImageSpec::Id(id) => {
                let img = self
                    .config
                    .images
                    .iter()
                    .find(|i| &i.id == id)
                    .ok_or_else(|| CloudError::invalid(format!("AMI {id} does not exist")))?;
                if img.arch != Some(arch) {
                    return Err(CloudError::invalid(format!(
                        "AMI {id} is {}, the instance types are {}",
                        img.arch.map_or("of unknown architecture", |a| a.as_str()),
                        arch.as_str()
                    )));
                }
                Ok(id.clone())
            }
            ImageSpec::Selector(sel) => {
                let matching: Vec<ImageInfo> = self
                    .config
                    .images
                    .iter()
                    .filter(|i| sel.owners.is_empty() || sel.owners.contains(&i.owner))
                    .filter(|i| sel.name.as_ref().is_none_or(|n| wildcard_match(n, &i.name)))
                    .filter(|i| tags_match(&sel.tags, &i.tags))
                    .cloned()
                    .collect();
                newest_image(&matching, arch)
                    .map(|i| i.id.clone())
                    .ok_or_else(|| {
                        CloudError::invalid(format!(
                            "no {} AMI matches the selector {sel:?}",
                            arch.as_str()
                        ))
                    })
            }
        }
    }

    fn capacity_left(&self, st: &SimState, o: &OfferingKey) -> bool {
        let Some(limit) = self.config.capacity_limits.get(o) else {
            return true;
        };
        let used = st
            .instances
            .values()
            .filter(|i| {
                !i.instance.state.is_terminal()
                    && i.instance.instance_type == o.instance_type
                    && i.instance.zone == o.zone
                    && i.instance.capacity_type == o.capacity_type
            })
            .count() as u32;
        used < *limit
    }

    /// Whether an offering can launch now; consumes an InsufficientCapacity fault when one matches.
    fn offering_fails(&self, st: &mut SimState, o: &OfferingKey) -> Option<OfferingFailure> {
        let faulted = take_fault(st, |f| f.matches_offering(o)).is_some();
        if faulted || !self.capacity_left(st, o) {
            return Some(OfferingFailure {
                offering: o.clone(),
                code: "InsufficientInstanceCapacity".into(),
                message: format!("We currently do not have sufficient {} capacity in the Availability Zone you requested ({}).", o.instance_type, o.zone),
            });
        }
        None
    }

    fn start_instance(
        &self,
        st: &mut SimState,
        o: &OfferingKey,
        image_id: &str,
        tags: BTreeMap<String, String>,
        group: Option<String>,
    ) -> LaunchedInstance {
        let now = self.config.clock.now();
        let id = next_instance_id(st);
        let n = st.next_id;
        let dns = format!(
            "ip-10-{}-{}-{}.ec2.internal",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let boot =
            chrono::Duration::from_std(self.config.boot_delay).unwrap_or(chrono::Duration::zero());
        st.instances.insert(
            id.clone(),
            SimInstance {
                instance: Instance {
                    instance_id: id.clone(),
                    instance_type: o.instance_type.clone(),
                    zone: o.zone.clone(),
                    capacity_type: o.capacity_type,
                    state: InstanceState::Pending,
                    image_id: image_id.into(),
                    private_dns_name: Some(dns),
                    launch_time: Some(now),
                    tags,
                },
                running_at: now + boot,
                node_group: group,
                announced: false,
                visible_at: now + self.lag(&id, self.config.consistency.launch_invisible_for),
                shown_until: None,
            },
        );
        LaunchedInstance {
            instance_id: id,
            instance_type: o.instance_type.clone(),
            zone: o.zone.clone(),
            region: self.config.region.clone(),
            capacity_type: o.capacity_type,
            image_id: image_id.into(),
            subnet_id: None,
            launch_time: now,
        }
    }

    fn launched_instance(&self, i: &Instance) -> LaunchedInstance {
        LaunchedInstance {
            instance_id: i.instance_id.clone(),
            instance_type: i.instance_type.clone(),
            zone: i.zone.clone(),
            region: self.config.region.clone(),
            capacity_type: i.capacity_type,
            image_id: i.image_id.clone(),
            subnet_id: None,
            launch_time: i.launch_time.unwrap_or_default(),
        }
    }

    /// Publishes the launch of an instance once.
    fn announce(
        &self,
        instance_id: &str,
        node_labels: &BTreeMap<String, String>,
        taints: &[Taint],
        root_volume_bytes: u64,
    ) {
        let mut st = self.lock();
        let joins = take_fault(&mut st, |f| matches!(f, Fault::BootFailure)).is_none();
        let Some(si) = st.instances.get_mut(instance_id) else {
            return;
        };
        if si.announced {
            return;
        }
        si.announced = true;
        let i = si.instance.clone();
        drop(st);
        let Some(t) = self.catalog.get(&i.instance_type) else {
            return;
        };
        let mut l = node_labels.clone();
        l.insert(labels::ARCH.into(), t.arch.as_str().into());
        l.insert(labels::OS.into(), "linux".into());
        l.insert(labels::INSTANCE_TYPE.into(), t.name.clone());
        l.insert(labels::ZONE.into(), i.zone.clone());
        l.insert(labels::REGION.into(), self.config.region.clone());
        l.insert(
            labels::CAPACITY_TYPE.into(),
            i.capacity_type.as_str().into(),
        );
        l.insert(
            labels::BERTH_CAPACITY_TYPE.into(),
            i.capacity_type.as_str().into(),
        );
        l.insert(labels::INSTANCE_FAMILY.into(), t.family().into());
        l.insert(labels::INSTANCE_SIZE.into(), t.size().into());
        let dns = i.private_dns_name.clone().unwrap_or_default();
        l.insert(labels::HOSTNAME.into(), dns.clone());
        let event = SimInstanceLaunched {
            instance_id: i.instance_id.clone(),
            provider_id: i.provider_id(),
            private_dns_name: dns,
            instance_type: t.name.clone(),
            zone: i.zone.clone(),
            region: self.config.region.clone(),
            capacity_type: i.capacity_type,
            arch: t.arch,
            labels: l,
            taints: taints.to_vec(),
            capacity: t
                .capacity(root_volume_bytes)
                .to_quantities()
                .into_iter()
                .collect(),
            allocatable: t
                .allocatable(root_volume_bytes)
                .to_quantities()
                .into_iter()
                .collect(),
            boot_delay: self.config.boot_delay,
            ready_delay: self.config.ready_delay,
            joins_cluster: joins,
            machine: i.machine(),
        };
        // No subscriber is not an error: the simulated cloud also runs without an emulator.
        let _ = self
            .events
            .send(SimInstanceEvent::Launched(Box::new(event)));
    }

    fn terminate_locked(&self, st: &mut SimState, id: &str) {
        let lag = self.lag(id, self.config.consistency.terminated_visible_for);
        if let Some(si) = st.instances.get_mut(id) {
            if !si.instance.state.is_terminal() {
                si.shown_until = Some((self.config.clock.now() + lag, si.instance.state));
                si.instance.state = InstanceState::Terminated;
                let _ = self.events.send(SimInstanceEvent::Terminated {
                    instance_id: id.to_string(),
                    provider_id: si.instance.provider_id(),
                });
            }
        }
    }

    /// Brings a group's live instances to its desired capacity (as Auto Scaling does, at once).
    fn reconcile_group(&self, st: &mut SimState, name: &str) -> Vec<String> {
        let Some(g) = st.node_groups.get(name).cloned() else {
            return Vec::new();
        };
        let live: Vec<String> = st
            .instances
            .values()
            .filter(|i| i.node_group.as_deref() == Some(name) && !i.instance.state.is_terminal())
            .map(|i| i.instance.instance_id.clone())
            .collect();
        let mut started = Vec::new();
        if (live.len() as u32) < g.desired_capacity {
            for k in live.len() as u32..g.desired_capacity {
                let zone = g
                    .zones
                    .get(k as usize % g.zones.len().max(1))
                    .cloned()
                    .unwrap_or_default();
                let o = OfferingKey {
                    instance_type: g.instance_type.clone(),
                    zone,
                    capacity_type: CapacityType::OnDemand,
                };
                let mut t =
                    BTreeMap::from([("aws:autoscaling:groupName".to_string(), name.to_string())]);
                t.extend(g.tags.clone());
                started.push(
                    self.start_instance(st, &o, "ami-sim-x86_64", t, Some(name.to_string()))
                        .instance_id,
                );
            }
        } else {
            for id in live.iter().skip(g.desired_capacity as usize) {
                self.terminate_locked(st, id);
            }
        }
        started
    }

    /// This instance's own delay, up to `max`, drawn from the seed and its id.
    fn lag(&self, id: &str, max: Duration) -> chrono::Duration {
        if max.is_zero() {
            return chrono::Duration::zero();
        }
        let mut h = self.config.jitter_seed ^ 0x5EED_C0DE;
        for b in id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        let ms = crate::fx::splitmix64(&mut h) % (max.as_millis() as u64 + 1);
        chrono::Duration::milliseconds(ms as i64)
    }

    /// What DescribeInstances shows of an instance now: nothing before it is visible, its former state for a
    /// while after it terminated.
    fn observed(&self, si: &SimInstance, now: DateTime<Utc>) -> Option<Instance> {
        if now < si.visible_at {
            return None;
        }
        let mut i = si.instance.clone();
        if let Some((until, before)) = si.shown_until {
            if now < until {
                i.state = before;
            }
        }
        Some(i)
    }

    fn refresh_states(&self, st: &mut SimState) {
        let now = self.config.clock.now();
        for si in st.instances.values_mut() {
            if si.instance.state == InstanceState::Pending && now >= si.running_at {
                si.instance.state = InstanceState::Running;
            }
        }
    }

    fn group_view(&self, st: &SimState, g: &SimNodeGroup) -> NodeGroup {
        NodeGroup {
            name: g.name.clone(),
            min_size: g.min_size,
            max_size: g.max_size,
            desired_capacity: g.desired_capacity,
            instance_types: vec![g.instance_type.clone()],
            zones: g.zones.clone(),
            instances: st
                .instances
                .values()
                .filter(|i| {
                    i.node_group.as_deref() == Some(g.name.as_str())
                        && !i.instance.state.is_terminal()
                })
                .map(|i| NodeGroupInstance {
                    instance_id: i.instance.instance_id.clone(),
                    instance_type: Some(i.instance.instance_type.clone()),
                    zone: i.instance.zone.clone(),
                    lifecycle_state: if i.instance.state == InstanceState::Running {
                        "InService"
                    } else {
                        "Pending"
                    }
                    .into(),
                })
                .collect(),
            tags: g.tags.clone(),
        }
    }

    fn is_discoverable(&self, g: &SimNodeGroup) -> bool {
        g.tags.get(tags::ASG_ENABLED).map(String::as_str) == Some("true")
            && g.tags.get(tags::CLUSTER) == Some(&self.config.cluster_name)
    }
}

fn next_instance_id(st: &mut SimState) -> String {
    st.next_id += 1;
    format!("i-{:017x}", st.next_id)
}

/// Takes the first fault matching `pred`, consuming one of its times.
fn take_fault(st: &mut SimState, pred: impl Fn(&Fault) -> bool) -> Option<Fault> {
    let idx = st
        .faults
        .iter()
        .position(|f| pred(&f.fault) && f.remaining != Some(0))?;
    let f = &mut st.faults[idx];
    let fault = f.fault.clone();
    if let Some(n) = f.remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            st.faults.remove(idx);
        }
    }
    Some(fault)
}

fn idempotent_replay(
    st: &SimState,
    token: &str,
    parameters: &str,
) -> Option<Result<TokenRecord, Failure>> {
    let rec = st.tokens.get(token)?;
    if rec.parameters != parameters {
        return Some(Err(Failure::Client {
            status: 400,
            code: "IdempotentParameterMismatch".into(),
            message: format!("The client token {token} was used with different parameters."),
        }));
    }
    Some(Ok(rec.clone()))
}

fn mismatch_to_conflict(e: CloudError, token: &str) -> CloudError {
    match e {
        CloudError::Api { code, .. } if code == "IdempotentParameterMismatch" => {
            CloudError::IdempotencyConflict {
                client_token: token.to_string(),
            }
        }
        other => other,
    }
}

#[async_trait]
impl FleetApi for SimulatedCloud {
    async fn create_fleet(&self, call: &FleetCall) -> Result<FleetResponse, CloudError> {
        let parameters = format!(
            "{:?}|{:?}|{}",
            call.overrides, call.capacity_type, call.launch_template_name
        );
        let detail = format!(
            "token={} type={} overrides={}",
            call.client_token,
            call.capacity_type,
            call.overrides.len()
        );
        self.call(Action::CreateFleet, 1, &detail, || {
            let mut st = self.lock();
            if !st.launch_templates.contains_key(&call.launch_template_name) {
                return Err(Failure::Client {
                    status: 400,
                    code: "InvalidLaunchTemplateName.NotFoundException".into(),
                    message: format!(
                        "launch template {} does not exist",
                        call.launch_template_name
                    ),
                });
            }
            let image_id = st.launch_templates[&call.launch_template_name]
                .image_id
                .clone();
            if let Some(replay) = idempotent_replay(&st, &call.client_token, &parameters) {
                let rec = replay?;
                let instances = rec
                    .instance_ids
                    .iter()
                    .filter_map(|id| st.instances.get(id))
                    .map(|i| self.launched_instance(&i.instance))
                    .collect();
                return Ok(FleetResponse {
                    instances,
                    errors: rec.errors,
                });
            }
            // The simulated allocation: cheapest override with capacity (the plan already sorted them by price).
            let mut errors = Vec::new();
            let mut launched = None;
            for o in &call.overrides {
                let key = o.offering(call.capacity_type);
                match self.offering_fails(&mut st, &key) {
                    Some(f) => errors.push(f),
                    None => {
                        let mut i =
                            self.start_instance(&mut st, &key, &image_id, call.tags.clone(), None);
                        i.subnet_id = Some(o.subnet_id.clone());
                        launched = Some(i);
                        break;
                    }
                }
            }
            st.tokens.insert(
                call.client_token.clone(),
                TokenRecord {
                    parameters: parameters.clone(),
                    instance_ids: launched.iter().map(|i| i.instance_id.clone()).collect(),
                    errors: errors.clone(),
                },
            );
            Ok(FleetResponse {
                instances: launched.into_iter().collect(),
                errors,
            })
        })
        .await
        .map_err(|e| mismatch_to_conflict(e, &call.client_token))
    }

    async fn run_instances(&self, call: &RunCall) -> Result<LaunchedInstance, CloudError> {
        let parameters = format!(
            "{:?}|{:?}|{}",
            call.offering, call.capacity_type, call.launch_template_name
        );
        let detail = format!(
            "token={} type={} offering={}",
            call.client_token, call.capacity_type, call.offering.instance_type
        );
        let key = call.offering.offering(call.capacity_type);
        let r = self
            .call(Action::RunInstances, 1, &detail, || {
                let mut st = self.lock();
                let Some(lt) = st.launch_templates.get(&call.launch_template_name) else {
                    return Err(Failure::Client {
                        status: 400,
                        code: "InvalidLaunchTemplateName.NotFoundException".into(),
                        message: format!(
                            "launch template {} does not exist",
                            call.launch_template_name
                        ),
                    });
                };
                let image_id = lt.image_id.clone();
                if let Some(replay) = idempotent_replay(&st, &call.client_token, &parameters) {
                    let rec = replay?;
                    if let Some(i) = rec.instance_ids.first().and_then(|id| st.instances.get(id)) {
                        return Ok(Ok(self.launched_instance(&i.instance)));
                    }
                }
                if let Some(f) = self.offering_fails(&mut st, &key) {
                    // A failed RunInstances leaves no record: the same token may be used again.
                    return Ok(Err(f));
                }
                let mut i = self.start_instance(&mut st, &key, &image_id, call.tags.clone(), None);
                i.subnet_id = Some(call.offering.subnet_id.clone());
                st.tokens.insert(
                    call.client_token.clone(),
                    TokenRecord {
                        parameters: parameters.clone(),
                        instance_ids: vec![i.instance_id.clone()],
                        errors: vec![],
                    },
                );
                Ok(Ok(i))
            })
            .await
            .map_err(|e| mismatch_to_conflict(e, &call.client_token))?;
        r.map_err(|f| CloudError::InsufficientCapacity { offerings: vec![f] })
    }

    async fn find_machine_instance(
        &self,
        machine_uid: &str,
    ) -> Result<Option<Instance>, CloudError> {
        let all = self.describe_instances().await?;
        Ok(all
            .into_iter()
            .find(|i| i.tags.get(tags::MACHINE_UID).map(String::as_str) == Some(machine_uid)))
    }
}

#[async_trait]
impl CloudProvider for SimulatedCloud {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn region(&self) -> &str {
        &self.config.region
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<LaunchOutcome, CloudError> {
        let subnets: Vec<SubnetInfo> = self
            .resolve_ids_or_tags(
                "subnet",
                &request.subnets,
                &self.config.subnets,
                |s| &s.id,
                |s| &s.tags,
            )?
            .into_iter()
            .map(|s| SubnetInfo {
                id: s.id.clone(),
                zone: s.zone.clone(),
                available_ips: s.available_ips,
            })
            .collect();
        let security_groups: Vec<String> = self
            .resolve_ids_or_tags(
                "security group",
                &request.security_groups,
                &self.config.security_groups,
                |s| &s.id,
                |s| &s.tags,
            )?
            .into_iter()
            .map(|s| s.id.clone())
            .collect();
        let plan = plan_launch(request, &self.catalog, &subnets, |k| {
            self.unavailable.is_unavailable(k)
        })?;
        let image_id = self.resolve_image(&request.image, plan.arch)?;
        let user_data = request.bootstrap.render().map_err(bootstrap_error)?;
        let spec = LaunchTemplateSpec::new(request, image_id, security_groups, user_data);
        let name = spec.name();
        let exists = self.lock().launch_templates.contains_key(&name);
        if !exists {
            self.call(Action::CreateLaunchTemplate, 1, &name, || {
                let mut st = self.lock();
                st.launch_templates.insert(name.clone(), spec.clone());
                st.launch_template_created
                    .insert(name.clone(), self.config.clock.now());
                Ok(())
            })
            .await?;
        }
        let outcome = launcher::execute(
            self,
            request,
            &plan,
            &name,
            &self.unavailable,
            &self.config.region,
        )
        .await?;
        self.announce(
            &outcome.instance.instance_id,
            &request.bootstrap.labels,
            &request.bootstrap.taints,
            spec.root_volume_bytes(),
        );
        Ok(outcome)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<TerminateOutcome, CloudError> {
        let mut outcome = TerminateOutcome::default();
        // Ownership first, as against EC2: a filtered describe of the ids with this cluster's tag.
        let owned: Vec<(String, bool)> = self
            .call(
                Action::DescribeInstances,
                1,
                &format!("ids={}", instance_ids.len()),
                || {
                    let st = self.lock();
                    let now = self.config.clock.now();
                    Ok(instance_ids
                        .iter()
                        .filter_map(|id| {
                            let i = self.observed(st.instances.get(id)?, now)?;
                            (i.tags.get(tags::CLUSTER) == Some(&self.config.cluster_name))
                                .then(|| (id.clone(), i.state == InstanceState::Terminated))
                        })
                        .collect())
                },
            )
            .await?;
        for id in instance_ids {
            match owned.iter().find(|(o, _)| o == id) {
                None => outcome.not_owned_or_missing.push(id.clone()),
                Some((_, true)) => outcome.already_terminated.push(id.clone()),
                Some((_, false)) => outcome.terminating.push(id.clone()),
            }
        }
        if outcome.terminating.is_empty() {
            return Ok(outcome);
        }
        let ids = outcome.terminating.clone();
        self.call(
            Action::TerminateInstances,
            ids.len() as u32,
            &ids.join(","),
            || {
                let mut st = self.lock();
                for id in &ids {
                    self.terminate_locked(&mut st, id);
                }
                Ok(())
            },
        )
        .await?;
        Ok(outcome)
    }

    async fn describe_instances(&self) -> Result<Vec<Instance>, CloudError> {
        self.call(
            Action::DescribeInstances,
            1,
            "tag:berth.dev/cluster",
            || {
                let mut st = self.lock();
                self.refresh_states(&mut st);
                let now = self.config.clock.now();
                Ok(st
                    .instances
                    .values()
                    .filter_map(|i| self.observed(i, now))
                    .filter(|i| i.tags.get(tags::CLUSTER) == Some(&self.config.cluster_name))
                    .filter(|i| i.state != InstanceState::Terminated)
                    .collect())
            },
        )
        .await
    }

    async fn lookup_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<BTreeMap<String, InstanceLookup>, CloudError> {
        let mut out = BTreeMap::new();
        // One DescribeInstances by InstanceIds per batch of 100, as the AWS provider asks.
        for chunk in instance_ids.chunks(100) {
            let answers = self
                .call(
                    Action::DescribeInstances,
                    1,
                    &format!("instance-ids={}", chunk.join(",")),
                    || {
                        let mut st = self.lock();
                        self.refresh_states(&mut st);
                        let now = self.config.clock.now();
                        Ok(chunk
                            .iter()
                            .map(|id| {
                                let answer = st
                                    .instances
                                    .get(id)
                                    .and_then(|i| self.observed(i, now))
                                    .map_or(InstanceLookup::NotFound, |i| {
                                        InstanceLookup::Found(i.state)
                                    });
                                (id.clone(), answer)
                            })
                            .collect::<Vec<_>>())
                    },
                )
                .await?;
            out.extend(answers);
        }
        Ok(out)
    }

    async fn instance_types(&self) -> Result<Arc<Catalog>, CloudError> {
        let mut c = self.catalog.clone();
        self.unavailable.apply(&mut c);
        Ok(c)
    }

    fn unavailable_offerings(&self) -> &UnavailableOfferings {
        &self.unavailable
    }

    async fn node_groups(&self) -> Result<Vec<NodeGroup>, CloudError> {
        self.call(Action::DescribeAutoScalingGroups, 1, "tags", || {
            let mut st = self.lock();
            self.refresh_states(&mut st);
            Ok(st
                .node_groups
                .values()
                .filter(|g| self.is_discoverable(g))
                .map(|g| self.group_view(&st, g))
                .collect())
        })
        .await
    }

    async fn set_node_group_desired_capacity(
        &self,
        group: &str,
        desired: u32,
    ) -> Result<(), CloudError> {
        let started = self
            .call(Action::SetDesiredCapacity, 1, &format!("{group}={desired}"), || {
                let mut st = self.lock();
                let g = st.node_groups.get_mut(group).filter(|g| self.is_discoverable(g));
                let Some(g) = g else {
                    return Err(Failure::Client { status: 400, code: "ValidationError".into(), message: format!("AutoScalingGroup name not found - {group}") });
                };
                if desired < g.min_size || desired > g.max_size {
                    return Err(Failure::Client {
                        status: 400,
                        code: "ValidationError".into(),
                        message: format!("New SetDesiredCapacity value {desired} is outside the bounds {}..{} of {group}", g.min_size, g.max_size),
                    });
                }
                g.desired_capacity = desired;
                Ok(self.reconcile_group(&mut st, group))
            })
            .await
            .map_err(|e| node_group_error(e, group))?;
        for id in started {
            self.announce(&id, &BTreeMap::new(), &[], 20 << 30);
        }
        Ok(())
    }

    async fn terminate_node_group_instance(
        &self,
        group: &str,
        instance_id: &str,
    ) -> Result<(), CloudError> {
        self.call(
            Action::TerminateInstanceInAutoScalingGroup,
            1,
            instance_id,
            || {
                let mut st = self.lock();
                let in_group = st.instances.get(instance_id).is_some_and(|i| {
                    i.node_group.as_deref() == Some(group) && !i.instance.state.is_terminal()
                });
                if !in_group {
                    return Err(Failure::Client {
                        status: 400,
                        code: "ValidationError".into(),
                        message: format!("Instance Id not found - {instance_id} in {group}"),
                    });
                }
                if let Some(g) = st.node_groups.get_mut(group) {
                    if g.desired_capacity == 0 || g.desired_capacity - 1 < g.min_size {
                        return Err(Failure::Client {
                            status: 400,
                            code: "ValidationError".into(),
                            message: format!(
                                "decrementing {group} would go below its minimum size {}",
                                g.min_size
                            ),
                        });
                    }
                    g.desired_capacity -= 1;
                }
                self.terminate_locked(&mut st, instance_id);
                Ok(())
            },
        )
        .await
        .map_err(|e| node_group_error(e, group))
    }

    async fn garbage_collect_launch_templates(
        &self,
        live: &[ClassRevision],
        created_before: DateTime<Utc>,
    ) -> Result<usize, CloudError> {
        let stale: Vec<String> = self
            .call(
                Action::DescribeLaunchTemplates,
                1,
                "tag:berth.dev/cluster",
                || {
                    let st = self.lock();
                    Ok(st
                        .launch_templates
                        .iter()
                        .filter(|(name, spec)| {
                            spec.cluster_name == self.config.cluster_name
                                && !live.contains(&spec.class)
                                && st
                                    .launch_template_created
                                    .get(*name)
                                    .is_some_and(|t| *t < created_before)
                        })
                        .map(|(n, _)| n.clone())
                        .collect())
                },
            )
            .await?;
        for name in &stale {
            self.call(Action::DeleteLaunchTemplate, 1, name, || {
                let mut st = self.lock();
                st.launch_templates.remove(name);
                st.launch_template_created.remove(name);
                Ok(())
            })
            .await?;
        }
        Ok(stale.len())
    }
    async fn interruption_queue(
        &self,
        _queue: &str,
    ) -> Result<Arc<dyn InterruptionQueue>, QueueError> {
        Ok(self.interruptions.clone())
    }
}

pub(crate) fn bootstrap_error(e: BootstrapError) -> CloudError {
    CloudError::invalid(format!("bootstrap user data: {e}"))
}

fn node_group_error(e: CloudError, group: &str) -> CloudError {
    match e {
        CloudError::Api { code, message, .. }
            if code == "ValidationError" && message.contains("not found") =>
        {
            CloudError::NotFound {
                what: format!("Auto Scaling group {group} or its instance ({message})"),
            }
        }
        CloudError::Api { code, message, .. } if code == "ValidationError" => {
            CloudError::invalid(message)
        }
        other => other,
    }
}

/// Builders for tests, benchmarks and simulations.
pub mod fixtures {
    use super::*;
    use crate::cloud::bootstrap::{Bootstrap, BootstrapFormat};
    use crate::cloud::{ImageSelector, InstanceTypeChoice, MetadataOptions};
    use crate::model::instance_type::{InstanceType, Offering};

    fn itype(name: &str, vcpu: u32, memory_mib: u64, arch: Arch, od_price: f64) -> InstanceType {
        let mut offerings = Vec::new();
        for (i, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"]
            .iter()
            .enumerate()
        {
            offerings.push(Offering {
                zone: zone.to_string(),
                capacity_type: CapacityType::OnDemand,
                price: od_price,
                available: true,
            });
            // Spot differs per zone so the plan's order is visible.
            offerings.push(Offering {
                zone: zone.to_string(),
                capacity_type: CapacityType::Spot,
                price: od_price * (0.30 + 0.05 * i as f64),
                available: true,
            });
        }
        InstanceType {
            name: name.into(),
            vcpu,
            memory_mib,
            arch,
            gpus: 0,
            gpu_manufacturer: None,
            max_network_interfaces: 3,
            ipv4_per_interface: 10,
            current_generation: true,
            bare_metal: false,
            burstable: false,
            local_storage_gb: 0,
            offerings,
            allocatable_override: None,
        }
    }

    /// Four types in us-east-1a/b/c, spot and on-demand.
    pub fn small_catalog() -> Catalog {
        Catalog {
            instance_types: vec![
                itype("m5.large", 2, 8192, Arch::Amd64, 0.096),
                itype("c5.large", 2, 4096, Arch::Amd64, 0.085),
                itype("m5.xlarge", 4, 16384, Arch::Amd64, 0.192),
                itype("m6g.large", 2, 8192, Arch::Arm64, 0.077),
            ],
        }
    }

    /// A launch request for Machine `name` of deployment `web` in cluster `test-cluster`: spot with on-demand
    /// fallback, AL2023 bootstrap, subnets and security groups by the discovery tag.
    pub fn request(name: &str) -> LaunchRequest {
        let discovery = BTreeMap::from([(DISCOVERY_TAG.to_string(), "test-cluster".to_string())]);
        LaunchRequest {
            machine: MachineRef {
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                name: name.into(),
            },
            deployment: Some("web".into()),
            cluster_name: "test-cluster".into(),
            class: ClassRevision {
                name: "general".into(),
                revision: "1".into(),
            },
            instance_types: ["m5.large", "c5.large", "m5.xlarge", "m6g.large"]
                .into_iter()
                .map(InstanceTypeChoice::new)
                .collect(),
            capacity_types: vec![CapacityType::Spot],
            fallback_to_on_demand: true,
            image: ImageSpec::Selector(ImageSelector {
                owners: vec!["amazon".into()],
                name: Some("amazon-eks-node-al2023-*".into()),
                tags: BTreeMap::new(),
            }),
            subnets: ResourceSelector::Tags(discovery.clone()),
            security_groups: ResourceSelector::Tags(discovery),
            instance_profile: Some("berth-nodes".into()),
            bootstrap: Bootstrap {
                format: BootstrapFormat::Al2023,
                cluster_name: "test-cluster".into(),
                api_server_endpoint: "https://api.test-cluster.example".into(),
                certificate_authority: "Q0E=".into(),
                cluster_cidr: "10.100.0.0/16".into(),
                labels: BTreeMap::from([(
                    labels::MACHINE_DEPLOYMENT.to_string(),
                    "web".to_string(),
                )]),
                taints: Vec::new(),
                class_user_data: None,
            },
            block_devices: Vec::new(),
            tags: BTreeMap::from([("team".to_string(), "platform".to_string())]),
            metadata_options: MetadataOptions::default(),
            attempt: 0,
        }
    }
}

/// The emulator's kubelet event for a simulated-cloud event; None for an instance that never joins the cluster.
pub fn kubelet_event(event: &SimInstanceEvent) -> Option<crate::emulator::kubelet::InstanceEvent> {
    use crate::emulator::kubelet::{InstanceEvent, InstanceLaunched, InstanceTerminated};
    match event {
        SimInstanceEvent::Launched(l) if l.joins_cluster => {
            Some(InstanceEvent::Launched(Box::new(InstanceLaunched {
                instance_id: l.instance_id.clone(),
                instance_type: l.instance_type.clone(),
                zone: l.zone.clone(),
                region: l.region.clone(),
                capacity_type: l.capacity_type.as_str().to_string(),
                arch: l.arch.as_str().to_string(),
                labels: l.labels.clone(),
                taints: l
                    .taints
                    .iter()
                    .map(|t| k8s_openapi::api::core::v1::Taint {
                        key: t.key.clone(),
                        value: (!t.value.is_empty()).then(|| t.value.clone()),
                        effect: t.effect.to_string(),
                        time_added: None,
                    })
                    .collect(),
                capacity: l.capacity.clone(),
                allocatable: l.allocatable.clone(),
                boot_delay: l.boot_delay,
                ready_delay: l.ready_delay,
            })))
        }
        SimInstanceEvent::Launched(_) => None,
        SimInstanceEvent::Terminated { instance_id, .. } => {
            Some(InstanceEvent::Terminated(InstanceTerminated {
                instance_id: instance_id.clone(),
            }))
        }
    }
}
