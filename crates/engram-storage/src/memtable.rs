//! A space's records that are in the WAL but not yet in a segment.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::lexical::DocTerms;

use engram_core::{Memory, MemoryId};

/// The newest state of one id in a memtable.
#[derive(Debug, Clone)]
pub enum Entry {
    Live(Arc<Memory>),
    Tombstone,
}

/// Applied records of one space, newest state per id.
#[derive(Debug, Default)]
pub struct Memtable {
    pub entries: HashMap<MemoryId, Entry>,
    /// Lowest and highest WAL sequence applied here; `None` when nothing was.
    pub min_seq: Option<u64>,
    pub max_seq: u64,
    /// Approximate heap bytes held.
    pub bytes: usize,
    /// The live entries stored with their automatic links still to be made, in write order
    /// (record sequence, place in the record), and the same keyed by id.
    pending: BTreeMap<(u64, u32), MemoryId>,
    pending_at: HashMap<MemoryId, (u64, u32)>,
    /// Lexical terms of live entries, computed when first searched ([`Memtable::doc_terms`])
    /// and dropped when the entry is replaced.
    lex: parking_lot::Mutex<HashMap<MemoryId, Arc<DocTerms>>>,
}

impl Memtable {
    /// Records that the record `seq` was applied here.
    pub fn note(&mut self, seq: u64) {
        self.min_seq = Some(self.min_seq.map_or(seq, |m| m.min(seq)));
        self.max_seq = self.max_seq.max(seq);
    }

    pub fn is_clean(&self) -> bool {
        self.min_seq.is_none()
    }

    pub fn put(&mut self, memory: Memory) {
        self.bytes += memory_bytes(&memory);
        self.forget_terms(&memory.id);
        self.unpend(&memory.id);
        if let Some(Entry::Live(old)) = self
            .entries
            .insert(memory.id.clone(), Entry::Live(Arc::new(memory)))
        {
            // The version replaced (a memory linked after its write, a memory stored again).
            self.bytes = self.bytes.saturating_sub(memory_bytes(&old));
        }
    }

    /// Puts `memory` with its automatic links still to be made; `key` orders it (the record's
    /// sequence and the memory's place in the record).
    pub fn put_pending(&mut self, memory: Memory, key: (u64, u32)) {
        let id = memory.id.clone();
        self.put(memory);
        self.pending.insert(key, id.clone());
        self.pending_at.insert(id, key);
    }

    pub fn tombstone(&mut self, id: MemoryId) {
        self.bytes += 64 + id.as_str().len();
        self.forget_terms(&id);
        self.unpend(&id);
        self.entries.insert(id, Entry::Tombstone);
    }

    fn unpend(&mut self, id: &MemoryId) {
        if let Some(key) = self.pending_at.remove(id) {
            self.pending.remove(&key);
        }
    }

    /// The key (record sequence, place in the record) of `id` if it is live here with its
    /// automatic links still to be made.
    pub fn pending_key(&self, id: &MemoryId) -> Option<(u64, u32)> {
        self.pending_at.get(id).copied()
    }

    /// How many live entries wait for their automatic links.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Up to `n` of the entries waiting for their automatic links, oldest first, with their
    /// keys.
    pub fn pending_memories(&self, n: usize) -> Vec<((u64, u32), Arc<Memory>)> {
        self.pending
            .iter()
            .take(n)
            .filter_map(|(key, id)| match self.entries.get(id) {
                Some(Entry::Live(m)) => Some((*key, m.clone())),
                _ => None,
            })
            .collect()
    }

    /// Drops the cached terms of `id` (replaced or deleted). Free when nothing was searched:
    /// the write path does not pay for the lexical index.
    fn forget_terms(&mut self, id: &MemoryId) {
        let lex = self.lex.get_mut();
        if !lex.is_empty() {
            lex.remove(id);
        }
    }

    /// The lexical terms of the live entry `m` (held here under its id), analysed once.
    pub fn doc_terms(&self, m: &Memory) -> Arc<DocTerms> {
        if let Some(d) = self.lex.lock().get(&m.id) {
            return d.clone();
        }
        let d = Arc::new(DocTerms::of(&m.content));
        self.lex.lock().insert(m.id.clone(), d.clone());
        d
    }
}

/// Approximate heap bytes of a memory.
pub fn memory_bytes(m: &Memory) -> usize {
    128 + m.id.as_str().len()
        + m.content.len()
        + m.embedding.len() * 4
        + m.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>()
        + m.links
            .iter()
            .map(|l| l.to.as_str().len() + 32)
            .sum::<usize>()
}
