//! Copying `repo@digest` (and tags) from one source registry to N target registries.
//!
//! For each blob and target: HEAD; else a cross-repository mount when the target registry is
//! known to hold the blob in another repository; else the blob is read from the source once and
//! streamed to every target that lacks it at the same time ([`fanout`]). Manifests are copied as
//! the raw bytes the source stored, children before the index, referrers after their subject, tags
//! last, and a manifest goes to a target only once all its blobs are confirmed there. Each target
//! is verified by digest at the end; a target that fails fails alone.

mod fanout;
mod locations;
mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{future, stream, StreamExt};
use reqwest::{header, StatusCode, Url};
use serde_json::{json, Value};

use crate::auth::RegistryOptions;
use crate::client::RegistryError;
use crate::layer::sha256_digest;
use crate::reference::ImageRef;
use crate::session::{
    header_str, pull_scope, push_scope, RegistrySession, RetryPolicy, MANIFEST_ACCEPT,
};

use locations::{Claim, SendingBlob};
pub use locations::{BlobLocation, BlobLocations, TransferSlots};
use plan::{fetch_manifest, referrers_tag, Manifest, Plan};

/// Why a copy could not start or could not read its source. (A target's failure is not an error
/// of the copy: it is reported in that target's [`TargetReport`].)
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("nothing to copy to: give at least one target repository")]
    NoTargets,
    #[error("target {0} must name a repository (host/repo), without a tag or digest")]
    InvalidTarget(String),
    #[error("source: {0}")]
    Source(RegistryError),
    #[error("source manifest {digest} cannot be copied: {reason}")]
    InvalidManifest { digest: String, reason: String },
    #[error("source {what} has digest {actual}, expected {expected}: refused")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
}

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub registry: RegistryOptions,
    pub retry: RetryPolicy,
    /// Also copy the referrers (signatures, SBOMs) of every manifest copied.
    pub referrers: bool,
    /// Blobs streamed at the same time, across every copy sharing these options.
    pub transfers: TransferSlots,
    /// 256 KiB pieces buffered per target while streaming a blob (bounds memory: a slow target slows the
    /// read rather than filling memory).
    pub chunk_buffer: usize,
    /// A target that accepts no bytes for this long is cut off from the blob being streamed (and
    /// retried), so a hung registry does not hold the others back.
    pub stall_timeout: Duration,
    /// Where blobs are and which are being sent, shared by every copy with these options: run
    /// many copies at once with one `CopyOptions` and each shared blob crosses once per registry.
    pub blob_locations: BlobLocations,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            registry: RegistryOptions::default(),
            retry: RetryPolicy::default(),
            referrers: true,
            transfers: TransferSlots::default(),
            chunk_buffer: 8,
            stall_timeout: Duration::from_secs(120),
            blob_locations: BlobLocations::default(),
        }
    }
}

/// What the copy is doing, for a progress display. `target` indexes the targets as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// The source was read: what there is to copy.
    SourceRead {
        digest: String,
        manifests: usize,
        blobs: usize,
        bytes: u64,
    },
    /// What this target lacks, after HEADs and mounts: the bytes it will be sent.
    TargetPlanned {
        target: usize,
        blobs: usize,
        bytes: u64,
    },
    BlobPresent { target: usize, digest: String },
    BlobMounted {
        target: usize,
        digest: String,
        from: String,
    },
    /// Bytes of a blob handed to the target's connection.
    Bytes { target: usize, bytes: u64 },
    BlobSent {
        target: usize,
        digest: String,
        size: u64,
    },
    ManifestPushed { target: usize, digest: String },
    TargetFinished { target: usize, verified: bool },
}

/// The outcome for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Every manifest and tag is there, proven by `Docker-Content-Digest`.
    Verified,
    Failed { reason: String },
}

