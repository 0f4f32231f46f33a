//! The Job controller: one Pod at a time from `spec.template` (Kiln's Jobs run one pod with
//! `backoffLimit: 0`), status counts and conditions, `activeDeadlineSeconds` and
//! `ttlSecondsAfterFinished`. It wakes on store changes, and on a timer only for the next deadline
//! or TTL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::store::{name_of, now_rfc3339, res};
use super::work_queue::{ObjectKey, WorkQueue};
use super::Shared;

type JobKey = ObjectKey;

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    // Only the Jobs that changed (or whose pods did), and those whose deadline or TTL came due.
    let mut queue = WorkQueue::default();
    loop {
        changes.borrow_and_update();
        let dirty = queue.next(&sh.store, false, job_of_event);
        if dirty.as_ref().is_none_or(|d| !d.is_empty()) {
            queue.schedule(reconcile(&sh, dirty.as_ref()));
        }
        if !queue.wait(&sh, &mut changes).await {
            return;
        }
    }
}

/// The Job an event concerns: the Job itself, or the Job that controls the pod.
fn job_of_event(e: &super::store::Event) -> Option<JobKey> {
    match e.resource {
        "jobs" => Some((e.namespace.clone(), name_of(&e.object).to_string())),
        "pods" => {
            let refs = e.object["metadata"]["ownerReferences"].as_array()?;
            let owner = refs.iter().find(|r| r["controller"] == true && r["kind"] == "Job")?;
            Some((e.namespace.clone(), owner["name"].as_str()?.to_string()))
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

fn finished_at(job: &Value) -> Option<DateTime<Utc>> {
    job["status"]["conditions"].as_array()?.iter().find_map(|c| {
        let t = c["type"].as_str()?;
        ((t == "Complete" || t == "Failed") && c["status"] == "True").then(|| parse_time(&c["lastTransitionTime"])).flatten()
    })
}

/// What the controller reads of a Job (read in place: copying every Job on every change made
/// the fake the cost of a benchmark).
struct JobView {
    ns: String,
    name: String,
    uid: String,
    finished: Option<DateTime<Utc>>,
    ttl: Option<i64>,
    completions: i64,
    backoff: i64,
    deadline: Option<i64>,
    status: Value,
}

/// What the controller reads of a Pod.
struct PodView {
    name: String,
    phase: String,
    ready: bool,
    deleting: bool,
}

/// The uid of the Job that controls the pod, if any.
fn controller_uid(pod: &Value) -> Option<String> {
    let refs = pod["metadata"]["ownerReferences"].as_array()?;
    refs.iter().find(|r| r["controller"] == true).and_then(|r| r["uid"].as_str()).map(String::from)
}

/// Reconciles the given Jobs (all when `None`); returns when each has to be looked at again
/// without a store change (its deadline or TTL).
fn reconcile(sh: &Shared, only: Option<&HashSet<JobKey>>) -> Vec<(JobKey, Instant)> {
    let jobs_r = res("jobs").expect("jobs");
    let pods_r = res("pods").expect("pods");
    let mut timers = vec![];
    let view = |job: &Value| {
        if job["metadata"].get("deletionTimestamp").is_some() {
            return None;
        }
        let spec = &job["spec"];
        Some(JobView {
            ns: job["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
            name: name_of(job).to_string(),
            uid: job["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            finished: finished_at(job),
            ttl: spec["ttlSecondsAfterFinished"].as_i64(),
            completions: spec["completions"].as_i64().unwrap_or(1),
            backoff: spec["backoffLimit"].as_i64().unwrap_or(6),
            deadline: spec["activeDeadlineSeconds"].as_i64(),
            status: if job["status"].is_object() { job["status"].clone() } else { json!({}) },
        })
    };
    let jobs: Vec<JobView> = match only {
        None => sh.store.scan(jobs_r, None, view),
        Some(keys) => keys.iter().filter_map(|(ns, name)| sh.store.peek(jobs_r, ns, name, view).flatten()).collect(),
    };
    // A Job's pods are named `<job>-<suffix>` (generateName) in its namespace.
    let pods_of = |job: &JobView| {
        sh.store.scan_prefix(pods_r, &job.ns, &format!("{}-", job.name), |p| {
            (controller_uid(p)? == job.uid).then(|| PodView {
                name: name_of(p).to_string(),
                phase: p["status"]["phase"].as_str().unwrap_or("").to_string(),
                ready: p["status"]["containerStatuses"].as_array().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true)),
                deleting: p["metadata"].get("deletionTimestamp").is_some(),
            })
        })
    };
    for job in jobs {
        let JobView { ns, name, uid, .. } = &job;
        if let Some(done) = job.finished {
            if let Some(ttl) = job.ttl {
                if Utc::now() >= done + chrono::Duration::seconds(ttl) {
                    let _ = super::delete(sh, jobs_r, ns, name, Some("Background"), false);
                } else {
                    timers.push(((ns.clone(), name.clone()), instant_at(done, ttl)));
                }
            }
            continue;
        }
        let pods = pods_of(&job);
        let active: Vec<&PodView> = pods.iter().filter(|p| !matches!(p.phase.as_str(), "Succeeded" | "Failed") && !p.deleting).collect();
        let succeeded = pods.iter().filter(|p| p.phase == "Succeeded").count() as i64;
        let mut failed = pods.iter().filter(|p| p.phase == "Failed").count() as i64;
        let ready = active.iter().filter(|p| p.ready).count() as i64;
        let mut status = job.status.clone();
        let start = match parse_time(&status["startTime"]) {
            Some(t) => t,
            None => {
                status["startTime"] = json!(now_rfc3339());
                parse_time(&status["startTime"]).expect("just written")
            }
        };
        let mut active_n = active.len() as i64;
        let mut conditions: Option<Vec<Value>> = None;
        if job.deadline.is_some_and(|ads| Utc::now() >= start + chrono::Duration::seconds(ads)) {
            // As the real controller: the active pods are deleted (their processes killed).
            for p in &active {
                let _ = super::kubelet::delete_pod(sh, ns, &p.name, true);
            }
            failed += active_n;
            active_n = 0;
            let msg = "Job was active longer than specified deadline";
            conditions = Some(vec![condition("FailureTarget", "DeadlineExceeded", msg), condition("Failed", "DeadlineExceeded", msg)]);
        } else if succeeded >= job.completions {
            conditions = Some(vec![
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ]);
            status["completionTime"] = json!(now_rfc3339());
        } else if failed > job.backoff {
            let msg = "Job has reached the specified backoff limit";
            conditions = Some(vec![condition("FailureTarget", "BackoffLimitExceeded", msg), condition("Failed", "BackoffLimitExceeded", msg)]);
        } else {
            if let Some(ads) = job.deadline {
                timers.push(((ns.clone(), name.clone()), instant_at(start, ads)));
            }
            if active_n == 0 {
                // The template is read only here, once per pod the Job needs.
                let pod = sh.store.peek(jobs_r, ns, name, |full| pod_of(full, name, uid)).ok_or_else(|| super::store::ApiError::not_found(jobs_r, name));
                match pod.and_then(|pod| sh.store.create(pods_r, ns, pod).map(|_| ())) {
                    Ok(()) => active_n = 1,
                    Err(e) => tracing::warn!("fake job controller: creating a pod for {ns}/{name}: {}", e.message),
                }
            }
        }
        status["active"] = json!(active_n);
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["ready"] = json!(if conditions.is_some() { 0 } else { ready });
        status["terminating"] = json!(0);
        if let Some(c) = conditions {
            status["conditions"] = Value::Array(c);
            status["active"] = json!(0);
        }
        if status == job.status {
            continue; // nothing to write, as a real controller skips a no-op update
        }
        let _ = sh.store.modify(jobs_r, ns, name, |o| {
            let mut o = o.clone();
            o["status"] = status;
            Ok(o)
        });
    }
    timers
}

/// The pod the Job's template describes, owned by the Job.
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
    });
    if let Some(a) = tmpl["metadata"].get("annotations") {
        md["annotations"] = a.clone();
    }
    json!({"metadata": md, "spec": tmpl["spec"].clone()})
}
