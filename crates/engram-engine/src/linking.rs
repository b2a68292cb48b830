//! Automatic links and the per-space link index behind them ([`crate::link_index`]).
//!
//! A write to an existing space that asks for automatic links is acknowledged without them:
//! its memories are stored marked pending, and the store's linker (a background thread, idle
//! class) or the flush of their memtable asks [`Linking`] for their links, oldest first, and
//! writes them as a record of their own (see `engram_storage`'s `autolink.rs`). The first
//! write to a space (which creates it) links its members to each other at once.
//!
//! The link index is made the first time it is needed after the engine opened (in the
//! background for a space of more than [`INLINE_LINK_INDEX_ROWS`] rows), fed by every
//! committed write, and retired when replaced and forgotten memories outnumber the live ones.

use std::collections::HashMap;
use std::sync::Arc;

use engram_core::{limits, simd, Link, Memory, MemoryId, SpaceId};
use engram_storage::{AutoLinker, EmbeddingSnapshot, Hit, LinkReader};
use parking_lot::Mutex;

use crate::link_index::LinkIndex;
use crate::{Engine, EngineOptions, Result};

/// A space with at most this many rows has its link index built by the caller that needs
/// it; a larger one in the background (links wait meanwhile; a flush uses the store's search).
const INLINE_LINK_INDEX_ROWS: usize = 1_000;

/// The link indexes of a node's spaces and the rules of automatic links: shared by the engine
/// (which feeds the indexes on every write) and the store (which asks for links).
pub(crate) struct Linking {
    indexes: Mutex<HashMap<SpaceId, Arc<LinkIndex>>>,
    threshold: f32,
    max: usize,
    ef: usize,
    m: usize,
    ef_construction: usize,
}

impl Linking {
    pub(crate) fn new(opts: &EngineOptions) -> Self {
        Linking {
            indexes: Mutex::new(HashMap::new()),
            threshold: opts.auto_link_threshold,
            max: opts.auto_link_max,
            ef: opts.auto_link_ef,
            m: opts.link_index_m,
            ef_construction: opts.link_index_ef_construction,
        }
    }

    /// The link index of `space`, if one is registered.
    pub(crate) fn get(&self, space: &SpaceId) -> Option<Arc<LinkIndex>> {
        self.indexes.lock().get(space).cloned()
    }

    /// Drops the link index of `space` (the space was dropped or released).
    pub(crate) fn forget_space(&self, space: &SpaceId) {
        self.indexes.lock().remove(space);
    }

    /// The link index of `space`, made (registered, then filled from a snapshot of the space)
    /// on first use. Every write committed after the registration reaches it through
    /// [`Engine::indexed`] or the linker (into its backlog while it is built), and the
    /// snapshot is taken after the registration, so nothing committed is missed.
    pub(crate) fn index(
        &self,
        space: &SpaceId,
        dim: usize,
        snapshot: impl FnOnce() -> Result<EmbeddingSnapshot>,
    ) -> Result<Arc<LinkIndex>> {
        let index = {
            let mut map = self.indexes.lock();
            match map.get(space) {
                Some(index) if !index.has_failed() => return Ok(index.clone()),
                _ => {}
            }
            let index = Arc::new(LinkIndex::new(dim, self.m, self.ef_construction));
            map.insert(space.clone(), index.clone());
            index
        };
        let snapshot = match snapshot() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.forget(space, &index);
                return Err(e);
            }
        };
        let rows = snapshot.approx_rows();
        if rows <= INLINE_LINK_INDEX_ROWS {
            index.build(&snapshot);
        } else {
            let (building, space_name) = (index.clone(), space.to_string());
            tracing::info!(space = %space_name, rows, "building the link index");
            let spawned = std::thread::Builder::new()
                .name("engram-linkidx".into())
                .spawn(move || {
                    // Background work, like the storage indexer: requests first.
                    engram_storage::process::lower_current_thread_priority();
                    let t = std::time::Instant::now();
                    building.build(&snapshot);
                    tracing::info!(space = %space_name, rows, seconds = t.elapsed().as_secs_f64(), "link index built");
                });
            if let Err(e) = spawned {
                // Not fatal: the next caller tries again.
                tracing::warn!(space = %space, error = %e, "could not start a link index build");
                self.forget(space, &index);
            }
        }
        Ok(index)
    }

    /// Removes `index` from the map if it is still the one registered for `space`.
    fn forget(&self, space: &SpaceId, index: &Arc<LinkIndex>) {
        let mut map = self.indexes.lock();
        if map.get(space).is_some_and(|i| Arc::ptr_eq(i, index)) {
            map.remove(space);
        }
    }

    /// Drops a link index whose dead rows outnumber its live ones; the next caller makes a
    /// fresh one from the space.
    pub(crate) fn retire_if_worn(&self, space: &SpaceId, index: &Arc<LinkIndex>) {
        if index.wants_rebuild() {
            tracing::info!(space = %space, "the link index holds more replaced and forgotten memories than live ones: making it again");
            self.forget(space, index);
        }
    }

    /// The automatic links of `m` among `hits` (exact similarities): the most similar ones
    /// at or above the threshold, not `m` itself nor a memory it already links to.
    fn choose(&self, m: &Memory, mut hits: Vec<Hit>) -> Vec<Link> {
        hits.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut links: Vec<Link> = Vec::new();
        for h in hits {
            if links.len() == self.max
                || m.links.len() + links.len() >= limits::MAX_LINKS
                || h.similarity < self.threshold
            {
                break;
            }
            if h.id == m.id
                || m.links.iter().any(|l| l.to == h.id)
                || links.iter().any(|l| l.to == h.id)
            {
                continue;
            }
            links.push(Link {
                to: h.id,
                weight: Link::weight_from_similarity(h.similarity),
            });
        }
        links
    }

    /// The links of one memory found through the link index (which then records it), or,
    /// without a usable index, through the store's search.
    fn link_one(
        &self,
        index: Option<&LinkIndex>,
        reader: &dyn LinkReader,
        m: &Memory,
    ) -> engram_storage::Result<Vec<Link>> {
        let want = self.max;
        let planned = index.and_then(|i| i.plan(&m.embedding, want + 3).map(|p| (i, p)));
        let hits = match planned {
            Some((index, (insertion, candidates))) => {
                // Scored exactly against what is stored (the index's similarities are
                // approximate, and it may hold a version replaced or deleted since).
                let mut hits = Vec::with_capacity(candidates.len());
                for (id, _) in candidates {
                    if id == m.id {
                        continue;
                    }
                    if let Some(similarity) = reader.similarity(id.as_str(), &m.embedding)? {
                        hits.push(Hit { id, similarity });
                    }
                }
                index.apply(m.id.clone(), insertion);
                hits
            }
            None => {
                let hits = reader.search(&m.embedding, want + 1, self.ef)?;
                if let Some(index) = index {
                    index.put(&m.id, &m.embedding);
                }
                hits
            }
        };
        Ok(self.choose(m, hits))
    }
}

