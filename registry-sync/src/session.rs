//! One registry spoken to over HTTP directly: its base URL, credentials, bearer tokens per scope
//! set, and the retry policy.
//!
//! The copy engine needs what oci-client does not expose: status codes to decide what to retry, a
//! `202` mount answer kept as the upload session it is, tokens that cover two repositories (pull on
//! the source, push on the target, for cross-repository mounts), streamed request bodies, and
//! response headers (`Docker-Content-Digest`, `OCI-Subject`).

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{header, Method, StatusCode, Url};

use crate::auth::{RegistryAuth, RegistryOptions};
use crate::client::{answered_plain_http, connect_reason, error_chain, truncate, RegistryError};

/// Accept header for manifests: every manifest kind Kiln copies (schema 1 is not supported).
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How often and how patiently a request is retried on connection errors, 429 and 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured: a registry asking for a longer pause (a rate limit
    /// that resets in an hour) fails the operation at once, naming the pause, instead of holding
    /// a build's sync that long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy for tests: a few attempts, milliseconds apart.
    pub fn fast(attempts: u32) -> Self {
        RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
        }
    }

    /// The pause before the attempt after failed attempt `attempt` ended in `failure`: the
    /// backoff, or the registry's `Retry-After` when that is longer. `None` when there is no
    /// next attempt: the attempts are spent, or the registry asked for more than
    /// `max_retry_after`. The retry loops are Kiln's, not backon's `Retryable`, because a 401
    /// re-authenticates without spending an attempt and a blob's fan-out retries many uploads.
    pub fn pause(&self, attempt: u32, failure: &RegistryError) -> Option<Duration> {
        let backoff = self.backoff().build().nth(attempt.checked_sub(1)? as usize)?;
        match failure.retry_after() {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => Some(asked.max(backoff)),
            None => Some(backoff),
        }
    }

    /// The pause after failed attempt `attempt` (1-based), whatever the attempts: exponential,
    /// with jitter between half and the whole of it so that many clients retrying one registry
    /// do not stay in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff()
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
    }

    /// The pauses between the attempts. backon's jitter adds up to the whole delay again, so its
    /// delays start from half of ours: each pause then lies between half and the whole of
    /// `first_delay` doubled per attempt, capped at `max_delay`.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.first_delay.min(self.max_delay) / 2)
            .with_max_delay(self.max_delay / 2)
            .with_jitter()
            .with_max_times(self.attempts.saturating_sub(1) as usize)
    }
}

/// `repository:<repo>:pull`.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// `repository:<repo>:pull,push`.
pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// How the registry asked to be authenticated (its `WWW-Authenticate` on `GET /v2/`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Open,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A connection to one registry, shared by every copy to or from it.
pub(crate) struct RegistrySession {
    http: reqwest::Client,
    registry: String,
    base_url: String,
    auth: RegistryAuth,
    opts: RegistryOptions,
    retry: RetryPolicy,
    challenge: tokio::sync::OnceCell<Challenge>,
    /// Bearer tokens by their scope set (scopes sorted, space separated), with the moment each
    /// stops being handed out (a little before it expires).
    tokens: tokio::sync::Mutex<HashMap<String, (String, std::time::Instant)>>,
}

impl RegistrySession {
    pub(crate) fn new(
        http: reqwest::Client,
        registry: &str,
        opts: &RegistryOptions,
        retry: RetryPolicy,
    ) -> Self {
        let scheme = if opts.insecure_registries.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        RegistrySession {
            http,
            registry: registry.to_string(),
            base_url: format!("{scheme}://{registry}"),
            auth: opts.auth_for(registry).clone(),
            opts: opts.clone(),
            retry,
            challenge: tokio::sync::OnceCell::new(),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The HTTP client Kiln uses for registries: no overall timeout (a blob may take minutes),
    /// a connect timeout so a dead host fails fast. One per process, so copies running at the
    /// same time share its pool of connections to each registry.
    pub(crate) fn http_client() -> reqwest::Client {
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        CLIENT
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .pool_max_idle_per_host(16)
                    .build()
                    .expect("reqwest client (is the rustls ring provider installed?)")
            })
            .clone()
    }

    pub(crate) fn registry(&self) -> &str {
        &self.registry
    }

    pub(crate) fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// `https://host/v2/<path>`.
    pub(crate) fn url(&self, path: &str) -> Url {
        Url::parse(&format!("{}/v2/{path}", self.base_url)).expect("registry URL")
    }

