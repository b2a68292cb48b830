//! Helpers shared by the suites: data generation, percentiles, memory readings, timing and the
//! `BENCH <name> <value> <unit>` output.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engram_core::{Memory, MemoryId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Embedding dimension of every benchmark memory.
pub const DIM: usize = 768;

/// Approximate length of a memory's content, in bytes.
pub const CONTENT_LEN: usize = 200;

/// A fast, seeded generator (benchmarks are reproducible run to run).
pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// A random unit vector: uniform components in `[-1, 1)`, normalised.
pub fn unit_vector(rng: &mut SmallRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

const WORDS: &[&str] = &[
    "the", "user", "asked", "about", "a", "meeting", "on", "tuesday", "with", "project",
    "deadline", "coffee", "prefers", "notes", "remember", "travel", "berlin", "invoice", "budget",
    "review", "design", "memory", "agent", "tool", "result", "error", "fixed", "later", "morning",
    "call", "team", "plan",
];

/// About [`CONTENT_LEN`] bytes of text made of random words, starting with `n`.
pub fn content(rng: &mut SmallRng, n: u64) -> String {
    let mut s = String::with_capacity(CONTENT_LEN + 16);
    s.push_str("episode ");
    s.push_str(&n.to_string());
    s.push(':');
    while s.len() < CONTENT_LEN {
        s.push(' ');
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    s
}

/// The memory id `m{n}`.
pub fn memory_id(n: u64) -> MemoryId {
    MemoryId::new(format!("m{n}")).expect("m{n} is a valid memory id")
}

/// A memory with id `m{n}`, a random unit embedding and ~200 bytes of content.
pub fn memory(rng: &mut SmallRng, n: u64, dim: usize) -> Memory {
    Memory {
        id: memory_id(n),
        content: content(rng, n),
        embedding: unit_vector(rng, dim),
        confidence: 0.9,
        timestamp_us: now_us(),
        metadata: Default::default(),
        links: Vec::new(),
    }
}

/// Microseconds since the Unix epoch (the storage engine's, on the machine's clock).
pub use engram_storage::now_us;

/// Nearest-rank percentile (`p` in `[0, 100]`) of sorted values. Panics on an empty slice.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "percentile of no values");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `f` and returns its result with the time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// A field of `/proc/self/status` given in kB (`RssAnon`, `VmRSS`, ...).
pub fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The process's resident memory, in kB.
#[derive(Debug, Clone, Copy)]
pub struct MemUsage {
    pub rss_anon_kb: Option<u64>,
    pub vm_rss_kb: Option<u64>,
}

impl MemUsage {
    pub fn now() -> Self {
        Self {
            rss_anon_kb: proc_status_kb("RssAnon"),
            vm_rss_kb: proc_status_kb("VmRSS"),
        }
    }

    /// Growth of `RssAnon` since `before`, in kB (negative if it shrank).
    pub fn anon_growth_kb(&self, before: &MemUsage) -> Option<i64> {
        Some(self.rss_anon_kb? as i64 - before.rss_anon_kb? as i64)
    }

    /// Growth of `VmRSS` since `before`, in kB (negative if it shrank).
    pub fn rss_growth_kb(&self, before: &MemUsage) -> Option<i64> {
        Some(self.vm_rss_kb? as i64 - before.vm_rss_kb? as i64)
    }
}

/// CPU time and context switches of the whole process (every thread) so far.
#[derive(Debug, Clone, Copy)]
pub struct CpuUsage {
    pub user: Duration,
    pub system: Duration,
    pub voluntary_switches: i64,
    pub involuntary_switches: i64,
}

impl CpuUsage {
    pub fn now() -> Self {
        // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_SELF is always valid.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Self {
            user: tv(ru.ru_utime),
            system: tv(ru.ru_stime),
            voluntary_switches: ru.ru_nvcsw as i64,
            involuntary_switches: ru.ru_nivcsw as i64,
        }
    }

    /// A summary of the usage since `before` over `wall` time and `ops` operations.
    pub fn since(&self, before: &CpuUsage, wall: Duration, ops: u64) -> String {
        let user = (self.user - before.user).as_secs_f64();
        let sys = (self.system - before.system).as_secs_f64();
        let switches = (self.voluntary_switches - before.voluntary_switches)
            + (self.involuntary_switches - before.involuntary_switches);
        let ops = ops.max(1) as f64;
        format!(
            "CPU {:.2} cores (user {:.2}, system {:.2}), {:.1} us CPU and {:.1} context switches \
             per op",
            (user + sys) / wall.as_secs_f64(),
            user / wall.as_secs_f64(),
            sys / wall.as_secs_f64(),
            (user + sys) * 1e6 / ops,
            switches as f64 / ops
        )
    }
}

/// The load average over the last 1, 5 and 15 minutes (other work competing for the CPUs).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Hands freed heap memory back to the kernel, so that later heap growth shows up in RSS
/// instead of reusing pages freed by an earlier phase.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the kernel's page cache (after `sync`) when `/proc/sys/vm/drop_caches` is writable.
/// `Ok(())` when dropped, `Err(reason)` otherwise (nothing is attempted if the file cannot be
/// opened for writing).
pub fn drop_page_cache() -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .map_err(|e| format!("/proc/sys/vm/drop_caches is not writable ({e})"))?;
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    f.write_all(b"3")
        .map_err(|e| format!("writing /proc/sys/vm/drop_caches failed ({e})"))
}

