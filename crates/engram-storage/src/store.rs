//! The node's store: every space on this node, one WAL with group commit, background
//! compaction, recovery. The commit protocol and crash analysis are in `docs/format.md`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engram_core::{Memory, MemoryId, SpaceId};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::disk::{Disk, DiskFile, RealDisk};
use crate::error::{IoContext, Result, StorageError};
use crate::meta::SpaceMeta;
use crate::numa::{NumaPlacer, NumaTopology};
use crate::op::Op;
use crate::options::StoreOptions;
use crate::quarantine::{Quarantine, QuarantineReport};
use crate::segment::WritePace;
use crate::space::{self, space_dir, Hit, Space, SpaceState};
use crate::wal::WalWriter;
use crate::wal::{encode_record, RECORD_HEADER_LEN};

/// Where a known space is.
#[derive(Clone)]
enum Slot {
    /// On disk, not opened: nothing mapped, no handle.
    OnDisk,
    Loaded(Arc<Space>),
}

/// A record waiting to be applied once durable.
struct Pending {
    seq: u64,
    space: SpaceId,
    op: Op,
}

/// How a writer learns its record's fate: the committer sets `state`, then wakes the writer
/// (a parked thread, or an async task's waker), never through the commit mutex.
struct Waiter {
    wake: Wake,
    /// `WAITING`, `DONE` or `FAILED`.
    state: std::sync::atomic::AtomicU8,
}

enum Wake {
    Thread(std::thread::Thread),
    Task(Mutex<Option<std::task::Waker>>),
}

impl Waiter {
    fn finish(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        match &self.wake {
            Wake::Thread(t) => t.unpark(),
            Wake::Task(w) => {
                if let Some(w) = w.lock().take() {
                    w.wake();
                }
            }
        }
    }
}

/// Resolves when a submitted record is durable and applied: the async form of a write, for
/// callers on an async runtime (no thread blocks while the group commit runs).
pub struct Commit {
    waiter: Arc<Waiter>,
    seq: u64,
    inner: Arc<Inner>,
}

impl std::future::Future for Commit {
    type Output = Result<u64>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<u64>> {
        let this = self.get_mut();
        if let Wake::Task(slot) = &this.waiter.wake {
            if this.waiter.state.load(Ordering::Acquire) == WAITING {
                *slot.lock() = Some(cx.waker().clone());
            }
        }
        // Checked after the waker is stored: `Waiter::finish` sets the state before taking it.
        match this.waiter.state.load(Ordering::Acquire) {
            WAITING => std::task::Poll::Pending,
            DONE => std::task::Poll::Ready(Ok(this.seq)),
            _ => {
                let why = this.inner.commit.lock().failed.clone().unwrap_or_default();
                std::task::Poll::Ready(Err(StorageError::Latched(why)))
            }
        }
    }
}

/// The committer's own handle on the current WAL file, for syncing outside the writer's lock.
struct SyncHandle {
    /// The writer's generation (roll count) the handle belongs to.
    generation: u64,
    file: Box<dyn DiskFile>,
    /// Synced bytes before this offset have been dropped from the page cache.
    uncached_to: u64,
}

/// Synced WAL data is dropped from the page cache in whole multiples of this.
const CACHE_DROP_GRAIN: u64 = 64 << 10;

/// A batch the committer made durable (or failed to).
struct DurableBatch {
    batch: Vec<Pending>,
    waiters: Vec<Arc<Waiter>>,
    result: Result<()>,
}

/// Writers to wake, with their records' fate.
type WakeList = (Vec<Arc<Waiter>>, u8);

const WAITING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

struct CommitState {
    /// Encoded records of the next group commit.
    buf: Vec<u8>,
    pending: Vec<Pending>,
    waiters: Vec<Arc<Waiter>>,
    next_seq: u64,
    /// The committer is waiting for records.
    committer_idle: bool,
    /// Set by `close`: the committer drains what is queued and stops.
    stopping: bool,
    /// Every record up to here is durable and applied to its space.
    applied_seq: u64,
    /// Set by a failed write, fsync or apply: the WAL refuses writes until reopened.
    failed: Option<String>,
}

/// The node's rate of changes over about the last second, sampled once a tick: the load
/// measure of the merge and index deferrals. The window is a second, not a tick, so that one
/// slow fsync (no change for a few ticks) does not read as an idle node.
#[derive(Default)]
struct LoadMeter {
    samples: std::collections::VecDeque<(u64, Instant)>,
}

impl LoadMeter {
    /// Records the change counter now; returns changes per second since the oldest sample of
    /// the window (0 at the first call).
    fn rate(&mut self, changes: u64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((changes, now));
        while self.samples.len() > 2
            && now.duration_since(self.samples[1].1) >= Duration::from_secs(1)
        {
            self.samples.pop_front();
        }
        let (c0, t0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        changes.saturating_sub(c0) as f64 / dt
    }
}

/// Counters, readable without locks.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub records: AtomicU64,
    /// Changes submitted (a batch counts each memory it carries): the load measure behind
    /// the index and merge deferrals.
    pub changes: AtomicU64,
    pub group_commits: AtomicU64,
    pub wal_bytes_written: AtomicU64,
    pub fsync_micros_total: AtomicU64,
    /// The slowest fsync so far, and how many took over 2 ms.
    pub fsync_micros_max: AtomicU64,
    pub fsyncs_over_2ms: AtomicU64,
    pub flushes: AtomicU64,
    pub merges: AtomicU64,
    pub compaction_bytes: AtomicU64,
    pub spaces_loaded: AtomicU64,
    pub spaces_released: AtomicU64,
    /// HNSW indexes built (after flushes and merges, or for a segment found without one).
    pub index_builds: AtomicU64,
    /// HNSW indexes opened from their files when a space was loaded (not rebuilt).
    pub index_loads: AtomicU64,
}

/// What recovery did when the store was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub wal_files: usize,
    pub wal_bytes: u64,
    pub records_replayed: u64,
    pub records_skipped: u64,
    pub torn_tail_bytes: u64,
    pub quarantined: usize,
    pub elapsed: Duration,
}

