//! An app after it is created: `PATCH /api/v1/apps/{app}` changes any field of its spec under
//! the rules creation follows (secrets write-only), and `DELETE` removes it — refused while it
//! builds or deploys, unless forced — keeping its builds as history and freeing its name.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::store::{BuildState, NewBuild, NewSubscription};
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, fake_go, fixture_app, instant_go, numbered_lines, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln};
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-app-changes-token";
const SECRET: &str = "hook-secret-app-changes";
const LIMIT: Duration = Duration::from_secs(120);

/// Kiln with a token-protected git server and a registry; builds compile instantly, or — with
/// `slow` — print a line every 50 ms for an hour, so a build stays Running as long as a test needs.
struct World {
    git: GitServer,
    registry: TestRegistry,
    kiln: TestKiln,
    token: String,
}

impl World {
    async fn new(slow: bool) -> World {
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[&registry.host()]);
        config.toolchains.go = if slow { fake_go(dir.path(), "slow-go", &numbered_lines(100_000, 50)) } else { instant_go(dir.path()) }.display().to_string();
        let kiln = TestKiln::start_with(dir, config).await;
        let token = kiln.tenant("team").await;
        World { git, registry, kiln, token }
    }

    /// App `name` building the Go sample from `team/<name>`, with the git token unless `extra`
    /// says otherwise; returns the sample's commit.
    async fn app(&self, name: &str, extra: Value) -> String {
        let (sha, spec) = fixture_app(&self.git, &self.registry.host(), &format!("team/{name}"), "go-hello", (SECRET, GIT_TOKEN), extra);
        self.kiln.app(&self.token, spec).await;
        sha
    }

    async fn patch(&self, app: &str, body: Value) -> (StatusCode, Value) {
        self.kiln.request(Method::PATCH, &format!("/api/v1/apps/{app}"), Some(&self.token), Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.kiln.request(Method::DELETE, path, Some(&self.token), None).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.kiln.request(Method::GET, path, Some(&self.token), None).await
    }
}

#[tokio::test]
async fn a_git_token_patched_in_makes_the_next_build_clone_and_patched_out_makes_it_fail_again() {
    let w = World::new(false).await;
    let sha = w.app("hello", json!({ "git_token": null })).await;
    let (build, _) = w.kiln.ended(w.kiln.trigger(&w.token, "hello", json!({ "commit": sha })).await, BuildState::Failed, LIMIT).await;
    assert!(build.reason.as_deref().unwrap().starts_with("clone failed"), "{build:?}");

    let (status, answer) = w.patch("hello", json!({ "git_token": GIT_TOKEN })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["app"]["has_git_token"], true, "{answer}");
    assert!(answer["app"].get("git_token").is_none(), "a secret came back: {answer}");
    let (build, log) = w.kiln.ended(w.kiln.trigger(&w.token, "hello", json!({ "commit": sha })).await, BuildState::Succeeded, LIMIT).await;
    assert!(log.contains("── step clone succeeded"), "{log}");
    assert!(build.image_digest.is_some(), "{build:?}");

    // `null` clears it: the next build cannot clone again.
    let (status, answer) = w.patch("hello", json!({ "git_token": null })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["app"]["has_git_token"], false, "{answer}");
    let (build, _) = w.kiln.ended(w.kiln.trigger(&w.token, "hello", json!({ "commit": sha })).await, BuildState::Failed, LIMIT).await;
    assert!(build.reason.as_deref().unwrap().starts_with("clone failed"), "{build:?}");
}

