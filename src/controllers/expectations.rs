//! What the MachineSet controller has done that its Machine cache has not shown yet (Kubernetes' ReplicaSet
//! "expectations", as plain data).
//!
//! The controller reads a set's Machines from a watch-fed cache, which can lag its own writes. A reconcile that read
//! the cache before it showed a Machine just created would create it again: a second instance launched for one
//! replica. So every create and delete is written down here, per MachineSet (by uid), and a set whose writes the
//! cache has not caught up with creates and deletes nothing until it has:
//!
//! - a created Machine (named by the API, Machines use generateName) is expected until the cache shows it;
//! - a deleted Machine is expected until the cache shows it with a deletionTimestamp or no longer shows it;
//! - a create whose outcome is unknown (the request failed after it may have reached the server, so no name came
//!   back) is expected until the cache shows a Machine of the set it had never shown nor been told about;
//! - every expectation expires after a timeout (ReplicaSet: 5 minutes), so a lost watch event, or an uncertain
//!   create that in fact never happened, delays a set rather than wedging it forever.
//!
//! A create or delete the server certainly refused (a 4xx), or a delete of a Machine already gone (404), is not
//! written down: nothing is coming for the cache to show.

use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// ReplicaSet's expectation timeout.
pub const EXPECTATION_TIMEOUT_SECONDS: i64 = 5 * 60;

/// What the cache shows of one set's Machines: name → being deleted (deletionTimestamp set).
pub type SeenMachines = BTreeMap<String, bool>;

/// Whether a set may act on what the cache shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The cache reflects every write this controller made for the set.
    Satisfied,
    /// Some writes are not reflected yet; the oldest expires at `expires_at` (look again then at the latest).
    Waiting {
        creates: usize,
        deletes: usize,
        uncertain_creates: usize,
        expires_at: DateTime<Utc>,
    },
}

#[derive(Debug, Default, Clone)]
struct SetExpectations {
    /// Created Machines not seen yet: name → when the create returned.
    created: BTreeMap<String, DateTime<Utc>>,
    /// Deleted Machines still seen alive: name → when the delete was sent.
    deleted: BTreeMap<String, DateTime<Utc>>,
    /// Creates of unknown outcome, oldest first: when each failed.
    uncertain: Vec<DateTime<Utc>>,
    /// While an uncertain create is pending: every name the cache showed or a create returned since. A Machine of
    /// the set with any other name is new, and may be the uncertain create's.
    known: BTreeSet<String>,
}

impl SetExpectations {
    fn is_empty(&self) -> bool {
        self.created.is_empty() && self.deleted.is_empty() && self.uncertain.is_empty()
    }

    fn expire(&mut self, oldest_allowed: DateTime<Utc>) {
        self.created.retain(|_, at| *at > oldest_allowed);
        self.deleted.retain(|_, at| *at > oldest_allowed);
        self.uncertain.retain(|at| *at > oldest_allowed);
        if self.uncertain.is_empty() {
            self.known.clear();
        }
    }
}

/// Expectations of every MachineSet this controller writes for.
#[derive(Debug, Clone)]
pub struct Expectations {
    timeout: Duration,
    sets: BTreeMap<String, SetExpectations>,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations::new(Duration::seconds(EXPECTATION_TIMEOUT_SECONDS))
    }
}

impl Expectations {
    pub fn new(timeout: Duration) -> Expectations {
        Expectations {
            timeout,
            sets: BTreeMap::new(),
        }
    }

    /// The API created `name` for the set.
    pub fn created(&mut self, set_uid: &str, name: &str, now: DateTime<Utc>) {
        let set = self.sets.entry(set_uid.to_string()).or_default();
        set.created.insert(name.to_string(), now);
        if !set.uncertain.is_empty() {
            set.known.insert(name.to_string());
        }
    }

