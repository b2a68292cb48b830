//! Recall: direct matches seed spreading activation; results split into what the cue matched
//! (`vivid`, hops 0) and what spreading reached (`associated`, hops >= 1).

use std::time::Instant;

use engram_core::activation;
use engram_core::{simd, Confidence, Cue, CueInput, MemoryId, RecallMode, SpaceId};

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

/// One recalled memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallItem {
    pub id: MemoryId,
    pub content: String,
    pub confidence: Confidence,
    /// Cosine similarity of the memory to the cue.
    pub similarity: f32,
    /// Its activation (a direct match's starts at its similarity).
    pub activation: f32,
    /// `activation x confidence`: the ranking.
    pub score: f32,
    pub hops: u32,
    /// From the seed that reached it (first) to the memory (last).
    pub path: Vec<MemoryId>,
    pub retrieval_path: RetrievalPath,
    /// When the episode happened (microseconds since the Unix epoch).
    pub timestamp_us: i64,
}

/// The result of a recall.
#[derive(Debug, Clone, PartialEq)]
pub struct Recall {
    pub vivid: Vec<RecallItem>,
    pub associated: Vec<RecallItem>,
    pub mode: RecallMode,
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
        let query = match &cue.input {
            CueInput::Text(t) => match text_embedding {
                Some(v) if v.len() == dim => v,
                Some(v) => {
                    return Err(EngineError::Invalid(format!(
                        "the text's embedding has {} dimensions, the space has {dim}",
                        v.len()
                    )))
                }
                None => self.text_embedder(space)?.embed(t)?,
            },
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
                v
            }
        };
        let ef = self.opts.search_ef.max(cue.max_results);
        let hits = self.store.search(space, &query, cue.max_results, ef)?;
        // Interned ids: the activation function works on small copyable nodes.
        let mut ids: Vec<MemoryId> = Vec::new();
        let mut index: std::collections::HashMap<MemoryId, u32> = Default::default();
        let mut intern = |id: MemoryId, ids: &mut Vec<MemoryId>| -> u32 {
            *index.entry(id.clone()).or_insert_with(|| {
                ids.push(id);
                (ids.len() - 1) as u32
            })
        };
        let seeds: Vec<(u32, f32)> = hits
            .into_iter()
            .filter(|h| h.similarity >= cue.threshold && h.similarity > 0.0)
            .map(|h| (intern(h.id, &mut ids), h.similarity))
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
            let similarity = a
                .seed_activation
                .unwrap_or_else(|| simd::dot(&query, &m.embedding));
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
                timestamp_us: m.timestamp_us,
            });
        }
        let (vivid, associated) = items.into_iter().partition(|i| i.hops == 0);
        Ok(Recall {
            vivid,
            associated,
            mode: cue.mode,
            truncated: spread.truncated,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
