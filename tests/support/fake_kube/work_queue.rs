//! The controllers' work queue, as a real controller's: after the first pass it names only the
//! objects that changed since the last pass (or that a change concerns, as a pod its Job) and
//! those whose timer (a deadline, a TTL, a replica step) came due, so a pass costs what changed,
//! not every object in the store.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{Event, Store};
use super::Shared;

/// An object by namespace and name.
pub(crate) type ObjectKey = (String, String);

#[derive(Default)]
pub(crate) struct WorkQueue {
    /// The resourceVersion the last pass read events up to; None before the first pass.
    pos: Option<u64>,
    timers: HashMap<ObjectKey, Instant>,
}

impl WorkQueue {
    /// The objects to look at now, `None` for all of them: on the first pass, after the history
    /// was compacted under the queue, or when the caller asks (`everything`, say a fault switch
    /// flipped). The timers of the objects named are dropped; the pass sets them again.
    pub fn next(&mut self, store: &Store, everything: bool, concerns: impl Fn(&Event) -> Option<ObjectKey>) -> Option<HashSet<ObjectKey>> {
        self.next_delayed(store, everything, |e| concerns(e).map(|k| (k, Duration::ZERO)))
    }

    /// As [`WorkQueue::next`], but a change may name its object with a delay: the object is
    /// looked at then (or sooner, when something else names it first). That is how the real Job
    /// controller batches pod updates (about a second) while reacting to its Jobs at once.
    pub fn next_delayed(&mut self, store: &Store, everything: bool, concerns: impl Fn(&Event) -> Option<(ObjectKey, Duration)>) -> Option<HashSet<ObjectKey>> {
        let dirty = match self.pos.map(|p| store.events_since(p)) {
            Some(Ok((events, now))) if !everything => {
                self.pos = Some(now);
                let now = Instant::now();
                let mut dirty: HashSet<ObjectKey> = HashSet::new();
                for (key, delay) in events.iter().filter_map(|e| concerns(e)) {
                    if delay.is_zero() {
                        dirty.insert(key);
                    } else {
                        let at = now + delay;
                        let due = self.timers.entry(key).or_insert(at);
                        *due = (*due).min(at);
                    }
                }
                dirty.extend(self.timers.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()));
                Some(dirty)
            }
            _ => {
                self.pos = Some(store.resource_version());
                None
            }
        };
        match &dirty {
            Some(keys) => self.timers.retain(|k, _| !keys.contains(k)),
            None => self.timers.clear(),
        }
        dirty
    }

    /// When objects have to be looked at again without a change.
    pub fn schedule(&mut self, timers: impl IntoIterator<Item = (ObjectKey, Instant)>) {
        self.timers.extend(timers);
    }

    /// Waits for a store change or the next timer; false when the fake shuts down.
    pub async fn wait(&self, sh: &Shared, changes: &mut watch::Receiver<u64>) -> bool {
        let wake = self.timers.values().min().copied().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = changes.changed() => true,
            _ = tokio::time::sleep_until(wake) => true,
            _ = sh.shutdown.cancelled() => false,
        }
    }
}
