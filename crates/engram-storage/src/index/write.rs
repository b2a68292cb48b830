//! Encoding an [`HnswGraph`] as an index file (`format.rs`) and writing it crash-safely: a
//! temporary file `<name>.tmp` is written and synced, renamed into place, and the directory
//! synced (the pattern of segment files).

use std::path::Path;

use super::format::*;
use super::graph::HnswGraph;
use crate::disk::{write_file_atomic, Disk};
use crate::error::{IoContext, Result, StorageError};

/// The bytes of the index file of `graph`, bound to the segment described by `binding`.
pub fn encode(graph: &HnswGraph, binding: &SegmentBinding) -> Result<Vec<u8>> {
    let info = graph.info;
    if binding.rows != info.rows as u64 || binding.dimension as usize != info.dimension {
        return Err(StorageError::Invalid(format!(
            "graph of {} rows x {} does not index a segment of {} rows x {}",
            info.rows, info.dimension, binding.rows, binding.dimension
        )));
    }
    let layout = Layout::new(info.rows, info.m0, graph.upper.len(), info.dimension)
        .ok_or_else(|| StorageError::Invalid("HNSW index size overflows".into()))?;
    let mut out = vec![0u8; layout.file_len];
    let sections: [&[u8]; SECTION_COUNT] = [
        &graph.levels,
        u32_bytes(&graph.layer0),
        u64_bytes(&graph.offsets),
        u32_bytes(&graph.upper),
    ];
    let mut table = [0u8; SECTION_COUNT * SECTION_ENTRY_LEN];
    for (i, (bytes, &(offset, len))) in sections.iter().zip(&layout.sections).enumerate() {
        assert_eq!(bytes.len(), len, "section {i} length");
        out[offset..offset + len].copy_from_slice(bytes);
        let e = &mut table[i * SECTION_ENTRY_LEN..(i + 1) * SECTION_ENTRY_LEN];
        e[0..8].copy_from_slice(&(offset as u64).to_le_bytes());
        e[8..16].copy_from_slice(&(len as u64).to_le_bytes());
        e[16..20].copy_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    }
    assert_eq!(graph.codes.len(), layout.codes.1, "codes length");
    assert_eq!(graph.scales.len() * 4, layout.scales.1, "scales length");
    let codes = i8_bytes(&graph.codes);
    let scales = f32_bytes(&graph.scales);
    out[layout.codes.0..layout.codes.0 + codes.len()].copy_from_slice(codes);
    out[layout.scales.0..layout.scales.0 + scales.len()].copy_from_slice(scales);
    let h = &mut out[..HEADER_LEN];
    h[CODES_CRC_AT..CODES_CRC_AT + 4].copy_from_slice(&crc32c::crc32c(codes).to_le_bytes());
    h[SCALES_CRC_AT..SCALES_CRC_AT + 4].copy_from_slice(&crc32c::crc32c(scales).to_le_bytes());
    h[0..8].copy_from_slice(&INDEX_MAGIC);
    h[8..12].copy_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(info.dimension as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(info.rows as u64).to_le_bytes());
    h[24..28].copy_from_slice(&(info.m as u32).to_le_bytes());
    h[28..32].copy_from_slice(&(info.m0 as u32).to_le_bytes());
    h[32..36].copy_from_slice(&(info.ef_construction as u32).to_le_bytes());
    h[36..40].copy_from_slice(&(info.max_level as u32).to_le_bytes());
    h[40..48].copy_from_slice(&info.seed.to_le_bytes());
    h[48..52].copy_from_slice(&info.entry_point.to_le_bytes());
    h[52..56].copy_from_slice(&binding.footer_crc.to_le_bytes());
    h[56..64].copy_from_slice(&binding.file_len.to_le_bytes());
    h[SECTION_TABLE_AT..SECTION_TABLE_AT + table.len()].copy_from_slice(&table);
    let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Writes `graph` as the index file `path`, crash-safely.
pub fn write_index(
    disk: &dyn Disk,
    path: &Path,
    graph: &HnswGraph,
    binding: &SegmentBinding,
) -> Result<()> {
    let bytes = encode(graph, binding)?;
    write_file_atomic(disk, path, &bytes).at(path)
}

fn u32_bytes(v: &[u32]) -> &[u8] {
    // SAFETY: u32 has no padding and every byte is initialised; the slice covers exactly the
    // same memory. The target is little-endian (checked in `codec`), so these are the
    // little-endian bytes the format stores.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn i8_bytes(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len()) }
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any initialised f32 slice is a valid byte slice of 4x its length (u8 has
    // alignment 1); the target is little-endian, as the format is.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn u64_bytes(v: &[u64]) -> &[u8] {
    // SAFETY: as for `u32_bytes`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
