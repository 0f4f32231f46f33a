//! Replication: after a build succeeds, its image (by digest, with its commit tag) is copied to
//! the registry of every configured cluster with registry-sync's copy engine — read once from
//! the build's registry, fanned out to all targets, no blob a target has is sent, every copy
//! verified by digest. Each copy is recorded per cluster ([`crate::store::BuildSync`]); a
//! verified copy is an image event for that cluster's registry, which starts its rollouts.

pub mod shared;

use std::sync::Arc;

use registry_sync::{copy_image, CopyOptions, ImageRef, ReferenceError, RegistryAuth, RegistryOptions, TargetState};

use crate::config::ClusterConfig;
use crate::context::Context;
pub use shared::SharedCopies;
use crate::store::{BuildState, BuildSync, NewImageEvent};

/// Why a build cannot be replicated (the copies themselves fail per cluster, in the records).
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("no cluster is configured to replicate to")]
    NoClusters,
    #[error("build {0} has no pushed image to replicate")]
    NoImage(i64),
    #[error("build {0} not found")]
    NoBuild(i64),
    #[error("the built image reference {0:?} cannot be read: {1}")]
    BadReference(String, String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// Replicates in the background; the outcome lands in the build's sync records.
pub fn spawn(ctx: Arc<Context>, build_id: i64) {
    tokio::spawn(async move {
        if let Err(e) = replicate(&ctx, build_id).await {
            tracing::warn!(build = build_id, "replication: {e}");
        }
    });
}

/// Where a tenant's repository `project/rest` lives in a cluster's registry: the tenant's
/// project there (`clusters.projects`), else the same project; the same rest.
pub fn repository_in(cluster: &ClusterConfig, tenant: &str, repository: &str) -> String {
    let (project, rest) = repository.split_once('/').unwrap_or(("", repository));
    let project = cluster.projects.get(tenant).map(String::as_str).unwrap_or(project);
    if project.is_empty() { rest.to_string() } else { format!("{project}/{rest}") }
}

/// The image's name in a cluster's registry; Err when the cluster's registry and the tenant's
/// project there make no valid reference.
fn target_for(cluster: &ClusterConfig, tenant: &str, source: &ImageRef) -> Result<ImageRef, ReferenceError> {
    let path = repository_in(cluster, tenant, source.repository());
    ImageRef::parse(&format!("{}/{path}", cluster.registry))
}

fn registry_options(ctx: &Context, source: &ImageRef) -> RegistryOptions {
    let mut options = RegistryOptions {
        insecure_registries: ctx.config.registry.insecure.clone(),
        insecure_setting: Some(crate::config::RegistryConfig::INSECURE_SETTING.into()),
        ..Default::default()
    };
    if let (Some(u), Some(p)) = (&ctx.config.registry.username, &ctx.config.registry.password) {
        options.registry_auth.insert(source.registry().to_string(), RegistryAuth::basic(u.clone(), p.clone()));
    }
    for c in ctx.clusters.all() {
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            options.registry_auth.insert(c.registry.clone(), RegistryAuth::basic(u.clone(), p.clone()));
        }
    }
    options
}

