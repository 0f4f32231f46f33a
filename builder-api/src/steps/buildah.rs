//! `kiln step buildah`: build a (multi-stage) Dockerfile with buildah and push the result.
//! On the host: buildah with vfs storage and chroot isolation, no daemon. In a cluster the
//! Dockerfile kind runs BuildKit rootless instead (job-templates/dockerfile.yaml).

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context as _};
use clap::Args;

use super::ImageResult;

#[derive(Debug, Args)]
pub struct BuildahArgs {
    /// The build context (the checked-out source).
    #[arg(long)]
    pub context: PathBuf,
    /// The Dockerfile, relative to the context.
    #[arg(long, default_value = "Dockerfile")]
    pub file: String,
    /// The stage to build in a multi-stage Dockerfile.
    #[arg(long)]
    pub target: Option<String>,
    /// `KEY=VALUE`, repeatable.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// `KEY=VALUE` label, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Where to push: `registry/repository:tag`.
    #[arg(long)]
    pub image: String,
    /// Unix seconds for the image's timestamps (the commit time) so rebuilds match.
    #[arg(long)]
    pub created: Option<i64>,
    /// Read the commit time from the clone step's result (`$WORKSPACE/.kiln/clone.json`).
    #[arg(long, conflicts_with = "created")]
    pub created_from: Option<PathBuf>,
    /// Where to write `{"image", "digest"}`.
    #[arg(long)]
    pub result_file: PathBuf,
}

pub async fn run(mut args: BuildahArgs) -> anyhow::Result<()> {
    if let Some(info) = &args.created_from {
        args.created = Some(super::read_clone_info(info)?.commit_time);
    }
    let buildah = std::env::var("KILN_BUILDAH").unwrap_or_else(|_| "buildah".into());
    let global: Vec<String> = std::env::var("KILN_BUILDAH_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_else(|_| vec!["--storage-driver".into(), "vfs".into()]);
    let isolation = std::env::var("KILN_BUILDAH_ISOLATION").unwrap_or_else(|_| "chroot".into());
    let target = registry_sync::ImageRef::parse(&args.image).with_context(|| format!("--image {}", args.image))?;
    // With APM on, the build pushes the original under `<tag>-noapm`; the injected image gets the tag.
    let apm = super::apm::from_env(target.registry()).await?;
    let first = super::apm::first_push_target(&target, apm.as_ref());
    let registry_host = target.registry().to_string();
    let insecure = super::assemble::registry_options_from_env(&registry_host).insecure_registries;
    let tls_verify = if insecure.iter().any(|h| *h == registry_host) { "--tls-verify=false" } else { "--tls-verify=true" };

    // The Dockerfile must stay inside the context: no absolute path, no `..`.
    let file = std::path::Path::new(&args.file);
    if file.is_absolute() || file.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        bail!("Dockerfile path {:?} leaves the build context", args.file);
    }
    if !args.context.join(file).is_file() {
        bail!("no Dockerfile at {} in the commit", args.file);
    }

    let tag = format!("localhost/kiln-build-{}", std::process::id());
    let mut bud = tokio::process::Command::new(&buildah);
    bud.args(&global).arg("bud").arg(format!("--isolation={isolation}")).arg(tls_verify).arg("--layers=false");
    bud.arg("-f").arg(args.context.join(file)).arg("-t").arg(&tag);
    if let Some(created) = args.created {
        // Reproducible timestamps in history and config.
        bud.arg(format!("--timestamp={created}"));
    }
    if let Some(target) = &args.target {
        bud.arg("--target").arg(target);
    }
    for a in &args.build_args {
        bud.arg("--build-arg").arg(a);
    }
    for l in &args.labels {
        bud.arg("--label").arg(l);
    }
    bud.arg(&args.context);
    println!("building {} with buildah", args.file);
    run_inheriting(&mut bud, "buildah bud").await?;

    let digest_file = tempfile_path("digest");
    let mut push = tokio::process::Command::new(&buildah);
    push.args(&global).arg("push").arg(tls_verify).arg("--digestfile").arg(&digest_file);
    if let (Ok(user), Ok(pass)) = (std::env::var("KILN_REGISTRY_USERNAME"), std::env::var("KILN_REGISTRY_PASSWORD")) {
        if !user.is_empty() {
            // Credentials through an auth file, never on the command line.
            let auth_file = tempfile_path("auth.json");
            let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{pass}"));
            std::fs::write(&auth_file, serde_json::json!({"auths": {registry_host.clone(): {"auth": auth}}}).to_string())?;
            push.arg("--authfile").arg(&auth_file);
        }
    }
    push.arg(&tag).arg(format!("docker://{first}"));
    println!("pushing {first}");
    let pushed = run_inheriting(&mut push, "buildah push").await;
    // Free the vfs copy of the image whatever happened.
    let _ = tokio::process::Command::new(&buildah).args(&global).arg("rmi").arg("-f").arg(&tag).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
    pushed?;
    let digest = std::fs::read_to_string(&digest_file).context("buildah wrote no digest")?.trim().to_string();
    let _ = std::fs::remove_file(&digest_file);
    let image = first.with_digest(digest.clone()).to_string();
    println!("pushed {image}");
    super::apm::finish(ImageResult { image, digest, apm: None }, &target, apm.as_ref(), &args.result_file).await
}

fn tempfile_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kiln-{}-{}-{what}", std::process::id(), rand::random::<u32>()))
}

async fn run_inheriting(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.stdin(Stdio::null()).status().await.with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
