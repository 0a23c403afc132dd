//! The autoscaling loop end to end: the emulator (with its binder standing in for kube-scheduler), the simulated
//! cloud (bundled us-east-1 catalog, EC2's rate limits), simulated kubelets, and berth's controllers exactly as
//! `berth run` starts them. Pending pods become machines, every pod is scheduled, nothing is launched twice.

use berth::api::{crds, Cluster, Machine, MachineClass, MachineDeployment};
use berth::clock::{SharedClock, SystemClock};
use berth::cloud::metrics::CloudMetrics;
use berth::cloud::sim::{Fault, SimConfig, SimulatedCloud};
use berth::cloud::CloudProvider;
use berth::controllers::provisioner::ProvisionerConfig;
use berth::controllers::Context;
use berth::emulator::binder::Binder;
use berth::emulator::kubelet::KubeletSimulator;
use berth::emulator::Emulator;
use berth::model::instance_type::CapacityType;
use berth::operator::{run_controllers, Controllers};
use berth::state::snapshot::{observe, ObserveSettings};
use berth::telemetry::metrics::Metrics;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use std::collections::BTreeMap;
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
    /// An empty cluster with one autoscaled group of up to `max` machines; berth not started yet.
    async fn new(max: u32, cluster_limits: serde_json::Value) -> Harness {
        Harness::with_cloud(max, cluster_limits, |_| {}).await
    }

    async fn with_cloud(
        max: u32,
        cluster_limits: serde_json::Value,
        configure: impl FnOnce(&mut SimConfig),
    ) -> Harness {
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
        // Nodes register NotReady, as a real kubelet does until its network plugin is up: berth nominates its pods
        // to them meanwhile.
        config.ready_delay = Duration::from_secs(2);
        configure(&mut config);
        let cloud = Arc::new(SimulatedCloud::new(config));
        berth::sim::dataplane::connect(&cloud, emulator.clone());
        Binder::new(emulator.clone()).spawn(Duration::from_millis(100));
        create(&client, serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": CLUSTER},
            "spec": {"clusterName": CLUSTER, "apiServerEndpoint": "https://example.invalid", "certificateAuthority": "Q0E=",
                     "serviceCidr": "10.100.0.0/16", "limits": cluster_limits}
        }))
        .await;
        create(&client, serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
            "spec": {
                "image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
                "instanceRequirements": {"families": ["m7i", "c7i", "r7i"], "vcpu": {"min": 2, "max": 16}},
                "capacityTypes": ["on-demand"],
                "subnets": {"tags": {"berth.dev/discovery": CLUSTER}},
                "securityGroups": {"tags": {"berth.dev/discovery": CLUSTER}},
                "instanceProfile": "node"
            }
        }))
        .await;
        create(&client, serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
            "metadata": {"name": "general", "namespace": "default"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"group": "general"}},
                "template": {"metadata": {"labels": {"group": "general"}}, "spec": {"classRef": {"name": "general"}}},
                "autoscaling": {"minReplicas": 0, "maxReplicas": max}
            }
        }))
        .await;
        Harness {
            client,
            cloud,
            emulator,
            stop: None,
        }
    }

    fn start_berth(&mut self) {
        self.start_berth_with(false);
    }

    /// Starts berth as `berth run` would; with `dry_run`, as `berth run --dry-run` (no cloud, nothing written).
    fn start_berth_with(&mut self, dry_run: bool) {
        let base = Arc::new(Context::new(
            self.client.clone(),
            Arc::new(SystemClock),
            Metrics::new().unwrap(),
        ));
        let cloud: Arc<dyn CloudProvider> = self.cloud.clone();
        let catalog = berth::model::aws_catalog::bundled_catalog("us-east-1").unwrap();
        let controllers = Arc::new(Controllers {
            base,
            cloud: (!dry_run).then_some(cloud),
            cluster_name: CLUSTER.into(),
            catalog: Arc::new(catalog),
            provisioner: ProvisionerConfig {
                batch_idle: Duration::from_millis(200),
                batch_max: Duration::from_secs(2),
                observe: ObserveSettings {
                    cluster_name: Some(CLUSTER.into()),
                    ..Default::default()
                },
                dry_run,
                ..ProvisionerConfig::default()
            },
            disruption: Default::default(),
            interruption_queue: None,
            dry_run,
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut rx2 = rx.clone();
        tokio::spawn(run_controllers(controllers, async move {
            let _ = rx2.wait_for(|s| *s).await;
        }));
        drop(rx);
        self.stop = Some(tx);
    }

    /// Stops berth as a crash would.
    fn kill_berth(&mut self) {
        if let Some(tx) = self.stop.take() {
            tx.send_replace(true);
        }
    }

    /// `count` pods of a Deployment-like owner with these requests.
    async fn create_pods(&self, prefix: &str, count: usize, cpu: &str, memory: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        for i in 0..count {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{prefix}-{i}"), "namespace": "default", "labels": {"app": prefix},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": prefix, "uid": format!("uid-{prefix}"), "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
            }))
            .unwrap();
            api.create(&PostParams::default(), &pod).await.unwrap();
        }
    }

    async fn pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn running_pods(&self) -> usize {
        self.pods()
            .await
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
    }

    async fn machines(&self) -> Vec<Machine> {
        Api::<Machine>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn nodes(&self) -> Vec<Node> {
        Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        Api::<Event>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// The messages of the Events with this reason (what a failed assertion shows).
    async fn event_messages(&self, reason: &str) -> Vec<String> {
        self.events(reason)
            .await
            .into_iter()
            .filter_map(|e| e.message)
            .collect()
    }

    /// What berth's planner makes of the cluster as it is now (the same reading the provisioner does).
    async fn offline_plan(&self) -> berth::scheduling::Plan {
        let mut objects = berth::state::cluster::ClusterObjects {
            pods: self.pods().await.into_iter().map(Arc::new).collect(),
            nodes: self.nodes().await.into_iter().map(Arc::new).collect(),
            machines: self.machines().await.into_iter().map(Arc::new).collect(),
            ..Default::default()
        };
        objects.machine_deployments = Api::<MachineDeployment>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        objects.machine_classes = Api::<MachineClass>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        objects.clusters = Api::<Cluster>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        // The catalog the provisioner plans with: the cloud's.
        let catalog = self.cloud.instance_types().await.unwrap();
        let settings = ObserveSettings {
            cluster_name: Some(CLUSTER.into()),
            ..Default::default()
        };
        let now = chrono::Utc::now();
        let observation = observe(&objects, &catalog, &settings, &Default::default(), now);
        berth::scheduling::solve(&observation.snapshot, &catalog, now).unwrap()
    }

    /// Every instance the cloud runs belongs to a live Machine, and no Machine has two.
    async fn assert_no_duplicate_or_leak(&self) {
        let machines = self.machines().await;
        let instances = self.cloud.describe_instances().await.unwrap();
        let live: Vec<_> = instances
            .iter()
            .filter(|i| !i.state.is_terminal())
            .collect();
        let mut owners = std::collections::BTreeMap::new();
        for i in &live {
            let owner = i.machine().map(|m| m.name).unwrap_or_default();
            assert!(
                machines
                    .iter()
                    .any(|m| m.metadata.name.as_deref() == Some(owner.as_str())),
                "instance {} has no Machine",
                i.instance_id
            );
            *owners.entry(owner).or_insert(0) += 1;
        }
        assert!(
            owners.values().all(|n| *n == 1),
            "a Machine owns two instances: {owners:?}"
        );
    }
}

async fn create(client: &Client, object: serde_json::Value) {
    let kind = object["kind"].as_str().unwrap().to_string();
    match kind.as_str() {
        "Cluster" => drop(
            Api::<Cluster>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(object).unwrap(),
                )
                .await
                .unwrap(),
        ),
        "MachineClass" => drop(
            Api::<MachineClass>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(object).unwrap(),
                )
                .await
                .unwrap(),
        ),
        "MachineDeployment" => drop(
            Api::<MachineDeployment>::namespaced(client.clone(), "default")
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(object).unwrap(),
                )
                .await
                .unwrap(),
        ),
        other => panic!("no creator for {other}"),
    }
}