/// Total size of the regular files directly in `dir`.
pub fn dir_file_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// The parts of a suite to run: `$ENGRAM_BENCH_PARTS` (comma-separated names from `all`), else
/// every part. An unknown name is an error that lists the valid ones.
pub fn selected_parts(all: &[&str]) -> anyhow::Result<Vec<String>> {
    let Some(v) = std::env::var_os("ENGRAM_BENCH_PARTS") else {
        return Ok(all.iter().map(|s| s.to_string()).collect());
    };
    let v = v.to_string_lossy();
    let mut parts = Vec::new();
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        anyhow::ensure!(
            all.contains(&p),
            "ENGRAM_BENCH_PARTS: unknown part {p:?} (this suite has: {})",
            all.join(", ")
        );
        parts.push(p.to_string());
    }
    Ok(parts)
}

/// Where benchmark data goes: `$ENGRAM_BENCH_DIR`, else the system temporary directory.
pub fn bench_root() -> PathBuf {
    std::env::var_os("ENGRAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Number of CPUs available to this process (what `nproc` prints).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A one-line description of the machine: CPUs, CPU model, memory.
pub fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or_else(
            || "unknown memory".to_string(),
            |kb| format!("{:.1} GB RAM", kb as f64 * 1024.0 / 1e9),
        );
    let thp = match engram_storage::process::transparent_huge_pages_disabled() {
        Some(true) => ", transparent huge pages off",
        Some(false) => ", transparent huge pages on",
        None => "",
    };
    format!("nproc={} ({model}), {mem_gb}{thp}", cpus())
}

fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Prints one figure as `BENCH <name> <value> <unit>`.
pub fn report(name: &str, value: f64, unit: &str) {
    println!("BENCH {name} {} {unit}", format_value(value));
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// Prints a human-readable comparison of a figure with its seed target and aim.
pub fn compare(
    name: &str,
    value: f64,
    unit: &str,
    better: Better,
    target: Option<f64>,
    aim: Option<f64>,
) {
    let (op, meets): (&str, fn(f64, f64) -> bool) = match better {
        Better::Higher => (">=", |v, t| v >= t),
        Better::Lower => ("<=", |v, t| v <= t),
    };
    let mut parts = Vec::new();
    if let Some(t) = target {
        let verdict = if meets(value, t) { "met" } else { "MISSED" };
        parts.push(format!("target {op} {} {unit}: {verdict}", format_value(t)));
    }
    if let Some(a) = aim {
        let verdict = if meets(value, a) { "met" } else { "not yet" };
        parts.push(format!("aim {op} {} {unit}: {verdict}", format_value(a)));
    }
    println!(
        "  vs seed: {name} = {} {unit}; {}",
        format_value(value),
        parts.join("; ")
    );
}

/// The rows of the `k` largest dot products with `q` over packed rows.
pub fn exact_top(flat: &[f32], q: &[f32], k: usize) -> Vec<u32> {
    let mut scores = vec![0.0f32; flat.len() / q.len()];
    engram_core::simd::dot_rows(q, flat, q.len(), &mut scores);
    let mut rows: Vec<u32> = (0..scores.len() as u32).collect();
    let by_score = |a: &u32, b: &u32| scores[*b as usize].total_cmp(&scores[*a as usize]);
    rows.select_nth_unstable_by(k - 1, by_score);
    rows.truncate(k);
    rows.sort_by(by_score);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn memories_are_valid() {
        let mut r = rng(1);
        let m = memory(&mut r, 42, DIM);
        assert_eq!(m.id.as_str(), "m42");
        m.validate(DIM).unwrap();
        assert!(m.content.len() >= CONTENT_LEN && m.content.len() < CONTENT_LEN + 20);
        let norm: f32 = m.embedding.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-3);
    }

    #[test]
    fn reads_proc_status() {
        assert!(proc_status_kb("VmRSS").is_some());
    }
}
