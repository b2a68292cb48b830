//! Engram's storage engine: one write-ahead log per node with group commit, columnar
//! memory-mapped segments per space, crash-proof recovery. Byte layouts: `docs/format.md`.

mod codec;
pub mod disk;
pub mod error;
pub mod fault;
pub mod index;
pub mod lexical;
pub mod memtable;
pub mod meta;
pub mod numa;
pub mod op;
mod options;
pub mod process;
pub mod quarantine;
mod recovery;
pub mod segment;
pub mod space;
mod store;
pub mod wal;

pub use disk::{Disk, DiskFile, Mapped, RealDisk};
pub use error::{Result, StorageError};
pub use op::Op;
pub use options::StoreOptions;
pub use quarantine::QuarantineReport;
pub use space::{Hit, LexHit};
pub use store::{Commit, RecoveryReport, SpaceStatus, Store, StoreStats, StoreStatus};
