//! `berth bench chaos`: berth's promise in numbers. A burst of `machines` machines' worth of pods lands in an empty
//! cluster (the emulator and the simulated cloud, on virtual time); berth is stopped as a crash stops it at
//! `kills` seeded random moments and started again after up to `max_down_for`; the same kills go on through
//! scale-downs, a rollout and the consolidations they bring. Faults on both sides are options: the API server's
//! (a share of requests failed with 500, 503, 429, timeouts, cut watches, expired watch histories) and the cloud's
//! (throttles and server errors, and EC2's eventual consistency: new instances invisible, terminated ones still
//! shown running).
//!
//! At the end a ledger of every cloud call and object checks the promise: no instance launched twice for one
//! Machine, none leaked, none terminated twice, no pod a PodDisruptionBudget protects removed without an eviction,
//! no pod left pending, no Machine stuck. The run is an ordinary scenario (`--write-scenario` writes it, and
//! `berth simulate` plays it the same way).

use crate::emulator::faults::{kinds_arg, share_arg, ApiFaultKind};
use crate::model::duration::parse_duration;
use crate::sim::runner::{self, RunOptions, SimError};
use crate::sim::scenario;
use crate::sim::summary::{summarize, Summary};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// The most machines a run may ask for: beyond it the simulation outgrows a laptop's memory and an hour.
pub const MAX_MACHINES: u32 = 5_000;

/// `berth bench chaos`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Machines' worth of pods in the burst (3 pods fill a machine).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=MAX_MACHINES as i64))]
    pub machines: u32,
    /// Times berth is stopped as a crash stops it.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=scenario::MAX_KILLS as i64))]
    pub kills: u32,
    /// Seed of the kill moments, the faults and the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Longest time berth stays down after a kill (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub max_down_for: Duration,
    /// Fail this share of API requests (0 to 1, or a percentage) with --api-fault-kinds.
    #[arg(long, value_name = "SHARE", value_parser = share_arg)]
    pub api_faults: Option<f64>,
    /// API fault kinds, comma-separated: 500, 503, 429, timeout, cut-watch, gone, or all.
    #[arg(long, value_name = "KINDS", default_value = "all", value_parser = kinds_arg)]
    pub api_fault_kinds: crate::emulator::faults::ApiFaultKinds,
    /// Throttle or fail this share of cloud calls (0 to 1, or a percentage).
    #[arg(long, value_name = "SHARE", value_parser = share_arg)]
    pub cloud_errors: Option<f64>,
    /// EC2's eventual consistency: a new instance is missing from DescribeInstances for up to this long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub launch_invisible_for: Option<Duration>,
    /// EC2's eventual consistency: a terminated instance still shows as it was for up to this long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub terminated_visible_for: Option<Duration>,
    /// Also write the scenario played here (play it again with `berth simulate`).
    #[arg(long)]
    pub write_scenario: Option<PathBuf>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("writing the scenario to {path}: {reason}")]
    Write { path: String, reason: String },
}

impl ChaosError {
    pub fn category(&self) -> &'static str {
        match self {
            ChaosError::Sim(e) => e.category(),
            ChaosError::Write { .. } => "write",
        }
    }
}

/// What one run measured: the ledger, and how it went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ledger {
    pub duplicate_launches: u64,
    pub instances_leaked: u64,
    pub double_terminations: u64,
    pub pdb_bypassed: u64,
    pub pods_unscheduled_at_end: u64,
    pub machines_stuck: u64,
    pub kills: u64,
    /// None: it did not converge after the last kill.
    pub seconds_to_converge: Option<u64>,
    pub api_calls: u64,
    pub api_faults: u64,
    pub nodes_launched: u64,
    pub pods_created: u64,
}

impl Ledger {
    fn from_summary(s: &Summary) -> Ledger {
        Ledger {
            duplicate_launches: s.duplicate_launches,
            instances_leaked: s.instances_leaked_at_end,
            double_terminations: s.double_terminations,
            pdb_bypassed: s.pdb_bypassed,
            pods_unscheduled_at_end: s.pods_unscheduled_at_end,
            machines_stuck: s.machines_stuck,
            kills: s.kills,
            seconds_to_converge: s.seconds_to_converge.flatten(),
            api_calls: s.api_calls,
            api_faults: s.api_faults,
            nodes_launched: s.nodes_launched,
            pods_created: s.pods_created,
        }
    }

