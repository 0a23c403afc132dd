//! Scenario files: what `berth simulate` plays. A scenario declares berth's own objects (the Cluster, MachineClasses
//! and MachineDeployments, with the fields of the CRDs), the instance catalog, boot delays and a timeline of workload
//! and cloud events. Every error names the file, the line and the field: serde's own errors carry a location, and
//! the checks made after parsing (quantities, durations, time order, the CRD schemas) find their line with
//! [`locate`](super::locate).

use super::locate::{locate, parse_path};
use crate::emulator::kubelet::KubeletFailure;
use crate::model::duration::parse_duration;
use crate::model::instance_type::{CapacityType, Catalog, InstanceType};
use crate::model::quantity::{parse_cpu_millis, parse_units};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The scenario played when none is named: a burst into an empty cluster, a rollout, a scale-down, a spot
/// interruption and a capacity shortage.
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.yaml");
/// The label a scenario's MachineDeployments select their Machines by, unless the file gives a selector.
pub const GROUP_LABEL: &str = "sim.berth.dev/group";
/// The file name errors in the built-in scenario are reported against.
pub const DEFAULT_SCENARIO_NAME: &str = "scenarios/default.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{file}: catalog: {message}")]
    Catalog { file: String, message: String },
}

impl ScenarioError {
    pub fn category(&self) -> &'static str {
        match self {
            ScenarioError::Read { .. } => "read",
            ScenarioError::Invalid { .. } => "invalid",
            ScenarioError::Catalog { .. } => "catalog",
        }
    }
}

// ---- the file's schema (serde) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "one")]
    seed: u64,
    duration: String,
    #[serde(default)]
    sample_interval: Option<String>,
    #[serde(default)]
    boot_delay: Option<String>,
    #[serde(default)]
    ready_delay: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    catalog: Option<String>,
    berth: BerthFile,
    #[serde(default)]
    timeline: Vec<EntryFile>,
    #[serde(default)]
    chaos: Option<ChaosFile>,
    #[serde(default)]
    faults: Option<FaultsFile>,
}

/// `chaos:`: berth stopped abruptly at seeded random moments.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChaosFile {
    kills: u32,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    max_down_for: Option<String>,
}

/// `faults:`: the API server's and the cloud's.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultsFile {
    #[serde(default)]
    api: Option<ApiFaultsFile>,
    #[serde(default)]
    cloud: Option<CloudFaultsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApiFaultsFile {
    share: serde_yaml::Value,
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloudFaultsFile {
    #[serde(default)]
    error_share: Option<serde_yaml::Value>,
    #[serde(default)]
    launch_invisible_for: Option<String>,
    #[serde(default)]
    terminated_visible_for: Option<String>,
}

/// berth's controllers stopped as a crash stops them (every task dropped at whatever await point it is in)
/// `kills` times, at moments drawn from the seed in `[from, until)`, each followed by a restart after a random
/// delay of up to `max_down_for`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chaos {
    pub kills: u32,
    pub from: Duration,
    pub until: Duration,
    pub max_down_for: Duration,
}

/// The most kills a scenario may ask for: one every few seconds of a long run is already more than any
/// deployment sees; beyond it a run proves nothing more and only takes longer.
pub const MAX_KILLS: u32 = 10_000;

/// Faults on both sides of berth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// The emulated API server's (see [`crate::emulator::faults`]).
    pub api: Option<crate::emulator::faults::ApiFaults>,
    /// The simulated cloud's: a share of calls throttled or failed, and eventual consistency.
    pub cloud_error_share: f64,
    pub consistency: crate::cloud::sim::Consistency,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BerthFile {
    #[serde(default)]
    cluster: Option<serde_yaml::Value>,
    #[serde(default)]
    machine_classes: Vec<NamedSpec>,
    #[serde(default)]
    machine_deployments: Vec<NamedSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedSpec {
    name: String,
    spec: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EntryFile {
    at: String,
    deployment: Option<DeploymentEvent>,
    scale: Option<ScaleEvent>,
    job: Option<JobEvent>,
    daemon_set: Option<DaemonSetEvent>,
    pdb: Option<PdbEvent>,
    template_change: Option<TemplateChangeEvent>,
    scale_machine_deployment: Option<ScaleGroupEvent>,
    spot_interruption: Option<SpotInterruptionEvent>,
    insufficient_capacity: Option<ShortageEvent>,
    restart_berth: Option<RestartEvent>,
    node_failure: Option<NodeFailureEvent>,
    control_plane_outage: Option<OutageEvent>,
    stray_instances: Option<StrayInstancesEvent>,
}

/// A pod template: what each pod of a workload asks for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplate {
    pub cpu: String,
    pub memory: String,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Spread the pods over zones with this maximum skew (DoNotSchedule).
    #[serde(default)]
    pub zone_spread: Option<u32>,
    #[serde(default)]
    pub priority: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    pub key: String,
    #[serde(default = "exists")]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

fn exists() -> String {
    "Exists".into()
}

/// A Deployment's pods appear (the simulation plays the Deployment controller: it keeps `replicas` pods).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentEvent {
    pub name: String,
    pub replicas: u32,
    pub pod: PodTemplate,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleEvent {
    pub deployment: String,
    pub replicas: u32,
}

/// A Job: `completions` pods, at most `parallelism` at once, each running `runFor` once started.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobEvent {
    pub name: String,
    pub completions: u32,
    pub parallelism: u32,
    pub run_for: String,
    pub pod: PodTemplate,
}

/// A DaemonSet: one pod per node, bound by the simulation as the DaemonSet controller binds them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetEvent {
    pub name: String,
    pub pod: PodTemplate,
}

/// A PodDisruptionBudget over a deployment's pods.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PdbEvent {
    pub name: String,
    pub deployment: String,
    #[serde(default)]
    pub min_available: Option<IntOrPercent>,
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(u32),
    Percent(String),
}

impl IntOrPercent {
    pub fn to_json(&self) -> Value {
        match self {
            IntOrPercent::Int(n) => json!(n),
            IntOrPercent::Percent(s) => json!(s),
        }
    }
}

/// A change to a MachineDeployment's template (a merge patch of `spec.template`): berth rolls it out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateChangeEvent {
    pub machine_deployment: String,
    pub template: serde_yaml::Value,
}

/// An operator scales a MachineDeployment by hand (`kubectl scale`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleGroupEvent {
    pub machine_deployment: String,
    pub replicas: u32,
}

