//! Durable writes: throughput and latency of group commit, tasks and threads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use anyhow::{ensure, Result};
use engram_core::{Memory, SpaceId};
use engram_storage::{Store, StoreOptions};
use rand::Rng;

use super::{space_id, Config};
use crate::util::{self, compare, report, timed, Better, CpuUsage, DIM};

/// The outcome of one fixed-duration write run.
struct WriteRun {
    ops_per_s: f64,
    /// Acknowledgement latency of every write that started in the measured window, sorted.
    latencies_ns: Vec<u64>,
}

impl WriteRun {
    fn p_ms(&self, p: f64) -> f64 {
        util::percentile(&self.latencies_ns, p) as f64 / 1e6
    }
}

/// `writers` threads call `remember` (one memory each, acknowledged after the group commit's
/// fsync) into `spaces` spaces of a fresh store, for the warm-up then the measured time.
/// How the concurrent writers run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writers {
    /// One OS thread per writer, each blocked in `Store::remember` until its fsync.
    Threads,
    /// One async task per writer on a 2-worker tokio runtime, awaiting
    /// `Store::remember_async` (how the server drives the store).
    Tasks,
}

fn write_run(
    cfg: &Config,
    root: &Path,
    writers: usize,
    spaces: usize,
    mode: Writers,
) -> Result<WriteRun> {
    let dir = tempfile::tempdir_in(root)?;
    let store = std::sync::Arc::new(Store::open_dir(dir.path(), StoreOptions::default())?);
    let ids: Vec<SpaceId> = (0..spaces)
        .map(|i| space_id(format!("s{i}")))
        .collect::<Result<_>>()?;
    let (created, create_time) = timed(|| -> Result<()> {
        for id in &ids {
            store.create_space(id, DIM as u32)?;
        }
        Ok(())
    });
    created?;
    if spaces > 1 {
        println!(
            "# created {spaces} spaces in {:.2} s (one durable record each)",
            create_time.as_secs_f64()
        );
    }

    let (window_ops, window, mut latencies_ns, cpu) = match mode {
        Writers::Threads => write_threads(cfg, &store, &ids, writers)?,
        Writers::Tasks => write_tasks(cfg, &store, &ids, writers)?,
    };
    latencies_ns.sort_unstable();
    ensure!(!latencies_ns.is_empty(), "no write completed in the window");
    let st = store.stats();
    let commits = st.group_commits.load(Ordering::Relaxed).max(1);
    let records = st.records.load(Ordering::Relaxed);
    let fsync_ms = st.fsync_micros_total.load(Ordering::Relaxed) as f64 / 1e3 / commits as f64;
    let ops_per_s = window_ops as f64 / window.as_secs_f64();
    let how = match mode {
        Writers::Threads => "threads",
        Writers::Tasks => "async tasks",
    };
    println!(
        "# {writers} writers ({how}) into {spaces} space(s): {window_ops} acknowledged writes in {:.2} s; \
         {commits} group commits, {:.1} records per commit, {fsync_ms:.2} ms mean fsync \
         (max {:.1} ms, {} over 2 ms), {} flushes; {cpu}",
        window.as_secs_f64(),
        records as f64 / commits as f64,
        st.fsync_micros_max.load(Ordering::Relaxed) as f64 / 1e3,
        st.fsyncs_over_2ms.load(Ordering::Relaxed),
        st.flushes.load(Ordering::Relaxed),
    );
    drop(store);
    Ok(WriteRun {
        ops_per_s,
        latencies_ns,
    })
}

type Window = (u64, std::time::Duration, Vec<u64>, String);

/// Measures `completed` over the timed window once the writers are warm.
fn measure_window(
    cfg: &Config,
    completed: &AtomicU64,
    measuring: &AtomicBool,
    stop: &AtomicBool,
) -> (u64, std::time::Duration, String) {
    thread::sleep(cfg.warmup);
    let ops0 = completed.load(Ordering::Relaxed);
    let cpu0 = CpuUsage::now();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    thread::sleep(cfg.write_time);
    let ops1 = completed.load(Ordering::Relaxed);
    let window = t0.elapsed();
    let cpu = CpuUsage::now().since(&cpu0, window, ops1 - ops0);
    stop.store(true, Ordering::Relaxed);
    (ops1 - ops0, window, cpu)
}

/// The next memory a writer stores: a pooled one with a fresh id and timestamp.
fn next_memory(pool: &[Memory], k: usize, n: u64) -> Memory {
    let mut m = pool[k % pool.len()].clone();
    m.id = util::memory_id(n);
    m.timestamp_us = util::now_us();
    m
}

