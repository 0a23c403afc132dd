//! berth's Prometheus metrics, in one explicit registry.
//!
//! Names follow Prometheus conventions (`berth_` prefix, base units in the name, `_total` for counters) and every
//! label has a bounded set of values: groups (MachineDeployments), instance types of the catalog, zones, capacity
//! types, controllers, reasons and phases; never pod or machine names. Controllers receive a `Metrics` handle and
//! record into it; the metrics server encodes the registry.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("cannot encode metrics: {0}")]
    Encode(String),
}

impl MetricsError {
    pub fn category(&self) -> &'static str {
        match self {
            MetricsError::Register(_) => "register",
            MetricsError::Encode(_) => "encode",
        }
    }
}

/// Every metric berth exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Every family name registered, including vectors that have no series yet (which `gather` leaves out).
    names: Vec<String>,
    pub build_info: IntGaugeVec,
    pub leader: IntGauge,
    pub pods_pending: IntGauge,
    pub pods_unschedulable: IntGauge,
    pub scale_up_decisions: IntCounterVec,
    pub machines_launched: IntCounterVec,
    pub launch_failures: IntCounterVec,
    pub pod_pending_to_launch_seconds: HistogramVec,
    pub pod_pending_to_node_ready_seconds: HistogramVec,
    pub pod_pending_to_scheduled_seconds: HistogramVec,
    pub machines: IntGaugeVec,
    pub nodes: IntGaugeVec,
    pub nodes_hourly_cost_dollars: GaugeVec,
    pub allocatable_cpu_cores: GaugeVec,
    pub requested_cpu_cores: GaugeVec,
    pub allocatable_memory_bytes: GaugeVec,
    pub requested_memory_bytes: GaugeVec,
    pub disruption_decisions: IntCounterVec,
    pub nodes_disrupted: IntCounterVec,
    pub machines_unhealthy: IntGaugeVec,
    pub remediations: IntCounterVec,
    pub remediations_held: IntCounterVec,
    pub garbage_collected: IntCounterVec,
    pub interruptions: IntCounterVec,
    pub interruption_messages: IntCounterVec,
    pub deployment_replicas: IntGaugeVec,
    pub rollout_progress_ratio: GaugeVec,
    pub drain_duration_seconds: HistogramVec,
    pub reconcile_duration_seconds: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub solve_duration_seconds: HistogramVec,
    pub solve_pods: HistogramVec,
}

