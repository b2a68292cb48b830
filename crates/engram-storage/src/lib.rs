//! Engram's storage engine: one write-ahead log per node with group commit, columnar
//! memory-mapped segments per space, crash-proof recovery. Byte layouts: `docs/format.md`.
//!
//! What the crate offers is re-exported here: the [`Store`] (its public API), what it takes
//! and reports, the [`Disk`] it runs on (real, or [`FaultDisk`] for fault injection) and the
//! [`Clock`] it reads (real, or [`ManualClock`] in tests; set in [`StoreOptions::clock`]).
//! Four modules are public as sub-namespaces: [`wal`], [`segment`] and [`index`] (the on-disk
//! structures' encoders, decoders and readers, for the format fixtures, the fuzz targets and
//! `engram-bench`'s kernel figures) and [`process`] (thread and process tuning a host binary
//! calls). Everything else is the crate's own.
//!
//! Where things live:
//! - [`Store`] (`store.rs`): the public API, thin; it opens the node and delegates.
//! - `node.rs`: the state the API, the commit pipeline and the workers share, and the apply
//!   step (a durable record becomes space state, the same at commit and at replay).
//! - `wal/`: the write-ahead log: records, files, scanning, the writer, and group commit
//!   (`wal/commit.rs`: written vs durable, waking writers, the latch).
//! - `recovery.rs`: reading the WAL back at startup and replaying it ([`RecoveryReport`]).
//! - `catalog.rs`: the spaces known to the node, lazy opening, the LRU of open spaces.
//! - `space/`: one space's state and reads, its searches, the engine's [`SpaceView`], the
//!   files derived from a segment (`.hnsw`, `.lex`).
//! - `compaction/`: the shared background workers (compactor, indexer, load measure) and
//!   what a flush and a merge do to a space.
//! - `segment/`, `index/`, `lexical.rs`, `memtable.rs`, `meta.rs`, `op.rs`: the data
//!   structures: sealed segments, HNSW graphs, BM25 postings, memtables, a space's metadata,
//!   the WAL's operations.
//! - `disk.rs`, `clock.rs`, `fault.rs`, `quarantine.rs`, `numa.rs`, `process.rs`, `options.rs`,
//!   `stats.rs`, `error.rs`, `codec.rs`: the machinery around them.

mod autolink;
mod catalog;
mod clock;
pub mod codec;
mod compaction;
mod disk;
mod error;
mod fault;
pub mod index;
mod lexical;
mod memtable;
mod meta;
mod node;
mod numa;
mod op;
mod options;
pub mod process;
mod quarantine;
mod raft;
mod recovery;
pub mod requests;
pub mod segment;
mod space;
mod stats;
mod store;
pub mod wal;

pub use autolink::{AutoLinker, LinkReader};
pub use clock::{now_us, Clock, ManualClock, RealClock};
pub use disk::{Disk, DiskFile, Mapped, RealDisk};
pub use error::{Result, StorageError};
pub use fault::FaultDisk;
pub use lexical::{lex_path, SegmentLex, MAX_QUERY_TERMS};
pub use meta::{SpaceMeta, SPACE_META_FILE};
pub use op::{code as op_code, AutoLinked, Op};
pub use options::StoreOptions;
pub use quarantine::QuarantineReport;
pub use raft::{
    Command, EntryBody, GroupMeta, LogEntry, LogPos, RaftApplied, RaftMembership, RaftNode,
    RaftVote, MAX_ENTRY_COMMANDS, MAX_MEMBERSHIP_CONFIGS, MAX_MEMBERSHIP_NODES, MAX_REQUEST_KEY,
    RAFT_STATE_FILE,
};
pub use recovery::RecoveryReport;
pub use space::{EmbeddingSnapshot, Hit, LexHit, SpaceView};
pub use stats::{SpaceStatus, StoreStats, StoreStatus};
pub use store::keyed::{RequestKey, RequestState};
pub use store::raft::{RaftRecord, RaftRetention};
pub use store::replicated::ApplyOutcome;
pub use store::Store;
pub use wal::commit::{Commit, DurableCallback};
