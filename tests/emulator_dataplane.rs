//! The simulated data plane: kubelets registering Nodes for launched instances, and the binder scheduling pods.

use berth::clock::ManualClock;
use berth::emulator::binder::Binder;
use berth::emulator::kubelet::{
    InstanceEvent, InstanceLaunched, InstanceTerminated, KubeletFailure, KubeletSimulator,
};
use berth::emulator::node_lifecycle::{LifecycleReport, NodeLifecycle, UNREACHABLE_TAINT};
use berth::emulator::{Config, Emulator};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn instance(
    id: &str,
    zone: &str,
    cpu: &str,
    taints: Vec<Taint>,
    boot: Duration,
) -> InstanceLaunched {
    let res: BTreeMap<String, String> = [("cpu", cpu), ("memory", "8Gi"), ("pods", "29")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    InstanceLaunched {
        instance_id: id.into(),
        instance_type: "m5.large".into(),
        zone: zone.into(),
        region: "us-west-2".into(),
        capacity_type: "spot".into(),
        arch: "amd64".into(),
        labels: [("berth.dev/machineset".to_string(), "workers".to_string())].into(),
        taints,
        capacity: res.clone(),
        allocatable: res,
        boot_delay: boot,
        ready_delay: Duration::ZERO,
    }
}

fn pod(name: &str, cpu: &str, extra: serde_json::Value) -> Pod {
    let mut v = json!({"metadata": {"name": name, "labels": {"app": name.trim_end_matches(char::is_numeric)}},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]}});
    if let Some(spec) = extra.as_object() {
        for (k, val) in spec {
            v["spec"][k] = val.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn kubelet_registers_after_boot_delay_and_leaves_on_termination() {
    let emu = Emulator::new();
    let nodes: Api<Node> = Api::all(emu.client());
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let kubelet = KubeletSimulator::new(emu.clone());
    let taint: Taint =
        serde_json::from_value(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}))
            .unwrap();
    kubelet
        .handle(InstanceEvent::Launched(Box::new(instance(
            "i-0abc",
            "us-west-2a",
            "2",
            vec![taint],
            Duration::from_millis(500),
        ))))
        .unwrap();
    assert!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "not before the boot delay"
    );
    assert_eq!(kubelet.booting(), vec!["i-0abc".to_string()]);
    let mut node = None;
    for _ in 0..200 {
        if let Some(n) = nodes.get_opt("i-0abc").await.unwrap() {
            node = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let node = node.expect("the node registers after its boot delay");
    assert!(kubelet.booting().is_empty());
    let labels = node.metadata.labels.clone().unwrap();
    for (k, v) in [
        ("kubernetes.io/hostname", "i-0abc"),
        ("topology.kubernetes.io/zone", "us-west-2a"),
        ("topology.kubernetes.io/region", "us-west-2"),
        ("node.kubernetes.io/instance-type", "m5.large"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("karpenter.sh/capacity-type", "spot"),
        ("berth.dev/capacity-type", "spot"),
        ("berth.dev/machineset", "workers"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let spec = node.spec.clone().unwrap();
    assert_eq!(
        spec.provider_id.as_deref(),
        Some("aws:///us-west-2a/i-0abc")
    );
    assert_eq!(spec.taints.unwrap()[0].key, "dedicated");
    let status = node.status.unwrap();
    assert_eq!(status.allocatable.unwrap()["cpu"].0, "2");
    assert!(status
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    // A pod bound there goes with the node.
    pods.create(
        &PostParams::default(),
        &pod("web", "100m", json!({"nodeName": "i-0abc"})),
    )
    .await
    .unwrap();
    kubelet
        .handle(InstanceEvent::Terminated(InstanceTerminated {
            instance_id: "i-0abc".into(),
        }))
        .unwrap();
    assert!(nodes.get_opt("i-0abc").await.unwrap().is_none());
    assert!(pods.get_opt("web").await.unwrap().is_none());
    // A termination during boot cancels the registration.
    kubelet
        .handle(InstanceEvent::Launched(Box::new(instance(
            "i-0def",
            "us-west-2b",
            "2",
            vec![],
            Duration::from_millis(200),
        ))))
        .unwrap();
    kubelet
        .handle(InstanceEvent::Terminated(InstanceTerminated {
            instance_id: "i-0def".into(),
        }))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(nodes.get_opt("i-0def").await.unwrap().is_none());
}

#[tokio::test]
async fn binder_places_pods_like_the_scheduler() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let kubelet = KubeletSimulator::new(emu.clone());
    let gpu_taint: Taint =
        serde_json::from_value(json!({"key": "gpu", "value": "true", "effect": "NoSchedule"}))
            .unwrap();
    kubelet
        .register(&instance("i-a", "us-west-2a", "2", vec![], Duration::ZERO))
        .unwrap();
    kubelet
        .register(&instance("i-b", "us-west-2b", "2", vec![], Duration::ZERO))
        .unwrap();
    kubelet
        .register(&instance(
            "i-gpu",
            "us-west-2c",
            "8",
            vec![gpu_taint],
            Duration::ZERO,
        ))
        .unwrap();
    kubelet
        .register(&instance(
            "i-down",
            "us-west-2a",
            "64",
            vec![],
            Duration::ZERO,
        ))
        .unwrap();
    kubelet.set_ready("i-down", false).unwrap();
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    let cases = [
        pod("small", "500m", json!({})),
        pod("huge", "16", json!({})),
        pod(
            "picky",
            "100m",
            json!({"nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"}}),
        ),
        pod(
            "tolerant",
            "6",
            json!({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
        ),
        pod("spread1", "100m", anti.clone()),
        pod("spread2", "100m", anti.clone()),
        pod("spread3", "100m", anti),
    ];
    for p in &cases {
        pods.create(&PostParams::default(), p).await.unwrap();
    }
    let report = Binder::new(emu.clone()).run_once().unwrap();
    let placed: BTreeMap<String, String> = report
        .bound
        .iter()
        .map(|(p, n)| (p.trim_start_matches("default/").to_string(), n.clone()))
        .collect();
    assert_eq!(
        placed.get("tolerant").map(String::as_str),
        Some("i-gpu"),
        "only the GPU node has 6 CPUs free; the pod tolerates its taint"
    );
    assert!(
        matches!(placed.get("small").map(String::as_str), Some("i-a" | "i-b")),
        "{placed:?}"
    );
    let spread: Vec<&String> = ["spread1", "spread2"]
        .iter()
        .filter_map(|p| placed.get(*p))
        .collect();
    assert_eq!(spread.len(), 2);
    assert_ne!(spread[0], spread[1], "anti-affinity keeps them apart");
    assert!(!placed.contains_key("huge") && !placed.contains_key("picky"));
    assert!(
        !placed.values().any(|n| n == "i-down"),
        "NotReady nodes get nothing"
    );
    let running = pods.get("small").await.unwrap();
    assert_eq!(running.status.unwrap().phase.as_deref(), Some("Running"));
    let huge = pods.get("huge").await.unwrap();
    let cond = huge
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );
    assert!(cond.message.unwrap().contains("Insufficient cpu"));
    let picky = pods.get("picky").await.unwrap();
    let msg = picky
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap()
        .message
        .unwrap();
    assert!(
        msg.contains("didn't match Pod's node affinity/selector"),
        "{msg}"
    );
    // A second pass with nothing new writes nothing.
    let rv = emu.store().resource_version();
    let again = Binder::new(emu.clone()).run_once().unwrap();
    assert!(
        again.bound.is_empty() && again.started.is_empty() && again.unschedulable.is_empty(),
        "{again:?}"
    );
    assert_eq!(emu.store().resource_version(), rv);
    // A new node makes room: the spawned binder reacts to the change.
    let task = Binder::new(emu.clone()).spawn(Duration::from_secs(60));
    kubelet
        .register(&instance("i-c", "us-west-2c", "4", vec![], Duration::ZERO))
        .unwrap();
    for _ in 0..200 {
        if pods
            .get("spread3")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        pods.get("spread3")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("i-c")
    );
    task.abort();
}

#[tokio::test]
async fn topology_spread_do_not_schedule() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let kubelet = KubeletSimulator::new(emu.clone());
    kubelet
        .register(&instance("i-a", "us-west-2a", "8", vec![], Duration::ZERO))
        .unwrap();
    kubelet
        .register(&instance("i-b", "us-west-2b", "8", vec![], Duration::ZERO))
        .unwrap();
    let tsc = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "zonal"}}}],
        "nodeSelector": {"topology.kubernetes.io/zone": "us-west-2a"}});
    // Both pods may only go to zone a (nodeSelector), but spreading over the eligible zones (only a) allows it.
    pods.create(&PostParams::default(), &pod("zonal1", "100m", tsc.clone()))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("zonal2", "100m", tsc))
        .await
        .unwrap();
    let report = Binder::new(emu.clone()).run_once().unwrap();
    assert_eq!(report.bound.len(), 2, "{report:?}");
    // Without the nodeSelector, the third pod must go to zone b (skew would be 3-0 otherwise).
    let free = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "zonal"}}}]});
    pods.create(&PostParams::default(), &pod("zonal3", "100m", free))
        .await
        .unwrap();
    let report = Binder::new(emu.clone()).run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/zonal3".to_string(), "i-b".to_string())]
    );
}

