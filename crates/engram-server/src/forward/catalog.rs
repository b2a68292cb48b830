//! The catalog's routes on a cluster node: listing, creating and dropping spaces go through
//! the metadata group (and, for a creation, the space's group), not through one space's
//! leader.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engram_core::SpaceId;
use engram_replication::cluster::ClusterNode;
use serde_json::{json, Value};

use super::space_error;
use crate::error::ApiError;
use crate::{AppState, Grant};

/// A nonce for a creation: from its idempotency key when it has one (a repeat is the same
/// creation), else random.
pub(super) fn nonce(headers: &HeaderMap) -> u64 {
    match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) => engram_cluster::hash::placement_hash(k.as_bytes()).max(1),
        None => {
            let t = engram_storage::now_us() as u64;
            engram_cluster::hash::placement_hash(&t.to_le_bytes()) ^ u64::from(std::process::id())
        }
    }
}

/// `GET /api/v1/spaces` on a cluster node: the catalog, with this node's replica's count of
/// memories where it holds one (`null` elsewhere: a count would cost a request to another
/// node per space).
pub(super) fn list_spaces(st: &AppState, c: &ClusterNode, grant: &Grant) -> Response {
    let state = c.state();
    let spaces: Vec<Value> = state
        .spaces
        .iter()
        .filter(|(id, _)| grant.allows(id))
        .map(|(id, rec)| {
            let memories = if rec.replicas.contains(&c.id()) {
                st.engine.space_info(id).ok().map(|i| i.memories)
            } else {
                None
            };
            json!({
                "id": id.as_str(),
                "dimension": rec.dimension,
                "memories": memories,
                "created_at": crate::wire::format_timestamp(rec.created_at_us),
            })
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({ "spaces": spaces }))).into_response()
}

/// `POST /api/v1/spaces` on a cluster node: the catalog, then the space's group.
pub(super) async fn create_space(
    st: &AppState,
    c: &ClusterNode,
    grant: &Grant,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Response {
    let parsed: Result<crate::wire::SpaceIn, ApiError> = match body {
        Some(v) => crate::wire::parse(&serde_json::to_vec(v).unwrap_or_default()),
        None => Err(ApiError::Invalid(
            "the body must be a JSON object like {\"id\": \"alice\"}".into(),
        )),
    };
    let req = match parsed {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let id = match SpaceId::new(req.id) {
        Ok(id) => id,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = grant.check(&id) {
        return e.into_response();
    }
    let dim = req
        .dimension
        .unwrap_or(st.engine.options().default_dimension);
    if dim == 0 || dim as usize > engram_core::limits::MAX_DIMENSION {
        return ApiError::Invalid(format!(
            "dimension {dim} is outside 1..={}",
            engram_core::limits::MAX_DIMENSION
        ))
        .into_response();
    }
    let tag = st.engine.embedder_tag(dim).to_string();
    let now = engram_storage::now_us();
    match c.create_space(&id, dim, &tag, now, nonce(headers)).await {
        Ok((rec, true)) => (
            StatusCode::CREATED,
            axum::Json(json!({
                "id": id.as_str(),
                "dimension": rec.dimension,
                "memories": 0,
                "created_at": crate::wire::format_timestamp(rec.created_at_us),
            })),
        )
            .into_response(),
        Ok((_, false)) => {
            ApiError::Conflict(format!("memory space {:?} already exists", id.as_str()))
                .into_response()
        }
        Err(e) => space_error(e),
    }
}

/// `DELETE /api/v1/spaces/{id}` on a cluster node.
pub(super) async fn drop_space(
    c: &ClusterNode,
    grant: &Grant,
    headers: &HeaderMap,
    id: &str,
) -> Response {
    let id = match SpaceId::new(id) {
        Ok(id) => id,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = grant.check(&id) {
        return e.into_response();
    }
    if id.as_str() == engram_engine::DEFAULT_SPACE {
        return ApiError::Invalid("the default space cannot be dropped".into()).into_response();
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| (k.to_string(), engram_storage::now_us()));
    match c.drop_space(&id, key).await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(json!({ "dropped": id.as_str() })),
        )
            .into_response(),
        Err(e) => space_error(e),
    }
}

/// Sends a catalog request to the metadata leader `to` once (this node's catalog may lag);
/// its answer is this request's, a failure a 503.
pub(super) async fn forward_to(
    st: &AppState,
    c: &ClusterNode,
    to: u64,
    req: axum::extract::Request,
    uri: axum::http::Uri,
) -> Response {
    let state = c.state();
    let Some(node) = state.nodes.get(&to) else {
        return super::unavailable("the metadata leader is not a known node; retry");
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, st.limits.max_body_bytes).await else {
        return super::unavailable("the request body could not be read");
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers.clone();
    headers.remove(axum::http::header::HOST);
    headers.remove(axum::http::header::CONTENT_LENGTH);
    headers.insert(
        super::HOP_HEADER,
        axum::http::HeaderValue::from_str(&state.epoch.to_string()).expect("digits"),
    );
    let url = format!("{}{path}", node.http);
    match st.forwarder.send(&parts.method, &url, headers, bytes).await {
        Ok(resp) => resp,
        Err(e) => super::unavailable(format!(
            "the metadata leader (node {}) could not be reached: {e}; retry",
            node.name
        )),
    }
}
