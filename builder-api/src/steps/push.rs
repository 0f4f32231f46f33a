//! `kiln step push`: the image step of a Dockerfile build. Pushes the OCI image layout the
//! compile step wrote (BuildKit or buildah, which ran the user's `RUN` steps without any
//! credential) with the registry credentials — the same registry code and the same APM
//! injection as `kiln step assemble`, in a container that runs no user code.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use registry_sync::ImageRef;

use super::ImageResult;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The OCI image layout the compile step wrote.
    #[arg(long)]
    pub layout: PathBuf,
    /// Where to push: `registry/repository:tag`.
    #[arg(long)]
    pub image: String,
    /// Where to write `{"image", "digest"}`.
    #[arg(long)]
    pub result_file: PathBuf,
    /// JVM options to put before the image's own `JAVA_TOOL_OPTIONS` (JVM sizing, opt-in): the
    /// image as built goes to `<tag>-nojvm`, the options are added by mutation
    /// ([`super::jvm`]), and an image that does not look like a Java image is refused.
    #[arg(long, allow_hyphen_values = true)]
    pub jvm_options: Option<String>,
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let target = ImageRef::parse(&args.image).with_context(|| format!("--image {}", args.image))?;
    if !args.layout.join("index.json").is_file() {
        anyhow::bail!("the compile step left no image at {} (no index.json)", args.layout.display());
    }
    // With APM on, the build pushes the original under `<tag>-noapm`; the injected image gets the
    // tag. With JVM options, the image as built goes under `<tag>-nojvm` first.
    let apm = super::apm::from_env(target.registry()).await?;
    let first = match args.jvm_options {
        Some(_) => super::apm::unsized_push_target(&target, apm.as_ref()),
        None => super::apm::first_push_target(&target, apm.as_ref()),
    };
    let opts = super::assemble::registry_options_from_env(target.registry());
    let mut progress = |line: String| println!("{line}");
    let pushed = registry_sync::push_layout(&args.layout, &first, &opts, &mut progress).await?;
    println!(
        "pushed {} ({} blob(s) pushed, {} already there, {})",
        pushed.reference,
        pushed.layers_pushed,
        pushed.layers_skipped,
        registry_sync::human_bytes(pushed.bytes_pushed)
    );
    let pushed = ImageResult { image: pushed.reference.to_string(), digest: pushed.digest, apm: None, jvm_options: None };
    super::apm::finish(pushed, &target, apm.as_ref(), args.jvm_options.as_deref(), &args.result_file).await
}
