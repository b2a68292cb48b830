//! The recall suite: similarity kernels (SIMD against the scalar loop), flat-scan bandwidth over
//! a mapped embedding column, and the HNSW index (recall@10 against exact search, latency,
//! queries per second), single thread, in-process.
//!
//! Data: memories whose embeddings are shaped like real ones (see `dataset`), written to one
//! segment file and mapped, exactly as the engine serves them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engram_core::simd::{self, Kernel};
use engram_core::{Memory, MemoryId};
use engram_storage::index::{self, FlatVectors, Hnsw, HnswParams};
use engram_storage::segment::{self, Segment};
use engram_storage::RealDisk;

use crate::dataset::{Clusters, Shape};
use crate::util::{self, compare, report, Better, DIM};

pub(crate) mod hard;
mod minilm;
mod peers;

struct Config {
    quick: bool,
    memories: usize,
    queries: usize,
    /// Queries per spread of the hard data.
    hard_queries: usize,
    /// Minimum time of each kernel measurement.
    kernel_time: Duration,
}

impl Config {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                memories: 20_000,
                queries: 500,
                hard_queries: 300,
                kernel_time: Duration::from_millis(500),
            }
        } else {
            Self {
                quick,
                memories: 100_000,
                queries: 2_000,
                hard_queries: 1_000,
                kernel_time: Duration::from_secs(2),
            }
        }
    }
}

