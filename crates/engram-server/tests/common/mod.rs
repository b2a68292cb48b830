//! What the request tests of this crate share: the real router over an engine in a temporary
//! directory, driven in process.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use engram_engine::{Engine, EngineOptions};
use engram_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Fixture {
    pub router: Router,
    pub engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        default_dimension: 4,
        ..EngineOptions::default()
    };
    let engine = Arc::new(Engine::open(dir.path(), opts).unwrap());
    let router = app(AppState::new(engine.clone()));
    Fixture {
        router,
        engine,
        _dir: dir,
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sends one request; the status and the JSON body (`Null` if the body is not JSON).
pub fn send(
    rt: &tokio::runtime::Runtime,
    f: &Fixture,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    rt.block_on(async {
        let resp = f.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

pub fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

/// Two memories every route can find.
pub fn seed(rt: &tokio::runtime::Runtime, f: &Fixture) {
    for (id, e) in [("a", [1, 0, 0, 0]), ("b2", [0, 0, 1, 0])] {
        let (st, v) = send(
            rt,
            f,
            Method::POST,
            "/api/v1/memories/remember",
            Some(serde_json::to_vec(&json!({"id": id, "content": id, "embedding": e})).unwrap()),
        );
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
}
