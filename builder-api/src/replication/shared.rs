//! What the image copies of one process share, the [`SharedCopies`] handle `Context` holds. The
//! replication itself (`replication/mod.rs`) takes the `Context`; this file does not, so `Context`
//! can hold it without an import cycle.

use registry_sync::{BlobLocations, TransferSlots};

/// What every copy to the cluster registries shares: where blobs are and which are being sent
/// (so builds finishing together send a shared base layer once per registry and mount it
/// elsewhere), and the blob streams allowed at once across all of them.
///
/// Where blobs are is kept in the store too (`blob_locations`): after a restart, the first copy
/// of a new app still mounts the base layers an earlier app's copy put on that registry.
#[derive(Debug, Default)]
pub struct SharedCopies {
    pub blob_locations: BlobLocations,
    pub transfers: TransferSlots,
}

impl SharedCopies {
    /// Hints that remember what they learn, seeded with what earlier processes learnt.
    pub async fn load(store: &crate::store::Store) -> Result<SharedCopies, crate::store::StoreError> {
        let blob_locations = BlobLocations::remembering();
        blob_locations.seed(store.blob_locations().await?);
        Ok(SharedCopies { blob_locations, transfers: TransferSlots::default() })
    }

    /// Saves the locations learnt since the last save. They are only hints: a failure to save is
    /// logged, and costs a later process a HEAD and a send instead of a mount.
    pub(super) async fn save_learnt(&self, store: &crate::store::Store) {
        let learnt = self.blob_locations.take_learnt();
        if let Err(e) = store.remember_blob_locations(&learnt).await {
            tracing::warn!("replication: could not save {} blob locations: {e}", learnt.len());
        }
    }
}

