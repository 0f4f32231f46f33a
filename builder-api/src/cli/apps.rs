//! `kiln apps`: list, show, create, update and delete apps. Create and update take the app's
//! fields as flags, from a JSON file (`-f app.json`, the body `POST /api/v1/apps` takes), or
//! both (flags win) — a file keeps secrets off the command line, where `ps` shows them.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{Api, ApiArgs};
use super::commands::builds_table;
use super::output::{ago, print_json, text, Align, Output, Style, Table};

#[derive(Debug, Args)]
#[command(after_help = "Without a subcommand: `kiln apps list`.")]
pub struct AppsArgs {
    #[command(subcommand)]
    command: Option<AppsCommand>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
enum AppsCommand {
    /// List the apps the token sees: name, tenant, kind, branches built, repository, image.
    List {
        /// Admins: only this tenant's apps.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// One app's settings (secrets only as set / not set) and its latest builds.
    Show {
        name: String,
        /// Admins: the tenant, when two tenants have an app of this name.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Create an app from flags, from `-f app.json`, or both (flags win over the file).
    ///
    /// Needs --git-url and --image-repository (or the file's). A maven app needs --base-image
    /// with a Java runtime. Without --webhook-secret Kiln generates one and prints it once.
    /// Example: kiln apps create web --git-url https://gitlab.example.com/team/web.git
    /// --project-path team/web --image-repository harbor.example.com/team/web --setting
    /// go_package=./cmd/web
    Create {
        /// The app's name (DNS label); or `name` in the file.
        name: Option<String>,
        /// Admins: the tenant that owns the app.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        fields: AppFields,
    },
    /// Change an app: only the fields given change (`PATCH /api/v1/apps/NAME`).
    ///
    /// Settings merge key by key (`--setting KEY=null` puts one back to its default); `--clear
    /// git_token` removes a token. The next build uses the change. Example: kiln apps update web
    /// --git-token-file token.txt --branch-filter 'release/*'
    Update {
        name: String,
        /// Admins: the tenant, when two tenants have an app of this name.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        fields: AppFields,
        /// Remove an optional field: project_path, base_image, git_token or gitlab_token (repeatable).
        #[arg(long, value_name = "FIELD", value_parser = ["project_path", "base_image", "git_token", "gitlab_token"])]
        clear: Vec<String>,
    },
    /// Delete an app; its builds stay readable (by id and in `kiln builds`) and its name is free.
    ///
    /// Refused while builds of it are queued or running or Deployments are subscribed to it,
    /// unless --force, which cancels those builds and deletes the subscriptions.
    Delete {
        name: String,
        /// Cancel its queued and running builds and delete its subscriptions.
        #[arg(long)]
        force: bool,
        /// Admins: the tenant, when two tenants have an app of this name.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// The app's fields, as create and update take them.
#[derive(Debug, Args)]
struct AppFields {
    /// A JSON file of fields (`-` reads stdin), as the API takes them; flags override it.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The repository to clone (http or https, no credentials in it).
    #[arg(long)]
    git_url: Option<String>,
    /// GitLab's path_with_namespace (group/project), which its push webhooks carry.
    #[arg(long)]
    project_path: Option<String>,
    /// Which branches a push builds (glob; `**` all, `release/*`).
    #[arg(long)]
    branch_filter: Option<String>,
    #[arg(long, value_parser = ["go", "maven", "dockerfile", "auto"])]
    kind: Option<String>,
    /// The image the app's layers go on (`registry/library/eclipse-temurin:21-jre`).
    #[arg(long)]
    base_image: Option<String>,
    /// Where images are pushed: registry/project/name.
    #[arg(long)]
    image_repository: Option<String>,
    /// The file holding the GitLab webhook secret (`-` reads stdin): kept off the command line.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// The file holding the git token that clones the repository (`-` reads stdin).
    #[arg(long, value_name = "FILE")]
    git_token_file: Option<PathBuf>,
    /// The file holding the GitLab API token for commit statuses (`-` reads stdin).
    #[arg(long, value_name = "FILE")]
    gitlab_token_file: Option<PathBuf>,
    /// A setting, KEY=VALUE (repeatable); VALUE is taken as JSON when it parses, else as text:
    /// go_package=./cmd/web, supersede=false, 'maven_goals=["package"]'.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// JVM sizing (settings.jvm): `off`; `on` (Maven apps have it by default, Dockerfile apps
    /// opt in); or the heap's percentage of the container's memory limit, 1 to 100 (default 75),
    /// which turns it on. Goes into the image's JAVA_TOOL_OPTIONS before the image's own options.
    #[arg(long, value_name = "on|off|PERCENT")]
    jvm: Option<String>,
}

/// `settings.jvm` (to merge) for `--jvm on|off|PERCENT`.
fn jvm_setting(flag: &str) -> anyhow::Result<Value> {
    Ok(match flag {
        "on" => json!({"enabled": true}),
        "off" => json!({"enabled": false}),
        percent => match percent.trim_end_matches('%').parse::<f64>() {
            Ok(p) if p.is_finite() => json!({"enabled": true, "max_ram_percentage": p}),
            _ => bail!("--jvm {percent:?}: write on, off, or the heap's percentage of the container's memory limit (e.g. 75)"),
        },
    })
}

impl AppFields {
    /// The JSON body: the file's fields, then the flags over them.
    fn body(&self) -> anyhow::Result<Map<String, Value>> {
        let mut body = match &self.file {
            Some(path) => {
                let text = read_input(path)?;
                match serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))? {
                    Value::Object(fields) => fields,
                    _ => bail!("{} must hold a JSON object of the app's fields", path.display()),
                }
            }
            None => Map::new(),
        };
        let flags = [
            ("git_url", &self.git_url),
            ("project_path", &self.project_path),
            ("branch_filter", &self.branch_filter),
            ("kind", &self.kind),
            ("base_image", &self.base_image),
            ("image_repository", &self.image_repository),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                body.insert(key.into(), json!(v));
            }
        }
        let secrets = [("webhook_secret", &self.webhook_secret_file), ("git_token", &self.git_token_file), ("gitlab_token", &self.gitlab_token_file)];
        for (key, file) in secrets {
            if let Some(path) = file {
                // A file's last newline is not part of the secret.
                body.insert(key.into(), json!(read_input(path)?.trim_end_matches(['\r', '\n'])));
            }
        }
        if !self.settings.is_empty() || self.jvm.is_some() {
            let settings = body.entry("settings").or_insert_with(|| json!({}));
            let settings = settings.as_object_mut().context("\"settings\" in the file must be an object")?;
            for pair in &self.settings {
                let (key, value) = pair.split_once('=').with_context(|| format!("--setting {pair:?}: write KEY=VALUE"))?;
                settings.insert(key.into(), serde_json::from_str(value).unwrap_or_else(|_| json!(value)));
            }
            if let Some(flag) = &self.jvm {
                settings.insert("jvm".into(), jvm_setting(flag)?);
            }
        }
        Ok(body)
    }
}

/// A file's text, or stdin's for `-`.
pub(super) fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `?tenant=` for admins.
fn tenant_query(tenant: Option<String>) -> Vec<(&'static str, String)> {
    tenant.map(|t| ("tenant", t)).into_iter().collect()
}

pub async fn run(args: AppsArgs) -> anyhow::Result<u8> {
    let api = args.api.resolve()?;
    match args.command.unwrap_or(AppsCommand::List { tenant: None }) {
        AppsCommand::List { tenant } => list(&api, tenant).await,
        AppsCommand::Show { name, tenant } => show(&api, &name, tenant).await,
        AppsCommand::Create { name, tenant, fields } => {
            let mut body = fields.body()?;
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            if let Some(tenant) = tenant {
                body.insert("tenant".into(), json!(tenant));
            }
            if !body.contains_key("name") {
                bail!("name the app: kiln apps create NAME …, or \"name\" in the -f file");
            }
            let answer = api.post("/api/v1/apps", &Value::Object(body)).await?;
            printed(&api, &answer, "created")
        }
        AppsCommand::Update { name, tenant, fields, clear } => {
            let mut body = fields.body()?;
            for field in clear {
                body.insert(field, Value::Null);
            }
            if body.is_empty() {
                bail!("nothing to change: give the fields to change (kiln apps update --help)");
            }
            let answer = api.call(Method::PATCH, &format!("/api/v1/apps/{name}"), &tenant_query(tenant), Some(&Value::Object(body))).await?;
            printed(&api, &answer, "updated")
        }
        AppsCommand::Delete { name, force, tenant } => {
            let mut query = tenant_query(tenant);
            if force {
                query.push(("force", "1".into()));
            }
            let answer = api
                .call(Method::DELETE, &format!("/api/v1/apps/{name}"), &query, None)
                .await
                .map_err(|e| if force { e } else { e.context(format!("app {name} was not deleted (kiln apps delete {name} --force cancels and deletes)")) })?;
            if api.output == Output::Json {
                print_json(&answer);
                return Ok(0);
            }
            let list = |key: &str| answer[key].as_array().map(|a| a.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")).filter(|s| !s.is_empty());
            let mut line = format!("deleted app {name}");
            if let Some(builds) = list("cancelled_builds") {
                line.push_str(&format!("; cancelled builds {builds}"));
            }
            if let Some(subs) = list("deleted_subscriptions") {
                line.push_str(&format!("; deleted subscriptions {subs}"));
            }
            println!("{line}");
            Ok(0)
        }
    }
}

async fn list(api: &Api, tenant: Option<String>) -> anyhow::Result<u8> {
    let answer = api.get("/api/v1/apps", &tenant_query(tenant)).await?;
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(0);
    }
    use Align::Left;
    let mut table = Table::new(&[("NAME", Left), ("TENANT", Left), ("KIND", Left), ("BRANCHES", Left), ("REPOSITORY", Left), ("IMAGE", Left)]);
    for a in answer["apps"].as_array().into_iter().flatten() {
        table.row(vec![
            text(a, "name").into(),
            text(a, "tenant").into(),
            text(a, "kind").into(),
            text(a, "branch_filter").into(),
            text(a, "git_url").into(),
            text(a, "image_repository").into(),
        ]);
    }
    print!("{}", table.render(&Style::stdout()));
    Ok(0)
}

async fn show(api: &Api, name: &str, tenant: Option<String>) -> anyhow::Result<u8> {
    let query = tenant_query(tenant);
    let answer = api.get(&format!("/api/v1/apps/{name}"), &query).await?;
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(0);
    }
    let style = Style::stdout();
    print!("{}", app_table(&answer["app"], &style));
    let mut builds_query = query;
    builds_query.extend([("app", name.to_string()), ("limit", "5".into())]);
    let builds = api.get("/api/v1/builds", &builds_query).await?;
    if builds["builds"].as_array().is_some_and(|b| !b.is_empty()) {
        print!("\nlatest builds:\n{}", builds_table(&builds, &style));
    }
    Ok(0)
}

/// An app as `key  value` lines; secrets only as whether they are set.
fn app_table(app: &Value, style: &Style) -> String {
    let set = |key: &str| if app[key] == true { "set" } else { "not set" };
    let mut table = Table::new(&[]);
    for key in ["name", "tenant", "kind", "git_url", "project_path", "branch_filter", "image_repository", "base_image"] {
        table.row(vec![key.into(), text(app, key).into()]);
    }
    table.row(vec!["git_token".into(), set("has_git_token").into()]);
    table.row(vec!["gitlab_token".into(), set("has_gitlab_token").into()]);
    // Only what is set: a default is a null or an empty map in the answer.
    let settings: Map<String, Value> = app["settings"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let settings = if settings.is_empty() { "- (all defaults)".to_string() } else { Value::Object(settings).to_string() };
    table.row(vec!["settings".into(), settings.into()]);
    table.row(vec!["created".into(), ago(app["created_at"].as_i64()).into()]);
    table.render(style)
}

/// The answer of create or update: the app, and a generated webhook secret, which Kiln shows
/// this once.
fn printed(api: &Api, answer: &Value, done: &str) -> anyhow::Result<u8> {
    if api.output == Output::Json {
        print_json(answer);
        return Ok(0);
    }
    println!("{done} app {}", text(&answer["app"], "name"));
    print!("{}", app_table(&answer["app"], &Style::stdout()));
    if let Some(secret) = answer["webhook_secret"].as_str() {
        println!("webhook_secret    {secret}   (generated: shown this once; set it as the GitLab hook's Secret token)");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jvm_flag_becomes_the_setting_to_merge() {
        assert_eq!(jvm_setting("off").unwrap(), json!({"enabled": false}));
        assert_eq!(jvm_setting("on").unwrap(), json!({"enabled": true}));
        assert_eq!(jvm_setting("60").unwrap(), json!({"enabled": true, "max_ram_percentage": 60.0}));
        assert_eq!(jvm_setting("62.5%").unwrap(), json!({"enabled": true, "max_ram_percentage": 62.5}));
        // The range is the server's to check (a 422 that says it); words are refused here.
        assert!(jvm_setting("lots").unwrap_err().to_string().contains("write on, off, or the heap's percentage"));
    }
}
