//! The version 1 HNSW index fixtures (`tests/fixtures/index-v1/`, see the module documentation
//! of `format_fixtures.rs`).

use std::path::{Path, PathBuf};

use engram_storage::index::{flat_search, Hnsw};
use engram_storage::segment::Segment;
use engram_storage::RealDisk;

use super::relative_files;

fn index_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/index-v1")
}

/// The version 1 index files, relative to `index-v1/`: one per segment of alpha and beta.
pub const INDEX_FIXTURE_FILES: &[&str] = &[
    "alpha/00000000000000000001-00000000000000000017.hnsw",
    "alpha/00000000000000000020-00000000000000000021.hnsw",
    "beta/00000000000000000002-00000000000000000019.hnsw",
    "beta/00000000000000000022-00000000000000000022.hnsw",
];

/// Every version 1 index file: opened against its segment (version 1 accepted, no codes), and a
/// search through it gives exactly what a scan of the segment gives. Then copied beside its
/// segment, for the store to load.
pub fn check_index_files(root: &Path) {
    let src = index_fixture_dir();
    let rel = relative_files(&src);
    assert_eq!(rel, INDEX_FIXTURE_FILES, "the version 1 index files");
    for name in INDEX_FIXTURE_FILES {
        let from = src.join(name);
        let bytes = std::fs::read(&from).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        let to = root.join("spaces").join(name);
        let seg_path = to.with_extension("seg");
        let seg = Segment::open(&RealDisk, &seg_path).unwrap();
        let index = Hnsw::open(&RealDisk, &from, &seg).unwrap();
        assert!(index.codes().is_none(), "{name}: version 1 has no codes");
        let info = index.info();
        assert_eq!(info.rows, seg.info().rows, "{name}");
        assert_eq!(info.dimension, seg.info().dimension, "{name}");
        let rows = info.rows;
        for row in 0..rows {
            let query = seg.memory(row).unwrap().embedding;
            let found = index.search(&seg, &query, rows, 64, |_| true);
            let exact = flat_search(&seg, &query, rows, |_| true);
            let ids = |v: &[(u32, f32)]| v.iter().map(|(r, _)| *r).collect::<Vec<_>>();
            assert_eq!(ids(&found), ids(&exact), "{name}: row {row}");
        }
        std::fs::copy(&from, &to).unwrap();
    }
}
