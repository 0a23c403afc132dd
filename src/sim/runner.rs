//! Plays a scenario: the emulator, the simulated cloud and berth (unchanged) on one virtual clock, the timeline's
//! events at their times, the workload controllers and the binder each virtual second, and a sample of the
//! cluster every `sampleInterval`.
//!
//! Virtual time is tokio's paused clock on a current-thread runtime: whenever every task waits, tokio jumps to the
//! next timer, so an hour of cluster time costs only the work done in it. Every timestamp berth, the emulator and
//! the cloud write comes from one [`TokioClock`] that follows it.

use super::scenario::{Action, Scenario, ScenarioError, SpotInterruption, SPOT_WARNING};
use super::summary::{
    match_replacements, GarbageCollected, InterruptionRecord, NodeTimes, Outcome, RolloutRecord,
    Sample,
};
use super::workload::{Workloads, NAMESPACE, WORKLOAD_LABEL};
use crate::api::crds;
use crate::clock::{SharedClock, TokioClock};
use crate::cloud::metrics::CloudMetrics;
use crate::cloud::sim::{Fault, SimConfig, SimulatedCloud};
use crate::cloud::{tags, CloudProvider};
use crate::emulator::binder::Binder;
use crate::emulator::error::ApiError;
use crate::emulator::kubelet::{InstanceEvent, KubeletSimulator};
use crate::emulator::node_lifecycle::{NodeLifecycle, NODE_MONITOR_PERIOD};
use crate::emulator::store::{ListQuery, PatchKind, Store, WriteOptions};
use crate::emulator::{Config, Emulator};
use crate::model::instance_type::{labels, CapacityType, Catalog};
use crate::model::resources::Resources;
use crate::telemetry::metrics::Metrics;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("emulator: {0}")]
    Emulator(#[from] ApiError),
    #[error("simulated cloud: {0}")]
    Cloud(String),
    #[error("setting up the simulation: {0}")]
    Setup(String),
    #[error("{file}: event at {at}s: {message}")]
    Event {
        file: String,
        at: u64,
        message: String,
    },
}

impl SimError {
    pub fn category(&self) -> &'static str {
        match self {
            SimError::Scenario(e) => e.category(),
            SimError::Emulator(e) => e.category(),
            SimError::Cloud(_) => "cloud",
            SimError::Setup(_) => "setup",
            SimError::Event { .. } => "event",
        }
    }
}

/// How to play.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// A one-line progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// A name for this configuration in comparisons.
    pub label: String,
}

/// The wall-clock start of every simulation (fixed, so reports do not depend on when they were made).
pub fn epoch() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default() // 2026-01-01T00:00:00Z
}

/// berth's controllers, started the way `berth run` starts them: stopped as SIGTERM stops them, or as a crash
/// would.
pub struct Berth {
    stop: tokio::sync::watch::Sender<bool>,
    task: crate::shutdown::OwnedTask,
}

impl Berth {
    /// A graceful stop: every controller finishes the reconcile it is in.
    pub fn stop(self) {
        self.stop.send_replace(true);
        // Dropping the task now would abort what the signal asks to finish: let it wind down by itself.
        self.task.detach();
    }

    /// A crash: every task berth runs is dropped at whatever await point it is in, its writes half done.
    pub fn crash(self) {
        drop(self.task);
    }
}

/// Starts berth against this client and cloud exactly as `berth run` starts it while it leads. The one place a
/// simulation starts berth.
pub fn start_berth(
    client: kube::Client,
    clock: SharedClock,
    metrics: Metrics,
    cloud: Arc<dyn CloudProvider>,
    cluster_name: &str,
    catalog: Arc<Catalog>,
) -> Berth {
    use crate::controllers::provisioner::ProvisionerConfig;
    use crate::operator::{run_controllers, Controllers};
    let base = Arc::new(crate::controllers::Context::new(client, clock, metrics));
    let ctx = Arc::new(Controllers {
        base,
        cloud: Some(cloud),
        cluster_name: cluster_name.to_string(),
        catalog,
        provisioner: ProvisionerConfig::default(),
        disruption: crate::controllers::disruption::DisruptionConfig {
            cluster_name: cluster_name.to_string(),
            ..Default::default()
        },
        // The simulated cloud serves its interruption queue whatever the name.
        interruption_queue: Some("sim-interruptions".into()),
        dry_run: false,
    });
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = crate::shutdown::OwnedTask::spawn(run_controllers(ctx, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Berth { stop: tx, task }
}

/// Runs a scenario to its end on a fresh paused current-thread runtime (blocking).
pub fn run_blocking(
    scenario: &Scenario,
    catalog: &Catalog,
    options: &RunOptions,
) -> Result<Outcome, SimError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| SimError::Setup(format!("tokio runtime: {e}")))?;
    let out = runtime.block_on(play(scenario, catalog, options));
    // Controllers still wind down; dropping the runtime cancels them.
    runtime.shutdown_background();
    out
}

/// What terminations took down with them, counted before the kubelets delete the Node's pods.
#[derive(Default)]
struct Terminations {
    /// Instances EC2 warned of or reclaimed (spot interruptions), with the workload pods running on them at the
    /// warning: what is still running at the termination is lost, not disrupted by berth.
    interrupted: BTreeMap<String, (InterruptionRecord, BTreeSet<String>)>,
    /// Workloads a PodDisruptionBudget protects.
    protected: BTreeSet<String>,
    /// DaemonSets: their pods are the node's own, neither evicted nor lost with it.
    daemonsets: BTreeSet<String>,
    /// Protected running pods berth's terminations removed without an eviction.
    pdb_bypassed: u64,
}

impl Terminations {
    /// An instance terminated at `second`: counts its interrupted pods evicted before and lost at the termination.
    fn terminated(&mut self, instance_id: &str, second: u64, on_node: &[NodePod]) {
        let workload_pods: Vec<&NodePod> = on_node
            .iter()
            .filter(|p| !self.daemonsets.contains(&p.workload))
            .collect();
        if let Some((record, at_warning)) = self.interrupted.get_mut(instance_id) {
            if record.terminated_s.is_some() {
                return;
            }
            record.terminated_s = Some(second);
            let present: BTreeSet<&str> = workload_pods.iter().map(|p| p.name.as_str()).collect();
            record.pods_evicted = at_warning
                .iter()
                .filter(|n| !present.contains(n.as_str()))
                .count() as u64;
            record.pods_lost = workload_pods
                .iter()
                .filter(|p| p.phase == "Running")
                .count() as u64;
        } else {
            let bypassed = on_node
                .iter()
                .filter(|p| p.phase == "Running" && self.protected.contains(&p.workload))
                .count() as u64;
            self.pdb_bypassed += bypassed;
        }
    }
}

