//! Kiln's configuration: typed sections read from an optional TOML file, then `KILN_*` env vars.
//! Every field has a default that works on a laptop: `kiln serve` with no config listens on
//! 127.0.0.1:8080, keeps SQLite under `.kiln/`, and runs builds with the local executor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::Tenant;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub executor: ExecutorConfig,
    pub registry: RegistryConfig,
    pub toolchains: ToolchainConfig,
    pub kube: KubeConfig,
    pub logs: LogsConfig,
    /// The clusters Kiln rolls out to, each with its own registry (`[[clusters]]`).
    pub clusters: Vec<ClusterConfig>,
    pub harbor: HarborConfig,
    pub rollout: RolloutConfig,
    pub apm: ApmConfig,
    pub hooks: HooksConfig,
}

/// Webhook intake (`/hooks/gitlab`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Verified deliveries accepted per app and minute, on average; 0 turns the limit off. Past
    /// it a delivery is answered 429 with `Retry-After` and starts nothing. Counted per process.
    pub rate_per_app_per_minute: u32,
    /// Deliveries an idle app may send at once before the rate applies (a push of many branches).
    pub burst: u32,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self { rate_per_app_per_minute: 600, burst: 120 }
    }
}

/// One cluster: where its Deployments live and which registry its nodes pull from.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// `host[:port]` of the cluster's own registry; rollouts pin `registry/repo@sha256:…` to it.
    pub registry: String,
    /// A context of the kubeconfig (`KUBECONFIG` / `~/.kube/config`); the current one when unset.
    #[serde(default)]
    pub context: Option<String>,
    /// Use the service account Kiln runs under (Kiln's own cluster).
    #[serde(default)]
    pub in_cluster: bool,
    /// Credentials for pushing to the registry (a Harbor robot account `robot$project+name`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Tenant → the project its images go to in this registry; the source project when unset.
    #[serde(default)]
    pub projects: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("registry", &self.registry)
            .field("context", &self.context)
            .field("in_cluster", &self.in_cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("projects", &self.projects)
            .finish()
    }
}

/// `POST /hooks/harbor`.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HarborConfig {
    /// The value Harbor sends in `Authorization` (the webhook policy's "Auth Header"); every
    /// Harbor webhook is refused until it is set.
    pub webhook_auth: Option<String>,
}

impl std::fmt::Debug for HarborConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarborConfig").field("webhook_auth", &self.webhook_auth.as_ref().map(|_| "***")).finish()
    }
}

/// Rollouts of new images to subscribed Deployments.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// A rollout not complete after this long fails (and rolls back when its subscription says
    /// so), whatever the Deployment's own `progressDeadlineSeconds`.
    pub deadline_secs: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self { deadline_secs: 600 }
    }
}

/// APM agents an app may ask for (`settings.apm`): named, versioned sources of agent files, and
/// the JVM options that load them. See `crate::apm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApmConfig {
    pub agents: Vec<ApmAgent>,
}

/// One version of one agent. A version names fixed content: its layer is built once and cached
/// by name and version, so publish changed files under a new version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApmAgent {
    pub name: String,
    pub version: String,
    pub source: AgentSource,
    /// Appended to the image's `JAVA_TOOL_OPTIONS`. Placeholders: `{agent}` (the name),
    /// `{version}`, `{app}`, `{tenant}`. The agent's files are under `/opt/apm/` in the image.
    #[serde(default = "default_java_options")]
    pub java_options: String,
}

/// Where an agent's files come from; exactly one of `dir`, `tar_gz`, `image` (with `path`).
/// Their contents go to `/opt/apm/` in the image.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSource {
    /// A directory on the disk of whatever runs the image step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A `.tar.gz` (or `.tar`) on that disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tar_gz: Option<PathBuf>,
    /// An image in a registry (works in a cluster); the files under `path` in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

pub fn default_java_options() -> String {
    "-javaagent:/opt/apm/{agent}.jar -Dapm.service.name={app} -Dapm.tenant={tenant}".into()
}

