//! One memory space on this node: its metadata, memtables and sealed segments. Reads see the
//! active memtable, then the frozen one (being flushed), then segments newest first.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use engram_core::{Link, Memory, MemoryId, SpaceId};
use parking_lot::{Mutex, RwLock};

use crate::disk::{write_file_atomic, Disk};
use crate::error::{IoContext, Result, StorageError};
use crate::index::{self, index_path, Hnsw, HnswParams, SegmentBinding, INDEX_EXTENSION};
use crate::lexical::{self, lex_path, DocTerms, SegmentLex, LEX_EXTENSION};
use crate::memtable::{Entry, Memtable};
use crate::meta::{SpaceMeta, SPACE_META_FILE};
use crate::op::Op;
use crate::segment::{
    parse_segment_file_name, segment_file_name, write_memories, write_segment, Lookup, RowData,
    Segment, WritePace,
};

/// A space's mutable state, behind one lock.
#[derive(Debug)]
pub struct SpaceState {
    /// Whether `space.meta` is on disk.
    pub meta_persisted: bool,
    pub dropped: bool,
    pub active: Memtable,
    pub frozen: Option<Arc<Memtable>>,
    /// Sealed segments, oldest first (ascending max sequence).
    pub segments: Vec<Arc<Segment>>,
    /// Every record of this space up to this sequence is in `segments` (or `space.meta`).
    pub flushed_seq: u64,
}

/// One memory space.
#[derive(Debug)]
pub struct Space {
    pub id: SpaceId,
    /// Fixed at creation: read without the state lock.
    pub meta: SpaceMeta,
    pub dir: PathBuf,
    pub state: RwLock<SpaceState>,
    /// Logical time of last use, for the LRU of open spaces.
    pub last_used: AtomicU64,
    /// Held while this space's files are being changed (flush, merge, drop).
    pub files: Mutex<()>,
    /// Set when a merge failed (a segment failing its checksums): background merges of this
    /// space stop until it is loaded again (a restart, or a release and reload when idle).
    pub merge_blocked: AtomicBool,
}

impl Space {
    /// A space created by a WAL record, with nothing on disk yet.
    pub fn new_in_memory(id: SpaceId, dir: PathBuf, meta: SpaceMeta) -> Self {
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
            }),
            last_used: AtomicU64::new(0),
            files: Mutex::new(()),
            merge_blocked: AtomicBool::new(false),
        }
    }

    /// Opens a space from its directory: reads `space.meta`, opens every segment (mapping it),
    /// removes temporary files and segments a merge has superseded. `Ok(None)` when the
    /// directory has no `space.meta` (a space whose creation never reached a flush).
    /// A segment that does not open (corrupt footer or directory) is handed to `on_corrupt`
    /// (which moves it aside) and skipped.
    pub fn load(
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
            }),
            last_used: AtomicU64::new(0),
            files: Mutex::new(()),
            merge_blocked: AtomicBool::new(false),
        }))
    }

    pub fn touch(&self, clock: u64) {
        self.last_used.store(clock, Ordering::Relaxed);
    }
}

