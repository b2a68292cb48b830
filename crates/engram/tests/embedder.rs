//! The server with a neural text embedder (`--embedder-model`, all-MiniLM-L6-v2 fetched by
//! scripts/fetch-model): text is embedded by the model, new spaces take its dimension, each
//! space keeps the embedder it was created with, and a broken model directory stops startup.

mod common;

use std::time::Duration;

use common::Server;
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn call(r: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn dims(c: &Client, s: &Server) -> Vec<(String, u64)> {
    let (status, v) = call(c.get(s.url("/api/v1/spaces")));
    assert_eq!(status, 200, "{v}");
    v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["dimension"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn text_is_embedded_by_the_model_and_spaces_keep_their_embedder() {
    let model = engram_embed::workspace_test_model().unwrap();
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = client();

    // Without a model: a 384-d space of the hashing embedder.
    let s = Server::start(dir.path());
    let (status, v) = call(
        c.post(s.url("/api/v1/spaces"))
            .json(&json!({"id": "hashed", "dimension": 384})),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(s.stop().code(), Some(0));

    let s = Server::try_start(dir.path(), &["--embedder-model", model]).unwrap();
    // `default` existed already (768-d, hashing); a new space takes the model's dimension.
    let (status, v) = call(
        c.post(s.url("/api/v1/spaces"))
            .json(&json!({"id": "notes"})),
    );
    assert_eq!(status, 201, "{v}");
    let d = dims(&c, &s);
    assert!(d.contains(&("notes".into(), 384)), "{d:?}");
    assert!(d.contains(&("default".into(), 768)), "{d:?}");

    let texts = [
        "The dentist appointment was moved to Thursday afternoon.",
        "Our flight to Lisbon leaves at 7am from terminal 2.",
        "Grandma's apple pie needs two cups of flour and cinnamon.",
        "The quarterly report is due to the finance team next Monday.",
    ];
    let (status, v) = call(c.post(s.url("/api/v1/memories/batch?space=notes")).json(&json!({
        "memories": texts.iter().map(|t| json!({"content": t, "auto_link": false})).collect::<Vec<_>>()
    })));
    assert_eq!(status, 201, "{v}");
    // Paraphrased cues with no word in common with the memory they mean.
    for (cue, want) in [
        ("when do we board the plane", 1),
        ("baking recipe ingredients", 2),
        ("tooth doctor visit", 0),
    ] {
        let (status, v) = call(
            c.post(s.url("/api/v1/memories/recall?space=notes"))
                .json(&json!({"query": cue, "mode": "similarity", "max_results": 1})),
        );
        assert_eq!(status, 200, "{v}");
        let top = &v["memories"]["vivid"][0]["content"];
        assert_eq!(top, texts[want], "cue {cue:?}: {v}");
    }
    // A stored embedding is the model's: recalling by the same text scores ~1.
    let (status, v) = call(c.get(s.url(&format!(
        "/api/v1/memories/recall?space=notes&mode=similarity&max_results=1&query={}",
        texts[3].replace(' ', "%20")
    ))));
    assert_eq!(status, 200, "{v}");
    let sim = v["memories"]["vivid"][0]["similarity_score"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(sim > 0.999, "{v}");

    // The 384-d space made without the model keeps the hashing embedder: a text remembered
    // there and recalled by the same text still matches exactly.
    let (status, v) = call(
        c.post(s.url("/api/v1/memories/remember?space=hashed"))
            .json(&json!({"content": "hashing stays hashing", "auto_link": false})),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(s.stop().code(), Some(0));

    // Restarted without the model: text in its spaces is refused with a clear 503; memories
    // with embeddings and recalls by vector still work; other spaces are unaffected.
    let s = Server::start(dir.path());
    let (status, v) = call(
        c.post(s.url("/api/v1/memories/remember?space=notes"))
            .json(&json!({"content": "no model now"})),
    );
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--embedder-model"),
        "{v}"
    );
    let (status, v) = call(
        c.post(s.url("/api/v1/memories/recall?space=notes"))
            .json(&json!({"query": "plane"})),
    );
    assert_eq!(status, 503, "{v}");
    let mut e = vec![0.0f32; 384];
    e[0] = 1.0;
    let (status, v) = call(
        c.post(s.url("/api/v1/memories/remember?space=notes"))
            .json(&json!({"content": "with a vector", "embedding": e, "auto_link": false})),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        c.post(s.url("/api/v1/memories/recall?space=hashed"))
            .json(&json!({"query": "hashing stays hashing", "mode": "similarity"})),
    );
    assert_eq!(status, 200, "{v}");
    let sim = v["memories"]["vivid"][0]["similarity_score"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(sim > 0.999, "{v}");
    assert_eq!(s.stop().code(), Some(0));
}

#[test]
fn a_broken_model_directory_stops_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["start", "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--embedder-model")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-model") && err.contains("not found"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}
