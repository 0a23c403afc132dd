//! What a simulation measured, and the figures drawn from it: pure functions over plain data, so the table, the
//! comparison and the report are the same for the same samples.

use serde::Serialize;
use std::collections::BTreeMap;

/// One look at the cluster, every `sampleInterval` of virtual time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the scenario began.
    pub t_s: u64,
    /// Pods not yet bound to a node.
    pub pods_pending: u32,
    pub pods_running: u32,
    /// Nodes by "group capacity-type" (e.g. `general spot`).
    pub nodes: BTreeMap<String, u32>,
    /// Summed hourly price of the nodes, USD.
    pub hourly_cost: f64,
    /// Requested over allocatable, across nodes.
    pub cpu_utilization: f64,
    pub memory_utilization: f64,
    /// Cores requested by running pods.
    pub requested_cpu_cores: f64,
}

/// A template change berth rolled out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRecord {
    pub machine_deployment: String,
    /// The MachineDeployment's generation after the change.
    pub generation: i64,
    pub started_s: u64,
    /// When every replica was updated and available with no old ones left; None if it never finished.
    pub finished_s: Option<u64>,
}

/// What berth's garbage collector removed (berth_garbage_collected_total by kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GarbageCollected {
    pub instances: u64,
    pub nodes: u64,
    pub launch_templates: u64,
}

/// One spot instance EC2 reclaimed, as played.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InterruptionRecord {
    pub instance_id: String,
    /// Whether EC2 warned two minutes ahead (the scenario's `warning`).
    pub warning: bool,
    /// When EC2 warned (without a warning: when it reclaimed the instance).
    pub warned_s: u64,
    /// When the instance terminated; None if it still ran at the end.
    pub terminated_s: Option<u64>,
    /// berth terminated it (after draining it) before EC2's deadline.
    pub terminated_by_berth: bool,
    /// Workload pods (DaemonSet pods are the node's own) running on its node at the warning.
    pub pods: u64,
    /// Of those, pods gone from the node before it terminated: evicted by berth's drain (the only other deleter of
    /// a running pod in a simulation is a scenario's scale-down of its deployment).
    pub pods_evicted: u64,
    /// Workload pods still running on its node when it terminated.
    pub pods_lost: u64,
    /// When its replacement Node became Ready (see [`match_replacements`]).
    pub replacement_ready_s: Option<u64>,
}

/// When a Node was first seen registered and first seen Ready, in seconds since the scenario began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimes {
    pub registered_s: u64,
    pub ready_s: Option<u64>,
}

