//! The rollout planner: what each MachineSet's replicas should be now.

use chrono::{DateTime, Utc};
use std::fmt;

/// A count or a percentage of replicas (maxSurge, maxUnavailable, disruption budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error(
        "{field} {value:?} is neither a non-negative integer nor a percentage from 0% to 100%"
    )]
    BadIntOrPercent { field: &'static str, value: String },
}

impl RolloutError {
    pub fn category(&self) -> &'static str {
        match self {
            RolloutError::BadIntOrPercent { .. } => "bad_int_or_percent",
        }
    }
}

impl IntOrPercent {
    /// Parses `3` or `25%`; `field` names the field in the error.
    pub fn parse(field: &'static str, value: &str) -> Result<IntOrPercent, RolloutError> {
        let err = || RolloutError::BadIntOrPercent {
            field,
            value: value.to_string(),
        };
        match value.strip_suffix('%') {
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .map(IntOrPercent::Percent)
                .ok_or_else(err),
            None => value
                .parse::<u32>()
                .map(IntOrPercent::Int)
                .map_err(|_| err()),
        }
    }

    /// Resolves against `total`, rounding up or down.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = total as u64 * p as u64;
                (if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }) as u32
            }
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// (maxSurge, maxUnavailable) as counts: surge rounds up, unavailable down, and if both are zero one Machine may
/// be unavailable so the rollout can move at all.
pub fn resolve_fenceposts(
    max_surge: IntOrPercent,
    max_unavailable: IntOrPercent,
    replicas: u32,
) -> (u32, u32) {
    let surge = max_surge.resolve(replicas, true);
    let unavailable = max_unavailable.resolve(replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RollingUpdate {
        max_surge: IntOrPercent,
        max_unavailable: IntOrPercent,
    },
    OnDelete,
}

/// One MachineSet as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    pub name: String,
    /// Its template revision (higher is newer).
    pub revision: u64,
    /// Whether the set exists yet (the current revision's set is created by the controller on demand).
    pub exists: bool,
    /// spec.replicas.
    pub spec_replicas: u32,
    /// Machines it owns now, those being deleted included (status.replicas).
    pub replicas: u32,
    /// Machines Ready for minReadySeconds (status.availableReplicas).
    pub available: u32,
}

/// A MachineDeployment and its sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentView {
    /// spec.replicas.
    pub replicas: u32,
    pub strategy: Strategy,
    pub paused: bool,
    /// The set of the current template revision.
    pub current: SetView,
    /// Sets of older revisions, in any order.
    pub old: Vec<SetView>,
    pub revision_history_limit: u32,
    pub progress_deadline_seconds: u32,
    /// When the rollout last made progress (a set's counts changed); None before the first observation.
    pub last_progress: Option<DateTime<Utc>>,
}

/// One change of a set's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleIntent {
    pub set: String,
    pub from: u32,
    pub to: u32,
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every Machine is of the current revision and available.
    Complete,
    /// Moving, or waiting within the progress deadline.
    Progressing,
    /// No progress for progressDeadlineSeconds.
    DeadlineExceeded,
    /// Paused: template changes wait.
    Paused,
}

/// What the controller should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleIntents {
    /// Create the current revision's set with this many replicas (when it does not exist yet).
    pub create_current: Option<u32>,
    /// Replica changes of existing sets.
    pub scale: Vec<ScaleIntent>,
    /// Old, empty sets beyond revisionHistoryLimit, to delete.
    pub delete: Vec<String>,
    pub progress: Progress,
    /// Why, in order, for Events and logs.
    pub notes: Vec<String>,
}

