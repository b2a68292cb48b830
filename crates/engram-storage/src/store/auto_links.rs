//! The store's automatic-link API: writes whose links are made after the acknowledgement,
//! and the linker that makes them (the machinery is `crate::autolink`).

use std::sync::Arc;

use engram_core::{Memory, SpaceId};

use super::Store;
use crate::error::{Result, StorageError};
use crate::op::Op;
use crate::wal::commit::Commit;

impl Store {
    /// Stores memories all or nothing (one WAL record), each marked whether its automatic
    /// links are still to be made: the [`AutoLinker`](crate::AutoLinker) set with
    /// [`Store::set_auto_linker`] makes them after this returns (see `autolink.rs`). Durable
    /// when the returned future resolves.
    pub fn remember_auto_link_async(
        &self,
        space: &SpaceId,
        memories: Vec<(Memory, bool)>,
    ) -> Result<Commit> {
        self.remember_auto_link_keyed_async(space, memories, None)
    }

    /// [`Store::remember_auto_link_async`], durable when this returns.
    pub fn remember_auto_link(
        &self,
        space: &SpaceId,
        memories: Vec<(Memory, bool)>,
    ) -> Result<u64> {
        self.check_auto_link(space, &memories)?;
        self.inner.wal.submit(space, Op::RememberAutoLink(memories))
    }

    pub(super) fn check_auto_link(
        &self,
        space: &SpaceId,
        memories: &[(Memory, bool)],
    ) -> Result<()> {
        let dim = self.inner.catalog.require(space)?.meta.dimension as usize;
        if memories.len() > engram_core::limits::MAX_BATCH {
            return Err(StorageError::Invalid(format!(
                "a batch of {} memories (at most {})",
                memories.len(),
                engram_core::limits::MAX_BATCH
            )));
        }
        for (m, _) in memories {
            m.validate(dim)
                .map_err(|e| StorageError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Sets what makes the automatic links of memories stored with links pending, and starts
    /// the linker thread (idle class), which first links what recovery brought back pending.
    /// Once per store; a second call is refused.
    pub fn set_auto_linker(&self, linker: Arc<dyn crate::AutoLinker>) -> Result<()> {
        {
            let mut slot = self.inner.auto_linker.write();
            if slot.is_some() {
                return Err(StorageError::Invalid(
                    "the auto-linker is already set".into(),
                ));
            }
            *slot = Some(linker.clone());
        }
        if !self.inner.opts.background_compaction {
            // No background threads: flushes (and `link_pending`) make the links.
            return Ok(());
        }
        self.spawn_linker(linker)
    }

    /// Starts the linker thread (idle class).
    pub(super) fn spawn_linker(&self, linker: Arc<dyn crate::AutoLinker>) -> Result<()> {
        let node = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name("engram-linker".into())
            .spawn(move || {
                if !(node.opts.indexer_idle_class
                    && crate::process::set_current_thread_idle_class())
                {
                    crate::process::set_current_thread_nice(node.opts.indexer_nice);
                }
                crate::process::abort_on_panic("engram-linker", || node.linker_loop(linker))
            })
            .map_err(|e| StorageError::Io {
                path: self.inner.root.clone(),
                source: e,
            })?;
        *self.linker.lock() = Some(handle);
        Ok(())
    }

    /// Makes the automatic links still pending in `space`'s active memtable now, on this
    /// thread (what the linker thread does in the background). Returns how many memories
    /// were linked; a memtable frozen meanwhile is linked by its flush.
    pub fn link_pending(&self, space: &SpaceId) -> Result<usize> {
        let Some(linker) = self.inner.auto_linker.read().clone() else {
            return Ok(0);
        };
        let s = self.inner.catalog.require(space)?;
        let mut total = 0;
        loop {
            match self.inner.link_round(&s, &*linker)? {
                Some(0) => return Ok(total),
                Some(n) => total += n,
                // Not possible now (an index being built): wait a little.
                None => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Memories of `space` whose automatic links are still to be made.
    pub fn pending_links(&self, space: &SpaceId) -> Result<usize> {
        let s = self.inner.catalog.require(space)?;
        let st = s.state.read();
        Ok(st.active.pending_count() + st.frozen.as_ref().map_or(0, |f| f.pending_count()))
    }
}
