//! Every cloud API call goes through [`ApiCaller::call`]: wait for the rate limiter, make the call, count its
//! outcome, and retry throttles and server errors with jittered exponential backoff ("full jitter": a random delay
//! between 0 and min(cap, base·2^n)), as EC2's throttling guide advises. A 4xx other than a throttle is returned at
//! once: repeating an unchanged bad request cannot help.

use crate::cloud::action::Action;
use crate::cloud::error::CloudError;
use crate::cloud::metrics::{CloudMetrics, Outcome};
use crate::cloud::rate_limit::RateLimits;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// EC2 and Auto Scaling error codes that mean "slow down".
pub const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestThrottled",
];

pub fn is_throttle_code(code: &str) -> bool {
    THROTTLE_CODES.contains(&code)
}

/// How one call failed, classified for the retry decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Throttled {
        code: String,
        message: String,
    },
    /// HTTP 5xx (or a 5xx-class code such as InternalError / Unavailable).
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// No HTTP answer: connection refused, timeout, I/O.
    Transport {
        message: String,
    },
    /// No usable credentials, or the service rejected them.
    Credentials {
        message: String,
    },
    /// Any other error answer: the caller maps its code.
    Client {
        status: u16,
        code: String,
        message: String,
    },
}

impl Failure {
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Throttled { .. } => Outcome::Throttled,
            Failure::Server { .. } => Outcome::ServerError,
            Failure::Transport { .. } | Failure::Credentials { .. } => Outcome::TransportError,
            Failure::Client { .. } => Outcome::ClientError,
        }
    }

    fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Throttled { .. } | Failure::Server { .. } | Failure::Transport { .. }
        )
    }

    pub fn code(&self) -> &str {
        match self {
            Failure::Throttled { code, .. }
            | Failure::Server { code, .. }
            | Failure::Client { code, .. } => code,
            Failure::Transport { .. } => "Transport",
            Failure::Credentials { .. } => "Credentials",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Throttled { message, .. }
            | Failure::Server { message, .. }
            | Failure::Client { message, .. }
            | Failure::Transport { message }
            | Failure::Credentials { message } => message,
        }
    }

    /// The generic mapping, for callers with no special meaning for the code. `attempts` is how many tries were made.
    pub fn into_cloud_error(self, action: Action, attempts: u32) -> CloudError {
        match self {
            Failure::Throttled { .. } => CloudError::RateLimited {
                action: action.name(),
                attempts,
            },
            Failure::Server {
                status,
                code,
                message,
            } => CloudError::Transient {
                action: action.name(),
                message: format!("HTTP {status} {code}: {message}"),
            },
            Failure::Transport { message } => CloudError::Transient {
                action: action.name(),
                message,
            },
            Failure::Credentials { message } => CloudError::Credentials { message },
            Failure::Client { code, message, .. } => {
                if code == "AuthFailure"
                    || code == "UnrecognizedClientException"
                    || code == "InvalidClientTokenId"
                {
                    CloudError::Credentials {
                        message: format!("{code}: {message}"),
                    }
                } else {
                    CloudError::Api {
                        action: action.name(),
                        code,
                        message,
                    }
                }
            }
        }
    }
}

/// A call that failed after every allowed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub action: Action,
    pub attempts: u32,
    pub failure: Failure,
}

impl CallError {
    pub fn into_cloud_error(self) -> CloudError {
        self.failure.into_cloud_error(self.action, self.attempts)
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Total tries, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // More patient than the SDK's 3 attempts: berth already paces itself, so a throttle means another client
        // of the account is busy, and a launch that waits is better than a Machine that fails.
        Backoff {
            max_attempts: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry `retry` (0-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u64 << retry.min(30);
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.cap)
    }
}

/// A small deterministic generator (splitmix64) for jitter: seeded from the clock in production, fixed in tests.
#[derive(Debug)]
pub struct Jitter(Mutex<u64>);

impl Jitter {
    pub fn seeded(seed: u64) -> Jitter {
        Jitter(Mutex::new(seed))
    }

