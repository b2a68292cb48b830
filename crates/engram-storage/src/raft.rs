//! The raft records of the WAL (format version 3): a replicated space's raft log lives in the
//! node's WAL, one record per log entry, beside the records of the group's vote, commit and
//! purge points and of truncations. The storage engine does not know raft: these are plain
//! values and their encodings (`docs/format.md`, "Raft records"); `engram-replication` maps them
//! to openraft's types. The space named in a record's header is the group.

use std::sync::Arc;

use crate::codec::*;
use crate::error::{corrupted, Result};
use crate::op::{code, Op};
use crate::requests::Requests;

/// A log entry's identity: the term of the leader that proposed it and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    pub term: u64,
    pub index: u64,
}

/// A vote: the term, the node voted for, and whether a quorum granted it (the node leads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftVote {
    pub term: u64,
    pub node: u64,
    pub committed: bool,
}

/// A group's durable raft state apart from its entries. Each `RaftMeta` record holds all of
/// it, so the newest record of a group is the whole truth (earlier ones can go).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupMeta {
    pub vote: Option<RaftVote>,
    /// The newest entry known committed (saved to re-apply up to it at restart).
    pub committed: Option<LogPos>,
    /// Entries up to here are purged (in the state machine's segments, no longer in the log).
    pub purged: Option<LogPos>,
    /// Which creation of the space the group belongs to (the cluster catalog's creation
    /// position; 0: not known, as in records of format version 5 and before). A space dropped
    /// and created anew under its name is another group (format version 6).
    pub creation: u64,
}

/// A member of a group: raft's node id and what the cluster calls it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftNode {
    pub id: u64,
    /// The node's name (`--node-id`).
    pub name: String,
    /// Where its cluster port listens.
    pub address: String,
}

/// A group's membership: one voter set, or two during a joint change; learners are the nodes
/// that are in no voter set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftMembership {
    pub configs: Vec<Vec<u64>>,
    pub nodes: Vec<RaftNode>,
}

/// A client's write as a log entry carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The change to the space: a data operation (codes 1 to 9).
    pub op: Op,
    /// The client's `Idempotency-Key` and when the write was received (µs since the epoch):
    /// a repeat within the key's lifetime gets the first answer.
    pub request: Option<(String, i64)>,
}

/// What a log entry holds.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryBody {
    /// The entry a new leader appends.
    Blank,
    /// Clients' writes, applied in order at the entry's index: one command (stored as kind
    /// Normal), or several proposed together (kind Batch: 2 to [`MAX_ENTRY_COMMANDS`] data
    /// operations, never a space's creation or drop). Shared, not copied, between the log in
    /// memory, the WAL's encoder and the messages to other nodes.
    Commands(Arc<[Command]>),
    Membership(RaftMembership),
}

/// One raft log entry (operation code 10).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub pos: LogPos,
    pub body: EntryBody,
}

/// The most sets in a membership (two during a joint change; a bound for decoding).
pub const MAX_MEMBERSHIP_CONFIGS: usize = 8;
/// The most nodes a membership names.
pub const MAX_MEMBERSHIP_NODES: usize = 1024;
/// The longest idempotency key (API.md: at most 128 characters).
pub const MAX_REQUEST_KEY: usize = 128;
/// The most commands one batch entry carries.
pub const MAX_ENTRY_COMMANDS: usize = 1024;

