//! The storage suite: durable write throughput and latency (group commit), CRC speed, WAL
//! recovery, reopening after compaction, point gets, anonymous memory of mapped segments, and a
//! node with many idle spaces.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use engram_core::{Memory, SpaceId};
use engram_storage::{Store, StoreOptions};
use rand::Rng;

use crate::util::{self, compare, report, timed, Better, CpuUsage, MemUsage, DIM};

/// Sizes of one run of the suite.
#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    /// Measured time of each write run.
    write_time: Duration,
    /// Unmeasured time before each write run.
    warmup: Duration,
    /// WAL bytes to write before timing recovery.
    recovery_wal_bytes: u64,
    /// Memories in the space of the get benchmark.
    get_memories: u64,
    /// Timed gets.
    gets: usize,
    /// Spaces of the many-tenants node.
    many_spaces: usize,
    /// Minimum time of the CRC measurement.
    crc_time: Duration,
}

impl Config {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                write_time: Duration::from_secs(2),
                warmup: Duration::from_millis(500),
                recovery_wal_bytes: 256 << 20,
                get_memories: 200_000,
                gets: 100_000,
                many_spaces: 10_000,
                crc_time: Duration::from_secs(1),
            }
        } else {
            Self {
                quick,
                write_time: Duration::from_secs(8),
                warmup: Duration::from_secs(1),
                recovery_wal_bytes: 1 << 30,
                get_memories: 1_000_000,
                gets: 500_000,
                many_spaces: 100_000,
                crc_time: Duration::from_secs(3),
            }
        }
    }
}

/// Memories per `remember_batch` when loading data.
const LOAD_BATCH: u64 = 100;
/// Threads loading data (generation is CPU-bound, commits wait on fsync: overlap both).
const LOAD_THREADS: usize = 4;
/// Memories per space of the many-tenants node.
const MEMORIES_PER_TENANT: u64 = 10;
/// The many-tenants node is compacted every this many new spaces, to bound memory.
const TENANT_COMPACT_EVERY: usize = 5_000;

pub fn run(quick: bool) -> Result<()> {
    let cfg = Config::new(quick);
    let root = tempfile::Builder::new()
        .prefix("engram-bench-storage-")
        .tempdir_in(util::bench_root())
        .context("creating the benchmark directory")?;
    println!(
        "# engram-bench storage suite, {} mode, on {}",
        if cfg.quick { "quick" } else { "full" },
        util::machine_description()
    );
    println!(
        "# data in {} (release build: {})",
        root.path().display(),
        !cfg!(debug_assertions)
    );
    println!("# load average at start: {}", util::load_average());
    let started = Instant::now();
    let parts = util::selected_parts(&["writes", "crc", "recovery", "gets", "spaces"])?;
    let on = |p: &str| parts.iter().any(|q| q == p);
    if on("writes") {
        writes(&cfg, root.path())?;
    }
    if on("crc") {
        crc(&cfg);
    }
    if on("recovery") {
        recovery(&cfg, root.path())?;
    }
    if on("gets") {
        gets_and_memory(&cfg, root.path())?;
    }
    if on("spaces") {
        many_spaces(&cfg, root.path())?;
    }
    println!(
        "# storage suite finished in {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        util::load_average()
    );
    Ok(())
}

fn space_id(s: String) -> Result<SpaceId> {
    SpaceId::new(s).context("space id")
}

// ---------------------------------------------------------------------------------------------
// Durable writes.

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

fn writes(cfg: &Config, root: &Path) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// CRC32C.

fn crc(cfg: &Config) {
    let mut buf = vec![0u8; 64 << 20];
    util::rng(7).fill(&mut buf[..]);
    let mut crc = crc32c::crc32c(&buf); // warm-up pass
    let start = Instant::now();
    let mut bytes = 0u64;
    while bytes < 4 * buf.len() as u64 || start.elapsed() < cfg.crc_time {
        crc = crc32c::crc32c_append(crc, &buf);
        bytes += buf.len() as u64;
    }
    let gb_per_s = bytes as f64 / 1e9 / start.elapsed().as_secs_f64();
    std::hint::black_box(crc);
    println!(
        "# crc32c over a 64 MiB buffer, {:.1} GB in total (hardware: {})",
        bytes as f64 / 1e9,
        if cfg!(target_arch = "x86_64") {
            "SSE4.2 when available"
        } else {
            "platform"
        }
    );
    report("crc32c_gb_per_s", gb_per_s, "GB/s");
    compare(
        "crc32c_gb_per_s",
        gb_per_s,
        "GB/s",
        Better::Higher,
        Some(4.0),
        Some(10.0),
    );
}

// ---------------------------------------------------------------------------------------------
// Loading data.

