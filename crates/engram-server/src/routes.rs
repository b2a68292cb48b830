//! The handlers, one per route of shared/API.md.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use engram_core::{Cue, CueInput, RecallMode, Retrieval, SpaceId};
use engram_engine::{NewMemory, DEFAULT_SPACE};
use serde_json::{json, Value};

use crate::wire::{self, BatchIn, MemoryIn, RecallIn, SpaceIn};
use crate::{ApiError, AppState, Grant};

pub(crate) type Reply = Result<(StatusCode, Json<Value>), ApiError>;
pub(crate) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("request body too large: {}", e.body_text()))
        } else {
            ApiError::Invalid(format!(
                "could not read the request body: {}",
                e.body_text()
            ))
        }
    })
}

/// The query parameters, each one of `accepted` (else a 400 naming it).
pub(crate) fn params(q: Params, accepted: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::Invalid(format!("bad query string: {}", e.body_text())))?;
    wire::check_query(q.keys(), accepted)?;
    Ok(q)
}

/// Query parameters of the memory routes that take nothing but the space.
const SPACE_ONLY: &[&str] = &["space"];
/// Query parameters of `GET /api/v1/memories/{id}`.
const GET_MEMORY: &[&str] = &["space", "include_embedding", "encoding"];
/// Query parameters of `GET /api/v1/memories/recall` (`POST` takes only `space`).
const RECALL_GET: &[&str] = &[
    "space",
    "query",
    "embedding",
    "max_results",
    "threshold",
    "mode",
    "max_hops",
    "retrieval",
    "ef",
];

pub(crate) fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(id)| id)
        .map_err(|e| ApiError::Invalid(format!("bad path: {}", e.body_text())))
}

/// The space of a request: header `X-Memory-Space`, query `space`, body `memory_space_id`,
/// else `default` (first match wins).
fn space_of(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body_field: Option<&str>,
) -> Result<SpaceId, ApiError> {
    let from_header = match headers.get("x-memory-space") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::Invalid("X-Memory-Space is not a valid space id".into()))?,
        ),
        None => None,
    };
    let id = from_header
        .or(query.get("space").map(String::as_str))
        .or(body_field)
        .unwrap_or(DEFAULT_SPACE);
    Ok(SpaceId::new(id)?)
}

/// The request's `Idempotency-Key` (shared/API.md: at most 128 characters; a repeat within
/// ten minutes gets the first answer), if it has one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::Invalid(
            "more than one Idempotency-Key header".into(),
        ));
    }
    let key = v.to_str().map_err(|_| {
        ApiError::Invalid("Idempotency-Key must be visible ASCII characters".into())
    })?;
    engram_engine::check_key(key)?;
    Ok(Some(key))
}

/// Embeds, through the server's batching queue, the content of memories that come without an
/// embedding, when the space's text embedder is the queue's model (the hashing embedder is
/// cheap and runs inline in the engine, as does anything when there is no queue). Content the
/// engine will refuse (empty, too long) is left for it to refuse.
async fn embed_missing(
    st: &AppState,
    space: &SpaceId,
    memories: &mut [NewMemory],
) -> Result<(), ApiError> {
    let Some(queue) = &st.embed_queue else {
        return Ok(());
    };
    let wanted: Vec<usize> = (0..memories.len())
        .filter(|&i| {
            let m = &memories[i];
            m.embedding.is_none()
                && !m.content.is_empty()
                && m.content.len() <= engram_core::limits::MAX_CONTENT_LEN
        })
        .collect();
    if wanted.is_empty() || !uses_queue(st, queue, space, memories)? {
        return Ok(());
    }
    let texts = wanted
        .iter()
        .map(|&i| memories[i].content.clone())
        .collect();
    let vectors = queue.embed(texts).await?;
    for (i, v) in wanted.into_iter().zip(vectors) {
        memories[i].embedding = Some(v);
    }
    Ok(())
}

/// Whether `memories` written to `space` now (which creates it if missing) have their text
/// embedded with the queue's model.
fn uses_queue(
    st: &AppState,
    queue: &engram_embed::EmbedQueue,
    space: &SpaceId,
    memories: &[NewMemory],
) -> Result<bool, ApiError> {
    Ok(st.engine.write_embedder(space, memories)?.name() == queue.embedder().name())
}

/// Whether a recall in `space` embeds its text cue with the queue's model.
fn recall_uses_queue(
    st: &AppState,
    queue: &engram_embed::EmbedQueue,
    space: &SpaceId,
) -> Result<bool, ApiError> {
    Ok(st.engine.text_embedder(space)?.name() == queue.embedder().name())
}

