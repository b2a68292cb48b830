//! Proposals batched per group: the writes waiting for a space's group are proposed together
//! as one log entry (a batch of data operations: entry kind 3 in `docs/format.md`, "Raft records"), so
//! openraft's cost per entry (the core's bookkeeping, an append, a replication message, an
//! apply call) is paid once for many writes. A group has at most [`MAX_IN_FLIGHT`] entries
//! being proposed at once; a write arriving meanwhile waits for the next one, which takes
//! everything waiting (up to [`MAX_ENTRY_COMMANDS`] commands). A space's creation or drop is
//! always an entry of its own. Each proposal runs in a task of its own, so a client that gives
//! up on its write (its future dropped) cancels nothing for the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use engram_storage::{Command, MAX_ENTRY_COMMANDS};
use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::codec::ProposeOutcome;
use crate::node::Group;
use crate::types::Request;

/// Entries one group proposes at once: one proposed while the next gathers. (Measured with
/// `engram-bench replication`, 64 writers, a group of three in one process: 1 or 2 in flight
/// give about 20,000 writes/s, 4 to 16 give 14,000 to 16,000 with a P99 up to 3 times
/// longer: smaller batches, more per-entry work.)
pub const MAX_IN_FLIGHT: usize = 2;
/// Under a light load (at most this many writes outstanding for the group, waiting or being
/// proposed) up to this many entries: a write then waits for no other entry
/// (`engram-bench cluster`, the light write run: a quarter of a write's time was this wait).
/// Such an extra entry's task proposes once and ends, so a heavy load is still proposed
/// [`MAX_IN_FLIGHT`] entries at a time.
pub const MAX_IN_FLIGHT_LIGHT: usize = 4;

type Waiter = (Command, oneshot::Sender<ProposeOutcome>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// Proposing tasks running for the group.
    running: usize,
    /// Writes in the entries being proposed.
    proposing: usize,
}

/// The writes waiting to be proposed, per group: per start of a space's group (a task keeps
/// proposing to the group it was started for; one stopped and started again, or replaced by
/// a later creation's, gets a queue of its own).
#[derive(Default)]
pub(crate) struct Proposals {
    queues: Mutex<HashMap<(SpaceId, u64), Queue>>,
}

impl Proposals {
    /// Proposes `command` to the group `g` of `space` (its start `start`: see
    /// `ReplicaNode::resident_start`) with the writes waiting beside it, and
    /// waits for its outcome. `patience`: how long a leader whose lease is being renewed (woken
    /// from quiescence) is waited for; `heartbeat`: the group's heartbeat interval.
    pub(crate) async fn propose(
        self: &Arc<Self>,
        g: &Group,
        space: &SpaceId,
        start: u64,
        command: Command,
        patience: Duration,
        heartbeat: Duration,
    ) -> ProposeOutcome {
        let key = (space.clone(), start);
        let (tx, rx) = oneshot::channel();
        let queued = std::time::Instant::now();
        let start = {
            let mut queues = self.queues.lock();
            let q = queues.entry(key.clone()).or_default();
            q.waiting.push((command, tx));
            let start = q.running < MAX_IN_FLIGHT
                || (q.running < MAX_IN_FLIGHT_LIGHT
                    && q.proposing + q.waiting.len() <= MAX_IN_FLIGHT_LIGHT);
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            let (me, g) = (self.clone(), g.clone());
            tokio::spawn(async move { me.drive(g, key, patience, heartbeat).await });
        }
        let outcome = rx
            .await
            .unwrap_or_else(|_| ProposeOutcome::Failed("the proposal was dropped".into()));
        // A write's whole time on the leader: waiting for its entry, then the entry's.
        metrics::histogram!("engram_raft_write_seconds").record(queued.elapsed().as_secs_f64());
        outcome
    }

    /// Proposes what waits for `space`'s group, batch after batch, until nothing does.
    async fn drive(&self, g: Group, key: (SpaceId, u64), patience: Duration, heartbeat: Duration) {
        let mut first = true;
        loop {
            let batch = {
                let mut queues = self.queues.lock();
                let Some(q) = queues.get_mut(&key) else {
                    return;
                };
                // An extra task (beyond MAX_IN_FLIGHT) proposes one entry and ends.
                if q.waiting.is_empty() || (q.running > MAX_IN_FLIGHT && !first) {
                    q.running -= 1;
                    if q.running == 0 {
                        queues.remove(&key);
                    }
                    return;
                }
                let batch = take_batch(&mut q.waiting);
                q.proposing += batch.len();
                batch
            };
            let n = batch.len();
            submit(&g, batch, patience, heartbeat).await;
            if let Some(q) = self.queues.lock().get_mut(&key) {
                q.proposing -= n;
            }
            first = false;
        }
    }
}

/// The next entry's commands from the front of `waiting`: a creation or drop alone, else the
/// data operations up to the next creation or drop (at most [`MAX_ENTRY_COMMANDS`]).
fn take_batch(waiting: &mut Vec<Waiter>) -> Vec<Waiter> {
    let n = if !waiting[0].0.op.is_data() {
        1
    } else {
        waiting
            .iter()
            .take(MAX_ENTRY_COMMANDS)
            .take_while(|(c, _)| c.op.is_data())
            .count()
    };
    waiting.drain(..n).collect()
}

/// Proposes one entry and hands each waiter its outcome.
async fn submit(g: &Group, batch: Vec<Waiter>, patience: Duration, heartbeat: Duration) {
    let (commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let n = waiters.len();
    // Shared by every attempt, the log and the WAL's encoder: the commands are not copied.
    let request = Request(commands.into());
    let started = tokio::time::Instant::now();
    let outcomes: Vec<ProposeOutcome> = loop {
        match g.client_write(request.clone()).await {
            Ok(r) => {
                // On the leader: an entry proposed, to its commit and apply.
                metrics::histogram!("engram_raft_propose_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("engram_raft_propose_commands").record(n as f64);
                let mut responses = r.data.into_iter();
                break (0..n)
                    .map(|_| match responses.next() {
                        Some(r) => ProposeOutcome::Applied(r),
                        None => ProposeOutcome::Failed("the entry answered fewer writes".into()),
                    })
                    .collect();
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                if f.reason == ForwardReason::LeaseExpired && started.elapsed() < patience =>
            {
                // A leader woken from quiescence renews its lease with one heartbeat round
                // before it takes writes: wait for that (at most an election timeout).
                let _ = g.trigger().heartbeat().await;
                tokio::time::sleep(heartbeat / 2 + Duration::from_millis(1)).await;
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                break vec![ProposeOutcome::NotLeader(f.leader_id); n]
            }
            Err(e) => break vec![ProposeOutcome::Failed(e.to_string()); n],
        }
    };
    for (tx, outcome) in waiters.into_iter().zip(outcomes) {
        let _ = tx.send(outcome);
    }
}
