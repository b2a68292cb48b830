//! Merging one space's segments into one: the newest version of each memory is kept,
//! replaced versions and deleted memories are dropped (tombstones too, when no older segment
//! is left out of the merge). Size-tiered in the background ([`merge_tiered`]), everything at
//! once on request ([`merge_all`]). The inputs' checksums are verified before their rows are
//! copied, and the output before it replaces them; the output's lexical index is merged from
//! the inputs' (no text analysed again).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::disk::{write_file_atomic, Disk};
use crate::error::{IoContext, Result};
use crate::index::{self, index_path, Hnsw, HnswGraph, HnswParams, SegmentBinding};
use crate::lexical::{lex_path, SegmentLex};
use crate::segment::{segment_file_name, write_segment, RowData, Segment, WritePace};
use crate::space::Space;
use crate::stats::StoreStats;
use crate::wal::check::check_segment_durable;
use crate::wal::commit::GroupCommit;

/// Appended to a merge output's segment file name until it is published. It ends in `.tmp`, so
/// a load removes an output that a crash left unpublished.
const PENDING_SUFFIX: &str = ".merging.tmp";

/// Merges all of a space's segments into one, dropping replaced versions, deleted memories and
/// their tombstones. The merged segment replaces its inputs at once, without an index (the
/// indexer builds it). Returns the bytes written.
pub(crate) fn merge_all(disk: &dyn Disk, wal: &GroupCommit, space: &Space) -> Result<u64> {
    let _merging = space.merging.lock();
    match prepare(disk, wal, space, true, &WritePace::UNPACED)? {
        Some(p) => {
            let n = publish(disk, space, p, None)?;
            wal.note_activity();
            Ok(n)
        }
        None => Ok(0),
    }
}

/// How a background merge indexes its output, and when it gives up.
pub(crate) struct Indexing<'a> {
    pub params: HnswParams,
    /// Outputs with fewer rows get no index (they are scanned).
    pub min_rows: usize,
    /// Asked before the index is built: `true` (the node is stopping) drops the merge.
    pub stop: &'a dyn Fn() -> bool,
}

