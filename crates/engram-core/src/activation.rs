//! Spreading activation: how a cue brings back more than what literally matches it.
//!
//! [`spread`] is a pure function over any graph the caller describes through [`LinkGraph`].
//! It never looks anywhere else, so activation can never leave the graph it is given: the engine
//! gives it one memory space's links and nothing more, which is what keeps spaces isolated.
//!
//! # Semantics
//!
//! Inputs: seeds `(node, similarity)`, out-links `u -> v` with weights in `(0, 1]`, and
//! [`SpreadParams`] `{ max_hops, decay, prune, max_nodes }`.
//!
//! - **Wave 0 (seeds).** A seed's activation is its similarity clamped to `[0, 1]`; the amount it
//!   receives in wave 0 is `r0(seed) = activation`. A node given as a seed more than once keeps
//!   its largest similarity. Seeds whose activation is below `prune` are ignored.
//! - **Waves `h = 1..=max_hops`.** Every node `u` with `r(h-1)(u) >= prune` sends
//!   `c = r(h-1)(u) * weight(u -> v) * decay` to each out-neighbour `v`. Contributions below
//!   `prune` are dropped. What `v` receives in wave `h` is the probabilistic OR of its incoming
//!   contributions: `r(h)(v) = 1 - prod(1 - c)`.
//! - **Total activation.** A node's activation is the probabilistic OR over all waves of what it
//!   received, its seed activation included: `a(v) = 1 - prod_h (1 - r(h)(v))`. It is in `[0, 1]`.
//!   Nodes whose activation is below `prune` are not reported.
//! - **Hops.** The first wave in which a node received at least `prune` (0 for seeds).
//! - **Path.** From a seed to the node, `hops + 1` nodes long. In the first wave a node is
//!   reached, its parent is the sender of its largest contribution (ties go to the smaller node);
//!   its path is the parent's path at the wave before, followed by the node. A path is a walk
//!   along links: on a cycle it may pass through a node more than once.
//! - **Bound on work.** At most `max_nodes` distinct nodes are ever activated. Seeds are admitted
//!   strongest first; in each wave, nodes reached for the first time are admitted in order of
//!   what they received (largest first, ties to the smaller node) while there is room. Once the
//!   bound is reached no new node is added (nodes already activated still receive activation),
//!   and the result says so with [`Spread::truncated`].
//! - **Result.** Nodes sorted by activation (highest first), then by node (ascending).
//!
//! The form is monotone: raising a link weight or a seed's similarity never lowers any node's
//! activation (when `max_nodes` is not reached). Results do not depend on the order in which
//! seeds or out-links are listed: senders are visited in node order, and each node's incoming
//! contributions are combined in (sender, amount) order, so the floating-point result is the same.
//!
//! Out-of-range inputs are made safe rather than refused: similarities, weights and `decay` are
//! clamped to `[0, 1]` (NaN counts as 0), and a NaN `prune` counts as [`DEFAULT_PRUNE`]. Nothing
//! of zero strength ever activates a node, even with `prune <= 0`.
//!
//! Cost: each wave visits the out-links of the nodes that received something in the wave before,
//! so time is `O(max_hops x links of activated nodes)` and memory `O(max_hops x max_nodes)`; the
//! caller bounds `max_hops` ([`crate::Cue`] allows at most [`crate::MAX_HOPS`]). Arithmetic is
//! done in `f64` and reported as `f32`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};

/// Default least amount of activation that is passed on or reported.
pub const DEFAULT_PRUNE: f32 = 0.01;
/// Default bound on the number of distinct activated nodes.
pub const DEFAULT_MAX_NODES: usize = 10_000;
/// Default number of waves after the seeds.
pub const DEFAULT_MAX_HOPS: u32 = 3;
/// Default factor applied at every hop.
pub const DEFAULT_DECAY: f32 = 0.5;

const _: () = assert!(DEFAULT_PRUNE > 0.0 && DEFAULT_PRUNE <= 1.0);
const _: () = assert!(DEFAULT_DECAY > 0.0 && DEFAULT_DECAY <= 1.0);
const _: () = assert!(DEFAULT_MAX_NODES > 0);

