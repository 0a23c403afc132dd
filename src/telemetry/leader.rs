//! Leader election with a coordination.k8s.io/v1 Lease: of several replicas, one acts.
//!
//! The decision is pure ([`decide`]): given the Lease as read, who we are and the time, acquire, renew, or wait.
//! The loop around it reads and writes the Lease with optimistic concurrency (a write with a stale
//! resourceVersion fails with 409, so two candidates can never both win the same round), publishes leadership on a
//! watch channel, and steps down *at once* when it cannot renew before the renew deadline: a leader that might
//! have lost its Lease stops acting before anyone else can acquire it (renew deadline < lease duration), so there
//! is never a moment with two leaders.

use crate::clock::{from_k8s, to_k8s, SharedClock};
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {reason}")]
    Api {
        namespace: String,
        name: String,
        reason: String,
    },
}

impl LeaderError {
    pub fn category(&self) -> &'static str {
        match self {
            LeaderError::Api { .. } => "lease_api",
        }
    }
}

/// Timing of the election. Defaults: a dead leader is replaced within `lease_duration + retry_period` (12 s).
#[derive(Debug, Clone, Copy)]
pub struct LeaderTiming {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down (must be shorter than lease_duration).
    pub renew_deadline: Duration,
    /// How often candidates and the leader try.
    pub retry_period: Duration,
}

impl Default for LeaderTiming {
    fn default() -> Self {
        LeaderTiming {
            lease_duration: Duration::seconds(10),
            renew_deadline: Duration::seconds(7),
            retry_period: Duration::seconds(2),
        }
    }
}

/// The part of a Lease the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<DateTime<Utc>>,
    pub duration_seconds: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// It is free or expired: take it over.
    TakeOver,
    /// Someone else holds a valid Lease.
    Wait,
}

/// What to do with the Lease as read.
pub fn decide(lease: Option<&LeaseView>, me: &str, now: DateTime<Utc>) -> LeaseAction {
    let Some(lease) = lease else {
        return LeaseAction::Create;
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::TakeOver,
        Some(_) => {
            let expired = lease
                .renewed
                .is_none_or(|t| now > t + Duration::seconds(lease.duration_seconds.max(1)));
            if expired {
                LeaseAction::TakeOver
            } else {
                LeaseAction::Wait
            }
        }
    }
}

fn view(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed: spec
            .renew_time
            .map(|t| from_k8s(t.0))
            .or(spec.acquire_time.map(|t| from_k8s(t.0))),
        duration_seconds: spec.lease_duration_seconds.unwrap_or(15) as i64,
    }
}

/// A candidate for leadership.
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaderTiming,
    clock: SharedClock,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaderTiming,
        clock: SharedClock,
    ) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            timing,
            clock,
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> LeaderError {
        LeaderError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// One round: read, decide, write. Returns whether we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let now = self.clock.now();
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?;
        let duration = self.timing.lease_duration.num_seconds() as i32;
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(MicroTime(to_k8s(now))),
                        renew_time: Some(MicroTime(to_k8s(now))),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                // Two candidates creating at once: the second gets 409 AlreadyExists.
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Some(mut lease) => {
                let action = decide(Some(&view(&lease)), &self.identity, now);
                if action == LeaseAction::Wait {
                    return Ok(false);
                }
                let mut spec = lease.spec.clone().unwrap_or_default();
                if action == LeaseAction::TakeOver {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.acquire_time = Some(MicroTime(to_k8s(now)));
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(MicroTime(to_k8s(now)));
                lease.spec = Some(spec);
                // `replace` carries the resourceVersion we read: a concurrent writer makes this fail with 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the Lease up (on shutdown), so a standby takes over at once instead of after the lease duration.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Runs the election until `shutdown` resolves, publishing leadership on the returned channel; releases the
    /// Lease on the way out if held.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut last_renewal: Option<DateTime<Utc>> = None;
        let retry = self
            .timing
            .retry_period
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(2));
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Some(self.clock.now());
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(identity = %self.identity, "lost the lease to another replica; stepping down");
                    }
                    last_renewal = None;
                    leading.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    let overdue = last_renewal
                        .is_none_or(|t| self.clock.now() - t >= self.timing.renew_deadline);
                    if *leading.borrow() && overdue {
                        tracing::warn!(identity = %self.identity, "could not renew within the renew deadline; stepping down");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "could not release the lease");
            } else {
                tracing::info!(identity = %self.identity, "released the lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: i64) -> LeaseView {
        LeaseView {
            holder: holder.map(String::from),
            renewed: Some(at(renewed)),
            duration_seconds: 10,
        }
    }

    #[test]
    fn decision_table() {
        assert_eq!(decide(None, "a", at(0)), LeaseAction::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"), 0)), "a", at(5)),
            LeaseAction::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", at(5)),
            LeaseAction::Wait
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", at(10)),
            LeaseAction::Wait
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", at(11)),
            LeaseAction::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(None, 0)), "a", at(1)),
            LeaseAction::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(Some(""), 0)), "a", at(1)),
            LeaseAction::TakeOver
        );
    }

    #[test]
    fn default_timing_steps_down_before_anyone_can_take_over() {
        let t = LeaderTiming::default();
        assert!(t.renew_deadline < t.lease_duration);
        // A standby notices an expired lease within one retry period: takeover well within 15 s.
        assert!(t.lease_duration + t.retry_period <= Duration::seconds(15));
    }
}
