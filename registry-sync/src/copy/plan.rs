//! What a copy moves, read from the source once: every manifest as raw bytes in push order
//! (children before the index, referrers after their subject) and the unique blobs they reference.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::{header, StatusCode};
use serde_json::Value;

use crate::client::RegistryError;
use crate::layer::sha256_digest;
use crate::session::{header_str, pull_scope, RegistrySession, MANIFEST_ACCEPT};

use super::CopyError;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The largest manifest (or referrers list) read: the OCI distribution spec has registries
/// accept manifests of at least 4 MiB, and a client may refuse larger ones.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// How deep manifests may nest under the one asked for (index → image is 1; a signature of an
/// image in an index is 2; a signature of that signature 3) and how many one copy may hold. A
/// source can make up any number of valid manifests, each referring to the next: these bound
/// what a broken or hostile one can make a copy read.
const MAX_DEPTH: usize = 16;
const MAX_MANIFESTS: usize = 10_000;

/// A blob some manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blob {
    pub digest: String,
    pub size: u64,
}

/// A manifest exactly as the source stored it.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
    /// Indexes into `Plan::blobs` (config and layers).
    pub blobs: Vec<usize>,
    /// Indexes into `Plan::manifests` (the platform manifests of an index).
    pub children: Vec<usize>,
}

/// The referrers of one manifest, for targets without the referrers API (distribution 2.8), which
/// find them through the tag `sha256-<hex>` pointing at an index of their descriptors.
#[derive(Debug, Clone)]
pub(crate) struct Referrers {
    pub subject: String,
    /// Descriptors (as JSON objects) of the referrer manifests.
    pub descriptors: Vec<Value>,
    /// The source's own fallback-tag index, copied as is when the target has none.
    pub fallback_index: Option<Manifest>,
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Index into `manifests` of the image asked for.
    pub root: usize,
    /// In push order.
    pub manifests: Vec<Manifest>,
    pub blobs: Vec<Blob>,
    pub referrers: Vec<Referrers>,
}

impl Plan {
    pub fn root(&self) -> &Manifest {
        &self.manifests[self.root]
    }

    /// Bytes of all blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Reads the graph under `reference` (a tag or a digest) in `repository` of the source.
pub(crate) async fn read_plan(
    source: &RegistrySession,
    repository: &str,
    reference: &str,
    with_referrers: bool,
) -> Result<Plan, CopyError> {
    let mut reader = PlanReader {
        source,
        repository,
        scopes: vec![pull_scope(repository)],
        with_referrers,
        plan: Plan {
            root: 0,
            manifests: Vec::new(),
            blobs: Vec::new(),
            referrers: Vec::new(),
        },
        manifest_index: HashMap::new(),
        blob_index: HashMap::new(),
    };
    let root = reader.visit(reference.to_string(), 0).await?;
    reader.plan.root = root;
    Ok(reader.plan)
}

struct PlanReader<'a> {
    source: &'a RegistrySession,
    repository: &'a str,
    scopes: Vec<String>,
    with_referrers: bool,
    plan: Plan,
    manifest_index: HashMap<String, usize>,
    blob_index: HashMap<String, usize>,
}

impl<'a> PlanReader<'a> {
    /// Adds the manifest `reference`, `depth` levels under the one asked for, after its children,
    /// then its referrers; returns its index.
    fn visit(&mut self, reference: String, depth: usize) -> BoxFuture<'_, Result<usize, CopyError>> {
        Box::pin(async move {
            if let Some(&i) = self.manifest_index.get(&reference) {
                return Ok(i);
            }
            if depth > MAX_DEPTH || self.plan.manifests.len() >= MAX_MANIFESTS {
                return Err(CopyError::InvalidManifest {
                    digest: reference,
                    reason: format!(
                        "the source's manifests nest more than {MAX_DEPTH} deep or number more than {MAX_MANIFESTS} \
                         (indexes and referrers of referrers): refused"
                    ),
                });
            }
            let mut manifest = fetch_manifest(self.source, self.repository, &self.scopes, &reference)
                .await?
                .ok_or_else(|| CopyError::Source(RegistryError::NotFound {
                    registry: self.source.registry().to_string(),
                    what: format!("manifest {}:{reference}", self.repository),
                }))?;
            if let Some(&i) = self.manifest_index.get(&manifest.digest) {
                return Ok(i);
            }
            let json: Value = serde_json::from_slice(&manifest.bytes).map_err(|e| {
                CopyError::InvalidManifest {
                    digest: manifest.digest.clone(),
                    reason: format!("not JSON: {e}"),
                }
            })?;
            if let Some(children) = json.get("manifests").and_then(Value::as_array) {
                for child in children {
                    let digest = descriptor_digest(child, &manifest.digest)?;
                    let i = self.visit(digest, depth + 1).await?;
                    manifest.children.push(i);
                }
            }
            let blob_descriptors = json
                .get("config")
                .into_iter()
                .chain(json.get("layers").and_then(Value::as_array).into_iter().flatten())
                .chain(json.get("blobs").and_then(Value::as_array).into_iter().flatten());
            for desc in blob_descriptors {
                // Foreign layers (with `urls`) live outside registries and are never pushed.
                if desc.get("urls").is_some_and(|u| !u.is_null()) {
                    continue;
                }
                let digest = descriptor_digest(desc, &manifest.digest)?;
                let size = desc.get("size").and_then(Value::as_u64).unwrap_or(0);
                let i = *self.blob_index.entry(digest.clone()).or_insert_with(|| {
                    self.plan.blobs.push(Blob { digest, size });
                    self.plan.blobs.len() - 1
                });
                if !manifest.blobs.contains(&i) {
                    manifest.blobs.push(i);
                }
            }
            let digest = manifest.digest.clone();
            self.plan.manifests.push(manifest);
            let index = self.plan.manifests.len() - 1;
            self.manifest_index.insert(digest.clone(), index);
            self.manifest_index.insert(reference, index);
            if self.with_referrers {
                let referrers = list_referrers(self.source, self.repository, &self.scopes, &digest).await?;
                if let Some(referrers) = referrers {
                    for desc in &referrers.descriptors {
                        let d = descriptor_digest(desc, &digest)?;
                        self.visit(d, depth + 1).await?;
                    }
                    self.plan.referrers.push(referrers);
                }
            }
            Ok(index)
        })
    }
}

