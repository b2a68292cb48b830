//! A space as its group's state machine.
//!
//! Applying a committed entry hands its command to the store with its log index
//! ([`Store::apply_replicated`]), which skips what the space's segments already hold: apply
//! is idempotent by index, so a restart re-applies from the last `raft.state` and changes
//! nothing twice. A snapshot is the space's files as they are, linked into a directory of the
//! node's `snapshots/<space>/`; installing one replaces the space's files atomically.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::SpaceId;
use engram_storage::{ApplyOutcome, Disk, LogPos, Op, RaftApplied, Store, RAFT_STATE_FILE};
use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta};
use parking_lot::Mutex;

use openraft::vote::leader_id_std::CommittedLeaderId;

use crate::types::{
    io_err, log_id, log_pos, membership_of, stored_membership, NodeAddr, Response,
    StoredMembership, TypeConfig,
};

/// A snapshot's files: a directory holding a space's state files as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
}

pub type Snapshot = openraft::Snapshot<CommittedLeaderId<u64>, u64, NodeAddr, SnapshotFiles>;
pub(crate) type Meta = SnapshotMeta<CommittedLeaderId<u64>, u64, NodeAddr>;

/// The newest snapshot built or installed, shared with the builders.
pub(crate) type Current = Arc<Mutex<Option<(Meta, PathBuf)>>>;

/// One space as its group's state machine.
pub struct SpaceStateMachine {
    store: Arc<Store>,
    space: SpaceId,
    /// What the group has applied (the space's `raft` state, or this alone while the space
    /// does not exist).
    applied: RaftApplied,
    /// `snapshots/<space>/` below the node's root.
    snapshots: PathBuf,
    current: Current,
    /// Set when the group is stopped for its state to be erased (`creation.rs`): openraft's
    /// state-machine worker (and a snapshot build) may outlive the group's stop, and must
    /// not write the space again.
    closed: Closer,
}

/// A state machine's closing flag: each write to the space (an entry's apply, a snapshot
/// installed or built) holds it for reading from its check to its end; closing takes it for
/// writing, so it returns once no write is under way, and none starts after.
pub type Closer = Arc<parking_lot::RwLock<bool>>;

/// Held across a write to the space: refused once closed.
fn open_guard<'a>(
    closed: &'a Closer,
    space: &SpaceId,
) -> io::Result<parking_lot::RwLockReadGuard<'a, bool>> {
    let g = closed.read();
    if *g {
        return Err(io_err(format!(
            "the group of {space} was stopped to be erased"
        )));
    }
    Ok(g)
}

impl SpaceStateMachine {
    /// The flag that closes this state machine (see the field).
    pub fn closer(&self) -> Closer {
        self.closed.clone()
    }

    /// The state machine of `space`, with what the store holds of it applied. The newest
    /// complete snapshot an earlier run left (see [`keep_snapshot`]) is its current one, so a
    /// restart builds none (building one flushes the memtable); the others are removed.
    /// `purged`: the last entry the group's log no longer holds.
    pub fn open(store: Arc<Store>, space: SpaceId, purged: Option<LogPos>) -> io::Result<Self> {
        let applied = store
            .replicated_state(&space)
            .map_err(io_err)?
            .unwrap_or_default();
        let snapshots = store.root().join("snapshots").join(space.as_str());
        let upto = applied.applied.map_or(0, |p| p.index);
        let kept = keep_snapshot(&**store.disk(), &snapshots, upto, purged)?;
        Ok(Self {
            store,
            space,
            applied,
            snapshots,
            current: Arc::new(Mutex::new(kept)),
            closed: Default::default(),
        })
    }

    pub fn space(&self) -> &SpaceId {
        &self.space
    }

    /// The last entry applied.
    pub fn applied(&self) -> &RaftApplied {
        &self.applied
    }
}

