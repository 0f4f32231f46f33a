//! `POST /hooks/gitlab`: GitLab Push Hook and Tag Push Hook.
//!
//! Answers: 202 with the queued build ids; 200 for an event Kiln ignores (with the reason — GitLab
//! disables hooks that get 4xx) and for a redelivery (with the original outcome); 400 for a body
//! that is not a push event; 401 for a wrong `X-Gitlab-Token`; 404 for a project no app builds;
//! 413 for a body over the limit; 429 with `Retry-After` when the app is over its webhook rate
//! (`[hooks]`, see `rate.rs`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::branch_filter;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gitlab_status::{Status, Subject};
use crate::handlers::{parse_json, read_body};
use crate::store::{App, CommitInfo, NewBuild, NewDelivery};
use crate::validate;

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    checkout_sha: Option<String>,
    /// The push's newest commits (GitLab sends up to 20), the head among them.
    #[serde(default)]
    commits: Vec<PushCommit>,
    /// The push options GitLab recognises, parsed (`{"ci": {"skip": true}}` for `-o ci.skip`).
    #[serde(default)]
    push_options: Value,
}

#[derive(Debug, Deserialize)]
struct PushCommit {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: String,
    /// `{"name": …, "email": …}`. Read as any value: what the page shows of a commit is no
    /// reason to refuse the push that carries it.
    #[serde(default)]
    author: Value,
    /// The commit's page in GitLab.
    #[serde(default)]
    url: Value,
}

/// The most of a commit message kept: the pages show its first line.
const MAX_COMMIT_MESSAGE: usize = 4096;
/// The most of an author's name or a commit URL kept.
const MAX_COMMIT_FIELD: usize = 2048;

/// What the build records of the head commit, from the push's `commits[]` (GitLab lists up to
/// 20, the head among them; a push of more, or a tag push, may not list it: then nothing).
fn commit_info(push: &PushEvent, head: &str) -> CommitInfo {
    let Some(c) = push.commits.iter().find(|c| c.id.eq_ignore_ascii_case(head)) else {
        return CommitInfo::default();
    };
    let message = clean_text(&c.message, MAX_COMMIT_MESSAGE, true);
    let author = c.author.get("name").and_then(Value::as_str).and_then(|a| clean_text(a, MAX_COMMIT_FIELD, false));
    // Only a web address becomes a link: never `javascript:` or a `data:` URL from a payload.
    let url = c.url.as_str().filter(|u| {
        (u.starts_with("https://") || u.starts_with("http://"))
            && u.len() <= MAX_COMMIT_FIELD
            && !u.chars().any(|ch| ch.is_control() || ch.is_whitespace())
    });
    CommitInfo { message, author, url: url.map(str::to_string) }
}

/// `text` without terminal escapes and control characters (line breaks kept when `multiline`),
/// trimmed and cut to at most `max` bytes at a character boundary; None when nothing is left.
fn clean_text(text: &str, max: usize, multiline: bool) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(max));
    for ch in crate::failure_line::strip_ansi(text).trim().chars() {
        let ch = if ch == '\t' { ' ' } else { ch };
        if ch.is_control() && !(multiline && ch == '\n') {
            continue;
        }
        if out.len() + ch.len_utf8() > max {
            break;
        }
        out.push(ch);
    }
    let out = out.trim_end().to_string();
    (!out.is_empty()).then_some(out)
}

/// Why a push asks not to be built, as GitLab's own CI reads it: `[skip ci]` or `[ci skip]` (any
/// case, `-` or `_` for the space) in the head commit's message, or the push option `ci.skip`.
/// Only the head commit counts: a skip in an older commit of the push is history.
fn skip_ci(push: &PushEvent, head: &str) -> Option<String> {
    let skip_option = push.push_options.pointer("/ci/skip") == Some(&Value::Bool(true))
        || push.push_options.as_array().is_some_and(|a| a.iter().any(|o| o == "ci.skip"));
    if skip_option {
        return Some("the push option ci.skip asks to skip CI".into());
    }
    let message = push.commits.iter().find(|c| c.id.eq_ignore_ascii_case(head))?.message.to_ascii_lowercase();
    let marker = ["[skip ci]", "[ci skip]", "[skip-ci]", "[ci-skip]", "[skip_ci]", "[ci_skip]"].into_iter().find(|m| message.contains(m))?;
    Some(format!("the head commit's message asks to skip CI ({marker})"))
}