/// A binder passing again over an unchanged cluster skips the pass (it would decide nothing new), but any change to
/// a pod or a node, even one that only frees room, is seen on the next pass.
#[tokio::test]
async fn the_binder_skips_passes_only_while_pods_and_nodes_are_unchanged() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let kubelet = KubeletSimulator::new(emu.clone());
    kubelet
        .register(&instance("i-a", "us-west-2a", "1", vec![], Duration::ZERO))
        .unwrap();
    for p in [
        pod("first", "600m", json!({})),
        pod("second", "600m", json!({})),
    ] {
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let binder = Binder::new(emu.clone());
    let report = binder.run_once().unwrap();
    assert_eq!(report.bound.len(), 1, "{report:?}");
    let waiting = if report.bound[0].0 == "default/first" {
        "second"
    } else {
        "first"
    };
    // The pass's own writes are looked at once; then nothing changes and nothing is written.
    binder.run_once().unwrap();
    let rv = emu.store().resource_version();
    assert_eq!(binder.run_once().unwrap(), Default::default());
    assert_eq!(emu.store().resource_version(), rv);
    // A change elsewhere (a ConfigMap) is no reason to pass; a new node is.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(emu.client(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(binder.run_once().unwrap(), Default::default());
    kubelet
        .register(&instance("i-b", "us-west-2b", "1", vec![], Duration::ZERO))
        .unwrap();
    let report = binder.run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![(format!("default/{waiting}"), "i-b".to_string())]
    );
}