async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_unschedulable(h: &Harness, count: usize) {
    eventually("the scheduler to give up on every pod", 20, || async {
        h.pods()
            .await
            .iter()
            .filter(|p| berth::model::pod::is_unschedulable(p))
            .count()
            == count
    })
    .await;
}

/// A burst of mixed pods into an empty cluster: berth's scale-up for the burst is exactly the planner's plan for
/// the whole burst (machine count and $/h), every pod runs, and no machine is left empty.
///
/// The emulator's binder scores nodes as kube-scheduler's default (LeastAllocated) does and places pods on nodes
/// as they turn Ready, so its arrangement is not the plan's; pods it leaves over after their machines' grace
/// period are a real reason for a later, small scale-up, bounded here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_pods_gets_the_planned_machines() {
    let mut h = Harness::new(200, serde_json::json!({})).await;
    h.create_pods("web", 300, "250m", "512Mi").await;
    h.create_pods("api", 120, "1", "2Gi").await;
    h.create_pods("cache", 50, "500m", "6Gi").await;
    h.create_pods("batch", 30, "3", "4Gi").await;
    all_unschedulable(&h, 500).await;
    let plan = h.offline_plan().await;
    assert!(
        plan.unschedulable.is_empty(),
        "{:?}",
        plan.unschedulable.first()
    );

    h.start_berth();
    eventually("every pod running", 120, || async {
        h.running_pods().await == 500
    })
    .await;
    let machines = h.machines().await;
    // Machines by the provisioner pass that queued their shapes (shape ids are GROUP-MILLIS-INDEX).
    let mut by_pass: std::collections::BTreeMap<String, Vec<&Machine>> = Default::default();
    for m in &machines {
        let shape = m
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("berth.dev/shape-id"))
            .cloned()
            .unwrap_or_default();
        let pass = shape
            .rsplit_once('-')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        by_pass.entry(pass).or_default().push(m);
    }
    let first = by_pass.values().next().unwrap();
    assert_eq!(
        first.len(),
        plan.new_machines.len(),
        "the burst's machines vs the plan's"
    );
    let price = |m: &Machine| {
        m.status
            .as_ref()
            .and_then(|s| s.price.as_deref())
            .and_then(|p| p.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cost: f64 = first.iter().map(|m| price(m)).sum();
    let mut planned: Vec<String> = plan
        .new_machines
        .iter()
        .map(|m| format!("{} {} {}", m.instance_type, m.zone, m.price))
        .collect();
    let mut launched: Vec<String> = first
        .iter()
        .map(|m| {
            let s = m.status.clone().unwrap();
            format!(
                "{} {} {} shape={:?}",
                s.instance_type.unwrap_or_default(),
                s.zone.unwrap_or_default(),
                s.price.unwrap_or_default(),
                m.spec.shape.as_ref().map(|x| x
                    .instance_types
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>())
            )
        })
        .collect();
    planned.sort();
    launched.sort();
    assert!(
        (cost - plan.new_cost_per_hour()).abs() < 1e-6,
        "cost {cost} vs plan {}: {planned:#?} {launched:#?}",
        plan.new_cost_per_hour()
    );
    let scaled = h.event_messages("ScaledUp").await;
    assert!(
        machines.len() <= plan.new_machines.len() * 115 / 100 + 1,
        "{} machines for a plan of {}: {scaled:#?}",
        machines.len(),
        plan.new_machines.len()
    );
    let pods = h.pods().await;
    for node in h.nodes().await {
        let name = node.metadata.name.unwrap();
        assert!(
            pods.iter()
                .any(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(&name)),
            "node {name} is empty"
        );
    }
    assert!(!h.events("TriggeredScaleUp").await.is_empty());
    h.assert_no_duplicate_or_leak().await;
    h.kill_berth();
}

/// A burst's nodes that turn Ready one after another, each filled by the scheduler as it comes, still take the
/// pods planned for them: berth nominates every pod to its node while the nodes are NotReady, the scheduler
/// places nominated pods on their node first and holds their room against the others, and nothing is launched
/// again. (Without nominations the first nodes fill with whatever pods the scheduler's queue has first, and the
/// pods left over fit nowhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_turning_ready_one_by_one_take_the_pods_planned_for_them() {
    // The nodes stay NotReady until the test says: a kubelet whose network plugin is slow to start.
    let mut h = Harness::with_cloud(200, serde_json::json!({}), |config| {
        config.ready_delay = Duration::from_secs(3600)
    })
    .await;
    h.create_pods("web", 300, "250m", "512Mi").await;
    h.create_pods("api", 120, "1", "2Gi").await;
    h.create_pods("cache", 50, "500m", "6Gi").await;
    h.create_pods("batch", 30, "3", "4Gi").await;
    all_unschedulable(&h, 500).await;
    let plan = h.offline_plan().await;
    h.start_berth();
    let nomination = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let nominated: BTreeMap<String, String> = loop {
        let nodes: Vec<String> = h
            .nodes()
            .await
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let nominated: BTreeMap<String, String> = h
            .pods()
            .await
            .iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, nomination(p)?)))
            .filter(|(_, node)| nodes.contains(node))
            .collect();
        if nodes.len() == plan.new_machines.len() && nominated.len() == 500 {
            break nominated;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 500 pods nominated to {} registered nodes",
            nominated.len(),
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let kubelets = KubeletSimulator::new(h.emulator.clone());
    let mut nodes: Vec<String> = nominated.values().cloned().collect();
    nodes.sort();
    nodes.dedup();
    for node in &nodes {
        kubelets.set_ready(node, true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("every pod running", 60, || async {
        h.running_pods().await == 500
    })
    .await;
    // A pod whose node is not Ready yet may go where there is room no nomination holds, as with kube-scheduler.
    let mut elsewhere = Vec::new();
    for p in h.pods().await {
        let name = p.metadata.name.clone().unwrap();
        if p.spec.as_ref().unwrap().node_name.as_ref() != nominated.get(&name) {
            elsewhere.push(name.clone());
        }
        assert_eq!(nomination(&p), None, "binding cleared {name}'s nomination");
    }
    let scaled = h.event_messages("ScaledUp").await;
    assert_eq!(
        h.machines().await.len(),
        plan.new_machines.len(),
        "{scaled:#?}; pods not on their nominated node: {elsewhere:?}"
    );
    h.assert_no_duplicate_or_leak().await;
    h.kill_berth();
}

/// Pods that keep arriving while berth runs: every one is scheduled, and no launched node is left empty (a
/// machine on its way is capacity, never a reason to launch again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_arriving_in_waves_never_launch_twice() {
    let mut h = Harness::new(200, serde_json::json!({})).await;
    h.start_berth();
    for wave in 0..4 {
        h.create_pods(&format!("wave{wave}"), 40, "500m", "1Gi")
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually("every pod running", 90, || async {
        h.running_pods().await == 160
    })
    .await;
    // Let any late pass act before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = h.pods().await;
    for node in h.nodes().await {
        let name = node.metadata.name.unwrap();
        assert!(
            pods.iter()
                .any(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(&name)),
            "node {name} is empty: launched twice"
        );
    }
    h.assert_no_duplicate_or_leak().await;
    h.kill_berth();
}

/// The cheapest offering has no capacity: the launch falls back and the planner avoids it, and every pod runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_capacity_on_the_cheapest_offering_still_schedules_every_pod() {
    let mut h = Harness::new(200, serde_json::json!({})).await;
    h.create_pods("web", 60, "500m", "1Gi").await;
    all_unschedulable(&h, 60).await;
    let plan = h.offline_plan().await;
    let cheapest = plan
        .new_machines
        .iter()
        .min_by(|a, b| a.price.total_cmp(&b.price))
        .unwrap()
        .instance_type
        .clone();
    h.cloud.inject(
        Fault::InsufficientCapacity {
            instance_type: Some(cheapest.clone()),
            zone: None,
            capacity_type: Some(CapacityType::OnDemand),
        },
        None,
    );
    h.start_berth();
    eventually("every pod running", 90, || async {
        h.running_pods().await == 60
    })
    .await;
    for m in h.machines().await {
        let launched = m.status.and_then(|s| s.instance_type).unwrap_or_default();
        assert_ne!(
            launched, cheapest,
            "launched the offering that has no capacity"
        );
    }
    h.assert_no_duplicate_or_leak().await;
    h.kill_berth();
}

/// The Cluster's node limit stops the scale-up, with an Event on the Cluster and on the pods left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limits_stop_the_scale_up_with_an_event() {
    let mut h = Harness::new(200, serde_json::json!({"maxNodes": 2})).await;
    h.create_pods("big", 12, "3", "8Gi").await;
    all_unschedulable(&h, 12).await;
    h.start_berth();
    eventually("a ScaleUpLimited Event", 30, || async {
        !h.events("ScaleUpLimited").await.is_empty()
    })
    .await;
    eventually("two machines", 30, || async {
        h.machines().await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.machines().await.len(),
        2,
        "the limit of 2 nodes was crossed"
    );
    let limited = h.events("ScaleUpLimited").await;
    assert!(
        limited[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("cluster limit of 2 nodes"),
        "{:?}",
        limited[0].message
    );
    assert_eq!(limited[0].involved_object.kind.as_deref(), Some("Cluster"));
    eventually("the pods told why", 10, || async {
        !h.events("NotTriggerScaleUp").await.is_empty()
    })
    .await;
    h.kill_berth();
}

/// An invalid Cluster (a negative cpu limit, which the schema's quantity pattern lets through as the API server's
/// does, and which must not read as "no limit") keeps berth running and not launching, with the reason in the
/// Cluster's Ready condition, an Event on it and on the pods; fixed, berth acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cluster_stops_berth_acting_until_it_is_fixed() {
    let mut h = Harness::new(200, serde_json::json!({"maxCpu": "-4"})).await;
    h.create_pods("web", 6, "1", "2Gi").await;
    all_unschedulable(&h, 6).await;
    h.start_berth();
    let clusters: Api<Cluster> = Api::all(h.client.clone());
    let ready = |c: &Cluster| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
    };
    eventually("Ready=False on the Cluster", 30, || async {
        ready(&clusters.get(CLUSTER).await.unwrap()).is_some_and(|c| c.reason == "InvalidSpec")
    })
    .await;
    let condition = ready(&clusters.get(CLUSTER).await.unwrap()).unwrap();
    assert!(
        condition.message.contains("spec.limits.maxCpu"),
        "{}",
        condition.message
    );
    eventually("an InvalidSpec Event", 30, || async {
        !h.events("InvalidSpec").await.is_empty()
    })
    .await;
    eventually("the pods told why", 30, || async {
        h.events("NotTriggerScaleUp").await.iter().any(|e| {
            e.message
                .as_deref()
                .unwrap_or_default()
                .contains("is invalid")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        h.machines().await.is_empty(),
        "berth launched for an invalid Cluster"
    );

    let fix = serde_json::json!({"spec": {"limits": {"maxCpu": "1000"}}});
    clusters
        .patch(
            CLUSTER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&fix),
        )
        .await
        .unwrap();
    eventually(
        "every pod running once the Cluster is fixed",
        60,
        || async { h.running_pods().await == 6 },
    )
    .await;
    eventually("Ready=True", 30, || async {
        ready(&clusters.get(CLUSTER).await.unwrap()).is_some_and(|c| c.reason == "Valid")
    })
    .await;
    let status = clusters.get(CLUSTER).await.unwrap().status.unwrap();
    eventually("the Cluster counts its nodes", 30, || async {
        clusters.get(CLUSTER).await.unwrap().status.unwrap().nodes as usize
            == h.machines().await.len()
    })
    .await;
    assert!(status.hourly_cost.is_some());
    h.kill_berth();
}

/// berth killed right after it raised replicas and started again: the machines are those of one plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_never_launches_twice_for_the_same_pods() {
    let mut h = Harness::new(200, serde_json::json!({})).await;
    h.create_pods("web", 80, "500m", "1Gi").await;
    all_unschedulable(&h, 80).await;
    let plan = h.offline_plan().await;
    h.start_berth();
    eventually("a scale-up", 30, || async {
        Api::<MachineDeployment>::namespaced(h.client.clone(), "default")
            .get("general")
            .await
            .unwrap()
            .spec
            .replicas
            .unwrap_or(0)
            > 0
    })
    .await;
    h.kill_berth();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.start_berth();
    eventually("every pod running", 90, || async {
        h.running_pods().await == 80
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.machines().await.len(),
        plan.new_machines.len(),
        "machines vs one plan"
    );
    h.assert_no_duplicate_or_leak().await;
    let _ = &h.emulator;
    h.kill_berth();
}

/// An Auto Scaling group discovered by its tags grows through its desired capacity when no MachineDeployment
/// may grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_scaling_group_grows_through_desired_capacity() {
    let mut h = Harness::with_cloud(0, serde_json::json!({}), |config| {
        config.node_groups.push(berth::cloud::sim::SimNodeGroup {
            name: "legacy-workers".into(),
            min_size: 0,
            max_size: 10,
            desired_capacity: 0,
            instance_type: "m7i.xlarge".into(),
            zones: vec!["us-east-1a".into()],
            tags: [
                ("berth.dev/enabled".to_string(), "true".to_string()),
                ("berth.dev/cluster".to_string(), CLUSTER.to_string()),
                (
                    "k8s.io/cluster-autoscaler/node-template/label/pool".to_string(),
                    "legacy".to_string(),
                ),
            ]
            .into(),
        });
    })
    .await;
    h.create_pods("legacy", 6, "1", "2Gi").await;
    all_unschedulable(&h, 6).await;
    h.start_berth();
    eventually("every pod running", 60, || async {
        h.running_pods().await == 6
    })
    .await;
    let groups = h.cloud.node_groups().await.unwrap();
    assert!(
        groups[0].desired_capacity >= 2,
        "desired capacity {}",
        groups[0].desired_capacity
    );
    assert!(
        h.machines().await.is_empty(),
        "the MachineDeployment at max 0 launched"
    );
    assert!(h
        .cloud
        .calls()
        .iter()
        .any(|c| format!("{:?}", c.action) == "SetDesiredCapacity" && c.result == "ok"));
    h.kill_berth();
}

/// Scale-down of an Auto Scaling group: its empty nodes are cordoned and marked, then their instances terminated
/// with TerminateInstanceInAutoScalingGroup (desired capacity decremented), one at a time, down to the group's
/// minimum and never below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_scaling_group_shrinks_to_its_minimum_and_never_below() {
    let mut h = Harness::with_cloud(0, serde_json::json!({}), |config| {
        config.node_groups.push(berth::cloud::sim::SimNodeGroup {
            name: "legacy-workers".into(),
            min_size: 1,
            max_size: 10,
            // Empty at first, then grown through the API below, so every instance's kubelet registers a Node.
            desired_capacity: 0,
            instance_type: "m7i.xlarge".into(),
            zones: vec!["us-east-1a".into()],
            tags: [
                ("berth.dev/enabled".to_string(), "true".to_string()),
                ("berth.dev/cluster".to_string(), CLUSTER.to_string()),
            ]
            .into(),
        });
    })
    .await;
    // Nodes are not young and no scale-up just happened: the empty nodes may go at once.
    Api::<Cluster>::all(h.client.clone())
        .patch(
            CLUSTER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"scaleDown": {
                "minNodeAge": "0s", "delayAfterScaleUp": "0s", "unneededTime": "0s"
            }}})),
        )
        .await
        .unwrap();
    // Grown by hand to 3.
    h.cloud
        .set_node_group_desired_capacity("legacy-workers", 3)
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(h.client.clone());
    let ready_nodes = || async {
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count()
    };
    eventually("three group nodes Ready", 60, || async {
        ready_nodes().await == 3
    })
    .await;
    h.start_berth();
    let terminations = |h: &Harness| {
        h.cloud
            .calls()
            .iter()
            // Every attempt, refused or not: berth never even tries to go below the minimum.
            .filter(|c| format!("{:?}", c.action) == "TerminateInstanceInAutoScalingGroup")
            .count()
    };
    eventually("the group shrinks to its minimum", 180, || async {
        h.cloud.node_groups().await.unwrap()[0].desired_capacity == 1
    })
    .await;
    assert_eq!(terminations(&h), 2);
    eventually("an Event on each removed node", 30, || async {
        Api::<Event>::namespaced(h.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("NodeRemoved"))
            .count()
            == 2
    })
    .await;
    // Two more disruption rounds (10 s apart) change nothing: the group is at its minimum.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let g = &h.cloud.node_groups().await.unwrap()[0];
    assert_eq!(g.desired_capacity, 1);
    assert_eq!(g.instances.len(), 1);
    assert_eq!(terminations(&h), 2);
    // The node left is not cordoned.
    let left = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .is_some_and(|p| p.ends_with(&g.instances[0].instance_id))
        })
        .unwrap();
    assert_ne!(left.spec.unwrap().unschedulable, Some(true));
    h.kill_berth();
}

