//! berth as real processes against a real API socket and a real EC2 API: `berth emulate --binder` (the cluster,
//! with its kube-scheduler stand-in) and moto_server behind the fault proxy (which adds EC2's ClientToken
//! idempotency that moto lacks). The test plays the kubelets: a Node registers for each running instance moto
//! reports, as a kubelet on it would.
//!
//! - `sigkill_at_random_points_of_a_burst`: `berth run` is SIGKILLed at seeded random moments of a burst of
//!   pending pods (some right after a launch call reached EC2, some at random uptimes) and restarted after a
//!   random pause, at least 10 times; then, from moto and the proxy's log, not from berth: no Machine got two
//!   instances, every live cluster instance is owned by an existing Machine, no instance was terminated twice,
//!   and every pod is scheduled. `BERTH_CRASH_SEED` picks other moments, `BERTH_CRASH_KILLS` more kills.
//! - `leader_failover_under_load`: two `berth run --leader-elect` replicas; the leader is SIGKILLed right after
//!   a launch call, mid-burst; the standby leads within the Lease's duration plus one retry (printed as the
//!   takeover time), and the burst is served with the same promises.
//!
//! Needs moto (scripts/moto.sh install); kubectl is not used.

#[path = "support/fault_proxy.rs"]
#[allow(dead_code)] // the fault injection half is moto_cloud's
mod fault_proxy;
#[path = "support/moto.rs"]
mod moto;
mod support;

use aws_sdk_ec2::types as t;
use berth::api::{crds, Machine, MachinePhase};
use berth::cloud::aws::{AwsCloud, AwsConfig};
use berth::cloud::clock::SystemClock;
use berth::cloud::metrics::CloudMetrics;
use berth::cloud::tags;
use berth::emulator::kubelet::{node_object, InstanceLaunched};
use fault_proxy::FaultProxy;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{start_emulator_with, EmulatorProcess};

/// The Lease timing `berth run` uses (telemetry::leader::LeaderTiming's default): a standby may take a Lease
/// whose holder has not renewed for the lease duration, and it looks every retry period.
const LEASE_DURATION: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// The two tests each start an emulator and berth processes; on two shared cores, one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small seeded generator (splitmix64): the kill moments are reproducible from the seed a failure prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The cluster, moto behind the proxy, and what the test plays (kubelets).
struct World {
    cluster: String,
    emulator: EmulatorProcess,
    client: Client,
    proxy: FaultProxy,
    /// Straight to moto: the test's own reads stay out of the proxy's log.
    ec2: aws_sdk_ec2::Client,
    kubelets: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.kubelets.abort();
    }
}

/// One `berth run` process; SIGKILLed on drop.
struct Berth {
    child: Child,
    metrics: String,
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Berth {
    /// SIGKILL (std's kill on Unix): no shutdown path runs, the Lease is not released.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// berth_leader from /metrics; None while the process does not answer.
    fn leading(&self) -> Option<bool> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        body.lines()
            .find(|l| l.starts_with("berth_leader "))
            .map(|l| l.ends_with(" 1"))
    }
}

