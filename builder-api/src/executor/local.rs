//! The local executor: the steps of a build as host processes ([`super::process`]), in order, in
//! a scratch workspace under the data directory, each step's stdout/stderr captured line by line.

use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;

use super::process::{self, Pipe, ProcessEnd, ProcessSpec};
use super::{BuildJob, Executor, Outcome};
use crate::config::{ApmConfig, RegistryConfig, ToolchainConfig};
use crate::plan::{self, DockerfileBuilder, PlanInput, StepSpec};
use crate::steps::{CloneInfo, ImageResult};
use crate::store::{BuildKind, BuildState, StepState};

pub struct LocalExecutor {
    pub kiln_binary: PathBuf,
    pub data_dir: PathBuf,
    pub keep_workspaces: bool,
    pub toolchains: ToolchainConfig,
    pub registry: RegistryConfig,
    pub dockerfile_builder: DockerfileBuilder,
    pub apm: ApmConfig,
    /// `executor.step_nice`: see [`ProcessSpec::nice`].
    pub step_nice: i32,
}

impl Executor for LocalExecutor {
    fn run(&self, job: BuildJob) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run_build(job))
    }
}

impl LocalExecutor {
    async fn run_build(&self, job: BuildJob) -> Outcome {
        let workspace = self.data_dir.join("workspaces").join(format!("build-{}", job.build.id));
        let cache = self.data_dir.join("cache").join(&job.app.tenant);
        let prepared = async {
            if workspace.exists() {
                tokio::fs::remove_dir_all(&workspace).await?;
            }
            tokio::fs::create_dir_all(workspace.join(".kiln")).await?;
            tokio::fs::create_dir_all(workspace.join("home")).await?;
            tokio::fs::create_dir_all(&cache).await
        }
        .await;
        let outcome = match prepared {
            Ok(()) => self.run_steps(&job, &workspace, &cache).await,
            Err(e) => Outcome::failed(format!("cannot prepare workspace {}: {e}", workspace.display())),
        };
        if !self.keep_workspaces {
            let _ = tokio::fs::remove_dir_all(&workspace).await;
        }
        outcome
    }

