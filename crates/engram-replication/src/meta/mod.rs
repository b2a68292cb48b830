//! The cluster's metadata group: one openraft group per cluster (named `cluster.meta`, a name
//! no space can take) whose state machine is [`MetaState`]: the nodes, the epoch, placement
//! and the space catalog. Its log is the node's WAL like every group's (entries of operation
//! 14, `docs/format.md`); its state is in memory and in its snapshots ([`machine`]).
//!
//! - Voters: up to 5 nodes (the largest odd number up to the live nodes, at most 5); the
//!   others are learners, so every node applies the metadata. The group's leader runs
//!   [`ReplicaNode::reconcile_meta`], which adds each node the state records as a learner and
//!   promotes learners while the group has fewer voters than its target.
//! - A proposal made on a node that does not lead the group is forwarded once to the leader
//!   (the message codec's `Propose`, for the group `cluster.meta`), never further.

pub mod machine;
pub mod state;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engram_core::SpaceId;
use engram_storage::requests::Answer;
use engram_storage::{Command, Op};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use tokio::sync::watch;

pub use machine::{MetaStateMachine, CLUSTER_STATE_FILE, SNAPSHOT_EVERY};
pub use state::{
    raft_id, MetaAnswer, MetaCommand, MetaState, NodeRecord, NodeState, SpaceRecord, META_VERSION,
};

use crate::codec::{Message, ProposeOutcome};
use crate::network::{Contact, NetworkFactory};
use crate::types::{NodeAddr, Request, TypeConfig};
use crate::ReplicaNode;

/// The metadata group's raft.
pub type MetaRaft = Raft<TypeConfig, MetaStateMachine>;

/// The most voters of the metadata group.
pub const MAX_META_VOTERS: usize = 5;

/// The metadata group on one node.
pub struct MetaGroup {
    pub raft: MetaRaft,
    /// The metadata as this node has applied it, after every applied batch.
    pub view: watch::Receiver<Arc<MetaState>>,
}

/// The metadata group's settings: openraft's own heartbeats (one group: cheap), elections
/// within 1 to 2 s, a snapshot every [`SNAPSHOT_EVERY`] entries.
pub fn meta_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "engram-meta".into(),
        heartbeat_interval: 200,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
}

/// A metadata proposal that could not be made: no leader known, or the leader did not answer.
/// The caller may try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster's metadata is unavailable: {0}")]
pub struct MetaUnavailable(pub String);

