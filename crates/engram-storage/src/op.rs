//! The operations a WAL record carries, and their payload encoding (WAL format version 4,
//! see `docs/format.md`; version 3 has every operation but the keyed write (code 13), version 2
//! not the raft records (codes 10 to 12) either, version 1 neither those nor the automatic-link
//! pair).

use std::collections::BTreeMap;

use engram_core::limits::*;
use engram_core::{Link, Memory, MemoryId};

use crate::codec::*;
use crate::error::{corrupted, Result};
use crate::raft::{
    decode_request, decode_truncate, encode_request, encode_truncate, Command, EntryBody,
    GroupMeta, LogEntry, LogPos,
};

/// What a WAL record does to its space.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Store (or replace) one memory.
    Remember(Memory),
    /// Store several memories, all or nothing.
    RememberBatch(Vec<Memory>),
    /// Delete a memory (a tombstone).
    Forget(MemoryId),
    /// Add or reweight the link `from -> to`.
    Link {
        from: MemoryId,
        to: MemoryId,
        weight: f32,
    },
    /// Remove the link `from -> to`.
    Unlink { from: MemoryId, to: MemoryId },
    /// Create the space. `embedder` names the text embedder of the space (empty: the
    /// built-in hashing embedder); encoded only when set, so that records of spaces without
    /// one are byte for byte what earlier versions wrote.
    SpaceCreate {
        dimension: u32,
        created_at_us: i64,
        embedder: String,
    },
    /// Drop the space and everything in it.
    SpaceDrop,
    /// Store several memories, all or nothing, each marked whether its automatic links are
    /// still to be made (after the acknowledgement: by the store's linker, or as its
    /// memtable is flushed). Format version 2.
    RememberAutoLink(Vec<(Memory, bool)>),
    /// The automatic links made for memories stored with links pending, each named by its id
    /// and its pending key (the sequence of the record that stored it and its place in that
    /// record): a memory still pending in the active memtable under that key gets these links
    /// added and is no longer pending. Format version 2.
    AutoLinks(Vec<AutoLinked>),
    /// One entry of the space's raft log (a replicated space). Format version 3.
    RaftEntry(Box<LogEntry>),
    /// The space's raft group state: vote, commit and purge points. Format version 3.
    RaftMeta(GroupMeta),
    /// The space's raft log entries after this one are void (all of them when `None`).
    /// Format version 3.
    RaftTruncate(Option<LogPos>),
    /// A client's write to an unreplicated space that carries an `Idempotency-Key`: the
    /// operation (a memory write, a link, a forget, or the space's creation) and the key with
    /// the time it was received. Applying it records the key and the write's answer in the
    /// space's requests table. Format version 4.
    Request(Box<Command>),
    /// A command of the cluster's metadata group (its bytes are the metadata layer's, see
    /// `engram-replication`'s `meta`): only ever inside a log entry of that group, never a
    /// record of its own nor a command of a space's group. Format version 5.
    Meta(Vec<u8>),
}

/// One memory's entry in [`Op::AutoLinks`].
#[derive(Debug, Clone, PartialEq)]
pub struct AutoLinked {
    pub id: MemoryId,
    /// The sequence of the record that stored the version linked, and its place in it.
    pub key: (u64, u32),
    pub links: Vec<Link>,
}

/// Operation codes, the `op` byte of a record header.
pub mod code {
    pub const REMEMBER: u8 = 1;
    pub const REMEMBER_BATCH: u8 = 2;
    pub const FORGET: u8 = 3;
    pub const LINK: u8 = 4;
    pub const UNLINK: u8 = 5;
    pub const SPACE_CREATE: u8 = 6;
    pub const SPACE_DROP: u8 = 7;
    pub const REMEMBER_AUTO_LINK: u8 = 8;
    pub const AUTO_LINKS: u8 = 9;
    pub const RAFT_ENTRY: u8 = 10;
    pub const RAFT_META: u8 = 11;
    pub const RAFT_TRUNCATE: u8 = 12;
    pub const REQUEST: u8 = 13;
    pub const META: u8 = 14;
}

