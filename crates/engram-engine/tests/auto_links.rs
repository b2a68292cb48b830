//! Automatic links end to end: made after the acknowledgement (by the store's linker, or a
//! flush), their weights, links to earlier batch members, what a crash leaves owed, the link
//! index through restarts, forgets and a background build.

mod common;

use common::*;
use engram_engine::{Engine, NewMemory};

#[test]
fn auto_links_connect_similar_memories_with_their_similarity() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let s = sid("default");
    engine
        .remember(&s, vector_memory("first", axis(8, 0), vec![]))
        .unwrap();
    engine
        .remember(&s, vector_memory("other", axis(8, 5), vec![]))
        .unwrap();
    let mut near = axis(8, 0);
    near[1] = 0.3; // cosine 1/sqrt(1.09) = 0.958
    let stored = engine
        .remember(
            &s,
            NewMemory {
                auto_link: true,
                ..vector_memory("second", near, vec![])
            },
        )
        .unwrap();
    // Acknowledged before its automatic links are made (the answer has the explicit ones).
    assert!(stored.links.is_empty(), "{:?}", stored.links);
    engine.link_pending(&s).unwrap();
    assert_eq!(engine.pending_links(&s).unwrap(), 0);
    let got = engine.get(&s, "second").unwrap().unwrap();
    assert_eq!(got.links.len(), 1, "{:?}", got.links);
    assert_eq!(got.links[0].to.as_str(), "first");
    assert!((got.links[0].weight - 1.0 / 1.09f32.sqrt()).abs() < 1e-4);
    // Text memories are embedded by the space's embedder and auto-linked the same way.
    engine
        .remember(
            &s,
            NewMemory::text("the user prefers dark mode in the editor"),
        )
        .unwrap();
    let t = engine
        .remember(
            &s,
            NewMemory::text("the user prefers dark mode in the editor!"),
        )
        .unwrap();
    engine.link_pending(&s).unwrap();
    let t = engine.get(&s, t.id.as_str()).unwrap().unwrap();
    assert_eq!(t.links.len(), 1);
    drop(engine);
    // Durable: the links are in the WAL (a record of their own), read back after a restart.
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    assert_eq!(engine.get(&s, "second").unwrap().unwrap().links, got.links);
    assert_eq!(engine.pending_links(&s).unwrap(), 0);
}

#[test]
fn links_owed_at_a_crash_are_made_after_it_and_a_flush_makes_them_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("default");
    // No background threads (the tests' options): nothing links these memories before the
    // "crash".
    let still = options;
    {
        let engine = Engine::open(dir.path(), still(8)).unwrap();
        engine.remember(&s, auto("a", axis(8, 0))).unwrap();
        engine.remember(&s, auto("b", near(8, 0, 1, 0.1))).unwrap();
        assert_eq!(engine.pending_links(&s).unwrap(), 2);
        assert!(engine.get(&s, "b").unwrap().unwrap().links.is_empty());
        // Dropped without a flush: only the WAL holds them, marked pending.
    }
    {
        let engine = Engine::open(dir.path(), still(8)).unwrap();
        assert_eq!(engine.pending_links(&s).unwrap(), 2, "the marks come back");
        assert_eq!(link_targets(&engine, &s, "b"), Vec::<String>::new());
        // A flush writes no memory whose links are owed: it makes them first.
        engine.remember(&s, auto("c", near(8, 0, 2, 0.1))).unwrap();
        engine.compact().unwrap();
        assert_eq!(engine.pending_links(&s).unwrap(), 0);
        assert_eq!(link_targets(&engine, &s, "b"), ["a"]);
        assert_eq!(link_targets(&engine, &s, "c"), ["a", "b"]);
    }
    // With its background threads, the engine links what a restart brings back by itself.
    {
        let engine = Engine::open(dir.path(), still(8)).unwrap();
        engine.remember(&s, auto("d", near(8, 0, 3, 0.1))).unwrap();
    }
    let mut busy = options(8);
    busy.store.background_compaction = true;
    let engine = Engine::open(dir.path(), busy).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while engine.pending_links(&s).unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the linker did not link d"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(link_targets(&engine, &s, "d"), ["a", "b", "c"]);
}

#[test]
fn self_links_are_refused_and_batches_link_to_earlier_members() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let s = sid("default");
    engine
        .remember(&s, vector_memory("a", axis(8, 0), vec![]))
        .unwrap();
    assert!(engine.link(&s, &mid("a"), &mid("a"), 0.5).is_err());
    let err = engine
        .remember(&s, vector_memory("b", axis(8, 1), vec![link("b", 0.5)]))
        .unwrap_err();
    assert!(err.to_string().contains("itself"), "{err}");
    let mut near = axis(8, 3);
    near[4] = 0.2;
    let stored = engine
        .remember_batch(
            &s,
            vec![
                vector_memory("x", axis(8, 3), vec![]),
                NewMemory {
                    auto_link: true,
                    ..vector_memory("y", near, vec![])
                },
            ],
        )
        .unwrap();
    assert!(stored[1].links.is_empty());
    engine.link_pending(&s).unwrap();
    let y = engine.get(&s, "y").unwrap().unwrap();
    assert_eq!(y.links.len(), 1, "{:?}", y.links);
    assert_eq!(y.links[0].to.as_str(), "x");
}

