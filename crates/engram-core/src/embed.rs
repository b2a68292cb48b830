//! Text embedders: turn memory content (or a text cue) into a vector.
//!
//! [`Embedder`] is the interface the engine and server use; [`HashingEmbedder`] is the built-in
//! implementation: no model download, no I/O, pure Rust, and deterministic across runs, machines
//! and Rust versions. It captures lexical similarity (shared words, word pairs and spelling), not
//! meaning; a neural embedder can implement the same trait later.
//!
//! # The hashing embedder (`hashing-v1`)
//!
//! 1. The text is lowercased with Unicode rules ([`str::to_lowercase`]).
//! 2. Words are the maximal runs of alphanumeric characters ([`char::is_alphanumeric`]);
//!    everything else separates words.
//! 3. Features, each with a weight and a distinct salt so that, say, the word `cat` and
//!    the trigram `cat` hash differently:
//!
//!    | feature | example for `the cat` | salt | weight |
//!    |---|---|---|---|
//!    | word unigram | `the`, `cat` | `U` | 1.0 |
//!    | word bigram (adjacent words) | `the cat` | `B` | 0.7 |
//!    | character trigram of each word padded with `^` and `$` | `^th`, `the`, `he$`, `^ca`, `cat`, `at$` | `T` | 0.5 |
//!
//!    A word of *n* characters gives *n* trigrams (a 1-letter word `a` gives `^a$`). The weights
//!    make whole-word matches count most while the trigrams (a word's trigrams together weigh
//!    about as much as the word itself) keep misspellings and inflections (`sat`/`sitting`,
//!    `recieve`/`receive`) close.
//! 4. Sublinear term frequency: a feature occurring *c* times in the text contributes
//!    `weight * sqrt(c)` (not `weight * c`), so a repeated word (`the`) does not drown the rest.
//!    `sqrt` is used rather than `1 + ln c` because IEEE 754 requires it to be correctly rounded,
//!    so the result is bit-identical on every platform, while `ln` comes from the platform's
//!    math library.
//! 5. Signed feature hashing: each feature's bytes, preceded by its salt byte, are hashed with
//!    64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) and the result is
//!    mixed with the MurmurHash3 `fmix64` finaliser. Bits 32..64 of the mixed hash pick the bucket
//!    (`(h >> 32) * dimension >> 32`, a multiply-shift range reduction) and bit 31, independent of
//!    them, picks the sign. Word bytes are fed to the hasher directly (a bigram as
//!    `first 0xFF second`; `0xFF` never occurs in UTF-8), so no string is built per feature.
//! 6. The vector is L2-normalised (sums in a fixed order, so results do not depend on the CPU).
//!
//! Text with no alphanumeric character at all (`"!!!"`, `"🎉🎉"`) gets fallback features
//! instead: the whole trimmed text (salt `W`) and each of its non-whitespace characters (salt
//! `C`), weight 1.0 each, so it still gets a direction and `"!!!"` is close to `"!!"`. Every
//! non-empty text gets a unit vector (in the rare case where the signed contributions cancel
//! exactly, which can only happen at tiny dimensions, the feature with the smallest key
//! alone sets the direction). The empty string gets the zero vector: callers refuse empty content.
//!
//! Any change to the above changes stored vectors; it must come with a new [`Embedder::name`].

use crate::limits::MAX_DIMENSION;
use crate::CoreError;

/// Turns text into an embedding vector.
pub trait Embedder: Send + Sync {
    /// Length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// A stable name identifying the embedder and its version (vectors from different names are
    /// not comparable).
    fn name(&self) -> &str;

    /// The embedding of `text`: `dimension()` values, L2-normalised (unit length), except that an
    /// embedder may return the zero vector for the empty string. Fails only where the embedder
    /// runs a model that can fail ([`CoreError::Embedding`]); the hashing embedder never does.
    fn embed(&self, text: &str) -> Result<Vec<f32>, CoreError>;

