//! The three client-side patch formats: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes
//! strategic merge patch (with the `$patch`, `$setElementOrder`, `$deleteFromPrimitiveList` and `$retainKeys`
//! directives kubectl emits). Strategic merge keys come from a table of the built-in fields berth's kinds use.

use serde_json::{Map, Value};

/// A patch that cannot be applied; reported as 400 (malformed) or 422 (test failed / path missing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed.
    #[error("{0}")]
    Malformed(String),
    /// The patch is well formed but does not apply to this object.
    #[error("{0}")]
    DoesNotApply(String),
}

impl PatchError {
    /// Short static category.
    pub fn category(&self) -> &'static str {
        match self {
            PatchError::Malformed(_) => "malformed",
            PatchError::DoesNotApply(_) => "does_not_apply",
        }
    }
}

/// Merge key of a list field under strategic merge patch and server-side apply (`patchMergeKey`), by field name.
/// `None` for lists that are atomic.
pub fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => match field {
            "readinessGates" => "conditionType",
            _ => "name",
        },
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars merged as sets (`patchStrategy: merge` without a key).
pub fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers" | "podCIDRs")
}

// ---------------------------------------------------------------- JSON patch

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| {
        PatchError::Malformed(format!(
            "invalid JSON pointer {path:?}: must start with '/'"
        ))
    })?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::DoesNotApply(format!("jsonpatch: path {path:?} not found")))?;
    }
    Ok(cur)
}

fn get_pointer(doc: &Value, path: &str) -> Result<Value, PatchError> {
    let tokens = split_pointer(path)?;
    let mut cur = doc;
    for t in &tokens {
        cur = match cur {
            Value::Object(m) => m.get(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::DoesNotApply(format!("jsonpatch: path {path:?} not found")))?;
    }
    Ok(cur.clone())
}

fn remove_pointer(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let tokens = split_pointer(path)?;
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| PatchError::DoesNotApply("jsonpatch: cannot remove the root".into()))?;
    let parent = parent_mut(doc, parents, path)?;
    match parent {
        Value::Object(m) => m.remove(last).ok_or_else(|| {
            PatchError::DoesNotApply(format!(
                "jsonpatch remove operation does not apply: doc is missing path: {path:?}"
            ))
        }),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| {
                PatchError::DoesNotApply(format!("jsonpatch: invalid index in {path:?}"))
            })?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(PatchError::DoesNotApply(format!(
                    "jsonpatch remove operation does not apply: doc is missing path: {path:?}"
                )))
            }
        }
        _ => Err(PatchError::DoesNotApply(format!(
            "jsonpatch: path {path:?} not found"
        ))),
    }
}

fn add_pointer(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), PatchError> {
    let tokens = split_pointer(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let parent = parent_mut(doc, parents, path)?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(PatchError::DoesNotApply(format!(
                    "jsonpatch replace operation does not apply: doc is missing key: {path}"
                )));
            }
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| {
                PatchError::DoesNotApply(format!("jsonpatch: invalid index in {path:?}"))
            })?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| {
                    PatchError::DoesNotApply(format!(
                        "jsonpatch replace operation does not apply: doc is missing path: {path}"
                    ))
                })?;
                *slot = value;
            } else if i <= a.len() {
                a.insert(i, value);
            } else {
                return Err(PatchError::DoesNotApply(format!(
                    "jsonpatch add operation does not apply: index out of bounds in {path}"
                )));
            }
            Ok(())
        }
        _ => Err(PatchError::DoesNotApply(format!(
            "jsonpatch: path {path:?} not found"
        ))),
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("json patch must be an array of operations".into()))?;
    let mut doc = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("operation {i}: missing \"op\"")))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("operation {i}: missing \"path\"")))?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("operation {i} ({kind}): missing \"value\""))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("operation {i} ({kind}): missing \"from\""))
            })
        };
        match kind {
            "add" => add_pointer(&mut doc, path, value()?, false)?,
            "replace" => add_pointer(&mut doc, path, value()?, true)?,
            "remove" => {
                remove_pointer(&mut doc, path)?;
            }
            "move" => {
                let v = remove_pointer(&mut doc, from()?)?;
                add_pointer(&mut doc, path, v, false)?;
            }
            "copy" => {
                let v = get_pointer(&doc, from()?)?;
                add_pointer(&mut doc, path, v, false)?;
            }
            "test" => {
                let expected = value()?;
                if get_pointer(&doc, path)? != expected {
                    return Err(PatchError::DoesNotApply(format!(
                        "testing value {path} failed"
                    )));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "unexpected json patch operation {other:?}"
                )))
            }
        }
    }
    Ok(doc)
}

