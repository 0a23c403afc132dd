//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): what `kubectl get` shows.
//! Columns: Name and Age for every kind, the well-known columns of pods and nodes, and the
//! additionalPrinterColumns of CRDs (simple `.a.b` JSONPaths).

use super::resources::ResourceType;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Renders a metav1.LabelSelector object as a selector string.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

/// Human duration like kubectl's: 5s, 3m, 2h, 4d.
pub fn age(created: &str, now: &str) -> String {
    let (Ok(c), Ok(n)) = (
        created.parse::<DateTime<Utc>>(),
        now.parse::<DateTime<Utc>>(),
    ) else {
        return "<unknown>".into();
    };
    let secs = (n - c).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn path_value(v: &Value, path: &str) -> Value {
    let pointer = format!("/{}", path.trim_start_matches('.').replace('.', "/"));
    v.pointer(&pointer).cloned().unwrap_or(Value::Null)
}

/// Computes one cell of a row.
type Extractor = Box<dyn Fn(&Value) -> Value>;

/// Builds a meta.k8s.io/v1 Table of `items`.
pub fn table(
    rt: &ResourceType,
    version: &str,
    items: &[Value],
    now: &str,
    rv: Option<u64>,
    continue_token: Option<&str>,
) -> Value {
    let col = |name: &str, ty: &str, priority: i64| json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": name, "priority": priority});
    let mut columns = vec![col("Name", "string", 0)];
    let mut extractors: Vec<Extractor> = Vec::new();
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "pods") => {
            columns.extend([
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("Node", "string", 1),
            ]);
            extractors.push(Box::new(|p| {
                let total = p
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map(|a| a.len())
                    .unwrap_or(0);
                let ready = if p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                {
                    total
                } else {
                    0
                };
                json!(format!("{ready}/{total}"))
            }));
            extractors.push(Box::new(|p| {
                if p.pointer("/metadata/deletionTimestamp").is_some() {
                    return json!("Terminating");
                }
                json!(p
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("Pending"))
            }));
            extractors.push(Box::new(|_| json!("0")));
            let now = now.to_string();
            extractors.push(Box::new(move |p| {
                json!(age(
                    p.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    &now
                ))
            }));
            extractors.push(Box::new(|p| {
                json!(p
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>"))
            }));
        }
        ("", "nodes") => {
            columns.extend([
                col("Status", "string", 0),
                col("Roles", "string", 0),
                col("Age", "string", 0),
                col("Version", "string", 0),
            ]);
            extractors.push(Box::new(|n| {
                let ready = n
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| c["status"] == "True")
                    .unwrap_or(false);
                let mut s = if ready {
                    "Ready".to_string()
                } else {
                    "NotReady".to_string()
                };
                if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                    s.push_str(",SchedulingDisabled");
                }
                json!(s)
            }));
            extractors.push(Box::new(|_| json!("<none>")));
            let now = now.to_string();
            extractors.push(Box::new(move |n| {
                json!(age(
                    n.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    &now
                ))
            }));
            extractors.push(Box::new(|n| {
                json!(n
                    .pointer("/status/nodeInfo/kubeletVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(""))
            }));
        }
        _ => {
            let printer = rt
                .version(version)
                .map(|v| v.printer_columns.clone())
                .unwrap_or_default();
            let mut has_age = false;
            for c in printer {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let path = c
                    .get("jsonPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let ty = c
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("string")
                    .to_string();
                let priority = c.get("priority").and_then(Value::as_i64).unwrap_or(0);
                if path == ".metadata.creationTimestamp" {
                    has_age = true;
                }
                columns.push(json!({"name": name, "type": if ty == "date" { "string".to_string() } else { ty.clone() }, "format": "", "description": c.get("description").cloned().unwrap_or(json!("")), "priority": priority}));
                let now = now.to_string();
                extractors.push(Box::new(move |o| {
                    let v = path_value(o, &path);
                    if ty == "date" {
                        return json!(v.as_str().map(|t| age(t, &now)).unwrap_or_default());
                    }
                    v
                }));
            }
            if !has_age {
                columns.push(col("Age", "string", 0));
                let now = now.to_string();
                extractors.push(Box::new(move |o| {
                    json!(age(
                        o.pointer("/metadata/creationTimestamp")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        &now
                    ))
                }));
            }
        }
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            cells.extend(extractors.iter().map(|e| e(o)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or_default()}})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}
