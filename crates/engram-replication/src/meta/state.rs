//! The cluster's metadata as its group applies it: the nodes, the epoch, placement and the
//! space catalog. Pure: [`MetaState::apply`] is a deterministic function of the state and a
//! [`MetaCommand`], so every node that applies the same log holds the same metadata and
//! computes the same placement (with `engram-cluster`'s ring).
//!
//! Commands and the state (in a snapshot) travel in a versioned binary encoding
//! ([`MetaCommand::encode`], [`MetaState::encode`]); decoding never panics and refuses unknown
//! versions and kinds, trailing bytes and counts past their bounds (fuzzed with the message
//! codec: `fuzz/fuzz_targets/raft_codec.rs`).

use std::collections::BTreeMap;
use std::fmt;

use engram_cluster::{
    Change, Departure, Epoch, NodeId, NodeInfo, PlacementConfig, PlacementTable, Retired,
    SpaceCatalog, TokenStrategy,
};
use engram_core::SpaceId;
use engram_storage::codec::{put_i64, put_str16, put_u32, put_u64, Reader};

use crate::codec::CodecError;

/// The version of the encodings this build writes and reads.
pub const META_VERSION: u8 = 1;
/// The most nodes a cluster records.
pub const MAX_NODES: usize = 1024;
/// The most spaces the catalog holds.
pub const MAX_SPACES: usize = 10_000_000;
/// The longest address (an HTTP URL or a cluster address) and node name recorded.
pub const MAX_ADDRESS: usize = 256;

/// A node's raft id: a hash of its name (`--node-id`), never 0. Every node computes every
/// other's from the name alone; two names with one id (about one chance in 10^19 for a
/// cluster of ten) are refused at join as a name in use.
pub fn raft_id(name: &str) -> u64 {
    engram_cluster::hash::placement_hash(name.as_bytes()).max(1)
}

/// Where a node is in its life (`GET /api/v1/cluster/nodes`, `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeState {
    Joining,
    Live,
    Down,
    Leaving,
    Removed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Live => "live",
            NodeState::Down => "down",
            NodeState::Leaving => "leaving",
            NodeState::Removed => "removed",
        }
    }

    fn code(self) -> u8 {
        match self {
            NodeState::Joining => 1,
            NodeState::Live => 2,
            NodeState::Down => 3,
            NodeState::Leaving => 4,
            NodeState::Removed => 5,
        }
    }

    fn of(code: u8) -> Result<Self, CodecError> {
        Ok(match code {
            1 => NodeState::Joining,
            2 => NodeState::Live,
            3 => NodeState::Down,
            4 => NodeState::Leaving,
            5 => NodeState::Removed,
            other => return bad(format!("node state {other}")),
        })
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its name (`--node-id`); its raft id is [`raft_id`] of it.
    pub name: String,
    /// Its HTTP API's URL (`http://host:port`).
    pub http: String,
    /// Its cluster address (`--cluster-addr`, `host:port`).
    pub cluster: String,
    pub rack: String,
    pub capacity: u32,
    pub state: NodeState,
    /// Drawn at random when the node's data directory was first used: the same name from
    /// another directory (a second process) is refused, a restart from the same one rejoins.
    pub incarnation: u64,
}

impl NodeRecord {
    pub fn id(&self) -> u64 {
        raft_id(&self.name)
    }
}

/// A space in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceRecord {
    /// Its replica set, primary first (raft ids): its group's voters.
    pub replicas: Vec<u64>,
    pub dimension: u32,
    /// Its text embedder's name (empty: the built-in hashing embedder).
    pub embedder: String,
    pub created_at_us: i64,
    /// Drawn by the node that asked for the space: it tells that node whether its command
    /// created the space or found it.
    pub nonce: u64,
}

/// A change to the metadata: one entry of the metadata group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaCommand {
    /// The cluster's first command (from the node that bootstraps it): placement settings.
    Init { copies: u32, vnodes: u32 },
    /// A node joins, or rejoins as itself (same incarnation: addresses and rack updated).
    Join(NodeRecord),
    /// A node's state changes (down after silence, live again).
    SetState { id: u64, state: NodeState },
    /// A space is created on the replica set placement gives it now.
    CreateSpace {
        id: SpaceId,
        dimension: u32,
        embedder: String,
        created_at_us: i64,
        nonce: u64,
    },
    /// `nonce`: only the creation with that nonce (not one made since under the name).
    DropSpace { id: SpaceId, nonce: Option<u64> },
}