/// A GitLab webhook delivery, parsed without the store: who it is for and what it asks.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `project.path_with_namespace` (may be empty when the body has only URLs).
    pub project: String,
    /// Up to two clone URLs of the project, for apps registered by URL.
    pub urls: Vec<String>,
    /// `X-Gitlab-Event` (empty when absent).
    pub event: String,
    /// What the event asks for. Kept as a value, not an early error: a body that is a JSON object
    /// naming a project is answered 404/401 before its push fields are judged, so that an
    /// unauthenticated sender learns nothing about what Kiln would accept.
    pub push: Result<Push, Decision>,
}

/// A push or tag push to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref, `refs/heads/…` or `refs/tags/…`.
    pub git_ref: String,
    /// The branch or tag name (the ref without its prefix), a valid git ref name.
    pub name: String,
    /// The commit to build: 40 lowercase hex.
    pub commit: String,
    pub is_tag: bool,
    /// What the push says of that commit: message, author, link.
    pub commit_info: CommitInfo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answered 200 with the reason (GitLab disables hooks that get 4xx).
    Ignore(String),
    /// Answered 400 with the reason.
    Reject(String),
}

/// Parses a delivery from its headers and body. Err is why the body is no GitLab event at all
/// (a 400). Pure, so the fuzz harness can drive it directly.
pub fn parse_push(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, ApiError> {
    let payload: Value = parse_json(body)?;
    if !payload.is_object() {
        return Err(ApiError::BadRequest("the webhook body must be a JSON object".into()));
    }
    let project = payload.pointer("/project/path_with_namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    let urls: Vec<String> = ["/project/git_http_url", "/repository/git_http_url", "/project/http_url", "/repository/url"]
        .iter()
        .filter_map(|p| payload.pointer(p).and_then(Value::as_str))
        .take(2)
        .map(str::to_string)
        .collect();
    if project.is_empty() && urls.is_empty() {
        return Err(ApiError::BadRequest("the webhook body has no project.path_with_namespace".into()));
    }
    let event = header(headers, "x-gitlab-event").unwrap_or_default().to_string();
    let push = classify(&event, payload);
    Ok(Delivery { project, urls, event, push })
}

/// What a verified event asks for.
fn classify(event: &str, payload: Value) -> Result<Push, Decision> {
    let kind = payload.get("object_kind").and_then(Value::as_str).unwrap_or_default();
    let is_tag = match (event, kind) {
        ("Push Hook", _) | ("", "push") => false,
        ("Tag Push Hook", _) | ("", "tag_push") => true,
        _ => {
            let what = if event.is_empty() { kind } else { event };
            return Err(Decision::Ignore(format!("event {what:?} does not start builds (only Push Hook and Tag Push Hook do)")));
        }
    };
    let push: PushEvent =
        serde_json::from_value(payload).map_err(|e| Decision::Reject(format!("not a valid push event: {e}")))?;
    if push.after == ZERO_SHA {
        return Err(Decision::Ignore(format!("{} was deleted", push.git_ref)));
    }
    let commit = push.checkout_sha.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| push.after.clone());
    validate::commit_sha(&commit).map_err(|e| Decision::Reject(e.0))?;
    let prefix = if is_tag { "refs/tags/" } else { "refs/heads/" };
    let name = push
        .git_ref
        .strip_prefix(prefix)
        .ok_or_else(|| Decision::Reject(format!("ref {:?} does not start with {prefix}", push.git_ref)))?
        .to_string();
    validate::git_ref(&name).map_err(|e| Decision::Reject(e.0))?;
    if let Some(reason) = skip_ci(&push, &commit) {
        return Err(Decision::Ignore(reason));
    }
    let commit_info = commit_info(&push, &commit);
    Ok(Push { git_ref: push.git_ref, name, commit, is_tag, commit_info })
}

/// The builds a push asks of the apps it reached.
fn plan_builds(push: &Push, apps: &[App]) -> Vec<NewBuild> {
    apps.iter()
        // Tags are release builds: the branch filter applies to branches only.
        .filter(|app| push.is_tag || branch_filter::matches(&app.branch_filter, &push.name))
        .map(|app| NewBuild {
            tenant_id: app.tenant_id,
            app_id: app.id,
            git_ref: Some(push.git_ref.clone()),
            commit: push.commit.clone(),
            trigger: "webhook".into(),
            commit_info: push.commit_info.clone(),
        })
        .collect()
}

pub async fn receive(State(s): State<AppState>, req: Request) -> ApiResult<(StatusCode, Json<Value>)> {
    // Timed and counted around `handle`, so every way out of it is one answer with one outcome.
    let started = std::time::Instant::now();
    let answer = handle(s.clone(), req).await;
    s.metrics.webhook("gitlab", super::outcome_of(&answer), started);
    answer
}

async fn handle(s: AppState, req: Request) -> ApiResult<(StatusCode, Json<Value>)> {
    let headers = req.headers().clone();
    let client_addr = crate::audit::client_addr(&s, &req);
    let body = read_body(req, &s).await?;
    let parsed = parse_push(&headers, &body)?;
    let urls: Vec<&str> = parsed.urls.iter().map(String::as_str).collect();
    let candidates = s.store.apps_for_project(&parsed.project, &urls).await?;
    if candidates.is_empty() {
        return Err(ApiError::NotFound(format!("no app builds project {:?}", parsed.project)));
    }
    let token = header(&headers, "x-gitlab-token").unwrap_or_default();
    let apps: Vec<App> = candidates.into_iter().filter(|a| bool::from(a.webhook_secret.as_bytes().ct_eq(token.as_bytes()))).collect();
    if apps.is_empty() {
        return Err(ApiError::Unauthorized("X-Gitlab-Token does not match the app's webhook secret".into()));
    }
    // Only a verified delivery is charged: a sender without the secret cannot spend an app's
    // budget. Over it, nothing is recorded, so GitLab's retry after `Retry-After` builds.
    let ids: Vec<i64> = apps.iter().map(|a| a.id).collect();
    if let Err(wait) = s.hook_limits.take(&ids) {
        let secs = wait.as_secs_f64().ceil() as u64;
        let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        return Err(ApiError::TooManyRequests {
            message: format!(
                "app {} received more than {} webhook deliveries a minute (burst {}); retry in {secs}s",
                names.join(", "),
                s.config.hooks.rate_per_app_per_minute,
                s.config.hooks.burst
            ),
            retry_after_secs: secs,
        });
    }

    let event = parsed.event;
    let key = header(&headers, "idempotency-key")
        .or_else(|| header(&headers, "x-gitlab-event-uuid"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(&body))));
    let delivery = NewDelivery { source: "gitlab", key, event: event.clone(), app_id: apps.first().map(|a| a.id), client_addr };

    let (builds, ignored) = match parsed.push.map(|push| plan_builds(&push, &apps)) {
        Ok(builds) if builds.is_empty() => (vec![], Some("no app's branch filter matches this branch".to_string())),
        Ok(builds) => (builds, None),
        Err(Decision::Ignore(reason)) => (vec![], Some(reason)),
        Err(Decision::Reject(reason)) => return Err(ApiError::BadRequest(reason)),
    };
    let (outcome, new) = s.store.record_delivery(&delivery, &builds, ignored).await?;
    if !new {
        return Ok((
            StatusCode::OK,
            Json(json!({ "status": "duplicate", "reason": "this delivery was received before", "builds": outcome.build_ids })),
        ));
    }
    if let Some(reason) = outcome.ignored {
        return Ok((StatusCode::OK, Json(json!({ "status": "ignored", "reason": reason }))));
    }
    for (id, new) in outcome.build_ids.iter().zip(&builds) {
        if let Some(app) = apps.iter().find(|a| a.id == new.app_id) {
            let subject = Subject { id: *id, git_ref: new.git_ref.as_deref(), commit: &new.commit };
            s.gitlab_statuses.post(app, subject, Status::Pending, &format!("build {id} queued"));
        }
    }
    // After the answer: cancelling what the push supersedes is work, not intake.
    let (state, ids) = (s.clone(), outcome.build_ids.clone());
    tokio::spawn(async move {
        if let Err(e) = supersede_older(&state, &apps, &ids, &builds).await {
            tracing::error!("superseding older builds: {e}");
        }
    });
    s.scheduler.wake();
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "queued", "builds": outcome.build_ids }))))
}

