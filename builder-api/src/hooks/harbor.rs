//! `POST /hooks/harbor`: Harbor webhooks, in both of Harbor's payload formats.
//!
//! - Default: `{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"digest", "tag",
//!   "resource_url"}], "repository": {"repo_full_name": "project/name", …}}, …}`
//! - CloudEvents: `{"specversion": "1.0", "id": …, "type": "harbor.artifact.pushed", "data":
//!   {"resources": […], "repository": {…}}}`
//!
//! A push by digest carries the digest in `tag` too; such a "tag" is no tag. Replication events
//! are recorded and start nothing: they carry no digest, and for registries Kiln fills itself
//! registry-sync's verified copy is the trigger.
//!
//! Answers: 202 with the number of image events queued; 200 with the reason for an event that
//! starts nothing (GitLab and Harbor alike retry or disable hooks on 4xx) and for a redelivery;
//! 400 for a body that is not a Harbor event; 401 for a wrong `Authorization` header (see
//! [`authorize`]: the secret is the one of the tenant whose project the delivery names).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::handlers::{parse_json, read_body};
use crate::store::{NewDelivery, NewImageEvent};

/// What a Harbor webhook says, once parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum HarborEvent {
    /// Artifacts pushed; `id` is the CloudEvents id when the payload has one.
    Pushed { id: Option<String>, images: Vec<NewImageEvent> },
    /// Recorded, starts nothing.
    Ignored { id: Option<String>, reason: String },
}

/// Why a body is not a Harbor event (a 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HarborError {
    #[error("the webhook body must be a JSON object")]
    NotAnObject,
    #[error("the Harbor event has no \"type\"")]
    NoType,
    #[error("a CloudEvents Harbor event needs an \"id\"")]
    NoCloudEventId,
    /// The event has no `data` (CloudEvents) or `event_data` (default format) object.
    #[error("the event has no {0:?} object")]
    NoData(&'static str),
    #[error("the event names no repository (repository.repo_full_name)")]
    NoRepository,
    /// The repository is not a valid image repository path (the validator's message).
    #[error("{0}")]
    Repository(String),
    #[error("the event has no \"resources\" list")]
    NoResources,
    #[error("resources[{index}] has no digest")]
    NoDigest { index: usize },
    #[error("resources[{index}].digest {digest:?} is not a sha256 digest")]
    NotSha256 { index: usize, digest: String },
    #[error("resources[{index}] has no resource_url")]
    NoResourceUrl { index: usize },
    #[error("resources[{index}].resource_url {url:?} does not start with a registry host")]
    NoRegistryHost { index: usize, url: String },
}

