//! `/api/v1/apps`: what a tenant builds — created, read, changed (`PATCH`) and deleted. Secrets
//! (webhook secret, git and GitLab tokens) are accepted and used but never returned — except a
//! generated webhook secret, once, in the create answer.

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
use crate::scheduler;
use crate::store::{App, AppDeletion, Build, BuildKind, KindSettings, NewApp};
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
    let generated = req.webhook_secret.is_none();
    let spec = NewApp {
        tenant_id,
        name: req.name,
        git_url: req.git_url,
        project_path: req.project_path,
        branch_filter: req.branch_filter,
        kind: req.kind,
        settings: req.settings,
        base_image: req.base_image,
        image_repository: req.image_repository,
        webhook_secret: req.webhook_secret.unwrap_or_else(|| hex::encode(rand::random::<[u8; 24]>())),
        git_token: req.git_token.filter(|t| !t.is_empty()),
        gitlab_token: req.gitlab_token.filter(|t| !t.is_empty()),
    };
    check_spec(&s, &spec).await?;
    let app = s.store.create_app(&spec).await?;
    let audited = Audited::new(app.tenant_id, format!("app/{}", app.name));
    let mut body = json!({ "app": app });
    if generated {
        body["webhook_secret"] = json!(spec.webhook_secret);
    }
    Ok((StatusCode::CREATED, audited, Json(body)))
}

/// Every rule an app's spec follows, checked alike when it is created and when it is changed
/// (`update` checks the whole spec as it would be after the change). The name is checked by
/// `create` alone: it never changes.
async fn check_spec(s: &AppState, spec: &NewApp) -> ApiResult<()> {
    check_git_url(&spec.git_url)?;
    validate::image_repository(&spec.image_repository).map_err(bad)?;
    let tenant = s.store.tenant(spec.tenant_id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {}", spec.tenant_id)))?;
    if !tenant.settings.allows_repository(&spec.image_repository) {
        let project = tenant.settings.registry_project.as_deref().unwrap_or_default();
        return Err(bad(format!(
            "image_repository {:?} is outside the tenant's registry project {project:?}: use <registry>/{project}/<name>",
            spec.image_repository
        )));
    }
    globset::Glob::new(&spec.branch_filter).map_err(|e| bad(format!("branch_filter {:?}: {e}", spec.branch_filter)))?;
    if let Some(df) = &spec.settings.dockerfile {
        validate::repo_path("dockerfile", df).map_err(bad)?;
    }
    if let Some(apm) = &spec.settings.apm {
        // 422: the request is well-formed, but names an agent this Kiln does not have.
        crate::apm::find_agent(&s.config.apm, &apm.agent, apm.version.as_deref())
            .map_err(|e| ApiError::Unprocessable(format!("settings.apm: {e}")))?;
    }
    if let Some(jvm) = &spec.settings.jvm {
        // 422: well-formed, but not a heap size a JVM can live with, or no JVM to size.
        jvm.check().map_err(ApiError::Unprocessable)?;
        if spec.kind == BuildKind::Go && jvm.enabled {
            return Err(ApiError::Unprocessable(
                "settings.jvm sizes a Java image's heap, and a go app's image has no JVM: remove settings.jvm".into(),
            ));
        }
    }
    if let Some(url) = &spec.settings.gitlab_url {
        check_git_url(url).map_err(|_| bad(format!("settings.gitlab_url {url:?} must be an http(s) URL without credentials")))?;
    }
    if let Some(name) = &spec.settings.gitlab_status_name {
        if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(bad("settings.gitlab_status_name must be 1 to 255 printable characters"));
        }
    }
    if let Some(base) = &spec.base_image {
        if base != "scratch" && !base.contains('/') {
            return Err(bad(format!("base_image {base:?} needs a registry host, e.g. registry.example.com/library/base:1")));
        }
    }
    // A Maven app's image starts `java -cp …`; on `scratch` there is no `java`, so the image
    // could never run. Kiln has no default Java base of its own: the app names one.
    if spec.kind == BuildKind::Maven && spec.base_image.as_deref().is_none_or(|b| b == "scratch") {
        return Err(bad(
            "a maven app needs a base_image with a Java runtime (e.g. registry.example.com/library/eclipse-temurin:21-jre): \
             its image starts `java`, which an image on scratch does not have. Set \"base_image\", or use kind \"dockerfile\" \
             (or \"auto\") to build from the repository's Dockerfile",
        ));
    }
    if spec.webhook_secret.len() < 8 {
        return Err(bad("webhook_secret must be at least 8 characters"));
    }
    Ok(())
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

/// `PATCH /api/v1/apps/{app}`: any field of the spec but the name. A field left out stays as it
/// is; `null` clears an optional one (`project_path`, `base_image`, `git_token`, `gitlab_token`).
/// `settings` is merged key by key (RFC 7396: a key set to `null` goes back to its default).
/// Secrets are write-only, as on create.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    /// Only so that a rename is refused with the reason rather than as an unknown field.
    pub name: Option<String>,
    pub git_url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub project_path: Option<Option<String>>,
    pub branch_filter: Option<String>,
    pub kind: Option<BuildKind>,
    pub settings: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    pub base_image: Option<Option<String>>,
    pub image_repository: Option<String>,
    pub webhook_secret: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub git_token: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub gitlab_token: Option<Option<String>>,
}

