//! Reproducible tar+gzip layers from files on disk.
//!
//! The same inputs always give the same bytes: entries sorted by path, parent directories
//! created, every mtime set to one given timestamp, uid/gid 0 without user or group names, modes
//! normalised to 0755/0644 (keeping the executable bit), symlinks kept as symlinks, and a gzip
//! header without mtime or file name at a fixed compression level.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// The OCI media type of the layers built here.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Fixed gzip level: changing it changes every digest.
const GZIP_LEVEL: u32 = 6;

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer source {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error("layer source {path} is neither a file, a directory nor a symlink")]
    UnsupportedFileType { path: PathBuf },
    #[error("invalid path inside the image {path:?}: {reason}")]
    InvalidDestination { path: String, reason: &'static str },
    #[error("{path:?} is both a directory and a file in the layer")]
    Conflict { path: String },
    #[error("cannot write the layer archive: {0}")]
    Write(io::Error),
}

/// One input of a layer: a file, directory (copied recursively) or symlink on disk, and where it
/// goes inside the image. A directory's contents go under `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub source: PathBuf,
    pub dest: String,
}

impl LayerEntry {
    pub fn new(source: impl Into<PathBuf>, dest: impl Into<String>) -> Self {
        LayerEntry {
            source: source.into(),
            dest: dest.into(),
        }
    }
}

/// The inputs of one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSpec {
    pub entries: Vec<LayerEntry>,
    /// The mtime of every entry, in unix seconds (like `SOURCE_DATE_EPOCH`); 0 by default.
    pub mtime: u64,
}

impl LayerSpec {
    pub fn new(entries: Vec<LayerEntry>) -> Self {
        LayerSpec { entries, mtime: 0 }
    }

    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
}

/// A compressed layer ready to push.
#[derive(Clone)]
pub struct BuiltLayer {
    /// The tar+gzip bytes.
    pub blob: bytes::Bytes,
    /// `sha256:` digest of `blob`.
    pub digest: String,
    /// Size of `blob` in bytes.
    pub size: u64,
    /// `sha256:` digest of the uncompressed tar (goes into the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub media_type: &'static str,
}

impl std::fmt::Debug for BuiltLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltLayer")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("diff_id", &self.diff_id)
            .finish_non_exhaustive()
    }
}

enum Node {
    Dir,
    File { source: PathBuf, executable: bool },
    Symlink { target: PathBuf },
}

/// Builds the layer described by `spec`. Blocking (reads files): call it from `spawn_blocking` in
/// async code.
pub fn build_layer(spec: &LayerSpec) -> Result<BuiltLayer, LayerError> {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    for entry in &spec.entries {
        let dest = normalize_dest(&entry.dest)?;
        add_source(&mut tree, &entry.source, &dest)?;
    }

    let gz = GzBuilder::new().write(HashingWriter::new(Vec::new()), Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for (path, node) in &tree {
        append_node(&mut tar, path, node, spec.mtime)?;
    }
    let tar_hashed = tar.into_inner().map_err(LayerError::Write)?;
    let (gz, diff_hash) = tar_hashed.finish();
    let blob_hashed = gz.finish().map_err(LayerError::Write)?;
    let (blob, blob_hash) = blob_hashed.finish();
    Ok(BuiltLayer {
        size: blob.len() as u64,
        blob: blob.into(),
        digest: format!("sha256:{}", hex::encode(blob_hash)),
        diff_id: format!("sha256:{}", hex::encode(diff_hash)),
        media_type: LAYER_MEDIA_TYPE,
    })
}

/// `/app/bin/` → `app/bin`; `/` → `` (the root). Refuses `..`.
fn normalize_dest(dest: &str) -> Result<String, LayerError> {
    let mut parts = Vec::new();
    for c in Path::new(dest).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => match p.to_str() {
                Some(s) => parts.push(s),
                None => {
                    return Err(LayerError::InvalidDestination {
                        path: dest.into(),
                        reason: "not UTF-8",
                    })
                }
            },
            Component::ParentDir => {
                return Err(LayerError::InvalidDestination {
                    path: dest.into(),
                    reason: "contains '..'",
                })
            }
            Component::Prefix(_) => {
                return Err(LayerError::InvalidDestination {
                    path: dest.into(),
                    reason: "has a prefix",
                })
            }
        }
    }
    Ok(parts.join("/"))
}

