//! Where a Job is rendered: a build plan ([`crate::plan`]) poured into the operator's template
//! from `job-templates/`. The template owns images, resources, security contexts and scheduling;
//! the plan owns each container's argv and env. Values reach the containers only as `command`
//! and `env` entries of typed `k8s-openapi` objects — never by templating YAML text — so a branch
//! named `$(rm -rf /)` or `"; curl …` is data, not code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource, PodSpec, SecretKeySelector, Volume,
};

use crate::config::KubeConfig;
use crate::plan::{ResolvedKind, StepSpec};
use crate::store::Tenant;

/// Labels on every Job and Pod Kiln makes; the tracker watches by the first.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kiln");
pub const LABEL_BUILD: &str = "kiln.dev/build";
pub const LABEL_TENANT: &str = "kiln.dev/tenant";
pub const LABEL_APP: &str = "kiln.dev/app";
/// The installation that made the object (`kube.instance`): the trackers, the Event follower
/// and the start-up cleanup touch nothing without their own.
pub const LABEL_INSTANCE: &str = "kiln.dev/instance";

/// The volume every step shares; its mountPath reaches commands as `WORKSPACE`.
pub const WORKSPACE_VOLUME: &str = "workspace";
/// The per-tenant cache volume; its mountPath reaches commands as `CACHE`.
pub const CACHE_VOLUME: &str = "cache";
/// The resource name of a container's local disk: its writable layer and logs, and for the pod's
/// limit its emptyDirs too.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// Where the image step writes `{"image","digest"}`, relative to the workspace; it becomes the
/// image container's termination message, which the executor reads.
pub const RESULT_IN_WORKSPACE: &str = ".kiln/result.json";

/// Why a template cannot be loaded, or cannot take a build's plan.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template file cannot be read or is not a Job (at start).
    #[error("job template {path}: {message}")]
    Template { path: PathBuf, message: String },
    /// A template lacks what every build needs (at start).
    #[error("job template for {kind}: {message}")]
    Mismatch { kind: &'static str, message: String },
    #[error("the template has no spec")]
    NoSpec,
    #[error("the template has no pod spec")]
    NoPodSpec,
    /// A container of the template that the plan does not run would run the template's own command.
    #[error("the template has a container {0:?} that the build plan does not have")]
    ExtraContainer(String),
    #[error("the template has no container {0:?}")]
    MissingContainer(String),
    #[error("container {0:?} does not mount the {volume:?} volume", volume = WORKSPACE_VOLUME)]
    NoWorkspaceMount(String),
    /// A step reads a secret env value that no Secret of the tenant holds.
    #[error("no Secret is known for {0}")]
    UnknownSecret(String),
    #[error("the app has a git token but no Secret holds it")]
    NoGitSecret,
    #[error("workspace_size {0:?} is not a quantity")]
    WorkspaceSize(String),
    #[error("container {container:?}: ephemeral-storage limit {limit:?} is not a quantity")]
    EphemeralStorageLimit { container: String, limit: String },
}

/// The three templates, read from a directory at start (and checked then, so a broken edit
/// stops Kiln at start rather than failing every build).
#[derive(Debug, Clone)]
pub struct Templates {
    go: Job,
    maven: Job,
    dockerfile: Job,
}

/// The templates shipped in the repository (`job-templates/`), for when no directory is set.
const BUILTIN: [(&str, &str); 3] = [
    ("go.yaml", include_str!("../../../../job-templates/go.yaml")),
    ("maven.yaml", include_str!("../../../../job-templates/maven.yaml")),
    ("dockerfile.yaml", include_str!("../../../../job-templates/dockerfile.yaml")),
];