/// The graph activation spreads over: a node's out-links and their weights.
pub trait LinkGraph<N> {
    /// Calls `f(to, weight)` for every out-link of `node`, weights in `(0, 1]`. Order does not
    /// matter. Nodes with no links (or unknown to the graph) call nothing.
    fn for_each_link(&self, node: N, f: &mut dyn FnMut(N, f32));
}

/// A closure `|node, emit| ...` that calls `emit(to, weight)` for each out-link is a graph.
impl<N, F> LinkGraph<N> for F
where
    F: Fn(N, &mut dyn FnMut(N, f32)),
{
    fn for_each_link(&self, node: N, f: &mut dyn FnMut(N, f32)) {
        self(node, f)
    }
}

impl<N: Ord> LinkGraph<N> for BTreeMap<N, Vec<(N, f32)>>
where
    N: Copy,
{
    fn for_each_link(&self, node: N, f: &mut dyn FnMut(N, f32)) {
        for &(to, weight) in self.get(&node).into_iter().flatten() {
            f(to, weight);
        }
    }
}

impl<N, S> LinkGraph<N> for HashMap<N, Vec<(N, f32)>, S>
where
    N: Copy + Eq + Hash,
    S: BuildHasher,
{
    fn for_each_link(&self, node: N, f: &mut dyn FnMut(N, f32)) {
        for &(to, weight) in self.get(&node).into_iter().flatten() {
            f(to, weight);
        }
    }
}

/// How far and how strongly activation spreads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpreadParams {
    /// Waves after the seeds. 0: nothing spreads, only the seeds are returned.
    pub max_hops: u32,
    /// Factor applied at every hop, in `(0, 1]`.
    pub decay: f32,
    /// Least amount passed on, received or reported. Default [`DEFAULT_PRUNE`].
    pub prune: f32,
    /// Bound on work: at most this many distinct activated nodes. Default [`DEFAULT_MAX_NODES`].
    pub max_nodes: usize,
}

