//! `berth run`: the controller process. It connects to the cluster, refuses to act until berth's CRDs are
//! installed, reports what it finds, and then runs the controllers (only while it leads, when elected): the
//! provisioner (scale-up), disruption (scale-down and consolidation), MachineDeployment, MachineSet, Machine and
//! the garbage collector. `berth simulate` starts the same
//! controllers through [`run_controllers`].

use crate::api::{Cluster, Machine, MachineClass, MachineDeployment, MachineSet};
use crate::clock::SystemClock;
use crate::cloud::aws::{AwsCloud, AwsConfig};
use crate::cloud::metrics::CloudMetrics;
use crate::cloud::CloudProvider;
use crate::controllers::disruption::{self, DisruptionConfig};
use crate::controllers::garbage_collector::{self, GarbageCollectorConfig};
use crate::controllers::provisioner::{self, ProvisionerConfig};
use crate::controllers::{machine, machine_deployment, machine_set, Context};
use crate::model::instance_type::Catalog;
use crate::shutdown::OwnedTask;
use crate::state::cluster::ClusterCache;
use crate::state::snapshot::ObserveSettings;
use crate::telemetry::leader::{LeaderElector, LeaderTiming};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::server::{self, OpsState};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// `berth run`'s arguments (parsed by `cli`, which only gathers every command's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Path to a kubeconfig; default: in-cluster configuration, then $KUBECONFIG, then ~/.kube/config.
    #[arg(long, env = "BERTH_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's name: berth acts on the Cluster object whose spec.clusterName is this, tags instances with it,
    /// and launches and terminates instances only when it is given.
    #[arg(long, env = "BERTH_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// AWS region; default: AWS_REGION, the profile, then the instance's own region (IMDS).
    #[arg(long, env = "BERTH_REGION")]
    pub region: Option<String>,
    /// A custom EC2 and Auto Scaling endpoint (a proxy, or moto in tests); default: AWS.
    #[arg(long, env = "BERTH_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
    /// berth's own namespace (its leader Lease lives there).
    #[arg(long, env = "BERTH_NAMESPACE", default_value = "berth-system")]
    pub namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "BERTH_METRICS_ADDRESS", default_value = "127.0.0.1:8080")]
    pub metrics_address: String,
    /// Elect a leader among replicas with a Lease; only the leader acts.
    #[arg(long, env = "BERTH_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "BERTH_LEASE_NAME", default_value = "berth-leader")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name in Kubernetes).
    #[arg(long, env = "BERTH_POD_NAME")]
    pub identity: Option<String>,
    /// The scale-up batch window closes after this long without a new unschedulable pod (a Go duration).
    #[arg(long, env = "BERTH_BATCH_IDLE", default_value = "200ms", value_parser = parse_flag_duration)]
    pub batch_idle: std::time::Duration,
    /// ... or after this long at most.
    #[arg(long, env = "BERTH_BATCH_MAX", default_value = "2s", value_parser = parse_flag_duration)]
    pub batch_max: std::time::Duration,
    /// Plan and log (and publish Events) but never call the cloud or change Machines, MachineSets or
    /// MachineDeployments.
    #[arg(long, env = "BERTH_DRY_RUN")]
    pub dry_run: bool,
    /// The share of EC2's documented API rate limits berth uses (0 < share <= 1), leaving the rest of the
    /// account's budget to other tools.
    #[arg(long, env = "BERTH_RATE_LIMIT_SHARE", default_value_t = 1.0, value_parser = parse_share)]
    pub rate_limit_share: f64,
    /// The SQS queue (a name or a URL) EventBridge feeds with spot interruption warnings, rebalance
    /// recommendations, scheduled maintenance and instance state changes (see deploy/interruption-queue.yaml);
    /// the Cluster's spec.interruptionQueue wins over it. Without either, berth learns of an interruption only
    /// when the instance is gone.
    #[arg(long, env = "BERTH_INTERRUPTION_QUEUE")]
    pub interruption_queue: Option<String>,
}

/// A Go-style duration flag (200ms, 2s, 1m30s).
fn parse_flag_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::model::duration::parse_duration(text).map_err(|e| e.to_string())
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not in (0, 1]")),
        Err(e) => Err(format!("{text:?} is not a number: {e}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot load kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
    #[error("cannot use the cloud: {0}")]
    Cloud(String),
    #[error("cannot reach the Kubernetes API server: {0}")]
    Unreachable(String),
    #[error("berth's CRDs are not installed: missing {missing}. Install them with `berth crds | kubectl apply -f -` or the Helm chart")]
    CrdsMissing { missing: String },
    #[error("cannot read the instance-type catalog: {0}")]
    Catalog(String),
}

impl OperatorError {
    pub fn category(&self) -> &'static str {
        match self {
            OperatorError::Kubeconfig { .. } => "kubeconfig",
            OperatorError::Client(_) => "client",
            OperatorError::Cloud(_) => "cloud",
            OperatorError::Unreachable(_) => "unreachable",
            OperatorError::CrdsMissing { .. } => "crds_missing",
            OperatorError::Catalog(_) => "catalog",
        }
    }
}

