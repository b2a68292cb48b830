//! The store's behaviour on a real directory: writes, reads, links, deletes, spaces,
//! compaction, checkpoints, restarts.

mod common;

use std::sync::Arc;

use common::*;
use engram_storage::{ManualClock, StorageError, Store, StoreOptions};

#[test]
fn remember_get_forget_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("agent-1");
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&s, 16).unwrap();
        for i in 0..50 {
            store.remember(&s, memory(&format!("m{i}"), 16)).unwrap();
        }
        assert!(store.forget(&s, &mid("m3")).unwrap());
        assert!(!store.forget(&s, &mid("absent")).unwrap());
        store.link(&s, &mid("m1"), &mid("m2"), 0.5).unwrap();
        store.link(&s, &mid("m1"), &mid("m2"), 0.75).unwrap();
        store.link(&s, &mid("m1"), &mid("m4"), 0.25).unwrap();
        store.unlink(&s, &mid("m1"), &mid("m4")).unwrap();
        assert!(matches!(
            store.link(&s, &mid("m1"), &mid("m3"), 0.5),
            Err(StorageError::MemoryNotFound(_))
        ));
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert_eq!(store.status().recovery.records_replayed, 56);
    assert!(store.get(&s, "m3").unwrap().is_none());
    let m1 = store.get(&s, "m1").unwrap().unwrap();
    assert_intact(&m1, 16);
    assert_eq!(m1.links.len(), 1);
    assert_eq!(m1.links[0].to.as_str(), "m2");
    assert_eq!(m1.links[0].weight, 0.75);
    assert_eq!(store.space_status(&s).unwrap().memories, 49);
}

#[test]
fn compaction_checkpoint_merge_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let opts = StoreOptions {
        max_segments_per_space: 2,
        ..test_options()
    };
    {
        let store = Store::open_dir(dir.path(), opts.clone()).unwrap();
        store.create_space(&s, 32).unwrap();
        for round in 0..4 {
            for i in 0..100 {
                store
                    .remember(&s, memory(&format!("r{round}-{i}"), 32))
                    .unwrap();
            }
            // Replace and delete memories that are already in older segments.
            if round > 0 {
                store.remember(&s, memory("r0-1", 32)).unwrap();
                store
                    .forget(&s, &mid(&format!("r{}-2", round - 1)))
                    .unwrap();
            }
            store.compact().unwrap();
        }
        let st = store.space_status(&s).unwrap();
        assert!(st.segments <= 2, "merged: {st:?}");
        assert_eq!(st.memtable_entries, 0);
        assert_eq!(st.memories, 400 - 3);
        let status = store.status();
        assert_eq!(status.wal_files, 1, "checkpoint removed old WAL files");
        // Force a merge down to one segment: tombstones disappear with the deleted rows.
        store.merge_all().unwrap();
        assert_eq!(store.space_status(&s).unwrap().segments, 1);
    }
    let store = Store::open_dir(dir.path(), opts).unwrap();
    let st = store.space_status(&s).unwrap();
    assert_eq!(st.memories, 397);
    assert_eq!(
        store.status().recovery.records_replayed,
        0,
        "nothing replayed: all in segments"
    );
    for round in 0..4 {
        for i in 0..100 {
            let id = format!("r{round}-{i}");
            let got = store.get(&s, &id).unwrap();
            if i == 2 && round < 3 {
                assert!(got.is_none(), "{id} was deleted");
            } else {
                assert_intact(&got.unwrap(), 32);
            }
        }
    }
}

#[test]
fn spaces_are_isolated_dropped_and_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (sid("a"), sid("b"));
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&a, 8).unwrap();
        store.create_space(&b, 8).unwrap();
        assert!(matches!(
            store.create_space(&a, 8),
            Err(StorageError::SpaceExists(_))
        ));
        store.remember(&a, memory("x", 8)).unwrap();
        assert!(store.get(&b, "x").unwrap().is_none());
        store.compact().unwrap();
        store.drop_space(&a).unwrap();
        assert!(!store.space_exists(&a).unwrap());
        assert!(matches!(
            store.get(&a, "x"),
            Err(StorageError::SpaceNotFound(_))
        ));
        store.create_space(&a, 4).unwrap();
        assert!(
            store.get(&a, "x").unwrap().is_none(),
            "a new space starts empty"
        );
        store.remember(&a, memory("y", 4)).unwrap();
    }
    {
        // Reopen before the compactor removed the old files: the WAL replays the drop.
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        assert_eq!(store.space_meta(&a).unwrap().dimension, 4);
        assert!(store.get(&a, "x").unwrap().is_none());
        assert!(store.get(&a, "y").unwrap().is_some());
        store.compact().unwrap();
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert_eq!(store.list_spaces(), vec![a.clone(), b.clone()]);
    assert!(store.get(&a, "x").unwrap().is_none());
    assert_intact(&store.get(&a, "y").unwrap().unwrap(), 4);
}

