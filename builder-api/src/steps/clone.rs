//! `kiln step clone`: fetch exactly one commit, shallow, with gix.
//!
//! The commit is fetched by its object id (`want <sha>`, depth 1) into a fresh repository at the
//! destination, HEAD is detached at it, and its tree is written into the work tree here (regular
//! and executable files, symlinks, directories; submodules become empty directories, as with git).
//! If the server refuses to hand out a commit by id and a ref name is known, the ref is fetched
//! instead and its tip must be the requested commit.
//!
//! The token goes to the server as HTTP Basic `oauth2:<token>` from an in-memory `http.extraHeader`:
//! it is written to no file, and no message carries it.
//!
//! This is blocking code (gix's HTTP transport blocks): run it on `spawn_blocking` or in the
//! `kiln step clone` process.

use std::{
    fmt,
    io::Write as _,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use gix::{bstr::ByteSlice as _, objs::tree::EntryKind, ObjectId};

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

/// Why a clone failed. Display names the cause in plain words; URLs are shown without credentials
/// and the token never appears.
#[derive(Debug)]
pub enum CloneError {
    /// The commit string is not 40 hex digits.
    InvalidCommit { commit: String },
    /// The URL could not be parsed or is not one we can fetch from.
    InvalidUrl { url: String, reason: String },
    /// The destination exists and is not an empty directory, or could not be created or written.
    Destination { path: PathBuf, reason: String },
    /// The server does not have the commit (or refuses to serve it and the ref does not point at it).
    CommitNotFound {
        commit: String,
        url: String,
        detail: Option<String>,
    },
    /// The server answered 404 for the repository itself.
    RepositoryNotFound { url: String },
    /// No connection to the server.
    Unreachable { host_port: String, reason: String },
    /// The server answered 401/403: wrong or missing token.
    AuthenticationFailed { url: String, token_given: bool },
    /// The checkout's HEAD is not the requested commit (should not happen).
    HeadMismatch { expected: String, actual: String },
    /// Anything else from git, with credentials scrubbed from the message.
    Git { url: String, message: String },
}

impl fmt::Display for CloneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloneError::InvalidCommit { commit } => write!(
                f,
                "invalid commit id {commit:?}: expected 40 hexadecimal digits (a full sha1)"
            ),
            CloneError::InvalidUrl { url, reason } => write!(f, "invalid git url {url}: {reason}"),
            CloneError::Destination { path, reason } => {
                write!(f, "cannot check out into {}: {reason}", path.display())
            }
            CloneError::CommitNotFound {
                commit,
                url,
                detail,
            } => {
                write!(f, "commit {commit} not found in {url}")?;
                if let Some(detail) = detail {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            CloneError::RepositoryNotFound { url } => write!(f, "git repository {url} not found"),
            CloneError::Unreachable { host_port, reason } => {
                write!(f, "cannot reach git server {host_port}: {reason}")
            }
            CloneError::AuthenticationFailed { url, token_given } => {
                write!(f, "git server refused the credentials for {url}")?;
                if *token_given {
                    write!(f, " (wrong or expired token?)")
                } else {
                    write!(f, " (no token was given)")
                }
            }
            CloneError::HeadMismatch { expected, actual } => write!(
                f,
                "checkout is at {actual} instead of the requested commit {expected}"
            ),
            CloneError::Git { url, message } => write!(f, "git fetch from {url} failed: {message}"),
        }
    }
}

