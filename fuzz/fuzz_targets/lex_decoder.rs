//! The lexical index decoder (`SegmentLex::decode`, a segment's `.lex` file) must never panic on
//! arbitrary bytes, nor must reading a decoded index: document lengths, postings, and a merge
//! over all its rows (which walks every dictionary entry and posting). Each input is tried as
//! it is and with its checksum recomputed, so the fuzzer reaches the structural checks behind
//! the CRC; the segment it is bound to (rows, sequence range) is taken from the input's own
//! header, so the binding matches. Arbitrary bytes rarely add up to a whole index, so each input
//! is also read as text: an index built from it (which must decode) is decoded again with a
//! few of its bytes overwritten where the input says, the checksum recomputed.
#![no_main]

use engram_storage::SegmentLex;
use libfuzzer_sys::fuzz_target;

/// Layout (docs/format.md, "Lexical index files"): a 64-byte header with rows at 16, the
/// sequence range at 24 and 32, then the body, then a crc32c of everything before it.
const HEADER_LEN: usize = 64;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The segment the header claims to describe: (rows, (min_seq, max_seq)).
fn binding_of(b: &[u8]) -> (usize, (u64, u64)) {
    if b.len() < HEADER_LEN {
        return (0, (0, 0));
    }
    (u64_at(b, 16) as usize, (u64_at(b, 24), u64_at(b, 32)))
}

fn exercise(bytes: &[u8]) {
    let (rows, seqs) = binding_of(bytes);
    let Ok(lex) = SegmentLex::decode(bytes.to_vec(), rows, seqs) else {
        return;
    };
    assert_eq!(lex.rows(), rows);
    let _ = lex.total_len();
    for row in 0..rows.min(4096) {
        let _ = lex.doc_len(row);
    }
    // Terms from the dictionary's bytes (where one would be) and a few others.
    let dict = HEADER_LEN + rows.saturating_mul(4);
    let mut terms = vec![0, 1, u64::MAX];
    if let Some(t) = bytes.get(dict..dict + 8) {
        terms.push(u64::from_le_bytes(t.try_into().unwrap()));
    }
    for t in terms {
        if let Some((_, postings)) = lex.postings(t) {
            for (row, _) in postings {
                assert!((row as usize) < rows, "a posting outside the segment");
            }
        }
    }
    if rows <= 4096 {
        let all: Vec<(usize, u32)> = (0..rows as u32).map(|r| (0, r)).collect();
        let merged = SegmentLex::merge(&[&lex], &all, seqs);
        // What a merge writes, the decoder reads back.
        SegmentLex::decode(merged.bytes().to_vec(), rows, seqs).expect("a merge's output decodes");
    }
}

/// Recomputes the checksum (the last 4 bytes).
fn reseal(b: &mut [u8]) {
    let body = b.len() - 4;
    let crc = crc32c::crc32c(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
}

/// Edits: the first 16 bytes, as 4 x (u16 position, u8 value, u8 unused). Text: the rest, one
/// document a line.
fn from_built(data: &[u8]) {
    let (edits, text) = data.split_at(data.len().min(16));
    let text = String::from_utf8_lossy(text);
    let lex = SegmentLex::build(text.split('\n').take(64), (3, 9));
    let mut b = lex.bytes().to_vec();
    SegmentLex::decode(b.clone(), lex.rows(), (3, 9)).expect("a built index decodes");
    for e in edits.chunks_exact(4) {
        let at = u16::from_le_bytes([e[0], e[1]]) as usize % b.len();
        b[at] = e[2];
    }
    reseal(&mut b);
    exercise(&b);
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= HEADER_LEN + 4 {
        let mut fixed = data.to_vec();
        reseal(&mut fixed);
        exercise(&fixed);
    }
    from_built(data);
});
