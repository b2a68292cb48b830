//! The WAL format version 2 fixture (`tests/fixtures/wal-v2/`): a WAL written once by the build
//! that introduced the automatic-link operations (codes 8 and 9), checked in, and read back by
//! every later build. Regenerate (never once released):
//!
//! ```text
//! ENGRAM_WRITE_FIXTURES=1 cargo test -p engram-storage --test format_fixtures \
//!     -- --ignored generate_wal_v2_fixture
//! ```
//!
//! The history: space `links` (dimension 4) is created; `a` is stored plainly and `b` with its
//! links pending (one `RememberAutoLink` record); the linker links `b` to `a` (an `AutoLinks`
//! record); `c` is stored pending and never linked (the "crash").
//!
//! Below the fixture's test, the rules of those operations as the store applies them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::{Link, Memory, MemoryId, SpaceId};
use engram_storage::wal::{decode_record, scan_wal_file, WalFileHeader};
use engram_storage::{AutoLinked, AutoLinker, LinkReader, Op, Store, StoreOptions};

use super::relative_files;

fn wal_v2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v2")
}

fn options() -> StoreOptions {
    StoreOptions {
        background_compaction: false,
        wal_preallocate: false,
        ..StoreOptions::default()
    }
}

fn memory(id: &str, axis: usize) -> Memory {
    let mut embedding = vec![0.0; 4];
    embedding[axis] = 1.0;
    Memory {
        id: MemoryId::new(id).unwrap(),
        content: format!("memory {id}"),
        embedding,
        confidence: 0.5,
        timestamp_us: 1_700_000_000_000_000,
        metadata: Default::default(),
        links: Vec::new(),
    }
}

/// Links every memory to `a` with weight 0.5 (and counts the memories it was asked about).
struct ToA(std::sync::atomic::AtomicUsize);

impl AutoLinker for ToA {
    fn link(
        &self,
        _space: &SpaceId,
        _reader: &dyn LinkReader,
        memories: &[Arc<Memory>],
        _must: bool,
    ) -> Option<Vec<Vec<Link>>> {
        self.0
            .fetch_add(memories.len(), std::sync::atomic::Ordering::Relaxed);
        Some(
            memories
                .iter()
                .map(|_| {
                    vec![Link {
                        to: MemoryId::new("a").unwrap(),
                        weight: 0.5,
                    }]
                })
                .collect(),
        )
    }
}

/// Stops a fixture generator unless `ENGRAM_WRITE_FIXTURES=1` asks to overwrite fixtures.
pub(super) fn require_fixture_writes() {
    assert_eq!(
        std::env::var("ENGRAM_WRITE_FIXTURES").as_deref(),
        Ok("1"),
        "set ENGRAM_WRITE_FIXTURES=1 to overwrite the checked-in fixture"
    );
}

fn space() -> SpaceId {
    SpaceId::new("links").unwrap()
}

#[test]
#[ignore = "writes tests/fixtures/wal-v2; run only to make the fixture, with ENGRAM_WRITE_FIXTURES=1"]
fn generate_wal_v2_fixture() {
    require_fixture_writes();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store.create_space(&space(), 4).unwrap();
        store
            .remember_auto_link(
                &space(),
                vec![(memory("a", 0), false), (memory("b", 1), true)],
            )
            .unwrap();
        store
            .set_auto_linker(Arc::new(ToA(Default::default())))
            .unwrap();
        assert_eq!(store.link_pending(&space()).unwrap(), 1);
        store
            .remember_auto_link(&space(), vec![(memory("c", 2), true)])
            .unwrap();
    }
    let out = wal_v2_dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("wal")).unwrap();
    for name in relative_files(&dir.path().join("wal")) {
        std::fs::copy(
            dir.path().join("wal").join(&name),
            out.join("wal").join(&name),
        )
        .unwrap();
    }
}