// ---------------------------------------------------------------- merge patch

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match doc {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------- strategic merge patch

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| !is_directive_marker(i))
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_directive_marker(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|m| m.len() == 1 && m.contains_key("$patch"))
}

fn key_of(item: &Value, key: &str) -> Option<Value> {
    item.get(key).cloned()
}

fn merge_keyed_list(
    original: &[Value],
    patch: &[Value],
    key: &str,
) -> Result<Vec<Value>, PatchError> {
    if patch.iter().any(|i| {
        i.get("$patch").and_then(Value::as_str) == Some("replace")
            && i.as_object().is_some_and(|m| m.len() == 1)
    }) {
        return Ok(patch
            .iter()
            .filter(|i| !is_directive_marker(i))
            .map(strip_directives)
            .collect());
    }
    let mut out: Vec<Value> = original.to_vec();
    for item in patch {
        let Some(k) = key_of(item, key) else {
            return Err(PatchError::Malformed(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = out.iter().position(|o| key_of(o, key).as_ref() == Some(&k));
        match item.get("$patch").and_then(Value::as_str) {
            Some("delete") => {
                if let Some(p) = pos {
                    out.remove(p);
                }
            }
            Some("replace") => {
                let replacement = strip_directives(item);
                match pos {
                    Some(p) => out[p] = replacement,
                    None => out.push(replacement),
                }
            }
            _ => match pos {
                Some(p) => out[p] = strategic_merge(&out[p], item)?,
                None => out.push(strip_directives(item)),
            },
        }
    }
    Ok(out)
}

fn apply_order(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let rank = |item: &Value| -> usize {
        let probe = match key {
            Some(k) => item.get(k).map(|v| serde_json::json!({ k: v })),
            None => Some(item.clone()),
        };
        probe
            .and_then(|p| {
                order
                    .iter()
                    .position(|o| *o == p || key.and_then(|k| o.get(k)) == p.get(key.unwrap_or("")))
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

/// Applies a strategic merge patch (`application/strategic-merge-patch+json`).
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => return Ok(strip_directives(patch)),
        Some("delete") => return Ok(Value::Object(Map::new())),
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "unknown patch type: {other:?}"
            )))
        }
    }
    let mut out = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), v) {
            (Some(Value::Array(o)), Value::Array(pa)) => {
                if let Some(key) =
                    merge_key(k).filter(|_| pa.iter().chain(o.iter()).all(Value::is_object))
                {
                    Value::Array(merge_keyed_list(o, pa, key)?)
                } else if is_set_list(k) {
                    let mut set = o.clone();
                    for item in pa {
                        if !set.contains(item) {
                            set.push(item.clone());
                        }
                    }
                    Value::Array(set)
                } else {
                    strip_directives(v)
                }
            }
            (Some(o @ Value::Object(_)), Value::Object(_)) => strategic_merge(o, v)?,
            _ => match v {
                Value::Object(_) => strategic_merge(&Value::Null, v)?,
                other => strip_directives(other),
            },
        };
        out.insert(k.clone(), merged);
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (out.get_mut(field), v.as_array()) {
                list.retain(|i| !remove.contains(i));
            }
        } else if let Some(field) = k.strip_prefix("$setElementOrder/") {
            let order = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                apply_order(list, &order, merge_key(field));
            }
        } else if k == "$retainKeys" {
            let keep: Vec<&str> = v
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.retain(|key, _| keep.contains(&key.as_str()));
        } else if k.starts_with('$') && k != "$patch" {
            return Err(PatchError::Malformed(format!(
                "unknown strategic merge patch directive {k:?}"
            )));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_table() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let cases: Vec<(Value, Result<Value, ()>)> = vec![
            (
                json!([{"op": "add", "path": "/a/b/-", "value": 3}]),
                Ok(json!({"a": {"b": [1, 2, 3]}, "c": "x"})),
            ),
            (
                json!([{"op": "add", "path": "/a/b/0", "value": 0}]),
                Ok(json!({"a": {"b": [0, 1, 2]}, "c": "x"})),
            ),
            (
                json!([{"op": "remove", "path": "/c"}]),
                Ok(json!({"a": {"b": [1, 2]}})),
            ),
            (
                json!([{"op": "replace", "path": "/c", "value": "y"}]),
                Ok(json!({"a": {"b": [1, 2]}, "c": "y"})),
            ),
            (
                json!([{"op": "replace", "path": "/zz", "value": "y"}]),
                Err(()),
            ),
            (
                json!([{"op": "move", "from": "/c", "path": "/d"}]),
                Ok(json!({"a": {"b": [1, 2]}, "d": "x"})),
            ),
            (
                json!([{"op": "copy", "from": "/c", "path": "/d"}]),
                Ok(json!({"a": {"b": [1, 2]}, "c": "x", "d": "x"})),
            ),
            (
                json!([{"op": "test", "path": "/c", "value": "x"}, {"op": "remove", "path": "/a"}]),
                Ok(json!({"c": "x"})),
            ),
            (
                json!([{"op": "test", "path": "/c", "value": "nope"}]),
                Err(()),
            ),
            (json!([{"op": "remove", "path": "/a/b/5"}]), Err(())),
            (json!([{"op": "bogus", "path": "/c"}]), Err(())),
            (json!({"op": "add"}), Err(())),
            (
                json!([{"op": "add", "path": "/x~1y", "value": 1}]),
                Ok(json!({"a": {"b": [1, 2]}, "c": "x", "x/y": 1})),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(json_patch(&doc, &p).map_err(|_| ()), want, "{p}");
        }
    }

    #[test]
    fn merge_patch_table() {
        let doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        assert_eq!(
            merge_patch(&doc, &json!({"a": {"b": null, "d": 3}})),
            json!({"a": {"c": 2, "d": 3}, "l": [1, 2]})
        );
        assert_eq!(
            merge_patch(&doc, &json!({"l": [3]})),
            json!({"a": {"b": 1, "c": 2}, "l": [3]})
        );
        assert_eq!(
            merge_patch(&doc, &json!({"a": "flat"})),
            json!({"a": "flat", "l": [1, 2]})
        );
    }

    #[test]
    fn strategic_merge_table() {
        let pod = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["f1"]}, "spec": {
            "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}],
            "tolerations": [{"key": "x"}]}});
        // Keyed list: merge by name, keep others.
        let got = strategic_merge(
            &pod,
            &json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
        )
        .unwrap();
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
        // Atomic list: replaced.
        let got = strategic_merge(&pod, &json!({"spec": {"tolerations": [{"key": "y"}]}})).unwrap();
        assert_eq!(got["spec"]["tolerations"], json!([{"key": "y"}]));
        // $patch: delete on a keyed element.
        let got = strategic_merge(
            &pod,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "b", "image": "b:1"}])
        );
        // Set list union and deleteFromPrimitiveList.
        let got = strategic_merge(&pod, &json!({"metadata": {"finalizers": ["f2"]}})).unwrap();
        assert_eq!(got["metadata"]["finalizers"], json!(["f1", "f2"]));
        let got = strategic_merge(
            &pod,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        )
        .unwrap();
        assert_eq!(got["metadata"]["finalizers"], json!([]));
        // null deletes; $setElementOrder reorders.
        let got = strategic_merge(&pod, &json!({"metadata": {"labels": {"a": null}}, "spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "a:3"}]}})).unwrap();
        assert_eq!(got["metadata"]["labels"], json!({}));
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:3"}])
        );
        // $patch: replace on a map.
        let got = strategic_merge(
            &pod,
            &json!({"metadata": {"labels": {"$patch": "replace", "z": "9"}}}),
        )
        .unwrap();
        assert_eq!(got["metadata"]["labels"], json!({"z": "9"}));
        // Keyed element lacking its key is malformed.
        assert!(strategic_merge(&pod, &json!({"spec": {"containers": [{"image": "x"}]}})).is_err());
    }
}
