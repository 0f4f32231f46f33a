//! A notification target as the API takes it (`PUT …/notifications`), checked before it is
//! stored: a known kind, an http(s) URL with a host, known events, and a signing secret where
//! the kind has one.

use serde::Deserialize;

use crate::store::{NewNotificationTarget, NotificationTarget, NotifyEvent, TargetKind};

/// Most targets one app (or one tenant) may have: each build end fans out to all of them.
pub const MAX_TARGETS: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub kind: String,
    pub url: String,
    /// `webhook`: the HMAC-SHA256 key (required); `dingtalk`: the robot's signing secret
    /// (`SEC…`, when the robot signs); other kinds take none.
    pub secret: Option<String>,
    pub events: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetList {
    pub targets: Vec<TargetSpec>,
}

/// Why a target list was refused; the text is the API's 400.
#[derive(Debug, thiserror::Error)]
#[error("targets[{index}]: {message}")]
pub struct InvalidTarget {
    pub index: usize,
    pub message: String,
}

/// The list, checked: every refusal names the target and says what to change.
pub fn validate(list: TargetList) -> Result<Vec<NewNotificationTarget>, InvalidTarget> {
    if list.targets.len() > MAX_TARGETS {
        return Err(InvalidTarget { index: MAX_TARGETS, message: format!("at most {MAX_TARGETS} targets, {} given", list.targets.len()) });
    }
    list.targets.into_iter().enumerate().map(|(index, t)| one(t).map_err(|message| InvalidTarget { index, message })).collect()
}

fn one(t: TargetSpec) -> Result<NewNotificationTarget, String> {
    let names = |all: &mut dyn Iterator<Item = &'static str>| all.collect::<Vec<_>>().join(", ");
    let kind = TargetKind::parse(&t.kind)
        .ok_or_else(|| format!("unknown kind {:?}; one of {}", t.kind, names(&mut TargetKind::ALL.iter().map(|k| k.as_str()))))?;
    let url = t.url.trim();
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or("url must start with https:// or http://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url must be an http(s) URL with a host, at most 2048 characters, without spaces".into());
    }
    let secret = t.secret.filter(|s| !s.is_empty());
    match (kind, &secret) {
        (TargetKind::Webhook, None) => return Err("a webhook target needs a \"secret\": the key of its X-Kiln-Signature-256 HMAC".into()),
        (TargetKind::Wecom | TargetKind::Slack, Some(_)) => {
            return Err(format!("a {} target takes no \"secret\": its URL is its credential", kind.as_str()));
        }
        _ => {}
    }
    if secret.as_ref().is_some_and(|s| s.len() > 512) {
        return Err("secret is longer than 512 characters".into());
    }
    if t.events.is_empty() {
        return Err(format!("events is empty; name one or more of {}", names(&mut NotifyEvent::ALL.iter().map(|e| e.as_str()))));
    }
    let mut events = vec![];
    for e in &t.events {
        let event = NotifyEvent::parse(e).ok_or_else(|| format!("unknown event {e:?}; one of {}", names(&mut NotifyEvent::ALL.iter().map(|e| e.as_str()))))?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    Ok(NewNotificationTarget { kind, url: url.to_string(), secret, events })
}

/// What of a target could be a credential, for the build log's masker: the whole URL, its query
/// values and long path segments (a Slack URL's last segment is its token), and the secret.
pub fn secrets_of(t: &NotificationTarget) -> Vec<String> {
    let mut out = vec![t.url.clone()];
    out.extend(t.secret.clone());
    let rest = t.url.split_once("://").map_or(t.url.as_str(), |(_, r)| r);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    out.extend(query.split('&').filter_map(|kv| kv.split_once('=').map(|(_, v)| v)).filter(|v| v.len() >= 8).map(String::from));
    out.extend(path.split('/').skip(1).filter(|seg| seg.len() >= 16).map(String::from));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, url: &str, secret: Option<&str>, events: &[&str]) -> TargetList {
        TargetList { targets: vec![TargetSpec { kind: kind.into(), url: url.into(), secret: secret.map(String::from), events: events.iter().map(|e| e.to_string()).collect() }] }
    }

    #[test]
    fn each_kind_of_mistake_is_named() {
        let refused = |l| validate(l).unwrap_err().to_string();
        assert!(refused(spec("teams", "https://x", None, &["failed"])).contains("unknown kind \"teams\"; one of webhook, dingtalk, wecom, slack"));
        assert!(refused(spec("slack", "ftp://x", None, &["failed"])).contains("https://"));
        assert!(refused(spec("slack", "https:///path", None, &["failed"])).contains("with a host"));
        assert!(refused(spec("webhook", "https://x", None, &["failed"])).contains("needs a \"secret\""));
        assert!(refused(spec("wecom", "https://x", Some("s"), &["failed"])).contains("takes no \"secret\""));
        assert!(refused(spec("slack", "https://x", None, &[])).contains("events is empty"));
        assert!(refused(spec("slack", "https://x", None, &["broken"])).starts_with("targets[0]: unknown event \"broken\""));
    }

    #[test]
    fn a_valid_list_keeps_each_event_once() {
        let ok = validate(spec("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=abc", Some("SEC1"), &["failed", "fixed", "failed"])).unwrap();
        assert_eq!(ok[0].events, vec![NotifyEvent::Failed, NotifyEvent::Fixed]);
        assert_eq!(ok[0].secret.as_deref(), Some("SEC1"));
    }

    #[test]
    fn the_masker_gets_the_token_in_a_query_and_in_a_slack_path() {
        let target = |url: &str| NotificationTarget {
            id: 1,
            tenant_id: 1,
            app_id: None,
            kind: TargetKind::Slack,
            url: url.into(),
            secret: Some("SECsigning".into()),
            has_secret: true,
            events: vec![],
            target: String::new(),
        };
        let s = secrets_of(&target("https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef"));
        assert!(s.contains(&"0123456789abcdef".to_string()) && s.contains(&"SECsigning".to_string()), "{s:?}");
        let s = secrets_of(&target("https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"));
        assert!(s.contains(&"XXXXXXXXXXXXXXXXXXXXXXXX".to_string()) && !s.contains(&"services".to_string()), "{s:?}");
    }
}
