//! berth's metrics with a real Prometheus: `promtool check metrics` accepts what `berth run` serves, and every
//! dashboard query and alert expression is valid PromQL that Prometheus evaluates against a scrape of berth.
//! Prometheus and promtool come from Debian's `prometheus` package (scripts/test.sh installs it).

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Prometheus answers chunked; berth does not. Undo chunking if present.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            joined.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        return Some(joined);
    }
    Some(body.to_string())
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Dashboard variables replaced as Grafana would for "All" and a 1m interval.
fn instantiate(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$group", ".*")
}

/// One query of one dashboard panel, its variables instantiated.
struct PanelQuery {
    dashboard: String,
    panel: String,
    expr: String,
}

/// Every panel query of every dashboard in dashboards/.
fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("{}/dashboards", env!("CARGO_MANIFEST_DIR"))).unwrap() {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for panel in d["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    dashboard: d["title"].to_string(),
                    panel: panel["title"].to_string(),
                    expr: instantiate(t["expr"].as_str().unwrap()),
                });
            }
        }
    }
    out
}

/// A real Prometheus (Debian's package) scraping berth at `berth_addr` every second; killed when dropped.
struct Prometheus {
    _process: Killed,
    _data: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    fn scraping(berth_addr: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: berth\n    static_configs: [{{targets: ['{berth_addr}']}}]\n")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let process = Killed(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        Prometheus {
            _process: process,
            _data: dir,
            addr,
        }
    }

    /// An instant query's JSON answer (retried until Prometheus answers).
    fn query(&self, q: &str) -> Value {
        let body = wait_for("prometheus to answer", Duration::from_secs(30), || {
            http_get(&self.addr, &format!("/api/v1/query?query={}", encode(q)))
        });
        serde_json::from_str(&body).unwrap()
    }
}