/// A space's figures.
#[derive(Debug, Clone)]
pub struct SpaceStatus {
    pub id: SpaceId,
    pub dimension: u32,
    pub created_at_us: i64,
    pub memories: usize,
    pub segments: usize,
    pub segment_rows: usize,
    pub segment_bytes: u64,
    pub memtable_entries: usize,
    pub memtable_bytes: usize,
    pub flushed_seq: u64,
    pub durable_seq: u64,
    pub quarantined_records: usize,
}

/// The node's figures.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    pub written_seq: u64,
    pub durable_seq: u64,
    pub wal_files: usize,
    pub wal_bytes: u64,
    pub spaces: usize,
    pub spaces_loaded: usize,
    pub latched: Option<String>,
    pub quarantined: Vec<QuarantineReport>,
    pub recovery: RecoveryReport,
}

struct Inner {
    disk: Arc<dyn Disk>,
    root: PathBuf,
    spaces_dir: PathBuf,
    opts: StoreOptions,
    commit: Mutex<CommitState>,
    /// The committer waits here for records.
    committer_cv: Condvar,
    /// Writers waiting for room in a full batch (back-pressure).
    room_cv: Condvar,
    written_seq: AtomicU64,
    durable_seq: AtomicU64,
    /// Wakes writers of finished batches, in order, off the committer: waking dozens of
    /// parked threads costs a syscall each, which would otherwise delay the next batch.
    waker: Mutex<Option<std::sync::mpsc::Sender<WakeList>>>,
    /// `None` until recovery has read the existing WAL files.
    writer: Mutex<Option<WalWriter>>,
    spaces: RwLock<HashMap<SpaceId, Slot>>,
    /// Ids with a creation or drop in flight: each id's existence check and record are
    /// serialised, while different ids share group commits.
    catalog: Mutex<HashSet<SpaceId>>,
    catalog_cv: Condvar,
    clock: AtomicU64,
    /// Dropped spaces whose directories are still to be removed, with the drop's sequence.
    pending_drops: Mutex<Vec<(u64, Arc<Space>)>>,
    /// One compaction pass at a time.
    compaction: Mutex<()>,
    /// Segments whose index build failed, and when to try again.
    index_failures: Mutex<HashMap<PathBuf, Instant>>,
    quarantine: Quarantine,
    stats: StoreStats,
    started: Instant,
    last_commit_us: AtomicU64,
    shutdown: Mutex<bool>,
    shutdown_cv: Condvar,
    closed: AtomicBool,
    numa: NumaPlacer,
    recovery: Mutex<RecoveryReport>,
}

/// The storage engine of one node.
pub struct Store {
    inner: Arc<Inner>,
    compactor: Mutex<Option<JoinHandle<()>>>,
    indexer: Mutex<Option<JoinHandle<()>>>,
    /// The commit pipeline's threads.
    committer: Mutex<Option<JoinHandle<()>>>,
    waker: Mutex<Option<JoinHandle<()>>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Store {
    /// Opens (or creates) the store in `root` on the real file system.
    pub fn open_dir(root: &Path, opts: StoreOptions) -> Result<Store> {
        Self::open(Arc::new(RealDisk), root, opts)
    }

    /// Opens (or creates) the store in `root`: recovers the WAL and starts the compactor.
    pub fn open(disk: Arc<dyn Disk>, root: &Path, opts: StoreOptions) -> Result<Store> {
        opts.validate().map_err(StorageError::Invalid)?;
        let started = Instant::now();
        let wal_dir = root.join("wal");
        let spaces_dir = root.join("spaces");
        for d in [root, &wal_dir, &spaces_dir] {
            disk.create_dir_all(d).at(d)?;
        }
        let quarantine = Quarantine::new(disk.clone(), root.join("quarantine"));
        let topology = NumaTopology::detect().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read the NUMA topology; assuming one node");
            NumaTopology::read_from(Path::new("/nonexistent")).unwrap_or_else(|_| unreachable!())
        });
        // The set of spaces is their directories; nothing is opened yet.
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
        let quarantined_before = quarantine.reports().len();
        let recovered = crate::recovery::scan_wal(&*disk, &wal_dir, &opts, &quarantine)?;
        let inner = Arc::new(Inner {
            disk: disk.clone(),
            root: root.to_path_buf(),
            spaces_dir,
            commit: Mutex::new(CommitState {
                buf: Vec::new(),
                pending: Vec::new(),
                waiters: Vec::new(),
                next_seq: 1,
                committer_idle: false,
                stopping: false,
                applied_seq: 0,
                failed: None,
            }),
            committer_cv: Condvar::new(),
            room_cv: Condvar::new(),
            written_seq: AtomicU64::new(0),
            durable_seq: AtomicU64::new(0),
            waker: Mutex::new(None),
            writer: Mutex::new(None),
            opts,
            spaces: RwLock::new(spaces),
            catalog: Mutex::new(HashSet::new()),
            catalog_cv: Condvar::new(),
            clock: AtomicU64::new(0),
            pending_drops: Mutex::new(Vec::new()),
            compaction: Mutex::new(()),
            index_failures: Mutex::new(HashMap::new()),
            quarantine,
            stats: StoreStats::default(),
            started,
            last_commit_us: AtomicU64::new(0),
            shutdown: Mutex::new(false),
            shutdown_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            numa: NumaPlacer::new(topology),
            recovery: Mutex::new(RecoveryReport::default()),
        });
        // Replay in sequence order.
        let mut report = recovered.report;
        let mut last_seq = 0u64;
        for rec in recovered.records {
            if rec.sequence <= last_seq {
                tracing::warn!(
                    seq = rec.sequence,
                    last_seq,
                    "skipping an out-of-order WAL record"
                );
                report.records_skipped += 1;
                continue;
            }
            last_seq = rec.sequence;
            if inner.apply(rec.sequence, rec.space, rec.op, true)? {
                report.records_replayed += 1;
            } else {
                report.records_skipped += 1;
            }
        }
        let mut next_seq = (last_seq + 1).max(recovered.next_seq_floor);
        let mut floor_raised = false;
        if report.torn_tail_bytes > 0 || inner.quarantine.reports().len() > quarantined_before {
            // The WAL lost bytes at its end or in the middle: its last record may not be the
            // newest sequence on disk (a rotted record may already be in a segment). Never
            // reuse a sequence a segment or space holds: it would be skipped at apply.
            let floor = max_persisted_seq(&*inner.disk, &inner.spaces_dir)?;
            if floor >= next_seq {
                tracing::warn!(
                    floor,
                    next_seq,
                    "next sequence raised above what segments hold"
                );
                next_seq = floor + 1;
                floor_raised = true;
            }
        }
        {
            let mut c = inner.commit.lock();
            c.next_seq = next_seq;
            c.applied_seq = next_seq - 1;
            inner.written_seq.store(next_seq - 1, Ordering::SeqCst);
            inner.durable_seq.store(next_seq - 1, Ordering::SeqCst);
        }
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
        *inner.writer.lock() = Some(writer);
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
        let (committer, waker) = inner.start_pipeline().map_err(|e| StorageError::Io {
            path: root.to_path_buf(),
            source: e,
        })?;
        let store = Store {
            inner,
            compactor: Mutex::new(None),
            indexer: Mutex::new(None),
            committer: Mutex::new(Some(committer)),
            waker: Mutex::new(Some(waker)),
        };
        if store.inner.opts.background_compaction {
            let bg = store.inner.clone();
            // On failure `store` is dropped here, which stops the commit pipeline.
            let handle = std::thread::Builder::new()
                .name("engram-compactor".into())
                .spawn(move || bg.compactor_loop())
                .map_err(|e| StorageError::Io {
                    path: root.to_path_buf(),
                    source: e,
                })?;
            *store.compactor.lock() = Some(handle);
            let bg = store.inner.clone();
            let handle = std::thread::Builder::new()
                .name("engram-indexer".into())
                .spawn(move || {
                    // Index builds are background work: requests go first.
                    if !(bg.opts.indexer_idle_class
                        && crate::process::set_current_thread_idle_class())
                    {
                        crate::process::set_current_thread_nice(bg.opts.indexer_nice);
                    }
                    bg.indexer_loop()
                })
                .map_err(|e| StorageError::Io {
                    path: root.to_path_buf(),
                    source: e,
                })?;
            *store.indexer.lock() = Some(handle);
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
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
        let _busy = self.inner.claim_id(id);
        if self.inner.space(id)?.is_some() {
            return Err(StorageError::SpaceExists(id.to_string()));
        }
        self.inner.submit(
            id,
            Op::SpaceCreate {
                dimension,
                created_at_us: now_us(),
                embedder: embedder.to_string(),
            },
        )
    }