#[derive(Debug, Clone)]
pub struct TargetReport {
    /// The target repository pinned by the copied digest.
    pub target: ImageRef,
    pub state: TargetState,
    /// Blob bytes handed to this target's connections (retries included).
    pub bytes_sent: u64,
    pub blobs_sent: usize,
    pub blobs_mounted: usize,
    /// Blobs the target already had (HEAD), or that came with a manifest it already had.
    pub blobs_skipped: usize,
    pub manifests_pushed: usize,
    pub duration: Duration,
}

impl TargetReport {
    pub fn verified(&self) -> bool {
        self.state == TargetState::Verified
    }
}

#[derive(Debug, Clone)]
pub struct CopyReport {
    pub source: ImageRef,
    pub digest: String,
    pub media_type: String,
    pub manifests: usize,
    pub blobs: usize,
    /// Bytes of all blobs of the image (and its referrers).
    pub blob_bytes: u64,
    pub targets: Vec<TargetReport>,
}

impl CopyReport {
    pub fn all_verified(&self) -> bool {
        self.targets.iter().all(TargetReport::verified)
    }
}

/// One target during a copy.
pub(crate) struct TargetCopy {
    index: usize,
    reference: ImageRef,
    session: Arc<RegistrySession>,
    scopes: Vec<String>,
    locations: BlobLocations,
    failure: Mutex<Option<String>>,
    /// Upload sessions left open by mounts answered 202, by digest.
    uploads: Mutex<HashMap<String, Url>>,
    /// The blobs this copy sends to the target, claimed so that other copies wait and mount.
    sending: Mutex<HashMap<String, SendingBlob>>,
    bytes_sent: Arc<AtomicU64>,
    blobs_sent: AtomicUsize,
    blobs_mounted: AtomicUsize,
    blobs_skipped: AtomicUsize,
    manifests_pushed: AtomicUsize,
    started: Instant,
}

impl TargetCopy {
    fn repository(&self) -> &str {
        self.reference.repository()
    }

    /// Records the first failure; later steps skip a failed target. Its claims end, so copies
    /// waiting for its blobs send them themselves.
    fn fail(&self, reason: String) {
        {
            let mut failure = self.failure.lock().expect("failure lock");
            if failure.is_none() {
                tracing::warn!(target = %self.reference, %reason, "copy to target failed");
                *failure = Some(reason);
            }
        }
        self.sending.lock().expect("sending lock").clear();
    }

    fn hold_claim(&self, digest: &str, claim: SendingBlob) {
        self.sending
            .lock()
            .expect("sending lock")
            .insert(digest.to_string(), claim);
    }

    /// The send of `digest` to this target ended (its location is recorded if it worked).
    fn end_claim(&self, digest: &str) {
        self.sending.lock().expect("sending lock").remove(digest);
    }

    fn failed(&self) -> bool {
        self.failure.lock().expect("failure lock").is_some()
    }

    fn take_upload(&self, digest: &str) -> Option<Url> {
        self.uploads.lock().expect("uploads lock").remove(digest)
    }

    fn stats(&self) -> Arc<AtomicU64> {
        self.bytes_sent.clone()
    }

    fn report(&self, digest: &str) -> TargetReport {
        let state = match self.failure.lock().expect("failure lock").clone() {
            None => TargetState::Verified,
            Some(reason) => TargetState::Failed { reason },
        };
        TargetReport {
            target: self.reference.with_digest(digest),
            state,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            blobs_sent: self.blobs_sent.load(Ordering::Relaxed),
            blobs_mounted: self.blobs_mounted.load(Ordering::Relaxed),
            blobs_skipped: self.blobs_skipped.load(Ordering::Relaxed),
            manifests_pushed: self.manifests_pushed.load(Ordering::Relaxed),
            duration: self.started.elapsed(),
        }
    }
}

