//! The kube-scheduler's filters as plain functions over plain data, and what a new node of a group would look
//! like (its labels, its allocatable after the DaemonSet pods that would land on it).
//!
//! The solver uses indexed versions of these rules for speed; [`super::verify`] uses these directly to check
//! finished plans, and the table tests here pin them to the Kubernetes documentation.

use crate::model::instance_type::{labels, InstanceType, Offering};
use crate::model::pod::{HostPort, SchedulingSpec, NODE_NAME_FIELD};
use crate::model::requirements::Requirements;
use crate::model::resources::Resources;
use crate::model::taints::{first_blocking_taint, Taint};
use crate::scheduling::NodeGroup;
use std::collections::BTreeMap;

/// The value of label `key` on a new node of `group` with this instance type and offering, named `hostname`.
pub fn new_node_label<'a>(
    group: &'a NodeGroup,
    it: &'a InstanceType,
    offering: &'a Offering,
    hostname: &'a str,
    key: &str,
) -> Option<&'a str> {
    match key {
        labels::HOSTNAME | NODE_NAME_FIELD => Some(hostname),
        labels::INSTANCE_TYPE => Some(&it.name),
        labels::ARCH => Some(it.arch.as_str()),
        labels::OS => Some("linux"),
        labels::ZONE => Some(&offering.zone),
        labels::CAPACITY_TYPE | labels::BERTH_CAPACITY_TYPE => {
            Some(offering.capacity_type.as_str())
        }
        labels::INSTANCE_FAMILY => Some(it.family()),
        labels::INSTANCE_SIZE => Some(it.size()),
        labels::MACHINE_DEPLOYMENT => Some(&group.name),
        _ => group.labels.get(key).map(String::as_str),
    }
}

/// Every label a new node of `group` would carry.
pub fn new_node_labels(
    group: &NodeGroup,
    it: &InstanceType,
    offering: &Offering,
    hostname: &str,
) -> BTreeMap<String, String> {
    let mut out = group.labels.clone();
    for key in [
        labels::HOSTNAME,
        labels::INSTANCE_TYPE,
        labels::ARCH,
        labels::OS,
        labels::ZONE,
        labels::CAPACITY_TYPE,
        labels::BERTH_CAPACITY_TYPE,
        labels::INSTANCE_FAMILY,
        labels::INSTANCE_SIZE,
        labels::MACHINE_DEPLOYMENT,
    ] {
        if let Some(v) = new_node_label(group, it, offering, hostname, key) {
            out.insert(key.to_string(), v.to_string());
        }
    }
    out
}

/// Whether a label lookup satisfies one of the node-affinity terms (the terms are ORed).
pub fn matches_any_term<'a>(
    terms: &[Requirements],
    mut label: impl FnMut(&str) -> Option<&'a str>,
) -> bool {
    terms.iter().any(|t| t.matches(&mut label))
}