impl RaftMembership {
    /// u32 set count (1 to 8), each a u32 count and that many u64 ids; u32 node count, each
    /// a u64 id, a u16-prefixed name and a u16-prefixed address. Ids ascending, none twice
    /// (in each set and in the node list): the form decoding accepts.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.configs.len() as u32);
        for set in &self.configs {
            put_u32(out, set.len() as u32);
            for id in set {
                put_u64(out, *id);
            }
        }
        put_u32(out, self.nodes.len() as u32);
        for n in &self.nodes {
            put_u64(out, n.id);
            put_str16(out, &n.name);
            put_str16(out, &n.address);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<RaftMembership> {
        let n = r.u32("membership sets")? as usize;
        if n == 0 || n > MAX_MEMBERSHIP_CONFIGS {
            return corrupted(format!("a membership of {n} voter sets"));
        }
        let mut configs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.u32("voter count")? as usize;
            if k > MAX_MEMBERSHIP_NODES || k > r.remaining() / 8 {
                return corrupted(format!("a voter set of {k} nodes"));
            }
            let mut set: Vec<u64> = Vec::with_capacity(k);
            for _ in 0..k {
                let id = r.u64("voter")?;
                // One canonical form: ascending, no node twice.
                if set.last().is_some_and(|&last| last >= id) {
                    return corrupted("a voter set out of order or with a node twice");
                }
                set.push(id);
            }
            configs.push(set);
        }
        let k = r.u32("node count")? as usize;
        // Each node takes at least 12 bytes: a bound before allocating.
        if k > MAX_MEMBERSHIP_NODES || k > r.remaining() / 12 {
            return corrupted(format!("a membership of {k} nodes"));
        }
        let mut nodes: Vec<RaftNode> = Vec::with_capacity(k);
        for _ in 0..k {
            let id = r.u64("node id")?;
            if nodes.last().is_some_and(|last| last.id >= id) {
                return corrupted("membership nodes out of order or a node twice");
            }
            nodes.push(RaftNode {
                id,
                name: r.str16("node name")?.to_string(),
                address: r.str16("node address")?.to_string(),
            });
        }
        Ok(RaftMembership { configs, nodes })
    }
}

/// What a replicated space has applied of its group's log: kept in its state, captured when
/// a memtable is frozen, and written as `raft.state` once that memtable is in a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftApplied {
    /// The last entry applied.
    pub applied: Option<LogPos>,
    /// The entry of the newest membership applied (`None`: the initial, empty one).
    pub membership_at: Option<LogPos>,
    pub membership: RaftMembership,
}

/// The file holding a replicated space's [`RaftApplied`].
pub const RAFT_STATE_FILE: &str = "raft.state";
const RAFT_STATE_MAGIC: [u8; 8] = *b"ENGRRFT\0";
/// Version 2 adds the requests table; version 1 (without it) still reads.
const RAFT_STATE_VERSION: u32 = 2;

impl RaftApplied {
    /// `raft.state` with an empty requests table (see [`RaftApplied::encode_with`]).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(&Requests::default())
    }

    /// `raft.state`: magic "ENGRRFT\0", u32 version (2), u8 flags (bit 0 applied, bit 1
    /// membership_at), the positions present (u64 term, u64 index each), a membership flag
    /// (u8: 1 when a membership follows) and the membership, then (version 2) u32 length and
    /// the space's requests table as of the same entry ([`Requests::encode`]), then crc32c of
    /// all before it. One file, so the two never disagree.
    pub fn encode_with(&self, requests: &Requests) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&RAFT_STATE_MAGIC);
        put_u32(&mut b, RAFT_STATE_VERSION);
        let flags =
            u8::from(self.applied.is_some()) | (u8::from(self.membership_at.is_some()) << 1);
        b.push(flags);
        for p in self.applied.iter().chain(self.membership_at.iter()) {
            put_pos(&mut b, p);
        }
        if self.membership.configs.is_empty() {
            b.push(0);
        } else {
            b.push(1);
            self.membership.encode(&mut b);
        }
        let table = requests.encode();
        put_u32(&mut b, table.len() as u32);
        b.extend_from_slice(&table);
        let crc = crc32c::crc32c(&b);
        put_u32(&mut b, crc);
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<RaftApplied> {
        Ok(RaftApplied::decode_with(bytes)?.0)
    }

    /// `raft.state` with its requests table (empty in a version 1 file).
    pub fn decode_with(bytes: &[u8]) -> Result<(RaftApplied, Requests)> {
        if bytes.len() < 4 {
            return corrupted("raft.state: too short");
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return corrupted("raft.state: checksum mismatch");
        }
        let mut r = Reader::new(body);
        if r.take(8, "magic")? != RAFT_STATE_MAGIC {
            return corrupted("raft.state: bad magic");
        }
        let version = r.u32("version")?;
        if version != 1 && version != RAFT_STATE_VERSION {
            return Err(crate::error::StorageError::UnsupportedVersion(format!(
                "raft.state version {version} is not supported (this build reads 1 and {RAFT_STATE_VERSION})"
            )));
        }
        let flags = r.u8("flags")?;
        if flags & !0b11 != 0 {
            return corrupted(format!("raft.state: flags {flags:#x}"));
        }
        let applied = if flags & 1 != 0 {
            Some(read_pos(&mut r, "applied")?)
        } else {
            None
        };
        let membership_at = if flags & 2 != 0 {
            Some(read_pos(&mut r, "membership log id")?)
        } else {
            None
        };
        let membership = match r.u8("membership flag")? {
            0 => RaftMembership::default(),
            1 => RaftMembership::decode(&mut r)?,
            other => return corrupted(format!("raft.state: membership flag {other}")),
        };
        let requests = if version >= 2 {
            let n = r.u32("requests length")? as usize;
            Requests::decode(r.take(n, "requests")?)?
        } else {
            Requests::default()
        };
        r.finish("raft.state")?;
        Ok((
            RaftApplied {
                applied,
                membership_at,
                membership,
            },
            requests,
        ))
    }
}

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const KIND_BATCH: u8 = 3;

