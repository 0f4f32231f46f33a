//! The local executor: the steps of a build as host processes, in order, in a scratch workspace
//! under the data directory. Each step gets a clean environment (no Kiln secrets leak into user
//! code), its own process group (cancel and timeout kill the whole tree), and its stdout/stderr
//! captured line by line.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::future::BoxFuture;
use tokio::process::Command;

use super::{BuildJob, Executor, Outcome};
use crate::config::{RegistryConfig, ToolchainConfig};
use crate::plan::{self, PlanInput, StepSpec};
use crate::steps::{CloneInfo, ImageResult};
use crate::store::{BuildState, StepState, Stream};

pub struct LocalExecutor {
    pub kiln_binary: PathBuf,
    pub data_dir: PathBuf,
    pub keep_workspaces: bool,
    pub toolchains: ToolchainConfig,
    pub registry: RegistryConfig,
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
        if let Some(end) = self.run_step(job, 0, &clone, workspace).await {
            return end;
        }
        let info: CloneInfo = match read_json(&workspace.join(plan::CLONE_INFO_FILE)) {
            Ok(info) => info,
            Err(e) => return Outcome::failed(format!("clone left no result: {e}")),
        };
        let dockerfile = job.app.settings.dockerfile.as_deref().unwrap_or("Dockerfile");
        let kind = match plan::resolve_kind(job.app.kind, dockerfile, &workspace.join("src")) {
            Ok(kind) => kind,
            Err(reason) => {
                job.log.system("plan", format!("[kiln] {reason}")).await;
                return Outcome::failed(reason);
            }
        };
        job.log.system("plan", format!("[kiln] building {} as {}", &job.build.commit, kind.as_str())).await;
        if let Err(e) = job.store.set_build_kind(job.build.id, kind.as_str()).await {
            return Outcome::failed(format!("store: {e}"));
        }
        let input = PlanInput {
            app: &job.app,
            build: &job.build,
            kind,
            commit_time: info.commit_time,
            toolchains: &self.toolchains,
            registry: &self.registry,
            cache_dir: cache.display().to_string(),
        };
        for (i, step) in plan::steps_after_clone(&input).iter().enumerate() {
            if let Some(end) = self.run_step(job, i as i64 + 1, step, workspace).await {
                return end;
            }
        }
        let result_file = plan::expand(plan::RESULT_FILE, &[("WORKSPACE".into(), workspace.display().to_string())]);
        let result: ImageResult = match read_json(Path::new(&result_file)) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(format!("the image step reported no digest: {e}")),
        };
        if let Err(e) = job.store.set_build_image(job.build.id, &result.image, &result.digest).await {
            return Outcome::failed(format!("store: {e}"));
        }
        job.log.system("image", format!("[kiln] pushed {}", result.image)).await;
        Outcome::succeeded()
    }

    /// Runs one step. None: it succeeded and the build goes on; Some: how the build ends.
    async fn run_step(&self, job: &BuildJob, position: i64, step: &StepSpec, workspace: &Path) -> Option<Outcome> {
        let name = step.name.as_str();
        let store = &job.store;
        if let Err(e) = store.start_step(job.build.id, position, name).await {
            return Some(Outcome::failed(format!("store: {e}")));
        }
        job.log.system(name, format!("── step {name}")).await;
        let started = std::time::Instant::now();

        let mut env: Vec<(String, String)> = vec![("WORKSPACE".into(), workspace.display().to_string())];
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), plan::expand(v, &env_snapshot(workspace)))));
        let argv: Vec<String> = step.argv.iter().map(|a| plan::expand(a, &env)).collect();
        let workdir = step.workdir.as_deref().map(|w| PathBuf::from(plan::expand(w, &env))).unwrap_or_else(|| workspace.into());
        let program: PathBuf = if argv[0] == "kiln" { self.kiln_binary.clone() } else { PathBuf::from(&argv[0]) };

        let mut cmd = Command::new(&program);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("LANG", "C.UTF-8")
            .env("HOME", workspace.join("home"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(step.secret_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("step {name}: cannot start {}: {e}", program.display());
                job.log.system(name, format!("[kiln] {reason}")).await;
                let _ = store.finish_step(job.build.id, name, StepState::Failed, None).await;
                return Some(Outcome::failed(reason));
            }
        };
        let pgid = child.id();
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (sink_out, sink_err) = (job.log.clone(), job.log.clone());
        let (step_out, step_err) = (name.to_string(), name.to_string());
        let stdout = tokio::spawn(async move { sink_out.pipe(&step_out, Stream::Stdout, out).await });
        let stderr = tokio::spawn(async move { sink_err.pipe(&step_err, Stream::Stderr, err).await });

        let ended = tokio::select! {
            status = child.wait() => Ok(status),
            _ = job.cancel.cancelled() => Err(BuildState::Cancelled),
            _ = tokio::time::sleep_until(job.deadline) => Err(BuildState::TimedOut),
        };
        if ended.is_err() {
            kill_group(pgid);
            let _ = child.wait().await;
        }
        // The pipes close when the last process of the step's group exits.
        let last_err = stderr.await.ok().flatten();
        let last_out = stdout.await.ok().flatten();
        let secs = started.elapsed().as_secs_f64();

        let (step_state, outcome, exit_code) = match ended {
            Ok(Ok(status)) if status.success() => (StepState::Succeeded, None, Some(0)),
            Ok(Ok(status)) => {
                let cause = last_err.or(last_out).map(|l| job.masker.mask(l));
                let how = match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => format!("killed by signal {}", std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
                };
                let reason = match cause {
                    Some(cause) => format!("{name} failed ({how}): {}", cause.trim_start_matches("error: ")),
                    None => format!("{name} failed ({how})"),
                };
                (StepState::Failed, Some(Outcome::failed(reason)), status.code())
            }
            Ok(Err(e)) => (StepState::Failed, Some(Outcome::failed(format!("{name}: waiting for the process failed: {e}"))), None),
            Err(BuildState::Cancelled) => {
                (StepState::Failed, Some(Outcome { state: BuildState::Cancelled, reason: Some(format!("cancelled during step {name}")) }), None)
            }
            Err(state) => {
                let reason = format!("build exceeded its time limit during step {name}");
                (StepState::Failed, Some(Outcome { state, reason: Some(reason) }), None)
            }
        };
        let summary = match &outcome {
            None => format!("── step {name} succeeded in {secs:.1}s"),
            Some(o) => format!("── step {name} ended {} after {secs:.1}s: {}", o.state.as_str(), o.reason.as_deref().unwrap_or("")),
        };
        job.log.system(name, summary).await;
        let _ = store.finish_step(job.build.id, name, step_state, exit_code).await;
        outcome
    }
}

/// Step env values may refer to `$(WORKSPACE)` only.
fn env_snapshot(workspace: &Path) -> Vec<(String, String)> {
    vec![("WORKSPACE".into(), workspace.display().to_string())]
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals the process group the step leads.
        unsafe {
            libc::kill(-(pgid as i32), libc::SIGKILL);
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
