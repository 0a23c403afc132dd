//! The planner's view of a Pod: what it requests and every rule about where it may run.
//!
//! [`Pod::from_k8s`] converts a Kubernetes Pod the way the kube-scheduler reads it:
//! - requests: the larger of the regular containers' sum and the init-container peak, where restartable init
//!   containers (sidecars, `restartPolicy: Always`) keep running and so add to everything after them; plus the
//!   pod overhead; a resource given only as a limit is requested at the limit (the API server's defaulting);
//! - nodeSelector and required node affinity (terms ORed, each term ANDed with the nodeSelector);
//! - preferred node affinity, tolerations, required and preferred pod affinity and anti-affinity, topology spread
//!   constraints (with `matchLabelKeys` folded into the selector), host ports.
//!
//! Everything scheduling-relevant lives in [`SchedulingSpec`], which is hashable: pods with equal specs are
//! interchangeable for the planner (an equivalence class), which is what makes planning 20,000 pods fast.

use crate::model::requirements::{Requirement, RequirementError, Requirements, ValueSet};
use crate::model::resources::{ResourceError, Resources};
use crate::model::taints::{TaintError, Toleration};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use std::collections::{BTreeMap, BTreeSet};

/// The pseudo-label node affinity's `matchFields` (`metadata.name`) is matched against.
pub const NODE_NAME_FIELD: &str = "metadata.name";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("pod has no metadata.name")]
    MissingName,
    #[error("pod {pod}: has no spec")]
    MissingSpec { pod: String },
    #[error("pod {pod}: container {container}: {source}")]
    Resource {
        pod: String,
        container: String,
        source: ResourceError,
    },
    #[error("pod {pod}: overhead: {source}")]
    Overhead { pod: String, source: ResourceError },
    #[error("pod {pod}: {context}: {source}")]
    Requirement {
        pod: String,
        context: String,
        source: RequirementError,
    },
    #[error("pod {pod}: toleration {index}: {source}")]
    Toleration {
        pod: String,
        index: usize,
        source: TaintError,
    },
    #[error("pod {pod}: {context}: {message}")]
    Invalid {
        pod: String,
        context: String,
        message: String,
    },
}

impl PodError {
    pub fn category(&self) -> &'static str {
        match self {
            PodError::MissingName => "missing_name",
            PodError::MissingSpec { .. } => "missing_spec",
            PodError::Resource { .. } | PodError::Overhead { .. } => "invalid_resources",
            PodError::Requirement { .. } => "invalid_requirement",
            PodError::Toleration { .. } => "invalid_toleration",
            PodError::Invalid { .. } => "invalid_spec",
        }
    }
}

/// Which namespaces a pod affinity term looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NamespaceScope {
    /// Namespaces listed by name (the pod's own namespace when neither names nor a selector are given).
    pub names: BTreeSet<String>,
    /// A namespace label selector; an empty one selects every namespace.
    pub selector: Option<Requirements>,
}

impl NamespaceScope {
    pub fn only(namespace: &str) -> NamespaceScope {
        NamespaceScope {
            names: [namespace.to_string()].into(),
            selector: None,
        }
    }

    /// Whether `namespace` (with its labels, if known) is in scope.
    pub fn contains(
        &self,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        if self.names.contains(namespace) {
            return true;
        }
        match &self.selector {
            None => false,
            Some(s) if s.is_empty() => true,
            Some(s) => match namespace_labels {
                Some(labels) => s.matches_labels(labels),
                None => s.matches_labels(&BTreeMap::new()),
            },
        }
    }
}

/// One required (or, weighted, preferred) pod affinity or anti-affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodAffinityTerm {
    /// None (no selector) matches no pod, as in Kubernetes.
    pub selector: Option<Requirements>,
    pub namespaces: NamespaceScope,
    pub topology_key: String,
}

