//! The Machine controllers under test: the emulator, the simulated cloud (bundled us-east-1 catalog, EC2's rate
//! limits, 200 ms boots), simulated kubelets and the binder, with berth's MachineDeployment, MachineSet and Machine
//! controllers, which a test can kill (abort mid-flight, as a crash would) and start again. A ledger follows the
//! cloud's instance events, so a test can check that nothing launched twice, no instance leaked and none was
//! terminated twice.
#![allow(dead_code)]

use berth::api::{
    crds, Cluster, Machine, MachineClass, MachineDeployment, MachinePhase, MachineSet,
};
use berth::clock::{SharedClock, SystemClock};
use berth::cloud::action::Action;
use berth::cloud::metrics::CloudMetrics;
use berth::cloud::sim::{SimConfig, SimInstanceEvent, SimulatedCloud};
use berth::cloud::CloudProvider;
use berth::controllers::{health, machine, machine_deployment, machine_set, Context};
use berth::emulator::binder::Binder;
use berth::emulator::Emulator;
use berth::state::cluster::ClusterCache;
use berth::telemetry::metrics::Metrics;
use k8s_openapi::api::core::v1::{Event, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const CLUSTER: &str = "test-cluster";

/// What the cloud did, as its instance events tell it.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Machine uid -> instances launched for it.
    pub launches: BTreeMap<String, Vec<String>>,
    /// Instances launched without a Machine tag.
    pub untagged: Vec<String>,
    pub terminated: Vec<String>,
    /// The ledger fell behind the cloud's events (its counts are then incomplete).
    pub lagged: bool,
}

/// Aborts a task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Harness {
    pub client: Client,
    pub cloud: Arc<SimulatedCloud>,
    pub emulator: Emulator,
    ledger: Arc<Mutex<Ledger>>,
    controllers: Vec<Task>,
    /// The garbage collector, when a test started it: it runs on when the controllers are killed.
    garbage_collector: Option<Task>,
    _data_plane: Vec<Task>,
}

