//! The HTTP suite: starts the real `engram` server (the binary beside this one, built if
//! missing) on a free port and a temporary directory, and drives it over HTTP from this
//! process: single remembers from 64 concurrent clients, batches of 100, and recall latency
//! once the server holds 100,000 memories (20,000 with `--quick`) and has indexed them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde_json::{json, Value};

use crate::dataset::{Clusters, Shape};
use crate::util::{self, compare, report, Better, DIM};

pub(crate) struct Config {
    warmup: Duration,
    window: Duration,
    recall_memories: usize,
    recall_queries: usize,
}

impl Config {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(3),
                recall_memories: 20_000,
                recall_queries: 300,
            }
        } else {
            Self {
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(10),
                recall_memories: 100_000,
                recall_queries: 2_000,
            }
        }
    }
}

/// The `engram` binary beside this one; built with cargo when missing.
pub(crate) fn engram_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating engram-bench")?;
    let exe = me.with_file_name("engram");
    if !exe.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let release = me
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "release");
        println!("# building the engram binary (it is not beside engram-bench)");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bin", "engram"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build --bin engram")?;
        if !status.success() || !exe.exists() {
            bail!(
                "the engram binary is missing at {}; build it with cargo build --release --bin engram",
                exe.display()
            );
        }
    }
    Ok(exe)
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub base: String,
}

impl Server {
    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("killing the server")?;
        self.child.wait().context("waiting for the killed server")?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM for a clean stop, then make sure.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server(exe: &Path, dir: &Path) -> Result<Server> {
    let mut child = Command::new(exe)
        .args(["start", "--port", "0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the listening line")?;
    let Some(base) = line.trim().strip_prefix("engram listening on ") else {
        let _ = child.kill();
        bail!("the server did not start: {line:?}");
    };
    Ok(Server {
        base: base.to_string(),
        child,
    })
}

/// The JSON of a memory with id `m{n}`: `rest` (content, embedding, flags) is serialised once
/// per pooled memory, so the client's CPU goes to HTTP, not to formatting floats.
fn memory_body(n: u64, rest: &str) -> String {
    format!("{{\"id\":\"m{n}\",{rest}")
}

/// A pool of serialised memory bodies without their id (see [`memory_body`]).
pub(crate) fn body_pool(clusters: &Clusters, seed: u64, auto_link: bool) -> Arc<Vec<String>> {
    let mut rng = util::rng(seed);
    Arc::new(
        (0..512)
            .map(|i| {
                let v = json!({
                    "content": util::content(&mut rng, i),
                    "embedding": clusters.point(&mut rng),
                    "auto_link": auto_link,
                })
                .to_string();
                v[1..].to_string()
            })
            .collect(),
    )
}

/// Makes the (JSON) body of request `n`.
pub(crate) type BodyFn = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// CPU seconds used so far by the threads of process `pid`: (the background indexer's, all
/// the others'). Zero where /proc is missing.
pub(crate) fn cpu_seconds(pid: u32) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut indexer, mut rest) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, 0.0);
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ...": utime and stime are fields 14 and 15.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: f64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum())
            .unwrap_or(0.0);
        if comm.starts_with("engram-indexer") {
            indexer += ticks / tick;
        } else {
            rest += ticks / tick;
        }
    }
    (indexer, rest)
}

/// Latencies and throughput of one fixed-time load, and the server's CPU time per item in
/// the measured window (the indexer's apart).
pub(crate) struct Load {
    pub(crate) per_s: f64,
    pub(crate) latencies_ns: Vec<u64>,
    pub(crate) cpu_us_per_item: f64,
    indexer_cpu_us_per_item: f64,
    /// This process's (the load generator's) CPU time per item.
    client_cpu_us_per_item: f64,
}

impl Load {
    pub(crate) fn p_ms(&self, p: f64) -> f64 {
        util::percentile(&self.latencies_ns, p) as f64 / 1e6
    }
}

