//! The kube executor: one batch/v1 Job per build in the tenant's namespace.
//!
//! - [`render`]: the plan poured into the operator's template (`job-templates/`).
//! - [`pod_security`]: the level of the Pod Security Standards a rendered pod needs.
//! - [`submit`]: the Job handed to the cluster (PodSecurity check, create, adoption).
//! - [`tracker`]: one watch on Jobs, one on Pods, one on Warning Events, for all builds.
//! - [`follow`]: one build followed to its end, step by step, cluster warnings in its log.
//! - [`verdict`]: how the cluster says a build ended, in whatever order it says it.
//! - [`pod_logs`]: each container's log followed in step order, reopened when cut.
//! - [`provision`]: a new tenant's build namespace, Kiln's RoleBinding and the build
//!   ServiceAccount, when `kube.provision_namespaces` is on.
//!
//! A build's life costs two Kubernetes writes: the create (deterministic name; a 409 is a Job that
//! exists, adopted when it is this build's) and the delete with background propagation once the
//! log is stored. Everything else is read from the shared watches and the log subresource. On
//! start Kiln adopts the Jobs of builds still Running, fails those whose Job vanished, and
//! deletes Jobs of builds already final — only Jobs of its own instance (`kube.instance`) whose
//! build its own store knows.

pub mod follow;
pub mod pod_logs;
pub mod pod_security;
pub mod provision;
pub mod render;
pub mod submit;
pub mod tracker;
pub mod verdict;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use self::follow::Follower;
use self::render::{RenderInput, Templates, TenantPlacement};
use self::tracker::{BuildView, Tracker};
use super::{BuildJob, Executor, Outcome};
use crate::config::{RegistryConfig, ToolchainConfig};
use crate::plan::{self, DockerfileBuilder, PlanInput, ResolvedKind};
use crate::steps::ImageResult;
use crate::store::{BuildKind, BuildState, Store};

/// Cluster-side settings.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// `[kube]`: the defaults of each tenant's namespace, cache PVC and registry Secret, which a
    /// tenant's own settings override (`KubeConfig::namespace_for` and friends).
    pub kube: crate::config::KubeConfig,
    /// Where the scratch clone for `auto` builds goes.
    pub data_dir: PathBuf,
    /// APM agents apps may ask for; the image container reads the agent's source itself (an
    /// `image` source works in any cluster; `dir`/`tar_gz` only where the template mounts it).
    pub apm: crate::config::ApmConfig,
    /// This installation's id (`kube.instance`, else generated once and kept in the store).
    pub instance: String,
}

pub struct KubeExecutor {
    client: Client,
    templates: Templates,
    tracker: Tracker,
    settings: KubeSettings,
    toolchains: ToolchainConfig,
    registry: RegistryConfig,
    /// Git token Secrets known to be current: (namespace, app) → token hash.
    git_secrets: Mutex<HashMap<(String, String), [u8; 32]>>,
}

/// Why a build's Job is not created: the text is the build's reason.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The shallow fetch that decides an `auto` build's kind failed.
    #[error("clone failed: {0:#}")]
    Clone(#[source] crate::steps::clone::CloneError),
    #[error("{0}")]
    Kind(#[from] plan::KindError),
    /// The blocking task of the fetch panicked or was cancelled.
    #[error("probe task: {0}")]
    ProbeTask(#[from] tokio::task::JoinError),
    #[error("storing the git token Secret {namespace}/{name}: {}", api_message(.source))]
    GitSecret { namespace: String, name: String, source: kube::Error },
}

/// Time Kiln waits past the Job's own `activeDeadlineSeconds` before it gives up on the cluster.
const DEADLINE_GRACE: Duration = Duration::from_secs(60);

impl Executor for KubeExecutor {
    fn run(&self, job: BuildJob) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run_build(job))
    }

    fn adopts_running(&self) -> bool {
        true
    }

    fn reconcile<'a>(&'a self, store: &'a Store) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.delete_jobs_of_final_builds(store))
    }

    fn build_secrets<'a>(&'a self, tenant: &'a crate::store::Tenant) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.registry_passwords(tenant))
    }
}

