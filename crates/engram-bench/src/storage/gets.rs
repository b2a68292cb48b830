//! Point gets by id and the anonymous memory of a compacted space.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use engram_storage::{Store, StoreOptions};
use rand::Rng;

use super::{load, space_id, Config};
use crate::util::{self, compare, report, timed, Better, MemUsage, DIM};

pub(super) fn gets_and_memory(cfg: &Config, root: &Path) -> Result<()> {
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
            // The index of the merged segment, before close: the timed gets below must not
            // share the machine with a background build.
            store.build_indexes()?;
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
    while store.pending_index_builds() > 0 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
