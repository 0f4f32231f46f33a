//! Copying `repo@digest` (and tags) from one source registry to N target registries.
//!
//! For each blob and target: HEAD; else a cross-repository mount when the target registry is
//! known to hold the blob in another repository; else the blob is read from the source once and
//! streamed to every target that lacks it at the same time (`fanout.rs`). Manifests are copied as
//! the raw bytes the source stored, children before the index, referrers after their subject, tags
//! last, and a manifest goes to a target only once all its blobs are confirmed there. Each target
//! is verified by digest at the end; a target that fails fails alone.
//!
//! This file holds what a caller of the copy names (options, progress events, the copy's error);
//! the work is in one file per concept, in the order a copy runs:
//! - `plan.rs`: what to copy, read from the source once;
//! - `orchestrate.rs`: [`copy_image`], which runs the steps below over every target at once;
//! - `target.rs`: one target during a copy, why it failed, and the reports;
//! - `prepare.rs`: step 1, what a target lacks (HEADs) and what it gets by a mount, blob by blob;
//! - `fanout.rs`: step 2, one blob read once and streamed to every target lacking it;
//! - `locations.rs`: what copies running together share (blob locations, sends under way, slots);
//! - `manifests.rs`: step 3, manifests, referrers and tags pushed, then the target verified.

mod fanout;
mod locations;
mod manifests;
mod orchestrate;
mod plan;
mod prepare;
mod target;

use std::time::Duration;

use crate::auth::RegistryOptions;
use crate::client::RegistryError;
use crate::session::RetryPolicy;

pub use locations::{BlobLocation, BlobLocations, TransferSlots};
pub use orchestrate::copy_image;
pub use target::{CopyReport, TargetReport, TargetState};

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
    /// What this target lacks, once every blob of it was looked at (HEADs and mounts): the bytes
    /// it will be sent. Sends of blobs found missing earlier may already be under way.
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
