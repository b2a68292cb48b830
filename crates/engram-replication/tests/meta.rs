//! The cluster's metadata group on three in-process nodes: bootstrap, joins through any
//! member, learners promoted to voters, spaces placed on three distinct nodes, a second node
//! with a name in use refused, snapshots, and the same metadata after every node restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engram_core::SpaceId;
use engram_replication::codec::{Message, ProposeOutcome};
use engram_replication::meta::{
    meta_config, raft_id, MetaAnswer, MetaCommand, MetaState, NodeRecord, NodeState,
};
use engram_replication::network::{LocalTransport, Transport};
use engram_replication::openraft;
use engram_replication::types::NodeAddr;
use engram_replication::ReplicaNode;
use engram_storage::requests::Answer;
use engram_storage::{Store, StoreOptions};

fn record(name: &str, incarnation: u64) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        http: format!("http://{name}.test:7432"),
        cluster: format!("{name}.test:7433"),
        rack: "default".into(),
        capacity: 100,
        state: NodeState::Live,
        incarnation,
    }
}

fn config() -> openraft::Config {
    openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(8),
        max_in_snapshot_log_to_keep: 2,
        ..meta_config()
    }
}

async fn open(dir: &Path, name: &str, transport: &Arc<LocalTransport>) -> Arc<ReplicaNode> {
    let opts = StoreOptions {
        background_compaction: false,
        wal_preallocate: false,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open_dir(&dir.join(name), opts).unwrap());
    let node = ReplicaNode::open(
        raft_id(name),
        store,
        transport.clone(),
        openraft::Config::default(),
    )
    .unwrap();
    node.open_meta(config()).await.unwrap();
    transport.register(&node);
    let n = Arc::downgrade(&node);
    tokio::spawn(async move {
        while let Some(node) = n.upgrade() {
            let _ = node.reconcile_meta().await;
            drop(node);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    node
}

/// Proposes until the metadata group answers (an election may be under way).
async fn propose(node: &ReplicaNode, cmd: MetaCommand) -> MetaAnswer {
    for _ in 0..200 {
        if let Ok(a) = node.propose_meta(&cmd).await {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the metadata group never answered {cmd:?}");
}

/// Asks member `via` to let `me` join, as a node outside the cluster does.
async fn join(transport: &LocalTransport, via: &str, me: NodeRecord) -> MetaAnswer {
    let msg = Message::Join(me).encode(&SpaceId::metadata_group());
    for _ in 0..200 {
        let reply = transport.call(raft_id(via), msg.clone()).await.unwrap();
        match Message::decode(&reply).unwrap().1 {
            Message::ProposeReply(ProposeOutcome::Applied(r)) => {
                let Some(Answer::Meta(b)) = r.answer else {
                    panic!("{r:?}")
                };
                return MetaAnswer::decode(&b).unwrap();
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    panic!("no answer to a join");
}

/// Waits until `cond` holds of every node's metadata.
async fn settle(nodes: &[Arc<ReplicaNode>], what: &str, cond: impl Fn(&MetaState) -> bool) {
    for _ in 0..400 {
        if nodes.iter().all(|n| cond(&n.meta_state())) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never settled: {what}");
}

fn voters(node: &ReplicaNode) -> usize {
    use openraft::async_runtime::watch::WatchReceiver;
    let m = node.meta().unwrap().raft.metrics();
    let n = m
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_group_bootstraps_joins_places_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let transport = LocalTransport::new();
    let names = ["n1", "n2", "n3"];
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(open(dir.path(), name, &transport).await);
    }
    let n1 = &nodes[0];
    n1.bootstrap_meta(NodeAddr {
        name: "n1".into(),
        address: "n1.test:7433".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        propose(
            n1,
            MetaCommand::Init {
                copies: 3,
                vnodes: 150
            }
        )
        .await,
        MetaAnswer::Done { epoch: 1 }
    );
    assert_eq!(
        propose(n1, MetaCommand::Join(record("n1", 1))).await,
        MetaAnswer::Done { epoch: 2 }
    );
    // The others join through a member that is not necessarily the leader.
    assert!(matches!(
        join(&transport, "n1", record("n2", 2)).await,
        MetaAnswer::Done { .. }
    ));
    assert!(matches!(
        join(&transport, "n2", record("n3", 3)).await,
        MetaAnswer::Done { .. }
    ));
    settle(&nodes, "three live nodes everywhere", |s| {
        s.nodes.len() == 3 && s.placement.members().len() == 3
    })
    .await;
    for _ in 0..400 {
        if voters(n1) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(voters(n1), 3, "learners were promoted to voters");

    // A second process with a name in use (another data directory) is refused.
    match join(&transport, "n3", record("n2", 99)).await {
        MetaAnswer::Refused(why) => assert!(why.contains("already in use"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A restart from the same directory rejoins as itself.
    assert!(matches!(
        join(&transport, "n3", record("n2", 2)).await,
        MetaAnswer::Done { .. }
    ));

    // Spaces, created through any node: three distinct replicas each.
    for i in 0..20u64 {
        let via = &nodes[(i % 3) as usize];
        let id = SpaceId::new(format!("s{i}")).unwrap();
        let cmd = MetaCommand::CreateSpace {
            id: id.clone(),
            dimension: 4,
            embedder: String::new(),
            created_at_us: 1,
            nonce: i,
        };
        let MetaAnswer::Space(rec) = propose(via, cmd.clone()).await else {
            panic!("no space")
        };
        let mut r = rec.replicas.clone();
        r.sort();
        r.dedup();
        assert_eq!(r.len(), 3, "{rec:?}");
        assert_eq!(rec.nonce, i);
        // Asked again: the same record (created by the first command).
        assert_eq!(propose(via, cmd).await, MetaAnswer::Space(rec));
    }
    settle(&nodes, "20 spaces everywhere", |s| s.spaces.len() == 20).await;
    // Every node comes to hold the same metadata (the last command, a repeat, changes only
    // the position applied, which reaches each node in its time).
    let mut same = None;
    for _ in 0..400 {
        let states: Vec<_> = nodes.iter().map(|n| n.meta_state()).collect();
        if states.iter().all(|s| **s == *states[0]) {
            same = Some(states[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = same.expect("every node holds the same metadata");
    let snapshots = dir.path().join("n1/snapshots/cluster.meta");
    assert!(
        std::fs::read_dir(&snapshots).unwrap().count() >= 1,
        "the group snapshotted"
    );

    // Every node restarts from its directory: the same metadata.
    for n in &nodes {
        n.meta().unwrap().raft.shutdown().await.unwrap();
        n.shutdown().await;
    }
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let transport = LocalTransport::new();
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(open(dir.path(), name, &transport).await);
    }
    settle(&nodes, "the metadata back after restarts", |s| {
        *s == *before
    })
    .await;
    // And the group still takes changes.
    let cmd = MetaCommand::DropSpace {
        id: SpaceId::new("s0").unwrap(),
        nonce: None,
    };
    assert!(matches!(
        propose(&nodes[1], cmd).await,
        MetaAnswer::Done { .. }
    ));
    settle(&nodes, "the drop everywhere", |s| s.spaces.len() == 19).await;
}
