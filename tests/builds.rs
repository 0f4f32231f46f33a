//! Builds end to end on the embedded default: a GitLab push → clone (real git over HTTP with a
//! token) → compile (real Go, Maven, buildah) → image → a real docker-registry, with the log.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::store::{Build, BuildState};
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, fixture_app, push_busybox_base, push_java_base, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::TestKiln;
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-test-token-abcdef";
const SECRET: &str = "hook-secret-builds";
const BUILD_LIMIT: Duration = Duration::from_secs(240);

/// A world for one test: a git server with a token, a registry, and Kiln.
struct World {
    git: GitServer,
    registry: TestRegistry,
    kiln: TestKiln,
    tenant_token: String,
}

impl World {
    async fn new() -> World {
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let kiln = TestKiln::start(&[&registry.host()]).await;
        let tenant_token = kiln.tenant("team").await;
        World { git, registry, kiln, tenant_token }
    }

    /// Creates repo `team/NAME` with the fixture's files and an app building it; returns the sha.
    async fn app_from_fixture(&self, name: &str, fixture: &str, extra: Value) -> String {
        let path = format!("team/{name}");
        let (sha, spec) = fixture_app(&self.git, &self.registry.host(), &path, fixture, (SECRET, GIT_TOKEN), extra);
        self.kiln.app(&self.tenant_token, spec).await;
        sha
    }

    async fn push(&self, name: &str, sha: &str) -> i64 {
        let path = format!("team/{name}");
        self.kiln.push_hook(&GitlabPush::branch(&path, &self.git.url(&path), "main", sha), SECRET).await
    }

    async fn trigger(&self, name: &str, sha: &str) -> i64 {
        self.kiln.trigger(&self.tenant_token, name, json!({"commit": sha, "ref": "main"})).await
    }

    async fn succeeded(&self, id: i64) -> Build {
        self.kiln.ended(id, BuildState::Succeeded, BUILD_LIMIT).await.0
    }

    async fn failed(&self, id: i64) -> (Build, String) {
        self.kiln.ended(id, BuildState::Failed, BUILD_LIMIT).await
    }

    /// Pulls the build's image back out of the registry and unpacks its layers.
    async fn unpack(&self, build: &Build) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let reference: registry_sync::ImageRef = build.image.as_deref().unwrap().parse().unwrap();
        let opts = registry_sync::RegistryOptions { insecure_registries: vec![self.registry.host()], ..Default::default() };
        let pulled = registry_sync::pull_image(&reference, &opts).await.unwrap();
        assert_eq!(Some(pulled.manifest_digest.as_str()), build.image_digest.as_deref());
        registry_sync::unpack_layers(&pulled, dir.path()).unwrap();
        dir
    }
}

