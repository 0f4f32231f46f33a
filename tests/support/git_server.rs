//! A real git server over HTTP for tests: bare repositories under a temp dir, served by
//! `git http-backend` through Kiln's own `kiln dev git-server` code, optionally behind a token
//! (HTTP basic auth, password = token, as GitLab's `oauth2:<token>`).

use std::path::{Path, PathBuf};
use std::process::Command;

use builder_api::devtools::git_http::GitHttp;

pub struct GitServer {
    pub root: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

pub struct RepoHandle {
    pub bare: PathBuf,
    pub branch: String,
}

impl GitServer {
    pub async fn start() -> GitServer {
        Self::start_inner(None).await
    }

    pub async fn start_with_token(token: &str) -> GitServer {
        Self::start_inner(Some(token.to_string())).await
    }

    async fn start_inner(token: Option<String>) -> GitServer {
        let root = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = GitHttp { root: root.path().to_path_buf(), token }.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        GitServer { root, addr, server }
    }

    /// `http://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    /// An empty bare repository `<name>.git` whose default branch is `main`.
    pub fn create_repo(&self, name: &str) -> RepoHandle {
        let bare = self.root.path().join(format!("{name}.git"));
        git(None, &["init", "-q", "--bare", "--initial-branch=main", bare.to_str().unwrap()]);
        RepoHandle { bare, branch: "main".into() }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RepoHandle {
    /// Commits these files (path, contents, executable) on top of the branch and pushes it;
    /// returns the new commit id.
    pub fn commit_files(&self, files: &[(&str, &[u8], bool)], message: &str) -> String {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        git(None, &["clone", "-q", self.bare.to_str().unwrap(), w.to_str().unwrap()]);
        git(Some(w), &["checkout", "-q", "-B", &self.branch]);
        for (path, contents, exec) in files {
            let p = w.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, contents).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
        git(Some(w), &["add", "-A"]);
        git(Some(w), &["-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "--allow-empty", "-m", message]);
        git(Some(w), &["push", "-q", "origin", &format!("HEAD:refs/heads/{}", self.branch)]);
        String::from_utf8(Command::new("git").arg("-C").arg(w).args(["rev-parse", "HEAD"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    }
}

fn git(dir: Option<&Path>, args: &[&str]) {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    // Commit dates are fixed so a test's commits are reproducible run to run.
    let out = cmd
        .args(args)
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
