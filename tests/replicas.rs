//! Several Kiln replicas on one PostgreSQL database (issue 22), always on PostgreSQL whatever
//! `KILN_TEST_STORE` says: a webhook delivered to two replicas queues one build and both answers
//! name it; a build queued through one replica is started by another with a free slot; an app
//! created on one replica is known to the others' webhooks within 100 ms. Replicas share the
//! secret key.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::cli::sse::{SseEvent, SseParser};
use builder_api::config::Config;
use builder_api::store::BuildState;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::kube_builds::{fake_options, kiln_client, INSTANCE};
use crate::support::fake_kube::{FakeKube, FakeKubeOptions};
use crate::support::fixtures::{app_spec, fake_go, numbered_lines, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln, ADMIN};
use crate::support::postgres;
use crate::support::registry::TestRegistry;

const SECRET: &str = "replica-hook-secret";
const PROJECT: &str = "team/hello";
const GIT_URL: &str = "http://127.0.0.1:9/team/hello.git";

/// Kilns on one fresh database, with `slots[i]` builds at once on replica `i` (0: it queues
/// builds but starts none).
async fn replicas(slots: &[usize]) -> Vec<TestKiln> {
    replicas_on(&postgres::fresh_database(), slots, |_, _| {}, None).await
}

/// As [`replicas`] on the database `url`, each config changed by `change` (given the replica's
/// directory) and with the kube executor's client `kube`.
async fn replicas_on(url: &str, slots: &[usize], change: impl Fn(&mut Config, &Path), kube: Option<kube::Client>) -> Vec<TestKiln> {
    let mut kilns: Vec<TestKiln> = vec![];
    for &n in slots {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[]);
        change(&mut config, dir.path());
        config.store.url = Some(url.to_string());
        // Replicas share the key the store's secrets are sealed with (a Secret in a cluster):
        // the first one's, which it generated.
        if let Some(first) = kilns.first() {
            config.store.secret_key_file = Some(first.ctx.config.store.data_dir.join("secret.key"));
        }
        config.executor.max_concurrent_builds = n;
        config.hooks.rate_per_app_per_minute = 0;
        kilns.push(TestKiln::start_with_kube(dir, config, kube.clone()).await);
    }
    kilns
}

/// The tenant `team` and its app `hello` (no superseding: every push builds), created on `kiln`.
async fn app_on(kiln: &TestKiln) {
    let token = kiln.tenant("team").await;
    kiln.app(
        &token,
        json!({"name": "hello", "git_url": GIT_URL, "project_path": PROJECT, "image_repository": "127.0.0.1:9/team/hello",
               "webhook_secret": SECRET, "settings": {"supersede": false}}),
    )
    .await;
}

