//! Every group's raft log on the node's one WAL.
//!
//! - An append becomes one WAL record per entry (`RaftEntry`), queued in the store's group
//!   commit with the appends of every other group and every unreplicated write: one fsync
//!   makes them all durable, and openraft's "log flushed" callback fires from the WAL's waker
//!   thread once it has.
//! - The vote, the committed and the purged log ids are one `RaftMeta` record; the newest of a
//!   group is its whole state. A vote waits for its record to be durable; the others do not
//!   (the WAL is written in order, so a later durable record implies them).
//! - A truncation is a `RaftTruncate` record.
//! - Entries stay in memory, with the sequence of their record, until purged; recovery rebuilds
//!   each group's log from the records in WAL order, applying the same rules.
//! - The WAL keeps, for each group, its first entry not yet purged and its newest durable
//!   `RaftMeta` ([`NodeLog`] is the store's [`RaftRetention`]); a group whose state record
//!   would be all that keeps an old WAL file rewrites it ([`RaftRetention::refresh_below`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use engram_core::SpaceId;
use engram_storage::{GroupMeta, LogPos, Op, RaftRecord, RaftRetention, Store};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use parking_lot::Mutex;

use crate::types::{
    entry_of, io_err, log_id, log_pos, stored_entry, stored_vote, vote_of, Entry, LogId,
    TypeConfig, Vote,
};

/// The most entries one WAL append carries (the store takes up to 4,096 records at once).
const MAX_APPEND: usize = 1024;

/// One group's log as the node holds it: the log behind a lock, and the sequence of its
/// newest durable `RaftMeta` record apart (set by durability callbacks, which must not wait
/// for the lock: with `inline_commit` they run inside the append that holds it).
#[derive(Default)]
pub struct GroupShared {
    log: Mutex<GroupLog>,
    /// 0: no `RaftMeta` durable yet.
    meta_seq: AtomicU64,
}

