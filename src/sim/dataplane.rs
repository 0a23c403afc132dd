//! The simulated data plane: instances the simulated cloud starts become Nodes in the emulator (after their boot
//! delay), and terminated ones disappear, through the emulator's simulated kubelets.

use crate::cloud::sim::{kubelet_event, SimulatedCloud};
use crate::emulator::kubelet::{InstanceEvent, KubeletSimulator};
use crate::emulator::Emulator;
use tokio::sync::broadcast::error::RecvError;

/// Follows the cloud's instance events until the cloud is dropped. Must be called inside a tokio runtime.
pub fn connect(cloud: &SimulatedCloud, emulator: Emulator) -> tokio::task::JoinHandle<()> {
    connect_observed(cloud, emulator, |_| {})
}

/// [`connect`], with `observe` seeing each event just before the kubelets act on it (a simulation counts what a
/// termination takes down while the Node and its pods still exist).
pub fn connect_observed(
    cloud: &SimulatedCloud,
    emulator: Emulator,
    observe: impl Fn(&InstanceEvent) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    connect_kubelets(cloud, KubeletSimulator::new(emulator), observe)
}

/// [`connect_observed`] through these kubelets, so the caller can fail and recover them (a simulation's node
/// failures and control-plane outages).
pub fn connect_kubelets(
    cloud: &SimulatedCloud,
    kubelets: KubeletSimulator,
    observe: impl Fn(&InstanceEvent) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut events = cloud.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(e) = kubelet_event(&event) {
                        observe(&e);
                        if let Err(err) = kubelets.handle(e) {
                            tracing::warn!(error = %err, "simulated kubelet event failed");
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "simulated kubelets fell behind the cloud's events")
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}
