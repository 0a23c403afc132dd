//! The packer behind [`solve`].
//!
//! Data layout, chosen for 20,000 pods in well under a second:
//! - pods with equal [`SchedulingSpec`]s form one class; every per-pod rule is prepared once per class;
//! - resources are fixed-length integer vectors (cpu, memory, ephemeral storage, pods, then each extended
//!   resource any pending pod asks for);
//! - topology keys and their values are interned; every node ("bin") stores its domain per key, and every
//!   distinct (selector, namespaces, key) of a constraint is one counter of matching pods per domain, updated
//!   on each placement, so affinity, anti-affinity and spread checks are a few hash lookups;
//! - which instance types of a group a class may use is a bitset per (zone, capacity type) slot, computed once
//!   per distinct node-affinity; a new node keeps the intersection of its pods' bitsets, so the final re-size
//!   only picks the cheapest type in the set that holds what was packed;
//! - first-fit scans remember, per class, how far the nodes were rejected for reasons that never go away
//!   (full, tainted, anti-affinity), and scans of new nodes are bounded, so a pod costs O(1) amortised.
//!
//! Spread on hostname treats the global minimum as 0 (a new node is always an empty domain), and a pod that
//! matches a placed pod's spread selector may not push that pod's domain over its skew: placements stay valid
//! in the final state, whatever order the kube-scheduler binds them in.

use super::predicates::{new_node_allocatable, new_node_label, new_node_labels};
use super::*;
use crate::model::instance_type::{labels, Offering};
use crate::model::pod::{
    HostPort, InclusionPolicy, NamespaceScope, SchedulingSpec, WhenUnsatisfiable, NODE_NAME_FIELD,
};
use crate::model::quantity::{format_bytes, format_cpu_millis};
use crate::model::taints::{first_blocking_taint, untolerated_preferences, Taint, TaintEffect};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::fx::FxMap;

/// The domain id of a node that does not exist yet: every counter is zero there.
const FRESH: u32 = u32::MAX;
/// The hostname new nodes are matched with while they are candidates (no selector names it).
const FRESH_NAME: &str = "\u{0}new-node";
/// How many open new nodes one placement examines before it opens another.
const SCAN_BUDGET: usize = 256;
const CPU: usize = 0;
const MEM: usize = 1;
const PODS: usize = 3;
/// Node labels whose value depends on the instance type: a node re-sized after packing would change them.
const TYPE_KEYS: [&str; 4] = [
    labels::INSTANCE_TYPE,
    labels::ARCH,
    labels::INSTANCE_FAMILY,
    labels::INSTANCE_SIZE,
];

#[derive(Clone, Debug, PartialEq)]
struct Bits(Vec<u64>);
impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn and_assign(&mut self, o: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a &= b;
        }
    }
    fn any(&self) -> bool {
        self.0.iter().any(|w| *w != 0)
    }
}

/// The result of one fit check: rejections that can never be undone let the scan skip the node next time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Check {
    Fits,
    Never,
    NotNow,
}

struct GroupType {
    catalog_index: usize,
    cap: Vec<u64>,
    vcpu: u64,
    memory_bytes: u64,
    /// (local slot, price, available) of the offerings the group's requirements admit.
    offerings: Vec<(usize, f64, bool, usize)>,
}

struct Group<'a> {
    spec: &'a NodeGroup,
    types: Vec<GroupType>,
    /// Global slot id of each local slot.
    slots: Vec<usize>,
    /// Per local slot, the local type indices offered there, cheapest first.
    by_price: Vec<Vec<usize>>,
    blocking_taints: Vec<Taint>,
    prefer_taints: Vec<Taint>,
    daemon_ports: Vec<HostPort>,
    launched: u32,
}

#[derive(Clone)]
enum Origin {
    Fixed,
    New {
        group: usize,
        ty: usize,
        slot: usize,
    },
}

struct Bin<'a> {
    name: String,
    origin: Origin,
    /// An existing node's labels are borrowed from the snapshot: a what-if solve over a large cluster would
    /// otherwise copy every node's labels.
    labels: Cow<'a, BTreeMap<String, String>>,
    zone: Option<String>,
    blocking_taints: Vec<Taint>,
    prefer_taints: Vec<Taint>,
    cap: Vec<u64>,
    used: Vec<u64>,
    host_ports: Vec<HostPort>,
    doms: Vec<Option<u32>>,
    compat: Option<Bits>,
    unschedulable: bool,
    pinned: bool,
    pods: Vec<usize>,
    closed: bool,
}

struct Counter {
    key: u16,
    selector: Requirements,
    namespaces: NamespaceScope,
    counts: FxMap<u32, u32>,
    total: u32,
    /// The tightest skew of placed pods spreading over this counter on a non-hostname key, with their domains.
    spread_owner: Option<(u32, Rc<Vec<u32>>)>,
    /// Per hostname domain, the tightest skew of the placed pods spreading over this counter there.
    host_limits: FxMap<u32, u32>,
}

impl Counter {
    fn count(&self, d: u32) -> u32 {
        if d == FRESH {
            0
        } else {
            self.counts.get(&d).copied().unwrap_or(0)
        }
    }
}

#[derive(Clone)]
struct Spread {
    ctr: usize,
    key: u16,
    max_skew: u32,
    self_match: bool,
    min_domains: u32,
    universe: Rc<Vec<u32>>,
    hostname: bool,
}

#[derive(Clone)]
enum Pref {
    Affinity {
        ctr: usize,
        key: u16,
        self_match: bool,
    },
    Anti {
        ctr: usize,
        key: u16,
    },
    NodeTerm(Requirements),
    Spread(Spread),
    PreferNoSchedule,
}

struct Class<'a> {
    spec: &'a SchedulingSpec,
    pods: Vec<usize>,
    req: Vec<u64>,
    terms: Rc<Vec<Requirements>>,
    terms_id: usize,
    /// Counters whose selector selects this class's pods.
    matched: Vec<usize>,
    /// Required anti-affinity terms this class carries (counter of pods they select) and the owner counters it feeds.
    anti: Vec<(usize, u16)>,
    owns: Vec<usize>,
    /// Owner counters of anti-affinity terms (of any pod) that select this class.
    targeted_by: Vec<usize>,
    affinity: Vec<(usize, u16, bool)>,
    spreads: Vec<Spread>,
    prefs: Vec<Pref>,
    type_dependent: bool,
    /// Per group: tolerated (blocking taints), and the compat bitsets per local slot.
    group_ok: Vec<bool>,
    fixed_ok: Option<Rc<Vec<usize>>>,
    level: usize,
    memo_fixed: usize,
    memo_new: usize,
    size_key: f64,
}

