//! The cluster as the autoscaler reads it: one reflector cache per kind, read together as [`ClusterObjects`].
//!
//! The provisioner and the disruption controller plan over the same caches, so one solve never sees a Machine
//! without the MachineDeployment replicas that asked for it from a different moment than the other. Objects are
//! trimmed before they are stored (managed fields, container statuses), which is most of a Pod's bytes at scale.

use crate::api::{Cluster, Machine, MachineClass, MachineDeployment};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::watch as signal;

/// Everything the planners read, as of one moment (each list is a cheap copy of `Arc`s).
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub pods: Vec<Arc<Pod>>,
    pub nodes: Vec<Arc<Node>>,
    pub machines: Vec<Arc<Machine>>,
    pub machine_deployments: Vec<Arc<MachineDeployment>>,
    pub machine_classes: Vec<Arc<MachineClass>>,
    pub clusters: Vec<Arc<Cluster>>,
    pub daemon_sets: Vec<Arc<DaemonSet>>,
    pub pdbs: Vec<Arc<PodDisruptionBudget>>,
}

impl ClusterObjects {
    /// The Cluster whose `spec.clusterName` is `name`; without a name, the only Cluster (none when there are several:
    /// which policy applies would be a guess).
    pub fn cluster(&self, name: Option<&str>) -> Option<&Cluster> {
        match name {
            Some(n) => self
                .clusters
                .iter()
                .find(|c| c.spec.cluster_name == n)
                .map(|c| c.as_ref()),
            None if self.clusters.len() == 1 => Some(self.clusters[0].as_ref()),
            None => None,
        }
    }
}

/// Reflector caches of every kind the autoscaler reads, and a signal raised when a pod may need capacity or a
/// Machine may have failed (the provisioner's reasons to solve again).
#[derive(Clone)]
pub struct ClusterCache {
    pods: Store<Pod>,
    nodes: Store<Node>,
    machines: Store<Machine>,
    machine_deployments: Store<MachineDeployment>,
    machine_classes: Store<MachineClass>,
    clusters: Store<Cluster>,
    daemon_sets: Store<DaemonSet>,
    pdbs: Store<PodDisruptionBudget>,
    changed: signal::Sender<u64>,
    /// True once every kind has been listed. kube-runtime's `Store::wait_until_ready` wakes only the last task to
    /// poll it (a oneshot receiver behind a shared lock), so one task waits there and every other reader waits here;
    /// three controllers waiting on the stores directly left the provisioner asleep forever.
    synced: signal::Sender<bool>,
    /// Whether each watch is steady: see [`ClusterCache::view`].
    health: Arc<WatchHealth>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

/// How steady the watches are: how many are re-listing now, and how many errors (a stream cut, a 410 Gone, a
/// failed list) they have met since they started.
#[derive(Debug, Default)]
pub struct WatchHealth {
    relisting: std::sync::atomic::AtomicUsize,
    errors: std::sync::atomic::AtomicU64,
}

/// berth's view of the cluster as a whole, for decisions that must never rest on a missing observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewHealth {
    pub synced: bool,
    /// Watches re-listing now (after an error or a 410 Gone their objects may be stale until they finish).
    pub relisting: usize,
    /// Errors the watches have met so far; a caller compares it with its last look to see a restart in between.
    pub errors: u64,
}

impl ViewHealth {
    /// Why this view is not to be trusted, comparing with the error count of the caller's last look.
    pub fn stale_since(&self, errors_before: u64) -> Option<String> {
        if !self.synced {
            Some("caches not synced".into())
        } else if self.relisting > 0 {
            Some(format!("{} watches re-listing", self.relisting))
        } else if self.errors != errors_before {
            Some(format!(
                "{} watch errors since the last look",
                self.errors - errors_before.min(self.errors)
            ))
        } else {
            None
        }
    }
}

