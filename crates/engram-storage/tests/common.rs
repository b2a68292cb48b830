//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use engram_core::{Memory, MemoryId, SpaceId};
use engram_storage::StoreOptions;

pub fn sid(s: &str) -> SpaceId {
    SpaceId::new(s).unwrap()
}

pub fn mid(s: &str) -> MemoryId {
    MemoryId::new(s).unwrap()
}

/// A memory whose content and embedding are derived from its id, so a reader can check it is
/// intact.
pub fn memory(id: &str, dim: usize) -> Memory {
    Memory {
        id: mid(id),
        content: expected_content(id),
        embedding: expected_embedding(id, dim),
        confidence: 0.7,
        timestamp_us: 1_700_000_000_000_000,
        metadata: [("source".to_string(), "test".to_string())].into(),
        links: vec![],
    }
}

pub fn expected_content(id: &str) -> String {
    format!("memory {id}: the quick brown fox jumps over the lazy dog")
}

pub fn expected_embedding(id: &str, dim: usize) -> Vec<f32> {
    let seed = id
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..dim)
        .map(|i| ((seed.wrapping_add((i as u32).wrapping_mul(2654435761)) % 1000) as f32) / 1000.0)
        .collect()
}

pub fn assert_intact(m: &Memory, dim: usize) {
    assert_eq!(
        m.content,
        expected_content(m.id.as_str()),
        "content of {}",
        m.id
    );
    assert_eq!(
        m.embedding,
        expected_embedding(m.id.as_str(), dim),
        "embedding of {}",
        m.id
    );
}

/// Options for tests: no background thread, small files so rolls and checkpoints happen.
pub fn test_options() -> StoreOptions {
    StoreOptions {
        wal_segment_bytes: 64 << 10,
        max_record_bytes: 32 << 10,
        background_compaction: false,
        ..Default::default()
    }
}

/// Waits (on the machine's time, at most 30 s) until `done`: for a background thread to run,
/// never for time to pass (tests advance a [`engram_storage::ManualClock`] for that).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls a future to completion on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::from(std::sync::Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
