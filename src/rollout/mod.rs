//! Pure MachineDeployment rollout planning and MachineSet deletion order.
//!
//! The MachineDeployment controller observes its MachineSets, builds a [`DeploymentView`], and asks [`plan`] what
//! each set's replicas should be now. The answer ([`ScaleIntents`]) carries notes that say why, which become
//! Events and log fields. The semantics are Cluster API's (which are Deployment's):
//!
//! - RollingUpdate: the new set grows while the total stays within `replicas + maxSurge`; old sets shrink while
//!   the available count stays at or above `replicas - maxUnavailable`. Percentages resolve against replicas,
//!   surge rounding up and unavailability rounding down; if both resolve to zero, one may be unavailable.
//! - OnDelete: the new set only takes the places that old Machines leave when someone deletes them.
//! - Paused: scaling still follows replicas (proportionally across sets), but no rollout step is taken.

mod deletion;
mod machine_set;
mod strategy;

pub use deletion::{machines_to_delete, DeleteOrder, DeletionCandidate};
pub use machine_set::{plan_machine_set, OwnedMachine, QueuedShape, SetCounts, SetPlan};
pub use strategy::{
    plan, resolve_fenceposts, DeploymentView, IntOrPercent, Progress, RolloutError, ScaleIntent,
    ScaleIntents, SetView, Strategy,
};