impl Op {
    pub fn code(&self) -> u8 {
        match self {
            Op::Remember(_) => code::REMEMBER,
            Op::RememberBatch(_) => code::REMEMBER_BATCH,
            Op::Forget(_) => code::FORGET,
            Op::Link { .. } => code::LINK,
            Op::Unlink { .. } => code::UNLINK,
            Op::SpaceCreate { .. } => code::SPACE_CREATE,
            Op::SpaceDrop => code::SPACE_DROP,
            Op::RememberAutoLink(_) => code::REMEMBER_AUTO_LINK,
            Op::AutoLinks(_) => code::AUTO_LINKS,
            Op::RaftEntry(_) => code::RAFT_ENTRY,
            Op::RaftMeta(_) => code::RAFT_META,
            Op::RaftTruncate(_) => code::RAFT_TRUNCATE,
            Op::Request(_) => code::REQUEST,
            Op::Meta(_) => code::META,
        }
    }

    /// The operation itself: a keyed write's, else this one.
    pub fn inner(&self) -> &Op {
        match self {
            Op::Request(c) => &c.op,
            op => op,
        }
    }

    /// Whether the record belongs to a raft log (applied through the group, not at commit).
    pub fn is_raft(&self) -> bool {
        matches!(
            self,
            Op::RaftEntry(_) | Op::RaftMeta(_) | Op::RaftTruncate(_)
        )
    }

    /// Whether the operation is a change to a space's memories (codes 1 to 5, 8, 9): not a
    /// space's creation or drop, nor a raft record.
    pub fn is_data(&self) -> bool {
        let op = self.inner();
        !matches!(op, Op::SpaceCreate { .. } | Op::SpaceDrop | Op::Meta(_)) && !op.is_raft()
    }

    /// How many changes the operation carries: the memories of a batch, else one.
    pub fn changes(&self) -> usize {
        match self {
            Op::RememberBatch(ms) => ms.len(),
            Op::RememberAutoLink(ms) => ms.len(),
            Op::AutoLinks(ls) => ls.len(),
            Op::RaftEntry(e) => match &e.body {
                EntryBody::Commands(cs) => cs.iter().map(|c| c.op.changes()).sum(),
                _ => 0,
            },
            Op::RaftMeta(_) | Op::RaftTruncate(_) | Op::Meta(_) => 0,
            Op::Request(c) => c.op.changes(),
            _ => 1,
        }
    }