impl Default for SpreadParams {
    fn default() -> Self {
        Self {
            max_hops: DEFAULT_MAX_HOPS,
            decay: DEFAULT_DECAY,
            prune: DEFAULT_PRUNE,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

/// One activated node.
#[derive(Debug, Clone, PartialEq)]
pub struct Activated<N> {
    pub node: N,
    /// Total activation, in `[prune, 1]`.
    pub activation: f32,
    /// First wave in which the node received at least `prune`; 0 for seeds.
    pub hops: u32,
    /// From a seed to this node, `hops + 1` nodes, consecutive nodes linked.
    pub path: Vec<N>,
    /// The node's own seed activation (its similarity clamped to `[0, 1]`), if it was a seed.
    pub seed_activation: Option<f32>,
}

/// What [`spread`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread<N> {
    /// Sorted by activation (highest first), then by node (ascending).
    pub nodes: Vec<Activated<N>>,
    /// Whether `max_nodes` stopped a node from being activated.
    pub truncated: bool,
}

/// What a node received in one wave, and from whom (its strongest sender).
struct Received<N> {
    amount: f64,
    parent: Option<N>,
}

struct NodeState {
    total: f64,
    first_wave: u32,
    seed: Option<f64>,
}

/// Spreads activation from `seeds` over `graph`. See the [module documentation](self) for the
/// exact semantics.
pub fn spread<N, G>(seeds: &[(N, f32)], graph: &G, params: SpreadParams) -> Spread<N>
where
    N: Copy + Eq + Hash + Ord,
    G: LinkGraph<N> + ?Sized,
{
    let prune = if params.prune.is_nan() {
        DEFAULT_PRUNE
    } else {
        params.prune
    } as f64;
    let decay = unit(params.decay);
    let keep = |x: f64| x > 0.0 && x >= prune;
    let mut truncated = false;

    // Wave 0: the seeds, strongest first, at most `max_nodes` of them.
    let mut best_seed: HashMap<N, f64> = HashMap::with_capacity(seeds.len());
    for &(node, similarity) in seeds {
        let a = unit(similarity);
        let entry = best_seed.entry(node).or_insert(a);
        *entry = entry.max(a);
    }
    let mut seed_list: Vec<(N, f64)> = best_seed.into_iter().filter(|&(_, a)| keep(a)).collect();
    sort_strongest_first(&mut seed_list);
    if seed_list.len() > params.max_nodes {
        seed_list.truncate(params.max_nodes);
        truncated = true;
    }

    let mut states: HashMap<N, NodeState> = HashMap::with_capacity(seed_list.len());
    let mut wave0 = HashMap::with_capacity(seed_list.len());
    for &(node, a) in &seed_list {
        states.insert(
            node,
            NodeState {
                total: a,
                first_wave: 0,
                seed: Some(a),
            },
        );
        wave0.insert(
            node,
            Received {
                amount: a,
                parent: None,
            },
        );
    }
    let mut waves: Vec<HashMap<N, Received<N>>> = vec![wave0];

    for h in 1..=params.max_hops {
        let prev = waves.last().expect("wave 0 is always present");
        let mut senders: Vec<(N, f64)> = prev
            .iter()
            .filter(|(_, r)| keep(r.amount))
            .map(|(&u, r)| (u, r.amount))
            .collect();
        if senders.is_empty() || decay == 0.0 {
            break;
        }
        senders.sort_unstable_by_key(|a| a.0);

        let mut incoming: HashMap<N, Vec<(N, f64)>> = HashMap::new();
        for &(u, r) in &senders {
            graph.for_each_link(u, &mut |v, weight| {
                let c = r * unit(weight) * decay;
                if keep(c) {
                    incoming.entry(v).or_default().push((u, c));
                }
            });
        }

        let mut known = Vec::new();
        let mut new = Vec::new();
        for (v, mut contributions) in incoming {
            // Senders are visited in node order; sorting also orders duplicate links, so the
            // sum does not depend on how the graph lists its links.
            contributions.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            let amount = contributions
                .iter()
                .fold(0.0, |acc, &(_, c)| probabilistic_or(acc, c));
            let mut parent = contributions[0];
            for &(u, c) in &contributions[1..] {
                if c > parent.1 || (c == parent.1 && u < parent.0) {
                    parent = (u, c);
                }
            }
            if states.contains_key(&v) {
                known.push((v, amount, parent.0));
            } else {
                new.push((v, amount, parent.0));
            }
        }

        new.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let room = params.max_nodes.saturating_sub(states.len());
        if new.len() > room {
            new.truncate(room);
            truncated = true;
        }
        for &(v, _, _) in &new {
            states.insert(
                v,
                NodeState {
                    total: 0.0,
                    first_wave: h,
                    seed: None,
                },
            );
        }

        let mut wave = HashMap::with_capacity(known.len() + new.len());
        for (v, amount, parent) in known.into_iter().chain(new) {
            let state = states.get_mut(&v).expect("admitted above or before");
            state.total = probabilistic_or(state.total, amount);
            wave.insert(
                v,
                Received {
                    amount,
                    parent: Some(parent),
                },
            );
        }
        if wave.is_empty() {
            break;
        }
        waves.push(wave);
    }
    debug_assert!(states.len() <= params.max_nodes);

    let mut nodes: Vec<Activated<N>> = states
        .iter()
        .filter(|(_, s)| keep(s.total))
        .map(|(&node, s)| Activated {
            node,
            activation: s.total.clamp(0.0, 1.0) as f32,
            hops: s.first_wave,
            path: path_to(&waves, node, s.first_wave),
            seed_activation: s.seed.map(|a| a as f32),
        })
        .collect();
    nodes.sort_unstable_by(|a, b| {
        b.activation
            .total_cmp(&a.activation)
            .then(a.node.cmp(&b.node))
    });
    Spread { nodes, truncated }
}

/// `1 - (1 - a)(1 - b)`, written so that the result is never below `a` or, from 0, below `b`.
fn probabilistic_or(a: f64, b: f64) -> f64 {
    a + (1.0 - a) * b
}

/// Clamps to `[0, 1]`; NaN becomes 0.
fn unit(x: f32) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        f64::from(x.clamp(0.0, 1.0))
    }
}

