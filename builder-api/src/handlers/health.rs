//! `/healthz` (the process answers), `/readyz` (the store answers and the replica is not stopping), `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::context::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.scheduler.is_stopping() {
        // SIGTERM: the Service should send the next requests to another replica.
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_string());
    }
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store not ready: {e}\n")),
    }
}

/// The numbers kept in memory (`crate::metrics`): a scrape never reads the store, so it costs the
/// same however many builds the store holds.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], s.metrics.encode())
}
