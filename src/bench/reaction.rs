//! B3 `berth bench reaction`: pending pod to launch call, on the wall clock, with berth's controllers exactly as
//! `berth run` starts them, the emulator (its binder as kube-scheduler) and the simulated cloud (EC2's rate limits)
//! in one process.
//!
//! A cluster of `nodes` full nodes (not berth's: they only make the cluster as large as the benchmark says, and
//! the solver must read past them) with `pods_per_node` running pods each; then `pending` pods of mixed shapes are
//! created at once. For each, the time from its creation (the create call's return) to the launch call of the
//! instance whose node it finally runs on (the simulated cloud announces every instance as the call is made).

use super::Rng;
use crate::clock::{SharedClock, SystemClock};
use crate::cloud::metrics::CloudMetrics;
use crate::cloud::sim::{SimConfig, SimInstanceEvent, SimulatedCloud};
use crate::cloud::CloudProvider;
use crate::controllers::provisioner::ProvisionerConfig;
use crate::controllers::Context;
use crate::emulator::binder::Binder;
use crate::emulator::Emulator;
use crate::operator::{run_controllers, Controllers};
use crate::state::snapshot::ObserveSettings;
use crate::telemetry::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) const CLUSTER: &str = "bench";
/// Requests of the pending pods (cpu, memory), drawn uniformly.
const SHAPES: &[(&str, &str)] = &[
    ("250m", "512Mi"),
    ("500m", "1Gi"),
    ("1", "2Gi"),
    ("2", "4Gi"),
    ("500m", "4Gi"),
    ("4", "8Gi"),
];

#[derive(Debug, thiserror::Error)]
pub enum ReactionError {
    #[error("setting up the cluster: {0}")]
    Setup(String),
    #[error("{pods} of {total} pending pods were not running after {seconds} s")]
    Timeout {
        pods: usize,
        total: usize,
        seconds: u64,
    },
}

