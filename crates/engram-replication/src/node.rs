//! A node's replicas: the raft groups of the spaces it holds, over its one store and WAL, and
//! the handling of what other nodes (and clients) send it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use engram_storage::{Command, Store};
use openraft::error::{LinearizableReadError, RaftError};
use openraft::{Raft, ReadPolicy, SnapshotMeta};

use crate::batch::Proposals;
use crate::codec::{Message, ProposeOutcome, SnapshotTransfer};
use crate::log_store::NodeLog;
use crate::network::{Contact, NetworkFactory, Transport};
use crate::residency::{Residency, Resident, Use};
use crate::state_machine::{Snapshot, SnapshotFiles, SpaceStateMachine};
use crate::types::{NodeAddr, Response, TypeConfig, Vote};

/// One space's raft group on this node.
pub type Group = Raft<TypeConfig, SpaceStateMachine>;

/// The raft groups of one node.
pub struct ReplicaNode {
    /// This node (for the tasks it starts).
    pub(crate) me: std::sync::Weak<ReplicaNode>,
    /// The heartbeat driver has been started.
    pub(crate) heartbeats: std::sync::atomic::AtomicBool,
    /// The resident groups for the heartbeat driver, apart from `groups` (whose lock is held
    /// across a group's start and shutdown): a slow start never holds heartbeats up.
    pub(crate) beats: parking_lot::RwLock<HashMap<SpaceId, (Group, Arc<Contact>)>>,
    pub(crate) id: u64,
    pub(crate) store: Arc<Store>,
    /// Groups of dropped spaces: never started again (a late message from a peer that has
    /// not yet seen the drop would give them raft state) until their space is created anew.
    pub(crate) retired: parking_lot::Mutex<std::collections::HashSet<SpaceId>>,
    /// Groups being erased (`creation.rs`): not started until the erasure ends.
    pub(crate) erasing: parking_lot::Mutex<std::collections::HashSet<SpaceId>>,
    pub(crate) log: Arc<NodeLog>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) config: Arc<openraft::Config>,
    /// How often a quiet follower hears from its leader (the configured `heartbeat_interval`;
    /// openraft's own is set coarser: see `open`).
    pub(crate) heartbeat: Duration,
    /// The resident groups (see `residency.rs`).
    pub(crate) groups: tokio::sync::Mutex<HashMap<SpaceId, Resident>>,
    pub(crate) residency: parking_lot::Mutex<Residency>,
    /// Names received snapshots' directories apart.
    received: AtomicU64,
    /// Numbers each start of a group (see `residency.rs`).
    pub(crate) generation: AtomicU64,
    /// Writes waiting to be proposed, per group.
    proposals: Arc<Proposals>,
    /// The cluster's metadata group, once started (`meta`).
    pub(crate) meta: crate::meta::MetaCell,
    /// When each space group last heard from its leader (an append, a snapshot, a quiesce):
    /// how stale a follower's read may be.
    heard: parking_lot::Mutex<HashMap<SpaceId, std::time::Instant>>,
}

