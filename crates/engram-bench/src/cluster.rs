//! The cluster suite: three real `engram` processes on loopback ports (data under one
//! temporary directory, a shared secret), and a single node in the same run as the baseline.
//!
//! Parts (`ENGRAM_BENCH_PARTS`):
//! - `write`: single remembers from 64 clients over HTTP (768-d embeddings, no automatic
//!   links) to a single node, then to the leader of a space of the three-node cluster:
//!   throughput and P99 of each, and their ratio (goal: the cluster at least 60 % of the
//!   single node, P99 at most the single node's + 2 ms).
//!   Before it, the same with 4 clients: the latency replication adds, without the queueing
//!   of a saturated server.
//! - `write_budget`: the same with each server process held to 0.4 cores (a cgroup; needs
//!   root): three nodes as three machines of the single node's size would be, rather than
//!   three processes sharing the one machine the single node has alone.
//! - `recall`: recall latency through the space's leader and through a node that forwards to
//!   it (one hop), and the share of requests the leader executed (goal 100 %).
//! - `failover`: SIGKILL the leader of a space, then write through another node until a write
//!   is acknowledged; 20 kills (5 with `--quick`), each followed by a restart of the killed
//!   node; P50 and P99 (goal P99 ≤ 3 s).
//! - `idle`: 10,000 spaces (1,000 with `--quick`) created through the API, then CPU and RSS of
//!   each node over 10 s of idleness.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::dataset::{Clusters, Shape};
use crate::http::{body_pool, engram_binary, load, start_server, Config, Server};
use crate::stages;
use crate::util::{self, compare, report, Better, DIM};

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Node {
    server: Option<Server>,
    http: u16,
    cluster: u16,
}

