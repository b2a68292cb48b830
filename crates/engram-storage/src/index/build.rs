//! Building an HNSW graph (Malkov & Yashunin 2016): each row in turn gets a random level, is
//! located by greedy descent through the layers above it, then linked on each of its layers to
//! neighbours chosen with the diversity heuristic (their Algorithm 4) from a beam search of
//! width `ef_construction`; full neighbour lists are pruned by the same heuristic.
//!
//! The build is single-threaded and deterministic: rows are inserted in row order, levels come
//! from a splitmix64 generator seeded by `HnswParams::seed`, and every tie breaks by row. The
//! same vectors and parameters give the same graph (on the same similarity kernel).

use super::format::{HnswInfo, Layout, MAX_LEVEL, MAX_ROWS, NO_ENTRY};
use super::graph::HnswGraph;
use super::params::HnswParams;
use super::search::{greedy, search_layer, similarity, Cand, SearchScratch};
use super::vectors::Vectors;
use crate::error::{Result, StorageError};

pub(crate) use engram_core::rng::SplitMix64;

/// `floor(-ln(U) / ln(m))` for `U` uniform in `(0, 1]`, capped at [`MAX_LEVEL`], computed in
/// integers so that it does not depend on the platform's `ln`: with `U = x / 2^53`,
/// `x` in `1..=2^53`, the level is the largest `l` with `x * m^l <= 2^53`.
pub(crate) fn random_level(rng: &mut SplitMix64, m: usize) -> usize {
    const ONE: u128 = 1 << 53;
    let x = u128::from(rng.next_u64() >> 11) + 1;
    let mut scaled = x;
    let mut level = 0;
    while level < MAX_LEVEL {
        scaled *= m as u128;
        if scaled > ONE {
            break;
        }
        level += 1;
    }
    level
}

/// Builds the HNSW graph of `vectors` (rows `0..len`).
pub fn build<V: Vectors + ?Sized>(vectors: &V, params: HnswParams) -> Result<HnswGraph> {
    params.validate()?;
    let rows = vectors.len();
    let dimension = vectors.dimension();
    if rows > MAX_ROWS {
        return Err(StorageError::Invalid(format!(
            "{rows} rows exceed the HNSW limit of {MAX_ROWS} (MAX_ROWS)"
        )));
    }
    if dimension == 0 || dimension > engram_core::limits::MAX_DIMENSION {
        return Err(StorageError::Invalid(format!(
            "dimension {dimension} is outside 1..={} (MAX_DIMENSION)",
            engram_core::limits::MAX_DIMENSION
        )));
    }
    let HnswParams {
        m,
        m0,
        ef_construction,
        seed,
    } = params;

    let mut rng = SplitMix64::new(seed);
    let levels: Vec<u8> = (0..rows).map(|_| random_level(&mut rng, m) as u8).collect();
    let mut offsets = Vec::with_capacity(rows + 1);
    let mut words = 0u64;
    offsets.push(0);
    for &l in &levels {
        words += u64::from(l) * (m as u64 + 1);
        offsets.push(words);
    }
    let upper_words = usize::try_from(words)
        .ok()
        .filter(|&w| Layout::new(rows, m0, w).is_some())
        .ok_or_else(|| {
            StorageError::Invalid(format!(
                "an HNSW index of {rows} rows does not fit in memory"
            ))
        })?;
    let mut graph = HnswGraph {
        info: HnswInfo {
            dimension,
            rows,
            m,
            m0,
            ef_construction,
            seed,
            entry_point: NO_ENTRY,
            max_level: 0,
        },
        levels,
        layer0: vec![0; rows * (m0 + 1)],
        offsets,
        upper: vec![0; upper_words],
    };
    let mut b = Builder {
        scratch: SearchScratch::new(),
        found: Vec::with_capacity(ef_construction + 1),
        entries: Vec::with_capacity(ef_construction + 1),
        chosen: Vec::with_capacity(m0 + 1),
        pool: Vec::with_capacity(m0 + 1),
        pruned: Vec::with_capacity(m0 + 1),
        sims: [vec![0.0; graph.layer0.len()], vec![0.0; graph.upper.len()]],
    };
    for row in 0..rows as u32 {
        b.insert(&mut graph, vectors, row);
    }
    Ok(graph)
}

