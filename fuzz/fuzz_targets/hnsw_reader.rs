//! The HNSW index reader must never panic on arbitrary bytes: open (header, binding to the
//! segment, section layout and checksums, the whole graph structure) and search. Each input is
//! tried as it is and with its checksums recomputed, so the fuzzer reaches the structural checks
//! behind the CRCs; the segment binding is taken from the input's own header, so it matches.
#![no_main]

use engram_storage::index::{FlatVectors, Hnsw, SegmentBinding};
use engram_storage::Mapped;
use libfuzzer_sys::fuzz_target;

/// Header layout (docs/format.md, "HNSW index files"): a 192-byte header whose CRC at 188..192
/// covers bytes 0..188, with a table of 4 sections of 24 bytes at 64 (offset u64, length u64,
/// CRC u32, reserved u32).
const HEADER_LEN: usize = 192;
const HEADER_CRC_AT: usize = 188;
const SECTION_TABLE_AT: usize = 64;
const SECTION_ENTRY_LEN: usize = 24;
const SECTION_COUNT: usize = 4;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The binding the header claims (bytes 52..64, rows at 16, dimension at 12).
fn binding_of(b: &[u8]) -> SegmentBinding {
    if b.len() < HEADER_LEN {
        return SegmentBinding {
            file_len: 0,
            footer_crc: 0,
            rows: 0,
            dimension: 1,
        };
    }
    SegmentBinding {
        footer_crc: u32_at(b, 52),
        file_len: u64_at(b, 56),
        rows: u64_at(b, 16),
        dimension: u32_at(b, 12),
    }
}

/// Recomputes the section CRCs (where the table points inside the input) and the header CRC.
fn reseal(b: &mut [u8]) {
    for i in 0..SECTION_COUNT {
        let at = SECTION_TABLE_AT + i * SECTION_ENTRY_LEN;
        let (off, len) = (u64_at(b, at), u64_at(b, at + 8));
        if let Some(end) = off.checked_add(len).filter(|&e| e <= b.len() as u64) {
            let crc = crc32c::crc32c(&b[off as usize..end as usize]);
            b[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn exercise(bytes: &[u8]) {
    let Ok(h) = Hnsw::from_mapped(Mapped::from_bytes(bytes), &binding_of(bytes)) else {
        return;
    };
    let info = h.info();
    if info.rows > 4096 || info.rows * info.dimension > 1 << 20 {
        return;
    }
    let dim = info.dimension;
    let data: Vec<f32> = (0..info.rows * dim)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let vectors = FlatVectors::new(data, dim).expect("whole rows");
    let query = vec![0.5f32; dim];
    let _ = h.view().search(&vectors, &query, 10, 32, |_| true);
    let _ = h.view().search(&vectors, &query, 10, 32, |r| r % 3 == 0);
    let _ = h.view().search(&vectors, &query, 3, 0, |_| false);
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        reseal(&mut fixed);
        exercise(&fixed);
    }
});
