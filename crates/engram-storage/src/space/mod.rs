//! One memory space on this node. Its state and the reads on it (`state.rs`), its searches
//! (`search.rs`), what the engine may read of it (`view.rs`), and the files derived from its
//! segments (`derived.rs`). Flushing and merging are in [`crate::compaction`].

mod derived;
mod search;
mod state;
mod view;

pub(crate) use derived::attach_lex;
pub use search::{Hit, LexHit};
pub(crate) use state::{add_links, read_raft_state, space_dir, Space, SpaceState};
pub use view::{EmbeddingSnapshot, SpaceView};
