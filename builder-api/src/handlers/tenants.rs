//! `/api/v1/tenants`: admins create tenants; a tenant's first API token is returned once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bad, JsonBody};
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::new_token;
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
}

pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    JsonBody(req): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    who.require_admin()?;
    validate::dns_label("tenant", &req.name).map_err(bad)?;
    let tenant = s.store.create_tenant(&req.name).await?;
    let token = new_token();
    s.store.add_token(Some(tenant.id), "initial", &token).await?;
    Ok((StatusCode::CREATED, Json(json!({ "tenant": tenant, "token": token }))))
}

pub async fn list(State(s): State<AppState>, who: Principal) -> ApiResult<Json<Value>> {
    who.require_admin()?;
    Ok(Json(json!({ "tenants": s.store.tenants().await? })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub name: Option<String>,
}

/// A new token for a tenant: by an admin, or by the tenant itself.
pub async fn create_token(
    State(s): State<AppState>,
    who: Principal,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CreateToken = if body.iter().all(u8::is_ascii_whitespace) { CreateToken::default() } else { super::parse_json(&body)? };
    let tenant = s
        .store
        .tenant_by_name(&tenant)
        .await?
        .filter(|t| who.sees(t.id))
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {tenant}")))?;
    let name = req.name.unwrap_or_else(|| "api".into());
    let token = new_token();
    s.store.add_token(Some(tenant.id), &name, &token).await?;
    Ok((StatusCode::CREATED, Json(json!({ "tenant": tenant.name, "name": name, "token": token }))))
}
