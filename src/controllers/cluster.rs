//! The Cluster's status: whether berth can act on it (`Ready`), whether a limit stops scale-ups (`LimitReached`),
//! and how many nodes berth manages at what hourly price. Read from the shared caches every few seconds; written
//! only when something changed. An invalid Cluster is told once, in an Event, when it becomes invalid; the
//! provisioner and the disruption controller do nothing for it meanwhile (see `state::cluster_check`).

use super::events::EventKind;
use super::interruption::QueueStatus;
use super::Context;
use crate::api::common::{set_condition, Condition, ConditionStatus};
use crate::api::{Cluster, ClusterStatus, MachinePhase};
use crate::model::instance_type::Catalog;
use crate::model::quantity::{parse_cpu_millis, parse_units};
use crate::state::cluster::{ClusterCache, ClusterObjects};
use crate::state::cluster_check;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "cluster";
const PERIOD: Duration = Duration::from_secs(5);

/// The status berth would write now, from plain objects.
pub fn desired_status(
    cluster: &Cluster,
    objects: &ClusterObjects,
    catalog: &Catalog,
    interruption_queue: Option<&QueueStatus>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> ClusterStatus {
    let mut status = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let running: Vec<_> = objects
        .machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter_map(|m| m.status.as_ref())
        .filter(|s| s.phase == MachinePhase::Running)
        .collect();
    status.nodes = running.len() as u32;
    let cost: f64 = running
        .iter()
        .filter_map(|s| s.price.as_deref()?.parse::<f64>().ok())
        .sum();
    status.hourly_cost = Some(format!("{cost:.4}"));
    status.observed_generation = generation;

    let problems = cluster_check::problems(&cluster.spec);
    let (ready, reason, message) = if problems.is_empty() {
        (true, "Valid", "berth acts on this Cluster".to_string())
    } else {
        (
            false,
            "InvalidSpec",
            format!(
                "berth does not launch or remove nodes for this Cluster until it is fixed: {}",
                problems.join("; ")
            ),
        )
    };
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.into(),
        message,
        last_transition_time: None,
        observed_generation: generation,
    };
    set_condition(
        &mut status.conditions,
        condition("Ready", ready, reason, message),
        now.clone(),
    );

    // Every launched machine counts, not only Running ones: the limits bound what berth has asked for.
    let live = objects
        .machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter_map(|m| m.status.as_ref())
        .filter(|s| s.phase != MachinePhase::Failed);
    let (mut millis, mut bytes, mut count) = (0u64, 0u64, 0u32);
    for s in live {
        count += 1;
        if let Some(t) = s.instance_type.as_deref().and_then(|t| catalog.get(t)) {
            millis += u64::from(t.vcpu) * 1000;
            bytes += t.memory_mib * 1024 * 1024;
        }
    }
    let limits = &cluster.spec.limits;
    let mut reached = Vec::new();
    if let Some(max) = limits.max_nodes {
        if count >= max {
            reached.push(format!("{count} machines of at most {max}"));
        }
    }
    if let Some(max) = limits
        .max_cpu
        .as_deref()
        .and_then(|q| parse_cpu_millis(q).ok())
    {
        if millis >= max {
            reached.push(format!("{} cpu of at most {}", millis / 1000, max / 1000));
        }
    }
    if let Some(max) = limits
        .max_memory
        .as_deref()
        .and_then(|q| parse_units(q).ok())
    {
        if bytes >= max {
            reached.push(format!(
                "{} GiB of memory of at most {} GiB",
                bytes >> 30,
                max >> 30
            ));
        }
    }
    let limit = if reached.is_empty() {
        condition(
            "LimitReached",
            false,
            "WithinLimits",
            "scale-ups may add capacity".into(),
        )
    } else {
        condition(
            "LimitReached",
            true,
            "LimitReached",
            format!("scale-ups stop here: {}", reached.join(", ")),
        )
    };
    set_condition(&mut status.conditions, limit, now.clone());
    // Whether interruption events can be read; no condition when no queue is configured.
    match interruption_queue {
        Some(q) => {
            set_condition(
                &mut status.conditions,
                condition(
                    "InterruptionQueueReady",
                    q.ready,
                    &q.reason,
                    q.message.clone(),
                ),
                now,
            );
        }
        None => status
            .conditions
            .retain(|c| c.type_ != "InterruptionQueueReady"),
    }
    status
}

/// Runs until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    cache: ClusterCache,
    catalog: Arc<Catalog>,
    cluster_name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => return,
        _ = cache.wait_synced() => {}
    }
    loop {
        let objects = cache.objects();
        let name = Some(cluster_name.as_str()).filter(|n| !n.is_empty());
        if let Some(cluster) = objects.cluster(name) {
            if let Err(e) = reconcile(&ctx, cluster, &objects, &catalog).await {
                ctx.metrics
                    .reconcile_errors
                    .with_label_values(&[CONTROLLER, "kube_api"])
                    .inc();
                tracing::warn!(cluster = %cluster.name_any(), error = %e, "cannot write the Cluster's status");
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

async fn reconcile(
    ctx: &Context,
    cluster: &Cluster,
    objects: &ClusterObjects,
    catalog: &Catalog,
) -> Result<(), kube::Error> {
    let before = cluster.status.clone().unwrap_or_default();
    let queue = ctx
        .interruption_queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let after = desired_status(cluster, objects, catalog, queue.as_ref(), ctx.now_k8s());
    if after == before {
        return Ok(());
    }
    let api: Api<Cluster> = Api::all(ctx.client.clone());
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"status": after})),
    )
    .await?;
    let was_ready = before
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    if let Some(ready) = after.conditions.iter().find(|c| c.type_ == "Ready") {
        if ready.status == ConditionStatus::False && was_ready != Some(ConditionStatus::False) {
            tracing::warn!(cluster = %cluster.name_any(), "{}", ready.message);
            ctx.events.publish(
                &cluster.object_ref(&()),
                EventKind::Warning,
                &ready.reason,
                &ready.message,
            );
        }
    }
    Ok(())
}