/// Builds a client from an explicit kubeconfig file, or the in-cluster / default configuration.
pub async fn connect(kubeconfig: Option<&PathBuf>) -> Result<Client, OperatorError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |reason: String| OperatorError::Kubeconfig {
                path: path.display().to_string(),
                reason,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| OperatorError::Client(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| OperatorError::Client(e.to_string()))
}

/// Fails with the names of any of berth's CRDs the API server does not have. Reads each by name, so the
/// ClusterRole needs `get` on those five names only.
pub async fn verify_crds(client: &Client) -> Result<(), OperatorError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for crd in crate::api::crds() {
        let name = crd.name_any();
        match api.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name),
            Err(e) => return Err(OperatorError::Unreachable(e.to_string())),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OperatorError::CrdsMissing {
            missing: missing.join(", "),
        })
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

/// `berth run`: serve the ops endpoint, connect, verify, log the inventory, join the leader election if asked,
/// then follow berth's objects and the nodes until `shutdown`.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), OperatorError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let metrics = Metrics::new().map_err(|e| OperatorError::Client(e.to_string()))?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let ops = OpsState {
        metrics: metrics.clone(),
        ready: ready_rx,
    };
    let (ops_addr, ops_task) = server::serve(&args.metrics_address, ops, stopped())
        .await
        .map_err(|e| OperatorError::Client(e.to_string()))?;
    tracing::info!(address = %ops_addr, "serving /metrics, /healthz and /readyz");

    let client = connect(args.kubeconfig.as_ref()).await?;
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
    if let Some(name) = &args.cluster_name {
        let clusters = Api::<Cluster>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| OperatorError::Unreachable(e.to_string()))?;
        if !clusters.items.iter().any(|c| &c.spec.cluster_name == name) {
            tracing::warn!(cluster_name = %name, "no Cluster object has spec.clusterName {name}; berth will not act until one exists");
        }
    }
    metrics.pods_pending.set(inv.pending_pods as i64);
    ready_tx.send_replace(true);

    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(SystemClock),
        metrics.clone(),
    ));
    // Dry-run never calls the cloud: it plans against the bundled catalog and launches nothing.
    let cloud = match (&args.cluster_name, args.dry_run) {
        (Some(name), false) => {
            let mut config = AwsConfig::new(name);
            config.region = args.region.clone();
            config.endpoint_url = args.aws_endpoint.clone();
            config.rate_limit_share = args.rate_limit_share;
            let cloud_metrics = CloudMetrics::register(&metrics.registry)
                .map_err(|e| OperatorError::Client(e.to_string()))?;
            // Missing credentials or region: one clear error at start, not a crash loop of stack traces.
            let aws = AwsCloud::connect(config, Arc::new(SystemClock), cloud_metrics)
                .await
                .map_err(|e| OperatorError::Cloud(e.to_string()))?;
            Some(Arc::new(aws) as Arc<dyn CloudProvider>)
        }
        (None, false) => {
            tracing::warn!("no --cluster-name: Machines are not launched or terminated (MachineDeployments and MachineSets are still reconciled)");
            None
        }
        (_, true) => {
            tracing::warn!("--dry-run: berth plans and logs, and changes nothing");
            None
        }
    };
    let catalog = match &cloud {
        Some(c) => c
            .instance_types()
            .await
            .map_err(|e| OperatorError::Catalog(e.to_string()))?,
        None => {
            let region = args.region.clone().unwrap_or_else(|| "us-east-1".into());
            crate::model::aws_catalog::bundled_catalog(&region)
                .map(Arc::new)
                .map_err(|e| OperatorError::Catalog(e.to_string()))?
        }
    };
    let provisioner = ProvisionerConfig {
        batch_idle: args.batch_idle,
        batch_max: args.batch_max,
        dry_run: args.dry_run,
        observe: ObserveSettings {
            cluster_name: args.cluster_name.clone(),
            ..ObserveSettings::default()
        },
        ..ProvisionerConfig::default()
    };
    let ctx = Arc::new(Controllers {
        base: ctx,
        cloud,
        cluster_name: args.cluster_name.clone().unwrap_or_default(),
        catalog,
        provisioner,
        disruption: DisruptionConfig {
            cluster_name: args.cluster_name.clone().unwrap_or_default(),
            ..DisruptionConfig::default()
        },
        interruption_queue: args.interruption_queue.clone(),
        dry_run: args.dry_run,
    });
    if args.leader_elect {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        let elector = LeaderElector::new(
            client.clone(),
            &args.namespace,
            &args.lease_name,
            &identity,
            LeaderTiming::default(),
            Arc::new(SystemClock),
        );
        let (leading_tx, leading_rx) = watch::channel(false);
        let election = tokio::spawn(elector.run(leading_tx, stopped()));
        lead_while_elected(ctx, leading_rx, stopped()).await;
        // The election releases the Lease on shutdown; wait for it so a standby takes over at once.
        let _ = election.await;
    } else {
        ctx.base.metrics.leader.set(1);
        run_controllers(ctx, stopped()).await;
    }
    tracing::info!("shut down");
    let _ = ops_task.await;
    Ok(())
}