/// Plans one step of the rollout.
pub fn plan(view: &DeploymentView, now: DateTime<Utc>) -> ScaleIntents {
    let desired = view.replicas;
    let mut targets: Vec<(SetView, u32)> = Vec::with_capacity(view.old.len() + 1);
    let mut notes = Vec::new();
    let mut old: Vec<SetView> = view.old.clone();
    // Oldest first: they are scaled down first.
    old.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut current_target = view.current.spec_replicas;
    let mut old_targets: Vec<u32> = old.iter().map(|s| s.spec_replicas).collect();

    if view.paused {
        scale_paused(
            desired,
            &mut current_target,
            &view.current,
            &old,
            &mut old_targets,
            &mut notes,
        );
    } else {
        match view.strategy {
            Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            } => {
                let (surge, unavailable) = resolve_fenceposts(max_surge, max_unavailable, desired);
                current_target = rolling_current(desired, surge, &view.current, &old, &mut notes);
                rolling_old(
                    desired,
                    unavailable,
                    &view.current,
                    current_target,
                    &old,
                    &mut old_targets,
                    &mut notes,
                );
            }
            Strategy::OnDelete => {
                on_delete(
                    desired,
                    &view.current,
                    &old,
                    &mut current_target,
                    &mut old_targets,
                    &mut notes,
                );
            }
        }
    }

    targets.push((view.current.clone(), current_target));
    targets.extend(old.iter().cloned().zip(old_targets.iter().copied()));

    let mut scale = Vec::new();
    let mut create_current = None;
    for (set, to) in &targets {
        if !set.exists {
            // Paused, a template change waits for resume: no empty set of the new revision appears meanwhile.
            if view.paused && *to == 0 {
                notes.push(format!(
                    "paused: MachineSet {} of the new template waits for resume",
                    set.name
                ));
            } else {
                create_current = Some(*to);
            }
            continue;
        }
        if set.spec_replicas != *to {
            let kind = if set.name == view.current.name {
                "current"
            } else {
                "old"
            };
            scale.push(ScaleIntent {
                set: set.name.clone(),
                from: set.spec_replicas,
                to: *to,
                note: format!(
                    "{kind} MachineSet {} {} -> {}",
                    set.name, set.spec_replicas, to
                ),
            });
        }
    }

    // History: empty old sets beyond the limit, oldest first.
    let empty_old: Vec<&SetView> = old
        .iter()
        .zip(&old_targets)
        .filter(|(s, t)| **t == 0 && s.replicas == 0)
        .map(|(s, _)| s)
        .collect();
    let excess = empty_old
        .len()
        .saturating_sub(view.revision_history_limit as usize);
    let delete: Vec<String> = empty_old
        .iter()
        .take(excess)
        .map(|s| s.name.clone())
        .collect();
    for name in &delete {
        notes.push(format!(
            "deleting old MachineSet {name} beyond revisionHistoryLimit {}",
            view.revision_history_limit
        ));
    }

    let complete = view.current.exists
        && view.current.spec_replicas == desired
        && view.current.replicas == desired
        && view.current.available >= desired
        && old.iter().all(|s| s.spec_replicas == 0 && s.replicas == 0);
    let progress = if complete {
        Progress::Complete
    } else if view.paused {
        Progress::Paused
    } else if view
        .last_progress
        .is_some_and(|t| (now - t).num_seconds() > view.progress_deadline_seconds as i64)
    {
        notes.push(format!(
            "no progress for more than {}s",
            view.progress_deadline_seconds
        ));
        Progress::DeadlineExceeded
    } else {
        Progress::Progressing
    };

    ScaleIntents {
        create_current,
        scale,
        delete,
        progress,
        notes,
    }
}

