//! The object store: every object of every kind kept as JSON bytes keyed by (group, resource, namespace, name),
//! one monotonic resourceVersion counter, a bounded history of watch events, and the write semantics of
//! kube-apiserver (create, update, patch, apply, delete with finalizers and garbage collection, eviction, binding).

use super::apply;
use super::clock::{format_time, SharedClock};
use super::error::{qualified, ApiError};
use super::patch::{self, PatchError};
use super::resources::{from_crd, Registry, ResourceType};
use super::schema;
use super::selector::{FieldSelector, LabelSelector};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// One stored object: its JSON and the fields selectors look at, extracted once on write.
#[derive(Debug)]
pub struct Stored {
    /// The object as JSON, with metadata.resourceVersion set.
    pub bytes: Bytes,
    /// Its resourceVersion.
    pub rv: u64,
    /// metadata.uid
    pub uid: String,
    /// metadata.namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// metadata.name
    pub name: String,
    /// metadata.labels
    pub labels: Vec<(String, String)>,
    /// spec.nodeName (pods)
    pub node_name: String,
    /// status.phase
    pub phase: String,
    /// spec.unschedulable (nodes)
    pub unschedulable: bool,
    /// metadata.ownerReferences[*].uid
    pub owner_uids: Vec<String>,
    /// metadata.deletionTimestamp is set.
    pub deleting: bool,
    /// No status condition of type Ready says other than True (pods: what a PodDisruptionBudget counts as healthy,
    /// with a Running phase).
    pub ready: bool,
}

impl Stored {
    /// Parses the stored JSON.
    pub fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| ApiError::Internal(format!("stored object is not valid JSON: {e}")))
    }

    /// The value of a field a field selector may name.
    pub fn field(&self, field: &str) -> String {
        match field {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "spec.nodeName" => self.node_name.clone(),
            "status.phase" => self.phase.clone(),
            "spec.unschedulable" => self.unschedulable.to_string(),
            _ => String::new(),
        }
    }

    fn from_value(v: &Value, rv: u64) -> Result<Self, ApiError> {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let labels = v
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let owner_uids = v
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.get("uid").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let bytes = serde_json::to_vec(v)
            .map_err(|e| ApiError::Internal(format!("cannot encode object: {e}")))?;
        Ok(Stored {
            bytes: Bytes::from(bytes),
            rv,
            uid: s("/metadata/uid"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
            labels,
            node_name: s("/spec/nodeName"),
            phase: s("/status/phase"),
            unschedulable: v.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true),
            owner_uids,
            deleting: v
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null()),
            ready: v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_none_or(|cs| {
                    cs.iter().all(|c| {
                        c.get("type").and_then(Value::as_str) != Some("Ready")
                            || c.get("status").and_then(Value::as_str) == Some("True")
                    })
                }),
        })
    }
}

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// ADDED
    Added,
    /// MODIFIED
    Modified,
    /// DELETED
    Deleted,
}

impl EventType {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in history and broadcast to watchers.
#[derive(Debug)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventType,
    /// API group of the object.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// The object after the change (for DELETED, the last state with the deletion's resourceVersion).
    pub object: Arc<Stored>,
    /// The object before the change, for selector transitions.
    pub previous: Option<Arc<Stored>>,
}

/// Identity of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Namespace ("" when cluster scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

type Collection = BTreeMap<(String, String), Arc<Stored>>;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch events retained for resuming watches; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// Largest accepted request body (bytes); larger gets 413.
    pub max_body_bytes: usize,
    /// Interval between watch bookmarks when a client asks for them.
    pub bookmark_interval: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            history_limit: 20_000,
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Field manager recorded in managedFields.
    pub field_manager: String,
    /// Validate and compute, but store nothing.
    pub dry_run: bool,
    /// Reject fields unknown to the schema (fieldValidation=Strict) instead of dropping them.
    pub strict: bool,
    /// `status` when writing the status subresource.
    pub subresource: Option<String>,
}

/// Patch formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// application/json-patch+json
    Json,
    /// application/merge-patch+json
    Merge,
    /// application/strategic-merge-patch+json
    Strategic,
    /// application/apply-patch+yaml
    Apply {
        /// `force=true`
        force: bool,
    },
}

/// Deletion options (query or DeleteOptions body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Background (default), Foreground or Orphan.
    pub propagation: Option<String>,
    /// Precondition on uid.
    pub uid: Option<String>,
    /// Precondition on resourceVersion.
    pub resource_version: Option<String>,
    /// Store nothing.
    pub dry_run: bool,
}

/// List parameters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// labelSelector
    pub label: LabelSelector,
    /// fieldSelector
    pub field: FieldSelector,
    /// limit (0 = all)
    pub limit: usize,
    /// continue token
    pub continue_token: Option<String>,
    /// resourceVersion
    pub resource_version: Option<String>,
    /// resourceVersionMatch
    pub resource_version_match: Option<String>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects in (namespace, name) order.
    pub items: Vec<Arc<Stored>>,
    /// resourceVersion of the list.
    pub resource_version: u64,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

pub(crate) struct State {
    rv: u64,
    seq: u64,
    collections: HashMap<(String, String), Collection>,
    history: VecDeque<Arc<WatchEvent>>,
    compacted_rv: u64,
    registry: Registry,
    /// owner uid -> dependents
    dependents: HashMap<String, BTreeSet<ObjectKey>>,
    /// uid -> object
    uids: HashMap<String, ObjectKey>,
    history_limit: usize,
    /// (group, plural) -> the resourceVersion of the collection's latest change.
    changed: HashMap<(String, String), u64>,
}

/// The shared store.
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    clock: SharedClock,
    /// Tunables.
    pub config: Config,
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::Internal("metadata".into()))
}

