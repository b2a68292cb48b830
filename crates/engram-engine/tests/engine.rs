//! The engine end to end on a real directory: remember, auto-links, recall in each mode with
//! hand-computed activations, isolation of spaces, deletes, batches, restarts.

use std::sync::atomic::Ordering;

use engram_core::{Cue, Link, MemoryId, RecallMode, SpaceId};
use engram_engine::{Engine, EngineError, EngineOptions, NewMemory, RetrievalPath};
use engram_storage::StoreOptions;
use proptest::prelude::*;

fn sid(s: &str) -> SpaceId {
    SpaceId::new(s).unwrap()
}

fn mid(s: &str) -> MemoryId {
    MemoryId::new(s).unwrap()
}

fn options(dim: u32) -> EngineOptions {
    EngineOptions {
        store: StoreOptions {
            background_compaction: false,
            index_min_rows: 64,
            ..StoreOptions::default()
        },
        default_dimension: dim,
        ..EngineOptions::default()
    }
}

/// The unit vector along axis `i`.
fn axis(dim: usize, i: usize) -> Vec<f32> {
    let mut v = vec![0.0; dim];
    v[i] = 1.0;
    v
}

fn vector_memory(id: &str, embedding: Vec<f32>, links: Vec<Link>) -> NewMemory {
    NewMemory {
        id: Some(mid(id)),
        content: format!("content of {id}"),
        embedding: Some(embedding),
        links,
        auto_link: false,
        ..Default::default()
    }
}

fn link(to: &str, weight: f32) -> Link {
    Link {
        to: mid(to),
        weight,
    }
}

/// A -> B (0.8) -> C (0.5), orthogonal embeddings, confidence 0.7.
fn chain(engine: &Engine, space: &SpaceId) {
    engine
        .remember(space, vector_memory("c", axis(8, 2), vec![]))
        .unwrap();
    engine
        .remember(space, vector_memory("b", axis(8, 1), vec![link("c", 0.5)]))
        .unwrap();
    engine
        .remember(space, vector_memory("a", axis(8, 0), vec![link("b", 0.8)]))
        .unwrap();
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn spreading_follows_links_with_hand_computed_activations() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let s = sid("default");
    chain(&engine, &s);
    let cue = |mode| Cue {
        mode,
        ..Cue::vector(axis(8, 0))
    };

    // Hybrid: a is matched (similarity 1), b gets 1 x 0.8 x 0.5 = 0.4, c gets 0.4 x 0.5 x 0.5
    // = 0.1; scores are activation x confidence (0.7).
    let r = engine.recall(&s, &cue(RecallMode::Hybrid)).unwrap();
    assert_eq!(r.vivid.len(), 1);
    let a = &r.vivid[0];
    assert_eq!(a.id.as_str(), "a");
    assert!(close(a.similarity, 1.0) && close(a.activation, 1.0) && close(a.score, 0.7));
    assert_eq!(a.retrieval_path, RetrievalPath::Similarity);
    let assoc: Vec<(&str, f32, f32, u32)> = r
        .associated
        .iter()
        .map(|i| (i.id.as_str(), i.activation, i.score, i.hops))
        .collect();
    assert_eq!(assoc.len(), 2, "{assoc:?}");
    assert_eq!((assoc[0].0, assoc[0].3), ("b", 1));
    assert!(close(assoc[0].1, 0.4) && close(assoc[0].2, 0.28));
    assert_eq!((assoc[1].0, assoc[1].3), ("c", 2));
    assert!(close(assoc[1].1, 0.1) && close(assoc[1].2, 0.07));
    let c = &r.associated[1];
    assert_eq!(
        c.path.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(c.retrieval_path, RetrievalPath::Spreading);
    assert!(close(c.similarity, 0.0));

    // Similarity: nothing spreads. Spreading: only what spreading reached.
    let r = engine.recall(&s, &cue(RecallMode::Similarity)).unwrap();
    assert_eq!(r.vivid.len(), 1);
    assert!(r.associated.is_empty());
    let r = engine.recall(&s, &cue(RecallMode::Spreading)).unwrap();
    assert!(r.vivid.is_empty());
    assert_eq!(r.associated.len(), 2);

    // max_hops 1 stops at b.
    let r = engine
        .recall(
            &s,
            &Cue {
                max_hops: 1,
                ..cue(RecallMode::Hybrid)
            },
        )
        .unwrap();
    assert_eq!(r.associated.len(), 1);
    // max_results counts both lists.
    let r = engine
        .recall(
            &s,
            &Cue {
                max_results: 2,
                ..cue(RecallMode::Hybrid)
            },
        )
        .unwrap();
    assert_eq!(r.vivid.len() + r.associated.len(), 2);
}

#[test]
fn deleted_memories_are_never_recalled_and_their_links_lead_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let s = sid("default");
    chain(&engine, &s);
    assert!(engine.forget(&s, &mid("b")).unwrap());
    let r = engine.recall(&s, &Cue::vector(axis(8, 0))).unwrap();
    assert_eq!(r.vivid.len(), 1);
    assert!(r.associated.is_empty(), "{:?}", r.associated);
    // b's own cue finds nothing of b either.
    let r = engine.recall(&s, &Cue::vector(axis(8, 1))).unwrap();
    assert!(r.vivid.iter().all(|i| i.id.as_str() != "b"));
    // The link from a to b went with b.
    assert!(engine.get(&s, "a").unwrap().unwrap().links.is_empty());
}

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
fn spaces_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let (s1, s2) = (sid("alice"), sid("bob"));
    engine.create_space(&s1, None).unwrap();
    engine.create_space(&s2, Some(8)).unwrap();
    assert!(matches!(
        engine.create_space(&s1, None),
        Err(EngineError::Conflict(_))
    ));
    chain(&engine, &s1);
    engine
        .remember(&s2, vector_memory("a", axis(8, 0), vec![]))
        .unwrap();
    // A link into another space's memory is refused: the target is not in this space.
    let err = engine
        .remember(&s2, vector_memory("x", axis(8, 3), vec![link("b", 0.5)]))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let r = engine.recall(&s2, &Cue::vector(axis(8, 0))).unwrap();
    assert_eq!(r.vivid.len(), 1);
    assert_eq!(r.vivid[0].content, "content of a");
    assert!(r.associated.is_empty(), "no spreading into alice's links");
    assert!(engine.get(&s2, "b").unwrap().is_none());
    let names: Vec<String> = engine
        .list_spaces()
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(names, ["alice", "bob", "default"]);
    engine.drop_space(&s1).unwrap();
    assert!(matches!(
        engine.recall(&s1, &Cue::vector(axis(8, 0))),
        Err(EngineError::SpaceNotFound(_))
    ));
    assert!(engine.drop_space(&sid("default")).is_err());
}

