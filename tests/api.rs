//! The REST API: tokens, tenants, apps, builds; a tenant reaches only its own objects.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::fixtures::app_spec;
use crate::support::kiln::{TestKiln, ADMIN};

const SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let kiln = TestKiln::start(&[]).await;
    assert_eq!(kiln.request(Method::GET, "/healthz", None, None).await.0, StatusCode::OK);
    assert_eq!(kiln.request(Method::GET, "/readyz", None, None).await.0, StatusCode::OK);
    // Without a token (what it holds: tests/metrics.rs).
    let (status, body) = kiln.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("kiln_build_queue_wait_seconds_count 0\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let kiln = TestKiln::start(&[]).await;
    for token in [None, Some("nope"), Some("")] {
        let (status, body) = kiln.request(Method::GET, "/api/v1/apps", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn a_tenant_sees_and_triggers_only_its_own_apps_and_builds() {
    let kiln = TestKiln::start(&[]).await;
    let a = kiln.tenant("team-a").await;
    let b = kiln.tenant("team-b").await;
    kiln.app(&a, app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "127.0.0.1:9/a/api", "secret-a-123")).await;
    kiln.app(&b, app_spec("web", "http://127.0.0.1:9/b/web.git", "b/web", "127.0.0.1:9/b/web", "secret-b-123")).await;

    let (status, body) = kiln.request(Method::POST, "/api/v1/apps/api/builds", Some(&a), Some(json!({"commit": SHA, "ref": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["build"]["id"].as_i64().unwrap();
    assert_eq!(body["build"]["ref"], "refs/heads/main");

    // B cannot see A's app, build, or log, nor trigger A's app: 404, never data.
    for (method, path) in [
        (Method::GET, "/api/v1/apps/api".to_string()),
        (Method::GET, format!("/api/v1/builds/{id}")),
        (Method::GET, format!("/api/v1/builds/{id}/logs")),
        (Method::POST, format!("/api/v1/builds/{id}/cancel")),
        (Method::GET, "/api/v1/builds?app=api".to_string()),
    ] {
        let (status, body) = kiln.request(method.clone(), &path, Some(&b), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(!body.to_string().contains(SHA), "{body}");
    }
    let (status, _) = kiln.request(Method::POST, "/api/v1/apps/api/builds", Some(&b), Some(json!({"commit": SHA}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = kiln.request(Method::GET, "/api/v1/builds", Some(&b), None).await;
    assert_eq!(listed["builds"].as_array().unwrap().len(), 0, "{listed}");
    let (_, apps) = kiln.request(Method::GET, "/api/v1/apps", Some(&b), None).await;
    assert_eq!(apps["apps"].as_array().unwrap().len(), 1);
    assert_eq!(apps["apps"][0]["name"], "web");

    // Tenants cannot create tenants; admins see everything.
    let (status, _) = kiln.request(Method::POST, "/api/v1/tenants", Some(&a), Some(json!({"name": "x"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = kiln.request(Method::GET, &format!("/api/v1/builds/{id}"), Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn secrets_are_never_returned() {
    let kiln = TestKiln::start(&[]).await;
    let a = kiln.tenant("team-a").await;
    let mut spec = app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "127.0.0.1:9/a/api", "hook-secret-xyz");
    spec["git_token"] = "glpat-topsecret-value".into();
    let created = kiln.app(&a, spec).await;
    let (_, got) = kiln.request(Method::GET, "/api/v1/apps/api", Some(&a), None).await;
    for body in [created, got] {
        let text = body.to_string();
        assert!(!text.contains("hook-secret-xyz") && !text.contains("glpat-topsecret-value"), "{text}");
        assert_eq!(body["app"]["has_git_token"], true);
    }
    // A generated webhook secret is shown once, in the create answer.
    let spec = json!({"name": "gen", "git_url": "http://127.0.0.1:9/a/gen.git", "image_repository": "127.0.0.1:9/a/gen"});
    let created = kiln.app(&a, spec).await;
    assert!(created["webhook_secret"].as_str().unwrap().len() >= 32);
}

#[tokio::test]
async fn bad_api_input_gets_a_clear_400() {
    let kiln = TestKiln::start(&[]).await;
    let a = kiln.tenant("team-a").await;
    let cases = [
        (json!({"name": "Bad_Name", "git_url": "http://x/y.git", "image_repository": "127.0.0.1:9/a/b"}), "not a valid name"),
        (json!({"name": "ok", "git_url": "file:///etc", "image_repository": "127.0.0.1:9/a/b"}), "http(s) URL"),
        (json!({"name": "ok", "git_url": "http://user:pw@x/y.git", "image_repository": "127.0.0.1:9/a/b"}), "credentials"),
        (json!({"name": "ok", "git_url": "http://x/y.git", "image_repository": "no-registry"}), "registry host"),
        (json!({"name": "ok", "git_url": "http://x/y.git", "image_repository": "127.0.0.1:9/a/b", "kind": "rust"}), "unknown variant"),
        (json!({"name": "ok", "git_url": "http://x/y.git", "image_repository": "127.0.0.1:9/a/b", "colour": 1}), "unknown field"),
        (json!({"name": "ok", "git_url": "http://x/y.git", "image_repository": "127.0.0.1:9/a/b", "settings": {"dockerfile": "../../etc/passwd"}}), "relative path"),
    ];
    for (spec, why) in cases {
        let (status, body) = kiln.request(Method::POST, "/api/v1/apps", Some(&a), Some(spec.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{spec}: {body}");
        assert!(body["error"].as_str().unwrap().contains(why), "{spec}: {body}");
    }
    kiln.app(&a, app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "127.0.0.1:9/a/api", "secret-a-123")).await;
    let (status, _) = kiln.request(Method::POST, "/api/v1/apps", Some(&a), Some(app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "127.0.0.1:9/a/api", "secret-a-123"))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (body, why) in [
        (json!({"commit": "abc"}), "40-character"),
        (json!({"commit": SHA, "ref": "a..b"}), "not a valid git ref"),
        (json!({}), "give \"ref\""),
    ] {
        let (status, answer) = kiln.request(Method::POST, "/api/v1/apps/api/builds", Some(&a), Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }
    let (status, body) = kiln.request(Method::GET, "/api/v1/builds?state=Bogus", Some(&a), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_queued_build_can_be_cancelled_and_stays_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::kiln::test_config(dir.path(), &[]);
    config.executor.max_concurrent_builds = 1;
    let kiln = TestKiln::start_with(dir, config).await;
    let a = kiln.tenant("team-a").await;
    kiln.app(&a, app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "127.0.0.1:9/a/api", "secret-a-123")).await;
    // Insert straight into the store so the scheduler is not woken before the cancel.
    let build = kiln
        .ctx
        .store
        .create_build(&builder_api::store::NewBuild { tenant_id: 1, app_id: 1, git_ref: None, commit: SHA.into(), trigger: "manual".into(), commit_info: Default::default() })
        .await
        .unwrap();
    let (status, body) = kiln.request(Method::POST, &format!("/api/v1/builds/{}/cancel", build.id), Some(&a), None).await;
    // The scheduler may have picked it up meanwhile: then the running build is stopped.
    assert!(status == StatusCode::OK || status == StatusCode::ACCEPTED, "{body}");
    let done = kiln.wait_final(build.id, std::time::Duration::from_secs(30)).await;
    if status == StatusCode::OK {
        assert_eq!(done.state, builder_api::store::BuildState::Cancelled);
    }
    let (status, body) = kiln.request(Method::POST, &format!("/api/v1/builds/{}/cancel", build.id), Some(&a), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn a_finished_build_is_retried_as_a_new_build_of_the_same_commit_and_an_unfinished_one_is_not() {
    // A git server that takes connections and never answers: the build waits in its clone.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let git_url = format!("http://{}/a/api.git", silent.local_addr().unwrap());
    let kiln = TestKiln::start(&[]).await;
    let a = kiln.tenant("team-a").await;
    kiln.app(&a, app_spec("api", &git_url, "a/api", "127.0.0.1:9/a/api", "secret-a-123")).await;
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps/api/builds", Some(&a), Some(json!({"commit": SHA, "ref": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["build"]["id"].as_i64().unwrap();

    let (status, body) = kiln.request(Method::POST, &format!("/api/v1/builds/{id}/retry"), Some(&a), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("is still "), "{body}");

    kiln.request(Method::POST, &format!("/api/v1/builds/{id}/cancel"), Some(&a), None).await;
    kiln.wait_final(id, std::time::Duration::from_secs(30)).await;
    let (status, body) = kiln.request(Method::POST, &format!("/api/v1/builds/{id}/retry"), Some(&a), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let retried = &body["build"];
    assert_ne!(retried["id"].as_i64().unwrap(), id);
    assert_eq!((&retried["commit"], &retried["ref"], &retried["trigger"]), (&json!(SHA), &json!("refs/heads/main"), &json!("retry")));
    assert_eq!(body["retry_of"], id);
    drop(silent);
}
