//! `GET /api/v1/audit?tenant=&limit=`: the audit log, newest first. Admins read every tenant's
//! (or the one named); an owner reads its own tenant's. Lower roles are refused by the route
//! table (`router.rs`).

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::named_tenant;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::ApiResult;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list(State(s): State<AppState>, who: Principal, Query(q): Query<AuditQuery>) -> ApiResult<Json<Value>> {
    let tenant = named_tenant(&s, &who, q.tenant.as_deref()).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(json!({ "entries": s.store.audit_log(tenant, limit).await? })))
}
