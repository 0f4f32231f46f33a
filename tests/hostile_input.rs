//! Hostile input: thousands of generated malformed webhook and API bodies (no 5xx, no panic, every
//! answer says why), size limits on every body route, JSON for query and path errors, names that
//! reach Kubernetes, per-app webhook rate limits, and no secret in anything Kiln says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use builder_api::config::ClusterConfig;
use rand::Rng;
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::hostile::{self, Hostile};
use crate::support::kiln::{test_config, TestKiln, ADMIN};
use crate::support::secrets;

const SECRET: &str = "hostile-hook-secret-7781";
const HARBOR_AUTH: &str = "Basic aGFyYm9yOmhvc3RpbGUtaGFyYm9yLWF1dGg=";
const PROJECT: &str = "team/hello";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Kiln with one tenant, one app whose repository exists (so a ref-only trigger resolves instead
/// of failing to reach a git server), a cluster and Harbor auth, and no webhook rate limit (the
/// generated deliveries must reach the parser, not the limiter).
struct World {
    _git: GitServer,
    git_url: String,
    kiln: TestKiln,
    token: String,
    sha: String,
}

impl World {
    async fn new() -> World {
        let git = GitServer::start().await;
        let repo = git.create_repo(PROJECT);
        let sha = repo.commit_files(&[("README", &b"nothing to build here\n"[..], false)], "first");
        let git_url = git.url(PROJECT);
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[]);
        config.executor.max_concurrent_builds = 1;
        config.hooks.rate_per_app_per_minute = 0;
        config.harbor.webhook_auth = Some(HARBOR_AUTH.into());
        config.clusters = vec![ClusterConfig { name: "east".into(), registry: "127.0.0.1:9".into(), ..Default::default() }];
        let kiln = TestKiln::start_with(dir, config).await;
        let token = kiln.tenant("team").await;
        let mut spec = app_spec("hello", &git_url, PROJECT, "127.0.0.1:9/team/hello", SECRET);
        spec["branch_filter"] = "main".into();
        kiln.app(&token, spec).await;
        // What the generator's PATCHes change: not `hello`, whose webhooks the other targets send.
        kiln.app(&token, app_spec("patched", &git_url, "team/patched", "127.0.0.1:9/team/patched", "patched-secret-123")).await;
        World { _git: git, git_url, kiln, token, sha }
    }
}

/// One target of the generator: where bodies go, with which credentials, from which valid body.
struct Target {
    name: &'static str,
    method: Method,
    path: String,
    auth: Vec<(&'static str, String)>,
    valid: Vec<Value>,
}

fn harbor_fixtures() -> Vec<Value> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/harbor");
    let mut out: Vec<Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    out.sort_by_key(|v| v.to_string());
    assert!(out.len() >= 4);
    out
}

