//! Writes that carry a client's `Idempotency-Key` (shared/API.md): a repeat of a key within
//! ten minutes gets the first answer and changes nothing.
//!
//! - The key is recorded by the store with the write itself, in the same WAL record, with the
//!   write's answer ([`engram_storage::requests`]): it is durable exactly when the write is, so
//!   a repeat after a crash and a restart is recognised too. A write that was refused (a bad
//!   value, a missing memory) records nothing: a repeat is judged anew.
//! - A key is looked up before anything is prepared. Two requests with one key at once: the
//!   second is refused with `Conflict` (the first is under way; retried later, it gets the
//!   first answer), so a key is never written twice. A write whose caller stopped waiting
//!   (a client that timed out) stays under way until it is applied: the store marks its key
//!   pending until then. Should a second record with the key still be written, it is applied
//!   as a repeat (nothing changes) and its caller gets the first answer.
//! - A key names a request within its space (the table is the space's). A key first used by
//!   another kind of write (a forget's key on a remember) is a `Conflict`, not an answer.
//! - A space's drop takes its table with it: the keys of drops are remembered in memory only
//!   (a repeat after a restart answers that the space does not exist, as it does not).

use std::collections::{HashMap, HashSet};

use engram_core::{Confidence, MemoryId, SpaceId};
use engram_storage::requests::{Answer, RequestRecord, REQUEST_TTL_US};
use engram_storage::{RequestKey, RequestState, MAX_REQUEST_KEY};
use parking_lot::Mutex;

use crate::{Engine, EngineError, Result, SpaceInfo, Stored, DEFAULT_SPACE};

/// The engine's bookkeeping of keys: requests under way, and drops done.
#[derive(Default)]
pub(crate) struct Requests {
    in_flight: Mutex<HashSet<(SpaceId, String)>>,
    /// (space, key) → when the drop was received.
    drops: Mutex<HashMap<(SpaceId, String), i64>>,
}

/// A key held while its request is under way; released when dropped.
pub(crate) struct Claim<'a> {
    requests: &'a Requests,
    slot: (SpaceId, String),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.requests.in_flight.lock().remove(&self.slot);
    }
}

/// A key as a client sent it: 1 to [`MAX_REQUEST_KEY`] bytes of visible ASCII.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_REQUEST_KEY {
        return Err(EngineError::Invalid(format!(
            "Idempotency-Key has {} characters: expected 1 to {MAX_REQUEST_KEY}",
            key.chars().count()
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(EngineError::Invalid(
            "Idempotency-Key must be visible ASCII characters".into(),
        ));
    }
    Ok(())
}

fn under_way(key: &str) -> EngineError {
    EngineError::Conflict(format!(
        "a request with Idempotency-Key {key:?} is under way in this space: retry it once it is done to get its answer"
    ))
}

pub(crate) fn other_kind(key: &str) -> EngineError {
    EngineError::Conflict(format!(
        "Idempotency-Key {key:?} was used within the last 10 minutes by a different kind of write in this space"
    ))
}

/// What a keyed request is to do.
pub(crate) enum Keyed<'a> {
    /// No key: write.
    Plain,
    /// A new key, held until the write is done: write with `request`.
    New {
        _held: Claim<'a>,
        request: RequestKey,
    },
    /// A repeat: answer with the first record.
    Repeat(RequestRecord),
}

impl<'a> Keyed<'a> {
    /// The key to write with, if any.
    pub(crate) fn request(&self) -> Option<RequestKey> {
        match self {
            Keyed::New { request, .. } => Some(request.clone()),
            _ => None,
        }
    }
}

