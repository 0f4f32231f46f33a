//! The Deployment controller, as far as a rollout watcher can tell (S13): no ReplicaSets or Pods,
//! only what a real controller writes on the Deployment — its status and the
//! `deployment.kubernetes.io/revision` annotation. Kiln reads nothing else of a rollout.
//!
//! A new generation goes through the writes the recording shows, one write per step, so a
//! watcher sees each state even when the fake is slow:
//! 1. a pod template not seen before gets a ReplicaSet named `<deployment>-<template hash>` (the
//!    same template, the same name) and the next revision: `Progressing=True NewReplicaSetCreated`
//!    is written while `observedGeneration` is still the previous one; a template seen before (a
//!    rollback) reuses its ReplicaSet and only takes the next revision;
//! 2. for a new ReplicaSet, `observedGeneration` catches up, `NewReplicaSetCreated` still the news;
//! 3. `ReplicaSetUpdated` while one replica is replaced every `REPLICA_STEP` (one surge pod at a
//!    time, the old replicas available meanwhile); a first rollout has no old replicas, so all
//!    new pods start at once and `Available` is False (`MinimumReplicasUnavailable`) until enough
//!    are ready; a rollback to the template still serving has its replicas already;
//! 4. `NewReplicaSetAvailable` when every replica is updated and available.
//!
//! A pod is Ready `REPLICA_STEP` after the one before it, and counts as available once it has
//! been Ready for the Deployment's `minReadySeconds` (so `readyReplicas` leads
//! `availableReplicas` by that long, as on a real cluster). A change of `replicas` alone (the same
//! template) keeps the pods there: scaling down is done at once, scaling up starts the missing
//! pods, which become Ready and available as above.
//!
//! A rollout to an image the test marked bad (`FakeKube::fail_rollouts_of`) never gets a new
//! replica available: its surge pod stays unready, and after `spec.progressDeadlineSeconds`
//! (default 600, as the real one) `Progressing` turns False with reason `ProgressDeadlineExceeded`.
//! Nothing else happens then — no rollback, no Event — until the spec changes again, as on a real
//! cluster. A rollout that completed stays complete. No Events are written.

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

/// The annotation the real controller numbers a Deployment's (and its ReplicaSets') rollouts with.
const REVISION: &str = "deployment.kubernetes.io/revision";

/// Where the rollout of a Deployment's current generation stands.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    /// A generation the controller has not acted on yet.
    Pending,
    /// The revision is written (with `NewReplicaSetCreated` when `created`), the status still of
    /// the previous generation.
    Announced { created: bool },
    /// `observedGeneration` caught up, `NewReplicaSetCreated` still the news.
    Observed,
    /// Replicas being replaced since the first `ReplicaSetUpdated`; `stray`: pods of an abandoned
    /// rollout (a stalled surge pod) still there while a rollback reuses the serving template.
    Rolling { since: Instant, stray: i64 },
    /// `NewReplicaSetAvailable` written: nothing left to do for this generation.
    Done,
}

/// What the controller remembers of one Deployment between passes.
struct Tracked {
    /// A Deployment deleted and created again under the same name starts afresh.
    uid: String,
    generation: i64,
    stage: Stage,
    /// Revision by template hash: the templates that have a ReplicaSet. A rollback reuses its
    /// ReplicaSet (same name) and gives it the next revision, as the real controller does.
    revisions: HashMap<String, u64>,
    /// The template whose replicas are available while another one rolls out: the last one
    /// rolled out. None before a rollout completed: then there are no old replicas.
    serving: Option<String>,
    /// How many replicas of `serving` are up: what a change of `replicas` starts from.
    available: i64,
}

type Key = ObjectKey;

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    let mut tracked: HashMap<Key, Tracked> = HashMap::new();
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
            queue.schedule(reconcile(&sh, &mut tracked, dirty.as_ref(), &bad));
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

/// Sets a condition as the real controller's `SetDeploymentCondition` does: one that already has
/// this status and reason stays as it is (times and message too), unless `renew` (progress was
/// made: a `ReplicaSetUpdated` gets a new `lastUpdateTime`, which the progress deadline counts
/// from); one whose status does not change keeps its `lastTransitionTime`. The list is kept in
/// the order Available, Progressing, the order a settled Deployment shows (and tests read).
fn set_condition(conds: &mut Vec<Value>, mut c: Value, renew: bool) {
    match conds.iter_mut().find(|x| x["type"] == c["type"]) {
        Some(x) => {
            if x["status"] == c["status"] {
                if x["reason"] == c["reason"] && !renew {
                    return;
                }
                c["lastTransitionTime"] = x["lastTransitionTime"].clone();
            }
            *x = c;
        }
        None => conds.push(c),
    }
    conds.sort_by_key(|x| if x["type"] == "Available" { 0 } else { 1 });
}

