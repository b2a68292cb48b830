//! Engram's core types. Pure logic: no I/O, no threads.
//!
//! A [`Memory`] is an episode stored in a memory space ([`SpaceId`]): text content, an embedding,
//! a [`Confidence`], a timestamp, metadata and weighted [`Link`]s to other memories.

pub mod activation;
mod confidence;
mod cue;
pub mod embed;
mod error;
pub mod hnsw;
mod ids;
pub mod limits;
mod memory;
pub mod quant;
pub mod rng;
pub mod simd;

pub use confidence::{Confidence, ConfidenceCategory};
pub use cue::{Cue, CueInput, RecallMode, Retrieval, MAX_EF, MAX_HOPS, MAX_RESULTS, MIN_EF};
pub use error::CoreError;
pub use ids::{MemoryId, SpaceId};
pub use memory::{Link, Memory};
