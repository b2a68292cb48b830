//! Merging one space's segments into one: the newest version of each memory is kept,
//! replaced versions and deleted memories are dropped (tombstones too, when no older segment
//! is left out of the merge). Size-tiered in the background ([`merge_tiered`]), everything at
//! once on request ([`merge_all`]). The inputs' checksums are verified before their rows are
//! copied, and the output before it replaces them; the output's lexical index is merged from
//! the inputs' (no text analysed again).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::disk::Disk;
use crate::error::{IoContext, Result};
use crate::index::index_path;
use crate::lexical::{lex_path, SegmentLex};
use crate::segment::{segment_file_name, write_segment, RowData, Segment, WritePace};
use crate::space::{attach_lex, Space};
use crate::wal::check::check_segment_durable;
use crate::wal::commit::GroupCommit;

/// Merges all of a space's segments into one, dropping replaced versions, deleted memories and
/// their tombstones. Returns the bytes written.
pub(crate) fn merge_all(disk: &dyn Disk, wal: &GroupCommit, space: &Space) -> Result<u64> {
    merge(disk, wal, space, true, &WritePace::UNPACED)
}

/// Merges the space's newest segments, size-tiered: the run of newest segments starting at the
/// oldest segment no larger than everything newer than it together (at least the two newest).
/// A large old segment is left alone (with its index) until the newer ones add up to its size,
/// so each row is rewritten about log2(rows) times over the space's life instead of at every
/// merge. The merged segment is written at `pace`. Returns the bytes written.
pub(crate) fn merge_tiered(
    disk: &dyn Disk,
    wal: &GroupCommit,
    space: &Space,
    pace: &WritePace,
) -> Result<u64> {
    merge(disk, wal, space, false, pace)
}

/// Where a size-tiered merge starts among `segments` (oldest first, at least two).
fn tier_start(segments: &[Arc<Segment>]) -> usize {
    let sizes: Vec<usize> = segments
        .iter()
        .map(|s| s.rows() + s.info().tombstones)
        .collect();
    let last = sizes.len().saturating_sub(2);
    (0..last)
        .find(|&i| sizes[i] <= sizes[i + 1..].iter().sum::<usize>())
        .unwrap_or(last)
}

/// Merges the space's segments from the newest back (all of them, or a size tier); `wal`'s
/// durable sequence bounds the merged segment's.
fn merge(
    disk: &dyn Disk,
    wal: &GroupCommit,
    space: &Space,
    all: bool,
    pace: &WritePace,
) -> Result<u64> {
    let _files = space.files.lock();
    let (inputs, dimension, keep_tombstones) = {
        let st = space.state.read();
        if st.dropped || st.segments.len() < 2 {
            return Ok(0);
        }
        let start = if all { 0 } else { tier_start(&st.segments) };
        // With older segments left out of the merge, the inputs' tombstones must stay: they
        // hide those segments' versions.
        (
            st.segments[start..].to_vec(),
            space.meta.dimension as usize,
            start > 0,
        )
    };
    // Column checksums of the inputs are checked here, before their rows are copied.
    for seg in &inputs {
        seg.verify()?;
    }
    // Newest version of each id: scan newest segment first.
    let mut newest: HashMap<&str, Option<(usize, usize)>> = HashMap::new();
    for (si, seg) in inputs.iter().enumerate().rev() {
        for row in 0..seg.rows() {
            newest.entry(seg.id(row)?).or_insert(Some((si, row)));
        }
        for t in 0..seg.info().tombstones {
            newest.entry(seg.tombstone(t)?).or_insert(None);
        }
    }
    let mut tombstones: Vec<&str> = if keep_tombstones {
        newest
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(id, _)| *id)
            .collect()
    } else {
        Vec::new()
    };
    tombstones.sort_unstable();
    let mut live: Vec<(&str, usize, usize)> = newest
        .into_iter()
        .filter_map(|(id, v)| v.map(|(s, r)| (id, s, r)))
        .collect();
    live.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut rows = Vec::with_capacity(live.len());
    for &(id, si, row) in &live {
        let seg = &inputs[si];
        rows.push(RowData {
            id,
            embedding: seg.embedding(row),
            confidence: seg.confidence(row),
            timestamp_us: seg.timestamp(row),
            content: seg.content(row)?,
            metadata: Cow::Borrowed(seg.raw_metadata(row)?),
            links: Cow::Borrowed(seg.raw_links(row)?),
        });
    }
    let min = inputs.iter().map(|s| s.info().min_seq).min().unwrap_or(0);
    let max = inputs.iter().map(|s| s.info().max_seq).max().unwrap_or(0);
    check_segment_durable(max, wal.durable_seq());
    let path = space.dir.join(segment_file_name(min, max));
    let written = write_segment(disk, &path, dimension, min, max, &rows, &tombstones, pace)?;
    let merged = Segment::open(disk, &path).and_then(|m| m.verify().map(|()| m));
    let merged = match merged {
        Ok(m) => {
            // From the inputs' indexes when they all have one (no text analysed again).
            let lexes: Option<Vec<&SegmentLex>> =
                inputs.iter().map(|s| s.lex().map(|l| &**l)).collect();
            let lex = match lexes {
                Some(lexes) => {
                    let from: Vec<(usize, u32)> =
                        live.iter().map(|&(_, si, row)| (si, row as u32)).collect();
                    SegmentLex::merge(&lexes, &from, (min, max))
                }
                None => SegmentLex::build(rows.iter().map(|r| r.content), (min, max)),
            };
            attach_lex(disk, &m, lex);
            Arc::new(m)
        }
        Err(e) => {
            // Never leave an unverified output under a name that supersedes its inputs.
            disk.remove_file(&path).at(&path)?;
            disk.sync_dir(&space.dir).at(&space.dir)?;
            return Err(e);
        }
    };
    {
        // The inputs are a contiguous run; segments flushed since come after it.
        let mut st = space.state.write();
        let at = st
            .segments
            .iter()
            .position(|s| Arc::ptr_eq(s, &inputs[0]))
            .unwrap_or(0);
        st.segments
            .retain(|s| !inputs.iter().any(|i| Arc::ptr_eq(i, s)));
        st.segments.insert(at, merged);
    }
    for seg in &inputs {
        if seg.path() != path {
            disk.remove_file(seg.path()).at(seg.path())?;
        }
        for derived in [index_path(seg.path()), lex_path(seg.path())] {
            if derived != lex_path(&path) && disk.exists(&derived) {
                disk.remove_file(&derived).at(&derived)?;
            }
        }
    }
    disk.sync_dir(&space.dir).at(&space.dir)?;
    Ok(written)
}
