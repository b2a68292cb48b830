//! Leader crash to the first acknowledged write, in simulated time: three nodes on
//! in-memory fault-injecting disks in one paused tokio runtime (time advances only when every
//! task waits), so the figure is the protocol's (election timeout, vote, commit of the new
//! leader's first entry), not this machine's speed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use engram_replication::codec::ProposeOutcome;
use engram_replication::network::LocalTransport;
use engram_replication::runtime::seed_thread_rng;
use engram_replication::types::NodeAddr;
use engram_replication::ReplicaNode;
use engram_storage::{Command, Disk, FaultDisk, Op, Store, StoreOptions};
use tokio::time::Instant;

use super::{create_command, raft_config, space, Config};
use crate::util::{self, report, DIM};

const HEARTBEAT_MS: u64 = 50;

pub(crate) fn failover(cfg: &Config) -> Result<()> {
    let mut times = Vec::with_capacity(cfg.failovers);
    for round in 0..cfg.failovers {
        seed_thread_rng(Some(round as u64));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?;
        times.push(rt.block_on(one(round as u64))?);
    }
    seed_thread_rng(None);
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "# failover, {} leader crashes (heartbeat {HEARTBEAT_MS} ms, election timeout {}-{} ms): \
         first acknowledged write after the crash, simulated time: min {:.0} ms, P50 {:.0} ms, \
         P99 {:.0} ms, max {:.0} ms",
        times.len(),
        HEARTBEAT_MS * 4,
        HEARTBEAT_MS * 8,
        ms(times[0]),
        ms(util::percentile(&times, 50.0)),
        ms(util::percentile(&times, 99.0)),
        ms(*times.last().expect("at least one failover"))
    );
    report(
        "replication_failover_p50",
        ms(util::percentile(&times, 50.0)),
        "ms",
    );
    report(
        "replication_failover_p99",
        ms(util::percentile(&times, 99.0)),
        "ms",
    );
    Ok(())
}

fn opts() -> StoreOptions {
    StoreOptions {
        inline_commit: true,
        background_compaction: false,
        wal_preallocate: false,
        ..StoreOptions::default()
    }
}

/// One cluster, a leader crash, the time to the next acknowledged write.
async fn one(round: u64) -> Result<Duration> {
    let transport = LocalTransport::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let disk: Arc<dyn Disk> = Arc::new(FaultDisk::new());
        let store = Arc::new(Store::open(disk, Path::new("/data"), opts())?);
        let node = ReplicaNode::open(id, store, transport.clone(), raft_config(HEARTBEAT_MS))?;
        transport.register(&node);
        nodes.push(node);
    }
    let sp = space(0);
    for n in &nodes {
        n.group(&sp).await?;
    }
    let members = (1..=3u64)
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
    nodes[0].initialize(&sp, members).await?;
    let mut leader = None;
    for _ in 0..200 {
        for (i, n) in nodes.iter().enumerate() {
            if let ProposeOutcome::Applied(_) = n.propose(&sp, create_command()).await {
                leader = Some(i);
            }
        }
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(leader) = leader else {
        bail!("round {round}: no leader")
    };
    let mut rng = util::rng(round);
    for k in 0..20 {
        let m = util::memory(&mut rng, k, DIM);
        let c = Command {
            op: Op::Remember(m),
            request: None,
        };
        if !matches!(
            nodes[leader].propose(&sp, c).await,
            ProposeOutcome::Applied(_)
        ) {
            bail!("round {round}: a write before the crash failed");
        }
    }
    // Crash the leader some time into a heartbeat period.
    tokio::time::sleep(Duration::from_millis(round * 7 % HEARTBEAT_MS)).await;
    transport.set_down(nodes[leader].id(), true);
    nodes[leader].shutdown().await;
    let crashed = Instant::now();
    let others: Vec<&Arc<ReplicaNode>> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n)
        .collect();
    let mut k = 100;
    loop {
        for n in &others {
            k += 1;
            let m = util::memory(&mut rng, k, DIM);
            let c = Command {
                op: Op::Remember(m),
                request: None,
            };
            let out = tokio::time::timeout(Duration::from_millis(200), n.propose(&sp, c)).await;
            if let Ok(ProposeOutcome::Applied(_)) = out {
                let took = crashed.elapsed();
                for n in &others {
                    n.shutdown().await;
                }
                return Ok(took);
            }
        }
        if crashed.elapsed() > Duration::from_secs(60) {
            bail!("round {round}: no write acknowledged within 60 s of the crash");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
