//! Registry credentials and connection options.
//!
//! Passwords never appear in `Debug` output or in error messages.

use std::collections::BTreeMap;
use std::fmt;

/// Credentials for one registry. Bearer-token flows (Harbor, Docker Hub) are handled by oci-client
/// from basic credentials, so these two cases are all Kiln needs.
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

    pub(crate) fn username(&self) -> Option<&str> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
