//! Writers, deleters and recalls at the same time as background flushes, merges and index
//! builds: no error, every acknowledged memory present afterwards, no deleted one recalled.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engram_core::{Cue, MemoryId, SpaceId};
use engram_engine::{Engine, EngineOptions, NewMemory};
use engram_storage::StoreOptions;

const DIM: usize = 16;

fn vector(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    v[n % DIM] = 1.0;
    v[(n * 7 + 1) % DIM] += 0.4 + (n % 13) as f32 * 0.03;
    v
}

#[test]
fn writes_recalls_and_compaction_run_together() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        store: StoreOptions {
            memtable_flush_bytes: 64 << 10,
            idle_flush_after: Duration::from_millis(20),
            max_segments_per_space: 2,
            index_min_rows: 64,
            compaction_tick: Duration::from_millis(5),
            ..StoreOptions::default()
        },
        default_dimension: DIM as u32,
        ..EngineOptions::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    let s = SpaceId::new("default").unwrap();
    let done = AtomicBool::new(false);
    let deleted: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let writers = 4;
    let per_writer = 250;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for w in 0..writers {
            let engine = &engine;
            let s = &s;
            handles.push(scope.spawn(move || {
                for i in 0..per_writer {
                    let n = w * per_writer + i;
                    let m = NewMemory {
                        id: Some(MemoryId::new(format!("w{n}")).unwrap()),
                        embedding: Some(vector(n)),
                        ..NewMemory::text(format!("memory {n}"))
                    };
                    engine.remember(s, m).unwrap();
                }
            }));
        }
        let deleter = scope.spawn(|| {
            let mut k = 0;
            while !done.load(Ordering::Relaxed) {
                let id = format!("w{}", (k * 37) % (writers * per_writer));
                k += 1;
                if engine
                    .forget(&s, &MemoryId::new(id.clone()).unwrap())
                    .unwrap()
                {
                    deleted.lock().unwrap().insert(id);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        let reader = scope.spawn(|| {
            let mut recalls = 0;
            while !done.load(Ordering::Relaxed) {
                let r = engine
                    .recall(
                        &s,
                        &Cue {
                            max_results: 20,
                            ..Cue::vector(vector(recalls))
                        },
                    )
                    .unwrap();
                for item in r.vivid.iter().chain(&r.associated) {
                    assert!((0.0..=1.0).contains(&item.activation));
                    assert!(item.id.as_str().starts_with('w'));
                }
                recalls += 1;
            }
            recalls
        });
        for h in handles {
            h.join().unwrap();
        }
        // The flushes are the compactor's, in the background: on a loaded machine the writes
        // can all be in before its first one. The deleter and the reader go on until one has
        // run (bounded), so a flush always overlaps them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.stats().flushes.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        done.store(true, Ordering::Relaxed);
        deleter.join().unwrap();
        let recalls = reader.join().unwrap();
        assert!(recalls > 0);
    });
    assert!(started.elapsed() < Duration::from_secs(120));
    let st = engine.stats();
    assert!(
        st.flushes.load(Ordering::Relaxed) > 0,
        "flushes ran during the test"
    );
    eprintln!(
        "flushes {} merges {} index builds {}",
        st.flushes.load(Ordering::Relaxed),
        st.merges.load(Ordering::Relaxed),
        st.index_builds.load(Ordering::Relaxed)
    );
    let deleted = deleted.into_inner().unwrap();
    for n in 0..writers * per_writer {
        let id = format!("w{n}");
        let got = engine.get(&s, &id).unwrap();
        assert_eq!(got.is_some(), !deleted.contains(&id), "{id}");
    }
    for n in 0..DIM * 3 {
        let r = engine
            .recall(
                &s,
                &Cue {
                    max_results: 100,
                    ..Cue::vector(vector(n))
                },
            )
            .unwrap();
        for item in r.vivid.iter().chain(&r.associated) {
            assert!(
                !deleted.contains(item.id.as_str()),
                "deleted {} recalled",
                item.id
            );
        }
    }
}
