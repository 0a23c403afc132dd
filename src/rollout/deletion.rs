//! Which Machines a MachineSet removes when it scales down.
//!
//! Machines annotated `berth.dev/delete-machine` go first, then unhealthy ones (failed, or not Ready), then the
//! set's policy decides: Oldest, Newest, or Random (a stable hash of the name, so the same set of Machines always
//! yields the same choice and a restarted controller does not change its mind).

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteOrder {
    #[default]
    Random,
    Newest,
    Oldest,
}

/// A Machine that could be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionCandidate {
    pub name: String,
    pub created: DateTime<Utc>,
    /// Carries the berth.dev/delete-machine annotation.
    pub marked_for_deletion: bool,
    /// Running with a Ready Node.
    pub healthy: bool,
}

/// The names of the `count` Machines to remove, in the order to remove them.
pub fn machines_to_delete(
    candidates: &[DeletionCandidate],
    count: usize,
    order: DeleteOrder,
) -> Vec<String> {
    let mut ranked: Vec<&DeletionCandidate> = candidates.iter().collect();
    ranked.sort_by(|a, b| {
        b.marked_for_deletion
            .cmp(&a.marked_for_deletion)
            .then(a.healthy.cmp(&b.healthy))
            .then_with(|| match order {
                DeleteOrder::Oldest => a.created.cmp(&b.created),
                DeleteOrder::Newest => b.created.cmp(&a.created),
                DeleteOrder::Random => stable_hash(&a.name).cmp(&stable_hash(&b.name)),
            })
            .then_with(|| a.name.cmp(&b.name))
    });
    ranked
        .into_iter()
        .take(count)
        .map(|c| c.name.clone())
        .collect()
}

/// FNV-1a: stable across runs and platforms, unlike std's randomly seeded hasher.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, age_s: i64, marked: bool, healthy: bool) -> DeletionCandidate {
        DeletionCandidate {
            name: name.into(),
            created: DateTime::from_timestamp(1_800_000_000 - age_s, 0).unwrap(),
            marked_for_deletion: marked,
            healthy,
        }
    }

    #[test]
    fn annotated_then_unhealthy_then_policy() {
        let ms = vec![
            c("old", 300, false, true),
            c("new", 10, false, true),
            c("sick", 100, false, false),
            c("marked", 50, true, true),
        ];
        assert_eq!(
            machines_to_delete(&ms, 3, DeleteOrder::Oldest),
            ["marked", "sick", "old"]
        );
        assert_eq!(
            machines_to_delete(&ms, 3, DeleteOrder::Newest),
            ["marked", "sick", "new"]
        );
        assert_eq!(machines_to_delete(&ms, 10, DeleteOrder::Oldest).len(), 4);
        assert!(machines_to_delete(&ms, 0, DeleteOrder::Oldest).is_empty());
    }

    #[test]
    fn random_is_stable() {
        let ms: Vec<_> = (0..20)
            .map(|i| c(&format!("m-{i}"), i, false, true))
            .collect();
        let first = machines_to_delete(&ms, 5, DeleteOrder::Random);
        let mut reversed = ms.clone();
        reversed.reverse();
        assert_eq!(first, machines_to_delete(&reversed, 5, DeleteOrder::Random));
        assert_ne!(
            first,
            machines_to_delete(&ms, 5, DeleteOrder::Oldest),
            "random should not just be oldest"
        );
    }
}