#[tokio::test]
async fn a_go_push_becomes_an_image_whose_binary_runs_and_rebuilds_to_the_same_digest() {
    let w = World::new().await;
    let sha = w.app_from_fixture("hello", "go-hello", json!({})).await;
    let first = w.succeeded(w.push("hello", &sha).await).await;
    assert_eq!(first.kind.as_deref(), Some("go"));
    let digest = first.image_digest.clone().unwrap();
    assert!(first.image.as_deref().unwrap().ends_with(&format!("/team/hello@{digest}")), "{first:?}");

    let log = w.kiln.log(first.id).await;
    for expected in ["── step clone", "── step compile", "── step image", "pushed", &format!("checked out {} into src (", &sha[..12])] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    // Paths are shown within the build's workspace, not where the server keeps workspaces.
    let data_dir = w.kiln.ctx.config.store.data_dir.display().to_string();
    assert!(!log.contains(&data_dir), "the log shows the server's data dir {data_dir}:\n{log}");

    let root = w.unpack(&first).await;
    let out = std::process::Command::new(root.path().join("app/hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from kiln go sample (dev)\n");

    // The same commit again: the same image, byte for byte.
    let again = w.succeeded(w.trigger("hello", &sha).await).await;
    assert_eq!(again.image_digest.as_deref(), Some(digest.as_str()));

    // The log is readable over HTTP after the build, as plain text.
    let (status, body) = w.kiln.request(Method::GET, &format!("/api/v1/builds/{}/logs", first.id), Some(&w.tenant_token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["text"].as_str().unwrap(), log);
}

#[tokio::test]
async fn a_maven_push_becomes_an_image_with_its_classes_and_rebuilds_to_the_same_digest() {
    let w = World::new().await;
    let base = push_java_base(&w.registry.host());
    let sha = w.app_from_fixture("greeter", "maven-hello", json!({ "base_image": base })).await;
    let first = w.succeeded(w.push("greeter", &sha).await).await;
    assert_eq!(first.kind.as_deref(), Some("maven"));
    let root = w.unpack(&first).await;
    // Jib-style layout: classes (and resources) under /app/classes, started by Main-Class.
    let out = std::process::Command::new("java").arg("-cp").arg(root.path().join("app/classes")).arg("dev.kiln.hello.Main").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from kiln maven sample\n");
    let again = w.succeeded(w.trigger("greeter", &sha).await).await;
    assert_eq!(again.image_digest, first.image_digest);
}

#[tokio::test]
async fn a_maven_commit_of_an_auto_app_without_a_java_base_fails_before_it_compiles() {
    let w = World::new().await;
    let sha = w.app_from_fixture("nojre", "maven-hello", json!({})).await;
    let (build, log) = w.failed(w.push("nojre", &sha).await).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains("Maven project") && reason.contains("set the app's base_image"), "{reason}");
    assert!(log.contains(&format!("[kiln] {reason}")), "{log}");
    // Nothing was compiled or pushed: an image on scratch that starts `java` could never run.
    let steps = w.kiln.ctx.store.steps(build.id).await.unwrap();
    assert_eq!(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["clone"], "{log}");
    assert!(build.image.is_none());
}

#[tokio::test]
async fn a_multi_stage_dockerfile_push_is_built_with_buildah() {
    let w = World::new().await;
    let base = push_busybox_base(&w.registry.host());
    let sha = w.app_from_fixture("staged", "dockerfile-hello", json!({"settings": {"build_args": {"BASE": base}}})).await;
    let build = w.succeeded(w.push("staged", &sha).await).await;
    assert_eq!(build.kind.as_deref(), Some("dockerfile"));
    let root = w.unpack(&build).await;
    assert_eq!(std::fs::read_to_string(root.path().join("message.txt")).unwrap(), "built by stage one\n");
}

#[tokio::test]
async fn a_commit_that_does_not_compile_fails_with_the_compiler_error_in_its_log() {
    let w = World::new().await;
    let repo = w.git.create_repo("team/broken");
    let sha = repo.commit_files(
        &[("go.mod", &b"module example.com/broken\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() { undefinedThing() }\n", false)],
        "broken",
    );
    let mut spec = app_spec("broken", &w.git.url("team/broken"), "team/broken", &format!("{}/team/broken", w.registry.host()), SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    w.kiln.app(&w.tenant_token, spec).await;
    let (build, log) = w.failed(w.push("broken", &sha).await).await;
    assert!(log.contains("undefined: undefinedThing"), "{log}");
    let reason = build.reason.unwrap();
    assert!(reason.starts_with("compile failed"), "{reason}");
    let steps = w.kiln.ctx.store.steps(build.id).await.unwrap();
    let states: Vec<(&str, &str)> = steps.iter().map(|s| (s.name.as_str(), s.state.as_str())).collect();
    assert_eq!(states, [("clone", "Succeeded"), ("compile", "Failed")]);
}

#[tokio::test]
async fn clone_and_push_failures_end_failed_with_a_reason_that_names_the_cause() {
    let w = World::new().await;
    let sha = w.app_from_fixture("hello", "go-hello", json!({})).await;

    // A commit the server does not have.
    let (build, _) = w.failed(w.trigger("hello", &"ab".repeat(20)).await).await;
    assert!(build.reason.as_deref().unwrap().contains("not found"), "{:?}", build.reason);

    // A wrong git token.
    let mut spec = app_spec("wrongtoken", &w.git.url("team/hello"), "team/wrongtoken", &format!("{}/team/x", w.registry.host()), SECRET);
    spec["git_token"] = "glpat-wrong-token-000".into();
    w.kiln.app(&w.tenant_token, spec).await;
    let (build, log) = w.failed(w.trigger("wrongtoken", &sha).await).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains("credentials") || reason.contains("authentication"), "{reason}");
    assert!(!reason.contains("glpat-wrong-token-000") && !log.contains("glpat-wrong-token-000"), "{reason}\n{log}");

    // A git server that is not there.
    let spec = app_spec("nogit", "http://127.0.0.1:9/team/hello.git", "team/nogit", &format!("{}/team/x", w.registry.host()), SECRET);
    w.kiln.app(&w.tenant_token, spec).await;
    let (build, _) = w.failed(w.trigger("nogit", &sha).await).await;
    assert!(build.reason.as_deref().unwrap().contains("cannot reach git server 127.0.0.1:9"), "{:?}", build.reason);

    // A registry that is not there.
    let mut spec = app_spec("noreg", &w.git.url("team/hello"), "team/noreg", "127.0.0.1:9/team/noreg", SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    w.kiln.app(&w.tenant_token, spec).await;
    let (build, _) = w.failed(w.trigger("noreg", &sha).await).await;
    let reason = build.reason.unwrap();
    assert!(reason.starts_with("image failed") && reason.contains("127.0.0.1:9"), "{reason}");
}

#[tokio::test]
async fn a_manual_trigger_by_ref_builds_its_tip_and_a_follower_gets_the_whole_log_live() {
    let w = World::new().await;
    let sha = w.app_from_fixture("byref", "go-hello", json!({})).await;
    let (status, body) =
        w.kiln.request(Method::POST, "/api/v1/apps/byref/builds", Some(&w.tenant_token), Some(json!({"ref": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["build"]["commit"], sha.as_str(), "the ref resolves to the branch tip");
    assert_eq!(body["build"]["ref"], "refs/heads/main");
    let id = body["build"]["id"].as_i64().unwrap();

    // Follow over a real socket from the start: the stream ends when the build ends, and holds
    // exactly the stored log.
    let client = reqwest::Client::new();
    let followed = client
        .get(w.kiln.url(&format!("/api/v1/builds/{id}/logs?follow=1")))
        .bearer_auth(&w.tenant_token)
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), 200);
    let followed = tokio::time::timeout(BUILD_LIMIT, followed.text()).await.expect("the follow stream ends with the build").unwrap();
    let build = w.kiln.build(id).await;
    assert!(build.state.is_final(), "the stream ended before the build: {build:?}");
    assert_eq!(build.state, BuildState::Succeeded, "{followed}");
    assert_eq!(followed, w.kiln.log(id).await, "the followed log differs from the stored one");
    assert!(followed.contains("── step compile") && followed.contains("pushed"), "{followed}");

    // A ref the server does not have, and a git server that is down, answer clearly.
    let (status, body) =
        w.kiln.request(Method::POST, "/api/v1/apps/byref/builds", Some(&w.tenant_token), Some(json!({"ref": "no-such-branch"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("refs/heads/no-such-branch does not exist"), "{body}");
    let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps/byref/builds", Some(&w.tenant_token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let mut spec = app_spec("gone", "http://127.0.0.1:9/team/gone.git", "team/gone", &format!("{}/team/gone", w.registry.host()), SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    w.kiln.app(&w.tenant_token, spec).await;
    let (status, body) =
        w.kiln.request(Method::POST, "/api/v1/apps/gone/builds", Some(&w.tenant_token), Some(json!({"ref": "main"}))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("127.0.0.1:9") && !error.contains(GIT_TOKEN), "{error}");
}

/// A failed build's reason quotes the line that says why — the compiler's first located error —
/// not the last thing printed, and never terminal escape codes (Maven colours its output and
/// ends with help links and a colour reset). Go the same: its `file.go:line:col:` line.
#[tokio::test]
async fn a_failed_compile_is_explained_by_its_first_located_error_without_escape_codes() {
    let w = World::new().await;
    let broken = |fixture: &str, file: &str, text: &str| {
        let mut files = crate::support::fixtures::fixture_files(fixture);
        for f in files.iter_mut().filter(|f| f.0.ends_with(file)) {
            f.1 = text.as_bytes().to_vec();
        }
        files
    };
    let cases = [
        (
            "jbroken",
            "maven",
            broken("maven-hello", "Main.java", "package dev.kiln.hello;\npublic class Main {\n    public static void main(String[] a) { Sytem.out.println(1); }\n}\n"),
            "compile failed (exit code 1): [ERROR] ",
            "Main.java:[3,",
        ),
        (
            "gbroken",
            "go",
            broken("go-hello", "main.go", "package main\n\nfunc main() {\n\tundefinedThing()\n}\n"),
            "compile failed (exit code 2): ",
            "main.go:4:2: undefined: undefinedThing",
        ),
    ];
    for (name, kind, files, start, want) in cases {
        let path = format!("team/{name}");
        let repo = w.git.create_repo(&path);
        let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
        let sha = repo.commit_files(&files, "broken");
        let mut spec = app_spec(name, &w.git.url(&path), &path, &format!("{}/{path}", w.registry.host()), SECRET);
        spec["git_token"] = GIT_TOKEN.into();
        spec["kind"] = kind.into();
        if kind == "maven" {
            // A maven app names its Java base (the compile fails before the image step needs it).
            spec["base_image"] = format!("{}/library/jre:17", w.registry.host()).into();
        }
        w.kiln.app(&w.tenant_token, spec).await;
        let (build, log) = w.failed(w.push(name, &sha).await).await;
        let reason = build.reason.unwrap();
        assert!(reason.starts_with(start) && reason.contains(want), "{kind}: {reason}\n{log}");
        assert!(!reason.contains('\u{1b}'), "{kind}: escape codes in {reason:?}");
    }
}