/// What applying a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaAnswer {
    /// Applied; the epoch after it.
    Done { epoch: u64 },
    /// Refused, and why (the state is unchanged).
    Refused(String),
    /// The space as the catalog holds it after the command.
    Space(SpaceRecord),
    /// No such space.
    NoSpace,
}

/// The cluster's metadata.
#[derive(Debug, Clone)]
pub struct MetaState {
    /// Increases with every committed change of membership or placement.
    pub epoch: u64,
    /// Placement of new spaces (members: every node that joined and was not removed).
    pub placement: PlacementTable,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub spaces: BTreeMap<SpaceId, SpaceRecord>,
}

/// Equal metadata: the same epochs, nodes, spaces and placement (members, tokens, settings
/// and the nodes it remembers).
impl PartialEq for MetaState {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.nodes == other.nodes
            && self.spaces == other.spaces
            && self.placement.epoch() == other.placement.epoch()
            && self.placement.same_placement(&other.placement)
            && self.placement.retired() == other.placement.retired()
    }
}

fn placement(copies: u32, vnodes: u32) -> Result<PlacementTable, String> {
    PlacementTable::new(PlacementConfig {
        vnodes_per_node: vnodes,
        copies: copies as usize,
        rack_aware: true,
        strategy: TokenStrategy::Balanced,
    })
    .map_err(|e| e.to_string())
}

impl Default for MetaState {
    fn default() -> Self {
        Self {
            epoch: 0,
            placement: placement(3, 150).expect("the default placement is valid"),
            nodes: BTreeMap::new(),
            spaces: BTreeMap::new(),
        }
    }
}

impl MetaState {
    /// Whether the cluster was initialised ([`MetaCommand::Init`] applied).
    pub fn initialized(&self) -> bool {
        self.epoch > 0
    }

    /// The node named `name`.
    pub fn node_named(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(&raft_id(name)).filter(|n| n.name == name)
    }

    /// Applies `cmd`: the state after it and the answer. Deterministic.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaAnswer {
        match self.try_apply(cmd) {
            Ok(a) => a,
            Err(why) => MetaAnswer::Refused(why),
        }
    }

    fn try_apply(&mut self, cmd: &MetaCommand) -> Result<MetaAnswer, String> {
        match cmd {
            MetaCommand::Init { copies, vnodes } => {
                if self.initialized() {
                    return Err("the cluster is initialised already".into());
                }
                self.placement = placement(*copies, *vnodes)?;
                self.epoch = 1;
            }
            MetaCommand::Join(n) => {
                if !self.initialized() {
                    return Err("the cluster is not initialised".into());
                }
                let id = n.id();
                match self.nodes.get(&id) {
                    Some(old) if old.name != n.name => {
                        return Err(format!(
                            "node id {:?} hashes like {:?}, a member: choose another --node-id",
                            n.name, old.name
                        ))
                    }
                    Some(old)
                        if old.incarnation != n.incarnation && old.state != NodeState::Removed =>
                    {
                        return Err(format!(
                            "node id {:?} is already in use by another node (started from \
                             another data directory); a node rejoins only from its own data",
                            n.name
                        ))
                    }
                    Some(old) if *old == *n => return Ok(MetaAnswer::Done { epoch: self.epoch }),
                    _ => {}
                }
                if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&id) {
                    return Err(format!("a cluster holds at most {MAX_NODES} nodes"));
                }
                let info = NodeInfo::new(NodeId(id))
                    .with_rack(n.rack.clone())
                    .with_capacity(n.capacity);
                let table = &self.placement;
                let next = match table.members().get(&NodeId(id)) {
                    Some(m) if *m == info => None,
                    Some(_) => Some(table.apply(
                        &Change::SetRack(NodeId(id), n.rack.clone()),
                        &SpaceCatalog::new(),
                    )),
                    None => {
                        let catalog =
                            SpaceCatalog::from_spaces(self.spaces.keys().map(|s| s.as_str()));
                        Some(table.apply(&Change::Join(info), &catalog))
                    }
                };
                if let Some(next) = next {
                    self.placement = next.map_err(|e| e.to_string())?;
                }
                self.nodes.insert(id, n.clone());
                self.epoch += 1;
            }
            MetaCommand::SetState { id, state } => {
                let Some(n) = self.nodes.get_mut(id) else {
                    return Err(format!("no node with raft id {id}"));
                };
                if n.state == *state {
                    return Ok(MetaAnswer::Done { epoch: self.epoch });
                }
                n.state = *state;
                self.epoch += 1;
            }
            MetaCommand::CreateSpace {
                id,
                dimension,
                embedder,
                created_at_us,
                nonce,
            } => {
                if let Some(s) = self.spaces.get(id) {
                    return Ok(MetaAnswer::Space(s.clone()));
                }
                if self.spaces.len() >= MAX_SPACES {
                    return Err(format!("a cluster holds at most {MAX_SPACES} spaces"));
                }
                let set = self.placement.replica_set(id.as_str());
                if set.is_empty() {
                    return Err("the cluster has no node to place a space on".into());
                }
                let record = SpaceRecord {
                    replicas: set.nodes().iter().map(|n| n.0).collect(),
                    dimension: *dimension,
                    embedder: embedder.clone(),
                    created_at_us: *created_at_us,
                    nonce: *nonce,
                };
                self.spaces.insert(id.clone(), record.clone());
                return Ok(MetaAnswer::Space(record));
            }
            MetaCommand::DropSpace { id, nonce } => {
                let named = self.spaces.get(id).map(|r| r.nonce);
                return Ok(match named {
                    Some(n) if nonce.is_none_or(|want| want == n) => {
                        self.spaces.remove(id);
                        MetaAnswer::Done { epoch: self.epoch }
                    }
                    _ => MetaAnswer::NoSpace,
                });
            }
        }
        Ok(MetaAnswer::Done { epoch: self.epoch })
    }
}

