//! The raft log on the node's WAL: what a restart rebuilds, and what the WAL keeps.

use std::sync::Arc;

use engram_core::{Memory, MemoryId, SpaceId};
use engram_replication::types::{command, log_id, Entry, LogId, Vote};
use engram_replication::{LogStore, NodeLog, TypeConfig};
use engram_storage::{LogPos, Op, Store, StoreOptions};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::vote::leader_id_std::LeaderId;
use openraft::{EntryPayload, RaftLogReader};

fn opts() -> StoreOptions {
    StoreOptions {
        background_compaction: false,
        wal_preallocate: false,
        wal_segment_bytes: 16 << 10,
        max_record_bytes: 8 << 10,
        max_pending_bytes: 8 << 10,
        ..StoreOptions::default()
    }
}

fn lid(term: u64, index: u64) -> LogId {
    log_id(LogPos { term, index })
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(command(
            Op::Forget(MemoryId::new(format!("m{index}")).unwrap()),
            Some((format!("key-{term}-{index}"), 7)),
        )),
    }
}

/// Appends and waits until the entries are durable.
async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

fn vote(term: u64, node: u64, committed: bool) -> Vote {
    Vote {
        leader_id: LeaderId {
            term,
            voted_for: node,
        },
        committed,
    }
}

async fn all_entries(log: &mut LogStore) -> Vec<(u64, u64)> {
    log.try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[tokio::test]
async fn a_restart_rebuilds_every_groups_log() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (SpaceId::new("a").unwrap(), SpaceId::new("b").unwrap());
    {
        let store = Arc::new(Store::open_dir(dir.path(), opts()).unwrap());
        let node = NodeLog::open(store.clone()).unwrap();
        let mut la = node.group(&a);
        let mut lb = node.group(&b);
        append(&mut la, (1..=10).map(|i| entry(1, i)).collect()).await;
        append(&mut lb, (1..=3).map(|i| entry(1, i)).collect()).await;
        la.save_vote(&vote(2, 3, true)).await.unwrap();
        // A conflict: entries after 7 replaced by the new leader's.
        la.truncate_after(Some(lid(1, 7))).await.unwrap();
        append(&mut la, vec![entry(2, 8), entry(2, 9)]).await;
        la.purge(lid(1, 3)).await.unwrap();
        la.save_committed(Some(lid(2, 8))).await.unwrap();
        lb.truncate_after(None).await.unwrap();
        // Made durable by a vote of `b` written after everything above.
        lb.save_vote(&vote(1, 1, false)).await.unwrap();
        store.close();
    }
    let store = Arc::new(Store::open_dir(dir.path(), opts()).unwrap());
    let node = NodeLog::open(store).unwrap();
    let mut groups = node.groups();
    groups.sort();
    assert_eq!(groups, vec![a.clone(), b.clone()]);
    let mut la = node.group(&a);
    let want: Vec<(u64, u64)> = (4..=7).map(|i| (1, i)).chain([(2, 8), (2, 9)]).collect();
    assert_eq!(all_entries(&mut la).await, want);
    let state = la.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(1, 3)));
    assert_eq!(state.last_log_id, Some(lid(2, 9)));
    assert_eq!(la.read_vote().await.unwrap(), Some(vote(2, 3, true)));
    assert_eq!(la.read_committed().await.unwrap(), Some(lid(2, 8)));
    // The payload comes back as it was written.
    let e = la.try_get_log_entries(5..6).await.unwrap();
    assert_eq!(e, vec![entry(1, 5)]);
    let mut lb = node.group(&b);
    assert!(all_entries(&mut lb).await.is_empty());
    assert_eq!(lb.read_vote().await.unwrap(), Some(vote(1, 1, false)));
    let state = lb.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, None);
}

fn memory(i: usize) -> Memory {
    Memory {
        id: MemoryId::new(format!("p{i}")).unwrap(),
        content: "x".repeat(512),
        embedding: vec![0.5; 4],
        confidence: 0.5,
        timestamp_us: 1,
        metadata: Default::default(),
        links: vec![],
    }
}

fn wal_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("wal")).unwrap().count()
}

/// The WAL keeps a group's unpurged entries and its newest state, rewritten when only that
/// would keep old files; it lets go of everything else.
#[tokio::test]
async fn the_wal_keeps_what_groups_need_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let g = SpaceId::new("g").unwrap();
    let plain = SpaceId::new("plain").unwrap();
    {
        let store = Arc::new(Store::open_dir(dir.path(), opts()).unwrap());
        let node = NodeLog::open(store.clone()).unwrap();
        let mut log = node.group(&g);
        log.save_vote(&vote(5, 2, true)).await.unwrap();
        append(&mut log, (1..=4).map(|i| entry(5, i)).collect()).await;
        store.create_space(&plain, 4).unwrap();
        // Many WAL files of plain writes, each flushed and checkpointed.
        for round in 0..20 {
            for i in 0..20 {
                store.remember(&plain, memory(round * 20 + i)).unwrap();
            }
            store.compact().unwrap();
        }
        // The group's entries keep the first file.
        let kept = wal_files(dir.path());
        assert!(kept > 10, "{kept} WAL files");
        // Purged, the entries go; the vote is rewritten (refresh), then old files go too.
        log.purge(lid(5, 4)).await.unwrap();
        for _ in 0..3 {
            store.remember(&plain, memory(9999)).unwrap();
            store.compact().unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let after = wal_files(dir.path());
        assert!(
            after <= 3,
            "{after} WAL files after the purge (from {kept})"
        );
        store.close();
    }
    let store = Arc::new(Store::open_dir(dir.path(), opts()).unwrap());
    let node = NodeLog::open(store).unwrap();
    let mut log = node.group(&g);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote(5, 2, true)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(5, 4)));
    assert_eq!(state.last_log_id, Some(lid(5, 4)));
}
