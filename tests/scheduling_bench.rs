//! The benchmarks run at a small size and their plans pass the independent verifier (timing is not checked here).

use berth::bench::{footprint, packing, reaction, scheduling};
use berth::scheduling::{solve, verify::verify};
use chrono::Utc;

#[test]
fn diverse_and_preference_plans_are_feasible_and_complete() {
    let catalog = scheduling::catalog();
    for (objects, respect) in [
        (scheduling::diverse_pods(300, 3), true),
        (scheduling::preference_pods(200, 3), true),
        (scheduling::preference_pods(200, 3), false),
    ] {
        let snap = scheduling::snapshot(&catalog, scheduling::to_pods(&objects).unwrap(), respect);
        let now = Utc::now();
        let plan = solve(&snap, &catalog, now).unwrap();
        assert!(
            plan.unschedulable.is_empty(),
            "{:?}",
            plan.unschedulable.first()
        );
        let errors = verify(&snap, &catalog, &plan, now);
        assert!(errors.is_empty(), "{errors:#?}");
    }
}

#[test]
fn preferences_are_honoured_when_respected() {
    let catalog = scheduling::catalog();
    let objects = scheduling::preference_pods(50, 5);
    let plan = solve(
        &scheduling::snapshot(&catalog, scheduling::to_pods(&objects).unwrap(), true),
        &catalog,
        Utc::now(),
    )
    .unwrap();
    // Preferred zone-1 holds once the anti-affinity preferences are relaxed.
    assert!(
        plan.new_machines.iter().all(|m| m.zone == "zone-1"),
        "{:?}",
        plan.new_machines
            .iter()
            .map(|m| &m.zone)
            .collect::<Vec<_>>()
    );
}

#[test]
fn packing_dumps_and_stays_near_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (name, constrained, objects) = packing::workloads(1)
        .into_iter()
        .find(|w| w.0 == "memory-heavy")
        .unwrap();
    let row = packing::evaluate(&name, constrained, &objects, Some(dir.path())).unwrap();
    assert_eq!(row.unscheduled, 0);
    assert!(
        row.cost >= row.bound * 0.999,
        "a plan cannot beat the lower bound: {row:?}"
    );
    assert!(row.cost <= row.bound * 1.25, "{row:?}");
    for f in ["pods.json", "instance-types.json", "plan.json"] {
        let text = std::fs::read_to_string(dir.path().join(&name).join(f)).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }
}

/// B3 at a small size: every burst pod runs on a machine berth launched for it, and each has its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaction_measures_every_burst_pod_against_the_launch_it_runs_on() {
    let report = reaction::measure(40, 10, 120, 7).await.unwrap();
    assert_eq!((report.nodes, report.pending), (40, 120));
    assert_eq!(report.measured, 120, "{report:?}");
    assert!(report.machines >= 1, "{report:?}");
    assert!(
        0.0 < report.p50_ms && report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms,
        "{report:?}"
    );
}

/// B4 at a small size: berth runs as its own process against the emulator's socket, syncs, reports its memory and
/// makes its first scale-up decision for the pods no resident node can hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footprint_runs_berth_as_a_process_to_its_first_decision() {
    let berth = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    let r = footprint::measure(berth, 60, 900).await.unwrap();
    assert_eq!((r.nodes, r.pods), (60, 900));
    assert!(
        0.0 < r.sync_seconds && r.sync_seconds <= r.first_decision_seconds,
        "{r:?}"
    );
    assert!(0.0 < r.rss_mib && r.rss_mib <= r.peak_rss_mib, "{r:?}");
    let bad = footprint::measure(berth, 10, 5).await.unwrap_err();
    assert_eq!(
        bad.to_string(),
        "a size needs nodes > 0 and pods >= nodes, got 10 nodes and 5 pods"
    );
}