fn images(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["image"].as_str().map(String::from))
        .collect()
}

/// The pod-template-hash a real controller names the ReplicaSet with: FNV-1a (32 bits) of the
/// template, its decimal digits mapped onto the "safe" alphabet. Equal templates give equal
/// names, which is how a rollback finds its ReplicaSet again.
fn template_hash(template: &Value) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c9dc5;
    for b in template.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h.to_string().bytes().map(|b| SAFE[usize::from(b) % SAFE.len()] as char).collect()
}

/// An int-or-percent of a rolling update (`1`, `"25%"`) as a number of replicas.
fn int_or_percent(v: &Value, replicas: i64, default: &str, round_up: bool) -> i64 {
    let v = if v.is_null() { json!(default) } else { v.clone() };
    match (v.as_i64(), v.as_str().and_then(|s| s.strip_suffix('%')).and_then(|p| p.parse::<i64>().ok())) {
        (Some(n), _) => n,
        (None, Some(p)) if round_up => (replicas * p + 99) / 100,
        (None, Some(p)) => replicas * p / 100,
        _ => 0,
    }
}

/// How many replicas may be unavailable during a rollout (`Available` is True with at least
/// `replicas - this`): the real `MaxUnavailable`, 25% rounded down by default.
fn max_unavailable(spec: &Value, replicas: i64) -> i64 {
    if spec["strategy"]["type"] == "Recreate" {
        return 0;
    }
    let ru = &spec["strategy"]["rollingUpdate"];
    let unavailable = int_or_percent(&ru["maxUnavailable"], replicas, "25%", false);
    let surge = int_or_percent(&ru["maxSurge"], replicas, "25%", true);
    // Both 0 would leave a rollout stuck: the real controller allows one.
    if unavailable == 0 && surge == 0 { 1 } else { unavailable.min(replicas) }
}

/// What the controller reads of a Deployment (read in place; of the pod template only its hash
/// and images).
fn view(d: &Value) -> Value {
    let md = &d["metadata"];
    json!({
        "metadata": {"namespace": md["namespace"], "name": name_of(d), "uid": md["uid"], "generation": md["generation"],
                     "revision": md["annotations"][REVISION]},
        "spec": {"replicas": d["spec"]["replicas"], "progressDeadlineSeconds": d["spec"]["progressDeadlineSeconds"],
                 "strategy": d["spec"]["strategy"], "minReadySeconds": d["spec"]["minReadySeconds"]},
        "images": images(d),
        "hash": template_hash(&d["spec"]["template"]),
        "status": d["status"],
    })
}

/// The replica counts of the status (`replicas`, `updatedReplicas`, `readyReplicas`,
/// `availableReplicas`, `unavailableReplicas`), modelled on the recording.
#[derive(PartialEq)]
struct Counts {
    replicas: i64,
    updated: i64,
    ready: i64,
    available: i64,
    unavailable: i64,
}

impl Counts {
    /// Writes them as the real API does: a count of 0 is left out (`omitempty`);
    /// `terminatingReplicas` (a pointer, so always there on v1.36) is 0, as the fake has no pods.
    fn apply(&self, status: &mut Value) {
        for (k, v) in [
            ("replicas", self.replicas),
            ("updatedReplicas", self.updated),
            ("readyReplicas", self.ready),
            ("availableReplicas", self.available),
            ("unavailableReplicas", self.unavailable),
        ] {
            match status.as_object_mut() {
                Some(m) if v == 0 => {
                    m.remove(k);
                }
                _ => status[k] = json!(v),
            }
        }
        status["terminatingReplicas"] = json!(0);
    }

    fn of(status: &Value) -> Counts {
        let n = |k: &str| status[k].as_i64().unwrap_or(0);
        Counts {
            replicas: n("replicas"),
            updated: n("updatedReplicas"),
            ready: n("readyReplicas"),
            available: n("availableReplicas"),
            unavailable: n("unavailableReplicas"),
        }
    }

    /// Every replica up: ready and available alike.
    fn settled(replicas: i64, updated: i64, unavailable: i64) -> Counts {
        let up = replicas - unavailable;
        Counts { replicas, updated, ready: up, available: up, unavailable }
    }

    /// The real `DeploymentProgressing`: more updated, ready or available replicas, or fewer old
    /// ones.
    fn progressed_from(&self, old: &Counts) -> bool {
        self.updated > old.updated
            || self.replicas - self.updated < old.replicas - old.updated
            || self.ready > old.ready
            || self.available > old.available
    }
}