fn descriptor_digest(desc: &Value, parent: &str) -> Result<String, CopyError> {
    desc.get("digest")
        .and_then(Value::as_str)
        .filter(|d| crate::reference::is_valid_digest(d))
        .map(str::to_string)
        .ok_or_else(|| CopyError::InvalidManifest {
            digest: parent.to_string(),
            reason: format!("descriptor without a valid sha256 digest: {desc}"),
        })
}

/// GETs a manifest (by tag or digest) as raw bytes; None when the registry does not have it.
/// A manifest asked for by digest must hash to that digest.
pub(crate) async fn fetch_manifest(
    session: &RegistrySession,
    repository: &str,
    scopes: &[String],
    reference: &str,
) -> Result<Option<Manifest>, CopyError> {
    let url = session.url(&format!("{repository}/manifests/{reference}"));
    let operation = format!("get manifest {repository}:{reference}");
    let res = session
        .send(scopes, &operation, || {
            session.http().get(url.clone()).header(header::ACCEPT, MANIFEST_ACCEPT)
        })
        .await
        .map_err(CopyError::Source)?;
    if res.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let res = session
        .expect_status(res, &[StatusCode::OK], &operation)
        .await
        .map_err(CopyError::Source)?;
    let content_type = header_str(&res, "content-type");
    let bytes = session
        .read_limited(res, MAX_MANIFEST_BYTES, &operation)
        .await
        .map_err(CopyError::Source)?;
    let digest = sha256_digest(&bytes);
    if reference.starts_with("sha256:") && digest != reference {
        return Err(CopyError::DigestMismatch {
            what: format!("manifest {repository}@{reference}"),
            expected: reference.to_string(),
            actual: digest,
        });
    }
    let media_type = match content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| c.starts_with("application/vnd."))
    {
        Some(c) => c,
        None => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| CopyError::InvalidManifest {
                digest: digest.clone(),
                reason: "neither Content-Type nor mediaType names its media type".into(),
            })?,
    };
    Ok(Some(Manifest {
        digest,
        media_type,
        bytes,
        blobs: Vec::new(),
        children: Vec::new(),
    }))
}

/// The tag under which registries without the referrers API keep the referrers of `digest`.
pub(crate) fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The referrers of `digest`: from the OCI 1.1 referrers API, else from the `sha256-<hex>` tag.
async fn list_referrers(
    session: &RegistrySession,
    repository: &str,
    scopes: &[String],
    digest: &str,
) -> Result<Option<Referrers>, CopyError> {
    let url = session.url(&format!("{repository}/referrers/{digest}"));
    let operation = format!("list referrers of {repository}@{digest}");
    let res = session
        .send(scopes, &operation, || {
            session.http().get(url.clone()).header(header::ACCEPT, OCI_INDEX)
        })
        .await
        .map_err(CopyError::Source)?;
    let is_index = header_str(&res, "content-type").is_some_and(|c| c.starts_with(OCI_INDEX));
    if res.status() == StatusCode::OK && is_index {
        let body = session
            .read_limited(res, MAX_MANIFEST_BYTES, &operation)
            .await
            .map_err(CopyError::Source)?;
        let index: Value = serde_json::from_slice(&body)
            .map_err(|e| CopyError::Source(session.protocol(&operation, e.to_string())))?;
        let descriptors = index_descriptors(&index);
        return Ok((!descriptors.is_empty()).then(|| Referrers {
            subject: digest.to_string(),
            descriptors,
            fallback_index: None,
        }));
    }
    let Some(index) = fetch_manifest(session, repository, scopes, &referrers_tag(digest)).await? else {
        return Ok(None);
    };
    let json: Value = serde_json::from_slice(&index.bytes).map_err(|e| CopyError::InvalidManifest {
        digest: index.digest.clone(),
        reason: format!("referrers index is not JSON: {e}"),
    })?;
    let descriptors = index_descriptors(&json);
    Ok((!descriptors.is_empty()).then(|| Referrers {
        subject: digest.to_string(),
        descriptors,
        fallback_index: Some(index),
    }))
}

/// The `manifests` of an index.
pub(crate) fn index_descriptors(index: &Value) -> Vec<Value> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}
