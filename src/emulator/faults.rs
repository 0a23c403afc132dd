//! API faults: a share of requests answered as a struggling API server answers them, so berth's convergence can
//! be proven under them (`berth emulate --api-faults`, a scenario's `faults.api`, `berth bench chaos`).
//!
//! A fault is chosen per request, by a seeded generator: the same seed and the same order of requests give the
//! same faults. Every request can be hit, reads and writes, lists and watches alike; a write answered with a fault
//! is not applied (as kube-apiserver's 429 and 503 promise), so berth can retry it.

use crate::fx::splitmix64;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// One way a request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiFaultKind {
    /// 500 Internal Server Error.
    InternalError,
    /// 503 Service Unavailable (an API server restarting, etcd unreachable).
    Unavailable,
    /// 429 Too Many Requests with Retry-After: 1 (API Priority and Fairness shedding load).
    TooManyRequests,
    /// No answer for [`ApiFaults::timeout`], then 504 Gateway Timeout (a load balancer giving up).
    Timeout,
    /// A watch stream cut after a few seconds, as a dropped connection cuts it (other requests unaffected).
    CutWatch,
    /// The watch history forgotten: a watch resuming from a resourceVersion gets 410 Gone and must list again.
    ExpireWatches,
}

impl ApiFaultKind {
    pub const ALL: [ApiFaultKind; 6] = [
        ApiFaultKind::InternalError,
        ApiFaultKind::Unavailable,
        ApiFaultKind::TooManyRequests,
        ApiFaultKind::Timeout,
        ApiFaultKind::CutWatch,
        ApiFaultKind::ExpireWatches,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ApiFaultKind::InternalError => "500",
            ApiFaultKind::Unavailable => "503",
            ApiFaultKind::TooManyRequests => "429",
            ApiFaultKind::Timeout => "timeout",
            ApiFaultKind::CutWatch => "cut-watch",
            ApiFaultKind::ExpireWatches => "gone",
        }
    }

    /// Whether this kind can hit a request (only watches are cut).
    fn applies(self, is_watch: bool) -> bool {
        !matches!(self, ApiFaultKind::CutWatch) || is_watch
    }
}

impl fmt::Display for ApiFaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault option that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    #[error(
        "unknown API fault kind {0:?}: expected one of 500, 503, 429, timeout, cut-watch, gone"
    )]
    UnknownKind(String),
    #[error("the share of requests to fail must be a number from 0 to 1, not {0:?}")]
    Share(String),
    #[error("no fault kind given")]
    NoKinds,
}

impl FromStr for ApiFaultKind {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiFaultKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| FaultSpecError::UnknownKind(s.trim().to_string()))
    }
}

/// A share from 0 to 1 (`0.05`, or `5%`).
pub fn parse_share(s: &str) -> Result<f64, FaultSpecError> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| FaultSpecError::Share(s.to_string()))?;
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(FaultSpecError::Share(s.to_string()))
    }
}

/// A comma-separated list of kinds (`500,503,429,timeout,cut-watch,gone`, or `all`).
pub fn parse_kinds(s: &str) -> Result<Vec<ApiFaultKind>, FaultSpecError> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(ApiFaultKind::ALL.to_vec());
    }
    let mut kinds: Vec<ApiFaultKind> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        return Err(FaultSpecError::NoKinds);
    }
    Ok(kinds)
}

/// [`parse_share`] as a clap value parser (`--api-faults`, `--cloud-errors`).
pub fn share_arg(s: &str) -> Result<f64, String> {
    parse_share(s).map_err(|e| e.to_string())
}

/// [`parse_kinds`] as a clap value parser (`--api-fault-kinds`).
pub fn kinds_arg(s: &str) -> Result<ApiFaultKinds, String> {
    parse_kinds(s).map(ApiFaultKinds).map_err(|e| e.to_string())
}

/// A list of fault kinds, as one command-line value (`--api-fault-kinds 503,429`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFaultKinds(pub Vec<ApiFaultKind>);

/// What faults to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFaults {
    /// The share of requests that fail, 0 to 1.
    pub share: f64,
    pub kinds: Vec<ApiFaultKind>,
    pub seed: u64,
    /// How long a timed-out request hangs before its 504.
    pub timeout: Duration,
}

impl ApiFaults {
    pub fn new(share: f64, kinds: Vec<ApiFaultKind>, seed: u64) -> ApiFaults {
        ApiFaults {
            share,
            kinds,
            seed,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the injector decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Serve,
    Fail(ApiFaultKind),
}

/// Chooses the fault of each request.
pub struct FaultInjector {
    faults: ApiFaults,
    state: Mutex<u64>,
    served: Mutex<std::collections::BTreeMap<ApiFaultKind, u64>>,
}

impl FaultInjector {
    pub fn new(faults: ApiFaults) -> FaultInjector {
        let seed = faults.seed;
        FaultInjector {
            faults,
            state: Mutex::new(seed),
            served: Mutex::default(),
        }
    }

    pub fn faults(&self) -> &ApiFaults {
        &self.faults
    }

    /// The next request's fate.
    pub fn decide(&self, is_watch: bool) -> Decision {
        let kinds: Vec<ApiFaultKind> = self
            .faults
            .kinds
            .iter()
            .copied()
            .filter(|k| k.applies(is_watch))
            .collect();
        if kinds.is_empty() || self.faults.share <= 0.0 {
            return Decision::Serve;
        }
        let (roll, pick) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (splitmix64(&mut state), splitmix64(&mut state))
        };
        // 53 random bits as a fraction in [0, 1).
        let fraction = (roll >> 11) as f64 / (1u64 << 53) as f64;
        if fraction >= self.faults.share {
            return Decision::Serve;
        }
        let kind = kinds[(pick % kinds.len() as u64) as usize];
        *self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        Decision::Fail(kind)
    }

    /// Faults served so far, by kind.
    pub fn served(&self) -> std::collections::BTreeMap<ApiFaultKind, u64> {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_shares_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_kinds("503, 429,timeout").unwrap(),
            vec![
                ApiFaultKind::Unavailable,
                ApiFaultKind::TooManyRequests,
                ApiFaultKind::Timeout
            ]
        );
        assert_eq!(parse_kinds("all").unwrap().len(), 6);
        assert_eq!(
            parse_kinds("503,teapot").unwrap_err().to_string(),
            "unknown API fault kind \"teapot\": expected one of 500, 503, 429, timeout, cut-watch, gone"
        );
        assert_eq!(parse_kinds(" , ").unwrap_err(), FaultSpecError::NoKinds);
        assert_eq!(parse_share("0.05").unwrap(), 0.05);
        assert_eq!(parse_share("5%").unwrap(), 0.05);
        for bad in ["1.5", "-0.1", "NaN", "inf", "lots"] {
            assert!(
                matches!(parse_share(bad), Err(FaultSpecError::Share(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn about_the_share_of_requests_fail_and_the_same_seed_fails_the_same_ones() {
        let run = |seed| {
            let f = FaultInjector::new(ApiFaults::new(0.1, ApiFaultKind::ALL.to_vec(), seed));
            (0..10_000)
                .map(|i| f.decide(i % 2 == 0))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        let failed = a.iter().filter(|d| **d != Decision::Serve).count();
        assert!((800..1200).contains(&failed), "{failed} of 10000 failed");
        // Only watches (the even requests) are cut.
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, d)| *d != Decision::Fail(ApiFaultKind::CutWatch) || i % 2 == 0));
    }
}