impl KubeExecutor {
    /// Starts the watchers at once, so the first build finds them synced.
    pub fn new(
        client: Client,
        templates: Templates,
        settings: KubeSettings,
        toolchains: ToolchainConfig,
        registry: RegistryConfig,
    ) -> KubeExecutor {
        let tracker = Tracker::start(client.clone(), &settings.instance);
        KubeExecutor { client, templates, tracker, settings, toolchains, registry, git_secrets: Mutex::default() }
    }

    /// The passwords in the tenant's registry and pull Secrets, read once per build: the image
    /// container has the first in its env, a Dockerfile build's compile container the second, so
    /// a step could print them. A Secret Kiln may not read (403) or that is not there (404) is
    /// logged at debug and masks nothing: the build fails on the push or pull with its own clearer
    /// error then.
    async fn registry_passwords(&self, tenant: &crate::store::Tenant) -> Vec<String> {
        let kube = &self.settings.kube;
        let ns = kube.namespace_for(tenant);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let mut passwords = vec![];
        for name in [kube.registry_secret_for(tenant), kube.pull_secret_for(tenant)].into_iter().flatten() {
            match secrets.get(name).await {
                Ok(secret) => {
                    passwords.extend(secret.data.unwrap_or_default().get("password").and_then(|p| String::from_utf8(p.0.clone()).ok()))
                }
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
                    tracing::debug!(namespace = ns, secret = name, "registry Secret not readable for the log masker: {} {}", e.code, e.reason);
                }
                Err(e) => tracing::warn!(namespace = ns, secret = name, "reading the registry Secret for the log masker: {e}"),
            }
        }
        passwords
    }

    async fn run_build(&self, job: BuildJob) -> Outcome {
        let id = job.build.id;
        let outcome = self.drive(&job).await;
        self.tracker.forget(id);
        outcome
    }

    async fn drive(&self, job: &BuildJob) -> Outcome {
        let build = &job.build;
        let instance = self.settings.instance.as_str();
        let placement = TenantPlacement::of(&self.settings.kube, &job.tenant);
        let ns = placement.namespace.clone();
        let name = render::job_name(instance, build.id);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let view = self.tracker.subscribe(build.id);

        let kind = match self.resolve_kind(job).await {
            Ok(kind) => kind,
            // What the fetch reports may hold the git token.
            Err(reason) => return Outcome::failed(job.masker.mask(reason.to_string())),
        };
        if let Err(reason) = plan::check_runnable(kind, &job.app) {
            job.log.system("plan", format!("[kiln] {reason}")).await;
            return Outcome::failed(reason.to_string());
        }
        let apm = match super::resolve_apm(&self.settings.apm, &job.app) {
            Ok(apm) => apm,
            Err(reason) => return Outcome::failed(reason.to_string()),
        };
        let input = PlanInput {
            apm,
            app: &job.app,
            build,
            kind,
            toolchains: &self.toolchains,
            registry: &self.registry,
            dockerfile_builder: match self.toolchains.dockerfile_builder.as_deref() {
                Some("buildah") => DockerfileBuilder::Buildah,
                _ => DockerfileBuilder::Buildkit,
            },
        };
        let steps = plan::steps(&input);

        if job.resumed {
            self.tracker.synced().await;
            let has_job = view.borrow().job.is_some();
            // A replica that stopped between marking the build Running and creating its Job
            // left no Job and no step: create it now.
            let never_created = !has_job && job.store.steps(build.id).await.is_ok_and(|steps| steps.is_empty());
            if never_created {
                job.log.system("kiln", format!("[kiln] Job {ns}/{name} was never created; creating it")).await;
                if let Err(outcome) = self.submit(job, kind, &placement, &steps).await {
                    return outcome;
                }
            } else if !has_job {
                return Outcome::failed(format!("the build's Job {ns}/{name} vanished while no replica of kiln followed it"));
            } else {
                job.log.system("kiln", format!("[kiln] following Job {ns}/{name} again")).await;
            }
        } else {
            if let Err(outcome) = self.submit(job, kind, &placement, &steps).await {
                return outcome;
            }
        }

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let give_up_at = job.deadline + DEADLINE_GRACE;
        let unschedulable = Duration::from_secs(self.settings.kube.unschedulable_timeout_secs);
        let mut follower = Follower::new(job, pods, view, give_up_at, unschedulable);
        let outcome = match follower.steps(&steps).await {
            Ok(()) => {
                let seen = follower.view.borrow().clone();
                self.record_image(job, &seen).await
            }
            Err(outcome) => outcome,
        };
        // The log is stored; the Job's history lives in Kiln, not etcd.
        match jobs.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => tracing::warn!(build = build.id, "deleting Job {ns}/{name}: {e}"),
        }
        outcome
    }

    /// Renders the build's Job, checks it against the namespace's PodSecurity level, and creates
    /// it (or adopts it, when it exists already), writing the apiserver's warnings to the log.
    async fn submit(&self, job: &BuildJob, kind: ResolvedKind, placement: &TenantPlacement, steps: &[plan::StepSpec]) -> Result<(), Outcome> {
        let build = &job.build;
        let ns = &placement.namespace;
        // A fixed kind was recorded when the build started; only a resolved `auto` is written.
        if job.app.kind == BuildKind::Auto {
            job.store.set_build_kind(build.id, kind.as_str()).await.map_err(|e| Outcome::failed(format!("store: {e}")))?;
        }
        let git_secret = match &job.app.git_token {
            Some(token) => Some(self.ensure_git_secret(ns, &job.app.name, token).await.map_err(|e| Outcome::failed(e.to_string()))?),
            None => None,
        };
        let rendered = render::render(
            self.templates.for_kind(kind),
            &RenderInput {
                instance: &self.settings.instance,
                build_id: build.id,
                tenant: &job.app.tenant,
                app: &job.app.name,
                placement,
                steps,
                active_deadline_secs: secs_until(job.deadline).max(1),
                git_secret: git_secret.as_deref(),
            },
        )
        .map_err(|reason| Outcome::failed(format!("rendering the {} Job: {reason}", kind.as_str())))?;
        submit::check_pod_security(&self.client, ns, kind.as_str(), &rendered).await.map_err(|e| Outcome::failed(e.to_string()))?;
        let submitted = submit::create_job(&self.client, &rendered, &self.settings.instance, build.id)
            .await
            .map_err(|e| Outcome::failed(job.masker.mask(e.to_string())))?;
        let name = render::job_name(&self.settings.instance, build.id);
        for warning in &submitted.warnings {
            job.log.system("kiln", format!("[kiln] the Kubernetes API warns about Job {ns}/{name}: {warning}")).await;
        }
        if submitted.adopted {
            job.log.system("kiln", format!("[kiln] Job {ns}/{name} exists; following it")).await;
        } else {
            job.log.system("kiln", format!("[kiln] created Job {ns}/{name}")).await;
        }
        Ok(())
    }

    /// `auto` needs the commit's files to pick a template: a shallow fetch in Kiln. Explicit
    /// kinds pick their template directly (the Job is created before the commit is fetched). An
    /// error's text may hold the git token: the caller masks it.
    async fn resolve_kind(&self, job: &BuildJob) -> Result<ResolvedKind, PrepareError> {
        if let Some(kind) = job.build.kind.as_deref() {
            // A resumed build already chose.
            match kind {
                "go" => return Ok(ResolvedKind::Go),
                "maven" => return Ok(ResolvedKind::Maven),
                "dockerfile" => return Ok(ResolvedKind::Dockerfile),
                _ => {}
            }
        }
        match job.app.kind {
            BuildKind::Go => Ok(ResolvedKind::Go),
            BuildKind::Maven => Ok(ResolvedKind::Maven),
            BuildKind::Dockerfile => Ok(ResolvedKind::Dockerfile),
            BuildKind::Auto => {
                job.log.system("plan", "[kiln] kind auto: fetching the commit to see how to build it").await;
                let dir = self.settings.data_dir.join("probes").join(format!("build-{}", job.build.id));
                let opts = crate::steps::clone::CloneOptions {
                    url: job.app.git_url.clone(),
                    commit: job.build.commit.clone(),
                    ref_name: job.build.git_ref.clone(),
                    dest: dir.clone(),
                    token: job.app.git_token.clone(),
                };
                let dockerfile = job.app.settings.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
                let kind = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(&opts.dest);
                    let result = crate::steps::clone::clone_commit(&opts)
                        .map_err(PrepareError::Clone)
                        .and_then(|_| Ok(plan::resolve_kind(BuildKind::Auto, &dockerfile, &opts.dest)?));
                    let _ = std::fs::remove_dir_all(&opts.dest);
                    result
                })
                .await??;
                job.log.system("plan", format!("[kiln] building {} as {}", job.build.commit, kind.as_str())).await;
                Ok(kind)
            }
        }
    }

    /// The app's git token as a Secret in the tenant namespace (the clone container reads it from
    /// there). Written when the token changes, not per build.
    async fn ensure_git_secret(&self, ns: &str, app: &str, token: &str) -> Result<String, PrepareError> {
        let name = format!("kiln-git-{app}");
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let key = (ns.to_string(), app.to_string());
        if self.git_secrets.lock().unwrap().get(&key) == Some(&hash) {
            return Ok(name);
        }
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        (render::MANAGED_BY.0.to_string(), render::MANAGED_BY.1.to_string()),
                        (render::LABEL_INSTANCE.to_string(), self.settings.instance.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([("token".to_string(), ByteString(token.as_bytes().to_vec()))].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        secrets
            .patch(&name, &PatchParams::apply("kiln").force(), &Patch::Apply(&secret))
            .await
            .map_err(|source| PrepareError::GitSecret { namespace: ns.to_string(), name: name.clone(), source })?;
        self.git_secrets.lock().unwrap().insert(key, hash);
        Ok(name)
    }

    /// The image container's termination message holds `{"image","digest"}`.
    async fn record_image(&self, job: &BuildJob, view: &BuildView) -> Outcome {
        let message = verdict::terminated(view, "image").and_then(|t| t.message);
        let Some(message) = message else {
            return Outcome::failed("the image step reported no digest (empty termination message)");
        };
        let result: ImageResult = match serde_json::from_str(&message) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(format!("the image step's termination message is not a result: {e}")),
        };
        if let Err(e) = super::record_image(&job.store, job.build.id, &result).await {
            return Outcome::failed(format!("store: {e}"));
        }
        job.log.system("image", format!("[kiln] pushed {}", result.image)).await;
        Outcome::succeeded()
    }

    /// At start: this instance's Jobs whose build is final are deleted. A Job of a build this
    /// store does not know is left alone (it is not this installation's work, whatever its labels
    /// say) and named in the log.
    async fn delete_jobs_of_final_builds(&self, store: &Store) -> anyhow::Result<()> {
        let instance = &self.settings.instance;
        let jobs: Api<Job> = Api::all(self.client.clone());
        let list = jobs.list(&ListParams::default().labels(&render::instance_selector(instance))).await?;
        for j in list {
            let (ns, name) = (j.metadata.namespace.clone().unwrap_or_default(), j.metadata.name.clone().unwrap_or_default());
            let Some(id) = render::build_of_name(instance, &name).filter(|id| name == render::job_name(instance, *id)) else {
                tracing::warn!("leaving Job {ns}/{name} alone: it carries this instance's labels but not one of its names");
                continue;
            };
            let state = match store.build(id).await? {
                Some(b) => b.state,
                None => {
                    tracing::warn!("leaving Job {ns}/{name} alone: build {id} is not in this store");
                    continue;
                }
            };
            if state == BuildState::Running || state == BuildState::Queued {
                continue;
            }
            let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => tracing::info!("deleted Job {ns}/{name}: its build {id} is {}", state.as_str()),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::warn!("deleting Job {ns}/{name}: {e}"),
            }
        }
        Ok(())
    }
}

fn secs_until(deadline: tokio::time::Instant) -> i64 {
    deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs() as i64
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

