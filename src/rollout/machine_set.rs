//! What a MachineSet does to keep `replicas` Machines: adopt orphans, replace failed Machines, create missing
//! ones (each taking one of the launch shapes the autoscaler queued, if any), and remove surplus ones in the
//! deletion order.
//!
//! Launch shapes: when the autoscaler raises a group's replicas it queues one shape (instance types, zones,
//! capacity types) per new Machine, each with a unique id, on the MachineSet. A Machine created for a shape
//! carries that id, so the queue's unconsumed entries are *derived* (queue minus ids already used) rather than
//! popped: a restart between creating a Machine and pruning the queue never hands the same shape out twice, and
//! a Machine without a shape is still created (replicas are the only control; shapes only steer its size).
//!
//! Counting follows Cluster API: a Machine being deleted still counts in `status.replicas` until it is gone (its
//! instance still runs and costs), so a rollout's surge limit bounds instances, not just Machine objects. It does
//! not count as healthy: a Machine deleted by someone else is replaced at once, so the pods its drain evicts have
//! somewhere to go; except in a set that must not replace Machines (an old revision under OnDelete, whose places
//! the current revision takes).

use super::deletion::{machines_to_delete, DeleteOrder, DeletionCandidate};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

/// A Machine as the MachineSet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMachine {
    pub name: String,
    pub created: DateTime<Utc>,
    /// Being deleted already (deletionTimestamp set): not healthy, not deleted again, still in `replicas`.
    pub deleting: bool,
    pub failed: bool,
    /// Running with a Ready Node.
    pub ready: bool,
    /// Ready for at least minReadySeconds.
    pub available: bool,
    pub marked_for_deletion: bool,
    /// The launch shape it was created for.
    pub shape_id: Option<String>,
    /// Its labels match the template's.
    pub fully_labeled: bool,
}