/// What the controllers share: the context, the cloud when berth may launch, the catalog it plans with.
pub struct Controllers {
    pub base: Arc<Context>,
    pub cloud: Option<Arc<dyn CloudProvider>>,
    /// This cluster's name (empty: none given).
    pub cluster_name: String,
    pub catalog: Arc<Catalog>,
    pub provisioner: ProvisionerConfig,
    pub disruption: DisruptionConfig,
    /// The interruption queue (`--interruption-queue`); the Cluster's spec.interruptionQueue wins.
    pub interruption_queue: Option<String>,
    /// Only the provisioner runs, and it writes nothing.
    pub dry_run: bool,
}

/// berth's controllers, until `stop`: exactly what `berth run` runs while it leads.
pub async fn run_controllers(
    ctx: Arc<Controllers>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tx, rx) = watch::channel(false);
    let signal = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let cache = ClusterCache::start(&ctx.base.client);
    let mut tasks = vec![OwnedTask::spawn(provisioner::run(
        ctx.base.clone(),
        cache.clone(),
        ctx.catalog.clone(),
        ctx.cloud.clone(),
        ctx.provisioner.clone(),
        signal(rx.clone()),
    ))];
    if !ctx.dry_run {
        tasks.push(OwnedTask::spawn(machine_deployment::run(
            ctx.base.clone(),
            signal(rx.clone()),
        )));
        tasks.push(OwnedTask::spawn(machine_set::run(
            ctx.base.clone(),
            signal(rx.clone()),
        )));
        tasks.push(OwnedTask::spawn(crate::controllers::cluster::run(
            ctx.base.clone(),
            cache.clone(),
            ctx.catalog.clone(),
            ctx.cluster_name.clone(),
            signal(rx.clone()),
        )));
        tasks.push(OwnedTask::spawn(disruption::run(
            ctx.base.clone(),
            cache.clone(),
            ctx.catalog.clone(),
            ctx.disruption.clone(),
            ctx.cloud.clone(),
            signal(rx.clone()),
        )));
        tasks.push(OwnedTask::spawn(crate::controllers::health::run(
            ctx.base.clone(),
            cache.clone(),
            crate::controllers::health::HealthConfig::default(),
            signal(rx.clone()),
        )));
        if let Some(cloud) = ctx.cloud.clone() {
            tasks.push(OwnedTask::spawn(machine::run(
                ctx.base.clone(),
                cloud.clone(),
                ctx.cluster_name.clone(),
                signal(rx.clone()),
            )));
            tasks.push(OwnedTask::spawn(crate::controllers::interruption::run(
                ctx.base.clone(),
                cache.clone(),
                cloud.clone(),
                crate::controllers::interruption::InterruptionConfig {
                    queue: ctx.interruption_queue.clone(),
                    cluster_name: ctx.cluster_name.clone(),
                },
                signal(rx.clone()),
            )));
            tasks.push(OwnedTask::spawn(garbage_collector::run(
                ctx.base.clone(),
                cloud,
                GarbageCollectorConfig::new(&ctx.cluster_name),
                signal(rx.clone()),
            )));
        }
    }
    // Dropped mid-flight (a crash, in the chaos benchmark), this future drops `tasks` and `_watches`: every
    // controller and watch stops with it.
    let _watches = StopWatchesOnDrop(cache);
    stop.await;
    tx.send_replace(true);
    for t in tasks {
        t.join().await;
    }
}

/// Stops the shared watches when run_controllers ends, however it ends.
struct StopWatchesOnDrop(ClusterCache);

impl Drop for StopWatchesOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Runs the controllers only while this replica leads: they stop the moment leadership is lost (so two replicas
/// never act at once) and start again if it is regained.
async fn lead_while_elected(
    ctx: Arc<Controllers>,
    mut leading: watch::Receiver<bool>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        ctx.base.metrics.leader.set(0);
        tokio::select! {
            _ = &mut stopped => return,
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("leading: starting controllers");
        ctx.base.metrics.leader.set(1);
        let mut lost = leading.clone();
        let step_down = async move {
            let _ = lost.wait_for(|l| !*l).await;
        };
        tokio::select! {
            _ = &mut stopped => return,
            _ = run_controllers(ctx.clone(), step_down) => tracing::warn!("leadership lost: controllers stopped"),
        }
    }
}

/// Hostname plus process id: unique enough outside Kubernetes, where BERTH_POD_NAME is not set.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "berth".into());
    format!("{host}-{}", std::process::id())
}
