//! Batches concurrent embedding requests: callers queue texts; one worker thread takes what is
//! queued (up to a batch) and embeds it in one call, so that concurrent requests share forward
//! passes instead of each running its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use engram_core::embed::Embedder;
use engram_core::CoreError;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Vec<f32>, CoreError>>;

struct Job {
    text: String,
    reply: Reply,
}

struct State {
    jobs: VecDeque<Job>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// A queue in front of an [`Embedder`], with its worker thread (stopped when dropped, after
/// the queued texts are embedded).
pub struct EmbedQueue {
    embedder: Arc<dyn Embedder>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl EmbedQueue {
    /// Starts the worker; it embeds up to `max_batch` texts at a time.
    pub fn start(embedder: Arc<dyn Embedder>, max_batch: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                stopping: false,
            }),
            cv: Condvar::new(),
        });
        let worker = {
            let (shared, embedder) = (shared.clone(), embedder.clone());
            let max_batch = max_batch.max(1);
            std::thread::Builder::new()
                .name("engram-embed".into())
                .spawn(move || work(&shared, &*embedder, max_batch))?
        };
        Ok(Self {
            embedder,
            shared,
            worker: Some(worker),
        })
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// Embeddings of `texts`, in order, computed in the worker's batches.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, CoreError> {
        let waits = self.submit(texts);
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(w.await.map_err(|_| stopped())??);
        }
        Ok(out)
    }

    /// [`EmbedQueue::embed`] for threads that may block (never on an async runtime's worker).
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, CoreError> {
        self.submit(texts)
            .into_iter()
            .map(|w| w.blocking_recv().map_err(|_| stopped())?)
            .collect()
    }

    fn submit(&self, texts: Vec<String>) -> Vec<oneshot::Receiver<Result<Vec<f32>, CoreError>>> {
        let mut waits = Vec::with_capacity(texts.len());
        let mut st = self.shared.state.lock();
        for text in texts {
            let (reply, wait) = oneshot::channel();
            if st.stopping {
                let _ = reply.send(Err(stopped()));
            } else {
                st.jobs.push_back(Job { text, reply });
            }
            waits.push(wait);
        }
        drop(st);
        self.shared.cv.notify_one();
        waits
    }
}

fn stopped() -> CoreError {
    CoreError::Embedding("the embedder is shutting down".into())
}

fn work(shared: &Shared, embedder: &dyn Embedder, max_batch: usize) {
    loop {
        let batch: Vec<Job> = {
            let mut st = shared.state.lock();
            while st.jobs.is_empty() && !st.stopping {
                shared.cv.wait(&mut st);
            }
            if st.jobs.is_empty() {
                return;
            }
            let n = st.jobs.len().min(max_batch);
            st.jobs.drain(..n).collect()
        };
        // A caller that went away (its request dropped) needs no embedding.
        let live: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if live.is_empty() {
            continue;
        }
        let texts: Vec<&str> = live.iter().map(|j| j.text.as_str()).collect();
        // A panic in the model (candle, tokenizers) fails this batch, not the worker: later
        // requests must still be answered.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            embedder.embed_batch(&texts)
        }))
        .unwrap_or_else(|_| {
            Err(CoreError::Embedding(
                "the embedder panicked on this batch".into(),
            ))
        });
        match result {
            Ok(vectors) if vectors.len() != live.len() => {
                let e = CoreError::Embedding(format!(
                    "the embedder returned {} vectors for {} texts",
                    vectors.len(),
                    live.len()
                ));
                for job in live {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
            Ok(vectors) => {
                for (job, v) in live.into_iter().zip(vectors) {
                    let _ = job.reply.send(Ok(v));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, texts = texts.len(), "text embedding failed");
                for job in live {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Drop for EmbedQueue {
    fn drop(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.cv.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::embed::HashingEmbedder;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts calls, to see batching.
    struct Counting {
        inner: HashingEmbedder,
        calls: AtomicUsize,
        largest: AtomicUsize,
    }

    impl Embedder for Counting {
        fn dimension(&self) -> usize {
            self.inner.dimension()
        }
        fn name(&self) -> &str {
            "counting"
        }
        fn embed(&self, text: &str) -> Result<Vec<f32>, CoreError> {
            Ok(self.inner.embed(text))
        }
        fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(texts.len(), Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(texts.iter().map(|t| self.inner.embed(t)).collect())
        }
    }

    #[test]
    fn results_in_order_and_batched() {
        let e = Arc::new(Counting {
            inner: HashingEmbedder::new(16).unwrap(),
            calls: AtomicUsize::new(0),
            largest: AtomicUsize::new(0),
        });
        let q = Arc::new(EmbedQueue::start(e.clone(), 8).unwrap());
        let texts: Vec<String> = (0..20).map(|i| format!("text number {i}")).collect();
        let got = q.embed_blocking(texts.clone()).unwrap();
        for (t, v) in texts.iter().zip(&got) {
            assert_eq!(v, &e.inner.embed(t));
        }
        // 20 texts queued at once, 8 a batch: 3 calls, none larger than 8.
        assert_eq!(e.calls.load(Ordering::SeqCst), 3);
        assert_eq!(e.largest.load(Ordering::SeqCst), 8);

        // Concurrent callers share batches.
        e.calls.store(0, Ordering::SeqCst);
        std::thread::scope(|s| {
            for k in 0..8 {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..4 {
                        let t = format!("caller {k} text {i}");
                        let v = q.embed_blocking(vec![t.clone()]).unwrap();
                        assert_eq!(v[0], HashingEmbedder::new(16).unwrap().embed(&t));
                    }
                });
            }
        });
        assert!(
            e.calls.load(Ordering::SeqCst) < 32,
            "32 single-text requests from 8 threads took {} calls",
            e.calls.load(Ordering::SeqCst)
        );
    }

    /// Panics on a text containing "boom".
    struct Fragile;

    impl Embedder for Fragile {
        fn dimension(&self) -> usize {
            4
        }
        fn name(&self) -> &str {
            "fragile"
        }
        fn embed(&self, text: &str) -> Result<Vec<f32>, CoreError> {
            assert!(!text.contains("boom"), "boom");
            Ok(vec![0.5; 4])
        }
    }

    #[test]
    fn a_panicking_embedder_fails_its_batch_and_the_queue_goes_on() {
        let q = EmbedQueue::start(Arc::new(Fragile), 4).unwrap();
        let e = q.embed_blocking(vec!["boom".into()]).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(
            q.embed_blocking(vec!["fine".into()]).unwrap(),
            vec![vec![0.5; 4]]
        );
    }

    #[test]
    fn async_callers_and_shutdown() {
        let e: Arc<dyn Embedder> = Arc::new(HashingEmbedder::new(8).unwrap());
        let q = EmbedQueue::start(e, 4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let v = rt.block_on(q.embed(vec!["a".into(), "b".into()])).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], HashingEmbedder::new(8).unwrap().embed("a"));
        drop(q);
    }
}
