//! What a MachineClass allows: its instance-type requirements applied to a catalog.

use crate::api::machine_class::{
    Architecture, CapacityTypeSpec, InstanceRequirements, MachineClassSpec,
};
use crate::model::instance_type::{Arch, CapacityType, Catalog, InstanceType};

/// Why an instance type is left out, for the message when nothing is left.
fn rejection(req: &InstanceRequirements, t: &InstanceType) -> Option<String> {
    let name = t.name.as_str();
    if !req.instance_types.is_empty() && !req.instance_types.iter().any(|n| n == name) {
        return Some("not in instanceTypes".into());
    }
    if req.excluded_instance_types.iter().any(|n| n == name) {
        return Some("in excludedInstanceTypes".into());
    }
    if !req.families.is_empty() && !req.families.iter().any(|f| f == t.family()) {
        return Some("family not in families".into());
    }
    if req.excluded_families.iter().any(|f| f == t.family()) {
        return Some("family in excludedFamilies".into());
    }
    if !req.sizes.is_empty() && !req.sizes.iter().any(|s| s == t.size()) {
        return Some("size not in sizes".into());
    }
    if req.vcpu.is_some_and(|r| !r.contains(t.vcpu)) {
        return Some("vcpu outside the range".into());
    }
    let gib = (t.memory_mib / 1024) as u32;
    if req.memory_gib.is_some_and(|r| !r.contains(gib)) {
        return Some("memory outside the range".into());
    }
    let arch_ok = req.architectures.iter().any(|a| match a {
        Architecture::Amd64 => t.arch == Arch::Amd64,
        Architecture::Arm64 => t.arch == Arch::Arm64,
    });
    if !arch_ok {
        return Some("architecture not allowed".into());
    }
    match req.gpus {
        None if t.gpus > 0 => return Some("has GPUs and the class allows none".into()),
        Some(r) if !r.contains(t.gpus) => return Some("GPU count outside the range".into()),
        _ => {}
    }
    if req.current_generation_only && !t.current_generation {
        return Some("previous generation".into());
    }
    if !req.allow_bare_metal && t.bare_metal {
        return Some("bare metal".into());
    }
    if !req.allow_burstable && t.burstable {
        return Some("burstable".into());
    }
    None
}

/// The class's capacity types as the model's.
pub fn capacity_types(spec: &MachineClassSpec) -> Vec<CapacityType> {
    spec.capacity_types
        .iter()
        .map(|c| match c {
            CapacityTypeSpec::Spot => CapacityType::Spot,
            CapacityTypeSpec::OnDemand => CapacityType::OnDemand,
        })
        .collect()
}

/// The instance types a class allows, with only the offerings in `zones` (empty: all) and of the class's capacity
/// types (plus on-demand when spot falls back to it), cheapest first. An error says why nothing is left.
pub fn allowed_instance_types(
    spec: &MachineClassSpec,
    catalog: &Catalog,
    zones: &[String],
) -> Result<Vec<InstanceType>, String> {
    let mut capacity = capacity_types(spec);
    if spec.spot_fallback_to_on_demand && !capacity.contains(&CapacityType::OnDemand) {
        capacity.push(CapacityType::OnDemand);
    }
    let mut allowed = Vec::new();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &catalog.instance_types {
        if let Some(reason) = rejection(&spec.instance_requirements, t) {
            *reasons.entry(reason).or_default() += 1;
            continue;
        }
        let mut t = t.clone();
        t.offerings.retain(|o| {
            capacity.contains(&o.capacity_type) && (zones.is_empty() || zones.contains(&o.zone))
        });
        if t.offerings.is_empty() {
            *reasons
                .entry("not offered in the class's zones and capacity types".into())
                .or_default() += 1;
            continue;
        }
        allowed.push(t);
    }
    if allowed.is_empty() {
        let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        return Err(format!(
            "no instance type of {} satisfies instanceRequirements ({})",
            catalog.instance_types.len(),
            why.join(", ")
        ));
    }
    let cheapest = |t: &InstanceType| {
        t.offerings
            .iter()
            .map(|o| o.price)
            .fold(f64::INFINITY, f64::min)
    };
    allowed.sort_by(|a, b| {
        cheapest(a)
            .total_cmp(&cheapest(b))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Range;
    use crate::model::instance_type::Offering;

    fn t(name: &str, vcpu: u32, gib: u64, arch: Arch, gpus: u32, price: f64) -> InstanceType {
        InstanceType {
            name: name.into(),
            vcpu,
            memory_mib: gib * 1024,
            arch,
            gpus,
            gpu_manufacturer: None,
            max_network_interfaces: 3,
            ipv4_per_interface: 10,
            current_generation: true,
            bare_metal: name.ends_with("metal"),
            burstable: name.starts_with('t'),
            local_storage_gb: 0,
            offerings: vec![
                Offering {
                    zone: "a".into(),
                    capacity_type: CapacityType::OnDemand,
                    price,
                    available: true,
                },
                Offering {
                    zone: "b".into(),
                    capacity_type: CapacityType::Spot,
                    price: price / 3.0,
                    available: true,
                },
            ],
            allocatable_override: None,
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            instance_types: vec![
                t("m6i.large", 2, 8, Arch::Amd64, 0, 0.096),
                t("m6i.metal", 128, 512, Arch::Amd64, 0, 6.1),
                t("c7g.large", 2, 4, Arch::Arm64, 0, 0.072),
                t("t3.large", 2, 8, Arch::Amd64, 0, 0.083),
                t("g5.xlarge", 4, 16, Arch::Amd64, 1, 1.006),
            ],
        }
    }

    #[test]
    fn defaults_allow_current_x86_non_metal_non_gpu_cheapest_first() {
        let spec = MachineClassSpec {
            capacity_types: vec![CapacityTypeSpec::OnDemand],
            ..Default::default()
        };
        let names: Vec<String> = allowed_instance_types(&spec, &catalog(), &[])
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["t3.large", "m6i.large"]);
    }

    #[test]
    fn requirements_narrow_and_offerings_follow_capacity_and_zones() {
        let mut spec = MachineClassSpec {
            capacity_types: vec![CapacityTypeSpec::Spot],
            ..Default::default()
        };
        spec.instance_requirements.architectures = vec![Architecture::Arm64, Architecture::Amd64];
        spec.instance_requirements.allow_burstable = false;
        spec.instance_requirements.gpus = Some(Range {
            min: Some(0),
            max: Some(1),
        });
        let allowed = allowed_instance_types(&spec, &catalog(), &["b".to_string()]).unwrap();
        let names: Vec<&str> = allowed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["c7g.large", "m6i.large", "g5.xlarge"]);
        assert!(allowed.iter().all(|t| t
            .offerings
            .iter()
            .all(|o| o.capacity_type == CapacityType::Spot && o.zone == "b")));
    }

    #[test]
    fn nothing_allowed_says_why() {
        let mut spec = MachineClassSpec {
            capacity_types: vec![CapacityTypeSpec::OnDemand],
            ..Default::default()
        };
        spec.instance_requirements.families = vec!["x9z".into()];
        let err = allowed_instance_types(&spec, &catalog(), &[]).unwrap_err();
        assert!(
            err.contains("no instance type of 5") && err.contains("family not in families"),
            "{err}"
        );
    }
}
