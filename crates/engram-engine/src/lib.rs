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
mod link_index;
mod recall;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use engram_core::embed::{Embedder, HashingEmbedder};
use engram_core::{limits, simd, Confidence, Link, Memory, MemoryId, SpaceId};
use engram_storage::{Hit, Store};
use link_index::LinkIndex;
use parking_lot::Mutex;

pub use engram_storage::{
    Clock, ManualClock, RealClock, SpaceStatus, StoreOptions, StoreStats, StoreStatus,
};
pub use error::{EngineError, Result};
pub use recall::{FoundBy, Fusion, Recall, RecallItem, RetrievalPath, RRF_K};

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
    store: Store,
    opts: EngineOptions,
    embedders: Mutex<HashMap<usize, Arc<dyn Embedder>>>,
    /// Per space, the in-memory index behind auto-linking ([`link_index`]), made the first
    /// time a write to the space asks for automatic links.
    link_indexes: Mutex<HashMap<SpaceId, Arc<LinkIndex>>>,
}

/// A space with at most this many rows has its link index built by the write that needs it;
/// a larger one in the background (writes meanwhile use the store's search).
const INLINE_LINK_INDEX_ROWS: usize = 1_000;

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
        let store = Store::open_dir(dir, opts.store.clone())?;
        let engine = Engine {
            store,
            opts,
            embedders: Mutex::new(HashMap::new()),
            link_indexes: Mutex::new(HashMap::new()),
        };
        let default = SpaceId::new(DEFAULT_SPACE)?;
        if !engine.store.space_exists(&default)? {
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
    fn embedder_tag(&self, dimension: u32) -> &str {
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
        let dimension = dimension.unwrap_or(self.opts.default_dimension);
        self.store
            .create_space_with_embedder(id, dimension, self.embedder_tag(dimension))?;
        self.space_info(id)
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
        if id.as_str() == DEFAULT_SPACE {
            return Err(EngineError::Invalid(
                "the default space cannot be dropped".into(),
            ));
        }
        // Before (no write plans on it meanwhile) and after (one registered meanwhile).
        self.link_indexes.lock().remove(id);
        self.store.drop_space(id)?;
        self.link_indexes.lock().remove(id);
        Ok(())
    }

    fn dimension(&self, space: &SpaceId) -> Result<usize> {
        Ok(self.store.space_meta(space)?.dimension as usize)
    }

    // -----------------------------------------------------------------------------------------
    // Writes.

    /// Turns a caller's memory into the one stored: id, embedding (given and normalised, or
    /// from the embedder), defaults, validation, explicit links checked, automatic links.
    pub fn prepare(&self, space: &SpaceId, m: NewMemory) -> Result<Memory> {
        let target = self.existing(space)?;
        let (mut prepared, _) = self.prepare_batch(space, &target, vec![m])?;
        Ok(prepared.remove(0))
    }

    /// The target of a write to a space that exists.
    fn existing(&self, space: &SpaceId) -> Result<Target> {
        Ok(Target::Existing {
            dim: self.dimension(space)?,
        })
    }

    /// The dimension of a space created by `batch`, its first write: the length of the first
    /// embedding it carries, else the text embedder's (the engine's default dimension).
    fn first_write_dimension(&self, batch: &[NewMemory]) -> Result<usize> {
        let Some(dim) = batch
            .iter()
            .find_map(|m| m.embedding.as_ref().map(|e| e.len()))
        else {
            return Ok(self.opts.default_dimension as usize);
        };
        if dim == 0 || dim > limits::MAX_DIMENSION {
            return Err(EngineError::Invalid(format!(
                "embedding has {dim} dimensions, expected 1 to {}",
                limits::MAX_DIMENSION
            )));
        }
        Ok(dim)
    }

    /// The text embedder a space of `dimension` created now gets: the model when it has that
    /// dimension, else the hashing embedder.
    fn embedder_for(&self, dimension: usize) -> Result<Arc<dyn Embedder>> {
        match &self.opts.text_model {
            Some(m) if m.0.dimension() == dimension => Ok(m.0.clone()),
            _ => self.hashing(dimension),
        }
    }

    /// The text embedder that embeds `batch`'s memories without an embedding if it is written
    /// to `space` now: the space's, or for a space this write creates, the one it will get.
    pub fn write_embedder(
        &self,
        space: &SpaceId,
        batch: &[NewMemory],
    ) -> Result<Arc<dyn Embedder>> {
        if self.store.space_exists(space)? {
            self.text_embedder(space)
        } else {
            self.embedder_for(self.first_write_dimension(batch)?)
        }
    }

    /// A write to a space that does not exist creates it with the write, all or nothing
    /// ([`Store::create_space_with_batch`]): its dimension from the write
    /// ([`Engine::first_write_dimension`]), the write checked against an empty space (explicit
    /// links only to earlier members, automatic links among its own members). A refused
    /// write creates nothing. When another write created the space meanwhile, the batch
    /// comes back for the ordinary path.
    fn write_creating(&self, space: &SpaceId, batch: Vec<NewMemory>) -> Result<FirstWrite> {
        let dim = self.first_write_dimension(&batch)?;
        let target = Target::New {
            dim,
            embedder: self.embedder_for(dim)?,
        };
        let retry = batch.clone();
        let (memories, _) = self.prepare_batch(space, &target, batch)?;
        let out: Vec<Stored> = memories.iter().map(|m| stored(m, self.now_us())).collect();
        match self.store.create_space_with_batch(
            space,
            dim as u32,
            self.embedder_tag(dim as u32),
            memories,
        ) {
            Ok(_) => Ok(FirstWrite::Created(out)),
            Err(engram_storage::StorageError::SpaceExists(_)) => Ok(FirstWrite::Exists(retry)),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates `space` with `batch` if it does not exist: `Ok(Err(batch))` when it exists.
    fn create_if_missing(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
    ) -> Result<std::result::Result<Vec<Stored>, Vec<NewMemory>>> {
        if self.store.space_exists(space)? {
            return Ok(Err(batch));
        }
        Ok(match self.write_creating(space, batch)? {
            FirstWrite::Created(stored) => Ok(stored),
            FirstWrite::Exists(batch) => Err(batch),
        })
    }

    /// The memories to store, and per memory the link index insertion planned while
    /// auto-linking it (applied once it is committed, see [`Engine::indexed`]).
    fn prepare_batch(
        &self,
        space: &SpaceId,
        target: &Target,
        batch: Vec<NewMemory>,
    ) -> Result<(Vec<Memory>, Vec<Option<Planned>>)> {
        let (dim, new_space) = match target {
            Target::Existing { dim } => (*dim, false),
            Target::New { dim, .. } => (*dim, true),
        };
        let mut embedder = match target {
            Target::Existing { .. } => None,
            Target::New { embedder, .. } => Some(embedder.clone()),
        };
        let now = self.now_us();
        let mut out = Vec::with_capacity(batch.len());
        let mut auto = Vec::with_capacity(batch.len());
        for (i, n) in batch.into_iter().enumerate() {
            let at = |msg: String| {
                if out.is_empty() && i == 0 {
                    msg
                } else {
                    format!("memory {i}: {msg}")
                }
            };
            let id = match n.id {
                Some(id) => id,
                None => generate_id(),
            };
            if n.content.is_empty() {
                return Err(EngineError::Invalid(at("content is empty".into())));
            }
            let embedding = match n.embedding {
                Some(mut e) => {
                    if e.len() != dim {
                        return Err(EngineError::Invalid(at(format!(
                            "embedding has {} dimensions, the space has {dim}",
                            e.len()
                        ))));
                    }
                    if let Some(j) = e.iter().position(|v| !v.is_finite()) {
                        return Err(EngineError::Invalid(at(format!(
                            "embedding[{j}] is not a finite number"
                        ))));
                    }
                    if !simd::normalize(&mut e) {
                        return Err(EngineError::Invalid(at(
                            "embedding has no direction (all zeros): it cannot be normalised"
                                .into(),
                        )));
                    }
                    e
                }
                // Content the memory's validation refuses is not embedded first.
                None if n.content.len() > limits::MAX_CONTENT_LEN => {
                    return Err(EngineError::Invalid(at(format!(
                        "content is {} bytes, the limit is {}",
                        n.content.len(),
                        limits::MAX_CONTENT_LEN
                    ))))
                }
                None => {
                    if embedder.is_none() {
                        embedder = Some(self.text_embedder(space)?);
                    }
                    embedder.as_ref().expect("set above").embed(&n.content)?
                }
            };
            let confidence = n.confidence.unwrap_or(Confidence::DEFAULT);
            let memory = Memory {
                id,
                content: n.content,
                embedding,
                confidence,
                timestamp_us: n.timestamp_us.unwrap_or(now),
                metadata: n.metadata,
                links: n.links,
            };
            memory
                .validate(dim)
                .map_err(|e| EngineError::Invalid(at(e.to_string())))?;
            for l in &memory.links {
                if l.to == memory.id {
                    return Err(EngineError::Invalid(at(format!(
                        "memory {:?} links to itself",
                        memory.id.as_str()
                    ))));
                }
                let known = out.iter().any(|m: &Memory| m.id == l.to)
                    || (!new_space
                        && self
                            .store
                            .read_space(space, |st| st.contains(l.to.as_str()))??);
                if !known {
                    return Err(EngineError::Invalid(at(format!(
                        "link target {:?} does not exist in this space",
                        l.to.as_str()
                    ))));
                }
            }
            auto.push(n.auto_link);
            out.push(memory);
        }
        // Automatic links: against what is stored, and against the batch's earlier members
        // (stored in the same record, before it).
        let mut plans = Vec::with_capacity(out.len());
        for (i, &auto) in auto.iter().enumerate() {
            let mut plan = None;
            if auto && self.opts.auto_link_max > 0 {
                let (earlier, rest) = out.split_at_mut(i);
                plan = self.auto_link(space, new_space, &mut rest[0], earlier)?;
            }
            plans.push(plan);
        }
        Ok((out, plans))
    }

    /// Adds `m`'s automatic links. The candidates come from the space's link index, through
    /// the search that also plans `m`'s insertion into it (returned); while the index is
    /// being built, from the store's search.
    fn auto_link(
        &self,
        space: &SpaceId,
        new_space: bool,
        m: &mut Memory,
        earlier: &[Memory],
    ) -> Result<Option<Planned>> {
        let want = self.opts.auto_link_max;
        let mut planned = None;
        let mut hits = if new_space {
            // Nothing is stored yet: only the batch's earlier members.
            Vec::new()
        } else if let Some((index, (ins, candidates))) = {
            let index = self.link_index(space)?;
            index.plan(&m.embedding, want + 3).map(|p| (index, p))
        } {
            planned = Some(Planned {
                index: index.clone(),
                insertion: ins,
            });
            // A few more candidates than wanted, scored exactly against what is stored (the
            // index's similarities are approximate, and it may hold a version replaced or
            // deleted since).
            let q = &m.embedding;
            self.store.read_space(space, |st| {
                let mut hits = Vec::with_capacity(candidates.len());
                for (id, _) in candidates {
                    if let Some(similarity) = st.similarity(id.as_str(), q)? {
                        hits.push(Hit { id, similarity });
                    }
                }
                Ok::<_, engram_storage::StorageError>(hits)
            })??
        } else {
            self.store
                .search(space, &m.embedding, want + 1, self.opts.auto_link_ef)?
        };
        // A stored version replaced by an earlier member of the batch is not linked to.
        hits.retain(|h| !earlier.iter().any(|e| e.id == h.id));
        for e in earlier {
            let similarity = simd::dot(&m.embedding, &e.embedding);
            if similarity >= self.opts.auto_link_threshold {
                hits.push(Hit {
                    id: e.id.clone(),
                    similarity,
                });
            }
        }
        hits.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut added = 0;
        for h in hits {
            if added == want || h.similarity < self.opts.auto_link_threshold {
                break;
            }
            if h.id == m.id || m.links.iter().any(|l| l.to == h.id) {
                continue;
            }
            if m.links.len() >= limits::MAX_LINKS {
                break;
            }
            m.links.push(Link {
                to: h.id,
                weight: Link::weight_from_similarity(h.similarity),
            });
            added += 1;
        }
        Ok(planned)
    }

    /// One memory to write: stored already when it was the first write of a missing space
    /// (`Ok(Err(stored))`), else prepared for the ordinary path with its link-index plan.
    #[allow(clippy::type_complexity)]
    fn prepare_one(
        &self,
        space: &SpaceId,
        m: NewMemory,
    ) -> Result<std::result::Result<(Memory, Stored, Vec<Option<Planned>>), Stored>> {
        let m = match self.create_if_missing(space, vec![m])? {
            Ok(mut stored) => return Ok(Err(stored.remove(0))),
            Err(mut batch) => batch.remove(0),
        };
        let target = self.existing(space)?;
        let (mut memories, plans) = self.prepare_batch(space, &target, vec![m])?;
        let memory = memories.remove(0);
        let stored = stored(&memory, self.now_us());
        Ok(Ok((memory, stored, plans)))
    }

    /// Stores one memory; returns once it is durable (fsync'd). A space that does not exist
    /// is created with it (see [`Engine::remember_batch`]).
    pub fn remember(&self, space: &SpaceId, m: NewMemory) -> Result<Stored> {
        let (memory, stored, plans) = match self.prepare_one(space, m)? {
            Ok(prepared) => prepared,
            Err(created) => return Ok(created),
        };
        let vector = memory.embedding.clone();
        self.store.remember(space, memory)?;
        self.indexed(space, [(stored.id.clone(), vector)], plans);
        Ok(stored)
    }

    /// [`Engine::remember`] for async callers: no thread blocks while the group commit runs.
    pub async fn remember_async(&self, space: &SpaceId, m: NewMemory) -> Result<Stored> {
        // A first write (rare) creates its space synchronously, as `create_space` does.
        let (memory, stored, plans) = match self.prepare_one(space, m)? {
            Ok(prepared) => prepared,
            Err(created) => return Ok(created),
        };
        let vector = memory.embedding.clone();
        let committed = self.store.remember_async(space, memory)?;
        // Recorded before the wait, so a request dropped meanwhile (its client gone) still
        // records a memory the group commit will write. Until it is durable it is not linked
        // to: candidates are scored against the store.
        self.indexed(space, [(stored.id.clone(), vector)], plans);
        committed.await?;
        Ok(stored)
    }

    /// Stores memories all or nothing: every one is checked before any is written, and they
    /// share one WAL record.
    ///
    /// A space that does not exist is created by its first write, in the same group commit:
    /// its dimension is the length of the first embedding in the write, else the text
    /// embedder's. A refused write creates nothing: no space, no memory, no WAL record.
    pub fn remember_batch(&self, space: &SpaceId, batch: Vec<NewMemory>) -> Result<Vec<Stored>> {
        check_batch(&batch)?;
        let batch = match self.create_if_missing(space, batch)? {
            Ok(stored) => return Ok(stored),
            Err(batch) => batch,
        };
        let (memories, plans) = self.prepare_many(space, batch)?;
        let out: Vec<Stored> = memories.iter().map(|m| stored(m, self.now_us())).collect();
        let vectors = id_vectors(&memories);
        self.store.remember_batch(space, memories)?;
        self.indexed(space, vectors, plans);
        Ok(out)
    }

    /// [`Engine::remember_batch`] for async callers.
    pub async fn remember_batch_async(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
    ) -> Result<Vec<Stored>> {
        check_batch(&batch)?;
        let batch = match self.create_if_missing(space, batch)? {
            Ok(stored) => return Ok(stored),
            Err(batch) => batch,
        };
        let (memories, plans) = self.prepare_many(space, batch)?;
        let out: Vec<Stored> = memories.iter().map(|m| stored(m, self.now_us())).collect();
        let vectors = id_vectors(&memories);
        let committed = self.store.remember_batch_async(space, memories)?;
        // Recorded before the wait (see `remember_async`).
        self.indexed(space, vectors, plans);
        committed.await?;
        Ok(out)
    }

    fn prepare_many(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
    ) -> Result<(Vec<Memory>, Vec<Option<Planned>>)> {
        let target = self.existing(space)?;
        self.prepare_batch(space, &target, batch)
    }

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
        let forgotten = self.store.forget(space, id)?;
        if forgotten {
            let index = self.link_indexes.lock().get(space).cloned();
            if let Some(index) = index {
                index.remove(id);
                self.retire_if_worn(space, &index);
            }
        }
        Ok(forgotten)
    }

    /// The link index of `space`, made (registered, then filled from a snapshot of the space)
    /// on first use. Every write committed after the registration reaches it through
    /// [`Engine::indexed`] (into its backlog while it is built), and the snapshot is taken
    /// after the registration, so nothing committed is missed.
    fn link_index(&self, space: &SpaceId) -> Result<Arc<LinkIndex>> {
        {
            let mut map = self.link_indexes.lock();
            match map.get(space) {
                Some(index) if !index.has_failed() => return Ok(index.clone()),
                Some(_) => {
                    map.remove(space);
                }
                None => {}
            }
        }
        let dim = self.dimension(space)?;
        let index = {
            let mut map = self.link_indexes.lock();
            if let Some(index) = map.get(space) {
                return Ok(index.clone());
            }
            let index = Arc::new(LinkIndex::new(
                dim,
                self.opts.link_index_m,
                self.opts.link_index_ef_construction,
            ));
            map.insert(space.clone(), index.clone());
            index
        };
        // Cheap under the space's lock: entries and segment handles are shared, and read
        // by the build without the lock.
        let snapshot = match self.store.read_space(space, |st| st.embedding_snapshot()) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.forget_link_index(space, &index);
                return Err(e.into());
            }
        };
        let rows = snapshot.approx_rows();
        if rows <= INLINE_LINK_INDEX_ROWS {
            index.build(&snapshot);
        } else {
            let (building, space_name) = (index.clone(), space.to_string());
            tracing::info!(space = %space_name, rows, "building the link index");
            let spawned = std::thread::Builder::new()
                .name("engram-linkidx".into())
                .spawn(move || {
                    // Background work, like the storage indexer: requests first.
                    engram_storage::process::lower_current_thread_priority();
                    let t = std::time::Instant::now();
                    building.build(&snapshot);
                    tracing::info!(space = %space_name, rows, seconds = t.elapsed().as_secs_f64(), "link index built");
                });
            if let Err(e) = spawned {
                // Not fatal: this write uses the store's search, the next one tries again.
                tracing::warn!(space = %space, error = %e, "could not start a link index build");
                self.forget_link_index(space, &index);
            }
        }
        Ok(index)
    }

    /// Removes `index` from the map if it is still the one registered for `space`.
    fn forget_link_index(&self, space: &SpaceId, index: &Arc<LinkIndex>) {
        let mut map = self.link_indexes.lock();
        if map.get(space).is_some_and(|i| Arc::ptr_eq(i, index)) {
            map.remove(space);
        }
    }

    /// Memories in `space`'s link index once it is built (`None` before the first write
    /// asking for automatic links since the engine opened, and while the build runs).
    pub fn link_index_memories(&self, space: &SpaceId) -> Option<usize> {
        let index = self.link_indexes.lock().get(space).cloned()?;
        index.is_ready().then(|| index.len())
    }

    /// Records committed memories in the space's link index, if it has one: as planned while
    /// auto-linking them, else with a search of their own.
    fn indexed(
        &self,
        space: &SpaceId,
        memories: impl IntoIterator<Item = (MemoryId, Vec<f32>)>,
        plans: Vec<Option<Planned>>,
    ) {
        let index = self.link_indexes.lock().get(space).cloned();
        for ((id, v), plan) in memories.into_iter().zip(plans) {
            match (plan, &index) {
                // Planned on the index registered now: as planned.
                (Some(p), Some(index)) if Arc::ptr_eq(&p.index, index) => {
                    index.apply(id, p.insertion)
                }
                // Planned on one retired since (or none planned): a search of its own.
                (_, Some(index)) => index.put(&id, &v),
                (_, None) => {}
            }
        }
        if let Some(index) = index {
            self.retire_if_worn(space, &index);
        }
    }

    /// Drops a link index whose dead rows outnumber its live ones; the next write asking for
    /// automatic links makes a fresh one from the space.
    fn retire_if_worn(&self, space: &SpaceId, index: &Arc<LinkIndex>) {
        if index.wants_rebuild() {
            tracing::info!(space = %space, "the link index holds more replaced and forgotten memories than live ones: making it again");
            self.forget_link_index(space, index);
        }
    }

    /// Adds (or re-weights) a link; both memories must exist in the space.
    pub fn link(&self, space: &SpaceId, from: &MemoryId, to: &MemoryId, weight: f32) -> Result<()> {
        if from == to {
            return Err(EngineError::Invalid(format!(
                "memory {:?} cannot link to itself",
                from.as_str()
            )));
        }
        if !Link::is_valid_weight(f64::from(weight)) {
            return Err(EngineError::Invalid(format!(
                "link weight {weight} is outside (0, 1]"
            )));
        }
        if !self
            .store
            .read_space(space, |st| st.contains(to.as_str()))??
        {
            return Err(EngineError::MemoryNotFound(to.to_string()));
        }
        self.store.link(space, from, to, weight)?;
        Ok(())
    }
}

