//! The command line, parsed by clap. In the library so tests can check that what the Helm chart passes parses.

use crate::operator::RunArgs;
use crate::telemetry::logging::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// berth: Kubernetes node provisioning for EC2. Autoscaling and machine lifecycle in one controller.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    /// Log format: text for people, json for log pipelines.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "BERTH_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log filter in RUST_LOG syntax (for example info, or berth=debug,kube=warn).
    #[arg(long, global = true, default_value = "info", env = "BERTH_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against a cluster.
    Run(RunArgs),
    /// Print berth's CustomResourceDefinitions as YAML (apply them with `kubectl apply -f -`).
    Crds,
    /// Manage MachineDeployment rollouts, like `kubectl rollout` does Deployments.
    Rollout(RolloutArgs),
    /// Run a benchmark (see BENCHMARKS.md): a table, then one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve an in-memory Kubernetes API (the test and simulation cluster) and write a kubeconfig for it.
    Emulate(crate::emulator::cli::EmulateArgs),
    /// Play a scenario: berth against the emulator and a simulated EC2 on virtual time, then a summary (and a report).
    Simulate(crate::sim::SimulateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// Path to a kubeconfig; default: $KUBECONFIG, then ~/.kube/config, then in-cluster configuration.
    #[arg(long, env = "BERTH_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the MachineDeployment.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[command(subcommand)]
    pub command: crate::rollout_cli::RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// berth crashed at seeded random moments through a burst, scale-downs, a rollout and consolidations, under
    /// optional API and cloud faults; a ledger of duplicate launches, leaks, double terminations, PDB bypasses,
    /// unscheduled pods and stuck machines (all must be 0).
    Chaos(crate::bench::chaos::ChaosArgs),
    /// A burst of machine launches against the simulated cloud with EC2's real rate limits.
    Launch {
        /// Machines launched at once.
        #[arg(long, default_value_t = 1000)]
        machines: usize,
        /// Wait on the wall clock instead of tokio's paused clock (takes as long as EC2's limits impose).
        #[arg(long)]
        real_time: bool,
    },
    /// B3: pending pod to launch call, with berth's controllers, the emulator and the simulated cloud.
    Reaction {
        /// Full nodes in the cluster before the burst.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Running pods on each of them.
        #[arg(long, default_value_t = 30)]
        pods_per_node: usize,
        /// Pods created at once.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Seed of the pod shapes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// B4: berth's resident memory and time to a first scale-up decision, run as a child process against an
    /// emulated cluster of 5,000 nodes and 100,000 pods, then 10,000 and 200,000.
    Footprint {
        /// One cluster size instead of both: this many nodes ...
        #[arg(long, requires = "pods")]
        nodes: Option<usize>,
        /// ... and this many running pods spread over them.
        #[arg(long, requires = "nodes")]
        pods: Option<usize>,
    },
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
        /// Seed of the generated pods.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// B2: plan cost against the fractional lower bound on the bundled us-east-1 catalog.
    Packing {
        /// A workload of Pod or Deployment objects (YAML or JSON) instead of the seeded mixes.
        #[arg(long)]
        pods: Option<PathBuf>,
        /// Seed of the generated workload mixes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write pods.json, instance-types.json and plan.json per workload under this directory.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
}
