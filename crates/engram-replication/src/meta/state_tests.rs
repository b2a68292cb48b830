//! Tests of `state.rs`.
use super::*;

fn node(name: &str, incarnation: u64, rack: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        http: format!("http://{name}:7432"),
        cluster: format!("{name}:7433"),
        rack: rack.into(),
        capacity: 100,
        state: NodeState::Live,
        incarnation,
    }
}

fn create(id: &str, nonce: u64) -> MetaCommand {
    MetaCommand::CreateSpace {
        id: SpaceId::new(id).unwrap(),
        dimension: 8,
        embedder: "m".into(),
        created_at_us: 5,
        nonce,
    }
}

fn cluster() -> MetaState {
    let mut s = MetaState::default();
    assert_eq!(
        s.apply(&MetaCommand::Init {
            copies: 3,
            vnodes: 16
        }),
        MetaAnswer::Done { epoch: 1 }
    );
    for (i, rack) in ["a", "b", "c", "a"].iter().enumerate() {
        let a = s.apply(&MetaCommand::Join(node(&format!("n{i}"), i as u64, rack)));
        assert_eq!(
            a,
            MetaAnswer::Done {
                epoch: 2 + i as u64
            }
        );
    }
    s
}

#[test]
fn commands_apply_deterministically() {
    let mut s = cluster();
    assert_eq!(s.placement.members().len(), 4);
    // Spaces land on three nodes of distinct racks; the first command creates it.
    let MetaAnswer::Space(r) = s.apply(&create("s1", 9)) else {
        panic!()
    };
    assert_eq!(r.replicas.len(), 3);
    let racks: std::collections::BTreeSet<&str> = r
        .replicas
        .iter()
        .map(|id| s.nodes[id].rack.as_str())
        .collect();
    assert_eq!(racks.len(), 3, "{r:?}");
    assert_eq!(s.apply(&create("s1", 10)), MetaAnswer::Space(r.clone()));
    // A name in use from another data directory is refused; the same one rejoins.
    let before = s.clone();
    assert!(matches!(
        s.apply(&MetaCommand::Join(node("n1", 99, "b"))),
        MetaAnswer::Refused(_)
    ));
    let unmoved = MetaState {
        applied: before.applied,
        ..s.clone()
    };
    assert_eq!(unmoved, before, "a refused command changes nothing");
    assert_eq!(
        s.apply(&MetaCommand::Join(node("n1", 1, "b"))),
        MetaAnswer::Done { epoch: s.epoch }
    );
    let unmoved = MetaState {
        applied: before.applied,
        ..s.clone()
    };
    assert_eq!(unmoved, before, "a rejoin with nothing new changes nothing");
    let mut moved = node("n1", 1, "b");
    moved.http = "http://elsewhere:1".into();
    assert_eq!(
        s.apply(&MetaCommand::Join(moved)),
        MetaAnswer::Done {
            epoch: before.epoch + 1
        }
    );
    // States, drops.
    let id = raft_id("n2");
    assert_eq!(
        s.apply(&MetaCommand::SetState {
            id,
            state: NodeState::Down
        }),
        MetaAnswer::Done {
            epoch: before.epoch + 2
        }
    );
    assert!(matches!(
        s.apply(&MetaCommand::SetState {
            id: 12345,
            state: NodeState::Down
        }),
        MetaAnswer::Refused(_)
    ));
    // A drop naming another creation's nonce leaves the space; its own removes it.
    let nonce = s.spaces[&SpaceId::new("s1").unwrap()].nonce;
    let other = MetaCommand::DropSpace {
        id: SpaceId::new("s1").unwrap(),
        nonce: Some(nonce ^ 1),
    };
    assert_eq!(s.apply(&other), MetaAnswer::NoSpace);
    let drop = MetaCommand::DropSpace {
        id: SpaceId::new("s1").unwrap(),
        nonce: Some(nonce),
    };
    assert!(matches!(s.apply(&drop), MetaAnswer::Done { .. }));
    assert_eq!(s.apply(&drop), MetaAnswer::NoSpace);
    // Created anew under the name: a later creation.
    assert!(r.creation > 0);
    let MetaAnswer::Space(again) = s.apply(&create("s1", 11)) else {
        panic!()
    };
    assert!(again.creation > r.creation, "{again:?} after {r:?}");
    assert_eq!(again.creation, s.applied);
    // Nothing applies before the cluster is initialised, and it is initialised once.
    let mut fresh = MetaState::default();
    assert!(matches!(
        fresh.apply(&MetaCommand::Join(node("x", 1, "a"))),
        MetaAnswer::Refused(_)
    ));
    assert!(matches!(
        s.apply(&MetaCommand::Init {
            copies: 1,
            vnodes: 1
        }),
        MetaAnswer::Refused(_)
    ));
    assert!(matches!(
        MetaState::default().apply(&MetaCommand::Init {
            copies: 0,
            vnodes: 1
        }),
        MetaAnswer::Refused(_)
    ));
}

