//! Chaos of real processes: three (and five) `engram` nodes under concurrent writers and
//! readers while a nemesis kills nodes (SIGKILL, then a restart from their directory),
//! pauses them (SIGSTOP, later SIGCONT), partitions the network between them and slows it
//! (a fault proxy on the cluster port: `chaos/proxy.rs`). Every operation's invocation and
//! outcome is recorded; a checker in the style of Jepsen's set checker (`chaos/checker.rs`)
//! then judges the history:
//!
//! - every acknowledged write is present, with what was written, on every replica of its
//!   space after the faults heal (so no acknowledged write was lost, including one a deposed
//!   leader took);
//! - a linearizable read invoked after a write was acknowledged finds it;
//! - no read returns a value that was never written;
//! - the replicas converge: every write the clients sent, acknowledged or not, is on all
//!   replicas or on none, and every replica of a space has the same digest (the count of
//!   memories it holds and the ids and contents it was read to hold).
//!
//! The run names its seed; a failing run writes its history to a file and says where.
//! `ENGRAM_CHAOS_SEED` replays a seed's faults (the schedule, not the threads' timing);
//! `ENGRAM_CHAOS_SECONDS` makes a longer soak (default 20 s for three nodes, 12 for five).
//! The partitions cut the cluster port (raft, metadata, joins); requests a node forwards to
//! a leader's HTTP port go around the proxy.

#[path = "chaos/checker.rs"]
mod checker;
mod common;
#[path = "chaos/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::{check, digest, Digests, FinalReads, Op, Outcome};
use common::Server;
use proxy::{node_ip, FaultProxy};
use serde_json::{json, Value};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

const SPACES: [&str; 3] = ["a", "b", "c"];

