//! Crash test with real processes: a child process (this test binary, re-executed) writes
//! concurrently and reports every acknowledgement on stdout; the parent SIGKILLs it at a random
//! moment, reopens the store and checks that every acknowledged write is there and intact, that
//! every acknowledged delete holds, and that nothing unacknowledged is half-visible.
//!
//! Each data directory goes through several rounds (kill, verify, restart a child on the same
//! data), so recovery of an already recovered store is exercised too.
//!
//! Environment:
//! - `ENGRAM_CRASH_SCENARIOS`: number of kill rounds (default 50; a nightly run can use thousands).
//! - `ENGRAM_CRASH_BASE_SEED`: base seed of the scenarios (default fixed).
//! - `ENGRAM_CRASH_ONLY_DIR`: run only this directory index (to reproduce a failure).
//!
//! Child protocol (one whole line per event, written and flushed under the stdout lock):
//! `READY`, `PUT <space> <id>` (before a remember), `PUTB <space> <id> <id> <id>` (before a
//! batch), `ACK <space> <id>` (after the write returned), `FORGET <space> <id>` (before a
//! forget), `DEL <space> <id>` (after the forget returned), `ERR <message>`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use engram_core::Memory;
use engram_storage::{StorageError, Store, StoreOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "ENGRAM_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "ENGRAM_CRASH_SEED";
const DIM: usize = 32;
const SPACES: [&str; 3] = ["c0", "c1", "c2"];
const WRITERS: usize = 8;
const ROUNDS_PER_DIR: usize = 5;
const DEFAULT_SCENARIOS: usize = 50;
const DEFAULT_BASE_SEED: u64 = 0x00E6_6A3C_4A54;
/// A child that is somehow never killed stops by itself after this long.
const CHILD_SELF_DESTRUCT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Child
// ---------------------------------------------------------------------------------------------

/// Options that keep the engine busy: WAL rolls, idle flushes, checkpoints, merges and space
/// releases happen all the time while the writers run.
fn child_seed() -> Option<u64> {
    std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
}

fn child_options() -> StoreOptions {
    StoreOptions {
        wal_segment_bytes: 256 << 10,
        max_record_bytes: 64 << 10,
        wal_flush_bytes: 1 << 20,
        memtable_flush_bytes: 128 << 10,
        idle_flush_after: Duration::from_millis(2),
        max_segments_per_space: 3,
        max_open_spaces: 2,
        background_compaction: true,
        compaction_tick: Duration::from_millis(2),
        // Children with odd seeds write preallocated WAL files, even ones append: the same
        // directory sees both across its rounds.
        wal_preallocate: child_seed().is_some_and(|seed| seed % 2 == 1),
        ..Default::default()
    }
}

/// The parent reads with the same limits but without the compactor.
fn parent_options() -> StoreOptions {
    StoreOptions {
        background_compaction: false,
        ..child_options()
    }
}

/// Writes whole lines to stdout and flushes them before returning. If the parent is gone (the
/// pipe is closed) the child stops.
fn emit<S: AsRef<str>>(lines: &[S]) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(l.as_ref());
        buf.push('\n');
    }
    if out.write_all(buf.as_bytes()).is_err() || out.flush().is_err() {
        std::process::exit(0);
    }
}

fn child_fail(msg: String) -> ! {
    emit(&[format!("ERR {}", msg.replace('\n', " | "))]);
    std::process::exit(2);
}

/// The child: runs only when re-executed by the parent with `ENGRAM_CRASH_CHILD_DIR` set.
#[test]
#[ignore = "helper process of sigkill_at_random_moments_loses_no_acknowledged_write"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    std::panic::set_hook(Box::new(|info| {
        child_fail(format!("panic: {info}"));
    }));
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_SELF_DESTRUCT);
        std::process::exit(3);
    });
    let store = match Store::open_dir(Path::new(&dir), child_options()) {
        Ok(s) => Arc::new(s),
        Err(e) => child_fail(format!("open: {e}")),
    };
    for name in SPACES {
        match store.create_space(&sid(name), DIM as u32) {
            Ok(_) | Err(StorageError::SpaceExists(_)) => {}
            Err(e) => child_fail(format!("create_space {name}: {e}")),
        }
    }
    // The harness printed "test crash_child ... " without a newline: start a fresh line.
    emit(&["", "READY"]);
    let writers: Vec<JoinHandle<()>> = (0..WRITERS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || child_writer(&store, seed, t))
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
    child_fail("writers stopped".into());
}

