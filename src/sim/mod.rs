//! Simulation: berth, unchanged, against the emulator and the simulated cloud, on virtual time.
//!
//! [`scenario`] reads scenario files (and holds the built-in default), [`runner`] plays one, [`workload`] stands in
//! for the workload controllers, [`summary`] and [`report`] turn what was measured into a table and an HTML report.
//! `berth simulate` ([`main`]) ties them together, and `--compare` plays the same scenario twice.

pub mod dataplane;
pub mod locate;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod summary;
pub mod workload;

use runner::{RunOptions, SimError};
use scenario::{merge, Scenario, ScenarioError};
use std::path::{Path, PathBuf};

/// `berth simulate`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// A scenario file; default: the built-in scenario (scenarios/default.yaml).
    pub scenario: Option<PathBuf>,
    /// Write a self-contained HTML report with charts over time here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also run the scenario with this change to its Cluster spec (a YAML merge patch, e.g.
    /// '{expander: LeastWaste}' or '{scaleDown: {consolidation: false}}') and print both side by side.
    #[arg(long)]
    pub compare: Option<String>,
    /// Multiply every workload's size by this factor (e.g. 0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Loads the scenario the arguments name (or the default), scaled and seeded as asked.
pub fn load(args: &SimulateArgs) -> Result<Scenario, ScenarioError> {
    let s = match &args.scenario {
        Some(p) => scenario::load(p)?,
        None => scenario::default_scenario()?,
    };
    let mut s = if args.scale == 1.0 {
        s
    } else {
        s.scaled(args.scale)
    };
    if let Some(seed) = args.seed {
        s.seed = seed;
    }
    Ok(s)
}

/// The scenario with a merge patch applied to its Cluster spec, checked as the file's own Cluster is.
pub fn with_cluster_patch(s: &Scenario, patch: &str) -> Result<Scenario, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        file: "--compare".into(),
        line: 1,
        field: "cluster".into(),
        message,
    };
    let v: serde_yaml::Value = serde_yaml::from_str(patch).map_err(|e| invalid(e.to_string()))?;
    let v = serde_json::to_value(v).map_err(|e| invalid(e.to_string()))?;
    if !v.is_object() {
        return Err(invalid(format!(
            "{patch:?} is not a mapping of Cluster spec fields"
        )));
    }
    let mut out = s.clone();
    merge(&mut out.cluster["spec"], &v);
    scenario::check_cluster(&out.cluster).map_err(invalid)?;
    Ok(out)
}

/// What `berth simulate` prints (and writes): the table, optionally the comparison, the report.
pub fn main(args: &SimulateArgs, progress: bool) -> Result<String, SimError> {
    let scenario = load(args)?;
    let catalog = scenario::load_catalog(&scenario)?;
    let wall = std::time::Instant::now();
    let base_label = if args.compare.is_some() {
        "baseline".to_string()
    } else {
        String::new()
    };
    let first = runner::run_blocking(
        &scenario,
        &catalog,
        &RunOptions {
            progress,
            label: base_label,
        },
    )?;
    let second = match &args.compare {
        Some(patch) => {
            let other = with_cluster_patch(&scenario, patch)?;
            Some(runner::run_blocking(
                &other,
                &catalog,
                &RunOptions {
                    progress,
                    label: patch.clone(),
                },
            )?)
        }
        None => None,
    };
    let mut out = match &second {
        Some(b) => summary::compare_table(&first, b),
        None => summary::table(&first),
    };
    out.push_str(&format!(
        "  {:<44} {:>14.1}s\n",
        "wall time",
        wall.elapsed().as_secs_f64()
    ));
    if let Some(path) = &args.report {
        write_report(path, &report::html(&first, second.as_ref()))?;
        out.push_str(&format!("report written to {}\n", path.display()));
    }
    if args.json {
        let runs: Vec<serde_json::Value> = std::iter::once(&first)
            .chain(second.as_ref())
            .map(|o| serde_json::json!({"label": o.label, "summary": summary::summarize(o)}))
            .collect();
        out.push_str(
            &serde_json::json!({"scenario": first.scenario, "seed": first.seed, "runs": runs})
                .to_string(),
        );
        out.push('\n');
    }
    Ok(out)
}

fn write_report(path: &Path, html: &str) -> Result<(), SimError> {
    std::fs::write(path, html)
        .map_err(|e| SimError::Setup(format!("cannot write the report {}: {e}", path.display())))
}
