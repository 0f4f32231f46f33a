//! GitLab commit statuses (issue 20): real local builds of a pushed Go app, and a GitLab API
//! double (`support::gitlab_api`) that records every status Kiln posts.

use std::time::Duration;

use axum::http::Method;
use builder_api::store::{Build, BuildState};
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, fixture_app, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::gitlab_api::{GitlabApi, StatusCall};
use crate::support::kiln::{test_config, TestKiln};
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-status-git-token";
const GITLAB_TOKEN: &str = "glpat-status-api-token-0123";
const SECRET: &str = "hook-secret-statuses";
const PUBLIC_URL: &str = "https://kiln.example.test";
const BUILD_LIMIT: Duration = Duration::from_secs(240);
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

struct World {
    git: GitServer,
    registry: TestRegistry,
    kiln: TestKiln,
    gitlab: GitlabApi,
    tenant_token: String,
}

impl World {
    async fn new() -> World {
        World::with(|_, _| {}).await
    }

    /// With the test config changed by `change` (given the temp dir).
    async fn with(change: impl FnOnce(&mut builder_api::config::Config, &std::path::Path)) -> World {
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let gitlab = GitlabApi::start(GITLAB_TOKEN).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[&registry.host()]);
        config.server.public_url = Some(PUBLIC_URL.into());
        change(&mut config, dir.path());
        let kiln = TestKiln::start_with(dir, config).await;
        let tenant_token = kiln.tenant("team").await;
        World { git, registry, kiln, gitlab, tenant_token }
    }

    /// What an app needs to post statuses to the double.
    fn status_settings(&self) -> Value {
        json!({ "gitlab_token": GITLAB_TOKEN, "settings": { "gitlab_url": self.gitlab.url() } })
    }

    /// A Go app `team/NAME` posting statuses; returns the sha of its first commit.
    async fn go_app(&self, name: &str) -> String {
        let path = format!("team/{name}");
        let (sha, spec) = fixture_app(&self.git, &self.registry.host(), &path, "go-hello", (SECRET, GIT_TOKEN), self.status_settings());
        self.kiln.app(&self.tenant_token, spec).await;
        sha
    }

    async fn push(&self, name: &str, sha: &str) -> i64 {
        let path = format!("team/{name}");
        self.kiln.push_hook(&GitlabPush::branch(&path, &self.git.url(&path), "main", sha), SECRET).await
    }

    async fn build_json(&self, id: i64) -> Value {
        let (status, body) = self.kiln.request(Method::GET, &format!("/api/v1/builds/{id}"), Some(&self.tenant_token), None).await;
        assert!(status.is_success(), "{body}");
        body["build"].clone()
    }

    /// Waits until the build records a GitLab status outcome.
    async fn gitlab_status_of(&self, id: i64) -> String {
        let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
        loop {
            if let Some(s) = self.build_json(id).await["gitlab_status"].as_str() {
                return s.to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} recorded no gitlab_status; calls: {:#?}", self.gitlab.calls());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn states(calls: &[StatusCall]) -> Vec<&str> {
    calls.iter().map(StatusCall::state).collect()
}

fn assert_about(calls: &[StatusCall], project: &str, sha: &str, build: &Build) {
    for c in calls {
        assert_eq!(c.method, "POST");
        assert_eq!(c.path, format!("/api/v4/projects/{}/statuses/{sha}", project.replace('/', "%2F")));
        assert_eq!(c.private_token.as_deref(), Some(GITLAB_TOKEN));
        assert_eq!(c.field("ref"), Some("main"), "{c:?}");
        assert_eq!(c.field("name"), Some("kiln"), "{c:?}");
        assert_eq!(c.field("target_url").map(str::to_string), Some(format!("{PUBLIC_URL}/ui/builds/{}", build.id)), "{c:?}");
        assert!(!c.field("description").unwrap_or_default().contains('\n'), "{c:?}");
    }
}

#[tokio::test]
async fn a_push_posts_pending_running_and_success_for_its_sha_and_ref_with_the_build_link() {
    let w = World::new().await;
    let sha = w.go_app("status-ok").await;
    let build = w.kiln.ended(w.push("status-ok", &sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let delivered = w.gitlab.wait_delivered(3, DELIVERY_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = w.gitlab.calls();
    assert_eq!(states(&calls), ["pending", "running", "success"], "{calls:#?}");
    assert_eq!(delivered.len(), 3);
    assert_about(&calls, "team/status-ok", &sha, &build);
    assert_eq!(w.build_json(build.id).await["gitlab_status"], Value::Null);
    // The token is write-only: the app says it has one and never shows it.
    let (_, app) = w.kiln.request(Method::GET, "/api/v1/apps/status-ok", Some(&w.tenant_token), None).await;
    assert_eq!(app["app"]["has_gitlab_token"], true, "{app}");
    assert!(!app.to_string().contains(GITLAB_TOKEN));
}

#[tokio::test]
async fn a_build_that_does_not_compile_posts_failed_with_the_reason() {
    let w = World::new().await;
    let repo = w.git.create_repo("team/status-broken");
    let sha = repo.commit_files(
        &[("go.mod", &b"module example.com/broken\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() { undefinedThing() }\n", false)],
        "broken",
    );
    let mut spec = app_spec("status-broken", &w.git.url("team/status-broken"), "team/status-broken", &format!("{}/team/status-broken", w.registry.host()), SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    for (k, v) in w.status_settings().as_object().unwrap() {
        spec[k] = v.clone();
    }
    w.kiln.app(&w.tenant_token, spec).await;
    let build = w.kiln.ended(w.push("status-broken", &sha).await, BuildState::Failed, BUILD_LIMIT).await.0;
    let calls = w.gitlab.wait_delivered(3, DELIVERY_LIMIT).await;
    assert_eq!(states(&calls), ["pending", "running", "failed"], "{calls:#?}");
    assert_about(&calls, "team/status-broken", &sha, &build);
    let description = calls[2].field("description").unwrap();
    assert!(description.starts_with("compile failed"), "{description}");
    assert_eq!(Some(description), build.reason.as_deref().and_then(|r| r.lines().next()));
}

#[tokio::test]
async fn a_status_answered_500_twice_is_retried_and_delivered_once() {
    let w = World::new().await;
    w.gitlab.fail_next(2);
    let sha = w.go_app("status-retry").await;
    let build = w.kiln.ended(w.push("status-retry", &sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let delivered = w.gitlab.wait_delivered(3, DELIVERY_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = w.gitlab.calls();
    let answered: Vec<(&str, u16)> = calls.iter().map(|c| (c.state(), c.answered)).collect();
    assert_eq!(answered, [("pending", 500), ("pending", 500), ("pending", 201), ("running", 201), ("success", 201)]);
    assert_eq!(states(&delivered), ["pending", "running", "success"]);
    assert_eq!(w.build_json(build.id).await["gitlab_status"], Value::Null);
}

#[tokio::test]
async fn a_refused_token_leaves_the_build_succeeded_and_shows_the_refusal() {
    let w = World::new().await;
    w.gitlab.refuse();
    let sha = w.go_app("status-refused").await;
    let build = w.kiln.ended(w.push("status-refused", &sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let refusal = w.gitlab_status_of(build.id).await;
    assert!(refusal.starts_with("refused: 401"), "{refusal}");
    assert!(!refusal.contains(GITLAB_TOKEN));
    assert!(w.gitlab.calls().iter().all(|c| c.answered == 401));
    assert_eq!(w.kiln.build(build.id).await.state, BuildState::Succeeded);
}

#[tokio::test]
async fn statuses_arrive_in_order_when_the_first_answer_is_held_2s() {
    let w = World::new().await;
    w.gitlab.delay_first(Duration::from_secs(2));
    let sha = w.go_app("status-slow").await;
    let build = w.kiln.ended(w.push("status-slow", &sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let delivered = w.gitlab.wait_delivered(3, DELIVERY_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // In the order GitLab answered them: the held `pending` first, `success` last.
    let calls = w.gitlab.calls();
    assert_eq!(states(&calls), ["pending", "running", "success"], "{calls:#?}");
    assert_eq!(delivered.len(), 3);
    assert_about(&calls, "team/status-slow", &sha, &build);
}

#[tokio::test]
async fn a_superseded_build_posts_canceled_naming_the_build_that_superseded_it() {
    // Each compile prints for a few seconds first, so the first build is mid-step at the second push.
    let w = World::with(|c, dir| c.toolchains.go = crate::kube_builds::slow_go(dir, 100, 30).display().to_string()).await;
    let repo = w.git.create_repo("team/status-superseded");
    let files = crate::support::fixtures::fixture_files("go-hello");
    let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
    let first_sha = repo.commit_files(&files, "one");
    let mut spec = app_spec("status-superseded", &w.git.url("team/status-superseded"), "team/status-superseded", &format!("{}/team/status-superseded", w.registry.host()), SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    spec["kind"] = "go".into();
    for (k, v) in w.status_settings().as_object().unwrap() {
        spec[k] = v.clone();
    }
    w.kiln.app(&w.tenant_token, spec).await;
    let first = w.push("status-superseded", &first_sha).await;
    w.kiln.wait_state(first, BuildState::Running, Duration::from_secs(30)).await;
    let second_sha = repo.commit_files(&[("NOTES", "two", false)], "two");
    let second = w.push("status-superseded", &second_sha).await;
    let cancelled = w.kiln.wait_final(first, BUILD_LIMIT).await;
    assert_eq!(cancelled.state, BuildState::Cancelled, "{:?}", cancelled.reason);
    w.kiln.ended(second, BuildState::Succeeded, BUILD_LIMIT).await;
    w.gitlab.wait_delivered(6, DELIVERY_LIMIT).await;
    let calls = w.gitlab.calls();
    let of_first: Vec<&StatusCall> = calls.iter().filter(|c| c.path.ends_with(&first_sha)).collect();
    let last = of_first.last().unwrap();
    assert_eq!(last.state(), "canceled", "{calls:#?}");
    let description = last.field("description").unwrap();
    assert!(description.starts_with(&format!("superseded by build {second}")), "{description}");
    let of_second: Vec<&str> = calls.iter().filter(|c| c.path.ends_with(&second_sha)).map(|c| c.state()).collect();
    assert_eq!(of_second, ["pending", "running", "success"]);
}

#[tokio::test]
async fn a_gitlab_that_is_down_for_the_whole_build_leaves_it_succeeded_and_shows_the_failure() {
    let w = World::new().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let path = "team/status-down";
    let extra = json!({ "gitlab_token": GITLAB_TOKEN, "settings": { "gitlab_url": format!("http://{closed}") } });
    let (sha, spec) = fixture_app(&w.git, &w.registry.host(), path, "go-hello", (SECRET, GIT_TOKEN), extra);
    w.kiln.app(&w.tenant_token, spec).await;
    let build = w.kiln.ended(w.push("status-down", &sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let failure = w.gitlab_status_of(build.id).await;
    assert!(failure.starts_with("not delivered: "), "{failure}");
    assert!(!failure.contains(GITLAB_TOKEN));
}

#[tokio::test]
async fn a_manual_trigger_posts_its_statuses_too_and_an_app_without_a_token_posts_nothing() {
    let w = World::new().await;
    let sha = w.go_app("status-manual").await;
    let id = w.kiln.trigger(&w.tenant_token, "status-manual", json!({"commit": sha, "ref": "main"})).await;
    let build = w.kiln.ended(id, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let calls = w.gitlab.wait_delivered(3, DELIVERY_LIMIT).await;
    assert_eq!(states(&calls), ["pending", "running", "success"], "{calls:#?}");
    assert_about(&calls, "team/status-manual", &sha, &build);

    // The same GitLab, no token: nothing is posted.
    let path = "team/status-silent";
    let extra = json!({ "settings": { "gitlab_url": w.gitlab.url() } });
    let (silent_sha, spec) = fixture_app(&w.git, &w.registry.host(), path, "go-hello", (SECRET, GIT_TOKEN), extra);
    w.kiln.app(&w.tenant_token, spec).await;
    let (silent, log) = w.kiln.ended(w.push("status-silent", &silent_sha).await, BuildState::Succeeded, BUILD_LIMIT).await;
    assert_eq!(log.matches("no GitLab commit status is posted").count(), 1, "{log}");
    assert!(!w.kiln.log(build.id).await.contains("no GitLab commit status"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.gitlab.calls().len(), 3, "{:#?}", w.gitlab.calls());
    assert_eq!(w.build_json(silent.id).await["gitlab_status"], Value::Null);
}
