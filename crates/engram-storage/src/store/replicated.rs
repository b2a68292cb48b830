//! Replicated spaces: a raft group's state machine. Its changes come from committed log
//! entries ([`Store::apply_replicated`]), sequenced by log index instead of WAL sequence (the
//! records are the group's log, which the WAL retains for it). Its `raft.state` says what it
//! has applied, written after each flush once the flushed memtable is a durable segment. A
//! snapshot is its files as they are ([`Store::snapshot_replicated`]); installing one
//! ([`Store::install_replicated`]) replaces them atomically: the new files are put beside the
//! old under `.snap` names, then a marker in `installs/` commits the swap, which recovery
//! finishes if a crash cuts it short. Layout and rules: `docs/format.md`, "Replicated spaces".

use std::path::Path;
use std::sync::atomic::Ordering;

use engram_core::SpaceId;

use super::Store;
use crate::compaction::flush;
use crate::disk::{write_file_atomic, Disk};
use crate::error::{corrupted, IoContext, Result, StorageError};
use crate::index::INDEX_EXTENSION;
use crate::lexical::LEX_EXTENSION;
use crate::meta::{SpaceMeta, SPACE_META_FILE};
use crate::op::Op;
use crate::raft::{Command, RaftApplied, RAFT_STATE_FILE};
use crate::requests::{Answer, RequestRecord};
use crate::segment::{parse_segment_file_name, WritePace};
use crate::space::{read_raft_state, space_dir, Space, SpaceState};

/// The suffix of a snapshot's file put beside the space's own until the install commits.
const SNAP_SUFFIX: &str = ".snap";
/// The directory of install markers, below the node's root.
const INSTALLS_DIR: &str = "installs";
/// The suffix of an install's marker before its commit point (`installs/<space>.pending`).
const PENDING_SUFFIX: &str = ".pending";

/// What applying a committed entry did ([`Store::apply_entry`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// Applied now; for a data operation, what it did.
    Applied(Option<Answer>),
    /// A repeat of an earlier request: not applied; the first one's record.
    Repeat(RequestRecord),
    /// Nothing to do: a blank or membership entry, a command the space's segments already
    /// hold, or one for a space that does not exist.
    Nothing,
}

/// Whether `name` is one of the files a space's state consists of.
fn is_state_file(name: &str) -> bool {
    name == SPACE_META_FILE
        || name == RAFT_STATE_FILE
        || parse_segment_file_name(name).is_some()
        || name.ends_with(&format!(".{INDEX_EXTENSION}"))
        || name.ends_with(&format!(".{LEX_EXTENSION}"))
}

impl Store {
    /// Applies one committed entry of the group of the replicated space `space`: `op` is its
    /// command (`None` for a blank or membership entry), `index` its log index, `state` the
    /// group's applied state with it. Idempotent by index: a command the space's segments
    /// already hold changes nothing. Returns whether the space changed. (A command without
    /// an idempotency key: see [`Store::apply_entry`].)
    pub fn apply_replicated(
        &self,
        space: &SpaceId,
        index: u64,
        op: Option<Op>,
        state: &RaftApplied,
    ) -> Result<bool> {
        let cmd = op.map(|op| Command { op, request: None });
        Ok(matches!(
            self.apply_one(space, index, cmd, state)?,
            ApplyOutcome::Applied(_)
        ))
    }