/// Gives each interruption its replacement Node: in the order of the warnings (then instance ids), each takes the
/// Node that became Ready first among those that registered after its warning, are not themselves interrupted and
/// no earlier interruption took. A Node replaces at most one interruption and an interruption has at most one
/// replacement. (Any Node counts, whatever group it joins and whatever pods it takes: berth plans the interrupted
/// pods' capacity as a whole, not node for node. A Node launched for other pods after a warning counts too.)
pub fn match_replacements(records: &mut [InterruptionRecord], nodes: &BTreeMap<String, NodeTimes>) {
    let interrupted: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.instance_id.as_str()).collect();
    let mut candidates: Vec<(u64, u64, &str)> = nodes
        .iter()
        .filter(|(name, _)| !interrupted.contains(name.as_str()))
        .filter_map(|(name, t)| t.ready_s.map(|r| (r, t.registered_s, name.as_str())))
        .collect();
    candidates.sort();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|a, b| {
        (records[*a].warned_s, &records[*a].instance_id)
            .cmp(&(records[*b].warned_s, &records[*b].instance_id))
    });
    for i in order {
        let warned = records[i].warned_s;
        if let Some(k) = candidates.iter().position(|(_, reg, _)| *reg > warned) {
            records[i].replacement_ready_s = Some(candidates.remove(k).0);
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// The configuration's name in a comparison.
    pub label: String,
    pub seed: u64,
    pub duration_s: u64,
    pub samples: Vec<Sample>,
    /// Seconds each pod waited from creation to running.
    pub pending_seconds: Vec<u64>,
    /// Pods still waiting at the end, with how long each had waited.
    pub still_waiting_seconds: Vec<u64>,
    pub pods_created: u64,
    pub nodes_launched: u64,
    pub nodes_removed: u64,
    /// Launches berth gave up on or that failed (berth_launch_failures_total).
    pub launch_failures: u64,
    /// Warning Events by reason (with repeats): why something did not happen.
    pub warnings: BTreeMap<String, u64>,
    /// Instances beyond the first launched for the same Machine.
    pub duplicate_launches: u64,
    /// Cloud API calls by action.
    pub api_calls: BTreeMap<String, u64>,
    /// Calls EC2 answered RequestLimitExceeded because its bucket was empty.
    pub server_throttles: u64,
    /// Nodes disrupted, by reason.
    pub disruptions: BTreeMap<String, u64>,
    pub rollouts: Vec<RolloutRecord>,
    /// PodDisruptionBudgets: name -> "deployment rule".
    pub pdbs: BTreeMap<String, String>,
    /// Running pods a PodDisruptionBudget protects that berth's terminations took down without an eviction.
    pub pdb_bypassed: u64,
    /// Every spot interruption played, in the order of the warnings.
    pub interruptions: Vec<InterruptionRecord>,
    /// Seconds each replacement of an interrupted pod waited from its creation to running.
    pub interrupted_pending_seconds: Vec<u64>,
    /// Replacements of interrupted pods still waiting at the end, with how long each had waited.
    pub interrupted_still_waiting_seconds: Vec<u64>,
    /// Rebalance recommendations sent ahead of warnings.
    pub rebalance_recommendations: u64,
    /// Per job: (completions done, completions wanted).
    pub jobs: BTreeMap<String, (u32, u32)>,
    /// The timeline as played: (second, what).
    pub events: Vec<(u64, String)>,
    /// Machines berth's health checks remediated (berth_remediations_total, every group and reason).
    pub machines_remediated: u64,
    /// Remediations berth held back (berth_remediations_held_total): too many unhealthy at once, stale heartbeats.
    pub remediations_held: u64,
    pub garbage_collected: GarbageCollected,
    /// Instances tagged as the cluster's, not terminated, that no Machine owns at the end of the run.
    pub instances_leaked_at_end: u64,
    /// Times berth was stopped as a crash stops it (a scenario's `chaos`).
    pub kills: u64,
    /// Seconds from the last kill until no pod waited and every Machine was Running: None without kills, Some(None)
    /// if that never happened.
    pub seconds_to_converge: Option<Option<u64>>,
    /// Machines whose phase, other than Running, had not moved for 15 minutes at the end.
    pub machines_stuck: u64,
    /// Instances a TerminateInstances call terminated again.
    pub double_terminations: u64,
    /// API faults the emulator served, by kind.
    pub api_faults: BTreeMap<String, u64>,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub pods_created: u64,
    pub pods_scheduled: u64,
    pub pods_unscheduled_at_end: u64,
    pub pending_p50_s: u64,
    pub pending_p99_s: u64,
    pub pending_max_s: u64,
    pub nodes_launched: u64,
    pub nodes_removed: u64,
    pub launch_failures: u64,
    pub warnings: BTreeMap<String, u64>,
    pub peak_nodes: u32,
    pub final_nodes: u32,
    pub peak_hourly_cost: f64,
    pub final_hourly_cost: f64,
    /// Integral of the hourly cost over the run, USD.
    pub total_cost: f64,
    /// Time-weighted means over samples with nodes.
    pub mean_cpu_utilization: f64,
    pub mean_memory_utilization: f64,
    pub final_cpu_utilization: f64,
    pub final_memory_utilization: f64,
    pub api_calls: u64,
    pub server_throttles: u64,
    pub disruptions: BTreeMap<String, u64>,
    /// Seconds per rollout, None for one that did not finish.
    pub rollout_seconds: Vec<Option<u64>>,
    pub pdb_bypassed: u64,
    /// Spot instances EC2 reclaimed (warned or not).
    pub spot_interruptions: u64,
    /// Of those, instances berth drained and terminated itself before EC2's two-minute deadline.
    pub interruptions_terminated_by_berth: u64,
    /// Workload pods running on interrupted nodes at the warning (without one: at the termination).
    pub interrupted_pods: u64,
    /// Of those, pods evicted (by berth's drain) before their node terminated.
    pub interrupted_pods_evicted_before_termination: u64,
    /// Workload pods still running on interrupted nodes when they terminated.
    pub pods_lost_to_interruptions: u64,
    /// Interruptions whose replacement Node (a Node registered after the warning, matched one to one by
    /// [`match_replacements`]) was Ready no later than the interrupted instance terminated.
    pub replacements_ready_before_termination: u64,
    /// Interruptions (with a warning) whose replacement Node was Ready no later than EC2's deadline, two minutes
    /// after the warning, whenever the instance terminated (berth may terminate it sooner, once drained).
    pub replacements_ready_before_deadline: u64,
    /// Pending time (creation to running) of the replacements of interrupted pods; those still waiting count with
    /// the wait so far.
    pub interrupted_pods_pending_p50_s: u64,
    pub interrupted_pods_pending_p99_s: u64,
    pub rebalance_recommendations: u64,
    pub duplicate_launches: u64,
    pub jobs_complete: bool,
    pub machines_remediated: u64,
    pub remediations_held: u64,
    pub garbage_collected: GarbageCollected,
    pub instances_leaked_at_end: u64,
    pub kills: u64,
    pub seconds_to_converge: Option<Option<u64>>,
    pub machines_stuck: u64,
    pub double_terminations: u64,
    pub api_faults: u64,
}

/// The `q`-quantile (nearest rank) of sorted values.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(o: &Outcome) -> Summary {
    // Pods still waiting count with the wait they had so far: a pod never scheduled must not flatter the tail.
    let mut waits: Vec<u64> = o
        .pending_seconds
        .iter()
        .chain(o.still_waiting_seconds.iter())
        .copied()
        .collect();
    waits.sort_unstable();
    let nodes = |s: &Sample| s.nodes.values().sum::<u32>();
    let last = o.samples.last();
    let with_nodes: Vec<&Sample> = o.samples.iter().filter(|s| nodes(s) > 0).collect();
    let mean = |f: &dyn Fn(&Sample) -> f64| {
        if with_nodes.is_empty() {
            0.0
        } else {
            with_nodes.iter().map(|s| f(s)).sum::<f64>() / with_nodes.len() as f64
        }
    };
    let total_cost = o
        .samples
        .windows(2)
        .map(|w| w[0].hourly_cost * (w[1].t_s - w[0].t_s) as f64 / 3600.0)
        .sum();
    let mut interrupted_waits: Vec<u64> = o
        .interrupted_pending_seconds
        .iter()
        .chain(o.interrupted_still_waiting_seconds.iter())
        .copied()
        .collect();
    interrupted_waits.sort_unstable();
    let sum = |f: &dyn Fn(&InterruptionRecord) -> u64| o.interruptions.iter().map(f).sum::<u64>();
    Summary {
        spot_interruptions: o.interruptions.len() as u64,
        interruptions_terminated_by_berth: sum(&|r| u64::from(r.terminated_by_berth)),
        interrupted_pods: sum(&|r| r.pods),
        interrupted_pods_evicted_before_termination: sum(&|r| r.pods_evicted),
        pods_lost_to_interruptions: sum(&|r| r.pods_lost),
        replacements_ready_before_termination: sum(&|r| {
            u64::from(
                matches!((r.replacement_ready_s, r.terminated_s), (Some(ready), Some(t)) if ready <= t),
            )
        }),
        replacements_ready_before_deadline: sum(&|r| {
            u64::from(
                r.warning
                    && r.replacement_ready_s.is_some_and(|ready| {
                        ready <= r.warned_s + super::scenario::SPOT_WARNING.as_secs()
                    }),
            )
        }),
        interrupted_pods_pending_p50_s: quantile(&interrupted_waits, 0.50),
        interrupted_pods_pending_p99_s: quantile(&interrupted_waits, 0.99),
        rebalance_recommendations: o.rebalance_recommendations,
        pods_created: o.pods_created,
        pods_scheduled: o.pending_seconds.len() as u64,
        pods_unscheduled_at_end: o.still_waiting_seconds.len() as u64,
        pending_p50_s: quantile(&waits, 0.50),
        pending_p99_s: quantile(&waits, 0.99),
        pending_max_s: waits.last().copied().unwrap_or(0),
        nodes_launched: o.nodes_launched,
        nodes_removed: o.nodes_removed,
        launch_failures: o.launch_failures,
        warnings: o.warnings.clone(),
        peak_nodes: o.samples.iter().map(nodes).max().unwrap_or(0),
        final_nodes: last.map(nodes).unwrap_or(0),
        peak_hourly_cost: o.samples.iter().map(|s| s.hourly_cost).fold(0.0, f64::max),
        final_hourly_cost: last.map(|s| s.hourly_cost).unwrap_or(0.0),
        total_cost,
        mean_cpu_utilization: mean(&|s| s.cpu_utilization),
        mean_memory_utilization: mean(&|s| s.memory_utilization),
        final_cpu_utilization: last.map(|s| s.cpu_utilization).unwrap_or(0.0),
        final_memory_utilization: last.map(|s| s.memory_utilization).unwrap_or(0.0),
        api_calls: o.api_calls.values().sum(),
        server_throttles: o.server_throttles,
        disruptions: o.disruptions.clone(),
        rollout_seconds: o
            .rollouts
            .iter()
            .map(|r| r.finished_s.map(|f| f - r.started_s))
            .collect(),
        pdb_bypassed: o.pdb_bypassed,
        duplicate_launches: o.duplicate_launches,
        jobs_complete: o.jobs.values().all(|(done, want)| done >= want),
        machines_remediated: o.machines_remediated,
        remediations_held: o.remediations_held,
        garbage_collected: o.garbage_collected,
        instances_leaked_at_end: o.instances_leaked_at_end,
        kills: o.kills,
        seconds_to_converge: o.seconds_to_converge,
        machines_stuck: o.machines_stuck,
        double_terminations: o.double_terminations,
        api_faults: o.api_faults.values().sum(),
    }
}