/// A queued launch shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedShape<S> {
    pub id: String,
    pub shape: S,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPlan<S> {
    /// New Machines to create, each with the shape it takes (None: decided at launch).
    pub create: Vec<Option<QueuedShape<S>>>,
    /// Machines to delete, in order.
    pub delete: Vec<String>,
    /// Queue entries already consumed by existing Machines (safe to prune).
    pub consumed_shapes: Vec<String>,
    pub status: SetCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetCounts {
    pub replicas: u32,
    pub fully_labeled: u32,
    pub ready: u32,
    pub available: u32,
}

/// Plans one reconcile of a MachineSet.
///
/// `replace_machines` false: create nothing (Machines that go, failed or deleted by hand, are not replaced); surplus
/// Machines are still deleted.
pub fn plan_machine_set<S: Clone>(
    replicas: u32,
    machines: &[OwnedMachine],
    queue: &[QueuedShape<S>],
    order: DeleteOrder,
    replace_machines: bool,
) -> SetPlan<S> {
    let live: Vec<&OwnedMachine> = machines.iter().filter(|m| !m.deleting).collect();
    let mut delete: Vec<String> = Vec::new();

    // Failed Machines are replaced: delete them, and count them as missing.
    let failed: Vec<&OwnedMachine> = live.iter().copied().filter(|m| m.failed).collect();
    delete.extend(failed.iter().map(|m| m.name.clone()));
    let healthy: Vec<&OwnedMachine> = live.iter().copied().filter(|m| !m.failed).collect();

    let current = healthy.len() as u32;
    let mut create = Vec::new();
    let used: BTreeSet<&str> = machines
        .iter()
        .filter_map(|m| m.shape_id.as_deref())
        .collect();
    let consumed_shapes: Vec<String> = queue
        .iter()
        .filter(|q| used.contains(q.id.as_str()))
        .map(|q| q.id.clone())
        .collect();
    if current < replicas && replace_machines {
        let mut free = queue.iter().filter(|q| !used.contains(q.id.as_str()));
        for _ in current..replicas {
            create.push(free.next().cloned());
        }
    } else if current > replicas {
        let candidates: Vec<DeletionCandidate> = healthy
            .iter()
            .map(|m| DeletionCandidate {
                name: m.name.clone(),
                created: m.created,
                marked_for_deletion: m.marked_for_deletion,
                healthy: m.ready,
            })
            .collect();
        delete.extend(machines_to_delete(
            &candidates,
            (current - replicas) as usize,
            order,
        ));
    }

    let counted = |f: fn(&OwnedMachine) -> bool| live.iter().filter(|m| f(m)).count() as u32;
    let status = SetCounts {
        replicas: machines.len() as u32,
        fully_labeled: counted(|m| m.fully_labeled),
        ready: counted(|m| m.ready),
        available: counted(|m| m.available),
    };
    SetPlan {
        create,
        delete,
        consumed_shapes,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, age: i64) -> OwnedMachine {
        OwnedMachine {
            name: name.into(),
            created: DateTime::from_timestamp(1_800_000_000 - age, 0).unwrap(),
            deleting: false,
            failed: false,
            ready: true,
            available: true,
            marked_for_deletion: false,
            shape_id: None,
            fully_labeled: true,
        }
    }

    fn q(id: &str) -> QueuedShape<&'static str> {
        QueuedShape {
            id: id.into(),
            shape: "m6i.large",
        }
    }

    #[test]
    fn creates_missing_machines_with_unconsumed_shapes() {
        let mut a = m("a", 10);
        a.shape_id = Some("s1".into());
        let plan = plan_machine_set(
            4,
            &[a],
            &[q("s1"), q("s2"), q("s3")],
            DeleteOrder::Random,
            true,
        );
        let ids: Vec<Option<String>> = plan
            .create
            .iter()
            .map(|c| c.as_ref().map(|s| s.id.clone()))
            .collect();
        assert_eq!(ids, [Some("s2".to_string()), Some("s3".to_string()), None]);
        assert_eq!(plan.consumed_shapes, ["s1"]);
    }

    #[test]
    fn failed_machines_are_replaced() {
        let mut bad = m("bad", 5);
        bad.failed = true;
        bad.ready = false;
        bad.available = false;
        let plan = plan_machine_set(
            2,
            &[m("ok", 10), bad],
            &[] as &[QueuedShape<()>],
            DeleteOrder::Random,
            true,
        );
        assert_eq!(plan.delete, ["bad"]);
        assert_eq!(plan.create.len(), 1);
    }

    #[test]
    fn surplus_goes_in_deletion_order_and_deleting_ones_do_not_count() {
        let mut marked = m("marked", 1);
        marked.marked_for_deletion = true;
        let mut going = m("going", 2);
        going.deleting = true;
        let plan = plan_machine_set(
            1,
            &[m("old", 100), m("new", 3), marked, going],
            &[] as &[QueuedShape<()>],
            DeleteOrder::Newest,
            true,
        );
        assert_eq!(plan.delete, ["marked", "new"]);
        assert!(plan.create.is_empty());
        assert_eq!(
            plan.status.replicas, 4,
            "a Machine being deleted still counts until it is gone"
        );
        assert_eq!(plan.status.ready, 3);
    }

    #[test]
    fn a_machine_deleted_by_hand_is_replaced_at_once_unless_the_set_must_not_replace() {
        let mut going = m("going", 2);
        going.deleting = true;
        let machines = [m("a", 10), going];
        let plan = plan_machine_set(
            2,
            &machines,
            &[] as &[QueuedShape<()>],
            DeleteOrder::Random,
            true,
        );
        assert_eq!(plan.create.len(), 1, "replaced while it drains");
        assert_eq!(plan.status.replicas, 2);
        let plan = plan_machine_set(
            2,
            &machines,
            &[] as &[QueuedShape<()>],
            DeleteOrder::Random,
            false,
        );
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
        // Surplus still goes in a set that does not replace.
        let plan = plan_machine_set(
            0,
            &[m("a", 10)],
            &[] as &[QueuedShape<()>],
            DeleteOrder::Random,
            false,
        );
        assert_eq!(plan.delete, ["a"]);
    }
}