/// EC2 reclaims `count` spot instances (of one group, or any), chosen by the scenario's seed. As the file says it;
/// [`SpotInterruption`] is the validated form.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpotInterruptionEvent {
    count: u32,
    #[serde(default)]
    machine_deployment: Option<String>,
    #[serde(default)]
    warning: Option<bool>,
    #[serde(default)]
    rebalance_share: Option<f64>,
    #[serde(default)]
    rebalance_lead: Option<String>,
}

/// How long before it reclaims a spot instance EC2 warns (the "EC2 Spot Instance Interruption Warning").
pub const SPOT_WARNING: Duration = Duration::from_secs(120);
/// The default share of interrupted instances that get a rebalance recommendation first.
pub const DEFAULT_REBALANCE_SHARE: f64 = 0.5;
/// The default lead of a rebalance recommendation over the interruption warning.
pub const DEFAULT_REBALANCE_LEAD: Duration = Duration::from_secs(300);

/// A spot interruption, validated. The event's time is the time of the **warning**:
///
/// - `warning: true` (the default): at the event's time EC2 puts an "EC2 Spot Instance Interruption Warning" for
///   each chosen instance on the interruption queue, and reclaims (terminates) the ones still running
///   [`SPOT_WARNING`] (two minutes) later. An instance berth terminated itself before then (after draining it)
///   counts as terminated by berth before the deadline.
/// - `warning: false`: today's behaviour before the queue existed: the instances are terminated at the event's
///   time, no message is sent (to compare the two).
/// - `rebalanceShare` (0 to 1, default 0.5; with warnings only): that share of the chosen instances (rounded to the
///   nearest count) also gets an "EC2 Instance Rebalance Recommendation" `rebalanceLead` (default 5m) before the
///   warning. To send them early the simulation chooses the instances at `at - rebalanceLead` (at 0s if the event
///   is earlier than the lead); an instance chosen then and gone by the warning is spared (a rebalance may have
///   replaced it), and when fewer than `count` spot instances ran then, the rest are chosen at the warning, without
///   a recommendation. With a share of 0 the instances are chosen at the warning, as without warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotInterruption {
    pub count: u32,
    pub machine_deployment: Option<String>,
    pub warning: bool,
    pub rebalance_share: f64,
    pub rebalance_lead: Duration,
}

impl SpotInterruption {
    /// How many of `chosen` instances get a rebalance recommendation first.
    pub fn rebalanced(&self, chosen: usize) -> usize {
        if !self.warning {
            return 0;
        }
        ((self.rebalance_share * chosen as f64).round() as usize).min(chosen)
    }

    /// When the instances are chosen, for an event at `at`: early enough to send the rebalance recommendations.
    pub fn choose_at(&self, at: Duration) -> Duration {
        if self.warning && self.rebalance_share > 0.0 {
            at.saturating_sub(self.rebalance_lead)
        } else {
            at
        }
    }
}

/// A window in which matching offerings have no capacity (launches get InsufficientInstanceCapacity).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShortageEvent {
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub capacity_type: Option<String>,
    #[serde(rename = "for")]
    pub duration: String,
}

/// berth's process restarts: its controllers stop (as in a crash) and start again after `downFor`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartEvent {
    #[serde(default)]
    pub down_for: Option<String>,
}

/// `count` Ready nodes (of one group, or any), chosen by the scenario's seed, fail: their kubelets stop posting
/// (`condition: Unknown`, the default) or report NotReady; with `for`, they recover after that long.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeFailureEvent {
    /// Signed so that a negative count gets this file's message rather than serde's.
    pub count: i64,
    #[serde(default)]
    pub machine_deployment: Option<String>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
}

/// No kubelet's heartbeat reaches the API server for `for` (the API itself stays up).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutageEvent {
    #[serde(rename = "for")]
    pub duration: String,
}

/// `count` instances tagged as the cluster's appear that no Machine owns, as a crashed launch leaves them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StrayInstancesEvent {
    pub count: i64,
}

// ---- the validated scenario ----

/// Where the instance types come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogSource {
    Bundled,
    File(PathBuf),
}

/// One timeline action, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Deployment(DeploymentEvent),
    Scale(ScaleEvent),
    Job {
        job: JobEvent,
        run_for: Duration,
    },
    DaemonSet(DaemonSetEvent),
    Pdb(PdbEvent),
    /// The MachineDeployment's name and the merge patch of its `spec.template`.
    TemplateChange {
        machine_deployment: String,
        patch: Value,
    },
    ScaleMachineDeployment(ScaleGroupEvent),
    SpotInterruption(SpotInterruption),
    InsufficientCapacity {
        instance_type: Option<String>,
        zone: Option<String>,
        capacity_type: Option<CapacityType>,
        duration: Duration,
    },
    RestartBerth {
        down_for: Duration,
    },
    NodeFailure {
        count: u32,
        machine_deployment: Option<String>,
        condition: KubeletFailure,
        /// None: the nodes stay failed.
        recover_after: Option<Duration>,
    },
    ControlPlaneOutage {
        duration: Duration,
    },
    StrayInstances {
        count: u32,
    },
}

impl Action {
    /// A short name for logs and the report.
    pub fn label(&self) -> String {
        match self {
            Action::Deployment(d) => format!("deployment {} ({} pods)", d.name, d.replicas),
            Action::Scale(s) => format!("scale {} to {}", s.deployment, s.replicas),
            Action::Job { job, .. } => format!("job {} ({} pods)", job.name, job.completions),
            Action::DaemonSet(d) => format!("daemonset {}", d.name),
            Action::Pdb(p) => format!("pdb {}", p.name),
            Action::TemplateChange {
                machine_deployment, ..
            } => format!("template change of {machine_deployment}"),
            Action::ScaleMachineDeployment(s) => {
                format!("scale group {} to {}", s.machine_deployment, s.replicas)
            }
            Action::SpotInterruption(s) if s.warning => {
                format!("spot interruption warning for {}", s.count)
            }
            Action::SpotInterruption(s) => format!("spot interruption of {}", s.count),
            Action::InsufficientCapacity { duration, .. } => {
                format!("capacity shortage for {}s", duration.as_secs())
            }
            Action::RestartBerth { .. } => "berth restart".to_string(),
            Action::NodeFailure {
                count, condition, ..
            } => format!("node failure of {count} ({})", condition.as_str()),
            Action::ControlPlaneOutage { duration } => {
                format!("control plane outage for {}s", duration.as_secs())
            }
            Action::StrayInstances { count } => format!("{count} stray instances"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub action: Action,
}

/// A validated scenario, ready to play.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file it came from (for messages).
    pub file: String,
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: Duration,
    pub sample_interval: Duration,
    /// From launch to the kubelet registering its Node.
    pub boot_delay: Duration,
    /// From registering to Ready (the network plugin starting): berth nominates pods to the node meanwhile.
    pub ready_delay: Duration,
    pub region: String,
    pub catalog: CatalogSource,
    /// The cluster's name (instance tags, the Cluster object).
    pub cluster_name: String,
    /// Full objects, as `kubectl apply` would take them.
    pub cluster: Value,
    pub machine_classes: Vec<Value>,
    pub machine_deployments: Vec<Value>,
    /// In time order.
    pub timeline: Vec<Event>,
    pub chaos: Option<Chaos>,
    pub faults: Faults,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_string(),
            line: locate(self.text, &parse_path(path)).unwrap_or(1),
            field: path.to_string(),
            message: message.into(),
        }
    }

