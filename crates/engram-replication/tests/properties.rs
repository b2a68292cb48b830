//! Property tests of the replication core:
//! - a snapshot installed, then the log replayed after it, gives the state that applying the
//!   whole log gives (and so does a restart of the installed node, re-applying from its
//!   `raft.state`);
//! - leader changes (elections forced on random nodes, leaders crashed with their unsynced
//!   data lost, nodes cut off) never lose a committed entry: every acknowledged write is in a
//!   linearizable read once everything heals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engram_core::{Memory, MemoryId, SpaceId};
use engram_replication::codec::ProposeOutcome;
use engram_replication::network::LocalTransport;
use engram_replication::types::NodeAddr;
use engram_replication::ReplicaNode;
use engram_storage::{
    Command, Disk, FaultDisk, LogPos, Op, RaftApplied, RaftMembership, RaftNode, Store,
    StoreOptions,
};
use proptest::prelude::*;

fn opts() -> StoreOptions {
    StoreOptions {
        inline_commit: true,
        background_compaction: false,
        wal_preallocate: false,
        wal_segment_bytes: 64 << 10,
        max_record_bytes: 32 << 10,
        max_pending_bytes: 64 << 10,
        ..StoreOptions::default()
    }
}

fn space() -> SpaceId {
    SpaceId::new("p").unwrap()
}

fn memory(id: u8, version: u8) -> Memory {
    Memory {
        id: MemoryId::new(format!("m{id}")).unwrap(),
        content: format!("memory {id} version {version}"),
        embedding: vec![f32::from(id) + 1.0, 1.0, f32::from(version), 0.5],
        confidence: 0.5,
        timestamp_us: 1_700_000_000_000_000,
        metadata: Default::default(),
        links: vec![],
    }
}

#[derive(Debug, Clone)]
enum Change {
    Remember(u8, u8),
    Forget(u8),
    Link(u8, u8),
    Flush,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0u8..12, 0u8..4).prop_map(|(i, v)| Change::Remember(i, v)),
        1 => (0u8..12).prop_map(Change::Forget),
        1 => (0u8..12, 0u8..12).prop_map(|(a, b)| Change::Link(a, b)),
        1 => Just(Change::Flush),
    ]
}

fn op(c: &Change) -> Option<Op> {
    match c {
        Change::Remember(i, v) => Some(Op::Remember(memory(*i, *v))),
        Change::Forget(i) => Some(Op::Forget(MemoryId::new(format!("m{i}")).unwrap())),
        Change::Link(a, b) => Some(Op::Link {
            from: MemoryId::new(format!("m{a}")).unwrap(),
            to: MemoryId::new(format!("m{b}")).unwrap(),
            weight: 0.5,
        }),
        Change::Flush => None,
    }
}

fn state_at(index: u64) -> RaftApplied {
    RaftApplied {
        applied: Some(LogPos { term: 1, index }),
        membership_at: Some(LogPos { term: 1, index: 1 }),
        membership: RaftMembership {
            configs: vec![vec![1]],
            nodes: vec![RaftNode {
                id: 1,
                name: "n1".into(),
                address: "x".into(),
            }],
        },
    }
}

/// Applies entries `from..` of the log (index 2 creates the space, then one per change).
fn apply_from(store: &Store, log: &[Change], from: u64) {
    let s = space();
    for (i, c) in log.iter().enumerate() {
        let index = i as u64 + 3;
        if index < from {
            continue;
        }
        match op(c) {
            Some(op) => {
                store
                    .apply_replicated(&s, index, Some(op), &state_at(index))
                    .unwrap();
            }
            None => {
                store
                    .apply_replicated(&s, index, None, &state_at(index))
                    .unwrap();
                store.compact().unwrap();
            }
        }
    }
}

fn create(store: &Store) {
    let s = space();
    store.apply_replicated(&s, 1, None, &state_at(1)).unwrap();
    let create = Op::SpaceCreate {
        dimension: 4,
        created_at_us: 1,
        embedder: String::new(),
    };
    store
        .apply_replicated(&s, 2, Some(create), &state_at(2))
        .unwrap();
}

/// The space's memories, in id order.
fn contents(store: &Store) -> Vec<Memory> {
    let mut out = Vec::new();
    store.for_each(&space(), |m| out.push(m)).unwrap();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn open(disk: &FaultDisk, root: &str) -> Store {
    let d: Arc<dyn Disk> = Arc::new(disk.clone());
    Store::open(d, Path::new(root), opts()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_snapshot_install_then_replay_equals_the_state_without_it(
        log in prop::collection::vec(change(), 1..60),
        cut in 0usize..60,
        other in prop::collection::vec(change(), 0..20),
    ) {
        let cut = cut.min(log.len());
        let disk = FaultDisk::new();
        // Without a snapshot: the whole log applied.
        let whole = open(&disk, "/whole");
        create(&whole);
        apply_from(&whole, &log, 3);
        let want = contents(&whole);
        // The leader: the log up to the cut, a snapshot, then the rest.
        let leader = open(&disk, "/leader");
        create(&leader);
        apply_from(&leader, &log[..cut], 3);
        let snap = Path::new("/snap/s");
        let state = leader.snapshot_replicated(&space(), snap, &RaftApplied::default()).unwrap();
        prop_assert_eq!(state.applied.map(|p| p.index), Some(cut as u64 + 2));
        apply_from(&leader, &log, cut as u64 + 3);
        prop_assert_eq!(&contents(&leader), &want);
        // A follower with a state of its own installs the snapshot, then replays the rest.
        let follower = open(&disk, "/follower");
        create(&follower);
        apply_from(&follower, &other, 3);
        follower.install_replicated(&space(), snap).unwrap();
        apply_from(&follower, &log, cut as u64 + 3);
        prop_assert_eq!(&contents(&follower), &want);
        // Restarted, it re-applies from what its raft.state says (as the group does).
        follower.compact().unwrap();
        drop(follower);
        let follower = open(&disk, "/follower");
        let applied = follower.replicated_state(&space()).unwrap().unwrap().applied.unwrap().index;
        apply_from(&follower, &log, applied + 1);
        prop_assert_eq!(&contents(&follower), &want);
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write,
    Elect(u64),
    Crash(u64),
    CutOff(u64),
    Heal,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Write),
        1 => (1u64..=3).prop_map(Step::Elect),
        1 => (1u64..=3).prop_map(Step::Crash),
        1 => (1u64..=3).prop_map(Step::CutOff),
        1 => Just(Step::Heal),
    ]
}

fn raft_config() -> openraft::Config {
    openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    }
}

