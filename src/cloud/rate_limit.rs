//! Client-side rate limiting sized to EC2's own token buckets (FACTS.md §1), so berth queues its calls instead of
//! being throttled.
//!
//! EC2 keeps, per account, Region and API, a request bucket (every call takes one token) and for Run/Terminate
//! Instances also a resource bucket (one token per instance); buckets refill once a second. berth keeps one
//! governor bucket per API action with the same refill rate and a burst one refill smaller than EC2's maximum:
//! governor refills continuously while EC2 refills in whole-second steps, and the smaller burst keeps the client
//! from ever getting ahead of the server. Auto Scaling has one bucket for all its APIs whose size AWS does not
//! publish; berth uses 20 burst, 2 per second.
//!
//! Waiters queue in FIFO order (a fair mutex per bucket) so a burst of a thousand launches wakes one caller per
//! token instead of a thousand per token. Waiting is on tokio time, so tests and benchmarks may pause it.

use crate::cloud::action::{Action, BucketSize};
use crate::cloud::metrics::CloudMetrics;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// governor's clock on tokio time: instants are the time elapsed since the limiter was made.
#[derive(Debug, Clone)]
struct TokioTime {
    origin: tokio::time::Instant,
}

impl GovernorClock for TokioTime {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioTime, NoOpMiddleware<Duration>>;

struct Bucket {
    limiter: Limiter,
    clock: TokioTime,
    /// FIFO queue of waiters.
    queue: tokio::sync::Mutex<()>,
}

impl Bucket {
    fn new(size: BucketSize, origin: tokio::time::Instant) -> Bucket {
        let burst = size.max.saturating_sub(size.refill_per_second).max(1);
        let quota = Quota::per_second(
            NonZeroU32::new(size.refill_per_second.max(1)).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let clock = TokioTime { origin };
        Bucket {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            queue: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes `n` tokens, waiting in line for them; returns how long it waited.
    async fn take(&self, n: u32) -> Duration {
        let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        let started = tokio::time::Instant::now();
        let _turn = self.queue.lock().await;
        loop {
            match self.limiter.check_n(n) {
                Ok(Ok(())) => return started.elapsed(),
                Ok(Err(not_until)) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await
                }
                // More tokens than the bucket holds: take what it can hold, the rest later (only reachable with
                // batches larger than the resource bucket, which berth never sends).
                Err(insufficient) => {
                    let cap = NonZeroU32::new(insufficient.0).unwrap_or(NonZeroU32::MIN);
                    let mut left = n.get();
                    while left > 0 {
                        let chunk = NonZeroU32::new(left.min(cap.get())).unwrap_or(NonZeroU32::MIN);
                        loop {
                            match self.limiter.check_n(chunk) {
                                Ok(Ok(())) => break,
                                Ok(Err(nu)) => {
                                    tokio::time::sleep(nu.wait_time_from(self.clock.now())).await
                                }
                                Err(_) => break,
                            }
                        }
                        left -= chunk.get();
                    }
                    return started.elapsed();
                }
            }
        }
    }
}

/// The client-side buckets of one cloud client.
pub struct RateLimits {
    requests: HashMap<&'static str, Arc<Bucket>>,
    resources: HashMap<&'static str, Arc<Bucket>>,
    metrics: CloudMetrics,
}

impl RateLimits {
    /// Buckets sized to EC2's documented limits.
    pub fn ec2_defaults(metrics: CloudMetrics) -> RateLimits {
        RateLimits::with_sizes(metrics, |a| a.request_bucket(), |a| a.resource_bucket())
    }

    /// A share of EC2's documented buckets (at least one token and one per second each).
    pub fn ec2_share(metrics: CloudMetrics, share: f64) -> RateLimits {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let scale = move |b: BucketSize| BucketSize {
            max: ((b.max as f64 * share).round() as u32).max(1),
            refill_per_second: ((b.refill_per_second as f64 * share).round() as u32).max(1),
        };
        RateLimits::with_sizes(
            metrics,
            move |a| scale(a.request_bucket()),
            move |a| a.resource_bucket().map(scale),
        )
    }

    /// Buckets of any size (tests use tiny ones).
    pub fn with_sizes(
        metrics: CloudMetrics,
        request: impl Fn(Action) -> BucketSize,
        resource: impl Fn(Action) -> Option<BucketSize>,
    ) -> RateLimits {
        let origin = tokio::time::Instant::now();
        let mut requests = HashMap::new();
        let mut resources = HashMap::new();
        for a in Action::ALL {
            requests
                .entry(a.bucket_key())
                .or_insert_with(|| Arc::new(Bucket::new(request(a), origin)));
            if let Some(size) = resource(a) {
                resources.insert(a.name(), Arc::new(Bucket::new(size, origin)));
            }
        }
        RateLimits {
            requests,
            resources,
            metrics,
        }
    }

    /// Waits until one call of `action` launching or terminating `instances` instances fits in EC2's buckets.
    pub async fn acquire(&self, action: Action, instances: u32) {
        let mut waited = Duration::ZERO;
        if let Some(b) = self.requests.get(action.bucket_key()) {
            waited += b.take(1).await;
        }
        if let Some(b) = self.resources.get(action.name()) {
            waited += b.take(instances).await;
        }
        if !waited.is_zero() {
            self.metrics
                .record_limiter_wait(action, waited.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_queues_at_the_refill_rate() {
        let metrics = CloudMetrics::unregistered().unwrap();
        let limits = RateLimits::ec2_defaults(metrics.clone());
        let start = tokio::time::Instant::now();
        // CreateFleet: burst 50 − 5 = 45 free, then 5 per second: 100 calls need 55 more tokens = 11 s.
        for _ in 0..100 {
            limits.acquire(Action::CreateFleet, 1).await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(10_800) && elapsed <= Duration::from_millis(11_200),
            "{elapsed:?}"
        );
        assert_eq!(metrics.limiter_waits(Action::CreateFleet), 55);
    }

    #[tokio::test(start_paused = true)]
    async fn run_instances_charges_the_resource_bucket() {
        let limits = RateLimits::ec2_defaults(CloudMetrics::unregistered().unwrap());
        let start = tokio::time::Instant::now();
        // Resource bucket 1000 − 2 = 998 free: a first call of 998 passes, the next 4 instances wait 2 s.
        limits.acquire(Action::RunInstances, 998).await;
        assert!(start.elapsed() < Duration::from_millis(10));
        limits.acquire(Action::RunInstances, 4).await;
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(1900) && e <= Duration::from_millis(2100),
            "{e:?}"
        );
    }
}
