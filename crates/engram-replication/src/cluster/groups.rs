//! A node's space groups as the catalog changes: initialised where this node holds a replica,
//! retired where a space it held was dropped, and the `default` space created once the
//! cluster can hold it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;

use super::ClusterNode;
use crate::meta::{MetaState, NodeState};
use crate::types::NodeAddr;

impl ClusterNode {
    /// Retires the groups of spaces this node held that the catalog no longer has (dropped),
    /// and lets those it holds now start (one dropped and created anew).
    pub(super) async fn retire_dropped(&self, state: &MetaState) {
        let me = self.id();
        let now: std::collections::HashMap<SpaceId, u64> = state
            .spaces
            .iter()
            .filter(|(_, r)| r.replicas.contains(&me))
            .map(|(s, r)| (s.clone(), r.creation))
            .collect();
        for s in now.keys() {
            self.node.unretire(s);
        }
        let gone: Vec<(SpaceId, u64)> = {
            let mut held = self.held.lock();
            let gone = held
                .iter()
                .filter(|(s, _)| !state.spaces.contains_key(*s))
                .map(|(s, c)| (s.clone(), *c))
                .collect();
            *held = now;
            gone
        };
        for (space, creation) in gone {
            self.leaders.lock().remove(&space);
            match self.node.retire_group(&space, creation).await {
                Ok(true) => tracing::info!(%space, "dropped space's group retired"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%space, error = %e, "retiring a dropped space's group failed")
                }
            }
        }
    }

    /// Initialises the group of every space of the catalog that this node holds and has no
    /// raft state for (see the module documentation).
    pub(super) async fn start_space_groups(&self, state: &MetaState) {
        let me = self.id();
        for (space, rec) in &state.spaces {
            if !rec.replicas.contains(&me) || self.node.log.has_state(space) {
                continue;
            }
            let members: BTreeMap<u64, NodeAddr> = rec
                .replicas
                .iter()
                .map(|id| {
                    let name = state
                        .nodes
                        .get(id)
                        .map(|n| n.name.clone())
                        .unwrap_or_default();
                    (
                        *id,
                        NodeAddr {
                            name,
                            address: String::new(),
                        },
                    )
                })
                .collect();
            if rec.replicas[0] == me {
                match self.node.initialize(space, members).await {
                    Ok(()) => tracing::info!(%space, "space group initialised"),
                    Err(e) => tracing::debug!(%space, error = %e, "space group not initialised"),
                }
                continue;
            }
            // The other replicas wait for the primary's group (initialising together, they
            // would split the first vote and wait an election timeout); one still without
            // raft state after that initialises it itself (the primary may be down).
            if !self.initialising.lock().insert(space.clone()) {
                continue;
            }
            let node = self.node.clone();
            let space = space.clone();
            let nonce = rec.nonce;
            let waiting = self.initialising.clone();
            let wait = Duration::from_millis(self.opts.space_config.election_timeout_max * 3);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                // Still the same creation (not dropped, nor created anew with other members).
                let same = node.meta_state().spaces.get(&space).map(|r| r.nonce) == Some(nonce);
                if same && !node.log.has_state(&space) {
                    match node.initialize(&space, members).await {
                        Ok(()) => {
                            tracing::info!(%space, "space group initialised (the primary was silent)")
                        }
                        Err(e) => {
                            tracing::debug!(%space, error = %e, "space group not initialised")
                        }
                    }
                }
                waiting.lock().remove(&space);
            });
        }
    }

    /// Runs [`ClusterNode::create_default_space`] in a task of its own, one at a time.
    pub(super) fn spawn_default_space(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.opts.default_space.is_none() || self.creating_default.swap(true, Ordering::SeqCst) {
            return;
        }
        let c = self.clone();
        tokio::spawn(async move {
            c.create_default_space().await;
            c.creating_default.store(false, Ordering::SeqCst);
        });
    }

    /// On the metadata leader, once the cluster has as many live nodes as a space has
    /// replicas: creates the `default` space (shared/API.md: it always exists), once.
    async fn create_default_space(&self) {
        use openraft::async_runtime::watch::WatchReceiver;
        let Some((dimension, embedder)) = &self.opts.default_space else {
            return;
        };
        let Some(m) = self.node.meta() else { return };
        if m.raft.metrics().borrow_watched().state != openraft::ServerState::Leader {
            return;
        }
        let state = self.state();
        let default = SpaceId::default_space();
        let live = state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Live)
            .count();
        if state.spaces.contains_key(&default) || live < state.placement.config().copies {
            return;
        }
        // One nonce for every attempt: whichever node's creation lands first, it is the same.
        let nonce = engram_cluster::hash::placement_hash(b"the default space").max(1);
        let now = engram_storage::now_us();
        match self
            .create_space(&default, *dimension, embedder, now, nonce)
            .await
        {
            Ok(_) => tracing::info!("the default space was created"),
            Err(e) => tracing::debug!(error = %e, "the default space is not created yet"),
        }
    }
}
