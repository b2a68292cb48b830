//! Reading the WAL at startup: files are read and verified in parallel, then their records are
//! handed back in file order (the store applies them in sequence order, skipping any record
//! that does not follow the one before). Torn tails are truncated; corrupt regions are
//! quarantined; a file of an unknown format version stops recovery with a clear error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::disk::Disk;
use crate::error::StorageError;
use crate::error::{IoContext, Result};
use crate::options::StoreOptions;
use crate::quarantine::Quarantine;
use crate::store::RecoveryReport;
use crate::wal::{is_spare_file_name, scan_wal_file, ScanOutcome, ScannedRecord, WalFileInfo};

/// Records are read back whatever `max_record_bytes` is now (it may have been larger when they
/// were written): the only bound is the u32 payload length.
const READ_RECORD_LIMIT: usize = u32::MAX as usize;

/// What the WAL holds.
pub struct Recovered {
    /// Every valid record, files in order, records in file order.
    pub records: Vec<ScannedRecord>,
    /// The WAL files kept, oldest first.
    pub files: Vec<WalFileInfo>,
    /// The next sequence is at least this (from the newest file's header).
    pub next_seq_floor: u64,
    pub report: RecoveryReport,
}

pub fn scan_wal(
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

/// The space id in a damaged record's header, if it still reads as one.
fn probable_space(bytes: &[u8]) -> Option<String> {
    let n = *bytes.get(12)? as usize;
    let s = std::str::from_utf8(bytes.get(32..32 + n)?).ok()?;
    engram_core::SpaceId::is_valid(s).then(|| s.to_string())
}
