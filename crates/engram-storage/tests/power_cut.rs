//! Power-cut scenarios on the fault-injecting disk: what a crash of the machine leaves, torn
//! writes, bit flips, failing fsyncs. Each asserts exactly what survives.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use engram_storage::wal::scan_wal_file;
use engram_storage::FaultDisk;
use engram_storage::{Disk, StorageError, Store, StoreOptions};
use rand::{Rng, SeedableRng};

const ROOT: &str = "/node";
const DIM: usize = 8;

fn open(disk: &FaultDisk) -> Store {
    open_with(disk, test_options())
}

fn open_with(disk: &FaultDisk, opts: StoreOptions) -> Store {
    Store::open(Arc::new(disk.clone()), Path::new(ROOT), opts).unwrap()
}

fn wal_files(disk: &FaultDisk) -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("wal");
    let mut names: Vec<String> = disk
        .list_dir(&dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

#[test]
fn unsynced_data_is_dropped_and_acknowledged_data_survives() {
    let disk = FaultDisk::new();
    let s = sid("s");
    {
        let store = open(&disk);
        store.create_space(&s, DIM as u32).unwrap();
        for i in 0..20 {
            store.remember(&s, memory(&format!("m{i}"), DIM)).unwrap();
        }
        disk.fail_syncs(1);
        assert!(store.remember(&s, memory("lost", DIM)).is_err());
    }
    disk.power_cut();
    disk.clear_faults();
    let store = open(&disk);
    for i in 0..20 {
        assert_intact(&store.get(&s, &format!("m{i}")).unwrap().unwrap(), DIM);
    }
    assert!(
        store.get(&s, "lost").unwrap().is_none(),
        "never acknowledged, never synced"
    );
    assert!(store.status().quarantined.is_empty());
    store.remember(&s, memory("after", DIM)).unwrap();
}

#[test]
fn torn_tail_at_every_byte_offset_of_the_last_record() {
    for preallocate in [false, true] {
        torn_tail_at_every_offset(StoreOptions {
            wal_preallocate: preallocate,
            ..test_options()
        });
    }
}

fn torn_tail_at_every_offset(opts: StoreOptions) {
    let open = |disk: &FaultDisk| open_with(disk, opts.clone());
    // The record's length up to its last non-zero byte: in a preallocated (zero-filled) file,
    // a torn write that stops in the record's trailing zeros has written the whole record.
    let (record_len, complete_at) = {
        let disk = FaultDisk::new();
        let store = open(&disk);
        let s = sid("s");
        store.create_space(&s, DIM as u32).unwrap();
        store.remember(&s, memory("m0", DIM)).unwrap();
        store.remember(&s, memory("last", DIM)).unwrap();
        let bytes = disk.file_bytes(&wal_files(&disk)[0]).unwrap();
        let rec = scan_wal_file(&bytes, true, 1 << 20).records.pop().unwrap();
        let (start, len) = (rec.offset as usize, rec.len as usize);
        let nonzero = bytes[start..start + len]
            .iter()
            .rposition(|&b| b != 0)
            .unwrap()
            + 1;
        // Appending, a record is complete only with all its bytes.
        (len, if opts.wal_preallocate { nonzero } else { len })
    };
    assert!(record_len > 100);
    for keep in 0..=record_len {
        let disk = FaultDisk::new();
        let s = sid("s");
        {
            let store = open(&disk);
            store.create_space(&s, DIM as u32).unwrap();
            store.remember(&s, memory("m0", DIM)).unwrap();
            disk.set_torn_tail(Some(keep));
            disk.fail_syncs(1);
            assert!(store.remember(&s, memory("last", DIM)).is_err());
        }
        disk.power_cut();
        disk.clear_faults();
        {
            let store = open(&disk);
            let status = store.status();
            assert!(
                status.quarantined.is_empty(),
                "keep {keep}: a torn tail is not quarantined"
            );
            // A complete record whose fsync failed may survive intact; anything less is cut.
            let last = store.get(&s, "last").unwrap();
            if keep < complete_at {
                assert!(
                    last.is_none(),
                    "keep {keep}: a partial record is never visible"
                );
                // Torn bytes are counted up to the last non-zero one (zeros are preallocation).
                let torn = status.recovery.torn_tail_bytes;
                if keep == 0 {
                    assert_eq!(torn, 0, "nothing of the record reached the disk");
                } else {
                    assert!(
                        torn >= 1 && torn <= keep as u64,
                        "keep {keep}: {torn} torn bytes"
                    );
                }
            } else {
                assert_intact(&last.unwrap(), DIM);
            }
            assert_intact(&store.get(&s, "m0").unwrap().unwrap(), DIM);
            store.remember(&s, memory("next", DIM)).unwrap();
        }
        let store = open(&disk);
        assert_intact(&store.get(&s, "next").unwrap().unwrap(), DIM);
        assert_intact(&store.get(&s, "m0").unwrap().unwrap(), DIM);
        assert_eq!(
            store.status().recovery.torn_tail_bytes,
            0,
            "keep {keep}: truncated once"
        );
    }
}

#[test]
fn bit_flip_in_a_middle_record_is_quarantined_and_later_records_kept() {
    let disk = FaultDisk::new();
    let s = sid("s");
    {
        let store = open(&disk);
        store.create_space(&s, DIM as u32).unwrap();
        for i in 0..5 {
            store.remember(&s, memory(&format!("m{i}"), DIM)).unwrap();
        }
    }
    let wal = wal_files(&disk).pop().unwrap();
    let bytes = disk.file_bytes(&wal).unwrap();
    let scan = scan_wal_file(&bytes, true, 1 << 20);
    // Records: the space creation, then m0..m4. Damage m2's record in its payload.
    let victim = &scan.records[3];
    disk.flip_bit(&wal, victim.offset + victim.len - 10, 3);
    for reopen in 0..2 {
        let store = open(&disk);
        for i in [0, 1, 3, 4] {
            assert_intact(&store.get(&s, &format!("m{i}")).unwrap().unwrap(), DIM);
        }
        assert!(store.get(&s, "m2").unwrap().is_none());
        let q = store.status().quarantined;
        assert_eq!(q.len(), 1, "reopen {reopen}: reported once: {q:?}");
        assert_eq!(q[0].offset, victim.offset);
        assert_eq!(q[0].len, victim.len);
        assert_eq!(q[0].space.as_deref(), Some("s"));
        assert!(q[0].reason.contains("checksum"), "{}", q[0].reason);
        assert_eq!(store.space_status(&s).unwrap().quarantined_records, 1);
        let saved = disk.file_bytes(&q[0].saved_to);
        if reopen == 0 {
            let saved = saved.expect("quarantined bytes saved");
            assert_eq!(saved.len() as u64, victim.len);
        }
    }
}

#[test]
fn fsync_failure_latches_the_wal_until_reopen() {
    let disk = FaultDisk::new();
    let s = sid("s");
    {
        let store = open(&disk);
        store.create_space(&s, DIM as u32).unwrap();
        store.remember(&s, memory("ok", DIM)).unwrap();
        disk.fail_syncs(1);
        let err = store.remember(&s, memory("fails", DIM)).unwrap_err();
        assert!(matches!(err, StorageError::Latched(_)), "{err}");
        // The disk works again, but the page cache can no longer be trusted: still refused.
        let err = store.remember(&s, memory("refused", DIM)).unwrap_err();
        assert!(matches!(err, StorageError::Latched(_)), "{err}");
        assert!(err.to_string().contains("reopen"), "{err}");
        assert!(store.status().latched.is_some());
        // Reads go on.
        assert_intact(&store.get(&s, "ok").unwrap().unwrap(), DIM);
    }
    let store = open(&disk);
    assert!(store.status().latched.is_none());
    store.remember(&s, memory("again", DIM)).unwrap();
    assert_intact(&store.get(&s, "ok").unwrap().unwrap(), DIM);
    assert!(store.get(&s, "refused").unwrap().is_none());
}

#[test]
fn failed_write_latches_too() {
    let disk = FaultDisk::new();
    let s = sid("s");
    let store = open(&disk);
    store.create_space(&s, DIM as u32).unwrap();
    disk.fail_writes_after(Some(10));
    assert!(store.remember(&s, memory("torn", DIM)).is_err());
    disk.clear_faults();
    assert!(matches!(
        store.remember(&s, memory("x", DIM)),
        Err(StorageError::Latched(_))
    ));
    drop(store);
    disk.power_cut();
    let store = open(&disk);
    assert!(store.get(&s, "torn").unwrap().is_none());
    store.remember(&s, memory("x", DIM)).unwrap();
}

/// The expected state of one id after acknowledged operations: `Some(true)` present,
/// `Some(false)` absent; ids whose last operation failed may be either (`None`).
type Model = HashMap<String, Option<bool>>;

fn check(store: &Store, s: &engram_core::SpaceId, model: &Model, ctx: &str) {
    for (id, want) in model {
        let got = store.get(s, id).unwrap();
        if let Some(m) = &got {
            assert_intact(m, DIM);
        }
        if let Some(want) = want {
            assert_eq!(got.is_some(), *want, "{ctx}: {id}");
        }
    }
    let mut n = 0;
    store
        .for_each(s, |m| {
            assert_intact(&m, DIM);
            assert!(model.contains_key(m.id.as_str()), "{ctx}: unknown {}", m.id);
            n += 1;
        })
        .unwrap();
    let certain = model.values().filter(|v| **v == Some(true)).count();
    assert!(n >= certain, "{ctx}: {n} memories, {certain} acknowledged");
}

#[test]
fn power_cuts_at_random_points_during_writes_and_compaction() {
    let scenarios: u64 = std::env::var("ENGRAM_POWER_CUT_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    for seed in 0..scenarios {
        let opts = StoreOptions {
            max_segments_per_space: 2,
            wal_preallocate: seed % 2 == 1,
            ..test_options()
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let disk = FaultDisk::new();
        let s = sid("s");
        let mut model: Model = HashMap::new();
        open_with(&disk, opts.clone())
            .create_space(&s, DIM as u32)
            .unwrap();
        for round in 0..4 {
            let ctx = format!("seed {seed} round {round}");
            let store = open_with(&disk, opts.clone());
            check(&store, &s, &model, &ctx);
            // Somewhere in this round's bytes, the power goes.
            disk.fail_writes_after(Some(rng.gen_range(0..40_000)));
            if rng.gen_bool(0.3) {
                disk.set_torn_tail(Some(rng.gen_range(0..200)));
            }
            let mut dead = false;
            for _ in 0..60 {
                let id = format!("k{}", rng.gen_range(0..80));
                let kind = rng.gen_range(0..10);
                let result = match kind {
                    0..=5 => store.remember(&s, memory(&id, DIM)).map(|_| Some(true)),
                    6 | 7 => store.forget(&s, &mid(&id)).map(|_| Some(false)),
                    8 => store.compact().map(|_| None),
                    _ => store.merge_all().map(|_| None),
                };
                match result {
                    Ok(Some(present)) => {
                        model.insert(id, Some(present));
                    }
                    Ok(None) => {}
                    Err(_) => {
                        // The operation's outcome is unknown; the id may be either way.
                        if kind < 8 {
                            model.insert(id, None);
                        }
                        dead = true;
                        break;
                    }
                }
            }
            drop(store);
            disk.power_cut();
            disk.clear_faults();
            if !dead {
                continue;
            }
            let store = open_with(&disk, opts.clone());
            check(&store, &s, &model, &format!("{ctx} after the cut"));
            // Settle uncertain ids to what survived, so later rounds check them exactly.
            for (id, v) in model.iter_mut() {
                if v.is_none() {
                    *v = Some(store.get(&s, id).unwrap().is_some());
                }
            }
        }
    }
}
