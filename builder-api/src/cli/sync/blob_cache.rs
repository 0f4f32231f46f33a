//! Where `kiln sync` put blobs, kept between runs in a small JSON file (as skopeo keeps its
//! blob-info cache): a later copy of an image that shares a base layer with one copied before
//! mounts the base from the repository it went to, instead of sending it again.
//!
//! The server keeps the same hints in its store (`blob_locations`); both feed registry-sync's
//! [`BlobLocations`]: seeded with what earlier runs learnt, journalling what this run learns.
//!
//! The file holds hints only: a wrong one (the repository was deleted since) costs one refused
//! mount, after which the blob is sent and its new place recorded. So a cache that cannot be read
//! is ignored with a warning and rewritten, and one that cannot be written is a warning too; never
//! a failed copy.

use std::path::{Path, PathBuf};

use registry_sync::{BlobLocation, BlobLocations};
use serde::{Deserialize, Serialize};

/// The most locations kept; the oldest go first. About 150 bytes each: the file stays near a
/// megabyte at most, read and written whole in milliseconds on every run.
pub const MAX_LOCATIONS: usize = 10_000;

/// The file's format. A file of another version (a newer kiln's) is ignored, not misread.
const VERSION: u32 = 1;

/// The `--blob-cache` value that keeps no cache.
pub const OFF: &str = "off";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    /// (registry, digest, repository), oldest first.
    locations: Vec<BlobLocation>,
}

/// The cache file of one `kiln sync` run.
#[derive(Debug)]
pub struct BlobCache {
    path: PathBuf,
}

impl BlobCache {
    /// The cache `--blob-cache` / `KILN_BLOB_CACHE` names (`off`: none), else the default one;
    /// none either when no home directory is known.
    pub fn from_setting(setting: Option<&Path>) -> Option<BlobCache> {
        match setting {
            Some(p) if p == Path::new(OFF) => None,
            Some(p) => Some(BlobCache { path: p.to_path_buf() }),
            None => default_path().map(|path| BlobCache { path }),
        }
    }

    /// Hints seeded with the saved locations, that journal what the copy learns for [`save`].
    /// A cache that cannot be read gives none, with a warning on stderr.
    ///
    /// [`save`]: BlobCache::save
    pub fn load(&self) -> BlobLocations {
        let locations = BlobLocations::remembering();
        match self.read() {
            Ok(saved) => locations.seed(saved),
            Err(why) => eprintln!(
                "warning: ignoring the blob cache {}: {why}; blobs it knew of are sent, not mounted, \
                 and the file is rewritten after this copy",
                self.path.display()
            ),
        }
        locations
    }

    /// Adds what `locations` learnt to the file, newest last, keeping the [`MAX_LOCATIONS`]
    /// newest. The file is read again first, so that runs at the same time lose only what one
    /// learnt while the other was writing; a failure to write is a warning on stderr.
    pub fn save(&self, locations: &BlobLocations) {
        let learnt = locations.take_learnt();
        if learnt.is_empty() {
            return;
        }
        // Unreadable now (load said why): start afresh rather than keep a broken file.
        let saved = self.read().unwrap_or_default();
        let file = CacheFile { version: VERSION, locations: merge(saved, learnt, MAX_LOCATIONS) };
        if let Err(e) = crate::json_file::write_atomically(&self.path, &file) {
            eprintln!("warning: cannot write the blob cache {}: {e}; the next copy sends what it could have mounted", self.path.display());
        }
    }

    /// The saved locations; none when there is no file yet.
    fn read(&self) -> Result<Vec<BlobLocation>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let file: CacheFile = serde_json::from_slice(&bytes).map_err(|e| format!("not a blob cache ({e})"))?;
        if file.version != VERSION {
            return Err(format!("version {} (this kiln reads version {VERSION})", file.version));
        }
        Ok(file.locations)
    }
}

