//! Health checks end to end: berth's MachineDeployment, MachineSet, Machine and health controllers against the
//! emulator and the simulated cloud. Node conditions are written through the API as kube-controller-manager's node
//! lifecycle controller (Unknown) or a kubelet (False) writes them. Timeouts are seconds, not minutes, so the tests
//! run in wall time.

mod machine_harness;

use berth::api::common::{find_condition, ConditionStatus};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use machine_harness::{eventually, Harness};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const HEALTH_CHECK: &str = r#"{"unhealthyNodeConditions": [
    {"type": "Ready", "status": "False", "timeout": "2s"},
    {"type": "Ready", "status": "Unknown", "timeout": "2s"}],
  "nodeMissingTimeout": "2s", "drainTimeout": "5s"}"#;

async fn fleet(replicas: u32) -> Harness {
    let h = Harness::new("10m").await;
    let health: serde_json::Value = serde_json::from_str(HEALTH_CHECK).unwrap();
    h.create_deployment_with(
        "workers",
        json!({"replicas": replicas, "healthCheck": health}),
    )
    .await;
    eventually("the fleet runs", 60, || async {
        h.running().await == replicas as usize
    })
    .await;
    h
}

/// Sets a Node's Ready condition as the node lifecycle controller (Unknown) or the kubelet (False, True) would,
/// changed now.
async fn set_ready(h: &Harness, node: &str, status: &str) {
    set_ready_at(h, node, status, chrono::Utc::now()).await
}

/// Sets a Node's Ready condition, changed at `at` (nodes that fail together carry the same moment).
async fn set_ready_at(h: &Harness, node: &str, status: &str, at: chrono::DateTime<chrono::Utc>) {
    let (reason, message) = match status {
        "Unknown" => ("NodeStatusUnknown", "Kubelet stopped posting node status."),
        "False" => ("KubeletNotReady", "container runtime is down"),
        _ => ("KubeletReady", "kubelet is posting ready status"),
    };
    let nodes: Api<Node> = Api::all(h.client.clone());
    let mut n = nodes.get_status(node).await.unwrap();
    let conditions = n
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .unwrap();
    let ready = conditions.iter_mut().find(|c| c.type_ == "Ready").unwrap();
    ready.status = status.into();
    ready.reason = Some(reason.into());
    ready.message = Some(message.into());
    ready.last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        berth::clock::to_k8s(at),
    ));
    nodes
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .unwrap();
}

async fn machine_names(h: &Harness) -> BTreeSet<String> {
    h.machines().await.iter().map(|m| m.name_any()).collect()
}

async fn remediation_allowed(h: &Harness) -> Option<(ConditionStatus, String, String)> {
    let md = h.deployment("workers").await;
    let status = md.status?;
    find_condition(&status.conditions, "RemediationAllowed")
        .map(|c| (c.status, c.reason.clone(), c.message.clone()))
}

