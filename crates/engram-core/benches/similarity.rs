//! Similarity kernels: the scalar loop against every SIMD kernel this CPU can run.
//!
//! `cargo bench -p engram-core --bench similarity`
//! (quick look: append `-- --warm-up-time 1 --measurement-time 2`)
//!
//! - `dot768`: one 768-d dot product (throughput counts both vectors' bytes).
//! - `dot_rows_10000x768`: the flat scan of a 64-byte aligned column of 10,000 rows of 768-d
//!   against one query (throughput counts the column's bytes, about 30.7 MB, so it is the
//!   rate at which a scan reads the mapped embedding column).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engram_core::simd::{self, Kernel};
use std::hint::black_box;

const DIM: usize = 768;
const ROWS: usize = 10_000;

/// Deterministic values in [-1, 1) (splitmix64), so runs compare.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn dot768(c: &mut Criterion) {
    let a = values(DIM, 1);
    let b = values(DIM, 2);
    let mut g = c.benchmark_group("dot768");
    g.throughput(Throughput::Bytes((2 * DIM * size_of::<f32>()) as u64));
    g.bench_function("scalar::dot", |bench| {
        bench.iter(|| simd::scalar::dot(black_box(&a), black_box(&b)))
    });
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::new("Kernel::dot", k.name()), |bench| {
            bench.iter(|| black_box(k).dot(black_box(&a), black_box(&b)))
        });
    }
    g.bench_function(
        BenchmarkId::new("simd::dot", simd::kernel().name()),
        |bench| bench.iter(|| simd::dot(black_box(&a), black_box(&b))),
    );
    g.finish();
}

fn dot_rows(c: &mut Criterion) {
    let query = values(DIM, 3);
    // Rows of a mapped segment column start on 64-byte boundaries: align the copy the same way.
    let buffer = values(ROWS * DIM + 16, 4);
    let offset = buffer.as_ptr().align_offset(64);
    let column = &buffer[offset..offset + ROWS * DIM];
    let mut out = vec![0.0f32; ROWS];
    let mut g = c.benchmark_group("dot_rows_10000x768");
    g.throughput(Throughput::Bytes((ROWS * DIM * size_of::<f32>()) as u64));
    g.sample_size(10);
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::new("Kernel::dot_rows", k.name()), |bench| {
            bench.iter(|| {
                black_box(k).dot_rows(black_box(&query), black_box(column), DIM, &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, dot768, dot_rows);
criterion_main!(benches);