    /// The embeddings of several texts, in order. The default calls [`Embedder::embed`] on each;
    /// an embedder that gains from batching (a neural model) overrides it.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CoreError> {
        texts.iter().map(|t| self.embed(t)).collect()
    }
}

/// The built-in embedder: signed feature hashing of words, word pairs and character trigrams.
/// See the [module documentation](self) for the exact algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashingEmbedder {
    dimension: usize,
}

impl HashingEmbedder {
    /// The value of [`Embedder::name`]. Bumped whenever the output changes.
    pub const NAME: &'static str = "hashing-v1";

    /// An embedder producing vectors of `dimension` values, which must be in
    /// `1..=`[`MAX_DIMENSION`].
    pub fn new(dimension: usize) -> Result<Self, CoreError> {
        if dimension == 0 || dimension > MAX_DIMENSION {
            return Err(CoreError::InvalidEmbedder(format!(
                "dimension {dimension} is out of range: expected 1 to {MAX_DIMENSION}"
            )));
        }
        Ok(Self { dimension })
    }
}

impl Default for HashingEmbedder {
    /// An embedder of the default space dimension ([`crate::limits::DEFAULT_DIMENSION`]).
    fn default() -> Self {
        Self {
            dimension: crate::limits::DEFAULT_DIMENSION,
        }
    }
}

impl Embedder for HashingEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, CoreError> {
        Ok(HashingEmbedder::embed(self, text))
    }
}

impl HashingEmbedder {
    /// [`Embedder::embed`], which cannot fail here.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut out = vec![0.0f32; self.dimension];
        let Some(first) = self.accumulate(text, &mut out) else {
            return out;
        };
        if !normalize(&mut out) {
            // Every contribution cancelled (only possible at tiny dimensions): the feature
            // with the smallest key alone sets the direction.
            out[bucket(first, self.dimension)] = sign(first);
        }
        out
    }
}

impl HashingEmbedder {
    /// Adds the weighted, signed features of `text` into `out` (all zeros, `dimension` long),
    /// before normalisation. Returns the smallest feature key, or None if there is no feature
    /// (only for the empty string).
    fn accumulate(&self, text: &str, out: &mut [f32]) -> Option<u64> {
        if text.is_empty() {
            return None;
        }
        let lower = text.to_lowercase();
        // Rough upper bound: one trigram per byte, plus a unigram and a bigram per word.
        let mut keys = Vec::with_capacity(lower.len() + lower.len() / 2 + 4);
        word_features(&lower, &mut keys);
        if keys.is_empty() {
            fallback_features(&lower, &mut keys);
        }
        // Equal keys are occurrences of the same feature; sorting groups them so each feature is
        // added once with its sublinear count.
        keys.sort_unstable();
        for run in keys.chunk_by(|a, b| a == b) {
            let key = run[0];
            let tf = (run.len() as f32).sqrt();
            out[bucket(key, self.dimension)] += sign(key) * WEIGHTS[kind(key)] * tf;
        }
        keys.first().copied()
    }
}

// Feature kinds, stored in the two low bits of a key; they select the weight.
const UNIGRAM: u64 = 0;
const BIGRAM: u64 = 1;
const TRIGRAM: u64 = 2;
const FALLBACK: u64 = 3;
const WEIGHTS: [f32; 4] = [1.0, 0.7, 0.5, 1.0];

// Salts, hashed before a feature's bytes.
const SALT_UNIGRAM: u8 = b'U';
const SALT_BIGRAM: u8 = b'B';
const SALT_TRIGRAM: u8 = b'T';
const SALT_WHOLE: u8 = b'W';
const SALT_CHAR: u8 = b'C';

/// Separates the two words of a bigram; never occurs in UTF-8.
const BIGRAM_SEPARATOR: u8 = 0xFF;
/// Boundary markers of the trigram padding; never occur inside a word (not alphanumeric).
const WORD_START: &[u8] = b"^";
const WORD_END: &[u8] = b"$";

