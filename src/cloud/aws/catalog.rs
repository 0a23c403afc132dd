//! The instance-type catalog from EC2: DescribeInstanceTypes (shapes), DescribeInstanceTypeOfferings (which zones
//! offer each type), DescribeSpotPriceHistory (the current spot price per type and zone), and on-demand prices from
//! the table bundled in the binary (the Pricing API is a separate, global service berth does not call). Read again
//! every `catalog_refresh`.

use super::ec2::ClassifyExt;
use super::AwsCloud;
use crate::cloud::action::Action;
use crate::cloud::error::CloudError;
use crate::model::instance_type::{Arch, CapacityType, Catalog, InstanceType, Offering};
use aws_sdk_ec2::types as t;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const BUNDLED_ON_DEMAND_PRICES: &str = include_str!("../../../data/aws/on-demand-prices.json");

/// On-demand Linux prices (USD per hour) of `region` from the bundled table.
pub fn on_demand_prices(region: &str) -> Result<HashMap<String, f64>, CloudError> {
    let doc: serde_json::Value = serde_json::from_str(BUNDLED_ON_DEMAND_PRICES)
        .map_err(|e| CloudError::invalid(format!("bundled on-demand price table: {e}")))?;
    let table = doc
        .get("regions")
        .and_then(|r| r.get(region))
        .and_then(|r| r.as_object())
        .ok_or_else(|| {
            CloudError::invalid(format!(
                "the bundled on-demand price table has no region {region}"
            ))
        })?;
    Ok(table
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect())
}

fn convert(info: &t::InstanceTypeInfo) -> Option<(InstanceType, BTreeSet<CapacityType>)> {
    let name = info.instance_type()?.as_str().to_string();
    let arch = info
        .processor_info()?
        .supported_architectures()
        .iter()
        .find_map(|a| match a {
            t::ArchitectureType::X8664 => Some(Arch::Amd64),
            t::ArchitectureType::Arm64 => Some(Arch::Arm64),
            _ => None,
        })?;
    let gpus = info.gpu_info().map(|g| g.gpus()).unwrap_or_default();
    let usage: BTreeSet<CapacityType> = info
        .supported_usage_classes()
        .iter()
        .filter_map(|u| match u {
            t::UsageClassType::Spot => Some(CapacityType::Spot),
            t::UsageClassType::OnDemand => Some(CapacityType::OnDemand),
            _ => None,
        })
        .collect();
    let it = InstanceType {
        name,
        vcpu: info
            .v_cpu_info()
            .and_then(|v| v.default_v_cpus())
            .unwrap_or(0)
            .max(0) as u32,
        memory_mib: info
            .memory_info()
            .and_then(|m| m.size_in_mib())
            .unwrap_or(0)
            .max(0) as u64,
        arch,
        gpus: gpus
            .iter()
            .map(|g| g.count().unwrap_or(0).max(0) as u32)
            .sum(),
        gpu_manufacturer: gpus
            .first()
            .and_then(|g| g.manufacturer())
            .map(str::to_string),
        max_network_interfaces: info
            .network_info()
            .and_then(|n| n.maximum_network_interfaces())
            .unwrap_or(0)
            .max(0) as u32,
        ipv4_per_interface: info
            .network_info()
            .and_then(|n| n.ipv4_addresses_per_interface())
            .unwrap_or(0)
            .max(0) as u32,
        current_generation: info.current_generation().unwrap_or(false),
        bare_metal: info.bare_metal().unwrap_or(false),
        burstable: info.burstable_performance_supported().unwrap_or(false),
        local_storage_gb: info
            .instance_storage_info()
            .and_then(|s| s.total_size_in_gb())
            .unwrap_or(0)
            .max(0) as u64,
        offerings: Vec::new(),
        allocatable_override: None,
    };
    (it.vcpu > 0 && it.memory_mib > 0).then_some((it, usage))
}

