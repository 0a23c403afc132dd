//! Pure Machine lifecycle decisions: given what a Machine says, what the cloud and the cluster show, and the time,
//! the next step.
//!
//! The Machine controller observes (the Machine, its instance found by the Machine's uid tag, its Node found by
//! providerID, the pods left on that Node), calls [`next_step`], carries the step out, and writes status once. Every
//! step is idempotent and derived from observation, never from memory, so a controller restarted at any point
//! resumes where the world is:
//!
//! - an instance launched but not yet recorded (crash between the launch call and the status write) is found by
//!   its tag and adopted, never launched twice (the launch's client token makes even a blind retry safe);
//! - termination is requested only while the instance still runs, and the finalizer is removed only once the
//!   instance is gone and the Node deleted, so no instance is leaked and none is terminated twice.
//!
//! Phases: Pending → Provisioning (launch requested) → Provisioned (instance running) → Running (Node Ready, and
//! its startup taints removed when the class tells berth to remove them) → Deleting; Failed when the Node never
//! registers within the nodeStartupTimeout or the instance vanished.
//!
//! A Machine that has been Running is never failed here for what its Node shows: a Node that turns NotReady or
//! Unknown, or disappears, may be a dead machine or a control plane that stopped hearing a healthy one. That
//! judgement needs the whole group and the whole cluster, so it belongs to the health check (`crate::health`),
//! which remediates within its guards; this planner only reports [`Step::NodeUnhealthy`].

use chrono::{DateTime, Duration, Utc};

/// The instance as the cloud reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    Pending,
    Running,
    /// Shutting down or terminated; stopped instances count here too (berth never stops instances, so a stopped
    /// one was stopped behind its back and will not serve pods).
    Gone,
}

/// The Node as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    /// Pods a drain must still evict (not DaemonSet pods, not mirror pods, not already terminating).
    pub pods_to_evict: usize,
    /// How many of the Machine's startupTaints the Node still carries.
    pub startup_taints_left: usize,
}

/// What the Machine says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineObservation {
    pub created: DateTime<Utc>,
    /// metadata.deletionTimestamp.
    pub deleting_since: Option<DateTime<Utc>>,
    pub has_finalizer: bool,
    /// status.instanceID.
    pub recorded_instance: Option<String>,
    /// status.launchTime (when the launch call succeeded).
    pub launched_at: Option<DateTime<Utc>>,
    /// status.nodeRef.name.
    pub recorded_node: Option<String>,
    /// Already Failed (terminal until deleted).
    pub failed: bool,
    /// When the drain began (the Drained condition's first transition), if it has.
    pub drain_started: Option<DateTime<Utc>>,
    /// Termination was requested (the InstanceTerminated condition is set): the instance is shutting down.
    pub termination_requested: bool,
    /// The Machine has been Running (its Node was Ready once): the startup timeout no longer applies.
    pub was_running: bool,
    /// EC2 reclaims the instance (a spot interruption warning) at a known time.
    pub reclaim: Option<Reclaim>,
}

/// A spot instance EC2 reclaims at `deadline`. Its pods' capacity is launched at the warning; until it is Ready
/// they are better off running where they are than pending, so evictions wait for it, but never past
/// `deadline - RECLAIM_DRAIN_MARGIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reclaim {
    pub deadline: DateTime<Utc>,
    /// A node that registered after the warning is Ready and schedulable: the new capacity has arrived.
    pub capacity_ready: bool,
}

/// What is left of EC2's two minutes for the drain when the replacement is late: the pods' termination grace
/// (30 s by default) and evictions PodDisruptionBudgets pace, with room to spare.
pub const RECLAIM_DRAIN_MARGIN: Duration = Duration::seconds(60);

/// How long after its launch a recorded instance that DescribeInstances does not find is taken to be still
/// invisible rather than gone. EC2's API is eventually consistent: a new instance can be missing from
/// DescribeInstances (InvalidInstanceID.NotFound by id) for seconds and, rarely, much longer; failing the Machine or
/// releasing it then would launch a second instance or leak the first. A terminated instance is not missing (EC2
/// shows it as terminated for about an hour), so an instance still absent after this is gone.
pub const INSTANCE_VISIBILITY_GRACE: Duration = Duration::minutes(5);

/// The class's timeouts and duties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecyclePolicy {
    pub node_startup_timeout: Duration,
    pub drain_timeout: Option<Duration>,
    pub terminate_after_drain_timeout: bool,
    /// berth, not a node agent, removes the startup taints once the Node is Ready.
    pub remove_startup_taints: bool,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        LifecyclePolicy {
            node_startup_timeout: Duration::minutes(15),
            drain_timeout: None,
            terminate_after_drain_timeout: false,
            remove_startup_taints: false,
        }
    }
}