impl PodAffinityTerm {
    /// Whether a pod with these labels in this namespace is one the term refers to.
    pub fn selects(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        ns_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match &self.selector {
            None => false,
            Some(s) => self.namespaces.contains(namespace, ns_labels) && s.matches_labels(labels),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightedPodAffinityTerm {
    pub weight: i32,
    pub term: PodAffinityTerm,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightedNodeTerm {
    pub weight: i32,
    pub requirements: Requirements,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhenUnsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InclusionPolicy {
    Honor,
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopologySpreadConstraint {
    pub max_skew: u32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// The pods counted (in the pod's own namespace); `matchLabelKeys` already folded in. None counts no pod.
    pub selector: Option<Requirements>,
    pub min_domains: Option<u32>,
    /// Whether nodes the pod's node affinity excludes are left out of the domains (default Honor).
    pub node_affinity_policy: InclusionPolicy,
    /// Whether nodes with taints the pod does not tolerate are left out of the domains (default Ignore).
    pub node_taints_policy: InclusionPolicy,
}

impl TopologySpreadConstraint {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches_labels(labels))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// Empty or 0.0.0.0 binds every address.
    pub ip: String,
}

impl HostPort {
    /// Two host ports collide when protocol and port are equal and either binds all addresses or both bind the same.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (wildcard(&self.ip) || wildcard(&other.ip) || self.ip == other.ip)
    }
}

/// Everything about a pod that decides where it may run: pods with equal specs are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SchedulingSpec {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub priority: i32,
    pub node_selector: Requirements,
    /// Required node affinity: the node must satisfy one of these terms (each already ANDed with the
    /// nodeSelector). Empty means only the nodeSelector applies.
    pub required_node_affinity: Vec<Requirements>,
    pub preferred_node_affinity: Vec<WeightedNodeTerm>,
    pub tolerations: Vec<Toleration>,
    pub pod_affinity: Vec<PodAffinityTerm>,
    pub pod_anti_affinity: Vec<PodAffinityTerm>,
    pub preferred_pod_affinity: Vec<WeightedPodAffinityTerm>,
    pub preferred_pod_anti_affinity: Vec<WeightedPodAffinityTerm>,
    pub topology_spread: Vec<TopologySpreadConstraint>,
    pub host_ports: Vec<HostPort>,
    /// Zones the pod's bound volumes allow (None: no volume restriction).
    pub volume_zones: Option<BTreeSet<String>>,
}

impl SchedulingSpec {
    /// The node-requirement alternatives: the required affinity terms, or just the nodeSelector.
    pub fn node_terms(&self) -> Vec<Requirements> {
        if self.required_node_affinity.is_empty() {
            vec![self.node_selector.clone()]
        } else {
            self.required_node_affinity.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A pod as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    /// The controller owning the pod (ReplicaSet, StatefulSet, Job, DaemonSet, ...).
    pub owner: Option<OwnerRef>,
    /// The node the pod is bound to, if any.
    pub node_name: Option<String>,
    pub spec: SchedulingSpec,
}

impl Pod {
    /// A pod with these requests and nothing else (tests and benchmarks build on it).
    pub fn new(namespace: &str, name: &str, requests: Resources) -> Pod {
        let mut requests = requests;
        requests.pods = requests.pods.max(1);
        Pod {
            name: name.to_string(),
            uid: format!("{namespace}/{name}"),
            owner: None,
            node_name: None,
            spec: SchedulingSpec {
                namespace: namespace.to_string(),
                requests,
                ..Default::default()
            },
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.name)
    }

    pub fn is_daemon(&self) -> bool {
        self.owner.as_ref().is_some_and(|o| o.kind == "DaemonSet")
    }

    /// Converts a Kubernetes Pod; malformed fields are errors naming the pod and the field.
    pub fn from_k8s(pod: &core::Pod) -> Result<Pod, PodError> {
        let name = pod
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(PodError::MissingName)?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| PodError::MissingSpec { pod: name.clone() })?;
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let invalid = |context: &str, message: String| PodError::Invalid {
            pod: name.clone(),
            context: context.to_string(),
            message,
        };
        let req_err = |context: String| {
            let name = name.clone();
            move |source| PodError::Requirement {
                pod: name,
                context,
                source,
            }
        };

        let requests = pod_requests(&name, spec)?;

        let node_selector = Requirements::from_labels(spec.node_selector.iter().flatten());
        let mut required_node_affinity = Vec::new();
        let mut preferred_node_affinity = Vec::new();
        let mut pod_affinity = Vec::new();
        let mut pod_anti_affinity = Vec::new();
        let mut preferred_pod_affinity = Vec::new();
        let mut preferred_pod_anti_affinity = Vec::new();
        if let Some(affinity) = &spec.affinity {
            if let Some(na) = &affinity.node_affinity {
                if let Some(required) = &na.required_during_scheduling_ignored_during_execution {
                    if required.node_selector_terms.is_empty() {
                        return Err(invalid(
                            "required node affinity",
                            "nodeSelectorTerms must not be empty".into(),
                        ));
                    }
                    for (i, term) in required.node_selector_terms.iter().enumerate() {
                        let r = node_selector_term(term)
                            .map_err(req_err(format!("required node affinity term {i}")))?;
                        required_node_affinity.push(node_selector.intersect(&r));
                    }
                }
                for (i, p) in na
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .enumerate()
                {
                    let r = node_selector_term(&p.preference)
                        .map_err(req_err(format!("preferred node affinity term {i}")))?;
                    if !(1..=100).contains(&p.weight) {
                        return Err(invalid(
                            "preferred node affinity",
                            format!("weight {} is not in 1..100", p.weight),
                        ));
                    }
                    preferred_node_affinity.push(WeightedNodeTerm {
                        weight: p.weight,
                        requirements: r,
                    });
                }
            }
            if let Some(pa) = &affinity.pod_affinity {
                for (i, t) in pa
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .enumerate()
                {
                    pod_affinity.push(affinity_term(
                        &name,
                        &namespace,
                        &labels,
                        t,
                        &format!("required pod affinity term {i}"),
                    )?);
                }
                for (i, w) in pa
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .enumerate()
                {
                    let term = affinity_term(
                        &name,
                        &namespace,
                        &labels,
                        &w.pod_affinity_term,
                        &format!("preferred pod affinity term {i}"),
                    )?;
                    preferred_pod_affinity.push(WeightedPodAffinityTerm {
                        weight: w.weight,
                        term,
                    });
                }
            }
            if let Some(pa) = &affinity.pod_anti_affinity {
                for (i, t) in pa
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .enumerate()
                {
                    pod_anti_affinity.push(affinity_term(
                        &name,
                        &namespace,
                        &labels,
                        t,
                        &format!("required pod anti-affinity term {i}"),
                    )?);
                }
                for (i, w) in pa
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .enumerate()
                {
                    let term = affinity_term(
                        &name,
                        &namespace,
                        &labels,
                        &w.pod_affinity_term,
                        &format!("preferred pod anti-affinity term {i}"),
                    )?;
                    preferred_pod_anti_affinity.push(WeightedPodAffinityTerm {
                        weight: w.weight,
                        term,
                    });
                }
            }
        }

        let mut tolerations = Vec::new();
        for (index, t) in spec.tolerations.iter().flatten().enumerate() {
            let tol = Toleration::new(
                t.key.as_deref().unwrap_or(""),
                t.operator.as_deref().unwrap_or(""),
                t.value.as_deref().unwrap_or(""),
                t.effect.as_deref().unwrap_or(""),
            )
            .map_err(|source| PodError::Toleration {
                pod: name.clone(),
                index,
                source,
            })?;
            tolerations.push(tol);
        }

        let mut topology_spread = Vec::new();
        for (i, c) in spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .enumerate()
        {
            let context = format!("topology spread constraint {i}");
            if c.max_skew < 1 {
                return Err(invalid(
                    &context,
                    format!("maxSkew {} must be at least 1", c.max_skew),
                ));
            }
            if c.topology_key.is_empty() {
                return Err(invalid(&context, "topologyKey must not be empty".into()));
            }
            let when_unsatisfiable = match c.when_unsatisfiable.as_str() {
                "DoNotSchedule" => WhenUnsatisfiable::DoNotSchedule,
                "ScheduleAnyway" => WhenUnsatisfiable::ScheduleAnyway,
                other => {
                    return Err(invalid(
                        &context,
                        format!(
                            "whenUnsatisfiable {other:?} is not DoNotSchedule or ScheduleAnyway"
                        ),
                    ))
                }
            };
            let min_domains = match c.min_domains {
                None => None,
                Some(n) if n >= 1 && when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule => {
                    Some(n as u32)
                }
                Some(n) => {
                    return Err(invalid(
                        &context,
                        format!(
                        "minDomains {n} needs to be at least 1 and whenUnsatisfiable DoNotSchedule"
                    ),
                    ))
                }
            };
            let policy =
                |p: &Option<String>, default: InclusionPolicy, what: &str| match p.as_deref() {
                    None => Ok(default),
                    Some("Honor") => Ok(InclusionPolicy::Honor),
                    Some("Ignore") => Ok(InclusionPolicy::Ignore),
                    Some(other) => Err(invalid(
                        &context,
                        format!("{what} {other:?} is not Honor or Ignore"),
                    )),
                };
            let node_affinity_policy = policy(
                &c.node_affinity_policy,
                InclusionPolicy::Honor,
                "nodeAffinityPolicy",
            )?;
            let node_taints_policy = policy(
                &c.node_taints_policy,
                InclusionPolicy::Ignore,
                "nodeTaintsPolicy",
            )?;
            let mut selector = match &c.label_selector {
                Some(s) => Some(label_selector(s).map_err(req_err(context.clone()))?),
                None => None,
            };
            if let Some(sel) = selector.as_mut() {
                for key in c.match_label_keys.iter().flatten() {
                    if let Some(v) = labels.get(key) {
                        sel.add(key, Requirement::exactly(v.clone()));
                    }
                }
            }
            topology_spread.push(TopologySpreadConstraint {
                max_skew: c.max_skew as u32,
                topology_key: c.topology_key.clone(),
                when_unsatisfiable,
                selector,
                min_domains,
                node_affinity_policy,
                node_taints_policy,
            });
        }

        let mut host_ports = Vec::new();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
        {
            for p in c.ports.iter().flatten() {
                let Some(port) = p.host_port.filter(|p| *p != 0) else {
                    continue;
                };
                let port = u16::try_from(port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        invalid(
                            &format!("container {}", c.name),
                            format!("hostPort {port} is not in 1..65535"),
                        )
                    })?;
                host_ports.push(HostPort {
                    port,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                    ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
        host_ports.sort();
        host_ports.dedup();

        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| OwnerRef {
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
            });

        Ok(Pod {
            uid: pod
                .metadata
                .uid
                .clone()
                .unwrap_or_else(|| format!("{namespace}/{name}")),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            owner,
            spec: SchedulingSpec {
                namespace,
                labels,
                requests,
                priority: spec.priority.unwrap_or(0),
                node_selector,
                required_node_affinity,
                preferred_node_affinity,
                tolerations,
                pod_affinity,
                pod_anti_affinity,
                preferred_pod_affinity,
                preferred_pod_anti_affinity,
                topology_spread,
                host_ports,
                volume_zones: None,
            },
            name,
        })
    }
}

fn container_requests(pod: &str, c: &core::Container) -> Result<Resources, PodError> {
    let Some(res) = &c.resources else {
        return Ok(Resources::default());
    };
    let mut list: BTreeMap<&str, &str> = BTreeMap::new();
    // A resource with only a limit is requested at the limit (the API server's defaulting).
    for (k, v) in res.limits.iter().flatten() {
        list.insert(k.as_str(), v.0.as_str());
    }
    for (k, v) in res.requests.iter().flatten() {
        list.insert(k.as_str(), v.0.as_str());
    }
    Resources::from_quantities(list).map_err(|source| PodError::Resource {
        pod: pod.to_string(),
        container: c.name.clone(),
        source,
    })
}

/// Whether a drain must evict this pod: not a DaemonSet's, not a mirror pod, not finished, not already terminating.
pub fn is_evictable(pod: &core::Pod) -> bool {
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !daemon && !mirror && !finished && pod.metadata.deletion_timestamp.is_none()
}

/// Whether kube-scheduler gave up on this pod (PodScheduled=False, reason Unschedulable) and berth may help:
/// not bound, not being deleted, not a DaemonSet's (a new node brings its own daemon pods).
pub fn is_unschedulable(pod: &core::Pod) -> bool {
    let spec_ok = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.node_name.as_deref().unwrap_or_default().is_empty());
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let status = pod.status.as_ref();
    let pending = status
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    let marked = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        });
    spec_ok && !daemon && pending && marked && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's effective requests as the scheduler computes them (see the module docs), with `pods = 1`.
pub fn pod_requests(pod: &str, spec: &core::PodSpec) -> Result<Resources, PodError> {
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&container_requests(pod, c)?);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(pod, c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            total.add(&r);
            init_peak = init_peak.max(&sidecars);
        } else {
            let mut during = r.clone();
            during.add(&sidecars);
            init_peak = init_peak.max(&during);
        }
    }
    let mut requests = total.max(&init_peak);
    if let Some(overhead) = &spec.overhead {
        let o =
            Resources::from_quantities(overhead.iter().map(|(k, v)| (k.as_str(), v.0.as_str())))
                .map_err(|source| PodError::Overhead {
                    pod: pod.to_string(),
                    source,
                })?;
        requests.add(&o);
    }
    requests.pods = 1;
    Ok(requests)
}

/// One nodeSelectorTerm as a conjunction; `matchFields` on `metadata.name` becomes the [`NODE_NAME_FIELD`] key.
pub fn node_selector_term(term: &core::NodeSelectorTerm) -> Result<Requirements, RequirementError> {
    let mut r = Requirements::new();
    for e in term.match_expressions.iter().flatten() {
        r.add_expression(&e.key, &e.operator, e.values.as_deref().unwrap_or(&[]))?;
    }
    for e in term.match_fields.iter().flatten() {
        r.add_expression(&e.key, &e.operator, e.values.as_deref().unwrap_or(&[]))?;
    }
    Ok(r)
}

/// A metav1.LabelSelector as requirements (label selectors have the same In/NotIn/Exists/DoesNotExist semantics).
pub fn label_selector(s: &meta::LabelSelector) -> Result<Requirements, RequirementError> {
    let mut r = Requirements::from_labels(s.match_labels.iter().flatten());
    for e in s.match_expressions.iter().flatten() {
        match e.operator.as_str() {
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(RequirementError::UnknownOperator {
                    key: e.key.clone(),
                    operator: other.to_string(),
                })
            }
        }
        r.add_expression(&e.key, &e.operator, e.values.as_deref().unwrap_or(&[]))?;
    }
    Ok(r)
}

fn affinity_term(
    pod: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    t: &core::PodAffinityTerm,
    context: &str,
) -> Result<PodAffinityTerm, PodError> {
    let err = |source| PodError::Requirement {
        pod: pod.to_string(),
        context: context.to_string(),
        source,
    };
    if t.topology_key.is_empty() {
        return Err(PodError::Invalid {
            pod: pod.to_string(),
            context: context.to_string(),
            message: "topologyKey must not be empty".into(),
        });
    }
    let mut selector = match &t.label_selector {
        Some(s) => Some(label_selector(s).map_err(err)?),
        None => None,
    };
    if let Some(sel) = selector.as_mut() {
        for key in t.match_label_keys.iter().flatten() {
            if let Some(v) = labels.get(key) {
                sel.add(key, Requirement::exactly(v.clone()));
            }
        }
        for key in t.mismatch_label_keys.iter().flatten() {
            if let Some(v) = labels.get(key) {
                sel.add(
                    key,
                    Requirement {
                        allows_absent: true,
                        values: ValueSet::AllExcept([v.clone()].into()),
                        ..Default::default()
                    },
                );
            }
        }
    }
    let names: BTreeSet<String> = t.namespaces.iter().flatten().cloned().collect();
    let ns_selector = match &t.namespace_selector {
        Some(s) => Some(label_selector(s).map_err(err)?),
        None => None,
    };
    let namespaces = if names.is_empty() && ns_selector.is_none() {
        NamespaceScope::only(namespace)
    } else {
        NamespaceScope {
            names,
            selector: ns_selector,
        }
    };
    Ok(PodAffinityTerm {
        selector,
        namespaces,
        topology_key: t.topology_key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> core::Pod {
        serde_json::from_value(v).unwrap()
    }

    fn container(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": name, "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    #[test]
    fn requests_follow_the_kubernetes_formula() {
        // Regular sum: 300m/300Mi. Init: plain 1 cpu alone; sidecar 100m joins everything after it.
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "containers": [container("a", "100m", "100Mi"), container("b", "200m", "200Mi")],
                "initContainers": [
                    container("init1", "1", "50Mi"),
                    {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
                    container("init2", "950m", "10Mi"),
                ],
                "overhead": {"cpu": "10m"}
            }
        }));
        let p = Pod::from_k8s(&p).unwrap();
        // cpu: max(300 + 100 sidecar, 1000, 100 + 950 = 1050) + 10 overhead = 1060.
        assert_eq!(p.spec.requests.cpu_millis, 1060);
        // memory: max(300Mi + 1Gi, 50Mi, 1Gi + 10Mi) = 1324Mi.
        assert_eq!(p.spec.requests.memory_bytes, 1324 << 20);
        assert_eq!(p.spec.requests.pods, 1);
    }

    #[test]
    fn limits_default_requests() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}}}]}}));
        let p = Pod::from_k8s(&p).unwrap();
        assert_eq!(p.spec.requests.cpu_millis, 2000);
        assert_eq!(p.spec.requests.extended("nvidia.com/gpu"), 1);
        assert_eq!(p.spec.namespace, "default");
    }

    #[test]
    fn malformed_pods_are_errors_not_panics() {
        let cases = [
            (
                json!({"metadata": {}, "spec": {"containers": []}}),
                "missing_name",
            ),
            (json!({"metadata": {"name": "p"}}), "missing_spec"),
            (
                json!({"metadata": {"name": "p"}, "spec": {"containers": [container("a", "lots", "1Gi")]}}),
                "invalid_resources",
            ),
            (
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "k", "operator": "Near", "values": ["x"]}]}]}}}}}),
                "invalid_requirement",
            ),
            (
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}),
                "invalid_toleration",
            ),
            (
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "topologySpreadConstraints": [
                {"maxSkew": 0, "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule"}]}}),
                "invalid_spec",
            ),
            (
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "Sometimes"}]}}),
                "invalid_spec",
            ),
            (
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 70000}]}]}}),
                "invalid_spec",
            ),
        ];
        for (i, (v, category)) in cases.into_iter().enumerate() {
            let err = Pod::from_k8s(&pod(v)).unwrap_err();
            assert_eq!(err.category(), category, "case {i}: {err}");
        }
    }

    #[test]
    fn affinity_spread_and_ports_are_read() {
        let p = pod(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "abc"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u1", "controller": true}]},
            "spec": {
                "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}],
                "nodeSelector": {"disk": "ssd"},
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
                        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]}]}]},
                        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "preference": {"matchExpressions": [{"key": "x", "operator": "Exists"}]}}]},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname", "matchLabelKeys": ["pod-template-hash"]}]}
                },
                "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"], "nodeTaintsPolicy": "Honor"}]
            }
        }));
        let p = Pod::from_k8s(&p).unwrap();
        assert_eq!(p.owner.as_ref().unwrap().kind, "ReplicaSet");
        assert_eq!(p.spec.required_node_affinity.len(), 2);
        // Each term carries the nodeSelector too.
        assert!(p
            .spec
            .required_node_affinity
            .iter()
            .all(|t| t.get("disk").is_some()));
        assert_eq!(p.spec.preferred_node_affinity[0].weight, 5);
        let anti = &p.spec.pod_anti_affinity[0];
        assert_eq!(anti.namespaces, NamespaceScope::only("shop"));
        let same_hash: BTreeMap<String, String> = [
            ("app".into(), "web".into()),
            ("pod-template-hash".into(), "abc".into()),
        ]
        .into();
        let other_hash: BTreeMap<String, String> = [
            ("app".into(), "web".into()),
            ("pod-template-hash".into(), "def".into()),
        ]
        .into();
        assert!(anti.selects("shop", &same_hash, None));
        assert!(!anti.selects("shop", &other_hash, None));
        assert!(!anti.selects("other", &same_hash, None));
        let spread = &p.spec.topology_spread[0];
        assert_eq!(
            (spread.max_skew, spread.when_unsatisfiable),
            (2, WhenUnsatisfiable::ScheduleAnyway)
        );
        assert_eq!(
            (spread.node_affinity_policy, spread.node_taints_policy),
            (InclusionPolicy::Honor, InclusionPolicy::Honor)
        );
        assert!(spread.selects(&same_hash) && !spread.selects(&other_hash));
        assert_eq!(
            p.spec.host_ports,
            vec![HostPort {
                port: 8080,
                protocol: "TCP".into(),
                ip: String::new()
            }]
        );
    }

    #[test]
    fn host_port_conflicts() {
        let hp = |port, proto: &str, ip: &str| HostPort {
            port,
            protocol: proto.into(),
            ip: ip.into(),
        };
        assert!(hp(80, "TCP", "").conflicts(&hp(80, "TCP", "10.0.0.1")));
        assert!(!hp(80, "TCP", "").conflicts(&hp(80, "UDP", "")));
        assert!(!hp(80, "TCP", "10.0.0.1").conflicts(&hp(80, "TCP", "10.0.0.2")));
        assert!(!hp(80, "TCP", "").conflicts(&hp(81, "TCP", "")));
    }

    #[test]
    fn namespace_selector_scopes() {
        let all = NamespaceScope {
            names: BTreeSet::new(),
            selector: Some(Requirements::new()),
        };
        assert!(all.contains("anything", None));
        let team: BTreeMap<String, String> = [("team".into(), "a".into())].into();
        let by_label = NamespaceScope {
            names: BTreeSet::new(),
            selector: Some(Requirements::from_labels(&team)),
        };
        assert!(by_label.contains("x", Some(&team)));
        assert!(!by_label.contains("x", None));
    }
}
