//! WAL recovery and reopening after compaction.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};
use engram_storage::{Store, StoreOptions};

use super::{load, space_id, Config, LOAD_BATCH};
use crate::util::{self, compare, report, timed, Better, DIM};

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

pub(super) fn recovery(cfg: &Config, root: &Path) -> Result<()> {
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
