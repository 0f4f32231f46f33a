//! `kiln logs`: a build's log, and following it live (also after `kiln build` and `kiln retry`).
//! Stdout gets exactly the stored log, line for line, so `kiln logs -f 7 > build.log` is the log;
//! everything else — the closing summary, reconnects, the elapsed time of a quiet step — goes
//! to stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::client::{not_kiln, Api};
use super::output::{duration, Output, Style};
use super::sse::SseParser;

/// A step quiet this long gets the elapsed time shown (on a terminal).
const QUIET_AFTER: Duration = Duration::from_secs(5);

/// The exit code for a build's final state, so scripts can act on `kiln logs -f`.
pub fn exit_code(state: &str) -> u8 {
    match state {
        "Succeeded" => 0,
        "Failed" => 1,
        "Cancelled" => 130,
        "TimedOut" => 124,
        _ => 2,
    }
}

/// Prints a build's log (by id, or the newest build of `app`). Following (or with `-o json`,
/// whose events stream until the build ends), returns the build's exit code.
pub async fn logs(api: &Api, build: Option<i64>, app: Option<String>, follow: bool) -> anyhow::Result<u8> {
    let id = match (build, app) {
        (Some(id), _) => id,
        (None, Some(app)) => {
            let list = api.get("/api/v1/builds", &[("app", app.clone()), ("limit", "1".into())]).await?;
            list.pointer("/builds/0/id").and_then(Value::as_i64).with_context(|| format!("app {app} has no builds yet"))?
        }
        (None, None) => bail!("name a build (kiln logs 42) or an app (kiln logs --app web)"),
    };
    if follow || api.output == Output::Json {
        return follow_build(api, id).await;
    }
    let res = api.send(api.request(Method::GET, &format!("/api/v1/builds/{id}/logs"))).await?;
    expect_type(api, &res, "text/plain")?;
    let mut body = res.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.context("the log download broke")?)?;
    }
    Ok(0)
}

/// Kiln answers a log as `text/plain` or `text/event-stream`; a page of something else means
/// the URL is not Kiln's.
fn expect_type(api: &Api, res: &reqwest::Response, wanted: &str) -> anyhow::Result<()> {
    let got = res.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("no content type");
    if got.starts_with(wanted) {
        Ok(())
    } else {
        Err(not_kiln(&api.url, res.url().path(), &format!("{got} where a log is {wanted}")))
    }
}

