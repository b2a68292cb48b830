//! The parts of the replication suite that run on real disks with real time.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engram_core::SpaceId;
use engram_replication::codec::ProposeOutcome;
use engram_replication::Residency;
use engram_storage::{Command, Op, Store, StoreOptions};

use super::{drive, propose, runtime, space, Config, Nodes, Run};
use crate::util::{self, compare, report, Better, CpuUsage, MemUsage, DIM};

fn line(what: &str, r: &Run) {
    println!(
        "# {what}: {:.0} acknowledged writes/s over {:.1} s, P50 {:.2} ms, P99 {:.2} ms; {}",
        r.ops_per_s,
        r.window.as_secs_f64(),
        r.p_ms(50.0),
        r.p_ms(99.0),
        r.cpu
    );
}

fn remember(m: engram_core::Memory) -> Command {
    Command {
        op: Op::Remember(m),
        request: None,
    }
}

/// Writes through `node` to `space`, `writers` at a time.
fn drive_group(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    nodes: &Nodes,
    leader: usize,
    sp: SpaceId,
) -> Result<Run> {
    // A leader change under load (an election timeout passed on a starved follower) is raft
    // at work, not a failed run: writes follow the new leader, and the changes are counted.
    let nodes = Arc::new(nodes.nodes.clone());
    let leader = Arc::new(AtomicUsize::new(leader));
    let changes = Arc::new(AtomicUsize::new(0));
    let seen = changes.clone();
    let run = drive(rt, cfg, move |_, m| {
        let (nodes, leader, changes, sp) =
            (nodes.clone(), leader.clone(), changes.clone(), sp.clone());
        async move {
            for _ in 0..200 {
                let i = leader.load(Ordering::Relaxed);
                match nodes[i].propose(&sp, remember(m.clone())).await {
                    ProposeOutcome::Applied(_) => return Ok(()),
                    ProposeOutcome::NotLeader(Some(l)) => {
                        if let Some(k) = nodes.iter().position(|n| n.id() == l) {
                            if leader.swap(k, Ordering::Relaxed) != k {
                                changes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    ProposeOutcome::NotLeader(None) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => anyhow::bail!("a write to {sp}: {other:?}"),
                }
            }
            anyhow::bail!("no leader took a write to {sp} in 200 tries")
        }
    })?;
    let changes = seen.load(Ordering::Relaxed);
    if changes > 0 {
        println!("# the group's leader changed {changes} time(s) during the run");
    }
    Ok(run)
}

/// The stores of the write runs: no HNSW index is built while they run. Three nodes in one
/// process on a 2-core machine would each build the index of their replica (three times the
/// single node's indexing on the same cores; a cluster builds them on three machines): that
/// measured the indexer, not replication.
fn write_options() -> StoreOptions {
    StoreOptions {
        index_min_rows: usize::MAX,
        ..StoreOptions::default()
    }
}

/// Durable writes: a single node (the store alone), a raft group of one, a group of three.
pub(crate) fn writes(cfg: &Config, root: &Path) -> Result<()> {
    let rt = runtime()?;
    let sp = space(0);
    let dir = tempfile::tempdir_in(root)?;
    let store = Arc::new(Store::open_dir(dir.path(), write_options())?);
    store.create_space(&sp, DIM as u32)?;
    let single = {
        let (store, sp) = (store.clone(), sp.clone());
        drive(&rt, cfg, move |_, m| {
            let (store, sp) = (store.clone(), sp.clone());
            async move {
                store.remember_async(&sp, m)?.await?;
                Ok(())
            }
        })?
    };
    drop(store);
    line(&format!("single node, {} writers", cfg.writers), &single);

    let one = Nodes::open(&root.join("one"), 1, &write_options(), 50)?;
    let leader = rt.block_on(one.create_group(&sp))?;
    let group1 = drive_group(&rt, cfg, &one, leader, sp.clone())?;
    rt.block_on(one.shutdown());
    line("raft group of one", &group1);

    let three = Nodes::open(&root.join("three"), 3, &write_options(), 50)?;
    let leader = rt.block_on(three.create_group(&sp))?;
    let before = three.group_commits();
    let group3 = drive_group(&rt, cfg, &three, leader, sp.clone())?;
    let after = three.group_commits();
    rt.block_on(three.shutdown());
    line("raft group of three (3 in-process nodes, 3 WALs)", &group3);
    println!(
        "# group commits per node during the group-of-three run (warm-up included): {:?}",
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>()
    );

    report(
        "replication_single_node_writes_per_s",
        single.ops_per_s,
        "ops/s",
    );
    report("replication_single_node_p99", single.p_ms(99.0), "ms");
    report(
        "replication_group_of_one_writes_per_s",
        group1.ops_per_s,
        "ops/s",
    );
    report("replication_group_of_one_p99", group1.p_ms(99.0), "ms");
    report(
        "replication_three_replicas_writes_per_s",
        group3.ops_per_s,
        "ops/s",
    );
    report("replication_three_replicas_p99", group3.p_ms(99.0), "ms");
    let ratio = group3.ops_per_s / single.ops_per_s;
    compare(
        "replication_three_replicas_share_of_single_node",
        ratio,
        "ratio",
        Better::Higher,
        None,
        Some(0.60),
    );
    compare(
        "replication_three_replicas_p99_over_single_node",
        group3.p_ms(99.0) - single.p_ms(99.0),
        "ms",
        Better::Lower,
        None,
        Some(1.0),
    );
    compare(
        "replication_group_of_one_share_of_single_node",
        group1.ops_per_s / single.ops_per_s,
        "ratio",
        Better::Higher,
        None,
        None,
    );
    Ok(())
}

/// fsyncs per second per node with writes to one space, then spread over `cfg.many` spaces
/// (each its own group of three).
pub(crate) fn spaces(cfg: &Config, root: &Path) -> Result<()> {
    let rt = runtime()?;
    // A slower heartbeat: 1,000 groups of three are 2,000 follower links on two cores.
    let heartbeat = 250;
    let nodes = Arc::new(Nodes::open(
        &root.join("many"),
        3,
        &write_options(),
        heartbeat,
    )?);
    let t = Instant::now();
    let leaders: Vec<usize> = rt.block_on(async {
        let mut leaders = Vec::with_capacity(cfg.many);
        for chunk in (0..cfg.many).collect::<Vec<_>>().chunks(50) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let nodes = nodes.clone();
                    tokio::spawn(async move { nodes.create_group(&space(i)).await })
                })
                .collect();
            for t in tasks {
                leaders.push(t.await??);
            }
        }
        Ok::<_, anyhow::Error>(leaders)
    })?;
    println!(
        "# {} groups of three created (each with its space) in {:.1} s, heartbeat {heartbeat} ms",
        cfg.many,
        t.elapsed().as_secs_f64()
    );
    let leaders = Arc::new(leaders);
    let mut per_node = Vec::new();
    for spread in [1, cfg.many] {
        let before = nodes.group_commits();
        let (nodes2, leaders2) = (nodes.clone(), leaders.clone());
        let run = drive(&rt, cfg, move |n, m| {
            let (nodes, leaders) = (nodes2.clone(), leaders2.clone());
            async move {
                let i = (n as usize * 7919) % spread;
                let sp = space(i);
                // The leader found at creation, then the others if it moved.
                let first = leaders[i];
                for k in 0..nodes.nodes.len() {
                    let node = &nodes.nodes[(first + k) % nodes.nodes.len()];
                    if let ProposeOutcome::Applied(_) = node.propose(&sp, remember(m.clone())).await
                    {
                        return Ok(());
                    }
                }
                anyhow::bail!("no node took a write to {sp}")
            }
        })?;
        let after = nodes.group_commits();
        let secs = cfg.warmup.as_secs_f64() + run.window.as_secs_f64();
        let rates: Vec<f64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b) as f64 / secs)
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        line(&format!("writes spread over {spread} space(s)"), &run);
        println!(
            "# fsyncs (group commits) per second per node with {spread} busy space(s): {:?} (mean {mean:.0})",
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
        report(
            &format!("replication_fsyncs_per_s_per_node_{spread}_spaces"),
            mean,
            "fsyncs/s",
        );
        report(
            &format!("replication_writes_per_s_{spread}_spaces"),
            run.ops_per_s,
            "ops/s",
        );
        per_node.push(mean);
    }
    compare(
        "replication_fsyncs_1000_spaces_over_1_space",
        per_node[1] / per_node[0],
        "ratio",
        Better::Lower,
        None,
        Some(1.5),
    );
    rt.block_on(nodes.shutdown());
    Ok(())
}

