//! The WAL format version 3 fixture (`tests/fixtures/wal-v3/`): a data directory written once
//! by the build that introduced the raft records (codes 10 to 12), `space.meta` version 3 and
//! `raft.state`, checked in, and read back by every later build. Regenerate (never once
//! released):
//!
//! ```text
//! ENGRAM_WRITE_FIXTURES=1 cargo test -p engram-storage --test format_fixtures \
//!     -- --ignored generate_wal_v3_fixture
//! ```
//!
//! The history: a plain space `plain` gets one memory; the raft group `rep` votes, appends a
//! membership (1), a blank (2), its space's creation (3), a memory with an idempotency key (4)
//! and another (5, term 1); a new leader truncates after 4 and appends a forget (5, term 2)
//! and a batch of two writes, the first with a key (6, term 2); the group saves its commit
//! point. Entries 1 to 4 are applied and flushed, so `rep` has `space.meta` version 3, one
//! segment and `raft.state` version 2 holding the key of entry 4.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::{Memory, MemoryId, SpaceId};
use engram_storage::wal::{scan_wal_file, WalFileHeader};
use engram_storage::{
    ApplyOutcome, Command, EntryBody, GroupMeta, LogEntry, LogPos, Op, RaftApplied, RaftMembership,
    RaftNode, RaftRecord, RaftRetention, RaftVote, Store, StoreOptions,
};

use super::relative_files;

fn wal_v3_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v3")
}

pub(super) fn options() -> StoreOptions {
    StoreOptions {
        background_compaction: false,
        wal_preallocate: false,
        ..StoreOptions::default()
    }
}

pub(super) fn memory(id: &str) -> Memory {
    Memory {
        id: MemoryId::new(id).unwrap(),
        content: format!("memory {id}"),
        embedding: vec![0.5, 0.5, 0.5, 0.5],
        confidence: 0.5,
        timestamp_us: 1_700_000_000_000_000,
        metadata: Default::default(),
        links: Vec::new(),
    }
}

pub(super) fn pos(term: u64, index: u64) -> LogPos {
    LogPos { term, index }
}

fn membership() -> RaftMembership {
    RaftMembership {
        configs: vec![vec![1, 2, 3]],
        nodes: (1..=3)
            .map(|id| RaftNode {
                id,
                name: format!("node-{id}"),
                address: format!("127.0.0.1:{}", 7100 + id),
            })
            .collect(),
    }
}

fn normal(term: u64, index: u64, op: Op, key: Option<&str>) -> Op {
    Op::RaftEntry(Box::new(LogEntry {
        pos: pos(term, index),
        body: EntryBody::Commands(std::sync::Arc::new([Command {
            op,
            request: key.map(|k| (k.to_string(), 1_700_000_000_000_000)),
        }])),
    }))
}

fn keyed(op: Op, key: &str) -> Command {
    Command {
        op,
        request: Some((key.to_string(), 1_700_000_000_000_000)),
    }
}

/// The commands of batch entry 6.
fn batch6() -> Vec<Command> {
    vec![
        keyed(Op::Remember(memory("r6")), "request-6"),
        Command {
            op: Op::Remember(memory("r7")),
            request: None,
        },
    ]
}

fn create_rep() -> Op {
    Op::SpaceCreate {
        dimension: 4,
        created_at_us: 1_700_000_000_000_000,
        embedder: String::new(),
    }
}

/// The raft records of the history, in WAL order.
fn raft_history() -> Vec<Op> {
    let vote = GroupMeta {
        vote: Some(RaftVote {
            term: 1,
            node: 1,
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
            body: EntryBody::Membership(membership()),
        })),
        Op::RaftEntry(Box::new(LogEntry {
            pos: pos(1, 2),
            body: EntryBody::Blank,
        })),
        normal(1, 3, create_rep(), None),
        normal(1, 4, Op::Remember(memory("r4")), Some("request-4")),
        normal(1, 5, Op::Remember(memory("r5")), None),
        Op::RaftTruncate(Some(pos(1, 4))),
        normal(2, 5, Op::Forget(MemoryId::new("r4").unwrap()), None),
        Op::RaftEntry(Box::new(LogEntry {
            pos: pos(2, 6),
            body: EntryBody::Commands(batch6().into()),
        })),
        Op::RaftMeta(GroupMeta {
            committed: Some(pos(2, 6)),
            ..vote
        }),
    ]
}

fn applied_at(index: u64) -> RaftApplied {
    RaftApplied {
        applied: Some(pos(1, index)),
        membership_at: Some(pos(1, 1)),
        membership: membership(),
    }
}

/// Keeps every raft record (the generator has no replication layer).
pub(super) struct KeepAll;

impl RaftRetention for KeepAll {
    fn min_needed_seq(&self) -> Option<u64> {
        Some(1)
    }
}

fn plain() -> SpaceId {
    SpaceId::new("plain").unwrap()
}

fn rep() -> SpaceId {
    SpaceId::new("rep").unwrap()
}