fn sort_strongest_first<N: Ord>(list: &mut [(N, f64)]) {
    list.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// Follows parents back from `node` at wave `first_wave` to wave 0.
fn path_to<N: Copy + Eq + Hash>(
    waves: &[HashMap<N, Received<N>>],
    node: N,
    first_wave: u32,
) -> Vec<N> {
    let mut path = Vec::with_capacity(first_wave as usize + 1);
    path.push(node);
    let mut current = node;
    for wave in waves[1..=first_wave as usize].iter().rev() {
        current = wave
            .get(&current)
            .and_then(|r| r.parent)
            .expect("a node received in wave h had a sender in wave h - 1");
        path.push(current);
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, VecDeque};

    const A: u32 = 0;
    const B: u32 = 1;
    const C: u32 = 2;
    const D: u32 = 3;

    fn graph(edges: &[(u32, u32, f32)]) -> BTreeMap<u32, Vec<(u32, f32)>> {
        let mut g: BTreeMap<u32, Vec<(u32, f32)>> = BTreeMap::new();
        for &(u, v, w) in edges {
            g.entry(u).or_default().push((v, w));
        }
        g
    }

    fn params(max_hops: u32, decay: f32) -> SpreadParams {
        SpreadParams {
            max_hops,
            decay,
            ..SpreadParams::default()
        }
    }

    fn find(s: &Spread<u32>, node: u32) -> Option<&Activated<u32>> {
        s.nodes.iter().find(|a| a.node == node)
    }

    fn act(s: &Spread<u32>, node: u32) -> f32 {
        find(s, node).map_or(0.0, |a| a.activation)
    }

    fn close(x: f32, y: f32) -> bool {
        (x - y).abs() < 1e-6
    }

    #[test]
    fn chain() {
        // A -0.8-> B -0.5-> C, decay 0.5, seed A = 0.9.
        // B = 0.9 * 0.8 * 0.5 = 0.36; C = 0.36 * 0.5 * 0.5 = 0.09.
        let g = graph(&[(A, B, 0.8), (B, C, 0.5)]);
        let s = spread(&[(A, 0.9)], &g, params(3, 0.5));
        assert!(!s.truncated);
        assert_eq!(s.nodes.len(), 3);
        let (a, b, c) = (&s.nodes[0], &s.nodes[1], &s.nodes[2]);
        assert_eq!((a.node, a.hops, a.path.clone()), (A, 0, vec![A]));
        assert!(close(a.activation, 0.9));
        assert_eq!(a.seed_activation, Some(0.9));
        assert_eq!((b.node, b.hops, b.path.clone()), (B, 1, vec![A, B]));
        assert!(close(b.activation, 0.36));
        assert_eq!(b.seed_activation, None);
        assert_eq!((c.node, c.hops, c.path.clone()), (C, 2, vec![A, B, C]));
        assert!(close(c.activation, 0.09));
    }

    #[test]
    fn diamond_combines_by_probabilistic_or() {
        // A -1.0-> B -0.5-> D, A -0.6-> C -1.0-> D, decay 0.5, seed A = 1.
        // Wave 1: B = 1 * 1.0 * 0.5 = 0.5, C = 1 * 0.6 * 0.5 = 0.3.
        // Wave 2: D gets 0.5 * 0.5 * 0.5 = 0.125 from B and 0.3 * 1.0 * 0.5 = 0.15 from C:
        // D = 1 - (1 - 0.125)(1 - 0.15) = 1 - 0.875 * 0.85 = 0.25625. Parent: C (0.15 > 0.125).
        let g = graph(&[(A, B, 1.0), (A, C, 0.6), (B, D, 0.5), (C, D, 1.0)]);
        let s = spread(&[(A, 1.0)], &g, params(3, 0.5));
        assert!(close(act(&s, B), 0.5));
        assert!(close(act(&s, C), 0.3));
        let d = find(&s, D).unwrap();
        assert!(close(d.activation, 0.25625));
        assert_eq!(d.hops, 2);
        assert_eq!(d.path, vec![A, C, D]);
        let order: Vec<u32> = s.nodes.iter().map(|a| a.node).collect();
        assert_eq!(order, vec![A, B, C, D]);
    }

    #[test]
    fn cycle_feeds_back() {
        // A -1-> B -1-> A, decay 0.5, seed A = 0.8, 3 hops.
        // Wave 1: B gets 0.4. Wave 2: A gets 0.2. Wave 3: B gets 0.1.
        // A = 1 - (1 - 0.8)(1 - 0.2) = 0.84; B = 1 - (1 - 0.4)(1 - 0.1) = 0.46.
        let g = graph(&[(A, B, 1.0), (B, A, 1.0)]);
        let s = spread(&[(A, 0.8)], &g, params(3, 0.5));
        let a = find(&s, A).unwrap();
        assert!(close(a.activation, 0.84));
        assert_eq!(
            (a.hops, a.path.clone(), a.seed_activation),
            (0, vec![A], Some(0.8))
        );
        let b = find(&s, B).unwrap();
        assert!(close(b.activation, 0.46));
        assert_eq!((b.hops, b.path.clone()), (1, vec![A, B]));

        // One hop: no feedback yet.
        let s = spread(&[(A, 0.8)], &g, params(1, 0.5));
        assert!(close(act(&s, A), 0.8));
        assert!(close(act(&s, B), 0.4));
    }

    #[test]
    fn path_follows_the_parent_at_the_wave_before() {
        // A is seed 0.3; A -1-> B -1-> A, A -1-> D -1-> A, A -0.03-> C; decay 1, 3 hops.
        // Wave 1: B = D = 0.3; C would get 0.3 * 0.03 = 0.009 < 0.01: dropped.
        // Wave 2: A gets 1 - 0.7 * 0.7 = 0.51 from B and D (parent B: a tie, B < D).
        // Wave 3: C gets 0.51 * 0.03 = 0.0153 from A, so C is first reached at hop 3 and its
        // path is A's path at wave 2 plus C: [A, B, A, C], a walk through the cycle.
        // A = 1 - (1 - 0.3)(1 - 0.51) = 0.657; B = D = 1 - (1 - 0.3)(1 - 0.51) = 0.657.
        let g = graph(&[
            (A, B, 1.0),
            (B, A, 1.0),
            (A, D, 1.0),
            (D, A, 1.0),
            (A, C, 0.03),
        ]);
        let s = spread(&[(A, 0.3)], &g, params(3, 1.0));
        let c = find(&s, C).unwrap();
        assert!(close(c.activation, 0.0153));
        assert_eq!((c.hops, c.path.clone()), (3, vec![A, B, A, C]));
        assert!(close(act(&s, A), 0.657));
        assert!(close(act(&s, B), 0.657));
        assert!(close(act(&s, D), 0.657));
        assert_eq!(find(&s, D).unwrap().path, vec![A, D]);
    }

    #[test]
    fn pruning_cuts_a_path() {
        // A -0.1-> B -0.1-> C, decay 0.5, seed A = 1.
        // B = 1 * 0.1 * 0.5 = 0.05; C would get 0.05 * 0.1 * 0.5 = 0.0025 < 0.01: dropped.
        let g = graph(&[(A, B, 0.1), (B, C, 0.1)]);
        let s = spread(&[(A, 1.0)], &g, params(5, 0.5));
        assert!(close(act(&s, B), 0.05));
        assert!(find(&s, C).is_none());
        assert_eq!(s.nodes.len(), 2);

        // A contribution of exactly `prune` is kept: 1 * 0.02 * 0.5 = 0.01.
        let g = graph(&[(A, B, 0.02)]);
        let s = spread(&[(A, 1.0)], &g, params(1, 0.5));
        assert!(find(&s, B).is_some());
    }

    #[test]
    fn weak_and_negative_seeds_are_ignored() {
        let g = graph(&[(A, B, 1.0), (C, D, 1.0)]);
        let s = spread(&[(A, 0.005), (C, -0.7), (D, f32::NAN)], &g, params(3, 1.0));
        assert!(s.nodes.is_empty());
        assert!(!s.truncated);
    }

    #[test]
    fn max_hops_cuts_a_path() {
        // A -1-> B -1-> C -1-> D, decay 1, seed A = 1, 2 hops: B = C = 1, D is 3 hops away.
        let g = graph(&[(A, B, 1.0), (B, C, 1.0), (C, D, 1.0)]);
        let s = spread(&[(A, 1.0)], &g, params(2, 1.0));
        assert!(close(act(&s, B), 1.0));
        assert!(close(act(&s, C), 1.0));
        assert!(find(&s, D).is_none());

        // No hops: the seeds only.
        let s = spread(&[(A, 1.0)], &g, params(0, 1.0));
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[0].node, A);
    }

    #[test]
    fn two_seeds() {
        // A = 0.6 and B = 0.5 both link to C with weight 1, decay 0.5, and A -1-> B.
        // C gets 0.3 from A and 0.25 from B: C = 1 - 0.7 * 0.75 = 0.475, parent A.
        // B gets 0.3 from A on top of its seed 0.5: B = 1 - 0.5 * 0.7 = 0.65, still hops 0.
        let g = graph(&[(A, C, 1.0), (B, C, 1.0), (A, B, 1.0)]);
        let s = spread(&[(A, 0.6), (B, 0.5)], &g, params(1, 0.5));
        let c = find(&s, C).unwrap();
        assert!(close(c.activation, 0.475));
        assert_eq!((c.hops, c.path.clone()), (1, vec![A, C]));
        let b = find(&s, B).unwrap();
        assert!(close(b.activation, 0.65));
        assert_eq!(
            (b.hops, b.path.clone(), b.seed_activation),
            (0, vec![B], Some(0.5))
        );
        let order: Vec<u32> = s.nodes.iter().map(|a| a.node).collect();
        assert_eq!(order, vec![B, A, C]);
    }

    #[test]
    fn ties_go_to_the_smaller_node() {
        // Equal contributions from 5 and 3: the parent is 3, whatever the listing order.
        for edges in [[(5, 7, 1.0), (3, 7, 1.0)], [(3, 7, 1.0), (5, 7, 1.0)]] {
            let g = graph(&edges);
            let s = spread(&[(5, 0.5), (3, 0.5)], &g, params(1, 1.0));
            assert_eq!(find(&s, 7).unwrap().path, vec![3, 7]);
            let order: Vec<u32> = s.nodes.iter().map(|a| a.node).collect();
            assert_eq!(order, vec![7, 3, 5]);
        }
    }

    #[test]
    fn duplicate_seeds_keep_the_largest_similarity() {
        let g = graph(&[]);
        let s = spread(&[(A, 0.2), (A, 0.7), (A, 0.4)], &g, params(1, 1.0));
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[0].seed_activation, Some(0.7));
    }

    #[test]
    fn max_nodes_bounds_work_and_reports_it() {
        // Star A -> B (0.9), C (0.5), D (0.7), decay 0.5: B 0.45, D 0.35, C 0.25.
        // Room for 3 nodes: A, then the two strongest, B and D.
        let g = graph(&[(A, B, 0.9), (A, C, 0.5), (A, D, 0.7)]);
        let p = SpreadParams {
            max_nodes: 3,
            ..params(3, 0.5)
        };
        let s = spread(&[(A, 1.0)], &g, p);
        assert!(s.truncated);
        let order: Vec<u32> = s.nodes.iter().map(|a| a.node).collect();
        assert_eq!(order, vec![A, B, D]);

        // Existing nodes still receive: with a cycle back into A, A keeps growing.
        let g = graph(&[(A, B, 1.0), (B, A, 1.0), (B, C, 1.0)]);
        let p = SpreadParams {
            max_nodes: 2,
            ..params(2, 1.0)
        };
        let s = spread(&[(A, 0.5)], &g, p);
        assert!(s.truncated);
        assert!(close(act(&s, A), 0.75));
        assert!(find(&s, C).is_none());

        // Too many seeds: the strongest are kept.
        let p = SpreadParams {
            max_nodes: 1,
            ..params(0, 1.0)
        };
        let s = spread(&[(A, 0.5), (B, 0.9)], &graph(&[]), p);
        assert!(s.truncated);
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[0].node, B);

        // Enough room: not truncated.
        let s = spread(&[(A, 0.5), (B, 0.9)], &graph(&[]), params(0, 1.0));
        assert!(!s.truncated);
    }

    #[test]
    fn activation_stays_in_the_graph_given() {
        // A closure graph that only knows links inside one "space" (nodes < 100).
        let links = |node: u32, emit: &mut dyn FnMut(u32, f32)| {
            if node < 100 {
                emit((node + 1) % 3, 1.0);
            }
        };
        let s = spread(&[(0, 1.0)], &links, params(10, 0.9));
        assert!(s.nodes.iter().all(|a| a.node < 3));
        assert_eq!(s.nodes.len(), 3);
    }

    #[test]
    fn out_of_range_inputs_are_made_safe() {
        // Weights above 1 count as 1, NaN and negative weights as 0; decay above 1 as 1.
        let g = graph(&[(A, B, 7.0), (A, C, f32::NAN), (A, D, -1.0)]);
        let s = spread(&[(A, 2.0)], &g, params(1, 3.0));
        assert!(close(act(&s, A), 1.0));
        assert!(close(act(&s, B), 1.0));
        assert!(find(&s, C).is_none());
        assert!(find(&s, D).is_none());
        // NaN prune: the default.
        let p = SpreadParams {
            prune: f32::NAN,
            ..params(1, 0.5)
        };
        let s = spread(&[(A, 1.0)], &graph(&[(A, B, 0.01)]), p);
        assert!(find(&s, B).is_none());
        // prune 0: zero-strength links still activate nothing.
        let p = SpreadParams {
            prune: 0.0,
            ..params(1, 0.5)
        };
        let s = spread(&[(A, 1.0), (C, 0.0)], &graph(&[(A, B, 0.0)]), p);
        assert_eq!(s.nodes.len(), 1);
    }

    // ---- properties on random small graphs ----

    #[derive(Debug, Clone)]
    struct Case {
        n: u32,
        edges: Vec<(u32, u32, f32)>,
        seeds: Vec<(u32, f32)>,
        params: SpreadParams,
    }

    fn weight() -> impl Strategy<Value = f32> {
        (1u32..=1000).prop_map(|k| k as f32 / 1000.0)
    }

    fn case() -> impl Strategy<Value = Case> {
        (1u32..=30).prop_flat_map(|n| {
            (
                prop::collection::vec((0..n, 0..n, weight()), 0..90),
                prop::collection::vec((0..n, -1.0f32..=1.0), 1..5),
                0u32..=6,
                weight(),
                prop_oneof![Just(0.01f32), 0.001f32..0.2],
            )
                .prop_map(move |(edges, seeds, max_hops, decay, prune)| Case {
                    n,
                    edges,
                    seeds,
                    params: SpreadParams {
                        max_hops,
                        decay,
                        prune,
                        max_nodes: DEFAULT_MAX_NODES,
                    },
                })
        })
    }

    fn run(c: &Case) -> Spread<u32> {
        spread(&c.seeds, &graph(&c.edges), c.params)
    }

    fn activations(s: &Spread<u32>) -> HashMap<u32, f32> {
        s.nodes.iter().map(|a| (a.node, a.activation)).collect()
    }

    fn no_activation_lowered(before: &Spread<u32>, after: &Spread<u32>) -> Result<(), String> {
        let after = activations(after);
        for a in &before.nodes {
            let now = after.get(&a.node).copied().unwrap_or(0.0);
            if now < a.activation - 1e-6 {
                return Err(format!(
                    "node {} went from {} to {now}",
                    a.node, a.activation
                ));
            }
        }
        Ok(())
    }

    /// Least number of links from a kept seed to each node.
    fn distances(c: &Case) -> HashMap<u32, u32> {
        let g = graph(&c.edges);
        let mut dist = HashMap::new();
        let mut queue = VecDeque::new();
        for &(s, sim) in &c.seeds {
            if unit(sim) >= c.params.prune as f64 && unit(sim) > 0.0 && !dist.contains_key(&s) {
                dist.insert(s, 0);
                queue.push_back(s);
            }
        }
        while let Some(u) = queue.pop_front() {
            let du = dist[&u];
            for &(v, _) in g.get(&u).into_iter().flatten() {
                if let std::collections::hash_map::Entry::Vacant(e) = dist.entry(v) {
                    e.insert(du + 1);
                    queue.push_back(v);
                }
            }
        }
        dist
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn results_are_well_formed(c in case()) {
            let s = run(&c);
            prop_assert!(!s.truncated);
            let edges: BTreeSet<(u32, u32)> = c.edges.iter().map(|&(u, v, _)| (u, v)).collect();
            let dist = distances(&c);
            let kept_seeds: HashMap<u32, f32> = dist
                .iter()
                .filter(|&(_, &d)| d == 0)
                .map(|(&n, _)| (n, c.seeds.iter().filter(|s| s.0 == n).map(|s| s.1).fold(f32::MIN, f32::max)))
                .collect();
            let mut seen = BTreeSet::new();
            for a in &s.nodes {
                prop_assert!(seen.insert(a.node), "node {} reported twice", a.node);
                prop_assert!(a.node < c.n);
                prop_assert!((0.0..=1.0).contains(&a.activation), "activation {}", a.activation);
                prop_assert!(a.activation >= c.params.prune);
                prop_assert!(a.hops <= c.params.max_hops);
                // Reachable from a seed, and no sooner than the shortest route allows.
                let d = dist.get(&a.node).copied();
                prop_assert!(d.is_some(), "node {} is not reachable from a seed", a.node);
                prop_assert!(d.unwrap() <= a.hops);
                // Seeds are exactly the nodes at hop 0, with their similarity as seed activation.
                prop_assert_eq!(a.hops == 0, a.seed_activation.is_some());
                if let Some(sa) = a.seed_activation {
                    prop_assert_eq!(Some(sa), kept_seeds.get(&a.node).map(|s| s.clamp(0.0, 1.0)));
                    prop_assert!(a.activation >= sa - 1e-6);
                }
                // The path.
                prop_assert_eq!(a.path.len() as u32, a.hops + 1);
                prop_assert!(kept_seeds.contains_key(&a.path[0]));
                prop_assert_eq!(*a.path.last().unwrap(), a.node);
                for pair in a.path.windows(2) {
                    prop_assert!(edges.contains(&(pair[0], pair[1])), "no link {:?}", pair);
                }
            }
            // Every kept seed is reported.
            for n in kept_seeds.keys() {
                prop_assert!(seen.contains(n));
            }
            // Sorted by activation, then node.
            for pair in s.nodes.windows(2) {
                prop_assert!(
                    pair[0].activation > pair[1].activation
                        || (pair[0].activation == pair[1].activation && pair[0].node < pair[1].node)
                );
            }
        }

        #[test]
        fn raising_a_link_weight_never_lowers_activation(
            c in case(),
            pick in any::<prop::sample::Index>(),
            t in 0.0f32..=1.0,
        ) {
            prop_assume!(!c.edges.is_empty());
            let before = run(&c);
            let mut raised = c.clone();
            let i = pick.index(c.edges.len());
            let w = raised.edges[i].2;
            raised.edges[i].2 = (w + t * (1.0 - w)).min(1.0);
            let after = run(&raised);
            prop_assert_eq!(no_activation_lowered(&before, &after), Ok(()));
        }

        #[test]
        fn raising_a_seed_never_lowers_activation(
            c in case(),
            pick in any::<prop::sample::Index>(),
            t in 0.0f32..=1.0,
        ) {
            let before = run(&c);
            let mut raised = c.clone();
            let i = pick.index(c.seeds.len());
            let s = raised.seeds[i].1;
            raised.seeds[i].1 = (s + t * (1.0 - s)).min(1.0);
            let after = run(&raised);
            prop_assert_eq!(no_activation_lowered(&before, &after), Ok(()));
        }

        #[test]
        fn listing_order_does_not_matter(c in case(), rotate in 0usize..100) {
            let before = run(&c);
            let mut g = graph(&c.edges);
            for links in g.values_mut() {
                links.reverse();
                let k = rotate % links.len();
                links.rotate_left(k);
            }
            let mut seeds = c.seeds.clone();
            seeds.reverse();
            let after = spread(&seeds, &g, c.params);
            prop_assert_eq!(before.nodes.len(), after.nodes.len());
            prop_assert_eq!(before.truncated, after.truncated);
            for (x, y) in before.nodes.iter().zip(&after.nodes) {
                prop_assert_eq!(x.node, y.node);
                prop_assert!((x.activation - y.activation).abs() <= 1e-6);
                prop_assert_eq!(x.hops, y.hops);
                prop_assert_eq!(&x.path, &y.path);
                prop_assert_eq!(x.seed_activation, y.seed_activation);
            }
        }

        #[test]
        fn max_nodes_is_a_bound(c in case(), max_nodes in 0usize..10) {
            let p = SpreadParams { max_nodes, ..c.params };
            let s = spread(&c.seeds, &graph(&c.edges), p);
            prop_assert!(s.nodes.len() <= max_nodes);
            let full = run(&c);
            if full.nodes.len() > max_nodes {
                prop_assert!(s.truncated);
            }
        }
    }
}
