//! A space's immutable columnar segment files. Byte layout: `docs/format.md`.

mod bloom;
mod builder;
mod format;
mod reader;

pub use builder::{write_memories, write_segment, RowData, WritePace};
pub use format::{parse_segment_file_name, segment_file_name, SEGMENT_FORMAT_VERSION};
pub use reader::{Lookup, Segment, SegmentInfo};
