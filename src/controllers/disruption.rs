//! The disruption controller: scale-down, consolidation and at-risk nodes, over the pure `disruption::plan`.
//!
//! Every `interval` it reads the cluster from the autoscaler's shared caches (`state::cluster`; listing every pod
//! through the API each round cost seconds of CPU in a 30,000-pod cluster), finishes consolidations whose replacement is Ready,
//! plans, waits `validation_delay`, observes and plans again, and applies only the decisions both plans made (a pod
//! scheduled or a node added in between cancels a decision rather than racing it).
//!
//! Applying a deletion: the Machine is annotated `berth.dev/delete-machine` (the MachineSet's deletion order takes
//! it first), then its MachineDeployment's `spec.replicas` goes down by one (never below
//! `autoscaling.minReplicas`); the Machine controller then cordons, drains through evictions (PDBs apply) and
//! terminates. Annotating first is what makes a crash safe: a lost decrement leaves a marked Machine that the next
//! scale-down removes, never a random one.
//!
//! Applying a replacement: the replacement's group gets `replicas + 1`, a launch shape (only instance types that
//! keep it cheaper) and `berth.dev/last-scale-up` in one patch (it is a scale-up: the delay after it keeps the new,
//! still empty node from being taken for an empty one before the old nodes' pods arrive), then the old Machines are annotated `berth.dev/replaced-by` with the shape id and
//! the time. A later round, reading only objects, deletes them once the Machine created for that shape is Running
//! (its Node Ready), or gives up (removes the annotation) when that Machine failed or never came within
//! `replacement_timeout`; the surplus node, if any, is then empty and goes the ordinary way.
//!
//! At-risk Machines (`berth.dev/at-risk`, written by the interruption controller for a rebalance recommendation on
//! a `Replace` class or a scheduled change) take the same two paths with the reasons `rebalance_recommended` and
//! `scheduled_change` (the metric's labels and the Events' reasons `RebalanceRecommended`, `ScheduledChange`): a
//! deletion when their pods fit elsewhere, else a replacement first, the old Machine drained only once the new one
//! is Running, within the group's budget (a Machine waiting for its replacement counts against it). An abandoned
//! replacement (`ReplacementAbandoned`) unmarks the Machine; its at-risk mark stays, so it is planned again.
//!
//! Auto Scaling groups (berth-enabled, discovered through the cloud each round) shrink too: their empty and
//! underutilized nodes are candidates (never replaced, see `GroupState::replaceable`), within the group's minimum
//! size and the default one-node-at-a-time budget. There is no Machine to carry the drain, so the controller does
//! it: the Node is cordoned and marked (`berth.dev/disruption-reason`, `berth.dev/drain-started`) in one patch, and
//! each later round evicts its pods through the Eviction API (PodDisruptionBudgets apply: a refused eviction is
//! tried again next round) and, once none is left, calls TerminateInstanceInAutoScalingGroup with the desired
//! capacity decremented. The mark makes it crash safe (a restarted berth carries on with the marked Node) and
//! counts against the group's budget. A drain that has not finished after `drain_timeout` is abandoned: the Node is
//! uncordoned and unmarked, as is one whose group would go below its minimum.
//!
//! The underutilization clock (`node → first seen underutilized`) lives in memory only: a restart starts it again,
//! which can delay a scale-down but never cause one.

use super::events::EventKind;
use super::{keys, stable_hash, Context, ControllerError};
use crate::api::launch_shapes::{read_shape_queue, LaunchShapeEntry};
use crate::api::machine_class::CapacityTypeSpec;
use crate::api::{
    Cluster, Machine, MachineDeployment, MachinePhase, MachineShape, DELETE_MACHINE_ANNOTATION,
};
use crate::cloud::{CloudProvider, NodeGroup};
use crate::disruption::{plan, Command, DisruptionInput, DisruptionPlan, Reason};
use crate::model::instance_type::{CapacityType, Catalog};
use crate::state::cluster::{ClusterCache, ClusterObjects};
use crate::state::disruption::build;
use crate::state::snapshot::{PodReadings, ASG_GROUP_PREFIX};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{EvictParams, ListParams};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "disruption";