impl ReactionError {
    pub fn category(&self) -> &'static str {
        match self {
            ReactionError::Setup(_) => "setup",
            ReactionError::Timeout { .. } => "timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReactionReport {
    pub nodes: usize,
    pub pending: usize,
    /// Burst pods found running on an instance berth launched (every one of them, unless something went wrong).
    pub measured: usize,
    pub machines: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Runs the benchmark; `seed` draws the pod shapes.
pub async fn measure(
    nodes: usize,
    pods_per_node: usize,
    pending: usize,
    seed: u64,
) -> Result<ReactionReport, ReactionError> {
    let setup = |e: kube::Error| ReactionError::Setup(e.to_string());
    let emulator = Emulator::new();
    let client = emulator.client();
    let clock: SharedClock = Arc::new(SystemClock);
    let mut config = SimConfig::bundled(
        "us-east-1",
        CLUSTER,
        clock.clone(),
        CloudMetrics::unregistered().map_err(|e| ReactionError::Setup(e.to_string()))?,
    )
    .map_err(|e| ReactionError::Setup(e.to_string()))?;
    config.boot_delay = Duration::from_millis(500);
    // A real kubelet registers its node NotReady and turns Ready once the network plugin runs (10-30 s on EKS);
    // berth nominates the pods planned for the node in that gap, within its batch window (at most 2 s). A node
    // Ready the instant it registers would race the nomination, which no real cluster does, and a pod placed off
    // the plan would show as a second launch. The delay does not enter the figures: they end at the launch call.
    config.ready_delay = Duration::from_secs(2);
    let cloud = Arc::new(SimulatedCloud::new(config));
    crate::sim::dataplane::connect(&cloud, emulator.clone());
    let launched_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut events = cloud.subscribe();
    let record = launched_at.clone();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let SimInstanceEvent::Launched(l) = e {
                record
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(l.instance_id.clone(), Instant::now());
            }
        }
    });

    install_berth_objects(&client).await.map_err(setup)?;
    fill_cluster(&client, nodes, pods_per_node)
        .await
        .map_err(setup)?;
    // The resident pods start before the clock does: the benchmark's cluster is 1,000 nodes of running pods, not
    // a cluster still starting 30,000 of them.
    let binder = Binder::new(emulator.clone());
    binder
        .run_once()
        .map_err(|e| ReactionError::Setup(e.to_string()))?;
    binder.spawn(Duration::from_millis(50));

    let metrics = Metrics::new().map_err(|e| ReactionError::Setup(e.to_string()))?;
    let base = Arc::new(Context::new(client.clone(), clock, metrics.clone()));
    let catalog = crate::model::aws_catalog::bundled_catalog("us-east-1")
        .map_err(|e| ReactionError::Setup(e.to_string()))?;
    let controllers = Arc::new(Controllers {
        base,
        cloud: Some(cloud.clone() as Arc<dyn CloudProvider>),
        cluster_name: CLUSTER.into(),
        catalog: Arc::new(catalog),
        provisioner: ProvisionerConfig {
            observe: ObserveSettings {
                cluster_name: Some(CLUSTER.into()),
                ..Default::default()
            },
            ..Default::default()
        },
        disruption: Default::default(),
        interruption_queue: None,
        dry_run: false,
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let berth = tokio::spawn(run_controllers(controllers, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    // The burst meets berth running, as in production: caches synced and its first pass over the whole cluster
    // done (the fleet gauges it records after that pass count every node).
    let started = Instant::now();
    while counted_nodes(&metrics) < nodes as i64 {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(ReactionError::Setup(
                "berth did not finish its first pass within 120 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The burst: every pod created at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut rng = Rng::new(seed);
    let shapes: Vec<(&str, &str)> = (0..pending).map(|_| *rng.pick(SHAPES)).collect();
    let created: Vec<(String, Instant)> = futures::stream::iter(shapes.into_iter().enumerate())
        .map(|(i, (cpu, memory))| {
            let pods = pods.clone();
            async move {
                let name = format!("burst-{i}");
                let pod = pod_object(&name, cpu, memory, None);
                pods.create(&PostParams::default(), &pod)
                    .await
                    .map(|_| (name, Instant::now()))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(setup)?;

    // Wait until every burst pod runs.
    let deadline = Instant::now() + Duration::from_secs(180);
    let placed = loop {
        let list = pods
            .list(&ListParams::default().labels("app=burst"))
            .await
            .map_err(setup)?;
        let placed: HashMap<String, String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    p.spec.as_ref()?.node_name.clone()?,
                ))
            })
            .collect();
        if placed.len() == pending {
            break placed;
        }
        if Instant::now() > deadline {
            stop_tx.send_replace(true);
            return Err(ReactionError::Timeout {
                pods: pending - placed.len(),
                total: pending,
                seconds: 180,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_tx.send_replace(true);
    let _ = berth.await;

    let node_instance: HashMap<String, String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(setup)?
        .items
        .into_iter()
        .filter_map(|n| {
            let provider = n.spec.as_ref()?.provider_id.clone()?;
            Some((n.metadata.name?, provider.rsplit('/').next()?.to_string()))
        })
        .collect();
    let launched = launched_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut latencies: Vec<f64> = created
        .iter()
        .filter_map(|(pod, at)| {
            let instance = node_instance.get(placed.get(pod)?)?;
            let launch = launched.get(instance)?;
            Some(launch.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(ReactionReport {
        nodes,
        pending,
        measured: latencies.len(),
        machines: launched.len(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    })
}

/// Nodes in berth's fleet gauges, all groups and capacity types.
fn counted_nodes(metrics: &Metrics) -> i64 {
    metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == "berth_nodes")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}

/// `berth bench reaction`: the table, then the JSON line.
pub fn main(
    nodes: usize,
    pods_per_node: usize,
    pending: usize,
    seed: u64,
) -> Result<ReactionReport, ReactionError> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| ReactionError::Setup(e.to_string()))?;
    let report = runtime.block_on(measure(nodes, pods_per_node, pending, seed))?;
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "nodes", "pending", "machines", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:>8} {:>8} {:>9} {:>9.0} {:>9.0} {:>9.0}",
        report.nodes, report.pending, report.machines, report.p50_ms, report.p99_ms, report.max_ms
    );
    println!(
        "{}",
        json!({"bench": "reaction", "nodes": report.nodes, "pods": report.pending, "machines": report.machines,
               "p50_ms": report.p50_ms.round(), "p99_ms": report.p99_ms.round(), "max_ms": report.max_ms.round()})
    );
    Ok(report)
}

fn pod_object(name: &str, cpu: &str, memory: &str, node: Option<&str>) -> Pod {
    let app = if node.is_some() { "resident" } else { "burst" };
    let mut spec = json!({"containers": [{"name": "c", "image": "app", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app, "uid": format!("rs-{app}"), "controller": true}]},
        "spec": spec,
    }))
    .expect("a static pod shape")
}

/// berth's CRDs, the Cluster `bench`, a MachineClass and the MachineDeployment `general` (0 to 2,000 replicas).
pub(super) async fn install_berth_objects(client: &kube::Client) -> Result<(), kube::Error> {
    use crate::api::{Cluster, MachineClass, MachineDeployment};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        crds.create(&PostParams::default(), &crd).await?;
    }
    let cluster: Cluster = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": CLUSTER},
        "spec": {"clusterName": CLUSTER, "apiServerEndpoint": "https://bench.invalid", "certificateAuthority": "Q0E=", "serviceCidr": "10.100.0.0/16"}
    }))
    .expect("static Cluster");
    Api::<Cluster>::all(client.clone())
        .create(&PostParams::default(), &cluster)
        .await?;
    let class: MachineClass = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
        "spec": {
            "image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
            "instanceRequirements": {"families": ["m7i", "c7i", "r7i", "m7a", "c6i", "m6a"]},
            "capacityTypes": ["spot", "on-demand"],
            "subnets": {"tags": {"berth.dev/discovery": CLUSTER}},
            "securityGroups": {"tags": {"berth.dev/discovery": CLUSTER}},
            "instanceProfile": "node"
        }
    }))
    .expect("static MachineClass");
    Api::<MachineClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await?;
    let md: MachineDeployment = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment", "metadata": {"name": "general", "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"group": "general"}},
            "template": {"metadata": {"labels": {"group": "general"}}, "spec": {"classRef": {"name": "general"}}},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 2000}
        }
    }))
    .expect("static MachineDeployment");
    Api::<MachineDeployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &md)
        .await?;
    Ok(())
}

