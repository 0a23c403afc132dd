//! The Machine controller with the MachineSet and MachineDeployment controllers, end to end: the emulator, the
//! simulated cloud (bundled us-east-1 catalog, EC2's rate limits) and simulated kubelets. Machines launch, their
//! Nodes register and link, scale-down drains and terminates, failures are replaced, and a controller restart
//! never launches twice.

use berth::api::{crds, Cluster, Machine, MachineClass, MachineDeployment, MachinePhase};
use berth::clock::{SharedClock, SystemClock};
use berth::cloud::metrics::CloudMetrics;
use berth::cloud::sim::{Fault, SimConfig, SimulatedCloud};
use berth::cloud::CloudProvider;
use berth::controllers::{machine, machine_deployment, machine_set, Context};
use berth::emulator::Emulator;
use berth::telemetry::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use std::sync::Arc;
use std::time::Duration;

const CLUSTER: &str = "test-cluster";

struct Harness {
    client: Client,
    cloud: Arc<SimulatedCloud>,
    emulator: Emulator,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Harness {
    async fn new(startup_timeout: &str) -> Harness {
        let emulator = Emulator::new();
        let client = emulator.client();
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            crd_api.create(&PostParams::default(), &crd).await.unwrap();
        }
        let clock: SharedClock = Arc::new(SystemClock);
        let mut config = SimConfig::bundled("us-east-1", CLUSTER, clock, CloudMetrics::unregistered().unwrap()).unwrap();
        config.boot_delay = Duration::from_millis(200);
        let cloud = Arc::new(SimulatedCloud::new(config));
        berth::sim::dataplane::connect(&cloud, emulator.clone());
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": CLUSTER},
            "spec": {"clusterName": CLUSTER, "apiServerEndpoint": "https://example.invalid", "certificateAuthority": "Q0E=", "serviceCidr": "10.100.0.0/16"}
        }))
        .unwrap();
        Api::<Cluster>::all(client.clone()).create(&PostParams::default(), &cluster).await.unwrap();
        let class: MachineClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
            "spec": {
                "image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
                "instanceRequirements": {"families": ["m6i", "c6i"], "vcpu": {"min": 2, "max": 8}},
                "capacityTypes": ["on-demand"],
                "subnets": {"tags": {"berth.dev/discovery": CLUSTER}},
                "securityGroups": {"tags": {"berth.dev/discovery": CLUSTER}},
                "instanceProfile": "node",
                "nodeStartupTimeout": startup_timeout
            }
        }))
        .unwrap();
        Api::<MachineClass>::all(client.clone()).create(&PostParams::default(), &class).await.unwrap();
        let mut h = Harness { client, cloud, emulator, stop: None };
        h.start_controllers();
        h
    }

    fn start_controllers(&mut self) {
        let ctx = Arc::new(Context::new(self.client.clone(), Arc::new(SystemClock), Metrics::new().unwrap()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tokio::spawn(machine_deployment::run(ctx.clone(), signal()));
        tokio::spawn(machine_set::run(ctx.clone(), signal()));
        let cloud: Arc<dyn CloudProvider> = self.cloud.clone();
        tokio::spawn(machine::run(ctx, cloud, CLUSTER.to_string(), signal()));
        self.stop = Some(tx);
    }

    /// Stops the controllers, as a crash would (nothing is flushed or released on the way out).
    fn kill_controllers(&mut self) {
        if let Some(tx) = self.stop.take() {
            tx.send_replace(true);
        }
    }

    async fn create_deployment(&self, name: &str, replicas: u32) {
        let md: MachineDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"group": name}},
                "template": {"metadata": {"labels": {"group": name}}, "spec": {"classRef": {"name": "general"}, "nodeLabels": {"team": "a"}}},
                "strategy": {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}
            }
        }))
        .unwrap();
        Api::<MachineDeployment>::namespaced(self.client.clone(), "default").create(&PostParams::default(), &md).await.unwrap();
    }

    async fn scale(&self, name: &str, replicas: u32) {
        Api::<MachineDeployment>::namespaced(self.client.clone(), "default")
            .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})))
            .await
            .unwrap();
    }

    async fn machines(&self) -> Vec<Machine> {
        Api::<Machine>::namespaced(self.client.clone(), "default").list(&ListParams::default()).await.unwrap().items
    }

    async fn running(&self) -> usize {
        self.machines().await.iter().filter(|m| m.status.as_ref().is_some_and(|s| s.phase == MachinePhase::Running)).count()
    }

    async fn nodes(&self) -> Vec<Node> {
        Api::<Node>::all(self.client.clone()).list(&ListParams::default()).await.unwrap().items
    }
}