/// Node affinity and nodeSelector against a label map (`metadata.name` is the node name).
pub fn node_affinity_matches(
    spec: &SchedulingSpec,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> bool {
    let terms = spec.node_terms();
    matches_any_term(&terms, |k| {
        if k == NODE_NAME_FIELD {
            Some(node_name)
        } else {
            node_labels.get(k).map(String::as_str)
        }
    })
}

/// Whether every NoSchedule and NoExecute taint is tolerated (startup taints are not passed in: they are ignored).
pub fn taints_tolerated(spec: &SchedulingSpec, taints: &[Taint]) -> bool {
    first_blocking_taint(taints, &spec.tolerations).is_none()
}

/// Whether the pod's host ports are all free given those already in use on the node.
pub fn host_ports_free(wanted: &[HostPort], used: &[HostPort]) -> bool {
    wanted.iter().all(|w| used.iter().all(|u| !w.conflicts(u)))
}

/// Whether a node in `zone` satisfies the pod's volume topology.
pub fn volume_zone_ok(spec: &SchedulingSpec, zone: Option<&str>) -> bool {
    match &spec.volume_zones {
        None => true,
        Some(zones) => zone.is_some_and(|z| zones.contains(z)),
    }
}

/// Whether a DaemonSet pod would run on a new node of `group` with this instance type.
pub fn daemon_runs_on(daemon: &SchedulingSpec, group: &NodeGroup, it: &InstanceType) -> bool {
    // Zone-specific daemons are rare; the first offering stands in for the node's zone.
    let fallback = Offering {
        zone: String::new(),
        capacity_type: crate::model::instance_type::CapacityType::OnDemand,
        price: 0.0,
        available: true,
    };
    let offering = it.offerings.first().unwrap_or(&fallback);
    let terms = daemon.node_terms();
    matches_any_term(&terms, |k| new_node_label(group, it, offering, "", k))
        && first_blocking_taint(&group.taints, &daemon.tolerations).is_none()
}

/// What a new node of `group` with this instance type leaves for pending pods: allocatable less the daemons.
pub fn new_node_allocatable(group: &NodeGroup, it: &InstanceType) -> Resources {
    let mut overhead = group.daemon_overhead.clone();
    for d in &group.daemon_pods {
        if daemon_runs_on(&d.spec, group, it) {
            overhead.add(&d.spec.requests);
        }
    }
    it.allocatable(group.root_volume_bytes)
        .saturating_sub(&overhead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance_type::{Arch, CapacityType};
    use crate::model::pod::Pod;
    use crate::model::taints::{TaintEffect, Toleration};

    fn it(name: &str, vcpu: u32, mem_gib: u64) -> InstanceType {
        InstanceType {
            name: name.into(),
            vcpu,
            memory_mib: mem_gib * 1024,
            arch: Arch::Amd64,
            gpus: 0,
            gpu_manufacturer: None,
            max_network_interfaces: 4,
            ipv4_per_interface: 15,
            current_generation: true,
            bare_metal: false,
            burstable: false,
            local_storage_gb: 0,
            offerings: vec![Offering {
                zone: "a".into(),
                capacity_type: CapacityType::Spot,
                price: 0.1,
                available: true,
            }],
            allocatable_override: None,
        }
    }

    fn spec_with_terms(expr: &[(&str, &str, &[&str])]) -> SchedulingSpec {
        let mut r = Requirements::new();
        for (k, op, vs) in expr {
            r.add_expression(k, op, &vs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        }
        SchedulingSpec {
            required_node_affinity: vec![r],
            ..Default::default()
        }
    }

    #[test]
    fn new_node_labels_cover_the_well_known_keys() {
        let mut g = NodeGroup::new("general", vec![]);
        g.labels.insert("team".into(), "a".into());
        let t = it("m7i.xlarge", 4, 16);
        let l = new_node_labels(&g, &t, &t.offerings[0], "n1");
        assert_eq!(l[labels::INSTANCE_TYPE], "m7i.xlarge");
        assert_eq!(l[labels::INSTANCE_FAMILY], "m7i");
        assert_eq!(l[labels::CAPACITY_TYPE], "spot");
        assert_eq!(l[labels::ZONE], "a");
        assert_eq!(l["team"], "a");
    }

    #[test]
    fn node_affinity_table() {
        let node: BTreeMap<String, String> = [
            ("topology.kubernetes.io/zone".to_string(), "a".to_string()),
            ("kubernetes.io/arch".into(), "amd64".into()),
        ]
        .into();
        let cases: Vec<(SchedulingSpec, bool)> = vec![
            (
                spec_with_terms(&[("topology.kubernetes.io/zone", "In", &["a", "b"])]),
                true,
            ),
            (
                spec_with_terms(&[("topology.kubernetes.io/zone", "NotIn", &["a"])]),
                false,
            ),
            (
                spec_with_terms(&[("kubernetes.io/arch", "In", &["arm64"])]),
                false,
            ),
            (spec_with_terms(&[("gpu", "DoesNotExist", &[])]), true),
            (spec_with_terms(&[(NODE_NAME_FIELD, "In", &["n1"])]), true),
            (spec_with_terms(&[(NODE_NAME_FIELD, "In", &["n2"])]), false),
            (
                SchedulingSpec {
                    node_selector: Requirements::from_labels(&BTreeMap::from([(
                        "disk".to_string(),
                        "ssd".to_string(),
                    )])),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (i, (spec, want)) in cases.iter().enumerate() {
            assert_eq!(node_affinity_matches(spec, "n1", &node), *want, "case {i}");
        }
        // Terms are ORed: the documentation's example of two terms, one of which matches.
        let mut either = spec_with_terms(&[("topology.kubernetes.io/zone", "In", &["x"])]);
        either.required_node_affinity.extend(
            spec_with_terms(&[("kubernetes.io/arch", "In", &["amd64"])]).required_node_affinity,
        );
        assert!(node_affinity_matches(&either, "n1", &node));
    }

    #[test]
    fn taint_predicate_table() {
        let taint = |k: &str, e| Taint::new(k, "", e).unwrap();
        let tol = |k: &str| Toleration::new(k, "Exists", "", "").unwrap();
        let cases = [
            (vec![taint("a", TaintEffect::NoSchedule)], vec![], false),
            (vec![taint("a", TaintEffect::NoExecute)], vec![], false),
            (
                vec![taint("a", TaintEffect::PreferNoSchedule)],
                vec![],
                true,
            ),
            (
                vec![taint("a", TaintEffect::NoSchedule)],
                vec![tol("a")],
                true,
            ),
            (
                vec![
                    taint("a", TaintEffect::NoSchedule),
                    taint("b", TaintEffect::NoSchedule),
                ],
                vec![tol("a")],
                false,
            ),
        ];
        for (i, (taints, tols, want)) in cases.into_iter().enumerate() {
            let spec = SchedulingSpec {
                tolerations: tols,
                ..Default::default()
            };
            assert_eq!(taints_tolerated(&spec, &taints), want, "case {i}");
        }
    }

    #[test]
    fn volume_zone_table() {
        let spec = SchedulingSpec {
            volume_zones: Some(["a".to_string()].into()),
            ..Default::default()
        };
        assert!(volume_zone_ok(&spec, Some("a")));
        assert!(!volume_zone_ok(&spec, Some("b")));
        assert!(!volume_zone_ok(&spec, None));
        assert!(volume_zone_ok(&SchedulingSpec::default(), None));
    }

    #[test]
    fn daemon_overhead_is_per_instance_type() {
        let mut g = NodeGroup::new("g", vec![]);
        let mut everywhere = Pod::new("kube-system", "cni", Resources::new(100, 100 << 20));
        everywhere.spec.tolerations = vec![Toleration::new("", "Exists", "", "").unwrap()];
        let mut big_only = Pod::new("kube-system", "big-agent", Resources::new(500, 0));
        big_only.spec.tolerations = vec![Toleration::new("dedicated", "Exists", "", "").unwrap()];
        big_only.spec.required_node_affinity =
            spec_with_terms(&[("node.kubernetes.io/instance-type", "In", &["m7i.4xlarge"])])
                .required_node_affinity;
        let mut untolerating = Pod::new("kube-system", "x", Resources::new(1000, 0));
        untolerating.spec.tolerations = vec![];
        g.daemon_pods = vec![everywhere, big_only, untolerating];
        g.taints = vec![Taint::new("dedicated", "x", TaintEffect::NoSchedule).unwrap()];
        let small = it("m7i.large", 2, 8);
        let big = it("m7i.4xlarge", 16, 64);
        assert_eq!(
            new_node_allocatable(&g, &small).cpu_millis,
            small.allocatable(g.root_volume_bytes).cpu_millis - 100
        );
        assert_eq!(
            new_node_allocatable(&g, &big).cpu_millis,
            big.allocatable(g.root_volume_bytes).cpu_millis - 600
        );
    }
}
