//! Engram's whole-system benchmarks. Each figure is printed as one `BENCH <name> <value> <unit>`
//! line; every other line is for humans and never starts with `BENCH`.
//!
//! Usage: `engram-bench <suite> [--quick]`.

mod cluster;
mod dataset;
mod http;
mod ingest;
mod placement;
mod recall;
mod replication;
mod restart;
mod spreads;
mod stages;
mod storage;
mod text;
mod util;

use std::process::ExitCode;

/// The allocator Engram's binaries ship with: the write path allocates a few KB per memory and
/// memtables grow quickly; glibc's malloc spends most of that in the kernel growing its heaps
/// (mprotect, page faults), mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: engram-bench <suite> [--quick]
suites:
  storage   the storage engine: durable writes, recovery, gets, memory, many spaces
  recall    similarity kernels, flat scan, the HNSW index (recall@10, latency)
  http      the real server over HTTP: remember, batch, recall at 100,000 memories
  placement cluster placement: balance, movement, lookups, replicas, rebalance, routing
  text      recall of real text (Debian package descriptions by synopsis): BM25, dense
            (hashing, all-MiniLM-L6-v2) and hybrid hit@1/hit@5; embedding speed
options:
  --quick   a short run (about a minute) instead of the full one (several minutes)
environment:
  ENGRAM_BENCH_DIR    where benchmark data is written (default: the temporary directory)
  ENGRAM_BENCH_PARTS  comma-separated parts of the suite to run (default: all; the suite's
                      error message lists them)";

/// The suites this build runs.
const SUITES: &[&str] = &[
    "storage",
    "recall",
    "http",
    "placement",
    "text",
    "replication",
    "cluster",
];

fn main() -> ExitCode {
    // As the server does: see engram_storage::process.
    if let Err(e) = engram_storage::process::disable_transparent_huge_pages() {
        eprintln!("warning: could not turn off transparent huge pages: {e}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut quick = false;
    let mut suite = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            a if a.starts_with('-') => {
                eprintln!("error: unknown option {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
            a if suite.is_none() => suite = Some(a.to_string()),
            a => {
                eprintln!("error: unexpected argument {a:?} (one suite per run)\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(suite) = suite else {
        eprintln!("error: no suite given\n{USAGE}");
        return ExitCode::from(2);
    };
    let result = match suite.as_str() {
        "storage" => storage::run(quick),
        "recall" => recall::run(quick),
        "http" => http::run(quick),
        "placement" => placement::run(quick),
        "text" => text::run(quick),
        "replication" => replication::run(quick),
        "cluster" => cluster::run(quick),
        s => {
            eprintln!(
                "error: unknown suite {s:?} (available: {})\n{USAGE}",
                SUITES.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: suite {suite} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
