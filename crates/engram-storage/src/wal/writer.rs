//! Appending batches of encoded records to the newest WAL file, rolling to a new file at the
//! size limit. Used by the committer thread only.
//!
//! With `StoreOptions::wal_preallocate`, a new file is written full of zeros (and synced) before
//! records go in, so that each group commit's `fdatasync` flushes data blocks only, with no
//! file-size change for the file system to journal; the next file is prepared in the background
//! once the current one is half full. Either way, readers treat an all-zero remainder as the
//! clean end of a file, and writes are positional at the end of the valid data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::file::{wal_file_name, WalFileHeader, WAL_FILE_HEADER_LEN, WAL_FORMAT_VERSION};
use crate::disk::{Disk, DiskFile};
use crate::error::{IoContext, Result};

/// One WAL file known to the writer.
#[derive(Debug, Clone)]
pub struct WalFileInfo {
    pub first_sequence: u64,
    pub path: PathBuf,
    /// Bytes of valid data (header and records), not counting preallocated zeros.
    pub valid_end: u64,
}

/// A zero-filled file waiting to become the next WAL file.
type Spare = (PathBuf, Box<dyn DiskFile>);

/// The writer of the current WAL file.
pub struct WalWriter {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Box<dyn DiskFile>,
    path: PathBuf,
    /// Where the next batch goes: the end of the valid data.
    pos: u64,
    first_sequence: u64,
    segment_bytes: u64,
    preallocate: bool,
    /// Every WAL file, oldest first; the last is the current one (its `valid_end` is `pos`).
    files: Vec<WalFileInfo>,
    spare: Arc<Mutex<Option<std::io::Result<Spare>>>>,
    preparing: Option<JoinHandle<()>>,
    /// Counts rolls: the committer, holding a handle of an older generation, clones a new one.
    generation: u64,
}

/// Names of spare files: unique in the process, so that a store reopened in the same process
/// never shares one with a preparation still running for the old store.
static SPARE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a WAL directory entry is a spare (removed at startup).
pub fn is_spare_file_name(name: &str) -> bool {
    name.starts_with("next-") && name.ends_with(".wal.tmp")
}

