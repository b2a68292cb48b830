//! Searching a segment's HNSW graph (greedy descent through the upper layers, then a beam
//! search of width `ef` on layer 0, both `engram_core::hnsw`'s, scoring rows against the
//! segment's vectors), and the exact flat scan. Neither allocates per visited node: the visited
//! set is a generation-stamped array and the heaps live in a reusable [`SearchScratch`].

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use engram_core::hnsw::{self, greedy, search_layer, Cand, Scorer};

use super::hnsw::Hnsw;
use super::vectors::Vectors;
use super::view::{CodesView, GraphView};

pub use engram_core::hnsw::Scratch as SearchScratch;

/// Similarity of two stored (L2-normalised) vectors: their dot product. A NaN (from corrupt
/// embedding bytes) ranks below everything.
#[inline]
pub(crate) fn similarity(a: &[f32], b: &[f32]) -> f32 {
    let s = engram_core::simd::dot(a, b);
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s
    }
}

/// How the shared HNSW code scores rows here: against a query, from the vectors (a segment's
/// mapped embedding column, or any [`Vectors`]).
pub(crate) struct ToQuery<'a, V: ?Sized> {
    pub vectors: &'a V,
    pub query: &'a [f32],
}

impl<V: Vectors + ?Sized> Scorer for ToQuery<'_, V> {
    #[inline]
    fn score(&self, row: u32) -> f32 {
        similarity(self.query, self.vectors.vector(row))
    }

    #[inline]
    fn prefetch(&self, row: u32) {
        hnsw::prefetch(self.vectors.vector(row));
    }
}

/// How a search scores rows while it walks the graph of an index with codes: the rows' codes
/// against the query's code (a quarter of the bytes of the vectors, and an integer dot
/// product). The best found are then scored exactly ([`search_with_codes`]).
pub(crate) struct ToCodes<'a> {
    pub codes: CodesView<'a>,
    pub query: &'a [i8],
    pub scale: f32,
}

impl Scorer for ToCodes<'_> {
    #[inline]
    fn score(&self, row: u32) -> f32 {
        let code = self.codes.code(row);
        if code.len() != self.query.len() {
            return f32::NEG_INFINITY;
        }
        engram_core::simd::dot_i8(self.query, code) as f32 * self.scale * self.codes.scale(row)
    }

    #[inline]
    fn prefetch(&self, row: u32) {
        hnsw::prefetch(self.codes.code(row));
    }
}

thread_local! {
    static SCRATCH: RefCell<SearchScratch> = RefCell::new(SearchScratch::new());
}

/// Runs `f` with this thread's scratch (or a fresh one if it is in use further up the stack,
/// e.g. a search from inside an `accept` callback).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut SearchScratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut SearchScratch::new()),
    })
}

impl GraphView<'_> {
    /// Up to `k` `(row, similarity)` for `query`, best first (ties: lower row first), among
    /// the rows `accept` takes. Rejected rows (deleted, superseded) are traversed but never
    /// returned; `ef` (the beam width, raised to at least `k`) trades speed for recall; when
    /// the graph cannot reach `k` accepted rows, the rows it never reached are scanned, so `k`
    /// results come back whenever `k` rows are accepted. Uses this thread's search scratch.
    ///
    /// # Panics
    /// If `vectors` does not have this index's rows and dimension, or `query` its dimension
    /// (caller bugs).
    pub fn search(
        &self,
        vectors: &impl Vectors,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        with_scratch(|s| search_graph(self, s, vectors, query, k, ef, accept))
    }
}

impl Hnsw {
    /// Up to `k` `(row, similarity)` for `query`, best first (ties: lower row first), among
    /// the rows `accept` takes, as [`GraphView::search`] gives them. A version 2 index walks
    /// its graph by the rows' codes and scores the best `ef` it finds exactly from `vectors`
    /// (the segment's rows), so the similarities returned are exact; a version 1 index (no
    /// codes) walks by `vectors`.
    ///
    /// # Panics
    /// If `vectors` does not have this index's rows and dimension, or `query` its dimension
    /// (caller bugs).
    pub fn search(
        &self,
        vectors: &impl Vectors,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let g = self.view();
        match self.codes() {
            Some(codes) => {
                with_scratch(|s| search_with_codes(&g, s, codes, vectors, query, k, ef, accept))
            }
            None => with_scratch(|s| search_graph(&g, s, vectors, query, k, ef, accept)),
        }
    }
}

