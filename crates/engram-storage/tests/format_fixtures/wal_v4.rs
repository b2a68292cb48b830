//! The WAL format version 4 fixture (`tests/fixtures/wal-v4/`): a data directory written once
//! by the build that introduced the keyed write (code 13) and `requests.table`, checked in, and
//! read back by every later build. Regenerate (never once released):
//!
//! ```text
//! ENGRAM_WRITE_FIXTURES=1 cargo test -p engram-storage --test format_fixtures \
//!     -- --ignored generate_wal_v4_fixture
//! ```
//!
//! The history, all in the unreplicated space `keyed`: its creation with the key `create-1`,
//! a batch of `a` and `b` with `k-1`, `c` without a key, a forget of `b` with `k-2`; a flush
//! (so `requests.table` holds those three keys, and the checkpoint drops their records from
//! the WAL); then a link `a -> c` with `k-3`, in the WAL only.

use std::path::{Path, PathBuf};

use engram_core::{MemoryId, SpaceId};
use engram_storage::requests::{decode_table_file, Answer, REQUESTS_FILE};
use engram_storage::{op_code, Command, Op, Store};

use super::wal_v3::{memory, options};

const AT: i64 = 1_800_000_000_000_000;

fn wal_v4_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v4")
}

fn space() -> SpaceId {
    SpaceId::new("keyed").unwrap()
}

fn key(k: &str, n: i64) -> Option<(String, i64)> {
    Some((k.to_string(), AT + n))
}

fn id(s: &str) -> MemoryId {
    MemoryId::new(s).unwrap()
}

#[test]
#[ignore = "writes tests/fixtures/wal-v4; run only to make the fixture, with ENGRAM_WRITE_FIXTURES=1"]
fn generate_wal_v4_fixture() {
    super::wal_v2::require_fixture_writes();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store
            .create_space_keyed(&space(), 4, "", key("create-1", 0))
            .unwrap();
        let commit = store
            .remember_batch_keyed_async(&space(), vec![memory("a"), memory("b")], key("k-1", 1))
            .unwrap();
        super::common::block_on(commit).unwrap();
        store.remember(&space(), memory("c")).unwrap();
        assert!(store
            .forget_keyed(&space(), &id("b"), key("k-2", 2))
            .unwrap());
        store.compact().unwrap();
        store
            .link_keyed(&space(), &id("a"), &id("c"), 0.5, key("k-3", 3))
            .unwrap();
    }
    let out = wal_v4_dir();
    let _ = std::fs::remove_dir_all(&out);
    super::copy_dir(dir.path(), &out);
}

#[test]
fn reads_wal_v4_fixture() {
    let src = wal_v4_dir();
    let (bytes, out) = super::wal_v3::read_fixture_wal(&src, 4);
    // The flush checkpointed the WAL: what is left is the link and its key.
    let ops: Vec<&Op> = out.records.iter().map(|r| &r.op).collect();
    assert_eq!(
        ops,
        [&Op::Request(Box::new(Command {
            op: Op::Link {
                from: id("a"),
                to: id("c"),
                weight: 0.5
            },
            request: key("k-3", 3),
        }))]
    );
    assert_eq!(out.records[0].op.code(), op_code::REQUEST);
    for rec in &out.records {
        let mut payload = Vec::new();
        rec.op.encode_payload(&mut payload);
        let end = (rec.offset + rec.len) as usize;
        assert_eq!(&bytes[end - payload.len()..end], &payload[..]);
    }
    // The table the flush wrote: the three keys before it.
    let (table, as_of) =
        decode_table_file(&std::fs::read(src.join("spaces/keyed").join(REQUESTS_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        as_of, 4,
        "the flushed records: the creation, the batch, c, the forget"
    );
    assert_eq!(table.len(), 3);
    assert_eq!(
        table.get("create-1", AT).unwrap().answer,
        Answer::SpaceCreated
    );
    assert!(table.get("k-3", AT).is_none());

    // Opened by the store: every key, from the table or from the WAL, and the memories.
    let dir = tempfile::tempdir().unwrap();
    super::copy_dir(&src, dir.path());
    let store = Store::open_dir(dir.path(), options()).unwrap();
    for k in ["create-1", "k-1", "k-2", "k-3"] {
        assert!(
            store.request_record(&space(), k, AT).unwrap().is_some(),
            "{k}"
        );
    }
    let r = store.request_record(&space(), "k-2", AT).unwrap().unwrap();
    assert_eq!(
        r.answer,
        Answer::Forgot {
            id: id("b"),
            existed: true
        }
    );
    assert!(store.get(&space(), "b").unwrap().is_none());
    let a = store.get(&space(), "a").unwrap().unwrap();
    assert_eq!(a.links.len(), 1);
    assert_eq!(a.links[0].to, id("c"));
}
