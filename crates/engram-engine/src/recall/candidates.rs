//! Stage 1, candidates: the cue's embedding, then the dense and the lexical candidate lists.

use engram_core::{simd, Cue, CueInput, Retrieval, SpaceId};
use engram_storage::{Hit, LexHit};

use crate::{Engine, EngineError, Result};

/// The candidate lists, best first.
pub(super) struct Candidates {
    /// The cue's nearest embeddings, at or above its threshold (empty for lexical retrieval).
    pub dense: Vec<Hit>,
    /// The best BM25 matches of the cue's text (empty for dense retrieval and vector cues).
    pub lexical: Vec<LexHit>,
}

/// How deep each list is ranked. Fusion ranks deeper lists than it returns: a memory second
/// in one list and tenth in the other should beat one that is only first in one.
fn depth(retrieval: Retrieval, want: usize) -> usize {
    if retrieval == Retrieval::Hybrid {
        (want * 3).clamp(30, engram_core::MAX_RESULTS)
    } else {
        want
    }
}

impl Engine {
    /// The beam width of a dense search for `depth` results when the cue names none.
    pub fn default_ef(&self, depth: usize) -> usize {
        self.opts.search_ef.max(depth)
    }

    /// The cue's embedding, normalised, in the space's dimension: `text_embedding` when the
    /// caller gave one, else the space's text embedder's; `None` for a text cue under lexical
    /// retrieval. Fails when the space does not exist.
    pub(super) fn cue_embedding(
        &self,
        space: &SpaceId,
        cue: &Cue,
        retrieval: Retrieval,
        text_embedding: Option<Vec<f32>>,
    ) -> Result<Option<Vec<f32>>> {
        let dim = self.dimension(space)?;
        Ok(match &cue.input {
            CueInput::Text(_) if retrieval == Retrieval::Lexical => None,
            CueInput::Text(t) => Some(match text_embedding {
                Some(v) if v.len() == dim => v,
                Some(v) => {
                    return Err(EngineError::Invalid(format!(
                        "the text's embedding has {} dimensions, the space has {dim}",
                        v.len()
                    )))
                }
                None => self.text_embedder(space)?.embed(t)?,
            }),
            CueInput::Vector(v) => {
                if v.len() != dim {
                    return Err(EngineError::Invalid(format!(
                        "the cue's embedding has {} dimensions, the space has {dim}",
                        v.len()
                    )));
                }
                let mut v = v.clone();
                if !simd::normalize(&mut v) {
                    return Err(EngineError::Invalid(
                        "the cue's embedding has no direction (all zeros)".into(),
                    ));
                }
                Some(v)
            }
        })
    }

    /// The dense list (by `query`) and the lexical list (by the cue's text), each searched
    /// only when `retrieval` uses it.
    pub(super) fn candidates(
        &self,
        space: &SpaceId,
        cue: &Cue,
        retrieval: Retrieval,
        query: Option<&[f32]>,
    ) -> Result<Candidates> {
        let depth = depth(retrieval, cue.max_results);
        let dense = match query {
            Some(q) if retrieval != Retrieval::Lexical => {
                let ef = cue.ef.unwrap_or_else(|| self.default_ef(depth)).max(depth);
                self.store
                    .search(space, q, depth, ef)?
                    .into_iter()
                    .filter(|h| h.similarity >= cue.threshold && h.similarity > 0.0)
                    .collect()
            }
            _ => Vec::new(),
        };
        let lexical = match &cue.input {
            CueInput::Text(t) if retrieval != Retrieval::Dense => {
                self.store.lexical_search(space, t, depth)?
            }
            _ => Vec::new(),
        };
        Ok(Candidates { dense, lexical })
    }
}
