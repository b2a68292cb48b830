//! One memory space on this node: its metadata, memtables and sealed segments behind one
//! lock ([`SpaceState`]), how it is opened from its directory, and the reads and the apply
//! step on that state. Reads see the active memtable, then the frozen one (being flushed),
//! then segments newest first. Searches are in `search.rs`, what the engine may read in
//! `view.rs`; flushing and merging in [`crate::compaction`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use engram_core::{Link, Memory, MemoryId, SpaceId};
use parking_lot::{Mutex, RwLock};

use crate::disk::Disk;
use crate::error::{IoContext, Result, StorageError};
use crate::index::{index_path, INDEX_EXTENSION};
use crate::lexical::{lex_path, LEX_EXTENSION};
use crate::memtable::{Entry, Memtable};
use crate::meta::{SpaceMeta, SPACE_META_FILE};
use crate::op::Op;
use crate::raft::Command;
use crate::raft::{RaftApplied, RAFT_STATE_FILE};
use crate::requests::{decode_table_file, Answer, Requests, REQUESTS_FILE};
use crate::segment::{parse_segment_file_name, segment_file_name, Lookup, Segment};
use crate::space::derived::{open_index, open_lex};

/// A space's mutable state, behind one lock.
#[derive(Debug)]
pub(crate) struct SpaceState {
    /// Whether `space.meta` is on disk.
    pub(crate) meta_persisted: bool,
    pub(crate) dropped: bool,
    pub(crate) active: Memtable,
    pub(crate) frozen: Option<Arc<Memtable>>,
    /// Sealed segments, oldest first (ascending max sequence).
    pub(crate) segments: Vec<Arc<Segment>>,
    /// Every record of this space up to this sequence is in `segments` (or `space.meta`).
    pub(crate) flushed_seq: u64,
    /// A replicated space: what it has applied of its group's log (`None` otherwise).
    pub(crate) raft: Option<RaftApplied>,
    /// What its `raft.state` says, as written by the last flush (or read at load).
    pub(crate) raft_persisted: Option<RaftApplied>,
    /// `raft` when the frozen memtable was frozen: written once that memtable is a segment.
    pub(crate) frozen_raft: Option<RaftApplied>,
    /// The space's table of client requests (see [`crate::requests`]): in a replicated
    /// space, kept with `raft.state`; in an unreplicated one, in `requests.table`.
    pub(crate) requests: Requests,
    /// `requests` when the frozen memtable was frozen, written as that memtable is flushed
    /// (`None` for an unreplicated space that never had a key).
    pub(crate) frozen_requests: Option<Requests>,
    /// An unreplicated space: the sequence its `requests.table` is as of (0: none). Replay
    /// records the keys of flushed records after it (their changes are in segments).
    pub(crate) requests_as_of: u64,
    /// Keyed writes queued and not applied yet, by key (a request whose caller gave up
    /// waiting is still under way: a repeat meanwhile must not write again).
    pub(crate) pending_requests: HashMap<String, u32>,
}

/// One memory space.
#[derive(Debug)]
pub(crate) struct Space {
    pub(crate) id: SpaceId,
    /// Fixed at creation: read without the state lock.
    pub(crate) meta: SpaceMeta,
    pub(crate) dir: PathBuf,
    pub(crate) state: RwLock<SpaceState>,
    /// Logical time of last use, for the LRU of open spaces.
    pub(crate) last_used: AtomicU64,
    /// Held while this space's files are being changed (flush, merge, drop).
    pub(crate) files: Mutex<()>,
    /// Held by a merge from choosing its inputs to replacing them (a background merge holds it
    /// while it builds the merged segment's index, without `files`, so flushes go on).
    pub(crate) merging: Mutex<()>,
    /// Set when a merge failed (a segment failing its checksums): background merges of this
    /// space stop until it is loaded again (a restart, or a release and reload when idle).
    pub(crate) merge_blocked: AtomicBool,
}