pub(crate) fn snapshot_meta(state: &RaftApplied) -> io::Result<Meta> {
    Ok(SnapshotMeta {
        last_log_id: state.applied.map(log_id),
        last_membership: StoredMembership::new(
            state.membership_at.map(log_id),
            membership_of(&state.membership)?,
        ),
    })
}

/// A name for a new snapshot directory: `what` and the clock (unique within the group).
pub(crate) fn snapshot_dir_name(what: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{what}-{n}")
}

/// The file that marks a snapshot directory complete: written, durably, once every file of
/// the snapshot is linked in and durable. Not part of the snapshot (it is not sent).
pub const SEALED: &str = "sealed";

/// Marks the filled snapshot directory `dir` complete (see [`SEALED`]).
pub(crate) fn seal(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    disk.sync_dir(dir)?;
    let mut f = disk.create(&dir.join(SEALED))?;
    f.sync()?;
    disk.sync_dir(dir)
}

/// The snapshot an earlier run left in `snapshots` that stays current: the complete one
/// (built or installed, and [`SEALED`]) holding the most applied, of those a restarted group
/// can serve (applied up to no further than `upto`, what the state machine holds applied,
/// and no older than the log's purged entries: the entries after it must still be in the
/// log). Every other directory there is removed.
pub(crate) fn keep_snapshot(
    disk: &dyn Disk,
    snapshots: &Path,
    upto: u64,
    purged: Option<LogPos>,
) -> io::Result<Option<(Meta, PathBuf)>> {
    if !disk.exists(snapshots) {
        return Ok(None);
    }
    let mut best: Option<(RaftApplied, PathBuf)> = None;
    let mut all = Vec::new();
    for name in disk.list_dir(snapshots)? {
        let dir = snapshots.join(&name);
        all.push(dir.clone());
        if !(name.starts_with("built-") || name.starts_with("installed-"))
            || !disk.exists(&dir.join(SEALED))
        {
            continue;
        }
        let state = match disk
            .read(&dir.join(RAFT_STATE_FILE))
            .map_err(|e| e.to_string())
            .and_then(|b| RaftApplied::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing an unreadable snapshot");
                continue;
            }
        };
        let index = |a: &RaftApplied| a.applied.map_or(0, |p| p.index);
        let servable = state.applied.is_some()
            && index(&state) <= upto
            && purged.is_none_or(|p| index(&state) >= p.index);
        if servable && best.as_ref().is_none_or(|(b, _)| index(&state) > index(b)) {
            best = Some((state, dir));
        }
    }
    for dir in all {
        if best.as_ref().is_none_or(|(_, b)| *b != dir) {
            disk.remove_dir_all(&dir)?;
        }
    }
    match best {
        Some((state, dir)) => Ok(Some((snapshot_meta(&state)?, dir))),
        None => Ok(None),
    }
}

/// Makes the newest snapshot `(meta, dir)` and removes the directories of older ones.
pub(crate) fn make_current(
    disk: &dyn Disk,
    current: &Current,
    snapshots: &Path,
    meta: Meta,
    dir: PathBuf,
) {
    let mut cur = current.lock();
    *cur = Some((meta, dir.clone()));
    if let Ok(names) = disk.list_dir(snapshots) {
        for name in names {
            let p = snapshots.join(name);
            if p != dir {
                let _ = disk.remove_dir_all(&p);
            }
        }
    }
}

/// Builds a snapshot of the space (see [`Store::snapshot_replicated`]).
pub struct SpaceSnapshotBuilder {
    store: Arc<Store>,
    space: SpaceId,
    /// The applied state when the builder was made, for a group with no space.
    applied: RaftApplied,
    snapshots: PathBuf,
    current: Current,
    closed: Closer,
}

impl RaftSnapshotBuilder<TypeConfig> for SpaceSnapshotBuilder {
    type SnapshotData = SnapshotFiles;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let _open = open_guard(&self.closed, &self.space)?;
        let dir = self.snapshots.join(snapshot_dir_name("built"));
        let state = self
            .store
            .snapshot_replicated(&self.space, &dir, &self.applied)
            .map_err(io_err)?;
        seal(&**self.store.disk(), &dir)?;
        let meta = snapshot_meta(&state)?;
        make_current(
            &**self.store.disk(),
            &self.current,
            &self.snapshots,
            meta.clone(),
            dir.clone(),
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFiles { dir },
        })
    }
}

