//! The raft type configuration of a space's group, and the mapping between openraft's values
//! and the WAL's raft records (`engram_storage::LogEntry`, `GroupMeta`; byte layout in
//! `docs/format.md`, "Raft records").
//!
//! Choices: node ids are `u64` (a cluster names its nodes; the metadata group maps names to
//! ids), terms are `u64`, and the leader id is openraft's *standard* one (a committed leader is
//! named by its term alone, as in the Raft paper: one leader per term), so a log id is
//! `(term, index)`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::Arc;

use engram_storage::requests::Answer;
use engram_storage::{
    Command, EntryBody, LogEntry, LogPos, RaftMembership, RaftNode, RaftVote as StoredVote,
};
use openraft::vote::leader_id_std::{CommittedLeaderId, LeaderId};
use openraft::{EntryPayload, Membership};

/// Writes to a space as one log entry carries them: one command, or several clients' data
/// operations proposed together (at most [`engram_storage::MAX_ENTRY_COMMANDS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Request(pub Arc<[Command]>);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "op {}", c.op.code())?;
            if let Some((key, _)) = &c.request {
                write!(f, " key {key}")?;
            }
        }
        Ok(())
    }
}

/// What a write came to: what applying its entry answers, and what a proposal returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The log index of the entry that applied the request (the first one's, for a repeat).
    pub index: u64,
    /// When the leader received the request the answer is of (µs since the epoch; 0 for a
    /// command without an idempotency key).
    pub at_us: i64,
    /// What it did (`None`: nothing, e.g. a command for a space that does not exist).
    pub answer: Option<Answer>,
    /// A repeat of an earlier request (same idempotency key, within ten minutes), answered
    /// with the first answer and not applied again.
    pub repeat: bool,
}

/// A member as the group's membership names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddr {
    /// The node's name (`--node-id`).
    pub name: String,
    /// Its cluster address.
    pub address: String,
}

openraft::declare_raft_types!(
    /// The raft types of a space's group.
    pub TypeConfig:
        D = Request,
        R = Vec<Response>,
        NodeId = u64,
        Node = NodeAddr,
        Term = u64,
        LeaderId = LeaderId<u64, u64>,
        AsyncRuntime = crate::runtime::Runtime,
);

pub type LogId = openraft::LogId<CommittedLeaderId<u64>>;
pub type Vote = openraft::impls::Vote<LeaderId<u64, u64>>;
pub type Entry = openraft::Entry<CommittedLeaderId<u64>, EntryPayload<Request, u64, NodeAddr>>;
pub type GroupMembership = Membership<u64, NodeAddr>;
pub type StoredMembership = openraft::StoredMembership<CommittedLeaderId<u64>, u64, NodeAddr>;

pub fn log_id(p: LogPos) -> LogId {
    LogId::new(CommittedLeaderId::new(p.term), p.index)
}

pub fn log_pos(id: &LogId) -> LogPos {
    LogPos {
        term: id.leader_id.term,
        index: id.index,
    }
}

pub fn vote_of(v: StoredVote) -> Vote {
    Vote {
        leader_id: LeaderId {
            term: v.term,
            voted_for: v.node,
        },
        committed: v.committed,
    }
}

pub fn stored_vote(v: &Vote) -> StoredVote {
    StoredVote {
        term: v.leader_id.term,
        node: v.leader_id.voted_for,
        committed: v.committed,
    }
}

pub fn stored_membership(m: &GroupMembership) -> RaftMembership {
    RaftMembership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| set.iter().copied().collect())
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| RaftNode {
                id: *id,
                name: n.name.clone(),
                address: n.address.clone(),
            })
            .collect(),
    }
}

/// A stored membership back as openraft's; one that names a voter without its node is
/// corrupt.
pub fn membership_of(m: &RaftMembership) -> io::Result<GroupMembership> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|set| set.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, NodeAddr> = m
        .nodes
        .iter()
        .map(|n| {
            (
                n.id,
                NodeAddr {
                    name: n.name.clone(),
                    address: n.address.clone(),
                },
            )
        })
        .collect();
    Membership::new(configs, nodes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("membership: {e}")))
}

/// An entry as the WAL stores it.
pub fn stored_entry(e: &Entry) -> LogEntry {
    LogEntry {
        pos: log_pos(&e.log_id),
        body: match &e.payload {
            EntryPayload::Blank => EntryBody::Blank,
            EntryPayload::Normal(r) => EntryBody::Commands(r.0.clone()),
            EntryPayload::Membership(m) => EntryBody::Membership(stored_membership(m)),
        },
    }
}

/// A stored entry back as openraft's.
pub fn entry_of(e: LogEntry) -> io::Result<Entry> {
    Ok(Entry {
        log_id: log_id(e.pos),
        payload: match e.body {
            EntryBody::Blank => EntryPayload::Blank,
            EntryBody::Commands(cs) => EntryPayload::Normal(Request(cs)),
            EntryBody::Membership(m) => EntryPayload::Membership(membership_of(&m)?),
        },
    })
}

/// An I/O error for openraft from the store's.
pub(crate) fn io_err(e: impl fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Builds a command entry (tests and the simulation).
pub fn command(op: engram_storage::Op, request: Option<(String, i64)>) -> Request {
    Request(Arc::new([Command { op, request }]))
}