#[test]
fn reads_wal_v2_fixture() {
    let src = wal_v2_dir().join("wal");
    let names = relative_files(&src);
    assert_eq!(names.len(), 1, "{names:?}");
    // The records, decoded by the low-level readers: version 2 header, the four operations.
    let bytes = std::fs::read(src.join(&names[0])).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    let header = WalFileHeader::decode(&bytes).unwrap();
    assert_eq!(&header.encode_version(2)[..], &bytes[..32]);
    let out = scan_wal_file(&bytes, true, 1 << 20);
    assert!(out.bad.is_empty() && out.torn_tail.is_none());
    let ops: Vec<&Op> = out.records.iter().map(|r| &r.op).collect();
    assert!(
        matches!(ops[0], Op::SpaceCreate { dimension: 4, .. }),
        "{ops:?}"
    );
    assert_eq!(
        ops[1],
        &Op::RememberAutoLink(vec![(memory("a", 0), false), (memory("b", 1), true)])
    );
    assert_eq!(
        ops[2],
        &Op::AutoLinks(vec![AutoLinked {
            id: MemoryId::new("b").unwrap(),
            // The record that stored b (the space's creation is sequence 1), b second in it.
            key: (2, 1),
            links: vec![Link {
                to: MemoryId::new("a").unwrap(),
                weight: 0.5
            }]
        }])
    );
    assert_eq!(ops[3], &Op::RememberAutoLink(vec![(memory("c", 2), true)]));
    assert_eq!(ops.len(), 4);
    for rec in &out.records {
        let raw = &bytes[rec.offset as usize..(rec.offset + rec.len) as usize];
        let decoded = decode_record(raw, 1 << 20).unwrap();
        assert_eq!(decoded.header.op, rec.op.code());
    }

    // Opened by the store: b has the links the record made, c is still owed its links, and
    // a linker set now makes them (one memory asked about).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("wal")).unwrap();
    std::fs::copy(src.join(&names[0]), dir.path().join("wal").join(&names[0])).unwrap();
    let store = Store::open_dir(dir.path(), options()).unwrap();
    let s = space();
    let b = store.get(&s, "b").unwrap().unwrap();
    assert_eq!(b.links.len(), 1);
    assert_eq!(b.links[0].to.as_str(), "a");
    assert!(store.get(&s, "a").unwrap().unwrap().links.is_empty());
    assert!(store.get(&s, "c").unwrap().unwrap().links.is_empty());
    assert_eq!(store.pending_links(&s).unwrap(), 1);
    let linker = Arc::new(ToA(Default::default()));
    store.set_auto_linker(linker.clone()).unwrap();
    assert_eq!(store.link_pending(&s).unwrap(), 1);
    assert_eq!(linker.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(store.get(&s, "c").unwrap().unwrap().links.len(), 1);
    assert_eq!(store.pending_links(&s).unwrap(), 0);
}

/// A flush makes the links still owed (the linker asked with `must`), and a plain write or a
/// forget of a pending memory takes it off the list.
#[test]
fn a_flush_links_what_is_owed_and_later_writes_cancel_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = space();
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store.create_space(&s, 4).unwrap();
        store
            .remember_auto_link(
                &s,
                vec![
                    (memory("a", 0), false),
                    (memory("b", 1), true),
                    (memory("c", 2), true),
                    (memory("d", 3), true),
                ],
            )
            .unwrap();
        assert_eq!(store.pending_links(&s).unwrap(), 3);
        // c is stored again plainly, d forgotten: only b is still owed.
        store.remember(&s, memory("c", 2)).unwrap();
        store.forget(&s, &MemoryId::new("d").unwrap()).unwrap();
        assert_eq!(store.pending_links(&s).unwrap(), 1);
        let linker = Arc::new(ToA(Default::default()));
        store.set_auto_linker(linker.clone()).unwrap();
        store.compact().unwrap();
        assert_eq!(linker.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(store.pending_links(&s).unwrap(), 0);
        assert_eq!(store.get(&s, "b").unwrap().unwrap().links.len(), 1);
        assert!(store.get(&s, "c").unwrap().unwrap().links.is_empty());
    }
    // In the segment: read back after a restart, nothing owed.
    let store = Store::open_dir(dir.path(), options()).unwrap();
    assert_eq!(store.get(&s, "b").unwrap().unwrap().links.len(), 1);
    assert_eq!(store.pending_links(&s).unwrap(), 0);
}

/// An explicit link added to a memory still owed its automatic links keeps it owed; links
/// made for one version never land on a newer one (which is owed its own).
#[test]
fn explicit_links_keep_the_debt_and_links_follow_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = space();
    let store = Store::open_dir(dir.path(), options()).unwrap();
    store.create_space(&s, 4).unwrap();
    store
        .remember_auto_link(&s, vec![(memory("a", 0), false), (memory("b", 1), true)])
        .unwrap();
    store
        .link(
            &s,
            &MemoryId::new("b").unwrap(),
            &MemoryId::new("a").unwrap(),
            0.9,
        )
        .unwrap();
    assert_eq!(
        store.pending_links(&s).unwrap(),
        1,
        "still owed after the explicit link"
    );
    let linker = Arc::new(ToA(Default::default()));
    store.set_auto_linker(linker).unwrap();
    assert_eq!(store.link_pending(&s).unwrap(), 1);
    let b = store.get(&s, "b").unwrap().unwrap();
    // The explicit link stays as it was; the automatic one to the same memory is not added.
    assert_eq!(b.links.len(), 1);
    assert_eq!(b.links[0].weight, 0.9);
    assert_eq!(store.pending_links(&s).unwrap(), 0);
}

