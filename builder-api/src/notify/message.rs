//! What a notification says, and how each kind of target wants it said:
//! - `webhook`: Kiln's own JSON ([`Facts`] as it is serialized), signed with HMAC-SHA256 over
//!   the body in `X-Kiln-Signature-256: sha256=<hex>`, as GitHub and GitLab sign theirs;
//! - `dingtalk`: a custom group robot's `{"msgtype": "markdown", "markdown": {"title", "text"}}`
//!   (<https://open.dingtalk.com/document/orgapp/custom-bot-send-message-type>); a robot with
//!   "加签" signing gets `&timestamp=<ms>&sign=<base64(HMAC-SHA256(secret, "<ms>\n<secret>"))>`
//!   on its URL (<https://open.dingtalk.com/document/orgapp/customize-robot-security-settings>);
//! - `wecom`: a group robot's `{"msgtype": "markdown", "markdown": {"content"}}`
//!   (<https://developer.work.weixin.qq.com/document/path/91770>);
//! - `slack`: an incoming webhook's `{"text"}` in Slack's mrkdwn
//!   (<https://api.slack.com/messaging/webhooks>), which Mattermost and Rocket.Chat take too.
//!
//! Every message names the app, the branch, the short commit, the author when known, the
//! result with its reason, and the build's URL. Titles start with `[kiln]`, so a DingTalk robot
//! whose security setting is a keyword can use `kiln`.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;

use crate::outbound::percent_encode;
use crate::store::{NotifyEvent, TargetKind};

/// The facts of one notification (the `webhook` kind's body).
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub event: NotifyEvent,
    pub tenant: String,
    pub app: String,
    pub build: BuildFacts,
    /// For `rollout_failed` and `rolled_back`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutFacts>,
    /// RFC 3339, when Kiln sent it.
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildFacts {
    pub id: i64,
    pub url: String,
    pub state: String,
    pub reason: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The branch or tag name without `refs/heads/` or `refs/tags/`.
    pub branch: Option<String>,
    pub commit: String,
    pub short_commit: String,
    pub author: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutFacts {
    pub cluster: String,
    pub namespace: String,
    pub deployment: String,
    pub state: String,
    pub reason: Option<String>,
}

/// One request to send: the URL (signed where the kind signs), extra headers, the JSON body.
#[derive(Debug)]
pub struct Request {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Facts {
    /// `[kiln] team/api: build 7 failed`.
    pub fn title(&self) -> String {
        let who = format!("[kiln] {}/{}", self.tenant, self.app);
        let b = &self.build;
        match (&self.event, &self.rollout) {
            (NotifyEvent::Failed, _) if b.state == "TimedOut" => format!("{who}: build {} timed out", b.id),
            (NotifyEvent::Failed, _) => format!("{who}: build {} failed", b.id),
            (NotifyEvent::Fixed, _) => format!("{who}: build {} fixed {}", b.id, b.branch.as_deref().unwrap_or("the build")),
            (NotifyEvent::Succeeded, _) => format!("{who}: build {} succeeded", b.id),
            (NotifyEvent::RolloutFailed, Some(r)) => format!("{who}: rollout of build {} to {}/{}/{} failed", b.id, r.cluster, r.namespace, r.deployment),
            (NotifyEvent::RolledBack, Some(r)) => format!("{who}: rollout of build {} to {}/{}/{} rolled back", b.id, r.cluster, r.namespace, r.deployment),
            (_, None) => format!("{who}: build {} {}", b.id, self.event.as_str()),
        }
    }

    /// `branch main · commit 0123abcd · by Ada`.
    fn origin(&self, code: impl Fn(&str) -> String) -> String {
        let b = &self.build;
        let mut parts = vec![];
        if let Some(branch) = &b.branch {
            parts.push(format!("branch {}", code(branch)));
        }
        parts.push(format!("commit {}", code(&b.short_commit)));
        if let Some(author) = &b.author {
            parts.push(format!("by {author}"));
        }
        parts.join(" · ")
    }

    /// Why, in one line: the rollout's reason for rollout events, else the build's.
    fn reason(&self) -> Option<&str> {
        let reason = match &self.rollout {
            Some(r) => r.reason.as_deref(),
            None => self.build.reason.as_deref(),
        };
        reason.and_then(|r| r.lines().map(str::trim).find(|l| !l.is_empty()))
    }

    fn failed(&self) -> bool {
        matches!(self.event, NotifyEvent::Failed | NotifyEvent::RolloutFailed | NotifyEvent::RolledBack)
    }

    /// The request for a target of `kind` at `url`; `now_ms` signs DingTalk URLs.
    pub fn request(&self, kind: TargetKind, url: &str, secret: Option<&str>, now_ms: i64) -> Request {
        let code = |s: &str| format!("`{s}`");
        let title = self.title();
        let origin = self.origin(code);
        let reason = self.reason().map(|r| format!("reason: {r}"));
        let link = format!("build {}", self.build.id);
        let (url, headers, body) = match kind {
            TargetKind::Webhook => {
                let body = serde_json::to_vec(self).expect("facts serialize");
                let mut headers = vec![("x-kiln-event", self.event.as_str().to_string()), ("x-kiln-delivery", hex::encode(rand::random::<[u8; 16]>()))];
                if let Some(secret) = secret {
                    headers.push(("x-kiln-signature-256", format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &body)))));
                }
                return Request { url: url.to_string(), headers, body };
            }
            TargetKind::Dingtalk => {
                let mut text = format!("#### {title}\n\n- {origin}\n");
                if let Some(r) = &reason {
                    text.push_str(&format!("- {r}\n"));
                }
                text.push_str(&format!("\n[{link}]({})", self.build.url));
                let url = match secret {
                    Some(secret) => dingtalk_signed(url, secret, now_ms),
                    None => url.to_string(),
                };
                (url, vec![], json!({ "msgtype": "markdown", "markdown": { "title": title, "text": text } }))
            }
            TargetKind::Wecom => {
                let colour = if self.failed() { "warning" } else { "info" };
                let mut content = format!("**<font color=\"{colour}\">{title}</font>**\n> {origin}\n");
                if let Some(r) = &reason {
                    content.push_str(&format!("> {r}\n"));
                }
                content.push_str(&format!("[{link}]({})", self.build.url));
                (url.to_string(), vec![], json!({ "msgtype": "markdown", "markdown": { "content": content } }))
            }
            TargetKind::Slack => {
                let mut text = format!("*{}*\n{}\n", slack_escape(&title), slack_escape(&origin));
                if let Some(r) = &reason {
                    text.push_str(&format!("{}\n", slack_escape(r)));
                }
                text.push_str(&format!("<{}|{link}>", self.build.url));
                (url.to_string(), vec![], json!({ "text": text }))
            }
        };
        Request { url, headers, body: serde_json::to_vec(&body).expect("JSON") }
    }
}