    /// Every figure of the promise is 0 (and berth converged after its last kill).
    pub fn kept(&self) -> bool {
        self.duplicate_launches == 0
            && self.instances_leaked == 0
            && self.double_terminations == 0
            && self.pdb_bypassed == 0
            && self.pods_unscheduled_at_end == 0
            && self.machines_stuck == 0
            && (self.kills == 0 || self.seconds_to_converge.is_some())
    }
}

/// The scenario a run plays: two groups (on-demand behind a PodDisruptionBudget, spot), a burst filling
/// `machines` 4-vCPU machines at 3 pods each, then a scale-down of the spot workload at 20 minutes, a template
/// rollout of the on-demand group at 25, a scale-down of the on-demand workload at 40 (both bring
/// consolidations), 15 quiet minutes after the kill window for the collector and the machines to settle.
pub fn scenario_yaml(a: &ChaosArgs) -> String {
    let m = a.machines;
    let web = (m * 3).div_ceil(2);
    let batch = m * 3 - web;
    let max_group = m + m / 2 + 5;
    let mut faults = String::new();
    if let Some(share) = a.api_faults {
        let kinds: Vec<&str> = a
            .api_fault_kinds
            .0
            .iter()
            .map(|k| ApiFaultKind::name(*k))
            .collect();
        faults.push_str(&format!(
            "  api: {{share: {share}, kinds: [{}]}}\n",
            kinds
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut cloud = Vec::new();
    if let Some(share) = a.cloud_errors {
        cloud.push(format!("errorShare: {share}"));
    }
    if let Some(d) = a.launch_invisible_for {
        cloud.push(format!("launchInvisibleFor: {}ms", d.as_millis()));
    }
    if let Some(d) = a.terminated_visible_for {
        cloud.push(format!("terminatedVisibleFor: {}ms", d.as_millis()));
    }
    if !cloud.is_empty() {
        faults.push_str(&format!("  cloud: {{{}}}\n", cloud.join(", ")));
    }
    let faults = if faults.is_empty() {
        String::new()
    } else {
        format!("faults:\n{faults}")
    };
    format!(
        r#"# Written by `berth bench chaos`: play it again with `berth simulate`.
name: chaos
description: A burst of {m} machines' worth of pods, scale-downs, a rollout and consolidations, with berth crashed {kills} times.
seed: {seed}
duration: 70m
sampleInterval: 10s
bootDelay: 35s
readyDelay: 10s
chaos:
  kills: {kills}
  from: 0s
  until: 55m
  maxDownFor: {down}ms
{faults}berth:
  cluster:
    expander: Cheapest
    limits:
      maxNodes: {max_nodes}
    scaleDown:
      delayAfterScaleUp: 3m
      unneededTime: 3m
      minNodeAge: 3m
  machineClasses:
    - name: on-demand
      spec:
        instanceRequirements:
          families: [m7i, m6i]
          vcpu: {{min: 4, max: 4}}
        capacityTypes: [on-demand]
    - name: spot
      spec:
        instanceRequirements:
          families: [m7i, m6i, m6a]
          vcpu: {{min: 4, max: 4}}
        capacityTypes: [spot, on-demand]
        spotFallbackToOnDemand: true
  machineDeployments:
    - name: web
      spec:
        replicas: 0
        autoscaling: {{minReplicas: 0, maxReplicas: {max_group}}}
        template:
          spec:
            classRef: {{name: on-demand}}
            nodeLabels: {{workload: web}}
        strategy:
          rollingUpdate: {{maxSurge: 10, maxUnavailable: 0}}
    - name: batch
      spec:
        replicas: 0
        autoscaling: {{minReplicas: 0, maxReplicas: {max_group}}}
        template:
          spec:
            classRef: {{name: spot}}
            nodeLabels: {{workload: batch}}
        strategy:
          rollingUpdate: {{maxSurge: 10, maxUnavailable: 0}}
timeline:
  - at: 0s
    deployment:
      name: web
      replicas: {web}
      pod: {{cpu: "1", memory: 2Gi, nodeSelector: {{workload: web}}}}
  - at: 0s
    pdb: {{name: web, deployment: web, maxUnavailable: "10%"}}
  - at: 0s
    deployment:
      name: batch
      replicas: {batch}
      pod: {{cpu: "1", memory: 2Gi, nodeSelector: {{workload: batch}}}}
  - at: 20m
    scale: {{deployment: batch, replicas: {batch_after}}}
  - at: 25m
    templateChange:
      machineDeployment: web
      template:
        spec:
          nodeLabels: {{workload: web, release: v2}}
  - at: 40m
    scale: {{deployment: web, replicas: {web_after}}}
"#,
        kills = a.kills,
        seed = a.seed,
        down = a.max_down_for.as_millis(),
        max_nodes = m * 2 + 20,
        batch_after = batch / 4,
        web_after = web / 2,
    )
}

/// Plays the run: the table and the JSON line, and the ledger.
pub fn main(a: &ChaosArgs, progress: bool) -> Result<(String, Ledger), ChaosError> {
    let text = scenario_yaml(a);
    if let Some(path) = &a.write_scenario {
        std::fs::write(path, &text).map_err(|e| ChaosError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let s = scenario::parse("bench chaos", &text, None).map_err(SimError::from)?;
    let catalog = scenario::load_catalog(&s).map_err(SimError::from)?;
    let wall = std::time::Instant::now();
    let outcome = runner::run_blocking(
        &s,
        &catalog,
        &RunOptions {
            progress,
            label: String::new(),
        },
    )?;
    let summary = summarize(&outcome);
    let ledger = Ledger::from_summary(&summary);
    let mut out = String::new();
    let faults =
        match (
            a.api_faults,
            a.cloud_errors,
            a.launch_invisible_for,
            a.terminated_visible_for,
        ) {
            (None, None, None, None) => "none".to_string(),
            _ => {
                format!(
            "api {}, cloud errors {}, launch invisible up to {}, terminated visible up to {}",
            a.api_faults.map_or("0".into(), |s| format!("{:.1}%", s * 100.0)),
            a.cloud_errors.map_or("0".into(), |s| format!("{:.1}%", s * 100.0)),
            a.launch_invisible_for.map_or("0s".into(), |d| format!("{}s", d.as_secs())),
            a.terminated_visible_for.map_or("0s".into(), |d| format!("{}s", d.as_secs())),
        )
            }
        };
    out.push_str(&format!(
        "berth bench chaos: {} machines' worth of pods, {} kills, seed {}, faults: {faults}\n\n",
        a.machines, a.kills, a.seed
    ));
    let rows: Vec<(&str, String)> = vec![
        ("duplicate launches", ledger.duplicate_launches.to_string()),
        ("instances leaked", ledger.instances_leaked.to_string()),
        (
            "double terminations",
            ledger.double_terminations.to_string(),
        ),
        (
            "PDB-protected pods removed without eviction",
            ledger.pdb_bypassed.to_string(),
        ),
        (
            "pods unscheduled at the end",
            ledger.pods_unscheduled_at_end.to_string(),
        ),
        (
            "machines stuck (15 min in one phase)",
            ledger.machines_stuck.to_string(),
        ),
        ("kills", ledger.kills.to_string()),
        (
            "seconds to converge after the last kill",
            ledger
                .seconds_to_converge
                .map_or_else(|| "never".to_string(), |s| s.to_string()),
        ),
        ("cloud API calls", ledger.api_calls.to_string()),
        ("API faults served", ledger.api_faults.to_string()),
        ("nodes launched", ledger.nodes_launched.to_string()),
        ("pods created", ledger.pods_created.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        out.push_str(&format!("{k:<width$}  {v:>8}\n"));
    }
    out.push_str(&format!(
        "\npromise {} ({:.1} s of wall time)\n",
        if ledger.kept() { "kept" } else { "BROKEN" },
        wall.elapsed().as_secs_f64()
    ));
    let mut line = json!({
        "benchmark": "chaos",
        "machines": a.machines,
        "seed": a.seed,
        "kept": ledger.kept(),
        "wall_seconds": wall.elapsed().as_secs_f64(),
    });
    if let (Some(obj), Ok(serde_json::Value::Object(l))) =
        (line.as_object_mut(), serde_json::to_value(&ledger))
    {
        obj.extend(l);
    }
    out.push_str(&line.to_string());
    out.push('\n');
    Ok((out, ledger))
}
