use thiserror::Error;

use crate::node::NodeId;

/// Why a placement change or a configuration was refused. Placement never panics on input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// A join named a node that is already a member.
    #[error("{0} is already a member of the cluster")]
    AlreadyMember(NodeId),
    /// A leave, failure or rack change named a node that is not a member.
    #[error("{0} is not a member of the cluster")]
    NotMember(NodeId),
    /// `Forget` named a node that placement does not remember.
    #[error("{0} is not a departed node that placement remembers")]
    NotRetired(NodeId),
    /// A node breaks a limit (capacity, rack name).
    #[error("invalid node {id}: {reason}")]
    InvalidNode { id: NodeId, reason: String },
    /// The placement configuration breaks a limit.
    #[error("invalid placement configuration: {0}")]
    InvalidConfig(String),
    /// The cluster would exceed a limit (nodes, tokens).
    #[error("limit exceeded: {0}")]
    Limit(String),
}
