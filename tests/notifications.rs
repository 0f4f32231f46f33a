//! Build notifications (issue 20): real local builds of a pushed Go app, and the chat robot and
//! webhook doubles (`support::chat_robots`) recording every message Kiln sends.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::store::BuildState;
use serde_json::{json, Value};

use crate::support::chat_robots::{ChatRobots, RobotCall, DINGTALK_SECRET, DINGTALK_TOKEN, HOOK_SECRET, WECOM_KEY};
use crate::support::fixtures::{app_spec, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln};
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-notify-git-token";
const SECRET: &str = "hook-secret-notify";
const PUBLIC_URL: &str = "https://kiln.example.test";
const AUTHOR: &str = "Ada Lovelace";
const BUILD_LIMIT: Duration = Duration::from_secs(240);
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);
const GO_MOD: &[u8] = b"module example.com/notify\n\ngo 1.19\n";
const BROKEN: &[u8] = b"package main\n\nfunc main() { undefinedThing() }\n";
const FIXED: &[u8] = b"package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"fixed\") }\n";

struct World {
    git: GitServer,
    registry: TestRegistry,
    kiln: TestKiln,
    robots: ChatRobots,
    owner: String,
}

impl World {
    async fn new() -> World {
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let robots = ChatRobots::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[&registry.host()]);
        config.server.public_url = Some(PUBLIC_URL.into());
        let kiln = TestKiln::start_with(dir, config).await;
        let owner = kiln.tenant("team").await;
        World { git, registry, kiln, robots, owner }
    }

    /// An app `team/NAME` whose repository's first commit has `main.go`; returns the repo.
    async fn app(&self, name: &str, main_go: &[u8]) -> (crate::support::git_server::RepoHandle, String) {
        let path = format!("team/{name}");
        let repo = self.git.create_repo(&path);
        let sha = repo.commit_files(&[("go.mod", GO_MOD, false), ("main.go", main_go, false)], "first");
        let mut spec = app_spec(name, &self.git.url(&path), &path, &format!("{}/{path}", self.registry.host()), SECRET);
        spec["git_token"] = GIT_TOKEN.into();
        self.kiln.app(&self.owner, spec).await;
        (repo, sha)
    }

    async fn push(&self, name: &str, sha: &str) -> i64 {
        let path = format!("team/{name}");
        let push = GitlabPush::branch(&path, &self.git.url(&path), "main", sha).with_head_commit("change things", AUTHOR);
        self.kiln.push_hook(&push, SECRET).await
    }

    async fn put(&self, path: &str, targets: Value) -> (StatusCode, Value) {
        self.kiln.request(Method::PUT, path, Some(&self.owner), Some(json!({ "targets": targets }))).await
    }

    /// The build's notification outcomes, once `n` are recorded.
    async fn outcomes(&self, id: i64, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
        loop {
            let (_, body) = self.kiln.request(Method::GET, &format!("/api/v1/builds/{id}"), Some(&self.owner), None).await;
            let outcomes = body["notifications"].as_array().cloned().unwrap_or_default();
            if outcomes.len() >= n {
                return outcomes;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} recorded {} of {n} notifications: {body:#}", outcomes.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn of_kind<'a>(calls: &'a [RobotCall], kind: &str) -> Vec<&'a RobotCall> {
    calls.iter().filter(|c| c.kind == kind && c.taken()).collect()
}

#[tokio::test]
async fn a_failure_and_its_fix_reach_each_target_in_its_own_format_signed_and_naming_the_build() {
    let w = World::new().await;
    let (repo, broken) = w.app("notify", BROKEN).await;
    let (status, body) = w
        .put(
            "/api/v1/apps/notify/notifications",
            json!([
                { "kind": "webhook", "url": w.robots.hook_url(), "secret": HOOK_SECRET, "events": ["failed", "fixed"] },
                { "kind": "dingtalk", "url": w.robots.dingtalk_url(), "secret": DINGTALK_SECRET, "events": ["failed", "fixed"] },
                { "kind": "wecom", "url": w.robots.wecom_url(), "events": ["failed"] },
                { "kind": "slack", "url": w.robots.slack_url(), "events": ["succeeded"] },
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A tenant-wide target hears about every app.
    let (status, body) = w.put("/api/v1/tenants/team/notifications", json!([{ "kind": "slack", "url": w.robots.slack_url(), "events": ["failed"] }])).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Write-only: reads show the kind, events and host, never the token or the secret.
    let (_, read) = w.kiln.request(Method::GET, "/api/v1/apps/notify/notifications", Some(&w.owner), None).await;
    let text = read.to_string();
    for secret in [DINGTALK_TOKEN, DINGTALK_SECRET, WECOM_KEY, HOOK_SECRET, "slacktoken"] {
        assert!(!text.contains(secret), "{secret} in {read:#}");
    }
    assert_eq!(read["targets"].as_array().unwrap().len(), 4, "{read:#}");
    assert_eq!(read["targets"][1]["has_secret"], true);
    assert_eq!(read["targets"][1]["events"], json!(["failed", "fixed"]));
    assert_eq!(read["tenant_targets"].as_array().unwrap().len(), 1, "{read:#}");

    let failed = w.kiln.ended(w.push("notify", &broken).await, BuildState::Failed, BUILD_LIMIT).await.0;
    let calls = w.robots.wait_taken(4, DELIVERY_LIMIT).await;
    let reason_line = failed.reason.as_deref().unwrap().lines().next().unwrap().to_string();
    let link = format!("{PUBLIC_URL}/ui/builds/{}", failed.id);
    for call in &calls {
        let text = call.text();
        let app = if call.kind == "webhook" { "\"app\":\"notify\"" } else { "team/notify" };
        for needle in [app, "main", &broken[..8], &link, AUTHOR] {
            assert!(text.contains(needle), "{} lacks {needle}: {text}", call.kind);
        }
        // The reason as one line; Slack's mrkdwn gets `<` and `>` escaped, which a Go error has none of.
        assert!(text.contains(&reason_line), "{} lacks the reason {reason_line}: {text}", call.kind);
    }
    assert_eq!(calls.iter().map(|c| c.kind).collect::<std::collections::BTreeSet<_>>(), ["dingtalk", "slack", "webhook", "wecom"].into());
    let hook = of_kind(&calls, "webhook")[0];
    assert_eq!(hook.headers["x-kiln-event"], "failed");
    assert_eq!((&hook.body["event"], &hook.body["build"]["id"], &hook.body["build"]["commit"]), (&json!("failed"), &json!(failed.id), &json!(broken)));
    // The signed DingTalk URL carries timestamp and sign (the double checked them: errcode 0).
    assert!(of_kind(&calls, "dingtalk")[0].path_and_query.contains("&sign="), "{:?}", of_kind(&calls, "dingtalk")[0]);
    let outcomes = w.outcomes(failed.id, 4).await;
    assert!(outcomes.iter().all(|o| o["outcome"] == "delivered" && o["event"] == "failed" && o["attempts"] == 1), "{outcomes:#?}");
    assert!(!Value::Array(outcomes).to_string().contains(DINGTALK_TOKEN));

    // The fix: `fixed` where it is wanted, `succeeded` where only that is, nothing for the rest.
    let fixed_sha = repo.commit_files(&[("main.go", FIXED, false)], "fix");
    let fixed = w.kiln.ended(w.push("notify", &fixed_sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let calls = w.robots.wait_taken(7, DELIVERY_LIMIT).await;
    let about_fix: Vec<&RobotCall> = calls[4..].iter().collect();
    let kinds: std::collections::BTreeSet<&str> = about_fix.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, ["dingtalk", "slack", "webhook"].into(), "{about_fix:#?}");
    for call in &about_fix {
        let text = call.text();
        assert!(text.contains(&fixed_sha[..8]) && text.contains(&format!("{PUBLIC_URL}/ui/builds/{}", fixed.id)), "{text}");
    }
    let hook = about_fix.iter().find(|c| c.kind == "webhook").unwrap();
    assert_eq!(hook.body["event"], "fixed");
    assert!(about_fix.iter().find(|c| c.kind == "dingtalk").unwrap().text().contains("fixed main"));
    assert!(about_fix.iter().find(|c| c.kind == "slack").unwrap().text().contains("succeeded"));
    let events: Vec<String> = w.outcomes(fixed.id, 3).await.iter().map(|o| o["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events.iter().filter(|e| *e == "fixed").count(), 2, "{events:?}");

    // One more success is not a fix: the webhook and the robot that want `fixed` hear nothing.
    let again = repo.commit_files(&[("README", b"again\n".as_slice(), false)], "again");
    let third = w.kiln.ended(w.push("notify", &again).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let outcomes = w.outcomes(third.id, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.kiln.ctx.store.notifications_of_build(third.id).await.unwrap().len(), 1, "{outcomes:#?}");
    assert_eq!(outcomes[0]["kind"], "slack");
}

#[tokio::test]
async fn a_target_answering_500_twice_gets_one_message_and_refusals_and_outages_are_recorded_while_the_build_succeeds() {
    let w = World::new().await;
    let (_, sha) = w.app("notify-down", FIXED).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (status, body) = w
        .put(
            "/api/v1/apps/notify-down/notifications",
            json!([
                { "kind": "webhook", "url": w.robots.hook_url(), "secret": HOOK_SECRET, "events": ["succeeded"] },
                // A robot whose signing secret Kiln has wrong: DingTalk refuses with errcode 310000.
                { "kind": "dingtalk", "url": w.robots.dingtalk_url(), "secret": "SECnot-the-robots-secret", "events": ["succeeded"] },
                // Nothing listens there.
                { "kind": "slack", "url": format!("http://{closed}/services/T/B/gone0123456789abcdef"), "events": ["succeeded"] },
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    w.robots.fail_next(2);
    let build = w.kiln.ended(w.push("notify-down", &sha).await, BuildState::Succeeded, BUILD_LIMIT).await.0;
    let outcomes = w.outcomes(build.id, 3).await;
    let by_kind = |kind: &str| outcomes.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {outcomes:#?}")).clone();
    let hook = by_kind("webhook");
    let dingtalk = by_kind("dingtalk");
    let slack = by_kind("slack");
    assert_eq!(dingtalk["outcome"], "refused: errcode 310000: sign not match", "{outcomes:#?}");
    assert!(slack["outcome"].as_str().unwrap().starts_with("not delivered after 5 attempts: "), "{outcomes:#?}");
    assert_eq!(slack["attempts"], 5);
    // The two 500s went to whichever calls came first; the webhook was taken once in the end.
    assert_eq!(hook["outcome"], "delivered", "{outcomes:#?}");
    let taken: Vec<RobotCall> = w.robots.calls().into_iter().filter(|c| c.kind == "webhook" && c.taken()).collect();
    assert_eq!(taken.len(), 1, "{:#?}", w.robots.calls());
    assert_eq!(w.robots.calls().iter().filter(|c| c.answered == 500).count(), 2);
    assert_eq!(w.kiln.ctx.store.build(build.id).await.unwrap().unwrap().state, BuildState::Succeeded);
}

#[tokio::test]
async fn notification_targets_refuse_bad_input_with_the_reason_and_keep_the_old_list() {
    let w = World::new().await;
    w.app("notify-input", FIXED).await;
    let path = "/api/v1/apps/notify-input/notifications";
    let (status, _) = w.put(path, json!([{ "kind": "wecom", "url": w.robots.wecom_url(), "events": ["failed"] }])).await;
    assert_eq!(status, StatusCode::OK);
    for (targets, why) in [
        (json!([{ "kind": "teams", "url": "https://x.example", "events": ["failed"] }]), "unknown kind \"teams\""),
        (json!([{ "kind": "slack", "url": "hooks.slack.com/x", "events": ["failed"] }]), "must start with https://"),
        (json!([{ "kind": "webhook", "url": "https://x.example", "events": ["failed"] }]), "needs a \"secret\""),
        (json!([{ "kind": "slack", "url": "https://x.example", "events": ["exploded"] }]), "unknown event \"exploded\""),
        (json!([{ "kind": "slack", "url": "https://x.example", "events": [] }]), "events is empty"),
        (json!([{ "kind": "slack", "url": "https://x.example", "events": ["failed"], "channel": "#x" }]), "unknown field `channel`"),
    ] {
        let (status, body) = w.put(path, targets.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{targets}: {body}");
        assert!(body["error"].as_str().unwrap().contains(why), "{targets}: {body}");
    }
    let too_many: Vec<Value> = (0..21).map(|_| json!({ "kind": "slack", "url": "https://x.example", "events": ["failed"] })).collect();
    let (status, body) = w.put(path, Value::Array(too_many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, read) = w.kiln.request(Method::GET, path, Some(&w.owner), None).await;
    assert_eq!(read["targets"].as_array().unwrap().len(), 1, "{read:#}");
    assert_eq!(read["targets"][0]["kind"], "wecom");
    // An empty list turns them off.
    let (status, _) = w.put(path, json!([])).await;
    assert_eq!(status, StatusCode::OK);
    let (_, read) = w.kiln.request(Method::GET, path, Some(&w.owner), None).await;
    assert_eq!(read["targets"], json!([]));
}
