//! Time to full speed after a restart, and recall over HTTP after it (part `restart` of the
//! HTTP suite): the real server holds N memories (100,000; 20,000 with `--quick`) of the hard
//! data of `engram-bench recall` at its widest spread (clusters as wide as the distance
//! between their centres) in one space, flushed and indexed; its settled recall P99 is
//! measured over HTTP from one client; then it is stopped (SIGTERM, then SIGKILL) and started
//! again on the same data, and recalls run in rounds of 100 from the moment of the start. Full
//! speed is the end of the first round whose P99 is within 20% of the settled P99. A third
//! restart follows a SIGKILL right after 5% more memories were acknowledged (still in the WAL,
//! their segment not indexed): what a crash under load leaves. Once settled and after each
//! restart, recall@10 of `mode=similarity` at the server's default `ef` against an exact scan
//! of everything stored, over 200 queries near stored memories.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rand::Rng;
use serde_json::{json, Value};

use crate::dataset::{Clusters, Shape};
use crate::http::{engram_binary, metric, start_server, Server};
use crate::util::{self, report, DIM};

const SPACE: &str = "restart";
/// Queries per round of the after-restart measurement.
const ROUND: usize = 100;
/// A round within this factor of the settled P99 is full speed.
const WITHIN: f64 = 1.2;
/// How long a restart may take to reach full speed before the measurement gives up.
const GIVE_UP: Duration = Duration::from_secs(300);

pub(crate) fn b64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Stores `count` memories numbered from `first` (batches of 1,000, base64 embeddings, no
/// auto-links) and returns their embeddings.
fn load(
    client: &reqwest::blocking::Client,
    base: &str,
    clusters: &Clusters,
    rng: &mut rand::rngs::SmallRng,
    first: usize,
    count: usize,
) -> Result<Vec<Vec<f32>>> {
    let url = format!("{base}/api/v1/memories/batch?space={SPACE}");
    let mut stored = Vec::with_capacity(count);
    for start in (0..count).step_by(1000) {
        let mut ms = Vec::with_capacity(1000);
        for i in start..(start + 1000).min(count) {
            let id = (first + i) as u64;
            let e = clusters.point(rng);
            ms.push(
                json!({"id": format!("r{id}"), "content": util::content(rng, id),
                "embedding_b64": b64(&e), "auto_link": false}),
            );
            stored.push(e);
        }
        let r = client.post(&url).json(&json!({ "memories": ms })).send()?;
        if r.status().as_u16() != 201 {
            bail!("loading: {}", r.text()?);
        }
    }
    Ok(stored)
}

/// Waits until the server has flushed the space and built every index.
fn settle(client: &reqwest::blocking::Client, base: &str) -> Result<Duration> {
    settle_space(client, base, SPACE)
}

/// Waits until the server has flushed `space` and built every index.
pub(crate) fn settle_space(
    client: &reqwest::blocking::Client,
    base: &str,
    space: &str,
) -> Result<Duration> {
    let wait = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = client.get(format!("{base}/metrics")).send()?.text()?;
        let pending = metric(&text, "engram_index_pending_segments").unwrap_or(0.0);
        let memtable = text
            .lines()
            .find(|l| l.starts_with(&format!("engram_space_memtable_bytes{{space=\"{space}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if pending == 0.0 && memtable == 0.0 {
            return Ok(wait.elapsed());
        }
        if wait.elapsed() > Duration::from_secs(900) {
            bail!("the server had not indexed everything after 15 minutes");
        }
    }
}

/// One recall near a stored memory; its latency in nanoseconds. `Err` on a transport error
/// (the server not listening yet); a bad answer is a failure of the run.
fn recall_once(
    client: &reqwest::blocking::Client,
    url: &str,
    cue: &[f32],
) -> Result<std::result::Result<u64, reqwest::Error>> {
    let t0 = Instant::now();
    let r = match client
        .post(url)
        .json(&json!({"embedding_b64": b64(cue), "max_results": 10}))
        .send()
    {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let status = r.status().as_u16();
    let v: Value = r.json()?;
    let ns = t0.elapsed().as_nanos() as u64;
    if status != 200
        || v["memories"]["vivid"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    {
        bail!("recall: {status} {v}");
    }
    Ok(Ok(ns))
}

struct Cues<'a> {
    stored: &'a [Vec<f32>],
    clusters: &'a Clusters,
    rng: rand::rngs::SmallRng,
}

impl Cues<'_> {
    fn next(&mut self) -> Vec<f32> {
        let target = &self.stored[self.rng.gen_range(0..self.stored.len())];
        self.clusters.near(&mut self.rng, target, 0.3)
    }
}

/// P99 (ms) of `n` recalls.
fn p99_of(client: &reqwest::blocking::Client, url: &str, cues: &mut Cues, n: usize) -> Result<f64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        match recall_once(client, url, &cues.next())? {
            Ok(ns) => lat.push(ns),
            Err(e) => bail!("recall: {e}"),
        }
    }
    lat.sort_unstable();
    Ok(util::percentile(&lat, 99.0) as f64 / 1e6)
}