pub async fn health(q: Params) -> Reply {
    params(q, &[])?;
    Ok((
        StatusCode::OK,
        Json(json!({ "status": "healthy", "version": env!("CARGO_PKG_VERSION") })),
    ))
}

fn memory_not_found(id: &engram_core::MemoryId, space: &SpaceId) -> ApiError {
    ApiError::MemoryNotFound(format!(
        "memory {:?} does not exist in space {:?}",
        id.as_str(),
        space.as_str()
    ))
}

fn space_json(i: &engram_engine::SpaceInfo) -> Value {
    json!({
        "id": i.id.as_str(),
        "dimension": i.dimension,
        "memories": i.memories,
        "created_at": wire::format_timestamp(i.created_at_us),
    })
}

pub async fn list_spaces(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    q: Params,
) -> Reply {
    params(q, &[])?;
    let spaces = st.engine.list_spaces()?;
    let list: Vec<Value> = spaces
        .iter()
        .filter(|s| grant.allows(&s.id))
        .map(space_json)
        .collect();
    Ok((StatusCode::OK, Json(json!({ "spaces": list }))))
}

pub async fn create_space(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    b: Result<Bytes, BytesRejection>,
) -> Reply {
    params(q, &[])?;
    let key = idempotency_key(&headers)?;
    let req: SpaceIn = wire::parse(&body(b)?)?;
    let id = SpaceId::new(req.id)?;
    grant.check(&id)?;
    let info = st.engine.create_space_keyed(&id, req.dimension, key)?;
    Ok((StatusCode::CREATED, Json(space_json(&info))))
}

pub async fn drop_space(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    p: Result<Path<String>, PathRejection>,
) -> Reply {
    params(q, &[])?;
    let key = idempotency_key(&headers)?;
    let id = SpaceId::new(path_id(p)?)?;
    grant.check(&id)?;
    st.engine.drop_space_keyed(&id, key)?;
    Ok((StatusCode::OK, Json(json!({ "dropped": id.as_str() }))))
}

/// A write asking for automatic links waits while its space owes links to as many memories
/// as the linker may hold back ([`engram_engine::Engine::links_backlogged`]).
async fn wait_for_linker(st: &AppState, space: &SpaceId, auto_link: bool) {
    while auto_link && st.engine.links_backlogged(space) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

pub async fn remember(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    b: Result<Bytes, BytesRejection>,
) -> Reply {
    let query = params(q, SPACE_ONLY)?;
    let key = idempotency_key(&headers)?;
    let (space, new) = parse_remember(&headers, &query, &body(b)?)?;
    grant.check(&space)?;
    let mut one = [new];
    embed_missing(&st, &space, &mut one).await?;
    let [new] = one;
    wait_for_linker(&st, &space, new.auto_link).await;
    let mut stored = st
        .engine
        .remember_batch_keyed_async(&space, vec![new], key)
        .await?;
    if stored.len() != 1 {
        // A key first used by a batch.
        return Err(ApiError::Conflict(format!(
            "Idempotency-Key {:?} was used within the last 10 minutes by a batch of {} memories in this space",
            key.unwrap_or_default(),
            stored.len()
        )));
    }
    let stored = stored.remove(0);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "memory_id": stored.id.as_str(),
            "storage_confidence": wire::confidence_json(stored.confidence),
            "consolidation_state": "Recent",
            "stored_at": wire::format_timestamp(stored.stored_at_us),
            "links": wire::links_json(&stored.links),
        })),
    ))
}

