//! Routing on a cluster node (shared/API.md, "Cluster"): every request for a space is
//! executed by the leader of the space's group. A node that does not lead it forwards the
//! request once, with `X-Engram-Hop`; a node that receives a forwarded request and does not
//! lead the space answers 503 with the leader it knows (`X-Engram-Leader`), so the sender
//! learns it; a request never takes a second hop. Reads are linearizable (the leader
//! confirms its leadership with a quorum and has applied everything committed before it
//! reads) unless `consistency=stale`, which lets a replica answer from its own data and adds
//! `"staleness_ms"`. A write to a space the catalog does not hold creates it, as on a single
//! node. `consistency` is accepted by a single node too (every read there is current).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_core::SpaceId;
use engram_replication::cluster::{ClusterNode, SpaceError};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::{AppState, Grant};

mod catalog;
use catalog::{create_space, drop_space, list_spaces, nonce};

/// How long a forwarded request may take before it is a 503.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks a forwarded request (its value: the sender's epoch).
pub const HOP_HEADER: &str = "x-engram-hop";
/// On a 503 from a node that does not lead the space: the leader it knows.
pub const LEADER_HEADER: &str = "x-engram-leader";

/// How a read wants its answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Linearizable,
    Stale,
}

/// A request's route as routing sees it.
enum Kind {
    /// Not routed (health, metrics, cluster routes, unknown paths).
    Local,
    /// A read or write of one space's memories.
    Space {
        write: bool,
        creates: bool,
    },
    ListSpaces,
    CreateSpace,
    DropSpace(String),
}

fn kind(method: &Method, path: &str) -> Kind {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Kind::Local;
    };
    match (method, rest) {
        (&Method::GET, "spaces") => Kind::ListSpaces,
        (&Method::POST, "spaces") => Kind::CreateSpace,
        (&Method::DELETE, r) if r.starts_with("spaces/") => {
            Kind::DropSpace(r["spaces/".len()..].to_string())
        }
        (&Method::POST, "memories/remember" | "memories/batch") => Kind::Space {
            write: true,
            creates: true,
        },
        (&Method::POST, "memories/recall") | (&Method::GET, _) if rest.starts_with("memories") => {
            Kind::Space {
                write: false,
                creates: false,
            }
        }
        (&Method::POST | &Method::DELETE, r) if r.starts_with("memories/") => Kind::Space {
            write: true,
            creates: false,
        },
        _ => Kind::Local,
    }
}

fn unavailable(msg: impl Into<String>) -> Response {
    ApiError::Unavailable(msg.into()).into_response()
}

fn space_error(e: SpaceError) -> Response {
    match e {
        SpaceError::Unavailable(m) => unavailable(m),
        SpaceError::Refused(m) => ApiError::Invalid(m).into_response(),
        SpaceError::NotFound(_) => ApiError::SpaceNotFound(e.to_string()).into_response(),
    }
}

/// The query string as the handlers decode it (axum's `Query`: serde_urlencoded into a
/// map, percent-decoded, the last of a repeated name wins), so that routing and the handler
/// always agree on the space; and `consistency`, taken out of it.
fn route_query(query: &str) -> Result<(HashMap<String, String>, Option<String>), ApiError> {
    let mut map: HashMap<String, String> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::Invalid(format!("bad query string: {e}")))?;
    let consistency = map.remove("consistency");
    Ok((map, consistency))
}

fn parse_consistency(v: Option<&str>) -> Result<Consistency, ApiError> {
    match v {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::Invalid(format!(
            "consistency {other:?}: expected \"linearizable\" (the default) or \"stale\""
        ))),
    }
}

/// The request's space (header, query, body field, else `default`), as the handlers take it;
/// `None` when it is not a valid id (the handler answers the 400).
fn space_of(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Option<SpaceId> {
    if let Some(h) = headers.get("x-memory-space") {
        return SpaceId::new(h.to_str().ok()?).ok();
    }
    if let Some(v) = query.get("space") {
        return SpaceId::new(v.as_str()).ok();
    }
    if let Some(Value::String(s)) = body.and_then(|b| b.get("memory_space_id")) {
        return SpaceId::new(s.as_str()).ok();
    }
    Some(SpaceId::default_space())
}

/// Whether a JSON body may name `memory_space_id`: it holds the name, or an escape (`\u`)
/// that could spell it.
fn may_name_space(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"memory_space_id").is_some()
        || memchr::memmem::find(body, b"\\u").is_some()
}

