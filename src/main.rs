//! The `berth` command line.

use anyhow::Context;
use berth::telemetry::logging::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// berth: Kubernetes node provisioning for EC2. Autoscaling and machine lifecycle in one controller.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    /// Log format: text for people, json for log pipelines.
    #[arg(long, global = true, value_enum, default_value = "text", env = "BERTH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter in RUST_LOG syntax (for example info, or berth=debug,kube=warn).
    #[arg(long, global = true, default_value = "info", env = "BERTH_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller against a cluster.
    Run(RunArgs),
    /// Print berth's CustomResourceDefinitions as YAML (apply them with `kubectl apply -f -`).
    Crds,
    /// Run a benchmark (see BENCHMARKS.md): a table, then one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// B1: the Karpenter-shaped scheduling benchmark.
    Scheduling {
        /// One diverse size (or, with --preference, the preference pod count) instead of all sizes.
        #[arg(long)]
        pods: Option<usize>,
        /// Only the preference runs (respecting, then ignoring preferences).
        #[arg(long)]
        preference: bool,
        /// Write pods.json, instance-types.json and plan.json here.
        #[arg(long)]
        dump: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// B2: plan cost against the fractional lower bound on the bundled us-east-1 catalog.
    Packing {
        /// A workload of Pod or Deployment objects (YAML or JSON) instead of the seeded mixes.
        #[arg(long)]
        pods: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write pods.json, instance-types.json and plan.json per workload under this directory.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Path to a kubeconfig; default: in-cluster configuration, then $KUBECONFIG, then ~/.kube/config.
    #[arg(long, env = "BERTH_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            let yaml = berth::api::crds_yaml().context("rendering the CRDs as YAML")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Bench(BenchCommand::Scheduling { pods, preference, dump, seed }) => {
            let ok = berth::bench::scheduling::run(pods, preference, dump.as_deref(), seed)?;
            anyhow::ensure!(ok, "some pods were left unscheduled");
            Ok(())
        }
        Command::Bench(BenchCommand::Packing { pods, seed, dump }) => {
            let ok = berth::bench::packing::run(pods.as_deref(), seed, dump.as_deref())?;
            anyhow::ensure!(ok, "an unconstrained workload missed the cost or utilisation target");
            Ok(())
        }
        Command::Run(args) => {
            logging::init(cli.log_format, &cli.log)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let client = berth::operator::connect(args.kubeconfig.as_ref()).await?;
                berth::operator::run(client, shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
