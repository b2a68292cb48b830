//! Reading a sealed segment in place from its mapped bytes. Structure (footer, directory,
//! column bounds and sizes) is validated on open; offsets inside variable columns are checked on
//! every access. Malformed bytes give [`StorageError::Corrupted`], never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::{Link, Memory};

use super::format::*;
use crate::codec::Reader;
use crate::disk::{Disk, Mapped};
use crate::error::{corrupted, IoContext, Result, StorageError};
use crate::index::Hnsw;
use crate::op::{decode_links, decode_metadata, memory_id};

/// What a segment's footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub dimension: usize,
    pub rows: usize,
    pub tombstones: usize,
    pub min_seq: u64,
    pub max_seq: u64,
    pub stride: usize,
}

/// Where an id stands in one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Row(usize),
    Tombstone,
    Absent,
}

#[derive(Debug, Clone, Copy)]
struct Column {
    offset: usize,
    len: usize,
    crc: u32,
}

/// A variable column: `n + 1` offsets then a heap.
#[derive(Debug, Clone, Copy)]
struct VarColumn {
    col: Column,
    n: usize,
}

/// An open segment. Cheap to share behind an `Arc`; the bytes stay mapped while it lives.
#[derive(Debug)]
pub struct Segment {
    map: Mapped,
    path: PathBuf,
    info: SegmentInfo,
    ids: VarColumn,
    embeddings: Column,
    confidence: Column,
    timestamps: Column,
    content: VarColumn,
    metadata: VarColumn,
    links: VarColumn,
    tombstones: VarColumn,
    /// Every id of the segment, rows and tombstones: lookups skip segments it rules out.
    bloom: super::bloom::Bloom,
    /// The segment's ANN index, once opened or built (derived data: a segment without one is
    /// searched by a flat scan).
    index: parking_lot::RwLock<Option<Arc<Hnsw>>>,
    /// The segment's lexical index (`crate::lexical`), attached once opened or built.
    lex: std::sync::OnceLock<Arc<crate::lexical::SegmentLex>>,
}

impl Segment {
    pub fn open(disk: &dyn Disk, path: &Path) -> Result<Segment> {
        let map = disk.map(path).at(path)?;
        Self::from_mapped(map, path.to_path_buf())
    }

