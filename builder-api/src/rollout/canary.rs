//! Canary: the new image reaches a share of the traffic at each step (`steps`, say
//! `[10, 50, 100]` percent), holds there (`pause_secs`, or until `POST …/promote` with
//! `promote: manual`), and goes on only while its pods are Ready.
//!
//! The canary runs in `<name>-canary`, a Deployment Kiln makes from the subscribed (stable) one
//! with the label `kiln.dev/track: canary` added to its selector and pods. With the default
//! `traffic: replicas` both Deployments' pods are behind the app's Service, so the split is the
//! replica count: with N stable replicas, a step of p % runs ceil(N·p/100) canary pods (at least
//! one) and the rest stable. With `traffic: istio` the stable Deployment keeps its N replicas and
//! the VirtualService's route weights between the stable and the canary subset are the split.
//!
//! A step's canary pods must all be Ready within `window_secs`, and stay Ready through the
//! step's hold; otherwise the release aborts: traffic back to stable (its replicas, or the
//! weights 100/0), the canary scaled to zero, the rollout recorded `Aborted` with the reason.
//! At 100 the stable Deployment takes the image (a rolling update, with Istio while the canary
//! carries all traffic) and the canary goes to zero.
//!
//! Readiness is read from the canary Deployment's status; through each step's hold Kiln also
//! watches the canary's pods, and one that restarted a container (a crash, an OOM kill, a failed
//! liveness probe) aborts the release even if it is Ready again.

use std::time::Duration;

use kube::api::DynamicObject;
use kube::Api;

use super::deployment::{self, DeploymentError, Shape, Twin};
use super::release::{Healthy, Hold, HoldError, Release, Start};
use super::strategy::{Canary, Promote, Traffic};
use super::virtual_service::{self, VirtualServiceError, Weights};
use super::Rolled;
use crate::store::StoreError;

/// The label whose value `canary` tells the canary's pods apart (an Istio subset selects it).
pub const TRACK: &str = "kiln.dev/track";