/// `clients` tasks each post `body(n)` to `path` in a loop; counts `per_request` items per
/// 201. Warm-up, then a measured window.
pub(crate) fn load(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    server_pid: u32,
    url: String,
    clients: usize,
    per_request: usize,
    body: BodyFn,
) -> Result<Load> {
    // One HTTP/1.1 connection per client on hyper directly: the load generator shares the
    // two cores with the server, and reqwest's layers (pool, redirects, decoding) cost more
    // CPU a request than the connection itself.
    let uri: hyper::Uri = url.parse()?;
    let authority = uri
        .authority()
        .context("the url has no host:port")?
        .to_string();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (uri, authority, body) = (uri.clone(), authority.clone(), body.clone());
            let (next, done, measuring, stop) =
                (next.clone(), done.clone(), measuring.clone(), stop.clone());
            rt.spawn(async move {
                let stream = tokio::net::TcpStream::connect(&authority).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let req = hyper::Request::post(uri.clone())
                        .header(hyper::header::HOST, &authority)
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body(n))))?;
                    let measured = measuring.load(Ordering::Relaxed);
                    let t0 = Instant::now();
                    sender.ready().await?;
                    let r = sender.send_request(req).await?;
                    let status = r.status().as_u16();
                    let text = http_body_util::BodyExt::collect(r.into_body())
                        .await?
                        .to_bytes();
                    if status != 201 {
                        anyhow::bail!(
                            "{uri} answered {status}: {}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                    done.fetch_add(per_request as u64, Ordering::Relaxed);
                    if measured && !stop.load(Ordering::Relaxed) {
                        lat.push(t0.elapsed().as_nanos() as u64);
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(cfg.warmup);
    let d0 = done.load(Ordering::Relaxed);
    let c0 = cpu_seconds(server_pid);
    let own0 = cpu_seconds(std::process::id());
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(cfg.window);
    let d1 = done.load(Ordering::Relaxed);
    let c1 = cpu_seconds(server_pid);
    let own1 = cpu_seconds(std::process::id());
    let window = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(rt.block_on(t)??);
    }
    all.sort_unstable();
    anyhow::ensure!(!all.is_empty(), "no request completed in the window");
    let items = (d1 - d0).max(1) as f64;
    Ok(Load {
        per_s: (d1 - d0) as f64 / window.as_secs_f64(),
        latencies_ns: all,
        cpu_us_per_item: (c1.1 - c0.1) * 1e6 / items,
        indexer_cpu_us_per_item: (c1.0 - c0.0) * 1e6 / items,
        client_cpu_us_per_item: (own1.1 - own0.1) * 1e6 / items,
    })
}

/// A gauge or counter's value from the Prometheus text.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn run(quick: bool) -> Result<()> {
    let cfg = Config::new(quick);
    let parts = util::selected_parts(&[
        "remember",
        "remember-nolink",
        "batch",
        "batch-nolink",
        "recall",
        "restart",
        "ingest",
        "spreads",
    ])?;
    let exe = engram_binary()?;
    let root = tempfile::Builder::new()
        .prefix("engram-bench-http-")
        .tempdir_in(util::bench_root())?;
    println!(
        "# engram-bench http suite, {} mode, on {}",
        if quick { "quick" } else { "full" },
        util::machine_description()
    );
    // Parts that start servers of their own need no shared one.
    if parts
        .iter()
        .all(|p| ["restart", "ingest", "spreads"].contains(&p.as_str()))
    {
        return after_recall(&parts, quick);
    }
    let server = start_server(&exe, root.path())?;
    println!(
        "# server {} ({}), data in {}",
        server.base,
        exe.display(),
        root.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rng = util::rng(9);
    let clusters = Arc::new(Clusters::new(&mut rng, Shape::realistic(DIM)));

    // Single remembers, 64 clients, 768-d embeddings given: auto-linking on (the default),
    // then off (what the rest of the write path costs).
    let remember_runs: Vec<bool> = [("remember", true), ("remember-nolink", false)]
        .into_iter()
        .filter(|(name, _)| parts.iter().any(|p| p == name))
        .map(|(_, auto)| auto)
        .collect();
    for auto_link in remember_runs {
        let pool = body_pool(&clusters, 11, auto_link);
        let space = if auto_link { "single" } else { "single-nolink" };
        let single = load(
            &rt,
            &cfg,
            server.child.id(),
            format!("{}/api/v1/memories/remember?space={space}", server.base),
            64,
            1,
            Arc::new(move |n| memory_body(n, &pool[n as usize % pool.len()])),
        )?;
        println!(
            "# remember: 64 clients, {DIM}-d, auto-link {}: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} requests; server CPU {:.0} µs per memory (+ {:.0} µs in the indexer), client {:.0} µs",
            if auto_link { "on" } else { "off" },
            single.p_ms(50.0),
            single.p_ms(99.0),
            single.p_ms(100.0),
            single.latencies_ns.len(),
            single.cpu_us_per_item,
            single.indexer_cpu_us_per_item,
            single.client_cpu_us_per_item
        );
        if auto_link {
            report("http_remember_ops_per_s", single.per_s, "ops/s");
            report("http_remember_p99_ms", single.p_ms(99.0), "ms");
            compare(
                "http_remember_p99_ms",
                single.p_ms(99.0),
                "ms",
                Better::Lower,
                None,
                Some(10.0),
            );
        } else {
            report("http_remember_ops_per_s_no_autolink", single.per_s, "ops/s");
            report("http_remember_p99_ms_no_autolink", single.p_ms(99.0), "ms");
        }
    }

    // Batches of 100, 8 clients, auto-linking on (the default), then off.
    let batch_runs: Vec<bool> = [("batch", true), ("batch-nolink", false)]
        .into_iter()
        .filter(|(name, _)| parts.iter().any(|p| p == name))
        .map(|(_, auto)| auto)
        .collect();
    for auto_link in batch_runs {
        let pool = body_pool(&clusters, 12, auto_link);
        let space = if auto_link { "batch" } else { "batch-nolink" };
        let b = load(
            &rt,
            &cfg,
            server.child.id(),
            format!("{}/api/v1/memories/batch?space={space}", server.base),
            8,
            100,
            Arc::new(move |n| {
                let ms: Vec<String> = (0..100)
                    .map(|i| {
                        let k = n * 100 + i;
                        memory_body(k, &pool[k as usize % pool.len()])
                    })
                    .collect();
                format!("{{\"memories\":[{}]}}", ms.join(","))
            }),
        )?;
        println!(
            "# batch of 100, 8 clients, auto-link {}: {:.0} memories/s, request p50 {:.1} ms, p99 {:.1} ms; server CPU {:.0} µs per memory (+ {:.0} µs in the indexer), client {:.0} µs",
            if auto_link { "on" } else { "off" },
            b.per_s,
            b.p_ms(50.0),
            b.p_ms(99.0),
            b.cpu_us_per_item,
            b.indexer_cpu_us_per_item,
            b.client_cpu_us_per_item
        );
        if auto_link {
            report("http_batch_memories_per_s", b.per_s, "1/s");
            compare(
                "http_batch_memories_per_s",
                b.per_s,
                "1/s",
                Better::Higher,
                None,
                Some(40_000.0),
            );
        } else {
            report("http_batch_memories_per_s_no_autolink", b.per_s, "1/s");
        }
    }

    // Recall at N memories: load them (batches, no auto-link), wait for flushes and indexes.
    if !parts.iter().any(|p| p == "recall") {
        drop(server);
        return after_recall(&parts, quick);
    }
    let n = cfg.recall_memories;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let url = format!("{}/api/v1/memories/batch?space=recall", server.base);
    let started = Instant::now();
    let mut stored: Vec<Vec<f32>> = Vec::with_capacity(n);
    let mut rng = util::rng(77);
    for chunk in 0..n.div_ceil(1000) {
        let mut ms = Vec::with_capacity(1000);
        for i in 0..1000.min(n - chunk * 1000) {
            let id = (chunk * 1000 + i) as u64;
            let e = clusters.point(&mut rng);
            ms.push(json!({"id": format!("r{id}"), "content": util::content(&mut rng, id), "embedding": e, "auto_link": false}));
            stored.push(e);
        }
        let r = client.post(&url).json(&json!({ "memories": ms })).send()?;
        if r.status().as_u16() != 201 {
            bail!("loading: {}", r.text()?);
        }
    }
    println!(
        "# recall: loaded {n} memories in {:.1} s; waiting for flushes and indexes",
        started.elapsed().as_secs_f64()
    );
    let wait = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = client
            .get(format!("{}/metrics", server.base))
            .send()?
            .text()?;
        let pending = metric(&text, "engram_index_pending_segments").unwrap_or(0.0);
        let memtable = text
            .lines()
            .find(|l| l.starts_with("engram_space_memtable_bytes{space=\"recall\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if pending == 0.0 && memtable == 0.0 {
            break;
        }
        if wait.elapsed() > Duration::from_secs(900) {
            bail!("the server had not indexed everything after 15 minutes");
        }
    }
    println!(
        "# recall: flushed and indexed {:.1} s after loading",
        wait.elapsed().as_secs_f64()
    );
    let url = format!("{}/api/v1/memories/recall?space=recall", server.base);
    let mut lat = Vec::with_capacity(cfg.recall_queries);
    for q in 0..cfg.recall_queries {
        let target = &stored[rng.gen_range(0..stored.len())];
        let cue = clusters.near(&mut rng, target, 0.3);
        let t0 = Instant::now();
        let r = client
            .post(&url)
            .json(&json!({"embedding": cue, "max_results": 10}))
            .send()?;
        let status = r.status().as_u16();
        let v: Value = r.json()?;
        lat.push(t0.elapsed().as_nanos() as u64);
        if status != 200
            || v["memories"]["vivid"]
                .as_array()
                .is_none_or(|a| a.is_empty())
        {
            bail!("recall {q}: {status} {v}");
        }
    }
    lat.sort_unstable();
    let p = |x: f64| util::percentile(&lat, x) as f64 / 1e6;
    println!(
        "# recall over HTTP at {n} memories (hybrid, max_results 10, one client): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p(50.0),
        p(99.0),
        p(100.0)
    );
    report("http_recall_p99_ms", p(99.0), "ms");
    compare(
        "http_recall_p99_ms",
        p(99.0),
        "ms",
        Better::Lower,
        None,
        Some(5.0),
    );
    drop(server);
    after_recall(&parts, quick)
}

/// The parts that start servers of their own.
fn after_recall(parts: &[String], quick: bool) -> Result<()> {
    if parts.iter().any(|p| p == "restart") {
        crate::restart::run(quick)?;
    }
    if parts.iter().any(|p| p == "ingest") {
        crate::ingest::run(quick)?;
    }
    if parts.iter().any(|p| p == "spreads") {
        crate::spreads::run(quick)?;
    }
    Ok(())
}