fn meta_str(obj: &Value, field: &str) -> String {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether two objects are equal but for `metadata.resourceVersion` and `metadata.managedFields`. Compared in
/// place: every write asks, and copying both objects to compare them was a third of a status update's cost.
fn same_but_volatile(a: &Value, b: &Value) -> bool {
    same_object_except(a, b, &[], |key, a, b| match key {
        "metadata" => same_object_except(a, b, &["resourceVersion", "managedFields"], |_, a, b| {
            a == b
        }),
        _ => a == b,
    })
}

/// Whether the spec part of two objects (everything but `metadata` and `status`) is equal.
fn same_spec(a: &Value, b: &Value) -> bool {
    same_object_except(a, b, &["metadata", "status"], |_, a, b| a == b)
}

/// Whether `a` and `b` are objects with the same keys outside `skip` and `equal` holds for each key's values.
fn same_object_except(
    a: &Value,
    b: &Value,
    skip: &[&str],
    equal: impl Fn(&str, &Value, &Value) -> bool,
) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let kept = |m: &Map<String, Value>| m.keys().filter(|k| !skip.contains(&k.as_str())).count();
    kept(a) == kept(b)
        && a.iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .all(|(k, va)| b.get(k).is_some_and(|vb| equal(k, va, vb)))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn invalid(rt: &ResourceType, name: &str, errors: &[String]) -> ApiError {
    let detail = if errors.len() == 1 {
        errors[0].clone()
    } else {
        format!("[{}]", errors.join(", "))
    };
    let kind = if rt.group.is_empty() {
        rt.kind.clone()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    ApiError::Invalid(format!("{kind} \"{name}\" is invalid: {detail}"))
}

fn conflict_message(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
        qualified(&rt.resource, &rt.group)
    ))
}

fn patch_error(e: PatchError) -> ApiError {
    match e {
        PatchError::Malformed(m) => ApiError::BadRequest(m),
        PatchError::DoesNotApply(m) => ApiError::Invalid(m),
    }
}

impl State {
    fn collection(&self, group: &str, resource: &str) -> Option<&Collection> {
        self.collections
            .get(&(group.to_string(), resource.to_string()))
    }

    fn lookup(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Arc<Stored>> {
        self.collection(&rt.group, &rt.resource)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        splitmix(self.seq)
    }

    fn new_uid(&mut self) -> String {
        let a = self.next_seq();
        let b = self.next_seq();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48 & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn push_history(&mut self, ev: Arc<WatchEvent>, tx: &broadcast::Sender<Arc<WatchEvent>>) {
        // Every change is an event, so this is the one place that sees them all.
        match self
            .changed
            .get_mut(&(ev.group.clone(), ev.resource.clone()))
        {
            Some(rv) => *rv = ev.object.rv,
            None => {
                self.changed
                    .insert((ev.group.clone(), ev.resource.clone()), ev.object.rv);
            }
        }
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.object.rv;
            }
        }
        // No receivers is not an error: nobody is watching.
        let _ = tx.send(ev);
    }

    /// The events after `rv` (exclusive), in order; 410 Gone when history no longer reaches back that far.
    fn history_after(&self, rv: u64) -> Result<impl Iterator<Item = &Arc<WatchEvent>>, ApiError> {
        if rv < self.compacted_rv {
            return Err(ApiError::Gone(format!(
                "too old resource version: {rv} ({})",
                self.compacted_rv + 1
            )));
        }
        // History is in resourceVersion order: skip what the reader has seen without looking at it.
        let first = self.history.partition_point(|e| e.object.rv <= rv);
        Ok(self.history.range(first..))
    }

    fn index(&mut self, key: &ObjectKey, old: Option<&Stored>, new: Option<&Stored>) {
        if let Some(o) = old {
            for owner in &o.owner_uids {
                if let Some(set) = self.dependents.get_mut(owner) {
                    set.remove(key);
                    if set.is_empty() {
                        self.dependents.remove(owner);
                    }
                }
            }
            self.uids.remove(&o.uid);
        }
        if let Some(n) = new {
            for owner in &n.owner_uids {
                self.dependents
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.uids.insert(n.uid.clone(), key.clone());
        }
    }

    /// Stores `obj` with a fresh resourceVersion and records the event; returns the object as stored (what the write
    /// answers, without parsing the stored bytes again).
    fn put(
        &mut self,
        tx: &broadcast::Sender<Arc<WatchEvent>>,
        rt: &ResourceType,
        mut obj: Value,
        kind: EventType,
    ) -> Result<Value, ApiError> {
        let rv = self.rv + 1;
        metadata_mut(&mut obj)?.insert("resourceVersion".into(), json!(rv.to_string()));
        let stored = Arc::new(Stored::from_value(&obj, rv)?);
        self.rv = rv;
        let key = ObjectKey {
            group: rt.group.clone(),
            resource: rt.resource.clone(),
            namespace: stored.namespace.clone(),
            name: stored.name.clone(),
        };
        let coll = self
            .collections
            .entry((rt.group.clone(), rt.resource.clone()))
            .or_default();
        let previous = coll.insert(
            (stored.namespace.clone(), stored.name.clone()),
            stored.clone(),
        );
        self.index(&key, previous.as_deref(), Some(&stored));
        let ev = Arc::new(WatchEvent {
            kind,
            group: rt.group.clone(),
            resource: rt.resource.clone(),
            object: stored.clone(),
            previous,
        });
        self.push_history(ev, tx);
        Ok(obj)
    }
}

/// Events to replay, a subscription for what follows, and the latest resourceVersion.
pub type HistoryResume = (
    Vec<Arc<WatchEvent>>,
    broadcast::Receiver<Arc<WatchEvent>>,
    u64,
);

/// Query value helpers for the HTTP layer.
pub fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&json!({"rv": rv, "ns": ns, "name": name})).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?,
        v.get("ns")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_string(),
        v.get("name")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_string(),
    ))
}

enum Work {
    Delete(ObjectKey, Option<String>),
    Orphan(ObjectKey, String),
}

impl Store {
    /// An empty store with the built-in kinds and the default namespaces.
    pub fn new(clock: SharedClock, config: Config) -> Self {
        let (events, _) = broadcast::channel(4096);
        let state = State {
            rv: 0,
            seq: 0,
            collections: HashMap::new(),
            history: VecDeque::new(),
            compacted_rv: 0,
            registry: Registry::builtins(),
            dependents: HashMap::new(),
            uids: HashMap::new(),
            history_limit: config.history_limit.max(1),
            changed: HashMap::new(),
        };
        let store = Store {
            state: Mutex::new(state),
            events,
            clock,
            config,
        };
        if let Some(rt) = store.resource_type("", "namespaces") {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let created = store.create(
                    &rt,
                    "",
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    &WriteOptions::default(),
                );
                debug_assert!(created.is_ok());
            }
        }
        store
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written object (writes are single inserts), so a
        // poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current time as metav1.Time.
    pub fn now(&self) -> String {
        format_time(self.clock.now())
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Subscribes to all future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.events.subscribe()
    }

