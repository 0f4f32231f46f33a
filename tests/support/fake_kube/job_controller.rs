//! The Job controller: one Pod at a time from `spec.template` (Kiln's Jobs run one pod with
//! `backoffLimit: 0`), status counts and conditions, `activeDeadlineSeconds` and
//! `ttlSecondsAfterFinished`. It wakes on store changes, and on a timer only for the next deadline
//! or TTL.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::store::{name_of, now_rfc3339, res};
use super::Shared;

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    loop {
        changes.borrow_and_update();
        let wake = reconcile_all(&sh);
        let sleep = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)));
        tokio::select! {
            _ = changes.changed() => {}
            _ = sleep => {}
            _ = sh.shutdown.cancelled() => return,
        }
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

/// Reconciles every Job; returns when it next has to look again without a store change.
fn reconcile_all(sh: &Shared) -> Option<Instant> {
    let jobs = res("jobs").expect("jobs");
    let pods_r = res("pods").expect("pods");
    let mut wake: Option<Instant> = None;
    let mut at = |i: Instant| wake = Some(wake.map_or(i, |w: Instant| w.min(i)));
    for job in sh.store.list(jobs, None).0 {
        if job["metadata"].get("deletionTimestamp").is_some() {
            continue;
        }
        let ns = job["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = name_of(&job).to_string();
        let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let spec = &job["spec"];
        if let Some(done) = finished_at(&job) {
            if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                if Utc::now() >= done + chrono::Duration::seconds(ttl) {
                    let _ = super::delete(sh, jobs, &ns, &name, Some("Background"), false);
                } else {
                    at(instant_at(done, ttl));
                }
            }
            continue;
        }
        let pods: Vec<Value> = sh
            .store
            .list(pods_r, Some(&ns))
            .0
            .into_iter()
            .filter(|p| p["metadata"]["ownerReferences"].as_array().is_some_and(|rs| rs.iter().any(|r| r["uid"] == uid.as_str() && r["controller"] == true)))
            .collect();
        let phase = |p: &Value| p["status"]["phase"].as_str().unwrap_or("").to_string();
        let active: Vec<&Value> = pods.iter().filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed") && p["metadata"].get("deletionTimestamp").is_none()).collect();
        let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let mut failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let ready = active
            .iter()
            .filter(|p| p["status"]["containerStatuses"].as_array().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true)))
            .count() as i64;
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let start = match parse_time(&status["startTime"]) {
            Some(t) => t,
            None => {
                status["startTime"] = json!(now_rfc3339());
                parse_time(&status["startTime"]).expect("just written")
            }
        };
        let mut active_n = active.len() as i64;
        let completions = spec["completions"].as_i64().unwrap_or(1);
        let backoff = spec["backoffLimit"].as_i64().unwrap_or(6);
        let mut conditions: Option<Vec<Value>> = None;
        let deadline = spec["activeDeadlineSeconds"].as_i64();
        if deadline.is_some_and(|ads| Utc::now() >= start + chrono::Duration::seconds(ads)) {
            // As the real controller: the active pods are deleted (their processes killed).
            for p in &active {
                let _ = super::kubelet::delete_pod(sh, &ns, name_of(p), true);
            }
            failed += active_n;
            active_n = 0;
            let msg = "Job was active longer than specified deadline";
            conditions = Some(vec![condition("FailureTarget", "DeadlineExceeded", msg), condition("Failed", "DeadlineExceeded", msg)]);
        } else if succeeded >= completions {
            conditions = Some(vec![
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ]);
            status["completionTime"] = json!(now_rfc3339());
        } else if failed > backoff {
            let msg = "Job has reached the specified backoff limit";
            conditions = Some(vec![condition("FailureTarget", "BackoffLimitExceeded", msg), condition("Failed", "BackoffLimitExceeded", msg)]);
        } else {
            if let Some(ads) = deadline {
                at(instant_at(start, ads));
            }
            if active_n == 0 {
                match create_pod(sh, &job, &ns, &name, &uid) {
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
            status["conditions"] = json!(c);
            status["active"] = json!(0);
        }
        let _ = sh.store.modify(jobs, &ns, &name, |o| {
            let mut o = o.clone();
            o["status"] = status;
            Ok(o)
        });
    }
    wake
}

fn create_pod(sh: &Shared, job: &Value, ns: &str, name: &str, uid: &str) -> Result<(), super::store::ApiError> {
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
    let pod = json!({"metadata": md, "spec": tmpl["spec"].clone()});
    sh.store.create(res("pods").expect("pods"), ns, pod).map(|_| ())
}
