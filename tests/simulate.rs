//! `berth simulate` end to end: the built-in scenario and every example in scenarios/ play at reduced size with
//! berth's real controllers, and their outcomes keep the properties a user relies on (every pod scheduled, no
//! PodDisruptionBudget bypassed, no instance launched twice for one Machine, cost within a bound of the requested
//! cpu); the same scenario and seed give the same report byte for byte; the report's charts render in headless
//! Chromium; bad scenario files are refused with file, line and field.

use berth::model::instance_type::Catalog;
use berth::sim::runner::{run_blocking, RunOptions};
use berth::sim::scenario::{self, Scenario};
use berth::sim::summary::{summarize, Outcome};
use berth::sim::{report, SimulateArgs};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Workloads at a tenth of their size: the scenarios' shapes in seconds of test time.
const TEST_SCALE: f64 = 0.1;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "default.yaml")
        })
        .collect();
    v.sort();
    v
}

fn play(s: &Scenario) -> (Outcome, Catalog) {
    let catalog = scenario::load_catalog(s).unwrap();
    let out = run_blocking(s, &catalog, &RunOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", s.name));
    (out, catalog)
}

/// The cheapest price of one vCPU-hour on demand in the catalog: no plan can cost less per requested core.
fn cheapest_on_demand_vcpu_hour(catalog: &Catalog) -> f64 {
    catalog
        .instance_types
        .iter()
        .flat_map(|t| {
            t.offerings
                .iter()
                .filter(|o| o.capacity_type.as_str() == "on-demand")
                .map(move |o| o.price / t.vcpu.max(1) as f64)
        })
        .fold(f64::INFINITY, f64::min)
}

fn check_properties(s: &Scenario, o: &Outcome, catalog: &Catalog) {
    let sum = summarize(o);
    let name = &s.name;
    assert!(sum.pods_scheduled > 0, "{name}: no pod ever ran");
    assert_eq!(
        sum.pods_unscheduled_at_end, 0,
        "{name}: pods still pending at the end: {:?}",
        o.still_waiting_seconds
    );
    assert_eq!(
        sum.pdb_bypassed, 0,
        "{name}: PDB-protected pods removed without eviction"
    );
    assert_eq!(
        sum.duplicate_launches, 0,
        "{name}: an instance launched twice for one Machine"
    );
    assert!(sum.jobs_complete, "{name}: jobs unfinished: {:?}", o.jobs);
    for r in &o.rollouts {
        assert!(
            r.finished_s.is_some(),
            "{name}: the rollout of {} did not finish",
            r.machine_deployment
        );
    }
    // Cost: the peak within 8x the cheapest on-demand price of the peak cpu requested, plus $2/h for the fixed part
    // of a small run (daemonsets, rollout surge, a node per group); a runaway scale-up does not stay inside it.
    let peak_requested = o
        .samples
        .iter()
        .map(|s| s.requested_cpu_cores)
        .fold(0.0, f64::max);
    let bound = 8.0 * peak_requested * cheapest_on_demand_vcpu_hour(catalog) + 2.0;
    assert!(
        sum.peak_hourly_cost <= bound,
        "{name}: peak hourly cost ${:.2} above the bound ${bound:.2}",
        sum.peak_hourly_cost
    );
    assert!(sum.final_nodes > 0, "{name}: no nodes at the end");
}

#[test]
fn the_default_scenario_keeps_its_properties() {
    let s = scenario::default_scenario().unwrap().scaled(TEST_SCALE);
    let (o, catalog) = play(&s);
    check_properties(&s, &o, &catalog);
    let sum = summarize(&o);
    assert!(
        sum.disruptions.contains_key("spot interruption"),
        "the scenario's spot interruption happened: {:?}",
        sum.disruptions
    );
    assert!(
        sum.nodes_removed > 0,
        "nodes were removed (the interruption's, the rollout's)"
    );
}

#[test]
fn every_example_scenario_keeps_its_properties() {
    let files = examples();
    assert!(
        files.len() >= 3,
        "scenarios/ has the worked examples: {files:?}"
    );
    for f in files {
        let s = scenario::load(&f).unwrap().scaled(TEST_SCALE);
        let (o, catalog) = play(&s);
        check_properties(&s, &o, &catalog);
    }
}

/// After the default scenario's workloads shrink, scale-down leaves no idle fleet: at the end the scarcer resource
/// of the nodes (the larger of requested/allocatable cpu and memory) is at least half used. (A cpu-only cost
/// bound would blame memory-bound workloads for nodes they need. The examples are not held to it: batch-jobs
/// keeps its small floor on a spot node that the spot-to-spot guard rightly leaves alone.)
#[test]
fn scale_down_leaves_no_idle_fleet() {
    let s = scenario::default_scenario().unwrap().scaled(TEST_SCALE);
    let (o, _) = play(&s);
    let last = o.samples.last().unwrap();
    let binding = last.cpu_utilization.max(last.memory_utilization);
    assert!(
        last.hourly_cost == 0.0 || binding >= 0.5,
        "{}: at the end ${:.2}/h of nodes whose scarcer resource is only {:.0}% requested",
        s.name,
        last.hourly_cost,
        binding * 100.0
    );
}

#[test]
fn the_same_scenario_and_seed_give_the_same_report() {
    let s = scenario::load(&scenarios_dir().join("new-family-rollout.yaml"))
        .unwrap()
        .scaled(TEST_SCALE);
    let (a, _) = play(&s);
    let (b, _) = play(&s);
    assert_eq!(report::html(&a, None), report::html(&b, None));
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("BERTH_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "chromium is not installed, and BERTH_REQUIRE_TOOLS=1"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (scripts/test.sh installs the Debian package)"
        );
        return;
    };
    let s = scenario::load(&scenarios_dir().join("new-family-rollout.yaml"))
        .unwrap()
        .scaled(TEST_SCALE);
    let (o, _) = play(&s);
    let html = report::html(&o, None);
    assert!(
        !html.contains("<script"),
        "the report itself needs no scripts"
    );
    assert!(
        !html.contains("http://")
            || html
                .matches("http://")
                .all(|_| html.contains("xmlns=\"http://www.w3.org/2000/svg\"")),
        "no network references"
    );
    let dir = tempfile::tempdir().unwrap();
    // A copy of the report with a probe that measures what the browser laid out: each series' drawn length and
    // box. The report stays script-free; only this copy carries the probe.
    let probe = r#"<script>
for (const p of document.querySelectorAll('path.series')) {
  const b = p.getBBox();
  p.setAttribute('data-rendered', p.getTotalLength().toFixed(1) + ' ' + b.width.toFixed(1) + ' ' + b.height.toFixed(1));
}
document.body.setAttribute('data-probed', 'yes');
</script></body>"#;
    let page = dir.path().join("report.html");
    std::fs::write(&page, html.replace("</body>", probe)).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-probed=\"yes\""),
        "chromium did not load the report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for chart in ["pending-0", "nodes-0", "cost-0", "utilization-0"] {
        assert!(
            dom.contains(&format!("id=\"{chart}\"")),
            "chart {chart} missing"
        );
    }
    let rendered: Vec<(f64, f64)> = dom
        .split("data-rendered=\"")
        .skip(1)
        .map(|rest| {
            let v: Vec<f64> = rest
                .split('"')
                .next()
                .unwrap()
                .split(' ')
                .map(|x| x.parse().unwrap())
                .collect();
            (v[0], v[1])
        })
        .collect();
    assert!(rendered.len() >= 6, "series drawn: {}", rendered.len());
    assert!(
        rendered
            .iter()
            .all(|(len, width)| *len > 100.0 && *width > 100.0),
        "every series spans the chart: {rendered:?}"
    );
    // And a screenshot: the page paints.
    let shot = dir.path().join("report.png");
    let status = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=900,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!(
            "file://{}",
            dir.path().join("report.html").display()
        ))
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 20_000,
        "the screenshot is nearly blank"
    );
}