struct Shortage {
    fault: Fault,
    until: Duration,
}

fn seeded(seed: u64) -> impl FnMut() -> u64 {
    // A seeded choice, the same on every machine.
    let mut state = seed;
    move || crate::fx::splitmix64(&mut state)
}

async fn play(
    scenario: &Scenario,
    catalog: &Catalog,
    options: &RunOptions,
) -> Result<Outcome, SimError> {
    let clock: SharedClock = Arc::new(TokioClock::new(epoch()));
    let start = tokio::time::Instant::now();
    let emulator = Emulator::with_clock(clock.clone(), Config::default());
    let store = emulator.store().clone();
    let client = emulator.client();
    apply_objects(&store, scenario)?;
    let nodes_rt = store
        .resource_type("", "nodes")
        .ok_or_else(|| SimError::Setup("no Node kind".into()))?;

    let cloud_metrics =
        CloudMetrics::unregistered().map_err(|e| SimError::Setup(format!("cloud metrics: {e}")))?;
    let mut config = SimConfig::new(
        &scenario.region,
        &scenario.cluster_name,
        catalog.clone(),
        clock.clone(),
        cloud_metrics,
    );
    config.boot_delay = scenario.boot_delay;
    config.ready_delay = scenario.ready_delay;
    config.jitter_seed = scenario.seed;
    config.consistency = scenario.faults.consistency;
    config.error_share = scenario.faults.cloud_error_share;
    let cloud = Arc::new(SimulatedCloud::new(config));
    emulator.set_api_faults(scenario.faults.api.clone());

    let terminations = Arc::new(Mutex::new(Terminations::default()));
    let observer = {
        let terminations = terminations.clone();
        let store = store.clone();
        move |e: &InstanceEvent| {
            if let InstanceEvent::Terminated(t) = e {
                let on_node = pods_on_node(&store, &t.instance_id);
                let second = tokio::time::Instant::now().duration_since(start).as_secs();
                terminations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .terminated(&t.instance_id, second, &on_node);
            }
        }
    };
    let kubelets = KubeletSimulator::new(emulator.clone());
    crate::sim::dataplane::connect_kubelets(&cloud, kubelets.clone(), observer);
    // kube-controller-manager's node lifecycle controller: it reads only stale or tainted nodes, so a healthy
    // cluster costs it nothing and plays exactly as without it.
    let node_lifecycle = NodeLifecycle::new(emulator.clone(), kubelets.clone());

    let metrics = Metrics::new().map_err(|e| SimError::Setup(format!("metrics: {e}")))?;
    let provider: Arc<dyn CloudProvider> = cloud.clone();
    let berth_catalog = Arc::new(catalog.clone());
    let launch_berth = || {
        start_berth(
            client.clone(),
            clock.clone(),
            metrics.clone(),
            provider.clone(),
            &scenario.cluster_name,
            berth_catalog.clone(),
        )
    };
    let mut berth = Some(launch_berth());
    let mut berth_restart_at: Option<Duration> = None;
    // The chaos: crashes and restarts at their moments, between the whole seconds the rest of the world moves at.
    let mut chaos = chaos_schedule(scenario.chaos.as_ref(), scenario.seed);
    let mut kills = 0u64;
    let mut last_kill: Option<Duration> = None;
    let mut converged_s: Option<u64> = None;
    let mut machine_phases: BTreeMap<String, (String, u64)> = BTreeMap::new();

    let binder = Binder::new(emulator.clone());
    let mut workloads = Workloads::new();
    let prices = price_index(catalog);
    let mut samples: Vec<Sample> = Vec::new();
    let mut rollouts: Vec<RolloutRecord> = Vec::new();
    let mut shortages: Vec<Shortage> = Vec::new();
    let mut spot_interruptions = 0u64;
    // Spot interruptions: instances chosen ahead of their warning (by timeline index), EC2's deadlines, when each
    // Node was first seen registered and Ready (to find the interruptions' replacements).
    let mut chosen: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut deadlines: Vec<(Duration, String)> = Vec::new();
    let mut node_times: BTreeMap<String, NodeTimes> = BTreeMap::new();
    let mut nodes_version: Option<u64> = None;
    let mut rebalance_recommendations = 0u64;
    // Failed nodes to recover at a time; the end of a control-plane outage; the stray instances injected.
    let mut recoveries: Vec<(Duration, Vec<String>)> = Vec::new();
    let mut outage_until: Option<Duration> = None;
    let mut strays: BTreeSet<String> = BTreeSet::new();
    let mut events_log: Vec<(u64, String)> = Vec::new();
    let mut next_event = 0usize;
    let progress = Progress::new(options.progress, scenario.duration);
    let total = scenario.duration.as_secs();

    for second in 0..=total {
        while let Some(&(at, step)) = chaos
            .first()
            .filter(|(at, _)| *at < Duration::from_secs(second))
        {
            chaos.remove(0);
            tokio::time::sleep_until(start + at).await;
            match step {
                ChaosStep::Crash => {
                    if let Some(b) = berth.take() {
                        b.crash();
                        kills += 1;
                        last_kill = Some(at);
                        converged_s = None;
                        events_log.push((at.as_secs(), "berth crashed".into()));
                    }
                }
                ChaosStep::Start => {
                    if berth.is_none() && berth_restart_at.is_none() {
                        berth = Some(launch_berth());
                    }
                }
            }
        }
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let now = Duration::from_secs(second);
        // Spot interruptions whose rebalance recommendations go out before their warning: choose them now.
        for (i, e) in scenario.timeline.iter().enumerate().skip(next_event) {
            let Action::SpotInterruption(s) = &e.action else {
                continue;
            };
            if e.at <= now || s.choose_at(e.at) > now || chosen.contains_key(&i) {
                continue;
            }
            let victims = choose_victims(
                &cloud,
                s,
                s.count as usize,
                &[],
                scenario.seed,
                e.at.as_secs(),
                i + 1,
            );
            let k = s.rebalanced(victims.len());
            for id in &victims[..k] {
                cloud.send_interruption_event(
                    crate::interruption::events::rebalance_recommendation(
                        &scenario.region,
                        id,
                        clock.now(),
                    ),
                );
            }
            if k > 0 {
                rebalance_recommendations += k as u64;
                events_log.push((second, format!("rebalance recommendation for {k}")));
            }
            chosen.insert(i, victims);
        }
        while let Some(e) = scenario.timeline.get(next_event).filter(|e| e.at <= now) {
            next_event += 1;
            events_log.push((second, e.action.label()));
            let err = |message: String| SimError::Event {
                file: scenario.file.clone(),
                at: second,
                message,
            };
            match &e.action {
                Action::Deployment(d) => workloads.add_deployment(&store, d)?,
                Action::Scale(s) => {
                    if !workloads.scale(&store, &s.deployment, s.replicas)? {
                        return Err(err(format!("no deployment {:?} to scale", s.deployment)));
                    }
                }
                Action::Job { job, run_for } => workloads.add_job(job, *run_for),
                Action::DaemonSet(d) => {
                    workloads.add_daemonset(&store, d)?;
                    terminations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .daemonsets
                        .insert(d.name.clone());
                }
                Action::Pdb(p) => {
                    workloads.add_pdb(&store, p)?;
                    terminations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .protected
                        .insert(p.deployment.clone());
                }
                Action::TemplateChange {
                    machine_deployment,
                    patch,
                } => {
                    let generation = patch_md(
                        &store,
                        machine_deployment,
                        &json!({"spec": {"template": patch}}),
                    )?;
                    rollouts.push(RolloutRecord {
                        machine_deployment: machine_deployment.clone(),
                        generation,
                        started_s: second,
                        finished_s: None,
                    });
                }
                Action::ScaleMachineDeployment(s) => {
                    patch_md(
                        &store,
                        &s.machine_deployment,
                        &json!({"spec": {"replicas": s.replicas}}),
                    )?;
                }
                Action::SpotInterruption(s) => {
                    // Chosen ahead (those gone since are spared: a rebalance may have replaced them), topped up to
                    // the count when fewer spot instances ran then.
                    let mut victims = chosen.remove(&(next_event - 1)).unwrap_or_default();
                    let more = (s.count as usize).saturating_sub(victims.len());
                    victims.extend(choose_victims(
                        &cloud,
                        s,
                        more,
                        &victims,
                        scenario.seed,
                        second,
                        next_event,
                    ));
                    for id in victims {
                        // The pods on it now, and the record, before EC2 acts: the termination's observer reads both.
                        let on_node = pods_on_node(&store, &id);
                        let mut st = terminations.lock().unwrap_or_else(|p| p.into_inner());
                        let at_warning: BTreeSet<String> = on_node
                            .into_iter()
                            .filter(|p| {
                                p.phase == "Running" && !st.daemonsets.contains(&p.workload)
                            })
                            .map(|p| p.name)
                            .collect();
                        let record = InterruptionRecord {
                            instance_id: id.clone(),
                            warning: s.warning,
                            warned_s: second,
                            pods: at_warning.len() as u64,
                            ..Default::default()
                        };
                        st.interrupted
                            .insert(id.clone(), (record, at_warning.clone()));
                        drop(st);
                        let reclaimed = if s.warning {
                            cloud.warn_interruption(&id)
                        } else {
                            cloud.interrupt(&id)
                        };
                        if !reclaimed {
                            // Gone since it was chosen (before a late warning): no interruption.
                            terminations
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .interrupted
                                .remove(&id);
                            continue;
                        }
                        spot_interruptions += 1;
                        workloads.mark_interrupted(at_warning);
                        if s.warning {
                            deadlines.push((now + SPOT_WARNING, id));
                        }
                    }
                }
                Action::InsufficientCapacity {
                    instance_type,
                    zone,
                    capacity_type,
                    duration,
                } => {
                    let fault = Fault::InsufficientCapacity {
                        instance_type: instance_type.clone(),
                        zone: zone.clone(),
                        capacity_type: *capacity_type,
                    };
                    cloud.inject(fault.clone(), None);
                    shortages.push(Shortage {
                        fault,
                        until: now + *duration,
                    });
                }
                Action::RestartBerth { down_for } => {
                    if let Some(b) = berth.take() {
                        b.stop();
                    }
                    berth_restart_at = Some(now + *down_for);
                }
                Action::NodeFailure {
                    count,
                    machine_deployment,
                    condition,
                    recover_after,
                } => {
                    let in_group: Option<BTreeSet<String>> = machine_deployment.as_ref().map(|g| {
                        cloud
                            .all_instances()
                            .into_iter()
                            .filter(|i| {
                                !i.state.is_terminal()
                                    && i.tags.get(tags::MACHINE_DEPLOYMENT) == Some(g)
                            })
                            .map(|i| i.instance_id)
                            .collect()
                    });
                    let candidates: Vec<String> = kubelets
                        .healthy_nodes()
                        .into_iter()
                        .filter(|n| in_group.as_ref().is_none_or(|g| g.contains(n)))
                        .collect();
                    let mut rng = seeded(scenario.seed ^ (second << 20) ^ next_event as u64);
                    let victims = pick(candidates, *count as usize, &mut rng);
                    if victims.len() < *count as usize {
                        events_log.push((
                            second,
                            format!("node failure: only {} Ready nodes to fail", victims.len()),
                        ));
                    }
                    let failed = kubelets.fail(&victims, *condition)?;
                    if let Some(after) = recover_after {
                        recoveries.push((now + *after, failed));
                    }
                }
                Action::ControlPlaneOutage { duration } => {
                    kubelets.set_control_plane_reachable(false)?;
                    outage_until =
                        Some(outage_until.map_or(now + *duration, |u| u.max(now + *duration)));
                }
                Action::StrayInstances { count } => {
                    let (instance_type, zone) = cheapest_on_demand(catalog).ok_or_else(|| {
                        err("no on-demand offering in the catalog to run stray instances on".into())
                    })?;
                    let group = scenario.machine_deployments.first();
                    let md = group.and_then(|d| d["metadata"]["name"].as_str());
                    let class = group
                        .and_then(|d| d.pointer("/spec/template/spec/classRef/name"))
                        .and_then(Value::as_str);
                    let mut rng = seeded(scenario.seed ^ (second << 20) ^ next_event as u64);
                    for n in 0..*count {
                        let t = stray_tags(&scenario.cluster_name, n, md, class, &mut rng);
                        strays.insert(cloud.add_stray_instance(&instance_type, &zone, t));
                    }
                }
            }
        }
        let (reclaim, later): (Vec<_>, Vec<_>) = deadlines.drain(..).partition(|(t, _)| *t <= now);
        deadlines = later;
        for (_, id) in reclaim {
            if !cloud.interrupt(&id) {
                // berth drained and terminated it before the deadline.
                if let Some((record, _)) = terminations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .interrupted
                    .get_mut(&id)
                {
                    record.terminated_by_berth = true;
                }
            }
        }
        let version = store.collection_version(&nodes_rt);
        if nodes_version != Some(version) {
            nodes_version = Some(version);
            observe_nodes(&store, &nodes_rt, second, &mut node_times)?;
        }
        let due: Vec<Vec<String>> = {
            let (due, later): (Vec<_>, Vec<_>) = recoveries.drain(..).partition(|(t, _)| *t <= now);
            recoveries = later;
            due.into_iter().map(|(_, nodes)| nodes).collect()
        };
        for nodes in due {
            kubelets.recover(&nodes)?;
        }
        if outage_until.is_some_and(|t| t <= now) {
            kubelets.set_control_plane_reachable(true)?;
            outage_until = None;
        }
        if second % NODE_MONITOR_PERIOD.as_secs() == 0 {
            node_lifecycle.run_once()?;
        }
        if berth.is_none() && berth_restart_at.is_some_and(|t| t <= now) {
            berth = Some(launch_berth());
            berth_restart_at = None;
        }
        let before = shortages.len();
        shortages.retain(|s| s.until > now);
        if shortages.len() != before {
            // Faults cannot be withdrawn one by one: clear them and script the windows still open again.
            cloud.clear_faults();
            for s in &shortages {
                cloud.inject(s.fault.clone(), None);
            }
        }

        workloads.reconcile(&store, now)?;
        // kube-scheduler's pace: one pass a second (the binder skips it when no pod or node changed).
        binder.run_once()?;
        for r in rollouts.iter_mut().filter(|r| r.finished_s.is_none()) {
            if rollout_complete(&store, &r.machine_deployment, r.generation)? {
                r.finished_s = Some(second);
            }
        }
        if last_kill.is_some()
            && converged_s.is_none()
            && berth.is_some()
            && converged(&store, &workloads)?
        {
            converged_s = Some(second);
        }
        if second % scenario.sample_interval.as_secs().max(1) == 0 || second == total {
            observe_machine_phases(&store, second, &mut machine_phases)?;
            samples.push(sample(&store, &workloads, &prices, second)?);
            progress.show(now, samples.last());
        }
    }
    progress.finish();
    if let Some(b) = berth.take() {
        b.stop();
    }

    let instances = cloud.all_instances();
    let mut machines_launched: BTreeMap<String, u32> = BTreeMap::new();
    for i in instances
        .iter()
        .filter(|i| !strays.contains(&i.instance_id))
    {
        if let Some(uid) = i.tags.get(tags::MACHINE_UID) {
            *machines_launched.entry(uid.clone()).or_default() += 1;
        }
    }
    let mut api_calls: BTreeMap<String, u64> = BTreeMap::new();
    let calls = cloud.calls();
    for c in &calls {
        *api_calls.entry(c.action.name().to_string()).or_default() += 1;
    }
    let double_terminations = double_terminations(&calls);

    let stuck: Vec<(&String, &(String, u64))> = machine_phases
        .iter()
        .filter(|(_, (phase, since))| {
            phase != "Running" && total.saturating_sub(*since) >= MACHINE_STUCK_AFTER.as_secs()
        })
        .collect();
    for (name, (phase, since)) in &stuck {
        let phase = if phase.is_empty() { "no phase" } else { phase };
        events_log.push((
            total,
            format!("Machine {name} stuck in {phase} since {since}s"),
        ));
    }
    let machines_stuck = stuck.len() as u64;
    let exposition = metrics
        .encode()
        .map_err(|e| SimError::Setup(format!("metrics: {e}")))?;
    let mut disruptions = counter_by_label(&exposition, "berth_nodes_disrupted_total", "reason");
    let launch_failures = counter_by_label(&exposition, "berth_launch_failures_total", "reason")
        .values()
        .sum();
    disruptions.retain(|_, v| *v > 0);
    // The health and garbage-collection controllers' counters; absent ones (an older berth) read as 0.
    let collected = counter_by_label(&exposition, "berth_garbage_collected_total", "kind");
    let garbage_collected = GarbageCollected {
        instances: collected.get("instance").copied().unwrap_or(0),
        nodes: collected.get("node").copied().unwrap_or(0),
        launch_templates: collected.get("launch_template").copied().unwrap_or(0),
    };
    let owners = machine_owners(&store)?;
    let instances_leaked_at_end = leaked_instances(&instances, &scenario.cluster_name, &owners);
    if spot_interruptions > 0 {
        disruptions.insert("spot interruption".into(), spot_interruptions);
    }
    let warnings = warning_events(&store)?;
    let end = Duration::from_secs(total);
    let mut t = terminations.lock().unwrap_or_else(|p| p.into_inner());
    // Instances still running at the end (a deadline after it): their pods evicted so far, none lost.
    let running: Vec<String> = t
        .interrupted
        .iter()
        .filter(|(_, (r, _))| r.terminated_s.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for id in running {
        let on_node = pods_on_node(&store, &id);
        t.terminated(&id, total, &on_node);
        if let Some((r, _)) = t.interrupted.get_mut(&id) {
            (r.terminated_s, r.pods_lost) = (None, 0);
        }
    }
    let mut interruptions: Vec<InterruptionRecord> =
        t.interrupted.values().map(|(r, _)| r.clone()).collect();
    interruptions.sort_by(|a, b| (a.warned_s, &a.instance_id).cmp(&(b.warned_s, &b.instance_id)));
    match_replacements(&mut interruptions, &node_times);
    Ok(Outcome {
        scenario: scenario.name.clone(),
        label: options.label.clone(),
        seed: scenario.seed,
        duration_s: total,
        samples,
        pending_seconds: workloads.pending_seconds.clone(),
        still_waiting_seconds: workloads.still_waiting(end),
        pods_created: workloads.pods_created,
        launch_failures,
        warnings,
        // berth's launches: the stray instances the scenario injected are not.
        nodes_launched: instances
            .iter()
            .filter(|i| {
                i.tags.get(tags::CLUSTER) == Some(&scenario.cluster_name)
                    && !strays.contains(&i.instance_id)
            })
            .count() as u64,
        nodes_removed: instances
            .iter()
            .filter(|i| {
                i.tags.get(tags::CLUSTER) == Some(&scenario.cluster_name)
                    && i.state.is_terminal()
                    && !strays.contains(&i.instance_id)
            })
            .count() as u64,
        duplicate_launches: machines_launched
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum(),
        api_calls,
        server_throttles: cloud.server_throttles(),
        disruptions,
        rollouts,
        pdbs: workloads.pdbs.clone(),
        pdb_bypassed: t.pdb_bypassed,
        interruptions,
        interrupted_pending_seconds: workloads.replacement_pending_seconds.clone(),
        interrupted_still_waiting_seconds: workloads.replacements_still_waiting(end),
        rebalance_recommendations,
        jobs: workloads.job_progress(),
        events: events_log,
        machines_remediated: counter_sum(&exposition, "berth_remediations_total"),
        remediations_held: counter_sum(&exposition, "berth_remediations_held_total"),
        garbage_collected,
        instances_leaked_at_end,
        kills,
        seconds_to_converge: last_kill.map(|k| converged_s.map(|c| c.saturating_sub(k.as_secs()))),
        machines_stuck,
        double_terminations,
        api_faults: emulator
            .api_faults_served()
            .into_iter()
            .map(|(k, n)| (k.name().to_string(), n))
            .collect(),
    })
}

/// A Machine whose phase has not moved for this long, other than Running, is stuck.
pub const MACHINE_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChaosStep {
    Crash,
    Start,
}

/// The crashes and restarts of a scenario's chaos, in time order: the window is cut into one slot per kill, and
/// each kill falls at a seeded moment of its slot, early enough that berth is up again (after a seeded delay of
/// up to `max_down_for`, at most half the slot) before the next slot begins. So every kill finds berth running.
fn chaos_schedule(chaos: Option<&super::scenario::Chaos>, seed: u64) -> Vec<(Duration, ChaosStep)> {
    let Some(c) = chaos.filter(|c| c.kills > 0) else {
        return Vec::new();
    };
    let mut rng = seeded(seed ^ 0xC4A0_5EED);
    let window = (c.until - c.from).as_millis() as u64;
    let slot = window / u64::from(c.kills);
    let max_down = (c.max_down_for.as_millis() as u64).min(slot / 2);
    let mut out = Vec::new();
    for i in 0..u64::from(c.kills) {
        let down = 1 + rng() % max_down.max(1);
        let offset = rng() % slot.saturating_sub(down).max(1);
        let kill = c.from + Duration::from_millis(i * slot + offset);
        out.push((kill, ChaosStep::Crash));
        out.push((kill + Duration::from_millis(down), ChaosStep::Start));
    }
    out
}

/// Instances a TerminateInstances call terminated again after an earlier one had (EC2 answers the second call
/// quietly; berth must not make it).
fn double_terminations(calls: &[crate::cloud::sim::SimCall]) -> u64 {
    let mut terminated: BTreeMap<&str, u64> = BTreeMap::new();
    for c in calls.iter().filter(|c| {
        c.action == crate::cloud::action::Action::TerminateInstances && c.result == "ok"
    }) {
        for id in c.detail.split(',').filter(|id| !id.is_empty()) {
            *terminated.entry(id).or_default() += 1;
        }
    }
    terminated.values().map(|n| n.saturating_sub(1)).sum()
}

/// Converged: no workload pod waits, and every Machine is Running.
fn converged(store: &Store, workloads: &Workloads) -> Result<bool, SimError> {
    if workloads.waiting() > 0 {
        return Ok(false);
    }
    let Some(rt) = store.resource_type("berth.dev", "machines") else {
        return Ok(true);
    };
    for m in store.list(&rt, None, &ListQuery::default())?.items {
        let v = m.value()?;
        if v.pointer("/status/phase").and_then(Value::as_str) != Some("Running")
            || v.pointer("/metadata/deletionTimestamp").is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Each Machine's phase and the second it was first seen in it.
fn observe_machine_phases(
    store: &Store,
    second: u64,
    phases: &mut BTreeMap<String, (String, u64)>,
) -> Result<(), SimError> {
    let Some(rt) = store.resource_type("berth.dev", "machines") else {
        return Ok(());
    };
    let mut seen = BTreeSet::new();
    for m in store.list(&rt, None, &ListQuery::default())?.items {
        let v = m.value()?;
        let phase = v
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let phase = if v.pointer("/metadata/deletionTimestamp").is_some() {
            format!("{phase} (deleting)")
        } else {
            phase
        };
        seen.insert(m.name.clone());
        match phases.get_mut(&m.name) {
            Some((p, since)) if *p != phase => (*p, *since) = (phase, second),
            Some(_) => {}
            None => {
                phases.insert(m.name.clone(), (phase, second));
            }
        }
    }
    phases.retain(|name, _| seen.contains(name));
    Ok(())
}

/// Up to `count` live spot instances (of the event's group, or any; not in `exclude`) EC2 reclaims, chosen by the
/// seed, the event's time and its place in the timeline (1-based), whenever they are chosen.
fn choose_victims(
    cloud: &SimulatedCloud,
    s: &SpotInterruption,
    count: usize,
    exclude: &[String],
    seed: u64,
    at_second: u64,
    place: usize,
) -> Vec<String> {
    let candidates: Vec<String> = cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.capacity_type == CapacityType::Spot && !i.state.is_terminal())
        .filter(|i| {
            s.machine_deployment
                .as_ref()
                .is_none_or(|g| i.tags.get(tags::MACHINE_DEPLOYMENT) == Some(g))
        })
        .map(|i| i.instance_id)
        .filter(|id| !exclude.contains(id))
        .collect();
    let mut rng = seeded(seed ^ (at_second << 20) ^ place as u64);
    pick(candidates, count, &mut rng)
}

/// Records when each Node was first seen registered and first seen Ready.
fn observe_nodes(
    store: &Store,
    nodes_rt: &crate::emulator::resources::ResourceType,
    second: u64,
    times: &mut BTreeMap<String, NodeTimes>,
) -> Result<(), SimError> {
    for n in store.list(nodes_rt, None, &ListQuery::default())?.items {
        let t = times.entry(n.name.clone()).or_insert(NodeTimes {
            registered_s: second,
            ready_s: None,
        });
        if n.ready && t.ready_s.is_none() {
            t.ready_s = Some(second);
        }
    }
    Ok(())
}

/// Up to `n` of the candidates (sorted), chosen by the seeded generator.
fn pick(mut candidates: Vec<String>, n: usize, rng: &mut impl FnMut() -> u64) -> Vec<String> {
    candidates.sort();
    let mut out = Vec::new();
    for _ in 0..n.min(candidates.len()) {
        out.push(candidates.remove((rng() % candidates.len() as u64) as usize));
    }
    out
}

/// The cheapest on-demand offering of the catalog (type, zone): where stray instances run.
fn cheapest_on_demand(catalog: &Catalog) -> Option<(String, String)> {
    catalog
        .instance_types
        .iter()
        .flat_map(|t| {
            t.offerings
                .iter()
                .filter(|o| o.capacity_type == CapacityType::OnDemand)
                .map(move |o| (o.price, t.name.clone(), o.zone.clone()))
        })
        .min_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2)))
        })
        .map(|(_, t, z)| (t, z))
}