/// `nodes` Ready nodes of 3 cpu and 8Gi allocatable, each full with `pods_per_node` running pods.
async fn fill_cluster(
    client: &kube::Client,
    nodes: usize,
    pods_per_node: usize,
) -> Result<(), kube::Error> {
    let node_api: Api<Node> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let per_pod_cpu = format!("{}m", 3000 / pods_per_node.max(1));
    let per_pod_memory = format!("{}Mi", 8192 / pods_per_node.max(1));
    futures::stream::iter(0..nodes)
        .map(|i| {
            let (node_api, pod_api) = (node_api.clone(), pod_api.clone());
            let (cpu, memory) = (per_pod_cpu.clone(), per_pod_memory.clone());
            async move {
                let name = format!("resident-{i}");
                let zone = ["us-east-1a", "us-east-1b", "us-east-1c"][i % 3];
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone,
                                                          "node.kubernetes.io/instance-type": "m6i.large", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
                    "spec": {"providerID": format!("aws:///{zone}/i-resident{i:06}")}
                }))
                .expect("static Node");
                node_api.create(&PostParams::default(), &node).await?;
                let status = json!({"status": {
                    "allocatable": {"cpu": "3", "memory": "8Gi", "pods": "110"},
                    "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"}]
                }});
                node_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                for p in 0..pods_per_node {
                    pod_api.create(&PostParams::default(), &pod_object(&format!("{name}-{p}"), &cpu, &memory, Some(&name))).await?;
                }
                Ok::<(), kube::Error>(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
