//! Black-box tests: the real `engram` binary on a free 127.0.0.1 port and a temporary data
//! directory, driven over HTTP exactly as shared/API.md says.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn json_of(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, v)
}

fn post(c: &Client, s: &Server, path: &str, body: Value) -> (u16, Value) {
    json_of(c.post(s.url(path)).json(&body).send().unwrap())
}

fn get(c: &Client, s: &Server, path: &str) -> (u16, Value) {
    json_of(c.get(s.url(path)).send().unwrap())
}

fn unit(dim: usize, i: usize) -> Vec<f32> {
    let mut v = vec![0.0; dim];
    v[i] = 1.0;
    v
}

#[test]
fn every_route_answers_with_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();

    let (st, v) = get(&c, &s, "/health");
    assert_eq!(st, 200);
    assert_eq!(v["status"], "healthy");
    assert!(v["version"].is_string());

    let (st, v) = get(&c, &s, "/api/v1/spaces");
    assert_eq!(st, 200);
    assert_eq!(v["spaces"][0]["id"], "default");
    assert_eq!(v["spaces"][0]["dimension"], 768);

    let (st, v) = post(
        &c,
        &s,
        "/api/v1/spaces",
        json!({"id": "small", "dimension": 4}),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["id"], "small");
    assert_eq!(v["dimension"], 4);
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    let (st, v) = post(&c, &s, "/api/v1/spaces", json!({"id": "small"}));
    assert_eq!(st, 409);
    assert_eq!(v["error"]["code"], "CONFLICT");

    // remember: text into default, vectors into "small" (header selects the space).
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/remember",
        json!({"content": "the user prefers dark mode", "confidence": 0.9}),
    );
    assert_eq!(st, 201, "{v}");
    assert!(v["memory_id"].as_str().unwrap().starts_with("mem_"));
    assert_eq!(v["storage_confidence"]["value"], 0.9);
    assert_eq!(v["storage_confidence"]["category"], "High");
    assert_eq!(v["consolidation_state"], "Recent");
    assert!(v["stored_at"].is_string());
    let r = c
        .post(s.url("/api/v1/memories/remember"))
        .header("X-Memory-Space", "small")
        .json(&json!({"id": "a", "content": "alpha", "embedding": unit(4, 0), "timestamp": "2026-01-02T03:04:05Z"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/batch?space=small",
        json!({"memories": [
            {"id": "b", "content": "beta", "embedding": unit(4, 1), "auto_link": false},
            {"id": "c", "content": "gamma", "embedding": unit(4, 2), "auto_link": false}
        ]}),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["memory_ids"], json!(["b", "c"]));
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/a/links?space=small",
        json!({"to": "b", "weight": 0.8}),
    );
    assert_eq!(st, 201, "{v}");

    let (st, v) = get(
        &c,
        &s,
        "/api/v1/memories/a?space=small&include_embedding=true",
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], "a");
    assert_eq!(v["content"], "alpha");
    assert_eq!(v["timestamp"], "2026-01-02T03:04:05Z");
    assert_eq!(v["embedding"], json!([1.0, 0.0, 0.0, 0.0]));
    assert_eq!(v["links"], json!([{"to": "b", "weight": 0.8}]));
    let (_, v) = get(&c, &s, "/api/v1/memories/a?space=small");
    assert!(v.get("embedding").is_none());

    // recall, GET and POST: a is matched, b reached by spreading.
    let (st, v) = get(
        &c,
        &s,
        "/api/v1/memories/recall?space=small&embedding=[1,0,0,0]",
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["space"], "small");
    assert_eq!(v["mode"], "hybrid");
    assert!(v["took_ms"].is_number());
    assert_eq!(v["memories"]["vivid"][0]["id"], "a");
    assert_eq!(v["memories"]["vivid"][0]["retrieval_path"], "similarity");
    assert_eq!(v["memories"]["vivid"][0]["hops"], 0);
    assert_eq!(v["memories"]["associated"][0]["id"], "b");
    assert_eq!(v["memories"]["associated"][0]["hops"], 1);
    assert_eq!(
        v["memories"]["associated"][0]["retrieval_path"],
        "spreading"
    );
    assert_eq!(v["memories"]["reconstructed"], json!([]));
    let item = &v["memories"]["vivid"][0];
    for field in [
        "content",
        "confidence",
        "similarity_score",
        "activation_level",
        "score",
        "observed_at",
    ] {
        assert!(item.get(field).is_some(), "result lacks {field}: {item}");
    }
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/recall",
        json!({"memory_space_id": "small", "embedding": [1, 0, 0, 0], "mode": "similarity"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["memories"]["associated"], json!([]));
    let (st, v) = get(&c, &s, "/api/v1/memories/recall?query=dark%20mode");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["memories"]["vivid"][0]["content"],
        "the user prefers dark mode"
    );

    // forget: 200 then 404.
    let r = c
        .delete(s.url("/api/v1/memories/c?space=small"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, v) = json_of(
        c.delete(s.url("/api/v1/memories/c?space=small"))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "MEMORY_NOT_FOUND");

    // A write to a new space creates it.
    let r = c
        .post(s.url("/api/v1/memories/remember"))
        .header("X-Memory-Space", "fresh")
        .json(&json!({"content": "first words"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (_, v) = get(&c, &s, "/api/v1/spaces");
    let ids: Vec<&str> = v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default", "fresh", "small"]);

    // Prometheus metrics: requests by route and status, WAL fsyncs, spaces, recall latency.
    let r = c.get(s.url("/metrics")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().unwrap();
    for needle in [
        "engram_http_requests_total{route=\"/api/v1/memories/remember\",method=\"POST\",status=\"201\"}",
        "engram_http_request_duration_seconds_bucket",
        "engram_wal_fsync_seconds_bucket",
        "engram_wal_batch_records_bucket",
        "engram_space_memories{space=\"small\"} 2",
        "engram_recall_duration_seconds_bucket",
        "engram_compaction_flushes_total",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }

    // Drop a space: gone now and after a restart.
    let r = c.delete(s.url("/api/v1/spaces/fresh")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(s.stop().success());
    let s = Server::start(dir.path());
    let (_, v) = get(&c, &s, "/api/v1/spaces");
    assert_eq!(v["spaces"].as_array().unwrap().len(), 2, "{v}");
    let (st, _) = get(&c, &s, "/api/v1/memories/a?space=small");
    assert_eq!(st, 200);
}

#[test]
fn bad_requests_are_4xx_with_a_json_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    post(
        &c,
        &s,
        "/api/v1/spaces",
        json!({"id": "v4", "dimension": 4}),
    );
    let (st, _) = post(
        &c,
        &s,
        "/api/v1/memories/remember?space=v4",
        json!({"id": "keep", "content": "kept", "embedding": [1, 0, 0, 0]}),
    );
    assert_eq!(st, 201);
    let big = "x".repeat(100 * 1024 + 1);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"content": format!("m{i}")}))
        .collect();
    // (method, path, body as raw text, expected status)
    let cases: Vec<(&str, String, String, u16)> = vec![
        ("POST", "/api/v1/memories/remember".into(), "{not json".into(), 400),
        ("POST", "/api/v1/memories/remember".into(), "".into(), 400),
        ("POST", "/api/v1/memories/remember".into(), "[]".into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": 5}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": ""}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "   "}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), json!({"content": big}).to_string(), 413),
        ("POST", "/api/v1/memories/remember?space=v4".into(), r#"{"content": "x", "embedding": [1, 0]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=v4".into(), r#"{"content": "x", "embedding": [NaN, 0, 0, 0]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=v4".into(), r#"{"content": "x", "embedding": [Infinity, 0, 0, 0]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=v4".into(), r#"{"content": "x", "embedding": [1e39, 0, 0, 0]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=v4".into(), r#"{"content": "x", "embedding": [0, 0, 0, 0]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=v4".into(), r#"{"content": "x", "embedding": ["a", 0, 0, 0]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "confidence": 1.5}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "confidence": -0.1}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "timestamp": "yesterday"}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "id": "a/b"}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "id": ""}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=../x".into(), r#"{"content": "x"}"#.into(), 400),
        ("POST", "/api/v1/memories/remember?space=UPPER".into(), r#"{"content": "x"}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "memory_space_id": "a b"}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "links": [{"to": "nobody", "weight": 0.5}]}"#.into(), 400),
        ("POST", "/api/v1/memories/remember".into(), r#"{"content": "x", "links": [{"to": "keep", "weight": 0}]}"#.into(), 400),
        ("POST", "/api/v1/memories/batch?space=v4".into(), json!({"memories": [{"id": "ok1", "content": "ok", "embedding": [0, 1, 0, 0]}, {"content": "bad", "embedding": [1]}]}).to_string(), 400),
        ("POST", "/api/v1/memories/batch".into(), json!({"memories": too_many}).to_string(), 413),
        ("POST", "/api/v1/memories/batch".into(), r#"{"memories": "no"}"#.into(), 400),
        ("GET", "/api/v1/memories/recall".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?query=x&max_results=0".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?query=x&max_results=5000".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?query=x&max_results=ten".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?query=x&mode=psychic".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?query=x&threshold=2".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?space=v4&embedding=[1,2]".into(), "".into(), 400),
        ("GET", "/api/v1/memories/recall?space=v4&embedding=oops".into(), "".into(), 400),
        ("GET", "/api/v1/memories/unknown-id".into(), "".into(), 404),
        ("GET", "/api/v1/memories/keep?space=nospace".into(), "".into(), 404),
        ("POST", "/api/v1/memories/keep/links?space=v4".into(), r#"{"to": "ghost", "weight": 0.5}"#.into(), 404),
        ("POST", "/api/v1/memories/keep/links?space=v4".into(), r#"{"to": "keep", "weight": 0.5}"#.into(), 400),
        ("POST", "/api/v1/spaces".into(), r#"{"id": "Bad Id"}"#.into(), 400),
        ("POST", "/api/v1/spaces".into(), r#"{"id": "d0", "dimension": 0}"#.into(), 400),
        ("POST", "/api/v1/spaces".into(), r#"{"id": "d5", "dimension": 5000}"#.into(), 400),
        ("DELETE", "/api/v1/spaces/nospace".into(), "".into(), 404),
        ("DELETE", "/api/v1/spaces/default".into(), "".into(), 400),
    ];
    assert!(cases.len() >= 25);
    for (method, path, body, want) in &cases {
        let req = match *method {
            "POST" => c
                .post(s.url(path))
                .header("content-type", "application/json")
                .body(body.clone()),
            "DELETE" => c.delete(s.url(path)),
            _ => c.get(s.url(path)),
        };
        let r = req.send().unwrap();
        let (st, v) = json_of(r);
        assert_eq!(
            st,
            *want,
            "{method} {path} {}: {v}",
            &body[..body.len().min(80)]
        );
        let code = v["error"]["code"].as_str().unwrap_or_default();
        assert!(!code.is_empty(), "{method} {path}: no error code in {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Still serving, nothing changed.
    let (st, _) = get(&c, &s, "/health");
    assert_eq!(st, 200);
    let (_, v) = get(&c, &s, "/api/v1/spaces");
    let spaces = v["spaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 2, "{v}");
    let v4 = spaces.iter().find(|s| s["id"] == "v4").unwrap();
    assert_eq!(v4["memories"], 1, "the bad batch stored nothing");
    let default = spaces.iter().find(|s| s["id"] == "default").unwrap();
    assert_eq!(default["memories"], 0);
}

#[test]
fn spaces_are_isolated_through_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    for sp in ["alice", "bob"] {
        post(&c, &s, "/api/v1/spaces", json!({"id": sp, "dimension": 4}));
    }
    post(
        &c,
        &s,
        "/api/v1/memories/remember?space=alice",
        json!({"id": "secret", "content": "alice's secret", "embedding": [1, 0, 0, 0]}),
    );
    let (st, _) = get(&c, &s, "/api/v1/memories/secret?space=bob");
    assert_eq!(st, 404);
    let (_, v) = get(
        &c,
        &s,
        "/api/v1/memories/recall?space=bob&embedding=[1,0,0,0]",
    );
    assert_eq!(v["memories"]["vivid"], json!([]));
    let (st, _) = json_of(
        c.delete(s.url("/api/v1/memories/secret?space=bob"))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    let (st, _) = post(
        &c,
        &s,
        "/api/v1/memories/secret/links?space=bob",
        json!({"to": "secret", "weight": 0.5}),
    );
    assert_eq!(st, 404);
    let (st, _) = post(
        &c,
        &s,
        "/api/v1/memories/remember?space=bob",
        json!({"content": "x", "embedding": [0, 1, 0, 0], "links": [{"to": "secret", "weight": 0.5}]}),
    );
    assert_eq!(st, 400);
    // Header beats query beats body.
    let r = c
        .get(s.url("/api/v1/memories/secret?space=bob"))
        .header("X-Memory-Space", "alice")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, v) = get(&c, &s, "/api/v1/memories/secret?space=alice");
    assert_eq!(v["content"], "alice's secret");
}

#[test]
fn a_busy_port_is_an_error_and_non_loopback_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["start", "--port", &port, "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["start", "--port", "0", "--bind", "0.0.0.0", "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--insecure"),
        "{out:?}"
    );
}

#[test]
fn api_keys_give_401_without_a_key_and_403_outside_their_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("engram.toml");
    std::fs::write(
        &cfg,
        r#"
[[api_keys]]
key = "alice-key-123"
spaces = ["alice"]

[[api_keys]]
key = "admin-key-456"
spaces = ["*"]
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let s = Server::try_start(&data, &["--config", cfg.to_str().unwrap()]).unwrap();
    let c = client();
    let alice = |r: reqwest::blocking::RequestBuilder| r.bearer_auth("alice-key-123");
    let admin = |r: reqwest::blocking::RequestBuilder| r.bearer_auth("admin-key-456");

    // /health needs no key; everything else does.
    assert_eq!(
        c.get(s.url("/health")).send().unwrap().status().as_u16(),
        200
    );
    let (st, v) = json_of(c.get(s.url("/api/v1/spaces")).send().unwrap());
    assert_eq!(st, 401);
    assert_eq!(v["error"]["code"], "UNAUTHORIZED");
    let (st, _) = json_of(
        c.get(s.url("/api/v1/spaces"))
            .bearer_auth("wrong-key-000")
            .send()
            .unwrap(),
    );
    assert_eq!(st, 401);
    let (st, _) = json_of(
        c.get(s.url("/api/v1/spaces"))
            .header("Authorization", "alice-key-123")
            .send()
            .unwrap(),
    );
    assert_eq!(st, 401, "the Bearer scheme is required");

    // alice may create and use "alice", nothing else.
    let (st, _) = json_of(
        alice(c.post(s.url("/api/v1/spaces")))
            .json(&json!({"id": "alice", "dimension": 4}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 201);
    let (st, _) = json_of(
        alice(c.post(s.url("/api/v1/spaces")))
            .json(&json!({"id": "bob"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403);
    let (st, _) = json_of(
        alice(c.post(s.url("/api/v1/memories/remember?space=alice")))
            .json(&json!({"id": "m1", "content": "mine", "embedding": [1, 0, 0, 0]}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 201);
    let (st, v) = json_of(
        alice(c.post(s.url("/api/v1/memories/remember")))
            .json(&json!({"content": "into default"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403, "default is not alice's: {v}");
    assert_eq!(v["error"]["code"], "FORBIDDEN");
    let (st, _) = json_of(
        alice(c.get(s.url("/api/v1/memories/recall?query=x")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403);
    let (st, _) = json_of(
        alice(c.delete(s.url("/api/v1/spaces/default")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403);
    // Listing shows only alice's spaces to alice, all to the admin key.
    let (_, v) = json_of(alice(c.get(s.url("/api/v1/spaces"))).send().unwrap());
    assert_eq!(v["spaces"].as_array().unwrap().len(), 1);
    let (_, v) = json_of(admin(c.get(s.url("/api/v1/spaces"))).send().unwrap());
    assert_eq!(v["spaces"].as_array().unwrap().len(), 2);
    let (st, v) = json_of(
        admin(c.get(s.url("/api/v1/memories/m1?space=alice")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        c.get(s.url("/metrics")).send().unwrap().status().as_u16(),
        401
    );
    assert_eq!(
        admin(c.get(s.url("/metrics")))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // With keys, a non-loopback address is allowed (not tested here: binding 0.0.0.0 in a
    // test would expose the port); without keys it needs --insecure (tested above).
}

#[test]
fn a_bad_configuration_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[[api_keys]]\nkey = \"short\"\nspaces = [\"*\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
            "start",
            "--port",
            "0",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"),
        "{out:?}"
    );
    std::fs::write(
        &cfg,
        "[[api_keys]]\nkey = \"long-enough-key\"\nspaces = [\"Not Valid\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
            "start",
            "--port",
            "0",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spaces"),
        "{out:?}"
    );
}

#[test]
fn recall_retrieval_parameter_and_found_by() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    for t in ["pelicans fish in the bay", "the bay bridge is closed"] {
        let (st, v) = post(
            &c,
            &s,
            "/api/v1/memories/remember",
            json!({"content": t, "auto_link": false}),
        );
        assert_eq!(st, 201, "{v}");
    }
    // Default for text: hybrid; each result names the paths that found it.
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/recall",
        json!({"query": "pelican", "mode": "similarity"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["retrieval"], "hybrid");
    let top = &v["memories"]["vivid"][0];
    assert_eq!(top["content"], "pelicans fish in the bay");
    assert_eq!(top["found_by"], json!(["dense", "lexical"]), "{v}");
    // Lexical only, by GET.
    let (st, v) = get(
        &c,
        &s,
        "/api/v1/memories/recall?query=bridge&retrieval=lexical&mode=similarity",
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["retrieval"], "lexical");
    let vivid = v["memories"]["vivid"].as_array().unwrap();
    assert_eq!(vivid.len(), 1, "{v}");
    assert_eq!(vivid[0]["found_by"], json!(["lexical"]));
    // Bad values: 400 with the accepted ones named; lexical by vector refused.
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/recall",
        json!({"query": "bay", "retrieval": "fuzzy"}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("dense, lexical, hybrid"));
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/recall",
        json!({"embedding": unit(768, 3), "retrieval": "lexical"}),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(s.stop().code(), Some(0));
}

#[test]
fn a_nesting_bomb_is_a_400_and_a_refused_first_write_creates_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    // 100,000 `[`: once a stack overflow that aborted the process.
    let r = c
        .post(s.url("/api/v1/memories/remember"))
        .body(vec![b'['; 100_000])
        .send()
        .unwrap();
    let (st, v) = json_of(r);
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nested"));
    // A write refused for a new space leaves no space behind: the caller can then create
    // it with the dimension they meant.
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/remember?space=fresh",
        json!({"content": "x", "embedding": [0.0, 0.0]}),
    );
    assert_eq!(st, 400, "{v}");
    let (_, v) = get(&c, &s, "/api/v1/spaces");
    assert_eq!(v["spaces"].as_array().unwrap().len(), 1, "{v}");
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/spaces",
        json!({"id": "fresh", "dimension": 2}),
    );
    assert_eq!(st, 201, "{v}");
    // The first write to a new space gives it its dimension.
    let (st, v) = post(
        &c,
        &s,
        "/api/v1/memories/remember?space=small",
        json!({"content": "x", "embedding": [0.6, 0.8]}),
    );
    assert_eq!(st, 201, "{v}");
    let (_, v) = get(&c, &s, "/api/v1/spaces");
    assert_eq!(v["spaces"][2]["id"], "small");
    assert_eq!(v["spaces"][2]["dimension"], 2);
    assert_eq!(s.stop().code(), Some(0));
}