/// Parses either payload format.
pub fn parse(payload: &Value) -> Result<HarborEvent, HarborError> {
    let Some(obj) = payload.as_object() else { return Err(HarborError::NotAnObject) };
    let kind = obj.get("type").and_then(Value::as_str).ok_or(HarborError::NoType)?;
    let cloud = obj.contains_key("specversion");
    let id = if cloud {
        Some(obj.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or(HarborError::NoCloudEventId)?.to_string())
    } else {
        None
    };
    let pushed = matches!(kind, "PUSH_ARTIFACT" | "harbor.artifact.pushed");
    if !pushed {
        let reason = if kind.contains("REPLICATION") || kind.contains("replication") {
            format!("{kind}: replication events carry no digest and start no rollout (registry-sync's verified copy does)")
        } else {
            format!("{kind}: only artifact pushes start rollouts")
        };
        return Ok(HarborEvent::Ignored { id, reason });
    }
    let data_key = if cloud { "data" } else { "event_data" };
    let data = obj.get(data_key).and_then(Value::as_object).ok_or(HarborError::NoData(data_key))?;
    let repository = data
        .get("repository")
        .and_then(|r| r.get("repo_full_name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(HarborError::NoRepository)?;
    crate::validate::image_repository_path(repository).map_err(|e| HarborError::Repository(e.to_string()))?;
    let resources = data.get("resources").and_then(Value::as_array).ok_or(HarborError::NoResources)?;
    let mut images = Vec::with_capacity(resources.len());
    for (index, r) in resources.iter().enumerate() {
        let field = |k: &str| r.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let tag = field("tag");
        let digest = field("digest").or(tag.filter(|t| t.starts_with("sha256:"))).ok_or(HarborError::NoDigest { index })?;
        if !is_digest(digest) {
            return Err(HarborError::NotSha256 { index, digest: digest.to_string() });
        }
        let tag = tag.filter(|t| !t.starts_with("sha256:"));
        let url = field("resource_url").ok_or(HarborError::NoResourceUrl { index })?;
        let registry = url.split('/').next().unwrap_or_default();
        if registry.is_empty() || !registry.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')) {
            return Err(HarborError::NoRegistryHost { index, url: url.to_string() });
        }
        images.push(NewImageEvent {
            source: "harbor",
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest: digest.to_string(),
            tag: tag.map(str::to_string),
        });
    }
    if images.is_empty() {
        return Ok(HarborEvent::Ignored { id, reason: "the push names no artifact".into() });
    }
    Ok(HarborEvent::Pushed { id, images })
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

/// The dedupe key: the CloudEvents id, else what was pushed where.
fn delivery_key(id: &Option<String>, images: &[NewImageEvent], body: &[u8]) -> String {
    match id {
        Some(id) => format!("id:{id}"),
        None if images.is_empty() => format!("sha256:{}", hex::encode(Sha256::digest(body))),
        None => {
            let mut parts: Vec<String> =
                images.iter().map(|e| format!("{}/{}@{}:{}", e.registry, e.repository, e.digest, e.tag.as_deref().unwrap_or(""))).collect();
            parts.sort();
            format!("push:{}", parts.join(","))
        }
    }
}

/// The Harbor project a delivery is about: the first component of `repository.repo_full_name`
/// (Harbor's `repository.namespace`), in either payload format. None for an event naming no
/// repository (replication, or not a Harbor event at all).
pub fn project_of(payload: &Value) -> Option<&str> {
    let data = payload.get("event_data").or_else(|| payload.get("data"))?;
    let repository = data.get("repository")?;
    let full = repository.get("repo_full_name").and_then(Value::as_str);
    full.and_then(|f| f.split_once('/').map(|(p, _)| p))
        .or_else(|| repository.get("namespace").and_then(Value::as_str))
        .filter(|p| !p.is_empty())
}

/// Harbor configures webhooks per project and sends the policy's "Auth Header" verbatim as
/// `Authorization` (goharbor.io, "Configure Webhook Notifications"), so one secret per tenant
/// project is what Harbor can express.
///
/// Checks the `Authorization` header of a delivery against the secret of the tenant whose
/// `registry_project` the delivery names: that tenant's own secret when it has one, else
/// `harbor.webhook_auth` (the service-wide secret, for projects of tenants without their own and
/// for projects no tenant owns). So a tenant's secret signs deliveries for its own project only:
/// tenant B's secret on a delivery for tenant A's project is 401. A delivery naming no project
/// (a replication event, which starts nothing) is accepted with `harbor.webhook_auth` or any
/// tenant's own secret. Every comparison is constant-time; the error never says which secret
/// was expected, only which kind.
async fn authorize(s: &AppState, auth: &str, payload: &Value) -> ApiResult<()> {
    let matches = |expected: &str| bool::from(expected.as_bytes().ct_eq(auth.as_bytes()));
    let fallback = s.config.harbor.webhook_auth.as_deref();
    let Some(project) = project_of(payload) else {
        let mut ok = fallback.is_some_and(matches);
        for secret in s.store.harbor_webhook_secrets().await? {
            ok |= matches(&secret);
        }
        return if ok {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("the Authorization header matches neither harbor.webhook_auth nor any tenant's Harbor webhook secret".into()))
        };
    };
    match s.store.harbor_webhook_secret_for_project(project).await? {
        Some((_, Some(own))) if matches(&own) => Ok(()),
        Some((_, Some(_))) => Err(ApiError::Unauthorized(format!(
            "the Authorization header does not match the Harbor webhook secret of the tenant of project {project:?}"
        ))),
        _ => match fallback {
            Some(expected) if matches(expected) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized(format!("the Authorization header does not match harbor.webhook_auth (project {project:?})"))),
            None => Err(ApiError::Unauthorized(format!(
                "Harbor webhooks for project {project:?} are not configured: its tenant has no Harbor webhook secret and harbor.webhook_auth is unset"
            ))),
        },
    }
}

pub async fn receive(State(s): State<AppState>, req: Request) -> ApiResult<(StatusCode, Json<Value>)> {
    // Timed and counted around `handle`, so every way out of it is one answer with one outcome.
    let started = std::time::Instant::now();
    let answer = handle(s.clone(), req).await;
    s.metrics.webhook("harbor", super::outcome_of(&answer), started);
    answer
}

