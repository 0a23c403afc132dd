//! The garbage collector end to end: the emulator, the simulated cloud and simulated kubelets, with berth's
//! Machine controllers and the collector on short test periods (real time; every wait polls with a generous
//! deadline). What a crash between a launch call and the Machine's status write leaves (an instance tagged with the
//! uid of a Machine that is then deleted) is terminated within the grace and a period; another cluster's instance
//! is not. A Node whose instance is gone and that no Machine owns is deleted; Nodes without a provider ID, with
//! another cloud's or in another region are never deleted.

mod machine_harness;

use berth::api::Machine;
use berth::cloud::sim::fixtures;
use berth::cloud::{tags, CloudProvider, InstanceState};
use berth::controllers::garbage_collector::GarbageCollectorConfig;
use berth::garbage::GarbageSettings;
use berth::telemetry::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use machine_harness::{eventually, Harness, CLUSTER};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn config() -> GarbageCollectorConfig {
    let mut c = GarbageCollectorConfig::new(CLUSTER);
    c.first_round_after = Duration::from_millis(200);
    c.period = Duration::from_millis(500);
    c.settings = GarbageSettings {
        instance_grace: chrono::Duration::seconds(2),
        node_grace: chrono::Duration::seconds(1),
        ..GarbageSettings::default()
    };
    c
}

fn rounds(metrics: &Metrics) -> u64 {
    metrics
        .reconcile_duration_seconds
        .with_label_values(&["garbage_collector"])
        .get_sample_count()
}

fn state_of(h: &Harness, id: &str) -> InstanceState {
    h.cloud
        .all_instances()
        .into_iter()
        .find(|i| i.instance_id == id)
        .map(|i| i.state)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_left_by_a_crash_is_terminated_after_its_machine_is_deleted() {
    let mut h = Harness::new("10m").await;
    // berth stops: no controller runs while the crash's leftovers are made.
    h.kill_controllers();
    let machine: Machine = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Machine",
        "metadata": {"name": "crashed", "namespace": "default"},
        "spec": {"classRef": {"name": "general"}}
    }))
    .unwrap();
    let machines: Api<Machine> = Api::namespaced(h.client.clone(), "default");
    let machine = machines
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();
    // The launch call berth made for it just before it stopped: the instance carries the Machine's uid, and the
    // Machine's status never recorded it.
    let mut request = fixtures::request("crashed");
    request.machine.uid = machine.uid().unwrap();
    let stray = h.cloud.launch(&request).await.unwrap().instance.instance_id;
    assert!(machines.get("crashed").await.unwrap().status.is_none());
    // Another cluster's instance, with a uid tag naming no Machine either.
    let foreign = h.cloud.add_foreign_instance(
        "m5.large",
        "us-east-1a",
        BTreeMap::from([
            (tags::CLUSTER.to_string(), "another-cluster".to_string()),
            (tags::MACHINE_UID.to_string(), "nobody".to_string()),
        ]),
    );
    // While the Machine exists (without any status) its instance is never collected, however old.
    let metrics = h.start_garbage_collector(config());
    let launched = tokio::time::Instant::now();
    eventually(
        "the instance is past its grace and two rounds ran",
        60,
        || async { launched.elapsed() > Duration::from_secs(3) && rounds(&metrics) >= 2 },
    )
    .await;
    let seen = rounds(&metrics);
    eventually("two more rounds", 60, || async {
        rounds(&metrics) >= seen + 2
    })
    .await;
    assert_eq!(state_of(&h, &stray), InstanceState::Running);
    // The Machine is deleted while berth is down.
    machines
        .delete("crashed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Machine is gone", 30, || async {
        machines.get_opt("crashed").await.unwrap().is_none()
    })
    .await;

    let deleted = tokio::time::Instant::now();
    h.start_controllers();
    eventually("the stray instance is terminated", 60, || async {
        state_of(&h, &stray) == InstanceState::Terminated
    })
    .await;
    // Past its grace already, so within a period (0.5 s) of the deletion, with slack for a loaded machine.
    assert!(
        deleted.elapsed() < Duration::from_secs(20),
        "{:?}",
        deleted.elapsed()
    );
    assert_eq!(
        metrics
            .garbage_collected
            .with_label_values(&["instance"])
            .get(),
        1
    );
    let seen = rounds(&metrics);
    eventually("two more rounds", 60, || async {
        rounds(&metrics) >= seen + 2
    })
    .await;
    assert_eq!(state_of(&h, &foreign), InstanceState::Running);
    h.assert_no_double_termination();
    eventually("an Event on the Cluster names the instance", 30, || async {
        h.events_of(CLUSTER).await.iter().any(|(reason, message)| {
            reason == "StrayInstanceTerminated" && message.contains(&stray)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_instance_is_gone_is_deleted_and_no_other_node_ever_is() {
    let mut h = Harness::new("10m").await;
    let nodes: Api<Node> = Api::all(h.client.clone());
    let node = |name: &str, provider: Option<&str>| -> Node {
        let mut spec = json!({});
        if let Some(p) = provider {
            spec["providerID"] = json!(p);
        }
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}),
        )
        .unwrap()
    };
    // A real instance, terminated: EC2 still reports it (terminated).
    let mut request = fixtures::request("gone");
    request.machine.uid = "no-such-machine".into();
    let dead = h.cloud.launch(&request).await.unwrap().instance;
    h.cloud
        .terminate(std::slice::from_ref(&dead.instance_id))
        .await
        .unwrap();
    let keep = [
        node("no-provider", None),
        node("other-cloud", Some("gce://project/us-east1-b/i-0a")),
        node("other-region", Some("aws:///eu-west-1a/i-00000000000000aa")),
    ];
    let collect = [
        node("terminated", Some(&dead.provider_id())),
        node("unknown", Some("aws:///us-east-1a/i-00000000000000ff")),
    ];
    for n in keep.iter().chain(&collect) {
        nodes.create(&PostParams::default(), n).await.unwrap();
    }
    let metrics = h.start_garbage_collector(config());
    eventually("both orphans are deleted", 60, || async {
        let names: Vec<String> = nodes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        !names.contains(&"terminated".to_string()) && !names.contains(&"unknown".to_string())
    })
    .await;
    assert_eq!(
        metrics.garbage_collected.with_label_values(&["node"]).get(),
        2
    );
    let seen = rounds(&metrics);
    eventually("three more rounds", 60, || async {
        rounds(&metrics) >= seen + 3
    })
    .await;
    for n in &keep {
        assert!(
            nodes.get_opt(&n.name_any()).await.unwrap().is_some(),
            "{} was deleted",
            n.name_any()
        );
    }
}