impl Engine {
    /// Claims `key` in `space` for this request: a `Conflict` if another request holds it.
    fn claim(&self, space: &SpaceId, key: &str) -> Result<Claim<'_>> {
        let slot = (space.clone(), key.to_string());
        if !self.requests.in_flight.lock().insert(slot.clone()) {
            return Err(under_way(key));
        }
        Ok(Claim {
            requests: &self.requests,
            slot,
        })
    }

    /// Looks `key` up in `space` and, when it is new, claims it for this request (a
    /// `Conflict` if another request holds it, or a write with it is still under way).
    pub(crate) fn keyed(&self, space: &SpaceId, key: Option<&str>) -> Result<Keyed<'_>> {
        let Some(key) = key else {
            return Ok(Keyed::Plain);
        };
        check_key(key)?;
        let now = self.now_us();
        let claim = self.claim(space, key)?;
        // Looked up once the key is held: a first request finishing meanwhile is seen.
        match self.store.request_state(space, key, now)? {
            RequestState::Recorded(rec) => Ok(Keyed::Repeat(rec)),
            RequestState::Pending => Err(under_way(key)),
            RequestState::Unknown => Ok(Keyed::New {
                _held: claim,
                request: (key.to_string(), now),
            }),
        }
    }

    /// After the keyed write `seq` was applied: its key's record, if the write turned out to
    /// repeat another with the key (then its answer is the first's).
    pub(crate) fn repeated_by(
        &self,
        space: &SpaceId,
        keyed: &Keyed<'_>,
        seq: u64,
    ) -> Result<Option<RequestRecord>> {
        let Keyed::New { request, .. } = keyed else {
            return Ok(None);
        };
        Ok(
            match self.store.request_state(space, &request.0, request.1)? {
                RequestState::Recorded(rec) if rec.index != seq => Some(rec),
                _ => None,
            },
        )
    }

    /// [`Engine::create_space`] with an idempotency key.
    pub fn create_space_keyed(
        &self,
        id: &SpaceId,
        dimension: Option<u32>,
        key: Option<&str>,
    ) -> Result<SpaceInfo> {
        self.not_clustered()?;
        let keyed = self.keyed(id, key)?;
        if let Keyed::Repeat(rec) = &keyed {
            return match rec.answer {
                // The first answer: the space as it was created, empty.
                Answer::SpaceCreated => Ok(SpaceInfo {
                    memories: 0,
                    ..self.space_info(id)?
                }),
                _ => Err(other_kind(key.unwrap_or_default())),
            };
        }
        let dimension = dimension.unwrap_or(self.opts.default_dimension);
        self.store.create_space_keyed(
            id,
            dimension,
            self.embedder_tag(dimension),
            keyed.request(),
        )?;
        self.space_info(id)
    }

    /// [`Engine::drop_space`] with an idempotency key (remembered in memory: see the module).
    pub fn drop_space_keyed(&self, id: &SpaceId, key: Option<&str>) -> Result<()> {
        self.not_clustered()?;
        if id.as_str() == DEFAULT_SPACE {
            return Err(EngineError::Invalid(
                "the default space cannot be dropped".into(),
            ));
        }
        let now = self.now_us();
        let _held = match key {
            Some(key) => {
                check_key(key)?;
                let held = self.claim(id, key)?;
                let mut drops = self.requests.drops.lock();
                drops.retain(|_, at| *at >= now - REQUEST_TTL_US);
                if drops.contains_key(&(id.clone(), key.to_string())) {
                    return Ok(());
                }
                Some(held)
            }
            None => None,
        };
        // Before (no write plans on it meanwhile) and after (one registered meanwhile).
        self.linking.forget_space(id);
        self.store.drop_space(id)?;
        self.linking.forget_space(id);
        if let Some(key) = key {
            self.requests
                .drops
                .lock()
                .insert((id.clone(), key.to_string()), now);
        }
        Ok(())
    }

    /// [`Engine::forget`] with an idempotency key.
    pub fn forget_keyed(&self, space: &SpaceId, id: &MemoryId, key: Option<&str>) -> Result<bool> {
        let keyed = self.keyed(space, key)?;
        if let Keyed::Repeat(rec) = &keyed {
            return match &rec.answer {
                // A forget is recorded only when it found its memory: the first answer was
                // that it did.
                Answer::Forgot { id: first, .. } if first == id => Ok(true),
                _ => Err(other_kind(key.unwrap_or_default())),
            };
        }
        let forgotten = self.store.forget_keyed(space, id, keyed.request())?;
        if forgotten {
            if let Some(index) = self.linking.get(space) {
                index.remove(id);
                self.linking.retire_if_worn(space, &index);
            }
        }
        Ok(forgotten)
    }

    /// [`Engine::link`] with an idempotency key; returns the link's weight (the first
    /// request's, for a repeat).
    pub fn link_keyed(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        weight: f32,
        key: Option<&str>,
    ) -> Result<f32> {
        let keyed = self.keyed(space, key)?;
        if let Keyed::Repeat(rec) = &keyed {
            return match &rec.answer {
                Answer::Linked {
                    from: f,
                    to: t,
                    weight,
                } if f == from && t == to => Ok(*weight),
                _ => Err(other_kind(key.unwrap_or_default())),
            };
        }
        self.check_link(space, from, to, weight)?;
        self.store
            .link_keyed(space, from, to, weight, keyed.request())?;
        Ok(weight)
    }
}

