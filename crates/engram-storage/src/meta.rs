//! `space.meta`: a space's fixed facts, written atomically into its directory at its first
//! flush.
//!
//! ```text
//!  0 8 magic "ENGRSPC\0"   8 4 version (1)   12 4 dimension
//! 16 8 created_at_us (i64) 24 8 created_seq  32 4 crc32c of bytes 0..32
//! ```

use crate::codec::Reader;
use crate::error::{corrupted, Result, StorageError};

pub const SPACE_META_FILE: &str = "space.meta";
const MAGIC: [u8; 8] = *b"ENGRSPC\0";
const VERSION: u32 = 1;
const LEN: usize = 36;

/// A space's fixed facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceMeta {
    pub dimension: u32,
    pub created_at_us: i64,
    /// Sequence of the record that created the space.
    pub created_seq: u64,
}

impl SpaceMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.dimension.to_le_bytes());
        b.extend_from_slice(&self.created_at_us.to_le_bytes());
        b.extend_from_slice(&self.created_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != LEN {
            return corrupted(format!(
                "space.meta has {} bytes, expected {LEN}",
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
        let crc = r.u32("crc")?;
        if crc != crc32c::crc32c(&bytes[..32]) {
            return corrupted("space.meta: checksum mismatch");
        }
        if version != VERSION {
            return Err(StorageError::UnsupportedVersion(format!(
                "space.meta version {version} is not supported (this build reads {VERSION})"
            )));
        }
        if dimension == 0 || dimension as usize > engram_core::limits::MAX_DIMENSION {
            return corrupted(format!("space.meta: dimension {dimension}"));
        }
        Ok(Self {
            dimension,
            created_at_us,
            created_seq,
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
        };
        assert_eq!(SpaceMeta::decode(&m.encode()).unwrap(), m);
        let mut b = m.encode();
        b[13] ^= 1;
        assert!(SpaceMeta::decode(&b).is_err());
        assert!(SpaceMeta::decode(&b[..3]).is_err());
    }
}
