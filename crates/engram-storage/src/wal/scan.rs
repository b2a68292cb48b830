//! Reading a WAL segment file back: every valid record, the corrupt regions between them, and a
//! torn tail. Works on untrusted bytes and never panics.

use engram_core::SpaceId;

use super::file::{WalFileHeader, WAL_FILE_HEADER_LEN};
use super::record::{decode_record, RECORD_MAGIC};
use crate::op::Op;

/// A verified, decoded record.
#[derive(Debug, Clone)]
pub struct ScannedRecord {
    pub offset: u64,
    pub len: u64,
    pub sequence: u64,
    pub timestamp_us: i64,
    pub space: SpaceId,
    pub op: Op,
}

/// Bytes that do not form valid records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRegion {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// What a scan of one WAL file found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub header: Option<WalFileHeader>,
    pub records: Vec<ScannedRecord>,
    /// Corrupt regions followed by valid records (or, in a file that is not the last, by the
    /// end of the file): quarantined.
    pub bad: Vec<BadRegion>,
    /// In the last file: the bytes after the last valid record that no valid record follows
    /// (a crash mid-append). Erased (overwritten with zeros) at recovery.
    pub torn_tail: Option<BadRegion>,
    /// Bytes on disk (with any preallocated zeros).
    pub file_len: u64,
    /// Where the valid data ends: after the last valid record (or the header). Writing resumes
    /// here; what follows is preallocated zeros.
    pub valid_end: u64,
    /// The file's header names a format version this build does not read: nothing else was
    /// scanned, and recovery must refuse rather than truncate or quarantine.
    pub unsupported: Option<String>,
}

/// Scans `bytes`, the whole content of one WAL file. `is_last` says whether it is the newest
/// file, where an invalid tail is torn rather than corrupt.
pub fn scan_wal_file(bytes: &[u8], is_last: bool, max_record: usize) -> ScanOutcome {
    let mut out = ScanOutcome {
        file_len: bytes.len() as u64,
        ..Default::default()
    };
    if bytes.len() < WAL_FILE_HEADER_LEN {
        let region = BadRegion {
            offset: 0,
            len: bytes.len() as u64,
            reason: "WAL file shorter than its header".into(),
        };
        if is_last {
            out.torn_tail = Some(region);
        } else {
            out.bad.push(region);
        }
        return out;
    }
    if is_last && is_zero(&bytes[..WAL_FILE_HEADER_LEN]) {
        // The newest file's creation never got its header on disk: nothing in it was written.
        let region = BadRegion {
            offset: 0,
            len: bytes.len() as u64,
            reason: "WAL file without a header (creation cut short)".into(),
        };
        out.torn_tail = Some(region);
        return out;
    }
    match WalFileHeader::decode(bytes) {
        Ok(h) => out.header = Some(h),
        Err(e @ crate::error::StorageError::UnsupportedVersion(_)) => {
            out.unsupported = Some(e.to_string());
            return out;
        }
        Err(e) => out.bad.push(BadRegion {
            offset: 0,
            len: WAL_FILE_HEADER_LEN as u64,
            reason: e.to_string(),
        }),
    }
    let mut pos = WAL_FILE_HEADER_LEN;
    let mut last_seq: Option<u64> = None;
    out.valid_end = pos as u64;
    while pos < bytes.len() {
        match valid_record_at(bytes, pos, last_seq, max_record) {
            Ok(rec) => {
                pos += rec.len as usize;
                out.valid_end = pos as u64;
                last_seq = Some(rec.sequence);
                out.records.push(rec);
            }
            // Preallocated space never written: the clean end of the file.
            Err(_) if is_zero(&bytes[pos..]) => break,
            Err(reason) => {
                // Look for the next valid record after the damage.
                let next = find_next_valid(bytes, pos + 1, last_seq, max_record);
                match next {
                    Some(q) => {
                        out.bad.push(BadRegion {
                            offset: pos as u64,
                            len: (q - pos) as u64,
                            reason,
                        });
                        pos = q;
                    }
                    None => {
                        // Up to the last non-zero byte: zeros after it are preallocation.
                        let end = bytes
                            .iter()
                            .rposition(|&b| b != 0)
                            .map_or(bytes.len(), |i| i + 1)
                            .max(pos);
                        let region = BadRegion {
                            offset: pos as u64,
                            len: (end - pos) as u64,
                            reason,
                        };
                        if is_last {
                            out.torn_tail = Some(region);
                        } else {
                            out.bad.push(region);
                        }
                        pos = bytes.len();
                    }
                }
            }
        }
    }
    out
}

