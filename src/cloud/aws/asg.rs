//! Auto Scaling groups as node groups: discovered by the tags `berth.dev/enabled=true` and
//! `berth.dev/cluster=<cluster>`, sized with SetDesiredCapacity, shrunk one instance at a time with
//! TerminateInstanceInAutoScalingGroup and a decrement. Only discovered groups are ever changed; that check also
//! keeps berth from asking moto (which answers HTTP 500) or AWS about groups that do not exist.

use super::ec2::ClassifyExt;
use super::AwsCloud;
use crate::cloud::action::Action;
use crate::cloud::error::CloudError;
use crate::cloud::{tags, NodeGroup, NodeGroupInstance};
use aws_sdk_autoscaling::types as t;
use std::collections::{BTreeMap, BTreeSet};

impl AwsCloud {
    /// Discovered groups, all of them or the one named.
    pub(super) async fn discover_node_groups(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<NodeGroup>, CloudError> {
        let filters = vec![
            t::Filter::builder()
                .name(format!("tag:{}", tags::ASG_ENABLED))
                .values("true")
                .build(),
            t::Filter::builder()
                .name(format!("tag:{}", tags::CLUSTER))
                .values(&self.config.cluster_name)
                .build(),
        ];
        let mut groups = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let token = next.clone();
            let page = self
                .caller
                .call(Action::DescribeAutoScalingGroups, 1, || {
                    let mut b = self
                        .asg
                        .describe_auto_scaling_groups()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token.clone());
                    if let Some(name) = only {
                        b = b.auto_scaling_group_names(name);
                    }
                    b.send().map_err_classify()
                })
                .await
                .map_err(|e| e.into_cloud_error())?;
            groups.extend(page.auto_scaling_groups().iter().cloned());
            next = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        let mut out = Vec::new();
        for g in groups {
            let tags: BTreeMap<String, String> = g
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
                .collect();
            // The filter is applied by AWS; checked again so a server that ignores filters cannot widen berth's reach.
            if tags.get(tags::ASG_ENABLED).map(String::as_str) != Some("true")
                || tags.get(tags::CLUSTER) != Some(&self.config.cluster_name)
            {
                continue;
            }
            let instance_types = self.group_instance_types(&g).await?;
            out.push(NodeGroup {
                name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
                min_size: g.min_size().unwrap_or(0).max(0) as u32,
                max_size: g.max_size().unwrap_or(0).max(0) as u32,
                desired_capacity: g.desired_capacity().unwrap_or(0).max(0) as u32,
                instance_types,
                zones: g.availability_zones().to_vec(),
                instances: g
                    .instances()
                    .iter()
                    .map(|i| NodeGroupInstance {
                        instance_id: i.instance_id().unwrap_or_default().to_string(),
                        instance_type: i.instance_type().map(str::to_string),
                        zone: i.availability_zone().unwrap_or_default().to_string(),
                        lifecycle_state: i
                            .lifecycle_state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                    })
                    .collect(),
                tags,
            });
        }
        Ok(out)
    }

    /// The mixed-instances policy's overrides, else the launch template's instance type.
    async fn group_instance_types(
        &self,
        g: &t::AutoScalingGroup,
    ) -> Result<Vec<String>, CloudError> {
        if let Some(lt) = g.mixed_instances_policy().and_then(|m| m.launch_template()) {
            let types: BTreeSet<String> = lt
                .overrides()
                .iter()
                .filter_map(|o| o.instance_type().map(str::to_string))
                .collect();
            if !types.is_empty() {
                return Ok(types.into_iter().collect());
            }
        }
        let spec = g.launch_template().or_else(|| {
            g.mixed_instances_policy()
                .and_then(|m| m.launch_template())
                .and_then(|l| l.launch_template_specification())
        });
        let Some(spec) = spec else {
            return Ok(Vec::new());
        };
        let (id, name) = (
            spec.launch_template_id().map(str::to_string),
            spec.launch_template_name().map(str::to_string),
        );
        let version = spec.version().unwrap_or("$Default").to_string();
        let resp = self
            .caller
            .call(Action::DescribeLaunchTemplateVersions, 1, || {
                self.ec2
                    .describe_launch_template_versions()
                    .set_launch_template_id(id.clone())
                    .set_launch_template_name(if id.is_some() { None } else { name.clone() })
                    .versions(version.clone())
                    .send()
                    .map_err_classify()
            })
            .await;
        match resp {
            Ok(r) => Ok(r
                .launch_template_versions()
                .iter()
                .filter_map(|v| {
                    v.launch_template_data()?
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                })
                .collect()),
            // A group whose template is gone still exists; it just has no known instance type.
            Err(e) if e.failure.code().contains("NotFound") => Ok(Vec::new()),
            Err(e) => Err(e.into_cloud_error()),
        }
    }

    async fn discovered(&self, group: &str) -> Result<NodeGroup, CloudError> {
        self.discover_node_groups(Some(group))
            .await?
            .into_iter()
            .find(|g| g.name == group)
            .ok_or_else(|| CloudError::NotFound {
                what: format!(
                    "Auto Scaling group {group} tagged {}=true and {}={}",
                    tags::ASG_ENABLED,
                    tags::CLUSTER,
                    self.config.cluster_name
                ),
            })
    }

    pub(super) async fn set_desired(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        let g = self.discovered(group).await?;
        if desired < g.min_size || desired > g.max_size {
            return Err(CloudError::invalid(format!(
                "desired capacity {desired} of {group} is outside its bounds {}..={}",
                g.min_size, g.max_size
            )));
        }
        self.caller
            .call(Action::SetDesiredCapacity, 1, || {
                self.asg
                    .set_desired_capacity()
                    .auto_scaling_group_name(group)
                    .desired_capacity(desired.min(i32::MAX as u32) as i32)
                    .honor_cooldown(false)
                    .send()
                    .map_err_classify()
            })
            .await
            .map_err(|e| e.into_cloud_error())?;
        Ok(())
    }

    pub(super) async fn terminate_in_group(
        &self,
        group: &str,
        instance_id: &str,
    ) -> Result<(), CloudError> {
        let g = self.discovered(group).await?;
        if !g.instances.iter().any(|i| i.instance_id == instance_id) {
            return Err(CloudError::NotFound {
                what: format!("instance {instance_id} in Auto Scaling group {group}"),
            });
        }
        if g.desired_capacity == 0 || g.desired_capacity - 1 < g.min_size {
            return Err(CloudError::invalid(format!(
                "terminating {instance_id} with a decrement would take {group} below its minimum size {}",
                g.min_size
            )));
        }
        self.caller
            .call(Action::TerminateInstanceInAutoScalingGroup, 1, || {
                self.asg
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(instance_id)
                    .should_decrement_desired_capacity(true)
                    .send()
                    .map_err_classify()
            })
            .await
            .map_err(|e| e.into_cloud_error())?;
        Ok(())
    }
}
