//! Recall: direct matches seed spreading activation; results split into what the cue matched
//! (`vivid`, hops 0) and what spreading reached (`associated`, hops >= 1).

use std::time::Instant;

use engram_core::activation;
use engram_core::{simd, Confidence, Cue, CueInput, MemoryId, RecallMode, Retrieval, SpaceId};

use crate::{Engine, EngineError, Result};

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
        let dim = self.dimension(space)?;
        let retrieval = cue.effective_retrieval();
        let query: Option<Vec<f32>> = match &cue.input {
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
        };
        let want = cue.max_results;
        // Fusion ranks deeper lists than it returns: a memory second in one list and tenth in
        // the other should beat one that is only first in one.
        let depth = if retrieval == Retrieval::Hybrid {
            (want * 3).clamp(30, engram_core::MAX_RESULTS)
        } else {
            want
        };
        let dense = match &query {
            Some(q) if retrieval != Retrieval::Lexical => {
                let ef = self.opts.search_ef.max(depth);
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
        // Seeds: (id, activation, similarity to the cue when known, paths).
        let mut found: Vec<(MemoryId, f32, Option<f32>, FoundBy)> = Vec::new();
        match retrieval {
            Retrieval::Dense => {
                for h in dense {
                    let by = FoundBy {
                        dense: true,
                        ..FoundBy::default()
                    };
                    found.push((h.id, h.similarity, Some(h.similarity), by));
                }
            }
            Retrieval::Lexical => {
                // Activation: the BM25 score as a share of the best one.
                let best = lexical.first().map_or(1.0, |h| h.score);
                for h in lexical {
                    let a = h.score / best;
                    let by = FoundBy {
                        lexical: true,
                        ..FoundBy::default()
                    };
                    found.push((h.id, a, Some(a), by));
                }
            }
            Retrieval::Hybrid => {
                // Per candidate: (rank fusion score, BM25 share of the best, similarity, paths).
                let mut fused: std::collections::HashMap<
                    MemoryId,
                    (f32, f32, Option<f32>, FoundBy),
                > = Default::default();
                for (r, h) in dense.into_iter().enumerate() {
                    let e = fused.entry(h.id).or_default();
                    e.0 += 1.0 / (RRF_K + r as f32 + 1.0);
                    e.2 = Some(h.similarity);
                    e.3.dense = true;
                }
                let best = lexical.first().map_or(1.0, |h| h.score);
                for (r, h) in lexical.into_iter().enumerate() {
                    let e = fused.entry(h.id).or_default();
                    e.0 += 1.0 / (RRF_K + r as f32 + 1.0);
                    e.1 = h.score / best;
                    e.3.lexical = true;
                }
                let mut fused: Vec<(MemoryId, f32, Option<f32>, FoundBy)> = match self.opts.fusion {
                    // Activation: the fused score as a share of the most it can be (first in
                    // both lists), so that agreement of the two paths counts.
                    Fusion::ReciprocalRank => {
                        let top = 2.0 / (RRF_K + 1.0);
                        fused
                            .into_iter()
                            .map(|(id, (rrf, _, sim, by))| (id, rrf / top, sim, by))
                            .collect()
                    }
                    Fusion::Convex { lexical: w } => {
                        let q = query.as_ref().expect("hybrid retrieval embeds the cue");
                        let mut out = Vec::with_capacity(fused.len());
                        for (id, (_, bm, sim, by)) in fused {
                            let sim = match sim {
                                Some(s) => Some(s),
                                None => self
                                    .store
                                    .read_space(space, |st| st.similarity(id.as_str(), q))??,
                            };
                            let a = w * bm + (1.0 - w) * sim.unwrap_or(0.0).max(0.0);
                            out.push((id, a, sim, by));
                        }
                        out
                    }
                };
                fused.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                fused.truncate(want);
                found.extend(fused);
            }
        }
        // A lexical match's similarity to the cue, where the cue has an embedding.
        if let Some(q) = &query {
            for f in found.iter_mut().filter(|f| f.2.is_none()) {
                f.2 = self
                    .store
                    .read_space(space, |st| st.similarity(f.0.as_str(), q))??;
            }
        }
        // Interned ids: the activation function works on small copyable nodes.
        let mut ids: Vec<MemoryId> = Vec::new();
        let mut index: std::collections::HashMap<MemoryId, u32> = Default::default();
        let mut intern = |id: MemoryId, ids: &mut Vec<MemoryId>| -> u32 {
            *index.entry(id.clone()).or_insert_with(|| {
                ids.push(id);
                (ids.len() - 1) as u32
            })
        };
        let mut seed_info: std::collections::HashMap<u32, (Option<f32>, FoundBy)> =
            Default::default();
        let seeds: Vec<(u32, f32)> = found
            .into_iter()
            .filter(|f| f.1 > 0.0)
            .map(|(id, a, sim, by)| {
                let n = intern(id, &mut ids);
                seed_info.insert(n, (sim, by));
                (n, a)
            })
            .collect();

        let params = cue.spread_params();
        let ids = std::cell::RefCell::new(ids);
        let intern = std::cell::RefCell::new(intern);
        let error: std::cell::RefCell<Option<EngineError>> = Default::default();
        // The space's links, read from that space only: activation never leaves it.
        let graph = |node: u32, f: &mut dyn FnMut(u32, f32)| {
            let id = ids.borrow()[node as usize].clone();
            let out = self.store.read_space(space, |st| st.links(id.as_str()));
            match out {
                Ok(Ok(Some(ls))) => {
                    for l in ls {
                        let n = (intern.borrow_mut())(l.to, &mut ids.borrow_mut());
                        f(n, l.weight);
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) | Err(e) => {
                    error.borrow_mut().get_or_insert(e.into());
                }
            }
        };
        let spread = activation::spread(&seeds, &graph, params);
        if let Some(e) = error.into_inner() {
            return Err(e);
        }
        let ids = ids.into_inner();

        // Rank by score with the confidence alone, cut to max_results, then read the rest of
        // the survivors. A link may point at a memory deleted since: it is never returned.
        let mut ranked = Vec::new();
        for a in spread.nodes {
            if !cue.mode.includes(a.hops) {
                continue;
            }
            let id = &ids[a.node as usize];
            let Some(c) = self
                .store
                .read_space(space, |st| st.confidence(id.as_str()))??
            else {
                continue;
            };
            let confidence = Confidence::new(c);
            ranked.push((a.activation * confidence.value(), a, confidence));
        }
        ranked.sort_by(|x, y| {
            y.0.total_cmp(&x.0)
                .then_with(|| ids[x.1.node as usize].cmp(&ids[y.1.node as usize]))
        });
        ranked.truncate(cue.max_results);
        let mut items = Vec::with_capacity(ranked.len());
        for (score, a, confidence) in ranked {
            let id = &ids[a.node as usize];
            // Deleted between the two reads: left out too.
            let Some(m) = self.store.get(space, id.as_str())? else {
                continue;
            };
            let seed = if a.hops == 0 {
                seed_info.get(&a.node).copied()
            } else {
                None
            };
            let similarity = match (&seed, &query) {
                (Some((Some(s), _)), _) => *s,
                (_, Some(q)) if q.len() == m.embedding.len() => simd::dot(q, &m.embedding),
                _ => 0.0,
            };
            let found_by = match seed {
                Some((_, by)) => by,
                None => FoundBy {
                    spreading: true,
                    ..FoundBy::default()
                },
            };
            items.push(RecallItem {
                id: m.id,
                content: m.content,
                confidence,
                similarity,
                activation: a.activation,
                score,
                hops: a.hops,
                path: a.path.iter().map(|&n| ids[n as usize].clone()).collect(),
                retrieval_path: if a.hops == 0 {
                    RetrievalPath::Similarity
                } else {
                    RetrievalPath::Spreading
                },
                found_by,
                timestamp_us: m.timestamp_us,
            });
        }
        let (vivid, associated) = items.into_iter().partition(|i| i.hops == 0);
        Ok(Recall {
            vivid,
            associated,
            mode: cue.mode,
            retrieval,
            truncated: spread.truncated,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
