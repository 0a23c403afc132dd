//! Scale-down and consolidation end to end: the emulator, the simulated cloud and kubelets, the MachineDeployment,
//! MachineSet and Machine controllers, and the disruption controller with short delays (the Cluster's scaleDown
//! policy). Pods are created bound to a node (nodeName set) and owned by a ReplicaSet, as a scheduler would have
//! left them.

use berth::api::{crds, Cluster, Machine, MachineClass, MachineDeployment, MachinePhase};
use berth::clock::{SharedClock, SystemClock};
use berth::cloud::metrics::CloudMetrics;
use berth::cloud::sim::{SimConfig, SimulatedCloud};
use berth::cloud::CloudProvider;
use berth::controllers::disruption::{self, DisruptionConfig};
use berth::controllers::{machine, machine_deployment, machine_set, Context};
use berth::emulator::Emulator;
use berth::telemetry::metrics::Metrics;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CLUSTER: &str = "test-cluster";

struct Harness {
    client: Client,
    cloud: Arc<SimulatedCloud>,
    ctx: Arc<Context>,
    _emulator: Emulator,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    async fn new() -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("berth::controllers::disruption=debug")
            .with_test_writer()
            .try_init();
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
        berth::sim::dataplane::connect(&cloud, emulator.clone());
        // Short delays, so the test runs in seconds; the delay after a scale-up protects a consolidation's new node.
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": CLUSTER},
            "spec": {"clusterName": CLUSTER, "apiServerEndpoint": "https://example.invalid", "certificateAuthority": "Q0E=", "serviceCidr": "10.100.0.0/16",
                     "scaleDown": {"unneededTime": "1s", "minNodeAge": "0s", "delayAfterScaleUp": "30s"}}
        }))
        .unwrap();
        Api::<Cluster>::all(client.clone())
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        let class: MachineClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
            "spec": {
                "image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
                "instanceRequirements": {"families": ["c6i"], "vcpu": {"min": 2, "max": 8}},
                "capacityTypes": ["on-demand"],
                "subnets": {"tags": {"berth.dev/discovery": CLUSTER}},
                "securityGroups": {"tags": {"berth.dev/discovery": CLUSTER}},
                "instanceProfile": "node"
            }
        }))
        .unwrap();
        Api::<MachineClass>::all(client.clone())
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        let ctx = Arc::new(Context::new(
            client.clone(),
            Arc::new(SystemClock),
            Metrics::new().unwrap(),
        ));
        let (stop, _) = tokio::sync::watch::channel(false);
        let h = Harness {
            client,
            cloud,
            ctx,
            _emulator: emulator,
            stop,
        };
        tokio::spawn(machine_deployment::run(h.ctx.clone(), h.signal()));
        tokio::spawn(machine_set::run(h.ctx.clone(), h.signal()));
        let cloud: Arc<dyn CloudProvider> = h.cloud.clone();
        tokio::spawn(machine::run(
            h.ctx.clone(),
            cloud,
            CLUSTER.to_string(),
            h.signal(),
        ));
        h
    }

    fn signal(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    async fn start_disruption(&self) {
        let catalog = self.cloud.instance_types().await.unwrap();
        let config = DisruptionConfig {
            interval: Duration::from_millis(300),
            validation_delay: Duration::from_millis(200),
            cluster_name: CLUSTER.into(),
            ..Default::default()
        };
        let cache = berth::state::cluster::ClusterCache::start(&self.ctx.client);
        tokio::spawn(disruption::run(
            self.ctx.clone(),
            cache,
            catalog,
            config,
            Some(self.cloud.clone() as Arc<dyn CloudProvider>),
            self.signal(),
        ));
    }

    async fn create_deployment(&self, name: &str, replicas: u32, budgets: serde_json::Value) {
        self.create_deployment_with_min(name, replicas, 0, budgets)
            .await
    }

    async fn create_deployment_with_min(
        &self,
        name: &str,
        replicas: u32,
        min: u32,
        budgets: serde_json::Value,
    ) {
        let md: MachineDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"group": name}},
                "template": {"metadata": {"labels": {"group": name}}, "spec": {"classRef": {"name": "general"}}},
                "autoscaling": {"minReplicas": min, "maxReplicas": 6},
                "disruption": {"budgets": budgets}
            }
        }))
        .unwrap();
        Api::<MachineDeployment>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &md)
            .await
            .unwrap();
    }

    async fn machines(&self) -> Vec<Machine> {
        Api::<Machine>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn running(&self) -> Vec<Machine> {
        self.machines()
            .await
            .into_iter()
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == MachinePhase::Running)
            })
            .collect()
    }

    async fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        names.sort();
        names
    }

    async fn replicas(&self, name: &str) -> u32 {
        Api::<MachineDeployment>::namespaced(self.client.clone(), "default")
            .get(name)
            .await
            .unwrap()
            .spec
            .replicas
            .unwrap_or(0)
    }

    /// A pod bound to `node`, owned by a ReplicaSet, requesting `cpu`.
    async fn bind_pod(
        &self,
        name: &str,
        node: &str,
        cpu: &str,
        annotations: BTreeMap<String, String>,
    ) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}, "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid-1", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    async fn event_reasons(&self) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.send_replace(true);
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

