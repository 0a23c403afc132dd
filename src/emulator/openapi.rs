//! OpenAPI documents: v3 per group version (what kubectl reads for explain, strategic merge patch metadata and
//! server-side field validation support) and a v2 JSON document; built-in schemas come from k8s-openapi's
//! schemars implementations, custom ones from each CRD's openAPIV3Schema.

use super::resources::{Registry, ResourceType};
use k8s_openapi::api::{
    apps::v1 as apps, coordination::v1 as coord, core::v1 as core, policy::v1 as policy,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use std::hash::{Hash, Hasher};

/// The components.schemas (v3, `ref_prefix` "#/components/schemas/") or definitions (v2, "#/definitions/")
/// of the built-in kinds, with their definition names.
/// (definition name, group, version, kind) of each built-in definition.
type KindIndex = Vec<(String, String, String, String)>;

fn builtin_definitions(v3: bool) -> (Map<String, Value>, KindIndex) {
    let settings = if v3 {
        SchemaSettings::openapi3()
    } else {
        SchemaSettings::draft07().with(|s| s.definitions_path = "/definitions".into())
    };
    let mut generator = settings.into_generator();
    macro_rules! kinds {
        ($($t:ty => ($g:expr, $k:expr)),* $(,)?) => {{
            let mut out = Vec::new();
            $(
                let _ = generator.subschema_for::<$t>();
                out.push((<$t as schemars::JsonSchema>::schema_name().to_string(), $g.to_string(), "v1".to_string(), $k.to_string()));
            )*
            out
        }};
    }
    let kinds = kinds!(
        core::Pod => ("", "Pod"), core::Node => ("", "Node"), core::Namespace => ("", "Namespace"), core::Event => ("", "Event"),
        core::ConfigMap => ("", "ConfigMap"), k8s_openapi::api::events::v1::Event => ("events.k8s.io", "Event"), core::Binding => ("", "Binding"), policy::Eviction => ("policy", "Eviction"),
        apps::DaemonSet => ("apps", "DaemonSet"), apps::Deployment => ("apps", "Deployment"), apps::ReplicaSet => ("apps", "ReplicaSet"),
        policy::PodDisruptionBudget => ("policy", "PodDisruptionBudget"), coord::Lease => ("coordination.k8s.io", "Lease"),
        core::Service => ("", "Service"), core::ServiceAccount => ("", "ServiceAccount"),
        k8s_openapi::api::rbac::v1::ClusterRole => ("rbac.authorization.k8s.io", "ClusterRole"),
        k8s_openapi::api::rbac::v1::ClusterRoleBinding => ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        k8s_openapi::api::rbac::v1::Role => ("rbac.authorization.k8s.io", "Role"),
        k8s_openapi::api::rbac::v1::RoleBinding => ("rbac.authorization.k8s.io", "RoleBinding"),
        apiext::CustomResourceDefinition => ("apiextensions.k8s.io", "CustomResourceDefinition"),
        k8s_openapi::api::autoscaling::v1::Scale => ("autoscaling", "Scale"),
        meta::ObjectMeta => ("", ""), meta::Status => ("", ""), meta::Patch => ("", ""), meta::DeleteOptions => ("", ""),
    );
    let mut defs = generator.take_definitions(true);
    for d in defs.values_mut() {
        annotate_patch_strategies(d);
    }
    (defs, kinds)
}

/// Adds the strategic-merge extensions the real documents carry (`x-kubernetes-patch-merge-key`,
/// `x-kubernetes-patch-strategy`) to list properties, from the same table the server's patch code uses, so that
/// kubectl computes patches with the same list semantics the emulator applies.
fn annotate_patch_strategies(schema: &mut Value) {
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        let Some(obj) = prop.as_object_mut() else {
            continue;
        };
        if obj.get("type").and_then(Value::as_str) != Some("array") {
            continue;
        }
        if let Some(key) = super::patch::merge_key(name) {
            obj.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            obj.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        } else if super::patch::is_set_list(name) {
            obj.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        }
    }
}

fn definition_name(t: &ResourceType, version: &str) -> String {
    // Real servers use the reversed group: berth.dev -> dev.berth.
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), version, t.kind)
}

