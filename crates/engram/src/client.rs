//! The client commands: talk to a running server over its HTTP API.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

/// Where the server is, and how to talk to it.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The server's base URL.
    #[arg(
        long,
        env = "ENGRAM_URL",
        default_value = "http://127.0.0.1:7432",
        global = true
    )]
    pub url: String,
    /// API key, sent as `Authorization: Bearer KEY` (when the server has keys).
    #[arg(long, env = "ENGRAM_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
}

pub struct Api {
    client: Client,
    conn: Conn,
}

impl Api {
    pub fn new(conn: Conn) -> Result<Api> {
        let client = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { client, conn })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.conn.url.trim_end_matches('/'), path)
    }

    fn auth(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.conn.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    fn send(&self, r: RequestBuilder) -> Result<(u16, Value)> {
        let resp: Response = self
            .auth(r)
            .send()
            .with_context(|| format!("cannot reach the server at {}", self.conn.url))?;
        let status = resp.status().as_u16();
        let text = resp.text().context("reading the answer")?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// The answer's JSON when 2xx, else an error with the server's message.
    fn ok(&self, r: RequestBuilder) -> Result<Value> {
        let (status, v) = self.send(r)?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        let code = v["error"]["code"].as_str().unwrap_or("?");
        bail!("the server answered {status} {code}: {msg}")
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.ok(self.client.get(self.url(path)))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.ok(self.client.post(self.url(path)).json(body))
    }

    pub fn post_raw(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.send(self.client.post(self.url(path)).json(body))
    }
}

fn space_query(space: &Option<String>) -> String {
    match space {
        Some(s) => format!("?space={s}"),
        None => String::new(),
    }
}

pub fn space_list(api: &Api) -> Result<()> {
    let v = api.get("/api/v1/spaces")?;
    println!(
        "{:<32} {:>9} {:>10}  created",
        "space", "dimension", "memories"
    );
    for s in v["spaces"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>9} {:>10}  {}",
            s["id"].as_str().unwrap_or("?"),
            s["dimension"].as_u64().unwrap_or(0),
            s["memories"].as_u64().unwrap_or(0),
            s["created_at"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn space_create(api: &Api, id: &str, dimension: Option<u32>) -> Result<()> {
    let mut body = json!({ "id": id });
    if let Some(d) = dimension {
        body["dimension"] = json!(d);
    }
    let v = api.post("/api/v1/spaces", &body)?;
    println!(
        "created space {} ({} dimensions)",
        v["id"].as_str().unwrap_or(id),
        v["dimension"]
    );
    Ok(())
}

pub fn remember(
    api: &Api,
    text: &str,
    space: &Option<String>,
    confidence: Option<f32>,
) -> Result<()> {
    let mut body = json!({ "content": text });
    if let Some(c) = confidence {
        body["confidence"] = json!(c);
    }
    let v = api.post(
        &format!("/api/v1/memories/remember{}", space_query(space)),
        &body,
    )?;
    println!(
        "stored {} (confidence {} {})",
        v["memory_id"].as_str().unwrap_or("?"),
        v["storage_confidence"]["value"],
        v["storage_confidence"]["category"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Cuts `s` to `n` characters, with an ellipsis.
fn cut(s: &str, n: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= n {
        one_line
    } else {
        let mut t: String = one_line.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn recall(
    api: &Api,
    text: &str,
    space: &Option<String>,
    limit: usize,
    mode: &Option<String>,
    retrieval: &Option<String>,
    ef: Option<usize>,
) -> Result<()> {
    let mut body = json!({ "query": text, "max_results": limit });
    if let Some(ef) = ef {
        body["ef"] = json!(ef);
    }
    if let Some(m) = mode {
        body["mode"] = json!(m);
    }
    if let Some(r) = retrieval {
        body["retrieval"] = json!(r);
    }
    let v = api.post(
        &format!("/api/v1/memories/recall{}", space_query(space)),
        &body,
    )?;
    let mut rows: Vec<&Value> = Vec::new();
    for list in ["vivid", "associated"] {
        rows.extend(v["memories"][list].as_array().into_iter().flatten());
    }
    rows.sort_by(|a, b| {
        b["score"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&a["score"].as_f64().unwrap_or(0.0))
    });
    println!(
        "{} result(s) from space {} ({} mode, {} retrieval) in {:.2} ms",
        rows.len(),
        v["space"].as_str().unwrap_or("?"),
        v["mode"].as_str().unwrap_or("?"),
        v["retrieval"].as_str().unwrap_or("?"),
        v["took_ms"].as_f64().unwrap_or(0.0)
    );
    if rows.is_empty() {
        return Ok(());
    }
    println!(
        "{:>3}  {:>6}  {:>6}  {:>4}  {:<15}  {:<24}  content",
        "#", "score", "sim", "hops", "found by", "id"
    );
    for (i, r) in rows.iter().enumerate() {
        let found: Vec<&str> = r["found_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:>3}  {:>6.3}  {:>6.3}  {:>4}  {:<15}  {:<24}  {}",
            i + 1,
            r["score"].as_f64().unwrap_or(0.0),
            r["similarity_score"].as_f64().unwrap_or(0.0),
            r["hops"].as_u64().unwrap_or(0),
            found.join("+"),
            cut(r["id"].as_str().unwrap_or(""), 24),
            cut(r["content"].as_str().unwrap_or(""), 60)
        );
    }
    Ok(())
}

pub fn status(api: &Api) -> Result<()> {
    let h = api.get("/health")?;
    println!(
        "server {}: {} (version {})",
        api.conn.url,
        h["status"].as_str().unwrap_or("?"),
        h["version"].as_str().unwrap_or("?")
    );
    let v = api.get("/api/v1/spaces")?;
    let spaces = v["spaces"].as_array().cloned().unwrap_or_default();
    let total: u64 = spaces.iter().filter_map(|s| s["memories"].as_u64()).sum();
    println!("{} space(s), {} memories", spaces.len(), total);
    space_list(api)
}

/// A line that could not be imported.
struct Bad {
    line: usize,
    reason: String,
}

/// Batches `engram import` keeps in flight at once, each on a keep-alive connection of the
/// shared client: the server commits one while the next is on the wire.
const IN_FLIGHT: usize = 4;

/// What the import's senders share.
struct Sent {
    /// Batches sent, and batches answered.
    counts: Mutex<(usize, usize)>,
    answered: Condvar,
    stored: AtomicUsize,
    bad: Mutex<Vec<Bad>>,
    /// The first error that stops the import (the server unreachable, a 5xx, a refused key).
    failed: Mutex<Option<anyhow::Error>>,
}

/// Imports a JSON-lines file, one memory per line (the body of `remember`), in batches, up to
/// [`IN_FLIGHT`] of them on the wire at once. A batch with explicit links waits until every
/// batch before it is stored (its targets may be in them). A bad line is reported (line number
/// and reason) and skipped; the good ones are stored. Returns whether every line was imported.
pub fn import(api: &Api, path: &Path, space: &Option<String>, batch: usize) -> Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let mut reader = BufReader::new(CountingReader {
        inner: file,
        bar: bar.clone(),
    });
    let path_q = space_query(space);
    let sent = Sent {
        counts: Mutex::new((0, 0)),
        answered: Condvar::new(),
        stored: AtomicUsize::new(0),
        bad: Mutex::new(Vec::new()),
        failed: Mutex::new(None),
    };
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, Value)>>(IN_FLIGHT);
    let rx = Mutex::new(rx);
    let read: Result<()> = std::thread::scope(|scope| {
        for _ in 0..IN_FLIGHT {
            let (rx, sent, bar, path_q) = (&rx, &sent, &bar, &path_q);
            scope.spawn(move || loop {
                let job = rx.lock().expect("the queue's lock").recv();
                let Ok(mut pending) = job else { return };
                let mut bad = Vec::new();
                // After a failure the batches still queued are not sent.
                let result = if sent.failed.lock().expect("the error's lock").is_some() {
                    Ok(0)
                } else {
                    flush(api, path_q, &mut pending, &mut bad)
                };
                match result {
                    Ok(n) => {
                        let stored = sent.stored.fetch_add(n, Ordering::Relaxed) + n;
                        let mut all_bad = sent.bad.lock().expect("the bad lines' lock");
                        all_bad.extend(bad);
                        let rate = stored as f64 / started.elapsed().as_secs_f64().max(1e-9);
                        bar.set_message(format!(
                            "{stored} stored, {} bad, {rate:.0}/s",
                            all_bad.len()
                        ));
                    }
                    Err(e) => {
                        sent.failed
                            .lock()
                            .expect("the error's lock")
                            .get_or_insert(e);
                    }
                }
                sent.counts.lock().expect("the counts' lock").1 += 1;
                sent.answered.notify_all();
            });
        }
        // Sends a batch; false once the import has failed.
        let send = |pending: Vec<(usize, Value)>| -> bool {
            if pending.is_empty() {
                return true;
            }
            let linked = pending
                .iter()
                .any(|(_, v)| v["links"].as_array().is_some_and(|l| !l.is_empty()));
            let mut counts = sent.counts.lock().expect("the counts' lock");
            while linked && counts.1 < counts.0 {
                counts = sent.answered.wait(counts).expect("the counts' lock");
            }
            counts.0 += 1;
            drop(counts);
            sent.failed.lock().expect("the error's lock").is_none() && tx.send(pending).is_ok()
        };
        let mut pending: Vec<(usize, Value)> = Vec::with_capacity(batch);
        let mut line_no = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(v) if v.is_object() => pending.push((line_no, v)),
                Ok(_) => sent.bad.lock().expect("the bad lines' lock").push(Bad {
                    line: line_no,
                    reason: "not a JSON object".into(),
                }),
                Err(e) => sent.bad.lock().expect("the bad lines' lock").push(Bad {
                    line: line_no,
                    reason: format!("invalid JSON: {e}"),
                }),
            }
            if pending.len() >= batch && !send(std::mem::take(&mut pending)) {
                break;
            }
        }
        send(pending);
        drop(tx);
        Ok(())
    });
    bar.finish_and_clear();
    if let Some(e) = sent.failed.into_inner().expect("the error's lock") {
        return Err(e);
    }
    read?;
    let stored = sent.stored.into_inner();
    let mut bad = sent.bad.into_inner().expect("the bad lines' lock");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {stored} memories from {} in {secs:.1} s ({:.0}/s); {} bad line(s)",
        path.display(),
        stored as f64 / secs.max(1e-9),
        bad.len()
    );
    bad.sort_by_key(|b| b.line);
    for b in bad.iter().take(50) {
        println!("  line {}: {}", b.line, b.reason);
    }
    if bad.len() > 50 {
        println!("  ... and {} more", bad.len() - 50);
    }
    Ok(bad.is_empty())
}

/// Sends a batch; when the server refuses it (all or nothing), sends its lines one by one so
/// that only the bad ones are left out, each reported with the server's reason.
fn flush(
    api: &Api,
    path_q: &str,
    pending: &mut Vec<(usize, Value)>,
    bad: &mut Vec<Bad>,
) -> Result<usize> {
    if pending.is_empty() {
        return Ok(0);
    }
    let memories: Vec<&Value> = pending.iter().map(|(_, v)| v).collect();
    let (status, v) = api.post_raw(
        &format!("/api/v1/memories/batch{path_q}"),
        &json!({ "memories": memories }),
    )?;
    let n = pending.len();
    if status == 201 {
        pending.clear();
        return Ok(n);
    }
    if !(400..500).contains(&status) || status == 401 || status == 403 {
        bail!(
            "the server answered {status}: {}",
            v["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    let mut stored = 0;
    for (line, m) in pending.drain(..) {
        let (status, v) = api.post_raw(&format!("/api/v1/memories/remember{path_q}"), &m)?;
        if status == 201 {
            stored += 1;
        } else if (400..500).contains(&status) && status != 401 && status != 403 {
            bad.push(Bad {
                line,
                reason: v["error"]["message"]
                    .as_str()
                    .unwrap_or("refused")
                    .to_string(),
            });
        } else {
            bail!(
                "the server answered {status}: {}",
                v["error"]["message"].as_str().unwrap_or("no message")
            );
        }
    }
    Ok(stored)
}

/// Counts bytes read into the progress bar.
struct CountingReader<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}
