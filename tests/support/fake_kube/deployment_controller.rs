//! The Deployment controller, as far as a rollout watcher can tell: no ReplicaSets or Pods, only
//! the status a real controller reports. A spec change (new `metadata.generation`) starts a
//! rollout that replaces one replica every `REPLICA_STEP`: `observedGeneration` catches up at
//! once, `updatedReplicas` climbs, and when every replica is updated and available the
//! `Progressing` condition says `NewReplicaSetAvailable`.
//!
//! A rollout to an image the test marked bad (`FakeKube::fail_rollouts_of`) never gets its first
//! new replica available; after `spec.progressDeadlineSeconds` (default 600, as the real one)
//! `Progressing` turns False with reason `ProgressDeadlineExceeded`. Rolling back (a spec change to
//! a good image) recovers, as on a real cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::store::{name_of, now_rfc3339, res};
use super::work_queue::{ObjectKey, WorkQueue};
use super::Shared;

/// How long the fake takes to replace one replica.
pub const REPLICA_STEP: Duration = Duration::from_millis(100);

/// A rollout in progress: which generation, since when.
struct Rollout {
    generation: i64,
    started: Instant,
}

type Key = ObjectKey;

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    let mut rollouts: HashMap<Key, Rollout> = HashMap::new();
    // Only the Deployments that changed, or whose next replica step or deadline is due; all of
    // them when the images marked bad change.
    let mut queue = WorkQueue::default();
    let mut bad_seen: Option<Vec<String>> = None;
    loop {
        changes.borrow_and_update();
        let bad: Vec<String> = sh.faults.lock().unwrap().bad_images.clone();
        let everything = bad_seen.as_ref() != Some(&bad);
        let dirty = queue.next(&sh.store, everything, |e| (e.resource == "deployments").then(|| (e.namespace.clone(), name_of(&e.object).to_string())));
        bad_seen = Some(bad.clone());
        if dirty.as_ref().is_none_or(|d| !d.is_empty()) {
            queue.schedule(reconcile(&sh, &mut rollouts, dirty.as_ref(), &bad));
        }
        if !queue.wait(&sh, &mut changes).await {
            return;
        }
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": kind, "status": status, "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
}

fn images(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["image"].as_str().map(String::from))
        .collect()
}

/// What the controller reads of a Deployment (read in place, without the pod template).
fn view(d: &Value) -> Value {
    json!({
        "metadata": {"namespace": d["metadata"]["namespace"], "name": name_of(d), "generation": d["metadata"]["generation"]},
        "spec": {"replicas": d["spec"]["replicas"], "progressDeadlineSeconds": d["spec"]["progressDeadlineSeconds"],
                 "template": {"spec": {"containers": images(d).into_iter().map(|i| json!({"image": i})).collect::<Vec<_>>()}}},
        "status": d["status"],
    })
}

/// Reconciles the given Deployments (all when `None`); returns when each has to be looked at
/// again without a store change (its next replica step or its progress deadline).
fn reconcile(sh: &Shared, rollouts: &mut HashMap<Key, Rollout>, only: Option<&HashSet<Key>>, bad: &[String]) -> Vec<(Key, Instant)> {
    let deployments = res("deployments").expect("deployments");
    let mut timers = vec![];
    let now = Instant::now();
    let all = match only {
        None => {
            let all = sh.store.scan(deployments, None, |d| Some(view(d)));
            let seen: HashSet<Key> = all.iter().map(|d| (d["metadata"]["namespace"].as_str().unwrap_or("").to_string(), name_of(d).to_string())).collect();
            rollouts.retain(|k, _| seen.contains(k));
            all
        }
        Some(keys) => keys
            .iter()
            .filter_map(|(ns, name)| {
                let found = sh.store.peek(deployments, ns, name, view);
                if found.is_none() {
                    rollouts.remove(&(ns.clone(), name.clone())); // deleted
                }
                found
            })
            .collect(),
    };
    for d in all {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = name_of(&d).to_string();
        let key = (ns.clone(), name.clone());
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let deadline = Duration::from_secs(d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600));
        let first_seen = !rollouts.contains_key(&key);
        let rollout = rollouts.entry(key.clone()).or_insert(Rollout { generation, started: now });
        if rollout.generation != generation {
            *rollout = Rollout { generation, started: now };
        }
        let name_of_rs = format!("{name}-{generation}");
        let failing = images(&d).iter().any(|i| bad.iter().any(|b| i.contains(b.as_str())));
        let elapsed = now.saturating_duration_since(rollout.started);
        // A Deployment that existed before the controller saw it is taken as rolled out.
        let updated = if first_seen && d["status"]["observedGeneration"].as_i64() == Some(generation) {
            replicas
        } else if failing {
            0
        } else {
            ((elapsed.as_millis() / REPLICA_STEP.as_millis()) as i64).min(replicas)
        };
        let (progressing, done) = if updated >= replicas {
            (condition("Progressing", "True", "NewReplicaSetAvailable", &format!("ReplicaSet \"{name_of_rs}\" has successfully progressed.")), true)
        } else if failing && elapsed >= deadline {
            (condition("Progressing", "False", "ProgressDeadlineExceeded", &format!("ReplicaSet \"{name_of_rs}\" has timed out progressing.")), true)
        } else {
            let next = if failing { rollout.started + deadline } else { rollout.started + REPLICA_STEP * (updated as u32 + 1) };
            timers.push((key.clone(), next));
            (condition("Progressing", "True", "ReplicaSetUpdated", &format!("ReplicaSet \"{name_of_rs}\" is progressing.")), false)
        };
        // While replicas are replaced the old ones stay available (maxUnavailable 0).
        let available = replicas;
        let status = json!({
            "observedGeneration": generation,
            "replicas": replicas + if done { 0 } else { i64::from(updated < replicas) },
            "updatedReplicas": updated,
            "readyReplicas": available,
            "availableReplicas": available,
            "unavailableReplicas": if updated < replicas { 1 } else { 0 },
            "conditions": [condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."), progressing],
        });
        // Unchanged status (but for timestamps): no write, so no event and no busy loop.
        let same = {
            let old = &d["status"];
            ["observedGeneration", "replicas", "updatedReplicas", "availableReplicas"].iter().all(|k| old[*k] == status[*k])
                && old["conditions"][1]["reason"] == status["conditions"][1]["reason"]
        };
        if !same {
            let _ = sh.store.modify(deployments, &ns, &name, |o| {
                let mut o = o.clone();
                o["status"] = status;
                Ok(o)
            });
        }
    }
    timers
}