/// The tags of the `n`th stray instance, as `cloud::instance_tags` writes them for a launch: even ones carry a
/// whole Machine's tags (a namespace, a name and a uid of a Machine that does not exist, as a Machine deleted while
/// its launch was in flight leaves them), odd ones only the cluster's and the managed tag (a hand-made instance
/// with berth's tags).
fn stray_tags(
    cluster: &str,
    n: u32,
    machine_deployment: Option<&str>,
    class: Option<&str>,
    rng: &mut impl FnMut() -> u64,
) -> BTreeMap<String, String> {
    let (a, b) = (rng(), rng());
    let mut t = BTreeMap::from([
        (tags::CLUSTER.to_string(), cluster.to_string()),
        (tags::MANAGED.to_string(), "true".to_string()),
    ]);
    if n.is_multiple_of(2) {
        let group = machine_deployment.unwrap_or("stray");
        let name = format!("{group}-{:05x}", a & 0xf_ffff);
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            b & 0xfff,
            (b >> 12) & 0xfff,
            (b >> 16) & 0xffff_ffff_ffff
        );
        t.insert(tags::MACHINE_NAMESPACE.into(), NAMESPACE.into());
        t.insert(tags::MACHINE_NAME.into(), name.clone());
        t.insert(tags::MACHINE_UID.into(), uid);
        if let Some(c) = class {
            t.insert(tags::MACHINE_CLASS.into(), c.into());
        }
        if let Some(g) = machine_deployment {
            t.insert(tags::MACHINE_DEPLOYMENT.into(), g.into());
        }
        t.insert(tags::NAME.into(), format!("{NAMESPACE}/{name}"));
    } else {
        t.insert(tags::NAME.into(), format!("{cluster}-stray-{n}"));
    }
    t
}