impl Templates {
    /// Reads `go.yaml`, `maven.yaml` and `dockerfile.yaml` from `dir`.
    pub fn load(dir: &Path) -> Result<Templates, RenderError> {
        let read = |name: &str| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| RenderError::Template { path: path.clone(), message: e.to_string() })?;
            parse(&path, &text)
        };
        Templates::checked(read("go.yaml")?, read("maven.yaml")?, read("dockerfile.yaml")?)
    }

    /// The templates compiled into the binary (the repository's `job-templates/`).
    pub fn builtin() -> Templates {
        let parsed: Vec<Job> =
            BUILTIN.iter().map(|(name, text)| parse(Path::new(name), text).expect("built-in job template parses")).collect();
        let [go, maven, dockerfile]: [Job; 3] = parsed.try_into().expect("three templates");
        Templates::checked(go, maven, dockerfile).expect("built-in job templates are consistent")
    }

    fn checked(go: Job, maven: Job, dockerfile: Job) -> Result<Templates, RenderError> {
        let t = Templates { go, maven, dockerfile };
        for kind in [ResolvedKind::Go, ResolvedKind::Maven, ResolvedKind::Dockerfile] {
            let spec = pod_spec(t.for_kind(kind)).ok_or_else(|| mismatch(kind, "no spec.template.spec".into()))?;
            for name in ["clone", "compile", "image"] {
                let container = find(spec, name).ok_or_else(|| mismatch(kind, format!("no container named {name:?}")))?;
                mount_path(container, WORKSPACE_VOLUME).ok_or_else(|| {
                    mismatch(kind, format!("container {name:?} does not mount the {WORKSPACE_VOLUME:?} volume"))
                })?;
            }
            if spec.containers.len() != 1 || spec.containers[0].name != "image" {
                return Err(mismatch(kind, "the one main container must be named \"image\"".into()));
            }
            // A build must not fill a node's disk: each container has its own cap, and so does
            // each emptyDir (the kubelet evicts the pod at either).
            for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
                if !c.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some_and(|l| l.contains_key(EPHEMERAL_STORAGE)) {
                    return Err(mismatch(kind, format!("container {:?} has no {EPHEMERAL_STORAGE} limit", c.name)));
                }
            }
            for v in spec.volumes.iter().flatten() {
                if v.empty_dir.as_ref().is_some_and(|d| d.size_limit.is_none()) {
                    return Err(mismatch(kind, format!("the emptyDir volume {:?} has no sizeLimit", v.name)));
                }
            }
        }
        Ok(t)
    }

    pub fn for_kind(&self, kind: ResolvedKind) -> &Job {
        match kind {
            ResolvedKind::Go => &self.go,
            ResolvedKind::Maven => &self.maven,
            ResolvedKind::Dockerfile => &self.dockerfile,
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<Job, RenderError> {
    let job: Job = serde_saphyr::from_str(text)
        .map_err(|e| RenderError::Template { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(job)
}

fn mismatch(kind: ResolvedKind, message: String) -> RenderError {
    RenderError::Mismatch { kind: kind.as_str(), message }
}

/// What one build puts into its template.
#[derive(Debug, Clone)]
pub struct RenderInput<'a> {
    /// This installation's id (`kube.instance`).
    pub instance: &'a str,
    pub build_id: i64,
    pub tenant: &'a str,
    pub app: &'a str,
    /// Where the tenant's Job goes and what it mounts and gets.
    pub placement: &'a TenantPlacement,
    /// The plan: clone, compile (not for Dockerfile builds), image — container names.
    pub steps: &'a [StepSpec],
    pub active_deadline_secs: i64,
    /// Secret (key `token`) with the app's git token; only the clone container reads it.
    pub git_secret: Option<&'a str>,
}

/// The tenant's part of its Jobs: its settings over the `[kube]` defaults, decided in one place
/// for every build (the executor renders with it, tests render with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPlacement {
    pub namespace: String,
    /// The tenant's cache PVC (in its namespace); the template's emptyDir when unset.
    pub cache_claim: Option<String>,
    /// Secret (keys `username`, `password`) with the tenant's registry credentials; only the
    /// image container (the push, which runs no user code) reads it.
    pub registry_secret: Option<String>,
    /// Secret (keys `username`, `password`) with the tenant's read-only pull credential; only a
    /// Dockerfile build's compile container reads it (for private base images), and the build can
    /// see it.
    pub pull_secret: Option<String>,
    /// CPU and memory (validated quantities) of the container that compiles, as its requests and
    /// limits both; the template's values stay for what is unset.
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// Ephemeral-storage (a validated quantity) of that container, as its request and limit: the
    /// pod's disk budget. The template's when unset.
    pub ephemeral_storage: Option<String>,
    /// The `workspace` emptyDir's sizeLimit (a validated quantity); the template's when unset.
    pub workspace_size: Option<String>,
}

impl TenantPlacement {
    pub fn of(kube: &KubeConfig, tenant: &Tenant) -> TenantPlacement {
        TenantPlacement {
            namespace: kube.namespace_for(tenant),
            cache_claim: kube.cache_claim_for(tenant).map(String::from),
            registry_secret: kube.registry_secret_for(tenant).map(String::from),
            pull_secret: kube.pull_secret_for(tenant).map(String::from),
            cpu: tenant.settings.cpu.clone(),
            memory: tenant.settings.memory.clone(),
            ephemeral_storage: tenant.settings.ephemeral_storage.clone(),
            workspace_size: tenant.settings.workspace_size.clone(),
        }
    }
}

/// `kiln-<instance>-<id>`: deterministic, so a second create for the same build is a 409, never
/// a second Job; and another installation's build with the same id has another name.
pub fn job_name(instance: &str, build_id: i64) -> String {
    format!("kiln-{instance}-{build_id}")
}

/// The build a Job or Pod of this instance is named after (`kiln-<instance>-<id>` or a pod's
/// `kiln-<instance>-<id>-<suffix>`); None for anything else.
pub fn build_of_name(instance: &str, name: &str) -> Option<i64> {
    let rest = name.strip_prefix("kiln-")?.strip_prefix(instance)?.strip_prefix('-')?;
    let id = rest.split_once('-').map_or(rest, |(id, _)| id);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The label selector of everything this instance makes.
pub fn instance_selector(instance: &str) -> String {
    format!("{}={},{LABEL_INSTANCE}={instance}", MANAGED_BY.0, MANAGED_BY.1)
}

/// Renders the Job for one build.
pub fn render(template: &Job, input: &RenderInput) -> Result<Job, RenderError> {
    let mut job = template.clone();
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (LABEL_BUILD.to_string(), input.build_id.to_string()),
        (LABEL_TENANT.to_string(), input.tenant.to_string()),
        (LABEL_APP.to_string(), input.app.to_string()),
        (LABEL_INSTANCE.to_string(), input.instance.to_string()),
    ]);
    job.metadata.name = Some(job_name(input.instance, input.build_id));
    job.metadata.generate_name = None;
    job.metadata.namespace = Some(input.placement.namespace.clone());
    job.metadata.labels.get_or_insert_with(Default::default).extend(labels.clone());

    let spec = job.spec.as_mut().ok_or(RenderError::NoSpec)?;
    spec.active_deadline_seconds = Some(input.active_deadline_secs);
    // A build runs once: a retry would push a second image and repeat the log.
    spec.backoff_limit = Some(0);
    spec.template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default).extend(labels);
    let pod = spec.template.spec.as_mut().ok_or(RenderError::NoPodSpec)?;
    pod.restart_policy = Some("Never".into());
    pod.automount_service_account_token = Some(false);

    // Only where the template has a cache: an unused claim would still pin the pod to the
    // claim's node (or leave it Pending when the tenant has none).
    if let Some(claim) = input.placement.cache_claim.as_deref() {
        if let Some(cache) = pod.volumes.iter_mut().flatten().find(|v| v.name == CACHE_VOLUME) {
            *cache = Volume {
                name: CACHE_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.into(), read_only: None }),
                ..Default::default()
            };
        }
    }

    let wanted: Vec<&str> = input.steps.iter().map(|s| s.name.as_str()).collect();
    // Containers of the template that the plan does not run (a compile container in a template
    // used for a kind without one) would run with the template's own command: refuse.
    for c in pod.init_containers.iter().flatten().chain(pod.containers.iter()) {
        if !wanted.contains(&c.name.as_str()) {
            return Err(RenderError::ExtraContainer(c.name.clone()));
        }
    }
    for step in input.steps {
        let container = find_mut(pod, &step.name).ok_or_else(|| RenderError::MissingContainer(step.name.clone()))?;
        fill_container(container, step, input)?;
    }
    let (cpu, memory) = (input.placement.cpu.as_deref(), input.placement.memory.as_deref());
    if cpu.is_some() || memory.is_some() {
        let name = build_container(input.steps);
        let container = find_mut(pod, name).ok_or_else(|| RenderError::MissingContainer(name.to_string()))?;
        set_resources(container, &[("cpu", cpu), ("memory", memory)]);
    }
    size_disk(pod, input.steps, input.placement)?;
    Ok(job)
}