fn child_writer(store: &Store, seed: u64, t: usize) -> ! {
    let spaces: Vec<_> = SPACES.iter().map(|s| sid(s)).collect();
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t as u64);
    // Acknowledged and not yet forgotten: (space index, id).
    let mut acked: Vec<(usize, String)> = Vec::new();
    for i in 0u64.. {
        let sp = (t + i as usize) % SPACES.len();
        let space = SPACES[sp];
        if i % 50 == 49 {
            let ids: Vec<String> = (0..3).map(|k| format!("s{seed}-t{t}-{i}-b{k}")).collect();
            emit(&[format!("PUTB {space} {}", ids.join(" "))]);
            let batch: Vec<Memory> = ids.iter().map(|id| memory(id, DIM)).collect();
            if let Err(e) = store.remember_batch(&spaces[sp], batch) {
                child_fail(format!("remember_batch {space} {ids:?}: {e}"));
            }
            let acks: Vec<String> = ids.iter().map(|id| format!("ACK {space} {id}")).collect();
            emit(&acks);
            acked.extend(ids.into_iter().map(|id| (sp, id)));
        } else {
            let id = format!("s{seed}-t{t}-{i}");
            emit(&[format!("PUT {space} {id}")]);
            if let Err(e) = store.remember(&spaces[sp], memory(&id, DIM)) {
                child_fail(format!("remember {space} {id}: {e}"));
            }
            emit(&[format!("ACK {space} {id}")]);
            acked.push((sp, id));
        }
        if i % 5 == 4 && !acked.is_empty() {
            let k = rng.gen_range(0..acked.len());
            let (sp, id) = acked.swap_remove(k);
            let space = SPACES[sp];
            emit(&[format!("FORGET {space} {id}")]);
            match store.forget(&spaces[sp], &mid(&id)) {
                Ok(true) => emit(&[format!("DEL {space} {id}")]),
                Ok(false) => child_fail(format!(
                    "forget {space} {id}: an acknowledged memory was not found"
                )),
                Err(e) => child_fail(format!("forget {space} {id}: {e}")),
            }
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------------------------

/// What the children (and the parent) reported about one memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A write was started, never acknowledged: it may or may not be there.
    Unacked,
    /// Acknowledged: must be there.
    Acked,
    /// Acknowledged, then a forget was started but never acknowledged.
    Forgetting,
    /// The forget was acknowledged: must be gone.
    Deleted,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// For an uncertain state: what the first recovery showed. Later recoveries must agree
    /// (nobody touches the memory any more).
    observed: Option<bool>,
}

/// Everything known about one data directory, accumulated over its rounds.
#[derive(Default)]
struct Ledger {
    /// (space, id) -> state.
    entries: BTreeMap<(String, String), Entry>,
    /// Batches: (space, ids); all or nothing.
    batches: Vec<(String, Vec<String>)>,
    acks: usize,
    dels: usize,
}

impl Ledger {
    fn put(&mut self, space: &str, id: &str) {
        self.entries
            .entry((space.to_string(), id.to_string()))
            .or_insert(Entry {
                state: State::Unacked,
                observed: None,
            });
    }

    fn set(&mut self, space: &str, id: &str, from: &[State], to: State, ctx: &str) {
        let e = self
            .entries
            .get_mut(&(space.to_string(), id.to_string()))
            .unwrap_or_else(|| panic!("{ctx}: {to:?} of {space}/{id}, which was never written"));
        assert!(
            from.contains(&e.state),
            "{ctx}: {to:?} of {space}/{id} in state {:?}",
            e.state
        );
        e.state = to;
        e.observed = None;
    }

    /// Applies the complete lines of one child run, in order.
    fn apply_lines(&mut self, lines: &[String], ctx: &str) {
        for line in lines {
            let mut w = line.split(' ');
            match w.next() {
                Some("PUT") => {
                    let (s, id) = (w.next().unwrap(), w.next().unwrap());
                    self.put(s, id);
                }
                Some("PUTB") => {
                    let s = w.next().unwrap();
                    let ids: Vec<String> = w.map(str::to_string).collect();
                    for id in &ids {
                        self.put(s, id);
                    }
                    self.batches.push((s.to_string(), ids));
                }
                Some("ACK") => {
                    let (s, id) = (w.next().unwrap(), w.next().unwrap());
                    self.set(s, id, &[State::Unacked], State::Acked, ctx);
                    self.acks += 1;
                }
                Some("FORGET") => {
                    let (s, id) = (w.next().unwrap(), w.next().unwrap());
                    self.set(s, id, &[State::Acked], State::Forgetting, ctx);
                }
                Some("DEL") => {
                    let (s, id) = (w.next().unwrap(), w.next().unwrap());
                    self.set(s, id, &[State::Forgetting], State::Deleted, ctx);
                    self.dels += 1;
                }
                Some("ERR") => panic!("{ctx}: the child reported an error: {line}"),
                // READY and the test harness's own output.
                _ => {}
            }
        }
    }
}

/// Kills and reaps the child however the parent leaves the scope.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
    )
}