#[tokio::test]
async fn the_binder_follows_deletions_readiness_and_a_lost_history_between_passes() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let kubelet = KubeletSimulator::new(emu.clone());
    kubelet
        .register(&instance("i-a", "us-west-2a", "1", vec![], Duration::ZERO))
        .unwrap();
    let binder = Binder::new(emu.clone());
    pods.create(&PostParams::default(), &pod("big", "800m", json!({})))
        .await
        .unwrap();
    assert_eq!(binder.run_once().unwrap().bound.len(), 1);
    pods.create(&PostParams::default(), &pod("next", "800m", json!({})))
        .await
        .unwrap();
    let report = binder.run_once().unwrap();
    assert_eq!(report.unschedulable, vec!["default/next".to_string()]);
    // Deleting the pod that holds the node frees its requests in the binder's view.
    pods.delete("big", &Default::default()).await.unwrap();
    let report = binder.run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/next".to_string(), "i-a".to_string())]
    );
    // A node that stops being Ready takes no pods; once Ready again it does.
    kubelet.set_ready("i-a", false).unwrap();
    pods.delete("next", &Default::default()).await.unwrap();
    pods.create(&PostParams::default(), &pod("third", "800m", json!({})))
        .await
        .unwrap();
    let report = binder.run_once().unwrap();
    assert!(report.bound.is_empty(), "{report:?}");
    // History forgotten between passes (the store keeps a bounded window): the binder reads everything again.
    emu.store().compact();
    kubelet.set_ready("i-a", true).unwrap();
    emu.store().compact();
    let report = binder.run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/third".to_string(), "i-a".to_string())]
    );
    // A terminated instance's node and pods are gone: a new pod waits for a node.
    kubelet.terminate("i-a").unwrap();
    pods.create(&PostParams::default(), &pod("fourth", "100m", json!({})))
        .await
        .unwrap();
    let report = binder.run_once().unwrap();
    assert_eq!(report.unschedulable, vec!["default/fourth".to_string()]);
    let fourth = pods.get("fourth").await.unwrap();
    let condition = fourth.status.unwrap().conditions.unwrap();
    assert!(
        condition[0]
            .message
            .as_deref()
            .unwrap()
            .starts_with("0/0 nodes are available"),
        "{condition:?}"
    );
}

