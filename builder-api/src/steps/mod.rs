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
pub mod pull;
pub mod push;

use std::path::Path;

use serde::{Deserialize, Serialize};

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
    pub apm: Option<crate::apm::ApmApplied>,
}

/// Writes a small JSON result atomically (write then rename), creating the directory.
pub fn write_result<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(tmp, path)
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
