//! The compactor: one background thread for every space of the node. Each tick it removes
//! dropped spaces' files, flushes memtables when due (WAL or memtable size, idleness, a full
//! memtable), deletes WAL files whose every record is in a segment (the checkpoint) and
//! releases idle spaces. Background merges are the indexer's ([`super::indexer`]).
//! [`crate::Store::compact`] runs the same pass now, and merges spaces with too many segments.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use engram_core::SpaceId;
use parking_lot::Mutex;

use crate::compaction::{flush, merge};
use crate::disk::Disk;
use crate::error::{IoContext, Result, StorageError};
use crate::node::Node;
use crate::segment::WritePace;
use crate::space::Space;

/// Starts the compactor thread; it stops at shutdown.
pub(crate) fn spawn(node: Arc<Node>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("engram-compactor".into())
        .spawn(move || crate::process::abort_on_panic("engram-compactor", || node.compactor_loop()))
}

impl Node {
    fn compactor_loop(self: Arc<Self>) {
        while self.wait_tick() {
            if let Err(e) = self.compact_pass(false) {
                tracing::error!(error = %e, "compaction pass failed; will retry");
            }
        }
    }

    /// One compaction pass: remove dropped spaces, flush memtables when due (or `force`), merge
    /// spaces with too many segments (only when `force`: background merges are the indexer's),
    /// checkpoint the WAL, release idle spaces.
    pub(crate) fn compact_pass(&self, force: bool) -> Result<()> {
        let _pass = self.compaction.lock();
        // Nothing happened since a pass that found nothing to do: this one would find the
        // same (a node of many idle spaces then costs no scan of them every tick).
        let activity = self.stats.activity.load(Ordering::SeqCst);
        if !force && self.quiet_at.load(Ordering::SeqCst) == activity {
            return Ok(());
        }
        // Background work is paced; an explicit compaction (and shutdown) runs flat out.
        let pace = if force {
            WritePace::UNPACED
        } else {
            self.opts.background_pace()
        };
        self.remove_dropped()?;
        let loaded = self.catalog.loaded_spaces();
        // A space dropped (and perhaps created again) since `remove_dropped` above still has its
        // old directory: its new incarnation waits for the next pass, after the removal.
        let dropping: Vec<SpaceId> = self
            .pending_drops
            .lock()
            .iter()
            .map(|(_, s)| s.id.clone())
            .collect();
        let dirty: Vec<Arc<Space>> = loaded
            .iter()
            .filter(|s| {
                let st = s.state.read();
                // A replicated space that applied entries changing no memory has its
                // `raft.state` to write.
                let raft_behind = st.meta_persisted && st.raft != st.raft_persisted;
                (!st.active.is_clean() || st.frozen.is_some() || raft_behind)
                    && !dropping.contains(&s.id)
            })
            .cloned()
            .collect();
        let idle_scan = dirty.is_empty();
        if !dirty.is_empty() {
            let mem_bytes: usize = dirty.iter().map(|s| s.state.read().active.bytes).sum();
            let wal_bytes = self.wal.writer().as_ref().map_or(0, |w| w.total_bytes());
            let idle_us = self.wal.idle_us();
            let due = force
                || wal_bytes > self.opts.wal_flush_bytes
                || mem_bytes > self.opts.memtable_flush_bytes
                || idle_us > self.opts.idle_flush_after.as_micros() as u64;
            if due {
                self.flush_spaces(&dirty, &pace)?;
            } else if self.opts.memtable_max_rows > 0 {
                let full: Vec<Arc<Space>> = dirty
                    .iter()
                    .filter(|s| {
                        // Memories owed their links wait for the linker (writes asking for
                        // more wait past `memtable_pending_max_rows`, see the engine).
                        let st = s.state.read();
                        st.active.entries.len() >= self.opts.memtable_max_rows
                            && st.active.pending_count() == 0
                    })
                    .cloned()
                    .collect();
                if !full.is_empty() {
                    self.flush_spaces(&full, &pace)?;
                }
            }
        }
        drop(dirty);
        // Background merges are the indexer's (it gives the merged segment its index before
        // the segment replaces its inputs); an explicit compaction merges here, now.
        if force {
            for space in &loaded {
                self.merge_if_due(space, self.opts.max_segments_per_space, &pace, None);
            }
        }
        drop(loaded);
        let deleted = self.checkpoint()?;
        self.catalog.release_idle(self.opts.max_open_spaces);
        let quiet = idle_scan && deleted == 0 && self.pending_drops.lock().is_empty();
        self.quiet_at
            .store(if quiet { activity } else { u64::MAX }, Ordering::SeqCst);
        Ok(())
    }