impl Space {
    /// A space created by a WAL record (or, replicated, by its group's log), with nothing
    /// on disk yet.
    pub(crate) fn new_in_memory(id: SpaceId, dir: PathBuf, meta: SpaceMeta) -> Self {
        let raft = meta.replicated.then(RaftApplied::default);
        Self {
            id,
            meta,
            dir,
            state: RwLock::new(SpaceState {
                meta_persisted: false,
                dropped: false,
                active: Memtable::default(),
                frozen: None,
                segments: Vec::new(),
                flushed_seq: 0,
                raft,
                raft_persisted: None,
                frozen_raft: None,
                requests: Requests::default(),
                frozen_requests: None,
                requests_as_of: 0,
                pending_requests: HashMap::new(),
            }),
            last_used: AtomicU64::new(0),
            files: Mutex::new(()),
            merging: Mutex::new(()),
            merge_blocked: AtomicBool::new(false),
        }
    }

    /// Opens a space from its directory: reads `space.meta`, opens every segment (mapping it),
    /// removes temporary files and segments a merge has superseded. `Ok(None)` when the
    /// directory has no `space.meta` (a space whose creation never reached a flush).
    /// A segment that does not open (corrupt footer or directory) is handed to `on_corrupt`
    /// (which moves it aside) and skipped.
    pub(crate) fn load(
        disk: &dyn Disk,
        id: SpaceId,
        dir: PathBuf,
        on_corrupt: &mut dyn FnMut(&Path, &StorageError),
    ) -> Result<Option<Self>> {
        let meta_path = dir.join(SPACE_META_FILE);
        if !disk.exists(&meta_path) {
            return Ok(None);
        }
        let meta = SpaceMeta::decode(&disk.read(&meta_path).at(&meta_path)?)?;
        let (raft, requests, requests_as_of) = if meta.replicated {
            let (raft, requests) = read_raft_state_with(disk, &dir)?.unwrap_or_default();
            (Some(raft), requests, 0)
        } else {
            let (requests, as_of) = read_requests(disk, &dir);
            (None, requests, as_of)
        };
        let mut ranges = Vec::new();
        let mut removed = false;
        let mut index_files = Vec::new();
        for name in disk.list_dir(&dir).at(&dir)? {
            if name.ends_with(".tmp") {
                let p = dir.join(&name);
                disk.remove_file(&p).at(&p)?;
                removed = true;
            } else if let Some(r) = parse_segment_file_name(&name) {
                ranges.push(r);
            } else if name.ends_with(&format!(".{INDEX_EXTENSION}"))
                || name.ends_with(&format!(".{LEX_EXTENSION}"))
            {
                index_files.push(dir.join(&name));
            }
        }
        // A merge's output covers the ranges of its inputs; inputs left by a crash between the
        // rename of the output and their removal are superseded.
        ranges.sort_by_key(|&(min, max)| (min, std::cmp::Reverse(max)));
        let mut kept: Vec<(u64, u64)> = Vec::new();
        for r in ranges {
            if kept.iter().any(|k| k.0 <= r.0 && r.1 <= k.1) {
                let p = dir.join(segment_file_name(r.0, r.1));
                tracing::info!(path = %p.display(), "removing a segment superseded by a merge");
                disk.remove_file(&p).at(&p)?;
                removed = true;
            } else {
                kept.push(r);
            }
        }
        // An index whose segment is gone (merged away before the index was removed) is
        // derived data of nothing.
        for p in index_files {
            let owned = kept.iter().any(|(min, max)| {
                let seg = dir.join(segment_file_name(*min, *max));
                index_path(&seg) == p || lex_path(&seg) == p
            });
            if !owned {
                tracing::info!(path = %p.display(), "removing an index whose segment is gone");
                disk.remove_file(&p).at(&p)?;
                removed = true;
            }
        }
        if removed {
            disk.sync_dir(&dir).at(&dir)?;
        }
        kept.sort_by_key(|r| r.1);
        let mut segments = Vec::with_capacity(kept.len());
        let mut flushed_seq = meta.created_seq;
        for (min, max) in &kept {
            let path = dir.join(segment_file_name(*min, *max));
            match Segment::open(disk, &path) {
                Ok(seg) => {
                    flushed_seq = flushed_seq.max(*max);
                    open_index(disk, &seg)?;
                    open_lex(disk, &seg);
                    segments.push(Arc::new(seg));
                }
                Err(e @ StorageError::Corrupted(_)) => {
                    tracing::error!(path = %path.display(), error = %e, "corrupt segment moved to quarantine");
                    on_corrupt(&path, &e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(Self {
            id,
            meta,
            dir,
            state: RwLock::new(SpaceState {
                meta_persisted: true,
                dropped: false,
                active: Memtable::default(),
                frozen: None,
                segments,
                flushed_seq,
                raft_persisted: raft.clone(),
                raft,
                frozen_raft: None,
                requests,
                frozen_requests: None,
                requests_as_of,
                pending_requests: HashMap::new(),
            }),
            last_used: AtomicU64::new(0),
            files: Mutex::new(()),
            merging: Mutex::new(()),
            merge_blocked: AtomicBool::new(false),
        }))
    }

    pub(crate) fn touch(&self, clock: u64) {
        self.last_used.store(clock, Ordering::Relaxed);
    }
}

impl SpaceState {
    /// The newest version of a memory, found where it is (the active memtable, the frozen
    /// one, then segments newest first) and read with `live` or `row`; `None` if absent or
    /// deleted. Every read by id goes through here.
    fn newest<T>(
        &self,
        id: &str,
        live: impl FnOnce(&Memory) -> Option<T>,
        row: impl FnOnce(&Segment, usize) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if let Some(e) = table.entries.get(id) {
                return Ok(match e {
                    Entry::Live(m) => live(m),
                    Entry::Tombstone => None,
                });
            }
        }
        for seg in self.segments.iter().rev() {
            match seg.find(id)? {
                Lookup::Row(r) => return row(seg, r),
                Lookup::Tombstone => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// The newest version of a memory, or `None` if absent or deleted.
    pub(crate) fn get(&self, id: &str) -> Result<Option<Memory>> {
        self.newest(id, |m| Some(m.clone()), |seg, r| seg.memory(r).map(Some))
    }

    /// The links out of the newest version of a memory (`None` if absent or deleted), without
    /// copying the rest of it.
    pub(crate) fn links(&self, id: &str) -> Result<Option<Vec<Link>>> {
        self.newest(
            id,
            |m| Some(m.links.clone()),
            |seg, r| seg.links(r).map(Some),
        )
    }

    /// The confidence of the newest version of a memory (`None` if absent or deleted).
    pub(crate) fn confidence(&self, id: &str) -> Result<Option<f32>> {
        self.newest(
            id,
            |m| Some(m.confidence),
            |seg, r| Ok(Some(seg.confidence(r))),
        )
    }

    /// The similarity (dot product) of `query` to the newest version of a memory's embedding
    /// (`None` if absent, deleted, or of another dimension), without copying the memory.
    pub(crate) fn similarity(&self, id: &str, query: &[f32]) -> Result<Option<f32>> {
        let sim = |e: &[f32]| (e.len() == query.len()).then(|| engram_core::simd::dot(query, e));
        self.newest(
            id,
            |m| sim(&m.embedding),
            |seg, r| Ok(sim(seg.embedding(r))),
        )
    }

    /// Rows held (memtable entries and segment rows, replaced versions and tombstones
    /// included): an upper bound of the live memories, without reading any id.
    pub(crate) fn approx_rows(&self) -> usize {
        self.active.entries.len()
            + self.frozen.as_ref().map_or(0, |f| f.entries.len())
            + self.segments.iter().map(|s| s.rows()).sum::<usize>()
    }

    pub(crate) fn contains(&self, id: &str) -> Result<bool> {
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if let Some(e) = table.entries.get(id) {
                return Ok(matches!(e, Entry::Live(_)));
            }
        }
        for seg in self.segments.iter().rev() {
            match seg.find(id)? {
                Lookup::Row(_) => return Ok(true),
                Lookup::Tombstone => return Ok(false),
                Lookup::Absent => {}
            }
        }
        Ok(false)
    }

    /// Calls `f` with the newest version of every live memory, in no particular order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(Memory)) -> Result<()> {
        let mut seen: HashSet<&str> = HashSet::new();
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            for (id, e) in &table.entries {
                if seen.insert(id.as_str()) {
                    if let Entry::Live(m) = e {
                        f((**m).clone());
                    }
                }
            }
        }
        for seg in self.segments.iter().rev() {
            for row in 0..seg.rows() {
                let id = seg.id(row)?;
                if seen.insert(id) {
                    f(seg.memory(row)?);
                }
            }
            for t in 0..seg.info().tombstones {
                seen.insert(seg.tombstone(t)?);
            }
        }
        Ok(())
    }

    /// Whether `id`, found in segment `si`, is that memory's newest version: no memtable and
    /// no newer segment holds it (as a memory or a tombstone).
    pub(super) fn newest_in_segment(&self, si: usize, id: &str) -> Result<bool> {
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if table.entries.contains_key(id) {
                return Ok(false);
            }
        }
        for seg in &self.segments[si + 1..] {
            if !matches!(seg.find(id)?, Lookup::Absent) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The memtables' live memories, each id once (the frozen table's version is replaced by
    /// any entry of the active one), with the table holding it.
    pub(super) fn memtable_live(
        &self,
    ) -> impl Iterator<Item = (&Memtable, &MemoryId, &Arc<Memory>)> {
        let active = &self.active;
        std::iter::once(active)
            .chain(self.frozen.as_deref())
            .enumerate()
            .flat_map(move |(ti, table)| {
                table.entries.iter().filter_map(move |(id, e)| match e {
                    Entry::Live(m) if ti == 0 || !active.entries.contains_key(id.as_str()) => {
                        Some((table, id, m))
                    }
                    _ => None,
                })
            })
    }

    /// Number of live memories (exact; walks the ids).
    pub(crate) fn count(&self) -> Result<usize> {
        let mut n = 0;
        let mut seen: HashSet<&str> = HashSet::new();
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            for (id, e) in &table.entries {
                if seen.insert(id.as_str()) && matches!(e, Entry::Live(_)) {
                    n += 1;
                }
            }
        }
        for seg in self.segments.iter().rev() {
            for row in 0..seg.rows() {
                if seen.insert(seg.id(row)?) {
                    n += 1;
                }
            }
            for t in 0..seg.info().tombstones {
                seen.insert(seg.tombstone(t)?);
            }
        }
        Ok(n)
    }

    /// Applies one operation (already durable in the WAL at `seq`). Deterministic, so replay
    /// gives the same state; operations on absent memories change nothing.
    pub(crate) fn apply(&mut self, seq: u64, op: Op) -> Result<()> {
        self.active.note(seq);
        match op {
            Op::Remember(m) => self.active.put(m),
            Op::RememberBatch(ms) => {
                for m in ms {
                    self.active.put(m);
                }
            }
            Op::Forget(id) => self.active.tombstone(id),
            Op::Link { from, to, weight } => {
                if let Some(mut m) = self.get(from.as_str())? {
                    if let Some(l) = m.links.iter_mut().find(|l| l.to == to) {
                        l.weight = weight;
                    } else if m.links.len() < engram_core::limits::MAX_LINKS {
                        m.links.push(Link { to, weight });
                    }
                    self.put_keeping_pending(m);
                }
            }
            Op::Unlink { from, to } => {
                if let Some(mut m) = self.get(from.as_str())? {
                    let before = m.links.len();
                    m.links.retain(|l| l.to != to);
                    if m.links.len() != before {
                        self.put_keeping_pending(m);
                    }
                }
            }
            Op::RememberAutoLink(ms) => {
                for (i, (m, pending)) in ms.into_iter().enumerate() {
                    if pending {
                        self.active.put_pending(m, (seq, i as u32));
                    } else {
                        self.active.put(m);
                    }
                }
            }
            Op::AutoLinks(made) => {
                // Only the version linked, still waiting in the active memtable, takes them:
                // one frozen since gets its links as it is flushed, one replaced or deleted
                // needs none (a newer version owed links has a key of its own).
                for a in made {
                    if self.active.pending_key(&a.id) != Some(a.key) {
                        continue;
                    }
                    if let Some(Entry::Live(m)) = self.active.entries.get(&a.id) {
                        let mut m = Memory::clone(m);
                        add_links(&mut m, a.links);
                        self.active.put(m);
                    }
                }
            }
            Op::Request(c) => self.apply_keyed(seq, *c, true)?,
            Op::SpaceCreate { .. } | Op::SpaceDrop => {}
            // The replication layer's log and the metadata group's commands: never a space's
            // (`Store::apply_entry` refuses a metadata command in a space's group).
            Op::RaftEntry(_) | Op::RaftMeta(_) | Op::RaftTruncate(_) | Op::Meta(_) => {}
        }
        Ok(())
    }

    /// Applies the keyed write at `seq`: a repeat of a key the table holds changes nothing (the
    /// caller answers repeats from the table before writing; this keeps replay and any race to
    /// the same outcome); otherwise the write applies (unless `data` is false: its change is
    /// in a segment already and only its key is replayed) and its key is recorded with its
    /// answer. The table is then as of `seq`, at commit and at replay alike.
    fn apply_keyed(&mut self, seq: u64, c: Command, data: bool) -> Result<()> {
        let Command { op, request } = c;
        let Some((key, at_us)) = request else {
            return if data { self.apply(seq, op) } else { Ok(()) };
        };
        self.unpend_request(&key);
        if self.requests.repeat_of(&key, seq, 0, at_us).is_some() {
            return Ok(());
        }
        // The store writes a keyed forget only for a memory it found, so its answer says the
        // memory existed (read from the record alone, the same at replay).
        let answer = Answer::of(&op, |_| true);
        if data {
            self.apply(seq, op)?;
        }
        if let Some(a) = answer {
            self.requests.record(&key, seq, 0, at_us, a);
        }
        Ok(())
    }

    /// One queued write with `key` is no longer pending (applied, or never queued).
    pub(crate) fn unpend_request(&mut self, key: &str) {
        if let Some(n) = self.pending_requests.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pending_requests.remove(key);
            }
        }
    }

