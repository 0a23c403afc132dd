//! The MachineSet controller: keeps `spec.replicas` Machines of one template (see `rollout::machine_set` for the
//! decision and the launch-shape queue).
//!
//! # Reading Machines from a cache without creating twice
//!
//! A reconcile follows every Machine change, so listing a set's Machines through the API each time would cost a
//! full list per status write. The controller reads them from one watch-fed cache instead (the same watch triggers
//! the reconciles). A cache lags the controller's own writes, and a reconcile that read it before it showed a
//! Machine just created would create that Machine again, launching a second instance. So, as Kubernetes'
//! ReplicaSet controller does, every create and delete is written down as an expectation
//! ([`super::expectations`]), and a set whose writes the cache has not shown yet creates and deletes nothing
//! (it looks again when the watch event arrives, or when the expectation expires).
//!
//! Launch shapes stay safe with a stale MachineSet too: a shape counts as taken when a Machine carrying its id
//! exists, and once a set's expectations are satisfied the cache shows every Machine this controller created, so a
//! queue entry the set object still shows (its pruning patch not seen yet) is never handed out again.

use super::expectations::{Expectations, Readiness, SeenMachines};
use super::{error_backoff, keys, Context, ControllerError};
use crate::api::common::{find_condition, set_condition, Condition, ConditionStatus};
use crate::api::launch_shapes::{read_shape_queue, LaunchShapeEntry};
use crate::api::{Machine, MachinePhase, MachineSet, MachineSetStatus, MachineShape, MachineSpec};
use crate::clock::from_k8s;
use crate::controllers::events::EventKind;
use crate::model::label_selector::Selector;
use crate::rollout::{plan_machine_set, DeleteOrder, OwnedMachine, QueuedShape};
use crate::state::cluster::trim_meta;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch as signal;

const CONTROLLER: &str = "machine_set";

/// What the MachineSet controller reads beyond the shared context.
pub struct SetContext {
    base: Arc<Context>,
    /// Every Machine, as the watch shows it (managed fields dropped).
    machines: Store<Machine>,
    /// True once the cache has listed every Machine.
    machines_synced: signal::Receiver<bool>,
    expectations: Mutex<Expectations>,
}

impl SetContext {
    fn expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the Machine cache's first full list; false if the cache stopped first.
    async fn wait_synced(&self) -> bool {
        self.machines_synced
            .clone()
            .wait_for(|synced| *synced)
            .await
            .is_ok()
    }
}

