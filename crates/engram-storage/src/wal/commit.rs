//! Group commit. Writers queue records ([`GroupCommit::submit`], [`GroupCommit::submit_async`]);
//! one committer thread takes everything queued, writes it at the end of the WAL, fsyncs once
//! and hands the batch to the store to apply; a waker thread then wakes each writer of the
//! batch, in order, while the committer goes on. Batches grow with load, never by waiting.
//!
//! Two watermarks are kept apart: `written` (in the file) and `durable` (fsynced). A write is
//! acknowledged only once durable and applied. A failed write, fsync or apply latches the WAL:
//! it refuses writes until the node reopens it. Protocol and crash analysis: `docs/format.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use engram_core::SpaceId;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::clock::Clock;
use crate::disk::DiskFile;
use crate::error::{Result, StorageError};
use crate::op::Op;
use crate::stats::StoreStats;
use crate::wal::check::{check_batch, check_entry, check_sequences, check_watermarks};
use crate::wal::{encode_record, WalWriter, RECORD_HEADER_LEN};

/// A record waiting to be applied once durable.
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) space: SpaceId,
    pub(crate) op: Op,
}

/// How a writer learns its record's fate: the committer sets `state`, then wakes the writer
/// (a parked thread, or an async task's waker), never through the commit mutex.
struct Waiter {
    wake: Wake,
    /// `WAITING`, `DONE` or `FAILED`.
    state: AtomicU8,
    /// The last sequence of the writer's records (set when they are queued).
    seq: AtomicU64,
}

enum Wake {
    Thread(std::thread::Thread),
    Task(Mutex<Option<std::task::Waker>>),
    /// Called once with whether the records are durable (raft's "log flushed").
    Callback(Mutex<Option<DurableCallback>>),
}

