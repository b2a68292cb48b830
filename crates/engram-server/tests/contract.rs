//! The request-refusal half of shared/API.md, route by route, through the real router in
//! process: a body field or query parameter a route does not know is a 400 naming it and
//! listing the accepted ones; a body nested deeper than 64 levels (or a nesting bomb of
//! 100,000 `[`) is a 400, never a crash; a refused request changes nothing.

mod common;

use axum::http::{Method, StatusCode};
use common::{fixture, message, runtime, seed, send, Fixture};
use serde_json::{json, Value};

/// Every route: method, path, and a valid body for those that take one.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/health", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/api/v1/spaces", None),
        (
            Method::POST,
            "/api/v1/spaces",
            Some(json!({"id": "s2", "dimension": 4})),
        ),
        (Method::DELETE, "/api/v1/spaces/s2", None),
        (
            Method::POST,
            "/api/v1/memories/remember",
            Some(json!({"id": "r", "content": "x", "embedding": [1, 0, 0, 0]})),
        ),
        (
            Method::POST,
            "/api/v1/memories/batch",
            Some(json!({"memories": [{"id": "b", "content": "x", "embedding": [0, 1, 0, 0]}]})),
        ),
        (
            Method::GET,
            "/api/v1/memories/recall?embedding=%5B1%2C0%2C0%2C0%5D",
            None,
        ),
        (
            Method::POST,
            "/api/v1/memories/recall",
            Some(json!({"embedding": [1, 0, 0, 0]})),
        ),
        (Method::GET, "/api/v1/memories/a", None),
        (Method::DELETE, "/api/v1/memories/zz", None),
        (
            Method::POST,
            "/api/v1/memories/a/links",
            Some(json!({"to": "b2", "weight": 0.5})),
        ),
    ]
}

fn with_param(path: &str, param: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{param}")
}

#[test]
fn every_route_refuses_an_unknown_query_parameter_naming_it() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    for (method, path, body) in routes() {
        let uri = with_param(path, "colour=blue");
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let (st, v) = send(&rt, &f, method.clone(), &uri, body);
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        assert_eq!(v["error"]["code"], "INVALID_MEMORY_INPUT", "{method} {uri}");
        let m = message(&v);
        assert!(m.contains("\"colour\""), "{method} {uri}: {m}");
        assert!(
            m.contains("accepted parameters") || m.contains("takes no query parameters"),
            "{method} {uri}: {m}"
        );
    }
}

#[test]
fn every_route_with_a_body_refuses_an_unknown_field_naming_it() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    for (method, path, body) in routes() {
        let Some(mut body) = body else { continue };
        body["confidance"] = json!(0.2);
        let (st, v) = send(
            &rt,
            &f,
            method.clone(),
            path,
            Some(serde_json::to_vec(&body).unwrap()),
        );
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
        let m = message(&v);
        assert!(m.contains("\"confidance\""), "{method} {path}: {m}");
        assert!(m.contains("accepted fields"), "{method} {path}: {m}");
    }
    // A member of a batch and a link of a memory are checked too.
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/batch",
        Some(
            serde_json::to_vec(&json!({"memories": [{"content": "x", "confidance": 0.2}]}))
                .unwrap(),
        ),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("\"confidance\""), "{v}");
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/remember",
        Some(
            serde_json::to_vec(&json!({"content": "x", "links": [{"to": "a", "wieght": 1}]}))
                .unwrap(),
        ),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("\"wieght\""), "{v}");
    // Nothing was stored by the refused writes.
    let space = engram_core::SpaceId::new("default").unwrap();
    assert_eq!(f.engine.space_info(&space).unwrap().memories, 2);
}

#[test]
fn a_field_of_the_api_not_implemented_yet_is_refused_and_said_so() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    // The new user's example: a filter must never be dropped without a word.
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/recall",
        Some(
            serde_json::to_vec(&json!({"embedding": [1, 0, 0, 0], "filter": {"user": "bob"}}))
                .unwrap(),
        ),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let m = message(&v);
    assert!(m.contains("\"filter\""), "{m}");
    assert!(
        m.contains("not supported by this server version yet"),
        "{m}"
    );
}

