//! The scheduler's shared state, the [`Scheduler`] handle `Context` holds: the running builds
//! with their cancel tokens, why a build is being cancelled, the waiting queue and the tenants'
//! caps. The loop that uses it (`scheduler/mod.rs`) takes the `Context`; this file does not, so
//! `Context` can hold it without an import cycle.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::queue::{self, FairQueue};
use crate::metrics::Metrics;
use crate::store::{Build, BuildState, Store, StoreError};

#[derive(Default)]
pub struct Scheduler {
    /// This process among the replicas on one database: whose claims are whose.
    pub replica: ReplicaId,
    /// Set when the replica stops (SIGTERM): no more builds start here.
    pub(super) stopping: std::sync::atomic::AtomicBool,
    pub(super) wake: Notify,
    pub(super) running: Mutex<HashMap<i64, RunningBuild>>,
    /// Why a running build is being cancelled, when not by a plain cancel request.
    pub(super) cancel_reasons: Mutex<HashMap<i64, String>>,
    pub(super) queue: Mutex<Waiting>,
    /// Tenant id → most builds of that tenant running at once (tenants without a cap are absent).
    caps: Mutex<HashMap<i64, u32>>,
    /// Tenants whose cap the store found used up (see [`Scheduler::at_cap`]).
    at_cap: Mutex<std::collections::HashSet<i64>>,
    /// Tenant id → name, for the gauges' `tenant` label; read from the store at start and again
    /// only when a build of a tenant not in it shows up.
    tenant_names: Mutex<HashMap<i64, String>>,
}

pub(super) struct RunningBuild {
    tenant: i64,
    pub(super) cancel: CancellationToken,
    /// Stops following the build here without stopping the build (its Job runs on): when the
    /// replica stops, or lost its claim to another.
    pub(super) detach: Option<tokio::task::AbortHandle>,
}

/// A replica's id: `hostname-pid-random`, new for every process, so a restarted replica does
/// not mistake its predecessor's claims for its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaId(pub String);

impl Default for ReplicaId {
    fn default() -> ReplicaId {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "kiln".to_string() } else { host };
        ReplicaId(format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>()))
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The builds waiting to start, and the newest build id read from the store into them.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) fair: FairQueue,
    /// On SQLite builds only enter Queued when they are inserted, and every insert goes through
    /// the store's one writer connection, so ids become visible in increasing order: reading
    /// `id > seen_up_to` finds every build queued since the last read, and none twice. (Not so
    /// on PostgreSQL: see `read_all_queued`.)
    seen_up_to: i64,
    /// PostgreSQL: when every Queued build was last read, and whether an announcement of
    /// unnamed builds asks for a read now.
    read_all_at: Option<std::time::Instant>,
    read_all_now: bool,
}

/// PostgreSQL: how often a replica reads the whole queue, in case it missed an announcement.
const READ_ALL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a cancel request did nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelResult {
    Cancelled,
    /// Running: the executor stops it; the build ends Cancelled shortly.
    Stopping,
    AlreadyFinished(BuildState),
}

impl Scheduler {
    /// A build was queued or a slot freed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    /// Builds waiting to start (as far as the scheduler has read them).
    pub fn queued_count(&self) -> usize {
        self.queue.lock().unwrap().fair.len()
    }

    /// Whether a waiting or running build belongs to a tenant whose name is not known yet.
    pub(super) fn has_unnamed_tenants(&self) -> bool {
        let names = self.tenant_names.lock().unwrap();
        let queued: Vec<i64> = self.queue.lock().unwrap().fair.per_tenant().map(|(t, _)| t).collect();
        let running: Vec<i64> = self.running.lock().unwrap().values().map(|r| r.tenant).collect();
        queued.iter().chain(&running).any(|t| !names.contains_key(t))
    }

    pub(super) fn set_tenant_names(&self, names: HashMap<i64, String>) {
        *self.tenant_names.lock().unwrap() = names;
    }

    /// Sets the queued and running gauges of every known tenant from the queue and the running
    /// builds, which the store seeded at start: a tenant whose builds are all done reads 0 again.
    pub(super) fn publish_gauges(&self, metrics: &Metrics) {
        let queued: HashMap<i64, usize> = self.queue.lock().unwrap().fair.per_tenant().collect();
        let mut running: HashMap<i64, usize> = HashMap::new();
        for r in self.running.lock().unwrap().values() {
            *running.entry(r.tenant).or_default() += 1;
        }
        for (id, name) in self.tenant_names.lock().unwrap().iter() {
            let count = |m: &HashMap<i64, usize>| m.get(id).copied().unwrap_or(0) as i64;
            metrics.set_tenant_builds(name, count(&queued), count(&running));
        }
    }

    /// Replaces the per-tenant concurrency caps; the next pick obeys them.
    pub fn set_tenant_caps(&self, caps: HashMap<i64, u32>) {
        *self.caps.lock().unwrap() = caps;
        self.wake();
    }

    pub(super) fn register(&self, build: &Build) -> CancellationToken {
        self.reserve(build.tenant_id, build.id)
    }

    /// Takes a slot for the build and gives its cancel token (the same one on every call).
    pub(super) fn reserve(&self, tenant: i64, id: i64) -> CancellationToken {
        let mut running = self.running.lock().unwrap();
        running.entry(id).or_insert_with(|| RunningBuild { tenant, cancel: CancellationToken::new(), detach: None }).cancel.clone()
    }

    /// Whether this replica runs the build now.
    pub(super) fn runs(&self, id: i64) -> bool {
        self.running.lock().unwrap().contains_key(&id)
    }

    /// The ids of the builds this replica runs.
    pub(super) fn running_ids(&self) -> Vec<i64> {
        self.running.lock().unwrap().keys().copied().collect()
    }

