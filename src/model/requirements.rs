//! Label requirements with the operators of node affinity (In, NotIn, Exists, DoesNotExist, Gt, Lt), and their
//! intersection.
//!
//! A [`Requirements`] is one conjunction (one `nodeSelectorTerm`, a nodeSelector, a MachineClass's instance-type
//! rules or what an instance type offers). Each key's [`Requirement`] describes the set of label values it admits,
//! including whether the label may be absent, so two sets can be intersected: the planner asks "is there a node
//! that both this pod and this instance type can be?" by intersecting the pod's requirements with the offering's.
//!
//! Matching follows Kubernetes' node affinity: `In`, `Exists`, `Gt`, `Lt` need the label present; `NotIn` and
//! `DoesNotExist` are satisfied by its absence; `Gt`/`Lt` compare the value as an integer and fail when it is not one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("unknown operator {operator:?} for key {key:?}; expected In, NotIn, Exists, DoesNotExist, Gt or Lt")]
    UnknownOperator { key: String, operator: String },
    #[error("operator {operator} on key {key:?} needs at least one value")]
    MissingValues { key: String, operator: Operator },
    #[error("operator {operator} on key {key:?} takes no values, got {count}")]
    UnexpectedValues {
        key: String,
        operator: Operator,
        count: usize,
    },
    #[error("operator {operator} on key {key:?} needs exactly one integer value, got {values:?}")]
    NotAnInteger {
        key: String,
        operator: Operator,
        values: Vec<String>,
    },
}

