//! A node with many small, idle spaces.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use engram_core::SpaceId;
use engram_storage::{Store, StoreOptions};

use super::{space_id, Config};
use crate::util::{self, compare, report, timed, Better, MemUsage, DIM};

/// Memories per space of the many-tenants node.
const MEMORIES_PER_TENANT: u64 = 10;
/// The many-tenants node is compacted every this many new spaces, to bound memory.
const TENANT_COMPACT_EVERY: usize = 5_000;

fn tenant(i: usize) -> Result<SpaceId> {
    space_id(format!("t{i}"))
}

pub(super) fn many_spaces(cfg: &Config, root: &Path) -> Result<()> {
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
