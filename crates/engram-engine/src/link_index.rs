//! The link index: an in-memory HNSW graph (Malkov & Yashunin 2016) over one space's
//! embeddings quantised to `i8`, kept up to date on every write. Auto-linking asks it for the
//! nearest neighbours of a new memory instead of searching the space's memtables and
//! segments: one graph search over 768-byte codes instead of an exact scan of the memtable
//! (up to 4,096 rows of 3 KiB) plus one HNSW search per segment.
//!
//! It is derived data, never persisted: built from the space's memories the first time a write
//! to the space asks for automatic links after the engine opened (in the background for a
//! large space; writes meanwhile use the store's search), then updated after each committed
//! write and forget. Its candidates are re-scored exactly against the stored `f32` embeddings
//! before any link is made, so quantisation only affects which candidates are looked at.
//!
//! Quantisation: each unit vector is scaled so its largest component is ±127 and rounded;
//! `sim(a, b) = dot_i8(a, b) · scale_a · scale_b`, within about 1e-3 of the exact cosine for
//! 768-d unit vectors. Forgotten and replaced memories stay in the graph as routing nodes and
//! are never returned.
//!
//! The HNSW algorithm (descent, layer search, diversity heuristic, back-links) is
//! `engram_core::hnsw`, shared with the segment index; this file holds the codes it scores
//! with, the growing neighbour lists it walks, and the memories behind the rows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};

use engram_core::hnsw::{
    self, InsertScratch, Layers, LayersMut, PairScorer, Plan, Prune, Scorer, Slot,
};
use engram_core::rng::{splitmix64_mix, SPLITMIX64_GAMMA};
use engram_core::{simd, MemoryId};
use engram_storage::EmbeddingSnapshot;
use parking_lot::{Mutex, RwLock};

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

/// An `i8` code and its scale.
struct Code {
    bytes: Vec<i8>,
    scale: f32,
}

