//! Client commands: talk to a running Kiln over its API with a token from env.

use std::io::Write;

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::StreamExt;

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Kiln's address.
    #[arg(long, env = "KILN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API token (admin or tenant).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("http client")
}

async fn check(res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if res.status().is_success() {
        return Ok(res);
    }
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    bail!("{status}: {}", body.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given"))
}

/// Prints the log; when following, exits 0 for a Succeeded build and 1 otherwise.
pub async fn logs(api: &ApiArgs, build: i64, follow: bool) -> anyhow::Result<u8> {
    let url = format!("{}/api/v1/builds/{build}/logs{}", api.url.trim_end_matches('/'), if follow { "?follow=1" } else { "" });
    let res = check(client().get(&url).bearer_auth(&api.token).send().await.with_context(|| format!("cannot reach {}", api.url))?).await?;
    let mut body = res.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.context("the log stream broke")?)?;
        out.flush()?;
    }
    drop(out);
    if !follow {
        return Ok(0);
    }
    let url = format!("{}/api/v1/builds/{build}", api.url.trim_end_matches('/'));
    let b: serde_json::Value = check(client().get(&url).bearer_auth(&api.token).send().await?).await?.json().await?;
    let state = b.pointer("/build/state").and_then(|s| s.as_str()).unwrap_or("unknown");
    Ok(if state == "Succeeded" { 0 } else { 1 })
}

pub async fn builds(api: &ApiArgs, app: Option<String>, state: Option<String>) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/builds", api.url.trim_end_matches('/'));
    let mut query = vec![];
    if let Some(app) = app {
        query.push(("app", app));
    }
    if let Some(state) = state {
        query.push(("state", state));
    }
    let res = check(client().get(&url).query(&query).bearer_auth(&api.token).send().await?).await?;
    let body: serde_json::Value = res.json().await?;
    println!("{:>6}  {:<10}  {:<20}  {:<12}  {:>8}  IMAGE", "ID", "STATE", "APP", "COMMIT", "DURATION");
    for b in body["builds"].as_array().into_iter().flatten() {
        let duration = match (b["started_at"].as_i64(), b["finished_at"].as_i64()) {
            (Some(s), Some(f)) => format!("{:.1}s", (f - s) as f64 / 1000.0),
            _ => "-".into(),
        };
        println!(
            "{:>6}  {:<10}  {:<20}  {:<12}  {:>8}  {}",
            b["id"],
            b["state"].as_str().unwrap_or(""),
            format!("{}/{}", b["tenant"].as_str().unwrap_or(""), b["app"].as_str().unwrap_or("")),
            b["commit"].as_str().unwrap_or("").get(..12).unwrap_or(""),
            duration,
            b["image"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
