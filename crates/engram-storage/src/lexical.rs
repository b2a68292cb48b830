//! The lexical index: BM25 over memory content, beside the dense one.
//!
//! # Analyzer (version 1)
//! Text is lowercased (Unicode rules), split into maximal runs of alphanumeric characters,
//! words of Lucene's English stop set are dropped, the rest are stemmed with the Snowball
//! English (Porter2) stemmer, and each term is identified by a 64-bit hash of its bytes
//! (FNV-1a, then the MurmurHash3 finaliser). Terms longer than [`MAX_TERM_BYTES`] are dropped.
//! A document's length is its number of terms.
//!
//! # Scoring
//! BM25 with `k1 = 1.2`, `b = 0.75` and Lucene's idf, `ln(1 + (N - df + 0.5) / (df + 0.5))`,
//! summed over the query's distinct terms. `N`, `df` and the average length count every row
//! of the space's segments and every live memtable entry; as in Lucene, rows of replaced or
//! deleted memories still count until a merge removes them (they are never returned).
//!
//! # Persistence
//! Memtable entries are analysed when first searched (and cached until replaced). Every
//! segment has a `.lex` file beside it, written when the segment is (flush or merge), and
//! rebuilt from the segment's content column if it is missing or damaged (a crash between the
//! segment and its `.lex`, or a segment written by an earlier version). Layout, little-endian:
//!
//! ```text
//!  0  8 magic "ENGRLEX\0"       8 4 version (1)     12 4 analyzer (1)
//! 16  8 rows                   24 8 segment min sequence   32 8 segment max sequence
//! 40  8 distinct terms (t)     48 8 postings (p)           56 8 total length (sum of rows' lengths)
//! 64  rows x u32 document length
//!     t x (u64 term hash, u32 df, u32 reserved 0, u64 first posting): sorted by hash
//!     p x (u32 row, u32 term frequency): each term's postings together, by row
//!     u32 crc32c of everything before
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{corrupted, Result};

pub const LEX_EXTENSION: &str = "lex";
const MAGIC: [u8; 8] = *b"ENGRLEX\0";
const VERSION: u32 = 1;
/// Version of the analyzer; a `.lex` file of another is rebuilt.
pub const ANALYZER: u32 = 1;
const HEADER: usize = 64;
const DICT_ENTRY: usize = 24;
const POSTING: usize = 8;
/// Longer terms are dropped (identifiers, base64, and the like).
pub const MAX_TERM_BYTES: usize = 64;

pub const K1: f32 = 1.2;
pub const B: f32 = 0.75;

/// Lucene's English stop words.
const STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

fn stemmer() -> &'static rust_stemmers::Stemmer {
    static S: OnceLock<rust_stemmers::Stemmer> = OnceLock::new();
    S.get_or_init(|| rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English))
}

fn term_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Words whose term each thread remembers (stemming is most of the analysis, and words
/// repeat); the memo is cleared when it reaches this size.
const MEMO_WORDS: usize = 1 << 16;

thread_local! {
    /// Lowercased word -> its term (`None`: a stop word or a dropped term).
    static MEMO: std::cell::RefCell<std::collections::HashMap<String, Option<u64>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn term_of(word: &str) -> Option<u64> {
    if STOP_WORDS.contains(&word) {
        return None;
    }
    let stem = stemmer().stem(word);
    if stem.is_empty() || stem.len() > MAX_TERM_BYTES {
        return None;
    }
    Some(term_hash(stem.as_bytes()))
}

/// The terms of `text`, in order (see the module documentation).
pub fn analyze(text: &str) -> Vec<u64> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        for word in lower.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            let term = match memo.get(word) {
                Some(t) => *t,
                None => {
                    let t = term_of(word);
                    if memo.len() >= MEMO_WORDS {
                        memo.clear();
                    }
                    memo.insert(word.to_string(), t);
                    t
                }
            };
            out.extend(term);
        }
    });
    out
}

/// Distinct terms of a cue that count, at most: a search costs about (terms x memtable
/// entries + their postings), and a cue may be as long as a memory.
pub const MAX_QUERY_TERMS: usize = 256;

