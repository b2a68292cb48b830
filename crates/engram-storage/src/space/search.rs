//! Searching one space: by similarity ([`SpaceState::search`]: each segment through its HNSW
//! index or an exact scan, the memtables exactly) and by BM25 ([`SpaceState::lexical_search`]).
//! Replaced versions and deleted memories are never returned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        let indexed_rows: usize = self
            .segments
            .iter()
            .filter(|g| g.index().is_some())
            .map(|g| g.rows())
            .sum();
        let searched: Vec<usize> = (0..self.segments.len())
            .filter(|&si| self.segments[si].info().dimension == query.len())
            .collect();
        let one = |si: usize| self.search_segment(si, query, k, ef, indexed_rows);
        // An error (a corrupt id column) fails the search, after every segment is searched.
        let mut failed: Option<StorageError> = None;
        let mut take = |found: Result<Vec<Hit>>| match found {
            Ok(found) => hits.extend(found),
            Err(e) => {
                failed.get_or_insert(e);
            }
        };
        let _active = ActiveSearch::enter();
        let cores = cores();
        if cores > 1
            && searched.len() > 1
            && indexed_rows >= PARALLEL_MIN_ROWS
            && ActiveSearch::count() <= cores / 2
        {
            // Few searches in flight: the segments are shared with the search helper (every
            // other one, so the halves are alike).
            let (here, there): (Vec<usize>, Vec<usize>) =
                searched.iter().partition(|&&si| si % 2 == 0);
            match helper() {
                Some(pool) => {
                    let mut theirs = Vec::new();
                    pool.in_place_scope(|scope| {
                        scope.spawn(|_| theirs = there.iter().map(|&si| one(si)).collect());
                        for &si in &here {
                            take(one(si));
                        }
                    });
                    theirs.into_iter().for_each(&mut take);
                }
                None => searched.iter().for_each(|&si| take(one(si))),
            }
        } else {
            searched.iter().for_each(|&si| take(one(si)));
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

    /// The best `k` live rows of segment `si` for `query`, through its index (at the beam
    /// width [`segment_ef`] gives it) or by an exact scan.
    fn search_segment(
        &self,
        si: usize,
        query: &[f32],
        k: usize,
        ef: usize,
        indexed_rows: usize,
    ) -> Result<Vec<Hit>> {
        let seg = &self.segments[si];
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
            Some(h) => h.search(
                &**seg,
                query,
                k,
                segment_ef(ef, k, seg.rows(), indexed_rows),
                accept,
            ),
            None => index::flat_search(&**seg, query, k, accept),
        };
        if let Some(e) = filter_error.into_inner() {
            return Err(e);
        }
        found
            .into_iter()
            .map(|(row, similarity)| {
                Ok(Hit {
                    id: seg.id(row as usize).and_then(crate::op::memory_id)?,
                    similarity,
                })
            })
            .collect()
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

/// A space whose indexed segments hold fewer rows than this is searched on one thread (the
/// handing over costs more than it saves).
const PARALLEL_MIN_ROWS: usize = 20_000;

/// The thread that takes half of a search's segments while the node is quiet (one fewer than
/// the cores); `None` on one core, or when it could not be started.
fn helper() -> Option<&'static rayon_core::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon_core::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = cores();
        if cores < 2 {
            return None;
        }
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(cores - 1)
            .thread_name(|_| "engram-search".into())
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, "no search helper thread: searches use one thread"),
            )
            .ok()
    })
    .as_ref()
}

/// The cores this process may use, read once (`available_parallelism` reads cgroup files on
/// every call: tens of microseconds, a third of a search).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Searches in flight on this node (a search splits its segments over two threads only while
/// few are, so that under load it costs no extra thread).
static ACTIVE_SEARCHES: AtomicUsize = AtomicUsize::new(0);

/// One search counted in [`ACTIVE_SEARCHES`] while it lives.
struct ActiveSearch;

impl ActiveSearch {
    fn enter() -> ActiveSearch {
        ACTIVE_SEARCHES.fetch_add(1, Ordering::Relaxed);
        ActiveSearch
    }

    fn count() -> usize {
        ACTIVE_SEARCHES.load(Ordering::Relaxed)
    }
}

impl Drop for ActiveSearch {
    fn drop(&mut self) {
        ACTIVE_SEARCHES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The beam width of one segment's walk when the space's indexed segments hold
/// `indexed_rows` rows: `ef` scaled by the square root of the segment's share of them (at
/// least `k`). A walk costs about the same at a given width whatever the segment's size, and
/// a small segment holds few of the space's best matches, each found at a narrower beam than
/// in a large graph: with every segment at the full `ef`, eight segments of 12,500 rows took
/// eight times the time of one of 100,000 for no better recall (`engram-bench recall`, part
/// `spreads`). One segment, or one holding nearly every row, keeps the full `ef`.
pub(crate) fn segment_ef(ef: usize, k: usize, rows: usize, indexed_rows: usize) -> usize {
    if indexed_rows == 0 || rows >= indexed_rows {
        return ef.max(k);
    }
    let share = rows as f64 / indexed_rows as f64;
    ((ef as f64 * share.sqrt()).ceil() as usize).max(k)
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

#[cfg(test)]
mod tests {
    use super::segment_ef;

    #[test]
    fn a_segments_beam_follows_its_share_of_the_rows() {
        // Alone, or holding every row: the full width, at least k.
        assert_eq!(segment_ef(32, 10, 100_000, 100_000), 32);
        assert_eq!(segment_ef(32, 10, 5, 0), 32);
        assert_eq!(segment_ef(4, 10, 100, 100), 10);
        // One of eight equal segments: sqrt(1/8) of 32, rounded up.
        assert_eq!(segment_ef(32, 10, 12_500, 100_000), 12);
        assert_eq!(segment_ef(256, 10, 12_500, 100_000), 91);
        // Never below k.
        assert_eq!(segment_ef(32, 10, 1_000, 100_000), 10);
        // A large segment beside small ones keeps most of the width.
        assert_eq!(segment_ef(32, 10, 90_000, 100_000), 31);
    }
}
