//! Writes: a caller's memory turned into the one stored (id, embedding, defaults, checks),
//! committed one at a time or as an all-or-nothing batch, and the first write to a missing
//! space, which creates the space with it. Automatic links are made after the
//! acknowledgement (see `linking.rs`), except among the members of a space's first write.

use std::sync::Arc;

use engram_core::embed::Embedder;
use engram_core::{limits, simd, Confidence, Memory, MemoryId, SpaceId};

use engram_storage::RequestKey;

use crate::keyed::{stored_answer, Keyed};
use crate::{Engine, EngineError, NewMemory, Result, Stored};

impl Engine {
    /// Turns a caller's memory into the one stored: id, embedding (given and normalised, or
    /// from the embedder), defaults, validation, explicit links checked, automatic links.
    pub fn prepare(&self, space: &SpaceId, m: NewMemory) -> Result<Memory> {
        let target = self.existing(space)?;
        let (mut prepared, _) = self.prepare_batch(space, &target, vec![m])?;
        Ok(prepared.remove(0).0)
    }

    /// The target of a write to a space that exists.
    pub(crate) fn existing(&self, space: &SpaceId) -> Result<Target> {
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
    fn write_creating(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
        request: Option<RequestKey>,
    ) -> Result<FirstWrite> {
        let dim = self.first_write_dimension(&batch)?;
        let target = Target::New {
            dim,
            embedder: self.embedder_for(dim)?,
        };
        let retry = batch.clone();
        let (memories, _) = self.prepare_batch(space, &target, batch)?;
        let memories: Vec<Memory> = memories.into_iter().map(|(m, _)| m).collect();
        let now = request.as_ref().map_or_else(|| self.now_us(), |r| r.1);
        let out: Vec<Stored> = memories.iter().map(|m| stored(m, now)).collect();
        match self.store.create_space_with_batch_keyed(
            space,
            dim as u32,
            self.embedder_tag(dim as u32),
            memories,
            request,
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
        request: Option<RequestKey>,
    ) -> Result<std::result::Result<Vec<Stored>, Vec<NewMemory>>> {
        if self.store.space_exists(space)? {
            return Ok(Err(batch));
        }
        Ok(match self.write_creating(space, batch, request)? {
            FirstWrite::Created(stored) => Ok(stored),
            FirstWrite::Exists(batch) => Err(batch),
        })
    }

    /// The memories to store, each with whether its automatic links are still to be made
    /// (after the acknowledgement), and whether any is.
    pub(crate) fn prepare_batch(
        &self,
        space: &SpaceId,
        target: &Target,
        batch: Vec<NewMemory>,
    ) -> Result<(Vec<(Memory, bool)>, bool)> {
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
        let wanted = self.opts.auto_link_max > 0;
        if new_space {
            // The first write: nothing else is stored, its members link to the ones before.
            if wanted {
                for (i, &auto) in auto.iter().enumerate() {
                    if auto {
                        let (earlier, rest) = out.split_at_mut(i);
                        self.link_within_batch(&mut rest[0], earlier);
                    }
                }
            }
            return Ok((out.into_iter().map(|m| (m, false)).collect(), false));
        }
        let any = wanted && auto.iter().any(|&a| a);
        if any {
            // Ready (or being built) before the linker needs it.
            self.ensure_link_index(space, dim)?;
        }
        Ok((
            out.into_iter()
                .zip(auto)
                .map(|(m, a)| (m, a && wanted))
                .collect(),
            any,
        ))
    }

    /// Stores one memory; returns once it is durable (fsync'd). A space that does not exist
    /// is created with it (see [`Engine::remember_batch`]). Its automatic links are made after
    /// this returns (see `linking.rs`).
    pub fn remember(&self, space: &SpaceId, m: NewMemory) -> Result<Stored> {
        let mut stored = self.remember_batch(space, vec![m])?;
        Ok(stored.remove(0))
    }

    /// [`Engine::remember`] for async callers: no thread blocks while the group commit runs.
    pub async fn remember_async(&self, space: &SpaceId, m: NewMemory) -> Result<Stored> {
        let mut stored = self.remember_batch_async(space, vec![m]).await?;
        Ok(stored.remove(0))
    }

    /// Stores memories all or nothing: every one is checked before any is written, and they
    /// share one WAL record. Their automatic links are made after this returns, in write
    /// order (see `linking.rs`).
    ///
    /// A space that does not exist is created by its first write, in the same group commit:
    /// its dimension is the length of the first embedding in the write, else the text
    /// embedder's. A refused write creates nothing: no space, no memory, no WAL record.
    pub fn remember_batch(&self, space: &SpaceId, batch: Vec<NewMemory>) -> Result<Vec<Stored>> {
        let w = match self.prepare_write(space, batch, None)? {
            Ok(w) => w,
            Err(created) => return Ok(created),
        };
        if w.pending {
            while self.links_backlogged(space) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.store.remember_auto_link(space, w.memories)?;
        } else {
            self.store.remember_batch(space, plain(w.memories))?;
        }
        self.indexed(space, &w.vectors);
        Ok(w.stored)
    }

    /// [`Engine::remember_batch`] for async callers.
    pub async fn remember_batch_async(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
    ) -> Result<Vec<Stored>> {
        self.remember_batch_keyed_async(space, batch, None).await
    }

    /// [`Engine::remember_batch_async`] with an idempotency key (see `keyed.rs`): a repeat
    /// of `key` in `space` within ten minutes is answered with the memories the first
    /// stored, and stores nothing.
    pub async fn remember_batch_keyed_async(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
        key: Option<&str>,
    ) -> Result<Vec<Stored>> {
        // A replicated space's write goes to its group (`replicated.rs`).
        let batch = match self.remember_replicated(space, batch, key).await? {
            Ok(stored) => return Ok(stored),
            Err(batch) => batch,
        };
        let keyed = self.keyed(space, key)?;
        if let Keyed::Repeat(rec) = &keyed {
            return stored_answer(key.unwrap_or_default(), rec);
        }
        // A first write (rare) creates its space synchronously, as `create_space` does.
        let w = match self.prepare_write(space, batch, keyed.request())? {
            Ok(w) => w,
            Err(created) => return Ok(created),
        };
        let committed = if w.pending {
            self.store
                .remember_auto_link_keyed_async(space, w.memories, keyed.request())?
        } else {
            self.store
                .remember_batch_keyed_async(space, plain(w.memories), keyed.request())?
        };
        // Recorded before the wait, so a request dropped meanwhile (its client gone) still
        // records a memory the group commit will write. Until it is durable it is not linked
        // to: candidates are scored against the store.
        self.indexed(space, &w.vectors);
        let seq = committed.await?;
        if let Some(first) = self.repeated_by(space, &keyed, seq)? {
            return stored_answer(key.unwrap_or_default(), &first);
        }
        drop(keyed);
        Ok(w.stored)
    }

    /// A write checked and prepared for the ordinary path, or, when it was the first write
    /// of a missing space, already stored with the space it created (`Ok(Err(stored))`).
    fn prepare_write(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
        request: Option<RequestKey>,
    ) -> Result<std::result::Result<Prepared, Vec<Stored>>> {
        check_batch(&batch)?;
        let batch = match self.create_if_missing(space, batch, request.clone())? {
            Ok(stored) => return Ok(Err(stored)),
            Err(batch) => batch,
        };
        let target = self.existing(space)?;
        let (memories, pending) = self.prepare_batch(space, &target, batch)?;
        let now = request.as_ref().map_or_else(|| self.now_us(), |r| r.1);
        // The link index (if the space has one once they are committed) records at once the
        // memories with no links owed; the linker records the others as it links them.
        let vectors = memories
            .iter()
            .filter(|(_, p)| !p)
            .map(|(m, _)| (m.id.clone(), m.embedding.clone()))
            .collect();
        Ok(Ok(Prepared {
            stored: memories.iter().map(|(m, _)| stored(m, now)).collect(),
            vectors,
            memories,
            pending,
        }))
    }
}

/// The space a write goes to.
pub(crate) enum Target {
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
pub fn check_batch(batch: &[NewMemory]) -> Result<()> {
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

/// A write ready for the ordinary path: the memories to commit (each with whether its
/// automatic links are owed), whether any is, what the caller is told, and what the link
/// index records once they are committed ([`Engine::indexed`]).
struct Prepared {
    memories: Vec<(Memory, bool)>,
    pending: bool,
    stored: Vec<Stored>,
    vectors: Vec<(MemoryId, Vec<f32>)>,
}

/// The memories of a write that owes no automatic links.
fn plain(memories: Vec<(Memory, bool)>) -> Vec<Memory> {
    memories.into_iter().map(|(m, _)| m).collect()
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