    fn duration(&self, path: &str, s: &str) -> Result<Duration, ScenarioError> {
        parse_duration(s).map_err(|e| self.err(path, e.to_string()))
    }

    fn pod(&self, path: &str, p: &PodTemplate) -> Result<(), ScenarioError> {
        parse_cpu_millis(&p.cpu).map_err(|e| self.err(&format!("{path}.cpu"), e.to_string()))?;
        parse_units(&p.memory).map_err(|e| self.err(&format!("{path}.memory"), e.to_string()))?;
        Ok(())
    }
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse(&file, &text, path.parent())
}

/// The built-in default scenario.
pub fn default_scenario() -> Result<Scenario, ScenarioError> {
    parse(DEFAULT_SCENARIO_NAME, DEFAULT_SCENARIO, None)
}

/// Parses and validates scenario text; `base` resolves a relative catalog path.
pub fn parse(file: &str, text: &str, base: Option<&Path>) -> Result<Scenario, ScenarioError> {
    let cx = Ctx { file, text };
    let raw: ScenarioFile = serde_yaml::from_str(text).map_err(|e| yaml_error(file, text, &e))?;
    let duration = cx.duration("duration", &raw.duration)?;
    if duration.is_zero() {
        return Err(cx.err("duration", "must be more than 0s"));
    }
    let sample_interval = raw
        .sample_interval
        .as_deref()
        .map(|s| cx.duration("sampleInterval", s))
        .transpose()?
        .unwrap_or(Duration::from_secs(10));
    if sample_interval < Duration::from_secs(1) {
        return Err(cx.err("sampleInterval", "must be at least 1s"));
    }
    let boot_delay = raw
        .boot_delay
        .as_deref()
        .map(|s| cx.duration("bootDelay", s))
        .transpose()?
        .unwrap_or(Duration::from_secs(30));
    let ready_delay = raw
        .ready_delay
        .as_deref()
        .map(|s| cx.duration("readyDelay", s))
        .transpose()?
        .unwrap_or(Duration::ZERO);
    let region = raw
        .region
        .clone()
        .unwrap_or_else(|| "us-east-1".to_string());
    let catalog = match raw.catalog.as_deref() {
        None | Some("bundled") => CatalogSource::Bundled,
        Some(p) => CatalogSource::File(base.map(|b| b.join(p)).unwrap_or_else(|| PathBuf::from(p))),
    };

    let schemas = crd_schemas();
    let cluster_spec = to_json(
        &cx,
        "berth.cluster",
        raw.berth
            .cluster
            .as_ref()
            .unwrap_or(&serde_yaml::Value::Null),
    )?;
    let cluster_name = cluster_spec
        .get("clusterName")
        .and_then(Value::as_str)
        .unwrap_or("sim")
        .to_string();
    let mut cluster = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": cluster_name},
        "spec": {"clusterName": cluster_name, "region": region, "apiServerEndpoint": "https://sim.invalid", "certificateAuthority": "Q0E="}});
    merge(&mut cluster["spec"], &cluster_spec);
    check_schema(
        &cx,
        schemas,
        "Cluster",
        &mut cluster.clone(),
        "berth.cluster",
    )?;

    let mut machine_classes = Vec::new();
    for (i, c) in raw.berth.machine_classes.iter().enumerate() {
        let path = format!("berth.machineClasses[{i}]");
        let spec = to_json(&cx, &format!("{path}.spec"), &c.spec)?;
        let mut obj = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": c.name},
        "spec": {
            "image": {"selector": {"owner": "amazon", "name": "amazon-eks-node-al2023-x86_64-*"}},
            "subnets": {"tags": {crate::cloud::sim::DISCOVERY_TAG: cluster_name}},
            "securityGroups": {"tags": {crate::cloud::sim::DISCOVERY_TAG: cluster_name}},
            "instanceProfile": "node"
        }});
        merge(&mut obj["spec"], &spec);
        check_schema(&cx, schemas, "MachineClass", &mut obj.clone(), &path)?;
        machine_classes.push(obj);
    }
    let mut machine_deployments = Vec::new();
    for (i, d) in raw.berth.machine_deployments.iter().enumerate() {
        let path = format!("berth.machineDeployments[{i}]");
        let spec = to_json(&cx, &format!("{path}.spec"), &d.spec)?;
        let mut obj = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment", "metadata": {"name": d.name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {GROUP_LABEL: d.name}},
                     "template": {"metadata": {"labels": {GROUP_LABEL: d.name}}}}});
        merge(&mut obj["spec"], &spec);
        check_schema(&cx, schemas, "MachineDeployment", &mut obj.clone(), &path)?;
        machine_deployments.push(obj);
    }

    let mut timeline = Vec::new();
    let mut last = Duration::ZERO;
    for (i, e) in raw.timeline.into_iter().enumerate() {
        let path = format!("timeline[{i}]");
        let at = cx.duration(&format!("{path}.at"), &e.at)?;
        if at < last {
            return Err(cx.err(
                &format!("{path}.at"),
                format!(
                    "{} is before the previous event's time; the timeline must be in time order",
                    e.at
                ),
            ));
        }
        if at > duration {
            return Err(cx.err(
                &format!("{path}.at"),
                format!("{} is after the scenario's duration {}", e.at, raw.duration),
            ));
        }
        last = at;
        let action = entry_action(&cx, &path, e, &machine_deployments, schemas)?;
        timeline.push(Event { at, action });
    }
    let chaos = raw
        .chaos
        .as_ref()
        .map(|c| chaos(&cx, c, duration))
        .transpose()?;
    let faults = raw
        .faults
        .as_ref()
        .map(|f| faults(&cx, f, raw.seed))
        .transpose()?
        .unwrap_or_default();
    Ok(Scenario {
        chaos,
        faults,
        file: file.to_string(),
        name: raw.name,
        description: raw.description,
        seed: raw.seed,
        duration,
        sample_interval,
        boot_delay,
        ready_delay,
        region,
        catalog,
        cluster_name,
        cluster,
        machine_classes,
        machine_deployments,
        timeline,
    })
}

