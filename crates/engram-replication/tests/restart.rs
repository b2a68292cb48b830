//! A restarted group keeps the snapshot its earlier run built: it builds none at start (which
//! would flush the memtable recovery rebuilt), and it still serves everything acknowledged.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engram_core::{Memory, MemoryId, SpaceId};
use engram_replication::codec::ProposeOutcome;
use engram_replication::network::LocalTransport;
use engram_replication::openraft;
use engram_replication::types::NodeAddr;
use engram_replication::ReplicaNode;
use engram_storage::{Command, Disk, FaultDisk, Op, Store, StoreOptions};

fn space() -> SpaceId {
    SpaceId::new("k").unwrap()
}

fn command(op: Op) -> Command {
    Command { op, request: None }
}

fn write(i: u64) -> Command {
    command(Op::Remember(Memory {
        id: MemoryId::new(format!("m{i}")).unwrap(),
        content: format!("memory {i}"),
        embedding: vec![1.0, 0.5, 0.25, i as f32],
        confidence: 0.5,
        timestamp_us: 1,
        metadata: Default::default(),
        links: vec![],
    }))
}

async fn node(disk: &FaultDisk) -> Arc<ReplicaNode> {
    let d: Arc<dyn Disk> = Arc::new(disk.clone());
    let opts = StoreOptions {
        inline_commit: true,
        background_compaction: false,
        wal_preallocate: false,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open(d, Path::new("/d"), opts).unwrap());
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    let transport = LocalTransport::new();
    let node = ReplicaNode::open(1, store, transport.clone(), config).unwrap();
    transport.register(&node);
    node
}

/// Proposes `c` until the (single) node has a leader and takes it.
async fn propose(node: &ReplicaNode, c: Command) {
    for _ in 0..100 {
        match node.propose(&space(), c.clone()).await {
            ProposeOutcome::Applied(_) => return,
            o => eprintln!("{o:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the group never took a write");
}

fn snapshot_dirs(disk: &FaultDisk) -> Vec<String> {
    let mut names = disk
        .list_dir(&Path::new("/d/snapshots").join(space().as_str()))
        .unwrap_or_default();
    names.sort();
    names
}

async fn restarted_group_keeps_its_snapshot() {
    let disk = FaultDisk::new();
    let n = node(&disk).await;
    let members = BTreeMap::from([(
        1,
        NodeAddr {
            name: "n1".into(),
            address: String::new(),
        },
    )]);
    n.initialize(&space(), members).await.unwrap();
    propose(
        &n,
        command(Op::SpaceCreate {
            dimension: 4,
            created_at_us: 1,
            embedder: String::new(),
        }),
    )
    .await;
    // One entry per write: the policy builds a snapshot every 10 and purges the log.
    for i in 0..35 {
        propose(&n, write(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = snapshot_dirs(&disk);
    assert_eq!(before.len(), 1, "one snapshot kept: {before:?}");
    assert!(before[0].starts_with("built-"), "{before:?}");
    let g = n.group(&space()).await.unwrap();
    let snap = g.get_snapshot().await.unwrap().expect("a snapshot");
    let snap_index = snap.meta.last_log_id.unwrap().index;
    n.shutdown().await;
    drop((g, snap, n));

    let n = node(&disk).await;
    let g = n.group(&space()).await.unwrap();
    let kept = g.get_snapshot().await.unwrap().expect("the snapshot kept");
    assert_eq!(kept.meta.last_log_id.unwrap().index, snap_index);
    assert_eq!(snapshot_dirs(&disk), before, "no snapshot built at start");
    // The entries after the snapshot were re-applied to the memtable, not flushed.
    let status = n.store().space_status(&space()).unwrap();
    assert!(status.memtable_entries > 0, "{status:?}");
    let ids = loop {
        match n.read_ids(&space()).await {
            Ok(ids) => break ids,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(ids.len(), 35);
    n.shutdown().await;
}

#[test]
fn a_restarted_group_keeps_the_snapshot_it_built() {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(restarted_group_keeps_its_snapshot());
}
