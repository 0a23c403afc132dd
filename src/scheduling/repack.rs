//! Cost-driven re-packing of pods that no placement rule ties to a particular node.
//!
//! The first-fit packer in `engine` opens one node at a time for the pods at hand; with two resources it often
//! blends cpu-heavy and memory-heavy pods onto general-purpose types, while the cheapest fractional cover buys
//! cpu from compute types and memory from memory types. This module re-packs a pool of interchangeable pods
//! (counts of a few shapes) onto a list of node types by column-generation style greedy:
//!
//! - the dual prices of cpu and memory come from the two-resource LP over what is left (an optimal basis has at
//!   most two types, so all pairs are tried on the non-dominated types);
//! - every type is filled from the remaining pods in a few orders (value, value per bottleneck share, cpu-heavy
//!   first, memory-heavy first) and the node whose packed value at dual prices per dollar is highest opens,
//!   repeated while the same pattern still fits the counts;
//! - finally pairs of the produced nodes are merged onto one cheaper node when one holds both.
//!
//! It works on plain vectors so it can be tested alone; the engine decides which pods are interchangeable and
//! keeps a re-pack only when it is strictly cheaper.

/// Resource dimensions follow the engine: cpu millis, memory bytes, then the rest (all capacity limits).
const CPU: usize = 0;
const MEM: usize = 1;

/// A node type a pool may use: capacity per dimension and its price.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeType {
    pub cap: Vec<u64>,
    pub price: f64,
}

/// One node of a re-pack: the index of its type and how many pods of each shape it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedNode {
    pub ty: usize,
    pub take: Vec<u64>,
}

/// The indices of the types no other type beats: another type with at least the capacity in every dimension
/// at no higher price (and strictly better somewhere, or equal and earlier) makes a type useless to a re-pack.
pub fn non_dominated(types: &[NodeType]) -> Vec<usize> {
    let mut keep = vec![];
    'outer: for (i, t) in types.iter().enumerate() {
        for (j, u) in types.iter().enumerate() {
            if i == j || u.price > t.price || !u.cap.iter().zip(&t.cap).all(|(a, b)| a >= b) {
                continue;
            }
            let strictly = u.price < t.price || u.cap.iter().zip(&t.cap).any(|(a, b)| a > b);
            if strictly || j < i {
                continue 'outer;
            }
        }
        keep.push(i);
    }
    keep
}

/// Dual prices (per cpu milli, per memory byte) of min Σ p_t x_t s.t. Σ cpu_t x_t ≥ cpu, Σ mem_t x_t ≥ mem.
pub fn lp_duals(types: &[NodeType], candidates: &[usize], cpu: f64, mem: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, 0.0, 0.0);
    for &i in candidates {
        let t = &types[i];
        let (c, m) = (t.cap[CPU] as f64, t.cap[MEM] as f64);
        if c <= 0.0 || m <= 0.0 {
            continue;
        }
        let (nc, nm) = (cpu / c, mem / m);
        let cost = t.price * nc.max(nm);
        if cost < best.0 {
            best = if nc >= nm { (cost, t.price / c, 0.0) } else { (cost, 0.0, t.price / m) };
        }
    }
    for (a, &i) in candidates.iter().enumerate() {
        let (c1, m1, p1) = (types[i].cap[CPU] as f64, types[i].cap[MEM] as f64, types[i].price);
        for &j in &candidates[a + 1..] {
            let (c2, m2, p2) = (types[j].cap[CPU] as f64, types[j].cap[MEM] as f64, types[j].price);
            let det = c1 * m2 - c2 * m1;
            if det.abs() < 1e-9 {
                continue;
            }
            let x1 = (cpu * m2 - c2 * mem) / det;
            let x2 = (c1 * mem - cpu * m1) / det;
            if x1 < 0.0 || x2 < 0.0 {
                continue;
            }
            let cost = p1 * x1 + p2 * x2;
            if cost < best.0 {
                let lc = (p1 * m2 - p2 * m1) / det;
                let lm = (c1 * p2 - c2 * p1) / det;
                if lc >= 0.0 && lm >= 0.0 {
                    best = (cost, lc, lm);
                }
            }
        }
    }
    (best.1, best.2)
}

