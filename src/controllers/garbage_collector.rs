//! The garbage collector: terminates stray instances, deletes Nodes whose instance is gone and launch templates no
//! Machine needs, over the pure `garbage` planner. One round shortly after start, then one every `period`.
//!
//! A round is a named pipeline:
//!
//! 1. **observe**: the cluster's instances (DescribeInstances by tag) first, then Machines, Nodes, MachineClasses
//!    and the Cluster through fresh (quorum) lists, never the shared caches: a cache that lags would show an
//!    instance's Machine missing. If any list fails, the round does nothing: a missing observation is never
//!    evidence. A failed DescribeInstances skips only the instances.
//! 2. **plan**: `garbage::plan_instances`; the Nodes that may be orphans are looked up by instance id (EC2's answer
//!    about each id, whatever its tags), then `garbage::plan_nodes`.
//! 3. **apply**: TerminateInstances (the provider terminates only instances with this cluster's tag, whatever the
//!    plan says), Node deletions with the Node's uid as precondition (a Node re-registered under the same name is
//!    another Node), and the launch templates of class revisions no MachineClass has now, older than their grace.
//! 4. **status**: a log line, an Event on the Cluster and `berth_garbage_collected_total{kind}` for each thing
//!    removed.
//!
//! Launch templates: a Machine launches with its class's *current* revision (the Machine controller reads the class
//! at launch), so the live revisions are the current revision of every MachineClass, which covers every Machine
//! that exists or that a scale-up will create; a template of an older revision or of a deleted class is garbage once
//! older than its grace.

use super::events::EventKind;
use super::Context;
use crate::api::{Cluster, Machine, MachineClass};
use crate::cloud::{ClassRevision, CloudError, CloudProvider};
use crate::garbage::{
    nodes_to_look_up, plan_instances, plan_nodes, GarbageSettings, MachineView, NodeView,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "garbage_collector";

#[derive(Debug, Clone)]
pub struct GarbageCollectorConfig {
    /// The first round, after start: soon (what a crash left is collected right after the restart), but not at
    /// once, so the other controllers adopt their instances and Nodes first.
    pub first_round_after: Duration,
    /// Between rounds. Garbage is rare and cheap to keep for minutes; each round lists every Machine and Node
    /// through the API and describes every instance, so it is slow.
    pub period: Duration,
    pub settings: GarbageSettings,
    /// This cluster's name (the Cluster object whose spec.clusterName it is gets the Events).
    pub cluster_name: String,
}

impl GarbageCollectorConfig {
    pub fn new(cluster_name: &str) -> GarbageCollectorConfig {
        GarbageCollectorConfig {
            first_round_after: Duration::from_secs(15),
            period: Duration::from_secs(120),
            settings: GarbageSettings::default(),
            cluster_name: cluster_name.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GarbageCollectorError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cloud: {0}")]
    Cloud(#[from] CloudError),
}

impl GarbageCollectorError {
    pub fn category(&self) -> &'static str {
        match self {
            GarbageCollectorError::Kube(_) => "kube_api",
            GarbageCollectorError::Cloud(e) => e.category(),
        }
    }
}

/// What one round removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub instances: Vec<String>,
    pub nodes: Vec<String>,
    pub launch_templates: usize,
}

/// What the collector remembers between rounds (in memory only: a restart delays a Node deletion by one grace).
#[derive(Debug, Default)]
pub struct Memory {
    /// Node name → when its instance was first seen gone.
    gone_since: BTreeMap<String, DateTime<Utc>>,
}

/// Runs rounds until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    cloud: Arc<dyn CloudProvider>,
    config: GarbageCollectorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    if let Err(e) = config.settings.validate() {
        tracing::error!(error = %e, "garbage collector not started");
        return;
    }
    tokio::pin!(shutdown);
    let mut memory = Memory::default();
    let mut wait = config.first_round_after;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = config.period;
        let _timer = ctx
            .metrics
            .reconcile_duration_seconds
            .with_label_values(&[CONTROLLER])
            .start_timer();
        tokio::select! {
            _ = &mut shutdown => return,
            result = round(&ctx, cloud.as_ref(), &config, &mut memory) => if let Err(e) = result {
                ctx.metrics.reconcile_errors.with_label_values(&[CONTROLLER, e.category()]).inc();
                tracing::warn!(error = %e, "garbage collection round failed; nothing more is done this round");
            }
        }
    }
}

fn machine_view(m: &Machine) -> MachineView {
    let status = m.status.as_ref();
    MachineView {
        uid: m.uid().unwrap_or_default(),
        instance_id: status.and_then(|s| s.instance_id.clone()),
        provider_id: status.and_then(|s| s.provider_id.clone()),
        node_name: status.and_then(|s| s.node_ref.as_ref().map(|r| r.name.clone())),
    }
}