    /// Drops a space and all its memories. Durable when this returns; its files are removed by
    /// the compactor.
    pub fn drop_space(&self, id: &SpaceId) -> Result<u64> {
        let _busy = self.inner.claim_id(id);
        if self.inner.space(id)?.is_none() {
            return Err(StorageError::SpaceNotFound(id.to_string()));
        }
        self.inner.submit(id, Op::SpaceDrop)
    }

    pub fn space_exists(&self, id: &SpaceId) -> Result<bool> {
        Ok(self.inner.space(id)?.is_some())
    }

    /// Every space's id, sorted.
    pub fn list_spaces(&self) -> Vec<SpaceId> {
        let mut ids: Vec<SpaceId> = self.inner.spaces.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn space_meta(&self, id: &SpaceId) -> Result<SpaceMeta> {
        Ok(self.inner.require(id)?.meta.clone())
    }

    /// Stores (or replaces) one memory. Durable when this returns.
    pub fn remember(&self, space: &SpaceId, memory: Memory) -> Result<u64> {
        let s = self.inner.require(space)?;
        let dim = s.meta.dimension as usize;
        memory
            .validate(dim)
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        let seq = self.inner.submit(space, Op::Remember(memory))?;
        drop(s);
        Ok(seq)
    }

    /// Like [`Store::remember`], for async callers: validates and queues the record now; the
    /// returned future resolves once it is durable and applied.
    pub fn remember_async(&self, space: &SpaceId, memory: Memory) -> Result<Commit> {
        let s = self.inner.require(space)?;
        memory
            .validate(s.meta.dimension as usize)
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        self.submit_async(space, Op::Remember(memory))
    }

    /// Like [`Store::remember_batch`], for async callers.
    pub fn remember_batch_async(&self, space: &SpaceId, memories: Vec<Memory>) -> Result<Commit> {
        self.check_batch(space, &memories)?;
        self.submit_async(space, Op::RememberBatch(memories))
    }

    fn submit_async(&self, space: &SpaceId, op: Op) -> Result<Commit> {
        let waiter = Arc::new(Waiter {
            wake: Wake::Task(Mutex::new(None)),
            state: std::sync::atomic::AtomicU8::new(WAITING),
        });
        let seq = self.inner.enqueue(space, op, &waiter)?;
        Ok(Commit {
            waiter,
            seq,
            inner: self.inner.clone(),
        })
    }

    fn check_batch(&self, space: &SpaceId, memories: &[Memory]) -> Result<()> {
        // The batch limit is checked where a request enters (the engine's batch API, the HTTP
        // route). Asserted here, in release builds too: a larger batch would be a WAL record
        // that replay refuses as corrupted.
        assert!(
            memories.len() <= engram_core::limits::MAX_BATCH,
            "batch of {} memories exceeds the limit of {}",
            memories.len(),
            engram_core::limits::MAX_BATCH
        );
        let dim = self.inner.require(space)?.meta.dimension as usize;
        for (i, m) in memories.iter().enumerate() {
            m.validate(dim)
                .map_err(|e| StorageError::Invalid(format!("memory {i}: {e}")))?;
        }
        Ok(())
    }

    /// Stores several memories, all or nothing (one WAL record). At most
    /// [`MAX_BATCH`](engram_core::limits::MAX_BATCH) of them: the caller checks that (a larger
    /// batch panics).
    pub fn remember_batch(&self, space: &SpaceId, memories: Vec<Memory>) -> Result<u64> {
        self.check_batch(space, &memories)?;
        self.inner.submit(space, Op::RememberBatch(memories))
    }

    /// Deletes a memory. `Ok(false)` if it was not there (nothing written).
    pub fn forget(&self, space: &SpaceId, id: &MemoryId) -> Result<bool> {
        let s = self.inner.require(space)?;
        if !s.state.read().contains(id.as_str())? {
            return Ok(false);
        }
        self.inner.submit(space, Op::Forget(id.clone()))?;
        Ok(true)
    }

    /// Adds (or reweights) the link `from -> to`; both must exist. Weight in `(0, 1]`.
    pub fn link(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        weight: f32,
    ) -> Result<u64> {
        if !engram_core::Link::is_valid_weight(f64::from(weight)) {
            return Err(StorageError::Invalid(format!(
                "link weight {weight} is outside (0, 1]"
            )));
        }
        let s = self.inner.require(space)?;
        for id in [from, to] {
            if !s.state.read().contains(id.as_str())? {
                return Err(StorageError::MemoryNotFound(id.to_string()));
            }
        }
        self.inner.submit(
            space,
            Op::Link {
                from: from.clone(),
                to: to.clone(),
                weight,
            },
        )
    }

    /// Removes the link `from -> to`.
    pub fn unlink(&self, space: &SpaceId, from: &MemoryId, to: &MemoryId) -> Result<u64> {
        let s = self.inner.require(space)?;
        if !s.state.read().contains(from.as_str())? {
            return Err(StorageError::MemoryNotFound(from.to_string()));
        }
        self.inner.submit(
            space,
            Op::Unlink {
                from: from.clone(),
                to: to.clone(),
            },
        )
    }

    /// The newest version of a memory.
    pub fn get(&self, space: &SpaceId, id: &str) -> Result<Option<Memory>> {
        self.inner.require(space)?.state.read().get(id)
    }

    /// Calls `f` with every live memory of the space, in no particular order.
    pub fn for_each(&self, space: &SpaceId, f: impl FnMut(Memory)) -> Result<()> {
        self.inner.require(space)?.state.read().for_each(f)
    }

    /// The `k` live memories of `space` with the highest BM25 score for `text` (see
    /// [`crate::lexical`]; at most [`crate::lexical::MAX_QUERY_TERMS`] of its distinct terms
    /// count), best first.
    pub fn lexical_search(
        &self,
        space: &SpaceId,
        text: &str,
        k: usize,
    ) -> Result<Vec<crate::space::LexHit>> {
        let s = self.inner.require(space)?;
        let terms = crate::lexical::query_terms(text);
        let st = s.state.read();
        st.lexical_search(&terms, k)
    }

    /// The `k` live memories of `space` most similar to `query` (unit length, the space's
    /// dimension), best first. `ef` is the HNSW beam width (at least `k` is used).
    pub fn search(&self, space: &SpaceId, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        let s = self.inner.require(space)?;
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

    /// Runs `f` on the space's state under its read lock (for the engine: segments, memtables).
    pub fn read_space<R>(&self, space: &SpaceId, f: impl FnOnce(&SpaceState) -> R) -> Result<R> {
        Ok(f(&self.inner.require(space)?.state.read()))
    }

    pub fn space_status(&self, id: &SpaceId) -> Result<SpaceStatus> {
        let s = self.inner.require(id)?;
        let durable_seq = self.inner.durable_seq.load(Ordering::SeqCst);
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
            flushed_seq: st.flushed_seq,
            durable_seq,
            quarantined_records: self.inner.quarantine.count_for_space(id.as_str()),
        })
    }

