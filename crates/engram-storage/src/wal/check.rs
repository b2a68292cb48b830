//! What the commit path holds, asserted in release builds too (as TigerBeetle's journal
//! does): a broken invariant there would acknowledge a write that is not on disk, or write a
//! WAL that replay refuses. Each check is a few comparisons per batch or per record, never
//! per byte, and a function of its own, so that a test shows it fires. Called by the group
//! commit ([`crate::wal::commit`]) and by flushes and merges ([`crate::compaction`]).

use crate::wal::RECORD_HEADER_LEN;

/// The most records one writer queues together: a raft group's append of log entries (one
/// record each; `engram-replication` sends at most this many at once), a space's creation and
/// its first write (`GroupCommit::submit_all`); every other write is one record (a batch of
/// memories too).
pub(crate) const MAX_ENTRY_RECORDS: usize = 4096;
const _: () = assert!(MAX_ENTRY_RECORDS >= 1);

/// One writer's entry: one record, or up to `MAX_ENTRY_RECORDS` committed together.
pub(crate) fn check_entry(records: usize) {
    assert!(
        (1..=MAX_ENTRY_RECORDS).contains(&records),
        "a group commit entry of {records} records (1 to {MAX_ENTRY_RECORDS})"
    );
}

/// A batch's sequences rise strictly, and above every sequence already written.
pub(crate) fn check_sequences(written: u64, batch: impl IntoIterator<Item = u64>) {
    let mut prev = written;
    for seq in batch {
        assert!(
            seq > prev,
            "WAL sequence {seq} follows {prev}: sequences must rise strictly"
        );
        prev = seq;
    }
}

/// Nothing is durable that is not written.
pub(crate) fn check_watermarks(durable: u64, written: u64) {
    assert!(
        durable <= written,
        "WAL durable sequence {durable} is past the written sequence {written}"
    );
}

/// A group commit batch (`bytes` of `records` records queued by `entries` writers) within its
/// bounds: at most `MAX_ENTRY_RECORDS` records a writer, each record between a header and
/// `max_record_bytes`, and no more than `max_pending_bytes` unless one writer's records
/// alone fill it (back-pressure lets an entry into an empty batch whatever its size).
pub(crate) fn check_batch(
    bytes: usize,
    records: usize,
    entries: usize,
    max_record_bytes: usize,
    max_pending_bytes: usize,
) {
    assert!(
        entries >= 1 && records >= entries && records <= entries * MAX_ENTRY_RECORDS,
        "a WAL batch of {records} records from {entries} writers"
    );
    assert!(
        bytes >= records * RECORD_HEADER_LEN && bytes <= records * max_record_bytes,
        "a WAL batch of {bytes} bytes in {records} records (at most {max_record_bytes} each)"
    );
    assert!(
        bytes <= max_pending_bytes || entries == 1,
        "a WAL batch of {bytes} bytes from {entries} writers exceeds max_pending_bytes ({max_pending_bytes})"
    );
}

/// A segment holds only records durable in the WAL: its last sequence is not above the
/// WAL's durable one. Checked by flushes and merges before they write a segment.
pub(crate) fn check_segment_durable(segment_last: u64, durable: u64) {
    assert!(
        segment_last <= durable,
        "a segment up to sequence {segment_last} is past the WAL's durable sequence {durable}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_holds_passes() {
        check_entry(1);
        check_entry(MAX_ENTRY_RECORDS);
        check_sequences(4, [5, 6, 9]);
        check_watermarks(7, 7);
        check_batch(100, 2, 1, 64, 64);
        check_batch(64, 2, 2, 32, 64);
        check_segment_durable(7, 7);
    }

    #[test]
    #[should_panic(expected = "a group commit entry of 4097 records (1 to 4096)")]
    fn an_entry_of_too_many_records_fires() {
        check_entry(MAX_ENTRY_RECORDS + 1);
    }

    #[test]
    #[should_panic(expected = "a group commit entry of 0 records")]
    fn an_empty_entry_fires() {
        check_entry(0);
    }

    #[test]
    #[should_panic(expected = "WAL sequence 5 follows 5: sequences must rise strictly")]
    fn a_sequence_not_above_the_written_one_fires() {
        check_sequences(5, [5, 6]);
    }

    #[test]
    #[should_panic(expected = "WAL sequence 6 follows 7: sequences must rise strictly")]
    fn a_sequence_going_back_in_a_batch_fires() {
        check_sequences(4, [5, 7, 6]);
    }

    #[test]
    #[should_panic(expected = "WAL durable sequence 8 is past the written sequence 7")]
    fn durable_past_written_fires() {
        check_watermarks(8, 7);
    }

    #[test]
    #[should_panic(expected = "a WAL batch of 8193 records from 2 writers")]
    fn too_many_records_a_writer_fires() {
        check_batch(8193 * 40, 8193, 2, 64, 1 << 20);
    }

    #[test]
    #[should_panic(expected = "a WAL batch of 20 bytes in 1 records")]
    fn a_record_shorter_than_its_header_fires() {
        check_batch(20, 1, 1, 64, 1024);
    }

    #[test]
    #[should_panic(expected = "a WAL batch of 130 bytes in 2 records (at most 64 each)")]
    fn a_record_over_the_limit_fires() {
        check_batch(130, 2, 2, 64, 1024);
    }

    #[test]
    #[should_panic(
        expected = "a WAL batch of 100 bytes from 2 writers exceeds max_pending_bytes (64)"
    )]
    fn a_batch_over_the_pending_bytes_fires() {
        check_batch(100, 2, 2, 64, 64);
    }

    #[test]
    #[should_panic(expected = "a segment up to sequence 9 is past the WAL's durable sequence 8")]
    fn a_segment_past_durable_fires() {
        check_segment_durable(9, 8);
    }
}
