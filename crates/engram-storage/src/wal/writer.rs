//! Appending batches of encoded records to the newest WAL file, rolling to a new file at the
//! size limit. Used by the group-commit leader only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::{wal_file_name, WalFileHeader, WAL_FILE_HEADER_LEN};
use crate::disk::{Disk, DiskFile};
use crate::error::{IoContext, Result};

/// The writer of the current WAL file.
pub struct WalWriter {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Box<dyn DiskFile>,
    path: PathBuf,
    first_sequence: u64,
    segment_bytes: u64,
    /// Every WAL file, oldest first: (first sequence, path). The last is the current one.
    files: Vec<(u64, PathBuf)>,
    /// Sizes of the files before the current one, in the order of `files`.
    closed_bytes: Vec<u64>,
}

impl WalWriter {
    /// Opens the writer on the newest of `files` (verified and truncated to its valid end by
    /// recovery), or creates a new file starting at `next_sequence` when there is none.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        mut files: Vec<(u64, PathBuf)>,
        next_sequence: u64,
        segment_bytes: u64,
    ) -> Result<Self> {
        match files.last().cloned() {
            Some((first, path)) => {
                let file = disk.open_append(&path).at(&path)?;
                let mut closed_bytes = Vec::with_capacity(files.len());
                for (_, p) in &files[..files.len() - 1] {
                    closed_bytes.push(disk.file_len(p).at(p)?);
                }
                Ok(Self {
                    closed_bytes,
                    disk,
                    dir: dir.to_path_buf(),
                    file,
                    path,
                    first_sequence: first,
                    segment_bytes,
                    files,
                })
            }
            None => {
                let (file, path) = create_file(&*disk, dir, next_sequence)?;
                files.push((next_sequence, path.clone()));
                Ok(Self {
                    closed_bytes: Vec::new(),
                    disk,
                    dir: dir.to_path_buf(),
                    file,
                    path,
                    first_sequence: next_sequence,
                    segment_bytes,
                    files,
                })
            }
        }
    }

    /// Writes a batch whose first record has sequence `first_sequence`. Rolls to a new file
    /// first when the current one is full. Does not sync.
    pub fn write(&mut self, batch: &[u8], first_sequence: u64) -> Result<()> {
        let used = self.file.len();
        if used > WAL_FILE_HEADER_LEN as u64 && used + batch.len() as u64 > self.segment_bytes {
            self.roll(first_sequence)?;
        }
        self.file.write_all(batch).at(&self.path)
    }

    /// Makes every write so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync().at(&self.path)
    }

    /// Whether the current file holds any record.
    pub fn current_has_records(&self) -> bool {
        self.file.len() > WAL_FILE_HEADER_LEN as u64
    }

    /// Starts a new file whose first record will have sequence `first_sequence` or later.
    pub fn roll(&mut self, first_sequence: u64) -> Result<()> {
        // The current file is synced by the commit that wrote it; sync again in case the last
        // batch failed between write and sync, so that an older file never has a torn tail.
        self.file.sync().at(&self.path)?;
        let (file, path) = create_file(&*self.disk, &self.dir, first_sequence)?;
        self.closed_bytes.push(self.file.len());
        self.file = file;
        self.path = path.clone();
        self.first_sequence = first_sequence;
        self.files.push((first_sequence, path));
        Ok(())
    }

    /// Deletes every file all of whose records have sequences below `checkpoint` (never the
    /// current file). Returns how many were deleted.
    pub fn delete_before(&mut self, checkpoint: u64) -> Result<usize> {
        let mut deleted = 0;
        // File i holds sequences [first_i, first_{i+1}).
        while self.files.len() > 1 && self.files[1].0 <= checkpoint {
            let (_, path) = self.files.remove(0);
            self.closed_bytes.remove(0);
            self.disk.remove_file(&path).at(&path)?;
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

    /// Bytes in all WAL files.
    pub fn total_bytes(&self) -> u64 {
        self.closed_bytes.iter().sum::<u64>() + self.file.len()
    }
}

fn create_file(
    disk: &dyn Disk,
    dir: &Path,
    first_sequence: u64,
) -> Result<(Box<dyn DiskFile>, PathBuf)> {
    let path = dir.join(wal_file_name(first_sequence));
    let mut file = disk.create(&path).at(&path)?;
    file.write_all(&WalFileHeader { first_sequence }.encode())
        .at(&path)?;
    file.sync().at(&path)?;
    disk.sync_dir(dir).at(dir)?;
    Ok((file, path))
}
