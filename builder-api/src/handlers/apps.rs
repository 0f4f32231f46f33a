//! `/api/v1/apps`: what a tenant builds. Secrets (webhook secret, git token) are accepted and
//! used but never returned — except a generated webhook secret, once, in the create answer.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bad, JsonBody};
use crate::audit::Audited;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::{App, BuildKind, KindSettings, NewApp};
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// Only for admins: the tenant that owns the app.
    pub tenant: Option<String>,
    pub name: String,
    pub git_url: String,
    /// GitLab `path_with_namespace` (group/project) that push webhooks carry.
    pub project_path: Option<String>,
    #[serde(default = "default_filter")]
    pub branch_filter: String,
    #[serde(default = "default_kind")]
    pub kind: BuildKind,
    #[serde(default)]
    pub settings: KindSettings,
    pub base_image: Option<String>,
    pub image_repository: String,
    pub webhook_secret: Option<String>,
    pub git_token: Option<String>,
    /// GitLab API token (a project access token with `api` scope) for commit statuses;
    /// write-only, like `git_token`. Without one the app posts no status.
    pub gitlab_token: Option<String>,
}

/// Every branch (`*` alone would stop at `/`).
fn default_filter() -> String {
    "**".into()
}
fn default_kind() -> BuildKind {
    BuildKind::Auto
}

/// `?tenant=` lets an admin name the tenant; tenant tokens always act in their own (naming
/// another tenant answers 404, see [`named_tenant`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    pub tenant: Option<String>,
}

pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    JsonBody(req): JsonBody<CreateApp>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let tenant_id = match (&who, &req.tenant) {
        (Principal::Tenant { id, name, .. }, t) => {
            if t.as_ref().is_some_and(|t| t != name) {
                return Err(ApiError::Forbidden("a tenant token creates apps only in its own tenant".into()));
            }
            *id
        }
        (Principal::Admin, Some(t)) => s.store.tenant_by_name(t).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {t}")))?.id,
        (Principal::Admin, None) => return Err(bad("an admin must say which tenant owns the app: \"tenant\"")),
    };
    validate::dns_label("app", &req.name).map_err(bad)?;
    check_git_url(&req.git_url)?;
    validate::image_repository(&req.image_repository).map_err(bad)?;
    let tenant = s.store.tenant(tenant_id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {tenant_id}")))?;
    if !tenant.settings.allows_repository(&req.image_repository) {
        let project = tenant.settings.registry_project.as_deref().unwrap_or_default();
        return Err(bad(format!(
            "image_repository {:?} is outside the tenant's registry project {project:?}: use <registry>/{project}/<name>",
            req.image_repository
        )));
    }
    globset::Glob::new(&req.branch_filter).map_err(|e| bad(format!("branch_filter {:?}: {e}", req.branch_filter)))?;
    if let Some(df) = &req.settings.dockerfile {
        validate::repo_path("dockerfile", df).map_err(bad)?;
    }
    if let Some(apm) = &req.settings.apm {
        // 422: the request is well-formed, but names an agent this Kiln does not have.
        crate::apm::find_agent(&s.config.apm, &apm.agent, apm.version.as_deref())
            .map_err(|e| ApiError::Unprocessable(format!("settings.apm: {e}")))?;
    }
    if let Some(url) = &req.settings.gitlab_url {
        check_git_url(url).map_err(|_| bad(format!("settings.gitlab_url {url:?} must be an http(s) URL without credentials")))?;
    }
    if let Some(name) = &req.settings.gitlab_status_name {
        if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(bad("settings.gitlab_status_name must be 1 to 255 printable characters"));
        }
    }
    if let Some(base) = &req.base_image {
        if base != "scratch" && !base.contains('/') {
            return Err(bad(format!("base_image {base:?} needs a registry host, e.g. registry.example.com/library/base:1")));
        }
    }
    let generated = req.webhook_secret.is_none();
    let secret = req.webhook_secret.unwrap_or_else(|| hex::encode(rand::random::<[u8; 24]>()));
    if secret.len() < 8 {
        return Err(bad("webhook_secret must be at least 8 characters"));
    }
    let app = s
        .store
        .create_app(&NewApp {
            tenant_id,
            name: req.name,
            git_url: req.git_url,
            project_path: req.project_path,
            branch_filter: req.branch_filter,
            kind: req.kind,
            settings: req.settings,
            base_image: req.base_image,
            image_repository: req.image_repository,
            webhook_secret: secret.clone(),
            git_token: req.git_token.filter(|t| !t.is_empty()),
            gitlab_token: req.gitlab_token.filter(|t| !t.is_empty()),
        })
        .await?;
    let audited = Audited::new(app.tenant_id, format!("app/{}", app.name));
    let mut body = json!({ "app": app });
    if generated {
        body["webhook_secret"] = json!(secret);
    }
    Ok((StatusCode::CREATED, audited, Json(body)))
}

fn check_git_url(url: &str) -> ApiResult<()> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() < 2048
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        return Err(bad(format!("git_url {url:?} must be an http(s) URL")));
    }
    if url.split("://").nth(1).and_then(|rest| rest.split('/').next()).is_some_and(|auth| auth.contains('@')) {
        return Err(bad("git_url must not carry credentials; set git_token instead"));
    }
    Ok(())
}

pub async fn list(State(s): State<AppState>, who: Principal, Query(q): Query<TenantQuery>) -> ApiResult<Json<Value>> {
    let tenant = named_tenant(&s, &who, q.tenant.as_deref()).await?;
    Ok(Json(json!({ "apps": s.store.apps(tenant).await? })))
}

/// The tenant a request acts in. An admin names one with `?tenant=` (None: every tenant); a
/// tenant token acts in its own, and naming another tenant is answered 404 as an unknown one
/// is, so tenant names cannot be probed.
pub async fn named_tenant(s: &AppState, who: &Principal, tenant: Option<&str>) -> ApiResult<Option<i64>> {
    let not_found = |t: &str| ApiError::NotFound(format!("no tenant {t}"));
    match (who, tenant) {
        (Principal::Tenant { name, .. }, Some(t)) if t != name => Err(not_found(t)),
        (Principal::Tenant { id, .. }, _) => Ok(Some(*id)),
        (Principal::Admin, Some(t)) => Ok(Some(s.store.tenant_by_name(t).await?.ok_or_else(|| not_found(t))?.id)),
        (Principal::Admin, None) => Ok(None),
    }
}

pub async fn get(
    State(s): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&s, &who, &name, q.tenant.as_deref()).await?;
    Ok(Json(json!({ "app": app })))
}

/// An app by name in the caller's tenant (admins name the tenant with `?tenant=`, or the app
/// name is unique). Another tenant's app is answered 404.
pub async fn find_app(s: &AppState, who: &Principal, name: &str, tenant: Option<&str>) -> ApiResult<App> {
    let not_found = || ApiError::NotFound(format!("no app {name}"));
    match who {
        Principal::Tenant { id, .. } => {
            named_tenant(s, who, tenant).await?;
            s.store.app_by_name(*id, name).await?.ok_or_else(not_found)
        }
        Principal::Admin => {
            let mut apps: Vec<App> = s.store.apps(None).await?.into_iter().filter(|a| a.name == name).collect();
            if let Some(t) = tenant {
                apps.retain(|a| a.tenant == t);
            }
            match apps.len() {
                0 => Err(not_found()),
                1 => Ok(apps.remove(0)),
                _ => Err(bad(format!("several tenants have an app {name}; add ?tenant="))),
            }
        }
    }
}
