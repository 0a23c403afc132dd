//! Kubernetes Events for berth's decisions, stamped with berth's clock (so simulations on virtual time write
//! virtual timestamps). Publishing is best effort: a failed Event never fails a reconcile.

use crate::clock::{to_k8s, SharedClock};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    clock: SharedClock,
    component: String,
}

impl EventPublisher {
    pub fn new(client: Client, clock: SharedClock, component: &str) -> EventPublisher {
        EventPublisher {
            client,
            clock,
            component: component.to_string(),
        }
    }

    /// Records `reason: message` on the object. Cluster-scoped objects' Events go to the `default` namespace.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        kind: EventKind,
        reason: &str,
        message: &str,
    ) {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Time(to_k8s(self.clock.now()));
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    object.name.clone().unwrap_or_else(|| "object".into())
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(match kind {
                EventKind::Normal => "Normal".into(),
                EventKind::Warning => "Warning".into(),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %e, reason, "could not publish event");
        }
    }
}