fn custom_schema(t: &ResourceType, version: &str, prefix: &str) -> Option<Value> {
    let mut schema = t.version(version)?.schema.clone()?;
    if let Some(props) = schema
        .as_object_mut()
        .map(|m| m.entry("properties").or_insert_with(|| json!({})))
    {
        props["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
        props["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
        props["metadata"] = json!({"description": "Standard object's metadata.", "allOf": [{"$ref": format!("{prefix}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")}]});
    }
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": t.group, "version": version, "kind": t.kind}]);
    Some(schema)
}

fn operations(t: &ResourceType, version: &str, def_ref: &str, prefix: &str) -> Map<String, Value> {
    let gvk = json!({"group": t.group, "version": version, "kind": t.kind});
    let base = if t.group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{}/{version}", t.group)
    };
    let ns = if t.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let body = |types: &[&str], r: &str| -> Value {
        let content: Map<String, Value> = types
            .iter()
            .map(|ct| (ct.to_string(), json!({"schema": {"$ref": r}})))
            .collect();
        json!({"content": content, "required": true})
    };
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": def_ref}}}}});
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let common = vec![
        query("dryRun"),
        query("fieldManager"),
        query("fieldValidation"),
    ];
    let mut patch_types = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if !t.custom {
        patch_types.push("application/strategic-merge-patch+json");
    }
    let patch_ref = format!("{prefix}io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
    let mut paths = Map::new();
    paths.insert(
        format!("{base}{ns}/{}", t.resource),
        json!({
            "get": {"x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}},
            "post": {"x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk, "parameters": common,
                     "requestBody": body(&["*/*"], def_ref), "responses": ok},
        }),
    );
    let item_ops = |suffix: &str| -> Value {
        let mut params = common.clone();
        params.push(query("force"));
        json!({
            "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": ok},
            "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "parameters": common,
                    "requestBody": body(&["*/*"], def_ref), "responses": ok},
            "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "parameters": params,
                      "requestBody": body(&patch_types, &patch_ref), "responses": ok},
            "delete": {"x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}},
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
            "x-suffix": suffix,
        })
    };
    paths.insert(format!("{base}{ns}/{}/{{name}}", t.resource), item_ops(""));
    if t.status {
        paths.insert(
            format!("{base}{ns}/{}/{{name}}/status", t.resource),
            item_ops("status"),
        );
    }
    for p in paths.values_mut() {
        if let Some(m) = p.as_object_mut() {
            m.remove("x-suffix");
        }
    }
    paths
}

/// The group-version path keys of /openapi/v3 ("api/v1", "apis/apps/v1", ...).
pub fn v3_group_versions(reg: &Registry) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in reg.groups() {
        for v in reg.group_versions(&g) {
            out.push((g.clone(), v));
        }
    }
    out
}

fn gv_hash(reg: &Registry, group: &str, version: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in reg.all().filter(|t| t.group == group) {
        t.resource.hash(&mut h);
        if let Some(v) = t.version(version) {
            v.schema.as_ref().map(|s| s.to_string()).hash(&mut h);
        }
    }
    format!("{:016X}", h.finish())
}

/// /openapi/v3
pub fn v3_root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in v3_group_versions(reg) {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let url = format!("/openapi/v3/{key}?hash={}", gv_hash(reg, &g, &v));
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// /openapi/v3/api/v1 or /openapi/v3/apis/G/V.
pub fn v3_group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<_> = reg
        .all()
        .filter(|t| t.group == group && t.version(version).is_some())
        .cloned()
        .collect();
    if types.is_empty() {
        return None;
    }
    let prefix = "#/components/schemas/";
    let (mut defs, kinds) = builtin_definitions(true);
    for (name, g, v, k) in &kinds {
        if !k.is_empty() {
            if let Some(d) = defs.get_mut(name) {
                d["x-kubernetes-group-version-kind"] =
                    json!([{"group": g, "version": v, "kind": k}]);
            }
        }
    }
    let mut paths = Map::new();
    for t in &types {
        let def = if t.custom {
            let name = definition_name(t, version);
            if let Some(s) = custom_schema(t, version, prefix) {
                defs.insert(name.clone(), s);
            }
            name
        } else {
            kinds
                .iter()
                .find(|(_, g, _, k)| *g == t.group && *k == t.kind)
                .map(|(n, ..)| n.clone())
                .unwrap_or_default()
        };
        paths.extend(operations(t, version, &format!("{prefix}{def}"), prefix));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": defs},
    }))
}

/// /openapi/v2 as JSON.
pub fn v2(reg: &Registry) -> Value {
    let prefix = "#/definitions/";
    let (mut defs, kinds) = builtin_definitions(false);
    for (name, g, v, k) in &kinds {
        if !k.is_empty() {
            if let Some(d) = defs.get_mut(name) {
                d["x-kubernetes-group-version-kind"] =
                    json!([{"group": g, "version": v, "kind": k}]);
            }
        }
    }
    let mut paths = Map::new();
    for t in reg.all() {
        for v in &t.versions {
            let def = if t.custom {
                let name = definition_name(t, &v.name);
                if let Some(s) = custom_schema(t, &v.name, prefix) {
                    defs.insert(name.clone(), s);
                }
                name
            } else {
                kinds
                    .iter()
                    .find(|(_, g, _, k)| *g == t.group && *k == t.kind)
                    .map(|(n, ..)| n.clone())
                    .unwrap_or_default()
            };
            paths.extend(operations(t, &v.name, &format!("{prefix}{def}"), prefix));
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "definitions": defs})
}