#[test]
fn promtool_accepts_metrics_and_prometheus_evaluates_every_query() {
    if !kubectl_available("promtool_accepts_metrics_and_prometheus_evaluates_every_query") {
        return;
    }
    for tool in ["prometheus", "promtool"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is not installed: run scripts/test.sh"
        );
    }
    let emu = start_emulator();
    let kc = emu.kubeconfig.clone();
    let crds = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("crds")
        .output()
        .unwrap()
        .stdout;
    kubectl_ok(
        &kc,
        &["apply", "-f", "-"],
        Some(&String::from_utf8(crds).unwrap()),
    );

    let berth_addr = format!("127.0.0.1:{}", free_port());
    let _berth = Killed(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["run", "--metrics-address", &berth_addr])
            .arg("--kubeconfig")
            .arg(&kc)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let exposition = wait_for("berth /metrics", Duration::from_secs(20), || {
        http_get(&berth_addr, "/metrics")
    });

    // promtool reads the exposition on stdin.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping berth every second.
    let prometheus = Prometheus::scraping(&berth_addr);
    let query = |q: &str| prometheus.query(q);
    wait_for("a scrape of berth", Duration::from_secs(30), || {
        let v = query("berth_build_info");
        v["data"]["result"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|_| ())
    });
    assert_eq!(
        query("max(berth_leader)")["data"]["result"][0]["value"][1],
        "1",
        "berth without --leader-elect leads"
    );

    let mut checked = 0;
    for p in panel_queries() {
        let v = query(&p.expr);
        assert_eq!(v["status"], "success", "panel {}: {}: {v}", p.panel, p.expr);
        checked += 1;
    }
    // The alert expressions of the chart's PrometheusRule.
    let rules = std::fs::read_to_string(format!(
        "{}/charts/berth/templates/prometheusrule.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
    {
        let v = query(line);
        assert_eq!(v["status"], "success", "alert {line}: {v}");
        checked += 1;
    }
    assert!(checked > 30, "only {checked} queries checked");
}

/// Every dashboard panel, run by a real Prometheus that scraped berth through a burst: berth's controllers as
/// `berth run` starts them, over the in-process emulator (its binder as kube-scheduler), simulated kubelets and the
/// simulated cloud, with a throttled and a failing launch call. The burst is followed by a
/// rollout (a new node label: every Machine replaced, every node drained) and a scale-down of the emptied nodes,
/// so each panel has something real to show, and each must: an empty result is a panel a user would see blank.
#[test]
fn every_dashboard_panel_shows_data_after_a_burst_a_rollout_and_a_scale_down() {
    use berth::cloud::action::Action;
    use berth::cloud::sim::{Fault, SimConfig, SimulatedCloud};
    use berth::telemetry::server::{serve, OpsState};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use std::sync::Arc;

    for tool in ["prometheus", "promtool"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is not installed: run scripts/test.sh"
        );
    }
    // BERTH_TEST_LOG=berth=debug shows what the controllers did when this test fails.
    let _ = berth::telemetry::logging::init(
        berth::telemetry::logging::LogFormat::Text,
        &std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = berth::telemetry::metrics::Metrics::new().unwrap();
    let cloud_metrics = berth::cloud::metrics::CloudMetrics::register(&metrics.registry).unwrap();
    let cluster = "dash";
    let (client, cloud, berth_addr, _ready) = rt.block_on(async {
        let emulator = berth::emulator::Emulator::new();
        let client = emulator.client();
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
        for crd in berth::api::crds() {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        let clock: berth::clock::SharedClock = Arc::new(berth::clock::SystemClock);
        let mut config = SimConfig::bundled("us-east-1", cluster, clock.clone(), cloud_metrics).unwrap();
        config.boot_delay = Duration::from_millis(300);
        // Two tries a call, and twelve failing calls: the burst's n parallel launches spend n on their first tries, so
        // min(12 - n, n) of them (at least one for n up to 11) fail their second try too and count as failed launches,
        // retried by the Machine controller. Launches of one instance type go through RunInstances, of several
        // through CreateFleet.
        config.backoff = berth::cloud::retry::Backoff { max_attempts: 2, base: Duration::from_millis(50), cap: Duration::from_millis(200) };
        let cloud = Arc::new(SimulatedCloud::new(config));
        for action in [Action::RunInstances, Action::CreateFleet] {
            cloud.inject(Fault::Throttle { action }, Some(1));
            cloud.inject(Fault::ServerError { action }, Some(11));
        }
        berth::sim::dataplane::connect(&cloud, emulator.clone());
        berth::emulator::binder::Binder::new(emulator.clone()).spawn(Duration::from_millis(100));
        let objects = serde_json::json!([
            {"apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": cluster},
             "spec": {"clusterName": cluster, "apiServerEndpoint": "https://dash.invalid", "certificateAuthority": "Q0E=", "serviceCidr": "10.100.0.0/16",
                      "scaleDown": {"delayAfterScaleUp": "1s", "unneededTime": "1s", "minNodeAge": "1s"}}},
            {"apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
             "spec": {"image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
                      "instanceRequirements": {"families": ["m7i", "c7i", "r7i"], "vcpu": {"min": 2, "max": 8}},
                      "capacityTypes": ["spot", "on-demand"],
                      "subnets": {"tags": {"berth.dev/discovery": cluster}}, "securityGroups": {"tags": {"berth.dev/discovery": cluster}},
                      "instanceProfile": "node"}},
            {"apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment", "metadata": {"name": "general", "namespace": "default"},
             "spec": {"replicas": 0, "selector": {"matchLabels": {"group": "general"}},
                      "template": {"metadata": {"labels": {"group": "general"}}, "spec": {"classRef": {"name": "general"}}},
                      "autoscaling": {"minReplicas": 0, "maxReplicas": 30}}}
        ]);
        for o in objects.as_array().unwrap() {
            let kind = o["kind"].as_str().unwrap();
            let (group, version) = ("berth.dev", "v1alpha1");
            let plural = if kind.ends_with('s') { format!("{}es", kind.to_lowercase()) } else { format!("{}s", kind.to_lowercase()) };
            let ar = kube::api::ApiResource { group: group.into(), version: version.into(), api_version: format!("{group}/{version}"), kind: kind.into(), plural };
            let api: Api<kube::api::DynamicObject> = match o["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            api.create(&PostParams::default(), &serde_json::from_value(o.clone()).unwrap()).await.unwrap();
        }
        let (ready_tx, ready) = tokio::sync::watch::channel(true);
        let (addr, _server) = serve("127.0.0.1:0", OpsState { metrics: metrics.clone(), ready }, std::future::pending::<()>()).await.unwrap();
        let base = Arc::new(berth::controllers::Context::new(client.clone(), clock, metrics.clone()));
        let controllers = Arc::new(berth::operator::Controllers {
            base,
            cloud: Some(cloud.clone() as Arc<dyn berth::cloud::CloudProvider>),
            cluster_name: cluster.into(),
            catalog: Arc::new(berth::model::aws_catalog::bundled_catalog("us-east-1").unwrap()),
            provisioner: berth::controllers::provisioner::ProvisionerConfig {
                observe: berth::state::snapshot::ObserveSettings { cluster_name: Some(cluster.into()), ..Default::default() },
                ..Default::default()
            },
            disruption: berth::controllers::disruption::DisruptionConfig {
                interval: Duration::from_millis(500),
                validation_delay: Duration::from_millis(300),
                cluster_name: cluster.into(),
                ..Default::default()
            },
            interruption_queue: None,
            dry_run: false,
        });
        tokio::spawn(berth::operator::run_controllers(controllers, std::future::pending::<()>()));
        (client, cloud, addr.to_string(), ready_tx)
    });

    // A real Prometheus scraping berth every second, from before the burst.
    let prometheus = Prometheus::scraping(&berth_addr);
    let query = |q: &str| prometheus.query(q);
    // A scrape of berth before the burst that has the group's series at zero, so the burst is an increase.
    wait_for(
        "a scrape of berth with the group's series",
        Duration::from_secs(30),
        || {
            let v = query("berth_pod_pending_to_scheduled_seconds_count{group=\"general\"}");
            v["data"]["result"]
                .as_array()
                .filter(|r| !r.is_empty())
                .map(|_| ())
        },
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let machines: Api<berth::api::Machine> = Api::namespaced(client.clone(), "default");
    let until = |what: &str, seconds: u64, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let running = || {
        rt.block_on(pods.list(&ListParams::default()))
            .unwrap()
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
    };

    // The burst.
    rt.block_on(async {
        for i in 0..30 {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("web-{i}"), "namespace": "default", "labels": {"app": "web"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-web", "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]}
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
    });
    until("every pod of the burst running", 120, &|| running() == 30);
    let before: Vec<String> = rt
        .block_on(machines.list(&ListParams::default()))
        .unwrap()
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();

    // The rollout: a new node label replaces every Machine; the old nodes are drained (their pods, whose owner
    // does not exist, are not recreated), and the new, empty nodes are scaled down.
    let deployments: Api<berth::api::MachineDeployment> =
        Api::namespaced(client.clone(), "default");
    let change =
        serde_json::json!({"spec": {"template": {"spec": {"nodeLabels": {"rollout": "2"}}}}});
    rt.block_on(deployments.patch("general", &PatchParams::default(), &Patch::Merge(&change)))
        .unwrap();
    until("the old Machines replaced", 120, &|| {
        let now: Vec<String> = rt
            .block_on(machines.list(&ListParams::default()))
            .unwrap()
            .items
            .iter()
            .map(kube::ResourceExt::name_any)
            .collect();
        !now.iter().any(|m| before.contains(m))
    });
    rt.block_on(async {
        for p in pods.list(&ListParams::default()).await.unwrap().items {
            let _ = pods
                .delete(&kube::ResourceExt::name_any(&p), &DeleteParams::default())
                .await;
        }
    });
    until("the empty nodes removed", 120, &|| {
        rt.block_on(machines.list(&ListParams::default()))
            .unwrap()
            .items
            .is_empty()
    });
    assert!(cloud.live_instance_count() == 0, "instances left running");
    // A few more scrapes of the final state.
    std::thread::sleep(Duration::from_secs(4));

    let mut empty = Vec::new();
    let mut checked = 0;
    for p in panel_queries() {
        // Whether the panel drew anything over the run (the last 10 minutes, a point every 2 s), as a user looking
        // at the dashboard after the burst would see it.
        let expr = format!("max_over_time(({})[10m:2s])", p.expr);
        let v = query(&expr);
        assert_eq!(v["status"], "success", "panel {}: {expr}: {v}", p.panel);
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let numbers = result
            .iter()
            .filter(|r| {
                r["value"][1]
                    .as_str()
                    .is_some_and(|x| x.parse::<f64>().is_ok_and(|f| f.is_finite()))
            })
            .count();
        if numbers == 0 {
            empty.push(format!(
                "{} / {}: {expr} -> {}",
                p.dashboard, p.panel, v["data"]["result"]
            ));
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} queries checked");
    assert!(
        empty.is_empty(),
        "panels without data after the burst:\n{}",
        empty.join("\n")
    );
    drop(rt);
}
