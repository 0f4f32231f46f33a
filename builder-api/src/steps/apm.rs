//! The APM part of the image step: when the plan put `KILN_APM_*` into the step's env, the image
//! is first pushed under `<tag>-noapm`, then the agent is injected into it and the result pushed
//! under the build's own tag — for assembled and Dockerfile-built images alike. The build's
//! digest is the injected image's; the original stays addressable for re-injection.
//!
//! Env (set by the plan, values never pass through a shell): `KILN_APM_AGENT`,
//! `KILN_APM_VERSION`, `KILN_APM_SOURCE` (the config's source as JSON), `KILN_APM_JAVA_OPTIONS`
//! (already filled in), and where to cache the agent layer: `KILN_APM_CACHE`, else
//! `$CACHE/apm-layers` (the tenant cache), else `$WORKSPACE/.kiln/apm-layers`.

use std::path::PathBuf;

use anyhow::Context as _;
use registry_sync::{human_bytes, BuiltLayer, ImageRef};

use super::ImageResult;
use crate::apm;
use crate::store::ApmApplied;
use crate::config::{AgentSource, ApmAgent};

/// The agent the plan asked for, its layer ready.
#[derive(Debug, Clone)]
pub struct ApmStep {
    pub agent: ApmAgent,
    pub java_options: String,
    pub layer: BuiltLayer,
}

/// The APM request in this step's env, if any, with the agent's layer built (or read from the
/// cache) — before the step builds or pushes anything, so a missing source fails first.
pub async fn from_env(target_registry: &str) -> anyhow::Result<Option<ApmStep>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(name) = var("KILN_APM_AGENT") else { return Ok(None) };
    let version = var("KILN_APM_VERSION").context("KILN_APM_AGENT is set but KILN_APM_VERSION is not")?;
    let source: AgentSource = serde_json::from_str(&var("KILN_APM_SOURCE").context("KILN_APM_SOURCE is not set")?)
        .context("KILN_APM_SOURCE is not an agent source")?;
    let java_options = var("KILN_APM_JAVA_OPTIONS").context("KILN_APM_JAVA_OPTIONS is not set")?;
    let cache = var("KILN_APM_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("CACHE").map(|c| PathBuf::from(c).join("apm-layers")))
        .or_else(|| var("WORKSPACE").map(|w| PathBuf::from(w).join(".kiln/apm-layers")))
        .context("no place for the APM layer cache: set KILN_APM_CACHE")?;
    let agent = ApmAgent { name, version, source, java_options: java_options.clone() };
    let opts = super::assemble::registry_options_from_env(target_registry);
    let layer = apm::agent_layer(&agent, &cache, &opts).await?;
    println!("APM agent {} {}: layer {} ({})", agent.name, agent.version, layer.digest, human_bytes(layer.size));
    Ok(Some(ApmStep { agent, java_options, layer }))
}

/// Where the image step pushes before injection: the build's tag, or `<tag>-noapm` with APM on.
pub fn first_push_target(target: &ImageRef, apm: Option<&ApmStep>) -> ImageRef {
    match (apm, target.tag()) {
        (Some(_), Some(tag)) => target.with_tag(apm::original_tag(tag)),
        _ => target.clone(),
    }
}

/// Where the image step pushes what it built when JVM options are added to it afterwards by
/// mutation (a Dockerfile image, `super::jvm`): `<tag>-nojvm`; the options then go into the
/// image [`first_push_target`] names, which an agent may still be injected into.
pub fn unsized_push_target(target: &ImageRef, apm: Option<&ApmStep>) -> ImageRef {
    let before_apm = first_push_target(target, apm);
    match target.tag() {
        Some(tag) => before_apm.with_tag(super::jvm::unsized_tag(tag)),
        None => before_apm,
    }
}

/// Injects the agent into the image just pushed (`pushed`) and pushes it to `target`.
pub async fn inject_after_push(pushed: ImageResult, target: &ImageRef, apm: &ApmStep) -> anyhow::Result<ImageResult> {
    let original = ImageRef::parse(&pushed.image).with_context(|| format!("pushed image {}", pushed.image))?;
    let opts = super::assemble::registry_options_from_env(target.registry());
    let agent = &apm.agent;
    println!("injecting APM agent {} {} into {}", agent.name, agent.version, original);
    let layer = apm.layer.clone();
    let mut progress = |line: String| println!("{line}");
    let injected =
        apm::inject(&original, target.clone(), agent, layer, &apm.java_options, &opts, &mut progress).await?;
    println!("pushed {} (APM agent {} {})", injected.reference, agent.name, agent.version);
    Ok(ImageResult {
        image: injected.reference.to_string(),
        digest: injected.digest,
        apm: Some(ApmApplied { agent: agent.name.clone(), version: agent.version.clone(), original_image: pushed.image }),
        jvm_options: pushed.jvm_options,
    })
}

/// The end of every image step: add JVM options by mutation when asked (`jvm_mutation`, a
/// Dockerfile image pushed under [`unsized_push_target`]), inject the agent when asked, then
/// write the result the executor reads. The JVM options go first so that the image an agent is
/// injected into — the original a re-injection starts from — already has them.
pub async fn finish(
    pushed: ImageResult,
    target: &ImageRef,
    apm: Option<&ApmStep>,
    jvm_mutation: Option<&str>,
    result_file: &std::path::Path,
) -> anyhow::Result<()> {
    let pushed = match jvm_mutation {
        Some(options) => super::jvm::add_options_after_push(pushed, &first_push_target(target, apm), options).await?,
        None => pushed,
    };
    let result = match apm {
        Some(apm) => inject_after_push(pushed, target, apm).await?,
        None => pushed,
    };
    super::write_result(result_file, &result)?;
    Ok(())
}
