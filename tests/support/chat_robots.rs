//! Test doubles of the places build notifications go, on one loopback server, recording every
//! call. Each follows its service's documented contract:
//! - DingTalk custom group robot: `POST /robot/send?access_token=T` with
//!   `{"msgtype": "markdown", "markdown": {"title", "text"}}`
//!   (<https://open.dingtalk.com/document/orgapp/custom-bot-send-message-type>). A robot with
//!   "加签" signing also needs `&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256 of
//!   "<ms>\n<secret>" keyed by the secret>`, the timestamp within an hour of now
//!   (<https://open.dingtalk.com/document/orgapp/customize-robot-security-settings>). It answers
//!   200 whatever happens, with `{"errcode": 0, "errmsg": "ok"}`, or `300001 token is not exist`,
//!   `310000 sign not match`, `130101 send too fast`.
//! - WeCom group robot: `POST /cgi-bin/webhook/send?key=K` with `{"msgtype": "markdown",
//!   "markdown": {"content"}}`, content at most 4096 bytes
//!   (<https://developer.work.weixin.qq.com/document/path/91770>); 200 with `errcode` 0, or
//!   `93000 invalid webhook url`, `40058` for a bad body.
//! - Slack incoming webhook: `POST /services/T…/B…/<token>` with `{"text"}`
//!   (<https://api.slack.com/messaging/webhooks>); 200 `ok`, 404 `no_service` for an unknown
//!   URL, 400 `invalid_payload` / `no_text`
//!   (<https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks>).
//! - A generic receiver of Kiln's signed webhook at `/kiln-hook`: it checks
//!   `X-Kiln-Signature-256: sha256=<hex HMAC-SHA256 of the body>` and answers 204, or 401.
//!
//! Besides, a test can make the next N calls answer 500 ([`ChatRobots::fail_next`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

pub const DINGTALK_TOKEN: &str = "dingtalk-access-token-0123456789";
pub const DINGTALK_SECRET: &str = "SECdingtalk-signing-secret-abcdef";
pub const WECOM_KEY: &str = "wecom-key-693a91f6-7xxx-4bc4-97a0";
pub const SLACK_PATH: &str = "/services/T0KILN/B0KILN/slacktoken0123456789abcd";
pub const HOOK_SECRET: &str = "kiln-hook-hmac-key-42";

/// One call as a double saw it.
#[derive(Debug, Clone)]
pub struct RobotCall {
    /// `dingtalk`, `wecom`, `slack`, `webhook`, or `unknown`.
    pub kind: &'static str,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The status, and for robots the errcode, the double answered.
    pub answered: u16,
    pub errcode: Option<i64>,
}

impl RobotCall {
    /// Taken: 2xx and errcode 0 (or none).
    pub fn taken(&self) -> bool {
        (200..300).contains(&self.answered) && self.errcode.unwrap_or(0) == 0
    }

