//! Kubernetes label selectors (`matchLabels` and `matchExpressions` with In, NotIn, Exists, DoesNotExist), as
//! used by MachineSets, MachineDeployments, PodDisruptionBudgets and pod (anti-)affinity.
//!
//! An empty selector matches everything; a missing one (None at the call site) matches nothing, as in Kubernetes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "selector operator {operator:?} on key {key:?} is not In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator { key: String, operator: String },
    #[error("selector operator {operator} on key {key:?} needs values")]
    MissingValues { key: String, operator: String },
    #[error("selector operator {operator} on key {key:?} takes no values")]
    UnexpectedValues { key: String, operator: String },
}

impl SelectorError {
    pub fn category(&self) -> &'static str {
        match self {
            SelectorError::UnknownOperator { .. } => "unknown_operator",
            SelectorError::MissingValues { .. } => "missing_values",
            SelectorError::UnexpectedValues { .. } => "unexpected_values",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Term {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    terms: Vec<Term>,
}

impl Selector {
    pub fn from_api(selector: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut terms = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            terms.push(Term::In(k.clone(), vec![v.clone()]));
        }
        for e in selector.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let err_missing = || SelectorError::MissingValues {
                key: e.key.clone(),
                operator: e.operator.clone(),
            };
            let err_unexpected = || SelectorError::UnexpectedValues {
                key: e.key.clone(),
                operator: e.operator.clone(),
            };
            terms.push(match e.operator.as_str() {
                "In" if values.is_empty() => return Err(err_missing()),
                "NotIn" if values.is_empty() => return Err(err_missing()),
                "In" => Term::In(e.key.clone(), values),
                "NotIn" => Term::NotIn(e.key.clone(), values),
                "Exists" if !values.is_empty() => return Err(err_unexpected()),
                "DoesNotExist" if !values.is_empty() => return Err(err_unexpected()),
                "Exists" => Term::Exists(e.key.clone()),
                "DoesNotExist" => Term::DoesNotExist(e.key.clone()),
                other => {
                    return Err(SelectorError::UnknownOperator {
                        key: e.key.clone(),
                        operator: other.to_string(),
                    })
                }
            });
        }
        Ok(Selector { terms })
    }

    /// `key=value` pairs only.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Selector {
        Selector {
            terms: labels
                .iter()
                .map(|(k, v)| Term::In(k.clone(), vec![v.clone()]))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Term::Exists(k) => labels.contains_key(k),
            Term::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// The string form (`a=b,c in (d,e),!f`), as the scale subresource's status.selector and kubectl's -l take it.
    pub fn to_query(&self) -> String {
        self.terms
            .iter()
            .map(|t| match t {
                Term::In(k, vs) if vs.len() == 1 => format!("{k}={}", vs[0]),
                Term::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Term::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Term::Exists(k) => k.clone(),
                Term::DoesNotExist(k) => format!("!{k}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|s| s.to_string()).collect())
            },
        }
    }

    #[test]
    fn matching_table() {
        let sel = Selector::from_api(&LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["a", "b"]),
                expr("canary", "DoesNotExist", &[]),
                expr("zone", "NotIn", &["z"]),
            ]),
        })
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "a"), ("canary", "")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "a"), ("zone", "z")])));
        assert!(!sel.matches(&labels(&[("tier", "a")])));
        assert_eq!(
            sel.to_query(),
            "app=web,tier in (a,b),!canary,zone notin (z)"
        );
        assert!(Selector::from_api(&LabelSelector::default())
            .unwrap()
            .matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        let bad = |e| {
            Selector::from_api(&LabelSelector {
                match_expressions: Some(vec![e]),
                ..Default::default()
            })
        };
        assert!(matches!(
            bad(expr("k", "Equals", &["v"])),
            Err(SelectorError::UnknownOperator { .. })
        ));
        assert!(matches!(
            bad(expr("k", "In", &[])),
            Err(SelectorError::MissingValues { .. })
        ));
        assert!(matches!(
            bad(expr("k", "Exists", &["v"])),
            Err(SelectorError::UnexpectedValues { .. })
        ));
    }
}
