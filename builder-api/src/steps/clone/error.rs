//! Why a clone failed, in words a build log can show.

use std::{fmt, path::PathBuf};

/// Why a clone failed. Display names the cause in plain words; URLs are shown without credentials
/// and the token never appears.
#[derive(Debug)]
pub enum CloneError {
    /// The commit string is not 40 hex digits.
    InvalidCommit { commit: String },
    /// The URL could not be parsed or is not one we can fetch from.
    InvalidUrl { url: String, reason: String },
    /// The destination exists and is not an empty directory, could not be created or written, or
    /// the commit's tree holds a path that must not be checked out.
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
