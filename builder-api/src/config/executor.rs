//! How builds run (`[executor]`), which registries their steps push to (`[registry]`) and the
//! host toolchains the local executor uses (`[toolchains]`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::store::Tenant;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `local` (host processes, the default) or `kube` (one Job per build; see `[kube]`).
    pub kind: String,
    /// Builds running at once on this replica; the rest wait Queued.
    pub max_concurrent_builds: usize,
    /// How long a replica's claim on the builds it runs holds unless renewed (it renews every
    /// third of this). With several replicas on PostgreSQL, a replica that dies loses its claims
    /// after this long and another one adopts its builds.
    pub claim_lease_secs: u64,
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
            claim_lease_secs: 10,
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
    /// Where an operator lists the registries spoken to over plain HTTP, as errors name it.
    pub const INSECURE_SETTING: &'static str = "KILN_INSECURE_REGISTRIES (registry.insecure)";

    /// Options for talking to registries: plain HTTP for the `insecure` hosts, the credentials
    /// offered only to `target_registry` — never to the registry a base image comes from.
    pub fn options_for(&self, target_registry: &str) -> registry_sync::RegistryOptions {
        let mut opts = registry_sync::RegistryOptions::anonymous();
        opts.insecure_registries = self.insecure.clone();
        opts.insecure_setting = Some(Self::INSECURE_SETTING.into());
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
