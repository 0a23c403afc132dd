//! Server-side apply and managedFields: field sets (the `fieldsV1` format), ownership per field manager,
//! conflicts, and the merge of an applied configuration into the live object.
//!
//! A field set is a set of leaf paths. A path element is written as in `fieldsV1`: `f:name` for a map key,
//! `k:{"name":"c"}` for an element of an associative list (merge key from [`super::patch::merge_key`]), `v:"x"` for
//! an element of a set list. Atomic lists and scalars are leaves.

use super::patch::{is_set_list, merge_key};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One path in a field set.
pub type FieldPath = Vec<String>;
/// A set of leaf paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Top-level and metadata fields that are never tracked, as in kube-apiserver.
fn ignored(path: &[String]) -> bool {
    match path {
        [a] if a == "f:apiVersion" || a == "f:kind" => true,
        [m, f] if m == "f:metadata" => matches!(
            f.as_str(),
            "f:name"
                | "f:namespace"
                | "f:uid"
                | "f:resourceVersion"
                | "f:generation"
                | "f:creationTimestamp"
                | "f:managedFields"
                | "f:deletionTimestamp"
                | "f:deletionGracePeriodSeconds"
                | "f:selfLink"
                | "f:generateName"
        ),
        _ => false,
    }
}

fn last_field(path: &[String]) -> &str {
    path.iter()
        .rev()
        .find_map(|p| p.strip_prefix("f:"))
        .unwrap_or("")
}

fn item_key(item: &Value, key: &str) -> Option<String> {
    let k = item.get(key)?;
    Some(format!(
        "k:{}",
        serde_json::to_string(&json!({ key: k })).ok()?
    ))
}

/// The leaf paths of a value (what a manager owns when it sets this value).
/// The field sets of `old` and `new` under the top-level fields whose values differ. Paths under equal fields are
/// the same on both sides and can neither change nor be removed: a status write to a pod then walks its status,
/// not its whole spec (a kube-scheduler's burst of status writes was mostly this walk).
fn changed_subtrees(old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return (field_set(new), field_set(old));
    };
    let (mut new_set, mut old_set) = (FieldSet::new(), FieldSet::new());
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    for k in keys {
        let (before, after) = (o.get(k), n.get(k));
        if before == after {
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        if let Some(v) = after {
            collect(v, &mut path, &mut new_set);
        }
        if let Some(v) = before {
            collect(v, &mut path, &mut old_set);
        }
    }
    (new_set, old_set)
}

pub fn field_set(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    if ignored(path) {
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                collect(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let field = last_field(path).to_string();
            if let Some(key) =
                merge_key(&field).filter(|k| items.iter().all(|i| i.get(*k).is_some()))
            {
                for item in items {
                    if let Some(pk) = item_key(item, key) {
                        path.push(pk);
                        out.insert(path.clone());
                        collect(item, path, out);
                        path.pop();
                    }
                }
            } else if is_set_list(&field) {
                for item in items {
                    path.push(format!(
                        "v:{}",
                        serde_json::to_string(item).unwrap_or_default()
                    ));
                    out.insert(path.clone());
                    path.pop();
                }
            } else if !path.is_empty() {
                out.insert(path.clone());
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// Resolves a path in a value.
pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = step(cur, p)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, p: &str) -> Option<&'a Value> {
    if let Some(f) = p.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = p.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array()?
            .iter()
            .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
    } else if let Some(val) = p.strip_prefix("v:") {
        let val: Value = serde_json::from_str(val).ok()?;
        cur.as_array()?.iter().find(|i| **i == val)
    } else {
        None
    }
}

/// Removes the value at a path; missing paths are ignored.
pub fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        let next = if let Some(f) = p.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = p.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|i| !key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
        }
    } else if let Some(val) = last.strip_prefix("v:") {
        if let (Ok(val), Some(a)) = (serde_json::from_str::<Value>(val), cur.as_array_mut()) {
            a.retain(|i| *i != val);
        }
    }
}

/// Serialises a field set to `fieldsV1`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for (i, p) in path.iter().enumerate() {
            let entry = cur
                .entry(p.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let is_last = i + 1 == path.len();
            let Value::Object(m) = entry else { break };
            if is_last && (p.starts_with("k:")) {
                m.insert(".".into(), Value::Object(Map::new()));
            }
            cur = m;
        }
    }
    Value::Object(root)
}

/// Parses `fieldsV1` back to a field set.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, child) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(k.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One managedFields entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion the manager used.
    pub api_version: String,
    /// metav1.Time of the last change.
    pub time: String,
    /// Owned fields.
    pub fields: FieldSet,
    /// `status` for status subresource updates, "" otherwise.
    pub subresource: String,
}

