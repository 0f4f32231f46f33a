//! Daemonless image assembly (the way ko and Jib do it): base image + new layers + config, pushed
//! straight to a registry with oci-client.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::{Client, RegistryOperation};
use serde_json::{json, Map, Value};

use crate::auth::RegistryOptions;
use crate::client::{self, human_bytes, short_digest, Platform, RegistryError};
use crate::layer::{self, BuiltLayer, LayerError, LayerSpec};
use crate::reference::ImageRef;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// What to build and where to push it.
#[derive(Debug, Clone)]
pub struct AssembleSpec {
    /// The base image; `None` builds on scratch.
    pub base: Option<ImageRef>,
    /// New layers, bottom to top.
    pub layers: Vec<LayerSpec>,
    /// Layers built before (a cached APM agent layer), pushed after `layers`.
    pub prebuilt_layers: Vec<BuiltLayer>,
    /// Where to push; must carry a tag.
    pub target: ImageRef,
    /// Replaces the base entrypoint. Like `docker build`, setting it without `cmd` clears the
    /// base image's `Cmd`.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// Set or override, in order, on top of the base env.
    pub env: Vec<(String, String)>,
    /// Put before the value the image already has, after `env`, with one space between; set
    /// when the image has none. For options where the last one wins (the JVM reads
    /// `JAVA_TOOL_OPTIONS` left to right), so a value the base image sets still decides.
    pub env_prepend: Vec<(String, String)>,
    /// Appended, after `env` and `env_prepend`, to the value the image already has, with one
    /// space between (a `JAVA_TOOL_OPTIONS` the image sets keeps its options); set when the image
    /// has none.
    pub env_append: Vec<(String, String)>,
    /// Merged over the base labels.
    pub labels: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// Unix seconds for the config's `created` and the history entries (reproducibility).
    pub created: i64,
    /// Keep the base config's `created` instead of `created` (a mutation of a built image is
    /// then as reproducible as the image itself, without knowing its commit time).
    pub keep_base_created: bool,
    /// What the history entries of the new layers say made them (`kiln assemble`).
    pub created_by: String,
    /// Which manifest to pick from a base image index, and the platform of a scratch image.
    pub platform: Platform,
}

impl AssembleSpec {
    /// A spec with nothing but a target: scratch base, no layers, created at 0, linux/amd64.
    pub fn new(target: ImageRef) -> Self {
        AssembleSpec {
            base: None,
            layers: Vec::new(),
            target,
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            env_prepend: Vec::new(),
            env_append: Vec::new(),
            prebuilt_layers: Vec::new(),
            labels: BTreeMap::new(),
            workdir: None,
            created: 0,
            keep_base_created: false,
            created_by: "kiln assemble".into(),
            platform: Platform::default(),
        }
    }
}

/// The result of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `sha256:` digest of the manifest.
    pub digest: String,
    /// The target repository pinned by `digest`.
    pub reference: ImageRef,
    pub config_digest: String,
    /// Layer blobs uploaded (new layers, and base layers copied from another repository).
    pub layers_pushed: usize,
    /// Layers the target repository already had (checked with HEAD) or got by a cross-repository
    /// mount.
    pub layers_skipped: usize,
    /// Of `layers_skipped`, how many came by a cross-repository mount.
    pub layers_mounted: usize,
    /// Bytes of all blobs uploaded (layers and config; not the manifest).
    pub bytes_pushed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("target {0} needs a tag (e.g. {0}:latest) and no digest")]
    InvalidTarget(String),
    #[error("invalid image spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("base image {base} not found (platform {platform})")]
    BaseNotFound { base: String, platform: String },
    #[error("base image {base} is unusable: {reason}")]
    InvalidBase { base: String, reason: String },
    /// The caller's check of the base config said no; nothing was pushed.
    #[error("base image {base} refused: {reason}")]
    BaseRefused { base: String, reason: String },
    #[error("layer {index}: {source}")]
    Layer { index: usize, source: LayerError },
    #[error("internal error: {0}")]
    Internal(String),
}

