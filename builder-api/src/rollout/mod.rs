//! Rollout: when an image arrives in a cluster's registry (a Harbor webhook, or registry-sync's
//! verified copy), every Deployment container subscribed to that repository, in that cluster,
//! whose policy follows the image, is set to `registry/repo@sha256:…` — the cluster's own
//! registry host, pinned by digest — and watched until complete; a failed rollout rolls back to
//! the image it replaced when the subscription says so.
//!
//! Image events and rollouts live in the store first ([`crate::store::Rollout`]); the loop here
//! turns pending events into rollouts and drives at most one rollout per Deployment at a time
//! (a newer image supersedes a pending one). A cluster that cannot be reached fails its own
//! rollouts with the reason; the others go on. Before a rollout sends the cluster anything, it
//! checks the tenant's grant ([`grants`]) as it is then, so Kiln never patches a Deployment
//! outside the tenant's `deploy_namespaces`, whenever and however the subscription was made.

pub mod blue_green;
pub mod canary;
pub mod clusters;
pub mod deployment;
pub mod discovery;
pub mod grants;
pub mod policy;
pub mod release;
pub mod service;
pub mod state;
pub mod strategy;
pub mod virtual_service;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

use crate::context::Context;
use crate::store::{NewImageEvent, NewRollout, Rollout, StoreError};
use blue_green::BlueGreenError;
use canary::CanaryError;
use clusters::ClusterError;
use deployment::DeploymentError;
use grants::GrantError;
use policy::Policy;
use release::Release;
pub use state::Rollouts;
use strategy::Strategy;

/// How often the clusters' Deployments are listed for `kiln.dev/app` annotations.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(300);

/// The rollout loop; runs for the life of the service.
pub async fn run(ctx: Arc<Context>, mut leading: tokio::sync::watch::Receiver<bool>) {
    loop {
        // Only the replica that leads runs this loop (`store/leadership.rs`); the others take
        // image events into the store and wake it (`peers`).
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        tracing::info!("this replica runs the cluster-wide loops (rollouts, discovery, replication left unfinished)");
        // What the replica that led before left unfinished (or this one, before a restart).
        if let Err(e) = ctx.store.requeue_running_rollouts().await {
            tracing::error!("rollouts: {e}");
        }
        if let Err(e) = crate::replication::resume(&ctx).await {
            tracing::error!("resuming replications: {e}");
        }
        lead(&ctx, &mut leading).await;
    }
}

/// The rollout loop, while this replica leads.
async fn lead(ctx: &Arc<Context>, leading: &mut tokio::sync::watch::Receiver<bool>) {
    let mut next_discovery = tokio::time::Instant::now();
    while *leading.borrow() {
        if tokio::time::Instant::now() >= next_discovery {
            next_discovery = tokio::time::Instant::now() + DISCOVERY_INTERVAL;
            let added = discovery::discover(&ctx).await;
            if added > 0 {
                tracing::info!("{added} subscription(s) added from Deployment annotations");
            }
        }
        match handle_image_events(&ctx).await {
            // More events wait: dispatch what is queued, then come straight back.
            Ok(true) => ctx.rollouts.wake(),
            Ok(false) => {}
            Err(e) => tracing::error!("rollouts: {e}"),
        }
        if let Err(e) = dispatch(&ctx).await {
            tracing::error!("rollouts: {e}");
        }
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(2), ctx.rollouts.wake.notified()) => {}
            _ = leading.changed() => {}
        }
    }
}

/// Events turned into rollouts per pass: one transaction for all, then the rollouts start.
const EVENT_BATCH: i64 = 100;

/// Turns pending image events (a batch, oldest first) into rollouts of the subscriptions that
/// follow them. True when more events are waiting.
async fn handle_image_events(ctx: &Context) -> Result<bool, StoreError> {
    let events = ctx.store.pending_image_events(EVENT_BATCH).await?;
    let more = events.len() as i64 == EVENT_BATCH;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let mut rollouts = Vec::new();
    for event in events {
        let arrived = NewImageEvent {
            source: if event.source == "harbor" { "harbor" } else { "sync" },
            registry: event.registry,
            repository: event.repository,
            digest: event.digest,
            tag: event.tag,
        };
        rollouts.extend(rollouts_for(ctx, &arrived).await?);
    }
    if !ids.is_empty() {
        ctx.store.queue_rollouts(&ids, &rollouts).await?;
    }
    Ok(more)
}