fn node_view(n: &Node) -> NodeView {
    NodeView {
        name: n.name_any(),
        uid: n.uid().unwrap_or_default(),
        provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
        deleting: n.metadata.deletion_timestamp.is_some(),
    }
}

/// One round: observe, plan, apply, status.
pub async fn round(
    ctx: &Context,
    cloud: &dyn CloudProvider,
    config: &GarbageCollectorConfig,
    memory: &mut Memory,
) -> Result<Collected, GarbageCollectorError> {
    let settings = &config.settings;
    // Observe: instances before Machines (see the garbage module), then fresh lists.
    let instances = match cloud.describe_instances().await {
        Ok(list) => Some(list),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the cluster's instances: no instance is collected this round");
            None
        }
    };
    let all = ListParams::default();
    let machines: Vec<MachineView> = Api::<Machine>::all(ctx.client.clone())
        .list(&all)
        .await?
        .items
        .iter()
        .map(machine_view)
        .collect();
    let nodes: Vec<NodeView> = Api::<Node>::all(ctx.client.clone())
        .list(&all)
        .await?
        .items
        .iter()
        .map(node_view)
        .collect();
    let classes = Api::<MachineClass>::all(ctx.client.clone())
        .list(&all)
        .await?
        .items;
    let cluster = Api::<Cluster>::all(ctx.client.clone())
        .list(&all)
        .await?
        .items
        .into_iter()
        .find(|c| c.spec.cluster_name == config.cluster_name);
    let now = ctx.clock.now();

    // Plan: instances.
    let instance_plan = instances
        .as_deref()
        .map(|list| plan_instances(&config.cluster_name, list, &machines, settings, now))
        .unwrap_or_default();
    // Plan: Nodes, from EC2's answers about their instances.
    let region = cloud.region().to_string();
    let ids = nodes_to_look_up(&region, &nodes, &machines);
    let lookups = if ids.is_empty() {
        BTreeMap::new()
    } else {
        match cloud.lookup_instances(&ids).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look the Nodes' instances up: no Node is collected this round");
                BTreeMap::new()
            }
        }
    };
    let node_plan = plan_nodes(
        &region,
        &nodes,
        &machines,
        &lookups,
        &memory.gone_since,
        settings,
        now,
    );
    memory.gone_since = node_plan.gone_since.clone();

    // Apply and status.
    let mut collected = Collected::default();
    let publish = |reason: &str, message: &str| {
        if let Some(c) = &cluster {
            ctx.events
                .publish(&c.object_ref(&()), EventKind::Normal, reason, message);
        }
    };
    if !instance_plan.terminate.is_empty() {
        let ids: Vec<String> = instance_plan
            .terminate
            .iter()
            .map(|s| s.instance_id.clone())
            .collect();
        let outcome = cloud.terminate(&ids).await?;
        for stray in &instance_plan.terminate {
            if !outcome.terminating.contains(&stray.instance_id) {
                continue;
            }
            let message = stray.message();
            tracing::info!(instance = %stray.instance_id, machine = ?stray.machine, "{message}");
            publish("StrayInstanceTerminated", &message);
            ctx.metrics
                .garbage_collected
                .with_label_values(&["instance"])
                .inc();
            collected.instances.push(stray.instance_id.clone());
        }
    }
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    for orphan in &node_plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(orphan.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match node_api.delete(&orphan.name, &params).await {
            Ok(_) => {}
            // Gone already, or replaced by another Node of that name: nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        let message = orphan.message();
        tracing::info!(node = %orphan.name, instance = %orphan.instance_id, "{message}");
        publish("OrphanNodeDeleted", &message);
        ctx.metrics
            .garbage_collected
            .with_label_values(&["node"])
            .inc();
        collected.nodes.push(orphan.name.clone());
    }
    let live: Vec<ClassRevision> = classes
        .iter()
        .map(|c| ClassRevision {
            name: c.name_any(),
            revision: c.metadata.generation.unwrap_or(0).to_string(),
        })
        .collect();
    let deleted = cloud
        .garbage_collect_launch_templates(&live, now - settings.launch_template_grace)
        .await?;
    if deleted > 0 {
        let message = format!(
            "Deleted {deleted} launch templates of MachineClass revisions no longer current"
        );
        tracing::info!(deleted, "{message}");
        publish("LaunchTemplatesDeleted", &message);
        ctx.metrics
            .garbage_collected
            .with_label_values(&["launch_template"])
            .inc_by(deleted as u64);
        collected.launch_templates = deleted;
    }
    Ok(collected)
}
