//! The interruption queue: where EC2's interruption events arrive (an SQS queue EventBridge feeds, or the
//! simulated cloud's own queue). The interruption controller reads messages in small batches and deletes each once
//! it has acted on it, so a message berth could not act on comes back after the queue's visibility timeout.

use async_trait::async_trait;
#[cfg(test)]
use std::sync::Arc;

/// One message: its body (an EventBridge event, JSON) and the handle that deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub receipt: String,
    pub body: String,
}

/// Why the queue cannot be used. `Missing` and `Denied` are told on the Cluster (a condition and an Event):
/// someone has to act; `Transient` is retried quietly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the interruption queue {queue} does not exist")]
    Missing { queue: String },
    #[error("access to the interruption queue {queue} is denied: {message}")]
    Denied { queue: String, message: String },
    #[error("the interruption queue {queue}: {message}")]
    Transient { queue: String, message: String },
}

impl QueueError {
    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            QueueError::Missing { .. } => "QueueNotFound",
            QueueError::Denied { .. } => "QueueAccessDenied",
            QueueError::Transient { .. } => "QueueUnreachable",
        }
    }
}

/// The most messages read at once: also the most berth has in flight (SQS's own maximum per receive).
pub const MAX_MESSAGES: usize = 10;

#[async_trait]
pub trait InterruptionQueue: Send + Sync {
    /// The queue, for logs and conditions (its URL).
    fn name(&self) -> &str;

    /// Waits up to the queue's long-poll time (20 s on SQS) for up to [`MAX_MESSAGES`] messages.
    async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError>;

    /// Deletes messages acted on (one batch call on SQS).
    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError>;
}

/// An in-process queue with SQS's semantics where berth relies on them: a received message is invisible until it
/// is deleted or its visibility timeout passes (then it is received again), and a receive waits up to its long-poll
/// time for a message. The simulated cloud delivers its interruption events through it. Waits use tokio time, so a
/// simulation's paused clock drives them.
pub struct MemoryQueue {
    name: String,
    long_poll: std::time::Duration,
    visibility: std::time::Duration,
    state: std::sync::Mutex<MemoryQueueState>,
    arrived: tokio::sync::Notify,
}

#[derive(Default)]
struct MemoryQueueState {
    visible: std::collections::VecDeque<String>,
    /// receipt → (visible again at, body).
    in_flight: std::collections::HashMap<String, (tokio::time::Instant, String)>,
    next_receipt: u64,
    deleted: u64,
}

impl MemoryQueue {
    pub fn new(name: &str) -> MemoryQueue {
        MemoryQueue {
            name: name.into(),
            long_poll: std::time::Duration::from_secs(20),
            visibility: std::time::Duration::from_secs(30),
            state: std::sync::Mutex::new(MemoryQueueState::default()),
            arrived: tokio::sync::Notify::new(),
        }
    }

    pub fn send(&self, body: String) {
        self.lock().visible.push_back(body);
        self.arrived.notify_waiters();
    }

    /// Messages sent and not deleted yet (visible or in flight).
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.visible.len() + st.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages deleted so far.
    pub fn deleted(&self) -> u64 {
        self.lock().deleted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryQueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Vec<QueueMessage> {
        let now = tokio::time::Instant::now();
        let mut st = self.lock();
        let expired: Vec<String> = st
            .in_flight
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for r in expired {
            if let Some((_, body)) = st.in_flight.remove(&r) {
                st.visible.push_back(body);
            }
        }
        let mut out = Vec::new();
        while out.len() < MAX_MESSAGES {
            let Some(body) = st.visible.pop_front() else {
                break;
            };
            st.next_receipt += 1;
            let receipt = format!("{}-{}", self.name, st.next_receipt);
            st.in_flight
                .insert(receipt.clone(), (now + self.visibility, body.clone()));
            out.push(QueueMessage { receipt, body });
        }
        out
    }
}

#[async_trait]
impl InterruptionQueue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + self.long_poll;
        loop {
            let arrived = self.arrived.notified();
            let got = self.take();
            if !got.is_empty() {
                return Ok(got);
            }
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(self.take()),
            }
        }
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        let mut st = self.lock();
        for r in receipts {
            if st.in_flight.remove(r).is_some() {
                st.deleted += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_message_not_deleted_comes_back_after_the_visibility_timeout() {
        let q = MemoryQueue::new("q");
        q.send("a".into());
        let got = q.receive().await.unwrap();
        assert_eq!(got.len(), 1);
        // Invisible while in flight: the next receive waits its long poll and comes back empty.
        assert!(q.receive().await.unwrap().is_empty());
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        let again = q.receive().await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, "a");
        q.delete(&[again[0].receipt.clone()]).await.unwrap();
        assert!(q.is_empty());
        assert_eq!(q.deleted(), 1);
        // The old receipt deletes nothing twice.
        q.delete(&[got[0].receipt.clone()]).await.unwrap();
        assert_eq!(q.deleted(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_wakes_when_a_message_arrives_and_takes_ten_at_most() {
        let q = Arc::new(MemoryQueue::new("q"));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.receive().await }
        });
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        for i in 0..12 {
            q.send(format!("m{i}"));
        }
        assert_eq!(waiting.await.unwrap().unwrap().len(), MAX_MESSAGES);
        assert_eq!(q.receive().await.unwrap().len(), 2);
    }
}
