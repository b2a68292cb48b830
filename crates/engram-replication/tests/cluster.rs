//! Cluster nodes over the real cluster port (HTTP/2 on 127.0.0.1) in one process: bootstrap,
//! joins through any member, a wrong secret and a name in use refused, a space placed on
//! three nodes whose group elects a leader and replicates a write, and a restarted node
//! rejoining as itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engram_core::{Memory, MemoryId, SpaceId};
use engram_replication::cluster::{ClusterNode, ClusterOptions};
use engram_replication::codec::ProposeOutcome;
use engram_replication::meta::{MetaAnswer, MetaCommand, MetaState, NodeState};
use engram_replication::openraft;
use engram_storage::{Command, Op, Store, StoreOptions};
use tokio::net::TcpListener;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn fast(mut c: openraft::Config) -> openraft::Config {
    c.heartbeat_interval = 50;
    c.election_timeout_min = 300;
    c.election_timeout_max = 600;
    c
}

async fn start(
    dir: &Path,
    name: &str,
    join: Vec<String>,
    secret: &[u8],
) -> std::io::Result<Arc<ClusterNode>> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let opts = StoreOptions {
        wal_preallocate: false,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open_dir(&dir.join(name), opts).unwrap());
    let mut o = ClusterOptions::new(name, &addr, &format!("http://{name}.test"));
    o.join = join;
    o.secret = Some(secret.to_vec());
    o.space_config = fast(o.space_config);
    o.meta_config = fast(o.meta_config);
    o.join_timeout = Duration::from_secs(20);
    ClusterNode::start(store, listener, o).await
}

