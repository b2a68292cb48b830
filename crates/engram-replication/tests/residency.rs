//! Idle groups quiesce (no message, no timer) and wake on the next request; the resident set
//! stays within its bound and a stopped group starts again from disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engram_core::{Memory, MemoryId, SpaceId};
use engram_replication::codec::ProposeOutcome;
use engram_replication::network::{BoxFut, LocalTransport, Transport};
use engram_replication::openraft;
use engram_replication::types::NodeAddr;
use engram_replication::{ReplicaNode, Residency};
use engram_storage::{Command, Disk, FaultDisk, Op, Store, StoreOptions};
use openraft::async_runtime::watch::WatchReceiver;

/// Counts the messages it carries.
struct Counting {
    inner: Arc<LocalTransport>,
    calls: AtomicU64,
}

impl Transport for Counting {
    fn call(&self, to: u64, request: Vec<u8>) -> BoxFut<std::io::Result<Vec<u8>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.call(to, request)
    }
}

fn space() -> SpaceId {
    SpaceId::new("r").unwrap()
}

fn write(i: u64) -> Command {
    Command {
        op: Op::Remember(Memory {
            id: MemoryId::new(format!("m{i}")).unwrap(),
            content: format!("memory {i}"),
            embedding: vec![1.0, 0.5, 0.25, 0.0],
            confidence: 0.5,
            timestamp_us: 1,
            metadata: Default::default(),
            links: vec![],
        }),
        request: None,
    }
}

struct Cluster {
    local: Arc<LocalTransport>,
    counting: Arc<Counting>,
    nodes: Vec<Arc<ReplicaNode>>,
}

async fn cluster() -> Cluster {
    let local = LocalTransport::new();
    let counting = Arc::new(Counting {
        inner: local.clone(),
        calls: AtomicU64::new(0),
    });
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let disk: Arc<dyn Disk> = Arc::new(FaultDisk::new());
        let opts = StoreOptions {
            inline_commit: true,
            background_compaction: false,
            wal_preallocate: false,
            ..StoreOptions::default()
        };
        let store = Arc::new(Store::open(disk, Path::new("/d"), opts).unwrap());
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            ..Default::default()
        };
        let node = ReplicaNode::open(id, store, counting.clone(), config).unwrap();
        node.set_residency(Residency {
            quiesce_after: Duration::from_secs(1),
            max_resident: 10,
        });
        local.register(&node);
        node.group(&space()).await.unwrap();
        nodes.push(node);
    }
    let members: BTreeMap<u64, NodeAddr> = (1..=3).map(|i| (i, NodeAddr::default())).collect();
    nodes[0].initialize(&space(), members).await.unwrap();
    let create = Command {
        op: Op::SpaceCreate {
            dimension: 4,
            created_at_us: 1,
            embedder: String::new(),
        },
        request: None,
    };
    let c = Cluster {
        local,
        counting,
        nodes,
    };
    assert!(c.write_any(create).await.is_some(), "the space was created");
    c
}

impl Cluster {
    /// Writes through the first node that takes it; the index it was applied at.
    async fn write_any(&self, c: Command) -> Option<u64> {
        for _ in 0..100 {
            for n in &self.nodes {
                let out =
                    tokio::time::timeout(Duration::from_secs(2), n.propose(&space(), c.clone()))
                        .await;
                if let Ok(ProposeOutcome::Applied(i)) = out {
                    return Some(i.index);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn leader(&self) -> usize {
        for _ in 0..100 {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Ok(g) = n.group(&space()).await {
                    if g.current_leader().await == Some(n.id()) {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader");
    }

    async fn quiesce(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut quiesced = 0;
        for n in &self.nodes {
            quiesced += n.sweep().await.quiesced;
        }
        quiesced
    }

    fn calls(&self) -> u64 {
        self.counting.calls.load(Ordering::Relaxed)
    }

    async fn term(&self, i: usize) -> u64 {
        let g = self.nodes[i].group(&space()).await.unwrap();
        let m = g.metrics();
        let term = m.borrow_watched().current_term;
        term
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn an_idle_group_sends_nothing_and_wakes_on_the_next_request() {
    rt().block_on(async {
        let c = cluster().await;
        for i in 0..5 {
            assert!(c.write_any(write(i)).await.is_some());
        }
        let leader = c.leader().await;
        let term = c.term(leader).await;
        assert_eq!(c.quiesce().await, 1, "the leader quiesced its group");
        // Ten seconds of nothing: no heartbeat, no election.
        let before = c.calls();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(c.calls(), before, "a quiesced group sends no message");
        // A request through the leader wakes the group.
        let out = c.nodes[leader].propose(&space(), write(10)).await;
        assert!(matches!(out, ProposeOutcome::Applied(_)), "{out:?}");
        assert_eq!(c.term(leader).await, term, "no election");
        // Quiesced again, a request through a follower wakes the leader first: still no
        // election.
        assert_eq!(c.quiesce().await, 1);
        let follower = (leader + 1) % 3;
        let out = c.nodes[follower].propose(&space(), write(11)).await;
        assert_eq!(out, ProposeOutcome::NotLeader(Some(c.nodes[leader].id())));
        let out = c.nodes[leader].propose(&space(), write(12)).await;
        assert!(matches!(out, ProposeOutcome::Applied(_)), "{out:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            c.term(leader).await,
            term,
            "no election after a follower woke"
        );
        let ids = c.nodes[leader].read_ids(&space()).await.unwrap();
        assert_eq!(ids.len(), 7);
    });
}

#[test]
fn a_quiesced_group_whose_leader_crashed_elects_another_on_the_next_request() {
    rt().block_on(async {
        let c = cluster().await;
        assert!(c.write_any(write(1)).await.is_some());
        let leader = c.leader().await;
        assert_eq!(c.quiesce().await, 1);
        c.local.set_down(c.nodes[leader].id(), true);
        c.nodes[leader].shutdown().await;
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let mut applied = false;
        for _ in 0..100 {
            for &i in &others {
                if let ProposeOutcome::Applied(_) = c.nodes[i].propose(&space(), write(2)).await {
                    applied = true;
                }
            }
            if applied {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(applied, "the other two elected a leader");
        let mut ids = Vec::new();
        for &i in &others {
            if let Ok(got) = c.nodes[i].read_ids(&space()).await {
                ids = got;
            }
        }
        assert!(
            ids.contains(&"m1".to_string()) && ids.contains(&"m2".to_string()),
            "{ids:?}"
        );
    });
}

#[test]
fn groups_beyond_the_resident_bound_stop_and_start_again_from_disk() {
    rt().block_on(async {
        let c = cluster().await;
        for i in 0..3 {
            assert!(c.write_any(write(i)).await.is_some());
        }
        for n in &c.nodes {
            n.set_residency(Residency {
                quiesce_after: Duration::from_secs(1),
                max_resident: 0,
            });
        }
        assert_eq!(c.quiesce().await, 1);
        // The followers' groups are quiesced; a second sweep stops every quiesced group.
        let mut resident = 0;
        for n in &c.nodes {
            resident += n.sweep().await.resident;
        }
        assert_eq!(resident, 0, "every quiesced group stopped");
        // The next request starts them from their logs and state.
        assert!(c.write_any(write(3)).await.is_some());
        let leader = c.leader().await;
        let ids = c.nodes[leader].read_ids(&space()).await.unwrap();
        assert_eq!(ids, vec!["m0", "m1", "m2", "m3"]);
    });
}
