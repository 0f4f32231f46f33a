//! `kiln serve` as its own process, so a test can SIGKILL it and start it again on the same data.

use std::path::Path;
use std::time::Duration;

pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
}

impl ServeProcess {
    pub fn start(config_file: &Path, port: u16) -> ServeProcess {
        Self::start_with_env(config_file, port, &[])
    }

    /// With extra environment (say `KUBECONFIG` pointing at the fake API server).
    pub fn start_with_env(config_file: &Path, port: u16, env: &[(&str, &str)]) -> ServeProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--config"])
            .arg(config_file)
            .env("KILN_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ServeProcess { child, url: format!("http://127.0.0.1:{port}") }
    }

    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/readyz", self.url)).await.is_ok_and(|r| r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "kiln serve did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the process is gone");
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS").trim().trim_end_matches("kB").trim();
        kb.parse::<u64>().expect("VmRSS in kB") * 1024
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
