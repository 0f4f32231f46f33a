//! Watching builds live: the log as Server-Sent Events (backlog, live tail, step events, result),
//! resumed with `Last-Event-ID`, fanned out to many followers, capped per build, and masked in
//! every view.

use std::path::Path;
use std::time::Duration;

use builder_api::cli::sse::{SseEvent, SseParser};
use builder_api::store::BuildState;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, fake_go, numbered_lines};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln, ADMIN};
use crate::support::serve_process::write_config;
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-stream-token-98765";
const REGISTRY_PASSWORD: &str = "registry-pass-4242-xyz";
const LIMIT: Duration = Duration::from_secs(120);

/// A stand-in for `go`: `body` (shell) runs first, then the real Go with the same arguments.
struct World {
    git: GitServer,
    registry: TestRegistry,
    kiln: TestKiln,
    token: String,
}

impl World {
    async fn new(go_body: &str) -> World {
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start_with_htpasswd("pusher", REGISTRY_PASSWORD).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[&registry.host()]);
        config.toolchains.go = fake_go(dir.path(), "go-wrapper", go_body).display().to_string();
        config.registry.username = Some("pusher".into());
        config.registry.password = Some(REGISTRY_PASSWORD.into());
        let kiln = TestKiln::start_with(dir, config).await;
        let token = kiln.tenant("team").await;
        World { git, registry, kiln, token }
    }

    async fn build(&self, name: &str) -> i64 {
        let repo = self.git.create_repo(&format!("team/{name}"));
        let sha = repo.commit_files(
            &[("go.mod", &b"module example.com/s\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)],
            "s",
        );
        let mut spec = app_spec(name, &self.git.url(&format!("team/{name}")), &format!("team/{name}"), &format!("{}/team/{name}", self.registry.host()), "hook-secret-s");
        spec["git_token"] = GIT_TOKEN.into();
        self.kiln.app(&self.token, spec).await;
        self.kiln.trigger(&self.token, name, json!({"commit": sha})).await
    }

    /// Opens the SSE stream (over a real socket) after `last_id`.
    async fn open(&self, id: i64, last_id: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .get(self.kiln.url(&format!("/api/v1/builds/{id}/logs")))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(last) = last_id {
            req = req.header("last-event-id", last);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        res
    }

    /// Reads events until `end` (inclusive), or until `stop` says so.
    async fn read(&self, res: reqwest::Response, mut stop: impl FnMut(&[SseEvent]) -> bool) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut body = res.bytes_stream();
        let read = async {
            while let Some(chunk) = body.next().await {
                events.extend(parser.feed(&chunk.unwrap()));
                if events.last().is_some_and(|e| e.event == "end") || stop(&events) {
                    break;
                }
            }
        };
        tokio::time::timeout(LIMIT, read).await.expect("the stream neither ended nor stopped in time");
        events
    }
}

fn data(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

/// Sequence numbers of line and step events, which must run 1, 2, 3, … without a gap.
fn assert_contiguous(events: &[SseEvent]) {
    let ids: Vec<i64> = events.iter().filter(|e| e.event != "end").map(|e| e.id.as_deref().unwrap().parse().unwrap()).collect();
    let expected: Vec<i64> = (1..=ids.len() as i64).collect();
    assert_eq!(ids, expected, "ids have a gap, a repeat or a reordering");
    for e in events.iter().filter(|e| e.event != "end") {
        assert_eq!(data(e)["seq"].to_string(), *e.id.as_ref().unwrap());
    }
}

#[tokio::test]
async fn a_late_follower_gets_the_backlog_then_the_live_tail_then_the_result() {
    let w = World::new(&numbered_lines(80, 25)).await;
    let id = w.build("late").await;
    // Join mid-build: once the compile step has printed a few lines.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !w.kiln.log(id).await.contains("slow line 10") {
        assert!(tokio::time::Instant::now() < deadline, "{}", w.kiln.log(id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = w.read(w.open(id, None).await, |_| false).await;
    assert_contiguous(&events);
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    let build = w.kiln.build(id).await;
    assert_eq!(data(end)["state"], build.state.as_str());
    assert_eq!(build.state, BuildState::Succeeded, "{:?}", build.reason);
    assert_eq!(data(end)["digest"], build.image_digest.as_deref().unwrap());
    // The same lines as the stored log, in order, from the first.
    let streamed: Vec<String> = events.iter().filter(|e| e.event != "end").map(|e| data(e)["line"].as_str().unwrap().to_string()).collect();
    let stored: Vec<String> = w.kiln.log(id).await.lines().map(String::from).collect();
    assert_eq!(streamed, stored);
    let slow: Vec<&String> = streamed.iter().filter(|l| l.starts_with("slow line")).collect();
    assert_eq!(slow.len(), 80);
    // Step boundaries are events with their state and duration.
    let steps: Vec<Value> = events.iter().filter(|e| e.event == "step").map(data).collect();
    let compile_done = steps.iter().find(|s| s["step"] == "compile" && s["meta"]["phase"] == "finished").expect("compile finished event");
    assert_eq!(compile_done["meta"]["state"], "Succeeded");
    assert!(compile_done["meta"]["duration_ms"].as_i64().unwrap() >= 80 * 20, "{compile_done}");
    let names: Vec<String> = steps.iter().filter(|s| s["meta"]["phase"] == "started").map(|s| s["step"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["clone", "compile", "image"]);
}

#[tokio::test]
async fn a_follower_that_reconnects_with_last_event_id_gets_no_gap_and_no_duplicate() {
    let w = World::new(&numbered_lines(60, 20)).await;
    let id = w.build("resume").await;
    let mut all = Vec::new();
    let mut last: Option<String> = None;
    // Drop the connection after every 15 events and resume from the last id seen.
    loop {
        let res = w.open(id, last.as_deref()).await;
        let got = w.read(res, |evs| evs.len() >= 15).await;
        last = got.iter().rev().find_map(|e| e.id.clone()).or(last);
        let ended = got.last().is_some_and(|e| e.event == "end");
        all.extend(got);
        if ended {
            break;
        }
    }
    assert_contiguous(&all);
    assert_eq!(all.iter().filter(|e| data(e)["line"].as_str().is_some_and(|l| l.starts_with("slow line"))).count(), 60);
    // A malformed Last-Event-ID is refused clearly.
    let res = reqwest::Client::new()
        .get(w.kiln.url(&format!("/api/v1/builds/{id}/logs")))
        .bearer_auth(&w.token)
        .header("accept", "text/event-stream")
        .header("last-event-id", "twelve")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn fifty_concurrent_followers_receive_identical_streams_and_a_stalled_one_slows_nobody() {
    let w = World::new(&numbered_lines(200, 5)).await;
    let id = w.build("fanout").await;
    // A follower that never reads: its socket buffers fill, the build must not care.
    let stalled = w.open(id, None).await;
    let followers = (0..50).map(|_| async { w.read(w.open(id, None).await, |_| false).await });
    let streams: Vec<Vec<SseEvent>> = futures_util::future::join_all(followers).await;
    let build = w.kiln.wait_final(id, LIMIT).await;
    assert_eq!(build.state, BuildState::Succeeded, "{:?}", build.reason);
    for s in &streams[1..] {
        assert_eq!(s, &streams[0], "two followers saw different streams");
    }
    assert_contiguous(&streams[0]);
    assert_eq!(streams[0].iter().filter(|e| data(e)["line"].as_str().is_some_and(|l| l.starts_with("slow line"))).count(), 200);
    drop(stalled);
}

#[tokio::test]
async fn secrets_a_step_echoes_are_masked_in_sse_text_and_the_cli() {
    // A notification target's robot token is a secret Kiln holds for the build too.
    const ROBOT_TOKEN: &str = "robot-access-token-5f1e2d";
    let w = World::new(&format!("echo \"token is {GIT_TOKEN}\"\necho \"password is {REGISTRY_PASSWORD}\"\necho \"robot is {ROBOT_TOKEN}\"")).await;
    let target = json!({"targets": [{"kind": "wecom", "url": format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_TOKEN}"), "events": ["failed"]}]});
    let (status, body) = w.kiln.request(axum::http::Method::PUT, "/api/v1/tenants/team/notifications", Some(&w.token), Some(target)).await;
    assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    let id = w.build("leaky").await;
    let events = w.read(w.open(id, None).await, |_| false).await;
    let sse: String = events.iter().map(|e| e.data.clone()).collect::<Vec<_>>().join("\n");
    let text = reqwest::Client::new()
        .get(w.kiln.url(&format!("/api/v1/builds/{id}/logs")))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["logs", "-f", &id.to_string()])
        .env("KILN_URL", w.kiln.url(""))
        .env("KILN_TOKEN", &w.token)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let cli_out = String::from_utf8_lossy(&cli.stdout).into_owned();
    assert_eq!(cli.status.code(), Some(0), "{cli_out}\n{}", String::from_utf8_lossy(&cli.stderr));
    for (view, body) in [("sse", &sse), ("text", &text), ("cli", &cli_out)] {
        assert!(body.contains("token is ***") && body.contains("password is ***") && body.contains("robot is ***"), "{view}: not masked:\n{body}");
        assert!(!body.contains(GIT_TOKEN) && !body.contains(REGISTRY_PASSWORD) && !body.contains(ROBOT_TOKEN), "{view}: a secret leaked:\n{body}");
    }
    assert!(cli_out.contains("── step compile"), "{cli_out}");
    // The summary goes to stderr, so stdout is the stored log alone.
    assert!(String::from_utf8_lossy(&cli.stderr).contains(&format!("build {id} Succeeded")), "{}", String::from_utf8_lossy(&cli.stderr));
}

#[tokio::test]
async fn the_cli_follows_the_newest_build_of_an_app_and_exits_with_its_result() {
    let w = World::new("echo about to fail >&2; exit 3").await;
    let id = w.build("broken").await;
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["logs", "-f", "--app", "broken"])
        .env("KILN_URL", w.kiln.url(""))
        .env("KILN_TOKEN", &w.token)
        .output()
        .await
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&cli.stdout).into_owned(), String::from_utf8_lossy(&cli.stderr).into_owned());
    assert_eq!(cli.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("about to fail") && err.contains(&format!("build {id} Failed: compile failed (exit code 3)")), "{out}\n{err}");
    assert_eq!(w.kiln.build(id).await.state, BuildState::Failed);

    let list = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["builds", "--app", "broken"])
        .env("KILN_URL", w.kiln.url(""))
        .env("KILN_TOKEN", &w.token)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(table.lines().next().unwrap().contains("DURATION") && table.contains("Failed") && table.contains("team/broken"), "{table}");

    // Without any token the CLI says where one comes from.
    let none = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["builds"])
        .env_remove("KILN_TOKEN")
        .env("KILN_CLI_CONFIG", "/nonexistent/cli.toml")
        .output()
        .await
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no API token"), "{}", String::from_utf8_lossy(&none.stderr));
    let _ = ADMIN;
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

#[tokio::test]
async fn a_200_mib_log_is_cut_at_the_cap_with_a_notice_and_the_build_finishes_in_bounded_memory() {
    crate::support::init();
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    // 200 MiB of output: 2,097,152 lines of 99 characters.
    let flood = fake_go(dir.path(), "go-flood", "head -c 209715200 /dev/zero | tr '\\0' 'x' | fold -w 99");
    let data = dir.path().join("data");
    let config_file = write_config(
        dir.path(),
        ADMIN,
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &format!("[toolchains]\ngo = \"{}\"\ngoproxy = \"off\"\n[registry]\ninsecure = [\"{}\"]\n", flood.display(), registry.host()),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .env("KILN_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "kiln serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tenant: Value = http.post(format!("{url}/api/v1/tenants")).bearer_auth(ADMIN).json(&json!({"name": "team"})).send().await.unwrap().json().await.unwrap();
    let token = tenant["token"].as_str().unwrap().to_string();
    let repo = git.create_repo("team/flood");
    let sha = repo.commit_files(&[("go.mod", &b"module example.com/f\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)], "f");
    let mut spec = app_spec("flood", &git.url("team/flood"), "team/flood", &format!("{}/team/flood", registry.host()), "hook-secret-f");
    spec["git_token"] = GIT_TOKEN.into();
    assert!(http.post(format!("{url}/api/v1/apps")).bearer_auth(&token).json(&spec).send().await.unwrap().status().is_success());
    let build: Value = http.post(format!("{url}/api/v1/apps/flood/builds")).bearer_auth(&token).json(&json!({"commit": sha})).send().await.unwrap().json().await.unwrap();
    let id = build["build"]["id"].as_i64().unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let build = loop {
        let b: Value = http.get(format!("{url}/api/v1/builds/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if ["Succeeded", "Failed", "Cancelled", "TimedOut"].contains(&b["build"]["state"].as_str().unwrap()) {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "the flooded build did not finish: {b}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let peak = peak_rss_kib(serve.id());
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(build["build"]["state"], "Succeeded", "{build}");

    let store = crate::support::kiln::open_store(&data).await;
    let kept = store.log_bytes(id).await.unwrap();
    let cap: i64 = 100 << 20;
    assert!(kept <= cap && kept > cap - 200, "stored {kept} bytes of output for a cap of {cap}");
    let lines = store.log_after(id, 0, i64::MAX).await.unwrap();
    let notice = lines.iter().position(|l| l.line.starts_with("[kiln] log truncated")).expect("a truncation notice");
    assert!(lines[notice].line.contains("100.0 MiB"), "{}", lines[notice].line);
    // After the notice: no more output, but the build's own lines (image step, result) are kept.
    assert!(lines[notice + 1..].iter().all(|l| l.stream != builder_api::store::Stream::Stdout && l.stream != builder_api::store::Stream::Stderr));
    assert!(lines.last().unwrap().line.contains("Succeeded"), "{:?}", lines.last());
    println!("a 200 MiB log: {kept} bytes kept, kiln serve peak RSS {} MiB", peak / 1024);
    assert!(peak < 128 * 1024, "kiln serve peaked at {} MiB while capturing a 200 MiB log", peak / 1024);
}
