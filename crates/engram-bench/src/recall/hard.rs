//! Recall on hard data, through the store as the engine searches it: clustered embeddings whose
//! within-cluster spread sweeps from well apart to where clusters touch, held in one segment
//! and in the eight that `max_segments_per_space` allows, every segment with its HNSW index.
//!
//! The spread is given as a fraction of the distance between centres (random unit vectors in
//! 768-d are about sqrt(2) apart): a point's typical distance from its centre is that
//! fraction of it. Queries are stored points moved by a little noise; the truth is an exact
//! scan over the same vectors.
//!
//! Two more sets take the widest spread and raise the isotropic noise (every component of a
//! point gets Gaussian noise of `noise / sqrt(768)` before normalising; 0.15 elsewhere) to 3.0
//! and 3.6: the directions shared by a cluster then carry less of each vector, and the true
//! top 10 of a query are barely more similar than the next hundred. At 3.6 hnswlib (M 16,
//! ef_construction 200) finds 0.81 of them at ef 64, the level of the table. On every
//! set hnswlib and faiss-cpu run on the same vectors in the same run (`peers`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use engram_core::{Memory, MemoryId, SpaceId};
use engram_storage::index::HnswParams;
use engram_storage::{Store, StoreOptions};

use super::{peers, Config};
use crate::dataset::{Clusters, Shape};
use crate::util::{self, report, DIM};

/// Within-cluster spread as a fraction of the distance between centres.
pub(crate) const SPREADS: [f32; 4] = [0.6, 0.8, 1.0, 1.2];
/// Isotropic noise of the extra sets, at the widest spread: with noise 3.0 hnswlib (M 16,
/// ef_construction 200) needs ef 64 for recall@10 0.97; at 3.6 it has 0.81 at ef 64, the
/// level of the table (measured by the peers in this bench).
const NOISES: [f32; 2] = [3.0, 3.6];
/// Segment layouts measured: one merged segment, and as many as a space keeps before merging.
pub(super) const LAYOUTS: [usize; 2] = [1, 8];
/// Beam widths of the recall-latency curve.
const CURVE_EFS: [usize; 7] = [16, 32, 64, 128, 256, 512, 1024];
const K: usize = 10;

/// One measured point: recall@10 against exact search and per-query latency.
#[derive(Debug, Clone, Copy)]
pub(super) struct Point {
    pub recall: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The data of one spread: unit vectors, queries near some of them, and the exact top 10 of
/// each query.
pub(crate) struct HardSet {
    pub vectors: Vec<Vec<f32>>,
    pub queries: Vec<Vec<f32>>,
    pub truth: Vec<Vec<u32>>,
}

impl HardSet {
    /// `noise`: the isotropic noise of [`Shape::noise`] (0.15 in [`Shape::realistic`]).
    pub fn generate(
        fraction: f32,
        noise: f32,
        memories: usize,
        queries: usize,
        seed: u64,
    ) -> HardSet {
        let shape = Shape {
            spread: fraction * std::f32::consts::SQRT_2,
            noise,
            ..Shape::realistic(DIM)
        };
        let mut rng = util::rng(seed);
        let clusters = Clusters::new(&mut rng, shape);
        let vectors: Vec<Vec<f32>> = (0..memories).map(|_| clusters.point(&mut rng)).collect();
        let queries: Vec<Vec<f32>> = (0..queries)
            .map(|i| clusters.near(&mut rng, &vectors[(i * 7_919) % memories], 0.3))
            .collect();
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let truth = queries
            .iter()
            .map(|q| util::exact_top(&flat, q, K))
            .collect();
        HardSet {
            vectors,
            queries,
            truth,
        }
    }

