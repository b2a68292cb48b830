//! Engram's HTTP API, exactly as shared/API.md specifies: [`app`] builds the router over an
//! [`AppState`]. Nothing below this crate knows HTTP.

mod auth;
pub mod cluster;
mod error;
pub mod forward;
pub mod metrics;
mod routes;
mod wire;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use engram_engine::Engine;

pub use auth::{ApiKey, Auth, Grant};
pub use error::ApiError;

/// Request limits (shared/API.md, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    pub auth: Arc<Auth>,
    /// Batches the text embeddings of the engine's model (`EngineOptions::text_model`) across
    /// concurrent requests; `None` embeds inline in each request.
    pub embed_queue: Option<Arc<engram_embed::EmbedQueue>>,
    /// The cluster this node is part of (`None`: a single node).
    pub cluster: Option<Arc<engram_replication::cluster::ClusterNode>>,
    /// Sends requests routed to another node (`forward.rs`).
    pub forwarder: Arc<forward::Forwarder>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            limits: Limits::default(),
            auth: Arc::new(Auth::default()),
            embed_queue: None,
            cluster: None,
            forwarder: Arc::new(forward::Forwarder::default()),
        }
    }
}

/// The router of every route in shared/API.md.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    // Installed before the first request, so storage metrics are recorded from the start.
    let _ = metrics::handle();
    Router::new()
        .route("/health", get(routes::health))
        .route("/metrics", get(metrics::render))
        .route(
            "/api/v1/spaces",
            get(routes::list_spaces).post(routes::create_space),
        )
        .route("/api/v1/spaces/{id}", delete(routes::drop_space))
        .route("/api/v1/memories/remember", post(routes::remember))
        .route("/api/v1/memories/batch", post(routes::batch))
        .route(
            "/api/v1/memories/recall",
            get(routes::recall_get).post(routes::recall_post),
        )
        .route(
            "/api/v1/memories/{id}",
            get(routes::get_memory).delete(routes::forget),
        )
        .route("/api/v1/memories/{id}/links", post(routes::link))
        .route("/api/v1/cluster/nodes", get(cluster::nodes))
        .route("/api/v1/cluster/spaces/{id}", get(cluster::space))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::node_header,
        ))
        .with_state(state)
}
