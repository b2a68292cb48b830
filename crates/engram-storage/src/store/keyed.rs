//! Writes to an unreplicated space that carry a client's `Idempotency-Key`: the write's WAL
//! record is a keyed write (operation 13) holding the key and the time it was received, and
//! applying it records the key with the write's answer in the space's requests table
//! ([`crate::requests`]), in the same record, so the key is durable exactly when the write is.
//! A caller looks a key up first ([`Store::request_record`]) and answers a repeat from the
//! table; a keyed record whose key the table already holds is skipped when applied.
//!
//! The unkeyed writes of the store's API are these with no key.

use engram_core::{Memory, MemoryId, SpaceId};

use super::{check_memories, space_create, Store};
use crate::error::{Result, StorageError};
use crate::op::Op;
use crate::raft::{Command, MAX_REQUEST_KEY};
use crate::requests::RequestRecord;
use crate::wal::commit::Commit;

/// A client's `Idempotency-Key` (1 to [`MAX_REQUEST_KEY`] bytes) and when its write was
/// received (µs since the epoch).
pub type RequestKey = (String, i64);

/// What a space knows of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestState {
    /// A write with the key was applied within ten minutes: its first answer.
    Recorded(RequestRecord),
    /// A write with the key is queued and not applied yet.
    Pending,
    /// Neither.
    Unknown,
}

/// `op` as its record carries it: keyed when `request` is set.
fn keyed(op: Op, request: Option<RequestKey>) -> Result<Op> {
    let Some((key, at_us)) = request else {
        return Ok(op);
    };
    if key.is_empty() || key.len() > MAX_REQUEST_KEY {
        return Err(StorageError::Invalid(format!(
            "an idempotency key of {} bytes (1 to {MAX_REQUEST_KEY})",
            key.len()
        )));
    }
    Ok(Op::Request(Box::new(Command {
        op,
        request: Some((key, at_us)),
    })))
}

impl Store {
    /// What `space` knows of the request `key` as of `now_us` (`Unknown` for a space that
    /// does not exist).
    pub fn request_state(&self, space: &SpaceId, key: &str, now_us: i64) -> Result<RequestState> {
        let Some(s) = self.inner.catalog.space(space)? else {
            return Ok(RequestState::Unknown);
        };
        let st = s.state.read();
        Ok(if let Some(rec) = st.requests.get(key, now_us) {
            RequestState::Recorded(rec.clone())
        } else if st.pending_requests.contains_key(key) {
            RequestState::Pending
        } else {
            RequestState::Unknown
        })
    }

    /// Queues `op` for `space` (which exists), keyed when `request` is set: the key is pending
    /// until the record is applied, whether or not the caller waits for it.
    fn submit_keyed_async(
        &self,
        space: &SpaceId,
        op: Op,
        request: Option<RequestKey>,
    ) -> Result<Commit> {
        let Some((key, at_us)) = request else {
            return self.submit_async(space, op);
        };
        let op = keyed(op, Some((key.clone(), at_us)))?;
        let s = self.inner.catalog.require(space)?;
        *s.state
            .write()
            .pending_requests
            .entry(key.clone())
            .or_insert(0) += 1;
        let out = self.submit_async(space, op);
        if out.is_err() {
            s.state.write().unpend_request(&key);
        }
        out
    }

    /// [`Store::create_space_with_embedder`], keyed.
    pub fn create_space_keyed(
        &self,
        id: &SpaceId,
        dimension: u32,
        embedder: &str,
        request: Option<RequestKey>,
    ) -> Result<u64> {
        let create = space_create(dimension, embedder, self.inner.opts.clock.realtime_us())?;
        let create = keyed(create, request)?;
        let _busy = self.inner.catalog.claim_id(id);
        if self.inner.catalog.space(id)?.is_some() {
            return Err(StorageError::SpaceExists(id.to_string()));
        }
        self.inner.wal.submit(id, create)
    }

    /// [`Store::create_space_with_batch`], the write keyed (the key is recorded in the space
    /// the write creates).
    pub fn create_space_with_batch_keyed(
        &self,
        id: &SpaceId,
        dimension: u32,
        embedder: &str,
        mut memories: Vec<Memory>,
        request: Option<RequestKey>,
    ) -> Result<u64> {
        let create = space_create(dimension, embedder, self.inner.opts.clock.realtime_us())?;
        check_memories(dimension as usize, &memories)?;
        let write = match memories.len() {
            0 => {
                return Err(StorageError::Invalid(
                    "a first write needs at least one memory".into(),
                ))
            }
            1 => Op::Remember(memories.pop().expect("one memory")),
            _ => Op::RememberBatch(memories),
        };
        let write = keyed(write, request)?;
        let _busy = self.inner.catalog.claim_id(id);
        if self.inner.catalog.space(id)?.is_some() {
            return Err(StorageError::SpaceExists(id.to_string()));
        }
        self.inner.wal.submit_all(id, vec![create, write])
    }

    /// [`Store::remember_batch_async`], keyed.
    pub fn remember_batch_keyed_async(
        &self,
        space: &SpaceId,
        memories: Vec<Memory>,
        request: Option<RequestKey>,
    ) -> Result<Commit> {
        self.check_batch(space, &memories)?;
        self.submit_keyed_async(space, Op::RememberBatch(memories), request)
    }

    /// [`Store::remember_auto_link_async`], keyed.
    pub fn remember_auto_link_keyed_async(
        &self,
        space: &SpaceId,
        memories: Vec<(Memory, bool)>,
        request: Option<RequestKey>,
    ) -> Result<Commit> {
        self.check_auto_link(space, &memories)?;
        self.submit_keyed_async(space, Op::RememberAutoLink(memories), request)
    }

    /// [`Store::forget`], keyed. A memory that is not there is not forgotten: nothing is
    /// written and the key is not recorded (a repeat finds it missing again).
    pub fn forget_keyed(
        &self,
        space: &SpaceId,
        id: &MemoryId,
        request: Option<RequestKey>,
    ) -> Result<bool> {
        let s = self.inner.catalog.require(space)?;
        if !s.state.read().contains(id.as_str())? {
            return Ok(false);
        }
        self.inner
            .wal
            .submit(space, keyed(Op::Forget(id.clone()), request)?)?;
        Ok(true)
    }

    /// [`Store::link`], keyed.
    pub fn link_keyed(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        weight: f32,
        request: Option<RequestKey>,
    ) -> Result<u64> {
        if !engram_core::Link::is_valid_weight(f64::from(weight)) {
            return Err(StorageError::Invalid(format!(
                "link weight {weight} is outside (0, 1]"
            )));
        }
        let s = self.inner.catalog.require(space)?;
        for id in [from, to] {
            if !s.state.read().contains(id.as_str())? {
                return Err(StorageError::MemoryNotFound(id.to_string()));
            }
        }
        let op = Op::Link {
            from: from.clone(),
            to: to.clone(),
            weight,
        };
        self.inner.wal.submit(space, keyed(op, request)?)
    }

    /// [`Store::unlink`], keyed.
    pub fn unlink_keyed(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        request: Option<RequestKey>,
    ) -> Result<u64> {
        let s = self.inner.catalog.require(space)?;
        if !s.state.read().contains(from.as_str())? {
            return Err(StorageError::MemoryNotFound(from.to_string()));
        }
        let op = Op::Unlink {
            from: from.clone(),
            to: to.clone(),
        };
        self.inner.wal.submit(space, keyed(op, request)?)
    }
}
