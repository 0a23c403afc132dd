//! Taints and tolerations with Kubernetes' matching rules.
//!
//! A toleration matches a taint when its effect is empty or equal, its key is empty (only with `Exists`, which then
//! matches every taint) or equal, and, for `Equal` (the default operator), the values are equal. A pod fits a node
//! for scheduling when every `NoSchedule` and `NoExecute` taint is tolerated; `PreferNoSchedule` is a preference.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaintError {
    #[error("unknown taint effect {0:?}; expected NoSchedule, PreferNoSchedule or NoExecute")]
    UnknownEffect(String),
    #[error("unknown toleration operator {0:?}; expected Equal or Exists")]
    UnknownOperator(String),
    #[error("a toleration with operator Exists must not have a value (got {0:?})")]
    ExistsWithValue(String),
    #[error("a toleration with an empty key must use operator Exists")]
    EmptyKeyNeedsExists,
    #[error("taint key must not be empty")]
    EmptyTaintKey,
}

impl TaintError {
    pub fn category(&self) -> &'static str {
        match self {
            TaintError::UnknownEffect(_) => "unknown_effect",
            TaintError::UnknownOperator(_) => "unknown_operator",
            TaintError::ExistsWithValue(_) => "exists_with_value",
            TaintError::EmptyKeyNeedsExists => "empty_key",
            TaintError::EmptyTaintKey => "empty_taint_key",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn parse(s: &str) -> Result<TaintEffect, TaintError> {
        match s {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            other => Err(TaintError::UnknownEffect(other.to_string())),
        }
    }

    /// Whether an untolerated taint of this effect keeps new pods off the node.
    pub fn blocks_scheduling(self) -> bool {
        matches!(self, TaintEffect::NoSchedule | TaintEffect::NoExecute)
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

impl Taint {
    pub fn new(key: &str, value: &str, effect: TaintEffect) -> Result<Taint, TaintError> {
        if key.is_empty() {
            return Err(TaintError::EmptyTaintKey);
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect,
        })
    }
}

impl fmt::Display for Taint {
    /// `key=value:Effect`, the form kubectl and the kubelet's `--register-with-taints` use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TolerationOperator {
    Equal,
    Exists,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// Empty matches every key (only with Exists).
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    /// None matches every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Builds a toleration from the API's strings, validating it as the API server does.
    pub fn new(
        key: &str,
        operator: &str,
        value: &str,
        effect: &str,
    ) -> Result<Toleration, TaintError> {
        let operator = match operator {
            "" | "Equal" => TolerationOperator::Equal,
            "Exists" => TolerationOperator::Exists,
            other => return Err(TaintError::UnknownOperator(other.to_string())),
        };
        if operator == TolerationOperator::Exists && !value.is_empty() {
            return Err(TaintError::ExistsWithValue(value.to_string()));
        }
        if key.is_empty() && operator != TolerationOperator::Exists {
            return Err(TaintError::EmptyKeyNeedsExists);
        }
        let effect = if effect.is_empty() {
            None
        } else {
            Some(TaintEffect::parse(effect)?)
        };
        Ok(Toleration {
            key: key.to_string(),
            operator,
            value: value.to_string(),
            effect,
        })
    }

    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// The first taint that keeps a pod with these tolerations off a node, if any.
pub fn first_blocking_taint<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect.blocks_scheduling())
        .find(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// How many PreferNoSchedule taints a pod does not tolerate: the scheduler's soft penalty.
pub fn untolerated_preferences(taints: &[Taint], tolerations: &[Toleration]) -> usize {
    taints
        .iter()
        .filter(|t| t.effect == TaintEffect::PreferNoSchedule)
        .filter(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint::new(key, value, TaintEffect::parse(effect).unwrap()).unwrap()
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        Toleration::new(key, op, value, effect).unwrap()
    }

    #[test]
    fn toleration_matching_table() {
        let t = taint("key1", "value1", "NoSchedule");
        let cases = [
            (tol("key1", "Equal", "value1", "NoSchedule"), true),
            (tol("key1", "", "value1", "NoSchedule"), true), // the default operator is Equal
            (tol("key1", "Exists", "", "NoSchedule"), true),
            (tol("key1", "Equal", "value1", ""), true), // empty effect matches all effects
            (tol("key1", "Equal", "value2", "NoSchedule"), false),
            (tol("key1", "Equal", "value1", "NoExecute"), false),
            (tol("key2", "Exists", "", ""), false),
            (tol("", "Exists", "", ""), true), // empty key with Exists tolerates everything
            (tol("", "Exists", "", "NoExecute"), false),
            (tol("key1", "Equal", "", "NoSchedule"), false),
        ];
        for (i, (toleration, want)) in cases.iter().enumerate() {
            assert_eq!(toleration.tolerates(&t), *want, "case {i}: {toleration:?}");
        }
    }

    #[test]
    fn scheduling_is_blocked_by_hard_effects_only() {
        let taints = vec![
            taint("a", "", "NoSchedule"),
            taint("b", "x", "PreferNoSchedule"),
            taint("c", "y", "NoExecute"),
        ];
        assert_eq!(
            first_blocking_taint(&taints, &[]).map(|t| t.key.as_str()),
            Some("a")
        );
        let tolerate_a = vec![tol("a", "Exists", "", "")];
        assert_eq!(
            first_blocking_taint(&taints, &tolerate_a).map(|t| t.key.as_str()),
            Some("c")
        );
        let tolerate_a_c = vec![
            tol("a", "Exists", "", ""),
            tol("c", "Equal", "y", "NoExecute"),
        ];
        assert_eq!(first_blocking_taint(&taints, &tolerate_a_c), None);
        assert_eq!(untolerated_preferences(&taints, &tolerate_a_c), 1);
    }

    #[test]
    fn invalid_tolerations_are_rejected() {
        assert_eq!(
            Toleration::new("k", "Exists", "v", ""),
            Err(TaintError::ExistsWithValue("v".into()))
        );
        assert_eq!(
            Toleration::new("", "Equal", "v", ""),
            Err(TaintError::EmptyKeyNeedsExists)
        );
        assert_eq!(
            Toleration::new("k", "Lt", "1", ""),
            Err(TaintError::UnknownOperator("Lt".into()))
        );
        assert_eq!(
            Toleration::new("k", "Equal", "v", "Sometimes"),
            Err(TaintError::UnknownEffect("Sometimes".into()))
        );
        assert_eq!(
            Taint::new("", "v", TaintEffect::NoSchedule),
            Err(TaintError::EmptyTaintKey)
        );
    }

    #[test]
    fn display_matches_kubectl_form() {
        assert_eq!(
            taint("dedicated", "gpu", "NoSchedule").to_string(),
            "dedicated=gpu:NoSchedule"
        );
        assert_eq!(
            taint("spot", "", "PreferNoSchedule").to_string(),
            "spot:PreferNoSchedule"
        );
    }
}
