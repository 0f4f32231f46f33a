//! The Job controller, as the recordings show the real one (S01–S06, S08, S10). Pods come from
//! `spec.template` (Kiln's Jobs run one pod with `backoffLimit: 0`) and carry the
//! `batch.kubernetes.io/job-tracking` finalizer, so a pod is counted before it may go:
//!
//! - success: pod Succeeded → `SuccessCriteriaMet` + `uncountedTerminatedPods.succeeded` →
//!   finalizer removed → `Complete`, `succeeded: 1`, `completionTime`, Event `Completed`;
//! - failure: pod Failed → `FailureTarget` (BackoffLimitExceeded) + `uncountedTerminatedPods.failed`
//!   → finalizer removed → `Failed` appended, `failed: 1`, Warning `BackoffLimitExceeded`; the pod
//!   stays;
//! - `activeDeadlineSeconds`: the pods are deleted (graceful, finalizer still on, Event
//!   `SuccessfulDelete`) and `FailureTarget` (DeadlineExceeded) written with `terminating`; the
//!   kubelet kills them; the finalizer is removed, which lets the pod go; only once no pod is
//!   terminating is `Failed` appended (Warning `DeadlineExceeded`).
//!
//! Each step is its own write, so a watcher sees them in that order. The real controller
//! batches pod updates (about a second, `FakeKubeOptions::job_sync_delay` here) and reacts to
//! its Jobs at once. A refused pod create (PodSecurity, quota) is a Warning `FailedCreate` Event
//! per attempt, retried after 1, 2, 4, 8 … s; the Job gets no condition (S08). Pods whose Job is
//! gone or going (deleted with Background or Orphan propagation) lose the finalizer (S10).
//! `ttlSecondsAfterFinished` deletes a finished Job with its pods. The controller wakes on store
//! changes, and on a timer only for a deadline, a TTL, a batched pod update or a create back-off.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::store::{name_of, now_rfc3339, res, Res};
use super::work_queue::{ObjectKey, WorkQueue};
use super::Shared;

type JobKey = ObjectKey;

/// The finalizer that keeps a pod until the controller has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Back-off after a refused pod create: 1 s, doubling, at most this.
const CREATE_BACKOFF_CAP: Duration = Duration::from_secs(300);

fn jobs_r() -> &'static Res {
    res("jobs").expect("jobs")
}

fn pods_r() -> &'static Res {
    res("pods").expect("pods")
}

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    // Only the Jobs that changed (or whose pods did, a batch later), and those whose deadline,
    // TTL or create back-off came due.
    let mut queue = WorkQueue::default();
    let mut ctl = Controller::default();
    let delay = sh.opts.job_sync_delay;
    loop {
        changes.borrow_and_update();
        let dirty = queue.next_delayed(&sh.store, false, |e| job_of_event(e, delay));
        if dirty.as_ref().is_none_or(|d| !d.is_empty()) {
            queue.schedule(ctl.reconcile(&sh, dirty.as_ref()));
        }
        if !queue.wait(&sh, &mut changes).await {
            return;
        }
    }
}