/// Reusable buffers of one build: nothing is allocated per insertion.
struct Builder {
    scratch: SearchScratch,
    /// The beam search's result on the current layer, best first.
    found: Vec<Cand>,
    /// Entry points of the next layer's search.
    entries: Vec<Cand>,
    /// Neighbours chosen by the heuristic.
    chosen: Vec<Cand>,
    /// Candidates while pruning a full list.
    pool: Vec<Cand>,
    /// What pruning keeps.
    pruned: Vec<Cand>,
    /// The similarity of each link to the row holding it, at the link's position in `layer0`
    /// (index 0) or `upper` (index 1): pruning a full list needs them, and computing them again
    /// would fetch every neighbour's vector.
    sims: [Vec<f32>; 2],
}

impl Builder {
    fn insert<V: Vectors + ?Sized>(&mut self, g: &mut HnswGraph, vectors: &V, row: u32) {
        let level = usize::from(g.levels[row as usize]);
        if g.info.entry_point == NO_ENTRY {
            g.info.entry_point = row;
            g.info.max_level = level;
            return;
        }
        let (m, ef) = (g.info.m, g.info.ef_construction);
        let query = vectors.vector(row);
        let top = g.info.max_level;
        let entry = g.info.entry_point;
        let mut ep = Cand {
            sim: similarity(query, vectors.vector(entry)),
            id: entry,
        };
        if level < top {
            ep = greedy(&g.view(), vectors, query, ep, top, level);
        }
        self.entries.clear();
        self.entries.push(ep);
        for layer in (0..=level.min(top)).rev() {
            search_layer(
                &g.view(),
                &mut self.scratch,
                vectors,
                query,
                &self.entries,
                ef,
                layer,
                &|_| true,
            );
            self.found.clear();
            self.found.extend(
                self.scratch
                    .best
                    .drain()
                    .map(|r| r.0)
                    .filter(|c| c.id != row),
            );
            self.found.sort_unstable_by(|a, b| b.cmp(a));
            select_diverse(vectors, &self.found, m, &mut self.chosen);
            write_list(g, &mut self.sims, row, layer, &self.chosen);
            for i in 0..self.chosen.len() {
                let n = self.chosen[i];
                self.link_back(g, vectors, n.id, row, n.sim, layer);
            }
            std::mem::swap(&mut self.entries, &mut self.found);
        }
        if level > top {
            g.info.entry_point = row;
            g.info.max_level = level;
        }
    }

    /// Adds `new` (at similarity `sim` to `node`) to the neighbours of `node` on `layer`; a full
    /// list is re-chosen from its members and `new` by the heuristic.
    fn link_back<V: Vectors + ?Sized>(
        &mut self,
        g: &mut HnswGraph,
        vectors: &V,
        node: u32,
        new: u32,
        sim: f32,
        layer: usize,
    ) {
        let sims = &mut self.sims[usize::from(layer > 0)];
        if let Some(at) = g.push_neighbour(node, layer, new) {
            sims[at] = sim;
            return;
        }
        let (at, width) = g.slot(node, layer);
        let words = g.words(layer);
        self.pool.clear();
        self.pool.push(Cand { sim, id: new });
        for i in at + 1..at + 1 + width {
            self.pool.push(Cand {
                sim: sims[i],
                id: words[i],
            });
        }
        self.pool.sort_unstable_by(|a, b| b.cmp(a));
        select_diverse(vectors, &self.pool, width, &mut self.pruned);
        write_list(g, &mut self.sims, node, layer, &self.pruned);
    }
}

/// Sets the neighbours of `node` on `layer` to `list`, recording their similarities.
fn write_list(g: &mut HnswGraph, sims: &mut [Vec<f32>; 2], node: u32, layer: usize, list: &[Cand]) {
    let at = g.set_neighbours(node, layer, list.iter().map(|c| c.id));
    let sims = &mut sims[usize::from(layer > 0)][at + 1..];
    for (s, c) in sims.iter_mut().zip(list) {
        *s = c.sim;
    }
}

/// The diversity heuristic (Algorithm 4 of the paper, without extending the candidates or
/// keeping pruned ones): walking `candidates` best first, keep one only if it is more similar
/// to the base (its `sim`) than to every neighbour already kept; stop at `max`.
fn select_diverse<V: Vectors + ?Sized>(
    vectors: &V,
    candidates: &[Cand],
    max: usize,
    out: &mut Vec<Cand>,
) {
    out.clear();
    for &c in candidates {
        if out.len() >= max {
            break;
        }
        let v = vectors.vector(c.id);
        if out
            .iter()
            .all(|kept| similarity(v, vectors.vector(kept.id)) <= c.sim)
        {
            out.push(c);
        }
    }
}
