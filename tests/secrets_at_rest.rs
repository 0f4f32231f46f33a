//! Secrets at rest and in logs: the database files hold no secret in plain text, `kiln admin
//! rotate-key` moves every secret to a new key and builds still clone and push afterwards, a
//! wrong key stops the start naming the value, each tenant's Harbor webhook secret opens only its
//! own project, and the log masker knows the registry password.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::store::BuildState;
use serde_json::{json, Value};

use crate::support::fixtures::{fake_go, fixture_app};
use crate::support::git_server::GitServer;
use crate::support::kiln::{store_files, test_config, TestKiln, ADMIN};
use crate::support::registry::{free_port, TestRegistry};
use crate::support::secrets;
use crate::support::serve_process::{write_config, ServeProcess};

const GIT_TOKEN: &str = "glpat-at-rest-token-7f3a9c";
const WEBHOOK_SECRET: &str = "hook-secret-at-rest-51d2";
const HARBOR_SECRET: &str = "harbor-secret-at-rest-c0ffee42";
const GITLAB_TOKEN: &str = "glpat-at-rest-api-token-9e8d";
const BUILD_LIMIT: Duration = Duration::from_secs(240);
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// Every secret in `secrets` that one of the store's files contains in plain text, with the
/// file. The files depend on the backend (`support::kiln::store_files`): SQLite's `kiln.db`, its
/// WAL and shared memory; PostgreSQL's database directory and write-ahead log.
fn plain_text_in_store(data: &Path, secrets: &[&str]) -> Vec<String> {
    let mut found = vec![];
    for file in store_files(data) {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        for secret in secrets {
            if memchr::memmem::find(&bytes, secret.as_bytes()).is_some() {
                found.push(format!("{} holds {}…", file.display(), &secret[..6]));
            }
        }
    }
    found
}

/// Whether the store's files hold `needle` at all (the sealed values are somewhere).
fn store_holds(data: &Path, needle: &str) -> bool {
    // memmem: PostgreSQL's write-ahead log is hundreds of MiB while the suite runs.
    store_files(data).iter().any(|file| std::fs::read(file).is_ok_and(|b| memchr::memmem::find(&b, needle.as_bytes()).is_some()))
}

/// A Harbor `PUSH_ARTIFACT` delivery (Harbor's default payload format) for `project/app`. Harbor
/// webhooks are configured per project and a push names its "repository namespace" (the project)
/// and repository (https://goharbor.io/docs/2.6.0/working-with-projects/project-configuration/configure-webhooks);
/// the policy's optional "Auth Header" is sent verbatim as `Authorization`
/// (https://deploy-preview-5202.docs.kargo.io/user-guide/reference-docs/webhook-receivers/harbor).
fn harbor_push(project: &str) -> String {
    json!({"type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "robot", "event_data": {
        "resources": [{"digest": DIGEST, "tag": "v1", "resource_url": format!("harbor.example/{project}/app:v1")}],
        "repository": {"name": "app", "namespace": project, "repo_full_name": format!("{project}/app"), "repo_type": "private"}}})
    .to_string()
}

async fn harbor(kiln: &TestKiln, project: &str, auth: &str) -> (StatusCode, Value) {
    let req = Request::post("/hooks/harbor").header("authorization", auth).header("content-type", "application/json").body(Body::from(harbor_push(project))).unwrap();
    kiln.send(req).await
}