fn chaos(cx: &Ctx, c: &ChaosFile, duration: Duration) -> Result<Chaos, ScenarioError> {
    if c.kills > MAX_KILLS {
        return Err(cx.err(
            "chaos.kills",
            format!("{} kills is more than the limit of {MAX_KILLS}", c.kills),
        ));
    }
    let from = c
        .from
        .as_deref()
        .map(|s| cx.duration("chaos.from", s))
        .transpose()?
        .unwrap_or(Duration::ZERO);
    let until = c
        .until
        .as_deref()
        .map(|s| cx.duration("chaos.until", s))
        .transpose()?
        .unwrap_or(duration);
    if until > duration {
        return Err(cx.err("chaos.until", "is after the scenario's duration"));
    }
    if from >= until && c.kills > 0 {
        return Err(cx.err("chaos.until", "must be after chaos.from"));
    }
    let max_down_for = c
        .max_down_for
        .as_deref()
        .map(|s| cx.duration("chaos.maxDownFor", s))
        .transpose()?
        .unwrap_or(Duration::from_secs(30));
    Ok(Chaos {
        kills: c.kills,
        from,
        until,
        max_down_for,
    })
}

/// A share written as a number (0.05) or a percentage ("5%").
fn share(cx: &Ctx, path: &str, v: &serde_yaml::Value) -> Result<f64, ScenarioError> {
    let text = match v {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.clone(),
        _ => return Err(cx.err(path, "must be a number from 0 to 1 or a percentage")),
    };
    crate::emulator::faults::parse_share(&text).map_err(|e| cx.err(path, e.to_string()))
}

fn faults(cx: &Ctx, f: &FaultsFile, seed: u64) -> Result<Faults, ScenarioError> {
    use crate::emulator::faults::{parse_kinds, ApiFaultKind, ApiFaults};
    let api = f
        .api
        .as_ref()
        .map(|a| -> Result<ApiFaults, ScenarioError> {
            let share = share(cx, "faults.api.share", &a.share)?;
            let kinds = match &a.kinds {
                None => ApiFaultKind::ALL.to_vec(),
                Some(k) => parse_kinds(&k.join(","))
                    .map_err(|e| cx.err("faults.api.kinds", e.to_string()))?,
            };
            Ok(ApiFaults::new(share, kinds, seed))
        })
        .transpose()?;
    let mut out = Faults {
        api,
        ..Faults::default()
    };
    if let Some(c) = &f.cloud {
        if let Some(v) = &c.error_share {
            out.cloud_error_share = share(cx, "faults.cloud.errorShare", v)?;
        }
        if let Some(d) = &c.launch_invisible_for {
            out.consistency.launch_invisible_for =
                cx.duration("faults.cloud.launchInvisibleFor", d)?;
        }
        if let Some(d) = &c.terminated_visible_for {
            out.consistency.terminated_visible_for =
                cx.duration("faults.cloud.terminatedVisibleFor", d)?;
        }
    }
    Ok(out)
}

fn entry_action(
    cx: &Ctx,
    path: &str,
    e: EntryFile,
    mds: &[Value],
    schemas: &BTreeMap<String, Value>,
) -> Result<Action, ScenarioError> {
    let mut actions = Vec::new();
    if let Some(d) = e.deployment {
        cx.pod(&format!("{path}.deployment.pod"), &d.pod)?;
        actions.push(Action::Deployment(d));
    }
    if let Some(s) = e.scale {
        actions.push(Action::Scale(s));
    }
    if let Some(j) = e.job {
        cx.pod(&format!("{path}.job.pod"), &j.pod)?;
        let run_for = cx.duration(&format!("{path}.job.runFor"), &j.run_for)?;
        if j.parallelism == 0 {
            return Err(cx.err(&format!("{path}.job.parallelism"), "must be at least 1"));
        }
        actions.push(Action::Job { job: j, run_for });
    }
    if let Some(d) = e.daemon_set {
        cx.pod(&format!("{path}.daemonSet.pod"), &d.pod)?;
        actions.push(Action::DaemonSet(d));
    }
    if let Some(p) = e.pdb {
        if p.min_available.is_some() == p.max_unavailable.is_some() {
            return Err(cx.err(
                &format!("{path}.pdb"),
                "give exactly one of minAvailable and maxUnavailable",
            ));
        }
        for (field, v) in [
            ("minAvailable", &p.min_available),
            ("maxUnavailable", &p.max_unavailable),
        ] {
            if let Some(IntOrPercent::Percent(s)) = v {
                if s.strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_none_or(|n| n > 100)
                {
                    return Err(cx.err(
                        &format!("{path}.pdb.{field}"),
                        format!("{s:?} is neither a count nor a percentage such as 50%"),
                    ));
                }
            }
        }
        actions.push(Action::Pdb(p));
    }
    if let Some(t) = e.template_change {
        let field = format!("{path}.templateChange.template");
        let patch = to_json(cx, &field, &t.template)?;
        let Some(md) = mds
            .iter()
            .find(|m| m["metadata"]["name"] == t.machine_deployment.as_str())
        else {
            return Err(cx.err(
                &format!("{path}.templateChange.machineDeployment"),
                format!(
                    "no MachineDeployment {:?} in berth.machineDeployments",
                    t.machine_deployment
                ),
            ));
        };
        let mut changed = md.clone();
        merge(&mut changed["spec"]["template"], &patch);
        check_schema(cx, schemas, "MachineDeployment", &mut changed, &field)?;
        actions.push(Action::TemplateChange {
            machine_deployment: t.machine_deployment,
            patch,
        });
    }
    if let Some(s) = e.scale_machine_deployment {
        if !mds
            .iter()
            .any(|m| m["metadata"]["name"] == s.machine_deployment.as_str())
        {
            return Err(cx.err(
                &format!("{path}.scaleMachineDeployment.machineDeployment"),
                format!("no MachineDeployment {:?}", s.machine_deployment),
            ));
        }
        actions.push(Action::ScaleMachineDeployment(s));
    }
    if let Some(s) = e.spot_interruption {
        actions.push(spot_interruption(
            cx,
            &format!("{path}.spotInterruption"),
            s,
            mds,
        )?);
    }
    if let Some(s) = e.insufficient_capacity {
        let duration = cx.duration(&format!("{path}.insufficientCapacity.for"), &s.duration)?;
        let capacity_type = match s.capacity_type.as_deref() {
            None => None,
            Some(c) => Some(CapacityType::parse(c).ok_or_else(|| {
                cx.err(
                    &format!("{path}.insufficientCapacity.capacityType"),
                    format!("{c:?} is neither spot nor on-demand"),
                )
            })?),
        };
        actions.push(Action::InsufficientCapacity {
            instance_type: s.instance_type,
            zone: s.zone,
            capacity_type,
            duration,
        });
    }
    if let Some(r) = e.restart_berth {
        let down_for = r
            .down_for
            .as_deref()
            .map(|d| cx.duration(&format!("{path}.restartBerth.downFor"), d))
            .transpose()?
            .unwrap_or(Duration::ZERO);
        actions.push(Action::RestartBerth { down_for });
    }
    if let Some(f) = e.node_failure {
        actions.push(node_failure(cx, &format!("{path}.nodeFailure"), f, mds)?);
    }
    if let Some(o) = e.control_plane_outage {
        let field = format!("{path}.controlPlaneOutage.for");
        let duration = cx.duration(&field, &o.duration)?;
        if duration.is_zero() {
            return Err(cx.err(&field, "must be more than 0s"));
        }
        actions.push(Action::ControlPlaneOutage { duration });
    }
    if let Some(st) = e.stray_instances {
        let count = positive_count(cx, &format!("{path}.strayInstances.count"), st.count)?;
        actions.push(Action::StrayInstances { count });
    }
    match actions.len() {
        1 => Ok(actions.remove(0)),
        0 => Err(cx.err(path, "an event needs one action (deployment, scale, job, daemonSet, pdb, templateChange, scaleMachineDeployment, spotInterruption, insufficientCapacity, restartBerth, nodeFailure, controlPlaneOutage or strayInstances)")),
        _ => Err(cx.err(path, "an event has exactly one action; split it into several events at the same time")),
    }
}

