//! The `berth` command line.

use anyhow::Context;
use berth::cli::{BenchCommand, Cli, Command};
use berth::telemetry::logging;
use clap::Parser;

// The controller and the emulator allocate many small, short-lived objects (JSON trees, readings, watch events);
// mimalloc serves them with per-thread free lists, where glibc's malloc spent about 40% of a B3 run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // One clear line, never a backtrace: these are operator-facing errors (bad flags, missing credentials, an
    // unreachable API server), not bugs.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds => {
            let yaml = berth::api::crds_yaml().context("rendering the CRDs as YAML")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Bench(BenchCommand::Scheduling {
            pods,
            preference,
            dump,
            seed,
        }) => {
            let ok = berth::bench::scheduling::run(pods, preference, dump.as_deref(), seed)?;
            anyhow::ensure!(ok, "some pods were left unscheduled");
            Ok(())
        }
        Command::Bench(BenchCommand::Packing { pods, seed, dump }) => {
            let ok = berth::bench::packing::run(pods.as_deref(), seed, dump.as_deref())?;
            anyhow::ensure!(
                ok,
                "an unconstrained workload missed the cost or utilisation target"
            );
            Ok(())
        }
        Command::Emulate(args) => {
            logging::init(cli.log_format, &cli.log)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime
                .block_on(berth::emulator::cli::run(args))
                .context("running the emulator")?;
            Ok(())
        }
        Command::Rollout(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let out = runtime.block_on(async {
                let client = berth::operator::connect(args.kubeconfig.as_ref()).await?;
                anyhow::Ok(berth::rollout_cli::run(client, &args.namespace, args.command).await?)
            })?;
            println!("{out}");
            Ok(())
        }
        Command::Bench(BenchCommand::Launch {
            machines,
            real_time,
        }) => {
            let report = berth::bench::launch::main(machines, real_time)?;
            anyhow::ensure!(
                report.failed == 0 && report.server_throttles == 0,
                "{} launches failed, {} calls throttled",
                report.failed,
                report.server_throttles
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Chaos(args)) => {
            // Quiet by default, as `berth simulate` is: the crashes make berth's logs loud.
            let filter = if cli.log == "info" {
                "error".to_string()
            } else {
                cli.log.clone()
            };
            logging::init(cli.log_format, &filter)?;
            let (out, ledger) = berth::bench::chaos::main(&args, true)?;
            print!("{out}");
            anyhow::ensure!(
                ledger.kept(),
                "the ledger is not clean: berth broke its promise"
            );
            Ok(())
        }
        Command::Simulate(args) => {
            // Quiet by default: berth's own logs would bury the progress bar and the table.
            let filter = if cli.log == "info" {
                "error".to_string()
            } else {
                cli.log.clone()
            };
            logging::init(cli.log_format, &filter)?;
            let out = berth::sim::main(&args, true)?;
            print!("{out}");
            Ok(())
        }
        Command::Bench(BenchCommand::Reaction {
            nodes,
            pods_per_node,
            pods,
            seed,
        }) => {
            // berth's own logs go to stderr (--log info shows each pass and launch); the table to stdout.
            let filter = if cli.log == "info" {
                "warn".to_string()
            } else {
                cli.log.clone()
            };
            logging::init(cli.log_format, &filter)?;
            berth::bench::reaction::main(nodes, pods_per_node, pods, seed)?;
            Ok(())
        }
        Command::Bench(BenchCommand::Footprint { nodes, pods }) => {
            logging::init(cli.log_format, &cli.log)?;
            let sizes = match (nodes, pods) {
                (Some(nodes), Some(pods)) => vec![(nodes, pods)],
                _ => berth::bench::footprint::DEFAULT_SIZES.to_vec(),
            };
            berth::bench::footprint::main(&sizes)?;
            Ok(())
        }
        Command::Run(args) => {
            logging::init(cli.log_format, &cli.log)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime
                .block_on(berth::operator::run(
                    args,
                    berth::shutdown::shutdown_signal(),
                ))
                .map_err(Into::into)
        }
    }
}
