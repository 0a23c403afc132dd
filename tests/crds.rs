//! The CRDs berth generates: structurally valid (the API server would accept them), documented field by field,
//! carrying the validation rules the API promises, and identical to the chart's copy.

use berth::api::{check_structural, crds, crds_yaml};
use serde_json::Value;

fn schema_of(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("kind generated");
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn rules(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for r in rules {
                        out.push(r["rule"].as_str().unwrap_or_default().to_string());
                    }
                }
                map.values().for_each(|c| walk(c, out));
            }
            Value::Array(items) => items.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    walk(schema, &mut out);
    out
}

#[test]
fn five_kinds_in_group_berth_dev() {
    let kinds: Vec<(String, String, String)> = crds()
        .iter()
        .map(|c| {
            (
                c.spec.names.kind.clone(),
                c.spec.scope.clone(),
                c.spec.group.clone(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("Cluster".into(), "Cluster".into(), "berth.dev".into()),
            ("MachineClass".into(), "Cluster".into(), "berth.dev".into()),
            (
                "MachineDeployment".into(),
                "Namespaced".into(),
                "berth.dev".into()
            ),
            ("MachineSet".into(), "Namespaced".into(), "berth.dev".into()),
            ("Machine".into(), "Namespaced".into(), "berth.dev".into()),
        ]
    );
    for crd in crds() {
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has a status subresource",
            crd.spec.names.kind
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{} has a short name",
            crd.spec.names.kind
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["berth".to_string()][..])
        );
    }
}

#[test]
fn schemas_are_structural_and_documented() {
    for crd in crds() {
        let schema = schema_of(&crd.spec.names.kind);
        let problems = check_structural(&schema);
        assert!(
            problems.is_empty(),
            "{}: {}",
            crd.spec.names.kind,
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn scale_subresource_on_sets_and_deployments() {
    for crd in crds() {
        let scale = crd.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref());
        match crd.spec.names.kind.as_str() {
            "MachineSet" | "MachineDeployment" => {
                let scale = scale.expect("scale subresource");
                assert_eq!(scale.spec_replicas_path, ".spec.replicas");
                assert_eq!(scale.status_replicas_path, ".status.replicas");
                assert_eq!(
                    scale.label_selector_path.as_deref(),
                    Some(".status.selector")
                );
            }
            _ => assert!(scale.is_none()),
        }
    }
}

#[test]
fn printer_columns() {
    let columns = |kind: &str| -> Vec<String> {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect()
    };
    assert_eq!(
        columns("Machine"),
        ["Instance-Type", "Zone", "Capacity", "Node", "Phase", "Age"]
    );
    for kind in ["MachineSet", "MachineDeployment"] {
        let cols = columns(kind);
        for want in ["Replicas", "Ready", "Available", "Age"] {
            assert!(
                cols.contains(&want.to_string()),
                "{kind} lacks column {want}: {cols:?}"
            );
        }
    }
}

#[test]
fn cross_field_rules_are_in_the_schema() {
    let md = rules(&schema_of("MachineDeployment"));
    assert!(
        md.iter()
            .any(|r| r.contains("self.minReplicas <= self.maxReplicas")),
        "{md:?}"
    );
    assert!(
        md.iter()
            .any(|r| r.contains("maxSurge") && r.contains("maxUnavailable")),
        "{md:?}"
    );
    assert!(
        md.iter().any(|r| r.contains("'^[0-9]+%$'")),
        "percentages are range-checked: {md:?}"
    );
    let mc = rules(&schema_of("MachineClass"));
    assert!(
        mc.iter()
            .any(|r| r.contains("has(self.id) != has(self.selector)")),
        "{mc:?}"
    );
    assert!(
        mc.iter().any(|r| r.contains("self.min <= self.max")),
        "{mc:?}"
    );
}

/// A health check's bad values are refused by the API server with the field named: maxUnhealthy by its CEL rule
/// (a negative count, a percentage over 100%), every timeout by its pattern.
#[test]
fn health_check_fields_are_validated_by_the_schema() {
    let md = schema_of("MachineDeployment");
    let hc = &md["properties"]["spec"]["properties"]["healthCheck"]["properties"];
    let max = &hc["maxUnhealthy"];
    assert_eq!(max["x-kubernetes-int-or-string"], true, "{max}");
    let rule = max["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
    assert!(
        rule.contains("self >= 0") && rule.contains("<= 100"),
        "{rule}"
    );
    for field in ["nodeStartupTimeout", "nodeMissingTimeout", "drainTimeout"] {
        assert!(
            hc[field]["pattern"]
                .as_str()
                .is_some_and(|p| p.contains("ms|s|m|h")),
            "{field}: {}",
            hc[field]
        );
    }
    let condition = &hc["unhealthyNodeConditions"]["items"]["properties"];
    assert!(condition["timeout"]["pattern"].is_string(), "{condition}");
    assert_eq!(
        condition["status"]["enum"],
        serde_json::json!(["True", "False", "Unknown"])
    );
}

#[test]
fn machine_phases_are_an_enum() {
    let schema = schema_of("Machine");
    let phases = &schema["properties"]["status"]["properties"]["phase"]["enum"];
    let phases: Vec<&str> = phases
        .as_array()
        .expect("enum")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "Pending",
            "Provisioning",
            "Provisioned",
            "Running",
            "Deleting",
            "Failed"
        ]
    );
}

#[test]
fn chart_crds_are_generated_from_the_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/berth/crds/berth-crds.yaml"
    );
    let on_disk = std::fs::read_to_string(path).expect("charts/berth/crds/berth-crds.yaml exists");
    let generated = crds_yaml().unwrap();
    assert!(
        on_disk == generated,
        "charts/berth/crds/berth-crds.yaml is out of date; regenerate it with `cargo run -- crds > charts/berth/crds/berth-crds.yaml`"
    );
}
