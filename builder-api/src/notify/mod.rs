//! Build notifications (issue 20): when a build fails, is fixed (its ref's first success after a
//! failure) or succeeds, and when a rollout of its image fails or is rolled back, each target
//! that asked for that event (the app's own and its tenant's) gets one message in its format
//! ([`message`]): a signed JSON webhook, a DingTalk or WeCom group robot, or a Slack incoming
//! webhook.
//!
//! Delivery never blocks or fails a build: it runs in the background, one task per target.
//! 429, 5xx, a robot's "too fast" errcode and connection errors are retried with backoff (or the
//! server's `Retry-After`); any other refusal is final. What became of every message is recorded
//! on the build (`notifications` in `GET /api/v1/builds/{id}`, and on its page).

pub mod message;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::outbound::{first_line, pause_before, retry_after, transport_error, MAX_IN_FLIGHT};
use crate::store::{now_ms, Build, BuildState, NotificationTarget, NotifyEvent, Rollout, Store, TargetKind};
use message::{BuildFacts, Facts, RolloutFacts};

/// Attempts per message (the first and the retries).
const ATTEMPTS: u32 = 5;

/// DingTalk's "sending too fast" (a robot takes 20 messages a minute) and WeCom's "api freq out
/// of limit": worth another attempt, unlike the other errcodes.
const ROBOT_RATE_LIMITED: [i64; 2] = [130101, 45009];

