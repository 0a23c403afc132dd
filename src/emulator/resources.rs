//! The registry of servable resource types: the built-in kinds and every established CRD.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// JSON paths of a scale subresource (CRD `subresources.scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// e.g. `.spec.replicas`
    pub spec_replicas: String,
    /// e.g. `.status.replicas`
    pub status_replicas: String,
    /// e.g. `.status.selector`
    pub label_selector: Option<String>,
}

/// One served version of a resource.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// e.g. `v1alpha1`
    pub name: String,
    /// openAPIV3Schema of a CRD version; `None` for built-ins (their schema comes from k8s-openapi).
    pub schema: Option<Value>,
    /// CRD additionalPrinterColumns.
    pub printer_columns: Vec<Value>,
}

/// Static typed check of a built-in kind: decoding into the k8s-openapi struct as the real server decodes into Go.
pub type TypedCheck = fn(&Value) -> Result<(), String>;

/// A kind the emulator serves.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group, "" for core.
    pub group: String,
    /// Served versions; the first is the preferred and storage version.
    pub versions: Vec<VersionInfo>,
    /// Plural resource name.
    pub resource: String,
    /// Singular resource name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (e.g. `all`).
    pub categories: Vec<String>,
    /// Has a status subresource.
    pub status: bool,
    /// Has a scale subresource.
    pub scale: Option<ScalePaths>,
    /// True for kinds defined by a CRD.
    pub custom: bool,
    /// Typed check for built-ins.
    pub typed_check: Option<TypedCheck>,
}

impl ResourceType {
    /// The preferred (storage) version.
    pub fn storage_version(&self) -> &str {
        self.versions
            .first()
            .map(|v| v.name.as_str())
            .unwrap_or("v1")
    }

    /// `group/version` or `version` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// Looks up a served version.
    pub fn version(&self, version: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.name == version)
    }

    /// True when kube-apiserver bumps metadata.generation for spec changes of this kind.
    pub fn tracks_generation(&self) -> bool {
        let untracked_core = self.group.is_empty()
            && matches!(
                self.resource.as_str(),
                "nodes" | "namespaces" | "events" | "configmaps"
            );
        !(untracked_core || matches!(self.group.as_str(), "coordination.k8s.io" | "events.k8s.io"))
    }
}

/// Resource types keyed by (group, plural).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<(String, String), Arc<ResourceType>>,
}

fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
    T::deserialize(v).map(|_| ()).map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    resource: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    categories: &[&str],
    status: bool,
    scale: bool,
    typed_check: TypedCheck,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![VersionInfo {
            name: version.into(),
            schema: None,
            printer_columns: Vec::new(),
        }],
        resource: resource.into(),
        singular: singular.into(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status,
        scale: scale.then(|| ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".status.selector".into()),
        }),
        custom: false,
        typed_check: Some(typed_check),
    }
}

impl Registry {
    /// The built-in kinds berth uses.
    pub fn builtins() -> Self {
        use k8s_openapi::api::{
            apps::v1 as apps, coordination::v1 as coord, core::v1 as core, policy::v1 as policy,
            rbac::v1 as rbac,
        };
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
        let all = &["all"][..];
        let list = vec![
            builtin(
                "",
                "v1",
                "pods",
                "pod",
                "Pod",
                true,
                &["po"],
                all,
                true,
                false,
                check::<core::Pod>,
            ),
            builtin(
                "",
                "v1",
                "nodes",
                "node",
                "Node",
                false,
                &["no"],
                &[],
                true,
                false,
                check::<core::Node>,
            ),
            builtin(
                "",
                "v1",
                "namespaces",
                "namespace",
                "Namespace",
                false,
                &["ns"],
                &[],
                true,
                false,
                check::<core::Namespace>,
            ),
            builtin(
                "",
                "v1",
                "events",
                "event",
                "Event",
                true,
                &["ev"],
                &[],
                false,
                false,
                check::<core::Event>,
            ),
            builtin(
                "events.k8s.io",
                "v1",
                "events",
                "event",
                "Event",
                true,
                &[],
                &[],
                false,
                false,
                check::<k8s_openapi::api::events::v1::Event>,
            ),
            builtin(
                "",
                "v1",
                "configmaps",
                "configmap",
                "ConfigMap",
                true,
                &["cm"],
                &[],
                false,
                false,
                check::<core::ConfigMap>,
            ),
            builtin(
                "apps",
                "v1",
                "daemonsets",
                "daemonset",
                "DaemonSet",
                true,
                &["ds"],
                all,
                true,
                false,
                check::<apps::DaemonSet>,
            ),
            builtin(
                "apps",
                "v1",
                "deployments",
                "deployment",
                "Deployment",
                true,
                &["deploy"],
                all,
                true,
                true,
                check::<apps::Deployment>,
            ),
            builtin(
                "apps",
                "v1",
                "replicasets",
                "replicaset",
                "ReplicaSet",
                true,
                &["rs"],
                all,
                true,
                true,
                check::<apps::ReplicaSet>,
            ),
            builtin(
                "policy",
                "v1",
                "poddisruptionbudgets",
                "poddisruptionbudget",
                "PodDisruptionBudget",
                true,
                &["pdb"],
                &[],
                true,
                false,
                check::<policy::PodDisruptionBudget>,
            ),
            builtin(
                "coordination.k8s.io",
                "v1",
                "leases",
                "lease",
                "Lease",
                true,
                &[],
                &[],
                false,
                false,
                check::<coord::Lease>,
            ),
            // What berth's Helm chart installs, so the chart can be applied to the emulator with kubectl.
            builtin(
                "",
                "v1",
                "services",
                "service",
                "Service",
                true,
                &["svc"],
                all,
                true,
                false,
                check::<core::Service>,
            ),
            builtin(
                "",
                "v1",
                "serviceaccounts",
                "serviceaccount",
                "ServiceAccount",
                true,
                &["sa"],
                &[],
                false,
                false,
                check::<core::ServiceAccount>,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterroles",
                "clusterrole",
                "ClusterRole",
                false,
                &[],
                &[],
                false,
                false,
                check::<rbac::ClusterRole>,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "clusterrolebinding",
                "ClusterRoleBinding",
                false,
                &[],
                &[],
                false,
                false,
                check::<rbac::ClusterRoleBinding>,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "roles",
                "role",
                "Role",
                true,
                &[],
                &[],
                false,
                false,
                check::<rbac::Role>,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "rolebinding",
                "RoleBinding",
                true,
                &[],
                &[],
                false,
                false,
                check::<rbac::RoleBinding>,
            ),
            builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "customresourcedefinition",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
                &[],
                true,
                false,
                check::<apiext::CustomResourceDefinition>,
            ),
        ];
        let mut r = Registry::default();
        for t in list {
            r.insert(t);
        }
        r
    }

    /// Adds or replaces a type.
    pub fn insert(&mut self, t: ResourceType) {
        self.types
            .insert((t.group.clone(), t.resource.clone()), Arc::new(t));
    }

    /// Removes a type (CRD deleted).
    pub fn remove(&mut self, group: &str, resource: &str) -> Option<Arc<ResourceType>> {
        self.types
            .remove(&(group.to_string(), resource.to_string()))
    }

    /// Looks up by group and plural.
    pub fn get(&self, group: &str, resource: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), resource.to_string()))
            .cloned()
    }

    /// Looks up by group and kind.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .values()
            .find(|t| t.group == group && t.kind == kind)
            .cloned()
    }

    /// All types, ordered by (group, resource).
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Group names in discovery order: core first, then the rest alphabetically.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for t in self.types.values() {
            if !groups.contains(&t.group) {
                groups.push(t.group.clone());
            }
        }
        groups
    }

    /// Versions served for a group, preferred first.
    pub fn group_versions(&self, group: &str) -> Vec<String> {
        let mut versions: Vec<String> = Vec::new();
        for t in self.types.values().filter(|t| t.group == group) {
            for v in &t.versions {
                if !versions.contains(&v.name) {
                    versions.push(v.name.clone());
                }
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        versions
    }
}

/// Kubernetes version ordering: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: u32 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, 0, 0)
    }
}

