//! Where a tenant may deploy. Deploy targets are granted by an admin (the tenant setting
//! `deploy_namespaces`, and `registry_project` for the images), never claimed by a subscription:
//! the API, annotation discovery and every rollout ask here, so a subscription made before an
//! admin narrowed the grant, or kept from an older release, is refused before Kiln touches the
//! Deployment.

use crate::config::ClusterConfig;
use crate::store::Tenant;

/// Ok when `namespace` is one of the tenant's `deploy_namespaces`; else why not, naming the
/// setting and who changes it, so the refusal says what to ask for.
pub fn check_namespace(tenant: &Tenant, namespace: &str) -> Result<(), String> {
    if tenant.settings.allows_deploy_namespace(namespace) {
        return Ok(());
    }
    let granted = tenant.settings.deploy_namespaces.clone().unwrap_or_default();
    Err(format!(
        "namespace {namespace:?} is not one of tenant {}'s deploy_namespaces {granted:?}; an admin grants it with PUT /api/v1/tenants/{}/settings",
        tenant.name, tenant.name
    ))
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
pub fn check_repository(tenant: &Tenant, cluster: &ClusterConfig, repository: &str) -> Result<(), String> {
    let Some(project) = project_in(tenant, cluster) else { return Ok(()) };
    if repository.split_once('/').is_some_and(|(first, _)| first == project) {
        return Ok(());
    }
    Err(format!(
        "repository {repository:?} is outside tenant {}'s registry project {project:?} in cluster {}'s registry: use {project}/<name>",
        tenant.name, cluster.name
    ))
}

/// Both checks: where a subscription of the tenant may point.
pub fn check(tenant: &Tenant, cluster: &ClusterConfig, namespace: &str, repository: &str) -> Result<(), String> {
    check_namespace(tenant, namespace)?;
    check_repository(tenant, cluster, repository)
}