/// Recall@10 of the server (`mode=similarity`, default `ef`) against an exact scan of
/// `stored`, over `queries` cues near stored memories; with P50 and P99 in ms.
fn recall_at_10(
    client: &reqwest::blocking::Client,
    base: &str,
    stored: &[Vec<f32>],
    clusters: &Clusters,
    queries: usize,
) -> Result<(f64, f64, f64)> {
    let url = format!("{base}/api/v1/memories/recall?space={SPACE}");
    let flat: Vec<f32> = stored.iter().flatten().copied().collect();
    let mut rng = util::rng(33);
    // Cues and their exact truth first: the scan of every stored row between two requests
    // would leave the server's caches cold.
    let cues: Vec<(Vec<f32>, Vec<String>)> = (0..queries)
        .map(|i| {
            let cue = clusters.near(&mut rng, &stored[(i * 7_919) % stored.len()], 0.3);
            let truth = util::exact_top(&flat, &cue, 10)
                .into_iter()
                .map(|r| format!("r{r}"))
                .collect();
            (cue, truth)
        })
        .collect();
    let (mut hits, mut lat) = (0usize, Vec::with_capacity(queries));
    for (cue, truth) in &cues {
        let t0 = Instant::now();
        let r = client
            .post(&url)
            .json(&json!({"embedding_b64": b64(cue), "max_results": 10, "mode": "similarity"}))
            .send()?;
        let status = r.status().as_u16();
        let v: Value = r.json()?;
        lat.push(t0.elapsed().as_nanos() as u64);
        let Some(found) = v["memories"]["vivid"].as_array() else {
            bail!("recall: {status} {v}");
        };
        hits += found
            .iter()
            .filter(|m| {
                m["id"]
                    .as_str()
                    .is_some_and(|id| truth.iter().any(|t| t == id))
            })
            .count();
    }
    lat.sort_unstable();
    Ok((
        hits as f64 / (queries * 10) as f64,
        util::percentile(&lat, 50.0) as f64 / 1e6,
        util::percentile(&lat, 99.0) as f64 / 1e6,
    ))
}

