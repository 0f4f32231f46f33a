//! One error type for every HTTP answer: a status and a JSON body `{"error": "…"}` that says what
//! was wrong. Internal errors are logged and answered without their details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request is well-formed but names something that does not exist elsewhere (a ref the
    /// git server does not have).
    #[error("{0}")]
    Unprocessable(String),
    /// A server Kiln depends on (the git server) failed or could not be reached.
    #[error("{0}")]
    BadGateway(String),
    /// Over a rate limit: 429 with `Retry-After` (whole seconds, at least 1).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    #[error("internal error")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!("internal error: {detail}");
        }
        let mut res = (self.status(), Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                res.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after_secs, .. } => {
                res.headers_mut().insert("retry-after", axum::http::HeaderValue::from((*retry_after_secs).max(1)));
            }
            _ => {}
        }
        res
    }
}

/// Router layer: an error answer that is not already JSON becomes `{"error": "…"}` with the same
/// status and headers. axum's own rejections (`Query`, `Path`, a body over `DefaultBodyLimit`
/// read by a plain `Bytes` extractor, 405 for a wrong method) answer plain text or nothing; with
/// this every client and the CLI can read every refusal the same way.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // Rejection texts are one line; a bound keeps a surprising streamed error body from being
    // buffered whole.
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("request refused").to_lowercase()
    } else {
        text
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}
