//! The service's own sections: the HTTP server (`[server]`), the store (`[store]`), build logs
//! (`[logs]`) and webhook intake (`[hooks]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Webhook intake (`/hooks/gitlab`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Verified deliveries accepted per app and minute, on average; 0 turns the limit off. Past
    /// it a delivery is answered 429 with `Retry-After` and starts nothing. Counted per process.
    pub rate_per_app_per_minute: u32,
    /// Deliveries an idle app may send at once before the rate applies (a push of many branches).
    pub burst: u32,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self { rate_per_app_per_minute: 600, burst: 120 }
    }
}

/// Build logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Output kept per build; past it the log says it was truncated and the build goes on.
    pub max_bytes_per_build: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self { max_bytes_per_build: 100 << 20 }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted (webhooks and API); larger bodies get 413.
    pub max_body_bytes: usize,
    /// The admin token. When unset, one is generated on first start and printed once.
    pub admin_token: Option<String>,
    /// Whether the audit log takes the client's address from `X-Forwarded-For` (set this only
    /// behind a proxy that sets it; anyone can send the header) instead of the socket's peer.
    pub trust_forwarded_for: bool,
    /// Kiln's address as users reach it (`https://kiln.example`): the links in GitLab commit
    /// statuses point at `{public_url}/ui/builds/{id}`. Unset: `http://{listen}`.
    pub public_url: Option<String>,
    /// On SIGTERM, how long Kiln keeps serving while `/readyz` answers 503, so the Service stops
    /// sending it requests before it closes its listener (the endpoints of a Service follow
    /// readiness a probe period late).
    pub drain_secs: f64,
}

impl ServerConfig {
    /// The base of links to Kiln's pages, without a trailing `/`.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "****"))
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("public_url", &self.public_url)
            .field("drain_secs", &self.drain_secs)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".parse().unwrap(), max_body_bytes: 1 << 20, admin_token: None, trust_forwarded_for: false, public_url: None, drain_secs: 5.0 }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for the SQLite database (when `url` is unset), build workspaces and caches.
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://user:password@host:port/db`) holding the store instead
    /// of SQLite under `data_dir`. May carry a password: never shown.
    pub url: Option<String>,
    /// File holding the key that encrypts the secrets in the store (base64 of 32 bytes, mode
    /// 0600): in a cluster, a mounted Kubernetes Secret, so the key never sits on the database's
    /// volume. `KILN_SECRET_KEY` (the key itself) wins over it; with neither, Kiln generates
    /// `<data_dir>/secret.key` at first start.
    pub secret_key_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { data_dir: PathBuf::from(".kiln"), url: None, secret_key_file: None }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("data_dir", &self.data_dir)
            .field("url", &self.url.as_deref().map(crate::store::display_database_url))
            .field("secret_key_file", &self.secret_key_file)
            .finish()
    }
}

impl StoreConfig {
    /// Where the store is, as it may be shown: the database URL without its password, or the
    /// data dir.
    pub fn location(&self) -> String {
        match &self.url {
            Some(url) => crate::store::display_database_url(url),
            None => self.data_dir.display().to_string(),
        }
    }

    /// The key of the store's secrets: `KILN_SECRET_KEY`, else `secret_key_file`, else
    /// `<data_dir>/secret.key` (generated when missing).
    pub fn secret_key(&self) -> Result<crate::store::SecretKey, crate::store::KeyError> {
        crate::store::SecretKey::load(&self.data_dir, self.secret_key_file.as_deref())
    }

    /// The file a key rotation replaces: `secret_key_file`, else the generated default. None
    /// when the key comes from `KILN_SECRET_KEY`, which Kiln cannot change.
    pub fn secret_key_path(&self) -> Option<PathBuf> {
        if std::env::var_os("KILN_SECRET_KEY").is_some() {
            return None;
        }
        Some(self.secret_key_file.clone().unwrap_or_else(|| self.data_dir.join(crate::store::secrets::DEFAULT_KEY_FILE)))
    }
}
