//! Tests of the HNSW index: recall against the exact scan, the file round trip, validation of
//! every corruption class, the accept filter, determinism and edge sizes. Data is clustered
//! (each cluster in its own random low-dimensional subspace), which is what embeddings look
//! like; isotropic random vectors would be both unrealistic and needlessly hard.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::format::*;
use super::*;
use crate::disk::{DiskFile, Mapped};
use crate::error::StorageError;
use crate::fault::FaultDisk;
use crate::segment::{segment_file_name, write_memories, Segment, WritePace};
use engram_core::{Memory, MemoryId};

// ---------------------------------------------------------------------------------------------
// Data

fn gauss(rng: &mut SmallRng) -> f32 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// How clustered data is spread.
#[derive(Debug, Clone, Copy)]
struct Shape {
    clusters: usize,
    /// Dimension of each cluster's own random subspace.
    subspace: usize,
    /// Standard deviation of the isotropic noise per coordinate (the centres have 1).
    noise: f32,
}

impl Shape {
    fn new(clusters: usize) -> Shape {
        Shape {
            clusters,
            subspace: 8,
            noise: 0.3,
        }
    }
}

/// `n` L2-normalised rows of `dim` floats: each row is a random cluster's centre (standard
/// normal coordinates), plus a point of that cluster's random `subspace`-dimensional subspace
/// (as much energy as the centre), plus isotropic noise.
fn clustered_with(n: usize, dim: usize, shape: Shape, seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let scale = (1.0 / shape.subspace as f32).sqrt();
    let shapes: Vec<(Vec<f32>, Vec<Vec<f32>>)> = (0..shape.clusters)
        .map(|_| {
            let centre: Vec<f32> = (0..dim).map(|_| gauss(&mut rng)).collect();
            let basis = (0..shape.subspace)
                .map(|_| (0..dim).map(|_| scale * gauss(&mut rng)).collect())
                .collect();
            (centre, basis)
        })
        .collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let (centre, basis) = &shapes[rng.gen_range(0..shape.clusters)];
        let mut v = centre.clone();
        for b in basis {
            let z = gauss(&mut rng);
            for (x, y) in v.iter_mut().zip(b) {
                *x += z * y;
            }
        }
        for x in v.iter_mut() {
            *x += shape.noise * gauss(&mut rng);
        }
        assert!(engram_core::simd::normalize(&mut v));
        out.extend_from_slice(&v);
    }
    out
}

fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    clustered_with(n, dim, Shape::new(clusters), seed)
}

/// Data rows and held-out queries from the same clusters.
fn data_and_queries(n: usize, q: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut all = clustered(n + q, dim, 30, seed);
    let queries = all.split_off(n * dim);
    (all, queries)
}

fn write_seg(disk: &FaultDisk, dir: &Path, data: &[f32], dim: usize, seq: u64) -> PathBuf {
    disk.create_dir_all(dir).unwrap();
    let path = dir.join(segment_file_name(seq, seq + 10));
    write_vectors(disk, &path, data, dim, (seq, seq + 10));
    path
}

/// Writes a segment at `path` of one memory per `dim` floats of `data` (ids `m00000000`,
/// `m00000001`, ...).
fn write_vectors(disk: &dyn Disk, path: &Path, data: &[f32], dim: usize, seqs: (u64, u64)) {
    let mems: Vec<Memory> = data
        .chunks(dim)
        .enumerate()
        .map(|(i, e)| Memory {
            id: MemoryId::new(format!("m{i:08}")).unwrap(),
            content: "c".into(),
            embedding: e.to_vec(),
            confidence: 0.5,
            timestamp_us: 0,
            metadata: Default::default(),
            links: vec![],
        })
        .collect();
    let refs: Vec<&Memory> = mems.iter().collect();
    write_memories(disk, path, dim, seqs, &refs, &[], &WritePace::UNPACED).unwrap();
}

fn recall(found: &[(u32, f32)], truth: &[(u32, f32)]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let hits = truth
        .iter()
        .filter(|t| found.iter().any(|f| f.0 == t.0))
        .count();
    hits as f64 / truth.len() as f64
}

fn small_params() -> HnswParams {
    HnswParams {
        m: 8,
        m0: 16,
        ef_construction: 64,
        seed: 7,
    }
}

/// A valid index file (400 rows x 16, m = 4 so the upper layers are populated) and its segment.
struct Fixture {
    disk: FaultDisk,
    seg_path: PathBuf,
    idx_path: PathBuf,
    bytes: Vec<u8>,
    binding: SegmentBinding,
    data: Vec<f32>,
}

