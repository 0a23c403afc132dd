//! The workload side of a simulation: the emulator runs no controllers, so the simulation plays the ReplicaSet,
//! Job and DaemonSet controllers over the emulator's store (keep N pods, run pods to completion, one pod per node),
//! and measures what a user feels: how long each pod waited between being created and running.
//!
//! Everything here is driven by the runner's one-second tick on virtual time, in name order, so that a scenario
//! and seed always produce the same pods with the same names.

use super::scenario::{DaemonSetEvent, DeploymentEvent, JobEvent, PdbEvent, PodTemplate};
use crate::emulator::error::ApiError;
use crate::emulator::store::{DeleteOptions, ListQuery, PatchKind, Store, Stored, WriteOptions};
use crate::model::quantity::{parse_cpu_millis, parse_units};
use crate::model::resources::Resources;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Namespace of every simulated workload.
pub const NAMESPACE: &str = "default";
/// Label naming the workload a pod belongs to.
pub const WORKLOAD_LABEL: &str = "sim.berth.dev/workload";
const FIELD_MANAGER: &str = "berth-simulate";

struct Deployment {
    replicas: u32,
    template: PodTemplate,
    owner: Value,
}

struct Job {
    completions: u32,
    parallelism: u32,
    run_for: Duration,
    template: PodTemplate,
    owner: Value,
    succeeded: u32,
}

struct DaemonSet {
    template: PodTemplate,
    owner: Value,
}

/// The simulated workload controllers and what they measured.
#[derive(Default)]
pub struct Workloads {
    deployments: BTreeMap<String, Deployment>,
    jobs: BTreeMap<String, Job>,
    daemonsets: BTreeMap<String, DaemonSet>,
    /// Requests of one pod, by workload name (pods are sampled by label, never parsed).
    requests: BTreeMap<String, Resources>,
    /// Pods not yet seen running: name -> time created.
    waiting: BTreeMap<String, Duration>,
    /// Pods seen running: name -> time first seen running (jobs complete `run_for` after it).
    started: BTreeMap<String, Duration>,
    next_pod: u64,
    /// The pods' and nodes' collection versions at the start of the last reconcile, and the earliest moment a
    /// running job pod completes: until one of them changes (or a workload is added or scaled, which clears it), a
    /// reconcile would find exactly what the last one found and do nothing.
    settled: Option<Settled>,
    /// Pods running on spot-interrupted nodes at the warning, not gone yet: when one goes (evicted or lost), the
    /// pod its controller creates in its place in the same pass is its replacement.
    interrupted: BTreeSet<String>,
    /// Replacement pods of interrupted pods, not yet running.
    replacements: BTreeSet<String>,
    /// Interrupted pods gone in this pass, by workload, not yet replaced.
    owed: BTreeMap<String, u32>,
    /// Seconds each pod waited from creation to running, in the order they started.
    pub pending_seconds: Vec<u64>,
    /// Of those, the replacements of interrupted pods.
    pub replacement_pending_seconds: Vec<u64>,
    pub pods_created: u64,
    /// PodDisruptionBudgets by name: (deployment, minAvailable or maxUnavailable as given).
    pub pdbs: BTreeMap<String, String>,
}

#[derive(Clone, Copy, PartialEq)]
struct Settled {
    versions: (u64, u64),
    next_completion: Option<Duration>,
}

fn resource_type(
    store: &Store,
    resource: (&str, &str),
) -> Result<Arc<crate::emulator::resources::ResourceType>, ApiError> {
    store
        .resource_type(resource.0, resource.1)
        .ok_or_else(|| ApiError::Internal(format!("{} are not registered", resource.1)))
}

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: FIELD_MANAGER.into(),
        ..Default::default()
    }
}

