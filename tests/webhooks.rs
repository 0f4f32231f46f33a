//! `POST /hooks/gitlab`: verification, dedupe, ignored events, and bad input.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, GitlabPush};
use crate::support::kiln::TestKiln;

const SECRET: &str = "hook-secret-123";
const PROJECT: &str = "team/hello";
const GIT_URL: &str = "http://127.0.0.1:9/team/hello.git";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

async fn kiln_with_app() -> TestKiln {
    let kiln = TestKiln::start(&[]).await;
    let token = kiln.tenant("team").await;
    let mut spec = app_spec("hello", GIT_URL, PROJECT, "127.0.0.1:9/team/hello", SECRET);
    spec["branch_filter"] = "main".into();
    kiln.app(&token, spec).await;
    kiln
}

fn hook(body: impl Into<Body>, event: &str, token: &str, key: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/hooks/gitlab")
        .header("content-type", "application/json")
        .header("x-gitlab-event", event)
        .header("x-gitlab-token", token);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(body.into()).unwrap()
}

fn push(branch: &str) -> GitlabPush {
    GitlabPush::branch(PROJECT, GIT_URL, branch, SHA)
}

async fn send(kiln: &TestKiln, push: &GitlabPush, token: &str, key: Option<&str>) -> (StatusCode, Value) {
    kiln.send(hook(push.body().to_string(), push.event(), token, key)).await
}

