//! The metadata's encodings: commands (in the metadata group's log), answers (in replies)
//! and the state (in snapshots). Every one starts with a `u8` version: this build writes
//! [`META_VERSION`] and reads 1 and 2 (version 2 adds the position of the last command
//! applied to the state and each space's creation; version 1 reads them as 0, "not known").
//! Decoding never panics and refuses unknown versions and kinds, trailing bytes and counts
//! past their bounds (fuzzed with the message codec: `fuzz/fuzz_targets/raft_codec.rs`).

use std::collections::BTreeMap;

use engram_cluster::{
    Departure, Epoch, NodeId, NodeInfo, PlacementConfig, PlacementTable, Retired, TokenStrategy,
};
use engram_core::SpaceId;
use engram_storage::codec::{put_i64, put_str16, put_u32, put_u64, Reader};

use super::state::*;
use crate::codec::CodecError;

fn short_str<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a str, CodecError> {
    let s = r.str16(what)?;
    if s.len() > MAX_ADDRESS {
        return bad(format!(
            "{what} of {} bytes (at most {MAX_ADDRESS})",
            s.len()
        ));
    }
    Ok(s)
}

fn space_id(r: &mut Reader<'_>) -> Result<SpaceId, CodecError> {
    SpaceId::new(r.str16("space id")?).map_err(|e| CodecError(e.to_string()))
}

fn put_node(out: &mut Vec<u8>, n: &NodeRecord) {
    put_str16(out, &n.name);
    put_str16(out, &n.http);
    put_str16(out, &n.cluster);
    put_str16(out, &n.rack);
    put_u32(out, n.capacity);
    out.push(n.state.code());
    put_u64(out, n.incarnation);
}

fn node(r: &mut Reader<'_>) -> Result<NodeRecord, CodecError> {
    let name = short_str(r, "node name")?;
    if !SpaceId::is_valid(name) {
        return bad(format!(
            "node name {name:?} (1-64 characters of a-z 0-9 _ -)"
        ));
    }
    Ok(NodeRecord {
        name: name.to_string(),
        http: short_str(r, "node URL")?.to_string(),
        cluster: short_str(r, "cluster address")?.to_string(),
        rack: short_str(r, "rack")?.to_string(),
        capacity: r.u32("capacity")?,
        state: NodeState::of(r.u8("node state")?)?,
        incarnation: r.u64("incarnation")?,
    })
}

fn put_space(out: &mut Vec<u8>, s: &SpaceRecord) {
    out.push(s.replicas.len() as u8);
    for id in &s.replicas {
        put_u64(out, *id);
    }
    put_u32(out, s.dimension);
    put_str16(out, &s.embedder);
    put_i64(out, s.created_at_us);
    put_u64(out, s.nonce);
    put_u64(out, s.creation);
}