async fn wait_final(serve: &ServeProcess, token: &str, id: i64) -> Value {
    let deadline = tokio::time::Instant::now() + BUILD_LIMIT;
    loop {
        let (_, body) = serve.call(reqwest::Method::GET, &format!("/api/v1/builds/{id}"), token, None).await;
        let state = body["build"]["state"].as_str().unwrap_or_default().to_string();
        if ["Succeeded", "Failed", "Cancelled", "TimedOut"].contains(&state.as_str()) {
            return body["build"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "build {id} still {state} after {BUILD_LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_key(path: &Path, bytes: &[u8; 32]) {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, base64::engine::general_purpose::STANDARD.encode(bytes)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn the_database_holds_no_plain_secret_and_builds_clone_and_push_after_rotate_key() {
    crate::support::init();
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start().await;
    secrets::register(WEBHOOK_SECRET);
    secrets::register(HARBOR_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rest = format!("[registry]\ninsecure = [\"{}\"]\n[toolchains]\ngoproxy = \"off\"\n", registry.host());
    let config_file = write_config(dir.path(), ADMIN, Path::new(env!("CARGO_BIN_EXE_kiln")), &rest);

    // First start: the key is generated beside the database, readable by its owner only.
    let mut serve = ServeProcess::start(&config_file, free_port());
    serve.ready().await;
    let key_file = data.join("secret.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "{}", key_file.display());
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let token = serve.tenant(ADMIN, "team").await;
    let (status, body) = serve.call(reqwest::Method::PUT, "/api/v1/tenants/team/settings", ADMIN, Some(json!({"registry_project": "team"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/hello", "go-hello", (WEBHOOK_SECRET, GIT_TOKEN), json!({"gitlab_token": GITLAB_TOKEN}));
    secrets::register(GITLAB_TOKEN);
    let (status, body) = serve.call(reqwest::Method::POST, "/api/v1/apps", &token, Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = serve.call(reqwest::Method::PUT, "/api/v1/tenants/team/harbor-webhook-secret", &token, Some(json!({"secret": HARBOR_SECRET}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("secret").is_none(), "a given secret is never answered: {body}");
    serve.kill();

    let all = [GIT_TOKEN, WEBHOOK_SECRET, HARBOR_SECRET, GITLAB_TOKEN];
    assert_eq!(plain_text_in_store(&data, &all), Vec::<String>::new());
    assert!(store_holds(&data, "enc:v1:"), "the sealed values are in the store");

    // Rotate while Kiln is stopped: every secret moves to the new key, the key file is replaced.
    let new_key_file = dir.path().join("new.key");
    let new_bytes: [u8; 32] = rand::random();
    write_key(&new_key_file, &new_bytes);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["admin", "rotate-key", "--new-key-file"])
        .arg(&new_key_file)
        .arg("--config")
        .arg(&config_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    secrets::capture("kiln admin rotate-key", &said);
    assert!(out.status.success(), "rotate-key failed: {said}");
    assert!(said.contains("re-encrypted 4 secrets"), "{said}");
    let rotated = builder_api::store::SecretKey::read_file(&key_file).unwrap();
    assert_eq!(rotated.id(), builder_api::store::SecretKey::from_bytes(&new_bytes).id(), "the key file holds the new key");
    assert_eq!(plain_text_in_store(&data, &all), Vec::<String>::new());

    // The old key no longer opens the store: the start stops, naming the value, never its text.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .env("KILN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("KILN_SECRET_KEY", old_key.trim())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    secrets::capture("kiln serve with the old key", &said);
    assert!(!out.status.success(), "kiln started with the old key: {said}");
    assert!(said.contains("cannot decrypt apps.webhook_secret of app 1") && said.contains(rotated.id()), "{said}");

    // Started again with the new key (the replaced key file), a build clones with the app's git
    // token and pushes.
    let mut serve = ServeProcess::start(&config_file, free_port());
    serve.ready().await;
    let (status, body) = serve.call(reqwest::Method::POST, "/api/v1/apps/hello/builds", &token, Some(json!({"commit": sha, "ref": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let build = wait_final(&serve, &token, body["build"]["id"].as_i64().unwrap()).await;
    assert_eq!(build["state"], "Succeeded", "{build}");
    assert!(build["image_digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{build}");
    serve.kill();
    assert_eq!(plain_text_in_store(&data, &all), Vec::<String>::new());
    secrets::assert_no_leaks();
}

#[tokio::test]
async fn a_harbor_delivery_must_carry_the_secret_of_the_tenant_whose_project_it_names() {
    const FALLBACK: &str = "harbor-service-wide-auth-9e1b";
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.harbor.webhook_auth = Some(FALLBACK.into());
    let data = config.store.data_dir.clone();
    let kiln = TestKiln::start_with(dir, config).await;
    secrets::register(HARBOR_SECRET);
    let a = kiln.tenant("team-a").await;
    let b = kiln.tenant("team-b").await;
    kiln.tenant("team-c").await;
    for (tenant, project) in [("team-a", "proj-a"), ("team-b", "proj-b"), ("team-c", "proj-c")] {
        let (status, body) = kiln.request(Method::PUT, &format!("/api/v1/tenants/{tenant}/settings"), Some(ADMIN), Some(json!({"registry_project": project}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A sets its own; B has one generated (answered once); C has none and keeps the fallback.
    let (status, body) = kiln.request(Method::PUT, "/api/v1/tenants/team-a/harbor-webhook-secret", Some(&a), Some(json!({"secret": HARBOR_SECRET}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("secret").is_none(), "{body}");
    let (status, body) = kiln.request(Method::PUT, "/api/v1/tenants/team-b/harbor-webhook-secret", Some(&b), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b_secret = body["secret"].as_str().expect("a generated secret is answered once").to_string();
    assert!(b_secret.len() >= 32 && body["generated"] == true, "{body}");
    let (status, body) = kiln.request(Method::PUT, "/api/v1/tenants/team-b/harbor-webhook-secret", Some(&b), Some(json!({"secret": "short"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A's project: only A's secret. B's secret and the service-wide one are refused.
    let (status, body) = harbor(&kiln, "proj-a", &b_secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.to_string().contains(HARBOR_SECRET), "{body}");
    let (status, body) = harbor(&kiln, "proj-a", FALLBACK).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = harbor(&kiln, "proj-a", HARBOR_SECRET).await;
    assert_eq!(status, StatusCode::OK, "accepted (no subscription follows it): {body}");
    assert_eq!(body["status"], "ignored", "{body}");
    // B's project with A's secret: 401; with its own: accepted.
    let (status, _) = harbor(&kiln, "proj-b", HARBOR_SECRET).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = harbor(&kiln, "proj-b", &b_secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // C (no own secret) and a project of no tenant: the service-wide secret, and only it.
    let (status, body) = harbor(&kiln, "proj-c", FALLBACK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = harbor(&kiln, "proj-c", HARBOR_SECRET).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = harbor(&kiln, "nobodys", FALLBACK).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Write-only: no answer shows it, and the database holds it sealed.
    let (_, settings) = kiln.request(Method::GET, "/api/v1/tenants/team-a/settings", Some(&a), None).await;
    assert!(!settings.to_string().contains(HARBOR_SECRET), "{settings}");
    wait_sealed_in_files(&kiln).await;
    assert_eq!(plain_text_in_store(&data, &[HARBOR_SECRET, &b_secret]), Vec::<String>::new());

    // Removed: A's project falls back to the service-wide secret.
    let (status, body) = kiln.request(Method::DELETE, "/api/v1/tenants/team-a/harbor-webhook-secret", Some(&a), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = harbor(&kiln, "proj-a", FALLBACK).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = harbor(&kiln, "proj-a", HARBOR_SECRET).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Waits until the sealed values are in the store's files (the WAL at least), so the scan that
/// follows looks at what was written.
async fn wait_sealed_in_files(kiln: &TestKiln) {
    let data = kiln.ctx.config.store.data_dir.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store_holds(&data, "enc:v1:") {
        assert!(tokio::time::Instant::now() < deadline, "nothing sealed reached the store's files");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_build_that_prints_the_registry_password_stores_stars() {
    const USER: &str = "robot$team+kiln";
    const PASSWORD: &str = "registry-password-4b7e19";
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start_with_htpasswd(USER, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&registry.host()]);
    config.registry.username = Some(USER.into());
    config.registry.password = Some(PASSWORD.into());
    // The compile step prints the registry password and the tenant's Harbor webhook secret, then
    // compiles for real.
    let leaky = fake_go(dir.path(), "leaky-go", &format!("echo \"pushing with {PASSWORD}\"\necho \"harbor says {HARBOR_SECRET}\""));
    config.toolchains.go = leaky.display().to_string();
    let kiln = TestKiln::start_with(dir, config).await;
    secrets::register(WEBHOOK_SECRET);
    secrets::register(HARBOR_SECRET);
    let token = kiln.tenant("team").await;
    let (status, body) = kiln.request(Method::PUT, "/api/v1/tenants/team/harbor-webhook-secret", Some(&token), Some(json!({"secret": HARBOR_SECRET}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/hello", "go-hello", (WEBHOOK_SECRET, GIT_TOKEN), json!({}));
    kiln.app(&token, spec).await;
    let id = kiln.trigger(&token, "hello", json!({"commit": sha, "ref": "main"})).await;
    let (build, log) = kiln.ended(id, BuildState::Succeeded, BUILD_LIMIT).await;
    assert!(build.image_digest.is_some(), "pushed with the password: {build:?}");
    let stored: Vec<String> = kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap().into_iter().map(|l| l.line).collect();
    assert!(stored.iter().any(|l| l == "pushing with ***"), "{log}");
    assert!(stored.iter().any(|l| l == "harbor says ***"), "{log}");
    assert!(stored.iter().all(|l| !l.contains(PASSWORD) && !l.contains(HARBOR_SECRET)), "{log}");
}

#[tokio::test]
async fn under_kube_the_password_in_the_tenants_registry_secret_is_masked_too() {
    use crate::kube_builds::KubeWorld;
    // Only in the tenant's registry Secret: not in Kiln's config, so only reading the Secret
    // teaches the masker this value.
    const SECRET_PASSWORD: &str = "tenant-secret-password-83ac2d";
    let w = KubeWorld::new(|c, dir| {
        c.kube.registry_secret = Some("kiln-registry".into());
        c.toolchains.go = fake_go(dir, "leaky-go", &format!("echo \"pushing with {SECRET_PASSWORD}\"")).display().to_string();
    })
    .await;
    secrets::register(SECRET_PASSWORD);
    w.fake.create_secret("kiln-team", "kiln-registry", &[("username", "robot$team+kiln"), ("password", SECRET_PASSWORD)]);
    let sha = w.app(&w.token, "team", "web", "go-hello", json!({"kind": "go"})).await;
    let id = w.trigger(&w.token, "web", &sha).await;
    let (_, log) = w.ended(id, BuildState::Succeeded).await;
    let compile = w.step_output(id, "compile").await;
    assert!(compile.iter().any(|l| l == "pushing with ***"), "{log}");
    assert!(!log.contains(SECRET_PASSWORD), "{log}");
}
