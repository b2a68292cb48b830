//! Property tests of placement: moves only involve the changed node, replicas are distinct,
//! leave-then-rejoin restores the placement, everything is deterministic; plus golden values
//! that pin the placement across platforms and releases.

use std::collections::BTreeSet;
use std::time::Duration;

use engram_cluster::{
    plan, Change, Move, MovePriority, MoveScheduler, NodeId, NodeInfo, PlacementConfig,
    PlacementTable, Poll, Role, SchedulerConfig, SpaceCatalog, SpaceKey, TokenStrategy,
};
use proptest::prelude::*;

/// A random cluster: node ids, racks, capacities, placement settings, spaces.
#[derive(Debug, Clone)]
struct Setup {
    nodes: Vec<NodeInfo>,
    config: PlacementConfig,
    /// Whether joins get the catalog of spaces (else they balance the hash share alone).
    with_catalog: bool,
    spaces: Vec<String>,
}

impl Setup {
    fn catalog(&self) -> SpaceCatalog {
        if self.with_catalog {
            SpaceCatalog::from_spaces(&self.spaces)
        } else {
            SpaceCatalog::new()
        }
    }

    fn table(&self) -> PlacementTable {
        PlacementTable::with_nodes(self.config.clone(), self.nodes.clone(), &self.catalog())
            .expect("a valid cluster")
    }