fn insert(tree: &mut BTreeMap<String, Node>, path: &str, node: Node) -> Result<(), LayerError> {
    // Parents first, as directories.
    let mut parent = String::new();
    let comps: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(c);
        match tree.get(&parent) {
            None => {
                tree.insert(parent.clone(), Node::Dir);
            }
            Some(Node::Dir) => {}
            Some(_) => return Err(LayerError::Conflict { path: parent }),
        }
    }
    if path.is_empty() {
        return Ok(()); // the root itself is not an entry
    }
    match (tree.get(path), &node) {
        (Some(Node::Dir), Node::Dir) => Ok(()),
        (Some(Node::Dir), _) | (Some(_), Node::Dir) => Err(LayerError::Conflict {
            path: path.to_string(),
        }),
        // A later entry for the same file wins, like a later COPY.
        _ => {
            tree.insert(path.to_string(), node);
            Ok(())
        }
    }
}

fn join(dest: &str, name: &str) -> String {
    if dest.is_empty() {
        name.to_string()
    } else {
        format!("{dest}/{name}")
    }
}

fn add_source(
    tree: &mut BTreeMap<String, Node>,
    source: &Path,
    dest: &str,
) -> Result<(), LayerError> {
    let err = |e| LayerError::Source {
        path: source.to_path_buf(),
        source: e,
    };
    let meta = fs::symlink_metadata(source).map_err(err)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(source).map_err(err)?;
        if dest.is_empty() {
            return Err(LayerError::InvalidDestination {
                path: "/".into(),
                reason: "a symlink cannot be the root",
            });
        }
        insert(tree, dest, Node::Symlink { target })
    } else if ft.is_file() {
        if dest.is_empty() {
            return Err(LayerError::InvalidDestination {
                path: "/".into(),
                reason: "a file cannot be the root",
            });
        }
        let executable = meta.permissions().mode() & 0o111 != 0;
        insert(
            tree,
            dest,
            Node::File {
                source: source.to_path_buf(),
                executable,
            },
        )
    } else if ft.is_dir() {
        insert(tree, dest, Node::Dir)?;
        let mut children: Vec<(String, PathBuf)> = Vec::new();
        for child in fs::read_dir(source).map_err(err)? {
            let child = child.map_err(err)?;
            let name = child.file_name();
            let Some(name) = name.to_str() else {
                return Err(LayerError::InvalidDestination {
                    path: child.path().display().to_string(),
                    reason: "file name is not UTF-8",
                });
            };
            children.push((name.to_string(), child.path()));
        }
        children.sort();
        for (name, path) in children {
            add_source(tree, &path, &join(dest, &name))?;
        }
        Ok(())
    } else {
        Err(LayerError::UnsupportedFileType {
            path: source.to_path_buf(),
        })
    }
}

fn base_header(entry_type: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    // new_gnu leaves user and group names empty.
    h.set_size(0);
    h
}

fn append_node<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    node: &Node,
    mtime: u64,
) -> Result<(), LayerError> {
    match node {
        Node::Dir => {
            let mut h = base_header(tar::EntryType::Directory, 0o755, mtime);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
                .map_err(LayerError::Write)
        }
        Node::File { source, executable } => {
            let err = |e| LayerError::Source {
                path: source.clone(),
                source: e,
            };
            let file = fs::File::open(source).map_err(err)?;
            let len = file.metadata().map_err(err)?.len();
            let mode = if *executable { 0o755 } else { 0o644 };
            let mut h = base_header(tar::EntryType::Regular, mode, mtime);
            h.set_size(len);
            // `take` guards against a file growing while we read it (the header size is fixed).
            let reader = io::Read::take(file, len);
            tar.append_data(
                &mut h,
                path,
                ExactReader {
                    inner: reader,
                    remaining: len,
                    path: source,
                },
            )
            .map_err(|e| LayerError::Source {
                path: source.clone(),
                source: e,
            })
        }
        Node::Symlink { target } => {
            let mut h = base_header(tar::EntryType::Symlink, 0o777, mtime);
            tar.append_link(&mut h, path, target)
                .map_err(LayerError::Write)
        }
    }
}

/// Fails if the file shrank while being archived (the tar header already promised `len` bytes).
struct ExactReader<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
}

