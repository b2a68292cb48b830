//! The store: the storage engine of one node and its public API. It opens the node (the
//! catalog of spaces, WAL recovery, the commit pipeline and the background workers) and
//! delegates: writes to the group commit ([`crate::wal::commit`]), space lookups to the
//! catalog ([`crate::catalog`]), reads to the space ([`crate::space`]), background work to
//! [`crate::compaction`]. The commit protocol and crash analysis are in `docs/format.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use engram_core::{Memory, MemoryId, SpaceId};
use parking_lot::{Condvar, Mutex};

use crate::catalog::Catalog;
use crate::compaction::{indexer, merge, worker};
use crate::disk::{Disk, RealDisk};
use crate::error::{IoContext, Result, StorageError};
use crate::meta::SpaceMeta;
use crate::node::Node;
use crate::op::Op;
use crate::options::StoreOptions;
use crate::quarantine::Quarantine;
use crate::recovery::{self, RecoveryReport};
use crate::space::{Hit, LexHit, SpaceView};
use crate::stats::{SpaceStatus, StoreStats, StoreStatus};
use crate::wal::commit::{Commit, GroupCommit};
use crate::wal::WalWriter;

pub(crate) mod auto_links;
pub(crate) mod keyed;
pub(crate) mod raft;
pub(crate) mod replicated;

/// The storage engine of one node.
pub struct Store {
    inner: Arc<Node>,
    compactor: Mutex<Option<JoinHandle<()>>>,
    indexer: Mutex<Option<JoinHandle<()>>>,
    /// The thread making automatic links ([`Store::set_auto_linker`]).
    linker: Mutex<Option<JoinHandle<()>>>,
    /// The commit pipeline's threads.
    committer: Mutex<Option<JoinHandle<()>>>,
    waker: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the store in `root` on the real file system.
    pub fn open_dir(root: &Path, opts: StoreOptions) -> Result<Store> {
        Self::open(Arc::new(RealDisk), root, opts)
    }

    /// Opens (or creates) the store in `root`: recovers the WAL and starts the compactor.
    pub fn open(disk: Arc<dyn Disk>, root: &Path, opts: StoreOptions) -> Result<Store> {
        Self::open_with_linker(disk, root, opts, None)
    }