impl std::error::Error for CloneError {}

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
    let scrub = Scrubber::new(opts, &shown_url);
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
            let err = classify(err, opts, &url, &shown_url, &commit, &scrub);
            match (&err, &opts.ref_name) {
                (CloneError::CommitNotFound { .. }, Some(ref_name)) => {
                    report(format!(
                        "the server does not serve {commit} by id; fetching {ref_name} instead"
                    ));
                    let f = fetch(&repo, &url, ref_name.clone())
                        .map_err(|e| classify(e, opts, &url, &shown_url, &commit, &scrub))?;
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
    set_detached_head(&repo, commit, &scrub, &shown_url)?;
    let files = checkout(&repo, commit, &opts.dest, &scrub, &shown_url)?;

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
        opts.dest.display()
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
pub fn resolve_ref(url: &str, ref_name: &str, token: Option<&str>, scratch: &Path) -> Result<String, CloneError> {
    use gix::remote::Direction;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = CloneOptions {
        url: url.to_string(),
        commit: ObjectId::null(gix::hash::Kind::Sha1).to_string(),
        ref_name: Some(ref_name.to_string()),
        dest: scratch.to_path_buf(),
        token: token.map(String::from),
    };
    let gurl = parse_url(url)?;
    let shown_url = url_without_credentials(&gurl);
    let scrub = Scrubber::new(&opts, &shown_url);
    prepare_dest(scratch)?;
    let mut repo = init_repo(scratch)?;
    let git_err = |e: String| CloneError::Git { url: shown_url.clone(), message: scrub.clean(&e) };
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        set_token_header(&mut repo, token).map_err(|e| git_err(e.to_string()))?;
    }
    let null = ObjectId::null(gix::hash::Kind::Sha1);
    let listed = (|| -> gix::Result<Option<ObjectId>> {
        let remote = repo
            .remote_at(gurl.clone())?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs([ref_name], Direction::Fetch)?;
        let connection = remote.connect(Direction::Fetch)?.with_credentials(|_action| Ok(None));
        let prepared = connection.prepare_fetch(gix::progress::Discard, Default::default())?;
        // The peeled object for an annotated tag, else the ref's target.
        Ok(prepared.ref_map().mappings.iter().find_map(|m| match &m.remote {
            gix::remote::fetch::refmap::Source::Ref(r) => {
                let (_, target, peeled) = r.unpack();
                peeled.or(target).map(ToOwned::to_owned)
            }
            gix::remote::fetch::refmap::Source::ObjectId(id) => Some(*id),
        }))
    })();
    match listed {
        Ok(Some(id)) => Ok(id.to_string()),
        Ok(None) => Err(CloneError::CommitNotFound {
            commit: ref_name.to_string(),
            url: shown_url.clone(),
            detail: Some(format!("{ref_name} does not exist")),
        }),
        Err(e) => Err(match classify(e, &opts, &gurl, &shown_url, &null, &scrub) {
            CloneError::CommitNotFound { url, .. } => {
                CloneError::CommitNotFound { commit: ref_name.to_string(), url, detail: Some(format!("{ref_name} does not exist")) }
            }
            other => other,
        }),
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

fn parse_url(url: &str) -> Result<gix::Url, CloneError> {
    let parsed = gix::url::parse(url.as_bytes().as_bstr()).map_err(|e| CloneError::InvalidUrl {
        url: display_url(url),
        reason: e.to_string().replace(url, &display_url(url)),
    })?;
    match &parsed.scheme {
        gix::url::Scheme::Http | gix::url::Scheme::Https => Ok(parsed),
        other => Err(CloneError::InvalidUrl {
            url: url_without_credentials(&parsed),
            reason: format!("only http and https are supported, not {}", other.as_str()),
        }),
    }
}

fn url_without_credentials(url: &gix::Url) -> String {
    let mut url = url.clone();
    url.set_user(None);
    url.set_password(None);
    url.to_bstring().to_string()
}

/// The URL for messages: without any `user:password@`, even if it does not parse.
fn display_url(url: &str) -> String {
    match gix::url::parse(url.as_bytes().as_bstr()) {
        Ok(parsed) => url_without_credentials(&parsed),
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

/// Removes every secret we know of from text that came out of gix.
struct Scrubber {
    secrets: Vec<String>,
    raw_url: String,
    shown_url: String,
}

impl Scrubber {
    fn new(opts: &CloneOptions, shown_url: &str) -> Scrubber {
        let mut secrets = Vec::new();
        if let Some(token) = opts.token.as_deref().filter(|t| !t.is_empty()) {
            secrets.push(token.to_owned());
            // The header line and its base64 value, should gix ever quote either.
            let header = basic_auth_header(token);
            secrets.push(header.rsplit(' ').next().unwrap_or_default().to_owned());
        }
        if let Ok(url) = gix::url::parse(opts.url.as_bytes().as_bstr()) {
            if let Some(pw) = url.password().filter(|p| !p.is_empty()) {
                secrets.push(pw.to_owned());
            }
        }
        Scrubber {
            secrets,
            raw_url: opts.url.clone(),
            shown_url: shown_url.to_owned(),
        }
    }

    fn clean(&self, text: &str) -> String {
        let mut text = text.replace(&self.raw_url, &self.shown_url);
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "<redacted>");
        }
        text
    }
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

/// An empty repository that reads no system or user git config (a build step is hermetic).
fn init_repo(dest: &Path) -> Result<gix::Repository, CloneError> {
    let mut repo: gix::Repository = gix::ThreadSafeRepository::init_opts(
        dest,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(|e| CloneError::Destination {
        path: dest.to_owned(),
        reason: format!("cannot create a git repository: {e}"),
    })?
    .into();
    // Reflog entries for HEAD need an identity; it lives in memory only.
    let _ = repo.committer_or_set_fallback("kiln", "kiln@localhost");
    Ok(repo)
}

/// `Authorization: Basic base64(oauth2:<token>)`, GitLab style, as an `http.extraHeader` in the
/// repository's in-memory configuration: it goes with every request, and is never written to
/// `.git/config` (a config snapshot is only written to disk when asked to).
///
/// Why not gix's credentials callback: gix refuses to send an identity over plain `http://`
/// (unless built with an insecure-credentials feature), and in-cluster GitLab is often reached
/// over http; GitLab CI passes its job token the same way (`-c http.extraHeader=…`).
fn set_token_header(repo: &mut gix::Repository, token: &str) -> gix::Result<()> {
    let mut config = repo.config_snapshot_mut();
    config.set_value(
        &gix::config::tree::Http::EXTRA_HEADER,
        basic_auth_header(token).as_str(),
    )?;
    config.commit()?;
    Ok(())
}

fn basic_auth_header(token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("oauth2:{token}"))
    )
}

struct Fetched {
    objects: u64,
    pack_bytes: u64,
    /// What the refspec's source resolved to on the remote (for a ref fetch).
    tip: Option<ObjectId>,
}

/// Fetch `spec` (an object id or a ref name) with depth 1. Nothing is saved to `.git/config`:
/// the remote is anonymous and in memory, and so is the token (see [`set_token_header`]).
fn fetch(repo: &gix::Repository, url: &gix::Url, spec: String) -> gix::Result<Fetched> {
    use gix::remote::{fetch::Shallow, fetch::Tags, Direction};

    let remote = repo
        .remote_at(url.clone())?
        .with_fetch_tags(Tags::None)
        .with_refspecs([spec.as_str()], Direction::Fetch)?;
    // No credential helpers, no prompts: the only credentials are the token header. A 401 or 403
    // then ends in an "unauthenticated" error instead of a question to a terminal.
    let connection = remote
        .connect(Direction::Fetch)?
        .with_credentials(|_action| Ok(None));
    let prepared = connection
        .prepare_fetch(gix::progress::Discard, Default::default())?
        .with_shallow(Shallow::DepthAtRemote(NonZeroU32::MIN));
    let tip = prepared
        .ref_map()
        .mappings
        .iter()
        .find_map(|m| m.remote.as_id().map(ToOwned::to_owned));
    let outcome = prepared.receive(gix::progress::Discard, &AtomicBool::new(false))?;
    let (objects, pack_bytes) = match &outcome.status {
        gix::remote::fetch::Status::Change {
            write_pack_bundle, ..
        } => (
            write_pack_bundle.index.num_objects as u64,
            write_pack_bundle
                .data_path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len()),
        ),
        gix::remote::fetch::Status::NoPackReceived { .. } => (0, 0),
    };
    Ok(Fetched {
        objects,
        pack_bytes,
        tip,
    })
}

/// Turn a gix error into a [`CloneError`] that names the cause.
fn classify(
    err: gix::Error,
    opts: &CloneOptions,
    url: &gix::Url,
    shown_url: &str,
    commit: &ObjectId,
    scrub: &Scrubber,
) -> CloneError {
    let mut texts = Vec::new();
    let mut refused = None;
    let mut io_reason = None;
    for e in err.iter_errors() {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(e) = cur {
            texts.push(e.to_string());
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => refused = Some("connection refused"),
                    std::io::ErrorKind::TimedOut => refused = Some("connection timed out"),
                    std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable => refused = Some("host unreachable"),
                    _ => {}
                }
            }
            if let Some(re) = e.downcast_ref::<reqwest::Error>() {
                if re.is_connect() || re.is_timeout() {
                    io_reason.get_or_insert_with(|| innermost(re));
                }
            }
            cur = e.source();
        }
    }
    let all = texts.join(": ");
    let host_port = match (url.host(), url.port_or_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => shown_url.to_owned(),
    };

    if err.classify().is_unauthenticated()
        || err.classify().is_permission_denied()
        || err
            .downcast_any_ref::<gix::protocol::transport::client::AuthenticationRequired>()
            .is_some()
    {
        return CloneError::AuthenticationFailed {
            url: shown_url.to_owned(),
            token_given: opts.token.as_deref().is_some_and(|t| !t.is_empty()),
        };
    }
    if let Some(reason) = refused {
        return CloneError::Unreachable {
            host_port,
            reason: reason.to_owned(),
        };
    }
    if let Some(reason) = io_reason {
        return CloneError::Unreachable {
            host_port,
            reason: scrub.clean(&reason),
        };
    }
    if all.contains("not our ref")
        || all.contains("no such remote ref")
        || all.contains("matched any of")
    {
        return CloneError::CommitNotFound {
            commit: commit.to_string(),
            url: shown_url.to_owned(),
            detail: None,
        };
    }
    if all.contains("HTTP status 404") {
        return CloneError::RepositoryNotFound {
            url: shown_url.to_owned(),
        };
    }
    CloneError::Git {
        url: shown_url.to_owned(),
        message: scrub.clean(&dedup_chain(&texts)),
    }
}

