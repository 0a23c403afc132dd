//! `berth emulate`: serve the emulator on a local socket and write a kubeconfig for it.

use super::faults::{kinds_arg, share_arg, ApiFaultKinds, ApiFaults};
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
    /// Fail this share of requests (0 to 1, or a percentage: 0.05, 5%) with the kinds of --api-fault-kinds, to
    /// see a controller converge under a struggling API server.
    #[arg(long, value_name = "SHARE", value_parser = share_arg)]
    pub api_faults: Option<f64>,
    /// The faults to serve, comma-separated: 500, 503, 429 (with Retry-After), timeout (30 s, then 504),
    /// cut-watch (a watch stream cut after 5 s), gone (watch history expired: resumed watches get 410), or all.
    #[arg(long, value_name = "KINDS", default_value = "all", value_parser = kinds_arg)]
    pub api_fault_kinds: ApiFaultKinds,
    /// The seed that chooses which requests fail.
    #[arg(long, default_value_t = 1)]
    pub fault_seed: u64,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: EmulateArgs) -> Result<(), EmulatorError> {
    let emu = Emulator::new();
    if let Some(share) = args.api_faults {
        let kinds = args.api_fault_kinds.0.clone();
        emu.set_api_faults(Some(ApiFaults::new(share, kinds, args.fault_seed)));
    }
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
