//! Which images a subscription follows.

use std::str::FromStr;

#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Images built from this branch (the build that produced the digest says which).
    Branch(String),
    /// Tags matching a glob (`*` within a path segment, `**` across).
    Glob(String),
    /// Tags that are versions in this range (`v` prefixes allowed).
    Semver(semver::VersionReq),
    /// Never on its own; only a rollback request moves it.
    Manual,
}

/// Why a policy string is not a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The branch is not a valid git ref name (the validator's message).
    #[error("{0}")]
    Branch(String),
    #[error("policy glob {glob:?}: {source}")]
    Glob { glob: String, source: globset::Error },
    #[error("policy semver range {range:?}: {source}")]
    Semver { range: String, source: semver::Error },
    #[error("policy {0:?} must be one of branch:NAME, glob:PATTERN, semver:RANGE, manual")]
    Unknown(String),
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Policy, PolicyError> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        match (kind, arg.trim()) {
            ("manual", "") => Ok(Policy::Manual),
            ("branch", b) if !b.is_empty() => {
                crate::validate::git_ref(b).map_err(|e| PolicyError::Branch(e.to_string()))?;
                Ok(Policy::Branch(b.to_string()))
            }
            ("glob", g) if !g.is_empty() => {
                globset::Glob::new(g).map_err(|source| PolicyError::Glob { glob: g.to_string(), source })?;
                Ok(Policy::Glob(g.to_string()))
            }
            ("semver", r) if !r.is_empty() => r
                .parse::<semver::VersionReq>()
                .map(Policy::Semver)
                .map_err(|source| PolicyError::Semver { range: r.to_string(), source }),
            _ => Err(PolicyError::Unknown(s.to_string())),
        }
    }
}

impl Policy {
    /// Whether an image pushed with `tag` (None: pushed by digest) from a build of
    /// `build_branch` (None: no Kiln build made it) is one to roll out.
    pub fn follows(&self, tag: Option<&str>, build_branch: Option<&str>) -> bool {
        match self {
            Policy::Manual => false,
            Policy::Branch(b) => build_branch == Some(b.as_str()),
            Policy::Glob(g) => tag.is_some_and(|t| crate::branch_filter::matches(g, t)),
            Policy::Semver(range) => tag
                .and_then(|t| semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).ok())
                .is_some_and(|v| range.matches(&v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Policy;

    #[test]
    fn policies_parse_and_match() {
        let p = |s: &str| s.parse::<Policy>().unwrap();
        assert!(p("branch:main").follows(None, Some("main")));
        assert!(!p("branch:main").follows(Some("main"), Some("dev")));
        assert!(p("glob:release-*").follows(Some("release-1"), None));
        assert!(!p("glob:release-*").follows(None, None));
        assert!(p("semver:^1.2").follows(Some("v1.4.0"), None));
        assert!(!p("semver:^1.2").follows(Some("2.0.0"), None));
        assert!(!p("semver:^1.2").follows(Some("latest"), None));
        assert!(!p("manual").follows(Some("x"), Some("main")));
        for bad in ["", "branch", "branch:", "sometimes", "semver:>>1", "branch:a..b"] {
            assert!(bad.parse::<Policy>().is_err(), "{bad:?}");
        }
    }
}