/// A count of at least 1 (and at most u32::MAX).
fn positive_count(cx: &Ctx, field: &str, n: i64) -> Result<u32, ScenarioError> {
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(cx.err(field, format!("{n} is not a count of at least 1"))),
    }
}

fn spot_interruption(
    cx: &Ctx,
    path: &str,
    s: SpotInterruptionEvent,
    mds: &[Value],
) -> Result<Action, ScenarioError> {
    if let Some(md) = &s.machine_deployment {
        if !mds.iter().any(|m| m["metadata"]["name"] == md.as_str()) {
            return Err(cx.err(
                &format!("{path}.machineDeployment"),
                format!("no MachineDeployment {md:?} in berth.machineDeployments"),
            ));
        }
    }
    let warning = s.warning.unwrap_or(true);
    if !warning {
        for (field, given) in [
            ("rebalanceShare", s.rebalance_share.is_some()),
            ("rebalanceLead", s.rebalance_lead.is_some()),
        ] {
            if given {
                return Err(cx.err(
                    &format!("{path}.{field}"),
                    "with warning: false EC2 sends no message at all; leave it out or drop warning: false",
                ));
            }
        }
    }
    let rebalance_share = s.rebalance_share.unwrap_or(DEFAULT_REBALANCE_SHARE);
    if !(0.0..=1.0).contains(&rebalance_share) {
        return Err(cx.err(
            &format!("{path}.rebalanceShare"),
            format!("{rebalance_share} is not a share between 0 and 1"),
        ));
    }
    let rebalance_lead = s
        .rebalance_lead
        .as_deref()
        .map(|d| cx.duration(&format!("{path}.rebalanceLead"), d))
        .transpose()?
        .unwrap_or(DEFAULT_REBALANCE_LEAD);
    Ok(Action::SpotInterruption(SpotInterruption {
        count: s.count,
        machine_deployment: s.machine_deployment,
        warning,
        rebalance_share: if warning { rebalance_share } else { 0.0 },
        rebalance_lead,
    }))
}

fn node_failure(
    cx: &Ctx,
    path: &str,
    f: NodeFailureEvent,
    mds: &[Value],
) -> Result<Action, ScenarioError> {
    let count = positive_count(cx, &format!("{path}.count"), f.count)?;
    if let Some(md) = &f.machine_deployment {
        if !mds.iter().any(|m| m["metadata"]["name"] == md.as_str()) {
            return Err(cx.err(
                &format!("{path}.machineDeployment"),
                format!("no MachineDeployment {md:?} in berth.machineDeployments"),
            ));
        }
    }
    let condition = match f.condition.as_deref() {
        None => KubeletFailure::Unknown,
        Some(c) => KubeletFailure::parse(c).ok_or_else(|| {
            cx.err(
                &format!("{path}.condition"),
                format!("{c:?} is neither NotReady (the kubelet reports Ready=False) nor Unknown (it stops posting)"),
            )
        })?,
    };
    let recover_after = match f.duration.as_deref() {
        None => None,
        Some(d) => {
            let field = format!("{path}.for");
            let after = cx.duration(&field, d)?;
            if after.is_zero() {
                return Err(cx.err(
                    &field,
                    "must be more than 0s (leave it out for nodes that stay failed)",
                ));
            }
            Some(after)
        }
    };
    Ok(Action::NodeFailure {
        count,
        machine_deployment: f.machine_deployment,
        condition,
        recover_after,
    })
}

/// serde_yaml's message already names the field path (`timeline[2].scale: unknown field ...`); add file and line.
fn yaml_error(file: &str, text: &str, e: &serde_yaml::Error) -> ScenarioError {
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    let (field, message) = match message.split_once(": ") {
        Some((f, m)) if !f.contains(' ') => (f.to_string(), m.to_string()),
        _ => ("<document>".to_string(), message),
    };
    ScenarioError::Invalid {
        file: file.to_string(),
        // The YAML parser can place an error at the end of the input (a missing field, say) past the file's last
        // line; the error must name a line the file has.
        line: e
            .location()
            .map(|l| l.line())
            .unwrap_or(1)
            .min(text.lines().count().max(1)),
        field,
        message,
    }
}