    pub fn status(&self) -> StoreStatus {
        let written_seq = self.inner.written_seq.load(Ordering::SeqCst);
        let durable_seq = self.inner.durable_seq.load(Ordering::SeqCst);
        let latched = self.inner.commit.lock().failed.clone();
        let (wal_files, wal_bytes) = self
            .inner
            .writer
            .lock()
            .as_ref()
            .map_or((0, 0), |w| (w.file_count(), w.total_bytes()));
        let spaces = self.inner.spaces.read();
        StoreStatus {
            written_seq,
            durable_seq,
            wal_files,
            wal_bytes,
            spaces: spaces.len(),
            spaces_loaded: spaces
                .values()
                .filter(|s| matches!(s, Slot::Loaded(_)))
                .count(),
            latched,
            quarantined: self.inner.quarantine.reports(),
            recovery: self.inner.recovery.lock().clone(),
        }
    }

    /// Flushes every memtable to segments, merges where due, checkpoints the WAL and releases
    /// idle spaces: what the background compactor does, now.
    pub fn compact(&self) -> Result<()> {
        self.inner.compact_pass(true, false)
    }

    /// Merges every space with more than one segment into one.
    pub fn merge_all(&self) -> Result<()> {
        let _pass = self.inner.compaction.lock();
        for space in self.inner.loaded_spaces() {
            let n = space::merge_all(&*self.inner.disk, &space)?;
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
        self.inner.closed.store(true, Ordering::SeqCst);
        *self.inner.shutdown.lock() = true;
        self.inner.shutdown_cv.notify_all();
        if let Some(h) = self.compactor.lock().take() {
            let _ = h.join();
        }
        // An index build in progress finishes first (it is not interruptible).
        if let Some(h) = self.indexer.lock().take() {
            let _ = h.join();
        }
        // The committer finishes every queued record (their writers are waiting), then stops.
        self.inner.commit.lock().stopping = true;
        self.inner.committer_cv.notify_all();
        // The committer first (it drains the queue), then the waker once nothing can send.
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
        self.inner.waker.lock().take();
        if let Some(h) = self.waker.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Releases a claimed space id on drop.
struct IdClaim<'a> {
    inner: &'a Inner,
    id: SpaceId,
}

impl Drop for IdClaim<'_> {
    fn drop(&mut self) {
        self.inner.catalog.lock().remove(&self.id);
        self.inner.catalog_cv.notify_all();
    }
}

impl Inner {
    /// Waits until no creation or drop of `id` is in flight, then claims it.
    fn claim_id(&self, id: &SpaceId) -> IdClaim<'_> {
        let mut busy = self.catalog.lock();
        while busy.contains(id) {
            self.catalog_cv.wait(&mut busy);
        }
        busy.insert(id.clone());
        IdClaim {
            inner: self,
            id: id.clone(),
        }
    }