/// A field that is present, `null` or not: `Some(None)` for `null`; absent stays `None` (its
/// `#[serde(default)]`), so the two can be told apart.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub async fn update(
    State(s): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(req): JsonBody<UpdateApp>,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &name, q.tenant.as_deref()).await?;
    if req.name.as_ref().is_some_and(|n| *n != app.name) {
        return Err(bad(format!(
            "an app is not renamed (its name is in its builds, Jobs and webhooks): create {:?} and delete {:?}",
            req.name.unwrap_or_default(),
            app.name
        )));
    }
    let mut spec = NewApp {
        tenant_id: app.tenant_id,
        name: app.name.clone(),
        git_url: app.git_url,
        project_path: app.project_path,
        branch_filter: app.branch_filter,
        kind: app.kind,
        settings: app.settings,
        base_image: app.base_image,
        image_repository: app.image_repository,
        webhook_secret: app.webhook_secret,
        git_token: app.git_token,
        gitlab_token: app.gitlab_token,
    };
    let mut changed = false;
    replace(&mut spec.git_url, req.git_url, &mut changed);
    replace(&mut spec.project_path, req.project_path, &mut changed);
    replace(&mut spec.branch_filter, req.branch_filter, &mut changed);
    replace(&mut spec.kind, req.kind, &mut changed);
    replace(&mut spec.base_image, req.base_image, &mut changed);
    replace(&mut spec.image_repository, req.image_repository, &mut changed);
    replace(&mut spec.webhook_secret, req.webhook_secret, &mut changed);
    // An empty token is no token, as on create.
    replace(&mut spec.git_token, req.git_token.map(|t| t.filter(|t| !t.is_empty())), &mut changed);
    replace(&mut spec.gitlab_token, req.gitlab_token.map(|t| t.filter(|t| !t.is_empty())), &mut changed);
    if let Some(patch) = req.settings {
        spec.settings = merged_settings(&spec.settings, patch)?;
        changed = true;
    }
    if !changed {
        return Err(bad("the body changes nothing: give the fields to change, e.g. {\"git_token\": \"…\"}"));
    }
    check_spec(&s, &spec).await?;
    let app = s.store.update_app(app.id, &spec).await?.ok_or_else(|| ApiError::NotFound(format!("no app {name}")))?;
    Ok((Audited::new(app.tenant_id, format!("app/{}", app.name)), Json(json!({ "app": app }))))
}

