//! Thin controllers: observe, ask a pure planner, apply the plan, write status once.
//!
//! Each controller is a kube-runtime `Controller` whose reconcile function is a named pipeline
//! (observe → plan → apply → status). Requeue policy is explicit: an invalid spec waits for a change (and says
//! why in a condition and an Event), a transient error backs off per object, success resyncs.

pub mod cluster;
pub mod disruption;
pub mod events;
pub mod expectations;
pub mod garbage_collector;
pub mod health;
pub mod interruption;
pub mod machine;
pub mod machine_deployment;
pub mod machine_set;
pub mod provisioner;
pub mod start_order;

use crate::clock::{to_k8s, SharedClock};
use crate::telemetry::metrics::Metrics;
use events::EventPublisher;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use start_order::StartOrder;
use std::sync::Arc;
use std::time::Duration;

/// The annotation and label names (they live in `api`, below `state`, which reads them too).
pub use crate::api::keys;

/// The rhythm of a controller that works in periodic passes over the shared caches (disruption, health): wait
/// for the caches to sync, then one pass every `interval`, until shutdown. Shutdown also cuts a pass short (it is
/// dropped at an await point, as a crash would drop it; every pass is written to survive that). Each pass is timed
/// in `berth_reconcile_duration_seconds{controller}`; a failed one is counted in `berth_reconcile_errors_total`
/// and logged, and the next comes on time.
pub(crate) struct Periodic {
    controller: &'static str,
    interval: Duration,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
}

impl Periodic {
    /// Once the caches have synced; None when shut down before.
    pub(crate) async fn start(
        cache: &crate::state::cluster::ClusterCache,
        controller: &'static str,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ) -> Option<Periodic> {
        let mut shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> =
            Box::pin(shutdown);
        tokio::select! {
            _ = &mut shutdown => return None,
            _ = cache.wait_synced() => {}
        }
        Some(Periodic {
            controller,
            interval,
            shutdown,
        })
    }

    /// Waits one interval; false at shutdown.
    pub(crate) async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = &mut self.shutdown => false,
            _ = tokio::time::sleep(self.interval) => true,
        }
    }

    /// Runs one pass; false at shutdown (the pass dropped where it was).
    pub(crate) async fn pass(
        &mut self,
        ctx: &Context,
        pass: impl std::future::Future<Output = Result<(), ControllerError>>,
    ) -> bool {
        let _timer = ctx
            .metrics
            .reconcile_duration_seconds
            .with_label_values(&[self.controller])
            .start_timer();
        tokio::select! {
            _ = &mut self.shutdown => false,
            result = pass => {
                if let Err(e) = result {
                    ctx.metrics
                        .reconcile_errors
                        .with_label_values(&[self.controller, e.category()])
                        .inc();
                    tracing::warn!(controller = self.controller, error = %e, "pass failed");
                }
                true
            }
        }
    }
}

/// What every controller shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub clock: SharedClock,
    pub metrics: Metrics,
    pub events: EventPublisher,
    pub start_order: Arc<StartOrder>,
    /// What the interruption controller last found of its queue, for the Cluster's status.
    pub interruption_queue: interruption::QueueStatusCell,
}

impl Context {
    pub fn new(client: Client, clock: SharedClock, metrics: Metrics) -> Context {
        let events = EventPublisher::new(client.clone(), clock.clone(), "berth");
        Context {
            client,
            clock,
            metrics,
            events,
            start_order: Arc::default(),
            interruption_queue: Arc::default(),
        }
    }

    /// Waits until this object's reconcile may start (see `start_order`): reconciles kube-runtime releases together
    /// start in the order of their objects' kinds, namespaces and names, not in a per-process random order.
    pub async fn wait_turn<K: kube::Resource<DynamicType = ()>>(&self, object: &K) {
        let key = format!(
            "{}/{}/{}",
            K::kind(&()),
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default()
        );
        self.start_order.wait_turn(key).await;
    }

    pub fn now_k8s(&self) -> Time {
        Time(to_k8s(self.clock.now()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("cloud: {0}")]
    Cloud(String, &'static str),
}

impl ControllerError {
    pub fn category(&self) -> &'static str {
        match self {
            ControllerError::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            ControllerError::Kube(_) => "kube_api",
            ControllerError::MissingField(_) => "missing_field",
            ControllerError::Encode { .. } => "encode",
            ControllerError::Cloud(_, category) => category,
        }
    }
}

/// Back-off after a failed reconcile: conflicts retry quickly, other errors after a few seconds.
pub fn error_backoff(error: &ControllerError) -> Duration {
    match error.category() {
        "conflict" => Duration::from_millis(200),
        _ => Duration::from_secs(5),
    }
}

/// A stable short hash (FNV-1a, hex) of a value's JSON form, for template revisions.
pub fn stable_hash(value: &impl serde::Serialize) -> Result<String, ControllerError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ControllerError::Encode {
        what: "template",
        reason: e.to_string(),
    })?;
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{:08x}", (h ^ (h >> 32)) as u32))
}