struct Base {
    reference: ImageRef,
    manifest_digest: String,
    layers: Vec<OciDescriptor>,
    config: Value,
}

/// A check of the base image's config, run before anything is pushed: an `Err` stops the push
/// with [`AssembleError::BaseRefused`].
pub type BaseCheck<'a> = &'a (dyn Fn(&Value) -> Result<(), BaseRefusal> + Send + Sync);

/// Why a [`BaseCheck`] refused the base image, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BaseRefusal(pub String);

/// Assembles the image described by `spec` and pushes it to `spec.target`.
pub async fn assemble_and_push(
    spec: &AssembleSpec,
    opts: &RegistryOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<PushedImage, AssembleError> {
    assemble_checked(spec, opts, progress, &|_| Ok(())).await
}

/// [`assemble_and_push`], refusing a base whose config fails `check` before any upload.
pub async fn assemble_checked(
    spec: &AssembleSpec,
    opts: &RegistryOptions,
    progress: &mut (dyn FnMut(String) + Send),
    check: BaseCheck<'_>,
) -> Result<PushedImage, AssembleError> {
    let target = &spec.target;
    if target.tag().is_none() || target.digest().is_some() {
        return Err(AssembleError::InvalidTarget(target.to_string()));
    }
    let mut created = chrono::DateTime::from_timestamp(spec.created, 0)
        .ok_or_else(|| {
            AssembleError::InvalidSpec(format!("created {} is out of range", spec.created))
        })?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let client = client::build_client(opts, &spec.platform);
    let target_oci = target.to_oci();
    // Fail on a bad credential (or a registry that is down) before any work.
    client::authenticate(&client, opts, target, RegistryOperation::Push).await?;

    let base = match &spec.base {
        Some(base) => Some(pull_base(&client, opts, base, &spec.platform, progress).await?),
        None => None,
    };
    if let Some(base) = &base {
        check(&base.config).map_err(|BaseRefusal(reason)| AssembleError::BaseRefused {
            base: base.reference.to_string(),
            reason,
        })?;
        if spec.keep_base_created {
            if let Some(c) = base.config.get("created").and_then(Value::as_str) {
                created = c.to_string();
            }
        }
    }

    // Build the new layers off the async threads.
    let mut built: Vec<BuiltLayer> = Vec::with_capacity(spec.layers.len());
    for (index, layer_spec) in spec.layers.iter().enumerate() {
        let layer_spec = layer_spec.clone();
        let layer = tokio::task::spawn_blocking(move || layer::build_layer(&layer_spec))
            .await
            .map_err(|e| AssembleError::Internal(format!("layer builder panicked: {e}")))?
            .map_err(|source| AssembleError::Layer { index, source })?;
        progress(format!(
            "built layer {} ({})",
            short_digest(&layer.digest),
            human_bytes(layer.size)
        ));
        built.push(layer);
    }
    built.extend(spec.prebuilt_layers.iter().cloned());

    let mut stats = Stats::default();
    let mut manifest_layers = Vec::new();

    if let Some(base) = &base {
        for desc in &base.layers {
            let desc = oci_layer_descriptor(desc);
            ensure_base_layer(&client, opts, target, base, &desc, progress, &mut stats).await?;
            manifest_layers.push(desc);
        }
    }
    for layer in &built {
        let classify =
            |e| client::classify(e, opts, target, &format!("push layer {}", layer.digest));
        if client
            .blob_exists(&target_oci, &layer.digest)
            .await
            .map_err(classify)?
        {
            progress(format!(
                "layer {} already present",
                short_digest(&layer.digest)
            ));
            stats.skipped += 1;
        } else {
            progress(format!(
                "pushing layer {} ({})",
                short_digest(&layer.digest),
                human_bytes(layer.size)
            ));
            client
                .push_blob(&target_oci, layer.blob.clone(), &layer.digest)
                .await
                .map_err(classify)?;
            stats.pushed += 1;
            stats.bytes += layer.size;
        }
        manifest_layers.push(OciDescriptor {
            media_type: layer.media_type.to_string(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            ..Default::default()
        });
    }

    let config = build_config(spec, base.as_ref(), &built, &created)?;
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| AssembleError::Internal(e.to_string()))?;
    let config_digest = layer::sha256_digest(&config_bytes);
    {
        let classify = |e| client::classify(e, opts, target, "push config");
        if !client
            .blob_exists(&target_oci, &config_digest)
            .await
            .map_err(classify)?
        {
            stats.bytes += config_bytes.len() as u64;
            client
                .push_blob(&target_oci, config_bytes.clone(), &config_digest)
                .await
                .map_err(classify)?;
        }
    }

    let mut annotations = BTreeMap::new();
    if let Some(base) = &base {
        annotations.insert(
            "org.opencontainers.image.base.name".to_string(),
            base.reference.to_string(),
        );
        annotations.insert(
            "org.opencontainers.image.base.digest".to_string(),
            base.manifest_digest.clone(),
        );
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest.clone(),
            size: config_bytes.len() as i64,
            ..Default::default()
        },
        layers: manifest_layers,
        subject: None,
        artifact_type: None,
        annotations: (!annotations.is_empty()).then_some(annotations),
    };
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| AssembleError::Internal(e.to_string()))?;
    let digest = layer::sha256_digest(&manifest_bytes);
    let push_manifest = || {
        client.push_manifest_raw(
            &target_oci,
            manifest_bytes.clone(),
            OCI_IMAGE_MEDIA_TYPE.parse().expect("static header value"),
        )
    };
    match push_manifest().await {
        Ok(_) => {}
        // Two builds of one commit push the same blobs to one repository at once: a HEAD may
        // find a blob the other build is still committing, and the manifest then names a blob
        // the registry does not have yet (docker-registry answers 400 MANIFEST_BLOB_UNKNOWN, seen
        // in the suite). Send this image's own blobs, present or not, and try once more.
        Err(e) if blob_unknown(&e) => {
            progress(format!("the registry lacks a blob of the manifest ({e}); sending the image's own blobs again"));
            for layer in &built {
                client
                    .push_blob(&target_oci, layer.blob.clone(), &layer.digest)
                    .await
                    .map_err(|e| client::classify(e, opts, target, &format!("push layer {}", layer.digest)))?;
            }
            client
                .push_blob(&target_oci, config_bytes.clone(), &config_digest)
                .await
                .map_err(|e| client::classify(e, opts, target, "push config"))?;
            push_manifest().await.map_err(|e| client::classify(e, opts, target, "push manifest"))?;
        }
        Err(e) => return Err(client::classify(e, opts, target, "push manifest").into()),
    }
    progress(format!("pushed manifest {digest} to {target}"));

    Ok(PushedImage {
        reference: target.with_digest(&digest),
        digest,
        config_digest,
        layers_pushed: stats.pushed,
        layers_skipped: stats.skipped,
        layers_mounted: stats.mounted,
        bytes_pushed: stats.bytes,
    })
}