/// The message of the deepest source of a reqwest error (`tcp connect error: …`, `dns error: …`).
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `a: b: c` from a chain of messages, skipping ones already contained in the previous message.
fn dedup_chain(texts: &[String]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for t in texts {
        if t.is_empty()
            || out.last().is_some_and(|prev| prev.contains(t.as_str()))
            || out.contains(&t.as_str())
        {
            continue;
        }
        out.push(t);
    }
    out.join(": ")
}

fn set_detached_head(
    repo: &gix::Repository,
    commit: ObjectId,
    scrub: &Scrubber,
    shown_url: &str,
) -> Result<(), CloneError> {
    use gix::refs::{
        transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog},
        Target,
    };
    repo.edit_reference(RefEdit {
        change: Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: format!("kiln: checkout {commit}").into(),
            },
            expected: PreviousValue::Any,
            new: Target::Object(commit),
        },
        name: "HEAD".try_into().expect("valid ref name"),
        deref: false,
    })
    .map_err(|e| CloneError::Git {
        url: shown_url.to_owned(),
        message: scrub.clean(&format!("cannot set HEAD: {e}")),
    })?;
    Ok(())
}

/// Write the commit's tree into `dest`; returns the number of files and symlinks written.
fn checkout(
    repo: &gix::Repository,
    commit: ObjectId,
    dest: &Path,
    scrub: &Scrubber,
    shown_url: &str,
) -> Result<u64, CloneError> {
    let git_err = |what: String, e: gix::Error| CloneError::Git {
        url: shown_url.to_owned(),
        message: scrub.clean(&format!("{what}: {e}")),
    };
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree_id().map(|id| id.detach()))
        .map_err(|e| git_err(format!("cannot read commit {commit}"), e))?;
    let mut files = 0;
    write_tree(repo, tree, dest, &mut files, &git_err)?;
    write_index(repo, tree, dest).map_err(|e| git_err("cannot write the index".into(), e))?;
    Ok(files)
}

