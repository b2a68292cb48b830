//! SplitMix64 (Steele, Lea & Flood 2014): a tiny generator whose output is fixed by its seed
//! on every platform. What the HNSW builders draw node levels from and what the cluster
//! simulation draws its workload from; never for anything that must be unpredictable.

/// The SplitMix64 output function: a bijective mix of one 64-bit word.
#[inline]
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The step SplitMix64 adds to its state per output (the golden ratio in 64 bits).
pub const SPLITMIX64_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A seeded SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(SPLITMIX64_GAMMA);
        splitmix64_mix(self.0)
    }

    /// A number in `0..n` (`n > 0`), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Visited marks for a graph search, by generation: starting a search is O(1) (the
/// generation moves on) and nothing is cleared per search, except once every 2^32 searches.
#[derive(Debug, Default, Clone)]
pub struct VisitedSet {
    stamps: Vec<u32>,
    generation: u32,
}

impl VisitedSet {
    /// Starts a search over `rows` rows: nothing visited.
    pub fn begin(&mut self, rows: usize) {
        if self.stamps.len() < rows {
            self.stamps.resize(rows, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `row` visited; false if it already was. `row` is below the rows of `begin`.
    #[inline]
    pub fn visit(&mut self, row: u32) -> bool {
        let stamp = &mut self.stamps[row as usize];
        if *stamp == self.generation {
            return false;
        }
        *stamp = self.generation;
        true
    }

    /// Whether `row` was visited in this search.
    #[inline]
    pub fn was_visited(&self, row: u32) -> bool {
        self.stamps[row as usize] == self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // splitmix64 with seed 0, so the generator never changes silently.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(7);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }

    #[test]
    fn visited_generations_wrap() {
        let mut s = VisitedSet::default();
        s.begin(4);
        assert!(s.visit(1));
        assert!(!s.visit(1));
        assert!(s.was_visited(1) && !s.was_visited(2));
        s.generation = u32::MAX;
        s.begin(4);
        assert_eq!(s.generation, 1);
        assert!(s.visit(1), "a wrap clears old stamps");
        s.begin(8);
        assert!(s.visit(7));
    }
}