/// What the Machines claim: the instance ids they recorded (status.instanceId, a providerID's last segment) and
/// their uids (an instance tagged with a Machine's uid is that Machine's, recorded or not: it adopts it).
#[derive(Debug, Default)]
struct MachineOwners {
    instance_ids: BTreeSet<String>,
    uids: BTreeSet<String>,
}

fn machine_owners(store: &Store) -> Result<MachineOwners, SimError> {
    let mut owners = MachineOwners::default();
    let Some(rt) = store.resource_type("berth.dev", "machines") else {
        return Ok(owners);
    };
    for m in store.list(&rt, None, &ListQuery::default())?.items {
        let v = m.value()?;
        if let Some(uid) = v.pointer("/metadata/uid").and_then(Value::as_str) {
            owners.uids.insert(uid.to_string());
        }
        for p in [
            "/status/instanceId",
            "/status/providerID",
            "/spec/providerID",
        ] {
            if let Some(id) = v.pointer(p).and_then(Value::as_str) {
                owners
                    .instance_ids
                    .insert(id.rsplit('/').next().unwrap_or(id).to_string());
            }
        }
    }
    Ok(owners)
}

/// Instances tagged as the cluster's, not terminated, that no Machine owns: what a crash leaked and nothing
/// collected.
fn leaked_instances(
    instances: &[crate::cloud::Instance],
    cluster: &str,
    owners: &MachineOwners,
) -> u64 {
    instances
        .iter()
        .filter(|i| i.tags.get(tags::CLUSTER).map(String::as_str) == Some(cluster))
        .filter(|i| !i.state.is_terminal())
        .filter(|i| !owners.instance_ids.contains(&i.instance_id))
        .filter(|i| {
            i.tags
                .get(tags::MACHINE_UID)
                .is_none_or(|uid| !owners.uids.contains(uid))
        })
        .count() as u64
}

