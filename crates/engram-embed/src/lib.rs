//! Engram's neural text embedder: a BERT-family sentence-transformer (for example
//! all-MiniLM-L6-v2, 384 dimensions) loaded from a local directory and run in-process on the
//! CPU with `candle` and `tokenizers`. Nothing is downloaded: the directory holds
//! `config.json`, `model.safetensors` and `tokenizer.json` (and, as sentence-transformers
//! writes them, `sentence_bert_config.json` and `1_Pooling/config.json`, which are read when
//! present).
//!
//! An embedding is computed as sentence-transformers computes it: the text is tokenized
//! (truncated to the model's `max_seq_length`, 256 for all-MiniLM-L6-v2), run through the
//! encoder, the last hidden states are averaged over the attention mask (mean pooling), and the
//! result is L2-normalised. `tests/data/all-MiniLM-L6-v2.json` holds reference embeddings
//! from the original model, matched in the tests with cosine >= 0.999.
//!
//! [`EmbedQueue`] batches concurrent requests: one worker thread takes whatever is queued (up
//! to a batch) and embeds it in one forward pass.

//! The model needs the `neural` feature (on by default); without it the crate is the queue
//! alone, for builds that never load a model (the fuzz targets).

#[cfg(feature = "neural")]
mod model;
mod queue;

#[cfg(feature = "neural")]
pub use model::{workspace_test_model, ModelError, NeuralEmbedder, MAX_BATCH};
pub use queue::EmbedQueue;
