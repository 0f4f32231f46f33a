//! Blue-green: two colour Deployments, `<name>-blue` and `<name>-green`, made by Kiln from the
//! subscribed one (its pod template, one more label, `kiln.dev/colour`, in their selector and
//! pods), behind the app's Service, whose selector's `kiln.dev/colour` picks the live one.
//!
//! A new image goes to the idle colour, with the live one's replica count and
//! `minReadySeconds = min_ready_secs`; once it is Available (every replica ready that long)
//! Kiln switches the Service's selector to it — one patch, so there is no moment when the
//! Service selects a colour without ready pods — and keeps the old colour running for
//! `keep_previous_secs` before scaling it to zero. A rollback within that window finds the old
//! colour running the image, Available, and only switches back: no pod starts.
//!
//! On first use the Service selects no colour yet (the subscribed Deployment serves): Kiln first
//! makes blue from the subscribed Deployment with the image it runs, switches to it (the same
//! image: nothing changes for users), and then releases the new image to green. The subscribed
//! Deployment is scaled to zero after `keep_previous_secs` and stays the template the colours
//! are made from.
//!
//! With `promote: manual` the release waits, once the idle colour is Available, for
//! `POST …/promote` (switch) or `…/abort` (the idle colour goes back to zero, nothing switched).

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Api;

use super::deployment::{self, DeploymentError, Shape, Twin};
use super::release::{Healthy, Hold, HoldError, Release, Start};
use super::service::{self, ServiceError};
use super::strategy::{BlueGreen, Promote};
use super::Rolled;
use crate::store::StoreError;

/// The label whose value (`blue`, `green`) tells the colours' pods apart, in the colour
/// Deployments' selectors and pod templates and in the Service's selector.
pub const COLOUR: &str = "kiln.dev/colour";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }

    fn parse(s: &str) -> Option<Colour> {
        match s {
            "blue" => Some(Colour::Blue),
            "green" => Some(Colour::Green),
            _ => None,
        }
    }

    fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    /// The colour's Deployment beside the subscribed one.
    pub fn deployment(self, subscribed: &str) -> String {
        format!("{subscribed}-{}", self.as_str())
    }
}

/// Why a blue-green release did not switch the traffic to its image. The text is the reason the
/// rollout records.
#[derive(Debug, thiserror::Error)]
pub enum BlueGreenError {
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Deployment(#[from] DeploymentError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Hold(#[from] HoldError),
    #[error("Deployment {deployment} has no container {container:?}")]
    NoContainer { deployment: String, container: String },
    /// The idle colour did not become Available: the Service never switched, and the colour is
    /// back at zero replicas.
    #[error("{deployment} did not become Available, the Service still selects {live}: {source}")]
    NotAvailable { deployment: String, live: String, source: DeploymentError },
    #[error("{deployment} stopped being Ready while waiting for promotion ({why}); the Service still selects {live}")]
    Unready { deployment: String, live: String, why: String },
    #[error("aborted by {by}; the Service still selects {live}")]
    Aborted { by: String, live: String },
}

pub(super) async fn release(rel: &Release<'_>, bg: &BlueGreen) -> Result<Rolled, BlueGreenError> {
    let r = rel.rollout;
    let services: Api<Service> = Api::namespaced(rel.client.clone(), &r.namespace);
    let service_name = bg.service.clone().unwrap_or_else(|| r.deployment.clone());
    let svc = service::get(&services, &service_name).await?;
    let live = service::selector_value(&svc, COLOUR).as_deref().and_then(Colour::parse);
    let live_name = live.map_or_else(|| r.deployment.clone(), |c| c.deployment(&r.deployment));
    let live_d = match live {
        Some(_) => deployment::find_twin(&rel.deployments, &live_name, &r.deployment).await?.ok_or_else(|| DeploymentError::Missing { name: live_name.clone() })?,
        None => rel.subscribed.clone(),
    };
    let live_image = deployment::container_image(&live_d, &r.container)
        .ok_or_else(|| BlueGreenError::NoContainer { deployment: live_name.clone(), container: r.container.clone() })?;
    match rel.start(&live_image).await? {
        Start::Superseded => return Ok(Rolled::Superseded),
        Start::AlreadyRuns => return Ok(Rolled::Done(Some(format!("{live_name}, which the Service selects, already runs this image")))),
        Start::Go => {}
    }
    let replicas = deployment::desired_replicas(&live_d);
    let switch = Switch { rel, bg, services: &services, service: &service_name, replicas };
    let live = match live {
        Some(colour) => colour,
        None => {
            // First use: blue takes over from the subscribed Deployment with the same image.
            switch.bring_up(Colour::Blue, &live_image, &live_name).await?;
            switch.to(Colour::Blue, &live_name).await?;
            switch.retire_later(&live_d, &live_name);
            Colour::Blue
        }
    };
    let live_name = live.deployment(&r.deployment);
    let idle = live.other();
    let idle_name = idle.deployment(&r.deployment);
    let idle_d = deployment::find_twin(&rel.deployments, &idle_name, &r.deployment).await?;
    // A colour still kept from the last switch, with this image: the instant way back.
    let kept = idle_d.as_ref().is_some_and(|d| {
        deployment::container_image(d, &r.container).as_deref() == Some(r.image.as_str())
            && deployment::desired_replicas(d) == replicas
            && deployment::available(d)
    });
    if kept {
        rel.step(&format!("{idle_name} still runs the image and is Available: switching back, no pod started"), None).await?;
    } else {
        switch.bring_up(idle, &r.image, &live_name).await?;
    }
    if bg.promote == Promote::Manual {
        rel.step(&format!("{idle_name} waits for promotion (kiln promote / kiln abort)"), None).await?;
        match rel.hold(None, Some(Healthy { name: &idle_name, replicas, pods: None })).await? {
            Hold::Promoted(who) => rel.step("promoted", Some(&who)).await?,
            Hold::Aborted(who) => {
                if !kept {
                    deployment::reshape(&rel.deployments, &idle_name, Shape::replicas(0)).await?;
                }
                rel.step(&format!("aborted; {idle_name} scaled to zero"), Some(&who)).await?;
                return Err(BlueGreenError::Aborted { by: who, live: live_name });
            }
            Hold::Unready(why) => {
                deployment::reshape(&rel.deployments, &idle_name, Shape::replicas(0)).await?;
                return Err(BlueGreenError::Unready { deployment: idle_name, live: live_name, why });
            }
            Hold::Elapsed => unreachable!("a hold without a pause ends only on a decision or readiness"),
        }
    }
    let live_d = deployment::get(&rel.deployments, &live_name).await?;
    switch.to(idle, &live_name).await?;
    switch.retire_later(&live_d, &live_name);
    Ok(Rolled::Done(None))
}

/// One blue-green release's moves.
struct Switch<'a> {
    rel: &'a Release<'a>,
    bg: &'a BlueGreen,
    services: &'a Api<Service>,
    service: &'a str,
    replicas: i32,
}

