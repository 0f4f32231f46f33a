//! Subscriptions declared on the Deployments themselves: a Deployment annotated
//! `kiln.dev/app: TENANT/APP` follows that app's images, with `kiln.dev/policy` (default
//! `manual`) and `kiln.dev/container` (default: its first container). Kiln lists the
//! Deployments of every tenant's deploy namespaces (`deploy_namespaces`), in every cluster, at
//! start and every few minutes, and adds the subscriptions it does not have yet; it never
//! changes or removes one (the API does that). Only granted namespaces are listed: Kiln reads
//! Deployments nowhere else (its RBAC gives it no more), and an annotation there names the
//! tenant it deploys for, so one naming another tenant is ignored with a log line.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::Api;

use super::clusters::ClusterError;
use super::grants::GrantError;
use super::policy::{Policy, PolicyError};
use crate::context::Context;
use crate::store::{NewSubscription, StoreError};

pub const APP: &str = "kiln.dev/app";
pub const POLICY: &str = "kiln.dev/policy";
pub const CONTAINER: &str = "kiln.dev/container";

/// Why a cluster's Deployments could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why an annotated Deployment's annotation is ignored (logged with the Deployment's name).
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("the value must be TENANT/APP")]
    NotTenantApp,
    #[error("no such tenant")]
    NoTenant,
    #[error("no such app")]
    NoApp,
    #[error("no such cluster")]
    NoCluster,
    #[error("no container {0:?}")]
    NoContainer(String),
    #[error("no containers")]
    NoContainers,
    #[error("{0}")]
    Grant(#[from] GrantError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Adds the subscriptions the annotated Deployments of every cluster ask for; returns how many.
pub async fn discover(ctx: &Context) -> usize {
    let mut added = 0;
    for cluster in ctx.clusters.all() {
        match discover_in(ctx, &cluster.name).await {
            Ok(n) => added += n,
            Err(e) => tracing::warn!(cluster = cluster.name, "discovering annotated Deployments: {e}"),
        }
    }
    added
}

/// Every tenant's deploy namespaces, each once.
async fn granted_namespaces(ctx: &Context) -> Result<BTreeSet<String>, StoreError> {
    let tenants = ctx.store.tenants().await?;
    Ok(tenants.into_iter().flat_map(|t| t.settings.deploy_namespaces.unwrap_or_default()).collect())
}

async fn discover_in(ctx: &Context, cluster: &str) -> Result<usize, DiscoveryError> {
    let client = ctx.clusters.client(cluster).await?;
    let mut deployments = Vec::new();
    for ns in granted_namespaces(ctx).await? {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        // One namespace that cannot be read (not there yet, no RoleBinding) stops no other.
        match api.list(&ListParams::default()).await {
            Ok(list) => deployments.extend(list),
            Err(e) => tracing::warn!(cluster, namespace = ns, "listing Deployments for {APP} annotations: {e}"),
        }
    }
    let mut added = 0;
    for d in deployments {
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        let Some(target) = annotations.get(APP) else { continue };
        let (ns, name) = (d.metadata.namespace.clone().unwrap_or_default(), d.metadata.name.clone().unwrap_or_default());
        let why = match subscribe(ctx, cluster, &ns, &name, &d, target, &annotations).await {
            Ok(true) => {
                added += 1;
                continue;
            }
            Ok(false) => continue,
            Err(why) => why,
        };
        tracing::warn!(cluster, namespace = ns, deployment = name, "annotation {APP}={target:?} ignored: {why}");
    }
    Ok(added)
}

/// Ok(false) when the subscription exists already.
async fn subscribe(
    ctx: &Context,
    cluster: &str,
    ns: &str,
    name: &str,
    d: &Deployment,
    target: &str,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<bool, AnnotationError> {
    let (tenant, app) = target.split_once('/').ok_or(AnnotationError::NotTenantApp)?;
    let tenant = ctx.store.tenant_by_name(tenant).await?.ok_or(AnnotationError::NoTenant)?;
    super::grants::check_namespace(&tenant, ns)?;
    let app = ctx.store.app_by_name(tenant.id, app).await?.ok_or(AnnotationError::NoApp)?;
    let policy = annotations.get(POLICY).map(String::as_str).unwrap_or("manual");
    policy.parse::<Policy>()?;
    let containers = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|s| s.containers.clone()).unwrap_or_default();
    let container = match annotations.get(CONTAINER) {
        Some(c) => containers.iter().find(|x| &x.name == c).ok_or_else(|| AnnotationError::NoContainer(c.clone()))?.name.clone(),
        None => containers.first().ok_or(AnnotationError::NoContainers)?.name.clone(),
    };
    let cluster_config = ctx.clusters.get(cluster).ok_or(AnnotationError::NoCluster)?;
    let path = app.image_repository.split_once('/').map(|(_, p)| p).unwrap_or_default();
    let repository = crate::replication::repository_in(cluster_config, &app.tenant, path);
    super::grants::check_repository(&tenant, cluster_config, &repository)?;
    let new = NewSubscription {
        app_id: app.id,
        cluster: cluster.to_string(),
        namespace: ns.to_string(),
        deployment: name.to_string(),
        container,
        repository,
        policy: policy.to_string(),
        rollback_on_failure: true,
        strategy: None,
    };
    match ctx.store.create_subscription(&new).await {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
