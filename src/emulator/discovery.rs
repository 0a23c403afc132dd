//! API discovery: the legacy documents (/api, /apis, /api/v1, /apis/G, /apis/G/V) and aggregated discovery
//! (apidiscovery.k8s.io/v2), from the registry, so kubectl resolves kinds, short names and subresources.

use super::resources::{version_priority, Registry, ResourceType};
use serde_json::{json, Value};

/// Content type of aggregated discovery responses.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Subresources of a kind: (name, group, version, kind, verbs).
fn subresources(
    t: &ResourceType,
    version: &str,
) -> Vec<(String, String, String, String, Vec<&'static str>)> {
    let mut out = Vec::new();
    if t.status {
        out.push((
            "status".to_string(),
            t.group.clone(),
            version.to_string(),
            t.kind.clone(),
            vec!["get", "patch", "update"],
        ));
    }
    if t.scale.is_some() {
        out.push((
            "scale".to_string(),
            "autoscaling".into(),
            "v1".into(),
            "Scale".into(),
            vec!["get", "patch", "update"],
        ));
    }
    if t.group.is_empty() && t.resource == "pods" {
        out.push((
            "binding".to_string(),
            String::new(),
            "v1".into(),
            "Binding".into(),
            vec!["create"],
        ));
        out.push((
            "eviction".to_string(),
            "policy".into(),
            "v1".into(),
            "Eviction".into(),
            vec!["create"],
        ));
    }
    out
}

fn served<'a>(
    reg: &'a Registry,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ResourceType>> + 'a {
    reg.all()
        .filter(move |t| t.group == group && t.version(version).is_some())
}

/// /api
pub fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

fn group_doc(reg: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = reg
        .group_versions(group)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// /apis
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| group_doc(reg, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// /apis/G, or None when the group is unknown.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    if group.is_empty() || !reg.groups().iter().any(|g| g == group) {
        return None;
    }
    let mut doc = group_doc(reg, group);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// /api/v1 or /apis/G/V, or None when nothing is served there.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in served(reg, group, version) {
        let mut r = json!({"name": t.resource, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": VERBS, "storageVersionHash": ""});
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for (sub, g, v, k, verbs) in subresources(t, version) {
            let mut s = json!({"name": format!("{}/{sub}", t.resource), "singularName": "", "namespaced": t.namespaced, "kind": k, "verbs": verbs});
            if g != t.group || v != version {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_group(reg: &Registry, group: &str) -> Value {
    let mut versions: Vec<String> = reg.group_versions(group);
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = served(reg, group, v)
                .map(|t| {
                    let mut r = json!({
                        "resource": t.resource,
                        "responseKind": {"group": t.group, "version": v, "kind": t.kind},
                        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": t.singular,
                        "verbs": VERBS,
                    });
                    if !t.short_names.is_empty() {
                        r["shortNames"] = json!(t.short_names);
                    }
                    if !t.categories.is_empty() {
                        r["categories"] = json!(t.categories);
                    }
                    let subs: Vec<Value> = subresources(t, v)
                        .into_iter()
                        .map(|(sub, g, sv, k, verbs)| json!({"subresource": sub, "responseKind": {"group": g, "version": sv, "kind": k}, "verbs": verbs}))
                        .collect();
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group}, "versions": versions})
}

/// Aggregated discovery for /api (core only) or /apis (every other group).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| g.is_empty() == core)
        .map(|g| aggregated_group(reg, g))
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// True when the Accept header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p = part.replace(' ', "");
        p.contains("g=apidiscovery.k8s.io")
            && p.contains("v=v2")
            && !p.contains("v=v2beta1")
            && p.contains("as=APIGroupDiscoveryList")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_list_eviction_and_binding() {
        let reg = Registry::builtins();
        let doc = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods/eviction")
                && names.contains(&"pods/binding")
                && names.contains(&"nodes")
        );
        let ev = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(ev["group"], "policy");
        assert!(resource_list(&reg, "apps", "v2").is_none());
        let agg = aggregated(&reg, false);
        assert!(agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "apps"));
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }
}