#[test]
#[ignore = "writes tests/fixtures/wal-v3; run only to make the fixture, with ENGRAM_WRITE_FIXTURES=1"]
fn generate_wal_v3_fixture() {
    super::wal_v2::require_fixture_writes();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_dir(dir.path(), options()).unwrap();
        store.attach_raft(Arc::new(KeepAll));
        store.create_space(&plain(), 4).unwrap();
        store.remember(&plain(), memory("p1")).unwrap();
        for op in raft_history() {
            let (tx, rx) = std::sync::mpsc::channel();
            store
                .append_raft(
                    &rep(),
                    vec![op],
                    Box::new(move |durable| tx.send(durable.is_some()).unwrap()),
                )
                .unwrap();
            assert!(rx.recv().unwrap());
        }
        store
            .apply_replicated(&rep(), 1, None, &applied_at(1))
            .unwrap();
        store
            .apply_replicated(&rep(), 2, None, &applied_at(2))
            .unwrap();
        store
            .apply_replicated(&rep(), 3, Some(create_rep()), &applied_at(3))
            .unwrap();
        store
            .apply_entry(
                &rep(),
                4,
                vec![keyed(Op::Remember(memory("r4")), "request-4")],
                &applied_at(4),
            )
            .unwrap();
        store.compact().unwrap();
    }
    let out = wal_v3_dir();
    let _ = std::fs::remove_dir_all(&out);
    super::copy_dir(dir.path(), &out);
}

#[test]
fn reads_wal_v3_fixture() {
    let src = wal_v3_dir();
    let (bytes, out) = read_fixture_wal(&src, 3);
    let raft: Vec<Op> = out
        .records
        .iter()
        .filter(|r| r.space.as_str() == "rep")
        .map(|r| r.op.clone())
        .collect();
    assert_eq!(raft, raft_history());
    // Re-encoding each record gives its bytes back.
    for rec in &out.records {
        let mut payload = Vec::new();
        rec.op.encode_payload(&mut payload);
        let end = (rec.offset + rec.len) as usize;
        assert_eq!(&bytes[end - payload.len()..end], &payload[..]);
    }
    // `space.meta` version 3, `raft.state` version 2 with the key of entry 4.
    let meta = std::fs::read(src.join("spaces/rep/space.meta")).unwrap();
    assert_eq!(u32::from_le_bytes(meta[8..12].try_into().unwrap()), 3);
    let state = std::fs::read(src.join("spaces/rep/raft.state")).unwrap();
    assert_eq!(u32::from_le_bytes(state[8..12].try_into().unwrap()), 2);
    let (applied, requests) = RaftApplied::decode_with(&state).unwrap();
    assert_eq!(applied, applied_at(4));
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests
            .get("request-4", 1_700_000_000_000_000)
            .unwrap()
            .index,
        4
    );

    // Opened by the store: the plain space as written, the replicated one as applied, and the
    // raft records handed over in WAL order.
    let dir = tempfile::tempdir().unwrap();
    super::copy_dir(&src, dir.path());
    let store = Store::open_dir(dir.path(), options()).unwrap();
    assert_eq!(store.get(&plain(), "p1").unwrap().unwrap(), memory("p1"));
    let m = store.space_meta(&rep()).unwrap();
    assert!(m.replicated);
    assert_eq!((m.dimension, m.created_seq), (4, 3));
    assert_eq!(store.get(&rep(), "r4").unwrap().unwrap(), memory("r4"));
    assert_eq!(store.replicated_state(&rep()).unwrap(), Some(applied_at(4)));
    let records: Vec<RaftRecord> = store.attach_raft(Arc::new(KeepAll));
    let ops: Vec<Op> = records.into_iter().map(|r| r.op).collect();
    assert_eq!(ops, raft_history());
    // Re-applied from the log (as the group does after a restart), entry 5 of term 2 forgets
    // r4; entry 4 again changes nothing.
    assert!(!store
        .apply_replicated(&rep(), 4, Some(Op::Remember(memory("r5"))), &applied_at(4))
        .unwrap());
    store
        .apply_replicated(
            &rep(),
            5,
            Some(Op::Forget(MemoryId::new("r4").unwrap())),
            &applied_at(5),
        )
        .unwrap();
    assert!(store.get(&rep(), "r4").unwrap().is_none());
    // The batch entry applies both writes; a repeat of entry 4's key is answered with it.
    let out = store
        .apply_entry(&rep(), 6, batch6(), &applied_at(6))
        .unwrap();
    assert!(matches!(
        out[..],
        [ApplyOutcome::Applied(_), ApplyOutcome::Applied(_)]
    ));
    assert!(store.get(&rep(), "r6").unwrap().is_some());
    assert!(store.get(&rep(), "r7").unwrap().is_some());
    assert!(store
        .request_record(&rep(), "request-4", 1_700_000_000_000_000)
        .unwrap()
        .is_some());
}

/// The one WAL file of the fixture in `src`: its bytes and what a scan finds, checked to be of
/// `version`, to re-encode its header exactly and to scan clean.
pub(super) fn read_fixture_wal(
    src: &Path,
    version: u32,
) -> (Vec<u8>, engram_storage::wal::ScanOutcome) {
    let wal = relative_files(&src.join("wal"));
    assert_eq!(wal.len(), 1, "{wal:?}");
    let bytes = std::fs::read(src.join("wal").join(&wal[0])).unwrap();
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        version
    );
    let header = WalFileHeader::decode(&bytes).unwrap();
    assert_eq!(&header.encode_version(version)[..], &bytes[..32]);
    let out = scan_wal_file(&bytes, true, 1 << 20);
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    assert!(out.torn_tail.is_none(), "{:?}", out.torn_tail);
    (bytes, out)
}