/// A feature's key: its mixed hash with the kind in the two low bits.
fn key(hash: u64, kind: u64) -> u64 {
    (hash & !3) | kind
}

fn kind(key: u64) -> usize {
    (key & 3) as usize
}

/// Multiply-shift range reduction of the high 32 bits into `0..dimension`.
fn bucket(key: u64, dimension: usize) -> usize {
    (((key >> 32) * dimension as u64) >> 32) as usize
}

/// Bit 31: independent of the bucket bits and of the kind bits.
fn sign(key: u64) -> f32 {
    if key & (1 << 31) == 0 {
        1.0
    } else {
        -1.0
    }
}

/// 64-bit FNV-1a, seeded with a salt byte; `finish` applies the MurmurHash3 `fmix64` finaliser
/// so that every output bit depends on every input byte.
struct Hasher(u64);

impl Hasher {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(salt: u8) -> Self {
        let mut h = Self(Self::OFFSET_BASIS);
        h.write(&[salt]);
        h
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
}

/// Pushes the unigram, bigram and trigram keys of the (already lowercased) text.
fn word_features(lower: &str, keys: &mut Vec<u64>) {
    let mut previous: Option<&str> = None;
    for word in lower.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let mut h = Hasher::new(SALT_UNIGRAM);
        h.write(word.as_bytes());
        keys.push(key(h.finish(), UNIGRAM));

        if let Some(prev) = previous {
            let mut h = Hasher::new(SALT_BIGRAM);
            h.write(prev.as_bytes());
            h.write(&[BIGRAM_SEPARATOR]);
            h.write(word.as_bytes());
            keys.push(key(h.finish(), BIGRAM));
        }
        previous = Some(word);

        trigrams(word, keys);
    }
}

/// Pushes the keys of the character trigrams of `^word$`. UTF-8 is self-delimiting and the
/// markers cannot occur in a word, so hashing the concatenated bytes is unambiguous.
fn trigrams(word: &str, keys: &mut Vec<u64>) {
    // Sliding window over the padded sequence: `a` and `b` are the two elements before the
    // current one; None stands for the start marker.
    let mut a: Option<&str> = None;
    let mut b: Option<&str> = None;
    let mut seen = 0usize;
    let mut emit = |a: Option<&str>, b: &str, c: Option<&str>| {
        let mut h = Hasher::new(SALT_TRIGRAM);
        h.write(a.map_or(WORD_START, str::as_bytes));
        h.write(b.as_bytes());
        h.write(c.map_or(WORD_END, str::as_bytes));
        keys.push(key(h.finish(), TRIGRAM));
    };
    for (i, ch) in word.char_indices() {
        let c = &word[i..i + ch.len_utf8()];
        if let Some(b) = b {
            emit(a, b, Some(c));
            a = Some(b);
        }
        b = Some(c);
        seen += 1;
    }
    if let Some(b) = b {
        // The last trigram ends with the end marker; for a 1-letter word it is `^x$`.
        emit(if seen == 1 { None } else { a }, b, None);
    }
}

/// Features of text without any alphanumeric character: the whole trimmed text and each
/// non-whitespace character (the untrimmed text if it is all whitespace).
fn fallback_features(lower: &str, keys: &mut Vec<u64>) {
    let trimmed = lower.trim();
    let whole = if trimmed.is_empty() { lower } else { trimmed };
    let mut h = Hasher::new(SALT_WHOLE);
    h.write(whole.as_bytes());
    keys.push(key(h.finish(), FALLBACK));
    for ch in trimmed.chars().filter(|c| !c.is_whitespace()) {
        let mut h = Hasher::new(SALT_CHAR);
        h.write(ch.encode_utf8(&mut [0u8; 4]).as_bytes());
        keys.push(key(h.finish(), FALLBACK));
    }
}