fn node_of(m: &Machine) -> String {
    m.status
        .as_ref()
        .and_then(|s| s.node_ref.as_ref())
        .map(|r| r.name.clone())
        .expect("a running machine has a node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_scale_down_to_the_one_with_pods() {
    let h = Harness::new().await;
    h.create_deployment("general", 3, serde_json::json!([]))
        .await;
    eventually("3 running machines", 60, || async {
        h.running().await.len() == 3
    })
    .await;
    let busy = node_of(&h.running().await[0]);
    h.bind_pod("web-1", &busy, "100m", BTreeMap::new()).await;
    h.bind_pod("web-2", &busy, "100m", BTreeMap::new()).await;
    h.start_disruption().await;

    eventually("one machine left", 90, || async {
        h.replicas("general").await == 1
            && h.machines().await.len() == 1
            && h.node_names().await.len() == 1
    })
    .await;
    assert_eq!(
        h.node_names().await,
        std::slice::from_ref(&busy),
        "the node with pods stays"
    );
    assert_eq!(h.cloud.live_instance_count(), 1);
    // It stays: its pods fit nowhere else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.node_names().await, [busy]);
    assert_eq!(h.replicas("general").await, 1);
    assert!(
        h.event_reasons().await.iter().any(|r| r == "NodeEmpty"),
        "each decision is explained in an Event"
    );
    let decisions = h
        .ctx
        .metrics
        .disruption_decisions
        .with_label_values(&["empty"])
        .get();
    assert_eq!(decisions, 2, "two empty nodes, two decisions");
    assert_eq!(
        h.ctx
            .metrics
            .nodes_disrupted
            .with_label_values(&["general", "empty"])
            .get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_do_not_disrupt_pod_is_kept() {
    let h = Harness::new().await;
    h.create_deployment("general", 3, serde_json::json!([]))
        .await;
    eventually("3 running machines", 60, || async {
        h.running().await.len() == 3
    })
    .await;
    let mut nodes: Vec<String> = h.running().await.iter().map(node_of).collect();
    nodes.sort();
    let (precious, ordinary) = (nodes[0].clone(), nodes[1].clone());
    // The protected node is the least used: without the annotation it would be the first to go.
    h.bind_pod(
        "precious",
        &precious,
        "50m",
        [("berth.dev/do-not-disrupt".to_string(), "true".to_string())].into(),
    )
    .await;
    h.bind_pod("ordinary", &ordinary, "300m", BTreeMap::new())
        .await;
    h.start_disruption().await;

    eventually("one machine left", 90, || async {
        h.replicas("general").await == 1
            && h.machines().await.len() == 1
            && h.node_names().await.len() == 1
    })
    .await;
    assert_eq!(h.node_names().await, [precious]);
    assert!(
        h.event_reasons()
            .await
            .iter()
            .any(|r| r == "NodeUnderutilized"),
        "the ordinary node went as underutilized"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_busy_small_nodes_become_one_cheaper_node() {
    let h = Harness::new().await;
    h.create_deployment("general", 3, serde_json::json!([{"nodes": "100%"}]))
        .await;
    eventually("3 running machines", 60, || async {
        h.running().await.len() == 3
    })
    .await;
    let before = h.running().await;
    let old_types: Vec<String> = before
        .iter()
        .map(|m| m.status.as_ref().unwrap().instance_type.clone().unwrap())
        .collect();
    assert!(
        old_types.iter().all(|t| t == "c6i.large"),
        "the cheapest type launches: {old_types:?}"
    );
    // Each node 60% used: not underutilized, and no node has room for another's pod; all three fit one c6i.xlarge.
    for (i, m) in before.iter().enumerate() {
        h.bind_pod(&format!("web-{i}"), &node_of(m), "1150m", BTreeMap::new())
            .await;
    }
    h.start_disruption().await;

    eventually(
        "the three old machines gone and one new one running",
        120,
        || async {
            let ms = h.machines().await;
            ms.len() == 1
                && before.iter().all(|b| b.name_any() != ms[0].name_any())
                && h.running().await.len() == 1
        },
    )
    .await;
    let survivor = h.running().await.remove(0);
    let instance_type = survivor.status.unwrap().instance_type.unwrap();
    assert_eq!(
        instance_type, "c6i.xlarge",
        "one node cheaper than three c6i.large"
    );
    assert_eq!(h.replicas("general").await, 1);
    assert_eq!(
        h.ctx
            .metrics
            .disruption_decisions
            .with_label_values(&["consolidation_multi"])
            .get(),
        1
    );
    assert_eq!(
        h.ctx
            .metrics
            .nodes_disrupted
            .with_label_values(&["general", "consolidation_multi"])
            .get(),
        3
    );
    assert!(h.event_reasons().await.iter().any(|r| r == "Consolidation"));
}

/// Whether a Machine is being disrupted: waiting for its replacement, marked for deletion, or being deleted.
fn disrupted(m: &Machine) -> bool {
    let a = m.annotations();
    m.metadata.deletion_timestamp.is_some()
        || a.contains_key("berth.dev/replaced-by")
        || a.contains_key("berth.dev/delete-machine")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_replace_never_exceeds_the_budget() {
    let h = Harness::new().await;
    // The class answers a rebalance recommendation with Replace, at no higher price.
    Api::<MachineClass>::all(h.client.clone())
        .patch(
            "general",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"rebalance": {"action": "Replace"}}})),
        )
        .await
        .unwrap();
    // Three nodes, a minimum of three (so each at-risk node is replaced one for one, never simply deleted) and a
    // budget of one node at a time.
    h.create_deployment_with_min("general", 3, 3, serde_json::json!([{"nodes": 1}]))
        .await;
    eventually("3 running machines", 60, || async {
        h.running().await.len() == 3
    })
    .await;
    let at_risk = h.running().await;
    let names: Vec<String> = at_risk.iter().map(|m| m.name_any()).collect();
    // 60% used each: no node has room for another's pod.
    for (i, m) in at_risk.iter().enumerate() {
        h.bind_pod(&format!("web-{i}"), &node_of(m), "1150m", BTreeMap::new())
            .await;
    }
    // EC2 recommends rebalancing all three (as the interruption controller marks them).
    let mark =
        serde_json::json!({"reason": "RebalanceRecommended", "detail": "test", "deadline": null,
                                  "since": "2026-12-01T12:00:00Z"})
        .to_string();
    let machines = Api::<Machine>::namespaced(h.client.clone(), "default");
    for n in &names {
        machines
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"annotations": {"berth.dev/at-risk": mark}}}),
                ),
            )
            .await
            .unwrap();
    }

    // Watch every Machine from now on: how many are being disrupted at once, and that each at-risk one waited for
    // its replacement (replaced-by) before it went.
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Old Machine → the launch-shape id of its replacement.
    let waited = Arc::new(std::sync::Mutex::new(BTreeMap::<String, String>::new()));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let monitor = {
        let (api, most, waited, watching) = (
            machines.clone(),
            most.clone(),
            waited.clone(),
            watching.clone(),
        );
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                let list = api.list(&ListParams::default()).await.unwrap().items;
                let now = list.iter().filter(|m| disrupted(m)).count();
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                for m in &list {
                    if let Some(v) = m.annotations().get("berth.dev/replaced-by") {
                        let v: serde_json::Value = serde_json::from_str(v).unwrap();
                        let shape = v["shape"].as_str().unwrap().to_string();
                        waited.lock().unwrap().insert(m.name_any(), shape);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    h.start_disruption().await;

    eventually(
        "the three at-risk machines replaced and gone",
        180,
        || async {
            let ms = h.machines().await;
            ms.len() == 3
                && ms.iter().all(|m| !names.contains(&m.name_any()))
                && h.running().await.len() == 3
        },
    )
    .await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    monitor.await.unwrap();

    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never more than the budget of one Machine disrupted at once"
    );
    let waited = waited.lock().unwrap().clone();
    assert!(
        names.iter().all(|n| waited.contains_key(n)),
        "each at-risk Machine waited for its replacement: {waited:?} of {names:?}"
    );
    assert_eq!(h.replicas("general").await, 3);
    assert_eq!(h.cloud.live_instance_count(), 3);
    // Each replacement left its at-risk pool: never the same instance type in the same zone.
    let pool = |m: &Machine| {
        let s = m.status.as_ref().unwrap();
        (s.instance_type.clone().unwrap(), s.zone.clone().unwrap())
    };
    let now_running = h.running().await;
    for old in &at_risk {
        let shape = &waited[&old.name_any()];
        let new = now_running
            .iter()
            .find(|m| m.annotations().get("berth.dev/shape-id") == Some(shape))
            .unwrap_or_else(|| panic!("the replacement of {} runs", old.name_any()));
        assert_ne!(
            pool(new),
            pool(old),
            "{} replaced in its own pool",
            old.name_any()
        );
        assert!(!new.annotations().contains_key("berth.dev/at-risk"));
    }
    assert_eq!(
        h.ctx
            .metrics
            .disruption_decisions
            .with_label_values(&["rebalance_recommended"])
            .get(),
        3,
        "one decision per at-risk node"
    );
    assert_eq!(
        h.ctx
            .metrics
            .nodes_disrupted
            .with_label_values(&["general", "rebalance_recommended"])
            .get(),
        3
    );
    assert!(h
        .event_reasons()
        .await
        .iter()
        .any(|r| r == "RebalanceRecommended"));
}
