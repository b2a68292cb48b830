//! The HNSW graph held in memory: [`HnswGraph`] owns the four flat arrays (what the builder
//! produces and the writer encodes), laid out exactly as the index file stores them; it reads
//! them through a [`GraphView`] (`view.rs`), as a mapped index file does.

use super::format::HnswInfo;
use super::view::{CodesView, GraphView};

/// An HNSW graph held in memory: built by [`super::build`], written by
/// [`super::build_and_write`], searchable as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct HnswGraph {
    pub(crate) info: HnswInfo,
    pub(crate) levels: Vec<u8>,
    pub(crate) layer0: Vec<u32>,
    pub(crate) offsets: Vec<u64>,
    pub(crate) upper: Vec<u32>,
    /// Each row's quantised embedding (`rows * dimension`), and its scale.
    pub(crate) codes: Vec<i8>,
    pub(crate) scales: Vec<f32>,
}

impl HnswGraph {
    pub fn info(&self) -> HnswInfo {
        self.info
    }

    /// The graph, to search ([`GraphView::search`]).
    pub fn view(&self) -> GraphView<'_> {
        GraphView::new(
            &self.info,
            &self.levels,
            &self.layer0,
            &self.offsets,
            &self.upper,
        )
    }

    /// The rows' codes, which a search walks the graph with.
    pub fn codes(&self) -> CodesView<'_> {
        CodesView {
            codes: &self.codes,
            scales: &self.scales,
            dimension: self.info.dimension,
        }
    }

    /// Replaces the neighbours of `node` on `layer` (at most `m0` on layer 0, `m` above); the
    /// tests cut rows off the graph with it.
    #[cfg(test)]
    pub(crate) fn set_neighbours(
        &mut self,
        node: u32,
        layer: usize,
        ids: impl Iterator<Item = u32>,
    ) {
        use engram_core::hnsw::{Cand, Slot};
        let (at, width) = self.slot(node, layer);
        let list: Vec<Cand> = ids.map(|id| Cand { sim: 0.0, id }).collect();
        Slot {
            words: &mut self.words_mut(layer)[at..=at + width],
            sims: &mut vec![0.0; width + 1],
        }
        .set(&list);
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
    pub(crate) fn words_mut(&mut self, layer: usize) -> &mut [u32] {
        if layer == 0 {
            &mut self.layer0
        } else {
            &mut self.upper
        }
    }
}