/// A counter of berth's summed over all its series (0 when berth does not export it).
fn counter_sum(exposition: &str, metric: &str) -> u64 {
    let (labelled, bare) = (format!("{metric}{{"), format!("{metric} "));
    exposition
        .lines()
        .filter(|l| l.starts_with(&labelled) || l.starts_with(&bare))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// Warning Events (berth's and the emulator's) by reason, with their repeat counts: why something did not happen.
fn warning_events(store: &Store) -> Result<BTreeMap<String, u64>, SimError> {
    let mut out = BTreeMap::new();
    let Some(rt) = store.resource_type("", "events") else {
        return Ok(out);
    };
    for e in store.list(&rt, None, &ListQuery::default())?.items {
        let v = e.value()?;
        if v["type"] == "Warning" {
            let reason = v["reason"].as_str().unwrap_or("unknown").to_string();
            *out.entry(reason).or_default() += v["count"].as_u64().unwrap_or(1);
        }
    }
    Ok(out)
}

/// A counter of berth's summed by one label, read from the text exposition as Prometheus would read it.
fn counter_by_label(exposition: &str, metric: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let (prefix, key) = (format!("{metric}{{"), format!("{label}=\""));
    for line in exposition.lines().filter(|l| l.starts_with(&prefix)) {
        let reason = line
            .split(key.as_str())
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("unknown");
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(reason.to_string()).or_default() += value as u64;
    }
    out
}

/// Creates berth's CRDs and the scenario's Cluster, MachineClasses and MachineDeployments, as `kubectl apply` would.
fn apply_objects(store: &Store, scenario: &Scenario) -> Result<(), SimError> {
    let opts = WriteOptions {
        field_manager: "kubectl".into(),
        ..Default::default()
    };
    let crd_rt = store
        .resource_type("apiextensions.k8s.io", "customresourcedefinitions")
        .ok_or_else(|| SimError::Setup("no CRD kind in the emulator".into()))?;
    for crd in crds() {
        let v = serde_json::to_value(&crd).map_err(|e| SimError::Setup(e.to_string()))?;
        store.create(&crd_rt, "", v, &opts)?;
    }
    let rt = |resource: &str| {
        store
            .resource_type("berth.dev", resource)
            .ok_or_else(|| SimError::Setup(format!("CRD {resource} not established")))
    };
    store.create(&*rt("clusters")?, "", scenario.cluster.clone(), &opts)?;
    for c in &scenario.machine_classes {
        store.create(&*rt("machineclasses")?, "", c.clone(), &opts)?;
    }
    for d in &scenario.machine_deployments {
        store.create(&*rt("machinedeployments")?, NAMESPACE, d.clone(), &opts)?;
    }
    Ok(())
}

/// Merge-patches a MachineDeployment; answers its new generation.
fn patch_md(store: &Store, name: &str, patch: &Value) -> Result<i64, SimError> {
    let rt = store
        .resource_type("berth.dev", "machinedeployments")
        .ok_or_else(|| SimError::Setup("no MachineDeployment kind".into()))?;
    let opts = WriteOptions {
        field_manager: "kubectl".into(),
        ..Default::default()
    };
    let out = store.patch(&rt, NAMESPACE, name, PatchKind::Merge, patch, &opts)?;
    Ok(out
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0))
}