/// Merges the space's newest segments, size-tiered: the run of newest segments starting at the
/// oldest segment no larger than everything newer than it together (at least the two newest).
/// A large old segment is left alone (with its index) until the newer ones add up to its size,
/// so each row is rewritten about log2(rows) times over the space's life instead of at every
/// merge. The merged segment is written at `pace`.
///
/// With `index` (the background merge), the merged segment gets its HNSW index (when it has
/// at least `min_rows` rows) before it replaces its inputs, so a search never scans what the
/// inputs' indexes served; a build that fails is logged and the segment published without
/// one (the indexer tries again). Without it (an explicit compaction) a space whose background
/// merge is in flight is left alone, so that the caller never waits for an index build.
/// Returns the bytes written.
pub(crate) fn merge_tiered(
    disk: &dyn Disk,
    wal: &GroupCommit,
    space: &Space,
    pace: &WritePace,
    index: Option<Indexing<'_>>,
    stats: &StoreStats,
) -> Result<u64> {
    let _merging = match &index {
        Some(_) => space.merging.lock(),
        None => match space.merging.try_lock() {
            Some(guard) => guard,
            None => return Ok(0),
        },
    };
    let Some(p) = prepare(disk, wal, space, false, pace)? else {
        return Ok(0);
    };
    let graph = match index {
        Some(ix) if (ix.stop)() => {
            discard(disk, space, &p.pending);
            return Ok(0);
        }
        Some(ix) if p.merged.rows() >= ix.min_rows => match index::build(&p.merged, ix.params) {
            Ok(g) => {
                stats.index_builds.fetch_add(1, Ordering::Relaxed);
                Some(g)
            }
            Err(e) => {
                tracing::warn!(space = %space.id, error = %e, "building a merged segment's index failed; it is published without one and indexed later");
                None
            }
        },
        _ => None,
    };
    let n = publish(disk, space, p, graph)?;
    wal.note_activity();
    Ok(n)
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

/// A merge's output, written and verified under a temporary name (removed by the next load if
/// a crash comes first), not yet replacing its inputs.
struct Prepared {
    inputs: Vec<Arc<Segment>>,
    /// Opened from `pending`.
    merged: Segment,
    pending: PathBuf,
    /// The name it takes when published.
    path: PathBuf,
    lex: SegmentLex,
    written: u64,
}

/// Removes an unpublished merge output (logged on failure: the next load removes it).
fn discard(disk: &dyn Disk, space: &Space, pending: &Path) {
    let _files = space.files.lock();
    let removed = match disk.remove_file(pending) {
        // A dropped space's directory is gone with it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.and_then(|()| disk.sync_dir(&space.dir)),
    };
    if let Err(e) = removed {
        tracing::warn!(path = %pending.display(), error = %e, "could not remove an unpublished merge output; the next load removes it");
    }
}

/// Writes the merge of the space's segments from the newest back (all of them, or a size tier)
/// under a temporary name; `wal`'s durable sequence bounds the merged segment's. `None` when
/// there is nothing to merge.
fn prepare(
    disk: &dyn Disk,
    wal: &GroupCommit,
    space: &Space,
    all: bool,
    pace: &WritePace,
) -> Result<Option<Prepared>> {
    let _files = space.files.lock();
    let (inputs, dimension, keep_tombstones) = {
        let st = space.state.read();
        if st.dropped || st.segments.len() < 2 {
            return Ok(None);
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
    // A replicated space's sequences are log indexes (its segments hold committed entries).
    if !space.meta.replicated {
        check_segment_durable(max, wal.durable_seq());
    }
    let name = segment_file_name(min, max);
    let path = space.dir.join(&name);
    let pending = space.dir.join(format!("{name}{PENDING_SUFFIX}"));
    let written = write_segment(
        disk,
        &pending,
        dimension,
        min,
        max,
        &rows,
        &tombstones,
        pace,
    )?;
    let merged = match Segment::open(disk, &pending).and_then(|m| m.verify().map(|()| m)) {
        Ok(m) => m,
        Err(e) => {
            disk.remove_file(&pending).at(&pending)?;
            disk.sync_dir(&space.dir).at(&space.dir)?;
            return Err(e);
        }
    };
    // From the inputs' indexes when they all have one (no text analysed again).
    let lexes: Option<Vec<&SegmentLex>> = inputs.iter().map(|s| s.lex().map(|l| &**l)).collect();
    let lex = match lexes {
        Some(lexes) => {
            let from: Vec<(usize, u32)> =
                live.iter().map(|&(_, si, row)| (si, row as u32)).collect();
            SegmentLex::merge(&lexes, &from, (min, max))
        }
        None => SegmentLex::build(rows.iter().map(|r| r.content), (min, max)),
    };
    drop(rows);
    Ok(Some(Prepared {
        inputs,
        merged,
        pending,
        path,
        lex,
        written,
    }))
}

/// Puts a prepared merge in place of its inputs: its index (when built) and lexical index are
/// written beside its final name, it is renamed there, then the inputs and their derived files
/// are removed. A crash before the rename leaves the inputs as they were (the next load removes
/// the temporary output and the derived files of a segment that is not there); after it, the
/// load removes the superseded inputs. Nothing happens (the output is removed) when the space
/// was dropped or its inputs changed meanwhile. Returns the bytes written.
fn publish(disk: &dyn Disk, space: &Space, p: Prepared, graph: Option<HnswGraph>) -> Result<u64> {
    let _files = space.files.lock();
    let current = {
        let st = space.state.read();
        !st.dropped
            && p.inputs
                .iter()
                .all(|i| st.segments.iter().any(|s| Arc::ptr_eq(s, i)))
    };
    if !current {
        drop(_files);
        discard(disk, space, &p.pending);
        return Ok(0);
    }
    let index_file = index_path(&p.path);
    let lex_file = lex_path(&p.path);
    let placed = (|| -> Result<()> {
        if let Some(graph) = &graph {
            index::write_index(disk, &index_file, graph, &SegmentBinding::of(&p.merged))?;
        }
        if let Err(e) = write_file_atomic(disk, &lex_file, p.lex.bytes()) {
            tracing::warn!(path = %lex_file.display(), error = %e, "could not write a lexical index; it is rebuilt at the next open");
        }
        disk.rename(&p.pending, &p.path).at(&p.pending)
    })();
    if let Err(e) = placed {
        // Nothing was published: the inputs stand; remove what this merge wrote (derived
        // files at the final name belong to no segment there, unless an input has that name).
        if !p.inputs.iter().any(|i| i.path() == p.path) {
            for f in [&index_file, &lex_file] {
                if disk.exists(f) {
                    let _ = disk.remove_file(f);
                }
            }
        }
        drop(_files);
        discard(disk, space, &p.pending);
        return Err(e);
    }
    disk.sync_dir(&space.dir).at(&space.dir)?;
    // The same file under its final name (the inode, and so the mapping, is the same).
    drop(p.merged);
    let merged = Segment::open(disk, &p.path)?;
    merged.set_lex(Arc::new(p.lex));
    if graph.is_some() {
        match Hnsw::open(disk, &index_file, &merged) {
            Ok(h) => merged.set_index(Arc::new(h)),
            // Published without it: the indexer builds it again.
            Err(e) => {
                tracing::warn!(path = %index_file.display(), error = %e, "a merged segment's index did not open; it is built again")
            }
        }
    }
    {
        // The inputs are a contiguous run; segments flushed since come after it.
        let mut st = space.state.write();
        let at = st
            .segments
            .iter()
            .position(|s| Arc::ptr_eq(s, &p.inputs[0]))
            .unwrap_or(0);
        st.segments
            .retain(|s| !p.inputs.iter().any(|i| Arc::ptr_eq(i, s)));
        st.segments.insert(at, Arc::new(merged));
    }
    for seg in &p.inputs {
        if seg.path() != p.path {
            disk.remove_file(seg.path()).at(seg.path())?;
        }
        for derived in [index_path(seg.path()), lex_path(seg.path())] {
            if derived != index_path(&p.path) && derived != lex_file && disk.exists(&derived) {
                disk.remove_file(&derived).at(&derived)?;
            }
        }
    }
    disk.sync_dir(&space.dir).at(&space.dir)?;
    Ok(p.written)
}
