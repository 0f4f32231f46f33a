//! `/api/v1/builds` and `/api/v1/apps/{app}/builds`: trigger, read, list, cancel, retry, and the log.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::{find_app, live_app_of, named_tenant, TenantQuery};
use super::{bad, JsonBody};
use crate::audit::Audited;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gitlab_status::Status;
use crate::logs::follow::follow;
use crate::scheduler::{self, CancelResult};
use crate::store::{Build, BuildState, LogLine, NewBuild};
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBuild {
    /// A branch or tag (`main`, `refs/heads/main`, `refs/tags/v1`).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit to build (40 hex).
    pub commit: Option<String>,
}

pub async fn trigger(
    State(s): State<AppState>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(req): JsonBody<TriggerBuild>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let app = find_app(&s, &who, &app, q.tenant.as_deref()).await?;
    let git_ref = match req.git_ref {
        Some(r) => {
            validate::git_ref(&r).map_err(bad)?;
            Some(if r.starts_with("refs/") { r } else { format!("refs/heads/{r}") })
        }
        None => None,
    };
    let commit = match (req.commit, &git_ref) {
        (Some(commit), _) => {
            validate::commit_sha(&commit).map_err(bad)?;
            commit
        }
        // A ref alone: build what it points at now (one ls-refs exchange with the git server).
        (None, Some(r)) => resolve_ref(&s, &app, r).await?,
        (None, None) => return Err(bad("give \"ref\" (a branch or tag) or \"commit\" (a 40-hex commit id)")),
    };
    let build = s
        .store
        .create_build(&NewBuild { tenant_id: app.tenant_id, app_id: app.id, git_ref, commit, trigger: "manual".into(), commit_info: Default::default() })
        .await?;
    s.gitlab_statuses.post(&app, (&build).into(), Status::Pending, &format!("build {} queued", build.id));
    s.scheduler.wake();
    Ok((StatusCode::CREATED, Audited::new(build.tenant_id, format!("build/{}", build.id)), Json(json!({ "build": build }))))
}

async fn resolve_ref(s: &AppState, app: &crate::store::App, git_ref: &str) -> ApiResult<String> {
    use crate::steps::clone::{resolve_ref, CloneError};
    let scratch = s.config.store.data_dir.join("probes").join(format!("ref-{}", rand::random::<u64>()));
    let (url, r, token) = (app.git_url.clone(), git_ref.to_string(), app.git_token.clone());
    let dir = scratch.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        let out = resolve_ref(&url, &r, token.as_deref(), &dir);
        let _ = std::fs::remove_dir_all(&dir);
        out
    })
    .await
    .map_err(|e| ApiError::Internal(format!("ref lookup task: {e}")))?;
    match resolved {
        Ok(commit) => Ok(commit),
        Err(e @ CloneError::CommitNotFound { .. }) => Err(ApiError::Unprocessable(e.to_string())),
        Err(e) => Err(ApiError::BadGateway(format!("cannot look up {git_ref}: {e}"))),
    }
}

