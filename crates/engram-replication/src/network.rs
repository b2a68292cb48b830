//! openraft's network traits over a [`Transport`]: each RPC is one request frame and one reply
//! frame in the message codec ([`crate::codec`]). The transport is what carries frames: in
//! process (tests), over the simulation's network (turmoil), over the cluster port (the
//! cluster issue).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use engram_core::SpaceId;
use engram_storage::Disk;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
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
    /// Which creation of the space the group is (0: not checked; `creation.rs`).
    pub(crate) creation: u64,
    pub(crate) disk: Arc<dyn Disk>,
    pub(crate) contact: Arc<Contact>,
}

/// When each peer of a group was last sent an append (entries, a commit or a heartbeat), and
/// whether the group is quiesced (`residency.rs`): the node's heartbeat driver
/// (`heartbeat.rs`) has a group send a heartbeat only when it has sent a follower nothing for
/// a heartbeat interval and is not quiesced.
#[derive(Default)]
pub(crate) struct Contact {
    sent: parking_lot::Mutex<std::collections::HashMap<u64, Instant>>,
    quiesced: std::sync::atomic::AtomicBool,
    /// The group's state machine's closing flag (`SpaceStateMachine::closer`).
    closer: crate::state_machine::Closer,
}

impl Contact {
    /// For a group whose state machine closes with `closer`.
    pub(crate) fn with_closer(closer: crate::state_machine::Closer) -> Self {
        Self {
            closer,
            ..Default::default()
        }
    }

    /// Closes the group's state machine (before its state is erased): returns once no write
    /// to the space is under way (an apply, a snapshot installed or built); none starts
    /// after.
    pub(crate) fn close(&self) {
        *self.closer.write() = true;
    }

    fn mark(&self, to: u64) {
        self.sent.lock().insert(to, Instant::now());
    }

    /// Nothing was sent to `to` at or after `since`.
    pub(crate) fn quiet_since(&self, to: u64, since: Instant) -> bool {
        self.sent.lock().get(&to).is_none_or(|t| *t < since)
    }

    pub(crate) fn quiesced(&self) -> bool {
        self.quiesced.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_quiesced(&self, q: bool) {
        self.quiesced.store(q, std::sync::atomic::Ordering::Release);
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, _node: &NodeAddr) -> Peer {
        Peer {
            transport: self.transport.clone(),
            group: self.group.clone(),
            creation: self.creation,
            target,
            disk: self.disk.clone(),
            contact: self.contact.clone(),
        }
    }
}

/// One group's connection to one peer.
#[derive(Clone)]
pub struct Peer {
    transport: Arc<dyn Transport>,
    group: SpaceId,
    creation: u64,
    target: u64,
    disk: Arc<dyn Disk>,
    contact: Arc<Contact>,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::new(&io::Error::other(e.to_string()))
}

impl Peer {
    /// One request and its reply, within `ttl`. No reply (or an error the peer sent back) is
    /// "unreachable": openraft backs off and tries again.
    async fn rpc(&self, msg: Message, ttl: Duration) -> Result<Message, Unreachable<TypeConfig>> {
        let call = self
            .transport
            .call(self.target, msg.encode_for(&self.group, self.creation));
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
        match Message::decode_for(&bytes) {
            Ok((g, c, _)) if g != self.group || c != self.creation => Err(unreachable(format!(
                "node {} answered for group {g}, creation {c}",
                self.target
            ))),
            Ok((_, _, Message::Error(why))) => {
                Err(unreachable(format!("node {}: {why}", self.target)))
            }
            Ok((_, _, m)) => Ok(m),
            Err(e) => Err(unreachable(e)),
        }
    }