impl Metrics {
    /// Creates every metric in a fresh registry.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let mut names = Vec::new();
        let latency = || exponential_buckets(0.05, 2.0, 16).expect("static buckets are valid"); // 50ms .. ~27min
        let fast = || exponential_buckets(0.0005, 2.0, 16).expect("static buckets are valid"); // 0.5ms .. ~16s
        macro_rules! reg {
            ($metric:expr) => {{
                let m = $metric;
                names.extend(
                    prometheus::core::Collector::desc(&m)
                        .iter()
                        .map(|d| d.fq_name.clone()),
                );
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let m = Metrics {
            build_info: reg!(IntGaugeVec::new(Opts::new("berth_build_info", "Always 1; labels carry the version."), &["version"])?),
            leader: reg!(IntGauge::new("berth_leader", "1 while this replica holds the leader Lease, else 0.")?),
            pods_pending: reg!(IntGauge::new("berth_pods_pending", "Pods in phase Pending.")?),
            pods_unschedulable: reg!(IntGauge::new("berth_pods_unschedulable", "Pods the scheduler marked Unschedulable and berth may help.")?),
            scale_up_decisions: reg!(IntCounterVec::new(Opts::new("berth_scale_up_decisions_total", "Scale-up decisions, by group."), &["group"])?),
            machines_launched: reg!(IntCounterVec::new(
                Opts::new("berth_machines_launched_total", "Instances launched, by group, instance type, zone and capacity type."),
                &["group", "instance_type", "zone", "capacity_type"]
            )?),
            launch_failures: reg!(IntCounterVec::new(Opts::new("berth_launch_failures_total", "Failed launches, by group and reason."), &["group", "reason"])?),
            pod_pending_to_launch_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("berth_pod_pending_to_launch_seconds", "Time from a pod becoming unschedulable to the launch call for its node.").buckets(latency()),
                &["group"]
            )?),
            pod_pending_to_node_ready_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("berth_pod_pending_to_node_ready_seconds", "Time from a pod becoming unschedulable to its new node being Ready.").buckets(latency()),
                &["group"]
            )?),
            pod_pending_to_scheduled_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("berth_pod_pending_to_scheduled_seconds", "Time from a pod becoming unschedulable to it being scheduled.").buckets(latency()),
                &["group"]
            )?),
            machines: reg!(IntGaugeVec::new(Opts::new("berth_machines", "Machines, by group and phase."), &["group", "phase"])?),
            nodes: reg!(IntGaugeVec::new(Opts::new("berth_nodes", "Nodes berth manages, by group and capacity type."), &["group", "capacity_type"])?),
            nodes_hourly_cost_dollars: reg!(GaugeVec::new(
                Opts::new("berth_nodes_hourly_cost_dollars", "Summed hourly price of berth's nodes in USD, by group and capacity type."),
                &["group", "capacity_type"]
            )?),
            allocatable_cpu_cores: reg!(GaugeVec::new(Opts::new("berth_allocatable_cpu_cores", "Allocatable cpu of berth's nodes, by group."), &["group"])?),
            requested_cpu_cores: reg!(GaugeVec::new(Opts::new("berth_requested_cpu_cores", "Cpu requested by pods on berth's nodes, by group."), &["group"])?),
            allocatable_memory_bytes: reg!(GaugeVec::new(Opts::new("berth_allocatable_memory_bytes", "Allocatable memory of berth's nodes, by group."), &["group"])?),
            requested_memory_bytes: reg!(GaugeVec::new(Opts::new("berth_requested_memory_bytes", "Memory requested by pods on berth's nodes, by group."), &["group"])?),
            disruption_decisions: reg!(IntCounterVec::new(
                Opts::new("berth_disruption_decisions_total", "Disruption decisions, by reason (empty, underutilized, consolidation_single, consolidation_multi, rebalance_recommended, scheduled_change)."),
                &["reason"]
            )?),
            nodes_disrupted: reg!(IntCounterVec::new(Opts::new("berth_nodes_disrupted_total", "Nodes removed or replaced, by group and reason."), &["group", "reason"])?),
            machines_unhealthy: reg!(IntGaugeVec::new(Opts::new("berth_machines_unhealthy", "Machines the group's health check finds unhealthy now (remediated or held), by group."), &["group"])?),
            remediations: reg!(IntCounterVec::new(Opts::new("berth_remediations_total", "Unhealthy Machines remediated (drained, terminated, replaced), by group and reason (UnhealthyNode, NodeNotFound)."), &["group", "reason"])?),
            remediations_held: reg!(IntCounterVec::new(Opts::new("berth_remediations_held_total", "Times a group's unhealthy Machines were held from remediation, by group and reason (TooManyUnhealthy, HeartbeatsStale, ClusterViewStale, InvalidHealthCheck)."), &["group", "reason"])?),
            interruptions: reg!(IntCounterVec::new(
                Opts::new("berth_interruptions_total", "Interruption notices acted on for berth's Machines, by kind (spot_interruption, rebalance_recommendation, scheduled_change, state_change)."),
                &["kind"]
            )?),
            interruption_messages: reg!(IntCounterVec::new(
                Opts::new("berth_interruption_messages_total", "Messages read from the interruption queue, by result (acted, ignored, not_ours, malformed, unknown_kind; awaiting_machine and failed are left for redelivery)."),
                &["result"]
            )?),
            garbage_collected: reg!(IntCounterVec::new(
                Opts::new("berth_garbage_collected_total", "Leftovers removed by the garbage collector, by kind (instance, node, launch_template)."),
                &["kind"]
            )?),
            deployment_replicas: reg!(IntGaugeVec::new(
                Opts::new("berth_machinedeployment_replicas", "MachineDeployment replicas by state (desired, current, updated, ready, available)."),
                &["namespace", "deployment", "state"]
            )?),
            rollout_progress_ratio: reg!(GaugeVec::new(
                Opts::new("berth_machinedeployment_rollout_progress_ratio", "Updated and available replicas over desired, 1 when a rollout is complete."),
                &["namespace", "deployment"]
            )?),
            drain_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("berth_drain_duration_seconds", "Time to drain a node before termination.").buckets(latency()),
                &["group"]
            )?),
            reconcile_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("berth_reconcile_duration_seconds", "Duration of one reconcile, by controller.").buckets(fast()),
                &["controller"]
            )?),
            reconcile_errors: reg!(IntCounterVec::new(
                Opts::new("berth_reconcile_errors_total", "Reconcile errors, by controller and error category."),
                &["controller", "category"]
            )?),
            solve_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("berth_solve_duration_seconds", "Duration of one scheduling solve.").buckets(fast()),
                &["kind"]
            )?),
            solve_pods: reg!(HistogramVec::new(
                HistogramOpts::new("berth_solve_pods", "Pending pods in one solve.").buckets(exponential_buckets(1.0, 2.0, 16).expect("static buckets are valid")),
                &["kind"]
            )?),
            registry: registry.clone(),
            names: Vec::new(),
        };
        let mut m = m;
        m.names = names;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // The reasons are a fixed set: each exists from the start at zero, so "no decision yet" reads as 0.
        for reason in crate::disruption::Reason::ALL {
            m.disruption_decisions.with_label_values(&[reason.as_str()]);
        }
        // And the garbage kinds, so a dashboard reads 0 rather than nothing before the first collection.
        for kind in ["instance", "node", "launch_template"] {
            m.garbage_collected.with_label_values(&[kind]);
        }
        // Likewise the solves, so the first solve is an increase a rate sees.
        m.solve_duration_seconds.with_label_values(&["scale_up"]);
        m.solve_pods.with_label_values(&["scale_up"]);
        Ok(m)
    }

    /// The names of every metric family berth's core exports.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format, as /metrics serves it.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| MetricsError::Encode(e.to_string()))?;
        String::from_utf8(buf).map_err(|e| MetricsError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_exported() {
        let m = Metrics::new().unwrap();
        m.launch_failures
            .with_label_values(&["general", "InsufficientCapacity"])
            .inc();
        let text = m.encode().unwrap();
        assert!(
            text.contains("berth_build_info{version=\"0.1.0\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "berth_launch_failures_total{group=\"general\",reason=\"InsufficientCapacity\"} 1"
        ));
        for family in m.registry.gather() {
            assert!(family.name().starts_with("berth_"), "{}", family.name());
        }
    }
}