impl ClusterCache {
    /// Starts one watch per kind. The caches fill in the background; [`ClusterCache::wait_synced`] waits for the
    /// first full list of each.
    pub fn start(client: &Client) -> ClusterCache {
        let (changed, _) = signal::channel(0u64);
        let mut tasks = Vec::new();
        let health = Arc::new(WatchHealth::default());
        let on_pod = {
            let changed = changed.clone();
            move |pod: &Pod| {
                if crate::model::pod::is_unschedulable(pod) {
                    changed.send_modify(|generation| *generation += 1);
                }
            }
        };
        let on_machine = {
            let changed = changed.clone();
            move |m: &Machine| {
                // A failed or vanishing Machine no longer counts as capacity: its pods may need another launch.
                if m.metadata.deletion_timestamp.is_some()
                    || m.status
                        .as_ref()
                        .is_some_and(|s| s.phase == crate::api::MachinePhase::Failed)
                {
                    changed.send_modify(|generation| *generation += 1);
                }
            }
        };
        let pods = watch(
            Api::all(client.clone()),
            trim_pod,
            on_pod,
            &mut tasks,
            &health,
        );
        let nodes = watch(
            Api::all(client.clone()),
            trim_meta::<Node>,
            |_: &Node| {},
            &mut tasks,
            &health,
        );
        let machines = watch(
            Api::all(client.clone()),
            trim_meta::<Machine>,
            on_machine,
            &mut tasks,
            &health,
        );
        let machine_deployments = watch(
            Api::all(client.clone()),
            trim_meta::<MachineDeployment>,
            |_: &MachineDeployment| {},
            &mut tasks,
            &health,
        );
        let machine_classes = watch(
            Api::all(client.clone()),
            trim_meta::<MachineClass>,
            |_: &MachineClass| {},
            &mut tasks,
            &health,
        );
        let clusters = watch(
            Api::all(client.clone()),
            trim_meta::<Cluster>,
            |_: &Cluster| {},
            &mut tasks,
            &health,
        );
        let daemon_sets = watch(
            Api::all(client.clone()),
            trim_meta::<DaemonSet>,
            |_: &DaemonSet| {},
            &mut tasks,
            &health,
        );
        let pdbs = watch(
            Api::all(client.clone()),
            trim_meta::<PodDisruptionBudget>,
            |_: &PodDisruptionBudget| {},
            &mut tasks,
            &health,
        );
        let (synced, _) = signal::channel(false);
        let stores = (
            pods.clone(),
            nodes.clone(),
            machines.clone(),
            machine_deployments.clone(),
            machine_classes.clone(),
            clusters.clone(),
            daemon_sets.clone(),
            pdbs.clone(),
        );
        let done = synced.clone();
        tasks.push(tokio::spawn(async move {
            let _ = tokio::join!(
                stores.0.wait_until_ready(),
                stores.1.wait_until_ready(),
                stores.2.wait_until_ready(),
                stores.3.wait_until_ready(),
                stores.4.wait_until_ready(),
                stores.5.wait_until_ready(),
                stores.6.wait_until_ready(),
                stores.7.wait_until_ready(),
            );
            done.send_replace(true);
        }));
        ClusterCache {
            pods,
            nodes,
            machines,
            machine_deployments,
            machine_classes,
            clusters,
            daemon_sets,
            pdbs,
            changed,
            synced,
            health,
            tasks: Arc::new(tasks),
        }
    }

    /// Waits until every kind has been listed once. Any number of tasks may wait.
    pub async fn wait_synced(&self) {
        let _ = self.synced.subscribe().wait_for(|s| *s).await;
    }

    /// Whether the caches can be trusted now.
    pub fn view(&self) -> ViewHealth {
        use std::sync::atomic::Ordering;
        ViewHealth {
            synced: *self.synced.borrow(),
            relisting: self.health.relisting.load(Ordering::SeqCst),
            errors: self.health.errors.load(Ordering::SeqCst),
        }
    }

    /// The objects as cached now.
    pub fn objects(&self) -> ClusterObjects {
        ClusterObjects {
            pods: self.pods.state(),
            nodes: self.nodes.state(),
            machines: self.machines.state(),
            machine_deployments: self.machine_deployments.state(),
            machine_classes: self.machine_classes.state(),
            clusters: self.clusters.state(),
            daemon_sets: self.daemon_sets.state(),
            pdbs: self.pdbs.state(),
        }
    }

    /// A counter that moves when an unschedulable pod appears or changes, or a Machine fails or goes.
    pub fn changes(&self) -> signal::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Stops the watches.
    pub fn stop(&self) {
        for t in self.tasks.iter() {
            t.abort();
        }
    }
}

fn watch<K>(
    api: Api<K>,
    trim: fn(&mut K),
    on_applied: impl Fn(&K) + Send + Sync + 'static,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    health: &Arc<WatchHealth>,
) -> Store<K>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| event.modify(trim));
    let health = health.clone();
    // The first list is not a re-list: `synced` covers it. A re-list cut short starts again without finishing, so
    // the shared count moves only on this watch's own transitions.
    let mut listed_once = false;
    let mut relisting = false;
    let task = reflector::reflector(writer, stream).for_each(move |r| {
        use std::sync::atomic::Ordering;
        match r {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on_applied(&o),
            Ok(watcher::Event::Init) if listed_once && !relisting => {
                relisting = true;
                health.relisting.fetch_add(1, Ordering::SeqCst);
            }
            Ok(watcher::Event::InitDone) => {
                if relisting {
                    relisting = false;
                    health.relisting.fetch_sub(1, Ordering::SeqCst);
                }
                listed_once = true;
            }
            Ok(_) => {}
            Err(_) => {
                health.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        async {}
    });
    tasks.push(tokio::spawn(task));
    store
}

/// Drops managed fields, which no controller of berth's reads and which make up much of every object in memory.
pub fn trim_meta<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// Keeps what scheduling reads: metadata (without managed fields), spec, phase and conditions.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

#[cfg(test)]
mod tests {
    use super::ViewHealth;

    #[test]
    fn a_view_is_trusted_only_synced_steady_and_without_new_errors() {
        let steady = ViewHealth {
            synced: true,
            relisting: 0,
            errors: 3,
        };
        assert_eq!(steady.stale_since(3), None);
        let unsynced = ViewHealth {
            synced: false,
            ..steady
        };
        assert_eq!(
            unsynced.stale_since(3).as_deref(),
            Some("caches not synced")
        );
        let relisting = ViewHealth {
            relisting: 2,
            ..steady
        };
        assert_eq!(
            relisting.stale_since(3).as_deref(),
            Some("2 watches re-listing")
        );
        assert_eq!(
            steady.stale_since(1).as_deref(),
            Some("2 watch errors since the last look"),
            "a watch that failed and came back between two looks may have missed changes"
        );
    }
}
