//! The metadata group's state machine: [`MetaState`] in memory, published to the node's
//! other parts through a watch channel after every applied batch. Its log is the node's WAL
//! (group `cluster.meta`, entries of operation 14); its durable state is its snapshots: a
//! directory of `snapshots/cluster.meta/` holding `raft.state` (what it has applied) and
//! `cluster.state` (the state, with a CRC32C), sealed as a space's snapshots are. A restart
//! loads the newest sealed snapshot and openraft re-applies the committed entries after it
//! (its commit point is saved); the group snapshots every [`SNAPSHOT_EVERY`] entries, so the
//! WAL keeps little of its log.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use engram_core::SpaceId;
use engram_storage::requests::Answer;
use engram_storage::{Disk, LogPos, Op, RaftApplied, RAFT_STATE_FILE};
use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use tokio::sync::watch;

use super::state::{MetaAnswer, MetaCommand, MetaState};
use crate::state_machine::{
    keep_snapshot, make_current, seal, snapshot_dir_name, snapshot_meta, Current, Meta, Snapshot,
    SnapshotFiles,
};
use crate::types::{log_id, log_pos, stored_membership, Response};
use crate::types::{StoredMembership, TypeConfig};

/// The file of a metadata snapshot holding the state.
pub const CLUSTER_STATE_FILE: &str = "cluster.state";
/// Entries between the metadata group's snapshots.
pub const SNAPSHOT_EVERY: u64 = 1000;

/// The metadata group's state machine.
pub struct MetaStateMachine {
    disk: Arc<dyn Disk>,
    snapshots: PathBuf,
    applied: RaftApplied,
    state: MetaState,
    publish: watch::Sender<Arc<MetaState>>,
    current: Current,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// `cluster.state`: the state's encoding, then its CRC32C.
fn state_file(state: &MetaState) -> Vec<u8> {
    let mut b = state.encode();
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn read_state_file(bytes: &[u8]) -> io::Result<MetaState> {
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(invalid("cluster.state is shorter than its checksum"));
    };
    let (body, crc) = bytes.split_at(split);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(invalid("cluster.state: checksum mismatch"));
    }
    MetaState::decode(body).map_err(invalid)
}

/// A snapshot directory's applied state and metadata.
fn read_snapshot(disk: &dyn Disk, dir: &std::path::Path) -> io::Result<(RaftApplied, MetaState)> {
    let applied = RaftApplied::decode(&disk.read(&dir.join(RAFT_STATE_FILE))?).map_err(invalid)?;
    let state = read_state_file(&disk.read(&dir.join(CLUSTER_STATE_FILE))?)?;
    Ok((applied, state))
}

impl MetaStateMachine {
    /// The state machine as the newest sealed snapshot in the node's `snapshots/cluster.meta/`
    /// leaves it (no snapshot: the empty metadata). `purged`: the last entry the group's log no
    /// longer holds. The receiver sees the state after every applied batch.
    pub fn open(
        disk: Arc<dyn Disk>,
        root: &std::path::Path,
        purged: Option<LogPos>,
    ) -> io::Result<(Self, watch::Receiver<Arc<MetaState>>)> {
        let snapshots = root
            .join("snapshots")
            .join(SpaceId::metadata_group().as_str());
        let kept = keep_snapshot(&*disk, &snapshots, u64::MAX, purged)?;
        let (applied, state) = match &kept {
            Some((_, dir)) => read_snapshot(&*disk, dir)?,
            None => (RaftApplied::default(), MetaState::default()),
        };
        let (publish, view) = watch::channel(Arc::new(state.clone()));
        Ok((
            Self {
                disk,
                snapshots,
                applied,
                state,
                publish,
                current: Arc::new(parking_lot::Mutex::new(kept)),
            },
            view,
        ))
    }