/// Slack's three escaped characters (its mrkdwn would read `<…>` as a link or a mention).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A DingTalk robot URL with `timestamp` and `sign` added.
pub fn dingtalk_signed(url: &str, secret: &str, now_ms: i64) -> String {
    let sign = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret.as_bytes(), format!("{now_ms}\n{secret}").as_bytes()));
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}timestamp={now_ms}&sign={}", percent_encode(&sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(event: NotifyEvent) -> Facts {
        Facts {
            event,
            tenant: "team".into(),
            app: "api".into(),
            build: BuildFacts {
                id: 7,
                url: "https://kiln.example/ui/builds/7".into(),
                state: "Failed".into(),
                reason: Some("compile failed: main.go:5:2: undefined: x\nmore".into()),
                git_ref: Some("refs/heads/main".into()),
                branch: Some("main".into()),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                short_commit: "01234567".into(),
                author: Some("Ada <b>".into()),
                image: None,
            },
            rollout: None,
            at: "2026-12-03T00:00:00Z".into(),
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        assert_eq!(hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn every_chat_kind_names_the_app_branch_commit_author_reason_and_link_in_one_reason_line() {
        // (The webhook kind's body is the facts themselves, checked below.)
        for kind in [TargetKind::Dingtalk, TargetKind::Wecom, TargetKind::Slack] {
            let r = facts(NotifyEvent::Failed).request(kind, "https://robot.example/send?key=k", Some("SECret"), 1_700_000_000_000);
            let body = String::from_utf8(r.body).unwrap();
            for needle in ["team/api", "main", "01234567", "Ada", "main.go:5:2: undefined: x", "https://kiln.example/ui/builds/7"] {
                assert!(body.contains(needle), "{kind:?} lacks {needle}: {body}");
            }
            assert!(!body.contains("more"), "{kind:?}: the reason is one line: {body}");
        }
    }

    #[test]
    fn a_webhook_is_signed_over_its_body_and_a_dingtalk_url_carries_its_signature() {
        let r = facts(NotifyEvent::Fixed).request(TargetKind::Webhook, "https://hook.example/x", Some("key"), 0);
        let signature = r.headers.iter().find(|(h, _)| *h == "x-kiln-signature-256").unwrap().1.clone();
        assert_eq!(signature, format!("sha256={}", hex::encode(hmac_sha256(b"key", &r.body))));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((&body["event"], &body["build"]["short_commit"]), (&json!("fixed"), &json!("01234567")));

        let url = dingtalk_signed("https://oapi.dingtalk.com/robot/send?access_token=t", "SEC1", 1_700_000_000_000);
        let sign = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(b"SEC1", b"1700000000000\nSEC1"));
        assert_eq!(url, format!("https://oapi.dingtalk.com/robot/send?access_token=t&timestamp=1700000000000&sign={}", percent_encode(&sign)));
    }

    #[test]
    fn slack_text_escapes_what_its_mrkdwn_would_read_as_markup() {
        let r = facts(NotifyEvent::Failed).request(TargetKind::Slack, "https://hooks.slack.example/x", None, 0);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.contains("by Ada &lt;b&gt;"), "{text}");
        assert!(text.ends_with("<https://kiln.example/ui/builds/7|build 7>"), "{text}");
    }
}
