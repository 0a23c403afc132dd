//! Benchmark (ignored by default; run in release):
//! `cargo test --release --test emulator_bench -- --ignored --nocapture`
//!
//! Loads 10,000 nodes and 200,000 pods into the emulator, then measures resident memory and the time a
//! kube-runtime reflector takes to list them all (paginated, through the in-process client), plus one
//! unpaginated list over a socket.

use berth::emulator::store::WriteOptions;
use berth::emulator::Emulator;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use std::time::Instant;

/// Divides the sizes (BERTH_BENCH_DIVISOR=20 for a quick smoke run).
fn divisor() -> usize {
    std::env::var("BERTH_BENCH_DIVISOR")
        .ok()
        .and_then(|d| d.parse().ok())
        .filter(|d| *d > 0)
        .unwrap_or(1)
}

fn rss_mib() -> f64 {
    berth::bench::footprint::memory_mib("self", "VmRSS:")
}

async fn reflect<K>(api: Api<K>) -> (usize, std::time::Duration)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let start = Instant::now();
    let (reader, writer) = reflector::store::<K>();
    let task = tokio::spawn(
        reflector(writer, watcher(api, watcher::Config::default()))
            .applied_objects()
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.expect("reflector ready");
    let took = start.elapsed();
    let n = reader.state().len();
    task.abort();
    (n, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn ten_thousand_nodes_two_hundred_thousand_pods() {
    let nodes_total = 10_000 / divisor();
    let pods_total = 200_000 / divisor();
    let rss_start = rss_mib();
    let emu = Emulator::new();
    let store = emu.store().clone();
    let nodes_rt = store.resource_type("", "nodes").unwrap();
    let pods_rt = store.resource_type("", "pods").unwrap();
    let opts = WriteOptions {
        field_manager: "bench".into(),
        ..Default::default()
    };
    let load = Instant::now();
    for i in 0..nodes_total {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i:05}"), "labels": {
            "kubernetes.io/hostname": format!("node-{i:05}"), "topology.kubernetes.io/zone": format!("us-west-2{}", ["a", "b", "c"][i % 3]),
            "node.kubernetes.io/instance-type": "m5.2xlarge", "karpenter.sh/capacity-type": "on-demand"}},
            "spec": {"providerID": format!("aws:///us-west-2a/i-{i:017x}")},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "58"}, "allocatable": {"cpu": "7910m", "memory": "31Gi", "pods": "58"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
        store.create(&nodes_rt, "", node, &opts).unwrap();
    }
    for i in 0..pods_total {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("app-{}-{i:06}", i % 500), "labels": {"app": format!("app-{}", i % 500), "pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{}-5d8f7c9b4", i % 500), "uid": format!("rs-{}", i % 500), "controller": true}]},
            "spec": {"nodeName": format!("node-{:05}", i % nodes_total), "containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}}]}});
        store.create(&pods_rt, "default", pod, &opts).unwrap();
    }
    let load_time = load.elapsed();
    let rss_loaded = rss_mib();
    println!("loaded {nodes_total} nodes and {pods_total} pods in {:.1}s; RSS {:.0} MiB -> {:.0} MiB (+{:.0} MiB)", load_time.as_secs_f64(), rss_start, rss_loaded, rss_loaded - rss_start);

    let client = emu.client();
    let (n, took) = reflect(Api::<Node>::all(client.clone())).await;
    assert_eq!(n, nodes_total);
    println!(
        "reflector (in-process, pages of 500): {n} nodes in {:.2}s",
        took.as_secs_f64()
    );
    let (n, took) = reflect(Api::<Pod>::all(client.clone())).await;
    assert_eq!(n, pods_total);
    println!(
        "reflector (in-process, pages of 500): {n} pods in {:.2}s; RSS now {:.0} MiB",
        took.as_secs_f64(),
        rss_mib()
    );

    let env_server = berth::emulator::server::serve(emu.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = kube::Config::new(env_server.url().parse().unwrap());
    let socket_client = kube::Client::try_from(config).unwrap();
    let start = Instant::now();
    let list = Api::<Pod>::all(socket_client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(list.items.len(), pods_total);
    println!(
        "one unpaginated list over HTTP: {} pods in {:.2}s",
        list.items.len(),
        start.elapsed().as_secs_f64()
    );
    drop(list);
    let (n, took) = reflect(Api::<Pod>::all(socket_client)).await;
    assert_eq!(n, pods_total);
    println!(
        "reflector (HTTP socket, pages of 500): {n} pods in {:.2}s; peak-ish RSS {:.0} MiB",
        took.as_secs_f64(),
        rss_mib()
    );
}