struct Cluster {
    transport: Arc<LocalTransport>,
    disks: Vec<FaultDisk>,
    nodes: BTreeMap<u64, Arc<ReplicaNode>>,
}

impl Cluster {
    async fn start(&mut self, id: u64) {
        let d: Arc<dyn Disk> = Arc::new(self.disks[id as usize - 1].clone());
        let store = Arc::new(Store::open(d, Path::new("/data"), opts()).unwrap());
        let node = ReplicaNode::open(id, store, self.transport.clone(), raft_config()).unwrap();
        self.transport.register(&node);
        node.group(&space()).await.unwrap();
        self.nodes.insert(id, node);
    }

    async fn crash(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
            drop(node);
            self.disks[id as usize - 1].power_cut();
        }
        self.start(id).await;
    }

    /// Proposes through any node, following "not the leader"; `Some(true)` acknowledged,
    /// `Some(false)` refused, `None` unknown.
    async fn write(&self, m: Memory) -> Option<bool> {
        let mut to = *self.nodes.keys().next().unwrap();
        for _ in 0..4 {
            let node = self.nodes.get(&to)?;
            let c = Command {
                op: Op::Remember(m.clone()),
                request: None,
            };
            let out = tokio::time::timeout(Duration::from_secs(3), node.propose(&space(), c)).await;
            match out {
                Ok(ProposeOutcome::Applied(_)) => return Some(true),
                Ok(ProposeOutcome::NotLeader(Some(l))) if self.nodes.contains_key(&l) => to = l,
                Ok(ProposeOutcome::NotLeader(_)) => return Some(false),
                _ => return None,
            }
        }
        None
    }

    async fn read(&self) -> Option<BTreeSet<String>> {
        for node in self.nodes.values() {
            if let Ok(Ok(ids)) =
                tokio::time::timeout(Duration::from_secs(3), node.read_ids(&space())).await
            {
                return Some(ids.into_iter().collect());
            }
        }
        None
    }
}

async fn leader_changes(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut c = Cluster {
        transport: LocalTransport::new(),
        disks: (0..3).map(|_| FaultDisk::new()).collect(),
        nodes: BTreeMap::new(),
    };
    for id in 1..=3 {
        c.start(id).await;
    }
    let members: BTreeMap<u64, NodeAddr> = (1..=3)
        .map(|i| {
            (
                i,
                NodeAddr {
                    name: format!("n{i}"),
                    address: String::new(),
                },
            )
        })
        .collect();
    c.nodes[&1].initialize(&space(), members).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let create = Command {
        op: Op::SpaceCreate {
            dimension: 4,
            created_at_us: 1,
            embedder: String::new(),
        },
        request: None,
    };
    let mut created = false;
    for _ in 0..20 {
        for node in c.nodes.values() {
            if let ProposeOutcome::Applied(_) = node.propose(&space(), create.clone()).await {
                created = true;
            }
        }
        if created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    prop_assert!(created, "the space was never created");
    let (mut acked, mut attempted) = (BTreeSet::new(), BTreeSet::new());
    for (i, s) in steps.into_iter().enumerate() {
        match s {
            Step::Write => {
                let m = memory((i % 250) as u8, 0);
                let id = m.id.as_str().to_string();
                match c.write(m).await {
                    Some(true) => {
                        attempted.insert(id.clone());
                        acked.insert(id);
                    }
                    Some(false) => {}
                    None => {
                        attempted.insert(id);
                    }
                }
            }
            Step::Elect(n) => {
                if let Some(node) = c.nodes.get(&n) {
                    if let Ok(g) = node.group(&space()).await {
                        let _ = g.trigger().elect(false).await;
                    }
                }
            }
            Step::Crash(n) => c.crash(n).await,
            Step::CutOff(n) => c.transport.set_down(n, true),
            Step::Heal => {
                for n in 1..=3 {
                    c.transport.set_down(n, false);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for n in 1..=3 {
        c.transport.set_down(n, false);
    }
    let mut last = None;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = c.read().await;
        if last.is_some() {
            break;
        }
    }
    let last = last.ok_or_else(|| TestCaseError::fail("no read after healing"))?;
    for id in &acked {
        prop_assert!(last.contains(id), "acknowledged {} lost", id);
    }
    for id in &last {
        prop_assert!(attempted.contains(id), "{} present, never written", id);
    }
    for node in c.nodes.values() {
        node.shutdown().await;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn leader_changes_never_lose_a_committed_entry(
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(leader_changes(steps))?;
    }
}
