//! What the Dockerfile builders (`kiln step buildah`, `kiln step buildkit`) may know about
//! registries: which ones speak plain HTTP, and the optional read-only pull credential for a
//! private base image. The push credential is never here: those steps run the user's `RUN`
//! instructions, which can read anything the step's process can.

use std::path::{Path, PathBuf};

/// `KILN_INSECURE_REGISTRIES`: comma-separated `host:port` spoken over plain HTTP.
pub fn insecure_registries() -> Vec<String> {
    std::env::var("KILN_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect()
}

/// The pull credential (`KILN_PULL_USERNAME` / `KILN_PULL_PASSWORD` for the registry
/// `KILN_PULL_REGISTRY`, from the tenant's pull Secret) as a docker `config.json` in `dir`, which
/// is returned; None without one. A read-only robot account: the build can read it.
pub fn docker_config(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let (user, pass, registry) = (env("KILN_PULL_USERNAME"), env("KILN_PULL_PASSWORD"), env("KILN_PULL_REGISTRY"));
    if user.is_empty() || registry.is_empty() {
        return Ok(None);
    }
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{pass}"));
    std::fs::create_dir_all(dir)?;
    let file = dir.join("config.json");
    std::fs::write(&file, serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string())?;
    Ok(Some(dir.to_path_buf()))
}
