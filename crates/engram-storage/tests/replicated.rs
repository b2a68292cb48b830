//! Replicated spaces (a raft group's state machine): apply by log index, `raft.state` after
//! each flush, snapshots as files, atomic installs.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::{memory, mid, sid, test_options};
use engram_storage::requests::Answer;
use engram_storage::{
    ApplyOutcome, Command, Disk, FaultDisk, LogPos, Op, RaftApplied, RaftMembership, RaftNode,
    Store, StoreOptions,
};

const DIM: usize = 8;

fn opts() -> StoreOptions {
    StoreOptions {
        background_compaction: false,
        ..test_options()
    }
}

fn at(index: u64) -> RaftApplied {
    RaftApplied {
        applied: Some(LogPos { term: 1, index }),
        membership_at: Some(LogPos { term: 1, index: 1 }),
        membership: RaftMembership {
            configs: vec![vec![1]],
            nodes: vec![RaftNode {
                id: 1,
                name: "n1".into(),
                address: "127.0.0.1:1".into(),
            }],
        },
    }
}

fn create() -> Op {
    Op::SpaceCreate {
        dimension: DIM as u32,
        created_at_us: 1,
        embedder: String::new(),
    }
}

/// Applies `ops` from index 2 on (index 1 being the membership).
fn apply_all(store: &Store, space: &str, ops: Vec<Op>) -> u64 {
    let s = sid(space);
    store
        .apply_replicated(
            &s,
            1,
            None,
            &RaftApplied {
                applied: Some(LogPos { term: 1, index: 1 }),
                ..at(1)
            },
        )
        .unwrap();
    let mut index = 1;
    for op in ops {
        index += 1;
        store
            .apply_replicated(&s, index, Some(op), &at(index))
            .unwrap();
    }
    index
}

fn ids(store: &Store, space: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    store
        .for_each(&sid(space), |m| {
            out.insert(m.id.as_str().to_string());
        })
        .unwrap();
    out
}

#[test]
fn apply_is_idempotent_by_index_and_raft_state_follows_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("r");
    {
        let store = Store::open_dir(dir.path(), opts()).unwrap();
        let last = apply_all(
            &store,
            "r",
            vec![
                create(),
                Op::Remember(memory("a", DIM)),
                Op::Remember(memory("b", DIM)),
            ],
        );
        assert_eq!(last, 4);
        assert!(store.space_meta(&s).unwrap().replicated);
        store.compact().unwrap();
        // Applying an index the segments hold again changes nothing.
        assert!(!store
            .apply_replicated(&s, 3, Some(Op::Forget(mid("a"))), &at(4))
            .unwrap());
        assert_eq!(ids(&store, "r"), ["a", "b"].map(String::from).into());
        // A blank entry advances what is applied, and a flush writes it though no memory
        // changed.
        store.apply_replicated(&s, 5, None, &at(5)).unwrap();
        store.compact().unwrap();
        // Applied, not flushed: a restart forgets it (the group re-applies it from its log).
        store
            .apply_replicated(&s, 6, Some(Op::Forget(mid("a"))), &at(6))
            .unwrap();
        assert_eq!(ids(&store, "r"), ["b"].map(String::from).into());
        assert_eq!(store.replicated_state(&s).unwrap().unwrap(), at(6));
    }
    let store = Store::open_dir(dir.path(), opts()).unwrap();
    assert_eq!(store.replicated_state(&s).unwrap().unwrap(), at(5));
    assert_eq!(ids(&store, "r"), ["a", "b"].map(String::from).into());
    // Re-applied after the restart, as the group does.
    store
        .apply_replicated(&s, 6, Some(Op::Forget(mid("a"))), &at(6))
        .unwrap();
    assert_eq!(ids(&store, "r"), ["b"].map(String::from).into());
    // Plain writes and raft records never meet: a command that is a raft record is refused.
    assert!(store
        .apply_replicated(&s, 7, Some(Op::RaftTruncate(None)), &at(7))
        .is_err());
    // Nor is the metadata group's command ever a space's.
    assert!(store
        .apply_replicated(&s, 7, Some(Op::Meta(b"x".to_vec())), &at(7))
        .is_err());
    assert_eq!(ids(&store, "r"), ["b"].map(String::from).into());
}

