//! The `clone` step against a real git server (`git http-backend` over HTTP).

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use builder_api::steps::clone::{clone_commit_with_progress, CloneError, CloneOptions, FetchedBy};

use crate::support::git_server::GitServer;

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn options(url: &str, commit: &str, dest: &Path) -> CloneOptions {
    CloneOptions {
        url: url.to_owned(),
        commit: commit.to_owned(),
        ref_name: None,
        dest: dest.to_owned(),
        token: None,
    }
}

/// Run the blocking clone off the runtime (the git server is served by this runtime).
async fn clone(opts: CloneOptions) -> Result<builder_api::steps::clone::CloneOutcome, CloneError> {
    tokio::task::spawn_blocking(move || {
        clone_commit_with_progress(&opts, &mut |line| println!("clone: {line}"))
    })
    .await
    .expect("clone task")
}

/// Every file under `dir` (including `.git`), recursively, without following symlinks.
fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            all_files(&entry.path(), out);
        } else if ty.is_file() {
            out.push(entry.path());
        }
    }
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn clones_a_commit_that_is_not_the_branch_tip() {
    install_crypto();
    let server = GitServer::start().await;
    let repo = server.create_repo("app");
    let first = repo.commit_files(
        &[
            ("README.md", "first\n", false),
            ("build.sh", "#!/bin/sh\necho build\n", true),
            ("src/main.go", "package main\n", false),
            ("src/nested/deep/data.txt", "deep\n", false),
        ],
        "first",
    );
    let second = repo.commit_files(&[("README.md", "second\n", false)], "second");
    assert_ne!(first, second);

    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path().join("checkout");
    let started = std::time::Instant::now();
    let outcome = clone(options(&server.url("app"), &first, &dest))
        .await
        .unwrap();
    println!("clone took {:?}", started.elapsed());

    // The peer, for comparison in the log: git's own shallow fetch of the same commit.
    let peer = tempfile::tempdir().unwrap();
    git_in(peer.path(), &["init", "--quiet"]);
    let (peer_dir, peer_url, peer_sha) = (peer.path().to_owned(), server.url("app"), first.clone());
    let peer_time = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        git_in(
            &peer_dir,
            &["fetch", "--quiet", "--depth=1", &peer_url, &peer_sha],
        );
        started.elapsed()
    })
    .await
    .unwrap();
    println!("git fetch --depth=1 took {peer_time:?}");

    assert_eq!(outcome.commit, first);
    assert_eq!(outcome.fetched_by, FetchedBy::CommitId);
    assert_eq!(outcome.files, 4);
    assert!(outcome.objects > 0 && outcome.pack_bytes > 0);
    assert!(
        outcome.log.iter().any(|l| l.starts_with("fetched ")),
        "{:?}",
        outcome.log
    );
    assert!(
        outcome.log.iter().any(|l| l.starts_with("checked out ")),
        "{:?}",
        outcome.log
    );

    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "first\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("src/main.go")).unwrap(),
        "package main\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("src/nested/deep/data.txt")).unwrap(),
        "deep\n"
    );
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_ne!(mode("build.sh") & 0o111, 0, "build.sh is executable");
    assert_eq!(mode("README.md") & 0o111, 0, "README.md is not executable");

    // Real git agrees: HEAD is the commit, the clone is shallow (only that commit).
    assert_eq!(git_in(&dest, &["rev-parse", "HEAD"]).trim(), first);
    assert_eq!(git_in(&dest, &["rev-list", "--count", "HEAD"]).trim(), "1");
    assert!(
        dest.join(".git/shallow").exists(),
        "depth 1 leaves a shallow file"
    );
}

#[tokio::test]
async fn clones_symlinks() {
    install_crypto();
    let server = GitServer::start().await;
    let repo = server.create_repo("links");
    repo.commit_files(&[("target.txt", "hello\n", false)], "file");
    let sha = repo.commit_symlink("link.txt", "target.txt", "link");

    let dest = tempfile::tempdir().unwrap();
    clone(options(repo.url(), &sha, dest.path())).await.unwrap();
    let link = dest.path().join("link.txt");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("target.txt"));
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "hello\n");
    assert_eq!(git_in(dest.path(), &["status", "--porcelain"]), "");
}