/// Pods that fit nowhere are looked at again when something they are checked against changes (a node comes, so the
/// message names the new count) or when they change themselves (a toleration added), and a new pod in a cluster
/// that did not change is decided on its own.
#[tokio::test]
async fn waiting_pods_are_looked_at_again_when_nodes_or_they_change() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let kubelet = KubeletSimulator::new(emu.clone());
    let taint = |value: &str| -> Taint {
        serde_json::from_value(json!({"key": "dedicated", "value": value, "effect": "NoSchedule"}))
            .unwrap()
    };
    kubelet
        .register(&instance(
            "i-a",
            "us-west-2a",
            "1",
            vec![taint("gpu")],
            Duration::ZERO,
        ))
        .unwrap();
    let binder = Binder::new(emu.clone());
    // Each pass marks only the pod created before it (the waiting one keeps its message).
    for name in ["early", "late"] {
        pods.create(&PostParams::default(), &pod(name, "100m", json!({})))
            .await
            .unwrap();
        let report = binder.run_once().unwrap();
        assert_eq!(report.unschedulable, vec![format!("default/{name}")]);
        binder.run_once().unwrap();
    }

    kubelet
        .register(&instance(
            "i-b",
            "us-west-2b",
            "1",
            vec![taint("db")],
            Duration::ZERO,
        ))
        .unwrap();
    let report = binder.run_once().unwrap();
    assert_eq!(
        report.unschedulable,
        vec!["default/early".to_string(), "default/late".to_string()]
    );
    let message = |p: Pod| {
        p.status.unwrap().conditions.unwrap()[0]
            .message
            .clone()
            .unwrap()
    };
    assert!(
        message(pods.get("late").await.unwrap()).starts_with("0/2 nodes are available"),
        "the message names the new node count"
    );
    binder.run_once().unwrap();

    let tolerate = json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}});
    pods.patch(
        "late",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&tolerate),
    )
    .await
    .unwrap();
    let report = binder.run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/late".to_string(), "i-b".to_string())]
    );
    assert!(message(pods.get("early").await.unwrap()).starts_with("0/2 nodes are available"));
}

/// Sets a pending pod's status.nominatedNodeName, as an autoscaler that launched a node for it does.
async fn nominate(pods: &Api<Pod>, name: &str, node: &str) {
    let patch = json!({"status": {"nominatedNodeName": node}});
    pods.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
}

fn nominated(p: Pod) -> Option<String> {
    p.status.and_then(|s| s.nominated_node_name)
}

#[tokio::test]
async fn a_nominated_pods_room_is_held_against_pods_of_equal_priority_and_binding_clears_the_nomination(
) {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    KubeletSimulator::new(emu.clone())
        .register(&instance("i-a", "us-west-2a", "2", vec![], Duration::ZERO))
        .unwrap();
    // "other" comes first in the queue (same priority, name order) and would take the room "planned" needs.
    for (name, cpu) in [("other", "1"), ("planned", "1500m")] {
        pods.create(&PostParams::default(), &pod(name, cpu, json!({})))
            .await
            .unwrap();
    }
    nominate(&pods, "planned", "i-a").await;
    let report = Binder::new(emu.clone()).run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/planned".to_string(), "i-a".to_string())]
    );
    assert_eq!(report.unschedulable, vec!["default/other".to_string()]);
    let planned = pods.get("planned").await.unwrap();
    assert_eq!(
        planned.spec.as_ref().unwrap().node_name.as_deref(),
        Some("i-a")
    );
    assert_eq!(nominated(planned), None, "binding clears the nomination");
}

