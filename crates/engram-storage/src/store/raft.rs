//! The store's side of replication: raft records go into the node's WAL through the same
//! group commit as every other record (one fsync covers the appends of every group), and the
//! WAL keeps what the raft groups still need. The replication layer (`engram-replication`)
//! owns the logs; the store only writes, recovers and retains their records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use engram_core::SpaceId;
use parking_lot::{Mutex, RwLock};

use super::Store;
use crate::error::{Result, StorageError};
use crate::op::Op;
use crate::wal::commit::{Commit, DurableCallback};

/// What the replication layer still needs of the WAL.
pub trait RaftRetention: Send + Sync {
    /// The lowest WAL sequence any raft group still needs (its first entry not yet purged,
    /// its newest state record), or `None` when it needs none. WAL files holding only
    /// records below it may be deleted.
    fn min_needed_seq(&self) -> Option<u64>;

    /// Called after a checkpoint with the first sequence of the newest WAL file: a group
    /// whose state record is older, and that needs nothing else that old, should write its
    /// state again, so that the older files can go at the next checkpoint.
    fn refresh_below(&self, seq: u64) {
        let _ = seq;
    }
}

/// A raft record read back at recovery, in WAL order.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftRecord {
    pub seq: u64,
    pub group: SpaceId,
    pub op: Op,
}

/// The node's raft records between recovery and the replication layer, and what it retains.
#[derive(Default)]
pub(crate) struct RaftHold {
    recovered: Mutex<Vec<RaftRecord>>,
    /// The lowest sequence of a recovered record not yet handed over (`u64::MAX`: none).
    recovered_min: AtomicU64,
    /// Weak: the replication layer holds the store, not the other way round.
    retention: RwLock<Option<Weak<dyn RaftRetention>>>,
    /// The first sequence of the newest WAL file at the last refresh: the next is due when
    /// the WAL has rolled.
    refreshed_at: AtomicU64,
}

impl RaftHold {
    pub(crate) fn new() -> Self {
        Self {
            recovered: Mutex::new(Vec::new()),
            recovered_min: AtomicU64::new(u64::MAX),
            retention: RwLock::new(None),
            refreshed_at: AtomicU64::new(0),
        }
    }

    /// Replay found a raft record.
    pub(crate) fn recovered(&self, seq: u64, group: SpaceId, op: Op) {
        self.recovered_min.fetch_min(seq, Ordering::SeqCst);
        self.recovered.lock().push(RaftRecord { seq, group, op });
    }

    /// The checkpoint's bound: the lowest sequence still needed (`u64::MAX`: none).
    pub(crate) fn min_needed_seq(&self) -> u64 {
        let held = self.recovered_min.load(Ordering::SeqCst);
        let retained = match self.retention.read().as_ref().map(Weak::upgrade) {
            None => u64::MAX,
            Some(Some(r)) => r.min_needed_seq().unwrap_or(u64::MAX),
            // The layer is gone (the node is shutting down): keep everything.
            Some(None) => 0,
        };
        held.min(retained)
    }

    /// See [`RaftRetention::refresh_below`].
    pub(crate) fn refresh_below(&self, seq: u64) {
        if self.refreshed_at.swap(seq, Ordering::SeqCst) == seq {
            return;
        }
        let retention = self.retention.read().as_ref().and_then(Weak::upgrade);
        if let Some(r) = retention {
            r.refresh_below(seq);
        }
    }
}

impl Store {
    /// Registers what the replication layer retains (held weakly: the layer holds the store),
    /// then hands it the raft records that recovery read (in WAL order; empty on a second
    /// call). Until this is called the WAL keeps every recovered raft record; once the layer
    /// is dropped, everything.
    pub fn attach_raft(&self, retention: Arc<dyn RaftRetention>) -> Vec<RaftRecord> {
        let hold = &self.inner.raft;
        *hold.retention.write() = Some(Arc::downgrade(&retention));
        let records = std::mem::take(&mut *hold.recovered.lock());
        hold.recovered_min.store(u64::MAX, Ordering::SeqCst);
        records
    }

    /// Appends raft records of `group` (codes 10 to 12) in one group commit and returns the
    /// sequence of the first (the rest follow it). `on_durable` is called once, on the WAL's
    /// waker thread, with whether they are durable: raft's "log flushed" callback. It must
    /// not block.
    pub fn append_raft(
        &self,
        group: &SpaceId,
        ops: Vec<Op>,
        on_durable: DurableCallback,
    ) -> Result<u64> {
        let n = check_raft(&ops)?;
        let last = self.inner.wal.submit_callback(group, ops, on_durable)?;
        Ok(last + 1 - n)
    }

    /// [`Store::append_raft`] as a future that resolves (to the last sequence) once durable.
    pub fn append_raft_async(&self, group: &SpaceId, ops: Vec<Op>) -> Result<Commit> {
        check_raft(&ops)?;
        self.inner.wal.submit_all_async(group, ops)
    }
}

fn check_raft(ops: &[Op]) -> Result<u64> {
    if ops.is_empty() || ops.iter().any(|op| !op.is_raft()) {
        return Err(StorageError::Invalid(
            "append_raft takes one or more raft records".into(),
        ));
    }
    Ok(ops.len() as u64)
}