#[test]
fn limits_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_record_bytes: 4096,
        ..test_options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    let s = sid("s");
    store.create_space(&s, 8).unwrap();
    let mut big = memory("big", 8);
    big.content = "x".repeat(5000);
    let err = store.remember(&s, big).unwrap_err();
    assert!(
        matches!(err, StorageError::RecordTooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("4096"));
    let err = store.remember(&s, memory("wrong-dim", 9)).unwrap_err();
    assert!(err.to_string().contains("9 dimensions"), "{err}");
    assert!(matches!(
        store.remember(&sid("nope"), memory("a", 8)),
        Err(StorageError::SpaceNotFound(_))
    ));
    assert!(store.create_space(&sid("z"), 0).is_err());
}

#[test]
fn concurrent_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_dir(dir.path(), test_options()).unwrap());
    let spaces: Vec<_> = (0..4).map(|i| sid(&format!("s{i}"))).collect();
    for s in &spaces {
        store.create_space(s, 8).unwrap();
    }
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            let s = spaces[t % 4].clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    store.remember(&s, memory(&format!("t{t}-{i}"), 8)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = store.stats();
    let records = stats.records.load(std::sync::atomic::Ordering::Relaxed);
    let commits = stats
        .group_commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(records, 1600 + 4);
    assert!(
        commits < records,
        "group commit batches writers: {commits} commits for {records} records"
    );
    let total: usize = spaces
        .iter()
        .map(|s| store.space_status(s).unwrap().memories)
        .sum();
    assert_eq!(total, 1600);
}

#[test]
fn idle_spaces_are_released_and_reopened_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_open_spaces: 10,
        ..test_options()
    };
    {
        let store = Store::open_dir(dir.path(), opts.clone()).unwrap();
        for i in 0..50 {
            let s = sid(&format!("t{i}"));
            store.create_space(&s, 4).unwrap();
            store.remember(&s, memory("m", 4)).unwrap();
        }
        store.compact().unwrap();
        let st = store.status();
        assert_eq!(st.spaces, 50);
        assert!(st.spaces_loaded <= 10, "{} loaded", st.spaces_loaded);
        assert_intact(&store.get(&sid("t0"), "m").unwrap().unwrap(), 4);
    }
    let store = Store::open_dir(dir.path(), opts).unwrap();
    let st = store.status();
    assert_eq!(
        (st.spaces, st.spaces_loaded),
        (50, 0),
        "nothing opened at startup"
    );
    assert_intact(&store.get(&sid("t42"), "m").unwrap().unwrap(), 4);
    assert_eq!(store.status().spaces_loaded, 1);
}

/// A dirty space is flushed once no write has come for `idle_flush_after` on the store's
/// clock (a manual one: no waiting for the machine's time to pass).
#[test]
fn background_compactor_flushes_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new());
    let opts = StoreOptions {
        background_compaction: true,
        idle_flush_after: std::time::Duration::from_millis(50),
        compaction_tick: std::time::Duration::from_millis(10),
        clock: clock.clone(),
        ..test_options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    let s = sid("s");
    store.create_space(&s, 8).unwrap();
    store.remember(&s, memory("m", 8)).unwrap();
    assert_eq!(store.space_status(&s).unwrap().segments, 0);
    clock.advance(std::time::Duration::from_millis(51));
    wait_until("the compactor flushed", || {
        store.space_status(&s).unwrap().segments == 1
    });
    assert_intact(&store.get(&s, "m").unwrap().unwrap(), 8);
}

#[test]
fn drop_and_recreate_between_passes_keeps_the_new_space() {
    let dir = tempfile::tempdir().unwrap();
    let a = sid("a");
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&a, 4).unwrap();
        store.remember(&a, memory("old", 4)).unwrap();
        store.compact().unwrap();
        // Drop and create again with no pass in between; two passes follow.
        store.drop_space(&a).unwrap();
        store.create_space(&a, 4).unwrap();
        store.remember(&a, memory("new", 4)).unwrap();
        store.compact().unwrap();
        store.compact().unwrap();
        assert!(store.get(&a, "old").unwrap().is_none());
        assert_intact(&store.get(&a, "new").unwrap().unwrap(), 4);
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert!(store.get(&a, "old").unwrap().is_none());
    assert_intact(&store.get(&a, "new").unwrap().unwrap(), 4);
}

