//! An in-memory Kubernetes API server: the cluster of berth's tests and simulations.
//!
//! Real clients accept it: kubectl 1.32 (discovery, aggregated discovery, OpenAPI v3, server-side printing,
//! apply, server-side apply, patch, scale, cordon, drain, get -w) and kube-runtime watchers. It is served over
//! HTTP on a local socket ([`server::serve`], `berth emulate`) and in-process as a tower Service behind a
//! [`kube::Client`] ([`Emulator::client`]) so that simulations need no network.
//!
//! Layout: [`store`] keeps every object as JSON bytes keyed by (group, resource, namespace, name) with one
//! monotonic resourceVersion and a bounded event history; [`http`] routes requests; [`resources`] is the registry of
//! kinds (built-ins plus one per CRD); [`patch`] and [`apply`] implement the patch formats and server-side apply;
//! [`schema`] enforces CRD schemas; [`discovery`], [`openapi`] and [`table`] serve what kubectl reads; [`proto`]
//! reads the two protobuf bodies kubectl drain sends. The simulated data plane is opt-in per test or simulation:
//! [`kubelet::KubeletSimulator`] turns instance events into Nodes, [`binder::Binder`] schedules pods.
//!
//! # Deliberate differences from a real kube-apiserver
//!
//! - No authentication, authorization, admission webhooks, audit, priority and fairness, or TLS; plain HTTP only.
//! - JSON (and YAML request bodies) only: protobuf request bodies are refused with 415 except DeleteOptions and
//!   Eviction (what `kubectl drain` sends), so `kubectl create <kind>` generators, which send protobuf, fail (the
//!   client falls back to JSON only for later requests); use `kubectl apply`. CBOR is refused. `/openapi/v2` is served as JSON
//!   only, so clients that insist on the protobuf v2 document get 406 (kubectl 1.32 uses v3).
//! - Only the kinds berth uses are built in (Pods with binding and eviction, Nodes, Namespaces, Events (core and
//!   events.k8s.io),
//!   ConfigMaps, DaemonSets, Deployments, ReplicaSets, PodDisruptionBudgets, Leases, CRDs), plus every CRD.
//!   No controllers run: Deployments do not create ReplicaSets, ReplicaSets do not create Pods, DaemonSets do not
//!   schedule. The garbage collector, namespace deletion and CRD establishment are emulated, synchronously
//!   (dependents are gone when the owner's DELETE returns, instead of moments later).
//! - Pods are deleted at once (no graceful termination period); `gracePeriodSeconds` is ignored.
//! - Built-in kinds are checked by decoding into the k8s-openapi types (type errors are 400) plus a few field
//!   validations (pod containers need name and image); unknown fields of built-ins are kept, not pruned or refused.
//! - CRD schemas: required, type, enum, min/max, length, items, additionalProperties, defaults, pruning and strict
//!   field validation are enforced; `pattern` is a regular expression (regex-lite's syntax, which RE2's patterns in
//!   CRDs fit); CEL `x-kubernetes-validations` are not evaluated. Multi-version CRDs use conversion `None`.
//! - Strategic merge patch and server-side apply know merge keys from a fixed table of field names (containers,
//!   env, ports, volumes, volumeMounts, conditions, ownerReferences, ...), not from the OpenAPI extensions; CRD lists
//!   are atomic unless their field name is in that table.
//! - Only the latest state is kept: a list with `resourceVersionMatch=Exact` for an older version gets 410, and
//!   continue tokens page through the current state (not a snapshot) while reporting the first page's
//!   resourceVersion.
//! - PodDisruptionBudget health is computed at eviction time from pod phase and the Ready condition (no
//!   disruption controller; `unhealthyPodEvictionPolicy` behaves as `AlwaysAllow`).
//! - Namespace deletion has no `kubernetes` spec finalizer: the namespace is Terminating until its objects are gone.
//!   Deleting a CRD deletes its objects at once, ignoring their finalizers.
//! - Watches that fall behind the broadcast buffer are closed (clients resume from their last resourceVersion).
//! - Paginated lists never carry `remainingItemCount` (optional in the API; counting would make paging quadratic).
//! - A resourceVersion newer than the latest is served as the latest (the real server waits, then answers 504).
//! - Field selectors: `metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase` and
//!   `spec.unschedulable`, on every kind (the real server supports a per-kind set); others get 400.
//! - Server-side printing (Tables) has Name and Age for every kind, kubectl's usual columns for pods and nodes, and
//!   CRD additionalPrinterColumns with simple `.a.b` JSONPaths.
//! - The simulated data plane ([`kubelet`], [`binder`]) replaces kubelets and kube-scheduler: Nodes are named after
//!   their instance ids; a terminated instance's pods are deleted at once (the pod garbage collector waits);
//!   the binder ignores preferred terms, the symmetric anti-affinity of running pods, preemption and volumes, and
//!   marks bound pods Running immediately (no image pulls, no probes).
//! - Kubelet heartbeats are in-process records, not Leases; [`node_lifecycle`] plays kube-controller-manager's
//!   node lifecycle controller over them (Unknown after 40 s, the unreachable taints) without taint-based
//!   eviction and without the not-ready taints (see there).
//! - Generated names and uids are deterministic (a counter through a mixing function), not random.
//! - Timestamps come from the injectable [`clock::Clock`], never the system clock directly.