    /// The space, loading it from disk if needed; `None` if it does not exist.
    fn space(&self, id: &SpaceId) -> Result<Option<Arc<Space>>> {
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
                        Ok(Some(space))
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

    fn require(&self, id: &SpaceId) -> Result<Arc<Space>> {
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

    fn loaded_spaces(&self) -> Vec<Arc<Space>> {
        self.spaces
            .read()
            .values()
            .filter_map(|s| match s {
                Slot::Loaded(s) => Some(s.clone()),
                Slot::OnDisk => None,
            })
            .collect()
    }

    /// Appends one record and waits until it is durable and applied (group commit: the
    /// committer writes everything queued, fsyncs once, applies, then wakes each writer).
    fn submit(&self, space: &SpaceId, op: Op) -> Result<u64> {
        let waiter = Arc::new(Waiter {
            wake: Wake::Thread(std::thread::current()),
            state: std::sync::atomic::AtomicU8::new(WAITING),
        });
        let seq = self.enqueue(space, op, &waiter)?;
        loop {
            match waiter.state.load(Ordering::Acquire) {
                WAITING => std::thread::park(),
                DONE => return Ok(seq),
                _ => {
                    let why = self.commit.lock().failed.clone().unwrap_or_default();
                    return Err(StorageError::Latched(why));
                }
            }
        }
    }

    /// Queues a record for the next group commit; `waiter` is told when it is durable and
    /// applied. Blocks only while the next batch is full (back-pressure).
    fn enqueue(&self, space: &SpaceId, op: Op, waiter: &Arc<Waiter>) -> Result<u64> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StorageError::Closed);
        }
        self.stats
            .changes
            .fetch_add(op.changes() as u64, Ordering::Relaxed);
        let mut payload = Vec::new();
        op.encode_payload(&mut payload);
        let size = RECORD_HEADER_LEN + space.as_str().len() + payload.len();
        if size > self.opts.max_record_bytes {
            return Err(StorageError::RecordTooLarge {
                size,
                limit: self.opts.max_record_bytes,
            });
        }
        let mut c = self.commit.lock();
        // Back-pressure: wait while the next batch is full.
        while c.failed.is_none()
            && !c.stopping
            && !c.buf.is_empty()
            && c.buf.len() + size > self.opts.max_pending_bytes
        {
            self.room_cv.wait(&mut c);
        }
        if let Some(f) = &c.failed {
            return Err(StorageError::Latched(f.clone()));
        }
        if c.stopping {
            return Err(StorageError::Closed);
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        encode_record(&mut c.buf, seq, now_us(), space, op.code(), &payload);
        c.pending.push(Pending {
            seq,
            space: space.clone(),
            op,
        });
        c.waiters.push(waiter.clone());
        let wake = std::mem::take(&mut c.committer_idle);
        drop(c);
        if wake {
            self.committer_cv.notify_one();
        }
        Ok(seq)
    }

    /// Starts the commit pipeline: the committer thread, which takes everything queued,
    /// writes it, fsyncs once and applies it in sequence order, and the waker thread, which
    /// wakes the writers of each finished batch (in order) while the committer goes on.
    fn start_pipeline(self: &Arc<Self>) -> std::io::Result<(JoinHandle<()>, JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<WakeList>();
        let waker = std::thread::Builder::new()
            .name("engram-wal-waker".into())
            .spawn(move || {
                for (waiters, state) in rx {
                    for w in waiters {
                        w.finish(state);
                    }
                }
            })?;
        *self.waker.lock() = Some(tx);
        let inner = self.clone();
        let committer = std::thread::Builder::new()
            .name("engram-wal-committer".into())
            .spawn(move || {
                crate::process::set_current_thread_nice(inner.opts.committer_nice);
                inner.committer_loop()
            });
        match committer {
            Ok(c) => Ok((c, waker)),
            Err(e) => {
                self.waker.lock().take();
                let _ = waker.join();
                Err(e)
            }
        }
    }

    /// The committer: takes a batch, writes it, fsyncs it, applies it and hands its writers
    /// to the waker; again while records keep coming (group commit: batches grow with load,
    /// never by waiting).
    fn committer_loop(&self) {
        let mut spare = Vec::new();
        let mut handle: Option<SyncHandle> = None;
        loop {
            let mut c = self.commit.lock();
            while c.pending.is_empty() && !c.stopping {
                c.committer_idle = true;
                self.committer_cv.wait(&mut c);
            }
            c.committer_idle = false;
            if c.pending.is_empty() {
                return;
            }
            let buf = std::mem::replace(&mut c.buf, std::mem::take(&mut spare));
            let batch = std::mem::take(&mut c.pending);
            let waiters = std::mem::take(&mut c.waiters);
            let latched = c.failed.is_some();
            drop(c);
            self.room_cv.notify_all();
            let result = if latched {
                Err(StorageError::Latched("an earlier write failed".into()))
            } else {
                self.write_and_sync(&buf, &batch, &mut handle)
            };
            spare = buf;
            spare.clear();
            self.finish_batch(DurableBatch {
                batch,
                waiters,
                result,
            });
        }
    }