    /// Keys to probe: the spaces, plus positions spread over the ring.
    fn probes(&self) -> Vec<SpaceKey> {
        self.spaces
            .iter()
            .map(|s| SpaceKey::of(s))
            .chain((0..256u64).map(|i| SpaceKey(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
            .collect()
    }
}

fn node(racks: u8) -> impl Strategy<Value = NodeInfo> {
    (
        any::<u64>(),
        0..racks,
        prop_oneof![3 => Just(100u32), 1 => 50u32..=300],
    )
        .prop_map(|(id, rack, capacity)| {
            NodeInfo::new(NodeId(id))
                .with_rack(format!("r{rack}"))
                .with_capacity(capacity)
        })
}

fn setup(max_nodes: usize) -> impl Strategy<Value = Setup> {
    (1u8..=4)
        .prop_flat_map(move |racks| {
            (
                prop::collection::vec(node(racks), 2..=max_nodes),
                4u32..=40,
                1usize..=4,
                any::<bool>(),
                prop_oneof![3 => Just(TokenStrategy::Balanced), 1 => Just(TokenStrategy::Random)],
                any::<bool>(),
                prop::collection::vec("[a-z0-9]{1,12}", 0..400),
            )
        })
        .prop_map(
            |(nodes, vnodes, copies, rack_aware, strategy, with_catalog, spaces)| {
                let mut seen = BTreeSet::new();
                let nodes = nodes.into_iter().filter(|n| seen.insert(n.id)).collect();
                Setup {
                    nodes,
                    config: PlacementConfig {
                        vnodes_per_node: vnodes,
                        copies,
                        rack_aware,
                        strategy,
                    },
                    with_catalog,
                    spaces,
                }
            },
        )
}

fn spaces_with_sizes(s: &Setup) -> Vec<(&str, u64)> {
    s.spaces
        .iter()
        .map(|n| (n.as_str(), n.len() as u64 * 1000))
        .collect()
}

fn check_moves_involve(moves: &[Move], changed: NodeId) -> Result<(), TestCaseError> {
    for m in moves {
        prop_assert!(
            m.to == changed || m.releases == Some(changed),
            "move {m:?} neither goes to nor replaces {changed}"
        );
        prop_assert!(m.from != m.to);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A join changes primaries only to the joining node, and every copy the plan makes goes to
    /// it.
    #[test]
    fn a_join_moves_only_to_the_joining_node(s in setup(8), newcomer in node(4)) {
        prop_assume!(s.nodes.iter().all(|n| n.id != newcomer.id));
        let before = s.table();
        let after = before.apply(&Change::Join(newcomer.clone()), &s.catalog()).unwrap();
        for k in s.probes() {
            let (a, b) = (before.primary_of_key(k), after.primary_of_key(k));
            if a != b {
                prop_assert_eq!(b, Some(newcomer.id));
            }
            let (ra, rb) = (before.replica_set_of_key(k), after.replica_set_of_key(k));
            let gained: Vec<_> = rb.nodes().iter().filter(|n| !ra.contains(**n)).collect();
            prop_assert!(gained.iter().all(|&&n| n == newcomer.id), "{ra:?} -> {rb:?}");
        }
        let p = plan(&before, &after, spaces_with_sizes(&s));
        check_moves_involve(&p.moves, newcomer.id)?;
        prop_assert!(p.moves.iter().all(|m| m.to == newcomer.id && m.priority != MovePriority::Critical));
        prop_assert!(p.lost.is_empty());
        // A join then the same node's leave gives back the original ring.
        let back = after.apply(&Change::Leave(newcomer.id), &s.catalog()).unwrap();
        prop_assert!(back.same_placement(&before));
    }

    /// A graceful leave or a failure changes primaries only away from the departing node, and
    /// every copy the plan makes replaces one of its copies.
    #[test]
    fn a_departure_moves_only_from_the_departed_node(
        s in setup(8),
        pick in any::<prop::sample::Index>(),
        fail in any::<bool>(),
    ) {
        prop_assume!(s.nodes.len() >= 2);
        let before = s.table();
        let gone = s.nodes[pick.index(s.nodes.len())].id;
        let change = if fail { Change::Fail(gone) } else { Change::Leave(gone) };
        let after = before.apply(&change, &s.catalog()).unwrap();
        for k in s.probes() {
            let (a, b) = (before.primary_of_key(k), after.primary_of_key(k));
            if a != b {
                prop_assert_eq!(a, Some(gone));
            }
        }
        let p = plan(&before, &after, spaces_with_sizes(&s));
        check_moves_involve(&p.moves, gone)?;
        for m in &p.moves {
            prop_assert_eq!(m.releases, Some(gone));
            let want = if fail { MovePriority::Critical } else { MovePriority::Normal };
            prop_assert_eq!(m.priority, want);
            if fail {
                prop_assert!(m.from != gone, "copies come from survivors");
            }
        }
        for pr in &p.promotions {
            prop_assert_eq!(pr.from, gone);
        }
        for r in &p.releases {
            prop_assert_eq!(r.node, gone);
        }
    }

    /// Leave (or fail) then rejoin with the same id and capacity restores the placement.
    #[test]
    fn leave_then_rejoin_restores_the_placement(
        s in setup(8),
        pick in any::<prop::sample::Index>(),
        fail in any::<bool>(),
    ) {
        let before = s.table();
        let gone = s.nodes[pick.index(s.nodes.len())].clone();
        let change = if fail { Change::Fail(gone.id) } else { Change::Leave(gone.id) };
        let left = before.apply(&change, &s.catalog()).unwrap();
        prop_assert!(left.retired().contains_key(&gone.id));
        // The catalog may even have changed meanwhile: the node takes back its own tokens.
        let back = left.apply(&Change::Join(gone), &SpaceCatalog::new()).unwrap();
        prop_assert!(back.same_placement(&before));
        prop_assert_eq!(back.fingerprint(), before.fingerprint());
        prop_assert_eq!(back.epoch().0, before.epoch().0 + 2);
        for k in s.probes() {
            prop_assert_eq!(back.replica_set_of_key(k), before.replica_set_of_key(k));
        }
    }

    /// Copies are on distinct nodes; in rack-aware mode, on distinct racks while there are
    /// racks left, and the set says when it had to share.
    #[test]
    fn replica_sets_are_distinct(s in setup(10)) {
        let t = s.table();
        let racks: BTreeSet<&str> = t.members().values().map(|m| m.rack.as_str()).collect();
        let want = s.config.copies.min(t.members().len());
        for k in s.probes() {
            let set = t.replica_set_of_key(k);
            prop_assert_eq!(set.len(), want);
            let ids: BTreeSet<NodeId> = set.nodes().iter().copied().collect();
            prop_assert_eq!(ids.len(), set.len());
            prop_assert_eq!(set.primary(), t.primary_of_key(k));
            prop_assert_eq!(set.role_of(set.nodes()[0]), Some(Role::Primary));
            if s.config.rack_aware {
                let used: BTreeSet<&str> =
                    set.nodes().iter().map(|n| t.members()[n].rack.as_str()).collect();
                prop_assert_eq!(used.len(), want.min(racks.len()));
                prop_assert_eq!(set.racks_shared(), want > racks.len());
            }
        }
    }

    /// The indexed lookup agrees with a binary search over the tokens everywhere.
    #[test]
    fn indexed_lookup_matches_binary_search(s in setup(10), keys in prop::collection::vec(any::<u64>(), 200)) {
        let t = s.table();
        for k in keys.into_iter().map(SpaceKey).chain(t.tokens().keys().flat_map(|&p| {
            [p.wrapping_sub(1), p, p.wrapping_add(1)].map(SpaceKey)
        })) {
            prop_assert_eq!(t.primary_of_key(k), t.primary_by_search(k));
        }
    }

    /// The same changes give the same tables; every node has its weighted virtual nodes.
    #[test]
    fn placement_is_deterministic(s in setup(8)) {
        let (a, b) = (s.table(), s.table());
        prop_assert!(a.same_placement(&b));
        prop_assert_eq!(a.fingerprint(), b.fingerprint());
        for n in &s.nodes {
            let owned = a.tokens().values().filter(|&&o| o == n.id).count();
            prop_assert_eq!(owned, s.config.vnodes_for(n.capacity));
        }
    }

    /// A rack change never moves a primary (the primary is the first token clockwise, whatever
    /// the racks).
    #[test]
    fn a_rack_change_keeps_primaries(s in setup(8), pick in any::<prop::sample::Index>(), rack in 0u8..5) {
        let before = s.table();
        let n = s.nodes[pick.index(s.nodes.len())].id;
        let after = before.apply(&Change::SetRack(n, format!("r{rack}")), &s.catalog()).unwrap();
        prop_assert!(after.epoch() > before.epoch());
        for k in s.probes() {
            prop_assert_eq!(before.primary_of_key(k), after.primary_of_key(k));
        }
        let p = plan(&before, &after, spaces_with_sizes(&s));
        prop_assert!(p.moves.iter().all(|m| m.role == Role::Replica && m.priority != MovePriority::Critical));
    }

    /// The scheduler starts every critical move before any throttled one, never exceeds its
    /// concurrency, and keeps throttled bytes within burst + rate x time.
    #[test]
    fn the_scheduler_keeps_priorities_and_rate(
        sizes in prop::collection::vec((0u8..3, 1u64..5_000_000), 1..80),
        max_concurrent in 1usize..5,
    ) {
        let moves: Vec<Move> = sizes.iter().enumerate().map(|(i, &(p, bytes))| Move {
            space: format!("s{i}"),
            key: SpaceKey(i as u64),
            from: NodeId(1),
            to: NodeId(2),
            role: Role::Replica,
            priority: [MovePriority::Low, MovePriority::Normal, MovePriority::Critical][p as usize],
            bytes,
            releases: None,
        }).collect();
        let config = SchedulerConfig { max_concurrent, rate_bytes_per_sec: 1_000_000, burst_bytes: 2_000_000, max_attempts: 1 };
        let mut s = MoveScheduler::new(moves.clone(), config, Duration::ZERO).unwrap();
        let mut now = Duration::ZERO;
        let mut running = Vec::new();
        let mut last_priority = MovePriority::Critical;
        let mut throttled = 0u64;
        loop {
            match s.poll(now) {
                Poll::Start(id, m) => {
                    prop_assert!(m.priority <= last_priority, "priority order");
                    last_priority = m.priority;
                    if m.priority.is_throttled() {
                        throttled += m.bytes;
                        let allowed = 2_000_000 + now.as_nanos() as u64 / 1_000 + m.bytes;
                        prop_assert!(throttled <= allowed, "{throttled} bytes by {now:?}");
                    }
                    running.push(id);
                    prop_assert!(running.len() <= max_concurrent);
                }
                Poll::Wait(w) => {
                    prop_assert!(w > Duration::ZERO);
                    now += w;
                }
                Poll::Busy => {
                    let id = running.remove(0);
                    prop_assert!(s.complete(id));
                    now += Duration::from_millis(1);
                }
                Poll::Done => break,
            }
        }
        let p = s.progress();
        prop_assert_eq!(p.done, moves.len());
        prop_assert_eq!(p.bytes_done, moves.iter().map(|m| m.bytes).sum::<u64>());
    }
}

/// Golden values: the placement of a fixed cluster. A change here means spaces move between
/// nodes on upgrade: it needs a new HASH_VERSION or PLACEMENT_VERSION, not a new constant.
#[test]
fn golden_placement() {
    let nodes: Vec<NodeInfo> = (1..=5u64)
        .map(|i| NodeInfo::new(NodeId(i * 1000)).with_rack(format!("rack-{}", i % 3)))
        .collect();
    let spaces: Vec<String> = (0..2000).map(|i| format!("space-{i}")).collect();
    let catalog = SpaceCatalog::from_spaces(&spaces);
    let balanced =
        PlacementTable::with_nodes(PlacementConfig::default(), nodes.clone(), &catalog).unwrap();
    let random = PlacementTable::with_nodes(
        PlacementConfig {
            strategy: TokenStrategy::Random,
            ..PlacementConfig::default()
        },
        nodes,
        &catalog,
    )
    .unwrap();
    let primaries = |t: &PlacementTable| -> Vec<u64> {
        ["default", "space-0", "space-1", "agent-42", "user-7"]
            .iter()
            .map(|s| t.primary(s).unwrap().0)
            .collect()
    };
    let sets = |t: &PlacementTable| -> Vec<u64> {
        t.replica_set("space-0")
            .nodes()
            .iter()
            .map(|n| n.0)
            .collect()
    };
    println!(
        "balanced {:#018x} {:?} {:?}; random {:#018x} {:?} {:?}",
        balanced.fingerprint(),
        primaries(&balanced),
        sets(&balanced),
        random.fingerprint(),
        primaries(&random),
        sets(&random)
    );
    assert_eq!(balanced.fingerprint(), GOLDEN_BALANCED.0);
    assert_eq!(primaries(&balanced), GOLDEN_BALANCED.1);
    assert_eq!(sets(&balanced), GOLDEN_BALANCED.2);
    assert_eq!(random.fingerprint(), GOLDEN_RANDOM.0);
    assert_eq!(primaries(&random), GOLDEN_RANDOM.1);
    assert_eq!(sets(&random), GOLDEN_RANDOM.2);
}

type Golden = (u64, [u64; 5], [u64; 3]);
const GOLDEN_BALANCED: Golden = (
    0xfc46_f9fc_4fcd_b138,
    [4000, 2000, 4000, 3000, 1000],
    [2000, 4000, 3000],
);
const GOLDEN_RANDOM: Golden = (
    0xb3b1_27b1_02f8_fed9,
    [3000, 2000, 1000, 3000, 5000],
    [2000, 1000, 3000],
);

/// Capacity weighting: a node of capacity 200 gets twice the virtual nodes and about twice the
/// spaces of a standard one.
#[test]
fn capacity_weights_virtual_nodes_and_spaces() {
    let spaces: Vec<String> = (0..6000).map(|i| format!("s-{i}")).collect();
    let catalog = SpaceCatalog::from_spaces(&spaces);
    let nodes = [
        NodeInfo::new(NodeId(1)),
        NodeInfo::new(NodeId(2)).with_capacity(200),
        NodeInfo::new(NodeId(3)),
    ];
    let t = PlacementTable::with_nodes(PlacementConfig::default(), nodes, &catalog).unwrap();
    let owned = |id: u64| t.tokens().values().filter(|&&o| o == NodeId(id)).count();
    assert_eq!((owned(1), owned(2), owned(3)), (150, 300, 150));
    let count = |id: u64| {
        spaces
            .iter()
            .filter(|s| t.primary(s) == Some(NodeId(id)))
            .count()
    };
    let (a, b, c) = (count(1), count(2), count(3));
    assert_eq!(a + b + c, 6000);
    assert!((2900..=3100).contains(&b), "{a} {b} {c}");
    assert!(
        (1450..=1550).contains(&a) && (1450..=1550).contains(&c),
        "{a} {b} {c}"
    );
}

/// Errors, not panics, on bad changes.
#[test]
fn bad_changes_are_refused() {
    let t = PlacementTable::with_nodes(
        PlacementConfig::default(),
        [NodeInfo::new(NodeId(1))],
        &SpaceCatalog::new(),
    )
    .unwrap();
    let none = SpaceCatalog::new();
    assert!(t
        .apply(&Change::Join(NodeInfo::new(NodeId(1))), &none)
        .is_err());
    assert!(t.apply(&Change::Leave(NodeId(2)), &none).is_err());
    assert!(t.apply(&Change::Forget(NodeId(1)), &none).is_err());
    assert!(t
        .apply(
            &Change::Join(NodeInfo::new(NodeId(3)).with_capacity(0)),
            &none
        )
        .is_err());
    assert!(t
        .apply(&Change::SetRack(NodeId(1), String::new()), &none)
        .is_err());
    assert!(PlacementTable::new(PlacementConfig {
        copies: 0,
        ..PlacementConfig::default()
    })
    .is_err());
    // The last node may leave: the table is then empty and knows no primary.
    let empty = t.apply(&Change::Fail(NodeId(1)), &none).unwrap();
    assert_eq!(empty.primary("x"), None);
    let forgotten = empty.apply(&Change::Forget(NodeId(1)), &none).unwrap();
    assert!(forgotten.retired().is_empty());
}
