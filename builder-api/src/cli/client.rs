//! Client commands: talk to a running Kiln over its API. The address and token come from flags,
//! then `KILN_URL` / `KILN_TOKEN`, then the CLI config file (`$XDG_CONFIG_HOME/kiln/cli.toml` or
//! `~/.config/kiln/cli.toml`, keys `url` and `token`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;

use super::sse::SseParser;

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Kiln's address [env: KILN_URL; default http://127.0.0.1:8080]
    #[arg(long)]
    pub url: Option<String>,
    /// API token (admin or tenant) [env: KILN_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
}

/// Where the API is and how to prove who we are.
pub struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CliFile {
    url: Option<String>,
    token: Option<String>,
}

fn config_file() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KILN_CLI_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("kiln").join("cli.toml"))
}

impl ApiArgs {
    pub fn resolve(&self) -> anyhow::Result<Api> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file: CliFile = match config_file() {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?
            }
            _ => CliFile::default(),
        };
        let url = self.url.clone().or_else(|| env("KILN_URL")).or(file.url).unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = self.token.clone().or_else(|| env("KILN_TOKEN")).or(file.token).with_context(|| {
            format!(
                "no API token: pass --token, set KILN_TOKEN, or put `token = \"…\"` in {}",
                config_file().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.config/kiln/cli.toml".into())
            )
        })?;
        Ok(Api { url: url.trim_end_matches('/').to_string(), token, http: reqwest::Client::new() })
    }
}

impl Api {
    async fn get_json(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach Kiln at {}", self.url))?;
        Ok(check(res).await?.json().await?)
    }
}