/// The tenant's disk settings. `workspace_size` is the workspace emptyDir's sizeLimit;
/// `ephemeral_storage` is the request and limit of the container that builds, whose limit is the
/// pod's disk budget (the kubelet counts the emptyDirs against the pod's limit, which is the
/// largest container's). Without `ephemeral_storage`, a workspace larger than the template's
/// raises that limit by the difference: the budget keeps the template's room for the other
/// volumes, and the larger workspace can fill up before the pod is evicted.
fn size_disk(pod: &mut PodSpec, steps: &[StepSpec], placement: &TenantPlacement) -> Result<(), RenderError> {
    let mut grow = 0u128;
    if let Some(size) = placement.workspace_size.as_deref() {
        let workspace = pod.volumes.iter_mut().flatten().find(|v| v.name == WORKSPACE_VOLUME);
        // An operator who made the workspace something else (a generic ephemeral volume, say)
        // sizes it there.
        if let Some(dir) = workspace.and_then(|v| v.empty_dir.as_mut()) {
            let before = dir.size_limit.as_ref().and_then(|q| bytes(&q.0)).unwrap_or(0);
            grow = bytes(size).ok_or_else(|| RenderError::WorkspaceSize(size.to_string()))?.saturating_sub(before);
            dir.size_limit = Some(Quantity(size.to_string()));
        }
    }
    let name = build_container(steps);
    let container = find_mut(pod, name).ok_or_else(|| RenderError::MissingContainer(name.to_string()))?;
    if let Some(storage) = placement.ephemeral_storage.as_deref() {
        set_resources(container, &[(EPHEMERAL_STORAGE, Some(storage))]);
    } else if grow > 0 {
        let limits = container.resources.get_or_insert_with(Default::default).limits.get_or_insert_with(Default::default);
        if let Some(limit) = limits.get_mut(EPHEMERAL_STORAGE) {
            let before = bytes(&limit.0)
                .ok_or_else(|| RenderError::EphemeralStorageLimit { container: name.to_string(), limit: limit.0.clone() })?;
            *limit = Quantity(format_bytes(before + grow));
        }
    }
    Ok(())
}

