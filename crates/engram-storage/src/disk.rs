//! The disk behind the storage engine. [`RealDisk`] is the file system; tests use
//! [`crate::FaultDisk`], which tears writes, drops unsynced data, flips bits and fails
//! fsyncs.
//!
//! Durability model (what both implementations promise and what the engine relies on):
//! - data written to a file is durable after [`DiskFile::sync`] on that file;
//! - a file's *name* (creation, rename, removal) is durable after [`Disk::sync_dir`] on the
//!   directory holding it;
//! - directories made by [`Disk::create_dir_all`] are durable once the call returns.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// A file open for writing at its end.
pub trait DiskFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, overwriting or extending the file.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Another handle on the same open file (a duplicated descriptor), so that it can be synced
    /// without holding the lock that guards the original. Both share one open file
    /// description: write-back errors are reported to whichever handle syncs first, so the
    /// engine syncs a WAL file from one place at a time.
    fn try_clone(&self) -> io::Result<Box<dyn DiskFile>>;
    /// Bytes in the file, written so far.
    fn len(&self) -> u64;
    /// Tells the OS that `len` bytes at `offset`, written and synced, will not be read soon,
    /// so their cached pages can be reused (`POSIX_FADV_DONTNEED`). Only a hint: data and
    /// durability are unaffected. The default does nothing.
    fn drop_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// File-system operations the engine uses. Paths are absolute or relative to the process.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory (its parent must exist). Its name is durable after
    /// [`Disk::sync_dir`] on the parent.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    /// Opens a file for appending, creating it if it does not exist.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens an existing file for positional writes ([`DiskFile::write_at`]).
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Creates a file, truncating it if it exists, for writing from the start.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Maps a whole file read-only. The bytes start 64-byte aligned.
    fn map(&self, path: &Path) -> io::Result<Mapped>;
    /// Reads a whole (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Cuts a file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in a directory durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes `to` name the same bytes as `from` (a hard link where the file system has
    /// them; here, by default, a copy, synced). `to` must not exist.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let bytes = self.read(from)?;
        let mut f = self.create(to)?;
        f.write_all(&bytes)?;
        f.sync()
    }
}

/// Read-only bytes of a whole file, starting 64-byte aligned: a memory map for [`RealDisk`], an
/// owned copy for test disks. Cheap to clone.
#[derive(Clone)]
pub struct Mapped(Arc<MappedInner>);

enum MappedInner {
    Map(memmap2::Mmap),
    Owned(AlignedBytes),
    Empty,
}

impl Mapped {
    /// Wraps owned bytes, copying them into a 64-byte aligned buffer.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Self(Arc::new(MappedInner::Empty));
        }
        Self(Arc::new(MappedInner::Owned(AlignedBytes::copy_from(bytes))))
    }

    /// The mapped region, for NUMA placement and access advice. `None` for owned copies.
    pub fn mmap(&self) -> Option<&memmap2::Mmap> {
        match &*self.0 {
            MappedInner::Map(m) => Some(m),
            _ => None,
        }
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &*self.0 {
            MappedInner::Map(m) => m,
            MappedInner::Owned(b) => b.as_slice(),
            MappedInner::Empty => &[],
        }
    }
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapped({} bytes)", self.len())
    }
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([u8; 64]);

struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBytes {
    fn copy_from(bytes: &[u8]) -> Self {
        let mut blocks = vec![Block([0; 64]); bytes.len().div_ceil(64)];
        for (block, chunk) in blocks.iter_mut().zip(bytes.chunks(64)) {
            block.0[..chunk.len()].copy_from_slice(chunk);
        }
        Self {
            blocks,
            len: bytes.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `blocks` is a contiguous allocation of `blocks.len() * 64` initialised bytes
        // (`Block` is `repr(C)` over a byte array, no padding) and `len <= blocks.len() * 64`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

struct RealFile {
    file: File,
    len: u64,
}

impl DiskFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, offset)?;
        self.len = self.len.max(offset + buf.len() as u64);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn try_clone(&self) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(RealFile {
            file: self.file.try_clone()?,
            len: self.len,
        }))
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn drop_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: an advisory call on a descriptor we own; no memory is passed.
            let r = unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    offset as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
        Ok(())
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(path)?;
        // Make the new directory's name durable in its parent.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            r => r,
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(RealFile { file, len }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(RealFile { file, len }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(RealFile { file, len: 0 }))
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped(Arc::new(MappedInner::Empty)));
        }
        // SAFETY: the engine maps files it wrote: segments are immutable once renamed into place;
        // WAL files are mapped during recovery, which may zero a torn tail through another
        // handle after scanning but reads nothing from the map after that write. Truncation by
        // another process would be outside our contract.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Mapped(Arc::new(MappedInner::Map(map))))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file is written and synced,
/// renamed over `path`, and the directory synced.
pub fn write_file_atomic(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file_renamed(disk, path, bytes)?;
    disk.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Like [`write_file_atomic`] but leaves the directory sync to the caller, who syncs once for
/// several files.
pub fn write_file_renamed(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = disk.create(&tmp)?;
    file.write_all(bytes)?;
    file.sync()?;
    drop(file);
    disk.rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_copies_are_aligned() {
        for len in [1usize, 63, 64, 65, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let m = Mapped::from_bytes(&bytes);
            assert_eq!(&m[..], &bytes[..]);
            assert_eq!(m.as_ptr() as usize % 64, 0);
        }
        assert!(Mapped::from_bytes(&[]).is_empty());
    }

    #[test]
    fn real_disk_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let disk = RealDisk;
        let p = dir.path().join("a/b");
        disk.create_dir_all(&p).unwrap();
        let f = p.join("x");
        write_file_atomic(&disk, &f, b"hello").unwrap();
        assert_eq!(disk.read(&f).unwrap(), b"hello");
        let mut a = disk.open_append(&f).unwrap();
        assert_eq!(a.len(), 5);
        a.write_all(b" world").unwrap();
        a.sync().unwrap();
        assert_eq!(&disk.map(&f).unwrap()[..], b"hello world");
        disk.truncate(&f, 5).unwrap();
        assert_eq!(disk.file_len(&f).unwrap(), 5);
        assert_eq!(disk.list_dir(&p).unwrap(), vec!["x".to_string()]);
    }
}