/// Copies `source` (`host/repo@sha256:…` or `host/repo:tag`) to each of `targets` (`host/repo`),
/// tagging it there with each of `tags`. Returns a report per target; an error only when the
/// source cannot be read or the request is malformed.
pub async fn copy_image(
    source: &ImageRef,
    targets: &[ImageRef],
    tags: &[String],
    options: &CopyOptions,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<CopyReport, CopyError> {
    if targets.is_empty() {
        return Err(CopyError::NoTargets);
    }
    if let Some(t) = targets.iter().find(|t| t.digest().is_some() || t.tag().is_some()) {
        return Err(CopyError::InvalidTarget(t.to_string()));
    }
    let http = RegistrySession::http_client();
    // One session per registry, so tokens and connections are shared by its repositories.
    let mut sessions: HashMap<String, Arc<RegistrySession>> = HashMap::new();
    let mut session_for = |registry: &str| {
        sessions
            .entry(registry.to_string())
            .or_insert_with(|| {
                Arc::new(RegistrySession::new(
                    http.clone(),
                    registry,
                    &options.registry,
                    options.retry,
                ))
            })
            .clone()
    };
    let src = session_for(source.registry());
    src.authenticate(&[pull_scope(source.repository())])
        .await
        .map_err(CopyError::Source)?;
    let plan = plan::read_plan(
        &src,
        source.repository(),
        source.reference_part(),
        options.referrers,
    )
    .await?;
    let root = plan.root().clone();
    progress(CopyEvent::SourceRead {
        digest: root.digest.clone(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        bytes: plan.blob_bytes(),
    });

    let target_copies: Vec<TargetCopy> = targets
        .iter()
        .enumerate()
        .map(|(index, t)| TargetCopy {
            index,
            reference: t.clone(),
            session: session_for(t.registry()),
            scopes: vec![push_scope(t.repository())],
            locations: options.blob_locations.clone(),
            failure: Mutex::new(None),
            uploads: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashMap::new()),
            bytes_sent: Arc::new(AtomicU64::new(0)),
            blobs_sent: AtomicUsize::new(0),
            blobs_mounted: AtomicUsize::new(0),
            blobs_skipped: AtomicUsize::new(0),
            manifests_pushed: AtomicUsize::new(0),
            started: Instant::now(),
        })
        .collect();

    // 1. What each target lacks (all targets at once).
    let needs = future::join_all(
        target_copies
            .iter()
            .map(|t| prepare_target(t, &plan, source, progress)),
    )
    .await;

    // 2. Stream each missing blob once to every target that needs it, in the transfer slots
    //    shared with other copies; meanwhile, blobs another copy is sending to a target's
    //    registry are waited for and mounted. (A wait never holds a slot, and a stream never
    //    waits for another copy, so copies waiting on each other's blobs cannot deadlock.)
    let mut wanted: Vec<(usize, Vec<&TargetCopy>)> = Vec::new();
    for (blob, _) in plan.blobs.iter().enumerate() {
        let ts: Vec<&TargetCopy> = target_copies
            .iter()
            .zip(&needs)
            .filter(|(t, need)| !t.failed() && need.missing_blobs.contains(&blob))
            .map(|(t, _)| t)
            .collect();
        if !ts.is_empty() {
            wanted.push((blob, ts));
        }
    }
    let sender = BlobSender {
        src: &src,
        source,
        plan: &plan,
        options,
        progress,
    };
    let own = future::join_all(wanted.into_iter().map(|(blob, ts)| sender.send(blob, ts)));
    let others = future::join_all(target_copies.iter().zip(&needs).flat_map(|(t, need)| {
        let sender = &sender;
        need.awaited
            .iter()
            .map(move |(blob, done)| sender.mount_after_other_send(t, *blob, done.clone()))
    }));
    future::join(own, others).await;

    // 3. Manifests, referrers, tags; then verify.
    future::join_all(
        target_copies
            .iter()
            .zip(&needs)
            .map(|(t, need)| finish_target(t, &plan, need, tags, progress)),
    )
    .await;

    Ok(CopyReport {
        source: source.clone(),
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        blob_bytes: plan.blob_bytes(),
        targets: target_copies.iter().map(|t| t.report(&root.digest)).collect(),
    })
}

/// Streams blobs of one copy's plan, in the shared transfer slots.
struct BlobSender<'a> {
    src: &'a RegistrySession,
    source: &'a ImageRef,
    plan: &'a Plan,
    options: &'a CopyOptions,
    progress: &'a (dyn Fn(CopyEvent) + Send + Sync),
}

