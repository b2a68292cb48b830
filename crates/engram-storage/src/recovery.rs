//! Recovery at startup. Reading the WAL ([`scan_wal`]): files are read and verified in
//! parallel, then their records are handed back in file order. Torn tails are truncated;
//! corrupt regions are quarantined; a file of an unknown format version stops recovery with a
//! clear error. Replay ([`replay`]) applies them in sequence order, skipping any record that
//! does not follow the one before; [`next_sequence`] says where writing resumes. What it did
//! is the [`RecoveryReport`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engram_core::SpaceId;

use crate::disk::Disk;
use crate::error::StorageError;
use crate::error::{IoContext, Result};
use crate::meta::SpaceMeta;
use crate::op::Op;
use crate::options::StoreOptions;
use crate::quarantine::Quarantine;
use crate::wal::{is_spare_file_name, scan_wal_file, ScanOutcome, ScannedRecord, WalFileInfo};

/// Records are read back whatever `max_record_bytes` is now (it may have been larger when they
/// were written): the only bound is the u32 payload length.
const READ_RECORD_LIMIT: usize = u32::MAX as usize;

/// What recovery did when the store was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub wal_files: usize,
    pub wal_bytes: u64,
    pub records_replayed: u64,
    pub records_skipped: u64,
    pub torn_tail_bytes: u64,
    pub quarantined: usize,
    pub elapsed: Duration,
}

/// What the WAL holds.
pub(crate) struct Recovered {
    /// Every valid record, files in order, records in file order.
    pub(crate) records: Vec<ScannedRecord>,
    /// The WAL files kept, oldest first.
    pub(crate) files: Vec<WalFileInfo>,
    /// The next sequence is at least this (from the newest file's header).
    pub(crate) next_seq_floor: u64,
    pub(crate) report: RecoveryReport,
}