    /// A record at `seq`, at or below `flushed_seq` (its change is in a segment), met again by
    /// replay: a keyed write's key is recorded when `requests.table` is older than it (a crash
    /// after the segment was written and before the table was).
    pub(crate) fn replay_flushed(&mut self, seq: u64, op: Op) -> Result<()> {
        match op {
            Op::Request(c) if seq > self.requests_as_of => self.apply_keyed(seq, *c, false),
            _ => Ok(()),
        }
    }

    /// Puts `m` (the newest version with an explicit link added or removed) in the active
    /// memtable, still owed its automatic links if the version it changes was (under the same
    /// key: the links are made for the same embedding).
    fn put_keeping_pending(&mut self, m: Memory) {
        let key = self
            .active
            .pending_key(&m.id)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.pending_key(&m.id)));
        match key {
            Some(key) => self.active.put_pending(m, key),
            None => self.active.put(m),
        }
    }

    /// Bytes in sealed segments.
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_len() as u64).sum()
    }
}

/// A replicated space's (or group's) `raft.state` in `dir`, if it has one.
pub(crate) fn read_raft_state(disk: &dyn Disk, dir: &Path) -> Result<Option<RaftApplied>> {
    Ok(read_raft_state_with(disk, dir)?.map(|(raft, _)| raft))
}