impl World {
    async fn new(name: &str) -> World {
        let cluster = format!("{name}-{}", std::process::id());
        let moto_endpoint = moto::endpoint();
        let proxy = FaultProxy::start(moto_endpoint.clone()).await;
        let mut config = AwsConfig::new(&cluster);
        config.region = Some("us-east-1".into());
        config.endpoint_url = Some(moto_endpoint);
        let direct = AwsCloud::connect(
            config,
            Arc::new(SystemClock),
            CloudMetrics::unregistered().unwrap(),
        )
        .await
        .expect("connect to moto");
        let ec2 = direct.ec2_client().clone();
        let image = network_and_image(&ec2, &cluster).await;

        let emulator = start_emulator_with(&["--binder"]);
        let client = berth::operator::connect(Some(&emulator.kubeconfig))
            .await
            .expect("a client for the emulator");
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            crd_api.create(&PostParams::default(), &crd).await.unwrap();
        }
        create(
            &client,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "berth-system"}}),
        )
        .await;
        create(&client, json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": cluster},
            "spec": {"clusterName": cluster, "apiServerEndpoint": "https://example.invalid", "certificateAuthority": "Q0E=",
                     "serviceCidr": "10.100.0.0/16"}
        }))
        .await;
        // One instance type (m5.large: 2 vCPUs) so that each pod below needs a machine of its own. moto's catalog marks
        // m5 as previous generation, hence currentGenerationOnly: false.
        create(&client, json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
            "spec": {
                "image": {"id": image},
                "instanceRequirements": {"instanceTypes": ["m5.large"], "currentGenerationOnly": false},
                "capacityTypes": ["on-demand"],
                "subnets": {"tags": {"berth.dev/discovery": cluster}},
                "securityGroups": {"tags": {"berth.dev/discovery": cluster}},
                "instanceProfile": "node"
            }
        }))
        .await;
        create(&client, json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
            "metadata": {"name": "general", "namespace": "default"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"group": "general"}},
                "template": {"metadata": {"labels": {"group": "general"}}, "spec": {"classRef": {"name": "general"}}},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 40}
            }
        }))
        .await;
        let kubelets = tokio::spawn(play_kubelets(client.clone(), ec2.clone(), cluster.clone()));
        World {
            cluster,
            emulator,
            client,
            proxy,
            ec2,
            kubelets,
        }
    }

    fn start_berth(&self, leader_elect: Option<&str>) -> Berth {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(&self.emulator.kubeconfig)
            .args(["--cluster-name", &self.cluster])
            .args(["--aws-endpoint", &self.proxy.endpoint])
            .args(["--region", "us-east-1"])
            .arg(format!("--metrics-address=127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("BERTH_PROCESS_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if let Some(identity) = leader_elect {
            cmd.args(["--leader-elect", "--identity", identity]);
        }
        Berth {
            child: cmd.spawn().expect("berth run starts"),
            metrics: format!("127.0.0.1:{port}"),
        }
    }

    /// `n` pods of 1200m CPU each (one per m5.large), named `{prefix}-{i}`.
    async fn burst(&self, prefix: &str, n: usize) {
        for i in 0..n {
            create(&self.client, json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{prefix}-{i}"), "namespace": "default"},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9",
                          "resources": {"requests": {"cpu": "1200m", "memory": "1Gi"}}}]}
            }))
            .await;
        }
    }

    /// Launch calls that reached the proxy (answered or not yet).
    fn launch_requests(&self) -> usize {
        self.proxy.bodies("RunInstances").len() + self.proxy.bodies("CreateFleet").len()
    }

    async fn machines(&self) -> Vec<Machine> {
        Api::<Machine>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn unscheduled_pods(&self) -> Vec<String> {
        Api::<Pod>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .map(|p| p.metadata.name.unwrap_or_default())
            .collect()
    }

    /// Waits until every pod is bound and every Machine Running with as many live instances as Machines.
    async fn wait_served(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let pending = self.unscheduled_pods().await;
            let machines = self.machines().await;
            let running = machines.iter().filter(|m| is_running(m)).count();
            let live = live_instances(&self.ec2, &self.cluster).await.len();
            if pending.is_empty() && running == machines.len() && live == machines.len() {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "not served after {limit:?}: unscheduled pods {pending:?}, {running} of {} Machines running, {live} live instances",
                machines.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The promise, checked from moto and the proxy's log: no Machine has two instances, every live cluster
    /// instance belongs to an existing Machine, no instance was terminated twice, no launch token got two
    /// different answers.
    async fn check_no_duplicate_leak_or_double_terminate(&self) {
        let all = cluster_instances(&self.ec2, &self.cluster).await;
        let mut by_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in &all {
            let uid = i.tags.get(tags::MACHINE_UID).cloned();
            let uid = uid.unwrap_or_else(|| panic!("instance {} has no Machine uid tag", i.id));
            by_uid.entry(uid).or_default().push(i.id.clone());
        }
        let twice: Vec<_> = by_uid.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "Machines launched twice (uid -> instances): {twice:?}"
        );

        let machine_uids: BTreeSet<String> = self
            .machines()
            .await
            .into_iter()
            .filter_map(|m| m.metadata.uid)
            .collect();
        let leaked: Vec<_> = all
            .iter()
            .filter(|i| i.live() && !machine_uids.contains(&i.tags[tags::MACHINE_UID]))
            .map(|i| (&i.id, &i.state))
            .collect();
        assert!(
            leaked.is_empty(),
            "live instances no Machine owns: {leaked:?}"
        );

        let mut terminations: BTreeMap<String, usize> = BTreeMap::new();
        for body in self.proxy.bodies("TerminateInstances") {
            for (k, v) in body.split('&').filter_map(|p| p.split_once('=')) {
                if k.starts_with("InstanceId.") {
                    *terminations.entry(v.to_string()).or_default() += 1;
                }
            }
        }
        let double: Vec<_> = terminations.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            double.is_empty(),
            "instances terminated more than once: {double:?}"
        );

        let mut answers: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
        for call in self.proxy.launches() {
            answers
                .entry(call.client_token)
                .or_default()
                .insert(call.instance_ids);
        }
        let split: Vec<_> = answers.iter().filter(|(_, a)| a.len() > 1).collect();
        assert!(
            split.is_empty(),
            "a client token answered with different instances: {split:?}"
        );
    }
}