/// RollingUpdate, the current set: grow while the total of all sets stays within replicas + surge.
fn rolling_current(
    desired: u32,
    surge: u32,
    current: &SetView,
    old: &[SetView],
    notes: &mut Vec<String>,
) -> u32 {
    let spec = current.spec_replicas;
    if spec == desired {
        return spec;
    }
    if spec > desired {
        notes.push(format!(
            "current MachineSet {} above replicas: scale down to {desired}",
            current.name
        ));
        return desired;
    }
    let total: u32 = spec
        + old
            .iter()
            .map(|s| s.spec_replicas.max(s.replicas))
            .sum::<u32>();
    let max_total = desired + surge;
    if total >= max_total {
        notes.push(format!(
            "waiting: {total} machines, at the surge limit {max_total}"
        ));
        return spec;
    }
    let up = (max_total - total).min(desired - spec);
    notes.push(format!(
        "surge: current MachineSet {} +{up} (total {total} of at most {max_total})",
        current.name
    ));
    spec + up
}

/// RollingUpdate, the old sets: shrink while the available count stays at or above replicas - unavailable.
fn rolling_old(
    desired: u32,
    unavailable: u32,
    current: &SetView,
    current_target: u32,
    old: &[SetView],
    old_targets: &mut [u32],
    notes: &mut Vec<String>,
) {
    if old.iter().all(|s| s.spec_replicas == 0) {
        return;
    }
    let min_available = desired.saturating_sub(unavailable);
    let all: u32 = current_target + old.iter().map(|s| s.spec_replicas).sum::<u32>();
    let current_unavailable = current_target.saturating_sub(current.available);
    let mut budget = all
        .saturating_sub(min_available)
        .saturating_sub(current_unavailable);
    if budget == 0 {
        notes.push(format!(
            "waiting: scaling down old sets now would leave fewer than {min_available} available"
        ));
        return;
    }
    // Unavailable old Machines go first: removing them costs no availability.
    for (set, target) in old.iter().zip(old_targets.iter_mut()) {
        let unhealthy = target.saturating_sub(set.available);
        let cut = unhealthy.min(budget);
        if cut > 0 {
            *target -= cut;
            budget -= cut;
            notes.push(format!("old MachineSet {} -{cut} unavailable", set.name));
        }
    }
    let available: u32 = current.available + old.iter().map(|s| s.available).sum::<u32>();
    if available <= min_available {
        if budget > 0 {
            notes.push(format!(
                "waiting: {available} available, need {min_available} before removing more"
            ));
        }
        return;
    }
    let mut remaining = (available - min_available).min(budget);
    for (set, target) in old.iter().zip(old_targets.iter_mut()) {
        if remaining == 0 {
            break;
        }
        let cut = (*target).min(remaining).min(set.available);
        if cut > 0 {
            *target -= cut;
            remaining -= cut;
            notes.push(format!(
                "old MachineSet {} -{cut} (keeping at least {min_available} available)",
                set.name
            ));
        }
    }
}

/// OnDelete: old Machines go only when deleted by hand; the current set fills the places they leave.
fn on_delete(
    desired: u32,
    current: &SetView,
    old: &[SetView],
    current_target: &mut u32,
    old_targets: &mut [u32],
    notes: &mut Vec<String>,
) {
    for (set, target) in old.iter().zip(old_targets.iter_mut()) {
        // A Machine deleted by hand is not recreated in an old set.
        if set.exists && set.replicas < *target {
            notes.push(format!(
                "old MachineSet {}: {} Machine(s) deleted, not replaced",
                set.name,
                *target - set.replicas
            ));
            *target = set.replicas;
        }
    }
    // Scaling down the deployment takes old Machines first.
    let mut old_total: u32 = old_targets.iter().sum();
    let mut excess = old_total.saturating_sub(desired);
    for (set, target) in old.iter().zip(old_targets.iter_mut()) {
        let cut = (*target).min(excess);
        if cut > 0 {
            *target -= cut;
            excess -= cut;
            old_total -= cut;
            notes.push(format!(
                "old MachineSet {} -{cut}: deployment scaled down",
                set.name
            ));
        }
    }
    let want = desired.saturating_sub(old_total);
    if want != current.spec_replicas {
        notes.push(format!(
            "current MachineSet {} -> {want} (OnDelete)",
            current.name
        ));
    }
    *current_target = want;
}

