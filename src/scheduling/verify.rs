//! An independent checker of finished plans: rebuilds the cluster the plan describes (existing nodes, in-flight
//! machines, the new machines with their chosen types) and checks every placement against the predicates in
//! their final state. Deliberately simple and slow (pods × nodes): it is the oracle the property tests and
//! the benchmarks trust, so it shares no indexing with the solver.

use super::predicates::{
    host_ports_free, new_node_allocatable, new_node_labels, node_affinity_matches,
    taints_tolerated, volume_zone_ok,
};
use super::{in_flight_counts, Plan, Snapshot};
use crate::model::instance_type::{Catalog, Offering};
use crate::model::pod::{InclusionPolicy, Pod, WhenUnsatisfiable};
use crate::model::resources::Resources;
use crate::model::taints::Taint;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};

struct VNode<'a> {
    name: String,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    allocatable: Resources,
    pods: Vec<&'a Pod>,
    /// How many of `pods` were already running (not placed by the plan).
    existing: usize,
}

/// Every rule the plan breaks, as readable sentences (empty: the plan is feasible).
pub fn verify(
    snapshot: &Snapshot,
    catalog: &Catalog,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut errors = vec![];
    let pending: HashMap<String, &Pod> = snapshot.pending.iter().map(|p| (p.key(), p)).collect();
    let mut nodes: Vec<VNode> = vec![];
    let mut seen = HashSet::new();
    for n in &snapshot.nodes {
        nodes.push(VNode {
            name: n.node.name.clone(),
            labels: n.node.labels.clone(),
            taints: n.node.taints.clone(),
            allocatable: n.node.allocatable.clone(),
            pods: n.pods.iter().collect(),
            existing: n.pods.len(),
        });
    }
    let group = |name: &str| snapshot.groups.iter().find(|g| g.name == name);
    for m in snapshot
        .in_flight
        .iter()
        .filter(|m| in_flight_counts(m, now, snapshot.registration_timeout))
    {
        let (Some(g), Some(it)) = (group(&m.group), catalog.get(&m.instance_type)) else {
            continue;
        };
        let o = Offering {
            zone: m.zone.clone(),
            capacity_type: m.capacity_type,
            price: 0.0,
            available: true,
        };
        nodes.push(VNode {
            name: m.name.clone(),
            labels: new_node_labels(g, it, &o, &m.name),
            taints: g.taints.clone(),
            allocatable: new_node_allocatable(g, it),
            pods: m.pods.iter().collect(),
            existing: m.pods.len(),
        });
    }
    let mut take = |key: &str, errors: &mut Vec<String>| -> Option<&Pod> {
        if !seen.insert(key.to_string()) {
            errors.push(format!("pod {key} appears twice in the plan"));
            return None;
        }
        let p = pending.get(key).copied();
        if p.is_none() {
            errors.push(format!("pod {key} is not pending"));
        }
        p
    };
    for a in &plan.assignments {
        let Some(p) = take(&a.pod, &mut errors) else {
            continue;
        };
        match nodes.iter_mut().find(|n| n.name == a.node) {
            Some(n) => n.pods.push(p),
            None => errors.push(format!("pod {} assigned to unknown node {}", a.pod, a.node)),
        }
    }
    let mut launched: HashMap<&str, u32> = HashMap::new();
    for m in &plan.new_machines {
        let (Some(g), Some(it)) = (group(&m.group), catalog.get(&m.instance_type)) else {
            errors.push(format!(
                "machine {}: unknown group {} or instance type {}",
                m.name, m.group, m.instance_type
            ));
            continue;
        };
        *launched.entry(g.name.as_str()).or_default() += 1;
        if !g.instance_types.contains(&m.instance_type) {
            errors.push(format!(
                "machine {}: {} is not allowed in group {}",
                m.name, m.instance_type, g.name
            ));
        }
        let Some(o) = it
            .offerings
            .iter()
            .find(|o| o.zone == m.zone && o.capacity_type == m.capacity_type && o.available)
        else {
            errors.push(format!(
                "machine {}: {} has no available {} offering in {}",
                m.name, m.instance_type, m.capacity_type, m.zone
            ));
            continue;
        };
        if (o.price - m.price).abs() > 1e-9 {
            errors.push(format!(
                "machine {}: price {} is not the offering's {}",
                m.name, m.price, o.price
            ));
        }
        if !g
            .requirements
            .matches_labels(&new_node_labels(g, it, o, &m.name))
        {
            errors.push(format!(
                "machine {}: offering violates the group's requirements",
                m.name
            ));
        }
        let mut pods = vec![];
        for k in &m.pods {
            if let Some(p) = take(k, &mut errors) {
                pods.push(p);
            }
        }
        let mut sum = Resources::default();
        pods.iter().for_each(|p| sum.add(&p.spec.requests));
        for alt in &m.instance_types {
            if let Some(t) = catalog.get(alt) {
                if let Some(r) = sum.first_exceeding(&new_node_allocatable(g, t)) {
                    errors.push(format!("machine {}: alternative {alt} lacks {r}", m.name));
                }
            }
        }
        // Host ports of the daemons count as taken.
        let mut node = VNode {
            name: m.name.clone(),
            labels: new_node_labels(g, it, o, &m.name),
            taints: g.taints.clone(),
            allocatable: new_node_allocatable(g, it),
            pods: g
                .daemon_pods
                .iter()
                .filter(|d| !d.spec.host_ports.is_empty())
                .collect(),
            existing: 0,
        };
        node.existing = node.pods.len();
        // Daemon pods are already subtracted from allocatable: count them for ports only.
        node.pods.extend(pods);
        nodes.push(node);
    }
    for g in &snapshot.groups {
        let n = launched.get(g.name.as_str()).copied().unwrap_or(0);
        if g.current_replicas.saturating_add(n) > g.max_replicas {
            errors.push(format!(
                "group {}: {} + {n} machines exceed max replicas {}",
                g.name, g.current_replicas, g.max_replicas
            ));
        }
    }
    if let Some(max) = snapshot.limits.max_nodes {
        let total = snapshot.nodes.len() as u64
            + snapshot.in_flight.len() as u64
            + plan.new_machines.len() as u64;
        if total > max {
            errors.push(format!("{total} nodes exceed the cluster limit {max}"));
        }
    }
    for p in &snapshot.pending {
        let k = p.key();
        if !seen.contains(&k) && !plan.unschedulable.iter().any(|u| u.pod == k) {
            errors.push(format!(
                "pod {k} is neither placed nor reported unschedulable"
            ));
        }
    }

    // Per-node checks.
    let ns_labels = &snapshot.namespace_labels;
    for n in &nodes {
        let daemon_only = n.existing;
        let mut sum = Resources::default();
        let is_new = plan.new_machines.iter().any(|m| m.name == n.name);
        for (i, p) in n.pods.iter().enumerate() {
            if !(is_new && i < daemon_only) {
                sum.add(&p.spec.requests);
            }
        }
        if let Some(r) = sum.first_exceeding(&n.allocatable) {
            if n.pods.len() > n.existing {
                errors.push(format!(
                    "node {}: {r} over-committed ({sum} > {})",
                    n.name, n.allocatable
                ));
            }
        }
        for (i, p) in n.pods.iter().enumerate().skip(n.existing) {
            let k = p.key();
            if !node_affinity_matches(&p.spec, &n.name, &n.labels) {
                errors.push(format!("pod {k} on {}: node affinity", n.name));
            }
            if !taints_tolerated(&p.spec, &n.taints) {
                errors.push(format!("pod {k} on {}: untolerated taint", n.name));
            }
            if !volume_zone_ok(
                &p.spec,
                n.labels
                    .get(crate::model::instance_type::labels::ZONE)
                    .map(String::as_str),
            ) {
                errors.push(format!("pod {k} on {}: volume zone", n.name));
            }
            let others: Vec<_> = n
                .pods
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, q)| q.spec.host_ports.iter().cloned())
                .collect();
            if !host_ports_free(&p.spec.host_ports, &others) {
                errors.push(format!("pod {k} on {}: host port conflict", n.name));
            }
        }
    }

    // Topology, over the final state.
    let all: Vec<(usize, &Pod)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            n.pods
                .iter()
                .skip(if plan.new_machines.iter().any(|m| m.name == n.name) {
                    n.existing
                } else {
                    0
                })
                .map(move |p| (i, *p))
        })
        .collect();
    let value = |ni: usize, key: &str| nodes[ni].labels.get(key).cloned();
    for (ni, n) in nodes.iter().enumerate() {
        for p in n.pods.iter().skip(n.existing) {
            let k = p.key();
            for t in &p.spec.pod_anti_affinity {
                let Some(v) = value(ni, &t.topology_key) else {
                    continue;
                };
                if all.iter().any(|(qi, q)| {
                    !std::ptr::eq(*q, *p)
                        && value(*qi, &t.topology_key).as_ref() == Some(&v)
                        && t.selects(
                            &q.spec.namespace,
                            &q.spec.labels,
                            ns_labels.get(&q.spec.namespace),
                        )
                }) {
                    errors.push(format!(
                        "pod {k} on {}: anti-affinity on {}",
                        n.name, t.topology_key
                    ));
                }
            }
            for (qi, q) in &all {
                if std::ptr::eq(*q, *p) {
                    continue;
                }
                for t in &q.spec.pod_anti_affinity {
                    let same = value(ni, &t.topology_key).is_some()
                        && value(ni, &t.topology_key) == value(*qi, &t.topology_key);
                    if same
                        && t.selects(
                            &p.spec.namespace,
                            &p.spec.labels,
                            ns_labels.get(&p.spec.namespace),
                        )
                    {
                        errors.push(format!(
                            "pod {k} on {}: violates {}'s anti-affinity on {}",
                            n.name,
                            q.key(),
                            t.topology_key
                        ));
                    }
                }
            }
            for t in &p.spec.pod_affinity {
                let Some(v) = value(ni, &t.topology_key) else {
                    errors.push(format!(
                        "pod {k} on {}: node lacks affinity key {}",
                        n.name, t.topology_key
                    ));
                    continue;
                };
                let matching: Vec<_> = all
                    .iter()
                    .filter(|(_, q)| {
                        !std::ptr::eq(*q, *p)
                            && t.selects(
                                &q.spec.namespace,
                                &q.spec.labels,
                                ns_labels.get(&q.spec.namespace),
                            )
                    })
                    .collect();
                if !matching.is_empty()
                    && !matching
                        .iter()
                        .any(|(qi, _)| value(*qi, &t.topology_key).as_ref() == Some(&v))
                {
                    errors.push(format!(
                        "pod {k} on {}: affinity on {} has no matching pod in its domain",
                        n.name, t.topology_key
                    ));
                }
            }
            for c in p
                .spec
                .topology_spread
                .iter()
                .filter(|c| c.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule)
            {
                let Some(v) = value(ni, &c.topology_key) else {
                    errors.push(format!(
                        "pod {k} on {}: node lacks spread key {}",
                        n.name, c.topology_key
                    ));
                    continue;
                };
                let mut counts: BTreeMap<String, u32> = BTreeMap::new();
                for (mi, m) in nodes.iter().enumerate() {
                    let eligible = (c.node_affinity_policy == InclusionPolicy::Ignore
                        || node_affinity_matches(&p.spec, &m.name, &m.labels))
                        && (c.node_taints_policy == InclusionPolicy::Ignore
                            || taints_tolerated(&p.spec, &m.taints));
                    if let (true, Some(d)) = (eligible, value(mi, &c.topology_key)) {
                        counts.entry(d).or_default();
                    }
                }
                for (qi, q) in &all {
                    if q.spec.namespace == p.spec.namespace && c.selects(&q.spec.labels) {
                        if let Some(d) = value(*qi, &c.topology_key) {
                            if let Some(e) = counts.get_mut(&d) {
                                *e += 1;
                            }
                        }
                    }
                }
                let min = if (counts.len() as u32) < c.min_domains.unwrap_or(1) {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                };
                let mine = counts.get(&v).copied().unwrap_or(0);
                if mine > c.max_skew + min {
                    errors.push(format!("pod {k} on {}: spread on {} has {mine} against a minimum of {min} (maxSkew {})", n.name, c.topology_key, c.max_skew));
                }
            }
        }
    }
    errors
}
