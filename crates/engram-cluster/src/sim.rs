//! A simulation of routing under churn with stale views, without a network: nodes learn each new
//! epoch after a random gossip delay, clients keep the epoch of their last reply, and every
//! request follows the protocol of [`crate::route`]. It counts what the protocol promises:
//! misrouted requests are corrected by one forward (or, rarely, one redirect), the stale sender
//! learns the new epoch, and no request visits a node twice or goes round forever.
//!
//! Model: time is counted in requests. A departed node (left or failed) is unreachable; a sender
//! that finds its target unreachable sends to a random live node instead. A node that forwards to
//! an unreachable owner catches up to the newest placement and routes again. Deterministic for a
//! seed.

use std::collections::BTreeMap;

use crate::catalog::SpaceCatalog;
use crate::error::ClusterError;
use crate::hash::SpaceKey;
use crate::node::{NodeId, NodeInfo};
use crate::route::Route;
use crate::table::{Change, Epoch, PlacementConfig, PlacementTable};

/// Attempts (sends by the client) after which a request counts as looping.
pub const MAX_ATTEMPTS: u32 = 8;

/// Parameters of a simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Nodes at the start.
    pub nodes: usize,
    /// Spaces (requests pick one uniformly).
    pub spaces: usize,
    /// Requests in the run.
    pub requests: u64,
    /// Membership changes, evenly spread, in turn: a new node joins, a node leaves gracefully, a
    /// node fails, a departed node rejoins (never fewer than 3 members).
    pub changes: usize,
    /// Clients, each with its own cached epoch.
    pub clients: usize,
    /// A node learns a new epoch after a delay uniform in `0..=max_gossip_lag` requests.
    pub max_gossip_lag: u64,
    /// Placement settings.
    pub placement: PlacementConfig,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 10,
            spaces: 10_000,
            requests: 1_000_000,
            changes: 20,
            clients: 64,
            max_gossip_lag: 5_000,
            placement: PlacementConfig::default(),
            seed: 1,
        }
    }
}

/// What a simulation observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Requests served.
    pub requests: u64,
    /// Epochs created by churn.
    pub changes: u64,
    /// Requests the first contacted node did not serve (it forwarded, redirected, or was
    /// unreachable).
    pub misrouted: u64,
    /// Misrouted requests served after exactly one forward and no redirect.
    pub corrected_by_one_forward: u64,
    /// Requests that needed a redirect (the sender sent again).
    pub redirected: u64,
    /// Requests whose first target had departed.
    pub unreachable: u64,
    /// Times a node caught up to a newer epoch because a request or a dead owner told it to.
    pub catch_ups: u64,
    /// Misrouted requests after which the sender's epoch was at least the serving node's.
    pub senders_learned: u64,
    /// Most forwards on one request.
    pub max_forwards: u32,
    /// Most client sends for one request.
    pub max_attempts: u32,
    /// Requests that visited a node twice on one path or needed more than [`MAX_ATTEMPTS`]
    /// sends.
    pub loops: u64,
    /// Requests served by a node that is primary in its own table but not in the newest one
    /// (the window a handover protocol must cover).
    pub served_by_stale_primary: u64,
}

pub use engram_core::rng::SplitMix64;

struct NodeState {
    view: u64,
    /// (time, epoch) the node learns by gossip.
    pending: Vec<(u64, u64)>,
}

struct World {
    history: Vec<PlacementTable>,
    nodes: BTreeMap<NodeId, NodeState>,
    live: Vec<NodeId>,
}

impl World {
    fn latest(&self) -> u64 {
        self.history.len() as u64 - 1
    }

    fn table(&self, epoch: u64) -> &PlacementTable {
        &self.history[epoch as usize]
    }

    fn is_live(&self, node: NodeId) -> bool {
        self.table(self.latest()).is_member(node)
    }

    /// The node's view at time `now`, after the gossip it has received by then.
    fn view(&mut self, node: NodeId, now: u64) -> u64 {
        let state = self.nodes.get_mut(&node).expect("a live node has a state");
        state.pending.retain(|&(at, e)| {
            if at <= now {
                state.view = state.view.max(e);
                false
            } else {
                true
            }
        });
        state.view
    }

