//! Vector search through the store: HNSW indexes built beside flushed and merged segments,
//! reopened (not rebuilt) on restart, rebuilt when unusable, and results that never include a
//! deleted memory or a replaced version.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use common::*;
use engram_core::Memory;
use engram_storage::index::{index_path, INDEX_EXTENSION};
use engram_storage::{Clock, ManualClock, Store, StoreOptions};

const DIM: usize = 32;

/// A deterministic unit vector per number, clustered into 20 groups (so neighbours exist).
fn vector(n: u64) -> Vec<f32> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centre = n % 20;
    let mut v: Vec<f32> = (0..DIM)
        .map(|i| if i as u64 == centre { 3.0 } else { 0.0 } + next())
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= norm);
    v
}

fn mem(n: u64) -> Memory {
    Memory {
        embedding: vector(n),
        ..memory(&format!("v{n:05}"), DIM)
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        index_min_rows: 500,
        ..test_options()
    }
}

/// Every live memory's embedding, by id.
fn live(store: &Store, space: &engram_core::SpaceId) -> HashMap<String, Vec<f32>> {
    let mut all = HashMap::new();
    store
        .for_each(space, |m| {
            all.insert(m.id.to_string(), m.embedding);
        })
        .unwrap();
    all
}

/// The exact top `k` by dot product among `live`.
fn exact(live: &HashMap<String, Vec<f32>>, q: &[f32], k: usize) -> Vec<String> {
    let mut v: Vec<(f32, &String)> = live
        .iter()
        .map(|(id, e)| (e.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), id))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    v.into_iter().take(k).map(|(_, id)| id.clone()).collect()
}

fn index_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&format!(".{INDEX_EXTENSION}")))
        .collect();
    v.sort();
    v
}

#[test]
fn index_is_built_searched_and_reopened_without_rebuilding() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("vectors");
    let space_dir = dir.path().join("spaces").join("vectors");
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store.create_space(&s, DIM as u32).unwrap();
        let batch: Vec<Memory> = (0..1500).map(mem).collect();
        for chunk in batch.chunks(100) {
            store.remember_batch(&s, chunk.to_vec()).unwrap();
        }
        // Before any flush: memtable only, searched exactly.
        let q = vector(7);
        let hits = store.search(&s, &q, 10, 64).unwrap();
        assert_eq!(hits[0].id.as_str(), "v00007");
        store.compact().unwrap();
        assert_eq!(store.build_indexes().unwrap(), 1);
        assert_eq!(store.stats().index_builds.load(Ordering::Relaxed), 1);
        assert_eq!(index_files(&space_dir).len(), 1);

        let all = live(&store, &s);
        let mut found = 0;
        for n in (0..1500).step_by(37) {
            let q = vector(n + 100_000);
            let want = exact(&all, &q, 10);
            let got: Vec<String> = store
                .search(&s, &q, 10, 64)
                .unwrap()
                .into_iter()
                .map(|h| h.id.to_string())
                .collect();
            assert_eq!(got.len(), 10);
            found += got.iter().filter(|id| want.contains(id)).count();
        }
        let queries = (0..1500).step_by(37).count();
        let recall = found as f64 / (queries * 10) as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }
    let store = Store::open_dir(dir.path(), options()).unwrap();
    let hits = store.search(&s, &vector(7), 1, 64).unwrap();
    assert_eq!(hits[0].id.as_str(), "v00007");
    assert!((hits[0].similarity - 1.0).abs() < 1e-4);
    // Reopened from its file, never rebuilt.
    assert_eq!(store.stats().index_loads.load(Ordering::Relaxed), 1);
    assert_eq!(store.build_indexes().unwrap(), 0);
    assert_eq!(store.stats().index_builds.load(Ordering::Relaxed), 0);
}

#[test]
fn deleted_and_replaced_memories_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let store = Store::open_dir(dir.path(), options()).unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    let batch: Vec<Memory> = (0..1200).map(mem).collect();
    for chunk in batch.chunks(100) {
        store.remember_batch(&s, chunk.to_vec()).unwrap();
    }
    store.compact().unwrap();
    store.build_indexes().unwrap();
    // Delete some (tombstones in the memtable), replace others with a far-away embedding.
    let deleted: Vec<u64> = (0..1200).step_by(11).collect();
    for &n in &deleted {
        assert!(store.forget(&s, &mid(&format!("v{n:05}"))).unwrap());
    }
    let replaced: Vec<u64> = (5..1200).step_by(13).filter(|n| n % 11 != 0).collect();
    for &n in &replaced {
        let m = Memory {
            embedding: vector(n + 1_000_000),
            ..mem(n)
        };
        store.remember(&s, m).unwrap();
    }
    let check = |store: &Store, stage: &str| {
        for &n in deleted.iter().chain(&replaced) {
            let hits = store.search(&s, &vector(n), 20, 64).unwrap();
            for h in &hits {
                let k: u64 = h.id.as_str()[1..].parse().unwrap();
                assert!(!deleted.contains(&k), "{stage}: deleted {} returned", h.id);
                if replaced.contains(&k) {
                    // Only the new version may come back, with the new version's similarity.
                    let newest = vector(k + 1_000_000);
                    let sim: f32 = newest.iter().zip(&vector(n)).map(|(a, b)| a * b).sum();
                    assert!(
                        (h.similarity - sim).abs() < 1e-4,
                        "{stage}: old version of {}",
                        h.id
                    );
                }
            }
        }
    };
    check(&store, "memtable over an indexed segment");
    store.compact().unwrap();
    store.build_indexes().unwrap();
    check(&store, "two segments");
    store.merge_all().unwrap();
    store.build_indexes().unwrap();
    check(&store, "merged");
    drop(store);
    let store = Store::open_dir(dir.path(), options()).unwrap();
    check(&store, "reopened");
    // The merged segment's index is the only one left.
    assert_eq!(index_files(&dir.path().join("spaces").join("s")).len(), 1);
}