/// A remember request's space and memory, checked as far as they can be without the
/// space's state.
fn parse_remember(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(SpaceId, NewMemory), ApiError> {
    let req: MemoryIn = wire::parse(body)?;
    let space = space_of(headers, query, req.memory_space_id.as_deref())?;
    Ok((space, req.into_new()?))
}

/// A batch request's space and memories, checked as far as they can be without the space's
/// state.
fn parse_batch(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(SpaceId, Vec<NewMemory>), ApiError> {
    let req: BatchIn = wire::parse(body)?;
    let space = space_of(headers, query, req.memory_space_id.as_deref())?;
    engram_core::limits::check_batch_len(req.memories.len()).map_err(ApiError::TooLarge)?;
    let mut batch = Vec::with_capacity(req.memories.len());
    for (i, m) in req.memories.into_iter().enumerate() {
        if let Some(s) = &m.memory_space_id {
            if s != space.as_str() {
                return Err(ApiError::Invalid(format!(
                    "memory {i}: memory_space_id {s:?} differs from the request's space {:?}",
                    space.as_str()
                )));
            }
        }
        batch.push(m.into_new().map_err(|e| match e {
            ApiError::Invalid(m) => ApiError::Invalid(format!("memory {i}: {m}")),
            ApiError::TooLarge(m) => ApiError::TooLarge(format!("memory {i}: {m}")),
            e => e,
        })?);
    }
    Ok((space, batch))
}

/// Checks a write that would create its space (a cluster node creates it in the catalog
/// first): what the handler would refuse without the space's state is refused before the
/// space exists, so a refused first write creates nothing. `batch`: the batch route. Returns
/// the dimension the write gives its space (its first embedding's, from `embedding` or
/// `embedding_b64`; `None`: no embedding, the server's default).
pub(crate) fn check_first_write(
    batch: bool,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Option<u32>, ApiError> {
    wire::check_query(query.keys(), SPACE_ONLY)?;
    idempotency_key(headers)?;
    let memories = if batch {
        parse_batch(headers, query, body)?.1
    } else {
        vec![parse_remember(headers, query, body)?.1]
    };
    engram_engine::check_batch(&memories)?;
    // The space's dimension is the first embedding's: another length would be refused.
    let mut dims = memories
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.embedding.as_ref().map(|e| (i, e.len())));
    let Some((_, first)) = dims.next() else {
        return Ok(None);
    };
    if let Some((i, other)) = dims.find(|&(_, d)| d != first) {
        return Err(ApiError::Invalid(format!(
            "memory {i}: embedding of {other} dimensions, the first has {first} (one space, one dimension)"
        )));
    }
    Ok(Some(first as u32))
}

pub async fn batch(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    b: Result<Bytes, BytesRejection>,
) -> Reply {
    let query = params(q, SPACE_ONLY)?;
    let key = idempotency_key(&headers)?;
    let (space, mut batch) = parse_batch(&headers, &query, &body(b)?)?;
    grant.check(&space)?;
    embed_missing(&st, &space, &mut batch).await?;
    wait_for_linker(&st, &space, batch.iter().any(|m| m.auto_link)).await;
    let stored = st
        .engine
        .remember_batch_keyed_async(&space, batch, key)
        .await?;
    let ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    Ok((StatusCode::CREATED, Json(json!({ "memory_ids": ids }))))
}

pub async fn get_memory(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    p: Result<Path<String>, PathRejection>,
) -> Reply {
    let query = params(q, GET_MEMORY)?;
    let id = wire::memory_id(path_id(p)?)?;
    let space = space_of(&headers, &query, None)?;
    grant.check(&space)?;
    let encoding = query
        .get("encoding")
        .map(|e| e.parse::<wire::Encoding>())
        .transpose()?;
    // An explicit `encoding` asks for the embedding in that form unless
    // `include_embedding=false` says otherwise.
    let include = match query.get("include_embedding").map(String::as_str) {
        None => encoding.is_some(),
        Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::Invalid(format!(
                "include_embedding {v:?}: expected true or false"
            )))
        }
    };
    let embedding = include.then(|| encoding.unwrap_or_default());
    match st.engine.get(&space, id.as_str())? {
        Some(m) => Ok((StatusCode::OK, Json(wire::memory_json(&m, embedding)))),
        None => Err(memory_not_found(&id, &space)),
    }
}

pub async fn forget(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    p: Result<Path<String>, PathRejection>,
) -> Reply {
    let query = params(q, SPACE_ONLY)?;
    let id = wire::memory_id(path_id(p)?)?;
    let space = space_of(&headers, &query, None)?;
    grant.check(&space)?;
    if st
        .engine
        .forget_keyed_async(&space, &id, idempotency_key(&headers)?)
        .await?
    {
        Ok((StatusCode::OK, Json(json!({ "deleted": id.as_str() }))))
    } else {
        Err(memory_not_found(&id, &space))
    }
}

pub async fn link(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    p: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LinkReq {
        to: String,
        weight: f64,
        memory_space_id: Option<String>,
    }
    let query = params(q, SPACE_ONLY)?;
    let key = idempotency_key(&headers)?;
    let from = wire::memory_id(path_id(p)?)?;
    let req: LinkReq = wire::parse(&body(b)?)?;
    let space = space_of(&headers, &query, req.memory_space_id.as_deref())?;
    grant.check(&space)?;
    let to = wire::memory_id(req.to)?;
    if !engram_core::Link::is_valid_weight(req.weight) {
        return Err(ApiError::Invalid(format!(
            "weight {} is outside (0, 1]",
            req.weight
        )));
    }
    // Both memories must exist (checked after a repeat's key: a repeat gets the first answer
    // even once `from` is gone).
    let weight = st
        .engine
        .link_keyed_async(&space, &from, &to, req.weight as f32, key)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "from": from.as_str(), "to": to.as_str(), "weight": wire::num(weight) })),
    ))
}

