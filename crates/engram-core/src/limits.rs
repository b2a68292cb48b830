//! Limits on every size that reaches the storage engine. Relations between them are checked at
//! compile time.

/// Longest space id, in bytes.
pub const MAX_SPACE_ID_LEN: usize = 64;
/// Longest memory id, in bytes.
pub const MAX_MEMORY_ID_LEN: usize = 128;
/// Largest memory content, in bytes (100 KiB).
pub const MAX_CONTENT_LEN: usize = 100 * 1024;
/// Largest embedding dimension.
pub const MAX_DIMENSION: usize = 4096;
/// Default embedding dimension of a space.
pub const DEFAULT_DIMENSION: usize = 768;
/// Most metadata entries on one memory.
pub const MAX_METADATA_ENTRIES: usize = 256;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_FIELD_LEN: usize = 4096;
/// Most links out of one memory.
pub const MAX_LINKS: usize = 1024;
/// Most memories in one batch.
pub const MAX_BATCH: usize = 1000;

/// The batch limit, checked once where a request enters: the HTTP route and the engine's
/// public batch API. `Err` says why a batch of `len` memories is refused; the inner layers
/// only assert it (the WAL decoder refuses a larger batch as corruption).
pub fn check_batch_len(len: usize) -> Result<(), String> {
    if len > MAX_BATCH {
        return Err(format!(
            "a batch of {len} memories exceeds the limit of {MAX_BATCH}"
        ));
    }
    Ok(())
}

const _: () = assert!(DEFAULT_DIMENSION <= MAX_DIMENSION);
const _: () = assert!(MAX_SPACE_ID_LEN <= u8::MAX as usize);
const _: () = assert!(MAX_MEMORY_ID_LEN <= u16::MAX as usize);
const _: () = assert!(MAX_METADATA_FIELD_LEN <= u16::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_limit() {
        assert_eq!(check_batch_len(0), Ok(()));
        assert_eq!(check_batch_len(MAX_BATCH), Ok(()));
        assert_eq!(
            check_batch_len(MAX_BATCH + 1),
            Err("a batch of 1001 memories exceeds the limit of 1000".into())
        );
    }
}
