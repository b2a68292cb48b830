//! A blocked Bloom filter over a segment's ids (rows and tombstones), built when the segment
//! is opened: a lookup by id asks it before the binary search, so a point read or an
//! auto-link re-scoring skips the segments that cannot hold the id (most of them: an id lives
//! in one segment, a space has up to dozens under write load).
//!
//! Each key sets `PROBES` bits within one 512-bit block (one cache line), chosen by a 64-bit
//! mix of the id's CRC32C and length. At `BITS_PER_KEY` bits a key the false-positive rate
//! measured by the test below is under 2 %.

use engram_core::rng::splitmix64_mix;

const BITS_PER_KEY: usize = 12;
const PROBES: u32 = 6;
const BLOCK_WORDS: usize = 8;

#[derive(Debug, Clone)]
pub struct Bloom {
    /// `blocks * BLOCK_WORDS` words.
    words: Vec<u64>,
    blocks: u64,
}

fn hash(id: &[u8]) -> u64 {
    splitmix64_mix(u64::from(crc32c::crc32c(id)) | ((id.len() as u64) << 32))
}

impl Bloom {
    /// An empty filter sized for `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        let bits = keys.max(1) * BITS_PER_KEY;
        let blocks = bits.div_ceil(BLOCK_WORDS * 64);
        Self {
            words: vec![0; blocks * BLOCK_WORDS],
            blocks: blocks as u64,
        }
    }

    /// The block's first word and the bits of `h` within it, one per probe.
    fn probes(&self, h: u64) -> (usize, impl Iterator<Item = (usize, u64)>) {
        // High bits choose the block (multiply-shift keeps them uniform), low bits the probes.
        let block = ((u128::from(h >> 32) * u128::from(self.blocks)) >> 32) as usize;
        let bits = (0..PROBES).map(move |i| {
            let b = ((h >> (i * 9)) & 511) as usize;
            (b / 64, 1u64 << (b % 64))
        });
        (block * BLOCK_WORDS, bits)
    }

    pub fn insert(&mut self, id: &[u8]) {
        let (base, bits) = self.probes(hash(id));
        for (w, m) in bits {
            self.words[base + w] |= m;
        }
    }

    /// False only if `id` was never inserted.
    pub fn may_contain(&self, id: &[u8]) -> bool {
        let (base, mut bits) = self.probes(hash(id));
        bits.all(|(w, m)| self.words[base + w] & m != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        for n in [0usize, 1, 7, 1000, 50_000] {
            let mut b = Bloom::with_capacity(n);
            for i in 0..n {
                b.insert(format!("memory-{i}").as_bytes());
            }
            for i in 0..n {
                assert!(b.may_contain(format!("memory-{i}").as_bytes()));
            }
            let probes = 100_000;
            let fp = (0..probes)
                .filter(|i| b.may_contain(format!("other-{i}").as_bytes()))
                .count();
            let rate = fp as f64 / probes as f64;
            assert!(rate < 0.02, "{n} keys: false-positive rate {rate}");
            assert!(b.words.len() * 64 <= (n.max(1) * BITS_PER_KEY).next_multiple_of(512));
        }
    }
}
