//! `/api/v1/apps/{app}/notifications` and `/api/v1/tenants/{tenant}/notifications`: the
//! notification targets of one app, or of every app of a tenant (see `notify`). `PUT` replaces
//! the list; URLs and secrets are write-only (a URL carries a robot's token), so a read shows
//! each target's kind, events, scheme and host, and whether it has a secret.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::apps::{find_app, TenantQuery};
use super::tenants::visible_tenant;
use super::{bad, JsonBody};
use crate::audit::Audited;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::ApiResult;
use crate::notify::target::{validate, TargetList};

pub async fn get_app(State(s): State<AppState>, who: Principal, Path(app): Path<String>, Query(q): Query<TenantQuery>) -> ApiResult<Json<Value>> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let targets = s.store.notification_targets(app.tenant_id, Some(app.id)).await?;
    let inherited = s.store.notification_targets(app.tenant_id, None).await?;
    Ok(Json(json!({ "app": app.name, "targets": targets, "tenant_targets": inherited })))
}

pub async fn put_app(
    State(s): State<AppState>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(list): JsonBody<TargetList>,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let targets = validate(list).map_err(bad)?;
    s.store.set_notification_targets(app.tenant_id, Some(app.id), &targets).await?;
    let stored = s.store.notification_targets(app.tenant_id, Some(app.id)).await?;
    Ok((Audited::new(app.tenant_id, format!("app/{}/notifications", app.name)), Json(json!({ "app": app.name, "targets": stored }))))
}

pub async fn get_tenant(State(s): State<AppState>, who: Principal, Path(tenant): Path<String>) -> ApiResult<Json<Value>> {
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    let targets = s.store.notification_targets(tenant.id, None).await?;
    Ok(Json(json!({ "tenant": tenant.name, "targets": targets })))
}

pub async fn put_tenant(
    State(s): State<AppState>,
    who: Principal,
    Path(tenant): Path<String>,
    JsonBody(list): JsonBody<TargetList>,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    let targets = validate(list).map_err(bad)?;
    s.store.set_notification_targets(tenant.id, None, &targets).await?;
    let stored = s.store.notification_targets(tenant.id, None).await?;
    Ok((Audited::new(tenant.id, format!("tenant/{}/notifications", tenant.name)), Json(json!({ "tenant": tenant.name, "targets": stored }))))
}
