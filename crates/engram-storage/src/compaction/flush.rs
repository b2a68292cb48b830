//! Flushing one space: its active memtable (or a frozen one left by a failed flush) becomes a
//! new sealed segment, with its lexical index beside it; `space.meta` is written first if the
//! space has none on disk yet. Reads and writes of the space go on meanwhile. Memories still
//! waiting for their automatic links get them first ([`crate::autolink`]).

use std::collections::HashMap;
use std::sync::Arc;

use engram_core::{Memory, MemoryId};

use crate::autolink::{links_for_flush, AutoLinker};
use crate::disk::{write_file_atomic, Disk};
use crate::error::{IoContext, Result};
use crate::lexical::SegmentLex;
use crate::memtable::Entry;
use crate::meta::SPACE_META_FILE;
use crate::raft::{RaftApplied, RAFT_STATE_FILE};
use crate::requests::{encode_table_file, Requests, REQUESTS_FILE};
use crate::segment::{segment_file_name, write_memories, Segment, WritePace};
use crate::space::{attach_lex, Space};
use crate::wal::check::check_segment_durable;
use crate::wal::commit::GroupCommit;

/// Flushes the space's active memtable (or a frozen one left by a failed flush) into a new
/// segment, written at `pace`. Reads and writes go on meanwhile. Returns the bytes written.
/// Every record in the memtable is durable in `wal` (applied only once durable): asserted.
/// `linker` makes the links of memories pending in the memtable.
pub(crate) fn flush(
    disk: &dyn Disk,
    wal: &GroupCommit,
    space: &Space,
    pace: &WritePace,
    linker: Option<&dyn AutoLinker>,
) -> Result<u64> {
    let _files = space.files.lock();
    let (frozen, meta, meta_persisted, has_segments) = {
        let mut st = space.state.write();
        if st.dropped {
            return Ok(0);
        }
        if st.frozen.is_none() {
            if st.active.is_clean() {
                // A replicated space may have applied entries that changed no memory (a
                // leader's blank entry, a membership): everything it applied is in segments.
                if st.meta_persisted && st.raft.is_some() && st.raft != st.raft_persisted {
                    let raft = st.raft.clone().expect("checked above");
                    let requests = st.requests.clone();
                    drop(st);
                    write_raft_state(disk, space, &raft, &requests)?;
                    space.state.write().raft_persisted = Some(raft);
                }
                return Ok(0);
            }
            let table = std::mem::take(&mut st.active);
            st.frozen = Some(Arc::new(table));
            st.frozen_raft = st.raft.clone();
            st.frozen_requests =
                (st.raft.is_some() || !st.requests.is_empty()).then(|| st.requests.clone());
        }
        let frozen = st.frozen.clone().expect("frozen memtable set above");
        (
            frozen,
            space.meta.clone(),
            st.meta_persisted,
            !st.segments.is_empty(),
        )
    };
    let mut written = 0;
    if !meta_persisted {
        disk.create_dir_all(&space.dir).at(&space.dir)?;
        let p = space.dir.join(SPACE_META_FILE);
        write_file_atomic(disk, &p, &meta.encode()).at(&p)?;
    }
    let mut new_segment = None;
    if !frozen.entries.is_empty() {
        // The memories still owed their automatic links, linked now (without the state lock).
        let linked: HashMap<MemoryId, Memory> = match linker {
            Some(linker) if frozen.pending_count() > 0 => {
                let pending: Vec<_> = frozen
                    .pending_memories(usize::MAX)
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect();
                links_for_flush(linker, space, &pending)
                    .into_iter()
                    .map(|(m, links)| {
                        let mut m = Memory::clone(&m);
                        crate::space::add_links(&mut m, links);
                        (m.id.clone(), m)
                    })
                    .collect()
            }
            None if frozen.pending_count() > 0 => {
                // A store used without an engine: nothing can make them.
                tracing::warn!(space = %space.id, memories = frozen.pending_count(), "flushing memories owed automatic links without a linker: they will have none");
                HashMap::new()
            }
            _ => HashMap::new(),
        };
        let mut live: Vec<&Memory> = Vec::new();
        let mut tombs: Vec<&str> = Vec::new();
        for (id, e) in &frozen.entries {
            match e {
                Entry::Live(m) => live.push(linked.get(id).unwrap_or(m)),
                // Tombstones only matter when an older segment may hold the id.
                Entry::Tombstone if has_segments => tombs.push(id.as_str()),
                Entry::Tombstone => {}
            }
        }
        live.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        tombs.sort_unstable();
        if !live.is_empty() || !tombs.is_empty() {
            let min = frozen.min_seq.unwrap_or(frozen.max_seq);
            // Read after the memtable was frozen: it holds no record applied since. (A
            // replicated space's sequences are log indexes, applied once committed.)
            if !meta.replicated {
                check_segment_durable(frozen.max_seq, wal.durable_seq());
            }
            let path = space.dir.join(segment_file_name(min, frozen.max_seq));
            written = write_memories(
                disk,
                &path,
                meta.dimension as usize,
                (min, frozen.max_seq),
                &live,
                &tombs,
                pace,
            )?;
            let seg = Segment::open(disk, &path)?;
            let lex = SegmentLex::build(
                live.iter().map(|m| m.content.as_str()),
                (min, frozen.max_seq),
            );
            attach_lex(disk, &seg, lex);
            new_segment = Some(Arc::new(seg));
        }
    }
    // What the replicated space had applied when the memtable froze, now all in segments.
    let (frozen_raft, frozen_requests) = {
        let st = space.state.read();
        (st.frozen_raft.clone(), st.frozen_requests.clone())
    };
    let table_as_of = match (&frozen_raft, &frozen_requests) {
        (Some(raft), requests) => {
            write_raft_state(disk, space, raft, &requests.clone().unwrap_or_default())?;
            None
        }
        // An unreplicated space's keys, as of the frozen memtable's last record, written once
        // its segment is durable (after a crash in between, replay records the keys of the
        // flushed records after the older table's point: the WAL keeps them until the
        // flush is published below).
        (None, Some(table)) => {
            let p = space.dir.join(REQUESTS_FILE);
            write_file_atomic(disk, &p, &encode_table_file(table, frozen.max_seq)).at(&p)?;
            Some(frozen.max_seq)
        }
        (None, None) => None,
    };
    let mut st = space.state.write();
    if let Some(seg) = new_segment {
        st.segments.push(seg);
        // The indexer has a segment to look at.
        wal.note_activity();
    }
    st.meta_persisted = true;
    st.flushed_seq = st.flushed_seq.max(frozen.max_seq);
    st.frozen = None;
    if let Some(raft) = st.frozen_raft.take() {
        st.raft_persisted = Some(raft);
    }
    st.frozen_requests = None;
    if let Some(as_of) = table_as_of {
        st.requests_as_of = st.requests_as_of.max(as_of);
    }
    Ok(written)
}

/// Writes a replicated space's `raft.state` with its requests table as of the same entry
/// (atomically, synced). Called only once everything `raft` says is applied is in durable
/// segments.
fn write_raft_state(
    disk: &dyn Disk,
    space: &Space,
    raft: &RaftApplied,
    requests: &Requests,
) -> Result<()> {
    let p = space.dir.join(RAFT_STATE_FILE);
    write_file_atomic(disk, &p, &raft.encode_with(requests)).at(&p)
}
