//! Checks a CRD's OpenAPI schema against the API server's rules for *structural* schemas, and berth's own rule
//! that every field is documented (the text `kubectl explain` shows). The API server refuses a CRD that breaks
//! the first; users are left guessing when we break the second. Tests run this over every generated CRD.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct StructuralError {
    /// A JSON path into the schema, such as `spec.template.spec.taints[].effect`.
    pub path: String,
    pub problem: String,
}

impl StructuralError {
    pub fn category(&self) -> &'static str {
        "structural_schema"
    }
}

/// Every problem found in one version's `openAPIV3Schema`.
pub fn check_structural(schema: &Value) -> Vec<StructuralError> {
    let mut problems = Vec::new();
    walk(schema, "", true, &mut problems);
    problems
}

fn walk(node: &Value, path: &str, is_root: bool, problems: &mut Vec<StructuralError>) {
    let mut problem = |p: &str| {
        problems.push(StructuralError {
            path: display(path),
            problem: p.to_string(),
        })
    };
    let Some(obj) = node.as_object() else {
        problem("schema node is not an object");
        return;
    };
    if obj.contains_key("$ref") || obj.contains_key("definitions") || obj.contains_key("$defs") {
        problem("$ref and definitions are not allowed in a structural schema");
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match obj.get("type").and_then(Value::as_str) {
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        Some(other) => problem(&format!("unknown type {other:?}")),
        None if int_or_string || preserve => {}
        None => problem("missing type"),
    }
    if !is_root && !obj.contains_key("description") {
        problem("missing description (every field needs a doc comment for kubectl explain)");
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problem("properties and additionalProperties must not both be set");
    }
    if obj.get("type").and_then(Value::as_str) == Some("array") && !obj.contains_key("items") {
        problem("array without items");
    }
    for junction in ["anyOf", "allOf", "oneOf"] {
        if let Some(branches) = obj.get(junction) {
            if !int_or_string {
                for branch in branches.as_array().into_iter().flatten() {
                    for forbidden in [
                        "type",
                        "description",
                        "default",
                        "additionalProperties",
                        "nullable",
                    ] {
                        if branch.get(forbidden).is_some() {
                            problem(&format!("{junction} branch sets {forbidden}; only value validations are allowed there"));
                        }
                    }
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            // metadata is described by the API server itself.
            if is_root && (name == "metadata" || name == "apiVersion" || name == "kind") {
                continue;
            }
            walk(child, &join(path, name), false, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        walk_unlabelled(items, &format!("{path}[]"), problems);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        walk_unlabelled(additional, &format!("{path}{{}}"), problems);
    }
}

/// Items of arrays and values of maps take their description from the field that holds them.
fn walk_unlabelled(node: &Value, path: &str, problems: &mut Vec<StructuralError>) {
    let mut with_description = node.clone();
    if let Some(obj) = with_description.as_object_mut() {
        obj.entry("description")
            .or_insert(Value::String(String::new()));
    }
    walk(&with_description, path, false, problems);
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn display(path: &str) -> String {
    if path.is_empty() {
        "(root)".into()
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_what_the_api_server_refuses() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"description": "no type"},
                "b": {"type": "array", "description": "no items"},
                "c": {"type": "string"},
                "d": {"description": "ref", "type": "object", "$ref": "#/x"},
                "e": {"description": "ok", "x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "f": {"description": "bad anyOf", "type": "object", "anyOf": [{"type": "object"}]}
            }
        });
        let paths: Vec<String> = check_structural(&schema)
            .into_iter()
            .map(|e| format!("{e}"))
            .collect();
        assert!(
            paths.iter().any(|p| p.starts_with("a: missing type")),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("b: array without items")),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("c: missing description")),
            "{paths:?}"
        );
        assert!(paths.iter().any(|p| p.starts_with("d: $ref")), "{paths:?}");
        assert!(!paths.iter().any(|p| p.starts_with("e:")), "{paths:?}");
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("f: anyOf branch sets type")),
            "{paths:?}"
        );
    }
}
