//! Pulling an image into memory and unpacking its layers, for tests and tools.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use oci_client::manifest::OciImageManifest;
use oci_client::RegistryOperation;

use crate::auth::RegistryOptions;
use crate::client::{self, Platform, RegistryError};
use crate::reference::ImageRef;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("image {0} not found")]
    NotFound(ImageRef),
    #[error("config of {reference} is not JSON: {source}")]
    InvalidConfig {
        reference: ImageRef,
        source: serde_json::Error,
    },
    #[error("layer {digest}: unsupported media type {media_type}")]
    UnsupportedLayer { digest: String, media_type: String },
    #[error(
        "layer {digest} has an entry with an unsafe path {path:?} (absolute or containing '..')"
    )]
    PathTraversal { digest: String, path: String },
    #[error("layer {digest}: {source}")]
    Unpack { digest: String, source: io::Error },
}

/// An image held in memory.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: ImageRef,
    pub manifest_digest: String,
    pub manifest: OciImageManifest,
    pub config: serde_json::Value,
    /// `(digest, blob)` in manifest order (compressed as stored).
    pub layers: Vec<(String, Vec<u8>)>,
}

/// Pulls `reference` (resolving an index to linux/amd64).
pub async fn pull_image(
    reference: &ImageRef,
    opts: &RegistryOptions,
) -> Result<PulledImage, PullError> {
    pull_image_for(reference, opts, &Platform::default()).await
}

/// Pulls `reference`, resolving an index to `platform`.
pub async fn pull_image_for(
    reference: &ImageRef,
    opts: &RegistryOptions,
    platform: &Platform,
) -> Result<PulledImage, PullError> {
    let client = client::build_client(opts, platform);
    let oci = reference.to_oci();
    let auth = client::store_auth(&client, opts, reference).await;
    client
        .auth(&oci, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| client::classify(e, opts, reference, "authentication"))?;
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(&oci, &auth)
        .await
        .map_err(
            |e| match client::classify(e, opts, reference, "pull manifest") {
                e if e.is_not_found() => PullError::NotFound(reference.clone()),
                e => e.into(),
            },
        )?;
    let config: serde_json::Value =
        serde_json::from_str(&config).map_err(|source| PullError::InvalidConfig {
            reference: reference.clone(),
            source,
        })?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let mut data = Vec::with_capacity(layer.size.max(0) as usize);
        client
            .pull_blob(&oci, layer, &mut data)
            .await
            .map_err(|e| {
                client::classify(e, opts, reference, &format!("pull layer {}", layer.digest))
            })?;
        layers.push((layer.digest.clone(), data));
    }
    Ok(PulledImage {
        reference: reference.clone(),
        manifest_digest,
        manifest,
        config,
        layers,
    })
}

/// Unpacks the layers of `pulled` in order into `dest`, applying OCI whiteouts. Entries with an
/// absolute path or a `..` component are refused (the whole unpack fails).
pub fn unpack_layers(pulled: &PulledImage, dest: &Path) -> Result<(), PullError> {
    fs::create_dir_all(dest).map_err(|source| PullError::Unpack {
        digest: String::new(),
        source,
    })?;
    for (i, (digest, blob)) in pulled.layers.iter().enumerate() {
        let media_type = pulled
            .manifest
            .layers
            .get(i)
            .map(|l| l.media_type.as_str())
            .unwrap_or("");
        let reader: Box<dyn Read + '_> = if blob.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&blob[..]))
        } else if media_type.ends_with(".tar") || media_type.ends_with("rootfs.diff.tar") {
            Box::new(&blob[..])
        } else {
            return Err(PullError::UnsupportedLayer {
                digest: digest.clone(),
                media_type: media_type.to_string(),
            });
        };
        unpack_tar(reader, dest, digest)?;
    }
    Ok(())
}