impl ApmConfig {
    /// Names and versions are path and tag material (the layer cache, the injected image's tag):
    /// `[A-Za-z0-9._-]`, no duplicates; every source is exactly one kind; options use known
    /// placeholders only.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { field: "apm.agents", message };
        let token = |s: &str| {
            !s.is_empty() && s.len() <= 40 && !s.starts_with(['.', '-']) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        for (i, a) in self.agents.iter().enumerate() {
            if !token(&a.name) || !token(&a.version) {
                return Err(invalid(format!(
                    "agent {:?} version {:?}: names and versions are 1-40 of A-Z a-z 0-9 . _ - (not starting with . or -)",
                    a.name, a.version
                )));
            }
            if self.agents[..i].iter().any(|b| b.name == a.name && b.version == a.version) {
                return Err(invalid(format!("agent {} version {} is listed twice", a.name, a.version)));
            }
            let s = &a.source;
            let kinds = [s.dir.is_some(), s.tar_gz.is_some(), s.image.is_some()].iter().filter(|k| **k).count();
            if kinds != 1 || s.image.is_some() != s.path.is_some() {
                return Err(invalid(format!(
                    "agent {} {}: source needs exactly one of dir, tar_gz, or image with path",
                    a.name, a.version
                )));
            }
            let mut rest = a.java_options.as_str();
            while let Some(open) = rest.find('{') {
                let after = &rest[open + 1..];
                let close = after.find('}').ok_or_else(|| invalid(format!("agent {}: unclosed {{ in java_options", a.name)))?;
                if !["agent", "version", "app", "tenant"].contains(&&after[..close]) {
                    return Err(invalid(format!(
                        "agent {}: java_options placeholder {{{}}} is not one of {{agent}}, {{version}}, {{app}}, {{tenant}}",
                        a.name,
                        &after[..close]
                    )));
                }
                rest = &after[close + 1..];
            }
        }
        Ok(())
    }
}

/// Build logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Output kept per build; past it the log says it was truncated and the build goes on.
    pub max_bytes_per_build: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self { max_bytes_per_build: 100 << 20 }
    }
}

/// The kube executor (`executor.kind = "kube"`). The cluster is found by `kube::Config::infer`:
/// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// Directory with `go.yaml`, `maven.yaml`, `dockerfile.yaml`; the built-in copies of the
    /// repository's `job-templates/` when unset.
    pub templates_dir: Option<PathBuf>,
    /// A tenant's builds run in the namespace `<prefix><tenant>`.
    pub namespace_prefix: String,
    /// PersistentVolumeClaim (same name in every tenant namespace) for the Go and Maven caches;
    /// an emptyDir per build when unset.
    pub cache_claim: Option<String>,
    /// Secret (same name in every tenant namespace; keys `username`, `password`) with the
    /// credentials for pushing to the tenant's registry project; anonymous when unset.
    pub registry_secret: Option<String>,
    /// Secret (same name in every tenant namespace; keys `username`, `password`) with a
    /// READ-ONLY credential for pulling private base images in Dockerfile builds. Unlike the push
    /// credential it reaches the container that runs the Dockerfile's `RUN` steps, so a build can
    /// read it: give it a robot account that can only pull. None when unset.
    pub pull_secret: Option<String>,
    /// This installation's id: the `kiln.dev/instance` label on everything Kiln creates, and
    /// part of every Job's name, so two Kilns on one cluster never touch each other's Jobs.
    /// Generated once and kept in the store when unset.
    pub instance: Option<String>,
    /// A build whose pod stays unschedulable this long fails with the scheduler's message.
    pub unschedulable_timeout_secs: u64,
    /// When an admin creates a tenant, Kiln creates its build namespace, the RoleBinding that
    /// grants Kiln its writes there (ClusterRole `kiln-builds`) and the build pods' ServiceAccount
    /// `kiln-build` (see `executor::kube::provision`). Off by default: the operator applies
    /// `deploy/build-namespace/` per namespace. On, Kiln needs `deploy/provisioning/` bound.
    /// Only with `executor.kind = "kube"`.
    pub provision_namespaces: bool,
    /// Kiln's own ServiceAccount, `<namespace>/<name>`: the subject of the RoleBindings it makes
    /// when it provisions namespaces.
    pub service_account: String,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            templates_dir: None,
            namespace_prefix: "kiln-".into(),
            cache_claim: None,
            registry_secret: None,
            pull_secret: None,
            instance: None,
            unschedulable_timeout_secs: 300,
            provision_namespaces: false,
            service_account: "kiln/kiln".into(),
        }
    }
}