#[derive(Debug, Clone)]
pub struct DisruptionConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// Time between the first plan and the confirming one.
    pub validation_delay: Duration,
    /// How long old nodes wait for their replacement before the consolidation is abandoned.
    pub replacement_timeout: chrono::Duration,
    /// The Cluster object whose `spec.clusterName` this is supplies the policy (empty: the first Cluster).
    pub cluster_name: String,
    /// How long an Auto Scaling group node's drain may take before berth gives up and uncordons it.
    pub drain_timeout: chrono::Duration,
}

impl Default for DisruptionConfig {
    fn default() -> Self {
        DisruptionConfig {
            interval: Duration::from_secs(10),
            validation_delay: Duration::from_secs(5),
            replacement_timeout: chrono::Duration::minutes(15),
            cluster_name: String::new(),
            drain_timeout: chrono::Duration::minutes(15),
        }
    }
}

/// The value of `berth.dev/replaced-by`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingReplacement {
    /// The launch-shape id the replacement Machine carries (`berth.dev/shape-id`).
    pub shape: String,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// Runs rounds until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    cache: ClusterCache,
    catalog: Arc<Catalog>,
    config: DisruptionConfig,
    cloud: Option<Arc<dyn CloudProvider>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(mut every) =
        super::Periodic::start(&cache, CONTROLLER, config.interval, shutdown).await
    else {
        return;
    };
    let mut rounds = Rounds::default();
    while every.tick().await {
        let round = round(
            &ctx,
            &cache,
            &catalog,
            &config,
            cloud.as_deref(),
            &mut rounds,
        );
        if !every.pass(&ctx, round).await {
            return;
        }
    }
}

/// Karpenter's "consolidated" state: what the controller remembers between rounds.
#[derive(Default)]
struct Rounds {
    /// The underutilization clock of the last plan.
    since: BTreeMap<String, DateTime<Utc>>,
    /// The input of the last plan that found nothing to do, and until when the clock cannot change its answer: a
    /// round that observes the same input before then skips planning (dozens of what-if solves at steady state).
    quiet: Option<(DisruptionInput, DateTime<Utc>)>,
    /// Pod readings kept from one round to the next (most pods do not change between two rounds).
    readings: PodReadings,
    /// The Auto Scaling groups as last read, and when: see [`GROUPS_MAX_AGE`].
    auto_scaling_groups: Option<(DateTime<Utc>, Vec<crate::cloud::NodeGroup>)>,
}

/// How long a read of the Auto Scaling groups serves the rounds. Groups change rarely and their nodes are scale-down
/// candidates only after minutes of underutilization, while a read every 10 s round is 360 DescribeAutoScalingGroups
/// calls an hour against a bucket the provisioner needs for scale-ups. A group drain in progress reads afresh.
const GROUPS_MAX_AGE: chrono::Duration = chrono::Duration::seconds(60);

/// The berth-enabled Auto Scaling groups, from the last read while it is younger than [`GROUPS_MAX_AGE`] and
/// `fresh` is false, else read now. When they cannot be read, their nodes are neither planned nor drained further
/// this round (they are then only places pods may go).
async fn read_groups(
    cloud: Option<&dyn CloudProvider>,
    rounds: &mut Rounds,
    now: DateTime<Utc>,
    fresh: bool,
) -> Vec<NodeGroup> {
    let Some(cloud) = cloud else {
        return Vec::new();
    };
    if let Some((at, groups)) = &rounds.auto_scaling_groups {
        if now - *at < GROUPS_MAX_AGE && !fresh {
            return groups.clone();
        }
    }
    match cloud.node_groups().await {
        Ok(groups) => {
            rounds.auto_scaling_groups = Some((now, groups.clone()));
            groups
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the Auto Scaling groups: their nodes are left alone this round");
            rounds.auto_scaling_groups = None;
            Vec::new()
        }
    }
}

/// How long a quiet answer stands at most, whatever the input: a safety net, not a rule.
const QUIET_AT_MOST: chrono::Duration = chrono::Duration::minutes(5);

