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
//! - finally pairs of the produced nodes are merged onto one cheaper node when one holds both;
//! - the configuration LP over node patterns (per-shape dual prices, which see that a 16-vCPU pod leaves a gap
//!   on a 64-vCPU node) is solved by column generation from both greedy results, its whole nodes taken and the
//!   rest packed by the greedy; the cheapest of the three packs is returned.
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
            best = if nc >= nm {
                (cost, t.price / c, 0.0)
            } else {
                (cost, 0.0, t.price / m)
            };
        }
    }
    for (a, &i) in candidates.iter().enumerate() {
        let (c1, m1, p1) = (
            types[i].cap[CPU] as f64,
            types[i].cap[MEM] as f64,
            types[i].price,
        );
        for &j in &candidates[a + 1..] {
            let (c2, m2, p2) = (
                types[j].cap[CPU] as f64,
                types[j].cap[MEM] as f64,
                types[j].price,
            );
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
        let want: f64 = reqs
            .iter()
            .zip(counts)
            .map(|(r, &n)| r[d] as f64 * n as f64)
            .sum();
        if want > 0.0 {
            scale = scale.min(cap[d] as f64 / want);
        }
    }
    let scale = scale.min(1.0);
    let mut take: Vec<u64> = counts
        .iter()
        .map(|&n| (n as f64 * scale).floor() as u64)
        .collect();
    let mut left: Vec<u64> = (0..cap.len())
        .map(|d| cap[d].saturating_sub(reqs.iter().zip(&take).map(|(r, n)| r[d] * n).sum()))
        .collect();
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

/// The cheapest candidate type holding `take`, if any.
fn cheapest_holding(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    take: &[u64],
) -> Option<usize> {
    let dims = reqs.first().map_or(0, Vec::len);
    let used: Vec<u64> = (0..dims)
        .map(|d| reqs.iter().zip(take).map(|(r, n)| r[d] * n).sum())
        .collect();
    candidates
        .iter()
        .copied()
        .filter(|&t| used.iter().zip(&types[t].cap).all(|(u, c)| u <= c))
        .min_by(|&a, &b| types[a].price.total_cmp(&types[b].price).then(a.cmp(&b)))
}

/// Packs `counts[k]` pods of shape `reqs[k]` onto nodes of `types` (all of `candidates` may be used). Returns
/// None when some pod fits no candidate type.
pub fn pack(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    counts: &[u64],
) -> Option<Vec<PackedNode>> {
    // Dual prices are right for the bulk but blind to integrality (a 16-vCPU pod on a 64-vCPU node); pricing
    // each pod by its normalised size instead sometimes packs big pods better. The cheaper of the two wins.
    // Both greedy packs seed the pattern LP, which usually beats them on mixes of large and small pods (the
    // greedy takes the best-filling nodes first and is left with the awkward pods at the end).
    let cost = |nodes: &Vec<PackedNode>| nodes.iter().map(|n| types[n.ty].price).sum::<f64>();
    let by_duals = pack_with(types, candidates, reqs, counts, true)?;
    let by_size = pack_with(types, candidates, reqs, counts, false)?;
    let mut best = if cost(&by_size) < cost(&by_duals) - 1e-9 {
        by_size.clone()
    } else {
        by_duals.clone()
    };
    // Nothing to gain when the greedy is already within the LP's stopping gap of the fractional bound.
    let nd = non_dominated_among(types, candidates);
    let cpu: f64 = reqs
        .iter()
        .zip(counts)
        .map(|(r, &n)| r[CPU] as f64 * n as f64)
        .sum();
    let mem: f64 = reqs
        .iter()
        .zip(counts)
        .map(|(r, &n)| r[MEM] as f64 * n as f64)
        .sum();
    let (lc, lm) = lp_duals(types, &nd, cpu, mem);
    if cost(&best) <= (lc * cpu + lm * mem) * (1.0 + PATTERN_GAP) {
        return Some(best);
    }
    let seeds: Vec<&PackedNode> = by_duals.iter().chain(&by_size).collect();
    if let Some(by_patterns) = pack_by_patterns(types, candidates, reqs, counts, &seeds) {
        if cost(&by_patterns) < cost(&best) - 1e-9 {
            best = by_patterns;
        }
    }
    Some(best)
}

fn non_dominated_among(types: &[NodeType], candidates: &[usize]) -> Vec<usize> {
    let sub: Vec<NodeType> = candidates.iter().map(|&i| types[i].clone()).collect();
    non_dominated(&sub)
        .into_iter()
        .map(|i| candidates[i])
        .collect()
}

/// Column-generation rounds per solve of the pattern LP, and how many new patterns one round may add.
const PATTERN_ROUNDS: usize = 30;
const PATTERNS_PER_ROUND: usize = 8;
/// Column generation stops when no pattern the pricing finds is worth more than this fraction above its price
/// (by Farley's bound the LP is then within that fraction of its optimum over such patterns).
const PATTERN_GAP: f64 = 0.005;
/// How many times the pattern LP is re-solved over what is left after its whole nodes are taken.
const ROUNDING_ROUNDS: usize = 6;

/// One candidate node: a type, how many pods of each shape it carries, and its price.
#[derive(Debug, Clone, PartialEq)]
struct Pattern {
    ty: usize,
    take: Vec<u64>,
    price: f64,
}

/// Packs by the configuration LP (Gilmore–Gomory): min Σ price_j · x_j over node patterns j subject to every
/// shape's count being covered, with patterns generated from the LP's dual price per pod shape (each type
/// filled greedily for the most dual value). The LP knows that a 16-vCPU pod wastes a quarter of a 64-vCPU node
/// unless small pods fill the rest, which per-resource prices cannot see. Its whole nodes (⌊x_j⌋ of each
/// pattern) are taken, the LP is solved again over the rest, and the last fractional remainder is packed by
/// the greedy. None when a pod fits no type or the LP fails (the caller keeps the greedy result).
fn pack_by_patterns(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    counts: &[u64],
    seeds: &[&PackedNode],
) -> Option<Vec<PackedNode>> {
    let candidates = non_dominated_among(types, candidates);
    let mut left = counts.to_vec();
    let mut cols: Vec<Pattern> = seeds
        .iter()
        .map(|n| Pattern {
            ty: n.ty,
            take: n.take.clone(),
            price: types[n.ty].price,
        })
        .collect();
    let mut nodes: Vec<PackedNode> = vec![];
    for _ in 0..ROUNDING_ROUNDS {
        if left.iter().all(|&n| n == 0) {
            break;
        }
        cols = clip_patterns(types, &candidates, reqs, &left, &cols);
        for k in 0..reqs.len() {
            if left[k] > 0 && !cols.iter().any(|c| c.take[k] > 0) {
                let mut only = vec![0; reqs.len()];
                only[k] = left[k];
                cols.push(single_shape_pattern(types, &candidates, reqs, &only, k)?);
            }
        }
        let x = generate_patterns(types, &candidates, reqs, &left, &mut cols)?;
        let mut order: Vec<usize> = (0..cols.len()).filter(|&j| x[j] >= 1.0 - 1e-7).collect();
        order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
        let mut took = false;
        for j in order {
            for _ in 0..(x[j] + 1e-7).floor() as u64 {
                let take: Vec<u64> = cols[j]
                    .take
                    .iter()
                    .zip(&left)
                    .map(|(&t, &l)| t.min(l))
                    .collect();
                if take.iter().all(|&n| n == 0) {
                    break;
                }
                let ty = cheapest_holding(types, &candidates, reqs, &take).unwrap_or(cols[j].ty);
                for (l, n) in left.iter_mut().zip(&take) {
                    *l -= n;
                }
                nodes.push(PackedNode { ty, take });
                took = true;
            }
        }
        if !took {
            break;
        }
    }
    if left.iter().any(|&n| n > 0) {
        let cost = |nodes: &Vec<PackedNode>| nodes.iter().map(|n| types[n.ty].price).sum::<f64>();
        let a = pack_with(types, &candidates, reqs, &left, true)?;
        let b = pack_with(types, &candidates, reqs, &left, false)?;
        nodes.extend(if cost(&b) < cost(&a) - 1e-9 { b } else { a });
    }
    merge_pairs(types, &candidates, reqs, &mut nodes);
    Some(nodes)
}

/// The patterns cut down to what is left (no pattern carries more of a shape than remains), each on the
/// cheapest type that holds it, without duplicates or empty patterns.
fn clip_patterns(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    left: &[u64],
    cols: &[Pattern],
) -> Vec<Pattern> {
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    for c in cols {
        let take: Vec<u64> = c.take.iter().zip(left).map(|(&t, &l)| t.min(l)).collect();
        if take.iter().all(|&n| n == 0) || !seen.insert(take.clone()) {
            continue;
        }
        let ty = cheapest_holding(types, candidates, reqs, &take).unwrap_or(c.ty);
        out.push(Pattern {
            ty,
            price: types[ty].price,
            take,
        });
    }
    out
}

/// The cheapest per pod of the patterns that carry only shape `k` (as many as fit, up to `only[k]`).
fn single_shape_pattern(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    only: &[u64],
    k: usize,
) -> Option<Pattern> {
    let mut best: Option<(f64, Pattern)> = None;
    for &t in candidates {
        let take = fill(&types[t].cap, reqs, only, &[k]);
        if take[k] == 0 {
            continue;
        }
        let per_pod = types[t].price / take[k] as f64;
        if best.as_ref().is_none_or(|b| per_pod < b.0) {
            best = Some((
                per_pod,
                Pattern {
                    ty: t,
                    take,
                    price: types[t].price,
                },
            ));
        }
    }
    best.map(|b| b.1)
}

/// Column generation: solves the pattern LP over `cols`, adds the patterns whose dual value exceeds their price
/// (the most profitable first, a few per round) and repeats until none does or the budget is spent. Returns the
/// LP's x per pattern.
fn generate_patterns(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    left: &[u64],
    cols: &mut Vec<Pattern>,
) -> Option<Vec<f64>> {
    let demand: Vec<f64> = left.iter().map(|&n| n as f64).collect();
    let mut seen: std::collections::HashSet<Vec<u64>> =
        cols.iter().map(|c| c.take.clone()).collect();
    let (max_c, max_m) = candidates.iter().fold((1.0f64, 1.0f64), |(c, m), &t| {
        (
            c.max(types[t].cap[CPU] as f64),
            m.max(types[t].cap[MEM] as f64),
        )
    });
    let live: Vec<usize> = (0..reqs.len()).filter(|&k| left[k] > 0).collect();
    for round in 0..=PATTERN_ROUNDS {
        let (x, y) = cover_lp(cols, &demand)?;
        if round == PATTERN_ROUNDS {
            return Some(x);
        }
        let mut found: Vec<(f64, Pattern)> = vec![];
        let size = |k: usize| reqs[k][CPU] as f64 / max_c + reqs[k][MEM] as f64 / max_m;
        // Fill orders, most valuable first: dual value per share of the node (per type), per cpu, per memory,
        // and per pod. Pods of no dual value go last, largest first: free filler for a node bought anyway.
        let sorted = |score: &dyn Fn(usize) -> f64| {
            let key: Vec<(bool, f64)> = (0..reqs.len())
                .map(|k| {
                    if y[k] <= 0.0 {
                        (false, size(k))
                    } else {
                        (true, score(k))
                    }
                })
                .collect();
            let mut order = live.clone();
            order.sort_by(|&a, &b| {
                key[b]
                    .0
                    .cmp(&key[a].0)
                    .then(key[b].1.total_cmp(&key[a].1))
                    .then(a.cmp(&b))
            });
            order
        };
        let per = |k: usize, d: usize| {
            if reqs[k][d] == 0 {
                f64::INFINITY
            } else {
                y[k] / reqs[k][d] as f64
            }
        };
        let fixed_orders = [
            sorted(&|k| per(k, CPU)),
            sorted(&|k| per(k, MEM)),
            sorted(&|k| y[k]),
        ];
        for &t in candidates {
            let cap = &types[t].cap;
            let share = |k: usize| {
                (0..cap.len())
                    .filter(|&d| reqs[k][d] > 0)
                    .map(|d| {
                        if cap[d] == 0 {
                            f64::INFINITY
                        } else {
                            reqs[k][d] as f64 / cap[d] as f64
                        }
                    })
                    .fold(0.0, f64::max)
            };
            let by_share = sorted(&|k| y[k] / share(k));
            let mut best: Option<(f64, Vec<u64>)> = None;
            for order in std::iter::once(&by_share).chain(&fixed_orders) {
                let take = fill(cap, reqs, left, order);
                let value: f64 = take.iter().zip(&y).map(|(&n, v)| n as f64 * v).sum();
                if best.as_ref().is_none_or(|b| value > b.0) {
                    best = Some((value, take));
                }
            }
            let Some((value, take)) = best else { continue };
            if value <= types[t].price * (1.0 + 1e-7) || seen.contains(&take) {
                continue;
            }
            let ty = cheapest_holding(types, candidates, reqs, &take).unwrap_or(t);
            let price = types[ty].price;
            {
                found.push((value / price.max(1e-12), Pattern { ty, take, price }));
            }
        }
        // Farley's bound: no pattern found is worth more than `ratio` times its price at these duals, so the LP
        // optimum is at least the current objective / ratio; close enough stops the generation (it tails off
        // slowly). The pricing is a greedy fill, not an exact knapsack, so this is a stopping rule, not a proof.
        let ratio = found.iter().map(|f| f.0).fold(1.0, f64::max);
        if ratio <= 1.0 + PATTERN_GAP {
            return Some(x);
        }
        // A few per round: the LP re-solved with them prices the next ones better than this round's duals.
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut added = 0;
        for (_, p) in found {
            if added < PATTERNS_PER_ROUND && seen.insert(p.take.clone()) {
                cols.push(p);
                added += 1;
            }
        }
    }
    None
}

/// Solves min Σ price_j · x_j s.t. Σ_j take_jk · x_j ≥ demand_k, x ≥ 0, through its dual
/// max Σ demand_k · y_k s.t. Σ_k take_jk · y_k ≤ price_j, y ≥ 0 (see [`super::lp`]). Returns (x per pattern,
/// y per shape), or None when some demanded shape is in no pattern or the pivot budget runs out.
fn cover_lp(cols: &[Pattern], demand: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
    let take: Vec<Vec<f64>> = cols
        .iter()
        .map(|c| c.take.iter().map(|&t| t as f64).collect())
        .collect();
    let price: Vec<f64> = cols.iter().map(|c| c.price).collect();
    let optimum = super::lp::max_packing(&take, &price, demand)?;
    Some((optimum.row_duals, optimum.y))
}

fn pack_with(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    counts: &[u64],
    use_duals: bool,
) -> Option<Vec<PackedNode>> {
    let candidates = {
        let sub: Vec<NodeType> = candidates.iter().map(|&i| types[i].clone()).collect();
        non_dominated(&sub)
            .into_iter()
            .map(|i| candidates[i])
            .collect::<Vec<_>>()
    };
    let mut counts = counts.to_vec();
    let mut nodes: Vec<PackedNode> = vec![];
    let (mut max_c, mut max_m) = (1.0f64, 1.0f64);
    for &t in &candidates {
        max_c = max_c.max(types[t].cap[CPU] as f64);
        max_m = max_m.max(types[t].cap[MEM] as f64);
    }
    while counts.iter().any(|&n| n > 0) {
        let cpu: f64 = reqs
            .iter()
            .zip(&counts)
            .map(|(r, &n)| r[CPU] as f64 * n as f64)
            .sum();
        let mem: f64 = reqs
            .iter()
            .zip(&counts)
            .map(|(r, &n)| r[MEM] as f64 * n as f64)
            .sum();
        let (lc, lm) = if use_duals {
            lp_duals(types, &candidates, cpu, mem)
        } else {
            (0.0, 0.0)
        };
        // A small share of the normalised size keeps ties (a resource priced at zero) pointing at fuller nodes.
        let (lc, lm) = if lc == 0.0 && lm == 0.0 {
            (1.0 / max_c, 1.0 / max_m)
        } else {
            (lc, lm)
        };
        let eps = 1e-6 * (lc * max_c + lm * max_m);
        let value: Vec<f64> = reqs
            .iter()
            .map(|r| {
                lc * r[CPU] as f64
                    + lm * r[MEM] as f64
                    + eps * (r[CPU] as f64 / max_c + r[MEM] as f64 / max_m)
            })
            .collect();
        let live: Vec<usize> = (0..reqs.len()).filter(|&k| counts[k] > 0).collect();
        let mut by_value = live.clone();
        by_value.sort_by(|&a, &b| value[b].total_cmp(&value[a]).then(a.cmp(&b)));
        let ratio = |k: usize| reqs[k][CPU] as f64 / max_c - reqs[k][MEM] as f64 / max_m;
        let mut cpu_first = live.clone();
        cpu_first.sort_by(|&a, &b| {
            ratio(b)
                .total_cmp(&ratio(a))
                .then(value[b].total_cmp(&value[a]))
        });
        let mut mem_first = cpu_first.clone();
        mem_first.reverse();
        let mut best: Option<(f64, usize, Vec<u64>)> = None;
        for &t in &candidates {
            let cap = &types[t].cap;
            let share = |k: usize| {
                (0..cap.len())
                    .filter(|&d| reqs[k][d] > 0)
                    .map(|d| {
                        if cap[d] == 0 {
                            f64::INFINITY
                        } else {
                            reqs[k][d] as f64 / cap[d] as f64
                        }
                    })
                    .fold(0.0, f64::max)
            };
            let mut by_density = live.clone();
            by_density.sort_by(|&a, &b| {
                (value[b] / share(b))
                    .total_cmp(&(value[a] / share(a)))
                    .then(a.cmp(&b))
            });
            for (i, order) in [&by_value, &by_density, &cpu_first, &mem_first, &by_density]
                .into_iter()
                .enumerate()
            {
                let take = if i == 4 {
                    fill_proportional(cap, reqs, &counts, order)
                } else {
                    fill(cap, reqs, &counts, order)
                };
                let v: f64 = take.iter().zip(&value).map(|(&n, v)| n as f64 * v).sum();
                if v <= 0.0 {
                    continue;
                }
                let score = v / types[t].price.max(1e-12);
                let better = match &best {
                    None => true,
                    Some((s, bt, _)) => {
                        score > *s * (1.0 + 1e-9)
                            || (score >= *s * (1.0 - 1e-9) && types[t].price < types[*bt].price)
                    }
                };
                if better {
                    best = Some((score, t, take));
                }
            }
        }
        let (_, t, take) = best?;
        // The same node again while the counts allow it: the duals barely move within one pattern.
        let repeat = take
            .iter()
            .zip(&counts)
            .filter(|(n, _)| **n > 0)
            .map(|(n, c)| c / n)
            .min()
            .unwrap_or(1)
            .max(1);
        let ty = cheapest_holding(types, &candidates, reqs, &take).unwrap_or(t);
        for _ in 0..repeat {
            nodes.push(PackedNode {
                ty,
                take: take.clone(),
            });
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
fn merge_pairs(
    types: &[NodeType],
    candidates: &[usize],
    reqs: &[Vec<u64>],
    nodes: &mut Vec<PackedNode>,
) {
    const TRIED: usize = 64;
    loop {
        let fill_of = |n: &PackedNode| {
            let cap = &types[n.ty].cap;
            (0..2)
                .map(|d| {
                    reqs.iter().zip(&n.take).map(|(r, c)| r[d] * c).sum::<u64>() as f64
                        / cap[d].max(1) as f64
                })
                .fold(0.0, f64::max)
        };
        let mut idx: Vec<usize> = (0..nodes.len()).collect();
        idx.sort_by(|&a, &b| fill_of(&nodes[a]).total_cmp(&fill_of(&nodes[b])));
        idx.truncate(TRIED);
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for (x, &a) in idx.iter().enumerate() {
            for &b in &idx[x + 1..] {
                let both: Vec<u64> = nodes[a]
                    .take
                    .iter()
                    .zip(&nodes[b].take)
                    .map(|(p, q)| p + q)
                    .collect();
                let Some(t) = cheapest_holding(types, candidates, reqs, &both) else {
                    continue;
                };
                let saving = types[nodes[a].ty].price + types[nodes[b].ty].price - types[t].price;
                if saving > 1e-9 && best.as_ref().is_none_or(|bst| saving > bst.0) {
                    best = Some((saving, a, b, t));
                }
            }
        }
        let Some((_, a, b, t)) = best else { return };
        let both: Vec<u64> = nodes[a]
            .take
            .iter()
            .zip(&nodes[b].take)
            .map(|(p, q)| p + q)
            .collect();
        nodes[a] = PackedNode { ty: t, take: both };
        nodes.swap_remove(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(cap: &[u64], reqs: &[Vec<u64>], take: &[u64]) -> bool {
        (0..cap.len()).all(|d| reqs.iter().zip(take).map(|(r, n)| r[d] * n).sum::<u64>() <= cap[d])
    }

    fn ty(cpu: u64, mem: u64, price: f64) -> NodeType {
        NodeType {
            cap: vec![cpu, mem, 100],
            price,
        }
    }

    #[test]
    fn dominated_types_are_dropped() {
        let types = [
            ty(4, 8, 1.0),
            ty(4, 8, 1.2),
            ty(2, 8, 1.0),
            ty(8, 4, 1.0),
            ty(4, 8, 1.0),
        ];
        assert_eq!(non_dominated(&types), vec![0, 3]);
    }

    #[test]
    fn duals_price_each_resource_at_its_cheapest_type() {
        // cpu type: 4 cpu 1 mem $1; memory type: 1 cpu 4 mem $1. Both resources in demand: both types in the
        // basis, λc·4 + λm = 1 and λc + 4λm = 1, so λc = λm = 0.2.
        let types = [ty(4, 1, 1.0), ty(1, 4, 1.0), ty(4, 4, 3.0)];
        let (lc, lm) = lp_duals(&types, &[0, 1, 2], 5.0, 5.0);
        assert!(
            (lc - 0.2).abs() < 1e-9 && (lm - 0.2).abs() < 1e-9,
            "{lc} {lm}"
        );
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
    fn the_cover_lp_finds_the_cheapest_mix_of_patterns() {
        // Two pods of each shape: one pattern of each shape alone at $1, or a mixed pattern at $0.8; the optimum
        // is the mixed pattern twice ($1.6), and the dual prices add up to the mixed pattern's price.
        let p = |take: Vec<u64>, price: f64| Pattern { ty: 0, take, price };
        let cols = [p(vec![2, 0], 1.0), p(vec![0, 2], 1.0), p(vec![1, 1], 0.8)];
        let (x, y) = cover_lp(&cols, &[2.0, 2.0]).unwrap();
        assert!(
            x[0].abs() < 1e-9 && x[1].abs() < 1e-9 && (x[2] - 2.0).abs() < 1e-9,
            "{x:?}"
        );
        assert!(
            (y[0] + y[1] - 0.8).abs() < 1e-9 && y[0] <= 0.5 + 1e-9 && y[1] <= 0.5 + 1e-9,
            "{y:?}"
        );
        // A shape no pattern carries: no plan covers it.
        assert!(cover_lp(&cols[..1], &[2.0, 2.0]).is_none());
    }

    #[test]
    fn big_pods_are_packed_with_the_small_pods_that_fill_their_gaps() {
        // A 16-core pod fills a quarter of the 63.5-core type at most three times with 15.5 cores to spare;
        // 4-core pods fill those gaps. The cheaper 16-core type holds no 16-core pod (15.5 allocatable).
        let types = [ty(63_500, 256, 4.0), ty(15_500, 64, 1.05)];
        let reqs = vec![vec![16_000, 32, 1], vec![4_000, 8, 1]];
        // 9 big pods need 3 large nodes; their gaps hold 3 small pods each, so 9 small pods cost nothing more.
        let nodes = pack(&types, &[0, 1], &reqs, &[9, 9]).unwrap();
        let cost: f64 = nodes.iter().map(|n| types[n.ty].price).sum();
        assert!((cost - 12.0).abs() < 1e-9, "{cost} {nodes:?}");
    }

    #[test]
    fn packs_place_every_pod_on_a_node_that_holds_it_and_never_cost_more_than_the_greedy() {
        // Seeded random mixes over a small catalog: a feasibility and no-regression check of the pattern pack.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let types = [
            ty(2_000, 8, 0.1),
            ty(8_000, 16, 0.34),
            ty(16_000, 128, 1.0),
            ty(64_000, 128, 2.6),
            ty(64_000, 512, 4.0),
            ty(32_000, 64, 1.3),
        ];
        let all: Vec<usize> = (0..types.len()).collect();
        for _ in 0..40 {
            let shapes = 1 + next(6) as usize;
            let reqs: Vec<Vec<u64>> = (0..shapes)
                .map(|_| vec![250 * (1 + next(64)), 1 + next(96), 1])
                .collect();
            let counts: Vec<u64> = (0..shapes).map(|_| next(30)).collect();
            let nodes = pack(&types, &all, &reqs, &counts).unwrap();
            let mut placed = vec![0u64; shapes];
            for n in &nodes {
                assert!(holds(&types[n.ty].cap, &reqs, &n.take), "{reqs:?} {n:?}");
                for (p, t) in placed.iter_mut().zip(&n.take) {
                    *p += t;
                }
            }
            assert_eq!(placed, counts);
            let greedy = pack_with(&types, &all, &reqs, &counts, true).unwrap();
            let cost = |v: &[PackedNode]| v.iter().map(|n| types[n.ty].price).sum::<f64>();
            assert!(cost(&nodes) <= cost(&greedy) + 1e-9);
        }
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