/// Whether a MachineDeployment has rolled out `generation` completely: every replica updated and available, no
/// old ones left.
fn rollout_complete(store: &Store, name: &str, generation: i64) -> Result<bool, SimError> {
    let rt = store
        .resource_type("berth.dev", "machinedeployments")
        .ok_or_else(|| SimError::Setup("no MachineDeployment kind".into()))?;
    let md = store.get(&rt, NAMESPACE, name)?.value()?;
    let n = |p: &str| md.pointer(p).and_then(Value::as_i64).unwrap_or(-1);
    let want = n("/spec/replicas");
    Ok(n("/status/observedGeneration") >= generation
        && n("/status/updatedReplicas") == want
        && n("/status/availableReplicas") == want
        && n("/status/replicas") == want)
}

/// A pod bound to a node.
struct NodePod {
    name: String,
    workload: String,
    phase: String,
}

/// Name, workload and phase of each pod bound to a node.
fn pods_on_node(store: &Store, node: &str) -> Vec<NodePod> {
    let Some(rt) = store.resource_type("", "pods") else {
        return Vec::new();
    };
    let Ok(page) = store.list(&rt, None, &ListQuery::default()) else {
        return Vec::new();
    };
    page.items
        .iter()
        .filter(|p| p.node_name == node)
        .map(|p| NodePod {
            name: p.name.clone(),
            workload: p
                .labels
                .iter()
                .find(|(k, _)| k == WORKLOAD_LABEL)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            phase: p.phase.clone(),
        })
        .collect()
}