#[test]
fn bad_scenario_files_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(scenarios_dir().join("new-family-rollout.yaml")).unwrap();
    let cases = [
        (
            "unknown.yaml",
            good.replace(
                "      replicas: 120\n",
                "      replicas: 120\n      replica: 4\n",
            ),
            "timeline[1].deployment",
            "unknown field `replica`",
            "replica: 4",
        ),
        (
            "quantity.yaml",
            good.replace(
                "pod: {cpu: 500m, memory: 1Gi}",
                "pod: {cpu: 500m, memory: 1Gb}",
            ),
            "timeline[1].deployment.pod.memory",
            "1Gb",
            "memory: 1Gb",
        ),
        (
            "order.yaml",
            good.replace(
                "  - at: 8m\n",
                "  - at: 8m\n    scale: {deployment: web, replicas: 100}\n  - at: 7m\n",
            ),
            "timeline[5].at",
            "time order",
            "at: 7m",
        ),
        (
            "crd.yaml",
            good.replace(
                "classRef: {name: m6a}",
                "classRef: {name: m6a}\n            colour: blue",
            ),
            "berth.machineDeployments[0].spec.template.spec.colour",
            "unknown field",
            "colour: blue",
        ),
    ];
    for (file, text, field, message, line_text) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, &text).unwrap();
        let err = scenario::load(&path).unwrap_err().to_string();
        let prefix = format!("{}:", path.display());
        assert!(err.starts_with(&prefix), "{err}");
        let line: usize = err[prefix.len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("no line in {err}"));
        assert!(
            text.lines().nth(line - 1).unwrap().contains(line_text),
            "{err}: line {line} is {:?}",
            text.lines().nth(line - 1)
        );
        assert!(err.contains(field), "{err}");
        assert!(err.contains(message), "{err}");
    }
    // Through the binary: exit status 1 and the same message on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["simulate"])
        .arg(dir.path().join("unknown.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown.yaml:") && stderr.contains("unknown field `replica`"),
        "{stderr}"
    );
}

