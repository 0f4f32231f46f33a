//! Notification targets (per app, or per tenant for all its apps) and what became of each
//! message sent to them. A target's URL and signing secret are sealed like every other secret
//! (`store::secrets`): a robot's URL carries its access token.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, opt_text, text, Result, Store, StoreError};

/// Where a notification goes and in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Kiln's own JSON body, signed with HMAC-SHA256 (`X-Kiln-Signature-256`).
    Webhook,
    /// A DingTalk group robot (markdown message; signed URL when it has a secret).
    Dingtalk,
    /// A WeCom (企业微信) group robot (markdown message).
    Wecom,
    /// A Slack incoming webhook, or anything that takes Slack's `{"text": …}` (Mattermost,
    /// Rocket.Chat).
    Slack,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [TargetKind::Webhook, TargetKind::Dingtalk, TargetKind::Wecom, TargetKind::Slack];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Webhook => "webhook",
            TargetKind::Dingtalk => "dingtalk",
            TargetKind::Wecom => "wecom",
            TargetKind::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a target can ask to be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A build ended Failed or TimedOut.
    Failed,
    /// The first success of an app's ref after a failure.
    Fixed,
    /// Every success.
    Succeeded,
    /// A rollout of the build's image failed and was not rolled back.
    RolloutFailed,
    /// A rollout failed and the Deployment went back to its previous image.
    RolledBack,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 5] = [NotifyEvent::Failed, NotifyEvent::Fixed, NotifyEvent::Succeeded, NotifyEvent::RolloutFailed, NotifyEvent::RolledBack];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::Fixed => "fixed",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::RolloutFailed => "rollout_failed",
            NotifyEvent::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// A target as stored, its secrets opened. Debug and the API never show `url` or `secret`.
#[derive(Clone, Serialize)]
pub struct NotificationTarget {
    pub id: i64,
    pub tenant_id: i64,
    /// None: every app of the tenant.
    pub app_id: Option<i64>,
    pub kind: TargetKind,
    #[serde(skip)]
    pub url: String,
    #[serde(skip)]
    pub secret: Option<String>,
    pub has_secret: bool,
    pub events: Vec<NotifyEvent>,
    /// The URL without what may be a credential (path and query): `https://oapi.dingtalk.com/…`.
    pub target: String,
}

impl std::fmt::Debug for NotificationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationTarget").field("id", &self.id).field("kind", &self.kind).field("target", &self.target).finish_non_exhaustive()
    }
}

/// A target to store: validated by the caller (`notify::target`).
#[derive(Clone)]
pub struct NewNotificationTarget {
    pub kind: TargetKind,
    pub url: String,
    pub secret: Option<String>,
    pub events: Vec<NotifyEvent>,
}

impl std::fmt::Debug for NewNotificationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewNotificationTarget").field("kind", &self.kind).field("target", &redact_url(&self.url)).field("events", &self.events).finish_non_exhaustive()
    }
}

/// What became of one message to one target.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationDelivery {
    pub event: String,
    pub kind: String,
    /// The target without its credential (see [`NotificationTarget::target`]).
    pub target: String,
    /// `delivered`, `refused: …` or `not delivered: …`.
    pub outcome: String,
    pub attempts: i64,
    pub at: i64,
}

/// Scheme and host only: the path and query of a robot or webhook URL may hold its token.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "…".into() };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..host_end].rsplit('@').next().unwrap_or_default();
    if host_end == rest.len() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

const URL_FIELD: &str = "notification_targets.url";
const SECRET_FIELD: &str = "notification_targets.secret";

