//! Counters for every cloud API call: outcome per call, retries, and how often and how long the client-side rate
//! limiter made a call wait. Labels are bounded: `action` is one of [`Action`]'s names, `outcome` one of
//! [`Outcome`]'s.

use crate::cloud::action::Action;
use prometheus::{CounterVec, IntCounterVec, Opts, Registry};

/// How one API call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// RequestLimitExceeded / Throttling.
    Throttled,
    /// HTTP 5xx.
    ServerError,
    /// Any other error the API answered with (4xx).
    ClientError,
    /// No answer: connection, timeout, credentials not loadable.
    TransportError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Throttled => "throttled",
            Outcome::ServerError => "server_error",
            Outcome::ClientError => "client_error",
            Outcome::TransportError => "transport_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudMetrics {
    calls: IntCounterVec,
    retries: IntCounterVec,
    limiter_waits: IntCounterVec,
    limiter_wait_seconds: CounterVec,
}

impl CloudMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<CloudMetrics, prometheus::Error> {
        let m = CloudMetrics::unregistered()?;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.limiter_waits.clone()))?;
        registry.register(Box::new(m.limiter_wait_seconds.clone()))?;
        // Every action's retry and wait counters exist from the start, at zero: a dashboard then shows "no waits"
        // instead of "no data", and rate() over a counter's first increase is not lost.
        for action in Action::ALL {
            m.retries.with_label_values(&[action.name()]);
            m.limiter_waits.with_label_values(&[action.name()]);
            m.limiter_wait_seconds.with_label_values(&[action.name()]);
        }
        Ok(m)
    }

    /// Counters not registered anywhere (tests, benchmarks that read them directly).
    pub fn unregistered() -> Result<CloudMetrics, prometheus::Error> {
        Ok(CloudMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "berth_cloud_api_calls_total",
                    "Cloud API calls by action and outcome.",
                ),
                &["action", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "berth_cloud_api_retries_total",
                    "Cloud API calls retried after a throttle or a 5xx.",
                ),
                &["action"],
            )?,
            limiter_waits: IntCounterVec::new(
                Opts::new(
                    "berth_cloud_rate_limiter_waits_total",
                    "Calls the client-side rate limiter held back so EC2 would not throttle them.",
                ),
                &["action"],
            )?,
            limiter_wait_seconds: CounterVec::new(
                Opts::new(
                    "berth_cloud_rate_limiter_wait_seconds_total",
                    "Time calls spent waiting for the rate limiter.",
                ),
                &["action"],
            )?,
        })
    }

    /// The names of the metric families these counters export.
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        [
            self.calls.desc(),
            self.retries.desc(),
            self.limiter_waits.desc(),
            self.limiter_wait_seconds.desc(),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.fq_name.clone())
        .collect()
    }

    pub fn record_call(&self, action: Action, outcome: Outcome) {
        self.calls
            .with_label_values(&[action.name(), outcome.as_str()])
            .inc();
    }

    pub fn record_retry(&self, action: Action) {
        self.retries.with_label_values(&[action.name()]).inc();
    }

    pub fn record_limiter_wait(&self, action: Action, seconds: f64) {
        self.limiter_waits.with_label_values(&[action.name()]).inc();
        self.limiter_wait_seconds
            .with_label_values(&[action.name()])
            .inc_by(seconds);
    }

    pub fn calls(&self, action: Action, outcome: Outcome) -> u64 {
        self.calls
            .with_label_values(&[action.name(), outcome.as_str()])
            .get()
    }

    /// Calls of every action with this outcome.
    pub fn total_calls(&self, outcome: Outcome) -> u64 {
        Action::ALL.iter().map(|a| self.calls(*a, outcome)).sum()
    }

    pub fn retries(&self, action: Action) -> u64 {
        self.retries.with_label_values(&[action.name()]).get()
    }

    pub fn limiter_waits(&self, action: Action) -> u64 {
        self.limiter_waits.with_label_values(&[action.name()]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_and_counts() {
        let registry = Registry::new();
        let m = CloudMetrics::register(&registry).unwrap();
        m.record_call(Action::CreateFleet, Outcome::Success);
        m.record_call(Action::CreateFleet, Outcome::Throttled);
        m.record_call(Action::RunInstances, Outcome::Throttled);
        m.record_limiter_wait(Action::CreateFleet, 0.2);
        assert_eq!(m.calls(Action::CreateFleet, Outcome::Success), 1);
        assert_eq!(m.total_calls(Outcome::Throttled), 2);
        assert_eq!(m.limiter_waits(Action::CreateFleet), 1);
        assert!(
            CloudMetrics::register(&registry).is_err(),
            "a second registration must be refused"
        );
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"berth_cloud_api_calls_total".to_string()));
    }
}
