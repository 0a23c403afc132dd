//! `berth run`: the controller process. It connects to the cluster, refuses to act until berth's CRDs are
//! installed, reports what it finds, and then follows changes to berth's objects and the cluster's nodes.
//! Controllers join this loop as they land; until then it observes and logs, and changes nothing.

use crate::api::{Cluster, Machine, MachineClass, MachineDeployment, MachineSet};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot load kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
    #[error("cannot reach the Kubernetes API server: {0}")]
    Unreachable(String),
    #[error("berth's CRDs are not installed: missing {missing}. Install them with `berth crds | kubectl apply -f -` or the Helm chart")]
    CrdsMissing { missing: String },
    #[error("watch of {kind} failed: {reason}")]
    Watch { kind: String, reason: String },
}

impl OperatorError {
    pub fn category(&self) -> &'static str {
        match self {
            OperatorError::Kubeconfig { .. } => "kubeconfig",
            OperatorError::Client(_) => "client",
            OperatorError::Unreachable(_) => "unreachable",
            OperatorError::CrdsMissing { .. } => "crds_missing",
            OperatorError::Watch { .. } => "watch",
        }
    }
}

/// Builds a client from an explicit kubeconfig file, or the in-cluster / default configuration.
pub async fn connect(kubeconfig: Option<&PathBuf>) -> Result<Client, OperatorError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |reason: String| OperatorError::Kubeconfig { path: path.display().to_string(), reason };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| OperatorError::Client(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| OperatorError::Client(e.to_string()))
}

/// Fails with the names of any of berth's CRDs the API server does not have.
pub async fn verify_crds(client: &Client) -> Result<(), OperatorError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let installed = api.list(&ListParams::default()).await.map_err(|e| OperatorError::Unreachable(e.to_string()))?;
    let names: Vec<String> = installed.items.iter().map(|c| c.name_any()).collect();
    let missing: Vec<String> = crate::api::crds()
        .iter()
        .map(|c| c.name_any())
        .filter(|wanted| !names.contains(wanted))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OperatorError::CrdsMissing { missing: missing.join(", ") })
    }
}

/// A count of what berth sees, logged at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub clusters: usize,
    pub machine_classes: usize,
    pub machine_deployments: usize,
    pub machine_sets: usize,
    pub machines: usize,
    pub nodes: usize,
    pub pods: usize,
    pub pending_pods: usize,
}

pub async fn inventory(client: &Client) -> Result<Inventory, OperatorError> {
    async fn count<K>(client: &Client) -> Result<Vec<K>, OperatorError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::<K>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| OperatorError::Unreachable(e.to_string()))
    }
    let pods = count::<Pod>(client).await?;
    Ok(Inventory {
        clusters: count::<Cluster>(client).await?.len(),
        machine_classes: count::<MachineClass>(client).await?.len(),
        machine_deployments: count::<MachineDeployment>(client).await?.len(),
        machine_sets: count::<MachineSet>(client).await?.len(),
        machines: count::<Machine>(client).await?.len(),
        nodes: count::<Node>(client).await?.len(),
        pending_pods: pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
            .count(),
        pods: pods.len(),
    })
}

/// Connects, verifies, logs the inventory, then logs changes to berth's objects and nodes until `shutdown`.
pub async fn run(client: Client, shutdown: impl std::future::Future<Output = ()>) -> Result<(), OperatorError> {
    verify_crds(&client).await?;
    let inv = inventory(&client).await?;
    tracing::info!(
        clusters = inv.clusters,
        machine_classes = inv.machine_classes,
        machine_deployments = inv.machine_deployments,
        machine_sets = inv.machine_sets,
        machines = inv.machines,
        nodes = inv.nodes,
        pods = inv.pods,
        pending_pods = inv.pending_pods,
        "connected; berth CRDs installed"
    );
    let follow = futures::future::try_join3(
        follow::<MachineDeployment>(&client),
        follow::<Machine>(&client),
        follow::<Node>(&client),
    );
    tokio::select! {
        result = follow => result.map(|_| ()),
        _ = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn follow<K>(client: &Client) -> Result<(), OperatorError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let api = Api::<K>::all(client.clone());
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events
        .try_next()
        .await
        .map_err(|e| OperatorError::Watch { kind: kind.clone(), reason: e.to_string() })?
    {
        match event {
            watcher::Event::Apply(obj) => tracing::info!(kind = %kind, name = %obj.name_any(), "observed change"),
            watcher::Event::Delete(obj) => tracing::info!(kind = %kind, name = %obj.name_any(), "observed deletion"),
            watcher::Event::InitDone => tracing::debug!(kind = %kind, "watch synced"),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
    Ok(())
}
