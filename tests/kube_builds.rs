//! Builds through the kube executor: one Job per build on the fake API server, whose kubelet runs
//! the Job's containers as real processes (real clone over HTTP, real Go, Maven and buildah, a
//! real docker-registry). The log must arrive whole, in order and once — also when the fake cuts
//! log streams and watches — and cluster failures must end builds with their reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::config::Config;
use builder_api::store::{Build, BuildState};
use serde_json::{json, Value};

use crate::support::fake_kube::rbac::Identity;
use crate::support::fake_kube::{FakeKube, FakeKubeOptions};
use crate::support::fixtures::{fixture_app, push_busybox_base, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{open_store, test_config, TestKiln};
use crate::support::registry::TestRegistry;
use crate::support::serve_process::ServeProcess;

pub const GIT_TOKEN: &str = "glpat-kube-token-0123456";
pub const SECRET: &str = "hook-secret-kube";
pub const LIMIT: Duration = Duration::from_secs(240);

/// A stand-in for `go` that prints `slow line 1..=lines` (one every `ms`), then runs the real Go
/// with the same arguments — so a build is visibly mid-step for a while and still succeeds.
pub fn slow_go(dir: &Path, lines: u32, ms: u32) -> PathBuf {
    crate::support::fixtures::fake_go(dir, "slow-go", &crate::support::fixtures::numbered_lines(lines, ms))
}

/// [`slow_go`] that holds at `slow line 10` until the file `gate` exists (what
/// [`crate::support::fixtures::numbered_lines_held`] does).
pub fn slow_go_held(dir: &Path, lines: u32, ms: u32, gate: &Path) -> PathBuf {
    crate::support::fixtures::fake_go(dir, "slow-go-held", &crate::support::fixtures::numbered_lines_held(lines, ms, 10, gate))
}

pub fn fake_options(root: &Path, namespaces: &[&str]) -> FakeKubeOptions {
    FakeKubeOptions {
        root: Some(root.to_path_buf()),
        kiln_binary: Some(env!("CARGO_BIN_EXE_kiln").into()),
        namespaces: namespaces.iter().map(|s| s.to_string()).chain(["default".to_string()]).collect(),
        ..FakeKubeOptions::default()
    }
}

/// The instance id of the test Kilns (`kube.instance`): their Jobs are `kiln-kilntest-<build>`.
pub const INSTANCE: &str = "kilntest";

/// The name of a test Kiln's Job for a build.
pub fn job_name(build: i64) -> String {
    builder_api::executor::kube::render::job_name(INSTANCE, build)
}

/// Kiln's identity in a cluster (`deploy/`: ServiceAccount kiln in namespace kiln).
pub fn kiln_identity() -> Identity {
    Identity::service_account("kiln", "kiln")
}

/// A client of the fake with exactly the rights `deploy/` grants Kiln: `base/rbac.yaml` (read-only
/// cluster-wide), and the RoleBindings of `build-namespace/` and `deploy-namespace/` in every
/// namespace the fake has now, as an operator applies them per tenant namespace. A right Kiln
/// uses and `deploy/` lacks fails the test that uses it.
pub fn kiln_client(fake: &FakeKube) -> kube::Client {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let read = |f: &str| std::fs::read_to_string(deploy.join(f)).unwrap();
    if fake.get("clusterroles", "", "kiln").is_none() {
        fake.create_from_yaml(&read("base/rbac.yaml"));
    }
    build_pod_accounts(fake);
    for ns in fake.list("namespaces", None) {
        let ns = ns["metadata"]["name"].as_str().unwrap_or_default().to_string();
        for (file, name) in [("build-namespace/rolebinding.yaml", "kiln-builds"), ("deploy-namespace/rolebinding.yaml", "kiln-deploys")] {
            if fake.get("rolebindings", &ns, name).is_none() {
                let yaml = read(file).replace("kind: RoleBinding\nmetadata:\n", &format!("kind: RoleBinding\nmetadata:\n  namespace: {ns}\n"));
                fake.create_from_yaml(&yaml);
            }
        }
    }
    grant_lease(fake);
    fake.client_as(kiln_identity())
}

/// What tests of `kiln serve` processes under the kube executor share: a git server with the
/// token `GIT_TOKEN`, a registry, and the fake API server (namespace `kiln-team`, the build pods'
/// ServiceAccount) served over TCP, with the kubeconfig that reaches it.
pub struct ProcessWorld {
    pub git: GitServer,
    pub registry: TestRegistry,
    pub fake: FakeKube,
    /// The kubeconfig's path, for `KUBECONFIG`.
    pub kubeconfig: String,
    pub _fake_root: tempfile::TempDir,
}

impl ProcessWorld {
    pub async fn start() -> ProcessWorld {
        crate::support::init();
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let fake_root = tempfile::tempdir().unwrap();
        let fake = FakeKube::start(fake_options(fake_root.path(), &["kiln-team"]));
        build_pod_accounts(&fake);
        let kubeconfig = fake.serve_tcp().await.display().to_string();
        ProcessWorld { git, registry, fake, kubeconfig, _fake_root: fake_root }
    }
}

/// Kiln's own namespace `kiln` and its right to the Lease there (`deploy/base/leases.yaml`), which
/// replicas on PostgreSQL elect the one running the cluster-wide loops with.
pub fn grant_lease(fake: &FakeKube) {
    if fake.get("namespaces", "", "kiln").is_none() {
        fake.create_namespace("kiln");
    }
    if fake.get("roles", "kiln", "kiln-leases").is_none() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        fake.create_from_yaml(&std::fs::read_to_string(deploy.join("base/leases.yaml")).unwrap());
    }
}

