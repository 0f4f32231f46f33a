//! A small JSON file written whole or not at all (write, then rename): results steps hand to each
//! other and the APM layer cache's metadata, which a reader must never see half-written.

use std::path::Path;

use serde::Serialize;

/// Writes `value` as JSON to `path` atomically, creating the directory.
pub fn write_atomically<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(tmp, path)
}