/// `.git/index` for the checked-out tree, with the files' stat data, so that `git status` in the
/// checkout is clean (Go stamps `vcs.modified` from it) without rehashing every file.
fn write_index(repo: &gix::Repository, tree: ObjectId, dest: &Path) -> gix::Result<()> {
    let mut index = repo.index_from_tree(&tree)?;
    for (entry, path) in index.entries_mut_with_paths() {
        let Ok(path) = path.to_str() else { continue };
        if let Ok(meta) = gix::index::fs::Metadata::from_path_no_follow(&dest.join(path)) {
            if let Ok(stat) = gix::index::entry::Stat::from_fs(&meta) {
                entry.stat = stat;
            }
        }
    }
    index.write(Default::default())?;
    Ok(())
}

fn write_tree(
    repo: &gix::Repository,
    tree_id: ObjectId,
    dir: &Path,
    files: &mut u64,
    git_err: &dyn Fn(String, gix::Error) -> CloneError,
) -> Result<(), CloneError> {
    use std::os::unix::fs::OpenOptionsExt as _;

    let dest_err = |path: &Path, e: std::io::Error| CloneError::Destination {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let tree = repo
        .find_tree(tree_id)
        .map_err(|e| git_err(format!("cannot read tree {tree_id}"), e))?;
    let decoded = tree
        .decode()
        .map_err(|e| git_err(format!("cannot decode tree {tree_id}"), e))?;
    for entry in &decoded.entries {
        let name = entry
            .filename
            .to_str()
            .ok()
            .filter(|n| is_safe_name(n))
            .ok_or_else(|| CloneError::Destination {
                path: dir.to_owned(),
                reason: format!("refusing to check out unsafe path {:?}", entry.filename),
            })?;
        let path = dir.join(name);
        let oid = entry.oid.to_owned();
        match entry.mode.kind() {
            EntryKind::Tree => {
                std::fs::create_dir(&path).map_err(|e| dest_err(&path, e))?;
                write_tree(repo, oid, &path, files, git_err)?;
            }
            // A submodule: git leaves an empty directory.
            EntryKind::Commit => std::fs::create_dir(&path).map_err(|e| dest_err(&path, e))?,
            kind @ (EntryKind::Blob | EntryKind::BlobExecutable) => {
                let blob = repo
                    .find_blob(oid)
                    .map_err(|e| git_err(format!("cannot read blob {oid}"), e))?;
                let mode = if kind == EntryKind::BlobExecutable {
                    0o755
                } else {
                    0o644
                };
                // create_new: never follows or replaces anything already there.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(|e| dest_err(&path, e))?;
                file.write_all(&blob.data).map_err(|e| dest_err(&path, e))?;
                // The umask may have narrowed the mode.
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(|e| dest_err(&path, e))?;
                *files += 1;
            }
            EntryKind::Link => {
                let blob = repo
                    .find_blob(oid)
                    .map_err(|e| git_err(format!("cannot read blob {oid}"), e))?;
                let target =
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&blob.data);
                std::os::unix::fs::symlink(target, &path).map_err(|e| dest_err(&path, e))?;
                *files += 1;
            }
        }
    }
    Ok(())
}

/// One path component that is safe to create: not empty, `.`, `..`, `.git`, and without a slash.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.eq_ignore_ascii_case(".git")
        && !name.contains('/')
        && !name.contains('\0')
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
    fn unsafe_names_are_refused() {
        for bad in ["", ".", "..", ".git", ".GIT", "a/b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name("src"));
        assert!(is_safe_name(".gitignore"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3482), "3.4 KiB");
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