#[test]
fn a_group_without_a_space_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("g");
    {
        let store = Store::open_dir(dir.path(), opts()).unwrap();
        store.save_group_state(&s, &at(3)).unwrap();
        assert!(!store.space_exists(&s).unwrap());
    }
    let store = Store::open_dir(dir.path(), opts()).unwrap();
    assert_eq!(store.replicated_state(&s).unwrap().unwrap(), at(3));
    assert!(!store.space_exists(&s).unwrap());
    // Its space is created later, in the same directory.
    store
        .apply_replicated(&s, 4, Some(create()), &at(4))
        .unwrap();
    store
        .apply_replicated(&s, 5, Some(Op::Remember(memory("x", DIM))), &at(5))
        .unwrap();
    store.compact().unwrap();
    drop(store);
    let store = Store::open_dir(dir.path(), opts()).unwrap();
    assert_eq!(store.replicated_state(&s).unwrap().unwrap(), at(5));
    assert_eq!(ids(&store, "g"), ["x"].map(String::from).into());
}

#[test]
fn a_snapshot_installs_on_another_store_and_replaces_its_state() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let s = sid("r");
    let a = Store::open_dir(a_dir.path(), opts()).unwrap();
    let mut ops = vec![create()];
    ops.extend((0..50).map(|i| Op::Remember(memory(&format!("m{i}"), DIM))));
    let last = apply_all(&a, "r", ops);
    a.compact().unwrap();
    // More after the first flush: the snapshot flushes them too.
    a.apply_replicated(&s, last + 1, Some(Op::Forget(mid("m0"))), &at(last + 1))
        .unwrap();
    let state = a
        .snapshot_replicated(&s, &snap.path().join("s"), &RaftApplied::default())
        .unwrap();
    assert_eq!(state, at(last + 1));
    let want = ids(&a, "r");
    assert_eq!(want.len(), 49);

    let b = Store::open_dir(b_dir.path(), opts()).unwrap();
    apply_all(&b, "r", vec![create(), Op::Remember(memory("old", DIM))]);
    b.compact().unwrap();
    b.apply_replicated(&s, 4, Some(Op::Remember(memory("older", DIM))), &at(4))
        .unwrap();
    let installed = b.install_replicated(&s, &snap.path().join("s")).unwrap();
    assert_eq!(installed, at(last + 1));
    assert_eq!(ids(&b, "r"), want);
    assert_eq!(b.replicated_state(&s).unwrap().unwrap(), at(last + 1));
    // Applying what follows the snapshot works on the installed state.
    b.apply_replicated(
        &s,
        last + 2,
        Some(Op::Remember(memory("next", DIM))),
        &at(last + 2),
    )
    .unwrap();
    b.compact().unwrap();
    drop(b);
    let b = Store::open_dir(b_dir.path(), opts()).unwrap();
    let mut want_next = want.clone();
    want_next.insert("next".into());
    assert_eq!(ids(&b, "r"), want_next);
    assert_eq!(b.replicated_state(&s).unwrap().unwrap(), at(last + 2));
}

fn keyed(op: Op, key: &str, at_us: i64) -> Option<Command> {
    Some(Command {
        op,
        request: Some((key.to_string(), at_us)),
    })
}