/// xorshift64*: the nemesis's and the clients' choices, from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A port free on `ip` (the nodes bind their own loopback addresses).
fn free_port(ip: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Nodes {
    dir: PathBuf,
    secret: String,
    names: Vec<String>,
    http: Vec<u16>,
    /// Each node's own cluster address (127.0.0.(10+i)).
    cluster: Vec<std::net::SocketAddr>,
    proxy: FaultProxy,
    servers: Vec<Option<Server>>,
}

impl Nodes {
    fn new(dir: &std::path::Path, secret: String, n: usize) -> Nodes {
        let cluster: Vec<std::net::SocketAddr> = (0..n)
            .map(|i| (node_ip(i), free_port(node_ip(i))).into())
            .collect();
        Nodes {
            dir: dir.to_path_buf(),
            secret,
            names: (1..=n).map(|i| format!("n{i}")).collect(),
            http: (0..n)
                .map(|_| free_port(std::net::Ipv4Addr::LOCALHOST))
                .collect(),
            proxy: FaultProxy::start(&cluster),
            cluster,
            servers: (0..n).map(|_| None).collect(),
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    /// Starts node `i`: the others reach it (and it joins them) through the proxy.
    fn start(&mut self, i: usize) {
        let join = (0..self.len())
            .filter(|&j| j != i)
            .map(|j| self.proxy.addrs[j].to_string())
            .collect::<Vec<_>>()
            .join(",");
        let (http, cluster, advertise) = (
            self.http[i].to_string(),
            self.cluster[i].to_string(),
            self.proxy.addrs[i].to_string(),
        );
        let mut args = vec![
            "--port",
            &http,
            "--node-id",
            &self.names[i],
            "--cluster-addr",
            &cluster,
            "--cluster-advertise",
            &advertise,
            "--cluster-secret-file",
            &self.secret,
        ];
        if i > 0 {
            args.extend(["--join", &join]);
        }
        let dir = self.dir.join(&self.names[i]);
        let s = Server::try_start_with(&dir, &args, &[], std::process::Stdio::null())
            .unwrap_or_else(|e| panic!("{} did not start: {e}", self.names[i]));
        self.servers[i] = Some(s);
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http[i])
    }
}

fn memory(space: &str, id: &str) -> Value {
    // Content and embedding follow from the id: a read can tell what was written.
    let h = id
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    json!({
        "id": id,
        "content": format!("{space}/{id}"),
        "embedding": [1.0, (h % 97) as f64 / 97.0, (h % 89) as f64 / 89.0, 0.5],
        "auto_link": false,
    })
}

fn write_once(client: &reqwest::blocking::Client, url: &str, space: &str, id: &str) -> Outcome {
    let r = client
        .post(url)
        .header("x-memory-space", space)
        .header("idempotency-key", id)
        .json(&memory(space, id))
        .send();
    match r {
        Ok(r) if r.status().as_u16() == 201 => {
            let v: Value = r.json().unwrap_or(Value::Null);
            Outcome::Ok(v["memory_id"].as_str().map(str::to_string))
        }
        Ok(r) => Outcome::Unknown(format!("{}", r.status())),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

fn read_once(client: &reqwest::blocking::Client, url: &str) -> Outcome {
    match client.get(url).send() {
        Ok(r) if r.status().as_u16() == 200 => {
            let v: Value = r.json().unwrap_or(Value::Null);
            Outcome::Ok(v["content"].as_str().map(str::to_string))
        }
        Ok(r) if r.status().as_u16() == 404 => Outcome::Missing,
        Ok(r) => Outcome::Unknown(format!("{}", r.status())),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// Three nodes: kills, pauses, partitions and delays.
#[test]
fn acknowledged_writes_survive_faults_on_three_nodes() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    run(3, 20);
}

/// Five nodes, each space on three of them: a minority partition, and requests through
/// nodes that hold no replica.
#[test]
fn acknowledged_writes_survive_faults_on_five_nodes() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    run(5, 12);
}

/// The two runs take turns: together they would be eight processes on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(n: usize, default_seconds: u64) {
    let seed: u64 = std::env::var("ENGRAM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(engram_seed);
    let seconds: u64 = std::env::var("ENGRAM_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seconds);
    eprintln!("chaos: {n} nodes, seed {seed}, {seconds} s (replay: ENGRAM_CHAOS_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "chaos secret, at least thirty-two bytes long").unwrap();
    let mut nodes = Nodes::new(dir.path(), secret.display().to_string(), n);
    for i in 0..n {
        nodes.start(i);
    }
    let names = nodes.names.clone();
    let urls: Vec<String> = (0..n).map(|i| nodes.url(i, "")).collect();
    // The spaces, created before the faults begin.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for space in SPACES {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = client
                .post(format!("{}/api/v1/spaces", urls[0]))
                .json(&json!({"id": space, "dimension": 4}))
                .send();
            if r.is_ok_and(|r| r.status().as_u16() == 201) {
                break;
            }
            assert!(Instant::now() < deadline, "space {space} was never created");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis() as u64;
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4usize {
        let (history, acked, stop, counter, urls) = (
            history.clone(),
            acked.clone(),
            stop.clone(),
            counter.clone(),
            urls.clone(),
        );
        clients.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            while !stop.load(Ordering::Relaxed) {
                let node = rng.below(n as u64) as usize;
                let reading = c >= 2;
                let op = if reading {
                    let pick = {
                        let a = acked.lock().unwrap();
                        (!a.is_empty()).then(|| a[rng.below(a.len() as u64) as usize].clone())
                    };
                    let Some((space, id)) = pick else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let start_ms = ms();
                    let url = format!("{}/api/v1/memories/{id}?space={space}", urls[node]);
                    let outcome = read_once(&client, &url);
                    Op {
                        client: c,
                        write: false,
                        space,
                        id,
                        node,
                        start_ms,
                        end_ms: ms(),
                        outcome,
                    }
                } else {
                    let space = SPACES[rng.below(SPACES.len() as u64) as usize];
                    let id = format!("w{}", counter.fetch_add(1, Ordering::Relaxed));
                    let start_ms = ms();
                    let url = format!("{}/api/v1/memories/remember", urls[node]);
                    let mut outcome = write_once(&client, &url, space, &id);
                    // Retried through other nodes with the same key until it is answered.
                    let mut tries = 1;
                    while matches!(outcome, Outcome::Unknown(_))
                        && tries < 6
                        && !stop.load(Ordering::Relaxed)
                    {
                        std::thread::sleep(Duration::from_millis(200));
                        let other = rng.below(n as u64) as usize;
                        let url = format!("{}/api/v1/memories/remember", urls[other]);
                        outcome = write_once(&client, &url, space, &id);
                        tries += 1;
                    }
                    if let Outcome::Ok(Some(got)) = &outcome {
                        assert_eq!(got, &id, "a write answered with another memory");
                        acked.lock().unwrap().push((space, id.clone()));
                    }
                    Op {
                        client: c,
                        write: true,
                        space,
                        id,
                        node,
                        start_ms,
                        end_ms: ms(),
                        outcome,
                    }
                };
                history.lock().unwrap().push(op);
            }
        }));
    }

    let faults = nemesis(&mut nodes, seed, seconds, &ms);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    // Healed: every write sent, read from every replica of its space (its own copy), and
    // every replica's content digested, until they agree.
    let history = history.lock().unwrap().clone();
    let mut ids: Vec<(&str, String)> = history
        .iter()
        .filter(|o| o.write)
        .map(|o| (o.space, o.id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut final_reads, mut digests): (FinalReads, Digests);
    loop {
        let replicas: BTreeMap<&str, Vec<usize>> = SPACES
            .iter()
            .map(|s| (*s, replicas_of(&client, &urls, &names, s)))
            .collect();
        final_reads = BTreeMap::new();
        for (space, id) in &ids {
            let on = replicas[space]
                .iter()
                .map(|&i| {
                    let url = format!(
                        "{}/api/v1/memories/{id}?space={space}&consistency=stale",
                        urls[i]
                    );
                    (i, read_once(&client, &url))
                })
                .collect();
            final_reads.insert((space.to_string(), id.clone()), on);
        }
        // Each replica's count of its memories (its own, from the listing of spaces) and
        // what it was read to hold.
        let counts: Vec<BTreeMap<String, u64>> =
            urls.iter().map(|u| counts_on(&client, u)).collect();
        digests = replicas
            .iter()
            .map(|(space, on)| {
                let d = on
                    .iter()
                    .map(|&i| {
                        let held: Vec<(String, String)> = final_reads
                            .iter()
                            .filter(|((s, _), _)| s == space)
                            .filter_map(|((_, id), by)| match by.iter().find(|(n, _)| *n == i) {
                                Some((_, Outcome::Ok(c))) => {
                                    Some((id.clone(), c.clone().unwrap_or_default()))
                                }
                                _ => None,
                            })
                            .collect();
                        let got = counts[i]
                            .get(*space)
                            .map(|&c| digest(c, held))
                            .ok_or_else(|| "no count of its memories".to_string());
                        (i, got)
                    })
                    .collect();
                (space.to_string(), d)
            })
            .collect();
        let bad = check(&history, &final_reads, &digests, &names);
        if bad.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let bad = check(&history, &final_reads, &digests, &names);
    let acks = history
        .iter()
        .filter(|o| o.write && matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let reads = history
        .iter()
        .filter(|o| !o.write && matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let proxy = nodes.proxy.counts();
    eprintln!(
        "chaos: {n} nodes, seed {seed}: {} operations, {acks} writes acknowledged, {reads} reads answered, {} faults; cluster connections through the proxy: {proxy:?}",
        history.len(),
        faults.len()
    );
    // The nodes talk through the proxy (else its partitions would cut nothing).
    assert!(proxy.passed >= n as u64, "{proxy:?}");
    if !bad.is_empty() {
        let path = std::env::temp_dir().join(format!("engram-chaos-{n}-{seed}.history"));
        let mut out = String::new();
        let _ = writeln!(out, "{n} nodes, seed {seed}\nfaults:");
        for f in &faults {
            let _ = writeln!(out, "  {f}");
        }
        let _ = writeln!(out, "violations:");
        for b in &bad {
            let _ = writeln!(out, "  {b}");
        }
        let _ = writeln!(out, "history:");
        for o in &history {
            let _ = writeln!(out, "  {o:?}");
        }
        std::fs::write(&path, out).unwrap();
        panic!(
            "seed {seed}: {} violations, e.g. {:?}; history in {}",
            bad.len(),
            &bad[..bad.len().min(5)],
            path.display()
        );
    }
    assert!(acks > 20, "seed {seed}: only {acks} writes acknowledged");
    for s in nodes.servers.iter_mut() {
        if let Some(s) = s.take() {
            assert!(s.stop().success());
        }
    }
}

/// The number of memories in each space a node holds a replica of, as it counts them.
fn counts_on(client: &reqwest::blocking::Client, url: &str) -> BTreeMap<String, u64> {
    let Ok(v) = client
        .get(format!("{url}/api/v1/spaces"))
        .send()
        .and_then(|r| r.json::<Value>())
    else {
        return BTreeMap::new();
    };
    v["spaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["id"].as_str()?.to_string(), s["memories"].as_u64()?)))
        .collect()
}

/// The nodes holding `space`, as the cluster's catalog says (asked of any node that answers).
fn replicas_of(
    client: &reqwest::blocking::Client,
    urls: &[String],
    names: &[String],
    space: &str,
) -> Vec<usize> {
    for url in urls {
        let Ok(r) = client
            .get(format!("{url}/api/v1/cluster/spaces/{space}"))
            .send()
        else {
            continue;
        };
        let Ok(v) = r.json::<Value>() else { continue };
        if let Some(list) = v["replicas"].as_array() {
            return list
                .iter()
                .filter_map(|r| names.iter().position(|n| Some(n.as_str()) == r.as_str()))
                .collect();
        }
    }
    panic!("no node said where space {space} lives");
}

/// Faults for `seconds`, each healed before the next: SIGKILL and restart, SIGSTOP and
/// SIGCONT, a partition (one node cut off, or the nodes split in two), a slow network.
fn nemesis(nodes: &mut Nodes, seed: u64, seconds: u64, ms: &dyn Fn() -> u64) -> Vec<String> {
    let n = nodes.len();
    let mut rng = Rng(seed | 1);
    let mut faults = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1500 + rng.below(1500)));
        let i = rng.below(n as u64) as usize;
        let name = nodes.names[i].clone();
        match rng.below(4) {
            0 => {
                faults.push(format!("{} ms: SIGKILL {name}", ms()));
                nodes.servers[i] = None;
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                faults.push(format!("{} ms: restart {name}", ms()));
                nodes.start(i);
            }
            1 => {
                let pid = nodes.servers[i].as_ref().unwrap().child.id() as i32;
                faults.push(format!("{} ms: SIGSTOP {name}", ms()));
                // SAFETY: signals to our own child.
                unsafe { kill(pid, SIGSTOP) };
                std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
                faults.push(format!("{} ms: SIGCONT {name}", ms()));
                unsafe { kill(pid, SIGCONT) };
            }
            2 => {
                // One node alone, or (five nodes) a random split into two and three.
                let side: Vec<usize> = if n > 3 && rng.below(2) == 0 {
                    let mut all: Vec<usize> = (0..n).collect();
                    for k in (1..n).rev() {
                        all.swap(k, rng.below(k as u64 + 1) as usize);
                    }
                    all[..2].to_vec()
                } else {
                    vec![i]
                };
                let cut: Vec<&str> = side.iter().map(|&k| nodes.names[k].as_str()).collect();
                faults.push(format!("{} ms: partition {cut:?} | the rest", ms()));
                for &a in &side {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        nodes.proxy.cut(a, b);
                    }
                }
                std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
                faults.push(format!("{} ms: heal", ms()));
                nodes.proxy.heal();
            }
            _ => {
                let d = Duration::from_millis(20 + rng.below(180));
                faults.push(format!("{} ms: {name}'s links slowed by {d:?}", ms()));
                for b in (0..n).filter(|&b| b != i) {
                    nodes.proxy.slow(i, b, d);
                }
                std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
                faults.push(format!("{} ms: heal", ms()));
                nodes.proxy.heal();
            }
        }
    }
    faults
}

/// A seed from the clock (printed, so a failure can be replayed).
fn engram_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
