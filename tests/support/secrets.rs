//! "No secret in any output": every secret the suite hands Kiln is registered here, and
//! everything Kiln says is captured here — API and webhook answers (`TestKiln::send`), every
//! tracing event of the process (a subscriber installed once by `support::init`), and build logs
//! (`TestKiln::log`, `wait_final`). Each (text, secret) pair is checked whichever came first: a
//! capture is scanned for the secrets known so far, and a newly registered secret is searched in
//! what was captured before. `assert_no_leaks` fails with where a secret was seen.
//!
//! Answers that hand out a secret by design (a new tenant's token, a generated webhook secret) are
//! captured with exactly that value masked, so the rest of them is still scanned.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

/// Shorter strings are not registered: they would match by accident ("pass" in a word).
const MIN_LEN: usize = 8;
/// What is kept for late-registered secrets. Past it the oldest captures are dropped (they were
/// already scanned for every secret known when they came).
const KEEP_BYTES: usize = 16 << 20;

#[derive(Default)]
struct State {
    secrets: BTreeSet<String>,
    kept: std::collections::VecDeque<(String, String)>,
    kept_bytes: usize,
    leaks: Vec<String>,
    captures: u64,
    traced: u64,
}

fn state() -> std::sync::MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

fn leak(source: &str, text: &str, secret: &str) -> String {
    let at = text.find(secret).unwrap_or(0);
    let from = text[..at].char_indices().rev().nth(60).map(|(i, _)| i).unwrap_or(0);
    let context: String = text[from..at].chars().collect();
    let start: String = secret.chars().take(4).collect();
    format!("{source}: a secret ({} chars, starts {start:?}) after {context:?}", secret.len())
}

impl State {
    fn register(&mut self, secret: &str) {
        if secret.len() < MIN_LEN || !self.secrets.insert(secret.to_string()) {
            return;
        }
        let found: Vec<String> = self.kept.iter().filter(|(_, t)| t.contains(secret)).map(|(src, t)| leak(src, t, secret)).collect();
        self.leaks.extend(found);
    }

    fn capture(&mut self, source: &str, text: &str) {
        self.captures += 1;
        if source == "tracing" {
            self.traced += 1;
        }
        let found: Vec<String> = self.secrets.iter().filter(|sec| text.contains(sec.as_str())).map(|sec| leak(source, text, sec)).collect();
        self.leaks.extend(found);
        self.kept_bytes += text.len();
        self.kept.push_back((source.to_string(), text.to_string()));
        while self.kept_bytes > KEEP_BYTES {
            let Some((_, t)) = self.kept.pop_front() else { break };
            self.kept_bytes -= t.len();
        }
    }
}

/// A secret the tests hand to Kiln (token, password, webhook secret).
pub fn register(secret: &str) {
    state().register(secret);
}

/// Something Kiln said; `source` says where (shown with a leak).
pub fn capture(source: &str, text: &str) {
    state().capture(source, text);
}

/// An answer that hands out `issued` once by design: captured with that value masked, and
/// `issued` registered so that it must never show up anywhere else.
pub fn capture_issuing(source: &str, text: &str, issued: &str) {
    capture(source, &text.replace(issued, "<issued once by design>"));
    register(issued);
}

/// Every leak seen so far in this process.
pub fn leaks() -> Vec<String> {
    state().leaks.clone()
}

/// How many texts were captured (a test that scans nothing proves nothing).
pub fn captures() -> u64 {
    state().captures
}

/// How many of them were tracing events (0 means the capture is not installed).
pub fn traced() -> u64 {
    state().traced
}

pub fn is_registered(secret: &str) -> bool {
    state().secrets.contains(secret)
}

pub fn assert_no_leaks() {
    let leaks = leaks();
    assert!(leaks.is_empty(), "secrets appeared in Kiln's output:\n{}", leaks.join("\n"));
}

/// The secret-bearing fields of a JSON request body (app specs carry `webhook_secret` and
/// `git_token`); registered when Kiln accepts the body.
pub fn register_from_request(body: &serde_json::Value) {
    for key in ["webhook_secret", "git_token", "gitlab_token", "password"] {
        if let Some(v) = body.get(key).and_then(|v| v.as_str()) {
            register(v);
        }
    }
}

/// The tracing side: every event of the process, formatted as the `kiln serve` log would print
/// it, goes to `capture`. Installed once; when something else already set the global subscriber
/// (it never does in this binary), events are not captured and `tracing_captures` stays 0.
pub fn install_tracing_capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::new("info,builder_api=debug,registry_sync=debug,sqlx=warn");
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(|| CaptureWriter).finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        static PRINT: OnceLock<bool> = OnceLock::new();
        if *PRINT.get_or_init(|| std::env::var_os("KILN_TEST_TRACE").is_some()) {
            eprint!("{}", String::from_utf8_lossy(buf));
        }
        capture("tracing", &String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_scan_finds_a_secret_whichever_comes_first() {
    let mut s = State::default();
    s.capture("early answer", "{\"token\": \"tok-0123456789\"}");
    s.register("tok-0123456789");
    s.register("pw-abcdefgh");
    s.capture("late log", "login with pw-abcdefgh failed");
    s.capture("clean", "nothing here; pw-abcdefg is not it");
    s.register("short");
    s.capture("short", "short");
    assert_eq!(s.leaks.len(), 2, "{:?}", s.leaks);
    assert!(s.leaks[0].starts_with("early answer") && s.leaks[1].starts_with("late log"), "{:?}", s.leaks);
    // A leak report does not repeat the secret.
    assert!(s.leaks.iter().all(|l| !l.contains("tok-0123456789") && !l.contains("pw-abcdefgh")), "{:?}", s.leaks);
}