/// Told, on the WAL's waker thread (or the writer's own, with `inline_commit`), the last
/// sequence of records now durable, or `None` if they failed: it must not block.
pub type DurableCallback = Box<dyn FnOnce(Option<u64>) + Send>;

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
            Wake::Callback(f) => {
                if let Some(f) = f.lock().take() {
                    f((state == DONE).then(|| self.seq.load(Ordering::Acquire)));
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
    wal: Arc<GroupCommit>,
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
                let why = this.wal.latched().unwrap_or_default();
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
// The grain is a mask of whole pages.
const _: () = assert!(CACHE_DROP_GRAIN.is_power_of_two() && CACHE_DROP_GRAIN.is_multiple_of(4096));

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

/// Applies a durable batch to the spaces, in sequence order (the store's apply step).
pub(crate) type ApplyBatch = dyn Fn(Vec<Pending>) -> Result<()> + Send + Sync;

/// The WAL's writer side: the queue of the next batch, the committer and waker threads'
/// shared state, the watermarks and the latch.
pub(crate) struct GroupCommit {
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
    /// Set by `close`: new writes are refused.
    closed: AtomicBool,
    max_record_bytes: usize,
    max_pending_bytes: usize,
    stats: Arc<StoreStats>,
    /// Record timestamps and idleness come from here.
    clock: Arc<dyn Clock>,
    /// When (the clock's monotonic micros) the last batch was applied, or the store opened.
    last_commit_us: AtomicU64,
    /// Set with `inline_commit`: no committer or waker thread; each writer commits.
    inline: Option<Inline>,
}

/// The committer's state when writers commit inline (deterministic simulation).
struct Inline {
    apply: Mutex<Option<Arc<ApplyBatch>>>,
    /// The committer's handle; held while a writer commits, so commits run one at a time.
    handle: Mutex<Option<SyncHandle>>,
}

impl GroupCommit {
    pub(crate) fn new(
        max_record_bytes: usize,
        max_pending_bytes: usize,
        stats: Arc<StoreStats>,
        clock: Arc<dyn Clock>,
        inline_commit: bool,
    ) -> Self {
        let opened_us = clock.monotonic().as_micros() as u64;
        Self {
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
            closed: AtomicBool::new(false),
            max_record_bytes,
            max_pending_bytes,
            stats,
            clock,
            last_commit_us: AtomicU64::new(opened_us),
            inline: inline_commit.then(|| Inline {
                apply: Mutex::new(None),
                handle: Mutex::new(None),
            }),
        }
    }

    /// After recovery: the next record gets `next_seq`; everything before it is durable and
    /// applied; `writer` appends from there.
    pub(crate) fn resume(&self, next_seq: u64, writer: WalWriter) {
        {
            let mut c = self.commit.lock();
            c.next_seq = next_seq;
            c.applied_seq = next_seq - 1;
            self.written_seq.store(next_seq - 1, Ordering::SeqCst);
            self.durable_seq.store(next_seq - 1, Ordering::SeqCst);
        }
        *self.writer.lock() = Some(writer);
    }

    /// The WAL's files (`None` before recovery has opened them).
    pub(crate) fn writer(&self) -> MutexGuard<'_, Option<WalWriter>> {
        self.writer.lock()
    }

    pub(crate) fn written_seq(&self) -> u64 {
        self.written_seq.load(Ordering::SeqCst)
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::SeqCst)
    }

    /// Every record up to here is durable and applied to its space.
    pub(crate) fn applied_seq(&self) -> u64 {
        self.commit.lock().applied_seq
    }

    /// Why the WAL refuses writes, if it does.
    pub(crate) fn latched(&self) -> Option<String> {
        self.commit.lock().failed.clone()
    }

    /// Microseconds since the last batch was applied (since the store opened if none was).
    pub(crate) fn idle_us(&self) -> u64 {
        (self.clock.monotonic().as_micros() as u64)
            .saturating_sub(self.last_commit_us.load(Ordering::Relaxed))
    }

    /// Something gave the background workers work (see `StoreStats::activity`).
    pub(crate) fn note_activity(&self) {
        self.stats.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Refuses new writes from now on.
    pub(crate) fn refuse_writes(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Appends one record and waits until it is durable and applied (group commit: the
    /// committer writes everything queued, fsyncs once, applies, then wakes each writer).
    pub(crate) fn submit(&self, space: &SpaceId, op: Op) -> Result<u64> {
        self.submit_all(space, vec![op])
    }

    /// [`GroupCommit::submit`] of records of one space that share one group commit
    /// ([`GroupCommit::enqueue_all`]): durable together. Returns the last sequence.
    pub(crate) fn submit_all(&self, space: &SpaceId, ops: Vec<Op>) -> Result<u64> {
        let waiter = Arc::new(Waiter {
            wake: Wake::Thread(std::thread::current()),
            state: AtomicU8::new(WAITING),
            seq: AtomicU64::new(0),
        });
        let seq = self.enqueue_all(space, ops, &waiter)?;
        loop {
            match waiter.state.load(Ordering::Acquire) {
                WAITING => std::thread::park(),
                DONE => return Ok(seq),
                _ => {
                    let why = self.latched().unwrap_or_default();
                    return Err(StorageError::Latched(why));
                }
            }
        }
    }

    /// Queues one record; the returned future resolves once it is durable and applied.
    pub(crate) fn submit_async(self: &Arc<Self>, space: &SpaceId, op: Op) -> Result<Commit> {
        self.submit_all_async(space, vec![op])
    }

    /// [`GroupCommit::submit_async`] of records of one space that share one group commit;
    /// resolves to the last sequence.
    pub(crate) fn submit_all_async(
        self: &Arc<Self>,
        space: &SpaceId,
        ops: Vec<Op>,
    ) -> Result<Commit> {
        let waiter = Arc::new(Waiter {
            wake: Wake::Task(Mutex::new(None)),
            state: AtomicU8::new(WAITING),
            seq: AtomicU64::new(0),
        });
        let seq = self.enqueue_all(space, ops, &waiter)?;
        Ok(Commit {
            waiter,
            seq,
            wal: self.clone(),
        })
    }

    /// Queues records of one space that share one group commit; `done` is called (on the
    /// waker thread) once they are durable and applied, or failed. Returns the last sequence.
    pub(crate) fn submit_callback(
        &self,
        space: &SpaceId,
        ops: Vec<Op>,
        done: DurableCallback,
    ) -> Result<u64> {
        let waiter = Arc::new(Waiter {
            wake: Wake::Callback(Mutex::new(Some(done))),
            state: AtomicU8::new(WAITING),
            seq: AtomicU64::new(0),
        });
        self.enqueue_all(space, ops, &waiter)
    }

    /// Queues a record for the next group commit; `waiter` is told when it is durable and
    /// applied. Blocks only while the next batch is full (back-pressure).
    ///
    /// Records queued together (one space's, in one call) take consecutive sequences in the
    /// same batch: they are durable together or none is acknowledged. Every record is checked
    /// against the size limit before any is queued. Returns the last sequence.
    fn enqueue_all(&self, space: &SpaceId, ops: Vec<Op>, waiter: &Arc<Waiter>) -> Result<u64> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StorageError::Closed);
        }
        check_entry(ops.len());
        let mut encoded = Vec::with_capacity(ops.len());
        let mut size = 0;
        for op in ops {
            let mut payload = Vec::new();
            op.encode_payload(&mut payload);
            let record = RECORD_HEADER_LEN + space.as_str().len() + payload.len();
            if record > self.max_record_bytes {
                return Err(StorageError::RecordTooLarge {
                    size: record,
                    limit: self.max_record_bytes,
                });
            }
            size += record;
            encoded.push((op, payload));
        }
        for (op, _) in &encoded {
            self.stats
                .changes
                .fetch_add(op.changes() as u64, Ordering::Relaxed);
        }
        self.stats
            .activity
            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        let mut c = self.commit.lock();
        // Back-pressure: wait while the next batch is full.
        while c.failed.is_none()
            && !c.stopping
            && !c.buf.is_empty()
            && c.buf.len() + size > self.max_pending_bytes
        {
            self.room_cv.wait(&mut c);
        }
        if let Some(f) = &c.failed {
            return Err(StorageError::Latched(f.clone()));
        }
        if c.stopping {
            return Err(StorageError::Closed);
        }
        let mut seq = 0;
        let at = self.clock.realtime_us();
        for (op, payload) in encoded {
            seq = c.next_seq;
            c.next_seq += 1;
            encode_record(&mut c.buf, seq, at, space, op.code(), &payload);
            c.pending.push(Pending {
                seq,
                space: space.clone(),
                op,
            });
        }
        waiter.seq.store(seq, Ordering::Release);
        c.waiters.push(waiter.clone());
        let wake = std::mem::take(&mut c.committer_idle);
        drop(c);
        if let Some(inline) = &self.inline {
            // No committer thread: the writer commits what is queued, its own records
            // included, before it returns.
            let apply = inline.apply.lock().clone();
            if let Some(apply) = apply {
                let mut handle = inline.handle.lock();
                let mut spare = Vec::new();
                self.commit_queued(&*apply, &mut spare, &mut handle);
            }
        } else if wake {
            self.committer_cv.notify_one();
        }
        Ok(seq)
    }

    /// Starts the commit pipeline: the committer thread, which takes everything queued,
    /// writes it, fsyncs once and applies it in sequence order, and the waker thread, which
    /// wakes the writers of each finished batch (in order) while the committer goes on.
    pub(crate) fn start_pipeline(
        self: &Arc<Self>,
        apply: Arc<ApplyBatch>,
        committer_nice: i32,
    ) -> std::io::Result<Option<(JoinHandle<()>, JoinHandle<()>)>> {
        if let Some(inline) = &self.inline {
            *inline.apply.lock() = Some(apply);
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::channel::<WakeList>();
        let waker = std::thread::Builder::new()
            .name("engram-wal-waker".into())
            .spawn(move || {
                crate::process::abort_on_panic("engram-wal-waker", || {
                    for (waiters, state) in rx {
                        for w in waiters {
                            w.finish(state);
                        }
                    }
                })
            })?;
        *self.waker.lock() = Some(tx);
        let wal = self.clone();
        let committer = std::thread::Builder::new()
            .name("engram-wal-committer".into())
            .spawn(move || {
                crate::process::abort_on_panic("engram-wal-committer", || {
                    crate::process::set_current_thread_nice(committer_nice);
                    wal.committer_loop(&*apply)
                })
            });
        match committer {
            Ok(c) => Ok(Some((c, waker))),
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
    fn committer_loop(&self, apply: &ApplyBatch) {
        let mut spare = Vec::new();
        let mut handle: Option<SyncHandle> = None;
        loop {
            {
                let mut c = self.commit.lock();
                while c.pending.is_empty() && !c.stopping {
                    c.committer_idle = true;
                    self.committer_cv.wait(&mut c);
                }
                c.committer_idle = false;
            }
            if !self.commit_queued(apply, &mut spare, &mut handle) {
                return;
            }
        }
    }

    /// Takes everything queued as one batch, writes it, fsyncs it, applies it and hands its
    /// writers to the waker (or wakes them). False when nothing was queued.
    fn commit_queued(
        &self,
        apply: &ApplyBatch,
        spare: &mut Vec<u8>,
        handle: &mut Option<SyncHandle>,
    ) -> bool {
        {
            let mut c = self.commit.lock();
            if c.pending.is_empty() {
                return false;
            }
            let buf = std::mem::replace(&mut c.buf, std::mem::take(spare));
            let batch = std::mem::take(&mut c.pending);
            let waiters = std::mem::take(&mut c.waiters);
            check_batch(
                buf.len(),
                batch.len(),
                waiters.len(),
                self.max_record_bytes,
                self.max_pending_bytes,
            );
            let latched = c.failed.is_some();
            drop(c);
            self.room_cv.notify_all();
            let result = if latched {
                Err(StorageError::Latched("an earlier write failed".into()))
            } else {
                self.write_and_sync(&buf, &batch, handle)
            };
            *spare = buf;
            spare.clear();
            self.finish_batch(
                DurableBatch {
                    batch,
                    waiters,
                    result,
                },
                apply,
            );
        }
        true
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
            check_sequences(self.written_seq(), batch.iter().map(|p| p.seq));
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
    fn finish_batch(&self, job: DurableBatch, apply: &ApplyBatch) {
        let last = job.batch.last().map_or(0, |p| p.seq);
        let result = job.result.and_then(|()| {
            check_watermarks(last, self.written_seq());
            self.durable_seq.fetch_max(last, Ordering::SeqCst);
            apply(job.batch)
        });
        let mut c = self.commit.lock();
        let state = match result {
            Ok(()) => {
                c.applied_seq = last;
                self.last_commit_us
                    .store(self.clock.monotonic().as_micros() as u64, Ordering::Relaxed);
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

    /// Stops the commit pipeline: the committer finishes every queued record (their writers
    /// are waiting), then stops; the waker stops once nothing can send to it. Joins both.
    pub(crate) fn stop(&self, committer: Option<JoinHandle<()>>, waker: Option<JoinHandle<()>>) {
        self.commit.lock().stopping = true;
        self.committer_cv.notify_all();
        // The committer first (it drains the queue), then the waker once nothing can send.
        if let Some(h) = committer {
            let _ = h.join();
        }
        self.waker.lock().take();
        if let Some(h) = waker {
            let _ = h.join();
        }
    }
}