fn put_pos(out: &mut Vec<u8>, p: &LogPos) {
    put_u64(out, p.term);
    put_u64(out, p.index);
}

fn read_pos(r: &mut Reader<'_>, what: &str) -> Result<LogPos> {
    Ok(LogPos {
        term: r.u64(what)?,
        index: r.u64(what)?,
    })
}

/// A command's idempotency key: u8 flag, then (if 1) `str16` key and `i64` time received.
pub(crate) fn encode_request(request: &Option<(String, i64)>, out: &mut Vec<u8>) {
    match request {
        None => out.push(0),
        Some((key, at)) => {
            out.push(1);
            put_str16(out, key);
            put_i64(out, *at);
        }
    }
}

pub(crate) fn decode_request(r: &mut Reader<'_>) -> Result<Option<(String, i64)>> {
    Ok(match r.u8("request flag")? {
        0 => None,
        1 => {
            let key = r.str16("idempotency key")?;
            if key.is_empty() || key.len() > MAX_REQUEST_KEY {
                return corrupted(format!("an idempotency key of {} bytes", key.len()));
            }
            Some((key.to_string(), r.i64("request time")?))
        }
        other => return corrupted(format!("request flag {other}")),
    })
}

/// A command's operation code: a data operation (1 to 9).
fn command_code(r: &mut Reader<'_>) -> Result<u8> {
    let op_code = r.u8("command operation")?;
    if !(code::REMEMBER..=code::AUTO_LINKS).contains(&op_code) && op_code != code::META {
        return corrupted(format!("operation {op_code} inside a log entry"));
    }
    Ok(op_code)
}

