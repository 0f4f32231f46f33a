//! `kiln step clone`: fetch exactly one commit, shallow, with gix.
// Placeholder until the gix clone lands.
pub struct CloneOptions { pub url: String, pub commit: String, pub ref_name: Option<String>, pub dest: std::path::PathBuf, pub token: Option<String> }
pub fn clone_commit(_o: &CloneOptions) -> anyhow::Result<()> { anyhow::bail!("todo") }
pub fn commit_time(_d: &std::path::Path, _c: &str) -> anyhow::Result<i64> { Ok(0) }
