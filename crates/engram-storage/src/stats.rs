//! What the store reports about itself: lock-free counters ([`StoreStats`]) and the figures of
//! the node ([`StoreStatus`]) and of one space ([`SpaceStatus`]).

use std::sync::atomic::AtomicU64;

use engram_core::SpaceId;

use crate::quarantine::QuarantineReport;
use crate::recovery::RecoveryReport;

/// Counters, readable without locks.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub records: AtomicU64,
    /// Changes submitted (a batch counts each memory it carries): the load measure behind
    /// the index and merge deferrals.
    pub changes: AtomicU64,
    /// Anything that may give the compactor work: every record queued, every replicated
    /// entry applied. A pass that found nothing to do is not repeated until it moves.
    pub activity: AtomicU64,
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
    /// Memories whose automatic links are still to be made (see `autolink.rs`).
    pub pending_links: usize,
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