impl LogEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_pos(out, &self.pos);
        match &self.body {
            EntryBody::Blank => out.push(KIND_BLANK),
            EntryBody::Commands(cs) if cs.len() == 1 => {
                let c = &cs[0];
                out.push(KIND_NORMAL);
                encode_request(&c.request, out);
                out.push(c.op.code());
                c.op.encode_payload(out);
            }
            EntryBody::Membership(m) => {
                out.push(KIND_MEMBERSHIP);
                m.encode(out);
            }
            EntryBody::Commands(cs) => {
                out.push(KIND_BATCH);
                put_u32(out, cs.len() as u32);
                for c in cs.iter() {
                    encode_request(&c.request, out);
                    out.push(c.op.code());
                    let at = out.len();
                    put_u32(out, 0);
                    c.op.encode_payload(out);
                    let len = (out.len() - at - 4) as u32;
                    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
                }
            }
        }
    }

    /// Decodes the payload of operation 10; consumes it all. Never panics.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<LogEntry> {
        let pos = read_pos(r, "entry log id")?;
        let body = match r.u8("entry kind")? {
            KIND_BLANK => EntryBody::Blank,
            KIND_NORMAL => {
                let request = decode_request(r)?;
                let op_code = command_code(r)?;
                let rest = r.take(r.remaining(), "command payload")?;
                let op = Op::decode_payload(op_code, rest)?;
                EntryBody::Commands(Arc::new([Command { op, request }]))
            }
            KIND_MEMBERSHIP => EntryBody::Membership(RaftMembership::decode(r)?),
            KIND_BATCH => {
                let n = r.u32("batch commands")? as usize;
                if !(2..=MAX_ENTRY_COMMANDS).contains(&n) {
                    return corrupted(format!("a batch entry of {n} commands"));
                }
                let mut cs = Vec::with_capacity(n.min(r.remaining() / 6));
                for _ in 0..n {
                    let request = decode_request(r)?;
                    let op_code = command_code(r)?;
                    let len = r.u32("command length")? as usize;
                    let op = Op::decode_payload(op_code, r.take(len, "command payload")?)?;
                    if !op.is_data() {
                        return corrupted(format!("operation {op_code} in a batch entry"));
                    }
                    cs.push(Command { op, request });
                }
                EntryBody::Commands(cs.into())
            }
            other => return corrupted(format!("log entry kind {other}")),
        };
        Ok(LogEntry { pos, body })
    }
}

impl GroupMeta {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let flags = u8::from(self.vote.is_some())
            | (u8::from(self.committed.is_some()) << 1)
            | (u8::from(self.purged.is_some()) << 2)
            | (u8::from(self.creation != 0) << 3);
        out.push(flags);
        if let Some(v) = &self.vote {
            put_u64(out, v.term);
            put_u64(out, v.node);
            out.push(u8::from(v.committed));
        }
        if let Some(p) = &self.committed {
            put_pos(out, p);
        }
        if let Some(p) = &self.purged {
            put_pos(out, p);
        }
        if self.creation != 0 {
            put_u64(out, self.creation);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<GroupMeta> {
        let flags = r.u8("raft state flags")?;
        if flags & !0b1111 != 0 {
            return corrupted(format!("raft state flags {flags:#x}"));
        }
        let vote = if flags & 1 != 0 {
            let term = r.u64("vote term")?;
            let node = r.u64("vote node")?;
            let committed = match r.u8("vote committed")? {
                0 => false,
                1 => true,
                other => return corrupted(format!("vote committed flag {other}")),
            };
            Some(RaftVote {
                term,
                node,
                committed,
            })
        } else {
            None
        };
        let committed = if flags & 2 != 0 {
            Some(read_pos(r, "committed log id")?)
        } else {
            None
        };
        let purged = if flags & 4 != 0 {
            Some(read_pos(r, "purged log id")?)
        } else {
            None
        };
        let creation = if flags & 8 != 0 {
            match r.u64("creation")? {
                0 => return corrupted("a creation flag with creation 0"),
                c => c,
            }
        } else {
            0
        };
        Ok(GroupMeta {
            vote,
            committed,
            purged,
            creation,
        })
    }
}

/// Operation 12's payload: entries after `after` are void (all of them when `None`).
pub(crate) fn encode_truncate(after: &Option<LogPos>, out: &mut Vec<u8>) {
    match after {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_pos(out, p);
        }
    }
}

