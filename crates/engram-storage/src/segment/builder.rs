//! Writing a segment: one pass over sorted rows, column after column, footer last; written to a
//! temporary name, synced, renamed into place, directory synced.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use engram_core::Memory;

use super::format::*;
use crate::disk::{Disk, DiskFile};
use crate::error::{IoContext, Result, StorageError};
use crate::op::{encode_links, encode_metadata};

/// One row to write. `metadata` and `links` are already encoded (see `op::encode_metadata` and
/// `op::encode_links`).
#[derive(Debug, Clone)]
pub struct RowData<'a> {
    pub id: &'a str,
    pub embedding: &'a [f32],
    pub confidence: f32,
    pub timestamp_us: i64,
    pub content: &'a str,
    pub metadata: Cow<'a, [u8]>,
    pub links: Cow<'a, [u8]>,
}

/// Writes a segment of whole memories (sorted by id, strictly ascending) and `tombstones`,
/// encoding each memory's metadata and links for its row. See [`write_segment`].
pub fn write_memories(
    disk: &dyn Disk,
    path: &Path,
    dimension: usize,
    (min_seq, max_seq): (u64, u64),
    memories: &[&Memory],
    tombstones: &[&str],
    pace: &WritePace,
) -> Result<u64> {
    let encoded: Vec<(Vec<u8>, Vec<u8>)> = memories
        .iter()
        .map(|m| {
            let (mut md, mut ln) = (Vec::new(), Vec::new());
            encode_metadata(&m.metadata, &mut md);
            encode_links(&m.links, &mut ln);
            (md, ln)
        })
        .collect();
    let rows: Vec<RowData> = memories
        .iter()
        .zip(&encoded)
        .map(|(m, (md, ln))| RowData {
            id: m.id.as_str(),
            embedding: &m.embedding,
            confidence: m.confidence,
            timestamp_us: m.timestamp_us,
            content: &m.content,
            metadata: Cow::Borrowed(md),
            links: Cow::Borrowed(ln),
        })
        .collect();
    write_segment(
        disk, path, dimension, min_seq, max_seq, &rows, tombstones, pace,
    )
}

/// How a segment's bytes go to the device: synced every `sync_every` bytes, and, when
/// `bytes_per_s` is not zero, no faster than that on average.
///
/// Background flushes and merges are paced: a merge writes hundreds of megabytes, and
/// written as fast as the page cache takes them, their write-back (and the ext4 journal
/// commits that must wait for it) floods the device queue the WAL's group-commit fsyncs wait
/// in. In `engram-bench http` (64 clients, remember without auto-link, interleaved runs),
/// 4 MiB steps at 200 MB/s gave a P99 of 10.3 / 10.5 / 11.1 ms against 16.3 / 18.3 / 18.6 ms
/// for 32 MiB steps unpaced; 4 MiB steps without pacing did not help (16.7, 17.1 ms).
/// Recovery, explicit compactions and merges run unpaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePace {
    /// Sync the file after this many bytes (and at the end).
    pub sync_every: u64,
    /// Average write rate ceiling in bytes per second; 0 for none.
    pub bytes_per_s: u64,
}

impl WritePace {
    /// As fast as the device takes it, synced every 32 MiB so that a large flush does not
    /// leave all its write-back to the end. In `engram-bench storage` (full, 64 writers, one
    /// 1 GiB flush in the window) the slowest acknowledgement was 304 and 531 ms with one sync
    /// at the end, 175 and 324 ms with 32 MiB steps, P99 unchanged within noise; 4 MiB steps
    /// (unpaced) spread the stall over many commits and raised the P99 (5.7-6.7 ms against
    /// 2.4-2.8 ms).
    pub const UNPACED: WritePace = WritePace {
        sync_every: 32 << 20,
        bytes_per_s: 0,
    };
}

impl Default for WritePace {
    fn default() -> Self {
        Self::UNPACED
    }
}

/// Streams bytes to a file through a buffer, tracking the current column's CRC and offset.
struct Out {
    file: Box<dyn DiskFile>,
    pace: WritePace,
    started: Instant,
    /// Bytes written to the file, and since its last sync.
    written: u64,
    unsynced: u64,
    buf: Vec<u8>,
    pos: u64,
    crc: u32,
    column_start: u64,
    entries: Vec<DirEntry>,
}

const BUF: usize = 1 << 20;

