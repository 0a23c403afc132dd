//! `berth bench launch`: N machines (default 1,000) launched in one burst against the simulated cloud, which
//! enforces EC2's request and resource buckets (FACTS.md §1) on its side, with berth's client-side rate limiter in
//! front as in production. Reports the API calls per machine, the time until every launch call has been made, and
//! the throttling errors (the target is zero: berth queues instead of being throttled).
//!
//! Time is tokio's paused clock by default, so the figure is the time EC2's limits impose, independent of this
//! machine's speed; `--real-time` runs on the wall clock instead (and takes as long).

use crate::cloud::action::Action;
use crate::cloud::clock::{SharedClock, TokioClock};
use crate::cloud::error::CloudError;
use crate::cloud::metrics::{CloudMetrics, Outcome};
use crate::cloud::sim::{fixtures, SimConfig, SimulatedCloud};
use crate::cloud::{ClassRevision, CloudProvider, InstanceTypeChoice};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Candidate types per deployment, as a class allowing several general-purpose families would give.
const TYPES: &[&str] = &[
    "m5.large",
    "m5a.large",
    "m6i.large",
    "m6a.large",
    "m7i.large",
    "c5.xlarge",
    "c6i.xlarge",
    "r5.large",
    "m5.xlarge",
    "m6i.xlarge",
];
const DEPLOYMENTS: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct LaunchBenchReport {
    pub machines: usize,
    pub launched: usize,
    pub failed: usize,
    pub api_calls: usize,
    pub calls_by_action: BTreeMap<&'static str, usize>,
    /// From the burst to the return of the last launch call (virtual or wall time, see `virtual_time`).
    pub time_to_all_launch_calls: Duration,
    pub virtual_time: bool,
    pub wall: Duration,
    /// Calls EC2 (the simulated server) refused with RequestLimitExceeded.
    pub server_throttles: u64,
    /// Throttled answers berth saw (equal to the above unless faults are scripted).
    pub client_throttled: u64,
    pub limiter_waits: u64,
}

impl LaunchBenchReport {
    pub fn api_calls_per_machine(&self) -> f64 {
        self.api_calls as f64 / self.machines.max(1) as f64
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("{:<34} {:>12}\n", "machines", self.machines));
        s.push_str(&format!("{:<34} {:>12}\n", "launched", self.launched));
        s.push_str(&format!("{:<34} {:>12}\n", "failed", self.failed));
        s.push_str(&format!("{:<34} {:>12}\n", "API calls", self.api_calls));
        s.push_str(&format!(
            "{:<34} {:>12.3}\n",
            "API calls per machine",
            self.api_calls_per_machine()
        ));
        for (a, n) in &self.calls_by_action {
            s.push_str(&format!("  {:<32} {:>12}\n", a, n));
        }
        let clock = if self.virtual_time {
            "s, EC2 limits, virtual"
        } else {
            "s, wall clock"
        };
        s.push_str(&format!(
            "{:<34} {:>12.1} {clock}\n",
            "time until all launch calls made",
            self.time_to_all_launch_calls.as_secs_f64()
        ));
        s.push_str(&format!(
            "{:<34} {:>12.3} s\n",
            "wall time",
            self.wall.as_secs_f64()
        ));
        s.push_str(&format!(
            "{:<34} {:>12}\n",
            "throttling errors (EC2 side)", self.server_throttles
        ));
        s.push_str(&format!(
            "{:<34} {:>12}\n",
            "throttled answers seen by berth", self.client_throttled
        ));
        s.push_str(&format!(
            "{:<34} {:>12}\n",
            "calls queued by berth's limiter", self.limiter_waits
        ));
        s
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "benchmark": "launch",
            "machines": self.machines,
            "launched": self.launched,
            "failed": self.failed,
            "api_calls": self.api_calls,
            "api_calls_per_machine": self.api_calls_per_machine(),
            "calls_by_action": self.calls_by_action,
            "time_to_all_launch_calls_s": self.time_to_all_launch_calls.as_secs_f64(),
            "virtual_time": self.virtual_time,
            "wall_s": self.wall.as_secs_f64(),
            "throttling_errors": self.server_throttles,
            "throttled_seen": self.client_throttled,
            "limiter_waits": self.limiter_waits,
        })
    }
}

