//! Every route Kiln serves, in one place.

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::context::AppState;
use crate::handlers::{apm, apps, builds, health, rollouts, tenants};
use crate::hooks;
use crate::web;

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        // The web page (`web/`): HTML, CSS and JS only, no data, so no token; the page's script
        // reads everything from the API below with the token the user gives it.
        .route("/", get(web::root))
        .route("/ui", get(web::root))
        .route("/ui/", get(web::builds_page))
        .route("/ui/builds/{id}", get(web::build_page))
        .route("/ui/assets/{file}", get(web::asset))
        // Webhooks: verified by their own secrets, not by API tokens.
        .route("/hooks/gitlab", post(hooks::gitlab::receive))
        .route("/hooks/harbor", post(hooks::harbor::receive))
        // The API: every handler takes a `Principal` (bearer token).
        .route("/api/v1/tenants", get(tenants::list).post(tenants::create))
        .route("/api/v1/tenants/{tenant}/tokens", post(tenants::create_token))
        .route("/api/v1/apps", get(apps::list).post(apps::create))
        .route("/api/v1/apps/{app}", get(apps::get))
        .route("/api/v1/apps/{app}/builds", post(builds::trigger))
        .route("/api/v1/apps/{app}/subscriptions", get(rollouts::list_subscriptions).post(rollouts::create_subscription))
        .route("/api/v1/apps/{app}/subscriptions/{id}", delete(rollouts::delete_subscription))
        .route("/api/v1/apps/{app}/releases", get(rollouts::releases))
        .route("/api/v1/apps/{app}/rollback", post(rollouts::rollback))
        .route("/api/v1/builds", get(builds::list))
        .route("/api/v1/builds/{id}", get(builds::get))
        .route("/api/v1/builds/{id}/cancel", post(builds::cancel))
        .route("/api/v1/builds/{id}/sync", post(builds::sync))
        .route("/api/v1/builds/{id}/logs", get(builds::logs))
        .route("/api/v1/builds/{id}/apm", post(apm::reinject))
        .fallback(|| async { crate::error::ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        // Every refusal is `{"error": …}`, axum's own rejections (query, path, 405) included.
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .with_state(state)
}