    async fn run_steps(&self, job: &BuildJob, workspace: &Path, cache: &Path) -> Outcome {
        let clone = plan::clone_step(&job.app, &job.build);
        if let Some(end) = self.run_step(job, 0, &clone, workspace, cache).await {
            return end;
        }
        if let Err(e) = read_json::<CloneInfo>(&workspace.join(plan::CLONE_INFO_FILE)) {
            return Outcome::failed(format!("clone left no result: {e}"));
        }
        let dockerfile = job.app.settings.dockerfile.as_deref().unwrap_or("Dockerfile");
        let kind = match plan::resolve_kind(job.app.kind, dockerfile, &workspace.join("src")).and_then(|k| plan::check_runnable(k, &job.app).map(|()| k)) {
            Ok(kind) => kind,
            Err(reason) => {
                job.log.system("plan", format!("[kiln] {reason}")).await;
                return Outcome::failed(reason.to_string());
            }
        };
        job.log.system("plan", format!("[kiln] building {} as {}", &job.build.commit, kind.as_str())).await;
        // A fixed kind was recorded when the build started; only a resolved `auto` is written.
        if job.app.kind == BuildKind::Auto {
            if let Err(e) = job.store.set_build_kind(job.build.id, kind.as_str()).await {
                return Outcome::failed(format!("store: {e}"));
            }
        }
        let apm = match super::resolve_apm(&self.apm, &job.app) {
            Ok(apm) => apm,
            Err(reason) => {
                job.log.system("plan", format!("[kiln] {reason}")).await;
                return Outcome::failed(reason.to_string());
            }
        };
        let input = PlanInput {
            app: &job.app,
            build: &job.build,
            kind,
            toolchains: &self.toolchains,
            registry: &self.registry,
            dockerfile_builder: self.dockerfile_builder,
            apm,
        };
        for (i, step) in plan::steps_after_clone(&input).iter().enumerate() {
            if let Some(end) = self.run_step(job, i as i64 + 1, step, workspace, cache).await {
                return end;
            }
        }
        let result_file = plan::expand(plan::RESULT_FILE, &[("WORKSPACE".into(), workspace.display().to_string())]);
        let result: ImageResult = match read_json(Path::new(&result_file)) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(format!("the image step reported no digest: {e}")),
        };
        if let Err(e) = super::record_image(&job.store, job.build.id, &result).await {
            return Outcome::failed(format!("store: {e}"));
        }
        job.log.system("image", format!("[kiln] pushed {}", result.image)).await;
        Outcome::succeeded()
    }

    /// Runs one step. None: it succeeded and the build goes on; Some: how the build ends.
    async fn run_step(&self, job: &BuildJob, position: i64, step: &StepSpec, workspace: &Path, cache: &Path) -> Option<Outcome> {
        let name = step.name.as_str();
        let store = &job.store;
        if let Err(e) = store.start_step(job.build.id, position, name).await {
            return Some(Outcome::failed(format!("store: {e}")));
        }
        job.log.step_started(name).await;
        let started = std::time::Instant::now();

        // The same env a container of the build's Job gets: WORKSPACE and CACHE first, then the
        // step's own values, which may refer to them as $(WORKSPACE) and $(CACHE).
        let mut env: Vec<(String, String)> = vec![
            ("WORKSPACE".into(), workspace.display().to_string()),
            ("CACHE".into(), cache.display().to_string()),
            ("HOME".into(), workspace.join("home").display().to_string()),
        ];
        env.extend(step.env.iter().cloned());
        env.extend(step.secret_env.iter().cloned());
        let env = process::expand_env(&env);
        let argv: Vec<String> = step.argv.iter().map(|a| plan::expand(a, &env)).collect();
        let workdir = step.workdir.as_deref().map(|w| PathBuf::from(plan::expand(w, &env))).unwrap_or_else(|| workspace.into());
        let program: PathBuf = if argv[0] == "kiln" { self.kiln_binary.clone() } else { PathBuf::from(&argv[0]) };
        let spec = ProcessSpec { program: program.clone(), args: argv[1..].to_vec(), env, workdir, nice: self.step_nice };

        let sink = job.log.clone();
        let step_name = name.to_string();
        let pipe: Pipe = Box::new(move |stream, reader| {
            let (sink, step) = (sink.clone(), step_name.clone());
            Box::pin(async move { sink.pipe(&step, stream, reader).await })
        });
        let finished = process::run(&spec, &pipe, &job.cancel, job.deadline).await;
        drop(pipe);
        let secs = started.elapsed().as_secs_f64();

        let (step_state, outcome, exit_code) = match finished {
            Err(e) => {
                let reason = format!("step {name}: cannot start {}: {e}", program.display());
                job.log.system(name, format!("[kiln] {reason}")).await;
                (StepState::Failed, Some(Outcome::failed(reason)), None)
            }
            Ok(f) => match f.end {
                ProcessEnd::Exited(status) if status.success() => (StepState::Succeeded, None, Some(0)),
                ProcessEnd::Exited(status) => {
                    let how = match status.code() {
                        Some(code) => format!("exit code {code}"),
                        None => format!("killed by signal {}", std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
                    };
                    let reason = super::step_failure(name, &how, f.cause().map(|l| job.masker.mask(l)));
                    (StepState::Failed, Some(Outcome::failed(reason)), status.code())
                }
                ProcessEnd::Cancelled => (
                    StepState::Failed,
                    Some(Outcome { state: BuildState::Cancelled, reason: Some(format!("cancelled during step {name}")) }),
                    None,
                ),
                ProcessEnd::TimedOut => (StepState::Failed, Some(Outcome::timed_out(job.timeout, name)), None),
            },
        };
        let (state, reason) = match &outcome {
            None => ("Succeeded", None),
            Some(o) => (o.state.as_str(), o.reason.as_deref()),
        };
        job.log.step_finished(name, state, secs, exit_code, reason).await;
        // Here, where the executor knows the step's end, rather than from the store at scrape time.
        job.metrics.step_finished(name, secs);
        let _ = store.finish_step(job.build.id, name, step_state, exit_code).await;
        outcome
    }
}

/// Why a result a step leaves in the workspace (the clone's, the image's) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultFileError {
    #[error("{}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", .path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ResultFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResultFileError::Read { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| ResultFileError::Parse { path: path.into(), source })
}
