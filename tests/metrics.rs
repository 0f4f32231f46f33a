//! `/metrics` as an operator's Prometheus reads it: OpenMetrics text kept in memory, parsed with
//! a Prometheus text parser, whose figures move as webhooks arrive, builds run and end, and live
//! log followers come and go. (The per-tenant gauges behind a cap: `queueing.rs`; the alert
//! rules' metric names: `deploy_manifests.rs`.)

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use builder_api::cli::sse::SseParser;
use builder_api::store::BuildState;
use futures_util::StreamExt;
use serde_json::Value;

use crate::support::fixtures::{app_spec, fake_go, instant_go, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln};
use crate::support::metrics::{scrape_until, Scrape};
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-metrics-token-24680";
const SECRET: &str = "hook-secret-metrics";
const LIMIT: Duration = Duration::from_secs(60);

/// A GitLab push delivered with `token` as its secret; the answer's status and body.
async fn deliver(kiln: &TestKiln, push: &GitlabPush, token: &str) -> (StatusCode, Value) {
    let req = Request::post("/hooks/gitlab")
        .header("x-gitlab-event", push.event())
        .header("x-gitlab-token", token)
        .body(Body::from(push.body().to_string()))
        .unwrap();
    kiln.send(req).await
}

/// A live follower of the build's log (SSE over the socket), connected once its answer began.
async fn follow(kiln: &TestKiln, token: &str, id: i64) -> reqwest::Response {
    let res = reqwest::Client::new()
        .get(kiln.url(&format!("/api/v1/builds/{id}/logs")))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    res
}

const FOLLOWERS: &str = "kiln_log_followers";

