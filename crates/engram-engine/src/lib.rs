//! The memory spaces of one node: what the server and the cluster call.
//!
//! - Spaces: created with a dimension (fixed for their life), listed, dropped (files removed),
//!   opened lazily by the store on first use. The `default` space always exists.
//! - Remember: a memory without an embedding gets one from the space's text embedder; every
//!   embedding is stored L2-normalised (similarity is then a dot product), so one with no
//!   direction (all zeros) is refused. Auto-linking: a new memory links to its most similar
//!   memories (at most [`EngineOptions::auto_link_max`], similarity at least
//!   [`EngineOptions::auto_link_threshold`], weight = similarity). Links are stored in the
//!   memory's WAL record, so they are exactly as durable as the memory. Batches are
//!   all-or-nothing.
//! - Recall: the cue's best direct matches (HNSW per segment, exact for the memtable) seed
//!   spreading activation along links ([`engram_core::activation`]); score = activation x
//!   confidence. A link is followed from the memory that holds it; a link to a deleted memory
//!   leads nowhere, and a deleted memory is never returned. Activation never leaves the space:
//!   the graph it spreads over is read from that space only.

mod error;
mod keyed;
mod link_index;
mod linking;
mod recall;
mod replicated;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use engram_core::embed::{Embedder, HashingEmbedder};
use engram_core::{limits, Confidence, Link, Memory, MemoryId, SpaceId};
use engram_storage::Store;
use linking::Linking;
use parking_lot::Mutex;

pub use engram_storage::{
    Clock, ManualClock, RealClock, SpaceStatus, StoreOptions, StoreStats, StoreStatus,
};
pub use error::{EngineError, Result};
pub use keyed::check_key;
pub use recall::{FoundBy, Fusion, Recall, RecallItem, RetrievalPath, RRF_K};
pub use replicated::{ProposeFuture, Proposed, Replicate};
pub use write::check_batch;

/// The space every node has.
pub const DEFAULT_SPACE: &str = "default";

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub store: StoreOptions,
    /// Dimension of spaces created without one (and of `default`).
    pub default_dimension: u32,
    /// Least similarity for an automatic link.
    pub auto_link_threshold: f32,
    /// Most automatic links from one new memory.
    pub auto_link_max: usize,
    /// HNSW beam width of recall (raised to at least the number of results wanted).
    pub search_ef: usize,
    /// HNSW beam width of the store's search behind auto-linking while a space's link index
    /// is being built (the link index itself searches with `link_index_ef_construction`).
    pub auto_link_ef: usize,
    /// Neighbours per node in the link index's graph (`2 m` on its bottom layer).
    pub link_index_m: usize,
    /// Beam width while inserting into the link index.
    pub link_index_ef_construction: usize,
    /// A model-backed text embedder (`engram start --embedder-model`). Spaces created with its
    /// dimension embed their text with it (recorded in the space's metadata); the default
    /// dimension becomes its dimension. Spaces of other dimensions, and spaces created
    /// without a model, use the built-in hashing embedder.
    pub text_model: Option<TextModel>,
    /// How hybrid retrieval fuses dense and lexical matches. Default: the convex combination
    /// with equal weights, which beat reciprocal-rank fusion on `engram-bench text` (4,000
    /// Debian descriptions, 1,000 synopsis cues, MiniLM: hit@1 0.829 against 0.784, hit@5
    /// 0.939 against 0.933; flat for lexical weights 0.2 to 0.6: hit@1 0.823-0.835).
    pub fusion: recall::Fusion,
    /// Create the `default` space at open when it is missing (a single node). A cluster node
    /// does not: its spaces, `default` included, are the cluster's, created through its
    /// metadata and replicated.
    pub create_default: bool,
}

/// A model-backed text embedder, for [`EngineOptions::text_model`].
#[derive(Clone)]
pub struct TextModel(pub Arc<dyn Embedder>);

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TextModel({}, {} dimensions)",
            self.0.name(),
            self.0.dimension()
        )
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            // Memtables are searched exactly: bound them (the exact/HNSW crossover is between
            // 1,024 and 4,096 rows, `engram-bench recall`, part crossover).
            store: StoreOptions {
                memtable_max_rows: 4096,
                ..StoreOptions::default()
            },
            default_dimension: limits::DEFAULT_DIMENSION as u32,
            auto_link_threshold: 0.75,
            auto_link_max: 3,
            search_ef: 32,
            auto_link_ef: 32,
            link_index_m: 16,
            link_index_ef_construction: 48,
            text_model: None,
            fusion: recall::Fusion::Convex { lexical: 0.5 },
            create_default: true,
        }
    }
}