fn has_finalizer(pod: &Value) -> bool {
    pod["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER))
}

/// The Job an event concerns: the Job itself (at once), or the Job that controls the pod (a batch
/// later). An orphan that still carries the finalizer is found through its `job-name` label.
fn job_of_event(e: &super::store::Event, delay: Duration) -> Option<(JobKey, Duration)> {
    match e.resource {
        "jobs" => Some(((e.namespace.clone(), name_of(&e.object).to_string()), Duration::ZERO)),
        "pods" => {
            let o = &e.object;
            let owner = o["metadata"]["ownerReferences"].as_array().and_then(|refs| refs.iter().find(|r| r["controller"] == true && r["kind"] == "Job"));
            let name = match owner {
                Some(r) => r["name"].as_str()?,
                None if has_finalizer(o) => o["metadata"]["labels"]["batch.kubernetes.io/job-name"].as_str()?,
                None => return None,
            };
            Some(((e.namespace.clone(), name.to_string()), delay))
        }
        _ => None,
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

/// The instant `t + secs` on tokio's clock.
fn instant_at(t: DateTime<Utc>, secs: i64) -> Instant {
    let left = (t + chrono::Duration::seconds(secs)) - Utc::now();
    Instant::now() + left.to_std().unwrap_or(Duration::ZERO)
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now})
}

/// What the controller reads of a Job (read in place: copying every Job on every change made
/// the fake the cost of a benchmark).
struct JobView {
    /// kind, apiVersion and metadata (for Events' `involvedObject`).
    head: Value,
    ns: String,
    name: String,
    uid: String,
    deleting: bool,
    ttl: Option<i64>,
    parallelism: i64,
    completions: i64,
    backoff: i64,
    deadline: Option<i64>,
    status: Value,
}

/// What the controller reads of a Pod.
struct PodView {
    name: String,
    uid: String,
    phase: String,
    ready: bool,
    deleting: bool,
    tracked: bool,
}

impl PodView {
    fn terminal(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }
}

/// The Job status the controller writes: zero counts left out (`omitempty`), `ready` and
/// `terminating` always there, as the real server serialises it.
#[derive(Clone, PartialEq)]
struct Status {
    conditions: Vec<Value>,
    start_time: Option<String>,
    completion_time: Option<String>,
    active: i64,
    succeeded: i64,
    failed: i64,
    ready: i64,
    terminating: i64,
    uncounted_succeeded: Vec<String>,
    uncounted_failed: Vec<String>,
}

impl Status {
    fn read(s: &Value) -> Status {
        let list = |k: &str| s["uncountedTerminatedPods"][k].as_array().into_iter().flatten().filter_map(|u| u.as_str().map(String::from)).collect();
        Status {
            conditions: s["conditions"].as_array().cloned().unwrap_or_default(),
            start_time: s["startTime"].as_str().map(String::from),
            completion_time: s["completionTime"].as_str().map(String::from),
            active: s["active"].as_i64().unwrap_or(0),
            succeeded: s["succeeded"].as_i64().unwrap_or(0),
            failed: s["failed"].as_i64().unwrap_or(0),
            ready: s["ready"].as_i64().unwrap_or(0),
            terminating: s["terminating"].as_i64().unwrap_or(0),
            uncounted_succeeded: list("succeeded"),
            uncounted_failed: list("failed"),
        }
    }

    fn to_value(&self) -> Value {
        let mut s = Map::new();
        if !self.conditions.is_empty() {
            s.insert("conditions".into(), json!(self.conditions));
        }
        if let Some(t) = &self.start_time {
            s.insert("startTime".into(), json!(t));
        }
        if let Some(t) = &self.completion_time {
            s.insert("completionTime".into(), json!(t));
        }
        for (k, v) in [("active", self.active), ("succeeded", self.succeeded), ("failed", self.failed)] {
            if v != 0 {
                s.insert(k.into(), json!(v));
            }
        }
        s.insert("ready".into(), json!(self.ready));
        s.insert("terminating".into(), json!(self.terminating));
        let mut uncounted = Map::new();
        if !self.uncounted_succeeded.is_empty() {
            uncounted.insert("succeeded".into(), json!(self.uncounted_succeeded));
        }
        if !self.uncounted_failed.is_empty() {
            uncounted.insert("failed".into(), json!(self.uncounted_failed));
        }
        s.insert("uncountedTerminatedPods".into(), Value::Object(uncounted));
        Value::Object(s)
    }

    fn has(&self, kind: &str) -> bool {
        self.conditions.iter().any(|c| c["type"] == kind && c["status"] == "True")
    }

    fn condition(&self, kind: &str) -> Option<&Value> {
        self.conditions.iter().find(|c| c["type"] == kind && c["status"] == "True")
    }

    fn uncounted(&self, uid: &str) -> bool {
        self.uncounted_succeeded.iter().chain(&self.uncounted_failed).any(|u| u == uid)
    }

    /// When the Job finished (Complete or Failed), for the TTL.
    fn finished_at(&self) -> Option<DateTime<Utc>> {
        ["Complete", "Failed"].iter().find_map(|k| parse_time(&self.condition(k)?["lastTransitionTime"]))
    }
}

#[derive(Default)]
struct Controller {
    /// Refused pod creates per Job: how many, and when the next attempt is due.
    backoff: HashMap<JobKey, (u32, Instant)>,
}

impl Controller {
    /// Reconciles the given Jobs (all when `None`); returns when each has to be looked at again
    /// without a store change.
    fn reconcile(&mut self, sh: &Shared, only: Option<&HashSet<JobKey>>) -> Vec<(JobKey, Instant)> {
        let keys: Vec<JobKey> = match only {
            Some(keys) => keys.iter().cloned().collect(),
            None => sh.store.scan(jobs_r(), None, |j| Some((j["metadata"]["namespace"].as_str().unwrap_or("").to_string(), name_of(j).to_string()))),
        };
        let mut timers = vec![];
        for key in keys {
            if let Some(at) = self.sync(sh, &key) {
                timers.push((key, at));
            }
        }
        timers
    }

    /// One Job: returns when it has to be looked at again without a change.
    fn sync(&mut self, sh: &Shared, (ns, name): &JobKey) -> Option<Instant> {
        let view = |job: &Value| {
            let spec = &job["spec"];
            JobView {
                head: json!({"kind": "Job", "apiVersion": "batch/v1", "metadata": job["metadata"]}),
                ns: ns.clone(),
                name: name.clone(),
                uid: job["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                deleting: job["metadata"].get("deletionTimestamp").is_some(),
                ttl: spec["ttlSecondsAfterFinished"].as_i64(),
                parallelism: spec["parallelism"].as_i64().unwrap_or(1),
                completions: spec["completions"].as_i64().unwrap_or(1),
                backoff: spec["backoffLimit"].as_i64().unwrap_or(6),
                deadline: spec["activeDeadlineSeconds"].as_i64(),
                status: job["status"].clone(),
            }
        };
        let Some(job) = sh.store.peek(jobs_r(), ns, name, view) else {
            self.backoff.remove(&(ns.clone(), name.clone()));
            strip_orphans(sh, ns, name);
            return None;
        };
        let pods = pods_of(sh, &job);
        if job.deleting {
            // Going (foreground deletion): its pods need no counting any more.
            for p in pods.iter().filter(|p| p.tracked) {
                strip(sh, ns, &p.name);
            }
            return None;
        }
        let mut st = Status::read(&job.status);
        if let Some(done) = st.finished_at() {
            for p in pods.iter().filter(|p| p.tracked) {
                strip(sh, ns, &p.name);
            }
            let ttl = job.ttl?;
            if Utc::now() >= done + chrono::Duration::seconds(ttl) {
                let _ = super::delete(sh, jobs_r(), ns, name, Some("Background"), None, false);
                return None;
            }
            return Some(instant_at(done, ttl));
        }
        let mut wake: Option<Instant> = None;
        let start = match st.start_time.as_deref().and_then(|t| parse_time(&json!(t))) {
            Some(t) => t,
            None => {
                st.start_time = Some(now_rfc3339());
                parse_time(&json!(st.start_time)).expect("just written")
            }
        };
        // Tracked pods that ended (or are going) and are not counted yet.
        let fresh: Vec<&PodView> = pods.iter().filter(|p| p.tracked && !st.uncounted(&p.uid)).collect();
        for p in fresh {
            if p.phase == "Succeeded" {
                st.uncounted_succeeded.push(p.uid.clone());
            } else if p.phase == "Failed" || p.deleting {
                st.uncounted_failed.push(p.uid.clone());
            }
        }
        let mut active: Vec<&PodView> = pods.iter().filter(|p| !p.terminal() && !p.deleting).collect();
        let mut deleted: Vec<String> = vec![];
        let mut created = 0;
        if !st.has("FailureTarget") && !st.has("SuccessCriteriaMet") {
            let succeeded = st.succeeded + st.uncounted_succeeded.len() as i64;
            let failed = st.failed + st.uncounted_failed.len() as i64;
            if job.deadline.is_some_and(|ads| Utc::now() >= start + chrono::Duration::seconds(ads)) {
                // As the real controller: the active pods are deleted (gracefully; the kubelet
                // kills them), and counted as failed.
                for p in active.drain(..) {
                    if super::kubelet::delete_pod(sh, ns, &p.name, None, false).is_ok() {
                        deleted.push(p.name.clone());
                        st.uncounted_failed.push(p.uid.clone());
                    }
                }
                st.conditions.push(condition("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"));
            } else if succeeded >= job.completions {
                st.conditions.push(condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"));
            } else if failed > job.backoff {
                st.conditions.push(condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"));
            } else {
                if let Some(ads) = job.deadline {
                    wake = Some(instant_at(start, ads));
                }
                if (active.len() as i64) < job.parallelism && succeeded + (active.len() as i64) < job.completions {
                    match self.create_pod(sh, &job) {
                        Ok(()) => created = 1,
                        Err(retry) => wake = Some(wake.map_or(retry, |w| w.min(retry))),
                    }
                }
            }
        }
        let finishing = st.has("FailureTarget") || st.has("SuccessCriteriaMet");
        st.active = active.len() as i64 + created;
        st.ready = if finishing { 0 } else { active.iter().filter(|p| p.ready).count() as i64 };
        st.terminating = pods.iter().filter(|p| p.deleting).count() as i64 + deleted.len() as i64;
        let mut written = job.status.clone();
        self.write(sh, &job, &st, &mut written);
        for pod in &deleted {
            super::events::job_controller(sh, &job.head, "Normal", "SuccessfulDelete", &format!("Deleted pod: {pod}"));
        }

        // Counted pods lose the finalizer once they can no longer change: ended, or going
        // without a process to kill.
        let running = sh.pods.lock().unwrap().keys().cloned().collect::<HashSet<String>>();
        let mut stripped: Vec<String> = vec![];
        for p in pods.iter().filter(|p| p.tracked && st.uncounted(&p.uid)) {
            if (p.terminal() || (p.deleting && !running.contains(&p.uid))) && strip(sh, ns, &p.name) {
                stripped.push(p.uid.clone());
            }
        }
        let mut finished = None;
        if !stripped.is_empty() {
            let before = (st.uncounted_succeeded.len(), st.uncounted_failed.len());
            st.uncounted_succeeded.retain(|u| !stripped.contains(u));
            st.uncounted_failed.retain(|u| !stripped.contains(u));
            st.succeeded += (before.0 - st.uncounted_succeeded.len()) as i64;
            st.failed += (before.1 - st.uncounted_failed.len()) as i64;
        }
        // The terminal condition, once every pod is counted and none is terminating any more.
        if st.uncounted_succeeded.is_empty() && st.uncounted_failed.is_empty() && st.terminating == 0 {
            if st.has("SuccessCriteriaMet") && !st.has("Complete") {
                let c = st.condition("SuccessCriteriaMet").cloned().expect("present");
                st.conditions.push(condition("Complete", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")));
                st.completion_time = Some(now_rfc3339());
                finished = Some(("Normal", "Completed".to_string(), "Job completed".to_string()));
            } else if st.has("FailureTarget") && !st.has("Failed") {
                let c = st.condition("FailureTarget").cloned().expect("present");
                let (reason, message) = (c["reason"].as_str().unwrap_or("").to_string(), c["message"].as_str().unwrap_or("").to_string());
                st.conditions.push(condition("Failed", &reason, &message));
                finished = Some(("Warning", reason, message));
            }
        }
        let head = self.write(sh, &job, &st, &mut written);
        if let Some((kind, reason, message)) = finished {
            self.backoff.remove(&(ns.clone(), name.clone()));
            super::events::job_controller(sh, head.as_ref().unwrap_or(&job.head), kind, &reason, &message);
            if let Some(ttl) = job.ttl {
                return Some(instant_at(Utc::now(), ttl));
            }
        }
        wake
    }

    /// Writes the status when it differs from `last` (what was read or last written); returns
    /// the Job as written (for an Event's `involvedObject.resourceVersion`).
    fn write(&self, sh: &Shared, job: &JobView, st: &Status, last: &mut Value) -> Option<Value> {
        let next = st.to_value();
        if next == *last {
            return None;
        }
        *last = next.clone();
        let written = sh
            .store
            .modify(jobs_r(), &job.ns, &job.name, |o| {
                let mut o = o.clone();
                o["status"] = next;
                Ok(o)
            })
            .ok()?;
        Some(json!({"kind": "Job", "apiVersion": "batch/v1", "metadata": written["metadata"]}))
    }

    /// One pod from the template, through admission like any client's. A refusal is a
    /// `FailedCreate` Event and a back-off; Err is when to try again.
    fn create_pod(&mut self, sh: &Shared, job: &JobView) -> Result<(), Instant> {
        let key = (job.ns.clone(), job.name.clone());
        let now = Instant::now();
        if let Some((_, at)) = self.backoff.get(&key).filter(|(_, at)| *at > now) {
            return Err(*at);
        }
        // The template is read only here, once per pod the Job needs.
        let Some(pod) = sh.store.peek(jobs_r(), &job.ns, &job.name, |full| pod_of(full, &job.name, &job.uid)) else { return Ok(()) };
        match super::admission::create(sh, pods_r(), &job.ns, pod, false) {
            Ok(created) => {
                self.backoff.remove(&key);
                super::events::job_controller(sh, &job.head, "Normal", "SuccessfulCreate", &format!("Created pod: {}", name_of(&created.object)));
                Ok(())
            }
            Err(e) => {
                super::events::job_controller(sh, &job.head, "Warning", "FailedCreate", &format!("Error creating: {}", e.message));
                let attempts = self.backoff.get(&key).map_or(0, |(n, _)| *n) + 1;
                let wait = Duration::from_secs(1u64 << (attempts - 1).min(16)).min(CREATE_BACKOFF_CAP);
                let at = now + wait;
                self.backoff.insert(key, (attempts, at));
                Err(at)
            }
        }
    }
}

/// The Job's pods: named `<job>-<suffix>` (generateName) in its namespace, controlled by its uid.
fn pods_of(sh: &Shared, job: &JobView) -> Vec<PodView> {
    sh.store.scan_prefix(pods_r(), &job.ns, &format!("{}-", job.name), |p| {
        (controller_uid(p)? == job.uid).then(|| PodView {
            name: name_of(p).to_string(),
            uid: p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            phase: p["status"]["phase"].as_str().unwrap_or("").to_string(),
            ready: p["status"]["containerStatuses"].as_array().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true)),
            deleting: p["metadata"].get("deletionTimestamp").is_some(),
            tracked: has_finalizer(p),
        })
    })
}

/// The uid of the object that controls the pod, if any.
fn controller_uid(pod: &Value) -> Option<String> {
    let refs = pod["metadata"]["ownerReferences"].as_array()?;
    refs.iter().find(|r| r["controller"] == true).and_then(|r| r["uid"].as_str()).map(String::from)
}

/// Removes the tracking finalizer from a pod; true when it was there. A pod that is marked for
/// deletion (and confirmed by the kubelet) goes with it.
fn strip(sh: &Shared, ns: &str, pod: &str) -> bool {
    let mut had = false;
    let _ = sh.store.modify(pods_r(), ns, pod, |o| {
        let mut o = o.clone();
        if let Some(f) = o["metadata"].get_mut("finalizers").and_then(Value::as_array_mut) {
            let n = f.len();
            f.retain(|x| x != TRACKING_FINALIZER);
            had = f.len() != n;
            if f.is_empty() {
                o["metadata"].as_object_mut().expect("metadata").remove("finalizers");
            }
        }
        Ok(o)
    });
    had
}

/// The Job `name` is gone: pods it made that still carry the finalizer lose it (S10).
fn strip_orphans(sh: &Shared, ns: &str, name: &str) {
    let orphans = sh.store.scan_prefix(pods_r(), ns, &format!("{name}-"), |p| {
        let owner = p["metadata"]["ownerReferences"].as_array().and_then(|refs| refs.iter().find(|r| r["controller"] == true && r["kind"] == "Job")).cloned();
        let mine = match &owner {
            Some(r) => r["name"] == name,
            None => p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == name,
        };
        (mine && has_finalizer(p)).then(|| (name_of(p).to_string(), owner))
    });
    for (pod, owner) in orphans {
        // Still owned by a Job of that name (a new one, same name)? Then it is not an orphan.
        if let Some(r) = owner {
            let uid = r["uid"].as_str().unwrap_or("");
            if sh.store.peek(jobs_r(), ns, name, |j| j["metadata"]["uid"] == uid).unwrap_or(false) {
                continue;
            }
        }
        strip(sh, ns, &pod);
    }
}

/// The pod the Job's template describes, owned by the Job and tracked by its finalizer.
fn pod_of(job: &Value, name: &str, uid: &str) -> Value {
    let tmpl = &job["spec"]["template"];
    let mut labels = tmpl["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", name),
        ("controller-uid", uid),
        ("job-name", name),
    ] {
        labels[k] = json!(v);
    }
    let mut md = json!({
        "generateName": format!("{name}-"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
        "finalizers": [TRACKING_FINALIZER],
    });
    if let Some(a) = tmpl["metadata"].get("annotations") {
        md["annotations"] = a.clone();
    }
    json!({"metadata": md, "spec": tmpl["spec"].clone()})
}
