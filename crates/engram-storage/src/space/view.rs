//! What the engine reads of a space: a [`SpaceView`] of its state under the space's read lock
//! (see [`crate::Store::read_space`]), and an [`EmbeddingSnapshot`] of its memories that is
//! read without the lock.

use std::collections::HashSet;
use std::sync::Arc;

use engram_core::{Link, Memory, MemoryId};

use crate::error::Result;
use crate::memtable::Entry;
use crate::segment::Segment;
use crate::space::search::Hit;
use crate::space::state::SpaceState;

/// A read-only view of one space's state, valid while the store holds its read lock.
pub struct SpaceView<'a> {
    state: &'a SpaceState,
}

impl<'a> SpaceView<'a> {
    pub(crate) fn new(state: &'a SpaceState) -> Self {
        Self { state }
    }

    /// The newest version of a memory, or `None` if absent or deleted.
    pub fn get(&self, id: &str) -> Result<Option<Memory>> {
        self.state.get(id)
    }

    /// Whether a live memory `id` is in the space.
    pub fn contains(&self, id: &str) -> Result<bool> {
        self.state.contains(id)
    }

    /// The links of the newest version of a memory.
    pub fn links(&self, id: &str) -> Result<Option<Vec<Link>>> {
        self.state.links(id)
    }

    /// The confidence of the newest version of a memory.
    pub fn confidence(&self, id: &str) -> Result<Option<f32>> {
        self.state.confidence(id)
    }

    /// The similarity of a memory's embedding to `query`.
    pub fn similarity(&self, id: &str, query: &[f32]) -> Result<Option<f32>> {
        self.state.similarity(id, query)
    }

    /// Rows held (memtable entries and segment rows, replaced versions and tombstones
    /// included): an upper bound of the live memories, without reading any id.
    pub fn approx_rows(&self) -> usize {
        self.state.approx_rows()
    }

    /// The `k` live memories most similar to `query`, best first (see [`crate::Store::search`]).
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        self.state.search(query, k, ef)
    }

    /// The sealed segments, oldest first: their columns are read in place.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.state.segments.iter().map(|s| &**s)
    }

    /// What listing every live memory's embedding needs, taken cheaply under the space's lock
    /// (the memtables' entries and the segment handles are shared, not copied) and read
    /// without it: see [`EmbeddingSnapshot::for_each`].
    pub fn embedding_snapshot(&self) -> EmbeddingSnapshot {
        let mut tables = Vec::new();
        for table in std::iter::once(&self.state.active).chain(self.state.frozen.as_deref()) {
            for (id, e) in &table.entries {
                tables.push((
                    id.clone(),
                    match e {
                        Entry::Live(m) => Some(m.clone()),
                        Entry::Tombstone => None,
                    },
                ));
            }
        }
        EmbeddingSnapshot {
            tables,
            segments: self.state.segments.clone(),
        }
    }
}

/// A space's memories as of one moment, readable without its lock (see
/// [`SpaceView::embedding_snapshot`]); the default one is empty.
#[derive(Default)]
pub struct EmbeddingSnapshot {
    /// Memtable entries, the active table's first (`None`: a tombstone).
    tables: Vec<(MemoryId, Option<Arc<Memory>>)>,
    /// Oldest first.
    segments: Vec<Arc<Segment>>,
}

impl EmbeddingSnapshot {
    /// Rows it holds, replaced versions and tombstones included.
    pub fn approx_rows(&self) -> usize {
        self.tables.len() + self.segments.iter().map(|s| s.rows()).sum::<usize>()
    }

    /// Calls `f` with the id and embedding of the newest version of every live memory, in no
    /// particular order, reading segments in place (nothing but ids and embeddings).
    pub fn for_each(&self, mut f: impl FnMut(&MemoryId, &[f32])) -> Result<()> {
        let mut seen: HashSet<&str> = HashSet::new();
        for (id, m) in &self.tables {
            if seen.insert(id.as_str()) {
                if let Some(m) = m {
                    f(id, &m.embedding);
                }
            }
        }
        for seg in self.segments.iter().rev() {
            for row in 0..seg.rows() {
                let raw = seg.id(row)?;
                if seen.insert(raw) {
                    f(&crate::op::memory_id(raw)?, seg.embedding(row));
                }
            }
            for t in 0..seg.info().tombstones {
                seen.insert(seg.tombstone(t)?);
            }
        }
        Ok(())
    }
}
