//! The HNSW algorithm (Malkov & Yashunin 2016), written once for both of Engram's graphs: the
//! segment index of engram-storage (full `f32` vectors read from a mapped column, a graph laid
//! out as its file) and the engine's link index (`i8` codes in memory, a graph that grows).
//! Generic over where the neighbour lists live ([`Layers`], [`LayersMut`]) and how a similarity
//! is computed ([`Scorer`] to the query, [`PairScorer`] between two nodes), as qdrant's
//! `graph_layers.rs` is; every call is monomorphised, so the hot loop has no dynamic dispatch.
//!
//! - [`greedy`]: the descent through the upper layers.
//! - [`search_layer`]: the beam search of one layer, with an acceptance filter, in a reusable
//!   [`Scratch`] (visited set by generation, the two heaps; no allocation per visited node).
//! - [`select_diverse`]: the diversity heuristic (the paper's Algorithm 4).
//! - [`plan_insert`] then [`link_node`]: inserting a node, in two halves (the link index makes
//!   the first under a read lock, the second under the write lock), with back-links whose full
//!   lists are pruned as the caller's [`Prune`] says.
//!
//! Similarities are "greater is closer"; ties break towards the lower node id, so searches and
//! builds are deterministic.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::rng::VisitedSet;

/// A node and its similarity to the query. Ordered by similarity, then by node with the lower
/// node greater, so every tie breaks the same way.
#[derive(Debug, Clone, Copy)]
pub struct Cand {
    pub sim: f32,
    pub id: u32,
}

impl Ord for Cand {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.sim
            .total_cmp(&other.sim)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Cand {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Cand {}

/// The neighbour lists of a graph, read.
pub trait Layers {
    /// Node ids are below this.
    fn rows(&self) -> usize;
    /// The neighbours of `node` on `layer` (empty where it has none).
    fn neighbours(&self, node: u32, layer: usize) -> &[u32];
}

/// The similarity of nodes to the query searched for.
pub trait Scorer {
    fn score(&self, node: u32) -> f32;
    /// A hint that `node` will be scored soon (see [`prefetch`]).
    #[inline]
    fn prefetch(&self, node: u32) {
        let _ = node;
    }
}

/// The similarity of two nodes (what the diversity heuristic compares).
pub trait PairScorer {
    fn similarity(&self, a: u32, b: u32) -> f32;
}

/// A node's neighbour list on one layer, as both graphs store it: `words[0]` is the count, then
/// `words.len() - 1` slots; `sims[i]` is the similarity of link `words[i]` to the node (`sims[0]`
/// unused). Kept so that pruning a full list need not fetch every member's vector again.
pub struct Slot<'a> {
    pub words: &'a mut [u32],
    pub sims: &'a mut [f32],
}

impl Slot<'_> {
    /// Room for this many neighbours.
    #[inline]
    pub fn width(&self) -> usize {
        self.words.len() - 1
    }

    /// Replaces the list by `list`. Unused slots are zeroed, so equal graphs encode to equal
    /// bytes.
    pub fn set(&mut self, list: &[Cand]) {
        let width = self.width();
        assert!(
            list.len() <= width,
            "{} neighbours, room for {width}",
            list.len()
        );
        self.words[0] = list.len() as u32;
        for (i, c) in list.iter().enumerate() {
            self.words[1 + i] = c.id;
            self.sims[1 + i] = c.sim;
        }
        self.words[1 + list.len()..].fill(0);
    }

    /// Appends `c`; false if the list is full.
    #[inline]
    fn push(&mut self, c: Cand) -> bool {
        let count = self.words[0] as usize;
        if count >= self.width() {
            return false;
        }
        self.words[1 + count] = c.id;
        self.sims[1 + count] = c.sim;
        self.words[0] += 1;
        true
    }
}

/// The neighbour lists of a graph, written.
pub trait LayersMut: Layers {
    /// The list of `node` on `layer`; `None` where the node has no such layer.
    fn slot_mut(&mut self, node: u32, layer: usize) -> Option<Slot<'_>>;
}