    /// A fraction in [0, 1).
    pub fn next_fraction(&self) -> f64 {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rate limiting, retries and metrics for one cloud client.
pub struct ApiCaller {
    pub limits: RateLimits,
    pub metrics: CloudMetrics,
    pub backoff: Backoff,
    jitter: Jitter,
}

impl ApiCaller {
    pub fn new(
        limits: RateLimits,
        metrics: CloudMetrics,
        backoff: Backoff,
        jitter_seed: u64,
    ) -> ApiCaller {
        ApiCaller {
            limits,
            metrics,
            backoff,
            jitter: Jitter::seeded(jitter_seed),
        }
    }

    /// Makes the call `f` (which may be invoked several times), charging `instances` to the resource bucket.
    pub async fn call<T, F, Fut>(
        &self,
        action: Action,
        instances: u32,
        mut f: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            self.limits.acquire(action, instances).await;
            attempt += 1;
            match f().await {
                Ok(v) => {
                    self.metrics.record_call(action, Outcome::Success);
                    return Ok(v);
                }
                Err(failure) => {
                    self.metrics.record_call(action, failure.outcome());
                    if !failure.retryable() || attempt >= self.backoff.max_attempts {
                        if failure.retryable() {
                            tracing::warn!(
                                action = action.name(),
                                attempt,
                                code = failure.code(),
                                "giving up after retries"
                            );
                        }
                        return Err(CallError {
                            action,
                            attempts: attempt,
                            failure,
                        });
                    }
                    let delay = self
                        .backoff
                        .ceiling(attempt - 1)
                        .mul_f64(self.jitter.next_fraction());
                    tracing::debug!(
                        action = action.name(),
                        attempt,
                        code = failure.code(),
                        ?delay,
                        "retrying"
                    );
                    self.metrics.record_retry(action);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn caller() -> ApiCaller {
        let m = CloudMetrics::unregistered().unwrap();
        ApiCaller::new(
            RateLimits::ec2_defaults(m.clone()),
            m,
            Backoff::default(),
            7,
        )
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(10), Duration::from_secs(20));
        assert_eq!(b.ceiling(100), Duration::from_secs(20));
    }

    #[test]
    fn jitter_is_deterministic_and_in_range() {
        let a = Jitter::seeded(1);
        let b = Jitter::seeded(1);
        for _ in 0..1000 {
            let x = a.next_fraction();
            assert_eq!(x, b.next_fraction());
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_are_retried_then_succeed() {
        let c = caller();
        let tries = AtomicU32::new(0);
        let r: Result<u32, _> = c
            .call(Action::DescribeInstances, 1, || async {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    Err(Failure::Throttled {
                        code: "RequestLimitExceeded".into(),
                        message: "slow".into(),
                    })
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(
            c.metrics
                .calls(Action::DescribeInstances, Outcome::Throttled),
            2
        );
        assert_eq!(
            c.metrics.calls(Action::DescribeInstances, Outcome::Success),
            1
        );
        assert_eq!(c.metrics.retries(Action::DescribeInstances), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried_and_server_errors_give_up() {
        let c = caller();
        let tries = AtomicU32::new(0);
        let r: Result<(), _> = c
            .call(Action::DescribeImages, 1, || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(Failure::Client {
                    status: 400,
                    code: "InvalidAMIID.Malformed".into(),
                    message: "bad".into(),
                })
            })
            .await;
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert_eq!(r.unwrap_err().into_cloud_error().category(), "api");

        let tries = AtomicU32::new(0);
        let r: Result<(), _> = c
            .call(Action::DescribeImages, 1, || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(Failure::Server {
                    status: 503,
                    code: "Unavailable".into(),
                    message: "down".into(),
                })
            })
            .await;
        assert_eq!(tries.load(Ordering::SeqCst), 6);
        let e = r.unwrap_err();
        assert_eq!(e.attempts, 6);
        assert_eq!(e.into_cloud_error().category(), "transient");
    }
}
