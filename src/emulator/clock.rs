//! The emulator's notion of "now" (berth's injectable clock) and the timestamp formats the API server writes.

use chrono::{DateTime, SubsecRound, Utc};

/// The emulator runs on berth's one clock, so a simulation hands the same virtual clock to both.
pub use crate::clock::{Clock, SharedClock, SystemClock};

/// RFC 3339 with second precision and a `Z`, the format metav1.Time serialises to.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.trunc_subsecs(0).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// metav1.MicroTime format (used by Leases and Events).
pub fn format_micro_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
