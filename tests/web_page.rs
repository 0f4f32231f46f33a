//! The web page: its routes and headers through the router, and the build page in headless
//! Chromium following a real build's log live (lines appear, colours, hostile text shown as text,
//! a cut stream resumed without a repeated or missing line, the final state the API reports).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use builder_api::store::BuildState;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::browser::Browser;
use crate::support::fixtures::app_spec;
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

    for path in ["/ui/", "/ui/builds/1", "/ui/builds/123456"] {
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
    let (list, _) = get(&kiln, "/ui/", &[]).await;
    let (one, _) = get(&kiln, "/ui/builds/1", &[]).await;
    assert_ne!(h(&list, header::ETAG), h(&one, header::ETAG), "two pages, one ETag");

    for (file, ty) in [
        ("style.css", "text/css; charset=utf-8"),
        ("common.js", "text/javascript; charset=utf-8"),
        ("builds.js", "text/javascript; charset=utf-8"),
        ("build.js", "text/javascript; charset=utf-8"),
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

    for path in ["/ui/assets/nope.js", "/ui/assets/..%2FCargo.toml", "/ui/assets/style.css.map", "/ui/builds/abc", "/ui/builds/1/x", "/ui/nope"] {
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
fn chatty_compiler(dir: &Path) -> PathBuf {
    let script = dir.join("chatty-go");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ni=1\nwhile [ $i -le 90 ]; do\n  case $i in\n    20) printf '\\033[1;31mred alert\\033[0m and \\033[92mgreen\\033[0m plain\\n' ;;\n    \
             30) printf '%s\\n' '{HOSTILE}' ;;\n    45) echo \"warning line $i\" >&2 ;;\n    *) echo \"chatty line $i\" ;;\n  esac\n  i=$((i+1))\n  sleep 0.06\ndone\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
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

    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.toolchains.go = chatty_compiler(dir.path()).display().to_string();
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("web").await;
    let repo = git.create_repo("team/chatty");
    let sha = repo.commit_files(
        &[("go.mod", &b"module example.com/chatty\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)],
        "chatty",
    );
    let mut spec = app_spec("chatty", &git.url("team/chatty"), "team/chatty", "127.0.0.1:9/team/chatty", "secret-chatty");
    spec["git_token"] = GIT_TOKEN.into();
    kiln.app(&token, spec).await;
    let (status, body) =
        kiln.request(Method::POST, "/api/v1/apps/chatty/builds", Some(&token), Some(json!({"commit": sha, "ref": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["build"]["id"].as_i64().unwrap();
    kiln.wait_state(id, BuildState::Running, Duration::from_secs(30)).await;

    // Open the build page while the build runs: without a token it asks for one.
    page.navigate(&kiln.url(&format!("/ui/builds/{id}"))).await;
    page.wait_for("the token form", "!document.getElementById('token-form').hidden", Duration::from_secs(10)).await;
    page.eval(&format!("localStorage.setItem('kiln.token', {})", Value::from(token.clone()))).await;
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
    let (_, api) = kiln.request(Method::GET, &format!("/api/v1/builds/{id}"), Some(&token), None).await;
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
    page.eval("localStorage.setItem('kiln.token', 'not-a-token')").await;
    page.navigate(&kiln.url("/ui/")).await;
    page.wait_for(
        "the token form after a 401",
        "!document.getElementById('token-form').hidden && document.getElementById('builds-section').hidden && document.getElementById('error').textContent.includes('refused')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(page.eval("localStorage.getItem('kiln.token')").await, Value::Null, "a refused token is kept");
    let segs = page.eval(r#"Kiln.ansiSegments('\x1b[1;31mred\x1b[0m plain \x1b[92mgreen\x1b[39m x\x1b[K\x1b[38;5;202m256')"#).await;
    assert_eq!(segs, json!([["red", "fg-31 bold"], [" plain ", ""], ["green", "fg-92"], [" x", ""], ["256", ""]]));
}

#[tokio::test]
async fn the_build_page_renders_a_long_log_in_a_few_batches() {
    const LINES: usize = 20_000;
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("loud-go");
    // 20 000 lines at once, every tenth in colour.
    std::fs::write(
        &script,
        format!("#!/bin/sh\ni=1\nwhile [ $i -le {LINES} ]; do\n  if [ $((i % 10)) -eq 0 ]; then printf '\\033[36mline %d\\033[0m\\n' $i; else echo \"line $i\"; fi\n  i=$((i+1))\ndone\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.toolchains.go = script.display().to_string();
    let kiln = TestKiln::start_with(dir, config).await;
    let token = kiln.tenant("web").await;
    let repo = git.create_repo("team/loud");
    let sha = repo.commit_files(&[("go.mod", &b"module example.com/loud\n\ngo 1.19\n"[..], false), ("main.go", b"package main\n\nfunc main() {}\n", false)], "loud");
    let mut spec = app_spec("loud", &git.url("team/loud"), "team/loud", "127.0.0.1:9/team/loud", "secret-loud");
    spec["git_token"] = GIT_TOKEN.into();
    kiln.app(&token, spec).await;
    let (_, body) = kiln.request(Method::POST, "/api/v1/apps/loud/builds", Some(&token), Some(json!({"commit": sha}))).await;
    let id = body["build"]["id"].as_i64().unwrap();
    kiln.wait_final(id, Duration::from_secs(120)).await;
    let stored = kiln.ctx.store.log_after(id, 0, 1_000_000).await.unwrap().len();
    assert!(stored > LINES, "{stored} lines stored");

    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&kiln.url("/ui/")).await;
    page.wait_for("the page", "document.readyState === 'complete'", Duration::from_secs(10)).await;
    page.eval(&format!("localStorage.setItem('kiln.token', {})", Value::from(token.clone()))).await;
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