/// Follows build `id` over Server-Sent Events until it ends, reconnecting with `Last-Event-ID`
/// after a drop (no line lost or repeated); returns its exit code. With `-o json` each event is
/// printed as one JSON line `{"event", "data"}` instead.
pub async fn follow_build(api: &Api, id: i64) -> anyhow::Result<u8> {
    let mut printer = Printer::new(api.output);
    let mut parser = SseParser::default();
    let mut attempts = 0u32;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut req = api.request(Method::GET, &format!("/api/v1/builds/{id}/logs")).header("accept", "text/event-stream");
        if let Some(last) = &parser.last_id {
            req = req.header("last-event-id", last);
        }
        let res = match api.send(req).await {
            Ok(res) => res,
            // A connection that failed (not a refusal: that would only repeat) after a drop.
            Err(e) if attempts < 30 && parser.last_id.is_some() && e.chain().any(|c| c.is::<reqwest::Error>()) => {
                attempts += 1;
                printer.note(&format!("kiln: connection lost ({e:#}); reconnecting"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        expect_type(api, &res, "text/event-stream")?;
        let mut body = res.bytes_stream();
        loop {
            tokio::select! {
                chunk = body.next() => {
                    let Some(Ok(chunk)) = chunk else { break };
                    for ev in parser.feed(&chunk) {
                        if let Some(code) = printer.event(id, &ev.event, &ev.data)? {
                            return Ok(code);
                        }
                    }
                }
                _ = tick.tick() => printer.quiet_status(),
            }
        }
        // The stream ended without the final event: the connection dropped. Resume.
        attempts += 1;
        if attempts > 30 {
            bail!("the log stream kept breaking; giving up after 30 reconnects");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a follower prints where, and the clock of the current step.
struct Printer {
    output: Output,
    out: Style,
    err: Style,
    /// Show the elapsed time of a quiet step: only on a terminal, never into a file.
    show_quiet: bool,
    clock: StepClock,
    /// A status line is on stderr, to be cleared before the next output.
    status_shown: bool,
}

impl Printer {
    fn new(output: Output) -> Printer {
        Printer {
            output,
            out: Style::stdout(),
            err: Style::stderr(),
            show_quiet: output == Output::Table && std::io::stderr().is_terminal(),
            clock: StepClock::new(Instant::now()),
            status_shown: false,
        }
    }

    /// Clears the status line (it is stderr's last, unfinished line).
    fn clear_status(&mut self) {
        if std::mem::take(&mut self.status_shown) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    fn note(&mut self, text: &str) {
        self.clear_status();
        eprintln!("{text}");
    }

    fn quiet_status(&mut self) {
        if !self.show_quiet {
            return;
        }
        if let Some(status) = self.clock.status(chrono::Utc::now().timestamp_millis(), Instant::now()) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", self.err.paint("2", &status));
            let _ = err.flush();
            self.status_shown = true;
        }
    }

    /// Prints one event; returns the exit code once the build's end arrives.
    fn event(&mut self, id: i64, event: &str, data: &str) -> anyhow::Result<Option<u8>> {
        let v: Value = serde_json::from_str(data).unwrap_or_default();
        self.clock.saw(event, &v, Instant::now());
        self.clear_status();
        if self.output == Output::Json {
            println!("{}", json!({ "event": event, "data": v }));
            return Ok((event == "end").then(|| exit_code(v["state"].as_str().unwrap_or_default())));
        }
        let mut out = std::io::stdout().lock();
        match event {
            "line" => {
                let line = v["line"].as_str().unwrap_or_default();
                match v["stream"].as_str() {
                    Some("system") => writeln!(out, "{}", self.out.paint("2", line))?,
                    _ => writeln!(out, "{line}")?,
                }
            }
            "step" => {
                let code = match v.pointer("/meta/state").and_then(Value::as_str) {
                    None => "1;36",
                    Some("Succeeded") => "1;32",
                    Some(_) => "1;31",
                };
                writeln!(out, "{}", self.out.paint(code, v["line"].as_str().unwrap_or_default()))?;
            }
            "end" => {
                out.flush()?;
                let state = v["state"].as_str().unwrap_or("unknown");
                let mut summary = format!("build {id} {state}");
                if let Some(reason) = v["reason"].as_str() {
                    summary.push_str(&format!(": {reason}"));
                }
                eprintln!("{}", self.err.paint(if state == "Succeeded" { "1;32" } else { "1;31" }, &summary));
                if let Some(image) = v["image"].as_str() {
                    eprintln!("image {image}");
                }
                return Ok(Some(exit_code(state)));
            }
            "error" => {
                drop(out);
                self.note(&format!("kiln: {}", v["error"].as_str().unwrap_or(data)));
                return Ok(None);
            }
            _ => {}
        }
        out.flush()?;
        Ok(None)
    }
}

/// Which step runs since when, and when the log last moved: what the status line of a quiet
/// step says.
struct StepClock {
    /// The running step and when it started (the API's milliseconds: a step that started before
    /// we joined has its true elapsed time).
    step: Option<(String, i64)>,
    last_event: Instant,
}

impl StepClock {
    fn new(now: Instant) -> StepClock {
        StepClock { step: None, last_event: now }
    }

    fn saw(&mut self, event: &str, v: &Value, now: Instant) {
        self.last_event = now;
        if event == "step" {
            let started = v.pointer("/meta/state").is_none();
            self.step = started.then(|| (v["step"].as_str().unwrap_or("step").to_string(), v["at"].as_i64().unwrap_or_default()));
        }
    }

    /// `compile: 1m05s, no output for 12s` once nothing came for [`QUIET_AFTER`]; None before.
    fn status(&self, now_ms: i64, now: Instant) -> Option<String> {
        let quiet = now.duration_since(self.last_event);
        if quiet < QUIET_AFTER {
            return None;
        }
        Some(match &self.step {
            Some((step, at)) => format!("… {step}: {}, no output for {}s", duration(now_ms - at), quiet.as_secs()),
            None => format!("… no output for {}s", quiet.as_secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_step_shows_its_elapsed_time_after_five_seconds_and_output_resets_it() {
        let t0 = Instant::now();
        let mut clock = StepClock::new(t0);
        clock.saw("step", &json!({"step": "compile", "at": 1_000_000}), t0);
        let later = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(clock.status(1_004_000, later(4)), None, "not yet quiet");
        assert_eq!(clock.status(1_065_000, later(12)).as_deref(), Some("… compile: 1m05s, no output for 12s"));
        clock.saw("line", &json!({"step": "compile", "line": "x"}), later(12));
        assert_eq!(clock.status(1_066_000, later(13)), None, "a line resets the quiet time");
        // The step's end: quiet time no longer names it.
        clock.saw("step", &json!({"step": "compile", "at": 1_070_000, "meta": {"state": "Succeeded"}}), later(14));
        assert_eq!(clock.status(1_080_000, later(20)).as_deref(), Some("… no output for 6s"));
    }

    #[test]
    fn exit_codes_follow_the_build_state() {
        assert_eq!(["Succeeded", "Failed", "TimedOut", "Cancelled", "?"].map(exit_code), [0, 1, 124, 130, 2]);
    }
}
