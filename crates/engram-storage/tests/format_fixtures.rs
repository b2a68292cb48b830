//! On-disk format version 1 fixtures (`tests/fixtures/v1/`): a store written once by the engine
//! that introduced version 1, checked in, read back by every later build (`docs/format.md`).
//!
//! Regenerate (only to replace the v1 fixtures deliberately, never once they are released):
//! ```text
//! ENGRAM_WRITE_FIXTURES=1 cargo test -p engram-storage --test format_fixtures \
//!     -- --ignored generate_v1_fixtures
//! ```
//!
//! Written by one thread with the compactor off: deterministic, but for the wall-clock times in
//! WAL records and `space.meta` (`created_at_us`).
//!
//! `tests/fixtures/index-v1/` holds HNSW index files of index format version 1 (graph only, no
//! codes) for alpha's and beta's segments, written by the build of commit 888c40b (the last
//! that wrote version 1) with `index::build_and_write` and the default parameters of that
//! version. They are not regenerated: version 2 is written today. The reading test puts them
//! beside their segments and checks that they are loaded, used, and give the exact answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

#[path = "common.rs"]
mod common;
#[path = "format_fixtures/index_v1.rs"]
mod index_v1;
#[path = "format_fixtures/wal_v2.rs"]
mod wal_v2;
#[path = "format_fixtures/wal_v3.rs"]
mod wal_v3;
#[path = "format_fixtures/wal_v4.rs"]
mod wal_v4;
#[path = "format_fixtures/wal_v5.rs"]
mod wal_v5;
#[path = "format_fixtures/wal_v6.rs"]
mod wal_v6;

use index_v1::{check_index_files, INDEX_FIXTURE_FILES};

use engram_core::{Link, Memory, MemoryId, SpaceId};
use engram_storage::segment::{parse_segment_file_name, Lookup, Segment, SEGMENT_FORMAT_VERSION};
use engram_storage::wal::{
    decode_record, encode_record, parse_wal_file_name, scan_wal_file, WalFileHeader,
    RECORD_HEADER_LEN, WAL_FILE_HEADER_LEN, WAL_FORMAT_VERSION,
};
use engram_storage::{Op, RealDisk, Store, StoreOptions};
use engram_storage::{SpaceMeta, SPACE_META_FILE};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn sid(s: &str) -> SpaceId {
    SpaceId::new(s).unwrap()
}

fn mid(s: &str) -> MemoryId {
    MemoryId::new(s).unwrap()
}

/// A memory whose every field is derived from its arguments. Embedding values are multiples of
/// 1/16, exact in f32.
fn mem(
    id: &str,
    dim: usize,
    content: &str,
    meta: &[(&str, &str)],
    links: &[(&str, f32)],
) -> Memory {
    let seed = id.bytes().map(u32::from).sum::<u32>() % 16;
    Memory {
        id: mid(id),
        content: content.to_string(),
        embedding: (0..dim)
            .map(|i| (seed + i as u32) as f32 / 16.0 - 0.5)
            .collect(),
        confidence: 0.25 + (seed % 4) as f32 * 0.25,
        timestamp_us: 1_700_000_000_000_000 + i64::from(seed) * 1_000_000,
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        links: links
            .iter()
            .map(|(to, weight)| Link {
                to: mid(to),
                weight: *weight,
            })
            .collect(),
    }
}

const ALPHA_DIM: usize = 8;
const BETA_DIM: usize = 3;
const GONE_DIM: usize = 8;
const TEMP_DIM: usize = 2;

fn a(id: &str, content: &str, meta: &[(&str, &str)], links: &[(&str, f32)]) -> Memory {
    mem(id, ALPHA_DIM, content, meta, links)
}

fn b(id: &str, content: &str, meta: &[(&str, &str)], links: &[(&str, f32)]) -> Memory {
    mem(id, BETA_DIM, content, meta, links)
}