/// Everything [`next_step`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub machine: MachineObservation,
    /// The instance with the recorded id or, when none is recorded, the one tagged with this Machine's uid.
    pub instance: Option<(String, InstanceStatus)>,
    pub node: Option<NodeObservation>,
    pub policy: LifecyclePolicy,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put berth's finalizer on the Machine before anything can be launched for it.
    AddFinalizer,
    /// Call the cloud's launch (idempotent by client token).
    Launch,
    /// An instance exists for this Machine that status does not record: record it (restart recovery).
    AdoptInstance { instance_id: String },
    /// The instance is starting; look again later.
    WaitForInstance,
    /// The instance runs; wait for its Node (phase Provisioned).
    WaitForNode,
    /// Record the Node and copy labels and taints onto it.
    LinkNode { node: String },
    /// The Node is Ready but still carries startup taints berth is to remove: remove them (then Running).
    RemoveStartupTaints { node: String },
    /// The Node is Ready (phase Running). Nothing to do until something changes.
    Running,
    /// The Machine was Running and its Node is now not Ready, or gone: report it (the Ready condition) and leave
    /// the verdict to the health check.
    NodeUnhealthy {
        reason: &'static str,
        message: String,
    },
    /// The Machine cannot become Running; its MachineSet replaces it.
    Fail {
        reason: &'static str,
        message: String,
    },
    /// Stay Failed until deleted.
    StayFailed,
    /// Deleting: mark the Node unschedulable.
    Cordon { node: String },
    /// Deleting a Machine EC2 reclaims, cordoned: its pods keep running until their new capacity is Ready or
    /// `until` (the reclaim less the drain margin), whichever comes first.
    HoldForReplacement { node: String, until: DateTime<Utc> },
    /// Deleting: evict the Node's pods through the eviction API (PDBs respected; retried).
    Drain { node: String, remaining: usize },
    /// Deleting: terminate the instance.
    Terminate { instance_id: String },
    /// Deleting: the instance is shutting down; look again later.
    WaitForTermination,
    /// Deleting: the instance is gone; delete the Node object.
    DeleteNode { node: String },
    /// Deleting: all done; remove the finalizer so the Machine goes.
    RemoveFinalizer,
    /// Deleting without a finalizer: nothing of ours to clean up.
    Nothing,
}

/// Decides the next step.
pub fn next_step(o: &Observation, now: DateTime<Utc>) -> Step {
    if o.machine.deleting_since.is_some() {
        return deletion_step(o, now);
    }
    if !o.machine.has_finalizer {
        return Step::AddFinalizer;
    }
    if o.machine.failed {
        return Step::StayFailed;
    }
    match (&o.instance, &o.machine.recorded_instance) {
        // Nothing launched yet (or the launch never reached the cloud): launch.
        (None, None) => Step::Launch,
        (None, Some(_)) if recently_launched(o, now) => Step::WaitForInstance,
        // Recorded, but the cloud no longer has it: terminated behind our back.
        (None, Some(id)) | (Some((id, InstanceStatus::Gone)), Some(_)) => Step::Fail {
            reason: "InstanceTerminated",
            message: format!("instance {id} was terminated outside berth"),
        },
        (Some((id, _)), None) => Step::AdoptInstance {
            instance_id: id.clone(),
        },
        (Some((_, InstanceStatus::Pending)), Some(_)) => Step::WaitForInstance,
        (Some((_, InstanceStatus::Running)), Some(_)) => match &o.node {
            Some(node) if o.machine.recorded_node.as_deref() != Some(node.name.as_str()) => {
                Step::LinkNode {
                    node: node.name.clone(),
                }
            }
            Some(node)
                if node.ready && o.policy.remove_startup_taints && node.startup_taints_left > 0 =>
            {
                Step::RemoveStartupTaints {
                    node: node.name.clone(),
                }
            }
            Some(node) if node.ready => Step::Running,
            Some(node) if o.machine.was_running => Step::NodeUnhealthy {
                reason: "NodeNotReady",
                message: format!("Node {} is not Ready", node.name),
            },
            None if o.machine.was_running => Step::NodeUnhealthy {
                reason: "NodeNotFound",
                message: match &o.machine.recorded_node {
                    Some(name) => format!("Node {name} is gone"),
                    None => "the Machine's Node is gone".into(),
                },
            },
            _ => {
                let since = o.machine.launched_at.unwrap_or(o.machine.created);
                if now - since > o.policy.node_startup_timeout {
                    Step::Fail {
                        reason: "NodeStartupTimeout",
                        message: format!(
                            "no Ready Node registered within {}s of the launch",
                            o.policy.node_startup_timeout.num_seconds()
                        ),
                    }
                } else {
                    Step::WaitForNode
                }
            }
        },
    }
}