/// Routes one request on a cluster node (see the module documentation); on a single node,
/// takes `consistency` out and runs the handler.
pub async fn route(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match route_inner(st, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route_inner(st: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let k = kind(req.method(), req.uri().path());
    if matches!(k, Kind::Local) {
        return Ok(next.run(req).await);
    }
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, st.limits.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::TooLarge(format!(
                "the request body exceeds {} bytes",
                st.limits.max_body_bytes
            ))
        })?;
    // `consistency` (query or body) is routing's: taken out before the handler sees it.
    let (query, mut wanted) = route_query(parts.uri.query().unwrap_or(""))?;
    // The body is parsed only when routing needs it (a space or a dimension it names, or a
    // `consistency` field): most requests pass through untouched.
    let parse = |b: &[u8]| -> Option<Value> {
        if b.is_empty() {
            None
        } else {
            serde_json::from_slice(b).ok()
        }
    };
    let original_bytes = bytes.clone();
    let original_for_json = bytes.clone();
    let mut bytes = bytes;
    let mut parsed: Option<Option<Value>> = None;
    if memchr::memmem::find(&bytes, b"\"consistency\"").is_some() {
        let mut json = parse(&bytes);
        if let Some(Value::Object(o)) = json.as_mut() {
            if let Some(v) = o.remove("consistency") {
                wanted = Some(
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                );
                bytes = Bytes::from(serde_json::to_vec(o).expect("a JSON object serialises"));
            }
        }
        parsed = Some(json);
    }
    let mut json =
        move || -> Option<Value> { parsed.take().unwrap_or_else(|| parse(&original_for_json)) };
    let consistency = parse_consistency(wanted.as_deref())?;
    let reads = matches!(k, Kind::ListSpaces | Kind::Space { write: false, .. });
    if wanted.is_some() && !reads {
        return Err(ApiError::Invalid(
            "consistency applies to reads (get, recall, listing); a write is acknowledged once a majority of the space's replicas have it"
                .into(),
        ));
    }
    let original_uri = parts.uri.clone();
    if wanted.is_some() {
        let rest = serde_urlencoded::to_string(&query)
            .map_err(|e| ApiError::Invalid(format!("bad query string: {e}")))?;
        let pq = if rest.is_empty() {
            parts.uri.path().to_string()
        } else {
            format!("{}?{rest}", parts.uri.path())
        };
        parts.uri = pq
            .parse()
            .map_err(|_| ApiError::Invalid("a bad URI".into()))?;
    }
    // What the request's API key may touch (the authentication layer puts it there).
    let grant = parts
        .extensions
        .get::<Grant>()
        .cloned()
        .unwrap_or(Grant(None));
    let Some(c) = st.cluster.clone() else {
        let req = Request::from_parts(parts, Body::from(bytes));
        let resp = next.run(req).await;
        return Ok(if consistency == Consistency::Stale {
            with_staleness(resp, 0).await
        } else {
            resp
        });
    };
    // The catalog's routes read this node's copy of the catalog: a current one (a listing
    // that is not stale, a drop, which must find the creation it drops).
    let catalog_read = match &k {
        Kind::ListSpaces => consistency == Consistency::Linearizable,
        Kind::DropSpace(_) => true,
        _ => false,
    };
    if catalog_read {
        let forwarded = parts.headers.contains_key(HOP_HEADER);
        match c.catalog_barrier().await {
            Ok(()) => {}
            Err(Some(meta)) if meta != c.id() && !forwarded => {
                let req = Request::from_parts(parts, Body::from(original_bytes));
                return Ok(catalog::forward_to(&st, &c, meta, req, original_uri).await);
            }
            Err(_) => {
                return Ok(unavailable(
                    "the cluster's catalog has no leader at the moment (an election); retry",
                ))
            }
        }
    }
    match k {
        Kind::Local => unreachable!("handled above"),
        Kind::ListSpaces => {
            let resp = list_spaces(&st, &c, &grant);
            Ok(if consistency == Consistency::Stale {
                // How far this node's catalog may lag is not tracked: the largest number.
                with_staleness(resp, u64::MAX).await
            } else {
                resp
            })
        }
        Kind::CreateSpace => {
            Ok(create_space(&st, &c, &grant, &parts.headers, json().as_ref()).await)
        }
        Kind::DropSpace(id) => Ok(drop_space(&c, &grant, &parts.headers, &id).await),
        Kind::Space { write, creates } => {
            let named_in_body = !parts.headers.contains_key("x-memory-space")
                && !query.contains_key("space")
                && may_name_space(&bytes);
            let body = if named_in_body { json() } else { None };
            let Some(space) = space_of(&parts.headers, &query, body.as_ref()) else {
                let req = Request::from_parts(parts, Body::from(bytes));
                return Ok(next.run(req).await);
            };
            // The key's spaces, checked before anything is created or forwarded (the
            // executing node checks again).
            grant.check(&space)?;
            let state = c.state();
            let rec = match state.spaces.get(&space) {
                Some(r) => r.clone(),
                None if creates => {
                    // What the handler would refuse creates nothing.
                    let batch = parts.uri.path().ends_with("/batch");
                    let dim = crate::routes::check_first_write(batch, &parts.headers, &query, &bytes)?
                        .unwrap_or(st.engine.options().default_dimension);
                    let tag = st.engine.embedder_tag(dim).to_string();
                    let now = engram_storage::now_us();
                    match c
                        .create_space(&space, dim, &tag, now, nonce(&parts.headers))
                        .await
                    {
                        Ok((rec, _)) => rec,
                        Err(e) => return Ok(space_error(e)),
                    }
                }
                None => match c.catalog_barrier().await {
                    // The catalog here is current: the space does not exist.
                    Ok(()) => match c.state().spaces.get(&space) {
                        Some(r) => r.clone(),
                        None => {
                            return Err(ApiError::SpaceNotFound(format!(
                                "memory space {:?} does not exist",
                                space.as_str()
                            )))
                        }
                    },
                    // This node's catalog may lag (a restart, a partition): the metadata
                    // leader has the last word (one hop; it sends a request for a space
                    // it does not lead back with the leader's name, which is tried next).
                    Err(Some(meta)) if meta != c.id() && !parts.headers.contains_key(HOP_HEADER) => {
                        let req = Request::from_parts(parts, Body::from(original_bytes));
                        return Ok(forward(&st, &c, &space, &[], meta, req, original_uri).await);
                    }
                    Err(_) => {
                        return Ok(unavailable(format!(
                            "the cluster's catalog cannot confirm whether memory space {:?} exists (its metadata group has no leader at the moment); retry",
                            space.as_str()
                        )))
                    }
                },
            };
            let stale = !write && consistency == Consistency::Stale;
            let forwarded = parts.headers.contains_key(HOP_HEADER);
            let req = Request::from_parts(parts, Body::from(bytes.clone()));
            if stale && rec.replicas.contains(&c.id()) {
                // Unknown (never heard from a leader since this process started): the
                // largest number, not a made-up small one.
                let ms = c
                    .node
                    .staleness(&space)
                    .await
                    .map_or(u64::MAX, |d| d.as_millis() as u64);
                let resp = next.run(req).await;
                return Ok(with_staleness(resp, ms).await);
            }
            let leader = c.leader_hint(&space, &rec).await;
            if leader == c.id() {
                if !write {
                    if let Err(hint) = c.node.read_barrier(&space).await {
                        return Ok(not_leader(&c, &space, hint));
                    }
                }
                return Ok(next.run(req).await);
            }
            if forwarded {
                return Ok(not_leader(&c, &space, Some(leader)));
            }
            // Not the leader, or a stale read on a node without a replica: one hop, with the
            // request as it came (a stale read keeps its wish: the replica answers it).
            let (parts, _) = req.into_parts();
            let req = Request::from_parts(parts, Body::from(original_bytes));
            Ok(forward(&st, &c, &space, &rec.replicas, leader, req, original_uri).await)
        }
    }
}

