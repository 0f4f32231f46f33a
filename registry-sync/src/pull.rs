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
}
