//! The rebalance planner: which copies must move between two placements, and how urgently.

use std::collections::BTreeSet;

use crate::hash::SpaceKey;
use crate::node::NodeId;
use crate::replica::{ReplicaSet, Role};
use crate::table::{Departure, Epoch, PlacementTable};

/// How urgent a move is. Ordered: `Critical > Normal > Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MovePriority {
    /// Optimisation: the space is fully replicated where it is; the move only spreads load (a
    /// node joined). Rate-limited.
    Low,
    /// The layout must change but no copy is lost yet: a node is leaving gracefully (it keeps
    /// serving until drained) or copies share a rack that placement can now separate.
    /// Rate-limited, ahead of `Low`.
    Normal,
    /// Failure recovery: the space is below its copy count, or lost its primary. Unthrottled.
    Critical,
}

impl MovePriority {
    /// Every priority, most urgent first.
    pub const ALL: [MovePriority; 3] = [
        MovePriority::Critical,
        MovePriority::Normal,
        MovePriority::Low,
    ];

    /// True when moves of this priority go through the rate limiter.
    pub fn is_throttled(self) -> bool {
        self != MovePriority::Critical
    }
}

/// One copy of a space to make: copy the space from `from` to `to`; when done, `to` takes
/// `role` and `releases` (if any) drops its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The space's id.
    pub space: String,
    /// Its ring position.
    pub key: SpaceKey,
    /// Where the data is copied from: the old primary if it is still reachable, else the first
    /// surviving copy.
    pub from: NodeId,
    /// The node that receives the copy.
    pub to: NodeId,
    /// The role `to` takes in the new placement.
    pub role: Role,
    /// How urgent it is.
    pub priority: MovePriority,
    /// The space's size, which is what the rate limiter charges.
    pub bytes: u64,
    /// The node whose copy this one replaces: it drops its copy once the move is done.
    pub releases: Option<NodeId>,
}

impl Move {
    /// True when `node` sends, receives or releases a copy in this move.
    pub fn involves(&self, node: NodeId) -> bool {
        self.from == node || self.to == node || self.releases == Some(node)
    }
}

/// A copy that becomes the primary without moving data (it already holds the space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The space's id.
    pub space: String,
    /// Its ring position.
    pub key: SpaceKey,
    /// The old primary.
    pub from: NodeId,
    /// The new primary.
    pub to: NodeId,
    /// `Critical` when the old primary failed (the space has no primary until this is done).
    pub priority: MovePriority,
}

/// A copy dropped with no replacement (the cluster became smaller than the copy count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The space's id.
    pub space: String,
    /// The node that drops its copy.
    pub node: NodeId,
}

/// Everything that must happen to go from one placement to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebalancePlan {
    /// The placement moved from.
    pub from_epoch: Epoch,
    /// The placement moved to.
    pub to_epoch: Epoch,
    /// Copies to make, most urgent first (then by ring position).
    pub moves: Vec<Move>,
    /// Primary handovers to a node that already holds a copy.
    pub promotions: Vec<Promotion>,
    /// Copies dropped with no replacement.
    pub releases: Vec<Release>,
    /// Spaces all of whose copies were on failed nodes: nothing left to copy from.
    pub lost: Vec<String>,
}

impl RebalancePlan {
    /// Number of moves of `priority`.
    pub fn count(&self, priority: MovePriority) -> usize {
        self.moves.iter().filter(|m| m.priority == priority).count()
    }

    /// Bytes to copy at `priority`.
    pub fn bytes(&self, priority: MovePriority) -> u64 {
        self.moves
            .iter()
            .filter(|m| m.priority == priority)
            .map(|m| m.bytes)
            .sum()
    }

    /// Spaces whose primary changes (by a move or a promotion).
    pub fn primary_changes(&self) -> usize {
        let moved: BTreeSet<&str> = self
            .moves
            .iter()
            .filter(|m| m.role == Role::Primary)
            .map(|m| m.space.as_str())
            .chain(self.promotions.iter().map(|p| p.space.as_str()))
            .collect();
        moved.len()
    }
}

/// Whether `node`'s copies are gone in `new`: it failed, or was forgotten.
fn is_lost(new: &PlacementTable, node: NodeId) -> bool {
    if new.is_member(node) {
        return false;
    }
    !matches!(
        new.retired().get(&node).map(|r| r.departure),
        Some(Departure::Left)
    )
}

/// True when two copies of `set` share a rack under `new`'s racks while `new` has enough racks to
/// keep them apart.
fn breaks_rack_policy(new: &PlacementTable, set: &ReplicaSet) -> bool {
    if !new.config().rack_aware || !new.rack_coverage().is_complete() {
        return false;
    }
    let racks: Vec<&str> = set
        .nodes()
        .iter()
        .filter_map(|id| new.members().get(id).map(|m| m.rack.as_str()))
        .collect();
    let distinct: BTreeSet<&str> = racks.iter().copied().collect();
    distinct.len() < racks.len()
}

