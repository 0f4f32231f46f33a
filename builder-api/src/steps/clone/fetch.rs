//! Talking to the git server: the URL, the token, the shallow fetch of one commit or ref, and
//! what its errors mean.

use std::{num::NonZeroU32, path::Path, sync::atomic::AtomicBool};

use gix::{bstr::ByteSlice as _, ObjectId};

use super::error::CloneError;

pub(super) fn parse_url(url: &str) -> Result<gix::Url, CloneError> {
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

pub(super) fn url_without_credentials(url: &gix::Url) -> String {
    let mut url = url.clone();
    url.set_user(None);
    url.set_password(None);
    url.to_bstring().to_string()
}

/// The URL for messages: without any `user:password@`, even if it does not parse.
pub(super) fn display_url(url: &str) -> String {
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
pub(super) struct Scrubber {
    secrets: Vec<String>,
    raw_url: String,
    shown_url: String,
}

impl Scrubber {
    /// For text about `raw_url`, fetched with `token`.
    pub fn new(raw_url: &str, token: Option<&str>, shown_url: &str) -> Scrubber {
        let mut secrets = Vec::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            secrets.push(token.to_owned());
            // The header line and its base64 value, should gix ever quote either.
            let header = basic_auth_header(token);
            secrets.push(header.rsplit(' ').next().unwrap_or_default().to_owned());
        }
        if let Ok(url) = gix::url::parse(raw_url.as_bytes().as_bstr()) {
            if let Some(pw) = url.password().filter(|p| !p.is_empty()) {
                secrets.push(pw.to_owned());
            }
        }
        Scrubber {
            secrets,
            raw_url: raw_url.to_owned(),
            shown_url: shown_url.to_owned(),
        }
    }

    pub fn clean(&self, text: &str) -> String {
        let mut text = text.replace(&self.raw_url, &self.shown_url);
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "<redacted>");
        }
        text
    }
}

/// An empty repository that reads no system or user git config (a build step is hermetic).
pub(super) fn init_repo(dest: &Path) -> Result<gix::Repository, CloneError> {
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
pub(super) fn set_token_header(repo: &mut gix::Repository, token: &str) -> gix::Result<()> {
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

pub(super) struct Fetched {
    pub objects: u64,
    pub pack_bytes: u64,
    /// What the refspec's source resolved to on the remote (for a ref fetch).
    pub tip: Option<ObjectId>,
}

/// Fetch `spec` (an object id or a ref name) with depth 1. Nothing is saved to `.git/config`:
/// the remote is anonymous and in memory, and so is the token (see [`set_token_header`]).
pub(super) fn fetch(repo: &gix::Repository, url: &gix::Url, spec: String) -> gix::Result<Fetched> {
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

/// The commit `ref_name` points at on the remote (the peeled object for an annotated tag), from
/// one ls-refs exchange; `None` if the remote has no such ref.
pub(super) fn list_ref(
    repo: &gix::Repository,
    url: &gix::Url,
    ref_name: &str,
) -> gix::Result<Option<ObjectId>> {
    use gix::remote::{fetch::refmap::Source, fetch::Tags, Direction};

    let remote = repo
        .remote_at(url.clone())?
        .with_fetch_tags(Tags::None)
        .with_refspecs([ref_name], Direction::Fetch)?;
    let connection = remote
        .connect(Direction::Fetch)?
        .with_credentials(|_action| Ok(None));
    let prepared = connection.prepare_fetch(gix::progress::Discard, Default::default())?;
    Ok(prepared
        .ref_map()
        .mappings
        .iter()
        .find_map(|m| match &m.remote {
            Source::Ref(r) => {
                let (_, target, peeled) = r.unpack();
                peeled.or(target).map(ToOwned::to_owned)
            }
            Source::ObjectId(id) => Some(*id),
        }))
}

/// Turn a gix error into a [`CloneError`] that names the cause.
pub(super) fn classify(
    err: gix::Error,
    token_given: bool,
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
            token_given,
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
pub(super) fn dedup_chain(texts: &[String]) -> String {
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