/// The distinct terms of a cue, sorted: the first [`MAX_QUERY_TERMS`] distinct ones in the
/// text's order.
pub fn query_terms(text: &str) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut t: Vec<u64> = analyze(text)
        .into_iter()
        .filter(|h| seen.insert(*h))
        .take(MAX_QUERY_TERMS)
        .collect();
    t.sort_unstable();
    t
}

/// One document's terms with their frequencies (sorted by term), and its length.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocTerms {
    pub len: u32,
    pub terms: Vec<(u64, u32)>,
}

impl DocTerms {
    pub fn of(text: &str) -> Self {
        let mut all = analyze(text);
        let len = all.len() as u32;
        all.sort_unstable();
        let mut terms: Vec<(u64, u32)> = Vec::new();
        for t in all {
            match terms.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => terms.push((t, 1)),
            }
        }
        Self { len, terms }
    }

    pub fn tf(&self, term: u64) -> u32 {
        self.terms
            .binary_search_by_key(&term, |&(t, _)| t)
            .map_or(0, |i| self.terms[i].1)
    }
}

/// Lucene's BM25 idf.
pub fn idf(docs: u64, df: u64) -> f32 {
    let (n, df) = (docs as f64, df.min(docs) as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32
}

/// One term's BM25 contribution.
pub fn term_score(idf: f32, tf: u32, len: u32, avg_len: f32) -> f32 {
    let tf = tf as f32;
    let norm = if avg_len > 0.0 {
        1.0 - B + B * len as f32 / avg_len
    } else {
        1.0
    };
    idf * tf * (K1 + 1.0) / (tf + K1 * norm)
}

/// `segment_path` with the `.lex` extension.
pub fn lex_path(segment_path: &Path) -> PathBuf {
    segment_path.with_extension(LEX_EXTENSION)
}

/// A segment's lexical index, in its file format (held in memory).
#[derive(Debug)]
pub struct SegmentLex {
    bytes: Vec<u8>,
    rows: usize,
    terms: usize,
    total_len: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl SegmentLex {
    /// The index of a segment's rows, given their content in row order, bound to the
    /// segment's sequence range.
    pub fn build<'a>(contents: impl Iterator<Item = &'a str>, seqs: (u64, u64)) -> Self {
        let docs: Vec<DocTerms> = contents.map(DocTerms::of).collect();
        Self::from_docs(&docs, seqs)
    }

    pub fn from_docs(docs: &[DocTerms], seqs: (u64, u64)) -> Self {
        let mut triples: Vec<(u64, u32, u32)> = Vec::new();
        for (row, d) in docs.iter().enumerate() {
            triples.extend(d.terms.iter().map(|&(t, tf)| (t, row as u32, tf)));
        }
        let lens: Vec<u32> = docs.iter().map(|d| d.len).collect();
        Self::from_triples(triples, &lens, seqs)
    }

    /// The index of a merge's output without analysing any text again: output row `i` is
    /// row `rows[i].1` of input `rows[i].0`, whose terms and length are taken from that
    /// input's index.
    pub fn merge(inputs: &[&SegmentLex], rows: &[(usize, u32)], seqs: (u64, u64)) -> Self {
        let mut map: Vec<Vec<u32>> = inputs.iter().map(|l| vec![u32::MAX; l.rows]).collect();
        let mut lens = Vec::with_capacity(rows.len());
        for (out, &(i, r)) in rows.iter().enumerate() {
            map[i][r as usize] = out as u32;
            lens.push(inputs[i].doc_len(r as usize));
        }
        let mut triples: Vec<(u64, u32, u32)> = Vec::new();
        for (i, lex) in inputs.iter().enumerate() {
            for e in 0..lex.terms {
                let (term, df, first) = lex.entry(e);
                for p in first as usize..first as usize + df as usize {
                    let (row, tf) = lex.posting(p);
                    let out = map[i][row as usize];
                    if out != u32::MAX {
                        triples.push((term, out, tf));
                    }
                }
            }
        }
        Self::from_triples(triples, &lens, seqs)
    }

    /// From (term, row, tf) triples (any order) and the rows' lengths.
    fn from_triples(
        mut pairs: Vec<(u64, u32, u32)>,
        lens: &[u32],
        (min_seq, max_seq): (u64, u64),
    ) -> Self {
        let total_len: u64 = lens.iter().map(|&l| l as u64).sum();
        pairs.sort_unstable();
        let mut dict: Vec<(u64, u32, u64)> = Vec::new();
        for (i, &(t, _, _)) in pairs.iter().enumerate() {
            match dict.last_mut() {
                Some((last, df, _)) if *last == t => *df += 1,
                _ => dict.push((t, 1, i as u64)),
            }
        }
        let mut b = Vec::with_capacity(
            HEADER + lens.len() * 4 + dict.len() * DICT_ENTRY + pairs.len() * POSTING + 4,
        );
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&ANALYZER.to_le_bytes());
        for v in [
            lens.len() as u64,
            min_seq,
            max_seq,
            dict.len() as u64,
            pairs.len() as u64,
            total_len,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for l in lens {
            b.extend_from_slice(&l.to_le_bytes());
        }
        for &(t, df, first) in &dict {
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&df.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&first.to_le_bytes());
        }
        for &(_, row, tf) in &pairs {
            b.extend_from_slice(&row.to_le_bytes());
            b.extend_from_slice(&tf.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        Self {
            bytes: b,
            rows: lens.len(),
            terms: dict.len(),
            total_len,
        }
    }

    /// Checks a `.lex` file's bytes against the segment they must describe (`rows` and its
    /// sequence range) and the analyzer of this build.
    pub fn decode(bytes: Vec<u8>, rows: usize, (min_seq, max_seq): (u64, u64)) -> Result<Self> {
        if bytes.len() < HEADER + 4 {
            return corrupted(format!("lexical index of {} bytes", bytes.len()));
        }
        let body = bytes.len() - 4;
        if u32_at(&bytes, body) != crc32c::crc32c(&bytes[..body]) {
            return corrupted("lexical index: checksum mismatch");
        }
        if bytes[..8] != MAGIC || u32_at(&bytes, 8) != VERSION {
            return corrupted("lexical index: bad magic or version");
        }
        if u32_at(&bytes, 12) != ANALYZER {
            return corrupted("lexical index: written by another analyzer");
        }
        if u64_at(&bytes, 16) != rows as u64
            || u64_at(&bytes, 24) != min_seq
            || u64_at(&bytes, 32) != max_seq
        {
            return corrupted("lexical index: of another segment");
        }
        let terms = u64_at(&bytes, 40) as usize;
        let postings = u64_at(&bytes, 48) as usize;
        let total_len = u64_at(&bytes, 56);
        let want = (rows as u128) * 4
            + (terms as u128) * DICT_ENTRY as u128
            + (postings as u128) * POSTING as u128
            + HEADER as u128;
        if want != body as u128 {
            return corrupted("lexical index: sizes do not add up");
        }
        let lex = Self {
            bytes,
            rows,
            terms,
            total_len,
        };
        // Every dictionary entry's postings inside the postings, rows inside the segment.
        let mut expect_first = 0u64;
        for i in 0..terms {
            let (_, df, first) = lex.entry(i);
            if first != expect_first || df == 0 {
                return corrupted("lexical index: dictionary out of order");
            }
            expect_first += df as u64;
        }
        if expect_first != postings as u64 {
            return corrupted("lexical index: dictionary does not cover the postings");
        }
        for p in 0..postings {
            if lex.posting(p).0 as usize >= rows {
                return corrupted("lexical index: a posting outside the segment");
            }
        }
        Ok(lex)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    pub fn doc_len(&self, row: usize) -> u32 {
        u32_at(&self.bytes, HEADER + row * 4)
    }

    fn entry(&self, i: usize) -> (u64, u32, u64) {
        let at = HEADER + self.rows * 4 + i * DICT_ENTRY;
        (
            u64_at(&self.bytes, at),
            u32_at(&self.bytes, at + 8),
            u64_at(&self.bytes, at + 16),
        )
    }

    fn posting(&self, p: usize) -> (u32, u32) {
        let at = HEADER + self.rows * 4 + self.terms * DICT_ENTRY + p * POSTING;
        (u32_at(&self.bytes, at), u32_at(&self.bytes, at + 4))
    }

    /// `(df, postings)` of `term`: the rows holding it with its frequency in each.
    pub fn postings(&self, term: u64) -> Option<(u32, impl Iterator<Item = (u32, u32)> + '_)> {
        let (mut lo, mut hi) = (0, self.terms);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (t, df, first) = self.entry(mid);
            match t.cmp(&term) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let first = first as usize;
                    return Some((df, (first..first + df as usize).map(|p| self.posting(p))));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzer_lowercases_splits_drops_stop_words_and_stems() {
        assert_eq!(analyze("The Cats, running!"), analyze("cat run"));
        assert_eq!(analyze("the of and"), Vec::<u64>::new());
        assert_eq!(
            analyze("connection connected connecting"),
            analyze("connect connect connect")
        );
        assert_ne!(analyze("cat"), analyze("dog"));
        assert_eq!(analyze(&"x".repeat(65)), Vec::<u64>::new());
        assert_eq!(analyze("Ünïcödé école"), analyze("ünïcödé ÉCOLE"));
        let d = DocTerms::of("cat cat dog the");
        assert_eq!(d.len, 3);
        assert_eq!(d.tf(analyze("cat")[0]), 2);
        assert_eq!(d.tf(analyze("dog")[0]), 1);
        assert_eq!(d.tf(analyze("bird")[0]), 0);
    }

    #[test]
    fn segment_index_round_trip_and_damage() {
        let contents = ["red apple", "green apple apple", "", "blue sky"];
        let lex = SegmentLex::build(contents.iter().copied(), (3, 9));
        assert_eq!(lex.rows(), 4);
        // Lengths 2, 3, 0 and 2.
        assert_eq!(lex.total_len(), 7);
        let apple = analyze("apple")[0];
        let (df, post) = lex.postings(apple).unwrap();
        assert_eq!(df, 2);
        assert_eq!(post.collect::<Vec<_>>(), vec![(0, 1), (1, 2)]);
        assert!(lex.postings(analyze("pear")[0]).is_none());
        assert_eq!(lex.doc_len(1), 3);

        let again = SegmentLex::decode(lex.bytes().to_vec(), 4, (3, 9)).unwrap();
        assert_eq!(again.bytes(), lex.bytes());
        assert!(SegmentLex::decode(lex.bytes().to_vec(), 5, (3, 9)).is_err());
        assert!(SegmentLex::decode(lex.bytes().to_vec(), 4, (3, 10)).is_err());
        for i in 0..lex.bytes().len() {
            let mut b = lex.bytes().to_vec();
            b[i] ^= 0x10;
            assert!(
                SegmentLex::decode(b, 4, (3, 9)).is_err(),
                "flipped byte {i}"
            );
        }
        assert!(SegmentLex::decode(lex.bytes()[..40].to_vec(), 4, (3, 9)).is_err());
    }

    #[test]
    fn a_merged_index_equals_one_built_from_the_text() {
        let a = ["red apple", "green apple apple", "old text", "blue sky"];
        let b = ["apple pie recipe", "sky and sea"];
        let la = SegmentLex::build(a.iter().copied(), (1, 4));
        let lb = SegmentLex::build(b.iter().copied(), (5, 6));
        // Output: b0, a1, a3, b1 (a0 and a2 replaced or deleted).
        let rows = [(1, 0), (0, 1), (0, 3), (1, 1)];
        let merged = SegmentLex::merge(&[&la, &lb], &rows, (1, 6));
        let text = [b[0], a[1], a[3], b[1]];
        let built = SegmentLex::build(text.iter().copied(), (1, 6));
        assert_eq!(merged.bytes(), built.bytes());
    }

    #[test]
    fn bm25_formula() {
        // N = 3, df = 1: ln(1 + 2.5 / 1.5).
        assert!((idf(3, 1) - (1.0f32 + 2.5 / 1.5).ln()).abs() < 1e-6);
        // tf 2, length 4, average 2: 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 2)).
        let s = term_score(1.0, 2, 4, 2.0);
        assert!((s - 4.4 / (2.0 + 1.2 * 1.75)).abs() < 1e-6);
    }
}
