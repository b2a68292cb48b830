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
    let mems: Vec<Memory> = data
        .chunks(dim)
        .enumerate()
        .map(|(i, e)| Memory {
            id: MemoryId::new(format!("m{i:06}")).unwrap(),
            content: "c".into(),
            embedding: e.to_vec(),
            confidence: 0.5,
            timestamp_us: 0,
            metadata: Default::default(),
            links: vec![],
        })
        .collect();
    let refs: Vec<&Memory> = mems.iter().collect();
    write_memories(
        disk,
        &path,
        dim,
        (seq, seq + 10),
        &refs,
        &[],
        &WritePace::UNPACED,
    )
    .unwrap();
    path
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
    let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
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
            let found = g.search(&v, q, 10, ef, |_| true);
            assert_eq!(found.len(), 10);
            assert!(found.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
            total += recall(&found, &truth);
        }
        let r = total / nq as f64;
        eprintln!("{n} x {dim}: built in {built:?}, recall@10 at ef {ef} = {r:.4}");
        assert!(r >= min, "recall@10 {r} at ef {ef} below {min}");
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
            let found = g.search(&v, q, 10, 32, accept);
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
    assert!(g.search(&v, &queries[..dim], 10, 32, |_| false).is_empty());
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
    let found = g.search(&v, q, 10, 10, |r| r % 2 == 0);
    assert_eq!(found, flat_search(&v, q, 10, |r| r % 2 == 0));
}

#[test]
fn k_larger_than_rows_one_row_and_empty() {
    let dim = 8;
    let data = clustered(5, dim, 2, 9);
    let v = FlatVectors::new(&data[..], dim).unwrap();
    let g = build(&v, small_params()).unwrap();
    let q = &data[dim..2 * dim];
    let found = g.search(&v, q, 10, 4, |_| true);
    assert_eq!(found, flat_search(&v, q, 10, |_| true));
    assert_eq!(found.len(), 5);
    assert_eq!(found[0].0, 1);
    assert!(g.search(&v, q, 0, 4, |_| true).is_empty());

    let one = FlatVectors::new(&data[..dim], dim).unwrap();
    let g = build(&one, small_params()).unwrap();
    assert_eq!(g.info().entry_point, 0);
    let r = g.search(&one, q, 3, 4, |_| true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0);
    assert!(g.search(&one, q, 3, 4, |_| false).is_empty());

    let none = FlatVectors::new(Vec::new(), dim).unwrap();
    let g = build(&none, small_params()).unwrap();
    assert_eq!(g.info().entry_point, NO_ENTRY);
    assert!(g.search(&none, q, 3, 4, |_| true).is_empty());
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
        let from_file = h.search(&seg, q, 10, 40, |r| r % 5 != 0);
        let in_memory = g.search(&flat, q, 10, 40, |r| r % 5 != 0);
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

/// A disk that only reads: every write-side call fails and is counted.
#[derive(Debug)]
struct ReadOnly {
    inner: FaultDisk,
    writes: Arc<AtomicUsize>,
}

impl ReadOnly {
    fn refuse<T>(&self) -> io::Result<T> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::other("read-only disk"))
    }
}