fn write_tasks(
    cfg: &Config,
    store: &std::sync::Arc<Store>,
    ids: &[SpaceId],
    writers: usize,
) -> Result<Window> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let next_id = std::sync::Arc::new(AtomicU64::new(0));
    let completed = std::sync::Arc::new(AtomicU64::new(0));
    let measuring = std::sync::Arc::new(AtomicBool::new(false));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let ids = std::sync::Arc::new(ids.to_vec());
    let handles: Vec<_> = (0..writers)
        .map(|t| {
            let (store, ids) = (store.clone(), ids.clone());
            let (next_id, completed) = (next_id.clone(), completed.clone());
            let (measuring, stop) = (measuring.clone(), stop.clone());
            rt.spawn(async move {
                let mut rng = util::rng(1_000 + t as u64);
                let pool: Vec<Memory> = (0..32).map(|i| util::memory(&mut rng, i, DIM)).collect();
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let m = next_memory(&pool, k, next_id.fetch_add(1, Ordering::Relaxed));
                    k += 1;
                    let space = &ids[if ids.len() == 1 {
                        0
                    } else {
                        rng.gen_range(0..ids.len())
                    }];
                    let measured = measuring.load(Ordering::Relaxed);
                    let t0 = Instant::now();
                    let commit = store.remember_async(space, m);
                    let done = match commit {
                        Ok(c) => c.await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = done {
                        stop.store(true, Ordering::Relaxed);
                        return Err(anyhow::Error::from(e));
                    }
                    let ns = t0.elapsed().as_nanos() as u64;
                    completed.fetch_add(1, Ordering::Relaxed);
                    if measured && !stop.load(Ordering::Relaxed) {
                        latencies.push(ns);
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let (ops, window, cpu) = measure_window(cfg, &completed, &measuring, &stop);
    let mut all = Vec::new();
    for h in handles {
        all.push(rt.block_on(h)??);
    }
    Ok((ops, window, all.concat(), cpu))
}

fn write_threads(
    cfg: &Config,
    store: &std::sync::Arc<Store>,
    ids: &[SpaceId],
    writers: usize,
) -> Result<Window> {
    let store: &Store = store;
    let ids = &ids.to_vec();
    let next_id = AtomicU64::new(0);
    let completed = AtomicU64::new(0);
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    thread::scope(|s| -> Result<_> {
        let handles: Vec<_> = (0..writers)
            .map(|t| {
                let (store, ids) = (&store, &ids);
                let (next_id, completed) = (&next_id, &completed);
                let (measuring, stop) = (&measuring, &stop);
                s.spawn(move || -> Result<Vec<u64>> {
                    let result = (|| {
                        let mut rng = util::rng(1_000 + t as u64);
                        // Generated up front so that the loop measures the engine, not the RNG.
                        let pool: Vec<Memory> =
                            (0..32).map(|i| util::memory(&mut rng, i, DIM)).collect();
                        let mut latencies = Vec::with_capacity(1 << 16);
                        let mut k = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let n = next_id.fetch_add(1, Ordering::Relaxed);
                            let m = next_memory(&pool, k, n);
                            k += 1;
                            let space = if ids.len() == 1 {
                                &ids[0]
                            } else {
                                &ids[rng.gen_range(0..ids.len())]
                            };
                            let measured = measuring.load(Ordering::Relaxed);
                            let t0 = Instant::now();
                            store.remember(space, m)?;
                            let ns = t0.elapsed().as_nanos() as u64;
                            completed.fetch_add(1, Ordering::Relaxed);
                            if measured && !stop.load(Ordering::Relaxed) {
                                latencies.push(ns);
                            }
                        }
                        Ok(latencies)
                    })();
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        let (ops, window, cpu) = measure_window(cfg, &completed, &measuring, &stop);
        let mut all = Vec::new();
        for h in handles {
            all.push(h.join().expect("writer thread panicked")?);
        }
        Ok((ops, window, all.concat(), cpu))
    })
}

pub(super) fn writes(cfg: &Config, root: &Path) -> Result<()> {
    println!("# durable writes: each remember is acknowledged after its group commit's fsync");
    println!(
        "# main figures: 64 async tasks on a 2-worker tokio runtime awaiting \
         Store::remember_async (how the server drives the store); '_64_threads': 64 OS threads \
         blocked in Store::remember"
    );
    let main = write_run(cfg, root, 64, 1, Writers::Tasks)?;
    report("write_durable_ops_per_s", main.ops_per_s, "ops/s");
    compare(
        "write_durable_ops_per_s",
        main.ops_per_s,
        "ops/s",
        Better::Higher,
        Some(45_000.0),
        Some(90_000.0),
    );
    report("write_p50_ms", main.p_ms(50.0), "ms");
    report("write_p99_ms", main.p_ms(99.0), "ms");
    compare(
        "write_p99_ms",
        main.p_ms(99.0),
        "ms",
        Better::Lower,
        Some(6.2),
        Some(2.0),
    );
    println!(
        "# write latency over {} writes: p90 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        main.latencies_ns.len(),
        main.p_ms(90.0),
        main.p_ms(95.0),
        main.p_ms(99.0),
        main.p_ms(99.9),
        main.p_ms(100.0)
    );
    report("write_durable_ops_per_s_64w", main.ops_per_s, "ops/s");
    let threads = write_run(cfg, root, 64, 1, Writers::Threads)?;
    report(
        "write_durable_ops_per_s_64_threads",
        threads.ops_per_s,
        "ops/s",
    );
    report("write_p99_ms_64_threads", threads.p_ms(99.0), "ms");
    println!(
        "# threads latency: p90 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        threads.p_ms(90.0),
        threads.p_ms(95.0),
        threads.p_ms(99.0),
        threads.p_ms(99.9),
        threads.p_ms(100.0)
    );
    for writers in [1, 4, 16] {
        let r = write_run(cfg, root, writers, 1, Writers::Tasks)?;
        report(
            &format!("write_durable_ops_per_s_{writers}w"),
            r.ops_per_s,
            "ops/s",
        );
        println!(
            "#   {writers} writers: p50 {:.2} ms, p99 {:.2} ms",
            r.p_ms(50.0),
            r.p_ms(99.0)
        );
    }
    let many = write_run(cfg, root, 64, 1_000, Writers::Tasks)?;
    report(
        "write_durable_ops_per_s_1000_spaces",
        many.ops_per_s,
        "ops/s",
    );
    println!(
        "  vs seed: write_durable_ops_per_s_1000_spaces = {:.0} ops/s; target: the same as one \
         space ({:.0} ops/s): ratio {:.2}; p99 {:.2} ms",
        many.ops_per_s,
        main.ops_per_s,
        many.ops_per_s / main.ops_per_s,
        many.p_ms(99.0)
    );
    Ok(())
}
