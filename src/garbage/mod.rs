//! Garbage collection: what a crash or a race leaves behind, as a pure function of plain data.
//!
//! Two decisions, both over what the collector just observed:
//!
//! - **Stray instances** ([`plan_instances`]): instances tagged as this cluster's that no Machine owns, older than
//!   [`GarbageSettings::instance_grace`] after their launch, are terminated. An instance is owned when its
//!   `berth.dev/machine-uid` tag names a Machine that exists (with or without a status: the Machine controller
//!   adopts its instance by that tag), or when a Machine's status records its id or provider ID. An instance of an
//!   Auto Scaling group (`aws:autoscaling:groupName`) is the group's, never the collector's; one in another
//!   cluster's name, or whose launch time is unknown, is never touched.
//! - **Orphaned Nodes** ([`nodes_to_look_up`], then [`plan_nodes`]): a Node whose provider ID is an EC2 instance
//!   (`aws:///<zone>/i-...`) in this provider's region, that no Machine owns (no Machine's `status.providerID` or
//!   `status.nodeRef` names it), and whose instance EC2 positively reports gone (terminated, or unknown when asked
//!   by id) is deleted once it has been seen gone for [`GarbageSettings::node_grace`]. A Node without a provider
//!   ID, with another cloud's, or in another region is never touched. An instance missing from the cluster's
//!   tag-filtered listing proves nothing (a managed node group's instances carry no berth tag), so the instance
//!   is looked up by id.
//!
//! "Seen gone since" lives in the caller's memory, like the disruption planner's underutilization clock: a restart
//! starts it again, which delays a deletion by one grace and never causes one.
//!
//! The caller must observe in this order: the instances first, then the Machines through a quorum list. Every
//! instance in the listing was then launched before the Machine list was read, so its Machine (created before its
//! launch) is in the list unless it was deleted.

#[cfg(test)]
mod tests;

use crate::cloud::{tags, Instance, InstanceLookup};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// Auto Scaling's own tag on the instances of a group.
pub const ASG_GROUP_TAG: &str = "aws:autoscaling:groupName";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GarbageError {
    #[error("garbage collection settings: {field} must be positive")]
    InvalidSettings { field: &'static str },
}

/// How long things must have been garbage before they are collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarbageSettings {
    /// After an instance's launch time. Ownership is decided by Machine uid and a fresh Machine list, so this
    /// does not cover the window between a launch call and the Machine's status write (the uid tag covers it); it
    /// covers what a fresh list cannot: EC2's eventual consistency (a just-launched instance's tags or state may
    /// lag for seconds), the skew between EC2's clock and ours, and a Machine created by hand or by a tool that
    /// tags before it creates. Karpenter uses 30 s; berth's default is two minutes, since a stray instance costs
    /// cents per minute and a wrong termination costs a node.
    pub instance_grace: chrono::Duration,
    /// How long a Node's instance must have been seen gone. cloud-controller-manager's node lifecycle controller
    /// usually deletes such Nodes first; berth is the backstop for clusters without it. The default (one minute,
    /// less than the collector's period) means "gone in two rounds in a row".
    pub node_grace: chrono::Duration,
    /// After a launch template's creation: a template made for a launch in flight may be of a class revision the
    /// collector has not read yet.
    pub launch_template_grace: chrono::Duration,
}

impl Default for GarbageSettings {
    fn default() -> Self {
        GarbageSettings {
            instance_grace: chrono::Duration::minutes(2),
            node_grace: chrono::Duration::minutes(1),
            launch_template_grace: chrono::Duration::minutes(10),
        }
    }
}

impl GarbageSettings {
    pub fn validate(&self) -> Result<(), GarbageError> {
        for (field, d) in [
            ("instance_grace", self.instance_grace),
            ("node_grace", self.node_grace),
            ("launch_template_grace", self.launch_template_grace),
        ] {
            if d <= chrono::Duration::zero() {
                return Err(GarbageError::InvalidSettings { field });
            }
        }
        Ok(())
    }
}

/// A Machine as the collector reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineView {
    pub uid: String,
    pub instance_id: Option<String>,
    pub provider_id: Option<String>,
    pub node_name: Option<String>,
}

/// A Node as the collector reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub uid: String,
    pub provider_id: Option<String>,
    /// Already being deleted.
    pub deleting: bool,
}

/// Why an instance was kept (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceKept {
    OtherCluster,
    AutoScalingGroup,
    Terminating,
    /// Its uid tag names an existing Machine, or a Machine's status records it.
    Owned,
    LaunchTimeUnknown,
    Young,
}

/// An instance to terminate, with the reason for the log line and the Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayInstance {
    pub instance_id: String,
    /// The Machine its tags name (`namespace/name`), if any.
    pub machine: Option<String>,
    pub launched: DateTime<Utc>,
}

