//! The interruption controller: reads EC2's interruption events from the interruption queue and acts within EC2's
//! warning, over the pure `interruption::{parse, decide}`.
//!
//! The queue is the Cluster's `spec.interruptionQueue`, else `berth run --interruption-queue`. Each pass: observe
//! (which queue; open it; receive up to ten messages, long-polling 20 s), plan (`parse`, then `decide` against the
//! Machines in the shared caches), apply, and delete the messages acted on in one batch. A message whose action
//! failed (the API server refused a write) is not deleted: the queue gives it back after its visibility timeout,
//! and every action is idempotent. A malformed message, an unknown event, an event for an instance no Machine owns:
//! logged, counted (`berth_interruption_messages_total{result}`) and deleted, never acted on; except a young spot
//! warning for an instance EC2 says is this cluster's but no Machine shows yet (launched a moment ago, the cache
//! behind), which is left for redelivery rather than lost.
//!
//! Actions, per Machine:
//! - spot interruption warning: the offering (type, zone, spot) goes into the unavailable-offerings cache, the
//!   Machine is annotated `berth.dev/interruption` and deleted. From the annotation on, the scheduling snapshot
//!   counts the node as gone and its pods as pending (`state::snapshot`), so the provisioner plans and launches
//!   their capacity while they still run; the MachineSet's replacement of the deleted Machine is part of that
//!   capacity. The Machine controller cordons and drains through evictions (PDBs apply) and turns the annotation
//!   into the Machine's `Interrupted` condition.
//! - rebalance recommendation on a `Replace` class, or an AWS Health scheduled change: the Machine is annotated
//!   `berth.dev/at-risk`; the disruption controller replaces it first and drains it after, within the group's
//!   disruption budget.
//! - instance state change (stopping, stopped, shutting-down, terminated): the Machine is annotated
//!   `berth.dev/instance-state-notice`; the Machine controller looks at the instance afresh, and fails the Machine
//!   if EC2 confirms it. The message alone fails nothing.
//!
//! A queue that is missing or denied is told on the Cluster: the Cluster controller writes the
//! `InterruptionQueueReady` condition from what this controller reports, and an Event is published when it turns.
//! berth keeps working without the queue and tries again with backoff (10 s doubling to 5 minutes).
//! Only the leader runs it, as every controller: a message is consumed once.

use super::events::EventKind;
use super::{keys, Context, ControllerError};
use crate::api::machine_class::CapacityTypeSpec;
use crate::api::{Cluster, Machine, MachineClass, MachineDeployment};
use crate::cloud::queue::{InterruptionQueue, QueueError};
use crate::cloud::{CloudProvider, OfferingKey};
use crate::interruption::{
    decide, parse, Decision, InterruptionError, Notice, NoticeKind, OwnedInstance, RebalancePolicy,
};
use crate::model::instance_type::CapacityType;
use crate::state::cluster::{ClusterCache, ClusterObjects};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONTROLLER: &str = "interruption";
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How often berth looks again for a queue to read when none is configured.
const IDLE_LOOK: Duration = Duration::from_secs(30);
/// How long after its warning a spot warning for this cluster's instance that no Machine shows is kept for the
/// Machine to appear (see `handle`).
const OWNER_GRACE: chrono::Duration = chrono::Duration::seconds(60);
/// How often a wait after a failure looks whether the queue's name changed.
const NAME_LOOK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
pub struct InterruptionConfig {
    /// `berth run --interruption-queue`; the Cluster's spec.interruptionQueue wins.
    pub queue: Option<String>,
    /// The Cluster object whose `spec.clusterName` this is (empty: the first Cluster).
    pub cluster_name: String,
}

/// What the Cluster's `InterruptionQueueReady` condition says; `None` in the cell: no queue is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// Where this controller reports the queue's state and the Cluster controller reads it (the Cluster controller is
/// the one writer of the Cluster's status).
pub type QueueStatusCell = Arc<Mutex<Option<QueueStatus>>>;

/// The result label of `berth_interruption_messages_total`.
const RESULTS: [&str; 7] = [
    "acted",
    "ignored",
    "not_ours",
    "awaiting_machine",
    "malformed",
    "unknown_kind",
    "failed",
];

