//! [`FaultDisk`]: an in-memory [`Disk`] for tests that loses unsynced data on a simulated power
//! cut, tears writes and tails, fails fsyncs and flips bits.
//!
//! It follows the durability model of [`crate::disk`]:
//! - a file's data survives [`FaultDisk::power_cut`] only as of its last [`DiskFile::sync`]
//!   (or [`Disk::truncate`]);
//! - a file's name (creation, rename, removal) survives only once [`Disk::sync_dir`] ran on the
//!   directory holding it;
//! - directories made by [`Disk::create_dir_all`] are durable at once, and
//!   [`Disk::remove_dir_all`] is durable at once.
//!
//! Internally files are inodes: the *live* namespace maps paths to inodes (what the running
//! program sees), the *durable* namespace maps paths to inodes as a power cut would leave them.
//! Each inode holds its live bytes and its bytes as of its last sync. An inode whose name was
//! removed stays writable through handles still open on it, like an unlinked file on Unix.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::disk::{Disk, DiskFile, Mapped};

mod state;

use state::{injected, is_implicit_dir, not_found, Ino, State};

/// An in-memory [`Disk`] that can inject faults. Cheap to clone: clones share the same tree and
/// fault settings, so a test can keep a handle while the engine owns another.
///
/// Fault settings ([`set_torn_tail`](Self::set_torn_tail), [`fail_syncs`](Self::fail_syncs),
/// [`fail_writes_after`](Self::fail_writes_after)) are test controls, not disk state: they stay
/// in force across [`power_cut`](Self::power_cut) until changed or
/// [`clear_faults`](Self::clear_faults) is called.
#[derive(Clone, Default)]
pub struct FaultDisk {
    shared: Arc<Mutex<State>>,
}

impl FaultDisk {
    /// An empty disk with no faults armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss. Every file's data reverts to its content as of its last sync
    /// (keeping up to the torn-tail amount of unsynced bytes from the first changed one, see
    /// [`set_torn_tail`](Self::set_torn_tail)); the live names become the durable names, so files
    /// whose name was never made durable disappear and durable removals and renames stick.
    /// Handles opened before the cut fail every further operation.
    pub fn power_cut(&self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let torn_tail = st.torn_tail;
        for inode in st.inodes.values_mut() {
            // A torn write keeps `keep` bytes from the first byte that changed since the last
            // sync (an append or an overwrite), and the synced content beyond them.
            let kept = match torn_tail {
                Some(keep) if inode.data != inode.synced => {
                    let common = inode.data.len().min(inode.synced.len());
                    let first = (0..common)
                        .find(|&i| inode.data[i] != inode.synced[i])
                        .unwrap_or(common);
                    let cut = (first + keep).min(inode.data.len());
                    let mut kept = inode.data[..cut].to_vec();
                    if inode.synced.len() > cut {
                        kept.extend_from_slice(&inode.synced[cut..]);
                    }
                    kept
                }
                _ => inode.synced.clone(),
            };
            inode.synced.clone_from(&kept);
            inode.data = kept;
        }
        st.live = st.durable.clone();
        st.generation += 1;
        st.open_handles.clear();
        st.power_cuts += 1;
        st.collect_garbage();
    }

    /// On a power cut, keep `keep` bytes of each file's unsynced data, counted from the first
    /// byte that differs from its synced content (a torn write, appended or overwritten), and
    /// the synced content beyond them. `None` (the default) drops all unsynced data.
    pub fn set_torn_tail(&self, keep: Option<usize>) {
        self.shared.lock().torn_tail = keep;
    }

    /// Makes the next `n` syncs ([`DiskFile::sync`] and [`Disk::sync_dir`] alike) fail with an
    /// error without making anything durable. Replaces any count still pending; `0` disarms.
    pub fn fail_syncs(&self, n: usize) {
        self.shared.lock().failing_syncs = n;
    }

    /// After `n` more syncs succeed, every sync fails (a crash point for a test that then
    /// cuts the power); `None` lifts it.
    pub fn fail_syncs_after(&self, n: Option<u64>) {
        self.shared.lock().sync_budget = n;
    }

    /// After `bytes` more bytes have been written through [`DiskFile::write_all`] or
    /// [`DiskFile::write_at`] (over all files), writes fail with an error. A write crossing the limit writes the bytes before the
    /// limit and then fails: a torn write. `None` (the default) lifts the limit.
    pub fn fail_writes_after(&self, bytes: Option<u64>) {
        self.shared.lock().write_budget = bytes;
    }

