//! B4 `berth bench footprint`: berth's memory and its time to a first decision in a large cluster.
//!
//! The emulator, loaded with `nodes` Ready nodes and `pods` running pods spread over them (plus berth's CRDs, a
//! Cluster, a MachineClass and a MachineDeployment, and a few pods kube-scheduler marked Unschedulable), serves
//! its API on a local socket; `berth run --dry-run` runs as a child process against it, exactly as in a cluster, so
//! its resident memory is its own. Measured from the child's start: the time until `/readyz` answers (its caches
//! have synced) and its resident memory then, and the time until its first scale-up decision (the
//! `TriggeredScaleUp` Event on a pending pod), with its peak resident memory by then.

use super::reaction::{install_berth_objects, CLUSTER};
use crate::emulator::store::WriteOptions;
use crate::emulator::{server, Emulator};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pending pods that need a scale-up: the first decision is about them.
const PENDING: usize = 20;
/// How long berth may take to sync and decide before the run is called failed.
const DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum FootprintError {
    #[error("setting up the cluster: {0}")]
    Setup(String),
    #[error("starting {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("berth exited before {stage} ({status}); its log: {log}")]
    Exited {
        stage: &'static str,
        status: String,
        log: String,
    },
    #[error("berth did not reach {stage} within {seconds} s; its log: {log}")]
    Timeout {
        stage: &'static str,
        seconds: u64,
        log: String,
    },
    #[error("a size needs nodes > 0 and pods >= nodes, got {nodes} nodes and {pods} pods")]
    Size { nodes: usize, pods: usize },
}