fn fill(cap: &[u64], reqs: &[Vec<u64>], counts: &[u64], order: &[usize]) -> Vec<u64> {
    let mut left = cap.to_vec();
    let mut take = vec![0; reqs.len()];
    for &k in order {
        if counts[k] == 0 {
            continue;
        }
        let mut n = counts[k];
        for (r, l) in reqs[k].iter().zip(&left) {
            if *r > 0 {
                n = n.min(l / r);
            }
        }
        if n == 0 {
            continue;
        }
        for (l, r) in left.iter_mut().zip(&reqs[k]) {
            *l -= r * n;
        }
        take[k] = n;
    }
    take
}

/// A slice of the remaining mix scaled to fit the node, then topped up in `order`: nodes that look like the
/// whole workload, so small pods do not end up alone on a node whose pod-count limit they exhaust.
fn fill_proportional(cap: &[u64], reqs: &[Vec<u64>], counts: &[u64], order: &[usize]) -> Vec<u64> {
    let mut scale = f64::INFINITY;
    for d in 0..cap.len() {
        let want: f64 = reqs.iter().zip(counts).map(|(r, &n)| r[d] as f64 * n as f64).sum();
        if want > 0.0 {
            scale = scale.min(cap[d] as f64 / want);
        }
    }
    let scale = scale.min(1.0);
    let mut take: Vec<u64> = counts.iter().map(|&n| (n as f64 * scale).floor() as u64).collect();
    let mut left: Vec<u64> = (0..cap.len()).map(|d| cap[d].saturating_sub(reqs.iter().zip(&take).map(|(r, n)| r[d] * n).sum())).collect();
    let rest: Vec<u64> = counts.iter().zip(&take).map(|(c, t)| c - t).collect();
    for &k in order {
        let mut n = rest[k];
        for (r, l) in reqs[k].iter().zip(&left) {
            if *r > 0 {
                n = n.min(l / r);
            }
        }
        if n == 0 {
            continue;
        }
        for (l, r) in left.iter_mut().zip(&reqs[k]) {
            *l -= r * n;
        }
        take[k] += n;
    }
    take
}

fn holds(cap: &[u64], reqs: &[Vec<u64>], take: &[u64]) -> bool {
    (0..cap.len()).all(|d| reqs.iter().zip(take).map(|(r, n)| r[d] * n).sum::<u64>() <= cap[d])
}

/// The cheapest candidate type holding `take`, if any.
fn cheapest_holding(types: &[NodeType], candidates: &[usize], reqs: &[Vec<u64>], take: &[u64]) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&t| holds(&types[t].cap, reqs, take))
        .min_by(|&a, &b| types[a].price.total_cmp(&types[b].price).then(a.cmp(&b)))
}

/// Packs `counts[k]` pods of shape `reqs[k]` onto nodes of `types` (all of `candidates` may be used). Returns
/// None when some pod fits no candidate type.
pub fn pack(types: &[NodeType], candidates: &[usize], reqs: &[Vec<u64>], counts: &[u64]) -> Option<Vec<PackedNode>> {
    // Dual prices are right for the bulk but blind to integrality (a 16-vCPU pod on a 64-vCPU node); pricing
    // each pod by its normalised size instead sometimes packs big pods better. The cheaper of the two wins.
    let cost = |nodes: &Vec<PackedNode>| nodes.iter().map(|n| types[n.ty].price).sum::<f64>();
    let by_duals = pack_with(types, candidates, reqs, counts, true)?;
    let by_size = pack_with(types, candidates, reqs, counts, false)?;
    Some(if cost(&by_size) < cost(&by_duals) - 1e-9 { by_size } else { by_duals })
}

