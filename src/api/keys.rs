//! The annotations, labels and finalizer berth writes on objects: names every layer reads (the controllers write
//! them, `state` reads them into the planners' input).

/// On MachineSets and Machines: the MachineDeployment they belong to.
pub const MACHINE_DEPLOYMENT: &str = crate::model::instance_type::labels::MACHINE_DEPLOYMENT;
/// On MachineSets and Machines: the hash of the template revision they were made from.
pub const TEMPLATE_HASH: &str = "berth.dev/template-hash";
/// On MachineSets: the revision number of their template.
pub const REVISION: &str = "berth.dev/revision";
/// On MachineDeployments and MachineSets: queued launch shapes (JSON), written by the autoscaler.
pub const LAUNCH_SHAPES: &str = crate::api::launch_shapes::LAUNCH_SHAPES_ANNOTATION;
/// On Machines: the id of the launch shape the Machine was created for.
pub const SHAPE_ID: &str = "berth.dev/shape-id";
/// On MachineDeployments: when the provisioner last raised replicas (RFC 3339); scale-down waits after it.
pub const LAST_SCALE_UP: &str = "berth.dev/last-scale-up";
/// On MachineSets: "false" when Machines that go are not to be replaced (an old revision under OnDelete, whose
/// places the current revision takes). Set and cleared by the MachineDeployment controller.
pub const REPLACE_MACHINES: &str = "berth.dev/replace-machines";
/// berth's finalizer on Machines: the instance is terminated before the Machine goes.
pub const MACHINE_FINALIZER: &str = "berth.dev/machine";
/// On Machines being consolidated or moved off at risk: JSON with the launch-shape id of the Machine that
/// replaces them; they are removed once that Machine's Node is Ready.
pub const REPLACED_BY: &str = "berth.dev/replaced-by";
/// On Machines berth chose to remove, and on the Nodes of Auto Scaling groups it is draining: the disruption
/// reason (empty, underutilized, consolidation_...).
pub const DISRUPTION_REASON: &str = "berth.dev/disruption-reason";
/// On Machines the health check remediates: "<Reason>: <message>", written before the Machine is deleted. The
/// Machine controller, the only writer of a Machine's status, turns it into `HealthCheckSucceeded=False` and
/// drains with the health check's drain timeout.
pub const REMEDIATION: &str = "berth.dev/remediation";
/// On Machines EC2 is reclaiming: see [`crate::api::INTERRUPTION_ANNOTATION`]. The Machine controller turns it
/// into the `Interrupted` condition.
pub const INTERRUPTION: &str = crate::api::INTERRUPTION_ANNOTATION;
/// On Machines EC2 is reclaiming: when (RFC 3339). The Machine controller keeps the cordoned node's pods running
/// until their new capacity is Ready, and evicts them a margin before this at the latest.
pub const INTERRUPTION_DEADLINE: &str = "berth.dev/interruption-deadline";
/// On MachineDeployments: the uids (comma-separated, the last 50) of interrupted Machines the group's replicas
/// were lowered for, written with the decrement, so a retried interruption never lowers them twice.
pub const SHRUNK_FOR_INTERRUPTIONS: &str = "berth.dev/shrunk-for-interruptions";
/// On Machines EC2 recommends moving (a rebalance recommendation on a `Replace` class) or will retire or
/// maintain (an AWS Health scheduled change): JSON `{reason, detail, deadline, since}`. The disruption
/// controller replaces them first and drains them after, within the group's budget.
pub const AT_RISK: &str = "berth.dev/at-risk";
/// On Machines whose instance EC2 says is stopping, stopped, shutting down or terminated: "<time>: <state>".
/// The Machine controller looks at the instance afresh when it sees a notice newer than its last look.
pub const INSTANCE_STATE_NOTICE: &str = "berth.dev/instance-state-notice";
/// On the Nodes of Auto Scaling groups berth is draining: when it cordoned them (RFC 3339).
pub const DRAIN_STARTED: &str = "berth.dev/drain-started";
