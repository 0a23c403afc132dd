//! The health controller: remediates Machines whose Nodes stay unhealthy, within the guards of [`crate::health`].
//!
//! A pass every few seconds, as a named pipeline:
//!
//! - **observe**: the cached Machines, Nodes and MachineDeployments, and whether the caches can be trusted
//!   ([`ClusterCache::view`]); Nodes seen missing are remembered from the pass that first saw them;
//! - **plan**: [`cluster_guard`] once, then [`plan_group`] per MachineDeployment;
//! - **apply**: a Machine to remediate gets the `berth.dev/remediation` annotation (the Machine controller, sole
//!   writer of its status, turns it into `HealthCheckSucceeded=False` and drains with the health check's drain
//!   timeout) and is deleted, guarded by its uid; its MachineSet replaces it;
//! - **status**: the `RemediationAllowed` condition on each MachineDeployment once it has been held (absent means
//!   allowed), Events, and the metrics
//!   `berth_machines_unhealthy`, `berth_remediations_total` and `berth_remediations_held_total`.
//!
//! Nothing here is remembered that a restart could not lose safely: a restart starts every "no news" clock over.

use super::events::EventKind;
use super::{keys, Context, ControllerError};
use crate::api::common::{find_condition, set_condition, Condition, ConditionStatus};
use crate::api::{Machine, MachineDeployment, MachinePhase};
use crate::clock::from_k8s;
use crate::health::{
    cluster_guard, plan_group, policy_of, ClusterView, GroupPlan, Hold, MachineHealth,
    NodeCondition, NodeState,
};
use crate::state::cluster::ClusterCache;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "health";

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Time between passes.
    pub interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(10),
        }
    }
}

/// What a pass remembers for the next.
struct Memory {
    /// Since when berth's view has been trustworthy without a break (restarts with the process and after every
    /// cluster-wide hold).
    trusted_since: DateTime<Utc>,
    held_cluster_wide: bool,
    /// The watch error count of the last pass.
    errors_seen: u64,
    /// Machine uid -> when its Node was first seen missing.
    missing_since: BTreeMap<String, DateTime<Utc>>,
    /// Group -> the reason it was last held for (a hold is counted and announced once, when it begins).
    held: BTreeMap<String, &'static str>,
}

/// Runs passes until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    cache: ClusterCache,
    config: HealthConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(mut every) =
        super::Periodic::start(&cache, CONTROLLER, config.interval, shutdown).await
    else {
        return;
    };
    // Made once the caches have synced: "no news" clocks start from a trustworthy view.
    let mut memory = Memory {
        trusted_since: ctx.clock.now(),
        held_cluster_wide: false,
        errors_seen: cache.view().errors,
        missing_since: BTreeMap::new(),
        held: BTreeMap::new(),
    };
    while every.tick().await {
        if !every.pass(&ctx, pass(&ctx, &cache, &mut memory)).await {
            return;
        }
    }
}

fn node_conditions(node: &Node) -> Vec<NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| NodeCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    since: c
                        .last_transition_time
                        .as_ref()
                        .map(|t| from_k8s(t.0))
                        .unwrap_or(DateTime::<Utc>::MIN_UTC),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// No heartbeat reaches the API: Ready is Unknown, or was never reported.
fn heartbeat_stale(node: &Node) -> bool {
    !node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Ready" && c.status != "Unknown")
        })
}