pub(crate) fn scan_wal(
    disk: &dyn Disk,
    wal_dir: &Path,
    _opts: &StoreOptions,
    quarantine: &Quarantine,
) -> Result<Recovered> {
    let started = Instant::now();
    let names = disk.list_dir(wal_dir).at(wal_dir)?;
    for spare in names.iter().filter(|n| is_spare_file_name(n)) {
        // A preallocated file never put to use.
        let p = wal_dir.join(spare);
        disk.remove_file(&p).at(&p)?;
    }
    let mut files: Vec<(u64, PathBuf)> = names
        .into_iter()
        .filter_map(|n| crate::wal::parse_wal_file_name(&n).map(|s| (s, wal_dir.join(n))))
        .collect();
    files.sort();
    let mut maps = Vec::with_capacity(files.len());
    for (_, p) in &files {
        maps.push(disk.map(p).at(p)?);
    }
    let last = files.len().saturating_sub(1);
    // Verify and decode in parallel: file i on thread i % threads.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(files.len())
        .max(1);
    let mut outcomes: Vec<Option<ScanOutcome>> = (0..files.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let maps = &maps;
                scope.spawn(move || {
                    (t..maps.len())
                        .step_by(threads)
                        .map(|i| (i, scan_wal_file(&maps[i], i == last, READ_RECORD_LIMIT)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, out) in h.join().expect("WAL scan thread panicked") {
                outcomes[i] = Some(out);
            }
        }
    });
    let mut report = RecoveryReport {
        wal_files: files.len(),
        ..Default::default()
    };
    let mut records = Vec::new();
    let mut kept = Vec::with_capacity(files.len());
    let mut floor = 1;
    for (i, ((first, path), outcome)) in files.into_iter().zip(outcomes).enumerate() {
        let out = outcome.expect("every file was scanned");
        if let Some(why) = out.unsupported {
            let why = why.trim_start_matches("unsupported format version: ");
            return Err(StorageError::UnsupportedVersion(format!(
                "{}: {why}; open this data directory with the Engram version that wrote it",
                path.display()
            )));
        }
        report.wal_bytes += out.valid_end;
        for bad in &out.bad {
            let bytes = &maps[i][bad.offset as usize..(bad.offset + bad.len) as usize];
            quarantine.save_region(&path, bad.offset, bytes, probable_space(bytes), &bad.reason);
        }
        if let Some(h) = out.header {
            floor = floor.max(h.first_sequence);
        }
        if let Some(torn) = &out.torn_tail {
            report.torn_tail_bytes += torn.len;
            if torn.offset == 0 {
                // The newest file never got its header: nothing in it was acknowledged.
                tracing::warn!(path = %path.display(), "removing a WAL file whose header was torn");
                disk.remove_file(&path).at(&path)?;
                disk.sync_dir(wal_dir).at(wal_dir)?;
                records.extend(out.records);
                continue;
            }
            tracing::warn!(
                path = %path.display(),
                offset = torn.offset,
                bytes = torn.len,
                reason = %torn.reason,
                "erasing the torn tail of the WAL (a crash mid-append; never acknowledged)"
            );
            // Overwritten with zeros, as if never written: the file keeps its preallocated
            // length and writing resumes at the torn offset.
            let mut f = disk.open_write(&path).at(&path)?;
            f.write_at(torn.offset, &vec![0u8; torn.len as usize])
                .at(&path)?;
            f.sync().at(&path)?;
        }
        floor = floor.max(first);
        records.extend(out.records);
        kept.push(WalFileInfo {
            first_sequence: first,
            path,
            valid_end: out.torn_tail.as_ref().map_or(out.valid_end, |t| t.offset),
        });
    }
    drop(maps);
    report.elapsed = started.elapsed();
    Ok(Recovered {
        records,
        files: kept,
        next_seq_floor: floor,
        report,
    })
}

/// Applies the scanned records in sequence order through `apply` (the store's apply step,
/// the same as at commit; it returns whether the record changed anything), counting them in
/// `report`. A record whose sequence does not follow the one before is skipped. Returns the
/// last sequence applied (0 if none).
pub(crate) fn replay(
    records: Vec<ScannedRecord>,
    report: &mut RecoveryReport,
    mut apply: impl FnMut(u64, SpaceId, Op) -> Result<bool>,
) -> Result<u64> {
    let mut last_seq = 0u64;
    for rec in records {
        if rec.sequence <= last_seq {
            tracing::warn!(
                seq = rec.sequence,
                last_seq,
                "skipping an out-of-order WAL record"
            );
            report.records_skipped += 1;
            continue;
        }
        last_seq = rec.sequence;
        if apply(rec.sequence, rec.space, rec.op)? {
            report.records_replayed += 1;
        } else {
            report.records_skipped += 1;
        }
    }
    Ok(last_seq)
}

/// The sequence the next record gets: after the last one replayed and at least the newest WAL
/// file's floor. When the WAL `lost` bytes (a torn tail, a quarantined region), its last
/// record may not be the newest sequence on disk (a rotted record may already be in a
/// segment), so it is also above everything the spaces' files hold: a sequence a segment or
/// space holds is never reused (it would be skipped at apply). Returns it, and whether that
/// raised it (the writer then makes the raised floor durable).
pub(crate) fn next_sequence(
    disk: &dyn Disk,
    spaces_dir: &Path,
    last_seq: u64,
    floor: u64,
    lost: bool,
) -> Result<(u64, bool)> {
    let mut next_seq = (last_seq + 1).max(floor);
    let mut floor_raised = false;
    if lost {
        let floor = max_persisted_seq(disk, spaces_dir)?;
        if floor >= next_seq {
            tracing::warn!(
                floor,
                next_seq,
                "next sequence raised above what segments hold"
            );
            next_seq = floor + 1;
            floor_raised = true;
        }
    }
    Ok((next_seq, floor_raised))
}

/// The space id in a damaged record's header, if it still reads as one.
fn probable_space(bytes: &[u8]) -> Option<String> {
    let n = *bytes.get(12)? as usize;
    let s = std::str::from_utf8(bytes.get(32..32 + n)?).ok()?;
    engram_core::SpaceId::is_valid(s).then(|| s.to_string())
}

/// The highest sequence held by any space's files: segment ranges and `space.meta`. Reads
/// every space directory, so it runs only when recovery lost part of the WAL.
fn max_persisted_seq(disk: &dyn Disk, spaces_dir: &Path) -> Result<u64> {
    let mut max = 0;
    for name in disk.list_dir(spaces_dir).at(spaces_dir)? {
        let dir = spaces_dir.join(&name);
        let Ok(entries) = disk.list_dir(&dir) else {
            continue;
        };
        // A replicated space's files are sequenced by its raft log's indexes.
        let meta = dir.join(crate::meta::SPACE_META_FILE);
        if let Ok(Ok(m)) = disk.read(&meta).map(|b| SpaceMeta::decode(&b)) {
            if m.replicated {
                continue;
            }
        }
        for e in entries {
            if let Some((_, hi)) = crate::segment::parse_segment_file_name(&e) {
                max = max.max(hi);
            } else if e == crate::meta::SPACE_META_FILE {
                if let Ok(m) = disk.read(&dir.join(&e)).map(|b| SpaceMeta::decode(&b)) {
                    max = max.max(m.map_or(0, |m| m.created_seq));
                }
            }
        }
    }
    Ok(max)
}