fn to_json(cx: &Ctx, path: &str, v: &serde_yaml::Value) -> Result<Value, ScenarioError> {
    match v {
        serde_yaml::Value::Null => Ok(json!({})),
        v => serde_json::to_value(v).map_err(|e| cx.err(path, e.to_string())),
    }
}

/// JSON merge patch (RFC 7386) of `patch` into `target`.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Each kind's openAPIV3Schema. Generated once per process: the CRDs are constant, and generating them costs more
/// than parsing a scenario (a fuzzer parsing scenarios ran at 5 a second).
fn crd_schemas() -> &'static BTreeMap<String, Value> {
    static SCHEMAS: std::sync::OnceLock<BTreeMap<String, Value>> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crate::api::crds()
            .into_iter()
            .filter_map(|crd| {
                let schema = crd
                    .spec
                    .versions
                    .first()?
                    .schema
                    .as_ref()?
                    .open_api_v3_schema
                    .as_ref()?;
                Some((
                    crd.spec.names.kind.clone(),
                    serde_json::to_value(schema).ok()?,
                ))
            })
            .collect()
    })
}

/// Checks an object against its CRD's schema, as the API server would with strict field validation; errors point
/// at the scenario line of the offending field (`spec.x` of the object lives at `<path>.spec.x` in the file).
fn check_schema(
    cx: &Ctx,
    schemas: &BTreeMap<String, Value>,
    kind: &str,
    obj: &mut Value,
    path: &str,
) -> Result<(), ScenarioError> {
    let Some(schema) = schemas.get(kind) else {
        return Ok(());
    };
    let v = crate::emulator::schema::validate_object_root(obj, schema);
    let field_path = |p: &str| -> String {
        let p = p.trim_start_matches('.');
        // A template change is a patch of spec.template: its fields live under `<path>`.
        match path.ends_with(".template") {
            true => format!("{path}{}", p.strip_prefix("spec.template").unwrap_or(p)),
            false if kind == "Cluster" => format!("{path}{}", p.strip_prefix("spec").unwrap_or(p)),
            false => format!("{path}.{p}"),
        }
    };
    if let Some(u) = v.unknown.first() {
        return Err(cx.err(
            &field_path(u),
            format!("unknown field (not in the {kind} schema)"),
        ));
    }
    if let Some(msg) = v.invalid.first() {
        let (p, m) = msg.split_once(": ").unwrap_or(("", msg.as_str()));
        return Err(cx.err(&field_path(p), m.to_string()));
    }
    Ok(())
}

/// Checks a whole Cluster object against the Cluster CRD's schema; the error is the first violation.
pub fn check_cluster(cluster: &Value) -> Result<(), String> {
    let schemas = crd_schemas();
    let Some(schema) = schemas.get("Cluster") else {
        return Ok(());
    };
    let v = crate::emulator::schema::validate_object_root(&mut cluster.clone(), schema);
    match (v.unknown.first(), v.invalid.first()) {
        (Some(u), _) => Err(format!("{u}: unknown field (not in the Cluster schema)")),
        (None, Some(i)) => Err(i.clone()),
        (None, None) => Ok(()),
    }
}

/// The instance types a scenario launches from.
pub fn load_catalog(s: &Scenario) -> Result<Catalog, ScenarioError> {
    match &s.catalog {
        CatalogSource::Bundled => {
            crate::model::aws_catalog::bundled_catalog(&s.region).map_err(|e| {
                ScenarioError::Catalog {
                    file: s.file.clone(),
                    message: e.to_string(),
                }
            })
        }
        CatalogSource::File(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ScenarioError::Read {
                file: p.display().to_string(),
                reason: e.to_string(),
            })?;
            let types: Vec<InstanceType> = serde_yaml::from_str(&text)
                .map_err(|e| yaml_error(&p.display().to_string(), &text, &e))?;
            Ok(Catalog {
                instance_types: types,
            })
        }
    }
}