/// Applies, at `index` of space "r", a write of memory `id` with the idempotency `key`
/// received at `t`.
fn remember_keyed(store: &Store, index: u64, id: &str, key: &str, t: i64) -> ApplyOutcome {
    let cmds = keyed(Op::Remember(memory(id, DIM)), key, t)
        .into_iter()
        .collect();
    let mut out = store
        .apply_entry(&sid("r"), index, cmds, &at(index))
        .unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// A write with an idempotency key applied again within ten minutes (of the entries' time) is
/// a repeat: not applied, answered with the first answer; the table survives a flush and a
/// restart (it is in `raft.state`), travels in snapshots, and a replay of entries after a
/// restart does not take them for repeats of themselves.
#[test]
fn idempotency_keys_are_part_of_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let s = sid("r");
    let t0 = 1_700_000_000_000_000i64;
    let minute = 60_000_000i64;
    let first_answer = |o: ApplyOutcome| match o {
        ApplyOutcome::Applied(Some(Answer::Stored(ms))) => ms[0].id.as_str().to_string(),
        ApplyOutcome::Repeat(r) => match r.answer {
            Answer::Stored(ms) => format!("repeat of {} at {}", ms[0].id.as_str(), r.index),
            a => panic!("{a:?}"),
        },
        o => panic!("{o:?}"),
    };
    {
        let store = Store::open_dir(dir.path(), opts()).unwrap();
        let last = apply_all(&store, "r", vec![create()]);
        assert_eq!(last, 2);
        let put = |index, id, key, t| remember_keyed(&store, index, id, key, t);
        assert_eq!(first_answer(put(3, "a", "k1", t0)), "a");
        // The retry, with the id a server made for it anew: not stored.
        assert_eq!(
            first_answer(put(4, "a2", "k1", t0 + 9 * minute)),
            "repeat of a at 3"
        );
        assert_eq!(ids(&store, "r"), ["a"].map(String::from).into());
        assert!(store.request_record(&s, "k1", t0).unwrap().is_some());
        store.compact().unwrap();
        // Applied, not flushed: replayed after the restart.
        assert_eq!(first_answer(put(5, "b", "k2", t0 + minute)), "b");
        assert_eq!(first_answer(put(6, "c", "k3", t0 + 2 * minute)), "c");
    }
    let store = Store::open_dir(dir.path(), opts()).unwrap();
    assert_eq!(store.replicated_state(&s).unwrap().unwrap(), at(4));
    let replay = |index, id, key, t| remember_keyed(&store, index, id, key, t);
    // Replayed, entries come to what they came to the first time: a repeat stays one, the
    // others apply again (not repeats of themselves).
    assert_eq!(
        first_answer(replay(4, "a2", "k1", t0 + 9 * minute)),
        "repeat of a at 3"
    );
    assert_eq!(
        replay(3, "a", "k1", t0),
        ApplyOutcome::Nothing,
        "in a segment"
    );
    assert_eq!(first_answer(replay(5, "b", "k2", t0 + minute)), "b");
    assert_eq!(first_answer(replay(6, "c", "k3", t0 + 2 * minute)), "c");
    assert_eq!(
        first_answer(replay(7, "a3", "k1", t0 + 3 * minute)),
        "repeat of a at 3"
    );
    // Past ten minutes from the first, in the entries' time: applied anew.
    assert_eq!(first_answer(replay(8, "a4", "k1", t0 + 11 * minute)), "a4");
    assert_eq!(
        ids(&store, "r"),
        ["a", "a4", "b", "c"].map(String::from).into()
    );
    // A snapshot carries the table to another node.
    assert_eq!(first_answer(replay(9, "d", "k4", t0 + 12 * minute)), "d");
    store
        .snapshot_replicated(&s, &snap.path().join("s"), &RaftApplied::default())
        .unwrap();
    let b = Store::open_dir(other.path(), opts()).unwrap();
    b.install_replicated(&s, &snap.path().join("s")).unwrap();
    let r = b
        .request_record(&s, "k4", t0 + 12 * minute)
        .unwrap()
        .unwrap();
    assert_eq!(r.index, 9);
    assert!(
        b.request_record(&s, "k2", t0 + 12 * minute)
            .unwrap()
            .is_none(),
        "k2 is older than ten minutes"
    );
    let o = remember_keyed(&b, 10, "d2", "k4", t0 + 13 * minute);
    assert_eq!(first_answer(o), "repeat of d at 9");
}

/// A batch entry (several clients' writes proposed together) applies its commands in order at
/// its index; a key repeated inside the batch is a repeat; a batch holds data operations only.
#[test]
fn a_batch_entry_applies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("r");
    let store = Store::open_dir(dir.path(), opts()).unwrap();
    apply_all(&store, "r", vec![create()]);
    let c = |op: Op, key: Option<&str>| Command {
        op,
        request: key.map(|k| (k.to_string(), 1_700_000_000_000_000)),
    };
    let out = store
        .apply_entry(
            &s,
            3,
            vec![
                c(Op::Remember(memory("a", DIM)), Some("k")),
                c(Op::Remember(memory("b", DIM)), None),
                c(Op::Remember(memory("a2", DIM)), Some("k")),
                c(Op::Forget(mid("b")), None),
            ],
            &at(3),
        )
        .unwrap();
    assert_eq!(out.len(), 4);
    assert!(matches!(&out[2], ApplyOutcome::Repeat(r) if r.index == 3 && r.slot == 0));
    assert!(matches!(
        &out[3],
        ApplyOutcome::Applied(Some(Answer::Forgot { existed: true, .. }))
    ));
    assert_eq!(ids(&store, "r"), ["a"].map(String::from).into());
    // Replayed after a flush: nothing again.
    store.compact().unwrap();
    let again = store
        .apply_entry(
            &s,
            3,
            vec![
                c(Op::Remember(memory("x", DIM)), None),
                c(Op::Forget(mid("a")), None),
            ],
            &at(3),
        )
        .unwrap();
    assert_eq!(again, vec![ApplyOutcome::Nothing, ApplyOutcome::Nothing]);
    assert!(store
        .apply_entry(
            &s,
            4,
            vec![
                c(Op::Remember(memory("y", DIM)), None),
                c(Op::SpaceDrop, None)
            ],
            &at(4),
        )
        .is_err());
}

