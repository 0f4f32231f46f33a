//! APM agents: which agent an app gets, the JVM options that load it, the agent's layer (built
//! once per agent version, cached, byte-for-byte the same every time), and its injection into an
//! image that is already in the registry (`registry_sync::mutate`).
//!
//! The same code runs in the image step of a build (`kiln step assemble|buildah|buildkit` with
//! `KILN_APM_*` in its env) and in the server for `POST /api/v1/builds/{id}/apm`.

use std::path::{Path, PathBuf};

use registry_sync::{
    mutate_and_push, BuiltLayer, ImageRef, LayerEntry, LayerSpec, MutateError, MutateSpec, PushedImage, RegistryOptions,
};
use serde::{Deserialize, Serialize};

use crate::config::{AgentSource, ApmAgent, ApmConfig};

/// Where an agent's files are in the image.
pub const AGENT_DIR: &str = "/opt/apm";
/// The env var the JVM reads options from wherever it is started (so entrypoints stay as built).
pub const JAVA_TOOL_OPTIONS: &str = "JAVA_TOOL_OPTIONS";

#[derive(Debug, thiserror::Error)]
pub enum ApmError {
    #[error("APM agent {name:?}{} is not configured (configured: {known})", .version.as_deref().map(|v| format!(" version {v:?}")).unwrap_or_default())]
    UnknownAgent { name: String, version: Option<String>, known: String },
    #[error("APM agent {agent} {version}: source {source_path} does not exist")]
    SourceMissing { agent: String, version: String, source_path: String },
    #[error("APM agent {agent} {version}: cannot read source {source_path}: {message}")]
    Source { agent: String, version: String, source_path: String, message: String },
    #[error("APM agent {agent} {version}: layer cache {path}: {source}")]
    Cache { agent: String, version: String, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Mutate(#[from] MutateError),
}

/// The configured agent `name` (at `version`, else the last listed version).
pub fn find_agent<'a>(config: &'a ApmConfig, name: &str, version: Option<&str>) -> Result<&'a ApmAgent, ApmError> {
    config
        .agents
        .iter()
        .rev()
        .find(|a| a.name == name && version.is_none_or(|v| a.version == v))
        .ok_or_else(|| ApmError::UnknownAgent {
            name: name.to_string(),
            version: version.map(str::to_string),
            known: if config.agents.is_empty() {
                "none".into()
            } else {
                config.agents.iter().map(|a| format!("{} {}", a.name, a.version)).collect::<Vec<_>>().join(", ")
            },
        })
}

/// The agent `app` asked for, if any; an error when the config does not have it (any more).
pub fn for_app<'a>(config: &'a ApmConfig, app: &crate::store::App) -> Result<Option<&'a ApmAgent>, ApmError> {
    match &app.settings.apm {
        Some(setting) => find_agent(config, &setting.agent, setting.version.as_deref()).map(Some),
        None => Ok(None),
    }
}

/// The agent's layer: its files under `/opt/apm/`, owned by root, every mtime 0 — so the same
/// version is the same digest on every machine. Built once per name and version into
/// `cache_dir/<name>/<version>/` and read from there afterwards.
pub async fn agent_layer(agent: &ApmAgent, cache_dir: &Path, opts: &RegistryOptions) -> Result<BuiltLayer, ApmError> {
    let dir = cache_dir.join(&agent.name).join(&agent.version);
    let cache_err = |path: &Path| {
        let (agent, version, path) = (agent.name.clone(), agent.version.clone(), path.to_path_buf());
        move |source| ApmError::Cache { agent, version, path, source }
    };
    if let Some(layer) = read_cached(&dir) {
        return Ok(layer);
    }
    std::fs::create_dir_all(&dir).map_err(cache_err(&dir))?;
    let scratch = dir.join(format!(".unpacked-{}-{}", std::process::id(), rand::random::<u32>()));
    let built = build_layer(agent, &scratch, opts).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let layer = built?;
    write_cached(&dir, &layer).map_err(cache_err(&dir))?;
    Ok(layer)
}

#[derive(Serialize, Deserialize)]
struct CachedLayer {
    digest: String,
    diff_id: String,
}

/// The cached layer, when it is whole (its bytes hash to the digest recorded beside them).
fn read_cached(dir: &Path) -> Option<BuiltLayer> {
    let meta: CachedLayer = serde_json::from_slice(&std::fs::read(dir.join("layer.json")).ok()?).ok()?;
    let blob = std::fs::read(dir.join("layer.tar.gz")).ok()?;
    if registry_sync::layer::sha256_digest(&blob) != meta.digest {
        return None;
    }
    Some(BuiltLayer {
        size: blob.len() as u64,
        blob: blob.into(),
        digest: meta.digest,
        diff_id: meta.diff_id,
        media_type: registry_sync::layer::LAYER_MEDIA_TYPE,
    })
}

/// Blob first, then the metadata that vouches for it, each by write-and-rename: a reader sees
/// the old state or the new, never half of one.
fn write_cached(dir: &Path, layer: &BuiltLayer) -> std::io::Result<()> {
    let tmp = dir.join(format!("layer.tar.gz.{}", std::process::id()));
    std::fs::write(&tmp, &layer.blob)?;
    std::fs::rename(&tmp, dir.join("layer.tar.gz"))?;
    let meta = CachedLayer { digest: layer.digest.clone(), diff_id: layer.diff_id.clone() };
    crate::json_file::write_atomically(&dir.join("layer.json"), &meta)
}