    /// Applies a committed entry's commands (see [`Store::apply_replicated`]): none (a blank
    /// or membership entry), one, or a batch of data operations proposed together, applied in
    /// order at the entry's index under one lock (a flush never splits an entry). A command
    /// carrying an idempotency key that repeats an earlier one of the last ten minutes (in the
    /// entries' time) is not applied: its outcome is the first one's record. See
    /// [`crate::requests`]. One outcome per command (one for an entry without any).
    pub fn apply_entry(
        &self,
        space: &SpaceId,
        index: u64,
        cmds: Vec<Command>,
        state: &RaftApplied,
    ) -> Result<Vec<ApplyOutcome>> {
        if cmds.len() <= 1 {
            return Ok(vec![self.apply_one(
                space,
                index,
                cmds.into_iter().next(),
                state,
            )?]);
        }
        self.inner.stats.activity.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = cmds.iter().find(|c| !c.op.is_data()) {
            return Err(StorageError::Invalid(format!(
                "operation {} in a batch entry: a batch holds data operations only",
                c.op.code()
            )));
        }
        let nothing = || Ok(vec![ApplyOutcome::Nothing; cmds.len()]);
        let Some(s) = self.inner.catalog.space(space)? else {
            return nothing();
        };
        if !s.meta.replicated {
            return Err(StorageError::Invalid(format!(
                "space {space} exists and is not replicated"
            )));
        }
        let mut st = s.state.write();
        if st.dropped {
            return nothing();
        }
        st.raft = Some(state.clone());
        if index <= st.flushed_seq {
            return nothing();
        }
        let mut out = Vec::with_capacity(cmds.len());
        for (slot, c) in cmds.into_iter().enumerate() {
            out.push(apply_data(
                &mut st,
                space,
                index,
                slot as u32,
                c.op,
                c.request,
            )?);
        }
        Ok(out)
    }

    /// An entry of one command, or none (blank, membership).
    fn apply_one(
        &self,
        space: &SpaceId,
        index: u64,
        cmd: Option<Command>,
        state: &RaftApplied,
    ) -> Result<ApplyOutcome> {
        let node = &self.inner;
        node.stats.activity.fetch_add(1, Ordering::Relaxed);
        let existing = node.catalog.space(space)?;
        if let Some(s) = &existing {
            if !s.meta.replicated {
                return Err(StorageError::Invalid(format!(
                    "space {space} exists and is not replicated"
                )));
            }
        }
        let (op, request) = match cmd {
            Some(c) if c.op.is_raft() => {
                return Err(StorageError::Invalid(
                    "a raft record is not a command".into(),
                ))
            }
            Some(Command {
                op: Op::Meta(_), ..
            }) => {
                return Err(StorageError::Invalid(
                    "a metadata command in a space's group".into(),
                ))
            }
            Some(c) => (Some(c.op), c.request),
            None => (None, None),
        };
        match (op, existing) {
            (
                Some(Op::SpaceCreate {
                    dimension,
                    created_at_us,
                    embedder,
                }),
                None,
            ) => {
                let meta = SpaceMeta {
                    dimension,
                    created_at_us,
                    created_seq: index,
                    embedder,
                    replicated: true,
                };
                let s = Space::new_in_memory(space.clone(), space_dir(&node.root, space), meta);
                {
                    let mut st = s.state.write();
                    st.active.note(index);
                    st.raft = Some(state.clone());
                    if let Some((key, at_us)) = &request {
                        st.requests
                            .record(key, index, 0, *at_us, Answer::SpaceCreated);
                    }
                }
                node.catalog.insert_new(s);
                Ok(ApplyOutcome::Applied(Some(Answer::SpaceCreated)))
            }
            (_, None) => Ok(ApplyOutcome::Nothing),
            (op, Some(s)) => {
                let mut st = s.state.write();
                if st.dropped {
                    return Ok(ApplyOutcome::Nothing);
                }
                st.raft = Some(state.clone());
                let Some(op) = op else {
                    return Ok(ApplyOutcome::Nothing);
                };
                if index <= st.flushed_seq {
                    return Ok(ApplyOutcome::Nothing);
                }
                match op {
                    Op::SpaceCreate { .. } | Op::SpaceDrop => {
                        if let Some((key, at_us)) = &request {
                            if let Some(first) = st.requests.repeat_of(key, index, 0, *at_us) {
                                return Ok(ApplyOutcome::Repeat(first.clone()));
                            }
                        }
                        let answer = Answer::of(&op, |_| false);
                        if let (Some((key, at_us)), Some(a)) = (&request, &answer) {
                            st.requests.record(key, index, 0, *at_us, a.clone());
                        }
                        if op == Op::SpaceDrop {
                            st.dropped = true;
                            drop(st);
                            node.catalog.remove(space);
                            // The group's log retains the entry until the space's files are
                            // gone; the WAL sequence here holds nothing back.
                            node.pending_drops.lock().push((u64::MAX, s));
                        }
                        Ok(ApplyOutcome::Applied(answer))
                    }
                    op => apply_data(&mut st, space, index, 0, op, request),
                }
            }
        }
    }