const FIX_DIM: usize = 16;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let disk = FaultDisk::new();
        let data = clustered(400, FIX_DIM, 8, 3);
        let seg_path = write_seg(&disk, Path::new("/s"), &data, FIX_DIM, 1);
        let seg = Segment::open(&disk, &seg_path).unwrap();
        let params = HnswParams {
            m: 4,
            m0: 8,
            ef_construction: 32,
            seed: 1,
        };
        build_and_write(&disk, &seg_path, &seg, params).unwrap();
        let idx_path = index_path(&seg_path);
        let bytes = disk.file_bytes(&idx_path).unwrap();
        Fixture {
            binding: SegmentBinding::of(&seg),
            disk,
            seg_path,
            idx_path,
            bytes,
            data,
        }
    })
}

/// Recomputes every section CRC (from the section table, where it is in range) and the header
/// CRC, so an edit reaches the structural checks behind them.
fn reseal(b: &mut [u8]) {
    if b.len() < HEADER_LEN {
        return;
    }
    for i in 0..SECTION_COUNT {
        let at = SECTION_TABLE_AT + i * SECTION_ENTRY_LEN;
        let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
        if let Some(s) = off
            .checked_add(len)
            .filter(|&e| e <= b.len())
            .map(|e| &b[off..e])
        {
            let crc = crc32c::crc32c(s);
            b[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if let Some((codes, scales)) = code_sections(b) {
        for ((off, len), at) in [(codes, CODES_CRC_AT), (scales, SCALES_CRC_AT)] {
            if off + len <= b.len() {
                let crc = crc32c::crc32c(&b[off..off + len]);
                b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Where a version 2 file's codes and scales lie, as its header describes them.
fn code_sections(b: &[u8]) -> Option<((usize, usize), (usize, usize))> {
    if get_u32(b, 8) < 2 {
        return None;
    }
    let rows = usize::try_from(u64::from_le_bytes(b[16..24].try_into().unwrap())).ok()?;
    let (dim, m0) = (get_u32(b, 12) as usize, get_u32(b, 28) as usize);
    let upper_words = section(b, sec::UPPER_LINKS).1 / 4;
    let layout = format::Layout::new(rows, m0, upper_words, dim)?;
    Some((layout.codes, layout.scales))
}

fn open_bytes(b: &[u8], binding: &SegmentBinding) -> crate::Result<Hnsw> {
    Hnsw::from_mapped(Mapped::from_bytes(b), binding)
}

fn corrupted_msg(r: crate::Result<Hnsw>) -> String {
    match r {
        Err(StorageError::Corrupted(m)) => m,
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok(_) => panic!("expected Corrupted, got a valid index"),
    }
}

fn section(b: &[u8], i: usize) -> (usize, usize) {
    let at = SECTION_TABLE_AT + i * SECTION_ENTRY_LEN;
    (
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize,
        u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize,
    )
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Runs every kind of search on an index that opened, to show it cannot panic.
fn exercise(h: &Hnsw) {
    let info = h.info();
    if info.rows > 5000 || info.dimension > 64 {
        return;
    }
    let data: Vec<f32> = (0..info.rows * info.dimension)
        .map(|i| ((i * 7919) % 13) as f32 - 6.0)
        .collect();
    let v = FlatVectors::new(data, info.dimension).unwrap();
    let q = vec![0.25f32; info.dimension];
    let _ = h.view().search(&v, &q, 5, 16, |_| true);
    let _ = h.view().search(&v, &q, 5, 16, |r| r % 3 == 0);
    let _ = h.search(&v, &q, 5, 16, |_| true);
    let _ = h.search(&v, &q, 5, 16, |r| r % 3 == 0);
}

// ---------------------------------------------------------------------------------------------
// Building and searching

#[test]
fn recall_at_10_against_flat_search() {
    let (dim, n, nq) = (48, 3000, 100);
    let (data, queries) = data_and_queries(n, nq, dim, 11);
    let v = FlatVectors::new(&data[..], dim).unwrap();
    let t = Instant::now();
    let g = build(&v, HnswParams::default()).unwrap();
    let built = t.elapsed();
    for (ef, min) in [(10, 0.95), (32, 0.98)] {
        let mut total = 0.0;
        for q in queries.chunks(dim) {
            let truth = flat_search(&v, q, 10, |_| true);
            let found = g.view().search(&v, q, 10, ef, |_| true);
            assert_eq!(found.len(), 10);
            assert!(found.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
            total += recall(&found, &truth);
        }
        let r = total / nq as f64;
        eprintln!("{n} x {dim}: built in {built:?}, recall@10 at ef {ef} = {r:.4}");
        assert!(r >= min, "recall@10 {r} at ef {ef} below {min}");
    }
    // Walking the graph by the rows' codes, then scoring the best exactly: the same recall,
    // and exact similarities.
    for (ef, min) in [(10, 0.95), (32, 0.98)] {
        let mut total = 0.0;
        for q in queries.chunks(dim) {
            let truth = flat_search(&v, q, 10, |_| true);
            let found = search::with_scratch(|s| {
                search::search_with_codes(&g.view(), s, g.codes(), &v, q, 10, ef, |_| true)
            });
            assert_eq!(found.len(), 10);
            assert!(found.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
            for &(row, sim) in &found {
                assert_eq!(sim, engram_core::simd::dot(q, v.vector(row)));
            }
            total += recall(&found, &truth);
        }
        let r = total / nq as f64;
        eprintln!("{n} x {dim}: by codes, recall@10 at ef {ef} = {r:.4}");
        assert!(r >= min, "recall@10 by codes {r} at ef {ef} below {min}");
    }
}

#[test]
fn built_graph_is_well_formed() {
    let (dim, n) = (32, 1500);
    let data = clustered(n, dim, 20, 5);
    let v = FlatVectors::new(&data[..], dim).unwrap();
    let p = small_params();
    let g = build(&v, p).unwrap();
    let view = g.view();
    let info = g.info();
    assert_eq!(
        usize::from(g.levels[info.entry_point as usize]),
        info.max_level
    );
    for row in 0..n as u32 {
        for layer in 0..=usize::from(g.levels[row as usize]) {
            let ns = view.neighbours(row, layer);
            let cap = if layer == 0 { p.m0 } else { p.m };
            assert!(ns.len() <= cap);
            assert!(!ns.contains(&row), "self loop at {row}");
            let mut sorted = ns.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), ns.len(), "duplicate neighbour at {row}");
            assert!(ns
                .iter()
                .all(|&x| usize::from(g.levels[x as usize]) >= layer));
        }
    }
    // Layer 0 reachability from the entry point.
    let mut seen = vec![false; n];
    let mut stack = vec![info.entry_point];
    seen[info.entry_point as usize] = true;
    while let Some(x) = stack.pop() {
        for &y in view.neighbours(x, 0) {
            if !seen[y as usize] {
                seen[y as usize] = true;
                stack.push(y);
            }
        }
    }
    let reached = seen.iter().filter(|&&s| s).count();
    assert!(
        reached * 100 >= n * 99,
        "only {reached} of {n} rows reachable"
    );
    // Levels follow the geometric law: about 1/m of the rows above layer 0.
    let upper = g.levels.iter().filter(|&&l| l > 0).count();
    assert!(
        (n / 16..n / 4).contains(&upper),
        "{upper} rows above layer 0"
    );
}

#[test]
fn level_generator_is_geometric() {
    let mut rng = build::SplitMix64::new(42);
    let n = 200_000;
    let mut counts = [0usize; MAX_LEVEL + 1];
    for _ in 0..n {
        counts[build::random_level(&mut rng, 16)] += 1;
    }
    // P(level >= 1) = 1/16, P(level >= 2) = 1/256.
    let ge1: usize = counts[1..].iter().sum();
    let ge2: usize = counts[2..].iter().sum();
    assert!((11_500..13_500).contains(&ge1), "{ge1}");
    assert!((600..960).contains(&ge2), "{ge2}");
    // Reference values of splitmix64 (seed 0), so the generator never changes silently.
    let mut r = build::SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
}

#[test]
fn accept_filter_is_honoured_and_k_still_found() {
    let (dim, n) = (32, 2000);
    let (data, queries) = data_and_queries(n, 20, dim, 21);
    let v = FlatVectors::new(&data[..], dim).unwrap();
    let g = build(&v, small_params()).unwrap();
    // Half, nine in ten, and all but three rows rejected.
    type Filter = Box<dyn Fn(u32) -> bool>;
    let filters: [(&str, Filter); 3] = [
        ("odd rows", Box::new(|r| r % 2 == 1)),
        ("one in ten", Box::new(|r| r % 10 == 3)),
        ("three rows", Box::new(|r| [5, 999, 1998].contains(&r))),
    ];
    for (name, accept) in &filters {
        let mut total = 0.0;
        for q in queries.chunks(dim) {
            let found = g.view().search(&v, q, 10, 32, accept);
            let truth = flat_search(&v, q, 10, accept);
            assert_eq!(found.len(), truth.len(), "{name}");
            assert!(
                found.iter().all(|f| accept(f.0)),
                "{name}: rejected row returned"
            );
            total += recall(&found, &truth);
        }
        let r = total / 20.0;
        assert!(r >= 0.9, "{name}: recall {r}");
    }
    // Nothing accepted: nothing returned.
    assert!(g
        .view()
        .search(&v, &queries[..dim], 10, 32, |_| false)
        .is_empty());
}

#[test]
fn unreachable_rows_are_still_found() {
    // A graph whose layer 0 has lost its links: the scan of unreached rows still returns k.
    let (dim, n) = (16, 200);
    let data = clustered(n, dim, 4, 2);
    let v = FlatVectors::new(&data[..], dim).unwrap();
    let mut g = build(&v, small_params()).unwrap();
    for row in 0..n as u32 {
        g.set_neighbours(row, 0, std::iter::empty());
    }
    let q = &data[..dim];
    let found = g.view().search(&v, q, 10, 10, |r| r % 2 == 0);
    assert_eq!(found, flat_search(&v, q, 10, |r| r % 2 == 0));
}

#[test]
fn k_larger_than_rows_one_row_and_empty() {
    let dim = 8;
    let data = clustered(5, dim, 2, 9);
    let v = FlatVectors::new(&data[..], dim).unwrap();
    let g = build(&v, small_params()).unwrap();
    let q = &data[dim..2 * dim];
    let found = g.view().search(&v, q, 10, 4, |_| true);
    assert_eq!(found, flat_search(&v, q, 10, |_| true));
    assert_eq!(found.len(), 5);
    assert_eq!(found[0].0, 1);
    assert!(g.view().search(&v, q, 0, 4, |_| true).is_empty());

    let one = FlatVectors::new(&data[..dim], dim).unwrap();
    let g = build(&one, small_params()).unwrap();
    assert_eq!(g.info().entry_point, 0);
    let r = g.view().search(&one, q, 3, 4, |_| true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0);
    assert!(g.view().search(&one, q, 3, 4, |_| false).is_empty());

    let none = FlatVectors::new(Vec::new(), dim).unwrap();
    let g = build(&none, small_params()).unwrap();
    assert_eq!(g.info().entry_point, NO_ENTRY);
    assert!(g.view().search(&none, q, 3, 4, |_| true).is_empty());
}

#[test]
fn build_rejects_bad_input() {
    let v = FlatVectors::new(vec![0.0; 8], 4).unwrap();
    let e = build(&v, HnswParams::with_m(0)).unwrap_err().to_string();
    assert!(e.contains("MIN_M"), "{e}");
    assert!(FlatVectors::new(vec![0.0; 7], 4).is_err());
    assert!(FlatVectors::new(vec![0.0; 8], 0).is_err());
}

// ---------------------------------------------------------------------------------------------
// Files

#[test]
fn index_path_replaces_the_extension() {
    assert_eq!(
        index_path(Path::new(
            "/d/00000000000000000001-00000000000000000009.seg"
        )),
        Path::new("/d/00000000000000000001-00000000000000000009.hnsw")
    );
    assert_eq!(index_path(Path::new("x")), Path::new("x.hnsw"));
}

#[test]
fn write_open_search_gives_identical_results() {
    let disk = FaultDisk::new();
    let (dim, n) = (32, 1000);
    let (data, queries) = data_and_queries(n, 20, dim, 31);
    let seg_path = write_seg(&disk, Path::new("/sp"), &data, dim, 1);
    let seg = Segment::open(&disk, &seg_path).unwrap();
    let syncs = disk.syncs();
    build_and_write(&disk, &seg_path, &seg, small_params()).unwrap();
    assert!(disk.syncs() > syncs, "the index file is synced");
    let idx = index_path(&seg_path);
    // Durable: survives a power cut right after the call.
    assert_eq!(disk.durable_bytes(&idx), disk.file_bytes(&idx));
    assert!(!disk.exists(&seg_path.with_extension("hnsw.tmp")));

    let h = Hnsw::open(&disk, &idx, &seg).unwrap();
    let flat = FlatVectors::new(&data[..], dim).unwrap();
    let g = build(&flat, small_params()).unwrap();
    assert_eq!(h.info(), g.info());
    for q in queries.chunks(dim) {
        let from_file = h.view().search(&seg, q, 10, 40, |r| r % 5 != 0);
        let in_memory = g.view().search(&flat, q, 10, 40, |r| r % 5 != 0);
        assert_eq!(from_file, in_memory);
        assert_eq!(from_file.len(), 10);
    }
    // The bytes are the encoding of the same graph.
    assert_eq!(
        disk.file_bytes(&idx).unwrap(),
        encode(&g, &SegmentBinding::of(&seg)).unwrap()
    );
}

#[test]
fn builds_are_deterministic() {
    let f = fixture();
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/again"), &f.data, FIX_DIM, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    let params = HnswParams {
        m: 4,
        m0: 8,
        ef_construction: 32,
        seed: 1,
    };
    build_and_write(&disk, &p, &seg, params).unwrap();
    assert_eq!(disk.file_bytes(&index_path(&p)).unwrap(), f.bytes);
    let other = build(&seg, HnswParams { seed: 2, ..params }).unwrap();
    assert_ne!(encode(&other, &SegmentBinding::of(&seg)).unwrap(), f.bytes);
}

mod files;
mod measure;