/// What a back-link does to a full neighbour list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Chooses again from the members and the new node with the diversity heuristic (the
    /// paper's way; the segment index, built once, in the background).
    Diverse,
    /// Keeps the most similar: the new node takes the place of the least similar member if it
    /// is more similar (the link index, updated on every write: the heuristic on full lists was
    /// half of a request's CPU there).
    MostSimilar,
}

/// Reusable state of a search: visited marks and the two heaps. Grows to the largest graph it
/// has searched and is then reused without allocating.
#[derive(Debug, Default)]
pub struct Scratch {
    visited: VisitedSet,
    /// Nodes to expand, best first.
    candidates: BinaryHeap<Cand>,
    /// The best accepted nodes found, worst on top.
    best: BinaryHeap<Reverse<Cand>>,
    /// Unvisited neighbours of the node being expanded.
    batch: Vec<u32>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Starts a search over `rows` nodes: nothing visited, heaps empty.
    fn begin(&mut self, rows: usize) {
        self.visited.begin(rows);
        self.candidates.clear();
        self.best.clear();
        self.batch.clear();
    }

    /// Whether the last search visited `node`.
    #[inline]
    pub fn was_visited(&self, node: u32) -> bool {
        self.visited.was_visited(node)
    }

    /// How many accepted nodes the last search keeps.
    #[inline]
    pub fn found(&self) -> usize {
        self.best.len()
    }

    /// Keeps `c` among the best `ef` of the last search.
    #[inline]
    pub fn offer(&mut self, c: Cand, ef: usize) {
        if self.best.len() < ef {
            self.best.push(Reverse(c));
        } else if self.best.peek().is_some_and(|w| c > w.0) {
            self.best.pop();
            self.best.push(Reverse(c));
        }
    }

    /// Whether `c` would enter the best `ef`.
    #[inline]
    fn improves(&self, c: Cand, ef: usize) -> bool {
        self.best.len() < ef || self.best.peek().is_some_and(|w| c > w.0)
    }