impl Switch<'_> {
    /// Gives the colour the image and the live replica count (making its Deployment from the
    /// subscribed one on first use) and waits until it is Available; if it does not become so,
    /// scales it back to zero.
    async fn bring_up(&self, colour: Colour, image: &str, live_name: &str) -> Result<(), BlueGreenError> {
        let (rel, r) = (self.rel, self.rel.rollout);
        let name = colour.deployment(&r.deployment);
        let min_ready = i32::try_from(self.bg.min_ready_secs).unwrap_or(i32::MAX);
        let generation = match deployment::find_twin(&rel.deployments, &name, &r.deployment).await? {
            Some(_) => {
                let shape = Shape { replicas: self.replicas, image: Some((&r.container, image)), min_ready_secs: Some(min_ready) };
                deployment::reshape(&rel.deployments, &name, shape).await?
            }
            None => {
                let instance = rel.instance().await?;
                let twin = Twin {
                    name: &name,
                    label: (COLOUR, colour.as_str()),
                    replicas: self.replicas,
                    container: &r.container,
                    image,
                    min_ready_secs: Some(min_ready),
                    instance: &instance,
                };
                let generation = deployment::create_twin(&rel.deployments, &rel.subscribed, &twin).await?;
                rel.step(&format!("created {name} from {}", r.deployment), None).await?;
                generation
            }
        };
        rel.step(&format!("{name} set to {image} with {} replicas", self.replicas), None).await?;
        let within = Duration::from_secs(rel.ctx.config.rollout.deadline_secs + u64::from(self.bg.min_ready_secs));
        if let Err(source) = rel.ready(&name, generation, within).await {
            deployment::reshape(&rel.deployments, &name, Shape::replicas(0)).await?;
            return Err(BlueGreenError::NotAvailable { deployment: name, live: live_name.to_string(), source });
        }
        let secs = self.bg.min_ready_secs;
        rel.step(&format!("{name} Available: {} replicas ready for {secs}s", self.replicas), None).await?;
        Ok(())
    }

    /// Switches the Service to the colour.
    async fn to(&self, colour: Colour, from: &str) -> Result<(), BlueGreenError> {
        let r = self.rel.rollout;
        service::select(self.services, self.service, COLOUR, Some(colour.as_str())).await?;
        let what = format!("Service {} selects {} (was {from})", self.service, colour.deployment(&r.deployment));
        self.rel.step(&what, None).await?;
        Ok(())
    }

    /// After `keep_previous_secs`, scales what served before the switch to zero — unless the
    /// Service selects it again (a rollback switched back) or its spec changed since (a later
    /// release gave it an image). The release is over by then; the step is added to its record.
    fn retire_later(&self, previous: &k8s_openapi::api::apps::v1::Deployment, name: &str) {
        let (ctx, deployments, services) = (self.rel.ctx.clone(), self.rel.deployments.clone(), self.services.clone());
        let (rollout, name, service) = (self.rel.rollout.id, name.to_string(), self.service.to_string());
        let generation = previous.metadata.generation;
        let colour = name.rsplit_once('-').and_then(|(_, c)| Colour::parse(c)).filter(|c| *name == c.deployment(&self.rel.rollout.deployment));
        let keep = Duration::from_secs(self.bg.keep_previous_secs);
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            let selected = match service::get(&services, &service).await {
                Ok(svc) => service::selector_value(&svc, COLOUR).as_deref().and_then(Colour::parse),
                Err(e) => return tracing::warn!(rollout, "not scaling {name} down: {e}"),
            };
            if colour.is_some() && selected == colour {
                return;
            }
            match deployment::get(&deployments, &name).await {
                Ok(d) if d.metadata.generation == generation => {}
                Ok(_) => return,
                Err(e) => return tracing::warn!(rollout, "not scaling {name} down: {e}"),
            }
            let scaled = deployment::reshape(&deployments, &name, Shape::replicas(0)).await;
            let step = match scaled {
                Ok(_) => format!("{name} scaled to zero after {}s", keep.as_secs()),
                Err(e) => format!("{name} not scaled to zero: {e}"),
            };
            if let Err(e) = ctx.store.record_rollout_step(rollout, &step, None).await {
                tracing::warn!(rollout, "{step}: {e}");
            }
        });
    }
}
