//! A real git server over HTTP: bare repositories under a temp dir, served by `git http-backend`
//! (CGI) behind an axum router on a free loopback port, optionally behind HTTP Basic auth.
//!
//! Commits are made with the real `git` CLI in a scratch work tree per repository and pushed to the
//! bare repository through the filesystem, so the HTTP side is only ever used to fetch.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::Response,
    Router,
};
use futures_util::TryStreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

/// A running git-over-HTTP server. Dropping it stops serving and removes the repositories.
pub struct GitServer {
    addr: SocketAddr,
    root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    project_root: PathBuf,
    token: Option<String>,
}

impl GitServer {
    /// Serve without authentication.
    pub async fn start() -> GitServer {
        Self::start_inner(None).await
    }

    /// Serve only to requests with HTTP Basic auth whose password is `token` (any user name, GitLab
    /// style `oauth2:<token>`); others get `401` with `WWW-Authenticate: Basic realm="git"`.
    pub async fn start_with_token(token: &str) -> GitServer {
        crate::support::secrets::register(token);
        Self::start_inner(Some(token.to_owned())).await
    }

    async fn start_inner(token: Option<String>) -> GitServer {
        let root = tempfile::Builder::new()
            .prefix("kiln-git-server-")
            .tempdir()
            .expect("temp dir for git server");
        std::fs::create_dir_all(root.path().join("repos")).unwrap();
        std::fs::create_dir_all(root.path().join("work")).unwrap();
        let shared = Arc::new(Shared {
            project_root: root.path().join("repos"),
            token,
        });
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback port for git server");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("git server");
        });
        GitServer { addr, root, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    /// Create an empty bare repository `<name>.git` (default branch `main`).
    pub fn create_repo(&self, name: &str) -> RepoHandle {
        let bare = self.root.path().join("repos").join(format!("{name}.git"));
        let work = self.root.path().join("work").join(name);
        git(
            None,
            &["init", "--quiet", "--bare", "-b", "main", path_str(&bare)],
        );
        git(None, &["init", "--quiet", "-b", "main", path_str(&work)]);
        git(Some(&work), &["remote", "add", "origin", path_str(&bare)]);
        RepoHandle {
            name: name.to_owned(),
            bare,
            work,
            url: self.url(name),
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bare repository served by a [`GitServer`], with a scratch work tree to make commits in.
pub struct RepoHandle {
    pub name: String,
    pub bare: PathBuf,
    work: PathBuf,
    url: String,
}

impl RepoHandle {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Commit `files` (path, contents, executable) on `main` and push; returns the commit sha.
    pub fn commit_files<C: AsRef<[u8]>>(&self, files: &[(&str, C, bool)], message: &str) -> String {
        self.commit_files_on("main", files, message)
    }

    /// Commit `files` on `branch` (on top of whatever the scratch work tree has checked out) and
    /// push it to the bare repository; returns the commit sha.
    pub fn commit_files_on<C: AsRef<[u8]>>(
        &self,
        branch: &str,
        files: &[(&str, C, bool)],
        message: &str,
    ) -> String {
        for (path, contents, executable) in files {
            let full = self.work.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&full, contents.as_ref()).unwrap();
            set_executable(&full, *executable);
        }
        git(Some(&self.work), &["add", "--all"]);
        git(
            Some(&self.work),
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        git(
            Some(&self.work),
            &[
                "push",
                "--quiet",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        git(Some(&self.work), &["rev-parse", "HEAD"])
            .trim()
            .to_owned()
    }

    /// Commit a symlink `path` → `target` on `main`; returns the commit sha.
    pub fn commit_symlink(&self, path: &str, target: &str, message: &str) -> String {
        let full = self.work.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::os::unix::fs::symlink(target, &full).unwrap();
        self.commit_files::<&[u8]>(&[], message)
    }

    /// Set a config value in the bare repository (e.g. `uploadpack.allowAnySHA1InWant`).
    pub fn config(&self, key: &str, value: &str) {
        git(Some(&self.bare), &["config", key, value]);
    }
}

fn set_executable(path: &Path, executable: bool) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Run the real `git` CLI, hermetically (no system or global config), and return stdout.
fn git(dir: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("git");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Kiln Test")
        .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
        .env("GIT_COMMITTER_NAME", "Kiln Test")
        .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 git output")
}

/// The user name from `Authorization: Basic …` if its password is the token.
fn authorized_user(headers: &HeaderMap, token: &str) -> Option<String> {
    let (user, password) = crate::support::token_service::basic_credentials(headers)?;
    (password == token).then_some(user)
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let remote_user = match &shared.token {
        None => None,
        Some(token) => match authorized_user(req.headers(), token) {
            Some(user) => Some(user),
            None => {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, r#"Basic realm="git""#)
                    .body(Body::from("authentication required\n"))
                    .unwrap()
            }
        },
    };
    match run_http_backend(&shared.project_root, remote_user, req).await {
        Ok(resp) => resp,
        Err(err) => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from(format!("git http-backend: {err}\n")))
            .unwrap(),
    }
}

async fn run_http_backend(
    project_root: &Path,
    remote_user: Option<String>,
    req: Request,
) -> std::io::Result<Response> {
    let (parts, body) = req.into_parts();
    let header_str = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(v) = header_str(header::CONTENT_TYPE) {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header_str(header::CONTENT_LENGTH) {
        cmd.env("CONTENT_LENGTH", v);
    }
    if let Some(v) = header_str(header::CONTENT_ENCODING) {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("GIT_PROTOCOL", v);
    }
    if let Some(user) = remote_user {
        cmd.env("REMOTE_USER", user);
    }
    let mut child = cmd.spawn()?;

    // Stream the request body into the CGI's stdin while its stdout is read below.
    let mut stdin = child.stdin.take().expect("piped stdin");
    tokio::spawn(async move {
        let mut body = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
        let _ = tokio::io::copy(&mut body, &mut stdin).await;
        let _ = stdin.shutdown().await;
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            eprintln!("git http-backend: {}", text.trim_end());
        }
    });

    // CGI response: header lines up to an empty line, then the body.
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut builder = Response::builder();
    let mut status = StatusCode::OK;
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).await? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            status = code.parse().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let Ok(value) = HeaderValue::from_str(value) {
            builder = builder.header(name, value);
        }
    }
    // The child is owned by the body stream, so it lives (and is reaped) as long as the response.
    let stream = ReaderStream::new(stdout);
    let body = Body::from_stream(futures_util::stream::unfold(
        (stream, Some(child)),
        |(mut stream, child)| async move {
            use futures_util::StreamExt as _;
            match stream.next().await {
                Some(item) => Some((item, (stream, child))),
                None => {
                    if let Some(mut child) = child {
                        let _ = child.wait().await;
                    }
                    None
                }
            }
        },
    ));
    Ok(builder.status(status).body(body).unwrap())
}
