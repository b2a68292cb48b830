//! A WAL segment file: a 32-byte header, then records back to back.
//!
//! ```text
//! offset size field
//!  0     8    magic "ENGRWAL\0"
//!  8     4    format version (1 to 4)
//! 12     4    reserved, 0
//! 16     8    sequence of the first record this file may hold
//! 24     4    reserved, 0
//! 28     4    crc32c of bytes 0..28
//! ```
//! File name: the first sequence as 20 decimal digits, `.wal`.

use crate::codec::Reader;
use crate::error::{corrupted, Result, StorageError};

pub const WAL_FILE_MAGIC: [u8; 8] = *b"ENGRWAL\0";
/// The version this build writes: 6 adds a raft group's creation to its state record (code
/// 11, flag bit 3) to version 5, which added the metadata group's command (code 14, inside a
/// log entry only) to version 4, which added the keyed write (code 13) to version 3, which added
/// the raft records (codes 10 to 12) to version 2, which added the automatic-link operations
/// (codes 8 and 9) to version 1; it reads all six.
pub const WAL_FORMAT_VERSION: u32 = 6;
/// The oldest version this build reads.
pub const WAL_FORMAT_VERSION_MIN: u32 = 1;
pub const WAL_FILE_HEADER_LEN: usize = 32;

/// The header of a WAL segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalFileHeader {
    pub first_sequence: u64,
}

impl WalFileHeader {
    pub fn encode(&self) -> [u8; WAL_FILE_HEADER_LEN] {
        self.encode_version(WAL_FORMAT_VERSION)
    }

    /// The header as format `version` writes it (the fixtures of older versions).
    pub fn encode_version(&self, version: u32) -> [u8; WAL_FILE_HEADER_LEN] {
        let mut b = [0u8; WAL_FILE_HEADER_LEN];
        b[0..8].copy_from_slice(&WAL_FILE_MAGIC);
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_sequence.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let head = r.take(WAL_FILE_HEADER_LEN, "WAL file header")?;
        if head[0..8] != WAL_FILE_MAGIC {
            return corrupted("not a WAL file (bad magic)");
        }
        let stored = u32::from_le_bytes([head[28], head[29], head[30], head[31]]);
        if crc32c::crc32c(&head[0..28]) != stored {
            return corrupted("WAL file header checksum mismatch");
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if !(WAL_FORMAT_VERSION_MIN..=WAL_FORMAT_VERSION).contains(&version) {
            return Err(StorageError::UnsupportedVersion(format!(
                "WAL format version {version} is not supported (this build reads {WAL_FORMAT_VERSION_MIN} to {WAL_FORMAT_VERSION})"
            )));
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&head[16..24]);
        Ok(Self {
            first_sequence: u64::from_le_bytes(s),
        })
    }
}

pub fn wal_file_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.wal")
}

/// The first sequence named by a WAL file name, if it is one.
pub fn parse_wal_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_names() {
        let h = WalFileHeader { first_sequence: 42 };
        assert_eq!(WalFileHeader::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[17] ^= 1;
        assert!(WalFileHeader::decode(&bad).is_err());
        assert!(WalFileHeader::decode(&bad[..10]).is_err());
        // Version 1 (no automatic-link operations) still reads; an unknown one is refused.
        assert_eq!(WalFileHeader::decode(&h.encode_version(1)).unwrap(), h);
        assert!(matches!(
            WalFileHeader::decode(&h.encode_version(WAL_FORMAT_VERSION + 1)),
            Err(StorageError::UnsupportedVersion(_))
        ));
        assert!(WalFileHeader::decode(&h.encode_version(0)).is_err());
        assert_eq!(wal_file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_wal_file_name(&wal_file_name(42)), Some(42));
        assert_eq!(parse_wal_file_name("42.wal"), None);
        assert_eq!(parse_wal_file_name("0000000000000000004x.wal"), None);
    }
}
