//! Segment file layout (version 1).
//!
//! ```text
//! [column 1][pad][column 2][pad]...[column 8][pad][footer: 320 bytes]
//! ```
//! Every column starts at a multiple of 64 bytes. The footer is a 64-byte header followed by
//! a directory of 8 entries of 32 bytes:
//!
//! ```text
//! header  0  8 magic "ENGRSEG\0"      directory entry  0 4 column kind
//!         8  4 format version (1)                      4 4 crc32c of the column bytes
//!        12  4 dimension                               8 8 offset
//!        16  8 rows                                   16 8 length
//!        24  8 tombstones                             24 8 reserved, 0
//!        32  8 min sequence
//!        40  8 max sequence
//!        48  4 column count (8)
//!        52  4 embedding row stride, in f32
//!        56  4 reserved, 0
//!        60  4 crc32c of header bytes 0..60 and the directory
//! ```
//! Fixed columns: embeddings (rows x stride f32, stride = dimension rounded up to 16 so every
//! row is 64-byte aligned), confidence (rows x f32), timestamps (rows x i64). Variable columns
//! (ids, content, metadata, links, tombstones): `n + 1` u64 offsets into the heap that follows
//! them; row i is `heap[offsets[i]..offsets[i + 1]]`.

pub const SEGMENT_MAGIC: [u8; 8] = *b"ENGRSEG\0";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const COLUMN_COUNT: usize = 8;
pub const DIR_ENTRY_LEN: usize = 32;
pub const FOOTER_LEN: usize = HEADER_LEN + COLUMN_COUNT * DIR_ENTRY_LEN;
pub const ALIGN: usize = 64;

const _: () = assert!(FOOTER_LEN.is_multiple_of(ALIGN));

/// Column kinds, in file order.
pub mod col {
    pub const IDS: u32 = 1;
    pub const EMBEDDINGS: u32 = 2;
    pub const CONFIDENCE: u32 = 3;
    pub const TIMESTAMPS: u32 = 4;
    pub const CONTENT: u32 = 5;
    pub const METADATA: u32 = 6;
    pub const LINKS: u32 = 7;
    pub const TOMBSTONES: u32 = 8;
}

/// f32 per embedding row: the dimension rounded up to a multiple of 16 (64 bytes).
pub fn stride_for(dimension: usize) -> usize {
    dimension.div_ceil(16) * 16
}

pub fn segment_file_name(min_seq: u64, max_seq: u64) -> String {
    format!("{min_seq:020}-{max_seq:020}.seg")
}

/// `(min, max)` sequence named by a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    if !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (min, max) = (a.parse().ok()?, b.parse().ok()?);
    (min <= max).then_some((min, max))
}