#[derive(Default)]
struct Stats {
    pushed: usize,
    skipped: usize,
    mounted: usize,
    bytes: u64,
}

async fn pull_base(
    client: &Client,
    opts: &RegistryOptions,
    base: &ImageRef,
    platform: &Platform,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Base, AssembleError> {
    let auth = client::store_auth(client, opts, base).await;
    let oci = base.to_oci();
    client
        .auth(&oci, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| client::classify(e, opts, base, "authentication"))?;
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(&oci, &auth)
        .await
        .map_err(
            |e| match client::classify(e, opts, base, "pull base manifest") {
                e if e.is_not_found() => AssembleError::BaseNotFound {
                    base: base.to_string(),
                    platform: platform.to_string(),
                },
                e => e.into(),
            },
        )?;
    let invalid = |reason: String| AssembleError::InvalidBase {
        base: base.to_string(),
        reason,
    };
    let config: Value =
        serde_json::from_str(&config).map_err(|e| invalid(format!("config is not JSON: {e}")))?;
    if !config.is_object() {
        return Err(invalid("config is not a JSON object".into()));
    }
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if diff_ids != manifest.layers.len() {
        return Err(invalid(format!(
            "manifest has {} layers but the config lists {diff_ids} diff_ids",
            manifest.layers.len()
        )));
    }
    progress(format!(
        "base {base} is {manifest_digest} ({} layers)",
        manifest.layers.len()
    ));
    Ok(Base {
        reference: base.clone(),
        manifest_digest,
        layers: manifest.layers,
        config,
    })
}

/// Docker media types of base layers become their OCI equivalents (same bytes).
fn oci_layer_descriptor(desc: &OciDescriptor) -> OciDescriptor {
    let media_type = match desc.media_type.as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    };
    OciDescriptor {
        media_type: media_type.to_string(),
        ..desc.clone()
    }
}