impl WalWriter {
    /// Opens the writer on the newest of `files` (verified by recovery, its torn tail erased),
    /// or creates a new file starting at `next_sequence` when there
    /// is none. A newest file of an older format version is not written to: an empty one gets
    /// this version's header, one with records is followed by a new file (so an older build
    /// never meets an operation its version does not have in a file of its version).
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        mut files: Vec<WalFileInfo>,
        next_sequence: u64,
        segment_bytes: u64,
        preallocate: bool,
    ) -> Result<Self> {
        let mut older_with_records = false;
        let (file, path, pos, first_sequence) = match files.last() {
            Some(last) => {
                let version = {
                    let m = disk.map(&last.path).at(&last.path)?;
                    m.get(8..12).map_or(WAL_FORMAT_VERSION, |b| {
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                    })
                };
                let mut file = disk.open_write(&last.path).at(&last.path)?;
                if version < WAL_FORMAT_VERSION {
                    if last.valid_end <= WAL_FILE_HEADER_LEN as u64 {
                        let header = WalFileHeader {
                            first_sequence: last.first_sequence,
                        }
                        .encode();
                        file.write_at(0, &header).at(&last.path)?;
                        file.sync().at(&last.path)?;
                    } else {
                        older_with_records = true;
                    }
                }
                (file, last.path.clone(), last.valid_end, last.first_sequence)
            }
            None => {
                let (file, path) =
                    create_file(&*disk, dir, next_sequence, segment_bytes, preallocate)?;
                files.push(WalFileInfo {
                    first_sequence: next_sequence,
                    path: path.clone(),
                    valid_end: WAL_FILE_HEADER_LEN as u64,
                });
                (file, path, WAL_FILE_HEADER_LEN as u64, next_sequence)
            }
        };
        let w = Self {
            disk,
            dir: dir.to_path_buf(),
            file,
            path,
            pos,
            first_sequence,
            segment_bytes,
            preallocate,
            files,
            spare: Arc::new(Mutex::new(None)),
            preparing: None,
            generation: 0,
        };
        let mut w = w;
        if older_with_records {
            w.roll(next_sequence)?;
        }
        Ok(w)
    }

    /// Writes a batch whose first record has sequence `first_sequence`. Rolls to a new file
    /// first when the current one is full. Does not sync: the caller syncs the file of the
    /// returned generation (see [`WalWriter::clone_current`]).
    pub fn write(&mut self, batch: &[u8], first_sequence: u64) -> Result<u64> {
        if self.pos > WAL_FILE_HEADER_LEN as u64
            && self.pos + batch.len() as u64 > self.segment_bytes
        {
            self.roll(first_sequence)?;
        }
        self.file.write_at(self.pos, batch).at(&self.path)?;
        self.pos += batch.len() as u64;
        if self.pos > self.segment_bytes / 2 {
            // Half full: get the next file ready in the background.
            self.prepare_spare();
        }
        Ok(self.generation)
    }

    /// The end of the valid data in the current file: where the next batch goes.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The current file's path.
    pub fn current_path(&self) -> &Path {
        &self.path
    }

    /// A handle on the current file, for syncing it outside the writer's lock.
    pub fn clone_current(&self) -> Result<Box<dyn DiskFile>> {
        self.file.try_clone().at(&self.path)
    }

    /// Whether the current file holds any record.
    pub fn current_has_records(&self) -> bool {
        self.pos > WAL_FILE_HEADER_LEN as u64
    }

    /// Starts a new file whose first record will have sequence `first_sequence` or later.
    pub fn roll(&mut self, first_sequence: u64) -> Result<()> {
        // Files are named and replayed by their first sequences: those rise strictly.
        crate::wal::check::check_sequences(self.first_sequence, [first_sequence]);
        // The current file is synced by the commit that wrote it; sync again in case the last
        // batch failed between write and sync, so that an older file never has a torn tail.
        self.file.sync().at(&self.path)?;
        let ready = if self.preparing.as_ref().is_some_and(|h| h.is_finished()) {
            if let Some(h) = self.preparing.take() {
                let _ = h.join();
            }
            self.spare.lock().take()
        } else {
            None
        };
        let (file, path) = match ready {
            Some(Ok((spare_path, mut file))) => {
                let path = self.dir.join(wal_file_name(first_sequence));
                let header = WalFileHeader { first_sequence }.encode();
                file.write_at(0, &header).at(&spare_path)?;
                file.sync().at(&spare_path)?;
                self.disk.rename(&spare_path, &path).at(&path)?;
                self.disk.sync_dir(&self.dir).at(&self.dir)?;
                (file, path)
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(error = %e, "preparing the next WAL file failed; creating it now");
                }
                create_file(
                    &*self.disk,
                    &self.dir,
                    first_sequence,
                    self.segment_bytes,
                    self.preallocate,
                )?
            }
        };
        if let Some(cur) = self.files.last_mut() {
            cur.valid_end = self.pos;
        }
        self.file = file;
        self.generation += 1;
        self.path = path.clone();
        self.pos = WAL_FILE_HEADER_LEN as u64;
        self.first_sequence = first_sequence;
        self.files.push(WalFileInfo {
            first_sequence,
            path,
            valid_end: self.pos,
        });
        Ok(())
    }

    /// Starts zero-filling the next file in the background, if none is ready or on the way.
    fn prepare_spare(&mut self) {
        if !self.preallocate || self.preparing.is_some() || self.spare.lock().is_some() {
            return;
        }
        let n = SPARE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("next-{}-{n}.wal.tmp", std::process::id()));
        let (disk, slot, len) = (self.disk.clone(), self.spare.clone(), self.segment_bytes);
        let handle = std::thread::Builder::new()
            .name("engram-wal-prealloc".into())
            .spawn(move || {
                let result = zero_filled(&*disk, &path, len).map(|f| (path, f));
                *slot.lock() = Some(result);
            });
        match handle {
            Ok(h) => self.preparing = Some(h),
            Err(e) => tracing::warn!(error = %e, "could not start WAL preallocation"),
        }
    }

    /// Deletes every file all of whose records have sequences below `checkpoint` (never the
    /// current file). Returns how many were deleted.
    pub fn delete_before(&mut self, checkpoint: u64) -> Result<usize> {
        let mut deleted = 0;
        // File i holds sequences [first_i, first_{i+1}).
        while self.files.len() > 1 && self.files[1].first_sequence <= checkpoint {
            let f = self.files.remove(0);
            self.disk.remove_file(&f.path).at(&f.path)?;
            deleted += 1;
        }
        if deleted > 0 {
            self.disk.sync_dir(&self.dir).at(&self.dir)?;
        }
        Ok(deleted)
    }

    pub fn current_first_sequence(&self) -> u64 {
        self.first_sequence
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Bytes of valid data in all WAL files (preallocated zeros not counted).
    pub fn total_bytes(&self) -> u64 {
        let closed: u64 = self.files[..self.files.len() - 1]
            .iter()
            .map(|f| f.valid_end)
            .sum();
        closed + self.pos
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        if let Some(h) = self.preparing.take() {
            let _ = h.join();
        }
    }
}

/// Writes a file of `len` zeros and syncs it (the file system allocates and writes its
/// blocks now, so later overwrites change no metadata).
fn zero_filled(disk: &dyn Disk, path: &Path, len: u64) -> std::io::Result<Box<dyn DiskFile>> {
    zero_filled_after(disk, path, &[], len)
}

/// Like [`zero_filled`], with `head` written first.
fn zero_filled_after(
    disk: &dyn Disk,
    path: &Path,
    head: &[u8],
    len: u64,
) -> std::io::Result<Box<dyn DiskFile>> {
    let mut file = disk.create(path)?;
    file.write_all(head)?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = head.len() as u64;
    while written < len {
        let n = (len - written).min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        written += n as u64;
    }
    file.sync()?;
    Ok(file)
}

fn create_file(
    disk: &dyn Disk,
    dir: &Path,
    first_sequence: u64,
    segment_bytes: u64,
    preallocate: bool,
) -> Result<(Box<dyn DiskFile>, PathBuf)> {
    let path = dir.join(wal_file_name(first_sequence));
    let header = WalFileHeader { first_sequence }.encode();
    let mut file = if preallocate {
        zero_filled_after(disk, &path, &header, segment_bytes).at(&path)?
    } else {
        let mut f = disk.create(&path).at(&path)?;
        f.write_all(&header).at(&path)?;
        f
    };
    file.sync().at(&path)?;
    disk.sync_dir(dir).at(dir)?;
    Ok((file, path))
}