    /// Appends the payload encoding to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Op::Remember(m) => encode_memory(m, out),
            Op::RememberBatch(ms) => {
                put_u32(out, ms.len() as u32);
                for m in ms {
                    encode_memory(m, out);
                }
            }
            Op::Forget(id) => put_str16(out, id.as_str()),
            Op::Link { from, to, weight } => {
                put_str16(out, from.as_str());
                put_str16(out, to.as_str());
                put_f32(out, *weight);
            }
            Op::Unlink { from, to } => {
                put_str16(out, from.as_str());
                put_str16(out, to.as_str());
            }
            Op::SpaceCreate {
                dimension,
                created_at_us,
                embedder,
            } => {
                put_u32(out, *dimension);
                put_i64(out, *created_at_us);
                if !embedder.is_empty() {
                    put_str16(out, embedder);
                }
            }
            Op::SpaceDrop => {}
            Op::RememberAutoLink(ms) => {
                put_u32(out, ms.len() as u32);
                for (m, _) in ms {
                    encode_memory(m, out);
                }
                out.extend(ms.iter().map(|(_, pending)| u8::from(*pending)));
            }
            Op::AutoLinks(ls) => {
                put_u32(out, ls.len() as u32);
                for a in ls {
                    put_str16(out, a.id.as_str());
                    put_u64(out, a.key.0);
                    put_u32(out, a.key.1);
                    encode_links(&a.links, out);
                }
            }
            Op::RaftEntry(e) => e.encode(out),
            Op::RaftMeta(m) => m.encode(out),
            Op::RaftTruncate(after) => encode_truncate(after, out),
            Op::Request(c) => {
                encode_request(&c.request, out);
                out.push(c.op.code());
                c.op.encode_payload(out);
            }
            Op::Meta(bytes) => out.extend_from_slice(bytes),
        }
    }

    /// Decodes a payload. Never panics on arbitrary bytes.
    pub fn decode_payload(code: u8, payload: &[u8]) -> Result<Op> {
        let mut r = Reader::new(payload);
        let op = match code {
            code::REMEMBER => Op::Remember(decode_memory(&mut r)?),
            code::REMEMBER_BATCH => Op::RememberBatch(decode_batch(&mut r)?),
            code::FORGET => Op::Forget(memory_id(r.str16("memory id")?)?),
            code::LINK => Op::Link {
                from: memory_id(r.str16("link from")?)?,
                to: memory_id(r.str16("link to")?)?,
                weight: r.f32("link weight")?,
            },
            code::UNLINK => Op::Unlink {
                from: memory_id(r.str16("unlink from")?)?,
                to: memory_id(r.str16("unlink to")?)?,
            },
            code::SPACE_CREATE => Op::SpaceCreate {
                dimension: r.u32("dimension")?,
                created_at_us: r.i64("created_at")?,
                embedder: if r.remaining() > 0 {
                    let name = r.str16("embedder")?;
                    if name.is_empty() || name.len() > crate::meta::MAX_EMBEDDER_NAME {
                        return corrupted(format!("an embedder name of {} bytes", name.len()));
                    }
                    name.to_string()
                } else {
                    String::new()
                },
            },
            code::SPACE_DROP => Op::SpaceDrop,
            code::REMEMBER_AUTO_LINK => {
                let ms = decode_batch(&mut r)?;
                let n = ms.len();
                let flags = r.take(n, "auto-link flags")?;
                let mut out = Vec::with_capacity(n);
                for (m, f) in ms.into_iter().zip(flags) {
                    match f {
                        0 | 1 => out.push((m, *f == 1)),
                        other => return corrupted(format!("auto-link flag {other}")),
                    }
                }
                Op::RememberAutoLink(out)
            }
            code::AUTO_LINKS => {
                let n = r.u32("auto-link count")? as usize;
                // Each entry takes at least 17 bytes: a bound before allocating.
                if n > r.remaining() / 17 {
                    return corrupted(format!("{n} auto-link entries in a shorter payload"));
                }
                let mut ls = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = memory_id(r.str16("memory id")?)?;
                    let key = (r.u64("pending sequence")?, r.u32("pending place")?);
                    ls.push(AutoLinked {
                        id,
                        key,
                        links: decode_links(&mut r)?,
                    });
                }
                Op::AutoLinks(ls)
            }
            code::RAFT_ENTRY => Op::RaftEntry(Box::new(LogEntry::decode(&mut r)?)),
            code::RAFT_META => Op::RaftMeta(GroupMeta::decode(&mut r)?),
            code::RAFT_TRUNCATE => Op::RaftTruncate(decode_truncate(&mut r)?),
            code::META => Op::Meta(r.take(r.remaining(), "metadata command")?.to_vec()),
            code::REQUEST => {
                let Some(request) = decode_request(&mut r)? else {
                    return corrupted("a keyed write without its key");
                };
                let inner = r.u8("keyed operation")?;
                if !KEYED.contains(&inner) {
                    return corrupted(format!("operation {inner} in a keyed write"));
                }
                let rest = r.take(r.remaining(), "keyed operation payload")?;
                Op::Request(Box::new(Command {
                    op: Op::decode_payload(inner, rest)?,
                    request: Some(request),
                }))
            }
            other => return corrupted(format!("unknown operation code {other}")),
        };
        r.finish("operation payload")?;
        Ok(op)
    }
}

/// The operations a keyed write (code 13) may carry.
const KEYED: [u8; 7] = [
    code::REMEMBER,
    code::REMEMBER_BATCH,
    code::FORGET,
    code::LINK,
    code::UNLINK,
    code::SPACE_CREATE,
    code::REMEMBER_AUTO_LINK,
];

pub(crate) fn memory_id(s: &str) -> Result<MemoryId> {
    match MemoryId::new(s) {
        Ok(id) => Ok(id),
        Err(e) => corrupted(e.to_string()),
    }
}

