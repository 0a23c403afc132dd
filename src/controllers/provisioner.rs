//! The provisioner: scale-up on pending pods. A named pipeline over the pure scheduling core:
//! batch (wait for the burst to settle) → observe (cache → [`Snapshot`]) → plan ([`solve`]) → apply (raise
//! MachineDeployment replicas with one launch shape per new machine) → report (Events, metrics).
//!
//! Batching: a window opens at the first unschedulable pod and closes after `batch_idle` without another, or
//! `batch_max` at most. A solve during which more pods arrived is followed at once by another, without a window:
//! those pods have already waited for one.
//!
//! Never twice for the same pods: machines launched or queued count as capacity (see `state::snapshot`), and
//! every replica change is written with the MachineDeployment's resourceVersion as a precondition, so a plan made
//! from a cache older than the provisioner's own last write is refused by the API server (409) and made again
//! from fresher objects instead of being added on top.

use super::events::EventKind;
use super::{keys, Context};
use crate::api::launch_shapes::LaunchShapeEntry;
use crate::api::machine_class::CapacityTypeSpec;
use crate::api::{MachineDeployment, MachineShape};
use crate::cloud::CloudProvider;
use crate::model::instance_type::{CapacityType, Catalog};
use crate::scheduling::{solve, NewMachine, Plan};
use crate::state::cluster::ClusterCache;
use crate::state::nomination::nomination_writes;
use crate::state::snapshot::{
    add_auto_scaling_groups, observe_with, GroupTarget, Observation, ObserveSettings, PodReadings,
    HEADROOM_NAMESPACE,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::Api;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "provisioner";
const FLEET_METRICS_PERIOD: Duration = Duration::from_secs(5);
/// Nomination writes sent at once: a burst's nodes register together, with hundreds of pods to nominate.
const NOMINATION_WRITES_IN_FLIGHT: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionerError {
    #[error("the snapshot is inconsistent: {0}")]
    Snapshot(#[from] crate::scheduling::SchedulingError),
    #[error("MachineDeployment {namespace}/{name} changed since it was read; planning again")]
    Conflict { namespace: String, name: String },
    #[error("cannot scale MachineDeployment {namespace}/{name}: {source}")]
    Scale {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot encode the launch shapes: {0}")]
    Encode(String),
    #[error("cannot raise the desired capacity of Auto Scaling group {group}: {reason}")]
    AutoScaling { group: String, reason: String },
}

impl ProvisionerError {
    pub fn category(&self) -> &'static str {
        match self {
            ProvisionerError::Snapshot(e) => e.category(),
            ProvisionerError::Conflict { .. } => "conflict",
            ProvisionerError::Scale { .. } => "kube_api",
            ProvisionerError::Encode(_) => "encode",
            ProvisionerError::AutoScaling { .. } => "auto_scaling",
        }
    }
}

/// How the provisioner batches and acts.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// The window closes after this long without a new unschedulable pod.
    pub batch_idle: Duration,
    /// ... or after this long at most.
    pub batch_max: Duration,
    /// Plan again after this long even without a new pod (headroom, expired capacity errors, timed-out machines).
    pub resync: Duration,
    /// Plan, log and publish Events, but change nothing.
    pub dry_run: bool,
    pub observe: ObserveSettings,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            batch_idle: Duration::from_millis(200),
            batch_max: Duration::from_secs(2),
            resync: Duration::from_secs(10),
            dry_run: false,
            observe: ObserveSettings::default(),
        }
    }
}

/// What one pass did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    pub pending: usize,
    /// New machines per group that were written (or, in dry-run, would have been).
    pub scaled: BTreeMap<String, u32>,
    pub unschedulable: usize,
    /// When to pass again though nothing changes (pods waiting on the scheduler or on a new node's grace).
    pub revisit_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The provisioner's memory between passes. Losing it on a restart repeats an Event at most once, and makes
