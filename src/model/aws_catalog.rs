//! The bundled EC2 catalog: instance types, per-zone offerings and on-demand prices shipped in `data/aws/`.
//!
//! The data is embedded in the binary (`include_str!`) so the planner, the simulated cloud and the benchmarks work
//! offline and deterministically. Only us-east-1 has offerings and prices in the bundle.
//!
//! **Spot prices here are synthetic.** The bundle has no spot price history, so each spot offering's price is
//! derived deterministically from the on-demand price: a discount between 55% and 75%, chosen by a hash of the
//! instance type and zone (so zones differ, as real spot markets do, and every run sees the same numbers). In
//! production, spot prices come from DescribeSpotPriceHistory instead.

use crate::model::instance_type::{Arch, CapacityType, Catalog, InstanceType, Offering};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

const INSTANCE_TYPES_JSON: &str = include_str!("../../data/aws/instance-types.json");
const OFFERINGS_US_EAST_1_JSON: &str = include_str!("../../data/aws/offerings-us-east-1.json");
const ON_DEMAND_PRICES_JSON: &str = include_str!("../../data/aws/on-demand-prices.json");

/// Spot discount range of the synthetic spot prices (fraction of the on-demand price taken off).
pub const SYNTHETIC_SPOT_DISCOUNT_MIN: f64 = 0.55;
pub const SYNTHETIC_SPOT_DISCOUNT_MAX: f64 = 0.75;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsCatalogError {
    #[error("the bundled catalog has no offerings for region {0:?} (bundled: us-east-1)")]
    UnknownRegion(String),
    #[error("bundled file {file} is malformed: {message}")]
    Malformed { file: &'static str, message: String },
}

impl AwsCatalogError {
    pub fn category(&self) -> &'static str {
        match self {
            AwsCatalogError::UnknownRegion(_) => "unknown_region",
            AwsCatalogError::Malformed { .. } => "malformed_data",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceTypesFile {
    instance_types: Vec<RawInstanceType>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInstanceType {
    name: String,
    vcpu: u32,
    #[serde(rename = "memoryMiB")]
    memory_mib: u64,
    arch: Vec<String>,
    gpus: u32,
    gpu_manufacturer: Option<String>,
    max_network_interfaces: u32,
    ipv4_per_interface: u32,
    current_generation: bool,
    bare_metal: bool,
    burstable: bool,
    usage_classes: Vec<String>,
    #[serde(rename = "localStorageGB")]
    local_storage_gb: u64,
}

#[derive(Deserialize)]
struct OfferingsFile {
    region: String,
    zones: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct PricesFile {
    regions: BTreeMap<String, BTreeMap<String, f64>>,
}

fn parse<T: for<'de> Deserialize<'de>>(
    file: &'static str,
    text: &str,
) -> Result<T, AwsCatalogError> {
    serde_json::from_str(text).map_err(|e| AwsCatalogError::Malformed {
        file,
        message: e.to_string(),
    })
}

/// The regions the bundle has offerings for.
pub fn bundled_regions() -> Vec<&'static str> {
    vec!["us-east-1"]
}

/// The full bundled catalog of `region`: every instance type with an on-demand price and a supported
/// architecture, with one on-demand offering per zone that offers it and one (synthetically priced) spot offering
/// per zone when the type supports spot. Types are sorted by name; offerings by zone, then capacity type.
pub fn bundled_catalog(region: &str) -> Result<Catalog, AwsCatalogError> {
    let offerings: OfferingsFile = parse("offerings-us-east-1.json", OFFERINGS_US_EAST_1_JSON)?;
    if offerings.region != region {
        return Err(AwsCatalogError::UnknownRegion(region.to_string()));
    }
    let types: InstanceTypesFile = parse("instance-types.json", INSTANCE_TYPES_JSON)?;
    let prices: PricesFile = parse("on-demand-prices.json", ON_DEMAND_PRICES_JSON)?;
    let prices = prices
        .regions
        .get(region)
        .ok_or_else(|| AwsCatalogError::UnknownRegion(region.to_string()))?;

    let mut zones_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for (zone, names) in &offerings.zones {
        for name in names {
            zones_of
                .entry(name.as_str())
                .or_default()
                .push(zone.as_str());
        }
    }

    let mut out = Vec::new();
    for raw in &types.instance_types {
        let Some(&on_demand) = prices.get(&raw.name) else {
            continue;
        };
        if !(on_demand.is_finite() && on_demand > 0.0) {
            continue;
        }
        // Mac types report arm64_mac/x86_64_mac: they are not Kubernetes nodes, so no architecture matches.
        let Some(arch) = raw.arch.iter().find_map(|a| Arch::parse(a)) else {
            continue;
        };
        let Some(zones) = zones_of.get(raw.name.as_str()) else {
            continue;
        };
        let spot = raw.usage_classes.iter().any(|c| c == "spot");
        let mut offers = Vec::new();
        let mut zones = zones.clone();
        zones.sort_unstable();
        for zone in zones {
            if spot {
                offers.push(Offering {
                    zone: zone.to_string(),
                    capacity_type: CapacityType::Spot,
                    price: synthetic_spot_price(&raw.name, zone, on_demand),
                    available: true,
                });
            }
            offers.push(Offering {
                zone: zone.to_string(),
                capacity_type: CapacityType::OnDemand,
                price: on_demand,
                available: true,
            });
        }
        out.push(InstanceType {
            name: raw.name.clone(),
            vcpu: raw.vcpu,
            memory_mib: raw.memory_mib,
            arch,
            gpus: raw.gpus,
            gpu_manufacturer: raw.gpu_manufacturer.clone(),
            max_network_interfaces: raw.max_network_interfaces,
            ipv4_per_interface: raw.ipv4_per_interface,
            current_generation: raw.current_generation,
            bare_metal: raw.bare_metal,
            burstable: raw.burstable,
            local_storage_gb: raw.local_storage_gb,
            offerings: offers,
            allocatable_override: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Catalog {
        instance_types: out,
    })
}

/// A deterministic synthetic spot price: on-demand less a discount in [55%, 75%) picked by an FNV-1a hash of
/// `type/zone`, rounded to a tenth of a cent per hour (at least 0.0001).
pub fn synthetic_spot_price(instance_type: &str, zone: &str, on_demand: f64) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance_type
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(zone.bytes())
    {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
    let discount = SYNTHETIC_SPOT_DISCOUNT_MIN
        + (SYNTHETIC_SPOT_DISCOUNT_MAX - SYNTHETIC_SPOT_DISCOUNT_MIN) * unit;
    ((on_demand * (1.0 - discount)) * 10_000.0).round().max(1.0) / 10_000.0
}

/// Which bundled instance types a general-purpose node group should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFilter {
    pub current_generation_only: bool,
    pub exclude_bare_metal: bool,
    /// Keep GPU types (only when the pods ask for GPUs: they are expensive for anything else).
    pub include_gpu: bool,
    /// Keep burstable (t*) types.
    pub include_burstable: bool,
}

impl Default for CatalogFilter {
    /// Current generation, no bare metal, no GPU, burstable allowed (the benchmarks' and Karpenter's default view).
    fn default() -> Self {
        CatalogFilter {
            current_generation_only: true,
            exclude_bare_metal: true,
            include_gpu: false,
            include_burstable: true,
        }
    }
}

impl CatalogFilter {
    pub fn accepts(&self, t: &InstanceType) -> bool {
        (!self.current_generation_only || t.current_generation)
            && (!self.exclude_bare_metal || !t.bare_metal)
            && (self.include_gpu || t.gpus == 0)
            && (self.include_burstable || !t.burstable)
    }

    /// The catalog with only the types this filter accepts.
    pub fn apply(&self, catalog: &Catalog) -> Catalog {
        Catalog {
            instance_types: catalog
                .instance_types
                .iter()
                .filter(|t| self.accepts(t))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance_type::DEFAULT_ROOT_VOLUME_BYTES;

    #[test]
    fn loads_us_east_1_with_offerings_and_prices() {
        let c = bundled_catalog("us-east-1").unwrap();
        assert!(c.instance_types.len() > 1000, "{}", c.instance_types.len());
        let m5 = c.get("m5.large").unwrap();
        assert_eq!((m5.vcpu, m5.memory_mib, m5.arch), (2, 8192, Arch::Amd64));
        assert_eq!(m5.max_pods(), 29);
        assert_eq!(m5.allocatable(DEFAULT_ROOT_VOLUME_BYTES).cpu_millis, 1930);
        let od = m5
            .offerings
            .iter()
            .find(|o| o.capacity_type == CapacityType::OnDemand)
            .unwrap();
        assert_eq!(od.price, 0.096);
        assert!(m5
            .offerings
            .iter()
            .any(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot));
        // Mac instances are not nodes.
        assert!(c.instance_types.iter().all(|t| !t.name.starts_with("mac")));
    }

    #[test]
    fn synthetic_spot_is_deterministic_and_discounted() {
        let a = synthetic_spot_price("m5.large", "us-east-1a", 0.096);
        assert_eq!(a, synthetic_spot_price("m5.large", "us-east-1a", 0.096));
        assert!(
            (0.096 * 0.25 - 1e-4..=0.096 * 0.45 + 1e-4).contains(&a),
            "{a}"
        );
        let c = bundled_catalog("us-east-1").unwrap();
        for t in &c.instance_types {
            let od = t
                .offerings
                .iter()
                .find(|o| o.capacity_type == CapacityType::OnDemand)
                .unwrap()
                .price;
            for o in t
                .offerings
                .iter()
                .filter(|o| o.capacity_type == CapacityType::Spot)
            {
                assert!(o.price < od, "{} {}", t.name, o.zone);
            }
        }
    }

    #[test]
    fn unknown_region_is_an_error() {
        assert_eq!(
            bundled_catalog("eu-west-9").unwrap_err().category(),
            "unknown_region"
        );
    }

    #[test]
    fn default_filter_drops_old_metal_and_gpu() {
        let c = CatalogFilter::default().apply(&bundled_catalog("us-east-1").unwrap());
        // The bundle (moto's copy of DescribeInstanceTypes) marks m5 and m6i as previous generation.
        assert!(c.get("m7i.large").is_some());
        assert!(c.get("m5.large").is_none());
        assert!(c.get("m7i.metal-24xl").is_none());
        assert!(c.get("g4dn.xlarge").is_none());
        assert!(c.get("m1.small").is_none());
        let with_gpu = CatalogFilter {
            include_gpu: true,
            ..Default::default()
        }
        .apply(&bundled_catalog("us-east-1").unwrap());
        assert!(with_gpu.get("g4dn.xlarge").is_some());
    }
}
