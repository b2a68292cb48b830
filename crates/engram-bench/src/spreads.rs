//! Recall over HTTP at each spread of the hard data (part `spreads` of the HTTP suite): the
//! vectors and queries of `engram-bench recall`'s spread sweep (the same seeds, 100,000
//! memories; 20,000 with `--quick`), each spread loaded into a fresh server over HTTP (base64,
//! batches of 1,000, no auto-links), flushed and indexed, the server stopped (SIGTERM) and
//! started again; then, from one client, 200 recalls (`mode=similarity`, `max_results` 10,
//! the server's default `ef`) against the exact top 10: recall@10, P50 and P99.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::http::{engram_binary, start_server};
use crate::recall::hard::{list_from_env, HardSet, SPREADS};
use crate::restart::{b64, settle_space};
use crate::util::{self, report};

const SPACE: &str = "spread";
const QUERIES: usize = 200;

pub fn run(quick: bool) -> Result<()> {
    let n = if quick { 20_000 } else { 100_000 };
    let exe = engram_binary()?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let base_noise = crate::dataset::Shape::realistic(util::DIM).noise;
    for (i, fraction) in list_from_env("ENGRAM_BENCH_SPREADS", &SPREADS)?
        .into_iter()
        .enumerate()
    {
        // The seed of the in-process sweep's set at this place in the default list.
        let seed = 100 + SPREADS.iter().position(|&s| s == fraction).unwrap_or(i) as u64;
        let set = HardSet::generate(fraction, base_noise, n, QUERIES, seed);
        let root = tempfile::Builder::new()
            .prefix("engram-bench-spreads-")
            .tempdir_in(util::bench_root())?;
        let server = start_server(&exe, root.path())?;
        let url = format!("{}/api/v1/memories/batch?space={SPACE}", server.base);
        let t0 = Instant::now();
        for start in (0..n).step_by(1000) {
            let ms: Vec<Value> = (start..(start + 1000).min(n))
                .map(|row| {
                    json!({"id": format!("m{row}"), "content": format!("memory {row}"),
                        "embedding_b64": b64(&set.vectors[row]), "auto_link": false})
                })
                .collect();
            let r = client.post(&url).json(&json!({ "memories": ms })).send()?;
            if r.status().as_u16() != 201 {
                bail!("loading: {}", r.text()?);
            }
        }
        let loaded = t0.elapsed();
        let settled = settle_space(&client, &server.base, SPACE)?;
        drop(server); // SIGTERM
        let server = start_server(&exe, root.path())?;
        let url = format!("{}/api/v1/memories/recall?space={SPACE}", server.base);
        let ask = |q: &[f32]| -> Result<(Vec<u32>, u64)> {
            let t = Instant::now();
            let r = client
                .post(&url)
                .json(&json!({"embedding_b64": b64(q), "max_results": 10, "mode": "similarity"}))
                .send()?;
            let status = r.status().as_u16();
            let v: Value = r.json()?;
            let ns = t.elapsed().as_nanos() as u64;
            let Some(found) = v["memories"]["vivid"].as_array() else {
                bail!("recall: {status} {v}");
            };
            let rows = found
                .iter()
                .filter_map(|m| m["id"].as_str()?.strip_prefix('m')?.parse().ok())
                .collect();
            Ok((rows, ns))
        };
        for q in set.queries.iter().take(50) {
            ask(q)?; // warm-up
        }
        let (mut hits, mut lat) = (0usize, Vec::with_capacity(QUERIES));
        for (qi, q) in set.queries.iter().enumerate() {
            let (rows, ns) = ask(q)?;
            hits += set.recall(qi, rows);
            lat.push(ns);
        }
        lat.sort_unstable();
        let recall = hits as f64 / (QUERIES * 10) as f64;
        let (p50, p99) = (
            util::percentile(&lat, 50.0) as f64 / 1e6,
            util::percentile(&lat, 99.0) as f64 / 1e6,
        );
        println!(
            "# spread {fraction} over HTTP after a graceful restart: loaded {n} in {:.1} s, flushed and indexed {:.1} s later; recall@10 {recall:.4}, p50 {p50:.2} ms, p99 {p99:.2} ms ({QUERIES} queries, one client, default ef)",
            loaded.as_secs_f64(),
            settled.as_secs_f64()
        );
        let tag = format!("s{}", (fraction * 10.0).round() as u32);
        report(&format!("http_spread_{tag}_recall_at_10"), recall, "ratio");
        report(&format!("http_spread_{tag}_p99_ms"), p99, "ms");
        drop(server);
    }
    Ok(())
}