/// pods whose machines are still coming plan against those machines' capacity instead of riding on them.
#[derive(Default)]
struct Memory {
    /// Pending pods (`namespace/name`) → the in-flight machine (shape id) planned for them.
    nominations: HashMap<String, String>,
    /// Pending pods → the node berth last wrote in their `status.nominatedNodeName` (the only ones it may change).
    nominated_nodes: HashMap<String, String>,
    /// Pods told they triggered a scale-up: the group, and when they became unschedulable (for the
    /// pending-to-scheduled histogram once they are bound).
    triggered: HashMap<String, (String, chrono::DateTime<chrono::Utc>)>,
    /// Pods told why they did not, with the reason told.
    not_triggered: HashMap<String, String>,
    /// Limits and invalid groups reported, with the message told (bounded by groups and limits, never pruned).
    notices: HashMap<String, String>,
    /// Pods read in earlier passes.
    readings: PodReadings,
}

fn is_headroom(pod_key: &str) -> bool {
    pod_key
        .strip_prefix(HEADROOM_NAMESPACE)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Runs the provisioner until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    cache: ClusterCache,
    catalog: Arc<Catalog>,
    cloud: Option<Arc<dyn CloudProvider>>,
    config: ProvisionerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let mut changes = cache.changes();
    tokio::select! {
        _ = &mut shutdown => return,
        _ = cache.wait_synced() => {}
    }
    let mut announced = Memory::default();
    let mut again = true; // plan once at start: pods may have waited while no replica led
    let mut fleet_recorded: Option<tokio::time::Instant> = None;
    let mut wait = config.resync;
    loop {
        // The fleet's gauges, off the scale-up path and at most every few seconds (they read every pod).
        if fleet_recorded.is_none_or(|t| t.elapsed() >= FLEET_METRICS_PERIOD) && !again {
            crate::telemetry::fleet::record(
                &ctx.metrics,
                &crate::telemetry::fleet::fleet_figures(&cache.objects()),
            );
            fleet_recorded = Some(tokio::time::Instant::now());
        }
        if !again {
            tokio::select! {
                _ = &mut shutdown => return,
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
            if !batch_window(&mut changes, &config, &mut shutdown).await {
                return;
            }
        }
        changes.borrow_and_update();
        match pass(
            &ctx,
            &cache,
            &catalog,
            cloud.as_deref(),
            &config,
            &mut announced,
        )
        .await
        {
            Ok(report) => {
                if !report.scaled.is_empty() || report.unschedulable > 0 {
                    tracing::info!(pending = report.pending, scaled = ?report.scaled, unschedulable = report.unschedulable, dry_run = config.dry_run, "provisioner pass");
                }
                // Pods that arrived during the pass have waited for a window already.
                again = changes.has_changed().unwrap_or(false);
                wait = report
                    .revisit_at
                    .map(|t| (t - ctx.clock.now()).to_std().unwrap_or(Duration::ZERO))
                    .map_or(config.resync, |w| w.min(config.resync));
            }
            Err(e) => {
                ctx.metrics
                    .reconcile_errors
                    .with_label_values(&[CONTROLLER, e.category()])
                    .inc();
                tracing::warn!(error = %e, "provisioner pass failed");
                // A conflict means the cache is behind berth's own write: plan again as soon as it catches up.
                let pause = if e.category() == "conflict" {
                    Duration::from_millis(100)
                } else {
                    Duration::from_secs(2)
                };
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                again = true;
            }
        }
    }
}

/// Waits until the burst settles; false when shutting down.
async fn batch_window(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    config: &ProvisionerConfig,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let deadline = tokio::time::Instant::now() + config.batch_max;
    loop {
        let idle_end = (tokio::time::Instant::now() + config.batch_idle).min(deadline);
        tokio::select! {
            _ = shutdown.as_mut() => return false,
            r = changes.changed() => {
                if r.is_err() { return false }
                if tokio::time::Instant::now() >= deadline { return true }
            }
            _ = tokio::time::sleep_until(idle_end) => return true,
        }
    }
}

/// observe → plan → apply → report, once.
async fn pass(
    ctx: &Context,
    cache: &ClusterCache,
    start_catalog: &Arc<Catalog>,
    cloud: Option<&dyn CloudProvider>,
    config: &ProvisionerConfig,
    announced: &mut Memory,
) -> Result<PassReport, ProvisionerError> {
    let now = ctx.clock.now();
    let started = std::time::Instant::now();
    // The cloud's current catalog (it caches and refreshes prices itself), less the offerings EC2 just refused,
    // so the next launch goes elsewhere at once.
    // (`instance_types` applies the cloud's unavailable cache itself; the start-up catalog needs it applied here.)
    let catalog = match cloud {
        Some(c) => c.instance_types().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the catalog; planning with the one read at start");
            let mut catalog = start_catalog.clone();
            c.unavailable_offerings().apply(&mut catalog);
            catalog
        }),
        None => start_catalog.clone(),
    };
    let catalog = &catalog;
    tracing::debug!(
        millis = started.elapsed().as_millis() as u64,
        "provisioner pass: catalog read"
    );
    let objects = cache.objects();
    let mut observation = observe_with(
        &objects,
        catalog,
        &config.observe,
        &announced.nominations,
        now,
        &mut announced.readings,
    );
    tracing::debug!(
        millis = started.elapsed().as_millis() as u64,
        pods = objects.pods.len(),
        pending = observation.snapshot.pending.len(),
        "provisioner pass: observed"
    );
    if let Some(c) = cloud {
        match c.node_groups().await {
            Ok(groups) => add_auto_scaling_groups(&mut observation, &groups, catalog, now),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Auto Scaling groups; planning without them")
            }
        }
    }
    for (namespace, name, why) in &observation.invalid_groups {
        announce_invalid_group(ctx, announced, namespace, name, why);
    }
    if !config.dry_run {
        nominate(ctx, &observation, announced).await;
    }
    let real_pending = observation
        .snapshot
        .pending
        .iter()
        .filter(|p| p.spec.namespace != HEADROOM_NAMESPACE)
        .count()
        + observation.riding.len();
    ctx.metrics
        .pods_unschedulable
        .set((real_pending + observation.skipped.len()) as i64);
    ctx.metrics.pods_pending.set(
        objects
            .pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
            .count() as i64,
    );
    let mut report = PassReport {
        pending: real_pending,
        revisit_at: observation.revisit_at,
        ..Default::default()
    };
    if let Some(why) = cluster_blocker(&observation, config.observe.cluster_name.as_deref()) {
        // Without a valid Cluster there is no policy to act under (limits, bootstrap): the pods are told why.
        if announced
            .notices
            .insert("cluster".into(), why.clone())
            .as_ref()
            != Some(&why)
        {
            tracing::warn!("not scaling up: {why}");
        }
        for pod in observation
            .snapshot
            .pending
            .iter()
            .map(|p| p.key())
            .chain(observation.riding.iter().cloned())
        {
            if !is_headroom(&pod) && announced.not_triggered.get(&pod) != Some(&why) {
                publish_on_pod(ctx, &pod, EventKind::Normal, "NotTriggerScaleUp", &why);
                announced.not_triggered.insert(pod, why.clone());
            }
        }
        report.unschedulable = real_pending;
        return Ok(report);
    }
    announced.notices.remove("cluster");
    if observation.snapshot.pending.is_empty() {
        forget_settled(ctx, announced, &observation, &objects, now);
        return Ok(report);
    }

    let timer = ctx
        .metrics
        .solve_duration_seconds
        .with_label_values(&["scale_up"])
        .start_timer();
    let plan = solve(&observation.snapshot, catalog, now)?;
    timer.observe_duration();
    tracing::debug!(
        millis = started.elapsed().as_millis() as u64,
        machines = plan.new_machines.len(),
        "provisioner pass: solved"
    );
    ctx.metrics
        .solve_pods
        .with_label_values(&["scale_up"])
        .observe(observation.snapshot.pending.len() as f64);

    let by_group = machines_by_group(&plan);
    for (group, machines) in &by_group {
        if let Some((asg, desired)) = observation.auto_scaling_groups.get(group) {
            let message = scale_up_message(group, machines, config.dry_run);
            if !config.dry_run {
                let cloud = cloud.ok_or_else(|| ProvisionerError::AutoScaling {
                    group: asg.clone(),
                    reason: "no cloud".into(),
                })?;
                cloud
                    .set_node_group_desired_capacity(asg, desired + machines.len() as u32)
                    .await
                    .map_err(|e| ProvisionerError::AutoScaling {
                        group: asg.clone(),
                        reason: e.to_string(),
                    })?;
            }
            ctx.metrics
                .scale_up_decisions
                .with_label_values(&[group])
                .inc();
            report.scaled.insert(group.clone(), machines.len() as u32);
            tracing::info!(group = %group, machines = machines.len(), dry_run = config.dry_run, "{message}");
            announce_triggered(ctx, announced, &observation, machines, &message);
            continue;
        }
        let Some(target) = observation.groups.get(group) else {
            continue;
        };
        let shapes = launch_shapes(target, machines, now);
        if !config.dry_run {
            scale_up(ctx, target, &shapes, now).await?;
            for (machine, shape) in machines.iter().zip(&shapes) {
                for pod in &machine.pods {
                    announced.nominations.insert(pod.clone(), shape.id.clone());
                }
            }
        }
        ctx.metrics
            .scale_up_decisions
            .with_label_values(&[group])
            .inc();
        report.scaled.insert(group.clone(), machines.len() as u32);
        let message = scale_up_message(group, machines, config.dry_run);
        tracing::info!(group = %group, machines = machines.len(), pods = machines.iter().map(|m| m.pods.len()).sum::<usize>(), dry_run = config.dry_run, "{message}");
        let md_ref = ObjectReference {
            api_version: Some("berth.dev/v1alpha1".into()),
            kind: Some("MachineDeployment".into()),
            namespace: Some(target.namespace.clone()),
            name: Some(target.name.clone()),
            ..Default::default()
        };
        ctx.events.publish(
            &md_ref,
            EventKind::Normal,
            "ScaledUp",
            &format!(
                "{message} for {} pending pods",
                machines.iter().map(|m| m.pods.len()).sum::<usize>()
            ),
        );
        announce_triggered(ctx, announced, &observation, machines, &message);
    }
    let in_flight: HashSet<&str> = observation
        .snapshot
        .in_flight
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    for a in plan
        .assignments
        .iter()
        .filter(|a| in_flight.contains(a.node.as_str()))
    {
        announced.nominations.insert(a.pod.clone(), a.node.clone());
    }
    report.unschedulable = plan
        .unschedulable
        .iter()
        .filter(|u| !is_headroom(&u.pod))
        .count()
        + observation.skipped.len();
    announce_unschedulable(ctx, announced, &observation, &plan);
    forget_settled(ctx, announced, &observation, &objects, now);
    Ok(report)
}

