//! The async form of a write: futures resolve once the record is durable and applied, and
//! report a latched WAL as an error.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use engram_storage::FaultDisk;
use engram_storage::{StorageError, Store};

#[test]
fn many_commits_in_flight_from_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    let s = sid("s");
    store.create_space(&s, 8).unwrap();
    // Queue 200 writes before awaiting any: they share group commits.
    let commits: Vec<_> = (0..200)
        .map(|i| {
            store
                .remember_async(&s, memory(&format!("m{i}"), 8))
                .unwrap()
        })
        .collect();
    let mut last = 0;
    for c in commits {
        let seq = block_on(c).unwrap();
        assert!(seq > last, "sequences increase in submission order");
        last = seq;
    }
    let batch = store
        .remember_batch_async(&s, vec![memory("b1", 8), memory("b2", 8)])
        .unwrap();
    block_on(batch).unwrap();
    for i in 0..200 {
        assert_intact(&store.get(&s, &format!("m{i}")).unwrap().unwrap(), 8);
    }
    assert!(store.get(&s, "b2").unwrap().is_some());
    let commits = store
        .stats()
        .group_commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        commits < 200,
        "{commits} group commits for 200 queued writes"
    );
    assert!(
        store.remember_async(&s, memory("x", 9)).is_err(),
        "validated before queueing"
    );
}

#[test]
fn a_failed_fsync_resolves_the_future_with_an_error() {
    let disk = FaultDisk::new();
    let store = Store::open(Arc::new(disk.clone()), Path::new("/node"), test_options()).unwrap();
    let s = sid("s");
    store.create_space(&s, 8).unwrap();
    disk.fail_syncs(1);
    let err = block_on(store.remember_async(&s, memory("m", 8)).unwrap()).unwrap_err();
    assert!(matches!(err, StorageError::Latched(_)), "{err}");
    assert!(store.remember_async(&s, memory("n", 8)).is_err());
}
