//! Heartbeats only where they are needed.
//!
//! openraft's leader sends every follower a heartbeat each `heartbeat_interval`, busy or not:
//! with 1,000 busy groups of three that was about half the CPU of the run (`docs/cluster.md`).
//! A group's appends already do what a heartbeat does: each one resets the follower's election
//! timer, and their acknowledgements renew the leader's lease. So the node's groups run with
//! openraft's heartbeats off (`enable_heartbeat: false`), and this driver, every half interval,
//! has a group it leads send one (`trigger().heartbeat()`) only when some follower has been
//! sent nothing (no entries, no commit, no heartbeat) for a whole interval. A quiesced group
//! is left alone (`residency.rs`). The longest a follower goes without hearing from a live
//! leader is about one and a half intervals, well inside an election timeout. The driver
//! reads its own registry of resident groups (`ReplicaNode::beats`), not the residency map,
//! whose lock is held while a group starts or stops: a slow start holds no heartbeat up.
//!
//! A follower that is down looks quiet: every group with a replica on it then heartbeats at
//! openraft's rate again (to all its followers: openraft has no heartbeat for one follower)
//! until the follower is back or removed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use crate::node::{Group, ReplicaNode};

impl ReplicaNode {
    /// Starts the driver once (the first group started does it: a task needs the runtime).
    pub(crate) fn start_heartbeats(&self) {
        if self.heartbeats.swap(true, Ordering::AcqRel) {
            return;
        }
        let every = self.heartbeat;
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every / 2);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                let Some(node) = me.upgrade() else { return };
                node.heartbeat_round(every).await;
            }
        });
    }

    /// Has each awake group this node leads that has left a follower without a message for
    /// `every` send a heartbeat round. The rounds are asked for together, each given at most
    /// half an interval, so a group whose core is stuck or stopping delays no other.
    async fn heartbeat_round(&self, every: Duration) {
        let Some(since) = Instant::now().checked_sub(every) else {
            return;
        };
        let due: Vec<Group> = self
            .beats
            .read()
            .values()
            .filter(|(_, c)| !c.quiesced())
            .filter(|(g, c)| {
                let m = g.metrics();
                let m = m.borrow_watched();
                m.state == ServerState::Leader
                    && m.replication.as_ref().is_some_and(|peers| {
                        peers
                            .keys()
                            .any(|id| *id != m.id && c.quiet_since(*id, since))
                    })
            })
            .map(|(g, _)| g.clone())
            .collect();
        let asks = due.into_iter().map(|g| async move {
            let _ = tokio::time::timeout(every / 2, g.trigger().heartbeat()).await;
        });
        futures_util::future::join_all(asks).await;
    }
}