fn targets(w: &World) -> Vec<Target> {
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let branch = GitlabPush::branch(PROJECT, &w.git_url, "main", SHA);
    let tag = GitlabPush::tag(PROJECT, &w.git_url, "v1.0.0", SHA);
    vec![
        Target {
            method: Method::POST,
            name: "gitlab",
            path: "/hooks/gitlab".into(),
            auth: vec![("x-gitlab-token", SECRET.into())],
            valid: vec![branch.body(), tag.body(), branch.deleting().body()],
        },
        Target { method: Method::POST, name: "harbor", path: "/hooks/harbor".into(), auth: vec![("authorization", HARBOR_AUTH.into())], valid: harbor_fixtures() },
        Target {
            method: Method::POST,
            name: "app create",
            path: "/api/v1/apps".into(),
            auth: bearer(&w.token),
            valid: vec![
                app_spec("other", &w.git_url, "team/other", "127.0.0.1:9/team/other", "other-secret-123"),
                json!({"name": "maven", "git_url": w.git_url, "kind": "maven", "branch_filter": "release/*",
                       "settings": {"dockerfile": "docker/Dockerfile"}, "image_repository": "127.0.0.1:9/team/m", "base_image": "127.0.0.1:9/library/jre:17"}),
            ],
        },
        Target {
            name: "app update",
            method: Method::PATCH,
            path: "/api/v1/apps/patched".into(),
            auth: bearer(&w.token),
            valid: vec![
                json!({"branch_filter": "release/*", "git_token": "glpat-hostile-patch", "base_image": null}),
                json!({"kind": "go", "settings": {"go_package": "./cmd", "build_args": {"K": "V"}, "supersede": null}, "project_path": "team/patched"}),
            ],
        },
        Target {
            method: Method::POST,
            name: "trigger",
            path: "/api/v1/apps/hello/builds".into(),
            auth: bearer(&w.token),
            valid: vec![json!({"commit": w.sha, "ref": "main"}), json!({"ref": "refs/heads/main"})],
        },
        Target {
            method: Method::POST,
            name: "subscription",
            path: "/api/v1/apps/hello/subscriptions".into(),
            auth: bearer(&w.token),
            valid: vec![
                json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "policy": "branch:main"}),
                json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "repository": "team/hello",
                       "policy": "semver:^1.2", "rollback_on_failure": false}),
            ],
        },
        Target {
            method: Method::POST,
            name: "rollback",
            path: "/api/v1/apps/hello/rollback".into(),
            auth: bearer(&w.token),
            valid: vec![json!({"build": 1, "cluster": "east"}), json!({"digest": format!("sha256:{}", "1".repeat(64))})],
        },
        Target { method: Method::POST, name: "tenant create", path: "/api/v1/tenants".into(), auth: bearer(ADMIN), valid: vec![json!({"name": "ops"})] },
        Target { method: Method::POST, name: "token create", path: "/api/v1/tenants/team/tokens".into(), auth: bearer(&w.token), valid: vec![json!({"name": "ci"})] },
        Target { method: Method::POST, name: "apm", path: "/api/v1/builds/1/apm".into(), auth: bearer(&w.token), valid: vec![json!({"agent": "tracer", "version": "1"})] },
    ]
}