    /// [`Store::open`] with the [`AutoLinker`](crate::AutoLinker) that makes the automatic
    /// links of memories stored with links pending (see [`Store::set_auto_linker`]), in place
    /// before any background work starts: what recovery brings back pending is linked by the
    /// linker thread or by a flush, never flushed without its links.
    pub fn open_with_linker(
        disk: Arc<dyn Disk>,
        root: &Path,
        opts: StoreOptions,
        linker: Option<Arc<dyn crate::AutoLinker>>,
    ) -> Result<Store> {
        opts.validate().map_err(StorageError::Invalid)?;
        let started = Instant::now();
        let wal_dir = root.join("wal");
        let spaces_dir = root.join("spaces");
        for d in [root, &wal_dir, &spaces_dir] {
            disk.create_dir_all(d).at(d)?;
        }
        let quarantine = Arc::new(Quarantine::new(disk.clone(), root.join("quarantine")));
        let stats = Arc::new(StoreStats::default());
        // The set of spaces is their directories; nothing is opened yet.
        let catalog = Catalog::open(disk.clone(), root, quarantine.clone(), stats.clone())?;
        let quarantined_before = quarantine.reports().len();
        let recovered = recovery::scan_wal(&*disk, &wal_dir, &opts, &quarantine)?;
        let wal = Arc::new(GroupCommit::new(
            opts.max_record_bytes,
            opts.max_pending_bytes,
            stats.clone(),
            opts.clock.clone(),
            opts.inline_commit,
        ));
        let inner = Arc::new(Node {
            disk: disk.clone(),
            root: root.to_path_buf(),
            spaces_dir,
            opts,
            wal,
            catalog,
            pending_drops: Mutex::new(Vec::new()),
            compaction: Mutex::new(()),
            index_failures: Mutex::new(HashMap::new()),
            quarantine,
            stats,
            shutdown: Mutex::new(false),
            shutdown_cv: Condvar::new(),
            recovery: Mutex::new(RecoveryReport::default()),
            auto_linker: parking_lot::RwLock::new(linker.clone()),
            link_work: Mutex::new(Default::default()),
            link_cv: Condvar::new(),
            raft: raft::RaftHold::new(),
            quiet_at: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        // Replay in sequence order.
        let mut report = recovered.report;
        let last_seq = recovery::replay(recovered.records, &mut report, |seq, space, op| {
            inner.apply(seq, space, op, true)
        })?;
        let lost =
            report.torn_tail_bytes > 0 || inner.quarantine.reports().len() > quarantined_before;
        let (next_seq, floor_raised) = recovery::next_sequence(
            &*inner.disk,
            &inner.spaces_dir,
            last_seq,
            recovered.next_seq_floor,
            lost,
        )?;
        let mut writer = WalWriter::open(
            disk,
            &wal_dir,
            recovered.files,
            next_seq,
            inner.opts.wal_segment_bytes,
            inner.opts.wal_preallocate,
        )?;
        if floor_raised && writer.current_first_sequence() < next_seq {
            // Make the raised floor durable: a new file whose header names it, so the next
            // open starts from it even if nothing is written before then.
            writer.roll(next_seq)?;
        }
        inner.wal.resume(next_seq, writer);
        report.quarantined = inner.quarantine.reports().len();
        report.elapsed = started.elapsed();
        tracing::info!(
            wal_files = report.wal_files,
            wal_bytes = report.wal_bytes,
            replayed = report.records_replayed,
            skipped = report.records_skipped,
            torn_tail_bytes = report.torn_tail_bytes,
            quarantined = report.quarantined,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "store recovered"
        );
        *inner.recovery.lock() = report;
        let node = inner.clone();
        let apply = Arc::new(move |batch| node.apply_batch(batch));
        let (committer, waker) = inner
            .wal
            .start_pipeline(apply, inner.opts.committer_nice)
            .map_err(|e| StorageError::Io {
                path: root.to_path_buf(),
                source: e,
            })?
            .unzip();
        let store = Store {
            inner,
            compactor: Mutex::new(None),
            indexer: Mutex::new(None),
            linker: Mutex::new(None),
            committer: Mutex::new(committer),
            waker: Mutex::new(waker),
        };
        if store.inner.opts.background_compaction {
            // On failure `store` is dropped here, which stops the commit pipeline.
            let handle = worker::spawn(store.inner.clone()).map_err(|e| StorageError::Io {
                path: root.to_path_buf(),
                source: e,
            })?;
            *store.compactor.lock() = Some(handle);
            let handle = indexer::spawn(store.inner.clone()).map_err(|e| StorageError::Io {
                path: root.to_path_buf(),
                source: e,
            })?;
            *store.indexer.lock() = Some(handle);
            if let Some(linker) = linker {
                store.spawn_linker(linker)?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The disk the store runs on (the replication layer keeps its snapshots there too).
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.inner.disk
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Creates a space. Durable when this returns.
    pub fn create_space(&self, id: &SpaceId, dimension: u32) -> Result<u64> {
        self.create_space_with_embedder(id, dimension, "")
    }

    /// Creates a space whose text embedder is `embedder` (a name the engine gives it; empty
    /// for the built-in hashing embedder), kept in the space's metadata.
    pub fn create_space_with_embedder(
        &self,
        id: &SpaceId,
        dimension: u32,
        embedder: &str,
    ) -> Result<u64> {
        self.create_space_keyed(id, dimension, embedder, None)
    }

    /// Creates a space together with its first write, in one group commit: the space and
    /// its memories are durable together when this returns. Everything is checked before
    /// anything is written, so a refused write leaves no space, no memory and no WAL record.
    /// `SpaceExists` if the space exists (nothing written). One memory is written as a
    /// `Remember` record, several as one `RememberBatch`.
    pub fn create_space_with_batch(
        &self,
        id: &SpaceId,
        dimension: u32,
        embedder: &str,
        memories: Vec<Memory>,
    ) -> Result<u64> {
        self.create_space_with_batch_keyed(id, dimension, embedder, memories, None)
    }

    /// Drops a space and all its memories. Durable when this returns; its files are removed by
    /// the compactor.
    pub fn drop_space(&self, id: &SpaceId) -> Result<u64> {
        let _busy = self.inner.catalog.claim_id(id);
        if self.inner.catalog.space(id)?.is_none() {
            return Err(StorageError::SpaceNotFound(id.to_string()));
        }
        self.inner.wal.submit(id, Op::SpaceDrop)
    }

    pub fn space_exists(&self, id: &SpaceId) -> Result<bool> {
        Ok(self.inner.catalog.space(id)?.is_some())
    }

    /// Every space's id, sorted.
    pub fn list_spaces(&self) -> Vec<SpaceId> {
        self.inner.catalog.ids()
    }

    pub fn space_meta(&self, id: &SpaceId) -> Result<SpaceMeta> {
        Ok(self.inner.catalog.require(id)?.meta.clone())
    }

    /// Stores (or replaces) one memory. Durable when this returns.
    pub fn remember(&self, space: &SpaceId, memory: Memory) -> Result<u64> {
        let s = self.inner.catalog.require(space)?;
        let dim = s.meta.dimension as usize;
        memory
            .validate(dim)
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        let seq = self.inner.wal.submit(space, Op::Remember(memory))?;
        drop(s);
        Ok(seq)
    }

    /// Like [`Store::remember`], for async callers: validates and queues the record now; the
    /// returned future resolves once it is durable and applied.
    pub fn remember_async(&self, space: &SpaceId, memory: Memory) -> Result<Commit> {
        let s = self.inner.catalog.require(space)?;
        memory
            .validate(s.meta.dimension as usize)
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        self.submit_async(space, Op::Remember(memory))
    }

    /// Like [`Store::remember_batch`], for async callers.
    pub fn remember_batch_async(&self, space: &SpaceId, memories: Vec<Memory>) -> Result<Commit> {
        self.remember_batch_keyed_async(space, memories, None)
    }

    fn submit_async(&self, space: &SpaceId, op: Op) -> Result<Commit> {
        self.inner.wal.submit_async(space, op)
    }

    fn check_batch(&self, space: &SpaceId, memories: &[Memory]) -> Result<()> {
        let dim = self.inner.catalog.require(space)?.meta.dimension as usize;
        check_memories(dim, memories)
    }

    /// Stores several memories, all or nothing (one WAL record). At most
    /// [`MAX_BATCH`](engram_core::limits::MAX_BATCH) of them: the caller checks that (a larger
    /// batch panics).
    pub fn remember_batch(&self, space: &SpaceId, memories: Vec<Memory>) -> Result<u64> {
        self.check_batch(space, &memories)?;
        self.inner.wal.submit(space, Op::RememberBatch(memories))
    }

    /// Deletes a memory. `Ok(false)` if it was not there (nothing written).
    pub fn forget(&self, space: &SpaceId, id: &MemoryId) -> Result<bool> {
        self.forget_keyed(space, id, None)
    }

    /// Adds (or reweights) the link `from -> to`; both must exist. Weight in `(0, 1]`.
    pub fn link(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        weight: f32,
    ) -> Result<u64> {
        self.link_keyed(space, from, to, weight, None)
    }

    /// Removes the link `from -> to`.
    pub fn unlink(&self, space: &SpaceId, from: &MemoryId, to: &MemoryId) -> Result<u64> {
        self.unlink_keyed(space, from, to, None)
    }

    /// The newest version of a memory.
    pub fn get(&self, space: &SpaceId, id: &str) -> Result<Option<Memory>> {
        self.inner.catalog.require(space)?.state.read().get(id)
    }

    /// Calls `f` with every live memory of the space, in no particular order.
    pub fn for_each(&self, space: &SpaceId, f: impl FnMut(Memory)) -> Result<()> {
        self.inner.catalog.require(space)?.state.read().for_each(f)
    }

    /// The `k` live memories of `space` with the highest BM25 score for `text` (scoring in
    /// `lexical.rs`; at most [`MAX_QUERY_TERMS`](crate::MAX_QUERY_TERMS) of its distinct terms
    /// count), best first.
    pub fn lexical_search(&self, space: &SpaceId, text: &str, k: usize) -> Result<Vec<LexHit>> {
        let s = self.inner.catalog.require(space)?;
        let terms = crate::lexical::query_terms(text);
        let st = s.state.read();
        st.lexical_search(&terms, k)
    }

    /// The `k` live memories of `space` most similar to `query` (unit length, the space's
    /// dimension), best first. `ef` is the HNSW beam width of a space held in one indexed
    /// segment (at least `k` is used); with several, each segment's beam is `ef` scaled by the
    /// square root of its share of the indexed rows (at least `k`).
    pub fn search(&self, space: &SpaceId, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        let s = self.inner.catalog.require(space)?;
        let dim = s.meta.dimension as usize;
        if query.len() != dim {
            return Err(StorageError::Invalid(format!(
                "query has {} dimensions, the space has {dim}",
                query.len()
            )));
        }
        let st = s.state.read();
        st.search(query, k, ef)
    }

    /// Segments of the loaded spaces that are due an index and have none yet (the indexer's
    /// backlog).
    pub fn pending_index_builds(&self) -> usize {
        self.inner
            .catalog
            .loaded_spaces()
            .iter()
            .map(|s| {
                s.state
                    .read()
                    .segments
                    .iter()
                    .filter(|g| g.rows() >= self.inner.opts.index_min_rows && g.index().is_none())
                    .count()
            })
            .sum()
    }

    /// The ids of the spaces loaded now (opening none).
    pub fn loaded_space_ids(&self) -> Vec<SpaceId> {
        let mut ids: Vec<SpaceId> = self
            .inner
            .catalog
            .loaded_spaces()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Builds every missing HNSW index of the loaded spaces now (the background indexer does
    /// the same a segment at a time). Returns how many were built.
    pub fn build_indexes(&self) -> Result<usize> {
        let mut built = 0;
        while self.inner.build_one_index(false, &mut HashMap::new())? {
            built += 1;
        }
        Ok(built)
    }

    /// Runs `f` on a view of the space under its read lock (how the engine reads a space).
    pub fn read_space<R>(&self, space: &SpaceId, f: impl FnOnce(&SpaceView<'_>) -> R) -> Result<R> {
        Ok(f(&SpaceView::new(
            &self.inner.catalog.require(space)?.state.read(),
        )))
    }

    pub fn space_status(&self, id: &SpaceId) -> Result<SpaceStatus> {
        let s = self.inner.catalog.require(id)?;
        let durable_seq = self.inner.wal.durable_seq();
        let st = s.state.read();
        Ok(SpaceStatus {
            id: id.clone(),
            dimension: s.meta.dimension,
            created_at_us: s.meta.created_at_us,
            memories: st.count()?,
            segments: st.segments.len(),
            segment_rows: st.segments.iter().map(|s| s.rows()).sum(),
            segment_bytes: st.segment_bytes(),
            memtable_entries: st.active.entries.len()
                + st.frozen.as_ref().map_or(0, |f| f.entries.len()),
            memtable_bytes: st.active.bytes + st.frozen.as_ref().map_or(0, |f| f.bytes),
            pending_links: st.active.pending_count()
                + st.frozen.as_ref().map_or(0, |f| f.pending_count()),
            flushed_seq: st.flushed_seq,
            durable_seq,
            quarantined_records: self.inner.quarantine.count_for_space(id.as_str()),
        })
    }

    pub fn status(&self) -> StoreStatus {
        let written_seq = self.inner.wal.written_seq();
        let durable_seq = self.inner.wal.durable_seq();
        let latched = self.inner.wal.latched();
        let (wal_files, wal_bytes) = self
            .inner
            .wal
            .writer()
            .as_ref()
            .map_or((0, 0), |w| (w.file_count(), w.total_bytes()));
        let (spaces, spaces_loaded) = self.inner.catalog.counts();
        StoreStatus {
            written_seq,
            durable_seq,
            wal_files,
            wal_bytes,
            spaces,
            spaces_loaded,
            latched,
            quarantined: self.inner.quarantine.reports(),
            recovery: self.inner.recovery.lock().clone(),
        }
    }

    /// Flushes every memtable to segments, merges where due, checkpoints the WAL and releases
    /// idle spaces: what the background compactor does, now.
    pub fn compact(&self) -> Result<()> {
        self.inner.compact_pass(true)
    }

    /// Merges every space with more than one segment into one. A space whose background merge
    /// is in flight is merged once that one is done (without holding up flushes meanwhile).
    pub fn merge_all(&self) -> Result<()> {
        for space in self.inner.catalog.loaded_spaces() {
            let n = merge::merge_all(&*self.inner.disk, &self.inner.wal, &space)?;
            if n > 0 {
                self.inner.stats.merges.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .stats
                    .compaction_bytes
                    .fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Stops the compactor. Every acknowledged write is already durable; nothing else is
    /// needed to close.
    pub fn close(&self) {
        self.inner.wal.refuse_writes();
        *self.inner.shutdown.lock() = true;
        self.inner.shutdown_cv.notify_all();
        self.inner.wake_linker([]);
        // The linker stops after its round (its record is refused: the flush links instead).
        if let Some(h) = self.linker.lock().take() {
            let _ = h.join();
        }
        if let Some(h) = self.compactor.lock().take() {
            let _ = h.join();
        }
        // An index build in progress finishes first (it is not interruptible).
        if let Some(h) = self.indexer.lock().take() {
            let _ = h.join();
        }
        // The committer finishes every queued record (their writers are waiting), then stops.
        let committer = self.committer.lock().take();
        let waker = self.waker.lock().take();
        self.inner.wal.stop(committer, waker);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// The record that creates a space at `created_at_us`, its arguments checked.
pub(super) fn space_create(dimension: u32, embedder: &str, created_at_us: i64) -> Result<Op> {
    if embedder.len() > crate::meta::MAX_EMBEDDER_NAME {
        return Err(StorageError::Invalid(format!(
            "an embedder name of {} bytes (at most {})",
            embedder.len(),
            crate::meta::MAX_EMBEDDER_NAME
        )));
    }
    if dimension == 0 || dimension as usize > engram_core::limits::MAX_DIMENSION {
        return Err(StorageError::Invalid(format!(
            "dimension {dimension} is outside 1..={}",
            engram_core::limits::MAX_DIMENSION
        )));
    }
    Ok(Op::SpaceCreate {
        dimension,
        created_at_us,
        embedder: embedder.to_string(),
    })
}

/// Each memory of a batch checked against a space of `dim` dimensions. The batch limit is
/// checked where a request enters (the engine's batch API, the HTTP route); asserted here, in
/// release builds too: a larger batch would be a WAL record that replay refuses as corrupted.
pub(super) fn check_memories(dim: usize, memories: &[Memory]) -> Result<()> {
    assert!(
        memories.len() <= engram_core::limits::MAX_BATCH,
        "batch of {} memories exceeds the limit of {}",
        memories.len(),
        engram_core::limits::MAX_BATCH
    );
    for (i, m) in memories.iter().enumerate() {
        m.validate(dim)
            .map_err(|e| StorageError::Invalid(format!("memory {i}: {e}")))?;
    }
    Ok(())
}