/// A 503 from a node that does not lead `space` (the leader it knows in `X-Engram-Leader`).
fn not_leader(c: &ClusterNode, space: &SpaceId, leader: Option<u64>) -> Response {
    let state = c.state();
    let name = leader.and_then(|l| state.nodes.get(&l).map(|n| n.name.clone()));
    let mut resp = unavailable(match &name {
        Some(n) if leader != Some(c.id()) => format!(
            "node {} does not lead memory space {:?} (node {n} does); retry",
            c.me.name,
            space.as_str()
        ),
        _ => format!(
            "memory space {:?} has no leader at the moment (an election); retry",
            space.as_str()
        ),
    });
    if let Some(n) = name.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert(LEADER_HEADER, n);
    }
    resp
}

/// Adds `"staleness_ms"` to a JSON object response.
async fn with_staleness(resp: Response, ms: u64) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return unavailable("the response could not be read back");
    };
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut o)) => {
            o.insert("staleness_ms".into(), json!(ms));
            Bytes::from(serde_json::to_vec(&o).expect("JSON serialises"))
        }
        _ => bytes,
    };
    let mut resp = Response::from_parts(parts, Body::from(out));
    resp.headers_mut()
        .remove(axum::http::header::CONTENT_LENGTH);
    resp
}

