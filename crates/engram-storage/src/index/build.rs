//! Building an HNSW graph (Malkov & Yashunin 2016): each row in turn gets a random level, is
//! located by greedy descent through the layers above it, then linked on each of its layers to
//! neighbours chosen with the diversity heuristic (their Algorithm 4) from a beam search of
//! width `ef_construction`; full neighbour lists are pruned by the same heuristic
//! ([`Prune::Diverse`]). The algorithm is `engram_core::hnsw`'s (shared with the engine's link
//! index); this file lays the graph out as the index file stores it.
//!
//! The build is single-threaded and deterministic: rows are inserted in row order, levels come
//! from a splitmix64 generator seeded by `HnswParams::seed`, and every tie breaks by row. The
//! same vectors and parameters give the same graph (on the same similarity kernel).

use super::format::{HnswInfo, Layout, MAX_LEVEL, MAX_ROWS, NO_ENTRY};
use super::graph::HnswGraph;
use super::params::HnswParams;
use super::search::ToCodes;
use super::vectors::Vectors;
use super::view::CodesView;
use crate::error::{Result, StorageError};
use engram_core::hnsw::{self, InsertScratch, Layers, LayersMut, Plan, Prune, Slot};

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
        .filter(|&w| Layout::new(rows, m0, w, dimension).is_some())
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
        codes: vec![0; rows * dimension],
        scales: vec![0.0; rows],
    };
    for row in 0..rows {
        graph.scales[row] = engram_core::quant::quantize_into(
            vectors.vector(row as u32),
            &mut graph.codes[row * dimension..(row + 1) * dimension],
        );
    }
    let mut b = Builder {
        scratch: InsertScratch::new(),
        plan: Plan::default(),
        sims: [vec![0.0; graph.layer0.len()], vec![0.0; graph.upper.len()]],
    };
    // The graph is built on the codes it will be searched with: a quarter of the memory
    // traffic of the vectors, and an integer dot product.
    let (codes, scales) = (
        std::mem::take(&mut graph.codes),
        std::mem::take(&mut graph.scales),
    );
    let view = CodesView {
        codes: &codes,
        scales: &scales,
        dimension,
    };
    for row in 0..rows as u32 {
        b.insert(&mut graph, view, row);
    }
    graph.codes = codes;
    graph.scales = scales;
    Ok(graph)
}

/// Reusable buffers of one build: nothing is allocated per insertion.
struct Builder {
    scratch: InsertScratch,
    plan: Plan,
    /// The similarity of each link to the row holding it, at the link's position in `layer0`
    /// (index 0) or `upper` (index 1): pruning a full list needs them, and computing them again
    /// would fetch every neighbour's vector.
    sims: [Vec<f32>; 2],
}

impl Builder {
    fn insert(&mut self, g: &mut HnswGraph, codes: CodesView<'_>, row: u32) {
        let level = usize::from(g.levels[row as usize]);
        if g.info.entry_point == NO_ENTRY {
            g.info.entry_point = row;
            g.info.max_level = level;
            return;
        }
        let (m, ef, top) = (g.info.m, g.info.ef_construction, g.info.max_level);
        let query = ToCodes {
            codes,
            query: codes.code(row),
            scale: codes.scale(row),
        };
        let rows = CodePairs(codes);
        hnsw::plan_insert(
            &g.view(),
            &query,
            &rows,
            g.info.entry_point,
            top,
            level,
            m,
            ef,
            &mut self.scratch,
            &mut self.plan,
        );
        let mut links = Links {
            graph: g,
            sims: &mut self.sims,
        };
        hnsw::link_node(
            &mut links,
            &rows,
            row,
            &self.plan,
            top,
            Prune::Diverse,
            &mut self.scratch,
        );
        if level > top {
            g.info.entry_point = row;
            g.info.max_level = level;
        }
    }
}

/// A graph being built and the similarities of its links, as the shared HNSW code writes them.
/// Rows against each other by their codes (the diversity heuristic).
struct CodePairs<'a>(CodesView<'a>);

impl hnsw::PairScorer for CodePairs<'_> {
    #[inline]
    fn similarity(&self, a: u32, b: u32) -> f32 {
        let (x, y) = (self.0.code(a), self.0.code(b));
        if x.len() != y.len() {
            return f32::NEG_INFINITY;
        }
        engram_core::simd::dot_i8(x, y) as f32 * self.0.scale(a) * self.0.scale(b)
    }
}

struct Links<'a> {
    graph: &'a mut HnswGraph,
    sims: &'a mut [Vec<f32>; 2],
}

impl Layers for Links<'_> {
    fn rows(&self) -> usize {
        self.graph.levels.len()
    }

    fn neighbours(&self, node: u32, layer: usize) -> &[u32] {
        self.graph.view().neighbours(node, layer)
    }
}

impl LayersMut for Links<'_> {
    fn slot_mut(&mut self, node: u32, layer: usize) -> Option<Slot<'_>> {
        let (at, width) = self.graph.slot(node, layer);
        let words = &mut self.graph.words_mut(layer)[at..=at + width];
        let sims = &mut self.sims[usize::from(layer > 0)][at..=at + width];
        Some(Slot { words, sims })
    }
}
