//! The Machine controller with the MachineSet and MachineDeployment controllers, end to end: the emulator, the
//! simulated cloud (bundled us-east-1 catalog, EC2's rate limits) and simulated kubelets. Machines launch, their
//! Nodes register and link, scale-down drains and terminates, failures are replaced, a controller restart never
//! launches twice, startup taints are removed when the class says so, and bad input launches and deletes nothing.
//! Rollouts (surge, PodDisruptionBudgets, OnDelete, pause) are in tests/rollouts.rs.

mod machine_harness;

use berth::cloud::sim::Fault;
use berth::cloud::CloudProvider;
use kube::api::{Api, ListParams};
use machine_harness::{eventually, is_running, Harness};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_to_ten_to_three() {
    let h = Harness::new("15m").await;
    h.create_deployment("general", 0).await;
    h.scale("general", 10).await;
    eventually("10 running machines", 60, || async {
        h.running().await == 10
    })
    .await;
    assert_eq!(h.cloud.live_instance_count(), 10);
    for m in h.machines().await {
        let s = m.status.unwrap();
        let node = s.node_ref.expect("linked to its node").name;
        assert!(
            s.provider_id.as_deref().unwrap().ends_with(&node),
            "providerID names the instance"
        );
        assert!(
            s.instance_type.as_deref().unwrap().starts_with("m6i")
                || s.instance_type.as_deref().unwrap().starts_with("c6i")
        );
        assert!(s.price.is_some());
    }
    let nodes = h.nodes().await;
    assert_eq!(nodes.len(), 10);
    assert!(
        nodes.iter().all(|n| n
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("team")
            .map(String::as_str)
            == Some("a")),
        "template labels reach the Node"
    );

    h.scale("general", 3).await;
    eventually("3 machines and 3 instances", 60, || async {
        h.machines().await.len() == 3 && h.cloud.live_instance_count() == 3
    })
    .await;
    eventually("3 nodes", 30, || async { h.nodes().await.len() == 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_registers_is_replaced() {
    let h = Harness::new("2s").await;
    h.cloud.inject(Fault::BootFailure, Some(1));
    h.create_deployment("general", 2).await;
    eventually(
        "2 running machines after the failed one is replaced",
        60,
        || async { h.running().await == 2 },
    )
    .await;
    eventually("the failed machine's instance terminated", 30, || async {
        h.cloud.live_instance_count() == 2
    })
    .await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(h.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("NodeStartupTimeout")),
        "the failure is explained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_terminated_behind_our_back_is_replaced() {
    let h = Harness::new("15m").await;
    h.create_deployment("general", 2).await;
    eventually("2 running machines", 60, || async {
        h.running().await == 2
    })
    .await;
    let victim = h.machines().await[0]
        .status
        .clone()
        .unwrap()
        .instance_id
        .unwrap();
    h.cloud
        .terminate(std::slice::from_ref(&victim))
        .await
        .unwrap();
    eventually("a replacement running", 60, || async {
        let ms = h.machines().await;
        h.running().await == 2
            && ms.iter().all(|m| {
                m.status.as_ref().and_then(|s| s.instance_id.as_deref()) != Some(victim.as_str())
            })
    })
    .await;
    assert_eq!(h.cloud.live_instance_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_never_launches_twice() {
    let mut h = Harness::new("15m").await;
    h.create_deployment("general", 6).await;
    // Kill the controllers as soon as the first launches happen (others are in flight), then start fresh ones.
    eventually("a first launch", 30, || async {
        h.cloud.live_instance_count() > 0
    })
    .await;
    h.restart_controllers(Duration::from_millis(300)).await;
    eventually("6 running machines", 60, || async {
        h.running().await == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.cloud.live_instance_count(), 6, "one instance per machine");
    let uids: std::collections::BTreeSet<String> = h
        .cloud
        .describe_instances()
        .await
        .unwrap()
        .iter()
        .filter_map(|i| i.machine().map(|m| m.uid))
        .collect();
    assert_eq!(uids.len(), 6);
    assert_eq!(h.launches(), 6);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_taints_are_removed_once_ready_when_the_class_says_so() {
    let h = Harness::new("15m").await;
    h.create_class(
        "self-initializing",
        json!({"removeStartupTaintsWhenReady": true}),
    )
    .await;
    let taints = json!({
        "taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}],
        "startupTaints": [{"key": "example.com/agent-not-ready", "effect": "NoSchedule"}]
    });
    let mut removed = taints.clone();
    removed["classRef"] = json!({"name": "self-initializing"});
    h.create_deployment_with(
        "removed",
        json!({"replicas": 1, "template": {"spec": removed}}),
    )
    .await;
    h.create_deployment_with("kept", json!({"replicas": 1, "template": {"spec": taints}}))
        .await;
    eventually("both machines running", 30, || async {
        h.running().await == 2
    })
    .await;
    let taint_keys = |group: &str, nodes: &[k8s_openapi::api::core::v1::Node]| -> Vec<String> {
        let node = nodes
            .iter()
            .find(|n| n.metadata.labels.as_ref().unwrap()["berth.dev/machine-deployment"] == group)
            .expect("the group's node");
        let mut keys: Vec<String> = node
            .spec
            .as_ref()
            .unwrap()
            .taints
            .iter()
            .flatten()
            .map(|t| t.key.clone())
            .collect();
        keys.sort();
        keys
    };
    // Running is recorded only after the removal, so the Node is already clean when its Machine says Running.
    let nodes = h.nodes().await;
    assert_eq!(
        taint_keys("removed", &nodes),
        ["dedicated"],
        "berth removed the startup taint and kept the other"
    );
    assert_eq!(
        taint_keys("kept", &nodes),
        ["dedicated", "example.com/agent-not-ready"],
        "registered with both; a node agent's job to remove"
    );
    let machine = h
        .machines()
        .await
        .into_iter()
        .find(|m| m.spec.class_ref.name == "self-initializing")
        .unwrap();
    let name = machine.metadata.name.clone().unwrap();
    eventually("a StartupTaintsRemoved Event", 10, || async {
        h.events_of(&name)
            .await
            .iter()
            .any(|(reason, _)| reason == "StartupTaintsRemoved")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_launches_and_deletes_nothing_and_says_why() {
    let h = Harness::new("15m").await;
    h.create_deployment("web", 2).await;
    eventually("2 running machines", 30, || async {
        h.running().await == 2
    })
    .await;
    let web_machines: Vec<String> = h
        .machines()
        .await
        .iter()
        .map(|m| m.metadata.name.clone().unwrap())
        .collect();

    h.create_deployment_with(
        "noclass",
        json!({"replicas": 2, "template": {"spec": {"classRef": {"name": "gpu"}}}}),
    )
    .await;
    h.create_deployment_with(
        "mismatch",
        json!({"replicas": 2, "template": {"metadata": {"labels": {"group": "other"}}}}),
    )
    .await;
    h.create_deployment_with(
        "belowmin",
        json!({"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}),
    )
    .await;
    // A running deployment given a replica count below its minimum keeps its Machines.
    h.patch_deployment(
        "web",
        json!({"spec": {"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}}),
    )
    .await;
    for (name, reason, message) in [
        (
            "noclass",
            "ClassNotFound",
            "MachineClass gpu does not exist",
        ),
        (
            "mismatch",
            "SelectorMismatch",
            "spec.selector does not match spec.template.metadata.labels",
        ),
        (
            "belowmin",
            "ReplicasOutOfBounds",
            "spec.replicas 1 is below spec.autoscaling.minReplicas 2",
        ),
        (
            "web",
            "ReplicasOutOfBounds",
            "spec.replicas 1 is below spec.autoscaling.minReplicas 2",
        ),
    ] {
        eventually(
            &format!("{name}: condition Valid=False {reason}"),
            10,
            || async {
                h.deployment(name).await.status.is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Valid"
                            && c.status == berth::api::common::ConditionStatus::False
                            && c.reason == reason
                            && c.message.contains(message)
                    })
                })
            },
        )
        .await;
        // Events are written behind the decision (as client-go's recorder does), so they may trail the condition.
        eventually(&format!("{name}: an Event says why"), 10, || async {
            h.events_of(name)
                .await
                .iter()
                .any(|(r, m)| r == reason && m.contains(message))
        })
        .await;
    }
    // Nothing moves meanwhile: no MachineSet for the invalid ones, no launch, no deletion.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let machines = h.machines().await;
    let names: Vec<String> = machines
        .iter()
        .map(|m| m.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, web_machines, "no Machine created or deleted");
    assert!(machines
        .iter()
        .all(|m| m.metadata.deletion_timestamp.is_none()));
    assert_eq!(h.machine_sets().await.len(), 1, "only web's MachineSet");
    assert_eq!(h.launches(), 2);

    // Fixing the input moves at once: the missing class appears (the deployment watches classes, no resync wait),
    // and web's replicas come back within bounds.
    h.create_class("gpu", json!({})).await;
    h.scale("web", 2).await;
    eventually("noclass's 2 machines running", 15, || async {
        h.machines()
            .await
            .iter()
            .filter(|m| m.spec.class_ref.name == "gpu" && is_running(m))
            .count()
            == 2
    })
    .await;
    eventually("web valid again", 10, || async {
        h.deployment("web").await.status.is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Valid" && c.status == berth::api::common::ConditionStatus::True
            })
        })
    })
    .await;
    assert_eq!(h.running().await, 4);
    h.assert_clean().await;
}
