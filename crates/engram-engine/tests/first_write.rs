//! A space created by its first write: it takes that write's dimension (the text embedder's
//! when the write has no embedding), the space and the memories are durable together, and a
//! refused write creates nothing: no space, no memory, no WAL record.

use engram_core::{Link, MemoryId, SpaceId};
use engram_engine::{Engine, EngineError, EngineOptions, NewMemory};
use engram_storage::StoreOptions;

fn sid(s: &str) -> SpaceId {
    SpaceId::new(s).unwrap()
}

fn options() -> EngineOptions {
    EngineOptions {
        store: StoreOptions {
            background_compaction: false,
            ..StoreOptions::default()
        },
        default_dimension: 8,
        ..EngineOptions::default()
    }
}

fn vector(content: &str, e: Vec<f32>) -> NewMemory {
    NewMemory {
        embedding: Some(e),
        ..NewMemory::text(content)
    }
}

/// Bytes in the WAL files: a refused write must not add any.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wal") {
                total += e.metadata().unwrap().len();
            }
        }
    }
    total
}

fn space_ids(engine: &Engine) -> Vec<String> {
    engine
        .list_spaces()
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect()
}

#[test]
fn a_first_write_creates_its_space_with_its_dimension() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), options()).unwrap();
        let two = sid("two");
        let stored = engine.remember(&two, vector("a", vec![1.0, 0.0])).unwrap();
        assert_eq!(engine.space_info(&two).unwrap().dimension, 2);
        assert!(engine.get(&two, stored.id.as_str()).unwrap().is_some());
        // Text only: the text embedder's dimension.
        engine
            .remember(&sid("words"), NewMemory::text("just words"))
            .unwrap();
        assert_eq!(engine.space_info(&sid("words")).unwrap().dimension, 8);
        // A batch: explicit links to earlier members, automatic links among them.
        let batch = vec![
            NewMemory {
                id: Some(MemoryId::new("x").unwrap()),
                ..vector("x", vec![1.0, 0.0, 0.0])
            },
            NewMemory {
                id: Some(MemoryId::new("y").unwrap()),
                links: vec![Link {
                    to: MemoryId::new("x").unwrap(),
                    weight: 0.5,
                }],
                ..vector("y", vec![0.0, 1.0, 0.0])
            },
            NewMemory {
                id: Some(MemoryId::new("z").unwrap()),
                ..vector("z", vec![0.99, 0.1, 0.0])
            },
        ];
        let stored = engine.remember_batch(&sid("three"), batch).unwrap();
        assert_eq!(stored.len(), 3);
        assert_eq!(stored[1].links.len(), 1);
        assert!(
            stored[2].links.iter().any(|l| l.to.as_str() == "x"),
            "z auto-links to x: {:?}",
            stored[2].links
        );
        // The async form too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(engine.remember_async(&sid("four"), vector("w", vec![0.0, 0.0, 0.0, 1.0])))
            .unwrap();
        rt.block_on(engine.remember_batch_async(
            &sid("five"),
            vec![vector("v", vec![1.0; 5]), vector("u", vec![0.5; 5])],
        ))
        .unwrap();
        assert_eq!(engine.space_info(&sid("five")).unwrap().memories, 2);
    }
    // Durable together: after a restart, every space and its memories are there.
    let engine = Engine::open(dir.path(), options()).unwrap();
    assert_eq!(
        space_ids(&engine),
        ["default", "five", "four", "three", "two", "words"]
    );
    for (space, dim, n) in [
        ("two", 2, 1),
        ("three", 3, 3),
        ("four", 4, 1),
        ("five", 5, 2),
        ("words", 8, 1),
    ] {
        let info = engine.space_info(&sid(space)).unwrap();
        assert_eq!((info.dimension, info.memories), (dim, n), "{space}");
    }
    assert_eq!(
        engine.get(&sid("three"), "y").unwrap().unwrap().links.len(),
        1
    );
}

#[test]
fn a_refused_first_write_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options()).unwrap();
    let fresh = sid("fresh");
    let before = wal_bytes(dir.path());
    let refused: Vec<Vec<NewMemory>> = vec![
        // No direction.
        vec![vector("x", vec![0.0, 0.0])],
        // Not finite.
        vec![vector("x", vec![f32::NAN, 1.0])],
        // Empty content.
        vec![vector("", vec![1.0, 0.0])],
        // A link to a memory that does not exist.
        vec![NewMemory {
            links: vec![Link {
                to: MemoryId::new("nowhere").unwrap(),
                weight: 1.0,
            }],
            ..vector("x", vec![1.0, 0.0])
        }],
        // Members of different dimensions.
        vec![
            vector("x", vec![1.0, 0.0]),
            vector("y", vec![1.0, 0.0, 0.0]),
        ],
        // An embedding past the dimension limit.
        vec![vector(
            "x",
            vec![1.0; engram_core::limits::MAX_DIMENSION + 1],
        )],
        // The same id twice.
        vec![
            NewMemory {
                id: Some(MemoryId::new("d").unwrap()),
                ..vector("x", vec![1.0, 0.0])
            },
            NewMemory {
                id: Some(MemoryId::new("d").unwrap()),
                ..vector("y", vec![0.0, 1.0])
            },
        ],
        // Out of range confidence.
        vec![NewMemory {
            confidence: Some(1.5),
            ..vector("x", vec![1.0, 0.0])
        }],
    ];
    for (i, batch) in refused.into_iter().enumerate() {
        let single = batch.len() == 1;
        let err = if single {
            engine
                .remember(&fresh, batch.into_iter().next().unwrap())
                .unwrap_err()
        } else {
            engine.remember_batch(&fresh, batch).unwrap_err()
        };
        assert!(matches!(err, EngineError::Invalid(_)), "case {i}: {err:?}");
        assert!(!engine.space_exists(&fresh).unwrap(), "case {i}");
        assert_eq!(space_ids(&engine), ["default"], "case {i}");
        assert_eq!(
            wal_bytes(dir.path()),
            before,
            "case {i}: a WAL record was written"
        );
    }
    // A write refused by an existing space changes nothing either.
    let default = sid("default");
    let err = engine
        .remember(&default, vector("x", vec![1.0, 0.0]))
        .unwrap_err();
    assert!(err.to_string().contains("the space has 8"), "{err}");
    assert_eq!(wal_bytes(dir.path()), before);
    // The caller can create the space as they meant it.
    engine.create_space(&fresh, Some(2)).unwrap();
    assert_eq!(engine.space_info(&fresh).unwrap().dimension, 2);
}