    /// Writes the snapshot of `(applied, state)` into a new directory named for `what`, seals
    /// it and makes it current.
    fn write_snapshot(
        disk: &dyn Disk,
        snapshots: &std::path::Path,
        current: &Current,
        applied: &RaftApplied,
        state: &MetaState,
    ) -> io::Result<Snapshot> {
        let dir = snapshots.join(snapshot_dir_name("built"));
        disk.create_dir_all(&dir)?;
        for (name, bytes) in [
            (RAFT_STATE_FILE, applied.encode()),
            (CLUSTER_STATE_FILE, state_file(state)),
        ] {
            let mut f = disk.create(&dir.join(name))?;
            f.write_all(&bytes)?;
            f.sync()?;
        }
        seal(disk, &dir)?;
        let meta = snapshot_meta(applied)?;
        make_current(disk, current, snapshots, meta.clone(), dir.clone());
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFiles { dir },
        })
    }

    /// Applies one command's bytes: its answer (a command that does not decode is refused,
    /// and changes nothing).
    fn apply_command(&mut self, position: u64, op: &Op) -> MetaAnswer {
        let Op::Meta(bytes) = op else {
            return MetaAnswer::Refused(format!(
                "operation {} in the metadata group: only metadata commands are",
                op.code()
            ));
        };
        match MetaCommand::decode(bytes) {
            Ok(cmd) => self.state.apply_at(position, &cmd),
            Err(e) => MetaAnswer::Refused(e.to_string()),
        }
    }
}

/// Builds a snapshot of the metadata as it was when the builder was made.
pub struct MetaSnapshotBuilder {
    disk: Arc<dyn Disk>,
    snapshots: PathBuf,
    current: Current,
    applied: RaftApplied,
    state: MetaState,
}

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    type SnapshotData = SnapshotFiles;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        MetaStateMachine::write_snapshot(
            &*self.disk,
            &self.snapshots,
            &self.current,
            &self.applied,
            &self.state,
        )
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotFiles;
    type SnapshotBuilder = MetaSnapshotBuilder;

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
        let mut changed = false;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let pos = log_pos(&entry.log_id);
            self.applied.applied = Some(pos);
            let mut answers = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(req) => {
                    for (slot, c) in req.0.iter().enumerate() {
                        // Entries hold at most 1,024 commands (`MAX_ENTRY_COMMANDS`).
                        let position = (pos.index << 10) | (slot as u64 & 1023);
                        let a = self.apply_command(position, &c.op);
                        if let MetaAnswer::Refused(why) = &a {
                            tracing::info!(index = pos.index, %why, "metadata command refused");
                        }
                        changed = true;
                        answers.push(Response {
                            index: pos.index,
                            at_us: 0,
                            answer: Some(Answer::Meta(a.encode())),
                            repeat: false,
                        });
                    }
                }
                EntryPayload::Membership(m) => {
                    self.applied.membership_at = Some(pos);
                    self.applied.membership = stored_membership(&m);
                }
            }
            if let Some(r) = responder {
                r.send(answers);
            }
        }
        if changed {
            self.publish.send_replace(Arc::new(self.state.clone()));
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetaSnapshotBuilder {
            disk: self.disk.clone(),
            snapshots: self.snapshots.clone(),
            current: self.current.clone(),
            applied: self.applied.clone(),
            state: self.state.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: SnapshotFiles,
    ) -> Result<(), io::Error> {
        let (applied, state) = read_snapshot(&*self.disk, &snapshot.dir)?;
        if applied.applied.map(log_id) != meta.last_log_id {
            return Err(invalid(format!(
                "the snapshot holds {:?} applied, its meta says {:?}",
                applied.applied, meta.last_log_id
            )));
        }
        // Kept as this node's own snapshot (the received directory is the transport's).
        Self::write_snapshot(
            &*self.disk,
            &self.snapshots,
            &self.current,
            &applied,
            &state,
        )?;
        self.applied = applied;
        self.state = state;
        self.publish.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current.lock().clone().map(|(meta, dir)| Snapshot {
            meta,
            snapshot: SnapshotFiles { dir },
        }))
    }
}
