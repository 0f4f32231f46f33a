//! `/api/v1/tenants`: admins create tenants (the answer carries the tenant's first token, an
//! owner token, once); owners (and admins) create, list and revoke their tenant's tokens; every
//! role of a tenant reads its settings, only admins change them. `/api/v1/whoami` tells any
//! token its own tenant and role.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::{named_tenant, TenantQuery};
use super::{bad, JsonBody};
use crate::audit::Audited;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::executor::kube::provision::{self, ProvisionError};
use crate::store::{new_token, now_ms, Revoked, Role, Tenant, TenantSettings};
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// The namespace of the tenant's builds, when `<namespace_prefix><name>` is not the one (or
    /// not a valid namespace name at all: a long tenant name). The same as setting `namespace`
    /// in the tenant's settings right after.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `POST /api/v1/tenants` (admin): the tenant and its first owner token. With the kube executor
/// and `kube.provision_namespaces`, its build namespace is provisioned first (`provision`): 400
/// for a namespace Kiln never provisions, 502 naming what the cluster refused — and then no
/// tenant is stored; the answer lists what was made under `provisioned`.
pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    validate::dns_label("tenant", &req.name).map_err(bad)?;
    let settings = TenantSettings { namespace: req.namespace.clone(), ..TenantSettings::default() };
    settings.validate().map_err(bad)?;
    // The new tenant's Jobs go to its namespace, or else `<prefix><name>`: a valid namespace
    // name (the apiserver refuses longer ones, and every build would fail), and not one another
    // tenant has.
    let namespace = match req.namespace {
        Some(ns) => ns,
        None => s.config.kube.default_namespace_for(&req.name).map_err(bad)?,
    };
    if let Some(other) = namespace_user(&s, &namespace, None).await? {
        return Err(ApiError::Conflict(format!(
            "tenant {:?} would build in the namespace {namespace:?}, which is tenant {other}'s namespace",
            req.name
        )));
    }
    // With `kube.provision_namespaces`, the cluster side first: a refusal (Kiln lacks a right)
    // leaves no tenant behind, and provisioning again completes what exists (409 is fine).
    let provisioned = match (&s.kube, s.config.kube.provision_namespaces) {
        (Some(client), true) => {
            if s.store.tenant_by_name(&req.name).await?.is_some() {
                return Err(ApiError::Conflict(format!("tenant {} already exists", req.name)));
            }
            let instance = s.store.instance_id(s.config.kube.instance.as_deref()).await?;
            let done = provision::provision(client, &s.config.kube, &instance, &req.name, &namespace).await.map_err(|e| match e {
                ProvisionError::NotProvisionable { .. } => bad(e.to_string()),
                ProvisionError::Config(_) => ApiError::Internal(e.to_string()),
                ProvisionError::Forbidden { .. } | ProvisionError::Api { .. } => {
                    ApiError::BadGateway(format!("tenant {:?} was not created: provisioning its build namespace failed: {e}", req.name))
                }
            })?;
            Some(done)
        }
        _ => None,
    };
    let mut tenant = s.store.create_tenant(&req.name).await?;
    if settings != TenantSettings::default() {
        s.store.set_tenant_settings(tenant.id, &settings).await?;
        tenant.settings = settings;
    }
    let token = new_token();
    s.store.add_token(Some(tenant.id), "initial", Role::Owner, None, &token).await?;
    let audited = Audited::new(tenant.id, format!("tenant/{}", tenant.name));
    let mut answer = json!({ "tenant": tenant, "token": token, "role": Role::Owner });
    if let Some(done) = provisioned {
        answer["provisioned"] = json!(done);
    }
    Ok((StatusCode::CREATED, audited, Json(answer)))
}

/// `GET /api/v1/whoami`: the caller's tenant (null for an admin), role and token, so that a
/// client — the web page, the CLI's `kiln tokens` — offers only what the token may do. The API still checks every call.
/// `?tenant=` naming another tenant is 404, as on every route.
pub async fn whoami(State(s): State<AppState>, who: Principal, Query(q): Query<TenantQuery>) -> ApiResult<Json<Value>> {
    named_tenant(&s, &who, q.tenant.as_deref()).await?;
    let (tenant, token) = match &who {
        Principal::Admin => (None, None),
        Principal::Tenant { name, token_id, token_name, .. } => (Some(name), Some(json!({ "id": token_id, "name": token_name }))),
    };
    Ok(Json(json!({ "tenant": tenant, "role": who.role(), "token": token })))
}

pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "tenants": s.store.tenants().await? })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub name: Option<String>,
    /// `viewer`, `developer` or `owner` (the default): at most the caller's own role.
    #[serde(default)]
    pub role: Option<Role>,
    /// The token stops working this many seconds from now…
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// …or at this time (milliseconds since the epoch, as every time in the API). Never, unset.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// The tenant named in the path, if the caller sees it; 404 otherwise (whether or not it
/// exists), so tenant names cannot be probed.
pub(crate) async fn visible_tenant(s: &AppState, who: &Principal, name: &str) -> ApiResult<Tenant> {
    s.store.tenant_by_name(name).await?.filter(|t| who.sees(t.id)).ok_or_else(|| ApiError::NotFound(format!("no tenant {name}")))
}

/// A new token for a tenant, by an admin or the tenant's owner. The secret is in this answer
/// only; Kiln keeps its hash.
pub async fn create_token(
    State(s): State<AppState>,
    who: Principal,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let req: CreateToken = if body.iter().all(u8::is_ascii_whitespace) { CreateToken::default() } else { super::parse_json(&body)? };
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    let role = req.role.unwrap_or(Role::Owner);
    if role == Role::Admin {
        return Err(if who.role() == Role::Admin {
            bad("admin tokens belong to no tenant; a tenant's token is a viewer, developer or owner token")
        } else {
            ApiError::Forbidden(format!("a {} token cannot create an admin token", who.role()))
        });
    }
    if role > who.role() {
        return Err(ApiError::Forbidden(format!("a {} token cannot create a {role} token", who.role())));
    }
    let name = req.name.unwrap_or_else(|| "api".into());
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(bad("token name must be 1 to 100 characters, without control characters"));
    }
    let now = now_ms();
    let expires_at = match (req.expires_in_secs, req.expires_at) {
        (Some(_), Some(_)) => return Err(bad("give \"expires_in_secs\" or \"expires_at\", not both")),
        (Some(0), None) => return Err(bad("expires_in_secs must be at least 1")),
        (Some(secs), None) => Some(i64::try_from(secs).ok().and_then(|s| s.checked_mul(1000)).and_then(|ms| now.checked_add(ms)).ok_or_else(|| bad(format!("expires_in_secs {secs} is too far away")))?),
        (None, Some(at)) if at <= now => return Err(bad(format!("expires_at {at} is not in the future (milliseconds since the epoch; now is {now})"))),
        (None, at) => at,
    };
    let token = new_token();
    let stored = s.store.add_token(Some(tenant.id), &name, role, expires_at, &token).await?;
    let audited = Audited::new(tenant.id, format!("token/{}", stored.id));
    Ok((
        StatusCode::CREATED,
        audited,
        Json(json!({
            "tenant": tenant.name,
            "id": stored.id,
            "name": stored.name,
            "role": stored.role,
            "expires_at": stored.expires_at,
            "token": token,
        })),
    ))
}

/// `GET /api/v1/tenants/{tenant}/tokens`: id, name, role and times of each token; never the
/// secret nor its hash.
pub async fn list_tokens(State(s): State<AppState>, who: Principal, Path(tenant): Path<String>) -> ApiResult<Json<Value>> {
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    Ok(Json(json!({ "tenant": tenant.name, "tokens": s.store.tokens(tenant.id).await? })))
}

/// `DELETE /api/v1/tenants/{tenant}/tokens/{id}`: the token is refused from now on (401).
pub async fn revoke_token(
    State(s): State<AppState>,
    who: Principal,
    Path((tenant, id)): Path<(String, i64)>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>)> {
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    match s.store.revoke_token(tenant.id, id).await? {
        Revoked::Now => Ok((StatusCode::NO_CONTENT, Audited::new(tenant.id, format!("token/{id}")))),
        Revoked::Already => Err(ApiError::Conflict(format!("token {id} of tenant {} is already revoked", tenant.name))),
        Revoked::NoSuchToken => Err(ApiError::NotFound(format!("no token {id} in tenant {}", tenant.name))),
        Revoked::LastOwner => Err(ApiError::Conflict(format!(
            "token {id} is tenant {}'s last owner token: make another owner token first (POST /api/v1/tenants/{}/tokens with role owner)",
            tenant.name, tenant.name
        ))),
    }
}

/// The tenant whose builds run in `namespace`, or who deploys there, other than `except`. Two
/// tenants in one namespace would share Secrets, caches and pods, or roll out over each other's
/// Deployments: refused wherever a namespace is decided.
async fn namespace_user(s: &AppState, namespace: &str, except: Option<i64>) -> ApiResult<Option<String>> {
    let tenants = s.store.tenants().await?;
    Ok(tenants
        .into_iter()
        .find(|t| Some(t.id) != except && (s.config.kube.namespace_for(t) == namespace || t.settings.allows_deploy_namespace(namespace)))
        .map(|t| t.name))
}

