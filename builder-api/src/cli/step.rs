//! `kiln step …`: the commands build pods run. Inputs come from env vars (set by the plan) and
//! argv; secrets only from env (a Secret in a cluster).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use crate::steps::{self, assemble::AssembleArgs, buildah::BuildahArgs, required_env, CloneInfo};

#[derive(Debug, Subcommand)]
pub enum StepCommand {
    /// Fetch exactly one commit, shallow, into $KILN_SOURCE_DIR.
    ///
    /// Env: KILN_GIT_URL, KILN_GIT_COMMIT, KILN_GIT_REF (optional), KILN_GIT_TOKEN (optional,
    /// sent as HTTP basic auth `oauth2:<token>`), KILN_SOURCE_DIR, WORKSPACE.
    Clone,
    /// Build an image without a daemon (base + artifact layers + config) and push it.
    Assemble(AssembleArgs),
    /// Build a Dockerfile with buildah and push it.
    Buildah(BuildahArgs),
}

pub async fn run(step: StepCommand) -> anyhow::Result<()> {
    match step {
        StepCommand::Clone => clone().await,
        StepCommand::Assemble(args) => steps::assemble::run(args).await,
        StepCommand::Buildah(args) => steps::buildah::run(args).await,
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