/// Makes pending pods' `status.nominatedNodeName` say which registered node berth expects them on (see
/// `state::nomination`), before the node turns Ready and the scheduler fills it in its own order. A write refused
/// because the pod changed or was bound meanwhile is dropped: the next pass reads the pod again.
async fn nominate(ctx: &Context, observation: &Observation, announced: &mut Memory) {
    let writes = nomination_writes(
        &observation.expected_nodes,
        &observation.pending_objects,
        &announced.nominated_nodes,
    );
    if writes.is_empty() {
        return;
    }
    let results: Vec<_> = futures::stream::iter(writes)
        .map(|w| async move {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.namespace);
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": w.resource_version},
                "status": {"nominatedNodeName": w.node},
            });
            let result = api
                .patch_status(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            (w, result)
        })
        .buffer_unordered(NOMINATION_WRITES_IN_FLIGHT)
        .collect()
        .await;
    for (w, result) in results {
        let key = format!("{}/{}", w.namespace, w.name);
        match result {
            Ok(_) => match w.node {
                Some(node) => announced.nominated_nodes.insert(key, node),
                None => announced.nominated_nodes.remove(&key),
            },
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => None,
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, "cannot write the pod's nominated node");
                None
            }
        };
    }
}

/// Pods no longer pending need no memory; those that triggered a scale-up and are now bound are timed (the last
/// pass of a burst usually has no pending pod left, so this runs on that path too).
fn forget_settled(
    ctx: &Context,
    announced: &mut Memory,
    observation: &Observation,
    objects: &crate::state::cluster::ClusterObjects,
    now: chrono::DateTime<chrono::Utc>,
) {
    let pending: HashSet<String> = observation
        .snapshot
        .pending
        .iter()
        .map(|p| p.key())
        .collect();
    announced
        .nominations
        .retain(|p, _| pending.contains(p) || observation.riding.contains(p));
    // A pod bound since has its nomination cleared by the API server.
    announced
        .nominated_nodes
        .retain(|p, _| observation.pending_objects.contains_key(p));
    let mut gone = Vec::new();
    announced.triggered.retain(|p, v| {
        let keep = pending.contains(p) || observation.riding.contains(p);
        if !keep {
            gone.push((p.clone(), v.clone()));
        }
        keep
    });
    record_scheduled(ctx, objects, gone, now);
    announced.not_triggered.retain(|p, _| pending.contains(p));
}