/// The ServiceAccount build pods run as (`kiln-build`, from `deploy/build-namespace/`), in every
/// namespace the fake has now: without it the ServiceAccount admission refuses the Job's pods.
pub fn build_pod_accounts(fake: &FakeKube) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-namespace");
    let mut accounts = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        accounts.extend(text.split("\n---").filter(|doc| doc.contains("\nkind: ServiceAccount")).map(String::from));
    }
    assert!(!accounts.is_empty(), "deploy/build-namespace/ has no ServiceAccount for build pods");
    for ns in fake.list("namespaces", None) {
        let ns = ns["metadata"]["name"].as_str().unwrap_or_default().to_string();
        for doc in &accounts {
            let obj: Value = serde_saphyr::from_str(doc).unwrap();
            if fake.get("serviceaccounts", &ns, obj["metadata"]["name"].as_str().unwrap()).is_none() {
                fake.create_from_yaml(&doc.replace("metadata:\n", &format!("metadata:\n  namespace: {ns}\n")));
            }
        }
    }
}

/// The config of a Kiln that runs builds as Jobs on the fake.
pub fn kube_config(dir: &Path, registry: &TestRegistry) -> Config {
    let mut c = test_config(dir, &[&registry.host()]);
    c.executor.kind = "kube".into();
    c.kube.instance = Some(INSTANCE.into());
    c.executor.max_concurrent_builds = 3;
    // The fake kubelet runs on this host, where buildah stands in for rootless BuildKit.
    c.toolchains.dockerfile_builder = Some("buildah".into());
    c
}

pub struct KubeWorld {
    pub git: GitServer,
    pub registry: TestRegistry,
    pub fake: FakeKube,
    pub kiln: TestKiln,
    pub token: String,
    _fake_root: tempfile::TempDir,
}