async fn pass(
    ctx: &Context,
    cache: &ClusterCache,
    memory: &mut Memory,
) -> Result<(), ControllerError> {
    // Observe.
    let now = ctx.clock.now();
    let health = cache.view();
    let objects = cache.objects();
    let view = ClusterView {
        stale: health.stale_since(memory.errors_seen),
        nodes: objects.nodes.len(),
        nodes_heartbeat_stale: objects.nodes.iter().filter(|n| heartbeat_stale(n)).count(),
    };
    memory.errors_seen = health.errors;
    let by_provider: BTreeMap<&str, &Node> = objects
        .nodes
        .iter()
        .filter_map(|n| Some((n.spec.as_ref()?.provider_id.as_deref()?, n.as_ref())))
        .collect();

    // Plan: the cluster first, then each group.
    let cluster_hold = cluster_guard(&view);
    match (&cluster_hold, memory.held_cluster_wide) {
        (Some(hold), false) => {
            tracing::warn!(reason = hold.reason(), message = %hold.message(), "remediation held cluster-wide");
            memory.held_cluster_wide = true;
        }
        (None, true) => {
            // Clocks of "no news" start again now: the time berth could not trust counts for nothing.
            tracing::info!("cluster-wide remediation hold lifted");
            memory.trusted_since = now;
            memory.held_cluster_wide = false;
        }
        _ => {}
    }
    let mut by_group: BTreeMap<(String, String), Vec<&Arc<Machine>>> = BTreeMap::new();
    for m in &objects.machines {
        if let (Some(ns), Some(group)) = (m.namespace(), m.labels().get(keys::MACHINE_DEPLOYMENT)) {
            by_group.entry((ns, group.clone())).or_default().push(m);
        }
    }
    let mut seen_uids = BTreeSet::new();
    for md in &objects.machine_deployments {
        let namespace = md.namespace().unwrap_or_default();
        let group = md.name_any();
        let members = by_group
            .remove(&(namespace.clone(), group.clone()))
            .unwrap_or_default();
        let inputs: Vec<MachineHealth> = members
            .iter()
            .map(|m| {
                let uid = m.uid().unwrap_or_default();
                seen_uids.insert(uid.clone());
                machine_health(m, &by_provider, &uid, memory, now)
            })
            .collect();
        let plan = match policy_of(md.spec.health_check.as_ref()) {
            Ok(policy) => plan_group(
                &policy,
                &inputs,
                cluster_hold.as_ref(),
                memory.trusted_since,
                now,
            ),
            Err(e) => GroupPlan {
                hold: Some(Hold::InvalidHealthCheck(e.to_string())),
                ..Default::default()
            },
        };

        // Apply.
        for u in &plan.remediate {
            if let Some(m) = members.iter().find(|m| m.name_any() == u.machine) {
                remediate(ctx, md, m, u.reason, &u.message).await?;
            }
        }

        // Status. Every reason's series exists from the first pass, at 0, so a rate or an increase over the first
        // remediation is right and a dashboard shows 0 rather than no data.
        for reason in ["UnhealthyNode", "NodeNotFound"] {
            ctx.metrics
                .remediations
                .with_label_values(&[&group, reason]);
        }
        for reason in Hold::REASONS {
            ctx.metrics
                .remediations_held
                .with_label_values(&[&group, reason]);
        }
        ctx.metrics
            .machines_unhealthy
            .with_label_values(&[&group])
            .set(plan.unhealthy.len() as i64);
        announce_hold(ctx, md, &group, plan.hold.as_ref(), memory);
        let shown = plan.hold.as_ref().or(cluster_hold.as_ref());
        write_condition(ctx, md, shown).await?;
    }
    memory
        .missing_since
        .retain(|uid, _| seen_uids.contains(uid));
    Ok(())
}

/// One Machine as the planner reads it.
fn machine_health(
    m: &Machine,
    by_provider: &BTreeMap<&str, &Node>,
    uid: &str,
    memory: &mut Memory,
    now: DateTime<Utc>,
) -> MachineHealth {
    let status = m.status.as_ref();
    let was_running = status.is_some_and(|s| s.phase == MachinePhase::Running)
        || (m.metadata.deletion_timestamp.is_some()
            && status.is_some_and(|s| s.node_ref.is_some()));
    let node = if was_running {
        match status
            .and_then(|s| s.provider_id.as_deref())
            .and_then(|p| by_provider.get(p))
        {
            Some(n) => {
                memory.missing_since.remove(uid);
                Some(NodeState::Present(node_conditions(n)))
            }
            None => Some(NodeState::Missing {
                since: *memory.missing_since.entry(uid.to_string()).or_insert(now),
            }),
        }
    } else {
        None
    };
    MachineHealth {
        name: m.name_any(),
        node,
        remediating: m.annotations().contains_key(keys::REMEDIATION),
        deleting: m.metadata.deletion_timestamp.is_some(),
    }
}

