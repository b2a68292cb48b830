//! Tests of the fault-injecting disk: power cuts, torn writes, failed syncs, flipped bits.

use super::*;
use crate::disk::write_file_atomic;

fn setup() -> (FaultDisk, PathBuf) {
    let disk = FaultDisk::new();
    let dir = PathBuf::from("/db");
    disk.create_dir_all(&dir).unwrap();
    (disk, dir)
}

/// Creates `name` in `dir` with `bytes`, synced, its name durable.
fn durable_file(disk: &FaultDisk, dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = disk.create(&path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync().unwrap();
    disk.sync_dir(dir).unwrap();
    path
}

#[test]
fn unsynced_data_is_lost_on_power_cut() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"hello").unwrap();
    assert_eq!(disk.file_bytes(&p).unwrap(), b"hello");
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"");
    disk.power_cut();
    assert!(disk.exists(&p));
    assert_eq!(disk.read(&p).unwrap(), b"");
}

#[test]
fn synced_data_is_kept_and_later_writes_lost() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"one");
    let mut f = disk.open_append(&p).unwrap();
    assert_eq!(f.len(), 3);
    f.write_all(b" two").unwrap();
    f.sync().unwrap();
    f.write_all(b" three").unwrap();
    assert_eq!(f.len(), 13);
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"one two");
    assert_eq!(disk.syncs(), 2);
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"one two");
    assert_eq!(disk.file_len(&p).unwrap(), 7);
    assert_eq!(disk.power_cuts(), 1);
}

#[test]
fn synced_file_without_dir_sync_disappears() {
    let (disk, dir) = setup();
    let p = dir.join("seg");
    let mut f = disk.create(&p).unwrap();
    f.write_all(b"data").unwrap();
    f.sync().unwrap();
    assert!(disk.exists(&p));
    assert_eq!(disk.durable_bytes(&p), None);
    drop(f);
    disk.power_cut();
    assert!(!disk.exists(&p));
    assert_eq!(disk.file_bytes(&p), None);
    assert!(disk.list_dir(&dir).unwrap().is_empty());
    assert!(disk.read(&p).is_err());
}

#[test]
fn rename_is_durable_only_after_sync_dir() {
    let (disk, dir) = setup();
    let a = durable_file(&disk, &dir, "a", b"A");
    let b = durable_file(&disk, &dir, "b", b"B");
    disk.rename(&a, &b).unwrap();
    assert!(!disk.exists(&a));
    assert_eq!(disk.read(&b).unwrap(), b"A");
    disk.power_cut();
    assert_eq!(disk.read(&a).unwrap(), b"A");
    assert_eq!(disk.read(&b).unwrap(), b"B");

    disk.rename(&a, &b).unwrap();
    disk.sync_dir(&dir).unwrap();
    assert_eq!(disk.durable_bytes(&a), None);
    disk.power_cut();
    assert!(!disk.exists(&a));
    assert_eq!(disk.read(&b).unwrap(), b"A");
    assert_eq!(disk.list_dir(&dir).unwrap(), vec!["b".to_string()]);
}

#[test]
fn remove_is_durable_only_after_sync_dir() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "old", b"x");
    disk.remove_file(&p).unwrap();
    assert!(!disk.exists(&p));
    assert!(disk.remove_file(&p).is_err());
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"x");
    disk.remove_file(&p).unwrap();
    disk.sync_dir(&dir).unwrap();
    disk.power_cut();
    assert!(!disk.exists(&p));
}

#[test]
fn torn_tail_keeps_exactly_keep_bytes() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"synced|");
    let short = durable_file(&disk, &dir, "short", b"s");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"0123456789").unwrap();
    let mut g = disk.open_append(&short).unwrap();
    g.write_all(b"12").unwrap();
    disk.set_torn_tail(Some(4));
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"synced|0123");
    // Fewer unsynced bytes than `keep`: all of them survive.
    assert_eq!(disk.read(&short).unwrap(), b"s12");
    // What survived is now the durable content.
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"synced|0123");
    disk.set_torn_tail(None);
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"synced|0123");
}

