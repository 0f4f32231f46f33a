//! Kiln itself, for tests: the real service (store, scheduler, local executor, router) in this
//! process on a temp data dir, reachable without a socket (`request`) and over a real one (`url`).
//! The steps run as the real `kiln` binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use builder_api::config::Config;
use builder_api::context::{AppState, Context};
use builder_api::store::{Build, BuildState, SecretKey, Store};
use serde_json::Value;
use tower::ServiceExt;

use crate::support::secrets;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct TestKiln {
    pub ctx: Arc<Context>,
    pub router: Router,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

/// Test-wide config: insecure loopback registries, hermetic Go and offline Maven; the store in
/// a fresh PostgreSQL database when the suite runs on PostgreSQL (`support::postgres`).
pub fn test_config(dir: &std::path::Path, insecure: &[&str]) -> Config {
    let mut c = Config::default();
    c.store.data_dir = dir.join("data");
    c.store.url = crate::support::postgres::database_for(&c.store.data_dir);
    c.server.admin_token = Some(ADMIN.into());
    c.server.max_body_bytes = 64 * 1024;
    c.executor.kiln_binary = Some(env!("CARGO_BIN_EXE_kiln").into());
    c.executor.max_concurrent_builds = 2;
    c.registry.insecure = insecure.iter().map(|s| s.to_string()).collect();
    c.toolchains.goproxy = "off".into();
    c.toolchains.maven_args = vec!["-o".into(), "-Dmaven.repo.local=/usr/share/maven-repo".into()];
    c
}

/// The store of a Kiln (in this process or a `kiln serve` of the test) that ran on `data_dir`,
/// opened again: SQLite under the data dir, or the data dir's PostgreSQL database.
pub async fn open_store(data_dir: &std::path::Path) -> Store {
    let key = SecretKey::load(data_dir, None).unwrap();
    Store::connect(crate::support::postgres::database_for(data_dir).as_deref(), data_dir, key).await.unwrap()
}

/// The files a Kiln's store on `data_dir` keeps its data in, for scans of what is at rest:
/// `kiln.db` and its WAL and shared memory on SQLite; on PostgreSQL the database's directory
/// and the cluster's write-ahead log.
pub fn store_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    match crate::support::postgres::database_for(data_dir) {
        Some(url) => crate::support::postgres::database_files(&url),
        None => ["kiln.db", "kiln.db-wal", "kiln.db-shm"].iter().map(|name| data_dir.join(name)).collect(),
    }
}

