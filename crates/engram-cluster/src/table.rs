//! The placement table: the ring of one epoch, and the changes that make the next epoch.

use std::collections::BTreeMap;
use std::fmt;

use crate::allocate::{balanced_tokens, random_tokens};
use crate::catalog::SpaceCatalog;
use crate::error::ClusterError;
use crate::hash::{SpaceKey, HASH_VERSION};
use crate::limits::{MAX_COPIES, MAX_NODES, MAX_TOKENS, MAX_VNODES_PER_NODE};
use crate::node::{validate_rack, NodeId, NodeInfo, DEFAULT_CAPACITY};
use crate::replica::ReplicaSet;
use crate::ring::Ring;

/// Version of the token allocation algorithm. Together with [`HASH_VERSION`] it pins where every
/// space goes; a change to either needs a new version, never an edit in place.
pub const PLACEMENT_VERSION: u32 = 1;

/// A placement epoch. Every change of membership or racks makes a new one; a larger epoch is a
/// newer placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// How a joining node's virtual nodes are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStrategy {
    /// Split arcs of the nodes above their fair part so that the joining node takes exactly its
    /// part of the spaces that exist, and as nearly as the gaps between spaces allow its part of
    /// the hash share (see the crate documentation). The default.
    Balanced,
    /// Classic consistent hashing: tokens hashed from the node id. About `1/sqrt(vnodes)`
    /// standard deviation of load (8% with 150 virtual nodes); kept for comparison.
    Random,
}

/// Cluster-wide placement settings. Every node must use the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementConfig {
    /// Virtual nodes of a standard node ([`DEFAULT_CAPACITY`]); a node gets this times its
    /// capacity over the standard capacity. Default 150.
    pub vnodes_per_node: u32,
    /// Copies of each space: the primary and `copies - 1` replicas. Default 3.
    pub copies: usize,
    /// Keep a space's copies in distinct racks where there are enough racks. Default true.
    pub rack_aware: bool,
    /// Token placement. Default [`TokenStrategy::Balanced`].
    pub strategy: TokenStrategy,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            vnodes_per_node: 150,
            copies: 3,
            rack_aware: true,
            strategy: TokenStrategy::Balanced,
        }
    }
}

impl PlacementConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.vnodes_per_node == 0 || self.vnodes_per_node > MAX_VNODES_PER_NODE {
            return Err(ClusterError::InvalidConfig(format!(
                "vnodes_per_node {} is outside 1..={MAX_VNODES_PER_NODE}",
                self.vnodes_per_node
            )));
        }
        if self.copies == 0 || self.copies > MAX_COPIES {
            return Err(ClusterError::InvalidConfig(format!(
                "copies {} is outside 1..={MAX_COPIES}",
                self.copies
            )));
        }
        Ok(())
    }

    /// The virtual nodes of a node of `capacity`: `vnodes_per_node * capacity / 100`, rounded,
    /// at least 1.
    pub fn vnodes_for(&self, capacity: u32) -> usize {
        let v = (u64::from(self.vnodes_per_node) * u64::from(capacity)
            + u64::from(DEFAULT_CAPACITY) / 2)
            / u64::from(DEFAULT_CAPACITY);
        v.max(1) as usize
    }
}

/// A change of the cluster: each one applied makes a new epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node joins. A node that placement remembers (it left or failed earlier, and was not
    /// forgotten) takes back its old tokens if its capacity is unchanged.
    Join(NodeInfo),
    /// A node leaves gracefully: its data stays readable until its moves are done.
    Leave(NodeId),
    /// A node failed: its copies are gone; spaces it held are under-replicated.
    Fail(NodeId),
    /// A node moves to another rack.
    SetRack(NodeId, String),
    /// Placement stops remembering a departed node's tokens (it will not come back, or will
    /// come back empty).
    Forget(NodeId),
}

impl Change {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match self {
            Change::Join(info) => info.id,
            Change::Leave(id) | Change::Fail(id) | Change::SetRack(id, _) | Change::Forget(id) => {
                *id
            }
        }
    }
}