    /// Moves what the last search keeps into `out`, best first.
    pub fn drain_into(&mut self, out: &mut Vec<Cand>) {
        out.clear();
        out.extend(self.best.drain().map(|r| r.0));
        out.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// The best `k` the last search keeps as `(node, similarity)`, best first.
    pub fn take_best(&mut self, k: usize) -> Vec<(u32, f32)> {
        while self.best.len() > k {
            self.best.pop();
        }
        let mut out = vec![(0u32, 0f32); self.best.len()];
        for slot in out.iter_mut().rev() {
            if let Some(Reverse(c)) = self.best.pop() {
                *slot = (c.id, c.sim);
            }
        }
        out
    }
}

/// Bytes of a row asked for ahead of use (the hardware prefetcher streams the rest). Searches
/// at 768 dimensions are bound by memory traffic; asking for the first 4 lines of each
/// unvisited neighbour before comparing any measured ~5% faster than no prefetch, and whole
/// rows slower (engram-storage `index::tests::measure`, 20,000 x 768).
pub const PREFETCH_BYTES: usize = 4 * 64;

/// A hint that the start of `row` (up to [`PREFETCH_BYTES`]) will be read soon. Does nothing on
/// targets without a prefetch instruction.
#[inline(always)]
pub fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = row.as_ptr().cast::<i8>();
        let len = std::mem::size_of_val(row).min(PREFETCH_BYTES);
        let mut at = 0;
        while at < len {
            // SAFETY: a prefetch is only a hint to the cache: it never faults and reads nothing
            // architecturally; the address is inside `row` anyway. SSE, which provides it, is
            // part of the x86_64 baseline.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(at))
            };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Greedy descent: from `cur`, on each layer from `from` down to `to + 1`, move to the most
/// similar neighbour while that improves.
pub fn greedy<L: Layers + ?Sized, S: Scorer + ?Sized>(
    g: &L,
    scorer: &S,
    mut cur: Cand,
    from: usize,
    to: usize,
) -> Cand {
    for layer in (to + 1..=from).rev() {
        loop {
            let mut moved = false;
            for &n in g.neighbours(cur.id, layer) {
                let c = Cand {
                    sim: scorer.score(n),
                    id: n,
                };
                if c > cur {
                    cur = c;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
    }
    cur
}

/// Beam search of width `ef` on `layer` from `entries` (similarities already computed). Leaves
/// the best `ef` accepted nodes in `s` (see [`Scratch::drain_into`], [`Scratch::take_best`]).
/// Rejected nodes are expanded like any other, so they never cut the graph; the search stops
/// only once `ef` accepted nodes are found and no candidate can improve them (or the reachable
/// graph is exhausted).
#[allow(clippy::too_many_arguments)]
pub fn search_layer<L: Layers + ?Sized, S: Scorer + ?Sized>(
    g: &L,
    s: &mut Scratch,
    scorer: &S,
    entries: &[Cand],
    ef: usize,
    layer: usize,
    accept: &impl Fn(u32) -> bool,
) {
    s.begin(g.rows());
    for &e in entries {
        if (e.id as usize) < g.rows() && s.visited.visit(e.id) {
            s.candidates.push(e);
            if accept(e.id) {
                s.offer(e, ef);
            }
        }
    }
    while let Some(c) = s.candidates.pop() {
        if s.best.len() >= ef && s.best.peek().is_some_and(|w| c < w.0) {
            break;
        }
        // Mark the unvisited neighbours and ask for their rows before comparing any, so that
        // their memory is fetched in parallel rather than one row at a time.
        s.batch.clear();
        for &n in g.neighbours(c.id, layer) {
            if s.visited.visit(n) {
                s.batch.push(n);
                scorer.prefetch(n);
            }
        }
        for i in 0..s.batch.len() {
            let n = s.batch[i];
            let c = Cand {
                sim: scorer.score(n),
                id: n,
            };
            if s.improves(c, ef) {
                s.candidates.push(c);
                if accept(n) {
                    s.offer(c, ef);
                }
            }
        }
    }
}

/// The diversity heuristic (Algorithm 4 of the paper, without extending the candidates or
/// keeping pruned ones): walking `candidates` best first, keep one only if it is more similar
/// to the base (its `sim`) than to every neighbour already kept; stop at `max`.
pub fn select_diverse<P: PairScorer + ?Sized>(
    pairs: &P,
    candidates: &[Cand],
    max: usize,
    out: &mut Vec<Cand>,
) {
    out.clear();
    for &c in candidates {
        if out.len() >= max {
            break;
        }
        if out
            .iter()
            .all(|kept| pairs.similarity(c.id, kept.id) <= c.sim)
        {
            out.push(c);
        }
    }
}

/// Where a new node goes: the neighbours chosen for it on each of its layers present in the
/// graph, and the result of its layer-0 search. Made by [`plan_insert`], applied by
/// [`link_node`]; reusable (its lists keep their capacity).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Index = layer; `layers` of them in use.
    chosen: Vec<Vec<Cand>>,
    layers: usize,
    /// The layer-0 search's result, best first.
    pub nearest: Vec<Cand>,
}

impl Plan {
    /// The neighbours chosen on `layer` (empty above the planned layers).
    pub fn chosen(&self, layer: usize) -> &[Cand] {
        if layer < self.layers {
            &self.chosen[layer]
        } else {
            &[]
        }
    }

    /// How many layers (from 0) have a choice.
    pub fn layers(&self) -> usize {
        self.layers
    }
}

/// Reusable buffers of insertions: nothing is allocated per insertion once they have grown.
#[derive(Debug, Default)]
pub struct InsertScratch {
    pub search: Scratch,
    /// Entry points of the next layer's search.
    entries: Vec<Cand>,
    /// Candidates while pruning a full list.
    pool: Vec<Cand>,
    /// What pruning keeps.
    kept: Vec<Cand>,
}

impl InsertScratch {
    pub fn new() -> InsertScratch {
        InsertScratch::default()
    }
}

/// The search half of inserting a node at `level` that `scorer` scores against: from `entry`
/// (the graph's entry point, whose top layer is `top`), greedy descent down to `level + 1`,
/// then on each layer from `min(level, top)` down to 0 a beam search of width `ef` whose result
/// seeds the next, and the heuristic's choice of at most `m` neighbours from it. Reads the
/// graph only.
#[allow(clippy::too_many_arguments)]
pub fn plan_insert<L: Layers + ?Sized, S: Scorer + ?Sized, P: PairScorer + ?Sized>(
    g: &L,
    scorer: &S,
    pairs: &P,
    entry: u32,
    top: usize,
    level: usize,
    m: usize,
    ef: usize,
    scratch: &mut InsertScratch,
    plan: &mut Plan,
) {
    let layers = level.min(top) + 1;
    while plan.chosen.len() < layers {
        plan.chosen.push(Vec::with_capacity(m));
    }
    plan.layers = layers;
    let ep = Cand {
        sim: scorer.score(entry),
        id: entry,
    };
    let ep = greedy(g, scorer, ep, top, level);
    scratch.entries.clear();
    scratch.entries.push(ep);
    for layer in (0..layers).rev() {
        search_layer(
            g,
            &mut scratch.search,
            scorer,
            &scratch.entries,
            ef,
            layer,
            &|_| true,
        );
        scratch.search.drain_into(&mut plan.nearest);
        select_diverse(pairs, &plan.nearest, m, &mut plan.chosen[layer]);
        std::mem::swap(&mut scratch.entries, &mut plan.nearest);
    }
    std::mem::swap(&mut scratch.entries, &mut plan.nearest);
}

/// The linking half of inserting `node`: on each planned layer up to `top` (top down), its list
/// is set to the neighbours chosen and each of them (that has that layer) links back to it, a
/// full list pruned as `prune` says. `pairs` is needed by [`Prune::Diverse`] only.
pub fn link_node<G: LayersMut + ?Sized, P: PairScorer + ?Sized>(
    g: &mut G,
    pairs: &P,
    node: u32,
    plan: &Plan,
    top: usize,
    prune: Prune,
    scratch: &mut InsertScratch,
) {
    for layer in (0..plan.layers.min(top + 1)).rev() {
        let chosen = &plan.chosen[layer];
        if let Some(mut slot) = g.slot_mut(node, layer) {
            slot.set(chosen);
        }
        for c in chosen {
            if let Some(slot) = g.slot_mut(c.id, layer) {
                link_back(
                    slot,
                    Cand {
                        sim: c.sim,
                        id: node,
                    },
                    prune,
                    pairs,
                    scratch,
                );
            }
        }
    }
}

/// Adds `new` (with its similarity to the list's node) to `slot`; a full list is pruned as
/// `prune` says.
fn link_back<P: PairScorer + ?Sized>(
    mut slot: Slot<'_>,
    new: Cand,
    prune: Prune,
    pairs: &P,
    scratch: &mut InsertScratch,
) {
    if slot.push(new) {
        return;
    }
    let width = slot.width();
    match prune {
        Prune::Diverse => {
            let pool = &mut scratch.pool;
            pool.clear();
            pool.push(new);
            for i in 1..=width {
                pool.push(Cand {
                    sim: slot.sims[i],
                    id: slot.words[i],
                });
            }
            pool.sort_unstable_by(|a, b| b.cmp(a));
            select_diverse(pairs, pool, width, &mut scratch.kept);
            slot.set(&scratch.kept);
        }
        Prune::MostSimilar => {
            let (mut worst, mut worst_sim) = (0, f32::INFINITY);
            for i in 1..=width {
                if slot.sims[i] < worst_sim {
                    worst_sim = slot.sims[i];
                    worst = i;
                }
            }
            if new.sim > worst_sim {
                slot.words[worst] = new.id;
                slot.sims[worst] = new.sim;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line; similarity is minus the distance.
    struct Line {
        x: Vec<f32>,
        lists: Vec<Vec<u32>>,
        sims: Vec<Vec<f32>>,
        width: usize,
    }

    impl Line {
        fn new(x: &[f32], width: usize) -> Line {
            Line {
                x: x.to_vec(),
                lists: vec![vec![0; width + 1]; x.len()],
                sims: vec![vec![0.0; width + 1]; x.len()],
                width,
            }
        }
    }

    impl Layers for Line {
        fn rows(&self) -> usize {
            self.x.len()
        }
        fn neighbours(&self, node: u32, layer: usize) -> &[u32] {
            if layer > 0 {
                return &[];
            }
            let l = &self.lists[node as usize];
            &l[1..1 + (l[0] as usize).min(self.width)]
        }
    }

    impl LayersMut for Line {
        fn slot_mut(&mut self, node: u32, layer: usize) -> Option<Slot<'_>> {
            (layer == 0).then(|| Slot {
                words: &mut self.lists[node as usize],
                sims: &mut self.sims[node as usize],
            })
        }
    }

    struct Pairs<'a>(&'a [f32]);
    impl PairScorer for Pairs<'_> {
        fn similarity(&self, a: u32, b: u32) -> f32 {
            -(self.0[a as usize] - self.0[b as usize]).abs()
        }
    }

    struct To<'a>(&'a [f32], f32);
    impl Scorer for To<'_> {
        fn score(&self, node: u32) -> f32 {
            -(self.0[node as usize] - self.1).abs()
        }
    }

    fn build(x: &[f32], width: usize, prune: Prune) -> Line {
        let mut g = Line::new(x, width);
        let mut s = InsertScratch::new();
        let mut plan = Plan::default();
        for node in 1..x.len() as u32 {
            let q = To(x, x[node as usize]);
            plan_insert(&g, &q, &Pairs(x), 0, 0, 0, width, 8, &mut s, &mut plan);
            link_node(&mut g, &Pairs(x), node, &plan, 0, prune, &mut s);
        }
        g
    }

    #[test]
    fn both_prunings_build_searchable_graphs() {
        let x: Vec<f32> = (0..200).map(|i| ((i * 37) % 200) as f32).collect();
        for prune in [Prune::Diverse, Prune::MostSimilar] {
            let g = build(&x, 4, prune);
            let mut s = Scratch::new();
            for target in [0.0f32, 57.0, 199.0] {
                let q = To(&x, target);
                let e = Cand {
                    sim: q.score(0),
                    id: 0,
                };
                search_layer(&g, &mut s, &q, &[e], 16, 0, &|_| true);
                let best = s.take_best(1);
                assert_eq!(x[best[0].0 as usize], target, "{prune:?}");
                // A filter is honoured.
                search_layer(&g, &mut s, &q, &[e], 16, 0, &|n| x[n as usize] != target);
                let best = s.take_best(3);
                assert!(best.iter().all(|&(n, _)| x[n as usize] != target));
                assert_eq!(best.len(), 3);
            }
        }
    }

    #[test]
    fn diverse_selection_skips_what_a_kept_neighbour_covers() {
        let x = [0.0f32, 1.0, 2.0, -3.0];
        // From base 0: 1 (sim -1) is kept; 2 (sim -2) is closer to 1 than to the base; -3 is not.
        let cands = [
            Cand { sim: -1.0, id: 1 },
            Cand { sim: -2.0, id: 2 },
            Cand { sim: -3.0, id: 3 },
        ];
        let mut out = Vec::new();
        select_diverse(&Pairs(&x), &cands, 3, &mut out);
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 3]);
        select_diverse(&Pairs(&x), &cands, 1, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_full_list_keeps_its_most_similar_members() {
        let x = [0.0f32; 4];
        let mut g = Line::new(&x, 2);
        let mut s = InsertScratch::new();
        for (id, sim) in [(1, 0.5), (2, 0.2), (3, 0.1), (3, 0.9)] {
            link_back(
                g.slot_mut(0, 0).unwrap(),
                Cand { sim, id },
                Prune::MostSimilar,
                &Pairs(&x),
                &mut s,
            );
        }
        assert_eq!(g.lists[0], vec![2, 1, 3]);
        assert_eq!(g.sims[0][1..], [0.5, 0.9]);
    }

    #[test]
    fn ties_break_towards_the_lower_node() {
        let a = Cand { sim: 1.0, id: 3 };
        let b = Cand { sim: 1.0, id: 4 };
        assert!(a > b);
        let mut s = Scratch::new();
        s.begin(8);
        for id in [5, 4, 3] {
            s.offer(Cand { sim: 1.0, id }, 2);
        }
        assert_eq!(s.take_best(2), vec![(3, 1.0), (4, 1.0)]);
    }
}
