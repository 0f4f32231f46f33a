//! Registry credentials and connection options.
//!
//! Passwords never appear in `Debug` output or in error messages.

use std::collections::BTreeMap;
use std::fmt;

use crate::client::RegistryError;

/// Credentials for one registry. Bearer-token flows (Harbor, Docker Hub) exchange basic
/// credentials at the registry's token service (oci-client for assembly, `session` for copies), so
/// these two cases are all Kiln needs.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl RegistryAuth {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        RegistryAuth::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The secret, for redacting it from any text that leaves this crate.
    pub(crate) fn secret(&self) -> Option<&str> {
        match self {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Basic { password, .. } => {
                Some(password.as_str()).filter(|p| !p.is_empty())
            }
        }
    }

    pub fn username(&self) -> Option<&str> {
        match self {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Basic { username, .. } => Some(username),
        }
    }

    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// How to talk to registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Credentials used for every registry not listed in `registry_auth`.
    pub auth: RegistryAuth,
    /// Per-registry credentials (`host[:port]` → auth), overriding `auth`. Use it when the base
    /// image lives on another registry than the target, so the target's password is never offered
    /// to the other registry.
    pub registry_auth: BTreeMap<String, RegistryAuth>,
    /// Registries (`host:port`) spoken to over plain http instead of https.
    pub insecure_registries: Vec<String>,
    /// Where the caller's users list those registries (`KILN_INSECURE_REGISTRIES / --insecure`),
    /// for the error of a registry that answers plain HTTP to an HTTPS request, which then says
    /// what to do. None: "the insecure registries".
    pub insecure_setting: Option<String>,
}

impl RegistryOptions {
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn with_auth(mut self, auth: RegistryAuth) -> Self {
        self.auth = auth;
        self
    }

    pub fn insecure(mut self, registry: impl Into<String>) -> Self {
        self.insecure_registries.push(registry.into());
        self
    }

    /// The credentials for `registry` (`host[:port]`).
    pub fn auth_for(&self, registry: &str) -> &RegistryAuth {
        self.registry_auth.get(registry).unwrap_or(&self.auth)
    }

    /// The error of `registry` answering plain HTTP where HTTPS was spoken.
    pub(crate) fn plain_http_error(&self, registry: &str) -> RegistryError {
        RegistryError::PlainHttp {
            registry: registry.to_string(),
            insecure_setting: self
                .insecure_setting
                .clone()
                .unwrap_or_else(|| "the insecure registries".to_string()),
        }
    }

    /// Replaces every known password in `text` by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in std::iter::once(&self.auth)
            .chain(self.registry_auth.values())
            .filter_map(RegistryAuth::secret)
        {
            out = out.replace(secret, "***");
        }
        out
    }
}

/// Why a docker `config.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read registry credentials from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("registry credentials file {path} is not a docker config.json: {reason}")]
    Invalid { path: String, reason: String },
}

/// Reads the `auths` of a docker `config.json` (`{"auths": {"host": {"auth": base64(user:pass)}}}`,
/// or `username`/`password` fields), keyed by `host[:port]`. Entries without credentials (those
/// handled by a credential helper) are left out.
pub fn load_docker_config(
    path: &std::path::Path,
) -> Result<BTreeMap<String, RegistryAuth>, AuthFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_docker_config(&text).map_err(|reason| AuthFileError::Invalid {
        path: shown,
        reason,
    })
}

fn parse_docker_config(text: &str) -> Result<BTreeMap<String, RegistryAuth>, String> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (key, entry) in config.auths {
        // Keys are `host`, `host:port`, or legacy URLs like `https://index.docker.io/v1/`.
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let auth = match (entry.auth.filter(|a| !a.is_empty()), entry.username, entry.password) {
            (Some(encoded), _, _) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| format!("auths.{key}.auth is not base64"))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                let (user, pass) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                RegistryAuth::basic(user, pass)
            }
            (None, Some(user), Some(pass)) => RegistryAuth::basic(user, pass),
            _ => continue,
        };
        out.insert(host, auth);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_auths() {
        use base64::Engine as _;
        let robot = base64::engine::general_purpose::STANDARD.encode("robot$team+ci:s3cret:with:colons");
        let text = format!(
            r#"{{"auths": {{"harbor.a.io": {{"auth": "{robot}"}},
                "https://index.docker.io/v1/": {{"username": "u", "password": "p"}},
                "helper.io": {{}}}}, "credsStore": "desktop"}}"#
        );
        let auths = parse_docker_config(&text).unwrap();
        assert_eq!(
            auths.get("harbor.a.io"),
            Some(&RegistryAuth::basic("robot$team+ci", "s3cret:with:colons"))
        );
        assert_eq!(auths.get("index.docker.io"), Some(&RegistryAuth::basic("u", "p")));
        assert!(!auths.contains_key("helper.io"));
        let err = parse_docker_config(r#"{"auths": {"x.io": {"auth": "%%%"}}}"#).unwrap_err();
        assert!(err.contains("not base64"), "{err}");
    }

    #[test]
    fn debug_never_shows_password() {
        let mut opts = RegistryOptions::default()
            .with_auth(RegistryAuth::basic("robot$ci", "hunter2-very-secret"));
        opts.registry_auth
            .insert("b.io".into(), RegistryAuth::basic("x", "other-secret"));
        let dbg = format!("{opts:?} {:#?}", opts.auth);
        assert!(!dbg.contains("hunter2-very-secret"), "{dbg}");
        assert!(!dbg.contains("other-secret"), "{dbg}");
        assert!(dbg.contains("robot$ci"));
        assert_eq!(
            opts.redact("a hunter2-very-secret b other-secret"),
            "a *** b ***"
        );
        assert_eq!(opts.auth_for("b.io").username(), Some("x"));
        assert_eq!(opts.auth_for("c.io").username(), Some("robot$ci"));
    }
}