/// Memory encoding: id (u16 len + bytes), confidence f32, timestamp i64, content (u32 len +
/// bytes), embedding (u32 dim + f32s), metadata (see [`encode_metadata`]), links (see
/// [`encode_links`]).
pub(crate) fn encode_memory(m: &Memory, out: &mut Vec<u8>) {
    out.reserve(32 + m.id.as_str().len() + m.content.len() + 4 * m.embedding.len());
    put_str16(out, m.id.as_str());
    put_f32(out, m.confidence);
    put_i64(out, m.timestamp_us);
    put_u32(out, m.content.len() as u32);
    out.extend_from_slice(m.content.as_bytes());
    put_u32(out, m.embedding.len() as u32);
    for v in &m.embedding {
        put_f32(out, *v);
    }
    encode_metadata(&m.metadata, out);
    encode_links(&m.links, out);
}

/// u16 count, then (u16 len + key, u16 len + value) per entry, keys ascending.
pub(crate) fn encode_metadata(meta: &BTreeMap<String, String>, out: &mut Vec<u8>) {
    put_u16(out, meta.len() as u16);
    for (k, v) in meta {
        put_str16(out, k);
        put_str16(out, v);
    }
}

/// u16 count, then (u16 len + target id, f32 weight) per link.
pub(crate) fn encode_links(links: &[Link], out: &mut Vec<u8>) {
    put_u16(out, links.len() as u16);
    for l in links {
        put_str16(out, l.to.as_str());
        put_f32(out, l.weight);
    }
}

/// `u32` count (at most [`MAX_BATCH`]), then that many memories.
fn decode_batch(r: &mut Reader<'_>) -> Result<Vec<Memory>> {
    let n = r.u32("batch count")? as usize;
    if n > MAX_BATCH {
        return corrupted(format!("batch of {n} memories exceeds {MAX_BATCH}"));
    }
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        ms.push(decode_memory(r)?);
    }
    Ok(ms)
}

pub(crate) fn decode_memory(r: &mut Reader<'_>) -> Result<Memory> {
    let id = memory_id(r.str16("memory id")?)?;
    let confidence = r.f32("confidence")?;
    let timestamp_us = r.i64("timestamp")?;
    let content_len = r.u32("content length")? as usize;
    if content_len > MAX_CONTENT_LEN {
        return corrupted(format!("content of {content_len} bytes exceeds the limit"));
    }
    let content = r.utf8(content_len, "content")?.to_string();
    let dim = r.u32("dimension")? as usize;
    if dim > MAX_DIMENSION {
        return corrupted(format!("dimension {dim} exceeds {MAX_DIMENSION}"));
    }
    let raw = r.take(dim * 4, "embedding")?;
    let embedding = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let metadata = decode_metadata(r)?;
    let links = decode_links(r)?;
    Ok(Memory {
        id,
        content,
        embedding,
        confidence,
        timestamp_us,
        metadata,
        links,
    })
}

pub(crate) fn decode_metadata(r: &mut Reader<'_>) -> Result<BTreeMap<String, String>> {
    let n = r.u16("metadata count")? as usize;
    if n > MAX_METADATA_ENTRIES {
        return corrupted(format!(
            "{n} metadata entries exceed {MAX_METADATA_ENTRIES}"
        ));
    }
    let mut meta = BTreeMap::new();
    for _ in 0..n {
        let k = r.str16("metadata key")?.to_string();
        let v = r.str16("metadata value")?.to_string();
        meta.insert(k, v);
    }
    Ok(meta)
}

