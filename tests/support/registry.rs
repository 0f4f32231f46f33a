//! A real `docker-registry` (Debian package `docker-registry`, distribution 2.8) on a loopback
//! port with its own temporary storage, killed when dropped.
//!
//! Token auth trusts a [`TokenService`](super::token_service::TokenService) of the test.
//! Basic auth uses an htpasswd file with a bcrypt hash. It comes from `htpasswd -Bbn` when the
//! apt package `apache2-utils` is installed, else from perl's `crypt()` (perl-base, backed by
//! libxcrypt which knows bcrypt `$2b$`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a test registry authenticates.
enum Auth<'a> {
    None,
    Htpasswd(&'a str, &'a str),
    /// Bearer tokens from a token service at `realm`, signed by the key of the certificate `cert`.
    Token { realm: String, cert: PathBuf },
}

pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// An open registry (no auth).
    pub async fn start() -> TestRegistry {
        Self::start_inner(Auth::None).await
    }

    /// A registry that requires HTTP basic auth with `user`/`pass`.
    pub async fn start_with_htpasswd(user: &str, pass: &str) -> TestRegistry {
        crate::support::secrets::register(pass);
        Self::start_inner(Auth::Htpasswd(user, pass)).await
    }

    /// A registry that takes only bearer tokens signed by `tokens` (as Harbor's registry does).
    #[allow(dead_code)]
    pub async fn start_with_token(tokens: &super::token_service::TokenService) -> TestRegistry {
        Self::start_inner(Auth::Token { realm: tokens.realm(), cert: tokens.cert_file.clone() }).await
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's stdout+stderr so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    async fn start_inner(auth: Auth<'_>) -> TestRegistry {
        let mut last_log = String::new();
        // The port is picked free, then handed to the registry; retry if someone took it meanwhile.
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("kiln-registry-")
                .tempdir()
                .expect("tempdir");
            let port = free_port();
            let storage = dir.path().join("storage");
            std::fs::create_dir_all(&storage).expect("storage dir");
            let mut config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-secret\n",
                storage = storage.display()
            );
            match &auth {
                Auth::None => {}
                Auth::Htpasswd(user, pass) => {
                    let htpasswd = dir.path().join("htpasswd");
                    std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt_hash(pass)))
                        .expect("htpasswd");
                    config.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                        htpasswd.display()
                    ));
                }
                Auth::Token { realm, cert } => config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    super::token_service::SERVICE,
                    super::token_service::ISSUER,
                    cert.display()
                )),
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("config.yml");
            let child = spawn_registry(dir.path());
            let mut registry = TestRegistry { child, port, dir };
            if registry.wait_ready(Duration::from_secs(30)).await {
                return registry;
            }
            last_log = registry.log();
        }
        panic!("docker-registry did not start; last log:\n{last_log}");
    }

    /// Kills the registry process (as a crash would: no graceful shutdown). Storage is kept.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same port and storage, after [`TestRegistry::kill`].
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_registry(self.dir.path());
        assert!(
            self.wait_ready(Duration::from_secs(30)).await,
            "docker-registry did not restart; log:\n{}",
            self.log()
        );
    }

    /// CPU time the registry process has used so far; see `serve_process::cpu_time_of`.
    #[allow(dead_code)]
    pub fn cpu_time(&self) -> Duration {
        super::serve_process::cpu_time_of(self.child.id()).unwrap_or_default()
    }

    /// Polls `GET /v2/` until it answers 200 or 401, the process dies, or the deadline passes.
    async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(10);
        while Instant::now() < deadline {
            if let Ok(Some(_status)) = self.child.try_wait() {
                return false;
            }
            if let Some(status) = http_status(&self.host(), "/v2/").await {
                if status == 200 || status == 401 {
                    return true;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker-registry serve DIR/config.yml`, logging to DIR/registry.log (appended, across restarts).
fn spawn_registry(dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .expect("log file");
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawn docker-registry (apt package docker-registry)")
}

/// A loopback port nobody listens on (at the moment of the call).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("addr")
        .port()
}

/// The status code of a plain HTTP/1.0 GET, or None if nothing answered.
async fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host))
            .await
            .ok()?
            .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A bcrypt hash of `pass` for the registry's htpasswd file.
fn bcrypt_hash(pass: &str) -> String {
    // apt package apache2-utils provides htpasswd.
    if let Ok(out) = Command::new("htpasswd").args(["-nbB", "u", pass]).output() {
        if out.status.success() {
            let line = String::from_utf8_lossy(&out.stdout);
            if let Some((_, hash)) = line.trim().split_once(':') {
                return hash.to_string();
            }
        }
    }
    // Password passed in the environment, not on the command line.
    let out = Command::new("perl")
        .args([
            "-e",
            r#"print crypt($ENV{KILN_PW}, '$2b$05$kilntestsaltkilntests.')"#,
        ])
        .env("KILN_PW", pass)
        .output()
        .expect("perl (for a bcrypt hash)");
    let hash = String::from_utf8(out.stdout).expect("utf-8 hash");
    assert!(
        hash.starts_with("$2b$"),
        "libxcrypt did not produce a bcrypt hash: {hash:?}"
    );
    hash
}
