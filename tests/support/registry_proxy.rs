//! An HTTP proxy in front of a real registry that counts what crosses it and injects faults: the
//! one part of the registry tests that is not the real thing, and it only watches and breaks.
//!
//! - counts blob upload bytes (request bodies of PUT/PATCH under `/blobs/uploads/`), so tests can
//!   prove a copy sent no more than the bytes the target lacked;
//! - records every request line, to assert the order of manifest pushes, and with its query
//!   string, to see which blob a `?mount=` asked for and from where;
//! - answers 500 to the next N requests matching a method and path fragment, or 429 with a
//!   `Retry-After`;
//! - can stall a blob upload after N bytes (and say so), so a test can kill the registry behind
//!   it at a known point of a copy.
//!
//! The registry builds its `Location` URLs from `X-Forwarded-Host`, so upload sessions keep going
//! through the proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;

pub struct RegistryProxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    blob_upload_bytes: AtomicU64,
    faults_served: AtomicU64,
    requests: Mutex<Vec<(Instant, String)>>,
    /// `METHOD /path?query` of each of `requests`.
    targets: Mutex<Vec<String>>,
    faults: Mutex<Vec<Fault>>,
    stall_after: Mutex<Option<u64>>,
    stalled: tokio::sync::Notify,
}

struct Fault {
    method: Method,
    path_contains: String,
    remaining: u32,
    status: StatusCode,
    retry_after: Option<String>,
}

impl RegistryProxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> RegistryProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            blob_upload_bytes: AtomicU64::new(0),
            faults_served: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            targets: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            stall_after: Mutex::new(None),
            stalled: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy serve");
        });
        RegistryProxy {
            addr,
            shared,
            server,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Blob bytes uploaded through the proxy so far.
    pub fn blob_upload_bytes(&self) -> u64 {
        self.shared.blob_upload_bytes.load(Ordering::SeqCst)
    }

    /// `METHOD /path` of every request so far (query strings left out).
    pub fn requests(&self) -> Vec<String> {
        self.requests_at().into_iter().map(|(_, r)| r).collect()
    }

    /// [`RegistryProxy::requests`] with the time each arrived.
    pub fn requests_at(&self) -> Vec<(Instant, String)> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// `METHOD /path?query` of every request so far.
    pub fn requests_with_queries(&self) -> Vec<String> {
        self.shared.targets.lock().unwrap().clone()
    }

    /// The cross-repository mounts asked for so far: (repository mounted into, `mount=`, `from=`),
    /// whatever the registry answered.
    pub fn mount_requests(&self) -> Vec<(String, String, String)> {
        self.requests_with_queries()
            .iter()
            .filter_map(|line| {
                let url = reqwest::Url::parse(&format!("http://proxy{}", line.strip_prefix("POST ")?)).ok()?;
                let repository = url.path().strip_prefix("/v2/")?.strip_suffix("/blobs/uploads/")?;
                let query = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
                Some((repository.to_string(), query("mount")?, query("from")?))
            })
            .collect()
    }

    /// Zeroes the counters and the request logs.
    pub fn reset(&self) {
        self.shared.blob_upload_bytes.store(0, Ordering::SeqCst);
        self.shared.faults_served.store(0, Ordering::SeqCst);
        self.shared.requests.lock().unwrap().clear();
        self.shared.targets.lock().unwrap().clear();
    }

    /// Answers 500 to the next `times` requests with `method` whose path contains `path_contains`.
    pub fn fail_next(&self, method: Method, path_contains: &str, times: u32) {
        self.inject(method, path_contains, times, StatusCode::INTERNAL_SERVER_ERROR, None);
    }

    /// Answers 429 Too Many Requests with `Retry-After: retry_after` to the next `times` requests
    /// with `method` whose path contains `path_contains`.
    pub fn throttle_next(&self, method: Method, path_contains: &str, times: u32, retry_after: &str) {
        self.inject(method, path_contains, times, StatusCode::TOO_MANY_REQUESTS, Some(retry_after.to_string()));
    }

    fn inject(&self, method: Method, path_contains: &str, times: u32, status: StatusCode, retry_after: Option<String>) {
        let path_contains = path_contains.to_string();
        self.shared.faults.lock().unwrap().push(Fault { method, path_contains, remaining: times, status, retry_after });
    }

    /// How many injected faults (500s and 429s) were answered.
    pub fn faults_served(&self) -> u64 {
        self.shared.faults_served.load(Ordering::SeqCst)
    }

    /// Stops forwarding upload bytes once `bytes` blob bytes went through (the upload hangs).
    pub fn stall_uploads_after(&self, bytes: u64) {
        *self.shared.stall_after.lock().unwrap() = Some(bytes);
    }

    /// Waits until an upload stalled (see [`RegistryProxy::stall_uploads_after`]).
    pub async fn wait_stalled(&self, deadline: Duration) {
        tokio::time::timeout(deadline, self.shared.stalled.notified())
            .await
            .expect("no upload reached the stall point in time");
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "host",
];

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| path.clone());
    shared
        .requests
        .lock()
        .unwrap()
        .push((Instant::now(), format!("{method} {path}")));
    shared.targets.lock().unwrap().push(format!("{method} {path_and_query}"));

    let fault = {
        let mut faults = shared.faults.lock().unwrap();
        faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method == method && path.contains(&f.path_contains))
            .map(|f| {
                f.remaining -= 1;
                (f.status, f.retry_after.clone())
            })
    };
    if let Some((status, retry_after)) = fault {
        shared.faults_served.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::builder().status(status);
        if let Some(pause) = retry_after {
            response = response.header("retry-after", pause);
        }
        return response.body(Body::from("injected fault")).unwrap();
    }

    let proxy_host = request
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut upstream = shared.http.request(
        method.clone(),
        format!("http://{}{path_and_query}", shared.upstream),
    );
    for (name, value) in request.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    upstream = upstream.header("x-forwarded-host", proxy_host);

    let counts = matches!(method, Method::PUT | Method::PATCH) && path.contains("/blobs/uploads/");
    let body_shared = shared.clone();
    let body = request.into_body().into_data_stream().then(move |chunk| {
        let shared = body_shared.clone();
        async move {
            if let Ok(chunk) = &chunk {
                if counts {
                    let total = shared
                        .blob_upload_bytes
                        .fetch_add(chunk.len() as u64, Ordering::SeqCst)
                        + chunk.len() as u64;
                    let stall = shared.stall_after.lock().unwrap().is_some_and(|at| total >= at);
                    if stall {
                        *shared.stall_after.lock().unwrap() = None;
                        shared.stalled.notify_one();
                        std::future::pending::<()>().await;
                    }
                }
            }
            chunk
        }
    });
    if matches!(method, Method::PUT | Method::PATCH | Method::POST) {
        upstream = upstream.body(reqwest::Body::wrap_stream(body));
    }
    let answer = match upstream.send().await {
        Ok(a) => a,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(format!("proxy: upstream failed: {e}")))
                .unwrap()
        }
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap()
}