impl<R: io::Read> io::Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} changed size while it was being archived",
                    self.path.display()
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Passes writes through and hashes them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> (W, Vec<u8>) {
        (self.inner, self.hasher.finalize().to_vec())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:` digest of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-layer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn list(layer: &BuiltLayer) -> Vec<(String, tar::EntryType, u32, u64, String)> {
        let mut out = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&layer.blob[..]));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut content = String::new();
            if h.entry_type() == tar::EntryType::Symlink {
                content = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
            } else {
                e.read_to_string(&mut content).unwrap();
            }
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.username().unwrap(), Some(""));
            assert_eq!(h.groupname().unwrap(), Some(""));
            out.push((
                path,
                h.entry_type(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                content,
            ));
        }
        out
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn layer_is_sorted_normalised_and_reproducible() {
        let dir = tempdir("repro");
        let app = dir.join("app");
        fs::create_dir_all(app.join("lib/z")).unwrap();
        fs::write(app.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(app.join("lib/b.txt"), "b").unwrap();
        fs::set_permissions(app.join("lib/b.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(app.join("lib/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("lib/a.txt", app.join("link")).unwrap();
        fs::write(dir.join("single"), "single file").unwrap();

        let spec = LayerSpec::new(vec![
            LayerEntry::new(&app, "/opt/app/"),
            LayerEntry::new(dir.join("single"), "/etc/kiln/single.conf"),
        ]);
        let a = build_layer(&spec).unwrap();
        set_mtime(&app.join("run.sh"), 1_700_000_000);
        set_mtime(&app.join("lib/a.txt"), 12345);
        let b = build_layer(&spec).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(a.blob, b.blob);
        assert_eq!(a.size, a.blob.len() as u64);
        assert_eq!(a.digest, sha256_digest(&a.blob));
        assert_ne!(a.digest, a.diff_id);

        let entries = list(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/kiln/",
                "etc/kiln/single.conf",
                "opt/",
                "opt/app/",
                "opt/app/lib/",
                "opt/app/lib/a.txt",
                "opt/app/lib/b.txt",
                "opt/app/lib/z/",
                "opt/app/link",
                "opt/app/run.sh"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("opt/app/run.sh").2, 0o755);
        assert_eq!(get("opt/app/run.sh").4, "#!/bin/sh\necho hi\n");
        assert_eq!(get("opt/app/lib/b.txt").2, 0o644);
        assert_eq!(get("opt/app/lib/z/").1, tar::EntryType::Directory);
        assert_eq!(get("opt/app/link").1, tar::EntryType::Symlink);
        assert_eq!(get("opt/app/link").4, "lib/a.txt");
        assert!(entries.iter().all(|e| e.3 == 0));

        // A different mtime is a different (but again stable) layer.
        let c = build_layer(&spec.clone().with_mtime(1_600_000_000)).unwrap();
        assert_ne!(c.digest, a.digest);
        assert!(list(&c).iter().all(|e| e.3 == 1_600_000_000));
        assert_eq!(
            c.digest,
            build_layer(&spec.with_mtime(1_600_000_000)).unwrap().digest
        );

        // gzip header: no mtime, no file name.
        assert_eq!(&a.blob[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&a.blob[4..8], &[0, 0, 0, 0]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_parent_dir_and_conflicts() {
        let dir = tempdir("bad");
        fs::write(dir.join("f"), "x").unwrap();
        let e = build_layer(&LayerSpec::new(vec![LayerEntry::new(
            dir.join("f"),
            "/a/../../etc/passwd",
        )]))
        .unwrap_err();
        assert!(matches!(e, LayerError::InvalidDestination { .. }), "{e}");
        let e = build_layer(&LayerSpec::new(vec![
            LayerEntry::new(dir.join("f"), "/a"),
            LayerEntry::new(dir.join("f"), "/a/b"),
        ]))
        .unwrap_err();
        assert!(matches!(e, LayerError::Conflict { .. }), "{e}");
        let e = build_layer(&LayerSpec::new(vec![LayerEntry::new(
            dir.join("missing"),
            "/a",
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_paths_survive() {
        let dir = tempdir("long");
        let long = "d".repeat(120);
        fs::create_dir_all(dir.join(&long)).unwrap();
        fs::write(dir.join(&long).join("f".repeat(90)), "x").unwrap();
        let layer = build_layer(&LayerSpec::new(vec![LayerEntry::new(&dir, "/srv")])).unwrap();
        let names: Vec<String> = list(&layer).into_iter().map(|e| e.0).collect();
        assert!(
            names.contains(&format!("srv/{long}/{}", "f".repeat(90))),
            "{names:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
