//! Per-tenant settings: `GET`/`PUT /api/v1/tenants/{tenant}/settings` (every role of the tenant
//! reads, only an admin writes), the refusals (bad values with the field and the rule; a
//! namespace or registry project another tenant has; apps outside the registry project), and a
//! kube build of a tenant with its own namespace, registry Secret, cache claim, CPU, memory and
//! timeout through the fake API server.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::store::{BuildState, TenantSettings};
use serde_json::{json, Value};

use crate::kube_builds::{fake_options, job_name, kube_config};
use crate::support::fake_kube::FakeKube;
use crate::support::fixtures::{app_spec, fixture_files};
use crate::support::git_server::GitServer;
use crate::support::kiln::{TestKiln, ADMIN};
use crate::support::registry::TestRegistry;

fn settings_path(tenant: &str) -> String {
    format!("/api/v1/tenants/{tenant}/settings")
}

/// A token of `role` for the tenant, made by its owner.
async fn token(kiln: &TestKiln, owner: &str, tenant: &str, role: &str) -> String {
    let (status, body) =
        kiln.request(Method::POST, &format!("/api/v1/tenants/{tenant}/tokens"), Some(owner), Some(json!({ "role": role }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_string()
}

fn full_settings() -> Value {
    json!({
        "namespace": "builds-team-a",
        "registry_project": "team-a",
        "registry_secret": "team-a-robot",
        "pull_secret": "team-a-pull",
        "max_concurrent_builds": 3,
        "cpu": "1500m",
        "memory": "3Gi",
        "ephemeral_storage": "24Gi",
        "workspace_size": "10Gi",
        "build_timeout_secs": 900,
        "cache_claim": "team-a-cache",
        "deploy_namespaces": ["team-a-prod", "team-a-staging"],
    })
}

#[tokio::test]
async fn settings_round_trip_and_only_an_admin_changes_them() {
    let kiln = TestKiln::start(&[]).await;
    let owner = kiln.tenant("team-a").await;
    let other = kiln.tenant("team-b").await;
    let developer = token(&kiln, &owner, "team-a", "developer").await;
    let viewer = token(&kiln, &owner, "team-a", "viewer").await;
    let path = settings_path("team-a");

    // Nothing set: every value is the config's.
    let (status, body) = kiln.request(Method::GET, &path, Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["settings"].as_object().unwrap().values().all(Value::is_null), "{body}");
    assert_eq!(body["effective"]["namespace"], "kiln-team-a");
    assert_eq!(body["effective"]["build_timeout_secs"], 3600);
    assert_eq!(body["effective"]["registry_secret"], Value::Null);
    assert_eq!(body["effective"]["global_max_concurrent_builds"], 2);
    assert_eq!(body["effective"]["deploy_namespaces"], json!([]), "unset grants no namespace to deploy to");

    // The owner may not change them (nor may anyone below): 403 that says an admin is needed.
    for t in [&owner, &developer, &viewer] {
        let (status, body) = kiln.request(Method::PUT, &path, Some(t), Some(full_settings())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
    }

    // The admin sets them; the answer and every role's read show exactly what was set.
    let (status, put) = kiln.request(Method::PUT, &path, Some(ADMIN), Some(full_settings())).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["settings"], full_settings());
    for t in [&owner, &developer, &viewer, &ADMIN.to_string()] {
        let (status, body) = kiln.request(Method::GET, &path, Some(t), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, put);
    }
    assert_eq!(put["effective"]["namespace"], "builds-team-a");
    assert_eq!(put["effective"]["build_timeout_secs"], 900);
    assert_eq!(put["effective"]["cache_claim"], "team-a-cache");
    assert_eq!(put["effective"]["deploy_namespaces"], json!(["team-a-prod", "team-a-staging"]));
    assert_eq!(put["effective"]["ephemeral_storage"], "24Gi");
    assert_eq!(put["effective"]["workspace_size"], "10Gi");
    let stored = kiln.ctx.store.tenant_by_name("team-a").await.unwrap().unwrap();
    assert_eq!(stored.settings.cpu.as_deref(), Some("1500m"));
    let a_id = stored.id;
    assert_eq!(kiln.ctx.store.tenant_caps().await.unwrap(), [(a_id, 3)].into());

    // Another tenant's settings are not found, whatever the role; B's own read shows B's.
    let (status, body) = kiln.request(Method::GET, &path, Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = kiln.request(Method::GET, &settings_path("team-b"), Some(&other), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["effective"]["namespace"], "kiln-team-b");
    let (status, body) = kiln.request(Method::PUT, &settings_path("nope"), Some(ADMIN), Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // PUT replaces: a field left out is unset and falls back to the config.
    let (status, body) = kiln.request(Method::PUT, &path, Some(ADMIN), Some(json!({ "cpu": "2" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settings"]["cpu"], "2");
    assert_eq!(body["settings"]["namespace"], Value::Null);
    assert_eq!(body["effective"]["namespace"], "kiln-team-a");
    assert_eq!(body["effective"]["build_timeout_secs"], 3600);
    assert!(kiln.ctx.store.tenant_caps().await.unwrap().is_empty());

    // Each change is in the tenant's audit log, by the admin.
    let (_, log) = kiln.request(Method::GET, "/api/v1/audit", Some(&owner), None).await;
    let changes: Vec<&Value> = log["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "tenant.settings").collect();
    assert_eq!(changes.len(), 2, "{log}");
    assert!(changes.iter().all(|e| e["target"] == "tenant/team-a" && e["actor"] == "admin"), "{log}");
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_field_and_the_rule() {
    let kiln = TestKiln::start(&[]).await;
    kiln.tenant("team-a").await;
    let path = settings_path("team-a");
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({ "namespace": "Team_A" }), "namespace", "lowercase"),
        (json!({ "namespace": "a".repeat(64) }), "namespace", "1-63"),
        (json!({ "registry_project": "team/a" }), "registry_project", "no '/'"),
        (json!({ "registry_secret": "robot$team" }), "registry_secret", "Kubernetes name"),
        (json!({ "cache_claim": "-cache" }), "cache_claim", "Kubernetes name"),
        (json!({ "max_concurrent_builds": 0 }), "max_concurrent_builds", "at least 1"),
        (json!({ "max_concurrent_builds": -1 }), "max_concurrent_builds", "invalid value"),
        (json!({ "cpu": "2Gi" }), "cpu", "millicores"),
        (json!({ "cpu": "0" }), "cpu", "zero"),
        (json!({ "cpu": 2 }), "cpu", "invalid type"),
        (json!({ "memory": "1GB" }), "memory", "Mi"),
        (json!({ "memory": "-512Mi" }), "memory", "Kubernetes quantity"),
        (json!({ "ephemeral_storage": "20GB" }), "ephemeral_storage", "Kubernetes quantity"),
        (json!({ "ephemeral_storage": "0" }), "ephemeral_storage", "zero"),
        (json!({ "workspace_size": "lots" }), "workspace_size", "Gi"),
        (json!({ "workspace_size": 8 }), "workspace_size", "invalid type"),
        (json!({ "ephemeral_storage": "4Gi", "workspace_size": "8Gi" }), "ephemeral_storage", "workspace_size"),
        (json!({ "build_timeout_secs": 30 }), "build_timeout_secs", "60 to 86400"),
        (json!({ "build_timeout_secs": 86401 }), "build_timeout_secs", "60 to 86400"),
        (json!({ "deploy_namespaces": ["Prod"] }), "deploy_namespaces", "lowercase"),
        (json!({ "deploy_namespaces": ["kube-system"] }), "deploy_namespaces", "system namespace"),
        (json!({ "deploy_namespaces": ["prod", "prod"] }), "deploy_namespaces", "twice"),
        (json!({ "deploy_namespaces": "prod" }), "deploy_namespaces", "invalid type"),
        (json!({ "timeout": 600 }), "timeout", "unknown field"),
        (json!(["namespace"]), "invalid JSON body", "JSON object"),
    ];
    for (body, field, rule) in cases {
        let (status, answer) = kiln.request(Method::PUT, &path, Some(ADMIN), Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{body}: no reason: {answer}"));
        assert!(error.contains(field) && error.contains(rule), "{body}: the error should name {field:?} and {rule:?}: {error}");
    }
    // Nothing was stored by any of them.
    let stored = kiln.ctx.store.tenant_by_name("team-a").await.unwrap().unwrap();
    assert_eq!(stored.settings, TenantSettings::default());
}

#[tokio::test]
async fn a_tenant_whose_default_namespace_is_not_a_namespace_name_needs_one_of_its_own() {
    let kiln = TestKiln::start(&[]).await;
    // 63 characters: a valid tenant name, but `kiln-` + it is 68, past a namespace name's 63.
    let long = format!("team-{}", "a".repeat(58));
    assert_eq!(long.len(), 63);
    let create = |body: Value| kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(body));
    let (status, body) = create(json!({"name": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("(68 characters)") && error.contains("at most 63") && error.contains("\"namespace\""), "{error}");
    let (status, body) = kiln.request(Method::GET, "/api/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.to_string().contains(&long), "a refused tenant was created: {body}");

    // With a namespace of its own it is created, and builds there.
    let (status, body) = create(json!({"name": long, "namespace": "builds-long"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let owner = body["token"].as_str().unwrap().to_string();
    let (status, body) = kiln.request(Method::GET, &settings_path(&long), Some(&owner), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["effective"]["namespace"], "builds-long");
    // Unsetting the namespace would leave it with none: refused the same way.
    let (status, body) = kiln.request(Method::PUT, &settings_path(&long), Some(ADMIN), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 63"), "{body}");
    // A bad namespace at creation is the settings' own refusal.
    let (status, body) = create(json!({"name": "short", "namespace": "Not_A_Name"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn no_two_tenants_share_a_namespace_or_a_registry_project_and_apps_stay_in_theirs() {
    let kiln = TestKiln::start(&[]).await;
    let owner_a = kiln.tenant("team-a").await;
    kiln.tenant("team-b").await;
    let put = |tenant: &'static str, body: Value| {
        let kiln = &kiln;
        async move { kiln.request(Method::PUT, &settings_path(tenant), Some(ADMIN), Some(body)).await }
    };

    // B's default namespace, then a namespace A has, then a namespace a future tenant would get.
    let (status, body) = put("team-a", json!({ "namespace": "kiln-team-b" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("team-b"), "{body}");
    assert_eq!(put("team-a", json!({ "namespace": "shared-builds" })).await.0, StatusCode::OK);
    let (status, body) = put("team-b", json!({ "namespace": "shared-builds" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(put("team-a", json!({ "namespace": "kiln-team-c" })).await.0, StatusCode::OK);
    let (status, body) = kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(json!({ "name": "team-c" }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("kiln-team-c"), "{body}");
    // Setting it again on the same tenant is no conflict with itself.
    assert_eq!(put("team-a", json!({ "namespace": "kiln-team-c" })).await.0, StatusCode::OK);

    // An app outside the project keeps the project from being set, naming the app.
    kiln.app(&owner_a, app_spec("web", "http://127.0.0.1:9/a/web.git", "a/web", "harbor.example.com/legacy/web", "hook-secret-a")).await;
    let (status, body) = put("team-a", json!({ "registry_project": "team-a" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("web (harbor.example.com/legacy/web)"), "{body}");
    assert_eq!(put("team-a", json!({ "registry_project": "legacy" })).await.0, StatusCode::OK);
    let (status, body) = put("team-b", json!({ "registry_project": "legacy" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // With a project, new apps must push into it.
    let spec = app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "harbor.example.com/elsewhere/api", "hook-secret-a");
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps", Some(&owner_a), Some(spec)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("registry project \"legacy\""), "{body}");
    kiln.app(&owner_a, app_spec("api", "http://127.0.0.1:9/a/api.git", "a/api", "harbor.example.com/legacy/api", "hook-secret-a")).await;

    // A deploy namespace is one tenant's as well: not another's build namespace, not another's
    // deploy namespace, and no later tenant builds in it.
    let (status, body) = put("team-b", json!({ "deploy_namespaces": ["kiln-team-a"] })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("deploy_namespaces: namespace \"kiln-team-a\" is tenant team-a's"), "{body}");
    assert_eq!(put("team-b", json!({ "deploy_namespaces": ["shop-b"] })).await.0, StatusCode::OK);
    let (status, body) = put("team-a", json!({ "registry_project": "legacy", "deploy_namespaces": ["shop-b"] })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("team-b"), "{body}");
    let (status, body) = put("team-a", json!({ "registry_project": "legacy", "namespace": "shop-b" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(json!({ "name": "team-d", "namespace": "shop-b" }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// A tenant with every setting a Job uses: its build runs as a Job in its own namespace (the
/// watchers, which watch all namespaces, follow it there), pushes with the tenant's registry
/// Secret, keeps its Go cache on the tenant's claim, and the Job carries the tenant's CPU,
/// memory, disk (ephemeral storage, workspace size) and timeout.
#[tokio::test]
async fn a_tenants_kube_build_runs_in_its_namespace_with_its_secret_cache_resources_and_timeout() {
    const GIT_TOKEN: &str = "glpat-settings-token-0123";
    const PUSH_PASSWORD: &str = "tenant-robot-password-42";
    crate::support::init();
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    // Only the tenant's robot may push: a push without its Secret is refused.
    let registry = TestRegistry::start_with_htpasswd("robot-team", PUSH_PASSWORD).await;
    let fake_root = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(fake_options(fake_root.path(), &["builds-team", "kiln-team"]));
    fake.create_secret("builds-team", "team-robot", &[("username", "robot-team"), ("password", PUSH_PASSWORD)]);
    // The tenant's cache claim: a pod mounting a claim that does not exist is never scheduled.
    fake.create_pvc("builds-team", "team-cache");
    let dir = tempfile::tempdir().unwrap();
    let config = kube_config(dir.path(), &registry);
    let kiln = TestKiln::start_with_kube(dir, config, Some(crate::kube_builds::kiln_client(&fake))).await;
    let owner = kiln.tenant("team").await;
    let settings = json!({
        "namespace": "builds-team",
        "registry_project": "team",
        "registry_secret": "team-robot",
        "cache_claim": "team-cache",
        "cpu": "750m",
        "memory": "1536Mi",
        "ephemeral_storage": "6Gi",
        "workspace_size": "3Gi",
        "build_timeout_secs": 900,
    });
    let (status, body) = kiln.request(Method::PUT, &settings_path("team"), Some(ADMIN), Some(settings)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let repo = git.create_repo("team/hello");
    let files = fixture_files("go-hello");
    let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
    let sha = repo.commit_files(&files, "first");
    let mut spec = app_spec("hello", &git.url("team/hello"), "team/hello", &format!("{}/team/hello", registry.host()), "hook-secret-s");
    spec["git_token"] = GIT_TOKEN.into();
    spec["kind"] = "go".into();
    kiln.app(&owner, spec).await;
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps/hello/builds", Some(&owner), Some(json!({ "commit": sha }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["build"]["id"].as_i64().unwrap();

    let name = job_name(id);
    let job = fake.wait_for("jobs", "builds-team", &name, Duration::from_secs(60), |j| j.cloned()).await;
    assert!(fake.get("jobs", "kiln-team", &name).is_none(), "the Job is also in the default namespace");
    let spec = &job["spec"];
    let deadline = spec["activeDeadlineSeconds"].as_i64().unwrap();
    assert!((880..=900).contains(&deadline), "activeDeadlineSeconds {deadline}: the tenant's 900 s timeout");
    let pod = &spec["template"]["spec"];
    let compile = pod["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "compile").unwrap();
    for side in ["requests", "limits"] {
        assert_eq!(compile["resources"][side], json!({ "cpu": "750m", "memory": "1536Mi", "ephemeral-storage": "6Gi" }), "{side}: {compile}");
    }
    let workspace = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "workspace").unwrap();
    assert_eq!(workspace["emptyDir"]["sizeLimit"], "3Gi");
    let cache = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "cache").unwrap();
    assert_eq!(cache["persistentVolumeClaim"]["claimName"], "team-cache");
    let image = &pod["containers"][0];
    let password = image["env"].as_array().unwrap().iter().find(|e| e["name"] == "KILN_REGISTRY_PASSWORD").unwrap();
    assert_eq!(password["valueFrom"]["secretKeyRef"], json!({ "name": "team-robot", "key": "password" }));

    let build = kiln.wait_final(id, Duration::from_secs(240)).await;
    let log = kiln.log(id).await;
    assert_eq!(build.state, BuildState::Succeeded, "{:?}\n{log}", build.reason);
    assert!(log.contains(&format!("created Job builds-team/{name}")), "{log}");
    assert!(build.image.as_deref().unwrap().starts_with(&format!("{}/team/hello@sha256:", registry.host())), "{build:?}");
    for text in [log.as_str(), build.reason.as_deref().unwrap_or("")] {
        assert!(!text.contains(PUSH_PASSWORD) && !text.contains(GIT_TOKEN), "a secret leaked:\n{text}");
    }
    // The git token Secret went to the tenant's namespace; the Go cache onto the tenant's claim.
    assert!(fake.get("secrets", "builds-team", "kiln-git-hello").is_some(), "git token Secret in builds-team");
    assert!(fake.get("secrets", "kiln-team", "kiln-git-hello").is_none(), "git token Secret in the default namespace");
    let claim = fake.root().join("pvc").join("builds-team").join("team-cache");
    assert!(std::fs::read_dir(&claim).is_ok_and(|mut d| d.next().is_some()), "nothing cached on {}", claim.display());
    // Kiln deletes the Job once the log is stored, in the namespace it made it in.
    fake.wait_for("jobs", "builds-team", &name, Duration::from_secs(30), |j| if j.is_none() { Some(()) } else { None }).await;
}