    fn catch_up(&mut self, node: NodeId, epoch: u64) {
        let state = self.nodes.get_mut(&node).expect("a live node has a state");
        state.view = state.view.max(epoch);
    }
}

fn churn(
    world: &mut World,
    k: usize,
    now: u64,
    rng: &mut SplitMix64,
    cfg: &SimConfig,
    catalog: &SpaceCatalog,
) -> Result<(), ClusterError> {
    let latest = world.table(world.latest()).clone();
    let members: Vec<NodeId> = latest.members().keys().copied().collect();
    let remembered: Vec<NodeId> = latest.retired().keys().copied().collect();
    let change = match k % 4 {
        0 => Change::Join(NodeInfo::new(NodeId(rng.next_u64()))),
        1 | 2 if members.len() > 3 => {
            let id = members[rng.below(members.len() as u64) as usize];
            if k % 4 == 1 {
                Change::Leave(id)
            } else {
                Change::Fail(id)
            }
        }
        _ if !remembered.is_empty() => {
            let id = remembered[rng.below(remembered.len() as u64) as usize];
            Change::Join(latest.retired()[&id].info.clone())
        }
        _ => Change::Join(NodeInfo::new(NodeId(rng.next_u64()))),
    };
    let next = latest.apply(&change, catalog)?;
    let epoch = next.epoch().0;
    world.history.push(next);
    debug_assert_eq!(world.latest(), epoch);
    let changed = change.node();
    if let Change::Join(info) = &change {
        world.nodes.insert(
            info.id,
            NodeState {
                view: epoch,
                pending: Vec::new(),
            },
        );
    }
    world.live = world.table(epoch).members().keys().copied().collect();
    for id in world.live.clone() {
        if id == changed {
            continue;
        }
        let at = now + rng.below(cfg.max_gossip_lag + 1);
        if let Some(state) = world.nodes.get_mut(&id) {
            state.pending.push((at, epoch));
        }
    }
    Ok(())
}

