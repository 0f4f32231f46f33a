//! Rollouts: Harbor webhooks (recorded payloads in both formats) and rollback requests move
//! subscribed Deployments to `registry/repo@sha256:…` in each cluster — two fake API servers with
//! a Deployment controller — and a rollout that fails rolls back to the image it replaced.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::config::ClusterConfig;
use serde_json::{json, Value};

use crate::support::fake_kube::{FakeKube, FakeKubeOptions};
use crate::support::kiln::{test_config, TestKiln, ADMIN};

pub const AUTH: &str = "Basic a2lsbjpoYXJib3ItaG9vay1zZWNyZXQ=";
pub const EAST: &str = "harbor.east.example:8443";
const WEST: &str = "harbor.west.example";
pub const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
pub const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const LIMIT: Duration = Duration::from_secs(60);

pub struct RolloutWorld {
    pub kiln: TestKiln,
    pub east: FakeKube,
    pub west: FakeKube,
    pub token: String,
}

/// A fake cluster with `shop/web` (container `app`, 2 replicas) running `image`, rolled out.
async fn cluster_with_web(image: &str) -> FakeKube {
    let namespaces = ["default", "shop", "kube-system", "other-shop"].map(String::from).to_vec();
    let fake = FakeKube::start(FakeKubeOptions { kubelet: false, namespaces, ..FakeKubeOptions::default() });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "app", "image": image},
                {"name": "sidecar", "image": "registry.example/mesh/proxy:1"}
            ]}}
        }
    });
    fake.create("shop", "deployments", deployment).unwrap();
    fake.wait_for("deployments", "shop", "web", LIMIT, |d| {
        let d = d?;
        (d["status"]["updatedReplicas"] == 2 && d["status"]["conditions"][1]["reason"] == "NewReplicaSetAvailable").then_some(())
    })
    .await;
    fake
}

impl RolloutWorld {
    pub async fn new() -> RolloutWorld {
        RolloutWorld::with_west_pulling_from(WEST).await
    }