#[test]
fn torn_overwrite_keeps_bytes_from_the_first_change() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "f", b"abcdef");
    disk.set_torn_tail(Some(2));
    let mut f = disk.open_write(&p).unwrap();
    f.write_at(2, b"XYZ").unwrap();
    drop(f);
    disk.power_cut();
    // Two bytes from the first changed one survive; the rest is the synced content.
    assert_eq!(disk.read(&p).unwrap(), b"abXYef");
}

#[test]
fn write_at_extends_with_zeros() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "f", b"ab");
    let mut f = disk.open_write(&p).unwrap();
    f.write_at(4, b"z").unwrap();
    f.sync().unwrap();
    assert_eq!(disk.read(&p).unwrap(), b"ab\0\0z");
}

#[test]
fn failed_syncs_make_nothing_durable() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"a");
    let q = dir.join("new");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"b").unwrap();
    disk.create(&q).unwrap();
    disk.fail_syncs(2);
    assert!(f.sync().is_err());
    assert!(disk.sync_dir(&dir).is_err());
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"a");
    assert_eq!(disk.durable_bytes(&q), None);
    assert_eq!(disk.syncs(), 1);
    // The third sync succeeds.
    f.sync().unwrap();
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"ab");
    assert_eq!(disk.syncs(), 2);
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"ab");
    assert!(!disk.exists(&q));
}

#[test]
fn fail_writes_after_tears_a_write() {
    let (disk, dir) = setup();
    let p = dir.join("wal");
    let mut f = disk.create(&p).unwrap();
    disk.fail_writes_after(Some(6));
    f.write_all(b"abcd").unwrap();
    let err = f.write_all(b"efgh").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdef");
    assert_eq!(f.len(), 6);
    assert!(f.write_all(b"x").is_err());
    f.write_all(b"").unwrap();
    assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdef");
    disk.fail_writes_after(None);
    f.write_all(b"g").unwrap();
    assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdefg");
}

#[test]
fn write_limit_is_shared_across_files() {
    let (disk, dir) = setup();
    let mut a = disk.create(&dir.join("a")).unwrap();
    let mut b = disk.create(&dir.join("b")).unwrap();
    disk.fail_writes_after(Some(3));
    a.write_all(b"12").unwrap();
    assert!(b.write_all(b"34").is_err());
    assert_eq!(disk.file_bytes(&dir.join("b")).unwrap(), b"3");
}

#[test]
fn flip_bit_is_visible_through_map_and_survives_power_cut() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "seg", &[0u8; 100]);
    disk.flip_bit(&p, 70, 3);
    let m = disk.map(&p).unwrap();
    assert_eq!(m.len(), 100);
    assert_eq!(m[70], 8);
    assert_eq!(m.iter().filter(|&&b| b != 0).count(), 1);
    assert_eq!(m.as_ptr() as usize % 64, 0);
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap()[70], 8);
    disk.flip_bit(&p, 70, 3);
    assert_eq!(disk.read(&p).unwrap(), vec![0u8; 100]);
}

#[test]
fn flip_bit_past_synced_data_changes_live_only() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"\0\0");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"\0\0").unwrap();
    disk.flip_bit(&p, 3, 0);
    assert_eq!(disk.file_bytes(&p).unwrap(), b"\0\0\0\x01");
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"\0\0");
}

#[test]
#[should_panic(expected = "past the end")]
fn flip_bit_past_end_panics() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "f", b"ab");
    disk.flip_bit(&p, 2, 0);
}

#[test]
fn corrupt_overwrites_live_and_synced() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "f", b"abcdef");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"gh").unwrap();
    disk.corrupt(&p, 4, b"XYZ");
    assert_eq!(disk.file_bytes(&p).unwrap(), b"abcdXYZh");
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"abcdXY");
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"abcdXY");
}

