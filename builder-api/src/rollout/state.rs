//! The rollout loop's shared state, the [`Rollouts`] handle `Context` holds: its wake-up and the
//! Deployments being driven. The loop (`rollout/mod.rs`) takes the `Context`; this file does not,
//! so `Context` can hold it without an import cycle.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Rollouts {
    pub(super) wake: Notify,
    /// Deployments with a rollout being driven: (cluster, namespace, name).
    pub(super) active: Mutex<HashSet<(String, String, String)>>,
    /// A `promote` or `abort` was recorded: releases holding for one look at the store.
    pub(super) decisions: Notify,
}

impl Rollouts {
    /// An image event or a rollout was queued, or a rollout ended.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A `promote` or `abort` was recorded for a running release.
    pub fn decided(&self) {
        self.decisions.notify_waiters();
    }
}

