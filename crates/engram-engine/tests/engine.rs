//! The engine end to end on a real directory: recall in each mode with hand-computed
//! activations, isolation of spaces, deletes, batches, restarts (automatic links are in
//! `auto_links.rs`).

mod common;

use std::sync::atomic::Ordering;

use common::*;
use engram_core::{Cue, Link, MemoryId, RecallMode, SpaceId};
use engram_engine::{Engine, EngineError, EngineOptions, NewMemory, RetrievalPath};
use proptest::prelude::*;

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