/// A memory to store, as a caller gives it.
#[derive(Debug, Clone, Default)]
pub struct NewMemory {
    /// Generated (`mem_` and hex digits) when absent; an existing id is replaced.
    pub id: Option<MemoryId>,
    pub content: String,
    /// The space's dimension; from the text embedder when absent.
    pub embedding: Option<Vec<f32>>,
    /// Default 0.7.
    pub confidence: Option<f32>,
    /// Microseconds since the Unix epoch; default now.
    pub timestamp_us: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    /// Explicit links; their targets must exist in the space.
    pub links: Vec<Link>,
    /// Link to the most similar memories (default true).
    pub auto_link: bool,
}

impl NewMemory {
    /// A memory with just content, auto-linked.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            auto_link: true,
            ..Default::default()
        }
    }
}

/// What a write stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: MemoryId,
    pub confidence: Confidence,
    /// When it was stored (microseconds since the Unix epoch).
    pub stored_at_us: i64,
    /// Its links, explicit and automatic.
    pub links: Vec<Link>,
}

/// A space's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceInfo {
    pub id: SpaceId,
    pub dimension: u32,
    pub memories: usize,
    pub created_at_us: i64,
}

/// The spaces of one node.
pub struct Engine {
    store: Arc<Store>,
    opts: EngineOptions,
    embedders: Mutex<HashMap<usize, Arc<dyn Embedder>>>,
    /// Per space, the in-memory index behind auto-linking ([`link_index`]), and the rules of
    /// automatic links; the store asks it for the links of pending memories.
    linking: Arc<Linking>,
    /// The idempotency keys of requests under way, and of recent drops ([`keyed`]).
    requests: keyed::Requests,
    /// How writes to replicated spaces are proposed (a cluster node's; see `replicated.rs`).
    replicator: std::sync::OnceLock<Arc<dyn Replicate>>,
}

impl Engine {
    /// Microseconds since the Unix epoch on the store's clock ([`StoreOptions::clock`]): a
    /// memory's timestamps.
    fn now_us(&self) -> i64 {
        self.store.options().clock.realtime_us()
    }

