//! The HNSW graph as four flat arrays, laid out exactly as the index file stores them (see
//! `format.rs`), read through [`GraphView`]: from a mapped index file ([`super::Hnsw`]) or
//! from memory ([`super::HnswGraph`]). The search (`search.rs`) walks a view; nothing here
//! knows how rows are scored.

use super::format::HnswInfo;

/// Borrowed graph arrays. Every accessor is bounds-checked and returns an empty list for
/// anything out of range, so even an inconsistent view cannot make a search panic (the reader
/// validates consistency on open; the builder produces it).
#[derive(Debug, Clone, Copy)]
pub struct GraphView<'a> {
    /// Top layer per row.
    pub levels: &'a [u8],
    /// Per row: count, then `m0` slots.
    pub layer0: &'a [u32],
    /// Per row (+1): start of the row's upper block in `upper`, in u32 words.
    pub offsets: &'a [u64],
    /// Per row with level L >= 1: L slots of (count, then `m` neighbours), layers 1..=L.
    pub upper: &'a [u32],
    pub m: usize,
    pub m0: usize,
    pub entry: u32,
    pub max_level: usize,
    /// Of the vectors the graph indexes.
    pub dimension: usize,
}

impl<'a> GraphView<'a> {
    /// The arrays of a graph described by `info`.
    pub fn new(
        info: &HnswInfo,
        levels: &'a [u8],
        layer0: &'a [u32],
        offsets: &'a [u64],
        upper: &'a [u32],
    ) -> GraphView<'a> {
        GraphView {
            levels,
            layer0,
            offsets,
            upper,
            m: info.m,
            m0: info.m0,
            entry: info.entry_point,
            max_level: info.max_level,
            dimension: info.dimension,
        }
    }

    #[inline]
    pub fn rows(&self) -> usize {
        self.levels.len()
    }

    /// Where the slot of `node` on `layer` starts (its count word), in `layer0` for layer 0,
    /// in `upper` above.
    #[inline]
    pub fn slot_at(&self, node: u32, layer: usize) -> Option<usize> {
        if layer == 0 {
            return (node as usize).checked_mul(self.m0 + 1);
        }
        if usize::from(*self.levels.get(node as usize)?) < layer {
            return None;
        }
        let start = usize::try_from(*self.offsets.get(node as usize)?).ok()?;
        start.checked_add((layer - 1) * (self.m + 1))
    }

    /// The neighbours of `node` on `layer`.
    #[inline]
    pub fn neighbours(&self, node: u32, layer: usize) -> &'a [u32] {
        let (words, width) = if layer == 0 {
            (self.layer0, self.m0)
        } else {
            (self.upper, self.m)
        };
        let Some(at) = self.slot_at(node, layer) else {
            return &[];
        };
        let Some(slot) = at.checked_add(1 + width).and_then(|end| words.get(at..end)) else {
            return &[];
        };
        let count = (slot[0] as usize).min(width);
        &slot[1..1 + count]
    }
}

impl engram_core::hnsw::Layers for GraphView<'_> {
    #[inline]
    fn rows(&self) -> usize {
        GraphView::rows(self)
    }

    #[inline]
    fn neighbours(&self, node: u32, layer: usize) -> &[u32] {
        GraphView::neighbours(self, node, layer)
    }
}

/// The rows' quantised embeddings (`engram_core::quant`) and their scales, borrowed: what a
/// search scores rows with while it walks the graph, before the exact re-ranking.
#[derive(Debug, Clone, Copy)]
pub struct CodesView<'a> {
    /// `rows * dimension` codes, row-major.
    pub codes: &'a [i8],
    pub scales: &'a [f32],
    pub dimension: usize,
}

impl<'a> CodesView<'a> {
    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// The code of `row`; empty for a row out of range.
    #[inline]
    pub fn code(&self, row: u32) -> &'a [i8] {
        let at = row as usize * self.dimension;
        self.codes.get(at..at + self.dimension).unwrap_or(&[])
    }

    /// The scale of `row`; 0 for a row out of range.
    #[inline]
    pub fn scale(&self, row: u32) -> f32 {
        self.scales.get(row as usize).copied().unwrap_or(0.0)
    }
}
