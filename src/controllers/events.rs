//! Kubernetes Events for berth's decisions, stamped with berth's clock (so simulations on virtual time write
//! virtual timestamps). Publishing is best effort: a failed Event never fails a reconcile, and writing one never
//! holds a decision up: Events are queued and written in order by one background task (a burst of a thousand
//! pods is a thousand Events; the next pass must not wait for them).

use crate::clock::{to_k8s, SharedClock};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Events waiting to be written; past this, new ones are dropped (and said so in the log).
const QUEUE: usize = 16_384;

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
    /// The writer's queue, started on first use (inside the runtime).
    queue: Arc<OnceLock<mpsc::Sender<Event>>>,
}

impl EventPublisher {
    pub fn new(client: Client, clock: SharedClock, component: &str) -> EventPublisher {
        EventPublisher {
            client,
            clock,
            component: component.to_string(),
            queue: Arc::default(),
        }
    }

    fn queue(&self) -> &mpsc::Sender<Event> {
        self.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
            let client = self.client.clone();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let namespace = event.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                    if let Err(e) = api.create(&PostParams::default(), &event).await {
                        tracing::debug!(error = %e, reason = ?event.reason, "could not publish event");
                    }
                }
            });
            tx
        })
    }

    /// Queues `reason: message` on the object. Cluster-scoped objects' Events go to the `default` namespace.
    pub fn publish(&self, object: &ObjectReference, kind: EventKind, reason: &str, message: &str) {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Time(to_k8s(self.clock.now()));
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    object.name.clone().unwrap_or_else(|| "object".into())
                )),
                namespace: Some(namespace),
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
        if let Err(e) = self.queue().try_send(event) {
            tracing::debug!(error = %e, reason, "event dropped");
        }
    }
}
