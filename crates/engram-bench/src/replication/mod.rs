//! The replication suite (`engram-bench replication`): in-process nodes, each with its own
//! store and WAL on disk, connected by `LocalTransport`, against a single node in the same run.
//!
//! Parts (`ENGRAM_BENCH_PARTS`): `writes` (durable writes/s and P99: single node, a raft group
//! of one, a group of three), `spaces` (fsyncs per second per node with one busy space and
//! with 1,000), `resident` (what one resident group costs: memory, idle CPU, wake-ups),
//! `failover` (leader crash to the first acknowledged write, in simulated time), `recovery`
//! (reopening a node whose WAL holds raft records, against a plain WAL of the same size).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use engram_core::{Memory, SpaceId};
use engram_replication::codec::ProposeOutcome;
use engram_replication::network::LocalTransport;
use engram_replication::types::NodeAddr;
use engram_replication::ReplicaNode;
use engram_storage::{Command, Op, Store, StoreOptions};

use crate::util::{self, CpuUsage, DIM};

mod failover;
mod parts;

/// Sizes of one run.
pub(crate) struct Config {
    quick: bool,
    warmup: Duration,
    window: Duration,
    writers: usize,
    /// Groups of the `spaces` part.
    many: usize,
    failovers: usize,
    recovery_bytes: u64,
}

impl Config {
    fn new(quick: bool) -> Self {
        Self {
            quick,
            warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
            window: Duration::from_secs(if quick { 3 } else { 8 }),
            writers: 64,
            many: 1000,
            failovers: if quick { 50 } else { 200 },
            recovery_bytes: if quick { 128 << 20 } else { 1 << 30 },
        }
    }
}

pub fn run(quick: bool) -> Result<()> {
    let cfg = Config::new(quick);
    let root = tempfile::Builder::new()
        .prefix("engram-bench-replication-")
        .tempdir_in(util::bench_root())
        .context("creating the benchmark directory")?;
    println!(
        "# engram-bench replication suite, {} mode, on {}",
        if quick { "quick" } else { "full" },
        util::machine_description()
    );
    println!(
        "# data in {} (release build: {}); load average at start: {}",
        root.path().display(),
        !cfg!(debug_assertions),
        util::load_average()
    );
    let started = Instant::now();
    let parts = util::selected_parts(&["resident", "writes", "spaces", "failover", "recovery"])?;
    let on = |p: &str| parts.iter().any(|q| q == p);
    // First: its memory figure wants a process that has not yet held other parts' data.
    if on("resident") {
        parts::resident(&cfg, root.path())?;
    }
    if on("writes") {
        parts::writes(&cfg, root.path())?;
    }
    if on("spaces") {
        parts::spaces(&cfg, root.path())?;
    }
    if on("failover") {
        failover::failover(&cfg)?;
    }
    if on("recovery") {
        parts::recovery(&cfg, root.path())?;
    }
    println!(
        "# replication suite finished in {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        util::load_average()
    );
    Ok(())
}

pub(crate) fn space(i: usize) -> SpaceId {
    SpaceId::new(format!("s{i}")).expect("a valid space id")
}

pub(crate) fn create_command() -> Command {
    Command {
        op: Op::SpaceCreate {
            dimension: DIM as u32,
            created_at_us: util::now_us(),
            embedder: String::new(),
        },
        request: None,
    }
}

pub(crate) fn raft_config(heartbeat_ms: u64) -> engram_replication::openraft::Config {
    engram_replication::openraft::Config {
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: heartbeat_ms * 4,
        election_timeout_max: heartbeat_ms * 8,
        ..Default::default()
    }
}

/// `n` nodes in `root/n<i>`, each its own store, on one in-process transport.
pub(crate) struct Nodes {
    pub nodes: Vec<Arc<ReplicaNode>>,
}

