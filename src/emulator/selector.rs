//! Label and field selectors: the string syntax of `?labelSelector=` / `?fieldSelector=` and the structured
//! `metav1.LabelSelector` (matchLabels / matchExpressions) used by PodDisruptionBudgets.

use serde_json::Value;

/// Errors parsing a selector; reported to clients as 400 BadRequest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector string does not follow the grammar.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    /// A field selector names a field the emulator does not index.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

impl SelectorError {
    /// Short static category.
    pub fn category(&self) -> &'static str {
        match self {
            SelectorError::Syntax(_) => "syntax",
            SelectorError::UnsupportedField(_) => "unsupported_field",
        }
    }
}

/// One requirement on a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>N` (numeric).
    GreaterThan(String, i64),
    /// `key<N` (numeric).
    LessThan(String, i64),
}

/// A conjunction of label requirements; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// All must hold.
    pub requirements: Vec<Requirement>,
}

fn lookup<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Requirement {
    fn matches(&self, labels: &[(String, String)]) -> bool {
        match self {
            Requirement::Equals(k, v) => lookup(labels, k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => lookup(labels, k) != Some(v.as_str()),
            Requirement::In(k, vs) => lookup(labels, k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => {
                !lookup(labels, k).is_some_and(|x| vs.iter().any(|v| v == x))
            }
            Requirement::Exists(k) => lookup(labels, k).is_some(),
            Requirement::DoesNotExist(k) => lookup(labels, k).is_none(),
            Requirement::GreaterThan(k, n) => lookup(labels, k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::LessThan(k, n) => lookup(labels, k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && key.matches('/').count() <= 1
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<String>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError::Syntax(format!("unbalanced ')' in {s:?}")));
                }
                current.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if depth != 0 {
        return Err(SelectorError::Syntax(format!("unbalanced '(' in {s:?}")));
    }
    parts.push(current);
    Ok(parts)
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError::Syntax(format!(
                "expected a parenthesised set of values in {whole:?}"
            ))
        })?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &values {
        if !valid_value(v) {
            return Err(SelectorError::Syntax(format!(
                "invalid label value {v:?} in {whole:?}"
            )));
        }
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in split_top_level(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::Syntax(format!("empty requirement in {s:?}")));
            }
            requirements.push(Self::parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
        let bad_key =
            |k: &str| SelectorError::Syntax(format!("invalid label key {k:?} in {part:?}"));
        let bad_value =
            |v: &str| SelectorError::Syntax(format!("invalid label value {v:?} in {part:?}"));
        if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            return if valid_key(key) {
                Ok(Requirement::DoesNotExist(key.into()))
            } else {
                Err(bad_key(key))
            };
        }
        for (op, ctor) in [("!=", 0u8), ("==", 1), ("=", 1), (">", 2), ("<", 3)] {
            if let Some(idx) = part.find(op) {
                // "!=" must win over "=", and "==" over "=": the ordered list above guarantees it because
                // find() of "=" in "a!=b" would land inside "!=", which is checked first.
                let key = part[..idx].trim();
                let value = part[idx + op.len()..].trim();
                if !valid_key(key) {
                    return Err(bad_key(key));
                }
                return match ctor {
                    0 | 1 => {
                        if !valid_value(value) {
                            return Err(bad_value(value));
                        }
                        Ok(if ctor == 0 {
                            Requirement::NotEquals(key.into(), value.into())
                        } else {
                            Requirement::Equals(key.into(), value.into())
                        })
                    }
                    _ => {
                        let n: i64 = value.parse().map_err(|_| bad_value(value))?;
                        Ok(if ctor == 2 {
                            Requirement::GreaterThan(key.into(), n)
                        } else {
                            Requirement::LessThan(key.into(), n)
                        })
                    }
                };
            }
        }
        let mut words = part.splitn(2, char::is_whitespace);
        let key = words.next().unwrap_or_default().trim();
        let rest = words.next().unwrap_or_default().trim();
        if rest.is_empty() {
            return if valid_key(key) {
                Ok(Requirement::Exists(key.into()))
            } else {
                Err(bad_key(key))
            };
        }
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        if let Some(set) = rest.strip_prefix("notin") {
            Ok(Requirement::NotIn(key.into(), parse_set(set, part)?))
        } else if let Some(set) = rest.strip_prefix("in") {
            Ok(Requirement::In(key.into(), parse_set(set, part)?))
        } else {
            Err(SelectorError::Syntax(format!(
                "unknown operator in {part:?}"
            )))
        }
    }

    /// Builds a selector from a `metav1.LabelSelector` object. `None` means the object is malformed.
    pub fn from_object(selector: &Value) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if selector.is_null() {
            return Ok(Self { requirements });
        }
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let v = v.as_str().ok_or_else(|| {
                    SelectorError::Syntax(format!("matchLabels.{k} is not a string"))
                })?;
                requirements.push(Requirement::Equals(k.clone(), v.to_string()));
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let op = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                requirements.push(match op {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(SelectorError::Syntax(format!(
                            "{other:?} is not a valid label selector operator"
                        )))
                    }
                });
            }
        }
        Ok(Self { requirements })
    }

    /// True when every requirement holds for these labels.
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// The fields a field selector may name.
pub const SUPPORTED_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "spec.unschedulable",
];

/// A conjunction of `field=value` / `field!=value` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (field, value, must_equal)
    pub terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { terms });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (field, value, eq) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError::Syntax(format!(
                    "invalid field selector term {part:?}"
                )));
            };
            let field = field.trim();
            if !SUPPORTED_FIELDS.contains(&field) {
                return Err(SelectorError::UnsupportedField(field.to_string()));
            }
            terms.push((field.to_string(), value.trim().to_string(), eq));
        }
        Ok(Self { terms })
    }

    /// True when every term holds; `get` returns the value of a supported field (absent fields are "").
    pub fn matches(&self, get: impl Fn(&str) -> String) -> bool {
        self.terms.iter().all(|(f, v, eq)| (get(f) == *v) == *eq)
    }

    /// True when the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_table() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("app notin (web, db)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web,db),!missing,tier", true),
            ("n>4", true),
            ("n<4", false),
            ("example.com/key", false),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches(&l), *want, "selector {s:?}");
        }
    }

    #[test]
    fn label_selector_rejects_garbage() {
        for s in [
            "app in web",
            "app in (web",
            "a b c",
            "=x",
            "app=has space",
            "app in (web))",
            "x,,y",
            "n>abc",
        ] {
            assert!(LabelSelector::parse(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn structured_selector() {
        let sel = LabelSelector::from_object(&serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}, {"key": "x", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "1")])));
        assert!(LabelSelector::from_object(
            &serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})
        )
        .is_err());
    }

    #[test]
    fn field_selector_table() {
        let get = |f: &str| match f {
            "metadata.name" => "p1".to_string(),
            "spec.nodeName" => "n1".to_string(),
            "status.phase" => "Running".to_string(),
            _ => String::new(),
        };
        let cases: &[(&str, bool)] = &[
            ("metadata.name=p1", true),
            ("metadata.name==p1", true),
            ("metadata.name!=p1", false),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("spec.nodeName=,status.phase!=Succeeded", false),
            ("metadata.namespace=", true),
            ("status.phase!=Failed,status.phase!=Succeeded", true),
        ];
        for (s, want) in cases {
            assert_eq!(
                FieldSelector::parse(s).unwrap().matches(get),
                *want,
                "{s:?}"
            );
        }
        assert!(matches!(
            FieldSelector::parse("spec.foo=bar"),
            Err(SelectorError::UnsupportedField(_))
        ));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