/// Idle CPU of the whole process over `secs`, in cores, and context switches per second.
fn idle_cost(secs: u64) -> (f64, f64) {
    let idle = Duration::from_secs(secs);
    let cpu0 = CpuUsage::now();
    std::thread::sleep(idle);
    let cpu1 = CpuUsage::now();
    let cpu_s = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)).as_secs_f64();
    let switches = ((cpu1.voluntary_switches - cpu0.voluntary_switches)
        + (cpu1.involuntary_switches - cpu0.involuntary_switches)) as f64;
    (cpu_s / idle.as_secs_f64(), switches / idle.as_secs_f64())
}

/// Creates the groups of spaces `0..n` on `nodes`, 50 at a time.
fn create_groups(
    rt: &tokio::runtime::Runtime,
    nodes: &Arc<Nodes>,
    n: usize,
    sweep_every: usize,
) -> Result<()> {
    rt.block_on(async {
        for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(50).enumerate() {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let nodes = nodes.clone();
                    tokio::spawn(async move { nodes.create_group(&space(i)).await })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
            if sweep_every > 0 && (k + 1) % sweep_every == 0 {
                for node in &nodes.nodes {
                    node.sweep().await;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// What a resident group costs, awake (heartbeats every 50 ms) and quiesced; and a node of
/// many spaces with a bounded resident set.
pub(crate) fn resident(cfg: &Config, root: &Path) -> Result<()> {
    let rt = runtime()?;
    // Awake, 600 replicas already take most of two cores (measured below): more would starve
    // their elections. The cost per replica is the figure.
    let groups = 200;
    let secs = if cfg.quick { 3 } else { 10 };
    util::trim_heap();
    let mem0 = MemUsage::now();
    let nodes = Arc::new(Nodes::open(
        &root.join("resident"),
        3,
        &StoreOptions::default(),
        50,
    )?);
    create_groups(&rt, &nodes, groups, 0)?;
    // Every new space flushed now (its space.meta and raft.state), not in the idle window.
    for n in &nodes.nodes {
        n.store().compact()?;
    }
    std::thread::sleep(Duration::from_secs(2));
    util::trim_heap();
    let mem1 = MemUsage::now();
    let (awake, awake_switches) = idle_cost(secs);
    let replicas = (groups * 3) as f64;
    let rss_kb = mem1.rss_growth_kb(&mem0).unwrap_or(0) as f64;
    println!(
        "# {groups} idle groups of three ({replicas} replicas on 3 nodes, heartbeat 50 ms), awake: \
         RSS +{:.1} MB, idle CPU {awake:.3} cores, {awake_switches:.0} context switches/s",
        rss_kb / 1024.0
    );
    // Quiesced: every leader told its followers, every ticker stopped.
    rt.block_on(async {
        for n in &nodes.nodes {
            n.set_residency(Residency {
                quiesce_after: Duration::ZERO,
                max_resident: usize::MAX,
            });
        }
        let mut quiesced = 0;
        for n in &nodes.nodes {
            quiesced += n.sweep().await.quiesced;
        }
        println!("# {quiesced} of {groups} groups quiesced");
    });
    let (quiet, quiet_switches) = idle_cost(secs);
    println!(
        "# the same groups quiesced: idle CPU {quiet:.4} cores, {quiet_switches:.0} context switches/s"
    );
    report("replication_resident_replica_rss", rss_kb / replicas, "kB");
    report(
        "replication_awake_replica_idle_cpu",
        awake / replicas * 1e6,
        "us/s",
    );
    report(
        "replication_awake_replica_wakeups",
        awake_switches / replicas,
        "switches/s",
    );
    report(
        "replication_quiesced_replica_idle_cpu",
        quiet / replicas * 1e6,
        "us/s",
    );
    report(
        "replication_awake_replicas_within_2pct_core",
        0.02 / (awake / replicas),
        "replicas",
    );
    rt.block_on(nodes.shutdown());
    drop(nodes);

    // One node holding many spaces (groups of one), at most 1,000 resident.
    let spaces = if cfg.quick { 10_000 } else { 100_000 };
    util::trim_heap();
    let mem0 = MemUsage::now();
    let one = Arc::new(Nodes::open(
        &root.join("many-spaces"),
        1,
        &StoreOptions::default(),
        50,
    )?);
    one.nodes[0].set_residency(Residency {
        quiesce_after: Duration::ZERO,
        max_resident: 1000,
    });
    let t = Instant::now();
    create_groups(&rt, &one, spaces, 10)?;
    let sweep = rt.block_on(one.nodes[0].sweep());
    let created = t.elapsed().as_secs_f64();
    let t = Instant::now();
    one.nodes[0].store().compact()?;
    println!(
        "# the {spaces} new spaces flushed (space.meta, raft.state) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    util::trim_heap();
    let mem1 = MemUsage::now();
    let (cpu, switches) = idle_cost(secs);
    let rss_mb = mem1.rss_growth_kb(&mem0).unwrap_or(0) as f64 / 1024.0;
    println!(
        "# {spaces} spaces (groups of one) on one node, created in {created:.1} s; {} resident after \
         the last sweep: RSS +{rss_mb:.0} MB, idle CPU {cpu:.4} cores, {switches:.0} context switches/s",
        sweep.resident
    );
    report(
        "replication_many_spaces_resident",
        sweep.resident as f64,
        "groups",
    );
    report("replication_many_spaces_rss", rss_mb, "MB");
    compare(
        "replication_many_spaces_idle_cpu",
        cpu,
        "cores",
        Better::Lower,
        None,
        Some(0.02),
    );
    rt.block_on(one.shutdown());
    Ok(())
}

/// Reopening a node whose WAL holds `cfg.recovery_bytes` of raft entries (a group of one:
/// the log re-read, then re-applied up to the saved commit point), against a plain store
/// with a WAL of the same size.
pub(crate) fn recovery(cfg: &Config, root: &Path) -> Result<()> {
    let opts = StoreOptions {
        background_compaction: false,
        ..StoreOptions::default()
    };
    let sp = space(0);
    // Plain.
    let plain = root.join("recovery-plain");
    {
        let store = Store::open_dir(&plain, opts.clone())?;
        store.create_space(&sp, DIM as u32)?;
        let mut n = 0u64;
        while util::dir_file_bytes(&plain.join("wal"))? < cfg.recovery_bytes {
            let mut rng = util::rng(n);
            let batch = (n..n + 100)
                .map(|i| util::memory(&mut rng, i, DIM))
                .collect();
            store.remember_batch(&sp, batch)?;
            n += 100;
        }
    }
    let plain_bytes = util::dir_file_bytes(&plain.join("wal"))?;
    util::drop_page_cache().ok();
    let t = Instant::now();
    let store = Store::open_dir(&plain, opts.clone())?;
    let plain_s = t.elapsed().as_secs_f64();
    drop(store);
    // Raft.
    let rt = runtime()?;
    let dir = root.join("recovery-raft");
    let last = {
        let nodes = Nodes::open(&dir, 1, &opts, 50)?;
        let node = nodes.nodes[0].clone();
        rt.block_on(nodes.create_group(&sp))?;
        let wal = dir.join("n1").join("wal");
        let mut n = 0u64;
        rt.block_on(async {
            while util::dir_file_bytes(&wal)? < cfg.recovery_bytes {
                let tasks: Vec<_> = (0..64)
                    .map(|k| {
                        let (node, sp) = (node.clone(), sp.clone());
                        let mut rng = util::rng(n + k);
                        let m = util::memory(&mut rng, n + k, DIM);
                        tokio::spawn(async move { propose(&node, &sp, remember(m)).await })
                    })
                    .collect();
                for t in tasks {
                    t.await??;
                }
                n += 64;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        let last = rt.block_on(node.last_applied(&sp))?;
        rt.block_on(nodes.shutdown());
        last
    };
    let raft_bytes = util::dir_file_bytes(&dir.join("n1").join("wal"))?;
    util::drop_page_cache().ok();
    let t = Instant::now();
    let (open_s, applied_s) = rt.block_on(async {
        let nodes = Nodes::open(&dir, 1, &opts, 50)?;
        let opened = t.elapsed().as_secs_f64();
        let node = nodes.nodes[0].clone();
        let deadline = Instant::now() + Duration::from_secs(600);
        while node.last_applied(&sp).await? < last {
            if Instant::now() > deadline {
                anyhow::bail!("the group did not re-apply its log in 600 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let applied = t.elapsed().as_secs_f64();
        nodes.shutdown().await;
        Ok::<_, anyhow::Error>((opened, applied))
    })?;
    let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "# recovery: plain WAL {:.0} MB reopened in {plain_s:.2} s; raft WAL {:.0} MB ({last} entries): \
         store and logs reopened in {open_s:.2} s, log re-applied by {applied_s:.2} s",
        plain_bytes as f64 / 1e6,
        raft_bytes as f64 / 1e6
    );
    report(
        "replication_recovery_plain_s_per_gb",
        plain_s / gb(plain_bytes),
        "s/GB",
    );
    report(
        "replication_recovery_raft_open_s_per_gb",
        open_s / gb(raft_bytes),
        "s/GB",
    );
    compare(
        "replication_recovery_raft_s_per_gb",
        applied_s / gb(raft_bytes),
        "s/GB",
        Better::Lower,
        Some(1.41),
        None,
    );
    std::fs::remove_dir_all(&plain).context("removing the plain store")?;
    std::fs::remove_dir_all(&dir).context("removing the raft store")?;
    Ok(())
}