/// Two installs in a row, the space not loaded in between (an install leaves it on disk, to
/// load on first use): the second install's files are all in place. (Found by the replication
/// simulation, seed 2739: loading the space during the second install took its new files for
/// the leftovers of an install cut short and removed them.)
#[test]
fn a_second_install_into_an_unloaded_space_keeps_its_files() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let s = sid("r");
    let a = Store::open_dir(a_dir.path(), opts()).unwrap();
    let mut ops = vec![create()];
    ops.extend((0..10).map(|i| Op::Remember(memory(&format!("m{i}"), DIM))));
    let mut last = apply_all(&a, "r", ops);
    let first = snap.path().join("first");
    a.snapshot_replicated(&s, &first, &RaftApplied::default())
        .unwrap();
    for i in 10..20 {
        last += 1;
        a.apply_replicated(
            &s,
            last,
            Some(Op::Remember(memory(&format!("m{i}"), DIM))),
            &at(last),
        )
        .unwrap();
    }
    let second = snap.path().join("second");
    a.snapshot_replicated(&s, &second, &RaftApplied::default())
        .unwrap();
    let want = ids(&a, "r");
    assert_eq!(want.len(), 20);

    let b = Store::open_dir(b_dir.path(), opts()).unwrap();
    b.install_replicated(&s, &first).unwrap();
    assert_eq!(b.install_replicated(&s, &second).unwrap(), at(last));
    assert_eq!(ids(&b, "r"), want);
    drop(b);
    let b = Store::open_dir(b_dir.path(), opts()).unwrap();
    assert_eq!(ids(&b, "r"), want);
    assert_eq!(b.replicated_state(&s).unwrap().unwrap(), at(last));
}

/// A crash at every sync of an install leaves the old state or the new one, never a mix.
#[test]
fn an_install_cut_short_at_any_sync_leaves_old_or_new() {
    let s = sid("r");
    let mut k = 0u64;
    loop {
        let disk = FaultDisk::new();
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let (a_root, b_root, snap) = (Path::new("/a"), Path::new("/b"), Path::new("/snap/s"));
        let old: BTreeSet<String>;
        let new: BTreeSet<String>;
        {
            let a = Store::open(shared.clone(), a_root, opts()).unwrap();
            let mut ops = vec![create()];
            ops.extend((0..20).map(|i| Op::Remember(memory(&format!("new{i}"), DIM))));
            apply_all(&a, "r", ops);
            a.snapshot_replicated(&s, snap, &RaftApplied::default())
                .unwrap();
            new = ids(&a, "r");
            let b = Store::open(shared.clone(), b_root, opts()).unwrap();
            let mut ops = vec![create()];
            ops.extend((0..5).map(|i| Op::Remember(memory(&format!("old{i}"), DIM))));
            apply_all(&b, "r", ops);
            b.compact().unwrap();
            old = ids(&b, "r");
            disk.fail_syncs_after(Some(k));
            let done = b.install_replicated(&s, snap).is_ok();
            disk.power_cut();
            disk.clear_faults();
            let b = Store::open(shared.clone(), b_root, opts()).unwrap();
            let got = ids(&b, "r");
            let state = b.replicated_state(&s).unwrap().unwrap();
            if got == new {
                assert_eq!(state, at(22), "sync {k}");
            } else {
                assert_eq!(got, old, "sync {k}: neither the old state nor the new");
                assert_eq!(state, at(7), "sync {k}");
                assert!(!done, "sync {k}: an install that succeeded was lost");
            }
            if done {
                assert_eq!(got, new);
                break;
            }
        }
        k += 1;
        assert!(k < 1000, "the install never finished");
    }
    assert!(k > 3, "the install made only {k} syncs");
}

/// With `inline_commit` a write is durable and applied before it returns, on the writer's
/// thread, and durability callbacks run there too: what the deterministic simulation needs.
#[test]
fn inline_commit_is_durable_before_the_write_returns() {
    let disk = FaultDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let root = Path::new("/inline");
    let o = StoreOptions {
        inline_commit: true,
        ..opts()
    };
    let s = sid("plain");
    {
        let store = Store::open(shared.clone(), root, o.clone()).unwrap();
        store.create_space(&s, DIM as u32).unwrap();
        store.remember(&s, memory("a", DIM)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let me = std::thread::current().id();
        store
            .append_raft(
                &sid("g"),
                vec![Op::RaftTruncate(None)],
                Box::new(move |durable| tx.send((durable, std::thread::current().id())).unwrap()),
            )
            .unwrap();
        let (durable, on) = rx.try_recv().expect("called before append_raft returned");
        assert!(durable.is_some());
        assert_eq!(on, me);
        disk.power_cut();
    }
    let store = Store::open(shared, root, o).unwrap();
    assert_eq!(ids(&store, "plain"), ["a"].map(String::from).into());
}