impl TestKiln {
    pub async fn start(insecure: &[&str]) -> TestKiln {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path(), insecure);
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: Config) -> TestKiln {
        Self::start_with_kube(dir, config, None).await
    }

    /// With the kube executor's client given (the fake API server's).
    pub async fn start_with_kube(dir: tempfile::TempDir, config: Config, kube: Option<kube::Client>) -> TestKiln {
        Self::try_start_with_kube(dir, config, kube).await.unwrap()
    }

    /// As [`TestKiln::start_with_kube`], with what keeps Kiln from starting (say a start-up
    /// cleanup the cluster refuses) as an error instead of a panic.
    pub async fn try_start_with_kube(dir: tempfile::TempDir, config: Config, kube: Option<kube::Client>) -> anyhow::Result<TestKiln> {
        crate::support::init();
        for secret in [&config.server.admin_token, &config.registry.password, &config.harbor.webhook_auth] {
            secrets::register(secret.as_deref().unwrap_or_default());
        }
        for c in &config.clusters {
            secrets::register(c.password.as_deref().unwrap_or_default());
        }
        let ctx = builder_api::server::build_context_with(config, kube).await?;
        builder_api::server::start_background(&ctx).await?;
        let router = builder_api::router::router(AppState(ctx.clone()));
        // The listener `kiln serve` uses (its backlog included).
        let listener = builder_api::server::listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = router.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, served.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Ok(TestKiln { ctx, router, addr, dir, server })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request through the router, without a socket. Returns the status and the body parsed
    /// as JSON (or `{"text": …}` when it is not JSON).
    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let sent = body.clone();
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let (status, answer) = self.send(req.body(body).unwrap()).await;
        // What Kiln accepted as a secret (an app's webhook secret, git token) must never come back.
        if let Some(sent) = sent.filter(|_| status.is_success()) {
            secrets::register_from_request(&sent);
        }
        (status, answer)
    }

    /// Sends a request; the answer is captured for the secrets scan (`support::secrets`).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let what = format!("{} {} answer", req.method(), req.uri().path());
        let (status, bytes) = self.answer(req).await;
        secrets::capture(&what, &String::from_utf8_lossy(&bytes));
        (status, parse_answer(&bytes))
    }

    /// The raw answer, not captured: for the answers that hand out a secret by design, which
    /// their caller captures with that one value masked.
    async fn answer(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, bytes.to_vec())
    }

    /// A new tenant; returns its token.
    pub async fn tenant(&self, name: &str) -> String {
        let req = Request::post("/api/v1/tenants")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::json!({ "name": name }).to_string()))
            .unwrap();
        let (status, bytes) = self.answer(req).await;
        let body = parse_answer(&bytes);
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().unwrap().to_string();
        secrets::capture_issuing("POST /api/v1/tenants answer", &String::from_utf8_lossy(&bytes), &token);
        token
    }

    /// Creates an app; its webhook secret and git token are registered as secrets, and a
    /// generated webhook secret (returned once by design) too.
    pub async fn app(&self, token: &str, spec: Value) -> Value {
        let req = Request::post("/api/v1/apps")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(spec.to_string()))
            .unwrap();
        let (status, bytes) = self.answer(req).await;
        let body = parse_answer(&bytes);
        assert_eq!(status, StatusCode::CREATED, "{body}");
        secrets::register_from_request(&spec);
        let text = String::from_utf8_lossy(&bytes);
        match body["webhook_secret"].as_str() {
            Some(generated) => secrets::capture_issuing("POST /api/v1/apps answer", &text, generated),
            None => secrets::capture("POST /api/v1/apps answer", &text),
        }
        body
    }

    /// Sends a GitLab push webhook with the app's secret; returns the id of the one build queued.
    pub async fn push_hook(&self, push: &crate::support::fixtures::GitlabPush, secret: &str) -> i64 {
        secrets::register(secret);
        let req = Request::post("/hooks/gitlab")
            .header("x-gitlab-event", push.event())
            .header("x-gitlab-token", secret)
            .body(Body::from(push.body().to_string()))
            .unwrap();
        let (status, body) = self.send(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["builds"][0].as_i64().unwrap()
    }

    pub async fn build(&self, id: i64) -> Build {
        self.ctx.store.build(id).await.unwrap().expect("build exists")
    }

    /// Waits until the build is final, or panics with its log after `limit`.
    pub async fn wait_final(&self, id: i64, limit: Duration) -> Build {
        let deadline = tokio::time::Instant::now() + limit;
        let mut wake = self.ctx.hub.subscribe(id);
        loop {
            let b = self.build(id).await;
            if b.state.is_final() {
                // Read once so that the whole log goes through the secrets scan.
                self.log(id).await;
                return b;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("build {id} still {:?} after {limit:?}; log:\n{}", b.state, self.log(id).await);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await;
        }
    }

    /// Starts a build of `app` through the API (`POST /api/v1/apps/{app}/builds` with `body`,
    /// say `{"commit": sha}`); returns its id.
    pub async fn trigger(&self, token: &str, app: &str, body: Value) -> i64 {
        let (status, answer) = self.request(Method::POST, &format!("/api/v1/apps/{app}/builds"), Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["build"]["id"].as_i64().unwrap()
    }

    /// A build of `app` (of `tenant`) that succeeded with `image` (`registry/repo@digest`, which
    /// need not exist), recorded as the scheduler would have: for what follows a build —
    /// replication, rollouts, rollbacks — without compiling one.
    pub async fn succeeded_build(&self, tenant: &str, app: &str, image: &str) -> i64 {
        let store = &self.ctx.store;
        let tenant = store.tenant_by_name(tenant).await.unwrap().expect("tenant exists");
        let app = store.app_by_name(tenant.id, app).await.unwrap().expect("app exists");
        let digest = image.rsplit_once('@').expect("an image by digest").1;
        let new = builder_api::store::NewBuild {
            tenant_id: tenant.id,
            app_id: app.id,
            git_ref: Some("refs/heads/main".into()),
            commit: "0123456789abcdef0123".into(),
            trigger: "manual".into(),
            commit_info: Default::default(),
        };
        let build = store.create_build(&new).await.unwrap();
        store.set_build_image(build.id, image, digest).await.unwrap();
        assert!(store.finish_build(build.id, BuildState::Succeeded, None).await.unwrap(), "build {} was started meanwhile", build.id);
        build.id
    }

    /// Waits until the build is final and asserts it ended in `state`; returns it and its log.
    /// Its reason and log go through the secrets scan, like every answer.
    pub async fn ended(&self, id: i64, state: BuildState, limit: Duration) -> (Build, String) {
        let build = self.wait_final(id, limit).await;
        let log = self.log(id).await;
        secrets::capture(&format!("build {id} reason"), build.reason.as_deref().unwrap_or_default());
        assert_eq!(build.state, state, "reason: {:?}\nlog:\n{log}", build.reason);
        (build, log)
    }

    /// Waits until the build reached `state` (e.g. Running).
    pub async fn wait_state(&self, id: i64, state: BuildState, limit: Duration) -> Build {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let b = self.build(id).await;
            if b.state == state {
                return b;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} is {:?}, never {state:?}", b.state);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the build's stored log contains `needle` (a step well under way).
    pub async fn wait_for_line(&self, id: i64, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut wake = self.ctx.hub.subscribe(id);
        while !self.log(id).await.contains(needle) {
            assert!(tokio::time::Instant::now() < deadline, "no {needle:?} in the log:\n{}", self.log(id).await);
            let _ = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await;
        }
    }

    /// The whole stored log as text.
    pub async fn log(&self, id: i64) -> String {
        let lines = self.ctx.store.log_after(id, 0, 1_000_000).await.unwrap();
        let text: String = lines.iter().map(|l| format!("{}\n", l.line)).collect();
        secrets::capture(&format!("build {id} log"), &text);
        text
    }
}

impl Drop for TestKiln {
    fn drop(&mut self) {
        self.server.abort();
        // Every test that runs Kiln checks the no-secret rule on its way out (not while already
        // failing: the first failure is the one to read).
        if !std::thread::panicking() {
            secrets::assert_no_leaks();
        }
    }
}

/// An answer body as JSON, or `{"text": …}` when it is not JSON.
fn parse_answer(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(bytes) }))
}