/// Makes sure the target repository has a base layer: HEAD, then a cross-repository mount when
/// both live on one registry, else a streamed copy.
async fn ensure_base_layer(
    client: &Client,
    opts: &RegistryOptions,
    target: &ImageRef,
    base: &Base,
    desc: &OciDescriptor,
    progress: &mut (dyn FnMut(String) + Send),
    stats: &mut Stats,
) -> Result<(), AssembleError> {
    let target_oci = target.to_oci();
    let base_oci = base.reference.to_oci();
    let what = format!("base layer {}", desc.digest);
    let classify_target = |e| client::classify(e, opts, target, &what);
    if desc.media_type.contains("nondistributable") {
        progress(format!(
            "layer {} is non-distributable, not copied",
            short_digest(&desc.digest)
        ));
        stats.skipped += 1;
        return Ok(());
    }
    if client
        .blob_exists(&target_oci, &desc.digest)
        .await
        .map_err(classify_target)?
    {
        progress(format!(
            "layer {} already present",
            short_digest(&desc.digest)
        ));
        stats.skipped += 1;
        return Ok(());
    }
    if base.reference.registry() == target.registry()
        && base.reference.repository() != target.repository()
    {
        // oci-client accepts only 201 as success; a 202 (an upload session instead of a mount)
        // or any error just means "not mounted" — the copy below is the fallback.
        match client
            .mount_blob(&target_oci, &base_oci, &desc.digest)
            .await
        {
            Ok(()) => {
                progress(format!(
                    "layer {} mounted from {}",
                    short_digest(&desc.digest),
                    base.reference.repository()
                ));
                stats.skipped += 1;
                stats.mounted += 1;
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(digest = %desc.digest, error = %e, "cross-repository mount refused")
            }
        }
    }
    let size = u64::try_from(desc.size).unwrap_or(0);
    progress(format!(
        "copying layer {} ({}) from {}",
        short_digest(&desc.digest),
        human_bytes(size),
        base.reference
    ));
    let stream = client
        .pull_blob_stream(&base_oci, desc)
        .await
        .map_err(|e| client::classify(e, opts, &base.reference, &what))?;
    let stream = stream.stream.map_err(OciDistributionError::from);
    client
        .push_blob_stream(&target_oci, stream, &desc.digest, Some(size))
        .await
        .map_err(classify_target)?;
    stats.pushed += 1;
    stats.bytes += size;
    Ok(())
}

/// Whether a manifest push was refused because the registry lacks a blob it names.
fn blob_unknown(e: &OciDistributionError) -> bool {
    e.to_string().contains("BLOB_UNKNOWN")
}

/// Sets `key` in `env` to `joined(old value)`, or to `alone` when the image has no value (or
/// only blanks) for it.
fn join_env_value(env: &mut Vec<String>, key: &str, joined: impl Fn(&str) -> String, alone: &str) {
    match env.iter_mut().find(|e| env_name(e) == key) {
        Some(existing) => {
            let old = existing.split_once('=').map_or("", |(_, v)| v);
            let value = if old.trim().is_empty() { alone.to_string() } else { joined(old) };
            *existing = format!("{key}={value}");
        }
        None => env.push(format!("{key}={alone}")),
    }
}

