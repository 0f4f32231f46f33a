//! A registry token service, as Harbor's core is to its registry: Basic credentials in, a signed
//! JWT out, granting the asked actions on the repositories the account may use. It pairs with a
//! real `docker-registry` run with `auth: token` ([`TestRegistry::start_with_token`]), which
//! checks every token's signature, issuer, audience, expiry and grants — so a client that asks
//! for too little (no `pull` on a mount's source repository, say) is refused by the registry
//! itself, not by this service.
//!
//! The signing key and its self-signed certificate come from the `openssl` command; tokens are
//! ES256, with the certificate in the `x5c` header, which the registry verifies against the
//! certificate bundle it was given.
//!
//! [`TestRegistry::start_with_token`]: crate::support::registry::TestRegistry::start_with_token

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

pub const SERVICE: &str = "kiln-test-registry";
pub const ISSUER: &str = "kiln-test-token-issuer";

/// One token request as the service saw it.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The Basic user, when the credentials were right.
    pub account: Option<String>,
    /// `repository:NAME:ACTIONS`, as asked.
    pub scopes: Vec<String>,
}

pub struct TokenService {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    /// The certificate the registry trusts (`rootcertbundle`).
    pub cert_file: PathBuf,
    _dir: tempfile::TempDir,
}

struct Shared {
    user: String,
    password: String,
    /// The account may use repositories whose name starts with this (a Harbor project: `team/`).
    allowed_prefix: String,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    requests: Mutex<Vec<TokenRequest>>,
    /// Seconds a token is good for ([`TokenService::set_lifetime`]).
    lifetime: std::sync::atomic::AtomicU64,
}

impl TokenService {
    /// A service for one robot account, `user`/`password`, allowed on `allowed_prefix*`.
    pub async fn start(user: &str, password: &str, allowed_prefix: &str) -> TokenService {
        crate::support::secrets::register(password);
        let dir = tempfile::Builder::new().prefix("kiln-token-").tempdir().unwrap();
        let (key, cert_der, cert_file) = signing_key(dir.path());
        let shared = Arc::new(Shared {
            user: user.into(),
            password: password.into(),
            allowed_prefix: allowed_prefix.into(),
            key,
            cert_der,
            requests: Mutex::new(Vec::new()),
            lifetime: std::sync::atomic::AtomicU64::new(300),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/service/token", axum::routing::get(token)).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenService { addr, shared, server, cert_file, _dir: dir }
    }

    /// The `realm` the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/service/token", self.addr)
    }

    /// Tokens from now on are good for `seconds` (`expires_in`), and the registry accepts them
    /// that long: their `exp` is 60 s earlier, because docker-registry allows 60 s past it.
    pub fn set_lifetime(&self, seconds: u64) {
        self.shared.lifetime.store(seconds, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An ES256 key (PKCS#8 for ring) and its self-signed certificate (DER, and as a PEM file).
fn signing_key(dir: &Path) -> (EcdsaKeyPair, Vec<u8>, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt package openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"]);
    run(&["pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.p8"]);
    run(&["req", "-x509", "-new", "-key", "key.pem", "-subj", "/CN=kiln-test-token-issuer", "-days", "2", "-out", "cert.pem"]);
    run(&["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
    let pkcs8 = std::fs::read(dir.join("key.p8")).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &ring::rand::SystemRandom::new()).unwrap();
    (key, std::fs::read(dir.join("cert.der")).unwrap(), dir.join("cert.pem"))
}

/// `GET /service/token?service=…&scope=…&scope=…`: a token granting, for the right credentials,
/// the asked actions (pull, push) on allowed repositories; for none, nothing; for wrong ones, 401.
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://q/?{query}")).unwrap().query_pairs().into_owned().collect();
    let scopes: Vec<String> = pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let account = match basic_credentials(&headers) {
        None => None,
        Some((user, password)) if user == shared.user && password == shared.password => Some(user),
        Some(_) => {
            shared.requests.lock().unwrap().push(TokenRequest { account: None, scopes });
            return (StatusCode::UNAUTHORIZED, Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]})))
                .into_response();
        }
    };
    shared.requests.lock().unwrap().push(TokenRequest { account: account.clone(), scopes: scopes.clone() });
    let mut access = Vec::new();
    for scope in &scopes {
        // `repository:NAME:ACTIONS`; NAME has no colon (no port in a repository path).
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if account.is_none() || !name.starts_with(&shared.allowed_prefix) {
            continue;
        }
        let granted: Vec<&str> = actions.split(',').filter(|a| matches!(*a, "pull" | "push")).collect();
        access.push(json!({"type": "repository", "name": name, "actions": granted}));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let lifetime = shared.lifetime.load(std::sync::atomic::Ordering::SeqCst);
    let claims = json!({
        "iss": ISSUER,
        "sub": account.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": now + lifetime - 60,
        "nbf": now - 70,
        "iat": now - 70,
        "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let jwt = sign(&shared, &claims);
    Json(json!({"token": jwt, "access_token": jwt, "expires_in": lifetime})).into_response()
}

/// The user and password of `Authorization: Basic …`.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn sign(shared: &Shared, claims: &Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&shared.cert_der)],
    });
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = shared.key.sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64(signature.as_ref()))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