/// Scales `v` to unit length. Returns false, leaving `v` unchanged, if it is all zeros.
///
/// The squared norm is summed in a fixed order (8 lanes by index modulo 8, then the lanes in
/// order), so the result does not depend on the CPU, while the compiler can still vectorise it.
fn normalize(v: &mut [f32]) -> bool {
    const LANES: usize = 8;
    let mut lanes = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += x * x;
        }
    }
    for (lane, x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += x * x;
    }
    let norm = lanes.iter().sum::<f32>().sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        for x in v.iter_mut() {
            *x *= inv;
        }
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    fn norm(v: &[f32]) -> f32 {
        v.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    fn sim(e: &HashingEmbedder, a: &str, b: &str) -> f32 {
        cosine(&e.embed(a), &e.embed(b))
    }

    const SAMPLES: &[&str] = &[
        "a",
        "ab",
        "I",
        "the cat sat on the mat",
        "a cat was sitting on the mat",
        "quarterly revenue grew by ten percent",
        "recieve the package",
        "!!!",
        "   ",
        "\n",
        "🎉🎉 🎉",
        "Crème brûlée à la française",
        "東京は日本の首都です",
        "ΟΔΟΣ Σίσυφος",
        "İstanbul",
        "x1 y2 z3 42 3.14159",
        "the the the the the the",
        "Mixed: punctuation, numbers (123) & symbols -- ok?",
    ];

    #[test]
    fn new_refuses_out_of_range_dimensions() {
        for bad in [0, MAX_DIMENSION + 1, usize::MAX] {
            let err = HashingEmbedder::new(bad).unwrap_err();
            assert!(matches!(err, CoreError::InvalidEmbedder(_)));
            assert!(err.to_string().contains("dimension"), "{err}");
        }
        for good in [1, 7, 384, 768, MAX_DIMENSION] {
            let e = HashingEmbedder::new(good).unwrap();
            assert_eq!(e.dimension(), good);
            assert_eq!(e.name(), HashingEmbedder::NAME);
        }
        assert_eq!(HashingEmbedder::default().dimension(), 768);
    }

    #[test]
    fn vectors_have_unit_length_and_the_right_dimension() {
        for dim in [1, 2, 7, 16, 384, 768, 4096] {
            let e = HashingEmbedder::new(dim).unwrap();
            for text in SAMPLES {
                let v = e.embed(text);
                assert_eq!(v.len(), dim);
                assert!(v.iter().all(|x| x.is_finite()));
                let n = norm(&v);
                assert!((n - 1.0).abs() < 1e-5, "dim {dim} text {text:?} norm {n}");
            }
        }
    }

    #[test]
    fn unit_length_at_dimension_one_for_many_short_words() {
        // At dimension 1 the signed contributions of a text often cancel exactly.
        let e = HashingEmbedder::new(1).unwrap();
        let letters = ['a', 'b', 'c', 'é', '中', '1'];
        let mut cancelled = 0;
        for x in letters {
            for y in letters {
                for text in [format!("{x}{y}"), format!("{x} {y}"), format!("{x}{y}{x}")] {
                    let mut raw = [0.0f32];
                    e.accumulate(&text, &mut raw).unwrap();
                    if raw[0] == 0.0 {
                        cancelled += 1;
                    }
                    let v = e.embed(&text);
                    assert_eq!(v.len(), 1);
                    assert!((v[0].abs() - 1.0).abs() < 1e-6, "{text:?}: {v:?}");
                }
            }
        }
        assert!(cancelled > 0, "the cancellation path was not exercised");
    }

    #[test]
    fn empty_text_is_the_zero_vector() {
        let e = HashingEmbedder::new(32).unwrap();
        assert_eq!(e.embed(""), vec![0.0; 32]);
    }

    #[test]
    fn deterministic() {
        let a = HashingEmbedder::new(768).unwrap();
        let b = HashingEmbedder::new(768).unwrap();
        for text in SAMPLES {
            assert_eq!(a.embed(text), b.embed(text));
            assert_eq!(a.embed(text), a.embed(text));
        }
    }

    #[test]
    fn embed_batch_matches_embed() {
        let e = HashingEmbedder::new(64).unwrap();
        let batch = e.embed_batch(SAMPLES).unwrap();
        assert_eq!(batch.len(), SAMPLES.len());
        for (text, v) in SAMPLES.iter().zip(&batch) {
            assert_eq!(&e.embed(text), v);
        }
        assert!(e.embed_batch(&[]).unwrap().is_empty());
    }

    #[test]
    fn works_as_a_trait_object() {
        let e: Box<dyn Embedder> = Box::new(HashingEmbedder::new(8).unwrap());
        assert_eq!(e.embed("hello").unwrap().len(), 8);
    }

    #[test]
    fn hasher_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors (no salt, no finaliser).
        let fnv = |bytes: &[u8]| {
            let mut h = Hasher(Hasher::OFFSET_BASIS);
            h.write(bytes);
            h.0
        };
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn trigrams_are_padded_with_boundary_markers() {
        let expected = |grams: &[&str]| -> Vec<u64> {
            let mut keys: Vec<u64> = grams
                .iter()
                .map(|g| {
                    let mut h = Hasher::new(SALT_TRIGRAM);
                    h.write(g.as_bytes());
                    key(h.finish(), TRIGRAM)
                })
                .collect();
            keys.sort_unstable();
            keys
        };
        let actual = |word: &str| {
            let mut keys = Vec::new();
            trigrams(word, &mut keys);
            keys.sort_unstable();
            keys
        };
        assert_eq!(actual("cat"), expected(&["^ca", "cat", "at$"]));
        assert_eq!(actual("a"), expected(&["^a$"]));
        assert_eq!(actual("ab"), expected(&["^ab", "ab$"]));
        assert_eq!(actual("déjà"), expected(&["^dé", "déj", "éjà", "jà$"]));
    }

    #[test]
    fn feature_kinds_hash_differently() {
        // The word "ab", the bigram and the trigram over the same bytes must not share a key.
        let mut words = Vec::new();
        word_features("ab", &mut words);
        let mut h = Hasher::new(SALT_TRIGRAM);
        h.write(b"ab");
        let tri = h.finish();
        let mut h = Hasher::new(SALT_UNIGRAM);
        h.write(b"ab");
        let uni = h.finish();
        assert_ne!(tri >> 2, uni >> 2);
        assert!(words.contains(&key(uni, UNIGRAM)));
        assert!(!words.contains(&key(tri, TRIGRAM)));
    }

    /// Pins the exact output so that any change to tokenising, hashing, weighting or
    /// normalising is caught (and comes with a new `NAME`).
    #[test]
    fn pinned_output() {
        let e = HashingEmbedder::new(16).unwrap();
        let v = e.embed("The cat sat");
        let nonzero: Vec<(usize, f32)> = v
            .iter()
            .enumerate()
            .filter(|(_, x)| **x != 0.0)
            .map(|(i, x)| (i, *x))
            .collect();
        let expected: &[(usize, f32)] = PINNED;
        assert_eq!(
            nonzero.len(),
            expected.len(),
            "got {nonzero:?}, expected {expected:?}"
        );
        for ((i, x), (j, y)) in nonzero.iter().zip(expected) {
            assert_eq!(i, j, "got {nonzero:?}");
            assert!((x - y).abs() < 1e-6, "got {nonzero:?}");
        }
        assert_eq!(HashingEmbedder::NAME, "hashing-v1");
    }

    const PINNED: &[(usize, f32)] = &[
        (0, -0.28728345),
        (4, -0.28728345),
        (5, -0.41040495),
        (9, 0.61560744),
        (11, -0.20520248),
        (13, 0.4954026),
    ];

    #[test]
    fn paraphrase_is_closer_than_unrelated_text() {
        for dim in [384, 768, 4096] {
            let e = HashingEmbedder::new(dim).unwrap();
            let a = "the cat sat on the mat";
            let para = sim(&e, a, "a cat was sitting on the mat");
            let unrelated = sim(&e, a, "quarterly revenue grew by ten percent");
            assert!(
                para > unrelated + 0.2,
                "dim {dim}: paraphrase {para}, unrelated {unrelated}"
            );
            assert!(unrelated.abs() < 0.2, "dim {dim}: unrelated {unrelated}");
        }
    }

    #[test]
    fn robust_to_typos() {
        let e = HashingEmbedder::default();
        let typo = sim(&e, "recieve the package", "receive the package");
        assert!(typo > 0.5, "typo similarity {typo}");
        let other = sim(&e, "recieve the package", "send a letter");
        assert!(typo > other, "typo {typo}, other {other}");
    }

    #[test]
    fn case_insensitive() {
        let e = HashingEmbedder::default();
        assert_eq!(e.embed("The Cat SAT"), e.embed("the cat sat"));
        assert_eq!(e.embed("ÉCOLE Ærø"), e.embed("école ærø"));
    }

    #[test]
    fn punctuation_and_spacing_separate_words_only() {
        let e = HashingEmbedder::default();
        assert_eq!(e.embed("cat, sat!"), e.embed("  cat   sat "));
        assert_eq!(e.embed("cat-sat"), e.embed("cat sat"));
    }

    #[test]
    fn unicode_text_is_embedded() {
        let e = HashingEmbedder::default();
        let cjk = sim(&e, "東京は日本の首都です", "東京は日本の大きな都市です");
        let cjk_unrelated = sim(&e, "東京は日本の首都です", "quarterly revenue");
        assert!(
            cjk > cjk_unrelated + 0.2,
            "cjk {cjk}, unrelated {cjk_unrelated}"
        );
        let accents = sim(&e, "crème brûlée", "creme brulee");
        assert!(accents.abs() < 1.0 - 1e-3, "accented and plain text differ");
        let v = e.embed("Ünïcödé ✓ 日本語 한국어 العربية");
        assert!((norm(&v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn text_without_words_still_has_a_direction() {
        let e = HashingEmbedder::default();
        for text in ["!!!", "🎉", "  ...  ", " ", "\t\n"] {
            let v = e.embed(text);
            assert!((norm(&v) - 1.0).abs() < 1e-5, "{text:?}");
        }
        assert!(sim(&e, "!!!", "!!") > 0.5);
        assert_eq!(e.embed("!!!"), e.embed("  !!!  "));
        assert!(sim(&e, "🎉", "🍕") < 0.5);
    }

    #[test]
    fn repeated_words_are_damped() {
        // With sqrt term frequency, repeating a word moves the vector less than linearly.
        let e = HashingEmbedder::default();
        let once = sim(&e, "cat dog", "cat cat cat cat dog");
        assert!(once > 0.5, "{once}");
    }

    /// Prints the cost of `embed` (run with `cargo test --release -- --nocapture embed_timing`).
    #[test]
    fn embed_timing() {
        let e = HashingEmbedder::default();
        let text = "Alice met Bob at the coffee shop on Tuesday morning to talk about the \
                    quarterly roadmap; they agreed to ship the memory consolidation feature \
                    first and revisit the ranking changes after the next review.";
        assert!(text.len() >= 190 && text.len() <= 210, "{}", text.len());
        let iterations = if cfg!(debug_assertions) { 200 } else { 20_000 };
        let mut sink = 0.0f32;
        let start = std::time::Instant::now();
        for _ in 0..iterations {
            sink += e.embed(std::hint::black_box(text))[0];
        }
        let per = start.elapsed() / iterations;
        println!(
            "embed of {} bytes at 768-d: {per:?} per call (sink {sink})",
            text.len()
        );
    }
}
