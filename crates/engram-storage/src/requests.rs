//! A replicated space's table of client requests: the `Idempotency-Key`s of the writes it
//! applied in the last ten minutes, each with the first answer, so that a repeat (a client's
//! retry after a timeout or a failover, through any node) is answered as the first was and
//! changes nothing.
//!
//! The table is part of the state machine: every replica builds it alike from the log (an
//! entry carries its key and the time the leader received it), and "ten minutes" is measured
//! in those times, never in a replica's own clock. An entry whose key the table holds, applied
//! earlier and within ten minutes of the entry's time, is a repeat: skipped, answered with
//! the first answer. A memtable freeze captures the table (a persistent map: the capture is a
//! pointer copy), and the flush that makes that memtable a segment writes it inside the space's
//! `raft.state`: one file, so the table and the applied index always say the same point of
//! the log, and a snapshot carries both. Layout: `docs/format.md`, "Replicated spaces".

use engram_core::limits::MAX_BATCH;
use engram_core::{Link, MemoryId};
use imbl::OrdMap;

use crate::codec::*;
use crate::error::{corrupted, Result, StorageError};
use crate::op::{decode_links, encode_links, Op};
use crate::raft::MAX_REQUEST_KEY;

/// How long a key is remembered, in the entries' own time: ten minutes.
pub const REQUEST_TTL_US: i64 = 10 * 60 * 1_000_000;
/// At most this many keys per space; beyond it the oldest are forgotten first (a repeat of a
/// forgotten key is applied again).
pub const MAX_REQUESTS: usize = 200_000;
const MAGIC: [u8; 8] = *b"ENGRREQ\0";
/// An unreplicated space's table, in its directory (a replicated space keeps it in
/// `raft.state`): see [`encode_table_file`].
pub const REQUESTS_FILE: &str = "requests.table";
const FILE_MAGIC: [u8; 8] = *b"ENGRKEYS";
const FILE_VERSION: u32 = 1;

/// `requests.table`: magic "ENGRKEYS", `u32` version (1), `u64` the sequence the table is as of
/// (every record up to it applied, none after), `u32` length and the table
/// ([`Requests::encode`]), then crc32c of all before it.
pub fn encode_table_file(table: &Requests, as_of: u64) -> Vec<u8> {
    let body = table.encode();
    let mut b = Vec::with_capacity(28 + body.len());
    b.extend_from_slice(&FILE_MAGIC);
    put_u32(&mut b, FILE_VERSION);
    put_u64(&mut b, as_of);
    put_u32(&mut b, body.len() as u32);
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b);
    put_u32(&mut b, crc);
    b
}

/// A reader of `bytes` past their magic and version, once their trailing crc32c matches.
fn checked<'a>(bytes: &'a [u8], magic: &[u8; 8], version: u32, what: &str) -> Result<Reader<'a>> {
    if bytes.len() < 4 {
        return corrupted(format!("{what}: too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return corrupted(format!("{what}: checksum mismatch"));
    }
    let mut r = Reader::new(body);
    if r.take(8, "magic")? != magic {
        return corrupted(format!("{what}: bad magic"));
    }
    let found = r.u32("version")?;
    if found != version {
        return Err(StorageError::UnsupportedVersion(format!(
            "{what} version {found} is not supported (this build reads {version})"
        )));
    }
    Ok(r)
}

/// Reads `requests.table` (see [`encode_table_file`]): the table and the sequence it is as of.
pub fn decode_table_file(bytes: &[u8]) -> Result<(Requests, u64)> {
    let mut r = checked(bytes, &FILE_MAGIC, FILE_VERSION, "requests.table")?;
    let as_of = r.u64("as of")?;
    let n = r.u32("table length")? as usize;
    let table = Requests::decode(r.take(n, "table")?)?;
    r.finish("requests.table")?;
    Ok((table, as_of))
}
const VERSION: u32 = 1;

/// A memory as a write's answer names it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMemory {
    pub id: MemoryId,
    pub confidence: f32,
    /// Its links (kept for a write of one memory, the only answer that shows them).
    pub links: Vec<Link>,
}

/// What a write did, enough to answer it again.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Memories stored, at the entry's time.
    Stored(Vec<StoredMemory>),
    /// A memory deleted; `existed`: whether the space held it.
    Forgot {
        id: MemoryId,
        existed: bool,
    },
    Linked {
        from: MemoryId,
        to: MemoryId,
        weight: f32,
    },
    Unlinked {
        from: MemoryId,
        to: MemoryId,
    },
    SpaceCreated,
    SpaceDropped,
    /// What a command of the cluster's metadata group came to (its bytes are the metadata
    /// layer's): carried back to the node that proposed it, never recorded in a table.
    Meta(Vec<u8>),
}