    /// Writes a batch at the end of the WAL under the writer's lock, then fsyncs it through the
    /// committer's own handle outside the lock (status and checkpoints are not held up by the
    /// fsync). The writer's own handle syncs only in a roll, which happens in this thread or
    /// when no batch is in flight, so a write-back error is never reported to the wrong call.
    fn write_and_sync(
        &self,
        buf: &[u8],
        batch: &[Pending],
        handle: &mut Option<SyncHandle>,
    ) -> Result<()> {
        let first = batch.first().map_or(0, |p| p.seq);
        let last = batch.last().map_or(0, |p| p.seq);
        let (path, end, mut h) = {
            let mut guard = self.writer.lock();
            let w = guard.as_mut().ok_or(StorageError::Closed)?;
            let generation = w.write(buf, first)?;
            self.written_seq.fetch_max(last, Ordering::SeqCst);
            let h = match handle.take() {
                Some(h) if h.generation == generation => h,
                _ => SyncHandle {
                    generation,
                    file: w.clone_current()?,
                    uncached_to: 0,
                },
            };
            (w.current_path().to_path_buf(), w.position(), h)
        };
        let t = Instant::now();
        let synced = h.file.sync();
        if synced.is_ok() {
            // Synced WAL pages are not read again while the store runs (recovery reads the
            // files at the next start): hand them back, so that new WAL pages reuse memory
            // instead of growing the page cache. Measured with 64 async writers (full
            // `engram-bench storage` writes, interleaved): 59-60k/s at P99 2.4-2.8 ms with
            // it, 43-59k/s at P99 3.8-4.9 ms without; 19 against 20-32 us CPU per write.
            let upto = end & !(CACHE_DROP_GRAIN - 1);
            if upto > h.uncached_to {
                let _ = h.file.drop_cached(h.uncached_to, upto - h.uncached_to);
                h.uncached_to = upto;
            }
        }
        *handle = Some(h);
        synced.map_err(|source| StorageError::Io { path, source })?;
        let s = &self.stats;
        let us = t.elapsed().as_micros() as u64;
        // For a metrics recorder, if the host installed one (a no-op otherwise).
        metrics::histogram!("engram_wal_fsync_seconds").record(us as f64 / 1e6);
        metrics::histogram!("engram_wal_batch_records").record(batch.len() as f64);
        s.fsync_micros_total.fetch_add(us, Ordering::Relaxed);
        s.fsync_micros_max.fetch_max(us, Ordering::Relaxed);
        if us > 2_000 {
            s.fsyncs_over_2ms.fetch_add(1, Ordering::Relaxed);
        }
        s.group_commits.fetch_add(1, Ordering::Relaxed);
        s.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.wal_bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Applies a durable batch, records the watermarks, and hands its writers to the waker. A
    /// failed write or apply latches the WAL: every later batch fails too (it sees the latch
    /// when taken), so acknowledgements never skip a gap.
    fn finish_batch(&self, job: DurableBatch) {
        let last = job.batch.last().map_or(0, |p| p.seq);
        let result = job.result.and_then(|()| {
            self.durable_seq.fetch_max(last, Ordering::SeqCst);
            self.apply_batch(job.batch)
        });
        let mut c = self.commit.lock();
        let state = match result {
            Ok(()) => {
                c.applied_seq = last;
                self.last_commit_us
                    .store(self.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                DONE
            }
            Err(e) => {
                if c.failed.is_none() {
                    tracing::error!(error = %e, "WAL write or apply failed; refusing writes until reopened");
                    c.failed = Some(e.to_string());
                }
                FAILED
            }
        };
        drop(c);
        if state == FAILED {
            self.room_cv.notify_all();
        }
        let waiters = match self.waker.lock().as_ref() {
            Some(tx) => tx.send((job.waiters, state)).err().map(|e| e.0 .0),
            None => Some(job.waiters),
        };
        // Without the waker thread (shutting down), wake them here.
        for w in waiters.into_iter().flatten() {
            w.finish(state);
        }
    }

    /// Applies a durable batch in sequence order. A run of records for the same space is
    /// applied under one write lock, so readers and writers of that space are held up once per
    /// batch rather than once per record.
    fn apply_batch(&self, batch: Vec<Pending>) -> Result<()> {
        let mut iter = batch.into_iter().peekable();
        while let Some(p) = iter.next() {
            let plain = !matches!(p.op, Op::SpaceCreate { .. } | Op::SpaceDrop);
            let space = if plain { self.space(&p.space)? } else { None };
            let Some(space) = space else {
                self.apply(p.seq, p.space, p.op, false)?;
                continue;
            };
            let mut st = space.state.write();
            let mut next = Some(p);
            while let Some(p) = next.take() {
                if !st.dropped && p.seq > st.flushed_seq {
                    st.apply(p.seq, p.op)?;
                }
                let same = iter.peek().is_some_and(|q| {
                    q.space == space.id && !matches!(q.op, Op::SpaceCreate { .. } | Op::SpaceDrop)
                });
                if same {
                    next = iter.next();
                }
            }
        }
        Ok(())
    }

    /// Applies one durable record to its space. Deterministic, in sequence order, the same at
    /// commit and at replay. Returns whether it changed anything.
    fn apply(&self, seq: u64, space_id: SpaceId, op: Op, replaying: bool) -> Result<bool> {
        if let Op::SpaceCreate {
            dimension,
            created_at_us,
            embedder,
        } = op
        {
            if self.space(&space_id)?.is_some() {
                return Ok(false);
            }
            let meta = SpaceMeta {
                dimension,
                created_at_us,
                created_seq: seq,
                embedder,
            };
            let space =
                Space::new_in_memory(space_id.clone(), space_dir(&self.root, &space_id), meta);
            space.state.write().active.note(seq);
            space.touch(self.clock.fetch_add(1, Ordering::Relaxed));
            self.spaces
                .write()
                .insert(space_id, Slot::Loaded(Arc::new(space)));
            return Ok(true);
        }
        let Some(space) = self.space(&space_id)? else {
            if !replaying {
                tracing::warn!(space = %space_id, seq, "record for a space that no longer exists");
            }
            return Ok(false);
        };
        let mut st = space.state.write();
        if st.dropped || seq <= st.flushed_seq {
            return Ok(false);
        }
        if let Op::SpaceDrop = op {
            st.dropped = true;
            drop(st);
            self.spaces.write().remove(&space_id);
            self.pending_drops.lock().push((seq, space));
            return Ok(true);
        }
        st.apply(seq, op)?;
        Ok(true)
    }

    /// Waits one `compaction_tick` (or until shutdown); false once the store is shutting down.
    fn wait_tick(&self) -> bool {
        let mut stop = self.shutdown.lock();
        if !*stop {
            self.shutdown_cv
                .wait_for(&mut stop, self.opts.compaction_tick);
        }
        !*stop
    }

    /// The background indexer: builds the index of one segment lacking it per round.
    fn indexer_loop(self: Arc<Self>) {
        // When each segment lacking an index was first seen, for the deferral under load.
        let mut waiting: HashMap<PathBuf, Instant> = HashMap::new();
        let mut load = LoadMeter::default();
        while self.wait_tick() {
            let rate = load.rate(self.stats.changes.load(Ordering::Relaxed));
            let busy = self.opts.index_defer_records_per_s > 0
                && rate > self.opts.index_defer_records_per_s as f64;
            loop {
                match self.build_one_index(busy, &mut waiting) {
                    Ok(true) if !*self.shutdown.lock() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "building an index failed; will retry");
                        break;
                    }
                }
            }
        }
    }

