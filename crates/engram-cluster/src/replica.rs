//! Replica sets: the primary and the replicas of one space.

use crate::limits::MAX_COPIES;
use crate::node::NodeId;

/// The role a node holds for a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Takes the space's writes; serves reads.
    Primary,
    /// Holds a copy; serves reads and takes over when the primary fails.
    Replica,
}

/// The nodes that hold one space, primary first, on distinct physical nodes: an inline array,
/// so computing one never allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSet {
    nodes: [NodeId; MAX_COPIES],
    len: u8,
    wanted: u8,
    racks_shared: bool,
}

impl ReplicaSet {
    pub(crate) const EMPTY: ReplicaSet = ReplicaSet {
        nodes: [NodeId(0); MAX_COPIES],
        len: 0,
        wanted: 0,
        racks_shared: false,
    };

    pub(crate) fn new(wanted: usize) -> Self {
        debug_assert!(wanted <= MAX_COPIES);
        Self {
            wanted: wanted as u8,
            ..Self::EMPTY
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, node: NodeId) {
        assert!((self.len as usize) < MAX_COPIES, "replica set overflow");
        debug_assert!(!self.contains(node), "replica set holds {node} twice");
        self.nodes[self.len as usize] = node;
        self.len += 1;
    }

    pub(crate) fn set_racks_shared(&mut self) {
        self.racks_shared = true;
    }

    /// The nodes, primary first.
    #[inline]
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes[..self.len as usize]
    }

    /// The primary; `None` only on an empty cluster.
    #[inline]
    pub fn primary(&self) -> Option<NodeId> {
        self.nodes().first().copied()
    }

    /// The replicas, in the order they were chosen (nearest clockwise first).
    pub fn replicas(&self) -> &[NodeId] {
        self.nodes().get(1..).unwrap_or(&[])
    }

    /// Number of copies (primary included).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True on an empty cluster.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `node` holds a copy.
    #[inline]
    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes().contains(&node)
    }

    /// The role of `node`, if it holds a copy.
    pub fn role_of(&self, node: NodeId) -> Option<Role> {
        let at = self.nodes().iter().position(|&n| n == node)?;
        Some(if at == 0 {
            Role::Primary
        } else {
            Role::Replica
        })
    }

    /// The copies the configuration asks for.
    pub fn wanted(&self) -> usize {
        self.wanted as usize
    }

    /// True when the cluster has fewer nodes than the copies asked for: the set is short.
    pub fn is_short(&self) -> bool {
        self.len < self.wanted
    }

    /// True when rack-aware placement had to put two copies in one rack because the cluster has
    /// fewer racks than copies (graceful degradation; see `PlacementTable::rack_coverage`).
    pub fn racks_shared(&self) -> bool {
        self.racks_shared
    }
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("nodes", &self.nodes())
            .field("wanted", &self.wanted)
            .field("racks_shared", &self.racks_shared)
            .finish()
    }
}