async fn build_layer(agent: &ApmAgent, scratch: &Path, opts: &RegistryOptions) -> Result<BuiltLayer, ApmError> {
    let source_err = |path: &str, message: String| ApmError::Source {
        agent: agent.name.clone(),
        version: agent.version.clone(),
        source_path: path.to_string(),
        message,
    };
    let missing = |path: &Path| ApmError::SourceMissing {
        agent: agent.name.clone(),
        version: agent.version.clone(),
        source_path: path.display().to_string(),
    };
    let files: PathBuf = match &agent.source {
        AgentSource { dir: Some(dir), .. } => {
            if !dir.is_dir() {
                return Err(missing(dir));
            }
            dir.clone()
        }
        AgentSource { tar_gz: Some(archive), .. } => {
            let file = std::fs::File::open(archive).map_err(|_| missing(archive))?;
            let (dest, name) = (scratch.to_path_buf(), archive.display().to_string());
            tokio::task::spawn_blocking(move || registry_sync::unpack_archive(file, &dest, &name))
                .await
                .map_err(|e| source_err(&archive.display().to_string(), e.to_string()))?
                .map_err(|e| source_err(&archive.display().to_string(), e.to_string()))?;
            scratch.to_path_buf()
        }
        AgentSource { image: Some(image), path: Some(path), .. } => {
            let reference = ImageRef::parse(image).map_err(|e| source_err(image, e.to_string()))?;
            let pulled = registry_sync::pull_image(&reference, opts).await.map_err(|e| match e {
                registry_sync::PullError::NotFound(_) => missing(Path::new(image)),
                e => source_err(image, e.to_string()),
            })?;
            let dest = scratch.to_path_buf();
            tokio::task::spawn_blocking(move || registry_sync::unpack_layers(&pulled, &dest))
                .await
                .map_err(|e| source_err(image, e.to_string()))?
                .map_err(|e| source_err(image, e.to_string()))?;
            let inside = scratch.join(path.trim_start_matches('/'));
            if !inside.is_dir() {
                return Err(missing(Path::new(&format!("{image}:{path}"))));
            }
            inside
        }
        _ => return Err(source_err("?", "the source names no dir, tar_gz or image".into())),
    };
    let spec = LayerSpec::new(vec![LayerEntry::new(&files, AGENT_DIR)]);
    let shown = files.display().to_string();
    tokio::task::spawn_blocking(move || registry_sync::build_layer(&spec))
        .await
        .map_err(|e| source_err(&shown, e.to_string()))?
        .map_err(|e| source_err(&shown, e.to_string()))
}

/// Pushes `original` plus the agent layer, with `JAVA_TOOL_OPTIONS` appended to (never replaced),
/// to `target`. A non-Java image is refused before anything is pushed.
pub async fn inject(
    original: &ImageRef,
    target: ImageRef,
    agent: &ApmAgent,
    layer: BuiltLayer,
    options: &str,
    opts: &RegistryOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<PushedImage, ApmError> {
    let mut spec = MutateSpec::new(original.clone(), target);
    spec.layers = vec![layer];
    spec.env_append = vec![(JAVA_TOOL_OPTIONS.into(), options.to_string())];
    spec.labels.insert("dev.kiln.apm.agent".into(), agent.name.clone());
    spec.labels.insert("dev.kiln.apm.version".into(), agent.version.clone());
    spec.require_java = Some("an APM agent".into());
    spec.created_by = format!("kiln apm: {} {}", agent.name, agent.version);
    Ok(mutate_and_push(&spec, opts, progress).await?)
}

/// The tag of a re-injected image: `<build tag>-apm-<agent>-<version>` (names and versions are
/// tag characters, checked in the config).
pub fn reinjected_tag(build_tag: &str, agent: &ApmAgent) -> String {
    let tag = format!("{build_tag}-apm-{}-{}", agent.name, agent.version);
    tag.chars().take(128).collect()
}

/// The tag the un-injected image of an APM build is pushed under; the build's own tag names the
/// injected one.
pub fn original_tag(build_tag: &str) -> String {
    format!("{build_tag}-noapm")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, version: &str) -> ApmAgent {
        ApmAgent {
            name: name.into(),
            version: version.into(),
            source: AgentSource { dir: Some("/nowhere".into()), ..Default::default() },
            java_options: crate::config::default_java_options(),
        }
    }

    #[test]
    fn agents_are_found_by_name_and_version() {
        let config = ApmConfig { agents: vec![agent("tracer", "1.0"), agent("tracer", "1.1"), agent("other", "3")] };
        assert_eq!(find_agent(&config, "tracer", None).unwrap().version, "1.1");
        assert_eq!(find_agent(&config, "tracer", Some("1.0")).unwrap().version, "1.0");
        let e = find_agent(&config, "tracer", Some("9")).unwrap_err().to_string();
        assert!(e.contains("\"tracer\" version \"9\" is not configured") && e.contains("tracer 1.1"), "{e}");
        let opts = config.agents[0].java_options_for("shop", "team");
        assert_eq!(opts, "-javaagent:/opt/apm/tracer.jar -Dapm.service.name=shop -Dapm.tenant=team");
    }
}
