//! `kiln step clone`: fetch exactly one commit, shallow, with gix.
//!
//! The commit is fetched by its object id (`want <sha>`, depth 1) into a fresh repository at the
//! destination, HEAD is detached at it, and gix's checkout writes its tree into the work tree
//! (regular and executable files, symlinks, directories; submodules become empty directories, as
//! with git). If the server refuses to hand out a commit by id and a ref name is known, the ref is
//! fetched instead and its tip must be the requested commit.
//!
//! The token goes to the server as HTTP Basic `oauth2:<token>` from an in-memory `http.extraHeader`:
//! it is written to no file, and no message carries it.
//!
//! This is blocking code (gix's HTTP transport blocks): run it on `spawn_blocking` or in the
//! `kiln step clone` process.
//!
//! - `fetch`: the URL, the token, the shallow fetch, and what the server's errors mean;
//! - `checkout`: HEAD, the work tree and `.git/index`;
//! - `error`: [`CloneError`].

mod checkout;
mod error;
mod fetch;

use std::{
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gix::ObjectId;

pub use error::CloneError;
use fetch::{
    classify, display_url, fetch, init_repo, parse_url, set_token_header, url_without_credentials,
    Scrubber,
};

/// What to clone and where.
#[derive(Clone)]
pub struct CloneOptions {
    /// `http(s)://host/group/repo.git`.
    pub url: String,
    /// The commit to check out: 40 hex digits.
    pub commit: String,
    /// The ref the commit was pushed to (`refs/heads/main`): informational, and the fallback to fetch
    /// when the server refuses to serve a commit by id.
    pub ref_name: Option<String>,
    /// The directory to check out into; created if missing, must be empty if present.
    pub dest: PathBuf,
    /// GitLab token, sent as HTTP Basic with user `oauth2`. Kept in memory only.
    pub token: Option<String>,
}

impl fmt::Debug for CloneOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneOptions")
            .field("url", &display_url(&self.url))
            .field("commit", &self.commit)
            .field("ref_name", &self.ref_name)
            .field("dest", &self.dest)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the commit was obtained from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchedBy {
    /// `want <sha>` directly.
    CommitId,
    /// The server refused the id; `ref_name` was fetched and its tip is the commit.
    Ref,
}

/// What a successful clone did.
#[derive(Debug, Clone)]
pub struct CloneOutcome {
    /// The checked-out commit (40 hex), equal to the requested one.
    pub commit: String,
    pub dest: PathBuf,
    pub fetched_by: FetchedBy,
    /// Objects in the received pack.
    pub objects: u64,
    /// Size of the received pack in bytes.
    pub pack_bytes: u64,
    /// Files (including symlinks) written into the work tree.
    pub files: u64,
    pub fetch_time: Duration,
    pub total_time: Duration,
    /// The progress lines, as they were reported.
    pub log: Vec<String>,
}

/// Clone `opts.commit`, printing progress lines to stdout (they become the build log).
pub fn clone_commit(opts: &CloneOptions) -> Result<CloneOutcome, CloneError> {
    clone_commit_with_progress(opts, &mut |line| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
}

/// Clone `opts.commit`, reporting each progress line to `progress`.
pub fn clone_commit_with_progress(
    opts: &CloneOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<CloneOutcome, CloneError> {
    let started = Instant::now();
    let commit = parse_commit(&opts.commit)?;
    // reqwest is built without a TLS provider of its own; the workspace uses ring. Installing it
    // again is a no-op error, ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = parse_url(&opts.url)?;
    let shown_url = url_without_credentials(&url);
    let token_given = opts.token.as_deref().is_some_and(|t| !t.is_empty());
    let scrub = Scrubber::new(&opts.url, opts.token.as_deref(), &shown_url);
    let mut log = Vec::new();
    let mut report = |line: String| {
        progress(&line);
        log.push(line);
    };

    prepare_dest(&opts.dest)?;
    let mut repo = init_repo(&opts.dest)?;
    if let Some(token) = opts.token.as_deref().filter(|t| !t.is_empty()) {
        set_token_header(&mut repo, token).map_err(|e| CloneError::Git {
            url: shown_url.clone(),
            message: scrub.clean(&e.to_string()),
        })?;
    }
    report(match &opts.ref_name {
        Some(r) => format!("fetching {commit} ({r}) from {shown_url}"),
        None => format!("fetching {commit} from {shown_url}"),
    });

    let fetch_started = Instant::now();
    let by_id = fetch(&repo, &url, commit.to_string());
    let (fetched, fetched_by) = match by_id {
        Ok(f) => (f, FetchedBy::CommitId),
        Err(err) => {
            let err = classify(err, token_given, &url, &shown_url, &commit, &scrub);
            match (&err, &opts.ref_name) {
                (CloneError::CommitNotFound { .. }, Some(ref_name)) => {
                    report(format!(
                        "the server does not serve {commit} by id; fetching {ref_name} instead"
                    ));
                    let f = fetch(&repo, &url, ref_name.clone())
                        .map_err(|e| classify(e, token_given, &url, &shown_url, &commit, &scrub))?;
                    match f.tip {
                        Some(tip) if tip == commit => (f, FetchedBy::Ref),
                        tip => {
                            return Err(CloneError::CommitNotFound {
                                commit: commit.to_string(),
                                url: shown_url,
                                detail: Some(match tip {
                                    Some(tip) => format!("{ref_name} is at {tip}"),
                                    None => format!("{ref_name} does not exist"),
                                }),
                            })
                        }
                    }
                }
                _ => return Err(err),
            }
        }
    };
    let fetch_time = fetch_started.elapsed();
    report(format!(
        "fetched {} objects ({}) in {:.2}s",
        fetched.objects,
        human_bytes(fetched.pack_bytes),
        fetch_time.as_secs_f64()
    ));

    if repo.try_find_object(commit).ok().flatten().is_none() {
        return Err(CloneError::CommitNotFound {
            commit: commit.to_string(),
            url: shown_url,
            detail: Some("the server sent a pack without it".into()),
        });
    }
    checkout::set_detached_head(&repo, commit, &scrub, &shown_url)?;
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree_id().map(|id| id.detach()))
        .map_err(|e| CloneError::Git {
            url: shown_url.clone(),
            message: scrub.clean(&format!("cannot read commit {commit}: {e}")),
        })?;
    let files = checkout::checkout(&repo, tree, &opts.dest, &scrub, &shown_url)?;

    let head = repo
        .head_id()
        .map_err(|e| CloneError::Git {
            url: shown_url.clone(),
            message: scrub.clean(&format!("cannot read HEAD: {e}")),
        })?
        .detach();
    if head != commit {
        return Err(CloneError::HeadMismatch {
            expected: commit.to_string(),
            actual: head.to_string(),
        });
    }
    report(format!(
        "checked out {} into {} ({files} files)",
        &commit.to_string()[..12],
        super::shown_path(&opts.dest)
    ));
    Ok(CloneOutcome {
        commit: commit.to_string(),
        dest: opts.dest.clone(),
        fetched_by,
        objects: fetched.objects,
        pack_bytes: fetched.pack_bytes,
        files,
        fetch_time,
        total_time: started.elapsed(),
        log,
    })
}

/// The commit a branch or tag points at on the remote: one ls-refs exchange, no objects
/// downloaded. `scratch` is an empty directory for the throwaway repository gix needs.
pub fn resolve_ref(
    url: &str,
    ref_name: &str,
    token: Option<&str>,
    scratch: &Path,
) -> Result<String, CloneError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gurl = parse_url(url)?;
    let shown_url = url_without_credentials(&gurl);
    let scrub = Scrubber::new(url, token, &shown_url);
    prepare_dest(scratch)?;
    let mut repo = init_repo(scratch)?;
    let token = token.filter(|t| !t.is_empty());
    if let Some(token) = token {
        set_token_header(&mut repo, token).map_err(|e| CloneError::Git {
            url: shown_url.clone(),
            message: scrub.clean(&e.to_string()),
        })?;
    }
    let not_found = |url: String| CloneError::CommitNotFound {
        commit: ref_name.to_string(),
        url,
        detail: Some(format!("{ref_name} does not exist")),
    };
    match fetch::list_ref(&repo, &gurl, ref_name) {
        Ok(Some(id)) => Ok(id.to_string()),
        Ok(None) => Err(not_found(shown_url)),
        Err(e) => {
            let null = ObjectId::null(gix::hash::Kind::Sha1);
            Err(
                match classify(e, token.is_some(), &gurl, &shown_url, &null, &scrub) {
                    CloneError::CommitNotFound { url, .. } => not_found(url),
                    other => other,
                },
            )
        }
    }
}

/// A 40-hex sha1, lowercased.
fn parse_commit(commit: &str) -> Result<ObjectId, CloneError> {
    let invalid = || CloneError::InvalidCommit {
        commit: commit.chars().take(80).collect(),
    };
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    ObjectId::from_hex(commit.to_ascii_lowercase().as_bytes()).map_err(|_| invalid())
}

fn prepare_dest(dest: &Path) -> Result<(), CloneError> {
    let fail = |reason: String| CloneError::Destination {
        path: dest.to_owned(),
        reason,
    };
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(fail("the directory is not empty".into()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(|e| fail(e.to_string()))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB {
        format!("{n} B")
    } else if n < KIB * KIB {
        format!("{:.1} KiB", n / KIB)
    } else if n < KIB * KIB * KIB {
        format!("{:.1} MiB", n / (KIB * KIB))
    } else {
        format!("{:.2} GiB", n / (KIB * KIB * KIB))
    }
}

/// The committer time (unix seconds) of `commit` in the repository at `dest`: the timestamp
/// that makes rebuilds of one commit reproducible (image `created`, Maven's outputTimestamp).
pub fn commit_time(dest: &Path, commit: &str) -> anyhow::Result<i64> {
    let repo = gix::open(dest)?;
    let id = ObjectId::from_hex(commit.as_bytes())?;
    let commit = repo.find_object(id)?.try_into_commit()?;
    Ok(commit.time()?.seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_are_checked() {
        assert!(parse_commit(&"a".repeat(40)).is_ok());
        assert!(parse_commit(&"A".repeat(40)).is_ok());
        assert!(matches!(
            parse_commit("abc"),
            Err(CloneError::InvalidCommit { .. })
        ));
        assert!(matches!(
            parse_commit(&"g".repeat(40)),
            Err(CloneError::InvalidCommit { .. })
        ));
        assert!(matches!(
            parse_commit("main"),
            Err(CloneError::InvalidCommit { .. })
        ));
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            display_url("https://oauth2:s3cret@gitlab.example/g/r.git"),
            "https://gitlab.example/g/r.git"
        );
        assert_eq!(
            display_url("http://127.0.0.1:8080/r.git"),
            "http://127.0.0.1:8080/r.git"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3482), "3.4 KiB");
    }
}
