//! core/v1 Events, written the two ways the recordings show: the job controller's (the old
//! `record.EventRecorder`: `source.component`, `firstTimestamp`/`lastTimestamp`, `count: 1`) and
//! the scheduler's (events.k8s.io style: `eventTime`, `action`, `reportingInstance`, no count).
//! Each is its own object named `<involved object>.<hex time>`, so a client that lists or watches
//! `events` with a field selector on `involvedObject.*` or `reason` finds why nothing runs (a
//! refused pod create, an unschedulable pod): the Job itself stays quiet in those cases.

use serde_json::{json, Value};

use super::store::{name_of, now_micro, now_rfc3339, res, Res};
use super::Shared;

/// The scheduler's `reportingInstance` (`default-scheduler-<hostname>` on a real cluster).
pub const SCHEDULER_INSTANCE: &str = "default-scheduler-fake-kube";

/// The object an Event is about, as `involvedObject` names it.
pub(crate) fn involved(r: &Res, obj: &Value) -> Value {
    let md = &obj["metadata"];
    json!({
        "kind": r.kind, "namespace": md["namespace"], "name": md["name"], "uid": md["uid"],
        "apiVersion": r.api_version(), "resourceVersion": md["resourceVersion"],
    })
}

/// Stores one Event in the involved object's namespace; a name clash (same nanosecond) retries.
fn record(sh: &Shared, ns: &str, about: &str, mut event: Value) {
    let events = res("events").expect("events");
    for _ in 0..3 {
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
        event["metadata"] = json!({"name": format!("{about}.{nanos:x}")});
        match sh.store.create(events, ns, event.clone()) {
            Err(e) if e.code == 409 => continue,
            _ => return,
        }
    }
}

/// An Event from the job controller about a Job (`SuccessfulCreate`, `FailedCreate`, …).
pub(crate) fn job_controller(sh: &Shared, job: &Value, kind: &str, reason: &str, message: &str) {
    let now = now_rfc3339();
    let ns = job["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    record(
        sh,
        &ns,
        name_of(job),
        json!({
            "involvedObject": involved(res("jobs").expect("jobs"), job),
            "reason": reason, "message": message, "source": {"component": "job-controller"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": kind, "eventTime": null,
            "reportingComponent": "job-controller", "reportingInstance": "",
        }),
    );
}

/// An Event from the scheduler about a Pod (`Scheduled` with action `Binding`, `FailedScheduling`
/// with action `Scheduling`).
pub(crate) fn scheduler(sh: &Shared, pod: &Value, kind: &str, reason: &str, action: &str, message: &str) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    record(
        sh,
        &ns,
        name_of(pod),
        json!({
            "involvedObject": involved(res("pods").expect("pods"), pod),
            "reason": reason, "message": message, "source": {}, "firstTimestamp": null, "lastTimestamp": null,
            "type": kind, "eventTime": now_micro(), "action": action,
            "reportingComponent": "default-scheduler", "reportingInstance": SCHEDULER_INSTANCE,
        }),
    );
}
