//! The fault disk's model of a file system: inodes with live and synced bytes, the live and
//! durable namespaces, directories, open handles, and the armed faults (see [`super`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

pub(super) type Ino = u64;

#[derive(Default)]
pub(super) struct Inode {
    /// Live content.
    pub(super) data: Vec<u8>,
    /// Content as of the last sync: what a power cut leaves.
    pub(super) synced: Vec<u8>,
}

#[derive(Default)]
pub(super) struct State {
    /// Names the running program sees.
    pub(super) live: BTreeMap<PathBuf, Ino>,
    /// Names a power cut would leave.
    pub(super) durable: BTreeMap<PathBuf, Ino>,
    pub(super) inodes: HashMap<Ino, Inode>,
    /// Directories (always durable).
    pub(super) dirs: BTreeSet<PathBuf>,
    pub(super) next_ino: Ino,
    /// Bumped by every power cut; handles from an older generation fail.
    pub(super) generation: u64,
    /// Open handles per inode, in the current generation.
    pub(super) open_handles: HashMap<Ino, usize>,
    pub(super) torn_tail: Option<usize>,
    pub(super) failing_syncs: usize,
    /// Syncs that succeed before every sync fails (`None`: no limit).
    pub(super) sync_budget: Option<u64>,
    pub(super) write_budget: Option<u64>,
    pub(super) syncs: u64,
    pub(super) dir_syncs: u64,
    pub(super) power_cuts: u64,
}

pub(super) fn not_found(what: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{what} not found: {}", path.display()),
    )
}

pub(super) fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

/// Whether `path` names a directory that always exists: the empty path (the current directory)
/// or a root.
pub(super) fn is_implicit_dir(path: &Path) -> bool {
    path.as_os_str().is_empty() || path.parent().is_none()
}

impl State {
    pub(super) fn dir_exists(&self, path: &Path) -> bool {
        is_implicit_dir(path) || self.dirs.contains(path)
    }

    pub(super) fn parent_exists(&self, path: &Path) -> bool {
        match path.parent() {
            Some(parent) => self.dir_exists(parent),
            None => true,
        }
    }

    pub(super) fn check_parent(&self, path: &Path) -> io::Result<()> {
        if self.parent_exists(path) {
            Ok(())
        } else {
            Err(not_found("parent directory", path))
        }
    }

    pub(super) fn check_not_dir(&self, path: &Path) -> io::Result<()> {
        if self.dir_exists(path) {
            Err(io::Error::other(format!(
                "is a directory: {}",
                path.display()
            )))
        } else {
            Ok(())
        }
    }

    pub(super) fn live_ino(&self, path: &Path) -> io::Result<Ino> {
        self.live
            .get(path)
            .copied()
            .ok_or_else(|| not_found("file", path))
    }

    pub(super) fn live_inode(&self, path: &Path) -> io::Result<&Inode> {
        let ino = self.live_ino(path)?;
        self.inodes
            .get(&ino)
            .ok_or_else(|| not_found("inode", path))
    }

    pub(super) fn new_inode(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        ino
    }

    pub(super) fn open_handle(&mut self, ino: Ino) {
        *self.open_handles.entry(ino).or_insert(0) += 1;
    }

    /// Drops inodes no name (live or durable) and no open handle refers to.
    pub(super) fn collect_garbage(&mut self) {
        let referenced: HashSet<Ino> = self
            .live
            .values()
            .chain(self.durable.values())
            .chain(self.open_handles.keys())
            .copied()
            .collect();
        self.inodes.retain(|ino, _| referenced.contains(ino));
    }

    pub(super) fn take_sync_fault(&mut self) -> bool {
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            return true;
        }
        match &mut self.sync_budget {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}
