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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::disk::{Disk, DiskFile, Mapped};

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

type Ino = u64;

#[derive(Default)]
struct Inode {
    /// Live content.
    data: Vec<u8>,
    /// Content as of the last sync: what a power cut leaves.
    synced: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// Names the running program sees.
    live: BTreeMap<PathBuf, Ino>,
    /// Names a power cut would leave.
    durable: BTreeMap<PathBuf, Ino>,
    inodes: HashMap<Ino, Inode>,
    /// Directories (always durable).
    dirs: BTreeSet<PathBuf>,
    next_ino: Ino,
    /// Bumped by every power cut; handles from an older generation fail.
    generation: u64,
    /// Open handles per inode, in the current generation.
    open_handles: HashMap<Ino, usize>,
    torn_tail: Option<usize>,
    failing_syncs: usize,
    write_budget: Option<u64>,
    syncs: u64,
    dir_syncs: u64,
    power_cuts: u64,
}

fn not_found(what: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{what} not found: {}", path.display()),
    )
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

/// Whether `path` names a directory that always exists: the empty path (the current directory)
/// or a root.
fn is_implicit_dir(path: &Path) -> bool {
    path.as_os_str().is_empty() || path.parent().is_none()
}

impl State {
    fn dir_exists(&self, path: &Path) -> bool {
        is_implicit_dir(path) || self.dirs.contains(path)
    }

    fn parent_exists(&self, path: &Path) -> bool {
        match path.parent() {
            Some(parent) => self.dir_exists(parent),
            None => true,
        }
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        if self.parent_exists(path) {
            Ok(())
        } else {
            Err(not_found("parent directory", path))
        }
    }

    fn check_not_dir(&self, path: &Path) -> io::Result<()> {
        if self.dir_exists(path) {
            Err(io::Error::other(format!(
                "is a directory: {}",
                path.display()
            )))
        } else {
            Ok(())
        }
    }

    fn live_ino(&self, path: &Path) -> io::Result<Ino> {
        self.live
            .get(path)
            .copied()
            .ok_or_else(|| not_found("file", path))
    }

    fn live_inode(&self, path: &Path) -> io::Result<&Inode> {
        let ino = self.live_ino(path)?;
        self.inodes
            .get(&ino)
            .ok_or_else(|| not_found("inode", path))
    }

    fn new_inode(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        ino
    }

    fn open_handle(&mut self, ino: Ino) {
        *self.open_handles.entry(ino).or_insert(0) += 1;
    }

    /// Drops inodes no name (live or durable) and no open handle refers to.
    fn collect_garbage(&mut self) {
        let referenced: HashSet<Ino> = self
            .live
            .values()
            .chain(self.durable.values())
            .chain(self.open_handles.keys())
            .copied()
            .collect();
        self.inodes.retain(|ino, _| referenced.contains(ino));
    }

    fn take_sync_fault(&mut self) -> bool {
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            true
        } else {
            false
        }
    }
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
mod tests {
    use super::*;
    use crate::disk::write_file_atomic;

    fn setup() -> (FaultDisk, PathBuf) {
        let disk = FaultDisk::new();
        let dir = PathBuf::from("/db");
        disk.create_dir_all(&dir).unwrap();
        (disk, dir)
    }

    /// Creates `name` in `dir` with `bytes`, synced, its name durable.
    fn durable_file(disk: &FaultDisk, dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut f = disk.create(&path).unwrap();
        f.write_all(bytes).unwrap();
        f.sync().unwrap();
        disk.sync_dir(dir).unwrap();
        path
    }

