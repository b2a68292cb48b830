//! API keys (shared/API.md, "Authentication"): with keys configured, every route but
//! `/health` needs `Authorization: Bearer KEY` (401 otherwise), and a key reaches only the
//! spaces it names (403 otherwise).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_core::SpaceId;

use crate::{ApiError, AppState};

/// One API key and the spaces it may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key: String,
    /// `None`: every space (`"*"` in the configuration).
    pub spaces: Option<Vec<SpaceId>>,
}

/// The keys of a server; empty means no authentication.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub keys: Vec<ApiKey>,
}

/// The key a request authenticated with, for the handlers' space checks.
#[derive(Debug, Clone)]
pub struct Grant(pub Option<Arc<ApiKey>>);

impl Grant {
    /// 403 unless the request may use `space`.
    pub fn check(&self, space: &SpaceId) -> Result<(), ApiError> {
        match &self.0 {
            None => Ok(()),
            Some(k) => match &k.spaces {
                None => Ok(()),
                Some(list) if list.contains(space) => Ok(()),
                Some(_) => Err(ApiError::Forbidden(format!(
                    "this API key may not use space {:?}",
                    space.as_str()
                ))),
            },
        }
    }

    pub fn allows(&self, space: &SpaceId) -> bool {
        self.check(space).is_ok()
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a key matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The middleware: authenticates the request and records its [`Grant`].
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if st.auth.keys.is_empty() || req.uri().path() == "/health" {
        req.extensions_mut().insert(Grant(None));
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::Unauthorized(
            "this server needs an API key: send Authorization: Bearer KEY".into(),
        )
        .into_response();
    };
    let found = st
        .auth
        .keys
        .iter()
        .find(|k| same(k.key.as_bytes(), presented.as_bytes()));
    match found {
        Some(k) => {
            req.extensions_mut()
                .insert(Grant(Some(Arc::new(k.clone()))));
            next.run(req).await
        }
        None => ApiError::Unauthorized("unknown API key".into()).into_response(),
    }
}