/// Paused: follow replicas without stepping the rollout. Growth goes to the newest active set, shrinkage comes
/// from the oldest sets first.
fn scale_paused(
    desired: u32,
    current_target: &mut u32,
    current: &SetView,
    old: &[SetView],
    old_targets: &mut [u32],
    notes: &mut Vec<String>,
) {
    let total: u32 = *current_target + old_targets.iter().sum::<u32>();
    if total == desired {
        return;
    }
    if total < desired {
        let add = desired - total;
        // The newest set that has replicas, else the current one.
        let newest_active = old_targets.iter().rposition(|t| *t > 0);
        match newest_active {
            Some(i) if *current_target == 0 => {
                old_targets[i] += add;
                notes.push(format!("paused: old MachineSet {} +{add}", old[i].name));
            }
            _ => {
                *current_target += add;
                notes.push(format!(
                    "paused: current MachineSet {} +{add}",
                    current.name
                ));
            }
        }
        return;
    }
    let mut cut_total = total - desired;
    for (set, target) in old.iter().zip(old_targets.iter_mut()) {
        let cut = (*target).min(cut_total);
        if cut > 0 {
            *target -= cut;
            cut_total -= cut;
            notes.push(format!("paused: old MachineSet {} -{cut}", set.name));
        }
    }
    if cut_total > 0 {
        *current_target -= cut_total.min(*current_target);
        notes.push(format!(
            "paused: current MachineSet {} -{cut_total}",
            current.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, revision: u64, spec: u32, available: u32) -> SetView {
        SetView {
            name: name.into(),
            revision,
            exists: true,
            spec_replicas: spec,
            replicas: spec,
            available,
        }
    }

    fn view(
        replicas: u32,
        surge: IntOrPercent,
        unavailable: IntOrPercent,
        current: SetView,
        old: Vec<SetView>,
    ) -> DeploymentView {
        DeploymentView {
            replicas,
            strategy: Strategy::RollingUpdate {
                max_surge: surge,
                max_unavailable: unavailable,
            },
            paused: false,
            current,
            old,
            revision_history_limit: 1,
            progress_deadline_seconds: 600,
            last_progress: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn fenceposts_round_like_cluster_api() {
        use IntOrPercent::*;
        assert_eq!(resolve_fenceposts(Percent(25), Percent(25), 10), (3, 2));
        assert_eq!(resolve_fenceposts(Int(0), Int(0), 10), (0, 1));
        assert_eq!(resolve_fenceposts(Percent(0), Percent(10), 5), (0, 1)); // 0.5 rounds down to 0, then 1
        assert_eq!(resolve_fenceposts(Int(2), Int(0), 3), (2, 0));
        assert_eq!(resolve_fenceposts(Percent(100), Percent(0), 3), (3, 0));
    }

    #[test]
    fn int_or_percent_parsing() {
        assert_eq!(
            IntOrPercent::parse("maxSurge", "25%"),
            Ok(IntOrPercent::Percent(25))
        );
        assert_eq!(
            IntOrPercent::parse("maxSurge", "3"),
            Ok(IntOrPercent::Int(3))
        );
        for bad in ["101%", "-1", "x", "1.5", "%"] {
            assert!(IntOrPercent::parse("maxSurge", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_step_surges_without_touching_old() {
        let mut current = set("md-new", 2, 0, 0);
        current.exists = false;
        let v = view(
            3,
            IntOrPercent::Int(2),
            IntOrPercent::Int(0),
            current,
            vec![set("md-old", 1, 3, 3)],
        );
        let p = plan(&v, now());
        assert_eq!(p.create_current, Some(2));
        assert!(p.scale.is_empty(), "{:?}", p.scale);
        assert_eq!(p.progress, Progress::Progressing);
    }

    #[test]
    fn old_set_shrinks_as_new_machines_become_available() {
        let v = view(
            3,
            IntOrPercent::Int(2),
            IntOrPercent::Int(0),
            set("new", 2, 2, 2),
            vec![set("old", 1, 3, 3)],
        );
        let p = plan(&v, now());
        // total 5 = 3 + 2: no more surge; 5 available, need 3: remove 2 old.
        assert_eq!(
            p.scale,
            vec![ScaleIntent {
                set: "old".into(),
                from: 3,
                to: 1,
                note: "old MachineSet old 3 -> 1".into()
            }]
        );
    }

    #[test]
    fn nothing_moves_while_new_machines_are_unavailable_and_unavailability_is_zero() {
        let v = view(
            3,
            IntOrPercent::Int(2),
            IntOrPercent::Int(0),
            set("new", 2, 2, 0),
            vec![set("old", 1, 3, 3)],
        );
        let p = plan(&v, now());
        assert!(p.scale.is_empty(), "{:?}", p.scale);
    }

    #[test]
    fn on_delete_replaces_only_deleted_machines() {
        let mut old = set("old", 1, 3, 3);
        old.replicas = 2; // someone deleted one
        let v = DeploymentView {
            strategy: Strategy::OnDelete,
            ..view(
                3,
                IntOrPercent::Int(1),
                IntOrPercent::Int(0),
                set("new", 2, 0, 0),
                vec![old],
            )
        };
        let p = plan(&v, now());
        assert_eq!(
            p.scale
                .iter()
                .map(|s| (s.set.as_str(), s.to))
                .collect::<Vec<_>>(),
            vec![("new", 1), ("old", 2)]
        );
    }

    #[test]
    fn paused_scales_without_rolling() {
        let v = DeploymentView {
            paused: true,
            ..view(
                5,
                IntOrPercent::Int(1),
                IntOrPercent::Int(0),
                set("new", 2, 0, 0),
                vec![set("old", 1, 3, 3)],
            )
        };
        let p = plan(&v, now());
        assert_eq!(
            p.scale
                .iter()
                .map(|s| (s.set.as_str(), s.to))
                .collect::<Vec<_>>(),
            vec![("old", 5)]
        );
        assert_eq!(p.progress, Progress::Paused);
    }

    #[test]
    fn paused_template_change_creates_no_set_until_resumed() {
        let mut current = set("new", 2, 0, 0);
        current.exists = false;
        let mut v = DeploymentView {
            paused: true,
            ..view(
                3,
                IntOrPercent::Int(2),
                IntOrPercent::Int(0),
                current,
                vec![set("old", 1, 3, 3)],
            )
        };
        let p = plan(&v, now());
        assert_eq!(
            (p.create_current, p.scale.len(), p.progress),
            (None, 0, Progress::Paused)
        );
        v.paused = false;
        assert_eq!(plan(&v, now()).create_current, Some(2));
    }

    #[test]
    fn history_beyond_the_limit_is_deleted_oldest_first() {
        let v = view(
            2,
            IntOrPercent::Int(1),
            IntOrPercent::Int(0),
            set("v4", 4, 2, 2),
            vec![set("v1", 1, 0, 0), set("v3", 3, 0, 0), set("v2", 2, 0, 0)],
        );
        let p = plan(&v, now());
        assert_eq!(p.delete, vec!["v1".to_string(), "v2".to_string()]);
        assert_eq!(p.progress, Progress::Complete);
    }

    #[test]
    fn progress_deadline() {
        let mut v = view(
            3,
            IntOrPercent::Int(1),
            IntOrPercent::Int(0),
            set("new", 2, 1, 0),
            vec![set("old", 1, 3, 3)],
        );
        v.last_progress = Some(now() - chrono::Duration::seconds(601));
        assert_eq!(plan(&v, now()).progress, Progress::DeadlineExceeded);
        v.last_progress = Some(now() - chrono::Duration::seconds(30));
        assert_eq!(plan(&v, now()).progress, Progress::Progressing);
    }
}