/// Stores memories `m{first}..m{first + count}` in `space` with `remember_batch` of
/// [`LOAD_BATCH`] from [`LOAD_THREADS`] threads.
fn load(store: &Store, space: &SpaceId, first: u64, count: u64) -> Result<()> {
    let batches = count.div_ceil(LOAD_BATCH);
    let next = AtomicU64::new(0);
    thread::scope(|s| {
        let handles: Vec<_> = (0..LOAD_THREADS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            return Ok(());
                        }
                        let lo = first + b * LOAD_BATCH;
                        let hi = (lo + LOAD_BATCH).min(first + count);
                        let mut rng = util::rng(lo ^ 0x5eed);
                        let batch = (lo..hi).map(|n| util::memory(&mut rng, n, DIM)).collect();
                        store.remember_batch(space, batch)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("loader thread panicked"))
    })
}

/// Drops the page cache before a timed reopen when allowed. Returns whether it was dropped and
/// a description for humans.
fn prepare_page_cache() -> (bool, String) {
    match util::drop_page_cache() {
        Ok(()) => (
            true,
            "page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before timing: cold read"
                .into(),
        ),
        Err(why) => (
            false,
            format!("page cache WARM (the files were just written; {why})"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery.

fn recovery(cfg: &Config, root: &Path) -> Result<()> {
    let dir = tempfile::tempdir_in(root)?;
    let opts = StoreOptions {
        background_compaction: false,
        wal_flush_bytes: u64::MAX,
        memtable_flush_bytes: usize::MAX,
        ..StoreOptions::default()
    };
    let space = space_id("recovery".into())?;
    let (wal_bytes, memories) = {
        let store = Store::open_dir(dir.path(), opts.clone())?;
        store.create_space(&space, DIM as u32)?;
        let start = Instant::now();
        let mut written = 0u64;
        // Each memory takes a bit more than 3,000 bytes of WAL: load until the target is met.
        while store.status().wal_bytes < cfg.recovery_wal_bytes {
            let missing = cfg.recovery_wal_bytes - store.status().wal_bytes;
            let n = (missing / 3_000).max(LOAD_BATCH);
            load(&store, &space, written, n)?;
            written += n;
        }
        let status = store.status();
        println!(
            "# recovery: wrote {written} memories, {:.3} GB of WAL in {} files, in {:.1} s",
            status.wal_bytes as f64 / 1e9,
            status.wal_files,
            start.elapsed().as_secs_f64()
        );
        (status.wal_bytes, written)
    };
    let on_disk = util::dir_file_bytes(&dir.path().join("wal"))?;
    ensure!(
        on_disk >= wal_bytes,
        "WAL directory holds {on_disk} bytes, the store reported {wal_bytes}"
    );
    let gb = wal_bytes as f64 / 1e9;

    let (cold, note) = prepare_page_cache();
    println!("# recovery: {note}");
    let (store, open_time) = timed(|| Store::open_dir(dir.path(), opts.clone()));
    let mut store = store?;
    let rec = store.status().recovery;
    println!(
        "# recovery: replayed {} records ({} skipped) from {} WAL files in {:.3} s",
        rec.records_replayed,
        rec.records_skipped,
        rec.wal_files,
        open_time.as_secs_f64()
    );
    if cold {
        // For comparison: the same replay with the WAL in the page cache.
        drop(store);
        let (warm, warm_time) = timed(|| Store::open_dir(dir.path(), opts.clone()));
        store = warm?;
        println!(
            "# recovery: for comparison, the same replay with a warm page cache: {:.3} s \
             ({:.3} s/GB)",
            warm_time.as_secs_f64(),
            warm_time.as_secs_f64() / gb
        );
    }
    let last = format!("m{}", memories - 1);
    ensure!(
        store.get(&space, &last)?.is_some(),
        "{last} missing after recovery"
    );
    report("recovery_wal_gb", gb, "GB");
    let s_per_gb = open_time.as_secs_f64() / gb;
    report("recovery_s_per_gb", s_per_gb, "s/GB");
    compare(
        "recovery_s_per_gb",
        s_per_gb,
        "s/GB",
        Better::Lower,
        Some(2.1),
        Some(1.0),
    );

    let (compacted, compact_time) = timed(|| -> Result<()> {
        store.compact()?;
        store.merge_all()?;
        Ok(())
    });
    compacted?;
    let status = store.status();
    let ss = store.space_status(&space)?;
    println!(
        "# recovery: compact + merge_all took {:.1} s: {} segment(s), {:.3} GB; WAL now {} bytes \
         in {} file(s)",
        compact_time.as_secs_f64(),
        ss.segments,
        ss.segment_bytes as f64 / 1e9,
        status.wal_bytes,
        status.wal_files
    );
    drop(store);

    println!("# recovery after compaction: {}", prepare_page_cache().1);
    let (opened, reopen_time) = timed(|| -> Result<_> {
        let store = Store::open_dir(dir.path(), StoreOptions::default())?;
        let m = store.get(&space, "m0")?;
        Ok((store, m))
    });
    let (store, first) = opened?;
    ensure!(first.is_some(), "m0 missing after compaction");
    println!(
        "# recovery after compaction: reopen + first get (loads the space, maps its segment): \
         {:.1} ms; replayed {} records",
        reopen_time.as_secs_f64() * 1e3,
        store.status().recovery.records_replayed
    );
    drop(store);
    report("recovery_compacted_s", reopen_time.as_secs_f64(), "s");
    compare(
        "recovery_compacted_s",
        reopen_time.as_secs_f64(),
        "s",
        Better::Lower,
        None,
        Some(0.2),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Gets and anonymous memory of a compacted space.

fn gets_and_memory(cfg: &Config, root: &Path) -> Result<()> {
    let dir = tempfile::tempdir_in(root)?;
    let space = space_id("gets".into())?;
    let n = cfg.get_memories;
    {
        let store = Store::open_dir(dir.path(), StoreOptions::default())?;
        store.create_space(&space, DIM as u32)?;
        let (loaded, load_time) = timed(|| load(&store, &space, 0, n));
        loaded?;
        let (compacted, compact_time) = timed(|| -> Result<()> {
            store.compact()?;
            store.merge_all()?;
            Ok(())
        });
        compacted?;
        let ss = store.space_status(&space)?;
        ensure!(
            ss.memories as u64 == n,
            "{} memories, expected {n}",
            ss.memories
        );
        println!(
            "# gets: loaded {n} memories in {:.1} s; compact + merge_all {:.1} s -> {} segment(s), \
             {:.3} GB",
            load_time.as_secs_f64(),
            compact_time.as_secs_f64(),
            ss.segments,
            ss.segment_bytes as f64 / 1e9
        );
    }

    // Anonymous memory: opening the store and touching every row must not copy segments to the
    // heap. Freed heap is returned first so that growth is visible.
    util::trim_heap();
    let before = MemUsage::now();
    let store = Store::open_dir(dir.path(), StoreOptions::default())?;
    let (touched, touch_time) = timed(|| {
        store.read_space(&space, |st| {
            let mut sum = 0f64;
            let mut rows = 0usize;
            for seg in st.segments() {
                for row in 0..seg.rows() {
                    sum += f64::from(seg.embedding(row)[0]);
                }
                rows += seg.rows();
            }
            (sum, rows)
        })
    });
    let (sum, rows) = touched?;
    let after = MemUsage::now();
    std::hint::black_box(sum);
    ensure!(rows as u64 == n, "touched {rows} rows, expected {n}");
    // After the reading above: space_status walks every id into a hash set (heap).
    let ss = store.space_status(&space)?;
    let seg_gb = ss.segment_bytes as f64 / 1e9;
    let anon_kb = after
        .anon_growth_kb(&before)
        .context("RssAnon missing from /proc/self/status")?;
    let rss_kb = after.rss_growth_kb(&before).unwrap_or(0);
    let anon_mb_per_gb = anon_kb as f64 * 1024.0 / 1e6 / seg_gb;
    println!(
        "# memory: opened the store and touched {rows} rows in {:.2} s; RssAnon {} -> {} kB \
         ({anon_kb:+} kB), VmRSS {rss_kb:+} kB, segments {seg_gb:.3} GB",
        touch_time.as_secs_f64(),
        before.rss_anon_kb.unwrap_or(0),
        after.rss_anon_kb.unwrap_or(0),
    );
    report("rss_anon_mb_per_gb", anon_mb_per_gb, "MB/GB");
    compare(
        "rss_anon_mb_per_gb",
        anon_mb_per_gb,
        "MB/GB",
        Better::Lower,
        Some(50.0),
        None,
    );

    let mut rng = util::rng(99);
    let ids: Vec<String> = (0..cfg.gets)
        .map(|_| format!("m{}", rng.gen_range(0..n)))
        .collect();
    let mut latencies_ns = Vec::with_capacity(ids.len());
    let mut missing = 0usize;
    let started = Instant::now();
    for id in &ids {
        let t0 = Instant::now();
        let m = store.get(&space, id)?;
        latencies_ns.push(t0.elapsed().as_nanos() as u64);
        missing += usize::from(m.is_none());
        std::hint::black_box(m);
    }
    let total = started.elapsed();
    ensure!(missing == 0, "{missing} gets found nothing");
    latencies_ns.sort_unstable();
    let p = |q: f64| util::percentile(&latencies_ns, q) as f64 / 1e3;
    println!(
        "# gets: {} random gets by id, one thread, in {:.2} s: p50 {:.2} us, p99 {:.2} us, \
         p99.9 {:.2} us, max {:.1} us",
        ids.len(),
        total.as_secs_f64(),
        p(50.0),
        p(99.0),
        p(99.9),
        p(100.0)
    );
    report("get_space_memories", n as f64, "memories");
    report("get_p50_us", p(50.0), "us");
    report("get_p99_us", p(99.0), "us");
    compare(
        "get_p99_us",
        p(99.0),
        "us",
        Better::Lower,
        Some(42.0),
        Some(5.0),
    );
    drop(store);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Many tenants.

fn tenant(i: usize) -> Result<SpaceId> {
    space_id(format!("t{i}"))
}

fn many_spaces(cfg: &Config, root: &Path) -> Result<()> {
    let dir = tempfile::tempdir_in(root)?;
    let n = cfg.many_spaces;
    let writers = 8;
    {
        let store = Store::open_dir(dir.path(), StoreOptions::default())?;
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let exited = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let mut compactions = 0usize;
        let mut compact_time = Duration::ZERO;
        thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..writers)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let result = (|| loop {
                            if stop.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                return Ok(());
                            }
                            let id = tenant(i)?;
                            store.create_space(&id, DIM as u32)?;
                            let mut rng = util::rng(i as u64);
                            let batch = (0..MEMORIES_PER_TENANT)
                                .map(|j| util::memory(&mut rng, j, DIM))
                                .collect();
                            store.remember_batch(&id, batch)?;
                            done.fetch_add(1, Ordering::Relaxed);
                        })();
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        exited.fetch_add(1, Ordering::Relaxed);
                        result
                    })
                })
                .collect();
            let mut next_compact = TENANT_COMPACT_EVERY;
            let mut monitor = || -> Result<()> {
                while exited.load(Ordering::Relaxed) < writers {
                    thread::sleep(Duration::from_millis(10));
                    if done.load(Ordering::Relaxed) >= next_compact {
                        let (r, t) = timed(|| store.compact());
                        r?;
                        compactions += 1;
                        compact_time += t;
                        next_compact += TENANT_COMPACT_EVERY;
                    }
                }
                Ok(())
            };
            let monitored = monitor();
            if monitored.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            for h in handles {
                h.join().expect("tenant writer panicked")?;
            }
            monitored
        })?;
        let fill_time = start.elapsed();
        let (r, t) = timed(|| store.compact());
        r?;
        compactions += 1;
        compact_time += t;
        let status = store.status();
        ensure!(status.spaces == n, "{} spaces, expected {n}", status.spaces);
        println!(
            "# many spaces: created {n} spaces of {MEMORIES_PER_TENANT} memories in {:.1} s \
             ({:.0} spaces/s) with {writers} threads; {compactions} compactions took {:.1} s; \
             {} spaces loaded at the end, WAL {} bytes",
            fill_time.as_secs_f64() + t.as_secs_f64(),
            n as f64 / fill_time.as_secs_f64(),
            compact_time.as_secs_f64(),
            status.spaces_loaded,
            status.wal_bytes
        );
    }

    util::trim_heap();
    let before = MemUsage::now();
    let probe = tenant(n / 2)?;
    let (opened, open_time) = timed(|| -> Result<_> {
        let store = Store::open_dir(dir.path(), StoreOptions::default())?;
        let m = store.get(&probe, "m3")?;
        Ok((store, m))
    });
    let (store, m) = opened?;
    let after = MemUsage::now();
    ensure!(m.is_some(), "m3 missing in {probe}");
    let status = store.status();
    ensure!(status.spaces == n, "{} spaces after reopen", status.spaces);
    let rss_kb = after
        .rss_growth_kb(&before)
        .context("VmRSS missing from /proc/self/status")?;
    let anon_kb = after.anon_growth_kb(&before).unwrap_or(0);
    let per_space_kb = rss_kb as f64 / n as f64;
    println!(
        "# many spaces: open + one get: {:.3} s, {} of {} spaces loaded, {} records replayed; \
         VmRSS {rss_kb:+} kB, RssAnon {anon_kb:+} kB ({:.3} KB per space)",
        open_time.as_secs_f64(),
        status.spaces_loaded,
        status.spaces,
        status.recovery.records_replayed,
        anon_kb as f64 / n as f64
    );
    drop(store);
    report("many_spaces_count", n as f64, "spaces");
    report("many_spaces_open_s", open_time.as_secs_f64(), "s");
    compare(
        "many_spaces_open_s",
        open_time.as_secs_f64(),
        "s",
        Better::Lower,
        Some(5.0),
        None,
    );
    report("rss_per_idle_space_kb", per_space_kb, "KB");
    compare(
        "rss_per_idle_space_kb",
        per_space_kb,
        "KB",
        Better::Lower,
        Some(10.0),
        None,
    );
    let (removed, remove_time) = timed(|| dir.close());
    removed?;
    println!(
        "# many spaces: removed the node's files in {:.1} s",
        remove_time.as_secs_f64()
    );
    Ok(())
}