    /// A create failed in a way that may have reached the server; `seen` is what the cache showed of the set when
    /// the reconcile began.
    pub fn create_uncertain(&mut self, set_uid: &str, seen: &SeenMachines, now: DateTime<Utc>) {
        let set = self.sets.entry(set_uid.to_string()).or_default();
        if set.uncertain.is_empty() {
            set.known.clear();
        }
        set.known.extend(seen.keys().cloned());
        set.known.extend(set.created.keys().cloned());
        set.uncertain.push(now);
    }

    /// The set's Machine `name` was deleted (or the delete may have reached the server).
    pub fn deleted(&mut self, set_uid: &str, name: &str, now: DateTime<Utc>) {
        self.sets
            .entry(set_uid.to_string())
            .or_default()
            .deleted
            .insert(name.to_string(), now);
    }

    /// Drops what the cache now shows (and what has expired, for every set), and says whether the set may act.
    pub fn observe(&mut self, set_uid: &str, seen: &SeenMachines, now: DateTime<Utc>) -> Readiness {
        let oldest_allowed = now - self.timeout;
        self.sets.retain(|_, set| {
            set.expire(oldest_allowed);
            !set.is_empty()
        });
        let Some(set) = self.sets.get_mut(set_uid) else {
            return Readiness::Satisfied;
        };
        set.created.retain(|name, _| !seen.contains_key(name));
        set.deleted
            .retain(|name, _| seen.get(name).is_some_and(|deleting| !deleting));
        if !set.uncertain.is_empty() {
            let arrivals: Vec<&String> = seen
                .keys()
                .filter(|name| !set.known.contains(*name))
                .collect();
            for name in arrivals {
                set.known.insert(name.clone());
                if !set.uncertain.is_empty() {
                    set.uncertain.remove(0);
                }
            }
            if set.uncertain.is_empty() {
                set.known.clear();
            }
        }
        if set.is_empty() {
            self.sets.remove(set_uid);
            return Readiness::Satisfied;
        }
        let oldest = set
            .created
            .values()
            .chain(set.deleted.values())
            .chain(set.uncertain.iter())
            .min()
            .copied()
            .unwrap_or(now);
        Readiness::Waiting {
            creates: set.created.len(),
            deletes: set.deleted.len(),
            uncertain_creates: set.uncertain.len(),
            expires_at: oldest + self.timeout,
        }
    }