/// A storage quantity in bytes (`10Gi`, `500M`, `1048576`), as the settings are validated.
fn bytes(q: &str) -> Option<u128> {
    crate::validate::quantity("quantity", q, crate::validate::QuantityOf::Memory).ok()
}

/// Bytes as a quantity in the largest binary unit that divides them exactly.
fn format_bytes(b: u128) -> String {
    for (suffix, unit) in [("Ti", 1u128 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b % unit == 0 {
            return format!("{}{suffix}", b / unit);
        }
    }
    b.to_string()
}

/// The container that does the build's heavy work, which the tenant's CPU and memory size:
/// `compile` (for a Dockerfile build, BuildKit's), else `image`.
pub fn build_container(steps: &[StepSpec]) -> &'static str {
    if steps.iter().any(|s| s.name == "compile") {
        "compile"
    } else {
        "image"
    }
}

/// Request = limit for each value given: a build gets what it was promised and no more, so one
/// tenant's builds cannot take a node's spare CPU, memory or disk from another's.
fn set_resources(c: &mut Container, values: &[(&str, Option<&str>)]) {
    let resources = c.resources.get_or_insert_with(Default::default);
    for &(name, value) in values {
        let Some(value) = value else { continue };
        for side in [&mut resources.requests, &mut resources.limits] {
            side.get_or_insert_with(Default::default).insert(name.to_string(), Quantity(value.to_string()));
        }
    }
}

