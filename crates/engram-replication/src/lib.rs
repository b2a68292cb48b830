//! Engram's replication: every space is an openraft group (openraft `=0.10.0-alpha.37`, see
//! `docs/cluster.md`) whose log is the node's WAL and whose state machine is the space.
//!
//! - `types.rs`: the group's raft types and their mapping to the WAL's raft records.
//! - `runtime.rs`: tokio, with openraft's random draws seedable by a simulation.
//! - `log_store.rs`: the raft log of every group on the node's WAL: appends go through the
//!   store's group commit (one fsync acknowledges the appends of every group), the log's
//!   entries are kept in memory until purged, and the WAL keeps what the groups still need.
//! - `codec.rs`: the messages between nodes, in a versioned binary encoding (fuzzed).
//! - `frame.rs`: length-prefixed frames of those messages on a byte stream.
//! - `network.rs`: openraft's network traits over a frame [`network::Transport`].
//! - `node.rs`: a node's groups, started on demand, and the handling of incoming messages.
//! - `batch.rs`: the writes waiting for a group proposed together as one entry.
//! - `residency.rs`: idle groups quiesce (no timers) and the resident set is bounded.
//! - `state_machine.rs`: a space as its group's state machine: apply by log index, snapshots
//!   as the space's files.

mod batch;
pub mod cluster;
pub mod codec;
mod creation;
mod heartbeat;
/// The consensus engine, at the exact version this crate pins (for its callers' configs).
pub use openraft;
pub mod frame;
pub mod log_store;
pub mod meta;
pub mod network;
pub mod node;
pub mod residency;
pub mod runtime;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use batch::MAX_IN_FLIGHT;
pub use log_store::{GroupLog, GroupShared, LogStore, NodeLog};
pub use node::{Group, ReplicaNode};
pub use residency::{Residency, Sweep};
pub use state_machine::{SnapshotFiles, SpaceStateMachine};
pub use types::{NodeAddr, Request, Response, TypeConfig};