impl RaftStateMachine<TypeConfig> for SpaceStateMachine {
    type SnapshotData = SnapshotFiles;
    type SnapshotBuilder = SpaceSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<crate::types::LogId>, StoredMembership), io::Error> {
        let m = snapshot_meta(&self.applied)?;
        Ok((m.last_log_id, m.last_membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            // Held to the end of this entry (no await meanwhile).
            let closed = self.closed.clone();
            let _open = open_guard(&closed, &self.space)?;
            let pos = log_pos(&entry.log_id);
            self.applied.applied = Some(pos);
            let cmds = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                // The log keeps its copy (for followers) until it is purged.
                EntryPayload::Normal(req) => req.0.to_vec(),
                EntryPayload::Membership(m) => {
                    self.applied.membership_at = Some(pos);
                    self.applied.membership = stored_membership(&m);
                    Vec::new()
                }
            };
            if tracing::enabled!(tracing::Level::TRACE) {
                let what: Vec<String> = cmds
                    .iter()
                    .map(|c| match &c.op {
                        Op::Remember(m) => m.id.as_str().to_string(),
                        o => format!("op {}", o.code()),
                    })
                    .collect();
                tracing::trace!(space = %self.space, index = pos.index, ?what, "apply");
            }
            let times: Vec<i64> = cmds
                .iter()
                .map(|c| c.request.as_ref().map_or(0, |(_, at)| *at))
                .collect();
            let started = std::time::Instant::now();
            let outcomes = self
                .store
                .apply_entry(&self.space, pos.index, cmds, &self.applied)
                .map_err(io_err)?;
            metrics::histogram!("engram_raft_apply_seconds")
                .record(started.elapsed().as_secs_f64());
            if let Some(r) = responder {
                let responses = outcomes
                    .into_iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let at_us = times.get(i).copied().unwrap_or(0);
                        match o {
                            ApplyOutcome::Applied(answer) => Response {
                                index: pos.index,
                                at_us,
                                answer,
                                repeat: false,
                            },
                            ApplyOutcome::Repeat(first) => Response {
                                index: first.index,
                                at_us: first.at_us,
                                answer: Some(first.answer),
                                repeat: true,
                            },
                            ApplyOutcome::Nothing => Response {
                                index: pos.index,
                                at_us,
                                answer: None,
                                repeat: false,
                            },
                        }
                    })
                    .collect();
                r.send(responses);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SpaceSnapshotBuilder {
            store: self.store.clone(),
            space: self.space.clone(),
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
            current: self.current.clone(),
            closed: self.closed.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: SnapshotFiles,
    ) -> Result<(), io::Error> {
        let closed = self.closed.clone();
        let _open = open_guard(&closed, &self.space)?;
        // The files are kept as this node's current snapshot, then put in place.
        let disk = self.store.disk().clone();
        let dir = self.snapshots.join(snapshot_dir_name("installed"));
        disk.create_dir_all(&dir)?;
        for name in disk.list_dir(&snapshot.dir)? {
            if name != SEALED {
                disk.hard_link(&snapshot.dir.join(&name), &dir.join(&name))?;
            }
        }
        seal(&*disk, &dir)?;
        let state = self
            .store
            .install_replicated(&self.space, &dir)
            .map_err(io_err)?;
        if state.applied.map(log_id) != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the snapshot holds {:?} applied, its meta says {:?}",
                    state.applied, meta.last_log_id
                ),
            ));
        }
        self.applied = state;
        make_current(&*disk, &self.current, &self.snapshots, meta.clone(), dir);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current.lock().clone().map(|(meta, dir)| Snapshot {
            meta,
            snapshot: SnapshotFiles { dir },
        }))
    }
}
