//! What Kiln's outgoing deliveries (GitLab commit statuses, notifications) share: the pause
//! before the next attempt, a server's `Retry-After`, and transport errors told without the URL
//! (a robot's URL carries its access token).

use std::time::Duration;

/// Requests one kind of delivery (GitLab statuses, notifications) has open at once. A burst of
/// builds ending together would otherwise open a connection per build at once, and their
/// handshakes would take the CPU the build pipeline needs; the rest wait their turn.
pub const MAX_IN_FLIGHT: usize = 16;

/// The longest pause between two attempts, whatever a server asks for.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The pause before attempt `attempt` (1 = the first retry): `base`, doubling each time, or the
/// server's `Retry-After` when it gave one, at most [`MAX_PAUSE`].
pub fn pause_before(attempt: u32, base: Duration, retry_after: Option<Duration>) -> Duration {
    let backoff = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    retry_after.unwrap_or(backoff).min(MAX_PAUSE)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the services Kiln posts to).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// A transport error with its causes, without the URL.
pub fn transport_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Percent-encodes all but RFC 3986's unreserved characters: a project path in a GitLab URL
/// (`group/app` → `group%2Fapp`), a base64 signature in a query (`+`, `/`, `=`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first line of a server's answer, at most `max` characters: what a refusal records.
pub fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    if line.chars().count() <= max {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_and_a_retry_after_wins_up_to_the_cap() {
        let base = Duration::from_millis(250);
        assert_eq!(pause_before(1, base, None), Duration::from_millis(250));
        assert_eq!(pause_before(3, base, None), Duration::from_millis(1000));
        assert_eq!(pause_before(1, base, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(pause_before(1, base, Some(Duration::from_secs(3600))), MAX_PAUSE);
        assert_eq!(pause_before(40, base, None), MAX_PAUSE);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn a_refusal_is_its_first_non_empty_line_cut_to_size() {
        assert_eq!(first_line("\n  no_service \nmore", 100), "no_service");
        assert_eq!(first_line(&"x".repeat(50), 10).chars().count(), 10);
    }
}
