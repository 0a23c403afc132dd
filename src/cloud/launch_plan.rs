//! Pure launch planning, shared by the EC2 and the simulated provider: which offerings (instance type × subnet) to
//! put in the fleet request for each capacity type, in which order, and the client token of each call.
//!
//! Rules:
//! - Capacity types in [`LaunchRequest::capacity_type_order`]: spot first, on-demand after (as the class allows or
//!   as the fallback).
//! - Instance types in the request's order of preference, at most [`MAX_INSTANCE_TYPES`] (Karpenter's figure for
//!   one CreateFleet call), all of the first type's architecture, because one launch template boots one AMI.
//! - One subnet per zone (the one with the most free addresses), only zones the type is offered in with that
//!   capacity type, only zones the choice allows.
//! - Offerings in the insufficient-capacity cache are left out. If that leaves nothing, the error is
//!   InsufficientCapacity (the planner picks others); if nothing was ever eligible, it is InvalidConfiguration.

use crate::cloud::error::{CloudError, OfferingFailure};
use crate::cloud::{LaunchRequest, OfferingKey};
use crate::model::instance_type::{Arch, CapacityType, Catalog};
use std::collections::BTreeMap;

/// At most this many instance types go into one CreateFleet call.
pub const MAX_INSTANCE_TYPES: usize = 60;
/// EC2's limit on client tokens.
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;

/// A subnet as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub id: String,
    pub zone: String,
    pub available_ips: u32,
}

/// One fleet override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub instance_type: String,
    pub subnet_id: String,
    pub zone: String,
    /// USD per hour for this capacity type in this zone (spot: the latest spot price).
    pub price: f64,
}

impl Override {
    pub fn offering(&self, capacity_type: CapacityType) -> OfferingKey {
        OfferingKey {
            instance_type: self.instance_type.clone(),
            zone: self.zone.clone(),
            capacity_type,
        }
    }
}

/// The overrides of one capacity type, cheapest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub capacity_type: CapacityType,
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    pub arch: Arch,
    pub phases: Vec<Phase>,
    /// Offerings left out because the insufficient-capacity cache lists them.
    pub skipped_unavailable: Vec<OfferingKey>,
}

impl LaunchPlan {
    /// Only one instance type in the whole plan: RunInstances is enough.
    pub fn single_instance_type(&self) -> Option<&str> {
        let mut names = self
            .phases
            .iter()
            .flat_map(|p| p.overrides.iter().map(|o| o.instance_type.as_str()));
        let first = names.next()?;
        names.all(|n| n == first).then_some(first)
    }
}

/// Builds the launch plan. `is_unavailable` is the insufficient-capacity cache's view.
pub fn plan_launch(
    request: &LaunchRequest,
    catalog: &Catalog,
    subnets: &[SubnetInfo],
    is_unavailable: impl Fn(&OfferingKey) -> bool,
) -> Result<LaunchPlan, CloudError> {
    if request.instance_types.is_empty() {
        return Err(CloudError::invalid(
            "the launch request names no instance type",
        ));
    }
    if subnets.is_empty() {
        return Err(CloudError::invalid(
            "no subnet matches the class's subnet selector",
        ));
    }
    let order = request.capacity_type_order();
    if order.is_empty() {
        return Err(CloudError::invalid(
            "the class allows no capacity type (expected spot and/or on-demand)",
        ));
    }
    let unknown: Vec<&str> = request
        .instance_types
        .iter()
        .filter(|c| catalog.get(&c.name).is_none())
        .map(|c| c.name.as_str())
        .collect();
    let known: Vec<_> = request
        .instance_types
        .iter()
        .filter_map(|c| catalog.get(&c.name).map(|t| (c, t)))
        .collect();
    let Some((_, first)) = known.first() else {
        return Err(CloudError::invalid(format!(
            "none of the instance types exists in this region: {}",
            unknown.join(", ")
        )));
    };
    let arch = first.arch;
    let candidates: Vec<_> = known
        .iter()
        .filter(|(_, t)| t.arch == arch)
        .take(MAX_INSTANCE_TYPES)
        .collect();

    // The best subnet of each zone.
    let mut by_zone: BTreeMap<&str, &SubnetInfo> = BTreeMap::new();
    for s in subnets {
        let better = by_zone
            .get(s.zone.as_str())
            .is_none_or(|cur| s.available_ips > cur.available_ips);
        if better {
            by_zone.insert(&s.zone, s);
        }
    }

    let mut phases = Vec::new();
    let mut skipped = Vec::new();
    for capacity_type in order {
        let mut overrides = Vec::new();
        for (choice, t) in &candidates {
            for offering in t
                .offerings
                .iter()
                .filter(|o| o.capacity_type == capacity_type)
            {
                let Some(subnet) = by_zone.get(offering.zone.as_str()) else {
                    continue;
                };
                if !choice.allows_zone(&offering.zone) {
                    continue;
                }
                let key = OfferingKey {
                    instance_type: t.name.clone(),
                    zone: offering.zone.clone(),
                    capacity_type,
                };
                if is_unavailable(&key) {
                    skipped.push(key);
                    continue;
                }
                overrides.push(Override {
                    instance_type: t.name.clone(),
                    subnet_id: subnet.id.clone(),
                    zone: offering.zone.clone(),
                    price: offering.price,
                });
            }
        }
        // Cheapest first; ties keep the request's order of preference (stable sort), so the plan is deterministic.
        overrides.sort_by(|a, b| a.price.total_cmp(&b.price));
        if !overrides.is_empty() {
            phases.push(Phase {
                capacity_type,
                overrides,
            });
        }
    }
    if phases.is_empty() {
        if !skipped.is_empty() {
            let offerings = skipped
                .into_iter()
                .map(|offering| OfferingFailure {
                    offering,
                    code: "RecentlyUnavailable".into(),
                    message: "in the insufficient-capacity cache".into(),
                })
                .collect();
            return Err(CloudError::InsufficientCapacity { offerings });
        }
        let types: Vec<&str> = candidates.iter().map(|(c, _)| c.name.as_str()).collect();
        let zones: Vec<&str> = by_zone.keys().copied().collect();
        let cts: Vec<&str> = request
            .capacity_type_order()
            .iter()
            .map(|c| c.as_str())
            .collect();
        return Err(CloudError::invalid(format!(
            "no offering satisfies the request: instance types [{}] ({}) are not offered as [{}] in the zones of the selected subnets [{}]",
            types.join(", "),
            arch.as_str(),
            cts.join(", "),
            zones.join(", ")
        )));
    }
    Ok(LaunchPlan {
        arch,
        phases,
        skipped_unavailable: skipped,
    })
}