fn fill_container(c: &mut Container, step: &StepSpec, input: &RenderInput) -> Result<(), RenderError> {
    let workspace = mount_path(c, WORKSPACE_VOLUME).ok_or_else(|| RenderError::NoWorkspaceMount(c.name.clone()))?.to_string();
    let mut env = vec![value("WORKSPACE", &workspace)];
    if let Some(cache) = mount_path(c, CACHE_VOLUME) {
        env.push(value("CACHE", cache));
    }
    // A home inside the workspace: root filesystems are read-only and the user has no home.
    env.push(value("HOME", "$(WORKSPACE)/home"));
    // The operator's own env from the template stays, after Kiln's base values and before the
    // plan's, so a template can set e.g. a proxy but cannot change what the plan decides.
    env.extend(c.env.take().unwrap_or_default());
    for (k, v) in &step.env {
        match k.as_str() {
            // In a cluster the registry user comes from the tenant's Secret with the password.
            "KILN_REGISTRY_USERNAME" => {}
            // One entry per name (the plan's wins, e.g. Maven's HOME in the cache), in place so
            // later values may still refer to it.
            _ => match env.iter_mut().find(|e| e.name == *k) {
                Some(existing) => *existing = value(k, v),
                None => env.push(value(k, v)),
            },
        }
    }
    for (k, _) in &step.secret_env {
        match k.as_str() {
            "KILN_GIT_TOKEN" => {
                let secret = input.git_secret.ok_or(RenderError::NoGitSecret)?;
                env.push(from_secret(k, secret, "token"));
            }
            "KILN_REGISTRY_PASSWORD" => {}
            other => return Err(RenderError::UnknownSecret(other.to_string())),
        }
    }
    // Only the Dockerfile builders are told which registry a pull credential is for.
    if step.env.iter().any(|(k, _)| k == "KILN_PULL_REGISTRY") {
        if let Some(secret) = input.placement.pull_secret.as_deref() {
            env.push(from_secret("KILN_PULL_USERNAME", secret, "username"));
            env.push(from_secret("KILN_PULL_PASSWORD", secret, "password"));
        }
    }
    if step.name == "image" {
        if let Some(secret) = input.placement.registry_secret.as_deref() {
            env.push(from_secret("KILN_REGISTRY_USERNAME", secret, "username"));
            env.push(from_secret("KILN_REGISTRY_PASSWORD", secret, "password"));
        }
        c.termination_message_path = Some(format!("{workspace}/{RESULT_IN_WORKSPACE}"));
        c.termination_message_policy = Some("File".into());
    }
    c.env = Some(env);
    // `command` replaces the image's entrypoint; Kubernetes expands $(VAR) in it from env.
    c.command = Some(step.argv.clone());
    c.args = None;
    // Kubernetes expands $(VAR) in command, args and env, never in workingDir: write the path.
    c.working_dir = step.workdir.as_ref().map(|w| w.replace("$(WORKSPACE)", &workspace));
    Ok(())
}

fn value(name: &str, v: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(v.into()), value_from: None }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: None }),
            ..Default::default()
        }),
    }
}

fn pod_spec(job: &Job) -> Option<&PodSpec> {
    job.spec.as_ref().and_then(|s| s.template.spec.as_ref())
}

fn find<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Container> {
    pod.init_containers.iter().flatten().chain(pod.containers.iter()).find(|c| c.name == name)
}

fn find_mut<'a>(pod: &'a mut PodSpec, name: &str) -> Option<&'a mut Container> {
    pod.init_containers.iter_mut().flatten().chain(pod.containers.iter_mut()).find(|c| c.name == name)
}

fn mount_path<'a>(c: &'a Container, volume: &str) -> Option<&'a str> {
    c.volume_mounts.iter().flatten().find(|m| m.name == volume).map(|m| m.mount_path.as_str())
}

/// The containers of a rendered Job in the order they run (init containers, then the main one).
pub fn step_order(job: &Job) -> Vec<String> {
    match pod_spec(job) {
        Some(pod) => pod.init_containers.iter().flatten().chain(pod.containers.iter()).map(|c| c.name.clone()).collect(),
        None => vec![],
    }
}
