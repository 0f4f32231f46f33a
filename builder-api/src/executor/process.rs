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
    /// How much nicer than Kiln the process (and all it starts) runs, 0 to 19. Build steps on
    /// the host run niced so that a compile filling every core does not starve `kiln serve`:
    /// webhooks, the API and log followers keep their latency while builds run.
    pub nice: i32,
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
    let mut child = if spec.nice > 0 { niced::spawn(cmd, spec.nice).await? } else { cmd.spawn()? };
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

/// Starting processes below Kiln's priority. On Linux the nice value belongs to a thread, and a
/// child takes the value of the thread that spawned it. So steps are spawned from a thread of
/// their own that runs at their niceness: the child is niced from its first instruction, and it
/// is still started by posix_spawn. A `pre_exec` hook calling nice(2) would do the same, but it
/// makes std fork the whole server instead: copying its page tables and then copy-on-write
/// faults in every worker thread until the child execs, which measurably slowed the webhook
/// intake while builds started.
mod niced {
    use std::collections::HashMap;
    use std::sync::{mpsc, Mutex, OnceLock};

    use tokio::process::{Child, Command};
    use tokio::sync::oneshot;

    type Request = (Command, tokio::runtime::Handle, oneshot::Sender<std::io::Result<Child>>);

    /// One spawner thread per niceness, started on first use and kept for the process's life.
    static SPAWNERS: OnceLock<Mutex<HashMap<i32, mpsc::Sender<Request>>>> = OnceLock::new();

    pub async fn spawn(cmd: Command, nice: i32) -> std::io::Result<Child> {
        let spawner = {
            let mut spawners = SPAWNERS.get_or_init(Default::default).lock().unwrap();
            match spawners.get(&nice) {
                Some(tx) => tx.clone(),
                None => {
                    let tx = start(nice)?;
                    spawners.insert(nice, tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        // The child registers with the runtime of the caller (tests run many runtimes).
        spawner
            .send((cmd, tokio::runtime::Handle::current(), reply))
            .map_err(|_| std::io::Error::other("the step spawner thread has ended"))?;
        answer.await.map_err(|_| std::io::Error::other("the step spawner thread has ended"))?
    }

    fn start(nice: i32) -> std::io::Result<mpsc::Sender<Request>> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new().name(format!("kiln-spawn-nice{nice}")).spawn(move || {
            // SAFETY: nice(2) changes only this thread's priority (Linux). A positive increment
            // needs no privilege; the kernel caps the result at 19.
            unsafe { libc::nice(nice) };
            for (mut cmd, runtime, reply) in rx {
                let _entered = runtime.enter();
                let _ = reply.send(cmd.spawn());
            }
        })?;
        Ok(tx)
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Runs `sh -c script` with the given niceness; returns what it wrote on stdout.
    async fn sh(script: &str, nice: i32) -> String {
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            workdir: std::env::temp_dir(),
            nice,
        };
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let pipe: Pipe = Box::new(move |stream, mut reader| {
            let sink = sink.clone();
            Box::pin(async move {
                let mut text = String::new();
                reader.read_to_string(&mut text).await.unwrap();
                if stream == Stream::Stdout {
                    sink.lock().unwrap().push_str(&text);
                }
                None
            })
        });
        let far = Instant::now() + std::time::Duration::from_secs(30);
        let finished = run(&spec, &pipe, &CancellationToken::new(), far).await.unwrap();
        assert!(matches!(finished.end, ProcessEnd::Exited(s) if s.success()), "{finished:?}");
        let text = out.lock().unwrap().clone();
        text
    }

    #[tokio::test]
    async fn a_niced_step_and_what_it_forks_run_below_kilns_priority() {
        // SAFETY: getpriority(2) only reads this process's niceness.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        // `nice` with no operand prints the niceness it runs at: a child of the step's shell.
        let niced: i32 = sh("nice", 10).await.trim().parse().unwrap();
        assert_eq!(niced, (own + 10).min(19));
        let unniced: i32 = sh("nice", 0).await.trim().parse().unwrap();
        assert_eq!(unniced, own);
    }
}