impl RequirementError {
    pub fn category(&self) -> &'static str {
        match self {
            RequirementError::UnknownOperator { .. } => "unknown_operator",
            RequirementError::MissingValues { .. } => "missing_values",
            RequirementError::UnexpectedValues { .. } => "unexpected_values",
            RequirementError::NotAnInteger { .. } => "not_an_integer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

impl Operator {
    pub fn parse(key: &str, operator: &str) -> Result<Operator, RequirementError> {
        Ok(match operator {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            "Lt" => Operator::Lt,
            _ => {
                return Err(RequirementError::UnknownOperator {
                    key: key.into(),
                    operator: operator.into(),
                })
            }
        })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The values a key may take: a finite set, or everything but a finite set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueSet {
    Only(BTreeSet<String>),
    AllExcept(BTreeSet<String>),
}

impl ValueSet {
    pub fn any() -> ValueSet {
        ValueSet::AllExcept(BTreeSet::new())
    }

    pub fn contains(&self, value: &str) -> bool {
        match self {
            ValueSet::Only(set) => set.contains(value),
            ValueSet::AllExcept(set) => !set.contains(value),
        }
    }

    pub fn intersect(&self, other: &ValueSet) -> ValueSet {
        use ValueSet::*;
        match (self, other) {
            (Only(a), Only(b)) => Only(a.intersection(b).cloned().collect()),
            (Only(a), AllExcept(b)) | (AllExcept(b), Only(a)) => {
                Only(a.difference(b).cloned().collect())
            }
            (AllExcept(a), AllExcept(b)) => AllExcept(a.union(b).cloned().collect()),
        }
    }
}

/// What one key admits. `Requirement::default()` admits anything, including absence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// Whether a node without this label satisfies the requirement.
    pub allows_absent: bool,
    /// Which values satisfy it when the label is present.
    pub values: ValueSet,
    /// The value, read as an integer, must be greater than this (Gt).
    pub greater_than: Option<i64>,
    /// The value, read as an integer, must be less than this (Lt).
    pub less_than: Option<i64>,
}

impl Default for Requirement {
    fn default() -> Self {
        Requirement {
            allows_absent: true,
            values: ValueSet::any(),
            greater_than: None,
            less_than: None,
        }
    }
}

impl Requirement {
    /// Builds the requirement of one node-selector expression, validating it as the API server does.
    pub fn new(
        key: &str,
        operator: Operator,
        values: &[String],
    ) -> Result<Requirement, RequirementError> {
        let set = || values.iter().cloned().collect::<BTreeSet<_>>();
        let integer = || -> Result<i64, RequirementError> {
            match values {
                [one] => one
                    .parse::<i64>()
                    .map_err(|_| RequirementError::NotAnInteger {
                        key: key.into(),
                        operator,
                        values: values.to_vec(),
                    }),
                _ => Err(RequirementError::NotAnInteger {
                    key: key.into(),
                    operator,
                    values: values.to_vec(),
                }),
            }
        };
        let no_values = || {
            if values.is_empty() {
                Ok(())
            } else {
                Err(RequirementError::UnexpectedValues {
                    key: key.into(),
                    operator,
                    count: values.len(),
                })
            }
        };
        Ok(match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(RequirementError::MissingValues {
                    key: key.into(),
                    operator,
                })
            }
            Operator::In => Requirement {
                allows_absent: false,
                values: ValueSet::Only(set()),
                ..Default::default()
            },
            Operator::NotIn => Requirement {
                allows_absent: true,
                values: ValueSet::AllExcept(set()),
                ..Default::default()
            },
            Operator::Exists => {
                no_values()?;
                Requirement {
                    allows_absent: false,
                    ..Default::default()
                }
            }
            Operator::DoesNotExist => {
                no_values()?;
                Requirement {
                    allows_absent: true,
                    values: ValueSet::Only(BTreeSet::new()),
                    ..Default::default()
                }
            }
            Operator::Gt => Requirement {
                allows_absent: false,
                greater_than: Some(integer()?),
                ..Default::default()
            },
            Operator::Lt => Requirement {
                allows_absent: false,
                less_than: Some(integer()?),
                ..Default::default()
            },
        })
    }

    /// Exactly one value (`key In [value]`).
    pub fn exactly(value: impl Into<String>) -> Requirement {
        Requirement {
            allows_absent: false,
            values: ValueSet::Only([value.into()].into()),
            ..Default::default()
        }
    }

    /// Whether a label value (None for an absent label) satisfies this requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match value {
            None => self.allows_absent,
            Some(v) => self.values.contains(v) && self.within_bounds(v),
        }
    }

    fn within_bounds(&self, value: &str) -> bool {
        if self.greater_than.is_none() && self.less_than.is_none() {
            return true;
        }
        match value.parse::<i64>() {
            Ok(n) => {
                self.greater_than.is_none_or(|g| n > g) && self.less_than.is_none_or(|l| n < l)
            }
            Err(_) => false,
        }
    }

    pub fn intersect(&self, other: &Requirement) -> Requirement {
        Requirement {
            allows_absent: self.allows_absent && other.allows_absent,
            values: self.values.intersect(&other.values),
            greater_than: max_option(self.greater_than, other.greater_than),
            less_than: min_option(self.less_than, other.less_than),
        }
    }

    /// Whether some node (with or without the label) satisfies this requirement.
    pub fn is_satisfiable(&self) -> bool {
        self.allows_absent || self.has_present_value()
    }

    /// Whether some label value satisfies this requirement.
    pub fn has_present_value(&self) -> bool {
        match &self.values {
            ValueSet::Only(set) => set.iter().any(|v| self.within_bounds(v)),
            ValueSet::AllExcept(excluded) => match (self.greater_than, self.less_than) {
                (None, None) => true,
                (low, high) => {
                    // Exclusive bounds become inclusive ones; i128 so that Gt i64::MAX is empty, not saturated.
                    let low = low.map_or(i64::MIN as i128, |g| g as i128 + 1);
                    let high = high.map_or(i64::MAX as i128, |l| l as i128 - 1);
                    if low > high {
                        return false;
                    }
                    // Only finitely many integers are excluded, so a wide range always has a free one.
                    if (high - low + 1) as u128 > excluded.len() as u128 {
                        return true;
                    }
                    (low..=high).any(|n| !excluded.contains(&n.to_string()))
                }
            },
        }
    }

    /// The finite set of admitted values, if it is finite (`In`).
    pub fn finite_values(&self) -> Option<impl Iterator<Item = &String>> {
        match &self.values {
            ValueSet::Only(set) => Some(set.iter().filter(|v| self.within_bounds(v))),
            ValueSet::AllExcept(_) => None,
        }
    }
}

