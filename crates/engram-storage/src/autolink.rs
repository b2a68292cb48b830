//! Automatic links made after the acknowledgement. A write that asks for them is stored as
//! [`Op::RememberAutoLink`] with its memories marked pending; the caller's [`AutoLinker`]
//! (the engine's link index) then makes their links off the write path:
//!
//! - the **linker** thread (idle class: requests go first) takes the pending memories of each
//!   space's active memtable, oldest first, asks the linker for their links and writes them
//!   as one [`Op::AutoLinks`] record, durable like any write;
//! - a **flush** makes the links of every memory still pending in the memtable it writes, so
//!   a segment never holds a memory whose links are still owed.
//!
//! Links are derived data: a crash may delay them (the pending marks are in the WAL and come
//! back with the memtable at replay), never lose a memory or leave a half-made link (an
//! `AutoLinks` record is applied whole or not at all).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use engram_core::{Link, Memory, SpaceId};

use crate::error::Result;
use crate::node::Node;
use crate::op::{AutoLinked, Op};
use crate::space::{EmbeddingSnapshot, Hit, Space, SpaceView};

/// What an [`AutoLinker`] may read of a space. Each call takes the space's read lock for
/// itself only, so writes go on between calls.
pub trait LinkReader {
    /// The exact similarity of the newest version of `id` to `query` (`None`: absent).
    fn similarity(&self, id: &str, query: &[f32]) -> Result<Option<f32>>;
    /// The `k` live memories most similar to `query` (see [`crate::Store::search`]).
    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>>;
    /// Every live memory's embedding, read without the lock (see
    /// [`crate::SpaceView::embedding_snapshot`]).
    fn embedding_snapshot(&self) -> EmbeddingSnapshot;
}

impl LinkReader for Space {
    fn similarity(&self, id: &str, query: &[f32]) -> Result<Option<f32>> {
        self.state.read().similarity(id, query)
    }

    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        self.state.read().search(query, k, ef)
    }

    fn embedding_snapshot(&self) -> EmbeddingSnapshot {
        SpaceView::new(&self.state.read()).embedding_snapshot()
    }
}

/// Makes the automatic links of memories stored with links pending (set with
/// [`crate::Store::set_auto_linker`]).
pub trait AutoLinker: Send + Sync {
    /// The links to add to each of `memories` (pending, oldest first; each may link to the
    /// ones before it), one list per memory, in order. `None` asks to be called again later
    /// (for instance while an index it needs is being built); never when `must` is set (a
    /// flush is writing them).
    fn link(
        &self,
        space: &SpaceId,
        reader: &dyn LinkReader,
        memories: &[Arc<Memory>],
        must: bool,
    ) -> Option<Vec<Vec<Link>>>;
}

/// Pending memories linked per round (one `AutoLinks` record).
const ROUND: usize = 256;

/// The linker's work: the spaces where writes left memories pending since it last looked, and
/// whether to look at every loaded space (at start: what recovery brought back).
pub(crate) struct LinkWork {
    spaces: HashSet<SpaceId>,
    all: bool,
}

impl Default for LinkWork {
    fn default() -> Self {
        LinkWork {
            spaces: HashSet::new(),
            all: true,
        }
    }
}

impl Node {
    /// The linker thread's loop: one round ([`ROUND`] memories) per space with work in turn,
    /// until none has any; then it waits for a write that leaves memories pending, or, when a
    /// linker asked to be called later, for the next tick.
    pub(crate) fn linker_loop(self: Arc<Self>, linker: Arc<dyn AutoLinker>) {
        let mut deferred: HashSet<SpaceId> = HashSet::new();
        loop {
            let spaces = {
                let mut work = self.link_work.lock();
                if work.spaces.is_empty() && !work.all {
                    if *self.shutdown.lock() {
                        return;
                    }
                    let wait = if deferred.is_empty() {
                        Duration::from_secs(3600)
                    } else {
                        self.opts.compaction_tick
                    };
                    self.link_cv.wait_for(&mut work, wait);
                }
                if *self.shutdown.lock() {
                    return;
                }
                let mut ids = std::mem::take(&mut work.spaces);
                ids.extend(deferred.drain());
                if std::mem::take(&mut work.all) {
                    ids.extend(self.catalog.loaded_spaces().iter().map(|s| s.id.clone()));
                }
                ids
            };
            for id in spaces {
                if *self.shutdown.lock() {
                    return;
                }
                let Ok(Some(space)) = self.catalog.space(&id) else {
                    continue;
                };
                match self.link_round(&space, &*linker) {
                    // More may wait: after the other spaces' turn.
                    Ok(Some(n)) if n > 0 => {
                        self.link_work.lock().spaces.insert(id);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        deferred.insert(id);
                    }
                    Err(e) => {
                        // Writes are refused (a failed fsync, shutdown): the memories stay
                        // pending and the flush links them.
                        tracing::warn!(space = %space.id, error = %e, "could not write automatic links; will retry");
                        deferred.insert(id);
                    }
                }
            }
        }
    }

    /// Wakes the linker: writes left memories pending in `spaces` (none: only to see the
    /// shutdown).
    pub(crate) fn wake_linker(&self, spaces: impl IntoIterator<Item = SpaceId>) {
        self.link_work.lock().spaces.extend(spaces);
        self.link_cv.notify_one();
    }

    /// Links up to [`ROUND`] pending memories of `space`'s active memtable and writes their
    /// links (durable when this returns). `Ok(Some(n))`: `n` linked; `Ok(None)`: the linker
    /// asked to be called later.
    pub(crate) fn link_round(
        &self,
        space: &Arc<Space>,
        linker: &dyn AutoLinker,
    ) -> Result<Option<usize>> {
        let pending = {
            let st = space.state.read();
            if st.dropped || st.active.pending_count() == 0 {
                return Ok(Some(0));
            }
            st.active.pending_memories(ROUND)
        };
        let memories: Vec<Arc<Memory>> = pending.iter().map(|(_, m)| m.clone()).collect();
        let Some(links) = linker.link(&space.id, &**space, &memories, false) else {
            return Ok(None);
        };
        let made: Vec<AutoLinked> = pending
            .into_iter()
            .zip(links)
            .map(|((key, m), links)| AutoLinked {
                id: m.id.clone(),
                key,
                links,
            })
            .collect();
        let n = made.len();
        self.wal.submit(&space.id, Op::AutoLinks(made))?;
        Ok(Some(n))
    }
}

/// The automatic links of the memories pending in a memtable being flushed (oldest first),
/// made now, each with its memory. If the linker makes none, they are written as they are.
pub(crate) fn links_for_flush(
    linker: &dyn AutoLinker,
    space: &Space,
    pending: &[Arc<Memory>],
) -> Vec<(Arc<Memory>, Vec<Link>)> {
    if pending.is_empty() {
        return Vec::new();
    }
    match linker.link(&space.id, space, pending, true) {
        Some(links) => pending.iter().cloned().zip(links).collect(),
        None => {
            tracing::warn!(space = %space.id, memories = pending.len(), "the linker made no links for a flushed memtable");
            Vec::new()
        }
    }
}
