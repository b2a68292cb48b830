//! One error type for every route, turned into the JSON error body of shared/API.md in one
//! place: `{"error":{"code":"...","message":"..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use engram_engine::EngineError;
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `INVALID_MEMORY_INPUT`: bad JSON, a bad value, a bad parameter.
    #[error("{0}")]
    Invalid(String),
    /// 404 `MEMORY_NOT_FOUND`.
    #[error("{0}")]
    MemoryNotFound(String),
    /// 404 `SPACE_NOT_FOUND`.
    #[error("{0}")]
    SpaceNotFound(String),
    /// 409 `CONFLICT`.
    #[error("{0}")]
    Conflict(String),
    /// 413 `PAYLOAD_TOO_LARGE`.
    #[error("{0}")]
    TooLarge(String),
    /// 401 `UNAUTHORIZED`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `FORBIDDEN`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 for a route that does not exist.
    #[error("{0}")]
    NoRoute(String),
    /// 405 for a known route with another method.
    #[error("{0}")]
    Method(String),
    /// 503 `UNAVAILABLE`, with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// 500 `INTERNAL`: logged once here, never described to the client.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_MEMORY_INPUT"),
            ApiError::MemoryNotFound(_) => (StatusCode::NOT_FOUND, "MEMORY_NOT_FOUND"),
            ApiError::SpaceNotFound(_) => (StatusCode::NOT_FOUND, "SPACE_NOT_FOUND"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Method(_) => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(m) => ApiError::Invalid(m),
            e @ EngineError::SpaceNotFound(_) => ApiError::SpaceNotFound(e.to_string()),
            e @ EngineError::MemoryNotFound(_) => ApiError::MemoryNotFound(e.to_string()),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
            e @ (EngineError::Storage(_) | EngineError::Embedding(_)) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<engram_core::CoreError> for ApiError {
    fn from(e: engram_core::CoreError) -> Self {
        EngineError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; the server logged the details".to_string()
            }
            other => other.to_string(),
        };
        let body = json!({ "error": { "code": code, "message": message } });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}
