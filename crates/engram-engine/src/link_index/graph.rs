//! The link index's graph: `i8` codes of unit vectors, growing neighbour lists, and the HNSW
//! insertions and searches over them (the algorithm is `engram_core::hnsw`'s).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use engram_core::hnsw::{
    self, InsertScratch, Layers, LayersMut, PairScorer, Plan, Prune, Scorer, Slot,
};
use engram_core::rng::{splitmix64_mix, SPLITMIX64_GAMMA};
use engram_core::{simd, MemoryId};

const NO_ENTRY: u32 = u32::MAX;
const MAX_LEVEL: usize = 16;

/// Rows of a fixed width in chunks of [`CHUNK_ROWS`] that never move once full: growing never
/// copies what is there. (With plain vectors, each doubling of the codes and neighbour lists
/// copied up to hundreds of megabytes under the graph's write lock and stalled every request
/// of the node: in `engram-bench http`, 250-300 ms at 64k and 128k memories of one space.)
/// The first chunk grows like a vector, so a small space holds little.
struct Rows<T> {
    width: usize,
    chunks: Vec<Vec<T>>,
    len: usize,
}

const CHUNK_SHIFT: usize = 12;
const CHUNK_ROWS: usize = 1 << CHUNK_SHIFT;

impl<T: Copy + Default> Rows<T> {
    fn new(width: usize) -> Self {
        Rows {
            width,
            chunks: Vec::new(),
            len: 0,
        }
    }

    #[inline]
    fn row(&self, i: usize) -> &[T] {
        let at = (i & (CHUNK_ROWS - 1)) * self.width;
        &self.chunks[i >> CHUNK_SHIFT][at..at + self.width]
    }

    #[inline]
    fn row_mut(&mut self, i: usize) -> &mut [T] {
        let at = (i & (CHUNK_ROWS - 1)) * self.width;
        &mut self.chunks[i >> CHUNK_SHIFT][at..at + self.width]
    }

    /// Appends a row of defaults and returns it.
    fn push(&mut self) -> &mut [T] {
        if self.len.is_multiple_of(CHUNK_ROWS) {
            let capacity = if self.chunks.is_empty() {
                0
            } else {
                CHUNK_ROWS * self.width
            };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        let width = self.width;
        let last = self.chunks.last_mut().expect("a chunk was pushed above");
        last.resize(last.len() + width, T::default());
        self.len += 1;
        self.row_mut(self.len - 1)
    }
}

thread_local! {
    static SCRATCH: RefCell<InsertScratch> = RefCell::new(InsertScratch::new());
}

pub(super) use engram_core::quant::{quantize, Code};

/// The rows' codes, contiguous, and their scales: how the graph scores.
struct Codes {
    codes: Rows<i8>,
    scales: Vec<f32>,
}

impl Codes {
    #[inline]
    fn code(&self, row: u32) -> &[i8] {
        self.codes.row(row as usize)
    }

    #[inline]
    fn sim_to(&self, q: &Code, row: u32) -> f32 {
        simd::dot_i8(&q.bytes, self.code(row)) as f32 * q.scale * self.scales[row as usize]
    }

    fn push(&mut self, code: &Code) {
        self.codes.push().copy_from_slice(&code.bytes);
        self.scales.push(code.scale);
    }
}

impl PairScorer for Codes {
    #[inline]
    fn similarity(&self, a: u32, b: u32) -> f32 {
        simd::dot_i8(self.code(a), self.code(b)) as f32
            * self.scales[a as usize]
            * self.scales[b as usize]
    }
}

/// The codes against a query's code.
struct ToCode<'a> {
    codes: &'a Codes,
    query: &'a Code,
}

impl Scorer for ToCode<'_> {
    #[inline]
    fn score(&self, row: u32) -> f32 {
        self.codes.sim_to(self.query, row)
    }

    #[inline]
    fn prefetch(&self, row: u32) {
        hnsw::prefetch(self.codes.code(row));
    }
}

/// The neighbour lists, in flat arrays (layer 0: `m0` slots per row; upper layers: `m` slots
/// per layer per row), each slot list starting with its count, and the similarity of every
/// link kept beside it for pruning (index 0 unused).
struct Lists {
    m: usize,
    m0: usize,
    levels: Vec<u8>,
    layer0: Rows<u32>,
    layer0_sims: Rows<f32>,
    upper: Vec<Box<[u32]>>,
    upper_sims: Vec<Box<[f32]>>,
}

impl Lists {
    /// Adds a row with empty lists on layers `0..=level`.
    fn push(&mut self, level: usize) {
        self.levels.push(level as u8);
        self.layer0.push();
        self.layer0_sims.push();
        self.upper
            .push(vec![0; level * (self.m + 1)].into_boxed_slice());
        self.upper_sims
            .push(vec![0.0; level * (self.m + 1)].into_boxed_slice());
    }
}