/// The voters the metadata group aims for with `nodes` live nodes: the largest odd number up to
/// `nodes`, at most [`MAX_META_VOTERS`].
pub fn target_voters(nodes: usize) -> usize {
    let n = nodes.clamp(1, MAX_META_VOTERS);
    if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

fn meta_command(cmd: &MetaCommand) -> Command {
    Command {
        op: Op::Meta(cmd.encode()),
        request: None,
    }
}

/// A proposal's outcome as a metadata answer.
fn answer_of(outcome: ProposeOutcome) -> Result<MetaAnswer, MetaUnavailable> {
    match outcome {
        ProposeOutcome::Applied(r) => match r.answer {
            Some(Answer::Meta(bytes)) => {
                MetaAnswer::decode(&bytes).map_err(|e| MetaUnavailable(e.to_string()))
            }
            other => Err(MetaUnavailable(format!(
                "an answer of another kind: {other:?}"
            ))),
        },
        ProposeOutcome::NotLeader(l) => Err(MetaUnavailable(match l {
            Some(l) => format!("node {l} leads the metadata group now"),
            None => "the metadata group has no leader (an election)".into(),
        })),
        ProposeOutcome::Failed(why) => Err(MetaUnavailable(why)),
    }
}

impl ReplicaNode {
    /// Starts this node's replica of the metadata group (once; its state is on disk).
    pub async fn open_meta(&self, config: openraft::Config) -> io::Result<&MetaGroup> {
        if let Some(m) = self.meta.get() {
            return Ok(m);
        }
        let group = SpaceId::metadata_group();
        let log = self.log.group(&group);
        let (sm, view) =
            MetaStateMachine::open(self.store.disk().clone(), self.store.root(), log.purged())?;
        let network = NetworkFactory {
            transport: self.transport.clone(),
            group,
            creation: 0,
            disk: self.store.disk().clone(),
            contact: Arc::new(Contact::default()),
        };
        let config = config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let raft = Raft::new(self.id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = self.meta.set(MetaGroup { raft, view });
        Ok(self.meta.get().expect("just set"))
    }

    /// The metadata group, once [`ReplicaNode::open_meta`] started it.
    pub fn meta(&self) -> Option<&MetaGroup> {
        self.meta.get()
    }

    fn meta_group(&self) -> Result<&MetaGroup, MetaUnavailable> {
        self.meta
            .get()
            .ok_or_else(|| MetaUnavailable("this node is not part of a cluster".into()))
    }

    /// Makes this node the metadata group's only voter, if the group has never been
    /// initialised (the first node of a new cluster).
    pub async fn bootstrap_meta(&self, me: NodeAddr) -> io::Result<()> {
        let m = self.meta_group().map_err(io::Error::other)?;
        if m.raft.is_initialized().await.map_err(io::Error::other)? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id, me)]);
        match m.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Proposes `cmd` to the metadata group: on this node if it leads the group, else forwarded
    /// once to the leader.
    pub async fn propose_meta(&self, cmd: &MetaCommand) -> Result<MetaAnswer, MetaUnavailable> {
        let m = self.meta_group()?;
        let leader = m.raft.current_leader().await;
        match leader {
            Some(l) if l == self.id => answer_of(self.propose_meta_here(meta_command(cmd)).await),
            Some(l) => {
                let msg = Message::Propose(meta_command(cmd)).encode(&SpaceId::metadata_group());
                let ttl = Duration::from_millis(m.raft.config().election_timeout_max * 2);
                let reply = tokio::time::timeout(ttl, self.transport.call(l, msg))
                    .await
                    .map_err(|_| MetaUnavailable(format!("no answer from node {l} in {ttl:?}")))?
                    .map_err(|e| MetaUnavailable(format!("node {l}: {e}")))?;
                match Message::decode(&reply) {
                    Ok((g, Message::ProposeReply(o))) if g.is_metadata_group() => answer_of(o),
                    Ok((_, Message::Error(why))) => Err(MetaUnavailable(why)),
                    Ok((_, other)) => {
                        Err(MetaUnavailable(format!("an unexpected reply {other:?}")))
                    }
                    Err(e) => Err(MetaUnavailable(e.to_string())),
                }
            }
            None => Err(MetaUnavailable(
                "the metadata group has no leader (an election)".into(),
            )),
        }
    }

    /// Proposes a command on this node, which must lead the group (a forwarded proposal is
    /// never forwarded again).
    pub(crate) async fn propose_meta_here(&self, command: Command) -> ProposeOutcome {
        let m = match self.meta_group() {
            Ok(m) => m,
            Err(e) => return ProposeOutcome::Failed(e.0),
        };
        if !matches!(command.op, Op::Meta(_)) {
            return ProposeOutcome::Failed(
                "only metadata commands go to the metadata group".into(),
            );
        }
        // A leader cut off from its quorum never commits: the caller hears so in bounded time.
        let patience = Duration::from_millis(m.raft.config().election_timeout_max * 3);
        let write = m.raft.client_write(Request(Arc::new([command])));
        let Ok(written) = tokio::time::timeout(patience, write).await else {
            return ProposeOutcome::Failed(format!(
                "the metadata change was not committed within {patience:?} (no quorum of the metadata group)"
            ));
        };
        match written {
            Ok(r) => match r.data.into_iter().next() {
                Some(r) => ProposeOutcome::Applied(r),
                None => ProposeOutcome::Failed("the entry had no answer".into()),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                ProposeOutcome::NotLeader(f.leader_id)
            }
            Err(e) => ProposeOutcome::Failed(e.to_string()),
        }
    }

    /// The metadata as this node has applied it (empty before it joined).
    pub fn meta_state(&self) -> Arc<MetaState> {
        match self.meta.get() {
            Some(m) => m.view.borrow().clone(),
            None => Arc::new(MetaState::default()),
        }
    }

    /// On the metadata group's leader: makes every node the metadata records (and has not
    /// removed) a member of the group, as a learner, and promotes caught-up learners that are
    /// live while the group has fewer voters than [`target_voters`]. One step at a time; the
    /// caller repeats it (a new leader finishes what an old one began). Returns whether it
    /// changed the membership.
    pub async fn reconcile_meta(&self) -> io::Result<bool> {
        let Ok(m) = self.meta_group() else {
            return Ok(false);
        };
        let (voters, learners, matched) = {
            use openraft::async_runtime::watch::WatchReceiver;
            let metrics = m.raft.metrics();
            let mt = metrics.borrow_watched();
            if mt.state != ServerState::Leader {
                return Ok(false);
            }
            let mem = mt.membership_config.membership();
            let voters: BTreeSet<u64> = mem.voter_ids().collect();
            let learners: BTreeSet<u64> = mem.learner_ids().collect();
            let last = mt.last_log_index.unwrap_or(0);
            let matched: BTreeSet<u64> = mt
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .filter(|(_, m)| m.is_some_and(|m| m.index + 16 >= last))
                        .map(|(id, _)| *id)
                        .collect()
                })
                .unwrap_or_default();
            (voters, learners, matched)
        };
        let state = m.view.borrow().clone();
        let err = |e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>| {
            io::Error::other(e.to_string())
        };
        // Nodes to add as learners.
        for (id, n) in &state.nodes {
            if n.state == NodeState::Removed || voters.contains(id) || learners.contains(id) {
                continue;
            }
            let addr = NodeAddr {
                name: n.name.clone(),
                address: n.cluster.clone(),
            };
            m.raft.add_learner(*id, addr, false).await.map_err(err)?;
            return Ok(true);
        }
        let live = state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Live)
            .count();
        if voters.len() < target_voters(live) {
            let ready = learners.iter().find(|id| {
                matched.contains(id)
                    && state
                        .nodes
                        .get(id)
                        .is_some_and(|n| n.state == NodeState::Live)
            });
            if let Some(id) = ready {
                m.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true)
                    .await
                    .map_err(err)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A node's slot for its metadata group (empty on a node outside any cluster).
pub(crate) type MetaCell = OnceLock<MetaGroup>;
