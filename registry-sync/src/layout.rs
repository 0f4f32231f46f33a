//! Pushing an OCI image layout (a directory with `oci-layout`, `index.json` and
//! `blobs/sha256/…`, as the OCI image spec's image-layout.md defines it) to a registry.
//!
//! This is how a Dockerfile build reaches the registry without the build holding a credential:
//! BuildKit (or buildah) writes the image as a layout to a shared volume, and a separate
//! container that runs no user code pushes it. Blobs stream from disk (a base layer can be
//! hundreds of MiB; the pushing container has a small memory limit), each upload retried on
//! connection errors, 429 and 5xx as the copy engine does.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use reqwest::{header, StatusCode, Url};
use serde_json::Value;

use crate::assemble::PushedImage;
use crate::auth::RegistryOptions;
use crate::client::{human_bytes, short_digest, RegistryError};
use crate::reference::ImageRef;
use crate::session::{push_scope, RegistrySession, RetryPolicy};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest `index.json` or manifest read (as for manifests from a registry).
const MANIFEST_LIMIT: u64 = 4 << 20;
/// Nesting of indexes in one layout.
const MAX_DEPTH: usize = 8;
/// What one read of a blob file hands to the upload.
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("target {0} needs a tag (e.g. {0}:latest) and no digest")]
    InvalidTarget(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One manifest of the layout, as bytes with its media type and digest.
struct Manifest {
    media_type: String,
    digest: String,
    bytes: Vec<u8>,
    json: Value,
}

struct Push<'a> {
    dir: &'a Path,
    session: RegistrySession,
    scopes: Vec<String>,
    repository: String,
    retry: RetryPolicy,
    pushed: usize,
    skipped: usize,
    bytes: u64,
}