#[tokio::test]
async fn a_higher_priority_pod_ignores_the_held_room_and_the_nomination_stays() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    KubeletSimulator::new(emu.clone())
        .register(&instance("i-a", "us-west-2a", "2", vec![], Duration::ZERO))
        .unwrap();
    pods.create(&PostParams::default(), &pod("held", "1500m", json!({})))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("vip", "1", json!({"priority": 1000})),
    )
    .await
    .unwrap();
    nominate(&pods, "held", "i-a").await;
    let report = Binder::new(emu.clone()).run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/vip".to_string(), "i-a".to_string())]
    );
    assert_eq!(report.unschedulable, vec!["default/held".to_string()]);
    // The scheduler never clears a nomination it cannot honour: its author does.
    assert_eq!(
        nominated(pods.get("held").await.unwrap()).as_deref(),
        Some("i-a")
    );
}

#[tokio::test]
async fn a_nominated_pod_takes_its_node_over_an_emptier_one() {
    let emu = Emulator::new();
    let pods: Api<Pod> = Api::namespaced(emu.client(), "default");
    let nodes: Api<Node> = Api::all(emu.client());
    let kubelet = KubeletSimulator::new(emu.clone());
    kubelet
        .register(&instance(
            "i-big",
            "us-west-2a",
            "8",
            vec![],
            Duration::ZERO,
        ))
        .unwrap();
    // A node with a ready delay registers NotReady (its network plugin is not up yet).
    let mut small = instance("i-small", "us-west-2a", "2", vec![], Duration::ZERO);
    small.ready_delay = Duration::from_secs(3600);
    kubelet.register(&small).unwrap();
    let ready = nodes
        .get("i-small")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap();
    assert!(ready
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "False"));
    for name in ["free", "loyal"] {
        pods.create(&PostParams::default(), &pod(name, "500m", json!({})))
            .await
            .unwrap();
    }
    nominate(&pods, "loyal", "i-small").await;
    kubelet.set_ready("i-small", true).unwrap();
    let report = Binder::new(emu.clone()).run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![
            ("default/free".to_string(), "i-big".to_string()),
            ("default/loyal".to_string(), "i-small".to_string()),
        ],
        "least allocated for the pod without a nomination, its own node for the nominated one"
    );
}

// ---- failing kubelets and the node lifecycle controller, on a clock moved by hand ----

fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap() // 2026-01-01T00:00:00Z
}

fn at(seconds: i64) -> String {
    (t0() + chrono::Duration::seconds(seconds))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

struct Failing {
    emu: Emulator,
    clock: ManualClock,
    kubelet: KubeletSimulator,
    lifecycle: NodeLifecycle,
    nodes: Api<Node>,
}

/// Nodes registered (Ready at once) at t0.
fn failing_cluster(names: &[&str]) -> Failing {
    let clock = ManualClock::new(t0());
    let emu = Emulator::with_clock(std::sync::Arc::new(clock.clone()), Config::default());
    let kubelet = KubeletSimulator::new(emu.clone());
    for n in names {
        kubelet
            .register(&instance(n, "us-west-2a", "4", vec![], Duration::ZERO))
            .unwrap();
    }
    let lifecycle = NodeLifecycle::new(emu.clone(), kubelet.clone());
    let nodes = Api::all(emu.client());
    Failing {
        emu,
        clock,
        kubelet,
        lifecycle,
        nodes,
    }
}

impl Failing {
    /// Moves the clock to `seconds` after t0 (forward only).
    fn move_to(&self, seconds: i64) {
        use berth::clock::Clock;
        let by = t0() + chrono::Duration::seconds(seconds) - self.clock.now();
        assert!(
            by >= chrono::Duration::zero(),
            "the clock only moves forward"
        );
        self.clock.advance(by);
    }

    /// Moves the clock to `seconds` after t0 and runs the lifecycle controller once.
    fn pass_at(&self, seconds: i64) -> LifecycleReport {
        self.move_to(seconds);
        self.lifecycle.run_once().unwrap()
    }

    async fn ready(&self, node: &str) -> k8s_openapi::api::core::v1::NodeCondition {
        let n = self.nodes.get(node).await.unwrap();
        n.status
            .unwrap()
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
    }

    async fn unreachable_taints(&self, node: &str) -> Vec<(String, Option<String>)> {
        let n = self.nodes.get(node).await.unwrap();
        n.spec
            .unwrap()
            .taints
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key == UNREACHABLE_TAINT)
            .map(|t| (t.effect, t.time_added.map(|x| x.0.to_string())))
            .collect()
    }
}

