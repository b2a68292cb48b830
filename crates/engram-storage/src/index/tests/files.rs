//! Index files: written, reopened read-only, bound to their segment; every corruption class
//! and bit flip detected; faults of the disk reported with the path.

use super::*;

/// A disk that only reads: every write-side call fails and is counted.
#[derive(Debug)]
struct ReadOnly {
    inner: FaultDisk,
    writes: Arc<AtomicUsize>,
}

impl ReadOnly {
    fn refuse<T>(&self) -> io::Result<T> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::other("read-only disk"))
    }
}

impl Disk for ReadOnly {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn create_dir(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(p)
    }
    fn exists(&self, p: &Path) -> bool {
        self.inner.exists(p)
    }
    fn open_append(&self, _: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.refuse()
    }
    fn open_write(&self, _: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.refuse()
    }
    fn create(&self, _: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.refuse()
    }
    fn map(&self, p: &Path) -> io::Result<Mapped> {
        self.inner.map(p)
    }
    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(p)
    }
    fn file_len(&self, p: &Path) -> io::Result<u64> {
        self.inner.file_len(p)
    }
    fn truncate(&self, _: &Path, _: u64) -> io::Result<()> {
        self.refuse()
    }
    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn remove_file(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn remove_dir_all(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        self.refuse()
    }
}

#[test]
fn reopening_only_reads() {
    let f = fixture();
    let ro = ReadOnly {
        inner: f.disk.clone(),
        writes: Arc::new(AtomicUsize::new(0)),
    };
    let seg = Segment::open(&ro, &f.seg_path).unwrap();
    let before = f.disk.list_dir(Path::new("/s")).unwrap();
    let h = Hnsw::open(&ro, &f.idx_path, &seg).unwrap();
    assert_eq!(ro.writes.load(Ordering::SeqCst), 0);
    assert_eq!(f.disk.list_dir(Path::new("/s")).unwrap(), before);
    assert_eq!(f.disk.file_bytes(&f.idx_path).unwrap(), f.bytes);
    // The graph is the file's bytes, in place: the layer-0 section lies inside the mapping.
    let view = h.view();
    let map = h.mapped();
    let range = map.as_ptr_range();
    assert!(range.contains(&view.layer0.as_ptr().cast::<u8>()));
    let q = &f.data[..FIX_DIM];
    let r = h.view().search(&seg, q, 5, 16, |_| true);
    assert_eq!(r[0].0, 0);
    assert_eq!(r, flat_search(&seg, q, 5, |_| true));
}

#[test]
fn empty_segment_gets_a_valid_empty_index() {
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/e"), &[], 8, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    build_and_write(&disk, &p, &seg, HnswParams::default()).unwrap();
    let h = Hnsw::open(&disk, &index_path(&p), &seg).unwrap();
    assert_eq!(h.info().rows, 0);
    assert_eq!(h.info().entry_point, NO_ENTRY);
    assert!(h
        .view()
        .search(&seg, &[0.5; 8], 10, 10, |_| true)
        .is_empty());
    assert_eq!(disk.file_bytes(&index_path(&p)).unwrap().len(), 256);
}

#[test]
fn one_row_segment() {
    let disk = FaultDisk::new();
    let data = clustered(1, 8, 1, 4);
    let p = write_seg(&disk, Path::new("/one"), &data, 8, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    build_and_write(&disk, &p, &seg, HnswParams::default()).unwrap();
    let h = Hnsw::open(&disk, &index_path(&p), &seg).unwrap();
    let r = h.view().search(&seg, &data, 10, 10, |_| true);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0);
    assert!((r[0].1 - 1.0).abs() < 1e-5);
}