impl Layers for Lists {
    #[inline]
    fn rows(&self) -> usize {
        self.levels.len()
    }

    #[inline]
    fn neighbours(&self, row: u32, layer: usize) -> &[u32] {
        let (words, width, at) = if layer == 0 {
            (self.layer0.row(row as usize), self.m0, 0)
        } else {
            (
                &self.upper[row as usize][..],
                self.m,
                (layer - 1) * (self.m + 1),
            )
        };
        let count = words[at] as usize;
        &words[at + 1..at + 1 + count.min(width)]
    }
}

impl LayersMut for Lists {
    fn slot_mut(&mut self, node: u32, layer: usize) -> Option<Slot<'_>> {
        if layer == 0 {
            return Some(Slot {
                words: self.layer0.row_mut(node as usize),
                sims: self.layer0_sims.row_mut(node as usize),
            });
        }
        if usize::from(self.levels[node as usize]) < layer {
            return None;
        }
        let at = (layer - 1) * (self.m + 1);
        Some(Slot {
            words: &mut self.upper[node as usize][at..=at + self.m],
            sims: &mut self.upper_sims[node as usize][at..=at + self.m],
        })
    }
}

/// The graph: rows in insertion order, their codes and neighbour lists, and the memories they
/// hold. The HNSW algorithm is `engram_core::hnsw`'s (shared with the segment index); a full
/// neighbour list keeps its most similar members ([`Prune::MostSimilar`]).
pub(crate) struct QuantGraph {
    dim: usize,
    ef_construction: usize,
    codes: Codes,
    lists: Lists,
    entry: u32,
    max_level: usize,
    rng: AtomicU64,
    ids: Vec<MemoryId>,
    live: Vec<bool>,
    by_id: HashMap<MemoryId, u32>,
}

/// What inserting a vector needs from a search of the graph (made under a read lock, so
/// searches and other inserts' searches go on; applied under the write lock).
pub(crate) struct Insertion {
    pub(super) code: Code,
    level: usize,
    /// Per layer up to `min(level, max_level)`: the neighbours chosen; and the search's result
    /// on layer 0, best first (dead rows included).
    plan: Plan,
    /// Rows in the graph when it was planned.
    planned_at_rows: usize,
    /// The graph's top layer when it was planned.
    planned_max_level: usize,
}

impl QuantGraph {
    /// An empty graph for `dim`-dimensional vectors: `m` neighbours per node on upper layers,
    /// `2 m` on layer 0, beam `ef_construction` while inserting.
    pub fn new(dim: usize, m: usize, ef_construction: usize) -> Self {
        let m = m.max(2);
        QuantGraph {
            dim,
            ef_construction: ef_construction.max(m),
            codes: Codes {
                codes: Rows::new(dim),
                scales: Vec::new(),
            },
            lists: Lists {
                m,
                m0: 2 * m,
                levels: Vec::new(),
                layer0: Rows::new(2 * m + 1),
                layer0_sims: Rows::new(2 * m + 1),
                upper: Vec::new(),
                upper_sims: Vec::new(),
            },
            entry: NO_ENTRY,
            max_level: 0,
            rng: AtomicU64::new(0),
            ids: Vec::new(),
            live: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    /// Live memories in the graph.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Rows, live or not.
    pub fn rows(&self) -> usize {
        self.lists.levels.len()
    }

    fn random_level(&self) -> usize {
        // splitmix64, then floor(-ln(U) / ln(m)).
        let z = splitmix64_mix(
            self.rng
                .fetch_add(SPLITMIX64_GAMMA, AtomicOrdering::Relaxed)
                .wrapping_add(SPLITMIX64_GAMMA),
        );
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() / (self.lists.m as f64).ln()) as usize).min(MAX_LEVEL)
    }

    /// The search half of inserting `v` (the graph's dimension): its level and, on each of its
    /// layers present in the graph, the neighbours the heuristic chooses.
    pub fn plan(&self, v: &[f32]) -> Insertion {
        self.plan_code(quantize(v), self.random_level())
    }

    fn plan_code(&self, code: Code, level: usize) -> Insertion {
        let mut plan = Plan::default();
        if self.entry != NO_ENTRY {
            let query = ToCode {
                codes: &self.codes,
                query: &code,
            };
            SCRATCH.with(|s| {
                hnsw::plan_insert(
                    &self.lists,
                    &query,
                    &self.codes,
                    self.entry,
                    self.max_level,
                    level,
                    self.lists.m,
                    self.ef_construction,
                    &mut s.borrow_mut(),
                    &mut plan,
                )
            });
        }
        Insertion {
            code,
            level,
            plan,
            planned_at_rows: self.rows(),
            planned_max_level: self.max_level,
        }
    }

