//! What copies sharing one [`CopyOptions`](super::CopyOptions) know about target registries:
//! where each blob already is (so a copy to another repository mounts it instead of sending),
//! which blobs are on their way right now (so two copies that both lack a base layer send it
//! once: the second waits for the first, then mounts), and how many blobs may stream at once.
//!
//! This is what lets many images be copied at the same time — the builds of one push finishing
//! together, or `kiln sync` of several images — with their transfers overlapping and every
//! shared blob crossing the wire once per registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// (registry, digest).
type Key = (String, String);

/// Where blobs are, or are being sent, on each registry. Share one between copies (it is a cheap
/// handle); it only ever holds hints: a wrong one costs one refused mount.
///
/// A long-lived owner (Kiln) keeps the hints across restarts: [`BlobLocations::remembering`]
/// journals every location learnt, [`BlobLocations::take_learnt`] hands them over for saving, and
/// [`BlobLocations::seed`] loads the saved ones into the next process.
#[derive(Debug, Clone, Default)]
pub struct BlobLocations(Arc<Mutex<Locations>>);

/// A blob's location: (registry, digest, repository).
pub type BlobLocation = (String, String, String);

#[derive(Debug, Default)]
struct Locations {
    /// A repository known to hold the blob.
    known: HashMap<Key, String>,
    /// Locations learnt since the last [`BlobLocations::take_learnt`], when remembering.
    learnt: Option<Vec<BlobLocation>>,
    /// Blobs a copy is sending now: its claim's id, the repository, and a channel that closes
    /// when the send ends (whether it worked or not).
    sending: HashMap<Key, (u64, String, watch::Receiver<()>)>,
    next_claim: u64,
}

/// Whether a copy that lacks a blob on a registry should send it.
pub(crate) enum Claim {
    /// Nobody else is sending it: this copy does. Dropping the claim tells any waiters the send
    /// ended (after a successful send records the blob's location first).
    Mine(SendingBlob),
    /// Another copy is sending it to `repository` of the same registry: wait for `done`, then
    /// mount it from there (or send it after all, if that send failed).
    Theirs {
        repository: String,
        done: watch::Receiver<()>,
    },
}

/// A claim to send one blob to one registry; see [`Claim::Mine`].
pub(crate) struct SendingBlob {
    locations: BlobLocations,
    key: Key,
    id: u64,
    _done: watch::Sender<()>,
}

impl Drop for SendingBlob {
    fn drop(&mut self) {
        let mut l = self.locations.lock();
        if l.sending.get(&self.key).is_some_and(|(id, _, _)| *id == self.id) {
            l.sending.remove(&self.key);
        }
        // `_done` drops after this, which wakes the waiters.
    }
}

impl BlobLocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Locations> {
        self.0.lock().expect("blob locations lock")
    }

    /// Hints that journal what they learn, for [`BlobLocations::take_learnt`].
    pub fn remembering() -> Self {
        let locations = BlobLocations::default();
        locations.lock().learnt = Some(Vec::new());
        locations
    }

    /// Adds saved locations (not journalled again).
    pub fn seed(&self, saved: impl IntoIterator<Item = BlobLocation>) {
        let mut l = self.lock();
        for (registry, digest, repository) in saved {
            l.known.insert((registry, digest), repository);
        }
    }

    /// The locations learnt since the last call (none unless [`BlobLocations::remembering`]).
    pub fn take_learnt(&self) -> Vec<BlobLocation> {
        self.lock().learnt.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn record(&self, registry: &str, digest: &str, repository: &str) {
        let mut l = self.lock();
        let key = (registry.to_string(), digest.to_string());
        if l.known.get(&key).map(String::as_str) == Some(repository) {
            return;
        }
        if let Some(learnt) = &mut l.learnt {
            learnt.push((key.0.clone(), key.1.clone(), repository.to_string()));
        }
        l.known.insert(key, repository.to_string());
    }

    /// A repository of `registry` other than `except` known to hold `digest`.
    pub fn find(&self, registry: &str, digest: &str, except: &str) -> Option<String> {
        self.lock()
            .known
            .get(&(registry.to_string(), digest.to_string()))
            .filter(|repo| repo.as_str() != except)
            .cloned()
    }

    /// Claims the sending of `digest` to `repository` on `registry`, unless another copy already
    /// sends it there (to any repository of that registry).
    pub(crate) fn claim(&self, registry: &str, digest: &str, repository: &str) -> Claim {
        let key = (registry.to_string(), digest.to_string());
        let mut l = self.lock();
        if let Some((_, repository, done)) = l.sending.get(&key) {
            return Claim::Theirs {
                repository: repository.clone(),
                done: done.clone(),
            };
        }
        l.next_claim += 1;
        let id = l.next_claim;
        let (tx, rx) = watch::channel(());
        l.sending.insert(key.clone(), (id, repository.to_string(), rx));
        Claim::Mine(SendingBlob {
            locations: self.clone(),
            key,
            id,
            _done: tx,
        })
    }
}