pub fn solve(
    snapshot: &Snapshot,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<Plan, SchedulingError> {
    validate(snapshot, catalog)?;
    let mut e = Engine::new(snapshot, catalog, now);
    e.run();
    e.repack();
    Ok(e.into_plan())
}

/// What a topology key's universe of domains depends on: the class's node-affinity terms, its tolerations (as
/// text), the key, and whether affinity and taints are honoured (the spread policies).
type UniverseKey = (usize, Vec<String>, u16, bool, bool);
/// What a class's list of admitting fixed nodes depends on: its node-affinity terms, tolerations and volume zones.
type FixedListKey = (
    usize,
    Vec<crate::model::taints::Toleration>,
    Option<std::collections::BTreeSet<String>>,
);

struct Engine<'a> {
    snap: &'a Snapshot,
    catalog: &'a Catalog,
    ext: Vec<String>,
    groups: Vec<Group<'a>>,
    slots: Vec<(String, crate::model::instance_type::CapacityType)>,
    bins: Vec<Bin<'a>>,
    fixed_count: usize,
    open_new: Vec<usize>,
    closed_pending: usize,
    keys: Vec<String>,
    key_ids: HashMap<String, u16>,
    /// Per topology key, the id of each of its values (ids are unique across keys).
    domain_ids: Vec<FxMap<String, u32>>,
    domain_count: u32,
    counters: Vec<Counter>,
    counter_ids: HashMap<(u16, Requirements, NamespaceScope), usize>,
    owners: Vec<Counter>,
    owner_ids: HashMap<(u16, Requirements, NamespaceScope), usize>,
    classes: Vec<Class<'a>>,
    terms_ids: HashMap<Vec<Requirements>, usize>,
    compat: FxMap<(usize, usize), Rc<Vec<Bits>>>,
    universes: HashMap<UniverseKey, Rc<Vec<u32>>>,
    fixed_lists: HashMap<FixedListKey, Rc<Vec<usize>>>,
    placed_on: Vec<Option<usize>>,
    reasons: Vec<Option<String>>,
    rem_sum: Vec<f64>,
    rem_count: f64,
    min_req: [u64; 2],
    totals: (u64, u64, u64),
    rng: u64,
    existing_pods: Vec<(usize, &'a Pod)>,
    /// Request sums and count of the next pods in packing order.
    window: (Vec<f64>, f64),
}

/// How many upcoming pods the type choice looks at.
const WINDOW: usize = 64;

fn to_vec(r: &Resources, ext: &[String]) -> Vec<u64> {
    let mut v = vec![r.cpu_millis, r.memory_bytes, r.ephemeral_bytes, r.pods];
    v.extend(ext.iter().map(|e| r.extended(e)));
    v
}

fn fits(used: &[u64], req: &[u64], cap: &[u64]) -> bool {
    used.iter().zip(req).zip(cap).all(|((u, r), c)| u + r <= *c)
}

fn split_taints(taints: &[Taint]) -> (Vec<Taint>, Vec<Taint>) {
    taints
        .iter()
        .cloned()
        .partition(|t| t.effect != TaintEffect::PreferNoSchedule)
}

impl<'a> Engine<'a> {
    fn new(snap: &'a Snapshot, catalog: &'a Catalog, now: DateTime<Utc>) -> Engine<'a> {
        let mut ext: Vec<String> = snap
            .pending
            .iter()
            .flat_map(|p| {
                p.spec
                    .requests
                    .extended
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, _)| k.clone())
            })
            .collect();
        ext.sort();
        ext.dedup();
        let rng = match snap.expander {
            Expander::Random { seed } => seed ^ 0x9e37_79b9_7f4a_7c15,
            _ => 0,
        };
        let mut e = Engine {
            snap,
            catalog,
            ext,
            groups: vec![],
            slots: vec![],
            bins: vec![],
            fixed_count: 0,
            open_new: vec![],
            closed_pending: 0,
            keys: vec![],
            key_ids: HashMap::new(),
            domain_ids: vec![],
            domain_count: 0,
            counters: vec![],
            counter_ids: HashMap::new(),
            owners: vec![],
            owner_ids: HashMap::new(),
            classes: vec![],
            terms_ids: HashMap::new(),
            compat: FxMap::default(),
            universes: HashMap::new(),
            fixed_lists: HashMap::new(),
            placed_on: vec![None; snap.pending.len()],
            reasons: vec![None; snap.pending.len()],
            rem_sum: vec![],
            rem_count: 0.0,
            min_req: [u64::MAX; 2],
            totals: (0, 0, 0),
            rng,
            existing_pods: vec![],
            window: (vec![0.0; 4], 0.0),
        };
        e.intern_key(labels::HOSTNAME);
        e.build_groups();
        e.collect_keys();
        e.build_fixed_bins(now);
        e.build_classes();
        e
    }

    fn intern_key(&mut self, key: &str) -> u16 {
        if let Some(&k) = self.key_ids.get(key) {
            return k;
        }
        let id = self.keys.len() as u16;
        self.keys.push(key.to_string());
        self.key_ids.insert(key.to_string(), id);
        id
    }

    fn domain(&mut self, key: u16, value: &str) -> u32 {
        let key = key as usize;
        if self.domain_ids.len() <= key {
            self.domain_ids.resize_with(key + 1, FxMap::default);
        }
        if let Some(&d) = self.domain_ids[key].get(value) {
            return d;
        }
        let id = self.domain_count;
        self.domain_count += 1;
        self.domain_ids[key].insert(value.to_string(), id);
        id
    }

    fn slot_id(&mut self, o: &Offering) -> usize {
        if let Some(i) = self
            .slots
            .iter()
            .position(|(z, c)| *z == o.zone && *c == o.capacity_type)
        {
            return i;
        }
        self.slots.push((o.zone.clone(), o.capacity_type));
        self.slots.len() - 1
    }

    fn build_groups(&mut self) {
        let index: HashMap<&str, usize> = self
            .catalog
            .instance_types
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        for g in &self.snap.groups {
            let mut group = Group {
                spec: g,
                types: vec![],
                slots: vec![],
                by_price: vec![],
                blocking_taints: split_taints(&g.taints).0,
                prefer_taints: split_taints(&g.taints).1,
                daemon_ports: g
                    .daemon_pods
                    .iter()
                    .flat_map(|d| d.spec.host_ports.iter().cloned())
                    .collect(),
                launched: 0,
            };
            let mut seen = HashSet::new();
            for name in &g.instance_types {
                let Some(&ci) = index.get(name.as_str()) else {
                    continue;
                };
                if !seen.insert(ci) {
                    continue;
                }
                let it = &self.catalog.instance_types[ci];
                let mut offerings = vec![];
                for (oi, o) in it.offerings.iter().enumerate() {
                    if !g
                        .requirements
                        .matches(|k| new_node_label(g, it, o, FRESH_NAME, k))
                    {
                        continue;
                    }
                    let global = self.slot_id(o);
                    let local = match group.slots.iter().position(|s| *s == global) {
                        Some(l) => l,
                        None => {
                            group.slots.push(global);
                            group.slots.len() - 1
                        }
                    };
                    offerings.push((local, o.price, o.available, oi));
                }
                if offerings.is_empty() {
                    continue;
                }
                let cap = to_vec(&new_node_allocatable(g, it), &self.ext);
                group.types.push(GroupType {
                    catalog_index: ci,
                    cap,
                    vcpu: it.vcpu as u64,
                    memory_bytes: it.memory_mib << 20,
                    offerings,
                });
            }
            group.by_price = vec![vec![]; group.slots.len()];
            for (lt, t) in group.types.iter().enumerate() {
                for (ls, _, _, _) in &t.offerings {
                    group.by_price[*ls].push(lt);
                }
            }
            for (ls, list) in group.by_price.iter_mut().enumerate() {
                let price = |lt: usize| {
                    group.types[lt]
                        .offerings
                        .iter()
                        .find(|o| o.0 == ls)
                        .map_or(f64::MAX, |o| o.1)
                };
                list.sort_by(|a, b| price(*a).total_cmp(&price(*b)).then(a.cmp(b)));
            }
            self.groups.push(group);
        }
    }

    fn collect_keys(&mut self) {
        let mut keys = vec![];
        for p in &self.snap.pending {
            let s = &p.spec;
            keys.extend(
                s.pod_affinity
                    .iter()
                    .chain(&s.pod_anti_affinity)
                    .map(|t| t.topology_key.clone()),
            );
            keys.extend(
                s.preferred_pod_affinity
                    .iter()
                    .chain(&s.preferred_pod_anti_affinity)
                    .map(|t| t.term.topology_key.clone()),
            );
            keys.extend(s.topology_spread.iter().map(|t| t.topology_key.clone()));
        }
        for n in &self.snap.nodes {
            for p in n.pods.iter() {
                keys.extend(
                    p.spec
                        .pod_anti_affinity
                        .iter()
                        .map(|t| t.topology_key.clone()),
                );
            }
        }
        keys.sort();
        keys.dedup();
        for k in keys {
            self.intern_key(&k);
        }
    }

    fn bin_doms(&mut self, name: &str, labels: &BTreeMap<String, String>) -> Vec<Option<u32>> {
        let mut doms = vec![None; self.keys.len()];
        for (k, dom) in doms.iter_mut().enumerate() {
            let value = labels.get(&self.keys[k]).map(String::as_str).or(if k == 0 {
                Some(name)
            } else {
                None
            });
            if let Some(v) = value {
                *dom = Some(self.domain(k as u16, v));
            }
        }
        doms
    }

    fn build_fixed_bins(&mut self, now: DateTime<Utc>) {
        let mut pod_list: Vec<(usize, &'a Pod)> = vec![];
        for n in &self.snap.nodes {
            let node = &n.node;
            let (blocking, prefer) = split_taints(&node.taints);
            let mut used = vec![0; 4 + self.ext.len()];
            let mut host_ports = vec![];
            for p in n.pods.iter() {
                for (u, r) in used.iter_mut().zip(to_vec(&p.spec.requests, &self.ext)) {
                    *u += r;
                }
                host_ports.extend(p.spec.host_ports.iter().cloned());
                pod_list.push((self.bins.len(), p));
            }
            let doms = self.bin_doms(&node.name, &node.labels);
            let it = node
                .labels
                .get(labels::INSTANCE_TYPE)
                .and_then(|t| self.catalog.get(t));
            self.totals.0 += 1;
            self.totals.1 += it.map_or(node.allocatable.cpu_millis.div_ceil(1000), |t| {
                t.vcpu as u64
            });
            self.totals.2 += it.map_or(node.allocatable.memory_bytes, |t| t.memory_mib << 20);
            self.bins.push(Bin {
                name: node.name.clone(),
                origin: Origin::Fixed,
                zone: node.labels.get(labels::ZONE).cloned(),
                labels: Cow::Borrowed(&node.labels),
                blocking_taints: blocking,
                prefer_taints: prefer,
                cap: to_vec(&node.allocatable, &self.ext),
                used,
                host_ports,
                doms,
                compat: None,
                unschedulable: node.unschedulable,
                pinned: true,
                pods: vec![],
                closed: false,
            });
        }
        for m in &self.snap.in_flight {
            if !in_flight_counts(m, now, self.snap.registration_timeout) {
                continue;
            }
            let (Some(gi), Some(it)) = (
                self.snap.groups.iter().position(|g| g.name == m.group),
                self.catalog.get(&m.instance_type),
            ) else {
                continue;
            };
            let g = &self.snap.groups[gi];
            let offering = it
                .offerings
                .iter()
                .find(|o| o.zone == m.zone && o.capacity_type == m.capacity_type)
                .cloned()
                .unwrap_or(Offering {
                    zone: m.zone.clone(),
                    capacity_type: m.capacity_type,
                    price: 0.0,
                    available: true,
                });
            let labels = new_node_labels(g, it, &offering, &m.name);
            let doms = self.bin_doms(&m.name, &labels);
            self.totals.0 += 1;
            self.totals.1 += it.vcpu as u64;
            self.totals.2 += it.memory_mib << 20;
            let mut host_ports = vec![];
            host_ports.extend(
                g.daemon_pods
                    .iter()
                    .flat_map(|d| d.spec.host_ports.iter().cloned()),
            );
            let mut used = vec![0; 4 + self.ext.len()];
            for p in m.pods.iter() {
                for (u, r) in used.iter_mut().zip(to_vec(&p.spec.requests, &self.ext)) {
                    *u += r;
                }
                host_ports.extend(p.spec.host_ports.iter().cloned());
                pod_list.push((self.bins.len(), p));
            }
            self.bins.push(Bin {
                name: m.name.clone(),
                origin: Origin::Fixed,
                zone: Some(m.zone.clone()),
                labels: Cow::Owned(labels),
                blocking_taints: split_taints(&g.taints).0,
                prefer_taints: split_taints(&g.taints).1,
                cap: to_vec(&new_node_allocatable(g, it), &self.ext),
                used,
                host_ports,
                doms,
                compat: None,
                unschedulable: false,
                pinned: true,
                pods: vec![],
                closed: false,
            });
        }
        self.fixed_count = self.bins.len();
        // Existing pods: counted into the counters once those exist (see build_classes); keep the list.
        self.existing_pods = pod_list;
    }
}