/// How a remembered node departed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Graceful leave: its data could be copied from it.
    Left,
    /// Failure: its data is gone.
    Failed,
}

/// A node that left or failed, remembered so that it can take back its old place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The node as it was.
    pub info: NodeInfo,
    /// Its tokens.
    pub tokens: Vec<u64>,
    /// How it departed.
    pub departure: Departure,
    /// The epoch its departure made.
    pub epoch: Epoch,
}

/// Whether rack-aware placement can keep every copy in its own rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RackCoverage {
    /// Distinct racks among the members.
    pub racks: usize,
    /// Copies per space that can be placed (the configured copies, or fewer nodes).
    pub copies: usize,
}

impl RackCoverage {
    /// True when every space's copies are in distinct racks.
    pub fn is_complete(&self) -> bool {
        self.racks >= self.copies
    }
}

/// The placement of one epoch: members, their tokens, and the built ring. Immutable: a change
/// makes a new table ([`PlacementTable::apply`]). Every node of the cluster holds one; routing
/// compares their epochs.
#[derive(Clone)]
pub struct PlacementTable {
    epoch: Epoch,
    config: PlacementConfig,
    members: BTreeMap<NodeId, NodeInfo>,
    /// Every token: position -> owner.
    tokens: BTreeMap<u64, NodeId>,
    /// Departed nodes that may come back.
    retired: BTreeMap<NodeId, Retired>,
    ring: Ring,
}

impl PlacementTable {
    /// The empty placement of epoch 0.
    pub fn new(config: PlacementConfig) -> Result<Self, ClusterError> {
        config.validate()?;
        let members = BTreeMap::new();
        let tokens = BTreeMap::new();
        let ring = Ring::build(&tokens, &members);
        Ok(Self {
            epoch: Epoch(0),
            config,
            members,
            tokens,
            retired: BTreeMap::new(),
            ring,
        })
    }

    /// A table from what [`PlacementTable::epoch`], [`PlacementTable::config`],
    /// [`PlacementTable::members`], [`PlacementTable::tokens`] and
    /// [`PlacementTable::retired`] return: how a table is stored and read back (the cluster's
    /// metadata snapshots). Checked: the configuration and every node within their limits,
    /// every token owned by a member, each member holding tokens, no member also retired.
    pub fn from_parts(
        epoch: Epoch,
        config: PlacementConfig,
        members: BTreeMap<NodeId, NodeInfo>,
        tokens: BTreeMap<u64, NodeId>,
        retired: BTreeMap<NodeId, Retired>,
    ) -> Result<Self, ClusterError> {
        config.validate()?;
        if members.len() > MAX_NODES || tokens.len() > MAX_TOKENS {
            return Err(ClusterError::Limit(format!(
                "{} members and {} tokens (at most {MAX_NODES} and {MAX_TOKENS})",
                members.len(),
                tokens.len()
            )));
        }
        for (id, info) in &members {
            if info.id != *id {
                return Err(ClusterError::InvalidNode {
                    id: *id,
                    reason: format!("listed under the id of {}", info.id),
                });
            }
            info.validate()?;
        }
        if let Some((_, owner)) = tokens.iter().find(|(_, o)| !members.contains_key(o)) {
            return Err(ClusterError::NotMember(*owner));
        }
        for id in members.keys() {
            if !tokens.values().any(|o| o == id) {
                return Err(ClusterError::InvalidNode {
                    id: *id,
                    reason: "a member without tokens".into(),
                });
            }
        }
        if let Some(id) = retired.keys().find(|id| members.contains_key(id)) {
            return Err(ClusterError::AlreadyMember(*id));
        }
        let ring = Ring::build(&tokens, &members);
        Ok(Self {
            epoch,
            config,
            members,
            tokens,
            retired,
            ring,
        })
    }

    /// A placement of `nodes` joined one after another (epoch = number of nodes), balanced with
    /// `catalog`.
    pub fn with_nodes(
        config: PlacementConfig,
        nodes: impl IntoIterator<Item = NodeInfo>,
        catalog: &SpaceCatalog,
    ) -> Result<Self, ClusterError> {
        let mut table = Self::new(config)?;
        for node in nodes {
            table = table.apply(&Change::Join(node), catalog)?;
        }
        Ok(table)
    }