pub async fn run(
    ctx: Arc<Context>,
    cache: ClusterCache,
    cloud: Arc<dyn CloudProvider>,
    config: InterruptionConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => return,
        _ = cache.wait_synced() => {}
    }
    for r in RESULTS {
        ctx.metrics.interruption_messages.with_label_values(&[r]);
    }
    for k in NoticeKind::ALL {
        ctx.metrics.interruptions.with_label_values(&[k.as_str()]);
    }
    let mut open: Option<(String, Arc<dyn InterruptionQueue>)> = None;
    let mut retry = RETRY_FIRST;
    loop {
        // Observe: which queue, open, receive.
        let (cluster, wanted) = wanted_queue(&cache.objects(), &config);
        let Some(wanted) = wanted else {
            report(&ctx, cluster.as_ref(), None);
            open = None;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(IDLE_LOOK) => continue,
            }
        };
        if open.as_ref().is_some_and(|(n, _)| *n != wanted) {
            open = None;
        }
        // Open (once) and receive; either failing is told the same way.
        let opened = match &open {
            Some((_, q)) => Ok(q.clone()),
            None => cloud.interruption_queue(&wanted).await.inspect(|q| {
                tracing::info!(queue = q.name(), "reading the interruption queue");
                open = Some((wanted.clone(), q.clone()));
            }),
        };
        let received = match opened {
            Ok(queue) => tokio::select! {
                _ = &mut shutdown => return,
                r = queue.receive() => r.map(|m| (queue, m)),
            },
            Err(e) => Err(e),
        };
        let (queue, messages) = match received {
            Ok(got) => got,
            Err(e) => {
                // A missing or denied queue is opened afresh next time (it may have been created, or allowed).
                if !matches!(e, QueueError::Transient { .. }) {
                    open = None;
                }
                failed(
                    &ctx,
                    &cache,
                    &config,
                    &wanted,
                    &e,
                    &mut retry,
                    &mut shutdown,
                )
                .await;
                continue;
            }
        };
        retry = RETRY_FIRST;
        report(
            &ctx,
            cluster.as_ref(),
            Some(QueueStatus {
                ready: true,
                reason: "QueueReadable".into(),
                message: format!("reading interruption events from {}", queue.name()),
            }),
        );
        if messages.is_empty() {
            continue;
        }
        // Plan and apply, message by message; delete what was handled.
        let objects = cache.objects();
        let owners = Owners::of(&objects);
        let mut handled = Vec::with_capacity(messages.len());
        for m in messages {
            let result = handle(&ctx, cloud.as_ref(), &owners, &m.body).await;
            ctx.metrics
                .interruption_messages
                .with_label_values(&[result])
                .inc();
            // What could not be acted on yet comes back after the queue's visibility timeout.
            if !matches!(result, "failed" | "awaiting_machine") {
                handled.push(m.receipt);
            }
        }
        if let Err(e) = queue.delete(&handled).await {
            tracing::warn!(error = %e, "cannot delete interruption messages: they come back and are handled again");
        }
    }
}

/// The queue the configuration names now: the Cluster's spec.interruptionQueue, else the flag.
fn wanted_queue(
    objects: &ClusterObjects,
    config: &InterruptionConfig,
) -> (Option<Cluster>, Option<String>) {
    let name = Some(config.cluster_name.as_str()).filter(|n| !n.is_empty());
    let cluster = objects.cluster(name).cloned();
    let wanted = cluster
        .as_ref()
        .and_then(|c| c.spec.interruption_queue.clone())
        .or_else(|| config.queue.clone());
    (cluster, wanted)
}

/// Tells a queue failure (condition and Event when it turns) and waits before the next try; a change of the
/// queue's name (someone fixing it) ends the wait at once.
async fn failed(
    ctx: &Context,
    cache: &ClusterCache,
    config: &InterruptionConfig,
    wanted: &str,
    e: &QueueError,
    retry: &mut Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let cluster = wanted_queue(&cache.objects(), config).0;
    let cluster = cluster.as_ref();
    tracing::warn!(error = %e, retry_in = ?retry, "interruption queue unavailable: berth goes on without it");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, e.reason()])
        .inc();
    report(
        ctx,
        cluster,
        Some(QueueStatus {
            ready: false,
            reason: e.reason().into(),
            message: format!(
                "{e}; berth learns of interruptions only when instances are gone, and tries again"
            ),
        }),
    );
    let until = tokio::time::Instant::now() + *retry;
    *retry = (*retry * 2).min(RETRY_MAX);
    while tokio::time::Instant::now() < until {
        tokio::select! {
            _ = shutdown.as_mut() => return,
            _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + NAME_LOOK)) => {}
        }
        if wanted_queue(&cache.objects(), config).1.as_deref() != Some(wanted) {
            *retry = RETRY_FIRST;
            return;
        }
    }
}

