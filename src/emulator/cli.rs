//! `berth emulate`: serve the emulator on a local socket and write a kubeconfig for it.

use super::{binder, server, Emulator, EmulatorError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `berth emulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on (use port 0 for any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where to write a kubeconfig for kubectl and controllers.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Also run the binder: a stand-in for kube-scheduler that binds pending pods and marks them Running.
    #[arg(long, default_value_t = false)]
    pub binder: bool,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: EmulateArgs) -> Result<(), EmulatorError> {
    let emu = Emulator::new();
    let running = server::serve(emu.clone(), args.listen)
        .await
        .map_err(|e| EmulatorError::Bind(args.listen.to_string(), e.to_string()))?;
    let url = running.url();
    std::fs::write(&args.kubeconfig, server::kubeconfig_yaml(&url)).map_err(|e| {
        EmulatorError::Kubeconfig(args.kubeconfig.display().to_string(), e.to_string())
    })?;
    let binder_task = args
        .binder
        .then(|| binder::Binder::new(emu.clone()).spawn(std::time::Duration::from_secs(1)));
    println!(
        "berth emulator listening on {url}; kubeconfig written to {}",
        args.kubeconfig.display()
    );
    crate::shutdown::shutdown_signal().await;
    running.stop();
    if let Some(t) = binder_task {
        t.abort();
    }
    Ok(())
}