#[test]
fn concurrent_creations_create_each_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_dir(dir.path(), test_options()).unwrap());
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (store, created) = (store.clone(), created.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    // Every thread tries ids 0..40: each must be created exactly once.
                    let id = sid(&format!("s{}", (i + t * 5) % 40));
                    match store.create_space(&id, 4) {
                        Ok(_) => {
                            created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(StorageError::SpaceExists(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(created.load(std::sync::atomic::Ordering::Relaxed), 40);
    assert_eq!(store.list_spaces().len(), 40);
}

/// Under a steady write load, background merges wait (compaction belongs to quiet moments)
/// until a space has more than `merge_defer_max_segments`; once writes stop, the space is
/// merged down to `max_segments_per_space`. The load is the store clock's: a manual clock
/// moved 1 ms a write (1,000 writes a second, over the threshold of 20, however fast or slow
/// the machine), then 2 s with no write.
#[test]
fn merges_wait_for_a_quiet_moment() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("busy");
    let clock = Arc::new(ManualClock::new());
    let opts = StoreOptions {
        background_compaction: true,
        compaction_tick: std::time::Duration::from_millis(5),
        memtable_max_rows: 50,
        max_segments_per_space: 2,
        merge_defer_records_per_s: 20,
        merge_defer_max_segments: 10_000,
        clock: clock.clone(),
        ..test_options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    store.create_space(&s, 8).unwrap();
    let segments = || store.space_status(&s).unwrap().segments;
    let mut i = 0;
    for round in 1..=8 {
        for _ in 0..50 {
            store.remember(&s, memory(&format!("m{i}"), 8)).unwrap();
            clock.advance(std::time::Duration::from_millis(1));
            i += 1;
        }
        // The full memtable is flushed whatever the load; nothing is merged meanwhile.
        wait_until("a full memtable flushed", || {
            store.space_status(&s).unwrap().memtable_entries == 0
        });
        assert_eq!(segments(), round, "a merge under load");
    }
    // Quiet: the compactor sees the rate drop at its next tick and merges.
    clock.advance(std::time::Duration::from_secs(2));
    wait_until("merged once the writes stopped", || segments() <= 2);
    assert_eq!(store.space_status(&s).unwrap().memories, i);
    for k in [0, i / 2, i - 1] {
        assert_intact(&store.get(&s, &format!("m{k}")).unwrap().unwrap(), 8);
    }
}

#[test]
fn a_spaces_text_embedder_survives_replay_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (named, plain) = (sid("named"), sid("plain"));
    let check = |store: &Store| {
        assert_eq!(
            store.space_meta(&named).unwrap().embedder,
            "bert-mean-384:0123abcd"
        );
        assert_eq!(store.space_meta(&named).unwrap().dimension, 384);
        assert_eq!(store.space_meta(&plain).unwrap().embedder, "");
    };
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store
            .create_space_with_embedder(&named, 384, "bert-mean-384:0123abcd")
            .unwrap();
        store.create_space(&plain, 16).unwrap();
        store.remember(&plain, memory("p", 16)).unwrap();
        assert!(store
            .create_space_with_embedder(&sid("long"), 8, &"x".repeat(300))
            .is_err());
        check(&store);
    }
    // From the WAL.
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    check(&store);
    // From space.meta once flushed and the WAL checkpointed.
    store.compact().unwrap();
    drop(store);
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert_eq!(store.status().recovery.records_replayed, 0);
    check(&store);
}

/// The batch limit is the caller's check (the engine's, the server's); the store asserts it,
/// because a larger batch would be a WAL record that replay refuses as corrupted.
#[test]
#[should_panic(expected = "batch of 1001 memories exceeds the limit of 1000")]
fn a_batch_over_the_limit_is_an_assertion_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("agent-1");
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    store.create_space(&s, 4).unwrap();
    let batch = (0..=engram_core::limits::MAX_BATCH)
        .map(|i| memory(&format!("m{i}"), 4))
        .collect();
    let _ = store.remember_batch(&s, batch);
}