/// The longest instance id: it goes into Job names (`kiln-<instance>-<build>`), which with the
/// pod's random suffix must stay within a 63-character label.
pub const MAX_INSTANCE_LEN: usize = 20;

/// An instance id: lowercase letters and digits, 1 to [`MAX_INSTANCE_LEN`].
pub fn validate_instance(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_INSTANCE_LEN || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(format!("{id:?} is not an instance id: use 1-{MAX_INSTANCE_LEN} lowercase letters and digits"));
    }
    Ok(())
}

/// Where a tenant's settings meet the service-wide config: the one place each per-tenant value
/// falls back to its `[kube]` default.
impl KubeConfig {
    /// The namespace of the tenant's build Jobs (and its git token Secrets): its own, else
    /// `<namespace_prefix><tenant>`.
    pub fn namespace_for(&self, tenant: &Tenant) -> String {
        // A tenant whose default is not a valid namespace name cannot be created without a
        // namespace of its own (`default_namespace_for`), so this is always a valid name.
        tenant.settings.namespace.clone().unwrap_or_else(|| format!("{}{}", self.namespace_prefix, tenant.name))
    }

    /// `<namespace_prefix><tenant>`, the namespace of a tenant without its own, when that is a
    /// valid namespace name (a DNS-1123 label: at most 63 characters).
    pub fn default_namespace_for(&self, tenant: &str) -> Result<String, String> {
        let ns = format!("{}{tenant}", self.namespace_prefix);
        crate::validate::dns_label("namespace", &ns).map_err(|_| {
            format!(
                "tenant {tenant:?} would build in the namespace {ns:?} ({} characters), but a namespace name has at most 63 \
                 characters (lowercase letters, digits and '-'); give the tenant a \"namespace\" of its own",
                ns.len()
            )
        })?;
        Ok(ns)
    }

    /// `service_account` as (namespace, name).
    pub fn service_account_ref(&self) -> Result<(&str, &str), String> {
        match self.service_account.split_once('/') {
            Some((ns, name)) if crate::validate::dns_label("namespace", ns).is_ok() && crate::validate::dns_subdomain("name", name).is_ok() => Ok((ns, name)),
            _ => Err(format!("{:?} is not a ServiceAccount: write it <namespace>/<name>, e.g. \"kiln/kiln\"", self.service_account)),
        }
    }

    /// The Secret with the tenant's registry credentials, if any.
    pub fn registry_secret_for<'a>(&'a self, tenant: &'a Tenant) -> Option<&'a str> {
        tenant.settings.registry_secret.as_deref().or(self.registry_secret.as_deref())
    }

    /// The Secret with the tenant's read-only pull credential, if any.
    pub fn pull_secret_for<'a>(&'a self, tenant: &'a Tenant) -> Option<&'a str> {
        tenant.settings.pull_secret.as_deref().or(self.pull_secret.as_deref())
    }