impl KubeWorld {
    pub async fn new(tweak: impl FnOnce(&mut Config, &Path)) -> KubeWorld {
        crate::support::init();
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let fake_root = tempfile::tempdir().unwrap();
        let fake = FakeKube::start(fake_options(fake_root.path(), &["kiln-team", "kiln-other"]));
        let dir = tempfile::tempdir().unwrap();
        let mut config = kube_config(dir.path(), &registry);
        tweak(&mut config, dir.path());
        let kiln = TestKiln::start_with_kube(dir, config, Some(kiln_client(&fake))).await;
        let token = kiln.tenant("team").await;
        KubeWorld { git, registry, fake, kiln, token, _fake_root: fake_root }
    }

    pub async fn app(&self, token: &str, tenant: &str, name: &str, fixture: &str, extra: Value) -> String {
        let path = format!("{tenant}/{name}");
        let (sha, spec) = fixture_app(&self.git, &self.registry.host(), &path, fixture, (SECRET, GIT_TOKEN), extra);
        self.kiln.app(token, spec).await;
        sha
    }

    pub async fn push(&self, tenant: &str, name: &str, sha: &str) -> i64 {
        let path = format!("{tenant}/{name}");
        self.kiln.push_hook(&GitlabPush::branch(&path, &self.git.url(&path), "main", sha), SECRET).await
    }

    pub async fn trigger(&self, token: &str, name: &str, sha: &str) -> i64 {
        self.kiln.trigger(token, name, json!({"commit": sha})).await
    }

    pub async fn ended(&self, id: i64, state: BuildState) -> (Build, String) {
        self.kiln.ended(id, state, LIMIT).await
    }

    /// The lines one step's process wrote, as stored (Kiln's own lines left out).
    pub async fn step_output(&self, id: i64, step: &str) -> Vec<String> {
        let lines = self.kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap();
        lines.into_iter().filter(|l| l.step == step && matches!(l.stream, builder_api::store::Stream::Stdout | builder_api::store::Stream::Stderr)).map(|l| l.line).collect()
    }
}

#[tokio::test]
async fn go_maven_and_dockerfile_pushes_become_images_through_one_job_each() {
    let w = KubeWorld::new(|_, _| {}).await;
    let go = w.app(&w.token, "team", "hello", "go-hello", json!({"kind": "go"})).await;
    // A maven app names its Java base; busybox stands in for one (the image is not started here).
    let base = push_busybox_base(&w.registry.host());
    let maven = w.app(&w.token, "team", "jhello", "maven-hello", json!({"kind": "maven", "base_image": base})).await;
    // The Dockerfile kind: buildah stands in for rootless BuildKit on this host.
    let staged = w.app(&w.token, "team", "staged", "dockerfile-hello", json!({"settings": {"build_args": {"BASE": base}}})).await;
    let ids = [w.push("team", "hello", &go).await, w.push("team", "jhello", &maven).await, w.push("team", "staged", &staged).await];
    for (id, kind) in ids.iter().zip(["go", "maven", "dockerfile"]) {
        let (build, log) = w.ended(*id, BuildState::Succeeded).await;
        assert_eq!(build.kind.as_deref(), Some(kind));
        let digest = build.image_digest.clone().expect("a digest from the termination message");
        assert!(build.image.as_deref().unwrap().ends_with(&format!("@{digest}")), "{build:?}");
        // The image is in the registry under that digest.
        let reference: registry_sync::ImageRef = build.image.as_deref().unwrap().parse().unwrap();
        let opts = registry_sync::RegistryOptions { insecure_registries: vec![w.registry.host()], ..Default::default() };
        let pulled = registry_sync::pull_image(&reference, &opts).await.unwrap();
        assert_eq!(pulled.manifest_digest, digest);
        // The Job's image step sizes a Maven image's JVM as the local executor's does (jvm_sizing.rs).
        let java_tool_options = pulled.config["config"]["Env"].as_array().into_iter().flatten().find_map(|e| e.as_str()?.strip_prefix("JAVA_TOOL_OPTIONS="));
        let expected = (kind == "maven").then_some("-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError");
        assert_eq!((build.jvm_options.as_deref(), java_tool_options), (expected, expected), "{kind}");
        let expected_steps: &[&str] = if kind == "dockerfile" { &["clone", "image"] } else { &["clone", "compile", "image"] };
        for step in expected_steps {
            assert!(log.contains(&format!("── step {step} succeeded")), "{kind}: no finished {step}:\n{log}");
        }
        assert!(log.contains(&format!("created Job kiln-team/{}", job_name(*id))), "{log}");
        // Two writes over the build's life: the create and the delete.
        let writes = w.fake.writes_for_prefix(&job_name(*id));
        assert_eq!(writes, 2, "{kind}: Kubernetes writes for build {id}: {:?}", w.fake.requests_for_prefix(&job_name(*id)));
    }
    // The clone's output as the pod's log showed it is the clone's output as stored.
    let clone = w.step_output(ids[0], "clone").await;
    assert!(clone.iter().any(|l| l.starts_with("fetching ")) && clone.iter().any(|l| l.starts_with("checked out")), "{clone:?}");
    // Whatever the number of builds: one watch connection per kind, not one per build.
    assert!(w.fake.watches_opened("jobs") <= 2 && w.fake.watches_opened("pods") <= 2, "jobs {} pods {}", w.fake.watches_opened("jobs"), w.fake.watches_opened("pods"));
}