    /// The message text, whatever the format.
    pub fn text(&self) -> String {
        match self.kind {
            "dingtalk" => format!("{} {}", self.body["markdown"]["title"].as_str().unwrap_or_default(), self.body["markdown"]["text"].as_str().unwrap_or_default()),
            "wecom" => self.body["markdown"]["content"].as_str().unwrap_or_default().to_string(),
            "slack" => self.body["text"].as_str().unwrap_or_default().to_string(),
            _ => self.body.to_string(),
        }
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<RobotCall>>,
    fail_next: AtomicU32,
}

pub struct ChatRobots {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl ChatRobots {
    pub async fn start() -> ChatRobots {
        for secret in [DINGTALK_TOKEN, DINGTALK_SECRET, WECOM_KEY, HOOK_SECRET, "slacktoken0123456789abcd"] {
            crate::support::secrets::register(secret);
        }
        let shared = Arc::new(Shared::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ChatRobots { addr, shared, server }
    }

    pub fn dingtalk_url(&self) -> String {
        format!("http://{}/robot/send?access_token={DINGTALK_TOKEN}", self.addr)
    }
    pub fn wecom_url(&self) -> String {
        format!("http://{}/cgi-bin/webhook/send?key={WECOM_KEY}", self.addr)
    }
    pub fn slack_url(&self) -> String {
        format!("http://{}{SLACK_PATH}", self.addr)
    }
    pub fn hook_url(&self) -> String {
        format!("http://{}/kiln-hook", self.addr)
    }

    /// The next `n` calls answer 500.
    pub fn fail_next(&self, n: u32) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Vec<RobotCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls were taken, and returns them (or panics with every call).
    pub async fn wait_taken(&self, n: usize, limit: Duration) -> Vec<RobotCall> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let taken: Vec<RobotCall> = self.calls().into_iter().filter(RobotCall::taken).collect();
            if taken.len() >= n {
                return taken;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} of {n} messages taken after {limit:?}; calls: {:#?}", taken.len(), self.calls());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChatRobots {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn query_value<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let kind = match uri.path() {
        "/robot/send" => "dingtalk",
        "/cgi-bin/webhook/send" => "wecom",
        "/kiln-hook" => "webhook",
        p if p.starts_with("/services/") => "slack",
        _ => "unknown",
    };
    let (code, errcode, reply): (StatusCode, Option<i64>, Response) =
        if s.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            (StatusCode::INTERNAL_SERVER_ERROR, None, (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response())
        } else {
            match kind {
                "dingtalk" => {
                    let code = dingtalk(&uri, &parsed);
                    let message = match code {
                        0 => "ok",
                        300001 => "token is not exist",
                        310000 => "sign not match",
                        _ => "param error",
                    };
                    (StatusCode::OK, Some(code), axum::Json(json!({"errcode": code, "errmsg": message})).into_response())
                }
                "wecom" => {
                    let code = wecom(&uri, &parsed);
                    let message = if code == 0 { "ok" } else if code == 93000 { "invalid webhook url" } else { "invalid json" };
                    (StatusCode::OK, Some(code), axum::Json(json!({"errcode": code, "errmsg": message})).into_response())
                }
                "slack" => match (uri.path() == SLACK_PATH, parsed["text"].as_str()) {
                    (false, _) => (StatusCode::NOT_FOUND, None, (StatusCode::NOT_FOUND, "no_service").into_response()),
                    (true, None) => (StatusCode::BAD_REQUEST, None, (StatusCode::BAD_REQUEST, "no_text").into_response()),
                    (true, Some(_)) => (StatusCode::OK, None, (StatusCode::OK, "ok").into_response()),
                },
                "webhook" => {
                    let expected = format!("sha256={}", hex::encode(hmac(HOOK_SECRET.as_bytes(), &body)));
                    let given = headers.get("x-kiln-signature-256").and_then(|v| v.to_str().ok());
                    if given == Some(expected.as_str()) && parsed.is_object() {
                        (StatusCode::NO_CONTENT, None, StatusCode::NO_CONTENT.into_response())
                    } else {
                        (StatusCode::UNAUTHORIZED, None, (StatusCode::UNAUTHORIZED, "bad signature").into_response())
                    }
                }
                _ => (StatusCode::NOT_FOUND, None, StatusCode::NOT_FOUND.into_response()),
            }
        };
    let path_and_query = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    s.calls.lock().unwrap().push(RobotCall { kind, path_and_query, headers, body: parsed, answered: code.as_u16(), errcode });
    reply
}

/// DingTalk's errcode for a call: the token, then (this robot signs) the signature, then the body.
fn dingtalk(uri: &Uri, body: &Value) -> i64 {
    if query_value(uri, "access_token") != Some(DINGTALK_TOKEN) {
        return 300001;
    }
    let (Some(timestamp), Some(sign)) = (query_value(uri, "timestamp"), query_value(uri, "sign")) else { return 310000 };
    let Ok(ms) = timestamp.parse::<i64>() else { return 310000 };
    if (chrono::Utc::now().timestamp_millis() - ms).abs() > 3_600_000 {
        return 310000;
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac(DINGTALK_SECRET.as_bytes(), format!("{timestamp}\n{DINGTALK_SECRET}").as_bytes()));
    if percent_decode(sign) != expected {
        return 310000;
    }
    let ok = body["msgtype"] == "markdown" && body["markdown"]["title"].is_string() && body["markdown"]["text"].is_string();
    if ok {
        0
    } else {
        40035
    }
}

fn wecom(uri: &Uri, body: &Value) -> i64 {
    if query_value(uri, "key") != Some(WECOM_KEY) {
        return 93000;
    }
    match body["markdown"]["content"].as_str() {
        Some(content) if body["msgtype"] == "markdown" && content.len() <= 4096 => 0,
        _ => 40058,
    }
}