fn is_running(m: &Machine) -> bool {
    m.metadata.deletion_timestamp.is_none()
        && m.status
            .as_ref()
            .is_some_and(|s| s.phase == MachinePhase::Running)
}

async fn create(client: &Client, object: serde_json::Value) {
    let kind = object["kind"].as_str().unwrap().to_string();
    let obj: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
    let (group, version) = match obj.types.as_ref().unwrap().api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            obj.types.as_ref().unwrap().api_version.clone(),
        ),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &kind);
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {kind}: {e}"));
}

/// A VPC with two subnets and a security group tagged for discovery, and an AMI; returns the AMI's id.
async fn network_and_image(ec2: &aws_sdk_ec2::Client, cluster: &str) -> String {
    let discovery = t::Tag::builder()
        .key("berth.dev/discovery")
        .value(cluster)
        .build();
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc
        .unwrap()
        .vpc_id
        .unwrap();
    for (i, zone) in ["us-east-1a", "us-east-1b"].iter().enumerate() {
        ec2.create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*zone)
            .tag_specifications(
                t::TagSpecification::builder()
                    .resource_type(t::ResourceType::Subnet)
                    .tags(discovery.clone())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    ec2.create_security_group()
        .group_name(format!("{cluster}-nodes"))
        .description("berth test nodes")
        .vpc_id(&vpc)
        .tag_specifications(
            t::TagSpecification::builder()
                .resource_type(t::ResourceType::SecurityGroup)
                .tags(discovery)
                .build(),
        )
        .send()
        .await
        .unwrap();
    ec2.register_image()
        .name(format!("berth-test-{cluster}-al2023"))
        .architecture(t::ArchitectureValues::X8664)
        .root_device_name("/dev/xvda")
        .virtualization_type("hvm")
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap()
}

/// An instance as moto describes it.
#[derive(Debug)]
struct Seen {
    id: String,
    state: String,
    instance_type: String,
    zone: String,
    tags: BTreeMap<String, String>,
}

impl Seen {
    fn live(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }
}

/// Every instance tagged with this cluster, in any state.
async fn cluster_instances(ec2: &aws_sdk_ec2::Client, cluster: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = ec2
            .describe_instances()
            .filters(
                t::Filter::builder()
                    .name(format!("tag:{}", tags::CLUSTER))
                    .values(cluster)
                    .build(),
            )
            .set_next_token(token)
            .send()
            .await
            .expect("DescribeInstances on moto");
        for r in page.reservations() {
            for i in r.instances() {
                out.push(Seen {
                    id: i.instance_id().unwrap_or_default().to_string(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    tags: i
                        .tags()
                        .iter()
                        .map(|t| {
                            (
                                t.key().unwrap_or_default().to_string(),
                                t.value().unwrap_or_default().to_string(),
                            )
                        })
                        .collect(),
                });
            }
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

async fn live_instances(ec2: &aws_sdk_ec2::Client, cluster: &str) -> Vec<Seen> {
    cluster_instances(ec2, cluster)
        .await
        .into_iter()
        .filter(Seen::live)
        .collect()
}

/// What the kubelets and the cloud controller manager of a real cluster do, from moto's view: a Ready Node
/// registers (named by instance id, providerID `aws:///zone/id`) for each running instance of the cluster, and
/// the Node of an instance moto reports terminated goes.
async fn play_kubelets(client: Client, ec2: aws_sdk_ec2::Client, cluster: String) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        let seen = cluster_instances(&ec2, &cluster).await;
        let existing: BTreeSet<String> = match nodes.list(&ListParams::default()).await {
            Ok(l) => l
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect(),
            Err(_) => BTreeSet::new(),
        };
        for i in &seen {
            if i.live() && !existing.contains(&i.id) {
                let launched = InstanceLaunched {
                    instance_id: i.id.clone(),
                    instance_type: i.instance_type.clone(),
                    zone: i.zone.clone(),
                    region: "us-east-1".into(),
                    capacity_type: "on-demand".into(),
                    arch: "amd64".into(),
                    // m5.large: 2 vCPUs, 8 GiB; allocatable after EKS's kube and system reservations.
                    capacity: BTreeMap::from([
                        ("cpu".into(), "2".into()),
                        ("memory".into(), "8Gi".into()),
                        ("pods".into(), "29".into()),
                    ]),
                    allocatable: BTreeMap::from([
                        ("cpu".into(), "1930m".into()),
                        ("memory".into(), "7Gi".into()),
                        ("pods".into(), "29".into()),
                    ]),
                    ..InstanceLaunched::default()
                };
                let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
                let node: Node =
                    serde_json::from_value(node_object(&launched, true, &now)).unwrap();
                // AlreadyExists (a race with berth's own reads is impossible, but a slow list is not) is fine.
                let _ = nodes.create(&PostParams::default(), &node).await;
            } else if !i.live() && existing.contains(&i.id) {
                let _ = nodes.delete(&i.id, &DeleteParams::default()).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (polling, generously) until `f` answers.
async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_of_a_burst() {
    let _serial = SERIAL.lock().await;
    let seed = env_number("BERTH_CRASH_SEED", 24);
    let kills = env_number("BERTH_CRASH_KILLS", 12);
    assert!(kills >= 1, "BERTH_CRASH_KILLS must be at least 1");
    eprintln!("sigkill_at_random_points_of_a_burst: seed {seed}, {kills} kills (BERTH_CRASH_SEED, BERTH_CRASH_KILLS)");
    let mut rng = Rng(seed);
    let world = World::new("crash").await;
    let started = Instant::now();
    let mut berth = world.start_berth(None);
    world.burst("first", 10).await;
    let mut moments = Vec::new();
    for k in 0..kills {
        if k == kills / 2 {
            // A second wave, so that the later kills also fall into launches.
            world.burst("second", 8).await;
        }
        // Half the kills right after a launch call reached EC2 (berth may not have recorded the instance yet),
        // half at a random uptime (anywhere: starting, listing, patching, draining the batch window).
        if rng.next().is_multiple_of(2) {
            let before = world.launch_requests();
            let deadline = Instant::now() + Duration::from_secs(8);
            while world.launch_requests() == before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let after = rng.millis(0, 300);
            tokio::time::sleep(after).await;
            moments.push(format!("launch+{}ms", after.as_millis()));
        } else {
            let uptime = rng.millis(300, 3000);
            tokio::time::sleep(uptime).await;
            moments.push(format!("up {}ms", uptime.as_millis()));
        }
        berth.kill();
        tokio::time::sleep(rng.millis(50, 1000)).await;
        berth = world.start_berth(None);
    }
    eprintln!("killed at: {}", moments.join(", "));
    world.wait_served(Duration::from_secs(120)).await;
    world.check_no_duplicate_leak_or_double_terminate().await;
    let launches = world.proxy.launches();
    eprintln!(
        "served in {:?} with {kills} kills: {} Machines, {} launch calls answered ({} replayed by token)",
        started.elapsed(),
        world.machines().await.len(),
        launches.len(),
        launches.iter().filter(|c| c.replayed).count()
    );
    drop(berth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_under_load() {
    let _serial = SERIAL.lock().await;
    let world = World::new("failover").await;
    let a = world.start_berth(Some("replica-a"));
    let b = world.start_berth(Some("replica-b"));
    let (a_leads, _) = wait_for("a leader", Duration::from_secs(30), || {
        match (a.leading(), b.leading()) {
            (Some(true), Some(false)) => Some(true),
            (Some(false), Some(true)) => Some(false),
            _ => None,
        }
    })
    .await;
    let (mut leader, standby) = if a_leads { (a, b) } else { (b, a) };
    world.burst("load", 16).await;
    // Mid-burst: right after the leader's third launch call reached EC2.
    wait_for("three launch calls", Duration::from_secs(60), || {
        (world.launch_requests() >= 3).then_some(())
    })
    .await;
    leader.kill();
    let (_, takeover) = wait_for("the standby to lead", Duration::from_secs(30), || {
        standby.leading().filter(|l| *l)
    })
    .await;
    eprintln!("takeover time after SIGKILL of the leader mid-burst: {takeover:?}");
    // The standby may take the Lease once it is LEASE_DURATION old, and it looks every RETRY_PERIOD; five
    // seconds of slack for two loaded cores (the /metrics poll, the process's own scheduling).
    let bound = LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(5);
    assert!(
        takeover <= bound,
        "takeover took {takeover:?}, more than {bound:?}"
    );
    world.wait_served(Duration::from_secs(120)).await;
    world.check_no_duplicate_leak_or_double_terminate().await;
    drop(standby);
}
