//! The emulator's notion of "now": injectable so that simulations can run it on virtual time.

use chrono::{DateTime, SubsecRound, Utc};
use std::sync::Arc;

/// A source of wall-clock timestamps (creationTimestamp, deletionTimestamp, condition times, managedFields).
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        // The only place the emulator reads the system clock; everything else goes through `Clock`.
        Utc::now()
    }
}

/// Any closure returning a time is a clock (e.g. a virtual clock of a simulation).
impl<F> Clock for F
where
    F: Fn() -> DateTime<Utc> + Send + Sync,
{
    fn now(&self) -> DateTime<Utc> {
        self()
    }
}

/// Shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// RFC 3339 with second precision and a `Z`, the format metav1.Time serialises to.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.trunc_subsecs(0).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// metav1.MicroTime format (used by Leases and Events).
pub fn format_micro_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
