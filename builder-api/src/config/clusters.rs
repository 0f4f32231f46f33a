//! Where images go after a build: the clusters Kiln replicates to and rolls out in
//! (`[[clusters]]`), Harbor's webhooks (`[harbor]`) and rollouts (`[rollout]`).

use serde::Deserialize;

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
