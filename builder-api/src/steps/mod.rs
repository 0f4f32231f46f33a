//! The commands that run inside a build pod (or as host processes under the local executor):
//! `kiln step clone`, `kiln step assemble`, `kiln step buildah`, `kiln step buildkit`,
//! `kiln step push`, `kiln step exec`. Each reads its inputs from env vars and argv, never from
//! templated text, prints progress to stdout (the build log), prints its error as the last line on
//! stderr, and exits non-zero on failure.

pub mod apm;
pub mod assemble;
pub mod buildah;
pub mod buildkit;
pub mod clone;
pub mod java_layers;
pub mod jvm;
pub mod pull;
pub mod push;

use std::path::Path;

pub use crate::json_file::write_atomically as write_result;

use serde::{Deserialize, Serialize};

/// A path as the build log shows it: relative to `$WORKSPACE` when under it (`src`,
/// `out/image`), so a log says where in the build's workspace, not where on the server or node
/// the workspace happens to live; any other path as it is.
pub fn shown_path(path: &Path) -> String {
    let workspace = std::env::var_os("WORKSPACE").map(std::path::PathBuf::from);
    match workspace.as_deref().and_then(|w| path.strip_prefix(w).ok()) {
        Some(rel) if rel.as_os_str().is_empty() => ".".into(),
        Some(rel) => rel.display().to_string(),
        None => path.display().to_string(),
    }
}

/// What the clone step checked out; written to `$WORKSPACE/.kiln/clone.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneInfo {
    pub commit: String,
    /// Committer time, unix seconds.
    pub commit_time: i64,
}

/// What the image step pushed; written to the result file (a pod's termination message).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageResult {
    /// `registry/repo@sha256:…`
    pub image: String,
    pub digest: String,
    /// Set when an APM agent was injected: `image`/`digest` are then the injected image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apm: Option<crate::store::ApmApplied>,
    /// The JVM options put at the front of the image's `JAVA_TOOL_OPTIONS` (JVM sizing), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jvm_options: Option<String>,
}

/// Reads what the clone step wrote, with an error that says which step should have written it.
pub fn read_clone_info(path: &Path) -> anyhow::Result<CloneInfo> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("the clone step left no result at {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A required env var, with an error that names it.
pub fn required_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"))
}
