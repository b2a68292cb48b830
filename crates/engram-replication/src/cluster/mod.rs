//! A node of a cluster of real processes: its identity on disk, the cluster port, bootstrap
//! or join, and the tasks that keep the metadata group's membership, the address book and
//! the node's space groups in step with the metadata.
//!
//! - **Identity** (`node.id` in the data directory): the node's name and an incarnation drawn
//!   at random when the directory is first used as a cluster node. A restart from the same
//!   directory rejoins as itself; another directory with the same name is refused by the
//!   metadata (a second node with an id in use), and a directory of one node never starts as
//!   another.
//! - **Bootstrap or join.** A node without `--join` whose metadata group was never initialised
//!   makes itself its only voter, sets the placement settings ([`MetaCommand::Init`]) and
//!   joins. A node with `--join` asks each seed in turn (`Message::Join`); the seed proposes
//!   the join to the metadata leader, whose reconciler then adds the node as a learner; the
//!   node waits until its own metadata holds itself. A node that restarts proposes its join
//!   again in the background (its addresses may have changed).
//! - **Space groups.** Every replica of a space named by the catalog initialises the space's
//!   group with the same membership (the catalog's replica set, in order) the first time it
//!   sees it without any raft state: identical initialisations are safe (openraft elects one
//!   leader), so a space does not wait for one particular replica.
//! - **Down after silence.** The metadata leader marks a node down when it has not answered
//!   for [`ClusterOptions::down_after`], and live again when it answers.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use engram_storage::requests::Answer;
use engram_storage::{Disk, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::codec::{Message, ProposeOutcome};
use crate::meta::{
    raft_id, MetaAnswer, MetaCommand, MetaState, MetaUnavailable, NodeRecord, NodeState,
};
use crate::network::Transport;
use crate::transport::HttpTransport;
use crate::types::NodeAddr;
use crate::ReplicaNode;

mod groups;
mod spaces;
pub use spaces::{SpaceError, PATIENCE};

/// The node's identity file in its data directory.
pub const IDENTITY_FILE: &str = "node.id";
const IDENTITY_MAGIC: [u8; 8] = *b"ENGRNODE";
const IDENTITY_VERSION: u32 = 1;

/// How a cluster node starts.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--node-id`.
    pub name: String,
    /// Where the other nodes reach this one: `--cluster-advertise`, else `--cluster-addr`.
    pub cluster_addr: String,
    /// The IP this node's connections to others leave from (`--cluster-addr`'s, when it
    /// names one): on a host with several addresses, peers see the one the node is bound
    /// to. `None`: the system's choice.
    pub local_ip: Option<std::net::IpAddr>,
    /// This node's HTTP API, as clients reach it (`http://host:port`).
    pub http_url: String,
    /// `--join`: cluster addresses of members.
    pub join: Vec<String>,
    pub rack: String,
    /// `--replicas`: copies of each space (the bootstrapping node's setting is the cluster's).
    pub replicas: u32,
    /// The cluster secret (`--cluster-secret-file`).
    pub secret: Option<Vec<u8>>,
    /// `--down-after`.
    pub down_after: Duration,
    /// The timings of the space groups.
    pub space_config: openraft::Config,
    /// The timings of the metadata group.
    pub meta_config: openraft::Config,
    /// How long a join may take before the start fails.
    pub join_timeout: Duration,
    /// The `default` space's dimension and text embedder: the metadata leader creates it
    /// once the cluster has as many live nodes as a space has replicas (`None`: never).
    pub default_space: Option<(u32, String)>,
}

impl ClusterOptions {
    /// Defaults for `name` at `cluster_addr`, serving clients at `http_url`.
    pub fn new(name: &str, cluster_addr: &str, http_url: &str) -> Self {
        Self {
            name: name.into(),
            cluster_addr: cluster_addr.into(),
            local_ip: None,
            http_url: http_url.into(),
            join: Vec::new(),
            rack: engram_cluster::DEFAULT_RACK.into(),
            replicas: 3,
            secret: None,
            down_after: Duration::from_secs(30),
            space_config: space_config(),
            meta_config: crate::meta::meta_config(),
            join_timeout: Duration::from_secs(60),
            default_space: None,
        }
    }
}