/// Copies the build's image to every cluster's registry and records each copy.
pub async fn replicate(ctx: &Context, build_id: i64) -> Result<Vec<BuildSync>, ReplicationError> {
    let clusters = ctx.clusters.all();
    if clusters.is_empty() {
        return Err(ReplicationError::NoClusters);
    }
    let build = ctx.store.build(build_id).await?.ok_or(ReplicationError::NoBuild(build_id))?;
    let image = match (&build.state, &build.image) {
        (BuildState::Succeeded, Some(image)) => image.clone(),
        _ => return Err(ReplicationError::NoImage(build_id)),
    };
    let source = ImageRef::parse(&image).map_err(|e| ReplicationError::BadReference(image.clone(), e.to_string()))?;
    let digest = source.digest().ok_or_else(|| ReplicationError::BadReference(image.clone(), "no digest".into()))?.to_string();
    let tag: String = build.commit.chars().take(12).collect();

    // Clusters whose target cannot even be named fail on their own.
    let mut records = Vec::new();
    let mut targets = Vec::new();
    for c in clusters {
        match target_for(c, &build.tenant, &source) {
            Ok(t) => targets.push((c, t)),
            Err(reason) => records.push(failed(c, format!("{}/…", c.registry), reason.to_string())),
        }
    }
    let started: Vec<(String, String)> = targets.iter().map(|(c, t)| (c.name.clone(), t.with_digest(&digest).to_string())).collect();
    ctx.store.start_syncs(build_id, &started).await?;
    for r in &records {
        ctx.store.start_syncs(build_id, &[(r.cluster.clone(), r.target.clone())]).await?;
        ctx.store.finish_sync(build_id, r).await?;
        // A target refused before copying counts as a Failed copy of 0 bytes in 0 s.
        observe_copy(ctx, r);
    }
    let refused = records.len();
    if targets.is_empty() {
        return Ok(records);
    }
    let options = CopyOptions {
        registry: registry_options(ctx, &source),
        blob_locations: ctx.replication.blob_locations.clone(),
        transfers: ctx.replication.transfers.clone(),
        ..CopyOptions::default()
    };
    let refs: Vec<ImageRef> = targets.iter().map(|(_, t)| t.clone()).collect();
    let report = copy_image(&source, &refs, std::slice::from_ref(&tag), &options, &|_| {}).await;
    ctx.replication.save_learnt(&ctx.store).await;
    let mut arrived = Vec::new();
    match report {
        Err(e) => {
            for (c, t) in &targets {
                records.push(failed(c, t.with_digest(&digest).to_string(), format!("reading {image}: {e}")));
            }
        }
        Ok(report) => {
            for ((c, t), r) in targets.iter().zip(&report.targets) {
                let (state, reason) = match &r.state {
                    TargetState::Verified => ("Verified", None),
                    TargetState::Failed { reason } => ("Failed", Some(reason.clone())),
                };
                if r.verified() {
                    arrived.push(NewImageEvent {
                        source: "sync",
                        registry: c.registry.clone(),
                        repository: t.repository().to_string(),
                        digest: digest.clone(),
                        tag: Some(tag.clone()),
                    });
                }
                records.push(BuildSync {
                    cluster: c.name.clone(),
                    target: t.with_digest(&digest).to_string(),
                    state: state.into(),
                    reason,
                    bytes_sent: r.bytes_sent as i64,
                    blobs_sent: r.blobs_sent as i64,
                    blobs_mounted: r.blobs_mounted as i64,
                    blobs_skipped: r.blobs_skipped as i64,
                    duration_ms: r.duration.as_millis() as i64,
                    updated_at: 0,
                });
            }
        }
    }
    for (i, r) in records.iter().enumerate() {
        if i >= refused {
            observe_copy(ctx, r);
        }
        ctx.store.finish_sync(build_id, r).await?;
    }
    // Only a verified copy may start a rollout.
    if !arrived.is_empty() {
        ctx.store.record_image_events(&arrived).await?;
        ctx.rollouts.wake();
    }
    Ok(records)
}

/// One cluster's copy in `kiln_replication_duration_seconds` and `kiln_replication_bytes`, by
/// its result (`Verified` or `Failed`), as the copy reported it.
fn observe_copy(ctx: &Context, r: &BuildSync) {
    let labels = crate::metrics::ResultLabels { result: r.state.clone() };
    ctx.metrics.replication_duration.get_or_create(&labels).observe(r.duration_ms as f64 / 1000.0);
    ctx.metrics.replication_bytes.get_or_create(&labels).observe(r.bytes_sent as f64);
}

fn failed(c: &ClusterConfig, target: String, reason: String) -> BuildSync {
    BuildSync {
        cluster: c.name.clone(),
        target,
        state: "Failed".into(),
        reason: Some(reason),
        bytes_sent: 0,
        blobs_sent: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
        duration_ms: 0,
        updated_at: 0,
    }
}

/// Replications a previous process left running are run again (a copy resumes: blobs already
/// at a target are not sent twice).
pub async fn resume(ctx: &Arc<Context>) -> Result<usize, crate::store::StoreError> {
    let builds = ctx.store.builds_with_running_syncs().await?;
    for id in &builds {
        spawn(ctx.clone(), *id);
    }
    Ok(builds.len())
}