#[test]
fn old_handles_fail_after_power_cut() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"a");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"b").unwrap();
    disk.power_cut();
    assert!(f.write_all(b"c").is_err());
    assert!(f.sync().is_err());
    assert_eq!(disk.read(&p).unwrap(), b"a");
    // A fresh handle works.
    let mut g = disk.open_append(&p).unwrap();
    assert_eq!(g.len(), 1);
    g.write_all(b"c").unwrap();
    drop(f);
    g.sync().unwrap();
    assert_eq!(disk.read(&p).unwrap(), b"ac");
}

#[test]
fn writes_to_unlinked_file_go_to_its_inode() {
    let (disk, dir) = setup();
    let p = dir.join("tmp");
    let mut f = disk.create(&p).unwrap();
    f.write_all(b"a").unwrap();
    disk.remove_file(&p).unwrap();
    f.write_all(b"b").unwrap();
    f.sync().unwrap();
    assert_eq!(f.len(), 2);
    assert!(!disk.exists(&p));
    // A new file under the same name is a different inode.
    let mut g = disk.create(&p).unwrap();
    g.write_all(b"new").unwrap();
    f.write_all(b"c").unwrap();
    assert_eq!(disk.read(&p).unwrap(), b"new");
    drop(f);
    assert_eq!(disk.shared.lock().inodes.len(), 1);
}

#[test]
fn create_replaces_content_with_a_new_inode() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "f", b"old");
    let mut f = disk.create(&p).unwrap();
    assert_eq!(f.len(), 0);
    f.write_all(b"new").unwrap();
    f.sync().unwrap();
    assert_eq!(disk.read(&p).unwrap(), b"new");
    // The replacement name is not durable yet.
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"old");
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"old");
}

#[test]
fn truncate_is_durable() {
    let (disk, dir) = setup();
    let p = durable_file(&disk, &dir, "wal", b"abc");
    let mut f = disk.open_append(&p).unwrap();
    f.write_all(b"defgh").unwrap();
    disk.truncate(&p, 5).unwrap();
    assert_eq!(disk.read(&p).unwrap(), b"abcde");
    assert_eq!(disk.durable_bytes(&p).unwrap(), b"abcde");
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"abcde");
    disk.truncate(&p, 7).unwrap();
    assert_eq!(disk.read(&p).unwrap(), b"abcde\0\0");
    assert!(disk.truncate(&dir.join("missing"), 0).is_err());
}

