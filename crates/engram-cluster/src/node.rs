//! Physical nodes: their ids, racks and capacities.

use std::fmt;

use crate::error::ClusterError;
use crate::limits::{MAX_CAPACITY, MAX_RACK_LEN};

/// The id of a physical node. Stable for the node's lifetime (a node that restarts or rejoins
/// keeps its id, which is what lets it take back its old place on the ring). Runtime state
/// (addresses, health) is kept by the membership layer, keyed by this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{:016x}", self.0)
    }
}

/// The capacity of a standard node. A node of capacity 200 gets twice the virtual nodes and is
/// given twice the spaces of a standard one.
pub const DEFAULT_CAPACITY: u32 = 100;

/// The rack of nodes that name none. In rack-aware mode all of them count as one rack.
pub const DEFAULT_RACK: &str = "default";

/// What placement knows of a physical node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Its failure domain (rack, availability zone): rack-aware placement keeps a space's copies
    /// in distinct racks where there are enough of them.
    pub rack: String,
    /// Relative capacity, [`DEFAULT_CAPACITY`] for a standard node; virtual nodes and the share
    /// of spaces are proportional to it. `1..=MAX_CAPACITY`.
    pub capacity: u32,
}

impl NodeInfo {
    /// A standard node in the default rack.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            rack: DEFAULT_RACK.to_string(),
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// The same node in `rack`.
    pub fn with_rack(mut self, rack: impl Into<String>) -> Self {
        self.rack = rack.into();
        self
    }

    /// The same node with `capacity` (see [`DEFAULT_CAPACITY`]).
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Checks the limits: capacity in `1..=MAX_CAPACITY`, a rack name of 1 to `MAX_RACK_LEN`
    /// bytes.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(ClusterError::InvalidNode {
                id: self.id,
                reason: format!(
                    "capacity {} is outside 1..={MAX_CAPACITY} ({DEFAULT_CAPACITY} is a standard \
                     node)",
                    self.capacity
                ),
            });
        }
        validate_rack(self.id, &self.rack)
    }
}

pub(crate) fn validate_rack(id: NodeId, rack: &str) -> Result<(), ClusterError> {
    if rack.is_empty() || rack.len() > MAX_RACK_LEN {
        return Err(ClusterError::InvalidNode {
            id,
            reason: format!(
                "rack name of {} bytes (expected 1..={MAX_RACK_LEN})",
                rack.len()
            ),
        });
    }
    Ok(())
}