#[test]
fn compare_prints_both_configurations() {
    let args = SimulateArgs {
        scenario: Some(scenarios_dir().join("new-family-rollout.yaml")),
        report: None,
        compare: Some("{scaleDown: {enabled: false}}".into()),
        scale: TEST_SCALE,
        seed: None,
        json: true,
    };
    let out = berth::sim::main(&args, false).unwrap();
    let header = out.lines().nth(1).unwrap();
    assert!(
        header.contains("baseline") && header.contains("scaleDown"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.contains("nodes launched")), "{out}");
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    assert!(
        berth::sim::with_cluster_patch(
            &scenario::load(args.scenario.as_ref().unwrap()).unwrap(),
            "{nosuch: 1}"
        )
        .is_err(),
        "a bad patch is refused"
    );
}

/// Ten 2-vCPU nodes of one group, one pod each, and one failure event at 5m (`{event}`), for `{duration}`.
fn failure_scenario(event: &str, duration: &str) -> Scenario {
    let text = format!(
        "\
name: failures
seed: 5
duration: {duration}
bootDelay: 40s
berth:
  machineClasses:
    - name: small
      spec:
        instanceRequirements:
          families: [m6i, m7i]
          vcpu: {{min: 2, max: 2}}
        capacityTypes: [on-demand]
  machineDeployments:
    - name: small
      spec:
        replicas: 0
        autoscaling: {{minReplicas: 0, maxReplicas: 30}}
        template:
          spec:
            classRef: {{name: small}}
timeline:
  - at: 0s
    deployment:
      name: web
      replicas: 10
      pod: {{cpu: 1200m, memory: 2Gi}}
{event}"
    );
    scenario::parse("failures.yaml", &text, None).unwrap()
}

fn summary_json(o: &Outcome) -> serde_json::Value {
    serde_json::to_value(summarize(o)).unwrap()
}

