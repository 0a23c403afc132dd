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
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Prometheus answers chunked; berth does not. Undo chunking if present.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
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
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Dashboard variables replaced as Grafana would for "All" and a 1m interval.
fn instantiate(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$group", ".*")
}

#[test]
fn promtool_accepts_metrics_and_prometheus_evaluates_every_query() {
    if !kubectl_available("promtool_accepts_metrics_and_prometheus_evaluates_every_query") {
        return;
    }
    for tool in ["prometheus", "promtool"] {
        assert!(Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()), "{tool} is not installed: run scripts/test.sh");
    }
    let emu = start_emulator();
    let kc = emu.kubeconfig.clone();
    let crds = Command::new(env!("CARGO_BIN_EXE_berth")).arg("crds").output().unwrap().stdout;
    kubectl_ok(&kc, &["apply", "-f", "-"], Some(&String::from_utf8(crds).unwrap()));

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
    let exposition = wait_for("berth /metrics", Duration::from_secs(20), || http_get(&berth_addr, "/metrics"));

    // promtool reads the exposition on stdin.
    let mut check = Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // A real Prometheus scraping berth every second.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: berth\n    static_configs: [{{targets: ['{berth_addr}']}}]\n")).unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Value {
        let body = wait_for("prometheus to answer", Duration::from_secs(30), || http_get(&prom_addr, &format!("/api/v1/query?query={}", encode(q))));
        serde_json::from_str(&body).unwrap()
    };
    wait_for("a scrape of berth", Duration::from_secs(30), || {
        let v = query("berth_build_info");
        v["data"]["result"].as_array().filter(|r| !r.is_empty()).map(|_| ())
    });
    assert_eq!(query("max(berth_leader)")["data"]["result"][0]["value"][1], "1", "berth without --leader-elect leads");

    let dashboards = std::fs::read_dir(format!("{}/dashboards", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut checked = 0;
    for entry in dashboards {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for panel in d["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = instantiate(t["expr"].as_str().unwrap());
                let v = query(&expr);
                assert_eq!(v["status"], "success", "panel {:?}: {expr}: {v}", panel["title"]);
                checked += 1;
            }
        }
    }
    // The alert expressions of the chart's PrometheusRule.
    let rules = std::fs::read_to_string(format!("{}/charts/berth/templates/prometheusrule.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")) {
        let v = query(line);
        assert_eq!(v["status"], "success", "alert {line}: {v}");
        checked += 1;
    }
    assert!(checked > 30, "only {checked} queries checked");
}