/// The rows of the summary table: (figure, value).
pub fn rows(s: &Summary) -> Vec<(String, String)> {
    let pct = |f: f64| format!("{:.1}%", f * 100.0);
    let mut r: Vec<(String, String)> = vec![
        ("pods created".into(), s.pods_created.to_string()),
        ("pods scheduled".into(), s.pods_scheduled.to_string()),
        (
            "pods still pending at the end".into(),
            s.pods_unscheduled_at_end.to_string(),
        ),
        ("time pending p50".into(), format!("{}s", s.pending_p50_s)),
        ("time pending p99".into(), format!("{}s", s.pending_p99_s)),
        ("time pending max".into(), format!("{}s", s.pending_max_s)),
        ("nodes launched".into(), s.nodes_launched.to_string()),
        ("nodes removed".into(), s.nodes_removed.to_string()),
        ("launch failures".into(), s.launch_failures.to_string()),
        (
            "nodes peak / final".into(),
            format!("{} / {}", s.peak_nodes, s.final_nodes),
        ),
        (
            "hourly cost peak".into(),
            format!("${:.2}", s.peak_hourly_cost),
        ),
        (
            "hourly cost final".into(),
            format!("${:.2}", s.final_hourly_cost),
        ),
        ("cost of the run".into(), format!("${:.2}", s.total_cost)),
        (
            "cpu utilization mean / final".into(),
            format!(
                "{} / {}",
                pct(s.mean_cpu_utilization),
                pct(s.final_cpu_utilization)
            ),
        ),
        (
            "memory utilization mean / final".into(),
            format!(
                "{} / {}",
                pct(s.mean_memory_utilization),
                pct(s.final_memory_utilization)
            ),
        ),
        ("EC2 API calls".into(), s.api_calls.to_string()),
        (
            "EC2 throttling errors".into(),
            s.server_throttles.to_string(),
        ),
    ];
    if s.disruptions.is_empty() {
        r.push(("disruptions".into(), "none".into()));
    }
    for (reason, n) in &s.disruptions {
        r.push((format!("disruptions: {reason}"), n.to_string()));
    }
    for (reason, n) in &s.warnings {
        r.push((format!("warning events: {reason}"), n.to_string()));
    }
    for (i, d) in s.rollout_seconds.iter().enumerate() {
        r.push((
            format!("rollout {} duration", i + 1),
            d.map_or_else(|| "did not finish".into(), |d| format!("{d}s")),
        ));
    }
    if s.kills > 0 {
        r.push(("berth crashes (chaos)".into(), s.kills.to_string()));
        r.push((
            "seconds to converge after the last crash".into(),
            match s.seconds_to_converge {
                Some(Some(t)) => format!("{t}s"),
                _ => "never".into(),
            },
        ));
    }
    if s.kills > 0 || s.double_terminations > 0 {
        r.push((
            "instances terminated twice".into(),
            s.double_terminations.to_string(),
        ));
    }
    if s.kills > 0 || s.machines_stuck > 0 {
        r.push((
            "machines stuck 15 min in a phase".into(),
            s.machines_stuck.to_string(),
        ));
    }
    if s.api_faults > 0 {
        r.push(("API faults served".into(), s.api_faults.to_string()));
    }
    if s.spot_interruptions > 0 {
        r.push((
            "spot interruptions / terminated by berth first".into(),
            format!(
                "{} / {}",
                s.spot_interruptions, s.interruptions_terminated_by_berth
            ),
        ));
        r.push((
            "interrupted pods / evicted before termination".into(),
            format!(
                "{} / {}",
                s.interrupted_pods, s.interrupted_pods_evicted_before_termination
            ),
        ));
        r.push((
            "pods lost to interruptions".into(),
            s.pods_lost_to_interruptions.to_string(),
        ));
        r.push((
            "replacements Ready before termination".into(),
            format!(
                "{} / {}",
                s.replacements_ready_before_termination, s.spot_interruptions
            ),
        ));
        r.push((
            "replacements Ready before EC2's deadline".into(),
            format!(
                "{} / {}",
                s.replacements_ready_before_deadline, s.spot_interruptions
            ),
        ));
        r.push((
            "interrupted pods pending p50 / p99".into(),
            format!(
                "{}s / {}s",
                s.interrupted_pods_pending_p50_s, s.interrupted_pods_pending_p99_s
            ),
        ));
        r.push((
            "rebalance recommendations".into(),
            s.rebalance_recommendations.to_string(),
        ));
    }
    r.push((
        "PDB-protected pods removed without eviction".into(),
        s.pdb_bypassed.to_string(),
    ));
    r.push((
        "duplicate launches".into(),
        s.duplicate_launches.to_string(),
    ));
    r.push((
        "machines remediated".into(),
        s.machines_remediated.to_string(),
    ));
    r.push(("remediations held".into(), s.remediations_held.to_string()));
    let gc = &s.garbage_collected;
    r.push((
        "garbage collected: instances / nodes / LTs".into(),
        format!("{} / {} / {}", gc.instances, gc.nodes, gc.launch_templates),
    ));
    r.push((
        "instances leaked at the end".into(),
        s.instances_leaked_at_end.to_string(),
    ));
    r
}