    /// Disarms every fault setting: no torn tail, no failing syncs, no write limit.
    pub fn clear_faults(&self) {
        let mut st = self.shared.lock();
        st.torn_tail = None;
        st.failing_syncs = 0;
        st.sync_budget = None;
        st.write_budget = None;
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `offset` of the file at `path`, in
    /// both its live data and its synced content (where the synced content reaches `offset`).
    ///
    /// # Panics
    /// If `path` is not a live file, `offset` is past its live data, or `bit > 7`: these are
    /// mistakes in the test.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        assert!(bit < 8, "FaultDisk::flip_bit: bit {bit} out of range");
        self.mutate(path, offset, 1, |live, synced| {
            live[0] ^= 1 << bit;
            if let Some(b) = synced.first_mut() {
                *b ^= 1 << bit;
            }
        });
    }

    /// Overwrites the file at `path` with `bytes` from `offset`, in both its live data and its
    /// synced content (where the synced content reaches).
    ///
    /// # Panics
    /// If `path` is not a live file or the range is past its live data: these are mistakes in
    /// the test.
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) {
        self.mutate(path, offset, bytes.len(), |live, synced| {
            live.copy_from_slice(bytes);
            synced.copy_from_slice(&bytes[..synced.len()]);
        });
    }

    /// Applies `f` to `len` bytes at `offset` of the live data of `path` and to the part of the
    /// same range its synced content covers.
    fn mutate(&self, path: &Path, offset: u64, len: usize, f: impl FnOnce(&mut [u8], &mut [u8])) {
        let mut st = self.shared.lock();
        let Some(ino) = st.live.get(path).copied() else {
            panic!("FaultDisk: no file {}", path.display());
        };
        let Some(inode) = st.inodes.get_mut(&ino) else {
            panic!("FaultDisk: no inode for {}", path.display());
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(len);
        assert!(
            end <= inode.data.len(),
            "FaultDisk: range {start}..{end} past the end of {} ({} bytes)",
            path.display(),
            inode.data.len()
        );
        let synced_end = end.min(inode.synced.len());
        let synced_start = start.min(synced_end);
        f(
            &mut inode.data[start..end],
            &mut inode.synced[synced_start..synced_end],
        );
    }

    /// The live content of the file at `path`, if it exists.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.shared.lock();
        st.live_inode(path).ok().map(|i| i.data.clone())
    }

    /// The content the file at `path` would have after a power cut now (ignoring any torn tail),
    /// or `None` if its name would not survive.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.shared.lock();
        let ino = st.durable.get(path)?;
        st.inodes.get(ino).map(|i| i.synced.clone())
    }

    /// Successful [`DiskFile::sync`] calls so far.
    pub fn syncs(&self) -> u64 {
        self.shared.lock().syncs
    }

    /// Successful [`Disk::sync_dir`] calls so far.
    pub fn dir_syncs(&self) -> u64 {
        self.shared.lock().dir_syncs
    }

    /// [`power_cut`](Self::power_cut) calls so far.
    pub fn power_cuts(&self) -> u64 {
        self.shared.lock().power_cuts
    }

    fn open_file(&self, st: &mut State, ino: Ino) -> Box<dyn DiskFile> {
        st.open_handle(ino);
        let len = st.inodes.get(&ino).map_or(0, |i| i.data.len() as u64);
        Box::new(FaultFile {
            shared: Arc::clone(&self.shared),
            ino,
            generation: st.generation,
            len,
        })
    }
}

impl fmt::Debug for FaultDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("FaultDisk")
            .field("files", &st.live.len())
            .field("durable_files", &st.durable.len())
            .field("dirs", &st.dirs.len())
            .field("generation", &st.generation)
            .field("torn_tail", &st.torn_tail)
            .field("failing_syncs", &st.failing_syncs)
            .field("write_budget", &st.write_budget)
            .finish()
    }
}

/// A handle on one inode of a [`FaultDisk`], appending at its end.
struct FaultFile {
    shared: Arc<Mutex<State>>,
    ino: Ino,
    /// The disk generation the handle was opened in; a power cut invalidates it.
    generation: u64,
    /// The inode's length after this handle's last operation.
    len: u64,
}

impl FaultFile {
    /// Writes at `offset` (or appends), honouring the write budget: a write crossing it
    /// writes the bytes before the limit and fails (a torn write).
    fn write_inner(&mut self, offset: Option<u64>, buf: &[u8]) -> io::Result<()> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        self.check_generation(st)?;
        let (n, torn) = match st.write_budget {
            Some(budget) if buf.len() as u64 > budget => {
                // `budget < buf.len()`, so it fits in usize.
                (usize::try_from(budget).unwrap_or(buf.len()), true)
            }
            _ => (buf.len(), false),
        };
        if let Some(budget) = st.write_budget.as_mut() {
            *budget -= n as u64;
        }
        let inode = st
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::other("inode of an open file vanished"))?;
        let at = offset.map_or(inode.data.len(), |o| o as usize);
        if inode.data.len() < at + n {
            inode.data.resize(at + n, 0);
        }
        inode.data[at..at + n].copy_from_slice(&buf[..n]);
        self.len = inode.data.len() as u64;
        if torn {
            Err(injected(&format!(
                "write failed after {n} of {} bytes",
                buf.len()
            )))
        } else {
            Ok(())
        }
    }

    fn check_generation(&self, st: &State) -> io::Result<()> {
        if st.generation == self.generation {
            Ok(())
        } else {
            Err(io::Error::other("file handle invalidated by a power cut"))
        }
    }
}

