//! Searching one space: by similarity ([`SpaceState::search`]: each segment through its HNSW
//! index or an exact scan, the memtables exactly) and by BM25 ([`SpaceState::lexical_search`]).
//! Replaced versions and deleted memories are never returned.

use std::collections::HashMap;
use std::sync::Arc;

use engram_core::MemoryId;

use crate::error::{Result, StorageError};
use crate::index;
use crate::lexical::{self, DocTerms};
use crate::space::state::SpaceState;

impl SpaceState {
    /// The `k` live memories most similar to `query` (unit length, the space's dimension),
    /// best first: each segment through its HNSW index (`ef` is the beam width) or, without
    /// one, an exact scan; the memtables exactly. Replaced versions and deleted memories are
    /// never returned.
    pub(crate) fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        let mut hits: Vec<Hit> = Vec::new();
        if k == 0 {
            return Ok(hits);
        }
        // The memtables: every entry scored, only the best k kept (ids cloned for those).
        let mut scored: Vec<(f32, &MemoryId)> = Vec::new();
        for (_, id, m) in self.memtable_live() {
            if m.embedding.len() == query.len() {
                scored.push((engram_core::simd::dot(query, &m.embedding), id));
            }
        }
        let best_first = |a: &(f32, &MemoryId), b: &(f32, &MemoryId)| {
            b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, best_first);
            scored.truncate(k);
        }
        hits.extend(scored.into_iter().map(|(similarity, id)| Hit {
            id: id.clone(),
            similarity,
        }));
        // An error inside a filter (a corrupt id column) fails the search, after the scan.
        let mut failed: Option<StorageError> = None;
        for (si, seg) in self.segments.iter().enumerate() {
            if seg.info().dimension != query.len() {
                continue;
            }
            let filter_error = std::cell::RefCell::new(None);
            let accept = |row: u32| match seg
                .id(row as usize)
                .and_then(|id| self.newest_in_segment(si, id))
            {
                Ok(newest) => newest,
                Err(e) => {
                    filter_error.borrow_mut().get_or_insert(e);
                    false
                }
            };
            let found = match seg.index() {
                Some(h) => h.search(&**seg, query, k, ef, accept),
                None => index::flat_search(&**seg, query, k, accept),
            };
            if let Some(e) = filter_error.into_inner() {
                failed.get_or_insert(e);
            }
            for (row, similarity) in found {
                match seg.id(row as usize).and_then(crate::op::memory_id) {
                    Ok(id) => hits.push(Hit { id, similarity }),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        hits.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        hits.truncate(k);
        Ok(hits)
    }

    /// The `k` live memories with the highest BM25 score for `terms` (distinct, from
    /// [`lexical::query_terms`]), best first; only memories holding at least one term. See
    /// [`crate::lexical`] for the scoring. Replaced versions and deleted memories are never
    /// returned.
    pub(crate) fn lexical_search(&self, terms: &[u64], k: usize) -> Result<Vec<LexHit>> {
        if k == 0 || terms.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<(&MemoryId, Arc<DocTerms>)> = self
            .memtable_live()
            .map(|(table, id, m)| (id, table.doc_terms(m)))
            .collect();
        let mut n = docs.len() as u64;
        let mut total: u64 = docs.iter().map(|(_, d)| d.len as u64).sum();
        for seg in &self.segments {
            if let Some(l) = seg.lex() {
                n += l.rows() as u64;
                total += l.total_len();
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let avg = total as f32 / n as f32;
        let idfs: Vec<f32> = terms
            .iter()
            .map(|&t| {
                let mut df = docs.iter().filter(|(_, d)| d.tf(t) > 0).count() as u64;
                for seg in &self.segments {
                    if let Some((d, _)) = seg.lex().and_then(|l| l.postings(t)) {
                        df += d as u64;
                    }
                }
                lexical::idf(n, df)
            })
            .collect();
        // (score, source): the memtables' entries first, then segments oldest first.
        let mut cands: Vec<(f32, usize, u32)> = Vec::new();
        const MEMTABLE: usize = usize::MAX;
        for (i, (_, d)) in docs.iter().enumerate() {
            let mut score = 0.0;
            for (j, &t) in terms.iter().enumerate() {
                let tf = d.tf(t);
                if tf > 0 {
                    score += lexical::term_score(idfs[j], tf, d.len, avg);
                }
            }
            if score > 0.0 {
                cands.push((score, MEMTABLE, i as u32));
            }
        }
        for (si, seg) in self.segments.iter().enumerate() {
            let Some(l) = seg.lex() else { continue };
            let mut acc: HashMap<u32, f32> = HashMap::new();
            for (j, &t) in terms.iter().enumerate() {
                if let Some((_, postings)) = l.postings(t) {
                    for (row, tf) in postings {
                        *acc.entry(row).or_default() +=
                            lexical::term_score(idfs[j], tf, l.doc_len(row as usize), avg);
                    }
                }
            }
            cands.extend(acc.into_iter().map(|(row, score)| (score, si, row)));
        }
        cands.sort_unstable_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.cmp(&b.1))
                .then_with(|| a.2.cmp(&b.2))
        });
        let mut out = Vec::with_capacity(k);
        for (score, source, row) in cands {
            if source == MEMTABLE {
                out.push(LexHit {
                    id: docs[row as usize].0.clone(),
                    score,
                });
            } else {
                let id = self.segments[source].id(row as usize)?;
                if self.newest_in_segment(source, id)? {
                    out.push(LexHit {
                        id: crate::op::memory_id(id)?,
                        score,
                    });
                }
            }
            if out.len() == k {
                break;
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// A lexical search result: a live memory and its BM25 score.
#[derive(Debug, Clone, PartialEq)]
pub struct LexHit {
    pub id: MemoryId,
    pub score: f32,
}

/// A search result: a live memory and its similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: MemoryId,
    pub similarity: f32,
}
