//! Stage 2, fusion: the candidate lists made into seeds for spreading.
//!
//! Dense retrieval seeds each hit at its similarity; lexical retrieval at its BM25 score as a
//! share of the best one; hybrid retrieval fuses the two lists by [`Fusion`] and keeps the
//! best `max_results`.

use std::collections::HashMap;

use engram_core::{MemoryId, Retrieval, SpaceId};

use super::candidates::Candidates;
use super::{FoundBy, Fusion, RRF_K};
use crate::{Engine, Result};

/// A direct match of the cue: where spreading starts.
pub(super) struct Seed {
    pub id: MemoryId,
    /// Its activation before spreading.
    pub activation: f32,
    /// Its similarity to the cue, when known.
    pub similarity: Option<f32>,
    pub found_by: FoundBy,
}

/// A hybrid candidate as the two lists saw it.
#[derive(Default)]
struct Fused {
    /// Reciprocal-rank fusion score.
    rrf: f32,
    /// BM25 score as a share of the best one (0 if not a lexical match).
    bm25: f32,
    /// Similarity to the cue (known for dense matches).
    similarity: Option<f32>,
    found_by: FoundBy,
}

impl Engine {
    /// The seeds of a recall, best first for hybrid retrieval (at most `want` of them), in
    /// list order otherwise. Every seed has its similarity to the cue where the cue has an
    /// embedding (`query`) and the memory is still there.
    pub(super) fn fuse(
        &self,
        space: &SpaceId,
        retrieval: Retrieval,
        candidates: Candidates,
        query: Option<&[f32]>,
        want: usize,
    ) -> Result<Vec<Seed>> {
        let Candidates { dense, lexical } = candidates;
        let mut seeds: Vec<Seed> = match retrieval {
            Retrieval::Dense => dense
                .into_iter()
                .map(|h| Seed {
                    id: h.id,
                    activation: h.similarity,
                    similarity: Some(h.similarity),
                    found_by: FoundBy {
                        dense: true,
                        ..FoundBy::default()
                    },
                })
                .collect(),
            Retrieval::Lexical => {
                // Activation: the BM25 score as a share of the best one.
                let best = lexical.first().map_or(1.0, |h| h.score);
                lexical
                    .into_iter()
                    .map(|h| {
                        let a = h.score / best;
                        Seed {
                            id: h.id,
                            activation: a,
                            similarity: Some(a),
                            found_by: FoundBy {
                                lexical: true,
                                ..FoundBy::default()
                            },
                        }
                    })
                    .collect()
            }
            Retrieval::Hybrid => {
                let mut fused: HashMap<MemoryId, Fused> = HashMap::new();
                for (r, h) in dense.into_iter().enumerate() {
                    let e = fused.entry(h.id).or_default();
                    e.rrf += 1.0 / (RRF_K + r as f32 + 1.0);
                    e.similarity = Some(h.similarity);
                    e.found_by.dense = true;
                }
                let best = lexical.first().map_or(1.0, |h| h.score);
                for (r, h) in lexical.into_iter().enumerate() {
                    let e = fused.entry(h.id).or_default();
                    e.rrf += 1.0 / (RRF_K + r as f32 + 1.0);
                    e.bm25 = h.score / best;
                    e.found_by.lexical = true;
                }
                let mut seeds = self.fused_activation(space, fused, query)?;
                seeds.sort_by(|a, b| {
                    b.activation
                        .total_cmp(&a.activation)
                        .then_with(|| a.id.cmp(&b.id))
                });
                seeds.truncate(want);
                seeds
            }
        };
        // A lexical match's similarity to the cue, where the cue has an embedding.
        if let Some(q) = query {
            for s in seeds.iter_mut().filter(|s| s.similarity.is_none()) {
                s.similarity = self.similarity(space, &s.id, q)?;
            }
        }
        Ok(seeds)
    }

    /// A hybrid candidate's activation, by the engine's [`Fusion`].
    fn fused_activation(
        &self,
        space: &SpaceId,
        fused: HashMap<MemoryId, Fused>,
        query: Option<&[f32]>,
    ) -> Result<Vec<Seed>> {
        let seed = |id, activation, f: Fused| Seed {
            id,
            activation,
            similarity: f.similarity,
            found_by: f.found_by,
        };
        Ok(match self.opts.fusion {
            // Activation: the fused score as a share of the most it can be (first in both
            // lists), so that agreement of the two paths counts.
            Fusion::ReciprocalRank => {
                let top = 2.0 / (RRF_K + 1.0);
                fused
                    .into_iter()
                    .map(|(id, f)| seed(id, f.rrf / top, f))
                    .collect()
            }
            Fusion::Convex { lexical: w } => {
                let q = query.expect("hybrid retrieval embeds the cue");
                let mut out = Vec::with_capacity(fused.len());
                for (id, mut f) in fused {
                    if f.similarity.is_none() {
                        f.similarity = self.similarity(space, &id, q)?;
                    }
                    let a = w * f.bm25 + (1.0 - w) * f.similarity.unwrap_or(0.0).max(0.0);
                    out.push(seed(id, a, f));
                }
                out
            }
        })
    }

    /// The similarity of a stored memory to `query` (`None`: not there).
    fn similarity(&self, space: &SpaceId, id: &MemoryId, query: &[f32]) -> Result<Option<f32>> {
        Ok(self
            .store
            .read_space(space, |st| st.similarity(id.as_str(), query))??)
    }
}
