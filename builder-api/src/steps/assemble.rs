//! `kiln step assemble`: the daemonless image step for Go and Maven apps (the way ko and Jib
//! build): the base image, plus the build's artifacts as reproducible layers (one for `--add`;
//! dependencies, resources and classes apart for `--maven-target`, see [`super::java_layers`]),
//! plus a config with entrypoint, env and OCI labels; pushed with `registry-sync`, reported by
//! digest — after APM injection when the plan asks for it ([`super::apm`]).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use registry_sync::{assemble_and_push, AssembleSpec, ImageRef, LayerEntry, LayerSpec, RegistryOptions};

use super::ImageResult;

#[derive(Debug, Args)]
pub struct AssembleArgs {
    /// Base image (`registry/repo:tag` or `@sha256:…`), or `scratch`.
    #[arg(long, default_value = "scratch")]
    pub base: String,
    /// Where to push: `registry/repository:tag`.
    #[arg(long)]
    pub image: String,
    /// `SRC:DEST` — a file or directory on disk and its path in the image. The file name of SRC
    /// may hold one `*`, which must match exactly one file. Repeatable. An image that only sets
    /// config over its base (`--env`, `--entrypoint`, `--label`) needs none.
    #[arg(long = "add", required_unless_present_any = ["maven_target", "env", "entrypoint", "labels", "jvm_options"])]
    pub add: Vec<String>,
    /// A Maven `target/` directory: dependencies, resources and classes as three layers, and
    /// the entrypoint `java -cp … <Main-Class of target/*.jar>` (unless `--entrypoint`).
    #[arg(long)]
    pub maven_target: Option<PathBuf>,
    /// Entrypoint as a JSON array.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// `KEY=VALUE` env for the image, repeatable.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// JVM options put before the base image's own `JAVA_TOOL_OPTIONS` (JVM sizing, see
    /// [`super::jvm`]): the base's value comes later and wins.
    #[arg(long, allow_hyphen_values = true)]
    pub jvm_options: Option<String>,
    /// `KEY=VALUE` label, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Working directory in the image.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Unix seconds for file times and the config's `created` (the commit time).
    #[arg(long, default_value_t = 0)]
    pub created: i64,
    /// Read the commit time from the clone step's result instead (`$WORKSPACE/.kiln/clone.json`),
    /// so the plan can be rendered before the commit is fetched.
    #[arg(long, conflicts_with = "created")]
    pub created_from: Option<PathBuf>,
    /// Where to write `{"image", "digest"}`.
    #[arg(long)]
    pub result_file: PathBuf,
}

pub async fn run(mut args: AssembleArgs) -> anyhow::Result<()> {
    if let Some(info) = &args.created_from {
        args.created = super::read_clone_info(info)?.commit_time;
    }
    let target = ImageRef::parse(&args.image).with_context(|| format!("--image {}", args.image))?;
    let mut spec = AssembleSpec::new(target.clone());
    if args.base != "scratch" {
        spec.base = Some(ImageRef::parse(&args.base).with_context(|| format!("--base {}", args.base))?);
    }
    let mtime = u64::try_from(args.created).unwrap_or(0);
    if let Some(target_dir) = &args.maven_target {
        let jar = resolve_source(&format!("{}/*.jar", target_dir.display()))?;
        let layout = super::java_layers::maven_layout(target_dir, &jar)?;
        println!("Maven layers: {} (dependencies, resources, classes; empty ones left out)", layout.layers.len());
        spec.layers.extend(layout.layers);
        spec.entrypoint = Some(layout.entrypoint);
    }
    let mut entries = Vec::new();
    for add in &args.add {
        let (src, dest) = add.rsplit_once(':').with_context(|| format!("--add {add:?} is not SRC:DEST"))?;
        entries.push(LayerEntry::new(resolve_source(src)?, dest));
    }
    if !entries.is_empty() {
        spec.layers.push(LayerSpec::new(entries).with_mtime(mtime));
    }
    if let Some(ep) = &args.entrypoint {
        spec.entrypoint = Some(serde_json::from_str(ep).with_context(|| format!("--entrypoint {ep:?} is not a JSON array of strings"))?);
    }
    spec.env = args.env.iter().map(|kv| split_kv("--env", kv)).collect::<anyhow::Result<_>>()?;
    if let Some(options) = &args.jvm_options {
        println!("JVM options {options} go before the base image's own JAVA_TOOL_OPTIONS");
        spec.env_prepend = super::jvm::env_prepend(options);
    }
    spec.labels = args.labels.iter().map(|kv| split_kv("--label", kv)).collect::<anyhow::Result<_>>()?;
    spec.workdir = args.workdir.clone();
    spec.created = args.created;
    let apm = super::apm::from_env(target.registry()).await?;
    spec.target = super::apm::first_push_target(&target, apm.as_ref());

    let opts = registry_options_from_env(target.registry());
    let mut progress = |line: String| println!("{line}");
    let pushed = assemble_and_push(&spec, &opts, &mut progress).await?;
    println!(
        "pushed {} ({} layer(s) pushed, {} already there, {} mounted, {})",
        pushed.reference,
        pushed.layers_pushed,
        pushed.layers_skipped,
        pushed.layers_mounted,
        registry_sync::client::human_bytes(pushed.bytes_pushed)
    );
    let pushed = ImageResult {
        image: pushed.reference.to_string(),
        digest: pushed.digest,
        apm: None,
        jvm_options: args.jvm_options.clone(),
    };
    super::apm::finish(pushed, &target, apm.as_ref(), None, &args.result_file).await
}

fn split_kv(flag: &str, kv: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = kv.split_once('=').with_context(|| format!("{flag} {kv:?} is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Registry access for steps: `KILN_INSECURE_REGISTRIES` (comma-separated `host:port` spoken over
/// plain HTTP) and `KILN_REGISTRY_USERNAME` / `KILN_REGISTRY_PASSWORD` (from a Secret), offered
/// only to the target registry — never to the registry a base image comes from.
pub fn registry_options_from_env(target_registry: &str) -> RegistryOptions {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let config = crate::config::RegistryConfig {
        insecure: env("KILN_INSECURE_REGISTRIES").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        username: Some(env("KILN_REGISTRY_USERNAME")),
        password: Some(env("KILN_REGISTRY_PASSWORD")),
    };
    config.options_for(target_registry)
}

/// Resolves a `SRC` that may hold one `*` in its file name to exactly one existing path.
pub fn resolve_source(src: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(src);
    let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|n| n.contains('*')) else {
        if !path.exists() {
            bail!("{src} does not exist (did the compile step produce it?)");
        }
        return Ok(path);
    };
    let (prefix, suffix) = name.split_once('*').unwrap();
    let dir = path.parent().context("a pattern needs a directory")?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            p.is_file()
                && n.len() >= prefix.len() + suffix.len()
                && n.starts_with(prefix)
                && n.ends_with(suffix)
                // Maven leaves these beside the artifact; they are never what runs.
                && !n.ends_with("-sources.jar")
                && !n.ends_with("-javadoc.jar")
                && !n.starts_with("original-")
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("nothing matches {src} (did the compile step produce it?)"),
        _ => bail!("{src} matches {} files: {:?}; name one", found.len(), found),
    }
}