#[test]
fn bad_input_is_refused_and_batches_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let s = sid("default");
    let zero = engine
        .remember(&s, vector_memory("z", vec![0.0; 8], vec![]))
        .unwrap_err();
    assert!(zero.to_string().contains("no direction"), "{zero}");
    let short = engine
        .remember(&s, vector_memory("z", vec![1.0; 3], vec![]))
        .unwrap_err();
    assert!(short.to_string().contains("3 dimensions"), "{short}");
    let batch = vec![
        vector_memory("ok1", axis(8, 0), vec![]),
        vector_memory("bad", vec![f32::NAN; 8], vec![]),
    ];
    let err = engine.remember_batch(&s, batch).unwrap_err();
    assert!(err.to_string().starts_with("memory 1:"), "{err}");
    assert!(engine.get(&s, "ok1").unwrap().is_none(), "nothing stored");
    let ok = engine
        .remember_batch(
            &s,
            vec![
                vector_memory("ok1", axis(8, 0), vec![]),
                vector_memory("ok2", axis(8, 1), vec![link("ok1", 0.5)]),
            ],
        )
        .unwrap();
    assert_eq!(ok.len(), 2);
    // Stored embeddings are unit length.
    let mut v = axis(8, 2);
    v[2] = 5.0;
    engine
        .remember(&s, vector_memory("scaled", v, vec![]))
        .unwrap();
    assert_eq!(
        engine.get(&s, "scaled").unwrap().unwrap().embedding,
        axis(8, 2)
    );
    assert!(matches!(
        engine.recall(&s, &Cue::vector(vec![1.0; 3])),
        Err(EngineError::Invalid(_))
    ));
}

