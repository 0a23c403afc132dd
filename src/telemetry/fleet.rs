//! The fleet's gauges (Machines by phase, nodes and their hourly cost, allocatable and requested cpu and memory,
//! all by group), computed from the cached objects on every provisioner pass, so the dashboards read what the
//! cluster is rather than what berth remembers doing.

use super::metrics::Metrics;
use crate::model::instance_type::labels;
use crate::model::resources::Resources;
use crate::state::cluster::ClusterObjects;
use std::collections::{BTreeMap, HashMap};

/// The figures of one group (a MachineDeployment; nodes without one count under "none").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupFigures {
    pub machines_by_phase: BTreeMap<&'static str, i64>,
    /// By capacity type.
    pub nodes: BTreeMap<&'static str, i64>,
    pub hourly_cost: BTreeMap<&'static str, f64>,
    pub allocatable: Resources,
    pub requested: Resources,
}

/// Every group's figures.
pub fn fleet_figures(objects: &ClusterObjects) -> BTreeMap<String, GroupFigures> {
    // Every autoscaled group has figures, zero when it has no machines: a dashboard shows 0, not "no data".
    let mut out: BTreeMap<String, GroupFigures> = objects
        .machine_deployments
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .map(|n| (n, GroupFigures::default()))
        .collect();
    let mut price_by_provider: HashMap<&str, f64> = HashMap::new();
    for m in &objects.machines {
        let group = m
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::MACHINE_DEPLOYMENT))
            .cloned()
            .unwrap_or_else(|| "none".into());
        let status = m.status.as_ref();
        let phase = status.map(|s| phase_name(s.phase)).unwrap_or("Pending");
        *out.entry(group)
            .or_default()
            .machines_by_phase
            .entry(phase)
            .or_default() += 1;
        if let (Some(provider), Some(price)) = (
            status.and_then(|s| s.provider_id.as_deref()),
            status.and_then(|s| s.price.as_deref()),
        ) {
            if let Ok(p) = price.parse::<f64>() {
                price_by_provider.insert(provider, p);
            }
        }
    }
    let mut requested_by_node: HashMap<&str, Resources> = HashMap::new();
    for pod in &objects.pods {
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let Some(node) = spec.node_name.as_deref() else {
            continue;
        };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        if let Ok(r) =
            crate::model::pod::pod_requests(pod.metadata.name.as_deref().unwrap_or_default(), spec)
        {
            requested_by_node.entry(node).or_default().add(&r);
        }
    }
    for node in &objects.nodes {
        let Ok(view) = crate::model::node::Node::from_k8s(node) else {
            continue;
        };
        let group = view
            .labels
            .get(labels::MACHINE_DEPLOYMENT)
            .cloned()
            .unwrap_or_else(|| "none".into());
        let capacity = match view.labels.get(labels::CAPACITY_TYPE).map(String::as_str) {
            Some("spot") => "spot",
            Some("on-demand") => "on-demand",
            _ => "unknown",
        };
        let figures = out.entry(group).or_default();
        *figures.nodes.entry(capacity).or_default() += 1;
        if let Some(price) = view
            .provider_id
            .as_deref()
            .and_then(|p| price_by_provider.get(p))
        {
            *figures.hourly_cost.entry(capacity).or_default() += price;
        }
        figures.allocatable.add(&view.allocatable);
        if let Some(r) = requested_by_node.get(view.name.as_str()) {
            figures.requested.add(r);
        }
    }
    out
}

const PHASES: [&str; 6] = [
    "Pending",
    "Provisioning",
    "Provisioned",
    "Running",
    "Deleting",
    "Failed",
];

fn phase_name(phase: crate::api::MachinePhase) -> &'static str {
    use crate::api::MachinePhase::*;
    match phase {
        Pending => "Pending",
        Provisioning => "Provisioning",
        Provisioned => "Provisioned",
        Running => "Running",
        Deleting => "Deleting",
        Failed => "Failed",
    }
}

/// Sets the gauges to `figures`, dropping the series of groups that went away.
pub fn record(metrics: &Metrics, figures: &BTreeMap<String, GroupFigures>) {
    metrics.machines.reset();
    metrics.nodes.reset();
    metrics.nodes_hourly_cost_dollars.reset();
    for (group, f) in figures {
        // The group's latency histograms exist from the start at zero, so the first burst's observations are an
        // increase Prometheus can rate, not a series that appears already counted.
        for histogram in [
            &metrics.pod_pending_to_launch_seconds,
            &metrics.pod_pending_to_node_ready_seconds,
            &metrics.pod_pending_to_scheduled_seconds,
        ] {
            histogram.with_label_values(&[group.as_str()]);
        }
        // Every phase and the two capacity types are written, zeros included, so a series does not vanish when
        // its count reaches zero.
        for phase in PHASES
            .iter()
            .copied()
            .chain(f.machines_by_phase.keys().copied())
        {
            metrics
                .machines
                .with_label_values(&[group.as_str(), phase])
                .set(f.machines_by_phase.get(phase).copied().unwrap_or(0));
        }
        for capacity in ["spot", "on-demand"]
            .into_iter()
            .chain(f.nodes.keys().copied())
        {
            metrics
                .nodes
                .with_label_values(&[group.as_str(), capacity])
                .set(f.nodes.get(capacity).copied().unwrap_or(0));
            metrics
                .nodes_hourly_cost_dollars
                .with_label_values(&[group.as_str(), capacity])
                .set(f.hourly_cost.get(capacity).copied().unwrap_or(0.0));
        }
        metrics
            .allocatable_cpu_cores
            .with_label_values(&[group])
            .set(f.allocatable.cpu_millis as f64 / 1000.0);
        metrics
            .requested_cpu_cores
            .with_label_values(&[group])
            .set(f.requested.cpu_millis as f64 / 1000.0);
        metrics
            .allocatable_memory_bytes
            .with_label_values(&[group])
            .set(f.allocatable.memory_bytes as f64);
        metrics
            .requested_memory_bytes
            .with_label_values(&[group])
            .set(f.requested.memory_bytes as f64);
    }
}