/// A replicated space's `raft.state` with its requests table.
pub(crate) fn read_raft_state_with(
    disk: &dyn Disk,
    dir: &Path,
) -> Result<Option<(RaftApplied, Requests)>> {
    let p = dir.join(RAFT_STATE_FILE);
    if !disk.exists(&p) {
        return Ok(None);
    }
    Ok(Some(RaftApplied::decode_with(&disk.read(&p).at(&p)?)?))
}

/// An unreplicated space's requests table in `dir` and the sequence it is as of (empty, 0 when
/// it has none). A table that does not read is logged and dropped: the next flush writes the
/// table anew, and until then the keys it held are not recognised (their repeats are applied
/// again).
fn read_requests(disk: &dyn Disk, dir: &Path) -> (Requests, u64) {
    let p = dir.join(REQUESTS_FILE);
    if !disk.exists(&p) {
        return (Requests::default(), 0);
    }
    match disk.read(&p).at(&p).and_then(|b| decode_table_file(&b)) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(path = %p.display(), error = %e, "the space's table of idempotency keys does not read: starting without it");
            (Requests::default(), 0)
        }
    }
}

/// The directory of a space below the node's root.
pub(crate) fn space_dir(root: &Path, id: &SpaceId) -> PathBuf {
    root.join("spaces").join(id.as_str())
}

/// Adds automatic `links` to `m`: never to itself, never a second link to the same memory
/// (an explicit one stays as it is), at most [`MAX_LINKS`](engram_core::limits::MAX_LINKS).
pub(crate) fn add_links(m: &mut Memory, links: Vec<Link>) {
    for l in links {
        if m.links.len() >= engram_core::limits::MAX_LINKS {
            break;
        }
        if l.to != m.id && !m.links.iter().any(|e| e.to == l.to) {
            m.links.push(l);
        }
    }
}
