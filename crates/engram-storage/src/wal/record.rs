//! One WAL record: a 32-byte header, the space id, the payload.
//!
//! ```text
//! offset size field
//!  0     4    magic "EWR1"
//!  4     4    crc32c of bytes 8..end of record (header tail, space id, payload)
//!  8     4    payload length (u32)
//! 12     1    space id length (1..=64)
//! 13     1    operation code
//! 14     2    reserved, 0
//! 16     8    sequence (u64)
//! 24     8    timestamp, microseconds since the Unix epoch (i64)
//! 32     s    space id (ASCII)
//! 32+s   p    payload
//! ```

use engram_core::SpaceId;

use crate::codec::Reader;
use crate::error::{corrupted, Result};
use crate::op::code;
use crate::op::Op;

pub const RECORD_MAGIC: [u8; 4] = *b"EWR1";
pub const RECORD_HEADER_LEN: usize = 32;
// The header is the fields of the layout above, and a space id's length fits its one byte.
const _: () = assert!(RECORD_HEADER_LEN == 4 + 4 + 4 + 1 + 1 + 2 + 8 + 8);
const _: () = assert!(engram_core::limits::MAX_SPACE_ID_LEN <= u8::MAX as usize);

/// The fixed fields of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub sequence: u64,
    pub timestamp_us: i64,
    pub op: u8,
}

/// Appends one record to `out`; `payload` is the operation's encoded payload.
pub fn encode_record(
    out: &mut Vec<u8>,
    sequence: u64,
    timestamp_us: i64,
    space: &SpaceId,
    op: u8,
    payload: &[u8],
) {
    let space = space.as_str().as_bytes();
    assert!(!space.is_empty() && space.len() <= engram_core::limits::MAX_SPACE_ID_LEN);
    assert!(payload.len() <= u32::MAX as usize);
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + space.len() + payload.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(space.len() as u8);
    out.push(op);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&timestamp_us.to_le_bytes());
    out.extend_from_slice(space);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Whether `op` is a raft record's code: its group may be the metadata group.
fn is_raft(op: u8) -> bool {
    matches!(op, code::RAFT_ENTRY | code::RAFT_META | code::RAFT_TRUNCATE)
}

/// A record read back from bytes: borrowed, verified.
#[derive(Debug, Clone)]
pub struct DecodedRecord<'a> {
    pub header: RecordHeader,
    pub space: &'a str,
    pub payload: &'a [u8],
    /// Total bytes the record occupies.
    pub len: usize,
}

impl DecodedRecord<'_> {
    /// The record's space; a raft record's group may be the metadata group
    /// ([`SpaceId::metadata_group`]).
    pub fn space_id(&self) -> Result<SpaceId> {
        let id = if is_raft(self.header.op) {
            SpaceId::group(self.space)
        } else {
            SpaceId::new(self.space)
        };
        match id {
            Ok(s) => Ok(s),
            Err(e) => corrupted(e.to_string()),
        }
    }

    pub fn op(&self) -> Result<Op> {
        if self.header.op == code::META {
            return corrupted("a metadata command outside a log entry");
        }
        Op::decode_payload(self.header.op, self.payload)
    }
}

/// Decodes and verifies the record at the start of `bytes`. `max_len` bounds the record size,
/// so a corrupt length field cannot make the reader look past the limit.
pub fn decode_record(bytes: &[u8], max_len: usize) -> Result<DecodedRecord<'_>> {
    let mut r = Reader::new(bytes);
    let magic = r.take(4, "record magic")?;
    if magic != RECORD_MAGIC {
        return corrupted("bad record magic");
    }
    let crc = r.u32("record crc")?;
    let payload_len = r.u32("payload length")? as usize;
    let space_len = r.u8("space length")? as usize;
    let op = r.u8("operation")?;
    let reserved = r.u16("reserved")?;
    let sequence = r.u64("sequence")?;
    let timestamp_us = r.i64("timestamp")?;
    if space_len == 0 || space_len > engram_core::limits::MAX_SPACE_ID_LEN {
        return corrupted(format!("space id length {space_len}"));
    }
    if reserved != 0 {
        return corrupted("reserved header bytes are not zero");
    }
    let len = RECORD_HEADER_LEN + space_len + payload_len;
    if len > max_len {
        return corrupted(format!("record length {len} exceeds the limit {max_len}"));
    }
    if bytes.len() < len {
        return corrupted(format!(
            "record of {len} bytes, only {} present",
            bytes.len()
        ));
    }
    let actual = crc32c::crc32c(&bytes[8..len]);
    if actual != crc {
        return corrupted(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        ));
    }
    let space = match std::str::from_utf8(&bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + space_len])
    {
        Ok(s) if SpaceId::is_valid(s) || (is_raft(op) && s == SpaceId::METADATA_GROUP) => s,
        _ => return corrupted("space id is not valid"),
    };
    Ok(DecodedRecord {
        header: RecordHeader {
            sequence,
            timestamp_us,
            op,
        },
        space,
        payload: &bytes[RECORD_HEADER_LEN + space_len..len],
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(seq in any::<u64>(), ts in any::<i64>(), space in "[a-z0-9_-]{1,64}",
                      op in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..500)) {
            let space = SpaceId::new(space).unwrap();
            let mut buf = vec![9u8; 3];
            encode_record(&mut buf, seq, ts, &space, op, &payload);
            let rec = decode_record(&buf[3..], 1 << 20).unwrap();
            prop_assert_eq!(rec.header, RecordHeader { sequence: seq, timestamp_us: ts, op });
            prop_assert_eq!(rec.space, space.as_str());
            prop_assert_eq!(rec.payload, &payload[..]);
            prop_assert_eq!(rec.len, buf.len() - 3);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..200), bit in any::<usize>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, 7, 1, &SpaceId::new("s").unwrap(), 1, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_record(&buf, 1 << 20).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes, 1 << 20);
        }
    }

    #[test]
    fn oversized_length_is_refused_without_reading_past_limit() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 1, &SpaceId::new("s").unwrap(), 1, &[0; 100]);
        assert!(decode_record(&buf, 64).is_err());
        assert!(decode_record(&buf[..buf.len() - 1], 1 << 20).is_err());
    }

    #[test]
    fn only_raft_records_name_the_metadata_group_and_its_command_never_stands_alone() {
        let meta = SpaceId::metadata_group();
        for op in [code::RAFT_ENTRY, code::RAFT_META, code::RAFT_TRUNCATE] {
            let mut buf = Vec::new();
            encode_record(&mut buf, 1, 1, &meta, op, &[]);
            let rec = decode_record(&buf, 1 << 20).unwrap();
            assert!(rec.space_id().unwrap().is_metadata_group());
        }
        for op in [code::REMEMBER, code::SPACE_CREATE, code::META] {
            let mut buf = Vec::new();
            encode_record(&mut buf, 1, 1, &meta, op, &[]);
            assert!(decode_record(&buf, 1 << 20).is_err(), "op {op}");
        }
        // Operation 14 in a space's record: the record reads, its operation is corrupt.
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            1,
            1,
            &SpaceId::new("s").unwrap(),
            code::META,
            b"x",
        );
        let rec = decode_record(&buf, 1 << 20).unwrap();
        assert!(rec.op().is_err());
    }
}
