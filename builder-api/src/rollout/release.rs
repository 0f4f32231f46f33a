//! What the blue-green and canary drivers share: the rollout being driven and its cluster, its
//! record (each step with its time, and who promoted or aborted), and the holds between steps —
//! a pause, or a wait for a person's `promote` / `abort`, during which a Deployment's readiness
//! (and, for a canary, whether any of its pods restarted a container) is watched.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use super::deployment::{self, DeploymentError};
use crate::context::Context;
use crate::store::{Rollout, StoreError};

pub struct Release<'a> {
    pub ctx: &'a Arc<Context>,
    pub rollout: &'a Rollout,
    pub client: kube::Client,
    pub deployments: Api<Deployment>,
    /// The subscribed Deployment as read when the release started.
    pub subscribed: Deployment,
}

/// How a hold ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// The pause is over.
    Elapsed,
    /// `POST …/promote` by this actor.
    Promoted(String),
    /// `POST …/abort` by this actor.
    Aborted(String),
    /// The watched Deployment has fewer ready replicas than it needs (the text says how many).
    Unready(String),
}

/// Why a hold could not go on.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("watching Deployment {name}: {source}")]
    Watch { name: String, source: kube::runtime::wait::Error },
}

/// While holding, this Deployment must keep `replicas` ready, and (when `pods` is a label
/// selector) none of the pods it selects may restart a container.
pub struct Healthy<'a> {
    pub name: &'a str,
    pub replicas: i32,
    pub pods: Option<String>,
}

/// How often a hold looks at the store for a decision another replica of Kiln took (this
/// process's own API calls wake it at once).
const DECISION_POLL: Duration = Duration::from_secs(2);

/// Whether a release goes on once started.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    Go,
    /// A newer image took its place before it started.
    Superseded,
    /// What takes the traffic runs the image already.
    AlreadyRuns,
}

impl Release<'_> {
    /// Pending → Running, recording the image that takes the traffic now (`live_image`, the
    /// rollback target) — one write before anything is sent to the cluster.
    pub async fn start(&self, live_image: &str) -> Result<Start, StoreError> {
        let replaces = (live_image != self.rollout.image).then_some(live_image);
        if !self.ctx.store.start_rollout(self.rollout.id, replaces).await? {
            return Ok(Start::Superseded);
        }
        if replaces.is_none() {
            return Ok(Start::AlreadyRuns);
        }
        let kind = super::strategy::Strategy::from_stored(&self.rollout.strategy).kind();
        self.step(&format!("{kind} release of {} (replacing {live_image})", self.rollout.image), self.rollout.requested_by.as_deref()).await?;
        Ok(Start::Go)
    }

    /// Appends a step to the release record.
    pub async fn step(&self, what: &str, actor: Option<&str>) -> Result<(), StoreError> {
        tracing::info!(rollout = self.rollout.id, deployment = self.rollout.deployment, actor, "{what}");
        self.ctx.store.record_rollout_step(self.rollout.id, what, actor).await
    }

    /// The instance label value for what this release creates.
    pub async fn instance(&self) -> Result<String, StoreError> {
        self.ctx.store.instance_id(self.ctx.config.kube.instance.as_deref()).await
    }

    /// Holds for `pause` (None: until a decision), ending early on `promote` or `abort`, or when
    /// `healthy` stops having its replicas ready.
    pub async fn hold(&self, pause: Option<Duration>, healthy: Option<Healthy<'_>>) -> Result<Hold, HoldError> {
        let until = pause.map(|p| tokio::time::Instant::now() + p);
        let unready = async {
            let Some(h) = &healthy else { return std::future::pending().await };
            let want = h.replicas;
            let cond = move |d: Option<&Deployment>| d.is_none_or(|d| deployment::ready_replicas(d) < want);
            let seen = kube::runtime::wait::await_condition(self.deployments.clone(), h.name, cond).await;
            match seen {
                Ok(d) => {
                    let ready = d.as_ref().map_or(0, deployment::ready_replicas);
                    Ok(Hold::Unready(format!("{ready} of {want} pods of Deployment {} Ready", h.name)))
                }
                Err(source) => Err(HoldError::Watch { name: h.name.to_string(), source }),
            }
        };
        tokio::pin!(unready);
        let restarted = async {
            let Some(selector) = healthy.as_ref().and_then(|h| h.pods.clone()) else { return std::future::pending().await };
            restarted_pod(Api::namespaced(self.client.clone(), &self.rollout.namespace), &selector).await
        };
        tokio::pin!(restarted);
        loop {
            // Registered before the store is read, so a decision made in between still wakes it.
            let decided = self.ctx.rollouts.decisions.notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            if let Some((what, who)) = self.ctx.store.take_rollout_decision(self.rollout.id).await? {
                return Ok(if what == "abort" { Hold::Aborted(who) } else { Hold::Promoted(who) });
            }
            let wake = match until {
                Some(u) if tokio::time::Instant::now() >= u => return Ok(Hold::Elapsed),
                Some(u) => u.min(tokio::time::Instant::now() + DECISION_POLL),
                None => tokio::time::Instant::now() + DECISION_POLL,
            };
            tokio::select! {
                _ = &mut decided => {}
                _ = tokio::time::sleep_until(wake) => {}
                outcome = &mut unready => return outcome,
                why = &mut restarted => return Ok(Hold::Unready(why)),
            }
        }
    }

    /// Waits until the Deployment's rollout of `generation` is complete, for at most `within`.
    pub async fn ready(&self, name: &str, generation: i64, within: Duration) -> Result<(), DeploymentError> {
        deployment::wait(&self.deployments, name, generation, within).await
    }
}

/// Watches the pods `selector` picks until one has restarted a container; says which. The watch
/// re-lists after errors (410 Gone, a dropped connection), so it lasts as long as the hold.
async fn restarted_pod(pods: Api<Pod>, selector: &str) -> String {
    use futures_util::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let mut stream = watcher(pods, watcher::Config::default().labels(selector)).default_backoff().applied_objects().boxed();
    while let Some(seen) = stream.next().await {
        let Ok(pod) = seen else { continue };
        let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
        if let Some(c) = statuses.iter().find(|c| c.restart_count > 0) {
            let name = pod.metadata.name.unwrap_or_default();
            return format!("canary pod {name} restarted (container {} restarted {} times)", c.name, c.restart_count);
        }
    }
    std::future::pending().await
}