    /// Validates and wraps mapped segment bytes (the entry point of the fuzz target).
    pub fn from_mapped(map: Mapped, path: PathBuf) -> Result<Segment> {
        let bytes: &[u8] = &map;
        if bytes.len() < FOOTER_LEN {
            return corrupted(format!(
                "segment of {} bytes is shorter than its footer",
                bytes.len()
            ));
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
            return corrupted("segment bytes are not 64-byte aligned in memory");
        }
        let footer_at = bytes.len() - FOOTER_LEN;
        let footer = &bytes[footer_at..];
        let mut r = Reader::new(footer);
        if r.take(8, "segment magic")? != SEGMENT_MAGIC {
            return corrupted("not a segment (bad magic)");
        }
        let version = r.u32("version")?;
        let dimension = r.u32("dimension")? as usize;
        let rows = r.u64("rows")?;
        let tombstones = r.u64("tombstones")?;
        let min_seq = r.u64("min sequence")?;
        let max_seq = r.u64("max sequence")?;
        let columns = r.u32("column count")? as usize;
        let stride = r.u32("stride")? as usize;
        let _reserved = r.u32("reserved")?;
        let stored_crc = r.u32("footer crc")?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&footer[..60]), &footer[HEADER_LEN..]);
        if crc != stored_crc {
            return corrupted("segment footer checksum mismatch");
        }
        if version != SEGMENT_FORMAT_VERSION {
            return Err(StorageError::UnsupportedVersion(format!(
                "segment format version {version} is not supported (this build reads {SEGMENT_FORMAT_VERSION})"
            )));
        }
        if columns != COLUMN_COUNT {
            return corrupted(format!("{columns} columns, expected {COLUMN_COUNT}"));
        }
        if dimension == 0
            || dimension > engram_core::limits::MAX_DIMENSION
            || stride != stride_for(dimension)
        {
            return corrupted(format!("dimension {dimension} with stride {stride}"));
        }
        if min_seq > max_seq {
            return corrupted("min sequence above max sequence");
        }
        // Row counts are bounded by the file: every row takes at least an embedding.
        let rows = usize::try_from(rows).ok().filter(|&n| n <= bytes.len() / 4);
        let tombstones = usize::try_from(tombstones)
            .ok()
            .filter(|&n| n <= bytes.len() / 8);
        let (Some(rows), Some(tombstones)) = (rows, tombstones) else {
            return corrupted("row or tombstone count larger than the file");
        };
        let mut cols = [Column {
            offset: 0,
            len: 0,
            crc: 0,
        }; COLUMN_COUNT];
        for (i, c) in cols.iter_mut().enumerate() {
            let kind = r.u32("column kind")?;
            let crc = r.u32("column crc")?;
            let offset = r.u64("column offset")?;
            let len = r.u64("column length")?;
            let _ = r.u64("reserved")?;
            if kind != i as u32 + 1 {
                return corrupted(format!("column {i} has kind {kind}"));
            }
            let end = offset.checked_add(len);
            if end.is_none_or(|e| e > footer_at as u64) || offset % ALIGN as u64 != 0 {
                return corrupted(format!("column {kind} out of bounds or misaligned"));
            }
            *c = Column {
                offset: offset as usize,
                len: len as usize,
                crc,
            };
        }
        let fixed = |c: Column, want: Option<usize>, what: &str| -> Result<Column> {
            if want != Some(c.len) {
                return corrupted(format!(
                    "{what} column has {} bytes, expected {want:?}",
                    c.len
                ));
            }
            Ok(c)
        };
        let var = |c: Column, n: usize, what: &str| -> Result<VarColumn> {
            let table = (n + 1) * 8;
            if c.len < table {
                return corrupted(format!("{what} column too short for its offsets"));
            }
            Ok(VarColumn { col: c, n })
        };
        let mut seg = Segment {
            bloom: super::bloom::Bloom::with_capacity(0),
            info: SegmentInfo {
                dimension,
                rows,
                tombstones,
                min_seq,
                max_seq,
                stride,
            },
            ids: var(cols[0], rows, "ids")?,
            embeddings: fixed(
                cols[1],
                rows.checked_mul(stride).and_then(|x| x.checked_mul(4)),
                "embeddings",
            )?,
            confidence: fixed(cols[2], rows.checked_mul(4), "confidence")?,
            timestamps: fixed(cols[3], rows.checked_mul(8), "timestamps")?,
            content: var(cols[4], rows, "content")?,
            metadata: var(cols[5], rows, "metadata")?,
            links: var(cols[6], rows, "links")?,
            tombstones: var(cols[7], tombstones, "tombstones")?,
            map,
            path,
            index: parking_lot::RwLock::new(None),
            lex: std::sync::OnceLock::new(),
        };
        let mut bloom = super::bloom::Bloom::with_capacity(rows + tombstones);
        for row in 0..rows {
            bloom.insert(seg.var_item(seg.ids, row, "id")?);
        }
        for t in 0..tombstones {
            bloom.insert(seg.var_item(seg.tombstones, t, "tombstone")?);
        }
        seg.bloom = bloom;
        Ok(seg)
    }

    /// The segment's HNSW index, if one is open.
    pub fn index(&self) -> Option<Arc<Hnsw>> {
        self.index.read().clone()
    }

    pub fn lex(&self) -> Option<&Arc<crate::lexical::SegmentLex>> {
        self.lex.get()
    }

    /// Attaches the lexical index (checked against this segment by the caller); the first
    /// one attached stays.
    pub fn set_lex(&self, lex: Arc<crate::lexical::SegmentLex>) {
        let _ = self.lex.set(lex);
    }

    /// Attaches an index opened (and checked against this segment) by the caller.
    pub fn set_index(&self, index: Arc<Hnsw>) {
        *self.index.write() = Some(index);
    }

    pub fn info(&self) -> SegmentInfo {
        self.info
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    pub fn mapped(&self) -> &Mapped {
        &self.map
    }

    pub fn rows(&self) -> usize {
        self.info.rows
    }

    /// Checks every column's CRC (reads the whole file).
    pub fn verify(&self) -> Result<()> {
        let cols = [
            self.ids.col,
            self.embeddings,
            self.confidence,
            self.timestamps,
            self.content.col,
            self.metadata.col,
            self.links.col,
            self.tombstones.col,
        ];
        for (i, c) in cols.iter().enumerate() {
            let actual = crc32c::crc32c(&self.map[c.offset..c.offset + c.len]);
            if actual != c.crc {
                return corrupted(format!(
                    "{}: column {} checksum mismatch",
                    self.path.display(),
                    i + 1
                ));
            }
        }
        Ok(())
    }

    fn var_item(&self, v: VarColumn, i: usize, what: &str) -> Result<&[u8]> {
        if i >= v.n {
            return corrupted(format!("{what} row {i} out of range"));
        }
        let base = v.col.offset;
        let read = |k: usize| -> u64 {
            let at = base + k * 8;
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.map[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (start, end) = (read(i), read(i + 1));
        let heap_len = (v.col.len - (v.n + 1) * 8) as u64;
        if start > end || end > heap_len {
            return corrupted(format!(
                "{what} row {i}: offsets {start}..{end} outside heap"
            ));
        }
        let heap = base + (v.n + 1) * 8;
        Ok(&self.map[heap + start as usize..heap + end as usize])
    }

    fn var_str(&self, v: VarColumn, i: usize, what: &str) -> Result<&str> {
        match std::str::from_utf8(self.var_item(v, i, what)?) {
            Ok(s) => Ok(s),
            Err(_) => corrupted(format!("{what} row {i} is not UTF-8")),
        }
    }

    pub fn id(&self, row: usize) -> Result<&str> {
        self.var_str(self.ids, row, "id")
    }

    pub fn content(&self, row: usize) -> Result<&str> {
        self.var_str(self.content, row, "content")
    }

    pub fn raw_metadata(&self, row: usize) -> Result<&[u8]> {
        self.var_item(self.metadata, row, "metadata")
    }

    pub fn raw_links(&self, row: usize) -> Result<&[u8]> {
        self.var_item(self.links, row, "links")
    }

    pub fn metadata(&self, row: usize) -> Result<BTreeMap<String, String>> {
        let mut r = Reader::new(self.raw_metadata(row)?);
        let m = decode_metadata(&mut r)?;
        r.finish("metadata")?;
        Ok(m)
    }

    pub fn links(&self, row: usize) -> Result<Vec<Link>> {
        let mut r = Reader::new(self.raw_links(row)?);
        let l = decode_links(&mut r)?;
        r.finish("links")?;
        Ok(l)
    }

    pub fn tombstone(&self, i: usize) -> Result<&str> {
        self.var_str(self.tombstones, i, "tombstone")
    }

    /// The embedding of `row`: a slice of the mapped file, no copy. Panics if `row >= rows()`.
    pub fn embedding(&self, row: usize) -> &[f32] {
        assert!(row < self.info.rows, "row {row} out of range");
        &self.embedding_column()
            [row * self.info.stride..row * self.info.stride + self.info.dimension]
    }

    /// The whole embedding column: `rows() * stride` f32, row `i` at `i * stride`, each row
    /// 64-byte aligned.
    pub fn embedding_column(&self) -> &[f32] {
        let c = self.embeddings;
        let bytes = &self.map[c.offset..c.offset + c.len];
        // SAFETY: `from_mapped` checked that the mapping starts 64-byte aligned and that the
        // column offset is a multiple of 64, so the pointer is aligned for f32; the length is
        // `rows * stride * 4` bytes inside the mapping (checked), and every bit pattern is a
        // valid f32. The mapping is immutable and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) }
    }

    pub fn stride(&self) -> usize {
        self.info.stride
    }

    pub fn confidence(&self, row: usize) -> f32 {
        let at = self.confidence.offset + row * 4;
        let b = &self.map[at..at + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn timestamp(&self, row: usize) -> i64 {
        let at = self.timestamps.offset + row * 8;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.map[at..at + 8]);
        i64::from_le_bytes(b)
    }

    /// The whole memory at `row`, copied out.
    pub fn memory(&self, row: usize) -> Result<Memory> {
        Ok(Memory {
            id: memory_id(self.id(row)?)?,
            content: self.content(row)?.to_string(),
            embedding: self.embedding(row).to_vec(),
            confidence: self.confidence(row),
            timestamp_us: self.timestamp(row),
            metadata: self.metadata(row)?,
            links: self.links(row)?,
        })
    }

    /// Binary search over the sorted id column, then the tombstone column.
    pub fn find(&self, id: &str) -> Result<Lookup> {
        if !self.bloom.may_contain(id.as_bytes()) {
            return Ok(Lookup::Absent);
        }
        if let Some(row) = self.search(self.ids, self.info.rows, id, "id")? {
            return Ok(Lookup::Row(row));
        }
        if self
            .search(self.tombstones, self.info.tombstones, id, "tombstone")?
            .is_some()
        {
            return Ok(Lookup::Tombstone);
        }
        Ok(Lookup::Absent)
    }

    fn search(&self, v: VarColumn, n: usize, id: &str, what: &str) -> Result<Option<usize>> {
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.var_item(v, mid, what)?.cmp(id.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {

    use super::super::builder::{write_memories, WritePace};
    use super::*;
    use crate::disk::RealDisk;
    use engram_core::MemoryId;
    use proptest::prelude::*;

    fn build(mems: &[Memory], tombs: &[&str], dim: usize) -> (tempfile::TempDir, Segment) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1, 9));
        let mut sorted: Vec<&Memory> = mems.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        write_memories(
            &RealDisk,
            &path,
            dim,
            (1, 9),
            &sorted,
            tombs,
            &WritePace::UNPACED,
        )
        .unwrap();
        let seg = Segment::open(&RealDisk, &path).unwrap();
        (dir, seg)
    }

    /// A paced write takes at least its bytes over the rate, syncs in steps, and writes the
    /// same bytes as an unpaced one.
    #[test]
    fn paced_write_is_paced_and_identical() {
        let dim = 256;
        let mems: Vec<Memory> = (0..400).map(|i| mem(&format!("m{i:04}"), dim)).collect();
        let refs: Vec<&Memory> = mems.iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_memories(&RealDisk, &a, dim, (1, 9), &refs, &[], &WritePace::UNPACED).unwrap();
        let size = std::fs::metadata(&a).unwrap().len();
        assert!(size > 400 * 1024, "{size} bytes");
        let pace = WritePace {
            sync_every: 64 << 10,
            bytes_per_s: 4 << 20,
        };
        let t = std::time::Instant::now();
        write_memories(&RealDisk, &b, dim, (1, 9), &refs, &[], &pace).unwrap();
        let floor = size as f64 / pace.bytes_per_s as f64;
        // The last buffer's wait is cut short only by rounding: 90 % of the floor at least.
        assert!(
            t.elapsed().as_secs_f64() >= floor * 0.9,
            "{:?} for {size} bytes at 4 MiB/s",
            t.elapsed()
        );
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        Segment::open(&RealDisk, &b).unwrap().verify().unwrap();
    }

    fn mem(id: &str, dim: usize) -> Memory {
        Memory {
            id: MemoryId::new(id).unwrap(),
            content: format!("content of {id}"),
            embedding: (0..dim).map(|i| i as f32 * 0.5).collect(),
            confidence: 0.5,
            timestamp_us: 1234,
            metadata: [("k".to_string(), "v".to_string())].into(),
            links: vec![Link {
                to: MemoryId::new("other").unwrap(),
                weight: 0.25,
            }],
        }
    }

    #[test]
    fn write_read_find() {
        let mems: Vec<Memory> = ["b", "a", "c"].iter().map(|i| mem(i, 20)).collect();
        let (_d, seg) = build(&mems, &["x", "y"], 20);
        seg.verify().unwrap();
        assert_eq!(seg.rows(), 3);
        assert_eq!(seg.stride(), 32);
        assert_eq!(seg.find("a").unwrap(), Lookup::Row(0));
        assert_eq!(seg.find("c").unwrap(), Lookup::Row(2));
        assert_eq!(seg.find("y").unwrap(), Lookup::Tombstone);
        assert_eq!(seg.find("zz").unwrap(), Lookup::Absent);
        assert_eq!(seg.memory(1).unwrap(), mems[0]);
        let e = seg.embedding(2);
        assert_eq!(e.as_ptr() as usize % 64, 0, "rows are 64-byte aligned");
        assert!(
            std::ptr::eq(
                e.as_ptr().cast::<u8>(),
                seg.mapped()[..]
                    .as_ptr()
                    .wrapping_add(seg.embeddings.offset + 2 * 32 * 4)
            ),
            "embedding is a slice of the mapped file"
        );
    }

    #[test]
    fn empty_segment() {
        let (_d, seg) = build(&[], &["gone"], 8);
        assert_eq!(seg.rows(), 0);
        assert_eq!(seg.find("gone").unwrap(), Lookup::Tombstone);
    }

    #[test]
    fn bit_flips_are_detected() {
        let mems: Vec<Memory> = ["a", "b"].iter().map(|i| mem(i, 16)).collect();
        let (_d, seg) = build(&mems, &[], 16);
        let bytes = seg.mapped().to_vec();
        for at in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[at] ^= 0x04;
            // A flip is either detected or lands in alignment padding and changes nothing.
            if let Ok(s) = Segment::from_mapped(Mapped::from_bytes(&b), "x".into()) {
                if s.verify().is_ok() {
                    for row in 0..2 {
                        assert_eq!(
                            s.memory(row).unwrap(),
                            seg.memory(row).unwrap(),
                            "flip at {at}"
                        );
                    }
                }
            }
        }
    }

    fn arb_mem() -> impl Strategy<Value = Memory> {
        (
            "[a-z0-9]{1,12}",
            "\\PC{1,50}",
            proptest::collection::vec(-1.0f32..1.0, 24),
            0.0f32..=1.0,
            any::<i64>(),
        )
            .prop_map(|(id, content, embedding, confidence, ts)| Memory {
                id: MemoryId::new(id).unwrap(),
                content,
                embedding,
                confidence,
                timestamp_us: ts,
                metadata: Default::default(),
                links: vec![],
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip(mems in proptest::collection::vec(arb_mem(), 0..30)) {
            let (_d, seg) = build(&mems, &[], 24);
            seg.verify().unwrap();
            let mut ids: Vec<&str> = mems.iter().map(|m| m.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(seg.rows(), ids.len());
            for (row, id) in ids.iter().enumerate() {
                prop_assert_eq!(seg.find(id).unwrap(), Lookup::Row(row));
                let m = seg.memory(row).unwrap();
                let orig = mems.iter().find(|x| x.id.as_str() == *id).unwrap();
                prop_assert_eq!(&m, orig);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(seg) = Segment::from_mapped(Mapped::from_bytes(&bytes), "fuzz".into()) {
                let _ = seg.verify();
                for row in 0..seg.rows().min(50) {
                    let _ = seg.memory(row);
                }
                let _ = seg.find("a");
            }
        }
    }
}
