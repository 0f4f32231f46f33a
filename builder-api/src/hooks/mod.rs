//! Where webhooks land. Each source verifies its secret, records the delivery (which dedupes
//! redeliveries) together with the builds it starts, and answers at once; the work happens after.

pub mod gitlab;
pub mod harbor;

use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

/// The `outcome` label of a webhook answer: `accepted` (work queued), `duplicate` (seen before),
/// `ignored` (answered 2xx with the reason) or `refused` (any error answer).
pub fn outcome_of(answer: &crate::error::ApiResult<(StatusCode, Json<Value>)>) -> &'static str {
    match answer {
        Err(_) => "refused",
        Ok((_, Json(body))) => match body.get("status").and_then(Value::as_str) {
            Some("duplicate") => "duplicate",
            Some("ignored") => "ignored",
            _ => "accepted",
        },
    }
}
