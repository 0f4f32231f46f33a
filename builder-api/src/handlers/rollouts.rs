//! An app's rollouts: `/api/v1/apps/{app}/subscriptions` (which Deployments follow the app's
//! images), `/api/v1/apps/{app}/releases` (what runs where, by digest, with history) and
//! `/api/v1/apps/{app}/rollback` (back to an earlier successful build, in one or all clusters).
//! A subscription's `strategy` (rolling, blue-green, canary) is set when it is made or with
//! `PUT …/subscriptions/{id}/strategy`; a release that waits for a person moves on with
//! `POST …/subscriptions/{id}/promote` or stops with `…/abort`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::{find_app, TenantQuery};
use super::{bad, JsonBody};
use crate::audit::Audited;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::rollout::policy::Policy;
use crate::rollout::strategy::Strategy;
use crate::store::{NewRollout, NewSubscription, Rollout};
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    pub cluster: String,
    /// One of the tenant's `deploy_namespaces`: a tenant deploys only where an admin granted it.
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    /// The repository path in the cluster's registry; by default the app's image repository
    /// without its registry host, in the tenant's project of that registry. Always in that
    /// project when the tenant has a `registry_project`: no tenant follows another's images.
    pub repository: Option<String>,
    pub policy: String,
    #[serde(default = "yes")]
    pub rollback_on_failure: bool,
    /// `"rolling"` (the default), `"blue-green"`, `"canary"`, or an object with `kind` and
    /// settings (`rollout::strategy`).
    pub strategy: Option<Value>,
}

fn yes() -> bool {
    true
}

