//! The insufficient-capacity cache: offerings EC2 just refused (InsufficientInstanceCapacity and its relatives)
//! are unavailable for a TTL (3 minutes by default), so the planner picks other offerings instead of asking again
//! for capacity that is not there. Expiry is by the injected clock.

use crate::cloud::clock::SharedClock;
use crate::cloud::OfferingKey;
use crate::model::instance_type::Catalog;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const DEFAULT_TTL: Duration = Duration::minutes(3);

/// EC2 error codes that mean "this offering has no capacity for you now" (FACTS.md §2).
pub const CAPACITY_ERROR_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "InsufficientFreeAddressesInSubnet",
    "ReservationCapacityExceeded",
    "MaxFleetCountExceeded",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "Unsupported",
];

pub fn is_capacity_error(code: &str) -> bool {
    CAPACITY_ERROR_CODES.contains(&code)
}

pub struct UnavailableOfferings {
    clock: SharedClock,
    ttl: Duration,
    until: Mutex<HashMap<OfferingKey, DateTime<Utc>>>,
}

impl std::fmt::Debug for UnavailableOfferings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnavailableOfferings")
            .field("ttl", &self.ttl)
            .field("entries", &self.current().len())
            .finish()
    }
}

impl UnavailableOfferings {
    pub fn new(clock: SharedClock, ttl: Duration) -> UnavailableOfferings {
        UnavailableOfferings {
            clock,
            ttl,
            until: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Marks an offering unavailable until now + TTL.
    pub fn mark(&self, offering: OfferingKey) {
        let until = self.clock.now() + self.ttl;
        self.lock().insert(offering, until);
    }

    pub fn is_unavailable(&self, offering: &OfferingKey) -> bool {
        let now = self.clock.now();
        self.lock().get(offering).is_some_and(|until| *until > now)
    }

    /// The offerings unavailable now, sorted (expired entries are dropped).
    pub fn current(&self) -> Vec<OfferingKey> {
        let now = self.clock.now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        let mut keys: Vec<OfferingKey> = map.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Marks the cached offerings unavailable in a catalog; the catalog is copied only if there are any (it is
    /// read on every pass and every launch, and is usually shared as it is).
    pub fn apply(&self, catalog: &mut Arc<Catalog>) {
        let current = self.current();
        if current.is_empty() {
            return;
        }
        let catalog = Arc::make_mut(catalog);
        for k in current {
            catalog.mark_unavailable(&k.instance_type, &k.zone, k.capacity_type);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OfferingKey, DateTime<Utc>>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::clock::ManualClock;
    use crate::model::instance_type::CapacityType;
    use std::sync::Arc;

    fn key(t: &str) -> OfferingKey {
        OfferingKey {
            instance_type: t.into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
        }
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let clock = ManualClock::new(DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        let cache = UnavailableOfferings::new(Arc::new(clock.clone()), DEFAULT_TTL);
        cache.mark(key("m5.large"));
        assert!(cache.is_unavailable(&key("m5.large")));
        assert!(!cache.is_unavailable(&key("m5.xlarge")));
        clock.advance(Duration::seconds(179));
        assert_eq!(cache.current(), vec![key("m5.large")]);
        clock.advance(Duration::seconds(1));
        assert!(!cache.is_unavailable(&key("m5.large")));
        assert!(cache.current().is_empty());
    }

    #[test]
    fn capacity_codes() {
        assert!(is_capacity_error("InsufficientInstanceCapacity"));
        assert!(is_capacity_error("MaxSpotInstanceCountExceeded"));
        assert!(!is_capacity_error("InvalidParameterValue"));
    }
}
