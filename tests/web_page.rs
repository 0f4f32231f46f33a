//! The web pages: their routes and headers through the router, and in headless Chromium: the build
//! page following a real build's log live (lines appear, colours, hostile text shown as text, a
//! cut stream resumed without a repeated or missing line, the final state the API reports), its
//! commit, times, foldable steps, log search, cancel and retry; an app page's releases and a
//! rollback the fake cluster's Deployment follows; what a viewer is not offered (and the API
//! refuses anyway); a token kept per tab, and any 401 bringing back the token form.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use builder_api::store::BuildState;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::rollouts::{image_of, RolloutWorld, D1, D3, EAST};
use crate::support::browser::{Browser, Page};
use crate::support::fixtures::{app_spec, GitlabPush};
use crate::support::git_server::GitServer;
use crate::support::kiln::{test_config, TestKiln};

const GIT_TOKEN: &str = "glpat-web-page-token";
/// What a line must not do when it reaches the page.
const HOSTILE: &str = "<img src=x onerror=window.kilnPwned=1> & </div><script>window.kilnPwned=2</script>";

async fn get(kiln: &TestKiln, path: &str, headers: &[(&str, &str)]) -> (Response, String) {
    let mut req = Request::builder().method(Method::GET).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = kiln.router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (Response::from_parts(parts, Body::empty()), String::from_utf8_lossy(&bytes).into_owned())
}

