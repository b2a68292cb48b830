//! Tunables of the storage engine, with defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, RealClock};

/// Options of a [`crate::Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A WAL file rolls to a new one past this size.
    pub wal_segment_bytes: u64,
    /// Write WAL files full of zeros before use, so group commits' fsyncs change no file
    /// size. Measured on ext4 with `engram-bench storage` (8 s windows, 64 writers): throughput
    /// up (threads 47.7k -> 60.1k/s, 16 writers 22.4k -> 35.8k/s, p50 1.25 -> 0.55 ms) but
    /// zero-filling doubles the bytes written and the P99 got worse (threads 7.95 -> 11.75 ms,
    /// async tasks 10.5 -> 14.7 ms). Off by default, for the tail.
    pub wal_preallocate: bool,
    /// The largest WAL record accepted (header, space id and payload).
    pub max_record_bytes: usize,
    /// Bytes of records waiting for the next group commit before writers wait (back-pressure).
    pub max_pending_bytes: usize,
    /// Flush every space when the WAL holds more than this.
    pub wal_flush_bytes: u64,
    /// Flush every space when memtables hold more than this.
    pub memtable_flush_bytes: usize,
    /// Flush a space whose active memtable holds this many entries, whatever the load (0: no
    /// such limit). Memtables are searched exactly, so an engine that recalls sets this to
    /// bound the scan (`engram-engine` uses 4,096); the storage engine alone needs no limit.
    pub memtable_max_rows: usize,
    /// How many memories a space may owe their automatic links (made in the background after
    /// the acknowledgement) before writes asking for more wait (the engine's
    /// `links_backlogged`). While the active memtable holds such memories the
    /// `memtable_max_rows` flush waits for the linker, so a burst is linked in the memtable;
    /// the other flushes (memory, WAL size, idleness, an explicit compaction) make the links
    /// still owed themselves.
    pub memtable_pending_max_rows: usize,
    /// Flush dirty spaces once no write has come for this long (the "low load" trigger).
    pub idle_flush_after: Duration,
    /// Merge a space's segments once it has more than this many.
    pub max_segments_per_space: usize,
    /// While the node takes more than this many changes a second (memories remembered or
    /// forgotten, links; over the last second), merges
    /// wait for a quieter moment (0: never wait): compaction belongs to low load, when its
    /// CPU and write-back do not compete with requests. A space merges meanwhile only past
    /// `merge_defer_max_segments`.
    pub merge_defer_records_per_s: u64,
    /// Under load (see `merge_defer_records_per_s`), a space merges once it has more than
    /// this many segments (at least `max_segments_per_space`).
    pub merge_defer_max_segments: usize,
    /// Open spaces kept loaded; clean ones beyond this are released, least recently used first.
    pub max_open_spaces: usize,
    /// Run the background compactor thread.
    pub background_compaction: bool,
    /// No committer or waker thread: each writer writes, fsyncs and applies what is queued
    /// (its own records included) before its write returns, and durability callbacks run on
    /// its thread. One commit at a time, no group forming across threads: for a deterministic
    /// simulation, where every write comes from one thread; never for a server.
    pub inline_commit: bool,
    /// How often the compactor looks for work.
    pub compaction_tick: Duration,
    /// Nice value of the WAL committer thread (-20..=19, 0 leaves it alone). Every
    /// acknowledgement waits on this one thread, so it is raised by default: on a 2-core
    /// machine under 64 writers it was otherwise preempted for whole scheduler slices
    /// (4-5 ms) between fsync and wake-up. Best effort: without `CAP_SYS_NICE` the thread
    /// keeps normal priority and the log says so once.
    pub committer_nice: i32,
    /// Runs the background indexer in the `SCHED_IDLE` class (Linux), so that index builds
    /// (seconds of CPU each) only take what requests leave. Where that is unavailable, or
    /// with `false`, the indexer runs at `indexer_nice`.
    pub indexer_idle_class: bool,
    /// Nice value of the background indexer thread when it is not in the idle class (0
    /// leaves it alone).
    pub indexer_nice: i32,
    /// Segments with at least this many rows get an HNSW index (built in the background);
    /// smaller ones are searched by an exact scan, which is as fast at that size. Measured
    /// with `ENGRAM_BENCH_PARTS=crossover engram-bench recall` (768-d, ef 64, k 10): exact
    /// 39 us against HNSW 59 us at 1,024 rows, 164 against 125 us at 4,096.
    pub index_min_rows: usize,
    /// Parameters of the HNSW indexes built.
    pub hnsw: crate::index::HnswParams,
    /// While the node takes more than this many changes a second (a batch counts each memory
    /// it carries), the indexer leaves new
    /// segments alone (0: never): builds would compete with requests for CPU and cache, and
    /// segments written under such load are soon merged, their index built again.
    pub index_defer_records_per_s: u64,
    /// The longest a segment's index is put off that way.
    pub index_defer_max: Duration,
    /// Background flushes and merges write segments no faster than this on average (bytes
    /// per second; 0: unpaced), so that their write-back leaves room in the device queue for
    /// the WAL's fsyncs. Recovery and explicit compactions are not paced. See
    /// [`crate::segment::WritePace`] for the measurements.
    pub background_write_bytes_per_s: u64,
    /// Background flushes and merges sync the segment being written every this many bytes.
    pub background_sync_bytes: u64,
    /// Where the store, its background workers and the engine read the time: record
    /// timestamps, idleness, the load measure and the deferrals. The machine's by default;
    /// a [`crate::ManualClock`] in tests, so that no decision depends on the machine's speed.
    pub clock: Arc<dyn Clock>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            wal_segment_bytes: 64 << 20,
            wal_preallocate: false,
            max_record_bytes: 32 << 20,
            max_pending_bytes: 64 << 20,
            wal_flush_bytes: 1 << 30,
            memtable_flush_bytes: 1 << 30,
            memtable_max_rows: 0,
            memtable_pending_max_rows: 131_072,
            idle_flush_after: Duration::from_secs(2),
            max_segments_per_space: 8,
            merge_defer_records_per_s: 1000,
            merge_defer_max_segments: 32,
            max_open_spaces: 4096,
            background_compaction: true,
            inline_commit: false,
            compaction_tick: Duration::from_millis(100),
            committer_nice: -10,
            index_min_rows: 2048,
            indexer_idle_class: true,
            indexer_nice: 19,
            hnsw: crate::index::HnswParams::default(),
            index_defer_records_per_s: 1000,
            index_defer_max: Duration::from_secs(30),
            background_write_bytes_per_s: 200_000_000,
            background_sync_bytes: 4 << 20,
            clock: Arc::new(RealClock::default()),
        }
    }
}