#[test]
fn restart_keeps_links_and_reopens_indexes_without_rebuilding() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("default");
    let dim = 16;
    let vec_of = |i: usize| {
        let mut v = axis(dim, i % dim);
        v[(i * 7 + 3) % dim] += 0.5 + (i % 5) as f32 * 0.1;
        v
    };
    {
        let engine = Engine::open(dir.path(), options(dim as u32)).unwrap();
        let batch: Vec<NewMemory> = (0..300)
            .map(|i| vector_memory(&format!("m{i:03}"), vec_of(i), vec![]))
            .collect();
        engine.remember_batch(&s, batch).unwrap();
        engine.link(&s, &mid("m001"), &mid("m002"), 0.9).unwrap();
        engine.compact().unwrap();
        assert_eq!(engine.build_indexes().unwrap(), 1);
    }
    let engine = Engine::open(dir.path(), options(dim as u32)).unwrap();
    let r = engine
        .recall(
            &s,
            &Cue {
                max_results: 100,
                ..Cue::vector(vec_of(1))
            },
        )
        .unwrap();
    assert_eq!(r.vivid[0].id.as_str(), "m001");
    let m002 = r
        .vivid
        .iter()
        .chain(&r.associated)
        .find(|i| i.id.as_str() == "m002")
        .expect("m002 reached");
    // Reached from m001 (similarity 1) along the 0.9 link, decay 0.5 (and maybe matched too).
    assert!(m002.activation >= 0.45 - 1e-5, "{m002:?}");
    let stats = engine.stats();
    assert_eq!(stats.index_loads.load(Ordering::Relaxed), 1);
    assert_eq!(engine.build_indexes().unwrap(), 0);
    assert_eq!(
        stats.index_builds.load(Ordering::Relaxed),
        0,
        "nothing rebuilt"
    );
    assert_eq!(
        engine.get(&s, "m001").unwrap().unwrap().links,
        vec![link("m002", 0.9)]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random memories and links in two spaces, random deletes: a recall in one space never
    /// returns anything of the other, nor anything deleted.
    #[test]
    fn recall_never_crosses_spaces_or_returns_deleted(
        mems in proptest::collection::vec((0usize..2, 0usize..8, proptest::collection::vec(0usize..40, 0..4)), 1..40),
        deletes in proptest::collection::vec(0usize..40, 0..10),
        cue_axis in 0usize..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), options(8)).unwrap();
        let spaces = [sid("p"), sid("q")];
        for s in &spaces {
            engine.create_space(s, None).unwrap();
        }
        let mut owner = std::collections::HashMap::new();
        for (i, (sp, ax, targets)) in mems.iter().enumerate() {
            let id = format!("{}{i}", ["p", "q"][*sp]);
            let links: Vec<Link> = targets
                .iter()
                .map(|t| format!("{}{t}", ["p", "q"][*sp]))
                .filter(|t| owner.get(t) == Some(sp))
                .map(|t| link(&t, 0.9))
                .collect();
            let mut v = axis(8, *ax);
            v[(ax + 1) % 8] = 0.3;
            engine
                .remember(&spaces[*sp], NewMemory { auto_link: true, ..vector_memory(&id, v, links) })
                .unwrap();
            owner.insert(id, *sp);
        }
        let mut deleted = std::collections::HashSet::new();
        for d in deletes {
            for (sp, s) in spaces.iter().enumerate() {
                let id = format!("{}{d}", ["p", "q"][sp]);
                if engine.forget(s, &mid(&id)).unwrap() {
                    deleted.insert(id);
                }
            }
        }
        for (sp, s) in spaces.iter().enumerate() {
            let r = engine
                .recall(s, &Cue { max_results: 50, ..Cue::vector(axis(8, cue_axis)) })
                .unwrap();
            for item in r.vivid.iter().chain(&r.associated) {
                prop_assert_eq!(owner.get(item.id.as_str()), Some(&sp), "{} from the wrong space", item.id);
                prop_assert!(!deleted.contains(item.id.as_str()), "{} was deleted", item.id);
                prop_assert!((0.0..=1.0).contains(&item.activation));
            }
        }
    }
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

