//! The kube executor (`[kube]`), and where a tenant's settings meet its service-wide defaults.

use std::path::PathBuf;

use serde::Deserialize;

use crate::store::Tenant;

/// A `[kube]` value (or a tenant's namespace derived from it) that cannot be used; the message
/// says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

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
pub fn validate_instance(id: &str) -> Result<(), InvalidSetting> {
    if id.is_empty() || id.len() > MAX_INSTANCE_LEN || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(InvalidSetting(format!("{id:?} is not an instance id: use 1-{MAX_INSTANCE_LEN} lowercase letters and digits")));
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
    pub fn default_namespace_for(&self, tenant: &str) -> Result<String, InvalidSetting> {
        let ns = format!("{}{tenant}", self.namespace_prefix);
        crate::validate::dns_label("namespace", &ns).map_err(|_| {
            InvalidSetting(format!(
                "tenant {tenant:?} would build in the namespace {ns:?} ({} characters), but a namespace name has at most 63 \
                 characters (lowercase letters, digits and '-'); give the tenant a \"namespace\" of its own",
                ns.len()
            ))
        })?;
        Ok(ns)
    }

    /// `service_account` as (namespace, name).
    pub fn service_account_ref(&self) -> Result<(&str, &str), InvalidSetting> {
        match self.service_account.split_once('/') {
            Some((ns, name)) if crate::validate::dns_label("namespace", ns).is_ok() && crate::validate::dns_subdomain("name", name).is_ok() => Ok((ns, name)),
            _ => Err(InvalidSetting(format!("{:?} is not a ServiceAccount: write it <namespace>/<name>, e.g. \"kiln/kiln\"", self.service_account))),
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