    /// Merges `space` (size-tiered) if it has more than `most` segments and its merges are not
    /// suspended; `index` as in [`merge::merge_tiered`] (without it, a space whose background
    /// merge is in flight is skipped). Returns whether it merged.
    pub(crate) fn merge_if_due(
        &self,
        space: &Space,
        most: usize,
        pace: &WritePace,
        index: Option<merge::Indexing<'_>>,
    ) -> bool {
        let many = space.state.read().segments.len() > most;
        if !many || space.merge_blocked.load(Ordering::Relaxed) {
            return false;
        }
        match merge::merge_tiered(&*self.disk, &self.wal, space, pace, index, &self.stats) {
            Ok(0) => false,
            Ok(n) => {
                self.stats.merges.fetch_add(1, Ordering::Relaxed);
                self.stats.compaction_bytes.fetch_add(n, Ordering::Relaxed);
                true
            }
            // A segment that fails its checksums stays readable where it is; merging this
            // space stops (until restart) so flushes and checkpoints go on.
            Err(e) => {
                tracing::error!(space = %space.id, error = %e, "merge failed; merges of this space are suspended until restart");
                space.merge_blocked.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Flushes spaces in parallel (I/O bound: several fsyncs per space), then makes the new
    /// space directories durable.
    fn flush_spaces(&self, dirty: &[Arc<Space>], pace: &WritePace) -> Result<()> {
        let threads = 8.min(dirty.len()).max(1);
        let next = AtomicU64::new(0);
        let errors: Mutex<Vec<StorageError>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(space) = dirty.get(i) else { break };
                    let linker = self.auto_linker.read().clone();
                    match flush::flush(&*self.disk, &self.wal, space, pace, linker.as_deref()) {
                        Ok(n) => {
                            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                            self.stats.compaction_bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().push(e),
                    }
                });
            }
        });
        self.disk.sync_dir(&self.spaces_dir).at(&self.spaces_dir)?;
        match errors.into_inner().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn remove_dropped(&self) -> Result<()> {
        let drops: Vec<(u64, Arc<Space>)> = self.pending_drops.lock().clone();
        if drops.is_empty() {
            return Ok(());
        }
        for (_, space) in &drops {
            let _files = space.files.lock();
            remove_space_dir(&*self.disk, &space.dir)?;
        }
        self.disk.sync_dir(&self.spaces_dir).at(&self.spaces_dir)?;
        self.pending_drops
            .lock()
            .retain(|(_, s)| !drops.iter().any(|(_, d)| Arc::ptr_eq(s, d)));
        Ok(())
    }

    /// Deletes WAL files whose every record is in a segment.
    /// Returns how many WAL files it deleted.
    fn checkpoint(&self) -> Result<usize> {
        let mut cp = self.wal.applied_seq() + 1;
        for space in self.catalog.loaded_spaces() {
            if space.meta.replicated {
                // Sequenced by log index; its log's records are what the raft groups retain.
                continue;
            }
            let st = space.state.read();
            for m in [
                st.active.min_seq,
                st.frozen.as_ref().and_then(|f| f.min_seq),
            ]
            .into_iter()
            .flatten()
            {
                cp = cp.min(m);
            }
        }
        for (seq, _) in self.pending_drops.lock().iter() {
            cp = cp.min(*seq);
        }
        // What the raft groups still need of their logs.
        cp = cp.min(self.raft.min_needed_seq());
        let mut guard = self.wal.writer();
        let mut newest = None;
        let n = match guard.as_mut() {
            Some(w) => {
                // Every record written so far is in a segment: start a fresh file so that the
                // current one can go too, and a restart replays nothing.
                let written = self.wal.written_seq();
                if cp > written && w.current_has_records() {
                    w.roll(written + 1)?;
                }
                let n = w.delete_before(cp)?;
                newest = Some(w.current_first_sequence());
                n
            }
            None => 0,
        };
        drop(guard);
        // Outside the writer lock: rewriting a state record goes through the group commit.
        if let Some(first) = newest {
            self.raft.refresh_below(first);
        }
        if n > 0 {
            tracing::debug!(
                deleted = n,
                checkpoint = cp,
                "WAL files removed after checkpoint"
            );
        }
        Ok(n)
    }
}

/// Removes a space's directory so that a crash at any point leaves either a loadable space
/// (`space.meta` present: the drop record, still in the WAL, is replayed and removes it again)
/// or a directory without `space.meta`, which holds no segment and is cleared on sight.
fn remove_space_dir(disk: &dyn Disk, dir: &Path) -> Result<()> {
    if !disk.exists(dir) {
        return Ok(());
    }
    let meta = dir.join(crate::meta::SPACE_META_FILE);
    for name in disk.list_dir(dir).at(dir)? {
        let p = dir.join(&name);
        if p != meta {
            disk.remove_file(&p).at(&p)?;
        }
    }
    disk.sync_dir(dir).at(dir)?;
    if disk.exists(&meta) {
        disk.remove_file(&meta).at(&meta)?;
        disk.sync_dir(dir).at(dir)?;
    }
    disk.remove_dir_all(dir).at(dir)
}
