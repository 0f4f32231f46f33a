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

pub use crate::json_file::write_atomically as write_result;

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
    pub apm: Option<crate::store::ApmApplied>,
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