/// A selector nothing satisfies (a constraint with no label selector counts no pod).
fn never_selector() -> Requirements {
    let mut r = Requirements::new();
    r.add(
        "\u{0}no-selector",
        crate::model::requirements::Requirement {
            allows_absent: false,
            values: crate::model::requirements::ValueSet::Only(Default::default()),
            greater_than: None,
            less_than: None,
        },
    );
    r
}

impl<'a> Engine<'a> {
    fn counter(
        &mut self,
        key: &str,
        selector: &Option<Requirements>,
        namespaces: &NamespaceScope,
        owner: bool,
    ) -> (usize, u16) {
        let key = self.intern_key(key);
        let selector = selector.clone().unwrap_or_else(never_selector);
        let id = (key, selector, namespaces.clone());
        let (ids, list) = if owner {
            (&mut self.owner_ids, &mut self.owners)
        } else {
            (&mut self.counter_ids, &mut self.counters)
        };
        if let Some(&i) = ids.get(&id) {
            return (i, key);
        }
        list.push(Counter {
            key,
            selector: id.1.clone(),
            namespaces: id.2.clone(),
            counts: FxMap::default(),
            total: 0,
            spread_owner: None,
            host_limits: FxMap::default(),
        });
        ids.insert(id, list.len() - 1);
        (list.len() - 1, key)
    }

    fn terms_id(&mut self, terms: &[Requirements]) -> usize {
        if let Some(&i) = self.terms_ids.get(terms) {
            return i;
        }
        let i = self.terms_ids.len();
        self.terms_ids.insert(terms.to_vec(), i);
        i
    }

    /// Which types of group `gi` satisfy the node terms, per local slot.
    fn compat_for(&mut self, terms_id: usize, terms: &[Requirements], gi: usize) -> Rc<Vec<Bits>> {
        if let Some(c) = self.compat.get(&(terms_id, gi)) {
            return c.clone();
        }
        let g = &self.groups[gi];
        let mut bits = vec![Bits::new(g.types.len()); g.slots.len()];
        for (lt, t) in g.types.iter().enumerate() {
            let it = &self.catalog.instance_types[t.catalog_index];
            for &(ls, _, _, oi) in &t.offerings {
                let o = &it.offerings[oi];
                if terms
                    .iter()
                    .any(|r| r.matches(|k| new_node_label(g.spec, it, o, FRESH_NAME, k)))
                {
                    bits[ls].set(lt);
                }
            }
        }
        let rc = Rc::new(bits);
        self.compat.insert((terms_id, gi), rc.clone());
        rc
    }

    fn fresh_doms(&mut self, gi: usize, lt: usize, ls: usize) -> Vec<Option<u32>> {
        let g = &self.groups[gi];
        let it = &self.catalog.instance_types[g.types[lt].catalog_index];
        let oi = g.types[lt]
            .offerings
            .iter()
            .find(|o| o.0 == ls)
            .map_or(0, |o| o.3);
        let o = &it.offerings[oi];
        let spec = g.spec;
        let values: Vec<Option<String>> = (0..self.keys.len())
            .map(|k| {
                if k == 0 {
                    None
                } else {
                    new_node_label(spec, it, o, FRESH_NAME, &self.keys[k]).map(str::to_string)
                }
            })
            .collect();
        let mut doms = vec![None; self.keys.len()];
        doms[0] = Some(FRESH);
        for (k, v) in values.into_iter().enumerate() {
            if let Some(v) = v {
                doms[k] = Some(self.domain(k as u16, &v));
            }
        }
        doms
    }

    /// The domains of `key` a pod with these node terms and tolerations may count (its spread's eligible domains).
    fn universe(
        &mut self,
        terms_id: usize,
        terms: &[Requirements],
        spec: &SchedulingSpec,
        key: u16,
        honor_affinity: bool,
        honor_taints: bool,
    ) -> Rc<Vec<u32>> {
        let tol_key: Vec<String> = if honor_taints {
            spec.tolerations.iter().map(|t| format!("{t:?}")).collect()
        } else {
            vec![]
        };
        let cache = (terms_id, tol_key, key, honor_affinity, honor_taints);
        if let Some(u) = self.universes.get(&cache) {
            return u.clone();
        }
        let mut set = std::collections::BTreeSet::new();
        for b in &self.bins[..self.fixed_count] {
            let Some(d) = b.doms[key as usize] else {
                continue;
            };
            if honor_affinity
                && !terms.iter().any(|r| {
                    r.matches(|k| {
                        if k == NODE_NAME_FIELD {
                            Some(b.name.as_str())
                        } else {
                            b.labels.get(k).map(String::as_str)
                        }
                    })
                })
            {
                continue;
            }
            if honor_taints && first_blocking_taint(&b.blocking_taints, &spec.tolerations).is_some()
            {
                continue;
            }
            set.insert(d);
        }
        let type_dependent = TYPE_KEYS.contains(&self.keys[key as usize].as_str());
        for gi in 0..self.groups.len() {
            if honor_taints
                && first_blocking_taint(&self.groups[gi].blocking_taints, &spec.tolerations)
                    .is_some()
            {
                continue;
            }
            let compat = self.compat_for(terms_id, terms, gi);
            for ls in 0..self.groups[gi].slots.len() {
                let candidates: Vec<usize> = self.groups[gi].by_price[ls]
                    .iter()
                    .copied()
                    .filter(|lt| !honor_affinity || compat[ls].get(*lt))
                    .collect();
                for lt in candidates {
                    let doms = self.fresh_doms(gi, lt, ls);
                    if let Some(d) = doms[key as usize] {
                        set.insert(d);
                    }
                    if !type_dependent {
                        break;
                    }
                }
            }
        }
        let u = Rc::new(set.into_iter().collect::<Vec<_>>());
        self.universes.insert(cache, u.clone());
        u
    }