struct DirEntry {
    kind: u32,
    crc: u32,
    offset: u64,
    len: u64,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.pos += bytes.len() as u64;
        if self.buf.len() + bytes.len() > BUF {
            self.flush()?;
        }
        if bytes.len() > BUF {
            self.write(bytes)
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.unsynced += bytes.len() as u64;
        self.written += bytes.len() as u64;
        if self.unsynced >= self.pace.sync_every {
            self.file.sync()?;
            self.unsynced = 0;
        }
        if self.pace.bytes_per_s > 0 {
            let due = Duration::from_secs_f64(self.written as f64 / self.pace.bytes_per_s as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok(())
    }

    /// Pads to the next 64-byte boundary (padding is outside every column's CRC).
    fn align(&mut self) {
        let pad = (ALIGN - (self.pos as usize % ALIGN)) % ALIGN;
        self.buf.extend_from_slice(&[0u8; ALIGN][..pad]);
        self.pos += pad as u64;
    }

    fn begin(&mut self) {
        self.align();
        self.crc = 0;
        self.column_start = self.pos;
    }

    fn end(&mut self, kind: u32) {
        self.entries.push(DirEntry {
            kind,
            crc: self.crc,
            offset: self.column_start,
            len: self.pos - self.column_start,
        });
    }

    /// A variable column: `n + 1` u64 offsets, then the heap.
    fn var_column<'r>(
        &mut self,
        kind: u32,
        n: usize,
        item: impl Fn(usize) -> &'r [u8],
    ) -> std::io::Result<()> {
        self.begin();
        let mut off = 0u64;
        self.put(&off.to_le_bytes())?;
        for i in 0..n {
            off += item(i).len() as u64;
            self.put(&off.to_le_bytes())?;
        }
        for i in 0..n {
            self.put(item(i))?;
        }
        self.end(kind);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let written = self.write(&buf);
        self.buf = buf;
        self.buf.clear();
        written
    }
}

/// Writes a segment holding `rows` (ids strictly ascending) and `tombstones` (ids ascending) to
/// `path`, crash-safely. Returns the file size.
#[allow(clippy::too_many_arguments)]
pub fn write_segment(
    disk: &dyn Disk,
    path: &Path,
    dimension: usize,
    min_seq: u64,
    max_seq: u64,
    rows: &[RowData<'_>],
    tombstones: &[&str],
    pace: &WritePace,
) -> Result<u64> {
    for w in rows.windows(2) {
        assert!(w[0].id < w[1].id, "segment rows must be sorted by id");
    }
    assert!(min_seq <= max_seq);
    for r in rows {
        if r.embedding.len() != dimension {
            return Err(StorageError::Invalid(format!(
                "memory {} has {} dimensions, the segment {dimension}",
                r.id,
                r.embedding.len()
            )));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let file = disk.create(&tmp).at(&tmp)?;
    let mut out = Out {
        file,
        pace: *pace,
        started: Instant::now(),
        written: 0,
        unsynced: 0,
        buf: Vec::with_capacity(BUF),
        pos: 0,
        crc: 0,
        column_start: 0,
        entries: Vec::with_capacity(COLUMN_COUNT),
    };
    let size = write_columns(&mut out, dimension, min_seq, max_seq, rows, tombstones).at(&tmp)?;
    drop(out);
    disk.rename(&tmp, path).at(path)?;
    disk.sync_dir(dir).at(dir)?;
    Ok(size)
}

fn write_columns(
    out: &mut Out,
    dimension: usize,
    min_seq: u64,
    max_seq: u64,
    rows: &[RowData<'_>],
    tombstones: &[&str],
) -> std::io::Result<u64> {
    let stride = stride_for(dimension);
    let n = rows.len();
    out.var_column(col::IDS, n, |i| rows[i].id.as_bytes())?;
    out.begin();
    let pad = vec![0f32; stride - dimension];
    for r in rows {
        out.put(f32_bytes(r.embedding))?;
        out.put(f32_bytes(&pad))?;
    }
    out.end(col::EMBEDDINGS);
    out.begin();
    for r in rows {
        out.put(&r.confidence.to_le_bytes())?;
    }
    out.end(col::CONFIDENCE);
    out.begin();
    for r in rows {
        out.put(&r.timestamp_us.to_le_bytes())?;
    }
    out.end(col::TIMESTAMPS);
    out.var_column(col::CONTENT, n, |i| rows[i].content.as_bytes())?;
    out.var_column(col::METADATA, n, |i| &rows[i].metadata)?;
    out.var_column(col::LINKS, n, |i| &rows[i].links)?;
    out.var_column(col::TOMBSTONES, tombstones.len(), |i| {
        tombstones[i].as_bytes()
    })?;
    out.align();
    debug_assert_eq!(out.entries.len(), COLUMN_COUNT);

    let mut footer = Vec::with_capacity(FOOTER_LEN);
    footer.extend_from_slice(&SEGMENT_MAGIC);
    footer.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    footer.extend_from_slice(&(dimension as u32).to_le_bytes());
    footer.extend_from_slice(&(n as u64).to_le_bytes());
    footer.extend_from_slice(&(tombstones.len() as u64).to_le_bytes());
    footer.extend_from_slice(&min_seq.to_le_bytes());
    footer.extend_from_slice(&max_seq.to_le_bytes());
    footer.extend_from_slice(&(COLUMN_COUNT as u32).to_le_bytes());
    footer.extend_from_slice(&(stride as u32).to_le_bytes());
    footer.extend_from_slice(&0u32.to_le_bytes());
    footer.extend_from_slice(&0u32.to_le_bytes()); // crc, below
    for e in &out.entries {
        footer.extend_from_slice(&e.kind.to_le_bytes());
        footer.extend_from_slice(&e.crc.to_le_bytes());
        footer.extend_from_slice(&e.offset.to_le_bytes());
        footer.extend_from_slice(&e.len.to_le_bytes());
        footer.extend_from_slice(&0u64.to_le_bytes());
    }
    debug_assert_eq!(footer.len(), FOOTER_LEN);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&footer[..60]), &footer[HEADER_LEN..]);
    footer[60..64].copy_from_slice(&crc.to_le_bytes());
    out.put(&footer)?;
    out.flush()?;
    out.file.sync()?;
    Ok(out.pos)
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the slice covers exactly
    // the same memory. The target is little-endian (checked in `codec`), so these are the
    // little-endian bytes the format stores.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
