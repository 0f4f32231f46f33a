//! One target during a copy: its session and scopes, the first reason it failed, the blobs it
//! has claimed, its counters; and what a copy reports per target and in all. Every step of a copy
//! reads and updates this state, so it lives apart from the steps; a target that fails carries
//! its reason here and the other targets go on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::client::RegistryError;
use crate::reference::ImageRef;
use crate::session::{push_scope, RegistrySession};

use super::locations::{BlobLocations, SendingBlob};
use super::CopyError;

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

/// Why one target of a copy failed. Its text is the target's [`TargetState::Failed`] reason,
/// which users read in logs and API answers.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    /// A request to the target (authentication, a HEAD, a mount, a manifest push) failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("push blob {digest}: {source}")]
    PushBlob { digest: String, source: RegistryError },
    /// The source failed while streaming the blob, on the last attempt.
    #[error("read blob {digest} from the source: {source}")]
    ReadBlob { digest: String, source: RegistryError },
    /// The source's bytes are not the blob its manifest names; no target is sent them.
    #[error("blob {digest} from the source has digest {actual} and {size} bytes (expected {expected_size} bytes): refused")]
    BlobMismatch {
        digest: String,
        actual: String,
        size: u64,
        expected_size: u64,
    },
    #[error("{operation}: the registry stored {stored}, expected {expected}")]
    StoredOtherDigest {
        operation: String,
        stored: String,
        expected: String,
    },
    /// The target's own referrers fallback tag could not be read.
    #[error("read {tag}: {source}")]
    ReadReferrersTag { tag: String, source: CopyError },
    #[error("verify: {0}")]
    Verify(RegistryError),
    /// The target answers for a tag or digest with another manifest (`found` is `missing` when
    /// it has none).
    #[error("verify: {repository}:{reference} is {found} on the target, expected {expected}")]
    VerifyMismatch {
        repository: String,
        reference: String,
        found: String,
        expected: String,
    },
}

/// One target during a copy.
pub(crate) struct TargetCopy {
    /// The target's place in the list given, for [`CopyEvent`](super::CopyEvent)s.
    pub(super) index: usize,
    reference: ImageRef,
    pub(super) session: Arc<RegistrySession>,
    pub(super) scopes: Vec<String>,
    pub(super) locations: BlobLocations,
    /// The first failure's text.
    failure: Mutex<Option<String>>,
    /// Upload sessions left open by mounts answered 202, by digest.
    uploads: Mutex<HashMap<String, Url>>,
    /// The blobs this copy sends to the target, claimed so that other copies wait and mount.
    sending: Mutex<HashMap<String, SendingBlob>>,
    bytes_sent: Arc<AtomicU64>,
    pub(super) blobs_sent: AtomicUsize,
    pub(super) blobs_mounted: AtomicUsize,
    pub(super) blobs_skipped: AtomicUsize,
    pub(super) manifests_pushed: AtomicUsize,
    started: Instant,
}

impl TargetCopy {
    /// Target `index` of a copy: the repository `reference` on the registry `session` speaks to.
    pub(super) fn new(
        index: usize,
        reference: ImageRef,
        session: Arc<RegistrySession>,
        locations: BlobLocations,
    ) -> Self {
        TargetCopy {
            index,
            scopes: vec![push_scope(reference.repository())],
            reference,
            session,
            locations,
            failure: Mutex::new(None),
            uploads: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashMap::new()),
            bytes_sent: Arc::new(AtomicU64::new(0)),
            blobs_sent: AtomicUsize::new(0),
            blobs_mounted: AtomicUsize::new(0),
            blobs_skipped: AtomicUsize::new(0),
            manifests_pushed: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    pub(super) fn repository(&self) -> &str {
        self.reference.repository()
    }

    /// Records the first failure; later steps skip a failed target. Its claims end, so copies
    /// waiting for its blobs send them themselves.
    pub(super) fn fail(&self, error: TargetError) {
        let reason = error.to_string();
        {
            let mut failure = self.failure.lock().expect("failure lock");
            if failure.is_none() {
                tracing::warn!(target = %self.reference, %reason, "copy to target failed");
                *failure = Some(reason);
            }
        }
        self.sending.lock().expect("sending lock").clear();
    }

    pub(super) fn hold_claim(&self, digest: &str, claim: SendingBlob) {
        self.sending
            .lock()
            .expect("sending lock")
            .insert(digest.to_string(), claim);
    }

    /// The send of `digest` to this target ended (its location is recorded if it worked).
    pub(super) fn end_claim(&self, digest: &str) {
        self.sending.lock().expect("sending lock").remove(digest);
    }

    pub(super) fn failed(&self) -> bool {
        self.failure.lock().expect("failure lock").is_some()
    }

    /// Keeps the upload session a refused mount opened, for sending the blob.
    pub(super) fn keep_upload(&self, digest: &str, url: Url) {
        self.uploads
            .lock()
            .expect("uploads lock")
            .insert(digest.to_string(), url);
    }

    pub(super) fn take_upload(&self, digest: &str) -> Option<Url> {
        self.uploads.lock().expect("uploads lock").remove(digest)
    }

    pub(super) fn stats(&self) -> Arc<AtomicU64> {
        self.bytes_sent.clone()
    }

    pub(super) fn report(&self, digest: &str) -> TargetReport {
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
