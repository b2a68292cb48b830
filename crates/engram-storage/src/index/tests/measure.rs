//! Measurements of build time, search latency and recall (ignored by default).

use super::*;

// ---------------------------------------------------------------------------------------------
// Measurement (release, ignored):
//   ENGRAM_HNSW_N=100000 ENGRAM_HNSW_DIM=768 ENGRAM_HNSW_SUBSPACE=64 ENGRAM_HNSW_NOISE_PERCENT=100 \
//     cargo test --release -p engram-storage --lib index::tests::measure -- --ignored --nocapture
// Other knobs: ENGRAM_HNSW_QUERIES (500), ENGRAM_HNSW_CLUSTERS (100), ENGRAM_HNSW_DIR (keep the
// segment and index there and reuse them, to measure searches without building again).

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn measure_build_search_recall() {
    let n = env_usize("ENGRAM_HNSW_N", 20_000);
    let dim = env_usize("ENGRAM_HNSW_DIM", 768);
    let nq = env_usize("ENGRAM_HNSW_QUERIES", 500);
    let shape = Shape {
        clusters: env_usize("ENGRAM_HNSW_CLUSTERS", 100),
        subspace: env_usize("ENGRAM_HNSW_SUBSPACE", 8),
        noise: env_usize("ENGRAM_HNSW_NOISE_PERCENT", 30) as f32 / 100.0,
    };
    eprintln!("data: {shape:?}");
    let mut all = clustered_with(n + nq, dim, shape, 1);
    let queries = all.split_off(n * dim);
    let data = all;

    // ENGRAM_HNSW_DIR keeps the files and reuses them (to measure searches alone).
    let disk = crate::disk::RealDisk;
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("ENGRAM_HNSW_DIR").map_or(tmp.path().to_path_buf(), PathBuf::from);
    let name = format!("{shape:?}-{n}x{dim}").replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let dir = dir.join(name);
    disk.create_dir_all(&dir).unwrap();
    let seg_path = dir.join(segment_file_name(1, 2));
    if !disk.exists(&seg_path) {
        write_vectors(&disk, &seg_path, &data, dim, (1, 2));
    }
    drop(data);
    let seg = Segment::open(&disk, &seg_path).unwrap();

    let t = Instant::now();
    if !disk.exists(&index_path(&seg_path)) {
        build_and_write(&disk, &seg_path, &seg, HnswParams::default()).unwrap();
    }
    let build = t.elapsed();
    let t = Instant::now();
    let h = Hnsw::open(&disk, &index_path(&seg_path), &seg).unwrap();
    let open = t.elapsed();
    let size = disk.file_len(&index_path(&seg_path)).unwrap();
    eprintln!(
        "{n} x {dim}: build + write {build:.2?} ({:.1} us/row), open {open:.2?}, file {:.1} MiB, max level {}",
        build.as_secs_f64() * 1e6 / n as f64,
        size as f64 / (1 << 20) as f64,
        h.info().max_level
    );

    let truth: Vec<Vec<(u32, f32)>> = queries
        .chunks(dim)
        .map(|q| flat_search(&seg, q, 10, |_| true))
        .collect();
    let t = Instant::now();
    for q in queries.chunks(dim).take(50) {
        std::hint::black_box(flat_search(&seg, q, 10, |_| true));
    }
    eprintln!(
        "flat search: {:.3} ms/query",
        t.elapsed().as_secs_f64() * 1e3 / 50.0
    );
    let t = Instant::now();
    let (a, b) = (&queries[..dim], &queries[dim..2 * dim]);
    let mut acc = 0.0;
    for _ in 0..1_000_000 {
        acc += engram_core::simd::dot(std::hint::black_box(a), std::hint::black_box(b));
    }
    eprintln!(
        "one dot product, in cache: {:.1} ns ({acc})",
        t.elapsed().as_secs_f64() * 1e3
    );
    for ef in [16, 32, 48, 64, 96, 128] {
        let mut lat = Vec::with_capacity(nq);
        let mut total = 0.0;
        for (q, tr) in queries.chunks(dim).zip(&truth) {
            let t = Instant::now();
            let r = h.view().search(&seg, q, 10, ef, |_| true);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            total += recall(&r, tr);
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        eprintln!(
            "ef {ef:>3}: recall@10 {:.4}, latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            total / nq as f64,
            pct(0.5),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
    // With a tenth of the rows rejected (deleted or superseded); then with cold caches (a
    // flat scan of another query's truth, 300 MB at 100,000 x 768, just before each search).
    let accept = |r: u32| !r.is_multiple_of(10);
    let truth: Vec<Vec<(u32, f32)>> = queries
        .chunks(dim)
        .map(|q| flat_search(&seg, q, 10, accept))
        .collect();
    for cold in [false, true] {
        let mut total = 0.0;
        let mut lat = Vec::new();
        for (q, tr) in queries.chunks(dim).zip(&truth) {
            if cold {
                std::hint::black_box(flat_search(&seg, q, 1, |_| true));
            }
            let t = Instant::now();
            let r = h.view().search(&seg, q, 10, 64, accept);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            total += recall(&r, tr);
        }
        lat.sort_by(f64::total_cmp);
        eprintln!(
            "ef  64, 10% rejected{}: recall@10 {:.4}, p50 {:.3} ms, p99 {:.3} ms",
            if cold { ", cold caches" } else { "" },
            total / nq as f64,
            lat[lat.len() / 2],
            lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
        );
    }
}