/// Why berth may not scale up for this cluster at all: its Cluster object is missing or invalid.
fn cluster_blocker(observation: &Observation, cluster_name: Option<&str>) -> Option<String> {
    match &observation.cluster {
        None => Some(match cluster_name {
            Some(n) => format!("no Cluster object has spec.clusterName {n}; berth launches nothing without one"),
            None => "no single Cluster object to act for (create one, or run berth with --cluster-name); berth launches nothing without it".into(),
        }),
        Some(c) => {
            let problems = crate::state::cluster_check::problems(&c.spec);
            (!problems.is_empty()).then(|| format!("Cluster {} is invalid: {}", c.metadata.name.as_deref().unwrap_or_default(), problems.join("; ")))
        }
    }
}

fn machines_by_group(plan: &Plan) -> BTreeMap<String, Vec<&NewMachine>> {
    let mut out: BTreeMap<String, Vec<&NewMachine>> = BTreeMap::new();
    for m in &plan.new_machines {
        out.entry(m.group.clone()).or_default().push(m);
    }
    out
}

/// One queued shape per new machine: its instance types (cheapest first, so the cloud can fall back), the zone
/// the plan placed its pods in and the capacity type chosen. Ids are unique per group and pass.
fn launch_shapes(
    target: &GroupTarget,
    machines: &[&NewMachine],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<LaunchShapeEntry> {
    let stamp = now.timestamp_millis();
    machines
        .iter()
        .enumerate()
        .map(|(i, m)| LaunchShapeEntry {
            id: format!("{}-{stamp}-{i}", target.name),
            shape: MachineShape {
                instance_types: m.instance_types.clone(),
                zones: vec![m.zone.clone()],
                capacity_types: vec![match m.capacity_type {
                    CapacityType::Spot => CapacityTypeSpec::Spot,
                    CapacityType::OnDemand => CapacityTypeSpec::OnDemand,
                }],
            },
        })
        .collect()
}

/// Raises replicas and queues the shapes in one write, conditional on the version the plan was made from.
async fn scale_up(
    ctx: &Context,
    target: &GroupTarget,
    shapes: &[LaunchShapeEntry],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProvisionerError> {
    let mut queue = target.open_shapes.clone();
    queue.extend(shapes.iter().cloned());
    let text =
        serde_json::to_string(&queue).map_err(|e| ProvisionerError::Encode(e.to_string()))?;
    let replicas = (target.replicas + shapes.len() as u32).min(target.max_replicas);
    let mut patch = serde_json::json!({
        "metadata": {"annotations": {keys::LAUNCH_SHAPES: text, keys::LAST_SCALE_UP: now.to_rfc3339()}},
        "spec": {"replicas": replicas},
    });
    if let Some(rv) = &target.resource_version {
        patch["metadata"]["resourceVersion"] = serde_json::json!(rv);
    }
    let api: Api<MachineDeployment> = Api::namespaced(ctx.client.clone(), &target.namespace);
    match api
        .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(ProvisionerError::Conflict {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        }),
        Err(source) => Err(ProvisionerError::Scale {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            source,
        }),
    }
}

/// "group general +3 (c6i.2xlarge, m6i.2xlarge)": the types the machines are expected to launch as.
fn scale_up_message(group: &str, machines: &[&NewMachine], dry_run: bool) -> String {
    let mut types: Vec<&str> = machines.iter().map(|m| m.instance_type.as_str()).collect();
    types.sort();
    types.dedup();
    let verb = if dry_run { "would scale" } else { "group" };
    format!("{verb} {group} +{} ({})", machines.len(), types.join(", "))
}

/// TriggeredScaleUp on each pod the new machines are for, once.
fn announce_triggered(
    ctx: &Context,
    announced: &mut Memory,
    observation: &Observation,
    machines: &[&NewMachine],
    message: &str,
) {
    for m in machines {
        for pod in &m.pods {
            if is_headroom(pod) || announced.triggered.contains_key(pod) {
                continue;
            }
            let since = observation
                .pending_since
                .get(pod)
                .copied()
                .unwrap_or_else(|| ctx.clock.now());
            announced
                .triggered
                .insert(pod.clone(), (m.group.clone(), since));
            announced.not_triggered.remove(pod);
            publish_on_pod(ctx, pod, EventKind::Normal, "TriggeredScaleUp", message);
        }
    }
}

/// Pods that triggered a scale-up and are no longer pending: those now bound count into the pending-to-scheduled
/// histogram of their group (deleted ones do not), and, when the node they landed on was launched after they
/// became unschedulable, into pending-to-launch and pending-to-node-Ready too (a pod that found room on an older
/// node measures nothing about a launch).
fn record_scheduled(
    ctx: &Context,
    objects: &crate::state::cluster::ClusterObjects,
    gone: Vec<(String, (String, chrono::DateTime<chrono::Utc>))>,
    now: chrono::DateTime<chrono::Utc>,
) {
    use crate::clock::from_k8s;
    if gone.is_empty() {
        return;
    }
    let gone: HashMap<String, (String, chrono::DateTime<chrono::Utc>)> = gone.into_iter().collect();
    // Machines by provider ID, not by status.nodeRef: the Machine controller fills nodeRef on its next pass, often
    // after the binder has placed the pods this pass times.
    let launched: HashMap<&str, chrono::DateTime<chrono::Utc>> = objects
        .machines
        .iter()
        .filter_map(|m| {
            let status = m.status.as_ref()?;
            Some((
                status.provider_id.as_deref()?,
                from_k8s(status.launch_time.as_ref()?.0),
            ))
        })
        .collect();
    let nodes: HashMap<&str, &k8s_openapi::api::core::v1::Node> = objects
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.as_ref())))
        .collect();
    let launch_of = |node: &str| -> Option<chrono::DateTime<chrono::Utc>> {
        let provider = nodes.get(node)?.spec.as_ref()?.provider_id.as_deref()?;
        launched.get(provider).copied()
    };
    let ready_since = |node: &str| -> Option<chrono::DateTime<chrono::Utc>> {
        let ready = nodes
            .get(node)?
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")?;
        Some(from_k8s(ready.last_transition_time.as_ref()?.0))
    };
    let seconds = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        (to - from).num_milliseconds().max(0) as f64 / 1000.0
    };
    for pod in &objects.pods {
        let key = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let Some((group, since)) = gone.get(&key) else {
            continue;
        };
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        ctx.metrics
            .pod_pending_to_scheduled_seconds
            .with_label_values(&[group])
            .observe(seconds(*since, now));
        if let Some(launch) = launch_of(node).filter(|t| *t >= *since) {
            ctx.metrics
                .pod_pending_to_launch_seconds
                .with_label_values(&[group])
                .observe(seconds(*since, launch));
            if let Some(ready) = ready_since(node) {
                ctx.metrics
                    .pod_pending_to_node_ready_seconds
                    .with_label_values(&[group])
                    .observe(seconds(*since, ready));
            }
        }
    }
}

