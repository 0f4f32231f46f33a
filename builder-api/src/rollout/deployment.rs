//! One Deployment's side of a rollout: read a container's image, set it, and wait until the
//! Deployment controller reports the rollout complete or failed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

/// How long one API call may take before the cluster counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub fn container_image(d: &Deployment, container: &str) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.iter().find(|c| c.name == container)?.image.clone()
}

/// Why a Deployment could not be read, patched or watched to the end of its rollout. The rollout
/// records the text as its reason.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("Deployment {name} does not exist")]
    Missing { name: String },
    #[error("reading Deployment {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("patching Deployment {name}: {source}")]
    Patch { name: String, source: kube::Error },
    /// The cluster did not answer a read or a patch within [`CALL_TIMEOUT`].
    #[error("{call} Deployment {name}: no answer in {timeout:?}", timeout = CALL_TIMEOUT)]
    Unanswered { call: Call, name: String },
    #[error("watching Deployment {name}: {source}")]
    Watch { name: String, source: kube::runtime::wait::Error },
    #[error("Deployment {name} was deleted during the rollout")]
    Deleted { name: String },
    /// The deadline passed with the rollout still in progress.
    #[error("the rollout was not complete after {}s", .deadline.as_secs())]
    Incomplete { deadline: Duration },
    /// The Deployment controller reports the rollout failed (`ProgressDeadlineExceeded`).
    #[error("{0}")]
    Failed(String),
}

/// The API call that got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Read,
    Patch,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Read => "reading",
            Call::Patch => "patching",
        })
    }
}

pub async fn get(api: &Api<Deployment>, name: &str) -> Result<Deployment, DeploymentError> {
    match tokio::time::timeout(CALL_TIMEOUT, api.get(name)).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(DeploymentError::Missing { name: name.to_string() }),
        Ok(Err(source)) => Err(DeploymentError::Read { name: name.to_string(), source }),
        Err(_) => Err(DeploymentError::Unanswered { call: Call::Read, name: name.to_string() }),
    }
}

/// Sets the container's image (a strategic merge patch: the other containers stay as they are).
/// Returns the Deployment's new `metadata.generation`.
pub async fn set_image(api: &Api<Deployment>, name: &str, container: &str, image: &str) -> Result<i64, DeploymentError> {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}});
    let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
    match tokio::time::timeout(CALL_TIMEOUT, api.patch(name, &params, &patch)).await {
        Ok(Ok(d)) => Ok(d.metadata.generation.unwrap_or(0)),
        Ok(Err(source)) => Err(DeploymentError::Patch { name: name.to_string(), source }),
        Err(_) => Err(DeploymentError::Unanswered { call: Call::Patch, name: name.to_string() }),
    }
}

/// Where a rollout stands, as the Deployment's status tells.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Rolling,
    Complete,
    Failed(String),
}

/// The `kubectl rollout status` rules: the controller has seen `generation`, every replica is
/// updated and available and no old one is left; or `Progressing` is False with
/// `ProgressDeadlineExceeded`.
pub fn progress(d: &Deployment, generation: i64) -> Progress {
    let Some(status) = d.status.as_ref() else { return Progress::Rolling };
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::Rolling;
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing") {
        if c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Progress::Failed(format!("ProgressDeadlineExceeded: {}", c.message.as_deref().unwrap_or("the rollout made no progress")));
        }
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated >= want && available >= want && total <= updated {
        Progress::Complete
    } else {
        Progress::Rolling
    }
}

/// Watches the Deployment (one watch on it by name) until the rollout of `generation` is
/// complete or failed, or `deadline` passes.
pub async fn wait(api: &Api<Deployment>, name: &str, generation: i64, deadline: Duration) -> Result<(), DeploymentError> {
    let cond = move |d: Option<&Deployment>| d.is_none_or(|d| progress(d, generation) != Progress::Rolling);
    match tokio::time::timeout(deadline, kube::runtime::wait::await_condition(api.clone(), name, cond)).await {
        Err(_) => Err(DeploymentError::Incomplete { deadline }),
        Ok(Err(source)) => Err(DeploymentError::Watch { name: name.to_string(), source }),
        Ok(Ok(None)) => Err(DeploymentError::Deleted { name: name.to_string() }),
        Ok(Ok(Some(d))) => match progress(&d, generation) {
            Progress::Failed(why) => Err(DeploymentError::Failed(why)),
            _ => Ok(()),
        },
    }
}