pub fn run(quick: bool) -> Result<()> {
    let cfg = Config::new(quick);
    let root = tempfile::Builder::new()
        .prefix("engram-bench-recall-")
        .tempdir_in(util::bench_root())
        .context("creating the benchmark directory")?;
    println!(
        "# engram-bench recall suite, {} mode, on {}",
        if cfg.quick { "quick" } else { "full" },
        util::machine_description()
    );
    println!(
        "# similarity kernel: {} (available: {})",
        simd::kernel().name(),
        Kernel::available()
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let parts =
        util::selected_parts(&["kernels", "scan", "crossover", "index", "spreads", "minilm"])?;
    let on = |p: &str| parts.iter().any(|q| q == p);

    let started = Instant::now();
    let shape = Shape::realistic(DIM);
    let mut rng = util::rng(42);
    let clusters = Clusters::new(&mut rng, shape);
    let (seg, gen_time) = util::timed(|| write_data(&cfg, root.path(), &clusters));
    let seg = seg?;
    println!(
        "# data: {} memories x {DIM}-d ({} clusters over {}-d subspaces), one mapped segment of \
         {:.1} MB, generated and written in {:.1} s",
        seg.rows(),
        shape.clusters,
        shape.subspace,
        seg.file_len() as f64 / 1e6,
        gen_time.as_secs_f64()
    );
    // Queries near stored points (not the points themselves).
    let queries: Vec<Vec<f32>> = (0..cfg.queries)
        .map(|i| {
            let row = (i * 7_919) % seg.rows();
            clusters.near(&mut rng, seg.embedding(row), 0.3)
        })
        .collect();

    if on("kernels") {
        kernels(&cfg, &seg, &queries);
    }
    if on("scan") {
        scan(&cfg, &seg, &queries);
    }
    if on("crossover") {
        crossover(&seg, &queries)?;
    }
    if on("index") {
        index_part(&seg, &queries)?;
    }
    if on("spreads") {
        hard::spreads(&cfg, root.path())?;
    }
    if on("minilm") {
        minilm::minilm(&cfg, root.path())?;
    }
    println!(
        "# recall suite finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `cfg.memories` generated memories as one segment and maps it.
fn write_data(cfg: &Config, dir: &Path, clusters: &Clusters) -> Result<Segment> {
    let mut rng = util::rng(43);
    let mut memories: Vec<Memory> = (0..cfg.memories)
        .map(|i| Memory {
            id: MemoryId::new(format!("m{i:07}")).expect("valid id"),
            content: util::content(&mut rng, i as u64),
            embedding: clusters.point(&mut rng),
            confidence: 0.9,
            timestamp_us: util::now_us(),
            metadata: Default::default(),
            links: Vec::new(),
        })
        .collect();
    memories.sort_by(|a, b| a.id.cmp(&b.id));
    let refs: Vec<&Memory> = memories.iter().collect();
    let path = dir.join(segment::segment_file_name(1, cfg.memories as u64));
    segment::write_memories(
        &RealDisk,
        &path,
        DIM,
        (1, cfg.memories as u64),
        &refs,
        &[],
        &segment::WritePace::UNPACED,
    )?;
    drop(memories);
    Ok(Segment::open(&RealDisk, &path)?)
}

/// Runs `f` over and over for at least `min` and returns the mean time per call.
fn time_per_call(min: Duration, mut f: impl FnMut() -> f32) -> Duration {
    let mut sink = 0.0f32;
    let mut calls = 0u32;
    let start = Instant::now();
    while start.elapsed() < min || calls == 0 {
        sink += f();
        calls += 1;
    }
    std::hint::black_box(sink);
    start.elapsed() / calls
}

/// Cosine (dot of unit vectors) of one query against every row, one pair at a time: the
/// scalar loop, then each SIMD kernel, over the same mapped data.
fn kernels(cfg: &Config, seg: &Segment, queries: &[Vec<f32>]) {
    let rows = seg.rows().min(20_000);
    let q = &queries[0];
    let pass = |k: Kernel| {
        time_per_call(cfg.kernel_time, || {
            let mut s = 0.0;
            for r in 0..rows {
                s += k.dot(q, seg.embedding(r));
            }
            s
        })
    };
    let scalar = pass(Kernel::Scalar);
    let per_pair = |d: Duration| d.as_secs_f64() * 1e9 / rows as f64;
    println!(
        "# {DIM}-d cosine, one pair at a time over {rows} mapped rows: scalar loop {:.1} ns",
        per_pair(scalar)
    );
    let mut best = scalar;
    for k in Kernel::available().into_iter().skip(1) {
        let t = pass(k);
        println!(
            "#   {}: {:.1} ns per pair, {:.1}x the scalar loop",
            k.name(),
            per_pair(t),
            scalar.as_secs_f64() / t.as_secs_f64()
        );
        if k == simd::kernel() {
            best = t;
        }
    }
    // The same on 1,000 rows (3 MB, in cache): the kernels' arithmetic without the memory
    // bound.
    let few = 1_000.min(seg.rows());
    let in_cache = |k: Kernel| {
        time_per_call(cfg.kernel_time, || {
            let mut s = 0.0;
            for r in 0..few {
                s += k.dot(q, seg.embedding(r));
            }
            s
        })
    };
    let scalar_hot = in_cache(Kernel::Scalar);
    let best_hot = in_cache(simd::kernel());
    println!(
        "#   in cache ({few} rows): scalar {:.1} ns, {} {:.1} ns per pair: {:.1}x",
        scalar_hot.as_secs_f64() * 1e9 / few as f64,
        simd::kernel().name(),
        best_hot.as_secs_f64() * 1e9 / few as f64,
        scalar_hot.as_secs_f64() / best_hot.as_secs_f64()
    );
    let speedup = scalar.as_secs_f64() / best.as_secs_f64();
    println!(
        "# simd_speedup: the detected kernel against the scalar loop over the 20,000 mapped rows"
    );
    report("simd_speedup", speedup, "x");
    compare(
        "simd_speedup",
        speedup,
        "x",
        Better::Higher,
        Some(3.4),
        Some(6.0),
    );
}

/// Flat scan of the whole mapped column with `dot_rows`, one thread.
fn scan(cfg: &Config, seg: &Segment, queries: &[Vec<f32>]) {
    let column = seg.embedding_column();
    let mut out = vec![0.0f32; seg.rows()];
    // Warm the page cache and the mapping.
    simd::dot_rows(&queries[0], column, seg.stride(), &mut out);
    let mut i = 0;
    let t = time_per_call(cfg.kernel_time, || {
        simd::dot_rows(&queries[i % queries.len()], column, seg.stride(), &mut out);
        i += 1;
        out[0]
    });
    let bytes = (seg.rows() * seg.stride() * 4) as f64;
    let gbps = bytes / t.as_secs_f64() / 1e9;
    println!(
        "# flat scan: {} rows x {DIM}-d ({:.1} MB) in {:.2} ms per query, {} kernel, one thread",
        seg.rows(),
        bytes / 1e6,
        t.as_secs_f64() * 1e3,
        simd::kernel().name()
    );
    report("scan_gb_per_s", gbps, "GB/s");
    let mut j = 0;
    let per_row = time_per_call(cfg.kernel_time, || {
        let q = &queries[j % queries.len()];
        j += 1;
        for (r, o) in out.iter_mut().enumerate() {
            *o = simd::dot(q, seg.embedding(r));
        }
        out[0]
    });
    println!(
        "#   one row at a time with simd::dot: {:.2} GB/s",
        bytes / per_row.as_secs_f64() / 1e9
    );
    let scalar = time_per_call(cfg.kernel_time, || {
        Kernel::Scalar.dot_rows(&queries[0], column, seg.stride(), &mut out);
        out[0]
    });
    println!(
        "#   the scalar loop over the same column: {:.2} GB/s ({:.1}x slower)",
        bytes / scalar.as_secs_f64() / 1e9,
        scalar.as_secs_f64() / t.as_secs_f64()
    );
}

/// Where an HNSW graph starts to beat an exact scan: both over the first `n` rows, for a few
/// `n` (what `StoreOptions::index_min_rows` is set from).
fn crossover(seg: &Segment, queries: &[Vec<f32>]) -> Result<()> {
    let column = seg.embedding_column();
    let stride = seg.stride();
    anyhow::ensure!(
        stride == DIM,
        "rows are padded; the crossover needs packed rows"
    );
    println!("# exact scan against HNSW (ef 64, k 10) over the first n rows, one thread:");
    for n in [256usize, 1_024, 4_096, 16_384] {
        if n > seg.rows() {
            break;
        }
        let v = FlatVectors::new(&column[..n * stride], DIM)?;
        let graph = index::build(&v, HnswParams::default())?;
        let time = |f: &dyn Fn(&[f32]) -> usize| {
            let start = Instant::now();
            let mut found = 0;
            for q in queries.iter().take(300) {
                found += f(q);
            }
            std::hint::black_box(found);
            start.elapsed().as_secs_f64() * 1e6 / queries.len().min(300) as f64
        };
        let flat = time(&|q| index::flat_search(&v, q, 10, |_| true).len());
        let hnsw = time(&|q| graph.view().search(&v, q, 10, 64, |_| true).len());
        println!(
            "#   n {n:>6}: exact {flat:>7.1} us, hnsw {hnsw:>6.1} us per query ({:.1}x)",
            flat / hnsw
        );
    }
    Ok(())
}

/// Builds the index over the segment, reopens it from disk, and measures recall@10 against
/// exact search, latency and throughput.
fn index_part(seg: &Segment, queries: &[Vec<f32>]) -> Result<()> {
    let seg_path = seg.path().to_path_buf();
    let params = HnswParams::default();
    let (built, build_time) =
        util::timed(|| index::build_and_write(&RealDisk, &seg_path, seg, params));
    built?;
    let path = index::index_path(&seg_path);
    let (hnsw, open_time) = util::timed(|| Hnsw::open(&RealDisk, &path, seg));
    let hnsw = hnsw?;
    println!(
        "# HNSW (m {}, ef_construction {}): built in {:.1} s ({:.0} rows/s), file {:.1} MB, \
         reopened from disk in {:.2} ms",
        params.m,
        params.ef_construction,
        build_time.as_secs_f64(),
        seg.rows() as f64 / build_time.as_secs_f64(),
        std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e6),
        open_time.as_secs_f64() * 1e3
    );

    // Ground truth: exact search over the same data.
    let k = 10;
    let (truth, exact_time) = util::timed(|| {
        queries
            .iter()
            .map(|q| index::flat_search(seg, q, k, |_| true))
            .collect::<Vec<_>>()
    });
    let exact_us = exact_time.as_secs_f64() * 1e6 / queries.len() as f64;
    println!("# exact search (flat scan + top-k): {exact_us:.0} us per query");

    // The figures are taken at the beam width the engine recalls with; the curve around it
    // is printed for context.
    let engine_ef = engram_engine::EngineOptions::default().search_ef;
    let mut at_engine_ef = None;
    for ef in [16, 24, 32, 48, 64, 96, 128] {
        let mut lat = Vec::with_capacity(queries.len());
        let mut hits = 0usize;
        let start = Instant::now();
        for (q, t) in queries.iter().zip(&truth) {
            let t0 = Instant::now();
            let got = hnsw.search(seg, q, k, ef, |_| true);
            lat.push(t0.elapsed().as_nanos() as u64);
            hits += got
                .iter()
                .filter(|(r, _)| t.iter().any(|(tr, _)| tr == r))
                .count();
        }
        let wall = start.elapsed();
        lat.sort_unstable();
        let recall = hits as f64 / (queries.len() * k) as f64;
        let p50 = util::percentile(&lat, 50.0) as f64 / 1e3;
        let p99 = util::percentile(&lat, 99.0) as f64 / 1e3;
        let qps = queries.len() as f64 / wall.as_secs_f64();
        println!(
            "#   ef {ef:>3}: recall@10 {recall:.4}, p50 {p50:.0} us, p99 {p99:.0} us, {qps:.0} \
             queries/s ({:.0}x exact search){}",
            exact_us / (1e6 / qps),
            if ef == engine_ef {
                "  <- the engine's search_ef"
            } else {
                ""
            }
        );
        if ef == engine_ef {
            at_engine_ef = Some((recall, p99, qps));
        }
    }
    let Some((recall, p99, qps)) = at_engine_ef else {
        anyhow::bail!("the engine's search_ef {engine_ef} is not in the measured list");
    };
    println!("# reported: ef {engine_ef}, the engine's default search_ef (EngineOptions)");
    report("recall_at_10", recall, "ratio");
    compare(
        "recall_at_10",
        recall,
        "",
        Better::Higher,
        Some(0.95),
        Some(0.98),
    );
    report("recall_p99_us", p99, "us");
    compare(
        "recall_p99_us",
        p99,
        "us",
        Better::Lower,
        Some(1000.0),
        Some(300.0),
    );
    report("recall_qps", qps, "1/s");
    Ok(())
}
