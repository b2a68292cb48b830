//! Files derived from a segment, beside it: its HNSW index (`.hnsw`) and its lexical index
//! (`.lex`). Derived data is never the only copy of anything: a missing, corrupt or foreign
//! file is rebuilt from the segment. (The bloom filter is inside the segment file, see
//! [`crate::segment`].) Index builds are the indexer's ([`crate::compaction::indexer`]).

use std::sync::Arc;

use crate::disk::{write_file_atomic, Disk};
use crate::error::{IoContext, Result, StorageError};
use crate::index::{index_path, Hnsw};
use crate::lexical::{lex_path, SegmentLex};
use crate::segment::Segment;

/// Opens the index file beside `seg` and attaches it, if there is one. A missing file is
/// normal (a small segment, or a crash before its build finished: it is built again). One
/// that does not belong to the segment, is corrupt or has an unknown version is derived data:
/// it is logged and removed, and the index is built again. Any other failure to open it (an
/// I/O error, no address space left to map it) is logged and the segment is searched by a
/// scan: an index never makes its space unreadable. Returns whether one was attached.
pub(crate) fn open_index(disk: &dyn Disk, seg: &Segment) -> Result<bool> {
    let path = index_path(seg.path());
    if !disk.exists(&path) {
        return Ok(false);
    }
    match Hnsw::open(disk, &path, seg) {
        Ok(h) => {
            seg.set_index(Arc::new(h));
            Ok(true)
        }
        Err(e @ (StorageError::Corrupted(_) | StorageError::UnsupportedVersion(_))) => {
            tracing::warn!(path = %path.display(), error = %e, "removing an unusable index file; it will be rebuilt");
            disk.remove_file(&path).at(&path)?;
            Ok(false)
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "could not open an index file; searching its segment by a scan");
            Ok(false)
        }
    }
}

/// Writes `lex` beside `seg` (crash-safely) and attaches it. A failed write only costs a
/// rebuild at the next open: it is logged, and the index stays attached.
pub(crate) fn attach_lex(disk: &dyn Disk, seg: &Segment, lex: SegmentLex) {
    let path = lex_path(seg.path());
    if let Err(e) = write_file_atomic(disk, &path, lex.bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "could not write a lexical index; it is rebuilt at the next open");
    }
    seg.set_lex(Arc::new(lex));
}

/// Opens the `.lex` file beside `seg` and attaches it; if it is missing or does not match the
/// segment (a crash between the two, damage, another analyzer), builds it from the segment's
/// content and writes it. Never fails the space's load: a segment whose content cannot be
/// read is left without a lexical index (logged; lexical search skips it, everything else
/// works as before).
pub(crate) fn open_lex(disk: &dyn Disk, seg: &Segment) {
    if let Err(e) = try_open_lex(disk, seg) {
        tracing::error!(path = %seg.path().display(), error = %e, "no lexical index for this segment: its content cannot be read");
    }
}

fn try_open_lex(disk: &dyn Disk, seg: &Segment) -> Result<()> {
    let path = lex_path(seg.path());
    let info = seg.info();
    let seqs = (info.min_seq, info.max_seq);
    if disk.exists(&path) {
        let decoded = disk
            .read(&path)
            .at(&path)
            .and_then(|b| SegmentLex::decode(b, seg.rows(), seqs));
        match decoded {
            Ok(lex) => {
                seg.set_lex(Arc::new(lex));
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "rebuilding a lexical index")
            }
        }
    }
    let contents = (0..seg.rows())
        .map(|r| seg.content(r))
        .collect::<Result<Vec<&str>>>()?;
    attach_lex(disk, seg, SegmentLex::build(contents.into_iter(), seqs));
    Ok(())
}
