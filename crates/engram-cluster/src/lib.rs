//! Engram's cluster placement: which node holds each memory space, and how that changes.
//!
//! Pure logic, no I/O, no threads, no clock: every decision is a function of a
//! [`PlacementTable`] (plus, for planning, two of them) so that it can be tested exhaustively and
//! simulated. The cluster runtime (membership, forwarding, replication, migration) builds on:
//!
//! - [`PlacementTable`]: the ring of one [`Epoch`]; [`PlacementTable::apply`] a [`Change`]
//!   (join, leave, failure, rack change) to get the next one. Lookups: [`PlacementTable::primary`]
//!   and [`PlacementTable::replica_set`], allocation-free.
//! - [`Route`] ([`PlacementTable::route`]): serve, forward once, catch up, or redirect.
//! - [`plan()`] → [`RebalancePlan`] of [`Move`]s with a [`MovePriority`];
//!   [`MoveScheduler`] hands them out under a concurrency limit and a [`TokenBucket`].
//! - [`sim`]: routing under churn with stale views.
//!
//! # The ring
//!
//! A space is never split. Its position on the ring is [`SpaceKey::of`] its id: XXH3 64-bit
//! (seed 0) of the id's bytes ([`hash`], pinned by the reference implementation's test vectors
//! and versioned: [`HASH_VERSION`], [`PLACEMENT_VERSION`]); `std::hash` is never used. Each node
//! owns `vnodes_per_node` tokens (default 150) times its capacity over [`DEFAULT_CAPACITY`]. A
//! space belongs to the first token at or after its position, clockwise; its replicas are the
//! next distinct physical nodes clockwise. In rack-aware mode the walk takes the first node of
//! each rack it meets until it has all the copies or has used every rack, then the nearest
//! remaining nodes; [`ReplicaSet::racks_shared`] and [`PlacementTable::rack_coverage`] report
//! that degradation.
//!
//! Lookup hashes the id and reads a lookup index over the top bits of the position (about four
//! buckets per token): one load gives the first token of the bucket, and almost always that
//! token is the owner. No allocation; a replica set is an inline array.
//!
//! # Balance: token assignment
//!
//! Random tokens (classic consistent hashing, [`TokenStrategy::Random`]) give each node about
//! `1/sqrt(150)` = 8% standard deviation of load. The default, [`TokenStrategy::Balanced`],
//! places a joining node's tokens deterministically (see `allocate` for the steps): every member
//! above its fair part (total x capacity / total capacity, the newcomer counted in) gives up its
//! excess, each of the newcomer's tokens splitting one arc of one such member. A token inserted in
//! an arc takes part of that arc from that arc's owner only, so **a join moves spaces only to the
//! joining node and a departure only away from the departing node** (its arcs fall to the next
//! tokens), with no exception, and the newcomer takes exactly its share: 1/(N+1) of the spaces,
//! 909 of 10,000 when an 11th node joins. A departed node is remembered ([`Retired`]): when it
//! rejoins with its capacity unchanged it takes back its old tokens, so leave-then-rejoin restores
//! the original placement exactly (and a failed node that comes back finds its spaces where its
//! data is). A join followed by the newcomer's departure restores the ring too.
//!
//! What is balanced is what the coordinator knows. Spaces hash uniformly, so a perfect split of
//! the hash space still leaves the *number of spaces* per node with a sampling deviation of
//! `sqrt((1 - 1/N) / (K/N))`: 3.0% for 10,000 spaces on 10 nodes, whatever the tokens. So the
//! coordinator passes the [`SpaceCatalog`] (the spaces that exist) to each join: the newcomer
//! takes exactly its part of the spaces that exist (spaces are indivisible, so this is the
//! primary goal), and each cut then goes where, within the gap between two spaces, the hash share
//! comes nearest its fair part too. Measured (`engram-bench placement`, 10 nodes, 10,000 spaces,
//! 150 virtual nodes, 500 random clusters, median (p95); standard deviation as % of the mean):
//!
//! | tokens | spaces/node | hash share | +10,000 new spaces | after a leave | copies/node (3) |
//! |---|---|---|---|---|---|
//! | balanced, with catalog (default) | 0.04% (0.30) | 2.1% (3.6) | 1.8% (2.7) | 2.0% (3.4) | 5.4% (7.7) |
//! | balanced, no catalog | 2.9% (4.2) | 0.0% | 2.0% (2.9) | 4.3% (6.1) | 9.4% (11.6) |
//! | random | 7.9% (11.5) | 7.4% (10.7) | 7.6% (11.1) | 7.8% (11.6) | 4.7% (6.9) |
//!
//! Trade-offs of this choice, measured above:
//!
//! - Counting spaces exactly costs hash share: 2.1% instead of 0. Spaces created after the last
//!   join land by share: once 10,000 more exist, the 20,000 spread at 1.8% (2.0% with share-only
//!   tokens). Without a catalog the allocator balances the share exactly and the count keeps its
//!   3% sampling noise.
//! - Placement depends on the order of joins and the catalog at each (not on membership alone):
//!   the coordinator computes it once and distributes the table; any node recomputes it
//!   identically from the same inputs (integer arithmetic, fixed hashes).
//! - Copies per node (primary and replicas, i.e. storage) are less even than primaries: the
//!   replicas of an arc are the owners of the next tokens, and the allocator steers only the
//!   first of them (through "successor claims", which also keep a departure's spaces spread:
//!   2.0% after a leave, about 7% when measured without them). 5.4% with a catalog is near random tokens' 4.7%;
//!   without a catalog it is 9.4%. Replication-aware allocation (as Cassandra's token
//!   allocator does) is the next step if storage balance matters more.
//! - Bounded-load placement (each node capped at (1+ε) of the mean, overflow to the next node)
//!   was not chosen: a join can push a space from one unchanged node to another, which breaks
//!   "moves only involve the changed node".
//!
//! # Epochs, routing, rebalancing
//!
//! Every change is a new epoch. [`route`] describes the forwarding protocol: a node never routes
//! on a table older than the request's, forwards at most once, and a stale sender learns the new
//! epoch from the reply; [`sim`] measures it under churn (no loops, every misrouted sender
//! learns). [`plan()`] lists the moves between two tables: failure recovery is `Critical` and
//! unthrottled; graceful drains and rack repairs are `Normal`, joins `Low`, both through one
//! [`TokenBucket`] (10 MB/s by default) charged each space's bytes; [`MoveScheduler`] hands them
//! out by priority under a concurrency limit and reports progress. Time is always passed in by
//! the caller.

mod allocate;
mod bucket;
mod catalog;
mod error;
pub mod hash;
pub mod limits;
mod node;
mod plan;
mod replica;
mod ring;
pub mod route;
mod scheduler;
pub mod sim;
mod table;

pub use bucket::{TokenBucket, DEFAULT_RATE_BYTES_PER_SEC};
pub use catalog::SpaceCatalog;
pub use error::ClusterError;
pub use hash::{SpaceKey, HASH_VERSION};
pub use node::{NodeId, NodeInfo, DEFAULT_CAPACITY, DEFAULT_RACK};
pub use plan::{plan, Move, MovePriority, Promotion, RebalancePlan, Release};
pub use replica::{ReplicaSet, Role};
pub use route::Route;
pub use scheduler::{MoveId, MoveScheduler, Poll, PriorityProgress, Progress, SchedulerConfig};
pub use table::{
    Change, Departure, Epoch, PlacementConfig, PlacementTable, RackCoverage, Retired,
    TokenStrategy, PLACEMENT_VERSION,
};
