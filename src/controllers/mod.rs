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

/// Labels and annotations berth puts on the objects it creates.
pub mod keys {
    /// On MachineSets and Machines: the MachineDeployment they belong to.
    pub const MACHINE_DEPLOYMENT: &str = crate::model::instance_type::labels::MACHINE_DEPLOYMENT;
    /// On MachineSets and Machines: the hash of the template revision they were made from.
    pub const TEMPLATE_HASH: &str = "berth.dev/template-hash";
    /// On MachineSets: the revision number of their template.
    pub const REVISION: &str = "berth.dev/revision";
    /// On MachineDeployments and MachineSets: queued launch shapes (JSON), written by the autoscaler.
    pub const LAUNCH_SHAPES: &str = crate::api::launch_shapes::LAUNCH_SHAPES_ANNOTATION;
    /// On Machines: the id of the launch shape the Machine was created for.
    pub const SHAPE_ID: &str = "berth.dev/shape-id";
    /// On MachineDeployments: when the provisioner last raised replicas (RFC 3339); scale-down waits after it.
    pub const LAST_SCALE_UP: &str = "berth.dev/last-scale-up";
    /// On MachineSets: "false" when Machines that go are not to be replaced (an old revision under OnDelete, whose
    /// places the current revision takes). Set and cleared by the MachineDeployment controller.
    pub const REPLACE_MACHINES: &str = "berth.dev/replace-machines";
    /// berth's finalizer on Machines: the instance is terminated before the Machine goes.
    pub const MACHINE_FINALIZER: &str = "berth.dev/machine";
    /// On Machines being consolidated or moved off at risk: JSON with the launch-shape id of the Machine that
    /// replaces them; they are removed once that Machine's Node is Ready.
    pub const REPLACED_BY: &str = "berth.dev/replaced-by";
    /// On Machines berth chose to remove, and on the Nodes of Auto Scaling groups it is draining: the disruption
    /// reason (empty, underutilized, consolidation_...).
    pub const DISRUPTION_REASON: &str = "berth.dev/disruption-reason";
    /// On Machines the health check remediates: "<Reason>: <message>", written before the Machine is deleted. The
    /// Machine controller, the only writer of a Machine's status, turns it into `HealthCheckSucceeded=False` and
    /// drains with the health check's drain timeout.
    pub const REMEDIATION: &str = "berth.dev/remediation";
    /// On Machines EC2 is reclaiming: see [`crate::api::INTERRUPTION_ANNOTATION`]. The Machine controller turns it
    /// into the `Interrupted` condition.
    pub const INTERRUPTION: &str = crate::api::INTERRUPTION_ANNOTATION;
    /// On Machines EC2 recommends moving (a rebalance recommendation on a `Replace` class) or will retire or
    /// maintain (an AWS Health scheduled change): JSON `{reason, detail, deadline, since}`. The disruption
    /// controller replaces them first and drains them after, within the group's budget.
    pub const AT_RISK: &str = "berth.dev/at-risk";
    /// On Machines whose instance EC2 says is stopping, stopped, shutting down or terminated: "<time>: <state>".
    /// The Machine controller looks at the instance afresh when it sees a notice newer than its last look.
    pub const INSTANCE_STATE_NOTICE: &str = "berth.dev/instance-state-notice";
    /// On the Nodes of Auto Scaling groups berth is draining: when it cordoned them (RFC 3339).
    pub const DRAIN_STARTED: &str = "berth.dev/drain-started";
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
