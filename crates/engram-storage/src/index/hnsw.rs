//! Reading an HNSW index file in place from its mapping. Everything is validated on open
//! (header, checksums, the binding to its segment, and the whole graph structure: every
//! neighbour row, count and level), so searches read the mapped arrays without further checks.
//! Malformed bytes give [`StorageError::Corrupted`] (a newer version gives
//! [`StorageError::UnsupportedVersion`]), never a panic. Nothing is rebuilt or written.

use std::path::Path;

use super::format::*;
use super::params::HnswParams;

use super::view::{CodesView, GraphView};
use crate::disk::{Disk, Mapped};
use crate::error::{corrupted, IoContext, Result, StorageError};
use crate::segment::Segment;

/// An open index file: the graph read in place from the mapping. Vectors are read from the
/// segment it is bound to (or any [`super::Vectors`] with the same rows).
#[derive(Debug, Clone)]
pub struct Hnsw {
    map: Mapped,
    info: HnswInfo,
    binding: SegmentBinding,
    /// `(offset, length)` in bytes, per section.
    sections: [(usize, usize); SECTION_COUNT],
    /// `(offset, length)` of the codes and scales (length 0 in a version 1 file).
    codes: (usize, usize),
    scales: (usize, usize),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// `bytes` as u32. The caller has checked alignment and length.
fn as_u32s(bytes: &[u8]) -> &[u32] {
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(4) && bytes.len().is_multiple_of(4),
        "misaligned u32 section"
    );
    // SAFETY: the pointer is 4-byte aligned and the length a multiple of 4 (asserted above;
    // `from_mapped` checked that the mapping starts 64-byte aligned and every section starts at
    // a multiple of 64); every bit pattern is a valid u32; the target is little-endian (checked
    // in `codec`), as the format is. The slice borrows `bytes`, so the mapping outlives it.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u32>(), bytes.len() / 4) }
}

/// `bytes` as f32. The caller has checked alignment and length.
fn as_f32s(bytes: &[u8]) -> &[f32] {
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(4) && bytes.len().is_multiple_of(4),
        "misaligned f32 section"
    );
    // SAFETY: as for `as_u32s`; every bit pattern is a valid f32 (the scales were checked to
    // be finite on open).
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) }
}

/// `bytes` as u64. The caller has checked alignment and length.
fn as_u64s(bytes: &[u8]) -> &[u64] {
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(8) && bytes.len().is_multiple_of(8),
        "misaligned u64 section"
    );
    // SAFETY: as for `as_u32s`, with 8-byte alignment and a multiple of 8 bytes.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u64>(), bytes.len() / 8) }
}

impl Hnsw {
    /// Maps and validates the index file `path` of `segment`. Only reads.
    pub fn open(disk: &dyn Disk, path: &Path, segment: &Segment) -> Result<Hnsw> {
        let map = disk.map(path).at(path)?;
        Self::from_mapped(map, &SegmentBinding::of(segment)).map_err(|e| match e {
            StorageError::Corrupted(m) => {
                StorageError::Corrupted(format!("{}: {m}", path.display()))
            }
            StorageError::UnsupportedVersion(m) => {
                StorageError::UnsupportedVersion(format!("{}: {m}", path.display()))
            }
            e => e,
        })
    }