impl ReplicaNode {
    /// The node `id` over `store` (its raft logs rebuilt from the WAL), reaching the others
    /// through `transport`.
    pub fn open(
        id: u64,
        store: Arc<Store>,
        transport: Arc<dyn Transport>,
        config: openraft::Config,
    ) -> io::Result<Arc<Self>> {
        // Heartbeats are this node's (`heartbeat.rs`): only for groups that sent nothing, at
        // the configured interval. openraft's own interval then only sets its ticker (a tick
        // every 13/64 of it, which wakes each group's core to check its election timer) and
        // its RPCs' time limits: three quarters of the shortest election timeout wakes an
        // idle replica about four times less (election timers fire up to a tick late).
        let heartbeat = Duration::from_millis(config.heartbeat_interval.max(1));
        let config = openraft::Config {
            enable_heartbeat: false,
            heartbeat_interval: config
                .heartbeat_interval
                .max(config.election_timeout_min * 3 / 4),
            ..config
        };
        let config = config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let log = NodeLog::open(store.clone())?;
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            heartbeats: std::sync::atomic::AtomicBool::new(false),
            beats: parking_lot::RwLock::new(HashMap::new()),
            id,
            store,
            log,
            transport,
            config: Arc::new(config),
            heartbeat,
            groups: tokio::sync::Mutex::new(HashMap::new()),
            residency: parking_lot::Mutex::new(Residency::default()),
            received: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            proposals: Arc::new(Proposals::default()),
            meta: Default::default(),
            heard: Default::default(),
            retired: Default::default(),
            erasing: Default::default(),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The group of `space`, started if it is not resident, woken if it was quiesced (see
    /// `residency.rs`): what every request and every message of the group goes through.
    pub async fn group(&self, space: &SpaceId) -> io::Result<Group> {
        self.resident(space, Use::Request, 0).await
    }

    /// Starts the group of `space` as its creation `creation` (`creation.rs`; the caller
    /// holds the resident set's lock).
    pub(crate) async fn start_group(
        &self,
        space: &SpaceId,
        creation: u64,
    ) -> io::Result<(Group, Arc<Contact>)> {
        self.claim_creation(space, creation).await?;
        self.start_heartbeats();
        let log = self.log.group(space);
        let sm = SpaceStateMachine::open(self.store.clone(), space.clone(), log.purged())?;
        let contact = Arc::new(Contact::with_closer(sm.closer()));
        let network = NetworkFactory {
            transport: self.transport.clone(),
            group: space.clone(),
            creation,
            disk: self.store.disk().clone(),
            contact: contact.clone(),
        };
        let raft = Raft::new(self.id, self.config.clone(), network, log, sm)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok((raft, contact))
    }

    /// The groups resident on this node.
    pub async fn running(&self) -> Vec<(SpaceId, Group)> {
        let groups = self.groups.lock().await;
        groups
            .iter()
            .map(|(k, v)| (k.clone(), v.raft.clone()))
            .collect()
    }

    /// Makes `members` the first voters of `space`'s group (on one of them, once).
    pub async fn initialize(
        &self,
        space: &SpaceId,
        members: BTreeMap<u64, NodeAddr>,
    ) -> io::Result<()> {
        let g = self.group(space).await?;
        g.initialize(members)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Proposes `command` to `space`'s group: applied once committed on a majority (batched
    /// with the other writes waiting for the group: `batch.rs`).
    pub async fn propose(&self, space: &SpaceId, command: Command) -> ProposeOutcome {
        self.propose_for(space, 0, command).await
    }

    /// [`ReplicaNode::propose`] for the creation `creation` of `space` (0: the catalog's).
    pub async fn propose_for(
        &self,
        space: &SpaceId,
        creation: u64,
        command: Command,
    ) -> ProposeOutcome {
        let (g, start) = match self.resident_start(space, Use::Request, creation).await {
            Ok(g) => g,
            Err(e) => return ProposeOutcome::Failed(e.to_string()),
        };
        // A repeat of a request this replica has applied is answered at once, as the first
        // was (any replica's record is of a committed entry). One not found here is
        // proposed: applying it finds a repeat the leader has and this node has not yet.
        if let Some((key, at_us)) = &command.request {
            match self.store.request_record(space, key, *at_us) {
                Ok(Some(first)) => {
                    return ProposeOutcome::Applied(Response {
                        index: first.index,
                        at_us: first.at_us,
                        answer: Some(first.answer),
                        repeat: true,
                    })
                }
                Ok(None) => {}
                Err(e) => return ProposeOutcome::Failed(e.to_string()),
            }
        }
        self.proposals
            .propose(
                &g,
                space,
                start,
                command,
                Duration::from_millis(self.config.election_timeout_max),
                self.heartbeat,
            )
            .await
    }

    /// A linearizable read of the ids of `space`'s memories: confirmed by a quorum that this
    /// node leads, and after everything committed before the read is applied.
    pub async fn read_ids(&self, space: &SpaceId) -> Result<Vec<String>, ProposeOutcome> {
        self.read_ids_for(space, 0).await
    }

    async fn read_ids_for(
        &self,
        space: &SpaceId,
        creation: u64,
    ) -> Result<Vec<String>, ProposeOutcome> {
        let g = self
            .resident(space, Use::Request, creation)
            .await
            .map_err(|e| ProposeOutcome::Failed(e.to_string()))?;
        match g.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => {}
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                return Err(ProposeOutcome::NotLeader(f.leader_id))
            }
            Err(e) => return Err(ProposeOutcome::Failed(e.to_string())),
        }
        let mut ids = Vec::new();
        match self
            .store
            .for_each(space, |m| ids.push(m.id.as_str().to_string()))
        {
            Ok(()) => {}
            Err(engram_storage::StorageError::SpaceNotFound(_)) => {}
            Err(e) => return Err(ProposeOutcome::Failed(e.to_string())),
        }
        ids.sort();
        Ok(ids)
    }

    /// Before a linearizable read of `space` on this node: confirms with a quorum that this
    /// node leads the group and waits until everything committed before is applied (within an
    /// election timeout). `Err` with the leader this node knows when it does not lead, or
    /// cannot confirm it.
    pub async fn read_barrier(&self, space: &SpaceId) -> Result<(), Option<u64>> {
        let g = self.group(space).await.map_err(|_| None)?;
        let patience = Duration::from_millis(self.config.election_timeout_max * 2);
        match tokio::time::timeout(patience, g.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(f.leader_id)
            }
            _ => Err(None),
        }
    }

