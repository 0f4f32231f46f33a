//! Checks on strings from users and webhooks before they are stored or used.

/// Why a value was refused, in words for the person who sent it (it names the field and the
/// rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);



/// A DNS-1123 label: lowercase letters, digits and `-`, 1–63 chars, alphanumeric at both ends.
/// Tenant and app names reach Kubernetes (namespaces, labels, Job names) so they must be.
pub fn dns_label(what: &str, s: &str) -> Result<(), Invalid> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!("{what} {s:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")))
    }
}

/// A DNS-1123 subdomain (Secret and PersistentVolumeClaim names): at most 253 characters,
/// dot-separated labels of lowercase letters, digits and `-`, each alphanumeric at both ends.
pub fn dns_subdomain(what: &str, s: &str) -> Result<(), Invalid> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{what} {s:?} is not a valid Kubernetes name: use at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"
        )))
    }
}

/// What a resource quantity measures: which suffixes make sense for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityOf {
    /// CPU: cores (`2`, `0.5`) or millicores (`500m`).
    Cpu,
    /// Memory: bytes, decimal (`k`, `M`, `G`, `T`) or binary (`Ki`, `Mi`, `Gi`, `Ti`) multiples.
    Memory,
}

/// A Kubernetes resource quantity as the API server would accept it for a container's requests
/// and limits, restricted to the forms people write: a positive decimal number (no sign, no
/// exponent) and one suffix of its kind. Returns the amount in millicores (CPU) or bytes
/// (memory), so a value that rounds to nothing (`0.0001m`) is refused here rather than by the
/// cluster at the first build.
pub fn quantity(what: &str, s: &str, of: QuantityOf) -> Result<u128, Invalid> {
    let rule = match of {
        QuantityOf::Cpu => "a positive number of cores like \"2\" or \"0.5\", or millicores like \"500m\"",
        QuantityOf::Memory => "a positive number of bytes with a suffix like \"512Mi\", \"1Gi\" or \"500M\" (Ki Mi Gi Ti k M G T)",
    };
    let err = || Err(Invalid(format!("{what} {s:?} is not a Kubernetes quantity: use {rule}")));
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // Millicores (CPU) or bytes (memory) per unit of the suffix.
    let scale: u128 = match (of, suffix) {
        (QuantityOf::Cpu, "") => 1000,
        (QuantityOf::Cpu, "m") => 1,
        (QuantityOf::Memory, "") => 1,
        (QuantityOf::Memory, "k") => 1000,
        (QuantityOf::Memory, "M") => 1000u128.pow(2),
        (QuantityOf::Memory, "G") => 1000u128.pow(3),
        (QuantityOf::Memory, "T") => 1000u128.pow(4),
        (QuantityOf::Memory, "Ki") => 1 << 10,
        (QuantityOf::Memory, "Mi") => 1 << 20,
        (QuantityOf::Memory, "Gi") => 1 << 30,
        (QuantityOf::Memory, "Ti") => 1 << 40,
        _ => return err(),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if s.len() > 32 || (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || number.ends_with('.') {
        return err();
    }
    let digits = |d: &str| if d.is_empty() { Some(0u128) } else { d.parse::<u128>().ok() };
    let (Some(w), Some(f)) = (digits(whole), digits(fraction)) else { return err() };
    // whole × scale + fraction × scale / 10^digits, rounded down; the 32-character bound keeps
    // every term far below u128's range, checked anyway.
    let amount = w
        .checked_mul(scale)
        .zip(f.checked_mul(scale).map(|f| f / 10u128.pow(fraction.len() as u32)))
        .and_then(|(w, f)| w.checked_add(f));
    match amount {
        Some(amount) if amount > 0 => Ok(amount),
        Some(_) => Err(Invalid(format!("{what} {s:?} is zero or less than one {}: use {rule}", if of == QuantityOf::Cpu { "millicore" } else { "byte" }))),
        None => err(),
    }
}

/// A full commit id: 40 lowercase hex characters.
pub fn commit_sha(s: &str) -> Result<(), Invalid> {
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Invalid(format!("commit {s:?} is not a 40-character hexadecimal commit id")))
    }
}

/// A git ref name, by the rules of `git check-ref-format`, plus a length bound.
pub fn git_ref(s: &str) -> Result<(), Invalid> {
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
        Err(Invalid(format!("{s:?} is not a valid git ref name")))
    } else {
        Ok(())
    }
}

/// An image repository with an explicit registry host: `host[:port]/path`.
pub fn image_repository(s: &str) -> Result<(), Invalid> {
    let err = || {
        Err(Invalid(format!(
            "image repository {s:?} must look like registry.example.com/project/app (a registry host, then a lowercase path, no tag)"
        )))
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
pub fn image_repository_path(path: &str) -> Result<(), Invalid> {
    let ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!("repository {path:?} must be a lowercase path like project/app")))
    }
}

/// A path inside the repository: relative, no `..`.
pub fn repo_path(what: &str, s: &str) -> Result<(), Invalid> {
    let p = std::path::Path::new(s);
    if s.is_empty() || p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) || s.contains('\0') {
        Err(Invalid(format!("{what} {s:?} must be a relative path inside the repository")))
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
            assert!(err.0.contains("not a valid name"), "{bad:?}: {err}");
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

    #[test]
    fn kubernetes_names_and_quantities() {
        assert!(dns_subdomain("secret", "kiln-registry").is_ok());
        assert!(dns_subdomain("secret", "harbor.robot-1").is_ok());
        for bad in ["", "Kiln", "a..b", "-a", "a-", "a_b", ".a", &"a".repeat(254)] {
            assert!(dns_subdomain("secret", bad).is_err(), "{bad:?}");
        }
        use QuantityOf::{Cpu, Memory};
        assert_eq!(quantity("cpu", "500m", Cpu), Ok(500));
        assert_eq!(quantity("cpu", "2", Cpu), Ok(2000));
        assert_eq!(quantity("cpu", "0.5", Cpu), Ok(500));
        assert_eq!(quantity("cpu", "1.5", Cpu), Ok(1500));
        assert_eq!(quantity("memory", "512Mi", Memory), Ok(512 << 20));
        assert_eq!(quantity("memory", "1Gi", Memory), Ok(1 << 30));
        assert_eq!(quantity("memory", "1.5Gi", Memory), Ok(3 << 29));
        assert_eq!(quantity("memory", "500M", Memory), Ok(500_000_000));
        assert_eq!(quantity("memory", "1048576", Memory), Ok(1 << 20));
        for bad in ["", "0", "0m", "0.0001", "-1", "+1", "1e3", "1.", ".", "1..2", "1.2.3", "2 ", " 2", "1Gi", "500Mi", "2cores", "1k"] {
            let e = quantity("cpu", bad, Cpu).unwrap_err();
            assert!(e.0.starts_with(&format!("cpu {bad:?}")), "{e}");
        }
        for bad in ["", "0", "0Mi", "1m", "1g", "1gi", "1Pi", "-1Gi", "1 Gi", "1Gib", "Gi", &"9".repeat(40)] {
            assert!(quantity("memory", bad, Memory).is_err(), "{bad:?}");
        }
    }
}
