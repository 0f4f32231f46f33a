//! The kube executor: one batch/v1 Job per build in the tenant's namespace.
//!
//! - [`render`]: the plan poured into the operator's template (`job-templates/`).
//! - [`tracker`]: one watcher on Jobs and one on Pods for all builds.
//! - [`pod_logs`]: each container's log followed in step order, reopened when cut.
//!
//! A build's life costs two Kubernetes writes: the create (deterministic name; a 409 means the Job
//! exists and is adopted) and the delete with background propagation once the log is stored.
//! Everything else is read from the shared watches and the log subresource. On start Kiln adopts
//! the Jobs of builds still Running, fails those whose Job vanished, and deletes Jobs of builds
//! already final.

pub mod pod_logs;
pub mod render;
pub mod tracker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use self::pod_logs::{LogCursor, PassEnd};
use self::render::{RenderInput, Templates, TenantPlacement};
use self::tracker::{BuildView, Tracker};
use super::{BuildJob, Executor, Outcome};
use crate::config::{RegistryConfig, ToolchainConfig};
use crate::plan::{self, DockerfileBuilder, PlanInput, ResolvedKind};
use crate::steps::ImageResult;
use crate::store::{BuildKind, BuildState, StepState, Store};

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
        let tracker = Tracker::start(client.clone());
        KubeExecutor { client, templates, tracker, settings, toolchains, registry, git_secrets: Mutex::default() }
    }

    async fn run_build(&self, job: BuildJob) -> Outcome {
        let id = job.build.id;
        let outcome = self.drive(&job).await;
        self.tracker.forget(id);
        outcome
    }

    async fn drive(&self, job: &BuildJob) -> Outcome {
        let build = &job.build;
        let placement = TenantPlacement::of(&self.settings.kube, &job.tenant);
        let ns = placement.namespace.clone();
        let name = render::job_name(build.id);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let mut view = self.tracker.subscribe(build.id);

        let kind = match self.resolve_kind(job).await {
            Ok(kind) => kind,
            Err(reason) => return Outcome::failed(reason),
        };
        let apm = match super::resolve_apm(&self.settings.apm, &job.app) {
            Ok(apm) => apm,
            Err(reason) => return Outcome::failed(reason),
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
            if view.borrow().job.is_none() {
                return Outcome::failed(format!("the build's Job {ns}/{name} vanished while kiln was not running"));
            }
            job.log.system("kiln", format!("[kiln] kiln restarted; following Job {ns}/{name} again")).await;
        } else {
            // A fixed kind was recorded when the build started; only a resolved `auto` is written.
            if job.app.kind == BuildKind::Auto {
                if let Err(e) = job.store.set_build_kind(build.id, kind.as_str()).await {
                    return Outcome::failed(format!("store: {e}"));
                }
            }
            let git_secret = match &job.app.git_token {
                Some(token) => match self.ensure_git_secret(&ns, &job.app.name, token).await {
                    Ok(name) => Some(name),
                    Err(reason) => return Outcome::failed(reason),
                },
                None => None,
            };
            let rendered = render::render(
                self.templates.for_kind(kind),
                &RenderInput {
                    build_id: build.id,
                    tenant: &job.app.tenant,
                    app: &job.app.name,
                    placement: &placement,
                    steps: &steps,
                    active_deadline_secs: secs_until(job.deadline).max(1),
                    git_secret: git_secret.as_deref(),
                },
            );
            let rendered = match rendered {
                Ok(j) => j,
                Err(reason) => return Outcome::failed(format!("rendering the {} Job: {reason}", kind.as_str())),
            };
            match jobs.create(&PostParams::default(), &rendered).await {
                Ok(_) => job.log.system("kiln", format!("[kiln] created Job {ns}/{name}")).await,
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    job.log.system("kiln", format!("[kiln] Job {ns}/{name} exists; following it")).await
                }
                Err(e) => return Outcome::failed(format!("creating Job {ns}/{name}: {}", api_message(&e))),
            }
        }

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let outcome = self.follow_steps(job, &steps, &pods, &mut view).await;
        let outcome = match outcome {
            Ok(()) => {
                let seen = view.borrow().clone();
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

    /// `auto` needs the commit's files to pick a template: a shallow fetch in Kiln. Explicit
    /// kinds pick their template directly (the Job is created before the commit is fetched).
    async fn resolve_kind(&self, job: &BuildJob) -> Result<ResolvedKind, String> {
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
                let probe = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(&opts.dest);
                    let result = crate::steps::clone::clone_commit(&opts)
                        .map_err(|e| format!("clone failed: {e:#}"))
                        .and_then(|_| plan::resolve_kind(BuildKind::Auto, &dockerfile, &opts.dest));
                    let _ = std::fs::remove_dir_all(&opts.dest);
                    result
                })
                .await
                .map_err(|e| format!("probe task: {e}"))?;
                let kind = probe.map_err(|e| job.masker.mask(e))?;
                job.log.system("plan", format!("[kiln] building {} as {}", job.build.commit, kind.as_str())).await;
                Ok(kind)
            }
        }
    }

    /// The app's git token as a Secret in the tenant namespace (the clone container reads it from
    /// there). Written when the token changes, not per build.
    async fn ensure_git_secret(&self, ns: &str, app: &str, token: &str) -> Result<String, String> {
        let name = format!("kiln-git-{app}");
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let key = (ns.to_string(), app.to_string());
        if self.git_secrets.lock().unwrap().get(&key) == Some(&hash) {
            return Ok(name);
        }
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(render::MANAGED_BY.0.to_string(), render::MANAGED_BY.1.to_string())].into()),
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
            .map_err(|e| format!("storing the git token Secret {ns}/{name}: {}", api_message(&e)))?;
        self.git_secrets.lock().unwrap().insert(key, hash);
        Ok(name)
    }

    /// Follows the containers in order: waits for each to start, streams its log, records how it
    /// ended. Err is how the build ends early.
    async fn follow_steps(
        &self,
        job: &BuildJob,
        steps: &[plan::StepSpec],
        pods: &Api<Pod>,
        view: &mut watch::Receiver<BuildView>,
    ) -> Result<(), Outcome> {
        let deadline = job.deadline + DEADLINE_GRACE;
        let recorded = job.store.steps(job.build.id).await.map_err(|e| Outcome::failed(format!("store: {e}")))?;
        for (position, step) in steps.iter().enumerate() {
            let name = step.name.as_str();
            let before = recorded.iter().find(|s| s.name == name);
            // Resumed after a restart: a step that already succeeded is done.
            if before.is_some_and(|s| s.state == "Succeeded") {
                continue;
            }
            // Wait until the container runs (or has already ended).
            let pod_name = loop {
                {
                    let v = view.borrow_and_update();
                    if let Some(end) = pod_or_job_failure(&v, name) {
                        return Err(end);
                    }
                    if let Some(pod) = &v.pod {
                        if let Some(status) = container_status(pod, name) {
                            if status.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some()) {
                                break pod.metadata.name.clone().unwrap_or_default();
                            }
                        }
                    }
                }
                self.wait_change(job, view, deadline, name).await?;
            };
            // Step durations come from Kiln's clock (the watch reports a container's start and end
            // within milliseconds); the container's own timestamps have whole-second precision.
            let started_ms = before.and_then(|s| s.started_at).unwrap_or_else(crate::store::now_ms);
            if before.is_none() {
                let _ = job.store.start_step(job.build.id, position as i64, name).await;
                job.log.step_started(name).await;
            }
            // Only a resumed build has stored lines of this container to skip.
            let skip = if job.resumed { job.store.output_line_count(job.build.id, name).await.unwrap_or(0) as u64 } else { 0 };
            let mut cursor = LogCursor::skipping(skip);
            self.stream_container(job, pods, &pod_name, name, &mut cursor, view, deadline).await?;

            // The container has ended: how?
            let terminated = {
                let v = view.borrow();
                v.pod.as_ref().and_then(|p| container_status(p, name)).and_then(|s| s.state.clone()).and_then(|s| s.terminated)
            };
            let Some(t) = terminated else {
                return Err(view_ended_reason(&view.borrow(), name));
            };
            let secs = (crate::store::now_ms() - started_ms).max(0) as f64 / 1000.0;
            if t.exit_code == 0 {
                job.log.step_finished(name, "Succeeded", secs, Some(0), None).await;
                let _ = job.store.finish_step(job.build.id, name, StepState::Succeeded, Some(0)).await;
                continue;
            }
            let reason = match t.reason.as_deref() {
                Some("OOMKilled") => format!("{name} was OOMKilled (exit code {}): the container exceeded its memory limit", t.exit_code),
                _ => super::local::step_failure(
                    name,
                    &format!("exit code {}", t.exit_code),
                    cursor.last_line.clone().map(|l| job.masker.mask(l)),
                ),
            };
            job.log.step_finished(name, "Failed", secs, Some(t.exit_code), Some(&reason)).await;
            let _ = job.store.finish_step(job.build.id, name, StepState::Failed, Some(t.exit_code)).await;
            return Err(Outcome::failed(reason));
        }
        Ok(())
    }

    /// Streams one container's log until the container has ended and every line is read.
    #[allow(clippy::too_many_arguments)]
    async fn stream_container(
        &self,
        job: &BuildJob,
        pods: &Api<Pod>,
        pod: &str,
        container: &str,
        cursor: &mut LogCursor,
        view: &mut watch::Receiver<BuildView>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Outcome> {
        loop {
            let ended_before = { container_ended(&view.borrow(), container) };
            let pass = tokio::select! {
                end = pod_logs::pass(pods, pod, container, !ended_before, cursor, &job.log) => end,
                _ = job.cancel.cancelled() => {
                    // Flush what the container wrote so far, then stop the Job.
                    let _ = pod_logs::pass(pods, pod, container, false, cursor, &job.log).await;
                    return Err(Outcome { state: BuildState::Cancelled, reason: Some(format!("cancelled during step {container}")) });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = pod_logs::pass(pods, pod, container, false, cursor, &job.log).await;
                    return Err(Outcome { state: BuildState::TimedOut, reason: Some(format!("the Job did not finish within its deadline (step {container})")) });
                }
            };
            if ended_before {
                // A whole read after the container ended: nothing more can come.
                return Ok(());
            }
            match pass {
                PassEnd::Ended => {}
                PassEnd::Unavailable(e) => {
                    let v = view.borrow().clone();
                    if v.pod.is_none() || v.job_deleted {
                        return Err(view_ended_reason(&v, container));
                    }
                    tracing::debug!(build = job.build.id, "log of {pod}/{container}: {e}");
                }
            }
            // Ended or cut: if the container is still running, reopen after a pause; once the
            // watch shows it ended, one last read picks up anything the cut stream missed.
            let ended = container_ended(&view.borrow(), container);
            if !ended {
                let changed = tokio::time::timeout(pod_logs::REOPEN_DELAY, view.changed()).await;
                if let Ok(Err(_)) = changed {
                    return Err(Outcome::failed("kiln's Kubernetes watch stopped"));
                }
                let failure = pod_or_job_failure(&view.borrow(), container);
                if let Some(end) = failure {
                    let _ = pod_logs::pass(pods, pod, container, false, cursor, &job.log).await;
                    return Err(end);
                }
            }
        }
    }

    async fn wait_change(
        &self,
        job: &BuildJob,
        view: &mut watch::Receiver<BuildView>,
        deadline: tokio::time::Instant,
        step: &str,
    ) -> Result<(), Outcome> {
        tokio::select! {
            changed = view.changed() => changed.map_err(|_| Outcome::failed("kiln's Kubernetes watch stopped")),
            _ = job.cancel.cancelled() => Err(Outcome { state: BuildState::Cancelled, reason: Some(format!("cancelled before step {step} started")) }),
            _ = tokio::time::sleep_until(deadline) => Err(Outcome { state: BuildState::TimedOut, reason: Some(format!("the Job did not finish within its deadline (waiting for step {step})")) }),
        }
    }

    /// The image container's termination message holds `{"image","digest"}`.
    async fn record_image(&self, job: &BuildJob, view: &BuildView) -> Outcome {
        let message = view
            .pod
            .as_ref()
            .and_then(|p| container_status(p, "image"))
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone());
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

    /// At start: Jobs whose build is no longer Running (or unknown) are deleted.
    async fn delete_jobs_of_final_builds(&self, store: &Store) -> anyhow::Result<()> {
        let jobs: Api<Job> = Api::all(self.client.clone());
        let selector = format!("{}={}", render::MANAGED_BY.0, render::MANAGED_BY.1);
        let list = jobs.list(&ListParams::default().labels(&selector)).await?;
        for j in list {
            let Some(id) = j.metadata.labels.as_ref().and_then(|l| l.get(render::LABEL_BUILD)).and_then(|v| v.parse::<i64>().ok()) else {
                continue;
            };
            let running = matches!(store.build(id).await?, Some(b) if b.state == BuildState::Running || b.state == BuildState::Queued);
            if !running {
                let (ns, name) = (j.metadata.namespace.unwrap_or_default(), j.metadata.name.unwrap_or_default());
                let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => tracing::info!("deleted Job {ns}/{name}: its build {id} is final"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => tracing::warn!("deleting Job {ns}/{name}: {e}"),
                }
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

fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()).find(|c| c.name == name)
}

fn container_ended(v: &BuildView, name: &str) -> bool {
    v.pod
        .as_ref()
        .and_then(|p| container_status(p, name))
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s: &ContainerState| s.terminated.is_some())
}

/// Waiting reasons that do not resolve by themselves for a build. (`ErrImagePull` is left out:
/// the kubelet retries once and reports `ImagePullBackOff` when that fails too.)
const STUCK_REASONS: [&str; 5] =
    ["ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"];

/// A reason the build cannot go on, from the Job's conditions, the Pod's phase, or a container
/// stuck waiting.
fn pod_or_job_failure(v: &BuildView, step: &str) -> Option<Outcome> {
    if let Some(job) = &v.job {
        for c in job.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
            if c.type_ == "Failed" && c.status == "True" {
                let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
                // BackoffLimitExceeded follows a failed container, which names the cause better.
                if reason != "BackoffLimitExceeded" {
                    let msg = c.message.clone().unwrap_or_default();
                    return Some(Outcome::failed(format!("{reason}: the Job failed during step {step}: {msg}")));
                }
            }
        }
    }
    if let Some(pod) = &v.pod {
        let status = pod.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
            if let Some(reason) = status.and_then(|s| s.reason.clone()) {
                let msg = status.and_then(|s| s.message.clone()).unwrap_or_default();
                return Some(Outcome::failed(format!("{reason}: the pod failed during step {step}: {msg}")));
            }
        }
        let statuses = status
            .into_iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
        for cs in statuses {
            if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                if let Some(reason) = waiting.reason.as_deref().filter(|r| STUCK_REASONS.contains(r)) {
                    let msg = waiting.message.clone().unwrap_or_default();
                    return Some(Outcome::failed(format!("{reason}: step {} cannot start: {msg}", cs.name)));
                }
            }
        }
    }
    if v.job_deleted {
        return Some(Outcome::failed(format!("the Job was deleted during step {step}")));
    }
    None
}

/// Why following a container stopped when it did not end by itself.
fn view_ended_reason(v: &BuildView, step: &str) -> Outcome {
    pod_or_job_failure(v, step).unwrap_or_else(|| Outcome::failed(format!("the pod vanished during step {step}")))
}