impl SpaceState {
    /// The newest version of a memory, or `None` if absent or deleted.
    pub fn get(&self, id: &str) -> Result<Option<Memory>> {
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if let Some(e) = table.entries.get(id) {
                return Ok(match e {
                    Entry::Live(m) => Some((**m).clone()),
                    Entry::Tombstone => None,
                });
            }
        }
        for seg in self.segments.iter().rev() {
            match seg.find(id)? {
                Lookup::Row(row) => return Ok(Some(seg.memory(row)?)),
                Lookup::Tombstone => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// The links out of the newest version of a memory (`None` if absent or deleted), without
    /// copying the rest of it.
    pub fn links(&self, id: &str) -> Result<Option<Vec<Link>>> {
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if let Some(e) = table.entries.get(id) {
                return Ok(match e {
                    Entry::Live(m) => Some(m.links.clone()),
                    Entry::Tombstone => None,
                });
            }
        }
        for seg in self.segments.iter().rev() {
            match seg.find(id)? {
                Lookup::Row(row) => return Ok(Some(seg.links(row)?)),
                Lookup::Tombstone => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// The confidence of the newest version of a memory (`None` if absent or deleted).
    pub fn confidence(&self, id: &str) -> Result<Option<f32>> {
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if let Some(e) = table.entries.get(id) {
                return Ok(match e {
                    Entry::Live(m) => Some(m.confidence),
                    Entry::Tombstone => None,
                });
            }
        }
        for seg in self.segments.iter().rev() {
            match seg.find(id)? {
                Lookup::Row(row) => return Ok(Some(seg.confidence(row))),
                Lookup::Tombstone => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// The similarity (dot product) of `query` to the newest version of a memory's embedding
    /// (`None` if absent, deleted, or of another dimension), without copying the memory.
    pub fn similarity(&self, id: &str, query: &[f32]) -> Result<Option<f32>> {
        let sim = |e: &[f32]| (e.len() == query.len()).then(|| engram_core::simd::dot(query, e));
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            if let Some(e) = table.entries.get(id) {
                return Ok(match e {
                    Entry::Live(m) => sim(&m.embedding),
                    Entry::Tombstone => None,
                });
            }
        }
        for seg in self.segments.iter().rev() {
            match seg.find(id)? {
                Lookup::Row(row) => return Ok(sim(seg.embedding(row))),
                Lookup::Tombstone => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// What listing every live memory's embedding needs, taken cheaply under the space's lock
    /// (the memtables' entries and the segment handles are shared, not copied) and read
    /// without it: see [`EmbeddingSnapshot::for_each`].
    pub fn embedding_snapshot(&self) -> EmbeddingSnapshot {
        let mut tables = Vec::new();
        for table in std::iter::once(&self.active).chain(self.frozen.as_deref()) {
            for (id, e) in &table.entries {
                tables.push((
                    id.clone(),
                    match e {
                        Entry::Live(m) => Some(m.clone()),
                        Entry::Tombstone => None,
                    },
                ));
            }
        }
        EmbeddingSnapshot {
            tables,
            segments: self.segments.clone(),
        }
    }

    /// Rows held (memtable entries and segment rows, replaced versions and tombstones
    /// included): an upper bound of the live memories, without reading any id.
    pub fn approx_rows(&self) -> usize {
        self.active.entries.len()
            + self.frozen.as_ref().map_or(0, |f| f.entries.len())
            + self.segments.iter().map(|s| s.rows()).sum::<usize>()
    }

    pub fn contains(&self, id: &str) -> Result<bool> {
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
    pub fn for_each(&self, mut f: impl FnMut(Memory)) -> Result<()> {
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
    fn newest_in_segment(&self, si: usize, id: &str) -> Result<bool> {
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
    fn memtable_live(&self) -> impl Iterator<Item = (&Memtable, &MemoryId, &Arc<Memory>)> {
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

    /// The `k` live memories most similar to `query` (unit length, the space's dimension),
    /// best first: each segment through its HNSW index (`ef` is the beam width) or, without
    /// one, an exact scan; the memtables exactly. Replaced versions and deleted memories are
    /// never returned.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        let mut hits: Vec<Hit> = Vec::new();
        if k == 0 {
            return Ok(hits);
        }
        // The memtables: every entry scored, only the best k kept (ids cloned for those).
        let mut scored: Vec<(f32, &MemoryId)> = Vec::new();
        for (_, id, m) in self.memtable_live() {
            if m.embedding.len() == query.len() {
                scored.push((engram_core::simd::dot(query, &m.embedding), id));
            }
        }
        let best_first = |a: &(f32, &MemoryId), b: &(f32, &MemoryId)| {
            b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, best_first);
            scored.truncate(k);
        }
        hits.extend(scored.into_iter().map(|(similarity, id)| Hit {
            id: id.clone(),
            similarity,
        }));
        // An error inside a filter (a corrupt id column) fails the search, after the scan.
        let mut failed: Option<StorageError> = None;
        for (si, seg) in self.segments.iter().enumerate() {
            if seg.info().dimension != query.len() {
                continue;
            }
            let filter_error = std::cell::RefCell::new(None);
            let accept = |row: u32| match seg
                .id(row as usize)
                .and_then(|id| self.newest_in_segment(si, id))
            {
                Ok(newest) => newest,
                Err(e) => {
                    filter_error.borrow_mut().get_or_insert(e);
                    false
                }
            };
            let found = match seg.index() {
                Some(h) => h.search(&**seg, query, k, ef, accept),
                None => index::flat_search(&**seg, query, k, accept),
            };
            if let Some(e) = filter_error.into_inner() {
                failed.get_or_insert(e);
            }
            for (row, similarity) in found {
                match seg.id(row as usize).and_then(crate::op::memory_id) {
                    Ok(id) => hits.push(Hit { id, similarity }),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        hits.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        hits.truncate(k);
        Ok(hits)
    }

    /// The `k` live memories with the highest BM25 score for `terms` (distinct, from
    /// [`lexical::query_terms`]), best first; only memories holding at least one term. See
    /// [`crate::lexical`] for the scoring. Replaced versions and deleted memories are never
    /// returned.
    pub fn lexical_search(&self, terms: &[u64], k: usize) -> Result<Vec<LexHit>> {
        if k == 0 || terms.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<(&MemoryId, Arc<DocTerms>)> = self
            .memtable_live()
            .map(|(table, id, m)| (id, table.doc_terms(m)))
            .collect();
        let mut n = docs.len() as u64;
        let mut total: u64 = docs.iter().map(|(_, d)| d.len as u64).sum();
        for seg in &self.segments {
            if let Some(l) = seg.lex() {
                n += l.rows() as u64;
                total += l.total_len();
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let avg = total as f32 / n as f32;
        let idfs: Vec<f32> = terms
            .iter()
            .map(|&t| {
                let mut df = docs.iter().filter(|(_, d)| d.tf(t) > 0).count() as u64;
                for seg in &self.segments {
                    if let Some((d, _)) = seg.lex().and_then(|l| l.postings(t)) {
                        df += d as u64;
                    }
                }
                lexical::idf(n, df)
            })
            .collect();
        // (score, source): the memtables' entries first, then segments oldest first.
        let mut cands: Vec<(f32, usize, u32)> = Vec::new();
        const MEMTABLE: usize = usize::MAX;
        for (i, (_, d)) in docs.iter().enumerate() {
            let mut score = 0.0;
            for (j, &t) in terms.iter().enumerate() {
                let tf = d.tf(t);
                if tf > 0 {
                    score += lexical::term_score(idfs[j], tf, d.len, avg);
                }
            }
            if score > 0.0 {
                cands.push((score, MEMTABLE, i as u32));
            }
        }
        for (si, seg) in self.segments.iter().enumerate() {
            let Some(l) = seg.lex() else { continue };
            let mut acc: HashMap<u32, f32> = HashMap::new();
            for (j, &t) in terms.iter().enumerate() {
                if let Some((_, postings)) = l.postings(t) {
                    for (row, tf) in postings {
                        *acc.entry(row).or_default() +=
                            lexical::term_score(idfs[j], tf, l.doc_len(row as usize), avg);
                    }
                }
            }
            cands.extend(acc.into_iter().map(|(row, score)| (score, si, row)));
        }
        cands.sort_unstable_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.cmp(&b.1))
                .then_with(|| a.2.cmp(&b.2))
        });
        let mut out = Vec::with_capacity(k);
        for (score, source, row) in cands {
            if source == MEMTABLE {
                out.push(LexHit {
                    id: docs[row as usize].0.clone(),
                    score,
                });
            } else {
                let id = self.segments[source].id(row as usize)?;
                if self.newest_in_segment(source, id)? {
                    out.push(LexHit {
                        id: crate::op::memory_id(id)?,
                        score,
                    });
                }
            }
            if out.len() == k {
                break;
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Number of live memories (exact; walks the ids).
    pub fn count(&self) -> Result<usize> {
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
    pub fn apply(&mut self, seq: u64, op: Op) -> Result<()> {
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
                    self.active.put(m);
                }
            }
            Op::Unlink { from, to } => {
                if let Some(mut m) = self.get(from.as_str())? {
                    let before = m.links.len();
                    m.links.retain(|l| l.to != to);
                    if m.links.len() != before {
                        self.active.put(m);
                    }
                }
            }
            Op::SpaceCreate { .. } | Op::SpaceDrop => {}
        }
        Ok(())
    }

    /// Bytes in sealed segments.
    pub fn segment_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_len() as u64).sum()
    }
}

/// Flushes the space's active memtable (or a frozen one left by a failed flush) into a new
/// segment, written at `pace`. Reads and writes go on meanwhile. Returns the bytes written.
pub fn flush(disk: &dyn Disk, space: &Space, pace: &WritePace) -> Result<u64> {
    let _files = space.files.lock();
    let (frozen, meta, meta_persisted, has_segments) = {
        let mut st = space.state.write();
        if st.dropped {
            return Ok(0);
        }
        if st.frozen.is_none() {
            if st.active.is_clean() {
                return Ok(0);
            }
            let table = std::mem::take(&mut st.active);
            st.frozen = Some(Arc::new(table));
        }
        let frozen = st.frozen.clone().expect("frozen memtable set above");
        (
            frozen,
            space.meta.clone(),
            st.meta_persisted,
            !st.segments.is_empty(),
        )
    };
    let mut written = 0;
    if !meta_persisted {
        disk.create_dir_all(&space.dir).at(&space.dir)?;
        let p = space.dir.join(SPACE_META_FILE);
        write_file_atomic(disk, &p, &meta.encode()).at(&p)?;
    }
    let mut new_segment = None;
    if !frozen.entries.is_empty() {
        let mut live: Vec<&Memory> = Vec::new();
        let mut tombs: Vec<&str> = Vec::new();
        for (id, e) in &frozen.entries {
            match e {
                Entry::Live(m) => live.push(m),
                // Tombstones only matter when an older segment may hold the id.
                Entry::Tombstone if has_segments => tombs.push(id.as_str()),
                Entry::Tombstone => {}
            }
        }
        live.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        tombs.sort_unstable();
        if !live.is_empty() || !tombs.is_empty() {
            let min = frozen.min_seq.unwrap_or(frozen.max_seq);
            let path = space.dir.join(segment_file_name(min, frozen.max_seq));
            written = write_memories(
                disk,
                &path,
                meta.dimension as usize,
                (min, frozen.max_seq),
                &live,
                &tombs,
                pace,
            )?;
            let seg = Segment::open(disk, &path)?;
            let lex = SegmentLex::build(
                live.iter().map(|m| m.content.as_str()),
                (min, frozen.max_seq),
            );
            attach_lex(disk, &seg, lex);
            new_segment = Some(Arc::new(seg));
        }
    }
    let mut st = space.state.write();
    if let Some(seg) = new_segment {
        st.segments.push(seg);
    }
    st.meta_persisted = true;
    st.flushed_seq = st.flushed_seq.max(frozen.max_seq);
    st.frozen = None;
    Ok(written)
}

/// Merges all of a space's segments into one, dropping replaced versions, deleted memories and
/// their tombstones. Returns the bytes written.
pub fn merge_all(disk: &dyn Disk, space: &Space) -> Result<u64> {
    merge(disk, space, true, &WritePace::UNPACED)
}

/// Merges the space's newest segments, size-tiered: the run of newest segments starting at the
/// oldest segment no larger than everything newer than it together (at least the two newest).
/// A large old segment is left alone (with its index) until the newer ones add up to its size,
/// so each row is rewritten about log2(rows) times over the space's life instead of at every
/// merge. The merged segment is written at `pace`. Returns the bytes written.
pub fn merge_tiered(disk: &dyn Disk, space: &Space, pace: &WritePace) -> Result<u64> {
    merge(disk, space, false, pace)
}

/// Where a size-tiered merge starts among `segments` (oldest first, at least two).
fn tier_start(segments: &[Arc<Segment>]) -> usize {
    let sizes: Vec<usize> = segments
        .iter()
        .map(|s| s.rows() + s.info().tombstones)
        .collect();
    let last = sizes.len().saturating_sub(2);
    (0..last)
        .find(|&i| sizes[i] <= sizes[i + 1..].iter().sum::<usize>())
        .unwrap_or(last)
}

fn merge(disk: &dyn Disk, space: &Space, all: bool, pace: &WritePace) -> Result<u64> {
    let _files = space.files.lock();
    let (inputs, dimension, keep_tombstones) = {
        let st = space.state.read();
        if st.dropped || st.segments.len() < 2 {
            return Ok(0);
        }
        let start = if all { 0 } else { tier_start(&st.segments) };
        // With older segments left out of the merge, the inputs' tombstones must stay: they
        // hide those segments' versions.
        (
            st.segments[start..].to_vec(),
            space.meta.dimension as usize,
            start > 0,
        )
    };
    // Column checksums of the inputs are checked here, before their rows are copied.
    for seg in &inputs {
        seg.verify()?;
    }
    // Newest version of each id: scan newest segment first.
    let mut newest: HashMap<&str, Option<(usize, usize)>> = HashMap::new();
    for (si, seg) in inputs.iter().enumerate().rev() {
        for row in 0..seg.rows() {
            newest.entry(seg.id(row)?).or_insert(Some((si, row)));
        }
        for t in 0..seg.info().tombstones {
            newest.entry(seg.tombstone(t)?).or_insert(None);
        }
    }
    let mut tombstones: Vec<&str> = if keep_tombstones {
        newest
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(id, _)| *id)
            .collect()
    } else {
        Vec::new()
    };
    tombstones.sort_unstable();
    let mut live: Vec<(&str, usize, usize)> = newest
        .into_iter()
        .filter_map(|(id, v)| v.map(|(s, r)| (id, s, r)))
        .collect();
    live.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut rows = Vec::with_capacity(live.len());
    for &(id, si, row) in &live {
        let seg = &inputs[si];
        rows.push(RowData {
            id,
            embedding: seg.embedding(row),
            confidence: seg.confidence(row),
            timestamp_us: seg.timestamp(row),
            content: seg.content(row)?,
            metadata: Cow::Borrowed(seg.raw_metadata(row)?),
            links: Cow::Borrowed(seg.raw_links(row)?),
        });
    }
    let min = inputs.iter().map(|s| s.info().min_seq).min().unwrap_or(0);
    let max = inputs.iter().map(|s| s.info().max_seq).max().unwrap_or(0);
    let path = space.dir.join(segment_file_name(min, max));
    let written = write_segment(disk, &path, dimension, min, max, &rows, &tombstones, pace)?;
    let merged = Segment::open(disk, &path).and_then(|m| m.verify().map(|()| m));
    let merged = match merged {
        Ok(m) => {
            // From the inputs' indexes when they all have one (no text analysed again).
            let lexes: Option<Vec<&SegmentLex>> =
                inputs.iter().map(|s| s.lex().map(|l| &**l)).collect();
            let lex = match lexes {
                Some(lexes) => {
                    let from: Vec<(usize, u32)> =
                        live.iter().map(|&(_, si, row)| (si, row as u32)).collect();
                    SegmentLex::merge(&lexes, &from, (min, max))
                }
                None => SegmentLex::build(rows.iter().map(|r| r.content), (min, max)),
            };
            attach_lex(disk, &m, lex);
            Arc::new(m)
        }
        Err(e) => {
            // Never leave an unverified output under a name that supersedes its inputs.
            disk.remove_file(&path).at(&path)?;
            disk.sync_dir(&space.dir).at(&space.dir)?;
            return Err(e);
        }
    };
    {
        // The inputs are a contiguous run; segments flushed since come after it.
        let mut st = space.state.write();
        let at = st
            .segments
            .iter()
            .position(|s| Arc::ptr_eq(s, &inputs[0]))
            .unwrap_or(0);
        st.segments
            .retain(|s| !inputs.iter().any(|i| Arc::ptr_eq(i, s)));
        st.segments.insert(at, merged);
    }
    for seg in &inputs {
        if seg.path() != path {
            disk.remove_file(seg.path()).at(seg.path())?;
        }
        for derived in [index_path(seg.path()), lex_path(seg.path())] {
            if derived != lex_path(&path) && disk.exists(&derived) {
                disk.remove_file(&derived).at(&derived)?;
            }
        }
    }
    disk.sync_dir(&space.dir).at(&space.dir)?;
    Ok(written)
}

/// A space's memories as of one moment, readable without its lock (see
/// [`SpaceState::embedding_snapshot`]); the default one is empty.
#[derive(Default)]
pub struct EmbeddingSnapshot {
    /// Memtable entries, the active table's first (`None`: a tombstone).
    tables: Vec<(MemoryId, Option<Arc<Memory>>)>,
    /// Oldest first.
    segments: Vec<Arc<Segment>>,
}

impl EmbeddingSnapshot {
    /// Rows it holds, replaced versions and tombstones included.
    pub fn approx_rows(&self) -> usize {
        self.tables.len() + self.segments.iter().map(|s| s.rows()).sum::<usize>()
    }

    /// Calls `f` with the id and embedding of the newest version of every live memory, in no
    /// particular order, reading segments in place (nothing but ids and embeddings).
    pub fn for_each(&self, mut f: impl FnMut(&MemoryId, &[f32])) -> Result<()> {
        let mut seen: HashSet<&str> = HashSet::new();
        for (id, m) in &self.tables {
            if seen.insert(id.as_str()) {
                if let Some(m) = m {
                    f(id, &m.embedding);
                }
            }
        }
        for seg in self.segments.iter().rev() {
            for row in 0..seg.rows() {
                let raw = seg.id(row)?;
                if seen.insert(raw) {
                    f(&crate::op::memory_id(raw)?, seg.embedding(row));
                }
            }
            for t in 0..seg.info().tombstones {
                seen.insert(seg.tombstone(t)?);
            }
        }
        Ok(())
    }
}

/// A lexical search result: a live memory and its BM25 score.
#[derive(Debug, Clone, PartialEq)]
pub struct LexHit {
    pub id: MemoryId,
    pub score: f32,
}

/// A search result: a live memory and its similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: MemoryId,
    pub similarity: f32,
}

/// Opens the index file beside `seg` and attaches it, if there is one. A missing file is
/// normal (a small segment, or a crash before its build finished: it is built again). One
/// that does not belong to the segment, is corrupt or has an unknown version is derived data:
/// it is logged and removed, and the index is built again. Any other failure to open it (an
/// I/O error, no address space left to map it) is logged and the segment is searched by a
/// scan: an index never makes its space unreadable. Returns whether one was attached.
pub fn open_index(disk: &dyn Disk, seg: &Segment) -> Result<bool> {
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

/// Builds the HNSW index of `seg` (one of `space`'s segments) and attaches it. The graph is
/// built without any lock; writing the file and attaching it happen under the space's file
/// lock, and only if the segment is still the space's (a merge may have replaced it).
/// Returns whether an index was built.
pub fn build_index(
    disk: &dyn Disk,
    space: &Space,
    seg: &Arc<Segment>,
    params: HnswParams,
) -> Result<bool> {
    if seg.index().is_some() {
        return Ok(false);
    }
    let graph = index::build(&**seg, params)?;
    let _files = space.files.lock();
    {
        let st = space.state.read();
        if st.dropped || !st.segments.iter().any(|s| Arc::ptr_eq(s, seg)) {
            return Ok(false);
        }
    }
    let path = index_path(seg.path());
    index::write_index(disk, &path, &graph, &SegmentBinding::of(seg))?;
    seg.set_index(Arc::new(Hnsw::open(disk, &path, seg)?));
    Ok(true)
}

/// Writes `lex` beside `seg` (crash-safely) and attaches it. A failed write only costs a
/// rebuild at the next open: it is logged, and the index stays attached.
fn attach_lex(disk: &dyn Disk, seg: &Segment, lex: SegmentLex) {
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
pub fn open_lex(disk: &dyn Disk, seg: &Segment) {
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

/// The directory of a space below the node's root.
pub fn space_dir(root: &Path, id: &SpaceId) -> PathBuf {
    root.join("spaces").join(id.as_str())
}
