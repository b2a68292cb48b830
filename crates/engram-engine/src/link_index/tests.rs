//! Tests of the link index: quantisation, search against exact, planned insertions, the
//! build's backlog, removal and rebuild.

use super::graph::quantize;
use super::*;
use rand::{Rng, SeedableRng};

fn unit(rng: &mut rand::rngs::SmallRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
    simd::normalize(&mut v);
    v
}

fn id(i: usize) -> MemoryId {
    MemoryId::new(format!("m{i}")).unwrap()
}

#[test]
fn quantised_similarity_is_close_to_exact() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    for _ in 0..200 {
        let (a, b) = (unit(&mut rng, 768), unit(&mut rng, 768));
        let (qa, qb) = (quantize(&a), quantize(&b));
        let approx = simd::dot_i8(&qa.bytes, &qb.bytes) as f32 * qa.scale * qb.scale;
        assert!((approx - simd::dot(&a, &b)).abs() < 2e-3);
    }
    let zero = quantize(&[0.0; 8]);
    assert_eq!(zero.scale, 0.0);
}

#[test]
fn finds_near_neighbours_like_an_exact_scan() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
    let dim = 64;
    // Clustered data, as embeddings are.
    let centres: Vec<Vec<f32>> = (0..40).map(|_| unit(&mut rng, dim)).collect();
    let mut data = Vec::new();
    let mut g = QuantGraph::new(dim, 16, 64);
    for i in 0..3000 {
        let c = &centres[i % centres.len()];
        let mut v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.15..0.15)).collect();
        simd::normalize(&mut v);
        g.put(id(i), &v);
        data.push(v);
    }
    assert_eq!(g.len(), 3000);
    let mut hits = 0;
    let queries = 200;
    for _ in 0..queries {
        let t = &data[rng.gen_range(0..data.len())];
        let mut q: Vec<f32> = t.iter().map(|x| x + rng.gen_range(-0.05..0.05)).collect();
        simd::normalize(&mut q);
        let mut exact: Vec<(usize, f32)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (i, simd::dot(&q, v)))
            .collect();
        exact.sort_by(|a, b| b.1.total_cmp(&a.1));
        let want: Vec<MemoryId> = exact[..3].iter().map(|(i, _)| id(*i)).collect();
        let got = g.search(&q, 3, 32);
        hits += want
            .iter()
            .filter(|w| got.iter().any(|(g, _)| g == *w))
            .count();
    }
    let recall = hits as f64 / (3 * queries) as f64;
    assert!(recall >= 0.95, "recall@3 {recall}");
}

#[test]
fn forgotten_and_replaced_memories_are_not_returned() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let mut g = QuantGraph::new(32, 8, 32);
    let vs: Vec<Vec<f32>> = (0..500).map(|_| unit(&mut rng, 32)).collect();
    for (i, v) in vs.iter().enumerate() {
        g.put(id(i), v);
    }
    // Forget m0; replace m1 with m2's vector.
    g.remove("m0");
    g.put(id(1), &vs[2]);
    assert_eq!(g.len(), 499);
    let got = g.search(&vs[0], 5, 32);
    assert!(got.iter().all(|(i, _)| i.as_str() != "m0"), "{got:?}");
    let got = g.search(&vs[2], 2, 32);
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert!(ids.contains(&"m1") && ids.contains(&"m2"), "{ids:?}");
    // m1's old vector no longer finds m1 first.
    let got = g.search(&vs[1], 1, 32);
    assert_ne!(got[0].0.as_str(), "m1");
}

#[test]
fn plans_made_on_a_much_smaller_graph_are_made_again() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let mut g = QuantGraph::new(16, 8, 32);
    let vs: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, 16)).collect();
    // Every plan made on the empty graph, as concurrent first writes would.
    let plans: Vec<Insertion> = vs.iter().map(|v| g.plan(v)).collect();
    for (i, p) in plans.into_iter().enumerate() {
        g.apply(id(i), p);
    }
    for (i, v) in vs.iter().enumerate() {
        assert_eq!(g.search(v, 1, 32)[0].0, id(i), "{i} unreachable");
    }
}

#[test]
fn replacing_everything_twice_asks_for_a_rebuild() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(6);
    let mut g = QuantGraph::new(8, 4, 16);
    for round in 0..3 {
        for i in 0..1100 {
            g.put(id(i), &unit(&mut rng, 8));
        }
        assert_eq!(g.wants_rebuild(), round == 2, "round {round}");
    }
}

#[test]
fn storing_the_same_vector_again_adds_no_row() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(8);
    let mut g = QuantGraph::new(16, 4, 16);
    let v = unit(&mut rng, 16);
    for _ in 0..50 {
        g.put(id(1), &v);
    }
    assert_eq!((g.rows(), g.len()), (1, 1));
    g.put(id(1), &unit(&mut rng, 16));
    assert_eq!((g.rows(), g.len()), (2, 1));
}

#[test]
fn the_backlog_holds_changes_until_the_build_ends() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
    let idx = LinkIndex::new(16, 8, 32);
    let a = unit(&mut rng, 16);
    let b = unit(&mut rng, 16);
    idx.put(&id(1), &a);
    idx.remove(&id(0));
    assert!(!idx.is_ready());
    assert!(idx.search(&a, 1, 8).is_empty());
    idx.build(&EmbeddingSnapshot::default());
    assert!(idx.is_ready());
    assert_eq!(idx.len(), 1);
    assert_eq!(idx.search(&a, 1, 8)[0].0, id(1));
    idx.put(&id(2), &b);
    assert_eq!(idx.search(&b, 1, 8)[0].0, id(2));
}
