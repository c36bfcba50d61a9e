//! The one error of the coordinator's boundary with its callers: what the HTTP
//! layer, the dashboard, the lifecycle and storage access return, with stable codes
//! and statuses (`{"code", "message"}`). It sits below the HTTP handlers, so the
//! lifecycle and storage layers never import them.

use crate::queue::QueueError;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not call this route")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("{0}")]
    TooMany(&'static str),
    #[error("{0}")]
    InsufficientStorage(String),
    /// Well-formed but refused: a URL naming a network callers may not reach.
    #[error("{0}")]
    Unprocessable(String),
    #[error("storage: {0}")]
    Storage(String),
    /// The store cannot be reached (see `StoreError::is_unreachable`): try again later.
    #[error("storage: {0}")]
    StorageUnreachable(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<crate::storage::StoreError> for ApiError {
    /// A store that cannot be reached answers 503, which a caller tries again
    /// (a worker's report does); other storage trouble is a 500.
    fn from(e: crate::storage::StoreError) -> ApiError {
        if e.is_unreachable() { ApiError::StorageUnreachable(e.to_string()) } else { ApiError::Storage(e.to_string()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::InsufficientStorage(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            ApiError::StorageUnreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage"),
            ApiError::Queue(e) => (
                match e {
                    QueueError::NotFound(_) => StatusCode::NOT_FOUND,
                    QueueError::StaleLease { .. } | QueueError::Conflict(_) => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
                e.code(),
            ),
        };
        let mut resp = (status, Json(json!({"code": code, "message": self.to_string()}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