#[tokio::test]
async fn token_auth_works_and_the_token_lands_in_no_file() {
    install_crypto();
    let token = "glpat-s3cret-TOKEN-1234";
    let server = GitServer::start_with_token(token).await;
    let repo = server.create_repo("private");
    let sha = repo.commit_files(&[("main.go", "package main\n", false)], "init");

    let dest = tempfile::tempdir().unwrap();
    let mut opts = options(repo.url(), &sha, dest.path());
    opts.token = Some(token.to_owned());
    opts.ref_name = Some("refs/heads/main".into());
    let outcome = clone(opts.clone()).await.unwrap();
    assert_eq!(outcome.commit, sha);
    assert!(
        !format!("{opts:?}").contains(token),
        "Debug of the options hides the token"
    );
    assert!(outcome.log.iter().all(|l| !l.contains(token)));

    let mut files = Vec::new();
    all_files(dest.path(), &mut files);
    assert!(files.iter().any(|f| f.ends_with(".git/config")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "token found in {}",
            file.display()
        );
    }
}

#[tokio::test]
async fn wrong_or_missing_token_is_an_authentication_error() {
    install_crypto();
    let server = GitServer::start_with_token("right-token").await;
    let repo = server.create_repo("private");
    let sha = repo.commit_files(&[("a", "a", false)], "init");

    let wrong = "wrong-token-XYZ";
    let dest = tempfile::tempdir().unwrap();
    let mut opts = options(repo.url(), &sha, dest.path());
    opts.token = Some(wrong.to_owned());
    let err = clone(opts).await.unwrap_err();
    let (display, debug) = (err.to_string(), format!("{err:?}"));
    println!("{display}");
    assert!(
        matches!(
            err,
            CloneError::AuthenticationFailed {
                token_given: true,
                ..
            }
        ),
        "{debug}"
    );
    assert!(display.starts_with(&format!(
        "git server refused the credentials for {}",
        repo.url()
    )));
    assert!(!display.contains(wrong) && !debug.contains(wrong));

    let dest = tempfile::tempdir().unwrap();
    let err = clone(options(repo.url(), &sha, dest.path()))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(
        matches!(
            err,
            CloneError::AuthenticationFailed {
                token_given: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_commit_the_server_does_not_have_is_not_found() {
    install_crypto();
    let server = GitServer::start().await;
    let repo = server.create_repo("app");
    repo.commit_files(&[("a", "a", false)], "init");
    let missing = "0123456789abcdef0123456789abcdef01234567";

    let dest = tempfile::tempdir().unwrap();
    let err = clone(options(repo.url(), missing, dest.path()))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, CloneError::CommitNotFound { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("commit {missing} not found in {}", repo.url())));

    // With a ref to fall back on, the answer is the same, and says where the ref is.
    let dest = tempfile::tempdir().unwrap();
    let mut opts = options(repo.url(), missing, dest.path());
    opts.ref_name = Some("refs/heads/main".into());
    let err = clone(opts).await.unwrap_err();
    println!("{err}");
    assert!(matches!(err, CloneError::CommitNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    install_crypto();
    // Bind and drop: the port is free and nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/app.git");
    let dest = tempfile::tempdir().unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        clone(options(&url, &"a".repeat(40), dest.path())),
    )
    .await
    .expect("fails fast")
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, CloneError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach git server 127.0.0.1:{port}: connection refused")
    );
}

#[tokio::test]
async fn an_invalid_commit_id_is_refused_before_anything_else() {
    install_crypto();
    let dest = tempfile::tempdir().unwrap();
    for bad in ["main", "abc123", &"z".repeat(40), &"a".repeat(41)] {
        // The URL is unreachable on purpose: the commit is checked first.
        let err = clone(options("http://127.0.0.1:1/x.git", bad, dest.path()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CloneError::InvalidCommit { .. }),
            "{bad}: {err:?}"
        );
        assert!(
            err.to_string().contains("expected 40 hexadecimal digits"),
            "{err}"
        );
    }
    // Nothing was created.
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_missing_repository_is_named() {
    install_crypto();
    let server = GitServer::start().await;
    let dest = tempfile::tempdir().unwrap();
    let err = clone(options(&server.url("nope"), &"a".repeat(40), dest.path()))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(
        matches!(err, CloneError::RepositoryNotFound { .. }),
        "{err:?}"
    );
}