/// How many blobs stream at the same time across every copy sharing it (each stream feeds every
/// target that lacks the blob). A cheap handle.
#[derive(Debug, Clone)]
pub struct TransferSlots {
    slots: Arc<Semaphore>,
    size: usize,
    busy_peak: Arc<AtomicU64>,
}

impl TransferSlots {
    pub fn new(size: usize) -> Self {
        TransferSlots {
            slots: Arc::new(Semaphore::new(size.max(1))),
            size: size.max(1),
            busy_peak: Arc::default(),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The most slots ever taken at once.
    pub fn peak(&self) -> u64 {
        self.busy_peak.load(Ordering::Relaxed)
    }

    pub(crate) async fn acquire(&self) -> OwnedSemaphorePermit {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the transfer semaphore is never closed");
        let busy = (self.size - self.slots.available_permits()) as u64;
        self.busy_peak.fetch_max(busy, Ordering::Relaxed);
        permit
    }
}

impl Default for TransferSlots {
    /// Four blobs at once: each feeds every target, so with two targets that is eight uploads,
    /// enough to keep a registry pair busy without thrashing a small machine.
    fn default() -> Self {
        TransferSlots::new(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_copy_waits_for_the_first_send_then_knows_where_the_blob_is() {
        let locations = BlobLocations::default();
        let Claim::Mine(first) = locations.claim("r:5000", "sha256:a", "app-1") else {
            panic!("nobody sends it yet")
        };
        let Claim::Theirs { repository, mut done } = locations.claim("r:5000", "sha256:a", "app-2")
        else {
            panic!("the first copy sends it")
        };
        assert_eq!(repository, "app-1");
        // Another registry or blob is independent.
        assert!(matches!(locations.claim("s:5000", "sha256:a", "app-2"), Claim::Mine(_)));
        let waiter = tokio::spawn(async move { done.changed().await.is_err() });
        locations.record("r:5000", "sha256:a", "app-1");
        drop(first);
        assert!(waiter.await.unwrap(), "the waiter wakes when the send ends");
        assert_eq!(locations.find("r:5000", "sha256:a", "app-2").as_deref(), Some("app-1"));
        // The claim is gone: a later copy that still lacks it sends it itself.
        assert!(matches!(locations.claim("r:5000", "sha256:a", "app-3"), Claim::Mine(_)));
    }

    #[test]
    fn remembering_hints_journal_what_they_learn_once_and_not_what_they_were_seeded_with() {
        let locations = BlobLocations::remembering();
        locations.seed([("r:5000".into(), "sha256:a".into(), "app-1".into())]);
        assert_eq!(locations.find("r:5000", "sha256:a", "app-2").as_deref(), Some("app-1"));
        locations.record("r:5000", "sha256:a", "app-1");
        locations.record("r:5000", "sha256:b", "app-2");
        locations.record("r:5000", "sha256:b", "app-2");
        assert_eq!(locations.take_learnt(), [("r:5000".to_string(), "sha256:b".to_string(), "app-2".to_string())]);
        assert!(locations.take_learnt().is_empty(), "taken once");
        // Plain hints keep no journal.
        let plain = BlobLocations::default();
        plain.record("r:5000", "sha256:c", "app-3");
        assert!(plain.take_learnt().is_empty());
    }

    #[tokio::test]
    async fn transfer_slots_bound_the_streams_and_remember_the_peak() {
        let slots = TransferSlots::new(2);
        let a = slots.acquire().await;
        let _b = slots.acquire().await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), slots.acquire())
                .await
                .is_err(),
            "a third waits"
        );
        drop(a);
        let _c = slots.acquire().await;
        assert_eq!(slots.peak(), 2);
    }
}