pub mod apply;
pub mod binder;
pub mod cli;
pub mod clock;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod http;
pub mod kubelet;
pub mod node_lifecycle;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;

pub use clock::{Clock, SharedClock, SystemClock};
pub use error::ApiError;
pub use store::{Config, Store};

use std::sync::Arc;
use tokio::sync::watch;

/// Errors of running the emulator as a program.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, String),
    /// The kubeconfig could not be written.
    #[error("cannot write the kubeconfig {0}: {1}")]
    Kubeconfig(String, String),
    /// An API call failed.
    #[error("emulator API call failed: {0}")]
    Api(#[from] ApiError),
}

impl EmulatorError {
    /// Short static category.
    pub fn category(&self) -> &'static str {
        match self {
            EmulatorError::Bind(..) => "bind",
            EmulatorError::Kubeconfig(..) => "kubeconfig",
            EmulatorError::Api(e) => e.category(),
        }
    }
}

/// A handle on one emulated cluster; cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    store: Arc<Store>,
    drop_watches: Arc<watch::Sender<u64>>,
    /// API faults served to clients (none by default).
    faults: Arc<std::sync::RwLock<Option<Arc<faults::FaultInjector>>>>,
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Emulator {
    /// An emulator on the system clock with default limits.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock), Config::default())
    }

    /// An emulator on the given clock (for virtual time) and limits.
    pub fn with_clock(clock: SharedClock, config: Config) -> Self {
        let (tx, _) = watch::channel(0u64);
        Emulator {
            store: Arc::new(Store::new(clock, config)),
            drop_watches: Arc::new(tx),
            faults: Arc::default(),
        }
    }

    /// The object store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A kube Client talking to this emulator in-process (no sockets). Must be called inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(server::EmulatorService::new(self.clone()), "default")
    }

    /// Forgets the watch history, so resumed watches get 410 Gone (tests of relisting).
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Serves these API faults from now on (None: none).
    pub fn set_api_faults(&self, faults: Option<faults::ApiFaults>) {
        *self.faults.write().unwrap_or_else(|p| p.into_inner()) =
            faults.map(|f| Arc::new(faults::FaultInjector::new(f)));
    }

    /// The API faults served so far, by kind.
    pub fn api_faults_served(&self) -> std::collections::BTreeMap<faults::ApiFaultKind, u64> {
        self.injector().map(|i| i.served()).unwrap_or_default()
    }

    pub(crate) fn injector(&self) -> Option<Arc<faults::FaultInjector>> {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes every open watch stream, as a dropped connection would.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|n| *n += 1);
    }

    pub(crate) fn drop_receiver(&self) -> watch::Receiver<u64> {
        let mut rx = self.drop_watches.subscribe();
        rx.mark_unchanged();
        rx
    }
}
