//! Idle groups cost nothing: quiescence and the resident set.
//!
//! - **Quiescence.** A group whose leader has served no request for `quiesce_after`, and whose
//!   followers all hold its whole log (committed and applied everywhere), is quiesced: the
//!   leader tells each follower (`Quiesce`), then stops its own ticker (openraft's tick drives
//!   heartbeats and election timeouts; stopped, the group wakes no thread). A follower stops
//!   its ticker when its leader tells it to. Any request or message for the group starts the
//!   ticker again; a follower woken by a request also tells the leader (`Wake`), so the
//!   leader's heartbeats resume before the follower's election timer would fire. A follower
//!   that missed the `Quiesce` keeps its timer: with the leader silent it starts an election,
//!   which wakes the others; the group quiesces again once idle.
//! - **The resident set.** At most `max_resident` groups are resident (a `Raft` with its tasks
//!   and state machine in memory); beyond that, the least recently used quiesced groups are
//!   stopped. Their logs and state are on disk; the next request or message starts them again
//!   (a restarted group holds an election before it serves: the cost of waking from disk).
//!
//! `sweep` does both; `start_residency` runs it every second.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use crate::codec::Message;
use crate::network::Contact;
use crate::node::{Group, ReplicaNode};

/// The residency policy of a node.
#[derive(Debug, Clone, Copy)]
pub struct Residency {
    /// A leader idle this long quiesces its group.
    pub quiesce_after: Duration,
    /// The most groups resident at once (quiesced ones beyond it are stopped).
    pub max_resident: usize,
}

impl Default for Residency {
    fn default() -> Self {
        Self {
            quiesce_after: Duration::from_secs(2),
            max_resident: 1000,
        }
    }
}

/// A resident group.
pub(crate) struct Resident {
    pub(crate) raft: Group,
    /// Which creation of the space it is (`creation.rs`).
    pub(crate) creation: u64,
    /// Tells this start of the group from a later one.
    generation: u64,
    /// The last request or message (a `Quiesce` does not count).
    last_used: Instant,
    /// What its connections last sent each peer, and whether its ticker is stopped
    /// (quiesced); shared with the heartbeat driver's registry.
    pub(crate) contact: Arc<Contact>,
}

/// What brings a group into use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A client's request (a proposal, a read).
    Request,
    /// A peer's raft message.
    Message,
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Groups this node (their leader) quiesced.
    pub quiesced: usize,
    /// Groups stopped to keep the resident set within its bound.
    pub evicted: usize,
    /// Groups resident after the sweep.
    pub resident: usize,
}

impl ReplicaNode {
    /// Sets the residency policy.
    pub fn set_residency(&self, r: Residency) {
        *self.residency.lock() = r;
    }

    /// The group of `space`, started if it is not resident, marked used. A quiesced group
    /// is woken (its ticker started) by a message from a peer, and by a request when this node
    /// leads it; a request to a quiesced follower asks the leader to wake first (its
    /// heartbeats then wake this node with a fresh lease), and wakes this node's ticker only
    /// if the leader cannot be reached (so that an election can replace it).
    ///
    /// `offered`: the creation a message is for (0 for this node's requests); the group is
    /// the creation the catalog names (`creation.rs`), and a resident group of an earlier
    /// one is stopped and erased first.
    pub(crate) async fn resident(
        &self,
        space: &SpaceId,
        use_: Use,
        offered: u64,
    ) -> io::Result<Group> {
        self.resident_start(space, use_, offered)
            .await
            .map(|(g, _)| g)
    }

