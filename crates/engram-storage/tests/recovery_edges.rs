//! Recovery edge cases found in review: a rotted last WAL record that is already in a segment,
//! a space removal cut short, files of a newer format version.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use engram_storage::{StorageError, Store};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A store whose last WAL record is already in a segment, with the pre-checkpoint WAL put
/// back and that record rotted (a bit flipped near its end).
fn rot_a_flushed_last_record(s: &engram_core::SpaceId) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let saved_wal = tempfile::tempdir().unwrap();
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(s, 8).unwrap();
        store.remember(s, memory("m0", 8)).unwrap();
        copy_dir(&dir.path().join("wal"), saved_wal.path());
        store.compact().unwrap();
    }
    // Put the pre-checkpoint WAL back and rot its last record (already in the segment).
    fs::remove_dir_all(dir.path().join("wal")).unwrap();
    copy_dir(saved_wal.path(), &dir.path().join("wal"));
    let wal = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&wal).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    fs::write(&wal, bytes).unwrap();
    dir
}

#[test]
fn a_rotted_last_record_already_in_a_segment_never_makes_a_sequence_reused() {
    let s = sid("s");
    let dir = rot_a_flushed_last_record(&s);
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        assert_intact(&store.get(&s, "m0").unwrap().unwrap(), 8);
        store.remember(&s, memory("after", 8)).unwrap();
        assert!(
            store.get(&s, "after").unwrap().is_some(),
            "acknowledged write applied"
        );
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert_intact(&store.get(&s, "after").unwrap().unwrap(), 8);
}

#[test]
fn the_raised_sequence_floor_survives_a_restart_without_writes() {
    let s = sid("s");
    let dir = rot_a_flushed_last_record(&s);
    // Open (raises the floor), close without writing, open again, then write.
    drop(Store::open_dir(dir.path(), test_options()).unwrap());
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.remember(&s, memory("after", 8)).unwrap();
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert_intact(&store.get(&s, "after").unwrap().unwrap(), 8);
}

#[test]
fn a_space_removal_cut_short_never_resurrects_old_memories() {
    let dir = tempfile::tempdir().unwrap();
    let a = sid("a");
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&a, 4).unwrap();
        store.remember(&a, memory("old", 4)).unwrap();
        store.compact().unwrap();
        store.drop_space(&a).unwrap();
    }
    // The crash came after space.meta was removed, before the segments were.
    let space_dir = dir.path().join("spaces/a");
    fs::remove_file(space_dir.join("space.meta")).unwrap();
    assert!(
        fs::read_dir(&space_dir).unwrap().count() > 0,
        "segments left behind"
    );
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        assert!(!store.space_exists(&a).unwrap());
        store.create_space(&a, 4).unwrap();
        store.remember(&a, memory("new", 4)).unwrap();
        store.compact().unwrap();
    }
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    assert!(
        store.get(&a, "old").unwrap().is_none(),
        "old segments must not come back"
    );
    assert_intact(&store.get(&a, "new").unwrap().unwrap(), 4);
}

#[test]
fn a_newer_wal_version_is_refused_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&s, 8).unwrap();
        store.remember(&s, memory("m0", 8)).unwrap();
    }
    let wal = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&wal).unwrap();
    // A version after this build's, with a valid header checksum.
    let newer = engram_storage::wal::WAL_FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&newer.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&wal, &bytes).unwrap();
    let err = Store::open_dir(dir.path(), test_options())
        .err()
        .expect("refused");
    assert!(matches!(err, StorageError::UnsupportedVersion(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("version {newer}")),
        "{err}"
    );
    assert_eq!(fs::read(&wal).unwrap(), bytes, "the file is left as it was");
    assert!(
        !dir.path().join("quarantine").exists()
            || fs::read_dir(dir.path().join("quarantine")).unwrap().count() == 0
    );
}

#[test]
fn a_newer_segment_version_is_refused_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("s");
    {
        let store = Store::open_dir(dir.path(), test_options()).unwrap();
        store.create_space(&s, 8).unwrap();
        store.remember(&s, memory("m0", 8)).unwrap();
        store.compact().unwrap();
    }
    let seg = fs::read_dir(dir.path().join("spaces/s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let f = bytes.len() - 320;
    bytes[f + 8..f + 12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[f..f + 60]), &bytes[f + 64..]);
    bytes[f + 60..f + 64].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, &bytes).unwrap();
    let store = Store::open_dir(dir.path(), test_options()).unwrap();
    let err = store.get(&s, "m0").unwrap_err();
    assert!(matches!(err, StorageError::UnsupportedVersion(_)), "{err}");
    assert!(seg.exists(), "not moved to quarantine");
    assert!(store.status().quarantined.is_empty());
}