fn bad<T>(what: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError(what.into()))
}

fn short_str<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a str, CodecError> {
    let s = r.str16(what)?;
    if s.len() > MAX_ADDRESS {
        return bad(format!(
            "{what} of {} bytes (at most {MAX_ADDRESS})",
            s.len()
        ));
    }
    Ok(s)
}

fn space_id(r: &mut Reader<'_>) -> Result<SpaceId, CodecError> {
    SpaceId::new(r.str16("space id")?).map_err(|e| CodecError(e.to_string()))
}

fn put_node(out: &mut Vec<u8>, n: &NodeRecord) {
    put_str16(out, &n.name);
    put_str16(out, &n.http);
    put_str16(out, &n.cluster);
    put_str16(out, &n.rack);
    put_u32(out, n.capacity);
    out.push(n.state.code());
    put_u64(out, n.incarnation);
}

fn node(r: &mut Reader<'_>) -> Result<NodeRecord, CodecError> {
    let name = short_str(r, "node name")?;
    if !SpaceId::is_valid(name) {
        return bad(format!(
            "node name {name:?} (1-64 characters of a-z 0-9 _ -)"
        ));
    }
    Ok(NodeRecord {
        name: name.to_string(),
        http: short_str(r, "node URL")?.to_string(),
        cluster: short_str(r, "cluster address")?.to_string(),
        rack: short_str(r, "rack")?.to_string(),
        capacity: r.u32("capacity")?,
        state: NodeState::of(r.u8("node state")?)?,
        incarnation: r.u64("incarnation")?,
    })
}

fn put_space(out: &mut Vec<u8>, s: &SpaceRecord) {
    out.push(s.replicas.len() as u8);
    for id in &s.replicas {
        put_u64(out, *id);
    }
    put_u32(out, s.dimension);
    put_str16(out, &s.embedder);
    put_i64(out, s.created_at_us);
    put_u64(out, s.nonce);
}