/// Reads metadata.managedFields.
pub fn read_managers(obj: &Value) -> Vec<ManagerEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(read_entry).collect())
        .unwrap_or_default()
}

fn read_entry(e: &Value) -> ManagerEntry {
    let text = |key: &str, default: &str| {
        e.get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    ManagerEntry {
        manager: text("manager", ""),
        operation: text("operation", "Update"),
        api_version: text("apiVersion", ""),
        time: text("time", ""),
        fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        subresource: text("subresource", ""),
    }
}

/// An entry as managedFields holds it; `None` when it owns no fields (the real server drops those).
fn render_entry(e: &ManagerEntry) -> Option<Value> {
    if e.fields.is_empty() {
        return None;
    }
    let mut m = json!({
        "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": e.time,
        "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields),
    });
    if !e.subresource.is_empty() {
        m["subresource"] = json!(e.subresource);
    }
    Some(m)
}

/// Writes metadata.managedFields (entries with no fields are dropped, as the real server does).
pub fn write_managers(obj: &mut Value, entries: &[ManagerEntry]) {
    set_managers(obj, entries.iter().filter_map(render_entry).collect());
}

fn set_managers(obj: &mut Value, list: Vec<Value>) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Whether a `fieldsV1` tree holds exactly `path` (as `from_fields_v1` would read it), without reading the rest.
fn fields_v1_holds(fields: &Value, path: &[String]) -> bool {
    let mut cur = fields;
    for segment in path {
        match cur.get(segment) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_object()
        .is_some_and(|m| (m.is_empty() && !path.is_empty()) || m.contains_key("."))
}

fn upsert<'a>(
    entries: &'a mut Vec<ManagerEntry>,
    manager: &str,
    operation: &str,
    subresource: &str,
) -> &'a mut ManagerEntry {
    if let Some(i) = entries.iter().position(|e| {
        e.manager == manager && e.operation == operation && e.subresource == subresource
    }) {
        &mut entries[i]
    } else {
        entries.push(ManagerEntry {
            manager: manager.into(),
            operation: operation.into(),
            api_version: String::new(),
            time: String::new(),
            fields: FieldSet::new(),
            subresource: subresource.into(),
        });
        entries.last_mut().expect("just pushed")
    }
}

fn render_path(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            s.push('[');
            s.push_str(
                &k.trim_start_matches('{')
                    .trim_end_matches('}')
                    .replace('"', "")
                    .replace(':', "="),
            );
            s.push(']');
        } else if let Some(v) = p.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Records an Update operation (create, update, patch) by `manager`: it takes the fields it changed.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    time: &str,
    subresource: &str,
) {
    // A client that sends managedFields (kubectl's client-side to server-side apply migration) sets them.
    let client_sent = new.pointer("/metadata/managedFields").is_some();
    let source = if client_sent { Some(&*new) } else { old };
    let raw: Vec<Value> = source
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (new_set, old_set) = match old {
        Some(o) => changed_subtrees(o, new),
        None => (field_set(new), FieldSet::new()),
    };
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| old.is_none_or(|o| get_path(o, p) != get_path(new, p)))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    let takes_fields = !(changed.is_empty() && removed.is_empty() && old.is_some());
    let mut list = Vec::with_capacity(raw.len() + 1);
    let mut found = false;
    for r in raw {
        let is_writer = takes_fields
            && r.get("manager").and_then(Value::as_str).unwrap_or("") == manager
            && r.get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                == "Update"
            && r.get("subresource").and_then(Value::as_str).unwrap_or("") == subresource;
        let loses_fields = takes_fields
            && r.get("fieldsV1").is_some_and(|f| {
                changed
                    .iter()
                    .chain(&removed)
                    .any(|p| fields_v1_holds(f, p))
            });
        // An entry this write does not touch keeps its JSON: the server wrote it, so it is in normal form, and
        // reading and rendering every manager's fields on every write was most of a status update's cost.
        if !client_sent && !is_writer && !loses_fields {
            list.push(r);
            continue;
        }
        let mut e = read_entry(&r);
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
        if is_writer && !found {
            found = true;
            e.fields.extend(changed.iter().cloned());
            e.api_version = api_version.into();
            e.time = time.into();
        }
        list.extend(render_entry(&e));
    }
    if takes_fields && !found {
        let e = ManagerEntry {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: api_version.into(),
            time: time.into(),
            fields: changed,
            subresource: subresource.into(),
        };
        list.extend(render_entry(&e));
    }
    set_managers(new, list);
}