struct Cluster {
    exe: std::path::PathBuf,
    dir: std::path::PathBuf,
    secret: String,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(exe: &Path, dir: &Path) -> Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let secret = dir.join("secret");
        std::fs::write(&secret, "the cluster bench's secret, 32 bytes or more")?;
        let mut c = Cluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            secret: secret.display().to_string(),
            nodes: Vec::new(),
        };
        for _ in 0..3 {
            c.nodes.push(Node {
                server: None,
                http: free_port()?,
                cluster: free_port()?,
            });
        }
        for i in 0..3 {
            c.start_node(i)?;
        }
        c.wait_live()?;
        Ok(c)
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let join: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("127.0.0.1:{}", self.nodes[j].cluster))
            .collect();
        let mut cmd = Command::new(&self.exe);
        cmd.arg("start")
            .args(["--port", &n.http.to_string(), "--embedder", "hashing"])
            .arg("--data-dir")
            .arg(self.dir.join(NAMES[i]))
            .args(["--node-id", NAMES[i]])
            .args(["--cluster-addr", &format!("127.0.0.1:{}", n.cluster)])
            .args(["--cluster-secret-file", &self.secret]);
        if i > 0 {
            cmd.args(["--join", &join.join(",")]);
        }
        let mut child = cmd
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a node")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Some(base) = line.trim().strip_prefix("engram listening on ") else {
            let _ = child.kill();
            bail!("node {} did not start: {line:?}", NAMES[i]);
        };
        self.nodes[i].server = Some(Server {
            child,
            base: base.to_string(),
        });
        Ok(())
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http)
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].server.as_ref().map_or(0, |s| s.child.id())
    }

    fn wait_live(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = reqwest::blocking::get(format!("{}/api/v1/cluster/nodes", self.url(0)))
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| {
                    v["nodes"]
                        .as_array()
                        .is_some_and(|ns| ns.len() == 3 && ns.iter().all(|n| n["state"] == "live"))
                });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster never had three live nodes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node leading `space` (asked of node `via`), once it has one.
    fn leader(&self, via: usize, space: &str) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value =
                reqwest::blocking::get(format!("{}/api/v1/cluster/spaces/{space}", self.url(via)))?
                    .json()?;
            if let Some(name) = v["leader"]["id"].as_str() {
                if let Some(i) = NAMES.iter().position(|n| *n == name) {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("space {space} has no leader: {v}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn post(client: &reqwest::blocking::Client, url: &str, body: &Value, key: &str) -> Option<u16> {
    client
        .post(url)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

fn create_space(client: &reqwest::blocking::Client, url: &str, space: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = post(
            client,
            &format!("{url}/api/v1/spaces"),
            &json!({"id": space, "dimension": DIM}),
            &format!("create-{space}"),
        );
        if s == Some(201) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("space {space} was not created ({s:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU seconds of process `pid` so far, its exited threads included (`/proc/PID/stat`; the
/// per-thread sum would lose the threads tokio retires while idle).
fn process_cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|x| x.parse::<f64>().ok()).sum::<f64>()
    }) / tick
}

fn rss_kb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn run(quick: bool) -> Result<()> {
    let parts = util::selected_parts(&["write", "write_budget", "recall", "failover", "idle"])?;
    let exe = engram_binary()?;
    let root = tempfile::Builder::new()
        .prefix("engram-bench-cluster-")
        .tempdir_in(util::bench_root())?;
    println!(
        "# engram-bench cluster suite, {} mode, on {}",
        if quick { "quick" } else { "full" },
        util::machine_description()
    );
    let cfg = Config::new(quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut rng = util::rng(21);
    let clusters = Arc::new(Clusters::new(&mut rng, Shape::realistic(DIM)));
    let pool = body_pool(&clusters, 22, false);

    if parts.iter().any(|p| p == "write") {
        write_compare(&exe, root.path(), &rt, &cfg, &client, &pool, None)?;
    }
    if parts.iter().any(|p| p == "write_budget") {
        write_compare(
            &exe,
            root.path(),
            &rt,
            &cfg,
            &client,
            &pool,
            Some(NODE_BUDGET),
        )?;
    }

    if parts.iter().any(|p| p == "recall" || p == "failover") {
        let mut c = Cluster::start(&exe, &root.path().join("cluster"))?;
        create_space(&client, &c.url(0), "r")?;
        let l = c.leader(0, "r")?;
        let other = (l + 1) % 3;
        for i in 0..2_000u64 {
            let p = &pool[i as usize % pool.len()];
            let body: Value = serde_json::from_str(&format!("{{\"id\":\"m{i}\",{p}"))?;
            let url = format!("{}/api/v1/memories/remember?space=r", c.url(l));
            post(&client, &url, &body, &format!("seed-{i}"));
        }
        if parts.iter().any(|p| p == "recall") {
            let queries = if quick { 300 } else { 2_000 };
            let mut by_leader = 0usize;
            let mut total = 0usize;
            let mut lat = |via: usize| -> Result<Vec<u64>> {
                let mut out = Vec::new();
                for q in 0..queries {
                    let mut rng = util::rng(q as u64);
                    let cue = json!({"embedding": clusters.point(&mut rng), "max_results": 10});
                    let t = Instant::now();
                    let r = client
                        .post(format!("{}/api/v1/memories/recall?space=r", c.url(via)))
                        .json(&cue)
                        .send()?;
                    out.push(t.elapsed().as_nanos() as u64);
                    total += 1;
                    if r.headers()
                        .get("x-engram-node")
                        .and_then(|v| v.to_str().ok())
                        == Some(NAMES[l])
                    {
                        by_leader += 1;
                    }
                    anyhow::ensure!(r.status().is_success(), "recall answered {}", r.status());
                }
                out.sort_unstable();
                Ok(out)
            };
            let direct = lat(l)?;
            let hop = lat(other)?;
            let ms = |v: &[u64], p| util::percentile(v, p) as f64 / 1e6;
            println!(
                "# recall of 10 among 2,000 memories, one client: direct P50 {:.2} P99 {:.2} ms; through a non-leader P50 {:.2} P99 {:.2} ms",
                ms(&direct, 50.0),
                ms(&direct, 99.0),
                ms(&hop, 50.0),
                ms(&hop, 99.0)
            );
            report("cluster_recall_direct_p99_ms", ms(&direct, 99.0), "ms");
            report("cluster_recall_forwarded_p99_ms", ms(&hop, 99.0), "ms");
            let share = by_leader as f64 / total as f64 * 100.0;
            report("cluster_requests_executed_by_leader", share, "%");
            compare(
                "cluster_requests_executed_by_leader",
                share,
                "%",
                Better::Higher,
                None,
                Some(100.0),
            );
        }
        if parts.iter().any(|p| p == "failover") {
            let kills = if quick { 5 } else { 20 };
            let mut took = Vec::new();
            for k in 0..kills {
                let l = c.leader(0, "r").or_else(|_| c.leader(1, "r"))?;
                let via = (l + 1) % 3;
                c.nodes[l].server = None;
                let t = Instant::now();
                let mut n = 0u64;
                loop {
                    let p = &pool[n as usize % pool.len()];
                    let body: Value = serde_json::from_str(&format!("{{\"id\":\"f{k}-{n}\",{p}"))?;
                    let url = format!("{}/api/v1/memories/remember?space=r", c.url(via));
                    if post(&client, &url, &body, &format!("f{k}-{n}")) == Some(201) {
                        break;
                    }
                    n += 1;
                    if t.elapsed() > Duration::from_secs(60) {
                        bail!("no write was acknowledged within 60 s of kill {k}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                took.push(t.elapsed().as_nanos() as u64);
                c.start_node(l)?;
                c.wait_live()?;
            }
            took.sort_unstable();
            let ms = |p| util::percentile(&took, p) as f64 / 1e6;
            println!(
                "# failover: SIGKILL of the leader to the first acknowledged write through another node, {kills} kills: P50 {:.0} ms, P99 {:.0} ms, max {:.0} ms",
                ms(50.0),
                ms(99.0),
                ms(100.0)
            );
            report("cluster_failover_p50_ms", ms(50.0), "ms");
            report("cluster_failover_p99_ms", ms(99.0), "ms");
            compare(
                "cluster_failover_p99_ms",
                ms(99.0),
                "ms",
                Better::Lower,
                None,
                Some(3000.0),
            );
        }
    }

    if parts.iter().any(|p| p == "idle") {
        let c = Cluster::start(&exe, &root.path().join("idle"))?;
        let spaces = if quick { 1_000 } else { 10_000 };
        let t = Instant::now();
        let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..8)
                .map(|w| {
                    let (client, urls) = (&client, &urls);
                    s.spawn(move || -> Result<()> {
                        for i in (w..spaces).step_by(8) {
                            create_space(client, &urls[i % 3], &format!("s{i}"))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("a creating thread")?;
            }
            Ok(())
        })?;
        println!(
            "# {spaces} spaces created through the API in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        // Let groups quiesce (a leader quiesces its group after 2 s without a request, once
        // every follower holds its log), then measure.
        std::thread::sleep(Duration::from_secs(30));
        let before: Vec<f64> = (0..3).map(|i| process_cpu_seconds(c.pid(i))).collect();
        let window = Duration::from_secs(10);
        std::thread::sleep(window);
        for i in 0..3 {
            let cores = (process_cpu_seconds(c.pid(i)) - before[i]) / window.as_secs_f64();
            let rss = rss_kb(c.pid(i)) / 1024.0;
            println!(
                "# idle node {}: {:.4} cores, RSS {:.0} MB",
                NAMES[i], cores, rss
            );
            report(&format!("cluster_idle_{}_cores", NAMES[i]), cores, "cores");
            report(&format!("cluster_idle_{}_rss_mb", NAMES[i]), rss, "MB");
        }
    }
    Ok(())
}

/// The CPU each server process gets in part `write_budget`, in cores: three nodes hold 1.2
/// of the machine's two cores, as three machines of 0.4 cores each would, the single node
/// the same 0.4, and the load generator the rest in both runs.
const NODE_BUDGET: f64 = 0.4;

/// A cgroup (v1 `cpu` or v2) holding one process to a CPU budget; removed when dropped.
struct CpuBudget(std::path::PathBuf);

impl CpuBudget {
    /// Holds `pid` (and the threads it starts) to `cores` of CPU.
    fn limit(pid: u32, cores: f64) -> Result<CpuBudget> {
        // A 10 ms period: a process over its budget waits at most that long (at the default
        // 100 ms, throttling alone would set the P99).
        let period = 10_000u64;
        let quota = (cores * period as f64) as u64;
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, files) = if std::fs::read_to_string(v2).is_ok_and(|c| c.contains("cpu")) {
            let dir = Path::new("/sys/fs/cgroup").join(format!("engram-bench-{pid}"));
            (dir, vec![("cpu.max", format!("{quota} {period}"))])
        } else {
            let dir = Path::new("/sys/fs/cgroup/cpu").join(format!("engram-bench-{pid}"));
            (
                dir,
                vec![
                    ("cpu.cfs_period_us", period.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        };
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating the cgroup {} (part write_budget needs root and a cpu controller)",
                dir.display()
            )
        })?;
        let guard = CpuBudget(dir.clone());
        for (f, v) in files {
            std::fs::write(dir.join(f), v).with_context(|| format!("{}/{f}", dir.display()))?;
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving process {pid} into {}", dir.display()))?;
        Ok(guard)
    }
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        // Empty once its process has exited.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Part `write` (`budget: None`: every process on the whole machine) and `write_budget`
/// (each server process held to `budget` cores): remembers from 64 clients to a single node,
/// then to the leader of a space of three nodes, compared.
fn write_compare(
    exe: &Path,
    root: &Path,
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    client: &reqwest::blocking::Client,
    pool: &Arc<Vec<String>>,
    budget: Option<f64>,
) -> Result<()> {
    let tag = budget.map_or(String::new(), |b| format!("_budget_{}", (b * 100.0) as u32));
    // Remembers to `base` from `clients` clients, ids `{prefix}{n}`.
    let remember_load = |pid: u32, base: &str, clients: usize, prefix: &'static str| {
        let p = pool.clone();
        load(
            rt,
            cfg,
            pid,
            format!("{base}/api/v1/memories/remember?space=w"),
            clients,
            1,
            Arc::new(move |n| format!("{{\"id\":\"{prefix}{n}\",{}", p[n as usize % p.len()])),
        )
    };
    let single_dir = root.join(format!("single{tag}"));
    let single = start_server(exe, &single_dir)?;
    let _held = match budget {
        Some(b) => Some(CpuBudget::limit(single.child.id(), b)?),
        None => None,
    };
    let before = stages::scrape(client, &single.base);
    let one_light = remember_load(single.child.id(), &single.base, LIGHT_CLIENTS, "l")?;
    let single_stages = stages::describe(&before, &stages::scrape(client, &single.base));
    let one = remember_load(single.child.id(), &single.base, 64, "m")?;
    drop(single);
    let c = Cluster::start(exe, &root.join(format!("write{tag}")))?;
    let _held: Vec<CpuBudget> = match budget {
        Some(b) => (0..3)
            .map(|i| CpuBudget::limit(c.pid(i), b))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    create_space(client, &c.url(0), "w")?;
    let l = c.leader(0, "w")?;
    let before: Vec<String> = (0..3).map(|i| stages::scrape(client, &c.url(i))).collect();
    let three_light = remember_load(c.pid(l), &c.url(l), LIGHT_CLIENTS, "l")?;
    let three_stages: Vec<String> = (0..3)
        .map(|i| {
            let role = if i == l { "leader" } else { "follower" };
            let after = stages::scrape(client, &c.url(i));
            format!("{role}: {}", stages::describe(&before[i], &after))
        })
        .collect();
    let three = remember_load(c.pid(l), &c.url(l), 64, "m")?;
    let how = match budget {
        Some(b) => format!("each server process held to {b} cores"),
        None => "all processes on the whole machine".into(),
    };
    println!(
        "# remember, 64 clients, {DIM}-d, no automatic links, {how}: single node {:.0}/s P99 {:.2} ms; three nodes (to the leader) {:.0}/s P99 {:.2} ms; leader CPU {:.0} µs per write",
        one.per_s,
        one.p_ms(99.0),
        three.per_s,
        three.p_ms(99.0),
        three.cpu_us_per_item
    );
    report(
        &format!("cluster_remember_single{tag}_per_s"),
        one.per_s,
        "ops/s",
    );
    report(
        &format!("cluster_remember_three{tag}_per_s"),
        three.per_s,
        "ops/s",
    );
    let ratio = three.per_s / one.per_s * 100.0;
    let name = format!("cluster_remember{tag}_share_of_single");
    report(&name, ratio, "%");
    compare(&name, ratio, "%", Better::Higher, None, Some(60.0));
    report(
        &format!("cluster_remember_single{tag}_p99_ms"),
        one.p_ms(99.0),
        "ms",
    );
    report(
        &format!("cluster_remember_three{tag}_p99_ms"),
        three.p_ms(99.0),
        "ms",
    );
    let extra = three.p_ms(99.0) - one.p_ms(99.0);
    let name = format!("cluster_remember{tag}_p99_over_single_ms");
    report(&name, extra, "ms");
    compare(&name, extra, "ms", Better::Lower, None, Some(2.0));
    // At saturation a P99 is mostly queueing (64 clients over the throughput): the latency
    // replication adds shows under a light load (run first, on an empty space, before the
    // saturated run leaves flushes and index builds behind).
    println!(
        "# remember, {LIGHT_CLIENTS} clients, {how}: single node {:.0}/s P99 {:.2} ms; three nodes {:.0}/s P99 {:.2} ms",
        one_light.per_s,
        one_light.p_ms(99.0),
        three_light.per_s,
        three_light.p_ms(99.0)
    );
    // Where the time goes (means of the servers' own stage histograms over the light run).
    println!("#   single node: {single_stages}");
    for s in &three_stages {
        println!("#   {s}");
    }
    report(
        &format!("cluster_remember_light_single{tag}_p99_ms"),
        one_light.p_ms(99.0),
        "ms",
    );
    report(
        &format!("cluster_remember_light_three{tag}_p99_ms"),
        three_light.p_ms(99.0),
        "ms",
    );
    let extra = three_light.p_ms(99.0) - one_light.p_ms(99.0);
    let name = format!("cluster_remember_light{tag}_p99_over_single_ms");
    report(&name, extra, "ms");
    compare(&name, extra, "ms", Better::Lower, None, Some(2.0));
    Ok(())
}

/// Clients of the light load (latency, not throughput).
const LIGHT_CLIENTS: usize = 4;