fn label(s: &Stored, key: &str) -> Option<String> {
    s.labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// The requests of one pod of this template.
pub fn template_requests(t: &PodTemplate) -> Resources {
    Resources::new(
        parse_cpu_millis(&t.cpu).unwrap_or(0),
        parse_units(&t.memory).unwrap_or(0),
    )
}

impl Workloads {
    pub fn new() -> Workloads {
        Workloads::default()
    }

    /// Requests of a running pod with these labels, if it is one of ours.
    pub fn requests_of(&self, s: &Stored) -> Option<&Resources> {
        label(s, WORKLOAD_LABEL).and_then(|w| self.requests.get(&w))
    }

    fn owner(
        store: &Store,
        group: &str,
        resource: &str,
        kind: &str,
        api_version: &str,
        name: &str,
        spec: Value,
    ) -> Result<Value, ApiError> {
        let rt = resource_type(store, (group, resource))?;
        let obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec});
        let created = store.create(&rt, NAMESPACE, obj, &opts())?;
        Ok(
            json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": created["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]),
        )
    }

    fn selector_spec(name: &str, replicas: u32, t: &PodTemplate) -> Value {
        json!({"replicas": replicas, "selector": {"matchLabels": {WORKLOAD_LABEL: name}},
               "template": {"metadata": {"labels": {WORKLOAD_LABEL: name}}, "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                   "resources": {"requests": {"cpu": t.cpu, "memory": t.memory}}}]}}})
    }

    pub fn add_deployment(&mut self, store: &Store, d: &DeploymentEvent) -> Result<(), ApiError> {
        self.settled = None;
        let owner = Self::owner(
            store,
            "apps",
            "replicasets",
            "ReplicaSet",
            "apps/v1",
            &d.name,
            Self::selector_spec(&d.name, d.replicas, &d.pod),
        )?;
        self.requests
            .insert(d.name.clone(), template_requests(&d.pod));
        self.deployments.insert(
            d.name.clone(),
            Deployment {
                replicas: d.replicas,
                template: d.pod.clone(),
                owner,
            },
        );
        Ok(())
    }

    /// Scales a deployment; answers false when there is none of that name.
    pub fn scale(&mut self, store: &Store, name: &str, replicas: u32) -> Result<bool, ApiError> {
        self.settled = None;
        let Some(d) = self.deployments.get_mut(name) else {
            return Ok(false);
        };
        d.replicas = replicas;
        let rt = resource_type(store, ("apps", "replicasets"))?;
        store.patch(
            &rt,
            NAMESPACE,
            name,
            PatchKind::Merge,
            &json!({"spec": {"replicas": replicas}}),
            &opts(),
        )?;
        Ok(true)
    }

    pub fn add_job(&mut self, j: &JobEvent, run_for: Duration) {
        self.settled = None;
        // The emulator has no Job kind; the pods still name their Job as owner, as a real Job's pods do.
        let owner = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": j.name, "uid": format!("sim-job-{}", j.name), "controller": true}]);
        self.requests
            .insert(j.name.clone(), template_requests(&j.pod));
        self.jobs.insert(
            j.name.clone(),
            Job {
                completions: j.completions,
                parallelism: j.parallelism,
                run_for,
                template: j.pod.clone(),
                owner,
                succeeded: 0,
            },
        );
    }

    pub fn add_daemonset(&mut self, store: &Store, d: &DaemonSetEvent) -> Result<(), ApiError> {
        self.settled = None;
        let mut spec = Self::selector_spec(&d.name, 0, &d.pod);
        if let Some(m) = spec.as_object_mut() {
            m.remove("replicas");
        }
        let owner = Self::owner(
            store,
            "apps",
            "daemonsets",
            "DaemonSet",
            "apps/v1",
            &d.name,
            spec,
        )?;
        self.requests
            .insert(d.name.clone(), template_requests(&d.pod));
        self.daemonsets.insert(
            d.name.clone(),
            DaemonSet {
                template: d.pod.clone(),
                owner,
            },
        );
        Ok(())
    }

    pub fn add_pdb(&mut self, store: &Store, p: &PdbEvent) -> Result<(), ApiError> {
        let rt = resource_type(store, ("policy", "poddisruptionbudgets"))?;
        let mut spec = json!({"selector": {"matchLabels": {WORKLOAD_LABEL: p.deployment}}});
        let rule = match (&p.min_available, &p.max_unavailable) {
            (Some(m), _) => {
                spec["minAvailable"] = m.to_json();
                format!("minAvailable {}", m.to_json())
            }
            (None, Some(m)) => {
                spec["maxUnavailable"] = m.to_json();
                format!("maxUnavailable {}", m.to_json())
            }
            (None, None) => String::new(),
        };
        let obj = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": p.name, "namespace": NAMESPACE}, "spec": spec});
        store.create(&rt, NAMESPACE, obj, &opts())?;
        self.pdbs
            .insert(p.name.clone(), format!("{} {rule}", p.deployment));
        Ok(())
    }

    fn pod(
        &mut self,
        workload: &str,
        t: &PodTemplate,
        owner: &Value,
        node: Option<&str>,
        now: Duration,
    ) -> (String, Value) {
        self.next_pod += 1;
        let name = format!("{workload}-{:06}", self.next_pod);
        let mut spec = json!({"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": t.cpu, "memory": t.memory}}}], "terminationGracePeriodSeconds": 0});
        if !t.node_selector.is_empty() {
            spec["nodeSelector"] = json!(t.node_selector);
        }
        if !t.tolerations.is_empty() {
            spec["tolerations"] = json!(t.tolerations);
        }
        if let Some(skew) = t.zone_spread {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": skew, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {WORKLOAD_LABEL: workload}}}]);
        }
        if let Some(p) = t.priority {
            spec["priority"] = json!(p);
        }
        match node {
            // DaemonSet pods are placed by their controller and tolerate every taint, as real ones do.
            Some(n) => {
                spec["nodeName"] = json!(n);
                spec["tolerations"] = json!([{"operator": "Exists"}]);
            }
            None => {
                self.waiting.insert(name.clone(), now);
                if let Some(n) = self.owed.get_mut(workload).filter(|n| **n > 0) {
                    *n -= 1;
                    self.replacements.insert(name.clone());
                }
            }
        }
        self.pods_created += 1;
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {WORKLOAD_LABEL: workload}, "ownerReferences": owner}, "spec": spec});
        (name, obj)
    }

    /// One pass of every workload controller at virtual time `now` (since the scenario began).
    pub fn reconcile(&mut self, store: &Store, now: Duration) -> Result<(), ApiError> {
        let pods_rt = resource_type(store, ("", "pods"))?;
        let nodes_rt = resource_type(store, ("", "nodes"))?;
        // Read before this pass's own writes, so the pass after them looks once more.
        let versions = (
            store.collection_version(&pods_rt),
            store.collection_version(&nodes_rt),
        );
        if let Some(s) = self.settled {
            if s.versions == versions && s.next_completion.is_none_or(|t| now < t) {
                return Ok(());
            }
        }
        let pods = store
            .list(&pods_rt, Some(NAMESPACE), &ListQuery::default())?
            .items;
        // Borrowed, not cloned: this runs every simulated second over every pod.
        let mut by_workload: HashMap<&str, Vec<&Arc<Stored>>> = HashMap::new();
        let alive: HashSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        for p in &pods {
            if p.phase == "Running" && !p.node_name.is_empty() {
                if let Some(created) = self.waiting.remove(&p.name) {
                    let waited = now.saturating_sub(created).as_secs();
                    self.pending_seconds.push(waited);
                    if self.replacements.remove(&p.name) {
                        self.replacement_pending_seconds.push(waited);
                    }
                }
                if !self.started.contains_key(&p.name) {
                    self.started.insert(p.name.clone(), now);
                }
            }
            if let Some((_, w)) = p.labels.iter().find(|(k, _)| k == WORKLOAD_LABEL) {
                by_workload.entry(w.as_str()).or_default().push(p);
            }
        }
        // Pods deleted while waiting (scale-down, a lost node) never ran: forget them.
        self.waiting.retain(|n, _| alive.contains(n.as_str()));
        self.started.retain(|n, _| alive.contains(n.as_str()));
        self.replacements.retain(|n| alive.contains(n.as_str()));
        // Interrupted pods gone since the last pass: their controllers replace them in this one.
        self.owed.clear();
        let gone: Vec<String> = self
            .interrupted
            .iter()
            .filter(|n| !alive.contains(n.as_str()))
            .cloned()
            .collect();
        for n in gone {
            self.interrupted.remove(&n);
            if let Some((workload, _)) = n.rsplit_once('-') {
                *self.owed.entry(workload.to_string()).or_default() += 1;
            }
        }
        let mut creates: Vec<Value> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();

        let deployments: Vec<String> = self.deployments.keys().cloned().collect();
        for name in deployments {
            let live: Vec<&Arc<Stored>> = by_workload
                .get(name.as_str())
                .map(|v| {
                    v.iter()
                        .copied()
                        .filter(|p| !matches!(p.phase.as_str(), "Succeeded" | "Failed"))
                        .collect()
                })
                .unwrap_or_default();
            let d = &self.deployments[&name];
            let (want, template, owner) =
                (d.replicas as usize, d.template.clone(), d.owner.clone());
            if live.len() < want {
                for _ in live.len()..want {
                    creates.push(self.pod(&name, &template, &owner, None, now).1);
                }
            } else if live.len() > want {
                // As a ReplicaSet does: unscheduled pods go first, then the newest.
                let mut victims = live.clone();
                victims.sort_by(|a, b| {
                    (!a.node_name.is_empty())
                        .cmp(&!b.node_name.is_empty())
                        .then_with(|| b.name.cmp(&a.name))
                });
                deletes.extend(
                    victims
                        .iter()
                        .take(live.len() - want)
                        .map(|p| p.name.clone()),
                );
            }
        }

        let jobs: Vec<String> = self.jobs.keys().cloned().collect();
        let status_opts = WriteOptions {
            subresource: Some("status".into()),
            ..opts()
        };
        let mut next_completion: Option<Duration> = None;
        for name in jobs {
            let run_for = self.jobs[&name].run_for;
            let mut active = 0u32;
            for p in by_workload
                .get(name.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                if matches!(p.phase.as_str(), "Succeeded" | "Failed") {
                    continue;
                }
                let completes_at = self.started.get(&p.name).map(|s| *s + run_for);
                if completes_at.is_some_and(|t| now >= t) {
                    store.patch(
                        &pods_rt,
                        NAMESPACE,
                        &p.name,
                        PatchKind::Merge,
                        &json!({"status": {"phase": "Succeeded"}}),
                        &status_opts,
                    )?;
                    self.started.remove(&p.name);
                    if let Some(j) = self.jobs.get_mut(&name) {
                        j.succeeded += 1;
                    }
                } else {
                    active += 1;
                    if let Some(t) = completes_at {
                        next_completion = Some(next_completion.map_or(t, |n| n.min(t)));
                    }
                }
            }
            let j = &self.jobs[&name];
            let room = j
                .parallelism
                .saturating_sub(active)
                .min(j.completions.saturating_sub(j.succeeded + active));
            let (template, owner) = (j.template.clone(), j.owner.clone());
            for _ in 0..room {
                creates.push(self.pod(&name, &template, &owner, None, now).1);
            }
        }

        if !self.daemonsets.is_empty() {
            let nodes: Vec<String> = store
                .list(&nodes_rt, None, &ListQuery::default())?
                .items
                .iter()
                .map(|n| n.name.clone())
                .collect();
            let names: Vec<String> = self.daemonsets.keys().cloned().collect();
            for name in names {
                let covered: HashSet<&str> = by_workload
                    .get(name.as_str())
                    .map(|v| v.iter().map(|p| p.node_name.as_str()).collect())
                    .unwrap_or_default();
                let (template, owner) = (
                    self.daemonsets[&name].template.clone(),
                    self.daemonsets[&name].owner.clone(),
                );
                for node in nodes.iter().filter(|n| !covered.contains(n.as_str())) {
                    creates.push(self.pod(&name, &template, &owner, Some(node), now).1);
                }
            }
        }

        for name in deletes {
            self.waiting.remove(&name);
            match store.delete(&pods_rt, NAMESPACE, &name, &DeleteOptions::default()) {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for obj in creates {
            match store.create(&pods_rt, NAMESPACE, obj, &opts()) {
                // A DaemonSet pod for a node that left meanwhile.
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.settled = Some(Settled {
            versions,
            next_completion,
        });
        Ok(())
    }

    /// Marks pods that run on a node EC2 is reclaiming: the pods created in their place are their replacements.
    pub fn mark_interrupted(&mut self, pods: impl IntoIterator<Item = String>) {
        self.interrupted.extend(pods);
    }

    /// Replacements of interrupted pods created and still waiting to run, with how long each has waited.
    pub fn replacements_still_waiting(&self, now: Duration) -> Vec<u64> {
        self.replacements
            .iter()
            .filter_map(|n| self.waiting.get(n))
            .map(|c| now.saturating_sub(*c).as_secs())
            .collect()
    }

    /// How many pods are created and not yet running.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Pods created and still waiting to run, with how long each has waited.
    pub fn still_waiting(&self, now: Duration) -> Vec<u64> {
        self.waiting
            .values()
            .map(|c| now.saturating_sub(*c).as_secs())
            .collect()
    }

    /// Completions of each job so far.
    pub fn job_progress(&self) -> BTreeMap<String, (u32, u32)> {
        self.jobs
            .iter()
            .map(|(n, j)| (n.clone(), (j.succeeded, j.completions)))
            .collect()
    }

    /// Whether every job has all its completions.
    pub fn jobs_done(&self) -> bool {
        self.jobs.values().all(|j| j.succeeded >= j.completions)
    }
}
