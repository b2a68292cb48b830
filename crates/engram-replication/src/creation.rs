//! A space's group is named by its creation, not by its name alone.
//!
//! A space dropped and created again under the same name gets a new group. Without a name for
//! the creation, a replica that missed the drop (down, partitioned, its metadata behind)
//! would bring the old group's state into the new one: its longer log at a higher term could
//! win an election and overwrite the new space, or its appends erase a live voter's log.
//!
//! - The catalog names each creation: [`SpaceRecord::creation`](crate::meta::SpaceRecord),
//!   the metadata position of the command that created it. The positions of one name only
//!   grow.
//! - A group's raft state on disk records the creation it belongs to (`GroupMeta::creation`,
//!   WAL format version 6), written durably before the group first starts.
//! - Every message between a group's replicas carries its creation (codec version 2). A
//!   replica takes part only for the creation its catalog names now:
//!   - a message for an earlier creation is refused (the sender holds a dropped space);
//!   - one for a later creation is refused until the catalog has it (raft retries);
//!   - local state of an earlier creation is erased before the group starts anew, on a
//!     message, a request or a catalog change;
//!   - state of a later creation than the catalog's waits for the catalog (which only moves
//!     forward), never erased.
//! - Outside a cluster (no metadata group: tests, the benchmark's in-process nodes) every
//!   creation is 0 and nothing is checked.

use std::io;

use engram_core::SpaceId;

use crate::node::ReplicaNode;

/// A group being erased (see [`ReplicaNode::mark_erasing`]).
pub(crate) struct Erasing<'a> {
    node: &'a ReplicaNode,
    space: SpaceId,
}

impl Drop for Erasing<'_> {
    fn drop(&mut self) {
        self.node.erasing.lock().remove(&self.space);
    }
}

pub(crate) fn behind(space: &SpaceId) -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("memory space {space} was created anew, and this node's catalog does not have that creation yet; retry"),
    )
}

impl ReplicaNode {
    /// Which creation of `space` this node's group state belongs to (0: not known), if it
    /// has any.
    pub fn group_creation(&self, space: &SpaceId) -> Option<u64> {
        self.log.creation(space)
    }

    /// The creation of `space` this node's group must be of: 0 outside a cluster; in a
    /// cluster the catalog's, which `offered` (a message's creation; 0 for this node's own
    /// requests) must be. Refused: a space not in the catalog, or another creation.
    pub(crate) fn wanted_creation(&self, space: &SpaceId, offered: u64) -> io::Result<u64> {
        if self.meta.get().is_none() {
            return Ok(0);
        }
        let state = self.meta_state();
        match state.spaces.get(space) {
            Some(rec) => {
                let w = rec.creation;
                if offered == 0 || w == 0 || offered == w {
                    Ok(w)
                } else if offered < w {
                    Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("a message for an earlier creation of memory space {space} (dropped since)"),
                    ))
                } else {
                    Err(behind(space))
                }
            }
            None if offered > state.applied => Err(behind(space)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "memory space {space} is not in this node's catalog (dropped, or not created)"
                ),
            )),
        }
    }

    /// Before `space`'s group starts as the creation `want`: erases state of an earlier
    /// creation, refuses to start over state of a later one, and records `want` durably.
    pub(crate) async fn claim_creation(&self, space: &SpaceId, want: u64) -> io::Result<()> {
        if want == 0 {
            return Ok(());
        }
        let stale = match self.log.creation(space) {
            Some(have) if have > want => return Err(behind(space)),
            Some(have) if have != 0 => have < want,
            // State from before creations were recorded: this creation's only if the space
            // it made has the catalog's creation time (a space created anew has another).
            Some(_) => {
                let created = self.meta_state().spaces.get(space).map(|r| r.created_at_us);
                match self.store.space_meta(space) {
                    Ok(m) => created.is_some_and(|c| c != m.created_at_us),
                    Err(_) => false,
                }
            }
            None => false,
        };
        if stale {
            tracing::warn!(%space, creation = want, "erasing the state of a dropped creation of the space");
            self.erase_group_state(space).await?;
        }
        self.log.set_creation(space, want).await
    }

    /// Marks `space`'s group as being erased until the guard is dropped: it does not start
    /// meanwhile (requests and messages are refused, to be retried).
    pub(crate) fn mark_erasing(&self, space: &SpaceId) -> Erasing<'_> {
        self.erasing.lock().insert(space.clone());
        Erasing {
            node: self,
            space: space.clone(),
        }
    }

    /// Refused while `space`'s group is being erased.
    pub(crate) fn check_not_erasing(&self, space: &SpaceId) -> io::Result<()> {
        if self.erasing.lock().contains(space) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the group of memory space {space} is being erased; retry"),
            ));
        }
        Ok(())
    }

    /// Erases the state of groups this node holds whose creation the catalog says is gone:
    /// dropped (not in the catalog, created at or before the last command applied) or
    /// replaced by a later creation. Returns the spaces erased. State of unknown creation
    /// (0: written before creations were recorded) is left to [`ReplicaNode::claim_creation`]
    /// when the group starts (a group whose space is not in the catalog never starts).
    pub async fn erase_stale_groups(&self) -> Vec<SpaceId> {
        let Some(_) = self.meta.get() else {
            return Vec::new();
        };
        let state = self.meta_state();
        let mut erased = Vec::new();
        for space in self.log.groups() {
            if space.is_metadata_group() {
                continue;
            }
            let Some(have) = self.log.creation(&space).filter(|c| *c != 0) else {
                continue;
            };
            let stale = match state.spaces.get(&space) {
                Some(rec) => rec.creation > have,
                None => have <= state.applied,
            };
            if !stale {
                continue;
            }
            // Taken out of the resident set under its lock, then marked as being erased: no
            // start of the group runs until the erasure ends, and the other groups are not
            // held up meanwhile.
            let (resident, _erasing) = {
                let mut groups = self.groups.lock().await;
                // Checked again: a message may have started the group anew meanwhile.
                if self.log.creation(&space) != Some(have) {
                    continue;
                }
                (groups.remove(&space), self.mark_erasing(&space))
            };
            if let Some(r) = resident {
                r.contact.close();
                let _ = r.raft.shutdown().await;
            }
            match self.erase_group_state(&space).await {
                Ok(()) => {
                    tracing::info!(%space, creation = have, "erased a dropped creation's group");
                    erased.push(space);
                }
                Err(e) => {
                    tracing::warn!(%space, error = %e, "erasing a dropped creation's group failed")
                }
            }
        }
        erased
    }
}