    /// The tenant's cache PVC, if any.
    pub fn cache_claim_for<'a>(&'a self, tenant: &'a Tenant) -> Option<&'a str> {
        tenant.settings.cache_claim.as_deref().or(self.cache_claim.as_deref())
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted (webhooks and API); larger bodies get 413.
    pub max_body_bytes: usize,
    /// The admin token. When unset, one is generated on first start and printed once.
    pub admin_token: Option<String>,
    /// Whether the audit log takes the client's address from `X-Forwarded-For` (set this only
    /// behind a proxy that sets it; anyone can send the header) instead of the socket's peer.
    pub trust_forwarded_for: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "****"))
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".parse().unwrap(), max_body_bytes: 1 << 20, admin_token: None, trust_forwarded_for: false }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for the SQLite database, build workspaces and caches.
    pub data_dir: PathBuf,
    /// File holding the key that encrypts the secrets in the store (base64 of 32 bytes, mode
    /// 0600): in a cluster, a mounted Kubernetes Secret, so the key never sits on the database's
    /// volume. `KILN_SECRET_KEY` (the key itself) wins over it; with neither, Kiln generates
    /// `<data_dir>/secret.key` at first start.
    pub secret_key_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { data_dir: PathBuf::from(".kiln"), secret_key_file: None }
    }
}

impl StoreConfig {
    /// The key of the store's secrets: `KILN_SECRET_KEY`, else `secret_key_file`, else
    /// `<data_dir>/secret.key` (generated when missing).
    pub fn secret_key(&self) -> Result<crate::store::SecretKey, crate::store::KeyError> {
        crate::store::SecretKey::load(&self.data_dir, self.secret_key_file.as_deref())
    }

    /// The file a key rotation replaces: `secret_key_file`, else the generated default. None
    /// when the key comes from `KILN_SECRET_KEY`, which Kiln cannot change.
    pub fn secret_key_path(&self) -> Option<PathBuf> {
        if std::env::var_os("KILN_SECRET_KEY").is_some() {
            return None;
        }
        Some(self.secret_key_file.clone().unwrap_or_else(|| self.data_dir.join(crate::store::secrets::DEFAULT_KEY_FILE)))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `local` (host processes, the default) or `kube` (one Job per build; see `[kube]`).
    pub kind: String,
    /// Builds running at once; the rest wait Queued.
    pub max_concurrent_builds: usize,
    /// A build running longer than this ends TimedOut.
    pub build_timeout_secs: u64,
    /// The `kiln` binary the steps run (`kiln step clone`, …). Default: this binary.
    pub kiln_binary: Option<PathBuf>,
    /// Keep a build's workspace after it ends (for debugging).
    pub keep_workspaces: bool,
    /// How much nicer than `kiln serve` the local executor's build steps run (0 to 19; default
    /// 10): a compile filling every core must not starve the webhooks, the API and the log
    /// followers of the same machine. 0 runs them at Kiln's own priority.
    pub step_nice: i32,
}

impl ExecutorConfig {
    /// How long a build of the tenant may run: its own timeout, else `build_timeout_secs`.
    /// (Apps have no timeout of their own.)
    pub fn build_timeout_for(&self, tenant: &Tenant) -> std::time::Duration {
        std::time::Duration::from_secs(tenant.settings.build_timeout_secs.unwrap_or(self.build_timeout_secs))
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            kind: "local".into(),
            max_concurrent_builds: 2,
            build_timeout_secs: 3600,
            kiln_binary: None,
            keep_workspaces: false,
            step_nice: 10,
        }
    }
}

/// How build steps reach registries: credentials for pushing, and which hosts speak plain HTTP.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host:port` of registries spoken to over plain HTTP (loopback registries in a demo).
    pub insecure: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RegistryConfig {
    /// Options for talking to registries: plain HTTP for the `insecure` hosts, the credentials
    /// offered only to `target_registry` — never to the registry a base image comes from.
    pub fn options_for(&self, target_registry: &str) -> registry_sync::RegistryOptions {
        let mut opts = registry_sync::RegistryOptions::anonymous();
        opts.insecure_registries = self.insecure.clone();
        if let Some(user) = self.username.as_deref().filter(|u| !u.is_empty()) {
            let auth = registry_sync::RegistryAuth::basic(user, self.password.clone().unwrap_or_default());
            opts.registry_auth.insert(target_registry.to_string(), auth);
        }
        opts
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .finish()
    }
}