/// Runs the controller (and the Machine cache it reads) until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sets: Api<MachineSet> = Api::all(ctx.client.clone());
    // One watch of Machines fills the cache and wakes the owning sets; the cache is written before the wake-up.
    let (machines, writer) = reflector::store();
    let machine_events = reflector::reflector(
        writer,
        watcher(
            Api::<Machine>::all(ctx.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map_ok(|event| event.modify(trim_meta::<Machine>)),
    )
    // Deletions too: a Machine that is gone leaves a place to fill.
    .touched_objects();
    // kube-runtime's `Store::wait_until_ready` wakes only the last task polling it, so one task waits there and
    // the reconciles wait on this signal. It ends by itself when the cache's writer goes with the controller.
    let (synced_tx, machines_synced) = signal::channel(false);
    let ready_store = machines.clone();
    tokio::spawn(async move {
        if ready_store.wait_until_ready().await.is_ok() {
            synced_tx.send_replace(true);
        }
    });
    let set_ctx = Arc::new(SetContext {
        base: ctx,
        machines,
        machines_synced,
        expectations: Mutex::new(Expectations::default()),
    });
    Controller::new(sets, watcher::Config::default())
        .owns_stream(machine_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, set_ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_set: Arc<MachineSet>, error: &ControllerError, ctx: Arc<SetContext>) -> Action {
    ctx.base
        .metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    tracing::warn!(error = %error, "machine set reconcile failed");
    Action::requeue(error_backoff(error))
}

/// Whether a failed request may still have been carried out (a timeout, a server error, a broken connection, an
/// answer that did not decode), as opposed to one the server refused (4xx), which certainly was not.
fn may_have_reached_server(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(s) => !(400..500).contains(&s.code) || s.code == 408,
        _ => true,
    }
}

/// Longest wait for a set whose expectations are unsatisfied: the watch event that satisfies them wakes the set
/// anyway; this only bounds how long a missed wake-up could delay it.
const EXPECTATION_RECHECK: Duration = Duration::from_secs(30);

/// observe → plan → apply → status.
async fn reconcile(
    set: Arc<MachineSet>,
    set_ctx: Arc<SetContext>,
) -> Result<Action, ControllerError> {
    set_ctx.base.wait_turn(&*set).await;
    let ctx = &set_ctx.base;
    let _timer = ctx
        .metrics
        .reconcile_duration_seconds
        .with_label_values(&[CONTROLLER])
        .start_timer();
    if set.metadata.deletion_timestamp.is_some() {
        // Machines go with their owner through the garbage collector.
        if let Some(uid) = set.uid() {
            set_ctx.expectations().forget(&uid);
        }
        return Ok(Action::await_change());
    }
    let namespace = set
        .namespace()
        .ok_or(ControllerError::MissingField("metadata.namespace"))?;
    let uid = set
        .uid()
        .ok_or(ControllerError::MissingField("metadata.uid"))?;
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &namespace);
    let sets: Api<MachineSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.clock.now();

    // Observe, validating what the schema cannot.
    let selector = match Selector::from_api(&set.spec.selector) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            return invalid(
                &set,
                &sets,
                ctx,
                "EmptySelector",
                "spec.selector is empty; it would adopt every Machine in the namespace",
            )
            .await
        }
        Err(e) => {
            return invalid(
                &set,
                &sets,
                ctx,
                "InvalidSelector",
                &format!("spec.selector: {e}"),
            )
            .await
        }
    };
    if !selector.matches(&set.spec.template.metadata.labels) {
        return invalid(
            &set,
            &sets,
            ctx,
            "SelectorMismatch",
            "spec.selector does not match spec.template.metadata.labels",
        )
        .await;
    }
    // Before the cache's first full list, a set's Machines would look missing and be created again.
    if !set_ctx.wait_synced().await {
        return Ok(Action::await_change());
    }
    // The set's Machines and the orphans it may adopt; another controller's Machines are not its business.
    let cached = set_ctx.machines.state_filter(|m| {
        m.metadata.namespace.as_deref() == Some(namespace.as_str())
            && selector.matches(m.labels())
            && m.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .is_none_or(|owner| owner.uid == uid)
    });
    let seen: SeenMachines = cached
        .iter()
        .map(|m| (m.name_any(), m.metadata.deletion_timestamp.is_some()))
        .collect();
    // Act only on a cache that shows every create and delete of this set: otherwise a Machine just created would
    // look missing and be created again.
    if let Readiness::Waiting {
        creates,
        deletes,
        uncertain_creates,
        expires_at,
    } = set_ctx.expectations().observe(&uid, &seen, now)
    {
        tracing::debug!(set = %set.name_any(), creates, deletes, uncertain_creates, "machine cache behind this set's writes; waiting");
        let until_expiry = (expires_at - now).to_std().unwrap_or(Duration::ZERO);
        return Ok(Action::requeue(until_expiry.min(EXPECTATION_RECHECK)));
    }
    let mut owned: Vec<Arc<Machine>> = Vec::with_capacity(cached.len());
    for machine in cached {
        let orphan = !machine
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true));
        if !orphan {
            owned.push(machine);
        } else if machine.metadata.deletion_timestamp.is_none() {
            owned.push(Arc::new(adopt(&api, &set, &machine).await?));
        }
    }
    let queue: Vec<QueuedShape<MachineShape>> = match read_shape_queue(set.annotations()) {
        Ok(q) => q
            .into_iter()
            .map(|e| QueuedShape {
                id: e.id,
                shape: e.shape,
            })
            .collect(),
        Err(message) => {
            ctx.events.publish(
                &set.object_ref(&()),
                EventKind::Warning,
                "InvalidLaunchShapes",
                &message,
            );
            Vec::new()
        }
    };
    let views: Vec<OwnedMachine> = owned.iter().map(|m| view(m, &set, now)).collect();

    // Plan.
    let order = match set.spec.delete_policy {
        crate::api::machine_deployment::DeletePolicy::Random => DeleteOrder::Random,
        crate::api::machine_deployment::DeletePolicy::Newest => DeleteOrder::Newest,
        crate::api::machine_deployment::DeletePolicy::Oldest => DeleteOrder::Oldest,
    };
    let replace_machines = set
        .annotations()
        .get(keys::REPLACE_MACHINES)
        .map(String::as_str)
        != Some("false");
    let plan = plan_machine_set(set.spec.replicas, &views, &queue, order, replace_machines);

    // Apply, writing each create and delete down before the next reconcile can read the cache.
    for shape in &plan.create {
        let machine = new_machine(&set, shape.as_ref());
        match api.create(&PostParams::default(), &machine).await {
            Ok(created) => {
                set_ctx
                    .expectations()
                    .created(&uid, &created.name_any(), ctx.clock.now())
            }
            Err(e) => {
                if may_have_reached_server(&e) {
                    set_ctx
                        .expectations()
                        .create_uncertain(&uid, &seen, ctx.clock.now());
                }
                return Err(e.into());
            }
        }
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => set_ctx.expectations().deleted(&uid, name, ctx.clock.now()),
            // Already gone: the cache will not show it.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                if may_have_reached_server(&e) {
                    set_ctx.expectations().deleted(&uid, name, ctx.clock.now());
                }
                return Err(e.into());
            }
        }
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        tracing::info!(set = %set.name_any(), created = plan.create.len(), deleted = plan.delete.len(), "machine set scaled");
    }
    if !plan.consumed_shapes.is_empty() {
        let remaining: Vec<LaunchShapeEntry> = read_shape_queue(set.annotations())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !plan.consumed_shapes.contains(&e.id))
            .collect();
        let text = serde_json::to_string(&remaining).map_err(|e| ControllerError::Encode {
            what: "launch shapes",
            reason: e.to_string(),
        })?;
        // The set may be stale: the resourceVersion makes the patch fail (and the reconcile retry on a fresh set)
        // rather than drop shapes queued since.
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": set.resource_version(),
            "annotations": {keys::LAUNCH_SHAPES: text},
        }});
        sets.patch(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }

    // Status, once, only when changed.
    let mut status = set.status.clone().unwrap_or_default();
    let before = status.clone();
    status.replicas = plan.status.replicas;
    status.fully_labeled_replicas = plan.status.fully_labeled;
    status.ready_replicas = plan.status.ready;
    status.available_replicas = plan.status.available;
    status.selector = Some(selector.to_query());
    status.failure_reason = None;
    status.failure_message = None;
    status.observed_generation = set.metadata.generation;
    let ready = plan.status.ready >= set.spec.replicas;
    set_condition(
        &mut status.conditions,
        Condition {
            type_: "Valid".into(),
            status: ConditionStatus::True,
            reason: "Valid".into(),
            observed_generation: set.metadata.generation,
            ..Default::default()
        },
        ctx.now_k8s(),
    );
    set_condition(
        &mut status.conditions,
        Condition {
            type_: "Ready".into(),
            status: if ready {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: if ready {
                "MachinesReady".into()
            } else {
                "WaitingForMachines".into()
            },
            message: format!(
                "{} of {} Machines ready",
                plan.status.ready, set.spec.replicas
            ),
            observed_generation: set.metadata.generation,
            ..Default::default()
        },
        ctx.now_k8s(),
    );
    write_status(&sets, &set, &before, status).await?;

    // Ready Machines become available after minReadySeconds: look again then.
    if plan.status.ready > plan.status.available && set.spec.min_ready_seconds > 0 {
        return Ok(Action::requeue(Duration::from_secs(
            set.spec.min_ready_seconds as u64,
        )));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn write_status(
    api: &Api<MachineSet>,
    set: &MachineSet,
    before: &MachineSetStatus,
    after: MachineSetStatus,
) -> Result<(), ControllerError> {
    if *before == after && set.status.is_some() {
        return Ok(());
    }
    let patch = serde_json::json!({"status": after});
    api.patch_status(
        &set.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// An invalid spec: say why (condition and Event), create and delete nothing, wait for a change.
async fn invalid(
    set: &MachineSet,
    api: &Api<MachineSet>,
    ctx: &Context,
    reason: &str,
    message: &str,
) -> Result<Action, ControllerError> {
    let mut status = set.status.clone().unwrap_or_default();
    let before = status.clone();
    status.failure_reason = Some(reason.to_string());
    status.failure_message = Some(message.to_string());
    let changed = set_condition(
        &mut status.conditions,
        Condition {
            type_: "Valid".into(),
            status: ConditionStatus::False,
            reason: reason.into(),
            message: message.into(),
            observed_generation: set.metadata.generation,
            ..Default::default()
        },
        ctx.now_k8s(),
    );
    if changed {
        ctx.events
            .publish(&set.object_ref(&()), EventKind::Warning, reason, message);
    }
    write_status(api, set, &before, status).await?;
    Ok(Action::await_change())
}

async fn adopt(
    api: &Api<Machine>,
    set: &MachineSet,
    machine: &Machine,
) -> Result<Machine, ControllerError> {
    let mut refs = machine.owner_references().to_vec();
    refs.push(owner_reference(set)?);
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs}});
    tracing::info!(machine = %machine.name_any(), set = %set.name_any(), "adopting orphaned machine");
    Ok(api
        .patch(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

fn owner_reference(set: &MachineSet) -> Result<OwnerReference, ControllerError> {
    set.controller_owner_ref(&())
        .ok_or(ControllerError::MissingField("metadata.uid"))
}

fn view(machine: &Machine, set: &MachineSet, now: chrono::DateTime<chrono::Utc>) -> OwnedMachine {
    let status = machine.status.clone().unwrap_or_default();
    let ready_condition =
        find_condition(&status.conditions, "Ready").filter(|c| c.status == ConditionStatus::True);
    let ready = status.phase == MachinePhase::Running && ready_condition.is_some();
    let ready_since = ready_condition
        .and_then(|c| c.last_transition_time.clone())
        .map(|t| from_k8s(t.0));
    let available = ready
        && ready_since
            .is_none_or(|since| (now - since).num_seconds() >= set.spec.min_ready_seconds as i64);
    OwnedMachine {
        name: machine.name_any(),
        created: machine
            .metadata
            .creation_timestamp
            .clone()
            .map(|t| from_k8s(t.0))
            .unwrap_or(now),
        deleting: machine.metadata.deletion_timestamp.is_some(),
        failed: status.phase == MachinePhase::Failed,
        ready,
        available,
        marked_for_deletion: machine
            .annotations()
            .contains_key(crate::api::DELETE_MACHINE_ANNOTATION),
        shape_id: machine.annotations().get(keys::SHAPE_ID).cloned(),
        fully_labeled: set
            .spec
            .template
            .metadata
            .labels
            .iter()
            .all(|(k, v)| machine.labels().get(k) == Some(v)),
    }
}

fn new_machine(set: &MachineSet, shape: Option<&QueuedShape<MachineShape>>) -> Machine {
    let template = &set.spec.template;
    let mut annotations = template.metadata.annotations.clone();
    let mut labels = template.metadata.labels.clone();
    // Machines carry their group's name, so the autoscaler finds a Machine's group without walking owners.
    if let Some(group) = set.labels().get(keys::MACHINE_DEPLOYMENT) {
        labels.insert(keys::MACHINE_DEPLOYMENT.into(), group.clone());
    }
    if let Some(s) = shape {
        annotations.insert(keys::SHAPE_ID.into(), s.id.clone());
    }
    Machine {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.name_any())),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: if annotations.is_empty() {
                None
            } else {
                Some(annotations)
            },
            owner_references: set.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: MachineSpec {
            class_ref: template.spec.class_ref.clone(),
            node_labels: template.spec.node_labels.clone(),
            taints: template.spec.taints.clone(),
            startup_taints: template.spec.startup_taints.clone(),
            shape: shape.map(|s| s.shape.clone()),
            provider_id: None,
        },
        status: None,
    }
}