async fn node_names(h: &Harness) -> Vec<String> {
    h.nodes().await.iter().map(|n| n.name_any()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubelet_silent_replaces_nothing_and_says_why() {
    let h = fleet(5).await;
    let before = machine_names(&h).await;
    let launches = h.launches();
    for node in node_names(&h).await {
        set_ready(&h, &node, "Unknown").await;
    }
    eventually("RemediationAllowed=False, heartbeats stale", 20, || async {
        remediation_allowed(&h)
            .await
            .is_some_and(|(s, reason, message)| {
                s == ConditionStatus::False
                    && reason == "HeartbeatsStale"
                    && message.contains("5 of 5 nodes stopped heartbeating")
            })
    })
    .await;
    // Four times every timeout of the health check: nothing is failed, deleted or terminated.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(machine_names(&h).await, before);
    assert!(h
        .machines()
        .await
        .iter()
        .all(|m| m.metadata.deletion_timestamp.is_none()
            && m.status
                .as_ref()
                .is_some_and(|s| s.phase != berth::api::MachinePhase::Failed)));
    assert_eq!(h.launches(), launches, "nothing launched");
    assert!(h
        .cloud
        .calls()
        .iter()
        .all(|c| c.action != berth::cloud::action::Action::TerminateInstances));
    // Heartbeats resume: the hold lifts and still nothing happens.
    for node in node_names(&h).await {
        set_ready(&h, &node, "True").await;
    }
    eventually("RemediationAllowed=True", 20, || async {
        remediation_allowed(&h)
            .await
            .is_some_and(|(s, _, _)| s == ConditionStatus::True)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(machine_names(&h).await, before);
    assert_eq!(h.launches(), launches);
    assert_eq!(h.running().await, 5);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_not_ready_node_is_drained_terminated_and_replaced_once() {
    let h = fleet(5).await;
    let victim = h.machines().await.into_iter().next().expect("a machine");
    let victim_name = victim.name_any();
    let node = victim
        .status
        .as_ref()
        .unwrap()
        .node_ref
        .clone()
        .unwrap()
        .name;
    set_ready(&h, &node, "False").await;
    eventually("the unhealthy Machine is replaced", 60, || async {
        let names = machine_names(&h).await;
        !names.contains(&victim_name) && h.running().await == 5
    })
    .await;
    let events = h.events_of(&victim_name).await;
    assert!(
        events
            .iter()
            .any(|(reason, message)| reason == "Remediating" && message.contains("Ready=False")),
        "{events:?}"
    );
    let group_events: Vec<_> = h
        .events_of("workers")
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "MachineRemediated")
        .collect();
    assert_eq!(group_events.len(), 1, "{group_events:?}");
    // Exactly one replacement: six launches in all, and the fleet stays at five for a while.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(h.launches(), 6);
    assert_eq!(h.machines().await.len(), 5);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_not_ready_with_forty_percent_replaces_none() {
    let h = fleet(5).await;
    let before = machine_names(&h).await;
    let nodes = node_names(&h).await;
    // Failing together: one transition time, so no pass can see one of them past its timeout before the others.
    let at = chrono::Utc::now();
    for node in &nodes[..3] {
        set_ready_at(&h, node, "False", at).await;
    }
    eventually(
        "RemediationAllowed=False, too many unhealthy",
        20,
        || async {
            remediation_allowed(&h)
                .await
                .is_some_and(|(s, reason, message)| {
                    s == ConditionStatus::False
                        && reason == "TooManyUnhealthy"
                        && message.contains("3 of 5 Machines are unhealthy")
                })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(machine_names(&h).await, before);
    assert_eq!(h.launches(), 5);
    let held = h
        .events_of("workers")
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "RemediationHeld")
        .count();
    assert_eq!(held, 1, "the hold is announced once");
    // Two recover: one unhealthy of five is within 40%, and it is replaced. The two recoveries are two writes, and
    // a pass between them rightly sees two of five unhealthy, within 40%, and may take the second of them too; so
    // what is asserted is that the first to recover is kept, the one that never did is replaced, and the group
    // ends healthy with one or two replacements.
    for node in &nodes[..2] {
        set_ready(&h, node, "True").await;
    }
    eventually("the last unhealthy Machine is replaced", 60, || async {
        let nodes_now = node_names(&h).await;
        (h.launches() == 6 || h.launches() == 7)
            && h.running().await == 5
            && !nodes_now.contains(&nodes[2])
    })
    .await;
    assert!(
        node_names(&h).await.contains(&nodes[0]),
        "the node that recovered first was kept"
    );
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_health_check_holds_remediation_and_names_the_field() {
    let h = Harness::new("10m").await;
    // A real API server refuses this through the CRD's CEL rule; the emulator does not evaluate CEL, so berth's own
    // check is what is seen here.
    h.create_deployment_with(
        "workers",
        json!({"replicas": 1, "healthCheck": {"maxUnhealthy": "140%"}}),
    )
    .await;
    eventually("RemediationAllowed=False naming the field", 30, || async {
        remediation_allowed(&h)
            .await
            .is_some_and(|(s, reason, message)| {
                s == ConditionStatus::False
                    && reason == "InvalidHealthCheck"
                    && message.contains("spec.healthCheck.maxUnhealthy")
            })
    })
    .await;
    // A timeout that does not parse is refused by the schema, with the field named.
    let err = serde_json::from_value::<berth::api::MachineDeployment>(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"group": "bad"}},
                 "template": {"metadata": {"labels": {"group": "bad"}}, "spec": {"classRef": {"name": "general"}}},
                 "healthCheck": {"nodeMissingTimeout": "five minutes"}}
    }))
    .map(|md| async move {
        h.deployments()
            .create(&Default::default(), &md)
            .await
            .unwrap_err()
            .to_string()
    })
    .unwrap()
    .await;
    assert!(err.contains("healthCheck.nodeMissingTimeout"), "{err}");
}
