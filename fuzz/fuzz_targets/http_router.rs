//! Every route's body decoding, query parsing and headers (`X-Memory-Space`,
//! `Idempotency-Key`), through the real router in process: any
//! bytes, or any JSON (built from the input, with the API's field names so the fuzzer reaches
//! the validation behind the parser), must get an answer that is not a 500, and never a
//! panic, an abort or a stack overflow.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use engram_engine::{Engine, EngineOptions};
use engram_server::{app, AppState};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Harness {
    router: Router,
    rt: tokio::runtime::Runtime,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("engram-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = EngineOptions {
            default_dimension: 4,
            ..EngineOptions::default()
        };
        let engine = Arc::new(Engine::open(&dir, opts).expect("engine"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            router: app(AppState::new(engine)),
            rt,
        }
    })
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/spaces"),
    ("POST", "/api/v1/spaces"),
    ("DELETE", "/api/v1/spaces/s1"),
    ("POST", "/api/v1/memories/remember"),
    ("POST", "/api/v1/memories/batch"),
    ("GET", "/api/v1/memories/recall"),
    ("POST", "/api/v1/memories/recall"),
    ("GET", "/api/v1/memories/m1"),
    ("DELETE", "/api/v1/memories/m1"),
    ("POST", "/api/v1/memories/m1/links"),
];

/// Field names of the API, so that generated objects pass the unknown-field check.
const FIELDS: &[&str] = &[
    "content",
    "id",
    "embedding",
    "confidence",
    "timestamp",
    "metadata",
    "links",
    "auto_link",
    "memory_space_id",
    "memories",
    "query",
    "max_results",
    "threshold",
    "mode",
    "max_hops",
    "retrieval",
    "to",
    "weight",
    "dimension",
    "space",
    "include_embedding",
    "embedding_b64",
    "encoding",
    "ef",
];

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(Key, Json)>),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    Json(Json),
}

#[derive(Arbitrary, Debug)]
struct Input {
    route: u8,
    /// Query parameters: known or arbitrary names, arbitrary values (percent-encoded).
    query: Vec<(Key, String)>,
    payload: Option<Payload>,
    space_header: Option<String>,
    /// `Idempotency-Key` headers: any bytes, any number of them (a repeat of an input's key
    /// meets the table a previous input filled).
    idempotency_keys: Vec<Vec<u8>>,
}

fn key(k: &Key) -> String {
    match k {
        Key::Known(i) => FIELDS[*i as usize % FIELDS.len()].to_string(),
        Key::Any(s) => s.clone(),
    }
}

fn write_json(j: &Json, out: &mut String) {
    match j {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(i) => out.push_str(&i.to_string()),
        // Non-finite values are written as what a client might send by mistake.
        Json::Float(f) => out.push_str(&format!("{f:e}")),
        Json::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
        Json::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Json::Obj(o) => {
            out.push('{');
            for (i, (k, v)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&key(k)).unwrap());
                out.push(':');
                write_json(v, out);
            }
            out.push('}');
        }
    }
}

fn percent(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let h = harness();
    let (method, path) = ROUTES[input.route as usize % ROUTES.len()];
    let mut uri = path.to_string();
    for (i, (k, v)) in input.query.iter().enumerate() {
        uri.push(if i == 0 { '?' } else { '&' });
        uri.push_str(&percent(&key(k)));
        uri.push('=');
        uri.push_str(&percent(v));
    }
    let body = match &input.payload {
        None => Vec::new(),
        Some(Payload::Raw(b)) => b.clone(),
        Some(Payload::Json(j)) => {
            let mut s = String::new();
            write_json(j, &mut s);
            s.into_bytes()
        }
    };
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(&uri);
    if let Some(s) = &input.space_header {
        if let Ok(v) = axum::http::HeaderValue::from_str(s) {
            req = req.header("x-memory-space", v);
        }
    }
    for k in input.idempotency_keys.iter().take(3) {
        if let Ok(v) = axum::http::HeaderValue::from_bytes(k) {
            req = req.header("idempotency-key", v);
        }
    }
    let Ok(req) = req.body(Body::from(body)) else {
        return;
    };
    let status =
        h.rt.block_on(async { h.router.clone().oneshot(req).await })
            .expect("the router is infallible")
            .status();
    assert_ne!(status.as_u16(), 500, "{method} {uri}: internal error");
});