impl BlobSender<'_> {
    /// Streams blob `blob` once to every target in `targets`, then ends their claims on it.
    async fn send(&self, blob: usize, targets: Vec<&TargetCopy>) {
        let _slot = self.options.transfers.acquire().await;
        let blob = &self.plan.blobs[blob];
        fanout::copy_blob(
            self.src,
            self.source.repository(),
            blob,
            targets.clone(),
            self.options.chunk_buffer,
            self.options.stall_timeout,
            self.progress,
        )
        .await;
        for t in targets {
            t.end_claim(&blob.digest);
        }
    }

    /// Waits until another copy's send of `blob` to `t`'s registry ends, then mounts it from
    /// where that put it — or, when that send failed, sends it (or waits for whoever does now).
    async fn mount_after_other_send(
        &self,
        t: &TargetCopy,
        blob: usize,
        mut done: tokio::sync::watch::Receiver<()>,
    ) {
        let digest = &self.plan.blobs[blob].digest;
        loop {
            // The sender side closes when that send ends, whatever its outcome.
            let _ = done.changed().await;
            if t.failed() {
                return;
            }
            match ensure_blob_without_sending(t, digest, self.source, self.progress).await {
                Ok(BlobCheck::There) => return,
                Ok(BlobCheck::Awaited(next)) => done = next,
                Ok(BlobCheck::Send(claim)) => {
                    t.hold_claim(digest, claim);
                    return self.send(blob, vec![t]).await;
                }
                Err(e) => return t.fail(e.to_string()),
            }
        }
    }
}

/// Runs `futures`, at most `n` at a time. (The futures are made before the stream, rather than
/// by a closure inside it: a closure held across an await makes rustc unable to prove the whole
/// copy `Send`, rust-lang/rust#64552.)
async fn at_most<F: std::future::Future>(n: usize, futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures).buffer_unordered(n).collect().await
}

/// What one target lacks.
#[derive(Debug, Default)]
struct TargetNeeds {
    /// Indexes into `plan.manifests` already on the target.
    present_manifests: HashSet<usize>,
    /// Indexes into `plan.blobs` to stream to it.
    missing_blobs: HashSet<usize>,
    /// Blobs another copy is sending to its registry right now: mounted when that ends.
    awaited: Vec<(usize, tokio::sync::watch::Receiver<()>)>,
}

/// Where a blob the target needs stands.
enum BlobCheck {
    /// The target has it (it was there, or it was mounted).
    There,
    /// This copy sends it, and holds the claim meanwhile.
    Send(SendingBlob),
    /// Another copy is sending it to this registry; this closes when that ends.
    Awaited(tokio::sync::watch::Receiver<()>),
}

