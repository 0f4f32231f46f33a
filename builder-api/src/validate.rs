//! Checks on strings from users and webhooks before they are stored or used.

/// A DNS-1123 label: lowercase letters, digits and `-`, 1–63 chars, alphanumeric at both ends.
/// Tenant and app names reach Kubernetes (namespaces, labels, Job names) so they must be.
pub fn dns_label(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {s:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"))
    }
}

/// A full commit id: 40 lowercase hex characters.
pub fn commit_sha(s: &str) -> Result<(), String> {
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!("commit {s:?} is not a 40-character hexadecimal commit id"))
    }
}

/// A git ref name, by the rules of `git check-ref-format`, plus a length bound.
pub fn git_ref(s: &str) -> Result<(), String> {
    let bad = s.is_empty()
        || s.len() > 255
        || s.starts_with('/')
        || s.ends_with('/')
        || s.ends_with('.')
        || s.ends_with(".lock")
        || s.contains("..")
        || s.contains("//")
        || s.contains("@{")
        || s == "@"
        || s.split('/').any(|c| c.starts_with('.') || c.is_empty())
        || s.chars().any(|c| c.is_control() || c == ' ' || "~^:?*[\\\x7f".contains(c));
    if bad {
        Err(format!("{s:?} is not a valid git ref name"))
    } else {
        Ok(())
    }
}

/// An image repository with an explicit registry host: `host[:port]/path`.
pub fn image_repository(s: &str) -> Result<(), String> {
    let err = || {
        Err(format!(
            "image repository {s:?} must look like registry.example.com/project/app (a registry host, then a lowercase path, no tag)"
        ))
    };
    let Some((host, path)) = s.split_once('/') else { return err() };
    let host_ok = !host.is_empty() && (host.contains('.') || host.contains(':') || host == "localhost")
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if host_ok && image_repository_path(path).is_ok() {
        Ok(())
    } else {
        err()
    }
}

/// A repository path inside a registry (`project/app`): lowercase components, no host.
pub fn image_repository_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        });
    if ok {
        Ok(())
    } else {
        Err(format!("repository {path:?} must be a lowercase path like project/app"))
    }
}

/// A path inside the repository: relative, no `..`.
pub fn repo_path(what: &str, s: &str) -> Result<(), String> {
    let p = std::path::Path::new(s);
    if s.is_empty() || p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) || s.contains('\0') {
        Err(format!("{what} {s:?} must be a relative path inside the repository"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_follow_git_rules() {
        for good in ["main", "feature/x-1", "release/1.2", "weird;name$(x)`y`"] {
            assert!(git_ref(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "../etc", "a b", "x.lock", "/a", "a/", "a//b", ".hidden", "a~1", "a^", "a:b", "a\nb", "@"] {
            assert!(git_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_names_are_not_dns_labels() {
        let long = "a".repeat(64);
        for bad in ["", "A", "a_b", "a.b", "../x", "a/b", "$(id)", "a b", "a\nb", "x\0", "\u{1b}[31m", "ünï", "a-", "-a", long.as_str()] {
            let err = dns_label("tenant", bad).unwrap_err();
            assert!(err.contains("not a valid name"), "{bad:?}: {err}");
        }
        for good in ["a", "0", "team-a", "a1-b2", &"a".repeat(63)] {
            assert!(dns_label("tenant", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn names_and_repositories() {
        assert!(dns_label("app", "my-app1").is_ok());
        assert!(dns_label("app", "My_App").is_err());
        assert!(dns_label("app", "-x").is_err());
        assert!(image_repository("127.0.0.1:5000/team/app").is_ok());
        assert!(image_repository("harbor.example.com/team/app").is_ok());
        assert!(image_repository("team/app").is_err());
        assert!(image_repository("127.0.0.1:5000/Team/app").is_err());
        assert!(image_repository("127.0.0.1:5000/app:tag").is_err());
        assert!(commit_sha(&"a".repeat(40)).is_ok());
        assert!(commit_sha("abc").is_err());
        assert!(repo_path("x", "../Dockerfile").is_err());
        assert!(repo_path("x", "docker/Dockerfile").is_ok());
    }
}
