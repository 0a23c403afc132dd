//! The one source of "now" for everything berth and its emulator write down (timestamps, lease times, cache
//! expiries). Injected so simulations run on virtual time and tests control it; waiting uses tokio time, which
//! simulations pause and auto-advance. Nothing else in berth calls `Utc::now()`.

use chrono::{DateTime, Duration, Utc};
use std::sync::{Arc, Mutex};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock moved by hand (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A clock that follows tokio's (possibly paused) time from a fixed start: virtual time for simulations.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_wall: DateTime<Utc>,
    start_instant: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(start_wall: DateTime<Utc>) -> TokioClock {
        TokioClock {
            start_wall,
            start_instant: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start_instant);
        self.start_wall + Duration::from_std(elapsed).unwrap_or(Duration::zero())
    }
}

/// chrono time as the timestamp type of k8s-openapi's metav1.Time and MicroTime.
pub fn to_k8s(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// k8s-openapi's timestamp as chrono time.
pub fn from_k8s(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokio_clock_follows_tokio_time() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = TokioClock::new(start);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let elapsed = clock.now() - start;
        assert!(
            elapsed >= Duration::milliseconds(20) && elapsed < Duration::seconds(5),
            "{elapsed}"
        );
    }

    #[test]
    fn k8s_timestamps_round_trip() {
        let t = DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap();
        assert_eq!(from_k8s(to_k8s(t)), t);
    }

    #[test]
    fn manual_clock_moves_by_hand() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = ManualClock::new(start);
        clock.advance(Duration::seconds(5));
        assert_eq!(clock.now(), start + Duration::seconds(5));
    }
}
