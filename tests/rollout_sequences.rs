//! Golden sequences: the rollout planner and a fake MachineSet controller run together, in a seeded random order
//! of events (a reconcile, a Machine becoming available, a Machine deleted by hand), and at every step the
//! rollout's promises hold: available >= replicas - maxUnavailable and total <= replicas + maxSurge.

use berth::rollout::{
    plan, resolve_fenceposts, DeploymentView, IntOrPercent, Progress, SetView, Strategy,
};
use chrono::{DateTime, Utc};

/// A machine: which revision it belongs to and whether it became available.
#[derive(Clone, Debug)]
struct FakeMachine {
    revision: u64,
    available: bool,
}

struct FakeCluster {
    machines: Vec<FakeMachine>,
    /// (revision, spec replicas) per set; revision 1 is the old template, 2 the new one.
    sets: Vec<(u64, u32, bool)>,
}

impl FakeCluster {
    fn set_view(&self, revision: u64) -> SetView {
        let (_, spec, exists) = self
            .sets
            .iter()
            .find(|(r, _, _)| *r == revision)
            .copied()
            .unwrap_or((revision, 0, false));
        let mine: Vec<&FakeMachine> = self
            .machines
            .iter()
            .filter(|m| m.revision == revision)
            .collect();
        SetView {
            name: format!("rev-{revision}"),
            revision,
            exists,
            spec_replicas: spec,
            replicas: mine.len() as u32,
            available: mine.iter().filter(|m| m.available).count() as u32,
        }
    }

    /// The fake MachineSet controller: create missing Machines (unavailable at first), delete surplus ones
    /// (unavailable first, as the real deletion order does).
    fn reconcile_sets(&mut self) {
        for &(revision, spec, _) in &self.sets.clone() {
            let count = self
                .machines
                .iter()
                .filter(|m| m.revision == revision)
                .count() as u32;
            if count < spec {
                for _ in count..spec {
                    self.machines.push(FakeMachine {
                        revision,
                        available: false,
                    });
                }
            } else if count > spec {
                let mut surplus = count - spec;
                for want_available in [false, true] {
                    while surplus > 0 {
                        let Some(i) = self
                            .machines
                            .iter()
                            .position(|m| m.revision == revision && m.available == want_available)
                        else {
                            break;
                        };
                        self.machines.remove(i);
                        surplus -= 1;
                    }
                }
            }
        }
    }
}

/// A small deterministic generator (SplitMix64), so every failure replays from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn run_rollout(seed: u64, replicas: u32, surge: IntOrPercent, unavailable: IntOrPercent) {
    let mut rng = Rng(seed);
    let mut cluster = FakeCluster {
        machines: (0..replicas)
            .map(|_| FakeMachine {
                revision: 1,
                available: true,
            })
            .collect(),
        sets: vec![(1, replicas, true)],
    };
    let (max_surge, max_unavailable) = resolve_fenceposts(surge, unavailable, replicas);
    let strategy = Strategy::RollingUpdate {
        max_surge: surge,
        max_unavailable: unavailable,
    };
    for step in 0..2_000 {
        match rng.below(3) {
            // The MachineDeployment controller reconciles.
            0 => {
                let view = DeploymentView {
                    replicas,
                    strategy,
                    paused: false,
                    current: cluster.set_view(2),
                    old: vec![cluster.set_view(1)],
                    revision_history_limit: 10,
                    progress_deadline_seconds: 600,
                    last_progress: None,
                };
                let intents = plan(&view, now());
                if intents.progress == Progress::Complete {
                    assert_eq!(
                        cluster
                            .machines
                            .iter()
                            .filter(|m| m.revision == 2 && m.available)
                            .count() as u32,
                        replicas
                    );
                    return;
                }
                if let Some(n) = intents.create_current {
                    cluster.sets.push((2, n, true));
                }
                for s in intents.scale {
                    let revision: u64 = s.set.trim_start_matches("rev-").parse().unwrap();
                    for set in cluster.sets.iter_mut().filter(|(r, _, _)| *r == revision) {
                        set.1 = s.to;
                    }
                }
            }
            // The MachineSet controller creates and deletes Machines.
            1 => cluster.reconcile_sets(),
            // A Machine's Node becomes Ready.
            _ => {
                let pending: Vec<usize> = (0..cluster.machines.len())
                    .filter(|i| !cluster.machines[*i].available)
                    .collect();
                if !pending.is_empty() {
                    let i = pending[rng.below(pending.len() as u64) as usize];
                    cluster.machines[i].available = true;
                }
            }
        }
        let total = cluster.machines.len() as u32;
        let available = cluster.machines.iter().filter(|m| m.available).count() as u32;
        assert!(
            total <= replicas + max_surge,
            "seed {seed} step {step}: {total} machines exceed replicas {replicas} + maxSurge {max_surge}"
        );
        assert!(
            available + max_unavailable >= replicas,
            "seed {seed} step {step}: only {available} available, below replicas {replicas} - maxUnavailable {max_unavailable}"
        );
    }
    panic!("seed {seed}: rollout did not complete in 2000 steps");
}

#[test]
fn surge_two_unavailable_zero() {
    for seed in 0..200 {
        run_rollout(seed, 3, IntOrPercent::Int(2), IntOrPercent::Int(0));
    }
}

#[test]
fn surge_zero_unavailable_one() {
    for seed in 0..200 {
        run_rollout(seed, 5, IntOrPercent::Int(0), IntOrPercent::Int(1));
    }
}

#[test]
fn percentages() {
    for seed in 0..200 {
        run_rollout(
            seed,
            10,
            IntOrPercent::Percent(25),
            IntOrPercent::Percent(25),
        );
        run_rollout(seed, 7, IntOrPercent::Percent(0), IntOrPercent::Percent(0));
    }
}

#[test]
fn single_replica_with_surge() {
    for seed in 0..100 {
        run_rollout(seed, 1, IntOrPercent::Int(1), IntOrPercent::Int(0));
    }
}