pub(crate) fn decode_links(r: &mut Reader<'_>) -> Result<Vec<Link>> {
    let n = r.u16("link count")? as usize;
    if n > MAX_LINKS {
        return corrupted(format!("{n} links exceed {MAX_LINKS}"));
    }
    let mut links = Vec::with_capacity(n);
    for _ in 0..n {
        let to = memory_id(r.str16("link target")?)?;
        let weight = r.f32("link weight")?;
        links.push(Link { to, weight });
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_memory() -> impl Strategy<Value = Memory> {
        (
            "[a-zA-Z0-9_:.-]{1,40}",
            "\\PC{1,200}",
            proptest::collection::vec(-1.0f32..1.0, 0..40),
            0.0f32..=1.0,
            any::<i64>(),
            proptest::collection::btree_map("[a-z]{0,8}", "\\PC{0,16}", 0..4),
            proptest::collection::vec(("[a-z0-9]{1,20}", 0.01f32..=1.0), 0..5),
        )
            .prop_map(
                |(id, content, embedding, confidence, ts, metadata, links)| Memory {
                    id: MemoryId::new(id).unwrap(),
                    content,
                    embedding,
                    confidence,
                    timestamp_us: ts,
                    metadata,
                    links: links
                        .into_iter()
                        .map(|(to, weight)| Link {
                            to: MemoryId::new(to).unwrap(),
                            weight,
                        })
                        .collect(),
                },
            )
    }

    pub(crate) fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            arb_memory().prop_map(Op::Remember),
            proptest::collection::vec(arb_memory(), 0..4).prop_map(Op::RememberBatch),
            "[a-z0-9]{1,30}".prop_map(|s| Op::Forget(MemoryId::new(s).unwrap())),
            ("[a-z0-9]{1,30}", "[a-z0-9]{1,30}", 0.01f32..=1.0).prop_map(|(a, b, w)| Op::Link {
                from: MemoryId::new(a).unwrap(),
                to: MemoryId::new(b).unwrap(),
                weight: w
            }),
            ("[a-z0-9]{1,30}", "[a-z0-9]{1,30}").prop_map(|(a, b)| Op::Unlink {
                from: MemoryId::new(a).unwrap(),
                to: MemoryId::new(b).unwrap()
            }),
            (1u32..4096, any::<i64>(), "([a-z0-9:-]{1,40})?").prop_map(|(d, t, e)| {
                Op::SpaceCreate {
                    dimension: d,
                    created_at_us: t,
                    embedder: e,
                }
            }),
            Just(Op::SpaceDrop),
            proptest::collection::vec((arb_memory(), any::<bool>()), 0..4)
                .prop_map(Op::RememberAutoLink),
            proptest::collection::vec(
                (
                    "[a-z0-9]{1,30}",
                    any::<(u64, u32)>(),
                    proptest::collection::vec(("[a-z0-9]{1,20}", 0.01f32..=1.0), 0..4)
                ),
                0..4
            )
            .prop_map(|ls| Op::AutoLinks(
                ls.into_iter()
                    .map(|(id, key, links)| AutoLinked {
                        id: MemoryId::new(id).unwrap(),
                        key,
                        links: links
                            .into_iter()
                            .map(|(to, weight)| Link {
                                to: MemoryId::new(to).unwrap(),
                                weight
                            })
                            .collect()
                    })
                    .collect()
            )),
        ]
    }

    proptest! {
        #[test]
        fn op_round_trip(op in arb_op()) {
            let mut buf = Vec::new();
            op.encode_payload(&mut buf);
            let back = Op::decode_payload(op.code(), &buf).unwrap();
            prop_assert_eq!(back, op);
        }

        #[test]
        fn keyed_op_round_trip(op in arb_op(), key in "[ -~]{1,128}", at in any::<i64>()) {
            let keyed = Op::Request(Box::new(Command { op, request: Some((key, at)) }));
            let mut buf = Vec::new();
            keyed.encode_payload(&mut buf);
            let back = Op::decode_payload(keyed.code(), &buf);
            let Op::Request(c) = &keyed else { unreachable!() };
            if KEYED.contains(&c.op.code()) {
                prop_assert_eq!(back.unwrap(), keyed);
            } else {
                // A drop, or the linker's record, is never keyed.
                prop_assert!(back.is_err());
            }
        }

        #[test]
        fn decode_never_panics(code in 0u8..15, bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Op::decode_payload(code, &bytes);
        }
    }

    #[test]
    fn a_keyed_write_needs_its_key_and_holds_one_operation() {
        let forget = Op::Forget(MemoryId::new("m").unwrap());
        let mut unkeyed = vec![0u8, code::FORGET];
        forget.encode_payload(&mut unkeyed);
        assert!(Op::decode_payload(code::REQUEST, &unkeyed).is_err());
        let nested = Op::Request(Box::new(Command {
            op: Op::Request(Box::new(Command {
                op: forget,
                request: Some(("k".into(), 1)),
            })),
            request: Some(("k".into(), 1)),
        }));
        let mut buf = Vec::new();
        nested.encode_payload(&mut buf);
        assert!(Op::decode_payload(code::REQUEST, &buf).is_err());
    }
}
