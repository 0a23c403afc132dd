//! Instance types, their offerings (zone × capacity type × price) and the node they become.
//!
//! What a pod can use on a node is the node's *allocatable*, not the instance's nominal size. We compute it with
//! the formulas of the EKS AMIs (see shared/data/aws/FACTS.md §3) so a planned node holds exactly what the real one
//! will: max pods from ENI limits, kube-reserved cpu and memory, the eviction threshold, and the share of memory
//! the hypervisor and kernel take (7.5%, the figure Karpenter tunes not to overestimate).

use crate::model::resources::{Resources, NVIDIA_GPU};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Well-known node labels berth reads and writes.
pub mod labels {
    pub const HOSTNAME: &str = "kubernetes.io/hostname";
    pub const ARCH: &str = "kubernetes.io/arch";
    pub const OS: &str = "kubernetes.io/os";
    pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
    pub const ZONE: &str = "topology.kubernetes.io/zone";
    pub const REGION: &str = "topology.kubernetes.io/region";
    /// The capacity type as Karpenter writes it, so workloads written for Karpenter schedule unchanged.
    pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
    /// berth's own copy of the capacity type.
    pub const BERTH_CAPACITY_TYPE: &str = "berth.dev/capacity-type";
    pub const INSTANCE_FAMILY: &str = "berth.dev/instance-family";
    pub const INSTANCE_SIZE: &str = "berth.dev/instance-size";
    pub const MACHINE_DEPLOYMENT: &str = "berth.dev/machine-deployment";
}

/// The memory share EKS nodes lose to the hypervisor and kernel before the kubelet sees it.
pub const VM_MEMORY_OVERHEAD_PERCENT: f64 = 0.075;
/// Default root volume when a class names none (Karpenter's AL2023 default).
pub const DEFAULT_ROOT_VOLUME_BYTES: u64 = 20 << 30;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CapacityType {
    #[serde(rename = "spot")]
    Spot,
    #[serde(rename = "on-demand")]
    OnDemand,
}

impl CapacityType {
    /// The label value (`spot`, `on-demand`).
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::Spot => "spot",
            CapacityType::OnDemand => "on-demand",
        }
    }

    pub fn parse(s: &str) -> Option<CapacityType> {
        match s {
            "spot" => Some(CapacityType::Spot),
            "on-demand" => Some(CapacityType::OnDemand),
            _ => None,
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "amd64")]
    Amd64,
    #[serde(rename = "arm64")]
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Reads both Kubernetes' names and EC2's (`x86_64`, `arm64`).
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// Where and how an instance type can be bought, and at what price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offering {
    pub zone: String,
    pub capacity_type: CapacityType,
    /// USD per hour.
    pub price: f64,
    /// False while the insufficient-capacity cache says this offering just failed.
    pub available: bool,
}

/// One EC2 instance type as berth plans with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    pub name: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub arch: Arch,
    pub gpus: u32,
    pub gpu_manufacturer: Option<String>,
    pub max_network_interfaces: u32,
    pub ipv4_per_interface: u32,
    pub current_generation: bool,
    pub bare_metal: bool,
    pub burstable: bool,
    pub local_storage_gb: u64,
    pub offerings: Vec<Offering>,
    /// Overrides the EKS allocatable model (used by synthetic catalogs such as the scheduling benchmark's).
    pub allocatable_override: Option<Resources>,
}

impl InstanceType {
    /// `m6i` of `m6i.2xlarge`.
    pub fn family(&self) -> &str {
        self.name
            .split_once('.')
            .map_or(self.name.as_str(), |(f, _)| f)
    }

    /// `2xlarge` of `m6i.2xlarge`.
    pub fn size(&self) -> &str {
        self.name.split_once('.').map_or("", |(_, s)| s)
    }

    /// Max pods with the VPC CNI: ENIs × (IPv4 per ENI − 1) + 2 (no 110 cap on AL2023).
    pub fn max_pods(&self) -> u64 {
        if self.max_network_interfaces == 0 || self.ipv4_per_interface == 0 {
            return 110; // nodeadm's fallback when the instance's networking is unknown
        }
        self.max_network_interfaces as u64 * (self.ipv4_per_interface as u64 - 1) + 2
    }

    /// What the node reports as capacity: nominal cpu, memory less the VM overhead, ENI-limited pods.
    pub fn capacity(&self, root_volume_bytes: u64) -> Resources {
        let mut mib = self.memory_mib;
        if self.arch == Arch::Arm64 {
            mib = mib.saturating_sub(64);
        }
        let overhead = (mib as f64 * VM_MEMORY_OVERHEAD_PERCENT).ceil() as u64;
        let mut r = Resources {
            cpu_millis: self.vcpu as u64 * 1000,
            memory_bytes: (mib - overhead) * MIB,
            ephemeral_bytes: root_volume_bytes,
            pods: self.max_pods(),
            ..Default::default()
        };
        if self.gpus > 0 {
            let resource = match self.gpu_manufacturer.as_deref() {
                Some(m) if m.eq_ignore_ascii_case("amd") => "amd.com/gpu",
                _ => NVIDIA_GPU,
            };
            r.extended.insert(resource.to_string(), self.gpus as u64);
        }
        r
    }

    /// EKS kube-reserved: cpu by the per-core ladder, memory 11 MiB per pod + 255 MiB, 1 GiB of ephemeral storage.
    pub fn kube_reserved(&self) -> Resources {
        Resources {
            cpu_millis: kube_reserved_cpu_millis(self.vcpu),
            memory_bytes: (11 * self.max_pods() + 255) * MIB,
            ephemeral_bytes: 1 << 30,
            ..Default::default()
        }
    }