#[test]
fn wrong_segment_is_refused() {
    let f = fixture();
    // Same rows and dimension, other content.
    let other = clustered(400, FIX_DIM, 8, 99);
    let p = write_seg(&f.disk, Path::new("/other"), &other, FIX_DIM, 1);
    let seg = Segment::open(&f.disk, &p).unwrap();
    let m = corrupted_msg(Hnsw::open(&f.disk, &f.idx_path, &seg));
    assert!(m.contains("another segment"), "{m}");
    assert!(
        m.contains(f.idx_path.to_str().unwrap()),
        "names the file: {m}"
    );
    // Fewer rows.
    let p = write_seg(
        &f.disk,
        Path::new("/fewer"),
        &f.data[..399 * FIX_DIM],
        FIX_DIM,
        1,
    );
    let seg = Segment::open(&f.disk, &p).unwrap();
    let m = corrupted_msg(Hnsw::open(&f.disk, &f.idx_path, &seg));
    assert!(m.contains("another segment"), "{m}");
    // Each field of the binding matters.
    let b = f.binding;
    for wrong in [
        SegmentBinding {
            file_len: b.file_len + 64,
            ..b
        },
        SegmentBinding {
            footer_crc: b.footer_crc ^ 1,
            ..b
        },
        SegmentBinding {
            rows: b.rows + 1,
            ..b
        },
        SegmentBinding {
            dimension: b.dimension + 1,
            ..b
        },
    ] {
        let m = corrupted_msg(open_bytes(&f.bytes, &wrong));
        assert!(m.contains("another segment"), "{m}");
    }
    open_bytes(&f.bytes, &b).unwrap();
}

