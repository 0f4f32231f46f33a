//! The `kiln` command line: the server, the client commands, and the build steps.

mod admin;
mod apps;
mod client;
mod commands;
mod follow;
mod output;
pub mod sse;
mod step;
mod sync;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "Kiln: an in-cluster build service. GitLab pushes in, digest-pinned images out.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: HTTP API, webhooks, scheduler and executor.
    ///
    /// With no config it listens on 127.0.0.1:8080, keeps SQLite under ./.kiln and runs builds as
    /// host processes. A TOML file and KILN_* env vars (KILN_LISTEN, KILN_DATA_DIR,
    /// KILN_ADMIN_TOKEN, KILN_INSECURE_REGISTRIES, …) override the defaults.
    Serve {
        /// TOML config file.
        #[arg(long, short, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a build's log; with -f, follow it live until the build ends.
    ///
    /// Stdout gets exactly the stored log (`kiln logs -f 7 > build.log`); the closing summary,
    /// reconnects and — on a terminal, while a step prints nothing for 5 s — its elapsed time go
    /// to stderr. Following, step headers are shown as they start and finish (in colour on a
    /// terminal), a dropped connection resumes where it stopped, and the exit code is the
    /// build's result: 0 Succeeded, 1 Failed, 124 TimedOut, 130 Cancelled. With -o json: one
    /// JSON line per event ({"event": "line"|"step"|"end", "data": …}) until the build ends.
    /// The token comes from --token, KILN_TOKEN, or ~/.config/kiln/cli.toml (`token = "…"`).
    Logs {
        /// Build id (or use --app for the newest build of an app).
        build: Option<i64>,
        /// The newest build of this app.
        #[arg(long, conflicts_with = "build")]
        app: Option<String>,
        /// Follow the log while the build runs.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List builds, newest first: state, app, ref, commit, duration, image digest and reason.
    Builds {
        #[arg(long)]
        app: Option<String>,
        /// Queued, Running, Succeeded, Failed, Cancelled or TimedOut.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List, show, create, change and delete apps (`kiln apps --help`).
    Apps(apps::AppsArgs),
    /// Build an app: a branch's or tag's tip (--ref) or a commit (--commit), then follow its log.
    ///
    /// Prints the build's id (stderr), then its log as `kiln logs -f` does, and exits with the
    /// build's result (0 Succeeded, 1 Failed, 124 TimedOut, 130 Cancelled). With --detach, prints
    /// only the id (stdout) and returns at once; with -o json, the API's answer.
    Build {
        app: String,
        /// A branch or tag: its current tip is built (main, refs/tags/v1.2).
        #[arg(long = "ref", value_name = "REF", required_unless_present = "commit")]
        git_ref: Option<String>,
        /// The commit to build (40 hex); with --ref, the ref it is recorded under.
        #[arg(long)]
        commit: Option<String>,
        /// Do not follow the log: print the build's id and return.
        #[arg(long, short)]
        detach: bool,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Cancel a build: a queued one at once, a running one once its log is flushed.
    Cancel {
        build: i64,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Build again what a finished build built (its app, ref and commit), then follow the log.
    ///
    /// As `kiln build`: the new build's id on stderr, its log, its result as the exit code;
    /// --detach prints only the id. A build still queued or running is refused: cancel it first.
    Retry {
        build: i64,
        /// Do not follow the log: print the new build's id and return.
        #[arg(long, short)]
        detach: bool,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// What an app runs where: per subscribed Deployment the current digest, then every rollout.
    Releases {
        app: String,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Roll an app's Deployments back to an earlier successful build (owner).
    ///
    /// --to takes a build id (42) or an image digest (sha256:…) one of the app's builds
    /// produced; every subscription is rolled back, or only those of --cluster. Follow it with
    /// `kiln releases APP`.
    Rollback {
        app: String,
        /// A build id or a digest.
        #[arg(long, value_name = "BUILD|DIGEST")]
        to: String,
        /// Only this cluster's subscriptions.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Let the running release of a subscription go on (owner): a blue-green release waiting
    /// with `promote: manual` switches the Service, a canary goes to its next step.
    Promote {
        app: String,
        /// The subscription's id (`kiln releases APP` shows it).
        subscription: i64,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Stop the running release of a subscription (owner): traffic stays on, or goes back to,
    /// what ran before; the release is recorded Aborted with who aborted it.
    Abort {
        app: String,
        subscription: i64,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// How a subscription releases new images (owner): `rolling`, `blue-green`, `canary`, or
    /// JSON with settings, as `{"kind":"canary","steps":[25,100],"pause_secs":300}`.
    Strategy {
        app: String,
        subscription: i64,
        /// A kind or a JSON object.
        strategy: String,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Where an app's builds (or, with --tenant, every app's) are told about, and what about.
    ///
    /// Lists the targets: kind, scheme and host (a URL is a credential and is never shown),
    /// events, whether a secret is set. With --set FILE (`-` reads stdin) replaces the list with
    /// the file's `{"targets": [{"kind", "url", "secret"?, "events"}]}` (owner); `{"targets": []}`
    /// turns them off. Kinds: webhook, dingtalk, wecom, slack. Events: failed, fixed, succeeded,
    /// rollout_failed, rolled_back.
    Notifications {
        /// The app (leave out with --tenant).
        #[arg(required_unless_present = "tenant")]
        app: Option<String>,
        /// The tenant-wide targets of this tenant instead of an app's.
        #[arg(long, conflicts_with = "app")]
        tenant: Option<String>,
        /// Replace the targets with those of this JSON file (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List tenants (admin token): id, name, namespace, registry project, build cap.
    Tenants {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List a tenant's API tokens (owner): id, name, role, when created, last used, expiry,
    /// revoked — never a secret. The token's own tenant unless TENANT is given.
    Tokens {
        tenant: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Copy an image from one registry to others: each blob read once, sent only where missing,
    /// every target verified by digest.
    ///
    /// SRC is host/repo@sha256:… or host/repo:tag; each DST is host/repo and gets SRC's tag.
    /// Progress is shown per target, then a summary per target. Exit code 0 when every target
    /// verified, 1 otherwise (with the reason per target).
    Sync(sync::SyncArgs),
    /// Operations on the store while Kiln is stopped (key rotation).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Tools for trying Kiln on one machine.
    #[command(subcommand)]
    Dev(DevCommand),
    /// The steps that run inside build pods (or as host processes under the local executor).
    #[command(subcommand)]
    Step(step::StepCommand),
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Serve the bare git repositories under --root over smart HTTP (`git http-backend`), the
    /// way GitLab serves them: `http://LISTEN/<group>/<project>.git`.
    GitServer {
        /// Directory holding bare repositories (`group/project.git`).
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8929")]
        listen: std::net::SocketAddr,
        /// Require HTTP basic auth with this password (GitLab-style `oauth2:<token>`).
        #[arg(long, env = "KILN_DEV_GIT_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// The entry point of the `kiln` binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let is_step = matches!(cli.command, Command::Step(_));
    if !is_step {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => crate::server::serve(config).await.map(|()| 0),
            Command::Logs { build, app, follow, api } => follow::logs(&api.resolve()?, build, app, follow).await,
            Command::Builds { app, state, limit, api } => commands::builds(&api.resolve()?, app, state, limit).await,
            Command::Apps(args) => apps::run(args).await,
            Command::Build { app, git_ref, commit, detach, api } => commands::build(&api.resolve()?, &app, git_ref, commit, detach).await,
            Command::Cancel { build, api } => commands::cancel(&api.resolve()?, build).await,
            Command::Retry { build, detach, api } => commands::retry(&api.resolve()?, build, detach).await,
            Command::Notifications { app, tenant, set, api } => commands::notifications(&api.resolve()?, app, tenant, set).await,
            Command::Releases { app, api } => commands::releases(&api.resolve()?, &app).await,
            Command::Rollback { app, to, cluster, api } => commands::rollback(&api.resolve()?, &app, &to, cluster).await,
            Command::Promote { app, subscription, api } => commands::decide(&api.resolve()?, &app, subscription, "promote").await,
            Command::Abort { app, subscription, api } => commands::decide(&api.resolve()?, &app, subscription, "abort").await,
            Command::Strategy { app, subscription, strategy, api } => commands::strategy(&api.resolve()?, &app, subscription, &strategy).await,
            Command::Tenants { api } => commands::tenants(&api.resolve()?).await,
            Command::Tokens { tenant, api } => commands::tokens(&api.resolve()?, tenant).await,
            Command::Step(step) => step::run(step).await.map(|()| 0),
            Command::Sync(args) => sync::run(args).await,
            Command::Admin(command) => admin::run(command).await,
            Command::Dev(DevCommand::GitServer { root, listen, token }) => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                eprintln!("kiln dev git-server: serving {} on http://{listen}", root.display());
                let git = crate::devtools::git_http::GitHttp { root, token };
                axum::serve(listener, git.router()).await?;
                Ok(0)
            }
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // The last stderr line of a failed step becomes the build's reason.
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::from(1)
        }
    }
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