#[tokio::test]
async fn every_line_arrives_once_and_in_order_when_log_streams_and_watches_are_cut() {
    const LINES: u32 = 120;
    let w = KubeWorld::new(|c, dir| c.toolchains.go = slow_go(dir, LINES, 15).display().to_string()).await;
    let sha = w.app(&w.token, "team", "slow", "go-hello", json!({"kind": "go"})).await;
    // Every follow stream is cut after 7 lines: the executor must reopen about 20 times.
    w.fake.reset_log_streams_after(7);
    let id = w.push("team", "slow", &sha).await;

    let deadline = tokio::time::Instant::now() + LIMIT;
    while !w.step_output(id, "compile").await.iter().any(|l| l == "slow line 30") {
        assert!(tokio::time::Instant::now() < deadline, "compile never got going:\n{}", w.kiln.log(id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-step: every watch dropped and the history expired, so the watchers must re-list.
    w.fake.drop_watches();
    w.fake.expire_history();

    let (build, log) = w.ended(id, BuildState::Succeeded).await;
    assert!(build.image_digest.is_some());
    // 120 lines 15 ms apart: the compile step's recorded duration is at least 1.8 s, to the tenth.
    let secs: f64 = log
        .lines()
        .find_map(|l| l.split("── step compile succeeded in ").nth(1))
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no compile duration in:\n{log}"));
    assert!(secs >= 1.8, "compile took {secs}s by the log");
    let compile = w.step_output(id, "compile").await;
    let expected: Vec<String> = (1..=LINES).map(|i| format!("slow line {i}")).collect();
    assert_eq!(compile, expected, "the compile step's log has a gap, a repeat or a reordering");
    assert!(w.fake.watches_opened("pods") >= 2, "the pod watch was never re-opened");
}

#[tokio::test]
async fn oom_image_pull_and_a_refused_create_each_fail_the_build_with_that_reason() {
    let w = KubeWorld::new(|c, dir| {
        c.toolchains.go = slow_go(dir, 100_000, 20).display().to_string();
        c.executor.build_timeout_secs = 4;
    })
    .await;
    let sha = w.app(&w.token, "team", "fails", "go-hello", json!({"kind": "go"})).await;

    // A 403 on the Job create.
    w.fake.refuse_creates("jobs", 403, None);
    let (build, _) = w.ended(w.trigger(&w.token, "fails", &sha).await, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains(&format!("creating Job kiln-team/kiln-{INSTANCE}-")) && reason.contains("403"), "{reason}");
    w.fake.stop_refusing_creates("jobs");

    // The compile container is OOMKilled.
    w.fake.oom_kill("compile");
    let (build, log) = w.ended(w.trigger(&w.token, "fails", &sha).await, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains("OOMKilled") && reason.contains("compile"), "{reason}\n{log}");

    // The compile image cannot be pulled.
    w.fake.unpullable_image("go-build");
    let (build, _) = w.ended(w.trigger(&w.token, "fails", &sha).await, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains("ImagePullBackOff") && reason.contains("compile"), "{reason}");
}

#[tokio::test]
async fn a_tenants_job_lands_in_its_namespace_and_reads_only_its_own_secrets() {
    let w = KubeWorld::new(|c, _| c.kube.registry_secret = Some("kiln-registry".into())).await;
    w.fake.set_kubelet_running(false);
    let other_token = w.kiln.tenant("other").await;
    let a = w.app(&w.token, "team", "web", "go-hello", json!({"kind": "go"})).await;
    let b = w.app(&other_token, "other", "web", "go-hello", json!({"kind": "go"})).await;
    let ida = w.trigger(&w.token, "web", &a).await;
    let idb = w.trigger(&other_token, "web", &b).await;

    for (id, ns, other_ns) in [(ida, "kiln-team", "kiln-other"), (idb, "kiln-other", "kiln-team")] {
        let name = job_name(id);
        let job = w.fake.wait_for("jobs", ns, &name, Duration::from_secs(30), |j| j.cloned()).await;
        assert!(w.fake.get("jobs", other_ns, &name).is_none(), "build {id}'s Job also in {other_ns}");
        assert_eq!(job["metadata"]["labels"]["kiln.dev/tenant"], ns.trim_start_matches("kiln-"));
        // secretKeyRefs resolve in the Job's own namespace; name them all.
        let text = job.to_string();
        let mut refs: Vec<String> = vec![];
        for c in job["spec"]["template"]["spec"]["initContainers"].as_array().unwrap().iter().chain(job["spec"]["template"]["spec"]["containers"].as_array().unwrap()) {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(r) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    refs.push(format!("{}:{}", c["name"].as_str().unwrap(), r));
                }
            }
        }
        refs.sort();
        assert_eq!(refs, ["clone:kiln-git-web", "image:kiln-registry", "image:kiln-registry"], "build {id}");
        assert!(!text.contains(GIT_TOKEN), "the git token is in the Job");
        // The git token Secret Kiln wrote is in the tenant's namespace.
        let secret = w.fake.get("secrets", ns, "kiln-git-web").expect("git token Secret in the tenant namespace");
        assert!(secret["data"]["token"].is_string());
    }
    // Cancelling a build whose pod never started deletes its Job.
    for (id, token, ns) in [(ida, &w.token, "kiln-team"), (idb, &other_token, "kiln-other")] {
        let (status, _) = w.kiln.request(Method::POST, &format!("/api/v1/builds/{id}/cancel"), Some(token), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let build = w.kiln.wait_final(id, LIMIT).await;
        assert_eq!(build.state, BuildState::Cancelled, "{:?}", build.reason);
        let name = job_name(id);
        w.fake.wait_for("jobs", ns, &name, Duration::from_secs(30), |j| if j.is_none() { Some(()) } else { None }).await;
    }
}

#[tokio::test]
async fn kiln_restarted_while_three_builds_run_finishes_all_three_without_a_second_job_or_a_lost_line() {
    const LINES: u32 = 150;
    let ProcessWorld { git, registry, fake, kubeconfig, _fake_root } = ProcessWorld::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The builds hold at line 10 until the restarted kiln follows them: however unevenly a loaded
    // machine started them, none has finished its compile when kiln is killed.
    let gate = dir.path().join("go-on");
    let config_file = crate::support::serve_process::write_config(
        dir.path(),
        crate::support::kiln::ADMIN,
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln")),
        &format!(
            "kind = \"kube\"\nmax_concurrent_builds = 3\n\
             [registry]\ninsecure = [\"{}\"]\n[toolchains]\ngo = \"{}\"\ngoproxy = \"off\"\n",
            registry.host(),
            slow_go_held(dir.path(), LINES, 20, &gate).display(),
        ),
    );
    let env = [("KUBECONFIG", kubeconfig.as_str())];
    let port = crate::support::registry::free_port();

    let mut serve = ServeProcess::start_with_env(&config_file, port, &env);
    serve.ready().await;
    let token = serve.tenant(crate::support::kiln::ADMIN, "team").await;
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/hello", "go-hello", (SECRET, GIT_TOKEN), json!({"kind": "go"}));
    let (status, answer) = serve.call(Method::POST, "/api/v1/apps", &token, Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let mut ids = vec![];
    for _ in 0..3 {
        let (_, res) = serve.call(Method::POST, "/api/v1/apps/hello/builds", &token, Some(json!({"commit": sha}))).await;
        ids.push(res["build"]["id"].as_i64().unwrap());
    }

    // All three mid-compile, as far as the store knows, when kiln is SIGKILLed.
    let store = open_store(&data).await;
    let compile_lines = |lines: Vec<builder_api::store::LogLine>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| l.step == "compile" && matches!(l.stream, builder_api::store::Stream::Stdout | builder_api::store::Stream::Stderr))
            .map(|l| l.line)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    for id in &ids {
        while !compile_lines(store.log_after(*id, 0, 1_000_000).await.unwrap()).iter().any(|l| l == "slow line 10") {
            assert!(tokio::time::Instant::now() < deadline, "build {id} never got to compile");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    serve.kill();
    let mut stored_before = vec![];
    for id in &ids {
        stored_before.push(store.log_after(*id, 0, 1_000_000).await.unwrap());
    }

    let serve = ServeProcess::start_with_env(&config_file, port, &env);
    serve.ready().await;
    std::fs::write(&gate, "").unwrap();
    let expected: Vec<String> = (1..=LINES).map(|i| format!("slow line {i}")).collect();
    for (id, before) in ids.iter().zip(stored_before) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        let build = loop {
            let build = store.build(*id).await.unwrap().unwrap();
            if build.state.is_final() {
                break build;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} did not finish after the restart; kiln printed:\n{}", serve.output_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let after = store.log_after(*id, 0, 1_000_000).await.unwrap();
        let log: Vec<&str> = after.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(build.state, BuildState::Succeeded, "build {id}: {:?}\n{}\nkiln printed:\n{}", build.reason, log.join("\n"), serve.output_tail());
        assert!(build.image_digest.is_some(), "build {id} has no digest");
        assert_eq!(&after[..before.len()], &before[..], "build {id}: a stored line changed or vanished");
        assert_eq!(compile_lines(after.clone()), expected, "build {id}: the compile log has a gap, a repeat or a reordering");
        // On PostgreSQL the restarted kiln is a new replica taking over the stopped one's claims.
        assert!(log.iter().any(|l| *l == "[kiln] kiln restarted" || l.contains("took the build over from replica")), "build {id}:\n{}", log.join("\n"));
        assert!(log.iter().any(|l| l.starts_with("[kiln] following Job ") && l.ends_with(" again")), "build {id}:\n{}", log.join("\n"));
    }
    // One create per build, before the restart; the restarted kiln adopted the Jobs.
    assert_eq!(fake.count("create", "jobs"), 3, "Job creates: {:?}", fake.requests_for_prefix(&format!("kiln-{INSTANCE}-")));
    drop(serve);
}

#[tokio::test]
async fn a_dockerfiles_run_steps_find_neither_the_registry_password_nor_the_git_token_and_the_image_is_pushed() {
    const PUSH_USER: &str = "robot-team";
    const PUSH_PASSWORD: &str = "push-password-only-the-image-step-holds-5f1c";
    // This test's own: other tests' clones may run meanwhile with theirs in their environment.
    const TOKEN: &str = "glpat-only-the-clone-step-holds-9d2e";
    crate::support::init();
    let git = GitServer::start_with_token(TOKEN).await;
    // Only the tenant's robot may push; the base image comes from another, open registry.
    let registry = TestRegistry::start_with_htpasswd(PUSH_USER, PUSH_PASSWORD).await;
    let bases = TestRegistry::start().await;
    let base = push_busybox_base(&bases.host());
    let fake_root = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(fake_options(fake_root.path(), &["kiln-team"]));
    fake.create_secret("kiln-team", "kiln-registry", &[("username", PUSH_USER), ("password", PUSH_PASSWORD)]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = kube_config(dir.path(), &registry);
    config.registry.insecure.push(bases.host());
    config.kube.registry_secret = Some("kiln-registry".into());
    // In a cluster, rootless BuildKit without a process sandbox runs the RUN steps as its own
    // user in its own PID namespace: they can read the environment of every process of the
    // container. Host buildah (root, chroot) drops the capability that allows it; this buildah
    // keeps it, so the RUN step here sees at least as much as one in a cluster.
    config.toolchains.buildah = buildah_whose_run_steps_read_every_environment(dir.path()).display().to_string();
    let kiln = TestKiln::start_with_kube(dir, config, Some(kiln_client(&fake))).await;
    let token = kiln.tenant("team").await;
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/snoop", "dockerfile-snoop", (SECRET, TOKEN), json!({"settings": {"build_args": {"BASE": base}}}));
    kiln.app(&token, spec).await;
    let id = kiln.trigger(&token, "snoop", json!({"commit": sha})).await;
    let (build, log) = kiln.ended(id, BuildState::Succeeded, LIMIT).await;
    assert_eq!(build.kind.as_deref(), Some("dockerfile"));

    // Pushed, with the password, as the image step's log says.
    let image = build.image.clone().expect("an image");
    assert!(log.contains("pushed "), "{log}");
    let reference: registry_sync::ImageRef = image.parse().unwrap();
    let opts = registry_sync::RegistryOptions {
        auth: registry_sync::RegistryAuth::Basic { username: PUSH_USER.into(), password: PUSH_PASSWORD.into() },
        insecure_registries: vec![registry.host()],
        ..Default::default()
    };
    let pulled = registry_sync::pull_image(&reference, &opts).await.unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    registry_sync::unpack_layers(&pulled, unpacked.path()).unwrap();
    let found = unpacked.path().join("found");
    let processes = std::fs::read(found.join("processes")).expect("the RUN step wrote what it saw");
    let files = std::fs::read(found.join("files")).expect("the RUN step wrote what it read");
    // The search was real: it read the builder's own environment and the base image's files.
    let contains = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(&processes, "KILN_BUILDAH_ISOLATION="), "the RUN step did not see its builder's environment");
    assert!(files.len() > 100_000, "the RUN step read only {} bytes of files", files.len());
    for (what, secret) in [("registry password", PUSH_PASSWORD), ("git token", TOKEN)] {
        assert!(!contains(&processes, secret), "a RUN step found the {what} in a process environment");
        assert!(!contains(&files, secret), "a RUN step found the {what} in a file");
    }
}

/// `buildah` with `--cap-add=SYS_PTRACE` for `bud`: RUN steps may read `/proc/<pid>/environ` of
/// every process on the host, the builder's own included.
fn buildah_whose_run_steps_read_every_environment(dir: &Path) -> PathBuf {
    let script = dir.join("buildah-ptrace");
    std::fs::write(
        &script,
        "#!/bin/sh\nfirst=1\nfor a in \"$@\"; do\n  if [ $first = 1 ]; then set --; first=0; fi\n  set -- \"$@\" \"$a\"\n  \
         if [ \"$a\" = bud ]; then set -- \"$@\" --cap-add=SYS_PTRACE; fi\ndone\nexec buildah \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}