/// The space groups' timings on real processes. A follower keeps its leader's lease for the
/// longest election timeout after it last heard from it and only then starts an election
/// (openraft's rule), and two followers whose leases expire together may split the vote and
/// wait another timeout: 0.5 to 1 s keeps a killed leader's replacement near 1 s and the
/// unlucky case under 3 s (`engram-bench cluster`, part failover). Heartbeats go to quiet
/// followers every 150 ms.
pub fn space_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "engram".into(),
        heartbeat_interval: 150,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // A snapshot (the space's files, linked) every 5,000 entries lets the log purge: the
        // entries are held in memory and the WAL keeps them until then.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        ..Default::default()
    }
}

/// A node as `GET /api/v1/cluster/nodes` shows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: u64,
    pub record: NodeRecord,
    /// Spaces the catalog places on it.
    pub held: u64,
    /// Space groups it leads, as it reports (`None`: it did not answer).
    pub led: Option<u64>,
    /// Space groups resident on it, as it reports.
    pub resident: Option<u64>,
}

/// A running cluster node.
pub struct ClusterNode {
    pub node: Arc<ReplicaNode>,
    pub transport: Arc<HttpTransport>,
    pub me: NodeRecord,
    pub opts: ClusterOptions,
    stop: watch::Sender<bool>,
    /// The metadata group's term this node has led since when (for `mark_down_and_up`).
    leading: parking_lot::Mutex<Option<(u64, tokio::time::Instant)>>,
    /// The leaders of space groups this node does not hold, as proposals and forwards found
    /// them (`spaces.rs`).
    leaders: parking_lot::Mutex<std::collections::HashMap<SpaceId, u64>>,
    /// Spaces whose group this node will initialise if the primary's does not reach it.
    initialising: Arc<parking_lot::Mutex<std::collections::HashSet<SpaceId>>>,
    /// Set while a task creates the `default` space (it may wait for a quorum: not in the
    /// tick loop, which must keep marking nodes down meanwhile).
    creating_default: std::sync::atomic::AtomicBool,
    /// The spaces this node held in the last catalog it handled (`retire_dropped`).
    /// With the creation of each (`creation.rs`).
    held: parking_lot::Mutex<std::collections::HashMap<SpaceId, u64>>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Reads `node.id`, or writes a new one for `name`; the incarnation. A directory of another
/// node is refused.
fn identity(disk: &dyn Disk, root: &Path, name: &str) -> io::Result<u64> {
    use engram_storage::codec::{put_str16, put_u32, put_u64, Reader};
    let path = root.join(IDENTITY_FILE);
    if disk.exists(&path) {
        let bytes = disk.read(&path)?;
        let bad = |e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        };
        let (body, crc) = bytes.split_at(bytes.len().saturating_sub(4));
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad(&"checksum mismatch"));
        }
        let mut r = Reader::new(body);
        let parse = |r: &mut Reader<'_>| -> engram_storage::Result<(String, u64)> {
            if r.take(8, "magic")? != IDENTITY_MAGIC || r.u32("version")? != IDENTITY_VERSION {
                return Err(engram_storage::StorageError::Corrupted(
                    "not a node identity".into(),
                ));
            }
            let n = r.str16("name")?.to_string();
            let inc = r.u64("incarnation")?;
            r.finish("node identity")?;
            Ok((n, inc))
        };
        let (stored, incarnation) = parse(&mut r).map_err(|e| bad(&e))?;
        if stored != name {
            return Err(invalid(format!(
                "this data directory belongs to node {stored:?}, not {name:?}: start it with --node-id {stored}, or use another directory"
            )));
        }
        return Ok(incarnation);
    }
    let incarnation = rand10::random::<u64>().max(1);
    let mut b = IDENTITY_MAGIC.to_vec();
    put_u32(&mut b, IDENTITY_VERSION);
    put_str16(&mut b, name);
    put_u64(&mut b, incarnation);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = root.join(format!("{IDENTITY_FILE}.tmp"));
    let mut f = disk.create(&tmp)?;
    f.write_all(&b)?;
    f.sync()?;
    disk.rename(&tmp, &path)?;
    disk.sync_dir(root)?;
    Ok(incarnation)
}

