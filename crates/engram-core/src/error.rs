use thiserror::Error;

/// Why a value was refused. Messages say what was wrong and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    #[error("invalid space id {0:?}: expected 1-64 characters of a-z, 0-9, '_' or '-'")]
    InvalidSpaceId(String),
    #[error("invalid memory id {0:?}: expected 1-128 characters with no '/', whitespace or control characters")]
    InvalidMemoryId(String),
    #[error("invalid memory: {0}")]
    InvalidMemory(String),
    #[error("invalid embedder: {0}")]
    InvalidEmbedder(String),
    #[error("invalid recall: {0}")]
    InvalidCue(String),
    /// A model-backed embedder failed to embed text.
    #[error("text embedding failed: {0}")]
    Embedding(String),
}
