//! The tracker: one label-selected watcher on Jobs and one on Pods, across all namespaces, for
//! every build Kiln runs — no polling, no watch per build. Each build's runner subscribes to a
//! [`BuildView`] (its Job and Pod as last seen) and wakes on every change.
//!
//! `watcher()` re-lists after a dropped watch or a `410 Gone`; an object missing from a re-list
//! was deleted while the watch was down, so the view drops it then (the delete event itself was
//! never seen).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::render::{LABEL_BUILD, MANAGED_BY};

/// What the cluster shows of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildView {
    pub job: Option<Job>,
    pub pod: Option<Pod>,
    /// The Job was seen and then deleted (by Kiln, the TTL controller, or a person).
    pub job_deleted: bool,
}

#[derive(Default)]
struct Shared {
    views: Mutex<HashMap<i64, watch::Sender<BuildView>>>,
}

impl Shared {
    fn update(&self, build: i64, f: impl FnOnce(&mut BuildView)) {
        let mut views = self.views.lock().unwrap();
        let tx = views.entry(build).or_insert_with(|| watch::channel(BuildView::default()).0);
        tx.send_modify(f);
    }
}

/// Handle to the two watchers.
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
    jobs_synced: watch::Receiver<bool>,
    pods_synced: watch::Receiver<bool>,
}

impl Tracker {
    /// Starts both watchers; they run for the life of the process.
    pub fn start(client: Client) -> Tracker {
        let shared = Arc::new(Shared::default());
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let (jobs_tx, jobs_synced) = watch::channel(false);
        let (pods_tx, pods_synced) = watch::channel(false);
        tokio::spawn(follow::<Job>(Api::all(client.clone()), selector.clone(), shared.clone(), jobs_tx, |v, job| {
            match job {
                Some(job) => {
                    v.job = Some(job);
                    v.job_deleted = false;
                }
                None => {
                    v.job_deleted = v.job.is_some() || v.job_deleted;
                    v.job = None;
                }
            }
        }));
        tokio::spawn(follow::<Pod>(Api::all(client), selector, shared.clone(), pods_tx, |v, pod| v.pod = pod));
        Tracker { shared, jobs_synced, pods_synced }
    }

    /// The view of one build, live.
    pub fn subscribe(&self, build: i64) -> watch::Receiver<BuildView> {
        let mut views = self.shared.views.lock().unwrap();
        views.entry(build).or_insert_with(|| watch::channel(BuildView::default()).0).subscribe()
    }

    /// The build ended and its Job is gone: forget it.
    pub fn forget(&self, build: i64) {
        self.shared.views.lock().unwrap().remove(&build);
    }

    /// Waits until both watchers have listed once, so a missing Job means there is none.
    pub async fn synced(&self) {
        let mut jobs = self.jobs_synced.clone();
        let mut pods = self.pods_synced.clone();
        let _ = jobs.wait_for(|s| *s).await;
        let _ = pods.wait_for(|s| *s).await;
    }
}

fn build_id<K: Resource>(obj: &K) -> Option<i64> {
    obj.meta().labels.as_ref()?.get(LABEL_BUILD)?.parse().ok()
}

/// One watcher: applies every event to the views. Errors (a dropped connection, a 410) are
/// retried with backoff inside the stream; it never ends.
async fn follow<K>(
    api: Api<K>,
    selector: String,
    shared: Arc<Shared>,
    synced: watch::Sender<bool>,
    apply: impl Fn(&mut BuildView, Option<K>) + Send + 'static,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&selector);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    // During a (re-)list: which builds the list showed.
    let mut listed: Option<HashSet<i64>> = None;
    // Builds whose object this watcher has seen and not seen deleted.
    let mut known: HashSet<i64> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(id) = build_id(&obj) {
                    if let Some(l) = listed.as_mut() {
                        l.insert(id);
                    }
                    known.insert(id);
                    shared.update(id, |v| apply(v, Some(obj)));
                }
            }
            Ok(Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    for gone in known.difference(&listed).copied().collect::<Vec<_>>() {
                        known.remove(&gone);
                        shared.update(gone, |v| apply(v, None));
                    }
                }
                synced.send_replace(true);
            }
            Ok(Event::Apply(obj)) => {
                if let Some(id) = build_id(&obj) {
                    known.insert(id);
                    shared.update(id, |v| apply(v, Some(obj)));
                }
            }
            Ok(Event::Delete(obj)) => {
                if let Some(id) = build_id(&obj) {
                    // A newer object of the same build (a Pod replaced) keeps the view.
                    let uid = obj.uid();
                    known.remove(&id);
                    shared.update(id, |v| {
                        let current_uid = match K::kind(&()).as_ref() {
                            "Pod" => v.pod.as_ref().and_then(|p| p.metadata.uid.clone()),
                            _ => v.job.as_ref().and_then(|j| j.metadata.uid.clone()),
                        };
                        if current_uid.is_none() || current_uid == uid {
                            apply(v, None)
                        }
                    });
                }
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), "watch: {e}; retrying"),
        }
    }
}