/// Why a canary release did not end with the stable Deployment on its image. The text is the
/// reason the rollout records.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    #[error("{0}")]
    Deployment(#[from] DeploymentError),
    #[error("{0}")]
    VirtualService(#[from] VirtualServiceError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Hold(#[from] HoldError),
    #[error("Deployment {deployment} has no container {container:?}")]
    NoContainer { deployment: String, container: String },
    /// Traffic is back on stable and the canary at zero.
    #[error("aborted at {percent} %: {why}; traffic back to stable, canary scaled to zero")]
    Aborted { percent: u8, why: String },
}

/// Canary pods for `percent` of `stable` replicas: at least one, and all at 100.
pub fn canary_replicas(stable: i32, percent: u8) -> i32 {
    let share = (i64::from(stable) * i64::from(percent) + 99) / 100;
    (share as i32).clamp(1, stable.max(1))
}

pub(super) async fn release(rel: &Release<'_>, c: &Canary) -> Result<Rolled, CanaryError> {
    let r = rel.rollout;
    let stable_image = deployment::container_image(&rel.subscribed, &r.container)
        .ok_or_else(|| CanaryError::NoContainer { deployment: r.deployment.clone(), container: r.container.clone() })?;
    match rel.start(&stable_image).await? {
        Start::Superseded => return Ok(Rolled::Superseded),
        Start::AlreadyRuns => return Ok(Rolled::Done(Some("the stable Deployment already runs this image".into()))),
        Start::Go => {}
    }
    let name = format!("{}-canary", r.deployment);
    let existing = deployment::find_twin(&rel.deployments, &name, &r.deployment).await?;
    // The stable replicas to split: with the replica split, what a run of this release before a
    // restart moved to the canary counts too.
    let mut stable = deployment::desired_replicas(&rel.subscribed);
    if c.traffic == Traffic::Replicas {
        stable += existing.as_ref().map_or(0, deployment::desired_replicas);
    }
    let mut run = Run {
        rel,
        c,
        name,
        exists: existing.is_some(),
        stable,
        vs: (c.traffic == Traffic::Istio).then(|| virtual_service::api(rel.client.clone(), &r.namespace)),
        vs_name: c.virtual_service.clone().unwrap_or_else(|| r.deployment.clone()),
        previous: stable_image,
    };
    for &percent in c.steps.iter().filter(|p| **p < 100) {
        let canary = canary_replicas(run.stable, percent);
        if let Err(why) = run.canary_up(canary).await? {
            return Err(run.abort(percent, why, None).await);
        }
        let split = match &run.vs {
            Some(_) => {
                run.weigh(100 - percent, percent).await?;
                format!("VirtualService {} weighs stable {} / canary {percent}, {canary} canary pods", run.vs_name, 100 - percent)
            }
            None => {
                deployment::reshape(&rel.deployments, &r.deployment, Shape::replicas(run.stable - canary)).await?;
                format!("{canary} canary, {} stable pods", run.stable - canary)
            }
        };
        rel.step(&format!("canary at {percent} %: {split}"), None).await?;
        let pause = match c.promote {
            Promote::Auto => Some(Duration::from_secs(c.pause_secs)),
            Promote::Manual => {
                rel.step(&format!("canary at {percent} % waits for promotion (kiln promote / kiln abort)"), None).await?;
                None
            }
        };
        let healthy = Healthy { name: &run.name, replicas: canary, pods: Some(run.pod_selector()) };
        match rel.hold(pause, Some(healthy)).await? {
            Hold::Elapsed => {}
            Hold::Promoted(who) => rel.step(&format!("promoted from {percent} %"), Some(&who)).await?,
            Hold::Aborted(who) => return Err(run.abort(percent, format!("aborted by {who}"), Some(&who)).await),
            Hold::Unready(why) => return Err(run.abort(percent, why, None).await),
        }
    }
    // 100 %: with Istio the canary carries everything while stable rolls to the image.
    if run.vs.is_some() {
        if let Err(why) = run.canary_up(run.stable).await? {
            return Err(run.abort(100, why, None).await);
        }
        run.weigh(0, 100).await?;
        rel.step(&format!("canary at 100 %: VirtualService {} weighs stable 0 / canary 100", run.vs_name), None).await?;
    }
    let shape = Shape { replicas: run.stable, image: Some((&r.container, &r.image)), min_ready_secs: None };
    let generation = deployment::reshape(&rel.deployments, &r.deployment, shape).await?;
    let deadline = Duration::from_secs(rel.ctx.config.rollout.deadline_secs);
    if let Err(e) = rel.ready(&r.deployment, generation, deadline).await {
        return Err(run.abort(100, format!("{} did not roll out the image: {e}", r.deployment), None).await);
    }
    if run.vs.is_some() {
        run.weigh(100, 0).await?;
    }
    deployment::reshape(&rel.deployments, &run.name, Shape::replicas(0)).await?;
    let done = format!("{} runs the image with {} replicas; {} scaled to zero", r.deployment, run.stable, run.name);
    rel.step(&done, None).await?;
    Ok(Rolled::Done(None))
}

/// One canary release's moves.
struct Run<'a> {
    rel: &'a Release<'a>,
    c: &'a Canary,
    /// The canary Deployment.
    name: String,
    exists: bool,
    /// The stable Deployment's replicas before the release (what an abort gives back).
    stable: i32,
    vs: Option<Api<DynamicObject>>,
    vs_name: String,
    /// What the stable Deployment ran: an abort after it took the image sets it back.
    previous: String,
}

