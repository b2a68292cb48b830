//! The WAL format version 5 fixture (`tests/fixtures/wal-v5/`): a data directory written once
//! by the build that introduced the metadata group's command (code 14, inside a log entry of
//! the group `cluster.meta`), checked in, and read back by every later build. Regenerate
//! (never once released):
//!
//! ```text
//! ENGRAM_WRITE_FIXTURES=1 cargo test -p engram-storage --test format_fixtures \
//!     -- --ignored generate_wal_v5_fixture
//! ```
//!
//! The history: the metadata group votes, appends its membership (1), a blank (2) and two
//! metadata commands (3 and 4), and saves its commit point.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::SpaceId;
use engram_storage::{
    op_code, Command, EntryBody, GroupMeta, LogEntry, Op, RaftMembership, RaftNode, RaftRecord,
    RaftVote, Store,
};

use super::wal_v3::{options, pos, KeepAll};

fn wal_v5_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v5")
}

fn meta_entry(index: u64, bytes: &[u8]) -> Op {
    Op::RaftEntry(Box::new(LogEntry {
        pos: pos(1, index),
        body: EntryBody::Commands(Arc::new([Command {
            op: Op::Meta(bytes.to_vec()),
            request: None,
        }])),
    }))
}

/// The metadata group's records, in WAL order.
fn history() -> Vec<Op> {
    let vote = GroupMeta {
        vote: Some(RaftVote {
            term: 1,
            node: 7,
            committed: true,
        }),
        committed: None,
        purged: None,
        creation: 0,
    };
    vec![
        Op::RaftMeta(vote),
        Op::RaftEntry(Box::new(LogEntry {
            pos: pos(1, 1),
            body: EntryBody::Membership(RaftMembership {
                configs: vec![vec![7]],
                nodes: vec![RaftNode {
                    id: 7,
                    name: "n1".into(),
                    address: "127.0.0.1:7501".into(),
                }],
            }),
        })),
        Op::RaftEntry(Box::new(LogEntry {
            pos: pos(1, 2),
            body: EntryBody::Blank,
        })),
        meta_entry(3, b"\x01first metadata command"),
        meta_entry(4, b""),
        Op::RaftMeta(GroupMeta {
            committed: Some(pos(1, 4)),
            ..vote
        }),
    ]
}

#[test]
#[ignore = "writes tests/fixtures/wal-v5; run only to make the fixture, with ENGRAM_WRITE_FIXTURES=1"]
fn generate_wal_v5_fixture() {
    write_raft_fixture(&SpaceId::metadata_group(), history(), &wal_v5_dir());
}

/// Writes `ops` as raft records of `group`, one durable append each, into a new data
/// directory copied to `out` (replacing it).
pub(super) fn write_raft_fixture(group: &SpaceId, ops: Vec<Op>, out: &Path) {
    super::wal_v2::require_fixture_writes();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store.attach_raft(Arc::new(KeepAll));
        for op in ops {
            let (tx, rx) = std::sync::mpsc::channel();
            store
                .append_raft(
                    group,
                    vec![op],
                    Box::new(move |durable| tx.send(durable.is_some()).unwrap()),
                )
                .unwrap();
            assert!(rx.recv().unwrap());
        }
    }
    let _ = std::fs::remove_dir_all(out);
    super::copy_dir(dir.path(), out);
}

#[test]
fn reads_wal_v5_fixture() {
    let src = wal_v5_dir();
    let (bytes, out) = super::wal_v3::read_fixture_wal(&src, 5);
    let ops: Vec<Op> = out.records.iter().map(|r| r.op.clone()).collect();
    assert_eq!(ops, history());
    for rec in &out.records {
        assert_eq!(rec.space, SpaceId::metadata_group());
        let mut payload = Vec::new();
        rec.op.encode_payload(&mut payload);
        let end = (rec.offset + rec.len) as usize;
        assert_eq!(&bytes[end - payload.len()..end], &payload[..]);
    }
    // The command's code inside the entry's payload: kind normal, no key, then 14.
    let Op::RaftEntry(e) = &ops[3] else {
        panic!("an entry")
    };
    assert!(matches!(&e.body, EntryBody::Commands(cs) if cs[0].op.code() == op_code::META));

    // Opened by the store: the records go back to the replication layer, group and all.
    let dir = tempfile::tempdir().unwrap();
    super::copy_dir(&src, dir.path());
    let store = Store::open_dir(dir.path(), options()).unwrap();
    let records: Vec<RaftRecord> = store.attach_raft(Arc::new(KeepAll));
    let back: Vec<Op> = records.iter().map(|r| r.op.clone()).collect();
    assert_eq!(back, history());
    assert!(records.iter().all(|r| r.group.is_metadata_group()));
    assert!(store.list_spaces().is_empty(), "no space was made of it");
}