/// A settings PUT's `deploy_namespaces` against the other tenants (each namespace is one
/// tenant's, so no tenant rolls out over another's Deployments) and against the tenant's own
/// subscriptions: narrowing the grant under a subscription is refused with the list, so it is
/// the admin who decides to delete them rather than rollouts that start failing later.
/// Subscriptions outside the grant already (from before Kiln checked) do not block a PUT; their
/// rollouts are refused with the reason.
async fn check_deploy_namespaces(s: &AppState, tenant: &Tenant, settings: &TenantSettings) -> ApiResult<()> {
    for ns in settings.deploy_namespaces.iter().flatten() {
        if let Some(other) = namespace_user(s, ns, Some(tenant.id)).await? {
            return Err(ApiError::Conflict(format!("deploy_namespaces: namespace {ns:?} is tenant {other}'s namespace")));
        }
    }
    let orphaned: Vec<String> = s
        .store
        .subscriptions_of_tenant(tenant.id)
        .await?
        .into_iter()
        .filter(|(_, sub)| tenant.settings.allows_deploy_namespace(&sub.namespace) && !settings.allows_deploy_namespace(&sub.namespace))
        .map(|(app, sub)| format!("subscription {} of app {app} ({}/{}/{})", sub.id, sub.cluster, sub.namespace, sub.deployment))
        .collect();
    if !orphaned.is_empty() {
        return Err(ApiError::Conflict(format!(
            "deploy_namespaces: these subscriptions deploy into namespaces the new value no longer grants: {}; delete them first (DELETE /api/v1/apps/{{app}}/subscriptions/{{id}})",
            orphaned.join(", ")
        )));
    }
    Ok(())
}

/// The settings of a tenant as stored (`null`: unset) and as builds use them (`effective`:
/// unset values filled from the config; CPU, memory, ephemeral storage and workspace size unset
/// are the Job template's).
fn settings_answer(s: &AppState, tenant: &Tenant) -> Value {
    let kube = &s.config.kube;
    json!({
        "tenant": tenant.name,
        "settings": tenant.settings,
        "effective": {
            "namespace": kube.namespace_for(tenant),
            "registry_project": tenant.settings.registry_project,
            "registry_secret": kube.registry_secret_for(tenant),
            "pull_secret": kube.pull_secret_for(tenant),
            "max_concurrent_builds": tenant.settings.max_concurrent_builds,
            "global_max_concurrent_builds": s.config.executor.max_concurrent_builds,
            "cpu": tenant.settings.cpu,
            "memory": tenant.settings.memory,
            "ephemeral_storage": tenant.settings.ephemeral_storage,
            "workspace_size": tenant.settings.workspace_size,
            "build_timeout_secs": s.config.executor.build_timeout_for(tenant).as_secs(),
            "cache_claim": kube.cache_claim_for(tenant),
            "deploy_namespaces": tenant.settings.deploy_namespaces.clone().unwrap_or_default(),
        },
    })
}

/// `GET /api/v1/tenants/{tenant}/settings`: any role of the tenant reads them — they hold names
/// of Secrets and claims, never their contents, and a developer wants to know its timeout.
pub async fn get_settings(State(s): State<AppState>, who: Principal, Path(tenant): Path<String>) -> ApiResult<Json<Value>> {
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    Ok(Json(settings_answer(&s, &tenant)))
}