fn space(r: &mut Reader<'_>) -> Result<SpaceRecord, CodecError> {
    let n = r.u8("replica count")? as usize;
    if n == 0 || n > engram_cluster::limits::MAX_COPIES {
        return bad(format!("a replica set of {n} nodes"));
    }
    let replicas = (0..n)
        .map(|_| r.u64("replica"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpaceRecord {
        replicas,
        dimension: r.u32("dimension")?,
        embedder: short_str(r, "embedder")?.to_string(),
        created_at_us: r.i64("created at")?,
        nonce: r.u64("nonce")?,
    })
}

mod kind {
    pub const INIT: u8 = 1;
    pub const JOIN: u8 = 2;
    pub const SET_STATE: u8 = 3;
    pub const CREATE_SPACE: u8 = 4;
    pub const DROP_SPACE: u8 = 5;
    pub const DROP_CREATION: u8 = 6;
    pub const DONE: u8 = 1;
    pub const REFUSED: u8 = 2;
    pub const SPACE: u8 = 3;
    pub const NO_SPACE: u8 = 4;
}

impl MetaCommand {
    /// `u8` version, `u8` kind, then the kind's fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        match self {
            MetaCommand::Init { copies, vnodes } => {
                out.push(kind::INIT);
                put_u32(&mut out, *copies);
                put_u32(&mut out, *vnodes);
            }
            MetaCommand::Join(n) => {
                out.push(kind::JOIN);
                put_node(&mut out, n);
            }
            MetaCommand::SetState { id, state } => {
                out.push(kind::SET_STATE);
                put_u64(&mut out, *id);
                out.push(state.code());
            }
            MetaCommand::CreateSpace {
                id,
                dimension,
                embedder,
                created_at_us,
                nonce,
            } => {
                out.push(kind::CREATE_SPACE);
                put_str16(&mut out, id.as_str());
                put_u32(&mut out, *dimension);
                put_str16(&mut out, embedder);
                put_i64(&mut out, *created_at_us);
                put_u64(&mut out, *nonce);
            }
            MetaCommand::DropSpace { id, nonce } => {
                out.push(if nonce.is_some() {
                    kind::DROP_CREATION
                } else {
                    kind::DROP_SPACE
                });
                put_str16(&mut out, id.as_str());
                if let Some(n) = nonce {
                    put_u64(&mut out, *n);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaCommand, CodecError> {
        let mut r = Reader::new(bytes);
        version(&mut r)?;
        let cmd = match r.u8("metadata command")? {
            kind::INIT => MetaCommand::Init {
                copies: r.u32("copies")?,
                vnodes: r.u32("virtual nodes")?,
            },
            kind::JOIN => MetaCommand::Join(node(&mut r)?),
            kind::SET_STATE => MetaCommand::SetState {
                id: r.u64("node")?,
                state: NodeState::of(r.u8("node state")?)?,
            },
            kind::CREATE_SPACE => MetaCommand::CreateSpace {
                id: space_id(&mut r)?,
                dimension: r.u32("dimension")?,
                embedder: short_str(&mut r, "embedder")?.to_string(),
                created_at_us: r.i64("created at")?,
                nonce: r.u64("nonce")?,
            },
            kind::DROP_SPACE => MetaCommand::DropSpace {
                id: space_id(&mut r)?,
                nonce: None,
            },
            kind::DROP_CREATION => MetaCommand::DropSpace {
                id: space_id(&mut r)?,
                nonce: Some(r.u64("nonce")?),
            },
            other => return bad(format!("metadata command {other}")),
        };
        r.finish("metadata command")?;
        Ok(cmd)
    }
}

fn version(r: &mut Reader<'_>) -> Result<(), CodecError> {
    match r.u8("metadata version")? {
        META_VERSION => Ok(()),
        v => bad(format!(
            "metadata encoding version {v} (this build reads {META_VERSION})"
        )),
    }
}

impl MetaAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        match self {
            MetaAnswer::Done { epoch } => {
                out.push(kind::DONE);
                put_u64(&mut out, *epoch);
            }
            MetaAnswer::Refused(why) => {
                out.push(kind::REFUSED);
                put_str16(&mut out, why);
            }
            MetaAnswer::Space(s) => {
                out.push(kind::SPACE);
                put_space(&mut out, s);
            }
            MetaAnswer::NoSpace => out.push(kind::NO_SPACE),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaAnswer, CodecError> {
        let mut r = Reader::new(bytes);
        version(&mut r)?;
        let a = match r.u8("metadata answer")? {
            kind::DONE => MetaAnswer::Done {
                epoch: r.u64("epoch")?,
            },
            kind::REFUSED => MetaAnswer::Refused(r.str16("reason")?.to_string()),
            kind::SPACE => MetaAnswer::Space(space(&mut r)?),
            kind::NO_SPACE => MetaAnswer::NoSpace,
            other => return bad(format!("metadata answer {other}")),
        };
        r.finish("metadata answer")?;
        Ok(a)
    }
}

impl MetaState {
    /// `u8` version, `u64` epoch; placement: `u32` copies, `u32` virtual nodes, `u8` rack
    /// aware, `u64` placement epoch, members (`u32` count, each `u64` id, `str16` rack,
    /// `u32` capacity), tokens (`u32` count, each `u64` position, `u64` owner), retired
    /// (`u32` count, each a member's fields, `u8` departure, `u64` epoch, `u32` token count
    /// and the tokens); nodes (`u32` count, each a node record); spaces (`u32` count, each
    /// `str16` id and a space record).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        put_u64(&mut out, self.epoch);
        let p = &self.placement;
        let c = p.config();
        put_u32(&mut out, c.copies as u32);
        put_u32(&mut out, c.vnodes_per_node);
        out.push(u8::from(c.rack_aware));
        put_u64(&mut out, p.epoch().0);
        let put_info = |out: &mut Vec<u8>, i: &NodeInfo| {
            put_u64(out, i.id.0);
            put_str16(out, &i.rack);
            put_u32(out, i.capacity);
        };
        put_u32(&mut out, p.members().len() as u32);
        for i in p.members().values() {
            put_info(&mut out, i);
        }
        put_u32(&mut out, p.tokens().len() as u32);
        for (t, o) in p.tokens() {
            put_u64(&mut out, *t);
            put_u64(&mut out, o.0);
        }
        put_u32(&mut out, p.retired().len() as u32);
        for r in p.retired().values() {
            put_info(&mut out, &r.info);
            out.push(match r.departure {
                Departure::Left => 1,
                Departure::Failed => 2,
            });
            put_u64(&mut out, r.epoch.0);
            put_u32(&mut out, r.tokens.len() as u32);
            for t in &r.tokens {
                put_u64(&mut out, *t);
            }
        }
        put_u32(&mut out, self.nodes.len() as u32);
        for n in self.nodes.values() {
            put_node(&mut out, n);
        }
        put_u32(&mut out, self.spaces.len() as u32);
        for (id, s) in &self.spaces {
            put_str16(&mut out, id.as_str());
            put_space(&mut out, s);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaState, CodecError> {
        let mut r = Reader::new(bytes);
        version(&mut r)?;
        let epoch = r.u64("epoch")?;
        let copies = r.u32("copies")?;
        let vnodes = r.u32("virtual nodes")?;
        let rack_aware = match r.u8("rack aware")? {
            0 => false,
            1 => true,
            other => return bad(format!("rack-aware flag {other}")),
        };
        let placement_epoch = Epoch(r.u64("placement epoch")?);
        // Each counted item takes at least 8 bytes: a bound before allocating.
        let count = |r: &mut Reader<'_>, what: &str, max: usize| -> Result<usize, CodecError> {
            let n = r.u32(what)? as usize;
            if n > max || n > r.remaining() / 8 {
                return bad(format!("{n} {what}"));
            }
            Ok(n)
        };
        let info = |r: &mut Reader<'_>| -> Result<NodeInfo, CodecError> {
            Ok(NodeInfo::new(NodeId(r.u64("node")?))
                .with_rack(short_str(r, "rack")?.to_string())
                .with_capacity(r.u32("capacity")?))
        };
        let mut members = BTreeMap::new();
        for _ in 0..count(&mut r, "members", MAX_NODES)? {
            let i = info(&mut r)?;
            members.insert(i.id, i);
        }
        let mut tokens = BTreeMap::new();
        for _ in 0..count(&mut r, "tokens", engram_cluster::limits::MAX_TOKENS)? {
            tokens.insert(r.u64("token")?, NodeId(r.u64("token owner")?));
        }
        let mut retired = BTreeMap::new();
        for _ in 0..count(&mut r, "retired nodes", MAX_NODES)? {
            let info = info(&mut r)?;
            let departure = match r.u8("departure")? {
                1 => Departure::Left,
                2 => Departure::Failed,
                other => return bad(format!("departure {other}")),
            };
            let epoch = Epoch(r.u64("departure epoch")?);
            let n = count(&mut r, "retired tokens", engram_cluster::limits::MAX_TOKENS)?;
            let tokens = (0..n)
                .map(|_| r.u64("retired token"))
                .collect::<Result<Vec<_>, _>>()?;
            retired.insert(
                info.id,
                Retired {
                    info,
                    tokens,
                    departure,
                    epoch,
                },
            );
        }
        let config = PlacementConfig {
            vnodes_per_node: vnodes,
            copies: copies as usize,
            rack_aware,
            strategy: TokenStrategy::Balanced,
        };
        let placement =
            PlacementTable::from_parts(placement_epoch, config, members, tokens, retired)
                .map_err(|e| CodecError(format!("placement: {e}")))?;
        let mut nodes = BTreeMap::new();
        for _ in 0..count(&mut r, "nodes", MAX_NODES)? {
            let n = node(&mut r)?;
            if nodes.insert(n.id(), n).is_some() {
                return bad("a node twice");
            }
        }
        let mut spaces = BTreeMap::new();
        for _ in 0..count(&mut r, "spaces", MAX_SPACES)? {
            let id = space_id(&mut r)?;
            if spaces.insert(id, space(&mut r)?).is_some() {
                return bad("a space twice");
            }
        }
        r.finish("metadata state")?;
        Ok(MetaState {
            epoch,
            placement,
            nodes,
            spaces,
        })
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