/// The space a write goes to.
enum Target {
    /// One that exists, of `dim` dimensions.
    Existing { dim: usize },
    /// One the write creates: nothing stored yet; text embedded by `embedder`.
    New {
        dim: usize,
        embedder: Arc<dyn Embedder>,
    },
}

/// What a write to a missing space did.
enum FirstWrite {
    /// Created the space with the write.
    Created(Vec<Stored>),
    /// Another write created the space meanwhile: the batch, untouched, for the ordinary path.
    Exists(Vec<NewMemory>),
}

/// A batch's size within 1..=[`limits::MAX_BATCH`], and no id twice.
fn check_batch(batch: &[NewMemory]) -> Result<()> {
    if batch.is_empty() {
        return Err(EngineError::Invalid(
            "a batch needs at least one memory".into(),
        ));
    }
    limits::check_batch_len(batch.len()).map_err(EngineError::Invalid)?;
    let mut seen = std::collections::HashSet::new();
    for (i, m) in batch.iter().enumerate() {
        if let Some(id) = &m.id {
            if !seen.insert(id) {
                return Err(EngineError::Invalid(format!(
                    "memory {i}: id {:?} appears twice in the batch",
                    id.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// A link index insertion planned for a memory about to be committed, with the index it was
/// planned on (its rows are that index's).
struct Planned {
    index: Arc<LinkIndex>,
    insertion: link_index::Insertion,
}

/// Ids and embeddings of memories about to be committed, for [`Engine::indexed`].
fn id_vectors(memories: &[Memory]) -> Vec<(MemoryId, Vec<f32>)> {
    memories
        .iter()
        .map(|m| (m.id.clone(), m.embedding.clone()))
        .collect()
}

fn stored(m: &Memory, stored_at_us: i64) -> Stored {
    Stored {
        id: m.id.clone(),
        confidence: Confidence::new(m.confidence),
        stored_at_us,
        links: m.links.clone(),
    }
}

/// `mem_` and 32 hex digits: time and a process-wide counter mixed, unique in practice. The
/// time is the machine's, not the store's clock: ids must differ between processes and runs,
/// which a manual clock (the same readings in every test process) would not ensure.
fn generate_id() -> MemoryId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = engram_storage::now_us() as u64;
    let mut x = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64) << 40;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    MemoryId::new(format!("mem_{t:016x}{x:016x}")).expect("generated ids are valid")
}
