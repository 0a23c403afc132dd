//! The launch sequence both providers share, over the two EC2 launch calls ([`FleetApi`]): for each capacity type of
//! the plan, one CreateFleet (type instant, target 1) with every override, or RunInstances offering by offering when
//! the plan holds a single instance type; capacity failures go into the unavailable-offerings cache and the next
//! capacity type is tried (spot → on-demand fallback); a client token that was used with other parameters adopts the
//! instance already launched for the Machine, if there is one.

use crate::cloud::error::{CloudError, OfferingFailure};
use crate::cloud::launch_plan::{
    client_token, fleet_call_tag, fnv1a, run_call_tag, LaunchPlan, Override,
};
use crate::cloud::unavailable::{is_capacity_error, UnavailableOfferings};
use crate::cloud::{
    tags, BlockDevice, ClassRevision, Instance, LaunchOutcome, LaunchRequest, LaunchedInstance,
    MetadataOptions,
};
use crate::model::instance_type::CapacityType;
use async_trait::async_trait;
use std::collections::BTreeMap;

/// Everything a launch template holds, resolved. Its [`key`](LaunchTemplateSpec::key) names the template, so
/// a change of any field makes a new template and the old one is garbage-collected with its class revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplateSpec {
    pub cluster_name: String,
    pub class: ClassRevision,
    pub image_id: String,
    pub security_group_ids: Vec<String>,
    pub instance_profile: Option<String>,
    /// Rendered, not base64.
    pub user_data: String,
    pub block_devices: Vec<BlockDevice>,
    pub metadata_options: MetadataOptions,
    /// Tags of the template itself (cluster, managed, class and revision, the class's tags).
    pub tags: BTreeMap<String, String>,
}

impl LaunchTemplateSpec {
    pub fn new(
        request: &LaunchRequest,
        image_id: String,
        mut security_group_ids: Vec<String>,
        user_data: String,
    ) -> LaunchTemplateSpec {
        security_group_ids.sort();
        security_group_ids.dedup();
        let mut t = request.tags.clone();
        t.insert(tags::CLUSTER.into(), request.cluster_name.clone());
        t.insert(tags::MANAGED.into(), "true".into());
        t.insert(tags::MACHINE_CLASS.into(), request.class.name.clone());
        t.insert(
            tags::MACHINE_CLASS_REVISION.into(),
            request.class.revision.clone(),
        );
        let block_devices = if request.block_devices.is_empty() {
            vec![BlockDevice::default_root()]
        } else {
            request.block_devices.clone()
        };
        LaunchTemplateSpec {
            cluster_name: request.cluster_name.clone(),
            class: request.class.clone(),
            image_id,
            security_group_ids,
            instance_profile: request.instance_profile.clone(),
            user_data,
            block_devices,
            metadata_options: request.metadata_options.clone(),
            tags: t,
        }
    }

    /// A 64-bit digest of every field, as 16 hex digits.
    pub fn key(&self) -> String {
        format!("{:016x}", fnv1a(format!("{self:?}").as_bytes(), 0))
    }

    /// `berth/<cluster>/<class>/<key>`, within EC2's 128 characters and its character set.
    pub fn name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "()./_-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let name = format!(
            "berth/{}/{}/{}",
            clean(&self.cluster_name),
            clean(&self.class.name),
            self.key()
        );
        if name.len() <= 128 {
            name
        } else {
            format!(
                "berth/{:016x}/{}",
                fnv1a(
                    format!("{}/{}", self.cluster_name, self.class.name).as_bytes(),
                    0
                ),
                self.key()
            )
        }
    }

    /// The root volume size, for the node's ephemeral-storage capacity.
    pub fn root_volume_bytes(&self) -> u64 {
        self.block_devices
            .first()
            .map_or(20 << 30, |b| (b.volume_size_gib as u64) << 30)
    }
}

/// One CreateFleet call (type instant, target capacity 1).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetCall {
    pub client_token: String,
    pub launch_template_name: String,
    pub capacity_type: CapacityType,
    pub overrides: Vec<Override>,
    /// Tags for the instance and its volumes.
    pub tags: BTreeMap<String, String>,
}

/// What CreateFleet answered: the instances launched and one error per offering that failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetResponse {
    pub instances: Vec<LaunchedInstance>,
    pub errors: Vec<OfferingFailure>,
}

/// One RunInstances call for one offering.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCall {
    pub client_token: String,
    pub launch_template_name: String,
    pub capacity_type: CapacityType,
    pub offering: Override,
    pub tags: BTreeMap<String, String>,
}