    /// Records how to stop following a build that started here.
    pub(super) fn set_detach(&self, id: i64, handle: tokio::task::AbortHandle) {
        if let Some(r) = self.running.lock().unwrap().get_mut(&id) {
            r.detach = Some(handle);
        }
    }

    /// Stops following `id` here, leaving the build to another replica; true when it ran here.
    pub(super) fn detach(&self, id: i64) -> bool {
        let running = self.running.lock().unwrap().remove(&id);
        self.cancel_reasons.lock().unwrap().remove(&id);
        match running {
            Some(r) => {
                if let Some(handle) = r.detach {
                    handle.abort();
                }
                true
            }
            None => false,
        }
    }

    /// The replica is stopping: it starts no more builds, and `/readyz` says so.
    pub fn stop_starting(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the replica is stopping (it starts no more builds).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Puts builds the store left Queued (their tenant was at its cap) back at the front of their
    /// tenants' queues.
    pub(super) fn requeue(&self, builds: &[(i64, i64)]) {
        let mut queue = self.queue.lock().unwrap();
        for &(tenant, id) in builds.iter().rev() {
            queue.fair.push_front(tenant, id);
        }
    }

    /// Gives back the slots of builds that were reserved but did not start.
    pub(super) fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut running = self.running.lock().unwrap();
        let mut reasons = self.cancel_reasons.lock().unwrap();
        for id in ids {
            running.remove(&id);
            reasons.remove(&id);
        }
    }

    /// Builds another replica (or this one) announced as queued (`peers`): into the queue at
    /// once, without reading the store; None (too many to name) reads the store's queue.
    pub fn arrived(&self, builds: Option<Vec<(i64, i64)>>) {
        {
            let running = self.running.lock().unwrap();
            let mut queue = self.queue.lock().unwrap();
            match builds {
                Some(builds) => {
                    for (id, tenant) in builds {
                        if !queue.fair.contains(id) && !running.contains_key(&id) {
                            queue.fair.push(tenant, id);
                        }
                    }
                }
                None => queue.read_all_now = true,
            }
        }
        self.wake();
    }

    /// Reads into the queue the builds queued since the last read.
    pub(super) async fn read_arrivals(&self, store: &Store) -> Result<(), StoreError> {
        if store.backend() == crate::store::Backend::Postgres {
            // The announcements name what is queued; the whole queue is read now and then, for
            // anything missed (a lost listening connection), and when asked.
            let due = {
                let queue = self.queue.lock().unwrap();
                queue.read_all_now || queue.read_all_at.is_none_or(|at| at.elapsed() >= READ_ALL_EVERY)
            };
            return if due { self.read_all_queued(store).await } else { Ok(()) };
        }
        let seen = self.queue.lock().unwrap().seen_up_to;
        let arrived = store.queued_builds_after(seen).await?;
        let mut queue = self.queue.lock().unwrap();
        for (id, tenant) in arrived {
            if id > queue.seen_up_to {
                queue.fair.push(tenant, id);
                queue.seen_up_to = id;
            }
        }
        Ok(())
    }

    /// PostgreSQL: several writers (replicas, and each replica's API and webhook paths) insert
    /// builds in concurrent transactions, so ids need not become visible in increasing order —
    /// a build with a smaller id may commit after one read past it. So builds arrive by their
    /// announcements ([`Scheduler::arrived`]), and this reads all Queued builds and adds those not
    /// waiting here yet (or running here). A build another
    /// replica starts meanwhile is harmless: the store starts a build only while it is Queued.
    async fn read_all_queued(&self, store: &Store) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let queued = store.queued_builds_after(0).await?;
        let running = self.running.lock().unwrap();
        let mut queue = self.queue.lock().unwrap();
        queue.read_all_at = Some(started);
        queue.read_all_now = false;
        // Now and then, whatever was missed: tenants found at their cap are tried again.
        self.at_cap.lock().unwrap().clear();
        for (id, tenant) in queued {
            if !queue.fair.contains(id) && !running.contains_key(&id) {
                queue.fair.push(tenant, id);
            }
            queue.seen_up_to = queue.seen_up_to.max(id);
        }
        Ok(())
    }

    /// Up to `free` builds to start now, by the fair order and the tenants' caps.
    pub(super) fn pick(&self, free: usize) -> Vec<queue::Picked> {
        let mut per_tenant: HashMap<i64, usize> = HashMap::new();
        for r in self.running.lock().unwrap().values() {
            *per_tenant.entry(r.tenant).or_default() += 1;
        }
        let mut caps = self.caps.lock().unwrap().clone();
        // Tenants the store found at their cap (builds on other replicas) wait for a build to end.
        for tenant in self.at_cap.lock().unwrap().iter() {
            caps.insert(*tenant, 0);
        }
        self.queue.lock().unwrap().fair.pick(free, &per_tenant, &caps)
    }

    /// The store refused to start builds of these tenants: their caps are used up by builds of
    /// other replicas too. Until a build ends somewhere, this replica does not try them again.
    pub(super) fn at_cap(&self, tenants: impl IntoIterator<Item = i64>) {
        self.at_cap.lock().unwrap().extend(tenants);
    }

    /// A build ended (here or on another replica): tenants at their cap may start one again.
    pub fn capacity_freed(&self) {
        self.at_cap.lock().unwrap().clear();
        self.wake();
    }

    /// Forgets the queue so the next read takes every Queued build from the store again: what
    /// a failed start does, since the builds it took out may still be Queued there.
    pub(super) fn reread_queue(&self) {
        *self.queue.lock().unwrap() = Waiting::default();
    }
}