    /// Clusters `east` and `west` whose nodes pull from `EAST` and `west_registry`; `west` runs
    /// its own registry's image until a rollout.
    async fn with_west_pulling_from(west_registry: &str) -> RolloutWorld {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[]);
        config.clusters = vec![
            ClusterConfig { name: "east".into(), registry: EAST.into(), ..Default::default() },
            ClusterConfig { name: "west".into(), registry: west_registry.into(), ..Default::default() },
        ];
        config.harbor.webhook_auth = Some(AUTH.into());
        config.rollout.deadline_secs = 30;
        let kiln = TestKiln::start_with(dir, config).await;
        let east = cluster_with_web(&format!("{EAST}/team/hello:old")).await;
        let west = cluster_with_web(&format!("{west_registry}/team/hello:old")).await;
        kiln.ctx.clusters.set_client("east", crate::kube_builds::kiln_client(&east));
        kiln.ctx.clusters.set_client("west", crate::kube_builds::kiln_client(&west));
        let token = kiln.tenant("team").await;
        grant(&kiln, "team", json!({"deploy_namespaces": ["shop"]})).await;
        let (status, body) = kiln
            .request(
                Method::POST,
                "/api/v1/apps",
                Some(&token),
                Some(json!({"name": "hello", "git_url": "http://127.0.0.1:9/team/hello.git", "image_repository": format!("{EAST}/team/hello"),
                            "webhook_secret": "hello-hook-secret"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        RolloutWorld { kiln, east, west, token }
    }

    pub async fn subscribe(&self, cluster: &str, policy: &str) {
        let (status, body) = self
            .kiln
            .request(
                Method::POST,
                "/api/v1/apps/hello/subscriptions",
                Some(&self.token),
                Some(json!({"cluster": cluster, "namespace": "shop", "deployment": "web", "container": "app", "policy": policy})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    pub async fn harbor(&self, body: &str, auth: &str) -> (StatusCode, Value) {
        let req = Request::post("/hooks/harbor").header("authorization", auth).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
        self.kiln.send(req).await
    }

    /// East's `shop/web` follows `glob:v*` and got two releases: build 1's image (D1, `v1.0.0`),
    /// then build 3's (D3, `v2.0.0`), which it runs. Returns the world and the two build ids.
    pub async fn east_released_twice() -> (RolloutWorld, i64, i64) {
        let w = RolloutWorld::new().await;
        w.subscribe("east", "glob:v*").await;
        let (b1, b3) = (w.built(D1).await, w.built(D3).await);
        w.pushed_to_east(D1, "v1.0.0").await;
        w.settled().await;
        w.pushed_to_east(D3, "v2.0.0").await;
        w.settled().await;
        (w, b1, b3)
    }

    /// Harbor reports `digest` pushed to east's registry as `tag` (the recorded Default-format
    /// payload, that digest and tag put in).
    pub async fn pushed_to_east(&self, digest: &str, tag: &str) {
        let body = fixture("push-default-tag.json").replace(D1, digest).replace("v1.0.0", tag);
        let (status, answer) = self.harbor(&body, AUTH).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }

    /// A build of `hello` that made `digest` (in east's registry), recorded as succeeded: what a
    /// rollback goes back to.
    pub async fn built(&self, digest: &str) -> i64 {
        self.kiln.succeeded_build("team", "hello", &format!("{EAST}/team/hello@{digest}")).await
    }

    pub async fn releases(&self) -> Value {
        let (status, body) = self.kiln.request(Method::GET, "/api/v1/apps/hello/releases", Some(&self.token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until every image event became rollouts and no rollout of the app is Pending or
    /// Running; returns the releases.
    pub async fn settled(&self) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let unhandled = !self.kiln.ctx.store.pending_image_events(1).await.unwrap().is_empty();
            let releases = self.releases().await;
            let busy = releases["releases"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r["history"].as_array().unwrap())
                .any(|h| h["state"] == "Pending" || h["state"] == "Running");
            if !busy && !unhandled {
                return releases;
            }
            assert!(tokio::time::Instant::now() < deadline, "rollouts did not settle: {releases:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An admin sets the tenant's settings (`deploy_namespaces` is where its apps may roll out).
pub async fn grant(kiln: &TestKiln, tenant: &str, settings: Value) {
    let path = format!("/api/v1/tenants/{tenant}/settings");
    let (status, body) = kiln.request(Method::PUT, &path, Some(ADMIN), Some(settings)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/harbor").join(name)).unwrap()
}

pub fn image_of(fake: &FakeKube, container: &str) -> String {
    let d = fake.get("deployments", "shop", "web").unwrap();
    let c = d["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == container).unwrap().clone();
    c["image"].as_str().unwrap().to_string()
}

fn history(releases: &Value, cluster: &str) -> Vec<Value> {
    releases["releases"].as_array().unwrap().iter().find(|r| r["cluster"] == cluster).unwrap()["history"].as_array().unwrap().clone()
}

#[tokio::test]
async fn harbor_payloads_in_both_formats_roll_out_exactly_what_subscriptions_follow_and_nothing_twice() {
    let w = RolloutWorld::new().await;
    w.subscribe("east", "glob:v*").await;
    w.subscribe("west", "semver:^1").await;

    // Default format, push by tag, to east's registry: one rollout there.
    let (status, body) = w.harbor(&fixture("push-default-tag.json"), AUTH).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The same delivery again: a duplicate.
    let (status, body) = w.harbor(&fixture("push-default-tag.json"), AUTH).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{body}");
    // CloudEvents, push by digest, to west: semver needs a tag, so nothing follows it.
    let (status, body) = w.harbor(&fixture("push-cloudevents-digest.json"), AUTH).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("no subscription follows"), "{body}");
    // CloudEvents, push by tag v1.2.0, to west: one rollout there; redelivered (same id): none.
    let (status, body) = w.harbor(&fixture("push-cloudevents-tag.json"), AUTH).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = w.harbor(&fixture("push-cloudevents-tag.json"), AUTH).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{body}");
    // Replication: recorded, starts nothing.
    let (status, body) = w.harbor(&fixture("replication-default.json"), AUTH).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("replication"), "{body}");
    // A wrong Authorization header, a malformed body, a body that is no Harbor event.
    let (status, body) = w.harbor(&fixture("push-default-tag.json"), "Basic d3Jvbmc=").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = w.harbor("{\"type\": \"PUSH_ARTIFACT\", ", AUTH).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("invalid JSON"), "{body}");
    let (status, body) = w.harbor("{\"type\": \"PUSH_ARTIFACT\", \"event_data\": {\"resources\": []}}", AUTH).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("repository"), "{body}");
    // An image of a repository nobody follows.
    let other = fixture("push-default-tag.json").replace("team/hello", "team/other");
    let (status, body) = w.harbor(&other, AUTH).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let releases = w.settled().await;
    // Each cluster's Deployment runs its own registry's copy, pinned by digest; the sidecar is untouched.
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D1}"));
    assert_eq!(image_of(&w.west, "app"), format!("{WEST}/team/hello@{D2}"));
    assert_eq!(image_of(&w.east, "sidecar"), "registry.example/mesh/proxy:1");
    let (east, west) = (history(&releases, "east"), history(&releases, "west"));
    assert_eq!((east.len(), west.len()), (1, 1), "exactly one rollout per cluster: {releases:#}");
    assert_eq!(east[0]["state"], "Complete", "{releases:#}");
    assert_eq!(east[0]["previous_image"], format!("{EAST}/team/hello:old"));
    let current: Vec<(&str, &str)> =
        releases["releases"].as_array().unwrap().iter().map(|r| (r["cluster"].as_str().unwrap(), r["digest"].as_str().unwrap())).collect();
    assert_eq!(current, [("east", D1), ("west", D2)]);
    // One Deployment patch per rollout, nothing more.
    assert_eq!(w.east.count("patch", "deployments"), 1);
    assert_eq!(w.west.count("patch", "deployments"), 1);
}

#[tokio::test]
async fn clusters_that_share_one_registry_host_each_roll_out_a_harbor_push_and_record_it() {
    // One Harbor serving two clusters: both pull from EAST.
    let w = RolloutWorld::with_west_pulling_from(EAST).await;
    w.subscribe("east", "glob:v*").await;
    w.subscribe("west", "glob:v*").await;
    w.pushed_to_east(D1, "v1.0.0").await;
    let releases = w.settled().await;

    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D1}"));
    assert_eq!(image_of(&w.west, "app"), format!("{EAST}/team/hello@{D1}"));
    for cluster in ["east", "west"] {
        let h = history(&releases, cluster);
        assert_eq!(h.len(), 1, "one release recorded in {cluster}: {releases:#}");
        assert_eq!(h[0]["state"], "Complete", "{releases:#}");
    }
    assert_eq!((w.east.count("patch", "deployments"), w.west.count("patch", "deployments")), (1, 1));

    // A rollback that names one cluster moves only that one.
    let b0 = w.built(D3).await;
    let (status, body) = w
        .kiln
        .request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({"build": b0, "cluster": "west"})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    w.settled().await;
    assert_eq!(image_of(&w.west, "app"), format!("{EAST}/team/hello@{D3}"));
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D1}"));
}

#[tokio::test]
async fn a_rollout_that_makes_no_progress_rolls_back_to_the_image_it_replaced() {
    let w = RolloutWorld::new().await;
    w.subscribe("east", "glob:v*").await;
    let (status, _) = w.harbor(&fixture("push-default-tag.json"), AUTH).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    w.settled().await;
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D1}"));

    // The next version never becomes available: ProgressDeadlineExceeded after 2 s, then back.
    w.east.fail_rollouts_of(D3.trim_start_matches("sha256:"));
    w.pushed_to_east(D3, "v2.0.0").await;
    let releases = w.settled().await;
    let east = history(&releases, "east");
    assert_eq!(east.len(), 2, "{releases:#}");
    assert_eq!(east[0]["state"], "RolledBack", "{releases:#}");
    let reason = east[0]["reason"].as_str().unwrap();
    assert!(reason.contains("ProgressDeadlineExceeded") && reason.contains(&format!("rolled back to {EAST}/team/hello@{D1}")), "{reason}");
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D1}"));
    // What runs is still the last complete release.
    assert_eq!(releases["releases"][0]["digest"], D1);
}

/// What the pages show of releases: each rollout names the build that made its image, the
/// current release since when and — for a rollback — who asked; a build's answer lists the
/// rollouts of its image.
#[tokio::test]
async fn releases_name_their_builds_and_who_rolled_back_and_a_build_lists_its_images_rollouts() {
    let (w, b1, b3) = RolloutWorld::east_released_twice().await;
    let releases = w.releases().await;
    assert_eq!((releases["releases"][0]["digest"].as_str(), releases["releases"][0]["build"].as_i64()), (Some(D3), Some(b3)), "{releases:#}");
    assert_eq!(releases["releases"][0]["requested_by"], Value::Null, "an image started it: {releases:#}");

    let (status, answer) = w.kiln.request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({"digest": D1, "cluster": "east"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let releases = w.settled().await;
    let east = &releases["releases"][0];
    let (_, me) = w.kiln.request(Method::GET, "/api/v1/whoami", Some(&w.token), None).await;
    let actor = format!("token:{}:initial", me["token"]["id"]);
    assert_eq!((east["digest"].as_str(), east["build"].as_i64(), east["requested_by"].as_str()), (Some(D1), Some(b1), Some(actor.as_str())), "{releases:#}");
    assert!(east["since"].as_i64().unwrap() >= east["history"][0]["created_at"].as_i64().unwrap(), "{releases:#}");
    let builds: Vec<(Option<i64>, &str)> = east["history"].as_array().unwrap().iter().map(|h| (h["build"].as_i64(), h["trigger"].as_str().unwrap())).collect();
    assert_eq!(builds, [(Some(b1), "rollback"), (Some(b3), "harbor"), (Some(b1), "harbor")], "{releases:#}");
    let listed: Vec<i64> = releases["builds"].as_array().unwrap().iter().map(|b| b["id"].as_i64().unwrap()).collect();
    assert_eq!(listed, [b1, b3]);

    // Build 1's image went out twice (its push, then the rollback); build 3's once.
    let (_, one) = w.kiln.request(Method::GET, &format!("/api/v1/builds/{b1}"), Some(&w.token), None).await;
    let seen: Vec<(&str, &str, &str)> = one["rollouts"].as_array().unwrap().iter().map(|r| (r["cluster"].as_str().unwrap(), r["trigger"].as_str().unwrap(), r["state"].as_str().unwrap())).collect();
    assert_eq!(seen, [("east", "rollback", "Complete"), ("east", "harbor", "Complete")], "{one:#}");
    assert_eq!(one["rollouts"][0]["requested_by"], actor.as_str());
    let (_, three) = w.kiln.request(Method::GET, &format!("/api/v1/builds/{b3}"), Some(&w.token), None).await;
    assert_eq!(three["rollouts"].as_array().unwrap().len(), 1, "{three:#}");
}

#[tokio::test]
async fn subscriptions_and_rollbacks_refuse_what_does_not_exist_with_a_reason() {
    let w = RolloutWorld::new().await;
    let sub = |body: Value| {
        let w = &w;
        async move { w.kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&w.token), Some(body)).await }
    };
    let base = json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "policy": "glob:v*"});
    for (field, value, status, why) in [
        ("cluster", json!("mars"), StatusCode::UNPROCESSABLE_ENTITY, "no cluster"),
        ("policy", json!("whenever"), StatusCode::BAD_REQUEST, "policy"),
        ("namespace", json!("Shop!"), StatusCode::BAD_REQUEST, "namespace"),
        ("repository", json!("../etc"), StatusCode::BAD_REQUEST, "repository"),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let (got, answer) = sub(body).await;
        assert_eq!(got, status, "{field}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{field}: {answer}");
    }
    let (status, _) = sub(base.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, answer) = sub(base).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // A rollback needs an earlier successful build of this app.
    let (status, answer) = w.kiln.request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({"digest": D1}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (status, answer) = w.kiln.request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({"build": 9999}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = w.kiln.request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // Another tenant sees none of it.
    let other = w.kiln.tenant("other").await;
    let (status, _) = w.kiln.request(Method::GET, "/api/v1/apps/hello/releases", Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_deployment_annotated_with_its_app_is_subscribed_and_follows_its_pushes() {
    let w = RolloutWorld::new().await;
    let annotated = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "annotations": {"kiln.dev/app": "team/hello", "kiln.dev/policy": "semver:>=1.0.0", "kiln.dev/container": "server"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}}, "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [
            {"name": "init-db", "image": "registry.example/tools/migrate:1"},
            {"name": "server", "image": format!("{EAST}/team/hello:old")}
        ]}}}
    });
    w.east.create("shop", "deployments", annotated).unwrap();
    // Annotations naming an unknown app or a bad policy are skipped, not fatal.
    let stray = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stray", "annotations": {"kiln.dev/app": "team/nope"}},
        "spec": {"selector": {"matchLabels": {"app": "s"}}, "template": {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "c", "image": "x/y:1"}]}}}});
    w.east.create("shop", "deployments", stray).unwrap();
    assert_eq!(builder_api::rollout::discovery::discover(&w.kiln.ctx).await, 1);
    assert_eq!(builder_api::rollout::discovery::discover(&w.kiln.ctx).await, 0, "a second pass adds nothing");
    let (_, subs) = w.kiln.request(Method::GET, "/api/v1/apps/hello/subscriptions", Some(&w.token), None).await;
    let subs = subs["subscriptions"].as_array().unwrap().clone();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!((subs[0]["deployment"].as_str(), subs[0]["container"].as_str(), subs[0]["policy"].as_str()), (Some("api"), Some("server"), Some("semver:>=1.0.0")));

    let (status, body) = w.harbor(&fixture("push-default-tag.json"), AUTH).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    w.settled().await;
    let d = w.east.get("deployments", "shop", "api").unwrap();
    assert_eq!(d["spec"]["template"]["spec"]["containers"][1]["image"], format!("{EAST}/team/hello@{D1}"));
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "registry.example/tools/migrate:1");
    // The unannotated Deployment `web` was left alone.
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello:old"));
}

