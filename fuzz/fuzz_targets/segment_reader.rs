//! The segment reader must never panic on arbitrary bytes: open (footer, directory, column
//! bounds), verify, and read every row and tombstone. Each input is tried as it is and with its
//! footer checksum recomputed, so the fuzzer reaches the structural checks behind the CRC.
#![no_main]

use engram_storage::segment::Segment;
use engram_storage::Mapped;
use libfuzzer_sys::fuzz_target;

/// Footer: a 64-byte header (CRC at 60..64 over bytes 0..60 and the directory) and a 256-byte
/// directory, at the end of the file (docs/format.md).
const FOOTER_LEN: usize = 320;

fn exercise(bytes: &[u8]) {
    if let Ok(seg) = Segment::from_mapped(Mapped::from_bytes(bytes), "fuzz.seg".into()) {
        let _ = seg.verify();
        for row in 0..seg.rows().min(64) {
            let _ = seg.memory(row);
            let _ = seg.embedding(row);
        }
        for t in 0..seg.info().tombstones.min(64) {
            let _ = seg.tombstone(t);
        }
        let _ = seg.find("m1");
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= FOOTER_LEN {
        let mut fixed = data.to_vec();
        let f = fixed.len() - FOOTER_LEN;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed[f..f + 60]), &fixed[f + 64..]);
        fixed[f + 60..f + 64].copy_from_slice(&crc.to_le_bytes());
        exercise(&fixed);
    }
});
