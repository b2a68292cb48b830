//! Stage 3, spreading: the seeds' activation spread along the space's links.
//!
//! The activation function ([`activation::spread`]) works on small copyable nodes, so memory
//! ids are interned as `u32`s as the graph is walked; the links are read from the recalled
//! space only, which is what keeps activation from leaving it.

use std::cell::RefCell;
use std::collections::HashMap;

use engram_core::activation::{self, Spread};
use engram_core::{Cue, MemoryId, SpaceId};

use super::fusion::Seed;
use super::FoundBy;
use crate::{Engine, EngineError, Result};

/// What spreading reached, with what scoring needs to name and describe it.
pub(super) struct Spreading {
    /// The interned ids: node `n` is `ids[n]`.
    pub ids: Vec<MemoryId>,
    /// A seed's similarity to the cue and the paths that found it, by node.
    pub seeds: HashMap<u32, (Option<f32>, FoundBy)>,
    pub spread: Spread<u32>,
}

/// Memory ids as nodes: each id gets the next number the first time it is seen.
#[derive(Default)]
struct Interner {
    ids: Vec<MemoryId>,
    index: HashMap<MemoryId, u32>,
}

impl Interner {
    fn node(&mut self, id: MemoryId) -> u32 {
        let ids = &mut self.ids;
        *self.index.entry(id.clone()).or_insert_with(|| {
            ids.push(id);
            (ids.len() - 1) as u32
        })
    }
}

impl Engine {
    /// Spreads the seeds' activation (those with some) along the links of `space`, with the
    /// cue's parameters.
    pub(super) fn spread(&self, space: &SpaceId, cue: &Cue, seeds: Vec<Seed>) -> Result<Spreading> {
        let mut nodes = Interner::default();
        let mut seed_info: HashMap<u32, (Option<f32>, FoundBy)> = HashMap::new();
        let starts: Vec<(u32, f32)> = seeds
            .into_iter()
            .filter(|s| s.activation > 0.0)
            .map(|s| {
                let n = nodes.node(s.id);
                seed_info.insert(n, (s.similarity, s.found_by));
                (n, s.activation)
            })
            .collect();

        let nodes = RefCell::new(nodes);
        let error: RefCell<Option<EngineError>> = RefCell::default();
        // The space's links, read from that space only: activation never leaves it.
        let graph = |node: u32, f: &mut dyn FnMut(u32, f32)| {
            let id = nodes.borrow().ids[node as usize].clone();
            let out = self.store.read_space(space, |st| st.links(id.as_str()));
            match out {
                Ok(Ok(Some(ls))) => {
                    for l in ls {
                        let n = nodes.borrow_mut().node(l.to);
                        f(n, l.weight);
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) | Err(e) => {
                    error.borrow_mut().get_or_insert(e.into());
                }
            }
        };
        let spread = activation::spread(&starts, &graph, cue.spread_params());
        if let Some(e) = error.into_inner() {
            return Err(e);
        }
        Ok(Spreading {
            ids: nodes.into_inner().ids,
            seeds: seed_info,
            spread,
        })
    }
}
