//! Step 1 of a copy, per target: what it lacks and what it gets without a send. Manifests are
//! HEADed first, since a manifest the target has brings its blobs along; the blobs of the missing
//! ones are then looked at one by one — mounted from a repository of the same registry known to
//! hold them, HEADed, or claimed for sending, or, when another copy is sending one there already,
//! awaited. A blob's send starts as soon as every target has answered for that blob.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::{stream, StreamExt};
use reqwest::{header, StatusCode};
use tokio::sync::Semaphore;

use crate::client::RegistryError;
use crate::reference::ImageRef;
use crate::session::{header_str, pull_scope, push_scope, MANIFEST_ACCEPT};

use super::locations::{Claim, SendingBlob};
use super::plan::Plan;
use super::target::{TargetCopy, TargetError};
use super::CopyEvent;

/// Runs `futures`, at most `n` at a time. (The futures are made before the stream, rather than
/// by a closure inside it: a closure held across an await makes rustc unable to prove the whole
/// copy `Send`, rust-lang/rust#64552.)
async fn at_most<F: std::future::Future>(n: usize, futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures).buffer_unordered(n).collect().await
}

/// What one target lacks, as its blobs are looked at.
#[derive(Debug)]
pub(super) struct TargetNeeds {
    /// Indexes into `plan.manifests` already on the target.
    pub(super) present_manifests: HashSet<usize>,
    /// Indexes into `plan.blobs` to look at: the blobs of the manifests it lacks.
    pub(super) to_look_at: HashSet<usize>,
    /// At most eight looks (mount, HEAD) in flight per target.
    looks: Semaphore,
    /// Looks not yet answered; at zero the target's plan is known ([`CopyEvent::TargetPlanned`]).
    looks_left: AtomicUsize,
    blobs_to_send: AtomicUsize,
    bytes_to_send: AtomicU64,
}

impl TargetNeeds {
    fn new() -> Self {
        TargetNeeds {
            present_manifests: HashSet::new(),
            to_look_at: HashSet::new(),
            looks: Semaphore::new(8),
            looks_left: AtomicUsize::new(0),
            blobs_to_send: AtomicUsize::new(0),
            bytes_to_send: AtomicU64::new(0),
        }
    }

    /// Looks at blob `digest` on `t` (at most eight at once per target) and counts the answer;
    /// after the last one, says what the target will be sent.
    pub(super) async fn look_at(
        &self,
        t: &TargetCopy,
        digest: &str,
        size: u64,
        source: &ImageRef,
        progress: &(dyn Fn(CopyEvent) + Send + Sync),
    ) -> Result<BlobCheck, RegistryError> {
        let check = {
            let _look = self.looks.acquire().await.expect("the look semaphore is never closed");
            ensure_blob_without_sending(t, digest, source, progress).await
        };
        if let Ok(BlobCheck::Send(_)) = &check {
            self.blobs_to_send.fetch_add(1, Ordering::Relaxed);
            self.bytes_to_send.fetch_add(size, Ordering::Relaxed);
        }
        if self.looks_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.planned(t, progress);
        }
        check
    }

    fn planned(&self, t: &TargetCopy, progress: &(dyn Fn(CopyEvent) + Send + Sync)) {
        progress(CopyEvent::TargetPlanned {
            target: t.index,
            blobs: self.blobs_to_send.load(Ordering::Relaxed),
            bytes: self.bytes_to_send.load(Ordering::Relaxed),
        });
    }
}

/// Where a blob the target needs stands.
pub(super) enum BlobCheck {
    /// The target has it (it was there, or it was mounted).
    There,
    /// This copy sends it, and holds the claim meanwhile.
    Send(SendingBlob),
    /// Another copy is sending it to this registry; this closes when that ends.
    Awaited(tokio::sync::watch::Receiver<()>),
}

/// Authenticates and HEADs the manifests: which blobs of the plan the target may lack. The blobs
/// themselves are looked at blob by blob ([`TargetNeeds::look_at`]), so that a blob found missing
/// starts streaming while the target's other blobs are still being mounted or HEADed.
pub(super) async fn prepare_target(
    t: &TargetCopy,
    plan: &Plan,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> TargetNeeds {
    let mut needs = TargetNeeds::new();
    if let Err(e) = t.session.authenticate(&t.scopes).await {
        t.fail(TargetError::Registry(e));
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
                t.fail(TargetError::Registry(e));
                return needs;
            }
        }
    }
    // A registry accepts a manifest only once its blobs (and children) are there, so only the
    // blobs of missing manifests need a look.
    for (i, m) in plan.manifests.iter().enumerate() {
        if !needs.present_manifests.contains(&i) {
            needs.to_look_at.extend(m.blobs.iter().copied());
        }
    }
    let skipped_with_manifests = plan.blobs.len() - needs.to_look_at.len();
    t.blobs_skipped
        .fetch_add(skipped_with_manifests, Ordering::Relaxed);
    needs.looks_left = AtomicUsize::new(needs.to_look_at.len());
    if needs.to_look_at.is_empty() {
        needs.planned(t, progress);
    }
    needs
}

/// Whether the target has the blob (HEAD) or got it by a mount, must be sent it by this copy,
/// or gets it from another copy's send that is under way. The claim comes first, so a send that
/// ends between our HEAD and our claim cannot make us send the blob a second time.
pub(super) async fn ensure_blob_without_sending(
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
    // mount from it comes first and saves the HEAD: every request costs the registry CPU, and an
    // image has many blobs.
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
                t.keep_upload(digest, url);
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