fn time(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn a_kubelet_that_stops_posting_turns_its_node_unknown_and_unreachable_after_40s_and_back_when_it_resumes(
) {
    let c = failing_cluster(&["i-a", "i-b"]);
    assert_eq!(time(&c.ready("i-a").await.last_heartbeat_time), at(0));
    assert_eq!(time(&c.ready("i-a").await.last_transition_time), at(0));
    // Stopped at 25 s: its last renewal reached the API at 20 s.
    c.move_to(25);
    assert_eq!(
        c.kubelet
            .fail(&["i-a".to_string()], KubeletFailure::Unknown)
            .unwrap(),
        vec!["i-a".to_string()]
    );
    assert_eq!(
        c.pass_at(60),
        LifecycleReport::default(),
        "40 s old is not yet stale"
    );
    assert_eq!(c.ready("i-a").await.status, "True");
    let report = c.pass_at(61);
    assert_eq!(report.marked_unknown, vec!["i-a".to_string()]);
    assert_eq!(report.tainted, vec!["i-a".to_string()]);
    let ready = c.ready("i-a").await;
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    assert_eq!(time(&ready.last_transition_time), at(61));
    assert_eq!(
        time(&ready.last_heartbeat_time),
        at(0),
        "left at the kubelet's last post"
    );
    assert_eq!(
        c.unreachable_taints("i-a").await,
        vec![
            ("NoSchedule".to_string(), Some(at(61))),
            ("NoExecute".to_string(), Some(at(61)))
        ]
    );
    assert_eq!(c.ready("i-b").await.status, "True", "the other node posts");
    assert!(c.unreachable_taints("i-b").await.is_empty());
    assert_eq!(
        c.pass_at(120),
        LifecycleReport::default(),
        "marked and tainted once"
    );
    // The kubelet comes back: it posts Ready, and the controller's next pass removes the taints.
    c.move_to(130);
    c.kubelet.recover(&["i-a".to_string()]).unwrap();
    let ready = c.ready("i-a").await;
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("KubeletReady"))
    );
    assert_eq!(time(&ready.last_transition_time), at(130));
    assert_eq!(time(&ready.last_heartbeat_time), at(130));
    let report = c.pass_at(131);
    assert_eq!(report.untainted, vec!["i-a".to_string()]);
    assert!(c.unreachable_taints("i-a").await.is_empty());
    assert_eq!(
        c.pass_at(300),
        LifecycleReport::default(),
        "its heartbeat is fresh again"
    );
    assert_eq!(c.ready("i-a").await.status, "True");
}

#[tokio::test]
async fn a_not_ready_kubelet_keeps_its_heartbeat_and_reports_false() {
    let c = failing_cluster(&["i-a"]);
    c.move_to(5);
    c.kubelet
        .fail(&["i-a".to_string()], KubeletFailure::NotReady)
        .unwrap();
    let ready = c.ready("i-a").await;
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("KubeletNotReady"))
    );
    assert_eq!(time(&ready.last_transition_time), at(5));
    assert!(c.kubelet.healthy_nodes().is_empty());
    assert_eq!(c.pass_at(600), LifecycleReport::default());
    let heartbeat = c.kubelet.heartbeats()["i-a"];
    assert!(
        heartbeat >= t0() + chrono::Duration::seconds(590),
        "renewed every 10 s: {heartbeat}"
    );
    assert_eq!(c.ready("i-a").await.status, "False");
    assert!(c.unreachable_taints("i-a").await.is_empty());
    c.kubelet.recover(&["i-a".to_string()]).unwrap();
    let ready = c.ready("i-a").await;
    assert_eq!(ready.status, "True");
    assert_eq!(time(&ready.last_transition_time), at(600));
    assert_eq!(c.kubelet.healthy_nodes(), vec!["i-a".to_string()]);
}