/// Sends `req` to `to`'s HTTP API once; its answer is this request's. A node that turns out
/// not to lead the space names the one that does: that one is asked instead (one hop each).
async fn forward(
    st: &AppState,
    c: &Arc<ClusterNode>,
    space: &SpaceId,
    replicas: &[u64],
    to: u64,
    req: Request,
    uri: axum::http::Uri,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, st.limits.max_body_bytes).await else {
        return unavailable("the request body could not be read");
    };
    let state = c.state();
    let mut target = to;
    for attempt in 0..2 {
        let Some(node) = state.nodes.get(&target) else {
            return unavailable(format!(
                "the leader of memory space {space} is not a known node"
            ));
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{}", node.http, path);
        let mut headers = parts.headers.clone();
        headers.remove(axum::http::header::HOST);
        headers.remove(axum::http::header::CONTENT_LENGTH);
        headers.insert(
            HOP_HEADER,
            HeaderValue::from_str(&state.epoch.to_string()).expect("digits"),
        );
        match st
            .forwarder
            .send(&parts.method, &url, headers, bytes.clone())
            .await
        {
            Ok(resp) => {
                let hint = resp
                    .headers()
                    .get(LEADER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|n| state.node_named(n))
                    .map(|n| n.id());
                if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                    if let Some(l) = hint {
                        c.learn_leader(space, l);
                        if attempt == 0 && l != target && l != c.id() {
                            target = l;
                            continue;
                        }
                    }
                } else {
                    c.learn_leader(space, target);
                }
                return resp;
            }
            Err(e) => {
                // The node did not answer: ask another replica next time.
                let next = replicas
                    .iter()
                    .copied()
                    .find(|r| *r != target && *r != c.id());
                if let Some(n) = next {
                    c.learn_leader(space, n);
                }
                return unavailable(format!(
                    "the leader of memory space {:?} (node {}) could not be reached: {e}; retry",
                    space.as_str(),
                    node.name
                ));
            }
        }
    }
    unavailable(format!(
        "memory space {:?} has no reachable leader; retry",
        space.as_str()
    ))
}

/// Sends forwarded requests: HTTP/1.1 with keep-alive to the other nodes' APIs.
pub struct Forwarder {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
}

impl Default for Forwarder {
    fn default() -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector);
        Self { client }
    }
}

impl Forwarder {
    async fn send(
        &self,
        method: &Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, String> {
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(http_body_util::Full::new(body))
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        // A leader that is paused or cut off answers nothing: after this long the request is
        // a 503 (the client retries; a new leader is elected meanwhile).
        let resp = tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("no answer in {FORWARD_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// How a cluster node's engine proposes to a space's group: on this node (which leads it,
/// routing made sure), within [`engram_replication::cluster::PATIENCE`]: a group without a
/// leader, or one that cannot reach a quorum in that time, is `Unavailable` (the write may
/// still be applied later: a retry with the same `Idempotency-Key` gets its answer).
pub struct GroupProposer(pub Arc<ClusterNode>);

impl engram_engine::Replicate for GroupProposer {
    fn propose(
        &self,
        space: &SpaceId,
        command: engram_storage::Command,
    ) -> engram_engine::ProposeFuture {
        use engram_replication::codec::ProposeOutcome;
        let c = self.0.clone();
        let space = space.clone();
        Box::pin(async move {
            let patience = engram_replication::cluster::PATIENCE;
            let unavailable = |why: String| engram_engine::EngineError::Unavailable(why);
            match tokio::time::timeout(patience, c.node.propose(&space, command)).await {
                Ok(ProposeOutcome::Applied(r)) => Ok(engram_engine::Proposed {
                    at_us: r.at_us,
                    answer: r.answer,
                    repeat: r.repeat,
                }),
                Ok(ProposeOutcome::NotLeader(_)) => Err(unavailable(format!(
                    "node {} no longer leads memory space {:?} (an election); retry",
                    c.me.name,
                    space.as_str()
                ))),
                Ok(ProposeOutcome::Failed(why)) => Err(unavailable(format!(
                    "the write to memory space {:?} did not commit: {why}; retry",
                    space.as_str()
                ))),
                Err(_) => Err(unavailable(format!(
                    "the write to memory space {:?} was not committed within {patience:?} (no quorum of its replicas answered); retry with the same Idempotency-Key to learn its outcome",
                    space.as_str()
                ))),
            }
        })
    }
}