/// The two launch calls and the lookup used after an idempotency conflict.
#[async_trait]
pub trait FleetApi: Send + Sync {
    async fn create_fleet(&self, call: &FleetCall) -> Result<FleetResponse, CloudError>;
    /// Capacity failures come back as [`CloudError::InsufficientCapacity`] naming the offering.
    async fn run_instances(&self, call: &RunCall) -> Result<LaunchedInstance, CloudError>;
    /// The live instance tagged with this Machine uid, if any.
    async fn find_machine_instance(
        &self,
        machine_uid: &str,
    ) -> Result<Option<Instance>, CloudError>;
}

/// Runs the plan. `region` fills in [`LaunchedInstance::region`] for adopted instances.
pub async fn execute(
    api: &dyn FleetApi,
    request: &LaunchRequest,
    plan: &LaunchPlan,
    launch_template_name: &str,
    unavailable: &UnavailableOfferings,
    region: &str,
) -> Result<LaunchOutcome, CloudError> {
    let tags = crate::cloud::instance_tags(request);
    let single_type = plan.single_instance_type().is_some();
    let mut failed: Vec<OfferingFailure> = Vec::new();
    let mut other_errors: Vec<OfferingFailure> = Vec::new();
    let mut spot_failed = false;
    for phase in &plan.phases {
        let capacity_type = phase.capacity_type;
        let launched = if single_type {
            let mut launched = None;
            for o in &phase.overrides {
                let call = RunCall {
                    client_token: client_token(
                        &request.machine.uid,
                        request.attempt,
                        &run_call_tag(capacity_type, o),
                    ),
                    launch_template_name: launch_template_name.to_string(),
                    capacity_type,
                    offering: o.clone(),
                    tags: tags.clone(),
                };
                match api.run_instances(&call).await {
                    Ok(i) => {
                        launched = Some(i);
                        break;
                    }
                    Err(CloudError::InsufficientCapacity { offerings }) => {
                        for f in &offerings {
                            unavailable.mark(f.offering.clone());
                        }
                        failed.extend(offerings);
                    }
                    Err(CloudError::IdempotencyConflict { client_token }) => {
                        return adopt(api, request, client_token, failed, region).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            launched
        } else {
            let call = FleetCall {
                client_token: client_token(
                    &request.machine.uid,
                    request.attempt,
                    &fleet_call_tag(capacity_type),
                ),
                launch_template_name: launch_template_name.to_string(),
                capacity_type,
                overrides: phase.overrides.clone(),
                tags: tags.clone(),
            };
            match api.create_fleet(&call).await {
                Ok(resp) => {
                    for e in resp.errors {
                        if is_capacity_error(&e.code) {
                            unavailable.mark(e.offering.clone());
                            failed.push(e);
                        } else {
                            other_errors.push(e);
                        }
                    }
                    resp.instances.into_iter().next()
                }
                Err(CloudError::IdempotencyConflict { client_token }) => {
                    return adopt(api, request, client_token, failed, region).await;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(instance) = launched {
            return Ok(LaunchOutcome {
                instance,
                failed_offerings: failed,
                fell_back_to_on_demand: spot_failed && capacity_type == CapacityType::OnDemand,
            });
        }
        if capacity_type == CapacityType::Spot {
            spot_failed = true;
        }
    }
    if let Some(e) = other_errors.into_iter().next() {
        // A fleet error that is not about capacity (a bad parameter, a missing permission) says more than the
        // capacity errors next to it.
        return Err(CloudError::Api {
            action: "CreateFleet",
            code: e.code,
            message: format!("{}: {}", e.offering, e.message),
        });
    }
    Err(CloudError::InsufficientCapacity { offerings: failed })
}

async fn adopt(
    api: &dyn FleetApi,
    request: &LaunchRequest,
    client_token: String,
    failed: Vec<OfferingFailure>,
    region: &str,
) -> Result<LaunchOutcome, CloudError> {
    match api.find_machine_instance(&request.machine.uid).await? {
        Some(i) if !i.state.is_terminal() => Ok(LaunchOutcome {
            instance: LaunchedInstance {
                instance_id: i.instance_id,
                instance_type: i.instance_type,
                zone: i.zone,
                region: region.to_string(),
                capacity_type: i.capacity_type,
                image_id: i.image_id,
                subnet_id: None,
                launch_time: i.launch_time.unwrap_or_default(),
            },
            failed_offerings: failed,
            fell_back_to_on_demand: false,
        }),
        _ => Err(CloudError::IdempotencyConflict { client_token }),
    }
}
