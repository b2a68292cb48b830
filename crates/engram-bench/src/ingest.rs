//! Ingest over HTTP against in-process (part `ingest` of the HTTP suite): 100,000 memories of
//! 768-d (20,000 with `--quick`) in batches of 1,000, from one client with a few keep-alive
//! connections in flight, bodies encoded in advance, embeddings as JSON numbers or as base64
//! (`embedding_b64`), with and without auto-linking; each run on a fresh server and data
//! directory. The ceiling is the same batches written in-process through `Engine` (durable,
//! the same defaults) by as many threads. Rates are reported at 20,000 and at the end; with
//! auto-linking (made after the acknowledgement), also how long after the last
//! acknowledgement every automatic link was made, and in-process what share of the memories
//! got links.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use engram_core::{MemoryId, SpaceId};
use engram_engine::{Engine, EngineOptions, NewMemory};
use engram_storage::index::HnswParams;
use parking_lot::Mutex;
use serde_json::json;

use crate::dataset::{Clusters, Shape};
use crate::http::{engram_binary, start_server};
use crate::util::{self, report, DIM};

const BATCH: usize = 1000;
/// Requests in flight from the one client (one keep-alive connection each).
const IN_FLIGHT: usize = 4;
/// The rate is also reported when this many memories are stored.
const EARLY: usize = 20_000;

