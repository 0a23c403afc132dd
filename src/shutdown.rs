//! The process's stop signal, for every long-running command (`berth run`, `berth emulate`).

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A spawned task owned by whoever holds this: dropping it aborts the task. berth's long-running tasks are owned
/// this way, so stopping a controller's future, gracefully or as a crash would (the chaos benchmark drops berth
/// at whatever await point it is in), takes every task it started with it; nothing keeps acting for a berth
/// that is gone.
pub struct OwnedTask(Option<tokio::task::JoinHandle<()>>);

impl OwnedTask {
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> OwnedTask {
        OwnedTask(Some(tokio::spawn(task)))
    }

    /// Lets the task run on, owned by nobody (a graceful stop that must not be cut short).
    pub fn detach(mut self) {
        self.0.take();
    }

    /// Waits for the task to end by itself (after its stop signal).
    pub async fn join(mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}