impl StoreOptions {
    /// The pace of background flushes and merges.
    pub fn background_pace(&self) -> crate::segment::WritePace {
        crate::segment::WritePace {
            sync_every: self.background_sync_bytes,
            bytes_per_s: self.background_write_bytes_per_s,
        }
    }

    /// Checks the relations between options: a record must fit in a WAL file and in a batch.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_record_bytes as u64 > self.wal_segment_bytes {
            return Err(format!(
                "max_record_bytes ({}) exceeds wal_segment_bytes ({})",
                self.max_record_bytes, self.wal_segment_bytes
            ));
        }
        if self.max_record_bytes > self.max_pending_bytes {
            return Err(format!(
                "max_record_bytes ({}) exceeds max_pending_bytes ({})",
                self.max_record_bytes, self.max_pending_bytes
            ));
        }
        if !(-20..=19).contains(&self.indexer_nice) {
            return Err(format!(
                "indexer_nice ({}) must be within -20..=19",
                self.indexer_nice
            ));
        }
        if !(-20..=19).contains(&self.committer_nice) {
            return Err(format!(
                "committer_nice ({}) must be within -20..=19",
                self.committer_nice
            ));
        }
        self.hnsw
            .validate()
            .map_err(|e| format!("hnsw parameters: {e}"))?;
        if self.background_sync_bytes == 0 {
            return Err("background_sync_bytes must be at least 1".into());
        }
        if self.max_open_spaces == 0 {
            return Err("max_open_spaces must be at least 1".into());
        }
        Ok(())
    }
}