/// Whatever the answer, it says why: JSON, and for a refusal a non-empty `error`; a webhook
/// answer that starts nothing has a `status` and `reason`.
fn check_answer(what: &str, status: StatusCode, body: &Value) {
    assert!(status.as_u16() < 500, "{what}: {status} {body}");
    let obj = body.as_object().unwrap_or_else(|| panic!("{what}: not a JSON object: {body}"));
    assert!(!obj.contains_key("text"), "{what}: the answer is not JSON: {body}");
    if status.is_client_error() {
        let error = body["error"].as_str().unwrap_or_default();
        assert!(!error.trim().is_empty(), "{what}: {status} without a reason: {body}");
    } else if status == StatusCode::OK && what.starts_with("/hooks") {
        assert!(body["status"].is_string() && body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{what}: {body}");
    } else {
        assert!(!obj.is_empty(), "{what}: {status} with an empty answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_bodies_get_no_5xx_and_a_reason_each() {
    let w = World::new().await;
    let max_body = w.kiln.ctx.config.server.max_body_bytes;
    let targets = targets(&w);
    let total = hostile::cases(10_000);
    let seed = hostile::seed();
    let mut h = Hostile::new(seed);
    let content_types = ["application/json", "", "text/plain", "application/json; charset=utf-16", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"];
    let mut histogram: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    let started = Instant::now();
    for case in 0..total {
        let t = &targets[case % targets.len()];
        let valid = h.pick(&t.valid).clone();
        let body = h.mutate(&valid, max_body);
        let mut req = Request::builder().method(t.method.clone()).uri(t.path.as_str());
        // Mostly the right credentials, so the body parser is what gets exercised.
        let right = h.rng.random_bool(0.9);
        for (name, value) in &t.auth {
            req = req.header(*name, if right { HeaderValue::from_str(value).unwrap() } else { h.header_value() });
        }
        let ct = *h.pick(&content_types);
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        if t.name == "gitlab" {
            let event = if h.rng.random_bool(0.8) { HeaderValue::from_static(if valid["object_kind"] == "tag_push" { "Tag Push Hook" } else { "Push Hook" }) } else { h.header_value() };
            req = req.header("x-gitlab-event", event);
            if h.rng.random_bool(0.3) {
                req = req.header("idempotency-key", h.header_value());
            }
        }
        let body = if h.rng.random_bool(0.1) {
            // Chunked: no Content-Length, so the limit is found while reading.
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(4096).map(|c| Ok(c.to_vec())).collect();
            Body::from_stream(futures_util::stream::iter(chunks))
        } else {
            Body::from(body)
        };
        let (status, answer) = w.kiln.send(req.body(body).unwrap()).await;
        check_answer(&format!("{} case {case} (seed {seed})", t.path), status, &answer);
        *histogram.entry((t.name, status.as_u16())).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for ((_, status), n) in &histogram {
        *by_status.entry(*status).or_default() += n;
    }
    println!("{total} hostile bodies in {elapsed:?} (seed {seed}); by status: {by_status:?}");
    for ((target, status), n) in &histogram {
        println!("  {target:>14} {status}: {n}");
    }
    assert_eq!(by_status.values().sum::<usize>(), total);
    // The generator must reach past the parsers too: some bodies are accepted, some refused as
    // too large, most refused as malformed.
    for status in [400, 413] {
        assert!(by_status.get(&status).copied().unwrap_or(0) > total / 100, "too few {status}: {by_status:?}");
    }
    assert!(by_status.keys().any(|s| (200..300).contains(s)), "{by_status:?}");
    // Kiln still works afterwards.
    assert_eq!(w.kiln.request(Method::GET, "/readyz", None, None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn header_injection_cannot_be_sent_and_odd_header_values_are_answered() {
    // CR/LF in a header value never reaches Kiln: the http crate refuses to build it, so no
    // header can smuggle a second one (`X-Gitlab-Token: x\r\nX-Admin: 1`).
    for bad in ["x\r\nX-Injected: 1", "x\nX-Injected: 1", "x\rY", "nul\0"] {
        assert!(HeaderValue::from_str(bad).is_err(), "{bad:?}");
    }
    let w = World::new().await;
    let mut h = Hostile::new(hostile::seed());
    let body = GitlabPush::branch(PROJECT, &w.git_url, "main", SHA).body().to_string();
    for case in 0..60 {
        let mut req = Request::post("/hooks/gitlab").header("x-gitlab-token", SECRET);
        for name in ["x-gitlab-event", "idempotency-key", "x-gitlab-event-uuid", "content-type"] {
            if h.rng.random_bool(0.5) {
                req = req.header(name, h.header_value());
            }
        }
        let (status, answer) = w.kiln.send(req.body(Body::from(body.clone())).unwrap()).await;
        check_answer(&format!("/hooks/gitlab header case {case}"), status, &answer);
    }
    // A bearer token that is not text, or not a bearer token, is 401 with a reason.
    for value in [&b"Bearer \xff\xfe"[..], b"Basic Zm9vOmJhcg==", b"Bearer ", b"bearer\ttoken"] {
        let req = Request::get("/api/v1/apps").header("authorization", HeaderValue::from_bytes(value).unwrap()).body(Body::empty()).unwrap();
        let (status, answer) = w.kiln.send(req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        check_answer("bearer", status, &answer);
    }
}

#[tokio::test]
async fn every_body_route_answers_413_with_a_reason_over_the_limit() {
    let w = World::new().await;
    let max = w.kiln.ctx.config.server.max_body_bytes;
    let big = json!({"name": "x".repeat(max)}).to_string();
    let routes = [
        ("/hooks/gitlab", vec![("x-gitlab-token", SECRET.to_string()), ("x-gitlab-event", "Push Hook".into())]),
        ("/hooks/harbor", vec![("authorization", HARBOR_AUTH.to_string())]),
        ("/api/v1/tenants", vec![("authorization", format!("Bearer {ADMIN}"))]),
        ("/api/v1/tenants/team/tokens", vec![("authorization", format!("Bearer {}", w.token))]),
        ("/api/v1/apps", vec![("authorization", format!("Bearer {}", w.token))]),
        ("/api/v1/apps/hello/builds", vec![("authorization", format!("Bearer {}", w.token))]),
        ("/api/v1/apps/hello/subscriptions", vec![("authorization", format!("Bearer {}", w.token))]),
        ("/api/v1/apps/hello/rollback", vec![("authorization", format!("Bearer {}", w.token))]),
        ("/api/v1/builds/1/apm", vec![("authorization", format!("Bearer {}", w.token))]),
    ];
    for (path, headers) in routes {
        for chunked in [false, true] {
            let mut req = Request::post(path).header("content-type", "application/json");
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            let body = if chunked {
                let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(big[..max / 2].to_string()), Ok(big[max / 2..].to_string())];
                Body::from_stream(futures_util::stream::iter(chunks))
            } else {
                Body::from(big.clone())
            };
            let (status, answer) = w.kiln.send(req.body(body).unwrap()).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path} (chunked: {chunked}): {answer}");
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains("limit"), "{path} (chunked: {chunked}): the reason names the limit: {answer}");
        }
    }
}

#[tokio::test]
async fn query_path_and_method_errors_are_json_400s() {
    let w = World::new().await;
    let t = Some(w.token.as_str());
    for (method, path, status, why) in [
        (Method::GET, "/api/v1/builds?limit=lots", StatusCode::BAD_REQUEST, "limit"),
        (Method::GET, "/api/v1/builds?colour=red", StatusCode::BAD_REQUEST, "colour"),
        (Method::GET, "/api/v1/builds?limit=99999999999999999999999", StatusCode::BAD_REQUEST, "limit"),
        (Method::GET, "/api/v1/builds/notanumber", StatusCode::BAD_REQUEST, "notanumber"),
        (Method::GET, "/api/v1/builds/99999999999999999999999", StatusCode::BAD_REQUEST, "99999999999999999999999"),
        (Method::POST, "/api/v1/builds/1.5/cancel", StatusCode::BAD_REQUEST, "1.5"),
        (Method::GET, "/api/v1/builds/-1/logs?after=x", StatusCode::BAD_REQUEST, "after"),
        (Method::DELETE, "/api/v1/apps/hello/subscriptions/%2e%2e", StatusCode::BAD_REQUEST, ".."),
        (Method::GET, "/api/v1/apps/hello?tenant=a&tenant=b", StatusCode::BAD_REQUEST, "tenant"),
        (Method::GET, "/hooks/gitlab", StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (Method::PUT, "/api/v1/apps", StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (Method::GET, "/api/v1/apps/%00%0a", StatusCode::NOT_FOUND, "no app"),
        (Method::GET, "/no/such/route", StatusCode::NOT_FOUND, "no such route"),
    ] {
        let (got, body) = w.kiln.request(method.clone(), path, t, None).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: not our JSON error: {body}"));
        assert!(error.contains(why), "{method} {path}: {error}");
    }
}

#[tokio::test]
async fn names_that_reach_kubernetes_must_be_dns_labels() {
    let w = World::new().await;
    let hostile = [
        "", "A", "Team", "a_b", "a.b", "-a", "a-", "../x", "a/b", "$(id)", "a b", "a\nb", "ünï", "x\u{0}", "\u{1b}[31m",
        &"a".repeat(64),
    ];
    for name in hostile {
        let (status, body) = w.kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(json!({"name": name}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "tenant {name:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("not a valid name"), "{body}");
        let spec = app_spec(name, &w.git_url, "team/x", "127.0.0.1:9/team/x", "a-long-enough-secret");
        let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps", Some(&w.token), Some(spec)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "app {name:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("not a valid name"), "{body}");
    }
    // The longest name is a tenant only with a namespace of its own (`kiln-` + 63 is too long).
    for (name, namespace) in [("a", None), ("team-2", None), (&*"a".repeat(58), None), (&*"a".repeat(63), Some("long-tenant"))] {
        let body = json!({"name": name, "namespace": namespace});
        let (status, body) = w.kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "tenant {name:?}: {body}");
    }
    // Subscription targets are Kubernetes names too.
    for (field, value) in [("namespace", "Shop"), ("deployment", "web_1"), ("container", "../app")] {
        let mut sub = json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "policy": "manual"});
        sub[field] = value.into();
        let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&w.token), Some(sub)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field} {value:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }
}

#[tokio::test]
async fn webhooks_over_the_per_app_rate_get_429_with_retry_after_and_build_nothing() {
    const LIMIT: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    // A burst of LIMIT, refilled once a minute: nothing refills while the test runs.
    config.hooks.rate_per_app_per_minute = 1;
    config.hooks.burst = LIMIT as u32;
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("team").await;
    let url = "http://127.0.0.1:9/team/hello.git";
    kiln.app(&token, app_spec("hello", url, PROJECT, "127.0.0.1:9/team/hello", SECRET)).await;
    kiln.app(&token, app_spec("other", "http://127.0.0.1:9/team/other.git", "team/other", "127.0.0.1:9/team/other", "other-hook-secret")).await;
    let hook = |project: &str, url: &str, secret: &str, i: usize| {
        let push = GitlabPush::branch(project, url, &format!("b{i}"), SHA);
        Request::post("/hooks/gitlab")
            .header("x-gitlab-event", "Push Hook")
            .header("x-gitlab-token", secret)
            .header("idempotency-key", format!("{project}-{i}"))
            .body(Body::from(push.body().to_string()))
            .unwrap()
    };
    // A sender without the secret spends nothing of the app's budget.
    for i in 0..LIMIT * 2 {
        assert_eq!(kiln.send(hook(PROJECT, url, "not-the-secret", 100 + i)).await.0, StatusCode::UNAUTHORIZED);
    }
    let mut answers = vec![];
    for i in 0..LIMIT + 3 {
        answers.push(kiln.send(hook(PROJECT, url, SECRET, i)).await);
    }
    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::ACCEPTED).count();
    assert_eq!(accepted, LIMIT, "{answers:?}");
    for (status, body) in &answers[LIMIT..] {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(body["error"].as_str().unwrap().contains("hello"), "the reason names the app: {body}");
    }
    // The header, from the raw answer.
    let res = tower::ServiceExt::oneshot(kiln.router.clone(), hook(PROJECT, url, SECRET, 99)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Refused deliveries are not builds, and not recorded (GitLab's retry must be able to build).
    let builds = kiln.ctx.store.builds(None, None, None, 100).await.unwrap();
    assert_eq!(builds.len(), LIMIT);
    assert_eq!(kiln.ctx.store.delivery_count("gitlab").await.unwrap(), LIMIT as i64);
    // Another app of the same tenant has its own budget.
    let other = "http://127.0.0.1:9/team/other.git";
    for i in 0..LIMIT {
        let (status, body) = kiln.send(hook("team/other", other, "other-hook-secret", i)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
}

/// The acceptance test of the no-secret rule: a build that uses a git token, a registry password
/// and a webhook secret, a build that fails on a wrong git token, and wrong credentials on every
/// door; then nothing Kiln answered, traced or logged in this process contains any secret the
/// suite registered (every `TestKiln` also checks this when it is dropped).
#[tokio::test]
async fn no_secret_appears_in_any_answer_trace_or_log() {
    use crate::support::registry::TestRegistry;
    const GIT_TOKEN: &str = "glpat-hostile-git-token-5150";
    const WRONG_GIT_TOKEN: &str = "glpat-hostile-wrong-token-0666";
    const REGISTRY_PASSWORD: &str = "hostile-registry-password-9931";
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start_with_htpasswd("pusher", REGISTRY_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&registry.host()]);
    config.registry.username = Some("pusher".into());
    config.registry.password = Some(REGISTRY_PASSWORD.into());
    config.harbor.webhook_auth = Some(HARBOR_AUTH.into());
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("team").await;
    secrets::register(WRONG_GIT_TOKEN);

    let repo = git.create_repo(PROJECT);
    let sha = repo.commit_files(
        &[("go.mod", &b"module example.com/h\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)],
        "first",
    );
    let mut spec = app_spec("hello", &git.url(PROJECT), PROJECT, &format!("{}/team/hello", registry.host()), SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    kiln.app(&token, spec).await;
    let mut broken = app_spec("broken", &git.url(PROJECT), "team/broken", &format!("{}/team/broken", registry.host()), "broken-hook-secret");
    broken["git_token"] = WRONG_GIT_TOKEN.into();
    kiln.app(&token, broken).await;
    // The harness found every secret by itself (config, git server, registry, app specs, tenant).
    for secret in [GIT_TOKEN, REGISTRY_PASSWORD, SECRET, HARBOR_AUTH, token.as_str(), ADMIN] {
        assert!(secrets::is_registered(secret), "{secret:?} is not registered");
    }

    let ok = kiln.push_hook(&GitlabPush::branch(PROJECT, &git.url(PROJECT), "main", &sha), SECRET).await;
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps/broken/builds", Some(&token), Some(json!({"commit": sha}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let failing = body["build"]["id"].as_i64().unwrap();
    // A ref lookup with the wrong token fails now, in the answer.
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps/broken/builds", Some(&token), Some(json!({"ref": "main"}))).await;
    assert!(status.is_client_error() || status == StatusCode::BAD_GATEWAY, "{status} {body}");

    // Wrong credentials on every door, including near-misses of the real ones.
    let wrong_hook = GitlabPush::branch(PROJECT, &git.url(PROJECT), "main", &sha).body().to_string();
    for guess in [format!("{SECRET}x"), SECRET[..SECRET.len() - 1].to_string(), GIT_TOKEN.to_string(), String::new()] {
        let req = Request::post("/hooks/gitlab").header("x-gitlab-event", "Push Hook").header("x-gitlab-token", guess).body(Body::from(wrong_hook.clone())).unwrap();
        assert_eq!(kiln.send(req).await.0, StatusCode::UNAUTHORIZED);
    }
    for guess in [format!("{token}x"), REGISTRY_PASSWORD.to_string(), format!("{ADMIN}0")] {
        assert_eq!(kiln.request(Method::GET, "/api/v1/apps", Some(&guess), None).await.0, StatusCode::UNAUTHORIZED);
    }
    let req = Request::post("/hooks/harbor").header("authorization", "Basic d3Jvbmc6d3Jvbmc=").body(Body::from("{}")).unwrap();
    assert_eq!(kiln.send(req).await.0, StatusCode::UNAUTHORIZED);

    let built = kiln.wait_final(ok, Duration::from_secs(240)).await;
    assert_eq!(built.state, builder_api::store::BuildState::Succeeded, "{}", kiln.log(ok).await);
    let failed = kiln.wait_final(failing, Duration::from_secs(120)).await;
    assert_eq!(failed.state, builder_api::store::BuildState::Failed);
    // Read everything a user can read about both builds.
    for id in [ok, failing] {
        kiln.request(Method::GET, &format!("/api/v1/builds/{id}"), Some(&token), None).await;
        kiln.request(Method::GET, &format!("/api/v1/builds/{id}/logs"), Some(&token), None).await;
    }
    kiln.request(Method::GET, "/api/v1/apps", Some(&token), None).await;
    kiln.request(Method::GET, "/api/v1/builds", Some(ADMIN), None).await;
    let log = kiln.log(failing).await;
    assert!(log.contains("refused the credentials"), "the failure says why:\n{log}");
    assert!(secrets::captures() > 20 && secrets::traced() > 0, "the scan saw too little to prove anything");
    secrets::assert_no_leaks();
}