impl Disk for ReadOnly {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn create_dir(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(p)
    }
    fn exists(&self, p: &Path) -> bool {
        self.inner.exists(p)
    }
    fn open_append(&self, _: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.refuse()
    }
    fn open_write(&self, _: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.refuse()
    }
    fn create(&self, _: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.refuse()
    }
    fn map(&self, p: &Path) -> io::Result<Mapped> {
        self.inner.map(p)
    }
    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(p)
    }
    fn file_len(&self, p: &Path) -> io::Result<u64> {
        self.inner.file_len(p)
    }
    fn truncate(&self, _: &Path, _: u64) -> io::Result<()> {
        self.refuse()
    }
    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn remove_file(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn remove_dir_all(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
}

#[test]
fn reopening_only_reads() {
    let f = fixture();
    let ro = ReadOnly {
        inner: f.disk.clone(),
        writes: Arc::new(AtomicUsize::new(0)),
    };
    let seg = Segment::open(&ro, &f.seg_path).unwrap();
    let before = f.disk.list_dir(Path::new("/s")).unwrap();
    let h = Hnsw::open(&ro, &f.idx_path, &seg).unwrap();
    assert_eq!(ro.writes.load(Ordering::SeqCst), 0);
    assert_eq!(f.disk.list_dir(Path::new("/s")).unwrap(), before);
    assert_eq!(f.disk.file_bytes(&f.idx_path).unwrap(), f.bytes);
    // The graph is the file's bytes, in place: the layer-0 section lies inside the mapping.
    let view = h.view();
    let map = h.mapped();
    let range = map.as_ptr_range();
    assert!(range.contains(&view.layer0.as_ptr().cast::<u8>()));
    let q = &f.data[..FIX_DIM];
    let r = h.search(&seg, q, 5, 16, |_| true);
    assert_eq!(r[0].0, 0);
    assert_eq!(r, flat_search(&seg, q, 5, |_| true));
}

#[test]
fn empty_segment_gets_a_valid_empty_index() {
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/e"), &[], 8, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    build_and_write(&disk, &p, &seg, HnswParams::default()).unwrap();
    let h = Hnsw::open(&disk, &index_path(&p), &seg).unwrap();
    assert_eq!(h.info().rows, 0);
    assert_eq!(h.info().entry_point, NO_ENTRY);
    assert!(h.search(&seg, &[0.5; 8], 10, 10, |_| true).is_empty());
    assert_eq!(disk.file_bytes(&index_path(&p)).unwrap().len(), 256);
}

#[test]
fn one_row_segment() {
    let disk = FaultDisk::new();
    let data = clustered(1, 8, 1, 4);
    let p = write_seg(&disk, Path::new("/one"), &data, 8, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    build_and_write(&disk, &p, &seg, HnswParams::default()).unwrap();
    let h = Hnsw::open(&disk, &index_path(&p), &seg).unwrap();
    let r = h.search(&seg, &data, 10, 10, |_| true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0);
    assert!((r[0].1 - 1.0).abs() < 1e-5);
}

#[test]
fn wrong_segment_is_refused() {
    let f = fixture();
    // Same rows and dimension, other content.
    let other = clustered(400, FIX_DIM, 8, 99);
    let p = write_seg(&f.disk, Path::new("/other"), &other, FIX_DIM, 1);
    let seg = Segment::open(&f.disk, &p).unwrap();
    let m = corrupted_msg(Hnsw::open(&f.disk, &f.idx_path, &seg));
    assert!(m.contains("another segment"), "{m}");
    assert!(
        m.contains(f.idx_path.to_str().unwrap()),
        "names the file: {m}"
    );
    // Fewer rows.
    let p = write_seg(
        &f.disk,
        Path::new("/fewer"),
        &f.data[..399 * FIX_DIM],
        FIX_DIM,
        1,
    );
    let seg = Segment::open(&f.disk, &p).unwrap();
    let m = corrupted_msg(Hnsw::open(&f.disk, &f.idx_path, &seg));
    assert!(m.contains("another segment"), "{m}");
    // Each field of the binding matters.
    let b = f.binding;
    for wrong in [
        SegmentBinding {
            file_len: b.file_len + 64,
            ..b
        },
        SegmentBinding {
            footer_crc: b.footer_crc ^ 1,
            ..b
        },
        SegmentBinding {
            rows: b.rows + 1,
            ..b
        },
        SegmentBinding {
            dimension: b.dimension + 1,
            ..b
        },
    ] {
        let m = corrupted_msg(open_bytes(&f.bytes, &wrong));
        assert!(m.contains("another segment"), "{m}");
    }
    open_bytes(&f.bytes, &b).unwrap();
}

#[test]
fn every_corruption_class_is_an_error() {
    let f = fixture();
    let good = &f.bytes;
    let b = &f.binding;
    open_bytes(good, b).unwrap();
    let check = |name: &str, bytes: &[u8], want: &str| {
        let m = corrupted_msg(open_bytes(bytes, b));
        assert!(m.contains(want), "{name}: message {m:?} lacks {want:?}");
    };
    let edited = |f: &dyn Fn(&mut Vec<u8>), seal: bool| {
        let mut x = good.clone();
        f(&mut x);
        if seal {
            reseal(&mut x);
        }
        x
    };

    // Length.
    check("empty", &[], "shorter than its header");
    check(
        "header only",
        &good[..HEADER_LEN - 1],
        "shorter than its header",
    );
    check(
        "truncated",
        &good[..good.len() - 64],
        "bytes, its header describes",
    );
    check(
        "truncated by one",
        &good[..good.len() - 1],
        "bytes, its header describes",
    );
    check(
        "extended",
        &edited(&|x| x.extend_from_slice(&[0; 64]), false),
        "bytes, its header describes",
    );
    // Header.
    check("magic", &edited(&|x| x[0] ^= 1, false), "bad magic");
    for at in [8, 12, 16, 24, 36, 48, 56, 64, 100, 170, 187, 188] {
        check(
            "header byte",
            &edited(&|x| x[at] ^= 0x10, false),
            "header checksum",
        );
    }
    match open_bytes(&edited(&|x| put_u32(x, 8, 2), true), b) {
        Err(StorageError::UnsupportedVersion(m)) => {
            assert!(m.contains("version 2"), "{m}")
        }
        other => panic!("newer version: {other:?}"),
    }
    // Section checksums.
    for (i, name) in ["levels", "layer 0", "upper offsets", "upper links"]
        .iter()
        .enumerate()
    {
        let (off, len) = section(good, i);
        assert!(len > 0);
        for at in [off, off + len / 2, off + len - 1] {
            check(
                name,
                &edited(&|x| x[at] ^= 0x01, false),
                &format!("{name} section checksum"),
            );
        }
    }
    // Header fields, resealed.
    check("m", &edited(&|x| put_u32(x, 24, 1), true), "MIN_M..=MAX_M");
    check("m0", &edited(&|x| put_u32(x, 28, 2), true), "MAX_M0");
    check(
        "m0 layout",
        &edited(&|x| put_u32(x, 28, 9), true),
        "its header describes",
    );
    check(
        "ef",
        &edited(&|x| put_u32(x, 32, 0), true),
        "MAX_EF_CONSTRUCTION",
    );
    check(
        "dimension 0",
        &edited(&|x| put_u32(x, 12, 0), true),
        "dimension 0",
    );
    check(
        "max level",
        &edited(&|x| put_u32(x, 36, 33), true),
        "MAX_LEVEL",
    );
    check(
        "entry",
        &edited(&|x| put_u32(x, 48, 400), true),
        "entry point 400",
    );
    check(
        "rows",
        &edited(
            &|x| x[16..24].copy_from_slice(&u64::MAX.to_le_bytes()),
            true,
        ),
        "MAX_ROWS",
    );
    check("binding", &edited(&|x| x[52] ^= 1, true), "another segment");
    check(
        "section offset",
        &edited(&|x| x[SECTION_TABLE_AT] ^= 64, true),
        "levels section at",
    );
    check(
        "upper length",
        &edited(
            &|x| x[SECTION_TABLE_AT + 3 * SECTION_ENTRY_LEN + 8] ^= 2,
            true,
        ),
        "not whole u32",
    );
    // Structure, resealed.
    let (lv, _) = section(good, sec::LEVELS);
    let (l0, _) = section(good, sec::LAYER0);
    let (uo, _) = section(good, sec::UPPER_OFFSETS);
    let (ul, _) = section(good, sec::UPPER_LINKS);
    let info = open_bytes(good, b).unwrap().info();
    let slot0 = (info.m0 + 1) * 4;
    check(
        "layer-0 neighbour out of range",
        &edited(&|x| put_u32(x, l0 + 4, 400), true),
        "layer-0 neighbour 400 is not a row",
    );
    check(
        "layer-0 count",
        &edited(&|x| put_u32(x, l0 + 3 * slot0, 9), true),
        "9 layer-0 neighbours",
    );
    let top = good[lv..lv + 400].iter().position(|&l| l == 0).unwrap();
    check(
        "level above max",
        &edited(&|x| x[lv + top] = info.max_level as u8 + 1, true),
        "above the max level",
    );
    let low = good[lv..lv + 400]
        .iter()
        .position(|&l| (l as usize) < info.max_level)
        .unwrap();
    check(
        "entry point below max level",
        &edited(&|x| put_u32(x, 48, low as u32), true),
        "not the max level",
    );
    check(
        "upper offset",
        &edited(&|x| x[uo + 8] ^= 1, true),
        "upper offset of row 1",
    );
    // The first row with an upper layer: its layer-1 count and neighbours.
    let r1 = good[lv..lv + 400].iter().position(|&l| l >= 1).unwrap();
    let at = ul
        + 4 * u64::from_le_bytes(good[uo + 8 * r1..uo + 8 * r1 + 8].try_into().unwrap()) as usize;
    assert!(get_u32(good, at) >= 1, "row {r1} has layer-1 neighbours");
    check(
        "upper count",
        &edited(&|x| put_u32(x, at, info.m as u32 + 1), true),
        "neighbours on layer 1",
    );
    check(
        "upper neighbour out of range",
        &edited(&|x| put_u32(x, at + 4, 1000), true),
        "layer-1 neighbour 1000 is not a row",
    );
    let ground = good[lv..lv + 400].iter().position(|&l| l == 0).unwrap();
    check(
        "upper neighbour not on the layer",
        &edited(&|x| put_u32(x, at + 4, ground as u32), true),
        "is not on layer 1",
    );
}

#[test]
fn every_bit_flip_outside_padding_is_detected() {
    let f = fixture();
    let good = &f.bytes;
    let mut covered = vec![false; good.len()];
    covered[..HEADER_LEN].fill(true);
    for i in 0..SECTION_COUNT {
        let (off, len) = section(good, i);
        covered[off..off + len].fill(true);
    }
    for at in 0..good.len() {
        let mut x = good.clone();
        x[at] ^= 0x80;
        match open_bytes(&x, &f.binding) {
            Ok(h) => {
                assert!(!covered[at], "flip at {at} went unnoticed");
                exercise(&h);
            }
            Err(e) => assert!(
                covered[at] && matches!(e, StorageError::Corrupted(_)),
                "flip at {at}: {e}"
            ),
        }
    }
}

#[test]
fn fault_disk_corruption_is_reported_with_the_path() {
    let f = fixture();
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/flip"), &f.data, FIX_DIM, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    build_and_write(&disk, &p, &seg, HnswParams::default()).unwrap();
    let idx = index_path(&p);
    disk.flip_bit(&idx, HEADER_LEN as u64 + 1, 3);
    let m = corrupted_msg(Hnsw::open(&disk, &idx, &seg));
    assert!(
        m.starts_with("/flip/") && m.contains("levels section checksum"),
        "{m}"
    );
    // A missing file is an I/O error naming it.
    match Hnsw::open(&disk, Path::new("/flip/none.hnsw"), &seg) {
        Err(StorageError::Io { path, .. }) => assert_eq!(path, Path::new("/flip/none.hnsw")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_write_leaves_no_index() {
    let f = fixture();
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/fail"), &f.data, FIX_DIM, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    disk.fail_syncs(1);
    assert!(build_and_write(&disk, &p, &seg, small_params()).is_err());
    assert!(!disk.exists(&index_path(&p)));
    disk.clear_faults();
    // A write cut short by a power loss leaves no index under the final name.
    disk.fail_writes_after(Some(1000));
    assert!(build_and_write(&disk, &p, &seg, small_params()).is_err());
    disk.clear_faults();
    disk.power_cut();
    assert!(!disk.exists(&index_path(&p)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1200),
        seal in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if seal {
            reseal(&mut bytes);
        }
        // Bind to what the header claims, so the structural checks are reached.
        let binding = if bytes.len() >= HEADER_LEN {
            SegmentBinding {
                footer_crc: get_u32(&bytes, 52),
                file_len: u64::from_le_bytes(bytes[56..64].try_into().unwrap()),
                rows: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
                dimension: get_u32(&bytes, 12),
            }
        } else {
            fixture().binding
        };
        if let Ok(h) = open_bytes(&bytes, &binding) {
            exercise(&h);
        }
    }

    #[test]
    fn corrupted_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        seal in any::<bool>(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let f = fixture();
        let mut x = f.bytes.clone();
        for (at, v) in &edits {
            let i = at.index(x.len());
            x[i] = *v;
        }
        if let Some(c) = cut {
            x.truncate(c.index(x.len()));
        }
        if seal {
            reseal(&mut x);
        }
        match open_bytes(&x, &f.binding) {
            Ok(h) => {
                // Only a consistent graph opens; it searches the real segment without panic.
                let v = FlatVectors::new(&f.data[..], FIX_DIM).unwrap();
                let q = &f.data[FIX_DIM..2 * FIX_DIM];
                let r = h.search(&v, q, 10, 20, |r| r % 2 == 0);
                prop_assert!(r.len() == 10);
                prop_assert!(r.iter().all(|x| x.0 % 2 == 0));
            }
            Err(StorageError::Corrupted(_)) | Err(StorageError::UnsupportedVersion(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}

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
        write_memories(
            &disk,
            &seg_path,
            dim,
            (1, 2),
            &refs,
            &[],
            &WritePace::UNPACED,
        )
        .unwrap();
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
            let r = h.search(&seg, q, 10, ef, |_| true);
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
            let r = h.search(&seg, q, 10, 64, accept);
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