/// Failure events play, and the summary carries the health and garbage-collection figures. Whether berth collects
/// the stray instances or not, each one is either collected or leaked, and nothing else is collected.
#[test]
fn failure_events_play_and_the_summary_has_their_fields() {
    let s = failure_scenario(
        "  - at: 5m
    strayInstances: {count: 2}
  - at: 5m
    nodeFailure: {count: 2, condition: NotReady, for: 2m}
  - at: 8m
    controlPlaneOutage: {for: 2m}
",
        "15m",
    );
    let (o, _) = play(&s);
    let labels: Vec<&str> = o.events.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        labels,
        vec![
            "deployment web (10 pods)",
            "2 stray instances",
            "node failure of 2 (NotReady)",
            "control plane outage for 120s"
        ]
    );
    let sum = summary_json(&o);
    for field in [
        "machines_remediated",
        "remediations_held",
        "instances_leaked_at_end",
    ] {
        assert!(sum[field].is_u64(), "{field}: {sum}");
    }
    let gc = &sum["garbage_collected"];
    for kind in ["instances", "nodes", "launch_templates"] {
        assert!(gc[kind].is_u64(), "garbage_collected.{kind}: {sum}");
    }
    assert_eq!(
        sum["instances_leaked_at_end"].as_u64().unwrap() + gc["instances"].as_u64().unwrap(),
        2,
        "{sum}"
    );
    assert_eq!(
        sum["pods_unscheduled_at_end"], 0,
        "the nodes recovered: {sum}"
    );
    assert!(
        summarize(&o).nodes_launched >= 10,
        "berth's launches, not counting the strays"
    );
    let text = berth::sim::summary::table(&o);
    for row in [
        "machines remediated",
        "remediations held",
        "garbage collected: instances / nodes / LTs",
        "instances leaked at the end",
    ] {
        assert!(text.contains(row), "{row}: {text}");
    }
}

/// The issue's end-to-end expectations of the simulation, which need berth's health checks (remediation with its
/// guards) and its garbage collector.
#[test]
fn health_checks_and_gc_handle_failure_scenarios_end_to_end() {
    // Every kubelet silent for 10 minutes: nothing is remediated or terminated, remediations are held.
    let (o, _) = play(&failure_scenario(
        "  - at: 5m\n    controlPlaneOutage: {for: 10m}\n",
        "25m",
    ));
    let sum = summarize(&o);
    assert_eq!(sum.machines_remediated, 0, "outage: {sum:?}");
    assert!(sum.remediations_held > 0, "outage: {sum:?}");
    assert_eq!(
        sum.nodes_removed, 0,
        "outage: no instance terminated: {sum:?}"
    );
    assert_eq!(sum.pods_unscheduled_at_end, 0, "outage: {sum:?}");
    // Three of ten nodes die for good: exactly those three are remediated and replaced.
    let (o, _) = play(&failure_scenario(
        "  - at: 5m\n    nodeFailure: {count: 3}\n",
        "25m",
    ));
    let sum = summarize(&o);
    assert_eq!(sum.machines_remediated, 3, "node failure: {sum:?}");
    assert_eq!(sum.nodes_removed, 3, "node failure: {sum:?}");
    assert_eq!(sum.pods_unscheduled_at_end, 0, "node failure: {sum:?}");
    // A crash's stray instances are collected.
    let (o, _) = play(&failure_scenario(
        "  - at: 5m\n    strayInstances: {count: 4}\n",
        "15m",
    ));
    let sum = summarize(&o);
    assert_eq!(sum.instances_leaked_at_end, 0, "strays: {sum:?}");
    assert_eq!(sum.garbage_collected.instances, 4, "strays: {sum:?}");
    // The worked example, at full size: all three at once.
    let s = scenario::load(&scenarios_dir().join("node-failures.yaml")).unwrap();
    let (o, catalog) = play(&s);
    check_properties(&s, &o, &catalog);
    let sum = summarize(&o);
    assert_eq!(sum.machines_remediated, 3, "node-failures.yaml: {sum:?}");
    assert!(sum.remediations_held > 0, "node-failures.yaml: {sum:?}");
    assert_eq!(
        sum.instances_leaked_at_end, 0,
        "node-failures.yaml: {sum:?}"
    );
    assert_eq!(
        sum.garbage_collected.instances, 4,
        "node-failures.yaml: {sum:?}"
    );
}

