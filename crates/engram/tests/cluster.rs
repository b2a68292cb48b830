//! A cluster of real `engram` processes on 127.0.0.1: a node bootstraps it, two join through
//! members, every response names its node, `engram cluster status` lists them; a node with
//! another secret and a second node with a name in use are refused and change nothing; a
//! killed node restarted from its directory rejoins as itself. A single node has no cluster.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, secret).unwrap();
    p.display().to_string()
}

fn node(dir: &Path, name: &str, secret: &str, join: Option<&str>) -> Result<Server, String> {
    node_with(dir, name, secret, join, &[])
}

fn node_with(
    dir: &Path,
    name: &str,
    secret: &str,
    join: Option<&str>,
    extra: &[&str],
) -> Result<Server, String> {
    let data = dir.join(name);
    let mut args = vec![
        "--node-id",
        name,
        "--cluster-addr",
        "127.0.0.1:0",
        "--cluster-secret-file",
        secret,
    ];
    args.extend(extra);
    if let Some(j) = join {
        args.extend(["--join", j]);
    }
    Server::try_start_with(&data, &args, &[], Stdio::inherit())
}

fn get(url: &str) -> (u16, Option<String>, Value) {
    let r = reqwest::blocking::get(url).unwrap();
    let status = r.status().as_u16();
    let node = r
        .headers()
        .get("x-engram-node")
        .map(|v| v.to_str().unwrap().to_string());
    (status, node, r.json().unwrap_or(Value::Null))
}

fn nodes(s: &Server) -> Value {
    get(&s.url("/api/v1/cluster/nodes")).2
}

fn cluster_addr(s: &Server, name: &str) -> String {
    listed_address(name, || nodes(s))
}

/// The cluster address `name` has in the listing `list` returns, waited for (a node lists
/// itself once its own join is applied).
fn listed_address(name: &str, list: impl Fn() -> Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = list();
        let found = v["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == name))
            .and_then(|n| n["cluster_address"].as_str())
            .map(str::to_string);
        if let Some(a) = found {
            return a;
        }
        assert!(Instant::now() < deadline, "{name} never listed: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `s` sees exactly `names`, all live and answering.
fn wait_live(s: &Server, names: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = nodes(s);
        let list = v["nodes"].as_array().cloned().unwrap_or_default();
        let ok = list.len() == names.len()
            && names.iter().all(|n| {
                list.iter().any(|x| {
                    x["id"] == *n && x["state"] == "live" && x["reachable"] == Value::Bool(true)
                })
            });
        if ok {
            return v;
        }
        assert!(Instant::now() < deadline, "never all live: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three nodes in `dir` with one secret (its file's path returned): n1 bootstraps, n2 joins
/// through n1, n3 through n2.
fn three(dir: &Path) -> (String, [Server; 3]) {
    let secret = secret_file(dir, "secret", "a cluster secret of more than 32 bytes\n");
    let n1 = node(dir, "n1", &secret, None).unwrap();
    let n2 = node(dir, "n2", &secret, Some(&cluster_addr(&n1, "n1"))).unwrap();
    let n3 = node(dir, "n3", &secret, Some(&cluster_addr(&n2, "n2"))).unwrap();
    (secret, [n1, n2, n3])
}

#[test]
fn processes_form_a_cluster_and_refuse_impostors() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, [n1, n2, n3]) = three(dir.path());
    let a1 = cluster_addr(&n1, "n1");
    let v = wait_live(&n1, &["n1", "n2", "n3"]);
    assert_eq!(v["replicas"], 3);
    assert!(v["epoch"].as_u64().unwrap() >= 4, "{v}");
    // Every response names the node that executed it, errors included.
    for (s, name) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        let (status, who, _) = get(&s.url("/api/v1/cluster/nodes"));
        assert_eq!((status, who.as_deref()), (200, Some(name)));
        let (status, who, _) = get(&s.url("/api/v1/no-such-route"));
        assert_eq!((status, who.as_deref()), (404, Some(name)));
    }
    // The command line's table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["cluster", "status", "--url", &n2.base])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for name in ["n1", "n2", "n3"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains("live")),
            "{table}"
        );
    }

    // Another secret: refused, nothing changes.
    let wrong = secret_file(
        dir.path(),
        "wrong",
        "another secret, also more than 32 bytes",
    );
    let err = node(dir.path(), "n4", &wrong, Some(&a1))
        .err()
        .expect("refused");
    assert!(err.contains("no listening line"), "{err}");
    // A second node named n2 (another data directory): refused, nothing changes.
    let other = tempfile::tempdir().unwrap();
    let err = node(other.path(), "n2", &secret, Some(&a1))
        .err()
        .expect("refused");
    assert!(err.contains("no listening line"), "{err}");
    wait_live(&n2, &["n1", "n2", "n3"]);

    // n3 killed and restarted from its directory: it rejoins as itself.
    drop(n3);
    let n3 = node(dir.path(), "n3", &secret, Some(&a1)).unwrap();
    wait_live(&n1, &["n1", "n2", "n3"]);
    for s in [n1, n2, n3] {
        assert!(s.stop().success());
    }

    // A single node has no cluster: a 404 that says so, and no node header.
    let single = Server::start(&dir.path().join("single"));
    let (status, who, body) = get(&single.url("/api/v1/cluster/nodes"));
    assert_eq!((status, who), (404, None));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("single node"));
}