#[test]
fn the_link_index_is_rebuilt_after_a_restart_and_follows_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    {
        let engine = Engine::open(dir.path(), options(8)).unwrap();
        engine.create_space(&s, Some(8)).unwrap();
        assert_eq!(engine.link_index_memories(&s), None);
        engine.remember(&s, auto("a", axis(8, 0))).unwrap();
        engine.remember(&s, auto("b", near(8, 0, 1, 0.1))).unwrap();
        engine.link_pending(&s).unwrap();
        assert_eq!(link_targets(&engine, &s, "b"), ["a"]);
        assert_eq!(engine.link_index_memories(&s), Some(2));
        // Forgotten: never linked to again, and gone from the index.
        engine.forget(&s, &mid("a")).unwrap();
        assert_eq!(engine.link_index_memories(&s), Some(1));
        engine.remember(&s, auto("c", near(8, 0, 2, 0.1))).unwrap();
        engine.link_pending(&s).unwrap();
        assert_eq!(link_targets(&engine, &s, "c"), ["b"]);
        // Written without auto-linking, still a link target.
        engine
            .remember(&s, vector_memory("d", near(8, 0, 3, 0.1), vec![]))
            .unwrap();
        assert_eq!(engine.link_index_memories(&s), Some(3));
    }
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    assert_eq!(engine.link_index_memories(&s), None);
    engine.remember(&s, auto("e", near(8, 0, 4, 0.1))).unwrap();
    engine.link_pending(&s).unwrap();
    assert_eq!(link_targets(&engine, &s, "e"), ["b", "c", "d"]);
    assert_eq!(engine.link_index_memories(&s), Some(4));
    // Replaced with a far vector: the old version is not linked to.
    engine
        .remember(&s, vector_memory("b", axis(8, 7), vec![]))
        .unwrap();
    engine.remember(&s, auto("f", near(8, 0, 5, 0.1))).unwrap();
    engine.link_pending(&s).unwrap();
    assert_eq!(link_targets(&engine, &s, "f"), ["c", "d", "e"]);
    // A dropped space takes its index with it.
    engine.drop_space(&s).unwrap();
    assert_eq!(engine.link_index_memories(&s), None);
    engine.create_space(&s, Some(8)).unwrap();
    engine.remember(&s, auto("g", axis(8, 0))).unwrap();
    engine.link_pending(&s).unwrap();
    assert!(link_targets(&engine, &s, "g").is_empty());
    assert_eq!(engine.link_index_memories(&s), Some(1));
}

#[test]
fn a_large_space_builds_its_link_index_in_the_background_and_links_once_built() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("big");
    let dim = 16;
    let engine = Engine::open(dir.path(), options(dim as u32)).unwrap();
    engine.create_space(&s, Some(dim as u32)).unwrap();
    // 3,000 memories spread over the sphere (a deterministic pseudo-random walk).
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut batch = Vec::new();
    for i in 0..3000 {
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        batch.push(vector_memory(&format!("m{i}"), v, vec![]));
        if batch.len() == 500 {
            engine
                .remember_batch(&s, std::mem::take(&mut batch))
                .unwrap();
        }
    }
    let target = engine.get(&s, "m1234").unwrap().unwrap().embedding;
    // The first auto-linking write starts the build and is acknowledged at once; its links
    // wait for the index (a flush meanwhile would make them through the store's search).
    for round in 0..50 {
        let mut v = target.clone();
        v[round % dim] += 0.01;
        engine.remember(&s, auto(&format!("q{round}"), v)).unwrap();
        engine.link_pending(&s).unwrap();
        let links = engine.get(&s, &format!("q{round}")).unwrap().unwrap().links;
        assert!(
            links.iter().any(|l| l.to.as_str() == "m1234"),
            "{round}: {links:?}"
        );
        // Forgotten again, so that later rounds (the build takes longer on a loaded
        // machine) are not crowded by their own earlier copies: q17 is q1's vector, and the
        // two of them, with q9 and q12, are nearer each other than to m1234.
        assert!(engine.forget(&s, &mid(&format!("q{round}"))).unwrap());
        if engine.link_index_memories(&s).is_some() && round > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while engine.link_index_memories(&s).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Everything written before and during the build is in it.
    let n = engine.space_status(&s).unwrap().memories;
    assert_eq!(engine.link_index_memories(&s), Some(n));
}