struct Data {
    contents: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

/// Memories per second at [`EARLY`] and at the end, and when every automatic link was made
/// (after the last acknowledgement).
#[derive(Clone, Copy)]
struct Rates {
    early: f64,
    all: f64,
    linked_after: Duration,
}

/// Waits until `pending()` says no automatic link is owed; how long that took.
fn until_linked(mut pending: impl FnMut() -> Result<usize>) -> Result<Duration> {
    let t = Instant::now();
    while pending()? > 0 {
        if t.elapsed() > Duration::from_secs(900) {
            bail!("automatic links still owed after 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t.elapsed())
}

/// `engram_space_pending_links` of the space `ingest` from the server's metrics.
fn pending_over_http(client: &reqwest::blocking::Client, base: &str) -> Result<usize> {
    let text = client.get(format!("{base}/metrics")).send()?.text()?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("engram_space_pending_links{space=\"ingest\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as usize)
}

fn body(data: &Data, batch: usize, b64: bool, auto_link: bool) -> String {
    let ms: Vec<serde_json::Value> = (batch * BATCH..((batch + 1) * BATCH).min(data.vectors.len()))
        .map(|i| {
            let mut m =
                json!({"id": format!("m{i}"), "content": data.contents[i], "auto_link": auto_link});
            if b64 {
                let bytes: Vec<u8> = data.vectors[i]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                m["embedding_b64"] = base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into();
            } else {
                m["embedding"] = json!(data.vectors[i]);
            }
            m
        })
        .collect();
    json!({ "memories": ms }).to_string()
}

/// Posts every body (in order of taking, [`IN_FLIGHT`] at a time) and times the acknowledgements.
fn over_http(
    rt: &tokio::runtime::Runtime,
    base: &str,
    bodies: Arc<Vec<bytes::Bytes>>,
) -> Result<Rates> {
    let url: hyper::Uri = format!("{base}/api/v1/memories/batch?space=ingest").parse()?;
    let authority = url.authority().context("no host:port")?.to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let early_at: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
    let total = bodies.len();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (url, authority, bodies) = (url.clone(), authority.clone(), bodies.clone());
            let (next, done, early_at) = (next.clone(), done.clone(), early_at.clone());
            rt.spawn(async move {
                let stream = tokio::net::TcpStream::connect(&authority).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return anyhow::Ok(());
                    }
                    let req = hyper::Request::post(url.clone())
                        .header(hyper::header::HOST, &authority)
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(http_body_util::Full::new(bodies[i].clone()))?;
                    sender.ready().await?;
                    let r = sender.send_request(req).await?;
                    let status = r.status().as_u16();
                    let text = http_body_util::BodyExt::collect(r.into_body())
                        .await?
                        .to_bytes();
                    if status != 201 {
                        bail!("batch {i}: {status} {}", String::from_utf8_lossy(&text));
                    }
                    let stored = done.fetch_add(BATCH, Ordering::Relaxed) + BATCH;
                    if stored >= EARLY {
                        early_at.lock().get_or_insert(t0.elapsed());
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        rt.block_on(t)??;
    }
    let all = t0.elapsed();
    let early = early_at.lock().unwrap_or(all);
    let stored = done.load(Ordering::Relaxed);
    let client = reqwest::blocking::Client::new();
    let linked_after = until_linked(|| pending_over_http(&client, base))?;
    Ok(Rates {
        early: EARLY.min(stored) as f64 / early.as_secs_f64(),
        all: stored as f64 / all.as_secs_f64(),
        linked_after,
    })
}

/// The same batches through `Engine::remember_batch` from [`IN_FLIGHT`] threads, the
/// background indexer building `hnsw` indexes meanwhile.
fn in_process(data: &Data, auto_link: bool, hnsw: HnswParams) -> Result<Rates> {
    let dir = tempfile::Builder::new()
        .prefix("engram-bench-ingest-")
        .tempdir_in(util::bench_root())?;
    let mut opts = EngineOptions::default();
    opts.store.hnsw = hnsw;
    let engine = Engine::open(dir.path(), opts)?;
    let space = SpaceId::new("ingest")?;
    let batches = data.vectors.len().div_ceil(BATCH);
    let made: Vec<Vec<NewMemory>> = (0..batches)
        .map(|b| {
            (b * BATCH..((b + 1) * BATCH).min(data.vectors.len()))
                .map(|i| NewMemory {
                    id: Some(MemoryId::new(format!("m{i}")).expect("a valid id")),
                    content: data.contents[i].clone(),
                    embedding: Some(data.vectors[i].clone()),
                    auto_link,
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    let queue = Mutex::new(made.into_iter().enumerate().collect::<Vec<_>>());
    queue.lock().reverse();
    let done = AtomicUsize::new(0);
    let early_at: Mutex<Option<Duration>> = Mutex::new(None);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let Some((_, batch)) = queue.lock().pop() else {
                            return Ok(());
                        };
                        let n = batch.len();
                        engine.remember_batch(&space, batch)?;
                        if done.fetch_add(n, Ordering::Relaxed) + n >= EARLY {
                            early_at.lock().get_or_insert(t0.elapsed());
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("an ingest thread panicked")?;
        }
        Ok(())
    })?;
    let all = t0.elapsed();
    let early = early_at.lock().unwrap_or(all);
    let linked_after = until_linked(|| Ok(engine.pending_links(&space)?))?;
    if auto_link {
        // What the links came to: every 100th memory.
        let (mut with, mut links, mut sampled) = (0, 0, 0);
        for i in (0..data.vectors.len()).step_by(100) {
            let m = engine
                .get(&space, &format!("m{i}"))?
                .context("a stored memory")?;
            sampled += 1;
            links += m.links.len();
            with += usize::from(!m.links.is_empty());
        }
        println!(
            "# ingest in-process, auto-link on: every link made {:.2} s after the last acknowledgement; {:.0}% of {sampled} sampled memories have links, {:.2} on average",
            linked_after.as_secs_f64(),
            100.0 * with as f64 / sampled as f64,
            links as f64 / sampled as f64
        );
    }
    engine.close();
    Ok(Rates {
        early: EARLY as f64 / early.as_secs_f64(),
        all: data.vectors.len() as f64 / all.as_secs_f64(),
        linked_after,
    })
}

pub fn run(quick: bool) -> Result<()> {
    let n = if quick { EARLY } else { 100_000 };
    let exe = engram_binary()?;
    let mut rng = util::rng(41);
    let clusters = Clusters::new(&mut rng, Shape::realistic(DIM));
    let data = Data {
        contents: (0..n as u64).map(|i| util::content(&mut rng, i)).collect(),
        vectors: (0..n).map(|_| clusters.point(&mut rng)).collect(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "# ingest: {n} memories x {DIM}-d, batches of {BATCH}, {IN_FLIGHT} in flight from one client (bodies encoded in advance); each run on a fresh server"
    );
    // The index's build strength against durable ingest (the indexer runs in the background
    // at idle priority): ef_construction 100 (before) and the default.
    let default = HnswParams::default();
    let weaker = in_process(
        &data,
        false,
        HnswParams {
            ef_construction: 100,
            ..default
        },
    )?;
    println!(
        "# ingest in-process, auto-link off, indexes built meanwhile with ef_construction 100: {:.0}/s at {EARLY}, {:.0}/s at {n}",
        weaker.early, weaker.all
    );
    let mut ceiling = [None, None];
    for auto_link in [false, true] {
        let r = in_process(&data, auto_link, default)?;
        println!(
            "# ingest in-process (Engine::remember_batch, {IN_FLIGHT} threads), auto-link {}: {:.0}/s at {EARLY}, {:.0}/s at {n}",
            if auto_link { "on" } else { "off" },
            r.early,
            r.all
        );
        let tag = if auto_link { "autolink" } else { "nolink" };
        report(&format!("ingest_inprocess_{tag}_per_s"), r.all, "1/s");
        if !auto_link {
            println!(
                "# ingest in-process with ef_construction {} against 100: {:.0}% at {n}",
                default.ef_construction,
                100.0 * r.all / weaker.all
            );
        }
        ceiling[usize::from(auto_link)] = Some(r);
    }
    let mut http = std::collections::HashMap::new();
    for (b64, auto_link) in [(true, false), (false, false), (true, true), (false, true)] {
        let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
            (0..n.div_ceil(BATCH))
                .map(|b| bytes::Bytes::from(body(&data, b, b64, auto_link)))
                .collect(),
        );
        let root = tempfile::Builder::new()
            .prefix("engram-bench-ingest-")
            .tempdir_in(util::bench_root())?;
        let server = start_server(&exe, root.path())?;
        let r = over_http(&rt, &server.base, bodies)?;
        drop(server);
        let ceil = ceiling[usize::from(auto_link)].expect("measured above");
        let form = if b64 { "base64" } else { "json" };
        println!(
            "# ingest over HTTP, {form}, auto-link {}: {:.0}/s at {EARLY} ({:.0}% of in-process), {:.0}/s at {n} ({:.0}% of in-process)",
            if auto_link { "on" } else { "off" },
            r.early,
            100.0 * r.early / ceil.early,
            r.all,
            100.0 * r.all / ceil.all
        );
        if auto_link {
            println!(
                "# ingest over HTTP, {form}, auto-link on: every link made {:.2} s after the last acknowledgement",
                r.linked_after.as_secs_f64()
            );
        }
        let tag = if auto_link { "autolink" } else { "nolink" };
        report(&format!("ingest_http_{form}_{tag}_per_s"), r.all, "1/s");
        http.insert((b64, auto_link), r);
    }
    for b64 in [true, false] {
        let (off, on) = (http[&(b64, false)], http[&(b64, true)]);
        println!(
            "# ingest over HTTP, {}: auto-linking keeps {:.0}% of the rate without it at {EARLY}, {:.0}% at {n}",
            if b64 { "base64" } else { "json" },
            100.0 * on.early / off.early,
            100.0 * on.all / off.all
        );
    }
    Ok(())
}