/// Authenticates, HEADs manifests then the blobs of the missing ones, and mounts what it can.
async fn prepare_target(
    t: &TargetCopy,
    plan: &Plan,
    source: &ImageRef,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> TargetNeeds {
    let mut needs = TargetNeeds::default();
    if let Err(e) = t.session.authenticate(&t.scopes).await {
        t.fail(e.to_string());
        return needs;
    }
    let heads: Vec<_> = plan
        .manifests
        .iter()
        .enumerate()
        .map(|(i, m)| async move {
            let path = format!("{}/manifests/{}", t.repository(), m.digest);
            (i, t.session.head(&t.scopes, &path, Some(MANIFEST_ACCEPT), "check manifest").await)
        })
        .collect();
    let heads = at_most(8, heads).await;
    for (i, head) in heads {
        match head {
            Ok(Some(_)) => {
                needs.present_manifests.insert(i);
            }
            Ok(None) => {}
            Err(e) => {
                t.fail(e.to_string());
                return needs;
            }
        }
    }
    // A registry accepts a manifest only once its blobs (and children) are there, so only the
    // blobs of missing manifests need a look.
    let mut candidates: Vec<usize> = Vec::new();
    for (i, m) in plan.manifests.iter().enumerate() {
        if !needs.present_manifests.contains(&i) {
            for &b in &m.blobs {
                if !candidates.contains(&b) {
                    candidates.push(b);
                }
            }
        }
    }
    let skipped_with_manifests = plan.blobs.len() - candidates.len();
    t.blobs_skipped
        .fetch_add(skipped_with_manifests, Ordering::Relaxed);
    let checks: Vec<_> = candidates
        .into_iter()
        .map(|b| async move { (b, ensure_blob_without_sending(t, &plan.blobs[b].digest, source, progress).await) })
        .collect();
    let checks = at_most(8, checks).await;
    let mut bytes = 0;
    for (b, check) in checks {
        match check {
            Ok(BlobCheck::There) => {}
            Ok(BlobCheck::Send(claim)) => {
                bytes += plan.blobs[b].size;
                t.hold_claim(&plan.blobs[b].digest, claim);
                needs.missing_blobs.insert(b);
            }
            Ok(BlobCheck::Awaited(done)) => needs.awaited.push((b, done)),
            Err(e) => {
                t.fail(e.to_string());
                return needs;
            }
        }
    }
    progress(CopyEvent::TargetPlanned {
        target: t.index,
        blobs: needs.missing_blobs.len(),
        bytes,
    });
    needs
}

/// Whether the target has the blob (HEAD) or got it by a mount, must be sent it by this copy,
/// or gets it from another copy's send that is under way. The claim comes first, so a send that
/// ends between our HEAD and our claim cannot make us send the blob a second time.
async fn ensure_blob_without_sending(
    t: &TargetCopy,
    digest: &str,
    source: &ImageRef,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<BlobCheck, RegistryError> {
    let repo = t.repository();
    let registry = t.session.registry();
    let claim = match t.locations.claim(registry, digest, repo) {
        Claim::Mine(claim) => claim,
        Claim::Theirs { repository, done } => {
            tracing::debug!(%digest, %registry, from = %repository, "another copy is sending this blob; mounting it after");
            return Ok(BlobCheck::Awaited(done));
        }
    };
    let from = if source.registry() == registry && source.repository() != repo {
        Some(source.repository().to_string())
    } else {
        t.locations.find(registry, digest, repo)
    };
    // A mount answers 201 whether or not the repository had the blob already, so with a place to
    // mount from it comes first and saves the HEAD (docker-registry spends milliseconds of CPU
    // on every request, which adds up over hundreds of blobs).
    if let Some(from) = from {
        if mount_blob(t, digest, &from, progress).await {
            return Ok(BlobCheck::There);
        }
    }
    let path = format!("{repo}/blobs/{digest}");
    if t.session.head(&t.scopes, &path, None, "check blob").await?.is_some() {
        t.blobs_skipped.fetch_add(1, Ordering::Relaxed);
        t.locations.record(registry, digest, repo);
        progress(CopyEvent::BlobPresent {
            target: t.index,
            digest: digest.to_string(),
        });
        return Ok(BlobCheck::There);
    }
    Ok(BlobCheck::Send(claim))
}

/// Asks the target to mount `digest` from its repository `from`; true when it did (201). A 202
/// is an upload session opened instead, kept for sending the blob.
async fn mount_blob(
    t: &TargetCopy,
    digest: &str,
    from: &str,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> bool {
    let repo = t.repository();
    let mut url = t.session.url(&format!("{repo}/blobs/uploads/"));
    url.query_pairs_mut()
        .append_pair("mount", digest)
        .append_pair("from", from);
    let scopes = [push_scope(repo), pull_scope(from)];
    let operation = format!("mount blob {digest} from {from}");
    let res = t
        .session
        .send(&scopes, &operation, || {
            t.session
                .http()
                .post(url.clone())
                .header(header::CONTENT_LENGTH, 0)
        })
        .await;
    match res {
        Ok(res) if res.status() == StatusCode::CREATED => {
            t.blobs_mounted.fetch_add(1, Ordering::Relaxed);
            t.locations.record(t.session.registry(), digest, repo);
            progress(CopyEvent::BlobMounted {
                target: t.index,
                digest: digest.to_string(),
                from: from.to_string(),
            });
            true
        }
        Ok(res) if res.status() == StatusCode::ACCEPTED => {
            // Not mounted (the blob is not there, or we may not read `from`): the registry opened
            // an upload session instead, which the copy then uses.
            if let Some(url) = header_str(&res, "location")
                .and_then(|l| t.session.resolve_location(&l).ok())
            {
                t.uploads
                    .lock()
                    .expect("uploads lock")
                    .insert(digest.to_string(), url);
            }
            false
        }
        Ok(res) => {
            tracing::debug!(%digest, status = %res.status(), "cross-repository mount refused");
            false
        }
        Err(e) => {
            tracing::debug!(%digest, error = %e, "cross-repository mount failed");
            false
        }
    }
}

/// Pushes the missing manifests (children first), the referrers' fallback tags, then the tags,
/// and verifies the result by digest.
async fn finish_target(
    t: &TargetCopy,
    plan: &Plan,
    needs: &TargetNeeds,
    tags: &[String],
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) {
    let result = push_and_verify(t, plan, needs, tags, progress).await;
    if let Err(reason) = result {
        t.fail(reason);
    }
    progress(CopyEvent::TargetFinished {
        target: t.index,
        verified: !t.failed(),
    });
}

async fn push_and_verify(
    t: &TargetCopy,
    plan: &Plan,
    needs: &TargetNeeds,
    tags: &[String],
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<(), String> {
    if t.failed() {
        return Ok(());
    }
    let root = plan.root();
    let root_missing = !needs.present_manifests.contains(&plan.root);
    // A missing root that nothing else is pushed after (no referrers) goes up once, under its
    // first tag, at the tags' turn: a PUT by digest and then by tag would store it twice (each
    // manifest PUT costs docker-registry about 6 ms of CPU and several fsyncs).
    let root_by_tag =
        root_missing && !tags.is_empty() && plan.root + 1 == plan.manifests.len() && plan.referrers.is_empty();
    for (i, m) in plan.manifests.iter().enumerate() {
        if needs.present_manifests.contains(&i) || (i == plan.root && root_by_tag) {
            continue;
        }
        push_manifest(t, m, &m.digest).await?;
        progress(CopyEvent::ManifestPushed {
            target: t.index,
            digest: m.digest.clone(),
        });
    }
    for referrers in &plan.referrers {
        ensure_referrers_tag(t, referrers).await?;
    }
    for (n, tag) in tags.iter().enumerate() {
        // A manifest that was missing until now cannot be what the tag names already.
        if !root_missing {
            let path = format!("{}/manifests/{tag}", t.repository());
            let current = t
                .session
                .head(&t.scopes, &path, Some(MANIFEST_ACCEPT), "check tag")
                .await
                .map_err(|e| e.to_string())?;
            if current.as_deref() == Some(root.digest.as_str()) {
                continue;
            }
        }
        push_manifest(t, root, tag).await?;
        if root_by_tag && n == 0 {
            progress(CopyEvent::ManifestPushed {
                target: t.index,
                digest: root.digest.clone(),
            });
        }
    }
    // Verify: only what the registry answers counts. A tag's HEAD answers with the digest of the
    // manifest it names, which proves both; without tags, the digest itself is asked for.
    let references: Vec<&String> = if tags.is_empty() {
        vec![&root.digest]
    } else {
        tags.iter().collect()
    };
    for reference in references {
        let path = format!("{}/manifests/{reference}", t.repository());
        let got = t
            .session
            .head(&t.scopes, &path, Some(MANIFEST_ACCEPT), "verify manifest")
            .await
            .map_err(|e| format!("verify: {e}"))?;
        if got.as_deref() != Some(root.digest.as_str()) {
            return Err(format!(
                "verify: {}:{reference} is {} on the target, expected {}",
                t.repository(),
                got.filter(|d| !d.is_empty()).unwrap_or_else(|| "missing".into()),
                root.digest
            ));
        }
    }
    Ok(())
}

/// PUTs the manifest's raw bytes with its media type under `reference` (its digest or a tag).
async fn push_manifest(t: &TargetCopy, m: &Manifest, reference: &str) -> Result<(), String> {
    let url = t
        .session
        .url(&format!("{}/manifests/{reference}", t.repository()));
    let operation = format!("push manifest {}:{reference}", t.repository());
    let res = t
        .session
        .send(&t.scopes, &operation, || {
            t.session
                .http()
                .put(url.clone())
                .header(header::CONTENT_TYPE, &m.media_type)
                .body(m.bytes.clone())
        })
        .await
        .map_err(|e| e.to_string())?;
    let res = t
        .session
        .expect_status(res, &[StatusCode::CREATED], &operation)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(d) = header_str(&res, "docker-content-digest") {
        if d != m.digest {
            return Err(format!("{operation}: the registry stored {d}, expected {}", m.digest));
        }
    }
    t.manifests_pushed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// On a target without the referrers API, makes the `sha256-<hex>` tag list the referrers:
/// the source's own index when the target has none, else the target's merged with the missing
/// descriptors (a new index Kiln writes, since the target's own entries must be kept).
async fn ensure_referrers_tag(t: &TargetCopy, referrers: &plan::Referrers) -> Result<(), String> {
    let api = t.session.url(&format!(
        "{}/referrers/{}",
        t.repository(),
        referrers.subject
    ));
    let res = t
        .session
        .send(&t.scopes, "list referrers", || {
            t.session
                .http()
                .get(api.clone())
                .header(header::ACCEPT, "application/vnd.oci.image.index.v1+json")
        })
        .await
        .map_err(|e| e.to_string())?;
    if res.status() == StatusCode::OK
        && header_str(&res, "content-type")
            .is_some_and(|c| c.starts_with("application/vnd.oci.image.index.v1+json"))
    {
        // The registry keeps referrers itself (it read `subject` when the manifest was pushed).
        return Ok(());
    }
    let tag = referrers_tag(&referrers.subject);
    let existing = fetch_manifest(&t.session, t.repository(), &t.scopes, &tag)
        .await
        .map_err(|e| format!("read {tag}: {e}"))?;
    let index = match existing {
        None => match &referrers.fallback_index {
            Some(source_index) => source_index.clone(),
            None => referrers_index(&referrers.descriptors, Vec::new()),
        },
        Some(existing) => {
            let json: Value = serde_json::from_slice(&existing.bytes).unwrap_or(json!({}));
            let have = plan::index_descriptors(&json);
            let known: HashSet<&str> = have
                .iter()
                .filter_map(|d| d.get("digest").and_then(Value::as_str))
                .collect();
            let missing: Vec<Value> = referrers
                .descriptors
                .iter()
                .filter(|d| {
                    d.get("digest")
                        .and_then(Value::as_str)
                        .is_some_and(|digest| !known.contains(digest))
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            referrers_index(&missing, have)
        }
    };
    push_manifest(t, &index, &tag).await
}

/// An OCI index of `existing` followed by `added` descriptors.
fn referrers_index(added: &[Value], mut existing: Vec<Value>) -> Manifest {
    existing.extend(added.iter().cloned());
    let media_type = "application/vnd.oci.image.index.v1+json";
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": existing,
    }))
    .expect("JSON of JSON values");
    Manifest {
        digest: sha256_digest(&bytes),
        media_type: media_type.to_string(),
        bytes: bytes.into(),
        blobs: Vec::new(),
        children: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kiln spawns copies as tasks; this stops compiling if the copy's future stops being `Send`.
    #[test]
    fn a_copy_can_be_spawned() {
        fn spawnable<T: Send + 'static>(_: &T) {}
        let copy = async {
            let source = ImageRef::parse("registry.example/team/app:v1").unwrap();
            let targets = [ImageRef::parse("mirror.example/team/app").unwrap()];
            copy_image(&source, &targets, &[], &CopyOptions::default(), &|_| {}).await
        };
        spawnable(&copy);
    }
}
