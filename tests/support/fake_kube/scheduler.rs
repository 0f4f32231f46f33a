//! The scheduler of the one node (`kubelet::NODE`, 16 CPU, 64Gi): binds a pod when its
//! PersistentVolumeClaims exist and are Bound and its requests fit the node; otherwise it leaves
//! the pod Pending with `PodScheduled=False` (reason `Unschedulable`) and one `FailedScheduling`
//! Event per distinct message (S09: a missing claim gives exactly one Event, not one per retry).
//! It looks again at a pod when the pod changes, and at every waiting pod when a claim changes
//! or the node comes back — never on a timer, as the real scheduler within its flush interval.
//!
//! Requests are checked against the node's capacity pod by pod (what no node can ever fit), not
//! against what other pods already hold: the tests run many builds at once on this one "node".
//! With the kubelet switched off (`FakeKube::set_kubelet_running(false)`) the node is not Ready
//! and nothing is bound, silently.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::defaults::quantity;
use super::store::{name_of, now_rfc3339, res};
use super::work_queue::{ObjectKey, WorkQueue};
use super::Shared;

/// The node's allocatable CPU (cores) and memory (bytes).
pub const NODE_CPU: f64 = 16.0;
pub const NODE_MEMORY: f64 = 64.0 * 1024.0 * 1024.0 * 1024.0;

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    let mut queue = WorkQueue::default();
    let mut node_ready: Option<bool> = None;
    loop {
        changes.borrow_and_update();
        let ready = sh.kubelet_on.load(Ordering::SeqCst);
        let claims_changed = Cell::new(false);
        let dirty = queue.next(&sh.store, node_ready != Some(ready), |e| match e.resource {
            "pods" => Some((e.namespace.clone(), name_of(&e.object).to_string())),
            "persistentvolumeclaims" => {
                claims_changed.set(true);
                None
            }
            _ => None,
        });
        node_ready = Some(ready);
        let dirty = if claims_changed.get() { None } else { dirty };
        if ready && dirty.as_ref().is_none_or(|d| !d.is_empty()) {
            schedule(&sh, dirty.as_ref());
        }
        if !queue.wait(&sh, &mut changes).await {
            return;
        }
    }
}

/// Pods waiting for a node: no `nodeName`, not deleted, not finished, for this scheduler.
fn waiting(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod["metadata"].get("deletionTimestamp").is_none()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        && pod["spec"]["schedulerName"].as_str().is_none_or(|s| s == "default-scheduler")
}

fn schedule(sh: &Shared, only: Option<&HashSet<ObjectKey>>) {
    let pods = res("pods").expect("pods");
    let pick = |p: &Value| waiting(p).then(|| p.clone());
    let candidates: Vec<Value> = match only {
        None => sh.store.scan(pods, None, pick),
        Some(keys) => keys.iter().filter_map(|(ns, name)| sh.store.peek(pods, ns, name, pick).flatten()).collect(),
    };
    for pod in candidates {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = name_of(&pod).to_string();
        match unschedulable(sh, &ns, &pod["spec"]) {
            None => {
                let Ok(bound) = sh.store.modify(pods, &ns, &name, |o| {
                    if !waiting(o) {
                        return Ok(o.clone());
                    }
                    let mut o = o.clone();
                    o["spec"]["nodeName"] = json!(super::kubelet::NODE);
                    let mut conds: Vec<Value> = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    conds.retain(|c| c["type"] != "PodScheduled");
                    conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
                    o["status"]["conditions"] = json!(conds);
                    Ok(o)
                }) else {
                    continue;
                };
                if bound["spec"]["nodeName"] == super::kubelet::NODE && pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                    let message = format!("Successfully assigned {ns}/{name} to {}", super::kubelet::NODE);
                    super::events::scheduler(sh, &pod, "Normal", "Scheduled", "Binding", &message);
                }
            }
            Some(why) => {
                let message = format!("0/1 nodes are available: {why}");
                let before = pod["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled")).cloned();
                if before.as_ref().is_some_and(|c| c["status"] == "False" && c["message"] == message.as_str()) {
                    continue; // already said so: one Event per message
                }
                let generation = pod["metadata"]["generation"].clone();
                let since = before.filter(|c| c["status"] == "False").map(|c| c["lastTransitionTime"].clone()).unwrap_or_else(|| json!(now_rfc3339()));
                let written = sh.store.modify(pods, &ns, &name, |o| {
                    let mut o = o.clone();
                    let mut conds: Vec<Value> = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    conds.retain(|c| c["type"] != "PodScheduled");
                    conds.push(json!({"type": "PodScheduled", "observedGeneration": generation, "status": "False", "lastProbeTime": null,
                        "lastTransitionTime": since, "reason": "Unschedulable", "message": message}));
                    o["status"]["conditions"] = json!(conds);
                    Ok(o)
                });
                if written.is_ok() {
                    super::events::scheduler(sh, &pod, "Warning", "FailedScheduling", "Scheduling", &message);
                }
            }
        }
    }
}

/// Why no node fits the pod (the part after `0/1 nodes are available: `), or None.
fn unschedulable(sh: &Shared, ns: &str, spec: &Value) -> Option<String> {
    let claims = res("persistentvolumeclaims").expect("persistentvolumeclaims");
    let mut unbound = false;
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else { continue };
        match sh.store.peek(claims, ns, claim, |c| c["status"]["phase"] == "Bound") {
            None => return Some(format!("persistentvolumeclaim \"{claim}\" not found. not found")),
            Some(false) => unbound = true,
            Some(true) => {}
        }
    }
    if unbound {
        return Some("pod has unbound immediate PersistentVolumeClaims. not found".into());
    }
    // The pod's request: its containers' sum, or its largest init container if that is more.
    let request = |r: &str| {
        let of = |c: &Value| c["resources"]["requests"].get(r).or(c["resources"]["limits"].get(r)).and_then(quantity).unwrap_or(0.0);
        let sum: f64 = spec["containers"].as_array().into_iter().flatten().map(of).sum();
        let init = spec["initContainers"].as_array().into_iter().flatten().map(of).fold(0.0, f64::max);
        sum.max(init)
    };
    let short: Vec<&str> = [("cpu", NODE_CPU), ("memory", NODE_MEMORY)].iter().filter(|(r, cap)| request(r) > *cap).map(|(r, _)| *r).collect();
    if short.is_empty() {
        return None;
    }
    Some(format!("{}.", short.iter().map(|r| format!("1 Insufficient {r}")).collect::<Vec<_>>().join(", ")))
}