/// Whether every byte is zero (the preallocated, unwritten part of a WAL file).
fn is_zero(bytes: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: any byte pattern is a valid u64; `align_to` keeps the middle slice aligned
        // and in bounds.
        unsafe { bytes.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn valid_record_at(
    bytes: &[u8],
    pos: usize,
    last_seq: Option<u64>,
    max_record: usize,
) -> Result<ScannedRecord, String> {
    let rec = decode_record(&bytes[pos..], max_record).map_err(|e| e.to_string())?;
    if let Some(last) = last_seq {
        if rec.header.sequence <= last {
            return Err(format!(
                "sequence {} does not follow {last}",
                rec.header.sequence
            ));
        }
    }
    let space = rec.space_id().map_err(|e| e.to_string())?;
    let op = rec.op().map_err(|e| e.to_string())?;
    Ok(ScannedRecord {
        offset: pos as u64,
        len: rec.len as u64,
        sequence: rec.header.sequence,
        timestamp_us: rec.header.timestamp_us,
        space,
        op,
    })
}

fn find_next_valid(
    bytes: &[u8],
    from: usize,
    last_seq: Option<u64>,
    max_record: usize,
) -> Option<usize> {
    let mut i = from;
    while i + RECORD_MAGIC.len() <= bytes.len() {
        let rel = bytes[i..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        let q = i + rel;
        if valid_record_at(bytes, q, last_seq, max_record).is_ok() {
            return Some(q);
        }
        i = q + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::record::encode_record;
    use super::*;
    use engram_core::MemoryId;

    fn file_with(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = WalFileHeader { first_sequence: 1 }.encode().to_vec();
        let mut starts = Vec::new();
        let space = SpaceId::new("s").unwrap();
        for seq in 1..=n {
            starts.push(buf.len());
            let op = Op::Forget(MemoryId::new(format!("m{seq}")).unwrap());
            let mut payload = Vec::new();
            op.encode_payload(&mut payload);
            encode_record(&mut buf, seq, 0, &space, op.code(), &payload);
        }
        (buf, starts)
    }

    #[test]
    fn clean_file() {
        let (buf, _) = file_with(5);
        let out = scan_wal_file(&buf, true, 1 << 20);
        assert_eq!(out.records.len(), 5);
        assert!(out.bad.is_empty() && out.torn_tail.is_none());
    }

    #[test]
    fn torn_tail_at_every_offset() {
        let (buf, starts) = file_with(3);
        let last = *starts.last().unwrap();
        for cut in last..buf.len() {
            let out = scan_wal_file(&buf[..cut], true, 1 << 20);
            assert_eq!(out.records.len(), 2, "cut {cut}");
            assert!(out.bad.is_empty());
            assert_eq!(out.torn_tail.is_some(), cut > last, "cut {cut}");
        }
    }

    #[test]
    fn middle_corruption_is_quarantined_and_later_records_kept() {
        let (mut buf, starts) = file_with(5);
        buf[starts[2] + 34] ^= 0x10;
        let out = scan_wal_file(&buf, true, 1 << 20);
        let seqs: Vec<u64> = out.records.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
        assert_eq!(out.bad.len(), 1);
        assert_eq!(out.bad[0].offset as usize, starts[2]);
        assert_eq!(out.bad[0].len as usize, starts[3] - starts[2]);
        assert!(out.torn_tail.is_none());
    }

    #[test]
    fn corrupt_length_field_resyncs() {
        let (mut buf, starts) = file_with(4);
        buf[starts[1] + 8..starts[1] + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let out = scan_wal_file(&buf, false, 1 << 20);
        let seqs: Vec<u64> = out.records.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        assert_eq!(out.bad.len(), 1);
    }

    #[test]
    fn preallocated_zeros_are_a_clean_end_in_any_file() {
        let (mut buf, _) = file_with(3);
        let end = buf.len() as u64;
        buf.resize(buf.len() + 4096, 0);
        for last in [true, false] {
            let out = scan_wal_file(&buf, last, 1 << 20);
            assert_eq!(out.records.len(), 3);
            assert!(out.bad.is_empty() && out.torn_tail.is_none());
            assert_eq!(out.valid_end, end);
        }
        // A torn record inside preallocated space is still a torn tail.
        buf[end as usize..end as usize + 5].copy_from_slice(b"EWR1x");
        let out = scan_wal_file(&buf, true, 1 << 20);
        assert_eq!(out.torn_tail.as_ref().map(|t| t.offset), Some(end));
    }

    #[test]
    fn garbage_tail_in_older_file_is_corruption_not_torn() {
        let (mut buf, _) = file_with(2);
        buf.extend_from_slice(b"garbage");
        let out = scan_wal_file(&buf, false, 1 << 20);
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.bad.len(), 1);
        assert!(out.torn_tail.is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), last in proptest::prelude::any::<bool>()) {
            let _ = scan_wal_file(&bytes, last, 1 << 20);
        }
    }
}
