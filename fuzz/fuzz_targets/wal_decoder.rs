//! The WAL decoder must never panic on arbitrary bytes: a whole file scan (header, records,
//! resync after damage) and a single record decode with payload decoding.
#![no_main]

use engram_storage::wal::{decode_record, scan_wal_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = scan_wal_file(data, data.first().is_some_and(|b| b & 1 == 1), 1 << 20);
    for r in &out.records {
        assert!(r.offset + r.len <= data.len() as u64);
    }
    if let Ok(rec) = decode_record(data, 1 << 20) {
        let _ = rec.space_id();
        let _ = rec.op();
    }
});