    /// The next epoch's table: `self` with `change` applied. `catalog` holds the spaces that
    /// exist (it only matters for a join with [`TokenStrategy::Balanced`]; pass an empty one
    /// otherwise). Deterministic: the same table, change and catalog give the same result.
    pub fn apply(&self, change: &Change, catalog: &SpaceCatalog) -> Result<Self, ClusterError> {
        let mut next = self.clone();
        match change {
            Change::Join(info) => next.join(info, catalog)?,
            Change::Leave(id) => next.depart(*id, Departure::Left)?,
            Change::Fail(id) => next.depart(*id, Departure::Failed)?,
            Change::SetRack(id, rack) => {
                validate_rack(*id, rack)?;
                let member = next
                    .members
                    .get_mut(id)
                    .ok_or(ClusterError::NotMember(*id))?;
                member.rack = rack.clone();
            }
            Change::Forget(id) => {
                next.retired
                    .remove(id)
                    .ok_or(ClusterError::NotRetired(*id))?;
            }
        }
        next.epoch = Epoch(self.epoch.0 + 1);
        next.ring = Ring::build(&next.tokens, &next.members);
        Ok(next)
    }

    fn join(&mut self, info: &NodeInfo, catalog: &SpaceCatalog) -> Result<(), ClusterError> {
        info.validate()?;
        if self.members.contains_key(&info.id) {
            return Err(ClusterError::AlreadyMember(info.id));
        }
        if self.members.len() >= MAX_NODES {
            return Err(ClusterError::Limit(format!(
                "a cluster holds at most {MAX_NODES} nodes"
            )));
        }
        let vnodes = self.config.vnodes_for(info.capacity);
        if self.tokens.len() + vnodes > MAX_TOKENS {
            return Err(ClusterError::Limit(format!(
                "{} tokens on the ring plus {vnodes} exceed {MAX_TOKENS}",
                self.tokens.len()
            )));
        }
        let remembered = self
            .retired
            .remove(&info.id)
            .filter(|r| r.info.capacity == info.capacity && r.tokens.len() == vnodes);
        let tokens = match (remembered, self.config.strategy) {
            (Some(r), _) => {
                // Take back the old positions; one taken meanwhile (vanishingly rare) moves to
                // the next free position.
                r.tokens
                    .iter()
                    .map(|&t| {
                        let mut t = t;
                        while self.tokens.contains_key(&t) {
                            t = t.wrapping_add(1);
                        }
                        t
                    })
                    .collect()
            }
            (None, TokenStrategy::Random) => {
                random_tokens(info.id, vnodes, |t| self.tokens.contains_key(&t))
            }
            (None, TokenStrategy::Balanced) => {
                let capacities = self
                    .members
                    .iter()
                    .map(|(&id, m)| (id, m.capacity))
                    .collect();
                balanced_tokens(
                    &self.tokens,
                    &capacities,
                    info.id,
                    info.capacity,
                    vnodes,
                    catalog,
                )
            }
        };
        for t in tokens {
            let previous = self.tokens.insert(t, info.id);
            assert!(previous.is_none(), "token {t:#x} allocated twice");
        }
        self.members.insert(info.id, info.clone());
        Ok(())
    }

    fn depart(&mut self, id: NodeId, departure: Departure) -> Result<(), ClusterError> {
        let info = self
            .members
            .remove(&id)
            .ok_or(ClusterError::NotMember(id))?;
        let tokens: Vec<u64> = self
            .tokens
            .iter()
            .filter(|(_, &o)| o == id)
            .map(|(&t, _)| t)
            .collect();
        for t in &tokens {
            self.tokens.remove(t);
        }
        self.retired.insert(
            id,
            Retired {
                info,
                tokens,
                departure,
                epoch: Epoch(self.epoch.0 + 1),
            },
        );
        Ok(())
    }

