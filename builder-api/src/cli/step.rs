//! `kiln step …`: the commands build pods run. Inputs come from env vars (set by the plan) and
//! argv; secrets only from env (a Secret in a cluster).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use crate::steps::{self, assemble::AssembleArgs, buildah::BuildahArgs, push::PushArgs, required_env, CloneInfo};

#[derive(Debug, Subcommand)]
pub enum StepCommand {
    /// Fetch exactly one commit, shallow, into $KILN_SOURCE_DIR.
    ///
    /// Env: KILN_GIT_URL, KILN_GIT_COMMIT, KILN_GIT_REF (optional), KILN_GIT_TOKEN (optional,
    /// sent as HTTP basic auth `oauth2:<token>`), KILN_SOURCE_DIR, WORKSPACE.
    Clone,
    /// Build an image without a daemon (base + artifact layers + config) and push it.
    Assemble(AssembleArgs),
    /// Build a Dockerfile with buildah into an OCI image layout (no credentials: the Dockerfile's
    /// RUN steps run here).
    Buildah(BuildahArgs),
    /// Build a Dockerfile with rootless BuildKit (buildctl-daemonless.sh) into an OCI image
    /// layout (no credentials: the Dockerfile's RUN steps run here).
    Buildkit(BuildahArgs),
    /// Push an OCI image layout (what buildah or buildkit wrote) with the registry credentials.
    Push(PushArgs),
    /// Run a program with one extra argument that holds the commit's time, read from the clone
    /// step's result: the plan is rendered (into a Job) before the commit is fetched, so values
    /// known only after the clone reach the compiler this way, never through a shell.
    ///
    /// Example: `kiln step exec --clone-info $WORKSPACE/.kiln/clone.json
    /// --commit-time-arg -Dproject.build.outputTimestamp= -- mvn -B package`
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The clone step's result file.
    #[arg(long)]
    pub clone_info: PathBuf,
    /// Appended to the program's arguments with the commit time (unix seconds) after it.
    #[arg(long, allow_hyphen_values = true)]
    pub commit_time_arg: String,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

pub async fn run(step: StepCommand) -> anyhow::Result<()> {
    match step {
        StepCommand::Clone => clone().await,
        StepCommand::Assemble(args) => steps::assemble::run(args).await,
        StepCommand::Buildah(args) => steps::buildah::run(args).await,
        StepCommand::Buildkit(args) => steps::buildkit::run(args).await,
        StepCommand::Push(args) => steps::push::run(args).await,
        StepCommand::Exec(args) => exec(args),
    }
}

async fn clone() -> anyhow::Result<()> {
    let workspace = PathBuf::from(required_env("WORKSPACE")?);
    let opts = steps::clone::CloneOptions {
        url: required_env("KILN_GIT_URL")?,
        commit: required_env("KILN_GIT_COMMIT")?,
        ref_name: std::env::var("KILN_GIT_REF").ok().filter(|r| !r.is_empty()),
        dest: std::env::var("KILN_SOURCE_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace.join("src")),
        token: std::env::var("KILN_GIT_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let commit = opts.commit.clone();
    let dest = opts.dest.clone();
    tokio::task::spawn_blocking(move || steps::clone::clone_commit(&opts))
        .await
        .context("clone task")??;
    let commit_time = steps::clone::commit_time(&dest, &commit)?;
    steps::write_result(&workspace.join(crate::plan::CLONE_INFO_FILE), &CloneInfo { commit, commit_time })?;
    Ok(())
}

fn exec(args: ExecArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let info = steps::read_clone_info(&args.clone_info)?;
    let mut cmd = std::process::Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]).arg(format!("{}{}", args.commit_time_arg, info.commit_time));
    // exec(2): the program replaces this process, so signals and exit codes are its own.
    let err = cmd.exec();
    anyhow::bail!("cannot start {}: {err}", args.argv[0])
}
