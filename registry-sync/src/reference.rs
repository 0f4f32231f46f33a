//! Image references: `host[:port]/path/name[:tag][@sha256:…]`.
//!
//! Kiln always names the registry explicitly: there is no implicit `docker.io`, so an image never
//! silently goes to (or comes from) a registry nobody configured.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error(
        "image reference {0:?} names no registry host: write it as host[:port]/repository[:tag], \
         e.g. registry.example.com/team/app:1.0 or 127.0.0.1:5000/app:latest"
    )]
    MissingRegistry(String),
    #[error("image reference {reference:?} has an invalid registry host {host:?}")]
    InvalidRegistry { reference: String, host: String },
    #[error("image reference {reference:?} has an invalid repository {repository:?}: {reason}")]
    InvalidRepository {
        reference: String,
        repository: String,
        reason: &'static str,
    },
    #[error("image reference {reference:?} has an invalid tag {tag:?}")]
    InvalidTag { reference: String, tag: String },
    #[error("image reference {reference:?} has an invalid digest {digest:?} (expected sha256: and 64 lowercase hex digits)")]
    InvalidDigest { reference: String, digest: String },
}

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses `host[:port]/path/name[:tag][@sha256:…]`.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                if !is_valid_digest(digest) {
                    return Err(ReferenceError::InvalidDigest {
                        reference: s.to_string(),
                        digest: digest.to_string(),
                    });
                }
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let Some((host, path)) = rest.split_once('/') else {
            return Err(ReferenceError::MissingRegistry(s.to_string()));
        };
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(ReferenceError::MissingRegistry(s.to_string()));
        }
        if !is_valid_host(host) {
            return Err(ReferenceError::InvalidRegistry {
                reference: s.to_string(),
                host: host.to_string(),
            });
        }
        // A tag is after the last ':' of the path part (the host's port is already split off).
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) => {
                if !is_valid_tag(tag) {
                    return Err(ReferenceError::InvalidTag {
                        reference: s.to_string(),
                        tag: tag.to_string(),
                    });
                }
                (repo, Some(tag.to_string()))
            }
            None => (path, None),
        };
        if let Err(reason) = validate_repository(repository) {
            return Err(ReferenceError::InvalidRepository {
                reference: s.to_string(),
                repository: repository.to_string(),
                reason,
            });
        }
        Ok(ImageRef {
            registry: host.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The registry host, with its port if any (`127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`team/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The same repository pinned by `digest` (`host/repo@sha256:…`); the tag is dropped because
    /// a digest reference is what gets deployed.
    pub fn with_digest(&self, digest: impl Into<String>) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.into()),
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: impl Into<String>) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.into()),
            digest: None,
        }
    }

    /// The digest if pinned, else the tag, else `latest`.
    pub fn reference_part(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone(),
                digest.clone(),
            ),
            (None, Some(digest)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.clone(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl TryFrom<&str> for ImageRef {
    type Error = ReferenceError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ImageRef::parse(s)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub(crate) fn is_valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn validate_repository(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() {
        return Err("it is empty");
    }
    if repo.len() > 255 {
        return Err("it is longer than 255 characters");
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err("it has an empty path component");
        }
        let b = component.as_bytes();
        if !b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        }) {
            return Err("only lowercase letters, digits, '.', '_', '-' and '/' are allowed");
        }
        if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
            return Err("each path component must start and end with a letter or digit");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_host_port_path_tag_digest() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/app:v1.2@{D}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v1.2"));
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/app:v1.2@{D}"));

        let r = ImageRef::parse("registry.example.com/app").unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.reference_part(), "latest");
        assert_eq!(r.to_string(), "registry.example.com/app");

        let r = ImageRef::parse("localhost/a/b/c:latest").unwrap();
        assert_eq!(r.repository(), "a/b/c");
    }

    #[test]
    fn with_digest_pins_and_drops_tag() {
        let r = ImageRef::parse("harbor.local:8443/t/app:main")
            .unwrap()
            .with_digest(D);
        assert_eq!(r.to_string(), format!("harbor.local:8443/t/app@{D}"));
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn requires_explicit_registry() {
        for s in [
            "alpine",
            "alpine:3",
            "library/alpine:3",
            "team/app@".to_string().as_str(),
        ] {
            let e = ImageRef::parse(s).unwrap_err();
            if s.contains('@') {
                assert!(
                    matches!(e, ReferenceError::InvalidDigest { .. }),
                    "{s}: {e}"
                );
            } else {
                assert!(matches!(e, ReferenceError::MissingRegistry(_)), "{s}: {e}");
                assert!(e.to_string().contains("names no registry host"));
            }
        }
    }

    #[test]
    fn rejects_bad_parts() {
        assert!(matches!(
            ImageRef::parse("r.io/App:1"),
            Err(ReferenceError::InvalidRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("r.io/app:"),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("r.io/app:-x"),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("r.io/app@sha256:abc"),
            Err(ReferenceError::InvalidDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse("r.io//app"),
            Err(ReferenceError::InvalidRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("r.io:x/app"),
            Err(ReferenceError::InvalidRegistry { .. })
        ));
        assert!(matches!(ImageRef::parse(""), Err(ReferenceError::Empty)));
    }
}
