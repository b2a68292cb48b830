//! The catalog: the spaces known to this node and which of them are open. The set of spaces
//! is their directories under `spaces/`; a space is opened (its segments mapped) lazily on
//! first use, and clean idle spaces are released again, least recently used first, beyond
//! `max_open_spaces`. A creation or drop claims its id, so that each id's existence check and
//! record are serialised while different ids share group commits.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engram_core::SpaceId;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::disk::Disk;
use crate::error::{IoContext, Result, StorageError};
use crate::numa::{NumaPlacer, NumaTopology};
use crate::quarantine::Quarantine;
use crate::space::{space_dir, Space};
use crate::stats::StoreStats;

/// Where a known space is.
#[derive(Clone)]
enum Slot {
    /// On disk, not opened: nothing mapped, no handle.
    OnDisk,
    Loaded(Arc<Space>),
}

/// The spaces of this node.
pub(crate) struct Catalog {
    disk: Arc<dyn Disk>,
    root: PathBuf,
    spaces_dir: PathBuf,
    spaces: RwLock<HashMap<SpaceId, Slot>>,
    /// Ids with a creation or drop in flight.
    claims: Mutex<HashSet<SpaceId>>,
    claims_cv: Condvar,
    /// Logical time, for the LRU of open spaces.
    clock: AtomicU64,
    numa: NumaPlacer,
    quarantine: Arc<Quarantine>,
    stats: Arc<StoreStats>,
}

/// Releases a claimed space id on drop.
pub(crate) struct IdClaim<'a> {
    catalog: &'a Catalog,
    id: SpaceId,
}

impl Drop for IdClaim<'_> {
    fn drop(&mut self) {
        self.catalog.claims.lock().remove(&self.id);
        self.catalog.claims_cv.notify_all();
    }
}