    /// The live record of the request `key` in the space (as of `now_us`): a leader (or the
    /// engine of a single node) answers a repeat with it before proposing or writing anything.
    pub fn request_record(
        &self,
        space: &SpaceId,
        key: &str,
        now_us: i64,
    ) -> Result<Option<RequestRecord>> {
        Ok(match self.inner.catalog.space(space)? {
            Some(s) => s.state.read().requests.get(key, now_us).cloned(),
            None => None,
        })
    }

    /// What the replicated space (or a group whose space is not created yet) has applied, as
    /// this node knows it: `None` when it has nothing of the group.
    pub fn replicated_state(&self, space: &SpaceId) -> Result<Option<RaftApplied>> {
        if let Some(s) = self.inner.catalog.space(space)? {
            return Ok(s.state.read().raft.clone());
        }
        read_raft_state(&*self.inner.disk, &space_dir(&self.inner.root, space))
    }

    /// Records the applied state of a group that has no space yet (its `raft.state`, alone in
    /// its directory), so that a restart after its log was purged knows it.
    pub fn save_group_state(&self, space: &SpaceId, state: &RaftApplied) -> Result<()> {
        if self.inner.catalog.space(space)?.is_some() {
            return Err(StorageError::Invalid(format!(
                "space {space} exists: its flushes write its applied state"
            )));
        }
        let disk = &*self.inner.disk;
        let dir = space_dir(&self.inner.root, space);
        disk.create_dir_all(&dir).at(&dir)?;
        let p = dir.join(RAFT_STATE_FILE);
        write_file_atomic(disk, &p, &state.encode()).at(&p)?;
        disk.sync_dir(&self.inner.spaces_dir)
            .at(&self.inner.spaces_dir)
    }

    /// Makes a snapshot of a replicated space in the empty directory `dest`: flushes it, then
    /// links its files there (the segments, their indexes, `space.meta`, `raft.state`) as
    /// they are. A group whose space does not exist has `no_space` applied: that is saved
    /// ([`Store::save_group_state`]) and is the snapshot. Returns what the snapshot holds
    /// applied.
    pub fn snapshot_replicated(
        &self,
        space: &SpaceId,
        dest: &Path,
        no_space: &RaftApplied,
    ) -> Result<RaftApplied> {
        let node = &self.inner;
        let disk = &*node.disk;
        disk.create_dir_all(dest).at(dest)?;
        let src = space_dir(&node.root, space);
        let Some(s) = node.catalog.space(space)? else {
            // A group with no space: its applied state alone.
            self.save_group_state(space, no_space)?;
            let p = dest.join(RAFT_STATE_FILE);
            write_file_atomic(disk, &p, &no_space.encode()).at(&p)?;
            return Ok(no_space.clone());
        };
        if !s.meta.replicated {
            return Err(StorageError::Invalid(format!(
                "space {space} is not replicated"
            )));
        }
        let linker = node.auto_linker.read().clone();
        flush::flush(disk, &node.wal, &s, &WritePace::UNPACED, linker.as_deref())?;
        // Again, for what an earlier flush left frozen.
        flush::flush(disk, &node.wal, &s, &WritePace::UNPACED, linker.as_deref())?;
        let _files = s.files.lock();
        let state = s.state.read().raft_persisted.clone().unwrap_or_default();
        for name in disk.list_dir(&src).at(&src)? {
            if is_state_file(&name) {
                let (from, to) = (src.join(&name), dest.join(&name));
                disk.hard_link(&from, &to).at(&to)?;
            }
        }
        disk.sync_dir(dest).at(dest)?;
        tracing::debug!(space = %space, applied = ?state.applied, files = ?disk.list_dir(dest), "snapshot built");
        Ok(state)
    }

