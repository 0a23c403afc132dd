//! Errors of the emulated API server, each mapped to the metav1 Status a real kube-apiserver returns.

use serde_json::{json, Value};

/// An API error as the real server reports it: HTTP code, machine-readable reason, human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request body or a parameter could not be understood.
    #[error("{0}")]
    BadRequest(String),
    /// 404: the kind, namespace or object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: the verb is not supported on this path.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406: the client asked for a representation the emulator cannot produce (protobuf).
    #[error("{0}")]
    NotAcceptable(String),
    /// 409 AlreadyExists: create of a name that is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// 409 Conflict: stale resourceVersion, or server-side apply field conflict.
    #[error("{0}")]
    Conflict(String),
    /// 410 Expired: the requested resourceVersion is older than the retained history.
    #[error("{0}")]
    Gone(String),
    /// 413: the request body exceeds the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: the patch content type is not one the server knows.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422 Invalid: the object violates its schema; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// 429 TooManyRequests: an eviction forbidden by a PodDisruptionBudget.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500: a stored object could not be decoded; never expected, reported instead of panicking.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Short static category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::NotAcceptable(_) => "not_acceptable",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::Conflict(_) => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Invalid(_) => "invalid",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::Internal(_) => "internal",
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NotAcceptable(_) => 406,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => 409,
            ApiError::Gone(_) => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid(_) => 422,
            ApiError::TooManyRequests(_) => 429,
            ApiError::Internal(_) => 500,
        }
    }

    /// metav1 Status reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Gone(_) => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid(_) => "Invalid",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The metav1 Status object for this error.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        })
    }

    /// 404 for a named object, worded like the real server: `pods "x" not found`.
    pub fn object_not_found(resource: &str, group: &str, name: &str) -> Self {
        ApiError::NotFound(format!(
            "{} \"{}\" not found",
            qualified(resource, group),
            name
        ))
    }
}

/// `resource` or `resource.group`, as the real server names kinds in messages.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}