fn space(r: &mut Reader<'_>, version: u8) -> Result<SpaceRecord, CodecError> {
    let n = r.u8("replica count")? as usize;
    if n == 0 || n > engram_cluster::limits::MAX_COPIES {
        return bad(format!("a replica set of {n} nodes"));
    }
    let replicas = (0..n)
        .map(|_| r.u64("replica"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpaceRecord {
        replicas,
        dimension: r.u32("dimension")?,
        embedder: short_str(r, "embedder")?.to_string(),
        created_at_us: r.i64("created at")?,
        nonce: r.u64("nonce")?,
        creation: if version >= 2 { r.u64("creation")? } else { 0 },
    })
}

mod kind {
    pub const INIT: u8 = 1;
    pub const JOIN: u8 = 2;
    pub const SET_STATE: u8 = 3;
    pub const CREATE_SPACE: u8 = 4;
    pub const DROP_SPACE: u8 = 5;
    pub const DROP_CREATION: u8 = 6;
    pub const DONE: u8 = 1;
    pub const REFUSED: u8 = 2;
    pub const SPACE: u8 = 3;
    pub const NO_SPACE: u8 = 4;
}

impl MetaCommand {
    /// `u8` version, `u8` kind, then the kind's fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        match self {
            MetaCommand::Init { copies, vnodes } => {
                out.push(kind::INIT);
                put_u32(&mut out, *copies);
                put_u32(&mut out, *vnodes);
            }
            MetaCommand::Join(n) => {
                out.push(kind::JOIN);
                put_node(&mut out, n);
            }
            MetaCommand::SetState { id, state } => {
                out.push(kind::SET_STATE);
                put_u64(&mut out, *id);
                out.push(state.code());
            }
            MetaCommand::CreateSpace {
                id,
                dimension,
                embedder,
                created_at_us,
                nonce,
            } => {
                out.push(kind::CREATE_SPACE);
                put_str16(&mut out, id.as_str());
                put_u32(&mut out, *dimension);
                put_str16(&mut out, embedder);
                put_i64(&mut out, *created_at_us);
                put_u64(&mut out, *nonce);
            }
            MetaCommand::DropSpace { id, nonce } => {
                out.push(if nonce.is_some() {
                    kind::DROP_CREATION
                } else {
                    kind::DROP_SPACE
                });
                put_str16(&mut out, id.as_str());
                if let Some(n) = nonce {
                    put_u64(&mut out, *n);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaCommand, CodecError> {
        let mut r = Reader::new(bytes);
        version(&mut r)?;
        let cmd = match r.u8("metadata command")? {
            kind::INIT => MetaCommand::Init {
                copies: r.u32("copies")?,
                vnodes: r.u32("virtual nodes")?,
            },
            kind::JOIN => MetaCommand::Join(node(&mut r)?),
            kind::SET_STATE => MetaCommand::SetState {
                id: r.u64("node")?,
                state: NodeState::of(r.u8("node state")?)?,
            },
            kind::CREATE_SPACE => MetaCommand::CreateSpace {
                id: space_id(&mut r)?,
                dimension: r.u32("dimension")?,
                embedder: short_str(&mut r, "embedder")?.to_string(),
                created_at_us: r.i64("created at")?,
                nonce: r.u64("nonce")?,
            },
            kind::DROP_SPACE => MetaCommand::DropSpace {
                id: space_id(&mut r)?,
                nonce: None,
            },
            kind::DROP_CREATION => MetaCommand::DropSpace {
                id: space_id(&mut r)?,
                nonce: Some(r.u64("nonce")?),
            },
            other => return bad(format!("metadata command {other}")),
        };
        r.finish("metadata command")?;
        Ok(cmd)
    }
}

fn version(r: &mut Reader<'_>) -> Result<u8, CodecError> {
    match r.u8("metadata version")? {
        v @ 1..=META_VERSION => Ok(v),
        v => bad(format!(
            "metadata encoding version {v} (this build reads 1 to {META_VERSION})"
        )),
    }
}

impl MetaAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        match self {
            MetaAnswer::Done { epoch } => {
                out.push(kind::DONE);
                put_u64(&mut out, *epoch);
            }
            MetaAnswer::Refused(why) => {
                out.push(kind::REFUSED);
                put_str16(&mut out, why);
            }
            MetaAnswer::Space(s) => {
                out.push(kind::SPACE);
                put_space(&mut out, s);
            }
            MetaAnswer::NoSpace => out.push(kind::NO_SPACE),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaAnswer, CodecError> {
        let mut r = Reader::new(bytes);
        let v = version(&mut r)?;
        let a = match r.u8("metadata answer")? {
            kind::DONE => MetaAnswer::Done {
                epoch: r.u64("epoch")?,
            },
            kind::REFUSED => MetaAnswer::Refused(r.str16("reason")?.to_string()),
            kind::SPACE => MetaAnswer::Space(space(&mut r, v)?),
            kind::NO_SPACE => MetaAnswer::NoSpace,
            other => return bad(format!("metadata answer {other}")),
        };
        r.finish("metadata answer")?;
        Ok(a)
    }
}

impl MetaState {
    /// `u8` version, `u64` epoch, `u64` applied (version 2); placement: `u32` copies, `u32` virtual nodes, `u8` rack
    /// aware, `u64` placement epoch, members (`u32` count, each `u64` id, `str16` rack,
    /// `u32` capacity), tokens (`u32` count, each `u64` position, `u64` owner), retired
    /// (`u32` count, each a member's fields, `u8` departure, `u64` epoch, `u32` token count
    /// and the tokens); nodes (`u32` count, each a node record); spaces (`u32` count, each
    /// `str16` id and a space record).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_VERSION];
        put_u64(&mut out, self.epoch);
        put_u64(&mut out, self.applied);
        let p = &self.placement;
        let c = p.config();
        put_u32(&mut out, c.copies as u32);
        put_u32(&mut out, c.vnodes_per_node);
        out.push(u8::from(c.rack_aware));
        put_u64(&mut out, p.epoch().0);
        let put_info = |out: &mut Vec<u8>, i: &NodeInfo| {
            put_u64(out, i.id.0);
            put_str16(out, &i.rack);
            put_u32(out, i.capacity);
        };
        put_u32(&mut out, p.members().len() as u32);
        for i in p.members().values() {
            put_info(&mut out, i);
        }
        put_u32(&mut out, p.tokens().len() as u32);
        for (t, o) in p.tokens() {
            put_u64(&mut out, *t);
            put_u64(&mut out, o.0);
        }
        put_u32(&mut out, p.retired().len() as u32);
        for r in p.retired().values() {
            put_info(&mut out, &r.info);
            out.push(match r.departure {
                Departure::Left => 1,
                Departure::Failed => 2,
            });
            put_u64(&mut out, r.epoch.0);
            put_u32(&mut out, r.tokens.len() as u32);
            for t in &r.tokens {
                put_u64(&mut out, *t);
            }
        }
        put_u32(&mut out, self.nodes.len() as u32);
        for n in self.nodes.values() {
            put_node(&mut out, n);
        }
        put_u32(&mut out, self.spaces.len() as u32);
        for (id, s) in &self.spaces {
            put_str16(&mut out, id.as_str());
            put_space(&mut out, s);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaState, CodecError> {
        let mut r = Reader::new(bytes);
        let v = version(&mut r)?;
        let epoch = r.u64("epoch")?;
        let applied = if v >= 2 { r.u64("applied")? } else { 0 };
        let copies = r.u32("copies")?;
        let vnodes = r.u32("virtual nodes")?;
        let rack_aware = match r.u8("rack aware")? {
            0 => false,
            1 => true,
            other => return bad(format!("rack-aware flag {other}")),
        };
        let placement_epoch = Epoch(r.u64("placement epoch")?);
        // Each counted item takes at least 8 bytes: a bound before allocating.
        let count = |r: &mut Reader<'_>, what: &str, max: usize| -> Result<usize, CodecError> {
            let n = r.u32(what)? as usize;
            if n > max || n > r.remaining() / 8 {
                return bad(format!("{n} {what}"));
            }
            Ok(n)
        };
        let info = |r: &mut Reader<'_>| -> Result<NodeInfo, CodecError> {
            Ok(NodeInfo::new(NodeId(r.u64("node")?))
                .with_rack(short_str(r, "rack")?.to_string())
                .with_capacity(r.u32("capacity")?))
        };
        let mut members = BTreeMap::new();
        for _ in 0..count(&mut r, "members", MAX_NODES)? {
            let i = info(&mut r)?;
            members.insert(i.id, i);
        }
        let mut tokens = BTreeMap::new();
        for _ in 0..count(&mut r, "tokens", engram_cluster::limits::MAX_TOKENS)? {
            tokens.insert(r.u64("token")?, NodeId(r.u64("token owner")?));
        }
        let mut retired = BTreeMap::new();
        for _ in 0..count(&mut r, "retired nodes", MAX_NODES)? {
            let info = info(&mut r)?;
            let departure = match r.u8("departure")? {
                1 => Departure::Left,
                2 => Departure::Failed,
                other => return bad(format!("departure {other}")),
            };
            let epoch = Epoch(r.u64("departure epoch")?);
            let n = count(&mut r, "retired tokens", engram_cluster::limits::MAX_TOKENS)?;
            let tokens = (0..n)
                .map(|_| r.u64("retired token"))
                .collect::<Result<Vec<_>, _>>()?;
            retired.insert(
                info.id,
                Retired {
                    info,
                    tokens,
                    departure,
                    epoch,
                },
            );
        }
        let config = PlacementConfig {
            vnodes_per_node: vnodes,
            copies: copies as usize,
            rack_aware,
            strategy: TokenStrategy::Balanced,
        };
        let placement =
            PlacementTable::from_parts(placement_epoch, config, members, tokens, retired)
                .map_err(|e| CodecError(format!("placement: {e}")))?;
        let mut nodes = BTreeMap::new();
        for _ in 0..count(&mut r, "nodes", MAX_NODES)? {
            let n = node(&mut r)?;
            if nodes.insert(n.id(), n).is_some() {
                return bad("a node twice");
            }
        }
        let mut spaces = imbl::OrdMap::new();
        for _ in 0..count(&mut r, "spaces", MAX_SPACES)? {
            let id = space_id(&mut r)?;
            if spaces.insert(id, space(&mut r, v)?).is_some() {
                return bad("a space twice");
            }
        }
        r.finish("metadata state")?;
        Ok(MetaState {
            epoch,
            applied,
            placement,
            nodes,
            spaces,
        })
    }
}
