//! The tracker: three watches for every build this instance runs — Jobs and Pods (selected by
//! this instance's labels, across all namespaces) and Warning Events — no polling, no watch per
//! build. Each build's runner subscribes to a [`BuildView`] (its Job, its pods and the warnings
//! about them, as last seen) and wakes on every change.
//!
//! `watcher()` re-lists after a dropped watch or a `410 Gone`; an object missing from a re-list
//! was deleted while the watch was down, so the view drops it then (the delete event itself was
//! never seen).
//!
//! Not kube-runtime's `reflector`: its `Store` caches objects by reference and wakes nobody in
//! particular, while each runner needs its build's Job, pods and Events together and a wake-up
//! when (only when) they change — so the watchers' events feed this per-build index instead.
//!
//! Labels can be copied by anyone who may create a Pod: a pod counts for a build only when its
//! controlling owner reference is the build's Job, by uid ([`BuildView::pod`]); others are kept
//! aside and logged once. Events carry no labels: they are matched to a build by the name of the
//! object they are about, and the runner checks the object's uid before it believes one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::render::{build_of_name, instance_selector, job_name, LABEL_BUILD};

/// A Warning Event about a build's Job or one of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The Event object's uid: one Event may be updated (`count`, `series`) and stays one.
    pub event_uid: String,
    /// `Job` or `Pod`.
    pub kind: String,
    /// The uid of the object the Event is about.
    pub object_uid: String,
    pub reason: String,
    pub message: String,
}

/// What the cluster shows of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildView {
    pub job: Option<Job>,
    /// Pods carrying this build's labels; the one that counts is [`BuildView::pod`].
    pub pods: Vec<Pod>,
    /// The Job was seen and then deleted (by Kiln, the TTL controller, or a person).
    pub job_deleted: bool,
    /// Warning Events about the Job or its pods, in arrival order, each Event once (updated in
    /// place when the cluster updates it).
    pub warnings: Vec<Warning>,
}

impl BuildView {
    /// The uid of the build's Job, once seen.
    pub fn job_uid(&self) -> Option<&str> {
        self.job.as_ref()?.metadata.uid.as_deref()
    }

    /// The pod the build's Job controls: the last one seen whose controlling owner reference is
    /// the Job's uid. A pod that only carries the labels is not the build's.
    pub fn pod(&self) -> Option<&Pod> {
        let job_uid = self.job_uid()?;
        self.pods.iter().rev().find(|p| controller_uid(p) == Some(job_uid))
    }

    /// Pods with this build's labels that its Job does not control (named for the log once).
    fn strangers(&self) -> impl Iterator<Item = &Pod> {
        let job_uid = self.job_uid();
        self.pods.iter().filter(move |p| job_uid.is_some() && controller_uid(p) != job_uid)
    }
}

/// The uid in the controlling owner reference of a pod.
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| r.uid.as_str())
}

#[derive(Default)]
struct Shared {
    views: Mutex<HashMap<i64, watch::Sender<BuildView>>>,
    /// Pods already reported as not the build's, by uid.
    strangers_logged: Mutex<HashSet<String>>,
}

impl Shared {
    fn update(&self, build: i64, f: impl FnOnce(&mut BuildView)) {
        let mut views = self.views.lock().unwrap();
        let tx = views.entry(build).or_insert_with(|| watch::channel(BuildView::default()).0);
        tx.send_modify(f);
        self.log_strangers(build, &tx.borrow());
    }

    /// As `update`, only for a build someone follows (an Event about a build nobody runs here is
    /// of no use, and must not make a view that is never forgotten).
    fn update_followed(&self, build: i64, f: impl FnOnce(&mut BuildView)) {
        if let Some(tx) = self.views.lock().unwrap().get(&build) {
            tx.send_modify(f);
        }
    }

    fn log_strangers(&self, build: i64, view: &BuildView) {
        for pod in view.strangers() {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if self.strangers_logged.lock().unwrap().insert(uid) {
                tracing::warn!(
                    build,
                    "ignoring pod {}/{}: it carries build {build}'s labels but its Job does not control it",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                );
            }
        }
    }
}

/// Handle to the three watchers.
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
    jobs_synced: watch::Receiver<bool>,
    pods_synced: watch::Receiver<bool>,
}