/// `PUT /api/v1/tenants/{tenant}/settings`: replaces them all (a field left out is unset and
/// falls back to the config). Admin only (the route table says so): the namespace, the cap and
/// the registry project are where one tenant ends and another begins, so an owner must not move
/// itself into another namespace or raise its own cap.
pub async fn put_settings(
    State(s): State<AppState>,
    who: Principal,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let mut tenant = visible_tenant(&s, &who, &tenant).await?;
    let settings = parse_settings(&body)?;
    settings.validate().map_err(bad)?;
    let namespace = match &settings.namespace {
        Some(ns) => ns.clone(),
        None => s.config.kube.default_namespace_for(&tenant.name).map_err(bad)?,
    };
    if let Some(other) = namespace_user(&s, &namespace, Some(tenant.id)).await? {
        return Err(ApiError::Conflict(format!("namespace {namespace:?} is tenant {other}'s namespace")));
    }
    if let Some(project) = &settings.registry_project {
        let tenants = s.store.tenants().await?;
        if let Some(other) = tenants.iter().find(|t| t.id != tenant.id && t.settings.registry_project.as_ref() == Some(project)) {
            return Err(ApiError::Conflict(format!("registry_project {project:?} is tenant {}'s project", other.name)));
        }
        // Apps made before the project was set must already push into it.
        let outside: Vec<String> = s
            .store
            .apps(Some(tenant.id))
            .await?
            .into_iter()
            .filter(|a| !settings.allows_repository(&a.image_repository))
            .map(|a| format!("{} ({})", a.name, a.image_repository))
            .collect();
        if !outside.is_empty() {
            return Err(ApiError::Conflict(format!(
                "registry_project {project:?}: these apps push outside it: {}; move their image_repository first",
                outside.join(", ")
            )));
        }
    }
    check_deploy_namespaces(&s, &tenant, &settings).await?;
    if !s.store.set_tenant_settings(tenant.id, &settings).await? {
        return Err(ApiError::NotFound(format!("no tenant {}", tenant.name)));
    }
    // A new concurrency cap holds from the scheduler's next pick.
    crate::scheduler::reload_tenant_caps(&s).await?;
    tenant.settings = settings;
    let audited = Audited::new(tenant.id, format!("tenant/{}", tenant.name));
    Ok((audited, Json(settings_answer(&s, &tenant))))
}

/// The body of a settings PUT, strictly, with the field a wrong type or value is at (serde's own
/// message says only "invalid type: string, expected u32").
fn parse_settings(body: &[u8]) -> ApiResult<TenantSettings> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("request body is empty; expected a JSON object of settings ({} unsets them all)"));
    }
    // serde reads a struct from an array too (`["ns"]` sets the first field): only an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad("invalid JSON body: expected a JSON object of settings"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let settings = serde_path_to_error::deserialize(&mut de).map_err(|e| match e.path().to_string().as_str() {
        "." => bad(format!("invalid JSON body: {}", e.inner())),
        field => bad(format!("invalid JSON body: {field}: {}", e.inner())),
    })?;
    // Nothing may follow the object.
    de.end().map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    Ok(settings)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HarborSecretRequest {
    /// The secret to use; generated when left out.
    #[serde(default)]
    secret: Option<String>,
}

/// The shortest Harbor webhook secret accepted: it is the whole authentication of a delivery.
const MIN_HARBOR_SECRET_LEN: usize = 16;

/// `PUT /api/v1/tenants/{tenant}/harbor-webhook-secret`: sets the tenant's own Harbor webhook
/// secret (the webhook policy's "Auth Header" in the tenant's Harbor project), or generates one
/// when the body gives none. Write-only: a generated secret is in this answer once, a given one
/// never; Kiln keeps it encrypted (see `store::secrets`). From now on a delivery for the tenant's
/// `registry_project` must carry exactly this secret: `harbor.webhook_auth` no longer opens it.
pub async fn put_harbor_secret(
    State(s): State<AppState>,
    who: Principal,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let req: HarborSecretRequest = if body.iter().all(u8::is_ascii_whitespace) { HarborSecretRequest::default() } else { super::parse_json(&body)? };
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    let generated = req.secret.is_none();
    let secret = req.secret.unwrap_or_else(|| hex::encode(rand::random::<[u8; 24]>()));
    if secret.len() < MIN_HARBOR_SECRET_LEN || secret.len() > 1024 || secret.chars().any(|c| c.is_control()) {
        return Err(bad(format!("secret must be {MIN_HARBOR_SECRET_LEN} to 1024 characters without control characters (or leave it out to have one generated)")));
    }
    if !s.store.set_harbor_webhook_secret(tenant.id, Some(&secret)).await? {
        return Err(ApiError::NotFound(format!("no tenant {}", tenant.name)));
    }
    let mut answer = json!({
        "tenant": tenant.name,
        "registry_project": tenant.settings.registry_project,
        "generated": generated,
    });
    if generated {
        answer["secret"] = json!(secret);
    }
    Ok((Audited::new(tenant.id, format!("tenant/{}", tenant.name)), Json(answer)))
}

/// `DELETE /api/v1/tenants/{tenant}/harbor-webhook-secret`: removes the tenant's own secret;
/// deliveries for its project fall back to `harbor.webhook_auth`.
pub async fn delete_harbor_secret(
    State(s): State<AppState>,
    who: Principal,
    Path(tenant): Path<String>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>)> {
    let tenant = visible_tenant(&s, &who, &tenant).await?;
    if !s.store.set_harbor_webhook_secret(tenant.id, None).await? {
        return Err(ApiError::NotFound(format!("no tenant {}", tenant.name)));
    }
    Ok((StatusCode::NO_CONTENT, Audited::new(tenant.id, format!("tenant/{}", tenant.name))))
}