impl Engine {
    /// A cluster node's spaces are made and dropped through the cluster (its metadata and
    /// the space's group), never by the engine alone.
    fn not_clustered(&self) -> Result<()> {
        if self.is_clustered() {
            return Err(EngineError::Unavailable(
                "on a cluster node, spaces are created and dropped through the cluster".into(),
            ));
        }
        Ok(())
    }

    /// A link's checks: both memories exist in the space, not a link to itself, a weight in
    /// (0, 1].
    pub(crate) fn check_link(
        &self,
        space: &SpaceId,
        from: &MemoryId,
        to: &MemoryId,
        weight: f32,
    ) -> Result<()> {
        let exists = |id: &MemoryId| -> Result<()> {
            if self
                .store
                .read_space(space, |st| st.contains(id.as_str()))??
            {
                Ok(())
            } else {
                Err(EngineError::MemoryNotFound(id.to_string()))
            }
        };
        exists(from)?;
        if from == to {
            return Err(EngineError::Invalid(format!(
                "memory {:?} cannot link to itself",
                from.as_str()
            )));
        }
        if !engram_core::Link::is_valid_weight(f64::from(weight)) {
            return Err(EngineError::Invalid(format!(
                "link weight {weight} is outside (0, 1]"
            )));
        }
        exists(to)
    }
}

/// The memories a repeated remember stored, as its first answer named them.
pub(crate) fn stored_answer(key: &str, rec: &RequestRecord) -> Result<Vec<Stored>> {
    match &rec.answer {
        Answer::Stored(ms) => Ok(ms
            .iter()
            .map(|m| Stored {
                id: m.id.clone(),
                confidence: Confidence::new(m.confidence),
                stored_at_us: rec.at_us,
                links: m.links.clone(),
            })
            .collect()),
        _ => Err(other_kind(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineOptions;

    #[test]
    fn a_key_under_way_is_a_conflict_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions {
            default_dimension: 4,
            ..EngineOptions::default()
        };
        let e = Engine::open(dir.path(), opts).unwrap();
        let s = SpaceId::new(DEFAULT_SPACE).unwrap();
        let absent = MemoryId::new("absent").unwrap();
        let held = e.keyed(&s, Some("k")).unwrap();
        assert!(matches!(
            e.forget_keyed(&s, &absent, Some("k")),
            Err(EngineError::Conflict(_))
        ));
        // Another space's key of the same name is another request.
        let other = SpaceId::new("other").unwrap();
        e.create_space(&other, None).unwrap();
        assert!(!e.forget_keyed(&other, &absent, Some("k")).unwrap());
        drop(held);
        assert!(!e.forget_keyed(&s, &absent, Some("k")).unwrap());
        assert!(matches!(
            e.forget_keyed(&s, &absent, Some("")),
            Err(EngineError::Invalid(_))
        ));
        assert!(matches!(
            e.forget_keyed(&s, &absent, Some("tab\there")),
            Err(EngineError::Invalid(_))
        ));
    }
}