#[test]
fn encodings_round_trip_and_every_truncation_is_refused() {
    let mut s = cluster();
    for i in 0..10 {
        s.apply(&create(&format!("s{i}"), i));
    }
    let bytes = s.encode();
    assert_eq!(MetaState::decode(&bytes).unwrap(), s);
    for n in 0..bytes.len() {
        assert!(MetaState::decode(&bytes[..n]).is_err(), "{n}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(MetaState::decode(&longer).is_err());
    let cmds = [
        MetaCommand::Init {
            copies: 3,
            vnodes: 150,
        },
        MetaCommand::Join(node("n9", 4, "r")),
        MetaCommand::SetState {
            id: 3,
            state: NodeState::Leaving,
        },
        create("s", 1),
        MetaCommand::DropSpace {
            id: SpaceId::new("s").unwrap(),
            nonce: None,
        },
        MetaCommand::DropSpace {
            id: SpaceId::new("s").unwrap(),
            nonce: Some(7),
        },
    ];
    for c in cmds {
        let b = c.encode();
        assert_eq!(MetaCommand::decode(&b).unwrap(), c);
        for n in 0..b.len() {
            assert!(MetaCommand::decode(&b[..n]).is_err());
        }
    }
    let MetaAnswer::Space(r) = s.apply(&create("s1", 0)) else {
        panic!()
    };
    for a in [
        MetaAnswer::Done { epoch: 7 },
        MetaAnswer::Refused("no".into()),
        MetaAnswer::Space(r),
        MetaAnswer::NoSpace,
    ] {
        assert_eq!(MetaAnswer::decode(&a.encode()).unwrap(), a);
    }
    // A name outside the alphabet, a state code out of range: refused.
    let mut bad = node("n1", 1, "a");
    bad.name = "N 1".into();
    assert!(MetaCommand::decode(&MetaCommand::Join(bad).encode()).is_err());
}

#[test]
fn voters_target_is_odd_and_at_most_five() {
    let t: Vec<usize> = (0..8).map(super::super::target_voters).collect();
    assert_eq!(t, [1, 1, 1, 3, 3, 5, 5, 5]);
}

#[test]
fn new_spaces_pass_over_down_nodes() {
    let mut s = cluster();
    let n1 = raft_id("n1");
    // Spaces placement puts on n1.
    let on_n1: Vec<SpaceId> = (0..200)
        .map(|i| SpaceId::new(format!("s{i}")).unwrap())
        .filter(|id| {
            s.placement
                .replica_set(id.as_str())
                .nodes()
                .iter()
                .any(|n| n.0 == n1)
        })
        .take(5)
        .collect();
    assert_eq!(on_n1.len(), 5);
    for id in &on_n1 {
        let placed = s.place(id);
        assert!(placed.contains(&n1), "all live: the ring's set");
    }
    s.apply(&MetaCommand::SetState {
        id: n1,
        state: NodeState::Down,
    });
    for (i, id) in on_n1.iter().enumerate() {
        let MetaAnswer::Space(r) = s.apply(&create(id.as_str(), 100 + i as u64)) else {
            panic!()
        };
        assert_eq!(r.replicas.len(), 3);
        assert!(!r.replicas.contains(&n1), "{r:?}");
        let distinct: std::collections::BTreeSet<u64> = r.replicas.iter().copied().collect();
        assert_eq!(distinct.len(), 3);
    }
    // With too few live nodes, down ones fill the set.
    for n in ["n0", "n2"] {
        s.apply(&MetaCommand::SetState {
            id: raft_id(n),
            state: NodeState::Down,
        });
    }
    let placed = s.place(&SpaceId::new("late").unwrap());
    assert_eq!(placed.len(), 3);
    assert_eq!(placed[0], raft_id("n3"), "the live node first");
}