    /// Validates and wraps mapped index bytes, which must be bound to the segment `binding`
    /// describes (the entry point of the fuzz target).
    pub fn from_mapped(map: Mapped, binding: &SegmentBinding) -> Result<Hnsw> {
        let b: &[u8] = &map;
        if b.len() < HEADER_LEN {
            return corrupted(format!(
                "HNSW index of {} bytes is shorter than its header",
                b.len()
            ));
        }
        if !(b.as_ptr() as usize).is_multiple_of(ALIGN) {
            return corrupted("HNSW index bytes are not 64-byte aligned in memory");
        }
        if b[0..8] != INDEX_MAGIC {
            return corrupted("not an HNSW index (bad magic)");
        }
        if crc32c::crc32c(&b[..HEADER_CRC_AT]) != u32_at(b, HEADER_CRC_AT) {
            return corrupted("HNSW index header checksum mismatch");
        }
        let version = u32_at(b, 8);
        if !(MIN_INDEX_FORMAT_VERSION..=INDEX_FORMAT_VERSION).contains(&version) {
            return Err(StorageError::UnsupportedVersion(format!(
                "HNSW index format version {version} is not supported (this build reads \
                 {MIN_INDEX_FORMAT_VERSION} to {INDEX_FORMAT_VERSION})"
            )));
        }
        let info = HnswInfo {
            dimension: u32_at(b, 12) as usize,
            rows: usize::try_from(u64_at(b, 16)).unwrap_or(usize::MAX),
            m: u32_at(b, 24) as usize,
            m0: u32_at(b, 28) as usize,
            ef_construction: u32_at(b, 32) as usize,
            max_level: u32_at(b, 36) as usize,
            seed: u64_at(b, 40),
            entry_point: u32_at(b, 48),
        };
        let bound = SegmentBinding {
            footer_crc: u32_at(b, 52),
            file_len: u64_at(b, 56),
            rows: u64_at(b, 16),
            dimension: u32_at(b, 12),
        };
        check_header(&info)?;
        if bound != *binding {
            return corrupted(format!(
                "HNSW index belongs to another segment: it was built for a segment of {} bytes, \
                 footer CRC {:#010x}, {} rows x {}; this one has {} bytes, footer CRC {:#010x}, \
                 {} rows x {}",
                bound.file_len,
                bound.footer_crc,
                bound.rows,
                bound.dimension,
                binding.file_len,
                binding.footer_crc,
                binding.rows,
                binding.dimension
            ));
        }

        // Sections: where they must be, given the rows and the upper links' length.
        let entry = |i: usize| {
            let at = SECTION_TABLE_AT + i * SECTION_ENTRY_LEN;
            (u64_at(b, at), u64_at(b, at + 8), u32_at(b, at + 16))
        };
        let upper_len = entry(sec::UPPER_LINKS).1;
        if !upper_len.is_multiple_of(4) || upper_len > b.len() as u64 {
            return corrupted(format!(
                "HNSW upper links section of {upper_len} bytes (not whole u32 or past the file)"
            ));
        }
        let code_dimension = if version >= 2 { info.dimension } else { 0 };
        let Some(layout) = Layout::new(info.rows, info.m0, upper_len as usize / 4, code_dimension)
        else {
            return corrupted(format!("HNSW index of {} rows overflows", info.rows));
        };
        if layout.file_len != b.len() {
            return corrupted(format!(
                "HNSW index is {} bytes, its header describes {} bytes",
                b.len(),
                layout.file_len
            ));
        }
        let names = ["levels", "layer 0", "upper offsets", "upper links"];
        for (i, &(offset, len)) in layout.sections.iter().enumerate() {
            let (o, l, crc) = entry(i);
            if (o, l) != (offset as u64, len as u64) {
                return corrupted(format!(
                    "HNSW {} section at {o} of {l} bytes, expected at {offset} of {len} bytes",
                    names[i]
                ));
            }
            if crc32c::crc32c(&b[offset..offset + len]) != crc {
                return corrupted(format!("HNSW {} section checksum mismatch", names[i]));
            }
        }
        if version >= 2 {
            for (name, (offset, len), at) in [
                ("codes", layout.codes, CODES_CRC_AT),
                ("scales", layout.scales, SCALES_CRC_AT),
            ] {
                if crc32c::crc32c(&b[offset..offset + len]) != u32_at(b, at) {
                    return corrupted(format!("HNSW {name} section checksum mismatch"));
                }
            }
            let (offset, len) = layout.scales;
            if let Some(row) = b[offset..offset + len]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .position(|x| !(x.is_finite() && x >= 0.0))
            {
                return corrupted(format!(
                    "HNSW code scale of row {row} is not a finite number >= 0"
                ));
            }
        }
        let hnsw = Hnsw {
            info,
            binding: bound,
            sections: layout.sections,
            codes: layout.codes,
            scales: layout.scales,
            map,
        };
        check_graph(&hnsw.view())?;
        Ok(hnsw)
    }

    pub fn info(&self) -> HnswInfo {
        self.info
    }

    /// The segment this index is bound to.
    pub fn binding(&self) -> SegmentBinding {
        self.binding
    }

    /// The mapped file.
    pub fn mapped(&self) -> &Mapped {
        &self.map
    }

    /// The rows' codes (a version 2 file), which [`Hnsw::search`] walks the graph with.
    pub fn codes(&self) -> Option<CodesView<'_>> {
        if self.scales.1 == 0 && self.info.rows > 0 {
            return None;
        }
        let codes = &self.map[self.codes.0..self.codes.0 + self.codes.1];
        // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
        let codes = unsafe { std::slice::from_raw_parts(codes.as_ptr().cast::<i8>(), codes.len()) };
        Some(CodesView {
            codes,
            scales: as_f32s(&self.map[self.scales.0..self.scales.0 + self.scales.1]),
            dimension: self.info.dimension,
        })
    }

    /// The mapped graph, to search ([`GraphView::search`]).
    pub fn view(&self) -> GraphView<'_> {
        let section = |i: usize| {
            let (offset, len) = self.sections[i];
            &self.map[offset..offset + len]
        };
        GraphView::new(
            &self.info,
            section(sec::LEVELS),
            as_u32s(section(sec::LAYER0)),
            as_u64s(section(sec::UPPER_OFFSETS)),
            as_u32s(section(sec::UPPER_LINKS)),
        )
    }
}