    /// Handles a request frame from another node or a client; returns the reply frame.
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        let (group, creation, msg) = match Message::decode_for(request) {
            Ok(d) => d,
            Err(e) => {
                // No group to answer for: the reply names none that exists.
                let g = SpaceId::new("invalid").expect("a valid id");
                tracing::warn!(error = %e, "refusing a malformed message");
                return Message::Error(e.to_string()).encode(&g);
            }
        };
        let reply = self.dispatch(&group, creation, msg).await;
        reply.encode_for(&group, creation)
    }

    /// Handles a message for the creation `creation` of `space`'s group.
    async fn dispatch(&self, space: &SpaceId, creation: u64, msg: Message) -> Message {
        let fail = |e: &dyn std::fmt::Display| Message::Error(e.to_string());
        if let Message::Status = msg {
            let (led, resident) = self.led_and_resident().await;
            return Message::StatusReply { led, resident };
        }
        if space.is_metadata_group() {
            return self.dispatch_meta(msg).await;
        }
        // When the leader's message arrived (a reply that accepts it dates the replica).
        let arrived = std::time::Instant::now();
        let heard = |ok: bool| {
            if ok {
                self.heard.lock().insert(space.clone(), arrived);
            }
        };
        match msg {
            Message::Append(a) => match self.resident(space, Use::Message, creation).await {
                Ok(g) => {
                    let entries = !a.entries.is_empty();
                    let r = g.append_entries(a).await;
                    if entries {
                        // On a follower: an append of entries, to its reply (after the fsync).
                        metrics::histogram!("engram_raft_follower_append_seconds")
                            .record(arrived.elapsed().as_secs_f64());
                    }
                    match r {
                        Ok(r) => {
                            // Only an append this replica took in full from the current leader
                            // shows it holds everything: not a conflict, not a deposed leader's.
                            heard(r.is_success());
                            Message::AppendReply(r)
                        }
                        Err(e) => fail(&e),
                    }
                }
                Err(e) => fail(&e),
            },
            Message::Vote(v) => match self.resident(space, Use::Message, creation).await {
                Ok(g) => match g.vote(v).await {
                    Ok(r) => Message::VoteReply(r),
                    Err(e) => fail(&e),
                },
                Err(e) => fail(&e),
            },
            Message::Snapshot { vote, snapshot } => {
                let sent = vote;
                match self.receive_snapshot(space, creation, vote, snapshot).await {
                    Ok(m) => {
                        // Installed: the replica answers with the sender's vote.
                        heard(matches!(&m, Message::SnapshotReply(r) if r.vote == sent));
                        m
                    }
                    Err(e) => fail(&e),
                }
            }
            Message::Propose(c) if matches!(c.op, engram_storage::Op::Meta(_)) => {
                fail(&"a metadata command for a space's group")
            }
            Message::Propose(c) => {
                Message::ProposeReply(self.propose_for(space, creation, c).await)
            }
            Message::ReadIds => Message::ReadIdsReply(self.read_ids_for(space, creation).await),
            Message::Quiesce { from } => match self.quiesce_follower(space, creation, from).await {
                Ok(follows) => {
                    // The leader quiesces only followers that hold its whole log: fresh, if
                    // this replica follows it.
                    heard(follows);
                    Message::Ack
                }
                Err(e) => fail(&e),
            },
            Message::Wake { .. } => match self.resident(space, Use::Message, creation).await {
                Ok(_) => Message::Ack,
                Err(e) => fail(&e),
            },
            other => Message::Error(format!(
                "not a request: {:?}",
                std::mem::discriminant(&other)
            )),
        }
    }

    /// What the metadata group's peers send it.
    async fn dispatch_meta(&self, msg: Message) -> Message {
        let fail = |e: &dyn std::fmt::Display| Message::Error(e.to_string());
        let Some(m) = self.meta.get() else {
            return fail(&"this node has no metadata group");
        };
        match msg {
            Message::Append(a) => match m.raft.append_entries(a).await {
                Ok(r) => Message::AppendReply(r),
                Err(e) => fail(&e),
            },
            Message::Vote(v) => match m.raft.vote(v).await {
                Ok(r) => Message::VoteReply(r),
                Err(e) => fail(&e),
            },
            Message::Snapshot { vote, snapshot } => {
                let space = SpaceId::metadata_group();
                let snap = match self.receive_files(&space, snapshot) {
                    Ok(s) => s,
                    Err(e) => return fail(&e),
                };
                match m.raft.install_full_snapshot(vote, snap).await {
                    Ok(r) => Message::SnapshotReply(r),
                    Err(e) => fail(&e),
                }
            }
            Message::Propose(c) => Message::ProposeReply(self.propose_meta_here(c).await),
            Message::Join(n) => {
                let name = n.name.clone();
                match self.propose_meta(&crate::meta::MetaCommand::Join(n)).await {
                    Ok(a) => {
                        tracing::info!(node = %name, answer = ?a, "a node asked to join");
                        Message::ProposeReply(crate::codec::ProposeOutcome::Applied(
                            crate::types::Response {
                                index: 0,
                                at_us: 0,
                                answer: Some(engram_storage::requests::Answer::Meta(a.encode())),
                                repeat: false,
                            },
                        ))
                    }
                    Err(e) => fail(&e),
                }
            }
            other => Message::Error(format!(
                "not a request of the metadata group: {:?}",
                std::mem::discriminant(&other)
            )),
        }
    }

    /// Writes a received snapshot's files under `snapshots/<space>/` and installs it.
    async fn receive_snapshot(
        &self,
        space: &SpaceId,
        creation: u64,
        vote: Vote,
        snapshot: SnapshotTransfer,
    ) -> io::Result<Message> {
        let g = self.resident(space, Use::Message, creation).await?;
        let snap = self.receive_files(space, snapshot)?;
        let r = g
            .install_full_snapshot(vote, snap)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Message::SnapshotReply(r))
    }

    /// Writes a received snapshot's files, durably, into a new directory of
    /// `snapshots/<group>/`.
    fn receive_files(&self, space: &SpaceId, snapshot: SnapshotTransfer) -> io::Result<Snapshot> {
        let disk = self.store.disk().clone();
        let n = self.received.fetch_add(1, Ordering::Relaxed);
        let dir: PathBuf = self
            .store
            .root()
            .join("snapshots")
            .join(space.as_str())
            .join(format!("received-{n}"));
        disk.create_dir_all(&dir)?;
        for (name, bytes) in &snapshot.files {
            let mut f = disk.create(&dir.join(name))?;
            f.write_all(bytes)?;
            f.sync()?;
        }
        disk.sync_dir(&dir)?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: snapshot.last_log_id,
                last_membership: snapshot.membership,
            },
            snapshot: SnapshotFiles { dir },
        })
    }

    /// Retires the group of a dropped space on this node: stops it, drops the space's data
    /// where the group had not applied the drop yet, and erases its raft state (log, vote,
    /// snapshots) durably, so that neither a restart nor a space created anew under the same
    /// name finds the old group. It is not started again until [`ReplicaNode::unretire`].
    ///
    /// `creation`: the creation dropped (0: not known). Nothing is done (`Ok(false)`) when
    /// the catalog holds the space again, or this node's state is of a later creation: a
    /// new creation's group is never retired by an old drop (state of the dropped creation
    /// is then erased by [`ReplicaNode::erase_stale_groups`]).
    pub async fn retire_group(&self, space: &SpaceId, creation: u64) -> io::Result<bool> {
        // Decided under the resident set's lock, then marked as being erased: no start of
        // the group runs until the erasure ends, and the other groups are not held up.
        let (resident, _erasing) = {
            let mut groups = self.groups.lock().await;
            if self.meta_state().spaces.contains_key(space) {
                return Ok(false);
            }
            let have = self.log.creation(space).unwrap_or(0);
            if creation != 0 && have > creation {
                return Ok(false);
            }
            self.retired.lock().insert(space.clone());
            (groups.remove(space), self.mark_erasing(space))
        };
        if let Some(r) = resident {
            r.contact.close();
            let _ = r.raft.shutdown().await;
        }
        self.erase_group_state(space).await?;
        Ok(true)
    }

    /// Erases the state of `space`'s group on this node (stopped, not resident): the space's
    /// data, its snapshots, then its raft state, durably.
    pub(crate) async fn erase_group_state(&self, space: &SpaceId) -> io::Result<()> {
        self.heard.lock().remove(space);
        self.beats.write().remove(space);
        match self.store.drop_space(space) {
            Ok(_) | Err(engram_storage::StorageError::SpaceNotFound(_)) => {}
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
        // The snapshots before the log: a crash between the two must not leave a snapshot
        // that a group started anew under the name would take for its own.
        let snapshots = self.store.root().join("snapshots").join(space.as_str());
        let disk = self.store.disk();
        if disk.exists(&snapshots) {
            disk.remove_dir_all(&snapshots)?;
        }
        self.log.reset(space).await?;
        Ok(())
    }

    /// Lets the group of `space` start again (the space was created anew).
    pub fn unretire(&self, space: &SpaceId) {
        self.retired.lock().remove(space);
    }

    /// How long ago this node's replica of `space` last heard from the group's leader
    /// (`None`: never, since this process started): a bound on how stale a read from it is
    /// (a quiesced group hears nothing while nothing is written).
    pub fn since_leader(&self, space: &SpaceId) -> Option<std::time::Duration> {
        self.heard.lock().get(space).map(|t| t.elapsed())
    }

    /// A bound on how stale this node's replica of `space` may be: on the group's leader,
    /// how long ago a quorum last acknowledged it (a leader cut off from its quorum may have
    /// been replaced meanwhile); elsewhere [`ReplicaNode::since_leader`]. `None`: unknown.
    pub async fn staleness(&self, space: &SpaceId) -> Option<std::time::Duration> {
        use openraft::async_runtime::watch::WatchReceiver;
        use openraft::Instant as _;
        let resident = self.groups.lock().await.get(space).map(|r| r.raft.clone());
        if let Some(g) = resident {
            let metrics = g.metrics();
            let m = metrics.borrow_watched();
            if m.state == openraft::ServerState::Leader {
                // A leader no quorum has acknowledged yet: not known.
                return m.last_quorum_acked.as_ref().map(|t| t.elapsed());
            }
        }
        self.since_leader(space)
    }

    /// How many resident space groups this node leads, and how many are resident.
    pub async fn led_and_resident(&self) -> (u64, u64) {
        use openraft::async_runtime::watch::WatchReceiver;
        let groups = self.running().await;
        let led = groups
            .iter()
            .filter(|(_, g)| g.metrics().borrow_watched().current_leader == Some(self.id))
            .count();
        (led as u64, groups.len() as u64)
    }

    /// The last log index `space`'s group has applied on this node.
    pub async fn last_applied(&self, space: &SpaceId) -> io::Result<u64> {
        use openraft::async_runtime::watch::WatchReceiver;
        let g = self.group(space).await?;
        let m = g.metrics();
        let applied = m.borrow_watched().last_applied.map_or(0, |l| l.index);
        Ok(applied)
    }

    /// Stops every group (their state is on disk).
    pub async fn shutdown(&self) {
        self.beats.write().clear();
        let groups: Vec<Group> = self
            .groups
            .lock()
            .await
            .drain()
            .map(|(_, g)| g.raft)
            .collect();
        for g in groups {
            let _ = g.shutdown().await;
        }
    }
}