/// `--dry-run`: berth plans and says what it would do (an Event on the MachineDeployment), and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_and_tells_but_changes_nothing() {
    let mut h = Harness::new(200, serde_json::json!({})).await;
    h.create_pods("web", 20, "500m", "1Gi").await;
    all_unschedulable(&h, 20).await;
    h.start_berth_with(true);
    eventually(
        "a ScaledUp Event saying what berth would do",
        30,
        || async {
            h.events("ScaledUp").await.iter().any(|e| {
                e.message
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("would scale general +")
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let md = Api::<MachineDeployment>::namespaced(h.client.clone(), "default")
        .get("general")
        .await
        .unwrap();
    assert_eq!(md.spec.replicas, Some(0), "a dry run raised replicas");
    assert!(h.machines().await.is_empty());
    assert!(
        h.cloud.calls().is_empty(),
        "a dry run called the cloud: {:?}",
        h.cloud.calls().first()
    );
    h.kill_berth();
}

/// The Cluster names an interruption queue and the class launches spot: berth is running with pods placed.
async fn spot_cluster_with_pods(h: &mut Harness, pods: usize) {
    let classes: Api<MachineClass> = Api::all(h.client.clone());
    classes
        .patch(
            "general",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"capacityTypes": ["spot"]}})),
        )
        .await
        .unwrap();
    Api::<Cluster>::all(h.client.clone())
        .patch(
            CLUSTER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"interruptionQueue": "test-interruptions"}}),
            ),
        )
        .await
        .unwrap();
    h.create_pods("web", pods, "1", "1Gi").await;
    h.start_berth();
    eventually("every pod running", 60, || async {
        h.running_pods().await == pods
    })
    .await;
    eventually("the Cluster says the queue is readable", 30, || async {
        Api::<Cluster>::all(h.client.clone())
            .get(CLUSTER)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| c.type_ == "InterruptionQueueReady" && format!("{:?}", c.status) == "True")
    })
    .await;
}

