//! Enforcement of a CRD's structural openAPIV3Schema on create and update: pruning of unknown fields (or their
//! rejection under `fieldValidation=Strict`), defaulting, and the checks `required`, `type`, `enum`, `minimum`,
//! `maximum` (with exclusive variants), `minLength`, `maxLength`, `minItems`, `maxItems`, `pattern` (a regular
//! expression, as the API server's RE2 reads it), `nullable` and `x-kubernetes-int-or-string`.
//! `x-kubernetes-validations` (CEL) rules are not evaluated.

use serde_json::{Map, Value};

/// The outcome of validating one object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Validation {
    /// Schema violations, worded like the real server (`spec.replicas: Invalid value: ...`).
    pub invalid: Vec<String>,
    /// Paths of fields not declared in the schema (pruned from the object).
    pub unknown: Vec<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn render(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_matches(expected: &str, v: &Value) -> bool {
    match (expected, v) {
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        ("number", Value::Number(_)) => true,
        ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("array", Value::Array(_))
        | ("object", Value::Object(_)) => true,
        _ => false,
    }
}

/// Whether `s` matches the schema's `pattern`. Compiled patterns are kept per thread (a CRD has a handful). A
/// pattern that does not compile matches nothing, so a broken schema refuses values instead of waving them through.
fn pattern_matches(pattern: &str, s: &str) -> bool {
    thread_local! {
        static COMPILED: std::cell::RefCell<std::collections::HashMap<String, Option<regex_lite::Regex>>> =
            std::cell::RefCell::default();
    }
    COMPILED.with(|c| {
        let mut cache = c.borrow_mut();
        let re = cache
            .entry(pattern.to_string())
            .or_insert_with(|| regex_lite::Regex::new(pattern).ok());
        re.as_ref().is_some_and(|re| re.is_match(s))
    })
}

/// Validates `value` (at `path`) against `schema`, pruning unknown fields and applying defaults.
pub fn validate(value: &mut Value, schema: &Value, path: &str, out: &mut Validation) {
    let display = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    };
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !matches!(value, Value::String(_)) && !type_matches("integer", value) {
            out.invalid.push(format!(
                "{display}: Invalid value: {}: {display} in body must be of type int-or-string: {:?}",
                render(value),
                type_name(value)
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(expected, value) {
            out.invalid.push(format!(
                "{display}: Invalid value: \"{}\": {display} in body must be of type {expected}: \"{}\"",
                type_name(value),
                type_name(value)
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let supported: Vec<String> = options.iter().map(render).collect();
            out.invalid.push(format!(
                "{display}: Unsupported value: {}: supported values: {}",
                render(value),
                supported.join(", ")
            ));
        }
    }
    let rendered = render(value);
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive =
                    schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (exclusive && x == min) {
                    let rel = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    out.invalid.push(format!(
                        "{display}: Invalid value: {}: {display} in body should be {rel} {}",
                        render(value),
                        render(&schema["minimum"])
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive =
                    schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (exclusive && x == max) {
                    let rel = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    out.invalid.push(format!(
                        "{display}: Invalid value: {}: {display} in body should be {rel} {}",
                        render(value),
                        render(&schema["maximum"])
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    out.invalid.push(format!(
                        "{display}: Too long: may not be more than {max} bytes"
                    ));
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    out.invalid.push(format!("{display}: Invalid value: {}: {display} in body should be at least {min} chars long", rendered));
                }
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if !pattern_matches(p, s) {
                    out.invalid.push(format!(
                        "{display}: Invalid value: {}: {display} in body should match '{p}'",
                        rendered
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    out.invalid.push(format!(
                        "{display}: Too many: {}: must have at most {max} items",
                        items.len()
                    ));
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    out.invalid.push(format!("{display}: Invalid value: {}: {display} in body should have at least {min} items", items.len()));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    validate(item, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => validate_object(map, schema, path, &display, out),
        _ => {}
    }
}

fn validate_object(
    map: &mut Map<String, Value>,
    schema: &Value,
    path: &str,
    display: &str,
    out: &mut Validation,
) {
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let embedded = schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true);
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    // Defaults first, so that required fields with defaults are satisfied.
    if let Some(props) = properties {
        for (k, s) in props {
            if let Some(d) = s.get("default") {
                if !map.contains_key(k) {
                    map.insert(k.clone(), d.clone());
                }
            }
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                out.invalid
                    .push(format!("{}: Required value", join(path, r)));
            }
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        let child_path = join(path, &k);
        let root_meta = (path.is_empty() || embedded)
            && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
        if let Some(s) = properties.and_then(|p| p.get(&k)) {
            if let Some(v) = map.get_mut(&k) {
                if v.is_null() && s.get("nullable").and_then(Value::as_bool) != Some(true) {
                    // kube-apiserver drops nulls of non-nullable fields instead of failing.
                    map.remove(&k);
                    continue;
                }
                validate(v, s, &child_path, out);
            }
        } else if let Some(s) = additional {
            if let Some(v) = map.get_mut(&k) {
                validate(v, s, &child_path, out);
            }
        } else if root_meta
            || preserve
            || schema.get("additionalProperties").and_then(Value::as_bool) == Some(true)
        {
            continue;
        } else {
            map.remove(&k);
            out.unknown.push(format!(".{child_path}"));
        }
    }
    let _ = display;
}

/// Validates a whole custom object against the version's openAPIV3Schema.
pub fn validate_object_root(obj: &mut Value, schema: &Value) -> Validation {
    let mut out = Validation::default();
    validate(obj, schema, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["replicas"], "properties": {
                "replicas": {"type": "integer", "minimum": 0, "maximum": 10},
                "mode": {"type": "string", "enum": ["Fast", "Safe"], "default": "Safe"},
                "name": {"type": "string", "maxLength": 5, "pattern": "^m-"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "size": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    #[test]
    fn table() {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (json!({"spec": {"replicas": 3}}), vec![]),
            (json!({"spec": {}}), vec!["spec.replicas: Required value"]),
            (
                json!({"spec": {"replicas": "3"}}),
                vec!["spec.replicas in body must be of type integer"],
            ),
            (
                json!({"spec": {"replicas": 11}}),
                vec!["should be less than or equal to 10"],
            ),
            (
                json!({"spec": {"replicas": -1}}),
                vec!["should be greater than or equal to 0"],
            ),
            (
                json!({"spec": {"replicas": 1, "mode": "Slow"}}),
                vec!["spec.mode: Unsupported value: \"Slow\""],
            ),
            (
                json!({"spec": {"replicas": 1, "name": "m-toolong"}}),
                vec!["spec.name: Too long"],
            ),
            (
                json!({"spec": {"replicas": 1, "name": "x-a"}}),
                vec!["should match '^m-'"],
            ),
            (
                json!({"spec": {"replicas": 1, "tags": ["a", "b", "c"]}}),
                vec!["spec.tags: Too many"],
            ),
            (
                json!({"spec": {"replicas": 1, "tags": [1]}}),
                vec!["spec.tags[0] in body must be of type string"],
            ),
            (
                json!({"spec": {"replicas": 1, "labels": {"a": 1}}}),
                vec!["spec.labels.a in body must be of type string"],
            ),
            (json!({"spec": {"replicas": 1, "size": "10%"}}), vec![]),
            (json!({"spec": {"replicas": 1, "size": 3}}), vec![]),
            (
                json!({"spec": {"replicas": 1, "size": true}}),
                vec!["int-or-string"],
            ),
            (
                json!({"spec": {"replicas": 1, "free": {"anything": {"goes": 1}}}}),
                vec![],
            ),
            (
                json!({"spec": {"replicas": 1}, "status": {"ready": "yes"}}),
                vec!["status.ready in body must be of type boolean"],
            ),
        ];
        for (mut obj, want) in cases {
            let v = validate_object_root(&mut obj, &schema());
            assert_eq!(v.invalid.len(), want.len(), "{obj}: {:?}", v.invalid);
            for (got, w) in v.invalid.iter().zip(want) {
                assert!(got.contains(w), "{got:?} should contain {w:?}");
            }
        }
    }

    #[test]
    fn prunes_unknown_and_defaults() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "T", "metadata": {"name": "a"}, "spec": {"replicas": 1, "bogus": 1}, "top": 2});
        let v = validate_object_root(&mut obj, &schema());
        assert!(v.invalid.is_empty());
        assert_eq!(
            v.unknown,
            vec![".spec.bogus".to_string(), ".top".to_string()]
        );
        assert_eq!(obj["spec"], json!({"replicas": 1, "mode": "Safe"}));
        assert_eq!(obj["metadata"]["name"], "a");
    }
}