/// The whole way: a GitLab push is built (real git, Go, registry), the image is replicated to
/// both clusters' real registries, each cluster's Deployment is set to its own registry's copy
/// by digest; a rollback request moves every cluster back, and in the cluster where that rollout
/// is made to fail the Deployment returns to what it ran.
#[tokio::test]
async fn a_push_is_built_replicated_to_each_cluster_registry_rolled_out_by_digest_and_rolled_back() {
    use crate::support::fixtures::{app_spec, fixture_files, GitlabPush};
    use crate::support::git_server::GitServer;
    use crate::support::registry::TestRegistry;
    const TOKEN: &str = "glpat-rollout-e2e-token";
    const SECRET: &str = "hook-secret-rollout";

    let git = GitServer::start_with_token(TOKEN).await;
    let (source, east_registry, west_registry) = (TestRegistry::start().await, TestRegistry::start().await, TestRegistry::start().await);
    let (east_host, west_host) = (east_registry.host(), west_registry.host());
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&source.host(), &east_host, &west_host]);
    config.clusters = vec![
        ClusterConfig { name: "east".into(), registry: east_host.clone(), ..Default::default() },
        // West keeps the team's images in its own project.
        ClusterConfig { name: "west".into(), registry: west_host.clone(), projects: [("team".to_string(), "team-west".to_string())].into(), ..Default::default() },
    ];
    config.rollout.deadline_secs = 30;
    let kiln = TestKiln::start_with(dir, config).await;
    let east = cluster_with_web(&format!("{east_host}/team/hello:old")).await;
    let west = cluster_with_web(&format!("{west_host}/team-west/hello:old")).await;
    kiln.ctx.clusters.set_client("east", crate::kube_builds::kiln_client(&east));
    kiln.ctx.clusters.set_client("west", crate::kube_builds::kiln_client(&west));
    let token = kiln.tenant("team").await;
    grant(&kiln, "team", json!({"deploy_namespaces": ["shop"]})).await;
    let repo = git.create_repo("team/hello");
    let files = fixture_files("go-hello");
    let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
    let first = repo.commit_files(&files, "first");
    let mut spec = app_spec("hello", &git.url("team/hello"), "team/hello", &format!("{}/team/hello", source.host()), SECRET);
    spec["git_token"] = TOKEN.into();
    spec["kind"] = "go".into();
    kiln.app(&token, spec).await;
    for cluster in ["east", "west"] {
        let body = json!({"cluster": cluster, "namespace": "shop", "deployment": "web", "container": "app", "policy": "branch:main"});
        let (status, answer) = kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&token), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    // The tenant hears about rollouts that fail or roll back.
    let robots = crate::support::chat_robots::ChatRobots::start().await;
    let targets = json!({"targets": [{"kind": "webhook", "url": robots.hook_url(), "secret": crate::support::chat_robots::HOOK_SECRET, "events": ["rollout_failed", "rolled_back"]}]});
    let (status, answer) = kiln.request(Method::PUT, "/api/v1/tenants/team/notifications", Some(&token), Some(targets)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let w = RolloutWorld { kiln, east, west, token };

    let push = |sha: String| {
        let w = &w;
        let git = &git;
        async move {
            let push = GitlabPush::branch("team/hello", &git.url("team/hello"), "main", &sha);
            let req = Request::post("/hooks/gitlab").header("x-gitlab-event", push.event()).header("x-gitlab-token", SECRET).body(Body::from(push.body().to_string())).unwrap();
            let (status, body) = w.kiln.send(req).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            let id = body["builds"][0].as_i64().unwrap();
            let build = w.kiln.wait_final(id, Duration::from_secs(240)).await;
            assert_eq!(build.state, builder_api::store::BuildState::Succeeded, "{:?}\n{}", build.reason, w.kiln.log(id).await);
            (id, build.image_digest.unwrap())
        }
    };
    // Replication and rollout follow the build on their own.
    let wait_for_images = |east_image: String, west_image: String| {
        let w = &w;
        async move {
            let deadline = tokio::time::Instant::now() + LIMIT;
            while image_of(&w.east, "app") != east_image || image_of(&w.west, "app") != west_image {
                assert!(tokio::time::Instant::now() < deadline, "east {} west {}: {:#}", image_of(&w.east, "app"), image_of(&w.west, "app"), w.releases().await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            w.settled().await
        }
    };

    let (b1, d1) = push(first).await;
    wait_for_images(format!("{east_host}/team/hello@{d1}"), format!("{west_host}/team-west/hello@{d1}")).await;
    let (_, build) = w.kiln.request(Method::GET, &format!("/api/v1/builds/{b1}"), Some(&w.token), None).await;
    let syncs = build["syncs"].as_array().unwrap();
    assert_eq!(syncs.len(), 2, "{build:#}");
    for s in syncs {
        assert_eq!(s["state"], "Verified", "{s}");
        assert!(s["bytes_sent"].as_i64().unwrap() > 0 && s["blobs_sent"].as_i64().unwrap() > 0, "{s}");
    }
    // The copies are really there, under the same digest.
    for (registry, path) in [(&east_registry, "team/hello"), (&west_registry, "team-west/hello")] {
        let reference: registry_sync::ImageRef = format!("{}/{path}@{d1}", registry.host()).parse().unwrap();
        let opts = registry_sync::RegistryOptions { insecure_registries: vec![registry.host()], ..Default::default() };
        assert_eq!(registry_sync::pull_image(&reference, &opts).await.unwrap().manifest_digest, d1);
    }
    // Re-running the sync sends nothing: every blob is there.
    let asked = builder_api::store::now_ms();
    let (status, _) = w.kiln.request(Method::POST, &format!("/api/v1/builds/{b1}/sync"), Some(&w.token), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let syncs = w.kiln.ctx.store.syncs(b1).await.unwrap();
        if syncs.iter().all(|s| s.state == "Verified" && s.updated_at >= asked) {
            assert!(syncs.iter().all(|s| s.bytes_sent == 0 && s.blobs_sent == 0), "{syncs:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{syncs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second commit rolls both clusters forward.
    let second = repo.commit_files(&[("main.go", b"package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"second\") }\n".as_slice(), false)], "second");
    let (_, d2) = push(second).await;
    assert_ne!(d1, d2);
    wait_for_images(format!("{east_host}/team/hello@{d2}"), format!("{west_host}/team-west/hello@{d2}")).await;

    // Back to the first build everywhere — but in west that rollout never becomes available.
    w.west.fail_rollouts_of(d1.trim_start_matches("sha256:"));
    let (status, answer) = w.kiln.request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({"build": b1}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let releases = wait_for_images(format!("{east_host}/team/hello@{d1}"), format!("{west_host}/team-west/hello@{d2}")).await;
    let (east, west) = (history(&releases, "east"), history(&releases, "west"));
    assert_eq!((east[0]["trigger"].as_str(), east[0]["state"].as_str()), (Some("rollback"), Some("Complete")), "{releases:#}");
    assert_eq!(west[0]["state"], "RolledBack", "{releases:#}");
    assert!(west[0]["reason"].as_str().unwrap().contains("ProgressDeadlineExceeded"), "{releases:#}");
    let current: Vec<(&str, &str)> =
        releases["releases"].as_array().unwrap().iter().map(|r| (r["cluster"].as_str().unwrap(), r["digest"].as_str().unwrap())).collect();
    assert_eq!(current, [("east", d1.as_str()), ("west", d2.as_str())]);
    // One message, about the build that made the image, naming the cluster and the reason.
    let told = robots.wait_taken(1, LIMIT).await;
    assert_eq!(told.len(), 1, "{told:#?}");
    let message = &told[0].body;
    assert_eq!((&message["event"], &message["build"]["id"], &message["rollout"]["cluster"]), (&json!("rolled_back"), &json!(b1), &json!("west")), "{message:#}");
    assert!(message["rollout"]["reason"].as_str().unwrap().contains("ProgressDeadlineExceeded"), "{message:#}");
    // Every rollout of the history, oldest first: the first build, the re-sync of it (a no-op:
    // the Deployment ran that image already), the second build, the rollback.
    let triggers: Vec<(&str, Option<&str>)> = east.iter().rev().map(|r| (r["trigger"].as_str().unwrap(), r["reason"].as_str())).collect();
    assert_eq!(
        triggers,
        [("sync", None), ("sync", Some("the Deployment already ran this image")), ("sync", None), ("rollback", None)],
        "{releases:#}"
    );
}

/// A Deployment in the cluster (`name`, one container `app`), optionally annotated.
fn deployment(name: &str, image: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]}}}
    })
}

