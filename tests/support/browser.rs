//! Headless Chromium for the web page tests, driven over the Chrome DevTools Protocol with a small
//! websocket client: launch, one page target, `Page.navigate`, `Runtime.evaluate` (by value,
//! awaiting promises), screenshots, and waiting on a condition by polling with a deadline.
//!
//! Chromium is Debian's `chromium` (installed by `scripts/install-deps`); `KILN_CHROMIUM` points at
//! another binary. Without one the test fails with a message saying so: it never skips silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `KILN_CHROMIUM`, else `chromium` / `chromium-browser` on PATH.
pub fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the web page test needs headless Chromium, and no `chromium` is on PATH. \
         Install it with scripts/install-deps (Debian package `chromium`: apt-get install -y chromium), \
         or set KILN_CHROMIUM to a Chromium/Chrome binary."
    );
}

/// A running headless Chromium. Dropping it kills its whole process group.
pub struct Browser {
    child: tokio::process::Child,
    pgid: i32,
    cdp: Cdp,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

/// One tab, attached with a flat session.
pub struct Page {
    cdp: Cdp,
    session: String,
    pub target_id: String,
}

#[derive(Clone)]
struct Cdp(Arc<CdpInner>);

struct CdpInner {
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>,
    next_id: AtomicU64,
    /// What the page said: console messages and uncaught exceptions, for failure messages.
    console: Mutex<Vec<String>>,
}

impl Browser {
    pub async fn launch() -> Browser {
        let binary = chromium_binary();
        let profile = tempfile::Builder::new().prefix("kiln-chromium-").tempdir().unwrap();
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let pgid = child.id().expect("chromium pid") as i32;

        // `DevTools listening on ws://127.0.0.1:PORT/devtools/browser/UUID` on stderr.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let ws_url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find("ws://") {
                    return Some(line[i..].trim().to_string());
                }
                seen.push(line);
            }
            None
        })
        .await;
        let ws_url = match ws_url {
            Ok(Some(url)) => url,
            Ok(None) => panic!("{} exited before it listened for DevTools; stderr:\n{}", binary.display(), seen.join("\n")),
            Err(_) => panic!("{} did not print its DevTools address within 30 s; stderr:\n{}", binary.display(), seen.join("\n")),
        };
        // Keep draining stderr (a full pipe would stall Chromium); keep the tail for messages.
        let stderr_tail = Arc::new(Mutex::new(seen));
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut t = tail.lock().unwrap();
                t.push(line);
                let excess = t.len().saturating_sub(200);
                t.drain(..excess);
            }
        });

        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Chromium's DevTools at {ws_url}: {e}"));
        let cdp = Cdp::new(ws);
        Browser { child, pgid, cdp, stderr_tail, _profile: profile }
    }

    /// A browser-level DevTools command (no session).
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(method, params, None).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A new tab, attached, with the Page and Runtime domains enabled.
    pub async fn new_page(&self) -> Page {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await;
        let session = attached["sessionId"].as_str().expect("sessionId").to_string();
        let page = Page { cdp: self.cdp.clone(), session, target_id };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page
    }

    /// Downloads go to `dir` (named as the page names them).
    pub async fn allow_downloads(&self, dir: &Path) {
        self.call("Browser.setDownloadBehavior", json!({"behavior": "allow", "downloadPath": dir.display().to_string()})).await;
    }

    /// The last lines Chromium wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail.lock().unwrap().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser and every renderer, GPU and zygote process it started.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
        let _ = self.child.start_kill();
    }
}

impl Page {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(method, params, Some(&self.session)).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn navigate(&self, url: &str) {
        let res = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(err) = res.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url}: {err}");
        }
    }

    pub async fn reload(&self) {
        self.call("Page.reload", json!({"ignoreCache": true})).await;
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value, or the exception.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let res = self
            .cdp
            .call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}), Some(&self.session))
            .await?;
        if let Some(ex) = res.get("exceptionDetails") {
            let text = ex["exception"]["description"].as_str().or_else(|| ex["text"].as_str()).unwrap_or("exception");
            return Err(format!("{text}"));
        }
        Ok(res["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr).await.unwrap_or_else(|e| panic!("evaluating {expr}: {e}\npage console:\n{}", self.console()))
    }

    /// Polls `expr` until it is truthy (not null, false, 0 or ""), and returns that value; panics
    /// after `limit` with `what`, the last value and what the page logged. An exception (the page
    /// not loaded yet) counts as not yet.
    pub async fn wait_for(&self, what: &str, expr: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let last = self.try_eval(expr).await;
            if let Ok(v) = &last {
                let truthy = match v {
                    Value::Null | Value::Bool(false) => false,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return v.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("waited {limit:?} for {what} ({expr}); last: {last:?}\npage console:\n{}", self.console());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport, written to `path` (its directory created).
    pub async fn screenshot(&self, path: &Path) {
        let res = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(res["data"].as_str().expect("screenshot data")).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Console messages and uncaught exceptions so far (of every page of this browser).
    pub fn console(&self) -> String {
        self.cdp.0.console.lock().unwrap().join("\n")
    }
}

impl Cdp {
    fn new(ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Cdp {
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        let inner = Arc::new(CdpInner { out, pending: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), console: Mutex::new(Vec::new()) });
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let reader = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                let Some(inner) = reader.upgrade() else { break };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = inner.pending.lock().unwrap().remove(&id) {
                        let _ = tx.send(match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                        });
                    }
                    continue;
                }
                let note = match v["method"].as_str() {
                    Some("Runtime.consoleAPICalled") => Some(format!(
                        "console.{}: {}",
                        v["params"]["type"].as_str().unwrap_or("log"),
                        v["params"]["args"]
                            .as_array()
                            .map(|a| a.iter().map(|x| x.get("value").map(|v| v.to_string()).unwrap_or_else(|| x["description"].to_string())).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default()
                    )),
                    Some("Runtime.exceptionThrown") => Some(format!(
                        "uncaught: {}",
                        v["params"]["exceptionDetails"]["exception"]["description"]
                            .as_str()
                            .or_else(|| v["params"]["exceptionDetails"]["text"].as_str())
                            .unwrap_or("?")
                    )),
                    _ => None,
                };
                if let Some(n) = note {
                    inner.console.lock().unwrap().push(n);
                }
            }
            // The connection is gone: fail whatever still waits.
            if let Some(inner) = reader.upgrade() {
                inner.pending.lock().unwrap().clear();
            }
        });
        Cdp(inner)
    }

    async fn call(&self, method: &str, params: Value, session: Option<&str>) -> Result<Value, String> {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let (tx, rx) = oneshot::channel();
        self.0.pending.lock().unwrap().insert(id, tx);
        self.0.out.send(Message::Text(msg.to_string().into())).map_err(|_| "the DevTools connection is closed".to_string())?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the DevTools connection closed".into()),
            Err(_) => {
                self.0.pending.lock().unwrap().remove(&id);
                Err(format!("no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }
}