fn send(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let client = reqwest::blocking::Client::new();
    let mut r = client.request(method, url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let node = r
        .headers()
        .get("x-engram-node")
        .map(|v| v.to_str().unwrap().to_string());
    (status, node, r.json().unwrap_or(Value::Null))
}

#[test]
fn writes_and_reads_reach_the_leader_through_any_node() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let (secret, [n1, n2, n3]) = three(dir.path());
    wait_live(&n1, &["n1", "n2", "n3"]);
    let all = [&n1, &n2, &n3];

    // The default space exists once the cluster has a node for each replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, list) = send(Method::GET, &n2.url("/api/v1/spaces"), &[], None);
        if list.to_string().contains("\"default\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no default space: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A space created through one node; a second creation is a conflict.
    let body = serde_json::json!({"id": "s1", "dimension": 4});
    let (status, _, v) = send(
        Method::POST,
        &n2.url("/api/v1/spaces"),
        &[],
        Some(body.clone()),
    );
    assert_eq!(status, 201, "{v}");
    let (status, _, _) = send(Method::POST, &n3.url("/api/v1/spaces"), &[], Some(body));
    assert_eq!(status, 409);

    // A keyed write through one node, its repeat through another: the first answer.
    let memory = serde_json::json!({"content": "the cat sat", "embedding": [1.0, 0.5, 0.25, 0.0]});
    let h = [("x-memory-space", "s1"), ("idempotency-key", "k-1")];
    let (status, leader, first) = send(
        Method::POST,
        &n3.url("/api/v1/memories/remember"),
        &h,
        Some(memory.clone()),
    );
    assert_eq!(status, 201, "{first}");
    let leader = leader.unwrap();
    let (status, who, again) = send(
        Method::POST,
        &n1.url("/api/v1/memories/remember"),
        &h,
        Some(memory),
    );
    assert_eq!((status, who.as_deref()), (201, Some(leader.as_str())));
    assert_eq!(again["memory_id"], first["memory_id"]);
    let id = first["memory_id"].as_str().unwrap();

    // Reads through any node are executed by the leader; stale ones by the node asked.
    for s in all {
        let url = s.url(&format!("/api/v1/memories/{id}?space=s1"));
        let (status, who, m) = send(Method::GET, &url, &[], None);
        assert_eq!(
            (status, who.as_deref()),
            (200, Some(leader.as_str())),
            "{m}"
        );
        assert_eq!(m["content"], "the cat sat");
        let (status, who, m) = send(Method::GET, &format!("{url}&consistency=stale"), &[], None);
        assert_eq!(status, 200, "{m}");
        assert!(m["staleness_ms"].is_u64(), "{m}");
        assert_ne!(who, None);
    }
    let recall = serde_json::json!({"embedding": [1.0, 0.5, 0.25, 0.0], "mode": "similarity"});
    let (status, who, r) = send(
        Method::POST,
        &n2.url("/api/v1/memories/recall"),
        &[("x-memory-space", "s1")],
        Some(recall),
    );
    assert_eq!(
        (status, who.as_deref()),
        (200, Some(leader.as_str())),
        "{r}"
    );
    assert!(r.to_string().contains(id), "{r}");
    // Routing reads the space as the handler does: percent-encoded, it still goes to the
    // leader; `consistency` on a write is refused.
    let (status, who, m) = send(
        Method::GET,
        &n2.url(&format!("/api/v1/memories/{id}?space=%73%31")),
        &[],
        None,
    );
    assert_eq!(
        (status, who.as_deref()),
        (200, Some(leader.as_str())),
        "{m}"
    );
    let (status, _, v) = send(
        Method::POST,
        &n2.url("/api/v1/memories/remember?space=s1&consistency=stale"),
        &[],
        Some(serde_json::json!({"content": "x"})),
    );
    assert_eq!(status, 400, "{v}");
    // A first write the handler refuses creates nothing.
    let (status, _, v) = send(
        Method::POST,
        &n3.url("/api/v1/memories/remember"),
        &[("x-memory-space", "never")],
        Some(serde_json::json!({"content": "  "})),
    );
    assert_eq!(status, 400, "{v}");
    let (status, _, v) = send(
        Method::GET,
        &n1.url("/api/v1/cluster/spaces/never"),
        &[],
        None,
    );
    assert_eq!(status, 404, "{v}");

    // A first write creates its space, as on a single node; the catalog lists both.
    let (status, _, v) = send(
        Method::POST,
        &n1.url("/api/v1/memories/remember"),
        &[],
        Some(serde_json::json!({"content": "into the default space"})),
    );
    assert_eq!(status, 201, "{v}");
    let (_, _, list) = send(Method::GET, &n3.url("/api/v1/spaces"), &[], None);
    let ids: Vec<&str> = list["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default", "s1"]);

    // Dropped through one node: gone through every node.
    let (status, _, v) = send(Method::DELETE, &n2.url("/api/v1/spaces/s1"), &[], None);
    assert_eq!(status, 200, "{v}");
    for s in all {
        let url = s.url(&format!("/api/v1/memories/{id}?space=s1"));
        let (status, _, v) = send(Method::GET, &url, &[], None);
        assert_eq!(status, 404, "{v}");
        assert_eq!(v["error"]["code"], "SPACE_NOT_FOUND");
    }
    // Created again under the name: a new, empty space, on every node and after a restart
    // (the old group's state went with the drop).
    let (status, _, v) = send(
        Method::POST,
        &n3.url("/api/v1/spaces"),
        &[],
        Some(serde_json::json!({"id": "s1", "dimension": 4})),
    );
    assert_eq!(status, 201, "{v}");
    // `stale`: the node's own replica.
    let fresh = |s: &Server, stale: bool| {
        let q = if stale { "&consistency=stale" } else { "" };
        let url = s.url(&format!("/api/v1/memories/{id}?space=s1{q}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, v) = send(Method::GET, &url, &[], None);
            if status == 404 && v["error"]["code"] == "MEMORY_NOT_FOUND" {
                break;
            }
            // Not yet there (an election, a replica catching up); never the old memory.
            assert!(status == 503 || status == 404, "{status} {v}");
            assert!(Instant::now() < deadline, "s1 never answered: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for s in all {
        fresh(s, false);
        fresh(s, true);
    }
    let a1 = cluster_addr(&n1, "n1");
    assert!(n3.stop().success());
    let n3 = node(dir.path(), "n3", &secret, Some(&a1)).unwrap();
    fresh(&n3, true);
    for s in [n1, n2, n3] {
        assert!(s.stop().success());
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// A leader paused (SIGSTOP) while the others elect a new one cannot acknowledge the write it
/// was sent once it resumes: the write is refused with 503 and `Retry-After` and is nowhere,
/// or, if the resumed node has learned of the new leader before it reads the request,
/// forwarded there (one hop), acknowledged by the new leader and held everywhere.
#[test]
fn a_paused_leader_cannot_acknowledge_after_losing_leadership() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let (_, nodes) = three(dir.path());
    wait_live(&nodes[0], &["n1", "n2", "n3"]);
    let body = serde_json::json!({"id": "p", "dimension": 4});
    let (status, _, v) = send(
        Method::POST,
        &nodes[0].url("/api/v1/spaces"),
        &[],
        Some(body),
    );
    assert_eq!(status, 201, "{v}");
    let memory =
        |id: &str| serde_json::json!({"id": id, "content": id, "embedding": [1.0, 0.0, 0.0, 0.5]});
    let h = [("x-memory-space", "p")];
    let (status, leader, v) = send(
        Method::POST,
        &nodes[0].url("/api/v1/memories/remember"),
        &h,
        Some(memory("first")),
    );
    assert_eq!(status, 201, "{v}");
    let l = ["n1", "n2", "n3"]
        .iter()
        .position(|n| Some(*n) == leader.as_deref())
        .unwrap();
    let other = (l + 1) % 3;
    let pid = nodes[l].child.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { kill(pid, 19) };
    // A write sent to the paused leader waits in its socket.
    let url = nodes[l].url("/api/v1/memories/remember");
    let stale = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let r = client
            .post(url)
            .header("x-memory-space", "p")
            .json(&serde_json::json!({"id": "stale", "content": "stale", "embedding": [1.0, 0.0, 0.0, 0.5]}))
            .send()
            .unwrap();
        let header = |h: &str| r.headers().get(h).map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            header("retry-after"),
            header("x-engram-node"),
        )
    });
    // The others elect a leader and take writes; meanwhile a write is a 503 with Retry-After,
    // never a false success.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_503 = false;
    loop {
        let r = reqwest::blocking::Client::new()
            .post(nodes[other].url("/api/v1/memories/remember"))
            .header("x-memory-space", "p")
            .header("idempotency-key", "fresh")
            .json(&memory("fresh"))
            .timeout(Duration::from_secs(8))
            .send();
        if let Ok(r) = r {
            match r.status().as_u16() {
                201 => break,
                503 => {
                    let after: u64 = r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(after >= 1);
                    saw_503 = true;
                }
                s => panic!("a write during the election answered {s}"),
            }
        }
        assert!(Instant::now() < deadline, "no new leader took the write");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_503, "the first writes after the pause found no leader");
    unsafe { kill(pid, 18) };
    let (status, retry, executed_by) = stale.join().unwrap();
    eprintln!("the write sent to the paused leader: {status}, executed by {executed_by:?}");
    // The deposed leader never acknowledges the write itself: a 503, or, if it learned of
    // the new leader before it read the request, the request forwarded there (one hop) and
    // acknowledged by the new leader, which holds it.
    let forwarded = match status {
        503 => {
            assert!(retry.is_some());
            false
        }
        201 => {
            let by = executed_by.expect("the node that executed it");
            assert_ne!(
                by,
                ["n1", "n2", "n3"][l],
                "the deposed leader acknowledged it"
            );
            true
        }
        s => panic!("the deposed leader answered {s}"),
    };
    // Nowhere (or, forwarded, everywhere): read through every node, linearizably.
    let want = if forwarded { 200 } else { 404 };
    for s in &nodes {
        let url = s.url("/api/v1/memories/stale?space=p");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, v) = send(Method::GET, &url, &[], None);
            if status == want {
                if want == 404 {
                    assert_eq!(v["error"]["code"], "MEMORY_NOT_FOUND");
                }
                break;
            }
            assert_eq!(status, 503, "{v}");
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, _, _) = send(
            Method::GET,
            &s.url("/api/v1/memories/fresh?space=p"),
            &[],
            None,
        );
        assert_eq!(status, 200);
    }
}

