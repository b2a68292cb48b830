//! HNSW index file layout (version 2; version 1 is read too). Byte layout and rules: `docs/format.md`, section
//! "HNSW index files".
//!
//! ```text
//! [header: 192 bytes][levels][pad][layer 0][pad][upper offsets][pad][upper links][pad]
//!
//! header   0  8 magic "ENGRHNSW"          section table entry (24 bytes, 4 entries at 64)
//!          8  4 format version (1)                        0 8 offset in the file
//!         12  4 dimension                                 8 8 length in bytes
//!         16  8 rows                                     16 4 crc32c of the section bytes
//!         24  4 m                                        20 4 reserved, 0
//!         28  4 m0
//!         32  4 ef_construction
//!         36  4 max level
//!         40  8 seed
//!         48  4 entry point (u32::MAX when rows = 0)
//!         52  4 segment footer crc (binding)
//!         56  8 segment file length (binding)
//!         64 96 section table
//!        160  4 crc32c of the codes section (version 2; 0 in version 1)
//!        164  4 crc32c of the scales section (version 2; 0 in version 1)
//!        168 20 reserved, 0
//!        188  4 crc32c of header bytes 0..188
//! ```
//! Sections (each starts at a multiple of 64; padding is zero and outside every CRC):
//! 1. levels: `rows` u8, the top layer of each row;
//! 2. layer 0: `rows` fixed slots of `1 + m0` u32: a neighbour count then `m0` neighbour rows
//!    (unused slots 0);
//! 3. upper offsets: `rows + 1` u64, where row `i`'s upper-layer block starts in the upper links,
//!    counted in u32 words; `offsets[i + 1] - offsets[i] = levels[i] * (1 + m)`;
//! 4. upper links: per row with level `L >= 1`, `L` fixed slots of `1 + m` u32 (count, then `m`
//!    neighbours) for layers `1..=L`, in row order;
//! 5. (version 2) codes: `rows * dimension` i8, each row's embedding quantised
//!    (`engram_core::quant`), which the search walks the graph with;
//! 6. (version 2) scales: `rows` f32, each code's scale (finite, >= 0).
//!
//! Sections 5 and 6 are not in the section table (it has room for four): they follow the
//! upper links, each 64-byte aligned, and their checksums are in the header at 160 and 164.

use crate::segment::Segment;

pub const INDEX_MAGIC: [u8; 8] = *b"ENGRHNSW";
/// The version written.
pub const INDEX_FORMAT_VERSION: u32 = 2;
/// The oldest version read (an index without codes: searched with the segment's vectors).
pub const MIN_INDEX_FORMAT_VERSION: u32 = 1;
/// Where version 2 keeps the checksums of the codes and scales sections.
pub const CODES_CRC_AT: usize = 160;
pub const SCALES_CRC_AT: usize = 164;
pub const HEADER_LEN: usize = 192;
/// Where the header's own CRC lives (it covers bytes `0..HEADER_CRC_AT`).
pub const HEADER_CRC_AT: usize = 188;
pub const SECTION_TABLE_AT: usize = 64;
pub const SECTION_ENTRY_LEN: usize = 24;
pub const SECTION_COUNT: usize = 4;
pub const ALIGN: usize = 64;
/// The extension of index files: `<segment stem>.hnsw`.
pub const INDEX_EXTENSION: &str = "hnsw";

/// Section numbers (0-based positions in the section table).
pub mod sec {
    pub const LEVELS: usize = 0;
    pub const LAYER0: usize = 1;
    pub const UPPER_OFFSETS: usize = 2;
    pub const UPPER_LINKS: usize = 3;
}

/// Largest `m` (neighbours per node on layers >= 1).
pub const MAX_M: usize = 128;
/// Smallest `m`: with one neighbour per node the upper layers are chains.
pub const MIN_M: usize = 2;
/// Largest `m0` (neighbours per node on layer 0).
pub const MAX_M0: usize = 2 * MAX_M;
/// Largest `ef_construction`.
pub const MAX_EF_CONSTRUCTION: usize = 4096;
/// Highest layer a node can reach. With `m >= 2` a level above this has probability
/// `<= 2^-32` per node; the level generator caps at it.
pub const MAX_LEVEL: usize = 32;
/// Most rows an index holds: row numbers are u32 and `u32::MAX` means "no entry point".
pub const MAX_ROWS: usize = u32::MAX as usize - 1;
/// The entry point of an empty index.
pub const NO_ENTRY: u32 = u32::MAX;