/// Reconciles the given Deployments (all when `None`); returns when each has to be looked at
/// again without a store change (its next step, replica or progress deadline).
fn reconcile(sh: &Shared, tracked: &mut HashMap<Key, Tracked>, only: Option<&HashSet<Key>>, bad: &[String]) -> Vec<(Key, Instant)> {
    let deployments = res("deployments").expect("deployments");
    let mut timers = vec![];
    let now = Instant::now();
    let all = match only {
        None => {
            let all = sh.store.scan(deployments, None, |d| Some(view(d)));
            let seen: HashSet<Key> = all.iter().map(|d| (d["metadata"]["namespace"].as_str().unwrap_or("").to_string(), name_of(d).to_string())).collect();
            tracked.retain(|k, _| seen.contains(k));
            all
        }
        Some(keys) => keys
            .iter()
            .filter_map(|(ns, name)| {
                let found = sh.store.peek(deployments, ns, name, view);
                if found.is_none() {
                    tracked.remove(&(ns.clone(), name.clone())); // deleted
                }
                found
            })
            .collect(),
    };
    for d in all {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = name_of(&d).to_string();
        let key = (ns.clone(), name.clone());
        let uid = d["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let deadline = Duration::from_secs(d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600));
        let hash = d["hash"].as_str().unwrap_or("").to_string();
        let rs = format!("{name}-{hash}");
        let old = &d["status"];
        if tracked.get(&key).is_none_or(|t| t.uid != uid) {
            // A Deployment rolled out before the controller saw it is taken as settled.
            let settled = old["observedGeneration"].as_i64() == Some(generation);
            let revision = d["metadata"]["revision"].as_str().and_then(|r| r.parse().ok()).unwrap_or(1);
            tracked.insert(
                key.clone(),
                Tracked {
                    uid,
                    generation,
                    stage: if settled { Stage::Done } else { Stage::Pending },
                    revisions: if settled { HashMap::from([(hash.clone(), revision)]) } else { HashMap::new() },
                    serving: settled.then(|| hash.clone()),
                    available: if settled { old["availableReplicas"].as_i64().unwrap_or(0) } else { 0 },
                },
            );
        }
        let t = tracked.get_mut(&key).expect("tracked");
        if t.generation != generation {
            t.generation = generation;
            t.stage = Stage::Pending;
        }
        let mut status = if old.is_object() { old.clone() } else { json!({}) };
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();

        if t.stage == Stage::Pending {
            let latest = t.revisions.values().copied().max().unwrap_or(0);
            let known = t.revisions.get(&hash).copied();
            if known != Some(latest) {
                // The ReplicaSet of this template, new or reused, becomes the next revision:
                // written before observedGeneration moves.
                t.revisions.insert(hash.clone(), latest + 1);
                let created = known.is_none();
                if created {
                    set_condition(&mut conds, condition("Progressing", "True", "NewReplicaSetCreated", &format!("Created new replica set \"{rs}\"")), false);
                    status["conditions"] = json!(conds);
                }
                t.stage = Stage::Announced { created };
                write(sh, &ns, &name, generation, status, Some(latest + 1));
                timers.push((key, now));
                continue;
            }
            // The template of the current revision (a change outside the pod template): no
            // ReplicaSet to create, straight to the replicas.
            t.stage = Stage::Observed;
        }

        let failing = d["images"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|i| bad.iter().any(|b| i.contains(b.as_str())));
        // A rollback to the template still serving: its replicas are there and available already.
        let reused = t.serving.as_deref() == Some(hash.as_str()) && !failing;
        // Old replicas to replace one by one; a template scaled to zero has none.
        let old_replicas = t.serving.is_some() && !reused && t.available > 0;
        let counts;
        let mut progressing = None;
        match t.stage {
            Stage::Pending => unreachable!("handled above"),
            Stage::Announced { created: true } => {
                // observedGeneration catches up; the new ReplicaSet has no pods yet, the old
                // replicas (if any) serve, one surge replica is wanted.
                t.stage = Stage::Observed;
                timers.push((key.clone(), now));
                counts = if old_replicas {
                    Counts { replicas, updated: 0, ready: replicas, available: replicas, unavailable: 1 }
                } else {
                    Counts { replicas: 0, updated: 0, ready: 0, available: 0, unavailable: replicas }
                };
            }
            Stage::Done => counts = Counts::settled(replicas, replicas, 0),
            Stage::Announced { created: false } | Stage::Observed | Stage::Rolling { .. } => {
                let (since, stray) = match t.stage {
                    Stage::Rolling { since, stray } => (since, stray),
                    _ => (now, (Counts::of(old).replicas - replicas).max(0)),
                };
                t.stage = Stage::Rolling { since, stray };
                let elapsed = now.saturating_duration_since(since);
                let min_ready = Duration::from_secs(d["spec"]["minReadySeconds"].as_u64().unwrap_or(0));
                // Of `n` pods started at `since`: how many are Ready `at` after it (one every
                // REPLICA_STEP), and when the next one is.
                let up = |at: Duration, n: i64| ((at.as_millis() / REPLICA_STEP.as_millis()) as i64).min(n);
                let next_up = |k: i64, n: i64, offset: Duration| (k < n).then(|| since + offset + REPLICA_STEP * (k as u32 + 1));
                // Pods already up (a change of replicas alone keeps them), pods started now.
                let kept = if reused { t.available.min(replicas) } else { 0 };
                let fresh = replicas - kept;
                let (ready_fresh, available_fresh) = (up(elapsed, fresh), up(elapsed.saturating_sub(min_ready), fresh));
                // With old replicas, one surge pod at a time, each Ready for minReadySeconds
                // before the next.
                let surge_step = REPLICA_STEP + min_ready;
                let surged = ((elapsed.as_millis() / surge_step.as_millis()) as i64).min(replicas);
                let done = if reused {
                    kept + available_fresh >= replicas && elapsed >= REPLICA_STEP
                } else if failing {
                    replicas == 0
                } else if old_replicas {
                    surged >= replicas
                } else {
                    available_fresh >= replicas
                };
                counts = if done {
                    Counts::settled(replicas, replicas, 0)
                } else if reused {
                    // The abandoned rollout's pods are scaled down next.
                    let (ready, available) = (kept + ready_fresh, kept + available_fresh);
                    Counts { replicas: replicas + stray, updated: replicas, ready, available, unavailable: replicas - available }
                } else if old_replicas {
                    // One surge pod of the new template at a time; the old replicas stay
                    // available until a new one is (maxUnavailable 0 for a few replicas).
                    let updated = if failing { 1 } else { surged + 1 };
                    Counts { replicas: replicas + 1, updated, ready: replicas, available: replicas, unavailable: 1 }
                } else if failing {
                    Counts { replicas, updated: replicas, ready: 0, available: 0, unavailable: replicas }
                } else {
                    // A first rollout: every new pod at once.
                    Counts { replicas, updated: replicas, ready: ready_fresh, available: available_fresh, unavailable: replicas - available_fresh }
                };
                progressing = Some(if done {
                    t.stage = Stage::Done;
                    t.serving = Some(hash.clone());
                    t.available = replicas;
                    (condition("Progressing", "True", "NewReplicaSetAvailable", &format!("ReplicaSet \"{rs}\" has successfully progressed.")), false)
                } else if failing && elapsed >= deadline {
                    (condition("Progressing", "False", "ProgressDeadlineExceeded", &format!("ReplicaSet \"{rs}\" has timed out progressing.")), false)
                } else {
                    let next = if failing {
                        since + deadline
                    } else if old_replicas && !reused {
                        since + surge_step * (surged as u32 + 1)
                    } else {
                        // The next pod Ready, the next one available, or (nothing to start) the
                        // step a reused template takes.
                        [next_up(ready_fresh, fresh, Duration::ZERO), next_up(available_fresh, fresh, min_ready), Some(since + REPLICA_STEP)]
                            .into_iter()
                            .flatten()
                            .filter(|at| *at > now)
                            .min()
                            .unwrap_or(now + REPLICA_STEP)
                    };
                    timers.push((key.clone(), next));
                    let renew = counts.progressed_from(&Counts::of(old));
                    (condition("Progressing", "True", "ReplicaSetUpdated", &format!("ReplicaSet \"{rs}\" is progressing.")), renew)
                });
            }
        }
        let avail_cond = if counts.available >= replicas - max_unavailable(&d["spec"], replicas) {
            condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        } else {
            condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        };
        set_condition(&mut conds, avail_cond, false);
        if let Some((c, renew)) = progressing {
            set_condition(&mut conds, c, renew);
        }
        status["observedGeneration"] = json!(generation);
        counts.apply(&mut status);
        status["conditions"] = json!(conds);
        // Unchanged status: no write, so no event and no busy loop.
        if status != *old {
            write(sh, &ns, &name, generation, status, None);
        }
    }
    timers
}

/// Writes the status (and the revision annotation) computed for `generation`; a Deployment
/// whose spec changed meanwhile is left alone, as the real controller's update would conflict:
/// the change wakes the controller again anyway.
fn write(sh: &Shared, ns: &str, name: &str, generation: i64, status: Value, revision: Option<u64>) {
    let _ = sh.store.modify(res("deployments").expect("deployments"), ns, name, |o| {
        let mut o = o.clone();
        if o["metadata"]["generation"].as_i64().unwrap_or(1) != generation {
            return Ok(o);
        }
        o["status"] = status;
        if let Some(r) = revision {
            o["metadata"]["annotations"][REVISION] = json!(r.to_string());
        }
        Ok(o)
    });
}
