//! A vector of resource amounts (cpu, memory, ephemeral storage, pods, extended resources such as GPUs), in the
//! integer units the kubelet accounts in: millicores, bytes and counts.

use crate::model::quantity::{
    format_bytes, format_cpu_millis, parse_cpu_millis, parse_units, QuantityError,
};
use std::collections::BTreeMap;
use std::fmt;

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
    pub pods: u64,
    /// Extended resources (nvidia.com/gpu, aws.amazon.com/neuron, hugepages-2Mi, ...), in whole units.
    pub extended: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {name}: {source}")]
pub struct ResourceError {
    pub name: String,
    #[source]
    pub source: QuantityError,
}

impl ResourceError {
    pub fn category(&self) -> &'static str {
        self.source.category()
    }
}

impl Resources {
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
            ..Default::default()
        }
    }

    /// Parses a Kubernetes resource list (`{"cpu": "500m", "memory": "1Gi", ...}`); the error names the resource.
    pub fn from_quantities<'a>(
        list: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Resources, ResourceError> {
        let mut r = Resources::default();
        for (name, value) in list {
            let err = |source| ResourceError {
                name: name.to_string(),
                source,
            };
            match name {
                CPU => r.cpu_millis = parse_cpu_millis(value).map_err(err)?,
                MEMORY => r.memory_bytes = parse_units(value).map_err(err)?,
                EPHEMERAL_STORAGE => r.ephemeral_bytes = parse_units(value).map_err(err)?,
                PODS => r.pods = parse_units(value).map_err(err)?,
                other => {
                    r.extended
                        .insert(other.to_string(), parse_units(value).map_err(err)?);
                }
            }
        }
        Ok(r)
    }

    /// The Kubernetes resource list, for writing Node capacity or status.
    pub fn to_quantities(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(CPU.to_string(), format_cpu_millis(self.cpu_millis));
        out.insert(MEMORY.to_string(), format_bytes(self.memory_bytes));
        out.insert(
            EPHEMERAL_STORAGE.to_string(),
            format_bytes(self.ephemeral_bytes),
        );
        out.insert(PODS.to_string(), self.pods.to_string());
        for (k, v) in &self.extended {
            out.insert(k.clone(), v.to_string());
        }
        out
    }

    pub fn extended(&self, name: &str) -> u64 {
        self.extended.get(name).copied().unwrap_or(0)
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.ephemeral_bytes += other.ephemeral_bytes;
        self.pods += other.pods;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() += v;
        }
    }

    /// `self - other`, floored at zero per resource.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut out = Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            ephemeral_bytes: self.ephemeral_bytes.saturating_sub(other.ephemeral_bytes),
            pods: self.pods.saturating_sub(other.pods),
            extended: self.extended.clone(),
        };
        for (k, v) in &other.extended {
            let e = out.extended.entry(k.clone()).or_default();
            *e = e.saturating_sub(*v);
        }
        out
    }

    /// The elementwise maximum (how Kubernetes combines init containers with the regular ones).
    pub fn max(&self, other: &Resources) -> Resources {
        let mut out = Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            ephemeral_bytes: self.ephemeral_bytes.max(other.ephemeral_bytes),
            pods: self.pods.max(other.pods),
            extended: self.extended.clone(),
        };
        for (k, v) in &other.extended {
            let e = out.extended.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
        out
    }

    /// Whether `self` (a request) fits within `available`; ephemeral storage and extended resources included.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.first_exceeding(available).is_none()
    }

    /// The first resource `self` asks more of than `available` has, by Kubernetes name.
    pub fn first_exceeding(&self, available: &Resources) -> Option<&str> {
        if self.cpu_millis > available.cpu_millis {
            return Some(CPU);
        }
        if self.memory_bytes > available.memory_bytes {
            return Some(MEMORY);
        }
        if self.pods > available.pods {
            return Some(PODS);
        }
        if self.ephemeral_bytes > available.ephemeral_bytes {
            return Some(EPHEMERAL_STORAGE);
        }
        self.extended
            .iter()
            .find(|(k, v)| **v > 0 && **v > available.extended(k))
            .map(|(k, _)| k.as_str())
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} memory={} pods={}",
            format_cpu_millis(self.cpu_millis),
            format_bytes(self.memory_bytes),
            self.pods
        )?;
        if self.ephemeral_bytes > 0 {
            write!(
                f,
                " ephemeral-storage={}",
                format_bytes(self.ephemeral_bytes)
            )?;
        }
        for (k, v) in &self.extended {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_bad_resource() {
        let r = Resources::from_quantities([
            ("cpu", "1500m"),
            ("memory", "2Gi"),
            ("nvidia.com/gpu", "2"),
        ])
        .unwrap();
        assert_eq!(
            (r.cpu_millis, r.memory_bytes, r.extended(NVIDIA_GPU)),
            (1500, 2 << 30, 2)
        );
        let err = Resources::from_quantities([("memory", "lots")]).unwrap_err();
        assert!(err.to_string().starts_with("resource memory:"), "{err}");
    }

    #[test]
    fn fit_checks_every_dimension() {
        let node =
            Resources::from_quantities([("cpu", "2"), ("memory", "4Gi"), ("pods", "10")]).unwrap();
        let gpu_pod = Resources::from_quantities([("cpu", "1"), ("nvidia.com/gpu", "1")]).unwrap();
        assert_eq!(gpu_pod.first_exceeding(&node), Some(NVIDIA_GPU));
        let big = Resources::from_quantities([("cpu", "3")]).unwrap();
        assert_eq!(big.first_exceeding(&node), Some(CPU));
        assert!(Resources::new(2000, 4 << 30).fits_in(&node));
    }

    #[test]
    fn arithmetic_saturates_and_maxes() {
        let a = Resources::from_quantities([("cpu", "1"), ("example.com/x", "3")]).unwrap();
        let b = Resources::from_quantities([("cpu", "2"), ("example.com/x", "1")]).unwrap();
        assert_eq!(a.saturating_sub(&b).cpu_millis, 0);
        assert_eq!(a.saturating_sub(&b).extended("example.com/x"), 2);
        assert_eq!(a.max(&b).cpu_millis, 2000);
        assert_eq!(a.max(&b).extended("example.com/x"), 3);
    }
}