const _: () = assert!(SECTION_TABLE_AT + SECTION_COUNT * SECTION_ENTRY_LEN <= HEADER_CRC_AT);
const _: () = assert!(HEADER_CRC_AT + 4 == HEADER_LEN);
const _: () = assert!(HEADER_LEN.is_multiple_of(ALIGN));
const _: () = assert!(MIN_M <= MAX_M && MAX_M <= MAX_M0);
const _: () = assert!(MAX_LEVEL <= u8::MAX as usize);
// A layer-0 slot (count + m0 neighbours) must keep u32 rows 4-byte aligned: it is a whole
// number of u32, and the section starts 64-byte aligned.
const _: () = assert!(ALIGN.is_multiple_of(8));

pub(crate) fn align_up(x: usize) -> Option<usize> {
    Some(x.checked_add(ALIGN - 1)? / ALIGN * ALIGN)
}

/// What ties an index to the one segment it was built from: an index is used only with a
/// segment whose footer CRC (which covers every column CRC, so the embedding column too), file
/// length, row count and dimension all match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentBinding {
    pub file_len: u64,
    pub footer_crc: u32,
    pub rows: u64,
    pub dimension: u32,
}

impl SegmentBinding {
    /// The binding of an open segment: its length, and the CRC stored at bytes 60..64 of its
    /// footer (the footer is the last 320 bytes, see `docs/format.md`).
    pub fn of(segment: &Segment) -> SegmentBinding {
        const SEGMENT_FOOTER_LEN: usize = 320;
        let bytes: &[u8] = segment.mapped();
        // `Segment::from_mapped` checked the file holds a whole footer.
        let at = bytes.len() - SEGMENT_FOOTER_LEN + 60;
        let footer_crc =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        SegmentBinding {
            file_len: bytes.len() as u64,
            footer_crc,
            rows: segment.rows() as u64,
            dimension: segment.info().dimension as u32,
        }
    }
}

/// Where the sections of an index of `rows` rows lie, given the length of its upper links in u32
/// words. All four sections are laid out back to back, each 64-byte aligned after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// `(offset, length)` in bytes, per section of the table.
    pub sections: [(usize, usize); SECTION_COUNT],
    /// `(offset, length)` of the codes and the scales (length 0 without codes).
    pub codes: (usize, usize),
    pub scales: (usize, usize),
    /// The file length: the end of the last section, rounded up to 64.
    pub file_len: usize,
}

impl Layout {
    /// `code_dimension` is the dimension of the codes (0: none, as in version 1). `None` when
    /// a size overflows.
    pub fn new(
        rows: usize,
        m0: usize,
        upper_words: usize,
        code_dimension: usize,
    ) -> Option<Layout> {
        let lens = [
            rows,
            rows.checked_mul(m0.checked_add(1)?)?.checked_mul(4)?,
            rows.checked_add(1)?.checked_mul(8)?,
            upper_words.checked_mul(4)?,
        ];
        let mut sections = [(0, 0); SECTION_COUNT];
        let mut at = HEADER_LEN;
        for (s, len) in sections.iter_mut().zip(lens) {
            *s = (at, len);
            at = align_up(at.checked_add(len)?)?;
        }
        let codes = (at, rows.checked_mul(code_dimension)?);
        at = align_up(at.checked_add(codes.1)?)?;
        let scales = (
            at,
            if code_dimension > 0 {
                rows.checked_mul(4)?
            } else {
                0
            },
        );
        at = align_up(at.checked_add(scales.1)?)?;
        Some(Layout {
            sections,
            codes,
            scales,
            file_len: at,
        })
    }
}

/// The facts in an index header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswInfo {
    pub dimension: usize,
    pub rows: usize,
    pub m: usize,
    pub m0: usize,
    pub ef_construction: usize,
    pub seed: u64,
    /// The row searches start from; [`NO_ENTRY`] when there are no rows.
    pub entry_point: u32,
    pub max_level: usize,
}
