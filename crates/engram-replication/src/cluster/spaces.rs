//! A cluster's spaces: created in the catalog, then in their group; proposals sent to a
//! space's group from any node (to the leader, following its hint once), and dropped.

use std::time::Duration;

use engram_core::SpaceId;
use engram_storage::{Command, Op};

use super::ClusterNode;
use crate::codec::{Message, ProposeOutcome};
use crate::meta::{MetaAnswer, MetaCommand, SpaceRecord};
use crate::network::Transport;

/// Why a space operation of the cluster did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// The metadata or the space's group cannot act now (no leader, a replica unreachable):
    /// try again.
    #[error("{0}")]
    Unavailable(String),
    /// Refused by the metadata (it says why).
    #[error("{0}")]
    Refused(String),
    /// No such space in the catalog.
    #[error("memory space {0:?} does not exist in this cluster")]
    NotFound(String),
}

/// How long a space operation keeps trying before it answers `Unavailable`.
pub const PATIENCE: Duration = Duration::from_secs(10);

impl ClusterNode {
    /// Sends `command` to the leader of `space`'s group from this node: proposed here when
    /// this node leads it, else sent to the replica named by the latest leader hint (first
    /// the primary), following each "not the leader" answer's hint, for at most `patience`.
    /// Each attempt is one hop.
    pub async fn propose_routed(
        &self,
        space: &SpaceId,
        rec: &SpaceRecord,
        command: Command,
        patience: Duration,
    ) -> ProposeOutcome {
        let deadline = tokio::time::Instant::now() + patience;
        let mut target = self.leader_hint(space, rec).await;
        let mut last = ProposeOutcome::NotLeader(None);
        let mut tried = 0usize;
        while tokio::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let outcome = if target == self.id() {
                // A leader without a quorum never commits: bounded like a remote call.
                let propose = self.node.propose_for(space, rec.creation, command.clone());
                match tokio::time::timeout(left, propose).await {
                    Ok(o) => o,
                    Err(_) => ProposeOutcome::Failed(format!(
                        "not committed within {patience:?} (no quorum of the space's replicas)"
                    )),
                }
            } else {
                let msg = Message::Propose(command.clone()).encode_for(space, rec.creation);
                match tokio::time::timeout(left, self.transport.call(target, msg)).await {
                    Ok(Ok(reply)) => match Message::decode(&reply) {
                        Ok((_, Message::ProposeReply(o))) => o,
                        Ok((_, Message::Error(why))) => ProposeOutcome::Failed(why),
                        _ => ProposeOutcome::Failed("an unexpected reply".into()),
                    },
                    Ok(Err(e)) => ProposeOutcome::Failed(format!("node {target}: {e}")),
                    Err(_) => ProposeOutcome::Failed(format!("no answer from node {target}")),
                }
            };
            match outcome {
                ProposeOutcome::Applied(_) => {
                    self.leaders.lock().insert(space.clone(), target);
                    return outcome;
                }
                ProposeOutcome::NotLeader(Some(l)) if l != target => target = l,
                other => {
                    // No leader known (an election), or the replica did not answer: the next
                    // replica, after a pause.
                    last = other;
                    tried += 1;
                    target = rec.replicas[tried % rec.replicas.len()];
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        last
    }

    /// The node this node believes leads `space`'s group: its own group's view when it holds
    /// a replica, else the last leader a proposal or forward found, else the primary.
    pub async fn leader_hint(&self, space: &SpaceId, rec: &SpaceRecord) -> u64 {
        if rec.replicas.contains(&self.id()) {
            if let Ok(g) = self.node.group(space).await {
                if let Some(l) = g.current_leader().await {
                    return l;
                }
            }
        }
        if let Some(l) = self.leaders.lock().get(space) {
            if rec.replicas.contains(l) {
                return *l;
            }
        }
        rec.replicas[0]
    }

    /// Notes that `leader` leads `space`'s group (learned from a forward's answer).
    pub fn learn_leader(&self, space: &SpaceId, leader: u64) {
        self.leaders.lock().insert(space.clone(), leader);
    }

    /// Creates `space` in the catalog (placed by placement now) and in its group, and returns
    /// once the group has applied the creation. `nonce` names this request: the space was
    /// created by it when the record carries it (a retry with the same nonce is the same
    /// creation). Returns the record and whether this request created it.
    pub async fn create_space(
        &self,
        space: &SpaceId,
        dimension: u32,
        embedder: &str,
        created_at_us: i64,
        nonce: u64,
    ) -> Result<(SpaceRecord, bool), SpaceError> {
        let cmd = MetaCommand::CreateSpace {
            id: space.clone(),
            dimension,
            embedder: embedder.to_string(),
            created_at_us,
            nonce,
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let rec = loop {
            match self.node.propose_meta(&cmd).await {
                Ok(MetaAnswer::Space(rec)) => break rec,
                Ok(MetaAnswer::Refused(why)) => return Err(SpaceError::Refused(why)),
                Ok(other) => {
                    return Err(SpaceError::Unavailable(format!(
                        "the metadata answered {other:?}"
                    )))
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(SpaceError::Unavailable(e.to_string()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let created = rec.nonce == nonce;
        // The group's own creation, keyed by the record's nonce: whoever sends it (the
        // creator, or a retry) sends the same request, applied once.
        let create = Command {
            op: Op::SpaceCreate {
                dimension: rec.dimension,
                created_at_us: rec.created_at_us,
                embedder: rec.embedder.clone(),
            },
            request: Some((
                format!("space-create-{:016x}", rec.nonce),
                rec.created_at_us,
            )),
        };
        // The catalog entry must reach the replicas (they initialise the group) first.
        match self.propose_routed(space, &rec, create, PATIENCE).await {
            ProposeOutcome::Applied(_) => {
                // This node routes by its own copy of the catalog: wait for the space in it.
                while !self.state().spaces.contains_key(space) {
                    if tokio::time::Instant::now() >= deadline + PATIENCE {
                        return Err(SpaceError::Unavailable(format!(
                            "memory space \"{space}\" was created, but this node has not seen it yet; retry"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok((rec, created))
            }
            ProposeOutcome::NotLeader(_) => Err(SpaceError::Unavailable(format!(
                "memory space \"{space}\" is in the catalog, but its group has no leader yet; retry"
            ))),
            ProposeOutcome::Failed(why) => Err(SpaceError::Unavailable(format!(
                "memory space \"{space}\" is in the catalog, but its group did not take its creation: {why}"
            ))),
        }
    }

    /// Drops `space`: its group drops the space's data on every replica, then the catalog
    /// forgets it.
    pub async fn drop_space(
        &self,
        space: &SpaceId,
        key: Option<(String, i64)>,
    ) -> Result<(), SpaceError> {
        let state = self.state();
        let Some(rec) = state.spaces.get(space) else {
            return Err(SpaceError::NotFound(space.to_string()));
        };
        let drop = Command {
            op: Op::SpaceDrop,
            request: key,
        };
        match self.propose_routed(space, rec, drop, PATIENCE).await {
            ProposeOutcome::Applied(_) => {}
            ProposeOutcome::NotLeader(_) => {
                return Err(SpaceError::Unavailable(format!(
                    "memory space \"{space}\"'s group has no leader now; retry"
                )))
            }
            ProposeOutcome::Failed(why) => return Err(SpaceError::Unavailable(why)),
        }
        // The creation this drop found: one made since under the name stays.
        let cmd = MetaCommand::DropSpace {
            id: space.clone(),
            nonce: Some(rec.nonce),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self.node.propose_meta(&cmd).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(SpaceError::Unavailable(e.to_string()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