/// A field of a PATCH: the new value when the body has one.
fn replace<T>(field: &mut T, value: Option<T>, changed: &mut bool) {
    if let Some(v) = value {
        *field = v;
        *changed = true;
    }
}

/// `settings` with `patch` merged in (RFC 7396), read back as strictly as on create.
fn merged_settings(settings: &KindSettings, patch: Value) -> ApiResult<KindSettings> {
    fn merge(target: &mut Value, patch: Value) {
        match patch {
            Value::Object(fields) => {
                if !target.is_object() {
                    *target = json!({});
                }
                let object = target.as_object_mut().expect("made an object");
                for (key, value) in fields {
                    if value.is_null() {
                        object.remove(&key);
                    } else {
                        merge(object.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
            other => *target = other,
        }
    }
    if !patch.is_object() {
        return Err(bad("settings must be an object of the settings to change"));
    }
    let mut current = serde_json::to_value(settings).expect("settings serialise");
    merge(&mut current, patch);
    serde_json::from_value(current).map_err(|e| bad(format!("settings: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    pub tenant: Option<String>,
    /// `1`/`true`: cancel the app's queued and running builds and delete its subscriptions.
    pub force: Option<String>,
}

/// `DELETE /api/v1/apps/{app}`: refused (409, saying what is in the way) while the app has
/// builds queued or running or subscriptions; `?force=1` cancels those builds through the
/// scheduler (a running one ends Cancelled once its log is flushed) and deletes the
/// subscriptions. The app's builds stay readable, listed and named after it; its name is free.
pub async fn delete(
    State(s): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let force = match q.force.as_deref() {
        None | Some("0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(other) => return Err(bad(format!("force={other:?}: use force=1 (or true)"))),
    };
    let app = find_app(&s, &who, &name, q.tenant.as_deref()).await?;
    let (unfinished, subscriptions) = match s.store.delete_app(app.id, force).await? {
        AppDeletion::Deleted { unfinished_builds, subscriptions } => (unfinished_builds, subscriptions),
        AppDeletion::NotFound => return Err(ApiError::NotFound(format!("no app {name}"))),
        AppDeletion::Refused { unfinished_builds, subscriptions } => {
            let mut in_the_way = vec![];
            if !unfinished_builds.is_empty() {
                in_the_way.push(format!("builds queued or running ({}; cancel them with POST /api/v1/builds/{{id}}/cancel)", ids(&unfinished_builds)));
            }
            if !subscriptions.is_empty() {
                in_the_way.push(format!(
                    "subscriptions ({}; delete them with DELETE /api/v1/apps/{name}/subscriptions/{{id}})",
                    ids(&subscriptions)
                ));
            }
            return Err(ApiError::Conflict(format!(
                "app {name} still has {}; or delete with ?force=1, which cancels the builds and deletes the subscriptions",
                in_the_way.join(" and ")
            )));
        }
    };
    let reason = format!("cancelled: app {name} was deleted");
    for build in s.store.builds_by_ids(&unfinished).await? {
        scheduler::cancel_because(&s, &build, Some(&reason)).await?;
    }
    // After the cancels, which post the builds' last GitLab statuses with the app's token.
    s.store.forget_app_tokens(app.id).await?;
    let answer = json!({ "deleted": app.name, "cancelled_builds": unfinished, "deleted_subscriptions": subscriptions });
    Ok((Audited::new(app.tenant_id, format!("app/{}", app.name)), Json(answer)))
}

fn ids(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// The app of `build`, to build with again: 409 when it was deleted (the build is history).
pub(crate) async fn live_app_of(s: &AppState, build: &Build) -> ApiResult<App> {
    match s.store.app(build.app_id).await? {
        Some(app) if app.deleted_at.is_none() => Ok(app),
        _ => Err(ApiError::Conflict(format!("build {}'s app {} was deleted; its builds are kept as history only", build.id, build.app))),
    }
}