type PriceIndex = HashMap<(String, String, CapacityType), f64>;

fn price_index(catalog: &Catalog) -> PriceIndex {
    let mut m = HashMap::new();
    for t in &catalog.instance_types {
        for o in &t.offerings {
            m.insert((t.name.clone(), o.zone.clone(), o.capacity_type), o.price);
        }
    }
    m
}

/// One look at the cluster.
fn sample(
    store: &Store,
    workloads: &Workloads,
    prices: &PriceIndex,
    second: u64,
) -> Result<Sample, SimError> {
    let nodes_rt = store
        .resource_type("", "nodes")
        .ok_or_else(|| SimError::Setup("no Node kind".into()))?;
    let pods_rt = store
        .resource_type("", "pods")
        .ok_or_else(|| SimError::Setup("no Pod kind".into()))?;
    let mut s = Sample {
        t_s: second,
        ..Default::default()
    };
    let mut allocatable = Resources::default();
    for stored in store.list(&nodes_rt, None, &ListQuery::default())?.items {
        let Ok(k8s) = serde_json::from_slice::<k8s_openapi::api::core::v1::Node>(&stored.bytes)
        else {
            continue;
        };
        let Ok(node) = crate::model::node::Node::from_k8s(&k8s) else {
            continue;
        };
        let label = |k: &str| node.labels.get(k).cloned().unwrap_or_default();
        let capacity =
            CapacityType::parse(&label(labels::CAPACITY_TYPE)).unwrap_or(CapacityType::OnDemand);
        let group = node
            .labels
            .get(labels::MACHINE_DEPLOYMENT)
            .cloned()
            .unwrap_or_else(|| "(none)".into());
        *s.nodes
            .entry(format!("{group} {}", capacity.as_str()))
            .or_default() += 1;
        s.hourly_cost += prices
            .get(&(label(labels::INSTANCE_TYPE), label(labels::ZONE), capacity))
            .copied()
            .unwrap_or(0.0);
        allocatable.add(&node.allocatable);
    }
    let mut requested = Resources::default();
    for p in store.list(&pods_rt, None, &ListQuery::default())?.items {
        match (p.phase.as_str(), p.node_name.is_empty()) {
            ("Running", false) => {
                s.pods_running += 1;
                if let Some(r) = workloads.requests_of(&p) {
                    requested.add(r);
                }
            }
            ("Pending", true) => s.pods_pending += 1,
            _ => {}
        }
    }
    s.requested_cpu_cores = requested.cpu_millis as f64 / 1000.0;
    s.cpu_utilization = ratio(requested.cpu_millis, allocatable.cpu_millis);
    s.memory_utilization = ratio(requested.memory_bytes, allocatable.memory_bytes);
    Ok(s)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A one-line `\r` progress bar on stderr, only when stderr is a terminal.
struct Progress {
    on: bool,
    total: Duration,
    wall: std::time::Instant,
}

impl Progress {
    fn new(wanted: bool, total: Duration) -> Progress {
        Progress {
            on: wanted && std::io::stderr().is_terminal(),
            total,
            wall: std::time::Instant::now(),
        }
    }

    fn show(&self, now: Duration, last: Option<&Sample>) {
        if !self.on {
            return;
        }
        let frac = now.as_secs_f64() / self.total.as_secs_f64().max(1.0);
        let width = 30usize;
        let filled = ((frac * width as f64) as usize).min(width);
        let (pending, nodes, cost) = last.map_or((0, 0, 0.0), |s| {
            (s.pods_pending, s.nodes.values().sum::<u32>(), s.hourly_cost)
        });
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>3.0}%  t={:>5}s  pending {:>5}  nodes {:>4}  ${:>8.2}/h  wall {:>5.1}s ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            frac * 100.0,
            now.as_secs(),
            pending,
            nodes,
            cost,
            self.wall.elapsed().as_secs_f64()
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.on {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Instance, InstanceState};

    #[test]
    fn counters_are_summed_over_every_series_and_absent_ones_are_zero() {
        let exposition = "\
# TYPE berth_remediations_total counter
berth_remediations_total{group=\"a\",reason=\"NotReady\"} 2
berth_remediations_total{group=\"b\",reason=\"Unknown\"} 1
berth_remediations_held_total{group=\"a\",reason=\"MaxUnhealthy\"} 4
berth_garbage_collected_total{kind=\"instance\"} 4
berth_garbage_collected_total{kind=\"node\"} 1
";
        assert_eq!(counter_sum(exposition, "berth_remediations_total"), 3);
        assert_eq!(counter_sum(exposition, "berth_remediations_held_total"), 4);
        assert_eq!(counter_sum(exposition, "berth_nothing_total"), 0);
        let gc = counter_by_label(exposition, "berth_garbage_collected_total", "kind");
        assert_eq!((gc["instance"], gc["node"]), (4, 1));
        assert!(!gc.contains_key("launch_template"));
    }

    #[test]
    fn every_kill_of_the_chaos_finds_berth_running_and_falls_in_its_window() {
        let chaos = crate::sim::scenario::Chaos {
            kills: 50,
            from: Duration::from_secs(60),
            until: Duration::from_secs(55 * 60),
            max_down_for: Duration::from_secs(30),
        };
        let steps = chaos_schedule(Some(&chaos), 7);
        assert_eq!(steps.len(), 100);
        let mut up = true;
        let mut last = Duration::ZERO;
        for (at, step) in &steps {
            assert!(*at >= last, "in time order");
            last = *at;
            match step {
                ChaosStep::Crash => {
                    assert!(up, "a kill at {at:?} found berth down");
                    assert!(*at >= chaos.from && *at < chaos.until);
                    up = false;
                }
                ChaosStep::Start => up = true,
            }
        }
        assert!(up);
        // Down for at most maxDownFor each time; the seed moves the moments.
        for pair in steps.chunks(2) {
            assert!(pair[1].0 - pair[0].0 <= chaos.max_down_for);
        }
        assert_ne!(steps, chaos_schedule(Some(&chaos), 8));
        assert!(chaos_schedule(None, 7).is_empty());
    }

    #[test]
    fn an_instance_terminated_by_two_successful_calls_is_a_double_termination() {
        let call = |detail: &str, result: &str| crate::cloud::sim::SimCall {
            action: crate::cloud::action::Action::TerminateInstances,
            at: epoch(),
            detail: detail.into(),
            result: result.into(),
        };
        let calls = vec![
            call("i-1,i-2", "ok"),
            call("i-2", "RequestLimitExceeded"),
            call("i-3", "ok"),
            call("i-2,i-3", "ok"),
        ];
        assert_eq!(double_terminations(&calls), 2);
    }

    fn instance(id: &str, state: InstanceState, tags: &[(&str, &str)]) -> Instance {
        Instance {
            instance_id: id.into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::OnDemand,
            state,
            image_id: "ami-1".into(),
            private_dns_name: None,
            launch_time: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn leaked_instances_are_the_clusters_live_ones_no_machine_owns() {
        let owners = MachineOwners {
            instance_ids: BTreeSet::from(["i-recorded".to_string()]),
            uids: BTreeSet::from(["uid-adopting".to_string()]),
        };
        let ours = (tags::CLUSTER, "sim");
        let instances = [
            instance("i-recorded", InstanceState::Running, &[ours]),
            instance(
                "i-adoptable",
                InstanceState::Running,
                &[ours, (tags::MACHINE_UID, "uid-adopting")],
            ),
            instance("i-gone", InstanceState::Terminated, &[ours]),
            instance(
                "i-other",
                InstanceState::Running,
                &[(tags::CLUSTER, "other")],
            ),
            instance("i-untagged", InstanceState::Running, &[]),
            instance(
                "i-leak-1",
                InstanceState::Running,
                &[ours, (tags::MACHINE_UID, "uid-deleted")],
            ),
            instance("i-leak-2", InstanceState::Pending, &[ours]),
        ];
        assert_eq!(leaked_instances(&instances, "sim", &owners), 2);
    }

    #[test]
    fn stray_tags_look_like_berths_for_a_machine_that_does_not_exist() {
        let mut rng = seeded(7);
        let full = stray_tags("sim", 0, Some("general"), Some("m6i"), &mut rng);
        assert_eq!(full[tags::CLUSTER], "sim");
        assert_eq!(full[tags::MANAGED], "true");
        assert_eq!(full[tags::MACHINE_DEPLOYMENT], "general");
        assert_eq!(full[tags::MACHINE_CLASS], "m6i");
        assert!(full[tags::MACHINE_NAME].starts_with("general-"));
        let uid = &full[tags::MACHINE_UID];
        assert_eq!(
            uid.split('-').map(str::len).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12],
            "{uid}"
        );
        let bare = stray_tags("sim", 1, Some("general"), Some("m6i"), &mut rng);
        assert_eq!(
            bare.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![tags::NAME, tags::CLUSTER, tags::MANAGED]
        );
        // The same seed, the same tags.
        assert_eq!(
            stray_tags("sim", 0, Some("general"), Some("m6i"), &mut seeded(7)),
            full
        );
    }

    #[test]
    fn picks_are_distinct_seeded_and_bounded_by_the_candidates() {
        let nodes: Vec<String> = (0..10).map(|i| format!("i-{i:02}")).collect();
        let a = pick(nodes.clone(), 3, &mut seeded(1));
        assert_eq!(a.len(), 3);
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 3);
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        assert_eq!(pick(shuffled, 3, &mut seeded(1)), a, "order-independent");
        assert_eq!(pick(nodes[..2].to_vec(), 5, &mut seeded(1)).len(), 2);
    }
}
