//! The `berth` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};

/// berth: Kubernetes node provisioning for EC2.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve an in-memory Kubernetes API (the test and simulation cluster) and write a kubeconfig for it.
    Emulate(berth::emulator::cli::EmulateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Emulate(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(berth::emulator::cli::run(args)).context("running the emulator")?;
            Ok(())
        }
    }
}