    /// A `Location` header (absolute, or relative to the registry) as a URL.
    pub(crate) fn resolve_location(&self, location: &str) -> Result<Url, RegistryError> {
        Url::parse(&self.base_url)
            .and_then(|base| base.join(location))
            .map_err(|e| self.protocol("upload", format!("bad Location {location:?}: {e}")))
    }

    /// Proves the credentials work for `scopes` with one cheap request, so a bad password fails
    /// clearly before any work.
    pub(crate) async fn authenticate(&self, scopes: &[String]) -> Result<(), RegistryError> {
        let challenge = self.challenge().await?;
        match challenge {
            Challenge::Open => Ok(()),
            Challenge::Bearer { .. } => self.token(scopes, true).await.map(|_| ()),
            Challenge::Basic => {
                let res = self
                    .send(scopes, "authentication", || self.http.get(self.url("")))
                    .await?;
                self.expect_status(res, &[StatusCode::OK], "authentication")
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Sends the request `make` builds, with authorization for `scopes`, retrying connection
    /// errors, 429 and 5xx with backoff, and re-authenticating once on 401. Other answers (404,
    /// 202, 400…) are returned for the caller to read.
    pub(crate) async fn send(
        &self,
        scopes: &[String],
        operation: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut reauthenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self.authorize(make(), scopes, false).await?;
            let failure = match request.send().await {
                Ok(res) if res.status() == StatusCode::UNAUTHORIZED && !reauthenticated => {
                    // An expired token, or the first request before the challenge was known.
                    reauthenticated = true;
                    attempt -= 1;
                    if self.refresh_token(scopes).await? {
                        continue;
                    }
                    return Err(self.unauthorized(&res));
                }
                Ok(res) if matches!(res.status().as_u16(), 401 | 403) => {
                    return Err(self.unauthorized(&res))
                }
                Ok(res) if is_transient_status(res.status()) => {
                    self.unavailable(res, operation).await
                }
                Ok(res) => return Ok(res),
                Err(e) => self.transport_error(&e, operation),
            };
            // A registry that speaks only plain HTTP answers every attempt alike.
            let Some(pause) = self.retry.pause(attempt, &failure).filter(|_| failure.is_transient()) else {
                return Err(failure);
            };
            tracing::debug!(registry = %self.registry, %operation, attempt, error = %failure, ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Sends once, without retry: for requests whose body is a stream that cannot be replayed.
    /// The token for `scopes` must have been fetched by an earlier request (the upload's POST).
    pub(crate) async fn send_once(
        &self,
        scopes: &[String],
        operation: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let request = self.authorize(request, scopes, false).await?;
        match request.send().await {
            Ok(res) if matches!(res.status().as_u16(), 401 | 403) => Err(self.unauthorized(&res)),
            Ok(res) if is_transient_status(res.status()) => Err(self.unavailable(res, operation).await),
            Ok(res) => Ok(res),
            Err(e) => Err(self.transport_error(&e, operation)),
        }
    }

    /// The error for a 429 or 5xx answer: its status, the start of its body, and the pause the
    /// registry asked for, if any.
    async fn unavailable(&self, res: reqwest::Response, operation: &str) -> RegistryError {
        let retry_after = retry_after(&res);
        let status = res.status();
        let mut message = format!("HTTP {status}: {}", body_excerpt(res).await);
        if let Some(pause) = retry_after {
            message.push_str(&format!(" (Retry-After: {} s)", pause.as_secs_f64().ceil()));
        }
        RegistryError::Unavailable {
            registry: self.registry.clone(),
            operation: operation.to_string(),
            message: self.opts.redact(&message),
            retry_after,
        }
    }

    /// Returns `res` when its status is one of `ok`, else a protocol error with the body's start.
    pub(crate) async fn expect_status(
        &self,
        res: reqwest::Response,
        ok: &[StatusCode],
        operation: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        if ok.contains(&res.status()) {
            return Ok(res);
        }
        let status = res.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: self.registry.clone(),
                what: operation.to_string(),
            });
        }
        let message = format!("HTTP {status}: {}", body_excerpt(res).await);
        Err(self.protocol(operation, message))
    }

    /// The whole body of `res`, refused (a protocol error) when it is longer than `limit`: what a
    /// registry answers is read into memory only up to a size it could sensibly be.
    pub(crate) async fn read_limited(
        &self,
        mut res: reqwest::Response,
        limit: usize,
        operation: &str,
    ) -> Result<bytes::Bytes, RegistryError> {
        let too_large = || self.protocol(operation, format!("the answer is larger than {limit} bytes: refused"));
        if res.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| self.transport_error(&e, operation))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    pub(crate) fn protocol(&self, operation: &str, message: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            operation: operation.to_string(),
            message: self.opts.redact(&truncate(&message)),
        }
    }

    pub(crate) fn transport_error(&self, e: &reqwest::Error, operation: &str) -> RegistryError {
        if answered_plain_http(e) {
            return self.opts.plain_http_error(&self.registry);
        }
        if e.is_connect() || e.is_timeout() {
            RegistryError::Unreachable {
                registry: self.registry.clone(),
                reason: self.opts.redact(&connect_reason(e)),
            }
        } else {
            // A connection reset or closed halfway through: as transient as a refused connection.
            RegistryError::Unavailable {
                registry: self.registry.clone(),
                operation: operation.to_string(),
                message: self.opts.redact(&error_chain(e)),
                retry_after: None,
            }
        }
    }

    fn unauthorized(&self, res: &reqwest::Response) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            username: self.auth.username().map(str::to_string),
            detail: format!("HTTP {}", res.status()),
        }
    }

    /// Sends without the registry's authorization (the ping, the token service), retrying
    /// connection errors, 429 and 5xx.
    async fn send_unauthorized(
        &self,
        operation: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match make().send().await {
                Ok(res) if is_transient_status(res.status()) => self.unavailable(res, operation).await,
                Ok(res) => return Ok(res),
                Err(e) => self.transport_error(&e, operation),
            };
            // A registry that speaks only plain HTTP answers every attempt alike.
            let Some(pause) = self.retry.pause(attempt, &failure).filter(|_| failure.is_transient()) else {
                return Err(failure);
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Learns the registry's challenge once, from `GET /v2/`.
    async fn challenge(&self) -> Result<&Challenge, RegistryError> {
        self.challenge
            .get_or_try_init(|| async {
                let res = self
                    .send_unauthorized("ping", || self.http.get(self.url("")))
                    .await?;
                if res.status() != StatusCode::UNAUTHORIZED {
                    return Ok(Challenge::Open);
                }
                let header = res
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                Ok(parse_challenge(header).unwrap_or(Challenge::Basic))
            })
            .await
    }

    /// Adds the Authorization header the registry's challenge asks for.
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        scopes: &[String],
        fresh: bool,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        Ok(match self.challenge().await? {
            Challenge::Open => request,
            Challenge::Basic => match &self.auth {
                RegistryAuth::Basic { username, password } => {
                    request.basic_auth(username, Some(password))
                }
                RegistryAuth::Anonymous => request,
            },
            Challenge::Bearer { .. } => match self.token(scopes, fresh).await? {
                Some(token) => request.bearer_auth(token),
                None => request,
            },
        })
    }

    /// After a 401: fetches a new token. False when nothing would change (basic auth, or no
    /// challenge), so the 401 stands.
    async fn refresh_token(&self, scopes: &[String]) -> Result<bool, RegistryError> {
        match self.challenge().await? {
            Challenge::Bearer { .. } => Ok(self.token(scopes, true).await?.is_some()),
            _ => Ok(false),
        }
    }

    /// A bearer token for `scopes` from the registry's token service, cached per scope set.
    /// Robot accounts (Harbor's `robot$project+name`) are basic credentials exchanged here.
    async fn token(&self, scopes: &[String], fresh: bool) -> Result<Option<String>, RegistryError> {
        let Challenge::Bearer { realm, service } = self.challenge().await? else {
            return Ok(None);
        };
        let mut sorted: Vec<&String> = scopes.iter().collect();
        sorted.sort();
        sorted.dedup();
        let key = sorted
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut tokens = self.tokens.lock().await;
        if !fresh {
            if let Some((t, _)) = tokens.get(&key).filter(|(_, until)| std::time::Instant::now() < *until) {
                return Ok(Some(t.clone()));
            }
        }
        let fetched = std::time::Instant::now();
        let mut url = Url::parse(realm)
            .map_err(|e| self.protocol("authentication", format!("bad token realm: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            for scope in &sorted {
                q.append_pair("scope", scope);
            }
        }
        let res = self
            .send_unauthorized("token", || {
                let request = self.http.get(url.clone());
                match &self.auth {
                    RegistryAuth::Basic { username, password } => {
                        request.basic_auth(username, Some(password))
                    }
                    RegistryAuth::Anonymous => request,
                }
            })
            .await?;
        if matches!(res.status().as_u16(), 401 | 403) {
            return Err(self.unauthorized(&res));
        }
        let res = self
            .expect_status(res, &[StatusCode::OK], "token")
            .await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = self.read_limited(res, TOKEN_ANSWER_LIMIT, "token").await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| self.protocol("token", format!("token answer is not JSON: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| self.protocol("token", "token answer has no token".into()))?;
        tokens.insert(key, (token.clone(), fetched + usable_for(answer.expires_in)));
        Ok(Some(token))
    }

    /// HEAD `path`; `Some(Docker-Content-Digest or "")` when it exists, None on 404.
    pub(crate) async fn head(
        &self,
        scopes: &[String],
        path: &str,
        accept: Option<&str>,
        operation: &str,
    ) -> Result<Option<String>, RegistryError> {
        let url = self.url(path);
        let res = self
            .send(scopes, operation, || {
                let r = self.http.request(Method::HEAD, url.clone());
                match accept {
                    Some(a) => r.header(header::ACCEPT, a),
                    None => r,
                }
            })
            .await?;
        match res.status() {
            StatusCode::OK => Ok(Some(header_str(&res, "docker-content-digest").unwrap_or_default())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => self
                .expect_status(res, &[StatusCode::OK], operation)
                .await
                .map(|_| None),
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The largest token service answer read (a JWT with a certificate chain is a few KiB).
const TOKEN_ANSWER_LIMIT: usize = 1 << 20;

/// How long a token answered with `expires_in` is handed out: its lifetime (60 s when not given,
/// as the token spec says) less a margin, so that no request — above all a streamed upload, which
/// cannot be replayed after a 401 — starts with a token about to expire.
fn usable_for(expires_in: Option<u64>) -> Duration {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(60));
    lifetime - (lifetime / 4).min(Duration::from_secs(30))
}

/// `Retry-After` as a pause: delay-seconds, or an HTTP date (a date past means no pause).
fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    parse_retry_after(res.headers().get(header::RETRY_AFTER)?.to_str().ok()?, chrono::Utc::now())
}

fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

/// 429 and 5xx: worth another try.
fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// A response header as text.
pub(crate) fn header_str(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn body_excerpt(mut res: reqwest::Response) -> String {
    // Only the start is shown, so only the start is read: an error page can be any size.
    let mut start = Vec::new();
    while start.len() < 4096 {
        match res.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            _ => break,
        }
    }
    truncate(&String::from_utf8_lossy(&start))
}

/// `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = after;
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://h.io/service/token",service="harbor-registry",scope="repository:a/b:pull""#),
            Some(Challenge::Bearer {
                realm: "https://h.io/service/token".into(),
                service: Some("harbor-registry".into())
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="kiln-test""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn tokens_are_handed_out_until_a_little_before_they_expire() {
        assert_eq!(usable_for(None), Duration::from_secs(45), "60 s by default, less a quarter");
        assert_eq!(usable_for(Some(1800)), Duration::from_secs(1770), "Harbor's 30 min, less 30 s");
        assert_eq!(usable_for(Some(2)), Duration::from_millis(1500));
        assert_eq!(usable_for(Some(0)), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 29 Nov 2026 10:00:30 GMT", now), Some(Duration::from_secs(30)));
        // A date already past: no pause asked for beyond the backoff.
        assert_eq!(parse_retry_after("Sun, 29 Nov 2026 09:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn a_retry_after_longer_than_the_backoff_is_waited_and_one_beyond_the_limit_ends_the_retries() {
        let p = RetryPolicy::fast(5);
        let asked = |secs: u64| RegistryError::Unavailable {
            registry: "r".into(),
            operation: "o".into(),
            message: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(p.pause(1, &asked(2)), Some(Duration::from_secs(2)));
        assert!(p.pause(1, &asked(0)).unwrap() <= p.max_delay, "the backoff when the asked pause is shorter");
        assert_eq!(p.pause(1, &asked(6)), None, "more than max_retry_after (5 s)");
        assert_eq!(p.pause(5, &asked(1)), None, "attempts spent");
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let p = RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
        };
        let d1 = p.delay(1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d3 = p.delay(3);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
        assert!(p.delay(30) <= Duration::from_secs(1));
    }

    #[test]
    fn every_attempt_but_the_last_is_followed_by_a_pause_within_the_backoff() {
        let p = RetryPolicy::fast(4);
        let refused = RegistryError::Unavailable {
            registry: "r".into(),
            operation: "o".into(),
            message: "HTTP 503".into(),
            retry_after: None,
        };
        for attempt in 1..4 {
            let pause = p.pause(attempt, &refused).expect("attempts left");
            let full = p.first_delay.saturating_mul(1 << (attempt - 1)).min(p.max_delay);
            assert!(pause >= full / 2 && pause <= full, "attempt {attempt}: {pause:?} within half and all of {full:?}");
        }
        assert_eq!(p.pause(4, &refused), None, "attempts spent");
        assert_eq!(p.pause(0, &refused), None, "no attempt made");
    }
}