/// Header facts on their own.
fn check_header(info: &HnswInfo) -> Result<()> {
    let max_dim = engram_core::limits::MAX_DIMENSION;
    if info.dimension == 0 || info.dimension > max_dim {
        return corrupted(format!(
            "HNSW dimension {} outside 1..={max_dim}",
            info.dimension
        ));
    }
    if info.rows > MAX_ROWS {
        return corrupted(format!(
            "HNSW index of {} rows exceeds MAX_ROWS ({MAX_ROWS})",
            info.rows
        ));
    }
    let params = HnswParams {
        m: info.m,
        m0: info.m0,
        ef_construction: info.ef_construction,
        seed: info.seed,
    };
    if let Err(e) = params.validate() {
        return corrupted(format!("HNSW header: {e}"));
    }
    if info.max_level > MAX_LEVEL {
        return corrupted(format!(
            "HNSW max level {} exceeds MAX_LEVEL ({MAX_LEVEL})",
            info.max_level
        ));
    }
    if info.rows == 0 {
        if info.entry_point != NO_ENTRY || info.max_level != 0 {
            return corrupted("empty HNSW index with an entry point or levels");
        }
    } else if info.entry_point as usize >= info.rows {
        return corrupted(format!(
            "HNSW entry point {} is not a row (rows: {})",
            info.entry_point, info.rows
        ));
    }
    Ok(())
}

/// The graph's structure, exhaustively: levels, entry point, upper offsets, and every
/// neighbour list (count within its slot, rows in range, present on the layer).
fn check_graph(g: &GraphView<'_>) -> Result<()> {
    let rows = g.rows();
    if let Some((row, &l)) = g
        .levels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) > g.max_level)
    {
        return corrupted(format!(
            "HNSW row {row} has level {l}, above the max level {}",
            g.max_level
        ));
    }
    if rows > 0 && usize::from(g.levels[g.entry as usize]) != g.max_level {
        return corrupted(format!(
            "HNSW entry point {} has level {}, not the max level {}",
            g.entry, g.levels[g.entry as usize], g.max_level
        ));
    }
    // Upper offsets follow from the levels.
    let width = g.m as u64 + 1;
    let mut expect = 0u64;
    for (row, pair) in g.offsets.windows(2).enumerate() {
        if pair[0] != expect {
            return corrupted(format!(
                "HNSW upper offset of row {row} is {}, expected {expect}",
                pair[0]
            ));
        }
        expect += u64::from(g.levels[row]) * width;
    }
    if g.offsets.last().copied() != Some(expect) || expect != g.upper.len() as u64 {
        return corrupted(format!(
            "HNSW upper offsets end at {:?}, the upper links hold {} words (levels need {expect})",
            g.offsets.last(),
            g.upper.len()
        ));
    }
    // Layer 0.
    for (row, slot) in g.layer0.chunks_exact(g.m0 + 1).enumerate() {
        let count = slot[0] as usize;
        if count > g.m0 {
            return corrupted(format!(
                "HNSW row {row} has {count} layer-0 neighbours, more than m0 = {}",
                g.m0
            ));
        }
        if let Some(&n) = slot[1..=count].iter().find(|&&n| n as usize >= rows) {
            return corrupted(format!(
                "HNSW row {row}: layer-0 neighbour {n} is not a row (rows: {rows})"
            ));
        }
    }
    // Upper layers.
    for (row, &level) in g.levels.iter().enumerate() {
        for layer in 1..=usize::from(level) {
            let at =
                usize::try_from(g.offsets[row]).unwrap_or(usize::MAX) + (layer - 1) * (g.m + 1);
            let count = g.upper[at] as usize;
            if count > g.m {
                return corrupted(format!(
                    "HNSW row {row} has {count} neighbours on layer {layer}, more than m = {}",
                    g.m
                ));
            }
            for &n in &g.upper[at + 1..at + 1 + count] {
                if n as usize >= rows {
                    return corrupted(format!(
                        "HNSW row {row}: layer-{layer} neighbour {n} is not a row (rows: {rows})"
                    ));
                }
                if usize::from(g.levels[n as usize]) < layer {
                    return corrupted(format!(
                        "HNSW row {row}: layer-{layer} neighbour {n} is not on layer {layer}"
                    ));
                }
            }
        }
    }
    Ok(())
}
