//! Several Kiln replicas on one PostgreSQL database (issue 22), always on PostgreSQL whatever
//! `KILN_TEST_STORE` says: a webhook delivered to two replicas queues one build and both answers
//! name it; a build queued through one replica is started by another with a free slot; an app
//! created on one replica is known to the others' webhooks within 100 ms. Replicas share the
//! secret key.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use builder_api::store::BuildState;
use serde_json::{json, Value};

use crate::support::fixtures::GitlabPush;
use crate::support::kiln::{test_config, TestKiln};
use crate::support::postgres;

const SECRET: &str = "replica-hook-secret";
const PROJECT: &str = "team/hello";
const GIT_URL: &str = "http://127.0.0.1:9/team/hello.git";

/// Kilns on one fresh database, with `slots[i]` builds at once on replica `i` (0: it queues
/// builds but starts none).
async fn replicas(slots: &[usize]) -> Vec<TestKiln> {
    let url = postgres::fresh_database();
    let mut kilns: Vec<TestKiln> = vec![];
    for &n in slots {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[]);
        config.store.url = Some(url.clone());
        // Replicas share the key the store's secrets are sealed with (a Secret in a cluster):
        // the first one's, which it generated.
        if let Some(first) = kilns.first() {
            config.store.secret_key_file = Some(first.ctx.config.store.data_dir.join("secret.key"));
        }
        config.executor.max_concurrent_builds = n;
        config.hooks.rate_per_app_per_minute = 0;
        kilns.push(TestKiln::start_with(dir, config).await);
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
