//! `kiln step buildkit`: build a (multi-stage) Dockerfile with rootless BuildKit into an OCI
//! image layout — the compile step of `job-templates/dockerfile.yaml` in a cluster, where no
//! container is privileged. It runs `buildctl-daemonless.sh` (shipped in the BuildKit rootless
//! image), so no daemon outlives the step. Same arguments as `kiln step buildah`.
//!
//! The Dockerfile's `RUN` steps run in this container (rootless BuildKit without a process
//! sandbox shares its PID namespace with them), so it holds no push credential and no git token:
//! the image step (`kiln step push`, a restricted container) pushes the layout. Only the optional
//! read-only pull credential (`KILN_PULL_*`, for a private base image) is here, and a build can
//! read it.

use anyhow::{bail, Context as _};

use super::buildah::BuildahArgs;

pub async fn run(mut args: BuildahArgs) -> anyhow::Result<()> {
    args.prepare()?;
    let buildctl = std::env::var("KILN_BUILDCTL").unwrap_or_else(|_| "buildctl-daemonless.sh".into());
    let file = std::path::Path::new(&args.file);
    let dockerfile_dir = args.context.join(file.parent().unwrap_or(std::path::Path::new("")));
    let filename = file.file_name().context("the Dockerfile path names no file")?;

    let scratch = std::env::temp_dir().join(format!("kiln-buildkit-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut cmd = tokio::process::Command::new(&buildctl);
    cmd.arg("build").arg("--frontend").arg("dockerfile.v0");
    cmd.arg("--local").arg(format!("context={}", args.context.display()));
    cmd.arg("--local").arg(format!("dockerfile={}", dockerfile_dir.display()));
    cmd.arg("--opt").arg(format!("filename={}", filename.to_string_lossy()));
    if let Some(t) = &args.target {
        cmd.arg("--opt").arg(format!("target={t}"));
    }
    for a in &args.build_args {
        cmd.arg("--opt").arg(format!("build-arg:{a}"));
    }
    for l in &args.labels {
        cmd.arg("--opt").arg(format!("label:{l}"));
    }
    // An OCI layout directory (not a tarball) on the shared workspace, for the image step.
    let mut output = format!("type=oci,dest={},tar=false", args.layout.display());
    if let Some(created) = args.created {
        // Reproducible: every timestamp in the image becomes the commit time.
        cmd.arg("--opt").arg(format!("build-arg:SOURCE_DATE_EPOCH={created}"));
        output.push_str(",rewrite-timestamp=true");
    }
    cmd.arg("--output").arg(output);
    // Base images from registries spoken over plain HTTP: buildkitd's own config, through the
    // flags buildctl-daemonless.sh hands it.
    let insecure = super::pull::insecure_registries();
    if !insecure.is_empty() {
        let mut toml = String::new();
        for host in &insecure {
            toml.push_str(&format!("[registry.{}]\n  http = true\n  insecure = true\n", serde_json::Value::from(host.as_str())));
        }
        let config = scratch.join("buildkitd.toml");
        std::fs::write(&config, toml)?;
        let flags = std::env::var("BUILDKITD_FLAGS").unwrap_or_default();
        cmd.env("BUILDKITD_FLAGS", format!("{flags} --config {}", config.display()).trim());
    }
    if let Some(docker_config) = super::pull::docker_config(&scratch)? {
        cmd.env("DOCKER_CONFIG", docker_config);
    }
    println!("building {} with BuildKit (rootless)", args.file);
    let status = cmd.stdin(std::process::Stdio::null()).status().await.with_context(|| format!("cannot start {buildctl}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let status = status?;
    if !status.success() {
        bail!("buildctl build failed ({status})");
    }
    println!("wrote the image to {}", super::shown_path(&args.layout));
    Ok(())
}