/// The cached objects, and the Cluster whose policy applies.
fn observe(cache: &ClusterCache, config: &DisruptionConfig) -> (ClusterObjects, Option<Cluster>) {
    let objects = cache.objects();
    let name = Some(config.cluster_name.as_str()).filter(|n| !n.is_empty());
    let cluster = objects.cluster(name).cloned();
    (objects, cluster)
}

/// What one observation gave: the objects, each group's namespace, and the plan.
type Planned = (ClusterObjects, BTreeMap<String, String>, DisruptionPlan);

/// Observes and plans; None when there is no Cluster to take a policy from, the policy is invalid, or the input is
/// the one a quiet plan was made of and the clock has not moved past what that plan waited for.
fn observe_and_plan(
    ctx: &Context,
    cache: &ClusterCache,
    catalog: &Catalog,
    config: &DisruptionConfig,
    auto_scaling_groups: &[NodeGroup],
    rounds: &mut Rounds,
) -> Result<Option<Planned>, ControllerError> {
    let (objects, cluster) = observe(cache, config);
    let Some(cluster) = cluster else {
        tracing::debug!("no Cluster object: nothing to scale down");
        return Ok(None);
    };
    // An invalid Cluster is reported by the Cluster controller (a condition and an Event); nothing is removed for it.
    if !crate::state::cluster_check::problems(&cluster.spec).is_empty() {
        tracing::debug!("the Cluster is invalid: nothing to scale down");
        return Ok(None);
    }
    let now = ctx.clock.now();
    let built = match build(
        &objects,
        Some(&cluster),
        catalog,
        auto_scaling_groups,
        &rounds.since,
        now,
        &mut rounds.readings,
    ) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the scale-down policy");
            return Ok(None);
        }
    };
    for p in &built.problems {
        tracing::warn!(object = %p.object, problem = %p.message, "disruption input");
    }
    if let Some((input, until)) = &rounds.quiet {
        if now < *until && *input == built.input {
            return Ok(None);
        }
    }
    let plan = plan(&built.input, catalog, now);
    rounds.since = plan.underutilized_since.clone();
    rounds.quiet = plan.commands.is_empty().then(|| {
        let until = plan
            .revisit_at
            .map_or(now + QUIET_AT_MOST, |t| t.min(now + QUIET_AT_MOST));
        (built.input, until)
    });
    Ok(Some((objects, built.namespaces, plan)))
}