    /// Replaces the replicated space's state with the snapshot in `src` (made by
    /// [`Store::snapshot_replicated`], here or on another node), atomically: a crash leaves
    /// the old state or the new one. Returns what the snapshot holds applied.
    pub fn install_replicated(&self, space: &SpaceId, src: &Path) -> Result<RaftApplied> {
        let node = &self.inner;
        let disk = &*node.disk;
        let names: Vec<String> = disk
            .list_dir(src)
            .at(src)?
            .into_iter()
            .filter(|n| is_state_file(n))
            .collect();
        if !names.iter().any(|n| n == RAFT_STATE_FILE) {
            return corrupted(format!("a snapshot without {RAFT_STATE_FILE}"));
        }
        let state = RaftApplied::decode(&disk.read(&src.join(RAFT_STATE_FILE)).at(src)?)?;
        if let Some(n) = names.iter().find(|n| *n == SPACE_META_FILE) {
            if !SpaceMeta::decode(&disk.read(&src.join(n)).at(src)?)?.replicated {
                return corrupted("a snapshot of a space that is not replicated");
            }
        }
        let dir = space_dir(&node.root, space);
        disk.create_dir_all(&dir).at(&dir)?;
        disk.sync_dir(&node.spaces_dir).at(&node.spaces_dir)?;
        // 0. The pending marker: a crash from here to the commit point has the `.snap` files
        // removed at open (and only then: a space loading meanwhile leaves them alone).
        let installs = node.root.join(INSTALLS_DIR);
        disk.create_dir_all(&installs).at(&installs)?;
        let pending = installs.join(format!("{space}{PENDING_SUFFIX}"));
        write_file_atomic(disk, &pending, b"").at(&pending)?;
        disk.sync_dir(&node.root).at(&node.root)?;
        // 1. The new files beside the old, under their `.snap` names.
        for name in &names {
            let to = dir.join(format!("{name}{SNAP_SUFFIX}"));
            if disk.exists(&to) {
                disk.remove_file(&to).at(&to)?;
            }
            disk.hard_link(&src.join(name), &to).at(&to)?;
        }
        disk.sync_dir(&dir).at(&dir)?;
        // The old space stops here: no flush or merge of it writes from now on.
        let old = node.catalog.space(space)?;
        let _merging = old.as_ref().map(|s| s.merging.lock());
        let _files = old.as_ref().map(|s| s.files.lock());
        if let Some(s) = &old {
            s.state.write().dropped = true;
        }
        node.catalog.remove(space);
        // 2. The commit point: the marker naming the new files.
        let marker = installs.join(space.as_str());
        write_file_atomic(disk, &marker, names.join("\n").as_bytes()).at(&marker)?;
        // 3. The swap, which recovery redoes after a crash.
        finish_install(disk, &node.spaces_dir, &installs, space.as_str())?;
        if names.iter().any(|n| n == SPACE_META_FILE) {
            node.catalog.insert_on_disk(space);
        }
        tracing::debug!(space = %space, applied = ?state.applied, files = ?names, "snapshot installed");
        Ok(state)
    }
}