/// The Machine's recorded instance was launched within [`INSTANCE_VISIBILITY_GRACE`].
fn recently_launched(o: &Observation, now: DateTime<Utc>) -> bool {
    o.machine.recorded_instance.is_some()
        && now - o.machine.launched_at.unwrap_or(o.machine.created) < INSTANCE_VISIBILITY_GRACE
}

fn deletion_step(o: &Observation, now: DateTime<Utc>) -> Step {
    if !o.machine.has_finalizer {
        return Step::Nothing;
    }
    // A recorded instance not yet visible may well be running: releasing the Machine now would leak it. (Once
    // berth has asked for its termination, its absence from the live instances is that termination.)
    if o.instance.is_none() && !o.machine.termination_requested && recently_launched(o, now) {
        return Step::WaitForInstance;
    }
    let instance_alive = matches!(
        o.instance,
        Some((_, InstanceStatus::Pending | InstanceStatus::Running))
    );
    // Drain only while the instance serves: once it is gone its pods are gone too.
    if let (Some(node), true) = (&o.node, instance_alive) {
        if !o.machine.termination_requested {
            if !node.unschedulable {
                return Step::Cordon {
                    node: node.name.clone(),
                };
            }
            if let (Some(r), true) = (o.machine.reclaim, node.pods_to_evict > 0) {
                let until = r.deadline - RECLAIM_DRAIN_MARGIN;
                if !r.capacity_ready && now < until {
                    return Step::HoldForReplacement {
                        node: node.name.clone(),
                        until,
                    };
                }
            }
            if node.pods_to_evict > 0 {
                let timed_out = match (o.policy.drain_timeout, o.machine.drain_started) {
                    (Some(limit), Some(started)) => now - started > limit,
                    _ => false,
                };
                if !(timed_out && o.policy.terminate_after_drain_timeout) {
                    return Step::Drain {
                        node: node.name.clone(),
                        remaining: node.pods_to_evict,
                    };
                }
            }
        }
    }
    match &o.instance {
        Some((id, InstanceStatus::Pending | InstanceStatus::Running))
            if !o.machine.termination_requested =>
        {
            Step::Terminate {
                instance_id: id.clone(),
            }
        }
        Some((_, InstanceStatus::Pending | InstanceStatus::Running)) => Step::WaitForTermination,
        _ => match &o.node {
            Some(node) => Step::DeleteNode {
                node: node.name.clone(),
            },
            None => Step::RemoveFinalizer,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn fresh() -> Observation {
        Observation {
            machine: MachineObservation {
                created: t(0),
                deleting_since: None,
                has_finalizer: true,
                recorded_instance: None,
                launched_at: None,
                recorded_node: None,
                failed: false,
                drain_started: None,
                termination_requested: false,
                was_running: false,
                reclaim: None,
            },
            instance: None,
            node: None,
            policy: LifecyclePolicy::default(),
        }
    }

    fn node(ready: bool, unschedulable: bool, pods: usize) -> Option<NodeObservation> {
        Some(NodeObservation {
            name: "ip-10-0-0-1".into(),
            ready,
            unschedulable,
            pods_to_evict: pods,
            startup_taints_left: 0,
        })
    }

    #[test]
    fn the_happy_path() {
        let mut o = fresh();
        o.machine.has_finalizer = false;
        assert_eq!(next_step(&o, t(1)), Step::AddFinalizer);
        o.machine.has_finalizer = true;
        assert_eq!(next_step(&o, t(1)), Step::Launch);
        o.instance = Some(("i-1".into(), InstanceStatus::Pending));
        o.machine.recorded_instance = Some("i-1".into());
        o.machine.launched_at = Some(t(2));
        assert_eq!(next_step(&o, t(3)), Step::WaitForInstance);
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        assert_eq!(next_step(&o, t(30)), Step::WaitForNode);
        o.node = node(false, false, 0);
        assert_eq!(
            next_step(&o, t(60)),
            Step::LinkNode {
                node: "ip-10-0-0-1".into()
            }
        );
        o.machine.recorded_node = Some("ip-10-0-0-1".into());
        assert_eq!(next_step(&o, t(61)), Step::WaitForNode);
        o.node = node(true, false, 0);
        assert_eq!(next_step(&o, t(62)), Step::Running);
    }

    #[test]
    fn startup_taints_are_removed_once_ready_only_when_berth_is_told_to() {
        let mut o = fresh();
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.machine.recorded_instance = Some("i-1".into());
        o.machine.recorded_node = Some("ip-10-0-0-1".into());
        o.node = node(false, false, 0);
        o.node.as_mut().unwrap().startup_taints_left = 1;
        o.policy.remove_startup_taints = true;
        assert_eq!(
            next_step(&o, t(10)),
            Step::WaitForNode,
            "not before the Node is Ready"
        );
        o.node.as_mut().unwrap().ready = true;
        assert_eq!(
            next_step(&o, t(11)),
            Step::RemoveStartupTaints {
                node: "ip-10-0-0-1".into()
            }
        );
        o.node.as_mut().unwrap().startup_taints_left = 0;
        assert_eq!(next_step(&o, t(12)), Step::Running);
        o.node.as_mut().unwrap().startup_taints_left = 1;
        o.policy.remove_startup_taints = false;
        assert_eq!(
            next_step(&o, t(13)),
            Step::Running,
            "a node agent's job: berth leaves them"
        );
    }

    #[test]
    fn a_restart_after_launch_adopts_instead_of_launching_again() {
        let mut o = fresh();
        o.instance = Some(("i-9".into(), InstanceStatus::Pending));
        assert_eq!(
            next_step(&o, t(5)),
            Step::AdoptInstance {
                instance_id: "i-9".into()
            }
        );
    }

    #[test]
    fn node_that_never_registers_fails_after_the_timeout() {
        let mut o = fresh();
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.machine.recorded_instance = Some("i-1".into());
        o.machine.launched_at = Some(t(0));
        assert_eq!(next_step(&o, t(15 * 60)), Step::WaitForNode);
        assert!(matches!(
            next_step(&o, t(15 * 60 + 1)),
            Step::Fail {
                reason: "NodeStartupTimeout",
                ..
            }
        ));
        o.machine.failed = true;
        assert_eq!(next_step(&o, t(20 * 60)), Step::StayFailed);
    }

    #[test]
    fn a_running_machine_whose_node_turns_not_ready_or_vanishes_is_never_failed_here() {
        let mut o = fresh();
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.machine.recorded_instance = Some("i-1".into());
        o.machine.recorded_node = Some("ip-10-0-0-1".into());
        o.machine.launched_at = Some(t(0));
        o.machine.was_running = true;
        o.node = node(false, false, 0);
        // Hours past the startup timeout: the health check, not the lifecycle, decides.
        assert!(matches!(
            next_step(&o, t(5 * 3600)),
            Step::NodeUnhealthy {
                reason: "NodeNotReady",
                ..
            }
        ));
        o.node = None;
        assert!(matches!(
            next_step(&o, t(5 * 3600)),
            Step::NodeUnhealthy {
                reason: "NodeNotFound",
                ..
            }
        ));
        o.node = node(true, false, 0);
        assert_eq!(next_step(&o, t(5 * 3600)), Step::Running);
    }

    #[test]
    fn instance_terminated_behind_our_back_fails_the_machine() {
        let mut o = fresh();
        o.machine.recorded_instance = Some("i-1".into());
        o.machine.launched_at = Some(t(0));
        // Missing just after its launch: EC2's eventual consistency, not a termination.
        assert_eq!(next_step(&o, t(5)), Step::WaitForInstance);
        let later = t(INSTANCE_VISIBILITY_GRACE.num_seconds() + 1);
        assert!(matches!(
            next_step(&o, later),
            Step::Fail {
                reason: "InstanceTerminated",
                ..
            }
        ));
        o.instance = Some(("i-1".into(), InstanceStatus::Gone));
        assert!(matches!(
            next_step(&o, t(5)),
            Step::Fail {
                reason: "InstanceTerminated",
                ..
            }
        ));
    }

    #[test]
    fn a_machine_deleted_before_its_new_instance_shows_waits_for_it_instead_of_leaking_it() {
        let mut o = fresh();
        o.machine.deleting_since = Some(t(20));
        o.machine.recorded_instance = Some("i-1".into());
        o.machine.launched_at = Some(t(10));
        assert_eq!(next_step(&o, t(30)), Step::WaitForInstance);
        o.instance = Some(("i-1".into(), InstanceStatus::Pending));
        assert_eq!(
            next_step(&o, t(40)),
            Step::Terminate {
                instance_id: "i-1".into()
            }
        );
        // Still missing long after: it is gone; the Machine is released.
        o.instance = None;
        assert_eq!(next_step(&o, t(10 + 301)), Step::RemoveFinalizer);
    }

    #[test]
    fn deletion_cordons_drains_terminates_deletes_node_then_releases() {
        let mut o = fresh();
        o.machine.deleting_since = Some(t(100));
        o.machine.recorded_instance = Some("i-1".into());
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.node = node(true, false, 3);
        assert_eq!(
            next_step(&o, t(101)),
            Step::Cordon {
                node: "ip-10-0-0-1".into()
            }
        );
        o.node = node(true, true, 3);
        assert_eq!(
            next_step(&o, t(102)),
            Step::Drain {
                node: "ip-10-0-0-1".into(),
                remaining: 3
            }
        );
        o.node = node(true, true, 0);
        assert_eq!(
            next_step(&o, t(103)),
            Step::Terminate {
                instance_id: "i-1".into()
            }
        );
        o.machine.termination_requested = true;
        assert_eq!(next_step(&o, t(104)), Step::WaitForTermination);
        o.instance = Some(("i-1".into(), InstanceStatus::Gone));
        assert_eq!(
            next_step(&o, t(130)),
            Step::DeleteNode {
                node: "ip-10-0-0-1".into()
            }
        );
        o.node = None;
        assert_eq!(next_step(&o, t(131)), Step::RemoveFinalizer);
        o.machine.has_finalizer = false;
        assert_eq!(next_step(&o, t(132)), Step::Nothing);
    }

    #[test]
    fn drain_timeout_terminates_only_when_the_class_says_so() {
        let mut o = fresh();
        o.machine.deleting_since = Some(t(0));
        o.machine.drain_started = Some(t(0));
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.node = node(true, true, 2);
        o.policy.drain_timeout = Some(Duration::minutes(5));
        assert!(
            matches!(next_step(&o, t(600)), Step::Drain { .. }),
            "without terminateAfterDrainTimeout, keep draining"
        );
        o.policy.terminate_after_drain_timeout = true;
        assert_eq!(
            next_step(&o, t(299)),
            Step::Drain {
                node: "ip-10-0-0-1".into(),
                remaining: 2
            }
        );
        assert_eq!(
            next_step(&o, t(301)),
            Step::Terminate {
                instance_id: "i-1".into()
            }
        );
    }

    #[test]
    fn deleting_a_machine_that_never_launched_releases_at_once() {
        let mut o = fresh();
        o.machine.deleting_since = Some(t(0));
        assert_eq!(next_step(&o, t(1)), Step::RemoveFinalizer);
    }

    #[test]
    fn a_restart_mid_termination_does_not_terminate_twice() {
        let mut o = fresh();
        o.machine.deleting_since = Some(t(0));
        o.machine.termination_requested = true;
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.node = node(true, true, 0);
        assert_eq!(next_step(&o, t(5)), Step::WaitForTermination);
    }

    #[test]
    fn a_reclaimed_node_keeps_its_pods_until_their_capacity_is_ready_or_the_margin() {
        let mut o = fresh();
        o.machine.deleting_since = Some(t(0));
        o.machine.recorded_instance = Some("i-1".into());
        o.instance = Some(("i-1".into(), InstanceStatus::Running));
        o.node = node(true, true, 4);
        let deadline = t(120);
        o.machine.reclaim = Some(Reclaim {
            deadline,
            capacity_ready: false,
        });
        assert_eq!(
            next_step(&o, t(10)),
            Step::HoldForReplacement {
                node: "ip-10-0-0-1".into(),
                until: deadline - RECLAIM_DRAIN_MARGIN,
            }
        );
        // Not cordoned yet: cordon first, whatever the reclaim.
        let mut uncordoned = o.clone();
        uncordoned.node = node(true, false, 4);
        assert!(matches!(next_step(&uncordoned, t(10)), Step::Cordon { .. }));
        // The margin reached: drain, capacity or not.
        assert!(matches!(
            next_step(&o, t(60)),
            Step::Drain { remaining: 4, .. }
        ));
        // The capacity Ready: drain now.
        o.machine.reclaim = Some(Reclaim {
            deadline,
            capacity_ready: true,
        });
        assert!(matches!(next_step(&o, t(10)), Step::Drain { .. }));
        // Nothing left to evict: terminate.
        o.node = node(true, true, 0);
        o.machine.reclaim = Some(Reclaim {
            deadline,
            capacity_ready: false,
        });
        assert!(matches!(next_step(&o, t(10)), Step::Terminate { .. }));
    }
}
