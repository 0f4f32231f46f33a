//! A small JSON file written whole or not at all (write, then rename): results steps hand to each
//! other, the APM layer cache's metadata and `kiln sync`'s blob cache, which a reader must never
//! see half-written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Writes `value` as JSON to `path` atomically, creating the directory.
///
/// The temporary file is named for this process and call, beside `path` (a rename is atomic only
/// within one file system): two writers at once — two `kiln sync` runs sharing a cache — each
/// rename a whole file of their own, and the last one wins, instead of one renaming the other's
/// half-written bytes.
pub fn write_atomically<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temporary_beside(path);
    let written = serde_json::to_vec(value)
        .map_err(std::io::Error::from)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `.<name>.<pid>.<n>.tmp` in `path`'s directory.
fn temporary_beside(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = format!(".{name}.{}.{}.tmp", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed));
    path.with_file_name(unique)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("result.json");
        write_atomically(&path, &serde_json::json!({"digest": "sha256:1"})).unwrap();
        write_atomically(&path, &serde_json::json!({"digest": "sha256:2"})).unwrap();
        let read: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read["digest"], "sha256:2");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["result.json"], "no temporary file left");
        // A failed write (the target is a directory) removes its temporary file too.
        assert!(write_atomically(dir.path().join("sub").as_path(), &1).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Two `kiln sync` runs saving one blob cache at once, in miniature: writers of one file at
    /// the same time, every write succeeding, and a reader that only ever finds one writer's
    /// whole file. (With the one fixed `.tmp` name of before, a writer's rename failed or the
    /// reader found a cut file.)
    #[test]
    fn writers_at_the_same_time_never_show_a_reader_a_half_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob-locations.json");
        write_atomically(&path, &vec![0u32; 1]).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (written, reads) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let bytes = std::fs::read(&path).unwrap();
                    // Whether the file was whole, and one writer's alone.
                    let read = serde_json::from_slice::<Vec<u32>>(&bytes).map_err(|e| format!("{} bytes: {e}", bytes.len()));
                    reads.push(read.map(|values| values.windows(2).all(|p| p[0] == p[1])));
                }
                reads
            });
            let writers: Vec<_> = (1..=3u32)
                .map(|w| {
                    let path = &path;
                    // Big enough that writing it takes several system calls.
                    s.spawn(move || (0..20).map(|_| write_atomically(path, &vec![w; 100_000])).collect::<Result<Vec<_>, _>>())
                })
                .collect();
            let written: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
            // Whatever the writers did, the reader stops.
            done.store(true, Ordering::Relaxed);
            (written, reader.join().unwrap())
        });
        for w in written {
            w.expect("every write succeeds");
        }
        assert!(!reads.is_empty());
        for read in reads {
            assert!(read.expect("a whole file"), "two writers' bytes in one file");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["blob-locations.json"], "no temporary file left");
    }
}
