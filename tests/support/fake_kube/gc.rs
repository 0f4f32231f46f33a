//! What outlives the request in two more controllers: the garbage collector finishing a
//! `Foreground` deletion (the owner, marked with the `foregroundDeletion` finalizer, goes once
//! its dependents are gone — and the Job controller has to let its pods go first), and the quota
//! controller keeping `status.used` of the ResourceQuotas. Both wake on store changes only.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::store::{name_of, res};
use super::work_queue::{ObjectKey, WorkQueue};
use super::Shared;

const FOREGROUND: &str = "foregroundDeletion";

/// Owner kinds whose foreground deletion waits for their pods.
const OWNERS: &[(&str, &str)] = &[("Job", "jobs"), ("Deployment", "deployments")];

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    // Owners as (namespace, "<plural>/<name>"), quotas as (namespace, "").
    let (mut owners, mut quotas) = (WorkQueue::default(), WorkQueue::default());
    loop {
        changes.borrow_and_update();
        let dirty = owners.next(&sh.store, false, owner_of_event);
        finish_foreground(&sh, dirty.as_ref());
        let dirty = quotas.next(&sh.store, false, |e| (e.resource != "events").then(|| (e.namespace.clone(), String::new())));
        let namespaces: Vec<String> = match dirty {
            Some(keys) => keys.into_iter().map(|(ns, _)| ns).collect(),
            None => {
                let all = sh.store.scan(res("resourcequotas").expect("resourcequotas"), None, |q| q["metadata"]["namespace"].as_str().map(String::from));
                all.into_iter().collect::<HashSet<_>>().into_iter().collect()
            }
        };
        for ns in namespaces.iter().filter(|ns| !ns.is_empty()) {
            super::quota::refresh(&sh, ns);
        }
        if !owners.wait(&sh, &mut changes).await {
            return;
        }
    }
}

/// The owner a change may let go: a marked owner itself, or the owner of a pod that is going.
fn owner_of_event(e: &super::store::Event) -> Option<ObjectKey> {
    let o = &e.object;
    if let Some((_, plural)) = OWNERS.iter().find(|(_, p)| *p == e.resource) {
        return o["metadata"].get("deletionTimestamp").map(|_| (e.namespace.clone(), format!("{plural}/{}", name_of(o))));
    }
    if e.resource != "pods" {
        return None;
    }
    let r = o["metadata"]["ownerReferences"].as_array()?.iter().find(|r| OWNERS.iter().any(|(k, _)| r["kind"] == *k))?;
    let plural = OWNERS.iter().find(|(k, _)| r["kind"] == *k)?.1;
    Some((e.namespace.clone(), format!("{plural}/{}", r["name"].as_str()?)))
}

fn finish_foreground(sh: &Shared, only: Option<&HashSet<ObjectKey>>) {
    let marked = |o: &Value| o["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == FOREGROUND));
    let candidates: Vec<(&'static str, String, String, String)> = match only {
        Some(keys) => keys
            .iter()
            .filter_map(|(ns, key)| {
                let (plural, name) = key.split_once('/')?;
                let r = res(plural)?;
                let uid = sh.store.peek(r, ns, name, |o| marked(o).then(|| o["metadata"]["uid"].as_str().unwrap_or("").to_string())).flatten()?;
                Some((r.plural, ns.clone(), name.to_string(), uid))
            })
            .collect(),
        None => OWNERS
            .iter()
            .flat_map(|(_, plural)| {
                sh.store.scan(res(plural).expect("owner kind"), None, |o| {
                    marked(o).then(|| (*plural, o["metadata"]["namespace"].as_str().unwrap_or("").to_string(), name_of(o).to_string(), o["metadata"]["uid"].as_str().unwrap_or("").to_string()))
                })
            })
            .collect(),
    };
    let pods = res("pods").expect("pods");
    for (plural, ns, name, uid) in candidates {
        if !sh.store.scan(pods, Some(&ns), |p| super::owned_by(p, &uid).then_some(())).is_empty() {
            continue;
        }
        let _ = sh.store.modify(res(plural).expect("owner kind"), &ns, &name, |o| {
            let mut o = o.clone();
            if let Some(f) = o["metadata"].get_mut("finalizers").and_then(Value::as_array_mut) {
                f.retain(|x| x != FOREGROUND);
                if f.is_empty() {
                    o["metadata"].as_object_mut().expect("metadata").remove("finalizers");
                }
            }
            Ok(o)
        });
    }
}
