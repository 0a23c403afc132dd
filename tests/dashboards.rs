//! The Grafana dashboards: structurally sound for a current Grafana (schemaVersion, a datasource variable and a group
//! variable, unique panel ids, every panel on the datasource variable, a grid that fits), and every query names only
//! metrics berth exports.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().to_string(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every PromQL expression in a dashboard (panel targets and query variables).
pub fn expressions(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

#[test]
fn four_dashboards_with_the_expected_titles() {
    let titles: Vec<String> = dashboards()
        .iter()
        .map(|(_, d)| d["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        titles,
        [
            "berth / Autoscaler performance",
            "berth / Cloud API",
            "berth / Machines and rollouts",
            "berth / Overview"
        ]
    );
}

#[test]
fn structure() {
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{file}: duplicate uid"
        );
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 36,
            "{file}: schemaVersion of a current Grafana"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["type"] == "datasource"
                && v["query"] == "prometheus"
                && v["name"] == "datasource"),
            "{file}: datasource variable"
        );
        assert!(
            vars.iter()
                .any(|v| v["name"] == "group" && v["type"] == "query"),
            "{file}: group variable"
        );
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: duplicate panel id at {title}"
            );
            let grid = &p["gridPos"];
            assert!(
                grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
                "{file}: {title} overflows the grid"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file}: {title} must use the datasource variable"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            for t in targets {
                assert!(
                    !t["expr"].as_str().unwrap().is_empty(),
                    "{file}: {title} has an empty query"
                );
            }
        }
    }
}

#[test]
fn queries_name_only_exported_metrics() {
    let metrics = berth::telemetry::metrics::Metrics::new().unwrap();
    let cloud = berth::cloud::metrics::CloudMetrics::register(&metrics.registry).unwrap();
    let exported: BTreeSet<String> = metrics
        .names()
        .iter()
        .cloned()
        .chain(cloud.names())
        .collect();
    assert!(exported.len() > 25, "{exported:?}");
    for (file, d) in dashboards() {
        for expr in expressions(&d) {
            for name in metric_names(&expr) {
                assert!(
                    exported.contains(&name),
                    "{file}: query {expr:?} names {name}, which berth does not export"
                );
            }
        }
    }
}

/// `berth_*` identifiers in an expression, with histogram suffixes folded to the family name.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("berth_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = expr[start..end].to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(stripped) = name.strip_suffix(suffix) {
                name = stripped.to_string();
            }
        }
        out.push(name);
        i = end;
    }
    out
}