impl AwsCloud {
    pub(super) async fn load_catalog(&self) -> Result<Catalog, CloudError> {
        let on_demand = on_demand_prices(&self.region).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no bundled on-demand prices for this region; on-demand offerings are left out");
            HashMap::new()
        });

        let mut types: Vec<(InstanceType, BTreeSet<CapacityType>)> = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let token = next.clone();
            let page = self
                .caller
                .call(Action::DescribeInstanceTypes, 1, || {
                    self.ec2
                        .describe_instance_types()
                        .max_results(100)
                        .set_next_token(token.clone())
                        .send()
                        .map_err_classify()
                })
                .await
                .map_err(|e| e.into_cloud_error())?;
            types.extend(page.instance_types().iter().filter_map(convert));
            next = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }

        let mut zones: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut next: Option<String> = None;
        loop {
            let token = next.clone();
            let page = self
                .caller
                .call(Action::DescribeInstanceTypeOfferings, 1, || {
                    self.ec2
                        .describe_instance_type_offerings()
                        .location_type(t::LocationType::AvailabilityZone)
                        .max_results(1000)
                        .set_next_token(token.clone())
                        .send()
                        .map_err_classify()
                })
                .await
                .map_err(|e| e.into_cloud_error())?;
            for o in page.instance_type_offerings() {
                if let (Some(it), Some(loc)) = (o.instance_type(), o.location()) {
                    zones
                        .entry(it.as_str().to_string())
                        .or_default()
                        .insert(loc.to_string());
                }
            }
            next = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }

        // The latest spot price of each (type, zone): asking from "now" returns only the current prices.
        let mut spot: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
        let now = aws_sdk_ec2::primitives::DateTime::from_secs(self.clock.now().timestamp());
        let mut next: Option<String> = None;
        loop {
            let token = next.clone();
            let page = self
                .caller
                .call(Action::DescribeSpotPriceHistory, 1, || {
                    self.ec2
                        .describe_spot_price_history()
                        .product_descriptions("Linux/UNIX")
                        .start_time(now)
                        .max_results(1000)
                        .set_next_token(token.clone())
                        .send()
                        .map_err_classify()
                })
                .await
                .map_err(|e| e.into_cloud_error())?;
            for p in page.spot_price_history() {
                let (Some(it), Some(zone), Some(price)) = (
                    p.instance_type(),
                    p.availability_zone(),
                    p.spot_price().and_then(|s| s.parse::<f64>().ok()),
                ) else {
                    continue;
                };
                let at = p.timestamp().map(|t| t.secs()).unwrap_or(0);
                let key = (it.as_str().to_string(), zone.to_string());
                if spot.get(&key).is_none_or(|(t0, _)| at >= *t0) {
                    spot.insert(key, (at, price));
                }
            }
            next = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }

        let mut catalog = Catalog::default();
        for (mut it, usage) in types {
            for zone in zones.get(&it.name).into_iter().flatten() {
                if usage.contains(&CapacityType::OnDemand) {
                    if let Some(price) = on_demand.get(&it.name) {
                        it.offerings.push(Offering {
                            zone: zone.clone(),
                            capacity_type: CapacityType::OnDemand,
                            price: *price,
                            available: true,
                        });
                    }
                }
                if usage.contains(&CapacityType::Spot) {
                    if let Some((_, price)) = spot.get(&(it.name.clone(), zone.clone())) {
                        it.offerings.push(Offering {
                            zone: zone.clone(),
                            capacity_type: CapacityType::Spot,
                            price: *price,
                            available: true,
                        });
                    }
                }
            }
            if !it.offerings.is_empty() {
                catalog.instance_types.push(it);
            }
        }
        catalog.instance_types.sort_by(|a, b| a.name.cmp(&b.name));
        tracing::info!(
            types = catalog.instance_types.len(),
            "instance-type catalog loaded"
        );
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_prices_load_for_us_east_1() {
        let p = on_demand_prices("us-east-1").unwrap();
        assert!(p.len() > 500);
        assert!(p["m5.large"] > 0.05 && p["m5.large"] < 0.2);
        assert_eq!(
            on_demand_prices("mars-1").unwrap_err().category(),
            "invalid-configuration"
        );
    }
}
