//! Keyed writes to unreplicated spaces (`Idempotency-Key`): the key is recorded with the
//! write, in its WAL record, and survives a restart from the WAL alone, from a flushed
//! `requests.table`, and from both; a keyed record whose key the table holds changes nothing.

mod common;

use common::*;
use engram_storage::requests::{Answer, REQUESTS_FILE, REQUEST_TTL_US};
use engram_storage::{StorageError, Store};

const T0: i64 = 1_800_000_000_000_000;

fn key(k: &str, at: i64) -> Option<(String, i64)> {
    Some((k.to_string(), at))
}

fn stored_ids(a: &Answer) -> Vec<String> {
    match a {
        Answer::Stored(ms) => ms.iter().map(|m| m.id.to_string()).collect(),
        other => panic!("not a remember's answer: {other:?}"),
    }
}

#[test]
fn keys_survive_restarts_from_the_wal_and_from_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("keyed");
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store
            .create_space_keyed(&s, 8, "", key("create", T0))
            .unwrap();
        let commit = store
            .remember_batch_keyed_async(&s, vec![memory("a", 8), memory("b", 8)], key("k1", T0))
            .unwrap();
        block_on(commit).unwrap();
        assert!(store
            .forget_keyed(&s, &mid("b"), key("k2", T0 + 1))
            .unwrap());
        // A forget of a memory that is not there writes nothing and records no key.
        assert!(!store
            .forget_keyed(&s, &mid("b"), key("k3", T0 + 2))
            .unwrap());
        store
            .link_keyed(&s, &mid("a"), &mid("a"), 0.5, key("k4", T0 + 3))
            .unwrap();
        let r = store.request_record(&s, "k1", T0).unwrap().unwrap();
        assert_eq!(stored_ids(&r.answer), ["a", "b"]);
        assert_eq!(r.at_us, T0);
        assert!(store.request_record(&s, "k3", T0).unwrap().is_none());
        // Too long a key is refused before anything is written.
        assert!(matches!(
            store.forget_keyed(&s, &mid("a"), key(&"x".repeat(129), T0)),
            Err(StorageError::Invalid(_))
        ));
    }
    // 1. From the WAL alone.
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        let check = |store: &Store| {
            let r = store.request_record(&s, "k1", T0).unwrap().unwrap();
            assert_eq!(stored_ids(&r.answer), ["a", "b"]);
            let r = store.request_record(&s, "k2", T0).unwrap().unwrap();
            assert_eq!(
                r.answer,
                Answer::Forgot {
                    id: mid("b"),
                    existed: true
                }
            );
            assert!(matches!(
                store
                    .request_record(&s, "create", T0)
                    .unwrap()
                    .unwrap()
                    .answer,
                Answer::SpaceCreated
            ));
            assert!(matches!(
                store.request_record(&s, "k4", T0).unwrap().unwrap().answer,
                Answer::Linked { .. }
            ));
            assert!(store.request_record(&s, "k3", T0).unwrap().is_none());
        };
        check(&store);
        // 2. From the table the flush writes (the WAL's records of them checkpointed away).
        store.compact().unwrap();
        assert!(dir.path().join("spaces/keyed").join(REQUESTS_FILE).exists());
        check(&store);
        // 3. Both: a key after the flush is in the WAL only.
        store
            .link_keyed(&s, &mid("a"), &mid("a"), 0.25, key("k5", T0 + 4))
            .unwrap();
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    for k in ["create", "k1", "k2", "k4", "k5"] {
        assert!(store.request_record(&s, k, T0).unwrap().is_some(), "{k}");
    }
    // Ten minutes after the newest key, none is live.
    assert!(store
        .request_record(&s, "k1", T0 + 5 + REQUEST_TTL_US)
        .unwrap()
        .is_none());
    // The memories are what the writes made.
    assert!(store.get(&s, "a").unwrap().is_some());
    assert!(store.get(&s, "b").unwrap().is_none());
}

#[test]
fn a_keyed_write_repeating_a_recorded_key_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("repeat");
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    store.create_space(&s, 8).unwrap();
    block_on(
        store
            .remember_batch_keyed_async(&s, vec![memory("first", 8)], key("k", T0))
            .unwrap(),
    )
    .unwrap();
    // A second write with the key (a caller that did not look first) is skipped as applied.
    block_on(
        store
            .remember_batch_keyed_async(&s, vec![memory("second", 8)], key("k", T0 + 1))
            .unwrap(),
    )
    .unwrap();
    assert!(store.get(&s, "second").unwrap().is_none());
    assert_eq!(
        stored_ids(&store.request_record(&s, "k", T0).unwrap().unwrap().answer),
        ["first"]
    );
    // Past the key's ten minutes, the key is new again.
    let later = T0 + REQUEST_TTL_US + 10;
    block_on(
        store
            .remember_batch_keyed_async(&s, vec![memory("third", 8)], key("k", later))
            .unwrap(),
    )
    .unwrap();
    assert!(store.get(&s, "third").unwrap().is_some());
    drop(store);
    // Replay comes to the same.
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert!(store.get(&s, "second").unwrap().is_none());
    assert!(store.get(&s, "third").unwrap().is_some());
    assert_eq!(
        stored_ids(
            &store
                .request_record(&s, "k", later)
                .unwrap()
                .unwrap()
                .answer
        ),
        ["third"]
    );
}

/// A power cut at every sync a flush (and its checkpoint) makes, first flush of the space and
/// a later one: every key and every write comes back (from the WAL, the table or both).
#[test]
fn a_power_cut_at_any_sync_of_a_flush_keeps_every_key() {
    use std::path::Path;
    use std::sync::Arc;

    use engram_storage::FaultDisk;

    let s = sid("cut");
    let open = |disk: &FaultDisk| {
        Store::open(Arc::new(disk.clone()), Path::new("/node"), test_options()).unwrap()
    };
    for later in [false, true] {
        for k in 0.. {
            let disk = FaultDisk::new();
            let finished = {
                let store = open(&disk);
                store
                    .create_space_keyed(&s, 8, "", key("create", T0))
                    .unwrap();
                if later {
                    futures_write(&store, &s, "before", "k0");
                    store.compact().unwrap();
                }
                futures_write(&store, &s, "a", "k1");
                assert!(store
                    .forget_keyed(&s, &mid("a"), key("k2", T0 + 2))
                    .unwrap());
                futures_write(&store, &s, "b", "k3");
                store.remember(&s, memory("c", 8)).unwrap();
                disk.fail_syncs_after(Some(k));
                let ok = store.compact().is_ok();
                disk.clear_faults();
                ok && disk.syncs() > 0
            };
            disk.power_cut();
            disk.clear_faults();
            let store = open(&disk);
            let mut keys = vec!["create", "k1", "k2", "k3"];
            if later {
                keys.push("k0");
            }
            for name in keys {
                assert!(
                    store.request_record(&s, name, T0).unwrap().is_some(),
                    "later {later}, cut after {k} syncs: key {name} lost"
                );
            }
            assert!(store.get(&s, "a").unwrap().is_none());
            assert!(store.get(&s, "b").unwrap().is_some());
            assert!(store.get(&s, "c").unwrap().is_some());
            // Once a flush completes within the sync budget, every cut point was tried.
            if finished {
                break;
            }
            assert!(k < 200, "the flush never completed");
        }
    }
}

fn futures_write(store: &Store, s: &engram_core::SpaceId, id: &str, k: &str) {
    block_on(
        store
            .remember_batch_keyed_async(s, vec![memory(id, 8)], key(k, T0 + 1))
            .unwrap(),
    )
    .unwrap();
}
