//! Executors run a build's plan. `local` runs the steps as host processes (the embedded default,
//! and what the fake kubelet reuses in tests); `kube` renders them into one Job.

pub mod kube;
pub mod local;
pub mod process;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logs::capture::{LogSink, Masker};
use crate::store::{App, Build, BuildState, Store, Tenant};

/// Everything an executor needs to run one build.
pub struct BuildJob {
    pub build: Build,
    pub app: App,
    /// The app's tenant with its settings (namespace, Secrets, resources) as the build started.
    pub tenant: Tenant,
    pub store: Store,
    pub log: LogSink,
    pub masker: Arc<Masker>,
    /// Cancelled by `POST /builds/{id}/cancel` (and by a superseding push, later).
    pub cancel: CancellationToken,
    /// Past this the build ends TimedOut: the tenant's timeout from the start
    /// (`ExecutorConfig::build_timeout_for`).
    pub deadline: Instant,
    /// The tenant's timeout that `deadline` was set from, for the reason a timed-out build gives.
    pub timeout: std::time::Duration,
    /// The build was Running when Kiln last stopped: an executor that adopts running builds
    /// follows what is already there instead of starting it again.
    pub resumed: bool,
    /// Step durations go into `kiln_build_step_duration_seconds` as each step ends.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How a build ended, as the executor saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: BuildState,
    pub reason: Option<String>,
}

impl Outcome {
    pub fn succeeded() -> Outcome {
        Outcome { state: BuildState::Succeeded, reason: None }
    }
    pub fn failed(reason: impl Into<String>) -> Outcome {
        Outcome { state: BuildState::Failed, reason: Some(reason.into()) }
    }
    /// The build ran past its timeout: the one outcome every executor gives for it, however the
    /// cluster reported it.
    pub fn timed_out(timeout: std::time::Duration, step: &str) -> Outcome {
        Outcome { state: BuildState::TimedOut, reason: Some(format!("exceeded its timeout of {} s during step {step}", timeout.as_secs())) }
    }
}

/// A failed step's reason: how it ended, and its most telling line (masked by the caller),
/// without terminal escape codes.
pub fn step_failure(step: &str, how: &str, cause: Option<String>) -> String {
    let cause = cause.map(|c| crate::failure_line::strip_ansi(&c).trim().to_string()).filter(|c| !c.is_empty());
    match cause {
        Some(cause) => format!("{step} failed ({how}): {}", cause.trim_start_matches("error: ")),
        None => format!("{step} failed ({how})"),
    }
}

/// Records what the image step pushed (and, with APM, the agent and the original image; with JVM
/// sizing, the options).
pub async fn record_image(store: &Store, build_id: i64, result: &crate::steps::ImageResult) -> crate::store::Result<()> {
    store.set_build_image(build_id, &result.image, &result.digest).await?;
    if let Some(options) = &result.jvm_options {
        store.set_build_jvm_options(build_id, options).await?;
    }
    if let Some(apm) = &result.apm {
        store.set_build_apm(build_id, &apm.agent, &apm.version, &apm.original_image).await?;
    }
    Ok(())
}

/// Why a build stops before its steps after the clone run; the text is the build's reason.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The agent the app asks for is not configured, or its source cannot be read.
    #[error("cannot apply APM: {0}")]
    Apm(#[from] crate::apm::ApmError),
}

/// The agent the app asks for, resolved before the plan is made.
pub fn resolve_apm<'a>(config: &'a crate::config::ApmConfig, app: &App) -> Result<Option<&'a crate::config::ApmAgent>, SetupError> {
    Ok(crate::apm::for_app(config, app)?)
}

pub trait Executor: Send + Sync + 'static {
    /// Runs the build to its end. Lines go to `job.log`; steps and the image digest to the store.
    fn run(&self, job: BuildJob) -> BoxFuture<'_, Outcome>;

    /// Whether builds left Running by a previous Kiln process can be followed again (their work
    /// outlives Kiln, as a Job does). When false they are marked Failed "interrupted".
    fn adopts_running(&self) -> bool {
        false
    }

    /// Secrets a build of `tenant` can see that only the executor knows, for the log masker:
    /// under `kube`, the password in the tenant's registry Secret (which may differ from every
    /// password in the config). Never fails: a Secret Kiln cannot read is no secret to mask.
    fn build_secrets<'a>(&'a self, _tenant: &'a Tenant) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
    }

    /// At start, before the scheduler runs: clean up what the executor left behind.
    fn reconcile<'a>(&'a self, _store: &'a Store) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