impl Harness {
    pub async fn new(startup_timeout: &str) -> Harness {
        let emulator = Emulator::new();
        let client = emulator.client();
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            crd_api.create(&PostParams::default(), &crd).await.unwrap();
        }
        let clock: SharedClock = Arc::new(SystemClock);
        let mut config = SimConfig::bundled(
            "us-east-1",
            CLUSTER,
            clock,
            CloudMetrics::unregistered().unwrap(),
        )
        .unwrap();
        config.boot_delay = Duration::from_millis(200);
        let cloud = Arc::new(SimulatedCloud::new(config));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut events = cloud.subscribe();
        let recorder = ledger.clone();
        let ledger_task = tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let mut l = recorder.lock().unwrap();
                match event {
                    Ok(SimInstanceEvent::Launched(i)) => match &i.machine {
                        Some(m) => l
                            .launches
                            .entry(m.uid.clone())
                            .or_default()
                            .push(i.instance_id.clone()),
                        None => l.untagged.push(i.instance_id.clone()),
                    },
                    Ok(SimInstanceEvent::Terminated { instance_id, .. }) => {
                        l.terminated.push(instance_id)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => l.lagged = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let kubelets = berth::sim::dataplane::connect(&cloud, emulator.clone());
        let binder = Binder::new(emulator.clone()).spawn(Duration::from_millis(50));
        let mut h = Harness {
            client: client.clone(),
            cloud,
            emulator,
            ledger,
            controllers: Vec::new(),
            garbage_collector: None,
            _data_plane: vec![Task(ledger_task), Task(kubelets), Task(binder)],
        };
        let cluster: Cluster = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": CLUSTER},
            "spec": {"clusterName": CLUSTER, "apiServerEndpoint": "https://example.invalid", "certificateAuthority": "Q0E=", "serviceCidr": "10.100.0.0/16"}
        }))
        .unwrap();
        Api::<Cluster>::all(client.clone())
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        h.create_class("general", json!({"nodeStartupTimeout": startup_timeout}))
            .await;
        h.start_controllers();
        h
    }

    /// A MachineClass like "general" (m6i and c6i, 2 to 8 vCPUs, on-demand) with `extra` merged into its spec.
    pub async fn create_class(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
            "instanceRequirements": {"families": ["m6i", "c6i"], "vcpu": {"min": 2, "max": 8}},
            "capacityTypes": ["on-demand"],
            "subnets": {"tags": {"berth.dev/discovery": CLUSTER}},
            "securityGroups": {"tags": {"berth.dev/discovery": CLUSTER}},
            "instanceProfile": "node"
        });
        merge(&mut spec, extra);
        let class: MachineClass =
            serde_json::from_value(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": name}, "spec": spec})).unwrap();
        Api::<MachineClass>::all(self.client.clone())
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }

    pub fn start_controllers(&mut self) {
        assert!(self.controllers.is_empty(), "controllers already run");
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            Arc::new(SystemClock),
            Metrics::new().unwrap(),
        ));
        let never = std::future::pending::<()>;
        let cloud: Arc<dyn CloudProvider> = self.cloud.clone();
        let cache = ClusterCache::start(&self.client);
        let health_ctx = ctx.clone();
        // The health controller and its caches stop together, however the task ends (a kill aborts it).
        let health = async move {
            struct StopOnDrop(ClusterCache);
            impl Drop for StopOnDrop {
                fn drop(&mut self) {
                    self.0.stop();
                }
            }
            let guard = StopOnDrop(cache.clone());
            let config = health::HealthConfig {
                interval: Duration::from_millis(300),
            };
            health::run(health_ctx, cache, config, never()).await;
            drop(guard);
        };
        self.controllers = vec![
            Task(tokio::spawn(health)),
            Task(tokio::spawn(machine_deployment::run(ctx.clone(), never()))),
            Task(tokio::spawn(machine_set::run(ctx.clone(), never()))),
            Task(tokio::spawn(machine::run(
                ctx,
                cloud,
                CLUSTER.to_string(),
                never(),
            ))),
        ];
    }

    /// Starts the garbage collector beside the controllers (it is not killed with them: a test stops berth's other
    /// controllers while it runs); returns its metrics, whose `reconcile_duration_seconds{controller="garbage_collector"}` counts its rounds.
    pub fn start_garbage_collector(
        &mut self,
        config: berth::controllers::garbage_collector::GarbageCollectorConfig,
    ) -> Metrics {
        let metrics = Metrics::new().unwrap();
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            Arc::new(SystemClock),
            metrics.clone(),
        ));
        let cloud: Arc<dyn CloudProvider> = self.cloud.clone();
        self.garbage_collector = Some(Task(tokio::spawn(
            berth::controllers::garbage_collector::run(
                ctx,
                cloud,
                config,
                std::future::pending::<()>(),
            ),
        )));
        metrics
    }

    /// Kills the controllers as a crash would: their tasks are aborted wherever they are (a launch or a drain in
    /// flight included), nothing is flushed or released.
    pub fn kill_controllers(&mut self) {
        self.controllers.clear();
    }

    /// Kills the controllers and starts fresh ones after `down` (the watches and caches start empty).
    pub async fn restart_controllers(&mut self, down: Duration) {
        self.kill_controllers();
        tokio::time::sleep(down).await;
        self.start_controllers();
    }

    pub async fn create_deployment(&self, name: &str, replicas: u32) {
        self.create_deployment_with(name, json!({"replicas": replicas}))
            .await;
    }

    /// A deployment of class "general", maxSurge 2 / maxUnavailable 0, with `spec` merged into its spec.
    pub async fn create_deployment_with(&self, name: &str, spec: Value) {
        let mut full = json!({
            "replicas": 1,
            "selector": {"matchLabels": {"group": name}},
            "template": {"metadata": {"labels": {"group": name}}, "spec": {"classRef": {"name": "general"}, "nodeLabels": {"team": "a"}}},
            "strategy": {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}
        });
        merge(&mut full, spec);
        let md: MachineDeployment = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment", "metadata": {"name": name, "namespace": "default"}, "spec": full
        }))
        .unwrap();
        self.deployments()
            .create(&PostParams::default(), &md)
            .await
            .unwrap();
    }

    pub fn deployments(&self) -> Api<MachineDeployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub async fn deployment(&self, name: &str) -> MachineDeployment {
        self.deployments().get(name).await.unwrap()
    }

    pub async fn patch_deployment(&self, name: &str, patch: Value) {
        self.deployments()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    pub async fn scale(&self, name: &str, replicas: u32) {
        self.patch_deployment(name, json!({"spec": {"replicas": replicas}}))
            .await;
    }

    pub async fn machines(&self) -> Vec<Machine> {
        Api::<Machine>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    pub async fn delete_machine(&self, name: &str) {
        Api::<Machine>::namespaced(self.client.clone(), "default")
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    pub async fn machine_sets(&self) -> Vec<MachineSet> {
        Api::<MachineSet>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    pub async fn running(&self) -> usize {
        self.machines()
            .await
            .iter()
            .filter(|m| is_running(m))
            .count()
    }

    pub async fn nodes(&self) -> Vec<Node> {
        Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Events about the named object, as (reason, message).
    pub async fn events_of(&self, name: &str) -> Vec<(String, String)> {
        Api::<Event>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    /// Instances launched so far (one per Launched event).
    pub fn launches(&self) -> usize {
        let l = self.ledger.lock().unwrap();
        l.launches.values().map(Vec::len).sum::<usize>() + l.untagged.len()
    }

    /// Every Machine launched at most one instance, and every instance was launched for a Machine.
    pub fn assert_one_launch_per_machine(&self) {
        let l = self.ledger.lock().unwrap();
        assert!(!l.lagged, "the ledger missed cloud events");
        assert!(
            l.untagged.is_empty(),
            "instances launched without a Machine tag: {:?}",
            l.untagged
        );
        for (uid, instances) in &l.launches {
            assert_eq!(instances.len(), 1, "Machine {uid} launched {instances:?}");
        }
    }

    /// No instance was asked to terminate twice (by TerminateInstances calls the cloud served).
    pub fn assert_no_double_termination(&self) {
        let mut seen = BTreeSet::new();
        for call in self
            .cloud
            .calls()
            .into_iter()
            .filter(|c| c.action == Action::TerminateInstances && c.result == "ok")
        {
            for id in call.detail.split(',') {
                assert!(
                    seen.insert(id.to_string()),
                    "instance {id} terminated twice"
                );
            }
        }
    }

    /// Waits until every live instance belongs to a live Machine (one each) and every launched instance of a
    /// Machine that is gone has been terminated.
    pub async fn assert_no_leak(&self, seconds: u64) {
        eventually("no leaked instance", seconds, || async {
            let machines: BTreeMap<String, String> = self
                .machines()
                .await
                .iter()
                .map(|m| (m.uid().unwrap(), m.name_any()))
                .collect();
            let live = self.cloud.describe_instances().await.unwrap();
            let mut owners = BTreeSet::new();
            live.iter().all(|i| {
                i.machine()
                    .is_some_and(|m| machines.contains_key(&m.uid) && owners.insert(m.uid))
            })
        })
        .await;
    }

    /// The end of every scenario: one launch per Machine, no double termination, no leak.
    pub async fn assert_clean(&self) {
        self.assert_no_leak(20).await;
        self.assert_one_launch_per_machine();
        self.assert_no_double_termination();
    }
}

pub fn is_running(m: &Machine) -> bool {
    m.metadata.deletion_timestamp.is_none()
        && m.status
            .as_ref()
            .is_some_and(|s| s.phase == MachinePhase::Running)
}

/// The template hash a Machine was made from.
pub fn revision_hash(m: &Machine) -> String {
    m.labels()
        .get("berth.dev/template-hash")
        .cloned()
        .unwrap_or_default()
}

/// JSON merge (objects merge key by key; anything else replaces).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Polls `check` every 100 ms until it holds, failing after `seconds`.
pub async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {seconds}s waiting for: {what}");
}