    /// Capacity minus kube-reserved and the hard eviction thresholds (memory 100Mi, nodefs 10%).
    pub fn allocatable(&self, root_volume_bytes: u64) -> Resources {
        if let Some(a) = &self.allocatable_override {
            return a.clone();
        }
        let capacity = self.capacity(root_volume_bytes);
        let eviction = Resources {
            memory_bytes: 100 * MIB,
            ephemeral_bytes: root_volume_bytes / 10,
            ..Default::default()
        };
        capacity
            .saturating_sub(&self.kube_reserved())
            .saturating_sub(&eviction)
    }

    /// The cheapest available offering, optionally restricted to a zone and capacity type.
    pub fn cheapest_offering(
        &self,
        mut accept: impl FnMut(&Offering) -> bool,
    ) -> Option<&Offering> {
        self.offerings
            .iter()
            .filter(|o| o.available && accept(o))
            .min_by(|a, b| a.price.total_cmp(&b.price))
    }
}

/// EKS's kube-reserved cpu: 6% of the first core, 1% of the second, 0.5% of the third and fourth, 0.25% beyond.
pub fn kube_reserved_cpu_millis(vcpu: u32) -> u64 {
    // In tenths of a millicore so the 0.25% steps stay exact; rounded up at the end.
    let mut tenths = 0u64;
    for core in 1..=vcpu as u64 {
        tenths += match core {
            1 => 600,
            2 => 100,
            3 | 4 => 50,
            _ => 25,
        };
    }
    tenths.div_ceil(10)
}

/// A set of instance types with their offerings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub instance_types: Vec<InstanceType>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types.iter().find(|t| t.name == name)
    }

    /// Marks offerings unavailable (the insufficient-capacity cache's view), returning how many it changed.
    pub fn mark_unavailable(
        &mut self,
        instance_type: &str,
        zone: &str,
        capacity_type: CapacityType,
    ) -> usize {
        let mut changed = 0;
        for t in self
            .instance_types
            .iter_mut()
            .filter(|t| t.name == instance_type)
        {
            for o in t
                .offerings
                .iter_mut()
                .filter(|o| o.zone == zone && o.capacity_type == capacity_type && o.available)
            {
                o.available = false;
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m5_large() -> InstanceType {
        InstanceType {
            name: "m5.large".into(),
            vcpu: 2,
            memory_mib: 8192,
            arch: Arch::Amd64,
            gpus: 0,
            gpu_manufacturer: None,
            max_network_interfaces: 3,
            ipv4_per_interface: 10,
            current_generation: true,
            bare_metal: false,
            burstable: false,
            local_storage_gb: 0,
            offerings: vec![],
            allocatable_override: None,
        }
    }

    #[test]
    fn m5_large_matches_the_worked_example() {
        // FACTS.md §3: 8192 − 615 = 7577 Mi capacity; 7577 − 574 − 100 = 6903 Mi allocatable; 1930m cpu; 29 pods.
        let t = m5_large();
        assert_eq!(t.max_pods(), 29);
        assert_eq!(
            t.capacity(DEFAULT_ROOT_VOLUME_BYTES).memory_bytes,
            7577 * MIB
        );
        let a = t.allocatable(DEFAULT_ROOT_VOLUME_BYTES);
        assert_eq!(a.memory_bytes, 6903 * MIB);
        assert_eq!(a.cpu_millis, 1930);
        assert_eq!(a.pods, 29);
    }

    #[test]
    fn kube_reserved_cpu_ladder() {
        assert_eq!(kube_reserved_cpu_millis(1), 60);
        assert_eq!(kube_reserved_cpu_millis(2), 70);
        assert_eq!(kube_reserved_cpu_millis(4), 80);
        assert_eq!(kube_reserved_cpu_millis(8), 90);
        assert_eq!(kube_reserved_cpu_millis(96), 310);
        // 5 cores: 80 + 2.5 = 82.5, rounded up.
        assert_eq!(kube_reserved_cpu_millis(5), 83);
    }

    #[test]
    fn arm_and_gpu_capacity() {
        let mut t = m5_large();
        t.arch = Arch::Arm64;
        // (8192 − 64) − ceil(8128 × 0.075) = 8128 − 610 = 7518
        assert_eq!(t.capacity(0).memory_bytes, 7518 * MIB);
        t.gpus = 4;
        t.gpu_manufacturer = Some("NVIDIA".into());
        assert_eq!(t.capacity(0).extended(NVIDIA_GPU), 4);
    }

    #[test]
    fn cheapest_offering_skips_unavailable() {
        let mut t = m5_large();
        t.offerings = vec![
            Offering {
                zone: "a".into(),
                capacity_type: CapacityType::Spot,
                price: 0.03,
                available: true,
            },
            Offering {
                zone: "b".into(),
                capacity_type: CapacityType::Spot,
                price: 0.04,
                available: true,
            },
            Offering {
                zone: "a".into(),
                capacity_type: CapacityType::OnDemand,
                price: 0.096,
                available: true,
            },
        ];
        let mut c = Catalog {
            instance_types: vec![t],
        };
        assert_eq!(
            c.get("m5.large")
                .unwrap()
                .cheapest_offering(|_| true)
                .unwrap()
                .zone,
            "a"
        );
        assert_eq!(c.mark_unavailable("m5.large", "a", CapacityType::Spot), 1);
        assert_eq!(
            c.get("m5.large")
                .unwrap()
                .cheapest_offering(|_| true)
                .unwrap()
                .zone,
            "b"
        );
    }
}
