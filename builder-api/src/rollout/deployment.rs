//! One Deployment's side of a rollout: read a container's image, set it, and wait until the
//! Deployment controller reports the rollout complete or failed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

/// How long one API call may take before the cluster counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

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
    #[error("creating Deployment {name}: {source}")]
    Create { name: String, source: kube::Error },
    /// A Deployment by the name of a twin exists that Kiln did not make from the subscribed one:
    /// someone else's, which Kiln does not touch.
    #[error("Deployment {name} exists but was not made by Kiln from {of} (no {TWIN_OF}: {of} annotation); it was not touched")]
    NotATwin { name: String, of: String },
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
    Create,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Read => "reading",
            Call::Patch => "patching",
            Call::Create => "creating",
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

/// Replicas the Deployment asks for (`spec.replicas`, 1 when unset as the server defaults it).
pub fn desired_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Whether every replica the Deployment asks for runs its current template and is available
/// (ready for its `minReadySeconds`), with none left of an older one: the Deployment could take
/// all of its Service's traffic now.
pub fn available(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    let want = desired_replicas(d);
    progress(d, generation) == Progress::Complete && d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) >= want
}

/// Ready replicas, as the Deployment's status counts them.
pub fn ready_replicas(d: &Deployment) -> i32 {
    d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)
}

/// The Deployment or None when it does not exist.
pub async fn find(api: &Api<Deployment>, name: &str) -> Result<Option<Deployment>, DeploymentError> {
    match get(api, name).await {
        Ok(d) => Ok(Some(d)),
        Err(DeploymentError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a Deployment Kiln makes beside a subscribed one (a blue-green colour, a canary) differs
/// in: its name, one label that tells its pods apart, its replicas and its container's image.
pub struct Twin<'a> {
    pub name: &'a str,
    /// Added to the selector and the pod labels, so the twin owns only its own pods.
    pub label: (&'a str, &'a str),
    pub replicas: i32,
    pub container: &'a str,
    pub image: &'a str,
    pub min_ready_secs: Option<i32>,
    pub instance: &'a str,
}

/// A new Deployment made from `base` (the subscribed one): its pod template and settings, with
/// the twin's differences. Returns its generation.
pub async fn create_twin(api: &Api<Deployment>, base: &Deployment, twin: &Twin<'_>) -> Result<i64, DeploymentError> {
    let mut spec = base.spec.clone().unwrap_or_default();
    let (key, value) = twin.label;
    spec.selector.match_labels.get_or_insert_with(Default::default).insert(key.into(), value.into());
    spec.template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default).insert(key.into(), value.into());
    spec.replicas = Some(twin.replicas);
    if twin.min_ready_secs.is_some() {
        spec.min_ready_seconds = twin.min_ready_secs;
    }
    if let Some(pod) = spec.template.spec.as_mut() {
        for c in pod.containers.iter_mut().filter(|c| c.name == twin.container) {
            c.image = Some(twin.image.to_string());
        }
    }
    let labels = [
        (crate::executor::kube::render::LABEL_INSTANCE.to_string(), twin.instance.to_string()),
        (key.to_string(), value.to_string()),
    ];
    let d = Deployment {
        metadata: kube::api::ObjectMeta {
            name: Some(twin.name.to_string()),
            namespace: base.metadata.namespace.clone(),
            labels: Some(base.metadata.labels.clone().unwrap_or_default().into_iter().chain(labels).collect()),
            annotations: Some([(TWIN_OF.to_string(), base.metadata.name.clone().unwrap_or_default())].into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    match tokio::time::timeout(CALL_TIMEOUT, api.create(&kube::api::PostParams::default(), &d)).await {
        Ok(Ok(d)) => Ok(d.metadata.generation.unwrap_or(1)),
        Ok(Err(source)) => Err(DeploymentError::Create { name: twin.name.to_string(), source }),
        Err(_) => Err(DeploymentError::Unanswered { call: Call::Create, name: twin.name.to_string() }),
    }
}

/// The annotation on a Deployment Kiln made beside a subscribed one, naming it.
pub const TWIN_OF: &str = "kiln.dev/twin-of";

/// The twin `name` of the subscribed Deployment `of`, if it exists; an error when a Deployment
/// of that name exists that Kiln did not make from `of`.
pub async fn find_twin(api: &Api<Deployment>, name: &str, of: &str) -> Result<Option<Deployment>, DeploymentError> {
    let Some(d) = find(api, name).await? else { return Ok(None) };
    let made_from = d.metadata.annotations.as_ref().and_then(|a| a.get(TWIN_OF));
    if made_from.map(String::as_str) != Some(of) {
        return Err(DeploymentError::NotATwin { name: name.to_string(), of: of.to_string() });
    }
    Ok(Some(d))
}

/// What [`reshape`] changes: the replicas always, the container's image and `minReadySeconds`
/// when given.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub replicas: i32,
    /// (container, image).
    pub image: Option<(&'a str, &'a str)>,
    pub min_ready_secs: Option<i32>,
}

impl Shape<'_> {
    pub fn replicas(replicas: i32) -> Shape<'static> {
        Shape { replicas, image: None, min_ready_secs: None }
    }
}

/// Sets what `shape` says in one strategic merge patch (the other containers stay as they are).
/// Returns the new generation.
pub async fn reshape(api: &Api<Deployment>, name: &str, shape: Shape<'_>) -> Result<i64, DeploymentError> {
    let mut patch = json!({"spec": {"replicas": shape.replicas}});
    if let Some((container, image)) = shape.image {
        patch["spec"]["template"] = json!({"spec": {"containers": [{"name": container, "image": image}]}});
    }
    if let Some(secs) = shape.min_ready_secs {
        patch["spec"]["minReadySeconds"] = json!(secs);
    }
    let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
    match tokio::time::timeout(CALL_TIMEOUT, api.patch(name, &params, &patch)).await {
        Ok(Ok(d)) => Ok(d.metadata.generation.unwrap_or(0)),
        Ok(Err(source)) => Err(DeploymentError::Patch { name: name.to_string(), source }),
        Err(_) => Err(DeploymentError::Unanswered { call: Call::Patch, name: name.to_string() }),
    }
}