#[test]
fn a_single_node_takes_consistency_and_its_reads_are_current() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    let (st, v) = send(
        &rt,
        &f,
        Method::GET,
        "/api/v1/memories/recall?query=x&consistency=stale",
        None,
    );
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["staleness_ms"], 0, "{v}");
    let body = serde_json::to_vec(&json!({"query": "x", "consistency": "linearizable"})).unwrap();
    let (st, v) = send(&rt, &f, Method::POST, "/api/v1/memories/recall", Some(body));
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v.get("staleness_ms").is_none(), "{v}");
    let (st, v) = send(
        &rt,
        &f,
        Method::GET,
        "/api/v1/memories/recall?query=x&consistency=eventual",
        None,
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("consistency"), "{v}");
}

#[test]
fn nesting_bombs_are_a_400_on_every_route_that_takes_a_body() {
    let rt = runtime();
    let f = fixture();
    seed(&rt, &f);
    let bomb = vec![b'['; 100_000];
    let mut deep = String::from("{\"content\": \"x\", \"metadata\": ");
    deep.push_str(&"[".repeat(70));
    deep.push_str(&"]".repeat(70));
    deep.push('}');
    for (method, path, body) in routes() {
        if body.is_none() {
            continue;
        }
        for payload in [bomb.clone(), deep.clone().into_bytes(), vec![b'{'; 100_000]] {
            let (st, v) = send(&rt, &f, method.clone(), path, Some(payload));
            assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
            assert!(message(&v).contains("nested"), "{method} {path}: {v}");
        }
    }
    // As a query parameter too.
    let uri = format!("/api/v1/memories/recall?embedding={}", "%5B".repeat(10_000));
    let (st, v) = send(&rt, &f, Method::GET, &uri, None);
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // Brackets inside strings are not nesting; 64 levels are fine for the parser.
    let ok = json!({"content": "[[[[{{{{", "id": "q", "embedding": [0, 0, 0, 1]});
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/remember",
        Some(serde_json::to_vec(&ok).unwrap()),
    );
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let mut at_limit = "[".repeat(64);
    at_limit.push_str(&"]".repeat(64));
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/remember",
        Some(at_limit.into_bytes()),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(!message(&v).contains("nested"), "{v}");
    // The server still answers.
    let (st, _) = send(&rt, &f, Method::GET, "/health", None);
    assert_eq!(st, StatusCode::OK);
}

/// Every space's id and dimension, as `GET /api/v1/spaces` lists them.
fn space_dims(rt: &tokio::runtime::Runtime, f: &Fixture) -> Vec<(String, u64)> {
    let (st, v) = send(rt, f, Method::GET, "/api/v1/spaces", None);
    assert_eq!(st, StatusCode::OK, "{v}");
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
fn a_refused_first_write_creates_no_space() {
    let rt = runtime();
    let f = fixture();
    let spaces = |rt: &tokio::runtime::Runtime| -> Vec<String> {
        space_dims(rt, &f).into_iter().map(|(id, _)| id).collect()
    };
    for bad in [
        json!({"content": "x", "embedding": [0, 0]}),
        json!({"content": "", "embedding": [1, 0]}),
        json!({"content": "x", "embedding": [1, 0], "links": [{"to": "nowhere", "weight": 1}]}),
        json!({"content": "x", "confidence": 2}),
        json!({"content": "x", "confidance": 0.2}),
    ] {
        let (st, v) = send(
            &rt,
            &f,
            Method::POST,
            "/api/v1/memories/remember?space=fresh",
            Some(serde_json::to_vec(&bad).unwrap()),
        );
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(spaces(&rt), ["default"], "{bad}");
    }
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/batch?space=fresh",
        Some(
            serde_json::to_vec(&json!({"memories": [
                {"content": "x", "embedding": [1, 0]},
                {"content": "y", "embedding": [1, 0, 0]}
            ]}))
            .unwrap(),
        ),
    );
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(spaces(&rt), ["default"]);
    // The caller can now create the space as they meant it.
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/spaces",
        Some(serde_json::to_vec(&json!({"id": "fresh", "dimension": 2})).unwrap()),
    );
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // A space created by its first write takes that write's dimension; without an
    // embedding, the text embedder's.
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/remember?space=two",
        Some(serde_json::to_vec(&json!({"content": "x", "embedding": [0.5, 0.5]})).unwrap()),
    );
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = send(
        &rt,
        &f,
        Method::POST,
        "/api/v1/memories/remember?space=text",
        Some(serde_json::to_vec(&json!({"content": "just words"})).unwrap()),
    );
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(
        space_dims(&rt, &f),
        [
            ("default".to_string(), 4),
            ("fresh".to_string(), 2),
            ("text".to_string(), 4),
            ("two".to_string(), 2)
        ]
    );
}