/// `$XDG_CACHE_HOME/kiln/blob-locations.json`, else `~/.cache/kiln/blob-locations.json`. (The XDG
/// spec has a relative `XDG_CACHE_HOME` ignored.)
pub fn default_path() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = non_empty("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| non_empty("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("kiln").join("blob-locations.json"))
}

/// `saved` then `learnt` (oldest first), one location per (registry, digest) — the latest —
/// cut to the `max` newest.
fn merge(saved: Vec<BlobLocation>, learnt: Vec<BlobLocation>, max: usize) -> Vec<BlobLocation> {
    let mut newest_first: Vec<BlobLocation> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for location in learnt.into_iter().rev().chain(saved.into_iter().rev()) {
        if newest_first.len() == max {
            break;
        }
        if seen.insert((location.0.clone(), location.1.clone())) {
            newest_first.push(location);
        }
    }
    newest_first.reverse();
    newest_first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(registry: &str, digest: &str, repository: &str) -> BlobLocation {
        (registry.into(), digest.into(), repository.into())
    }

    #[test]
    fn a_later_location_of_a_blob_replaces_the_earlier_and_the_oldest_go_first() {
        let saved = vec![at("r:1", "sha256:a", "team/a"), at("r:1", "sha256:b", "team/a"), at("r:2", "sha256:a", "x/y")];
        let learnt = vec![at("r:1", "sha256:a", "team/b"), at("r:1", "sha256:c", "team/b")];
        assert_eq!(
            merge(saved.clone(), learnt.clone(), 10),
            [at("r:1", "sha256:b", "team/a"), at("r:2", "sha256:a", "x/y"), at("r:1", "sha256:a", "team/b"), at("r:1", "sha256:c", "team/b")]
        );
        assert_eq!(merge(saved, learnt, 3), [at("r:2", "sha256:a", "x/y"), at("r:1", "sha256:a", "team/b"), at("r:1", "sha256:c", "team/b")]);
    }

    #[test]
    fn what_one_run_learns_the_next_run_knows_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache { path: dir.path().join("kiln").join("blob-locations.json") };
        let first = cache.load();
        for i in 0..MAX_LOCATIONS + 5 {
            first.record("r:1", &format!("sha256:{i:064}"), "team/a");
        }
        cache.save(&first);
        let second = cache.load();
        assert_eq!(second.find("r:1", &format!("sha256:{:064}", MAX_LOCATIONS + 4), "team/b").as_deref(), Some("team/a"));
        assert_eq!(second.find("r:1", &format!("sha256:{:064}", 0), "team/b"), None, "the oldest were dropped");
        let file: CacheFile = serde_json::from_slice(&std::fs::read(&cache.path).unwrap()).unwrap();
        assert_eq!(file.locations.len(), MAX_LOCATIONS);
        // Seeded locations are not learnt again: nothing to write.
        assert!(second.take_learnt().is_empty());
    }

    #[test]
    fn a_corrupt_or_foreign_cache_is_ignored_and_replaced_by_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache { path: dir.path().join("blob-locations.json") };
        for bad in [&b"{\"version\": 1, \"locations\": [[\"r:1\""[..], b"\x00\xff", br#"{"version": 9, "locations": []}"#] {
            std::fs::write(&cache.path, bad).unwrap();
            assert!(cache.read().is_err());
            let hints = cache.load();
            assert_eq!(hints.find("r:1", "sha256:a", "x"), None);
            hints.record("r:1", "sha256:a", "team/a");
            cache.save(&hints);
            assert_eq!(cache.read().unwrap(), [at("r:1", "sha256:a", "team/a")]);
        }
    }

    #[test]
    fn off_keeps_no_cache_and_a_path_names_the_file() {
        assert!(BlobCache::from_setting(Some(Path::new("off"))).is_none());
        let named = BlobCache::from_setting(Some(Path::new("/tmp/k.json"))).unwrap();
        assert_eq!(named.path, Path::new("/tmp/k.json"));
    }
}
