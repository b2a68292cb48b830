//! The messages nodes send each other, in a versioned binary encoding (not JSON): a message is
//! a frame `u32 length, then that many bytes`; the bytes are `u8 version (2)`, `u8 kind`,
//! `str16 group` (the space whose raft group the message is for), `u64 creation` (which
//! creation of the space: the catalog's creation position, 0 where it does not apply or is
//! not known; version 2), then the kind's fields.
//! Log entries travel in their WAL encoding (`docs/format.md`, code 10), so a follower stores
//! the bytes the leader did. Decoding never panics and refuses trailing bytes, unknown
//! versions and kinds, and counts past their bounds (fuzzed: `fuzz/fuzz_targets/raft_codec.rs`).

use std::sync::Arc;

use engram_core::SpaceId;
use engram_storage::codec::{put_i64, put_str16, put_u32, put_u64, Reader};
use engram_storage::requests::Answer;
use engram_storage::{op_code, Command, Op, RaftMembership, MAX_REQUEST_KEY};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use crate::types::{
    entry_of, log_id, log_pos, membership_of, stored_entry, stored_membership, stored_vote,
    vote_of, Entry, LogId, Response, StoredMembership, TypeConfig, Vote,
};

/// The version this build speaks.
pub const CODEC_VERSION: u8 = 2;
/// The largest frame accepted (a snapshot's files travel in one frame: see `docs/cluster.md`).
pub const MAX_FRAME: usize = 256 << 20;
/// The most entries one append carries.
pub const MAX_ENTRIES: usize = 4096;
/// The most files one snapshot carries.
pub const MAX_SNAPSHOT_FILES: usize = 100_000;

/// A snapshot's metadata and files, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotTransfer {
    pub last_log_id: Option<LogId>,
    pub membership: StoredMembership,
    /// (file name, bytes), each a state file of the space (`docs/format.md`).
    pub files: Vec<(String, Vec<u8>)>,
}

/// What a proposal came to.
#[derive(Debug, Clone, PartialEq)]
pub enum ProposeOutcome {
    /// Committed and applied (or a repeat of a request applied before): what it did.
    Applied(Response),
    /// This node does not lead the group; the leader it knows, if any.
    NotLeader(Option<u64>),
    /// Refused or failed: why.
    Failed(String),
}