fn h<'a>(res: &'a Response, name: header::HeaderName) -> &'a str {
    res.headers().get(&name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

fn assert_strict_csp(res: &Response) {
    let csp = h(res, header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'") && csp.contains("object-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains('*'), "{csp}");
    assert_eq!(h(res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
}

#[tokio::test]
async fn the_pages_and_assets_are_served_without_a_token_with_types_cache_headers_and_a_strict_csp() {
    let kiln = TestKiln::start(&[]).await;
    let v = builder_api::web::asset_version();

    for path in ["/ui/", "/ui/builds/1", "/ui/builds/123456", "/ui/apps", "/ui/apps/hello"] {
        let (res, body) = get(&kiln, path, &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(h(&res, header::CONTENT_TYPE), "text/html; charset=utf-8", "{path}");
        assert_eq!(h(&res, header::CACHE_CONTROL), "no-cache", "{path}");
        assert_strict_csp(&res);
        assert!(body.starts_with("<!doctype html>"), "{path}: {body}");
        assert!(!body.contains("{{v}}"), "{path}: the asset version was not filled in");
        // Scripts only by URL, never inline; every asset URL carries the version.
        let scripts: Vec<&str> = body.match_indices("<script").map(|(i, _)| &body[i..i + body[i..].find('>').unwrap()]).collect();
        assert!(!scripts.is_empty() && scripts.iter().all(|s| s.contains(&format!(".js?v={v}\""))), "{path}: {scripts:?}");
        assert!(!body.contains("style=") && !body.contains("onclick") && !body.contains("<style"), "{path}: inline style or handler");
        // A page answers 304 to its own ETag.
        let etag = h(&res, header::ETAG).to_string();
        let (res, body) = get(&kiln, path, &[("if-none-match", &etag)]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(body.is_empty());
    }
    let mut etags = vec![];
    for path in ["/ui/", "/ui/builds/1", "/ui/apps", "/ui/apps/hello"] {
        let (res, body) = get(&kiln, path, &[]).await;
        etags.push(h(&res, header::ETAG).to_string());
        // Every page is the layout around its own part: the token form, the header, its script.
        assert!(body.contains("id=\"token-form\"") && body.contains("aria-current=\"page\""), "{path}: {body}");
        assert!(!body.contains("{{"), "{path}: a placeholder was left: {body}");
    }
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 4, "two pages, one ETag");

    for (file, ty) in [
        ("style.css", "text/css; charset=utf-8"),
        ("common.js", "text/javascript; charset=utf-8"),
        ("builds.js", "text/javascript; charset=utf-8"),
        ("build.js", "text/javascript; charset=utf-8"),
        ("apps.js", "text/javascript; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let (res, body) = get(&kiln, &format!("/ui/assets/{file}?v={v}"), &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "{file}");
        assert_eq!(h(&res, header::CONTENT_TYPE), ty, "{file}");
        assert_eq!(h(&res, header::CACHE_CONTROL), "public, max-age=31536000, immutable", "{file}");
        assert_strict_csp(&res);
        assert!(!body.is_empty());
        // Without the current version (an old page, a hand-typed URL): revalidated every time.
        let (res, _) = get(&kiln, &format!("/ui/assets/{file}"), &[]).await;
        assert_eq!(h(&res, header::CACHE_CONTROL), "no-cache", "{file}");
        let etag = h(&res, header::ETAG).to_string();
        let (res, _) = get(&kiln, &format!("/ui/assets/{file}"), &[("if-none-match", &etag)]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{file}");
    }

    for path in ["/ui/assets/nope.js", "/ui/assets/..%2FCargo.toml", "/ui/assets/style.css.map", "/ui/builds/abc", "/ui/builds/1/x", "/ui/nope", "/ui/apps/Not_An_App", "/ui/apps/a/b"] {
        let (res, _) = get(&kiln, path, &[]).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }

    for from in ["/", "/ui"] {
        let (res, _) = get(&kiln, from, &[]).await;
        assert!(res.status().is_redirection(), "{from}: {}", res.status());
        assert_eq!(h(&res, header::LOCATION), "/ui/", "{from}");
    }

    // The page holds no data: the API still wants a token.
    let (status, _) = kiln.request(Method::GET, "/api/v1/builds", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A stand-in for `go` that prints 90 numbered lines, one every 60 ms, among them one in colour and
/// one that looks like HTML, then exits 0 (the image step then fails for want of an artifact).
fn chatty_compiler() -> String {
    format!(
        "i=1\nwhile [ $i -le 90 ]; do\n  case $i in\n    20) printf '\\033[1;31mred alert\\033[0m and \\033[92mgreen\\033[0m plain\\n' ;;\n    \
         30) printf '%s\\n' '{HOSTILE}' ;;\n    45) echo \"warning line $i\" >&2 ;;\n    *) echo \"chatty line $i\" ;;\n  esac\n  i=$((i+1))\n  sleep 0.06\ndone"
    )
}

/// Kiln whose `go` is the shell script `compiler`, a git server (token-protected) holding a small
/// Go module as `team/NAME`, and the app NAME that builds it, made by tenant `web`'s owner.
struct GoApp {
    git: GitServer,
    kiln: TestKiln,
    /// The owner's token.
    token: String,
    name: String,
    /// The repository's one commit.
    sha: String,
}

impl GoApp {
    async fn start(name: &str, compiler: &str) -> GoApp {
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join(format!("{name}-go"));
        std::fs::write(&script, format!("#!/bin/sh\n{compiler}\n")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut config = test_config(dir.path(), &[]);
        config.toolchains.go = script.display().to_string();
        let kiln = TestKiln::start_with(dir, config).await;
        let token = kiln.tenant("web").await;
        let path = format!("team/{name}");
        let repo = git.create_repo(&path);
        let module = format!("module example.com/{name}\n\ngo 1.19\n");
        let sha = repo.commit_files(&[("go.mod", module.as_bytes(), false), ("main.go", b"package main\n\nfunc main() {}\n", false)], name);
        let mut spec = app_spec(name, &git.url(&path), &path, &format!("127.0.0.1:9/{path}"), &Self::secret(name));
        spec["git_token"] = GIT_TOKEN.into();
        kiln.app(&token, spec).await;
        GoApp { git, kiln, token, name: name.into(), sha }
    }

    fn secret(name: &str) -> String {
        format!("secret-{name}")
    }

    /// A build of the commit through the API; its id.
    async fn trigger(&self) -> i64 {
        self.kiln.trigger(&self.token, &self.name, json!({"commit": self.sha, "ref": "main"})).await
    }

    /// A build of the commit by a GitLab push to `main` whose head commit has this message and
    /// author; its id and the push.
    async fn push(&self, message: &str, author: &str) -> (i64, GitlabPush) {
        let path = format!("team/{}", self.name);
        let push = GitlabPush::branch(&path, &self.git.url(&path), "main", &self.sha).with_head_commit(message, author);
        (self.kiln.push_hook(&push, &Self::secret(&self.name)).await, push)
    }
}

/// A new tab at `url`, signed in with `token` through the page's token form (the token then
/// lives in that tab only).
async fn signed_in(browser: &Browser, url: &str, token: &str) -> Page {
    let page = browser.new_page().await;
    page.navigate(url).await;
    page.wait_for("the token form", "!document.getElementById('token-form').hidden", Duration::from_secs(10)).await;
    page.eval(&format!(
        "document.getElementById('token-input').value = {}; document.getElementById('token-form').requestSubmit()",
        Value::from(token)
    ))
    .await;
    page
}

/// Where test artifacts go: `<target dir>/test-artifacts/`.
fn artifacts_dir() -> PathBuf {
    // CARGO_BIN_EXE_kiln is <target>/<profile>/kiln.
    Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap().parent().unwrap().join("test-artifacts")
}

fn strip_sgr(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 2..];
        let end = tail.find(|c: char| c.is_ascii_alphabetic()).map(|e| e + 1).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_build_page_follows_a_running_build_live_and_shows_the_final_state() {
    let t0 = Instant::now();
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    let downloads = tempfile::tempdir().unwrap();
    browser.allow_downloads(downloads.path()).await;

    let app = GoApp::start("chatty", &chatty_compiler()).await;
    let (kiln, token, sha) = (&app.kiln, &app.token, &app.sha);
    let id = app.trigger().await;
    kiln.wait_state(id, BuildState::Running, Duration::from_secs(30)).await;

    // Open the build page while the build runs: without a token it asks for one.
    page.navigate(&kiln.url(&format!("/ui/builds/{id}"))).await;
    page.wait_for("the token form", "!document.getElementById('token-form').hidden", Duration::from_secs(10)).await;
    page.eval(&format!("sessionStorage.setItem('kiln.token', {})", Value::from(token.clone()))).await;
    page.reload().await;

    // Lines appear, and more follow while the build is still running.
    let first = page
        .wait_for("the first log lines", "document.querySelectorAll('#log .line').length", Duration::from_secs(20))
        .await
        .as_u64()
        .unwrap();
    assert!(!kiln.build(id).await.state.is_final(), "the build ended before the page showed its first lines; nothing was live");
    page.wait_for(
        "more lines while the build runs",
        &format!("document.querySelectorAll('#log .line').length > {first}"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(page.eval("document.getElementById('b-app').textContent").await, "chatty");
    assert_eq!(page.eval("document.getElementById('b-commit').title").await, sha.as_str());
    assert_eq!(page.eval("document.getElementById('b-ref').textContent").await, "main");

    // The reader scrolls up: the log stops following, and new lines do not move it.
    page.wait_for(
        "a log taller than its box",
        "(l => l.scrollHeight > l.clientHeight + 60 && l.scrollTop > 0)(document.getElementById('log'))",
        Duration::from_secs(20),
    )
    .await;
    let before = page
        .eval("(() => { const l = document.getElementById('log'); l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); return window.kilnBuildPage.lineCount; })()")
        .await
        .as_u64()
        .unwrap();
    assert!(!kiln.build(id).await.state.is_final(), "the build ended too soon to check scrolling while live");
    // Cut the stream mid-build too: the page reconnects with Last-Event-ID (checked below: no
    // line twice, none missing).
    page.eval("window.kilnBuildPage.abortStream()").await;
    // Lines already read before the cut may still be rendering: wait for the reconnect itself.
    page.wait_for("the stream reopened", "window.kilnBuildPage.connections >= 2", Duration::from_secs(20)).await;
    page.wait_for("lines while scrolled up", &format!("window.kilnBuildPage.lineCount > {before}"), Duration::from_secs(20)).await;
    assert_eq!(page.eval("window.kilnBuildPage.connections").await, 2, "the cut stream was reopened more than once");
    assert_eq!(page.eval("document.getElementById('log').scrollTop").await, 0, "new lines scrolled the log while the reader was up");
    assert_eq!(page.eval("document.getElementById('follow').hidden").await, false, "no way back to following");
    // Back to the bottom: following resumes.
    page.eval("document.getElementById('follow').click()").await;

    // The end: the page shows the state the API reports.
    page.wait_for(
        "the final state",
        "document.getElementById('b-state').dataset.final === '1' && document.body.dataset.stream === 'ended'",
        Duration::from_secs(60),
    )
    .await;
    let build = kiln.wait_final(id, Duration::from_secs(10)).await;
    let (_, api) = kiln.request(Method::GET, &format!("/api/v1/builds/{id}"), Some(token), None).await;
    let api_state = api["build"]["state"].as_str().unwrap().to_string();
    assert_eq!(api_state, build.state.as_str());
    let shown = page.eval("document.getElementById('b-state').textContent").await;
    assert_eq!(shown, api_state.as_str(), "the page shows {shown}, the API says {api_state}");
    if let Some(reason) = api["build"]["reason"].as_str() {
        page.wait_for("the reason", &format!("document.getElementById('b-reason').textContent === {}", Value::from(reason)), Duration::from_secs(10))
            .await;
    }
    page.wait_for("the duration", "document.getElementById('b-duration').textContent.endsWith('s')", Duration::from_secs(10)).await;
    // The steps, from step events.
    let steps = page.eval("[...document.querySelectorAll('#steps .step')].map(s => s.dataset.step + ': ' + s.querySelector('.step-status').textContent)").await;
    let steps: Vec<String> = serde_json::from_value(steps).unwrap();
    assert!(steps.iter().any(|s| s.starts_with("clone: succeeded in ")), "{steps:?}");
    assert!(steps.iter().any(|s| s.starts_with("compile: succeeded in ")), "{steps:?}");
    assert!(steps.iter().all(|s| !s.ends_with(": running")), "a step still shown running: {steps:?}");

    // Every stored line exactly once, in order, shown as text (colours stripped into spans).
    page.wait_for(
        "every line in the DOM",
        &format!("document.querySelectorAll('#log .line').length >= {}", kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap().len()),
        Duration::from_secs(10),
    )
    .await;
    let shown: Vec<(i64, String)> =
        serde_json::from_value(page.eval("[...document.querySelectorAll('#log .line')].map(l => [Number(l.dataset.seq), l.textContent])").await).unwrap();
    let stored = kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap();
    assert_eq!(shown.len(), stored.len(), "lines shown vs stored");
    for (s, l) in shown.iter().zip(&stored) {
        assert_eq!(s.0, l.seq, "line order");
        assert_eq!(s.1, strip_sgr(&l.line), "line {}", l.seq);
    }
    assert_eq!(shown.iter().filter(|(_, t)| t.starts_with("chatty line ")).count(), 87);
    assert_eq!(page.eval("document.getElementById('line-count').textContent").await, stored.len().to_string());

    // The hostile line is text: no element made from it, nothing ran.
    assert!(shown.iter().any(|(_, t)| t == HOSTILE), "the HTML-looking line is not shown literally");
    assert_eq!(page.eval("document.querySelectorAll('#log img, #log script').length").await, 0);
    assert_eq!(page.eval("typeof window.kilnPwned").await, "undefined");
    // Colours: spans with classes; step headers stand out; stderr is marked.
    assert_eq!(page.eval("document.querySelector('#log span.fg-31.bold').textContent").await, "red alert");
    assert_eq!(page.eval("document.querySelector('#log span.fg-92').textContent").await, "green");
    assert!(page.eval("document.querySelectorAll('#log .line.step-header').length").await.as_u64().unwrap() >= 4);
    assert_eq!(page.eval("document.querySelector('#log .line.stderr').textContent").await, "warning line 45");
    // …but not coloured as an error: both streams look alike, as in GitLab and Tekton.
    let colours = page
        .eval("[...document.querySelectorAll('#log .line')].filter(l => l.textContent.startsWith('chatty line ') || l.classList.contains('stderr')).map(l => getComputedStyle(l).color)")
        .await;
    let colours: std::collections::BTreeSet<String> = serde_json::from_value(colours).unwrap();
    assert_eq!(colours.len(), 1, "stdout and stderr lines in different colours: {colours:?}");
    assert_eq!(
        page.eval("getComputedStyle(document.querySelector('#log .line.step-header')).fontWeight").await,
        "700",
        "step headers are bold"
    );

    // Still following the bottom at the end, whatever the header did meanwhile.
    page.wait_for(
        "the log at its bottom",
        "(l => l.scrollTop + l.clientHeight >= l.scrollHeight - 8)(document.getElementById('log')) && document.getElementById('follow').hidden",
        Duration::from_secs(5),
    )
    .await;

    let shot = artifacts_dir().join("build-page.png");
    page.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());

    // For people: the coloured and the hostile lines.
    page.eval("document.querySelector('#log span.fg-31').scrollIntoView({block: 'center'})").await;
    page.screenshot(&artifacts_dir().join("build-page-colours.png")).await;

    // The raw log download: the same text the API serves.
    page.eval("document.getElementById('download').click()").await;
    let file = downloads.path().join(format!("chatty-build-{id}.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(Instant::now() < deadline, "no download at {}: {:?}", file.display(), std::fs::read_dir(downloads.path()).unwrap().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), kiln.log(id).await);

    // The builds list: this build, its state, a link to its page.
    page.navigate(&kiln.url("/ui/")).await;
    let row_state = page
        .wait_for(
            "the build in the list",
            &format!("(r => r && r.querySelector('.state').textContent)(document.querySelector('#builds tr[data-id=\"{id}\"]'))"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(row_state, api_state.as_str());
    assert_eq!(page.eval(&format!("document.querySelector('#builds tr[data-id=\"{id}\"] a').getAttribute('href')")).await, format!("/ui/builds/{id}"));
    page.screenshot(&artifacts_dir().join("builds-list.png")).await;

    assert!(!page.console().contains("uncaught"), "the page threw:\n{}", page.console());
    println!("web page test took {:.1}s", t0.elapsed().as_secs_f64());
}

#[tokio::test]
async fn the_page_sse_parser_and_colours_handle_any_chunking_and_a_refused_token_asks_again() {
    let kiln = TestKiln::start(&[]).await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&kiln.url("/ui/builds/1")).await;
    page.wait_for("the page script", "typeof Kiln === 'object'", Duration::from_secs(10)).await;
    // Events split at every possible place, CRLF and CR line ends, comments, multi-line data, a
    // multi-byte character; the result must not depend on the chunking.
    let result = page
        .eval(
            r#"(() => {
                const text = ': keep-alive\r\n\r\nevent: line\r\nid: 7\r\ndata: {"line":"é ✓"}\r\n\r\n: ka\n\nevent: step\nid: 8\ndata: a\ndata: b\n\nevent: end\rdata: {"state":"Failed"}\r\r';
                const runs = [];
                for (const size of [1, 2, 3, 5, 8, 13, text.length]) {
                    const p = new Kiln.SseParser();
                    const out = [];
                    for (let i = 0; i < text.length; i += size) out.push(...p.feed(text.slice(i, i + size)));
                    runs.push(JSON.stringify({ out, lastId: p.lastId }));
                }
                return runs;
            })()"#,
        )
        .await;
    let runs: Vec<String> = serde_json::from_value(result).unwrap();
    let want = json!({"out": [
        {"event": "line", "id": "7", "data": "{\"line\":\"é ✓\"}"},
        {"event": "step", "id": "8", "data": "a\nb"},
        {"event": "end", "id": null, "data": "{\"state\":\"Failed\"}"},
    ], "lastId": "8"});
    for r in runs {
        assert_eq!(serde_json::from_str::<Value>(&r).unwrap(), want);
    }
    // A refused token: the page says so and asks for another.
    page.eval("sessionStorage.setItem('kiln.token', 'not-a-token')").await;
    page.navigate(&kiln.url("/ui/")).await;
    page.wait_for(
        "the token form after a 401",
        "!document.getElementById('token-form').hidden && document.getElementById('builds-section').hidden && document.getElementById('error').textContent.includes('refused')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(page.eval("sessionStorage.getItem('kiln.token')").await, Value::Null, "a refused token is kept");
    let segs = page.eval(r#"Kiln.ansiSegments('\x1b[1;31mred\x1b[0m plain \x1b[92mgreen\x1b[39m x\x1b[K\x1b[38;5;202m256')"#).await;
    assert_eq!(segs, json!([["red", "fg-31 bold"], [" plain ", ""], ["green", "fg-92"], [" x", ""], ["256", ""]]));
}

#[tokio::test]
async fn the_build_page_renders_a_long_log_in_a_few_batches() {
    const LINES: usize = 20_000;
    // 20 000 lines at once, every tenth in colour.
    let app = GoApp::start(
        "loud",
        &format!("i=1\nwhile [ $i -le {LINES} ]; do\n  if [ $((i % 10)) -eq 0 ]; then printf '\\033[36mline %d\\033[0m\\n' $i; else echo \"line $i\"; fi\n  i=$((i+1))\ndone"),
    )
    .await;
    let (kiln, token) = (&app.kiln, &app.token);
    let id = app.trigger().await;
    kiln.wait_final(id, Duration::from_secs(120)).await;
    let stored = kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap().len();
    assert!(stored > LINES, "{stored} lines stored");

    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&kiln.url("/ui/")).await;
    page.wait_for("the page", "document.readyState === 'complete'", Duration::from_secs(10)).await;
    page.eval(&format!("sessionStorage.setItem('kiln.token', {})", Value::from(token.clone()))).await;
    let t = Instant::now();
    page.navigate(&kiln.url(&format!("/ui/builds/{id}"))).await;
    page.wait_for(
        "every line shown",
        &format!("window.kilnBuildPage && window.kilnBuildPage.lineCount === {stored} && document.body.dataset.stream === 'ended'"),
        Duration::from_secs(60),
    )
    .await;
    let took = t.elapsed();
    let flushes = page.eval("window.kilnBuildPage.flushes").await.as_u64().unwrap();
    println!("{stored} lines shown in {:.2}s in {flushes} DOM insertions", took.as_secs_f64());
    assert_eq!(page.eval("document.querySelectorAll('#log .line').length").await, stored);
    assert_eq!(page.eval("document.querySelectorAll('#log span.fg-36').length").await, LINES / 10);
    assert!(flushes * 100 < stored as u64, "{flushes} DOM insertions for {stored} lines: not batched");
    assert!(took < Duration::from_secs(20), "{stored} lines took {took:?}");
    // Followed to the bottom.
    assert_eq!(page.eval("(l => l.scrollTop + l.clientHeight >= l.scrollHeight - 8)(document.getElementById('log'))").await, true);
}

/// `go` for the build page's buttons: some lines (two of them name a needle, one on stderr), then
/// — while the file `hold` exists — a line every 200 ms until cancelled, else a compile error.
fn held_compiler(hold: &Path) -> String {
    format!(
        "echo compiling\ni=1\nwhile [ $i -le 30 ]; do echo \"progress line $i\"; i=$((i+1)); done\necho 'needle: the first'\n\
         echo 'hay'\necho 'the second NEEDLE' >&2\nwhile [ -f '{}' ]; do echo 'still compiling'; sleep 0.2; done\n\
         echo './main.go:3:1: syntax error: unexpected boom' >&2\nexit 2",
        hold.display()
    )
}

/// What the page shows of one element, by id.
async fn text(page: &Page, id: &str) -> String {
    page.eval(&format!("document.getElementById('{id}').textContent")).await.as_str().unwrap_or_default().to_string()
}

async fn shown(page: &Page, id: &str) -> bool {
    page.eval(&format!("(e => !!e && !e.hidden && e.offsetParent !== null)(document.getElementById('{id}'))")).await == Value::Bool(true)
}

/// An API call made by the page itself with its token: the status it got (200 for success).
async fn page_post(page: &Page, path: &str, body: Value) -> u64 {
    let expr = format!("Kiln.post({}, {body}).then(() => 200, e => e.status)", Value::from(path));
    page.eval(&expr).await.as_u64().unwrap()
}

/// A build pushed with a commit message is shown with it, its author, a link to the commit,
/// its times; its steps fold; the log search marks the matching lines and walks them; a
/// developer-or-better cancels it while it runs and retries it once failed (and lands on the new
/// build); in another tab a viewer's token sees neither button, and the API refuses them.
#[tokio::test]
async fn the_build_page_shows_the_commit_folds_steps_searches_the_log_cancels_and_retries() {
    let hold = tempfile::NamedTempFile::new().unwrap();
    let app = GoApp::start("buttons", &held_compiler(hold.path())).await;
    let kiln = &app.kiln;
    let (id, push) = app.push("Fix the login form\n\nThe password was lost on a retry.", "Ada Lovelace").await;
    kiln.wait_state(id, BuildState::Running, Duration::from_secs(30)).await;

    let browser = Browser::launch().await;
    let page = signed_in(&browser, &kiln.url(&format!("/ui/builds/{id}")), &app.token).await;
    page.wait_for("the build held in its compile step", "[...document.querySelectorAll('#log .line')].some(l => l.textContent === 'still compiling')", Duration::from_secs(30)).await;
    assert!(!kiln.build(id).await.state.is_final());

    // The commit as the push described it, and when things happened.
    assert_eq!(text(&page, "b-title").await, "Fix the login form");
    assert_eq!(text(&page, "b-author").await, "Ada Lovelace");
    assert_eq!(page.eval("document.getElementById('b-commit-link').href").await, push.commit_url().as_str());
    assert_eq!(text(&page, "b-trigger").await, "webhook");
    let build = kiln.build(id).await;
    let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(page.eval("document.getElementById('b-queued').getAttribute('datetime')").await, iso(build.queued_at).as_str());
    assert_eq!(page.eval("document.getElementById('b-started').getAttribute('datetime')").await, iso(build.started_at.unwrap()).as_str());
    assert!(text(&page, "b-wait").await.starts_with("(waited "));
    assert_eq!(text(&page, "b-finished").await, "—");

    // A developer or better may cancel a running build; retry is for a finished one.
    assert!(shown(&page, "cancel").await && !shown(&page, "retry").await);

    // In another tab the owner's token is unknown (it stays in its tab): a viewer signs in there
    // and is offered neither button; the API refuses what the page does not offer.
    let (_, viewer) = crate::isolation::new_token(kiln, &app.token, "web", "viewer").await;
    let other = signed_in(&browser, &kiln.url(&format!("/ui/builds/{id}")), &viewer).await;
    other.wait_for("the viewer's page", "document.getElementById('b-state').textContent !== '' && document.getElementById('whoami').textContent === 'web · viewer'", Duration::from_secs(10)).await;
    assert!(!shown(&other, "cancel").await && !shown(&other, "retry").await, "a viewer is offered cancel or retry");
    assert_eq!(page_post(&other, &format!("/api/v1/builds/{id}/cancel"), Value::Null).await, 403);
    assert_eq!(page_post(&other, &format!("/api/v1/builds/{id}/retry"), Value::Null).await, 403);
    assert!(!kiln.build(id).await.state.is_final(), "the viewer's cancel went through");
    page.call("Page.bringToFront", json!({})).await; // the owner's tab again

    // Fold the compile step from its header line: its lines hide, its header stays. Unfold it
    // from the steps above the log.
    page.eval("document.querySelector('.log-group[data-step=\"compile\"] .step-toggle').click()").await;
    let folded = "(g => g.classList.contains('collapsed') && g.querySelector('.log-group-body').offsetParent === null && g.querySelector('.step-toggle').getAttribute('aria-expanded') === 'false')(document.querySelector('.log-group[data-step=\"compile\"]'))";
    assert_eq!(page.eval(folded).await, true);
    assert_eq!(page.eval("document.querySelector('#steps .step[data-step=\"compile\"] .step-name').getAttribute('aria-expanded')").await, "false");
    page.eval("document.querySelector('#steps .step[data-step=\"compile\"] .step-name').click()").await;
    assert_eq!(page.eval("document.querySelector('.log-group[data-step=\"compile\"]').classList.contains('collapsed')").await, false);

    // Search: fold the step again; a search finds its lines anyway and unfolds it.
    page.eval("document.querySelector('.log-group[data-step=\"compile\"] .step-toggle').click()").await;
    page.eval("(i => { i.value = 'needle'; i.dispatchEvent(new Event('input')); })(document.getElementById('search-input'))").await;
    page.wait_for("two matches", "document.getElementById('search-count').textContent === '1 of 2 matches'", Duration::from_secs(5)).await;
    let matched: Vec<String> = serde_json::from_value(page.eval("[...document.querySelectorAll('#log .line.match')].map(l => l.textContent)").await).unwrap();
    assert_eq!(matched, ["needle: the first", "the second NEEDLE"]);
    let current = "(l => [l.textContent, l.closest('.log-group').classList.contains('collapsed'), (r => r.top >= 0 && r.bottom <= innerHeight)(l.getBoundingClientRect())])(document.querySelector('#log .line.current-match'))";
    assert_eq!(page.eval(current).await, json!(["needle: the first", false, true]), "the first match is not shown");
    page.eval("document.getElementById('search-next').click()").await;
    assert_eq!(page.eval(current).await, json!(["the second NEEDLE", false, true]));
    assert_eq!(text(&page, "search-count").await, "2 of 2 matches");
    page.eval("document.getElementById('search-next').click()").await;
    assert_eq!(page.eval(current).await, json!(["needle: the first", false, true]), "next after the last goes around");
    page.eval("document.getElementById('search-prev').click()").await;
    assert_eq!(text(&page, "search-count").await, "2 of 2 matches");
    // Lines that arrive while searching are matched as they come.
    page.eval("(i => { i.value = 'still compiling'; i.dispatchEvent(new Event('input')); })(document.getElementById('search-input'))").await;
    let before = page.wait_for("matches", "document.querySelectorAll('#log .line.match').length", Duration::from_secs(5)).await.as_u64().unwrap();
    page.wait_for("new matching lines", &format!("document.querySelectorAll('#log .line.match').length > {before}"), Duration::from_secs(10)).await;
    page.screenshot(&artifacts_dir().join("build-page-search.png")).await;

    // Cancel from the page: the build ends Cancelled, the page says so and offers a retry.
    page.eval("document.getElementById('cancel').click()").await;
    page.wait_for("the cancelled state", "document.getElementById('b-state').textContent === 'Cancelled' && document.body.dataset.stream === 'ended'", Duration::from_secs(30)).await;
    assert_eq!(kiln.wait_final(id, Duration::from_secs(10)).await.state, BuildState::Cancelled);
    page.wait_for("retry offered", "!document.getElementById('retry').hidden && document.getElementById('cancel').hidden", Duration::from_secs(10)).await;
    let finished = kiln.build(id).await.finished_at.unwrap();
    page.wait_for("the finish time", &format!("document.getElementById('b-finished').getAttribute('datetime') === {}", Value::from(iso(finished))), Duration::from_secs(10)).await;
    let audit = kiln.ctx.store.audit_log(None, 100).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "build.cancel" && e.target == format!("build/{id}")), "{audit:?}");

    // A build that fails; retried from its page, which then shows the new build.
    std::fs::remove_file(hold.path()).unwrap();
    let failed = app.trigger().await;
    kiln.ended(failed, BuildState::Failed, Duration::from_secs(60)).await;
    page.navigate(&kiln.url(&format!("/ui/builds/{failed}"))).await;
    page.wait_for("the failed build", "document.getElementById('b-state').textContent === 'Failed' && !document.getElementById('retry').hidden", Duration::from_secs(10)).await;
    assert!(!shown(&page, "cancel").await);
    assert!(text(&page, "b-reason").await.contains("syntax error: unexpected boom"));
    page.eval("document.getElementById('retry').click()").await;
    let path = page.wait_for("the new build's page", &format!("location.pathname !== '/ui/builds/{failed}' && document.getElementById('b-trigger').textContent === 'retry' && location.pathname"), Duration::from_secs(10)).await;
    let retried: i64 = path.as_str().unwrap().trim_start_matches("/ui/builds/").parse().unwrap();
    let new = kiln.build(retried).await;
    assert_eq!((new.trigger.as_str(), new.commit.as_str(), new.app.as_str()), ("retry", app.sha.as_str(), "buttons"));
    kiln.wait_final(retried, Duration::from_secs(60)).await;
    assert!(!page.console().contains("uncaught"), "the page threw:\n{}", page.console());
}

/// An owner opens the app's page: its settings (secrets only as set or not), the release each
/// cluster runs with its history, a rollback button on the earlier release. Cancelling the
/// confirmation does nothing; confirming patches the Deployment on the fake API server to that
/// digest and the page shows the new current release. A viewer (in another tab) gets no
/// rollback button, and the API refuses the rollback anyway.
#[tokio::test]
async fn an_owner_rolls_an_app_back_from_its_page_and_the_deployment_and_the_page_follow() {
    let (w, b1, b3) = RolloutWorld::east_released_twice().await;
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{D3}"));
    let patches = w.east.count("patch", "deployments");

    let browser = Browser::launch().await;
    let page = signed_in(&browser, &w.kiln.url("/ui/apps"), &w.token).await;
    // The apps list links the app.
    page.wait_for("the app in the list", "document.querySelector('#apps tr[data-app=\"hello\"] a')", Duration::from_secs(10)).await;
    page.eval("document.querySelector('#apps tr[data-app=\"hello\"] a').click()").await;
    let east = "document.querySelector('.release[data-cluster=\"east\"]')";
    let current = format!("(r => r && [r.querySelector('.current-digest').dataset.digest, r.querySelector('.current a').textContent])({east})");
    page.wait_for("east's release", &format!("location.pathname === '/ui/apps/hello' && {current}"), Duration::from_secs(10)).await;
    assert_eq!(page.eval(&current).await, json!([D3, format!("#{b3}")]));

    // Settings: secrets are never shown, only whether they are set.
    let setting = |key: &str| format!("document.querySelector('#a-settings [data-key=\"{key}\"] dd').textContent");
    assert_eq!(page.eval(&setting("image_repository")).await, format!("{EAST}/team/hello").as_str());
    assert_eq!(page.eval(&setting("git_token")).await, "not set");
    assert_eq!(page.eval(&setting("webhook_secret")).await, "set (never shown)");
    assert!(!page.eval("document.body.innerText").await.as_str().unwrap().contains("hello-hook-secret"));
    // The history, newest first; one rollback button, on the earlier release.
    let rows: Vec<(String, String)> = serde_json::from_value(page.eval(&format!("[...{east}.querySelectorAll('tbody tr')].map(t => [t.dataset.digest, t.dataset.state])")).await).unwrap();
    assert_eq!(rows, [(D3.to_string(), "Complete".to_string()), (D1.to_string(), "Complete".to_string())]);
    let buttons: Vec<String> = serde_json::from_value(page.eval(&format!("[...{east}.querySelectorAll('button.rollback')].map(b => b.closest('tr').dataset.digest)")).await).unwrap();
    assert_eq!(buttons, [D1]);
    // The recent builds.
    let builds: Vec<String> = serde_json::from_value(page.eval("[...document.querySelectorAll('#builds tr')].map(t => t.dataset.id)").await).unwrap();
    assert_eq!(builds, [b3.to_string(), b1.to_string()]);

    // A viewer in another tab: no rollback button; the API says no.
    let (_, viewer) = crate::isolation::new_token(&w.kiln, &w.token, "team", "viewer").await;
    let other = signed_in(&browser, &w.kiln.url("/ui/apps/hello"), &viewer).await;
    other.wait_for("the viewer's releases", &format!("{east} && document.getElementById('whoami').textContent === 'team · viewer'"), Duration::from_secs(10)).await;
    assert_eq!(other.eval("document.querySelectorAll('button.rollback').length").await, 0, "a viewer is offered a rollback");
    assert_eq!(page_post(&other, "/api/v1/apps/hello/rollback", json!({"digest": D1, "cluster": "east"})).await, 403);

    // Back to the owner's tab (the one in front is the viewer's: a tab in the background gets
    // its events late).
    page.call("Page.bringToFront", json!({})).await;

    // The confirmation, cancelled: nothing happens.
    let rollback = format!("{east}.querySelector('button.rollback').click()");
    page.eval(&rollback).await;
    page.wait_for("the confirmation", "document.getElementById('confirm').open", Duration::from_secs(5)).await;
    let question = text(&page, "confirm-text").await;
    assert!(question.contains("cluster east") && question.contains(&format!("build #{b1}")), "{question}");
    page.screenshot(&artifacts_dir().join("app-page-confirm.png")).await;
    page.eval("document.getElementById('confirm-cancel').click()").await;
    assert_eq!(page.eval("document.getElementById('confirm').open").await, false);
    assert_eq!(w.releases().await["releases"][0]["history"].as_array().unwrap().len(), 2, "a cancelled confirmation rolled back");

    // Confirmed: the Deployment goes back to the first build's digest, and the page shows it.
    page.eval(&rollback).await;
    page.wait_for("the confirmation", "document.getElementById('confirm').open", Duration::from_secs(5)).await;
    page.eval("document.getElementById('confirm-ok').click()").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while image_of(&w.east, "app") != format!("{EAST}/team/hello@{D1}") {
        if Instant::now() > deadline {
            let said = page.eval("[document.getElementById('error').textContent, document.getElementById('rollback-status').textContent]").await;
            panic!("the Deployment runs {}; the page says {said}; console:\n{}", image_of(&w.east, "app"), page.console());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.east.count("patch", "deployments"), patches + 1);
    page.wait_for("the new current release", &format!("JSON.stringify({current}) === {}", Value::from(json!([D1, format!("#{b1}")]).to_string())), Duration::from_secs(20)).await;
    let by = page.eval(&format!("{east}.querySelector('.current').textContent")).await;
    assert!(by.as_str().unwrap().contains(", token initial (#"), "who asked: {by}");
    let states: Vec<(String, String)> = serde_json::from_value(page.eval(&format!("[...{east}.querySelectorAll('tbody tr')].map(t => [t.dataset.digest, t.dataset.state])")).await).unwrap();
    assert_eq!(states[0], (D1.to_string(), "Complete".to_string()), "{states:?}");
    // Now the release to go back to is build 3's.
    let buttons: Vec<String> = serde_json::from_value(page.eval(&format!("[...{east}.querySelectorAll('button.rollback')].map(b => b.closest('tr').dataset.digest)")).await).unwrap();
    assert_eq!(buttons, [D3]);
    page.screenshot(&artifacts_dir().join("app-page.png")).await;

    // What build 1's notifications became, as the notifier records them.
    for (kind, outcome, attempts) in [("dingtalk", "delivered", 3), ("slack", "refused: 404 no_service", 1)] {
        let target = builder_api::store::NotificationTarget {
            id: 1,
            tenant_id: 1,
            app_id: None,
            kind: builder_api::store::TargetKind::parse(kind).unwrap(),
            url: String::new(),
            secret: None,
            has_secret: false,
            events: vec![],
            target: format!("https://{kind}.example/…"),
        };
        w.kiln.ctx.store.record_notification(b1, builder_api::store::NotifyEvent::RolledBack, &target, outcome, attempts).await.unwrap();
    }

    // The JVM options Kiln put into build 1's image (JVM sizing), as an image step records them.
    let jvm_options = "-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError";
    w.kiln.ctx.store.set_build_jvm_options(b1, jvm_options).await.unwrap();

    // The build page of build 1: its full image reference to copy, and what its image did.
    page.navigate(&w.kiln.url(&format!("/ui/builds/{b1}"))).await;
    page.wait_for("the rollouts of the build's image", "document.querySelectorAll('#rollouts li').length === 2", Duration::from_secs(10)).await;
    let told: Vec<String> = serde_json::from_value(page.eval("[...document.querySelectorAll('#notifications li')].map(l => l.dataset.state + ' ' + l.textContent)").await).unwrap();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told[0].starts_with("Complete rolled back → dingtalk https://dingtalk.example/… — delivered after 3 attempts"), "{told:?}");
    assert!(told[1].starts_with("Failed rolled back → slack https://slack.example/… — refused: 404 no_service"), "{told:?}");
    let outcomes: Vec<String> = serde_json::from_value(page.eval("[...document.querySelectorAll('#rollouts li')].map(l => l.dataset.cluster + ' ' + l.dataset.state + ' ' + l.textContent)").await).unwrap();
    assert!(outcomes[0].starts_with("east Complete rollout to east shop/web — complete (rollback by token initial"), "{outcomes:?}");
    assert!(outcomes[1].starts_with("east Complete rollout to east shop/web — complete (harbor"), "{outcomes:?}");
    assert_eq!(text(&page, "b-image").await, format!("{EAST}/team/hello@{D1}"));
    assert_eq!(text(&page, "b-jvm").await, jvm_options);
    assert!(shown(&page, "b-jvm-row").await, "the JVM options are not shown");
    let origin = w.kiln.url("");
    browser.call("Browser.grantPermissions", json!({"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})).await;
    page.call("Page.bringToFront", json!({})).await;
    page.eval("document.getElementById('copy-image').click()").await;
    page.wait_for("copied", "document.getElementById('copy-status').textContent === 'Copied'", Duration::from_secs(5)).await;
    assert_eq!(page.eval("navigator.clipboard.readText()").await, format!("{EAST}/team/hello@{D1}").as_str());
    // The app's name links back to its page.
    assert_eq!(page.eval("document.getElementById('b-app-link').getAttribute('href')").await, "/ui/apps/hello?tenant=team");
    assert!(!page.console().contains("uncaught"), "the page threw:\n{}", page.console());
}

/// A token revoked while its page is open: the page's next request gets 401, and the page goes
/// back to the token form saying why, forgetting the token; a good token brings it back.
#[tokio::test]
async fn a_401_from_any_request_brings_back_the_token_form_with_the_reason() {
    let kiln = TestKiln::start(&[]).await;
    let owner = kiln.tenant("web").await;
    let (token_id, developer) = crate::isolation::new_token(&kiln, &owner, "web", "developer").await;
    let browser = Browser::launch().await;
    let page = signed_in(&browser, &kiln.url("/ui/"), &developer).await;
    page.wait_for("the builds list", "!document.getElementById('builds-section').hidden && document.getElementById('updated').textContent", Duration::from_secs(10)).await;
    assert_eq!(page.eval("sessionStorage.getItem('kiln.token')").await, developer.as_str());
    assert_eq!(page.eval("localStorage.length").await, 0, "the token is on disk");

    let (status, body) = kiln.request(Method::DELETE, &format!("/api/v1/tenants/web/tokens/{token_id}"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // The list refreshes every few seconds; its next request is refused.
    page.wait_for(
        "the token form after a 401",
        "!document.getElementById('token-form').hidden && document.getElementById('builds-section').hidden && document.getElementById('error').textContent.includes('refused (unknown or revoked token)')",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(page.eval("sessionStorage.getItem('kiln.token')").await, Value::Null, "the refused token is kept");
    assert_eq!(page.eval("document.getElementById('forget-token').hidden").await, true);

    // Another token: the page starts again with it.
    page.eval(&format!("document.getElementById('token-input').value = {}; document.getElementById('token-form').requestSubmit()", Value::from(owner.clone()))).await;
    page.wait_for("the list again", "!document.getElementById('builds-section').hidden && document.getElementById('whoami').textContent === 'web · owner'", Duration::from_secs(10)).await;
    assert_eq!(page.eval("document.getElementById('error').hidden").await, true);
}