/// Builds the resource type a CRD declares, or explains why the CRD is unusable (reported as 422).
pub fn from_crd(crd: &Value) -> Result<ResourceType, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .ok_or("spec.names.plural: Required value")?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("spec.names.kind: Required value")?;
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let scope = spec
        .get("scope")
        .and_then(Value::as_str)
        .ok_or("spec.scope: Required value")?;
    let namespaced = match scope {
        "Namespaced" => true,
        "Cluster" => false,
        other => return Err(format!("spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\"")),
    };
    let expected_name = format!("{plural}.{group}");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != expected_name {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions_json = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions: Required value")?;
    if versions_json.is_empty() {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    let mut versions = Vec::new();
    let mut status = false;
    let mut scale = None;
    let mut storage_count = 0;
    for (i, v) in versions_json.iter().enumerate() {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("spec.versions[{i}].name: Required value"))?;
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            storage_count += 1;
        }
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let schema = v.pointer("/schema/openAPIV3Schema").cloned();
        if schema.is_none() {
            return Err(format!(
                "spec.versions[{i}].schema.openAPIV3Schema: Required value: schemas are required"
            ));
        }
        if let Some(sub) = v.get("subresources") {
            if sub.get("status").is_some() {
                status = true;
            }
            if let Some(s) = sub.get("scale") {
                let path = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
                scale = Some(ScalePaths {
                    spec_replicas: path("specReplicasPath").ok_or_else(|| format!("spec.versions[{i}].subresources.scale.specReplicasPath: Required value"))?,
                    status_replicas: path("statusReplicasPath").ok_or_else(|| format!("spec.versions[{i}].subresources.scale.statusReplicasPath: Required value"))?,
                    label_selector: path("labelSelectorPath"),
                });
            }
        }
        let info = VersionInfo {
            name: vname.to_string(),
            schema,
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        };
        // Storage version first: it is the one objects are kept in.
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            versions.insert(0, info);
        } else {
            versions.push(info);
        }
    }
    if storage_count != 1 {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    Ok(ResourceType {
        group: group.into(),
        versions,
        resource: plural.into(),
        singular,
        kind: kind.into(),
        namespaced,
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        status,
        scale,
        custom: true,
        typed_check: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec!["v1alpha1", "v2", "v1beta2", "v1", "v1beta1"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, vec!["v2", "v1", "v1beta2", "v1beta1", "v1alpha1"]);
    }

    #[test]
    fn crd_errors_name_the_field() {
        let crd = serde_json::json!({"metadata": {"name": "things.x.dev"}, "spec": {"group": "x.dev", "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        assert!(from_crd(&crd).unwrap_err().contains("openAPIV3Schema"));
        let crd = serde_json::json!({"metadata": {"name": "wrong"}, "spec": {"group": "x.dev", "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing"}, "versions": []}});
        assert!(from_crd(&crd).unwrap_err().contains("metadata.name"));
    }
}