/// Records the queue's state for the Cluster controller; an Event on the Cluster when it turns.
fn report(ctx: &Context, cluster: Option<&Cluster>, status: Option<QueueStatus>) {
    let before = {
        let mut cell = ctx
            .interruption_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *cell, status.clone())
    };
    let (Some(cluster), Some(now)) = (cluster, status) else {
        return;
    };
    let turned = before.as_ref().map(|b| (b.ready, &b.reason)) != Some((now.ready, &now.reason));
    if turned && (!now.ready || before.is_some_and(|b| !b.ready)) {
        ctx.events.publish(
            &cluster.object_ref(&()),
            if now.ready {
                EventKind::Normal
            } else {
                EventKind::Warning
            },
            if now.ready {
                "InterruptionQueueReady"
            } else {
                "InterruptionQueueUnavailable"
            },
            &now.message,
        );
    }
}

/// How many interrupted Machines' uids a MachineDeployment remembers having shrunk for (a retry comes within
/// minutes; the list only has to outlive it).
const SHRUNK_FOR_KEPT: usize = 50;

/// Lowers the group's replicas by one for the interrupted Machine `uid`, once: the uid goes into the group's
/// `berth.dev/shrunk-for-interruptions` in the same resourceVersion-guarded write, so a message handled again
/// after a failure half-way (the queue gives it back) never lowers them twice. Never below the group's minimum.
async fn shrink_once(
    ctx: &Context,
    namespace: &str,
    group: &str,
    uid: &str,
) -> Result<(), ControllerError> {
    let mds: Api<MachineDeployment> = Api::namespaced(ctx.client.clone(), namespace);
    for attempt in 0..2 {
        let Some(md) = mds.get_opt(group).await? else {
            return Ok(());
        };
        let mut shrunk_for: Vec<&str> = md
            .annotations()
            .get(keys::SHRUNK_FOR_INTERRUPTIONS)
            .map(|v| v.split(',').filter(|u| !u.is_empty()).collect())
            .unwrap_or_default();
        if shrunk_for.contains(&uid) {
            return Ok(());
        }
        let min = md.spec.autoscaling.as_ref().map_or(0, |a| a.min_replicas);
        let current = md.spec.replicas.unwrap_or(1);
        let to = current.saturating_sub(1).max(min);
        if to == current {
            return Ok(());
        }
        shrunk_for.push(uid);
        let keep = shrunk_for.len().saturating_sub(SHRUNK_FOR_KEPT);
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": md.resource_version(),
                "annotations": {keys::SHRUNK_FOR_INTERRUPTIONS: shrunk_for[keep..].join(",")},
            },
            "spec": {"replicas": to},
        });
        match mds
            .patch(group, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    group,
                    from = current,
                    to,
                    "shrunk for an interrupted machine"
                );
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The Machines that own instances, by instance id, with what a decision needs to know of their class.
struct Owners {
    by_instance: HashMap<String, OwnedInstance>,
    machines: HashMap<String, Arc<Machine>>,
}