fn pack_with(types: &[NodeType], candidates: &[usize], reqs: &[Vec<u64>], counts: &[u64], use_duals: bool) -> Option<Vec<PackedNode>> {
    let candidates = {
        let sub: Vec<NodeType> = candidates.iter().map(|&i| types[i].clone()).collect();
        non_dominated(&sub).into_iter().map(|i| candidates[i]).collect::<Vec<_>>()
    };
    let mut counts = counts.to_vec();
    let mut nodes: Vec<PackedNode> = vec![];
    let (mut max_c, mut max_m) = (1.0f64, 1.0f64);
    for &t in &candidates {
        max_c = max_c.max(types[t].cap[CPU] as f64);
        max_m = max_m.max(types[t].cap[MEM] as f64);
    }
    while counts.iter().any(|&n| n > 0) {
        let cpu: f64 = reqs.iter().zip(&counts).map(|(r, &n)| r[CPU] as f64 * n as f64).sum();
        let mem: f64 = reqs.iter().zip(&counts).map(|(r, &n)| r[MEM] as f64 * n as f64).sum();
        let (lc, lm) = if use_duals { lp_duals(types, &candidates, cpu, mem) } else { (0.0, 0.0) };
        // A small share of the normalised size keeps ties (a resource priced at zero) pointing at fuller nodes.
        let (lc, lm) = if lc == 0.0 && lm == 0.0 { (1.0 / max_c, 1.0 / max_m) } else { (lc, lm) };
        let eps = 1e-6 * (lc * max_c + lm * max_m);
        let value: Vec<f64> = reqs.iter().map(|r| lc * r[CPU] as f64 + lm * r[MEM] as f64 + eps * (r[CPU] as f64 / max_c + r[MEM] as f64 / max_m)).collect();
        let live: Vec<usize> = (0..reqs.len()).filter(|&k| counts[k] > 0).collect();
        let mut by_value = live.clone();
        by_value.sort_by(|&a, &b| value[b].total_cmp(&value[a]).then(a.cmp(&b)));
        let ratio = |k: usize| reqs[k][CPU] as f64 / max_c - reqs[k][MEM] as f64 / max_m;
        let mut cpu_first = live.clone();
        cpu_first.sort_by(|&a, &b| ratio(b).total_cmp(&ratio(a)).then(value[b].total_cmp(&value[a])));
        let mut mem_first = cpu_first.clone();
        mem_first.reverse();
        let mut best: Option<(f64, usize, Vec<u64>)> = None;
        for &t in &candidates {
            let cap = &types[t].cap;
            let share = |k: usize| {
                (0..cap.len()).filter(|&d| reqs[k][d] > 0).map(|d| if cap[d] == 0 { f64::INFINITY } else { reqs[k][d] as f64 / cap[d] as f64 }).fold(0.0, f64::max)
            };
            let mut by_density = live.clone();
            by_density.sort_by(|&a, &b| (value[b] / share(b)).total_cmp(&(value[a] / share(a))).then(a.cmp(&b)));
            for (i, order) in [&by_value, &by_density, &cpu_first, &mem_first, &by_density].into_iter().enumerate() {
                let take = if i == 4 { fill_proportional(cap, reqs, &counts, order) } else { fill(cap, reqs, &counts, order) };
                let v: f64 = take.iter().zip(&value).map(|(&n, v)| n as f64 * v).sum();
                if v <= 0.0 {
                    continue;
                }
                let score = v / types[t].price.max(1e-12);
                let better = match &best {
                    None => true,
                    Some((s, bt, _)) => score > *s * (1.0 + 1e-9) || (score >= *s * (1.0 - 1e-9) && types[t].price < types[*bt].price),
                };
                if better {
                    best = Some((score, t, take));
                }
            }
        }
        let (_, t, take) = best?;
        // The same node again while the counts allow it: the duals barely move within one pattern.
        let repeat = take.iter().zip(&counts).filter(|(n, _)| **n > 0).map(|(n, c)| c / n).min().unwrap_or(1).max(1);
        let ty = cheapest_holding(types, &candidates, reqs, &take).unwrap_or(t);
        for _ in 0..repeat {
            nodes.push(PackedNode { ty, take: take.clone() });
        }
        for (c, n) in counts.iter_mut().zip(&take) {
            *c -= n * repeat;
        }
    }
    merge_pairs(types, &candidates, reqs, &mut nodes);
    Some(nodes)
}