/// A spot interruption warning, two minutes before EC2 reclaims the instance: the pool is marked unavailable, the
/// Machine is marked Interrupted and deleted, its node drained through evictions, and its replacement launched
/// and Ready, all before the reclaim; the message is deleted from the queue; nothing is launched twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_warning_drains_the_node_and_replaces_it_before_the_reclaim() {
    let mut h = Harness::new(10, serde_json::json!({})).await;
    spot_cluster_with_pods(&mut h, 6).await;
    let before = h.machines().await;
    let victim = before
        .iter()
        .find(|m| m.status.as_ref().is_some_and(|s| s.node_ref.is_some()))
        .expect("a Machine with a Node")
        .clone();
    let status = victim.status.clone().unwrap();
    let instance = status.instance_id.clone().unwrap();
    let node = status.node_ref.clone().unwrap().name;
    let on_node: Vec<String> = h
        .pods()
        .await
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node))
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(!on_node.is_empty(), "the victim runs pods");
    assert!(h.cloud.warn_interruption(&instance), "a live spot instance");
    let warned_at = tokio::time::Instant::now();

    // Well within the two minutes: the pods keep running on the cordoned node until capacity launched for them is
    // Ready, and only then are they evicted; the interrupted Machine then goes.
    let victim_name = victim.metadata.name.clone().unwrap();
    let nodes_before: Vec<String> = h
        .nodes()
        .await
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut new_capacity_ready_while_pods_ran = false;
    loop {
        let pods_left = h
            .pods()
            .await
            .iter()
            .filter(|p| on_node.contains(p.metadata.name.as_ref().unwrap()))
            .count();
        if pods_left == 0 {
            break;
        }
        let new_ready = h.nodes().await.iter().any(|n| {
            !nodes_before.contains(n.metadata.name.as_ref().unwrap())
                && n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        new_capacity_ready_while_pods_ran |= new_ready;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the interrupted node's pods were never evicted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        new_capacity_ready_while_pods_ran,
        "a new Node was Ready before the interrupted node's pods were evicted"
    );
    // Released by the capacity, not by the drain margin (a minute before the reclaim, 60 s after the warning).
    assert!(
        warned_at.elapsed() < Duration::from_secs(45),
        "the pods were evicted as soon as their capacity was Ready, not at the margin"
    );
    eventually("the interrupted Machine gone", 60, || async {
        h.machines()
            .await
            .iter()
            .all(|m| m.metadata.name.as_ref() != Some(&victim_name))
    })
    .await;
    // The group shrank by the interrupted Machine (the provisioner, not the MachineSet, replaced its capacity),
    // and remembers it did, so a retried message cannot shrink it twice.
    let md = Api::<MachineDeployment>::namespaced(h.client.clone(), "default")
        .get("general")
        .await
        .unwrap();
    let victim_uid = victim.metadata.uid.clone().unwrap();
    assert!(
        md.metadata
            .annotations
            .unwrap_or_default()
            .get("berth.dev/shrunk-for-interruptions")
            .is_some_and(|v| v.split(',').any(|u| u == victim_uid)),
        "the group records the interrupted Machine it shrank for"
    );
    let warned = h.event_messages("SpotInterrupted").await;
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(&instance), "{warned:?}");
    // The pool EC2 reclaims from gets no replacement.
    let unavailable = h.cloud.unavailable_offerings().current();
    assert!(
        unavailable
            .iter()
            .any(|o| Some(&o.instance_type) == status.instance_type.as_ref()
                && Some(&o.zone) == status.zone.as_ref()
                && o.capacity_type == CapacityType::Spot),
        "{unavailable:?}"
    );
    // The message was acted on once and deleted.
    assert_eq!(h.cloud.interruption_events().deleted(), 1);
    assert!(h.cloud.interruption_events().is_empty());
    // EC2 reclaims it now (berth terminated it already): nothing more happens, nothing was launched twice, and
    // the group holds exactly its live Machines.
    h.cloud.interrupt(&instance);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live = h
        .machines()
        .await
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .count() as u32;
    let md = Api::<MachineDeployment>::namespaced(h.client.clone(), "default")
        .get("general")
        .await
        .unwrap();
    assert_eq!(md.spec.replicas, Some(live));
    assert_eq!(h.running_pods().await, 6 - on_node.len());
    h.assert_no_duplicate_or_leak().await;
    h.kill_berth();
}