async fn recall_reply(st: &AppState, space: &SpaceId, cue: Cue) -> Reply {
    let mut text_embedding = None;
    if let (CueInput::Text(t), Some(queue)) = (&cue.input, &st.embed_queue) {
        if cue.effective_retrieval() != Retrieval::Lexical && recall_uses_queue(st, queue, space)? {
            text_embedding = queue.embed(vec![t.clone()]).await?.pop();
        }
    }
    let r = st.engine.recall_embedded(space, &cue, text_embedding)?;
    metrics::histogram!("engram_recall_duration_seconds", "mode" => r.mode.as_str())
        .record(r.took_ms / 1e3);
    let vivid: Vec<Value> = r.vivid.iter().map(wire::recall_item_json).collect();
    let associated: Vec<Value> = r.associated.iter().map(wire::recall_item_json).collect();
    Ok((
        StatusCode::OK,
        Json(json!({
            "memories": { "vivid": vivid, "associated": associated, "reconstructed": [] },
            "space": space.as_str(),
            "mode": r.mode.as_str(),
            "retrieval": r.retrieval.as_str(),
            "took_ms": r.took_ms,
        })),
    ))
}

/// A cue from the request's fields: `query` (text) or `embedding`, not both.
fn cue_of(r: RecallIn) -> Result<Cue, ApiError> {
    let vector = wire::either_embedding(r.embedding, r.embedding_b64.as_deref())?;
    let input = match (r.query, vector) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Invalid(
                "give either query (text) or an embedding, not both".into(),
            ))
        }
        (Some(q), None) => CueInput::Text(q),
        (None, Some(v)) => CueInput::Vector(v),
        (None, None) => {
            return Err(ApiError::Invalid(
                "a recall needs query (text) or embedding (or embedding_b64)".into(),
            ))
        }
    };
    let mut cue = match input {
        CueInput::Text(t) => Cue::text(t),
        CueInput::Vector(v) => Cue::vector(v),
    };
    if let Some(n) = r.max_results {
        cue.max_results = n;
    }
    if let Some(t) = r.threshold {
        cue.threshold = t as f32;
    }
    if let Some(m) = r.mode {
        cue.mode = m.parse::<RecallMode>()?;
    }
    if let Some(h) = r.max_hops {
        cue.max_hops = h;
    }
    if let Some(x) = r.retrieval {
        cue.retrieval = Some(x.parse::<Retrieval>()?);
    }
    cue.ef = r.ef;
    cue.validate()?;
    Ok(cue)
}

pub async fn recall_post(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
    b: Result<Bytes, BytesRejection>,
) -> Reply {
    let query = params(q, SPACE_ONLY)?;
    let req: RecallIn = wire::parse(&body(b)?)?;
    let space = space_of(&headers, &query, req.memory_space_id.as_deref())?;
    grant.check(&space)?;
    recall_reply(&st, &space, cue_of(req)?).await
}

pub async fn recall_get(
    State(st): State<AppState>,
    Extension(grant): Extension<Grant>,
    headers: HeaderMap,
    q: Params,
) -> Reply {
    let query = params(q, RECALL_GET)?;
    let space = space_of(&headers, &query, None)?;
    grant.check(&space)?;
    fn num<T: std::str::FromStr>(
        q: &HashMap<String, String>,
        name: &str,
        expected: &str,
    ) -> Result<Option<T>, ApiError> {
        q.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| ApiError::Invalid(format!("{name} {v:?} is not {expected}")))
            })
            .transpose()
    }
    let embedding = match query.get("embedding") {
        Some(e) => Some(
            {
                wire::check_depth(e.as_bytes())?;
                serde_json::from_str::<Vec<f64>>(e)
            }
            .map_err(|err| {
                ApiError::Invalid(format!("embedding must be a JSON array of numbers: {err}"))
            })?,
        ),
        None => None,
    };
    let req = RecallIn {
        query: query.get("query").cloned(),
        embedding,
        embedding_b64: None,
        max_results: num(&query, "max_results", "a whole number")?,
        threshold: num(&query, "threshold", "a number")?,
        mode: query.get("mode").cloned(),
        max_hops: num(&query, "max_hops", "a whole number")?,
        retrieval: query.get("retrieval").cloned(),
        ef: num(&query, "ef", "a whole number")?,
        memory_space_id: None,
    };
    if let Some(t) = req.threshold {
        if !t.is_finite() {
            return Err(ApiError::Invalid(format!("threshold {t} is not finite")));
        }
    }
    recall_reply(&st, &space, cue_of(req)?).await
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("no route {}", uri.path()))
}

pub async fn wrong_method(uri: Uri) -> ApiError {
    ApiError::Method(format!("{} does not take this method", uri.path()))
}
