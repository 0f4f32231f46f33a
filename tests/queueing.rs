//! The queue across tenants: round robin between tenants with waiting builds (a tenant with thirty
//! waiting builds does not starve one with three), and a newer push to a branch supersedes the
//! builds of that branch still queued or running.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::store::BuildState;
use serde_json::json;

use crate::kube_builds::slow_go;
use crate::support::fixtures::{app_spec, fixture_files, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln, ADMIN};
use crate::support::metrics::{scrape_until, Scrape};
use crate::support::registry::TestRegistry;

/// A git "server" that accepts connections and answers nothing until it is opened; then every
/// held connection and every new one is closed (so each clone fails at once). It holds builds
/// in their first step for as long as a test needs.
struct Gate {
    url: String,
    open: Arc<tokio::sync::Notify>,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/gate/app.git", listener.local_addr().unwrap());
        let open = Arc::new(tokio::sync::Notify::new());
        let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
        let (opened, hold) = (open.clone(), held.clone());
        tokio::spawn(async move {
            let mut is_open = false;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { return };
                        if !is_open {
                            hold.lock().unwrap().push(socket);
                        }
                    }
                    _ = opened.notified(), if !is_open => {
                        is_open = true;
                        hold.lock().unwrap().clear();
                    }
                }
            }
        });
        Gate { url, open, held }
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Waits until `n` builds are held at the gate (each has taken a slot and reached its clone).
    async fn wait_held(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.held() < n {
            assert!(tokio::time::Instant::now() < deadline, "only {} of {n} builds reached the git server", self.held());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn open(&self) {
        self.open.notify_one();
    }
}

/// The app `svc`, cloning from the gate, for each tenant token.
async fn gated_apps(kiln: &TestKiln, gate: &Gate, tokens: &[&String]) {
    for token in tokens {
        kiln.app(token, app_spec("svc", &gate.url, "gate/app", "127.0.0.1:9/gate/app", "gate-hook-secret")).await;
    }
}

/// Triggers `n` builds of the tenant's `svc` at `commit`, one after another; returns their ids.
async fn trigger_builds(kiln: &TestKiln, token: &str, commit: &str, n: usize) -> Vec<i64> {
    let mut ids = vec![];
    for _ in 0..n {
        let (status, body) =
            kiln.request(Method::POST, "/api/v1/apps/svc/builds", Some(token), Some(json!({"commit": commit, "ref": "main"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["build"]["id"].as_i64().unwrap());
    }
    ids
}

#[tokio::test]
async fn a_tenant_with_three_builds_is_not_starved_by_one_with_thirty() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.executor.max_concurrent_builds = 2;
    let kiln = TestKiln::start_with(dir, config).await;
    let gate = Gate::start().await;
    let (a, b) = (kiln.tenant("alpha").await, kiln.tenant("beta").await);
    gated_apps(&kiln, &gate, &[&a, &b]).await;
    let alpha = trigger_builds(&kiln, &a, &"a".repeat(40), 30).await;
    let beta = trigger_builds(&kiln, &b, &"a".repeat(40), 3).await;
    // Alpha's first two hold both slots at the gate while everything else waits.
    gate.wait_held(2).await;
    gate.open();
    for id in alpha.iter().chain(&beta) {
        kiln.wait_final(*id, Duration::from_secs(60)).await;
    }
    let started = |id: i64| {
        let kiln = &kiln;
        async move { kiln.build(id).await.started_at.expect("started") }
    };
    let alpha_7th = started(alpha[6]).await;
    for id in &beta {
        let at = started(*id).await;
        assert!(at <= alpha_7th, "beta's build {id} started at {at}, after alpha's 7th ({alpha_7th})");
    }
    // Within a tenant, first in, first started.
    let mut last = 0;
    for id in &alpha {
        let at = started(*id).await;
        assert!(at >= last, "alpha's builds started out of order");
        last = at;
    }
}

#[tokio::test]
async fn three_pushes_to_one_branch_leave_one_build_and_two_that_say_what_superseded_them() {
    const TOKEN: &str = "glpat-supersede-token";
    const SECRET: &str = "hook-secret-supersede";
    let git = GitServer::start_with_token(TOKEN).await;
    let registry = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&registry.host()]);
    // Each compile prints for a few seconds first, so a build is mid-step when the next push comes.
    config.toolchains.go = slow_go(dir.path(), 100, 30).display().to_string();
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("team").await;
    let repo = git.create_repo("team/hello");
    let files = fixture_files("go-hello");
    let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
    let mut shas = vec![repo.commit_files(&files, "one")];
    let mut spec = app_spec("hello", &git.url("team/hello"), "team/hello", &format!("{}/team/hello", registry.host()), SECRET);
    spec["git_token"] = TOKEN.into();
    spec["kind"] = "go".into();
    kiln.app(&token, spec).await;
    shas.push(repo.commit_files(&[("NOTES", "two", false)], "two"));
    shas.push(repo.commit_files(&[("NOTES", "three", false)], "three"));

    let mut ids = vec![];
    for (i, sha) in shas.iter().enumerate() {
        let push = GitlabPush::branch("team/hello", &git.url("team/hello"), "main", sha);
        let req = Request::post("/hooks/gitlab").header("x-gitlab-event", push.event()).header("x-gitlab-token", SECRET).body(Body::from(push.body().to_string())).unwrap();
        let (status, body) = kiln.send(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["builds"][0].as_i64().unwrap());
        if i == 0 {
            // The first is running when the second push arrives.
            kiln.wait_state(ids[0], BuildState::Running, Duration::from_secs(30)).await;
        }
    }
    let last = kiln.wait_final(ids[2], Duration::from_secs(240)).await;
    assert_eq!(last.state, BuildState::Succeeded, "{:?}\n{}", last.reason, kiln.log(ids[2]).await);
    for older in [ids[0], ids[1]] {
        let build = kiln.wait_final(older, Duration::from_secs(60)).await;
        // Superseded by a later push (the second or the third: both supersede the first).
        let why = build.reason.clone().unwrap_or_default();
        let by = ids.iter().find(|n| why == format!("superseded by build {n} (a newer push to refs/heads/main)"));
        assert!(build.state == BuildState::Cancelled && by.is_some_and(|n| *n > older), "build {older}: {:?} {why:?}", build.state);
        let log = kiln.log(older).await;
        if build.started_at.is_some() {
            assert!(log.contains(&why), "build {older}'s log does not say why it stopped:\n{log}");
        }
    }
}

#[tokio::test]
async fn a_tenant_at_its_concurrency_cap_waits_while_another_uses_the_free_slots() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.executor.max_concurrent_builds = 3;
    let kiln = TestKiln::start_with(dir, config).await;
    let gate = Gate::start().await;
    let (a, b) = (kiln.tenant("capped").await, kiln.tenant("free").await);
    let (status, body) =
        kiln.request(Method::PUT, "/api/v1/tenants/capped/settings", Some(ADMIN), Some(json!({"max_concurrent_builds": 1}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    gated_apps(&kiln, &gate, &[&a, &b]).await;
    let capped = trigger_builds(&kiln, &a, &"b".repeat(40), 3).await;
    let free = trigger_builds(&kiln, &b, &"b".repeat(40), 3).await;
    // Three slots: one for the capped tenant, two for the other; the rest wait at the gate's door.
    gate.wait_held(3).await;
    let running = |ids: Vec<i64>| {
        let kiln = &kiln;
        async move {
            let mut n = 0;
            for id in ids {
                n += usize::from(kiln.build(id).await.state == BuildState::Running);
            }
            n
        }
    };
    assert_eq!((running(capped.clone()).await, running(free.clone()).await), (1, 2));
    assert_eq!(kiln.ctx.scheduler.running_count(), 3);
    // /metrics says the same per tenant: the capped tenant's two others wait behind its cap,
    // the free tenant's third behind the global limit.
    let gauges = |s: &Scrape, tenant: &str| (s.number("kiln_builds_queued", &[("tenant", tenant)]), s.number("kiln_builds_running", &[("tenant", tenant)]));
    let waiting = scrape_until(&kiln, Duration::from_secs(30), "the gauges of the held builds", |s| gauges(s, "capped") == (2.0, 1.0)).await;
    assert_eq!(gauges(&waiting, "free"), (1.0, 2.0), "{}", waiting.text);
    assert_eq!(waiting.histogram_count("kiln_build_queue_wait_seconds", &[]), 3.0, "the three started builds:\n{}", waiting.text);
    gate.open();
    let mut spans = vec![];
    for id in &capped {
        let b = kiln.wait_final(*id, Duration::from_secs(60)).await;
        spans.push((b.started_at.expect("started"), b.finished_at.expect("finished")));
    }
    for id in &free {
        kiln.wait_final(*id, Duration::from_secs(60)).await;
    }
    // Never two of the capped tenant's builds at once.
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "the capped tenant ran two builds at once: {spans:?}");
    }
    // All ended (each failing its clone at the closed gate): nothing waits or runs, every build
    // waited once and ended once.
    let done = scrape_until(&kiln, Duration::from_secs(30), "the gauges back to 0", |s| gauges(s, "capped") == (0.0, 0.0) && gauges(s, "free") == (0.0, 0.0)).await;
    assert_eq!(done.histogram_count("kiln_build_queue_wait_seconds", &[]), 6.0, "{}", done.text);
    assert_eq!(done.sum("kiln_build_duration_seconds_count"), 6.0, "{}", done.text);
}