/// Runs one child on `dir` for `sleep`, SIGKILLs it, and returns its complete stdout lines.
fn run_child_round(dir: &Path, seed: u64, sleep: Duration, ctx: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("current test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{ctx}: cannot start the child: {e}"));
    let mut guard = ChildGuard(Some(child));
    let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // A line cut by the kill does not count.
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                        lines.push(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
            }
        }
        lines
    });
    std::thread::sleep(sleep);
    let exited_early = guard.0.as_mut().unwrap().try_wait().ok().flatten();
    guard.kill();
    let lines = reader.join().expect("stdout reader thread");
    if let Some(status) = exited_early {
        let errs: Vec<&String> = lines.iter().filter(|l| l.starts_with("ERR")).collect();
        panic!("{ctx}: the child exited by itself ({status}) before the kill; errors: {errs:?}");
    }
    lines
}

/// Reopens the store and checks it against the ledger; then checks that it accepts a write.
fn verify(dir: &Path, ledger: &mut Ledger, parent_write: &str, ctx: &str) {
    let store = Store::open_dir(dir, parent_options())
        .unwrap_or_else(|e| panic!("{ctx}: reopening the store failed: {e}"));
    let status = store.status();
    assert!(
        status.quarantined.is_empty(),
        "{ctx}: a SIGKILL quarantined records: {:#?}",
        status.quarantined
    );
    assert!(status.latched.is_none(), "{ctx}: latched: {status:?}");

    // Everything present, per space; each must be intact and written by someone.
    let mut present: BTreeSet<(String, String)> = BTreeSet::new();
    for name in SPACES {
        let s = sid(name);
        if !store.space_exists(&s).unwrap() {
            continue;
        }
        let mut n = 0usize;
        store
            .for_each(&s, |m| {
                n += 1;
                let id = m.id.as_str().to_string();
                assert!(
                    ledger.entries.contains_key(&(name.to_string(), id.clone())),
                    "{ctx}: {name}/{id} is present but nobody ever wrote it there"
                );
                assert!(
                    m == memory(&id, DIM),
                    "{ctx}: {name}/{id} is not intact: {m:?}"
                );
                assert_intact(&m, DIM);
                assert!(
                    present.insert((name.to_string(), id.clone())),
                    "{ctx}: {name}/{id} is listed twice"
                );
            })
            .unwrap_or_else(|e| panic!("{ctx}: for_each {name}: {e}"));
        let st = store.space_status(&s).unwrap();
        assert_eq!(st.memories, n, "{ctx}: {name}: count vs for_each: {st:?}");
        assert_eq!(st.quarantined_records, 0, "{ctx}: {name}: {st:?}");
    }

    for ((space, id), e) in ledger.entries.iter_mut() {
        let is_present = present.contains(&(space.clone(), id.clone()));
        match e.state {
            State::Acked => {
                assert!(
                    is_present,
                    "{ctx}: acknowledged {space}/{id} is missing after recovery"
                );
                let m = store
                    .get(&sid(space), id)
                    .unwrap_or_else(|e| panic!("{ctx}: get {space}/{id}: {e}"))
                    .unwrap_or_else(|| panic!("{ctx}: get {space}/{id} finds nothing"));
                assert!(
                    m == memory(id, DIM),
                    "{ctx}: {space}/{id} not intact: {m:?}"
                );
            }
            State::Deleted => assert!(
                !is_present,
                "{ctx}: {space}/{id} is present although its forget was acknowledged"
            ),
            State::Unacked | State::Forgetting => match e.observed {
                None => e.observed = Some(is_present),
                Some(before) => assert_eq!(
                    before, is_present,
                    "{ctx}: unacknowledged {space}/{id} ({:?}) changed visibility between \
                     recoveries (present before: {before})",
                    e.state
                ),
            },
        }
    }

    for (space, ids) in &ledger.batches {
        let n = ids
            .iter()
            .filter(|id| present.contains(&(space.clone(), id.to_string())))
            .count();
        let touched = ids.iter().any(|id| {
            matches!(
                ledger.entries[&(space.clone(), id.clone())].state,
                State::Forgetting | State::Deleted
            )
        });
        assert!(
            touched || n == 0 || n == ids.len(),
            "{ctx}: batch {space} {ids:?} is half-visible: {n} of {} present",
            ids.len()
        );
    }

    // The recovered store accepts writes; what the parent writes must survive like the rest.
    let c0 = sid(SPACES[0]);
    match store.create_space(&c0, DIM as u32) {
        Ok(_) | Err(StorageError::SpaceExists(_)) => {}
        Err(e) => panic!("{ctx}: create_space after recovery: {e}"),
    }
    store
        .remember(&c0, memory(parent_write, DIM))
        .unwrap_or_else(|e| panic!("{ctx}: a write after recovery failed: {e}"));
    ledger.put(SPACES[0], parent_write);
    ledger.set(
        SPACES[0],
        parent_write,
        &[State::Unacked],
        State::Acked,
        ctx,
    );
    drop(store);
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let scenarios: usize = env_parse("ENGRAM_CRASH_SCENARIOS").unwrap_or(DEFAULT_SCENARIOS);
    let base_seed: u64 = env_parse("ENGRAM_CRASH_BASE_SEED").unwrap_or(DEFAULT_BASE_SEED);
    let only_dir: Option<usize> = env_parse("ENGRAM_CRASH_ONLY_DIR");
    let dirs = scenarios.div_ceil(ROUNDS_PER_DIR);
    let started = Instant::now();
    for d in 0..dirs {
        if only_dir.is_some_and(|o| o != d) {
            continue;
        }
        let rounds = ROUNDS_PER_DIR.min(scenarios - d * ROUNDS_PER_DIR);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let dir_seed = base_seed.wrapping_add(d as u64);
        let mut rng = SmallRng::seed_from_u64(dir_seed);
        let mut ledger = Ledger::default();
        let dir_started = Instant::now();
        for r in 0..rounds {
            let scenario = d * ROUNDS_PER_DIR + r;
            let child_seed = base_seed
                .wrapping_mul(1_000_003)
                .wrapping_add(scenario as u64);
            let sleep = Duration::from_millis(rng.gen_range(30..400));
            let ctx = format!(
                "scenario {scenario} (dir {d}, round {r}, child seed {child_seed}, kill after \
                 {sleep:?}; reproduce with ENGRAM_CRASH_BASE_SEED={base_seed} \
                 ENGRAM_CRASH_SCENARIOS={scenarios} ENGRAM_CRASH_ONLY_DIR={d})"
            );
            let lines = run_child_round(dir, child_seed, sleep, &ctx);
            ledger.apply_lines(&lines, &ctx);
            verify(dir, &mut ledger, &format!("parent-{child_seed}"), &ctx);
        }
        let parent_writes = rounds;
        assert!(
            ledger.acks > 0,
            "dir {d} (seed {dir_seed}): no child acknowledged any write in {rounds} rounds; the \
             child is broken (try running it by hand with {CHILD_DIR_ENV}=<dir>)"
        );
        let count = |s: State| ledger.entries.values().filter(|e| e.state == s).count();
        let unacked_present = ledger
            .entries
            .values()
            .filter(|e| e.observed == Some(true))
            .count();
        println!(
            "crash dir {d}: {rounds} rounds, {} acked writes, {} acked deletes, {} live, {} \
             unacked (present {unacked_present}), {} forgets in flight, {parent_writes} parent \
             writes, {:?}",
            ledger.acks,
            ledger.dels,
            count(State::Acked),
            count(State::Unacked),
            count(State::Forgetting),
            dir_started.elapsed()
        );
    }
    println!(
        "crash test: {scenarios} scenarios in {:?}",
        started.elapsed()
    );
}
