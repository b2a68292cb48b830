//! Build parameters of an HNSW index and their limits.

use super::format::{MAX_EF_CONSTRUCTION, MAX_M, MAX_M0, MIN_M};
use crate::error::{Result, StorageError};

/// How an HNSW graph is built (Malkov & Yashunin 2016). Recorded in the index header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Neighbours kept per node on layers >= 1, and chosen for a new node on every layer.
    /// `MIN_M..=MAX_M` (2..=128).
    pub m: usize,
    /// Neighbours kept per node on layer 0. `m..=MAX_M0` (up to 256).
    pub m0: usize,
    /// Beam width while inserting. `m..=MAX_EF_CONSTRUCTION` (up to 4096).
    pub ef_construction: usize,
    /// Seeds the level generator: the same vectors, parameters and seed give the same graph.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams::with_m(16)
    }
}

impl HnswParams {
    /// `m`, `m0 = 2 m`, `ef_construction = max(200, m)`, seed 0. On the hard data of
    /// `ENGRAM_BENCH_PARTS=spreads engram-bench recall` (100,000 x 768-d, clusters spread 1.2
    /// times the distance between centres) recall@10 at the engine's ef 32 was 0.944 with
    /// ef_construction 100 and 0.995 with 200; building on the rows' codes (`build.rs`) made
    /// 200 as fast to build (51 s) as 100 was on the vectors (47 s).
    pub fn with_m(m: usize) -> HnswParams {
        HnswParams {
            m,
            m0: 2 * m,
            ef_construction: m.max(200),
            seed: 0,
        }
    }

    /// Checks every limit; the error names the one broken.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(StorageError::Invalid(msg));
        if !(MIN_M..=MAX_M).contains(&self.m) {
            return bad(format!(
                "HNSW m = {} is outside {MIN_M}..={MAX_M} (MIN_M..=MAX_M)",
                self.m
            ));
        }
        if !(self.m..=MAX_M0).contains(&self.m0) {
            return bad(format!(
                "HNSW m0 = {} is outside m..=MAX_M0 ({}..={MAX_M0})",
                self.m0, self.m
            ));
        }
        if !(self.m..=MAX_EF_CONSTRUCTION).contains(&self.ef_construction) {
            return bad(format!(
                "HNSW ef_construction = {} is outside m..=MAX_EF_CONSTRUCTION ({}..={MAX_EF_CONSTRUCTION})",
                self.ef_construction, self.m
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let p = HnswParams::default();
        assert_eq!((p.m, p.m0, p.ef_construction, p.seed), (16, 32, 200, 0));
        p.validate().unwrap();
        let err = |p: HnswParams| p.validate().unwrap_err().to_string();
        assert!(err(HnswParams::with_m(1)).contains("MIN_M..=MAX_M"));
        assert!(err(HnswParams::with_m(MAX_M + 1)).contains("MIN_M..=MAX_M"));
        assert!(err(HnswParams { m0: 15, ..p }).contains("MAX_M0"));
        assert!(err(HnswParams {
            m0: MAX_M0 + 1,
            ..p
        })
        .contains("MAX_M0"));
        assert!(err(HnswParams {
            ef_construction: 8,
            ..p
        })
        .contains("MAX_EF_CONSTRUCTION"));
        assert!(err(HnswParams {
            ef_construction: MAX_EF_CONSTRUCTION + 1,
            ..p
        })
        .contains("MAX_EF_CONSTRUCTION"));
        HnswParams::with_m(MAX_M).validate().unwrap();
    }
}
