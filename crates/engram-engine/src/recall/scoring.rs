//! Stage 4, scoring: what spreading reached, ranked by `activation x confidence`, cut to the
//! cue's `max_results` and read, split into `vivid` (hops 0) and `associated` (hops >= 1).

use engram_core::{simd, Confidence, Cue, SpaceId};

use super::spreading::Spreading;
use super::{FoundBy, RecallItem, RetrievalPath};
use crate::{Engine, Result};

impl Engine {
    /// Ranks by score with the confidence alone, cuts to `max_results`, then reads the rest of
    /// the survivors. A link may point at a memory deleted since: it is never returned.
    pub(super) fn score(
        &self,
        space: &SpaceId,
        cue: &Cue,
        query: Option<&[f32]>,
        reached: Spreading,
    ) -> Result<(Vec<RecallItem>, Vec<RecallItem>)> {
        let Spreading { ids, seeds, spread } = reached;
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
                seeds.get(&a.node).copied()
            } else {
                None
            };
            let similarity = match (&seed, query) {
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
        Ok(items.into_iter().partition(|i| i.hops == 0))
    }
}
