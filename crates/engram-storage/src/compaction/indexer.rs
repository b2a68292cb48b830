//! The indexer: a background thread that merges spaces with too many segments (a higher bound
//! while the node is busy, `merge_defer_records_per_s`), giving each merged segment its HNSW
//! index before it replaces its inputs, and builds the index of each loaded segment that has
//! none and is large enough (smaller ones are scanned), one segment per round, deferred while
//! the node is busy (`index_defer_records_per_s`, up to `index_defer_max`). It runs at idle
//! priority: requests go first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::compaction::load::LoadMeter;
use crate::compaction::merge::Indexing;
use crate::disk::Disk;
use crate::error::Result;
use crate::index::{self, index_path, Hnsw, HnswParams, SegmentBinding};
use crate::node::Node;
use crate::segment::Segment;
use crate::space::Space;

/// Starts the indexer thread; it stops at shutdown.
pub(crate) fn spawn(node: Arc<Node>) -> std::io::Result<JoinHandle<()>> {
    // The load measure of the deferral; its window starts as the store opens.
    let load = node.load_meter();
    std::thread::Builder::new()
        .name("engram-indexer".into())
        .spawn(move || {
            // Index builds are background work: requests go first.
            if !(node.opts.indexer_idle_class && crate::process::set_current_thread_idle_class()) {
                crate::process::set_current_thread_nice(node.opts.indexer_nice);
            }
            crate::process::abort_on_panic("engram-indexer", || node.indexer_loop(load))
        })
}

impl Node {
    /// The background indexer: merges the spaces due a merge, then builds the index of one
    /// segment lacking it per round.
    fn indexer_loop(self: Arc<Self>, mut load: LoadMeter) {
        // When each segment lacking an index was first seen, for the deferral under load.
        let mut waiting: HashMap<PathBuf, Duration> = HashMap::new();
        // `stats.activity` when a round last found nothing to do: until it moves (a write, a
        // flush, a merge, a space loaded) another round would find nothing either.
        let mut quiet_at = u64::MAX;
        while self.wait_tick() {
            let activity = self
                .stats
                .activity
                .load(std::sync::atomic::Ordering::SeqCst);
            if activity == quiet_at {
                continue;
            }
            let rate = self.load_rate(&mut load);
            let merge_busy = self.opts.merge_defer_records_per_s > 0
                && rate > self.opts.merge_defer_records_per_s as f64;
            let merged = self.merge_due(merge_busy);
            let busy = self.opts.index_defer_records_per_s > 0
                && rate > self.opts.index_defer_records_per_s as f64;
            let mut built = false;
            let mut failed = false;
            loop {
                match self.build_one_index(busy, &mut waiting) {
                    Ok(true) if !*self.shutdown.lock() => built = true,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "building an index failed; will retry");
                        failed = true;
                        break;
                    }
                }
            }
            // Work deferred under load is due once the load drops, with no activity.
            let idle = !merge_busy
                && !busy
                && !merged
                && !built
                && !failed
                && waiting.is_empty()
                && self.index_failures.lock().is_empty();
            quiet_at = if idle { activity } else { u64::MAX };
        }
    }

    /// Merges each loaded space with more segments than allowed (`max_segments_per_space`, or
    /// `merge_defer_max_segments` while `busy`), the merged segment indexed before it is used.
    /// Returns whether any space was due.
    fn merge_due(&self, busy: bool) -> bool {
        let most = if busy {
            self.opts
                .merge_defer_max_segments
                .max(self.opts.max_segments_per_space)
        } else {
            self.opts.max_segments_per_space
        };
        let pace = self.opts.background_pace();
        let stop = || *self.shutdown.lock();
        // Only the spaces due a merge are held meanwhile (a held space is not released).
        let due: Vec<Arc<Space>> = self
            .catalog
            .loaded_spaces()
            .into_iter()
            .filter(|s| s.state.read().segments.len() > most)
            .collect();
        let any = !due.is_empty();
        for space in due {
            if stop() {
                return any;
            }
            let index = Indexing {
                params: self.opts.hnsw,
                min_rows: self.opts.index_min_rows,
                stop: &stop,
            };
            self.merge_if_due(&space, most, &pace, Some(index));
        }
        any
    }

    /// Builds the index of one loaded segment that has none and at least
    /// `index_min_rows` rows (smaller ones are scanned). Returns whether one was built. A
    /// segment whose build failed is skipped for a minute (other spaces go first). While
    /// `busy` (see `index_defer_records_per_s`), only segments that have waited
    /// `index_defer_max` since `waiting` first saw them are built.
    pub(crate) fn build_one_index(
        &self,
        busy: bool,
        waiting: &mut HashMap<PathBuf, Duration>,
    ) -> Result<bool> {
        let now = self.opts.clock.monotonic();
        let target = {
            let failed = self.index_failures.lock();
            let mut target = None;
            let mut seen = Vec::new();
            for space in self.catalog.loaded_spaces() {
                let st = space.state.read();
                if st.dropped {
                    continue;
                }
                let seg = st.segments.iter().find(|s| {
                    let candidate = s.rows() >= self.opts.index_min_rows
                        && s.index().is_none()
                        && failed.get(s.path()).is_none_or(|t| now >= *t);
                    if !candidate {
                        return false;
                    }
                    seen.push(s.path().to_path_buf());
                    let since = *waiting.entry(s.path().to_path_buf()).or_insert(now);
                    !busy || now.saturating_sub(since) >= self.opts.index_defer_max
                });
                if let Some(seg) = seg.cloned() {
                    drop(st);
                    target = Some((space, seg));
                    break;
                }
            }
            // Forget segments gone (merged, dropped) or indexed.
            if target.is_none() {
                waiting.retain(|p, _| seen.contains(p));
            }
            target
        };
        let Some((space, seg)) = target else {
            return Ok(false);
        };
        waiting.remove(seg.path());
        let t = Instant::now();
        match build_index(&*self.disk, &space, &seg, self.opts.hnsw) {
            Ok(built) => {
                if built {
                    self.stats.index_builds.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(space = %space.id, rows = seg.rows(), elapsed_ms = t.elapsed().as_millis() as u64, "index built");
                }
                self.index_failures.lock().remove(seg.path());
                Ok(built)
            }
            Err(e) => {
                self.index_failures
                    .lock()
                    .insert(seg.path().to_path_buf(), now + Duration::from_secs(60));
                Err(e)
            }
        }
    }
}

/// Builds the HNSW index of `seg` (one of `space`'s segments) and attaches it. The graph is
/// built without any lock; writing the file and attaching it happen under the space's file
/// lock, and only if the segment is still the space's (a merge may have replaced it).
/// Returns whether an index was built.
fn build_index(
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
