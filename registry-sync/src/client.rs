//! The oci-client `Client` as Kiln configures it, and the translation of its errors into causes a
//! person can act on (unreachable, unauthorized, not found).

use std::error::Error as _;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::ImageIndexEntry;
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, RegistryOperation};

use crate::auth::RegistryOptions;
use crate::reference::ImageRef;

/// An operating system and CPU architecture, as in an image index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    pub fn linux_amd64() -> Self {
        Platform::new("linux", "amd64")
    }

    fn matches(&self, entry: &ImageIndexEntry) -> bool {
        let Some(p) = &entry.platform else {
            return false;
        };
        p.os.to_string() == self.os
            && p.architecture.to_string() == self.architecture
            && (self.variant.is_none() || p.variant == self.variant)
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::linux_amd64()
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A registry operation failed; the variants name the cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    /// The registry answered a TLS handshake in plain HTTP: it is reachable, but only over
    /// `http://`, which the caller allows per registry. Retrying cannot help.
    #[error("{registry} answered plain HTTP; add {registry} to {insecure_setting}")]
    PlainHttp { registry: String, insecure_setting: String },
    #[error("registry {registry} refused access{}: unauthorized ({detail})",
        .username.as_deref().map(|u| format!(" for user {u:?}")).unwrap_or_else(|| " (no credentials given)".into()))]
    Unauthorized {
        registry: String,
        username: Option<String>,
        detail: String,
    },
    #[error("{what} not found on registry {registry}")]
    NotFound { registry: String, what: String },
    /// A 429, a 5xx, or a connection that broke halfway, still so after the retries.
    #[error("registry {registry} is unavailable during {operation}: {message}")]
    Unavailable {
        registry: String,
        operation: String,
        message: String,
        /// The pause the registry asked for (`Retry-After`), if it did.
        retry_after: Option<std::time::Duration>,
    },
    #[error("registry {registry} answered an error during {operation}: {message}")]
    Protocol {
        registry: String,
        operation: String,
        message: String,
    },
}

impl RegistryError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }

    /// Unreachable or unavailable: another attempt later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. } | RegistryError::Unavailable { .. }
        )
    }

    /// The pause the registry asked for before another attempt (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistryError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Builds the oci-client for `opts`, resolving image indexes to `platform`.
pub(crate) fn build_client(opts: &RegistryOptions, platform: &Platform) -> Client {
    let wanted = platform.clone();
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
        platform_resolver: Some(Box::new(move |entries: &[ImageIndexEntry]| {
            entries
                .iter()
                .find(|e| wanted.matches(e))
                .map(|e| e.digest.clone())
        })),
        connect_timeout: Some(Duration::from_secs(15)),
        ..Default::default()
    };
    Client::new(config)
}

/// Registers the credentials for `image`'s registry with the client.
pub(crate) async fn store_auth(
    client: &Client,
    opts: &RegistryOptions,
    image: &ImageRef,
) -> OciAuth {
    let auth = opts.auth_for(image.registry()).to_oci();
    client.store_auth_if_needed(image.registry(), &auth).await;
    auth
}

/// Authenticates for `op` on `image`'s repository and proves the credentials work with one cheap
/// authenticated request, so a bad password fails here, clearly, instead of halfway through a push.
pub(crate) async fn authenticate(
    client: &Client,
    opts: &RegistryOptions,
    image: &ImageRef,
    op: RegistryOperation,
) -> Result<(), RegistryError> {
    let auth = store_auth(client, opts, image).await;
    let oci = image.to_oci();
    client
        .auth(&oci, &auth, op)
        .await
        .map_err(|e| classify(e, opts, image, "authentication"))?;
    // A HEAD on a blob that cannot exist: 404 means we were let in, 401/403 means we were not.
    const PROBE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    client
        .blob_exists(&oci, PROBE)
        .await
        .map_err(|e| classify(e, opts, image, "authentication"))?;
    Ok(())
}

/// Turns an oci-client error into a cause, never carrying a password.
pub(crate) fn classify(
    err: OciDistributionError,
    opts: &RegistryOptions,
    image: &ImageRef,
    operation: &str,
) -> RegistryError {
    let registry = image.registry().to_string();
    let username = opts
        .auth_for(image.registry())
        .username()
        .map(str::to_string);
    let unauthorized = |detail: String| RegistryError::Unauthorized {
        registry: registry.clone(),
        username: username.clone(),
        detail: opts.redact(&detail),
    };
    let not_found = || RegistryError::NotFound {
        registry: registry.clone(),
        what: format!("{operation}: {image}"),
    };
    match err {
        OciDistributionError::RequestError(e) => {
            if answered_plain_http(&e) {
                return opts.plain_http_error(&registry);
            }
            if e.is_connect() || e.is_timeout() {
                return RegistryError::Unreachable {
                    registry,
                    reason: opts.redact(&connect_reason(&e)),
                };
            }
            match e.status().map(|s| s.as_u16()) {
                Some(401) | Some(403) => unauthorized(format!("HTTP {}", e.status().unwrap())),
                Some(404) => not_found(),
                _ => RegistryError::Protocol {
                    registry,
                    operation: operation.to_string(),
                    message: opts.redact(&error_chain(&e)),
                },
            }
        }
        OciDistributionError::AuthenticationFailure(reason) => unauthorized(truncate(&reason)),
        OciDistributionError::UnauthorizedError { .. } => unauthorized("HTTP 401".into()),
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } => unauthorized(truncate(&message)),
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(envelope.to_string())
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else {
                RegistryError::Protocol {
                    registry,
                    operation: operation.to_string(),
                    message: opts.redact(&envelope.to_string()),
                }
            }
        }
        other => RegistryError::Protocol {
            registry,
            operation: operation.to_string(),
            message: opts.redact(&truncate(&other.to_string())),
        },
    }
}

/// Whether the TLS handshake failed because the server answered in plain HTTP: rustls then reads
/// the `HTTP/1.x 400` reply as a TLS record of an unknown type. (The rustls error comes up inside
/// `io::Error`s, nested, whose `source()` skips the error they wrap; so each is opened too.)
pub(crate) fn answered_plain_http(e: &reqwest::Error) -> bool {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = e.source().into_iter().collect();
    while let Some(err) = pending.pop() {
        if matches!(
            err.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType))
        ) {
            return true;
        }
        if let Some(wrapped) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            pending.push(wrapped);
        }
        pending.extend(err.source());
    }
    false
}

/// `connection refused`, `connection timed out`, `dns error: …` — the innermost cause in words.
pub(crate) fn connect_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "connection timed out".to_string();
    }
    let mut source = e.source();
    let mut innermost = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "connection refused".to_string(),
                TimedOut => return "connection timed out".to_string(),
                ConnectionReset => return "connection reset".to_string(),
                _ => {}
            }
        }
        innermost = Some(s.to_string());
        source = s.source();
    }
    innermost.unwrap_or_else(|| e.to_string())
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    truncate(&out)
}

pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 500;
    let s = s.trim();
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `1.2 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `sha256:0123456789ab…` for progress lines.
pub(crate) fn short_digest(d: &str) -> String {
    let (alg, hex) = d.split_once(':').unwrap_or(("", d));
    if hex.len() > 12 {
        format!("{alg}:{}…", &hex[..12])
    } else {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1258291), "1.2 MiB");
        assert_eq!(human_bytes(2048), "2.0 KiB");
    }
}