fn push_request(commit: &str, uuid: &str) -> Request<Body> {
    let push = GitlabPush::branch(PROJECT, GIT_URL, "main", commit);
    Request::post("/hooks/gitlab")
        .header("x-gitlab-event", push.event())
        .header("x-gitlab-token", SECRET)
        .header("x-gitlab-event-uuid", uuid)
        .body(Body::from(push.body().to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_push_delivered_to_two_replicas_at_once_queues_one_build_and_both_answers_name_it() {
    let kilns = replicas(&[0, 0]).await;
    app_on(&kilns[0]).await;
    const PUSHES: usize = 50;
    let deliveries = (0..PUSHES).map(|i| {
        let (a, b) = (&kilns[0], &kilns[1]);
        async move {
            let commit = format!("{:040x}", i + 1);
            let uuid = format!("6f1bb7a4-0000-4000-8000-{i:012}");
            // The same delivery reaches both replicas at the same moment (a retry after a
            // timeout, through a load balancer).
            futures_util::future::join(a.send(push_request(&commit, &uuid)), b.send(push_request(&commit, &uuid))).await
        }
    });
    let answers: Vec<((StatusCode, Value), (StatusCode, Value))> = futures_util::future::join_all(deliveries).await;
    let mut build_ids = vec![];
    for ((sa, ba), (sb, bb)) in &answers {
        let statuses = [*sa, *sb];
        assert!(
            statuses.contains(&StatusCode::ACCEPTED) && statuses.contains(&StatusCode::OK),
            "one replica queues the build, the other answers duplicate: {sa} {ba} / {sb} {bb}"
        );
        let duplicate = if *sa == StatusCode::OK { ba } else { bb };
        assert_eq!(duplicate["status"], "duplicate", "{duplicate}");
        assert_eq!(ba["builds"][0], bb["builds"][0], "both answers name the same build: {ba} / {bb}");
        build_ids.push(ba["builds"][0].as_i64().unwrap());
    }
    build_ids.sort_unstable();
    build_ids.dedup();
    assert_eq!(build_ids.len(), PUSHES);
    let builds = kilns[1].ctx.store.builds(None, None, None, 1000).await.unwrap();
    assert_eq!(builds.len(), PUSHES, "exactly one build per push in the shared store");
    assert_eq!(kilns[0].ctx.store.delivery_count("gitlab").await.unwrap(), PUSHES as i64);
}

#[tokio::test]
async fn builds_queued_through_a_replica_without_slots_are_started_by_one_with_slots_each_once() {
    // Replica 0 takes webhooks but starts nothing; replica 1 starts two at a time. The builds
    // fail (their git URL answers nothing), which is enough: they started, and where.
    let kilns = replicas(&[0, 2]).await;
    app_on(&kilns[0]).await;
    let mut ids = vec![];
    for i in 0..6 {
        let (status, body) = kilns[0].send(push_request(&format!("{:040x}", i + 100), &format!("uuid-{i}"))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["builds"][0].as_i64().unwrap());
    }
    for id in &ids {
        let build = kilns[1].wait_final(*id, Duration::from_secs(120)).await;
        assert_eq!(build.state, BuildState::Failed, "{build:?}");
        assert!(build.started_at.is_some(), "{build:?}");
    }
}

#[tokio::test]
async fn an_app_created_on_one_replica_takes_pushes_on_another_at_once() {
    let kilns = replicas(&[0, 0]).await;
    // Replica 1 reads its app directory (empty) before the app exists.
    let (status, body) = kilns[1].send(push_request(&"a".repeat(40), "before")).await;
    assert!(status.is_client_error(), "no app yet: {status} {body}");
    app_on(&kilns[0]).await;
    // A push it knows no app for reads its directory again unless that is under 100 ms old.
    let created = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (status, body) = kilns[1].send(push_request(&"b".repeat(40), &format!("after-{attempt}"))).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(created.elapsed() < Duration::from_millis(500), "replica 1 still knows no app after {:?}", created.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_hundred_pushes_each_delivered_to_two_of_three_replicas_make_two_hundred_builds_and_two_hundred_jobs() {
    crate::support::init();
    let fake_root = tempfile::tempdir().unwrap();
    // No kubelet: the Jobs are created and wait for a node. What counts here is how many.
    let fake = FakeKube::start(FakeKubeOptions { kubelet: false, ..fake_options(fake_root.path(), &["kiln-team"]) });
    let kube = kiln_client(&fake);
    let kube_executor = |c: &mut Config, _: &Path| {
        c.executor.kind = "kube".into();
        c.kube.instance = Some(INSTANCE.into());
    };
    let kilns = replicas_on(&postgres::fresh_database(), &[200, 200, 200], kube_executor, Some(kube)).await;
    let token = kilns[0].tenant("team").await;
    kilns[0]
        .app(
            &token,
            json!({"name": "hello", "git_url": GIT_URL, "project_path": PROJECT, "image_repository": "127.0.0.1:9/team/hello",
                   "webhook_secret": SECRET, "kind": "go", "settings": {"supersede": false}}),
        )
        .await;
    const PUSHES: usize = 200;
    let deliveries = (0..PUSHES).map(|i| {
        // Delivered to replica i % 3 and, at the same moment, to the next one.
        let (a, b) = (&kilns[i % 3], &kilns[(i + 1) % 3]);
        async move {
            let commit = format!("{:040x}", i + 1);
            let uuid = format!("7a2cc8b5-0000-4000-8000-{i:012}");
            futures_util::future::join(a.send(push_request(&commit, &uuid)), b.send(push_request(&commit, &uuid))).await
        }
    });
    for ((sa, ba), (sb, bb)) in futures_util::future::join_all(deliveries).await {
        let mut statuses = [sa, sb];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::ACCEPTED], "one build, one duplicate: {ba} / {bb}");
        assert_eq!(ba["builds"][0], bb["builds"][0], "{ba} / {bb}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fake.list("jobs", Some("kiln-team")).len() < PUSHES {
        assert!(tokio::time::Instant::now() < deadline, "{} Jobs of {PUSHES}", fake.list("jobs", Some("kiln-team")).len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let builds = kilns[0].ctx.store.builds(None, None, None, 1000).await.unwrap();
    assert_eq!(builds.len(), PUSHES, "one build per push");
    assert_eq!(kilns[0].ctx.store.delivery_count("gitlab").await.unwrap(), PUSHES as i64);
    // One create per build (a second replica starting the same build would try a second one).
    assert_eq!(fake.count("create", "jobs"), PUSHES, "Job creates");
    assert_eq!(fake.list("jobs", Some("kiln-team")).len(), PUSHES);
    // Each build runs on exactly one replica, the one whose claim it carries.
    let running: Vec<usize> = kilns.iter().map(|k| k.ctx.scheduler.running_count()).collect();
    assert_eq!(running.iter().sum::<usize>(), PUSHES, "builds followed per replica: {running:?}");
    for b in &builds {
        let (by, _) = kilns[0].ctx.store.claim_of(b.id).await.unwrap().expect("a claim");
        let holder: Vec<&TestKiln> = kilns.iter().filter(|k| k.ctx.scheduler.replica.0 == by).collect();
        assert_eq!(holder.len(), 1, "build {} claimed by {by}", b.id);
    }
}

/// A stand-in `go` that prints `lines` numbered lines, `ms` apart, then builds; a Go app `name`
/// of tenant `team` whose commit it builds. Returns the spec and the commit.
fn go_app(git: &GitServer, registry: &TestRegistry, name: &str) -> (Value, String) {
    let repo = git.create_repo(&format!("team/{name}"));
    let sha = repo.commit_files(
        &[("go.mod", &b"module example.com/s\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)],
        "s",
    );
    let mut spec = app_spec(name, &git.url(&format!("team/{name}")), &format!("team/{name}"), &format!("{}/team/{name}", registry.host()), "hook-secret-r");
    spec["kind"] = "go".into();
    (spec, sha)
}

/// Opens the build's SSE log stream on `kiln` (a real socket), after `last_id`.
async fn open_log(kiln: &TestKiln, token: &str, id: i64, last_id: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(kiln.url(&format!("/api/v1/builds/{id}/logs"))).bearer_auth(token).header("accept", "text/event-stream");
    if let Some(last) = last_id {
        req = req.header("last-event-id", last);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res
}

/// Events of `res` with the time each arrived (ms since the epoch), until `end` or until `stop`.
async fn read_events(res: reqwest::Response, mut stop: impl FnMut(&[(SseEvent, i64)]) -> bool) -> Vec<(SseEvent, i64)> {
    let mut parser = SseParser::default();
    let mut events = vec![];
    let mut body = res.bytes_stream();
    let read = async {
        while let Some(chunk) = body.next().await {
            let now = builder_api::store::now_ms();
            events.extend(parser.feed(&chunk.unwrap()).into_iter().map(|e| (e, now)));
            if events.last().is_some_and(|(e, _)| e.event == "end") || stop(&events) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("the stream neither ended nor stopped in time");
    events
}

#[tokio::test]
async fn a_follower_on_another_replica_gets_every_line_live_and_resumes_on_a_third_with_no_gap_and_no_repeat() {
    const LINES: usize = 60;
    crate::support::init();
    let git = GitServer::start().await;
    let registry = TestRegistry::start().await;
    let host = registry.host();
    let slow_go = |c: &mut Config, dir: &Path| {
        c.registry.insecure = vec![host.clone()];
        c.toolchains.go = fake_go(dir, "slow-go", &numbered_lines(LINES as u32, 50)).display().to_string();
    };
    // Replica A runs builds; B and C only serve.
    let kilns = replicas_on(&postgres::fresh_database(), &[1, 0, 0], slow_go, None).await;
    let (a, b, c) = (&kilns[0], &kilns[1], &kilns[2]);
    let token = a.tenant("team").await;
    let (spec, sha) = go_app(&git, &registry, "follow");
    a.app(&token, spec).await;
    let id = a.trigger(&token, "follow", json!({"commit": sha})).await;
    a.wait_for_line(id, "slow line 3").await;
    assert!(a.ctx.scheduler.running_count() == 1 && c.ctx.scheduler.running_count() == 0, "the build runs on A");

    // On C, live, until 20 compile lines came; then the connection is cut.
    let opened = builder_api::store::now_ms();
    let on_c = read_events(open_log(c, &token, id, None).await, |events| {
        events.iter().filter(|(e, _)| e.event == "line" && e.data.contains("slow line")).count() >= 20
    })
    .await;
    let last_id = on_c.last().unwrap().0.id.clone().expect("a line event has an id");
    // Resumed on B, to the end.
    let on_b = read_events(open_log(b, &token, id, Some(&last_id)).await, |_| false).await;
    assert_eq!(on_b.last().unwrap().0.event, "end");
    let end: Value = serde_json::from_str(&on_b.last().unwrap().0.data).unwrap();
    assert_eq!(end["state"], "Succeeded", "{end}");

    let events: Vec<&(SseEvent, i64)> = on_c.iter().chain(&on_b).filter(|(e, _)| e.event != "end").collect();
    let ids: Vec<i64> = events.iter().map(|(e, _)| e.id.as_deref().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "a gap, a repeat or a reordering across C and B");
    let streamed: Vec<String> = events.iter().map(|(e, _)| serde_json::from_str::<Value>(&e.data).unwrap()["line"].as_str().unwrap().to_string()).collect();
    let stored: Vec<String> = a.log(id).await.lines().map(String::from).collect();
    assert_eq!(streamed, stored, "what the followers got is the stored log");
    assert_eq!(streamed.iter().filter(|l| l.starts_with("slow line")).count(), LINES);

    // Lines stored after a follower connected reach it within the latency a follower on A
    // gets, not at the followers' periodic look at the store (every 2 s).
    let mut delays: Vec<i64> = events
        .iter()
        .filter_map(|(e, arrived)| {
            let at = serde_json::from_str::<Value>(&e.data).unwrap()["at"].as_i64()?;
            (at > opened + 200).then_some(arrived - at)
        })
        .collect();
    delays.sort_unstable();
    assert!(delays.len() >= 20, "{} lines arrived live", delays.len());
    let p99 = delays[(delays.len() * 99 / 100).min(delays.len() - 1)];
    println!("lines from replica A to followers on C and B: p50 {} ms, p99 {p99} ms, max {} ms", delays[delays.len() / 2], delays[delays.len() - 1]);
    assert!(p99 < 500, "p99 {p99} ms from A's store to a follower on another replica: {delays:?}");
}

#[tokio::test]
async fn two_tenants_with_caps_never_exceed_them_across_three_replicas() {
    crate::support::init();
    let git = GitServer::start().await;
    let registry = TestRegistry::start().await;
    let host = registry.host();
    let go = |c: &mut Config, dir: &Path| {
        c.registry.insecure = vec![host.clone()];
        c.toolchains.go = fake_go(dir, "slow-go", &numbered_lines(8, 100)).display().to_string();
    };
    let url = postgres::fresh_database();
    let kilns = replicas_on(&url, &[3, 3, 3], go, None).await;
    // Every change of a build's state records how many of its tenant's builds run then.
    let database = url.rsplit('/').next().unwrap();
    postgres::cluster().psql(
        database,
        "CREATE TABLE cap_checks (tenant_id BIGINT, running BIGINT, build_id BIGINT, state TEXT);
         CREATE FUNCTION check_caps() RETURNS trigger AS $$ BEGIN
           INSERT INTO cap_checks SELECT NEW.tenant_id, (SELECT COUNT(*) FROM builds WHERE tenant_id = NEW.tenant_id AND state = 'Running'), NEW.id, NEW.state;
           RETURN NULL; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER caps AFTER UPDATE OF state ON builds FOR EACH ROW EXECUTE FUNCTION check_caps();",
    );
    let caps = [("alpha", 2), ("beta", 1)];
    let mut ids = vec![];
    for (tenant, cap) in caps {
        let token = kilns[0].tenant(tenant).await;
        // Set on one replica; the others learn it from the store when they start builds.
        let (status, body) = kilns[0].request(Method::PUT, &format!("/api/v1/tenants/{tenant}/settings"), Some(ADMIN), Some(json!({"max_concurrent_builds": cap}))).await;
        assert!(status.is_success(), "{body}");
        let (mut spec, sha) = go_app(&git, &registry, &format!("app-{tenant}"));
        spec["project_path"] = format!("{tenant}/app").into();
        kilns[0].app(&token, spec).await;
        for i in 0..8 {
            ids.push(kilns[i % 3].trigger(&token, &format!("app-{tenant}"), json!({"commit": sha})).await);
        }
    }
    for id in &ids {
        let build = kilns[0].wait_final(*id, Duration::from_secs(240)).await;
        assert_eq!(build.state, BuildState::Succeeded, "{build:?}");
    }
    let replicas: i64 = postgres::cluster().psql(database, "SELECT COUNT(DISTINCT claimed_by) FROM builds").trim().parse().unwrap();
    assert!(replicas >= 2, "the builds ran on {replicas} replica(s): the caps were not put to the test across replicas");
    for (tenant, cap) in caps {
        let most: i64 = postgres::cluster()
            .psql(database, &format!("SELECT MAX(running) FROM cap_checks c JOIN tenants t ON t.id = c.tenant_id WHERE t.name = '{tenant}'"))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(most, cap, "tenant {tenant}: at most {cap} running at once, and the cap was reached");
    }
    let checks: i64 = postgres::cluster().psql(database, "SELECT COUNT(*) FROM cap_checks").trim().parse().unwrap();
    assert!(checks >= 32, "{checks} state changes checked (16 builds start and end)");
}

#[tokio::test]
async fn under_the_kube_executor_one_replica_holds_the_lease_and_another_takes_it_when_the_holder_stops() {
    crate::support::init();
    let fake_root = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(fake_options(fake_root.path(), &["kiln-team"]));
    // With Kiln's right to the Lease, as deploy/ grants it.
    let kube = kiln_client(&fake);
    let kube_executor = |c: &mut Config, _: &Path| {
        c.executor.kind = "kube".into();
        c.kube.instance = Some(INSTANCE.into());
    };
    let kilns = replicas_on(&postgres::fresh_database(), &[1, 1], kube_executor, Some(kube)).await;
    let ids: Vec<String> = kilns.iter().map(|k| k.ctx.scheduler.replica.0.clone()).collect();
    let lease = || fake.get("leases", "kiln", builder_api::leadership::LEASE_NAME);
    let holder_within = |limit: Duration| {
        let deadline = std::time::Instant::now() + limit;
        let lease = &lease;
        async move {
            loop {
                if let Some(l) = lease() {
                    if let Some(h) = l["spec"]["holderIdentity"].as_str() {
                        return (h.to_string(), l);
                    }
                }
                assert!(std::time::Instant::now() < deadline, "no holder after {limit:?}: {:?}", lease());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (first, _) = holder_within(Duration::from_secs(10)).await;
    let holder = ids.iter().position(|id| *id == first).unwrap_or_else(|| panic!("{first} is neither replica: {ids:?}"));
    // Renewed, not fought over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (still, held) = holder_within(Duration::from_secs(1)).await;
    assert_eq!(still, first);
    assert_eq!(held["spec"]["leaseTransitions"], 0, "{held}");
    assert_eq!(held["spec"]["leaseDurationSeconds"], 10, "{held}");

    // The holder stops (SIGTERM's path): it gives the Lease up, and the other takes it at its
    // next try instead of after the lease's 10 s.
    let stopped_at = std::time::Instant::now();
    builder_api::scheduler::hand_back(&kilns[holder].ctx).await.unwrap();
    builder_api::leadership::give_up(&kilns[holder].ctx).await;
    let deadline = stopped_at + Duration::from_secs(5);
    let next = loop {
        if let Some(h) = lease().and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from)) {
            if h != first {
                break h;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the Lease was not taken over within 5 s: {:?}", lease());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(next, ids[1 - holder]);
    assert_eq!(lease().unwrap()["spec"]["leaseTransitions"], 1);
    println!("Lease taken over {:?} after the holder stopped", stopped_at.elapsed());
}