impl Catalog {
    /// The spaces whose directories are in `root/spaces`; nothing is opened yet.
    pub(crate) fn open(
        disk: Arc<dyn Disk>,
        root: &Path,
        quarantine: Arc<Quarantine>,
        stats: Arc<StoreStats>,
    ) -> Result<Self> {
        let spaces_dir = root.join("spaces");
        let topology = NumaTopology::detect().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read the NUMA topology; assuming one node");
            NumaTopology::read_from(Path::new("/nonexistent")).unwrap_or_else(|_| unreachable!())
        });
        crate::store::replicated::finish_installs(&*disk, &spaces_dir)?;
        let mut spaces = HashMap::new();
        for name in disk.list_dir(&spaces_dir).at(&spaces_dir)? {
            match SpaceId::new(name.clone()) {
                Ok(id) => {
                    spaces.insert(id, Slot::OnDisk);
                }
                Err(_) => {
                    tracing::warn!(name, "ignoring an entry of spaces/ that is not a space id")
                }
            }
        }
        Ok(Self {
            disk,
            root: root.to_path_buf(),
            spaces_dir,
            spaces: RwLock::new(spaces),
            claims: Mutex::new(HashSet::new()),
            claims_cv: Condvar::new(),
            clock: AtomicU64::new(0),
            numa: NumaPlacer::new(topology),
            quarantine,
            stats,
        })
    }

    /// Waits until no creation or drop of `id` is in flight, then claims it.
    pub(crate) fn claim_id(&self, id: &SpaceId) -> IdClaim<'_> {
        let mut busy = self.claims.lock();
        while busy.contains(id) {
            self.claims_cv.wait(&mut busy);
        }
        busy.insert(id.clone());
        IdClaim {
            catalog: self,
            id: id.clone(),
        }
    }

    /// The space, loading it from disk if needed; `None` if it does not exist.
    pub(crate) fn space(&self, id: &SpaceId) -> Result<Option<Arc<Space>>> {
        let clock = self.clock.fetch_add(1, Ordering::Relaxed);
        {
            let map = self.spaces.read();
            match map.get(id) {
                None => return Ok(None),
                Some(Slot::Loaded(s)) => {
                    s.touch(clock);
                    return Ok(Some(s.clone()));
                }
                Some(Slot::OnDisk) => {}
            }
        }
        let mut map = self.spaces.write();
        match map.get(id) {
            None => Ok(None),
            Some(Slot::Loaded(s)) => Ok(Some(s.clone())),
            Some(Slot::OnDisk) => {
                let dir = space_dir(&self.root, id);
                let q = &self.quarantine;
                let loaded = Space::load(&*self.disk, id.clone(), dir, &mut |path, err| {
                    q.quarantine_file(path, &err.to_string())
                })?;
                match loaded {
                    Some(space) => {
                        let indexes = space
                            .state
                            .read()
                            .segments
                            .iter()
                            .filter(|s| s.index().is_some())
                            .count();
                        self.stats
                            .index_loads
                            .fetch_add(indexes as u64, Ordering::Relaxed);
                        self.place(&space);
                        space.touch(clock);
                        let space = Arc::new(space);
                        map.insert(id.clone(), Slot::Loaded(space.clone()));
                        self.stats.spaces_loaded.fetch_add(1, Ordering::Relaxed);
                        // The compactor may have spaces to release again.
                        self.stats.activity.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(space))
                    }
                    None if self
                        .disk
                        .exists(&space_dir(&self.root, id).join(crate::raft::RAFT_STATE_FILE)) =>
                    {
                        // A raft group whose space is not created yet keeps its applied
                        // state here: not a space, but not to be removed.
                        map.remove(id);
                        Ok(None)
                    }
                    None => {
                        // A directory without space.meta holds no segment (a flush writes the
                        // meta first; a drop removes it last): a creation that never reached a
                        // flush, or a removal cut short. Its records, if any, are in the WAL.
                        let dir = space_dir(&self.root, id);
                        tracing::info!(dir = %dir.display(), "clearing a space directory without space.meta");
                        self.disk.remove_dir_all(&dir).at(&dir)?;
                        self.disk.sync_dir(&self.spaces_dir).at(&self.spaces_dir)?;
                        map.remove(id);
                        Ok(None)
                    }
                }
            }
        }
    }

    pub(crate) fn require(&self, id: &SpaceId) -> Result<Arc<Space>> {
        self.space(id)?
            .ok_or_else(|| StorageError::SpaceNotFound(id.to_string()))
    }

    /// NUMA: on a machine with several nodes, prefer the space's node for its mapped pages.
    fn place(&self, space: &Space) {
        if let Some(node) = self.numa.node_for_space(space.id.as_str()) {
            for seg in &space.state.read().segments {
                if let Err(e) = self.numa.bind_memory(node, seg.mapped()) {
                    tracing::debug!(error = %e, "NUMA placement of a segment failed");
                }
            }
        }
    }

    pub(crate) fn loaded_spaces(&self) -> Vec<Arc<Space>> {
        self.spaces
            .read()
            .values()
            .filter_map(|s| match s {
                Slot::Loaded(s) => Some(s.clone()),
                Slot::OnDisk => None,
            })
            .collect()
    }

    /// Every space's id, sorted.
    pub(crate) fn ids(&self) -> Vec<SpaceId> {
        let mut ids: Vec<SpaceId> = self.spaces.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many spaces are known, and how many of them are open.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let spaces = self.spaces.read();
        let loaded = spaces
            .values()
            .filter(|s| matches!(s, Slot::Loaded(_)))
            .count();
        (spaces.len(), loaded)
    }

    /// Adds a space just created by a record (open, with nothing on disk yet).
    pub(crate) fn insert_new(&self, space: Space) {
        space.touch(self.clock.fetch_add(1, Ordering::Relaxed));
        self.spaces
            .write()
            .insert(space.id.clone(), Slot::Loaded(Arc::new(space)));
    }

    /// Adds a space whose directory was just put in place (a snapshot installed): loaded on
    /// first use, as at open.
    pub(crate) fn insert_on_disk(&self, id: &SpaceId) {
        self.spaces.write().insert(id.clone(), Slot::OnDisk);
    }

    /// Forgets a dropped space.
    pub(crate) fn remove(&self, id: &SpaceId) {
        self.spaces.write().remove(id);
    }

    /// Releases clean spaces beyond the open-space limit, least recently used first.
    pub(crate) fn release_idle(&self, max: usize) {
        let mut map = self.spaces.write();
        let loaded = map
            .values()
            .filter(|s| matches!(s, Slot::Loaded(_)))
            .count();
        if loaded <= max {
            return;
        }
        let mut candidates: Vec<(u64, SpaceId)> = map
            .iter()
            .filter_map(|(id, s)| match s {
                // Only the map holds it: nobody is reading or applying to it.
                Slot::Loaded(sp) if Arc::strong_count(sp) == 1 => {
                    let st = sp.state.read();
                    (st.active.is_clean() && st.frozen.is_none() && st.meta_persisted)
                        .then(|| (sp.last_used.load(Ordering::Relaxed), id.clone()))
                }
                _ => None,
            })
            .collect();
        candidates.sort_unstable();
        for (_, id) in candidates.into_iter().take(loaded - max) {
            map.insert(id, Slot::OnDisk);
            self.stats.spaces_released.fetch_add(1, Ordering::Relaxed);
        }
    }
}
