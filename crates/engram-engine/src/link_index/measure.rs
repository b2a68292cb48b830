//! Insert cost and recall of the link index on 40,000 768-d vectors (ignored; run by hand).

use super::*;
use rand::{Rng, SeedableRng};

fn thread_cpu_s() -> f64 {
    let mut ts = Timespec::default();
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { clock_gettime(3, &mut ts) }; // CLOCK_THREAD_CPUTIME_ID
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}
#[repr(C)]
#[derive(Default)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// `cargo test --release -p engram-engine --lib link_index::measure -- --ignored --nocapture`
#[test]
#[ignore]
fn insert_cost_and_recall() {
    let dim = 768;
    let n = 40_000;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let centres: Vec<Vec<f32>> = (0..300)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            simd::normalize(&mut v);
            v
        })
        .collect();
    let data: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.06..0.06)).collect();
            simd::normalize(&mut v);
            v
        })
        .collect();
    for (m, ef_c) in [(16, 32), (16, 48), (16, 64)] {
        let mut g = QuantGraph::new(dim, m, ef_c);
        let t = thread_cpu_s();
        for (i, v) in data.iter().enumerate() {
            let ins = g.plan(v);
            g.apply(MemoryId::new(format!("m{i}")).unwrap(), ins);
        }
        let insert_us = (thread_cpu_s() - t) / n as f64 * 1e6;
        let mut hits = 0;
        let q = 200;
        let t = thread_cpu_s();
        for j in 0..q {
            let target = &data[(j * 7919) % n];
            let mut v: Vec<f32> = target
                .iter()
                .map(|x| x + rng.gen_range(-0.02..0.02))
                .collect();
            simd::normalize(&mut v);
            let mut exact: Vec<(usize, f32)> = data
                .iter()
                .enumerate()
                .map(|(i, d)| (i, simd::dot(&v, d)))
                .collect();
            exact.sort_by(|a, b| b.1.total_cmp(&a.1));
            let ins = g.plan(&v);
            let got = g.nearest(&ins, 3);
            hits += exact[..3]
                .iter()
                .filter(|(i, _)| got.iter().any(|(id, _)| id.as_str() == format!("m{i}")))
                .count();
        }
        let _ = t;
        println!(
            "m {m}, ef_construction {ef_c}: {insert_us:.1} µs CPU per insert at {n} rows; recall@3 of the plan's search {:.3}",
            hits as f64 / (3 * q) as f64
        );
    }
}
