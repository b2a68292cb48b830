//! The HNSW graph as four flat arrays, laid out exactly as the index file stores them (see
//! `format.rs`): [`GraphView`] reads them (from a mapped file or from memory), [`HnswGraph`]
//! owns them (what the builder produces and the writer encodes).

use super::format::HnswInfo;
use super::search::{search_graph, with_scratch, SearchScratch};
use super::vectors::Vectors;

/// Borrowed graph arrays. Every accessor is bounds-checked and returns an empty list for
/// anything out of range, so even an inconsistent view cannot make a search panic (the reader
/// validates consistency on open; the builder produces it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GraphView<'a> {
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
}

impl<'a> GraphView<'a> {
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

/// An HNSW graph held in memory: built by [`super::build`], written by
/// [`super::build_and_write`], searchable as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HnswGraph {
    pub(crate) info: HnswInfo,
    pub(crate) levels: Vec<u8>,
    pub(crate) layer0: Vec<u32>,
    pub(crate) offsets: Vec<u64>,
    pub(crate) upper: Vec<u32>,
}

impl HnswGraph {
    pub fn info(&self) -> HnswInfo {
        self.info
    }

    pub(crate) fn view(&self) -> GraphView<'_> {
        GraphView {
            levels: &self.levels,
            layer0: &self.layer0,
            offsets: &self.offsets,
            upper: &self.upper,
            m: self.info.m,
            m0: self.info.m0,
            entry: self.info.entry_point,
            max_level: self.info.max_level,
        }
    }

    /// Replaces the neighbours of `node` on `layer` (at most `m0` on layer 0, `m` above).
    /// Returns where the slot starts (its count word) in `layer0` or `upper`.
    pub(crate) fn set_neighbours(
        &mut self,
        node: u32,
        layer: usize,
        ids: impl ExactSizeIterator<Item = u32>,
    ) -> usize {
        let (at, width) = self.slot(node, layer);
        let words = self.words_mut(layer);
        let slot = &mut words[at..at + 1 + width];
        assert!(
            ids.len() <= width,
            "{} neighbours, room for {width}",
            ids.len()
        );
        slot[0] = ids.len() as u32;
        let mut n = 0;
        for (dst, id) in slot[1..].iter_mut().zip(ids) {
            *dst = id;
            n += 1;
        }
        // Unused slots are zero, so equal graphs encode to equal bytes.
        slot[1 + n..].fill(0);
        at
    }

    /// Appends `id` to the neighbours of `node` on `layer` and returns the index of the word
    /// written; `None` when the list is full.
    pub(crate) fn push_neighbour(&mut self, node: u32, layer: usize, id: u32) -> Option<usize> {
        let (at, width) = self.slot(node, layer);
        let words = self.words_mut(layer);
        let count = words[at] as usize;
        if count >= width {
            return None;
        }
        words[at + 1 + count] = id;
        words[at] += 1;
        Some(at + 1 + count)
    }

    /// Start and width of the slot of `node` on `layer`, which must exist.
    pub(crate) fn slot(&self, node: u32, layer: usize) -> (usize, usize) {
        let at = self
            .view()
            .slot_at(node, layer)
            .expect("node has a slot on this layer");
        (
            at,
            if layer == 0 {
                self.info.m0
            } else {
                self.info.m
            },
        )
    }

    /// `layer0` for layer 0, `upper` above.
    pub(crate) fn words(&self, layer: usize) -> &[u32] {
        if layer == 0 {
            &self.layer0
        } else {
            &self.upper
        }
    }

    fn words_mut(&mut self, layer: usize) -> &mut [u32] {
        if layer == 0 {
            &mut self.layer0
        } else {
            &mut self.upper
        }
    }

    /// Up to `k` `(row, similarity)` best first, like [`super::Hnsw::search`].
    pub fn search(
        &self,
        vectors: &impl Vectors,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        with_scratch(|s| self.search_with(s, vectors, query, k, ef, accept))
    }

    /// [`search`](Self::search) with a caller-held scratch.
    pub fn search_with(
        &self,
        scratch: &mut SearchScratch,
        vectors: &impl Vectors,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        assert_eq!(
            vectors.dimension(),
            self.info.dimension,
            "the vectors searched do not have the graph's dimension"
        );
        search_graph(&self.view(), scratch, vectors, query, k, ef, accept)
    }
}
