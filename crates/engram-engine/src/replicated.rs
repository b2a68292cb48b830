//! Writes to a replicated space (a cluster's): prepared here as on a single node (ids,
//! embeddings, checks against this replica), then proposed to the space's raft group through
//! the [`Replicate`] the cluster node gives the engine, and answered with what applying the
//! entry answered. An idempotency key travels with the command and is judged by the group's
//! requests table (a repeat through any node, after any failover, gets the first answer).
//! Automatic links are not made in a replicated space yet: they would differ between
//! replicas (`docs/cluster.md`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use engram_core::{Confidence, Memory, MemoryId, SpaceId};
use engram_storage::requests::Answer;
use engram_storage::{Command, Op};

use crate::{Engine, EngineError, NewMemory, Result, Stored};

/// What a proposal to a space's group came to.
#[derive(Debug, Clone)]
pub struct Proposed {
    /// When the first request of this key was received (µs; 0 without a key).
    pub at_us: i64,
    /// What applying it did (`None`: nothing, e.g. the space no longer exists).
    pub answer: Option<Answer>,
    /// A repeat of a keyed request, answered as the first was.
    pub repeat: bool,
}

/// A future a [`Replicate`] returns.
pub type ProposeFuture = Pin<Box<dyn Future<Output = Result<Proposed>> + Send>>;

/// How a cluster node's engine writes to a replicated space: proposes a command to the
/// space's group on this node (which leads it; a node that does not answers
/// [`EngineError::Unavailable`]).
pub trait Replicate: Send + Sync {
    fn propose(&self, space: &SpaceId, command: Command) -> ProposeFuture;
}

impl Engine {
    /// Makes `r` the way this engine writes to replicated spaces (once).
    pub fn set_replicator(&self, r: Arc<dyn Replicate>) {
        let _ = self.replicator.set(r);
    }

    /// The replicator of a cluster node (`None` on a single node). A cluster node writes only
    /// to replicated spaces it holds: a space not (yet) here is `Unavailable`, never created
    /// unreplicated.
    fn replicated(&self, space: &SpaceId) -> Result<Option<Arc<dyn Replicate>>> {
        let Some(r) = self.replicator.get() else {
            return Ok(None);
        };
        if self.store.space_exists(space)? && self.store.space_meta(space)?.replicated {
            return Ok(Some(r.clone()));
        }
        Err(EngineError::Unavailable(format!(
            "memory space {:?} is not ready on this node (it is being created, or this node does \
             not hold it); retry",
            space.as_str()
        )))
    }

    /// Whether this engine is a cluster node's ([`Engine::set_replicator`]).
    pub fn is_clustered(&self) -> bool {
        self.replicator.get().is_some()
    }

    async fn propose(
        &self,
        r: &Arc<dyn Replicate>,
        space: &SpaceId,
        op: Op,
        key: Option<&str>,
    ) -> Result<Proposed> {
        let request = match key {
            Some(k) => {
                crate::check_key(k)?;
                Some((k.to_string(), self.now_us()))
            }
            None => None,
        };
        let p = r.propose(space, Command { op, request }).await?;
        if p.answer.is_none() {
            return Err(EngineError::SpaceNotFound(space.to_string()));
        }
        Ok(p)
    }

    /// [`Engine::remember_batch_keyed_async`] for a replicated space; the batch back when
    /// `space` is not one here.
    pub(crate) async fn remember_replicated(
        &self,
        space: &SpaceId,
        batch: Vec<NewMemory>,
        key: Option<&str>,
    ) -> Result<std::result::Result<Vec<Stored>, Vec<NewMemory>>> {
        let Some(r) = self.replicated(space)? else {
            return Ok(Err(batch));
        };
        crate::write::check_batch(&batch)?;
        let target = self.existing(space)?;
        let no_links: Vec<NewMemory> = batch
            .into_iter()
            .map(|m| NewMemory {
                auto_link: false,
                ..m
            })
            .collect();
        let (memories, _) = self.prepare_batch(space, &target, no_links)?;
        let mut memories: Vec<Memory> = memories.into_iter().map(|(m, _)| m).collect();
        let op = if memories.len() == 1 {
            Op::Remember(memories.remove(0))
        } else {
            Op::RememberBatch(memories)
        };
        let p = self.propose(&r, space, op, key).await?;
        let at = if p.at_us > 0 { p.at_us } else { self.now_us() };
        match p.answer {
            Some(Answer::Stored(ms)) => Ok(Ok(ms
                .into_iter()
                .map(|m| Stored {
                    id: m.id,
                    confidence: Confidence::new(m.confidence),
                    stored_at_us: at,
                    links: m.links,
                })
                .collect())),
            _ => Err(other_kind(key)),
        }
    }

    /// [`Engine::forget_keyed`], also for a replicated space.
    pub async fn forget_keyed_async(
        &self,
        space: &SpaceId,
        id: &MemoryId,
        key: Option<&str>,
    ) -> Result<bool> {
        let Some(r) = self.replicated(space)? else {
            return self.forget_keyed(space, id, key);
        };
        let p = self.propose(&r, space, Op::Forget(id.clone()), key).await?;
        match p.answer {
            Some(Answer::Forgot { id: f, existed }) if f == *id => Ok(existed),
            _ => Err(other_kind(key)),
        }
    }

    /// [`Engine::link_keyed`], also for a replicated space.
    pub async fn link_keyed_async(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        weight: f32,
        key: Option<&str>,
    ) -> Result<f32> {
        let Some(r) = self.replicated(space)? else {
            return self.link_keyed(space, from, to, weight, key);
        };
        self.check_link(space, from, to, weight)?;
        let op = Op::Link {
            from: from.clone(),
            to: to.clone(),
            weight,
        };
        let p = self.propose(&r, space, op, key).await?;
        match p.answer {
            Some(Answer::Linked {
                from: f,
                to: t,
                weight,
            }) if f == *from && t == *to => Ok(weight),
            _ => Err(other_kind(key)),
        }
    }
}

fn other_kind(key: Option<&str>) -> EngineError {
    crate::keyed::other_kind(key.unwrap_or_default())
}