/// The fake's requests about Deployments in `ns`: (verb, name).
fn deployment_requests_in(fake: &FakeKube, ns: &str) -> Vec<(String, Option<String>)> {
    fake.requests().into_iter().filter(|r| r.resource == "deployments" && r.namespace.as_deref() == Some(ns)).map(|r| (r.verb.to_string(), r.name)).collect()
}

/// Deploy targets are granted, not claimed: tenant `team` may deploy into `shop` only. Its owner
/// subscribing a Deployment in `kube-system`, in tenant `team-b`'s namespace or in one nobody
/// granted is 403 naming the setting; a repository outside its registry project is 403 too.
#[tokio::test]
async fn a_subscription_outside_the_tenants_deploy_namespaces_or_registry_project_is_forbidden() {
    let w = RolloutWorld::new().await;
    w.kiln.tenant("team-b").await;
    grant(&w.kiln, "team-b", json!({"deploy_namespaces": ["other-shop"]})).await;
    let sub = |body: Value| {
        let w = &w;
        async move { w.kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&w.token), Some(body)).await }
    };
    let base = json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "policy": "glob:v*"});
    for ns in ["kube-system", "other-shop", "default"] {
        let mut body = base.clone();
        body["namespace"] = json!(ns);
        let (status, answer) = sub(body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{ns}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("namespace \"{ns}\" is not one of tenant team's deploy_namespaces [\"shop\"]"))
                && error.contains("PUT /api/v1/tenants/team/settings"),
            "{error}"
        );
    }
    // With a registry project, a subscription follows only the tenant's own repositories.
    grant(&w.kiln, "team", json!({"deploy_namespaces": ["shop"], "registry_project": "team"})).await;
    let mut body = base.clone();
    body["repository"] = json!("team-b/hello");
    let (status, answer) = sub(body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("outside tenant team's registry project \"team\""), "{answer}");
    // An admin cannot grant another tenant's namespace, nor Kubernetes' own.
    let path = "/api/v1/tenants/team/settings";
    let (status, answer) = w.kiln.request(Method::PUT, path, Some(ADMIN), Some(json!({"deploy_namespaces": ["shop", "other-shop"]}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("team-b"), "{answer}");
    let (status, answer) = w.kiln.request(Method::PUT, path, Some(ADMIN), Some(json!({"deploy_namespaces": ["kube-system"]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // Nothing was stored by any refusal; the granted one is.
    let (status, answer) = sub(base).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["subscription"]["repository"], "team/hello");
    assert_eq!(w.kiln.ctx.store.subscriptions_for_repository("team-b/hello").await.unwrap().len(), 0);
    let (_, subs) = w.kiln.request(Method::GET, "/api/v1/apps/hello/subscriptions", Some(&w.token), None).await;
    assert_eq!(subs["subscriptions"].as_array().unwrap().len(), 1, "{subs}");
}

/// Discovery lists only granted namespaces: an annotated Deployment in `kube-system` is never
/// even read, one in tenant `team-b`'s namespace that names `team/hello` is ignored, the one in
/// `shop` is subscribed.
#[tokio::test]
async fn annotated_deployments_outside_the_tenants_deploy_namespaces_are_not_discovered() {
    let w = RolloutWorld::new().await;
    w.kiln.tenant("team-b").await;
    grant(&w.kiln, "team-b", json!({"deploy_namespaces": ["other-shop"]})).await;
    let annotated = json!({"kiln.dev/app": "team/hello", "kiln.dev/policy": "glob:v*"});
    let old = format!("{EAST}/team/hello:old");
    for (ns, name) in [("kube-system", "coredns"), ("other-shop", "theirs"), ("default", "ungranted"), ("shop", "api")] {
        w.east.create(ns, "deployments", deployment(name, &old, annotated.clone())).unwrap();
    }
    assert_eq!(builder_api::rollout::discovery::discover(&w.kiln.ctx).await, 1);
    let subs = w.kiln.ctx.store.subscriptions_for_repository("team/hello").await.unwrap();
    let targets: Vec<(&str, &str, &str)> = subs.iter().map(|s| (s.cluster.as_str(), s.namespace.as_str(), s.deployment.as_str())).collect();
    assert_eq!(targets, [("east", "shop", "api")]);
    // Kiln read no Deployment where no tenant may deploy.
    for ns in ["kube-system", "default"] {
        assert_eq!(deployment_requests_in(&w.east, ns), [], "{ns}");
        assert_eq!(deployment_requests_in(&w.west, ns), [], "{ns}");
    }

    // A push rolls out into shop only; the others keep their image.
    let (status, body) = w.harbor(&fixture("push-default-tag.json"), AUTH).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    w.settled().await;
    let image = |ns: &str, name: &str| w.east.get("deployments", ns, name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image("shop", "api"), format!("{EAST}/team/hello@{D1}"));
    for (ns, name) in [("kube-system", "coredns"), ("other-shop", "theirs"), ("default", "ungranted")] {
        assert_eq!(image(ns, name), old.as_str(), "{ns}/{name}");
    }
}

/// The grant is checked again when a rollout starts: a subscription outside it (one an older
/// release stored, made here straight in the store) gets a Failed rollout with the reason, and
/// Kiln sends not one request about that Deployment. Narrowing the grant under a subscription is
/// refused with the list; the one already outside blocks no settings change.
#[tokio::test]
async fn a_rollout_never_touches_a_deployment_outside_the_tenants_deploy_namespaces() {
    let w = RolloutWorld::new().await;
    w.subscribe("east", "glob:v*").await;
    w.east.create("default", "deployments", deployment("web", &format!("{EAST}/team/hello:old"), json!({}))).unwrap();
    let store = &w.kiln.ctx.store;
    let tenant = store.tenant_by_name("team").await.unwrap().unwrap();
    let app = store.app_by_name(tenant.id, "hello").await.unwrap().unwrap();
    let legacy = store
        .create_subscription(&builder_api::store::NewSubscription {
            app_id: app.id,
            cluster: "east".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            container: "app".into(),
            repository: "team/hello".into(),
            policy: "glob:v*".into(),
            rollback_on_failure: true,
            strategy: None,
        })
        .await
        .unwrap();
    w.east.reset_counters();

    let (status, body) = w.harbor(&fixture("push-default-tag.json"), AUTH).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let releases = w.settled().await;
    let of = |ns: &str| releases["releases"].as_array().unwrap().iter().find(|r| r["namespace"] == ns).unwrap()["history"][0].clone();
    assert_eq!(of("shop")["state"], "Complete", "{releases:#}");
    let refused = of("default");
    assert_eq!(refused["state"], "Failed", "{releases:#}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("not touched") && reason.contains("namespace \"default\" is not one of tenant team's deploy_namespaces"), "{reason}");
    assert_eq!(deployment_requests_in(&w.east, "default"), [], "not even a read outside the grant");
    assert_eq!(w.east.get("deployments", "default", "web").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"], format!("{EAST}/team/hello:old"));
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D1}"));
    assert_eq!(w.east.count("patch", "deployments"), 1);

    // Narrowing the grant under the subscription in shop is refused, naming it; the legacy one
    // (outside already) does not block a change.
    let path = "/api/v1/tenants/team/settings";
    let (status, answer) = w.kiln.request(Method::PUT, path, Some(ADMIN), Some(json!({"deploy_namespaces": []}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("of app hello (east/shop/web)") && !error.contains(&format!("subscription {} ", legacy.id)), "{error}");
    let (status, answer) = w.kiln.request(Method::PUT, path, Some(ADMIN), Some(json!({"deploy_namespaces": ["shop", "staging"]}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["effective"]["deploy_namespaces"], json!(["shop", "staging"]));
    // Once the subscription is gone, the grant narrows.
    let (_, subs) = w.kiln.request(Method::GET, "/api/v1/apps/hello/subscriptions", Some(&w.token), None).await;
    let shop = subs["subscriptions"].as_array().unwrap().iter().find(|s| s["namespace"] == "shop").unwrap()["id"].as_i64().unwrap();
    let (status, _) = w.kiln.request(Method::DELETE, &format!("/api/v1/apps/hello/subscriptions/{shop}"), Some(&w.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, answer) = w.kiln.request(Method::PUT, path, Some(ADMIN), Some(json!({"deploy_namespaces": ["staging"]}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}