impl Run<'_> {
    /// Runs `replicas` canary pods with the image (making the canary Deployment from the stable
    /// one on first use) and waits up to `window_secs` for all to be Ready. Err(why) when they
    /// are not.
    async fn canary_up(&mut self, replicas: i32) -> Result<Result<(), String>, CanaryError> {
        let (rel, r) = (self.rel, self.rel.rollout);
        let generation = if self.exists {
            let shape = Shape { replicas, image: Some((&r.container, &r.image)), min_ready_secs: None };
            deployment::reshape(&rel.deployments, &self.name, shape).await?
        } else {
            let instance = rel.instance().await?;
            let twin = Twin {
                name: &self.name,
                label: (TRACK, "canary"),
                replicas,
                container: &r.container,
                image: &r.image,
                min_ready_secs: None,
                instance: &instance,
            };
            let generation = deployment::create_twin(&rel.deployments, &rel.subscribed, &twin).await?;
            self.exists = true;
            rel.step(&format!("created {} from {}", self.name, r.deployment), None).await?;
            generation
        };
        let window = Duration::from_secs(self.c.window_secs);
        match rel.ready(&self.name, generation, window).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                let ready = deployment::find(&rel.deployments, &self.name).await?.as_ref().map_or(0, deployment::ready_replicas);
                let detail = match e {
                    DeploymentError::Incomplete { .. } => String::new(),
                    other => format!(" ({other})"),
                };
                Ok(Err(format!("{ready} of {replicas} canary pods Ready within {}s{detail}", window.as_secs())))
            }
        }
    }

    /// The label selector of the canary's pods: the stable Deployment's, and the track.
    fn pod_selector(&self) -> String {
        let spec = self.rel.subscribed.spec.as_ref();
        let labels = spec.and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
        labels.iter().filter(|(k, _)| k.as_str() != TRACK).map(|(k, v)| format!("{k}={v}")).chain([format!("{TRACK}=canary")]).collect::<Vec<_>>().join(",")
    }

    async fn weigh(&self, stable: u8, canary: u8) -> Result<(), VirtualServiceError> {
        let Some(api) = &self.vs else { return Ok(()) };
        let w = Weights { stable_subset: &self.c.stable_subset, canary_subset: &self.c.canary_subset, stable, canary };
        virtual_service::set_weights(api, &self.vs_name, &w).await
    }

    /// Traffic back to stable, canary to zero, the step recorded; the error to end with. A
    /// write that fails here is recorded in the reason too: the release ends either way.
    async fn abort(&self, percent: u8, why: String, actor: Option<&str>) -> CanaryError {
        let (rel, r) = (self.rel, self.rel.rollout);
        let mut why = why;
        let back = Shape { replicas: self.stable, image: Some((&r.container, &self.previous)), min_ready_secs: None };
        let stable_back = match &self.vs {
            Some(_) => self.weigh(100, 0).await.err().map(|e| e.to_string()),
            None => None,
        };
        let replicas_back = deployment::reshape(&rel.deployments, &r.deployment, back).await.err().map(|e| e.to_string());
        let canary_zero = if self.exists {
            deployment::reshape(&rel.deployments, &self.name, Shape::replicas(0)).await.err().map(|e| e.to_string())
        } else {
            None
        };
        for e in [stable_back, replicas_back, canary_zero].into_iter().flatten() {
            why.push_str(&format!("; then {e}"));
        }
        let step = format!("aborted at {percent} %: {why}");
        if let Err(e) = rel.step(&step, actor).await {
            return e.into();
        }
        CanaryError::Aborted { percent, why }
    }
}

#[cfg(test)]
mod tests {
    use super::canary_replicas;

    #[test]
    fn canary_replicas_round_up_and_leave_at_least_one() {
        assert_eq!(canary_replicas(4, 25), 1);
        assert_eq!(canary_replicas(4, 10), 1);
        assert_eq!(canary_replicas(4, 50), 2);
        assert_eq!(canary_replicas(3, 50), 2);
        assert_eq!(canary_replicas(4, 100), 4);
        assert_eq!(canary_replicas(1, 10), 1);
    }
}