impl Owners {
    fn of(objects: &ClusterObjects) -> Owners {
        let classes: HashMap<(String, String), &MachineClass> = objects
            .machine_classes
            .iter()
            .map(|c| {
                (
                    (c.namespace().unwrap_or_default(), c.name_any()),
                    c.as_ref(),
                )
            })
            .collect();
        let mut by_instance = HashMap::new();
        let mut machines = HashMap::new();
        for m in &objects.machines {
            let Some(status) = &m.status else { continue };
            let Some(id) = status.instance_id.clone() else {
                continue;
            };
            let namespace = m.namespace().unwrap_or_default();
            let rebalance = classes
                .get(&(namespace.clone(), m.spec.class_ref.name.clone()))
                .map_or(RebalancePolicy::Ignore, |c| c.spec.rebalance_policy());
            by_instance.insert(
                id.clone(),
                OwnedInstance {
                    instance_id: id.clone(),
                    machine_namespace: namespace,
                    machine: m.name_any(),
                    deleting: m.metadata.deletion_timestamp.is_some(),
                    rebalance,
                    instance_type: status.instance_type.clone(),
                    zone: status.zone.clone(),
                    spot: status.capacity_type == Some(CapacityTypeSpec::Spot),
                },
            );
            machines.insert(id, m.clone());
        }
        Owners {
            by_instance,
            machines,
        }
    }
}

/// Handles one message; the result label (every result but "failed" deletes the message).
async fn handle(
    ctx: &Context,
    cloud: &dyn CloudProvider,
    owners: &Owners,
    body: &str,
) -> &'static str {
    let notice = match parse(body) {
        Ok(Some(n)) => n,
        Ok(None) => return "ignored",
        Err(e) => {
            tracing::warn!(error = %e, body = %truncate(body), "an interruption message berth cannot read: deleted");
            return match e {
                InterruptionError::UnknownKind { .. } => "unknown_kind",
                _ => "malformed",
            };
        }
    };
    let decisions = decide(&notice, |id| owners.by_instance.get(id).cloned());
    let mut acted = false;
    for d in decisions {
        if let Decision::NotOurs { instance_id } = &d {
            tracing::debug!(event = %notice.id, instance = %instance_id, kind = notice.kind.as_str(), "an interruption event for an instance no Machine of this cluster owns");
            continue;
        }
        if let Err(e) = apply(ctx, cloud, owners, &notice, &d).await {
            tracing::warn!(event = %notice.id, error = %e, "cannot act on an interruption event: it comes back and is handled again");
            return "failed";
        }
        acted = true;
    }
    if acted {
        return "acted";
    }
    // A warning for an instance no Machine shows yet may be for one launched a moment ago, whose Machine's status
    // the cache has not caught up with: when EC2 says the instance is this cluster's, the message is left for
    // redelivery (30 s later, still 90 s before the reclaim) rather than lost. Only while the warning is young:
    // an instance of this cluster no Machine ever claims is the garbage collector's.
    let unowned: Vec<&String> = notice
        .instance_ids
        .iter()
        .filter(|id| !owners.by_instance.contains_key(*id))
        .collect();
    if notice.kind == NoticeKind::SpotInterruption
        && !unowned.is_empty()
        && ctx.clock.now() - notice.time < OWNER_GRACE
    {
        match cloud.describe_instances().await {
            Ok(ours) if ours.iter().any(|i| unowned.contains(&&i.instance_id)) => {
                tracing::info!(event = %notice.id, instances = ?unowned, "a spot warning for this cluster's instance no Machine shows yet: it comes back");
                return "awaiting_machine";
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = %notice.id, error = %e, "cannot tell whose instance a spot warning is for: it comes back");
                return "failed";
            }
        }
    }
    "not_ours"
}

fn truncate(body: &str) -> &str {
    let end = body.char_indices().nth(200).map_or(body.len(), |(i, _)| i);
    &body[..end]
}

