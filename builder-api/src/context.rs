//! The `Context` handed to handlers, the scheduler and executors (as in kube-rs controllers).

use std::sync::Arc;

use crate::config::Config;
use crate::executor::Executor;
use crate::logs::LogHub;
use crate::rollout::clusters::Clusters;
use crate::rollout::state::Rollouts;
use crate::scheduler::state::Scheduler;
use crate::store::Store;

pub struct Context {
    pub config: Config,
    pub store: Store,
    pub hub: Arc<LogHub>,
    pub scheduler: Scheduler,
    pub executor: Arc<dyn Executor>,
    /// The client of the cluster builds run in, when `executor.kind = "kube"` (the one the kube
    /// executor holds): tenant creation provisions namespaces with it (`kube.provision_namespaces`).
    pub kube: Option<kube::Client>,
    pub clusters: Clusters,
    pub rollouts: Rollouts,
    /// Per-app webhook budgets (`[hooks]`), per process.
    pub hook_limits: crate::ratelimit::RateLimiter,
    /// What the image copies to cluster registries share, per process.
    pub replication: crate::replication::shared::SharedCopies,
    /// GitLab commit statuses of the builds, delivered in the background.
    pub gitlab_statuses: crate::gitlab_status::GitlabStatuses,
    /// Build and rollout notifications (chat robots, signed webhooks), delivered in the background.
    pub notifications: crate::notify::Notifier,
    /// What `/metrics` serves, kept by the code where things happen (one per process).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Axum state: the shared context.
#[derive(Clone)]
pub struct AppState(pub Arc<Context>);

impl std::ops::Deref for AppState {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.0
    }
}
