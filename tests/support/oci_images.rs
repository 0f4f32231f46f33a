//! Builds test images straight into a registry over plain HTTP (no Kiln code involved, so the copy
//! engine is tested against images it did not write): random incompressible layers, image
//! manifests, OCI indexes, and referrers (an artifact manifest whose `subject` is an image, plus
//! the `sha256-<hex>` tag index a client keeps for registries without the referrers API, as
//! distribution 2.8 is).
//!
//! Also compiled into the benchmark (`benches/kiln.rs`), so it depends only on reqwest, sha2, hex,
//! rand and serde_json.

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// `len` random (incompressible) bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    data
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An image manifest pushed by the tests.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub digest: String,
    pub manifest: Vec<u8>,
    /// Config and layers: `(digest, size)`.
    pub blobs: Vec<(String, u64)>,
}

impl TestImage {
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.manifest.len()})
    }

    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }
}

/// Pushes to one registry over plain HTTP, anonymously.
pub struct ImagePusher {
    http: reqwest::Client,
    host: String,
}

impl ImagePusher {
    pub fn new(host: &str) -> ImagePusher {
        ImagePusher {
            http: reqwest::Client::new(),
            host: host.to_string(),
        }
    }

    /// Uploads `data` as a blob (POST, then a monolithic PUT); returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = digest_of(data);
        let start = self
            .http
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.host))
            .send()
            .await
            .expect("start upload");
        assert_eq!(start.status(), 202, "start upload: {:?}", start.text().await);
        let location = start.headers()["location"].to_str().unwrap().to_string();
        let mut url = reqwest::Url::parse(&format!("http://{}", self.host))
            .unwrap()
            .join(&location)
            .unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let put = self
            .http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("upload blob");
        assert_eq!(put.status(), 201, "upload blob: {:?}", put.text().await);
        digest
    }

    /// PUTs a manifest under `reference` (a tag or its digest); returns its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let res = self
            .http
            .put(format!("http://{}/v2/{repo}/manifests/{reference}", self.host))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("push manifest");
        assert_eq!(res.status(), 201, "push manifest: {:?}", res.text().await);
        digest_of(bytes)
    }

    /// An image of `layers` (bottom to top) for `os/arch`, tagged `tag` when given.
    pub async fn push_image(&self, repo: &str, tag: Option<&str>, layers: &[&[u8]], os: &str, arch: &str) -> TestImage {
        let mut blobs = Vec::new();
        let mut layer_descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in layers {
            let digest = self.push_blob(repo, layer).await;
            layer_descriptors.push(json!({"mediaType": OCI_LAYER, "digest": digest, "size": layer.len()}));
            diff_ids.push(digest.clone());
            blobs.push((digest, layer.len() as u64));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": os,
            "config": {"Cmd": ["/app"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let config_digest = self.push_blob(repo, &config).await;
        blobs.insert(0, (config_digest.clone(), config.len() as u64));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layer_descriptors,
        }))
        .unwrap();
        let digest = digest_of(&manifest);
        self.push_manifest(repo, tag.unwrap_or(&digest), OCI_MANIFEST, &manifest).await;
        TestImage { digest, manifest, blobs }
    }

    /// An OCI index of `children` (each with its platform), tagged `tag`; returns its digest.
    pub async fn push_index(&self, repo: &str, tag: &str, children: &[(&TestImage, &str, &str)]) -> (String, Vec<u8>) {
        let manifests: Vec<Value> = children
            .iter()
            .map(|(image, os, arch)| {
                let mut d = image.descriptor();
                d["platform"] = json!({"os": os, "architecture": arch});
                d
            })
            .collect();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
        }))
        .unwrap();
        let digest = self.push_manifest(repo, tag, OCI_INDEX, &index).await;
        (digest, index)
    }

    /// A referrer of `subject`: an OCI artifact manifest (a signature-like payload blob) whose
    /// `subject` is the image, pushed by digest, and the `sha256-<hex>` tag index listing it.
    pub async fn push_referrer(&self, repo: &str, subject: &TestImage, payload: &[u8]) -> TestImage {
        let artifact_type = "application/vnd.kiln.test.signature";
        let payload_digest = self.push_blob(repo, payload).await;
        // The empty config of OCI 1.1 artifacts.
        let empty = b"{}";
        let empty_digest = self.push_blob(repo, empty).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.kiln.test.signature.v1", "digest": payload_digest, "size": payload.len()}],
            "subject": subject.descriptor(),
        }))
        .unwrap();
        let digest = digest_of(&manifest);
        self.push_manifest(repo, &digest, OCI_MANIFEST, &manifest).await;
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(), "artifactType": artifact_type}],
        }))
        .unwrap();
        let tag = subject.digest.replacen(':', "-", 1);
        self.push_manifest(repo, &tag, OCI_INDEX, &index).await;
        TestImage {
            digest,
            manifest,
            blobs: vec![(empty_digest, 2), (payload_digest, payload.len() as u64)],
        }
    }

    /// The `Docker-Content-Digest` of `repo:reference`, or None when absent.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let res = self
            .http
            .head(format!("http://{}/v2/{repo}/manifests/{reference}", self.host))
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await
            .expect("HEAD manifest");
        (res.status() == 200).then(|| res.headers()["docker-content-digest"].to_str().unwrap().to_string())
    }

    /// The raw bytes of `repo:reference`.
    pub async fn manifest_bytes(&self, repo: &str, reference: &str) -> Option<Vec<u8>> {
        let res = self
            .http
            .get(format!("http://{}/v2/{repo}/manifests/{reference}", self.host))
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        if res.status() != 200 {
            return None;
        }
        Some(res.bytes().await.unwrap().to_vec())
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let res = self
            .http
            .head(format!("http://{}/v2/{repo}/blobs/{digest}", self.host))
            .send()
            .await
            .expect("HEAD blob");
        res.status() == 200
    }
}
