//! The web pages: the builds list (`/ui/`), a build with its live log (`/ui/builds/{id}`), the apps
//! (`/ui/apps`) and an app with its releases per cluster (`/ui/apps/{name}`).
//!
//! Plain HTML, CSS and vanilla JS kept under `web/assets/` and embedded in the binary — no npm, no
//! build step. Each page is `layout.html` (head, header, token form) around its own fragment. The
//! pages hold no data and need no token: the script asks for an API token, keeps it in the tab's
//! `sessionStorage` and reads everything from `/api/v1` with `Authorization: Bearer`.
//! Every answer carries a strict Content-Security-Policy (scripts and styles only from Kiln itself,
//! nothing inline), so even a log line that got into the DOM as HTML could not run script.
//!
//! Caching: HTML is `no-cache`; it names its assets with `?v=<hash of every asset>`, and an asset
//! asked for with the current hash is immutable for a year. Every answer has an `ETag`.

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Scripts, styles, images, fetch: only from Kiln itself. No inline script or style, no plugins,
/// no framing, no `<base>`, forms only post to Kiln.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Everything under `/ui/assets/`.
const ASSETS: &[Asset] = &[
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("assets/style.css") },
    Asset { name: "common.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("assets/common.js") },
    Asset { name: "builds.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("assets/builds.js") },
    Asset { name: "build.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("assets/build.js") },
    Asset { name: "apps.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("assets/apps.js") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("assets/app.js") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_bytes!("assets/favicon.svg") },
];

const LAYOUT_HTML: &str = include_str!("assets/layout.html");

/// A short hash of every asset: the `?v=` the pages put on asset URLs, so a new Kiln version is
/// never served stale script from a browser cache.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for a in ASSETS {
        h.update(a.name.as_bytes());
        h.update([0]);
        h.update(a.body);
    }
    hex::encode(&h.finalize()[..6])
});

/// A page with `{{v}}` replaced by [`VERSION`], and its ETag.
struct Page {
    html: String,
    etag: String,
}

/// One page: `layout.html` with its title, its script (`page`.js), the header's link to its
/// section (`nav`) marked current, and its fragment as the main content.
fn page(title: &str, page: &str, nav: &str, main: &str) -> Page {
    let html = LAYOUT_HTML
        .replace("{{main}}", main)
        .replace("{{title}}", title)
        .replace("{{page}}", page)
        .replace("{{script}}", &format!("{page}.js"))
        .replace(&format!("data-nav=\"{nav}\""), &format!("data-nav=\"{nav}\" aria-current=\"page\""))
        .replace("{{v}}", &VERSION);
    let etag = etag_of(html.as_bytes());
    Page { html, etag }
}

static BUILDS_PAGE: LazyLock<Page> = LazyLock::new(|| page("Builds", "builds", "builds", include_str!("assets/builds.html")));
static BUILD_PAGE: LazyLock<Page> = LazyLock::new(|| page("Build", "build", "builds", include_str!("assets/build.html")));
static APPS_PAGE: LazyLock<Page> = LazyLock::new(|| page("Apps", "apps", "apps", include_str!("assets/apps.html")));
static APP_PAGE: LazyLock<Page> = LazyLock::new(|| page("App", "app", "apps", include_str!("assets/app.html")));

fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..8]))
}

/// The headers every answer of the page gets.
fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
}

fn not_modified(req: &HeaderMap, etag: &str) -> bool {
    req.get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn respond(req: &HeaderMap, content_type: &'static str, cache: &'static str, etag: &str, body: &'static [u8]) -> Response {
    let mut res = if not_modified(req, etag) { StatusCode::NOT_MODIFIED.into_response() } else { Body::from(body).into_response() };
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    security_headers(h);
    res
}

fn html(req: &HeaderMap, p: &'static Page) -> Response {
    respond(req, "text/html; charset=utf-8", "no-cache", &p.etag, p.html.as_bytes())
}

fn not_found(what: &str) -> Response {
    let mut res = (StatusCode::NOT_FOUND, format!("{what}\n")).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h);
    res
}

/// `GET /`: the builds list.
pub async fn root() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /ui/`: the builds list.
pub async fn builds_page(req: HeaderMap) -> Response {
    html(&req, &BUILDS_PAGE)
}

/// `GET /ui/builds/{id}`: one build, its steps and its live log.
pub async fn build_page(Path(id): Path<String>, req: HeaderMap) -> Response {
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return not_found("no such build page: a build id is a number");
    }
    html(&req, &BUILD_PAGE)
}

/// `GET /ui/apps`: the apps the token can see.
pub async fn apps_page(req: HeaderMap) -> Response {
    html(&req, &APPS_PAGE)
}

/// `GET /ui/apps/{name}`: one app, its settings, releases per cluster and recent builds.
pub async fn app_page(Path(name): Path<String>, req: HeaderMap) -> Response {
    if crate::validate::dns_label("app", &name).is_err() {
        return not_found("no such app page: an app name is a DNS label");
    }
    html(&req, &APP_PAGE)
}

#[derive(Deserialize, Default)]
pub struct AssetQuery {
    v: Option<String>,
}

/// `GET /ui/assets/{file}`: an embedded asset; immutable when asked for with the current `?v=`.
pub async fn asset(Path(file): Path<String>, Query(q): Query<AssetQuery>, req: HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == file) else {
        return not_found("no such asset");
    };
    let cache = if q.v.as_deref() == Some(VERSION.as_str()) { "public, max-age=31536000, immutable" } else { "no-cache" };
    respond(&req, a.content_type, cache, &format!("\"{}\"", *VERSION), a.body)
}

/// The current asset version (the `?v=` pages use); for tests.
pub fn asset_version() -> &'static str {
    &VERSION
}
