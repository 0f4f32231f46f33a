//! One step as a host process: a clean environment (no Kiln secrets leak into user code), its own
//! process group (cancel and timeout kill the whole tree), stdout and stderr handed to the caller
//! as they are written. The local executor pipes them into the build log; the fake kubelet in the
//! tests pipes them into a pod's container log, so Jobs created through the kube executor really
//! run the same way.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Stream;

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment; `PATH` and `LANG` come from the host unless set here.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
}

/// How a process ended.
#[derive(Debug)]
pub enum ProcessEnd {
    Exited(ExitStatus),
    /// The cancel token fired; the process group was killed.
    Cancelled,
    /// The deadline passed; the process group was killed.
    TimedOut,
}

/// What the caller does with an output stream: read it to the end. Returns the last non-empty
/// line, which names the cause when a step fails.
pub type Pipe = Box<dyn Fn(Stream, Box<dyn AsyncRead + Unpin + Send>) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// The end of a process, plus the last line it wrote on stderr and stdout.
#[derive(Debug)]
pub struct Finished {
    pub end: ProcessEnd,
    pub last_stderr: Option<String>,
    pub last_stdout: Option<String>,
}

impl Finished {
    /// The last line that explains a failure: stderr first.
    pub fn cause(&self) -> Option<&str> {
        self.last_stderr.as_deref().or(self.last_stdout.as_deref())
    }
}

/// Runs `spec` to its end, cancellation or deadline. Both pipes are drained before it returns, so
/// every line the process wrote has been handed to `pipe`.
pub async fn run(spec: &ProcessSpec, pipe: &Pipe, cancel: &CancellationToken, deadline: Instant) -> std::io::Result<Finished> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("LANG", "C.UTF-8")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id();
    let out = pipe(Stream::Stdout, Box::new(child.stdout.take().expect("piped stdout")));
    let err = pipe(Stream::Stderr, Box::new(child.stderr.take().expect("piped stderr")));
    let stdout = tokio::spawn(out);
    let stderr = tokio::spawn(err);

    let end = tokio::select! {
        status = child.wait() => ProcessEnd::Exited(status?),
        _ = cancel.cancelled() => ProcessEnd::Cancelled,
        _ = tokio::time::sleep_until(deadline) => ProcessEnd::TimedOut,
    };
    if !matches!(end, ProcessEnd::Exited(_)) {
        kill_group(pgid);
        let _ = child.wait().await;
    }
    // The pipes close when the last process of the group exits (or is killed).
    let last_stderr = stderr.await.ok().flatten();
    let last_stdout = stdout.await.ok().flatten();
    Ok(Finished { end, last_stderr, last_stdout })
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals the process group the step leads.
        unsafe {
            libc::kill(-(pgid as i32), libc::SIGKILL);
        }
    }
}

/// Kubernetes semantics for a container's env: each value may refer to variables defined before
/// it with `$(NAME)`. Returns the env with every value expanded.
pub fn expand_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        let value = crate::plan::expand(v, &out);
        out.push((k.clone(), value));
    }
    out
}
