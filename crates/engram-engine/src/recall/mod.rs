//! Recall: direct matches seed spreading activation; results split into what the cue matched
//! (`vivid`, hops 0) and what spreading reached (`associated`, hops >= 1).
//!
//! A recall runs four stages, one file each:
//!
//! 1. [`candidates`]: the cue's embedding, then the dense (nearest embeddings) and the lexical
//!    (BM25) candidate lists, each as deep as fusion needs.
//! 2. [`fusion`]: the lists made into seeds, each with its activation, its similarity to the
//!    cue and the paths that found it (for hybrid retrieval, by [`Fusion`]).
//! 3. [`spreading`]: the seeds' activation spread along the space's links
//!    ([`engram_core::activation::spread`]).
//! 4. [`scoring`]: the activated memories ranked by `activation x confidence`, cut to the
//!    cue's `max_results`, read and split into `vivid` and `associated`.

mod candidates;
mod fusion;
mod scoring;
mod spreading;

use std::time::Instant;

use engram_core::{Confidence, Cue, MemoryId, RecallMode, Retrieval, SpaceId};

use crate::{Engine, Result};

/// How a result was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrievalPath {
    /// Matched by the cue directly.
    Similarity,
    /// Reached along links from a direct match.
    Spreading,
}

impl RetrievalPath {
    pub fn as_str(self) -> &'static str {
        match self {
            RetrievalPath::Similarity => "similarity",
            RetrievalPath::Spreading => "spreading",
        }
    }
}

/// Which paths found a recalled memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FoundBy {
    /// Among the cue's nearest embeddings.
    pub dense: bool,
    /// Among the best BM25 matches of the cue's text.
    pub lexical: bool,
    /// Reached along links.
    pub spreading: bool,
}

impl FoundBy {
    /// `"dense"`, `"lexical"`, `"spreading"`, those that apply, in this order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.dense, "dense"),
            (self.lexical, "lexical"),
            (self.spreading, "spreading"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect()
    }
}

/// How hybrid retrieval fuses the dense and lexical rankings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal-rank fusion: `sum of 1 / (RRF_K + rank)` over the two lists.
    ReciprocalRank,
    /// A convex combination of the scores: `lexical x BM25 / best BM25 + (1 - lexical) x
    /// cosine` (the cosine of every candidate computed exactly).
    Convex { lexical: f32 },
}

/// Reciprocal-rank fusion constant (Cormack et al.): a memory at rank `r` (0-based) of a list
/// adds `1 / (RRF_K + r + 1)`.
pub const RRF_K: f32 = 60.0;

/// One recalled memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallItem {
    pub id: MemoryId,
    pub content: String,
    pub confidence: Confidence,
    /// Cosine similarity of the memory to the cue; with lexical retrieval (no embedding of
    /// the cue), a direct match's BM25 score as a share of the best one.
    pub similarity: f32,
    /// Its activation (a direct match's starts at its similarity).
    pub activation: f32,
    /// `activation x confidence`: the ranking.
    pub score: f32,
    pub hops: u32,
    /// From the seed that reached it (first) to the memory (last).
    pub path: Vec<MemoryId>,
    pub retrieval_path: RetrievalPath,
    /// The paths that found it.
    pub found_by: FoundBy,
    /// When the episode happened (microseconds since the Unix epoch).
    pub timestamp_us: i64,
}

/// The result of a recall.
#[derive(Debug, Clone, PartialEq)]
pub struct Recall {
    pub vivid: Vec<RecallItem>,
    pub associated: Vec<RecallItem>,
    pub mode: RecallMode,
    /// How the direct matches were found.
    pub retrieval: Retrieval,
    /// Spreading stopped adding nodes at its work bound.
    pub truncated: bool,
    pub took_ms: f64,
}

impl Engine {
    /// Recalls memories for `cue` from `space`.
    pub fn recall(&self, space: &SpaceId, cue: &Cue) -> Result<Recall> {
        self.recall_embedded(space, cue, None)
    }

    /// [`Engine::recall`] with the text cue's embedding computed by the caller, with the
    /// space's [`Engine::text_embedder`] (the server batches such embeddings); `None`
    /// embeds it here.
    pub fn recall_embedded(
        &self,
        space: &SpaceId,
        cue: &Cue,
        text_embedding: Option<Vec<f32>>,
    ) -> Result<Recall> {
        let started = Instant::now();
        cue.validate()?;
        let retrieval = cue.effective_retrieval();
        let query = self.cue_embedding(space, cue, retrieval, text_embedding)?;
        let query = query.as_deref();
        let candidates = self.candidates(space, cue, retrieval, query)?;
        let seeds = self.fuse(space, retrieval, candidates, query, cue.max_results)?;
        let reached = self.spread(space, cue, seeds)?;
        let truncated = reached.spread.truncated;
        let (vivid, associated) = self.score(space, cue, query, reached)?;
        Ok(Recall {
            vivid,
            associated,
            mode: cue.mode,
            retrieval,
            truncated,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
