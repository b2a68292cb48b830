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
//! `engram_core::hnsw`, shared with the segment index. `graph.rs` holds the codes it scores
//! with, the growing neighbour lists it walks, and the memories behind the rows; this file the
//! build, the backlog of writes committed while it runs, and the queue of changes waiting
//! for the graph's write lock.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use engram_core::{simd, MemoryId};
use engram_storage::EmbeddingSnapshot;
use parking_lot::{Mutex, RwLock};

mod graph;

pub(crate) use graph::Insertion;
use graph::QuantGraph;

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
mod tests;

#[cfg(all(test, target_os = "linux"))]
mod measure;