#[tokio::test]
async fn a_push_queues_one_build_of_the_pushed_commit() {
    let kiln = kiln_with_app().await;
    let (status, body) = send(&kiln, &push("main"), SECRET, Some("k1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["builds"][0].as_i64().unwrap();
    let build = kiln.build(id).await;
    assert_eq!(build.commit, SHA);
    assert_eq!(build.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(build.trigger, "webhook");
}

/// The build shows what the push said of its head commit — message, author, link — and a retry
/// of it too (same commit); a build started by hand knows none of it.
#[tokio::test]
async fn a_build_carries_its_head_commits_message_author_and_link_from_the_push() {
    let kiln = TestKiln::start(&[]).await;
    let token = kiln.tenant("team").await;
    kiln.app(&token, app_spec("hello", GIT_URL, PROJECT, "127.0.0.1:9/team/hello", SECRET)).await;
    let p = push("main").with_head_commit("Fix the login form\n\nIt lost the password on a retry.", "Ada Lovelace");
    let id = kiln.push_hook(&p, SECRET).await;
    let get = |id: i64| {
        let kiln = &kiln;
        let token = token.clone();
        async move {
            let (status, body) = kiln.request(axum::http::Method::GET, &format!("/api/v1/builds/{id}"), Some(&token), None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["build"].clone()
        }
    };
    let shown = |b: &Value| (b["commit_message"].clone(), b["commit_author"].clone(), b["commit_url"].clone());
    let pushed = (json!("Fix the login form\n\nIt lost the password on a retry."), json!("Ada Lovelace"), json!(p.commit_url()));
    assert_eq!(shown(&get(id).await), pushed);

    // The clone of 127.0.0.1:9 fails soon; its retry builds the same commit, so says the same.
    kiln.wait_final(id, std::time::Duration::from_secs(60)).await;
    let (status, body) = kiln.request(axum::http::Method::POST, &format!("/api/v1/builds/{id}/retry"), Some(&token), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(shown(&body["build"]), pushed);
    let retry = body["build"]["id"].as_i64().unwrap();
    assert_eq!(shown(&get(retry).await), pushed);

    let manual = kiln.trigger(&token, "hello", json!({ "commit": SHA })).await;
    assert_eq!(shown(&get(manual).await), (Value::Null, Value::Null, Value::Null));
}

#[tokio::test]
async fn twenty_concurrent_redeliveries_make_exactly_one_build() {
    let kiln = kiln_with_app().await;
    let p = push("main");
    let sends = (0..20).map(|_| send(&kiln, &p, SECRET, Some("same-delivery")));
    let answers = futures_util::future::join_all(sends).await;
    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::ACCEPTED).count();
    let duplicates = answers.iter().filter(|(s, b)| *s == StatusCode::OK && b["status"] == "duplicate").count();
    assert_eq!((accepted, duplicates), (1, 19), "{answers:?}");
    let ids: Vec<&Value> = answers.iter().map(|(_, b)| &b["builds"][0]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "every answer names the same build: {ids:?}");
    let builds = kiln.ctx.store.builds(None, None, None, 100).await.unwrap();
    assert_eq!(builds.len(), 1);
    assert_eq!(kiln.ctx.store.delivery_count("gitlab").await.unwrap(), 1);
}

#[tokio::test]
async fn the_gitlab_event_uuid_dedupes_when_there_is_no_idempotency_key() {
    let kiln = kiln_with_app().await;
    let p = push("main");
    for expected in [StatusCode::ACCEPTED, StatusCode::OK] {
        let req = Request::post("/hooks/gitlab")
            .header("x-gitlab-event", "Push Hook")
            .header("x-gitlab-token", SECRET)
            .header("x-gitlab-event-uuid", "6f1bb7a4-0000-4000-8000-000000000001")
            .body(Body::from(p.body().to_string()))
            .unwrap();
        assert_eq!(kiln.send(req).await.0, expected);
    }
    assert_eq!(kiln.ctx.store.builds(None, None, None, 100).await.unwrap().len(), 1);
}

#[tokio::test]
async fn ignored_events_get_200_with_the_reason_and_build_nothing() {
    let kiln = kiln_with_app().await;
    let cases = [
        (send(&kiln, &push("main").deleting(), SECRET, Some("del")).await, "deleted"),
        (send(&kiln, &push("feature/x"), SECRET, Some("nomatch")).await, "branch filter"),
        (kiln.send(hook(push("main").body().to_string(), "Merge Request Hook", SECRET, Some("mr"))).await, "Merge Request Hook"),
    ];
    for ((status, body), why) in cases {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ignored");
        assert!(body["reason"].as_str().unwrap().contains(why), "{body}");
    }
    assert!(kiln.ctx.store.builds(None, None, None, 100).await.unwrap().is_empty());
}

/// As GitLab's own CI: `[skip ci]` / `[ci skip]` in the HEAD commit's message, or the push option
/// `ci.skip` (which GitLab passes on parsed, as `{"ci": {"skip": true}}`), answers 200 ignored and
/// builds nothing; a skip marker in an older commit of the same push is history and builds.
#[tokio::test]
async fn skip_ci_in_the_head_commit_or_the_ci_skip_push_option_builds_nothing_and_an_older_marker_does_not_count() {
    let kiln = kiln_with_app().await;
    const OLDER: &str = "fedcba9876543210fedcba9876543210fedcba98";
    let with = |commits: Value, options: Value, key: &str| {
        let mut body = push("main").body();
        body["commits"] = commits;
        body["push_options"] = options;
        hook(body.to_string(), "Push Hook", SECRET, Some(key))
    };
    let head = |message: &str| json!([{"id": OLDER, "message": "older work"}, {"id": SHA, "message": message}]);
    let skipped = [
        (with(head("fix the typo [skip ci]"), json!({}), "skip-1"), "[skip ci]"),
        (with(head("Docs only\n\n[CI SKIP]"), json!({}), "skip-2"), "[ci skip]"),
        (with(head("plain message"), json!({"ci": {"skip": true}}), "skip-3"), "ci.skip"),
    ];
    for (req, why) in skipped {
        let (status, body) = kiln.send(req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ignored", "{body}");
        assert!(body["reason"].as_str().unwrap().contains(why), "{body}");
    }
    assert!(kiln.ctx.store.builds(None, None, None, 100).await.unwrap().is_empty());

    // The marker in an older commit only: built.
    let older = json!([{"id": OLDER, "message": "wip [skip ci]"}, {"id": SHA, "message": "ready"}]);
    let (status, body) = kiln.send(with(older, json!({}), "skip-4")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(kiln.ctx.store.builds(None, None, None, 100).await.unwrap().len(), 1);

    // A sender without the secret learns nothing, skip marker or not.
    let mut body = push("main").body();
    body["commits"] = head("[skip ci]");
    let (status, _) = kiln.send(hook(body.to_string(), "Push Hook", "wrong-secret", Some("skip-5"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_tag_push_builds_whatever_the_branch_filter() {
    let kiln = kiln_with_app().await;
    let (status, body) = send(&kiln, &GitlabPush::tag(PROJECT, GIT_URL, "v1.0.0", SHA), SECRET, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let build = kiln.build(body["builds"][0].as_i64().unwrap()).await;
    assert_eq!(build.git_ref.as_deref(), Some("refs/tags/v1.0.0"));
}

#[tokio::test]
async fn wrong_token_unknown_project_and_bad_bodies_are_refused_clearly() {
    let kiln = kiln_with_app().await;
    let (status, body) = send(&kiln, &push("main"), "wrong-secret", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.to_string().contains(SECRET));

    let (status, body) = send(&kiln, &push("main"), "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let other = GitlabPush::branch("other/project", "http://127.0.0.1:9/other.git", "main", SHA);
    let (status, body) = send(&kiln, &other, SECRET, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("other/project"));

    let (status, body) = kiln.send(hook("{\"object_kind\": \"push\", ", "Push Hook", SECRET, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("EOF"), "truncated JSON names where it ended: {body}");

    let (status, body) = kiln.send(hook("not json at all", "Push Hook", SECRET, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("invalid JSON"), "{body}");

    let (status, _) = kiln.send(hook("[1,2,3]", "Push Hook", SECRET, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut big = push("main").body();
    big["padding"] = "x".repeat(128 * 1024).into();
    let (status, body) = kiln.send(hook(big.to_string(), "Push Hook", SECRET, None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");

    let mut no_commit = push("main").body();
    no_commit["after"] = "not-a-sha".into();
    no_commit["checkout_sha"] = Value::Null;
    let (status, body) = kiln.send(hook(no_commit.to_string(), "Push Hook", SECRET, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    assert!(kiln.ctx.store.builds(None, None, None, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn hostile_branch_names_are_stored_verbatim_or_refused_never_run() {
    let kiln = TestKiln::start(&[]).await;
    let token = kiln.tenant("team").await;
    kiln.app(&token, app_spec("hello", GIT_URL, PROJECT, "127.0.0.1:9/team/hello", SECRET)).await;

    // Valid git ref names full of shell metacharacters: accepted, kept as data.
    for (i, branch) in ["feat/$(touch${IFS}/tmp/kiln-pwned)", "x;touch${IFS}/tmp/kiln-pwned;`id`", "a|b&&c>d'\"<"].iter().enumerate() {
        let (status, body) = send(&kiln, &push(branch), SECRET, Some(&format!("ok{i}"))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{branch}: {body}");
        let build = kiln.build(body["builds"][0].as_i64().unwrap()).await;
        assert_eq!(build.git_ref.as_deref(), Some(format!("refs/heads/{branch}").as_str()));
    }
    // Not valid ref names: refused with a reason.
    for (i, branch) in ["../../etc/passwd", "a..b", "has space", "new\nline"].iter().enumerate() {
        let (status, body) = send(&kiln, &push(branch), SECRET, Some(&format!("bad{i}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{branch:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("not a valid git ref"), "{body}");
    }
    // The builds run (and fail: nothing serves the git URL); nothing was executed by a shell.
    for b in kiln.ctx.store.builds(None, None, None, 100).await.unwrap() {
        kiln.wait_final(b.id, std::time::Duration::from_secs(60)).await;
    }
    assert!(!std::path::Path::new("/tmp/kiln-pwned").exists());
}

/// A burst of more connections than std's and tokio's default backlog (128) is queued by the
/// listener `kiln serve` uses, not dropped: a dropped SYN is only sent again a second later.
#[tokio::test]
async fn a_burst_of_connections_beyond_the_default_backlog_is_queued_not_dropped() {
    const BURST: usize = 400;
    let listener = builder_api::server::listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing accepts, so the kernel completes a handshake only while the accept queue has room;
    // a dropped SYN would be retried after 1 s, past the timeout.
    let connects = (0..BURST).map(|_| {
        tokio::time::timeout(std::time::Duration::from_millis(800), tokio::net::TcpStream::connect(addr))
    });
    let results = futures_util::future::join_all(connects).await;
    let established = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(
        established, BURST,
        "connections queued at once (the kernel caps the backlog at net.core.somaxconn = {})",
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap_or_default().trim()
    );
    drop(listener);
}