fn max_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) | (None, x) => x,
    }
}

fn min_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

/// A conjunction of requirements, one per key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requirements {
    by_key: BTreeMap<String, Requirement>,
}

impl Requirements {
    pub fn new() -> Requirements {
        Requirements::default()
    }

    /// `key In [value]` for every label: what a nodeSelector or a node's own labels say.
    pub fn from_labels<'a>(
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Requirements {
        let mut r = Requirements::new();
        for (k, v) in labels {
            r.add(k, Requirement::exactly(v.clone()));
        }
        r
    }

    /// Adds one expression, intersecting with what the key already has.
    pub fn add_expression(
        &mut self,
        key: &str,
        operator: &str,
        values: &[String],
    ) -> Result<(), RequirementError> {
        let op = Operator::parse(key, operator)?;
        let requirement = Requirement::new(key, op, values)?;
        self.add(key, requirement);
        Ok(())
    }

    /// Intersects `requirement` into this key's requirement.
    pub fn add(&mut self, key: &str, requirement: Requirement) {
        match self.by_key.get_mut(key) {
            Some(existing) => *existing = existing.intersect(&requirement),
            None => {
                self.by_key.insert(key.to_string(), requirement);
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Requirement> {
        self.by_key.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.by_key.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Requirement)> {
        self.by_key.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The conjunction of both.
    pub fn intersect(&self, other: &Requirements) -> Requirements {
        let mut out = self.clone();
        for (k, r) in &other.by_key {
            out.add(k, r.clone());
        }
        out
    }

    /// The first key whose combined requirement no node can satisfy, if any: the two sets are disjoint.
    pub fn conflict_with<'a>(&'a self, other: &'a Requirements) -> Option<&'a str> {
        for (key, mine) in &self.by_key {
            if let Some(theirs) = other.by_key.get(key) {
                if !mine.intersect(theirs).is_satisfiable() {
                    return Some(key);
                }
            } else if !mine.is_satisfiable() {
                return Some(key);
            }
        }
        other
            .by_key
            .iter()
            .find(|(k, r)| !self.by_key.contains_key(*k) && !r.is_satisfiable())
            .map(|(k, _)| k.as_str())
    }

    pub fn is_compatible(&self, other: &Requirements) -> bool {
        self.conflict_with(other).is_none()
    }

    /// Whether a concrete label map satisfies every requirement (node affinity matching).
    pub fn matches<'a>(&self, mut label: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.by_key.iter().all(|(k, r)| r.matches(label(k)))
    }

    /// Whether a label map satisfies every requirement.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.by_key
            .iter()
            .all(|(k, r)| r.matches(labels.get(k).map(String::as_str)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: &str, values: &[&str]) -> Requirements {
        let mut r = Requirements::new();
        r.add_expression(
            key,
            op,
            &values.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        r
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_affinity_matching_table() {
        let node = labels(&[("zone", "a"), ("cpu", "8"), ("gen", "x")]);
        let cases = [
            ("zone", "In", vec!["a", "b"], true),
            ("zone", "In", vec!["b"], false),
            ("missing", "In", vec!["a"], false),
            ("zone", "NotIn", vec!["a"], false),
            ("zone", "NotIn", vec!["b"], true),
            ("missing", "NotIn", vec!["a"], true),
            ("zone", "Exists", vec![], true),
            ("missing", "Exists", vec![], false),
            ("zone", "DoesNotExist", vec![], false),
            ("missing", "DoesNotExist", vec![], true),
            ("cpu", "Gt", vec!["4"], true),
            ("cpu", "Gt", vec!["8"], false),
            ("cpu", "Lt", vec!["9"], true),
            ("cpu", "Lt", vec!["8"], false),
            ("gen", "Gt", vec!["1"], false), // not an integer: Kubernetes treats it as no match
            ("missing", "Lt", vec!["1"], false),
        ];
        for (key, op, values, want) in cases {
            assert_eq!(
                req(key, op, &values).matches_labels(&node),
                want,
                "{key} {op} {values:?}"
            );
        }
    }

    #[test]
    fn invalid_expressions_are_errors() {
        let mut r = Requirements::new();
        assert!(matches!(
            r.add_expression("k", "Equals", &[]),
            Err(RequirementError::UnknownOperator { .. })
        ));
        assert!(matches!(
            r.add_expression("k", "In", &[]),
            Err(RequirementError::MissingValues { .. })
        ));
        assert!(matches!(
            r.add_expression("k", "Exists", &["x".into()]),
            Err(RequirementError::UnexpectedValues { .. })
        ));
        assert!(matches!(
            r.add_expression("k", "Gt", &["x".into()]),
            Err(RequirementError::NotAnInteger { .. })
        ));
        assert!(matches!(
            r.add_expression("k", "Lt", &["1".into(), "2".into()]),
            Err(RequirementError::NotAnInteger { .. })
        ));
    }

    #[test]
    fn intersection_table() {
        let cases = [
            (
                req("z", "In", &["a", "b"]),
                req("z", "In", &["b", "c"]),
                true,
            ),
            (req("z", "In", &["a"]), req("z", "In", &["b"]), false),
            (req("z", "In", &["a"]), req("z", "NotIn", &["a"]), false),
            (req("z", "In", &["a", "b"]), req("z", "NotIn", &["a"]), true),
            (req("z", "NotIn", &["a"]), req("z", "NotIn", &["b"]), true),
            (
                req("z", "Exists", &[]),
                req("z", "DoesNotExist", &[]),
                false,
            ),
            (
                req("z", "NotIn", &["a"]),
                req("z", "DoesNotExist", &[]),
                true,
            ),
            (req("z", "In", &["a"]), req("z", "DoesNotExist", &[]), false),
            (req("n", "Gt", &["4"]), req("n", "Lt", &["5"]), false),
            (req("n", "Gt", &["4"]), req("n", "Lt", &["6"]), true),
            (req("n", "Gt", &["4"]), req("n", "In", &["3", "5"]), true),
            (req("n", "Gt", &["4"]), req("n", "In", &["3", "4"]), false),
            (
                req("n", "Gt", &["4"]).intersect(&req("n", "Lt", &["6"])),
                req("n", "NotIn", &["5"]),
                false,
            ),
            (req("a", "In", &["x"]), req("b", "In", &["y"]), true),
        ];
        for (i, (a, b, want)) in cases.iter().enumerate() {
            assert_eq!(a.is_compatible(b), *want, "case {i}: {a:?} & {b:?}");
            assert_eq!(b.is_compatible(a), *want, "case {i} (swapped)");
        }
    }

    #[test]
    fn conflict_names_the_key() {
        let pod = req("zone", "In", &["a"]).intersect(&req("arch", "In", &["arm64"]));
        let offering = req("zone", "In", &["a"]).intersect(&req("arch", "In", &["amd64"]));
        assert_eq!(pod.conflict_with(&offering), Some("arch"));
    }

    #[test]
    fn extreme_bounds_do_not_overflow() {
        let r = req("n", "Gt", &[&i64::MAX.to_string()]);
        assert!(!r.get("n").unwrap().has_present_value());
        let r = req("n", "Lt", &[&i64::MIN.to_string()]);
        assert!(!r.get("n").unwrap().has_present_value());
    }
}