fn print_recall(when: &str, (recall, p50, p99): (f64, f64, f64)) {
    println!(
        "# restart: recall@10 over HTTP {when} (mode similarity, default ef, 200 queries, exact truth): {recall:.4}, p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
}

/// What one restart measured, in seconds from the spawn of the new process.
struct Restart {
    listening_s: f64,
    first_recall_s: f64,
    full_speed_s: f64,
    /// P99 (ms) of the first round and of the round that reached full speed.
    first_p99_ms: f64,
    full_p99_ms: f64,
}

/// Starts the server on `dir` and recalls in rounds until a round's P99 is within
/// [`WITHIN`] of `settled_ms`.
fn restart(
    exe: &Path,
    dir: &Path,
    client: &reqwest::blocking::Client,
    cues: &mut Cues,
    settled_ms: f64,
) -> Result<(Server, Restart)> {
    let t0 = Instant::now();
    let server = start_server(exe, dir)?;
    let listening_s = t0.elapsed().as_secs_f64();
    let url = format!("{}/api/v1/memories/recall?space={SPACE}", server.base);
    let mut first_recall_s = None;
    let mut first_p99_ms = None;
    loop {
        let mut lat = Vec::with_capacity(ROUND);
        while lat.len() < ROUND {
            match recall_once(client, &url, &cues.next())? {
                Ok(ns) => {
                    first_recall_s.get_or_insert(t0.elapsed().as_secs_f64());
                    lat.push(ns);
                }
                // Refused while the new process starts: try again shortly.
                Err(_) if t0.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => bail!("recall after the restart: {e}"),
            }
        }
        lat.sort_unstable();
        let p99 = util::percentile(&lat, 99.0) as f64 / 1e6;
        first_p99_ms.get_or_insert(p99);
        if p99 <= settled_ms * WITHIN {
            return Ok((
                server,
                Restart {
                    listening_s,
                    first_recall_s: first_recall_s.unwrap_or(0.0),
                    full_speed_s: t0.elapsed().as_secs_f64(),
                    first_p99_ms: first_p99_ms.unwrap_or(p99),
                    full_p99_ms: p99,
                },
            ));
        }
        if t0.elapsed() > GIVE_UP {
            bail!(
                "recall P99 {p99:.2} ms still above {WITHIN} x the settled {settled_ms:.2} ms {} s after the start",
                GIVE_UP.as_secs()
            );
        }
    }
}

fn print(what: &str, r: &Restart, settled_ms: f64) {
    println!(
        "# restart after {what}: listening {:.2} s, first recall {:.2} s, full speed (a round of {ROUND} with P99 {:.2} ms <= {WITHIN} x settled {settled_ms:.2} ms) {:.2} s after the start; first round's P99 {:.2} ms",
        r.listening_s, r.first_recall_s, r.full_p99_ms, r.full_speed_s, r.first_p99_ms
    );
}

pub fn run(quick: bool) -> Result<()> {
    let n = if quick { 20_000 } else { 100_000 };
    let exe = engram_binary()?;
    let root = tempfile::Builder::new()
        .prefix("engram-bench-restart-")
        .tempdir_in(util::bench_root())?;
    let dir = root.path();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut rng = util::rng(31);
    // The hard data's widest spread (engram-bench recall, part spreads).
    let clusters = Clusters::new(
        &mut rng,
        Shape {
            spread: 1.2 * std::f32::consts::SQRT_2,
            ..Shape::realistic(DIM)
        },
    );

    let server = start_server(&exe, dir)?;
    let started = Instant::now();
    let mut stored = load(&client, &server.base, &clusters, &mut rng, 0, n)?;
    println!(
        "# restart: loaded {n} memories in {:.1} s; flushed and indexed {:.1} s later",
        started.elapsed().as_secs_f64(),
        settle(&client, &server.base)?.as_secs_f64()
    );
    let mut cues = Cues {
        stored: &[],
        clusters: &clusters,
        rng: util::rng(32),
    };
    let url = format!("{}/api/v1/memories/recall?space={SPACE}", server.base);
    let stored_now = stored.clone();
    cues.stored = &stored_now;
    p99_of(&client, &url, &mut cues, 200)?; // warm-up
    let settled_ms = p99_of(&client, &url, &mut cues, 1000)?;
    println!("# restart: settled recall P99 {settled_ms:.2} ms (1,000 recalls, one client, max_results 10)");
    report("restart_settled_recall_p99_ms", settled_ms, "ms");
    let r = recall_at_10(&client, &server.base, &stored, &clusters, 200)?;
    print_recall("settled", r);
    report("restart_http_recall_at_10_settled", r.0, "ratio");

    // Graceful stop (SIGTERM: the server builds what is missing before it exits).
    let stop = Instant::now();
    drop(server);
    println!(
        "# restart: graceful stop took {:.2} s",
        stop.elapsed().as_secs_f64()
    );
    let (server, graceful) = restart(&exe, dir, &client, &mut cues, settled_ms)?;
    print("a graceful stop", &graceful, settled_ms);
    report(
        "restart_full_speed_after_stop_s",
        graceful.full_speed_s,
        "s",
    );
    let r = recall_at_10(&client, &server.base, &stored, &clusters, 200)?;
    print_recall("after the graceful stop and start", r);
    report("restart_http_recall_at_10_after_stop", r.0, "ratio");

    // SIGKILL of the settled server.
    let mut server = server;
    server.kill()?;
    let (server, killed) = restart(&exe, dir, &client, &mut cues, settled_ms)?;
    print("SIGKILL (settled)", &killed, settled_ms);
    report("restart_full_speed_after_kill_s", killed.full_speed_s, "s");
    let r = recall_at_10(&client, &server.base, &stored, &clusters, 200)?;
    print_recall("after SIGKILL and start", r);
    report("restart_http_recall_at_10_after_kill", r.0, "ratio");

    // SIGKILL right after 5% more memories were acknowledged.
    let extra = n / 20;
    stored.extend(load(&client, &server.base, &clusters, &mut rng, n, extra)?);
    let mut server = server;
    server.kill()?;
    cues.stored = &stored;
    let (server, loaded) = restart(&exe, dir, &client, &mut cues, settled_ms)?;
    print(
        &format!("SIGKILL right after {extra} more writes"),
        &loaded,
        settled_ms,
    );
    report(
        "restart_full_speed_after_kill_under_writes_s",
        loaded.full_speed_s,
        "s",
    );
    let r = recall_at_10(&client, &server.base, &stored, &clusters, 200)?;
    print_recall("after SIGKILL under writes and start", r);
    report(
        "restart_http_recall_at_10_after_kill_under_writes",
        r.0,
        "ratio",
    );
    // Nothing acknowledged was lost to the kills.
    let v: Value = client
        .get(format!("{}/api/v1/spaces", server.base))
        .send()
        .context("listing spaces")?
        .json()?;
    let count = v["spaces"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == SPACE))
        .and_then(|s| s["memories"].as_u64())
        .context("the space's memory count")?;
    anyhow::ensure!(
        count as usize == n + extra,
        "after the kills the space holds {count} memories, not {}",
        n + extra
    );
    drop(server);
    Ok(())
}