/// Every message between nodes.
#[derive(Debug, Clone)]
pub enum Message {
    Append(AppendEntriesRequest<TypeConfig>),
    AppendReply(AppendEntriesResponse<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    VoteReply(VoteResponse<TypeConfig>),
    Snapshot {
        vote: Vote,
        snapshot: SnapshotTransfer,
    },
    SnapshotReply(SnapshotResponse<TypeConfig>),
    /// A command for the group's leader to propose.
    Propose(Command),
    ProposeReply(ProposeOutcome),
    /// A linearizable read of the ids of the space's memories, on its leader.
    ReadIds,
    ReadIdsReply(Result<Vec<String>, ProposeOutcome>),
    /// The receiver could not handle the request (no such group, shut down, …).
    Error(String),
    /// From the group's leader `from`: the group is idle and every follower has its log;
    /// stop the group's timers until a message or a request wakes it.
    Quiesce {
        from: u64,
    },
    /// From node `from`, woken by a request: resume the group's timers (heartbeats).
    Wake {
        from: u64,
    },
    /// The reply to `Quiesce` and `Wake`.
    Ack,
    /// From a node outside the cluster, to any member (group `cluster.meta`): propose that it
    /// joins (forwarded once to the metadata group's leader); the reply is a `ProposeReply`.
    Join(crate::meta::NodeRecord),
    /// Asks a node how many space groups it leads and holds resident (any group name).
    Status,
    StatusReply {
        led: u64,
        resident: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad message: {0}")]
pub struct CodecError(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError(what.into()))
}

impl From<engram_storage::StorageError> for CodecError {
    fn from(e: engram_storage::StorageError) -> Self {
        CodecError(e.to_string())
    }
}

mod kind {
    pub const APPEND: u8 = 1;
    pub const APPEND_REPLY: u8 = 2;
    pub const VOTE: u8 = 3;
    pub const VOTE_REPLY: u8 = 4;
    pub const SNAPSHOT: u8 = 5;
    pub const SNAPSHOT_REPLY: u8 = 6;
    pub const PROPOSE: u8 = 7;
    pub const PROPOSE_REPLY: u8 = 8;
    pub const READ_IDS: u8 = 9;
    pub const READ_IDS_REPLY: u8 = 10;
    pub const ERROR: u8 = 11;
    pub const QUIESCE: u8 = 12;
    pub const WAKE: u8 = 13;
    pub const ACK: u8 = 14;
    pub const JOIN: u8 = 15;
    pub const STATUS: u8 = 16;
    pub const STATUS_REPLY: u8 = 17;
}

fn put_vote(out: &mut Vec<u8>, v: &Vote) {
    let s = stored_vote(v);
    put_u64(out, s.term);
    put_u64(out, s.node);
    out.push(u8::from(s.committed));
}

fn read_vote(r: &mut Reader<'_>) -> Result<Vote, CodecError> {
    let term = r.u64("vote term")?;
    let node = r.u64("vote node")?;
    let committed = read_bool(r, "vote committed")?;
    Ok(vote_of(engram_storage::RaftVote {
        term,
        node,
        committed,
    }))
}

fn read_bool(r: &mut Reader<'_>, what: &str) -> Result<bool, CodecError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        other => bad(format!("{what}: {other}")),
    }
}

fn put_log_id(out: &mut Vec<u8>, id: &Option<LogId>) {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            let p = log_pos(id);
            put_u64(out, p.term);
            put_u64(out, p.index);
        }
    }
}