fn publish_on_pod(ctx: &Context, key: &str, kind: EventKind, reason: &str, message: &str) {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    let object = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    };
    ctx.events.publish(&object, kind, reason, message);
}

/// NotTriggerScaleUp on each pod that no plan can place, once per reason; a limit also on the Cluster or group.
fn announce_unschedulable(
    ctx: &Context,
    announced: &mut Memory,
    observation: &Observation,
    plan: &Plan,
) {
    let mut limits = BTreeMap::new();
    let reasons = plan
        .unschedulable
        .iter()
        .map(|u| (u.pod.clone(), u.reason.clone()))
        .chain(
            observation
                .skipped
                .iter()
                .map(|s| (format!("{}/{}", s.namespace, s.name), s.reason.clone())),
        );
    for (pod, reason) in reasons {
        if is_headroom(&pod) {
            continue;
        }
        if reason.contains("cluster limit") || reason.contains("max replicas") {
            *limits.entry(reason.clone()).or_insert(0usize) += 1;
        }
        if announced.not_triggered.get(&pod) != Some(&reason) {
            publish_on_pod(ctx, &pod, EventKind::Normal, "NotTriggerScaleUp", &reason);
            announced.not_triggered.insert(pod, reason);
        }
    }
    for (reason, pods) in limits {
        let object = match (&observation.cluster, reason.contains("cluster limit")) {
            (Some(c), true) => ObjectReference {
                api_version: Some("berth.dev/v1alpha1".into()),
                kind: Some("Cluster".into()),
                name: c.metadata.name.clone(),
                ..Default::default()
            },
            _ => match observation
                .groups
                .values()
                .find(|g| reason.ends_with(&format!("group {}", g.name)))
            {
                Some(g) => ObjectReference {
                    api_version: Some("berth.dev/v1alpha1".into()),
                    kind: Some("MachineDeployment".into()),
                    namespace: Some(g.namespace.clone()),
                    name: Some(g.name.clone()),
                    ..Default::default()
                },
                None => continue,
            },
        };
        if announced
            .notices
            .insert(format!("limit:{reason}"), reason.clone())
            .is_none()
        {
            ctx.events.publish(
                &object,
                EventKind::Warning,
                "ScaleUpLimited",
                &format!("{reason}: {pods} pods stay pending"),
            );
        }
    }
}

fn announce_invalid_group(
    ctx: &Context,
    announced: &mut Memory,
    namespace: &str,
    name: &str,
    why: &str,
) {
    let key = format!("group:{namespace}/{name}");
    if announced.notices.get(&key).map(String::as_str) == Some(why) {
        return;
    }
    let object = ObjectReference {
        api_version: Some("berth.dev/v1alpha1".into()),
        kind: Some("MachineDeployment".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    };
    ctx.events
        .publish(&object, EventKind::Warning, "NotAutoscaled", why);
    tracing::warn!(deployment = %format!("{namespace}/{name}"), "not autoscaled: {why}");
    announced.notices.insert(key, why.to_string());
}