async fn settle(nodes: &[Arc<ClusterNode>], what: &str, cond: impl Fn(&MetaState) -> bool) {
    for _ in 0..400 {
        if nodes.iter().all(|n| cond(&n.state())) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never settled: {what}");
}

fn memory(id: &str) -> Command {
    Command {
        op: Op::Remember(Memory {
            id: MemoryId::new(id).unwrap(),
            content: format!("memory {id}"),
            embedding: vec![1.0, 0.5, 0.25, 0.0],
            confidence: 0.5,
            timestamp_us: 1,
            metadata: Default::default(),
            links: vec![],
        }),
        request: None,
    }
}

/// Proposes through whichever node leads the space's group.
async fn write(nodes: &[Arc<ClusterNode>], space: &SpaceId, c: Command) -> u64 {
    for _ in 0..200 {
        for n in nodes {
            let out =
                tokio::time::timeout(Duration::from_secs(2), n.node.propose(space, c.clone()))
                    .await;
            if let Ok(ProposeOutcome::Applied(r)) = out {
                return r.index;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the write never applied");
}

/// n1 bootstraps, n2 joins through it, n3 through n2; all three live.
async fn three_nodes(dir: &Path) -> [Arc<ClusterNode>; 3] {
    let n1 = start(dir, "n1", vec![], SECRET).await.unwrap();
    let n2 = start(dir, "n2", vec![n1.opts.cluster_addr.clone()], SECRET)
        .await
        .unwrap();
    let n3 = start(dir, "n3", vec![n2.opts.cluster_addr.clone()], SECRET)
        .await
        .unwrap();
    let nodes = [n1, n2, n3];
    settle(&nodes, "three live nodes", |s| {
        s.nodes.len() == 3 && s.nodes.values().all(|n| n.state == NodeState::Live)
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_over_the_cluster_port_and_replicate_a_space() {
    let dir = tempfile::tempdir().unwrap();
    let [n1, n2, n3] = three_nodes(dir.path()).await;
    let seed = n1.opts.cluster_addr.clone();
    let mut nodes = vec![n1.clone(), n2.clone(), n3.clone()];

    // Another secret: refused, and nothing changes.
    let err = start(
        dir.path(),
        "n4",
        vec![seed.clone()],
        b"another secret of at least 32 bytes!",
    )
    .await
    .err()
    .expect("a wrong secret is refused");
    assert!(err.to_string().contains("cluster secret"), "{err}");
    // A second node named like a member (another data directory): refused.
    let other = tempfile::tempdir().unwrap();
    let err = start(other.path(), "n2", vec![seed.clone()], SECRET)
        .await
        .err()
        .expect("a name in use is refused");
    assert!(err.to_string().contains("already in use"), "{err}");
    settle(&nodes, "still three nodes", |s| s.nodes.len() == 3).await;

    // A space: placed on all three, its group initialised by its replicas, a write replicated.
    let space = SpaceId::new("s").unwrap();
    let create = MetaCommand::CreateSpace {
        id: space.clone(),
        dimension: 4,
        embedder: String::new(),
        created_at_us: 1,
        nonce: 7,
    };
    let MetaAnswer::Space(rec) = n3.node.propose_meta(&create).await.unwrap() else {
        panic!("no space")
    };
    assert_eq!(rec.replicas.len(), 3);
    let create_space = Command {
        op: Op::SpaceCreate {
            dimension: 4,
            created_at_us: 1,
            embedder: String::new(),
        },
        request: Some(("create-7".into(), 1)),
    };
    write(&nodes, &space, create_space).await;
    let index = write(&nodes, &space, memory("m1")).await;
    for n in &nodes {
        for _ in 0..200 {
            if n.node.last_applied(&space).await.unwrap() >= index {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(n.node.store().get(&space, "m1").unwrap().is_some());
    }

    // n2 restarts from its directory: it rejoins as itself.
    n2.stop().await;
    drop(n2);
    nodes.remove(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n2 = start(dir.path(), "n2", vec![seed], SECRET).await.unwrap();
    nodes.push(n2);
    settle(&nodes, "n2 back, three nodes", |s| {
        s.nodes.len() == 3 && s.spaces.len() == 1
    })
    .await;
    write(&nodes, &space, memory("m2")).await;
    for n in &nodes {
        n.stop().await;
    }
}

/// Waits until `n`'s replica of `space` holds memory `id`.
async fn holds(n: &ClusterNode, space: &SpaceId, id: &str) {
    for _ in 0..400 {
        if matches!(n.node.store().get(space, id), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never held {id}", n.me.name);
}

/// A space dropped and created anew under its name while one replica was down: the replica
/// comes back holding the dropped creation's group (a longer log, the old memories), and
/// must erase it and join the new creation's group empty, never bring the old state in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_a_drop_joins_the_new_creation_empty() {
    let dir = tempfile::tempdir().unwrap();
    let [n1, n2, n3] = three_nodes(dir.path()).await;
    let seed = n1.opts.cluster_addr.clone();
    let nodes = vec![n1.clone(), n2.clone(), n3.clone()];
    let space = SpaceId::new("s").unwrap();
    let (old, _) = n1.create_space(&space, 4, "", 1, 11).await.unwrap();
    for i in 0..20 {
        write(&nodes, &space, memory(&format!("m{i}"))).await;
    }
    holds(&n3, &space, "m19").await;

    // n3 goes down; the space is dropped and created again without it.
    n3.stop().await;
    drop(n3);
    let live = vec![n1.clone(), n2.clone()];
    n1.drop_space(&space, None).await.unwrap();
    let (new, created) = n2.create_space(&space, 4, "", 2, 12).await.unwrap();
    assert!(created);
    assert!(new.creation > old.creation, "{new:?} after {old:?}");
    write(&live, &space, memory("fresh")).await;
    for n in &live {
        holds(n, &space, "fresh").await;
        assert!(n.node.store().get(&space, "m0").unwrap().is_none());
    }

    // n3 restarts from its directory: the old group's state is erased, the new one's taken.
    let n3 = start(dir.path(), "n3", vec![seed], SECRET).await.unwrap();
    let nodes = vec![n1.clone(), n2.clone(), n3.clone()];
    write(&nodes, &space, memory("after")).await;
    for n in &nodes {
        holds(n, &space, "after").await;
        holds(n, &space, "fresh").await;
        for i in 0..20 {
            let id = format!("m{i}");
            assert!(
                n.node.store().get(&space, &id).unwrap().is_none(),
                "{} holds {id} of the dropped creation",
                n.me.name
            );
        }
        assert_eq!(n.node.group_creation(&space), Some(new.creation));
    }
    for n in &nodes {
        n.stop().await;
    }
}