#[test]
fn unusable_and_orphan_index_files_are_replaced_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let space_dir = dir.path().join("spaces").join("s");
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store.create_space(&s, DIM as u32).unwrap();
        let batch: Vec<Memory> = (0..800).map(mem).collect();
        for chunk in batch.chunks(100) {
            store.remember_batch(&s, chunk.to_vec()).unwrap();
        }
        store.compact().unwrap();
        assert_eq!(store.build_indexes().unwrap(), 1);
    }
    let files = index_files(&space_dir);
    let idx = space_dir.join(&files[0]);
    // Rot a byte in the middle of the index, and leave an index of a segment that is gone.
    let mut bytes = std::fs::read(&idx).unwrap();
    let mid_byte = bytes.len() / 2;
    bytes[mid_byte] ^= 0x40;
    std::fs::write(&idx, &bytes).unwrap();
    let orphan = index_path(&space_dir.join("00000000000000000001-00000000000000000002.seg"));
    std::fs::write(&orphan, b"not an index").unwrap();

    let store = Store::open_dir(dir.path(), options()).unwrap();
    let hits = store.search(&s, &vector(3), 1, 32).unwrap();
    assert_eq!(
        hits[0].id.as_str(),
        "v00003",
        "searched by a scan meanwhile"
    );
    assert!(!orphan.exists(), "orphan index removed");
    assert_eq!(store.stats().index_loads.load(Ordering::Relaxed), 0);
    assert_eq!(store.build_indexes().unwrap(), 1, "rebuilt");
    assert_eq!(index_files(&space_dir), files);
    let hits = store.search(&s, &vector(3), 1, 32).unwrap();
    assert_eq!(hits[0].id.as_str(), "v00003");
}

#[test]
fn search_refuses_a_query_of_the_wrong_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let store = Store::open_dir(dir.path(), options()).unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    let err = store.search(&s, &[1.0; 3], 5, 16).unwrap_err();
    assert!(err.to_string().contains("3 dimensions"), "{err}");
    assert!(store.search(&s, &vector(1), 5, 16).unwrap().is_empty());
}

#[test]
fn tiered_merges_leave_a_large_indexed_segment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let opts = StoreOptions {
        max_segments_per_space: 3,
        ..options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    let batch: Vec<Memory> = (0..1000).map(mem).collect();
    for chunk in batch.chunks(100) {
        store.remember_batch(&s, chunk.to_vec()).unwrap();
    }
    store.compact().unwrap();
    assert_eq!(store.build_indexes().unwrap(), 1);
    let big = index_files(&dir.path().join("spaces").join("s"));
    // Small flushes on top, with a delete of a row of the big segment: merges combine the
    // small ones only and keep the tombstone that hides the big segment's row.
    for round in 0..6u64 {
        for i in 0..20 {
            store.remember(&s, mem(2000 + round * 20 + i)).unwrap();
        }
        if round == 2 {
            store.forget(&s, &mid("v00005")).unwrap();
        }
        store.compact().unwrap();
    }
    let st = store.space_status(&s).unwrap();
    assert!(st.segments <= 3, "{st:?}");
    assert!(store.stats().merges.load(Ordering::Relaxed) >= 2);
    let now = index_files(&dir.path().join("spaces").join("s"));
    assert!(
        now.contains(&big[0]),
        "the big segment's index is still there: {now:?}"
    );
    assert_eq!(store.stats().index_builds.load(Ordering::Relaxed), 1);
    assert!(store.get(&s, "v00005").unwrap().is_none());
    let hits = store.search(&s, &vector(5), 5, 64).unwrap();
    assert!(hits.iter().all(|h| h.id.as_str() != "v00005"));
    assert_eq!(st.memories, 1000 - 1 + 120);
    drop(store);
    let store = Store::open_dir(dir.path(), options()).unwrap();
    assert!(
        store.get(&s, "v00005").unwrap().is_none(),
        "tombstone survived the merge"
    );
    assert_eq!(store.space_status(&s).unwrap().memories, 1000 - 1 + 120);
}