async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_to_ten_to_three() {
    let h = Harness::new("15m").await;
    h.create_deployment("general", 0).await;
    h.scale("general", 10).await;
    eventually("10 running machines", 60, || async { h.running().await == 10 }).await;
    assert_eq!(h.cloud.live_instance_count(), 10);
    for m in h.machines().await {
        let s = m.status.unwrap();
        let node = s.node_ref.expect("linked to its node").name;
        assert!(s.provider_id.as_deref().unwrap().ends_with(&node), "providerID names the instance");
        assert!(s.instance_type.as_deref().unwrap().starts_with("m6i") || s.instance_type.as_deref().unwrap().starts_with("c6i"));
        assert!(s.price.is_some());
    }
    let nodes = h.nodes().await;
    assert_eq!(nodes.len(), 10);
    assert!(nodes.iter().all(|n| n.metadata.labels.as_ref().unwrap().get("team").map(String::as_str) == Some("a")), "template labels reach the Node");

    h.scale("general", 3).await;
    eventually("3 machines and 3 instances", 60, || async { h.machines().await.len() == 3 && h.cloud.live_instance_count() == 3 }).await;
    eventually("3 nodes", 30, || async { h.nodes().await.len() == 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_registers_is_replaced() {
    let h = Harness::new("2s").await;
    h.cloud.inject(Fault::BootFailure, Some(1));
    h.create_deployment("general", 2).await;
    eventually("2 running machines after the failed one is replaced", 60, || async { h.running().await == 2 }).await;
    eventually("the failed machine's instance terminated", 30, || async { h.cloud.live_instance_count() == 2 }).await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(h.client.clone(), "default").list(&ListParams::default()).await.unwrap();
    assert!(events.items.iter().any(|e| e.reason.as_deref() == Some("NodeStartupTimeout")), "the failure is explained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_terminated_behind_our_back_is_replaced() {
    let h = Harness::new("15m").await;
    h.create_deployment("general", 2).await;
    eventually("2 running machines", 60, || async { h.running().await == 2 }).await;
    let victim = h.machines().await[0].status.clone().unwrap().instance_id.unwrap();
    h.cloud.terminate(std::slice::from_ref(&victim)).await.unwrap();
    eventually("a replacement running", 60, || async {
        let ms = h.machines().await;
        h.running().await == 2 && ms.iter().all(|m| m.status.as_ref().and_then(|s| s.instance_id.as_deref()) != Some(victim.as_str()))
    })
    .await;
    assert_eq!(h.cloud.live_instance_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_never_launches_twice() {
    let mut h = Harness::new("15m").await;
    h.create_deployment("general", 6).await;
    // Kill the controllers as soon as the first launches happen, then start fresh ones.
    eventually("a first launch", 30, || async { h.cloud.live_instance_count() > 0 }).await;
    h.kill_controllers();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.start_controllers();
    eventually("6 running machines", 60, || async { h.running().await == 6 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.cloud.live_instance_count(), 6, "one instance per machine");
    let uids: std::collections::BTreeSet<String> =
        h.cloud.describe_instances().await.unwrap().iter().filter_map(|i| i.machine().map(|m| m.uid)).collect();
    assert_eq!(uids.len(), 6);
    let _ = &h.emulator;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_rolls_out_within_surge_and_availability() {
    let h = Harness::new("15m").await;
    h.create_deployment("general", 3).await;
    eventually("3 running machines", 60, || async { h.running().await == 3 }).await;
    let old: std::collections::BTreeSet<String> = h.machines().await.iter().map(|m| m.metadata.name.clone().unwrap()).collect();
    Api::<MachineDeployment>::namespaced(h.client.clone(), "default")
        .patch("general", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"template": {"spec": {"nodeLabels": {"team": "b"}}}}})))
        .await
        .unwrap();
    // maxSurge 2, maxUnavailable 0: never more than 5 instances, never fewer than 3 running, until all are new.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let machines = h.machines().await;
        let live = h.cloud.live_instance_count();
        assert!(live <= 5, "{live} instances exceed replicas 3 + maxSurge 2");
        let running = machines.iter().filter(|m| m.status.as_ref().is_some_and(|s| s.phase == MachinePhase::Running)).count();
        assert!(running >= 3, "only {running} machines running: availability fell below replicas 3 - maxUnavailable 0");
        let all_new = machines.len() == 3
            && machines.iter().all(|m| !old.contains(m.metadata.name.as_ref().unwrap()) && m.status.as_ref().is_some_and(|s| s.phase == MachinePhase::Running));
        if all_new && live == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rollout did not finish: {} machines, {live} instances", machines.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes = h.nodes().await;
    assert!(nodes.iter().all(|n| n.metadata.labels.as_ref().unwrap()["team"] == "b"), "every node is of the new template");
    let md = Api::<MachineDeployment>::namespaced(h.client.clone(), "default").get("general").await.unwrap();
    eventually("status shows the rollout complete", 30, || async {
        let md = Api::<MachineDeployment>::namespaced(h.client.clone(), "default").get("general").await.unwrap();
        md.status.is_some_and(|s| s.updated_replicas == 3 && s.available_replicas == 3 && s.phase.as_deref() == Some("Running"))
    })
    .await;
    assert_eq!(md.status.unwrap().revision, Some(2));
}