    fn selects(
        c: &Counter,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> bool {
        c.namespaces.contains(namespace, ns_labels.get(namespace))
            && c.selector.matches_labels(labels)
    }

    fn build_classes(&mut self) {
        let mut by_spec: HashMap<&'a SchedulingSpec, usize> = HashMap::new();
        let mut groups: Vec<(&'a SchedulingSpec, Vec<usize>)> = vec![];
        for (i, p) in self.snap.pending.iter().enumerate() {
            match by_spec.get(&p.spec) {
                Some(&c) => groups[c].1.push(i),
                None => {
                    by_spec.insert(&p.spec, groups.len());
                    groups.push((&p.spec, vec![i]));
                }
            }
        }
        let any_prefer_taints = self.groups.iter().any(|g| !g.prefer_taints.is_empty())
            || self.bins.iter().any(|b| !b.prefer_taints.is_empty());
        for (spec, pods) in groups {
            let mut req = to_vec(&spec.requests, &self.ext);
            req[PODS] = req[PODS].max(1);
            let terms = Rc::new(spec.node_terms());
            let terms_id = self.terms_id(&terms);
            let own_ns = NamespaceScope::only(&spec.namespace);
            let mut anti = vec![];
            let mut owns = vec![];
            for t in &spec.pod_anti_affinity {
                if t.selector.is_none() {
                    continue; // selects no pod: never violated
                }
                anti.push(self.counter(&t.topology_key, &t.selector, &t.namespaces, false));
                owns.push(
                    self.counter(&t.topology_key, &t.selector, &t.namespaces, true)
                        .0,
                );
            }
            let self_selects =
                |sel: &Option<Requirements>,
                 ns: &NamespaceScope,
                 nsl: &BTreeMap<String, BTreeMap<String, String>>| {
                    sel.as_ref().is_some_and(|s| s.matches_labels(&spec.labels))
                        && ns.contains(&spec.namespace, nsl.get(&spec.namespace))
                };
            let nsl = &self.snap.namespace_labels;
            let mut affinity = vec![];
            for t in &spec.pod_affinity {
                let selfm = self_selects(&t.selector, &t.namespaces, nsl);
                let (c, k) = self.counter(&t.topology_key, &t.selector, &t.namespaces, false);
                affinity.push((c, k, selfm));
            }
            let mut spreads = vec![];
            let mut soft_spreads = vec![];
            for t in &spec.topology_spread {
                let (ctr, key) = self.counter(&t.topology_key, &t.selector, &own_ns, false);
                let hostname = key == 0;
                let universe = if hostname {
                    Rc::new(vec![])
                } else {
                    self.universe(
                        terms_id,
                        &terms,
                        spec,
                        key,
                        t.node_affinity_policy == InclusionPolicy::Honor,
                        t.node_taints_policy == InclusionPolicy::Honor,
                    )
                };
                let s = Spread {
                    ctr,
                    key,
                    max_skew: t.max_skew,
                    self_match: t.selects(&spec.labels),
                    min_domains: t.min_domains.unwrap_or(1),
                    universe,
                    hostname,
                };
                match t.when_unsatisfiable {
                    WhenUnsatisfiable::DoNotSchedule => spreads.push(s),
                    WhenUnsatisfiable::ScheduleAnyway => soft_spreads.push(s),
                }
            }
            let mut prefs = vec![];
            if self.snap.respect_preferences {
                let mut pa: Vec<_> = spec.preferred_pod_affinity.iter().collect();
                pa.sort_by_key(|w| w.weight);
                for w in pa {
                    let selfm = self_selects(
                        &w.term.selector,
                        &w.term.namespaces,
                        &self.snap.namespace_labels,
                    );
                    let (ctr, key) = self.counter(
                        &w.term.topology_key,
                        &w.term.selector,
                        &w.term.namespaces,
                        false,
                    );
                    prefs.push(Pref::Affinity {
                        ctr,
                        key,
                        self_match: selfm,
                    });
                }
                let mut pn: Vec<_> = spec
                    .preferred_pod_anti_affinity
                    .iter()
                    .filter(|w| w.term.selector.is_some())
                    .collect();
                pn.sort_by_key(|w| w.weight);
                for w in pn {
                    let (ctr, key) = self.counter(
                        &w.term.topology_key,
                        &w.term.selector,
                        &w.term.namespaces,
                        false,
                    );
                    prefs.push(Pref::Anti { ctr, key });
                }
                let mut na: Vec<_> = spec.preferred_node_affinity.iter().collect();
                na.sort_by_key(|w| w.weight);
                prefs.extend(
                    na.into_iter()
                        .map(|w| Pref::NodeTerm(w.requirements.clone())),
                );
                prefs.extend(soft_spreads.into_iter().map(Pref::Spread));
                if any_prefer_taints {
                    prefs.push(Pref::PreferNoSchedule);
                }
            }
            let mut all_keys = spec
                .pod_affinity
                .iter()
                .chain(&spec.pod_anti_affinity)
                .map(|t| t.topology_key.as_str())
                .collect::<Vec<_>>();
            all_keys.extend(spec.topology_spread.iter().map(|t| t.topology_key.as_str()));
            all_keys.extend(
                spec.preferred_pod_affinity
                    .iter()
                    .chain(&spec.preferred_pod_anti_affinity)
                    .map(|t| t.term.topology_key.as_str()),
            );
            let type_dependent = all_keys.iter().any(|k| TYPE_KEYS.contains(k));
            let mut group_ok = vec![];
            for gi in 0..self.groups.len() {
                self.compat_for(terms_id, &terms, gi);
                group_ok.push(
                    first_blocking_taint(&self.groups[gi].blocking_taints, &spec.tolerations)
                        .is_none(),
                );
            }
            self.min_req[0] = self.min_req[0].min(req[CPU]);
            self.min_req[1] = self.min_req[1].min(req[MEM]);
            self.classes.push(Class {
                spec,
                pods,
                req,
                terms,
                terms_id,
                matched: vec![],
                anti,
                owns,
                targeted_by: vec![],
                affinity,
                spreads,
                prefs,
                type_dependent,
                group_ok,
                fixed_ok: None,
                level: 0,
                memo_fixed: 0,
                memo_new: 0,
                size_key: 0.0,
            });
        }
        // Existing pods' required anti-affinity terms keep matching pods out of their domains too.
        let existing = self.existing_pods.clone();
        for &(_, p) in &existing {
            for t in &p.spec.pod_anti_affinity {
                if t.selector.is_some() {
                    self.counter(&t.topology_key, &t.selector, &t.namespaces, true);
                }
            }
        }
        let nsl = &self.snap.namespace_labels;
        for c in &mut self.classes {
            c.matched = (0..self.counters.len())
                .filter(|&i| {
                    Self::selects(&self.counters[i], &c.spec.namespace, &c.spec.labels, nsl)
                })
                .collect();
            c.targeted_by = (0..self.owners.len())
                .filter(|&i| Self::selects(&self.owners[i], &c.spec.namespace, &c.spec.labels, nsl))
                .collect();
        }
        // Count the pods already running.
        // Pods are grouped by (namespace, labels) so each group is matched once; without counters nothing is matched.
        let mut cache: FxMap<(&str, &BTreeMap<String, String>), Vec<usize>> = FxMap::default();
        for &(bi, p) in &self.existing_pods {
            if self.counters.is_empty() && p.spec.pod_anti_affinity.is_empty() {
                continue;
            }
            let matched = cache
                .entry((p.spec.namespace.as_str(), &p.spec.labels))
                .or_insert_with(|| {
                    (0..self.counters.len())
                        .filter(|&i| {
                            Self::selects(&self.counters[i], &p.spec.namespace, &p.spec.labels, nsl)
                        })
                        .collect()
                });
            for &ci in matched.iter() {
                let c = &mut self.counters[ci];
                if let Some(d) = self.bins[bi].doms[c.key as usize] {
                    *c.counts.entry(d).or_default() += 1;
                    c.total += 1;
                }
            }
            for t in &p.spec.pod_anti_affinity {
                let Some(sel) = &t.selector else { continue };
                let key = self.key_ids[&t.topology_key];
                let oi = self.owner_ids[&(key, sel.clone(), t.namespaces.clone())];
                if let Some(d) = self.bins[bi].doms[key as usize] {
                    *self.owners[oi].counts.entry(d).or_default() += 1;
                    self.owners[oi].total += 1;
                }
            }
        }
        // Size: the dominant share of the total demand, so cpu and memory weigh alike whatever the mix.
        let (mut tc, mut tm) = (1.0f64, 1.0f64);
        for c in &self.classes {
            tc += c.req[CPU] as f64 * c.pods.len() as f64;
            tm += c.req[MEM] as f64 * c.pods.len() as f64;
        }
        for c in &mut self.classes {
            let ext = c.req[4..].iter().any(|v| *v > 0);
            c.size_key =
                (c.req[CPU] as f64 / tc).max(c.req[MEM] as f64 / tm) + if ext { 1.0 } else { 0.0 };
        }
        self.rem_sum = vec![0.0; 4];
        for c in &self.classes {
            for d in 0..4 {
                self.rem_sum[d] += c.req[d] as f64 * c.pods.len() as f64;
            }
            self.rem_count += c.pods.len() as f64;
        }
    }

    /// The fixed (existing and in-flight) nodes whose labels, taints and zone admit the class.
    fn fixed_list(&mut self, ci: usize) -> Rc<Vec<usize>> {
        if let Some(l) = &self.classes[ci].fixed_ok {
            return l.clone();
        }
        let c = &self.classes[ci];
        let key = (
            c.terms_id,
            c.spec.tolerations.clone(),
            c.spec.volume_zones.clone(),
        );
        let list = match self.fixed_lists.get(&key) {
            Some(l) => l.clone(),
            None => {
                let list: Vec<usize> = (0..self.fixed_count)
                    .filter(|&bi| {
                        let b = &self.bins[bi];
                        !b.unschedulable
                            && c.terms.iter().any(|r| {
                                r.matches(|k| {
                                    if k == NODE_NAME_FIELD {
                                        Some(b.name.as_str())
                                    } else {
                                        b.labels.get(k).map(String::as_str)
                                    }
                                })
                            })
                            && first_blocking_taint(&b.blocking_taints, &c.spec.tolerations)
                                .is_none()
                            && super::predicates::volume_zone_ok(c.spec, b.zone.as_deref())
                    })
                    .collect();
                let rc = Rc::new(list);
                self.fixed_lists.insert(key, rc.clone());
                rc
            }
        };
        self.classes[ci].fixed_ok = Some(list.clone());
        list
    }

    fn spread_check(&self, s: &Spread, doms: &[Option<u32>]) -> Check {
        let Some(d) = doms[s.key as usize] else {
            return Check::Never;
        };
        let ctr = &self.counters[s.ctr];
        let count = ctr.count(d) + s.self_match as u32;
        let min = if s.hostname || (s.universe.len() as u32) < s.min_domains {
            0
        } else {
            s.universe.iter().map(|u| ctr.count(*u)).min().unwrap_or(0)
        };
        if count <= s.max_skew + min {
            Check::Fits
        } else if s.hostname {
            Check::Never
        } else {
            Check::NotNow
        }
    }

    fn affinity_check(
        &self,
        ctr: usize,
        key: u16,
        self_match: bool,
        doms: &[Option<u32>],
    ) -> Check {
        let Some(d) = doms[key as usize] else {
            return Check::Never;
        };
        let c = &self.counters[ctr];
        if c.count(d) > 0 || (c.total == 0 && self_match) {
            Check::Fits
        } else {
            Check::NotNow
        }
    }

    fn check_topology(&self, c: &Class, level: usize, doms: &[Option<u32>]) -> Check {
        let mut worst = Check::Fits;
        for &(ctr, key) in &c.anti {
            if let Some(d) = doms[key as usize] {
                if self.counters[ctr].count(d) > 0 {
                    return Check::Never;
                }
            }
        }
        for &o in &c.targeted_by {
            let owner = &self.owners[o];
            if let Some(d) = doms[owner.key as usize] {
                if owner.count(d) > 0 {
                    return Check::Never;
                }
            }
        }
        for &(ctr, key, selfm) in &c.affinity {
            match self.affinity_check(ctr, key, selfm, doms) {
                Check::Fits => {}
                Check::Never => return Check::Never,
                Check::NotNow => worst = Check::NotNow,
            }
        }
        for s in &c.spreads {
            match self.spread_check(s, doms) {
                Check::Fits => {}
                Check::Never => return Check::Never,
                Check::NotNow => worst = Check::NotNow,
            }
        }
        for &ctr in &c.matched {
            let counter = &self.counters[ctr];
            let Some(d) = doms[counter.key as usize] else {
                continue;
            };
            if counter.key == 0 {
                if let Some(&limit) = counter.host_limits.get(&d) {
                    if counter.count(d) + 1 > limit {
                        return Check::Never;
                    }
                }
            } else if let Some((skew, universe)) = &counter.spread_owner {
                let min = universe
                    .iter()
                    .map(|u| counter.count(*u))
                    .min()
                    .unwrap_or(0);
                if counter.count(d) + 1 > skew + min {
                    worst = Check::NotNow;
                }
            }
        }
        for p in c.prefs.iter().skip(level) {
            let r = match p {
                Pref::Affinity {
                    ctr,
                    key,
                    self_match,
                } => self.affinity_check(*ctr, *key, *self_match, doms),
                Pref::Anti { ctr, key } => match doms[*key as usize] {
                    Some(d) if self.counters[*ctr].count(d) > 0 => Check::Never,
                    _ => Check::Fits,
                },
                Pref::Spread(s) => self.spread_check(s, doms),
                Pref::NodeTerm(_) | Pref::PreferNoSchedule => Check::Fits,
            };
            match r {
                Check::Fits => {}
                Check::Never => return Check::Never,
                Check::NotNow => worst = Check::NotNow,
            }
        }
        worst
    }

    fn check(&self, ci: usize, level: usize, bi: usize) -> Check {
        let c = &self.classes[ci];
        let b = &self.bins[bi];
        if b.unschedulable {
            return Check::Never;
        }
        if let Origin::New { group, ty, slot } = b.origin {
            if !c.group_ok[group]
                || !self.compat[&(c.terms_id, group)][slot].get(ty)
                || !super::predicates::volume_zone_ok(c.spec, b.zone.as_deref())
            {
                return Check::Never;
            }
        }
        if !fits(&b.used, &c.req, &b.cap) {
            return Check::Never;
        }
        if !c.spec.host_ports.is_empty()
            && !super::predicates::host_ports_free(&c.spec.host_ports, &b.host_ports)
        {
            return Check::Never;
        }
        for p in c.prefs.iter().skip(level) {
            match p {
                Pref::NodeTerm(t) if !t.matches(|k| b.labels.get(k).map(String::as_str)) => {
                    return Check::Never
                }
                // PreferNoSchedule taints, treated as blocking while the preference holds.
                Pref::PreferNoSchedule
                    if untolerated_preferences(&b.prefer_taints, &c.spec.tolerations) > 0 =>
                {
                    return Check::Never;
                }
                _ => {}
            }
        }
        self.check_topology(c, level, &b.doms)
    }

    fn place(&mut self, ci: usize, pod: usize, bi: usize, level: usize) {
        let c = &self.classes[ci];
        let b = &mut self.bins[bi];
        for (u, r) in b.used.iter_mut().zip(&c.req) {
            *u += r;
        }
        b.host_ports.extend(c.spec.host_ports.iter().cloned());
        b.pods.push(pod);
        if let Origin::New { group, slot, .. } = b.origin {
            if let Some(compat) = b.compat.as_mut() {
                compat.and_assign(&self.compat[&(c.terms_id, group)][slot]);
            }
            if c.type_dependent {
                b.pinned = true;
            }
        }
        for &ctr in &c.matched {
            let counter = &mut self.counters[ctr];
            if let Some(d) = b.doms[counter.key as usize] {
                *counter.counts.entry(d).or_default() += 1;
                counter.total += 1;
                if TYPE_KEYS.contains(&self.keys[counter.key as usize].as_str()) {
                    b.pinned = true;
                }
            }
        }
        for &o in &c.owns {
            let owner = &mut self.owners[o];
            if let Some(d) = b.doms[owner.key as usize] {
                *owner.counts.entry(d).or_default() += 1;
                owner.total += 1;
            }
        }
        let soft = c.prefs.iter().skip(level).filter_map(|p| {
            if let Pref::Spread(s) = p {
                Some(s)
            } else {
                None
            }
        });
        for s in c.spreads.iter().chain(soft) {
            let counter = &mut self.counters[s.ctr];
            let Some(d) = b.doms[s.key as usize] else {
                continue;
            };
            if s.hostname {
                let e = counter.host_limits.entry(d).or_insert(s.max_skew);
                *e = (*e).min(s.max_skew);
            } else {
                match &counter.spread_owner {
                    Some((skew, _)) if *skew <= s.max_skew => {}
                    _ => counter.spread_owner = Some((s.max_skew, s.universe.clone())),
                }
            }
        }
        self.placed_on[pod] = Some(bi);
    }

    fn is_closed(&self, bi: usize) -> bool {
        let b = &self.bins[bi];
        b.used[CPU] + self.min_req[0] > b.cap[CPU]
            || b.used[MEM] + self.min_req[1] > b.cap[MEM]
            || b.used[PODS] + 1 > b.cap[PODS]
    }

    fn try_place(&mut self, ci: usize, pod: usize, level: usize) -> bool {
        if self.classes[ci].level != level {
            self.classes[ci].level = level;
            self.classes[ci].memo_fixed = 0;
            self.classes[ci].memo_new = 0;
        }
        let list = self.fixed_list(ci);
        let mut advance = true;
        for idx in self.classes[ci].memo_fixed..list.len() {
            match self.check(ci, level, list[idx]) {
                Check::Fits => {
                    self.place(ci, pod, list[idx], level);
                    return true;
                }
                Check::Never if advance => self.classes[ci].memo_fixed = idx + 1,
                Check::Never => {}
                Check::NotNow => advance = false,
            }
        }
        let start = self
            .open_new
            .partition_point(|&b| b < self.classes[ci].memo_new);
        let mut advance = true;
        let mut evaluated = 0;
        for j in start..self.open_new.len() {
            let bi = self.open_new[j];
            if self.bins[bi].closed {
                continue;
            }
            if self.is_closed(bi) {
                self.bins[bi].closed = true;
                self.closed_pending += 1;
                continue;
            }
            evaluated += 1;
            if evaluated > SCAN_BUDGET {
                break;
            }
            match self.check(ci, level, bi) {
                Check::Fits => {
                    self.place(ci, pod, bi, level);
                    self.compact();
                    return true;
                }
                Check::Never if advance => self.classes[ci].memo_new = bi + 1,
                Check::Never => {}
                Check::NotNow => advance = false,
            }
        }
        self.compact();
        match self.open_bin(ci, level, None) {
            Some(bi) => {
                self.place(ci, pod, bi, level);
                self.open_new.push(bi);
                true
            }
            None => false,
        }
    }

    fn compact(&mut self) {
        if self.closed_pending > 32 && self.closed_pending * 4 > self.open_new.len() {
            let bins = &self.bins;
            self.open_new.retain(|&b| !bins[b].closed);
            self.closed_pending = 0;
        }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Opens the best new node for the class (group by the expander, instance type by work per dollar), or
    /// explains per group why none can be opened.
    fn open_bin(
        &mut self,
        ci: usize,
        level: usize,
        mut reasons: Option<&mut Vec<String>>,
    ) -> Option<usize> {
        let limits = &self.snap.limits;
        if let Some(max) = limits.max_nodes {
            if self.totals.0 >= max {
                if let Some(r) = reasons.as_mut() {
                    r.push(format!("cluster limit of {max} nodes reached"));
                }
                return None;
            }
        }
        if self.groups.is_empty() {
            if let Some(r) = reasons.as_mut() {
                r.push(
                    "no node group can launch nodes and no existing or in-flight node fits"
                        .to_string(),
                );
            }
            return None;
        }
        struct Cand {
            gi: usize,
            lt: usize,
            ls: usize,
            oi: usize,
            price: f64,
            eff: f64,
            waste: f64,
            n: f64,
        }
        let mut cands: Vec<Cand> = vec![];
        // The shape of the pods about to be packed (the next WINDOW in order), so a node's type matches the pods
        // that will fill it rather than the average of everything left.
        let avg: Vec<f64> = (0..4)
            .map(|d| {
                if self.window.1 > 0.0 {
                    self.window.0[d] / self.window.1
                } else {
                    self.rem_sum[d] / self.rem_count.max(1.0)
                }
            })
            .collect();
        let remaining = self.rem_count.max(1.0);
        // How many average remaining pods a type holds besides this pod (no cap by what remains).
        let holds = |cap: &[u64], req: &[u64]| -> f64 {
            let mut n = f64::MAX;
            for d in [CPU, MEM, PODS] {
                if avg[d] > 0.0 {
                    n = n.min(cap[d].saturating_sub(req[d]) as f64 / avg[d]);
                }
            }
            1.0 + n.floor()
        };
        for gi in 0..self.groups.len() {
            let c = &self.classes[ci];
            let g = &self.groups[gi];
            let gname = &g.spec.name;
            let mut why = |s: String| {
                if let Some(r) = reasons.as_mut() {
                    r.push(s);
                }
            };
            if !c.group_ok[gi] {
                let t = first_blocking_taint(&g.blocking_taints, &c.spec.tolerations)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                why(format!(
                    "group {gname} has taint {t} that the pod does not tolerate"
                ));
                continue;
            }
            if level < c.prefs.len()
                && c.prefs[level..]
                    .iter()
                    .any(|p| matches!(p, Pref::PreferNoSchedule))
                && untolerated_preferences(&g.prefer_taints, &c.spec.tolerations) > 0
            {
                continue;
            }
            if g.spec.current_replicas.saturating_add(g.launched) >= g.spec.max_replicas {
                why(format!(
                    "max replicas {} reached in group {gname}",
                    g.spec.max_replicas
                ));
                continue;
            }
            if !super::predicates::host_ports_free(&c.spec.host_ports, &g.daemon_ports) {
                why(format!(
                    "group {gname}: a DaemonSet on its nodes uses the pod's host port"
                ));
                continue;
            }
            let compat = self.compat[&(c.terms_id, gi)].clone();
            if !compat.iter().any(Bits::any) {
                why(self.affinity_reason(ci, gi));
                continue;
            }
            // Which slots the pod's topology, volumes and preferences admit.
            let type_dependent = self.classes[ci].type_dependent;
            let nslots = self.groups[gi].slots.len();
            let mut slot_ok = vec![Check::Never; nslots];
            let mut topo_reason = None;
            for (ls, ok) in slot_ok.iter_mut().enumerate() {
                if !compat[ls].any() {
                    continue;
                }
                let zone = &self.slots[self.groups[gi].slots[ls]].0;
                if !super::predicates::volume_zone_ok(self.classes[ci].spec, Some(zone)) {
                    topo_reason.get_or_insert_with(|| {
                        format!("group {gname}: no offering in the zones of the pod's volumes")
                    });
                    continue;
                }
                if type_dependent {
                    *ok = Check::Fits; // checked per type below
                    continue;
                }
                let lt = self.groups[gi].by_price[ls]
                    .iter()
                    .copied()
                    .find(|lt| compat[ls].get(*lt));
                let Some(lt) = lt else { continue };
                let doms = self.fresh_doms(gi, lt, ls);
                *ok = self.check_topology(&self.classes[ci], level, &doms);
                if *ok != Check::Fits && reasons.is_some() && topo_reason.is_none() {
                    topo_reason = Some(format!(
                        "group {gname}: {}",
                        self.topology_reason(ci, level, &doms)
                    ));
                }
            }
            let c = &self.classes[ci];
            let g = &self.groups[gi];
            let zeros = vec![0u64; c.req.len()];
            // The best price per average pod any type offers, and the cheapest node for what remains: the
            // estimated cost of finishing the remaining pods after a node of some type.
            let mut unit = f64::MAX;
            let mut smallest = f64::MAX;
            for t in &g.types {
                let Some(p) = t
                    .offerings
                    .iter()
                    .filter(|o| o.2)
                    .map(|o| o.1)
                    .min_by(f64::total_cmp)
                else {
                    continue;
                };
                if fits(&zeros, &c.req, &t.cap) {
                    unit = unit.min(p / holds(&t.cap, &c.req));
                    smallest = smallest.min(p);
                }
            }
            let mut best: Option<Cand> = None;
            let mut resource_fit = false;
            let mut limit_hit = None;
            for (lt, t) in g.types.iter().enumerate() {
                if !fits(&zeros, &c.req, &t.cap) {
                    continue;
                }
                if !t.offerings.iter().any(|o| compat[o.0].get(lt)) {
                    continue;
                }
                resource_fit = true;
                if let Some(max) = limits.max_cores {
                    if self.totals.1 + t.vcpu > max {
                        limit_hit = Some(format!("cluster limit of {max} cores reached"));
                        continue;
                    }
                }
                if let Some(max) = limits.max_memory_bytes {
                    if self.totals.2 + t.memory_bytes > max {
                        limit_hit = Some(format!(
                            "cluster limit of {} memory reached",
                            format_bytes(max)
                        ));
                        continue;
                    }
                }
                let it = &self.catalog.instance_types[t.catalog_index];
                let mut pick: Option<(usize, usize, f64)> = None;
                for &(ls, price, avail, oi) in &t.offerings {
                    if !avail || slot_ok[ls] != Check::Fits || !compat[ls].get(lt) {
                        continue;
                    }
                    if pick.as_ref().is_some_and(|p| p.2 <= price) {
                        continue;
                    }
                    let o = &it.offerings[oi];
                    let prefs_ok = c.prefs.iter().skip(level).all(|p| match p {
                        Pref::NodeTerm(r) => {
                            r.matches(|k| new_node_label(g.spec, it, o, FRESH_NAME, k))
                        }
                        _ => true,
                    });
                    if !prefs_ok {
                        continue;
                    }
                    pick = Some((ls, oi, price));
                }
                let Some((ls, oi, price)) = pick else {
                    continue;
                };
                let n = holds(&t.cap, &c.req).min(remaining).max(1.0);
                let left = remaining - n;
                let rest = if left > 0.0 {
                    (left * unit).max(smallest)
                } else {
                    0.0
                };
                // eff: minus the estimated cost of placing every remaining pod if this node opens now.
                let eff = -(price + rest);
                let waste = ((1.0 - n * avg[CPU] / t.cap[CPU].max(1) as f64).max(0.0)
                    + (1.0 - n * avg[MEM] / t.cap[MEM].max(1) as f64).max(0.0))
                    / 2.0;
                let better = match &best {
                    None => true,
                    Some(b) => {
                        let tol = 1e-6 * b.eff.abs().max(1e-9);
                        eff > b.eff + tol
                            || (eff >= b.eff - tol && (n > b.n || (n == b.n && price < b.price)))
                    }
                };
                if better {
                    best = Some(Cand {
                        gi,
                        lt,
                        ls,
                        oi,
                        price,
                        eff,
                        waste,
                        n,
                    });
                }
            }
            match best {
                Some(b) => cands.push(b),
                None => {
                    if let Some(r) = reasons.as_mut() {
                        r.push(if !resource_fit {
                            self.resource_reason(ci, gi, &compat)
                        } else if let Some(l) = limit_hit {
                            l
                        } else if let Some(t) = topo_reason {
                            t
                        } else {
                            format!("group {gname}: no available offering satisfies the pod's preferences")
                        });
                    }
                }
            }
        }
        if cands.is_empty() {
            return None;
        }
        let pick = match self.snap.expander {
            Expander::Cheapest => (0..cands.len()).max_by(|&a, &b| {
                cands[a]
                    .eff
                    .total_cmp(&cands[b].eff)
                    .then(cands[b].price.total_cmp(&cands[a].price))
                    .then(b.cmp(&a))
            }),
            Expander::LeastWaste => (0..cands.len()).min_by(|&a, &b| {
                cands[a]
                    .waste
                    .total_cmp(&cands[b].waste)
                    .then(cands[b].eff.total_cmp(&cands[a].eff))
                    .then(a.cmp(&b))
            }),
            Expander::Priority => (0..cands.len()).max_by(|&a, &b| {
                let pa = self.groups[cands[a].gi].spec.priority;
                let pb = self.groups[cands[b].gi].spec.priority;
                pa.cmp(&pb)
                    .then(cands[a].eff.total_cmp(&cands[b].eff))
                    .then(b.cmp(&a))
            }),
            Expander::Random { .. } => Some((self.next_random() % cands.len() as u64) as usize),
        }?;
        let cand = &cands[pick];
        let (gi, lt, ls, oi) = (cand.gi, cand.lt, cand.ls, cand.oi);
        let compat = self.compat[&(self.classes[ci].terms_id, gi)][ls].clone();
        Some(self.push_new_bin(gi, lt, ls, oi, compat))
    }

    /// Adds an empty new node of type `lt` with offering `oi` in local slot `ls` of group `gi`.
    fn push_new_bin(&mut self, gi: usize, lt: usize, ls: usize, oi: usize, compat: Bits) -> usize {
        let g = &self.groups[gi];
        let t = &g.types[lt];
        let it = &self.catalog.instance_types[t.catalog_index];
        let name = format!(
            "{}-new-{}",
            g.spec.name,
            self.bins.len() - self.fixed_count + 1
        );
        let labels = new_node_labels(g.spec, it, &it.offerings[oi], &name);
        let zone = it.offerings[oi].zone.clone();
        let cap = t.cap.clone();
        let (vcpu, mem) = (t.vcpu, t.memory_bytes);
        let blocking = g.blocking_taints.clone();
        let prefer = g.prefer_taints.clone();
        let host_ports = g.daemon_ports.clone();
        let doms = self.bin_doms(&name, &labels);
        self.groups[gi].launched += 1;
        self.totals.0 += 1;
        self.totals.1 += vcpu;
        self.totals.2 += mem;
        self.bins.push(Bin {
            name,
            origin: Origin::New {
                group: gi,
                ty: lt,
                slot: ls,
            },
            labels: Cow::Owned(labels),
            zone: Some(zone),
            blocking_taints: blocking,
            prefer_taints: prefer,
            used: vec![0; cap.len()],
            cap,
            host_ports,
            doms,
            compat: Some(compat),
            unschedulable: false,
            pinned: false,
            pods: vec![],
            closed: false,
        });
        self.bins.len() - 1
    }

    fn affinity_reason(&self, ci: usize, gi: usize) -> String {
        let c = &self.classes[ci];
        let g = &self.groups[gi];
        // Name the first key no instance type and offering of the group can satisfy.
        for term in c.terms.iter() {
            for (key, r) in term.iter() {
                let ok = g.types.iter().any(|t| {
                    let it = &self.catalog.instance_types[t.catalog_index];
                    t.offerings.iter().any(|&(_, _, _, oi)| {
                        r.matches(new_node_label(
                            g.spec,
                            it,
                            &it.offerings[oi],
                            FRESH_NAME,
                            key,
                        ))
                    })
                });
                if !ok {
                    return format!("group {}: no instance type or offering satisfies the pod's node affinity on {key}", g.spec.name);
                }
            }
        }
        format!(
            "group {}: no instance type satisfies the pod's node selector and affinity together",
            g.spec.name
        )
    }

    fn resource_reason(&self, ci: usize, gi: usize, compat: &[Bits]) -> String {
        let c = &self.classes[ci];
        let g = &self.groups[gi];
        let usable: Vec<&GroupType> = g
            .types
            .iter()
            .enumerate()
            .filter(|(lt, t)| t.offerings.iter().any(|o| compat[o.0].get(*lt)))
            .map(|(_, t)| t)
            .collect();
        for d in 0..c.req.len() {
            if c.req[d] > 0 && usable.iter().all(|t| t.cap[d] < c.req[d]) {
                let (amount, name) = match d {
                    CPU => (format_cpu_millis(c.req[d]), "cpu".to_string()),
                    MEM => (format_bytes(c.req[d]), "memory".to_string()),
                    2 => (format_bytes(c.req[d]), "ephemeral-storage".to_string()),
                    PODS => (c.req[d].to_string(), "pods".to_string()),
                    _ => (c.req[d].to_string(), self.ext[d - 4].clone()),
                };
                return format!(
                    "no instance type in group {} has {amount} {name}",
                    g.spec.name
                );
            }
        }
        format!(
            "no instance type in group {} fits the pod's requests together ({})",
            g.spec.name, c.spec.requests
        )
    }

    fn topology_reason(&self, ci: usize, level: usize, doms: &[Option<u32>]) -> String {
        let c = &self.classes[ci];
        let key = |k: u16| self.keys[k as usize].clone();
        for &(ctr, k) in &c.anti {
            if doms[k as usize].is_some_and(|d| self.counters[ctr].count(d) > 0) {
                return format!(
                    "pod anti-affinity on {} excludes every reachable domain",
                    key(k)
                );
            }
        }
        for &o in &c.targeted_by {
            let owner = &self.owners[o];
            if doms[owner.key as usize].is_some_and(|d| owner.count(d) > 0) {
                return format!(
                    "another pod's anti-affinity on {} excludes it",
                    key(owner.key)
                );
            }
        }
        for &(ctr, k, selfm) in &c.affinity {
            if self.affinity_check(ctr, k, selfm, doms) != Check::Fits {
                return format!(
                    "required pod affinity on {} matches no pod in a reachable domain",
                    key(k)
                );
            }
        }
        for s in &c.spreads {
            if self.spread_check(s, doms) != Check::Fits {
                return format!(
                    "topology spread on {} (maxSkew {}) would be exceeded",
                    key(s.key),
                    s.max_skew
                );
            }
        }
        let _ = level;
        "a placed pod's topology spread would be exceeded".to_string()
    }

    fn run(&mut self) {
        let mut order: Vec<usize> = (0..self.classes.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&self.classes[a], &self.classes[b]);
            // Pods with required pod affinity go after the pods they may follow, so they find them placed.
            y.spec
                .priority
                .cmp(&x.spec.priority)
                .then(x.affinity.is_empty().cmp(&y.affinity.is_empty()).reverse())
                .then(y.size_key.total_cmp(&x.size_key))
                .then(a.cmp(&b))
        });
        let mut failed: Vec<(usize, usize)> = vec![];
        for (pos, &ci) in order.iter().enumerate() {
            for k in 0..self.classes[ci].pods.len() {
                let pod = self.classes[ci].pods[k];
                // The window: what is left of this class, then the classes after it, up to WINDOW pods.
                let mut sum = vec![0.0; 4];
                let mut count = 0.0;
                let mut take = |c: &Class, n: usize| {
                    for (s, r) in sum.iter_mut().zip(&c.req) {
                        *s += *r as f64 * n as f64;
                    }
                    count += n as f64;
                };
                let here = (self.classes[ci].pods.len() - k).min(WINDOW);
                take(&self.classes[ci], here);
                let mut have = here;
                for &next in &order[pos + 1..] {
                    if have >= WINDOW {
                        break;
                    }
                    let n = self.classes[next].pods.len().min(WINDOW - have);
                    take(&self.classes[next], n);
                    have += n;
                }
                self.window = (sum, count);
                if !self.schedule(ci, pod) {
                    failed.push((ci, pod));
                }
                for d in 0..4 {
                    self.rem_sum[d] -= self.classes[ci].req[d] as f64;
                }
                self.rem_count -= 1.0;
            }
        }
        // A second chance: required pod affinity may point at pods placed after the first attempt.
        let mut still = vec![];
        for (ci, pod) in failed {
            self.classes[ci].level = 0;
            self.classes[ci].memo_fixed = 0;
            self.classes[ci].memo_new = 0;
            if !self.schedule(ci, pod) {
                still.push((ci, pod));
            }
        }
        for (ci, pod) in still {
            let mut reasons = vec![];
            let max = self.classes[ci].prefs.len();
            self.open_bin(ci, max, Some(&mut reasons));
            let reason = if reasons.is_empty() {
                "no node fits the pod".to_string()
            } else {
                reasons.join("; ")
            };
            self.reasons[pod] = Some(reason);
        }
    }

    fn schedule(&mut self, ci: usize, pod: usize) -> bool {
        let max = self.classes[ci].prefs.len();
        let mut level = self.classes[ci].level;
        loop {
            if self.try_place(ci, pod, level) {
                return true;
            }
            if level >= max {
                return false;
            }
            level += 1;
        }
    }

    /// Whether a class's pods are interchangeable across new nodes of one group and zone: no placement rule of
    /// theirs or of any other pod looks at which node they are on, and nothing depends on the node's type.
    fn free_class(&self, ci: usize) -> bool {
        let c = &self.classes[ci];
        c.anti.is_empty()
            && c.owns.is_empty()
            && c.targeted_by.is_empty()
            && c.matched.is_empty()
            && c.affinity.is_empty()
            && c.spreads.is_empty()
            && !c.type_dependent
            && c.spec.host_ports.is_empty()
            && c.spec.volume_zones.is_none()
            && c.prefs.iter().all(|p| matches!(p, Pref::PreferNoSchedule))
    }

    /// Re-packs the new nodes that carry only interchangeable pods, per (group, node terms) over every zone and
    /// capacity type the group offers, with
    /// [`super::repack::pack`], and keeps the result where it is strictly cheaper than what first-fit built.
    fn repack(&mut self) {
        let limits = &self.snap.limits;
        if self.snap.expander != Expander::Cheapest
            || limits.max_nodes.is_some()
            || limits.max_cores.is_some()
            || limits.max_memory_bytes.is_some()
        {
            return;
        }
        let free: Vec<bool> = (0..self.classes.len())
            .map(|ci| self.free_class(ci))
            .collect();
        let mut class_of = vec![usize::MAX; self.snap.pending.len()];
        for (ci, c) in self.classes.iter().enumerate() {
            for &p in &c.pods {
                class_of[p] = ci;
            }
        }
        let mut pools: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for bi in self.fixed_count..self.bins.len() {
            let b = &self.bins[bi];
            let Origin::New { group, .. } = b.origin else {
                continue;
            };
            if b.pinned || b.pods.is_empty() || !b.pods.iter().all(|&p| free[class_of[p]]) {
                continue;
            }
            let terms = self.classes[class_of[b.pods[0]]].terms_id;
            if b.pods
                .iter()
                .any(|&p| self.classes[class_of[p]].terms_id != terms)
            {
                continue;
            }
            pools.entry((group, terms)).or_default().push(bi);
        }
        for ((gi, terms), bins) in pools {
            self.repack_pool(gi, terms, &bins, &class_of);
        }
    }

    fn repack_pool(&mut self, gi: usize, terms: usize, bins: &[usize], class_of: &[usize]) {
        let g = &self.groups[gi];
        let compat = self.compat[&(terms, gi)].clone();
        // Candidates: (type, slot) pairs the pods' node terms allow, with an available offering there. The pods
        // are in no topology rule, so any zone and capacity type the group offers will do.
        let mut lts = vec![];
        let mut types = vec![];
        for ls in 0..g.slots.len() {
            for &lt in &g.by_price[ls] {
                if !compat[ls].get(lt) {
                    continue;
                }
                let Some(&(_, price, _, oi)) =
                    g.types[lt].offerings.iter().find(|o| o.0 == ls && o.2)
                else {
                    continue;
                };
                lts.push((lt, ls, oi));
                types.push(super::repack::NodeType {
                    cap: g.types[lt].cap.clone(),
                    price,
                });
            }
        }
        let mut old_cost = 0.0;
        for &bi in bins {
            let Origin::New { slot, .. } = self.bins[bi].origin else {
                return;
            };
            let used = &self.bins[bi].used;
            let price = lts
                .iter()
                .zip(&types)
                .filter(|((_, ls, _), t)| {
                    *ls == slot && used.iter().zip(&t.cap).all(|(u, c)| u <= c)
                })
                .map(|(_, t)| t.price)
                .min_by(f64::total_cmp);
            match price {
                Some(p) => old_cost += p,
                None => return,
            }
        }
        // One shape per distinct request vector, not per class: deployments with equal requests are one shape to
        // the packer (fewer, larger counts: a smaller LP and fuller patterns).
        let mut shape_of: BTreeMap<&[u64], usize> = BTreeMap::new();
        let mut reqs: Vec<Vec<u64>> = vec![];
        let mut pods_of: Vec<Vec<usize>> = vec![];
        for &bi in bins {
            for &p in &self.bins[bi].pods {
                let req = &self.classes[class_of[p]].req;
                let k = *shape_of.entry(req.as_slice()).or_insert_with(|| {
                    reqs.push(req.clone());
                    pods_of.push(vec![]);
                    reqs.len() - 1
                });
                pods_of[k].push(p);
            }
        }
        let counts: Vec<u64> = pods_of.iter().map(|v| v.len() as u64).collect();
        let all: Vec<usize> = (0..types.len()).collect();
        let Some(nodes) = super::repack::pack(&types, &all, &reqs, &counts) else {
            return;
        };
        let new_cost: f64 = nodes.iter().map(|n| types[n.ty].price).sum();
        let bounded = g.spec.max_replicas != u32::MAX;
        if new_cost >= old_cost - 1e-9 || (bounded && nodes.len() > bins.len()) {
            return;
        }
        // Apply: reuse the pool's nodes (names, zone), add nodes if the re-pack needs more, empty the rest.
        for &bi in bins {
            let b = &mut self.bins[bi];
            b.pods.clear();
            b.used.iter_mut().for_each(|u| *u = 0);
        }
        let mut next: Vec<usize> = vec![0; reqs.len()];
        for (i, n) in nodes.iter().enumerate() {
            let (lt, ls, oi) = lts[n.ty];
            let bi = match bins.get(i) {
                Some(&bi) => {
                    let it = &self.catalog.instance_types[self.groups[gi].types[lt].catalog_index];
                    let labels = new_node_labels(
                        self.groups[gi].spec,
                        it,
                        &it.offerings[oi],
                        &self.bins[bi].name,
                    );
                    let name = self.bins[bi].name.clone();
                    let doms = self.bin_doms(&name, &labels);
                    let b = &mut self.bins[bi];
                    b.origin = Origin::New {
                        group: gi,
                        ty: lt,
                        slot: ls,
                    };
                    b.cap = self.groups[gi].types[lt].cap.clone();
                    b.labels = Cow::Owned(labels);
                    b.doms = doms;
                    b.zone = Some(it.offerings[oi].zone.clone());
                    b.compat = Some(compat[ls].clone());
                    bi
                }
                None => self.push_new_bin(gi, lt, ls, oi, compat[ls].clone()),
            };
            for (k, &count) in n.take.iter().enumerate() {
                for _ in 0..count {
                    let p = pods_of[k][next[k]];
                    next[k] += 1;
                    let b = &mut self.bins[bi];
                    for (u, r) in b.used.iter_mut().zip(&reqs[k]) {
                        *u += r;
                    }
                    b.pods.push(p);
                    self.placed_on[p] = Some(bi);
                }
            }
        }
        for &bi in bins.iter().skip(nodes.len()) {
            self.groups[gi].launched = self.groups[gi].launched.saturating_sub(1);
            self.totals.0 = self.totals.0.saturating_sub(1);
            let _ = bi;
        }
    }

    fn into_plan(mut self) -> Plan {
        let key = |i: usize| self.snap.pending[i].key();
        let mut plan = Plan::default();
        for b in &self.bins[..self.fixed_count] {
            for &p in &b.pods {
                plan.assignments.push(Assignment {
                    pod: key(p),
                    node: b.name.clone(),
                });
            }
        }
        let limited =
            self.snap.limits.max_cores.is_some() || self.snap.limits.max_memory_bytes.is_some();
        for bi in self.fixed_count..self.bins.len() {
            let b = &mut self.bins[bi];
            let Origin::New { group, ty, slot } = b.origin else {
                continue;
            };
            if b.pods.is_empty() {
                continue; // emptied by the re-pack
            }
            let g = &self.groups[group];
            let compat = b.compat.as_ref().expect("new bins carry a compat set");
            let price_at = |lt: usize| {
                g.types[lt]
                    .offerings
                    .iter()
                    .find(|o| o.0 == slot && o.2)
                    .map(|o| o.1)
            };
            let holds = |lt: usize| {
                let t = &g.types[lt];
                compat.get(lt)
                    && price_at(lt).is_some()
                    && b.used.iter().zip(&t.cap).all(|(u, c)| u <= c)
                    && (!limited
                        || (t.vcpu <= g.types[ty].vcpu
                            && t.memory_bytes <= g.types[ty].memory_bytes))
            };
            let mut chosen = ty;
            let mut alternatives = vec![];
            if b.pinned {
                alternatives.push(ty);
            } else {
                for &lt in &g.by_price[slot] {
                    if holds(lt) {
                        alternatives.push(lt);
                        if alternatives.len() >= MAX_LAUNCH_TYPES {
                            break;
                        }
                    }
                }
                if let Some(&first) = alternatives.first() {
                    chosen = first;
                }
            }
            let name_of = |lt: usize| {
                self.catalog.instance_types[g.types[lt].catalog_index]
                    .name
                    .clone()
            };
            let (zone, ct) = self.slots[g.slots[slot]].clone();
            plan.new_machines.push(NewMachine {
                name: b.name.clone(),
                group: g.spec.name.clone(),
                instance_type: name_of(chosen),
                zone,
                capacity_type: ct,
                price: price_at(chosen).unwrap_or(0.0),
                instance_types: alternatives.into_iter().map(name_of).collect(),
                pods: b.pods.iter().map(|&p| key(p)).collect(),
            });
        }
        for (i, r) in self.reasons.iter().enumerate() {
            if let Some(r) = r {
                plan.unschedulable.push(Unschedulable {
                    pod: key(i),
                    reason: r.clone(),
                });
            }
        }
        plan
    }
}
