//! `kiln serve` as its own process, so a test can SIGKILL it and start it again on the same data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Writes `DIR/kiln.toml` for `kiln serve`: `admin_token`, the store under `DIR/data` (or in
/// that data dir's PostgreSQL database when the suite runs on PostgreSQL), and `kiln_binary`
/// for the steps, then `rest` — whose first lines, before any `[table]`, still belong to
/// `[executor]`. Returns the file's path.
pub fn write_config(dir: &Path, admin_token: &str, kiln_binary: &Path, rest: &str) -> PathBuf {
    let config_file = dir.join("kiln.toml");
    let data_dir = dir.join("data");
    let url = crate::support::postgres::database_for(&data_dir).map(|url| format!("url = \"{url}\"\n")).unwrap_or_default();
    let head = format!(
        "[server]\nadmin_token = \"{admin_token}\"\n[store]\ndata_dir = \"{}\"\n{url}[executor]\nkiln_binary = \"{}\"\n",
        data_dir.display(),
        kiln_binary.display(),
    );
    std::fs::write(&config_file, head + rest).expect("write kiln.toml");
    config_file
}

pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
    /// Where the process's stdout and stderr go: scanned for the tests' secrets when it ends.
    output: PathBuf,
    scanned: bool,
}

impl ServeProcess {
    pub fn start(config_file: &Path, port: u16) -> ServeProcess {
        Self::start_with_env(config_file, port, &[])
    }

    /// With extra environment (say `KUBECONFIG` pointing at the fake API server).
    pub fn start_with_env(config_file: &Path, port: u16, env: &[(&str, &str)]) -> ServeProcess {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let output = config_file
            .parent()
            .expect("the config file is in a directory")
            .join(format!("kiln-serve-{port}-{}.log", STARTED.fetch_add(1, Ordering::SeqCst)));
        let out = std::fs::File::create(&output).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--config"])
            .arg(config_file)
            .env("KILN_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        ServeProcess { child, url: format!("http://127.0.0.1:{port}"), output, scanned: false }
    }

    /// Hands what the process printed to the suite's secret scan (once).
    fn scan_output(&mut self) {
        if !std::mem::replace(&mut self.scanned, true) {
            let printed = std::fs::read_to_string(&self.output).unwrap_or_default();
            crate::support::secrets::capture("kiln serve (own process)", &printed);
        }
    }

    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/readyz", self.url)).await.is_ok_and(|r| r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "kiln serve did not become ready; it printed:\n{}", self.output_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `METHOD path` with `token` as the bearer and `body` as JSON: the status and the answer
    /// (its JSON, or its text as a JSON string when it is not JSON).
    pub async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<serde_json::Value>) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let res = request.send().await.expect("kiln serve answers");
        let status = res.status();
        let text = res.text().await.expect("an answer body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Creates tenant `name` as the admin (`admin_token`); returns the tenant's token.
    pub async fn tenant(&self, admin_token: &str, name: &str) -> String {
        let (status, answer) = self.call(reqwest::Method::POST, "/api/v1/tenants", admin_token, Some(serde_json::json!({"name": name}))).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{answer}");
        answer["token"].as_str().expect("a tenant token").to_string()
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the process is gone");
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS").trim().trim_end_matches("kB").trim();
        kb.parse::<u64>().expect("VmRSS in kB") * 1024
    }

    /// CPU time the process has used so far; see [`cpu_time_of`].
    #[allow(dead_code)]
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id()).expect("the process is gone")
    }

    /// SIGTERM, as Kubernetes stops a pod; waits (at most `limit`) for the process to exit and
    /// returns how it exited.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM {}", self.child.id());
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "kiln serve still runs {limit:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.scan_output();
        status
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The last lines the process printed (what explains a failure), at most 4 KiB.
    pub fn output_tail(&self) -> String {
        let printed = self.output();
        let mut from = printed.len().saturating_sub(4096);
        while !printed.is_char_boundary(from) {
            from += 1;
        }
        printed[from..].to_string()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.scan_output();
    }
}

/// CPU time all of process `pid`'s threads have used so far, from each thread's
/// `/proc/<pid>/task/<tid>/schedstat` (nanoseconds, unlike `stat`'s 10 ms ticks, which are
/// coarser than a 50 ms burst). Threads that ended are not counted; None once the process is gone.
/// Benchmarks use it to show how much of a run a server's own work accounts for.
#[allow(dead_code)]
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(Duration::from_nanos(ns))
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.scan_output();
        if !std::thread::panicking() {
            crate::support::secrets::assert_no_leaks();
        }
    }
}