/// The image config: the base's (or an empty one) plus env, entrypoint, cmd, labels, workdir, the
/// new diff_ids and one history entry per new layer.
fn build_config(
    spec: &AssembleSpec,
    base: Option<&Base>,
    layers: &[BuiltLayer],
    created: &str,
) -> Result<Value, AssembleError> {
    let mut config = match base {
        Some(base) => base.config.clone(),
        None => {
            let mut c = json!({
                "architecture": spec.platform.architecture,
                "os": spec.platform.os,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            });
            if let Some(v) = &spec.platform.variant {
                c["variant"] = json!(v);
            }
            c
        }
    };
    let root = config.as_object_mut().expect("checked to be an object");
    root.insert("created".into(), json!(created));

    let inner = root.entry("config").or_insert_with(|| json!({}));
    if inner.is_null() {
        *inner = json!({});
    }
    let inner = inner.as_object_mut().ok_or_else(|| {
        AssembleError::InvalidSpec("base config's \"config\" is not an object".into())
    })?;

    if !spec.env.is_empty() || !spec.env_prepend.is_empty() || !spec.env_append.is_empty() {
        let mut env: Vec<String> = inner
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for (key, value) in &spec.env {
            check_env_name(key)?;
            let line = format!("{key}={value}");
            match env.iter_mut().find(|e| env_name(e) == key) {
                Some(existing) => *existing = line,
                None => env.push(line),
            }
        }
        for (key, value) in &spec.env_prepend {
            check_env_name(key)?;
            join_env_value(&mut env, key, |old| format!("{value} {old}"), value);
        }
        for (key, value) in &spec.env_append {
            check_env_name(key)?;
            join_env_value(&mut env, key, |old| format!("{old} {value}"), value);
        }
        inner.insert("Env".into(), json!(env));
    }
    if let Some(entrypoint) = &spec.entrypoint {
        inner.insert("Entrypoint".into(), json!(entrypoint));
        if spec.cmd.is_none() {
            inner.remove("Cmd");
        }
    }
    if let Some(cmd) = &spec.cmd {
        inner.insert("Cmd".into(), json!(cmd));
    }
    if !spec.labels.is_empty() {
        let labels = inner.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        let labels = labels.as_object_mut().expect("just made an object");
        for (k, v) in &spec.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    if let Some(workdir) = &spec.workdir {
        inner.insert("WorkingDir".into(), json!(workdir));
    }

    let rootfs = root
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let rootfs = rootfs.as_object_mut().ok_or_else(|| {
        AssembleError::InvalidSpec("base config's rootfs is not an object".into())
    })?;
    rootfs.insert("type".into(), json!("layers"));
    let diff_ids = rootfs.entry("diff_ids").or_insert_with(|| json!([]));
    let diff_ids = diff_ids
        .as_array_mut()
        .ok_or_else(|| AssembleError::InvalidSpec("base config's diff_ids is not a list".into()))?;
    diff_ids.extend(layers.iter().map(|l| json!(l.diff_id)));

    let history = root.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    let history = history.as_array_mut().expect("just made a list");
    for (i, layer) in layers.iter().enumerate() {
        let mut entry = Map::new();
        entry.insert("created".into(), json!(created));
        entry.insert(
            "created_by".into(),
            json!(format!("{}: layer {}", spec.created_by, i + 1)),
        );
        entry.insert("comment".into(), json!(layer.diff_id));
        history.push(Value::Object(entry));
    }
    if layers.is_empty() {
        history.push(
            json!({"created": created, "created_by": format!("{}: config", spec.created_by), "empty_layer": true}),
        );
    }
    Ok(config)
}

/// `KEY` of a config env line `KEY=VALUE`.
fn env_name(line: &str) -> &str {
    line.split_once('=').map_or(line, |(k, _)| k)
}

fn check_env_name(key: &str) -> Result<(), AssembleError> {
    if key.is_empty() || key.contains('=') {
        return Err(AssembleError::InvalidSpec(format!("invalid env name {key:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base image `r.io/base:1` with `config` as its config's `config`, and `diff_ids` and
    /// `history` as given.
    fn base(config: Value, diff_ids: Value, history: Value) -> Base {
        Base {
            reference: ImageRef::parse("r.io/base:1").unwrap(),
            manifest_digest: "sha256:b".into(),
            layers: vec![],
            config: json!({
                "architecture": "amd64", "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": history
            }),
        }
    }

    #[test]
    fn config_merges_over_base() {
        let mut spec = AssembleSpec::new(ImageRef::parse("r.io/app:1").unwrap());
        spec.env = vec![
            ("PATH".into(), "/app:/bin".into()),
            ("NEW".into(), "x=y".into()),
        ];
        spec.entrypoint = Some(vec!["/app/run".into()]);
        spec.labels.insert("team".into(), "core".into());
        spec.workdir = Some("/app".into());
        spec.created = 1_700_000_000;
        let base = base(
            json!({"Env": ["PATH=/bin", "LANG=C"], "Cmd": ["sh"], "Labels": {"base": "yes"}}),
            json!(["sha256:base"]),
            json!([{"created_by": "base"}]),
        );
        let layer = BuiltLayer {
            blob: bytes::Bytes::new(),
            digest: "sha256:l".into(),
            size: 0,
            diff_id: "sha256:d".into(),
            media_type: layer::LAYER_MEDIA_TYPE,
        };
        let c = build_config(&spec, Some(&base), &[layer], "2023-11-14T22:13:20Z").unwrap();
        assert_eq!(
            c["config"]["Env"],
            json!(["PATH=/app:/bin", "LANG=C", "NEW=x=y"])
        );
        assert_eq!(c["config"]["Entrypoint"], json!(["/app/run"]));
        assert!(c["config"].get("Cmd").is_none());
        assert_eq!(
            c["config"]["Labels"],
            json!({"base": "yes", "team": "core"})
        );
        assert_eq!(c["config"]["WorkingDir"], json!("/app"));
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:base", "sha256:d"]));
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(c["created"], json!("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn env_prepend_goes_before_the_base_value_and_append_after() {
        let mut spec = AssembleSpec::new(ImageRef::parse("r.io/app:1").unwrap());
        spec.env_prepend = vec![
            ("JAVA_TOOL_OPTIONS".into(), "-XX:MaxRAMPercentage=75.0".into()),
            ("EMPTY".into(), "-Xss1m".into()),
            ("NEW".into(), "first".into()),
        ];
        spec.env_append = vec![("JAVA_TOOL_OPTIONS".into(), "-javaagent:/opt/apm/a.jar".into())];
        let base = base(json!({"Env": ["JAVA_TOOL_OPTIONS=-XX:MaxRAMPercentage=50.0", "EMPTY= "]}), json!([]), json!([]));
        let c = build_config(&spec, Some(&base), &[], "2023-11-14T22:13:20Z").unwrap();
        assert_eq!(
            c["config"]["Env"],
            json!([
                // The base's own value stays between the prepended default and the appended
                // agent: it wins over the default, and the agent is loaded whatever it says.
                "JAVA_TOOL_OPTIONS=-XX:MaxRAMPercentage=75.0 -XX:MaxRAMPercentage=50.0 -javaagent:/opt/apm/a.jar",
                "EMPTY=-Xss1m",
                "NEW=first"
            ])
        );
        // On scratch (no env at all) the value is set as it is.
        spec.env_append.clear();
        let c = build_config(&spec, None, &[], "2023-11-14T22:13:20Z").unwrap();
        assert_eq!(c["config"]["Env"][0], json!("JAVA_TOOL_OPTIONS=-XX:MaxRAMPercentage=75.0"));
    }
}