/// The summary as an aligned text table.
pub fn table(o: &Outcome) -> String {
    let s = summarize(o);
    let mut out = format!(
        "scenario {} (seed {}, {}s simulated)\n",
        o.scenario, o.seed, o.duration_s
    );
    for (k, v) in rows(&s) {
        out.push_str(&format!("  {k:<44} {v:>14}\n"));
    }
    out
}

/// Two runs side by side.
pub fn compare_table(a: &Outcome, b: &Outcome) -> String {
    let (ra, rb) = (rows(&summarize(a)), rows(&summarize(b)));
    let mut keys: Vec<String> = ra.iter().map(|(k, _)| k.clone()).collect();
    for (k, _) in &rb {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    let get = |r: &[(String, String)], k: &str| {
        r.iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "scenario {} (seed {}, {}s simulated)\n",
        a.scenario, a.seed, a.duration_s
    );
    out.push_str(&format!("  {:<44} {:>18} {:>18}\n", "", a.label, b.label));
    for k in keys {
        out.push_str(&format!(
            "  {k:<44} {:>18} {:>18}\n",
            get(&ra, &k),
            get(&rb, &k)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        let sample = |t, pending, nodes: u32, cost, cpu| Sample {
            t_s: t,
            pods_pending: pending,
            pods_running: 0,
            nodes: if nodes > 0 {
                BTreeMap::from([("general spot".to_string(), nodes)])
            } else {
                BTreeMap::new()
            },
            hourly_cost: cost,
            cpu_utilization: cpu,
            memory_utilization: cpu / 2.0,
            requested_cpu_cores: 0.0,
        };
        Outcome {
            scenario: "t".into(),
            label: "a".into(),
            seed: 1,
            duration_s: 7200,
            samples: vec![
                sample(0, 10, 0, 0.0, 0.0),
                sample(3600, 0, 4, 2.0, 0.8),
                sample(7200, 0, 2, 1.0, 0.6),
            ],
            pending_seconds: vec![40, 50, 60, 300],
            still_waiting_seconds: vec![],
            pods_created: 4,
            nodes_launched: 4,
            nodes_removed: 2,
            launch_failures: 0,
            warnings: BTreeMap::new(),
            duplicate_launches: 0,
            api_calls: BTreeMap::from([
                ("CreateFleet".into(), 4),
                ("TerminateInstances".into(), 1),
            ]),
            server_throttles: 0,
            disruptions: BTreeMap::from([("empty".into(), 2)]),
            rollouts: vec![RolloutRecord {
                machine_deployment: "g".into(),
                generation: 2,
                started_s: 100,
                finished_s: Some(400),
            }],
            pdbs: BTreeMap::new(),
            pdb_bypassed: 0,
            interruptions: vec![],
            interrupted_pending_seconds: vec![],
            interrupted_still_waiting_seconds: vec![],
            rebalance_recommendations: 0,
            jobs: BTreeMap::new(),
            events: vec![],
            machines_remediated: 3,
            remediations_held: 2,
            garbage_collected: GarbageCollected {
                instances: 4,
                nodes: 1,
                launch_templates: 0,
            },
            instances_leaked_at_end: 0,
            kills: 0,
            seconds_to_converge: None,
            machines_stuck: 0,
            double_terminations: 0,
            api_faults: BTreeMap::new(),
        }
    }

    #[test]
    fn figures_from_samples() {
        let s = summarize(&outcome());
        assert_eq!(
            (s.pending_p50_s, s.pending_p99_s, s.pending_max_s),
            (50, 300, 300)
        );
        assert_eq!((s.peak_nodes, s.final_nodes), (4, 2));
        assert_eq!(s.peak_hourly_cost, 2.0);
        assert!(
            (s.total_cost - 2.0).abs() < 1e-9,
            "0 for the first hour, then $2/h for an hour: {}",
            s.total_cost
        );
        assert!(
            (s.mean_cpu_utilization - 0.7).abs() < 1e-9,
            "samples without nodes are left out"
        );
        assert_eq!(s.api_calls, 5);
        assert_eq!(s.rollout_seconds, vec![Some(300)]);
    }

    #[test]
    fn pods_never_scheduled_count_in_the_tail() {
        let mut o = outcome();
        o.still_waiting_seconds = vec![5000];
        let s = summarize(&o);
        assert_eq!(s.pending_max_s, 5000);
        assert_eq!(s.pods_unscheduled_at_end, 1);
    }

    #[test]
    fn comparison_has_both_columns() {
        let mut b = outcome();
        b.label = "b".into();
        b.nodes_launched = 9;
        let t = compare_table(&outcome(), &b);
        let line = t.lines().find(|l| l.contains("nodes launched")).unwrap();
        assert!(line.contains('4') && line.contains('9'), "{line}");
    }

    #[test]
    fn health_and_garbage_figures_reach_the_table_and_the_json() {
        let o = outcome();
        let t = table(&o);
        for (row, value) in [
            ("machines remediated", "3"),
            ("remediations held", "2"),
            ("garbage collected: instances / nodes / LTs", "4 / 1 / 0"),
            ("instances leaked at the end", "0"),
        ] {
            let line = t
                .lines()
                .find(|l| l.contains(row))
                .unwrap_or_else(|| panic!("{row}: {t}"));
            assert!(line.trim_end().ends_with(value), "{line}");
        }
        let json = serde_json::to_value(summarize(&o)).unwrap();
        assert_eq!(json["machines_remediated"], 3);
        assert_eq!(json["remediations_held"], 2);
        assert_eq!(
            json["garbage_collected"],
            serde_json::json!({"instances": 4, "nodes": 1, "launch_templates": 0})
        );
        assert_eq!(json["instances_leaked_at_end"], 0);
    }

    fn record(id: &str, warned: u64, terminated: Option<u64>) -> InterruptionRecord {
        InterruptionRecord {
            instance_id: id.into(),
            warning: true,
            warned_s: warned,
            terminated_s: terminated,
            ..Default::default()
        }
    }

    #[test]
    fn each_interruption_gets_at_most_one_replacement_registered_after_its_warning() {
        let node = |registered_s, ready_s| NodeTimes {
            registered_s,
            ready_s,
        };
        let nodes = BTreeMap::from([
            ("i-old".to_string(), node(10, Some(10))),
            ("i-a".to_string(), node(20, Some(20))),
            ("i-b".to_string(), node(25, Some(25))),
            ("i-new1".to_string(), node(150, Some(160))),
            ("i-new2".to_string(), node(170, Some(200))),
            ("i-never".to_string(), node(180, None)),
            ("i-late".to_string(), node(400, Some(410))),
        ]);
        let mut records = vec![
            record("i-b", 100, Some(220)),
            record("i-a", 100, Some(180)),
            record("i-c", 300, Some(420)),
        ];
        match_replacements(&mut records, &nodes);
        let ready: Vec<Option<u64>> = records.iter().map(|r| r.replacement_ready_s).collect();
        // i-a (first by id among equal warnings) takes the first Ready new node, i-b the next; i-c only the late one.
        assert_eq!(ready, vec![Some(200), Some(160), Some(410)]);
        let mut o = outcome();
        o.interruptions = records;
        o.interruptions[0].pods = 10;
        o.interruptions[0].pods_evicted = 10;
        o.interruptions[1].pods = 5;
        o.interruptions[1].pods_evicted = 3;
        o.interruptions[1].pods_lost = 2;
        o.interruptions[2].terminated_by_berth = true;
        o.interrupted_pending_seconds = vec![30, 40, 50];
        o.interrupted_still_waiting_seconds = vec![500];
        let s = summarize(&o);
        assert_eq!(s.spot_interruptions, 3);
        assert_eq!(s.interruptions_terminated_by_berth, 1);
        assert_eq!(
            (
                s.interrupted_pods,
                s.interrupted_pods_evicted_before_termination,
                s.pods_lost_to_interruptions
            ),
            (15, 13, 2)
        );
        assert_eq!(s.replacements_ready_before_termination, 3);
        assert_eq!(
            s.replacements_ready_before_deadline, 3,
            "Ready 100s, 60s and 110s after their warnings"
        );
        assert_eq!(
            (
                s.interrupted_pods_pending_p50_s,
                s.interrupted_pods_pending_p99_s
            ),
            (40, 500)
        );
        let t = table(&o);
        assert!(
            t.contains("interrupted pods / evicted before termination"),
            "{t}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["interrupted_pods_evicted_before_termination"], 13);
        assert_eq!(json["replacements_ready_before_termination"], 3);
        // A replacement Ready after the termination does not count, nor one Ready after EC2's deadline.
        o.interruptions[0].terminated_s = Some(190);
        o.interruptions[2].replacement_ready_s = Some(421);
        let s = summarize(&o);
        assert_eq!(s.replacements_ready_before_termination, 1);
        assert_eq!(s.replacements_ready_before_deadline, 2);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), 2);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.99), 4);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
