//! Helpers shared by the engine's integration tests.

#![allow(dead_code)]

use engram_core::{Link, MemoryId, SpaceId};
use engram_engine::{Engine, EngineOptions, NewMemory};
use engram_storage::StoreOptions;

pub fn sid(s: &str) -> SpaceId {
    SpaceId::new(s).unwrap()
}

pub fn mid(s: &str) -> MemoryId {
    MemoryId::new(s).unwrap()
}

pub fn options(dim: u32) -> EngineOptions {
    EngineOptions {
        store: StoreOptions {
            background_compaction: false,
            index_min_rows: 64,
            ..StoreOptions::default()
        },
        default_dimension: dim,
        ..EngineOptions::default()
    }
}

/// The unit vector along axis `i`.
pub fn axis(dim: usize, i: usize) -> Vec<f32> {
    let mut v = vec![0.0; dim];
    v[i] = 1.0;
    v
}

pub fn vector_memory(id: &str, embedding: Vec<f32>, links: Vec<Link>) -> NewMemory {
    NewMemory {
        id: Some(mid(id)),
        content: format!("content of {id}"),
        embedding: Some(embedding),
        links,
        auto_link: false,
        ..Default::default()
    }
}

pub fn link(to: &str, weight: f32) -> Link {
    Link {
        to: mid(to),
        weight,
    }
}

/// A unit vector close to axis `i` (similarity about 0.995 to it), tilted towards axis `j`.
pub fn near(dim: usize, i: usize, j: usize, tilt: f32) -> Vec<f32> {
    let mut v = axis(dim, i);
    v[j] = tilt;
    let n = (1.0 + tilt * tilt).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

pub fn auto(id: &str, embedding: Vec<f32>) -> NewMemory {
    NewMemory {
        auto_link: true,
        ..vector_memory(id, embedding, vec![])
    }
}

pub fn link_targets(engine: &Engine, space: &SpaceId, id: &str) -> Vec<String> {
    let mut t: Vec<String> = engine
        .get(space, id)
        .unwrap()
        .unwrap()
        .links
        .iter()
        .map(|l| l.to.to_string())
        .collect();
    t.sort();
    t
}
