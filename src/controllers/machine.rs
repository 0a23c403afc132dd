//! The Machine controller: one instance per Machine, from launch to termination, over the pure
//! `lifecycle::next_step`.
//!
//! # Per-machine shapes without a race
//!
//! The autoscaler decides an instance shape (instance types, zones, capacity types) per new machine, yet replicas
//! must stay the only control of how many machines exist. The design:
//!
//! 1. The provisioner raises a MachineDeployment's `spec.replicas` and, in the same patch, appends one launch
//!    shape per new machine to the deployment's `berth.dev/launch-shapes` annotation, each with a unique id.
//! 2. The MachineDeployment controller carries the queue to the current MachineSet together with the scale-up.
//! 3. The MachineSet controller creates each missing Machine with the first shape no existing Machine already
//!    took (the `berth.dev/shape-id` annotation): consumption is derived, not popped, so a restart between creating
//!    a Machine and pruning the queue cannot hand a shape out twice.
//! 4. A Machine without a shape (the queue ran dry, or a user scaled by hand) launches with every instance type its
//!    class allows, cheapest first, and the cloud picks the cheapest available offering.
//!
//! A burst therefore never launches more machines than replicas ask for: shapes only steer sizes. A restart loses
//! nothing that matters: shapes live in annotations, the launch attempt in status, and the instance is found by
//! its Machine-uid tag if status never recorded it.

use super::events::EventKind;
use super::{error_backoff, keys, Context, ControllerError};
use crate::api::common::NodeReference;
use crate::api::common::{
    find_condition, set_condition, Condition, ConditionStatus, TaintEffectSpec, TaintSpec,
};
use crate::api::machine_class::{CapacityTypeSpec, ImageFamily, MachineClassSpec};
use crate::api::{Cluster, Machine, MachineClass, MachineDeployment, MachinePhase, MachineStatus};
use crate::clock::{from_k8s, to_k8s};
use crate::cloud::{
    self, Bootstrap, BootstrapFormat, ClassRevision, CloudError, CloudProvider, Instance,
    InstanceLookup, InstanceState, InstanceTypeChoice, LaunchRequest, MachineRef,
};
use crate::health::HealthPolicy;
use crate::lifecycle::{
    next_step, InstanceStatus, LifecyclePolicy, MachineObservation, NodeObservation, Observation,
    Step,
};
use crate::model::duration::parse_duration;
use crate::model::instance_type::{labels, CapacityType};
use crate::model::quantity::parse_units;
use crate::model::taints::Taint;
use crate::state::disruption::node_ready;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONTROLLER: &str = "machine";
/// Most instance types offered to one launch (Karpenter sends at most 60 overrides).
const MAX_LAUNCH_TYPES: usize = 60;

/// The cluster's instances, described at most once per `max_age` however many Machines reconcile.
pub struct InstanceInventory {
    cached: Mutex<InventoryCache>,
    max_age: chrono::Duration,
}

#[derive(Default)]
struct InventoryCache {
    list: Option<(chrono::DateTime<chrono::Utc>, Arc<Vec<Instance>>)>,
    /// Bumped by every launch and termination. A describe that overlapped one may predate it, so its answer is
    /// used once but not kept (otherwise a Machine that just recorded its instance could find it missing).
    generation: u64,
}

