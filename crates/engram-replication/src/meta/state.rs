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
    Change, NodeId, NodeInfo, PlacementConfig, PlacementTable, SpaceCatalog, TokenStrategy,
};
use engram_core::SpaceId;

use crate::codec::CodecError;

/// The version of the encodings this build writes and reads.
pub const META_VERSION: u8 = 2;
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

    pub(super) fn code(self) -> u8 {
        match self {
            NodeState::Joining => 1,
            NodeState::Live => 2,
            NodeState::Down => 3,
            NodeState::Leaving => 4,
            NodeState::Removed => 5,
        }
    }

    pub(super) fn of(code: u8) -> Result<Self, CodecError> {
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
    /// The position of the command that created it ([`MetaState::applied`] then): which
    /// creation of the space this is. Creations of one name only grow: a replica whose group
    /// state names a smaller one holds a dropped space's. 0: not known (version 1 state).
    pub creation: u64,
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
    /// The position of the last command applied: its entry's log index times 1,024 plus its
    /// place in the entry (an entry holds at most 1,024). A space created at or before it
    /// and not in the catalog was dropped.
    pub applied: u64,
    /// Placement of new spaces (members: every node that joined and was not removed).
    pub placement: PlacementTable,
    pub nodes: BTreeMap<u64, NodeRecord>,
    /// A persistent map: the state machine publishes a copy of the state after every
    /// applied batch, which shares the catalog instead of copying it (a copy per creation
    /// made N creations cost O(N²)).
    pub spaces: imbl::OrdMap<SpaceId, SpaceRecord>,
}

/// Equal metadata: the same epochs, nodes, spaces and placement (members, tokens, settings
/// and the nodes it remembers).
impl PartialEq for MetaState {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.applied == other.applied
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
            applied: 0,
            placement: placement(3, 150).expect("the default placement is valid"),
            nodes: BTreeMap::new(),
            spaces: imbl::OrdMap::new(),
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

    /// Where a new space goes: the nodes placement names for it, nodes marked down passed
    /// over while live ones remain (a new space starts with every replica it can have). The
    /// candidates are the ring's (rack-aware) for the copies plus one per down node (at most
    /// the ring's limit of 8); among the live ones, one per rack first, in the ring's order,
    /// then the others; down ones fill what is left. With no node down: the ring's set.
    pub fn place(&self, id: &SpaceId) -> Vec<u64> {
        let config = self.placement.config();
        let copies = config.copies;
        let down = |n: &u64| {
            self.nodes
                .get(n)
                .is_some_and(|r| r.state == NodeState::Down)
        };
        let wide = self.placement.replica_set_with(
            engram_cluster::SpaceKey::of(id.as_str()),
            copies + self.nodes.keys().filter(|n| down(n)).count(),
            config.rack_aware,
        );
        let (live, dead): (Vec<u64>, Vec<u64>) =
            wide.nodes().iter().map(|n| n.0).partition(|n| !down(n));
        let rack = |n: &u64| self.nodes.get(n).map(|r| r.rack.as_str());
        let mut chosen: Vec<u64> = Vec::with_capacity(copies);
        if config.rack_aware {
            let mut racks = std::collections::HashSet::new();
            for n in &live {
                if chosen.len() < copies && racks.insert(rack(n)) {
                    chosen.push(*n);
                }
            }
        }
        for n in live.iter().chain(&dead) {
            if chosen.len() < copies && !chosen.contains(n) {
                chosen.push(*n);
            }
        }
        chosen
    }

    /// Applies `cmd` as the command after the last one applied (tests; the state machine
    /// uses [`MetaState::apply_at`]).
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaAnswer {
        self.apply_at(self.applied + 1, cmd)
    }

    /// Applies `cmd`, the command at `position` (see [`MetaState::applied`]): the state after
    /// it and the answer. Deterministic.
    pub fn apply_at(&mut self, position: u64, cmd: &MetaCommand) -> MetaAnswer {
        self.applied = position;
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
                let replicas = self.place(id);
                if replicas.is_empty() {
                    return Err("the cluster has no node to place a space on".into());
                }
                let record = SpaceRecord {
                    replicas,
                    dimension: *dimension,
                    embedder: embedder.clone(),
                    created_at_us: *created_at_us,
                    nonce: *nonce,
                    creation: self.applied,
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

pub(super) fn bad<T>(what: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError(what.into()))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