/// The answer in a reply to `Join` or a forwarded proposal.
fn meta_reply(bytes: &[u8]) -> Result<MetaAnswer, MetaUnavailable> {
    match Message::decode(bytes) {
        Ok((_, Message::ProposeReply(ProposeOutcome::Applied(r)))) => match r.answer {
            Some(Answer::Meta(b)) => {
                MetaAnswer::decode(&b).map_err(|e| MetaUnavailable(e.to_string()))
            }
            other => Err(MetaUnavailable(format!("an unexpected answer {other:?}"))),
        },
        Ok((_, Message::Error(why))) => Err(MetaUnavailable(why)),
        Ok((_, other)) => Err(MetaUnavailable(format!("an unexpected reply {other:?}"))),
        Err(e) => Err(MetaUnavailable(e.to_string())),
    }
}

impl ClusterNode {
    /// Starts the node over `store`, serving the cluster port on `listener`: bootstraps a new
    /// cluster or joins one (see the module documentation). Fails when a join is refused (a
    /// name in use, another secret) or does not complete within
    /// [`ClusterOptions::join_timeout`].
    pub async fn start(
        store: Arc<Store>,
        listener: TcpListener,
        opts: ClusterOptions,
    ) -> io::Result<Arc<ClusterNode>> {
        if !SpaceId::is_valid(&opts.name) {
            return Err(invalid(format!(
                "--node-id {:?}: 1-64 characters of a-z 0-9 _ -",
                opts.name
            )));
        }
        let incarnation = identity(&**store.disk(), store.root(), &opts.name)?;
        let me = NodeRecord {
            name: opts.name.clone(),
            http: opts.http_url.clone(),
            cluster: opts.cluster_addr.clone(),
            rack: opts.rack.clone(),
            capacity: engram_cluster::DEFAULT_CAPACITY,
            state: NodeState::Live,
            incarnation,
        };
        let transport = HttpTransport::with_local_ip(opts.secret.as_deref(), opts.local_ip);
        let id = raft_id(&opts.name);
        transport.set_address(id, &opts.cluster_addr);
        let node = ReplicaNode::open(id, store, transport.clone(), opts.space_config.clone())?;
        // Idle groups quiesce and at most 1,000 stay resident (`residency.rs`).
        node.start_residency();
        let meta = node.open_meta(opts.meta_config.clone()).await?;
        let initialized = meta.raft.is_initialized().await.map_err(io::Error::other)?;
        let (stop, stopped) = watch::channel(false);
        {
            let node = node.clone();
            let secret = opts.secret.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                crate::transport::serve(listener, node, secret.as_deref(), shutdown).await;
            });
        }
        let cluster = Arc::new(ClusterNode {
            node,
            transport,
            me,
            opts,
            stop,
            leading: parking_lot::Mutex::new(None),
            leaders: Default::default(),
            initialising: Default::default(),
            creating_default: Default::default(),
            held: Default::default(),
        });
        cluster.spawn_tasks(stopped);
        if initialized {
            // A restart: the group is formed; say where this node is now, in the background.
            let c = cluster.clone();
            tokio::spawn(async move {
                let cmd = MetaCommand::Join(c.me.clone());
                while !*c.stop.borrow() {
                    match c.node.propose_meta(&cmd).await {
                        Ok(MetaAnswer::Refused(why)) => {
                            tracing::error!(%why, "this node's rejoin was refused");
                            return;
                        }
                        Ok(_) => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            });
        } else if cluster.opts.join.is_empty() {
            cluster.bootstrap().await?;
        } else {
            cluster.join().await?;
        }
        Ok(cluster)
    }

    pub fn id(&self) -> u64 {
        self.node.id()
    }

    /// The metadata as this node has applied it.
    pub fn state(&self) -> Arc<MetaState> {
        self.node.meta_state()
    }

    /// Every node of the metadata with what it reports (asked over the cluster port, at
    /// most a second each; `None` for a node that did not answer) and the spaces the catalog
    /// places on it.
    pub async fn nodes_status(&self) -> Vec<NodeStatus> {
        let state = self.state();
        let asks = state.nodes.iter().map(|(id, n)| {
            let id = *id;
            let record = n.clone();
            let held = state
                .spaces
                .values()
                .filter(|s| s.replicas.contains(&id))
                .count() as u64;
            async move {
                let report = if id == self.id() {
                    Some(self.node.led_and_resident().await)
                } else {
                    let msg = Message::Status.encode(&SpaceId::metadata_group());
                    let call = self.transport.call(id, msg);
                    match tokio::time::timeout(Duration::from_secs(1), call).await {
                        Ok(Ok(reply)) => match Message::decode(&reply) {
                            Ok((_, Message::StatusReply { led, resident })) => {
                                Some((led, resident))
                            }
                            _ => None,
                        },
                        _ => None,
                    }
                };
                NodeStatus {
                    id,
                    record,
                    held,
                    led: report.map(|r| r.0),
                    resident: report.map(|r| r.1),
                }
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// The metadata group's leader as this node knows it.
    pub async fn meta_leader(&self) -> Option<u64> {
        match self.node.meta() {
            Some(m) => m.raft.current_leader().await,
            None => None,
        }
    }

    /// Makes this node's catalog current, on the metadata leader: it confirms its leadership
    /// with a quorum and has applied everything committed before this call. Elsewhere,
    /// `Err(Some(leader))` (ask that node); `Err(None)`: no leader known, or no quorum within
    /// two election timeouts.
    pub async fn catalog_barrier(&self) -> Result<(), Option<u64>> {
        use openraft::error::{LinearizableReadError, RaftError};
        let Some(m) = self.node.meta() else {
            return Err(None);
        };
        let patience = Duration::from_millis(self.opts.meta_config.election_timeout_max * 2);
        let read = m.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(patience, read).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(f.leader_id)
            }
            _ => Err(None),
        }
    }

    /// Stops the cluster port and the node's tasks and groups.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(m) = self.node.meta() {
            let _ = m.raft.shutdown().await;
        }
        self.node.shutdown().await;
    }

    /// Proposes until the metadata group answers, for at most `patience`.
    async fn propose_patiently(
        &self,
        cmd: &MetaCommand,
        patience: Duration,
    ) -> io::Result<MetaAnswer> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.node.propose_meta(cmd).await {
                Ok(a) => return Ok(a),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, e.to_string()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn bootstrap(&self) -> io::Result<()> {
        self.node
            .bootstrap_meta(NodeAddr {
                name: self.me.name.clone(),
                address: self.me.cluster.clone(),
            })
            .await?;
        let patience = self.opts.join_timeout;
        let init = MetaCommand::Init {
            copies: self.opts.replicas,
            vnodes: 150,
        };
        if let MetaAnswer::Refused(why) = self.propose_patiently(&init, patience).await? {
            if !self.state().initialized() {
                return Err(invalid(why));
            }
        }
        match self
            .propose_patiently(&MetaCommand::Join(self.me.clone()), patience)
            .await?
        {
            MetaAnswer::Refused(why) => Err(invalid(why)),
            _ => Ok(()),
        }
    }

    async fn join(&self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.opts.join_timeout;
        let msg = Message::Join(self.me.clone()).encode(&SpaceId::metadata_group());
        let mut last = String::from("no seed answered");
        'asking: loop {
            for seed in &self.opts.join {
                match self.transport.call_address(seed, msg.clone()).await {
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        return Err(invalid(format!(
                            "joining through {seed}: {e} (check --cluster-secret-file)"
                        )))
                    }
                    Err(e) => last = format!("{seed}: {e}"),
                    Ok(reply) => match meta_reply(&reply) {
                        Ok(MetaAnswer::Refused(why)) => {
                            return Err(invalid(format!("joining through {seed}: {why}")))
                        }
                        Ok(_) => break 'asking,
                        Err(e) => last = format!("{seed}: {e}"),
                    },
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("could not join the cluster: {last}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Joined: wait for the metadata (the leader adds this node as a learner).
        let me = self.id();
        while tokio::time::Instant::now() < deadline {
            let s = self.state();
            if s.nodes
                .get(&me)
                .is_some_and(|n| n.incarnation == self.me.incarnation)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the join was accepted, but the cluster's metadata never reached this node",
        ))
    }

    fn spawn_tasks(self: &Arc<Self>, stopped: watch::Receiver<bool>) {
        let weak = Arc::downgrade(self);
        let mut stop = stopped.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tick.tick() => {}
                }
                let Some(c) = weak.upgrade() else { return };
                if let Err(e) = c.node.reconcile_meta().await {
                    tracing::debug!(error = %e, "metadata membership change failed; retrying");
                }
                c.mark_down_and_up().await;
                c.spawn_default_space();
            }
        });
        let weak = Arc::downgrade(self);
        let mut stop = stopped;
        let Some(mut view) = self.node.meta().map(|m| m.view.clone()) else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let state = view.borrow_and_update().clone();
                let Some(c) = weak.upgrade() else { return };
                for (id, n) in &state.nodes {
                    c.transport.set_address(*id, &n.cluster);
                }
                c.retire_dropped(&state).await;
                // Before the starts: a replica holding a dropped creation's state erases it,
                // so the new creation's group starts empty (`creation.rs`).
                c.node.erase_stale_groups().await;
                c.start_space_groups(&state).await;
                drop(c);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    r = view.changed() => if r.is_err() { return },
                }
            }
        });
    }

    /// On the metadata leader: marks a node silent for `down_after` down, and a down node
    /// that answers again live.
    async fn mark_down_and_up(&self) {
        use openraft::async_runtime::watch::WatchReceiver;
        use openraft::Instant as _;
        let Some(m) = self.node.meta() else { return };
        let acked: BTreeMap<u64, Option<std::time::Duration>> = {
            let metrics = m.raft.metrics();
            let mt = metrics.borrow_watched();
            if mt.state != openraft::ServerState::Leader {
                *self.leading.lock() = None;
                return;
            }
            // A new leader has heard from no one yet: it judges silence only once it has led
            // for `down_after`.
            let mut leading = self.leading.lock();
            let since = match *leading {
                Some((term, since)) if term == mt.current_term => since,
                _ => {
                    *leading = Some((mt.current_term, tokio::time::Instant::now()));
                    return;
                }
            };
            if since.elapsed() < self.opts.down_after {
                return;
            }
            let Some(hb) = mt.heartbeat.as_ref() else {
                return;
            };
            hb.iter()
                .map(|(id, t)| (*id, t.map(|t| t.elapsed())))
                .collect()
        };
        let state = self.state();
        for (id, n) in &state.nodes {
            if *id == self.id() {
                continue;
            }
            let silent = acked
                .get(id)
                .is_none_or(|t| t.is_none_or(|e| e >= self.opts.down_after));
            let next = match (n.state, silent) {
                (NodeState::Live, true) => NodeState::Down,
                (NodeState::Down, false) => NodeState::Live,
                _ => continue,
            };
            tracing::warn!(node = %n.name, state = %next, "node state changes");
            let _ = self
                .node
                .propose_meta(&MetaCommand::SetState {
                    id: *id,
                    state: next,
                })
                .await;
        }
    }
}