async fn round(
    ctx: &Context,
    cache: &ClusterCache,
    catalog: &Catalog,
    config: &DisruptionConfig,
    cloud: Option<&dyn CloudProvider>,
    rounds: &mut Rounds,
) -> Result<(), ControllerError> {
    let (objects, _) = observe(cache, config);
    finish_replacements(ctx, &objects, config).await?;
    let now = ctx.clock.now();
    let draining = objects
        .nodes
        .iter()
        .any(|n| n.annotations().contains_key(keys::DRAIN_STARTED));
    let mut auto_scaling_groups = read_groups(cloud, rounds, now, draining).await;
    if let Some(c) = cloud {
        let terminated =
            finish_group_drains(ctx, c, &objects, &auto_scaling_groups, config).await?;
        if terminated {
            // The sizes just read are stale: planning on them would see a group one node larger than it is, pick
            // another of its nodes and cordon it, only for the termination to be refused at the group's minimum.
            auto_scaling_groups = read_groups(cloud, rounds, now, true).await;
        }
    }
    if draining {
        // A drain may end in a termination next round too: that round reads the groups' sizes afresh.
        rounds.auto_scaling_groups = None;
    }

    let Some((_, _, first)) =
        observe_and_plan(ctx, cache, catalog, config, &auto_scaling_groups, rounds)?
    else {
        return Ok(());
    };
    for k in &first.kept {
        tracing::debug!(node = %k.node, kept = k.blocker.as_str(), why = %k.blocker, "node kept");
    }
    if first.commands.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(config.validation_delay).await;
    let Some((objects, namespaces, second)) =
        observe_and_plan(ctx, cache, catalog, config, &auto_scaling_groups, rounds)?
    else {
        return Ok(());
    };
    for command in second
        .commands
        .iter()
        .filter(|c| first.commands.iter().any(|f| f.same_decision(c)))
    {
        ctx.metrics
            .disruption_decisions
            .with_label_values(&[command.reason().as_str()])
            .inc();
        tracing::info!(reason = command.reason().as_str(), nodes = ?command.nodes(), "{}", command.message());
        match command {
            Command::Delete {
                node,
                group,
                reason,
                ..
            } if group.starts_with(ASG_GROUP_PREFIX) => {
                start_group_drain(ctx, &objects, node, *reason, &command.message()).await?;
            }
            Command::Delete {
                node,
                machine,
                group,
                reason,
                ..
            } => {
                let Some(namespace) = namespaces.get(group) else {
                    continue;
                };
                delete_machines(
                    ctx,
                    namespace,
                    group,
                    std::slice::from_ref(machine),
                    *reason,
                )
                .await?;
                publish(
                    ctx,
                    &objects,
                    std::slice::from_ref(node),
                    std::slice::from_ref(group),
                    namespace,
                    EventKind::Normal,
                    event_reason(*reason),
                    &command.message(),
                );
            }
            Command::Replace {
                nodes,
                machines,
                groups,
                replacement,
                reason,
                ..
            } => {
                let Some(namespace) = namespaces.get(&replacement.group) else {
                    continue;
                };
                start_replacement(ctx, &objects, namespace, replacement, machines, *reason).await?;
                let mut all_groups = groups.clone();
                all_groups.push(replacement.group.clone());
                all_groups.sort();
                all_groups.dedup();
                publish(
                    ctx,
                    &objects,
                    nodes,
                    &all_groups,
                    namespace,
                    EventKind::Normal,
                    event_reason(*reason),
                    &command.message(),
                );
            }
        }
    }
    Ok(())
}

fn event_reason(reason: Reason) -> &'static str {
    match reason {
        Reason::Empty => "NodeEmpty",
        Reason::Underutilized => "NodeUnderutilized",
        Reason::ConsolidationSingle | Reason::ConsolidationMulti => "Consolidation",
        // As the interruption controller's Event on the Machine that marked it at risk.
        Reason::RebalanceRecommended => "RebalanceRecommended",
        Reason::ScheduledChange => "ScheduledChange",
    }
}

/// The decision's Event on each Node and each MachineDeployment concerned.
#[allow(clippy::too_many_arguments)]
fn publish(
    ctx: &Context,
    objects: &ClusterObjects,
    nodes: &[String],
    groups: &[String],
    namespace: &str,
    kind: EventKind,
    reason: &str,
    message: &str,
) {
    for n in objects
        .nodes
        .iter()
        .filter(|n| nodes.contains(&n.name_any()))
    {
        ctx.events
            .publish(&n.object_ref(&()), kind, reason, message);
    }
    for md in objects
        .machine_deployments
        .iter()
        .filter(|d| groups.contains(&d.name_any()) && d.namespace().as_deref() == Some(namespace))
    {
        ctx.events
            .publish(&md.object_ref(&()), kind, reason, message);
    }
}