/// Marks the Machine and deletes it; its MachineSet replaces it and the Machine controller drains and terminates.
async fn remediate(
    ctx: &Context,
    md: &MachineDeployment,
    machine: &Machine,
    reason: &'static str,
    message: &str,
) -> Result<(), ControllerError> {
    let name = machine.name_any();
    let namespace = machine.namespace().unwrap_or_default();
    let uid = machine
        .uid()
        .ok_or(ControllerError::MissingField("metadata.uid"))?;
    let group = md.name_any();
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &namespace);
    // The annotation is written against the version judged: if the Machine changed since (its Node recovered and
    // the Machine controller wrote so), this pass is stale and the next one judges again.
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": machine.resource_version(),
        "annotations": {keys::REMEDIATION: format!("{reason}: {message}")},
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let delete = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &delete).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(machine = %name, group = %group, reason, message, "remediating an unhealthy machine");
    ctx.metrics
        .remediations
        .with_label_values(&[&group, reason])
        .inc();
    ctx.events.publish(
        &machine.object_ref(&()),
        EventKind::Warning,
        "Remediating",
        &format!("{message}: draining, terminating and replacing the Machine"),
    );
    ctx.events.publish(
        &md.object_ref(&()),
        EventKind::Warning,
        "MachineRemediated",
        &format!("Machine {name}: {message}"),
    );
    Ok(())
}

/// Counts and announces a group's hold once, when it begins (or its reason changes).
fn announce_hold(
    ctx: &Context,
    md: &MachineDeployment,
    group: &str,
    hold: Option<&Hold>,
    memory: &mut Memory,
) {
    match hold {
        Some(h) if memory.held.get(group) != Some(&h.reason()) => {
            memory.held.insert(group.to_string(), h.reason());
            ctx.metrics
                .remediations_held
                .with_label_values(&[group, h.reason()])
                .inc();
            tracing::warn!(group, reason = h.reason(), message = %h.message(), "remediation held");
            ctx.events.publish(
                &md.object_ref(&()),
                EventKind::Warning,
                "RemediationHeld",
                &h.message(),
            );
        }
        Some(_) => {}
        None => {
            memory.held.remove(group);
        }
    }
}

/// Writes `RemediationAllowed` when it differs from what the group shows. The write carries the resourceVersion
/// read, so it never overwrites the MachineDeployment controller's status; a lost race is written again next pass.
async fn write_condition(
    ctx: &Context,
    md: &MachineDeployment,
    hold: Option<&Hold>,
) -> Result<(), ControllerError> {
    let (status, reason, message) = match hold {
        Some(h) => (ConditionStatus::False, h.reason().to_string(), h.message()),
        None => (
            ConditionStatus::True,
            "RemediationAllowed".to_string(),
            "unhealthy Machines are remediated".to_string(),
        ),
    };
    let mut md_status = md.status.clone().unwrap_or_default();
    let shown = find_condition(&md_status.conditions, "RemediationAllowed");
    if shown.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
        return Ok(());
    }
    // Absent reads as allowed: a group that was never held is not written to. Every write of a MachineDeployment
    // bumps its resourceVersion and fails the provisioner's guarded replica patch of that moment, which then waits a
    // pass: a first True on every group right at start-up delayed the first scale-up.
    if shown.is_none() && hold.is_none() {
        return Ok(());
    }
    set_condition(
        &mut md_status.conditions,
        Condition {
            type_: "RemediationAllowed".into(),
            status,
            reason,
            message,
            observed_generation: md.metadata.generation,
            ..Default::default()
        },
        ctx.now_k8s(),
    );
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": md.resource_version()},
        "status": {"conditions": md_status.conditions},
    });
    match Api::<MachineDeployment>::namespaced(
        ctx.client.clone(),
        &md.namespace().unwrap_or_default(),
    )
    .patch_status(
        &md.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
