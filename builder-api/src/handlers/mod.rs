//! HTTP handlers grouped by resource. Routes, with the role each needs, are listed in
//! `router.rs`; handlers take the authenticated `Principal` and scope by tenant.

pub mod apm;
pub mod apps;
pub mod audit;
pub mod builds;
pub mod health;
pub mod notifications;
pub mod rollouts;
pub mod tenants;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::context::AppState;
use crate::error::ApiError;

/// A strictly parsed JSON body: unknown fields, bad types and truncated documents are 400 with
/// serde's message (line and column); bodies over the limit are 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "request body is larger than the limit of {} bytes",
                state.config.server.max_body_bytes
            ))
        } else {
            ApiError::BadRequest(format!("cannot read request body: {}", r.body_text()))
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("request body is empty; expected a JSON object".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A 400 with the reason: a validation error's message, or any text.
pub fn bad(reason: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(reason.to_string())
}
