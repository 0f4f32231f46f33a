//! `kiln step buildkit`: build a (multi-stage) Dockerfile with rootless BuildKit and push the
//! result — the image step of `job-templates/dockerfile.yaml` in a cluster, where no container
//! is privileged. It runs `buildctl-daemonless.sh` (shipped in the BuildKit rootless image), so
//! no daemon outlives the step. Same arguments as `kiln step buildah`.

use std::path::Path;

use anyhow::{bail, Context as _};

use super::buildah::BuildahArgs;
use super::ImageResult;

pub async fn run(mut args: BuildahArgs) -> anyhow::Result<()> {
    if let Some(info) = &args.created_from {
        args.created = Some(super::read_clone_info(info)?.commit_time);
    }
    let buildctl = std::env::var("KILN_BUILDCTL").unwrap_or_else(|_| "buildctl-daemonless.sh".into());
    let target = registry_sync::ImageRef::parse(&args.image).with_context(|| format!("--image {}", args.image))?;
    // With APM on, the build pushes the original under `<tag>-noapm`; the injected image gets the tag.
    let apm = super::apm::from_env(target.registry()).await?;
    let first = super::apm::first_push_target(&target, apm.as_ref());
    let registry_host = target.registry().to_string();
    let insecure = super::assemble::registry_options_from_env(&registry_host).insecure_registries;

    let file = Path::new(&args.file);
    if file.is_absolute() || file.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        bail!("Dockerfile path {:?} leaves the build context", args.file);
    }
    if !args.context.join(file).is_file() {
        bail!("no Dockerfile at {} in the commit", args.file);
    }
    let dockerfile_dir = args.context.join(file.parent().unwrap_or(Path::new("")));
    let filename = file.file_name().context("the Dockerfile path names no file")?;

    let scratch = std::env::temp_dir().join(format!("kiln-buildkit-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let metadata = scratch.join("metadata.json");
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
    let mut output = format!("type=image,name={first},push=true");
    if let Some(created) = args.created {
        // Reproducible: every timestamp in the image becomes the commit time.
        cmd.arg("--opt").arg(format!("build-arg:SOURCE_DATE_EPOCH={created}"));
        output.push_str(",rewrite-timestamp=true");
    }
    if insecure.iter().any(|h| *h == registry_host) {
        output.push_str(",registry.insecure=true");
    }
    cmd.arg("--output").arg(output).arg("--metadata-file").arg(&metadata);
    if let (Ok(user), Ok(pass)) = (std::env::var("KILN_REGISTRY_USERNAME"), std::env::var("KILN_REGISTRY_PASSWORD")) {
        if !user.is_empty() {
            // Credentials through a docker config file, never on the command line.
            let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{pass}"));
            std::fs::write(scratch.join("config.json"), serde_json::json!({"auths": {registry_host.clone(): {"auth": auth}}}).to_string())?;
            cmd.env("DOCKER_CONFIG", &scratch);
        }
    }
    println!("building {} with BuildKit (rootless)", args.file);
    let status = cmd.stdin(std::process::Stdio::null()).status().await.with_context(|| format!("cannot start {buildctl}"));
    let result = (|| {
        let status = status?;
        if !status.success() {
            bail!("buildctl build failed ({status})");
        }
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata).context("BuildKit wrote no metadata")?)?;
        let digest = meta["containerimage.digest"].as_str().context("BuildKit's metadata has no containerimage.digest")?.to_string();
        Ok(digest)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let digest = result?;
    let image = first.with_digest(digest.clone()).to_string();
    println!("pushed {image}");
    super::apm::finish(ImageResult { image, digest, apm: None }, &target, apm.as_ref(), &args.result_file).await
}