/// Unpacks one tar or tar+gzip archive (a layer, an APM agent's `.tar.gz`) into `dest`, with the
/// same refusals as [`unpack_layers`]; `name` says which archive in errors.
pub fn unpack_archive(reader: impl Read, dest: &Path, name: &str) -> Result<(), PullError> {
    fs::create_dir_all(dest).map_err(|source| PullError::Unpack {
        digest: name.to_string(),
        source,
    })?;
    let mut reader = io::BufReader::new(reader);
    let head = io::BufRead::fill_buf(&mut reader).map_err(|source| PullError::Unpack {
        digest: name.to_string(),
        source,
    })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        unpack_tar(flate2::read::GzDecoder::new(reader), dest, name)
    } else {
        unpack_tar(reader, dest, name)
    }
}

fn unpack_tar(reader: impl Read, dest: &Path, digest: &str) -> Result<(), PullError> {
    let io_err = |source| PullError::Unpack {
        digest: digest.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        let rel = safe_relative(&path).ok_or_else(|| PullError::PathTraversal {
            digest: digest.to_string(),
            path: path.display().to_string(),
        })?;
        if let Some(link) = entry.link_name().map_err(io_err)? {
            // Hard links must stay inside; symlink targets are resolved at run time, inside the
            // container's root, so they may be absolute.
            if entry.header().entry_type() == tar::EntryType::Link && safe_relative(&link).is_none()
            {
                return Err(PullError::PathTraversal {
                    digest: digest.to_string(),
                    path: link.display().to_string(),
                });
            }
        }
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // A whiteout deletes in the tree already unpacked; through a symlink unpacked earlier
        // (`a -> /etc`, then `a/.wh.passwd` or `a/.wh..wh..opq`) it would delete outside `dest`.
        if name.starts_with(".wh.") && crosses_symlink(dest, rel.parent().unwrap_or(Path::new(""))) {
            return Err(PullError::PathTraversal {
                digest: digest.to_string(),
                path: path.display().to_string(),
            });
        }
        if name == ".wh..wh..opq" {
            let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    remove_any(&child.path()).map_err(io_err)?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let victim = dest.join(rel.with_file_name(hidden));
            if fs::symlink_metadata(&victim).is_ok() {
                remove_any(&victim).map_err(io_err)?;
            }
            continue;
        }
        // `unpack_in` also refuses to write through a symlink that leaves `dest`.
        entry.unpack_in(dest).map_err(io_err)?;
    }
    Ok(())
}