#[test]
fn a_full_memtable_is_flushed_whatever_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let opts = StoreOptions {
        memtable_max_rows: 50,
        background_compaction: true,
        compaction_tick: std::time::Duration::from_millis(5),
        idle_flush_after: std::time::Duration::from_secs(3600),
        ..options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    for i in 0..60 {
        store.remember(&s, mem(i)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.space_status(&s).unwrap().segments == 0 {
        assert!(std::time::Instant::now() < deadline, "no flush");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// While writes pour in, new segments wait for their index, up to `index_defer_max`; once
/// the node is quiet, they are built. The load is the store clock's, a manual one moved a
/// fixed step a write (1,000 or 100 writes a second, over the threshold of 20 however fast
/// or slow the machine), then two minutes with no write.
#[test]
fn the_indexer_waits_while_writes_pour_in_and_builds_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("busy");
    let clock = std::sync::Arc::new(ManualClock::new());
    let store = Store::open_dir(
        dir.path(),
        StoreOptions {
            background_compaction: true,
            compaction_tick: std::time::Duration::from_millis(5),
            memtable_max_rows: 600,
            index_min_rows: 500,
            index_defer_records_per_s: 20,
            index_defer_max: std::time::Duration::from_secs(5),
            clock: clock.clone(),
            ..options()
        },
    )
    .unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    let mut n = 0;
    let mut write = |count: usize, step_ms: u64| {
        for _ in 0..count {
            store.remember(&s, mem(n)).unwrap();
            clock.advance(std::time::Duration::from_millis(step_ms));
            n += 1;
        }
    };
    let builds = || store.stats().index_builds.load(Ordering::Relaxed);
    // Two segments flushed one after the other (about 0.6 s and 1.2 s into the clock): the
    // first waited through all the writes of the second.
    write(600, 1);
    wait_until("a segment flushed", || store.pending_index_builds() == 1);
    write(600, 1);
    wait_until("a second segment flushed", || {
        store.pending_index_builds() == 2
    });
    assert_eq!(builds(), 0);
    // Still busy: the first is built once it has waited `index_defer_max`, not before.
    while builds() == 0 {
        write(1, 10);
        assert!(
            clock.monotonic() < std::time::Duration::from_secs(60),
            "no index built past index_defer_max"
        );
    }
    assert!(clock.monotonic() >= std::time::Duration::from_millis(5_600));
    // Quiet: the rest are built at the next tick. (Quiet for long enough that the rate is low
    // whenever the indexer last sampled it: under 2,000 changes in all over 120 s. The
    // segment flushed then, since the space went idle, is built too.)
    clock.advance(std::time::Duration::from_secs(120));
    wait_until("every index built once writes stopped", || {
        store.pending_index_builds() == 0
    });
}

/// A background merge gives its output an index before the output replaces its inputs: no
/// search ever scans a merged segment that the inputs' indexes served. Flushed segments here
/// are below `index_min_rows` (scanned, never indexed); merged ones are above it, so the only
/// index builds are the merges' own, and at no moment does a segment wait for one.
#[test]
fn a_background_merge_replaces_its_inputs_only_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let opts = StoreOptions {
        background_compaction: true,
        compaction_tick: std::time::Duration::from_millis(5),
        idle_flush_after: std::time::Duration::from_secs(3600),
        memtable_max_rows: 300,
        index_min_rows: 700,
        max_segments_per_space: 2,
        merge_defer_records_per_s: 0,
        ..options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    let batch: Vec<Memory> = (0..1500).map(mem).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let waiting = || {
        let segments = store
            .read_space(&s, |v| {
                v.segments()
                    .map(|g| (g.rows(), g.index().is_some()))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(
            store.pending_index_builds(),
            0,
            "a segment waits for its index: {segments:?}"
        );
        assert!(std::time::Instant::now() < deadline, "{segments:?}");
    };
    // Each memtable of 300 is flushed before the next is written (a segment of 300 rows).
    for chunk in batch.chunks(300) {
        for part in chunk.chunks(100) {
            store.remember_batch(&s, part.to_vec()).unwrap();
        }
        while store.space_status(&s).unwrap().memtable_entries > 0 {
            waiting();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    loop {
        waiting();
        let st = store.space_status(&s).unwrap();
        if st.memtable_entries == 0
            && st.segments <= 2
            && store.stats().merges.load(Ordering::Relaxed) >= 2
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(store.stats().index_builds.load(Ordering::Relaxed) >= 1);
    let files = index_files(&dir.path().join("spaces").join("s"));
    assert!(!files.is_empty());
    for n in [0u64, 700, 1499] {
        let hits = store.search(&s, &vector(n), 1, 64).unwrap();
        assert_eq!(hits[0].id.as_str(), format!("v{n:05}"));
    }
    drop(store);
    // Nothing temporary left, and the indexes are loaded, not rebuilt.
    for e in std::fs::read_dir(dir.path().join("spaces").join("s")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "{name}");
    }
    let opts = StoreOptions {
        index_min_rows: 700,
        ..options()
    };
    let store = Store::open_dir(dir.path(), opts).unwrap();
    assert_eq!(store.space_status(&s).unwrap().memories, 1500);
    assert_eq!(store.pending_index_builds(), 0);
    assert_eq!(store.stats().index_builds.load(Ordering::Relaxed), 0);
}