    /// Opens (recovering) the node's data in `dir`, creating the `default` space if missing.
    pub fn open(dir: &Path, mut opts: EngineOptions) -> Result<Engine> {
        if let Some(model) = &opts.text_model {
            opts.default_dimension = model.0.dimension() as u32;
        }
        let d = opts.default_dimension as usize;
        if d == 0 || d > limits::MAX_DIMENSION {
            return Err(EngineError::Invalid(format!(
                "default dimension {d} is outside 1..={}",
                limits::MAX_DIMENSION
            )));
        }
        if !(0.0..=1.0).contains(&opts.auto_link_threshold) {
            return Err(EngineError::Invalid(format!(
                "auto_link_threshold {} is outside [0, 1]",
                opts.auto_link_threshold
            )));
        }
        let linking = Arc::new(Linking::new(&opts));
        // The store links what recovery brings back pending, and every write that asks for
        // automatic links.
        let store = Arc::new(Store::open_with_linker(
            Arc::new(engram_storage::RealDisk),
            dir,
            opts.store.clone(),
            Some(linking.clone()),
        )?);
        let engine = Engine {
            store,
            opts,
            embedders: Mutex::new(HashMap::new()),
            linking,
            requests: keyed::Requests::default(),
            replicator: std::sync::OnceLock::new(),
        };
        let default = SpaceId::new(DEFAULT_SPACE)?;
        if engine.opts.create_default && !engine.store.space_exists(&default)? {
            let dimension = engine.opts.default_dimension;
            match engine.store.create_space_with_embedder(
                &default,
                dimension,
                engine.embedder_tag(dimension),
            ) {
                Ok(_) | Err(engram_storage::StorageError::SpaceExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(engine)
    }

    /// The node's store (shared with the replication layer of a cluster node).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The storage engine's counters (lock-free).
    pub fn stats(&self) -> &StoreStats {
        self.store.stats()
    }

    /// The node's storage figures: WAL, spaces, recovery, quarantine, latch.
    pub fn status(&self) -> StoreStatus {
        self.store.status()
    }

    /// A space's storage figures.
    pub fn space_status(&self, id: &SpaceId) -> Result<SpaceStatus> {
        Ok(self.store.space_status(id)?)
    }

    pub fn space_exists(&self, id: &SpaceId) -> Result<bool> {
        Ok(self.store.space_exists(id)?)
    }

    /// The ids of the spaces open now (opening none).
    pub fn loaded_space_ids(&self) -> Vec<SpaceId> {
        self.store.loaded_space_ids()
    }

    /// Segments of the open spaces that are due an index and have none yet.
    pub fn pending_index_builds(&self) -> usize {
        self.store.pending_index_builds()
    }

    /// Flushes every memtable to segments, merges where due, checkpoints the WAL and releases
    /// idle spaces: what the background compactor does, now.
    pub fn compact(&self) -> Result<()> {
        Ok(self.store.compact()?)
    }

    /// Builds every missing HNSW index of the open spaces now; returns how many were built.
    pub fn build_indexes(&self) -> Result<usize> {
        Ok(self.store.build_indexes()?)
    }

    /// Stops the background work. Every acknowledged write is already durable.
    pub fn close(&self) {
        self.store.close()
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// The built-in hashing embedder of `dimension`.
    fn hashing(&self, dimension: usize) -> Result<Arc<dyn Embedder>> {
        let mut map = self.embedders.lock();
        if let Some(e) = map.get(&dimension) {
            return Ok(e.clone());
        }
        let e: Arc<dyn Embedder> = Arc::new(HashingEmbedder::new(dimension)?);
        map.insert(dimension, e.clone());
        Ok(e)
    }

    /// What a space of `dimension` created now records as its text embedder: the model's name
    /// if the model has that dimension, else nothing (the hashing embedder).
    pub fn embedder_tag(&self, dimension: u32) -> &str {
        match &self.opts.text_model {
            Some(m) if m.0.dimension() == dimension as usize => m.0.name(),
            _ => "",
        }
    }

    /// The text embedder of `space`: the one recorded when it was created. `Unavailable` if
    /// that is a model this engine was not given.
    pub fn text_embedder(&self, space: &SpaceId) -> Result<Arc<dyn Embedder>> {
        let meta = self.store.space_meta(space)?;
        if meta.embedder.is_empty() {
            return self.hashing(meta.dimension as usize);
        }
        match &self.opts.text_model {
            Some(m) if m.0.name() == meta.embedder => Ok(m.0.clone()),
            _ => Err(EngineError::Unavailable(format!(
                "memory space {:?} embeds text with the model {:?}, which this server has not loaded (start it with --embedder-model and that model's directory), so text without an embedding cannot be stored or recalled by similarity there; memories and cues with embeddings, and recalls with retrieval lexical, still work",
                space.as_str(),
                meta.embedder
            ))),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Spaces.

    /// Creates a space (`dimension` defaults to the engine's). `Conflict` if it exists.
    pub fn create_space(&self, id: &SpaceId, dimension: Option<u32>) -> Result<SpaceInfo> {
        self.create_space_keyed(id, dimension, None)
    }

    /// Every space, sorted by id.
    pub fn list_spaces(&self) -> Result<Vec<SpaceInfo>> {
        let mut out = Vec::new();
        for id in self.store.list_spaces() {
            match self.space_info(&id) {
                Ok(info) => out.push(info),
                // Dropped between the listing and the read.
                Err(EngineError::SpaceNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn space_info(&self, id: &SpaceId) -> Result<SpaceInfo> {
        let st = self.store.space_status(id)?;
        Ok(SpaceInfo {
            id: st.id,
            dimension: st.dimension,
            memories: st.memories,
            created_at_us: st.created_at_us,
        })
    }

    /// Drops a space and its files. The `default` space cannot be dropped.
    pub fn drop_space(&self, id: &SpaceId) -> Result<()> {
        self.drop_space_keyed(id, None)
    }

    fn dimension(&self, space: &SpaceId) -> Result<usize> {
        Ok(self.store.space_meta(space)?.dimension as usize)
    }

    // -----------------------------------------------------------------------------------------
    // Reads, deletes and links by id (writes: `write.rs`; automatic links: `linking.rs`).

    /// The newest version of a memory. Links to memories deleted since are left out: a link
    /// goes with the memory it points to.
    pub fn get(&self, space: &SpaceId, id: &str) -> Result<Option<Memory>> {
        let found = self
            .store
            .read_space(space, |st| -> Result<Option<Memory>> {
                let Some(mut m) = st.get(id)? else {
                    return Ok(None);
                };
                let mut live = Vec::with_capacity(m.links.len());
                for l in m.links {
                    if st.contains(l.to.as_str())? {
                        live.push(l);
                    }
                }
                m.links = live;
                Ok(Some(m))
            })?;
        found
    }

    /// Deletes a memory (and so every link out of it; links to it lead nowhere). Returns
    /// whether it existed.
    pub fn forget(&self, space: &SpaceId, id: &MemoryId) -> Result<bool> {
        self.forget_keyed(space, id, None)
    }

    /// Adds (or re-weights) a link; both memories must exist in the space.
    pub fn link(&self, space: &SpaceId, from: &MemoryId, to: &MemoryId, weight: f32) -> Result<()> {
        self.link_keyed(space, from, to, weight, None)?;
        Ok(())
    }
}