/// Marks the Machines for deletion, then lowers their group's replicas by as many (never below its minimum).
async fn delete_machines(
    ctx: &Context,
    namespace: &str,
    group: &str,
    machines: &[String],
    reason: Reason,
) -> Result<(), ControllerError> {
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), namespace);
    for m in machines {
        let patch = serde_json::json!({"metadata": {"annotations": {
            DELETE_MACHINE_ANNOTATION: "true",
            keys::DISRUPTION_REASON: reason.as_str(),
            keys::REPLACED_BY: null,
        }}});
        match api
            .patch(m, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mds: Api<MachineDeployment> = Api::namespaced(ctx.client.clone(), namespace);
    // Optimistic concurrency: the provisioner may be raising the same replicas; a conflict re-reads once.
    for attempt in 0..2 {
        let Some(md) = mds.get_opt(group).await? else {
            return Ok(());
        };
        let min = md.spec.autoscaling.as_ref().map_or(0, |a| a.min_replicas);
        let current = md.spec.replicas.unwrap_or(1);
        let to = current.saturating_sub(machines.len() as u32).max(min);
        if to == current {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {"resourceVersion": md.resource_version()}, "spec": {"replicas": to}});
        match mds
            .patch(group, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                for _ in machines {
                    ctx.metrics
                        .nodes_disrupted
                        .with_label_values(&[group, reason.as_str()])
                        .inc();
                }
                tracing::info!(group, from = current, to, "scaled down");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn capacity_spec(c: CapacityType) -> CapacityTypeSpec {
    match c {
        CapacityType::Spot => CapacityTypeSpec::Spot,
        CapacityType::OnDemand => CapacityTypeSpec::OnDemand,
    }
}

/// Raises the replacement's group by one with its launch shape, then marks the old Machines as waiting for it.
async fn start_replacement(
    ctx: &Context,
    objects: &ClusterObjects,
    namespace: &str,
    replacement: &crate::scheduling::NewMachine,
    old_machines: &[String],
    reason: Reason,
) -> Result<(), ControllerError> {
    let now = ctx.clock.now();
    let shape_id = format!(
        "consolidation-{}",
        stable_hash(&(old_machines, now.timestamp_millis()))?
    );
    let mds: Api<MachineDeployment> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(md) = mds.get_opt(&replacement.group).await? else {
        return Ok(());
    };
    let current = md.spec.replicas.unwrap_or(1);
    if md
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| current >= a.max_replicas)
    {
        tracing::info!(group = %replacement.group, reason = reason.as_str(), "replacement skipped: the group is at its maximum");
        return Ok(());
    }
    // Drop entries some Machine already took, then queue ours.
    let used: Vec<String> = objects
        .machines
        .iter()
        .filter_map(|m| m.annotations().get(keys::SHAPE_ID).cloned())
        .collect();
    let mut queue: Vec<LaunchShapeEntry> = read_shape_queue(md.annotations())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !used.contains(&e.id))
        .collect();
    queue.push(LaunchShapeEntry {
        id: shape_id.clone(),
        shape: MachineShape {
            instance_types: replacement.instance_types.clone(),
            zones: vec![replacement.zone.clone()],
            capacity_types: vec![capacity_spec(replacement.capacity_type)],
        },
    });
    let text = serde_json::to_string(&queue).map_err(|e| ControllerError::Encode {
        what: "launch shapes",
        reason: e.to_string(),
    })?;
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": md.resource_version(), "annotations": {keys::LAUNCH_SHAPES: text, keys::LAST_SCALE_UP: now.to_rfc3339()}},
        "spec": {"replicas": current + 1}
    });
    match mds
        .patch(
            &replacement.group,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Someone else changed the group meanwhile: decide again next round.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let pending = PendingReplacement {
        shape: shape_id,
        since: now,
        reason: reason.as_str().to_string(),
    };
    let value = serde_json::to_string(&pending).map_err(|e| ControllerError::Encode {
        what: "replacement",
        reason: e.to_string(),
    })?;
    for m in old_machines {
        let Some(machine) = objects.machines.iter().find(|x| &x.name_any() == m) else {
            continue;
        };
        let api: Api<Machine> =
            Api::namespaced(ctx.client.clone(), &machine.namespace().unwrap_or_default());
        let patch = serde_json::json!({"metadata": {"annotations": {keys::REPLACED_BY: value}}});
        match api
            .patch(m, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Old Machines whose replacement is Running go; those whose replacement failed or never came stay.
async fn finish_replacements(
    ctx: &Context,
    objects: &ClusterObjects,
    config: &DisruptionConfig,
) -> Result<(), ControllerError> {
    let now = ctx.clock.now();
    // (namespace, group, shape) → old machines.
    let mut waiting: BTreeMap<(String, String, String), (PendingReplacement, Vec<String>)> =
        BTreeMap::new();
    for m in &objects.machines {
        if m.metadata.deletion_timestamp.is_some()
            || m.annotations().contains_key(DELETE_MACHINE_ANNOTATION)
        {
            continue;
        }
        let Some(text) = m.annotations().get(keys::REPLACED_BY) else {
            continue;
        };
        let namespace = m.namespace().unwrap_or_default();
        let group = m
            .labels()
            .get(keys::MACHINE_DEPLOYMENT)
            .cloned()
            .unwrap_or_default();
        let pending: PendingReplacement = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(machine = %m.name_any(), error = %e, "unreadable {} annotation: removing it", keys::REPLACED_BY);
                clear_replaced_by(ctx, &namespace, &m.name_any()).await?;
                continue;
            }
        };
        waiting
            .entry((namespace, group, pending.shape.clone()))
            .or_insert_with(|| (pending, vec![]))
            .1
            .push(m.name_any());
    }
    for ((namespace, group, shape), (pending, old)) in waiting {
        let replacement = objects
            .machines
            .iter()
            .find(|m| m.annotations().get(keys::SHAPE_ID) == Some(&shape));
        let phase = replacement.and_then(|m| m.status.as_ref()).map(|s| s.phase);
        let reason = Reason::parse(&pending.reason).unwrap_or(Reason::ConsolidationSingle);
        let what = if reason.at_risk() {
            "Moving off an at-risk node"
        } else {
            "Consolidating"
        };
        if phase == Some(MachinePhase::Running) {
            let message = format!(
                "{what}: replacement {} is Running; removing {}",
                replacement.map(|m| m.name_any()).unwrap_or_default(),
                old.join(", ")
            );
            tracing::info!(group = %group, "{message}");
            delete_machines(ctx, &namespace, &group, &old, reason).await?;
            let nodes: Vec<String> = objects
                .machines
                .iter()
                .filter(|m| old.contains(&m.name_any()))
                .filter_map(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.node_ref.as_ref())
                        .map(|r| r.name.clone())
                })
                .collect();
            publish(
                ctx,
                objects,
                &nodes,
                std::slice::from_ref(&group),
                &namespace,
                EventKind::Normal,
                event_reason(reason),
                &message,
            );
        } else if phase == Some(MachinePhase::Failed)
            || (replacement.is_none() && now - pending.since > config.replacement_timeout)
        {
            // Unmarked, the old Machines are candidates again: an at-risk one (its annotation stays) is planned
            // afresh next round, and a surplus node, if the replacement comes after all, goes as empty.
            let (message, event) = if reason.at_risk() {
                (
                    format!(
                        "Replacement abandoned: the replacement for at-risk {} did not become Running; trying again",
                        old.join(", ")
                    ),
                    "ReplacementAbandoned",
                )
            } else {
                (
                    format!(
                        "Consolidation abandoned: the replacement for {} did not become Running",
                        old.join(", ")
                    ),
                    "ConsolidationAbandoned",
                )
            };
            tracing::warn!(group = %group, "{message}");
            for m in &old {
                clear_replaced_by(ctx, &namespace, m).await?;
            }
            publish(
                ctx,
                objects,
                &[],
                std::slice::from_ref(&group),
                &namespace,
                EventKind::Warning,
                event,
                &message,
            );
        }
    }
    Ok(())
}

