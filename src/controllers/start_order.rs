//! Reconciles released together start in the order of their objects' keys.
//!
//! kube-runtime holds back a request for an object that is being reconciled, and at start-up every object until its
//! caches are ready, and releases held requests in the iteration order of a `HashSet` seeded at random per process.
//! Reconciles that start together then create Machines, launch instances and take names in a different order from
//! one run to the next, and `berth simulate` could not give the same report twice for the same seed. Each reconcile
//! therefore first waits for its turn: those that arrive while a gathering is open are released together, sorted
//! by key, once the gathering closes. On the simulation's paused clock a gathering closes only when every task is
//! idle, so it holds every reconcile kube-runtime released at that instant; on a real clock it costs a millisecond.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a gathering stays open after its first arrival.
const GATHERING: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct StartOrder {
    gathering: Mutex<Gathering>,
}

#[derive(Default)]
struct Gathering {
    /// Who waits, by key; a key appears more than once only if two controllers share one (they wait in arrival order).
    waiting: BTreeMap<String, Vec<oneshot::Sender<()>>>,
    open: bool,
}

impl StartOrder {
    /// Waits until this reconcile's turn: the end of the current gathering, after every smaller key in it.
    pub async fn wait_turn(self: &Arc<Self>, key: String) {
        let (turn, my_turn) = oneshot::channel();
        let opens = {
            let mut gathering = self.lock();
            gathering.waiting.entry(key).or_default().push(turn);
            !std::mem::replace(&mut gathering.open, true)
        };
        if opens {
            let order = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(GATHERING).await;
                order.release();
            });
        }
        // A closed sender only means the runtime is going down; the reconcile then goes with it.
        let _ = my_turn.await;
    }

    /// Wakes every waiter in key order: the runtime polls woken tasks in the order they were woken.
    fn release(&self) {
        let waiting = {
            let mut gathering = self.lock();
            gathering.open = false;
            std::mem::take(&mut gathering.waiting)
        };
        for turn in waiting.into_values().flatten() {
            let _ = turn.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gathering> {
        // The lock guards plain data that no panic can leave half-written.
        self.gathering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reconciles_arriving_together_start_in_key_order_whatever_order_they_arrived_in() {
        let order = Arc::new(StartOrder::default());
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for key in ["machine/c", "machine/a", "machine/d", "machine/b"] {
            let order = order.clone();
            let started = started.clone();
            tasks.push(tokio::spawn(async move {
                order.wait_turn(key.to_string()).await;
                started.lock().unwrap().push(key);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *started.lock().unwrap(),
            ["machine/a", "machine/b", "machine/c", "machine/d"]
        );

        // A later arrival opens a gathering of its own.
        let before = tokio::time::Instant::now();
        order.wait_turn("machine/z".to_string()).await;
        assert_eq!(before.elapsed(), GATHERING);
    }
}
