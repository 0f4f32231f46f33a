//! A build's life beyond the happy path: cancel while running, time out, and `kiln serve` killed
//! with SIGKILL mid-build and started again — every stored log line survives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::store::BuildState;
use serde_json::json;

use crate::support::fixtures::{app_spec, fake_go, numbered_lines};
use crate::support::git_server::GitServer;
use crate::support::kiln::{open_store, test_config, TestKiln, ADMIN};
use crate::support::registry::{free_port, TestRegistry};
use crate::support::serve_process::{write_config, ServeProcess};

const GIT_TOKEN: &str = "glpat-lifecycle-token";

/// A stand-in for `go` that prints a numbered line every 50 ms for a long time and records its
/// pid, so a test can see a build mid-step. The clone before it is real.
/// A `go` that writes its pid to `DIR/slow.pid`, then prints a line every 50 ms for over an hour.
fn slow_compiler(dir: &Path) -> PathBuf {
    let body = format!("echo $$ > {}\n{}", dir.join("slow.pid").display(), numbered_lines(100_000, 50));
    fake_go(dir, "slow-go", &body)
}

fn alive(pid_file: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file) else { return false };
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default().contains(") Z ")
}

async fn repo_with_go_app(git: &GitServer) -> String {
    let repo = git.create_repo("team/slow");
    repo.commit_files(&[("go.mod", &b"module example.com/slow\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)], "slow")
}

#[tokio::test]
async fn cancelling_a_running_build_kills_its_processes_and_keeps_its_log() {
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&registry.host()]);
    config.toolchains.go = slow_compiler(dir.path()).display().to_string();
    let pid_file = dir.path().join("slow.pid");
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("team").await;
    let sha = repo_with_go_app(&git).await;
    let mut spec = app_spec("slow", &git.url("team/slow"), "team/slow", &format!("{}/team/slow", registry.host()), "secret-slow");
    spec["git_token"] = GIT_TOKEN.into();
    kiln.app(&token, spec).await;
    let (_, body) = kiln.request(Method::POST, "/api/v1/apps/slow/builds", Some(&token), Some(json!({"commit": sha}))).await;
    let id = body["build"]["id"].as_i64().unwrap();

    kiln.wait_for_line(id, "slow line 5").await;
    assert!(alive(&pid_file));
    let (status, body) = kiln.request(Method::POST, &format!("/api/v1/builds/{id}/cancel"), Some(&token), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let build = kiln.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(build.state, BuildState::Cancelled);
    assert_eq!(build.reason.as_deref(), Some("cancelled during step compile"));
    assert!(!alive(&pid_file), "the step's process outlived the cancel");
    let log = kiln.log(id).await;
    assert!(log.contains("slow line 5") && log.trim_end().ends_with("Cancelled: cancelled during step compile"), "{log}");
    // Lines are numbered without gaps.
    let lines = kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap();
    assert!(lines.iter().enumerate().all(|(i, l)| l.seq == i as i64 + 1));
}

#[tokio::test]
async fn a_build_past_its_time_limit_ends_timed_out() {
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.toolchains.go = slow_compiler(dir.path()).display().to_string();
    config.executor.build_timeout_secs = 3;
    let pid_file = dir.path().join("slow.pid");
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("team").await;
    let sha = repo_with_go_app(&git).await;
    let mut spec = app_spec("slow", &git.url("team/slow"), "team/slow", "127.0.0.1:9/team/slow", "secret-slow");
    spec["git_token"] = GIT_TOKEN.into();
    kiln.app(&token, spec).await;
    let (_, body) = kiln.request(Method::POST, "/api/v1/apps/slow/builds", Some(&token), Some(json!({"commit": sha}))).await;
    let build = kiln.wait_final(body["build"]["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(build.state, BuildState::TimedOut, "{:?}", build.reason);
    assert!(build.reason.unwrap().contains("exceeded its timeout of"));
    assert!(!alive(&pid_file));
}

#[tokio::test]
async fn kiln_killed_mid_build_and_restarted_marks_the_build_interrupted_and_loses_no_stored_line() {
    crate::support::init();
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let script = slow_compiler(dir.path());
    let config_file = write_config(dir.path(), ADMIN, Path::new(env!("CARGO_BIN_EXE_kiln")), &format!("[toolchains]\ngo = \"{}\"\n", script.display()));
    let port = free_port();
    let sha = repo_with_go_app(&git).await;

    let serve = ServeProcess::start(&config_file, port);
    serve.ready().await;
    let token = serve.tenant(ADMIN, "team").await;
    let mut spec = app_spec("slow", &git.url("team/slow"), "team/slow", "127.0.0.1:9/team/slow", "secret-slow");
    spec["git_token"] = GIT_TOKEN.into();
    let (status, answer) = serve.call(Method::POST, "/api/v1/apps", &token, Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (_, build) = serve.call(Method::POST, "/api/v1/apps/slow/builds", &token, Some(json!({"commit": sha}))).await;
    let id = build["build"]["id"].as_i64().unwrap();

    // Wait until the build is well into its compile step, reading the log over HTTP.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, log) = serve.call(Method::GET, &format!("/api/v1/builds/{id}/logs"), &token, None).await;
        let log = log.as_str().unwrap_or_default().to_string();
        if log.contains("slow line 10") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the build never got going:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut serve = serve;
    serve.kill();

    let stored_before = {
        let store = open_store(&data).await;
        store.log_after(id, 0, 1_000_000).await.unwrap()
    };
    assert!(stored_before.iter().any(|l| l.line == "slow line 10"));

    let serve = ServeProcess::start(&config_file, port);
    serve.ready().await;
    let (_, build) = serve.call(Method::GET, &format!("/api/v1/builds/{id}"), &token, None).await;
    assert_eq!(build["build"]["state"], "Failed", "{build}");
    assert!(build["build"]["reason"].as_str().unwrap().starts_with("interrupted"), "{build}");
    let store = open_store(&data).await;
    let after = store.log_after(id, 0, 1_000_000).await.unwrap();
    assert_eq!(&after[..stored_before.len()], &stored_before[..], "a stored line changed or vanished");
    assert!(after.last().unwrap().line.contains("interrupted"));
}
