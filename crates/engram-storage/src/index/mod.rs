//! Approximate nearest-neighbour search over a sealed segment: an HNSW graph (Malkov &
//! Yashunin 2016) per segment, stored beside it as `<segment stem>.hnsw`, mapped and validated
//! on open (never rebuilt), and searched against the segment's mapped embedding column, with
//! no copy. Similarity is the dot product of L2-normalised vectors
//! (`engram_core::simd::dot`). Byte layout: `docs/format.md`, "HNSW index files".
//!
//! - [`build`] makes an [`HnswGraph`] from any [`Vectors`]; [`build_and_write`] builds the
//!   index of a segment and writes it crash-safely beside the segment file ([`index_path`]).
//! - [`Hnsw::open`] maps an index file and checks it belongs to the segment;
//!   [`Hnsw::search`] finds the best rows with a filter for deleted or superseded rows.
//! - [`flat_search`] is the exact scan: for small segments, and the ground truth.
//!
//! The HNSW algorithm itself (greedy descent, layer search, diversity heuristic, back-links)
//! is `engram_core::hnsw`, shared with the engine's link index; this module gives it the
//! segment's vectors to score with and the index file's layout to walk.
//!
//! An empty segment gets a valid empty index file (no rows, no entry point); searching it
//! returns nothing.

mod build;
mod format;
mod graph;
mod hnsw;
mod params;
mod search;
mod vectors;
mod view;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use build::build;
pub use format::{
    HnswInfo, SegmentBinding, INDEX_EXTENSION, INDEX_FORMAT_VERSION, MAX_EF_CONSTRUCTION,
    MAX_LEVEL, MAX_M, MAX_M0, MAX_ROWS, MIN_M, NO_ENTRY,
};
pub use graph::HnswGraph;
pub use hnsw::Hnsw;
pub use params::HnswParams;
pub use search::{flat_search, SearchScratch};
pub use vectors::{FlatVectors, Vectors};
pub use view::GraphView;
pub use write::{encode, write_index};

use crate::disk::Disk;
use crate::error::Result;
use crate::segment::Segment;

/// The index file of a segment: its path with `.seg` replaced by `.hnsw` (or `.hnsw` appended
/// to a name that does not end in `.seg`).
pub fn index_path(segment_path: &Path) -> PathBuf {
    let name = segment_path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let stem = name.strip_suffix(".seg").unwrap_or(&name);
    segment_path.with_file_name(format!("{stem}.{INDEX_EXTENSION}"))
}

/// Builds the HNSW index of `segment` (opened from `segment_path`) and writes it beside it, at
/// [`index_path`]`(segment_path)`, crash-safely (temporary file, fsync, rename, directory
/// fsync). An existing index file there is replaced.
pub fn build_and_write(
    disk: &dyn Disk,
    segment_path: &Path,
    segment: &Segment,
    params: HnswParams,
) -> Result<()> {
    let graph = build(segment, params)?;
    write_index(
        disk,
        &index_path(segment_path),
        &graph,
        &SegmentBinding::of(segment),
    )
}
