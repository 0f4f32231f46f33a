//! `kiln step buildah`: build a (multi-stage) Dockerfile with buildah into an OCI image layout.
//! On the host: buildah with vfs storage and chroot isolation, no daemon. In a cluster the
//! Dockerfile kind runs BuildKit rootless instead (job-templates/dockerfile.yaml).
//!
//! The Dockerfile's `RUN` steps are the user's code, so this step holds no credential: it writes
//! the image to `--layout` on the shared workspace, and the image step (`kiln step push`, another
//! process or container, with the registry password) pushes it.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context as _};
use clap::Args;

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
    /// Where to write the image: an OCI image layout directory (made, or emptied first).
    #[arg(long)]
    pub layout: PathBuf,
    /// Unix seconds for the image's timestamps (the commit time) so rebuilds match.
    #[arg(long)]
    pub created: Option<i64>,
    /// Read the commit time from the clone step's result (`$WORKSPACE/.kiln/clone.json`).
    #[arg(long, conflicts_with = "created")]
    pub created_from: Option<PathBuf>,
}

impl BuildahArgs {
    /// The checks both builders make before they start: the commit time read, the Dockerfile
    /// inside the context (no absolute path, no `..`) and present, the layout directory empty.
    pub(super) fn prepare(&mut self) -> anyhow::Result<()> {
        if let Some(info) = &self.created_from {
            self.created = Some(super::read_clone_info(info)?.commit_time);
        }
        let file = std::path::Path::new(&self.file);
        if file.is_absolute() || file.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("Dockerfile path {:?} leaves the build context", self.file);
        }
        if !self.context.join(file).is_file() {
            bail!("no Dockerfile at {} in the commit", self.file);
        }
        if self.layout.exists() {
            std::fs::remove_dir_all(&self.layout).with_context(|| format!("cannot empty {}", self.layout.display()))?;
        }
        if let Some(parent) = self.layout.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(())
    }
}

pub async fn run(mut args: BuildahArgs) -> anyhow::Result<()> {
    args.prepare()?;
    let buildah = std::env::var("KILN_BUILDAH").unwrap_or_else(|_| "buildah".into());
    let global: Vec<String> = std::env::var("KILN_BUILDAH_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_else(|_| vec!["--storage-driver".into(), "vfs".into()]);
    let isolation = std::env::var("KILN_BUILDAH_ISOLATION").unwrap_or_else(|_| "chroot".into());
    let tag = format!("localhost/kiln-build-{}", std::process::id());
    let mut bud = tokio::process::Command::new(&buildah);
    bud.args(&global).arg("bud").arg(format!("--isolation={isolation}")).arg("--layers=false");
    // Base images from a registry spoken over plain HTTP (KILN_INSECURE_REGISTRIES) are pulled
    // without TLS, those registries only: a registries.conf that lists them.
    let insecure = super::pull::insecure_registries();
    let registries_conf = std::env::temp_dir().join(format!("kiln-registries-{}.conf", std::process::id()));
    if !insecure.is_empty() {
        let mut conf = String::from("unqualified-search-registries = [\"docker.io\"]\n");
        for host in &insecure {
            conf.push_str(&format!("[[registry]]\nlocation = {}\ninsecure = true\n", serde_json::Value::from(host.as_str())));
        }
        std::fs::write(&registries_conf, conf)?;
        bud.env("CONTAINERS_REGISTRIES_CONF", &registries_conf);
    }
    let scratch = std::env::temp_dir().join(format!("kiln-buildah-{}", std::process::id()));
    if let Some(dir) = super::pull::docker_config(&scratch)? {
        bud.arg("--authfile").arg(dir.join("config.json"));
    }
    bud.arg("-f").arg(args.context.join(&args.file)).arg("-t").arg(&tag);
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
    let built = run_inheriting(&mut bud, "buildah bud").await;
    let _ = std::fs::remove_file(&registries_conf);
    let _ = std::fs::remove_dir_all(&scratch);
    built?;

    let mut save = tokio::process::Command::new(&buildah);
    save.args(&global).arg("push").arg("--format").arg("oci").arg(&tag).arg(format!("oci:{}", args.layout.display()));
    let saved = run_inheriting(&mut save, "buildah push to the layout").await;
    // Free the vfs copy of the image whatever happened.
    let _ = tokio::process::Command::new(&buildah).args(&global).arg("rmi").arg("-f").arg(&tag).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
    saved?;
    println!("wrote the image to {}", super::shown_path(&args.layout));
    Ok(())
}

async fn run_inheriting(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.stdin(Stdio::null()).status().await.with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
