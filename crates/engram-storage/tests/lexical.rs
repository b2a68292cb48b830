//! The lexical index through the store: BM25 scores against values computed by hand, and the
//! index kept right through replacement, deletion, flushes, merges, restarts, and lost or
//! damaged `.lex` files.

mod common;

use common::*;
use engram_core::Memory;
use engram_storage::lex_path;
use engram_storage::{LexHit, Store};

const DIM: usize = 4;

fn doc(id: &str, content: &str) -> Memory {
    Memory {
        content: content.to_string(),
        ..memory(id, DIM)
    }
}

fn scores(store: &Store, q: &str) -> Vec<(String, f32)> {
    store
        .lexical_search(&sid("s"), q, 10)
        .unwrap()
        .into_iter()
        .map(|LexHit { id, score }| (id.as_str().to_string(), score))
        .collect()
}

fn close(got: &[(String, f32)], want: &[(&str, f64)]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for ((gid, gs), (wid, ws)) in got.iter().zip(want) {
        assert_eq!(gid, wid, "{got:?} vs {want:?}");
        assert!(
            (*gs as f64 - ws).abs() < 1e-4,
            "{gid}: {gs} against {ws} by hand"
        );
    }
}

/// BM25 by hand (k1 1.2, b 0.75, Lucene's idf) for the corpus below:
/// d1 "apple banana apple" (terms: appl x2, banana; length 3)
/// d2 "banana cherry" (banana, cherri; length 2)
/// d3 "cherry date elderberry fig" (length 4)
/// N = 3, average length 3.
type Scores = Vec<(&'static str, f64)>;

fn by_hand() -> (Scores, Scores) {
    let idf = |df: f64| (1.0 + (3.0 - df + 0.5) / (df + 0.5)).ln();
    let tf = |tf: f64, len: f64| tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / 3.0));
    // "apple": only d1 (tf 2, length 3).
    let apple = vec![("d1", idf(1.0) * tf(2.0, 3.0))];
    // "banana cherries": d2 has both (length 2); d1 banana (length 3); d3 cherry (length 4).
    let mut bc = vec![
        ("d2", idf(2.0) * tf(1.0, 2.0) * 2.0),
        ("d1", idf(2.0) * tf(1.0, 3.0)),
        ("d3", idf(2.0) * tf(1.0, 4.0)),
    ];
    bc.sort_by(|a, b| b.1.total_cmp(&a.1));
    (apple, bc)
}

#[test]
fn bm25_matches_hand_computed_scores_in_memtables_segments_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let (apple, bc) = by_hand();
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&s, DIM as u32).unwrap();
        store.remember(&s, doc("d1", "Apple banana apple")).unwrap();
        store.remember(&s, doc("d2", "banana, cherry!")).unwrap();
        store
            .remember(&s, doc("d3", "cherry date elderberry fig"))
            .unwrap();
        // In the memtable.
        close(&scores(&store, "apple"), &apple);
        close(&scores(&store, "banana cherries"), &bc);
        assert!(scores(&store, "the of and").is_empty());
        assert!(scores(&store, "zucchini").is_empty());
        // In a segment.
        store.compact().unwrap();
        assert!(store.space_status(&s).unwrap().segments >= 1);
        close(&scores(&store, "apple"), &apple);
        close(&scores(&store, "banana cherries"), &bc);
    }
    // After a restart, from the .lex file.
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    close(&scores(&store, "banana cherries"), &bc);
    // The .lex file lost, then damaged: rebuilt from the content.
    let seg_dir = dir.path().join("spaces").join("s");
    let lex: Vec<_> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lex"))
        .collect();
    assert_eq!(lex.len(), 1, "{lex:?}");
    drop(store);
    std::fs::remove_file(&lex[0]).unwrap();
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    close(&scores(&store, "banana cherries"), &bc);
    assert!(lex[0].exists(), "rebuilt and written again");
    drop(store);
    let mut bytes = std::fs::read(&lex[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&lex[0], bytes).unwrap();
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    close(&scores(&store, "banana cherries"), &bc);
}

#[test]
fn replaced_and_forgotten_memories_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    store.create_space(&s, DIM as u32).unwrap();
    for i in 0..30 {
        store
            .remember(&s, doc(&format!("m{i}"), &format!("walrus number {i}")))
            .unwrap();
    }
    store.compact().unwrap();
    // Replaced (new content without the word) and forgotten, in the memtable over segments.
    store.remember(&s, doc("m1", "penguin now")).unwrap();
    store.forget(&s, &mid("m2")).unwrap();
    let check = |store: &Store| {
        let ids: Vec<String> = store
            .lexical_search(&s, "walrus", 100)
            .unwrap()
            .into_iter()
            .map(|h| h.id.as_str().to_string())
            .collect();
        assert_eq!(ids.len(), 28, "{ids:?}");
        assert!(!ids.iter().any(|i| i == "m1" || i == "m2"), "{ids:?}");
        let p = store.lexical_search(&s, "penguins", 10).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id.as_str(), "m1");
        // k bounds the answer.
        assert_eq!(store.lexical_search(&s, "walrus", 5).unwrap().len(), 5);
    };
    check(&store);
    // Flushed: tombstone and new version in a newer segment.
    store.compact().unwrap();
    check(&store);
    drop(store);
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    check(&store);
    // Everything merged into one segment; the inputs' .lex files are gone with them.
    store.compact().unwrap();
    check(&store);
    let seg_dir = dir.path().join("spaces").join("s");
    let files: Vec<String> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let segs = files.iter().filter(|f| f.ends_with(".seg")).count();
    let lexes: Vec<&String> = files.iter().filter(|f| f.ends_with(".lex")).collect();
    assert_eq!(segs, lexes.len(), "{files:?}");
    for l in lexes {
        let seg = seg_dir.join(l.replace(".lex", ".seg"));
        assert!(seg.exists());
        assert_eq!(lex_path(&seg), seg_dir.join(l));
    }
}