/// Stores a new version of `c` (owed its links too) while the links of the old one are being
/// made, once; links everything to `a`.
struct Replacing {
    store: std::sync::OnceLock<std::sync::Weak<Store>>,
    asked: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl AutoLinker for Replacing {
    fn link(
        &self,
        space: &SpaceId,
        reader: &dyn LinkReader,
        memories: &[Arc<Memory>],
        must: bool,
    ) -> Option<Vec<Vec<Link>>> {
        let first = {
            let mut asked = self.asked.lock().unwrap();
            let first = asked.is_empty();
            asked.extend(memories.iter().map(|m| m.embedding.clone()));
            first
        };
        if first {
            let store = self.store.get().and_then(|w| w.upgrade()).unwrap();
            store
                .remember_auto_link(space, vec![(memory("c", 3), true)])
                .unwrap();
        }
        ToA(Default::default()).link(space, reader, memories, must)
    }
}

#[test]
fn links_made_for_one_version_do_not_settle_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = space();
    let store = Arc::new(Store::open_dir(dir.path(), options()).unwrap());
    store.create_space(&s, 4).unwrap();
    store
        .remember_auto_link(&s, vec![(memory("a", 0), false), (memory("c", 2), true)])
        .unwrap();
    let linker = Arc::new(Replacing {
        store: Default::default(),
        asked: Default::default(),
    });
    linker.store.set(Arc::downgrade(&store)).unwrap();
    store.set_auto_linker(linker.clone()).unwrap();
    // The first round's links were made for c's first version, stored again meanwhile: they
    // are not applied to the second, which a second round links.
    assert_eq!(store.link_pending(&s).unwrap(), 2);
    let asked = linker.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![memory("c", 2).embedding, memory("c", 3).embedding]
    );
    let c = store.get(&s, "c").unwrap().unwrap();
    assert_eq!(c.embedding, memory("c", 3).embedding);
    assert_eq!(c.links.len(), 1);
    assert_eq!(store.pending_links(&s).unwrap(), 0);
}

/// A data directory of WAL version 1 opened by this build: version 2 operations are never
/// written into a version 1 file (its records stay as they were; writing goes on in a file
/// of version 2).
#[test]
fn a_version_1_wal_is_not_written_with_version_2_operations() {
    let dir = tempfile::tempdir().unwrap();
    super::copy_dir(&super::fixture_dir(), dir.path());
    let before: Vec<(String, Vec<u8>)> = relative_files(&dir.path().join("wal"))
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.path().join("wal").join(&n)).unwrap();
            (n, b)
        })
        .collect();
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        let s = SpaceId::new("alpha").unwrap();
        let dim = store.space_meta(&s).unwrap().dimension as usize;
        let mut m = memory("new", 0);
        m.embedding = vec![0.0; dim];
        m.embedding[0] = 1.0;
        store.remember_auto_link(&s, vec![(m, true)]).unwrap();
    }
    for name in relative_files(&dir.path().join("wal")) {
        let bytes = std::fs::read(dir.path().join("wal").join(&name)).unwrap();
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        let out = scan_wal_file(&bytes, false, 1 << 20);
        let new_ops = out
            .records
            .iter()
            .filter(|r| matches!(r.op, Op::RememberAutoLink(_) | Op::AutoLinks(_)))
            .count();
        if version == 1 {
            assert_eq!(new_ops, 0, "{name}: a version 1 file");
            // A file that had records keeps them as they were.
            if let Some((_, old)) = before.iter().find(|(n, _)| n == &name) {
                if old.len() > 32 {
                    assert_eq!(&bytes[..old.len()], &old[..], "{name}");
                }
            }
        } else {
            assert_eq!(version, engram_storage::wal::WAL_FORMAT_VERSION, "{name}");
        }
    }
    let store = Store::open_dir(dir.path(), options()).unwrap();
    assert_eq!(
        store
            .pending_links(&SpaceId::new("alpha").unwrap())
            .unwrap(),
        1
    );
}
