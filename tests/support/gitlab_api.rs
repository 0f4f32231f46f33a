//! A GitLab API test double for commit statuses, on loopback, recording every call.
//!
//! It follows GitLab's documented contract for "Set the pipeline status of a commit"
//! (Commits API, <https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit>; the
//! same endpoint as modelled by the `gitlab` crate's `api::projects::repository::commits::
//! CreateCommitStatus`, <https://docs.rs/gitlab/latest/gitlab/api/projects/repository/commits/>):
//! - `POST /api/v4/projects/:id/statuses/:sha`, `:id` the project's numeric id or its
//!   URL-encoded path (`group%2Fproject`), `:sha` the commit;
//! - authenticated by the `PRIVATE-TOKEN` header: a wrong or missing token answers 401
//!   `{"message": "401 Unauthorized"}`;
//! - parameters as a form or a JSON body: `state` (required; `pending`, `running`, `success`,
//!   `failed` or `canceled`), `ref`, `name` (alias `context`, default `default`), `target_url`,
//!   `description`;
//! - 201 with the status created; a transition the commit's status of that name cannot make
//!   (posting the state it already has, say `running` → `running`) answers 400
//!   `{"message": "Cannot transition status via :run from :running"}`.
//!
//! Besides, a test can make it answer 500 for the next N calls ([`GitlabApi::fail_next`]), 401
//! for every call ([`GitlabApi::refuse`]), hold its first answer ([`GitlabApi::delay_first`]), or
//! every answer ([`GitlabApi::delay_every`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// One call as the double saw it.
#[derive(Debug, Clone)]
pub struct StatusCall {
    pub method: String,
    /// The raw path, still URL-encoded (`/api/v4/projects/team%2Fapp/statuses/<sha>`).
    pub path: String,
    pub private_token: Option<String>,
    /// The body's fields (form or JSON), as strings.
    pub fields: HashMap<String, String>,
    /// The status the double answered.
    pub answered: u16,
}

impl StatusCall {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
    pub fn state(&self) -> &str {
        self.field("state").unwrap_or_default()
    }
}

#[derive(Default)]
struct Shared {
    token: String,
    /// Every call, in the order their answers were given (what GitLab applied, in order).
    calls: Mutex<Vec<StatusCall>>,
    /// (project, sha, name) → the state GitLab holds.
    states: Mutex<HashMap<(String, String, String), String>>,
    fail_next: AtomicU32,
    refuse: AtomicBool,
    delay_first: Mutex<Option<Duration>>,
    /// Every answer waits this long (a GitLab under load).
    delay_every: Mutex<Option<Duration>>,
}

pub struct GitlabApi {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl GitlabApi {
    /// A GitLab that accepts `token` as `PRIVATE-TOKEN`.
    pub async fn start(token: &str) -> GitlabApi {
        crate::support::secrets::register(token);
        let shared = Arc::new(Shared { token: token.into(), ..Default::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        GitlabApi { addr, shared, server }
    }

    /// The base URL, as an app's `settings.gitlab_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` calls answer 500.
    pub fn fail_next(&self, n: u32) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every call answers 401 (a revoked token).
    pub fn refuse(&self) {
        self.shared.refuse.store(true, Ordering::SeqCst);
    }

    /// The first call's answer waits `by`.
    pub fn delay_first(&self, by: Duration) {
        *self.shared.delay_first.lock().unwrap() = Some(by);
    }

    /// Every answer waits `by`.
    pub fn delay_every(&self, by: Duration) {
        *self.shared.delay_every.lock().unwrap() = Some(by);
    }

    /// Every call so far, in the order they were answered.
    pub fn calls(&self) -> Vec<StatusCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// The calls GitLab took (answered 201).
    pub fn delivered(&self) -> Vec<StatusCall> {
        self.calls().into_iter().filter(|c| c.answered == 201).collect()
    }

    /// Waits until `n` statuses were delivered (or panics with the calls after `limit`).
    pub async fn wait_delivered(&self, n: usize, limit: Duration) -> Vec<StatusCall> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} of {n} statuses delivered after {limit:?}; calls: {:#?}", delivered.len(), self.calls());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GitlabApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let delay = s.delay_first.lock().unwrap().take();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let every = *s.delay_every.lock().unwrap();
    if let Some(delay) = every {
        tokio::time::sleep(delay).await;
    }
    let path = uri.path().to_string();
    let private_token = headers.get("private-token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let fields = parse_fields(&headers, &body);
    let (code, reply) = decide(&s, &method, &path, private_token.as_deref(), &fields);
    s.calls.lock().unwrap().push(StatusCall { method: method.to_string(), path, private_token, fields, answered: code.as_u16() });
    (code, Json(reply)).into_response()
}

fn decide(s: &Shared, method: &Method, path: &str, token: Option<&str>, fields: &HashMap<String, String>) -> (StatusCode, Value) {
    let Some((project, sha)) = statuses_path(path).filter(|_| method == Method::POST) else {
        return (StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}));
    };
    if s.refuse.load(Ordering::SeqCst) || token != Some(s.token.as_str()) {
        return (StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"}));
    }
    if s.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return (StatusCode::INTERNAL_SERVER_ERROR, json!({"message": "500 Internal Server Error"}));
    }
    let Some(state) = fields.get("state").filter(|st| ["pending", "running", "success", "failed", "canceled"].contains(&st.as_str())) else {
        return (StatusCode::BAD_REQUEST, json!({"error": "state does not have a valid value"}));
    };
    let name = fields.get("name").or_else(|| fields.get("context")).cloned().unwrap_or_else(|| "default".into());
    let mut states = s.states.lock().unwrap();
    let key = (project, sha.clone(), name.clone());
    if states.get(&key) == Some(state) {
        return (StatusCode::BAD_REQUEST, json!({"message": format!("Cannot transition status via :{state} from :{state}")}));
    }
    states.insert(key, state.clone());
    let id = states.len();
    (
        StatusCode::CREATED,
        json!({
            "id": id, "sha": sha, "ref": fields.get("ref"), "status": state, "name": name,
            "target_url": fields.get("target_url"), "description": fields.get("description"),
            "allow_failure": false,
        }),
    )
}

/// `(project, sha)` of `/api/v4/projects/:id/statuses/:sha`, the project still URL-encoded
/// (an unencoded `group/project` has more segments and does not match, as on GitLab).
fn statuses_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v4/projects/")?;
    let mut parts = rest.split('/');
    let (project, statuses, sha) = (parts.next()?, parts.next()?, parts.next()?);
    (statuses == "statuses" && parts.next().is_none() && !project.is_empty() && !sha.is_empty()).then(|| (project.to_string(), sha.to_string()))
}

fn parse_fields(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let json_body = headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    if json_body {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((form_decode(k), form_decode(v)))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