impl Tracker {
    /// Starts the watchers of this instance's objects; they run for the life of the process.
    pub fn start(client: Client, instance: &str) -> Tracker {
        let shared = Arc::new(Shared::default());
        let selector = instance_selector(instance);
        let (jobs_tx, jobs_synced) = watch::channel(false);
        let (pods_tx, pods_synced) = watch::channel(false);
        let jobs = watcher::Config::default().labels(&selector);
        // Only the Job of the build's own name: another Job with copied labels is not the build's.
        let own = instance.to_string();
        let is_builds_job = move |job: &Job, id: i64| job.metadata.name.as_deref() == Some(job_name(&own, id).as_str());
        tokio::spawn(follow::<Job>(Api::all(client.clone()), jobs, shared.clone(), jobs_tx, is_builds_job, |v, job| match job {
            Some(job) => {
                v.job = Some(job);
                v.job_deleted = false;
            }
            None => {
                v.job_deleted = v.job.is_some() || v.job_deleted;
                v.job = None;
            }
        }));
        let pods = watcher::Config::default().labels(&selector);
        tokio::spawn(follow::<Pod>(Api::all(client.clone()), pods, shared.clone(), pods_tx, |_, _| true, |v, pod| {
            if let Some(pod) = pod {
                let uid = pod.metadata.uid.clone();
                v.pods.retain(|p| p.metadata.uid != uid);
                v.pods.push(pod);
            }
        }));
        tokio::spawn(follow_warnings(Api::all(client), instance.to_string(), shared.clone()));
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

    /// Waits until the Job and Pod watchers have listed once, so a missing Job means there is none.
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

/// One watcher of labelled objects: applies every event to the views (`None`: the object is
/// gone). Errors (a dropped connection, a 410) are retried with backoff inside the stream; it
/// never ends.
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    synced: watch::Sender<bool>,
    accept: impl Fn(&K, i64) -> bool + Send + 'static,
    apply: impl Fn(&mut BuildView, Option<K>) + Send + 'static,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let is_pod = K::kind(&()) == "Pod";
    // During a (re-)list: the uids the list showed.
    let mut listed: Option<HashSet<String>> = None;
    // Objects this watcher has seen and not seen deleted: uid → build.
    let mut known: HashMap<String, i64> = HashMap::new();
    let remove = move |v: &mut BuildView, uid: &str, apply: &dyn Fn(&mut BuildView, Option<K>)| {
        if is_pod {
            v.pods.retain(|p| p.metadata.uid.as_deref() != Some(uid));
        } else if v.job.as_ref().is_none_or(|j| j.metadata.uid.as_deref() == Some(uid)) {
            // A newer Job of the same build keeps the view.
            apply(v, None)
        }
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(obj)) | Ok(Event::Apply(obj)) => {
                let (Some(id), Some(uid)) = (build_id(&obj), obj.uid()) else { continue };
                if !accept(&obj, id) {
                    continue;
                }
                if let Some(l) = listed.as_mut() {
                    l.insert(uid.clone());
                }
                known.insert(uid, id);
                shared.update(id, |v| apply(v, Some(obj)));
            }
            Ok(Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    let gone: Vec<(String, i64)> = known.iter().filter(|(uid, _)| !listed.contains(*uid)).map(|(u, i)| (u.clone(), *i)).collect();
                    for (uid, id) in gone {
                        known.remove(&uid);
                        shared.update(id, |v| remove(v, &uid, &apply));
                    }
                }
                synced.send_replace(true);
            }
            Ok(Event::Delete(obj)) => {
                let (Some(id), Some(uid)) = (build_id(&obj), obj.uid()) else { continue };
                if known.remove(&uid).is_none() {
                    continue;
                }
                shared.update(id, |v| remove(v, &uid, &apply));
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), "watch: {e}; retrying"),
        }
    }
}

/// The Warning Events of the cluster (`type=Warning`: what explains a wait or a failure), kept
/// for the builds this instance follows, matched by the name of the Job or pod they are about.
async fn follow_warnings(api: Api<KubeEvent>, instance: String, shared: Arc<Shared>) {
    let config = watcher::Config::default().fields("type=Warning");
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let e = match event {
            Ok(Event::InitApply(e)) | Ok(Event::Apply(e)) => e,
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(kind = "Event", "watch: {err}; retrying");
                continue;
            }
        };
        let about = &e.involved_object;
        let kind = about.kind.clone().unwrap_or_default();
        if kind != "Job" && kind != "Pod" {
            continue;
        }
        let Some(build) = about.name.as_deref().and_then(|n| build_of_name(&instance, n)) else { continue };
        let warning = Warning {
            event_uid: e.metadata.uid.clone().unwrap_or_default(),
            kind,
            object_uid: about.uid.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
        };
        shared.update_followed(build, |v| match v.warnings.iter_mut().find(|w| w.event_uid == warning.event_uid) {
            Some(w) => *w = warning,
            None => v.warnings.push(warning),
        });
    }
}
