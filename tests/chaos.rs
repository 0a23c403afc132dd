//! `berth bench chaos` at a small size: berth crashed at seeded random moments through a burst, scale-downs, a
//! rollout and consolidations, with and without API and cloud faults, keeps its promise (the ledger of duplicate
//! launches, leaks, double terminations, PDB bypasses, unscheduled pods and stuck machines is all zeros); bad fault
//! options are refused naming the option; the scenario it writes plays again under `berth simulate`.

use serde_json::Value;
use std::process::Command;

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("berth runs")
}

/// The JSON line a benchmark prints last.
fn ledger(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON line in:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

fn assert_kept(v: &Value, context: &str) {
    for figure in [
        "duplicate_launches",
        "instances_leaked",
        "double_terminations",
        "pdb_bypassed",
        "pods_unscheduled_at_end",
        "machines_stuck",
    ] {
        assert_eq!(v[figure], 0, "{context}: {figure} in {v}");
    }
    assert!(
        v["seconds_to_converge"].is_u64(),
        "{context}: never converged: {v}"
    );
    assert_eq!(v["kept"], true, "{context}: {v}");
}

#[test]
fn crashes_at_random_moments_launch_nothing_twice_and_leak_nothing() {
    for seed in ["1", "2"] {
        let out = berth(&[
            "bench",
            "chaos",
            "--machines",
            "8",
            "--kills",
            "4",
            "--seed",
            seed,
        ]);
        let v = ledger(&out);
        assert!(out.status.success(), "seed {seed}: {v}");
        assert_kept(&v, &format!("seed {seed}"));
        assert_eq!(v["kills"], 4);
        assert!(v["nodes_launched"].as_u64().unwrap() >= 8, "{v}");
        assert!(v["pods_created"].as_u64().unwrap() >= 24, "{v}");
    }
}

#[test]
fn crashes_under_api_faults_and_an_eventually_consistent_cloud_keep_the_promise() {
    let out = berth(&[
        "bench",
        "chaos",
        "--machines",
        "8",
        "--kills",
        "3",
        "--api-faults",
        "5%",
        "--cloud-errors",
        "0.05",
        "--launch-invisible-for",
        "60s",
        "--terminated-visible-for",
        "60s",
    ]);
    let v = ledger(&out);
    assert!(out.status.success(), "{v}");
    assert_kept(&v, "faults");
    assert!(
        v["api_faults"].as_u64().unwrap() > 0,
        "faults were served: {v}"
    );
}

#[test]
fn bad_fault_options_are_refused_naming_the_option() {
    for (args, expected) in [
        (vec!["--api-faults", "1.5"], "'--api-faults <SHARE>'"),
        (vec!["--api-faults", "NaN"], "'--api-faults <SHARE>'"),
        (
            vec!["--api-faults", "0.1", "--api-fault-kinds", "503,teapot"],
            "unknown API fault kind \"teapot\"",
        ),
        (vec!["--cloud-errors=-0.2"], "'--cloud-errors <SHARE>'"),
        (
            vec!["--launch-invisible-for", "soon"],
            "'--launch-invisible-for <DURATION>'",
        ),
        (vec!["--machines", "0"], "'--machines <MACHINES>'"),
    ] {
        let mut all = vec!["bench", "chaos"];
        all.extend(args.iter());
        let out = berth(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn the_scenario_it_plays_plays_again_under_simulate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chaos.yaml");
    let out = berth(&[
        "bench",
        "chaos",
        "--machines",
        "4",
        "--kills",
        "2",
        "--write-scenario",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sim = berth(&["simulate", path.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&sim.stdout);
    assert!(
        sim.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let row = table
        .lines()
        .find(|l| l.contains("berth crashes (chaos)"))
        .unwrap_or_else(|| panic!("no crash row in:\n{table}"));
    assert!(row.trim_end().ends_with(" 2"), "{row}");
}