/// A unit vector close to axis `i` (similarity about 0.995 to it), tilted towards axis `j`.
fn near(dim: usize, i: usize, j: usize, tilt: f32) -> Vec<f32> {
    let mut v = axis(dim, i);
    v[j] = tilt;
    let n = (1.0 + tilt * tilt).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn auto(id: &str, embedding: Vec<f32>) -> NewMemory {
    NewMemory {
        auto_link: true,
        ..vector_memory(id, embedding, vec![])
    }
}

fn link_targets(engine: &Engine, space: &SpaceId, id: &str) -> Vec<String> {
    let mut t: Vec<String> = engine
        .get(space, id)
        .unwrap()
        .unwrap()
        .links
        .iter()
        .map(|l| l.to.to_string())
        .collect();
    t.sort();
    t
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

#[test]
fn text_cues_fuse_dense_and_lexical_matches_and_say_which_found_each() {
    use engram_core::Retrieval;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(64)).unwrap();
    let s = sid("default");
    let texts = [
        ("cat", "the cat chased a mouse around the kitchen"),
        ("dog", "a dog barked at the mailman"),
        ("ship", "the cargo ship left the harbour at dawn"),
        ("cats", "cats sleep most of the day"),
    ];
    for (id, t) in texts {
        let mut m = NewMemory::text(t);
        m.id = Some(MemoryId::new(id).unwrap());
        m.auto_link = false;
        engine.remember(&s, m).unwrap();
    }
    let recall = |q: &str, r: Option<Retrieval>| {
        engine
            .recall(
                &s,
                &Cue {
                    retrieval: r,
                    mode: RecallMode::Similarity,
                    ..Cue::text(q)
                },
            )
            .unwrap()
    };
    // Lexical: only memories holding a term (stemmed: "cats" matches "cat" too).
    let r = recall("cat", Some(Retrieval::Lexical));
    assert_eq!(r.retrieval, Retrieval::Lexical);
    let ids: Vec<&str> = r.vivid.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"cat") && ids.contains(&"cats"));
    assert!(r.vivid.iter().all(|i| i.found_by.names() == ["lexical"]));
    // Dense: every memory with a positive similarity, found by the embedding.
    let r = recall("cat", Some(Retrieval::Dense));
    assert!(r.vivid.iter().all(|i| i.found_by.names() == ["dense"]));
    // Hybrid, the default for text: the best BM25 match, also the nearest embedding, leads
    // with activation 0.5 x 1 + 0.5 x its similarity (the default convex fusion) and says both
    // paths found it.
    let r = recall("the cat chased a mouse", None);
    assert_eq!(r.retrieval, Retrieval::Hybrid);
    let top = &r.vivid[0];
    assert_eq!(top.id.as_str(), "cat");
    assert_eq!(top.found_by.names(), ["dense", "lexical"]);
    assert!(top.similarity > 0.5 && top.similarity <= 1.0 + 1e-6);
    assert!(
        (top.activation - (0.5 + 0.5 * top.similarity)).abs() < 1e-5,
        "{top:?}"
    );
    // Reciprocal-rank fusion, the alternative: first in both lists is activation 1.
    let dir2 = tempfile::tempdir().unwrap();
    let rrf = Engine::open(
        dir2.path(),
        EngineOptions {
            fusion: engram_engine::Fusion::ReciprocalRank,
            ..options(64)
        },
    )
    .unwrap();
    for (id, t) in texts {
        let mut m = NewMemory::text(t);
        m.id = Some(MemoryId::new(id).unwrap());
        m.auto_link = false;
        rrf.remember(&s, m).unwrap();
    }
    let r = rrf
        .recall(
            &s,
            &Cue {
                mode: RecallMode::Similarity,
                ..Cue::text("the cat chased a mouse")
            },
        )
        .unwrap();
    assert_eq!(r.vivid[0].id.as_str(), "cat");
    assert!(
        (r.vivid[0].activation - 1.0).abs() < 1e-6,
        "{:?}",
        r.vivid[0]
    );
    // A vector cue is dense only.
    let e = engine.get(&s, "dog").unwrap().unwrap().embedding;
    let r = engine.recall(&s, &Cue::vector(e.clone())).unwrap();
    assert_eq!(r.retrieval, Retrieval::Dense);
    let bad = engine.recall(
        &s,
        &Cue {
            retrieval: Some(Retrieval::Lexical),
            ..Cue::vector(e)
        },
    );
    assert!(matches!(bad, Err(EngineError::Invalid(m)) if m.contains("text query")));
    // Forgotten: gone from every path.
    engine.forget(&s, &MemoryId::new("cat").unwrap()).unwrap();
    for r in [None, Some(Retrieval::Lexical), Some(Retrieval::Dense)] {
        assert!(recall("the cat chased a mouse", r)
            .vivid
            .iter()
            .all(|i| i.id.as_str() != "cat"));
    }
}

#[test]
fn a_batch_over_the_limit_is_refused_by_the_engine_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options(8)).unwrap();
    let s = sid("default");
    let n = engram_core::limits::MAX_BATCH + 1;
    let batch: Vec<NewMemory> = (0..n)
        .map(|i| vector_memory(&format!("m{i}"), axis(8, i % 8), vec![]))
        .collect();
    let err = engine.remember_batch(&s, batch).unwrap_err();
    assert!(matches!(err, EngineError::Invalid(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        EngineError::Invalid(format!(
            "a batch of {n} memories exceeds the limit of {}",
            engram_core::limits::MAX_BATCH
        ))
        .to_string()
    );
    assert!(engine.get(&s, "m0").unwrap().is_none(), "nothing stored");
}