/// Applies one data operation (not a space's creation or drop) of the entry at `index`, the
/// command at `slot` in it, to the space's state: a repeat of an earlier request is not
/// applied (its first record is the outcome).
fn apply_data(
    st: &mut SpaceState,
    space: &SpaceId,
    index: u64,
    slot: u32,
    op: Op,
    request: Option<(String, i64)>,
) -> Result<ApplyOutcome> {
    if let Some((key, at_us)) = &request {
        if let Some(first) = st.requests.repeat_of(key, index, slot, *at_us) {
            return Ok(ApplyOutcome::Repeat(first.clone()));
        }
    }
    let answer = Answer::of(&op, |id| st.contains(id.as_str()).unwrap_or(false));
    if let (Some((key, at_us)), Some(a)) = (&request, &answer) {
        st.requests.record(key, index, slot, *at_us, a.clone());
    }
    match op {
        Op::RememberAutoLink(ms) => {
            // Links made after the acknowledgement would differ between replicas; a
            // replicated space stores such writes without them.
            tracing::warn!(space = %space, memories = ms.len(), "automatic links are not made in a replicated space");
            st.apply(
                index,
                Op::RememberBatch(ms.into_iter().map(|(m, _)| m).collect()),
            )?;
        }
        op => st.apply(index, op)?,
    }
    Ok(ApplyOutcome::Applied(answer))
}

/// Finishes the install whose marker is `installs/<name>`: removes the space's state files
/// that the snapshot does not have, gives the snapshot's files their names, removes the
/// marker. Idempotent: recovery runs it again after a crash.
fn finish_install(disk: &dyn Disk, spaces_dir: &Path, installs: &Path, name: &str) -> Result<()> {
    let marker = installs.join(name);
    let listed = String::from_utf8(disk.read(&marker).at(&marker)?)
        .map_err(|_| StorageError::Corrupted(format!("install marker {name}: not UTF-8")))?;
    let listed: Vec<&str> = listed.split('\n').filter(|n| is_state_file(n)).collect();
    let dir = spaces_dir.join(name);
    disk.create_dir_all(&dir).at(&dir)?;
    for f in disk.list_dir(&dir).at(&dir)? {
        let p = dir.join(&f);
        if is_state_file(&f) && !listed.contains(&f.as_str()) {
            disk.remove_file(&p).at(&p)?;
        }
    }
    for f in &listed {
        let snap = dir.join(format!("{f}{SNAP_SUFFIX}"));
        if disk.exists(&snap) {
            disk.rename(&snap, &dir.join(f)).at(&snap)?;
        }
    }
    disk.sync_dir(&dir).at(&dir)?;
    disk.remove_file(&marker).at(&marker)?;
    let pending = installs.join(format!("{name}{PENDING_SUFFIX}"));
    if disk.exists(&pending) {
        disk.remove_file(&pending).at(&pending)?;
    }
    disk.sync_dir(installs).at(installs)
}

/// At open, before the spaces are listed: finishes every install a crash cut short after its
/// commit point, and removes the `.snap` files of those that never reached it.
pub(crate) fn finish_installs(disk: &dyn Disk, spaces_dir: &Path) -> Result<()> {
    let root = spaces_dir.parent().unwrap_or(Path::new("."));
    let installs = root.join(INSTALLS_DIR);
    if !disk.exists(&installs) {
        return Ok(());
    }
    let mut names = disk.list_dir(&installs).at(&installs)?;
    // Committed installs first: finishing one removes its pending marker too.
    names.sort_by_key(|n| n.ends_with(PENDING_SUFFIX));
    for name in names {
        let p = installs.join(&name);
        if name.ends_with(".tmp") {
            disk.remove_file(&p).at(&p)?;
        } else if let Some(space) = name.strip_suffix(PENDING_SUFFIX) {
            if !disk.exists(&p) {
                continue;
            }
            let dir = spaces_dir.join(space);
            if disk.exists(&dir) {
                tracing::info!(
                    space,
                    "removing the files of a snapshot install cut short before its commit point"
                );
                for f in disk.list_dir(&dir).at(&dir)? {
                    if f.ends_with(SNAP_SUFFIX) {
                        let snap = dir.join(&f);
                        disk.remove_file(&snap).at(&snap)?;
                    }
                }
                disk.sync_dir(&dir).at(&dir)?;
            }
            disk.remove_file(&p).at(&p)?;
            disk.sync_dir(&installs).at(&installs)?;
        } else {
            tracing::info!(space = name, "finishing a snapshot install cut short");
            finish_install(disk, spaces_dir, &installs, &name)?;
        }
    }
    Ok(())
}