    /// Builds the index of one loaded segment that has none and at least
    /// `index_min_rows` rows (smaller ones are scanned). Returns whether one was built. A
    /// segment whose build failed is skipped for a minute (other spaces go first). While
    /// `busy` (see `index_defer_records_per_s`), only segments that have waited
    /// `index_defer_max` since `waiting` first saw them are built.
    fn build_one_index(&self, busy: bool, waiting: &mut HashMap<PathBuf, Instant>) -> Result<bool> {
        let now = Instant::now();
        let target = {
            let failed = self.index_failures.lock();
            let mut target = None;
            let mut seen = Vec::new();
            for space in self.loaded_spaces() {
                let st = space.state.read();
                if st.dropped {
                    continue;
                }
                let seg = st.segments.iter().find(|s| {
                    let candidate = s.rows() >= self.opts.index_min_rows
                        && s.index().is_none()
                        && failed.get(s.path()).is_none_or(|t| now >= *t);
                    if !candidate {
                        return false;
                    }
                    seen.push(s.path().to_path_buf());
                    let since = *waiting.entry(s.path().to_path_buf()).or_insert(now);
                    !busy || now.duration_since(since) >= self.opts.index_defer_max
                });
                if let Some(seg) = seg.cloned() {
                    drop(st);
                    target = Some((space, seg));
                    break;
                }
            }
            // Forget segments gone (merged, dropped) or indexed.
            if target.is_none() {
                waiting.retain(|p, _| seen.contains(p));
            }
            target
        };
        let Some((space, seg)) = target else {
            return Ok(false);
        };
        waiting.remove(seg.path());
        let t = Instant::now();
        match space::build_index(&*self.disk, &space, &seg, self.opts.hnsw) {
            Ok(built) => {
                if built {
                    self.stats.index_builds.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(space = %space.id, rows = seg.rows(), elapsed_ms = t.elapsed().as_millis() as u64, "index built");
                }
                self.index_failures.lock().remove(seg.path());
                Ok(built)
            }
            Err(e) => {
                self.index_failures
                    .lock()
                    .insert(seg.path().to_path_buf(), now + Duration::from_secs(60));
                Err(e)
            }
        }
    }

    fn compactor_loop(self: Arc<Self>) {
        // The write rate over the last second or so, for the merge deferral under load.
        let mut load = LoadMeter::default();
        while self.wait_tick() {
            let rate = load.rate(self.stats.changes.load(Ordering::Relaxed));
            let busy = self.opts.merge_defer_records_per_s > 0
                && rate > self.opts.merge_defer_records_per_s as f64;
            if let Err(e) = self.compact_pass(false, busy) {
                tracing::error!(error = %e, "compaction pass failed; will retry");
            }
        }
    }