    #[test]
    fn unsynced_data_is_lost_on_power_cut() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"hello").unwrap();
        assert_eq!(disk.file_bytes(&p).unwrap(), b"hello");
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"");
        disk.power_cut();
        assert!(disk.exists(&p));
        assert_eq!(disk.read(&p).unwrap(), b"");
    }

    #[test]
    fn synced_data_is_kept_and_later_writes_lost() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"one");
        let mut f = disk.open_append(&p).unwrap();
        assert_eq!(f.len(), 3);
        f.write_all(b" two").unwrap();
        f.sync().unwrap();
        f.write_all(b" three").unwrap();
        assert_eq!(f.len(), 13);
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"one two");
        assert_eq!(disk.syncs(), 2);
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"one two");
        assert_eq!(disk.file_len(&p).unwrap(), 7);
        assert_eq!(disk.power_cuts(), 1);
    }

    #[test]
    fn synced_file_without_dir_sync_disappears() {
        let (disk, dir) = setup();
        let p = dir.join("seg");
        let mut f = disk.create(&p).unwrap();
        f.write_all(b"data").unwrap();
        f.sync().unwrap();
        assert!(disk.exists(&p));
        assert_eq!(disk.durable_bytes(&p), None);
        drop(f);
        disk.power_cut();
        assert!(!disk.exists(&p));
        assert_eq!(disk.file_bytes(&p), None);
        assert!(disk.list_dir(&dir).unwrap().is_empty());
        assert!(disk.read(&p).is_err());
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let (disk, dir) = setup();
        let a = durable_file(&disk, &dir, "a", b"A");
        let b = durable_file(&disk, &dir, "b", b"B");
        disk.rename(&a, &b).unwrap();
        assert!(!disk.exists(&a));
        assert_eq!(disk.read(&b).unwrap(), b"A");
        disk.power_cut();
        assert_eq!(disk.read(&a).unwrap(), b"A");
        assert_eq!(disk.read(&b).unwrap(), b"B");

        disk.rename(&a, &b).unwrap();
        disk.sync_dir(&dir).unwrap();
        assert_eq!(disk.durable_bytes(&a), None);
        disk.power_cut();
        assert!(!disk.exists(&a));
        assert_eq!(disk.read(&b).unwrap(), b"A");
        assert_eq!(disk.list_dir(&dir).unwrap(), vec!["b".to_string()]);
    }

    #[test]
    fn remove_is_durable_only_after_sync_dir() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "old", b"x");
        disk.remove_file(&p).unwrap();
        assert!(!disk.exists(&p));
        assert!(disk.remove_file(&p).is_err());
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"x");
        disk.remove_file(&p).unwrap();
        disk.sync_dir(&dir).unwrap();
        disk.power_cut();
        assert!(!disk.exists(&p));
    }

    #[test]
    fn torn_tail_keeps_exactly_keep_bytes() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"synced|");
        let short = durable_file(&disk, &dir, "short", b"s");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut g = disk.open_append(&short).unwrap();
        g.write_all(b"12").unwrap();
        disk.set_torn_tail(Some(4));
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"synced|0123");
        // Fewer unsynced bytes than `keep`: all of them survive.
        assert_eq!(disk.read(&short).unwrap(), b"s12");
        // What survived is now the durable content.
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"synced|0123");
        disk.set_torn_tail(None);
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"synced|0123");
    }

    #[test]
    fn torn_overwrite_keeps_bytes_from_the_first_change() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "f", b"abcdef");
        disk.set_torn_tail(Some(2));
        let mut f = disk.open_write(&p).unwrap();
        f.write_at(2, b"XYZ").unwrap();
        drop(f);
        disk.power_cut();
        // Two bytes from the first changed one survive; the rest is the synced content.
        assert_eq!(disk.read(&p).unwrap(), b"abXYef");
    }

    #[test]
    fn write_at_extends_with_zeros() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "f", b"ab");
        let mut f = disk.open_write(&p).unwrap();
        f.write_at(4, b"z").unwrap();
        f.sync().unwrap();
        assert_eq!(disk.read(&p).unwrap(), b"ab\0\0z");
    }

    #[test]
    fn failed_syncs_make_nothing_durable() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"a");
        let q = dir.join("new");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"b").unwrap();
        disk.create(&q).unwrap();
        disk.fail_syncs(2);
        assert!(f.sync().is_err());
        assert!(disk.sync_dir(&dir).is_err());
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"a");
        assert_eq!(disk.durable_bytes(&q), None);
        assert_eq!(disk.syncs(), 1);
        // The third sync succeeds.
        f.sync().unwrap();
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"ab");
        assert_eq!(disk.syncs(), 2);
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"ab");
        assert!(!disk.exists(&q));
    }

    #[test]
    fn fail_writes_after_tears_a_write() {
        let (disk, dir) = setup();
        let p = dir.join("wal");
        let mut f = disk.create(&p).unwrap();
        disk.fail_writes_after(Some(6));
        f.write_all(b"abcd").unwrap();
        let err = f.write_all(b"efgh").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdef");
        assert_eq!(f.len(), 6);
        assert!(f.write_all(b"x").is_err());
        f.write_all(b"").unwrap();
        assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdef");
        disk.fail_writes_after(None);
        f.write_all(b"g").unwrap();
        assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdefg");
    }

    #[test]
    fn write_limit_is_shared_across_files() {
        let (disk, dir) = setup();
        let mut a = disk.create(&dir.join("a")).unwrap();
        let mut b = disk.create(&dir.join("b")).unwrap();
        disk.fail_writes_after(Some(3));
        a.write_all(b"12").unwrap();
        assert!(b.write_all(b"34").is_err());
        assert_eq!(disk.file_bytes(&dir.join("b")).unwrap(), b"3");
    }

    #[test]
    fn flip_bit_is_visible_through_map_and_survives_power_cut() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "seg", &[0u8; 100]);
        disk.flip_bit(&p, 70, 3);
        let m = disk.map(&p).unwrap();
        assert_eq!(m.len(), 100);
        assert_eq!(m[70], 8);
        assert_eq!(m.iter().filter(|&&b| b != 0).count(), 1);
        assert_eq!(m.as_ptr() as usize % 64, 0);
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap()[70], 8);
        disk.flip_bit(&p, 70, 3);
        assert_eq!(disk.read(&p).unwrap(), vec![0u8; 100]);
    }

    #[test]
    fn flip_bit_past_synced_data_changes_live_only() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"\0\0");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"\0\0").unwrap();
        disk.flip_bit(&p, 3, 0);
        assert_eq!(disk.file_bytes(&p).unwrap(), b"\0\0\0\x01");
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"\0\0");
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn flip_bit_past_end_panics() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "f", b"ab");
        disk.flip_bit(&p, 2, 0);
    }

    #[test]
    fn corrupt_overwrites_live_and_synced() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "f", b"abcdef");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"gh").unwrap();
        disk.corrupt(&p, 4, b"XYZ");
        assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdXYZh");
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"abcdXY");
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"abcdXY");
    }

    #[test]
    fn old_handles_fail_after_power_cut() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"a");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"b").unwrap();
        disk.power_cut();
        assert!(f.write_all(b"c").is_err());
        assert!(f.sync().is_err());
        assert_eq!(disk.read(&p).unwrap(), b"a");
        // A fresh handle works.
        let mut g = disk.open_append(&p).unwrap();
        assert_eq!(g.len(), 1);
        g.write_all(b"c").unwrap();
        drop(f);
        g.sync().unwrap();
        assert_eq!(disk.read(&p).unwrap(), b"ac");
    }

    #[test]
    fn writes_to_unlinked_file_go_to_its_inode() {
        let (disk, dir) = setup();
        let p = dir.join("tmp");
        let mut f = disk.create(&p).unwrap();
        f.write_all(b"a").unwrap();
        disk.remove_file(&p).unwrap();
        f.write_all(b"b").unwrap();
        f.sync().unwrap();
        assert_eq!(f.len(), 2);
        assert!(!disk.exists(&p));
        // A new file under the same name is a different inode.
        let mut g = disk.create(&p).unwrap();
        g.write_all(b"new").unwrap();
        f.write_all(b"c").unwrap();
        assert_eq!(disk.read(&p).unwrap(), b"new");
        drop(f);
        assert_eq!(disk.shared.lock().inodes.len(), 1);
    }

    #[test]
    fn create_replaces_content_with_a_new_inode() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "f", b"old");
        let mut f = disk.create(&p).unwrap();
        assert_eq!(f.len(), 0);
        f.write_all(b"new").unwrap();
        f.sync().unwrap();
        assert_eq!(disk.read(&p).unwrap(), b"new");
        // The replacement name is not durable yet.
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"old");
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"old");
    }

    #[test]
    fn truncate_is_durable() {
        let (disk, dir) = setup();
        let p = durable_file(&disk, &dir, "wal", b"abc");
        let mut f = disk.open_append(&p).unwrap();
        f.write_all(b"defgh").unwrap();
        disk.truncate(&p, 5).unwrap();
        assert_eq!(disk.read(&p).unwrap(), b"abcde");
        assert_eq!(disk.durable_bytes(&p).unwrap(), b"abcde");
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"abcde");
        disk.truncate(&p, 7).unwrap();
        assert_eq!(disk.read(&p).unwrap(), b"abcde\0\0");
        assert!(disk.truncate(&dir.join("missing"), 0).is_err());
    }

    #[test]
    fn directories_and_listing() {
        let disk = FaultDisk::new();
        let root = Path::new("/data/db");
        assert!(disk.list_dir(root).is_err());
        assert_eq!(
            disk.list_dir(root).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        disk.create_dir_all(&root.join("segments")).unwrap();
        disk.create_dir_all(&root.join("segments")).unwrap();
        assert!(disk.exists(Path::new("/data")));
        disk.create(&root.join("wal")).unwrap();
        let mut names = disk.list_dir(root).unwrap();
        names.sort();
        assert_eq!(names, vec!["segments".to_string(), "wal".to_string()]);
        assert!(disk.list_dir(&root.join("segments")).unwrap().is_empty());
        // Directories are durable at once.
        disk.power_cut();
        assert!(disk.exists(&root.join("segments")));
        assert_eq!(disk.list_dir(root).unwrap(), vec!["segments".to_string()]);
        // A file cannot be created where a directory is, nor a directory over a file.
        assert!(disk.create(&root.join("segments")).is_err());
        disk.create(&root.join("f")).unwrap();
        assert!(disk.create_dir_all(&root.join("f/g")).is_err());
    }

    #[test]
    fn missing_parent_is_not_found() {
        let (disk, dir) = setup();
        let p = dir.join("nope/file");
        let kind = |r: io::Result<Box<dyn DiskFile>>| r.err().map(|e| e.kind());
        assert_eq!(kind(disk.create(&p)), Some(io::ErrorKind::NotFound));
        assert_eq!(kind(disk.open_append(&p)), Some(io::ErrorKind::NotFound));
        let a = durable_file(&disk, &dir, "a", b"");
        assert_eq!(
            disk.rename(&a, &p).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(disk.exists(&a));
        assert_eq!(
            disk.sync_dir(&dir.join("nope")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(disk.map(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(disk.read(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            disk.file_len(&p).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn remove_dir_all_is_durable_at_once() {
        let (disk, dir) = setup();
        let sub = dir.join("snap");
        disk.create_dir_all(&sub.join("inner")).unwrap();
        let p = durable_file(&disk, &sub, "f", b"x");
        durable_file(&disk, &sub.join("inner"), "g", b"y");
        let keep = durable_file(&disk, &dir, "snapshot", b"z");
        disk.remove_dir_all(&sub).unwrap();
        assert!(!disk.exists(&sub));
        assert!(!disk.exists(&p));
        assert_eq!(disk.durable_bytes(&p), None);
        disk.power_cut();
        assert!(!disk.exists(&sub));
        assert!(!disk.exists(&p));
        assert_eq!(disk.read(&keep).unwrap(), b"z");
        assert_eq!(disk.list_dir(&dir).unwrap(), vec!["snapshot".to_string()]);
        assert!(disk.remove_dir_all(&sub).is_err());
    }

    #[test]
    fn sync_dir_covers_only_direct_entries() {
        let (disk, dir) = setup();
        let sub = dir.join("sub");
        disk.create_dir_all(&sub).unwrap();
        let top = dir.join("top");
        let nested = sub.join("nested");
        for p in [&top, &nested] {
            let mut f = disk.create(p).unwrap();
            f.write_all(b"1").unwrap();
            f.sync().unwrap();
        }
        disk.sync_dir(&dir).unwrap();
        assert_eq!(disk.dir_syncs(), 1);
        disk.power_cut();
        assert!(disk.exists(&top));
        assert!(!disk.exists(&nested));
    }

    #[test]
    fn open_append_creates_a_live_name_only() {
        let (disk, dir) = setup();
        let p = dir.join("wal");
        let mut f = disk.open_append(&p).unwrap();
        assert!(f.is_empty());
        f.write_all(b"x").unwrap();
        f.sync().unwrap();
        drop(f);
        let g = disk.open_append(&p).unwrap();
        assert_eq!(g.len(), 1);
        drop(g);
        disk.power_cut();
        assert!(!disk.exists(&p));
    }

    #[test]
    fn atomic_write_survives_power_cut() {
        let (disk, dir) = setup();
        let p = dir.join("manifest");
        write_file_atomic(&disk, &p, b"v1").unwrap();
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"v1");
        assert!(!disk.exists(&dir.join("manifest.tmp")));
        // A failed directory sync leaves the old version durable.
        disk.fail_syncs(1);
        let mut f = disk.create(&dir.join("manifest.tmp")).unwrap();
        f.write_all(b"v2").unwrap();
        f.sync().unwrap_err();
        disk.clear_faults();
        drop(f);
        write_file_atomic(&disk, &p, b"v2").unwrap();
        disk.power_cut();
        assert_eq!(disk.read(&p).unwrap(), b"v2");
    }

    #[test]
    fn clones_share_state() {
        let (disk, dir) = setup();
        let handle = disk.clone();
        let engine: Box<dyn Disk> = Box::new(disk);
        let p = dir.join("f");
        let mut f = engine.create(&p).unwrap();
        f.write_all(b"shared").unwrap();
        assert_eq!(handle.file_bytes(&p).unwrap(), b"shared");
        handle.power_cut();
        assert!(f.write_all(b"x").is_err());
        assert!(!engine.exists(&p));
        assert!(format!("{engine:?}").contains("FaultDisk"));
    }

    #[test]
    fn power_cut_drops_orphaned_inodes() {
        let (disk, dir) = setup();
        let mut f = disk.create(&dir.join("a")).unwrap();
        f.write_all(&[1; 1000]).unwrap();
        durable_file(&disk, &dir, "b", b"b");
        disk.remove_file(&dir.join("a")).unwrap();
        disk.sync_dir(&dir).unwrap();
        // Unnamed but still open: kept until the handle goes or the power does.
        assert_eq!(disk.shared.lock().inodes.len(), 2);
        disk.power_cut();
        drop(f);
        assert_eq!(disk.shared.lock().inodes.len(), 1);
    }
}
