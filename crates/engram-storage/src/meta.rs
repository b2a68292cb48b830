//! `space.meta`: a space's fixed facts, written atomically into its directory at its first
//! flush.
//!
//! ```text
//!  0 8 magic "ENGRSPC\0"   8 4 version (1)   12 4 dimension
//! 16 8 created_at_us (i64) 24 8 created_seq  32 4 crc32c of bytes 0..32
//! ```
//!
//! Version 2, for a space with a named text embedder (version 1 means the built-in hashing
//! embedder, and is still what such spaces get):
//!
//! ```text
//!  0 8 magic   8 4 version (2)   12 4 dimension   16 8 created_at_us   24 8 created_seq
//! 32 2 n (embedder name length)  34 n embedder name (UTF-8)  34+n 4 crc32c of bytes 0..34+n
//! ```
//!
//! Version 3, for a replicated space (a raft group's state machine; its sequences are raft log
//! indexes, see `docs/format.md`):
//!
//! ```text
//!  0 8 magic   8 4 version (3)   12 4 dimension   16 8 created_at_us   24 8 created_seq
//! 32 4 flags (bit 0: replicated; others 0)   36 2 n   38 n embedder name (may be empty)
//! 38+n 4 crc32c of bytes 0..38+n
//! ```

use crate::codec::Reader;
use crate::error::{corrupted, Result, StorageError};

pub const SPACE_META_FILE: &str = "space.meta";
const MAGIC: [u8; 8] = *b"ENGRSPC\0";
const VERSION: u32 = 1;
const VERSION_NAMED: u32 = 2;
const VERSION_FLAGS: u32 = 3;
const FLAG_REPLICATED: u32 = 1;
const LEN: usize = 36;
/// The longest embedder name stored.
pub const MAX_EMBEDDER_NAME: usize = 256;

/// A space's fixed facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceMeta {
    pub dimension: u32,
    pub created_at_us: i64,
    /// Sequence of the record that created the space.
    pub created_seq: u64,
    /// The space's text embedder (empty: the built-in hashing embedder).
    pub embedder: String,
    /// The space is a raft group's state machine: its memtables and segments are sequenced by
    /// raft log index, not by WAL sequence, and it changes only through its group.
    pub replicated: bool,
}

impl SpaceMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN + 2 + self.embedder.len());
        b.extend_from_slice(&MAGIC);
        let version = if self.replicated {
            VERSION_FLAGS
        } else if self.embedder.is_empty() {
            VERSION
        } else {
            VERSION_NAMED
        };
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&self.dimension.to_le_bytes());
        b.extend_from_slice(&self.created_at_us.to_le_bytes());
        b.extend_from_slice(&self.created_seq.to_le_bytes());
        if self.replicated {
            b.extend_from_slice(&FLAG_REPLICATED.to_le_bytes());
        }
        if self.replicated || !self.embedder.is_empty() {
            b.extend_from_slice(&(self.embedder.len() as u16).to_le_bytes());
            b.extend_from_slice(self.embedder.as_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < LEN {
            return corrupted(format!(
                "space.meta has {} bytes, expected at least {LEN}",
                bytes.len()
            ));
        }
        let mut r = Reader::new(bytes);
        if r.take(8, "magic")? != MAGIC {
            return corrupted("space.meta: bad magic");
        }
        let version = r.u32("version")?;
        let dimension = r.u32("dimension")?;
        let created_at_us = r.i64("created_at")?;
        let created_seq = r.u64("created_seq")?;
        let mut replicated = false;
        let embedder = match version {
            VERSION => String::new(),
            VERSION_FLAGS => {
                let flags = r.u32("flags")?;
                if flags & !FLAG_REPLICATED != 0 {
                    return corrupted(format!("space.meta: unknown flags {flags:#x}"));
                }
                replicated = flags & FLAG_REPLICATED != 0;
                let n = r.u16("embedder length")? as usize;
                if n > MAX_EMBEDDER_NAME {
                    return corrupted(format!("space.meta: embedder name of {n} bytes"));
                }
                r.utf8(n, "embedder name")?.to_string()
            }
            VERSION_NAMED => {
                let n = r.u16("embedder length")? as usize;
                if n == 0 || n > MAX_EMBEDDER_NAME {
                    return corrupted(format!("space.meta: embedder name of {n} bytes"));
                }
                r.utf8(n, "embedder name")?.to_string()
            }
            _ => {
                return Err(StorageError::UnsupportedVersion(format!(
                    "space.meta version {version} is not supported (this build reads {VERSION} to {VERSION_FLAGS})"
                )))
            }
        };
        let body = bytes.len() - r.remaining();
        let crc = r.u32("crc")?;
        r.finish("space.meta")?;
        if crc != crc32c::crc32c(&bytes[..body]) {
            return corrupted("space.meta: checksum mismatch");
        }
        if dimension == 0 || dimension as usize > engram_core::limits::MAX_DIMENSION {
            return corrupted(format!("space.meta: dimension {dimension}"));
        }
        Ok(Self {
            dimension,
            created_at_us,
            created_seq,
            embedder,
            replicated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let m = SpaceMeta {
            dimension: 768,
            created_at_us: 5,
            created_seq: 9,
            embedder: String::new(),
            replicated: false,
        };
        assert_eq!(m.encode().len(), LEN);
        assert_eq!(SpaceMeta::decode(&m.encode()).unwrap(), m);
        let named = SpaceMeta {
            embedder: "bert-mean-384:0123abcd".into(),
            ..m.clone()
        };
        assert_eq!(SpaceMeta::decode(&named.encode()).unwrap(), named);
        for i in 0..named.encode().len() {
            let mut b = named.encode();
            b[i] ^= 1;
            assert!(SpaceMeta::decode(&b).is_err(), "flipped byte {i}");
        }
        assert!(SpaceMeta::decode(&named.encode()[..40]).is_err());
        // Version 3: replicated, with or without an embedder name.
        for embedder in ["", "bert-mean-384:0123abcd"] {
            let r = SpaceMeta {
                replicated: true,
                embedder: embedder.into(),
                ..m.clone()
            };
            let bytes = r.encode();
            assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
            assert_eq!(SpaceMeta::decode(&bytes).unwrap(), r);
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 1;
                assert!(SpaceMeta::decode(&b).is_err(), "flipped byte {i}");
            }
        }
        let mut b = m.encode();
        b[13] ^= 1;
        assert!(SpaceMeta::decode(&b).is_err());
        assert!(SpaceMeta::decode(&b[..3]).is_err());
    }
}