#[test]
fn every_corruption_class_is_an_error() {
    let f = fixture();
    let good = &f.bytes;
    let b = &f.binding;
    open_bytes(good, b).unwrap();
    let check = |name: &str, bytes: &[u8], want: &str| {
        let m = corrupted_msg(open_bytes(bytes, b));
        assert!(m.contains(want), "{name}: message {m:?} lacks {want:?}");
    };
    let edited = |f: &dyn Fn(&mut Vec<u8>), seal: bool| {
        let mut x = good.clone();
        f(&mut x);
        if seal {
            reseal(&mut x);
        }
        x
    };

    // Length.
    check("empty", &[], "shorter than its header");
    check(
        "header only",
        &good[..HEADER_LEN - 1],
        "shorter than its header",
    );
    check(
        "truncated",
        &good[..good.len() - 64],
        "bytes, its header describes",
    );
    check(
        "truncated by one",
        &good[..good.len() - 1],
        "bytes, its header describes",
    );
    check(
        "extended",
        &edited(&|x| x.extend_from_slice(&[0; 64]), false),
        "bytes, its header describes",
    );
    // Header.
    check("magic", &edited(&|x| x[0] ^= 1, false), "bad magic");
    for at in [8, 12, 16, 24, 36, 48, 56, 64, 100, 170, 187, 188] {
        check(
            "header byte",
            &edited(&|x| x[at] ^= 0x10, false),
            "header checksum",
        );
    }
    match open_bytes(&edited(&|x| put_u32(x, 8, 3), true), b) {
        Err(StorageError::UnsupportedVersion(m)) => {
            assert!(m.contains("version 3"), "{m}")
        }
        other => panic!("newer version: {other:?}"),
    }
    // A version 2 file called version 1 (no codes expected) is the wrong length.
    check(
        "version 1 with codes",
        &edited(&|x| put_u32(x, 8, 1), true),
        "bytes, its header describes",
    );
    // The codes and their scales.
    let (codes, scales) = code_sections(good).unwrap();
    for (name, (off, len)) in [("codes", codes), ("scales", scales)] {
        assert!(len > 0);
        for at in [off, off + len / 2, off + len - 1] {
            check(
                name,
                &edited(&|x| x[at] ^= 0x01, false),
                &format!("{name} section checksum"),
            );
        }
    }
    for bad in [f32::NAN, f32::INFINITY, -1.0] {
        check(
            "scale",
            &edited(
                &|x| x[scales.0 + 8..scales.0 + 12].copy_from_slice(&bad.to_le_bytes()),
                true,
            ),
            "scale of row 2 is not a finite number",
        );
    }
    // Section checksums.
    for (i, name) in ["levels", "layer 0", "upper offsets", "upper links"]
        .iter()
        .enumerate()
    {
        let (off, len) = section(good, i);
        assert!(len > 0);
        for at in [off, off + len / 2, off + len - 1] {
            check(
                name,
                &edited(&|x| x[at] ^= 0x01, false),
                &format!("{name} section checksum"),
            );
        }
    }
    // Header fields, resealed.
    check("m", &edited(&|x| put_u32(x, 24, 1), true), "MIN_M..=MAX_M");
    check("m0", &edited(&|x| put_u32(x, 28, 2), true), "MAX_M0");
    check(
        "m0 layout",
        &edited(&|x| put_u32(x, 28, 9), true),
        "its header describes",
    );
    check(
        "ef",
        &edited(&|x| put_u32(x, 32, 0), true),
        "MAX_EF_CONSTRUCTION",
    );
    check(
        "dimension 0",
        &edited(&|x| put_u32(x, 12, 0), true),
        "dimension 0",
    );
    check(
        "max level",
        &edited(&|x| put_u32(x, 36, 33), true),
        "MAX_LEVEL",
    );
    check(
        "entry",
        &edited(&|x| put_u32(x, 48, 400), true),
        "entry point 400",
    );
    check(
        "rows",
        &edited(
            &|x| x[16..24].copy_from_slice(&u64::MAX.to_le_bytes()),
            true,
        ),
        "MAX_ROWS",
    );
    check("binding", &edited(&|x| x[52] ^= 1, true), "another segment");
    check(
        "section offset",
        &edited(&|x| x[SECTION_TABLE_AT] ^= 64, true),
        "levels section at",
    );
    check(
        "upper length",
        &edited(
            &|x| x[SECTION_TABLE_AT + 3 * SECTION_ENTRY_LEN + 8] ^= 2,
            true,
        ),
        "not whole u32",
    );
    // Structure, resealed.
    let (lv, _) = section(good, sec::LEVELS);
    let (l0, _) = section(good, sec::LAYER0);
    let (uo, _) = section(good, sec::UPPER_OFFSETS);
    let (ul, _) = section(good, sec::UPPER_LINKS);
    let info = open_bytes(good, b).unwrap().info();
    let slot0 = (info.m0 + 1) * 4;
    check(
        "layer-0 neighbour out of range",
        &edited(&|x| put_u32(x, l0 + 4, 400), true),
        "layer-0 neighbour 400 is not a row",
    );
    check(
        "layer-0 count",
        &edited(&|x| put_u32(x, l0 + 3 * slot0, 9), true),
        "9 layer-0 neighbours",
    );
    let top = good[lv..lv + 400].iter().position(|&l| l == 0).unwrap();
    check(
        "level above max",
        &edited(&|x| x[lv + top] = info.max_level as u8 + 1, true),
        "above the max level",
    );
    let low = good[lv..lv + 400]
        .iter()
        .position(|&l| (l as usize) < info.max_level)
        .unwrap();
    check(
        "entry point below max level",
        &edited(&|x| put_u32(x, 48, low as u32), true),
        "not the max level",
    );
    check(
        "upper offset",
        &edited(&|x| x[uo + 8] ^= 1, true),
        "upper offset of row 1",
    );
    // The first row with an upper layer: its layer-1 count and neighbours.
    let r1 = good[lv..lv + 400].iter().position(|&l| l >= 1).unwrap();
    let at = ul
        + 4 * u64::from_le_bytes(good[uo + 8 * r1..uo + 8 * r1 + 8].try_into().unwrap()) as usize;
    assert!(get_u32(good, at) >= 1, "row {r1} has layer-1 neighbours");
    check(
        "upper count",
        &edited(&|x| put_u32(x, at, info.m as u32 + 1), true),
        "neighbours on layer 1",
    );
    check(
        "upper neighbour out of range",
        &edited(&|x| put_u32(x, at + 4, 1000), true),
        "layer-1 neighbour 1000 is not a row",
    );
    let ground = good[lv..lv + 400].iter().position(|&l| l == 0).unwrap();
    check(
        "upper neighbour not on the layer",
        &edited(&|x| put_u32(x, at + 4, ground as u32), true),
        "is not on layer 1",
    );
}

