//! Every route Kiln serves, in one place. The API is built from one table, [`api_routes`]: each
//! entry names its method, path, the lowest [`Role`] that may call it and, for a route that
//! changes something, its audit action. The role check and the audit row come from the entry
//! (`auth::guard` wraps each route), so a route added to the table cannot skip them, and tests
//! enumerate the same table (`tests/isolation.rs` sends every route with every role).

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{get, post, MethodFilter, MethodRouter};
use axum::Router;

use crate::auth::{guard, RouteGuard};
use crate::context::AppState;
use crate::handlers::{apm, apps, audit, builds, health, notifications, rollouts, tenants};
use crate::hooks;
use crate::store::Role;
use crate::web;

/// One API route.
pub struct ApiRoute {
    pub method: Method,
    /// axum path syntax: `{name}` is a parameter.
    pub path: &'static str,
    /// The lowest role that may call it; a lower one gets 403 with the reason.
    pub role: Role,
    /// The audit action of a route that changes something (`build.trigger`); None for reads.
    pub audit: Option<&'static str>,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(method: Method, path: &'static str, role: Role, audit: Option<&'static str>, handler: H) -> ApiRoute
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("an API route's method is one axum routes");
    ApiRoute { method, path, role, audit, handler: axum::routing::on(filter, handler) }
}

/// The API. Reads need `viewer` (a tenant's settings too); triggering, cancelling and
/// re-syncing builds `developer`; what changes an app or what runs (app create, subscriptions,
/// rollback, APM re-injection, which changes the image a build deploys) and tokens and the audit
/// log `owner`; tenants and their settings (namespace, cap, registry project) `admin`.
pub fn api_routes() -> Vec<ApiRoute> {
    use Method as M;
    use Role::{Admin, Developer, Owner, Viewer};
    vec![
        route(M::GET, "/api/v1/tenants", Admin, None, tenants::list),
        route(M::POST, "/api/v1/tenants", Admin, Some("tenant.create"), tenants::create),
        route(M::GET, "/api/v1/tenants/{tenant}/tokens", Owner, None, tenants::list_tokens),
        route(M::POST, "/api/v1/tenants/{tenant}/tokens", Owner, Some("token.create"), tenants::create_token),
        route(M::DELETE, "/api/v1/tenants/{tenant}/tokens/{token_id}", Owner, Some("token.revoke"), tenants::revoke_token),
        route(M::GET, "/api/v1/tenants/{tenant}/settings", Viewer, None, tenants::get_settings),
        route(M::PUT, "/api/v1/tenants/{tenant}/settings", Admin, Some("tenant.settings"), tenants::put_settings),
        route(M::PUT, "/api/v1/tenants/{tenant}/harbor-webhook-secret", Owner, Some("tenant.harbor_secret"), tenants::put_harbor_secret),
        route(M::DELETE, "/api/v1/tenants/{tenant}/harbor-webhook-secret", Owner, Some("tenant.harbor_secret.delete"), tenants::delete_harbor_secret),
        route(M::GET, "/api/v1/tenants/{tenant}/notifications", Viewer, None, notifications::get_tenant),
        route(M::PUT, "/api/v1/tenants/{tenant}/notifications", Owner, Some("tenant.notifications"), notifications::put_tenant),
        route(M::GET, "/api/v1/audit", Owner, None, audit::list),
        route(M::GET, "/api/v1/whoami", Viewer, None, tenants::whoami),
        route(M::GET, "/api/v1/apps", Viewer, None, apps::list),
        route(M::POST, "/api/v1/apps", Owner, Some("app.create"), apps::create),
        route(M::GET, "/api/v1/apps/{app}", Viewer, None, apps::get),
        route(M::PATCH, "/api/v1/apps/{app}", Owner, Some("app.update"), apps::update),
        route(M::DELETE, "/api/v1/apps/{app}", Owner, Some("app.delete"), apps::delete),
        route(M::GET, "/api/v1/apps/{app}/notifications", Viewer, None, notifications::get_app),
        route(M::PUT, "/api/v1/apps/{app}/notifications", Owner, Some("app.notifications"), notifications::put_app),
        route(M::POST, "/api/v1/apps/{app}/builds", Developer, Some("build.trigger"), builds::trigger),
        route(M::GET, "/api/v1/apps/{app}/subscriptions", Viewer, None, rollouts::list_subscriptions),
        route(M::POST, "/api/v1/apps/{app}/subscriptions", Owner, Some("subscription.create"), rollouts::create_subscription),
        route(M::DELETE, "/api/v1/apps/{app}/subscriptions/{subscription_id}", Owner, Some("subscription.delete"), rollouts::delete_subscription),
        route(M::PUT, "/api/v1/apps/{app}/subscriptions/{subscription_id}/strategy", Owner, Some("subscription.strategy"), rollouts::set_strategy),
        route(M::POST, "/api/v1/apps/{app}/subscriptions/{subscription_id}/promote", Owner, Some("release.promote"), rollouts::promote),
        route(M::POST, "/api/v1/apps/{app}/subscriptions/{subscription_id}/abort", Owner, Some("release.abort"), rollouts::abort),
        route(M::GET, "/api/v1/apps/{app}/releases", Viewer, None, rollouts::releases),
        route(M::POST, "/api/v1/apps/{app}/rollback", Owner, Some("rollback"), rollouts::rollback),
        route(M::GET, "/api/v1/builds", Viewer, None, builds::list),
        route(M::GET, "/api/v1/builds/{build_id}", Viewer, None, builds::get),
        route(M::POST, "/api/v1/builds/{build_id}/cancel", Developer, Some("build.cancel"), builds::cancel),
        route(M::POST, "/api/v1/builds/{build_id}/retry", Developer, Some("build.retry"), builds::retry),
        route(M::POST, "/api/v1/builds/{build_id}/sync", Developer, Some("build.sync"), builds::sync),
        route(M::GET, "/api/v1/builds/{build_id}/logs", Viewer, None, builds::logs),
        route(M::POST, "/api/v1/builds/{build_id}/apm", Owner, Some("apm.reinject"), apm::reinject),
    ]
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    let mut api = Router::new();
    for r in api_routes() {
        let g = RouteGuard { state: state.clone(), role: r.role, action: r.audit };
        // Same path, other method: axum merges the method routers, each keeping its own guard.
        api = api.route(r.path, r.handler.route_layer(axum::middleware::from_fn_with_state(g, guard)));
    }
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
        .route("/ui/apps", get(web::apps_page))
        .route("/ui/apps/{name}", get(web::app_page))
        .route("/ui/assets/{file}", get(web::asset))
        // Webhooks: verified by their own secrets, not by API tokens.
        .route("/hooks/gitlab", post(hooks::gitlab::receive))
        .route("/hooks/harbor", post(hooks::harbor::receive))
        .merge(api)
        .fallback(|| async { crate::error::ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        // Every refusal is `{"error": …}`, axum's own rejections (query, path, 405) included.
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_that_changes_something_is_audited_and_reads_are_not() {
        for r in api_routes() {
            assert_eq!(r.audit.is_some(), r.method != Method::GET, "{} {}", r.method, r.path);
        }
    }

    #[test]
    fn no_route_is_listed_twice() {
        let routes = api_routes();
        let mut seen: Vec<(Method, &str)> = routes.iter().map(|r| (r.method.clone(), r.path)).collect();
        seen.sort_by(|a, b| (a.1, a.0.as_str()).cmp(&(b.1, b.0.as_str())));
        seen.dedup();
        assert_eq!(seen.len(), routes.len());
    }
}