/// The rollouts an image arrival asks for: one per subscription whose policy follows the image,
/// in every cluster that pulls from the event's registry (clusters may share one registry host;
/// each gets its own rollout and release record).
pub async fn rollouts_for(ctx: &Context, event: &NewImageEvent) -> Result<Vec<NewRollout>, StoreError> {
    let clusters: Vec<&crate::config::ClusterConfig> = ctx.clusters.pulling_from(&event.registry).collect();
    if clusters.is_empty() {
        tracing::info!(registry = event.registry, "image event for a registry no configured cluster pulls from");
        return Ok(vec![]);
    }
    // The builds that made the digest matter only to `branch:` policies: read once, if needed.
    let mut builds: Option<Vec<crate::store::Build>> = None;
    let mut out = vec![];
    for sub in ctx.store.subscriptions_for_repository(&event.repository).await? {
        let Some(cluster) = clusters.iter().find(|c| c.name == sub.cluster) else {
            continue;
        };
        let Ok(policy) = sub.policy.parse::<Policy>() else { continue };
        if matches!(policy, Policy::Branch(_)) && builds.is_none() {
            builds = Some(ctx.store.succeeded_builds_with_digest(&event.digest).await?);
        }
        let branch = builds
            .iter()
            .flatten()
            .find(|b| b.app_id == sub.app_id)
            .and_then(|b| b.git_ref.as_deref())
            .and_then(|r| r.strip_prefix("refs/heads/"));
        if policy.follows(event.tag.as_deref(), branch) {
            out.push(NewRollout {
                subscription_id: sub.id,
                app_id: sub.app_id,
                cluster: cluster.name.clone(),
                digest: event.digest.clone(),
                image: format!("{}/{}@{}", cluster.registry, event.repository, event.digest),
                trigger: event.source.to_string(),
                requested_by: None,
            });
        }
    }
    Ok(out)
}

/// Starts a driver for each Deployment that has a pending rollout and none running.
async fn dispatch(ctx: &Arc<Context>) -> Result<(), StoreError> {
    for rollout in ctx.store.rollouts_in_state("Pending").await? {
        let key = (rollout.cluster.clone(), rollout.namespace.clone(), rollout.deployment.clone());
        if !ctx.rollouts.active.lock().unwrap().insert(key.clone()) {
            continue;
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let id = rollout.id;
            if let Err(e) = drive(&ctx, rollout).await {
                tracing::error!(rollout = id, "rollout could not be recorded: {e}");
            }
            ctx.rollouts.active.lock().unwrap().remove(&key);
            ctx.rollouts.wake();
        });
    }
    Ok(())
}

async fn drive(ctx: &Arc<Context>, rollout: Rollout) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let (state, reason) = match roll(ctx, &rollout).await {
        Ok(Rolled::Superseded) => return Ok(()),
        Ok(Rolled::Done(note)) => ("Complete", note),
        Err(e) => (e.state(), Some(e.to_string())),
    };
    tracing::info!(rollout = rollout.id, deployment = rollout.deployment, state, reason, "rollout ended");
    // Here, where the rollout's end is known; a superseded one never touched the cluster.
    let labels = crate::metrics::ResultLabels { result: state.to_string() };
    ctx.metrics.rollout_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    ctx.store.finish_rollout(rollout.id, state, reason.as_deref()).await?;
    ctx.notifications.rollout_ended(&rollout, state, reason.as_deref());
    Ok(())
}

/// How a rollout that did not fail ended.
pub(crate) enum Rolled {
    /// The Deployment runs the image (with a note when there was nothing to do).
    Done(Option<String>),
    /// A newer image took its place before it started.
    Superseded,
}