/// A push to a branch makes the app's older queued or running builds of that branch pointless:
/// they are cancelled (unless the app's `settings.supersede` is false), and say by which build.
async fn supersede_older(s: &AppState, apps: &[App], ids: &[i64], builds: &[NewBuild]) -> Result<(), crate::store::StoreError> {
    for (id, new) in ids.iter().zip(builds) {
        let Some(git_ref) = new.git_ref.as_deref().filter(|r| r.starts_with("refs/heads/")) else { continue };
        if apps.iter().any(|a| a.id == new.app_id && a.settings.supersede == Some(false)) {
            continue;
        }
        for older in s.store.active_builds_of_ref(new.app_id, git_ref, *id).await? {
            let why = format!("superseded by build {id} (a newer push to {git_ref})");
            crate::scheduler::cancel_because(&s, &older, Some(&why)).await?;
        }
    }
    Ok(())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_with(commits: Value) -> Push {
        let head = "a".repeat(40);
        let body = json!({
            "object_kind": "push", "ref": "refs/heads/main", "before": ZERO_SHA, "after": head, "checkout_sha": head,
            "project": {"path_with_namespace": "team/app"}, "commits": commits,
        });
        let mut headers = HeaderMap::new();
        headers.insert("x-gitlab-event", "Push Hook".parse().unwrap());
        parse_push(&headers, body.to_string().as_bytes()).unwrap().push.unwrap()
    }

    #[test]
    fn the_head_commits_message_author_and_link_are_kept_and_older_commits_are_not() {
        let head = "a".repeat(40);
        let push = push_with(json!([
            {"id": "b".repeat(40), "message": "older", "author": {"name": "Someone Else"}, "url": "https://gitlab.example/team/app/-/commit/bbbb"},
            {"id": head.to_uppercase(), "message": "Fix the login\n\nLonger text.\n", "author": {"name": "Ada Lovelace", "email": "ada@example.com"},
             "url": "https://gitlab.example/team/app/-/commit/aaaa"},
        ]));
        assert_eq!(
            push.commit_info,
            CommitInfo {
                message: Some("Fix the login\n\nLonger text.".into()),
                author: Some("Ada Lovelace".into()),
                url: Some("https://gitlab.example/team/app/-/commit/aaaa".into()),
            }
        );
        // A push that does not list its head (more than 20 commits, a tag push): nothing.
        assert_eq!(push_with(json!([])).commit_info, CommitInfo::default());
    }

    #[test]
    fn a_link_that_is_not_a_web_address_is_dropped_and_odd_fields_do_not_refuse_the_push() {
        let head = "a".repeat(40);
        for url in [json!("javascript:alert(1)"), json!("data:text/html,x"), json!("https://x.example/a b"), json!(42), json!(null)] {
            let push = push_with(json!([{"id": head, "message": "m", "author": "not an object", "url": url}]));
            assert_eq!(push.commit_info, CommitInfo { message: Some("m".into()), author: None, url: None }, "{url}");
        }
        // Control characters go (escape codes too: the page is no terminal); a long message is
        // cut at a character boundary.
        let long = format!("\u{1b}[31mred\u{7}\t{}", "é".repeat(5000));
        let push = push_with(json!([{"id": head, "message": long, "author": {"name": " \u{0}Bob\r "}}]));
        let message = push.commit_info.message.unwrap();
        assert!(message.starts_with("red é") && message.len() <= MAX_COMMIT_MESSAGE, "{message:.40}");
        assert_eq!(push.commit_info.author.as_deref(), Some("Bob"));
    }
}