async fn apply(
    ctx: &Context,
    cloud: &dyn CloudProvider,
    owners: &Owners,
    notice: &Notice,
    decision: &Decision,
) -> Result<(), ControllerError> {
    let (owned, annotations, reason, event_type, message) = match decision {
        Decision::NotOurs { .. } => return Ok(()),
        Decision::Interrupt { machine, deadline } => {
            if let (true, Some(t), Some(z)) = (machine.spot, &machine.instance_type, &machine.zone)
            {
                // No replacement goes into the pool EC2 is reclaiming from.
                cloud.unavailable_offerings().mark(OfferingKey {
                    instance_type: t.clone(),
                    zone: z.clone(),
                    capacity_type: CapacityType::Spot,
                });
            }
            let message = format!(
                "EC2 reclaims instance {} at {}: its pods' capacity is being launched; they are evicted once it is Ready, a minute before at the latest",
                machine.instance_id,
                deadline.to_rfc3339()
            );
            (
                machine,
                vec![
                    (keys::INTERRUPTION, format!("SpotInterruption: {message}")),
                    (keys::INTERRUPTION_DEADLINE, deadline.to_rfc3339()),
                    // The MachineSet removes this one first when its group shrinks below.
                    (crate::api::DELETE_MACHINE_ANNOTATION, "true".into()),
                ],
                "SpotInterrupted",
                EventKind::Warning,
                message,
            )
        }
        Decision::MarkAtRisk { machine, deadline } => {
            let (reason, what) = match notice.kind {
                NoticeKind::RebalanceRecommendation => {
                    ("RebalanceRecommended", "a rebalance recommendation")
                }
                _ => ("ScheduledChange", "a scheduled change"),
            };
            let by = deadline
                .map(|d| format!(" before {}", d.to_rfc3339()))
                .unwrap_or_default();
            let message = format!(
                "{what} for instance {} ({}): the Machine is replaced first, then drained{by}, within the disruption budget",
                machine.instance_id, notice.detail
            );
            let value = serde_json::json!({
                "reason": reason,
                "detail": notice.detail,
                "deadline": deadline.map(|d| d.to_rfc3339()),
                "since": notice.time.to_rfc3339(),
            })
            .to_string();
            (
                machine,
                vec![(keys::AT_RISK, value)],
                reason,
                EventKind::Warning,
                message,
            )
        }
        Decision::Record { machine } => {
            ctx.metrics
                .interruptions
                .with_label_values(&[notice.kind.as_str()])
                .inc();
            if let Some(m) = owners.machines.get(&machine.instance_id) {
                ctx.events.publish(
                    &m.object_ref(&()),
                    EventKind::Normal,
                    "RebalanceRecommended",
                    &format!(
                        "EC2 recommends rebalancing instance {} away from its spot pool; its MachineClass says Ignore (spec.rebalance.action)",
                        machine.instance_id
                    ),
                );
            }
            return Ok(());
        }
        Decision::LookAgain { machine } => {
            let message = format!(
                "EC2 says instance {} is {}: looking at it afresh",
                machine.instance_id,
                notice.detail.trim_start_matches("instance ")
            );
            (
                machine,
                vec![(
                    keys::INSTANCE_STATE_NOTICE,
                    format!("{}: {}", notice.time.to_rfc3339(), notice.detail),
                )],
                "InstanceStateChanged",
                EventKind::Normal,
                message,
            )
        }
    };
    let Some(m) = owners.machines.get(&owned.instance_id) else {
        return Ok(());
    };
    // An interruption is done once its Machine is being deleted (decide() passes those by): a retry after a
    // failure half-way must carry on from the annotations to the deletion.
    let interrupt = matches!(decision, Decision::Interrupt { .. });
    if !interrupt
        && annotations
            .iter()
            .all(|(k, v)| m.annotations().get(*k) == Some(v))
    {
        // Done already (a message delivered twice): nothing to write, nothing to tell again.
        return Ok(());
    }
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &owned.machine_namespace);
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect();
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    match api
        .patch(
            &owned.machine,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => {}
        // The Machine is gone: nothing left to protect.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if matches!(decision, Decision::Interrupt { .. }) {
        // The group shrinks by this Machine first, so the MachineSet does not replace it with a Machine of its
        // default shape: the capacity its pods need is the provisioner's to plan (they count as pending from the
        // annotation on), in a pool EC2 is not reclaiming. At the group's minimum the MachineSet replaces it.
        if let (Some(group), Some(uid)) = (m.labels().get(keys::MACHINE_DEPLOYMENT), m.uid()) {
            shrink_once(ctx, &owned.machine_namespace, group, &uid).await?;
        }
        let delete = DeleteParams {
            preconditions: Some(Preconditions {
                uid: m.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&owned.machine, &delete).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    tracing::warn!(machine = %owned.machine, instance = %owned.instance_id, kind = notice.kind.as_str(), "{message}");
    ctx.metrics
        .interruptions
        .with_label_values(&[notice.kind.as_str()])
        .inc();
    ctx.events
        .publish(&m.object_ref(&()), event_type, reason, &message);
    Ok(())
}
