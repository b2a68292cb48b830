//! openraft's network traits over a [`Transport`]: each RPC is one request frame and one reply
//! frame in the message codec ([`crate::codec`]). The transport is what carries frames: in
//! process (tests), over the simulation's network (turmoil), over the cluster port (the
//! cluster issue).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use engram_storage::Disk;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::RaftNetworkV2;

use crate::codec::{Message, SnapshotTransfer};
use crate::state_machine::{Snapshot, SnapshotFiles};
use crate::types::{NodeAddr, TypeConfig, Vote};

/// A boxed, sendable future.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Carries request frames to other nodes and their replies back.
pub trait Transport: Send + Sync + 'static {
    /// Sends one request (a frame body, see [`crate::codec`]) to node `to` and returns its
    /// reply's body. An error means no reply came: the request may or may not have arrived.
    fn call(&self, to: u64, request: Vec<u8>) -> BoxFut<io::Result<Vec<u8>>>;
}

/// Makes a group's connections to its peers.
pub struct NetworkFactory {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) group: SpaceId,
    pub(crate) disk: Arc<dyn Disk>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, _node: &NodeAddr) -> Peer {
        Peer {
            transport: self.transport.clone(),
            group: self.group.clone(),
            target,
            disk: self.disk.clone(),
        }
    }
}

/// One group's connection to one peer.
pub struct Peer {
    transport: Arc<dyn Transport>,
    group: SpaceId,
    target: u64,
    disk: Arc<dyn Disk>,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::new(&io::Error::other(e.to_string()))
}

impl Peer {
    /// One request and its reply, within `ttl`. No reply (or an error the peer sent back) is
    /// "unreachable": openraft backs off and tries again.
    async fn rpc(&self, msg: Message, ttl: Duration) -> Result<Message, Unreachable<TypeConfig>> {
        let call = self.transport.call(self.target, msg.encode(&self.group));
        let bytes = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "no reply from node {} in {ttl:?}",
                    self.target
                )))
            }
            Ok(Err(e)) => return Err(unreachable(e)),
            Ok(Ok(b)) => b,
        };
        match Message::decode(&bytes) {
            Ok((g, _)) if g != self.group => Err(unreachable(format!(
                "node {} answered for group {g}",
                self.target
            ))),
            Ok((_, Message::Error(why))) => {
                Err(unreachable(format!("node {}: {why}", self.target)))
            }
            Ok((_, m)) => Ok(m),
            Err(e) => Err(unreachable(e)),
        }
    }
}

fn unexpected(m: &Message) -> NetworkError<TypeConfig> {
    NetworkError::new(&io::Error::other(format!("unexpected reply {m:?}")))
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFiles;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Message::Append(rpc), option.hard_ttl()).await? {
            Message::AppendReply(r) => Ok(r),
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Message::Vote(rpc), option.hard_ttl()).await? {
            Message::VoteReply(r) => Ok(r),
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let dir = &snapshot.snapshot.dir;
        let mut files = Vec::new();
        let names = self.disk.list_dir(dir).map_err(unreachable)?;
        for name in names {
            if name == crate::state_machine::SEALED {
                continue;
            }
            let bytes = self.disk.read(&dir.join(&name)).map_err(unreachable)?;
            files.push((name, bytes));
        }
        let msg = Message::Snapshot {
            vote,
            snapshot: SnapshotTransfer {
                last_log_id: snapshot.meta.last_log_id,
                membership: snapshot.meta.last_membership.clone(),
                files,
            },
        };
        // A snapshot is larger than an append: the soft TTL is per RPC, give it more.
        match self.rpc(msg, option.hard_ttl() * 4).await? {
            Message::SnapshotReply(r) => Ok(r),
            other => Err(StreamingError::Network(unexpected(&other))),
        }
    }
}

/// Carries frames between nodes of one process: a call is the receiving node's `handle`,
/// run in the caller's task. Nodes can be marked down (their calls fail, as if the network
/// lost them). For tests and benchmarks.
#[derive(Default)]
pub struct LocalTransport {
    nodes: parking_lot::RwLock<std::collections::HashMap<u64, std::sync::Weak<crate::ReplicaNode>>>,
    down: parking_lot::RwLock<std::collections::HashSet<u64>>,
}

impl LocalTransport {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes `node` reachable under its id (replacing a node of that id).
    pub fn register(&self, node: &Arc<crate::ReplicaNode>) {
        self.nodes.write().insert(node.id(), Arc::downgrade(node));
    }

    /// Marks `id` unreachable (`true`) or reachable again.
    pub fn set_down(&self, id: u64, down: bool) {
        if down {
            self.down.write().insert(id);
        } else {
            self.down.write().remove(&id);
        }
    }
}

impl Transport for LocalTransport {
    fn call(&self, to: u64, request: Vec<u8>) -> BoxFut<io::Result<Vec<u8>>> {
        let node = if self.down.read().contains(&to) {
            None
        } else {
            self.nodes
                .read()
                .get(&to)
                .and_then(std::sync::Weak::upgrade)
        };
        Box::pin(async move {
            match node {
                Some(n) => Ok(n.handle(&request).await),
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("node {to} is down"),
                )),
            }
        })
    }
}