/// Whether some directory on the way from `dest` to `dest/rel` is a symlink.
fn crosses_symlink(dest: &Path, rel: &Path) -> bool {
    let mut at = dest.to_path_buf();
    rel.components().any(|c| {
        at.push(c);
        fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// The path without a leading `./`, or None when absolute or containing `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with_layer(entries: &[(&str, &[u8])]) -> PulledImage {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses '..', so write the name bytes directly like a hostile archive would.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        PulledImage {
            reference: ImageRef::parse("r.io/x:1").unwrap(),
            manifest_digest: String::new(),
            manifest: OciImageManifest {
                layers: vec![oci_client::manifest::OciDescriptor {
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            config: serde_json::Value::Null,
            layers: vec![("sha256:x".into(), tar)],
        }
    }

    #[test]
    fn refuses_traversal_and_absolute_paths() {
        let dest = std::env::temp_dir().join(format!("kiln-unpack-{}", std::process::id()));
        for bad in ["../evil", "a/../../evil", "/etc/evil"] {
            let img = image_with_layer(&[("ok.txt", b"fine"), (bad, b"evil")]);
            let e = unpack_layers(&img, &dest).unwrap_err();
            assert!(matches!(e, PullError::PathTraversal { .. }), "{bad}: {e}");
        }
        assert!(!dest.parent().unwrap().join("evil").exists());
        let img = image_with_layer(&[("./a/b.txt", b"hello")]);
        unpack_layers(&img, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a/b.txt")).unwrap(), "hello");
        fs::remove_dir_all(&dest).unwrap();
    }

    /// A scratch root with `dest/` (where archives unpack) and `outside/` (which must stay as it
    /// is: one sentinel file).
    struct Scratch {
        root: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let root = std::env::temp_dir().join(format!("kiln-tar-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("dest")).unwrap();
            fs::create_dir_all(root.join("outside")).unwrap();
            fs::write(root.join("outside/sentinel"), b"untouched").unwrap();
            Scratch { root }
        }
        fn dest(&self) -> PathBuf {
            self.root.join("dest")
        }
        fn outside(&self) -> PathBuf {
            self.root.join("outside")
        }
        /// Nothing was written outside `dest`: `outside/` holds just the sentinel, unchanged, and
        /// the root holds nothing else.
        fn assert_outside_untouched(&self, what: &str) {
            let mut names: Vec<String> =
                fs::read_dir(self.outside()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            assert_eq!(names, ["sentinel"], "{what}: something was written outside");
            assert_eq!(fs::read(self.outside().join("sentinel")).unwrap(), b"untouched", "{what}: written through");
            let mut top: Vec<String> =
                fs::read_dir(&self.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            top.sort();
            assert_eq!(top, ["dest", "outside"], "{what}");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[derive(Clone, Debug)]
    enum Kind {
        File(Vec<u8>),
        Dir,
        Symlink(String),
        Hardlink(String),
    }

    /// A tar written the way a hostile tool would: names and link names as raw bytes (the tar
    /// crate's setters refuse `..`).
    fn hostile_tar(entries: &[(String, Kind)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_old();
            let data: &[u8] = match kind {
                Kind::File(d) => d,
                _ => &[],
            };
            let (ty, link) = match kind {
                Kind::File(_) => (tar::EntryType::Regular, None),
                Kind::Dir => (tar::EntryType::Directory, None),
                Kind::Symlink(t) => (tar::EntryType::Symlink, Some(t)),
                Kind::Hardlink(t) => (tar::EntryType::Link, Some(t)),
            };
            h.set_entry_type(ty);
            h.set_size(data.len() as u64);
            h.set_mode(if matches!(kind, Kind::Dir) { 0o755 } else { 0o644 });
            let old = h.as_old_mut();
            let n = path.len().min(99);
            old.name[..n].copy_from_slice(&path.as_bytes()[..n]);
            if let Some(t) = link {
                let n = t.len().min(99);
                old.linkname[..n].copy_from_slice(&t.as_bytes()[..n]);
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn explicit_traversals_are_refused_and_write_nothing_outside() {
        let file = |p: &str| (p.to_string(), Kind::File(b"evil".to_vec()));
        let cases: Vec<(&str, Box<dyn Fn(&Scratch) -> Vec<(String, Kind)>>)> = vec![
            ("../x", Box::new(move |_| vec![file("../outside/x")])),
            ("a/../../x", Box::new(move |_| vec![file("a/../../outside/x")])),
            ("absolute", Box::new(move |s| vec![file(&s.outside().join("x").display().to_string())])),
            ("symlink to an absolute dir, then a file through it", Box::new(move |s| {
                vec![(String::from("a"), Kind::Symlink(s.outside().display().to_string())), file("a/file")]
            })),
            ("symlink up and out, then a file through it", Box::new(move |_| {
                vec![(String::from("a"), Kind::Symlink("../outside".into())), file("a/sentinel")]
            })),
            ("hardlink to ../../x", Box::new(move |_| vec![(String::from("l"), Kind::Hardlink("../../outside/sentinel".into()))])),
            ("hardlink to an absolute path", Box::new(move |s| {
                vec![(String::from("l"), Kind::Hardlink(s.outside().join("sentinel").display().to_string()))]
            })),
            ("opaque whiteout through a symlink", Box::new(move |_| {
                vec![(String::from("a"), Kind::Symlink("../outside".into())), file("a/.wh..wh..opq")]
            })),
            ("whiteout through a symlink", Box::new(move |s| {
                vec![(String::from("a"), Kind::Symlink(s.outside().display().to_string())), file("a/.wh.sentinel")]
            })),
            ("hardlink through a symlink that leaves", Box::new(move |_| {
                vec![(String::from("a"), Kind::Symlink("../outside".into())), (String::from("l"), Kind::Hardlink("a/sentinel".into()))]
            })),
        ];
        for (what, entries) in cases {
            for compressed in [false, true] {
                let s = Scratch::new("explicit");
                let tar = hostile_tar(&entries(&s));
                let tar = if compressed { gzip(&tar) } else { tar };
                let result = unpack_archive(&tar[..], &s.dest(), what);
                assert!(result.is_err(), "{what} (gzip: {compressed}) was unpacked");
                s.assert_outside_untouched(what);
            }
        }
        // A symlink that points outside may be unpacked (it is resolved inside the container at
        // run time); a later regular file of the same name replaces it instead of writing through.
        let s = Scratch::new("replace");
        let tar = hostile_tar(&[
            ("a".into(), Kind::Symlink("../outside/sentinel".into())),
            ("a".into(), Kind::File(b"replaced".to_vec())),
        ]);
        unpack_archive(&tar[..], &s.dest(), "replace").unwrap();
        assert_eq!(fs::read(s.dest().join("a")).unwrap(), b"replaced");
        s.assert_outside_untouched("replace");
    }

    /// Random archives from hostile parts (and corrupted copies of them): whatever happens, no
    /// panic and nothing outside `dest`. `KILN_FUZZ_CASES` / `KILN_FUZZ_SEED` run it longer.
    #[test]
    fn fuzzed_archives_never_escape_dest() {
        use rand::{Rng, SeedableRng};
        let seed = std::env::var("KILN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b69_6c6e_u64);
        let cases = std::env::var("KILN_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500usize);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let s = Scratch::new("fuzz");
        let outside = s.outside().display().to_string();
        let names = [
            "a", "a/b", "a/b/c", "./a", "b", "a/sentinel", "b/sentinel", "..", "../outside/x", "a/../../outside/y", "a/./b", ".wh.a",
            "a/.wh..wh..opq", "", "/", &format!("{outside}/z"), "c//d", "a/b/../../../outside/w",
        ];
        let targets = ["a", "b", "../outside", "../../outside/sentinel", "a/b", &outside, "/", "/etc", "a/sentinel", "..", "."];
        let (mut ok, mut refused) = (0, 0);
        for case in 0..cases {
            let mut entries = vec![];
            for _ in 0..rng.random_range(1..7) {
                let name = names[rng.random_range(0..names.len())].to_string();
                let target = targets[rng.random_range(0..targets.len())].to_string();
                let kind = match rng.random_range(0..4) {
                    0 => Kind::File(vec![b'x'; rng.random_range(0..600)]),
                    1 => Kind::Dir,
                    2 => Kind::Symlink(target),
                    _ => Kind::Hardlink(target),
                };
                entries.push((name, kind));
            }
            let mut tar = hostile_tar(&entries);
            if rng.random_bool(0.2) {
                for _ in 0..rng.random_range(1..10) {
                    let i = rng.random_range(0..tar.len());
                    tar[i] = rng.random();
                }
            }
            if rng.random_bool(0.1) {
                tar.truncate(rng.random_range(0..tar.len()));
            }
            let tar = if rng.random_bool(0.3) { gzip(&tar) } else { tar };
            let what = format!("case {case} (seed {seed}): {entries:?}");
            match std::panic::catch_unwind(|| unpack_archive(&tar[..], &s.dest(), "fuzz")) {
                Ok(Ok(())) => ok += 1,
                Ok(Err(_)) => refused += 1,
                Err(_) => panic!("unpack panicked: {what}"),
            }
            s.assert_outside_untouched(&what);
            fs::remove_dir_all(s.dest()).unwrap();
        }
        println!("tar reader: {cases} archives: {ok} unpacked, {refused} refused");
        assert!(ok > cases / 20 && refused > cases / 20, "{ok} unpacked, {refused} refused");
    }
}
