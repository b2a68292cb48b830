//! Embeddings as base64 (`embedding_b64`, `encoding=base64`) and the per-request search
//! breadth `ef`, as shared/API.md states them: each form gives the same result as the JSON
//! one, and each malformed value is a 400 that says what is wrong and stores nothing.

mod common;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use common::{fixture, message, runtime, seed, send, Fixture};
use serde_json::{json, Value};

fn b64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<f32> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn post(rt: &tokio::runtime::Runtime, f: &Fixture, path: &str, body: Value) -> (StatusCode, Value) {
    send(
        rt,
        f,
        Method::POST,
        path,
        Some(serde_json::to_vec(&body).unwrap()),
    )
}

fn get(rt: &tokio::runtime::Runtime, f: &Fixture, path: &str) -> (StatusCode, Value) {
    send(rt, f, Method::GET, path, None)
}

fn memories(f: &Fixture) -> usize {
    let space = engram_core::SpaceId::new("default").unwrap();
    f.engine.space_info(&space).unwrap().memories
}

/// The ids and scores of a recall result, in order.
fn ranked(v: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for list in ["vivid", "associated"] {
        for r in v["memories"][list].as_array().unwrap() {
            out.push((
                r["id"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap(),
            ));
        }
    }
    out
}

#[test]
fn base64_embeddings_are_the_json_ones() {
    let rt = runtime();
    let f = fixture();
    let v = [0.25f32, -1.5, 3.0, 0.125];
    let (st, r) = post(
        &rt,
        &f,
        "/api/v1/memories/remember",
        json!({"id": "b", "content": "by base64", "embedding_b64": b64(&v)}),
    );
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let (st, r) = post(
        &rt,
        &f,
        "/api/v1/memories/remember",
        json!({"id": "j", "content": "by json", "embedding": v}),
    );
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let (st, r) = post(
        &rt,
        &f,
        "/api/v1/memories/batch",
        json!({"memories": [{"id": "c", "content": "batch", "embedding_b64": b64(&[0.0, 0.0, 1.0, 0.0])}]}),
    );
    assert_eq!(st, StatusCode::CREATED, "{r}");

    // Read back: the base64 form decodes to exactly the JSON form, for both writes.
    for id in ["b", "j"] {
        let (st, as_json) = get(
            &rt,
            &f,
            &format!("/api/v1/memories/{id}?include_embedding=true"),
        );
        assert_eq!(st, StatusCode::OK, "{as_json}");
        let (st, as_b64) = get(
            &rt,
            &f,
            &format!("/api/v1/memories/{id}?include_embedding=true&encoding=base64"),
        );
        assert_eq!(st, StatusCode::OK, "{as_b64}");
        assert!(as_b64.get("embedding").is_none(), "{as_b64}");
        let decoded = unb64(as_b64["embedding_b64"].as_str().unwrap());
        let numbers: Vec<f32> = as_json["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, numbers, "{id}");
        // `encoding` alone asks for the embedding in that form.
        let (_, alone) = get(&rt, &f, &format!("/api/v1/memories/{id}?encoding=base64"));
        assert_eq!(alone["embedding_b64"], as_b64["embedding_b64"]);
        let (_, none) = get(&rt, &f, &format!("/api/v1/memories/{id}"));
        assert!(none.get("embedding").is_none() && none.get("embedding_b64").is_none());
    }
    let (_, b) = get(&rt, &f, "/api/v1/memories/b?encoding=base64");
    let (_, j) = get(&rt, &f, "/api/v1/memories/j?encoding=base64");
    assert_eq!(b["embedding_b64"], j["embedding_b64"]);

    // A recall by base64 is the recall by JSON numbers.
    let q = [1.0f32, -2.0, 2.5, 0.0];
    let (st, by_json) = post(
        &rt,
        &f,
        "/api/v1/memories/recall",
        json!({"embedding": q, "mode": "similarity"}),
    );
    assert_eq!(st, StatusCode::OK, "{by_json}");
    let (st, by_b64) = post(
        &rt,
        &f,
        "/api/v1/memories/recall",
        json!({"embedding_b64": b64(&q), "mode": "similarity"}),
    );
    assert_eq!(st, StatusCode::OK, "{by_b64}");
    assert_eq!(ranked(&by_json), ranked(&by_b64));
    assert_eq!(ranked(&by_json).len(), 3, "{by_json}");
}

#[test]
fn a_malformed_base64_embedding_is_a_400_that_says_which_and_stores_nothing() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    let before = memories(&f);
    let nan = b64(&[1.0, f32::NAN, 0.0, 0.0]);
    let inf = b64(&[1.0, 0.0, f32::INFINITY, 0.0]);
    let cases: Vec<(Value, &str)> = vec![
        (json!("not base64 at all!"), "not base64"),
        (json!("AAAA"), "not a whole number of 4-byte"),
        (json!(b64(&[1.0, 0.0])), "2 dimensions"),
        (json!(nan), "embedding_b64[1] is NaN"),
        (json!(inf), "embedding_b64[2] is inf"),
        (json!(12), "invalid type"),
    ];
    for (value, expected) in &cases {
        for (path, body) in [
            (
                "/api/v1/memories/remember",
                json!({"content": "x", "embedding_b64": value}),
            ),
            (
                "/api/v1/memories/batch",
                json!({"memories": [
                    {"content": "fine", "embedding": [1, 0, 0, 0]},
                    {"content": "x", "embedding_b64": value}
                ]}),
            ),
            ("/api/v1/memories/recall", json!({"embedding_b64": value})),
        ] {
            let (st, v) = post(&rt, &f, path, body);
            assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {value}: {v}");
            let m = message(&v);
            assert!(m.contains(expected), "{path} {value}: {m}");
        }
    }
    // Both forms at once.
    let (st, v) = post(
        &rt,
        &f,
        "/api/v1/memories/remember",
        json!({"content": "x", "embedding": [1, 0, 0, 0], "embedding_b64": b64(&[1.0, 0.0, 0.0, 0.0])}),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("not both"), "{v}");
    // A bad encoding on a read.
    let (st, v) = get(&rt, &f, "/api/v1/memories/a?encoding=xml");
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("json, base64"), "{v}");
    assert_eq!(memories(&f), before);
}