    /// This table's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The configuration.
    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Version of the placement hash the table uses ([`HASH_VERSION`]).
    pub fn hash_version(&self) -> u32 {
        HASH_VERSION
    }

    /// The members, by id.
    pub fn members(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.members
    }

    /// True when `node` is a member.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// Departed nodes placement remembers.
    pub fn retired(&self) -> &BTreeMap<NodeId, Retired> {
        &self.retired
    }

    /// Every token (position -> owner), in ring order.
    pub fn tokens(&self) -> &BTreeMap<u64, NodeId> {
        &self.tokens
    }

    /// Number of tokens on the ring.
    pub fn token_count(&self) -> usize {
        self.ring.len()
    }

    /// The primary of `space`; `None` on an empty cluster. Hashes the id and reads the lookup
    /// index: no allocation.
    #[inline]
    pub fn primary(&self, space: &str) -> Option<NodeId> {
        self.ring.primary(SpaceKey::of(space).0)
    }

    /// The primary of the space at `key`.
    #[inline]
    pub fn primary_of_key(&self, key: SpaceKey) -> Option<NodeId> {
        self.ring.primary(key.0)
    }

    /// The primary of `key` found by binary search instead of the lookup index (a reference for
    /// tests; same answer, slower).
    pub fn primary_by_search(&self, key: SpaceKey) -> Option<NodeId> {
        self.ring.primary_by_search(key.0)
    }

    /// The copies of `space` (primary first) with the configured copies and rack awareness.
    #[inline]
    pub fn replica_set(&self, space: &str) -> ReplicaSet {
        self.replica_set_of_key(SpaceKey::of(space))
    }

    /// The copies of the space at `key`.
    #[inline]
    pub fn replica_set_of_key(&self, key: SpaceKey) -> ReplicaSet {
        self.ring
            .replica_set(key.0, self.config.copies, self.config.rack_aware)
    }

    /// The first `copies` distinct nodes clockwise from `key`, rack-aware or not (whatever the
    /// configuration says).
    pub fn replica_set_with(&self, key: SpaceKey, copies: usize, rack_aware: bool) -> ReplicaSet {
        self.ring.replica_set(key.0, copies, rack_aware)
    }

    /// Whether every space's copies can be in distinct racks. When not, rack-aware placement
    /// degrades: one copy per rack first, then the nearest other nodes, and every replica set
    /// says so ([`ReplicaSet::racks_shared`]).
    pub fn rack_coverage(&self) -> RackCoverage {
        RackCoverage {
            racks: self.ring.rack_count(),
            copies: self.config.copies.min(self.members.len()),
        }
    }

    /// Each member's share of the hash space, in `[0, 1]`.
    pub fn shares(&self) -> BTreeMap<NodeId, f64> {
        self.ring
            .ownership()
            .into_iter()
            .map(|(id, owned)| (id, owned as f64 / 2f64.powi(64)))
            .collect()
    }

    /// A fingerprint of the ring: the placement hash of the versions and every (token, owner) pair. The
    /// same tokens give the same fingerprint on every platform; golden tests pin it.
    pub fn fingerprint(&self) -> u64 {
        let mut bytes = Vec::with_capacity(16 + self.tokens.len() * 16);
        bytes.extend_from_slice(&HASH_VERSION.to_le_bytes());
        bytes.extend_from_slice(&PLACEMENT_VERSION.to_le_bytes());
        for (t, o) in &self.tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
            bytes.extend_from_slice(&o.0.to_le_bytes());
        }
        crate::hash::placement_hash(&bytes)
    }

    /// True when both tables place every space the same way: same members (with racks and
    /// capacities), same tokens, same configuration. Epochs may differ.
    pub fn same_placement(&self, other: &PlacementTable) -> bool {
        self.config == other.config && self.members == other.members && self.tokens == other.tokens
    }
}

impl fmt::Debug for PlacementTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlacementTable")
            .field("epoch", &self.epoch)
            .field("members", &self.members.len())
            .field("tokens", &self.tokens.len())
            .field("retired", &self.retired.len())
            .finish()
    }
}
