use engram_core::CoreError;
use engram_storage::StorageError;
use thiserror::Error;

/// Errors of the engine, sorted by what the caller can do about them.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The request is wrong: a bad value, a limit passed, an id that does not exist where one
    /// is required. The message says what is expected.
    #[error("{0}")]
    Invalid(String),
    #[error("memory space {0:?} does not exist")]
    SpaceNotFound(String),
    #[error("memory {0:?} does not exist in this space")]
    MemoryNotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Writes are refused for now (a failed fsync latched the WAL, or the node is shutting
    /// down); reads may still work.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else from storage (I/O, corruption): an internal error.
    #[error(transparent)]
    Storage(StorageError),
    /// The text embedder failed (a model-backed one): an internal error.
    #[error("text embedding failed: {0}")]
    Embedding(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<CoreError> for EngineError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Embedding(m) => EngineError::Embedding(m),
            e => EngineError::Invalid(e.to_string()),
        }
    }
}

impl From<StorageError> for EngineError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Invalid(m) => EngineError::Invalid(m),
            e @ StorageError::RecordTooLarge { .. } => EngineError::Invalid(e.to_string()),
            StorageError::SpaceNotFound(s) => EngineError::SpaceNotFound(s),
            StorageError::MemoryNotFound(m) => EngineError::MemoryNotFound(m),
            e @ StorageError::SpaceExists(_) => EngineError::Conflict(e.to_string()),
            e @ (StorageError::Latched(_) | StorageError::Closed) => {
                EngineError::Unavailable(e.to_string())
            }
            e => EngineError::Storage(e),
        }
    }
}