/// Top `k` accepted rows for `query`, best first: the graph walked by `codes`, the best `ef`
/// found then scored exactly from `vectors`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search_with_codes<V: Vectors + ?Sized>(
    g: &GraphView<'_>,
    s: &mut SearchScratch,
    codes: CodesView<'_>,
    vectors: &V,
    query: &[f32],
    k: usize,
    ef: usize,
    accept: impl Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    assert!(
        vectors.len() == g.rows()
            && vectors.dimension() == g.dimension
            && codes.rows() == g.rows()
            && codes.dimension == g.dimension,
        "the vectors or codes searched are not the ones the graph indexes"
    );
    check_query(vectors, query);
    let rows = g.rows();
    if k == 0 || rows == 0 || g.entry as usize >= rows {
        return Vec::new();
    }
    let ef = ef.max(k);
    let code = engram_core::quant::quantize(query);
    let scorer = ToCodes {
        codes,
        query: &code.bytes,
        scale: code.scale,
    };
    let entry = Cand {
        sim: scorer.score(g.entry),
        id: g.entry,
    };
    let ep = greedy(g, &scorer, entry, g.max_level, 0);
    search_layer(g, s, &scorer, &[ep], ef, 0, &accept);
    let mut found = Vec::with_capacity(ef);
    s.drain_into(&mut found);
    let mut out: Vec<(u32, f32)> = found
        .iter()
        .map(|c| (c.id, similarity(query, vectors.vector(c.id))))
        .collect();
    if out.len() < k {
        // The reachable graph is exhausted: the rows it never reached, exactly.
        for row in 0..rows as u32 {
            if !s.was_visited(row) && accept(row) {
                out.push((row, similarity(query, vectors.vector(row))));
            }
        }
    }
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

/// Top `k` accepted rows for `query`, best first.
pub(crate) fn search_graph<V: Vectors + ?Sized>(
    g: &GraphView<'_>,
    s: &mut SearchScratch,
    vectors: &V,
    query: &[f32],
    k: usize,
    ef: usize,
    accept: impl Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    assert!(
        vectors.len() == g.rows() && vectors.dimension() == g.dimension,
        "the vectors searched are not the ones the graph indexes"
    );
    check_query(vectors, query);
    let rows = g.rows();
    if k == 0 || rows == 0 || g.entry as usize >= rows {
        return Vec::new();
    }
    let ef = ef.max(k);
    let scorer = ToQuery { vectors, query };
    let entry = Cand {
        sim: scorer.score(g.entry),
        id: g.entry,
    };
    let ep = greedy(g, &scorer, entry, g.max_level, 0);
    search_layer(g, s, &scorer, &[ep], ef, 0, &accept);
    if s.found() < k {
        // The reachable graph is exhausted (the search only stops early with `ef >= k`
        // accepted rows): scan the rows it never reached, so that `k` results are returned
        // whenever `k` rows are accepted.
        for row in 0..rows as u32 {
            if !s.was_visited(row) && accept(row) {
                let sim = similarity(query, vectors.vector(row));
                s.offer(Cand { sim, id: row }, ef);
            }
        }
    }
    s.take_best(k)
}

/// # Panics
/// If `query` does not have the vectors' dimension (a caller bug).
fn check_query<V: Vectors + ?Sized>(vectors: &V, query: &[f32]) {
    assert_eq!(
        query.len(),
        vectors.dimension(),
        "query dimension differs from the vectors'"
    );
}

/// Exact top `k` accepted rows for `query` by brute force, best first (ties: lower row first).
/// For small segments, and the ground truth of the approximate search.
///
/// # Panics
/// If `query.len() != vectors.dimension()`.
pub fn flat_search<V: Vectors + ?Sized>(
    vectors: &V,
    query: &[f32],
    k: usize,
    accept: impl Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    check_query(vectors, query);
    if k == 0 {
        return Vec::new();
    }
    let rows = u32::try_from(vectors.len()).unwrap_or(u32::MAX);
    let mut heap: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(k.min(rows as usize) + 1);
    for row in 0..rows {
        let c = Cand {
            sim: similarity(query, vectors.vector(row)),
            id: row,
        };
        // The filter (a lookup in newer data) only for rows that would enter the top k.
        let enters = heap.len() < k || heap.peek().is_some_and(|w| c > w.0);
        if !enters || !accept(row) {
            continue;
        }
        if heap.len() == k {
            heap.pop();
        }
        heap.push(Reverse(c));
    }
    let mut out: Vec<(u32, f32)> = heap
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse(c)| (c.id, c.sim))
        .collect();
    // `into_sorted_vec` is ascending in `Reverse<Cand>`, i.e. best first already.
    debug_assert!(out.windows(2).all(|w| w[0].1 >= w[1].1));
    out.truncate(k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::vectors::FlatVectors;

    #[test]
    fn flat_search_orders_and_filters() {
        let data = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8, 0.8, 0.6, -1.0, 0.0];
        let v = FlatVectors::new(&data[..], 2).unwrap();
        let r = flat_search(&v, &[1.0, 0.0], 3, |_| true);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 3, 2]);
        let r = flat_search(&v, &[1.0, 0.0], 10, |row| row != 0);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 2, 1, 4]);
        assert!(flat_search(&v, &[1.0, 0.0], 0, |_| true).is_empty());
        // Ties break towards the lower row.
        let same = [0.5f32; 8];
        let v = FlatVectors::new(&same[..], 2).unwrap();
        let r = flat_search(&v, &[1.0, 1.0], 2, |_| true);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
    }
}