/// With API keys, a cluster node checks a key's spaces before it creates, drops, lists or
/// forwards anything, as a single node's handlers do.
#[test]
fn a_key_reaches_only_its_spaces_on_a_cluster() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(
        dir.path(),
        "secret",
        "a cluster secret of more than 32 bytes\n",
    );
    let config = dir.path().join("keys.toml");
    std::fs::write(
        &config,
        "[[api_keys]]\nkey = \"alice-key-1\"\nspaces = [\"alice\"]\n\n[[api_keys]]\nkey = \"admin-key-1\"\nspaces = [\"*\"]\n",
    )
    .unwrap();
    let keys = ["--config", config.to_str().unwrap()];
    let n1 = node_with(dir.path(), "n1", &secret, None, &keys).unwrap();
    let a1 = cluster_addr_with(&n1, "n1", "admin-key-1");
    let n2 = node_with(dir.path(), "n2", &secret, Some(&a1), &keys).unwrap();
    let alice = [("authorization", "Bearer alice-key-1")];
    let admin = [("authorization", "Bearer admin-key-1")];
    let space = |id: &str| Some(serde_json::json!({"id": id, "dimension": 4}));
    let (status, _, v) = send(
        Method::POST,
        &n2.url("/api/v1/spaces"),
        &admin,
        space("bob"),
    );
    assert_eq!(status, 201, "{v}");
    let (status, _, v) = send(
        Method::POST,
        &n2.url("/api/v1/spaces"),
        &alice,
        space("alice"),
    );
    assert_eq!(status, 201, "{v}");
    // Another tenant's space: neither dropped, nor created, nor listed, nor written.
    let (status, _, _) = send(Method::DELETE, &n1.url("/api/v1/spaces/bob"), &alice, None);
    assert_eq!(status, 403);
    let (status, _, _) = send(
        Method::POST,
        &n1.url("/api/v1/spaces"),
        &alice,
        space("carol"),
    );
    assert_eq!(status, 403);
    let memory = serde_json::json!({"content": "x", "embedding": [1.0, 0.0, 0.0, 0.5]});
    let h = [
        ("authorization", "Bearer alice-key-1"),
        ("x-memory-space", "zed"),
    ];
    let (status, _, _) = send(
        Method::POST,
        &n1.url("/api/v1/memories/remember"),
        &h,
        Some(memory),
    );
    assert_eq!(status, 403);
    let (_, _, list) = send(Method::GET, &n1.url("/api/v1/spaces"), &alice, None);
    let ids: Vec<&str> = list["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice"]);
    let (_, _, list) = send(Method::GET, &n1.url("/api/v1/spaces"), &admin, None);
    let all = list.to_string();
    assert!(
        all.contains("\"bob\"") && !all.contains("\"zed\"") && !all.contains("\"carol\""),
        "{all}"
    );
    for s in [n1, n2] {
        assert!(s.stop().success());
    }
}

/// [`cluster_addr`] with an API key.
fn cluster_addr_with(s: &Server, name: &str, key: &str) -> String {
    let auth = format!("Bearer {key}");
    listed_address(name, || {
        let url = s.url("/api/v1/cluster/nodes");
        send(
            reqwest::Method::GET,
            &url,
            &[("authorization", auth.as_str())],
            None,
        )
        .2
    })
}