#[tokio::test]
async fn a_build_webhooks_and_log_followers_move_the_metrics_prometheus_reads() {
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&registry.host()]);
    // The compile step waits for the file `release`, so the build is Running for as long as the
    // test looks at it, then compiles at once.
    let release = dir.path().join("release");
    let compile = format!("echo waiting for release; while [ ! -e {} ]; do sleep 0.02; done; exec {} \"$@\"", release.display(), instant_go(dir.path()).display());
    config.toolchains.go = fake_go(dir.path(), "held-go", &compile).display().to_string();
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("team").await;
    let repo = git.create_repo("team/svc");
    let sha = repo.commit_files(&[("go.mod", &b"module example.com/svc\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)], "svc");
    let mut spec = app_spec("svc", &git.url("team/svc"), "team/svc", &format!("{}/team/svc", registry.host()), SECRET);
    spec["git_token"] = GIT_TOKEN.into();
    kiln.app(&token, spec).await;

    // Before anything happened: the families without labels, at 0 (a labelled family is
    // written from its first sample on).
    let fresh = Scrape::fetch(&kiln).await;
    assert_eq!(fresh.families(), [("kiln_build_queue_wait_seconds", "histogram"), ("kiln_log_followers", "gauge")].map(|(n, k)| (n.to_string(), k.to_string())));
    assert_eq!(fresh.histogram_count("kiln_build_queue_wait_seconds", &[]), 0.0);
    assert_eq!(fresh.value(FOLLOWERS, &[]), Some(0.0));

    // Three deliveries of one push: a wrong secret (refused), the real one (accepted, a build),
    // and the same again (a duplicate).
    let push = GitlabPush::branch("team/svc", &git.url("team/svc"), "main", &sha);
    let (status, body) = deliver(&kiln, &push, "not-the-secret").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let id = kiln.push_hook(&push, SECRET).await;
    let (status, body) = deliver(&kiln, &push, SECRET).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{body}");
    // Counted before the answer leaves: no waiting.
    let hooks = Scrape::fetch(&kiln).await;
    for outcome in ["refused", "accepted", "duplicate"] {
        assert_eq!(hooks.number("kiln_webhook_deliveries_total", &[("source", "gitlab"), ("outcome", outcome)]), 1.0, "{outcome}:\n{}", hooks.text);
    }
    assert_eq!(hooks.number("kiln_webhook_deliveries_total", &[("source", "gitlab"), ("outcome", "ignored")]), 0.0);
    assert_eq!(hooks.histogram_count("kiln_webhook_duration_seconds", &[("source", "gitlab")]), 3.0);
    assert_eq!(hooks.histogram_count("kiln_webhook_duration_seconds", &[("source", "harbor")]), 0.0);

    // Running, held in its compile step.
    kiln.wait_for_line(id, "waiting for release").await;
    let held_from = Instant::now();
    let running = scrape_until(&kiln, LIMIT, "the build counted as running", |s| s.number("kiln_builds_running", &[("tenant", "team")]) == 1.0).await;
    assert_eq!(running.number("kiln_builds_queued", &[("tenant", "team")]), 0.0);
    assert_eq!(running.histogram_count("kiln_build_queue_wait_seconds", &[]), 1.0, "observed as the build started");
    assert_eq!(running.histogram_count("kiln_build_step_duration_seconds", &[("step", "clone")]), 1.0);
    assert_eq!(running.histogram_count("kiln_build_step_duration_seconds", &[("step", "compile")]), 0.0, "still running");
    assert!(running.label_values("kiln_build_duration_seconds_count", "result").is_empty(), "no build ended yet:\n{}", running.text);

    // Two live followers; one goes away while the build runs, the other stays to the end.
    let leaving = follow(&kiln, &token, id).await;
    let staying = follow(&kiln, &token, id).await;
    scrape_until(&kiln, LIMIT, "two followers", |s| s.number(FOLLOWERS, &[]) == 2.0).await;
    drop(leaving);
    scrape_until(&kiln, LIMIT, "the closed follower uncounted", |s| s.number(FOLLOWERS, &[]) == 1.0).await;

    let held = held_from.elapsed();
    std::fs::write(&release, "").unwrap();
    let mut parser = SseParser::default();
    let mut events = vec![];
    let mut stream = staying.bytes_stream();
    while !events.last().is_some_and(|e: &builder_api::cli::sse::SseEvent| e.event == "end") {
        let chunk = tokio::time::timeout(LIMIT, stream.next()).await.expect("the log ends").expect("the stream stays open to its end");
        events.extend(parser.feed(&chunk.unwrap()));
    }
    let (build, _) = kiln.ended(id, BuildState::Succeeded, LIMIT).await;
    // The stream ended on the server's side (its body is done), though the client still holds it.
    let done = scrape_until(&kiln, LIMIT, "the build and its followers gone from the gauges", |s| {
        s.number("kiln_builds_running", &[("tenant", "team")]) == 0.0 && s.number(FOLLOWERS, &[]) == 0.0
    })
    .await;
    drop(stream);

    // Every family written is one Kiln declares, with its type.
    let declared = builder_api::metrics::Metrics::new().family_names();
    for family in done.families() {
        assert!(declared.contains(&family), "{family:?} is not among {declared:?}");
    }
    // One build, of kind go, Succeeded, as long as the store says it ran.
    let (started, finished) = (build.started_at.unwrap(), build.finished_at.unwrap());
    let succeeded = [("kind", "go"), ("result", "Succeeded")];
    assert_eq!(done.histogram_count("kiln_build_duration_seconds", &succeeded), 1.0, "{}", done.text);
    assert_eq!(done.label_values("kiln_build_duration_seconds_count", "result"), ["Succeeded"]);
    let seconds = done.number("kiln_build_duration_seconds_sum", &succeeded);
    assert!((seconds - (finished - started) as f64 / 1000.0).abs() < 1e-6, "{seconds} vs {started}..{finished} ms");
    // The queue wait of every build that started, and only those.
    assert_eq!(done.histogram_count("kiln_build_queue_wait_seconds", &[]), 1.0);
    let waited = done.number("kiln_build_queue_wait_seconds_sum", &[]);
    assert!((waited - (started - build.queued_at) as f64 / 1000.0).abs() < 1e-6, "{waited}");
    // Each step once; the compile step at least as long as it was held.
    assert_eq!(done.label_values("kiln_build_step_duration_seconds_count", "step"), ["clone", "compile", "image"]);
    for step in ["clone", "compile", "image"] {
        assert_eq!(done.histogram_count("kiln_build_step_duration_seconds", &[("step", step)]), 1.0, "{step}");
    }
    let compiled = done.number("kiln_build_step_duration_seconds_sum", &[("step", "compile")]);
    assert!(compiled >= held.as_secs_f64(), "compile {compiled} s, held {held:?}");
    // The gauges are back to 0, and the webhooks were not counted twice.
    assert_eq!(done.value("kiln_builds_queued", &[("tenant", "team")]), Some(0.0));
    assert_eq!(done.value("kiln_builds_running", &[("tenant", "team")]), Some(0.0));
    assert_eq!(done.histogram_count("kiln_webhook_duration_seconds", &[("source", "gitlab")]), 3.0);
    // The local executor makes no Kubernetes calls; the app has no GitLab token nor targets.
    assert!(done.label_values("kiln_kube_api_errors_total", "code").is_empty(), "{}", done.text);
    assert!(done.label_values("kiln_gitlab_status_deliveries_total", "outcome").is_empty(), "{}", done.text);
    assert!(done.label_values("kiln_notifications_total", "outcome").is_empty(), "{}", done.text);
}
