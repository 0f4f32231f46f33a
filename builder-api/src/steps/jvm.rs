//! JVM sizing in the image step: Kiln's heap options (`-XX:MaxRAMPercentage=75.0
//! -XX:+ExitOnOutOfMemoryError` by default, the app's `settings.jvm`) go at the front of the
//! image's `JAVA_TOOL_OPTIONS`. The JVM applies options left to right, so whatever the image's own
//! value says comes later and wins; a Deployment's own `JAVA_TOOL_OPTIONS` env replaces the
//! image's altogether.
//!
//! `kiln step assemble --jvm-options` (Maven) puts them in as it assembles the image. `kiln step
//! push --jvm-options` (Dockerfile, opt-in) pushes the image as built under `<tag>-nojvm` and adds
//! them by mutation — the image mutation APM injection uses, which never downloads a layer — and
//! refuses an image that does not look like a Java image rather than leave the options out.

use anyhow::Context as _;
use registry_sync::{mutate_and_push, ImageRef, MutateError, MutateSpec};

use super::ImageResult;
use crate::apm::JAVA_TOOL_OPTIONS;

/// Why the options could not be added to a built image.
#[derive(Debug, thiserror::Error)]
pub enum JvmOptionsError {
    #[error(
        "the app's settings.jvm adds JVM options, but {image} does not look like a Java image ({why}), \
         so the build's tag was not pushed: remove settings.jvm (or set it to {{\"enabled\": false}}) for an image without a JVM"
    )]
    NotJava { image: String, why: String },
    #[error(transparent)]
    Mutate(MutateError),
}

/// The tag a Dockerfile image is pushed under before its JVM options are added.
pub fn unsized_tag(build_tag: &str) -> String {
    format!("{build_tag}-nojvm")
}

/// The env change that puts `options` before the image's own `JAVA_TOOL_OPTIONS`.
pub fn env_prepend(options: &str) -> Vec<(String, String)> {
    vec![(JAVA_TOOL_OPTIONS.to_string(), options.to_string())]
}

/// Adds `options` to the image just pushed (`pushed`), pushed to `target`.
pub async fn add_options_after_push(pushed: ImageResult, target: &ImageRef, options: &str) -> anyhow::Result<ImageResult> {
    let original = ImageRef::parse(&pushed.image).with_context(|| format!("pushed image {}", pushed.image))?;
    let opts = super::assemble::registry_options_from_env(target.registry());
    println!("adding JVM options {options} before the image's own JAVA_TOOL_OPTIONS");
    let mut spec = MutateSpec::new(original, target.clone());
    spec.env_prepend = env_prepend(options);
    spec.require_java = Some("JVM sizing".into());
    spec.created_by = format!("kiln jvm: {options}");
    let mut progress = |line: String| println!("{line}");
    let sized = mutate_and_push(&spec, &opts, &mut progress).await.map_err(|e| match e {
        MutateError::NotJava { image, why, .. } => JvmOptionsError::NotJava { image, why },
        e => JvmOptionsError::Mutate(e),
    })?;
    println!("pushed {} (JVM options {options})", sized.reference);
    Ok(ImageResult { image: sized.reference.to_string(), digest: sized.digest, apm: pushed.apm, jvm_options: Some(options.to_string()) })
}