    /// One append request (marking the target as sent to, for the heartbeat driver) and its
    /// reply.
    async fn append(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.contact.mark(self.target);
        let sent = std::time::Instant::now();
        let entries = !req.entries.is_empty();
        match self.rpc(Message::Append(req), ttl).await? {
            Message::AppendReply(r) => {
                if entries {
                    // A round trip of entries to a follower: its fsync and the network.
                    metrics::histogram!("engram_raft_append_rpc_seconds")
                        .record(sent.elapsed().as_secs_f64());
                }
                Ok(r)
            }
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }
}

/// AppendEntries requests a peer's replication stream has in flight at once. The default
/// stream waits for each reply before it sends the next request, so an entry proposed while
/// a follower is making the previous one durable waits a whole round trip (an fsync) more.
pub const STREAM_WINDOW: usize = 8;

type AppendReply = (
    LogIdRange,
    Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>,
);
type LogIdRange = (Option<crate::types::LogId>, Option<crate::types::LogId>);
type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// What the replication stream yields for one reply, and whether the stream goes on: as
/// openraft's sequential stream does, it ends at an error, a conflict, a higher vote or a
/// partial success short of the request's end.
fn stream_result((range, reply): AppendReply) -> (StreamItem, bool) {
    let (prev, last) = range;
    match reply {
        Ok(resp) => {
            let whole = match &resp {
                AppendEntriesResponse::PartialSuccess(upto) => *upto == last,
                _ => true,
            };
            let r = resp.into_stream_result(prev, last);
            let go_on = r.is_ok() && whole;
            (Ok(r), go_on)
        }
        Err(e) => (Err(e), false),
    }
}

struct Pipeline<S> {
    peer: Peer,
    input: S,
    input_done: bool,
    /// A reply has been yielded (only the first reply's conflict is the follower's log).
    replied: bool,
    ttl: Duration,
    inflight: futures_util::stream::FuturesOrdered<BoxFut<AppendReply>>,
}

impl<S> Pipeline<S>
where
    S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin + Send + 'static,
{
    /// Sends the input's next request, or notes that the input has ended.
    fn take(&mut self, req: Option<AppendEntriesRequest<TypeConfig>>) {
        let Some(req) = req else {
            self.input_done = true;
            return;
        };
        let prev = req.prev_log_id;
        let last = req.entries.last().map(|e| e.log_id).or(prev);
        let (peer, ttl) = (self.peer.clone(), self.ttl);
        self.inflight.push_back(Box::pin(async move {
            ((prev, last), peer.append(req, ttl).await)
        }));
    }

    /// The next reply in order, sending requests meanwhile while the window has room.
    async fn next_reply(&mut self) -> Option<AppendReply> {
        use futures_util::StreamExt;
        loop {
            if self.inflight.is_empty() {
                if self.input_done {
                    return None;
                }
                let req = self.input.next().await;
                self.take(req);
                continue;
            }
            if self.input_done || self.inflight.len() >= STREAM_WINDOW {
                return self.inflight.next().await;
            }
            tokio::select! {
                biased;
                reply = self.inflight.next() => return reply,
                req = self.input.next() => self.take(req),
            }
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
        self.append(rpc, option.hard_ttl()).await
    }

    /// Pipelined: up to [`STREAM_WINDOW`] requests in flight, replies yielded in order. The
    /// receiver handles appends in the order they arrive; one that overtakes another finds a
    /// gap and answers a conflict, which ends the stream (see below).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<openraft_rt::BoxStream<'s, StreamItem>, RPCError<TypeConfig>>,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        let pipeline = Pipeline {
            peer: self.clone(),
            input,
            input_done: false,
            replied: false,
            ttl: option.hard_ttl(),
            inflight: futures_util::stream::FuturesOrdered::new(),
        };
        let stream = futures_util::stream::unfold(Some(pipeline), |state| async move {
            let mut p = state?;
            let reply = p.next_reply().await?;
            let first = !std::mem::replace(&mut p.replied, true);
            if !first && matches!(reply.1, Ok(AppendEntriesResponse::Conflict)) {
                // A request that overtook an earlier one on the way (the transport does not
                // promise order) finds the follower short of its start. Not a divergence:
                // openraft would take it for a follower whose log went backwards. The stream
                // ends quietly and the next one starts from what the follower acknowledged;
                // a real conflict is then the reply to that stream's first request.
                return None;
            }
            let (item, go_on) = stream_result(reply);
            Some((item, go_on.then_some(p)))
        });
        let stream: openraft_rt::BoxStream<'s, StreamItem> = Box::pin(stream);
        Box::pin(async move { Ok(stream) })
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