#[tokio::test]
async fn a_control_plane_outage_turns_every_node_unknown_and_only_the_failed_ones_stay_so() {
    let c = failing_cluster(&["i-a", "i-b", "i-c"]);
    c.move_to(10);
    c.kubelet
        .fail(&["i-c".to_string()], KubeletFailure::Unknown)
        .unwrap();
    c.move_to(100);
    c.kubelet.set_control_plane_reachable(false).unwrap();
    // i-c went stale long ago; the others' last renewal was at 100 s.
    assert_eq!(c.pass_at(100).marked_unknown, vec!["i-c".to_string()]);
    assert_eq!(c.pass_at(140), LifecycleReport::default());
    let report = c.pass_at(145);
    assert_eq!(
        report.marked_unknown,
        vec!["i-a".to_string(), "i-b".to_string()]
    );
    for n in ["i-a", "i-b", "i-c"] {
        assert_eq!(c.ready(n).await.status, "Unknown", "{n}");
        assert_eq!(c.unreachable_taints(n).await.len(), 2, "{n}");
    }
    c.move_to(700);
    c.kubelet.set_control_plane_reachable(true).unwrap();
    let report = c.pass_at(700);
    assert_eq!(report.untainted, vec!["i-a".to_string(), "i-b".to_string()]);
    assert_eq!(c.ready("i-a").await.status, "True");
    assert_eq!(
        c.ready("i-c").await.status,
        "Unknown",
        "its own kubelet is still down"
    );
    assert_eq!(c.unreachable_taints("i-c").await.len(), 2);
    assert_eq!(c.pass_at(800), LifecycleReport::default());
}

#[tokio::test]
async fn the_binder_places_nothing_on_unknown_not_ready_or_unreachable_nodes() {
    let c = failing_cluster(&["i-gone", "i-sick"]);
    let pods: Api<Pod> = Api::namespaced(c.emu.client(), "default");
    let binder = Binder::new(c.emu.clone());
    c.kubelet
        .fail(&["i-gone".to_string()], KubeletFailure::Unknown)
        .unwrap();
    c.kubelet
        .fail(&["i-sick".to_string()], KubeletFailure::NotReady)
        .unwrap();
    assert_eq!(c.pass_at(41).marked_unknown, vec!["i-gone".to_string()]);
    pods.create(&PostParams::default(), &pod("web", "500m", json!({})))
        .await
        .unwrap();
    let report = binder.run_once().unwrap();
    assert!(report.bound.is_empty(), "{report:?}");
    assert_eq!(report.unschedulable, vec!["default/web".to_string()]);
    // Back to Ready=True but still tainted until the controller's next pass: the taint alone keeps pods off.
    c.move_to(50);
    c.kubelet.recover(&["i-gone".to_string()]).unwrap();
    assert_eq!(c.ready("i-gone").await.status, "True");
    assert_eq!(c.unreachable_taints("i-gone").await.len(), 2);
    let report = binder.run_once().unwrap();
    assert!(report.bound.is_empty(), "{report:?}");
    assert_eq!(c.pass_at(50).untainted, vec!["i-gone".to_string()]);
    let report = binder.run_once().unwrap();
    assert_eq!(
        report.bound,
        vec![("default/web".to_string(), "i-gone".to_string())]
    );
    // Bound pods stay bound on a node that fails (no taint-based eviction).
    c.move_to(60);
    c.kubelet
        .fail(&["i-gone".to_string()], KubeletFailure::Unknown)
        .unwrap();
    assert_eq!(c.pass_at(200).marked_unknown, vec!["i-gone".to_string()]);
    let web = pods.get("web").await.unwrap();
    assert_eq!(web.spec.unwrap().node_name.as_deref(), Some("i-gone"));
}
