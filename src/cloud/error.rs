//! The cloud's typed errors. `category()` is the Event reason and the metric label; the controller decides from the
//! variant whether to wait for a spec change (invalid configuration), re-plan (insufficient capacity) or back off.

use crate::cloud::OfferingKey;

/// One offering that could not be launched, with EC2's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferingFailure {
    pub offering: OfferingKey,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// Every candidate offering failed for lack of capacity (or a capacity-like quota); they are now in the
    /// unavailable-offerings cache and the planner will pick others.
    #[error("insufficient capacity for every candidate offering: {}", summarize(.offerings))]
    InsufficientCapacity { offerings: Vec<OfferingFailure> },

    /// EC2 kept answering RequestLimitExceeded/Throttling after every retry.
    #[error("{action}: rate limited after {attempts} attempts")]
    RateLimited { action: &'static str, attempts: u32 },

    /// A named resource does not exist (instance, group, launch template).
    #[error("{what} not found")]
    NotFound { what: String },

    /// The class or request cannot work as written: a missing AMI, subnet or security group, requirements no
    /// instance type satisfies, a malformed template. Retrying without a change is pointless.
    #[error("invalid configuration: {message}")]
    InvalidConfiguration { message: String },

    /// The instance is not tagged for this cluster: berth never touches it.
    #[error("instance {instance_id} is not managed by cluster {cluster}")]
    NotOwned {
        instance_id: String,
        cluster: String,
    },

    /// The client token was already used with different parameters and no instance for this Machine exists;
    /// the controller must move to the next launch attempt.
    #[error("client token {client_token} was used with different launch parameters")]
    IdempotencyConflict { client_token: String },

    /// No credentials, or credentials the cloud rejects.
    #[error("AWS credentials: {message}")]
    Credentials { message: String },

    /// A failure worth retrying later (5xx, timeouts, connection errors).
    #[error("{action}: transient failure: {message}")]
    Transient {
        action: &'static str,
        message: String,
    },

    /// Any other error the API returned.
    #[error("{action}: {code}: {message}")]
    Api {
        action: &'static str,
        code: String,
        message: String,
    },
}

fn summarize(offerings: &[OfferingFailure]) -> String {
    if offerings.is_empty() {
        return "no offering was eligible".into();
    }
    let mut parts: Vec<String> = offerings
        .iter()
        .take(5)
        .map(|f| format!("{} ({})", f.offering, f.code))
        .collect();
    if offerings.len() > 5 {
        parts.push(format!("and {} more", offerings.len() - 5));
    }
    parts.join(", ")
}

impl CloudError {
    pub fn category(&self) -> &'static str {
        match self {
            CloudError::InsufficientCapacity { .. } => "insufficient-capacity",
            CloudError::RateLimited { .. } => "rate-limited",
            CloudError::NotFound { .. } => "not-found",
            CloudError::InvalidConfiguration { .. } => "invalid-configuration",
            CloudError::NotOwned { .. } => "not-owned",
            CloudError::IdempotencyConflict { .. } => "idempotency-conflict",
            CloudError::Credentials { .. } => "credentials",
            CloudError::Transient { .. } => "transient",
            CloudError::Api { .. } => "api",
        }
    }

    /// Worth retrying the same call later without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CloudError::RateLimited { .. } | CloudError::Transient { .. }
        )
    }

    /// Whether a launch that returned this error may still have started an instance (so the next try must reuse
    /// the same attempt number and client token).
    pub fn launch_may_have_happened(&self) -> bool {
        matches!(
            self,
            CloudError::RateLimited { .. } | CloudError::Transient { .. } | CloudError::Api { .. }
        )
    }

    pub fn invalid(message: impl Into<String>) -> CloudError {
        CloudError::InvalidConfiguration {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance_type::CapacityType;

    #[test]
    fn categories_are_distinct_and_messages_name_the_offering() {
        let f = OfferingFailure {
            offering: OfferingKey {
                instance_type: "m5.large".into(),
                zone: "us-east-1a".into(),
                capacity_type: CapacityType::Spot,
            },
            code: "InsufficientInstanceCapacity".into(),
            message: "none left".into(),
        };
        let e = CloudError::InsufficientCapacity { offerings: vec![f] };
        assert_eq!(e.category(), "insufficient-capacity");
        assert!(e
            .to_string()
            .contains("m5.large us-east-1a spot (InsufficientInstanceCapacity)"));
        assert!(!e.is_retryable());
        assert!(!e.launch_may_have_happened());
        let all = [
            e,
            CloudError::RateLimited {
                action: "CreateFleet",
                attempts: 3,
            },
            CloudError::NotFound { what: "x".into() },
            CloudError::invalid("x"),
            CloudError::NotOwned {
                instance_id: "i".into(),
                cluster: "c".into(),
            },
            CloudError::IdempotencyConflict {
                client_token: "t".into(),
            },
            CloudError::Credentials {
                message: "m".into(),
            },
            CloudError::Transient {
                action: "a",
                message: "m".into(),
            },
            CloudError::Api {
                action: "a",
                code: "c".into(),
                message: "m".into(),
            },
        ];
        let mut cats: Vec<_> = all.iter().map(|e| e.category()).collect();
        cats.sort();
        cats.dedup();
        assert_eq!(cats.len(), all.len());
    }
}