impl FootprintError {
    pub fn category(&self) -> &'static str {
        match self {
            FootprintError::Setup(_) => "setup",
            FootprintError::Spawn { .. } => "spawn",
            FootprintError::Exited { .. } => "exited",
            FootprintError::Timeout { .. } => "timeout",
            FootprintError::Size { .. } => "size",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FootprintReport {
    pub nodes: usize,
    pub pods: usize,
    /// Start to `/readyz` (every cache synced).
    pub sync_seconds: f64,
    /// Resident memory when the caches had synced.
    pub rss_mib: f64,
    /// Start to the first `TriggeredScaleUp` Event.
    pub first_decision_seconds: f64,
    /// Peak resident memory (VmHWM) by the first decision.
    pub peak_rss_mib: f64,
}

/// The sizes BENCHMARKS.md names: 5,000 nodes and 100,000 pods, then 10,000 and 200,000.
pub const DEFAULT_SIZES: [(usize, usize); 2] = [(5_000, 100_000), (10_000, 200_000)];

/// Runs one size with `berth` (the path of berth's binary) as the child.
pub async fn measure(
    berth: &Path,
    nodes: usize,
    pods: usize,
) -> Result<FootprintReport, FootprintError> {
    if nodes == 0 || pods < nodes {
        return Err(FootprintError::Size { nodes, pods });
    }
    let setup = |e: &dyn std::fmt::Display| FootprintError::Setup(e.to_string());
    let emulator = Emulator::new();
    let client = emulator.client();
    install_berth_objects(&client)
        .await
        .map_err(|e| setup(&e))?;
    load_cluster(&emulator, nodes, pods).map_err(|e| setup(&e))?;
    create_pending(&client).await.map_err(|e| setup(&e))?;
    let api = server::serve(emulator.clone(), "127.0.0.1:0".parse().expect("an address"))
        .await
        .map_err(|e| setup(&e))?;
    let scratch = std::env::temp_dir().join(format!("berth-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| setup(&e))?;
    let kubeconfig = scratch.join("kubeconfig");
    std::fs::write(&kubeconfig, server::kubeconfig_yaml(&api.url())).map_err(|e| setup(&e))?;
    let ops = free_local_address().map_err(|e| setup(&e))?;
    let log = scratch.join("berth.log");

    let started = Instant::now();
    let mut child = Berth::start(berth, &kubeconfig, &ops, &log)?;
    let result = async {
        child
            .wait_for("its caches to sync", started, || ready(&ops))
            .await?;
        let sync_seconds = started.elapsed().as_secs_f64();
        let rss_mib = child.memory_mib("VmRSS:");
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        child
            .wait_for("a scale-up decision", started, || decided(&events))
            .await?;
        Ok(FootprintReport {
            nodes,
            pods,
            sync_seconds,
            rss_mib,
            first_decision_seconds: started.elapsed().as_secs_f64(),
            peak_rss_mib: child.memory_mib("VmHWM:"),
        })
    }
    .await;
    child.stop();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// berth as a child process; killed when dropped.
struct Berth {
    process: Child,
    log: PathBuf,
}

impl Berth {
    fn start(
        exe: &Path,
        kubeconfig: &Path,
        ops: &str,
        log: &Path,
    ) -> Result<Berth, FootprintError> {
        let spawn = |source| FootprintError::Spawn {
            exe: exe.display().to_string(),
            source,
        };
        let log_file = std::fs::File::create(log).map_err(spawn)?;
        let process = Command::new(exe)
            .args([
                "run",
                "--dry-run",
                "--log",
                "warn",
                "--cluster-name",
                CLUSTER,
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--metrics-address", ops])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(spawn)?;
        Ok(Berth {
            process,
            log: log.to_path_buf(),
        })
    }

    /// Polls `done` every 20 ms until it holds, failing if berth exits or the deadline passes.
    async fn wait_for<F: std::future::Future<Output = bool>>(
        &mut self,
        stage: &'static str,
        started: Instant,
        mut done: impl FnMut() -> F,
    ) -> Result<(), FootprintError> {
        loop {
            if done().await {
                return Ok(());
            }
            if let Ok(Some(status)) = self.process.try_wait() {
                return Err(FootprintError::Exited {
                    stage,
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if started.elapsed() > DEADLINE {
                return Err(FootprintError::Timeout {
                    stage,
                    seconds: DEADLINE.as_secs(),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn memory_mib(&self, field: &str) -> f64 {
        memory_mib(&self.process.id().to_string(), field)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A memory figure of `/proc/PROCESS/status` (`VmRSS:`, `VmHWM:`) in MiB, for a pid or `self`; 0 where /proc has
/// none.
pub fn memory_mib(process: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A local address free now, for berth's operations endpoint.
fn free_local_address() -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Whether berth's `/readyz` answers 200.
async fn ready(address: &str) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Ok(true))
    )
}

/// Whether berth has published its first `TriggeredScaleUp` Event (a list of the few Events, in-process).
async fn decided(events: &Api<Event>) -> bool {
    events.list(&ListParams::default()).await.is_ok_and(|l| {
        l.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TriggeredScaleUp"))
    })
}

/// Writes the nodes and their running pods straight into the store (the client would spend minutes on 200,000
/// creates, and berth meets them as a long-running cluster, not being created).
fn load_cluster(emulator: &Emulator, nodes: usize, pods: usize) -> Result<(), String> {
    let store = emulator.store();
    let nodes_type = store
        .resource_type("", "nodes")
        .ok_or("no nodes resource")?;
    let pods_type = store.resource_type("", "pods").ok_or("no pods resource")?;
    let options = WriteOptions {
        field_manager: "bench".into(),
        ..Default::default()
    };
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    for i in 0..nodes {
        let (name, zone) = (format!("resident-{i:05}"), zones[i % 3]);
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m6i.2xlarge"}},
            "spec": {"providerID": format!("aws:///{zone}/i-{i:017x}")},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "58"},
                "allocatable": {"cpu": "7910m", "memory": "30Gi", "pods": "58"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
        store
            .create(&nodes_type, "", node, &options)
            .map_err(|e| e.to_string())?;
    }
    // Requests that fill each node's cpu to about 90%, so the pending pods need new machines.
    let per_node = pods.div_ceil(nodes);
    let cpu_millis = 7_100 / per_node.max(1);
    for i in 0..pods {
        let app = format!("app-{}", i % 500);
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{app}-{i:06}"), "labels": {"app": app, "pod-template-hash": "5d8f7c9b4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5d8f7c9b4"),
                    "uid": format!("rs-{}", i % 500), "controller": true}]},
            "spec": {"nodeName": format!("resident-{:05}", i % nodes), "containers": [{"name": "app",
                "image": "registry.example/app:1.2.3",
                "resources": {"requests": {"cpu": format!("{cpu_millis}m"), "memory": "512Mi"}, "limits": {"memory": "512Mi"}}}]},
            "status": {"phase": "Running"}});
        store
            .create(&pods_type, "default", pod, &options)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Pods of 2 cpu that fit on no resident node, marked Unschedulable as kube-scheduler would.
async fn create_pending(client: &kube::Client) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..PENDING {
        let name = format!("pending-{i}");
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "pending"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "pending", "uid": "rs-pending", "controller": true}]},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}}))
        .expect("a static Pod");
        pods.create(&PostParams::default(), &pod).await?;
        let status: Value = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu."}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(())
}

/// `berth bench footprint`: the table, then the JSON line. `sizes` are (nodes, pods).
pub fn main(sizes: &[(usize, usize)]) -> Result<Vec<FootprintReport>, FootprintError> {
    let berth = std::env::current_exe().map_err(|e| FootprintError::Setup(e.to_string()))?;
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| FootprintError::Setup(e.to_string()))?;
    println!(
        "{:>8} {:>8} {:>10} {:>9} {:>12} {:>10}",
        "nodes", "pods", "sync s", "rss MiB", "decision s", "peak MiB"
    );
    let mut reports = Vec::new();
    for &(nodes, pods) in sizes {
        let r = runtime.block_on(measure(&berth, nodes, pods))?;
        println!(
            "{:>8} {:>8} {:>10.2} {:>9.0} {:>12.2} {:>10.0}",
            r.nodes, r.pods, r.sync_seconds, r.rss_mib, r.first_decision_seconds, r.peak_rss_mib
        );
        reports.push(r);
    }
    let results: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({"nodes": r.nodes, "pods": r.pods, "rss_mib": r.rss_mib.round(),
            "sync_seconds": (r.sync_seconds * 100.0).round() / 100.0,
            "first_decision_seconds": (r.first_decision_seconds * 100.0).round() / 100.0,
            "peak_rss_mib": r.peak_rss_mib.round()})
        })
        .collect();
    println!("{}", json!({"bench": "footprint", "results": results}));
    Ok(reports)
}
