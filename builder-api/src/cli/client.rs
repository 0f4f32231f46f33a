//! Client commands talk to a running Kiln over its API. The address and token come from flags,
//! then `KILN_URL` / `KILN_TOKEN`, then the CLI config file (`$XDG_CONFIG_HOME/kiln/cli.toml` or
//! `~/.config/kiln/cli.toml`, keys `url` and `token`). Every failure says what to do about it: a
//! URL without a scheme, an address that answers but is not Kiln, a refused token, a role too low.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::output::Output;

/// The flags every client command takes (also after a subcommand: `kiln apps list -o json`).
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Kiln's address, with its scheme (http://127.0.0.1:8080) [env: KILN_URL; default http://127.0.0.1:8080]
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// API token (admin or tenant) [env: KILN_TOKEN]
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// `table` for people, `json` for scripts: the API's answer as it came
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// Where the API is, how to prove who we are, and how to print.
pub struct Api {
    pub url: String,
    token: String,
    http: reqwest::Client,
    pub output: Output,
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
        let path = config_file();
        let file: CliFile = match &path {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?
            }
            _ => CliFile::default(),
        };
        let shown = || path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.config/kiln/cli.toml".into());
        let (url, from) = match (&self.url, env("KILN_URL"), file.url) {
            (Some(url), _, _) => (url.clone(), "--url".to_string()),
            (None, Some(url), _) => (url, "KILN_URL".into()),
            (None, None, Some(url)) => (url, format!("url in {}", shown())),
            (None, None, None) => ("http://127.0.0.1:8080".into(), "the default URL".into()),
        };
        let url = check_url(&url, &from)?;
        let token = self.token.clone().or_else(|| env("KILN_TOKEN")).or(file.token).with_context(|| {
            format!("no API token: pass --token, set KILN_TOKEN, or put `token = \"…\"` in {}", shown())
        })?;
        Ok(Api { url, token, http: reqwest::Client::new(), output: self.output })
    }
}

/// The API's base URL, or what is wrong with it: reqwest would take `127.0.0.1:8080` for a
/// relative URL, and `localhost:8080` for the scheme `localhost`.
fn check_url(url: &str, from: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    if !url.contains("://") {
        bail!("{from} {url:?} has no scheme: add http:// (http://{url}), or https:// when Kiln is behind TLS");
    }
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{from} {url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{from} {url:?}: Kiln is reached over http:// or https://, not {}://", parsed.scheme());
    }
    Ok(url.to_string())
}

impl Api {
    /// `METHOD path?query` with `body` as JSON; the answer's JSON.
    pub async fn call(&self, method: Method, path: &str, query: &[(&str, String)], body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.request(method, path).query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = self.send(req).await?;
        let what = res.url().path().to_string();
        let bytes = res.bytes().await.with_context(|| format!("reading Kiln's answer from {}", self.url))?;
        serde_json::from_slice(&bytes).map_err(|_| not_kiln(&self.url, &what, "an answer that is not JSON"))
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    /// A request with the token, for answers that are not JSON (logs); send it with [`Api::send`].
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token)
    }

    /// Sends; a refusal becomes an error that says what to do.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = req.send().await.with_context(|| format!("cannot reach Kiln at {} (is `kiln serve` running there?)", self.url))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let path = res.url().path().to_string();
        let body: Option<Value> = res.json().await.ok();
        // Every refusal of Kiln's is `{"error": "…"}`: anything else came from something else.
        let Some(reason) = body.as_ref().and_then(|b| b["error"].as_str()) else {
            return Err(not_kiln(&self.url, &path, &format!("{status} without Kiln's {{\"error\": …}}")));
        };
        match status.as_u16() {
            401 => bail!("{status}: {reason}: the token was refused (wrong, revoked or expired); pass a valid one with --token or KILN_TOKEN"),
            403 => bail!("{status}: {reason}: use a token with that role (the tenant's owner makes one)"),
            _ => bail!("{status}: {reason}"),
        }
    }

    /// The tenant this token acts in (an admin token has none).
    pub async fn own_tenant(&self) -> anyhow::Result<Option<String>> {
        Ok(self.get("/api/v1/whoami", &[]).await?["tenant"].as_str().map(String::from))
    }
}

/// An address that answers, but not as Kiln does.
pub fn not_kiln(url: &str, path: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{url} answered {path} with {what}: it does not look like Kiln; check --url / KILN_URL (Kiln's API is under /api/v1)")
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn a_url_without_a_scheme_is_refused_with_the_fix() {
        for url in ["127.0.0.1:8080", "localhost:8080", "kiln.example.com"] {
            let e = check_url(url, "--url").unwrap_err().to_string();
            assert!(e.contains("add http://") && e.contains(&format!("http://{url}")), "{e}");
        }
        assert!(check_url("ftp://x", "KILN_URL").unwrap_err().to_string().contains("not ftp://"));
        assert_eq!(check_url("http://127.0.0.1:8080/", "--url").unwrap(), "http://127.0.0.1:8080");
    }
}