/// Runs the simulation.
pub fn run(cfg: &SimConfig) -> Result<SimReport, ClusterError> {
    if cfg.nodes == 0 || cfg.clients == 0 || cfg.spaces == 0 {
        return Err(ClusterError::InvalidConfig(
            "a simulation needs nodes, clients and spaces".into(),
        ));
    }
    let mut rng = SplitMix64::new(cfg.seed);
    let names: Vec<String> = (0..cfg.spaces).map(|i| format!("space-{i}")).collect();
    let keys: Vec<SpaceKey> = names.iter().map(|s| SpaceKey::of(s)).collect();
    let catalog = SpaceCatalog::from_keys(keys.iter().copied());

    let mut history = vec![PlacementTable::new(cfg.placement.clone())?];
    for _ in 0..cfg.nodes {
        let last = history.last().expect("history starts with the empty table");
        let next = last.apply(
            &Change::Join(NodeInfo::new(NodeId(rng.next_u64()))),
            &catalog,
        )?;
        history.push(next);
    }
    let start = history.len() as u64 - 1;
    let live: Vec<NodeId> = history[start as usize].members().keys().copied().collect();
    let nodes = live
        .iter()
        .map(|&id| {
            (
                id,
                NodeState {
                    view: start,
                    pending: Vec::new(),
                },
            )
        })
        .collect();
    let mut world = World {
        history,
        nodes,
        live,
    };
    let mut clients = vec![start; cfg.clients];
    let mut report = SimReport::default();
    let mut next_change = 0usize;

    for now in 0..cfg.requests {
        let due = (next_change as u64 + 1) * cfg.requests / (cfg.changes as u64 + 1);
        if next_change < cfg.changes && now >= due {
            churn(&mut world, next_change, now, &mut rng, cfg, &catalog)?;
            next_change += 1;
            report.changes += 1;
        }
        let c = rng.below(cfg.clients as u64) as usize;
        let key = keys[rng.below(cfg.spaces as u64) as usize];

        let mut misrouted = false;
        let mut forwards = 0u32;
        let mut redirected = false;
        let mut looped = false;
        let mut attempts = 0u32;
        let served_by = 'request: loop {
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                looped = true;
                break 'request None;
            }
            let sender_epoch = clients[c];
            let mut target = world
                .table(sender_epoch)
                .primary_of_key(key)
                .expect("clients hold a non-empty placement");
            if !world.is_live(target) {
                if attempts == 1 {
                    report.unreachable += 1;
                }
                misrouted = true;
                target = world.live[rng.below(world.live.len() as u64) as usize];
            }
            let mut path = vec![target];
            // The first node: serve, forward once, or catch up to the sender first.
            let first = target;
            let (owner, stamp) = loop {
                let view = world.view(first, now);
                match world
                    .table(view)
                    .route_key(first, key, Epoch(sender_epoch), false)
                {
                    Route::Local => break 'request Some(first),
                    Route::Stale(e) => {
                        world.catch_up(first, e.0.min(world.latest()));
                        report.catch_ups += 1;
                    }
                    Route::Forward(owner) if world.is_live(owner) => break (owner, view),
                    Route::Forward(_) => {
                        // The owner in this node's table is gone: its table is stale.
                        let latest = world.latest();
                        world.catch_up(first, latest);
                        report.catch_ups += 1;
                    }
                    Route::Redirect { .. } => unreachable!("a first hop is never redirected"),
                }
            };
            misrouted = true;
            forwards += 1;
            if path.contains(&owner) {
                looped = true;
            }
            path.push(owner);
            // The forwarded request: serve, or redirect the sender; never forward again.
            loop {
                let view = world.view(owner, now);
                match world.table(view).route_key(owner, key, Epoch(stamp), true) {
                    Route::Local => {
                        // The reply passes through the forwarder, which learns the epoch too.
                        world.catch_up(first, view);
                        break 'request Some(owner);
                    }
                    Route::Stale(e) => {
                        world.catch_up(owner, e.0.min(world.latest()));
                        report.catch_ups += 1;
                    }
                    Route::Redirect { epoch, .. } => {
                        redirected = true;
                        clients[c] = clients[c].max(epoch.0);
                        continue 'request;
                    }
                    Route::Forward(_) => {
                        looped = true;
                        break 'request None;
                    }
                }
            }
        };
        report.requests += 1;
        report.max_forwards = report.max_forwards.max(forwards);
        report.max_attempts = report.max_attempts.max(attempts);
        if redirected {
            report.redirected += 1;
        }
        if looped {
            report.loops += 1;
        }
        let Some(server) = served_by else {
            continue;
        };
        let server_view = world.view(server, now);
        clients[c] = clients[c].max(server_view);
        if misrouted {
            report.misrouted += 1;
            if forwards == 1 && !redirected {
                report.corrected_by_one_forward += 1;
            }
            if clients[c] >= server_view {
                report.senders_learned += 1;
            }
        }
        if world.table(world.latest()).primary_of_key(key) != Some(server) {
            report.served_by_stale_primary += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_loops_and_senders_learn() {
        let cfg = SimConfig {
            nodes: 5,
            spaces: 500,
            requests: 20_000,
            changes: 8,
            clients: 8,
            max_gossip_lag: 400,
            placement: PlacementConfig {
                vnodes_per_node: 16,
                ..PlacementConfig::default()
            },
            seed: 7,
        };
        let r = run(&cfg).unwrap();
        assert_eq!(r.requests, 20_000);
        assert_eq!(r.changes, 8);
        assert_eq!(r.loops, 0);
        assert!(r.misrouted > 0, "churn misroutes some requests: {r:?}");
        assert_eq!(r.senders_learned, r.misrouted);
        assert!(r.max_forwards <= r.max_attempts);
        assert!(r.max_attempts <= MAX_ATTEMPTS);
        // Deterministic.
        assert_eq!(run(&cfg).unwrap(), r);
    }
}