/// Pushes the one image (a manifest, or an index and its manifests) the layout at `dir` holds to
/// `target`, which must carry a tag; the root goes up under that tag, an index's children by
/// digest first.
pub async fn push_layout(
    dir: &Path,
    target: &ImageRef,
    opts: &RegistryOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<PushedImage, LayoutError> {
    let Some(tag) = target.tag().filter(|_| target.digest().is_none()) else {
        return Err(LayoutError::InvalidTarget(target.to_string()));
    };
    let index_path = dir.join("index.json");
    let index = read_json(&index_path, MANIFEST_LIMIT)?.1;
    let invalid = |message: String| LayoutError::Invalid { path: index_path.clone(), message };
    let entries = index["manifests"].as_array().ok_or_else(|| invalid("no \"manifests\" list".into()))?;
    let root = match entries.as_slice() {
        [one] => one,
        [] => return Err(invalid("the layout holds no image".into())),
        many => return Err(invalid(format!("the layout holds {} images; one was expected", many.len()))),
    };
    let retry = RetryPolicy::default();
    let session = RegistrySession::new(RegistrySession::http_client(), target.registry(), opts, retry);
    let repository = target.repository().to_string();
    let scopes = vec![push_scope(&repository)];
    session.authenticate(&scopes).await?;
    let mut push = Push { dir, session, scopes, repository, retry, pushed: 0, skipped: 0, bytes: 0 };
    let root = push.read_manifest(root)?;
    let config_digest = root.json["config"]["digest"].as_str().unwrap_or_default().to_string();
    push.manifest_tree(&root, tag, 0, progress).await?;
    progress(format!("pushed manifest {} to {target}", root.digest));
    Ok(PushedImage {
        reference: target.with_digest(&root.digest),
        digest: root.digest,
        config_digest,
        layers_pushed: push.pushed,
        layers_skipped: push.skipped,
        layers_mounted: 0,
        bytes_pushed: push.bytes,
    })
}

impl Push<'_> {
    fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let hex = hex.ok_or_else(|| LayoutError::Invalid {
            path: self.dir.to_path_buf(),
            message: format!("{digest:?} is not a sha256 digest"),
        })?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// Reads the manifest a descriptor points at, checking its digest.
    fn read_manifest(&self, desc: &Value) -> Result<Manifest, LayoutError> {
        let digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let path = self.blob_path(&digest)?;
        let (bytes, json) = read_json(&path, MANIFEST_LIMIT)?;
        let actual = crate::layer::sha256_digest(&bytes);
        if actual != digest {
            return Err(LayoutError::Invalid { path, message: format!("content is {actual}, not {digest}") });
        }
        let media_type = desc["mediaType"].as_str().or(json["mediaType"].as_str()).unwrap_or(OCI_MANIFEST).to_string();
        Ok(Manifest { media_type, digest, bytes, json })
    }

    /// Pushes a manifest's blobs (or an index's manifests, depth first) and then itself under
    /// `reference`.
    fn manifest_tree<'s>(
        &'s mut self,
        m: &'s Manifest,
        reference: &'s str,
        depth: usize,
        progress: &'s mut (dyn FnMut(String) + Send),
    ) -> futures_util::future::BoxFuture<'s, Result<(), LayoutError>> {
        Box::pin(async move {
            match m.media_type.as_str() {
                OCI_INDEX | DOCKER_LIST => {
                    if depth >= MAX_DEPTH {
                        return Err(LayoutError::Invalid {
                            path: self.dir.to_path_buf(),
                            message: format!("indexes nested deeper than {MAX_DEPTH}"),
                        });
                    }
                    for child in m.json["manifests"].as_array().into_iter().flatten() {
                        let child = self.read_manifest(child)?;
                        let digest = child.digest.clone();
                        self.manifest_tree(&child, &digest, depth + 1, &mut *progress).await?;
                    }
                }
                OCI_MANIFEST | DOCKER_MANIFEST => {
                    let blobs = std::iter::once(&m.json["config"]).chain(m.json["layers"].as_array().into_iter().flatten());
                    for desc in blobs.cloned().collect::<Vec<_>>() {
                        let digest = desc["digest"].as_str().unwrap_or_default().to_string();
                        let size = desc["size"].as_u64().unwrap_or(0);
                        self.blob(&digest, size, &mut *progress).await?;
                    }
                }
                other => {
                    return Err(LayoutError::Invalid {
                        path: self.dir.to_path_buf(),
                        message: format!("manifest {} has the unsupported media type {other:?}", m.digest),
                    })
                }
            }
            self.put_manifest(m, reference).await
        })
    }

    /// HEAD, then (when missing) an upload of the file's bytes, streamed; retried as a whole.
    async fn blob(&mut self, digest: &str, size: u64, progress: &mut (dyn FnMut(String) + Send)) -> Result<(), LayoutError> {
        let path = self.blob_path(digest)?;
        let on_disk = std::fs::metadata(&path).map_err(|e| LayoutError::Invalid { path: path.clone(), message: e.to_string() })?.len();
        if on_disk != size {
            return Err(LayoutError::Invalid { path, message: format!("{on_disk} bytes, the manifest says {size}") });
        }
        let operation = format!("check blob {digest}");
        if self.session.head(&self.scopes, &format!("{}/blobs/{digest}", self.repository), None, &operation).await?.is_some() {
            progress(format!("layer {} already present", short_digest(digest)));
            self.skipped += 1;
            return Ok(());
        }
        progress(format!("pushing blob {} ({})", short_digest(digest), human_bytes(size)));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.upload(&path, digest, size).await {
                Ok(()) => break,
                Err(LayoutError::Registry(e)) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            let Some(pause) = self.retry.pause(attempt, &failure) else { return Err(failure.into()) };
            tokio::time::sleep(pause).await;
        }
        self.pushed += 1;
        self.bytes += size;
        Ok(())
    }

    async fn upload(&self, path: &Path, digest: &str, size: u64) -> Result<(), LayoutError> {
        let s = &self.session;
        let operation = format!("push blob {digest}");
        let start = s.url(&format!("{}/blobs/uploads/", self.repository));
        let res = s.send(&self.scopes, &operation, || s.http().post(start.clone()).header(header::CONTENT_LENGTH, 0)).await?;
        let res = s.expect_status(res, &[StatusCode::ACCEPTED], &operation).await?;
        let location = crate::session::header_str(&res, "location").ok_or_else(|| s.protocol(&operation, "202 without a Location".into()))?;
        let mut url: Url = s.resolve_location(&location)?;
        url.query_pairs_mut().append_pair("digest", digest);
        let file = tokio::fs::File::open(path).await.map_err(|e| LayoutError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        let body = futures_util::stream::unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let request = s
            .http()
            .put(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        let res = s.send_once(&self.scopes, &operation, request).await?;
        s.expect_status(res, &[StatusCode::CREATED], &operation).await?;
        Ok(())
    }

    async fn put_manifest(&self, m: &Manifest, reference: &str) -> Result<(), LayoutError> {
        let s = &self.session;
        let url = s.url(&format!("{}/manifests/{reference}", self.repository));
        let operation = format!("push manifest {}:{reference}", self.repository);
        let body = Bytes::from(m.bytes.clone());
        let res = s
            .send(&self.scopes, &operation, || {
                s.http().put(url.clone()).header(header::CONTENT_TYPE, &m.media_type).body(body.clone())
            })
            .await?;
        let res = s.expect_status(res, &[StatusCode::CREATED], &operation).await?;
        match crate::session::header_str(&res, "docker-content-digest") {
            Some(d) if d != m.digest => Err(s.protocol(&operation, format!("the registry stored {d}, expected {}", m.digest)).into()),
            _ => Ok(()),
        }
    }
}

/// A JSON file of at most `limit` bytes, as bytes and value.
fn read_json(path: &Path, limit: u64) -> Result<(Vec<u8>, Value), LayoutError> {
    let invalid = |message: String| LayoutError::Invalid { path: path.to_path_buf(), message };
    let len = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?.len();
    if len > limit {
        return Err(invalid(format!("{len} bytes, more than the {limit} a manifest may have")));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let json = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    Ok((bytes, json))
}