/// Runs the burst on the current runtime (pause tokio time before calling for virtual time).
pub async fn run(machines: usize, virtual_time: bool) -> Result<LaunchBenchReport, CloudError> {
    let clock: SharedClock = Arc::new(TokioClock::new(
        chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default(),
    ));
    let metrics =
        CloudMetrics::unregistered().map_err(|e| CloudError::invalid(format!("metrics: {e}")))?;
    let mut config = SimConfig::bundled("us-east-1", "test-cluster", clock, metrics.clone())?;
    config.boot_delay = Duration::from_secs(30);
    let cloud = Arc::new(SimulatedCloud::new(config));

    let wall = Instant::now();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(machines);
    for i in 0..machines {
        let cloud = cloud.clone();
        let mut r = fixtures::request(&format!("machine-{i:05}"));
        let d = i % DEPLOYMENTS;
        r.deployment = Some(format!("deployment-{d}"));
        r.class = ClassRevision {
            name: format!("class-{d}"),
            revision: "1".into(),
        };
        r.bootstrap.labels.insert(
            "berth.dev/machine-deployment".into(),
            format!("deployment-{d}"),
        );
        r.instance_types = TYPES.iter().map(|t| InstanceTypeChoice::new(*t)).collect();
        tasks.push(tokio::spawn(async move {
            let out = cloud.launch(&r).await;
            (out.is_ok(), tokio::time::Instant::now())
        }));
    }
    let mut launched = 0;
    let mut last = start;
    for t in tasks {
        let (ok, at) = t.await.map_err(|e| CloudError::Transient {
            action: "bench",
            message: e.to_string(),
        })?;
        if ok {
            launched += 1;
        }
        last = last.max(at);
    }
    let mut calls_by_action = BTreeMap::new();
    for c in cloud.calls() {
        *calls_by_action.entry(c.action.name()).or_insert(0) += 1;
    }
    Ok(LaunchBenchReport {
        machines,
        launched,
        failed: machines - launched,
        api_calls: cloud.calls().len(),
        calls_by_action,
        time_to_all_launch_calls: last - start,
        virtual_time,
        wall: wall.elapsed(),
        server_throttles: cloud.server_throttles(),
        client_throttled: metrics.total_calls(Outcome::Throttled),
        limiter_waits: Action::ALL.iter().map(|a| metrics.limiter_waits(*a)).sum(),
    })
}

/// `berth bench launch`: builds the runtime (paused unless `real_time`), runs, prints the table and the JSON line.
/// Fails when a launch failed or EC2 throttled a call.
pub fn main(machines: usize, real_time: bool) -> Result<LaunchBenchReport, CloudError> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all();
    if !real_time {
        b.start_paused(true);
    }
    let rt = b.build().map_err(|e| CloudError::Transient {
        action: "bench",
        message: format!("runtime: {e}"),
    })?;
    let report = rt.block_on(run(machines, !real_time))?;
    print!("{}", report.table());
    println!("{}", report.json());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_small_burst_makes_one_fleet_call_per_machine_and_is_never_throttled() {
        let r = run(80, true).await.unwrap();
        assert_eq!(r.launched, 80);
        assert_eq!(r.server_throttles, 0);
        assert_eq!(r.client_throttled, 0);
        assert_eq!(r.calls_by_action["CreateFleet"], 80);
        assert_eq!(r.calls_by_action["CreateLaunchTemplate"], DEPLOYMENTS);
        // CreateFleet: 45 calls at once, then 5 per second: the 80th call waits (80 − 45) / 5 = 7 s.
        let t = r.time_to_all_launch_calls.as_secs_f64();
        assert!((6.5..8.0).contains(&t), "{t}");
        assert!(r.json().to_string().starts_with("{\"api_calls\""));
    }
}