impl StrayInstance {
    pub fn message(&self) -> String {
        match &self.machine {
            Some(m) => format!(
                "Terminating stray instance {} launched {} for Machine {m}, which no longer exists",
                self.instance_id,
                self.launched.to_rfc3339()
            ),
            None => format!(
                "Terminating stray instance {} launched {}: it carries this cluster's tag but no Machine's",
                self.instance_id,
                self.launched.to_rfc3339()
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancePlan {
    pub terminate: Vec<StrayInstance>,
    pub kept: BTreeMap<String, InstanceKept>,
}

/// The instances to terminate among `instances` (the cluster's tag-filtered listing).
pub fn plan_instances(
    cluster_name: &str,
    instances: &[Instance],
    machines: &[MachineView],
    settings: &GarbageSettings,
    now: DateTime<Utc>,
) -> InstancePlan {
    let uids: BTreeSet<&str> = machines.iter().map(|m| m.uid.as_str()).collect();
    let recorded: BTreeSet<&str> = machines
        .iter()
        .flat_map(|m| {
            m.instance_id
                .as_deref()
                .into_iter()
                .chain(m.provider_id.as_deref().and_then(instance_of_provider_id))
        })
        .collect();
    let mut plan = InstancePlan::default();
    for i in instances {
        let kept = if i.tags.get(tags::CLUSTER).map(String::as_str) != Some(cluster_name) {
            Some(InstanceKept::OtherCluster)
        } else if i.tags.contains_key(ASG_GROUP_TAG) {
            Some(InstanceKept::AutoScalingGroup)
        } else if i.state.is_terminal() {
            Some(InstanceKept::Terminating)
        } else if recorded.contains(i.instance_id.as_str())
            || i.tags
                .get(tags::MACHINE_UID)
                .is_some_and(|uid| uids.contains(uid.as_str()))
        {
            Some(InstanceKept::Owned)
        } else {
            match i.launch_time {
                None => Some(InstanceKept::LaunchTimeUnknown),
                Some(t) if now - t < settings.instance_grace => Some(InstanceKept::Young),
                Some(_) => None,
            }
        };
        match kept {
            Some(k) => {
                plan.kept.insert(i.instance_id.clone(), k);
            }
            None => plan.terminate.push(StrayInstance {
                instance_id: i.instance_id.clone(),
                machine: i.machine().map(|m| format!("{}/{}", m.namespace, m.name)),
                launched: i.launch_time.unwrap_or(now),
            }),
        }
    }
    plan
}

/// The instance id of an EC2 provider ID `aws:///<zone>/i-...`; None for anything else.
pub fn instance_of_provider_id(provider_id: &str) -> Option<&str> {
    parse_provider_id(provider_id).map(|(_, id)| id)
}

/// `(zone, instance id)` of an EC2 provider ID `aws:///<zone>/i-...`.
pub fn parse_provider_id(provider_id: &str) -> Option<(&str, &str)> {
    let rest = provider_id.strip_prefix("aws:///")?;
    let (zone, id) = rest.split_once('/')?;
    let valid_id =
        id.len() > 2 && id.starts_with("i-") && id[2..].chars().all(|c| c.is_ascii_hexdigit());
    (!zone.is_empty() && valid_id).then_some((zone, id))
}

/// Nodes that may be orphans: an EC2 provider ID in `region`, not being deleted, no Machine owns them. Node name →
/// instance id.
fn orphan_candidates(
    region: &str,
    nodes: &[NodeView],
    machines: &[MachineView],
) -> BTreeMap<String, String> {
    let owned_providers: BTreeSet<&str> = machines
        .iter()
        .filter_map(|m| m.provider_id.as_deref())
        .collect();
    let owned_nodes: BTreeSet<&str> = machines
        .iter()
        .filter_map(|m| m.node_name.as_deref())
        .collect();
    let owned_instances: BTreeSet<&str> = machines
        .iter()
        .filter_map(|m| m.instance_id.as_deref())
        .collect();
    nodes
        .iter()
        .filter(|n| !n.deleting && !owned_nodes.contains(n.name.as_str()))
        .filter_map(|n| {
            let provider = n.provider_id.as_deref()?;
            let (zone, id) = parse_provider_id(provider)?;
            let in_region = !region.is_empty() && zone.starts_with(region);
            (in_region && !owned_providers.contains(provider) && !owned_instances.contains(id))
                .then(|| (n.name.clone(), id.to_string()))
        })
        .collect()
}

/// The instance ids to ask EC2 about by id: those of the Nodes that may be orphans.
pub fn nodes_to_look_up(region: &str, nodes: &[NodeView], machines: &[MachineView]) -> Vec<String> {
    let ids: BTreeSet<String> = orphan_candidates(region, nodes, machines)
        .into_values()
        .collect();
    ids.into_iter().collect()
}

/// A Node to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanNode {
    pub name: String,
    pub uid: String,
    pub instance_id: String,
    pub gone_since: DateTime<Utc>,
}

impl OrphanNode {
    pub fn message(&self) -> String {
        format!(
            "Deleting Node {}: its instance {} is gone (since {}) and no Machine owns it",
            self.name,
            self.instance_id,
            self.gone_since.to_rfc3339()
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub delete: Vec<OrphanNode>,
    /// Node name → when its instance was first seen gone: the caller keeps it for the next round.
    pub gone_since: BTreeMap<String, DateTime<Utc>>,
}

/// The Nodes to delete, given EC2's answers about their instances (`lookups`) and the previous round's
/// `gone_since`. A Node whose instance got no answer keeps no clock and is not deleted.
pub fn plan_nodes(
    region: &str,
    nodes: &[NodeView],
    machines: &[MachineView],
    lookups: &BTreeMap<String, InstanceLookup>,
    previous_gone_since: &BTreeMap<String, DateTime<Utc>>,
    settings: &GarbageSettings,
    now: DateTime<Utc>,
) -> NodePlan {
    let uids: BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.uid.as_str()))
        .collect();
    let mut plan = NodePlan::default();
    for (name, instance_id) in orphan_candidates(region, nodes, machines) {
        let gone = lookups.get(&instance_id).is_some_and(|l| l.is_gone());
        if !gone {
            continue;
        }
        let since = previous_gone_since.get(&name).copied().unwrap_or(now);
        // Kept for deleted ones too: a failed deletion is retried next round without a new grace.
        plan.gone_since.insert(name.clone(), since);
        if now - since >= settings.node_grace {
            plan.delete.push(OrphanNode {
                uid: uids
                    .get(name.as_str())
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                name,
                instance_id,
                gone_since: since,
            });
        }
    }
    plan
}