impl Scenario {
    /// The same scenario with every workload size multiplied by `factor` (at least one pod each): tests run the
    /// scenarios' shapes at a fraction of their size.
    pub fn scaled(mut self, factor: f64) -> Scenario {
        let f = |n: u32| {
            if n == 0 {
                0
            } else {
                ((n as f64 * factor).round() as u32).max(1)
            }
        };
        for e in &mut self.timeline {
            match &mut e.action {
                Action::Deployment(d) => d.replicas = f(d.replicas),
                Action::Scale(s) => s.replicas = f(s.replicas),
                Action::Job { job, .. } => {
                    job.completions = f(job.completions);
                    job.parallelism = f(job.parallelism);
                }
                Action::SpotInterruption(s) => s.count = f(s.count),
                // A share of the fleet fails, as with spot interruptions; stray instances are what crashes leave,
                // whatever the workload's size, so their count stays.
                Action::NodeFailure { count, .. } => *count = f(*count),
                Action::ScaleMachineDeployment(s) => s.replicas = f(s.replicas),
                _ => {}
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: t
duration: 10m
berth:
  machineClasses:
    - name: general
      spec:
        instanceRequirements: {families: [m6i]}
  machineDeployments:
    - name: general
      spec:
        replicas: 0
        template:
          spec:
            classRef: {name: general}
timeline:
  - at: 0s
    deployment:
      name: web
      replicas: 3
      pod: {cpu: 500m, memory: 1Gi}
  - at: 5m
    scale: {deployment: web, replicas: 1}
";

    /// Found by fuzz/fuzz_targets/scenario.rs: a one-line file (a comment, no newline) got an error on line 2.
    #[test]
    fn an_error_at_the_end_of_the_file_names_its_last_line() {
        let (line, field, _) = err("# The scenario `ber# Spot first: th osinem");
        assert_eq!((line, field.as_str()), (1, "<document>"));
        let (line, _, _) = err("name: x\nduration: [10m,\n");
        assert!(line <= 2, "line {line} of a 2-line file");
    }

    fn err(text: &str) -> (usize, String, String) {
        match parse("s.yaml", text, None) {
            Err(ScenarioError::Invalid {
                line,
                field,
                message,
                file,
            }) => {
                assert_eq!(file, "s.yaml");
                (line, field, message)
            }
            other => panic!("expected an invalid scenario, got {other:?}"),
        }
    }

    #[test]
    fn chaos_and_faults_parse_and_bad_values_are_named() {
        let with = |extra: &str| format!("{GOOD}{extra}");
        let s = parse(
            "s.yaml",
            &with("chaos: {kills: 5, until: 8m, maxDownFor: 10s}\nfaults:\n  api: {share: 5%, kinds: [\"503\", gone]}\n  cloud: {errorShare: 0.02, launchInvisibleFor: 60s}\n"),
            None,
        )
        .unwrap();
        let chaos = s.chaos.unwrap();
        assert_eq!(
            (chaos.kills, chaos.until, chaos.max_down_for),
            (5, Duration::from_secs(480), Duration::from_secs(10))
        );
        let api = s.faults.api.unwrap();
        assert_eq!(api.share, 0.05);
        assert_eq!(api.kinds.len(), 2);
        assert_eq!(s.faults.cloud_error_share, 0.02);
        assert_eq!(
            s.faults.consistency.launch_invisible_for,
            Duration::from_secs(60)
        );

        for (extra, field, says) in [
            (
                "chaos: {kills: 5, until: 99h}\n",
                "chaos.until",
                "after the scenario's duration",
            ),
            ("chaos: {kills: 20000}\n", "chaos.kills", "limit of 10000"),
            (
                "faults:\n  api: {share: 1.5}\n",
                "faults.api.share",
                "from 0 to 1",
            ),
            (
                "faults:\n  api: {share: 5%, kinds: [teapot]}\n",
                "faults.api.kinds",
                "teapot",
            ),
            (
                "faults:\n  cloud: {launchInvisibleFor: soon}\n",
                "faults.cloud.launchInvisibleFor",
                "",
            ),
        ] {
            let (line, f, message) = err(&with(extra));
            assert_eq!(f, field, "{extra}: {message}");
            assert!(message.contains(says), "{extra}: {message}");
            assert!(line > 20, "{extra}: line {line} is the field's own");
        }
    }

    #[test]
    fn a_good_scenario_parses() {
        let s = parse("s.yaml", GOOD, None).unwrap();
        assert_eq!(s.timeline.len(), 2);
        assert_eq!(
            s.machine_deployments[0]["spec"]["template"]["spec"]["classRef"]["name"],
            "general"
        );
        assert_eq!(
            s.machine_classes[0]["spec"]["instanceProfile"], "node",
            "sim defaults fill what the file leaves out"
        );
    }

    #[test]
    fn the_default_scenario_parses() {
        let s = default_scenario().unwrap();
        assert!(s.timeline.len() >= 5);
        assert_eq!(s.ready_delay, Duration::from_secs(10));
    }

    #[test]
    fn nodes_register_ready_unless_a_ready_delay_is_given_and_a_bad_one_is_named() {
        assert_eq!(
            parse("s.yaml", GOOD, None).unwrap().ready_delay,
            Duration::ZERO
        );
        let with = GOOD.replace("duration: 10m\n", "duration: 10m\nreadyDelay: 12s\n");
        assert_eq!(
            parse("s.yaml", &with, None).unwrap().ready_delay,
            Duration::from_secs(12)
        );
        let (line, field, _) =
            err(&GOOD.replace("duration: 10m\n", "duration: 10m\nreadyDelay: soon\n"));
        assert_eq!((line, field.as_str()), (3, "readyDelay"));
    }

    #[test]
    fn an_unknown_field_names_file_line_and_field() {
        let (line, field, message) = err(&GOOD.replace(
            "      replicas: 3\n",
            "      replicas: 3\n      replica: 4\n",
        ));
        assert_eq!(line, 20);
        assert!(field.contains("timeline[0].deployment"), "{field}");
        assert!(message.contains("unknown field `replica`"), "{message}");
    }

    #[test]
    fn an_unknown_crd_field_names_its_line() {
        let (line, field, message) = err(&GOOD.replace(
            "            classRef: {name: general}\n",
            "            classRef: {name: general}\n            colour: blue\n",
        ));
        assert_eq!(line, 15);
        assert_eq!(
            field,
            "berth.machineDeployments[0].spec.template.spec.colour"
        );
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn a_bad_quantity_names_its_line() {
        let (line, field, message) = err(&GOOD.replace("cpu: 500m", "cpu: 5x"));
        assert_eq!(line, 20);
        assert_eq!(field, "timeline[0].deployment.pod.cpu");
        assert!(message.contains("5x"), "{message}");
    }

    #[test]
    fn a_time_out_of_order_names_its_line() {
        let (line, field, _) = err(&format!(
            "{GOOD}  - at: 1m\n    scale: {{deployment: web, replicas: 2}}\n"
        ));
        assert_eq!(line, 23);
        assert_eq!(field, "timeline[2].at");
    }

    #[test]
    fn an_event_needs_exactly_one_action() {
        let (_, field, message) = err(&format!("{GOOD}  - at: 6m\n"));
        assert_eq!(field, "timeline[2]");
        assert!(message.contains("needs one action"));
    }

    #[test]
    fn scaling_shrinks_workloads() {
        let s = parse("s.yaml", GOOD, None).unwrap().scaled(0.1);
        assert_eq!(
            s.timeline[0].action,
            Action::Deployment(DeploymentEvent {
                name: "web".into(),
                replicas: 1,
                pod: PodTemplate {
                    cpu: "500m".into(),
                    memory: "1Gi".into(),
                    node_selector: BTreeMap::new(),
                    tolerations: vec![],
                    zone_spread: None,
                    priority: None
                }
            })
        );
    }

    fn with_event(event: &str) -> String {
        format!("{GOOD}  - at: 6m\n    {event}\n")
    }

    #[test]
    fn failure_events_parse_with_their_defaults() {
        let s = parse(
            "s.yaml",
            &format!(
                "{}  - at: 7m\n    controlPlaneOutage: {{for: 10m}}\n  - at: 8m\n    strayInstances: {{count: 4}}\n  - at: 9m\n    nodeFailure: {{count: 2, machineDeployment: general, condition: NotReady, for: 90s}}\n",
                with_event("nodeFailure: {count: 3}")
            ),
            None,
        )
        .unwrap();
        let actions: Vec<&Action> = s.timeline.iter().skip(2).map(|e| &e.action).collect();
        assert_eq!(
            actions,
            vec![
                &Action::NodeFailure {
                    count: 3,
                    machine_deployment: None,
                    condition: KubeletFailure::Unknown,
                    recover_after: None
                },
                &Action::ControlPlaneOutage {
                    duration: Duration::from_secs(600)
                },
                &Action::StrayInstances { count: 4 },
                &Action::NodeFailure {
                    count: 2,
                    machine_deployment: Some("general".into()),
                    condition: KubeletFailure::NotReady,
                    recover_after: Some(Duration::from_secs(90))
                },
            ]
        );
        // Scaling shrinks the share of the fleet that fails, not what crashes leave behind.
        let scaled = s.scaled(0.1);
        assert!(matches!(
            scaled.timeline[2].action,
            Action::NodeFailure { count: 1, .. }
        ));
        assert_eq!(
            scaled.timeline[4].action,
            Action::StrayInstances { count: 4 }
        );
    }

    #[test]
    fn spot_interruptions_warn_by_default_and_their_fields_are_checked() {
        let s = parse(
            "s.yaml",
            &format!(
                "{}  - at: 7m\n    spotInterruption: {{count: 2, warning: false}}\n  - at: 8m\n    spotInterruption: {{count: 3, machineDeployment: general, rebalanceShare: 1, rebalanceLead: 10m}}\n",
                with_event("spotInterruption: {count: 4}")
            ),
            None,
        )
        .unwrap();
        let spot: Vec<&SpotInterruption> = s
            .timeline
            .iter()
            .filter_map(|e| match &e.action {
                Action::SpotInterruption(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(
            spot,
            vec![
                &SpotInterruption {
                    count: 4,
                    machine_deployment: None,
                    warning: true,
                    rebalance_share: 0.5,
                    rebalance_lead: Duration::from_secs(300)
                },
                &SpotInterruption {
                    count: 2,
                    machine_deployment: None,
                    warning: false,
                    rebalance_share: 0.0,
                    rebalance_lead: Duration::from_secs(300)
                },
                &SpotInterruption {
                    count: 3,
                    machine_deployment: Some("general".into()),
                    warning: true,
                    rebalance_share: 1.0,
                    rebalance_lead: Duration::from_secs(600)
                },
            ]
        );
        // Half of 4 get a recommendation, chosen 5 minutes ahead; without warnings none, chosen at the event;
        // a lead longer than the event's time chooses at the start.
        assert_eq!(spot[0].rebalanced(4), 2);
        assert_eq!(spot[0].rebalanced(3), 2, "rounded to the nearest count");
        assert_eq!(
            spot[0].choose_at(Duration::from_secs(360)),
            Duration::from_secs(60)
        );
        assert_eq!(spot[1].rebalanced(2), 0);
        assert_eq!(
            spot[1].choose_at(Duration::from_secs(420)),
            Duration::from_secs(420)
        );
        assert_eq!(spot[2].choose_at(Duration::from_secs(480)), Duration::ZERO);
        assert_eq!(
            s.timeline[2].action.label(),
            "spot interruption warning for 4"
        );
        assert_eq!(s.timeline[3].action.label(), "spot interruption of 2");

        let cases = [
            (
                "spotInterruption: {count: 1, rebalanceShare: 1.5}",
                "timeline[2].spotInterruption.rebalanceShare",
                "1.5 is not a share between 0 and 1",
            ),
            (
                "spotInterruption: {count: 1, rebalanceShare: -0.1}",
                "timeline[2].spotInterruption.rebalanceShare",
                "not a share",
            ),
            (
                "spotInterruption: {count: 1, rebalanceLead: soon}",
                "timeline[2].spotInterruption.rebalanceLead",
                "soon",
            ),
            (
                "spotInterruption: {count: 1, warning: false, rebalanceShare: 0.5}",
                "timeline[2].spotInterruption.rebalanceShare",
                "with warning: false",
            ),
            (
                "spotInterruption: {count: 1, warning: false, rebalanceLead: 1m}",
                "timeline[2].spotInterruption.rebalanceLead",
                "with warning: false",
            ),
            (
                "spotInterruption: {count: 1, warning: maybe}",
                "timeline[2].spotInterruption.warning",
                "invalid type",
            ),
            (
                "spotInterruption: {count: 1, machineDeployment: gpu}",
                "timeline[2].spotInterruption.machineDeployment",
                "no MachineDeployment \"gpu\"",
            ),
        ];
        for (event, want_field, want_message) in cases {
            let (line, field, message) = err(&with_event(event));
            assert_eq!(field, want_field, "{event}: {message}");
            assert!(message.contains(want_message), "{event}: {message}");
            assert_eq!(line, 24, "{event}: the event's line");
        }
    }

    #[test]
    fn bad_failure_events_name_the_field() {
        let cases = [
            (
                "nodeFailure: {count: 0}",
                "timeline[2].nodeFailure.count",
                "0 is not a count",
            ),
            (
                "nodeFailure: {count: -2}",
                "timeline[2].nodeFailure.count",
                "-2 is not a count",
            ),
            (
                "nodeFailure: {count: 1, condition: Dead}",
                "timeline[2].nodeFailure.condition",
                "\"Dead\" is neither NotReady",
            ),
            (
                "nodeFailure: {count: 1, for: soon}",
                "timeline[2].nodeFailure.for",
                "soon",
            ),
            (
                "nodeFailure: {count: 1, for: 0s}",
                "timeline[2].nodeFailure.for",
                "more than 0s",
            ),
            (
                "nodeFailure: {count: 1, machineDeployment: gpu}",
                "timeline[2].nodeFailure.machineDeployment",
                "no MachineDeployment \"gpu\"",
            ),
            (
                "nodeFailure: {count: 1, colour: red}",
                "timeline[2].nodeFailure",
                "unknown field `colour`",
            ),
            (
                "controlPlaneOutage: {for: ages}",
                "timeline[2].controlPlaneOutage.for",
                "ages",
            ),
            (
                "controlPlaneOutage: {for: 0s}",
                "timeline[2].controlPlaneOutage.for",
                "more than 0s",
            ),
            (
                "controlPlaneOutage: {}",
                "timeline[2].controlPlaneOutage",
                "missing field `for`",
            ),
            (
                "strayInstances: {count: 0}",
                "timeline[2].strayInstances.count",
                "0 is not a count",
            ),
            (
                "strayInstances: {count: many}",
                "timeline[2].strayInstances.count",
                "invalid type",
            ),
        ];
        for (event, want_field, want_message) in cases {
            let (line, field, message) = err(&with_event(event));
            assert_eq!(field, want_field, "{event}: {message}");
            assert!(message.contains(want_message), "{event}: {message}");
            assert_eq!(line, 24, "{event}: the event's line");
        }
    }
}