/// 64-bit FNV-1a, for short stable digests (tokens, template keys); not for security.
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The client token of one launch call: derived from the Machine's uid, the launch attempt and a tag naming the
/// call (capacity type, and for RunInstances the offering), at most 64 ASCII characters. A uid too long (or not
/// ASCII) is replaced by a 128-bit digest of it.
pub fn client_token(machine_uid: &str, attempt: u32, call_tag: &str) -> String {
    let token = format!("{machine_uid}-{attempt}-{call_tag}");
    if token.len() <= MAX_CLIENT_TOKEN_LEN && token.is_ascii() {
        return token;
    }
    let digest = format!(
        "{:016x}{:016x}",
        fnv1a(machine_uid.as_bytes(), 0),
        fnv1a(machine_uid.as_bytes(), 0x5bd1e995)
    );
    let tag_digest = format!("{:08x}", fnv1a(call_tag.as_bytes(), 7) as u32);
    format!("{digest}-{attempt}-{tag_digest}")
}

/// The call tag for a CreateFleet call of a capacity type.
pub fn fleet_call_tag(capacity_type: CapacityType) -> String {
    match capacity_type {
        CapacityType::Spot => "fs".into(),
        CapacityType::OnDemand => "fo".into(),
    }
}

/// The call tag for a RunInstances call of one offering (RunInstances tokens are zonal: each zone gets its own).
pub fn run_call_tag(capacity_type: CapacityType, o: &Override) -> String {
    let c = if capacity_type == CapacityType::Spot {
        's'
    } else {
        'o'
    };
    format!(
        "r{c}{:08x}",
        fnv1a(format!("{}/{}", o.instance_type, o.subnet_id).as_bytes(), 0) as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::sim::fixtures::{request, small_catalog};
    use crate::cloud::InstanceTypeChoice;

    fn subnets() -> Vec<SubnetInfo> {
        vec![
            SubnetInfo {
                id: "subnet-a1".into(),
                zone: "us-east-1a".into(),
                available_ips: 100,
            },
            SubnetInfo {
                id: "subnet-a2".into(),
                zone: "us-east-1a".into(),
                available_ips: 4000,
            },
            SubnetInfo {
                id: "subnet-b".into(),
                zone: "us-east-1b".into(),
                available_ips: 50,
            },
        ]
    }

    #[test]
    fn spot_then_on_demand_cheapest_first_best_subnet_per_zone() {
        let r = request("m-1");
        let plan = plan_launch(&r, &small_catalog(), &subnets(), |_| false).unwrap();
        assert_eq!(plan.arch, Arch::Amd64);
        assert_eq!(plan.phases.len(), 2);
        assert_eq!(plan.phases[0].capacity_type, CapacityType::Spot);
        assert_eq!(plan.phases[1].capacity_type, CapacityType::OnDemand);
        let spot = &plan.phases[0].overrides;
        assert!(spot.windows(2).all(|w| w[0].price <= w[1].price));
        assert!(
            spot.iter().all(|o| o.subnet_id != "subnet-a1"),
            "the emptier subnet of zone a is not used"
        );
        // small_catalog offers zones a, b, c; zone c has no subnet.
        assert!(spot.iter().all(|o| o.zone != "us-east-1c"));
        // arm64 m6g.large is left out: the first choice is amd64.
        assert!(spot.iter().all(|o| o.instance_type != "m6g.large"));
        assert_eq!(plan.single_instance_type(), None);
    }

    #[test]
    fn cached_offerings_are_skipped_and_all_cached_is_insufficient_capacity() {
        let mut r = request("m-1");
        r.instance_types = vec![InstanceTypeChoice::new("m5.large")];
        r.capacity_types = vec![CapacityType::Spot];
        r.fallback_to_on_demand = false;
        let plan =
            plan_launch(&r, &small_catalog(), &subnets(), |k| k.zone == "us-east-1a").unwrap();
        assert_eq!(plan.phases[0].overrides.len(), 1);
        assert_eq!(plan.phases[0].overrides[0].zone, "us-east-1b");
        assert_eq!(plan.skipped_unavailable.len(), 1);
        assert_eq!(plan.single_instance_type(), Some("m5.large"));
        let e = plan_launch(&r, &small_catalog(), &subnets(), |_| true).unwrap_err();
        match e {
            CloudError::InsufficientCapacity { offerings } => assert_eq!(offerings.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zones_of_a_choice_are_respected() {
        let mut r = request("m-1");
        r.instance_types = vec![InstanceTypeChoice {
            name: "m5.large".into(),
            zones: vec!["us-east-1b".into()],
        }];
        let plan = plan_launch(&r, &small_catalog(), &subnets(), |_| false).unwrap();
        assert!(plan
            .phases
            .iter()
            .all(|p| p.overrides.iter().all(|o| o.zone == "us-east-1b")));
    }

    #[test]
    fn nothing_eligible_is_invalid_configuration_with_a_clear_message() {
        let mut r = request("m-1");
        r.instance_types = vec![InstanceTypeChoice::new("x9.huge")];
        let e = plan_launch(&r, &small_catalog(), &subnets(), |_| false).unwrap_err();
        assert_eq!(e.category(), "invalid-configuration");
        assert!(e.to_string().contains("x9.huge"), "{e}");

        let r = request("m-1");
        let e = plan_launch(&r, &small_catalog(), &[], |_| false).unwrap_err();
        assert!(e.to_string().contains("no subnet"), "{e}");

        let mut r = request("m-1");
        r.instance_types = vec![InstanceTypeChoice {
            name: "m5.large".into(),
            zones: vec!["us-east-1c".into()],
        }];
        let e = plan_launch(&r, &small_catalog(), &subnets(), |_| false).unwrap_err();
        assert_eq!(e.category(), "invalid-configuration");
        assert!(e.to_string().contains("us-east-1a, us-east-1b"), "{e}");

        let mut r = request("m-1");
        r.instance_types.clear();
        assert_eq!(
            plan_launch(&r, &small_catalog(), &subnets(), |_| false)
                .unwrap_err()
                .category(),
            "invalid-configuration"
        );
        let mut r = request("m-1");
        r.capacity_types.clear();
        assert_eq!(
            plan_launch(&r, &small_catalog(), &subnets(), |_| false)
                .unwrap_err()
                .category(),
            "invalid-configuration"
        );
    }

    #[test]
    fn client_tokens_are_stable_short_and_distinct_per_call() {
        let uid = "0b7e5c8a-9f0e-4a8e-b1c7-3f2d6c1e4a90";
        let t = client_token(uid, 0, &fleet_call_tag(CapacityType::Spot));
        assert_eq!(t, format!("{uid}-0-fs"));
        assert_eq!(t, client_token(uid, 0, "fs"));
        assert_ne!(t, client_token(uid, 1, "fs"));
        assert_ne!(t, client_token(uid, 0, "fo"));
        let long = "x".repeat(100);
        let t = client_token(&long, 12, "fs");
        assert!(t.len() <= MAX_CLIENT_TOKEN_LEN && t.is_ascii());
        assert_eq!(t, client_token(&long, 12, "fs"));
        assert_ne!(t, client_token(&"y".repeat(100), 12, "fs"));
        let o = Override {
            instance_type: "m5.large".into(),
            subnet_id: "subnet-1".into(),
            zone: "a".into(),
            price: 0.1,
        };
        let tag = run_call_tag(CapacityType::OnDemand, &o);
        assert!(client_token(uid, 4_000_000_000, &tag).len() <= MAX_CLIENT_TOKEN_LEN);
    }
}