    /// The `k` best live memories of a plan's layer-0 search, best first.
    pub(super) fn nearest(&self, ins: &Insertion, k: usize) -> Vec<(MemoryId, f32)> {
        ins.plan
            .nearest
            .iter()
            .filter(|c| self.live[c.id as usize])
            .take(k)
            .map(|c| (self.ids[c.id as usize].clone(), c.sim))
            .collect()
    }

    /// The linking half: adds the memory `id` (replacing an older version) as planned. A plan
    /// made on a graph much smaller than the present one (while a space's first memories go
    /// in concurrently) is made again here, so no node is left without neighbours.
    pub fn apply(&mut self, id: MemoryId, mut ins: Insertion) {
        if ins.code.bytes.len() != self.dim {
            return;
        }
        // The same vector again (a memory stored anew with other metadata or confidence): its
        // row stays, rather than piling up identical dead copies that fill search beams.
        if let Some(&old) = self.by_id.get(&id) {
            if self.codes.scales[old as usize] == ins.code.scale
                && self.codes.code(old) == &ins.code.bytes[..]
            {
                return;
            }
        }
        // Planned on a graph much smaller than this one, or below a layer it has grown since
        // (the node could become the entry point with empty upper lists): planned again.
        if self.rows() > 2 * ins.planned_at_rows + 16
            || (ins.planned_at_rows == 0 && self.entry != NO_ENTRY)
            || (ins.level > ins.planned_max_level && self.max_level > ins.planned_max_level)
        {
            ins = self.plan_code(ins.code, ins.level);
        }
        if let Some(old) = self.by_id.remove(&id) {
            self.live[old as usize] = false;
        }
        let Insertion {
            code, level, plan, ..
        } = ins;
        let row = self.rows() as u32;
        self.codes.push(&code);
        self.lists.push(level);
        self.ids.push(id.clone());
        self.live.push(true);
        self.by_id.insert(id, row);
        if self.entry == NO_ENTRY {
            self.entry = row;
            self.max_level = level;
            return;
        }
        // Planned against an older graph: layers above the current top are left empty.
        SCRATCH.with(|s| {
            hnsw::link_node(
                &mut self.lists,
                &self.codes,
                row,
                &plan,
                self.max_level,
                Prune::MostSimilar,
                &mut s.borrow_mut(),
            )
        });
        if level > self.max_level {
            self.entry = row;
            self.max_level = level;
        }
    }

    /// Adds (or replaces) the memory `id` with embedding `v`: [`plan`](Self::plan), then
    /// [`apply`](Self::apply).
    #[cfg(test)]
    pub fn put(&mut self, id: MemoryId, v: &[f32]) {
        let ins = self.plan(v);
        self.apply(id, ins);
    }

    /// Whether forgotten and replaced rows (kept as routing nodes) have come to outnumber the
    /// live ones: then the graph is better made again from the live memories.
    pub fn wants_rebuild(&self) -> bool {
        let dead = self.rows() - self.len();
        dead > 1024 && dead > self.len()
    }

    /// Marks `id` forgotten: it is never returned again (it stays a routing node).
    pub fn remove(&mut self, id: &str) {
        if let Some(row) = self.by_id.remove(id) {
            self.live[row as usize] = false;
        }
    }

    /// Up to `k` live memories nearest to `v` (approximate similarity), best first; `ef` is
    /// the beam width (raised to `k`).
    #[cfg(test)]
    pub fn search(&self, v: &[f32], k: usize, ef: usize) -> Vec<(MemoryId, f32)> {
        if self.entry == NO_ENTRY || k == 0 || v.len() != self.dim {
            return Vec::new();
        }
        let q = quantize(v);
        let query = ToCode {
            codes: &self.codes,
            query: &q,
        };
        let ep = hnsw::Cand {
            sim: query.score(self.entry),
            id: self.entry,
        };
        let ep = hnsw::greedy(&self.lists, &query, ep, self.max_level, 0);
        // Dead rows take places in the beam: widen it by the share of them.
        let dead = self.rows() - self.len();
        let ef = ef.max(k) + (ef.max(k) * dead) / self.rows().max(1);
        let mut found = Vec::new();
        SCRATCH.with(|s| {
            let s = &mut s.borrow_mut().search;
            hnsw::search_layer(&self.lists, s, &query, &[ep], ef, 0, &|_| true);
            s.drain_into(&mut found);
        });
        found
            .into_iter()
            .filter(|c| self.live[c.id as usize])
            .take(k)
            .map(|c| (self.ids[c.id as usize].clone(), c.sim))
            .collect()
    }
}