/// A build visible to the caller, else 404 (the same answer for another tenant's build).
pub(crate) async fn visible_build(s: &AppState, who: &Principal, id: i64) -> ApiResult<Build> {
    s.store
        .build(id)
        .await?
        .filter(|b| who.sees(b.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no build {id}")))
}

/// The most rollouts of one image a build answer lists.
const BUILD_ROLLOUTS: i64 = 100;

/// The build, its steps, the copies of its image to the clusters' registries (`syncs`) and the
/// rollouts of that image (`rollouts`, newest first: any build of the app that produced the same
/// digest shares them).
pub async fn get(State(s): State<AppState>, who: Principal, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let build = visible_build(&s, &who, id).await?;
    let steps = s.store.steps(id).await?;
    let syncs = s.store.syncs(id).await?;
    let rollouts = match &build.image_digest {
        Some(digest) => s.store.rollouts_of_digest(build.app_id, digest, BUILD_ROLLOUTS).await?,
        None => vec![],
    };
    let notifications = s.store.notifications_of_build(id).await?;
    Ok(Json(json!({ "build": build, "steps": steps, "syncs": syncs, "rollouts": rollouts, "notifications": notifications })))
}

/// `POST /api/v1/builds/{id}/sync`: copies the build's image to every cluster's registry again
/// (what a target already has is not sent again). 202; the outcome shows in the build's `syncs`.
pub async fn sync(
    State(s): State<AppState>,
    who: Principal,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let build = visible_build(&s, &who, id).await?;
    if s.clusters.all().is_empty() {
        return Err(ApiError::Unprocessable("no cluster is configured to replicate to ([[clusters]] in the config)".into()));
    }
    if build.state != BuildState::Succeeded || build.image.is_none() {
        return Err(ApiError::Unprocessable(format!("build {id} has no pushed image ({}); only a successful build is replicated", build.state.as_str())));
    }
    crate::replication::spawn(s.0.clone(), id);
    Ok((StatusCode::ACCEPTED, Audited::new(build.tenant_id, format!("build/{id}")), Json(json!({ "status": "replicating", "clusters": s.clusters.all().iter().map(|c| &c.name).collect::<Vec<_>>() }))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub app: Option<String>,
    pub state: Option<String>,
    pub tenant: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list(State(s): State<AppState>, who: Principal, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let app_id = match &q.app {
        Some(name) => Some(find_app(&s, &who, name, q.tenant.as_deref()).await?.id),
        None => None,
    };
    let state = match &q.state {
        Some(st) => Some(BuildState::parse(st).ok_or_else(|| {
            bad(format!("unknown state {st:?}; one of Queued, Running, Succeeded, Failed, Cancelled, TimedOut"))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let tenant = named_tenant(&s, &who, q.tenant.as_deref()).await?;
    let builds = s.store.builds(tenant, app_id, state, limit).await?;
    Ok(Json(json!({ "builds": builds })))
}

pub async fn cancel(
    State(s): State<AppState>,
    who: Principal,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let build = visible_build(&s, &who, id).await?;
    let (status, message) = match scheduler::cancel(&s, &build).await? {
        CancelResult::Cancelled => (StatusCode::OK, "cancelled".to_string()),
        CancelResult::Stopping => (StatusCode::ACCEPTED, "stopping: the build ends Cancelled once its log is flushed".into()),
        CancelResult::AlreadyFinished(st) => {
            return Err(ApiError::Conflict(format!("build {id} already ended {}", st.as_str())));
        }
    };
    Ok((status, Audited::new(build.tenant_id, format!("build/{id}")), Json(json!({ "build": id, "result": message }))))
}

/// `POST /api/v1/builds/{id}/retry`: a new build of the same app, ref and commit (trigger
/// `retry`), answered 201 with it as `trigger` answers. A build still queued or running is 409.
pub async fn retry(
    State(s): State<AppState>,
    who: Principal,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, axum::Extension<Audited>, Json<Value>)> {
    let old = visible_build(&s, &who, id).await?;
    if matches!(old.state, BuildState::Queued | BuildState::Running) {
        return Err(ApiError::Conflict(format!("build {id} is still {}; cancel it first or wait for it to end", old.state.as_str())));
    }
    let app = live_app_of(&s, &old).await?;
    let build = s
        .store
        .create_build(&NewBuild {
            tenant_id: old.tenant_id,
            app_id: old.app_id,
            git_ref: old.git_ref.clone(),
            commit: old.commit.clone(),
            trigger: "retry".into(),
            // The same commit: what the push said of it still holds.
            commit_info: old.commit_info.clone(),
        })
        .await?;
    s.gitlab_statuses.post(&app, (&build).into(), Status::Pending, &format!("build {} queued (retry of {id})", build.id));
    s.scheduler.wake();
    Ok((StatusCode::CREATED, Audited::new(build.tenant_id, format!("build/{}", build.id)), Json(json!({ "build": build, "retry_of": id }))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// `1`/`true`: keep the answer open and stream lines until the build ends.
    pub follow: Option<String>,
    /// Server-Sent Events: start after this sequence number (as `Last-Event-ID` does).
    pub after: Option<i64>,
}

/// The log. Asked for `text/event-stream`: Server-Sent Events (backlog, live lines, step events,
/// the result; `Last-Event-ID` resumes). Otherwise plain text, one line per log line; with
/// `?follow=1` the answer streams until the build ends.
pub async fn logs(
    State(s): State<AppState>,
    who: Principal,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let build = visible_build(&s, &who, id).await?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")));
    if wants_sse {
        let last_event_id = match headers.get("last-event-id") {
            Some(v) => Some(
                v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|n| *n >= 0).ok_or_else(|| {
                    bad("Last-Event-ID must be the sequence number of a log line (a non-negative integer)")
                })?,
            ),
            None => None,
        };
        let after = last_event_id.or(q.after).unwrap_or(0).max(0);
        return Ok(crate::logs::sse::sse(s.store.clone(), s.hub.clone(), build.id, after, crate::metrics::FollowerGuard::new(&s.metrics)));
    }
    let following = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    let lines = follow(s.store.clone(), s.hub.clone(), build.id, 0);
    let body = if following {
        Body::from_stream(lines.map(|r| r.map(|ls| render_text(&ls))))
    } else {
        // A finished log, or a snapshot of a running one: read until nothing new.
        let mut text = String::new();
        let mut after = 0;
        loop {
            let page = s.store.log_after(id, after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            text.push_str(&render_text(&page));
        }
        Body::from(text)
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache"), (header::HeaderName::from_static("x-accel-buffering"), "no")],
        body,
    )
        .into_response())
}

fn render_text(lines: &[LogLine]) -> String {
    let mut out = String::with_capacity(lines.iter().map(|l| l.line.len() + 1).sum());
    for l in lines {
        out.push_str(&l.line);
        out.push('\n');
    }
    out
}
