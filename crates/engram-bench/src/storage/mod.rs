//! The storage suite: durable write throughput and latency (group commit), CRC speed, WAL
//! recovery, reopening after compaction, point gets, anonymous memory of mapped segments, and a
//! node with many idle spaces.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engram_core::SpaceId;
use engram_storage::Store;

use crate::util::{self, DIM};

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

mod crc;
mod gets;
mod recovery;
mod spaces;
mod writes;

use crc::crc;
use gets::gets_and_memory;
use recovery::recovery;
use spaces::many_spaces;
use writes::writes;

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

pub(super) fn space_id(s: String) -> Result<SpaceId> {
    SpaceId::new(s).context("space id")
}

// ---------------------------------------------------------------------------------------------
// Loading data.

/// Stores memories `m{first}..m{first + count}` in `space` with `remember_batch` of
/// [`LOAD_BATCH`] from [`LOAD_THREADS`] threads.
pub(super) fn load(store: &Store, space: &SpaceId, first: u64, count: u64) -> Result<()> {
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
