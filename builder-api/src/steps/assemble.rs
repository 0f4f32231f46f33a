//! `kiln step assemble`: the daemonless image step for Go and Maven apps (the way ko and Jib
//! build): the base image, plus the build's artifacts as one reproducible layer, plus a config
//! with entrypoint, env and OCI labels; pushed with `registry-sync`, reported by digest.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;

#[derive(Debug, Args)]
pub struct AssembleArgs {
    /// Base image (`registry/repo:tag` or `@sha256:…`), or `scratch`.
    #[arg(long, default_value = "scratch")]
    pub base: String,
    /// Where to push: `registry/repository:tag`.
    #[arg(long)]
    pub image: String,
    /// `SRC:DEST` — a file or directory on disk and its path in the image. The file name of SRC
    /// may hold one `*`, which must match exactly one file. Repeatable.
    #[arg(long = "add", required = true)]
    pub add: Vec<String>,
    /// Entrypoint as a JSON array.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// `KEY=VALUE` env for the image, repeatable.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// `KEY=VALUE` label, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Working directory in the image.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Unix seconds for file times and the config's `created` (the commit time).
    #[arg(long, default_value_t = 0)]
    pub created: i64,
    /// Where to write `{"image", "digest"}`.
    #[arg(long)]
    pub result_file: PathBuf,
}

pub async fn run(args: AssembleArgs) -> anyhow::Result<()> {
    let _ = (&args.base, &args.image);
    bail!("not yet")
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