impl Store {
    /// Replaces the targets of an app (`Some(app)`) or of the tenant as a whole (`None`) with
    /// `targets`, in one transaction.
    pub async fn set_notification_targets(&self, tenant_id: i64, app_id: Option<i64>, targets: &[NewNotificationTarget]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM notification_targets WHERE tenant_id = $1 AND app_id IS NOT DISTINCT FROM $2").bind(tenant_id).bind(app_id).execute(&mut *tx).await?;
        let now = now_ms();
        for t in targets {
            let events: Vec<&str> = t.events.iter().map(|e| e.as_str()).collect();
            sqlx::query("INSERT INTO notification_targets (tenant_id, app_id, kind, url, secret, events, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(tenant_id)
                .bind(app_id)
                .bind(t.kind.as_str())
                .bind(self.key.seal(URL_FIELD, &t.url))
                .bind(t.secret.as_deref().map(|s| self.key.seal(SECRET_FIELD, s)))
                .bind(events.join(","))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The targets of exactly this owner: the app's own (`Some`), or the tenant-wide ones (`None`).
    pub async fn notification_targets(&self, tenant_id: i64, app_id: Option<i64>) -> Result<Vec<NotificationTarget>> {
        let rows = sqlx::query("SELECT * FROM notification_targets WHERE tenant_id = $1 AND app_id IS NOT DISTINCT FROM $2 ORDER BY id")
            .bind(tenant_id)
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| self.target_from_row(r)).collect()
    }

    /// Every target a build of `app_id` notifies: the app's own and its tenant's.
    pub async fn notification_targets_for_app(&self, tenant_id: i64, app_id: i64) -> Result<Vec<NotificationTarget>> {
        let rows = sqlx::query("SELECT * FROM notification_targets WHERE tenant_id = $1 AND (app_id IS NULL OR app_id = $2) ORDER BY id")
            .bind(tenant_id)
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| self.target_from_row(r)).collect()
    }

    fn target_from_row(&self, r: &sqlx::any::AnyRow) -> Result<NotificationTarget> {
        let id: i64 = r.get("id");
        let kind: String = r.get("kind");
        let kind = TargetKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("notification target {id}: unknown kind {kind:?}")))?;
        let url: String = r.get("url");
        let url = self.key.open(URL_FIELD, &url, &|| format!("{URL_FIELD} of notification target {id}"))?;
        let secret: Option<String> = r.get("secret");
        let secret = secret.map(|s| self.key.open(SECRET_FIELD, &s, &|| format!("{SECRET_FIELD} of notification target {id}"))).transpose()?;
        let events: String = r.get("events");
        let events = events
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| NotifyEvent::parse(e).ok_or_else(|| StoreError::Corrupt(format!("notification target {id}: unknown event {e:?}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(NotificationTarget {
            id,
            tenant_id: r.get("tenant_id"),
            app_id: r.get("app_id"),
            kind,
            target: redact_url(&url),
            url,
            has_secret: secret.is_some(),
            secret,
            events,
        })
    }

    /// Records what became of one message about `build_id`.
    pub async fn record_notification(&self, build_id: i64, event: NotifyEvent, target: &NotificationTarget, outcome: &str, attempts: u32) -> Result<()> {
        sqlx::query("INSERT INTO notification_deliveries (build_id, event, kind, target, outcome, attempts, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(build_id)
            .bind(event.as_str())
            .bind(target.kind.as_str())
            .bind(text(&target.target))
            .bind(text(outcome))
            .bind(attempts as i64)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The messages about a build, oldest first.
    pub async fn notifications_of_build(&self, build_id: i64) -> Result<Vec<NotificationDelivery>> {
        let rows = sqlx::query("SELECT event, kind, target, outcome, attempts, at FROM notification_deliveries WHERE build_id = $1 ORDER BY id")
            .bind(build_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| NotificationDelivery {
                event: r.get("event"),
                kind: r.get("kind"),
                target: r.get("target"),
                outcome: r.get("outcome"),
                attempts: r.get("attempts"),
                at: r.get("at"),
            })
            .collect())
    }

    /// The state of the app's last finished build of `git_ref` before `before` (cancelled ones
    /// skipped): what tells a success that fixes a failure from one more success.
    pub async fn previous_result_of_ref(&self, app_id: i64, git_ref: Option<&str>, before: i64) -> Result<Option<String>> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM builds WHERE app_id = $1 AND git_ref IS NOT DISTINCT FROM $2 AND id < $3 AND state IN ('Succeeded', 'Failed', 'TimedOut') ORDER BY id DESC LIMIT 1",
        )
        .bind(app_id)
        .bind(opt_text(git_ref))
        .bind(before)
        .fetch_optional(&self.pool)
        .await?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_url_keeps_scheme_and_host_only() {
        assert_eq!(redact_url("https://oapi.dingtalk.com/robot/send?access_token=abc"), "https://oapi.dingtalk.com/…");
        assert_eq!(redact_url("https://hooks.slack.com/services/T0/B0/XXXX"), "https://hooks.slack.com/…");
        assert_eq!(redact_url("https://user:pass@hooks.example.com"), "https://hooks.example.com");
        assert_eq!(redact_url("not a url"), "…");
    }
}