/// The per-process notifier `Context` holds.
pub struct Notifier {
    client: reqwest::Client,
    store: Store,
    public_base: String,
    /// The first pause between attempts; each next one doubles.
    retry_base: Duration,
    /// At most [`MAX_IN_FLIGHT`] messages being sent at once.
    in_flight: Arc<Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Notifier {
    /// `public_base`: Kiln's public URL (`server.public_url`), the base of the build links.
    pub fn new(store: Store, public_base: String, metrics: Arc<crate::metrics::Metrics>) -> Notifier {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("an HTTP client");
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        Notifier { client, store, public_base, retry_base: Duration::from_millis(250), in_flight, metrics }
    }

    /// A build ended (its final state is stored): notifies in the background.
    pub fn build_ended(&self, build_id: i64) {
        let this = self.handle();
        tokio::spawn(async move {
            if let Err(e) = this.notify_build(build_id).await {
                tracing::error!(build = build_id, "notifications: {e}");
            }
        });
    }

    /// A rollout ended `Failed` or `RolledBack`: notifies, about the build that made its image.
    pub fn rollout_ended(&self, rollout: &Rollout, state: &str, reason: Option<&str>) {
        let event = match state {
            "Failed" => NotifyEvent::RolloutFailed,
            "RolledBack" => NotifyEvent::RolledBack,
            _ => return,
        };
        let facts = RolloutFacts {
            cluster: rollout.cluster.clone(),
            namespace: rollout.namespace.clone(),
            deployment: rollout.deployment.clone(),
            state: state.to_string(),
            reason: reason.map(str::to_string),
        };
        let (this, app_id, digest) = (self.handle(), rollout.app_id, rollout.digest.clone());
        tokio::spawn(async move {
            if let Err(e) = this.notify_rollout(app_id, &digest, event, facts).await {
                tracing::error!(app = app_id, "rollout notifications: {e}");
            }
        });
    }

    fn handle(&self) -> Notifier {
        Notifier {
            client: self.client.clone(),
            store: self.store.clone(),
            public_base: self.public_base.clone(),
            retry_base: self.retry_base,
            in_flight: self.in_flight.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn notify_build(&self, build_id: i64) -> Result<(), crate::store::StoreError> {
        let Some(build) = self.store.build(build_id).await? else { return Ok(()) };
        let targets = self.store.notification_targets_for_app(build.tenant_id, build.app_id).await?;
        if targets.is_empty() {
            return Ok(());
        }
        let fixed = build.state == BuildState::Succeeded
            && matches!(self.store.previous_result_of_ref(build.app_id, build.git_ref.as_deref(), build.id).await?.as_deref(), Some("Failed" | "TimedOut"));
        for target in targets {
            let wants = |e| target.events.contains(&e);
            let event = match build.state {
                BuildState::Failed | BuildState::TimedOut if wants(NotifyEvent::Failed) => NotifyEvent::Failed,
                BuildState::Succeeded if fixed && wants(NotifyEvent::Fixed) => NotifyEvent::Fixed,
                BuildState::Succeeded if wants(NotifyEvent::Succeeded) => NotifyEvent::Succeeded,
                _ => continue,
            };
            self.send(target, self.facts(&build, event, None));
        }
        Ok(())
    }

    async fn notify_rollout(&self, app_id: i64, digest: &str, event: NotifyEvent, rollout: RolloutFacts) -> Result<(), crate::store::StoreError> {
        // The newest successful build of this app that made the digest (a rebuild of one commit
        // can make the same digest twice).
        let builds = self.store.succeeded_builds_with_digest(digest).await?;
        let Some(build) = builds.into_iter().filter(|b| b.app_id == app_id).max_by_key(|b| b.id) else {
            tracing::info!(app = app_id, digest, "rollout notification: no build of the app made this image");
            return Ok(());
        };
        for target in self.store.notification_targets_for_app(build.tenant_id, build.app_id).await? {
            if target.events.contains(&event) {
                self.send(target, self.facts(&build, event, Some(rollout.clone())));
            }
        }
        Ok(())
    }

    fn facts(&self, build: &Build, event: NotifyEvent, rollout: Option<RolloutFacts>) -> Facts {
        let branch = build.git_ref.as_deref().map(|r| r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")).unwrap_or(r).to_string());
        Facts {
            event,
            tenant: build.tenant.clone(),
            app: build.app.clone(),
            build: BuildFacts {
                id: build.id,
                url: format!("{}/ui/builds/{}", self.public_base, build.id),
                state: build.state.as_str().to_string(),
                reason: build.reason.clone(),
                git_ref: build.git_ref.clone(),
                branch,
                commit: build.commit.clone(),
                short_commit: build.commit.chars().take(8).collect(),
                author: build.commit_info.author.clone(),
                image: build.image.clone(),
            },
            rollout,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// Delivers one message in the background and records what became of it.
    fn send(&self, target: NotificationTarget, facts: Facts) {
        let this = self.handle();
        tokio::spawn(async move {
            let (outcome, attempts) = this.deliver(&target, &facts).await;
            // Counted where the message's fate is known; `deliver` words each outcome from one of
            // these three beginnings.
            this.metrics.notification(if outcome == "delivered" {
                "delivered"
            } else if outcome.starts_with("refused") {
                "refused"
            } else {
                "not_delivered"
            });
            if outcome != "delivered" {
                tracing::warn!(build = facts.build.id, target = target.target, event = facts.event.as_str(), "notification {outcome}");
            }
            if let Err(e) = this.store.record_notification(facts.build.id, facts.event, &target, &outcome, attempts).await {
                tracing::error!(build = facts.build.id, "recording a notification: {e}");
            }
        });
    }

    /// (outcome, attempts made): `delivered`, `refused: …` or `not delivered after N attempts: …`.
    async fn deliver(&self, target: &NotificationTarget, facts: &Facts) -> (String, u32) {
        let mut last = String::new();
        let mut asked_pause = None;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(pause_before(attempt - 1, self.retry_base, asked_pause.take())).await;
            }
            // Made again for each attempt: a DingTalk signature is only good for an hour.
            let request = facts.request(target.kind, &target.url, target.secret.as_deref(), now_ms());
            let mut post = self.client.post(&request.url).header(reqwest::header::CONTENT_TYPE, "application/json").body(request.body);
            for (name, value) in request.headers {
                post = post.header(name, value);
            }
            let permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
            let answer = match post.send().await {
                Ok(answer) => answer,
                Err(e) => {
                    last = transport_error(e);
                    continue;
                }
            };
            let status = answer.status();
            asked_pause = retry_after(answer.headers());
            let text = answer.text().await.unwrap_or_default();
            drop(permit);
            match judge(target.kind, status, &text) {
                Verdict::Delivered => return ("delivered".into(), attempt),
                Verdict::Retry(why) => last = why,
                Verdict::Refused(why) => return (format!("refused: {why}"), attempt),
            }
        }
        (format!("not delivered after {ATTEMPTS} attempts: {last}"), ATTEMPTS)
    }
}

enum Verdict {
    Delivered,
    Retry(String),
    Refused(String),
}

/// What an answer means. Robots answer 200 to everything and say in `errcode` whether the
/// message was taken.
fn judge(kind: TargetKind, status: reqwest::StatusCode, text: &str) -> Verdict {
    let said = || first_line(text, 200);
    if status.as_u16() == 429 || status.is_server_error() {
        return Verdict::Retry(format!("{} {}", status.as_u16(), said()).trim_end().to_string());
    }
    if !status.is_success() {
        return Verdict::Refused(format!("{} {}", status.as_u16(), said()).trim_end().to_string());
    }
    if !matches!(kind, TargetKind::Dingtalk | TargetKind::Wecom) {
        return Verdict::Delivered;
    }
    let answer: Option<Value> = serde_json::from_str(text).ok();
    let Some(code) = answer.as_ref().and_then(|a| a.get("errcode")).and_then(Value::as_i64) else {
        return Verdict::Refused(format!("not a robot's answer (no errcode): {}", said()));
    };
    let message = answer.as_ref().and_then(|a| a.get("errmsg")).and_then(Value::as_str).unwrap_or_default();
    match code {
        0 => Verdict::Delivered,
        c if ROBOT_RATE_LIMITED.contains(&c) => Verdict::Retry(format!("errcode {c}: {message}")),
        c => Verdict::Refused(format!("errcode {c}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn robots_are_judged_by_errcode_and_everything_else_by_status() {
        let verdict = |kind, code: u16, text: &str| match judge(kind, StatusCode::from_u16(code).unwrap(), text) {
            Verdict::Delivered => "delivered".to_string(),
            Verdict::Retry(why) => format!("retry {why}"),
            Verdict::Refused(why) => format!("refused {why}"),
        };
        assert_eq!(verdict(TargetKind::Dingtalk, 200, r#"{"errcode":0,"errmsg":"ok"}"#), "delivered");
        assert_eq!(verdict(TargetKind::Dingtalk, 200, r#"{"errcode":310000,"errmsg":"sign not match"}"#), "refused errcode 310000: sign not match");
        assert_eq!(verdict(TargetKind::Wecom, 200, r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#), "retry errcode 45009: api freq out of limit");
        assert_eq!(verdict(TargetKind::Wecom, 200, "<html>"), "refused not a robot's answer (no errcode): <html>");
        assert_eq!(verdict(TargetKind::Slack, 200, "ok"), "delivered");
        assert_eq!(verdict(TargetKind::Slack, 404, "no_service"), "refused 404 no_service");
        assert_eq!(verdict(TargetKind::Webhook, 503, ""), "retry 503");
        assert_eq!(verdict(TargetKind::Webhook, 429, "slow down"), "retry 429 slow down");
    }
}