impl Nodes {
    pub(crate) fn open(
        root: &Path,
        n: u64,
        opts: &StoreOptions,
        heartbeat_ms: u64,
    ) -> Result<Self> {
        let transport = LocalTransport::new();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let dir = root.join(format!("n{id}"));
            let store = Arc::new(Store::open_dir(&dir, opts.clone())?);
            let node = ReplicaNode::open(id, store, transport.clone(), raft_config(heartbeat_ms))?;
            transport.register(&node);
            nodes.push(node);
        }
        Ok(Self { nodes })
    }

    pub(crate) fn members(&self) -> BTreeMap<u64, NodeAddr> {
        self.nodes
            .iter()
            .map(|n| {
                (
                    n.id(),
                    NodeAddr {
                        name: format!("n{}", n.id()),
                        address: String::new(),
                    },
                )
            })
            .collect()
    }

    /// Creates the group of `space` on every node, initialized from the first, and its space;
    /// returns the leader's index in `nodes`.
    pub(crate) async fn create_group(&self, space: &SpaceId) -> Result<usize> {
        for n in &self.nodes {
            n.group(space).await?;
        }
        self.nodes[0].initialize(space, self.members()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if let ProposeOutcome::Applied(_) = n.propose(space, create_command()).await {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("group {space} elected no leader in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn group_commits(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.store().stats().group_commits.load(Ordering::Relaxed))
            .collect()
    }

    pub(crate) async fn shutdown(&self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}

/// What a timed run of concurrent writers measured.
pub(crate) struct Run {
    pub ops_per_s: f64,
    /// Acknowledgement latencies of the writes started in the window, sorted.
    pub latencies_ns: Vec<u64>,
    pub cpu: String,
    pub window: Duration,
}

impl Run {
    /// The `p`-th percentile (0 to 100), in ms.
    pub(crate) fn p_ms(&self, p: f64) -> f64 {
        util::percentile(&self.latencies_ns, p) as f64 / 1e6
    }
}

/// `writers` tasks call `write(n)` (the n-th write, a fresh memory each) on `rt` in a loop: a
/// warm-up, then the measured window.
pub(crate) fn drive<F, Fut>(rt: &tokio::runtime::Runtime, cfg: &Config, write: F) -> Result<Run>
where
    F: Fn(u64, Memory) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let write = Arc::new(write);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..cfg.writers)
        .map(|t| {
            let (write, next, done) = (write.clone(), next.clone(), done.clone());
            let (measuring, stop) = (measuring.clone(), stop.clone());
            rt.spawn(async move {
                let mut rng = util::rng(7_000 + t as u64);
                let pool: Vec<Memory> = (0..16).map(|i| util::memory(&mut rng, i, DIM)).collect();
                let mut lat = Vec::with_capacity(1 << 14);
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let mut m = pool[k % pool.len()].clone();
                    k += 1;
                    m.id = util::memory_id(n);
                    let measured = measuring.load(Ordering::Relaxed);
                    let t0 = Instant::now();
                    if let Err(e) = write(n, m).await {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    if measured && !stop.load(Ordering::Relaxed) {
                        lat.push(t0.elapsed().as_nanos() as u64);
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(cfg.warmup);
    let ops0 = done.load(Ordering::Relaxed);
    let cpu0 = CpuUsage::now();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(cfg.window);
    let ops = done.load(Ordering::Relaxed) - ops0;
    let window = t0.elapsed();
    let cpu = CpuUsage::now().since(&cpu0, window, ops);
    stop.store(true, Ordering::Relaxed);
    let mut latencies_ns = Vec::new();
    for t in tasks {
        latencies_ns.extend(rt.block_on(t)??);
    }
    latencies_ns.sort_unstable();
    anyhow::ensure!(!latencies_ns.is_empty(), "no write completed in the window");
    Ok(Run {
        ops_per_s: ops as f64 / window.as_secs_f64(),
        latencies_ns,
        cpu,
        window,
    })
}

/// Proposes `command` to the group through `node`; an error unless it was applied.
pub(crate) async fn propose(node: &ReplicaNode, space: &SpaceId, command: Command) -> Result<()> {
    match node.propose(space, command).await {
        ProposeOutcome::Applied(_) => Ok(()),
        other => bail!("a write through node {} to {space}: {other:?}", node.id()),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