/// A server-side apply that conflicts with other managers (409 unless forced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Apply failed with {count} conflict{plural}: {details}")]
pub struct ApplyConflict {
    /// Number of conflicting fields.
    pub count: usize,
    /// "s" or "".
    pub plural: &'static str,
    /// `conflict with "mgr" using v1: .spec.x` joined by "\n".
    pub details: String,
}

impl ApplyConflict {
    /// Short static category.
    pub fn category(&self) -> &'static str {
        "apply_conflict"
    }
}

fn deep_merge(cur: &Value, applied: &Value, field: &str) -> Value {
    match (cur, applied) {
        (Value::Object(c), Value::Object(a)) => {
            let mut out = c.clone();
            for (k, v) in a {
                let merged = match out.get(k) {
                    Some(existing) => deep_merge(existing, v, k),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(c), Value::Array(a)) => {
            if let Some(key) =
                merge_key(field).filter(|k| a.iter().chain(c.iter()).all(|i| i.get(*k).is_some()))
            {
                let mut out: Vec<Value> = Vec::new();
                for item in a {
                    let existing = c.iter().find(|i| i.get(key) == item.get(key));
                    out.push(match existing {
                        Some(e) => deep_merge(e, item, ""),
                        None => item.clone(),
                    });
                }
                for item in c {
                    if !a.iter().any(|i| i.get(key) == item.get(key)) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            } else if is_set_list(field) {
                let mut out = a.clone();
                for item in c {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            } else {
                applied.clone()
            }
        }
        _ => applied.clone(),
    }
}

/// Server-side apply of `applied` by `manager` onto `current` (None when the object does not exist yet).
/// Returns the new object with managedFields updated.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    time: &str,
) -> Result<Value, ApplyConflict> {
    let mut entries = current.map(read_managers).unwrap_or_default();
    let applied_set = field_set(applied);
    let base = current.cloned().unwrap_or_else(|| json!({}));
    let mut conflicts: Vec<(String, String, FieldPath)> = Vec::new();
    for e in entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        for p in e.fields.intersection(&applied_set) {
            if get_path(&base, p) != get_path(applied, p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let details: Vec<String> = conflicts
            .iter()
            .map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: {}", render_path(p)))
            .collect();
        return Err(ApplyConflict {
            count: conflicts.len(),
            plural: if conflicts.len() == 1 { "" } else { "s" },
            details: details.join("\n"),
        });
    }
    // Forced conflicts move ownership to the applier; equal values stay shared.
    let taken: FieldSet = conflicts.iter().map(|(_, _, p)| p.clone()).collect();
    for e in entries
        .iter_mut()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        e.fields.retain(|p| !taken.contains(p));
    }
    let previous: FieldSet = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let owned_by_others: FieldSet = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut obj = base;
    // Fields this manager applied before and no longer applies go away unless someone else owns them.
    for p in previous.difference(&applied_set) {
        if !owned_by_others.contains(p) {
            remove_path(&mut obj, p);
        }
    }
    let mut obj = deep_merge(&obj, applied, "");
    let entry = upsert(&mut entries, manager, "Apply", "");
    entry.fields = applied_set;
    entry.api_version = api_version.into();
    entry.time = time.into();
    write_managers(&mut obj, &entries);
    Ok(obj)
}

/// Field sets of every manager, for tests and diagnostics.
pub fn owners(obj: &Value) -> BTreeMap<String, FieldSet> {
    read_managers(obj)
        .into_iter()
        .map(|e| (format!("{}/{}", e.manager, e.operation), e.fields))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn field_set_roundtrip() {
        let v = json!({"metadata": {"name": "x", "labels": {"a": "1"}, "finalizers": ["f"]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": [{"key": "k"}]}});
        let set = field_set(&v);
        assert!(set.contains(&vec![
            "f:metadata".to_string(),
            "f:labels".into(),
            "f:a".into()
        ]));
        assert!(!set
            .iter()
            .any(|p| p.last().map(String::as_str) == Some("f:name") && p.len() == 2));
        assert!(set.contains(&vec![
            "f:spec".to_string(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into()
        ]));
        assert!(set.contains(&vec!["f:spec".to_string(), "f:tolerations".into()]));
        assert!(set.contains(&vec![
            "f:metadata".to_string(),
            "f:finalizers".into(),
            "v:\"f\"".into()
        ]));
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }

    #[test]
    fn apply_conflicts_and_force() {
        let t = "2024-01-01T00:00:00Z";
        let a = apply(
            None,
            &cm(json!({"x": "1", "y": "1"})),
            "alice",
            false,
            "v1",
            t,
        )
        .unwrap();
        // Same manager changes its own field: no conflict.
        let a = apply(
            Some(&a),
            &cm(json!({"x": "2", "y": "1"})),
            "alice",
            false,
            "v1",
            t,
        )
        .unwrap();
        // Bob sets the same value: shared ownership, no conflict.
        let b = apply(Some(&a), &cm(json!({"y": "1"})), "bob", false, "v1", t).unwrap();
        // Bob changes x owned by alice: conflict naming alice and the field.
        let err = apply(Some(&b), &cm(json!({"x": "3"})), "bob", false, "v1", t).unwrap_err();
        assert_eq!(err.count, 1);
        assert!(
            err.details
                .contains("conflict with \"alice\" using v1: .data.x"),
            "{}",
            err.details
        );
        // Forced: bob takes x.
        let c = apply(
            Some(&b),
            &cm(json!({"x": "3", "y": "1"})),
            "bob",
            true,
            "v1",
            t,
        )
        .unwrap();
        assert_eq!(c["data"]["x"], "3");
        let own = owners(&c);
        assert!(!own["alice/Apply"].contains(&vec!["f:data".to_string(), "f:x".into()]));
        // Alice drops y, still owned by bob: it stays. Alice no longer applies anything: her entry disappears.
        let bare = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let d = apply(Some(&c), &bare, "alice", false, "v1", t).unwrap();
        assert_eq!(d["data"]["y"], "1");
        assert!(!owners(&d).contains_key("alice/Apply"));
        // Bob drops x which only he owns: removed.
        let e = apply(Some(&d), &cm(json!({"y": "1"})), "bob", false, "v1", t).unwrap();
        assert!(e["data"].get("x").is_none());
    }

    #[test]
    fn update_takes_ownership() {
        let t = "2024-01-01T00:00:00Z";
        let a = apply(None, &cm(json!({"x": "1"})), "alice", false, "v1", t).unwrap();
        let mut b = a.clone();
        b["data"]["x"] = json!("9");
        track_update(Some(&a), &mut b, "kubectl-edit", "v1", t, "");
        let own = owners(&b);
        assert!(own["kubectl-edit/Update"].contains(&vec!["f:data".to_string(), "f:x".into()]));
        assert!(!own.contains_key("alice/Apply"));
        // Now alice's apply of x=1 conflicts with the editor.
        assert!(apply(Some(&b), &cm(json!({"x": "1"})), "alice", false, "v1", t).is_err());
    }

    #[test]
    fn an_update_reads_only_the_entries_it_changes_and_keeps_the_others_as_they_were() {
        let (t0, t1) = ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z");
        let created = cm(json!({"x": "1", "y": "2"}));
        let mut a = created.clone();
        track_update(None, &mut a, "creator", "v1", t0, "");
        // A status writer takes only the status it wrote; the creator's entry is left byte for byte.
        let mut b = a.clone();
        b["status"] = json!({"phase": "Ready"});
        track_update(Some(&a), &mut b, "binder", "v1", t1, "status");
        let entries = b["metadata"]["managedFields"].as_array().unwrap().clone();
        assert_eq!(entries[0], a["metadata"]["managedFields"][0]);
        assert_eq!(entries[1]["manager"], "binder");
        assert_eq!(entries[1]["subresource"], "status");
        assert_eq!(entries[1]["time"], t1);
        assert!(
            owners(&b)["binder/Update"].contains(&vec!["f:status".to_string(), "f:phase".into()])
        );
        // Writing the same again changes no owner; the time of the last change stays.
        let mut c = b.clone();
        track_update(
            Some(&b),
            &mut c,
            "binder",
            "v1",
            "2024-01-03T00:00:00Z",
            "status",
        );
        assert_eq!(
            c["metadata"]["managedFields"],
            b["metadata"]["managedFields"]
        );
        // A field taken by another manager leaves the creator's entry; its other fields stay its own.
        let mut d = c.clone();
        d["data"]["y"] = json!("3");
        track_update(Some(&c), &mut d, "editor", "v1", t1, "");
        let own = owners(&d);
        assert!(own["editor/Update"].contains(&vec!["f:data".to_string(), "f:y".into()]));
        assert!(!own["creator/Update"].contains(&vec!["f:data".to_string(), "f:y".into()]));
        assert!(own["creator/Update"].contains(&vec!["f:data".to_string(), "f:x".into()]));
        // A manager that loses its last field disappears, as in the real server.
        let mut e = d.clone();
        e["status"] = json!({"phase": "Gone"});
        track_update(Some(&d), &mut e, "other", "v1", t1, "status");
        assert!(
            !owners(&e).contains_key("binder/Update"),
            "{:?}",
            owners(&e)
        );
    }
}