/// Malformed messages, unknown events and events for instances this cluster does not own are deleted and change
/// nothing; a state change for a Machine's instance makes berth look again and changes nothing while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_foreign_interruption_messages_are_deleted_and_change_nothing() {
    let mut h = Harness::new(10, serde_json::json!({})).await;
    spot_cluster_with_pods(&mut h, 3).await;
    let before = h.machines().await;
    let own = before[0]
        .status
        .as_ref()
        .unwrap()
        .instance_id
        .clone()
        .unwrap();
    let now = chrono::Utc::now();
    let foreign = h
        .cloud
        .add_foreign_instance("m7i.large", "us-east-1a", BTreeMap::new());
    // This cluster's instance that no Machine shows (as one launched a moment ago would be).
    let unclaimed = h.cloud.add_stray_instance(
        "m7i.large",
        "us-east-1a",
        [(berth::cloud::tags::CLUSTER.to_string(), CLUSTER.to_string())].into(),
    );
    use berth::interruption::events;
    for body in [
        "not json at all".to_string(),
        r#"{"source":"aws.ec2","detail-type":"EC2 Spot Instance Interruption Warning","time":"2026-12-08T10:00:00Z","detail":{"instance-id":7}}"#.to_string(),
        r#"{"source":"aws.s3","detail-type":"Object Created","time":"2026-12-08T10:00:00Z","detail":{}}"#.to_string(),
        events::spot_interruption_warning("us-east-1", &foreign, now),
        events::spot_interruption_warning("us-east-1", "i-0123456789abcdef0", now),
        // A running instance said to be running: news of nothing.
        events::state_change("us-east-1", &own, "running", now),
        // Said to be stopping while it runs: berth looks afresh, and the Machine stays.
        events::state_change("us-east-1", &own, "stopping", now),
        // A warning for this cluster's unclaimed instance from long ago: no Machine came for it; deleted.
        events::spot_interruption_warning("us-east-1", &unclaimed, now - chrono::Duration::minutes(2)),
    ] {
        h.cloud.send_interruption_event(body);
    }
    eventually("every message handled and deleted", 30, || async {
        h.cloud.interruption_events().deleted() == 8 && h.cloud.interruption_events().is_empty()
    })
    .await;
    // A fresh warning for it is kept for its Machine to appear (redelivered), not deleted as another's.
    h.cloud
        .send_interruption_event(events::spot_interruption_warning(
            "us-east-1",
            &unclaimed,
            chrono::Utc::now(),
        ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.interruption_events().deleted(), 8);
    assert_eq!(
        h.cloud.interruption_events().len(),
        1,
        "left in the queue for redelivery"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = h.machines().await;
    assert_eq!(after.len(), before.len());
    assert!(after.iter().all(|m| m.metadata.deletion_timestamp.is_none()
        && m.status
            .as_ref()
            .is_some_and(|s| format!("{:?}", s.phase) == "Running")));
    assert!(h.events("SpotInterrupted").await.is_empty());
    assert!(h.cloud.unavailable_offerings().current().is_empty());
    assert_eq!(h.running_pods().await, 3);
    h.kill_berth();
}