    /// The set is gone: nothing it expected matters.
    pub fn forget(&mut self, set_uid: &str) {
        self.sets.remove(set_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn seen(entries: &[(&str, bool)]) -> SeenMachines {
        entries
            .iter()
            .map(|(name, deleting)| (name.to_string(), *deleting))
            .collect()
    }

    fn waiting(r: &Readiness) -> bool {
        matches!(r, Readiness::Waiting { .. })
    }

    #[test]
    fn nothing_written_is_satisfied() {
        let mut e = Expectations::default();
        assert_eq!(e.observe("set", &seen(&[]), t(0)), Readiness::Satisfied);
    }

    #[test]
    fn a_created_machine_blocks_until_the_cache_shows_it() {
        let mut e = Expectations::default();
        e.created("set", "web-a", t(0));
        e.created("set", "web-b", t(0));
        let r = e.observe("set", &seen(&[("web-old", false)]), t(1));
        assert_eq!(
            r,
            Readiness::Waiting {
                creates: 2,
                deletes: 0,
                uncertain_creates: 0,
                expires_at: t(EXPECTATION_TIMEOUT_SECONDS),
            }
        );
        assert!(waiting(&e.observe("set", &seen(&[("web-a", false)]), t(2))));
        // Seen already being deleted still counts as seen: the create happened.
        assert_eq!(
            e.observe("set", &seen(&[("web-a", false), ("web-b", true)]), t(3)),
            Readiness::Satisfied
        );
        // Once satisfied, the entry is gone: later reads do not depend on those Machines staying.
        assert_eq!(e.observe("set", &seen(&[]), t(4)), Readiness::Satisfied);
    }

    #[test]
    fn a_deleted_machine_blocks_while_the_cache_shows_it_alive() {
        let mut e = Expectations::default();
        e.deleted("set", "web-a", t(0));
        e.deleted("set", "web-b", t(0));
        let alive = seen(&[("web-a", false), ("web-b", false)]);
        assert!(waiting(&e.observe("set", &alive, t(1))));
        // One shows its deletionTimestamp (a finalizer holds it), the other is still alive.
        assert_eq!(
            e.observe("set", &seen(&[("web-a", true), ("web-b", false)]), t(2)),
            Readiness::Waiting {
                creates: 0,
                deletes: 1,
                uncertain_creates: 0,
                expires_at: t(EXPECTATION_TIMEOUT_SECONDS),
            }
        );
        // Gone from the cache satisfies too.
        assert_eq!(
            e.observe("set", &seen(&[("web-a", true)]), t(3)),
            Readiness::Satisfied
        );
    }

    #[test]
    fn expectations_expire_so_a_lost_event_cannot_wedge_a_set() {
        let mut e = Expectations::default();
        e.created("set", "web-a", t(0));
        e.deleted("set", "web-b", t(10));
        let stale = seen(&[("web-b", false)]);
        assert!(waiting(&e.observe(
            "set",
            &stale,
            t(EXPECTATION_TIMEOUT_SECONDS - 1)
        )));
        // The create has expired, the delete (sent later) has not.
        assert_eq!(
            e.observe("set", &stale, t(EXPECTATION_TIMEOUT_SECONDS)),
            Readiness::Waiting {
                creates: 0,
                deletes: 1,
                uncertain_creates: 0,
                expires_at: t(10 + EXPECTATION_TIMEOUT_SECONDS),
            }
        );
        assert_eq!(
            e.observe("set", &stale, t(10 + EXPECTATION_TIMEOUT_SECONDS)),
            Readiness::Satisfied
        );
    }

    #[test]
    fn an_uncertain_create_waits_for_a_new_machine_or_expiry() {
        let mut e = Expectations::default();
        let before = seen(&[("web-a", false)]);
        e.created("set", "web-b", t(0));
        e.create_uncertain("set", &before, t(0));
        // The named create arriving is not the uncertain one's Machine.
        let r = e.observe("set", &seen(&[("web-a", false), ("web-b", false)]), t(1));
        assert_eq!(
            r,
            Readiness::Waiting {
                creates: 0,
                deletes: 0,
                uncertain_creates: 1,
                expires_at: t(EXPECTATION_TIMEOUT_SECONDS),
            }
        );
        // A Machine the set never knew of is the one the failed request made after all.
        assert_eq!(
            e.observe(
                "set",
                &seen(&[("web-a", false), ("web-b", false), ("web-x", false)]),
                t(2)
            ),
            Readiness::Satisfied
        );
        // An uncertain create that never happened expires.
        e.create_uncertain("set", &seen(&[("web-a", false)]), t(100));
        let same = seen(&[("web-a", false)]);
        assert!(waiting(&e.observe("set", &same, t(101))));
        assert_eq!(
            e.observe("set", &same, t(100 + EXPECTATION_TIMEOUT_SECONDS)),
            Readiness::Satisfied
        );
    }

    #[test]
    fn a_name_created_after_an_uncertain_create_does_not_satisfy_it() {
        let mut e = Expectations::default();
        e.create_uncertain("set", &seen(&[]), t(0));
        e.created("set", "web-b", t(0));
        assert!(waiting(&e.observe("set", &seen(&[("web-b", false)]), t(1))));
    }

    #[test]
    fn sets_are_independent_and_forgotten_sets_expect_nothing() {
        let mut e = Expectations::default();
        e.created("one", "one-a", t(0));
        e.created("two", "two-a", t(0));
        assert_eq!(
            e.observe("two", &seen(&[("two-a", false)]), t(1)),
            Readiness::Satisfied
        );
        assert!(waiting(&e.observe("one", &seen(&[("two-a", false)]), t(1))));
        e.forget("one");
        assert_eq!(e.observe("one", &seen(&[]), t(2)), Readiness::Satisfied);
    }
}