async fn check(res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if res.status().is_success() {
        return Ok(res);
    }
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    bail!("{status}: {}", body.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given"))
}

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

/// How lines look: colours only on a terminal (and not with NO_COLOR).
struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Prints a build's log (by id, or the newest build of `--app`). Following, it streams Server-Sent
/// Events until the build ends, reconnecting with `Last-Event-ID` if the connection drops, and
/// returns the build's exit code.
pub async fn logs(args: &ApiArgs, build: Option<i64>, app: Option<String>, follow: bool) -> anyhow::Result<u8> {
    let api = args.resolve()?;
    let id = match (build, app) {
        (Some(id), _) => id,
        (None, Some(app)) => {
            let list = api.get_json("/api/v1/builds", &[("app", app.clone()), ("limit", "1".into())]).await?;
            list.pointer("/builds/0/id").and_then(Value::as_i64).with_context(|| format!("app {app} has no builds yet"))?
        }
        (None, None) => bail!("name a build (kiln logs 42) or an app (kiln logs --app web)"),
    };
    let style = Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() };
    if !follow {
        let res = api.http.get(format!("{}/api/v1/builds/{id}/logs", api.url)).bearer_auth(&api.token).send().await?;
        let mut body = check(res).await?.bytes_stream();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("the log download broke")?)?;
        }
        return Ok(0);
    }
    let mut parser = SseParser::default();
    let mut attempts = 0u32;
    loop {
        let mut req = api
            .http
            .get(format!("{}/api/v1/builds/{id}/logs", api.url))
            .bearer_auth(&api.token)
            .header("accept", "text/event-stream");
        if let Some(last) = &parser.last_id {
            req = req.header("last-event-id", last);
        }
        let res = match req.send().await {
            Ok(res) => check(res).await?,
            Err(e) if attempts < 30 && parser.last_id.is_some() => {
                attempts += 1;
                eprintln!("kiln: connection lost ({e}); reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach Kiln at {}", api.url)),
        };
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            for ev in parser.feed(&chunk) {
                if let Some(code) = print_event(&style, &ev.event, &ev.data)? {
                    return Ok(code);
                }
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

/// Prints one event; returns the exit code once the build's end arrives.
fn print_event(style: &Style, event: &str, data: &str) -> anyhow::Result<Option<u8>> {
    let v: Value = serde_json::from_str(data).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match event {
        "line" => {
            let line = v["line"].as_str().unwrap_or_default();
            match v["stream"].as_str() {
                Some("system") => writeln!(out, "{}", style.paint("2", line))?,
                _ => writeln!(out, "{line}")?,
            }
        }
        "step" => {
            let line = v["line"].as_str().unwrap_or_default();
            let code = match v.pointer("/meta/state").and_then(Value::as_str) {
                None => "1;36",
                Some("Succeeded") => "1;32",
                Some(_) => "1;31",
            };
            writeln!(out, "{}", style.paint(code, line))?;
        }
        "end" => {
            let state = v["state"].as_str().unwrap_or("unknown");
            let code = if state == "Succeeded" { "1;32" } else { "1;31" };
            let mut summary = format!("build {state}");
            if let Some(reason) = v["reason"].as_str() {
                summary.push_str(&format!(": {reason}"));
            }
            if let Some(image) = v["image"].as_str() {
                summary.push_str(&format!("\nimage {image}"));
            }
            writeln!(out, "{}", style.paint(code, &summary))?;
            out.flush()?;
            return Ok(Some(exit_code(state)));
        }
        "error" => eprintln!("kiln: {}", v["error"].as_str().unwrap_or(data)),
        _ => {}
    }
    out.flush()?;
    Ok(None)
}

pub async fn builds(args: &ApiArgs, app: Option<String>, state: Option<String>, limit: u32) -> anyhow::Result<()> {
    let api = args.resolve()?;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(app) = app {
        query.push(("app", app));
    }
    if let Some(state) = state {
        query.push(("state", state));
    }
    let body = api.get_json("/api/v1/builds", &query).await?;
    print!("{}", builds_table(&body));
    Ok(())
}

/// The builds list as a table whose columns are as wide as their widest cell (values of any
/// length stay aligned), with the failure reason last.
pub fn builds_table(body: &serde_json::Value) -> String {
    let header = ["ID", "STATE", "APP", "REF", "COMMIT", "DURATION", "DIGEST", "REASON"].map(String::from);
    let mut rows = vec![header];
    for b in body["builds"].as_array().into_iter().flatten() {
        let duration = match (b["started_at"].as_i64(), b["finished_at"].as_i64()) {
            (Some(s), Some(f)) => format!("{:.1}s", (f - s) as f64 / 1000.0),
            (Some(_), None) => "running".into(),
            _ => "-".into(),
        };
        let git_ref = b["ref"].as_str().unwrap_or("-");
        let git_ref = git_ref.strip_prefix("refs/heads/").or_else(|| git_ref.strip_prefix("refs/")).unwrap_or(git_ref);
        let digest = b["image_digest"].as_str().map(|d| d.get(..19).unwrap_or(d).to_string()).unwrap_or_else(|| "-".into());
        rows.push([
            b["id"].as_i64().map_or_else(|| "-".into(), |id| id.to_string()),
            b["state"].as_str().unwrap_or("").to_string(),
            format!("{}/{}", b["tenant"].as_str().unwrap_or(""), b["app"].as_str().unwrap_or("")),
            git_ref.to_string(),
            b["commit"].as_str().unwrap_or("").get(..12).unwrap_or("").to_string(),
            duration,
            digest,
            b["reason"].as_str().unwrap_or("").lines().next().unwrap_or("").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Numbers right-aligned, text left; the last column is not padded.
            match c {
                0 | 5 => line.push_str(&format!("{}{cell}", " ".repeat(pad))),
                7 => line.push_str(cell),
                _ => line.push_str(&format!("{cell}{}", " ".repeat(pad))),
            }
            if c < 7 {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::builds_table;

    #[test]
    fn the_builds_table_keeps_its_columns_aligned_whatever_the_lengths() {
        let body = serde_json::json!({"builds": [
            {"id": 7, "state": "Succeeded", "tenant": "t", "app": "a", "ref": "refs/heads/main", "commit": "0123456789abcdef",
             "started_at": 1000, "finished_at": 3500, "image_digest": "sha256:0123456789abcdef"},
            {"id": 12345, "state": "Failed", "tenant": "payments-platform", "app": "ledger-service", "ref": "refs/heads/feature/very-long-branch-name",
             "commit": "fedcba9876543210", "started_at": 1000, "finished_at": 2000, "reason": "compile failed (exit code 2): ./main.go:4:2: undefined: x"},
        ]});
        let table = builds_table(&body);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        // Every column starts at the same character in every line.
        for header in ["STATE", "APP", "REF", "COMMIT", "DIGEST", "REASON"] {
            let at = lines[0].find(header).unwrap();
            // The first build has no reason: its line ends before that column.
            for line in lines[1..].iter().filter(|l| header != "REASON" || l.len() > at) {
                assert!(line.len() > at && line.as_bytes()[at - 1] == b' ' && line.as_bytes()[at] != b' ', "{header} at {at}:\n{table}");
            }
        }
        assert!(lines[1].starts_with("    7  Succeeded"), "{table}");
        assert!(lines[2].starts_with("12345  Failed"), "{table}");
        assert!(lines[2].ends_with("./main.go:4:2: undefined: x"), "{table}");
    }
}