#[tokio::test]
async fn a_patch_is_checked_as_a_create_is_and_a_refused_one_changes_nothing() {
    let w = World::new(false).await;
    w.app("hello", json!({ "settings": { "go_package": "./cmd/hello" } })).await;
    let (_, before) = w.get("/api/v1/apps/hello").await;

    for (body, says) in [
        (json!({ "kind": "maven" }), "base_image"),
        (json!({ "kind": "maven", "base_image": "scratch" }), "base_image"),
        (json!({ "git_url": "ftp://example.com/x.git" }), "git_url"),
        (json!({ "git_url": "https://user:pw@example.com/x.git" }), "git_token"),
        (json!({ "image_repository": "no host" }), "image repository"),
        (json!({ "branch_filter": "[" }), "branch_filter"),
        (json!({ "webhook_secret": "short" }), "webhook_secret"),
        (json!({ "settings": { "go_pakage": "./x" } }), "go_pakage"),
        (json!({ "settings": "not an object" }), "settings"),
        (json!({ "name": "renamed" }), "renamed"),
        (json!({ "tenant": "other" }), "tenant"),
        (json!({}), "changes nothing"),
    ] {
        let (status, answer) = w.patch("hello", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{body}: {answer}");
    }
    let (_, after) = w.get("/api/v1/apps/hello").await;
    assert_eq!(before, after, "a refused PATCH changed the app");

    // Settings merge key by key; `null` puts one back to its default.
    let (status, answer) = w.patch("hello", json!({ "settings": { "go_ldflags": "-w" }, "branch_filter": "main" })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((&answer["app"]["settings"]["go_package"], &answer["app"]["settings"]["go_ldflags"]), (&json!("./cmd/hello"), &json!("-w")), "{answer}");
    assert_eq!(answer["app"]["branch_filter"], "main");
    let (_, answer) = w.patch("hello", json!({ "settings": { "go_package": null } })).await;
    assert!(answer["app"]["settings"]["go_package"].is_null() && answer["app"]["settings"]["go_ldflags"] == "-w", "{answer}");
    // A maven app with its Java base is fine, as on create.
    let (status, answer) = w.patch("hello", json!({ "kind": "maven", "base_image": "registry.example.com/library/jre:21" })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Only an owner changes an app; the change is audited.
    let (_, dev) = w.kiln.request(Method::POST, "/api/v1/tenants/team/tokens", Some(&w.token), Some(json!({ "role": "developer" }))).await;
    let (status, answer) = w.kiln.request(Method::PATCH, "/api/v1/apps/hello", dev["token"].as_str(), Some(json!({ "branch_filter": "**" }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("owner"), "{answer}");
    let (_, audit) = w.get("/api/v1/audit").await;
    let updates: Vec<&Value> = audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "app.update").collect();
    assert_eq!(updates.len(), 3, "{audit}");
    assert!(updates.iter().all(|e| e["target"] == "app/hello"), "{audit}");
}

#[tokio::test]
async fn a_maven_app_without_a_java_base_image_is_refused_with_what_to_set() {
    let w = World::new(false).await;
    for base in [Value::Null, json!("scratch")] {
        let mut spec = app_spec("jvm", "http://127.0.0.1:9/team/jvm.git", "team/jvm", "127.0.0.1:9/team/jvm", SECRET);
        spec["kind"] = json!("maven");
        spec["base_image"] = base.clone();
        let (status, answer) = w.kiln.request(Method::POST, "/api/v1/apps", Some(&w.token), Some(spec)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{base}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("base_image") && error.contains("java"), "{error}");
    }
    let (_, apps) = w.get("/api/v1/apps").await;
    assert_eq!(apps["apps"], json!([]), "a refused app was stored");
}

#[tokio::test]
async fn deleting_an_app_that_builds_is_refused_until_forced_which_cancels_and_keeps_its_history() {
    let w = World::new(true).await;
    let sha = w.app("slow", json!({})).await;
    let app_id = w.kiln.ctx.store.app_by_name(w.kiln.ctx.store.tenant_by_name("team").await.unwrap().unwrap().id, "slow").await.unwrap().unwrap().id;
    let subscription = w
        .kiln
        .ctx
        .store
        .create_subscription(&NewSubscription {
            app_id,
            cluster: "c1".into(),
            namespace: "shop".into(),
            deployment: "slow".into(),
            container: "app".into(),
            repository: "team/slow".into(),
            policy: "manual".into(),
            rollback_on_failure: true,
            strategy: None,
        })
        .await
        .unwrap();
    let running = w.kiln.trigger(&w.token, "slow", json!({ "commit": sha })).await;
    w.kiln.wait_for_line(running, "slow line 1").await;
    let (status, answer) = w.delete("/api/v1/apps/slow").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains(&running.to_string()) && error.contains(&subscription.id.to_string()) && error.contains("force=1"), "{error}");
    assert_eq!(w.kiln.build(running).await.state, BuildState::Running, "a refused delete touched the build");
    let (status, _) = w.get("/api/v1/apps/slow").await;
    assert_eq!(status, StatusCode::OK, "a refused delete deleted the app");
    let (status, answer) = w.delete("/api/v1/apps/slow?force=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let (status, answer) = w.delete("/api/v1/apps/slow?force=1").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((&answer["cancelled_builds"], &answer["deleted_subscriptions"]), (&json!([running]), &json!([subscription.id])), "{answer}");
    let (build, log) = w.kiln.ended(running, BuildState::Cancelled, LIMIT).await;
    assert_eq!(build.reason.as_deref(), Some("cancelled: app slow was deleted"));
    assert!(log.contains("slow line 1"), "the log was not kept:\n{log}");
    assert!(w.kiln.ctx.store.subscriptions_of_app(app_id).await.unwrap().is_empty());

    // Gone: not found, not listed, not built by its project's webhooks, not retried…
    let (status, _) = w.get("/api/v1/apps/slow").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, apps) = w.get("/api/v1/apps").await;
    assert_eq!(apps["apps"], json!([]), "{apps}");
    let push = GitlabPush::branch("team/slow", &w.git.url("team/slow"), "main", &sha);
    let hook = Request::post("/hooks/gitlab")
        .header("x-gitlab-event", push.event())
        .header("x-gitlab-token", SECRET)
        .body(Body::from(push.body().to_string()))
        .unwrap();
    let (status, answer) = w.kiln.send(hook).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = w.kiln.request(Method::POST, &format!("/api/v1/builds/{running}/retry"), Some(&w.token), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("deleted"), "{answer}");
    // …but its build is still read by id and listed, under the app's name.
    let (status, answer) = w.get(&format!("/api/v1/builds/{running}")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((&answer["build"]["app"], &answer["build"]["state"]), (&json!("slow"), &json!("Cancelled")), "{answer}");
    let (_, listed) = w.get("/api/v1/builds").await;
    assert_eq!(listed["builds"][0]["id"], running, "{listed}");
    let (status, text) = w.get(&format!("/api/v1/builds/{running}/logs")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text["text"].as_str().unwrap().contains("slow line 1"), "{text}");

    // The name is free: a new app of it starts with no builds of the old one.
    let spec = app_spec("slow", &w.git.url("team/slow"), "team/slow", &format!("{}/team/slow", w.registry.host()), SECRET);
    w.kiln.app(&w.token, spec).await;
    let (_, mine) = w.get("/api/v1/builds?app=slow").await;
    assert_eq!(mine["builds"], json!([]), "{mine}");
    let (_, audit) = w.get("/api/v1/audit").await;
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "app.delete" && e["target"] == "app/slow"), "{audit}");
}

#[tokio::test]
async fn an_app_with_nothing_running_is_deleted_at_once_and_a_queued_build_is_cancelled_by_force() {
    let w = World::new(true).await;
    let sha = w.app("idle", json!({})).await;
    let (status, answer) = w.delete("/api/v1/apps/idle").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((&answer["cancelled_builds"], &answer["deleted_subscriptions"]), (&json!([]), &json!([])), "{answer}");
    let (status, _) = w.delete("/api/v1/apps/idle").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted twice");

    // Two slow builds fill the global cap of 2; a third waits Queued and is cancelled at once.
    w.app("busy", json!({})).await;
    let ids = [
        w.kiln.trigger(&w.token, "busy", json!({ "commit": sha, "ref": "a" })).await,
        w.kiln.trigger(&w.token, "busy", json!({ "commit": sha, "ref": "b" })).await,
        w.kiln.trigger(&w.token, "busy", json!({ "commit": sha, "ref": "c" })).await,
    ];
    w.kiln.wait_state(ids[0], BuildState::Running, LIMIT).await;
    w.kiln.wait_state(ids[1], BuildState::Running, LIMIT).await;
    assert_eq!(w.kiln.build(ids[2]).await.state, BuildState::Queued);
    let (status, answer) = w.delete("/api/v1/apps/busy?force=true").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["cancelled_builds"], json!(ids), "{answer}");
    for id in ids {
        let (build, _) = w.kiln.ended(id, BuildState::Cancelled, LIMIT).await;
        assert_eq!(build.reason.as_deref(), Some("cancelled: app busy was deleted"), "{build:?}");
    }
    // Its tokens are gone from the store with it.
    let deleted = w.kiln.ctx.store.app(w.kiln.build(ids[0]).await.app_id).await.unwrap().unwrap();
    assert!(deleted.deleted_at.is_some() && deleted.git_token.is_none(), "{:?}", deleted.deleted_at);

    // A build queued as the app was deleted (a webhook that raced the delete) never starts.
    let raced = NewBuild { tenant_id: deleted.tenant_id, app_id: deleted.id, git_ref: None, commit: sha, trigger: "webhook".into(), commit_info: Default::default() };
    let raced = w.kiln.ctx.store.create_build(&raced).await.unwrap().id;
    w.kiln.ctx.scheduler.wake();
    let (build, _) = w.kiln.ended(raced, BuildState::Cancelled, LIMIT).await;
    assert_eq!(build.reason.as_deref(), Some("cancelled: app busy was deleted"));
    assert!(w.kiln.ctx.store.steps(raced).await.unwrap().is_empty(), "a build of a deleted app ran");
}
