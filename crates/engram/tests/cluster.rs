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
    let data = dir.join(name);
    let mut args = vec![
        "--node-id",
        name,
        "--cluster-addr",
        "127.0.0.1:0",
        "--cluster-secret-file",
        secret,
    ];
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
    nodes(s)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == name)
        .unwrap()["cluster_address"]
        .as_str()
        .unwrap()
        .to_string()
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

#[test]
fn processes_form_a_cluster_and_refuse_impostors() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(
        dir.path(),
        "secret",
        "a cluster secret of more than 32 bytes\n",
    );
    let n1 = node(dir.path(), "n1", &secret, None).unwrap();
    let a1 = cluster_addr(&n1, "n1");
    let n2 = node(dir.path(), "n2", &secret, Some(&a1)).unwrap();
    let a2 = cluster_addr(&n2, "n2");
    let n3 = node(dir.path(), "n3", &secret, Some(&a2)).unwrap();
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