impl Answer {
    /// The answer of `op` (a data operation); `existed` says whether the space held the
    /// memory a `Forget` names, before the forget.
    pub(crate) fn of(op: &Op, existed: impl FnOnce(&MemoryId) -> bool) -> Option<Answer> {
        let stored = |m: &engram_core::Memory, links: bool| StoredMemory {
            id: m.id.clone(),
            confidence: m.confidence,
            links: if links { m.links.clone() } else { Vec::new() },
        };
        Some(match op {
            Op::Remember(m) => Answer::Stored(vec![stored(m, true)]),
            Op::RememberBatch(ms) => {
                Answer::Stored(ms.iter().map(|m| stored(m, ms.len() == 1)).collect())
            }
            Op::RememberAutoLink(ms) => {
                Answer::Stored(ms.iter().map(|(m, _)| stored(m, ms.len() == 1)).collect())
            }
            Op::Forget(id) => Answer::Forgot {
                id: id.clone(),
                existed: existed(id),
            },
            Op::Link { from, to, weight } => Answer::Linked {
                from: from.clone(),
                to: to.clone(),
                weight: *weight,
            },
            Op::Unlink { from, to } => Answer::Unlinked {
                from: from.clone(),
                to: to.clone(),
            },
            Op::SpaceCreate { .. } => Answer::SpaceCreated,
            Op::SpaceDrop => Answer::SpaceDropped,
            Op::AutoLinks(_)
            | Op::RaftEntry(_)
            | Op::RaftMeta(_)
            | Op::RaftTruncate(_)
            | Op::Request(_)
            | Op::Meta(_) => return None,
        })
    }

    /// Appends the answer's encoding (u8 kind, then its fields) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Answer::Stored(ms) => {
                out.push(1);
                put_u32(out, ms.len() as u32);
                for m in ms {
                    put_str16(out, m.id.as_str());
                    put_f32(out, m.confidence);
                    encode_links(&m.links, out);
                }
            }
            Answer::Forgot { id, existed } => {
                out.push(2);
                put_str16(out, id.as_str());
                out.push(u8::from(*existed));
            }
            Answer::Linked { from, to, weight } => {
                out.push(3);
                put_str16(out, from.as_str());
                put_str16(out, to.as_str());
                put_f32(out, *weight);
            }
            Answer::Unlinked { from, to } => {
                out.push(4);
                put_str16(out, from.as_str());
                put_str16(out, to.as_str());
            }
            Answer::SpaceCreated => out.push(5),
            Answer::SpaceDropped => out.push(6),
            Answer::Meta(bytes) => {
                out.push(7);
                put_u32(out, bytes.len() as u32);
                out.extend_from_slice(bytes);
            }
        }
    }

    /// Reads an answer [`Answer::encode`] wrote; never panics on hostile bytes.
    pub fn decode(r: &mut Reader<'_>) -> Result<Answer> {
        let id = |r: &mut Reader<'_>, what: &str| {
            MemoryId::new(r.str16(what)?)
                .map_err(|e| StorageError::Corrupted(format!("{what}: {e}")))
        };
        Ok(match r.u8("answer kind")? {
            1 => {
                let n = r.u32("answer memories")? as usize;
                if n > MAX_BATCH {
                    return corrupted(format!("an answer of {n} memories exceeds {MAX_BATCH}"));
                }
                let mut ms = Vec::with_capacity(n.min(r.remaining() / 8));
                for _ in 0..n {
                    ms.push(StoredMemory {
                        id: id(r, "answer memory id")?,
                        confidence: r.f32("answer confidence")?,
                        links: decode_links(r)?,
                    });
                }
                Answer::Stored(ms)
            }
            2 => Answer::Forgot {
                id: id(r, "forgotten id")?,
                existed: match r.u8("existed")? {
                    0 => false,
                    1 => true,
                    b => return corrupted(format!("existed flag {b}")),
                },
            },
            3 => Answer::Linked {
                from: id(r, "link from")?,
                to: id(r, "link to")?,
                weight: r.f32("link weight")?,
            },
            4 => Answer::Unlinked {
                from: id(r, "unlink from")?,
                to: id(r, "unlink to")?,
            },
            5 => Answer::SpaceCreated,
            6 => Answer::SpaceDropped,
            7 => {
                let n = r.u32("metadata answer length")? as usize;
                Answer::Meta(r.take(n, "metadata answer")?.to_vec())
            }
            k => return corrupted(format!("answer kind {k}")),
        })
    }
}

/// One remembered request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// When the leader received it (µs since the epoch, the leader's clock).
    pub at_us: i64,
    /// The log index of the entry that applied it, and its place among the entry's commands.
    pub index: u64,
    pub slot: u32,
    pub answer: Answer,
}