    /// One compaction pass: remove dropped spaces, flush memtables when due (or `force`), merge
    /// spaces with too many segments (a higher bound while `busy`, see
    /// `merge_defer_records_per_s`), checkpoint the WAL, release idle spaces.
    fn compact_pass(&self, force: bool, busy: bool) -> Result<()> {
        let _pass = self.compaction.lock();
        // Background work is paced; an explicit compaction (and shutdown) runs flat out.
        let pace = if force {
            WritePace::UNPACED
        } else {
            self.opts.background_pace()
        };
        self.remove_dropped()?;
        let loaded = self.loaded_spaces();
        // A space dropped (and perhaps created again) since `remove_dropped` above still has its
        // old directory: its new incarnation waits for the next pass, after the removal.
        let dropping: Vec<SpaceId> = self
            .pending_drops
            .lock()
            .iter()
            .map(|(_, s)| s.id.clone())
            .collect();
        let dirty: Vec<Arc<Space>> = loaded
            .iter()
            .filter(|s| {
                let st = s.state.read();
                (!st.active.is_clean() || st.frozen.is_some()) && !dropping.contains(&s.id)
            })
            .cloned()
            .collect();
        if !dirty.is_empty() {
            let mem_bytes: usize = dirty.iter().map(|s| s.state.read().active.bytes).sum();
            let wal_bytes = self.writer.lock().as_ref().map_or(0, |w| w.total_bytes());
            let idle_us = (self.started.elapsed().as_micros() as u64)
                .saturating_sub(self.last_commit_us.load(Ordering::Relaxed));
            let due = force
                || wal_bytes > self.opts.wal_flush_bytes
                || mem_bytes > self.opts.memtable_flush_bytes
                || idle_us > self.opts.idle_flush_after.as_micros() as u64;
            if due {
                self.flush_spaces(&dirty, &pace)?;
            } else if self.opts.memtable_max_rows > 0 {
                let full: Vec<Arc<Space>> = dirty
                    .iter()
                    .filter(|s| s.state.read().active.entries.len() >= self.opts.memtable_max_rows)
                    .cloned()
                    .collect();
                if !full.is_empty() {
                    self.flush_spaces(&full, &pace)?;
                }
            }
        }
        drop(dirty);
        let most = if busy && !force {
            self.opts
                .merge_defer_max_segments
                .max(self.opts.max_segments_per_space)
        } else {
            self.opts.max_segments_per_space
        };
        for space in &loaded {
            let many = space.state.read().segments.len() > most;
            if many && !space.merge_blocked.load(Ordering::Relaxed) {
                match space::merge_tiered(&*self.disk, space, &pace) {
                    Ok(n) => {
                        self.stats.merges.fetch_add(1, Ordering::Relaxed);
                        self.stats.compaction_bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    // A segment that fails its checksums stays readable where it is; merging
                    // this space stops (until restart) so flushes and checkpoints go on.
                    Err(e) => {
                        tracing::error!(space = %space.id, error = %e, "merge failed; merges of this space are suspended until restart");
                        space.merge_blocked.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        drop(loaded);
        self.checkpoint()?;
        self.release_idle();
        Ok(())
    }

    /// Flushes spaces in parallel (I/O bound: several fsyncs per space), then makes the new
    /// space directories durable.
    fn flush_spaces(&self, dirty: &[Arc<Space>], pace: &WritePace) -> Result<()> {
        let threads = 8.min(dirty.len()).max(1);
        let next = AtomicU64::new(0);
        let errors: Mutex<Vec<StorageError>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(space) = dirty.get(i) else { break };
                    match space::flush(&*self.disk, space, pace) {
                        Ok(n) => {
                            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                            self.stats.compaction_bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().push(e),
                    }
                });
            }
        });
        self.disk.sync_dir(&self.spaces_dir).at(&self.spaces_dir)?;
        match errors.into_inner().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn remove_dropped(&self) -> Result<()> {
        let drops: Vec<(u64, Arc<Space>)> = self.pending_drops.lock().clone();
        if drops.is_empty() {
            return Ok(());
        }
        for (_, space) in &drops {
            let _files = space.files.lock();
            remove_space_dir(&*self.disk, &space.dir)?;
        }
        self.disk.sync_dir(&self.spaces_dir).at(&self.spaces_dir)?;
        self.pending_drops
            .lock()
            .retain(|(seq, _)| !drops.iter().any(|(s, _)| s == seq));
        Ok(())
    }

    /// Deletes WAL files whose every record is in a segment.
    fn checkpoint(&self) -> Result<()> {
        let mut cp = self.commit.lock().applied_seq + 1;
        for space in self.loaded_spaces() {
            let st = space.state.read();
            for m in [
                st.active.min_seq,
                st.frozen.as_ref().and_then(|f| f.min_seq),
            ]
            .into_iter()
            .flatten()
            {
                cp = cp.min(m);
            }
        }
        for (seq, _) in self.pending_drops.lock().iter() {
            cp = cp.min(*seq);
        }
        let mut guard = self.writer.lock();
        let n = match guard.as_mut() {
            Some(w) => {
                // Every record written so far is in a segment: start a fresh file so that the
                // current one can go too, and a restart replays nothing.
                let written = self.written_seq.load(Ordering::SeqCst);
                if cp > written && w.current_has_records() {
                    w.roll(written + 1)?;
                }
                w.delete_before(cp)?
            }
            None => 0,
        };
        drop(guard);
        if n > 0 {
            tracing::debug!(
                deleted = n,
                checkpoint = cp,
                "WAL files removed after checkpoint"
            );
        }
        Ok(())
    }

    /// Releases clean spaces beyond the open-space limit, least recently used first.
    fn release_idle(&self) {
        let max = self.opts.max_open_spaces;
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

/// Removes a space's directory so that a crash at any point leaves either a loadable space
/// (`space.meta` present: the drop record, still in the WAL, is replayed and removes it again)
/// or a directory without `space.meta`, which holds no segment and is cleared on sight.
fn remove_space_dir(disk: &dyn Disk, dir: &Path) -> Result<()> {
    if !disk.exists(dir) {
        return Ok(());
    }
    let meta = dir.join(crate::meta::SPACE_META_FILE);
    for name in disk.list_dir(dir).at(dir)? {
        let p = dir.join(&name);
        if p != meta {
            disk.remove_file(&p).at(&p)?;
        }
    }
    disk.sync_dir(dir).at(dir)?;
    if disk.exists(&meta) {
        disk.remove_file(&meta).at(&meta)?;
        disk.sync_dir(dir).at(dir)?;
    }
    disk.remove_dir_all(dir).at(dir)
}

/// The highest sequence held by any space's files: segment ranges and `space.meta`. Reads
/// every space directory, so it runs only when recovery lost part of the WAL.
fn max_persisted_seq(disk: &dyn Disk, spaces_dir: &Path) -> Result<u64> {
    let mut max = 0;
    for name in disk.list_dir(spaces_dir).at(spaces_dir)? {
        let dir = spaces_dir.join(&name);
        let Ok(entries) = disk.list_dir(&dir) else {
            continue;
        };
        for e in entries {
            if let Some((_, hi)) = crate::segment::parse_segment_file_name(&e) {
                max = max.max(hi);
            } else if e == crate::meta::SPACE_META_FILE {
                if let Ok(m) = disk.read(&dir.join(&e)).map(|b| SpaceMeta::decode(&b)) {
                    max = max.max(m.map_or(0, |m| m.created_seq));
                }
            }
        }
    }
    Ok(max)
}

#[cfg(test)]
mod load_meter_tests {
    use super::LoadMeter;
    use std::time::Duration;

    #[test]
    fn a_quiet_tick_does_not_read_as_idle() {
        let mut m = LoadMeter::default();
        assert_eq!(m.rate(0), 0.0);
        std::thread::sleep(Duration::from_millis(10));
        assert!(m.rate(100) > 1000.0);
        // No change for a while: still ~100 changes over the window, not 0.
        std::thread::sleep(Duration::from_millis(30));
        let r = m.rate(100);
        assert!(r > 100.0 && r < 10_000.0, "{r}");
    }
}
