//! The WAL format version 6 fixture (`tests/fixtures/wal-v6/`): a data directory written once
//! by the build that introduced a raft group's creation in its state record (code 11, flag
//! bit 3), checked in, and read back by every later build. Regenerate (never once released):
//!
//! ```text
//! ENGRAM_WRITE_FIXTURES=1 cargo test -p engram-storage --test format_fixtures \
//!     -- --ignored generate_wal_v6_fixture
//! ```
//!
//! The history: a space's group records its creation (41) with its vote, appends its
//! membership (1) and a blank (2), saves its commit point, and is reset (its space dropped):
//! a truncation of every entry and an empty state record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::SpaceId;
use engram_storage::{
    EntryBody, GroupMeta, LogEntry, Op, RaftMembership, RaftNode, RaftRecord, RaftVote, Store,
};

use super::wal_v3::{options, pos, KeepAll};

fn wal_v6_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v6")
}

fn group() -> SpaceId {
    SpaceId::new("notes").unwrap()
}

/// The group's records, in WAL order.
fn history() -> Vec<Op> {
    let vote = GroupMeta {
        vote: Some(RaftVote {
            term: 1,
            node: 7,
            committed: true,
        }),
        committed: None,
        purged: None,
        creation: 41,
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
        Op::RaftMeta(GroupMeta {
            committed: Some(pos(1, 2)),
            ..vote
        }),
        Op::RaftTruncate(None),
        Op::RaftMeta(GroupMeta::default()),
    ]
}

#[test]
#[ignore = "writes tests/fixtures/wal-v6; run only to make the fixture, with ENGRAM_WRITE_FIXTURES=1"]
fn generate_wal_v6_fixture() {
    super::wal_v5::write_raft_fixture(&group(), history(), &wal_v6_dir());
}

#[test]
fn reads_wal_v6_fixture() {
    let src = wal_v6_dir();
    let (bytes, out) = super::wal_v3::read_fixture_wal(&src, 6);
    let ops: Vec<Op> = out.records.iter().map(|r| r.op.clone()).collect();
    assert_eq!(ops, history());
    for rec in &out.records {
        assert_eq!(rec.space, group());
        let mut payload = Vec::new();
        rec.op.encode_payload(&mut payload);
        let end = (rec.offset + rec.len) as usize;
        assert_eq!(&bytes[end - payload.len()..end], &payload[..]);
    }
    // The creation's flag (bit 3) and the u64 after the vote.
    let first = &out.records[0];
    let start = (first.offset + first.len) as usize - (1 + 17 + 8);
    assert_eq!(bytes[start], 0b1001);
    assert_eq!(&bytes[start + 18..start + 26], &41u64.to_le_bytes());

    // Opened by the store: the records go back to the replication layer.
    let dir = tempfile::tempdir().unwrap();
    super::copy_dir(&src, dir.path());
    let store = Store::open_dir(dir.path(), options()).unwrap();
    let records: Vec<RaftRecord> = store.attach_raft(Arc::new(KeepAll));
    let back: Vec<Op> = records.iter().map(|r| r.op.clone()).collect();
    assert_eq!(back, history());
    assert!(store.list_spaces().is_empty(), "no space was made of it");
}