/// The table (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requests {
    by_key: OrdMap<String, RequestRecord>,
    /// (time, index, slot) → key: the order in which keys are forgotten.
    by_time: OrdMap<(i64, u64, u32), String>,
    /// The newest entry time applied: a key older than this by more than the TTL is dead.
    newest_us: i64,
}

impl Requests {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The live record of `key` as of `now_us` (a leader answering a repeat before it
    /// proposes anything).
    pub fn get(&self, key: &str, now_us: i64) -> Option<&RequestRecord> {
        let rec = self.by_key.get(key)?;
        let horizon = self.newest_us.max(now_us).saturating_sub(REQUEST_TTL_US);
        (rec.at_us >= horizon).then_some(rec)
    }

    /// The first record of the request the command at `slot` of the entry at `index`
    /// (received at `at_us`) repeats, if it repeats one.
    pub fn repeat_of(
        &self,
        key: &str,
        index: u64,
        slot: u32,
        at_us: i64,
    ) -> Option<&RequestRecord> {
        let rec = self.by_key.get(key)?;
        let horizon = self.newest_us.max(at_us).saturating_sub(REQUEST_TTL_US);
        ((rec.index, rec.slot) < (index, slot) && rec.at_us >= horizon).then_some(rec)
    }

    /// Remembers the request applied at `slot` of the entry at `index`, then forgets what is
    /// dead or beyond [`MAX_REQUESTS`]. A record of a later command for the key is kept (a
    /// replay).
    pub fn record(&mut self, key: &str, index: u64, slot: u32, at_us: i64, answer: Answer) {
        if let Some(old) = self.by_key.get(key) {
            if (old.index, old.slot) > (index, slot) {
                return;
            }
            let place = (old.at_us, old.index, old.slot);
            self.by_time.remove(&place);
        }
        self.by_key.insert(
            key.to_string(),
            RequestRecord {
                at_us,
                index,
                slot,
                answer,
            },
        );
        self.by_time.insert((at_us, index, slot), key.to_string());
        self.newest_us = self.newest_us.max(at_us);
        let horizon = self.newest_us.saturating_sub(REQUEST_TTL_US);
        while let Some((&(t, i, j), k)) = self.by_time.get_min().map(|(p, k)| (p, k)) {
            if t >= horizon && self.by_key.len() <= MAX_REQUESTS {
                break;
            }
            let k = k.clone();
            self.by_time.remove(&(t, i, j));
            self.by_key.remove(&k);
        }
    }

    /// The table as `raft.state` holds it: magic "ENGRREQ\0", u32 version (1), i64 newest entry time, u32
    /// count, then per key (oldest first: ascending time, index, slot): str16 key, i64 time,
    /// u64 index, u32 slot, the answer; then crc32c of all before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + self.by_key.len() * 64);
        b.extend_from_slice(&MAGIC);
        put_u32(&mut b, VERSION);
        put_i64(&mut b, self.newest_us);
        put_u32(&mut b, self.by_time.len() as u32);
        for (&(at_us, index, slot), key) in self.by_time.iter() {
            put_str16(&mut b, key);
            put_i64(&mut b, at_us);
            put_u64(&mut b, index);
            put_u32(&mut b, slot);
            if let Some(rec) = self.by_key.get(key) {
                rec.answer.encode(&mut b);
            }
        }
        let crc = crc32c::crc32c(&b);
        put_u32(&mut b, crc);
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Requests> {
        let mut r = checked(bytes, &MAGIC, VERSION, "requests")?;
        let newest_us = r.i64("newest time")?;
        let n = r.u32("count")? as usize;
        if n > MAX_REQUESTS {
            return corrupted(format!("requests: {n} keys exceed {MAX_REQUESTS}"));
        }
        let mut t = Requests {
            newest_us,
            ..Requests::default()
        };
        for _ in 0..n {
            let key = r.str16("key")?;
            if key.is_empty() || key.len() > MAX_REQUEST_KEY {
                return corrupted(format!("requests: a key of {} bytes", key.len()));
            }
            let at_us = r.i64("time")?;
            let index = r.u64("index")?;
            let slot = r.u32("slot")?;
            let answer = Answer::decode(&mut r)?;
            let place = (at_us, index, slot);
            if t.by_time.get_max().is_some_and(|(last, _)| *last >= place) {
                return corrupted("requests: keys out of order");
            }
            t.by_time.insert(place, key.to_string());
            if t.by_key
                .insert(
                    key.to_string(),
                    RequestRecord {
                        at_us,
                        index,
                        slot,
                        answer,
                    },
                )
                .is_some()
            {
                return corrupted(format!("requests: key {key:?} twice"));
            }
        }
        r.finish("requests")?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests;