fn read_log_id(r: &mut Reader<'_>, what: &str) -> Result<Option<LogId>, CodecError> {
    if !read_bool(r, what)? {
        return Ok(None);
    }
    let term = r.u64(what)?;
    let index = r.u64(what)?;
    Ok(Some(log_id(engram_storage::LogPos { term, index })))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn read_bytes<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a [u8], CodecError> {
    let n = r.u64(what)?;
    if n > r.remaining() as u64 {
        return bad(format!("{what}: {n} bytes, {} left", r.remaining()));
    }
    Ok(r.take(n as usize, what)?)
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    let mut payload = Vec::new();
    Op::RaftEntry(Box::new(stored_entry(e))).encode_payload(&mut payload);
    put_bytes(out, &payload);
}

fn read_entry(r: &mut Reader<'_>) -> Result<Entry, CodecError> {
    let payload = read_bytes(r, "entry")?;
    match Op::decode_payload(op_code::RAFT_ENTRY, payload)? {
        Op::RaftEntry(e) => entry_of(*e).map_err(|e| CodecError(e.to_string())),
        _ => bad("an entry that is not one"),
    }
}

fn put_outcome(out: &mut Vec<u8>, o: &ProposeOutcome) {
    match o {
        ProposeOutcome::Applied(r) => {
            out.push(0);
            put_u64(out, r.index);
            put_i64(out, r.at_us);
            out.push(u8::from(r.repeat));
            match &r.answer {
                None => out.push(0),
                Some(a) => {
                    out.push(1);
                    a.encode(out);
                }
            }
        }
        ProposeOutcome::NotLeader(l) => {
            out.push(1);
            match l {
                None => out.push(0),
                Some(n) => {
                    out.push(1);
                    put_u64(out, *n);
                }
            }
        }
        ProposeOutcome::Failed(why) => {
            out.push(2);
            put_str16(out, truncated(why));
        }
    }
}

fn read_outcome(r: &mut Reader<'_>) -> Result<ProposeOutcome, CodecError> {
    Ok(match r.u8("outcome")? {
        0 => ProposeOutcome::Applied(Response {
            index: r.u64("index")?,
            at_us: r.i64("request time")?,
            repeat: read_bool(r, "repeat")?,
            answer: if read_bool(r, "answer")? {
                Some(Answer::decode(r)?)
            } else {
                None
            },
        }),
        1 => ProposeOutcome::NotLeader(if read_bool(r, "leader known")? {
            Some(r.u64("leader")?)
        } else {
            None
        }),
        2 => ProposeOutcome::Failed(r.str16("why")?.to_string()),
        other => return bad(format!("outcome {other}")),
    })
}

/// A message of at most 4 KiB (an error's text is cut there, on a character boundary).
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(4096);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Message {
    /// The frame body (without the length prefix) of this message for `group`, of no
    /// particular creation (0).
    pub fn encode(&self, group: &SpaceId) -> Vec<u8> {
        self.encode_for(group, 0)
    }

    /// The frame body of this message for the creation `creation` of `group`.
    pub fn encode_for(&self, group: &SpaceId, creation: u64) -> Vec<u8> {
        let mut out = vec![CODEC_VERSION, self.kind()];
        put_str16(&mut out, group.as_str());
        put_u64(&mut out, creation);
        match self {
            Message::Append(a) => {
                put_vote(&mut out, &a.vote);
                put_log_id(&mut out, &a.prev_log_id);
                put_log_id(&mut out, &a.leader_commit);
                put_u32(&mut out, a.entries.len() as u32);
                for e in &a.entries {
                    put_entry(&mut out, e);
                }
            }
            Message::AppendReply(r) => match r {
                AppendEntriesResponse::Success => out.push(0),
                AppendEntriesResponse::PartialSuccess(id) => {
                    out.push(1);
                    put_log_id(&mut out, id);
                }
                AppendEntriesResponse::Conflict => out.push(2),
                AppendEntriesResponse::HigherVote(v) => {
                    out.push(3);
                    put_vote(&mut out, v);
                }
            },
            Message::Vote(v) => {
                put_vote(&mut out, &v.vote);
                put_log_id(&mut out, &v.last_log_id);
                out.push(u8::from(v.leadership_transfer));
            }
            Message::VoteReply(v) => {
                put_vote(&mut out, &v.vote);
                out.push(u8::from(v.vote_granted));
                put_log_id(&mut out, &v.last_log_id);
            }
            Message::Snapshot { vote, snapshot } => {
                put_vote(&mut out, vote);
                put_log_id(&mut out, &snapshot.last_log_id);
                put_log_id(&mut out, snapshot.membership.log_id());
                stored_membership(snapshot.membership.membership()).encode(&mut out);
                put_u32(&mut out, snapshot.files.len() as u32);
                for (name, bytes) in &snapshot.files {
                    put_str16(&mut out, name);
                    put_bytes(&mut out, bytes);
                }
            }
            Message::SnapshotReply(r) => put_vote(&mut out, &r.vote),
            Message::Propose(c) => {
                let mut payload = Vec::new();
                // A command is a normal entry's body: encode it as one at position 0.
                Op::RaftEntry(Box::new(engram_storage::LogEntry {
                    pos: engram_storage::LogPos { term: 0, index: 0 },
                    body: engram_storage::EntryBody::Commands(Arc::new([c.clone()])),
                }))
                .encode_payload(&mut payload);
                put_bytes(&mut out, &payload);
            }
            Message::ProposeReply(o) => put_outcome(&mut out, o),
            Message::ReadIds => {}
            Message::ReadIdsReply(r) => match r {
                Ok(ids) => {
                    out.push(0);
                    put_u32(&mut out, ids.len() as u32);
                    for id in ids {
                        put_str16(&mut out, id);
                    }
                }
                Err(o) => {
                    out.push(1);
                    put_outcome(&mut out, o);
                }
            },
            Message::Error(why) => put_str16(&mut out, truncated(why)),
            Message::Quiesce { from } | Message::Wake { from } => put_u64(&mut out, *from),
            Message::Ack => {}
            Message::Join(n) => put_bytes(
                &mut out,
                &crate::meta::MetaCommand::Join(n.clone()).encode(),
            ),
            Message::Status => {}
            Message::StatusReply { led, resident } => {
                put_u64(&mut out, *led);
                put_u64(&mut out, *resident);
            }
        }
        out
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Append(_) => kind::APPEND,
            Message::AppendReply(_) => kind::APPEND_REPLY,
            Message::Vote(_) => kind::VOTE,
            Message::VoteReply(_) => kind::VOTE_REPLY,
            Message::Snapshot { .. } => kind::SNAPSHOT,
            Message::SnapshotReply(_) => kind::SNAPSHOT_REPLY,
            Message::Propose(_) => kind::PROPOSE,
            Message::ProposeReply(_) => kind::PROPOSE_REPLY,
            Message::ReadIds => kind::READ_IDS,
            Message::ReadIdsReply(_) => kind::READ_IDS_REPLY,
            Message::Error(_) => kind::ERROR,
            Message::Quiesce { .. } => kind::QUIESCE,
            Message::Wake { .. } => kind::WAKE,
            Message::Ack => kind::ACK,
            Message::Join(_) => kind::JOIN,
            Message::Status => kind::STATUS,
            Message::StatusReply { .. } => kind::STATUS_REPLY,
        }
    }

    /// Decodes a frame body: the group it is for and the message. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<(SpaceId, Message), CodecError> {
        Self::decode_for(bytes).map(|(g, _, m)| (g, m))
    }

    /// Decodes a frame body: the group, the creation and the message. Never panics.
    pub fn decode_for(bytes: &[u8]) -> Result<(SpaceId, u64, Message), CodecError> {
        if bytes.len() > MAX_FRAME {
            return bad(format!("a frame of {} bytes", bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != CODEC_VERSION {
            return bad(format!(
                "message version {version} (this build speaks {CODEC_VERSION})"
            ));
        }
        let k = r.u8("kind")?;
        let group = SpaceId::group(r.str16("group")?).map_err(|e| CodecError(e.to_string()))?;
        let creation = r.u64("creation")?;
        let msg = match k {
            kind::APPEND => {
                let vote = read_vote(&mut r)?;
                let prev_log_id = read_log_id(&mut r, "prev log id")?;
                let leader_commit = read_log_id(&mut r, "leader commit")?;
                let n = r.u32("entry count")? as usize;
                // Each entry takes at least 8 bytes: a bound before allocating.
                if n > MAX_ENTRIES || n > r.remaining() / 8 {
                    return bad(format!("an append of {n} entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(read_entry(&mut r)?);
                }
                Message::Append(AppendEntriesRequest {
                    vote,
                    prev_log_id,
                    entries,
                    leader_commit,
                })
            }
            kind::APPEND_REPLY => Message::AppendReply(match r.u8("append reply")? {
                0 => AppendEntriesResponse::Success,
                1 => AppendEntriesResponse::PartialSuccess(read_log_id(&mut r, "matched")?),
                2 => AppendEntriesResponse::Conflict,
                3 => AppendEntriesResponse::HigherVote(read_vote(&mut r)?),
                other => return bad(format!("append reply {other}")),
            }),
            kind::VOTE => {
                let vote = read_vote(&mut r)?;
                let last_log_id = read_log_id(&mut r, "last log id")?;
                let leadership_transfer = read_bool(&mut r, "leadership transfer")?;
                let mut v = VoteRequest::new(vote, last_log_id);
                v.leadership_transfer = leadership_transfer;
                Message::Vote(v)
            }
            kind::VOTE_REPLY => {
                let vote = read_vote(&mut r)?;
                let granted = read_bool(&mut r, "granted")?;
                let last_log_id = read_log_id(&mut r, "last log id")?;
                Message::VoteReply(VoteResponse::new(vote, last_log_id, granted))
            }
            kind::SNAPSHOT => {
                let vote = read_vote(&mut r)?;
                let last_log_id = read_log_id(&mut r, "snapshot last log id")?;
                let membership_at = read_log_id(&mut r, "membership log id")?;
                let m = RaftMembership::decode(&mut r)?;
                let membership = StoredMembership::new(
                    membership_at,
                    membership_of(&m).map_err(|e| CodecError(e.to_string()))?,
                );
                let n = r.u32("file count")? as usize;
                if n > MAX_SNAPSHOT_FILES || n > r.remaining() / 10 {
                    return bad(format!("a snapshot of {n} files"));
                }
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.str16("file name")?;
                    if name.is_empty() || name.contains('/') || name.starts_with('.') {
                        return bad(format!("snapshot file name {name:?}"));
                    }
                    files.push((name.to_string(), read_bytes(&mut r, "file")?.to_vec()));
                }
                Message::Snapshot {
                    vote,
                    snapshot: SnapshotTransfer {
                        last_log_id,
                        membership,
                        files,
                    },
                }
            }
            kind::SNAPSHOT_REPLY => {
                Message::SnapshotReply(SnapshotResponse::new(read_vote(&mut r)?))
            }
            kind::PROPOSE => {
                let payload = read_bytes(&mut r, "command")?;
                match Op::decode_payload(op_code::RAFT_ENTRY, payload)? {
                    // Encoded at position 0, the only form accepted (one encoding per message).
                    Op::RaftEntry(e) if e.pos != (engram_storage::LogPos { term: 0, index: 0 }) => {
                        return bad("a proposal at a log position")
                    }
                    Op::RaftEntry(e) => match e.body {
                        engram_storage::EntryBody::Commands(cs) if cs.len() == 1 => {
                            let c = &cs[0];
                            if c.request
                                .as_ref()
                                .is_some_and(|(k, _)| k.len() > MAX_REQUEST_KEY)
                            {
                                return bad("an idempotency key past its limit");
                            }
                            Message::Propose(c.clone())
                        }
                        _ => return bad("a proposal that is not a command"),
                    },
                    _ => return bad("a proposal that is not a command"),
                }
            }
            kind::PROPOSE_REPLY => Message::ProposeReply(read_outcome(&mut r)?),
            kind::READ_IDS => Message::ReadIds,
            kind::READ_IDS_REPLY => Message::ReadIdsReply(match r.u8("read reply")? {
                0 => {
                    let n = r.u32("id count")? as usize;
                    if n > r.remaining() / 2 {
                        return bad(format!("{n} ids in a shorter message"));
                    }
                    let mut ids = Vec::with_capacity(n);
                    for _ in 0..n {
                        ids.push(r.str16("id")?.to_string());
                    }
                    Ok(ids)
                }
                1 => Err(read_outcome(&mut r)?),
                other => return bad(format!("read reply {other}")),
            }),
            kind::ERROR => Message::Error(r.str16("error")?.to_string()),
            kind::QUIESCE => Message::Quiesce {
                from: r.u64("from")?,
            },
            kind::WAKE => Message::Wake {
                from: r.u64("from")?,
            },
            kind::ACK => Message::Ack,
            kind::JOIN => {
                let b = read_bytes(&mut r, "join")?;
                // One encoding of a message: its command in the current version only.
                if b.first() != Some(&crate::meta::META_VERSION) {
                    return bad("a join in another metadata version");
                }
                match crate::meta::MetaCommand::decode(b)? {
                    crate::meta::MetaCommand::Join(n) => Message::Join(n),
                    _ => return bad("a join that is another metadata command"),
                }
            }
            kind::STATUS => Message::Status,
            kind::STATUS_REPLY => Message::StatusReply {
                led: r.u64("led")?,
                resident: r.u64("resident")?,
            },
            other => return bad(format!("message kind {other}")),
        };
        r.finish("message")?;
        Ok((group, creation, msg))
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