    /// [`ReplicaNode::resident`], with the number of this start of the group (a group
    /// stopped and started again, or replaced by a later creation's, has another).
    pub(crate) async fn resident_start(
        &self,
        space: &SpaceId,
        use_: Use,
        offered: u64,
    ) -> io::Result<(Group, u64)> {
        if space.is_metadata_group() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the metadata group is not a space's group",
            ));
        }
        let (raft, ask_leader, want, generation) = {
            let mut groups = self.groups.lock().await;
            self.check_not_erasing(space)?;
            // Read under the lock: the catalog a start or a stop below acts on.
            let want = self.wanted_creation(space, offered)?;
            let resident = groups.get(space).map_or(0, |r| r.creation);
            if want != 0 && resident > want {
                // Started as a later creation than this catalog names: it is catching up.
                return Err(crate::creation::behind(space));
            }
            if want != 0 && resident != 0 && resident < want {
                // Started as an earlier creation (the space was dropped and created anew
                // since): stopped here; starting it as `want` erases its state.
                if let Some(r) = groups.remove(space) {
                    self.beats.write().remove(space);
                    r.contact.close();
                    let _ = r.raft.shutdown().await;
                }
            }
            match groups.get_mut(space) {
                Some(r) => {
                    r.last_used = Instant::now();
                    let mut ask = None;
                    if r.contact.quiesced() {
                        let (leader, me) = {
                            let m = r.raft.metrics();
                            let m = m.borrow_watched();
                            (m.current_leader, m.id)
                        };
                        match (use_, leader) {
                            (Use::Request, Some(l)) if l != me => ask = Some(l),
                            _ => {
                                r.contact.set_quiesced(false);
                                r.raft.runtime_config().tick(true);
                            }
                        }
                    }
                    (r.raft.clone(), ask, want, r.generation)
                }
                None => {
                    if self.retired.lock().contains(space) {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("the group of memory space {space} was retired (the space was dropped)"),
                        ));
                    }
                    let (raft, contact) = self.start_group(space, want).await?;
                    self.beats
                        .write()
                        .insert(space.clone(), (raft.clone(), contact.clone()));
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    groups.insert(
                        space.clone(),
                        Resident {
                            raft: raft.clone(),
                            creation: want,
                            generation,
                            last_used: Instant::now(),
                            contact,
                        },
                    );
                    (raft, None, want, generation)
                }
            }
        };
        if let Some(leader) = ask_leader {
            let call = self.transport.call(
                leader,
                Message::Wake { from: self.id }.encode_for(space, want),
            );
            let woke = matches!(
                tokio::time::timeout(Duration::from_secs(1), call).await,
                Ok(Ok(_))
            );
            if !woke {
                let mut groups = self.groups.lock().await;
                if let Some(r) = groups.get_mut(space) {
                    r.contact.set_quiesced(false);
                    r.raft.runtime_config().tick(true);
                }
            }
        }
        Ok((raft, generation))
    }

    /// A `Quiesce` from `from` for the creation `creation`: stops the group's ticker if
    /// `from` is the leader it follows (in the same creation). Whether it follows `from`.
    pub(crate) async fn quiesce_follower(
        &self,
        space: &SpaceId,
        creation: u64,
        from: u64,
    ) -> io::Result<bool> {
        let mut groups = self.groups.lock().await;
        let Some(r) = groups.get_mut(space) else {
            // Not resident: nothing ticks.
            return Ok(false);
        };
        if creation != 0 && r.creation != 0 && creation != r.creation {
            return Err(io::Error::other(format!(
                "a quiesce for another creation of memory space {space}"
            )));
        }
        let follows = {
            let m = r.raft.metrics();
            let m = m.borrow_watched();
            m.current_leader == Some(from) && m.state == ServerState::Follower
        };
        if follows && !r.contact.quiesced() {
            r.contact.set_quiesced(true);
            r.raft.runtime_config().tick(false);
        }
        Ok(follows)
    }

    /// Quiesces the idle groups this node leads and stops quiesced groups beyond the resident
    /// bound, least recently used first.
    pub async fn sweep(&self) -> Sweep {
        let policy = *self.residency.lock();
        let now = Instant::now();
        let mut idle = Vec::new();
        {
            let groups = self.groups.lock().await;
            for (space, r) in groups.iter() {
                if !r.contact.quiesced() && now.duration_since(r.last_used) >= policy.quiesce_after
                {
                    if let Some(followers) = settled_followers(&r.raft) {
                        idle.push((space.clone(), r.generation, r.creation, followers));
                    }
                }
            }
        }
        let mut out = Sweep::default();
        for (space, generation, creation, followers) in idle {
            let me = self.id;
            for f in followers {
                let msg = Message::Quiesce { from: me }.encode_for(&space, creation);
                let call = self.transport.call(f, msg);
                let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
            }
            let mut groups = self.groups.lock().await;
            if let Some(r) = groups.get_mut(&space) {
                // Used while the followers were told: stays awake (they wake on its next
                // heartbeat).
                if r.last_used <= now && !r.contact.quiesced() && r.generation == generation {
                    r.contact.set_quiesced(true);
                    r.raft.runtime_config().tick(false);
                    out.quiesced += 1;
                }
            }
        }
        let mut groups = self.groups.lock().await;
        if groups.len() > policy.max_resident {
            let mut quiet: Vec<(Instant, SpaceId)> = groups
                .iter()
                .filter(|(_, r)| r.contact.quiesced())
                .map(|(s, r)| (r.last_used, s.clone()))
                .collect();
            quiet.sort();
            let excess = groups.len() - policy.max_resident;
            for (_, space) in quiet.into_iter().take(excess) {
                if let Some(r) = groups.remove(&space) {
                    self.beats.write().remove(&space);
                    let _ = r.raft.shutdown().await;
                    out.evicted += 1;
                }
            }
        }
        out.resident = groups.len();
        out
    }

    /// Sweeps every second while the node lives.
    pub fn start_residency(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(node) = weak.upgrade() else { return };
                node.sweep().await;
            }
        });
    }
}

/// The followers of a group this node leads, if every one holds its whole log and it is
/// committed and applied (nothing is in flight); `None` otherwise.
fn settled_followers(g: &Group) -> Option<Vec<u64>> {
    let m = g.metrics();
    let m = m.borrow_watched();
    if m.state != ServerState::Leader {
        return None;
    }
    let last = m.last_log_index?;
    if m.cluster_committed.map(|c| c.index) != Some(last)
        || m.last_applied.map(|a| a.index) != Some(last)
    {
        return None;
    }
    let replication = m.replication.as_ref()?;
    let mut followers = Vec::new();
    for (id, matched) in replication {
        if *id == m.id {
            continue;
        }
        if matched.map(|l| l.index) != Some(last) {
            return None;
        }
        followers.push(*id);
    }
    Some(followers)
}