async fn handle(s: AppState, req: Request) -> ApiResult<(StatusCode, Json<Value>)> {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    // Before the body is read: with no secret anywhere, every delivery is refused unread.
    if s.config.harbor.webhook_auth.is_none() && !s.store.has_harbor_webhook_secrets().await? {
        return Err(ApiError::Unauthorized("Harbor webhooks are not configured (harbor.webhook_auth is unset and no tenant has a Harbor webhook secret)".into()));
    }
    // The body (bounded by server.max_body_bytes) says whose project the delivery is for, and so
    // which secret it must carry.
    let body = read_body(req, &s).await?;
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(_) => {
            // Unauthenticated callers learn nothing about the body's shape.
            authorize(&s, &auth, &Value::Null).await?;
            parse_json(&body)?
        }
    };
    authorize(&s, &auth, &payload).await?;
    let event = parse(&payload).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let kind = payload.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    let (id, images, ignored) = match event {
        HarborEvent::Pushed { id, images } => {
            // Only what some subscription follows becomes an event to act on (the rollout loop
            // decides again when it acts: subscriptions may change in between).
            let mut followed = Vec::with_capacity(images.len());
            for image in images {
                if !crate::rollout::rollouts_for(&s, &image).await?.is_empty() {
                    followed.push(image);
                }
            }
            let ignored = followed.is_empty().then(|| {
                "no subscription follows this image (none in the cluster of this registry, for this repository, whose policy matches)".to_string()
            });
            (id, followed, ignored)
        }
        HarborEvent::Ignored { id, reason } => (id, vec![], Some(reason)),
    };
    let key = delivery_key(&id, &images, &body);
    let delivery = NewDelivery { source: "harbor", key, event: kind, app_id: None, client_addr: None };
    let (outcome, new) = s.store.record_image_delivery(&delivery, &images, ignored).await?;
    if !new {
        return Ok((StatusCode::OK, Json(json!({"status": "duplicate", "reason": "this delivery was received before"}))));
    }
    if let Some(reason) = outcome.ignored {
        return Ok((StatusCode::OK, Json(json!({"status": "ignored", "reason": reason}))));
    }
    s.rollouts.wake();
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "queued", "images": images.len()}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn both_formats_and_a_push_by_digest() {
        let default = json!({"type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "admin", "event_data": {
            "resources": [{"digest": D, "tag": "v1.2.0", "resource_url": "harbor.east:8443/team/hello:v1.2.0"}],
            "repository": {"name": "hello", "namespace": "team", "repo_full_name": "team/hello", "repo_type": "private"}}});
        let HarborEvent::Pushed { id, images } = parse(&default).unwrap() else { panic!() };
        assert_eq!(id, None);
        assert_eq!((images[0].registry.as_str(), images[0].repository.as_str(), images[0].tag.as_deref()), ("harbor.east:8443", "team/hello", Some("v1.2.0")));
        let cloud = json!({"specversion": "1.0", "id": "e-1", "type": "harbor.artifact.pushed", "data": {
            "resources": [{"digest": D, "tag": D, "resource_url": format!("harbor.east/team/hello@{D}")}],
            "repository": {"repo_full_name": "team/hello"}}});
        let HarborEvent::Pushed { id, images } = parse(&cloud).unwrap() else { panic!() };
        assert_eq!(id.as_deref(), Some("e-1"));
        assert_eq!((images[0].digest.as_str(), images[0].tag.as_deref()), (D, None));
    }

    #[test]
    fn replication_is_ignored_and_garbage_is_refused_with_a_reason() {
        let repl = json!({"type": "REPLICATION", "event_data": {"replication": {"job_status": "Success"}}});
        assert!(matches!(parse(&repl).unwrap(), HarborEvent::Ignored { .. }));
        for (body, why) in [
            (json!([1]), "JSON object"),
            (json!({"event_data": {}}), "type"),
            (json!({"type": "PUSH_ARTIFACT"}), "event_data"),
            (json!({"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "a/b"}, "resources": [{"digest": "md5:x", "resource_url": "h/a/b"}]}}), "sha256"),
            (json!({"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "../etc"}, "resources": []}}), "repository"),
            (json!({"specversion": "1.0", "type": "harbor.artifact.pushed", "data": {}}), "id"),
        ] {
            let err = parse(&body).unwrap_err().to_string();
            assert!(err.contains(why), "{body}: {err}");
        }
    }
}