/// Merges pairs of nodes onto one node of a type cheaper than the two together, while any pair allows it. Only
/// the least-filled nodes are tried, so the pass stays small when there are thousands of nodes.
fn merge_pairs(types: &[NodeType], candidates: &[usize], reqs: &[Vec<u64>], nodes: &mut Vec<PackedNode>) {
    const TRIED: usize = 64;
    loop {
        let fill_of = |n: &PackedNode| {
            let cap = &types[n.ty].cap;
            (0..2).map(|d| reqs.iter().zip(&n.take).map(|(r, c)| r[d] * c).sum::<u64>() as f64 / cap[d].max(1) as f64).fold(0.0, f64::max)
        };
        let mut idx: Vec<usize> = (0..nodes.len()).collect();
        idx.sort_by(|&a, &b| fill_of(&nodes[a]).total_cmp(&fill_of(&nodes[b])));
        idx.truncate(TRIED);
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for (x, &a) in idx.iter().enumerate() {
            for &b in &idx[x + 1..] {
                let both: Vec<u64> = nodes[a].take.iter().zip(&nodes[b].take).map(|(p, q)| p + q).collect();
                let Some(t) = cheapest_holding(types, candidates, reqs, &both) else { continue };
                let saving = types[nodes[a].ty].price + types[nodes[b].ty].price - types[t].price;
                if saving > 1e-9 && best.as_ref().is_none_or(|bst| saving > bst.0) {
                    best = Some((saving, a, b, t));
                }
            }
        }
        let Some((_, a, b, t)) = best else { return };
        let both: Vec<u64> = nodes[a].take.iter().zip(&nodes[b].take).map(|(p, q)| p + q).collect();
        nodes[a] = PackedNode { ty: t, take: both };
        nodes.swap_remove(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(cpu: u64, mem: u64, price: f64) -> NodeType {
        NodeType { cap: vec![cpu, mem, 100], price }
    }

    #[test]
    fn dominated_types_are_dropped() {
        let types = [ty(4, 8, 1.0), ty(4, 8, 1.2), ty(2, 8, 1.0), ty(8, 4, 1.0), ty(4, 8, 1.0)];
        assert_eq!(non_dominated(&types), vec![0, 3]);
    }

    #[test]
    fn duals_price_each_resource_at_its_cheapest_type() {
        // cpu type: 4 cpu 1 mem $1; memory type: 1 cpu 4 mem $1. Both resources in demand: both types in the
        // basis, λc·4 + λm = 1 and λc + 4λm = 1, so λc = λm = 0.2.
        let types = [ty(4, 1, 1.0), ty(1, 4, 1.0), ty(4, 4, 3.0)];
        let (lc, lm) = lp_duals(&types, &[0, 1, 2], 5.0, 5.0);
        assert!((lc - 0.2).abs() < 1e-9 && (lm - 0.2).abs() < 1e-9, "{lc} {lm}");
        // Only cpu wanted: memory is free.
        let (lc, lm) = lp_duals(&types, &[0, 1, 2], 5.0, 0.0);
        assert!((lc - 0.25).abs() < 1e-9 && lm == 0.0);
    }

    #[test]
    fn cpu_and_memory_pods_go_to_their_own_types() {
        // A general type (8 cpu, 8 mem, $2.2) holds one of each shape; the specialised types hold two of one shape
        // for $1 each: the cheapest plan is two specialised nodes, $2 for four pods.
        let types = [ty(8, 8, 2.2), ty(8, 2, 1.0), ty(2, 8, 1.0)];
        let reqs = vec![vec![4, 1, 1], vec![1, 4, 1]];
        let nodes = pack(&types, &[0, 1, 2], &reqs, &[2, 2]).unwrap();
        let cost: f64 = nodes.iter().map(|n| types[n.ty].price).sum();
        assert!((cost - 2.0).abs() < 1e-9, "{nodes:?}");
        let placed: u64 = nodes.iter().flat_map(|n| &n.take).sum();
        assert_eq!(placed, 4);
        for n in &nodes {
            assert!(holds(&types[n.ty].cap, &reqs, &n.take));
        }
    }

    #[test]
    fn a_pod_no_type_holds_fails_the_pack() {
        let types = [ty(2, 2, 1.0)];
        assert!(pack(&types, &[0], &[vec![4, 1, 1]], &[1]).is_none());
    }

    #[test]
    fn small_leftovers_merge_onto_one_node() {
        // Many pods, then leftovers: every pod is placed, on nodes that hold what they carry.
        let types = [ty(16, 64, 4.0), ty(4, 16, 1.0), ty(2, 8, 0.5)];
        let reqs = vec![vec![3, 5, 1], vec![1, 2, 1]];
        let counts = [13, 7];
        let nodes = pack(&types, &[0, 1, 2], &reqs, &counts).unwrap();
        let mut placed = [0u64; 2];
        for n in &nodes {
            assert!(holds(&types[n.ty].cap, &reqs, &n.take));
            placed[0] += n.take[0];
            placed[1] += n.take[1];
        }
        assert_eq!(placed, [13, 7]);
        let cost: f64 = nodes.iter().map(|n| types[n.ty].price).sum();
        // 46 cpu, 79 mem of demand: at $0.25 per cpu the bound is $11.5.
        assert!(cost <= 13.0, "{cost} {nodes:?}");
    }
}
