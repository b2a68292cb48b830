//! The node's shared state: what the store's public API, the commit pipeline and the
//! background workers all hold. It owns the group commit ([`crate::wal::commit`]), the
//! catalog of spaces ([`crate::catalog`]) and the apply step that turns a durable record into
//! space state: deterministic, in sequence order, the same at commit and at replay.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::autolink::AutoLinker;

use crate::catalog::Catalog;
use crate::compaction::load::LoadMeter;
use crate::disk::Disk;
use crate::error::Result;
use crate::meta::SpaceMeta;
use crate::op::Op;
use crate::options::StoreOptions;
use crate::quarantine::Quarantine;
use crate::recovery::RecoveryReport;
use crate::requests::Answer;
use crate::space::{space_dir, Space};
use crate::stats::StoreStats;
use crate::wal::commit::{GroupCommit, Pending};

pub(crate) struct Node {
    pub(crate) disk: Arc<dyn Disk>,
    pub(crate) root: PathBuf,
    pub(crate) spaces_dir: PathBuf,
    pub(crate) opts: StoreOptions,
    /// The WAL's writer side: queue, committer, watermarks, latch.
    pub(crate) wal: Arc<GroupCommit>,
    pub(crate) catalog: Catalog,
    /// Dropped spaces whose directories are still to be removed, with the drop's sequence.
    pub(crate) pending_drops: Mutex<Vec<(u64, Arc<Space>)>>,
    /// One compaction pass at a time.
    pub(crate) compaction: Mutex<()>,
    /// Segments whose index build failed, and when (the clock's monotonic time) to try again.
    pub(crate) index_failures: Mutex<HashMap<PathBuf, Duration>>,
    pub(crate) quarantine: Arc<Quarantine>,
    pub(crate) stats: Arc<StoreStats>,
    /// Set by `close`: the background workers stop.
    pub(crate) shutdown: Mutex<bool>,
    pub(crate) shutdown_cv: Condvar,
    pub(crate) recovery: Mutex<RecoveryReport>,
    /// Makes the automatic links of pending memories (set by the engine).
    pub(crate) auto_linker: RwLock<Option<Arc<dyn AutoLinker>>>,
    /// The spaces where writes left memories pending: the linker thread's work.
    pub(crate) link_work: Mutex<crate::autolink::LinkWork>,
    pub(crate) link_cv: Condvar,
    /// Raft records recovered for the replication layer, and what it retains of the WAL.
    pub(crate) raft: crate::store::raft::RaftHold,
    /// `stats.activity` when a compaction pass last found nothing to do (`u64::MAX`: it did
    /// not).
    pub(crate) quiet_at: std::sync::atomic::AtomicU64,
}

impl Node {
    /// Applies a durable batch in sequence order. A run of records for the same space is
    /// applied under one write lock, so readers and writers of that space are held up once per
    /// batch rather than once per record.
    pub(crate) fn apply_batch(&self, batch: Vec<Pending>) -> Result<()> {
        let wake: Vec<SpaceId> = batch
            .iter()
            .filter(|p| matches!(p.op.inner(), Op::RememberAutoLink(_)))
            .map(|p| p.space.clone())
            .collect();
        let mut iter = batch.into_iter().peekable();
        while let Some(p) = iter.next() {
            if p.op.is_raft() {
                // The replication layer holds its log; durability is all it waits for.
                continue;
            }
            let plain = p.op.is_data();
            let space = if plain {
                self.catalog.space(&p.space)?
            } else {
                None
            };
            let Some(space) = space else {
                self.apply(p.seq, p.space, p.op, false)?;
                continue;
            };
            let mut st = space.state.write();
            let mut next = Some(p);
            while let Some(p) = next.take() {
                if !st.dropped {
                    if p.seq > st.flushed_seq {
                        st.apply(p.seq, p.op)?;
                    } else {
                        st.replay_flushed(p.seq, p.op)?;
                    }
                }
                let same = iter
                    .peek()
                    .is_some_and(|q| q.space == space.id && q.op.is_data());
                if same {
                    next = iter.next();
                }
            }
        }
        if !wake.is_empty() {
            self.wake_linker(wake);
        }
        Ok(())
    }

    /// Applies one durable record to its space. Deterministic, in sequence order, the same at
    /// commit and at replay. Returns whether it changed anything.
    pub(crate) fn apply(
        &self,
        seq: u64,
        space_id: SpaceId,
        op: Op,
        replaying: bool,
    ) -> Result<bool> {
        if op.is_raft() {
            if replaying {
                self.raft.recovered(seq, space_id, op);
            }
            return Ok(true);
        }
        // A keyed creation records its key in the space it creates.
        let (op, request) = match op {
            Op::Request(c) if matches!(c.op, Op::SpaceCreate { .. }) => (c.op, c.request),
            op => (op, None),
        };
        if let Op::SpaceCreate {
            dimension,
            created_at_us,
            embedder,
        } = op
        {
            if let Some(space) = self.catalog.space(&space_id)? {
                // Replayed after its space was flushed: its key is recorded if the space's
                // table on disk is older than the creation (a crash before it was written).
                if let Some((key, at_us)) = request {
                    let mut st = space.state.write();
                    if seq == space.meta.created_seq
                        && seq > st.requests_as_of
                        && st.requests.repeat_of(&key, seq, 0, at_us).is_none()
                    {
                        st.requests
                            .record(&key, seq, 0, at_us, Answer::SpaceCreated);
                    }
                }
                return Ok(false);
            }
            let meta = SpaceMeta {
                dimension,
                created_at_us,
                created_seq: seq,
                embedder,
                replicated: false,
            };
            let space =
                Space::new_in_memory(space_id.clone(), space_dir(&self.root, &space_id), meta);
            {
                let mut st = space.state.write();
                st.active.note(seq);
                if let Some((key, at_us)) = request {
                    st.requests
                        .record(&key, seq, 0, at_us, Answer::SpaceCreated);
                }
            }
            self.catalog.insert_new(space);
            return Ok(true);
        }
        let Some(space) = self.catalog.space(&space_id)? else {
            if !replaying {
                tracing::warn!(space = %space_id, seq, "record for a space that no longer exists");
            }
            return Ok(false);
        };
        let mut st = space.state.write();
        if st.dropped {
            return Ok(false);
        }
        if seq <= st.flushed_seq {
            st.replay_flushed(seq, op)?;
            return Ok(false);
        }
        if let Op::SpaceDrop = op {
            st.dropped = true;
            drop(st);
            self.catalog.remove(&space_id);
            self.pending_drops.lock().push((seq, space));
            return Ok(true);
        }
        st.apply(seq, op)?;
        Ok(true)
    }

    /// A load meter for a background worker, its window starting now.
    pub(crate) fn load_meter(&self) -> LoadMeter {
        LoadMeter::new(
            self.stats.changes.load(Ordering::Relaxed),
            self.opts.clock.monotonic(),
        )
    }

    /// The node's rate of changes now, as `load` measures it (see [`LoadMeter`]).
    pub(crate) fn load_rate(&self, load: &mut LoadMeter) -> f64 {
        load.rate(
            self.stats.changes.load(Ordering::Relaxed),
            self.opts.clock.monotonic(),
        )
    }

    /// Waits one `compaction_tick` (or until shutdown); false once the store is shutting down.
    pub(crate) fn wait_tick(&self) -> bool {
        let mut stop = self.shutdown.lock();
        if !*stop {
            self.shutdown_cv
                .wait_for(&mut stop, self.opts.compaction_tick);
        }
        !*stop
    }
}
