//! The node's write-ahead log: one per node, shared by every space, in segment files.
//! Byte layout and commit protocol: `docs/format.md`.

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
pub use writer::{is_spare_file_name, WalFileInfo, WalWriter};
