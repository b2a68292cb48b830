use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of the storage engine.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Bytes that came from disk do not decode. Never a panic.
    #[error("corrupted data: {0}")]
    Corrupted(String),
    /// A value the caller handed in breaks a limit.
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("record of {size} bytes exceeds the WAL record limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    /// A write or fsync failed earlier: the WAL refuses writes until the node reopens it.
    #[error(
        "the WAL is read-only after a failed write or fsync ({0}); reopen the store to recover"
    )]
    Latched(String),
    #[error("memory space {0:?} does not exist")]
    SpaceNotFound(String),
    #[error("memory {0:?} does not exist in this space")]
    MemoryNotFound(String),
    #[error("memory space {0:?} already exists")]
    SpaceExists(String),
    /// A file written by a newer (or unknown) format version: refused, never treated as
    /// corruption.
    #[error("unsupported format version: {0}")]
    UnsupportedVersion(String),
    #[error("the store is shut down")]
    Closed,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Adds the path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn corrupted<T>(msg: impl Into<String>) -> Result<T> {
    Err(StorageError::Corrupted(msg.into()))
}