    /// The share of true top-10 neighbours among `found` (row numbers), per query averaged.
    pub fn recall(&self, query: usize, found: impl IntoIterator<Item = u32>) -> usize {
        let t = &self.truth[query];
        found.into_iter().filter(|r| t.contains(r)).count()
    }
}

fn row_of(id: &MemoryId) -> Result<u32> {
    id.as_str()
        .strip_prefix('m')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected memory id {id}"))
}

/// A store holding `set` in `segments` indexed segments (its own directory under `root`).
pub(super) struct Loaded {
    pub store: Store,
    pub space: SpaceId,
    pub build_time: Duration,
    _dir: tempfile::TempDir,
}

pub(super) fn load(
    root: &Path,
    set: &HardSet,
    segments: usize,
    params: HnswParams,
) -> Result<Loaded> {
    let dir = tempfile::tempdir_in(root)?;
    let opts = StoreOptions {
        background_compaction: false,
        max_segments_per_space: segments.max(1),
        hnsw: params,
        ..StoreOptions::default()
    };
    let store = Store::open_dir(dir.path(), opts)?;
    let space = SpaceId::new("hard")?;
    store.create_space(&space, set.vectors[0].len() as u32)?;
    let n = set.vectors.len();
    let per = n.div_ceil(segments);
    let mut rng = util::rng(5);
    for s in 0..segments {
        let rows = s * per..((s + 1) * per).min(n);
        for chunk in rows.collect::<Vec<_>>().chunks(1_000) {
            let batch = chunk
                .iter()
                .map(|&i| -> Result<Memory> {
                    Ok(Memory {
                        id: MemoryId::new(format!("m{i}"))?,
                        content: util::content(&mut rng, i as u64),
                        embedding: set.vectors[i].clone(),
                        confidence: 0.9,
                        timestamp_us: util::now_us(),
                        metadata: Default::default(),
                        links: Vec::new(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            store.remember_batch(&space, batch)?;
        }
        store.compact()?;
    }
    let status = store.space_status(&space)?;
    ensure!(
        status.segments == segments && status.memories == n,
        "{} segments of {} memories, expected {segments} of {n}",
        status.segments,
        status.memories
    );
    let (built, build_time) = util::timed(|| store.build_indexes());
    built?;
    Ok(Loaded {
        store,
        space,
        build_time,
        _dir: dir,
    })
}

/// Recall@10 and latency of `store.search` at beam width `ef` over every query.
pub(super) fn measure(loaded: &Loaded, set: &HardSet, ef: usize) -> Result<Point> {
    let mut lat = Vec::with_capacity(set.queries.len());
    let mut hits = 0usize;
    for (i, q) in set.queries.iter().enumerate() {
        let t0 = Instant::now();
        let found = loaded.store.search(&loaded.space, q, K, ef)?;
        lat.push(t0.elapsed().as_nanos() as u64);
        let rows = found
            .iter()
            .map(|h| row_of(&h.id))
            .collect::<Result<Vec<_>>>()?;
        hits += set.recall(i, rows);
    }
    lat.sort_unstable();
    Ok(Point {
        recall: hits as f64 / (set.queries.len() * K) as f64,
        p50_us: util::percentile(&lat, 50.0) as f64 / 1e3,
        p99_us: util::percentile(&lat, 99.0) as f64 / 1e3,
    })
}

/// The store's default HNSW parameters, or those of `ENGRAM_BENCH_HNSW` (`m=32,efc=200`,
/// either part optional; `m0` is twice `m`) for exploring others.
pub(super) fn params_from_env() -> Result<HnswParams> {
    let mut p = HnswParams::default();
    let Ok(spec) = std::env::var("ENGRAM_BENCH_HNSW") else {
        return Ok(p);
    };
    for part in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("ENGRAM_BENCH_HNSW: {part:?} is not name=value"))?;
        let v: usize = v
            .parse()
            .with_context(|| format!("ENGRAM_BENCH_HNSW: {part:?}"))?;
        match k {
            "m" => {
                p.m = v;
                p.m0 = 2 * v;
            }
            "m0" => p.m0 = v,
            "efc" => p.ef_construction = v,
            _ => anyhow::bail!("ENGRAM_BENCH_HNSW: unknown parameter {k:?} (m, m0, efc)"),
        }
    }
    p.validate()?;
    Ok(p)
}

/// `defaults`, or the comma-separated values of environment variable `name` (to measure a
/// part of the sweep).
pub(crate) fn list_from_env<T: std::str::FromStr + Copy>(
    name: &str,
    defaults: &[T],
) -> Result<Vec<T>> {
    match std::env::var(name) {
        Err(_) => Ok(defaults.to_vec()),
        Ok(v) if v.trim().is_empty() => Ok(Vec::new()),
        Ok(v) => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}: {x:?} is not a number"))
            })
            .collect(),
    }
}

/// The spread sweep: for each spread and layout, build time, the recall-latency curve, and the
/// figures at the engine's default beam width.
pub(super) fn spreads(cfg: &Config, root: &Path) -> Result<()> {
    let params = params_from_env()?;
    println!(
        "# hard data: {} memories x {DIM}-d, 300 clusters over 32-d subspaces, spread swept as a \
         fraction of the distance between centres; {} queries near stored points; HNSW m {}, \
         m0 {}, ef_construction {}; searched through Store::search (k {K}) as the engine does",
        cfg.memories, cfg.hard_queries, params.m, params.m0, params.ef_construction
    );
    let spreads = list_from_env("ENGRAM_BENCH_SPREADS", &SPREADS)?;
    let noises = list_from_env("ENGRAM_BENCH_NOISES", &NOISES)?;
    let layouts = list_from_env("ENGRAM_BENCH_LAYOUTS", &LAYOUTS)?;
    let base_noise = Shape::realistic(DIM).noise;
    let sets = spreads
        .iter()
        .map(|&f| (f, base_noise))
        .chain(noises.iter().map(|&n| (SPREADS[SPREADS.len() - 1], n)));
    for (i, (fraction, noise)) in sets.enumerate() {
        let (set, gen_time) = util::timed(|| {
            let seed = 100 + i as u64;
            HardSet::generate(fraction, noise, cfg.memories, cfg.hard_queries, seed)
        });
        println!(
            "# spread {fraction}, noise {noise}: generated with exact truth in {:.1} s",
            gen_time.as_secs_f64()
        );
        let tag = if noise == base_noise {
            format!("s{}", (fraction * 10.0).round() as u32)
        } else {
            format!(
                "s{}_n{}",
                (fraction * 10.0).round() as u32,
                (noise * 10.0).round() as u32
            )
        };
        measure_set(root, &set, &tag, params, &layouts)?;
    }
    Ok(())
}

/// One set measured: for each layout, build time, the recall-latency curve and the figures at
/// the engine's default beam width (reported under `tag`); then the peers on the same vectors.
pub(super) fn measure_set(
    root: &Path,
    set: &HardSet,
    tag: &str,
    params: HnswParams,
    layouts: &[usize],
) -> Result<()> {
    let engine_ef = engram_engine::EngineOptions::default().search_ef.max(K);
    let memories = set.vectors.len();
    for &segments in layouts {
        let loaded = load(root, set, segments, params)?;
        println!(
            "#   {segments} segment(s): indexes built in {:.1} s ({:.0} rows/s)",
            loaded.build_time.as_secs_f64(),
            memories as f64 / loaded.build_time.as_secs_f64()
        );
        // Warm the mapping and the page cache.
        measure(&loaded, set, engine_ef)?;
        for ef in CURVE_EFS {
            let p = measure(&loaded, set, ef)?;
            println!(
                "#     ef {ef:>4}: recall@10 {:.4}, p50 {:.0} us, p99 {:.0} us",
                p.recall, p.p50_us, p.p99_us
            );
        }
        let p = measure(&loaded, set, engine_ef)?;
        let tag = format!("{tag}_seg{segments}");
        println!("#     the engine's default (ef {engine_ef}):");
        report(&format!("hard_recall_at_10_{tag}"), p.recall, "ratio");
        report(&format!("hard_p50_us_{tag}"), p.p50_us, "us");
        report(&format!("hard_p99_us_{tag}"), p.p99_us, "us");
    }
    if peers::wanted() {
        match peers::run(root, set, &CURVE_EFS) {
            Ok(lines) => {
                for l in lines {
                    match l {
                        peers::Line::Build { system, params, build_s } => println!(
                            "#   {system} ({params}, in memory): built in {build_s:.1} s (2 threads)"
                        ),
                        peers::Line::Point { system, ef, recall, p50_us, p99_us } => {
                            println!(
                                "#     {system} ef {ef:>4}: recall@10 {recall:.4}, p50 {p50_us:.0} us, p99 {p99_us:.0} us"
                            );
                            if ef == 64 {
                                report(&format!("peer_{system}_recall_at_10_{tag}_ef64"), recall, "ratio");
                                report(&format!("peer_{system}_p99_us_{tag}_ef64"), p99_us, "us");
                            }
                        }
                    }
                }
            }
            Err(e) => println!("#   peers not measured: {e:#}"),
        }
    }
    Ok(())
}