impl GroupShared {
    /// The lowest WAL sequence the group needs.
    fn min_needed_seq(&self) -> Option<u64> {
        let first = self.log.lock().first_seq();
        match (first, self.meta_seq()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn meta_seq(&self) -> Option<u64> {
        match self.meta_seq.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

/// One group's log entries and raft state.
#[derive(Default)]
pub struct GroupLog {
    meta: GroupMeta,
    /// Entries not purged, by index, with the sequence of their WAL record.
    entries: BTreeMap<u64, (u64, Entry)>,
    /// The lowest sequence in `entries` (kept as they change: the checkpoint asks every
    /// group for it several times a second).
    min_seq: Option<u64>,
}

impl GroupLog {
    /// The sequence of the oldest record holding an entry.
    fn first_seq(&self) -> Option<u64> {
        self.min_seq
    }

    fn recompute_min(&mut self) {
        self.min_seq = self.entries.values().map(|(seq, _)| *seq).min();
    }

    fn insert(&mut self, index: u64, seq: u64, e: Entry) {
        let replaced = self.entries.insert(index, (seq, e));
        match replaced {
            // The entry replaced may have held the lowest sequence.
            Some((old, _)) if Some(old) == self.min_seq => self.recompute_min(),
            _ => self.min_seq = Some(self.min_seq.map_or(seq, |m| m.min(seq))),
        }
    }

    fn truncate_after(&mut self, after: Option<u64>) {
        let from = after.map_or(0, |i| i + 1);
        if !self.entries.split_off(&from).is_empty() {
            self.recompute_min();
        }
    }

    fn purge(&mut self, upto: u64) {
        let kept = self.entries.split_off(&(upto + 1));
        let removed = !self.entries.is_empty();
        self.entries = kept;
        if removed {
            self.recompute_min();
        }
    }

    /// Applies a recovered record (the same rules as the live calls); returns the sequence of
    /// a `RaftMeta`.
    fn replay(&mut self, seq: u64, op: Op) -> io::Result<Option<u64>> {
        match op {
            Op::RaftEntry(e) => {
                if self.meta.purged.is_some_and(|p| e.pos.index <= p.index) {
                    return Ok(None);
                }
                let index = e.pos.index;
                self.insert(index, seq, entry_of(*e)?);
            }
            Op::RaftMeta(m) => {
                self.meta = m;
                if let Some(p) = m.purged {
                    self.purge(p.index);
                }
                return Ok(Some(seq));
            }
            Op::RaftTruncate(after) => self.truncate_after(after.map(|p| p.index)),
            other => return Err(io_err(format!("op {} in a raft log", other.code()))),
        }
        Ok(None)
    }
}

/// The raft logs of every group on this node, on its WAL.
pub struct NodeLog {
    store: Arc<Store>,
    groups: Mutex<HashMap<SpaceId, Arc<GroupShared>>>,
    /// Set while the logs are rebuilt at open: the WAL keeps everything meanwhile.
    loading: AtomicBool,
}

impl NodeLog {
    /// Attaches to the store and rebuilds every group's log from the raft records recovery
    /// read.
    pub fn open(store: Arc<Store>) -> io::Result<Arc<NodeLog>> {
        let log = Arc::new(NodeLog {
            store: store.clone(),
            groups: Mutex::new(HashMap::new()),
            loading: AtomicBool::new(true),
        });
        let records = store.attach_raft(log.clone());
        let result = log.rebuild(records);
        // Groups whose replay ended empty (reset: their space was dropped), or with nothing
        // but a creation (recorded by a start that went no further), are forgotten.
        log.groups.lock().retain(|_, g| {
            let l = g.log.lock();
            l.meta.vote.is_some() || l.meta.purged.is_some() || !l.entries.is_empty()
        });
        log.loading.store(false, Ordering::SeqCst);
        result?;
        Ok(log)
    }

    fn rebuild(&self, records: Vec<RaftRecord>) -> io::Result<()> {
        let mut groups = self.groups.lock();
        for r in records {
            let g = groups.entry(r.group.clone()).or_default();
            let meta = g
                .log
                .lock()
                .replay(r.seq, r.op)
                .map_err(|e| io_err(format!("raft log of {} at {}: {e}", r.group, r.seq)))?;
            if let Some(seq) = meta {
                g.meta_seq.store(seq, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// The log store of `group` (an empty log for a group never seen).
    pub fn group(self: &Arc<Self>, group: &SpaceId) -> LogStore {
        let state = self.groups.lock().entry(group.clone()).or_default().clone();
        LogStore {
            node: self.clone(),
            group: group.clone(),
            state,
        }
    }

    /// Whether `group` has any raft state on this node: a vote, an entry, or a purge point
    /// (so it was initialised here, or has heard from a leader).
    pub fn has_state(&self, group: &SpaceId) -> bool {
        self.groups.lock().get(group).is_some_and(|g| {
            let l = g.log.lock();
            l.meta.vote.is_some() || l.meta.purged.is_some() || !l.entries.is_empty()
        })
    }

    /// Which creation of its space `group`'s raft state belongs to (0: not known), if it has
    /// any state on this node.
    pub fn creation(&self, group: &SpaceId) -> Option<u64> {
        let g = self.groups.lock().get(group).cloned()?;
        let l = g.log.lock();
        let any = l.meta.vote.is_some() || l.meta.purged.is_some() || !l.entries.is_empty();
        any.then_some(l.meta.creation)
    }

    /// Records, durably, that `group`'s raft state is of the creation `creation` of its
    /// space (before the group starts: every later state record carries it).
    pub async fn set_creation(self: &Arc<Self>, group: &SpaceId, creation: u64) -> io::Result<()> {
        let shared = self.groups.lock().entry(group.clone()).or_default().clone();
        let rx = {
            let mut l = shared.log.lock();
            if l.meta.creation == creation {
                return Ok(());
            }
            l.meta.creation = creation;
            self.write_meta(group, &shared, l.meta)?
        };
        if rx.await.unwrap_or(false) {
            Ok(())
        } else {
            Err(io_err(format!(
                "the creation of group {group} did not become durable"
            )))
        }
    }

    /// The groups that have a log on this node.
    pub fn groups(&self) -> Vec<SpaceId> {
        self.groups.lock().keys().cloned().collect()
    }

    /// Forgets a group's log (its space was dropped or moved away); its records go with the
    /// WAL files that hold them.
    pub fn remove(&self, group: &SpaceId) {
        self.groups.lock().remove(group);
    }

    /// Erases a group's raft state durably: records that empty its log and clear its vote
    /// follow every earlier record of it in the WAL, so a replay ends with nothing (and
    /// [`NodeLog::open`] forgets it); then forgets it here.
    pub async fn reset(&self, group: &SpaceId) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store
            .append_raft(
                group,
                vec![Op::RaftTruncate(None), Op::RaftMeta(GroupMeta::default())],
                Box::new(move |durable| {
                    let _ = tx.send(durable.is_some());
                }),
            )
            .map_err(io_err)?;
        if !rx.await.unwrap_or(false) {
            return Err(io_err(format!(
                "the reset of group {group} did not become durable"
            )));
        }
        self.groups.lock().remove(group);
        Ok(())
    }

    /// Queues `meta` as the group's state record (the caller holds the group's log lock, so
    /// a group's records are queued in the order of its changes); the group's retained
    /// sequence moves to it once it is durable. Returns a receiver told whether it became
    /// durable.
    fn write_meta(
        &self,
        group: &SpaceId,
        shared: &Arc<GroupShared>,
        meta: GroupMeta,
    ) -> io::Result<tokio::sync::oneshot::Receiver<bool>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let weak = Arc::downgrade(shared);
        self.store
            .append_raft(
                group,
                vec![Op::RaftMeta(meta)],
                Box::new(move |durable| {
                    if let (Some(g), Some(seq)) = (weak.upgrade(), durable) {
                        g.meta_seq.fetch_max(seq, Ordering::SeqCst);
                    }
                    let _ = tx.send(durable.is_some());
                }),
            )
            .map_err(io_err)?;
        Ok(rx)
    }
}

impl RaftRetention for NodeLog {
    fn min_needed_seq(&self) -> Option<u64> {
        if self.loading.load(Ordering::SeqCst) {
            return Some(0);
        }
        self.groups
            .lock()
            .values()
            .filter_map(|g| g.min_needed_seq())
            .min()
    }

    fn refresh_below(&self, seq: u64) {
        let groups: Vec<_> = self
            .groups
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, shared) in groups {
            let st = shared.log.lock();
            let pinned_by_meta = shared.meta_seq().is_some_and(|m| m < seq);
            let pinned_by_entries = st.first_seq().is_some_and(|s| s < seq);
            if pinned_by_meta && !pinned_by_entries {
                if let Err(e) = self.write_meta(&id, &shared, st.meta) {
                    tracing::warn!(group = %id, error = %e, "could not rewrite a raft state record");
                    return;
                }
            }
        }
    }
}

/// One group's raft log: openraft's [`RaftLogStorage`] (and its own reader).
#[derive(Clone)]
pub struct LogStore {
    node: Arc<NodeLog>,
    group: SpaceId,
    state: Arc<GroupShared>,
}

impl LogStore {
    pub fn group(&self) -> &SpaceId {
        &self.group
    }

    /// The last entry purged from the log (the entries up to it are in a snapshot only).
    pub fn purged(&self) -> Option<LogPos> {
        self.state.log.lock().meta.purged
    }

    /// The WAL sequence of the record holding entry `index`, if the log has it.
    pub fn entry_seq(&self, index: u64) -> Option<u64> {
        self.state.log.lock().entries.get(&index).map(|(s, _)| *s)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let st = self.state.log.lock();
        Ok(st
            .entries
            .range(range)
            .map(|(_, (_, e))| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.state.log.lock().meta.vote.map(vote_of))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.state.log.lock();
        let purged = st.meta.purged.map(log_id);
        let last = st
            .entries
            .last_key_value()
            .map(|(_, (_, e))| e.log_id)
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let rx = {
            let mut st = self.state.log.lock();
            st.meta.vote = Some(stored_vote(vote));
            self.node.write_meta(&self.group, &self.state, st.meta)?
        };
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(io_err(
                "the vote could not be made durable (the WAL refuses writes)",
            )),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut st = self.state.log.lock();
        st.meta.committed = committed.as_ref().map(log_pos);
        self.node.write_meta(&self.group, &self.state, st.meta)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.state.log.lock().meta.committed.map(log_id))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let mut st = self.state.log.lock();
        // In appends of at most MAX_APPEND records; the WAL makes them durable in order, so
        // the last one's callback speaks for all.
        let chunks: Vec<&[Entry]> = entries.chunks(MAX_APPEND).collect();
        let mut callback = Some(callback);
        let mut seqs = Vec::with_capacity(entries.len());
        for (c, chunk) in chunks.iter().enumerate() {
            let ops = chunk
                .iter()
                .map(|e| Op::RaftEntry(Box::new(stored_entry(e))))
                .collect();
            let done: engram_storage::DurableCallback = if c + 1 == chunks.len() {
                let callback = callback.take().expect("the last chunk takes the callback");
                let queued = std::time::Instant::now();
                Box::new(move |durable: Option<u64>| {
                    // From the append to its fsync's end (a stage of a replicated write:
                    // `docs/cluster.md`, "Where a replicated write's time goes").
                    metrics::histogram!("engram_raft_log_append_seconds")
                        .record(queued.elapsed().as_secs_f64());
                    callback.io_completed(match durable {
                        Some(_) => Ok(()),
                        None => Err(io_err("the WAL refuses writes")),
                    })
                })
            } else {
                Box::new(|_| {})
            };
            let first = self
                .node
                .store
                .append_raft(&self.group, ops, done)
                .map_err(io_err)?;
            seqs.extend((0..chunk.len() as u64).map(|i| first + i));
        }
        for (e, seq) in entries.into_iter().zip(seqs) {
            st.insert(e.log_id.index, seq, e);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let mut st = self.state.log.lock();
        st.truncate_after(last_log_id.map(|l| l.index));
        self.node
            .store
            .append_raft(
                &self.group,
                vec![Op::RaftTruncate(last_log_id.as_ref().map(log_pos))],
                Box::new(|_| {}),
            )
            .map_err(io_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut st = self.state.log.lock();
        st.meta.purged = Some(log_pos(&log_id));
        st.purge(log_id.index);
        self.node.write_meta(&self.group, &self.state, st.meta)?;
        Ok(())
    }
}