fn a1() -> Memory {
    a("a1", "alpha one", &[("kind", "note"), ("lang", "en")], &[])
}
fn a2_v2() -> Memory {
    a(
        "a2",
        "alpha two, revised",
        &[("kind", "fact"), ("rev", "2")],
        &[],
    )
}
fn a6_v1() -> Memory {
    a("a6", "alpha six", &[], &[])
}
fn a6_v2() -> Memory {
    a("a6", "alpha six, revised", &[("rev", "2")], &[])
}

/// One step of the fixture's history, done through the public store API. The WAL record a step
/// writes is the `Op` itself (for `SpaceCreate`, with the wall-clock creation time).
type Step = (&'static str, Op);

fn phase1() -> Vec<Step> {
    vec![
        ("alpha", create(ALPHA_DIM)),
        ("beta", create(BETA_DIM)),
        ("gone", create(GONE_DIM)),
        ("alpha", Op::Remember(a1())),
        (
            "alpha",
            Op::Remember(a("a2", "alpha two", &[("kind", "fact")], &[])),
        ),
        ("alpha", Op::Remember(a("a3", "alpha three", &[], &[]))),
        (
            "alpha",
            Op::RememberBatch(vec![
                a("a4", "alpha four", &[("batch", "1")], &[]),
                a("a5", "alpha five", &[("batch", "1")], &[("a1", 1.0)]),
            ]),
        ),
        ("alpha", link("a1", "a2", 0.5)),
        ("alpha", link("a1", "a3", 0.25)),
        ("alpha", Op::Forget(mid("a3"))),
        (
            "beta",
            Op::Remember(b("b1", "beta one", &[("k", "v")], &[])),
        ),
        (
            "beta",
            Op::Remember(b("b2", "beta two", &[], &[("b1", 1.0)])),
        ),
        (
            "gone",
            Op::Remember(mem("g1", GONE_DIM, "gone one", &[], &[])),
        ),
    ]
}

fn phase2() -> Vec<Step> {
    vec![
        ("alpha", Op::Remember(a6_v1())),
        ("alpha", Op::Remember(a2_v2())),
        ("alpha", Op::Forget(mid("a4"))),
        ("alpha", link("a6", "a1", 1.0)),
        ("beta", Op::Remember(b("b3", "beta three", &[], &[]))),
        ("beta", link("b3", "b1", 0.125)),
    ]
}

fn phase3() -> Vec<Step> {
    vec![
        ("alpha", Op::Forget(mid("a1"))),
        ("alpha", Op::Remember(a6_v2())),
        (
            "beta",
            Op::RememberBatch(vec![
                b("b4", "beta four", &[("batch", "2")], &[]),
                b("b5", "beta five", &[("batch", "2")], &[("b4", 0.75)]),
            ]),
        ),
    ]
}

/// Left in the WAL only.
fn phase4() -> Vec<Step> {
    vec![
        ("alpha", Op::Remember(a("a7", "alpha seven", &[], &[]))),
        ("alpha", Op::Forget(mid("a5"))),
        ("alpha", link("a2", "a6", 0.75)),
        (
            "alpha",
            Op::RememberBatch(vec![
                a("a8", "alpha eight", &[("batch", "3")], &[]),
                a("a9", "alpha nine", &[("batch", "3")], &[]),
            ]),
        ),
        ("alpha", link("a7", "a8", 0.5)),
        ("alpha", link("a7", "a9", 0.3)),
        (
            "alpha",
            Op::Unlink {
                from: mid("a7"),
                to: mid("a8"),
            },
        ),
        ("beta", Op::Forget(mid("b2"))),
        (
            "beta",
            Op::Unlink {
                from: mid("b3"),
                to: mid("b1"),
            },
        ),
        (
            "beta",
            Op::Remember(b("b6", "beta six", &[("k", "w")], &[])),
        ),
        ("gone", Op::SpaceDrop),
        ("temp", create(TEMP_DIM)),
        (
            "temp",
            Op::Remember(mem("t1", TEMP_DIM, "temp one", &[], &[])),
        ),
        ("temp", Op::SpaceDrop),
    ]
}

fn create(dim: usize) -> Op {
    Op::SpaceCreate {
        dimension: dim as u32,
        created_at_us: 0,
        embedder: String::new(),
    }
}

fn link(from: &str, to: &str, weight: f32) -> Op {
    Op::Link {
        from: mid(from),
        to: mid(to),
        weight,
    }
}

fn run(store: &Store, steps: Vec<Step>) {
    for (space, op) in steps {
        let s = sid(space);
        match op {
            Op::Remember(m) => {
                store.remember(&s, m).unwrap();
            }
            Op::RememberBatch(ms) => {
                store.remember_batch(&s, ms).unwrap();
            }
            Op::Forget(id) => assert!(store.forget(&s, &id).unwrap()),
            Op::Link { from, to, weight } => {
                store.link(&s, &from, &to, weight).unwrap();
            }
            Op::Unlink { from, to } => {
                store.unlink(&s, &from, &to).unwrap();
            }
            Op::SpaceCreate { dimension, .. } => {
                store.create_space(&s, dimension).unwrap();
            }
            Op::SpaceDrop => {
                store.drop_space(&s).unwrap();
            }
            Op::RememberAutoLink(_) | Op::AutoLinks(_) => {
                unreachable!("version 1 has no automatic-link operations")
            }
            Op::RaftEntry(_)
            | Op::RaftMeta(_)
            | Op::RaftTruncate(_)
            | Op::Request(_)
            | Op::Meta(_) => {
                unreachable!("version 1 has neither raft records nor keyed writes")
            }
        }
    }
}

/// Small WAL files, so the WAL part of the fixture spans several files.
fn generation_options() -> StoreOptions {
    StoreOptions {
        wal_segment_bytes: 384,
        max_record_bytes: 384,
        max_pending_bytes: 1 << 20,
        background_compaction: false,
        ..Default::default()
    }
}

/// Writes `tests/fixtures/v1/`. Run only on purpose (see the module documentation).
#[test]
#[ignore = "writes the checked-in fixtures; run with ENGRAM_WRITE_FIXTURES=1"]
fn generate_v1_fixtures() {
    if std::env::var_os("ENGRAM_WRITE_FIXTURES").is_none_or(|v| v != "1") {
        eprintln!("ENGRAM_WRITE_FIXTURES=1 is not set: fixtures left as they are");
        return;
    }
    let dir = fixture_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open_dir(&dir, generation_options()).unwrap();
    // Flushed to one segment per space.
    run(&store, phase1());
    store.compact().unwrap();
    // A second segment per space (alpha's with a tombstone), then merged into one.
    run(&store, phase2());
    store.compact().unwrap();
    store.merge_all().unwrap();
    // A segment newer than the merged one, with a tombstone of an id in the merged segment; the
    // checkpoint removes every WAL file written so far.
    run(&store, phase3());
    store.compact().unwrap();
    // Records left in the WAL: replayed on open. `gone` is dropped with its directory still on
    // disk; `temp` lives and dies in the WAL.
    run(&store, phase4());
    drop(store);
    for entry in walk(&dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file left: {name}");
    }
}

/// Every file below `dir`, relative to it with `/` separators, sorted.
fn relative_files(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .map(|p| {
            p.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

/// Every file below `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What the store holds after the whole history, by space.
fn expected_state() -> BTreeMap<&'static str, (u32, Vec<Memory>)> {
    let alpha = vec![
        a(
            "a2",
            "alpha two, revised",
            &[("kind", "fact"), ("rev", "2")],
            &[("a6", 0.75)],
        ),
        a6_v2(),
        a("a7", "alpha seven", &[], &[("a9", 0.3)]),
        a("a8", "alpha eight", &[("batch", "3")], &[]),
        a("a9", "alpha nine", &[("batch", "3")], &[]),
    ];
    let beta = vec![
        b("b1", "beta one", &[("k", "v")], &[]),
        b("b3", "beta three", &[], &[]),
        b("b4", "beta four", &[("batch", "2")], &[]),
        b("b5", "beta five", &[("batch", "2")], &[("b4", 0.75)]),
        b("b6", "beta six", &[("k", "w")], &[]),
    ];
    [
        ("alpha", (ALPHA_DIM as u32, alpha)),
        ("beta", (BETA_DIM as u32, beta)),
    ]
    .into()
}

/// The files of the fixture, relative to its root.
const FIXTURE_FILES: &[&str] = &[
    "spaces/alpha/00000000000000000001-00000000000000000017.seg",
    "spaces/alpha/00000000000000000020-00000000000000000021.seg",
    "spaces/alpha/space.meta",
    "spaces/beta/00000000000000000002-00000000000000000019.seg",
    "spaces/beta/00000000000000000022-00000000000000000022.seg",
    "spaces/beta/space.meta",
    "spaces/gone/00000000000000000003-00000000000000000013.seg",
    "spaces/gone/space.meta",
    "wal/00000000000000000023.wal",
    "wal/00000000000000000026.wal",
    "wal/00000000000000000030.wal",
    "wal/00000000000000000036.wal",
];

/// Per segment file: (space, ids of its rows, its tombstones).
const SEGMENTS: &[(&str, &[&str], &[&str])] = &[
    ("alpha", &["a1", "a2", "a5", "a6"], &[]),
    ("alpha", &["a6"], &["a1"]),
    ("beta", &["b1", "b2", "b3"], &[]),
    ("beta", &["b4", "b5"], &[]),
    ("gone", &["g1"], &[]),
];

/// (space, created_seq, dimension) of every `space.meta`.
const SPACE_METAS: &[(&str, u64, u32)] = &[
    ("alpha", 1, ALPHA_DIM as u32),
    ("beta", 2, BETA_DIM as u32),
    ("gone", 3, GONE_DIM as u32),
];

const FIRST_WAL_SEQUENCE: u64 = 23;

#[test]
fn reads_v1_fixtures() {
    let src = fixture_dir();
    let rel = relative_files(&src);
    assert_eq!(rel, FIXTURE_FILES, "the v1 fixture files");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("v1");
    copy_dir(&src, &root);

    check_wal_files(&root);
    check_segment_files(&root);
    check_space_metas(&root);
    check_index_files(&root);

    let opts = StoreOptions {
        background_compaction: false,
        ..Default::default()
    };
    let store = Store::open_dir(&root, opts).unwrap();
    let recovery = store.status().recovery;
    assert_eq!(recovery.wal_files, 4);
    assert_eq!(recovery.records_replayed, phase4().len() as u64);
    assert_eq!(recovery.records_skipped, 0);
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(recovery.quarantined, 0);
    assert_eq!(store.list_spaces(), vec![sid("alpha"), sid("beta")]);
    for gone in ["gone", "temp"] {
        assert!(
            !store.space_exists(&sid(gone)).unwrap(),
            "{gone} was dropped"
        );
    }
    for (space, (dim, memories)) in expected_state() {
        let s = sid(space);
        let meta = store.space_meta(&s).unwrap();
        assert_eq!(meta.dimension, dim, "{space}");
        assert!(meta.created_at_us > 1_600_000_000_000_000, "{space}");
        let mut all = BTreeMap::new();
        store
            .for_each(&s, |m| {
                all.insert(m.id.as_str().to_string(), m);
            })
            .unwrap();
        let want: BTreeMap<String, Memory> = memories
            .iter()
            .map(|m| (m.id.as_str().to_string(), m.clone()))
            .collect();
        assert_eq!(all, want, "every live memory of {space}");
        for m in &memories {
            assert_eq!(store.get(&s, m.id.as_str()).unwrap().as_ref(), Some(m));
        }
        let status = store.space_status(&s).unwrap();
        assert_eq!(status.memories, memories.len(), "{space}");
        assert_eq!(status.segments, 2, "{space}");
    }
    let alpha = sid("alpha");
    for deleted in ["a1", "a3", "a4", "a5"] {
        assert_eq!(store.get(&alpha, deleted).unwrap(), None, "{deleted}");
    }
    assert_eq!(store.get(&sid("beta"), "b2").unwrap(), None);
    assert_eq!(store.space_status(&alpha).unwrap().flushed_seq, 21);
    assert_eq!(store.space_status(&sid("beta")).unwrap().flushed_seq, 22);
    let written = store.status().written_seq;
    assert_eq!(
        written,
        FIRST_WAL_SEQUENCE + phase4().len() as u64 - 1,
        "the next sequence follows the last record"
    );
    // The version 1 indexes were loaded as they are, none rebuilt, and a search through them by
    // a memory's own embedding ranks every live memory by its exact similarity.
    let stats = store.stats();
    assert_eq!(
        stats.index_loads.load(Ordering::Relaxed),
        INDEX_FIXTURE_FILES.len() as u64
    );
    assert_eq!(stats.index_builds.load(Ordering::Relaxed), 0);
    for (space, (_, memories)) in expected_state() {
        let s = sid(space);
        for m in &memories {
            let hits = store.search(&s, &m.embedding, memories.len(), 32).unwrap();
            let mut found: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
            found.sort_unstable();
            let mut live: Vec<&str> = memories.iter().map(|m| m.id.as_str()).collect();
            live.sort_unstable();
            assert_eq!(found, live, "{space}");
            for pair in hits.windows(2) {
                assert!(
                    pair[0].similarity >= pair[1].similarity,
                    "{space}: best first"
                );
            }
            for h in &hits {
                let other = memories.iter().find(|o| o.id == h.id).unwrap();
                let dot: f32 = m
                    .embedding
                    .iter()
                    .zip(&other.embedding)
                    .map(|(x, y)| x * y)
                    .sum();
                assert!((h.similarity - dot).abs() < 1e-4, "{space}: {}", h.id);
            }
        }
    }
}

/// Every WAL file: version 1 header, records that verify, decode, re-encode to the same bytes,
/// and are exactly the phase 4 history.
fn check_wal_files(root: &Path) {
    let wal = root.join("wal");
    let mut names: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut records = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let first = parse_wal_file_name(name).expect("a WAL file name");
        let bytes = std::fs::read(wal.join(name)).unwrap();
        assert_eq!(&bytes[0..8], b"ENGRWAL\0");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        assert_eq!(
            WAL_FORMAT_VERSION, 6,
            "this build writes version 6 and reads 1 to 5"
        );
        let header = WalFileHeader::decode(&bytes).unwrap();
        assert_eq!(header.first_sequence, first, "{name}");
        assert_eq!(&header.encode_version(1)[..], &bytes[..WAL_FILE_HEADER_LEN]);
        let out = scan_wal_file(&bytes, i == names.len() - 1, 1 << 20);
        assert_eq!(out.header, Some(header));
        assert!(out.bad.is_empty(), "{name}: {:?}", out.bad);
        assert!(out.torn_tail.is_none(), "{name}: {:?}", out.torn_tail);
        let mut end = WAL_FILE_HEADER_LEN as u64;
        for rec in &out.records {
            assert_eq!(rec.offset, end, "{name}: records are back to back");
            end += rec.len;
            let raw = &bytes[rec.offset as usize..(rec.offset + rec.len) as usize];
            let decoded = decode_record(raw, 1 << 20).unwrap();
            assert_eq!(decoded.len, raw.len());
            assert_eq!(decoded.header.sequence, rec.sequence);
            assert_eq!(decoded.header.op, rec.op.code());
            assert_eq!(
                decoded.len,
                RECORD_HEADER_LEN + rec.space.as_str().len() + decoded.payload.len()
            );
            let mut payload = Vec::new();
            rec.op.encode_payload(&mut payload);
            assert_eq!(payload, decoded.payload);
            let mut again = Vec::new();
            encode_record(
                &mut again,
                rec.sequence,
                rec.timestamp_us,
                &rec.space,
                rec.op.code(),
                &payload,
            );
            assert_eq!(again, raw, "{name}: record {} re-encodes", rec.sequence);
            assert!(rec.timestamp_us > 1_600_000_000_000_000);
        }
        assert_eq!(end, bytes.len() as u64, "{name}: no trailing bytes");
        if let Some(r) = out.records.first() {
            assert!(r.sequence >= first);
        }
        records.extend(out.records);
    }
    let want = phase4();
    assert_eq!(records.len(), want.len());
    for (k, (rec, (space, op))) in records.iter().zip(want).enumerate() {
        assert_eq!(rec.sequence, FIRST_WAL_SEQUENCE + k as u64);
        assert_eq!(rec.space.as_str(), space);
        match (&rec.op, &op) {
            (
                Op::SpaceCreate { dimension, .. },
                Op::SpaceCreate {
                    dimension: want, ..
                },
            ) => assert_eq!(dimension, want),
            (got, want) => assert_eq!(got, want, "record {}", rec.sequence),
        }
    }
}

/// Every segment: version 1 footer, structure valid on open, every column CRC verifies, rows and
/// tombstones as expected, and the footer's sequence range matches the file name.
fn check_segment_files(root: &Path) {
    let mut segments = Vec::new();
    for path in walk(&root.join("spaces")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some((min, max)) = parse_segment_file_name(&name) {
            segments.push((path, min, max));
        }
    }
    assert_eq!(segments.len(), SEGMENTS.len());
    for ((path, min, max), (space, ids, tombstones)) in segments.iter().zip(SEGMENTS) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len() % 64, 0, "{}", path.display());
        let footer = &bytes[bytes.len() - 320..];
        assert_eq!(&footer[0..8], b"ENGRSEG\0");
        assert_eq!(u32::from_le_bytes(footer[8..12].try_into().unwrap()), 1);
        assert_eq!(SEGMENT_FORMAT_VERSION, 1);
        let seg = Segment::open(&RealDisk, path).unwrap();
        seg.verify().unwrap();
        let info = seg.info();
        assert_eq!((info.min_seq, info.max_seq), (*min, *max));
        let dim = SPACE_METAS
            .iter()
            .find(|m| m.0 == *space)
            .map(|m| m.2 as usize)
            .unwrap();
        assert_eq!(info.dimension, dim, "{}", path.display());
        assert_eq!(info.stride, 16);
        assert_eq!(info.rows, ids.len());
        assert_eq!(info.tombstones, tombstones.len());
        for (row, id) in ids.iter().enumerate() {
            assert_eq!(seg.id(row).unwrap(), *id);
            assert_eq!(seg.find(id).unwrap(), Lookup::Row(row));
            let m = seg.memory(row).unwrap();
            assert_eq!(m.embedding.len(), dim);
            // Embedding rows are padded with zeros to the stride.
            let col = seg.embedding_column();
            assert!(col[row * info.stride + dim..(row + 1) * info.stride]
                .iter()
                .all(|v| *v == 0.0));
        }
        for (t, id) in tombstones.iter().enumerate() {
            assert_eq!(seg.tombstone(t).unwrap(), *id);
            assert_eq!(seg.find(id).unwrap(), Lookup::Tombstone);
        }
    }
    // Spot checks of row contents: the merged alpha segment keeps a1 (deleted later, by the
    // tombstone in the newer segment) with its links.
    let merged = Segment::open(&RealDisk, &segments[0].0).unwrap();
    assert_eq!(
        merged.memory(0).unwrap(),
        a(
            "a1",
            "alpha one",
            &[("kind", "note"), ("lang", "en")],
            &[("a2", 0.5), ("a3", 0.25)]
        )
    );
    assert_eq!(merged.memory(1).unwrap(), a2_v2());
    assert_eq!(
        merged.memory(3).unwrap(),
        a("a6", "alpha six", &[], &[("a1", 1.0)])
    );
    let newer = Segment::open(&RealDisk, &segments[1].0).unwrap();
    assert_eq!(newer.memory(0).unwrap(), a6_v2());
}

fn check_space_metas(root: &Path) {
    for (space, created_seq, dimension) in SPACE_METAS {
        let bytes = std::fs::read(root.join("spaces").join(space).join(SPACE_META_FILE)).unwrap();
        assert_eq!(bytes.len(), 36);
        assert_eq!(&bytes[0..8], b"ENGRSPC\0");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        let meta = SpaceMeta::decode(&bytes).unwrap();
        assert_eq!(meta.dimension, *dimension, "{space}");
        assert_eq!(meta.created_seq, *created_seq, "{space}");
        assert!(meta.created_at_us > 1_600_000_000_000_000);
        assert_eq!(meta.encode(), bytes);
    }
}
