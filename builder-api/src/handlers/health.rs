//! `/healthz` (the process answers), `/readyz` (the store answers), `/metrics` (Prometheus text).

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::context::AppState;
use crate::error::ApiResult;
use crate::store::BuildState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store not ready: {e}\n")),
    }
}

/// Computed from the store on each scrape, so the figures survive restarts.
pub async fn metrics(State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut out = String::new();
    let counts = s.store.build_counts().await?;
    out.push_str("# HELP kiln_builds Builds by state.\n# TYPE kiln_builds gauge\n");
    for state in BuildState::ALL {
        let n = counts.iter().find(|(st, _)| st == state.as_str()).map(|(_, n)| *n).unwrap_or(0);
        let _ = writeln!(out, "kiln_builds{{state=\"{}\"}} {n}", state.as_str());
    }
    let (waits, wait_sum) = s.store.queue_wait_totals().await?;
    out.push_str("# HELP kiln_build_queue_wait_seconds Time builds waited Queued before they started.\n");
    out.push_str("# TYPE kiln_build_queue_wait_seconds summary\n");
    let _ = writeln!(out, "kiln_build_queue_wait_seconds_sum {wait_sum}");
    let _ = writeln!(out, "kiln_build_queue_wait_seconds_count {waits}");
    out.push_str("# HELP kiln_build_step_duration_seconds Duration of finished build steps.\n");
    out.push_str("# TYPE kiln_build_step_duration_seconds summary\n");
    for (step, n, sum) in s.store.step_duration_totals().await? {
        let _ = writeln!(out, "kiln_build_step_duration_seconds_sum{{step=\"{step}\"}} {sum}");
        let _ = writeln!(out, "kiln_build_step_duration_seconds_count{{step=\"{step}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP kiln_builds_running Builds running in this process.\n# TYPE kiln_builds_running gauge");
    let _ = writeln!(out, "kiln_builds_running {}", s.scheduler.running_count());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
