//! The MachineDeployment controller: one MachineSet per template revision (the template's hash in its name and
//! labels), rolled between with the pure planner `rollout::plan`.

use super::{error_backoff, keys, stable_hash, Context, ControllerError};
use crate::api::common::{set_condition, Condition, ConditionStatus, MachineTemplate};
use crate::api::launch_shapes::read_shape_queue;
use crate::api::machine_deployment::StrategyType;
use crate::api::{
    MachineClass, MachineDeployment, MachineDeploymentStatus, MachineSet, MachineSetSpec,
};
use crate::clock::from_k8s;
use crate::controllers::events::EventKind;
use crate::model::label_selector::Selector;
use crate::rollout::{plan, DeploymentView, IntOrPercent, Progress, SetView, Strategy};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "machine_deployment";

pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let deployments: Api<MachineDeployment> = Api::all(ctx.client.clone());
    let sets: Api<MachineSet> = Api::all(ctx.client.clone());
    let classes: Api<MachineClass> = Api::all(ctx.client.clone());
    let controller = Controller::new(deployments, watcher::Config::default());
    let deployment_store = controller.store();
    controller
        .owns(sets, watcher::Config::default())
        // A MachineClass that appears (or changes) wakes the deployments that name it, so one that waited for a
        // missing class proceeds at once.
        .watches(
            classes,
            watcher::Config::default(),
            move |class: MachineClass| {
                let name = class.name_any();
                deployment_store
                    .state()
                    .into_iter()
                    .filter(|md| md.spec.template.spec.class_ref.name == name)
                    .map(|md| ObjectRef::from_obj(&*md))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_md: Arc<MachineDeployment>, error: &ControllerError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    tracing::warn!(error = %error, "machine deployment reconcile failed");
    Action::requeue(error_backoff(error))
}

/// The revision's template: the deployment's exactly, plus the hash label that keeps revisions' Machines apart
/// (so `berth rollout undo` restores the user's template by removing that one label).
fn revision_template(md: &MachineDeployment, hash: &str) -> MachineTemplate {
    let mut template = md.spec.template.clone();
    template
        .metadata
        .labels
        .insert(keys::TEMPLATE_HASH.into(), hash.into());
    template
}

/// The template hash of a deployment's current spec (labels berth adds are not part of it).
pub fn template_hash(template: &MachineTemplate) -> Result<String, ControllerError> {
    stable_hash(template)
}

fn int_or_percent(
    field: &'static str,
    v: Option<&IntOrString>,
    default: u32,
) -> Result<IntOrPercent, String> {
    match v {
        None => Ok(IntOrPercent::Int(default)),
        Some(IntOrString::Int(n)) if *n >= 0 => Ok(IntOrPercent::Int(*n as u32)),
        Some(IntOrString::Int(n)) => Err(format!("{field} must not be negative (got {n})")),
        Some(IntOrString::String(s)) => IntOrPercent::parse(field, s).map_err(|e| e.to_string()),
    }
}

pub async fn reconcile(
    md: Arc<MachineDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    ctx.wait_turn(&*md).await;
    let _timer = ctx
        .metrics
        .reconcile_duration_seconds
        .with_label_values(&[CONTROLLER])
        .start_timer();
    if md.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = md.name_any();
    let namespace = md
        .namespace()
        .ok_or(ControllerError::MissingField("metadata.namespace"))?;
    let uid = md
        .uid()
        .ok_or(ControllerError::MissingField("metadata.uid"))?;
    let mds: Api<MachineDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let sets_api: Api<MachineSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.clock.now();

    // Observe and validate what the schema cannot.
    let selector = match Selector::from_api(&md.spec.selector) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return invalid(&md, &mds, &ctx, "EmptySelector", "spec.selector is empty").await,
        Err(e) => {
            return invalid(
                &md,
                &mds,
                &ctx,
                "InvalidSelector",
                &format!("spec.selector: {e}"),
            )
            .await
        }
    };
    if !selector.matches(&md.spec.template.metadata.labels) {
        return invalid(
            &md,
            &mds,
            &ctx,
            "SelectorMismatch",
            "spec.selector does not match spec.template.metadata.labels",
        )
        .await;
    }
    let class = &md.spec.template.spec.class_ref.name;
    if Api::<MachineClass>::all(ctx.client.clone())
        .get_opt(class)
        .await?
        .is_none()
    {
        return invalid(
            &md,
            &mds,
            &ctx,
            "ClassNotFound",
            &format!("MachineClass {class} does not exist"),
        )
        .await;
    }
    let replicas = md.spec.replicas.unwrap_or(1);
    if let Some(bounds) = &md.spec.autoscaling {
        let out_of_bounds = if replicas < bounds.min_replicas {
            Some(format!(
                "spec.replicas {replicas} is below spec.autoscaling.minReplicas {}",
                bounds.min_replicas
            ))
        } else if replicas > bounds.max_replicas {
            Some(format!(
                "spec.replicas {replicas} is above spec.autoscaling.maxReplicas {}",
                bounds.max_replicas
            ))
        } else {
            None
        };
        if let Some(message) = out_of_bounds {
            return invalid(
                &md,
                &mds,
                &ctx,
                "ReplicasOutOfBounds",
                &format!("{message}; no Machine is created or deleted until it is fixed"),
            )
            .await;
        }
    }
    let strategy = match md.spec.strategy.type_ {
        StrategyType::OnDelete => Strategy::OnDelete,
        StrategyType::RollingUpdate => {
            let ru = md.spec.strategy.rolling_update.clone().unwrap_or_default();
            let surge = int_or_percent("maxSurge", ru.max_surge.as_ref(), 1);
            let unavailable = int_or_percent("maxUnavailable", ru.max_unavailable.as_ref(), 0);
            match (surge, unavailable) {
                (Ok(max_surge), Ok(max_unavailable)) => Strategy::RollingUpdate {
                    max_surge,
                    max_unavailable,
                },
                (Err(e), _) | (_, Err(e)) => {
                    return invalid(
                        &md,
                        &mds,
                        &ctx,
                        "InvalidStrategy",
                        &format!("spec.strategy.rollingUpdate.{e}"),
                    )
                    .await
                }
            }
        }
    };

    let hash = template_hash(&md.spec.template)?;
    let listed = sets_api
        .list(&ListParams::default().labels(&format!("{}={}", keys::MACHINE_DEPLOYMENT, name)))
        .await?;
    let owned: Vec<MachineSet> = listed
        .items
        .into_iter()
        .filter(|s| {
            s.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    let revision_of = |s: &MachineSet| {
        s.annotations()
            .get(keys::REVISION)
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let current = owned
        .iter()
        .find(|s| s.labels().get(keys::TEMPLATE_HASH) == Some(&hash));
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let current_revision = current.map(revision_of).unwrap_or(max_revision + 1);
    let current_name = format!("{name}-{hash}");
    let set_view = |s: &MachineSet| {
        let st = s.status.clone().unwrap_or_default();
        SetView {
            name: s.name_any(),
            revision: revision_of(s),
            exists: true,
            spec_replicas: s.spec.replicas,
            replicas: st.replicas,
            available: st.available_replicas,
        }
    };
    let current_view = current.map(set_view).unwrap_or(SetView {
        name: current_name.clone(),
        revision: current_revision,
        exists: false,
        spec_replicas: 0,
        replicas: 0,
        available: 0,
    });
    let old: Vec<SetView> = owned
        .iter()
        .filter(|s| s.labels().get(keys::TEMPLATE_HASH) != Some(&hash))
        .map(set_view)
        .collect();
    let last_progress = md
        .status
        .as_ref()
        .and_then(|s| s.progress_time.clone())
        .map(|t| from_k8s(t.0));
    let view = DeploymentView {
        replicas,
        strategy,
        paused: md.spec.paused,
        current: current_view,
        old,
        revision_history_limit: md.spec.revision_history_limit,
        progress_deadline_seconds: md.spec.progress_deadline_seconds,
        last_progress,
    };

    // Plan.
    let intents = plan(&view, now);

    // Apply. Under OnDelete an old revision's set must not replace the Machines deleted by hand (the current
    // revision takes their places); mark it before anything else moves, so the MachineSet controller never races
    // this controller to a deletion.
    for set in &owned {
        let is_old = set.labels().get(keys::TEMPLATE_HASH) != Some(&hash);
        let want_frozen = is_old && strategy == Strategy::OnDelete;
        let frozen = set
            .annotations()
            .get(keys::REPLACE_MACHINES)
            .map(String::as_str)
            == Some("false");
        if want_frozen != frozen {
            let value = if want_frozen {
                serde_json::json!("false")
            } else {
                serde_json::Value::Null
            };
            let patch =
                serde_json::json!({"metadata": {"annotations": {keys::REPLACE_MACHINES: value}}});
            sets_api
                .patch(
                    &set.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
    }
    let shapes = md.annotations().get(keys::LAUNCH_SHAPES).cloned();
    if let Some(initial) = intents.create_current {
        let set = new_set(&md, &hash, current_revision, initial, shapes.as_deref())?;
        match sets_api.create(&PostParams::default(), &set).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {} // created by a previous attempt
            Err(e) => return Err(e.into()),
        }
        ctx.events
            .publish(&md.object_ref(&()), EventKind::Normal, "CreatedMachineSet", &format!("created MachineSet {current_name} (revision {current_revision}) with {initial} replicas"));
    }
    for intent in &intents.scale {
        let mut patch = serde_json::json!({"spec": {"replicas": intent.to}});
        // New launch shapes travel with the scale-up of the current set.
        if intent.set == current_name {
            if let Some(text) = &shapes {
                patch["metadata"] = serde_json::json!({"annotations": {keys::LAUNCH_SHAPES: merged_shapes(current, text)}});
            }
        }
        sets_api
            .patch(&intent.set, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.events.publish(
            &md.object_ref(&()),
            EventKind::Normal,
            "ScaledMachineSet",
            &intent.note,
        );
    }
    for set in &intents.delete {
        match sets_api.delete(set, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    // Status.
    let totals = owned
        .iter()
        .fold(MachineDeploymentStatus::default(), |mut acc, s| {
            let st = s.status.clone().unwrap_or_default();
            acc.replicas += st.replicas;
            acc.ready_replicas += st.ready_replicas;
            acc.available_replicas += st.available_replicas;
            if s.labels().get(keys::TEMPLATE_HASH) == Some(&hash) {
                acc.updated_replicas = st.replicas;
            }
            acc
        });
    let mut status = md.status.clone().unwrap_or_default();
    let before = status.clone();
    let counts_changed = (
        status.replicas,
        status.updated_replicas,
        status.ready_replicas,
        status.available_replicas,
    ) != (
        totals.replicas,
        totals.updated_replicas,
        totals.ready_replicas,
        totals.available_replicas,
    );
    status.replicas = totals.replicas;
    status.updated_replicas = totals.updated_replicas;
    status.ready_replicas = totals.ready_replicas;
    status.available_replicas = totals.available_replicas;
    status.unavailable_replicas = totals.replicas.saturating_sub(totals.available_replicas);
    status.selector = Some(selector.to_query());
    // A template change waiting for resume is not a revision yet.
    let set_exists = current.is_some() || intents.create_current.is_some();
    status.revision = Some(if set_exists || max_revision == 0 {
        current_revision
    } else {
        max_revision
    });
    status.observed_generation = md.metadata.generation;
    if counts_changed
        || !intents.scale.is_empty()
        || intents.create_current.is_some()
        || status.progress_time.is_none()
    {
        status.progress_time = Some(ctx.now_k8s());
    }
    status.phase = Some(
        match intents.progress {
            Progress::Paused => "Paused",
            Progress::DeadlineExceeded => "Failed",
            Progress::Complete => "Running",
            Progress::Progressing if totals.replicas < replicas => "ScalingUp",
            Progress::Progressing
                if totals.replicas > replicas && view.old.iter().all(|s| s.spec_replicas == 0) =>
            {
                "ScalingDown"
            }
            Progress::Progressing => "RollingOut",
        }
        .into(),
    );
    let (progress_status, progress_reason, progress_message) = match intents.progress {
        Progress::Complete => (
            ConditionStatus::True,
            "NewMachineSetAvailable",
            format!("MachineSet {current_name} has {replicas} available Machines"),
        ),
        Progress::Progressing => (
            ConditionStatus::True,
            "MachineSetUpdated",
            intents.notes.join("; "),
        ),
        Progress::Paused => (
            ConditionStatus::Unknown,
            "DeploymentPaused",
            "rollout paused".to_string(),
        ),
        Progress::DeadlineExceeded => (
            ConditionStatus::False,
            "ProgressDeadlineExceeded",
            format!("no progress for {}s", md.spec.progress_deadline_seconds),
        ),
    };
    let generation = md.metadata.generation;
    let now_k8s = ctx.now_k8s();
    set_condition(
        &mut status.conditions,
        Condition {
            type_: "Valid".into(),
            status: ConditionStatus::True,
            reason: "Valid".into(),
            observed_generation: generation,
            ..Default::default()
        },
        now_k8s.clone(),
    );
    let deadline_newly_exceeded = set_condition(
        &mut status.conditions,
        Condition {
            type_: "Progressing".into(),
            status: progress_status,
            reason: progress_reason.into(),
            message: progress_message.clone(),
            observed_generation: generation,
            ..Default::default()
        },
        now_k8s.clone(),
    ) && intents.progress == Progress::DeadlineExceeded;
    let min_available = match strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => replicas.saturating_sub(
            crate::rollout::resolve_fenceposts(max_surge, max_unavailable, replicas).1,
        ),
        Strategy::OnDelete => replicas,
    };
    let available = totals.available_replicas >= min_available;
    set_condition(
        &mut status.conditions,
        Condition {
            type_: "Available".into(),
            status: if available {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: if available {
                "MinimumReplicasAvailable".into()
            } else {
                "MinimumReplicasUnavailable".into()
            },
            message: format!(
                "{} of {} Machines available (minimum {min_available})",
                totals.available_replicas, replicas
            ),
            observed_generation: generation,
            ..Default::default()
        },
        now_k8s,
    );
    if deadline_newly_exceeded {
        ctx.events.publish(
            &md.object_ref(&()),
            EventKind::Warning,
            "ProgressDeadlineExceeded",
            &progress_message,
        );
    }
    record_metrics(&ctx, &namespace, &name, replicas, &status);
    if status != before || md.status.is_none() {
        mds.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": status})),
        )
        .await?;
    }

    Ok(match intents.progress {
        // Time alone can exceed the deadline: look again when it would.
        Progress::Progressing => Action::requeue(Duration::from_secs(
            md.spec.progress_deadline_seconds.clamp(5, 600) as u64,
        )),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

fn record_metrics(
    ctx: &Context,
    namespace: &str,
    name: &str,
    desired: u32,
    status: &MachineDeploymentStatus,
) {
    let m = &ctx.metrics.deployment_replicas;
    for (state, value) in [
        ("desired", desired),
        ("current", status.replicas),
        ("updated", status.updated_replicas),
        ("ready", status.ready_replicas),
        ("available", status.available_replicas),
    ] {
        m.with_label_values(&[namespace, name, state])
            .set(value as i64);
    }
    let progress = if desired == 0 {
        1.0
    } else {
        (status.updated_replicas.min(status.available_replicas) as f64 / desired as f64).min(1.0)
    };
    ctx.metrics
        .rollout_progress_ratio
        .with_label_values(&[namespace, name])
        .set(progress);
}

/// The deployment's queued shapes added to those the set already has (by id), so none is lost or duplicated.
fn merged_shapes(current: Option<&MachineSet>, deployment_shapes: &str) -> String {
    let mut entries = current
        .map(|s| read_shape_queue(s.annotations()).unwrap_or_default())
        .unwrap_or_default();
    let mut incoming = BTreeMap::new();
    incoming.insert(
        keys::LAUNCH_SHAPES.to_string(),
        deployment_shapes.to_string(),
    );
    for e in read_shape_queue(&incoming).unwrap_or_default() {
        if !entries.iter().any(|x| x.id == e.id) {
            entries.push(e);
        }
    }
    serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into())
}

fn new_set(
    md: &MachineDeployment,
    hash: &str,
    revision: u64,
    replicas: u32,
    shapes: Option<&str>,
) -> Result<MachineSet, ControllerError> {
    let template = revision_template(md, hash);
    let mut selector: LabelSelector = md.spec.selector.clone();
    let mut match_labels = selector.match_labels.take().unwrap_or_default();
    match_labels.insert(keys::TEMPLATE_HASH.into(), hash.into());
    selector.match_labels = Some(match_labels);
    let mut annotations = BTreeMap::from([(keys::REVISION.to_string(), revision.to_string())]);
    if let Some(text) = shapes {
        annotations.insert(keys::LAUNCH_SHAPES.into(), text.to_string());
    }
    Ok(MachineSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", md.name_any())),
            namespace: md.namespace(),
            labels: Some(BTreeMap::from([
                (keys::MACHINE_DEPLOYMENT.to_string(), md.name_any()),
                (keys::TEMPLATE_HASH.to_string(), hash.to_string()),
            ])),
            annotations: Some(annotations),
            owner_references: md.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: MachineSetSpec {
            replicas,
            selector,
            template,
            min_ready_seconds: md.spec.min_ready_seconds,
            delete_policy: md
                .spec
                .strategy
                .rolling_update
                .as_ref()
                .map(|r| r.delete_policy)
                .unwrap_or_default(),
        },
        status: None,
    })
}

async fn invalid(
    md: &MachineDeployment,
    api: &Api<MachineDeployment>,
    ctx: &Context,
    reason: &str,
    message: &str,
) -> Result<Action, ControllerError> {
    let mut status = md.status.clone().unwrap_or_default();
    let before = status.clone();
    status.phase = Some("Failed".into());
    let changed = set_condition(
        &mut status.conditions,
        Condition {
            type_: "Valid".into(),
            status: ConditionStatus::False,
            reason: reason.into(),
            message: message.into(),
            observed_generation: md.metadata.generation,
            ..Default::default()
        },
        ctx.now_k8s(),
    );
    if changed {
        ctx.events
            .publish(&md.object_ref(&()), EventKind::Warning, reason, message);
    }
    if status != before || md.status.is_none() {
        api.patch_status(
            &md.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": status})),
        )
        .await?;
    }
    // Waits for a change to the spec or to the MachineClass (watched); the resync is a safety net.
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_is_stable_and_sensitive() {
        let mut t = MachineTemplate::default();
        t.spec.class_ref.name = "general".into();
        let a = template_hash(&t).unwrap();
        assert_eq!(a, template_hash(&t.clone()).unwrap());
        assert_eq!(a.len(), 8);
        t.spec.node_labels.insert("x".into(), "y".into());
        assert_ne!(a, template_hash(&t).unwrap());
    }

    #[test]
    fn int_or_percent_from_the_api() {
        assert_eq!(
            int_or_percent("maxSurge", None, 1),
            Ok(IntOrPercent::Int(1))
        );
        assert_eq!(
            int_or_percent("maxSurge", Some(&IntOrString::String("25%".into())), 1),
            Ok(IntOrPercent::Percent(25))
        );
        assert!(int_or_percent("maxSurge", Some(&IntOrString::Int(-1)), 1).is_err());
        assert!(
            int_or_percent("maxSurge", Some(&IntOrString::String("x".into())), 1)
                .unwrap_err()
                .contains("maxSurge")
        );
    }
}