pub(crate) fn decode_truncate(r: &mut Reader<'_>) -> Result<Option<LogPos>> {
    match r.u8("truncate flag")? {
        0 => Ok(None),
        1 => Ok(Some(read_pos(r, "truncate after")?)),
        other => corrupted(format!("truncate flag {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::MemoryId;

    fn round_trip(op: Op) {
        let mut buf = Vec::new();
        op.encode_payload(&mut buf);
        assert_eq!(Op::decode_payload(op.code(), &buf).unwrap(), op);
        // Every strict prefix is refused, never a panic.
        for cut in 0..buf.len() {
            assert!(Op::decode_payload(op.code(), &buf[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn raft_records_round_trip() {
        let pos = LogPos { term: 3, index: 17 };
        round_trip(Op::RaftEntry(Box::new(LogEntry {
            pos,
            body: EntryBody::Blank,
        })));
        round_trip(Op::RaftEntry(Box::new(LogEntry {
            pos,
            body: EntryBody::Commands(Arc::new([Command {
                op: Op::Forget(MemoryId::new("m-1").unwrap()),
                request: Some(("key-1".into(), 1_700_000_000_000_000)),
            }])),
        })));
        round_trip(Op::RaftEntry(Box::new(LogEntry {
            pos,
            body: EntryBody::Commands(Arc::new([Command {
                op: Op::SpaceDrop,
                request: None,
            }])),
        })));
        round_trip(Op::RaftEntry(Box::new(LogEntry {
            pos,
            body: EntryBody::Membership(RaftMembership {
                configs: vec![vec![1, 2, 3], vec![2, 3, 4]],
                nodes: (1..=4)
                    .map(|id| RaftNode {
                        id,
                        name: format!("n{id}"),
                        address: format!("127.0.0.1:{}", 7000 + id),
                    })
                    .collect(),
            }),
        })));
        round_trip(Op::RaftEntry(Box::new(LogEntry {
            pos,
            body: EntryBody::Commands(Arc::from(vec![
                Command {
                    op: Op::Forget(MemoryId::new("m-1").unwrap()),
                    request: Some(("key-1".into(), 1_700_000_000_000_000)),
                },
                Command {
                    op: Op::Link {
                        from: MemoryId::new("a").unwrap(),
                        to: MemoryId::new("b").unwrap(),
                        weight: 0.5,
                    },
                    request: None,
                },
                Command {
                    op: Op::Unlink {
                        from: MemoryId::new("a").unwrap(),
                        to: MemoryId::new("b").unwrap(),
                    },
                    request: None,
                },
            ])),
        })));
        round_trip(Op::RaftMeta(GroupMeta::default()));
        round_trip(Op::RaftMeta(GroupMeta {
            vote: Some(RaftVote {
                term: 9,
                node: 2,
                committed: true,
            }),
            committed: Some(pos),
            purged: Some(LogPos { term: 1, index: 4 }),
            creation: 0,
        }));
        round_trip(Op::RaftMeta(GroupMeta {
            vote: None,
            committed: None,
            purged: Some(LogPos { term: 1, index: 4 }),
            creation: 41,
        }));
        round_trip(Op::RaftTruncate(None));
        round_trip(Op::RaftTruncate(Some(pos)));
    }

    #[test]
    fn raft_state_file_round_trips_and_detects_damage() {
        let states = [
            RaftApplied::default(),
            RaftApplied {
                applied: Some(LogPos { term: 2, index: 40 }),
                membership_at: Some(LogPos { term: 1, index: 1 }),
                membership: RaftMembership {
                    configs: vec![vec![1, 2, 3]],
                    nodes: vec![RaftNode {
                        id: 1,
                        name: "a".into(),
                        address: "127.0.0.1:1".into(),
                    }],
                },
            },
        ];
        for s in states {
            let bytes = s.encode();
            assert_eq!(RaftApplied::decode(&bytes).unwrap(), s);
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x10;
                assert!(RaftApplied::decode(&b).is_err(), "flipped byte {i}");
            }
            for cut in 0..bytes.len() {
                assert!(RaftApplied::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn nested_raft_records_are_refused() {
        let inner = Op::RaftTruncate(None);
        let mut buf = Vec::new();
        put_pos(&mut buf, &LogPos { term: 1, index: 1 });
        buf.push(KIND_NORMAL);
        buf.push(0);
        buf.push(inner.code());
        inner.encode_payload(&mut buf);
        assert!(Op::decode_payload(code::RAFT_ENTRY, &buf).is_err());
    }
}