fn quantize(v: &[f32]) -> Code {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if !(max.is_finite() && max > 0.0) {
        return Code {
            bytes: vec![0; v.len()],
            scale: 0.0,
        };
    }
    let inv = 127.0 / max;
    Code {
        bytes: v
            .iter()
            .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8)
            .collect(),
        scale: max / 127.0,
    }
}

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
    code: Code,
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
    fn nearest(&self, ins: &Insertion, k: usize) -> Vec<(MemoryId, f32)> {
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

/// A change recorded while the index is being built.
enum Change {
    Put(MemoryId, Vec<f32>),
    Remove(MemoryId),
}

/// One space's link index and its build state.
pub(crate) struct LinkIndex {
    dim: usize,
    graph: RwLock<QuantGraph>,
    /// Set when the build failed (a panic): the engine then drops this index and makes another.
    failed: AtomicBool,
    /// `Some` while the first build runs: changes committed meanwhile wait here.
    backlog: Mutex<Option<Vec<Change>>>,
    ready: AtomicBool,
    /// Committed changes waiting for the graph's write lock. A request thread does not wait
    /// for that lock while searches hold it: it queues its change here and links it only if
    /// the lock is free; whoever next finds it free links everything queued. Searches
    /// meanwhile compare the queued memories one by one, so a memory is a link candidate as
    /// soon as it is recorded.
    pending: Mutex<Vec<Pending>>,
}

/// A committed change not yet in the graph.
enum Pending {
    Add(MemoryId, Insertion),
    Remove(MemoryId),
}

/// Past this many queued changes, linking them waits for the write lock.
const MAX_PENDING: usize = 64;

impl LinkIndex {
    /// An index still to be built (see [`LinkIndex::build`]).
    pub fn new(dim: usize, m: usize, ef_construction: usize) -> Self {
        LinkIndex {
            dim,
            graph: RwLock::new(QuantGraph::new(dim, m, ef_construction)),
            failed: AtomicBool::new(false),
            backlog: Mutex::new(Some(Vec::new())),
            ready: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Links the queued changes if the write lock is free (or, past [`MAX_PENDING`] of them,
    /// once it is), and again while more arrive meanwhile.
    fn drain(&self) {
        // A few rounds at most: one request thread does not link for everyone indefinitely
        // (what stays queued is still seen by searches, and the next caller links it).
        for _ in 0..4 {
            let queued = self.pending.lock().len();
            if queued == 0 {
                return;
            }
            let mut g = if queued > MAX_PENDING {
                self.graph.write()
            } else {
                match self.graph.try_write() {
                    Some(g) => g,
                    // A search holds the lock; it drains when it lets go.
                    None => return,
                }
            };
            self.link_queued(&mut g);
        }
    }

    /// Links everything queued into `g` (held under the write lock).
    fn link_queued(&self, g: &mut QuantGraph) {
        let items = std::mem::take(&mut *self.pending.lock());
        for item in items {
            match item {
                Pending::Add(id, ins) => g.apply(id, ins),
                Pending::Remove(id) => g.remove(id.as_str()),
            }
        }
    }

    /// Links everything queued, waiting for the write lock.
    fn settle(&self) {
        self.link_queued(&mut self.graph.write());
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(AtomicOrdering::Acquire)
    }

    /// Whether its build failed (see `failed`).
    pub fn has_failed(&self) -> bool {
        self.failed.load(AtomicOrdering::Acquire)
    }

    /// Fills the index from `snapshot` (taken after this index was registered, so every later
    /// write is in the backlog), then applies the backlog a chunk at a time (writers are not
    /// held up while it is replayed) and marks the index ready. A panic marks it failed.
    pub fn build(&self, snapshot: &EmbeddingSnapshot) {
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let listed = snapshot.for_each(|id, v| self.insert(id.clone(), v));
            if let Err(e) = listed {
                // Memories it could not read are missing from the index (never from the
                // store); writes keep adding theirs.
                tracing::error!(error = %e, "reading a space for its link index failed");
            }
            loop {
                let chunk = {
                    let mut backlog = self.backlog.lock();
                    match backlog.as_mut() {
                        Some(b) if !b.is_empty() => std::mem::take(b),
                        _ => {
                            *backlog = None;
                            self.ready.store(true, AtomicOrdering::Release);
                            break;
                        }
                    }
                };
                for change in chunk {
                    match change {
                        Change::Put(id, v) => self.insert(id, &v),
                        Change::Remove(id) => {
                            self.pending.lock().push(Pending::Remove(id));
                            self.drain();
                        }
                    }
                }
            }
            self.settle();
        }));
        if built.is_err() {
            tracing::error!("building a link index failed; it will be made again");
            self.failed.store(true, AtomicOrdering::Release);
        }
    }

    /// Records a committed write.
    pub fn put(&self, id: &MemoryId, v: &[f32]) {
        let mut backlog = self.backlog.lock();
        if let Some(b) = backlog.as_mut() {
            b.push(Change::Put(id.clone(), v.to_vec()));
            return;
        }
        drop(backlog);
        self.insert(id.clone(), v);
    }

    /// Searches under the read lock, links when the write lock is free (see `pending`).
    fn insert(&self, id: MemoryId, v: &[f32]) {
        if v.len() != self.dim {
            return;
        }
        let ins = self.graph.read().plan(v);
        self.pending.lock().push(Pending::Add(id, ins));
        self.drain();
    }

    /// Records a committed forget.
    pub fn remove(&self, id: &MemoryId) {
        let mut backlog = self.backlog.lock();
        if let Some(b) = backlog.as_mut() {
            b.push(Change::Remove(id.clone()));
            return;
        }
        drop(backlog);
        self.pending.lock().push(Pending::Remove(id.clone()));
        self.drain();
    }

    /// Plans the insertion of `v` (see [`QuantGraph::plan`]) and returns it with the `k`
    /// nearest live memories its search found; `None` until the index is ready. The plan is
    /// applied with [`LinkIndex::apply`] once the memory is committed.
    pub fn plan(&self, v: &[f32], k: usize) -> Option<(Insertion, Vec<(MemoryId, f32)>)> {
        if !self.is_ready() || v.len() != self.dim {
            return None;
        }
        let g = self.graph.read();
        let ins = g.plan(v);
        let mut nearest = g.nearest(&ins, k);
        // Committed memories still queued are candidates too (by their quantised similarity);
        // queued forgets are not. Read before the graph lock is let go, so a change being
        // linked meanwhile is seen in one place or the other.
        {
            let pending = self.pending.lock();
            for item in pending.iter() {
                match item {
                    Pending::Add(id, queued) => {
                        let sim = simd::dot_i8(&ins.code.bytes, &queued.code.bytes) as f32
                            * ins.code.scale
                            * queued.code.scale;
                        nearest.retain(|(n, _)| n != id);
                        nearest.push((id.clone(), sim));
                    }
                    Pending::Remove(id) => nearest.retain(|(n, _)| n != id),
                }
            }
        }
        drop(g);
        if nearest.len() > k {
            nearest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            nearest.truncate(k);
        }
        self.drain();
        Some((ins, nearest))
    }

    /// Adds a committed memory as planned by [`LinkIndex::plan`] on this index.
    pub fn apply(&self, id: MemoryId, ins: Insertion) {
        self.pending.lock().push(Pending::Add(id, ins));
        self.drain();
    }

    /// See [`QuantGraph::search`]; empty until the index is ready.
    #[cfg(test)]
    pub fn search(&self, v: &[f32], k: usize, ef: usize) -> Vec<(MemoryId, f32)> {
        if !self.is_ready() {
            return Vec::new();
        }
        self.graph.read().search(v, k, ef)
    }

    /// Live memories indexed (queued changes linked first).
    pub fn len(&self) -> usize {
        self.settle();
        self.graph.read().len()
    }

    /// See [`QuantGraph::wants_rebuild`].
    pub fn wants_rebuild(&self) -> bool {
        self.is_ready() && self.graph.read().wants_rebuild()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut rand::rngs::SmallRng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        simd::normalize(&mut v);
        v
    }

    fn id(i: usize) -> MemoryId {
        MemoryId::new(format!("m{i}")).unwrap()
    }

    #[test]
    fn quantised_similarity_is_close_to_exact() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..200 {
            let (a, b) = (unit(&mut rng, 768), unit(&mut rng, 768));
            let (qa, qb) = (quantize(&a), quantize(&b));
            let approx = simd::dot_i8(&qa.bytes, &qb.bytes) as f32 * qa.scale * qb.scale;
            assert!((approx - simd::dot(&a, &b)).abs() < 2e-3);
        }
        let zero = quantize(&[0.0; 8]);
        assert_eq!(zero.scale, 0.0);
    }

    #[test]
    fn finds_near_neighbours_like_an_exact_scan() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let dim = 64;
        // Clustered data, as embeddings are.
        let centres: Vec<Vec<f32>> = (0..40).map(|_| unit(&mut rng, dim)).collect();
        let mut data = Vec::new();
        let mut g = QuantGraph::new(dim, 16, 64);
        for i in 0..3000 {
            let c = &centres[i % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.15..0.15)).collect();
            simd::normalize(&mut v);
            g.put(id(i), &v);
            data.push(v);
        }
        assert_eq!(g.len(), 3000);
        let mut hits = 0;
        let queries = 200;
        for _ in 0..queries {
            let t = &data[rng.gen_range(0..data.len())];
            let mut q: Vec<f32> = t.iter().map(|x| x + rng.gen_range(-0.05..0.05)).collect();
            simd::normalize(&mut q);
            let mut exact: Vec<(usize, f32)> = data
                .iter()
                .enumerate()
                .map(|(i, v)| (i, simd::dot(&q, v)))
                .collect();
            exact.sort_by(|a, b| b.1.total_cmp(&a.1));
            let want: Vec<MemoryId> = exact[..3].iter().map(|(i, _)| id(*i)).collect();
            let got = g.search(&q, 3, 32);
            hits += want
                .iter()
                .filter(|w| got.iter().any(|(g, _)| g == *w))
                .count();
        }
        let recall = hits as f64 / (3 * queries) as f64;
        assert!(recall >= 0.95, "recall@3 {recall}");
    }

    #[test]
    fn forgotten_and_replaced_memories_are_not_returned() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut g = QuantGraph::new(32, 8, 32);
        let vs: Vec<Vec<f32>> = (0..500).map(|_| unit(&mut rng, 32)).collect();
        for (i, v) in vs.iter().enumerate() {
            g.put(id(i), v);
        }
        // Forget m0; replace m1 with m2's vector.
        g.remove("m0");
        g.put(id(1), &vs[2]);
        assert_eq!(g.len(), 499);
        let got = g.search(&vs[0], 5, 32);
        assert!(got.iter().all(|(i, _)| i.as_str() != "m0"), "{got:?}");
        let got = g.search(&vs[2], 2, 32);
        let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        assert!(ids.contains(&"m1") && ids.contains(&"m2"), "{ids:?}");
        // m1's old vector no longer finds m1 first.
        let got = g.search(&vs[1], 1, 32);
        assert_ne!(got[0].0.as_str(), "m1");
    }

    #[test]
    fn plans_made_on_a_much_smaller_graph_are_made_again() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let mut g = QuantGraph::new(16, 8, 32);
        let vs: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, 16)).collect();
        // Every plan made on the empty graph, as concurrent first writes would.
        let plans: Vec<Insertion> = vs.iter().map(|v| g.plan(v)).collect();
        for (i, p) in plans.into_iter().enumerate() {
            g.apply(id(i), p);
        }
        for (i, v) in vs.iter().enumerate() {
            assert_eq!(g.search(v, 1, 32)[0].0, id(i), "{i} unreachable");
        }
    }

    #[test]
    fn replacing_everything_twice_asks_for_a_rebuild() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(6);
        let mut g = QuantGraph::new(8, 4, 16);
        for round in 0..3 {
            for i in 0..1100 {
                g.put(id(i), &unit(&mut rng, 8));
            }
            assert_eq!(g.wants_rebuild(), round == 2, "round {round}");
        }
    }

    #[test]
    fn storing_the_same_vector_again_adds_no_row() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(8);
        let mut g = QuantGraph::new(16, 4, 16);
        let v = unit(&mut rng, 16);
        for _ in 0..50 {
            g.put(id(1), &v);
        }
        assert_eq!((g.rows(), g.len()), (1, 1));
        g.put(id(1), &unit(&mut rng, 16));
        assert_eq!((g.rows(), g.len()), (2, 1));
    }

    #[test]
    fn the_backlog_holds_changes_until_the_build_ends() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
        let idx = LinkIndex::new(16, 8, 32);
        let a = unit(&mut rng, 16);
        let b = unit(&mut rng, 16);
        idx.put(&id(1), &a);
        idx.remove(&id(0));
        assert!(!idx.is_ready());
        assert!(idx.search(&a, 1, 8).is_empty());
        idx.build(&EmbeddingSnapshot::default());
        assert!(idx.is_ready());
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.search(&a, 1, 8)[0].0, id(1));
        idx.put(&id(2), &b);
        assert_eq!(idx.search(&b, 1, 8)[0].0, id(2));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod measure {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn thread_cpu_s() -> f64 {
        let mut ts = Timespec::default();
        // SAFETY: a valid out-pointer for clock_gettime.
        unsafe { clock_gettime(3, &mut ts) }; // CLOCK_THREAD_CPUTIME_ID
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    }
    #[repr(C)]
    #[derive(Default)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }

    /// `cargo test --release -p engram-engine --lib link_index::measure -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn insert_cost_and_recall() {
        let dim = 768;
        let n = 40_000;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let centres: Vec<Vec<f32>> = (0..300)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                simd::normalize(&mut v);
                v
            })
            .collect();
        let data: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let mut v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.06..0.06)).collect();
                simd::normalize(&mut v);
                v
            })
            .collect();
        for (m, ef_c) in [(16, 32), (16, 48), (16, 64)] {
            let mut g = QuantGraph::new(dim, m, ef_c);
            let t = thread_cpu_s();
            for (i, v) in data.iter().enumerate() {
                let ins = g.plan(v);
                g.apply(MemoryId::new(format!("m{i}")).unwrap(), ins);
            }
            let insert_us = (thread_cpu_s() - t) / n as f64 * 1e6;
            let mut hits = 0;
            let q = 200;
            let t = thread_cpu_s();
            for j in 0..q {
                let target = &data[(j * 7919) % n];
                let mut v: Vec<f32> = target
                    .iter()
                    .map(|x| x + rng.gen_range(-0.02..0.02))
                    .collect();
                simd::normalize(&mut v);
                let mut exact: Vec<(usize, f32)> = data
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (i, simd::dot(&v, d)))
                    .collect();
                exact.sort_by(|a, b| b.1.total_cmp(&a.1));
                let ins = g.plan(&v);
                let got = g.nearest(&ins, 3);
                hits += exact[..3]
                    .iter()
                    .filter(|(i, _)| got.iter().any(|(id, _)| id.as_str() == format!("m{i}")))
                    .count();
            }
            let _ = t;
            println!(
                "m {m}, ef_construction {ef_c}: {insert_us:.1} µs CPU per insert at {n} rows; recall@3 of the plan's search {:.3}",
                hits as f64 / (3 * q) as f64
            );
        }
    }
}
