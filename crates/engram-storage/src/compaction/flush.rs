//! Flushing one space: its active memtable (or a frozen one left by a failed flush) becomes a
//! new sealed segment, with its lexical index beside it; `space.meta` is written first if the
//! space has none on disk yet. Reads and writes of the space go on meanwhile.

use std::sync::Arc;

use engram_core::Memory;

use crate::disk::{write_file_atomic, Disk};
use crate::error::{IoContext, Result};
use crate::lexical::SegmentLex;
use crate::memtable::Entry;
use crate::meta::SPACE_META_FILE;
use crate::segment::{segment_file_name, write_memories, Segment, WritePace};
use crate::space::{attach_lex, Space};
use crate::wal::check::check_segment_durable;
use crate::wal::commit::GroupCommit;

/// Flushes the space's active memtable (or a frozen one left by a failed flush) into a new
/// segment, written at `pace`. Reads and writes go on meanwhile. Returns the bytes written.
/// Every record in the memtable is durable in `wal` (applied only once durable): asserted.
pub(crate) fn flush(
    disk: &dyn Disk,
    wal: &GroupCommit,
    space: &Space,
    pace: &WritePace,
) -> Result<u64> {
    let _files = space.files.lock();
    let (frozen, meta, meta_persisted, has_segments) = {
        let mut st = space.state.write();
        if st.dropped {
            return Ok(0);
        }
        if st.frozen.is_none() {
            if st.active.is_clean() {
                return Ok(0);
            }
            let table = std::mem::take(&mut st.active);
            st.frozen = Some(Arc::new(table));
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
        let mut live: Vec<&Memory> = Vec::new();
        let mut tombs: Vec<&str> = Vec::new();
        for (id, e) in &frozen.entries {
            match e {
                Entry::Live(m) => live.push(m),
                // Tombstones only matter when an older segment may hold the id.
                Entry::Tombstone if has_segments => tombs.push(id.as_str()),
                Entry::Tombstone => {}
            }
        }
        live.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        tombs.sort_unstable();
        if !live.is_empty() || !tombs.is_empty() {
            let min = frozen.min_seq.unwrap_or(frozen.max_seq);
            // Read after the memtable was frozen: it holds no record applied since.
            check_segment_durable(frozen.max_seq, wal.durable_seq());
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
    let mut st = space.state.write();
    if let Some(seg) = new_segment {
        st.segments.push(seg);
    }
    st.meta_persisted = true;
    st.flushed_seq = st.flushed_seq.max(frozen.max_seq);
    st.frozen = None;
    Ok(written)
}