/// Why a rollout ended without the Deployment running its image. The text is the reason the
/// rollout records; [`RolloutError::state`] is the state it ends in.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The grant does not cover the Deployment or the image: nothing was sent to the cluster.
    #[error("refused, the Deployment was not touched: {0}")]
    Refused(#[from] Refusal),
    #[error("cluster {cluster} is unreachable: {source}")]
    Unreachable { cluster: String, source: ClusterError },
    #[error("Deployment {deployment} has no container {container:?}")]
    NoContainer { deployment: String, container: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Reading, patching or watching the Deployment failed, and no rollback was asked for.
    #[error("{0}")]
    Deployment(#[from] DeploymentError),
    #[error("{failure}; rolling back to {previous} failed: {source}")]
    RollbackFailed { failure: DeploymentError, previous: String, source: DeploymentError },
    #[error("{failure}; the rollback to {previous} did not complete either: {source}")]
    RollbackIncomplete { failure: DeploymentError, previous: String, source: DeploymentError },
    /// The rollout failed and the Deployment runs the image it ran before.
    #[error("{failure}; rolled back to {previous}")]
    RolledBack { failure: DeploymentError, previous: String },
    #[error("blue-green: {0}")]
    BlueGreen(#[from] BlueGreenError),
    #[error("canary: {0}")]
    Canary(#[from] CanaryError),
}

impl RolloutError {
    /// The state the rollout ends in: `RolledBack` when the Deployment runs its previous image
    /// again, `Aborted` when a blue-green or canary release was stopped (by a person, or by
    /// canary pods not Ready) with the traffic where it was, else `Failed`.
    pub fn state(&self) -> &'static str {
        match self {
            RolloutError::RolledBack { .. } => "RolledBack",
            RolloutError::BlueGreen(BlueGreenError::Aborted { .. }) | RolloutError::Canary(CanaryError::Aborted { .. }) => "Aborted",
            _ => "Failed",
        }
    }
}

/// Why a rollout may not touch its Deployment, checked as the grant is at the time.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the app no longer exists")]
    AppGone,
    #[error("the subscription no longer exists")]
    SubscriptionGone,
    #[error("cluster {0:?} is not configured")]
    NoCluster(String),
    #[error("{0}")]
    Grant(#[from] GrantError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

async fn roll(ctx: &Arc<Context>, r: &Rollout) -> Result<Rolled, RolloutError> {
    // Checked again here, before any call to the cluster: the grant may have narrowed since the
    // subscription was made, or the subscription may be from a release that did not check.
    granted(ctx, r).await?;
    let client = ctx
        .clusters
        .client(&r.cluster)
        .await
        .map_err(|source| RolloutError::Unreachable { cluster: r.cluster.clone(), source })?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &r.namespace);
    let current = deployment::get(&api, &r.deployment).await?;
    let strategy = Strategy::from_stored(&r.strategy);
    if !matches!(strategy, Strategy::Rolling) {
        let release = Release { ctx, rollout: r, client, deployments: api, subscribed: current };
        return match &strategy {
            Strategy::BlueGreen(bg) => Ok(blue_green::release(&release, bg).await?),
            Strategy::Canary(c) => Ok(canary::release(&release, c).await?),
            Strategy::Rolling => unreachable!("handled below"),
        };
    }
    let previous = deployment::container_image(&current, &r.container)
        .ok_or_else(|| RolloutError::NoContainer { deployment: r.deployment.clone(), container: r.container.clone() })?;
    // Running, with what it replaces recorded, in one write before the patch.
    let replaces = (previous != r.image).then_some(previous.as_str());
    if !ctx.store.start_rollout(r.id, replaces).await? {
        return Ok(Rolled::Superseded);
    }
    if replaces.is_none() {
        return Ok(Rolled::Done(Some("the Deployment already ran this image".into())));
    }
    // A rollout resumed after a restart keeps what it recorded the first time.
    let previous = r.previous_image.clone().unwrap_or(previous);
    let deadline = Duration::from_secs(ctx.config.rollout.deadline_secs);
    let generation = deployment::set_image(&api, &r.deployment, &r.container, &r.image).await?;
    let Err(failure) = deployment::wait(&api, &r.deployment, generation, deadline).await else { return Ok(Rolled::Done(None)) };
    if !r.rollback_on_failure {
        return Err(failure.into());
    }
    let generation = match deployment::set_image(&api, &r.deployment, &r.container, &previous).await {
        Ok(generation) => generation,
        Err(source) => return Err(RolloutError::RollbackFailed { failure, previous, source }),
    };
    match deployment::wait(&api, &r.deployment, generation, deadline).await {
        Ok(()) => Err(RolloutError::RolledBack { failure, previous }),
        Err(source) => Err(RolloutError::RollbackIncomplete { failure, previous, source }),
    }
}

/// Ok when the rollout's Deployment is in one of its tenant's deploy namespaces and the image in
/// the tenant's registry project, as they are now.
async fn granted(ctx: &Context, r: &Rollout) -> Result<(), Refusal> {
    let (_, tenant) = ctx.store.app_with_tenant(r.app_id).await?.filter(|(app, _)| app.deleted_at.is_none()).ok_or(Refusal::AppGone)?;
    let sub = ctx.store.subscription(r.subscription_id).await?.ok_or(Refusal::SubscriptionGone)?;
    let cluster = ctx.clusters.get(&r.cluster).ok_or_else(|| Refusal::NoCluster(r.cluster.clone()))?;
    Ok(grants::check(&tenant, cluster, &sub.namespace, &sub.repository)?)
}