#[test]
fn ef_is_taken_in_range_and_refused_outside_it_naming_the_range() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    for ef in [10, 64, 4096] {
        let (st, v) = post(
            &rt,
            &f,
            "/api/v1/memories/recall",
            json!({"embedding": [1, 0, 0, 0], "ef": ef, "mode": "similarity"}),
        );
        assert_eq!(st, StatusCode::OK, "ef {ef}: {v}");
        assert_eq!(ranked(&v)[0].0, "a", "{v}");
        let (st, v) = get(
            &rt,
            &f,
            &format!("/api/v1/memories/recall?embedding=%5B1%2C0%2C0%2C0%5D&ef={ef}"),
        );
        assert_eq!(st, StatusCode::OK, "ef {ef}: {v}");
    }
    for ef in [0, 9, 4097, 1_000_000] {
        let (st, v) = post(
            &rt,
            &f,
            "/api/v1/memories/recall",
            json!({"query": "a", "ef": ef}),
        );
        assert_eq!(st, StatusCode::BAD_REQUEST, "ef {ef}: {v}");
        assert!(message(&v).contains("10 to 4096"), "{v}");
        let (st, v) = get(&rt, &f, &format!("/api/v1/memories/recall?query=a&ef={ef}"));
        assert_eq!(st, StatusCode::BAD_REQUEST, "ef {ef}: {v}");
        assert!(message(&v).contains("10 to 4096"), "{v}");
    }
    for bad in ["-1", "many", "1.5"] {
        let (st, v) = get(
            &rt,
            &f,
            &format!("/api/v1/memories/recall?query=a&ef={bad}"),
        );
        assert_eq!(st, StatusCode::BAD_REQUEST, "ef {bad}: {v}");
        assert!(message(&v).contains("ef"), "{v}");
    }
    let (st, v) = post(
        &rt,
        &f,
        "/api/v1/memories/recall",
        json!({"query": "a", "ef": -3}),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}