#[test]
fn every_bit_flip_outside_padding_is_detected() {
    let f = fixture();
    let good = &f.bytes;
    let mut covered = vec![false; good.len()];
    covered[..HEADER_LEN].fill(true);
    for i in 0..SECTION_COUNT {
        let (off, len) = section(good, i);
        covered[off..off + len].fill(true);
    }
    let (codes, scales) = code_sections(good).unwrap();
    for (off, len) in [codes, scales] {
        covered[off..off + len].fill(true);
    }
    for at in 0..good.len() {
        let mut x = good.clone();
        x[at] ^= 0x80;
        match open_bytes(&x, &f.binding) {
            Ok(h) => {
                assert!(!covered[at], "flip at {at} went unnoticed");
                exercise(&h);
            }
            Err(e) => assert!(
                covered[at] && matches!(e, StorageError::Corrupted(_)),
                "flip at {at}: {e}"
            ),
        }
    }
}

#[test]
fn fault_disk_corruption_is_reported_with_the_path() {
    let f = fixture();
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/flip"), &f.data, FIX_DIM, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    build_and_write(&disk, &p, &seg, HnswParams::default()).unwrap();
    let idx = index_path(&p);
    disk.flip_bit(&idx, HEADER_LEN as u64 + 1, 3);
    let m = corrupted_msg(Hnsw::open(&disk, &idx, &seg));
    assert!(
        m.starts_with("/flip/") && m.contains("levels section checksum"),
        "{m}"
    );
    // A missing file is an I/O error naming it.
    match Hnsw::open(&disk, Path::new("/flip/none.hnsw"), &seg) {
        Err(StorageError::Io { path, .. }) => assert_eq!(path, Path::new("/flip/none.hnsw")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_write_leaves_no_index() {
    let f = fixture();
    let disk = FaultDisk::new();
    let p = write_seg(&disk, Path::new("/fail"), &f.data, FIX_DIM, 1);
    let seg = Segment::open(&disk, &p).unwrap();
    disk.fail_syncs(1);
    assert!(build_and_write(&disk, &p, &seg, small_params()).is_err());
    assert!(!disk.exists(&index_path(&p)));
    disk.clear_faults();
    // A write cut short by a power loss leaves no index under the final name.
    disk.fail_writes_after(Some(1000));
    assert!(build_and_write(&disk, &p, &seg, small_params()).is_err());
    disk.clear_faults();
    disk.power_cut();
    assert!(!disk.exists(&index_path(&p)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1200),
        seal in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if seal {
            reseal(&mut bytes);
        }
        // Bind to what the header claims, so the structural checks are reached.
        let binding = if bytes.len() >= HEADER_LEN {
            SegmentBinding {
                footer_crc: get_u32(&bytes, 52),
                file_len: u64::from_le_bytes(bytes[56..64].try_into().unwrap()),
                rows: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
                dimension: get_u32(&bytes, 12),
            }
        } else {
            fixture().binding
        };
        if let Ok(h) = open_bytes(&bytes, &binding) {
            exercise(&h);
        }
    }

    #[test]
    fn corrupted_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        seal in any::<bool>(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let f = fixture();
        let mut x = f.bytes.clone();
        for (at, v) in &edits {
            let i = at.index(x.len());
            x[i] = *v;
        }
        if let Some(c) = cut {
            x.truncate(c.index(x.len()));
        }
        if seal {
            reseal(&mut x);
        }
        match open_bytes(&x, &f.binding) {
            Ok(h) => {
                // Only a consistent graph opens; it searches the real segment without panic.
                let v = FlatVectors::new(&f.data[..], FIX_DIM).unwrap();
                let q = &f.data[FIX_DIM..2 * FIX_DIM];
                let r = h.view().search(&v, q, 10, 20, |r| r % 2 == 0);
                prop_assert!(r.len() == 10);
                prop_assert!(r.iter().all(|x| x.0 % 2 == 0));
            }
            Err(StorageError::Corrupted(_)) | Err(StorageError::UnsupportedVersion(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}