impl AutoLinker for Linking {
    fn link(
        &self,
        space: &SpaceId,
        reader: &dyn LinkReader,
        memories: &[Arc<Memory>],
        must: bool,
    ) -> Option<Vec<Vec<Link>>> {
        if self.max == 0 {
            return Some(vec![Vec::new(); memories.len()]);
        }
        let dim = memories.first()?.embedding.len();
        let index = match self.index(space, dim, || Ok(reader.embedding_snapshot())) {
            Ok(index) if index.is_ready() => Some(index),
            // Being built in the background: the linker comes back; a flush cannot wait.
            Ok(_) if !must => return None,
            Ok(index) => Some(index),
            Err(e) => {
                tracing::warn!(space = %space, error = %e, "no link index; linking through the store's search");
                None
            }
        };
        let mut out = Vec::with_capacity(memories.len());
        for m in memories {
            match self.link_one(index.as_deref(), reader, m) {
                Ok(links) => out.push(links),
                Err(e) => {
                    tracing::warn!(space = %space, memory = %m.id, error = %e, "automatic links not made");
                    if !must {
                        return None;
                    }
                    out.push(Vec::new());
                }
            }
        }
        if let Some(index) = &index {
            self.retire_if_worn(space, index);
        }
        Some(out)
    }
}

impl Engine {
    /// Links `m`, the member of a space's first write, to the members before it (nothing else
    /// is stored yet).
    pub(crate) fn link_within_batch(&self, m: &mut Memory, earlier: &[Memory]) {
        let hits = earlier
            .iter()
            .map(|e| Hit {
                id: e.id.clone(),
                similarity: simd::dot(&m.embedding, &e.embedding),
            })
            .collect();
        let links = self.linking.choose(m, hits);
        m.links.extend(links);
    }

    /// Makes sure `space` has a link index (made in the background for a large space), so the
    /// linker finds it ready.
    pub(crate) fn ensure_link_index(&self, space: &SpaceId, dim: usize) -> Result<()> {
        if self.linking.get(space).is_some_and(|i| !i.has_failed()) {
            return Ok(());
        }
        self.linking.index(space, dim, || {
            Ok(self.store.read_space(space, |st| st.embedding_snapshot())?)
        })?;
        Ok(())
    }

    /// Memories in `space`'s link index once it is built (`None` before it is first needed
    /// since the engine opened, and while the build runs).
    pub fn link_index_memories(&self, space: &SpaceId) -> Option<usize> {
        let index = self.linking.get(space)?;
        index.is_ready().then(|| index.len())
    }

    /// Records committed memories stored without pending links in the space's link index, if
    /// it has one (the linker records the others as it links them).
    pub(crate) fn indexed(&self, space: &SpaceId, memories: &[(MemoryId, Vec<f32>)]) {
        if memories.is_empty() {
            return;
        }
        if let Some(index) = self.linking.get(space) {
            for (id, v) in memories {
                index.put(id, v);
            }
            self.linking.retire_if_worn(space, &index);
        }
    }

    /// Makes the automatic links still owed in `space` now, on this thread (the store's
    /// linker does it in the background). Returns how many memories were linked.
    pub fn link_pending(&self, space: &SpaceId) -> Result<usize> {
        Ok(self.store.link_pending(space)?)
    }

    /// Memories of `space` whose automatic links are still to be made.
    pub fn pending_links(&self, space: &SpaceId) -> Result<usize> {
        Ok(self.store.pending_links(space)?)
    }

    /// Whether `space` owes automatic links to as many memories as its memtable holds for the
    /// linker (`memtable_pending_max_rows`): a write asking for more waits until it owes fewer
    /// ([`Engine::remember_batch`] does; an async caller waits itself, as the server does), so
    /// sustained writes faster than the linker are slowed to its rate instead of growing the
    /// backlog without bound. Never without the background threads (nothing would link meanwhile).
    pub fn links_backlogged(&self, space: &SpaceId) -> bool {
        self.opts.store.background_compaction
            && self
                .store
                .pending_links(space)
                .is_ok_and(|n| n >= self.opts.store.memtable_pending_max_rows.max(1))
    }
}