/// Ten 2-vCPU spot nodes, one pod each, and three spot interruptions at 7m (`{extra}` added to the event).
fn spot_scenario(extra: &str) -> Scenario {
    let text = format!(
        "\
name: spot
seed: 3
duration: 14m
bootDelay: 30s
berth:
  machineClasses:
    - name: spot
      spec:
        instanceRequirements:
          families: [m6a, m7a, c6a, c7a]
          vcpu: {{min: 2, max: 2}}
        capacityTypes: [spot, on-demand]
        spotFallbackToOnDemand: true
  machineDeployments:
    - name: spot
      spec:
        replicas: 0
        autoscaling: {{minReplicas: 0, maxReplicas: 30}}
        template:
          spec:
            classRef: {{name: spot}}
timeline:
  - at: 0s
    deployment:
      name: web
      replicas: 10
      pod: {{cpu: 1200m, memory: 2Gi}}
  - at: 7m
    spotInterruption: {{count: 3{extra}}}
"
    );
    scenario::parse("spot.yaml", &text, None).unwrap()
}

/// With EC2's two-minute warning berth drains the interrupted nodes through evictions and their replacements are
/// Ready before EC2 reclaims them; without it (`warning: false`) the pods go down with their nodes.
#[test]
fn spot_warnings_let_berth_drain_before_ec2_reclaims() {
    let (o, _) = play(&spot_scenario(""));
    let sum = summarize(&o);
    assert_eq!(sum.spot_interruptions, 3, "{sum:?}");
    assert_eq!(sum.interrupted_pods, 3, "one pod a node: {sum:?}");
    assert_eq!(
        sum.interrupted_pods_evicted_before_termination, sum.interrupted_pods,
        "{sum:?}"
    );
    assert_eq!(sum.pods_lost_to_interruptions, 0, "{sum:?}");
    assert_eq!(
        sum.interruptions_terminated_by_berth, 3,
        "drained and terminated by berth before the deadline: {:?}",
        o.interruptions
    );
    // berth cordons at once but keeps the pods running until the capacity launched for them at the warning is
    // Ready, then drains and terminates: the replacements are Ready before the termination, which comes well
    // before EC2's deadline.
    assert_eq!(
        sum.replacements_ready_before_termination, 3,
        "{:?}",
        o.interruptions
    );
    for r in &o.interruptions {
        let (Some(ready), Some(terminated)) = (r.replacement_ready_s, r.terminated_s) else {
            panic!("{r:?}");
        };
        assert!(ready <= terminated, "{r:?}");
        assert!(terminated < r.warned_s + 120, "{r:?}");
    }
    assert_eq!(sum.rebalance_recommendations, 2, "half of three, rounded");
    assert!(
        sum.interrupted_pods_pending_p99_s <= 5,
        "evicted once their capacity is Ready, the pods wait only to be placed: {sum:?}"
    );
    assert_eq!(sum.pods_unscheduled_at_end, 0, "{sum:?}");
    let html = report::html(&o, None);
    assert!(html.contains("class=\"marker warning\""), "warnings marked");
    assert!(
        html.contains("class=\"marker termination\""),
        "terminations marked"
    );

    let (o, _) = play(&spot_scenario(", warning: false"));
    let sum = summarize(&o);
    assert_eq!(sum.spot_interruptions, 3, "{sum:?}");
    assert_eq!(sum.interrupted_pods, 3, "{sum:?}");
    assert_eq!(
        sum.interrupted_pods_evicted_before_termination, 0,
        "{sum:?}"
    );
    assert_eq!(sum.pods_lost_to_interruptions, 3, "{sum:?}");
    assert_eq!(sum.interruptions_terminated_by_berth, 0, "{sum:?}");
    assert_eq!(sum.replacements_ready_before_termination, 0, "{sum:?}");
    assert_eq!(
        sum.replacements_ready_before_deadline, 0,
        "no deadline: {sum:?}"
    );
    assert_eq!(sum.rebalance_recommendations, 0, "{sum:?}");
    assert!(
        sum.interrupted_pods_pending_p50_s >= 30,
        "lost pods wait for a boot: {sum:?}"
    );
    assert_eq!(sum.pods_unscheduled_at_end, 0, "{sum:?}");
}
