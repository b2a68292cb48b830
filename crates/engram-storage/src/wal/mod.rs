//! The node's write-ahead log: one per node, shared by every space, in segment files.
//! Byte layout and commit protocol: `docs/format.md`.
//!
//! - `record.rs`: one record's bytes (header, CRC32C, payload); `file.rs`: a WAL file's name
//!   and header; `scan.rs`: reading a file back, verifying every record (torn tails, corrupt
//!   regions). These are public: the format fixtures and the fuzz targets use them.
//! - `writer.rs`: appending to the files, rolling, preallocating, deleting after a checkpoint.
//! - `commit.rs`: group commit: the queue, the committer and waker threads, the `written` and
//!   `durable` watermarks, the latch after a failure; `check.rs`: the invariants it holds
//!   (and flushes and merges with it), asserted at run time.

pub(crate) mod check;
pub(crate) mod commit;
mod file;
mod record;
mod scan;
mod writer;

pub use file::{
    parse_wal_file_name, wal_file_name, WalFileHeader, WAL_FILE_HEADER_LEN, WAL_FORMAT_VERSION,
};
pub use record::{
    decode_record, encode_record, DecodedRecord, RecordHeader, RECORD_HEADER_LEN, RECORD_MAGIC,
};
pub use scan::{scan_wal_file, BadRegion, ScanOutcome, ScannedRecord};
pub(crate) use writer::{is_spare_file_name, WalFileInfo, WalWriter};