pub async fn create_subscription(
    State(s): State<AppState>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(req): JsonBody<CreateSubscription>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let Some(cluster) = s.clusters.get(&req.cluster) else {
        let known: Vec<&str> = s.clusters.all().iter().map(|c| c.name.as_str()).collect();
        return Err(ApiError::Unprocessable(format!("no cluster {:?} is configured (known: {})", req.cluster, known.join(", "))));
    };
    validate::dns_label("namespace", &req.namespace).map_err(bad)?;
    validate::dns_label("deployment", &req.deployment).map_err(bad)?;
    validate::dns_label("container", &req.container).map_err(bad)?;
    req.policy.parse::<Policy>().map_err(bad)?;
    let strategy = req.strategy.as_ref().map(Strategy::from_json).transpose().map_err(bad)?;
    let repository = match req.repository {
        Some(r) => r,
        None => {
            let path = app.image_repository.split_once('/').map(|(_, path)| path).unwrap_or_default();
            crate::replication::repository_in(cluster, &app.tenant, path)
        }
    };
    validate::image_repository_path(&repository).map_err(bad)?;
    // Only where an admin granted the tenant, following only the tenant's own images.
    let tenant = s.store.tenant(app.tenant_id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {}", app.tenant)))?;
    crate::rollout::grants::check(&tenant, cluster, &req.namespace, &repository).map_err(|e| ApiError::Forbidden(e.to_string()))?;
    let sub = s
        .store
        .create_subscription(&NewSubscription {
            app_id: app.id,
            cluster: req.cluster,
            namespace: req.namespace,
            deployment: req.deployment,
            container: req.container,
            repository,
            policy: req.policy,
            rollback_on_failure: req.rollback_on_failure,
            strategy: strategy.map(|s| s.to_json()),
        })
        .await?;
    Ok((StatusCode::CREATED, Audited::new(app.tenant_id, format!("subscription/{}", sub.id)), Json(json!({ "subscription": sub }))))
}

pub async fn list_subscriptions(
    State(s): State<AppState>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    Ok(Json(json!({ "subscriptions": s.store.subscriptions_of_app(app.id).await? })))
}

pub async fn delete_subscription(
    State(s): State<AppState>,
    who: Principal,
    Path((app, id)): Path<(String, i64)>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    if s.store.delete_subscription(app.id, id).await? {
        Ok((StatusCode::NO_CONTENT, Audited::new(app.tenant_id, format!("subscription/{id}"))))
    } else {
        Err(ApiError::NotFound(format!("no subscription {id} of app {}", app.name)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStrategy {
    pub strategy: Value,
}

/// Changes how a subscription releases; rollouts queued from now on use the new strategy.
pub async fn set_strategy(
    State(s): State<AppState>,
    who: Principal,
    Path((app, id)): Path<(String, i64)>,
    Query(q): Query<TenantQuery>,
    JsonBody(req): JsonBody<SetStrategy>,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let strategy = Strategy::from_json(&req.strategy).map_err(bad)?;
    let sub = s
        .store
        .set_subscription_strategy(app.id, id, &strategy.to_json())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id} of app {}", app.name)))?;
    Ok((Audited::new(app.tenant_id, format!("subscription/{id}")), Json(json!({ "subscription": sub }))))
}

/// `POST …/subscriptions/{id}/promote`: the running release of the subscription goes on (a
/// blue-green switch, the next canary step).
pub async fn promote(
    state: State<AppState>,
    who: Principal,
    path: Path<(String, i64)>,
    q: Query<TenantQuery>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    decide(state, who, path, q, "promote").await
}

/// `POST …/subscriptions/{id}/abort`: the running release stops with traffic on what ran before.
pub async fn abort(
    state: State<AppState>,
    who: Principal,
    path: Path<(String, i64)>,
    q: Query<TenantQuery>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    decide(state, who, path, q, "abort").await
}

async fn decide(
    State(s): State<AppState>,
    who: Principal,
    Path((app, id)): Path<(String, i64)>,
    Query(q): Query<TenantQuery>,
    decision: &str,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let sub = s.store.subscription(id).await?.filter(|sub| sub.app_id == app.id);
    let sub = sub.ok_or_else(|| ApiError::NotFound(format!("no subscription {id} of app {}", app.name)))?;
    let actor = crate::audit::actor(&who);
    let Some(rollout) = s.store.decide_rollout(sub.id, decision, &actor).await? else {
        return Err(ApiError::Conflict(format!(
            "no release of subscription {id} is running (or a promote or abort for it is already waiting to be acted on)"
        )));
    };
    s.rollouts.decided();
    let audited = Audited::new(app.tenant_id, format!("rollout/{rollout}"));
    Ok((StatusCode::ACCEPTED, audited, Json(json!({ "rollout": rollout, "decision": decision, "by": actor }))))
}

/// Per subscription: the digest it runs (its last complete rollout: `digest`, `image`, the
/// `build` that made it, `since` when, `requested_by` who asked when it was a rollback) and its
/// rollouts, newest first, each with its `build`; `builds` are those builds, for their commit
/// and author.
pub async fn releases(
    State(s): State<AppState>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let history = s.store.rollouts_of_app(app.id, 1000).await?;
    let steps = s.store.rollout_steps_of_app(app.id).await?;
    let mut digests: Vec<&str> = history.iter().map(|r| r.digest.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    let builds = s.store.builds_of_digests(app.id, &digests).await?;
    let build_of = |digest: &str| builds.iter().find(|b| b.image_digest.as_deref() == Some(digest)).map(|b| b.id);
    let releases: Vec<Value> = s
        .store
        .subscriptions_of_app(app.id)
        .await?
        .into_iter()
        .map(|sub| {
            let mine: Vec<&Rollout> = history.iter().filter(|r| r.subscription_id == sub.id).collect();
            let current = mine.iter().find(|r| r.state == "Complete");
            let entries: Vec<Value> = mine
                .iter()
                .map(|r| {
                    let mut v = json!(r);
                    v["build"] = json!(build_of(&r.digest));
                    v["steps"] = json!(steps.iter().filter(|st| st.rollout_id == r.id).collect::<Vec<_>>());
                    v
                })
                .collect();
            json!({
                "subscription_id": sub.id,
                "cluster": sub.cluster,
                "namespace": sub.namespace,
                "deployment": sub.deployment,
                "container": sub.container,
                "policy": sub.policy,
                "strategy": sub.strategy,
                "digest": current.map(|r| &r.digest),
                "image": current.map(|r| &r.image),
                "build": current.and_then(|r| build_of(&r.digest)),
                "since": current.and_then(|r| r.finished_at),
                "requested_by": current.and_then(|r| r.requested_by.as_ref()),
                "history": entries,
            })
        })
        .collect();
    Ok(Json(json!({ "app": app.name, "releases": releases, "builds": builds })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// An earlier successful build of the app…
    pub build: Option<i64>,
    /// …or the digest one produced.
    pub digest: Option<String>,
    /// One cluster; every cluster with a subscription when unset.
    pub cluster: Option<String>,
}

/// Queues a rollout of an earlier build's digest to the app's subscriptions (manual ones too).
pub async fn rollback(
    State(s): State<AppState>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let digest = match (req.build, req.digest) {
        (Some(id), None) => {
            let build = s.store.build(id).await?.filter(|b| b.app_id == app.id).ok_or_else(|| ApiError::NotFound(format!("no build {id} of app {}", app.name)))?;
            build.image_digest.filter(|_| build.state == crate::store::BuildState::Succeeded).ok_or_else(|| {
                ApiError::Unprocessable(format!("build {id} did not succeed with an image; only a successful build can be rolled back to"))
            })?
        }
        (None, Some(digest)) => {
            if !s.store.succeeded_builds_with_digest(&digest).await?.iter().any(|b| b.app_id == app.id) {
                return Err(ApiError::Unprocessable(format!("no successful build of app {} produced {digest}", app.name)));
            }
            digest
        }
        _ => return Err(bad("give exactly one of \"build\" (a build id) or \"digest\"")),
    };
    if let Some(c) = &req.cluster {
        if s.clusters.get(c).is_none() {
            return Err(ApiError::Unprocessable(format!("no cluster {c:?} is configured")));
        }
    }
    let subs: Vec<_> = s
        .store
        .subscriptions_of_app(app.id)
        .await?
        .into_iter()
        .filter(|sub| req.cluster.as_ref().is_none_or(|c| *c == sub.cluster))
        .collect();
    if subs.is_empty() {
        return Err(ApiError::Unprocessable(format!("app {} has no subscription to roll back", app.name)));
    }
    let rollouts: Vec<NewRollout> = subs
        .iter()
        .filter_map(|sub| {
            let cluster = s.clusters.get(&sub.cluster)?;
            Some(NewRollout {
                subscription_id: sub.id,
                app_id: app.id,
                cluster: sub.cluster.clone(),
                digest: digest.clone(),
                image: format!("{}/{}@{digest}", cluster.registry, sub.repository),
                trigger: "rollback".into(),
                requested_by: Some(crate::audit::actor(&who)),
            })
        })
        .collect();
    let ids = s.store.queue_rollouts(&[], &rollouts).await?;
    s.rollouts.wake();
    let audited = Audited::new(app.tenant_id, format!("app/{}@{digest}", app.name));
    Ok((StatusCode::ACCEPTED, audited, Json(json!({ "digest": digest, "rollouts": ids }))))
}
