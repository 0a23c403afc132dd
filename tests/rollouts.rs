//! MachineDeployment rollouts end to end (emulator, simulated cloud, simulated kubelets and binder, berth's three
//! Machine controllers): a RollingUpdate with pods on the old nodes and a PodDisruptionBudget, OnDelete, and pause
//! and resume. Each scenario runs twice, the second time with berth killed (aborted mid-flight) and restarted at its
//! most delicate points; both runs end with the same checks: one launch per Machine, no instance leaked, none
//! terminated twice.

mod machine_harness;

use berth::api::Machine;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use machine_harness::{eventually, is_running, revision_hash, Harness};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const APP: &str = "app";

/// The rollout's invariants, checked every 50 ms until `done` holds: at most `max_instances` instances alive and at
/// least `min_running` Machines Running (neither deleting).
async fn watch_rollout<F, Fut>(
    h: &Harness,
    what: &str,
    seconds: u64,
    max_instances: usize,
    min_running: usize,
    mut done: F,
) where
    F: FnMut(Vec<Machine>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let machines = h.machines().await;
        let live = h.cloud.live_instance_count();
        assert!(
            live <= max_instances,
            "{what}: {live} instances, more than {max_instances}"
        );
        let running = machines.iter().filter(|m| is_running(m)).count();
        assert!(
            running >= min_running,
            "{what}: only {running} Machines Running, fewer than {min_running}"
        );
        if done(machines).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not done after {seconds}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(machines: &[Machine]) -> BTreeSet<String> {
    machines.iter().map(|m| m.name_any()).collect()
}

fn pod(name: Option<&str>, node: Option<&str>, rs_uid: &str) -> Pod {
    let mut metadata = json!({"namespace": "default", "labels": {"app": APP},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": APP, "uid": rs_uid, "controller": true}]});
    match name {
        Some(n) => metadata["name"] = json!(n),
        None => metadata["generateName"] = json!(format!("{APP}-")),
    }
    let mut spec = json!({"containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}),
    )
    .unwrap()
}

fn counts_as_available(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Two pods of a ReplicaSet, both on `node`, guarded by a PodDisruptionBudget of minAvailable 1. The emulator runs
/// no ReplicaSet controller, so the returned task stands in for it: it recreates evicted pods (unbound; the binder
/// places them) so that two exist at all times.
async fn pods_under_a_budget(h: &Harness, node: &str) -> tokio::task::JoinHandle<()> {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": APP, "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": APP}},
                 "template": {"metadata": {"labels": {"app": APP}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}
    }))
    .unwrap();
    let rs = Api::<ReplicaSet>::namespaced(h.client.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let rs_uid = rs.uid().unwrap();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": APP, "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": APP}}}
    }))
    .unwrap();
    Api::<PodDisruptionBudget>::namespaced(h.client.clone(), "default")
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    for name in ["app-a", "app-b"] {
        pods.create(
            &PostParams::default(),
            &pod(Some(name), Some(node), &rs_uid),
        )
        .await
        .unwrap();
    }
    eventually("both pods Running", 10, || async {
        app_pods(h)
            .await
            .iter()
            .filter(|p| counts_as_available(p))
            .count()
            == 2
    })
    .await;
    tokio::spawn(async move {
        loop {
            let live = pods
                .list(&ListParams::default().labels(&format!("app={APP}")))
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .count()
                })
                .unwrap_or(2);
            for _ in live..2 {
                let _ = pods
                    .create(&PostParams::default(), &pod(None, None, &rs_uid))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn app_pods(h: &Harness) -> Vec<Pod> {
    Api::<Pod>::namespaced(h.client.clone(), "default")
        .list(&ListParams::default().labels(&format!("app={APP}")))
        .await
        .unwrap()
        .items
}

/// Samples, every 20 ms, how many of the budget's pods run; keeps the fewest seen.
fn sample_available_pods(h: &Harness, fewest: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "default");
    tokio::spawn(async move {
        loop {
            if let Ok(list) = pods
                .list(&ListParams::default().labels(&format!("app={APP}")))
                .await
            {
                fewest.fetch_min(
                    list.items.iter().filter(|p| counts_as_available(p)).count(),
                    Ordering::SeqCst,
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// A template change rolls out with maxSurge 2 / maxUnavailable 0 while two pods of a ReplicaSet run on one old
/// node under a PodDisruptionBudget of minAvailable 1. The drain evicts through the eviction API: the first pod
/// goes, the second is refused (429) until the first one's replacement runs elsewhere, and is evicted on a retry.
async fn rollout_with_pods_under_a_budget(restart: bool) {
    let mut h = Harness::new("15m").await;
    h.create_deployment("web", 3).await;
    eventually("3 running machines", 30, || async {
        h.running().await == 3
    })
    .await;
    let machines = h.machines().await;
    let old = names(&machines);
    let node = machines[0]
        .status
        .as_ref()
        .unwrap()
        .node_ref
        .as_ref()
        .unwrap()
        .name
        .clone();
    let replica_set = pods_under_a_budget(&h, &node).await;
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let sampler = sample_available_pods(&h, fewest.clone());

    h.patch_deployment(
        "web",
        json!({"spec": {"template": {"spec": {"nodeLabels": {"team": "b"}}}}}),
    )
    .await;
    if restart {
        // Mid-surge: the first new instances are launching.
        watch_rollout(&h, "surge begins", 30, 5, 3, |_| async { h.launches() > 3 }).await;
        h.restart_controllers(Duration::from_millis(300)).await;
        // Mid-drain: an old Machine is being deleted (its Node draining or its instance terminating). Waiting for the
        // narrower moment its Node still holds a pod of the budget was missed between two polls once drains got fast.
        watch_rollout(&h, "a drain in progress", 30, 5, 3, |machines| {
            let draining = machines.iter().any(|m| {
                m.metadata.deletion_timestamp.is_some()
                    && m.status.as_ref().is_some_and(|s| s.node_ref.is_some())
            });
            async move { draining }
        })
        .await;
        h.restart_controllers(Duration::from_millis(300)).await;
    }
    watch_rollout(&h, "rollout", 60, 5, 3, |machines| {
        let h = &h;
        let all_new = machines.len() == 3
            && machines
                .iter()
                .all(|m| !old.contains(&m.name_any()) && is_running(m));
        async move { all_new && h.cloud.live_instance_count() == 3 }
    })
    .await;
    eventually("both pods running on new nodes", 10, || async {
        let nodes: BTreeSet<String> = h
            .machines()
            .await
            .iter()
            .filter_map(|m| m.status.as_ref()?.node_ref.as_ref().map(|n| n.name.clone()))
            .collect();
        let pods = app_pods(&h).await;
        pods.len() == 2
            && pods.iter().all(|p| {
                counts_as_available(p)
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| nodes.contains(n))
            })
    })
    .await;
    sampler.abort();
    replica_set.abort();
    assert!(
        fewest.load(Ordering::SeqCst) >= 1,
        "the PodDisruptionBudget was violated: {} pods ran at one point",
        fewest.load(Ordering::SeqCst)
    );
    let budget = Api::<PodDisruptionBudget>::namespaced(h.client.clone(), "default")
        .get(APP)
        .await
        .unwrap();
    assert_eq!(
        budget.status.map(|s| s.expected_pods),
        Some(2),
        "the drain went through the eviction API, which recorded the budget"
    );
    assert!(
        h.nodes()
            .await
            .iter()
            .all(|n| n.metadata.labels.as_ref().unwrap()["team"] == "b"),
        "every node is of the new template"
    );
    eventually("status shows the rollout complete", 10, || async {
        h.deployment("web").await.status.is_some_and(|s| {
            s.updated_replicas == 3
                && s.available_replicas == 3
                && s.replicas == 3
                && s.phase.as_deref() == Some("Running")
        })
    })
    .await;
    assert_eq!(h.deployment("web").await.status.unwrap().revision, Some(2));
    assert_eq!(h.launches(), 6, "3 old and 3 new, none twice");
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_honours_a_pod_disruption_budget() {
    rollout_with_pods_under_a_budget(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_honours_a_pod_disruption_budget_across_restarts() {
    rollout_with_pods_under_a_budget(true).await;
}

/// Checks every 50 ms for `period` that `check` holds of the Machines.
async fn holds_for<F>(h: &Harness, what: &str, period: Duration, check: F)
where
    F: Fn(&[Machine]) -> bool,
{
    let until = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < until {
        let machines = h.machines().await;
        assert!(check(&machines), "{what}: {:?}", names(&machines));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// OnDelete: a template change launches nothing; deleting an old Machine by hand brings exactly one Machine of the
/// new revision, and the old revision never replaces it.
async fn on_delete(restart: bool) {
    let mut h = Harness::new("15m").await;
    h.create_deployment_with(
        "od",
        json!({"replicas": 2, "strategy": {"type": "OnDelete", "rollingUpdate": null}}),
    )
    .await;
    eventually("2 running machines", 30, || async {
        h.running().await == 2
    })
    .await;
    let old_hash = revision_hash(&h.machines().await[0]);
    let old = names(&h.machines().await);
    h.patch_deployment(
        "od",
        json!({"spec": {"template": {"spec": {"nodeLabels": {"team": "b"}}}}}),
    )
    .await;
    eventually("the new revision's MachineSet", 10, || async {
        h.machine_sets().await.len() == 2
    })
    .await;
    if restart {
        h.restart_controllers(Duration::from_millis(300)).await;
    }
    holds_for(
        &h,
        "a template change under OnDelete launches nothing",
        Duration::from_secs(1),
        |machines| names(machines) == old,
    )
    .await;
    assert_eq!(h.launches(), 2);

    let victim = old.iter().next().unwrap().clone();
    h.delete_machine(&victim).await;
    if restart {
        // While the victim drains and terminates, and its replacement is being decided.
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.restart_controllers(Duration::from_millis(300)).await;
    }
    let only_the_survivor_is_old = |machines: &[Machine]| {
        let old_now: Vec<&Machine> = machines
            .iter()
            .filter(|m| revision_hash(m) == old_hash)
            .collect();
        old_now.iter().all(|m| old.contains(&m.name_any()))
            && machines
                .iter()
                .filter(|m| revision_hash(m) != old_hash)
                .count()
                <= 1
    };
    // The replacement comes once the deleted Machine is gone: never more than 2 instances.
    watch_rollout(&h, "one replacement", 30, 2, 1, |machines| {
        assert!(
            only_the_survivor_is_old(&machines),
            "the old revision replaced a Machine, or more than one new one came: {:?}",
            names(&machines)
        );
        let done = machines.len() == 2
            && !machines.iter().any(|m| m.name_any() == victim)
            && machines
                .iter()
                .filter(|m| revision_hash(m) != old_hash && is_running(m))
                .count()
                == 1;
        async move { done }
    })
    .await;
    holds_for(
        &h,
        "exactly one replacement, of the new revision",
        Duration::from_secs(1),
        |machines| {
            machines.len() == 2
                && only_the_survivor_is_old(machines)
                && machines.iter().all(is_running)
        },
    )
    .await;
    assert_eq!(h.launches(), 3, "2 old and 1 replacement");
    assert_eq!(h.cloud.live_instance_count(), 2);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_replaces_only_what_is_deleted_by_hand() {
    on_delete(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_replaces_only_what_is_deleted_by_hand_across_restarts() {
    on_delete(true).await;
}

/// Paused: a template change creates nothing (no MachineSet, no Machine, no launch), even across a restart;
/// resuming rolls it out within maxSurge 2 / maxUnavailable 0.
async fn pause_and_resume(restart: bool) {
    let mut h = Harness::new("15m").await;
    h.create_deployment("pz", 2).await;
    eventually("2 running machines", 30, || async {
        h.running().await == 2
    })
    .await;
    let old = names(&h.machines().await);
    h.patch_deployment("pz", json!({"spec": {"paused": true}}))
        .await;
    h.patch_deployment(
        "pz",
        json!({"spec": {"template": {"spec": {"nodeLabels": {"team": "b"}}}}}),
    )
    .await;
    eventually("the deployment reports Paused", 10, || async {
        let md = h.deployment("pz").await;
        md.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Paused") && s.observed_generation == md.metadata.generation
        })
    })
    .await;
    if restart {
        h.restart_controllers(Duration::from_millis(300)).await;
    }
    holds_for(
        &h,
        "paused: nothing launches",
        Duration::from_secs(1),
        |machines| names(machines) == old,
    )
    .await;
    assert_eq!(
        h.machine_sets().await.len(),
        1,
        "no MachineSet of the new template while paused"
    );
    assert_eq!(
        h.deployment("pz").await.status.unwrap().revision,
        Some(1),
        "a change waiting for resume is not a revision yet"
    );
    assert_eq!(h.launches(), 2);

    h.patch_deployment("pz", json!({"spec": {"paused": false}}))
        .await;
    if restart {
        watch_rollout(&h, "resume begins", 30, 4, 2, |_| async {
            h.launches() > 2
        })
        .await;
        h.restart_controllers(Duration::from_millis(300)).await;
    }
    watch_rollout(&h, "rollout after resume", 30, 4, 2, |machines| {
        let h = &h;
        let done = machines.len() == 2
            && machines
                .iter()
                .all(|m| !old.contains(&m.name_any()) && is_running(m));
        async move { done && h.cloud.live_instance_count() == 2 }
    })
    .await;
    eventually("revision 2 complete", 10, || async {
        h.deployment("pz")
            .await
            .status
            .is_some_and(|s| s.revision == Some(2) && s.phase.as_deref() == Some("Running"))
    })
    .await;
    assert_eq!(h.launches(), 4);
    h.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_template_change_and_resume_rolls_it_out() {
    pause_and_resume(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_template_change_and_resume_rolls_it_out_across_restarts() {
    pause_and_resume(true).await;
}