/// The plan from `old` to `new` for `spaces` (id and size in bytes). A space whose copies are the
/// same in both needs nothing. Each copy a node gains pairs with a copy another node loses, in
/// order; priorities follow [`MovePriority`].
pub fn plan<'a>(
    old: &PlacementTable,
    new: &PlacementTable,
    spaces: impl IntoIterator<Item = (&'a str, u64)>,
) -> RebalancePlan {
    let mut out = RebalancePlan {
        from_epoch: old.epoch(),
        to_epoch: new.epoch(),
        ..RebalancePlan::default()
    };
    for (space, bytes) in spaces {
        let key = SpaceKey::of(space);
        let before = old.replica_set_of_key(key);
        let after = new.replica_set_of_key(key);
        if before.nodes() == after.nodes() {
            continue;
        }
        let lost_copy = before.nodes().iter().any(|&n| is_lost(new, n));
        let Some(source) = before.nodes().iter().copied().find(|&n| !is_lost(new, n)) else {
            if !before.is_empty() {
                out.lost.push(space.to_string());
            }
            continue;
        };
        let gains: Vec<NodeId> = after
            .nodes()
            .iter()
            .copied()
            .filter(|&n| !before.contains(n))
            .collect();
        let losses: Vec<NodeId> = before
            .nodes()
            .iter()
            .copied()
            .filter(|&n| !after.contains(n))
            .collect();
        let priority = if lost_copy {
            MovePriority::Critical
        } else if losses.iter().any(|&n| !new.is_member(n)) || breaks_rack_policy(new, &before) {
            MovePriority::Normal
        } else {
            MovePriority::Low
        };
        for (i, &to) in gains.iter().enumerate() {
            out.moves.push(Move {
                space: space.to_string(),
                key,
                from: source,
                to,
                role: if after.primary() == Some(to) {
                    Role::Primary
                } else {
                    Role::Replica
                },
                priority,
                bytes,
                releases: losses.get(i).copied(),
            });
        }
        for &node in losses.iter().skip(gains.len()) {
            out.releases.push(Release {
                space: space.to_string(),
                node,
            });
        }
        if let (Some(from), Some(to)) = (before.primary(), after.primary()) {
            if from != to && before.contains(to) {
                out.promotions.push(Promotion {
                    space: space.to_string(),
                    key,
                    from,
                    to,
                    priority: if is_lost(new, from) {
                        MovePriority::Critical
                    } else {
                        priority
                    },
                });
            }
        }
    }
    out.moves
        .sort_by(|a, b| b.priority.cmp(&a.priority).then(a.key.cmp(&b.key)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, NodeInfo, PlacementConfig, SpaceCatalog};

    #[test]
    fn failures_are_critical_and_lost_spaces_are_reported() {
        let config = PlacementConfig {
            copies: 2,
            vnodes_per_node: 16,
            ..PlacementConfig::default()
        };
        let names: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
        let catalog = SpaceCatalog::from_spaces(&names);
        let spaces = || names.iter().map(|s| (s.as_str(), 1000u64));
        let t0 =
            PlacementTable::with_nodes(config, (1..=4).map(|i| NodeInfo::new(NodeId(i))), &catalog)
                .unwrap();
        let t1 = t0.apply(&Change::Fail(NodeId(1)), &catalog).unwrap();
        let t2 = t1.apply(&Change::Fail(NodeId(2)), &catalog).unwrap();

        // One failure: every copy it held is remade, critically, from the survivor.
        let p = plan(&t0, &t1, spaces());
        assert!(p.lost.is_empty());
        assert!(!p.moves.is_empty());
        for m in &p.moves {
            assert_eq!(m.priority, MovePriority::Critical);
            assert_eq!(m.releases, Some(NodeId(1)));
            assert_ne!(m.from, NodeId(1));
            assert_eq!(m.bytes, 1000);
        }
        assert_eq!(p.bytes(MovePriority::Critical), 1000 * p.moves.len() as u64);
        assert!(p
            .promotions
            .iter()
            .all(|pr| pr.priority == MovePriority::Critical));

        // Two failures at once (epoch 4 to 6): spaces whose two copies were on nodes 1 and 2
        // have nothing left to copy from.
        let p = plan(&t0, &t2, spaces());
        let both: Vec<&String> = names
            .iter()
            .filter(|s| {
                let set = t0.replica_set(s);
                set.contains(NodeId(1)) && set.contains(NodeId(2))
            })
            .collect();
        assert!(!both.is_empty());
        assert_eq!(p.lost.len(), both.len());
        assert_eq!((p.from_epoch, p.to_epoch), (t0.epoch(), t2.epoch()));

        // The same table twice: nothing to do.
        let p = plan(&t0, &t0, spaces());
        assert!(p.moves.is_empty() && p.promotions.is_empty() && p.lost.is_empty());
    }
}
