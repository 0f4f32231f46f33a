//! Where a tenant may deploy. Deploy targets are granted by an admin (the tenant setting
//! `deploy_namespaces`, and `registry_project` for the images), never claimed by a subscription:
//! the API, annotation discovery and every rollout ask here, so a subscription made before an
//! admin narrowed the grant, or kept from an older release, is refused before Kiln touches the
//! Deployment.

use crate::config::ClusterConfig;
use crate::store::Tenant;

/// Where a tenant may not deploy: a namespace it was not granted, or another tenant's images.
/// The text names the setting and who changes it, so a refusal says what to ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(
        "namespace {namespace:?} is not one of tenant {tenant}'s deploy_namespaces {granted:?}; an admin grants it with PUT /api/v1/tenants/{tenant}/settings"
    )]
    Namespace { tenant: String, namespace: String, granted: Vec<String> },
    #[error(
        "repository {repository:?} is outside tenant {tenant}'s registry project {project:?} in cluster {cluster}'s registry: use {project}/<name>"
    )]
    Repository { tenant: String, cluster: String, repository: String, project: String },
}

/// Ok when `namespace` is one of the tenant's `deploy_namespaces`.
pub fn check_namespace(tenant: &Tenant, namespace: &str) -> Result<(), GrantError> {
    if tenant.settings.allows_deploy_namespace(namespace) {
        return Ok(());
    }
    Err(GrantError::Namespace {
        tenant: tenant.name.clone(),
        namespace: namespace.to_string(),
        granted: tenant.settings.deploy_namespaces.clone().unwrap_or_default(),
    })
}

/// The project a tenant's images are in, in `cluster`'s registry: the cluster's own mapping for
/// the tenant (`clusters.projects`), else the tenant's `registry_project`. None: the tenant has
/// no project, and its repositories are not restricted.
pub fn project_in(tenant: &Tenant, cluster: &ClusterConfig) -> Option<String> {
    let project = tenant.settings.registry_project.as_ref()?;
    Some(cluster.projects.get(&tenant.name).unwrap_or(project).clone())
}

/// Ok when `repository` (a path in `cluster`'s registry) is in the tenant's project there, or
/// the tenant has none: a subscription never follows another tenant's images.
pub fn check_repository(tenant: &Tenant, cluster: &ClusterConfig, repository: &str) -> Result<(), GrantError> {
    let Some(project) = project_in(tenant, cluster) else { return Ok(()) };
    if repository.split_once('/').is_some_and(|(first, _)| first == project) {
        return Ok(());
    }
    Err(GrantError::Repository {
        tenant: tenant.name.clone(),
        cluster: cluster.name.clone(),
        repository: repository.to_string(),
        project,
    })
}

/// Both checks: where a subscription of the tenant may point.
pub fn check(tenant: &Tenant, cluster: &ClusterConfig, namespace: &str, repository: &str) -> Result<(), GrantError> {
    check_namespace(tenant, namespace)?;
    check_repository(tenant, cluster, repository)
}
