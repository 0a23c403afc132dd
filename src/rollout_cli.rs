//! `berth rollout status|history|undo|pause|resume|restart`: `kubectl rollout` for MachineDeployments.

use crate::api::common::{find_condition, ConditionStatus, MachineTemplate};
use crate::api::{MachineDeployment, MachineSet};
use crate::clock::{Clock, SystemClock};
use crate::controllers::keys;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use std::fmt::Write;

#[derive(Debug, thiserror::Error)]
pub enum RolloutCliError {
    #[error("MachineDeployment {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("MachineDeployment {name} has no revision {revision}; `berth rollout history {name}` lists them")]
    NoSuchRevision { name: String, revision: u64 },
    #[error("MachineDeployment {0} has no previous revision to roll back to")]
    NoPreviousRevision(String),
    #[error("rollout of {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl RolloutCliError {
    pub fn category(&self) -> &'static str {
        match self {
            RolloutCliError::NotFound { .. } => "not_found",
            RolloutCliError::NoSuchRevision { .. } => "no_such_revision",
            RolloutCliError::NoPreviousRevision(_) => "no_previous_revision",
            RolloutCliError::Failed { .. } => "failed",
            RolloutCliError::Kube(_) => "kube_api",
        }
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutCommand {
    /// Show the rollout's progress; with --watch, wait until it completes or fails.
    Status {
        name: String,
        #[arg(long)]
        watch: bool,
    },
    /// List the revisions (MachineSets) of a MachineDeployment.
    History { name: String },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        name: String,
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Pause rollouts (scaling still works).
    Pause { name: String },
    /// Resume rollouts.
    Resume { name: String },
    /// Replace every Machine, by changing a template annotation.
    Restart { name: String },
}

/// Runs one rollout command and returns what to print.
pub async fn run(
    client: Client,
    namespace: &str,
    command: RolloutCommand,
) -> Result<String, RolloutCliError> {
    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), namespace);
    let sets: Api<MachineSet> = Api::namespaced(client, namespace);
    let get = |name: &str| {
        let mds = mds.clone();
        let name = name.to_string();
        let namespace = namespace.to_string();
        async move {
            mds.get_opt(&name)
                .await?
                .ok_or(RolloutCliError::NotFound { namespace, name })
        }
    };
    match command {
        RolloutCommand::Status { name, watch } => loop {
            let md = get(&name).await?;
            let (line, done) = status_line(&md)?;
            if done || !watch {
                return Ok(line);
            }
            println!("{line}");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        },
        RolloutCommand::History { name } => {
            let md = get(&name).await?;
            let mut revisions = revisions(&sets, &md).await?;
            revisions.sort_by_key(|(r, _)| *r);
            let mut out =
                format!("machinedeployment.berth.dev/{name}\nREVISION  MACHINESET  CHANGE-CAUSE\n");
            for (revision, set) in revisions {
                let cause = set
                    .annotations()
                    .get("kubernetes.io/change-cause")
                    .cloned()
                    .unwrap_or_else(|| "<none>".into());
                let _ = writeln!(out, "{revision:<8}  {}  {cause}", set.name_any());
            }
            Ok(out)
        }
        RolloutCommand::Undo { name, to_revision } => {
            // The controller writes status all the time, so the update below may meet a newer resourceVersion:
            // read and decide again (a few times) rather than fail.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let md = get(&name).await?;
                let mut revisions = revisions(&sets, &md).await?;
                revisions.sort_by_key(|(r, _)| std::cmp::Reverse(*r));
                let current = md.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
                let target = match to_revision {
                    Some(r) => revisions.iter().find(|(rev, _)| *rev == r).ok_or(
                        RolloutCliError::NoSuchRevision {
                            name: name.clone(),
                            revision: r,
                        },
                    )?,
                    None => revisions
                        .iter()
                        .find(|(rev, _)| *rev != current)
                        .ok_or_else(|| RolloutCliError::NoPreviousRevision(name.clone()))?,
                };
                let template = strip_revision_labels(target.1.spec.template.clone());
                // Replace the whole template (a merge patch would keep fields the old revision did not have); the
                // update carries the resourceVersion read above, so a concurrent change makes it fail, not mix.
                let mut updated = md.clone();
                updated.spec.template = template;
                match mds.replace(&name, &PostParams::default(), &updated).await {
                    Ok(_) => {
                        return Ok(format!(
                            "machinedeployment.berth.dev/{name} rolled back to revision {}",
                            target.0
                        ))
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        RolloutCommand::Pause { name } => {
            get(&name).await?;
            mds.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"spec": {"paused": true}})),
            )
            .await?;
            Ok(format!("machinedeployment.berth.dev/{name} paused"))
        }
        RolloutCommand::Resume { name } => {
            get(&name).await?;
            mds.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"spec": {"paused": false}})),
            )
            .await?;
            Ok(format!("machinedeployment.berth.dev/{name} resumed"))
        }
        RolloutCommand::Restart { name } => {
            get(&name).await?;
            let now = SystemClock.now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"berth.dev/restartedAt": now}}}}});
            mds.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(format!("machinedeployment.berth.dev/{name} restarted"))
        }
    }
}

/// kubectl-style progress line and whether the rollout is over; a failed rollout is an error.
fn status_line(md: &MachineDeployment) -> Result<(String, bool), RolloutCliError> {
    let name = md.name_any();
    let desired = md.spec.replicas.unwrap_or(1);
    let status = md.status.clone().unwrap_or_default();
    if status.observed_generation < md.metadata.generation {
        return Ok((format!("Waiting for machinedeployment \"{name}\" rollout to start: the spec change is not observed yet..."), false));
    }
    if let Some(c) = find_condition(&status.conditions, "Progressing") {
        if c.status == ConditionStatus::False {
            return Err(RolloutCliError::Failed {
                name,
                message: c.message.clone(),
            });
        }
    }
    if md.spec.paused {
        return Ok((format!("machinedeployment \"{name}\" is paused"), true));
    }
    if status.updated_replicas < desired {
        return Ok((format!("Waiting for machinedeployment \"{name}\" rollout to finish: {} out of {desired} new machines have been updated...", status.updated_replicas), false));
    }
    if status.replicas > status.updated_replicas {
        return Ok((format!("Waiting for machinedeployment \"{name}\" rollout to finish: {} old machines are pending termination...", status.replicas - status.updated_replicas), false));
    }
    if status.available_replicas < status.updated_replicas {
        return Ok((format!("Waiting for machinedeployment \"{name}\" rollout to finish: {} of {} updated machines are available...", status.available_replicas, status.updated_replicas), false));
    }
    Ok((
        format!("machinedeployment \"{name}\" successfully rolled out"),
        true,
    ))
}

async fn revisions(
    sets: &Api<MachineSet>,
    md: &MachineDeployment,
) -> Result<Vec<(u64, MachineSet)>, RolloutCliError> {
    let uid = md.uid().unwrap_or_default();
    let listed = sets
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            keys::MACHINE_DEPLOYMENT,
            md.name_any()
        )))
        .await?;
    Ok(listed
        .items
        .into_iter()
        .filter(|s| s.owner_references().iter().any(|o| o.uid == uid))
        .filter_map(|s| {
            s.annotations()
                .get(keys::REVISION)
                .and_then(|r| r.parse().ok())
                .map(|r| (r, s))
        })
        .collect())
}

/// A revision's template without the labels the controller adds, i.e. as the user wrote it.
fn strip_revision_labels(mut template: MachineTemplate) -> MachineTemplate {
    template.metadata.labels.remove(keys::TEMPLATE_HASH);
    template
}