impl DiskFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_inner(None, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write_inner(Some(offset), buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        self.check_generation(st)?;
        if st.take_sync_fault() {
            return Err(injected("fsync failed"));
        }
        let inode = st
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::other("inode of an open file vanished"))?;
        inode.synced.clone_from(&inode.data);
        st.syncs += 1;
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Box<dyn DiskFile>> {
        let mut st = self.shared.lock();
        self.check_generation(&st)?;
        st.open_handle(self.ino);
        Ok(Box::new(FaultFile {
            shared: Arc::clone(&self.shared),
            ino: self.ino,
            generation: self.generation,
            len: self.len,
        }))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.generation != self.generation {
            return;
        }
        if let Some(count) = st.open_handles.get_mut(&self.ino) {
            *count -= 1;
            if *count == 0 {
                st.open_handles.remove(&self.ino);
                st.collect_garbage();
            }
        }
    }
}

impl Disk for FaultDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.shared.lock();
        let dirs: Vec<&Path> = path.ancestors().filter(|p| !is_implicit_dir(p)).collect();
        if let Some(file) = dirs.iter().find(|p| st.live.contains_key(**p)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a file is in the way: {}", file.display()),
            ));
        }
        for dir in dirs {
            st.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    /// Directories are durable as soon as they exist on this disk (see the module doc).
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        if !self.shared.lock().parent_exists(path) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("parent of {} does not exist", path.display()),
            ));
        }
        self.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.shared.lock();
        if !st.dir_exists(path) {
            return Err(not_found("directory", path));
        }
        let in_dir = |p: &&PathBuf| p.parent() == Some(path);
        let names = st
            .live
            .keys()
            .filter(in_dir)
            .chain(st.dirs.iter().filter(in_dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.shared.lock();
        st.live.contains_key(path) || st.dir_exists(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let ino = match st.live.get(path) {
            Some(&ino) => ino,
            None => {
                st.check_parent(path)?;
                st.check_not_dir(path)?;
                let ino = st.new_inode();
                st.live.insert(path.to_path_buf(), ino);
                ino
            }
        };
        Ok(self.open_file(st, ino))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let ino = st.live_ino(path)?;
        Ok(self.open_file(st, ino))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        st.check_parent(path)?;
        st.check_not_dir(path)?;
        let ino = st.new_inode();
        st.live.insert(path.to_path_buf(), ino);
        st.collect_garbage();
        Ok(self.open_file(st, ino))
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let st = self.shared.lock();
        Ok(Mapped::from_bytes(&st.live_inode(path)?.data))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.shared.lock();
        Ok(st.live_inode(path)?.data.clone())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let st = self.shared.lock();
        Ok(st.live_inode(path)?.data.len() as u64)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.shared.lock();
        let ino = st.live_ino(path)?;
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| not_found("inode", path))?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        inode.data.resize(len, 0);
        inode.synced.clone_from(&inode.data);
        Ok(())
    }

    /// Renames a file, replacing any file at `to`. Directories cannot be renamed.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.shared.lock();
        if st.dirs.contains(from) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("FaultDisk cannot rename directories: {}", from.display()),
            ));
        }
        let ino = st.live_ino(from)?;
        st.check_parent(to)?;
        st.check_not_dir(to)?;
        if from == to {
            return Ok(());
        }
        st.live.remove(from);
        st.live.insert(to.to_path_buf(), ino);
        st.collect_garbage();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.shared.lock();
        st.live
            .remove(path)
            .ok_or_else(|| not_found("file", path))?;
        st.collect_garbage();
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.shared.lock();
        if !st.dirs.contains(path) {
            return Err(not_found("directory", path));
        }
        st.live.retain(|p, _| !p.starts_with(path));
        st.durable.retain(|p, _| !p.starts_with(path));
        st.dirs.retain(|p| !p.starts_with(path));
        st.collect_garbage();
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if !st.dir_exists(path) {
            return Err(not_found("directory", path));
        }
        if st.take_sync_fault() {
            return Err(injected("directory fsync failed"));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        st.durable.retain(|p, _| !in_dir(p));
        for (p, &ino) in st.live.iter().filter(|(p, _)| in_dir(p)) {
            st.durable.insert(p.clone(), ino);
        }
        st.dir_syncs += 1;
        st.collect_garbage();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
