//! `Idempotency-Key` over HTTP on a single node (shared/API.md): a repeat within ten minutes
//! gets the first answer and stores nothing, after a crash (SIGKILL) and restart too.

mod common;

use std::time::Duration;

use common::Server;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn send(r: RequestBuilder) -> (u16, Value) {
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, v)
}

fn keyed_post(c: &Client, s: &Server, path: &str, key: &str, body: Value) -> (u16, Value) {
    send(
        c.post(s.url(path))
            .header("Idempotency-Key", key)
            .header("X-Memory-Space", "keys")
            .json(&body),
    )
}

fn memories(c: &Client, s: &Server) -> u64 {
    let (_, v) = send(c.get(s.url("/api/v1/spaces")));
    v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sp| sp["id"] == "keys")
        .map_or(0, |sp| sp["memories"].as_u64().unwrap())
}

#[test]
fn a_repeated_key_gets_the_first_answer_even_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let (st, created) = send(
        c.post(s.url("/api/v1/spaces"))
            .header("Idempotency-Key", "create-keys")
            .json(&json!({"id": "keys", "dimension": 4})),
    );
    assert_eq!(st, 201, "{created}");
    // A repeat of the creation is its first answer, not a conflict.
    let (st, again) = send(
        c.post(s.url("/api/v1/spaces"))
            .header("Idempotency-Key", "create-keys")
            .json(&json!({"id": "keys", "dimension": 4})),
    );
    assert_eq!((st, &again), (201, &created));

    // No explicit id: the server makes one, so only the key keeps a retry from storing twice.
    let body = json!({"content": "the user prefers tea", "embedding": [1, 0, 0, 0]});
    let (st, first) = keyed_post(&c, &s, "/api/v1/memories/remember", "r-1", body.clone());
    assert_eq!(st, 201, "{first}");
    let (st, repeat) = keyed_post(&c, &s, "/api/v1/memories/remember", "r-1", body.clone());
    assert_eq!((st, &repeat), (201, &first));
    assert_eq!(memories(&c, &s), 1);
    // Another key is another write.
    let (st, other) = keyed_post(&c, &s, "/api/v1/memories/remember", "r-2", body.clone());
    assert_eq!(st, 201);
    assert_ne!(other["memory_id"], first["memory_id"]);
    assert_eq!(memories(&c, &s), 2);

    let batch = json!({"memories": [
        {"content": "one", "embedding": [0, 1, 0, 0]},
        {"content": "two", "embedding": [0, 0, 1, 0]},
    ]});
    let (st, b1) = keyed_post(&c, &s, "/api/v1/memories/batch", "b-1", batch.clone());
    assert_eq!(st, 201, "{b1}");
    let (st, b2) = keyed_post(&c, &s, "/api/v1/memories/batch", "b-1", batch.clone());
    assert_eq!((st, &b2), (201, &b1));
    assert_eq!(memories(&c, &s), 4);

    // A link's repeat keeps the first weight.
    let from = first["memory_id"].as_str().unwrap().to_string();
    let to = other["memory_id"].as_str().unwrap().to_string();
    let link = format!("/api/v1/memories/{from}/links");
    let (st, l1) = keyed_post(&c, &s, &link, "l-1", json!({"to": to, "weight": 0.5}));
    assert_eq!(st, 201, "{l1}");
    let (st, l2) = keyed_post(&c, &s, &link, "l-1", json!({"to": to, "weight": 0.9}));
    assert_eq!((st, &l2), (201, &l1));

    // A forget's repeat is its first answer (200), not a 404.
    let forget = |s: &Server, key: &str| {
        send(
            c.delete(s.url(&format!("/api/v1/memories/{to}")))
                .header("Idempotency-Key", key)
                .header("X-Memory-Space", "keys"),
        )
    };
    let (st, f1) = forget(&s, "f-1");
    assert_eq!(st, 200, "{f1}");
    assert_eq!(forget(&s, "f-1"), (200, f1.clone()));
    // A key first used by another kind of write is a conflict, not someone else's answer.
    let (st, v) = keyed_post(&c, &s, "/api/v1/memories/remember", "f-1", body.clone());
    assert_eq!(st, 409, "{v}");
    assert_eq!(memories(&c, &s), 3);

    // Bad keys: too long, or two of them.
    let (st, v) = keyed_post(
        &c,
        &s,
        "/api/v1/memories/remember",
        &"k".repeat(129),
        body.clone(),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("128"),
        "{v}"
    );
    let (st, v) = send(
        c.post(s.url("/api/v1/memories/remember"))
            .header("Idempotency-Key", "a")
            .header("Idempotency-Key", "b")
            .json(&body),
    );
    assert_eq!(st, 400, "{v}");
    let (st, _) = keyed_post(
        &c,
        &s,
        "/api/v1/memories/remember",
        &"k".repeat(128),
        body.clone(),
    );
    assert_eq!(st, 201);
    assert_eq!(memories(&c, &s), 4);

    // Killed (no clean shutdown) and restarted: the keys came back with the WAL.
    drop(s);
    let s = Server::start(dir.path());
    let (st, after) = keyed_post(&c, &s, "/api/v1/memories/remember", "r-1", body.clone());
    assert_eq!((st, &after), (201, &first));
    let (st, after) = keyed_post(&c, &s, "/api/v1/memories/batch", "b-1", batch);
    assert_eq!((st, &after), (201, &b1));
    assert_eq!(forget(&s, "f-1"), (200, f1));
    assert_eq!(memories(&c, &s), 4);
    s.stop();
}
