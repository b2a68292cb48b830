//! The decoders of a space's small state files, `space.meta` (`SpaceMeta::decode`), a
//! replicated space's `raft.state` with its requests table (`RaftApplied::decode_with`) and an
//! unreplicated space's `requests.table` (`decode_table_file`), must never panic on arbitrary
//! bytes, and what they accept must encode back to the same bytes. Each input is tried as it is and with its
//! checksum recomputed (the last 4 bytes, a crc32c of everything before), so the fuzzer
//! reaches the checks behind the CRC.
#![no_main]

use engram_storage::requests::{decode_table_file, encode_table_file};
use engram_storage::{RaftApplied, SpaceMeta};
use libfuzzer_sys::fuzz_target;

fn exercise(bytes: &[u8]) {
    if let Ok(meta) = SpaceMeta::decode(bytes) {
        assert_eq!(
            meta.encode(),
            bytes,
            "decode then encode gives the bytes back"
        );
    }
    if let Ok((state, requests)) = RaftApplied::decode_with(bytes) {
        // Version 1 (no requests table) reads, and is written as version 2.
        if bytes.get(8..12) != Some(&1u32.to_le_bytes()[..]) {
            assert_eq!(
                state.encode_with(&requests),
                bytes,
                "raft.state: decode then encode"
            );
        }
    }
    if let Ok((table, as_of)) = decode_table_file(bytes) {
        assert_eq!(
            encode_table_file(&table, as_of),
            bytes,
            "requests.table: decode then encode"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let body = fixed.len() - 4;
        let crc = crc32c::crc32c(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_le_bytes());
        exercise(&fixed);
    }
});
