//! The MachineSet controller: keeps `spec.replicas` Machines of one template (see `rollout::machine_set` for the
//! decision and the launch-shape queue).

use super::{error_backoff, keys, Context, ControllerError};
use crate::api::common::{find_condition, set_condition, Condition, ConditionStatus};
use crate::api::{Machine, MachinePhase, MachineSet, MachineSetStatus, MachineShape, MachineSpec};
use crate::clock::from_k8s;
use crate::controllers::events::EventKind;
use crate::model::label_selector::Selector;
use crate::rollout::{plan_machine_set, DeleteOrder, OwnedMachine, QueuedShape};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "machine_set";

/// One queued launch shape, as stored in the `berth.dev/launch-shapes` annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchShapeEntry {
    pub id: String,
    #[serde(flatten)]
    pub shape: MachineShape,
}

/// Reads the queue; a malformed annotation is treated as empty (it only steers sizes) and reported by the caller.
pub fn read_shape_queue(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<LaunchShapeEntry>, String> {
    match annotations.get(keys::LAUNCH_SHAPES) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            format!(
                "annotation {} is not a list of shapes: {e}",
                keys::LAUNCH_SHAPES
            )
        }),
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sets: Api<MachineSet> = Api::all(ctx.client.clone());
    let machines: Api<Machine> = Api::all(ctx.client.clone());
    Controller::new(sets, watcher::Config::default())
        .owns(machines, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_set: Arc<MachineSet>, error: &ControllerError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    tracing::warn!(error = %error, "machine set reconcile failed");
    Action::requeue(error_backoff(error))
}

/// observe → plan → apply → status.
pub async fn reconcile(set: Arc<MachineSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let _timer = ctx
        .metrics
        .reconcile_duration_seconds
        .with_label_values(&[CONTROLLER])
        .start_timer();
    if set.metadata.deletion_timestamp.is_some() {
        // Machines go with their owner through the garbage collector.
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
                &ctx,
                "EmptySelector",
                "spec.selector is empty; it would adopt every Machine in the namespace",
            )
            .await
        }
        Err(e) => {
            return invalid(
                &set,
                &sets,
                &ctx,
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
            &ctx,
            "SelectorMismatch",
            "spec.selector does not match spec.template.metadata.labels",
        )
        .await;
    }
    let listed = api
        .list(&ListParams::default().labels(&selector.to_query()))
        .await?;
    let mut owned = Vec::new();
    for machine in listed.items {
        match machine
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        {
            Some(owner) if owner.uid == uid => owned.push(machine),
            Some(_) => {} // another controller's
            None if machine.metadata.deletion_timestamp.is_none() => {
                owned.push(adopt(&api, &set, machine).await?)
            }
            None => {}
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

    // Apply.
    for shape in &plan.create {
        let machine = new_machine(&set, shape.as_ref());
        api.create(&PostParams::default(), &machine).await?;
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
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
        let patch = serde_json::json!({"metadata": {"annotations": {keys::LAUNCH_SHAPES: text}}});
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
    machine: Machine,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_queue_round_trips_and_rejects_garbage() {
        let entries = vec![LaunchShapeEntry {
            id: "p1-0".into(),
            shape: MachineShape {
                instance_types: vec!["m6i.large".into()],
                zones: vec!["us-east-1a".into()],
                capacity_types: vec![],
            },
        }];
        let mut annotations = BTreeMap::new();
        annotations.insert(
            keys::LAUNCH_SHAPES.to_string(),
            serde_json::to_string(&entries).unwrap(),
        );
        assert_eq!(read_shape_queue(&annotations).unwrap(), entries);
        annotations.insert(keys::LAUNCH_SHAPES.to_string(), "{not json".into());
        assert!(read_shape_queue(&annotations)
            .unwrap_err()
            .contains(keys::LAUNCH_SHAPES));
        assert!(read_shape_queue(&BTreeMap::new()).unwrap().is_empty());
    }
}
