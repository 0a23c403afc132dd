//! EC2 calls: CreateFleet and RunInstances (the [`FleetApi`] of the shared launch sequence), launch templates,
//! DescribeInstances by this cluster's tags, ownership-checked TerminateInstances, and resolution of subnets,
//! security groups and AMIs by id or selector.

use super::{cache_get, cache_put, classify, AwsCloud};
use crate::cloud::action::Action;
use crate::cloud::error::{CloudError, OfferingFailure};
use crate::cloud::launch_plan::SubnetInfo;
use crate::cloud::launcher::{FleetApi, FleetCall, FleetResponse, LaunchTemplateSpec, RunCall};
use crate::cloud::resolve::{newest_image, ImageInfo};
use crate::cloud::retry::Failure;
use crate::cloud::unavailable::is_capacity_error;
use crate::cloud::{
    tags, ClassRevision, ImageSpec, Instance, InstanceLookup, InstanceState, LaunchedInstance,
    OfferingKey, ResourceSelector, TerminateOutcome,
};
use crate::model::instance_type::{Arch, CapacityType};
use async_trait::async_trait;
use aws_sdk_ec2::types as t;
use base64::Engine;
use std::collections::BTreeMap;

fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> t::Filter {
    t::Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

/// `tag:K=V` filters, `tag-key=K` for a `*` value.
fn tag_filters(selector: &BTreeMap<String, String>) -> Vec<t::Filter> {
    selector
        .iter()
        .map(|(k, v)| {
            if v == "*" {
                filter("tag-key", [k.clone()])
            } else {
                filter(&format!("tag:{k}"), [v.clone()])
            }
        })
        .collect()
}

fn ec2_tags(map: &BTreeMap<String, String>) -> Vec<t::Tag> {
    map.iter()
        .map(|(k, v)| t::Tag::builder().key(k).value(v).build())
        .collect()
}

fn tag_map(tags: &[t::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

fn to_chrono(dt: &aws_sdk_ec2::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(dt.secs(), dt.subsec_nanos())
}

fn arch_filter_value(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64",
        Arch::Arm64 => "arm64",
    }
}

fn instance_from(i: &t::Instance) -> Option<Instance> {
    let state = i
        .state()
        .and_then(|s| s.name())
        .and_then(|n| InstanceState::parse(n.as_str()))?;
    Some(Instance {
        instance_id: i.instance_id()?.to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        capacity_type: if i.instance_lifecycle() == Some(&t::InstanceLifecycleType::Spot) {
            CapacityType::Spot
        } else {
            CapacityType::OnDemand
        },
        state,
        image_id: i.image_id().unwrap_or_default().to_string(),
        private_dns_name: i
            .private_dns_name()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        launch_time: i.launch_time().and_then(to_chrono),
        tags: tag_map(i.tags()),
    })
}

impl AwsCloud {
    fn map_err(&self, e: crate::cloud::retry::CallError) -> CloudError {
        e.into_cloud_error()
    }

    /// This cluster's instances matching `extra` filters, not terminated.
    pub(super) async fn describe_cluster_instances(
        &self,
        extra: Vec<t::Filter>,
    ) -> Result<Vec<Instance>, CloudError> {
        let mut filters = vec![
            filter(
                &format!("tag:{}", tags::CLUSTER),
                [self.config.cluster_name.clone()],
            ),
            filter(
                "instance-state-name",
                ["pending", "running", "stopping", "stopped", "shutting-down"],
            ),
        ];
        filters.extend(extra);
        let filters = &filters;
        let pages = all_pages(
            |token| async move {
                self.caller
                    .call(Action::DescribeInstances, 1, || {
                        self.ec2
                            .describe_instances()
                            .set_filters(Some(filters.clone()))
                            .set_next_token(token.clone())
                            .max_results(1000)
                            .send()
                            .map_err_classify()
                    })
                    .await
            },
            |page| page.next_token(),
        )
        .await
        .map_err(|e| self.map_err(e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.reservations())
            .flat_map(|r| r.instances().iter().filter_map(instance_from))
            .collect())
    }

    pub(super) async fn terminate_owned(
        &self,
        instance_ids: &[String],
    ) -> Result<TerminateOutcome, CloudError> {
        let mut outcome = TerminateOutcome::default();
        if instance_ids.is_empty() {
            return Ok(outcome);
        }
        // Ownership: only ids found with this cluster's tag are terminated. Filtering by instance-id (rather than
        // InstanceIds) keeps an unknown id from failing the whole call.
        let mut found: BTreeMap<String, InstanceState> = BTreeMap::new();
        for chunk in instance_ids.chunks(200) {
            let filters = vec![
                filter("instance-id", chunk.iter().cloned()),
                filter(
                    &format!("tag:{}", tags::CLUSTER),
                    [self.config.cluster_name.clone()],
                ),
            ];
            let page = self
                .caller
                .call(Action::DescribeInstances, 1, || {
                    self.ec2
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .send()
                        .map_err_classify()
                })
                .await
                .map_err(|e| self.map_err(e))?;
            for r in page.reservations() {
                for i in r.instances().iter().filter_map(instance_from) {
                    found.insert(i.instance_id, i.state);
                }
            }
        }
        for id in instance_ids {
            match found.get(id) {
                None => outcome.not_owned_or_missing.push(id.clone()),
                Some(InstanceState::Terminated) => outcome.already_terminated.push(id.clone()),
                Some(_) => outcome.terminating.push(id.clone()),
            }
        }
        for chunk in outcome.terminating.chunks(500) {
            let ids = chunk.to_vec();
            self.caller
                .call(Action::TerminateInstances, ids.len() as u32, || {
                    self.ec2
                        .terminate_instances()
                        .set_instance_ids(Some(ids.clone()))
                        .send()
                        .map_err_classify()
                })
                .await
                .map_err(|e| self.map_err(e))?;
        }
        if !outcome.not_owned_or_missing.is_empty() {
            tracing::warn!(ids = ?outcome.not_owned_or_missing, cluster = %self.config.cluster_name, "not terminating instances without this cluster's tag");
        }
        Ok(outcome)
    }

    /// DescribeInstances by InstanceIds, whatever the tags, in batches. EC2 fails a whole batch with
    /// `InvalidInstanceID.NotFound` when one id is unknown; that batch is then asked id by id, so each unknown id
    /// gets its own positive answer. Ids EC2 refuses otherwise (`InvalidInstanceID.Malformed`) get no answer.
    pub(super) async fn lookup_by_id(
        &self,
        instance_ids: &[String],
    ) -> Result<BTreeMap<String, InstanceLookup>, CloudError> {
        let mut out = BTreeMap::new();
        for chunk in instance_ids.chunks(LOOKUP_BATCH) {
            match self.describe_ids(chunk).await? {
                Lookup::Found(found) => {
                    for id in chunk {
                        // Asked by id and answered without it: EC2 does not know it.
                        let answer = found
                            .get(id)
                            .map_or(InstanceLookup::NotFound, |s| InstanceLookup::Found(*s));
                        out.insert(id.clone(), answer);
                    }
                }
                Lookup::NotFound | Lookup::Refused if chunk.len() > 1 => {
                    for id in chunk {
                        match self.describe_ids(std::slice::from_ref(id)).await? {
                            Lookup::Found(found) => {
                                let answer = found.get(id).map_or(InstanceLookup::NotFound, |s| {
                                    InstanceLookup::Found(*s)
                                });
                                out.insert(id.clone(), answer);
                            }
                            Lookup::NotFound => {
                                out.insert(id.clone(), InstanceLookup::NotFound);
                            }
                            Lookup::Refused => {}
                        }
                    }
                }
                Lookup::NotFound => {
                    out.insert(chunk[0].clone(), InstanceLookup::NotFound);
                }
                Lookup::Refused => {}
            }
        }
        Ok(out)
    }

    /// One DescribeInstances by InstanceIds (every page).
    async fn describe_ids(&self, ids: &[String]) -> Result<Lookup, CloudError> {
        let pages = all_pages(
            |token| async move {
                self.caller
                    .call(Action::DescribeInstances, 1, || {
                        self.ec2
                            .describe_instances()
                            .set_instance_ids(Some(ids.to_vec()))
                            .set_next_token(token.clone())
                            .send()
                            .map_err_classify()
                    })
                    .await
            },
            |page| page.next_token(),
        )
        .await;
        let pages = match pages {
            Ok(pages) => pages,
            Err(e) if e.failure.code() == "InvalidInstanceID.NotFound" => {
                return Ok(Lookup::NotFound)
            }
            Err(e) if e.failure.code().starts_with("InvalidInstanceID") => {
                tracing::warn!(ids = ?ids, code = e.failure.code(), "instance ids refused");
                return Ok(Lookup::Refused);
            }
            Err(e) => return Err(self.map_err(e)),
        };
        Ok(Lookup::Found(
            pages
                .iter()
                .flat_map(|p| p.reservations())
                .flat_map(|r| r.instances().iter().filter_map(instance_from))
                .map(|i| (i.instance_id, i.state))
                .collect(),
        ))
    }

    pub(super) async fn resolve_subnets(
        &self,
        selector: &ResourceSelector,
    ) -> Result<Vec<SubnetInfo>, CloudError> {
        let key = format!("{selector:?}");
        if let Some(v) = cache_get(&self.subnets, &key, self.config.resolve_ttl) {
            return Ok(v);
        }
        let filters = match selector {
            ResourceSelector::Ids(ids) if ids.is_empty() => {
                return Err(CloudError::invalid("the class names no subnet"))
            }
            ResourceSelector::Ids(ids) => vec![filter("subnet-id", ids.iter().cloned())],
            ResourceSelector::Tags(sel) if sel.is_empty() => {
                return Err(CloudError::invalid("the class's subnet selector is empty"))
            }
            ResourceSelector::Tags(sel) => tag_filters(sel),
        };
        let resp = self
            .caller
            .call(Action::DescribeSubnets, 1, || {
                self.ec2
                    .describe_subnets()
                    .set_filters(Some(filters.clone()))
                    .send()
                    .map_err_classify()
            })
            .await
            .map_err(|e| self.map_err(e))?;
        let subnets: Vec<SubnetInfo> = resp
            .subnets()
            .iter()
            .filter_map(|s| {
                Some(SubnetInfo {
                    id: s.subnet_id()?.to_string(),
                    zone: s.availability_zone()?.to_string(),
                    available_ips: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
                })
            })
            .collect();
        if let ResourceSelector::Ids(ids) = selector {
            let missing: Vec<&str> = ids
                .iter()
                .filter(|id| !subnets.iter().any(|s| &s.id == *id))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(CloudError::invalid(format!(
                    "subnet(s) {} do not exist",
                    missing.join(", ")
                )));
            }
        }
        if subnets.is_empty() {
            return Err(CloudError::invalid(format!(
                "no subnet matches the selector {selector:?}"
            )));
        }
        cache_put(&self.subnets, key, subnets.clone());
        Ok(subnets)
    }

    pub(super) async fn resolve_security_groups(
        &self,
        selector: &ResourceSelector,
    ) -> Result<Vec<String>, CloudError> {
        let key = format!("{selector:?}");
        if let Some(v) = cache_get(&self.security_groups, &key, self.config.resolve_ttl) {
            return Ok(v);
        }
        let filters = match selector {
            ResourceSelector::Ids(ids) if ids.is_empty() => {
                return Err(CloudError::invalid("the class names no security group"))
            }
            ResourceSelector::Ids(ids) => vec![filter("group-id", ids.iter().cloned())],
            ResourceSelector::Tags(sel) if sel.is_empty() => {
                return Err(CloudError::invalid(
                    "the class's security-group selector is empty",
                ))
            }
            ResourceSelector::Tags(sel) => tag_filters(sel),
        };
        let resp = self
            .caller
            .call(Action::DescribeSecurityGroups, 1, || {
                self.ec2
                    .describe_security_groups()
                    .set_filters(Some(filters.clone()))
                    .send()
                    .map_err_classify()
            })
            .await
            .map_err(|e| self.map_err(e))?;
        let groups: Vec<String> = resp
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        if let ResourceSelector::Ids(ids) = selector {
            let missing: Vec<&str> = ids
                .iter()
                .filter(|id| !groups.contains(id))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(CloudError::invalid(format!(
                    "security group(s) {} do not exist",
                    missing.join(", ")
                )));
            }
        }
        if groups.is_empty() {
            return Err(CloudError::invalid(format!(
                "no security group matches the selector {selector:?}"
            )));
        }
        cache_put(&self.security_groups, key, groups.clone());
        Ok(groups)
    }

    pub(super) async fn resolve_image(
        &self,
        spec: &ImageSpec,
        arch: Arch,
    ) -> Result<String, CloudError> {
        let key = format!("{spec:?}/{}", arch.as_str());
        if let Some(v) = cache_get(&self.images, &key, self.config.resolve_ttl) {
            return Ok(v);
        }
        let (owners, filters) = match spec {
            ImageSpec::Id(id) => (Vec::new(), vec![filter("image-id", [id.clone()])]),
            ImageSpec::Selector(sel) => {
                let mut f = tag_filters(&sel.tags);
                if let Some(n) = &sel.name {
                    f.push(filter("name", [n.clone()]));
                }
                f.push(filter("architecture", [arch_filter_value(arch)]));
                (sel.owners.clone(), f)
            }
        };
        let resp = self
            .caller
            .call(Action::DescribeImages, 1, || {
                self.ec2
                    .describe_images()
                    .set_owners((!owners.is_empty()).then(|| owners.clone()))
                    .set_filters(Some(filters.clone()))
                    .send()
                    .map_err_classify()
            })
            .await
            .map_err(|e| self.map_err(e))?;
        let images: Vec<ImageInfo> = resp
            .images()
            .iter()
            .filter_map(|i| {
                Some(ImageInfo {
                    id: i.image_id()?.to_string(),
                    name: i.name().unwrap_or_default().to_string(),
                    owner: i.owner_id().unwrap_or_default().to_string(),
                    arch: i.architecture().and_then(|a| Arch::parse(a.as_str())),
                    creation_date: i.creation_date().unwrap_or_default().to_string(),
                    tags: tag_map(i.tags()),
                })
            })
            .collect();
        let chosen = match spec {
            ImageSpec::Id(id) => {
                let img = images
                    .first()
                    .ok_or_else(|| CloudError::invalid(format!("AMI {id} does not exist")))?;
                if img.arch.is_some_and(|a| a != arch) {
                    return Err(CloudError::invalid(format!(
                        "AMI {id} is {}, the instance types are {}",
                        img.arch.map_or("?", |a| a.as_str()),
                        arch.as_str()
                    )));
                }
                img.id.clone()
            }
            ImageSpec::Selector(sel) => newest_image(&images, arch)
                .map(|i| i.id.clone())
                .ok_or_else(|| {
                    CloudError::invalid(format!(
                        "no {} AMI matches the selector {sel:?}",
                        arch.as_str()
                    ))
                })?,
        };
        cache_put(&self.images, key, chosen.clone());
        Ok(chosen)
    }

    /// Creates the template unless this process already knows it exists; "already exists" is success.
    pub(super) async fn ensure_launch_template(
        &self,
        spec: &LaunchTemplateSpec,
    ) -> Result<String, CloudError> {
        let name = spec.name();
        if self
            .launch_templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&name)
        {
            return Ok(name);
        }
        let user_data = base64::engine::general_purpose::STANDARD.encode(spec.user_data.as_bytes());
        let mut volume_tags = spec.tags.clone();
        volume_tags.remove(tags::MACHINE_CLASS_REVISION);
        let data = t::RequestLaunchTemplateData::builder()
            .image_id(&spec.image_id)
            .set_security_group_ids(Some(spec.security_group_ids.clone()))
            .user_data(user_data)
            .set_iam_instance_profile(spec.instance_profile.as_ref().map(|p| {
                let b = t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
                if p.starts_with("arn:") {
                    b.arn(p).build()
                } else {
                    b.name(p).build()
                }
            }))
            .set_block_device_mappings(Some(
                spec.block_devices
                    .iter()
                    .map(|d| {
                        t::LaunchTemplateBlockDeviceMappingRequest::builder()
                            .device_name(&d.device_name)
                            .ebs(
                                t::LaunchTemplateEbsBlockDeviceRequest::builder()
                                    .volume_size(d.volume_size_gib.min(i32::MAX as u32) as i32)
                                    .volume_type(t::VolumeType::from(d.volume_type.as_str()))
                                    .set_iops(d.iops.map(|v| v.min(i32::MAX as u32) as i32))
                                    .set_throughput(
                                        d.throughput.map(|v| v.min(i32::MAX as u32) as i32),
                                    )
                                    .encrypted(d.encrypted)
                                    .set_kms_key_id(d.kms_key_id.clone())
                                    .delete_on_termination(d.delete_on_termination)
                                    .build(),
                            )
                            .build()
                    })
                    .collect(),
            ))
            .metadata_options(
                t::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_endpoint(if spec.metadata_options.http_endpoint_enabled {
                        t::LaunchTemplateInstanceMetadataEndpointState::Enabled
                    } else {
                        t::LaunchTemplateInstanceMetadataEndpointState::Disabled
                    })
                    .http_tokens(if spec.metadata_options.http_tokens_required {
                        t::LaunchTemplateHttpTokensState::Required
                    } else {
                        t::LaunchTemplateHttpTokensState::Optional
                    })
                    .http_put_response_hop_limit(
                        spec.metadata_options.http_put_response_hop_limit.min(64) as i32,
                    )
                    .build(),
            )
            .tag_specifications(
                t::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(t::ResourceType::Volume)
                    .set_tags(Some(ec2_tags(&volume_tags)))
                    .build(),
            )
            .build();
        let r = self
            .caller
            .call(Action::CreateLaunchTemplate, 1, || {
                self.ec2
                    .create_launch_template()
                    .launch_template_name(&name)
                    .launch_template_data(data.clone())
                    .tag_specifications(
                        t::TagSpecification::builder()
                            .resource_type(t::ResourceType::LaunchTemplate)
                            .set_tags(Some(ec2_tags(&spec.tags)))
                            .build(),
                    )
                    .send()
                    .map_err_classify()
            })
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.failure.code().contains("AlreadyExists") => {}
            Err(e) => {
                let code = e.failure.code().to_string();
                if code.starts_with("InvalidParameter")
                    || code.starts_with("InvalidIamInstanceProfile")
                {
                    return Err(CloudError::invalid(format!(
                        "launch template {name}: {code}: {}",
                        e.failure.message()
                    )));
                }
                return Err(self.map_err(e));
            }
        }
        self.launch_templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        Ok(name)
    }

    /// Deletes this cluster's templates whose class revision is not live and that were created before
    /// `created_before` (a template without a creation time is kept: it cannot be shown old).
    pub(super) async fn collect_launch_templates(
        &self,
        live: &[ClassRevision],
        created_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, CloudError> {
        let filters = vec![filter(
            &format!("tag:{}", tags::CLUSTER),
            [self.config.cluster_name.clone()],
        )];
        let filters = &filters;
        let pages = all_pages(
            |token| async move {
                self.caller
                    .call(Action::DescribeLaunchTemplates, 1, || {
                        self.ec2
                            .describe_launch_templates()
                            .set_filters(Some(filters.clone()))
                            .set_next_token(token.clone())
                            .send()
                            .map_err_classify()
                    })
                    .await
            },
            |page| page.next_token(),
        )
        .await
        .map_err(|e| self.map_err(e))?;
        let mut stale = Vec::new();
        for page in &pages {
            for lt in page.launch_templates() {
                let tags = tag_map(lt.tags());
                if tags.get(tags::MANAGED).map(String::as_str) != Some("true") {
                    continue;
                }
                let class = ClassRevision {
                    name: tags.get(tags::MACHINE_CLASS).cloned().unwrap_or_default(),
                    revision: tags
                        .get(tags::MACHINE_CLASS_REVISION)
                        .cloned()
                        .unwrap_or_default(),
                };
                let old = lt
                    .create_time()
                    .and_then(to_chrono)
                    .is_some_and(|t| t < created_before);
                if !live.contains(&class) && old {
                    if let (Some(id), Some(name)) =
                        (lt.launch_template_id(), lt.launch_template_name())
                    {
                        stale.push((id.to_string(), name.to_string()));
                    }
                }
            }
        }
        for (id, name) in &stale {
            let r = self
                .caller
                .call(Action::DeleteLaunchTemplate, 1, || {
                    self.ec2
                        .delete_launch_template()
                        .launch_template_id(id)
                        .send()
                        .map_err_classify()
                })
                .await;
            match r {
                Ok(_) => {}
                Err(e) if e.failure.code().contains("NotFound") => {}
                Err(e) => return Err(self.map_err(e)),
            }
            self.launch_templates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
        Ok(stale.len())
    }

    fn launched(
        &self,
        id: String,
        instance_type: String,
        zone: String,
        capacity_type: CapacityType,
        subnet: Option<String>,
    ) -> LaunchedInstance {
        LaunchedInstance {
            instance_id: id,
            instance_type,
            zone,
            region: self.region.clone(),
            capacity_type,
            image_id: String::new(),
            subnet_id: subnet,
            launch_time: self.clock.now(),
        }
    }
}

/// Ids per DescribeInstances by id (a batch with an unknown id is asked again id by id, so keep it modest).
const LOOKUP_BATCH: usize = 100;

/// One describe-by-id's answer.
enum Lookup {
    /// Ids EC2 returned, with their states.
    Found(BTreeMap<String, InstanceState>),
    /// `InvalidInstanceID.NotFound`: at least one id is unknown.
    NotFound,
    /// Another `InvalidInstanceID.*` refusal (malformed): no answer about these ids.
    Refused,
}

fn instance_tag_specs(
    tags: &BTreeMap<String, String>,
    with_volume: bool,
) -> Vec<t::TagSpecification> {
    let mut specs = vec![t::TagSpecification::builder()
        .resource_type(t::ResourceType::Instance)
        .set_tags(Some(ec2_tags(tags)))
        .build()];
    if with_volume {
        specs.push(
            t::TagSpecification::builder()
                .resource_type(t::ResourceType::Volume)
                .set_tags(Some(ec2_tags(tags)))
                .build(),
        );
    }
    specs
}

/// `.map_err_classify()` on an SDK future: turns its error into a [`Failure`].
pub(super) trait ClassifyExt<T, E> {
    fn map_err_classify(self) -> impl std::future::Future<Output = Result<T, Failure>> + Send;
}

impl<F, T, E> ClassifyExt<T, E> for F
where
    F: std::future::Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E>>> + Send,
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    T: Send,
{
    async fn map_err_classify(self) -> Result<T, Failure> {
        self.await.map_err(classify)
    }
}

#[async_trait]
impl FleetApi for AwsCloud {
    async fn create_fleet(&self, call: &FleetCall) -> Result<FleetResponse, CloudError> {
        let overrides: Vec<t::FleetLaunchTemplateOverridesRequest> = call
            .overrides
            .iter()
            .map(|o| {
                t::FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(t::InstanceType::from(o.instance_type.as_str()))
                    .subnet_id(&o.subnet_id)
                    .build()
            })
            .collect();
        let config = t::FleetLaunchTemplateConfigRequest::builder()
            .launch_template_specification(
                t::FleetLaunchTemplateSpecificationRequest::builder()
                    .launch_template_name(&call.launch_template_name)
                    .version("$Latest")
                    .build(),
            )
            .set_overrides(Some(overrides))
            .build();
        let (default_type, spot) = match call.capacity_type {
            CapacityType::Spot => (t::DefaultTargetCapacityType::Spot, true),
            CapacityType::OnDemand => (t::DefaultTargetCapacityType::OnDemand, false),
        };
        let target = t::TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(1)
            .default_target_capacity_type(default_type)
            .build();
        let resp = self
            .caller
            .call(Action::CreateFleet, 1, || {
                let mut b = self
                    .ec2
                    .create_fleet()
                    .r#type(t::FleetType::Instant)
                    .client_token(&call.client_token)
                    .launch_template_configs(config.clone())
                    .target_capacity_specification(target.clone())
                    .set_tag_specifications(Some(instance_tag_specs(&call.tags, true)));
                b = if spot {
                    b.spot_options(
                        t::SpotOptionsRequest::builder()
                            .allocation_strategy(t::SpotAllocationStrategy::PriceCapacityOptimized)
                            .build(),
                    )
                } else {
                    b.on_demand_options(
                        t::OnDemandOptionsRequest::builder()
                            .allocation_strategy(t::FleetOnDemandAllocationStrategy::LowestPrice)
                            .build(),
                    )
                };
                b.send().map_err_classify()
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.failure.code() == "IdempotentParameterMismatch" => {
                return Err(CloudError::IdempotencyConflict {
                    client_token: call.client_token.clone(),
                })
            }
            Err(e)
                if e.failure.code().contains("LaunchTemplate")
                    && e.failure.code().contains("NotFound") =>
            {
                // Deleted behind berth's back: forget it so the next launch creates it again.
                self.launch_templates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&call.launch_template_name);
                return Err(CloudError::Transient {
                    action: "CreateFleet",
                    message: format!("launch template {} disappeared", call.launch_template_name),
                });
            }
            Err(e) if is_capacity_error(e.failure.code()) => {
                // The whole request refused for capacity: every override failed.
                let code = e.failure.code().to_string();
                let message = e.failure.message().to_string();
                return Ok(FleetResponse {
                    instances: vec![],
                    errors: call
                        .overrides
                        .iter()
                        .map(|o| OfferingFailure {
                            offering: o.offering(call.capacity_type),
                            code: code.clone(),
                            message: message.clone(),
                        })
                        .collect(),
                });
            }
            Err(e) => return Err(self.map_err(e)),
        };
        let zone_of = |subnet: Option<&str>, az: Option<&str>| -> Option<String> {
            az.map(str::to_string).or_else(|| {
                let s = subnet?;
                call.overrides
                    .iter()
                    .find(|o| o.subnet_id == s)
                    .map(|o| o.zone.clone())
            })
        };
        let mut out = FleetResponse::default();
        for inst in resp.instances() {
            let ov = inst
                .launch_template_and_overrides()
                .and_then(|l| l.overrides());
            let subnet = inst.subnet_id().or_else(|| ov.and_then(|o| o.subnet_id()));
            let az = inst
                .availability_zone()
                .or_else(|| ov.and_then(|o| o.availability_zone()));
            let Some(zone) = zone_of(subnet, az) else {
                continue;
            };
            let itype = inst
                .instance_type()
                .or_else(|| ov.and_then(|o| o.instance_type()))
                .map(|t| t.as_str().to_string())
                .unwrap_or_default();
            let capacity_type = match inst.lifecycle() {
                Some(t::InstanceLifecycle::Spot) => CapacityType::Spot,
                Some(t::InstanceLifecycle::OnDemand) => CapacityType::OnDemand,
                _ => call.capacity_type,
            };
            for id in inst.instance_ids() {
                out.instances.push(self.launched(
                    id.clone(),
                    itype.clone(),
                    zone.clone(),
                    capacity_type,
                    subnet.map(str::to_string),
                ));
            }
        }
        for err in resp.errors() {
            let ov = err
                .launch_template_and_overrides()
                .and_then(|l| l.overrides());
            let itype = ov
                .and_then(|o| o.instance_type())
                .map(|t| t.as_str().to_string());
            let zone = zone_of(
                ov.and_then(|o| o.subnet_id()),
                ov.and_then(|o| o.availability_zone()),
            );
            let code = err.error_code().unwrap_or("Unknown").to_string();
            let message = err.error_message().unwrap_or("").to_string();
            match (itype, zone) {
                (Some(instance_type), Some(zone)) => out.errors.push(OfferingFailure {
                    offering: OfferingKey {
                        instance_type,
                        zone,
                        capacity_type: call.capacity_type,
                    },
                    code,
                    message,
                }),
                // An error not tied to one override applies to all of them.
                _ => out
                    .errors
                    .extend(call.overrides.iter().map(|o| OfferingFailure {
                        offering: o.offering(call.capacity_type),
                        code: code.clone(),
                        message: message.clone(),
                    })),
            }
        }
        Ok(out)
    }

    async fn run_instances(&self, call: &RunCall) -> Result<LaunchedInstance, CloudError> {
        let o = &call.offering;
        let resp = self
            .caller
            .call(Action::RunInstances, 1, || {
                let mut b = self
                    .ec2
                    .run_instances()
                    .client_token(&call.client_token)
                    .min_count(1)
                    .max_count(1)
                    .launch_template(
                        t::LaunchTemplateSpecification::builder()
                            .launch_template_name(&call.launch_template_name)
                            .version("$Latest")
                            .build(),
                    )
                    .instance_type(t::InstanceType::from(o.instance_type.as_str()))
                    .subnet_id(&o.subnet_id)
                    .set_tag_specifications(Some(instance_tag_specs(&call.tags, true)));
                if call.capacity_type == CapacityType::Spot {
                    b = b.instance_market_options(
                        t::InstanceMarketOptionsRequest::builder()
                            .market_type(t::MarketType::Spot)
                            .build(),
                    );
                }
                b.send().map_err_classify()
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.failure.code() == "IdempotentParameterMismatch" => {
                return Err(CloudError::IdempotencyConflict {
                    client_token: call.client_token.clone(),
                })
            }
            Err(e) if is_capacity_error(e.failure.code()) => {
                return Err(CloudError::InsufficientCapacity {
                    offerings: vec![OfferingFailure {
                        offering: o.offering(call.capacity_type),
                        code: e.failure.code().to_string(),
                        message: e.failure.message().to_string(),
                    }],
                })
            }
            Err(e) => return Err(self.map_err(e)),
        };
        let i = resp.instances().first().ok_or_else(|| CloudError::Api {
            action: "RunInstances",
            code: "EmptyResponse".into(),
            message: "no instance in the answer".into(),
        })?;
        let mut l = self.launched(
            i.instance_id().unwrap_or_default().to_string(),
            i.instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| o.instance_type.clone()),
            i.placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_string)
                .unwrap_or_else(|| o.zone.clone()),
            call.capacity_type,
            Some(o.subnet_id.clone()),
        );
        l.image_id = i.image_id().unwrap_or_default().to_string();
        if let Some(t) = i.launch_time().and_then(to_chrono) {
            l.launch_time = t;
        }
        Ok(l)
    }

    async fn find_machine_instance(
        &self,
        machine_uid: &str,
    ) -> Result<Option<Instance>, CloudError> {
        let found = self
            .describe_cluster_instances(vec![filter(
                &format!("tag:{}", tags::MACHINE_UID),
                [machine_uid],
            )])
            .await?;
        Ok(found.into_iter().next())
    }
}

/// Every page of a paged EC2 call: `fetch` gets the page after a token (None: the first), `next_of` reads a page's
/// next token (absent or empty: the last page). The first failure ends it.
async fn all_pages<P, E, F, Fut>(
    mut fetch: F,
    next_of: impl Fn(&P) -> Option<&str>,
) -> Result<Vec<P>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<P, E>>,
{
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = fetch(token.take()).await?;
        token = next_of(&page).filter(|t| !t.is_empty()).map(str::to_string);
        pages.push(page);
        if token.is_none() {
            return Ok(pages);
        }
    }
}