/// Host toolchains the local executor runs for the compile and image steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolchainConfig {
    pub go: String,
    /// GOPROXY for builds; `off` keeps builds hermetic on a machine without internet.
    pub goproxy: String,
    pub mvn: String,
    /// Extra arguments for every Maven build, e.g. `["-o", "-Dmaven.repo.local=/usr/share/maven-repo"]`.
    pub maven_args: Vec<String>,
    pub buildah: String,
    /// Extra global buildah arguments, e.g. `["--storage-driver", "vfs"]`.
    pub buildah_args: Vec<String>,
    /// buildah `--isolation` (chroot works as root without a daemon).
    pub buildah_isolation: String,
    /// What builds a Dockerfile: `buildah` (host processes; the default for the local executor)
    /// or `buildkit` (rootless BuildKit in the Job's image container; the kube default).
    pub dockerfile_builder: Option<String>,
}

impl Default for ToolchainConfig {
    fn default() -> Self {
        Self {
            go: "go".into(),
            goproxy: "https://proxy.golang.org,direct".into(),
            mvn: "mvn".into(),
            maven_args: vec![],
            buildah: "buildah".into(),
            buildah_args: vec!["--storage-driver".into(), "vfs".into()],
            buildah_isolation: "chroot".into(),
            dockerfile_builder: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("config {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Config {
    /// Reads the TOML file (when given), then applies `KILN_*` env vars on top.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// The env vars that override the file; each maps to one field.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, v: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ConfigError::Env { name, message: e.to_string() })
        }
        fn list(v: String) -> Vec<String> {
            v.split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect()
        }
        if let Some(v) = var("KILN_LISTEN") {
            self.server.listen = parse("KILN_LISTEN", v)?;
        }
        if let Some(v) = var("KILN_MAX_BODY_BYTES") {
            self.server.max_body_bytes = parse("KILN_MAX_BODY_BYTES", v)?;
        }
        if let Some(v) = var("KILN_ADMIN_TOKEN") {
            self.server.admin_token = Some(v);
        }
        if let Some(v) = var("KILN_TRUST_FORWARDED_FOR") {
            self.server.trust_forwarded_for = parse("KILN_TRUST_FORWARDED_FOR", v)?;
        }
        if let Some(v) = var("KILN_DATA_DIR") {
            self.store.data_dir = v.into();
        }
        if let Some(v) = var("KILN_SECRET_KEY_FILE") {
            self.store.secret_key_file = Some(v.into());
        }
        if let Some(v) = var("KILN_MAX_CONCURRENT_BUILDS") {
            self.executor.max_concurrent_builds = parse("KILN_MAX_CONCURRENT_BUILDS", v)?;
        }
        if let Some(v) = var("KILN_BUILD_TIMEOUT_SECS") {
            self.executor.build_timeout_secs = parse("KILN_BUILD_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = var("KILN_STEP_NICE") {
            self.executor.step_nice = parse("KILN_STEP_NICE", v)?;
        }
        if let Some(v) = var("KILN_BINARY") {
            self.executor.kiln_binary = Some(v.into());
        }
        if let Some(v) = var("KILN_INSECURE_REGISTRIES") {
            self.registry.insecure = list(v);
        }
        if let Some(v) = var("KILN_REGISTRY_USERNAME") {
            self.registry.username = Some(v);
        }
        if let Some(v) = var("KILN_REGISTRY_PASSWORD") {
            self.registry.password = Some(v);
        }
        if let Some(v) = var("KILN_GOPROXY") {
            self.toolchains.goproxy = v;
        }
        if let Some(v) = var("KILN_MAVEN_ARGS") {
            self.toolchains.maven_args = list(v);
        }
        if let Some(v) = var("KILN_LOG_MAX_BYTES") {
            self.logs.max_bytes_per_build = parse("KILN_LOG_MAX_BYTES", v)?;
        }
        if let Some(v) = var("KILN_HARBOR_WEBHOOK_AUTH") {
            self.harbor.webhook_auth = Some(v);
        }
        if let Some(v) = var("KILN_HOOKS_RATE_PER_APP_PER_MINUTE") {
            self.hooks.rate_per_app_per_minute = parse("KILN_HOOKS_RATE_PER_APP_PER_MINUTE", v)?;
        }
        if let Some(v) = var("KILN_HOOKS_BURST") {
            self.hooks.burst = parse("KILN_HOOKS_BURST", v)?;
        }
        if let Some(v) = var("KILN_EXECUTOR") {
            self.executor.kind = v;
        }
        if let Some(v) = var("KILN_JOB_TEMPLATES") {
            self.kube.templates_dir = Some(v.into());
        }
        if let Some(v) = var("KILN_INSTANCE") {
            self.kube.instance = Some(v);
        }
        if let Some(v) = var("KILN_PROVISION_NAMESPACES") {
            self.kube.provision_namespaces = parse("KILN_PROVISION_NAMESPACES", v)?;
        }
        if let Some(v) = var("KILN_SERVICE_ACCOUNT") {
            self.kube.service_account = v;
        }
        if self.kube.provision_namespaces {
            self.kube.service_account_ref().map_err(|message| ConfigError::Invalid { field: "kube.service_account (KILN_SERVICE_ACCOUNT)", message })?;
        }
        if let Some(id) = &self.kube.instance {
            validate_instance(id).map_err(|message| ConfigError::Invalid { field: "kube.instance (KILN_INSTANCE)", message })?;
        }
        if !["local", "kube"].contains(&self.executor.kind.as_str()) {
            return Err(ConfigError::Invalid {
                field: "executor.kind (KILN_EXECUTOR)",
                message: format!("{:?} is not one of local, kube", self.executor.kind),
            });
        }
        if let Some(b) = self.toolchains.dockerfile_builder.as_deref() {
            if !["buildah", "buildkit"].contains(&b) {
                return Err(ConfigError::Invalid {
                    field: "toolchains.dockerfile_builder",
                    message: format!("{b:?} is not one of buildah, buildkit"),
                });
            }
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if c.name.is_empty() || c.registry.is_empty() {
                return Err(ConfigError::Invalid { field: "clusters", message: format!("cluster #{} needs a name and a registry", i + 1) });
            }
            if self.clusters[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigError::Invalid { field: "clusters", message: format!("cluster {:?} is configured twice", c.name) });
            }
        }
        self.apm.validate()?;
        if !(0..=19).contains(&self.executor.step_nice) {
            return Err(ConfigError::Invalid {
                field: "executor.step_nice (KILN_STEP_NICE)",
                message: format!("{} is not between 0 and 19", self.executor.step_nice),
            });
        }
        if self.executor.max_concurrent_builds == 0 {
            return Err(ConfigError::Env {
                name: "KILN_MAX_CONCURRENT_BUILDS",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_values() {
        let mut c: Config = toml::from_str("[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        c.apply_env(|n| (n == "KILN_LISTEN").then(|| "127.0.0.1:9100".to_string())).unwrap();
        assert_eq!(c.server.listen.port(), 9100);
        assert_eq!(c.executor.kind, "local");
    }

    #[test]
    fn webhook_rate_limit_from_file_and_env() {
        let mut c: Config = toml::from_str("[hooks]\nrate_per_app_per_minute = 30\nburst = 5\n").unwrap();
        c.apply_env(|n| (n == "KILN_HOOKS_BURST").then(|| "7".to_string())).unwrap();
        assert_eq!((c.hooks.rate_per_app_per_minute, c.hooks.burst), (30, 7));
        assert!(toml::from_str::<Config>("[hooks]\nrate = 1\n").is_err(), "unknown keys are refused");
        let err = Config::default().apply_env(|n| (n == "KILN_HOOKS_RATE_PER_APP_PER_MINUTE").then(|| "-1".into())).unwrap_err();
        assert!(err.to_string().contains("KILN_HOOKS_RATE_PER_APP_PER_MINUTE"), "{err}");
    }

    #[test]
    fn namespace_provisioning_is_off_by_default_and_names_kilns_own_service_account() {
        let c = Config::default();
        assert!(!c.kube.provision_namespaces);
        assert_eq!(c.kube.service_account_ref(), Ok(("kiln", "kiln")));
        let mut c: Config = toml::from_str("[kube]\nprovision_namespaces = true\nservice_account = \"ops/kiln-prod\"\n").unwrap();
        c.apply_env(|_| None).unwrap();
        assert_eq!(c.kube.service_account_ref(), Ok(("ops", "kiln-prod")));
        let mut c = Config::default();
        c.apply_env(|n| (n == "KILN_PROVISION_NAMESPACES").then(|| "true".into())).unwrap();
        assert!(c.kube.provision_namespaces);
        let err = Config::default().apply_env(|n| (n == "KILN_PROVISION_NAMESPACES").then(|| "yes".into())).unwrap_err();
        assert!(err.to_string().contains("KILN_PROVISION_NAMESPACES"), "{err}");
        let err = Config::default()
            .apply_env(|n| match n {
                "KILN_PROVISION_NAMESPACES" => Some("true".into()),
                "KILN_SERVICE_ACCOUNT" => Some("kiln".into()),
                _ => None,
            })
            .unwrap_err();
        assert!(err.to_string().contains("kube.service_account"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        assert!(toml::from_str::<Config>("[server]\nlisen = 1\n").unwrap_err().to_string().contains("lisen"));
        let err = Config::default().apply_env(|n| (n == "KILN_LISTEN").then(|| "nope".into())).unwrap_err();
        assert!(err.to_string().contains("KILN_LISTEN"), "{err}");
    }

    #[test]
    fn apm_agents_are_checked() {
        let ok = "[[apm.agents]]\nname = \"tracer\"\nversion = \"1.2\"\nsource = { dir = \"/opt/agents/tracer\" }\n";
        let mut c: Config = toml::from_str(ok).unwrap();
        c.apply_env(|_| None).unwrap();
        assert!(c.apm.agents[0].java_options.contains("{agent}"));
        for bad in [
            "[[apm.agents]]\nname = \"t\"\nversion = \"1\"\nsource = { dir = \"/a\", tar_gz = \"/b\" }\n",
            "[[apm.agents]]\nname = \"t\"\nversion = \"1\"\nsource = { image = \"r.io/a:1\" }\n",
            "[[apm.agents]]\nname = \"../t\"\nversion = \"1\"\nsource = { dir = \"/a\" }\n",
            "[[apm.agents]]\nname = \"t\"\nversion = \"1\"\nsource = { dir = \"/a\" }\njava_options = \"-D{nope}\"\n",
        ] {
            let mut c: Config = toml::from_str(bad).unwrap();
            assert!(c.apply_env(|_| None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tenants_settings_win_over_the_config_and_fall_back_to_it() {
        let mut c = Config::default();
        c.kube.registry_secret = Some("kiln-registry".into());
        c.executor.build_timeout_secs = 1200;
        let mut t = Tenant { id: 1, name: "team".into(), created_at: 0, settings: Default::default() };
        assert_eq!(c.kube.namespace_for(&t), "kiln-team");
        assert_eq!(c.kube.registry_secret_for(&t), Some("kiln-registry"));
        assert_eq!(c.kube.cache_claim_for(&t), None);
        assert_eq!(c.executor.build_timeout_for(&t).as_secs(), 1200);
        t.settings.namespace = Some("builds".into());
        t.settings.registry_secret = Some("team-robot".into());
        t.settings.cache_claim = Some("team-cache".into());
        t.settings.build_timeout_secs = Some(600);
        assert_eq!(c.kube.namespace_for(&t), "builds");
        assert_eq!(c.kube.registry_secret_for(&t), Some("team-robot"));
        assert_eq!(c.kube.cache_claim_for(&t), Some("team-cache"));
        assert_eq!(c.executor.build_timeout_for(&t).as_secs(), 600);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut c = Config::default();
        c.server.admin_token = Some("adm1n-secret".into());
        c.registry.password = Some("reg-secret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("adm1n-secret") && !shown.contains("reg-secret"), "{shown}");
    }
}
