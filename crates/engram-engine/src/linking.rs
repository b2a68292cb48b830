//! Automatic links and the per-space link index behind them ([`crate::link_index`]): made
//! on the first write that asks for automatic links, fed by every committed write, retired
//! when replaced and forgotten memories outnumber the live ones.

use std::sync::Arc;

use engram_core::{limits, simd, Link, Memory, MemoryId, SpaceId};
use engram_storage::Hit;

use crate::link_index::{self, LinkIndex};
use crate::{Engine, Result};

/// A space with at most this many rows has its link index built by the write that needs it;
/// a larger one in the background (writes meanwhile use the store's search).
const INLINE_LINK_INDEX_ROWS: usize = 1_000;

impl Engine {
    /// Adds `m`'s automatic links. The candidates come from the space's link index, through
    /// the search that also plans `m`'s insertion into it (returned); while the index is
    /// being built, from the store's search.
    pub(crate) fn auto_link(
        &self,
        space: &SpaceId,
        new_space: bool,
        m: &mut Memory,
        earlier: &[Memory],
    ) -> Result<Option<Planned>> {
        let want = self.opts.auto_link_max;
        let mut planned = None;
        let mut hits = if new_space {
            // Nothing is stored yet: only the batch's earlier members.
            Vec::new()
        } else if let Some((index, (ins, candidates))) = {
            let index = self.link_index(space)?;
            index.plan(&m.embedding, want + 3).map(|p| (index, p))
        } {
            planned = Some(Planned {
                index: index.clone(),
                insertion: ins,
            });
            // A few more candidates than wanted, scored exactly against what is stored (the
            // index's similarities are approximate, and it may hold a version replaced or
            // deleted since).
            let q = &m.embedding;
            self.store.read_space(space, |st| {
                let mut hits = Vec::with_capacity(candidates.len());
                for (id, _) in candidates {
                    if let Some(similarity) = st.similarity(id.as_str(), q)? {
                        hits.push(Hit { id, similarity });
                    }
                }
                Ok::<_, engram_storage::StorageError>(hits)
            })??
        } else {
            self.store
                .search(space, &m.embedding, want + 1, self.opts.auto_link_ef)?
        };
        // A stored version replaced by an earlier member of the batch is not linked to.
        hits.retain(|h| !earlier.iter().any(|e| e.id == h.id));
        for e in earlier {
            let similarity = simd::dot(&m.embedding, &e.embedding);
            if similarity >= self.opts.auto_link_threshold {
                hits.push(Hit {
                    id: e.id.clone(),
                    similarity,
                });
            }
        }
        hits.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut added = 0;
        for h in hits {
            if added == want || h.similarity < self.opts.auto_link_threshold {
                break;
            }
            if h.id == m.id || m.links.iter().any(|l| l.to == h.id) {
                continue;
            }
            if m.links.len() >= limits::MAX_LINKS {
                break;
            }
            m.links.push(Link {
                to: h.id,
                weight: Link::weight_from_similarity(h.similarity),
            });
            added += 1;
        }
        Ok(planned)
    }

    /// The link index of `space`, made (registered, then filled from a snapshot of the space)
    /// on first use. Every write committed after the registration reaches it through
    /// [`Engine::indexed`] (into its backlog while it is built), and the snapshot is taken
    /// after the registration, so nothing committed is missed.
    fn link_index(&self, space: &SpaceId) -> Result<Arc<LinkIndex>> {
        {
            let mut map = self.link_indexes.lock();
            match map.get(space) {
                Some(index) if !index.has_failed() => return Ok(index.clone()),
                Some(_) => {
                    map.remove(space);
                }
                None => {}
            }
        }
        let dim = self.dimension(space)?;
        let index = {
            let mut map = self.link_indexes.lock();
            if let Some(index) = map.get(space) {
                return Ok(index.clone());
            }
            let index = Arc::new(LinkIndex::new(
                dim,
                self.opts.link_index_m,
                self.opts.link_index_ef_construction,
            ));
            map.insert(space.clone(), index.clone());
            index
        };
        // Cheap under the space's lock: entries and segment handles are shared, and read
        // by the build without the lock.
        let snapshot = match self.store.read_space(space, |st| st.embedding_snapshot()) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.forget_link_index(space, &index);
                return Err(e.into());
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
                // Not fatal: this write uses the store's search, the next one tries again.
                tracing::warn!(space = %space, error = %e, "could not start a link index build");
                self.forget_link_index(space, &index);
            }
        }
        Ok(index)
    }

    /// Removes `index` from the map if it is still the one registered for `space`.
    fn forget_link_index(&self, space: &SpaceId, index: &Arc<LinkIndex>) {
        let mut map = self.link_indexes.lock();
        if map.get(space).is_some_and(|i| Arc::ptr_eq(i, index)) {
            map.remove(space);
        }
    }

    /// Memories in `space`'s link index once it is built (`None` before the first write
    /// asking for automatic links since the engine opened, and while the build runs).
    pub fn link_index_memories(&self, space: &SpaceId) -> Option<usize> {
        let index = self.link_indexes.lock().get(space).cloned()?;
        index.is_ready().then(|| index.len())
    }

    /// Records committed memories in the space's link index, if it has one: as planned while
    /// auto-linking them, else with a search of their own.
    pub(crate) fn indexed(
        &self,
        space: &SpaceId,
        memories: impl IntoIterator<Item = (MemoryId, Vec<f32>)>,
        plans: Vec<Option<Planned>>,
    ) {
        let index = self.link_indexes.lock().get(space).cloned();
        for ((id, v), plan) in memories.into_iter().zip(plans) {
            match (plan, &index) {
                // Planned on the index registered now: as planned.
                (Some(p), Some(index)) if Arc::ptr_eq(&p.index, index) => {
                    index.apply(id, p.insertion)
                }
                // Planned on one retired since (or none planned): a search of its own.
                (_, Some(index)) => index.put(&id, &v),
                (_, None) => {}
            }
        }
        if let Some(index) = index {
            self.retire_if_worn(space, &index);
        }
    }

    /// Drops a link index whose dead rows outnumber its live ones; the next write asking for
    /// automatic links makes a fresh one from the space.
    pub(crate) fn retire_if_worn(&self, space: &SpaceId, index: &Arc<LinkIndex>) {
        if index.wants_rebuild() {
            tracing::info!(space = %space, "the link index holds more replaced and forgotten memories than live ones: making it again");
            self.forget_link_index(space, index);
        }
    }
}

/// A link index insertion planned for a memory about to be committed, with the index it was
/// planned on (its rows are that index's).
pub(crate) struct Planned {
    index: Arc<LinkIndex>,
    insertion: link_index::Insertion,
}