impl InstanceInventory {
    pub fn new(max_age: chrono::Duration) -> InstanceInventory {
        InstanceInventory {
            cached: Mutex::new(InventoryCache::default()),
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InventoryCache> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached inventory while it is younger than `max_age` and no older than `not_before` (news of a change
    /// at that time: an answer from before it cannot show the change), else a fresh one.
    async fn get(
        &self,
        cloud: &dyn CloudProvider,
        now: chrono::DateTime<chrono::Utc>,
        not_before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Arc<Vec<Instance>>, CloudError> {
        if let Some((at, list)) = self.lock().list.as_ref() {
            if now - *at < self.max_age && not_before.is_none_or(|t| *at >= t) {
                return Ok(list.clone());
            }
        }
        self.refresh(cloud, now).await
    }

    /// Describes afresh, whatever the cache holds.
    async fn refresh(
        &self,
        cloud: &dyn CloudProvider,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Arc<Vec<Instance>>, CloudError> {
        let generation = self.lock().generation;
        let fresh = Arc::new(cloud.describe_instances().await?);
        let mut cache = self.lock();
        if cache.generation == generation {
            cache.list = Some((now, fresh.clone()));
        }
        Ok(fresh)
    }

    /// Forgets the cache after a launch or a termination, so the next look is fresh.
    fn invalidate(&self) {
        let mut cache = self.lock();
        cache.list = None;
        cache.generation += 1;
    }
}

/// What the Machine controller needs beyond the shared context.
pub struct MachineContext {
    pub base: Arc<Context>,
    pub cloud: Arc<dyn CloudProvider>,
    /// This cluster's name (the Cluster object with this spec.clusterName gives the bootstrap endpoint and CA).
    pub cluster_name: String,
    pub inventory: InstanceInventory,
    pub nodes: Store<Node>,
    /// Instances this process asked EC2 to terminate, and when. The Machine records the request in its status, but
    /// the next reconcile may start from a cache that has not seen that write yet; EC2, eventually consistent,
    /// may still show the instance running then. Without this memory that reconcile terminates it again.
    pub terminations: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
}

/// How long a termination this process requested is remembered: far longer than a cache lags behind a write.
const TERMINATION_MEMORY: chrono::Duration = chrono::Duration::minutes(10);

/// Runs the controller (and the Node reflector it reads) until `shutdown`.
pub async fn run(
    base: Arc<Context>,
    cloud: Arc<dyn CloudProvider>,
    cluster_name: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // The Node cache the reconciler reads (by providerID); it stops with the controller, however that ends.
    let (nodes, writer) = reflector::store();
    // With a backoff: a watch that fails at once (the API gone, as at a test's runtime shutdown) would otherwise
    // retry in a loop that never yields, spinning a worker thread and blocking the runtime's shutdown.
    let node_cache = reflector::reflector(
        writer,
        watcher(
            Api::<Node>::all(base.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .applied_objects()
    .for_each(|_| async {});
    let _node_cache = crate::shutdown::OwnedTask::spawn(node_cache);
    // Until the cache has listed every Node, a Machine's Node looks absent, and a Machine being deleted would be
    // terminated without its drain: a restarted controller must not reconcile before then.
    if nodes.wait_until_ready().await.is_err() {
        return;
    }
    let ctx = Arc::new(MachineContext {
        base: base.clone(),
        cloud,
        cluster_name,
        inventory: InstanceInventory::new(chrono::Duration::seconds(5)),
        nodes,
        terminations: Mutex::default(),
    });
    let machines: Api<Machine> = Api::all(base.client.clone());
    let controller = Controller::new(machines, watcher::Config::default());
    let machine_store = controller.store();
    controller
        // A Node's arrival or readiness change wakes the Machine whose providerID it carries.
        .watches(
            Api::<Node>::all(base.client.clone()),
            watcher::Config::default(),
            move |node: Node| {
                let provider = node.spec.as_ref().and_then(|s| s.provider_id.clone());
                machine_store
                    .state()
                    .into_iter()
                    .filter(|m| {
                        provider.is_some()
                            && m.status.as_ref().and_then(|s| s.provider_id.clone()) == provider
                    })
                    .map(|m| ObjectRef::from_obj(&*m))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_m: Arc<Machine>, error: &ControllerError, ctx: Arc<MachineContext>) -> Action {
    ctx.base
        .metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    tracing::warn!(error = %error, "machine reconcile failed");
    Action::requeue(error_backoff(error))
}

fn node_view(node: &Node, machine: &Machine, pods_to_evict: usize) -> NodeObservation {
    NodeObservation {
        name: node.name_any(),
        ready: node_ready(node),
        unschedulable: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        pods_to_evict,
        startup_taints_left: machine
            .spec
            .startup_taints
            .iter()
            .filter(|t| node_has_taint(node, t))
            .count(),
    }
}

fn node_has_taint(node: &Node, taint: &TaintSpec) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|x| same_taint(x, taint)))
}

/// Taints are identified by key and effect (as `kubectl taint` does).
fn same_taint(node_taint: &k8s_openapi::api::core::v1::Taint, taint: &TaintSpec) -> bool {
    node_taint.key == taint.key && node_taint.effect == effect_name(taint.effect)
}

fn effect_name(effect: TaintEffectSpec) -> &'static str {
    match effect {
        TaintEffectSpec::NoSchedule => "NoSchedule",
        TaintEffectSpec::PreferNoSchedule => "PreferNoSchedule",
        TaintEffectSpec::NoExecute => "NoExecute",
    }
}

pub async fn reconcile(
    machine: Arc<Machine>,
    ctx: Arc<MachineContext>,
) -> Result<Action, ControllerError> {
    ctx.base.wait_turn(&*machine).await;
    let base = &ctx.base;
    let _timer = base
        .metrics
        .reconcile_duration_seconds
        .with_label_values(&[CONTROLLER])
        .start_timer();
    let name = machine.name_any();
    let namespace = machine
        .namespace()
        .ok_or(ControllerError::MissingField("metadata.namespace"))?;
    let uid = machine
        .uid()
        .ok_or(ControllerError::MissingField("metadata.uid"))?;
    let machines: Api<Machine> = Api::namespaced(base.client.clone(), &namespace);
    let now = base.clock.now();
    let status = machine.status.clone().unwrap_or_default();

    // Observe.
    let class = Api::<MachineClass>::all(base.client.clone())
        .get_opt(&machine.spec.class_ref.name)
        .await?;
    let mut policy = class
        .as_ref()
        .map(|c| policy_of(&c.spec))
        .unwrap_or_default();
    let remediation = machine.annotations().get(keys::REMEDIATION).cloned();
    let was_running = status.phase == MachinePhase::Running;
    let deleting = machine.metadata.deletion_timestamp.is_some();
    let find = |inventory: &[Instance]| -> Option<Instance> {
        match &status.instance_id {
            Some(id) => inventory.iter().find(|i| &i.instance_id == id).cloned(),
            None => inventory
                .iter()
                .find(|i| i.machine().is_some_and(|m| m.uid == uid))
                .cloned(),
        }
    };
    // EC2 said the instance is stopping, stopped, shutting down or terminated (the interruption queue): an inventory
    // from before that news cannot be trusted to show it.
    let state_notice = machine
        .annotations()
        .get(keys::INSTANCE_STATE_NOTICE)
        .and_then(|n| n.split_once(": "))
        .and_then(|(t, _)| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    let mut instance = find(
        &ctx.inventory
            .get(ctx.cloud.as_ref(), now, state_notice)
            .await
            .map_err(cloud_error)?,
    );
    let provider_id = instance
        .as_ref()
        .map(|i| i.provider_id())
        .or(status.provider_id.clone());
    let carries =
        |n: &Node, p: &String| n.spec.as_ref().and_then(|s| s.provider_id.as_ref()) == Some(p);
    let mut node = provider_id
        .as_ref()
        .and_then(|p| ctx.nodes.state().into_iter().find(|n| carries(n, p)));
    // The cache may lag behind the API: a recorded Node it does not show is asked for directly, since taking it for
    // gone would skip the drain.
    if let (None, Some(recorded), Some(p)) = (&node, &status.node_ref, &provider_id) {
        node = Api::<Node>::all(base.client.clone())
            .get_opt(&recorded.name)
            .await?
            .filter(|n| carries(n, p))
            .map(Arc::new);
    }
    // Look afresh before concluding what the cached inventory suggests, where a wrong answer costs:
    // - a recorded instance missing, or a Machine being deleted with none to terminate (a previous process may have
    //   launched it and died before recording it): a healthy Machine failed, or an instance leaked;
    // - a Running Machine whose Node vanished: most often its instance was terminated (a spot interruption), which
    //   the cache may not show yet; fresh, the Machine fails and is replaced now rather than waiting as
    //   NodeNotFound for the health check.
    let missing = instance.is_none() && (status.instance_id.is_some() || deleting);
    let node_vanished = node.is_none() && was_running && !deleting && instance.is_some();
    if missing || node_vanished {
        instance = find(
            &ctx.inventory
                .refresh(ctx.cloud.as_ref(), now)
                .await
                .map_err(cloud_error)?,
        );
    }
    // Still missing from the inventory (which lists live instances only): asked by id, EC2 tells a terminated
    // instance (gone for sure) from one it does not show yet (eventual consistency: the planner waits for it).
    let mut confirmed_gone: Option<String> = None;
    if let (None, Some(id)) = (&instance, &status.instance_id) {
        let answers = ctx
            .cloud
            .lookup_instances(std::slice::from_ref(id))
            .await
            .map_err(cloud_error)?;
        if let Some(InstanceLookup::Found(state)) = answers.get(id) {
            if instance_status(*state) == InstanceStatus::Gone {
                confirmed_gone = Some(id.clone());
            }
        }
    }
    // The group's health check may set the startup timeout, and sets the drain timeout of a remediated Machine.
    // Only then is the MachineDeployment read: most reconciles need neither.
    let node_ready = node
        .as_ref()
        .is_some_and(|n| node_view(n, &machine, 0).ready);
    let starting = !deleting && !was_running && !node_ready && instance.is_some();
    if starting || (deleting && remediation.is_some()) {
        if let Some(health) = group_health(base, &machine, &namespace).await? {
            if let Some(timeout) = health.node_startup_timeout {
                policy.node_startup_timeout = timeout;
            }
            if remediation.is_some() {
                // An unreachable node cannot confirm evictions: after the health check's drain timeout the
                // instance goes with whatever is left (Cluster API's choice too).
                policy.drain_timeout = Some(
                    policy
                        .drain_timeout
                        .map_or(health.drain_timeout, |d| d.min(health.drain_timeout)),
                );
                policy.terminate_after_drain_timeout = true;
            }
        }
    }
    let pods_to_evict: Vec<Pod> = match (&node, deleting) {
        (Some(n), true) => Api::<Pod>::all(base.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", n.name_any())))
            .await?
            .items
            .into_iter()
            .filter(crate::model::pod::is_evictable)
            .collect(),
        _ => Vec::new(),
    };
    let observation = Observation {
        machine: MachineObservation {
            created: machine
                .metadata
                .creation_timestamp
                .clone()
                .map(|t| from_k8s(t.0))
                .unwrap_or(now),
            deleting_since: machine
                .metadata
                .deletion_timestamp
                .clone()
                .map(|t| from_k8s(t.0)),
            has_finalizer: machine
                .finalizers()
                .iter()
                .any(|f| f == keys::MACHINE_FINALIZER),
            recorded_instance: status.instance_id.clone(),
            launched_at: status.launch_time.clone().map(|t| from_k8s(t.0)),
            recorded_node: status.node_ref.as_ref().map(|n| n.name.clone()),
            failed: status.phase == MachinePhase::Failed,
            drain_started: find_condition(&status.conditions, "Drained")
                .and_then(|c| c.last_transition_time.clone())
                .map(|t| from_k8s(t.0)),
            termination_requested: find_condition(&status.conditions, "InstanceTerminated")
                .is_some_and(|c| c.status == ConditionStatus::True),
            was_running,
            reclaim: reclaim_of(&machine, &ctx.nodes, node.as_deref()),
        },
        instance: instance
            .as_ref()
            .map(|i| (i.instance_id.clone(), instance_status(i.state)))
            .or(confirmed_gone.map(|id| (id, InstanceStatus::Gone))),
        node: node
            .as_ref()
            .map(|n| node_view(n, &machine, pods_to_evict.len())),
        policy,
    };

    // Plan.
    let step = next_step(&observation, now);
    tracing::debug!(machine = %name, ?step, "machine step");

    // Apply, then write status once.
    let mut new_status = status.clone();
    let mut requeue = Duration::from_secs(60);
    if let Some(note) = &remediation {
        let (reason, message) = note
            .split_once(": ")
            .unwrap_or(("Unhealthy", note.as_str()));
        condition(
            base,
            &mut new_status,
            &machine,
            "HealthCheckSucceeded",
            false,
            reason,
            message,
        );
    }
    if let Some(note) = machine.annotations().get(keys::INTERRUPTION) {
        let (reason, message) = note
            .split_once(": ")
            .unwrap_or(("Interrupted", note.as_str()));
        condition(
            base,
            &mut new_status,
            &machine,
            "Interrupted",
            true,
            reason,
            message,
        );
    }
    match step {
        Step::AddFinalizer => {
            let mut finalizers = machine.finalizers().to_vec();
            finalizers.push(keys::MACHINE_FINALIZER.into());
            machines
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"finalizers": finalizers}})),
                )
                .await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
        Step::Launch => {
            let Some(class) = class else {
                let message = format!(
                    "MachineClass {} does not exist",
                    machine.spec.class_ref.name
                );
                return blocked(
                    &machines,
                    &machine,
                    base,
                    new_status,
                    "ClassNotFound",
                    &message,
                )
                .await;
            };
            let cluster = match find_cluster(base, &ctx.cluster_name).await? {
                Some(c) => c,
                None => {
                    let message = format!(
                        "no Cluster object has spec.clusterName {}",
                        ctx.cluster_name
                    );
                    return blocked(
                        &machines,
                        &machine,
                        base,
                        new_status,
                        "ClusterNotFound",
                        &message,
                    )
                    .await;
                }
            };
            let request = match launch_request(
                &ctx,
                &machine,
                &uid,
                &class,
                &cluster,
                status.launch_attempt,
            )
            .await
            {
                Ok(r) => r,
                Err(message) => {
                    return blocked(
                        &machines,
                        &machine,
                        base,
                        new_status,
                        "InvalidConfiguration",
                        &message,
                    )
                    .await
                }
            };
            match ctx.cloud.launch(&request).await {
                Ok(outcome) => {
                    ctx.inventory.invalidate();
                    let i = &outcome.instance;
                    let group = machine
                        .labels()
                        .get(keys::MACHINE_DEPLOYMENT)
                        .cloned()
                        .unwrap_or_default();
                    tracing::info!(machine = %name, instance = %i.instance_id, instance_type = %i.instance_type, zone = %i.zone, capacity_type = i.capacity_type.as_str(), "launched");
                    base.metrics
                        .machines_launched
                        .with_label_values(&[
                            &group,
                            &i.instance_type,
                            &i.zone,
                            i.capacity_type.as_str(),
                        ])
                        .inc();
                    let price = price_of(&ctx, &i.instance_type, &i.zone, i.capacity_type).await;
                    record_instance(
                        &mut new_status,
                        &i.instance_id,
                        &i.provider_id(),
                        &i.instance_type,
                        &i.zone,
                        i.capacity_type,
                        &i.image_id,
                        Some(i.launch_time),
                        price,
                    );
                    condition(
                        base,
                        &mut new_status,
                        &machine,
                        "InstanceLaunched",
                        true,
                        "Launched",
                        &format!(
                            "{} {} {} ({})",
                            i.instance_id, i.instance_type, i.zone, i.capacity_type
                        ),
                    );
                    base.events.publish(
                        &machine.object_ref(&()),
                        EventKind::Normal,
                        "Launched",
                        &format!(
                            "launched {} as {} in {} ({})",
                            i.instance_id, i.instance_type, i.zone, i.capacity_type
                        ),
                    );
                    requeue = Duration::from_secs(5);
                }
                Err(e) => {
                    let group = machine
                        .labels()
                        .get(keys::MACHINE_DEPLOYMENT)
                        .cloned()
                        .unwrap_or_default();
                    base.metrics
                        .launch_failures
                        .with_label_values(&[&group, e.category()])
                        .inc();
                    if !e.launch_may_have_happened() {
                        new_status.launch_attempt += 1;
                    }
                    // A class that cannot work waits for a change; a token clash moves to the next attempt at once;
                    // capacity and transient failures retry soon (the capacity cache steers the retry elsewhere).
                    let (retry, kind) = match &e {
                        CloudError::InvalidConfiguration { .. }
                        | CloudError::Credentials { .. } => {
                            (Duration::from_secs(300), EventKind::Warning)
                        }
                        CloudError::IdempotencyConflict { .. } => {
                            (Duration::ZERO, EventKind::Normal)
                        }
                        _ => (Duration::from_secs(5), EventKind::Warning),
                    };
                    condition(
                        base,
                        &mut new_status,
                        &machine,
                        "InstanceLaunched",
                        false,
                        reason_of(&e),
                        &e.to_string(),
                    );
                    base.events.publish(
                        &machine.object_ref(&()),
                        kind,
                        reason_of(&e),
                        &e.to_string(),
                    );
                    requeue = retry;
                }
            }
        }
        Step::AdoptInstance { instance_id } => {
            if let Some(i) = &instance {
                tracing::info!(machine = %name, instance = %instance_id, "adopting the instance launched for this machine");
                let price = price_of(&ctx, &i.instance_type, &i.zone, i.capacity_type).await;
                record_instance(
                    &mut new_status,
                    &i.instance_id,
                    &i.provider_id(),
                    &i.instance_type,
                    &i.zone,
                    i.capacity_type,
                    &i.image_id,
                    i.launch_time,
                    price,
                );
                condition(
                    base,
                    &mut new_status,
                    &machine,
                    "InstanceLaunched",
                    true,
                    "Adopted",
                    &instance_id,
                );
            }
            requeue = Duration::from_secs(5);
        }
        Step::WaitForInstance => requeue = Duration::from_secs(5),
        Step::WaitForNode => {
            new_status.phase = MachinePhase::Provisioned;
            requeue = Duration::from_secs(10);
        }
        Step::LinkNode { node: node_name } => {
            if let Some(n) = &node {
                sync_node(base, n, &machine).await?;
            }
            new_status.node_ref = Some(NodeReference {
                name: node_name.clone(),
                uid: node.as_ref().and_then(|n| n.uid()),
            });
            condition(
                base,
                &mut new_status,
                &machine,
                "NodeRegistered",
                true,
                "NodeRegistered",
                &node_name,
            );
            requeue = Duration::ZERO;
        }
        Step::RemoveStartupTaints { node: node_name } => {
            if let Some(n) = &node {
                let keep: Vec<&k8s_openapi::api::core::v1::Taint> = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .map(|ts| {
                        ts.iter()
                            .filter(|x| {
                                !machine.spec.startup_taints.iter().any(|t| same_taint(x, t))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                // Optimistic concurrency: a taint added meanwhile by someone else must not be lost to this write.
                let patch = serde_json::json!({"metadata": {"resourceVersion": n.resource_version()}, "spec": {"taints": keep}});
                Api::<Node>::all(base.client.clone())
                    .patch(&node_name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                base.events.publish(
                    &machine.object_ref(&()),
                    EventKind::Normal,
                    "StartupTaintsRemoved",
                    &format!("removed startup taints from {node_name}"),
                );
            }
            requeue = Duration::ZERO;
        }
        Step::Running => {
            if new_status.phase != MachinePhase::Running {
                base.events.publish(
                    &machine.object_ref(&()),
                    EventKind::Normal,
                    "Running",
                    "Node is Ready",
                );
            }
            new_status.phase = MachinePhase::Running;
            condition(
                base,
                &mut new_status,
                &machine,
                "Ready",
                true,
                "NodeReady",
                "",
            );
            requeue = Duration::from_secs(300);
        }
        Step::NodeUnhealthy { reason, message } => {
            let was_ready = find_condition(&status.conditions, "Ready")
                .is_some_and(|c| c.status == ConditionStatus::True);
            if was_ready {
                base.events.publish(
                    &machine.object_ref(&()),
                    EventKind::Warning,
                    reason,
                    &message,
                );
            }
            condition(
                base,
                &mut new_status,
                &machine,
                "Ready",
                false,
                reason,
                &message,
            );
            requeue = Duration::from_secs(30);
        }
        Step::Fail { reason, message } => {
            new_status.phase = MachinePhase::Failed;
            new_status.failure_reason = Some(reason.into());
            new_status.failure_message = Some(message.clone());
            condition(
                base,
                &mut new_status,
                &machine,
                "Ready",
                false,
                reason,
                &message,
            );
            base.events.publish(
                &machine.object_ref(&()),
                EventKind::Warning,
                reason,
                &message,
            );
        }
        Step::StayFailed => requeue = Duration::from_secs(300),
        Step::Cordon { node: node_name } => {
            new_status.phase = MachinePhase::Deleting;
            Api::<Node>::all(base.client.clone())
                .patch(
                    &node_name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
                )
                .await?;
            requeue = Duration::ZERO;
        }
        Step::HoldForReplacement { node: _, until } => {
            new_status.phase = MachinePhase::Deleting;
            // Look again soon: the capacity may turn Ready any moment.
            requeue = (until - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(2));
        }
        Step::Drain {
            node: node_name,
            remaining,
        } => {
            new_status.phase = MachinePhase::Deleting;
            if find_condition(&new_status.conditions, "Drained").is_none() {
                condition(
                    base,
                    &mut new_status,
                    &machine,
                    "Drained",
                    false,
                    "Draining",
                    &format!("evicting {remaining} pods from {node_name}"),
                );
            }
            for pod in &pods_to_evict {
                let pods: Api<Pod> =
                    Api::namespaced(base.client.clone(), &pod.namespace().unwrap_or_default());
                match pods.evict(&pod.name_any(), &EvictParams::default()).await {
                    Ok(_) => {}
                    // A PodDisruptionBudget forbids it now: try again shortly.
                    Err(kube::Error::Api(s)) if s.code == 429 || s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            requeue = Duration::from_secs(1);
        }
        Step::Terminate { instance_id } => {
            new_status.phase = MachinePhase::Deleting;
            if let Some(started) = find_condition(&new_status.conditions, "Drained")
                .and_then(|c| c.last_transition_time.clone())
            {
                let group = machine
                    .labels()
                    .get(keys::MACHINE_DEPLOYMENT)
                    .cloned()
                    .unwrap_or_default();
                let seconds = (now - from_k8s(started.0)).num_milliseconds() as f64 / 1000.0;
                base.metrics
                    .drain_duration_seconds
                    .with_label_values(&[&group])
                    .observe(seconds.max(0.0));
            }
            condition(
                base,
                &mut new_status,
                &machine,
                "Drained",
                true,
                "Drained",
                "",
            );
            let requested_before = {
                let mut asked = ctx.terminations.lock().unwrap_or_else(|p| p.into_inner());
                asked.retain(|_, at| now - *at < TERMINATION_MEMORY);
                asked.contains_key(&instance_id)
            };
            if !requested_before {
                ctx.cloud
                    .terminate(std::slice::from_ref(&instance_id))
                    .await
                    .map_err(cloud_error)?;
                ctx.terminations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(instance_id.clone(), now);
                ctx.inventory.invalidate();
            }
            condition(
                base,
                &mut new_status,
                &machine,
                "InstanceTerminated",
                true,
                "Terminating",
                &instance_id,
            );
            base.events.publish(
                &machine.object_ref(&()),
                EventKind::Normal,
                "Terminating",
                &format!("terminating {instance_id}"),
            );
            requeue = Duration::from_secs(5);
        }
        Step::WaitForTermination => requeue = Duration::from_secs(5),
        Step::DeleteNode { node: node_name } => {
            match Api::<Node>::all(base.client.clone())
                .delete(&node_name, &Default::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            requeue = Duration::ZERO;
        }
        Step::RemoveFinalizer => {
            let finalizers: Vec<String> = machine
                .finalizers()
                .iter()
                .filter(|f| *f != keys::MACHINE_FINALIZER)
                .cloned()
                .collect();
            machines
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"finalizers": finalizers}})),
                )
                .await?;
            return Ok(Action::await_change());
        }
        Step::Nothing => return Ok(Action::await_change()),
    }
    new_status.observed_generation = machine.metadata.generation;
    if new_status != status || machine.status.is_none() {
        write_status(&machines, &name, &new_status).await?;
    }
    Ok(Action::requeue(requeue))
}

async fn write_status(
    machines: &Api<Machine>,
    name: &str,
    status: &MachineStatus,
) -> Result<(), ControllerError> {
    match machines
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone while we worked (its finalizer was removed): nothing to record.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A launch that cannot happen as the objects stand: say why once and wait for a change.
async fn blocked(
    machines: &Api<Machine>,
    machine: &Machine,
    base: &Context,
    mut status: MachineStatus,
    reason: &str,
    message: &str,
) -> Result<Action, ControllerError> {
    let before = status.clone();
    condition(
        base,
        &mut status,
        machine,
        "InstanceLaunched",
        false,
        reason,
        message,
    );
    if status != before {
        base.events.publish(
            &machine.object_ref(&()),
            EventKind::Warning,
            reason,
            message,
        );
        write_status(machines, &machine.name_any(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// The reclaim of a Machine EC2 interrupts: its deadline, and whether capacity launched since the warning (the
/// Machine's deletion) is Ready: a schedulable Node, not this one, that registered after it and is Ready.
fn reclaim_of(
    machine: &Machine,
    nodes: &Store<Node>,
    own: Option<&Node>,
) -> Option<crate::lifecycle::Reclaim> {
    let deadline = machine
        .annotations()
        .get(keys::INTERRUPTION_DEADLINE)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?
        .with_timezone(&chrono::Utc);
    let warned = machine.metadata.deletion_timestamp.as_ref()?.0;
    let own = own.map(|n| n.name_any());
    // The Node cache is read only here, for a Machine EC2 reclaims: not on every reconcile. A Node it does not
    // show yet keeps the pods where they run, which the drain margin bounds.
    let capacity_ready = nodes.state().iter().any(|n| {
        Some(n.name_any()) != own
            // Timestamps are whole seconds: a node that registered in the warning's second counts.
            && n.metadata.creation_timestamp.as_ref().is_some_and(|t| t.0 >= warned)
            && n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
            && node_ready(n)
    });
    Some(crate::lifecycle::Reclaim {
        deadline,
        capacity_ready,
    })
}

fn condition(
    base: &Context,
    status: &mut MachineStatus,
    machine: &Machine,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) {
    set_condition(
        &mut status.conditions,
        Condition {
            type_: type_.into(),
            status: if ok {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.into(),
            message: message.into(),
            observed_generation: machine.metadata.generation,
            ..Default::default()
        },
        base.now_k8s(),
    );
}

/// The hourly price of an offering, from the cloud's catalog.
async fn price_of(
    ctx: &MachineContext,
    instance_type: &str,
    zone: &str,
    capacity: CapacityType,
) -> Option<f64> {
    let catalog = ctx.cloud.instance_types().await.ok()?;
    let t = catalog.get(instance_type)?;
    t.offerings
        .iter()
        .find(|o| o.zone == zone && o.capacity_type == capacity)
        .map(|o| o.price)
}

/// Records the instance a Machine became (after a launch, or adopted after a restart).
#[allow(clippy::too_many_arguments)]
fn record_instance(
    status: &mut MachineStatus,
    instance_id: &str,
    provider_id: &str,
    instance_type: &str,
    zone: &str,
    capacity: CapacityType,
    image_id: &str,
    launched: Option<chrono::DateTime<chrono::Utc>>,
    price: Option<f64>,
) {
    status.phase = MachinePhase::Provisioning;
    status.instance_id = Some(instance_id.to_string());
    status.provider_id = Some(provider_id.to_string());
    status.instance_type = Some(instance_type.to_string());
    status.zone = Some(zone.to_string());
    status.capacity_type = Some(capacity_spec(capacity));
    status.image_id = Some(image_id.to_string());
    status.price = price.map(|p| format!("{p:.4}"));
    if let Some(t) = launched {
        status.launch_time = Some(Time(to_k8s(t)));
    }
}

fn reason_of(e: &CloudError) -> &'static str {
    match e {
        CloudError::InsufficientCapacity { .. } => "InsufficientCapacity",
        CloudError::RateLimited { .. } => "RateLimited",
        CloudError::InvalidConfiguration { .. } => "InvalidConfiguration",
        CloudError::Credentials { .. } => "CredentialsError",
        CloudError::IdempotencyConflict { .. } => "IdempotencyConflict",
        _ => "LaunchFailed",
    }
}

fn cloud_error(e: CloudError) -> ControllerError {
    ControllerError::Cloud(e.to_string(), e.category())
}

fn instance_status(state: InstanceState) -> InstanceStatus {
    match state {
        InstanceState::Pending => InstanceStatus::Pending,
        InstanceState::Running => InstanceStatus::Running,
        InstanceState::ShuttingDown
        | InstanceState::Terminated
        | InstanceState::Stopping
        | InstanceState::Stopped => InstanceStatus::Gone,
    }
}

fn capacity_spec(c: CapacityType) -> CapacityTypeSpec {
    match c {
        CapacityType::Spot => CapacityTypeSpec::Spot,
        CapacityType::OnDemand => CapacityTypeSpec::OnDemand,
    }
}

/// The health check of the Machine's MachineDeployment (defaults when it declares none); None when the Machine has
/// no group, or its group's check does not parse (the health controller reports that on the group).
async fn group_health(
    base: &Context,
    machine: &Machine,
    namespace: &str,
) -> Result<Option<HealthPolicy>, ControllerError> {
    let Some(group) = machine.labels().get(keys::MACHINE_DEPLOYMENT) else {
        return Ok(None);
    };
    let md = Api::<MachineDeployment>::namespaced(base.client.clone(), namespace)
        .get_opt(group)
        .await?;
    Ok(md.and_then(|md| crate::health::policy_of(md.spec.health_check.as_ref()).ok()))
}

fn policy_of(spec: &MachineClassSpec) -> LifecyclePolicy {
    let dur = |s: &str| {
        parse_duration(s)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
    };
    LifecyclePolicy {
        node_startup_timeout: dur(&spec.node_startup_timeout)
            .unwrap_or(chrono::Duration::minutes(15)),
        drain_timeout: spec.drain_timeout.as_deref().and_then(dur),
        terminate_after_drain_timeout: spec.terminate_after_drain_timeout,
        remove_startup_taints: spec.remove_startup_taints_when_ready,
    }
}

async fn find_cluster(
    base: &Context,
    cluster_name: &str,
) -> Result<Option<Cluster>, ControllerError> {
    let clusters = Api::<Cluster>::all(base.client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(clusters
        .items
        .into_iter()
        .find(|c| c.spec.cluster_name == cluster_name))
}

use crate::state::snapshot::taint_of;

/// Maps the Machine, its class and the Cluster onto the cloud's launch request.
async fn launch_request(
    ctx: &MachineContext,
    machine: &Machine,
    uid: &str,
    class: &MachineClass,
    cluster: &Cluster,
    attempt: u32,
) -> Result<LaunchRequest, String> {
    let spec = &class.spec;
    let image = match (&spec.image.id, &spec.image.selector) {
        (Some(id), _) => cloud::ImageSpec::Id(id.clone()),
        (None, Some(sel)) => cloud::ImageSpec::Selector(cloud::ImageSelector {
            owners: sel.owner.iter().cloned().collect(),
            name: sel.name.clone(),
            tags: sel.tags.clone(),
        }),
        (None, None) => return Err("MachineClass image names neither id nor selector".into()),
    };
    let selector = |s: &crate::api::machine_class::ResourceSelector| {
        if s.ids.is_empty() {
            cloud::ResourceSelector::Tags(s.tags.clone())
        } else {
            cloud::ResourceSelector::Ids(s.ids.clone())
        }
    };
    let instance_types: Vec<InstanceTypeChoice> = match &machine.spec.shape {
        Some(shape) => shape
            .instance_types
            .iter()
            .map(|t| InstanceTypeChoice {
                name: t.clone(),
                zones: shape.zones.clone(),
            })
            .collect(),
        None => {
            let catalog = ctx
                .cloud
                .instance_types()
                .await
                .map_err(|e| e.to_string())?;
            crate::state::class::allowed_instance_types(spec, &catalog, &[])?
                .into_iter()
                .take(MAX_LAUNCH_TYPES)
                .map(|t| InstanceTypeChoice::new(t.name))
                .collect()
        }
    };
    let capacity_types = match machine
        .spec
        .shape
        .as_ref()
        .filter(|s| !s.capacity_types.is_empty())
    {
        Some(shape) => shape
            .capacity_types
            .iter()
            .map(|c| match c {
                CapacityTypeSpec::Spot => CapacityType::Spot,
                CapacityTypeSpec::OnDemand => CapacityType::OnDemand,
            })
            .collect(),
        None => crate::state::class::capacity_types(spec),
    };
    let mut node_labels = machine.spec.node_labels.clone();
    if let Some(group) = machine.labels().get(keys::MACHINE_DEPLOYMENT) {
        node_labels.insert(labels::MACHINE_DEPLOYMENT.into(), group.clone());
    }
    let taints: Vec<Taint> = machine
        .spec
        .taints
        .iter()
        .chain(&machine.spec.startup_taints)
        .filter_map(taint_of)
        .collect();
    let block_devices = spec
        .block_devices
        .iter()
        .map(|b| {
            let bytes = parse_units(&b.volume_size)
                .map_err(|e| format!("blockDevices {}: {e}", b.device_name))?;
            Ok(cloud::BlockDevice {
                device_name: b.device_name.clone(),
                volume_size_gib: bytes.div_ceil(1 << 30) as u32,
                volume_type: b.volume_type.clone(),
                iops: b.iops,
                throughput: b.throughput,
                encrypted: b.encrypted,
                kms_key_id: b.kms_key_id.clone(),
                delete_on_termination: b.delete_on_termination,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(LaunchRequest {
        machine: MachineRef {
            uid: uid.to_string(),
            namespace: machine.namespace().unwrap_or_default(),
            name: machine.name_any(),
        },
        deployment: machine.labels().get(keys::MACHINE_DEPLOYMENT).cloned(),
        cluster_name: ctx.cluster_name.clone(),
        class: ClassRevision {
            name: class.name_any(),
            revision: class.metadata.generation.unwrap_or(0).to_string(),
        },
        instance_types,
        capacity_types,
        fallback_to_on_demand: spec.spot_fallback_to_on_demand,
        image,
        subnets: selector(&spec.subnets),
        security_groups: selector(&spec.security_groups),
        instance_profile: Some(spec.instance_profile.clone()),
        bootstrap: Bootstrap {
            format: match spec.image.family {
                ImageFamily::AL2023 => BootstrapFormat::Al2023,
                ImageFamily::Bottlerocket => BootstrapFormat::Bottlerocket,
                ImageFamily::Custom => BootstrapFormat::Custom {
                    template: spec.user_data.clone().unwrap_or_default(),
                },
            },
            cluster_name: cluster.spec.cluster_name.clone(),
            api_server_endpoint: cluster.spec.api_server_endpoint.clone(),
            certificate_authority: cluster.spec.certificate_authority.clone(),
            cluster_cidr: cluster
                .spec
                .service_cidr
                .clone()
                .unwrap_or_else(|| "10.100.0.0/16".into()),
            labels: node_labels,
            taints,
            class_user_data: match spec.image.family {
                ImageFamily::Custom => None,
                _ => spec.user_data.clone(),
            },
        },
        block_devices,
        tags: spec.tags.clone(),
        metadata_options: cloud::MetadataOptions {
            http_endpoint_enabled: spec.metadata_options.http_endpoint_enabled,
            http_tokens_required: spec.metadata_options.http_tokens == "required",
            http_put_response_hop_limit: spec.metadata_options.http_put_response_hop_limit,
        },
        attempt,
    })
}

/// Puts the Machine's labels and taints on its Node (the kubelet registered with them; this repairs drift).
async fn sync_node(base: &Context, node: &Node, machine: &Machine) -> Result<(), ControllerError> {
    let mut want_labels = machine.spec.node_labels.clone();
    if let Some(group) = machine.labels().get(keys::MACHINE_DEPLOYMENT) {
        want_labels.insert(labels::MACHINE_DEPLOYMENT.into(), group.clone());
    }
    let have = node.labels();
    let missing_labels: std::collections::BTreeMap<&String, &String> = want_labels
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .collect();
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let before = taints.len();
    for t in &machine.spec.taints {
        if !taints
            .iter()
            .any(|x| x.key == t.key && x.effect == format!("{:?}", t.effect))
        {
            taints.push(k8s_openapi::api::core::v1::Taint {
                key: t.key.clone(),
                value: if t.value.is_empty() {
                    None
                } else {
                    Some(t.value.clone())
                },
                effect: format!("{:?}", t.effect),
                time_added: None,
            });
        }
    }
    if missing_labels.is_empty() && taints.len() == before {
        return Ok(());
    }
    let patch =
        serde_json::json!({"metadata": {"labels": missing_labels}, "spec": {"taints": taints}});
    Api::<Node>::all(base.client.clone())
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}