    /// Latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The resourceVersion of the latest change to any object of the kind (0: none yet), so a reader can tell
    /// cheaply whether the kind changed since it last looked.
    pub fn collection_version(&self, rt: &ResourceType) -> u64 {
        let st = self.lock();
        st.changed
            .get(&(rt.group.clone(), rt.resource.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// A copy of the registry.
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Looks up a kind by group and plural.
    pub fn resource_type(&self, group: &str, resource: &str) -> Option<Arc<ResourceType>> {
        self.lock().registry.get(group, resource)
    }

    /// Forgets all watch history: every resumed watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.compacted_rv = st.rv;
    }

    /// Number of objects of a kind.
    pub fn count(&self, group: &str, resource: &str) -> usize {
        self.lock()
            .collection(group, resource)
            .map(|c| c.len())
            .unwrap_or(0)
    }

    /// Reads one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        self.lock()
            .lookup(rt, ns, name)
            .ok_or_else(|| ApiError::object_not_found(&rt.resource, &rt.group, name))
    }

    /// Lists objects; `ns` None lists across namespaces.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &ListQuery,
    ) -> Result<ListPage, ApiError> {
        let st = self.lock();
        let mut list_rv = st.rv;
        if let Some(rv) = q
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "0")
        {
            let n: u64 = rv
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version {rv:?}")))?;
            if q.resource_version_match.as_deref() == Some("Exact") && n != st.rv {
                // Only the latest state is kept, so an exact historic list can never be served.
                return Err(ApiError::Gone(format!(
                    "too old resource version: {n} ({})",
                    st.rv
                )));
            }
        }
        let mut start: Option<(String, String)> = None;
        if let Some(token) = q.continue_token.as_deref().filter(|s| !s.is_empty()) {
            let (rv, cns, cname) = decode_continue(token)?;
            if rv < st.compacted_rv {
                return Err(ApiError::Gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                ));
            }
            list_rv = rv;
            start = Some((cns, cname));
        }
        let mut items = Vec::new();
        let mut continue_token = None;
        if let Some(coll) = st.collection(&rt.group, &rt.resource) {
            let lower = match (&start, ns) {
                (Some(s), _) => std::ops::Bound::Excluded(s.clone()),
                (None, Some(n)) => std::ops::Bound::Included((n.to_string(), String::new())),
                (None, None) => std::ops::Bound::Unbounded,
            };
            let mut iter = coll
                .range((lower, std::ops::Bound::Unbounded))
                .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons));
            let matches =
                |s: &Stored| q.label.matches(&s.labels) && q.field.matches(|f| s.field(f));
            for ((ons, name), s) in iter.by_ref() {
                if ns.is_some_and(|n| n != ons) {
                    break;
                }
                if !matches(s) {
                    continue;
                }
                items.push(s.clone());
                if q.limit > 0 && items.len() == q.limit {
                    continue_token = Some(encode_continue(list_rv, ons, name));
                    break;
                }
            }
            if continue_token.is_some() {
                // Only whether more follow is needed for the token; counting them all would make paging quadratic.
                let more = iter
                    .take_while(|((ons, _), _)| ns.is_none_or(|n| n == ons))
                    .any(|(_, s)| matches(s));
                if !more {
                    continue_token = None;
                }
            }
        }
        Ok(ListPage {
            items,
            resource_version: list_rv,
            continue_token,
        })
    }

    /// Events after `rv` (exclusive) from history, or 410 when history no longer reaches back that far.
    pub fn history_since(&self, rv: u64) -> Result<HistoryResume, ApiError> {
        let st = self.lock();
        let events = st.history_after(rv)?.cloned().collect();
        Ok((events, self.events.subscribe(), st.rv))
    }

    /// The changes to the given (group, plural) collections after `rv` (exclusive), in order, and the
    /// resourceVersion they bring a reader up to; 410 Gone when history no longer reaches back that far. For
    /// in-process readers that keep their own view (the binder) without listing everything again.
    pub fn changes_since(
        &self,
        rv: u64,
        collections: &[(&str, &str)],
    ) -> Result<(Vec<Arc<WatchEvent>>, u64), ApiError> {
        let st = self.lock();
        let events = st
            .history_after(rv)?
            .filter(|e| {
                collections
                    .iter()
                    .any(|(g, r)| e.group == *g && e.resource == *r)
            })
            .cloned()
            .collect();
        Ok((events, st.rv))
    }

    /// A consistent snapshot of a kind plus a subscription starting right after it.
    pub fn snapshot_and_subscribe(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
    ) -> (Vec<Arc<Stored>>, broadcast::Receiver<Arc<WatchEvent>>, u64) {
        let st = self.lock();
        let items = st
            .collection(&rt.group, &rt.resource)
            .map(|c| {
                c.values()
                    .filter(|s| ns.is_none_or(|n| n == s.namespace))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (items, self.events.subscribe(), st.rv)
    }

    fn validate(&self, rt: &ResourceType, obj: &mut Value, strict: bool) -> Result<(), ApiError> {
        let name = meta_str(obj, "name");
        if let Some(check) = rt.typed_check {
            check(obj).map_err(|e| {
                ApiError::BadRequest(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    rt.kind,
                    rt.storage_version(),
                    rt.kind
                ))
            })?;
        }
        let mut errors = Vec::new();
        if rt.custom {
            let version = obj
                .get("apiVersion")
                .and_then(Value::as_str)
                .and_then(|a| a.rsplit('/').next())
                .unwrap_or_default()
                .to_string();
            let schema = rt
                .version(&version)
                .or(rt.versions.first())
                .and_then(|v| v.schema.clone());
            if let Some(schema) = schema {
                let result = schema::validate_object_root(obj, &schema);
                if strict && !result.unknown.is_empty() {
                    let fields: Vec<String> = result
                        .unknown
                        .iter()
                        .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
                        .collect();
                    return Err(ApiError::BadRequest(format!(
                        "strict decoding error: {}",
                        fields.join(", ")
                    )));
                }
                errors.extend(result.invalid);
            }
        }
        if rt.group.is_empty() && rt.resource == "pods" {
            match obj.pointer("/spec/containers").and_then(Value::as_array) {
                None => errors.push("spec.containers: Required value".into()),
                Some(cs) if cs.is_empty() => errors.push("spec.containers: Required value".into()),
                Some(cs) => {
                    for (i, c) in cs.iter().enumerate() {
                        if c.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            errors.push(format!("spec.containers[{i}].name: Required value"));
                        }
                        if c.get("image")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            errors.push(format!("spec.containers[{i}].image: Required value"));
                        }
                    }
                }
            }
        }
        if rt.group == "apiextensions.k8s.io" {
            if let Err(e) = from_crd(obj) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(rt, &name, &errors))
        }
    }

    fn set_type_meta(rt: &ResourceType, obj: &mut Value, version: &str) -> Result<(), ApiError> {
        let expected = rt.api_version(version);
        let map = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?;
        if let Some(av) = map.get("apiVersion").and_then(Value::as_str) {
            let served = rt.versions.iter().any(|v| rt.api_version(&v.name) == av);
            if !served {
                return Err(ApiError::BadRequest(format!("the API version in the data ({av}) does not match the expected API version ({expected})")));
            }
        }
        if let Some(k) = map.get("kind").and_then(Value::as_str) {
            if k != rt.kind {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        // Objects are kept in the storage version; no conversion between CRD versions is needed (strategy None).
        map.insert(
            "apiVersion".into(),
            json!(rt.api_version(rt.storage_version())),
        );
        map.insert("kind".into(), json!(rt.kind));
        Ok(())
    }

    /// Creates an object (POST).
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.create_locked(&mut st, rt, ns, obj, opts, None)
    }

    fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOptions,
        applied_by: Option<(&str, bool)>,
    ) -> Result<Value, ApiError> {
        let version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or(rt.storage_version())
            .to_string();
        Self::set_type_meta(rt, &mut obj, &version)?;
        let now = self.now();
        let mut name = meta_str(&obj, "name");
        let generate = meta_str(&obj, "generateName");
        if name.is_empty() && !generate.is_empty() {
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let mut x = st.next_seq();
            let suffix: String = (0..5)
                .map(|_| {
                    let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                    x /= ALPHABET.len() as u64;
                    c
                })
                .collect();
            name = format!("{generate}{suffix}");
        }
        if name.is_empty() {
            return Err(invalid(
                rt,
                "",
                &["metadata.name: Required value: name or generateName is required".into()],
            ));
        }
        if !valid_name(&name) && rt.resource != "customresourcedefinitions" {
            return Err(invalid(rt, &name, &[format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            )]));
        }
        let body_ns = meta_str(&obj, "namespace");
        if rt.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into()));
            }
            let ns_rt = st.registry.get("", "namespaces");
            let ns_obj = ns_rt.as_ref().and_then(|n| st.lookup(n, "", ns));
            match ns_obj {
                None => return Err(ApiError::NotFound(format!("namespaces \"{ns}\" not found"))),
                Some(n) if n.phase == "Terminating" => {
                    return Err(ApiError::Conflict(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
                }
                Some(_) => {}
            }
        }
        if st
            .lookup(rt, if rt.namespaced { ns } else { "" }, &name)
            .is_some()
        {
            return Err(ApiError::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                qualified(&rt.resource, &rt.group)
            )));
        }
        let uid = st.new_uid();
        {
            let meta = metadata_mut(&mut obj)?;
            meta.insert("name".into(), json!(name));
            if rt.namespaced {
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now));
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            meta.remove("resourceVersion");
            if rt.tracks_generation() {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
        if let Some(map) = obj.as_object_mut() {
            match (rt.group.as_str(), rt.resource.as_str()) {
                ("", "pods") => {
                    map.insert(
                        "status".into(),
                        json!({"phase": "Pending", "qosClass": qos_class(map.get("spec"))}),
                    );
                }
                ("", "namespaces") => {
                    map.insert("status".into(), json!({"phase": "Active"}));
                }
                ("", "nodes") => {}
                ("apiextensions.k8s.io", _) => {}
                _ if rt.status => {
                    map.remove("status");
                }
                _ => {}
            }
        }
        self.validate(rt, &mut obj, opts.strict)?;
        if rt.group == "apiextensions.k8s.io" {
            establish_crd(&mut obj);
        }
        let api_version = rt.api_version(&version);
        match applied_by {
            Some((manager, force)) => {
                let applied = obj.clone();
                obj = apply::apply(None, &applied, manager, force, &api_version, &now)
                    .map_err(|e| ApiError::Conflict(e.to_string()))?;
            }
            None => apply::track_update(
                None,
                &mut obj,
                &manager_or_default(&opts.field_manager),
                &api_version,
                &now,
                "",
            ),
        }
        if opts.dry_run {
            return Ok(obj);
        }
        let obj = st.put(&self.events, rt, obj, EventType::Added)?;
        if rt.group == "apiextensions.k8s.io" {
            if let Ok(new_type) = from_crd(&obj) {
                st.registry.insert(new_type);
            }
        }
        Ok(obj)
    }

    /// Replaces an object (PUT), on the main resource or the status subresource.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let current = st
            .lookup(rt, ns, name)
            .ok_or_else(|| ApiError::object_not_found(&rt.resource, &rt.group, name))?;
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = meta_str(&obj, "resourceVersion");
        if !body_rv.is_empty() && body_rv != current.rv.to_string() {
            return Err(conflict_message(rt, name));
        }
        let old = current.value()?;
        self.finish_update(&mut st, rt, &old, obj, opts, false)
    }

    /// Applies a patch (PATCH). Server-side apply creates the object when it does not exist.
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let current = st.lookup(rt, ns, name);
        let now = self.now();
        let manager = manager_or_default(&opts.field_manager);
        if let PatchKind::Apply { force } = kind {
            if opts.field_manager.is_empty() {
                return Err(ApiError::BadRequest("PATCH, application/apply-patch+yaml: fieldManager is required for apply requests".into()));
            }
            if !body.is_object() {
                return Err(ApiError::BadRequest(
                    "apply patch must be a YAML or JSON object".into(),
                ));
            }
            let body_name = meta_str(body, "name");
            if body_name != name {
                return Err(ApiError::BadRequest(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
            }
            if body.get("apiVersion").and_then(Value::as_str).is_none()
                || body.get("kind").and_then(Value::as_str).is_none()
            {
                return Err(ApiError::BadRequest(
                    "apiVersion and kind must be set in an apply configuration".into(),
                ));
            }
            let Some(current) = current else {
                return self.create_locked(
                    &mut st,
                    rt,
                    ns,
                    body.clone(),
                    opts,
                    Some((&opts.field_manager, force)),
                );
            };
            let old = current.value()?;
            let api_version = body
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut merged = apply::apply(
                Some(&old),
                body,
                &opts.field_manager,
                force,
                &api_version,
                &now,
            )
            .map_err(|e| ApiError::Conflict(e.to_string()))?;
            if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("resourceVersion".into(), json!(current.rv.to_string()));
            }
            return self.finish_update(&mut st, rt, &old, merged, opts, true);
        }
        let current =
            current.ok_or_else(|| ApiError::object_not_found(&rt.resource, &rt.group, name))?;
        let old = current.value()?;
        let patched = match kind {
            PatchKind::Json => patch::json_patch(&old, body).map_err(patch_error)?,
            PatchKind::Merge => {
                if !body.is_object() {
                    return Err(ApiError::BadRequest(
                        "merge patch must be a JSON object".into(),
                    ));
                }
                patch::merge_patch(&old, body)
            }
            PatchKind::Strategic => {
                if rt.custom {
                    return Err(ApiError::UnsupportedMediaType(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                    ));
                }
                if !body.is_object() {
                    return Err(ApiError::BadRequest(
                        "strategic merge patch must be a JSON object".into(),
                    ));
                }
                patch::strategic_merge(&old, body).map_err(patch_error)?
            }
            PatchKind::Apply { .. } => {
                return Err(ApiError::Internal("apply handled above".into()))
            }
        };
        let patched_rv = meta_str(&patched, "resourceVersion");
        if !patched_rv.is_empty() && patched_rv != current.rv.to_string() {
            return Err(conflict_message(rt, name));
        }
        let _ = manager;
        self.finish_update(&mut st, rt, &old, patched, opts, false)
    }

    /// The shared tail of update, patch and apply.
    fn finish_update(
        &self,
        st: &mut State,
        rt: &ResourceType,
        old: &Value,
        mut new: Value,
        opts: &WriteOptions,
        applied: bool,
    ) -> Result<Value, ApiError> {
        let name = meta_str(old, "name");
        let version = new
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or(rt.storage_version())
            .to_string();
        Self::set_type_meta(rt, &mut new, &version)?;
        let status_write = opts.subresource.as_deref() == Some("status");
        if status_write {
            let mut merged = old.clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if let Some(mf) = new.pointer("/metadata/managedFields") {
                merged["metadata"]["managedFields"] = mf.clone();
            }
            new = merged;
        } else if rt.status
            && rt.group != "apiextensions.k8s.io"
            && !(rt.group.is_empty() && rt.resource == "nodes" && applied)
        {
            // Writes to the main resource cannot change status when a status subresource exists.
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        {
            let old_meta = old.get("metadata").unwrap_or(&Value::Null);
            let meta = metadata_mut(&mut new)?;
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
                "namespace",
            ] {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            meta.insert(
                "resourceVersion".into(),
                old_meta
                    .get("resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        // A status write keeps the old spec by construction.
        if !status_write && rt.tracks_generation() && !same_spec(old, &new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            metadata_mut(&mut new)?.insert("generation".into(), json!(g));
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let old_f: BTreeSet<String> = finalizers(old).into_iter().collect();
            if finalizers(&new).iter().any(|f| !old_f.contains(f)) {
                return Err(invalid(rt, &name, &["metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted".into()]));
            }
        }
        self.validate(rt, &mut new, opts.strict)?;
        if rt.group == "apiextensions.k8s.io" {
            establish_crd(&mut new);
        }
        if !applied {
            let api_version = rt.api_version(&version);
            apply::track_update(
                Some(old),
                &mut new,
                &manager_or_default(&opts.field_manager),
                &api_version,
                &self.now(),
                if status_write { "status" } else { "" },
            );
        }
        if same_but_volatile(old, &new)
            && old.pointer("/metadata/managedFields") == new.pointer("/metadata/managedFields")
        {
            // A no-op write changes nothing, not even the resourceVersion, as in kube-apiserver.
            return Ok(old.clone());
        }
        if opts.dry_run {
            return Ok(new);
        }
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            let key = ObjectKey {
                group: rt.group.clone(),
                resource: rt.resource.clone(),
                namespace: meta_str(&new, "namespace"),
                name: name.clone(),
            };
            // The write that removes the last finalizer is seen by watchers as DELETED only.
            let stored = Arc::new(Stored::from_value(
                &new,
                old.pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
            )?);
            st.collections
                .entry((rt.group.clone(), rt.resource.clone()))
                .or_default()
                .insert((key.namespace.clone(), key.name.clone()), stored);
            self.remove_and_collect(st, key)?;
            return Ok(new);
        }
        let new = st.put(&self.events, rt, new, EventType::Modified)?;
        if rt.group == "apiextensions.k8s.io" {
            if let Ok(t) = from_crd(&new) {
                st.registry.insert(t);
            }
        }
        Ok(new)
    }

    /// Deletes an object (DELETE): finalizers delay removal; dependents are garbage collected.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns } else { "" };
        let current = st
            .lookup(rt, ns, name)
            .ok_or_else(|| ApiError::object_not_found(&rt.resource, &rt.group, name))?;
        if let Some(uid) = opts.uid.as_deref().filter(|u| !u.is_empty()) {
            if uid != current.uid {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current.uid
                )));
            }
        }
        if let Some(rv) = opts.resource_version.as_deref().filter(|r| !r.is_empty()) {
            if rv != current.rv.to_string() {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.rv
                )));
            }
        }
        if let Some(p) = opts.propagation.as_deref() {
            if !matches!(p, "Background" | "Foreground" | "Orphan") {
                return Err(ApiError::BadRequest(format!("propagationPolicy: Unsupported value: {p:?}: supported values: \"Background\", \"Foreground\", \"Orphan\"")));
            }
        }
        if opts.dry_run {
            return current.value();
        }
        let key = ObjectKey {
            group: rt.group.clone(),
            resource: rt.resource.clone(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        self.delete_locked(&mut st, key, opts.propagation.clone())?;
        match st.lookup(rt, ns, name) {
            Some(still) if still.uid == current.uid => still.value(),
            _ => {
                let mut v = current.value()?;
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.entry("deletionTimestamp").or_insert(json!(self.now()));
                }
                Ok(v)
            }
        }
    }

    fn delete_locked(
        &self,
        st: &mut State,
        key: ObjectKey,
        propagation: Option<String>,
    ) -> Result<(), ApiError> {
        self.run_work(st, vec![Work::Delete(key, propagation)])
    }

    fn run_work(&self, st: &mut State, initial: Vec<Work>) -> Result<(), ApiError> {
        let mut queue: VecDeque<Work> = initial.into();
        while let Some(work) = queue.pop_front() {
            match work {
                Work::Orphan(key, owner_uid) => self.orphan(st, &key, &owner_uid)?,
                Work::Delete(key, propagation) => {
                    let Some(rt) = st.registry.get(&key.group, &key.resource) else {
                        continue;
                    };
                    let Some(s) = st.lookup(&rt, &key.namespace, &key.name) else {
                        continue;
                    };
                    let mut v = s.value()?;
                    let policy = propagation.unwrap_or_else(|| "Background".into());
                    let dependents: Vec<ObjectKey> = st
                        .dependents
                        .get(&s.uid)
                        .map(|d| d.iter().cloned().collect())
                        .unwrap_or_default();
                    let is_container = rt.group.is_empty() && rt.resource == "namespaces";
                    let mut fins = finalizers(&v);
                    if policy == "Orphan" && !dependents.is_empty() {
                        // Orphaning happens before the owner goes, so the collector never sees these dependents.
                        for d in &dependents {
                            self.orphan(st, d, &s.uid)?;
                        }
                        st.dependents.remove(&s.uid);
                    }
                    if policy == "Foreground"
                        && !dependents.is_empty()
                        && !fins.contains(&"foregroundDeletion".to_string())
                    {
                        fins.push("foregroundDeletion".into());
                        v["metadata"]["finalizers"] = json!(fins);
                        for d in &dependents {
                            queue.push_back(Work::Delete(d.clone(), Some("Foreground".into())));
                        }
                    }
                    let mut contents = Vec::new();
                    if is_container {
                        for (gr, coll) in st.collections.iter() {
                            for ((ons, oname), _) in coll.range((key.name.clone(), String::new())..)
                            {
                                if *ons != key.name {
                                    break;
                                }
                                contents.push(ObjectKey {
                                    group: gr.0.clone(),
                                    resource: gr.1.clone(),
                                    namespace: ons.clone(),
                                    name: oname.clone(),
                                });
                            }
                        }
                    }
                    if fins.is_empty() && contents.is_empty() {
                        if v.pointer("/metadata/deletionTimestamp").is_none() {
                            // Record the deletion time on the final state delivered with DELETED.
                            v["metadata"]["deletionTimestamp"] = json!(self.now());
                            v["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                            let stored = Arc::new(Stored::from_value(&v, s.rv)?);
                            let coll = st
                                .collections
                                .entry((rt.group.clone(), rt.resource.clone()))
                                .or_default();
                            coll.insert((key.namespace.clone(), key.name.clone()), stored);
                        }
                        for w in self.remove_and_collect_work(st, key)? {
                            queue.push_back(w);
                        }
                    } else {
                        if v.pointer("/metadata/deletionTimestamp").is_none() {
                            v["metadata"]["deletionTimestamp"] = json!(self.now());
                            v["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                        }
                        if is_container {
                            v["status"]["phase"] = json!("Terminating");
                        }
                        let changed = s.value()? != v;
                        if changed {
                            st.put(&self.events, &rt, v, EventType::Modified)?;
                        }
                        for c in contents {
                            queue.push_back(Work::Delete(c, None));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the owner reference to `owner_uid` from an object.
    fn orphan(&self, st: &mut State, key: &ObjectKey, owner_uid: &str) -> Result<(), ApiError> {
        let Some(rt) = st.registry.get(&key.group, &key.resource) else {
            return Ok(());
        };
        let Some(s) = st.lookup(&rt, &key.namespace, &key.name) else {
            return Ok(());
        };
        let mut v = s.value()?;
        if let Some(refs) = v
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
        }
        st.put(&self.events, &rt, v, EventType::Modified)?;
        Ok(())
    }

    fn remove_and_collect(&self, st: &mut State, key: ObjectKey) -> Result<(), ApiError> {
        let work = self.remove_and_collect_work(st, key)?;
        self.run_work(st, work)
    }

    /// Removes an object for good, and returns the follow-up work: dependents to collect, owners waiting in
    /// foreground deletion, a terminating namespace that became empty.
    fn remove_and_collect_work(
        &self,
        st: &mut State,
        key: ObjectKey,
    ) -> Result<Vec<Work>, ApiError> {
        let mut work = Vec::new();
        let Some(rt) = st.registry.get(&key.group, &key.resource) else {
            return Ok(work);
        };
        let Some(coll) = st
            .collections
            .get_mut(&(key.group.clone(), key.resource.clone()))
        else {
            return Ok(work);
        };
        let Some(old) = coll.remove(&(key.namespace.clone(), key.name.clone())) else {
            return Ok(work);
        };
        st.index(&key, Some(&old), None);
        let rv = st.rv + 1;
        st.rv = rv;
        let mut last = old.value()?;
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        let deleted = Arc::new(Stored::from_value(&last, rv)?);
        let ev = Arc::new(WatchEvent {
            kind: EventType::Deleted,
            group: key.group.clone(),
            resource: key.resource.clone(),
            object: deleted,
            previous: Some(old.clone()),
        });
        st.push_history(ev, &self.events);
        // Garbage collector: dependents whose owners are all gone are deleted; others lose the dangling reference.
        if let Some(deps) = st.dependents.remove(&old.uid) {
            for d in deps {
                let Some(drt) = st.registry.get(&d.group, &d.resource) else {
                    continue;
                };
                let Some(ds) = st.lookup(&drt, &d.namespace, &d.name) else {
                    continue;
                };
                let alive = ds
                    .owner_uids
                    .iter()
                    .any(|u| *u != old.uid && st.uids.contains_key(u));
                if alive {
                    work.push(Work::Orphan(d, old.uid.clone()));
                } else {
                    work.push(Work::Delete(d, None));
                }
            }
        }
        // Owners in foreground deletion finish when their last dependent is gone.
        for owner_uid in &old.owner_uids {
            let Some(owner_key) = st.uids.get(owner_uid).cloned() else {
                continue;
            };
            if st.dependents.get(owner_uid).is_some_and(|d| !d.is_empty()) {
                continue;
            }
            let Some(ort) = st.registry.get(&owner_key.group, &owner_key.resource) else {
                continue;
            };
            let Some(os) = st.lookup(&ort, &owner_key.namespace, &owner_key.name) else {
                continue;
            };
            let mut ov = os.value()?;
            let fins = finalizers(&ov);
            if ov.pointer("/metadata/deletionTimestamp").is_some()
                && fins.iter().any(|f| f == "foregroundDeletion")
            {
                let rest: Vec<String> = fins
                    .into_iter()
                    .filter(|f| f != "foregroundDeletion")
                    .collect();
                ov["metadata"]["finalizers"] = json!(rest);
                let empty = rest.is_empty();
                st.put(&self.events, &ort, ov, EventType::Modified)?;
                if empty {
                    work.push(Work::Delete(owner_key, None));
                }
            }
        }
        // A terminating namespace goes away with its last object.
        if !key.namespace.is_empty() {
            if let Some(nrt) = st.registry.get("", "namespaces") {
                if let Some(n) = st.lookup(&nrt, "", &key.namespace) {
                    if n.phase == "Terminating"
                        && !st.collections.values().any(|c| {
                            c.range((key.namespace.clone(), String::new())..)
                                .next()
                                .is_some_and(|((ons, _), _)| *ons == key.namespace)
                        })
                    {
                        work.push(Work::Delete(
                            ObjectKey {
                                group: String::new(),
                                resource: "namespaces".into(),
                                namespace: String::new(),
                                name: key.namespace.clone(),
                            },
                            None,
                        ));
                    }
                }
            }
        }
        // A deleted CRD takes its objects and its endpoint with it.
        if key.group == "apiextensions.k8s.io" {
            if let Ok(t) = from_crd(&last) {
                st.registry.remove(&t.group, &t.resource);
                if let Some(objs) = st
                    .collections
                    .remove(&(t.group.clone(), t.resource.clone()))
                {
                    for ((ons, oname), s) in objs {
                        let k = ObjectKey {
                            group: t.group.clone(),
                            resource: t.resource.clone(),
                            namespace: ons,
                            name: oname,
                        };
                        st.index(&k, Some(&s), None);
                        let rv = st.rv + 1;
                        st.rv = rv;
                        let mut v = s.value()?;
                        v["metadata"]["resourceVersion"] = json!(rv.to_string());
                        let d = Arc::new(Stored::from_value(&v, rv)?);
                        st.push_history(
                            Arc::new(WatchEvent {
                                kind: EventType::Deleted,
                                group: t.group.clone(),
                                resource: t.resource.clone(),
                                object: d,
                                previous: Some(s),
                            }),
                            &self.events,
                        );
                    }
                }
            }
        }
        let _ = rt;
        Ok(work)
    }

    /// DELETE on a collection: deletes every matching object.
    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &ListQuery,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self.list(
            rt,
            ns,
            &ListQuery {
                limit: 0,
                continue_token: None,
                ..q.clone()
            },
        )?;
        let mut out = Vec::new();
        for s in page.items {
            match self.delete(rt, &s.namespace, &s.name, opts) {
                Ok(v) => out.push(v),
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// pods/binding: assigns a pod to a node, as kube-scheduler does.
    pub fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<(), ApiError> {
        let rt = self
            .resource_type("", "pods")
            .ok_or_else(|| ApiError::Internal("pods not registered".into()))?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(ApiError::Invalid(format!(
                "Binding.core \"{name}\" is invalid: target.name: Required value"
            )));
        }
        let mut st = self.lock();
        let current = st
            .lookup(&rt, ns, name)
            .ok_or_else(|| ApiError::object_not_found("pods", "", name))?;
        if !current.node_name.is_empty() {
            return Err(ApiError::Conflict(format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"", current.node_name)));
        }
        let mut v = current.value()?;
        v["spec"]["nodeName"] = json!(node);
        // The API server clears a nomination on binding (KEP-5278): the pod is where it is, not where expected.
        if let Some(status) = v.get_mut("status").and_then(Value::as_object_mut) {
            status.remove("nominatedNodeName");
        }
        set_condition(&mut v, "PodScheduled", "True", None, None, &self.now());
        st.put(&self.events, &rt, v, EventType::Modified)?;
        Ok(())
    }

    /// pods/eviction: deletes the pod unless a PodDisruptionBudget forbids it (429).
    pub fn evict(&self, ns: &str, name: &str, eviction: &Value) -> Result<(), ApiError> {
        let pods = self
            .resource_type("", "pods")
            .ok_or_else(|| ApiError::Internal("pods not registered".into()))?;
        let pdbs = self
            .resource_type("policy", "poddisruptionbudgets")
            .ok_or_else(|| ApiError::Internal("pdbs not registered".into()))?;
        let mut st = self.lock();
        let pod = st
            .lookup(&pods, ns, name)
            .ok_or_else(|| ApiError::object_not_found("pods", "", name))?;
        let pod_value = pod.value()?;
        let terminal = matches!(pod.phase.as_str(), "Succeeded" | "Failed");
        let being_deleted = pod_value.pointer("/metadata/deletionTimestamp").is_some();
        if !terminal && !being_deleted {
            let budgets: Vec<Value> = st
                .collection("policy", "poddisruptionbudgets")
                .map(|c| {
                    c.range((ns.to_string(), String::new())..)
                        .take_while(|((n, _), _)| n == ns)
                        .filter_map(|(_, s)| s.value().ok())
                        .collect()
                })
                .unwrap_or_default();
            let mut matching = Vec::new();
            for b in budgets {
                let sel =
                    LabelSelector::from_object(b.pointer("/spec/selector").unwrap_or(&Value::Null))
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                // An empty selector in policy/v1 matches every pod in the namespace.
                if sel.matches(&pod.labels) {
                    matching.push((b, sel));
                }
            }
            if matching.len() > 1 {
                return Err(ApiError::Internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into()));
            }
            if let Some((budget, sel)) = matching.pop() {
                let healthy_pod =
                    |s: &Stored| -> bool { s.phase == "Running" && !s.deleting && s.ready };
                let members: Vec<Arc<Stored>> = st
                    .collection("", "pods")
                    .map(|c| {
                        c.range((ns.to_string(), String::new())..)
                            .take_while(|((n, _), _)| n == ns)
                            .filter(|(_, s)| sel.matches(&s.labels))
                            .map(|(_, s)| s.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let expected = expected_pods(&st, &members, &budget);
                let healthy = members.iter().filter(|s| healthy_pod(s)).count() as i64;
                let pod_healthy = healthy_pod(&pod);
                let allowed = disruptions_allowed(&budget, expected, healthy)?;
                if pod_healthy && allowed <= 0 {
                    let bname = meta_str(&budget, "name");
                    return Err(ApiError::TooManyRequests(format!(
                        "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {bname} needs {} healthy pods and has {healthy} currently",
                        healthy - allowed
                    )));
                }
                // Record the disruption in the budget's status as the disruption controller would.
                let mut b = budget.clone();
                b["status"]["currentHealthy"] = json!(healthy);
                b["status"]["desiredHealthy"] = json!(healthy - allowed);
                b["status"]["expectedPods"] = json!(expected);
                b["status"]["disruptionsAllowed"] =
                    json!((allowed - i64::from(pod_healthy)).max(0));
                b["status"]["observedGeneration"] = b
                    .pointer("/metadata/generation")
                    .cloned()
                    .unwrap_or(json!(1));
                st.put(&self.events, &pdbs, b, EventType::Modified)?;
            }
        }
        let preconditions = eviction.pointer("/deleteOptions/preconditions");
        if let Some(uid) = preconditions
            .and_then(|p| p.get("uid"))
            .and_then(Value::as_str)
        {
            if uid != pod.uid {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    pod.uid
                )));
            }
        }
        let key = ObjectKey {
            group: String::new(),
            resource: "pods".into(),
            namespace: ns.into(),
            name: name.into(),
        };
        self.delete_locked(&mut st, key, None)
    }

    /// Number of events retained and the oldest resumable resourceVersion (for tests).
    pub fn history_window(&self) -> (usize, u64) {
        let st = self.lock();
        (st.history.len(), st.compacted_rv)
    }
}

/// The number of pods a budget expects: the replicas of the pods' controllers when every pod has one with a
/// scale (as the disruption controller computes it), otherwise the live pod count, never less than the count
/// recorded at the previous eviction (an evicted bare pod is still expected back).
fn expected_pods(st: &State, members: &[Arc<Stored>], budget: &Value) -> i64 {
    let live = members
        .iter()
        .filter(|s| !matches!(s.phase.as_str(), "Succeeded" | "Failed"))
        .count() as i64;
    // Owner uid -> its spec.replicas, read once per owner (members share a handful of controllers).
    let mut controllers: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut all_controlled = !members.is_empty();
    for m in members {
        let replicas = m.owner_uids.iter().find_map(|u| {
            let r = *controllers.entry(u.clone()).or_insert_with(|| {
                let key = st.uids.get(u)?;
                let rt = st.registry.get(&key.group, &key.resource)?;
                let owner = st.lookup(&rt, &key.namespace, &key.name)?.value().ok()?;
                owner.pointer("/spec/replicas").and_then(Value::as_i64)
            });
            r
        });
        if replicas.is_none() {
            all_controlled = false;
        }
    }
    if all_controlled {
        return controllers.values().flatten().sum();
    }
    let recorded = budget
        .pointer("/status/expectedPods")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    live.max(recorded)
}

/// `disruptionsAllowed` from minAvailable / maxUnavailable (integers or percentages).
fn disruptions_allowed(budget: &Value, expected: i64, healthy: i64) -> Result<i64, ApiError> {
    let resolve = |v: &Value, round_up: bool| -> Result<i64, ApiError> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| ApiError::Internal("PDB value is not an integer".into())),
            Value::String(s) => {
                let pct: i64 = s
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| ApiError::Internal(format!("invalid PDB value {s:?}")))?;
                let raw = pct * expected;
                Ok(if round_up {
                    (raw + 99) / 100
                } else {
                    raw / 100
                })
            }
            _ => Err(ApiError::Internal("invalid PDB value".into())),
        }
    };
    if let Some(min) = budget.pointer("/spec/minAvailable") {
        let desired = resolve(min, true)?;
        Ok(healthy - desired)
    } else if let Some(max) = budget.pointer("/spec/maxUnavailable") {
        let max = resolve(max, true)?;
        let desired = (expected - max).max(0);
        Ok(healthy - desired)
    } else {
        // No constraint: kube-apiserver treats this as maxUnavailable 0? No: policy/v1 requires one of them;
        // an empty spec means minAvailable 1... the real validation requires one; allow everything.
        Ok(i64::MAX / 2)
    }
}

fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn manager_or_default(m: &str) -> String {
    if m.is_empty() {
        "unknown".to_string()
    } else {
        m.to_string()
    }
}

/// QoS class from container requests and limits.
fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        let full = ["cpu", "memory"].iter().all(|r| {
            let l = lim.and_then(|l| l.get(*r));
            l.is_some() && req.and_then(|q| q.get(*r)).is_none_or(|q| Some(q) == l)
        });
        if !full {
            guaranteed = false;
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// Sets (or replaces) a condition of `status.conditions`.
pub fn set_condition(
    v: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
    now: &str,
) {
    if !v.get("status").is_some_and(Value::is_object) {
        v["status"] = json!({});
    }
    if !v["status"].get("conditions").is_some_and(Value::is_array) {
        v["status"]["conditions"] = json!([]);
    }
    let mut cond =
        json!({"type": kind, "status": status, "lastTransitionTime": now, "lastProbeTime": null});
    if let Some(r) = reason {
        cond["reason"] = json!(r);
    }
    if let Some(m) = message {
        cond["message"] = json!(m);
    }
    if let Some(list) = v["status"]["conditions"].as_array_mut() {
        if let Some(existing) = list
            .iter_mut()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        {
            if existing.get("status").and_then(Value::as_str) == Some(status) {
                if let Some(t) = existing.get("lastTransitionTime").cloned() {
                    cond["lastTransitionTime"] = t;
                }
            }
            *existing = cond;
        } else {
            list.push(cond);
        }
    }
}

/// Marks a CRD Established and NamesAccepted, as the apiextensions controllers do.
fn establish_crd(obj: &mut Value) {
    let names = obj.pointer("/spec/names").cloned().unwrap_or_default();
    let stored: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let t = obj
        .pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or(Value::Null);
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
        ]
    });
}
