//! Routing a request with epochs: serve it, forward it once, or catch up first.
//!
//! Every request carries the epoch of the placement its sender used (a client with no view sends
//! [`Epoch(0)`](Epoch)). The node that receives it decides with [`PlacementTable::route`]:
//!
//! - the request is newer than the node's table: [`Route::Stale`]; the node fetches that epoch
//!   (from the sender, which has it) and routes again. A node never routes on a table older than
//!   the request's, so an older view can never send a request back where a newer one sent it;
//! - the node is the space's primary: [`Route::Local`];
//! - otherwise [`Route::Forward`]: the node forwards it, once, stamped with its own epoch; the
//!   reply carries the serving node's epoch, so the stale sender learns the new placement.
//!
//! A forwarded request ([`PlacementTable::route_forwarded`]) is never forwarded again: if its
//! receiver (after catching up to the stamped epoch if it was behind) is not the primary, its
//! table is newer than the forwarder's and it answers [`Route::Redirect`] with the owner and its
//! epoch; the original sender adopts that epoch and sends again. Each redirect raises the
//! sender's epoch strictly, so a request is sent at most once per epoch it crosses and visits
//! no node twice on one path: there are no loops. The simulation in [`crate::sim`] measures it.

use crate::hash::SpaceKey;
use crate::node::NodeId;
use crate::table::{Epoch, PlacementTable};

/// What a node does with a request it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This node is the primary: serve it.
    Local,
    /// Forward it once to this node, stamped with this table's epoch.
    Forward(NodeId),
    /// The request is stamped with a newer epoch than this table's: catch up to (at least) this
    /// epoch, then route again.
    Stale(Epoch),
    /// A forwarded request reached a node whose newer table names another primary: reply to the
    /// sender with the owner and the epoch to adopt; never forward a second time.
    Redirect {
        /// The primary under `epoch`.
        owner: NodeId,
        /// The epoch the sender must adopt.
        epoch: Epoch,
    },
}

impl PlacementTable {
    /// The route of a request for `space` sent to node `me` by a client or peer whose view is
    /// `epoch`.
    #[inline]
    pub fn route(&self, me: NodeId, space: &str, epoch: Epoch) -> Route {
        self.route_key(me, SpaceKey::of(space), epoch, false)
    }

    /// The route of a request for `space` that another node forwarded to `me`, stamped with the
    /// forwarder's `epoch`.
    #[inline]
    pub fn route_forwarded(&self, me: NodeId, space: &str, epoch: Epoch) -> Route {
        self.route_key(me, SpaceKey::of(space), epoch, true)
    }

    /// [`PlacementTable::route`] or [`PlacementTable::route_forwarded`] for a space key.
    pub fn route_key(&self, me: NodeId, key: SpaceKey, epoch: Epoch, forwarded: bool) -> Route {
        if epoch > self.epoch() {
            return Route::Stale(epoch);
        }
        let Some(owner) = self.primary_of_key(key) else {
            // An empty table knows no owner: the node must learn a placement first.
            return Route::Stale(Epoch(self.epoch().0 + 1));
        };
        if owner == me {
            Route::Local
        } else if forwarded {
            Route::Redirect {
                owner,
                epoch: self.epoch(),
            }
        } else {
            Route::Forward(owner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, NodeInfo, PlacementConfig, SpaceCatalog};

    #[test]
    fn routes_by_epoch() {
        let none = SpaceCatalog::new();
        let t1 = PlacementTable::with_nodes(
            PlacementConfig::default(),
            [1, 2, 3].map(|i| NodeInfo::new(NodeId(i))),
            &none,
        )
        .unwrap();
        let t2 = t1
            .apply(&Change::Join(NodeInfo::new(NodeId(4))), &none)
            .unwrap();
        // A space that moved to node 4.
        let space = (0..)
            .map(|i| format!("s{i}"))
            .find(|s| t2.primary(s) == Some(NodeId(4)))
            .unwrap();
        let old = t1.primary(&space).unwrap();
        // The old owner, up to date, forwards once to node 4.
        assert_eq!(t2.route(old, &space, t1.epoch()), Route::Forward(NodeId(4)));
        assert_eq!(
            t2.route_forwarded(NodeId(4), &space, t2.epoch()),
            Route::Local
        );
        // A node behind the request catches up first.
        assert_eq!(t1.route(old, &space, t2.epoch()), Route::Stale(t2.epoch()));
        // A forwarded request that reaches a non-owner is redirected, not forwarded again.
        assert_eq!(
            t2.route_forwarded(old, &space, t1.epoch()),
            Route::Redirect {
                owner: NodeId(4),
                epoch: t2.epoch()
            }
        );
        let empty = PlacementTable::new(PlacementConfig::default()).unwrap();
        assert_eq!(
            empty.route(NodeId(1), &space, Epoch(0)),
            Route::Stale(Epoch(1))
        );
    }
}