#[test]
fn directories_and_listing() {
    let disk = FaultDisk::new();
    let root = Path::new("/data/db");
    assert!(disk.list_dir(root).is_err());
    assert_eq!(
        disk.list_dir(root).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    disk.create_dir_all(&root.join("segments")).unwrap();
    disk.create_dir_all(&root.join("segments")).unwrap();
    assert!(disk.exists(Path::new("/data")));
    disk.create(&root.join("wal")).unwrap();
    let mut names = disk.list_dir(root).unwrap();
    names.sort();
    assert_eq!(names, vec!["segments".to_string(), "wal".to_string()]);
    assert!(disk.list_dir(&root.join("segments")).unwrap().is_empty());
    // Directories are durable at once.
    disk.power_cut();
    assert!(disk.exists(&root.join("segments")));
    assert_eq!(disk.list_dir(root).unwrap(), vec!["segments".to_string()]);
    // A file cannot be created where a directory is, nor a directory over a file.
    assert!(disk.create(&root.join("segments")).is_err());
    disk.create(&root.join("f")).unwrap();
    assert!(disk.create_dir_all(&root.join("f/g")).is_err());
}

#[test]
fn missing_parent_is_not_found() {
    let (disk, dir) = setup();
    let p = dir.join("nope/file");
    let kind = |r: io::Result<Box<dyn DiskFile>>| r.err().map(|e| e.kind());
    assert_eq!(kind(disk.create(&p)), Some(io::ErrorKind::NotFound));
    assert_eq!(kind(disk.open_append(&p)), Some(io::ErrorKind::NotFound));
    let a = durable_file(&disk, &dir, "a", b"");
    assert_eq!(
        disk.rename(&a, &p).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(disk.exists(&a));
    assert_eq!(
        disk.sync_dir(&dir.join("nope")).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(disk.map(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert_eq!(disk.read(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert_eq!(
        disk.file_len(&p).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn remove_dir_all_is_durable_at_once() {
    let (disk, dir) = setup();
    let sub = dir.join("snap");
    disk.create_dir_all(&sub.join("inner")).unwrap();
    let p = durable_file(&disk, &sub, "f", b"x");
    durable_file(&disk, &sub.join("inner"), "g", b"y");
    let keep = durable_file(&disk, &dir, "snapshot", b"z");
    disk.remove_dir_all(&sub).unwrap();
    assert!(!disk.exists(&sub));
    assert!(!disk.exists(&p));
    assert_eq!(disk.durable_bytes(&p), None);
    disk.power_cut();
    assert!(!disk.exists(&sub));
    assert!(!disk.exists(&p));
    assert_eq!(disk.read(&keep).unwrap(), b"z");
    assert_eq!(disk.list_dir(&dir).unwrap(), vec!["snapshot".to_string()]);
    assert!(disk.remove_dir_all(&sub).is_err());
}

#[test]
fn sync_dir_covers_only_direct_entries() {
    let (disk, dir) = setup();
    let sub = dir.join("sub");
    disk.create_dir_all(&sub).unwrap();
    let top = dir.join("top");
    let nested = sub.join("nested");
    for p in [&top, &nested] {
        let mut f = disk.create(p).unwrap();
        f.write_all(b"1").unwrap();
        f.sync().unwrap();
    }
    disk.sync_dir(&dir).unwrap();
    assert_eq!(disk.dir_syncs(), 1);
    disk.power_cut();
    assert!(disk.exists(&top));
    assert!(!disk.exists(&nested));
}

#[test]
fn open_append_creates_a_live_name_only() {
    let (disk, dir) = setup();
    let p = dir.join("wal");
    let mut f = disk.open_append(&p).unwrap();
    assert!(f.is_empty());
    f.write_all(b"x").unwrap();
    f.sync().unwrap();
    drop(f);
    let g = disk.open_append(&p).unwrap();
    assert_eq!(g.len(), 1);
    drop(g);
    disk.power_cut();
    assert!(!disk.exists(&p));
}

#[test]
fn atomic_write_survives_power_cut() {
    let (disk, dir) = setup();
    let p = dir.join("manifest");
    write_file_atomic(&disk, &p, b"v1").unwrap();
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"v1");
    assert!(!disk.exists(&dir.join("manifest.tmp")));
    // A failed directory sync leaves the old version durable.
    disk.fail_syncs(1);
    let mut f = disk.create(&dir.join("manifest.tmp")).unwrap();
    f.write_all(b"v2").unwrap();
    f.sync().unwrap_err();
    disk.clear_faults();
    drop(f);
    write_file_atomic(&disk, &p, b"v2").unwrap();
    disk.power_cut();
    assert_eq!(disk.read(&p).unwrap(), b"v2");
}

#[test]
fn clones_share_state() {
    let (disk, dir) = setup();
    let handle = disk.clone();
    let engine: Box<dyn Disk> = Box::new(disk);
    let p = dir.join("f");
    let mut f = engine.create(&p).unwrap();
    f.write_all(b"shared").unwrap();
    assert_eq!(handle.file_bytes(&p).unwrap(), b"shared");
    handle.power_cut();
    assert!(f.write_all(b"x").is_err());
    assert!(!engine.exists(&p));
    assert!(format!("{engine:?}").contains("FaultDisk"));
}

#[test]
fn power_cut_drops_orphaned_inodes() {
    let (disk, dir) = setup();
    let mut f = disk.create(&dir.join("a")).unwrap();
    f.write_all(&[1; 1000]).unwrap();
    durable_file(&disk, &dir, "b", b"b");
    disk.remove_file(&dir.join("a")).unwrap();
    disk.sync_dir(&dir).unwrap();
    // Unnamed but still open: kept until the handle goes or the power does.
    assert_eq!(disk.shared.lock().inodes.len(), 2);
    disk.power_cut();
    drop(f);
    assert_eq!(disk.shared.lock().inodes.len(), 1);
}