async fn clear_replaced_by(
    ctx: &Context,
    namespace: &str,
    machine: &str,
) -> Result<(), ControllerError> {
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {keys::REPLACED_BY: null}}});
    match api
        .patch(machine, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Cordons an Auto Scaling group's Node and marks it for removal, in one patch (the mark is what a later round, or a
/// restarted berth, drains and terminates).
async fn start_group_drain(
    ctx: &Context,
    objects: &ClusterObjects,
    node: &str,
    reason: Reason,
    message: &str,
) -> Result<(), ControllerError> {
    let now = ctx.clock.now();
    let patch = serde_json::json!({
        "metadata": {"annotations": {
            keys::DISRUPTION_REASON: reason.as_str(),
            keys::DRAIN_STARTED: now.to_rfc3339(),
        }},
        "spec": {"unschedulable": true}
    });
    match Api::<Node>::all(ctx.client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    publish(
        ctx,
        objects,
        &[node.to_string()],
        &[],
        "",
        EventKind::Normal,
        event_reason(reason),
        message,
    );
    Ok(())
}

/// Removes berth's mark from a Node and uncordons it.
async fn abandon_group_drain(ctx: &Context, node: &str) -> Result<(), ControllerError> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {keys::DISRUPTION_REASON: null, keys::DRAIN_STARTED: null}},
        "spec": {"unschedulable": false}
    });
    match Api::<Node>::all(ctx.client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Carries on with every marked Auto Scaling group Node: evicts what is left on it, or terminates its instance
/// with a decrement once it is empty, or gives up after `drain_timeout`. True when it terminated an instance (a
/// group's size changed).
async fn finish_group_drains(
    ctx: &Context,
    cloud: &dyn CloudProvider,
    objects: &ClusterObjects,
    groups: &[NodeGroup],
    config: &DisruptionConfig,
) -> Result<bool, ControllerError> {
    let now = ctx.clock.now();
    let mut terminated = false;
    for n in &objects.nodes {
        let Some(reason) = n.annotations().get(keys::DISRUPTION_REASON) else {
            continue;
        };
        let Some(provider) = n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) else {
            continue;
        };
        // Only Nodes of a group read this round: a Machine's Node never carries the mark, and a Node whose
        // instance left its group already is the garbage collector's.
        let Some((group, instance)) = groups.iter().find_map(|g| {
            g.instances
                .iter()
                .find(|i| crate::cloud::provider_id(&i.zone, &i.instance_id) == provider)
                .map(|i| (g, i))
        }) else {
            continue;
        };
        let name = n.name_any();
        let started = n
            .annotations()
            .get(keys::DRAIN_STARTED)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(now, |t| t.with_timezone(&Utc));
        // Fresh from the API, not the cache: a pod the cache has not seen yet must not go down with the node.
        let pods: Vec<Pod> = Api::<Pod>::all(ctx.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?
            .items
            .into_iter()
            .filter(crate::model::pod::is_evictable)
            .collect();
        let group_label = format!("{ASG_GROUP_PREFIX}{}", group.name);
        if !pods.is_empty() {
            if now - started > config.drain_timeout {
                let message = format!(
                    "Drain of {name} abandoned after {} min: {} pods could not be evicted; uncordoned",
                    config.drain_timeout.num_minutes(),
                    pods.len()
                );
                tracing::warn!(node = %name, group = %group.name, "{message}");
                abandon_group_drain(ctx, &name).await?;
                ctx.events.publish(
                    &n.object_ref(&()),
                    EventKind::Warning,
                    "DrainAbandoned",
                    &message,
                );
                continue;
            }
            for pod in &pods {
                let api: Api<Pod> =
                    Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
                match api.evict(&pod.name_any(), &EvictParams::default()).await {
                    Ok(_) => {}
                    // A PodDisruptionBudget refuses it now, or it is gone: next round.
                    Err(kube::Error::Api(s)) if s.code == 429 || s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            continue;
        }
        match cloud
            .terminate_node_group_instance(&group.name, &instance.instance_id)
            .await
        {
            Ok(()) => {
                terminated = true;
                let message = format!(
                    "Terminated {} of Auto Scaling group {} ({reason}); desired capacity decremented",
                    instance.instance_id, group.name
                );
                tracing::info!(node = %name, group = %group.name, "{message}");
                ctx.events.publish(
                    &n.object_ref(&()),
                    EventKind::Normal,
                    "NodeRemoved",
                    &message,
                );
                ctx.metrics
                    .nodes_disrupted
                    .with_label_values(&[group_label.as_str(), reason.as_str()])
                    .inc();
            }
            // Its group would go below its minimum (it changed since the plan), or the instance left it: stop.
            Err(e) if matches!(e.category(), "invalid-configuration" | "not-found") => {
                tracing::info!(node = %name, group = %group.name, error = %e, "not removing the node: uncordoning it");
                abandon_group_drain(ctx, &name).await?;
            }
            Err(e) => {
                tracing::warn!(node = %name, group = %group.name, error = %e, "cannot terminate the node's instance; trying again next round");
            }
        }
    }
    Ok(terminated)
}
