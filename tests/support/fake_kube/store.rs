//! The objects, one global resourceVersion counter (as etcd has) and a bounded history of changes
//! that watches replay from and older lists are rebuilt from. Every write goes through `modify`,
//! `create` or `delete`, so each change gets its own resourceVersion and an event, whoever made it
//! (a client, a controller, the kubelet).
//!
//! Deletion is the real server's: an object with `metadata.finalizers` (or a pod still running on
//! the node) is only marked (`deletionTimestamp`, `deletionGracePeriodSeconds`); the write that
//! leaves a marked object without finalizers (and, for a pod, with grace 0) removes it, and that
//! DELETED event carries the last stored state at a new resourceVersion — still listing the
//! finalizer, as a watcher of a real server sees it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;

/// One kind of object the fake serves.
#[derive(Debug)]
pub struct Res {
    pub plural: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: main-resource writes keep the stored status and status writes
    /// keep everything else, as the real server does for these kinds.
    pub status: bool,
    /// `metadata.generation` is bumped when the spec changes.
    pub generation: bool,
}

pub static RESOURCES: &[Res] = &[
    Res { plural: "namespaces", group: "", version: "v1", kind: "Namespace", namespaced: false, status: false, generation: false },
    Res { plural: "pods", group: "", version: "v1", kind: "Pod", namespaced: true, status: true, generation: false },
    Res { plural: "secrets", group: "", version: "v1", kind: "Secret", namespaced: true, status: false, generation: false },
    Res { plural: "configmaps", group: "", version: "v1", kind: "ConfigMap", namespaced: true, status: false, generation: false },
    Res { plural: "jobs", group: "batch", version: "v1", kind: "Job", namespaced: true, status: true, generation: true },
    Res { plural: "deployments", group: "apps", version: "v1", kind: "Deployment", namespaced: true, status: true, generation: true },
    Res { plural: "events", group: "", version: "v1", kind: "Event", namespaced: true, status: false, generation: false },
    Res { plural: "persistentvolumeclaims", group: "", version: "v1", kind: "PersistentVolumeClaim", namespaced: true, status: true, generation: false },
    Res { plural: "resourcequotas", group: "", version: "v1", kind: "ResourceQuota", namespaced: true, status: true, generation: false },
    Res { plural: "serviceaccounts", group: "", version: "v1", kind: "ServiceAccount", namespaced: true, status: false, generation: false },
    Res { plural: "roles", group: "rbac.authorization.k8s.io", version: "v1", kind: "Role", namespaced: true, status: false, generation: false },
    Res { plural: "rolebindings", group: "rbac.authorization.k8s.io", version: "v1", kind: "RoleBinding", namespaced: true, status: false, generation: false },
    Res { plural: "clusterroles", group: "rbac.authorization.k8s.io", version: "v1", kind: "ClusterRole", namespaced: false, status: false, generation: false },
    Res { plural: "clusterrolebindings", group: "rbac.authorization.k8s.io", version: "v1", kind: "ClusterRoleBinding", namespaced: false, status: false, generation: false },
    Res { plural: "services", group: "", version: "v1", kind: "Service", namespaced: true, status: true, generation: false },
    // Leader election (`leadership.rs`): a plain object whose resourceVersion makes the
    // holder's update a compare-and-swap.
    Res { plural: "leases", group: "coordination.k8s.io", version: "v1", kind: "Lease", namespaced: true, status: false, generation: false },
    // A custom resource (Istio's CRD, with its status subresource): served like any other, with
    // `metadata.generation` counting spec changes as the server does for every CRD.
    Res { plural: "virtualservices", group: "networking.istio.io", version: "v1", kind: "VirtualService", namespaced: true, status: true, generation: true },
];

pub fn res(plural: &str) -> Option<&'static Res> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

impl Res {
    /// A custom resource (served from a CRD): the server has no strategic merge patch for it.
    pub fn custom(&self) -> bool {
        !matches!(self.group, "" | "apps" | "batch" | "rbac.authorization.k8s.io")
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
    /// `jobs.batch`, `pods`: how the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// An error answered as a `metav1.Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
    fn details(res: &Res, name: &str) -> Value {
        let mut d = json!({"kind": res.plural});
        if !name.is_empty() {
            d["name"] = json!(name);
        }
        if !res.group.is_empty() {
            d["group"] = json!(res.group);
        }
        d
    }
    pub fn not_found(res: &Res, name: &str) -> Self {
        ApiError { code: 404, reason: "NotFound", message: format!("{} \"{name}\" not found", res.qualified()), details: Some(Self::details(res, name)) }
    }
    pub fn already_exists(res: &Res, name: &str) -> Self {
        ApiError { code: 409, reason: "AlreadyExists", message: format!("{} \"{name}\" already exists", res.qualified()), details: Some(Self::details(res, name)) }
    }
    pub fn conflict(res: &Res, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
            details: Some(Self::details(res, name)),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError { code: 400, reason: "BadRequest", message: message.into(), details: None }
    }
    pub fn invalid(res: &Res, name: &str, message: impl Into<String>) -> Self {
        ApiError { code: 422, reason: "Invalid", message: format!("{} \"{name}\" is invalid: {}", res.kind, message.into()), details: Some(Self::details(res, name)) }
    }
    pub fn gone(message: impl Into<String>) -> Self {
        ApiError { code: 410, reason: "Expired", message: message.into(), details: None }
    }
    /// `<resource> "<name>" is forbidden: <why>`, as admission (PodSecurity, quota) refuses.
    pub fn forbidden(res: &Res, name: &str, why: &str) -> Self {
        ApiError { code: 403, reason: "Forbidden", message: format!("{} \"{name}\" is forbidden: {why}", res.qualified()), details: Some(Self::details(res, name)) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `prev` is the object before a modification or a deletion: a label-selected watch
/// needs it to turn "no longer matches" into DELETED and "now matches" into ADDED, as the real
/// server does, and a list at an older resourceVersion is rebuilt from it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub resource: &'static str,
    pub namespace: String,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

type Key = (&'static str, String, String);

struct Inner {
    rv: u64,
    /// Shared with the events that carry them: a write copies an object once, not per reader.
    objects: BTreeMap<Key, Arc<Value>>,
    /// Shared with the watches that read it: a watch takes the events past its position
    /// without copying the objects in them.
    history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    limit: usize,
}

pub struct Store {
    inner: Mutex<Inner>,
    /// The current resourceVersion; watches, the Job controller and the kubelet wait on it
    /// instead of polling on a timer.
    changed: watch::Sender<u64>,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 with microseconds, as `eventTime` (a `MicroTime`) is written.
pub fn now_micro() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// What a delete did: the object is gone (its last state), or it is marked and waits for its
/// finalizers or its processes (the marked object).
#[derive(Debug, Clone)]
pub enum Deletion {
    Gone(Value),
    Pending(Value),
}

/// An object's finalizers are all gone.
fn no_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
}

/// A marked object nothing holds any more: it goes. A pod goes only once its grace period is 0
/// (the kubelet's confirmation that its processes are dead).
fn removable(res: &Res, obj: &Value) -> bool {
    let md = &obj["metadata"];
    md.get("deletionTimestamp").is_some() && no_finalizers(obj) && (res.plural != "pods" || md["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0)
}

pub fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (changed, _) = watch::channel(1);
        Store {
            inner: Mutex::new(Inner { rv: 1, objects: BTreeMap::new(), history: VecDeque::new(), compacted: 1, limit: history_limit }),
            changed,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes everyone waiting on changes without a change (a fault switch was flipped).
    pub fn poke(&self) {
        self.changed.send_modify(|_| {});
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().unwrap().rv
    }

    pub fn get(&self, res: &'static Res, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.inner.lock().unwrap();
        inner.objects.get(&(res.plural, ns.to_string(), name.to_string())).map(|v| Value::clone(v)).ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of one resource (in one namespace, or all), and the resourceVersion they are at.
    pub fn list(&self, res: &'static Res, ns: Option<&str>) -> (Vec<Value>, u64) {
        self.list_matching(res, ns, |_| true)
    }

    /// As [`Store::list`], copying only the objects `keep` accepts (a selector's matches).
    pub fn list_matching(&self, res: &'static Res, ns: Option<&str>, keep: impl Fn(&Value) -> bool) -> (Vec<Value>, u64) {
        // Under one lock: the resourceVersion is the one the items are at.
        let inner = self.inner.lock().unwrap();
        let from: Key = (res.plural, ns.unwrap_or("").to_string(), String::new());
        let items = inner
            .objects
            .range(from..)
            .take_while(|((r, n, _), _)| *r == res.plural && ns.is_none_or(|ns| ns == n))
            .filter(|(_, v)| keep(v))
            .map(|(_, v)| Value::clone(v))
            .collect();
        (items, inner.rv)
    }

    /// Looks at the objects of one resource (in one namespace, or all) in place, under the
    /// store's lock, keeping what `f` returns. The controllers and the kubelet look at every
    /// object on every change; copying them all made the fake, not Kiln, the cost of a benchmark.
    pub fn scan<T>(&self, res: &'static Res, ns: Option<&str>, mut f: impl FnMut(&Value) -> Option<T>) -> Vec<T> {
        let inner = self.inner.lock().unwrap();
        let from: Key = (res.plural, ns.unwrap_or("").to_string(), String::new());
        inner
            .objects
            .range(from..)
            .take_while(|((r, n, _), _)| *r == res.plural && ns.is_none_or(|ns| ns == n))
            .filter_map(|(_, v)| f(v.as_ref()))
            .collect()
    }

    /// As [`Store::scan`], over the objects of one namespace whose names start with `prefix` (a
    /// Job's pods are named after it).
    pub fn scan_prefix<T>(&self, res: &'static Res, ns: &str, prefix: &str, mut f: impl FnMut(&Value) -> Option<T>) -> Vec<T> {
        let inner = self.inner.lock().unwrap();
        let from: Key = (res.plural, ns.to_string(), prefix.to_string());
        inner
            .objects
            .range(from..)
            .take_while(|((r, n, name), _)| *r == res.plural && n == ns && name.starts_with(prefix))
            .filter_map(|(_, v)| f(v.as_ref()))
            .collect()
    }

    /// Looks at one object in place.
    pub fn peek<T>(&self, res: &'static Res, ns: &str, name: &str, f: impl FnOnce(&Value) -> T) -> Option<T> {
        let inner = self.inner.lock().unwrap();
        inner.objects.get(&(res.plural, ns.to_string(), name.to_string())).map(|v| f(v))
    }

    pub fn create(&self, res: &'static Res, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_with(res, ns, obj, false)
    }

    /// Creates, with the server's defaults (`defaults::apply`). `dry_run`: everything but the
    /// write — the answer is the object as it would be stored, without a resourceVersion.
    pub fn create_with(&self, res: &'static Res, ns: &str, mut obj: Value, dry_run: bool) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request was in an unknown format"));
        }
        let mut inner = self.inner.lock().unwrap();
        if res.namespaced && !inner.objects.contains_key(&("namespaces", String::new(), ns.to_string())) {
            return Err(ApiError::not_found(res_ns(), ns));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = name_of(&obj).to_string();
        if name.is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => name = format!("{prefix}{}", random_suffix(5)),
                None => return Err(ApiError::invalid(res, "", "metadata.name: Required value: name or generateName is required")),
            }
        }
        let key = (res.plural, if res.namespaced { ns.to_string() } else { String::new() }, name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        let rv = inner.rv + 1;
        obj["kind"] = json!(res.kind);
        obj["apiVersion"] = json!(res.api_version());
        let md = &mut obj["metadata"];
        md["name"] = json!(name);
        if res.namespaced {
            md["namespace"] = json!(ns);
        } else if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
        md["uid"] = json!(uuid());
        md["resourceVersion"] = json!(rv.to_string());
        md["creationTimestamp"] = json!(now_rfc3339());
        if res.generation {
            md["generation"] = json!(1);
        }
        if let Some(m) = md.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        normalize(res, &mut obj);
        if res.status {
            // The real server drops a client's status on create for these kinds.
            obj["status"] = json!({});
        }
        super::defaults::apply(res, &mut obj);
        if dry_run {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            return Ok(obj);
        }
        inner.rv = rv;
        let shared = Arc::new(obj.clone());
        inner.objects.insert(key.clone(), shared.clone());
        push(&mut inner, Event { rv, resource: res.plural, namespace: key.1, kind: EventType::Added, object: shared, prev: None });
        drop(inner);
        self.changed.send_replace(rv);
        Ok(obj)
    }

    /// Replaces an object. `status_only`: a `/status` write (only the status changes); otherwise a
    /// main-resource write (the stored status is kept for kinds with a status subresource). A
    /// non-empty `metadata.resourceVersion` in `new` is a precondition (409 Conflict when stale).
    /// A write that changes nothing keeps the resourceVersion and makes no event, as the real
    /// server does.
    pub fn replace(&self, res: &'static Res, ns: &str, name: &str, new: Value, status_only: bool) -> Result<Arc<Value>, ApiError> {
        self.replace_with(res, ns, name, new, status_only, false)
    }

    /// As [`Store::replace`]; `dry_run`: the answer without the write.
    pub fn replace_with(&self, res: &'static Res, ns: &str, name: &str, new: Value, status_only: bool, dry_run: bool) -> Result<Arc<Value>, ApiError> {
        self.modify_with(res, ns, name, dry_run, |old| {
            if let Some(rv) = new["metadata"]["resourceVersion"].as_str() {
                if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                    return Err(ApiError::conflict(res, name));
                }
            }
            if !new.is_object() {
                return Err(ApiError::bad_request("the body of the request was in an unknown format"));
            }
            let given = name_of(&new);
            if !given.is_empty() && given != name {
                return Err(ApiError::bad_request(format!("the name of the object ({given}) does not match the name on the URL ({name})")));
            }
            let mut next = if status_only {
                let mut o = old.clone();
                o["status"] = new.get("status").cloned().unwrap_or(json!({}));
                o
            } else {
                let mut o = new.clone();
                if res.status {
                    match old.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                // System-owned metadata is not the client's to change.
                for f in ["uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace"] {
                    match old["metadata"].get(f) {
                        Some(v) => o["metadata"][f] = v.clone(),
                        None => {
                            if let Some(m) = o["metadata"].as_object_mut() {
                                m.remove(f);
                            }
                        }
                    }
                }
                o
            };
            if !status_only {
                super::defaults::on_update(res, old, &mut next)?;
            }
            normalize(res, &mut next);
            Ok(next)
        })
    }

    /// The one write path: `f` turns the stored object into the next one. A write that leaves a
    /// marked object without finalizers removes it (see the module doc); the answer is then the
    /// object as written.
    pub fn modify(&self, res: &'static Res, ns: &str, name: &str, f: impl FnOnce(&Value) -> Result<Value, ApiError>) -> Result<Arc<Value>, ApiError> {
        self.modify_with(res, ns, name, false, f)
    }

    fn modify_with(&self, res: &'static Res, ns: &str, name: &str, dry_run: bool, f: impl FnOnce(&Value) -> Result<Value, ApiError>) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let key = (res.plural, ns.to_string(), name.to_string());
        let old = inner.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        let mut next = f(&old)?;
        next["kind"] = json!(res.kind);
        next["apiVersion"] = json!(res.api_version());
        next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if next == *old {
            return Ok(old);
        }
        if res.generation && next.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = json!(g + 1);
        }
        if dry_run {
            return Ok(Arc::new(next));
        }
        inner.rv += 1;
        let rv = inner.rv;
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        if removable(res, &next) {
            // The finalizers are gone: so is the object. Watchers get its last stored state.
            inner.objects.remove(&key);
            let mut last = Value::clone(&old);
            last["metadata"]["resourceVersion"] = json!(rv.to_string());
            push(&mut inner, Event { rv, resource: res.plural, namespace: key.1, kind: EventType::Deleted, object: Arc::new(last), prev: Some(old) });
            drop(inner);
            self.changed.send_replace(rv);
            return Ok(Arc::new(next));
        }
        let next = Arc::new(next);
        inner.objects.insert(key.clone(), next.clone());
        push(&mut inner, Event { rv, resource: res.plural, namespace: key.1, kind: EventType::Modified, object: next.clone(), prev: Some(old) });
        drop(inner);
        self.changed.send_replace(rv);
        Ok(next)
    }

    /// Removes an object now, finalizers or not (the caller is the one who decides). The DELETED
    /// event carries the object at the deletion's resourceVersion.
    pub fn delete(&self, res: &'static Res, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let key = (res.plural, ns.to_string(), name.to_string());
        let old = inner.objects.remove(&key).ok_or_else(|| ApiError::not_found(res, name))?;
        inner.rv += 1;
        let rv = inner.rv;
        let mut obj = Value::clone(&old);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        push(&mut inner, Event { rv, resource: res.plural, namespace: key.1, kind: EventType::Deleted, object: Arc::new(obj.clone()), prev: Some(old) });
        drop(inner);
        self.changed.send_replace(rv);
        Ok(obj)
    }

    /// A delete as the real server does it, with `grace` seconds (the caller works out a pod's):
    /// without finalizers and with grace 0 the object goes at once; otherwise it is marked
    /// (`deletionTimestamp` = now + grace) and goes when the last finalizer does (a pod: when its
    /// grace is 0 too). Shortening a marked pod's grace to 0 writes that first (MODIFIED), then
    /// removes it, as the kubelet's final delete shows on a real server. `dry_run`: the answer
    /// without the writes.
    pub fn delete_with(&self, res: &'static Res, ns: &str, name: &str, grace: i64, dry_run: bool) -> Result<Deletion, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let key = (res.plural, ns.to_string(), name.to_string());
        let old = inner.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        // Only pods have a grace period; anything else is marked with 0 when finalizers hold it.
        let grace = if res.plural == "pods" { grace.max(0) } else { 0 };
        let md = &old["metadata"];
        let marked = md.get("deletionTimestamp").is_some();
        let free = no_finalizers(&old);
        let at = |g: i64| (chrono::Utc::now() + chrono::Duration::seconds(g)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let shorter = !marked || md["deletionGracePeriodSeconds"].as_i64().is_none_or(|g| grace < g);
        let mut cur = Value::clone(&old);
        if shorter && !(free && grace == 0 && !marked) {
            cur["metadata"]["deletionTimestamp"] = json!(at(grace));
            cur["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if !dry_run {
                inner.rv += 1;
                let rv = inner.rv;
                cur["metadata"]["resourceVersion"] = json!(rv.to_string());
                let next = Arc::new(cur.clone());
                inner.objects.insert(key.clone(), next.clone());
                push(&mut inner, Event { rv, resource: res.plural, namespace: key.1.clone(), kind: EventType::Modified, object: next, prev: Some(old.clone()) });
            }
        }
        if !(free && (grace == 0 || res.plural != "pods")) {
            if !dry_run {
                let rv = inner.rv;
                drop(inner);
                self.changed.send_replace(rv);
            }
            return Ok(Deletion::Pending(cur));
        }
        if dry_run {
            return Ok(Deletion::Gone(cur));
        }
        let prev = inner.objects.remove(&key).expect("present");
        inner.rv += 1;
        let rv = inner.rv;
        cur["metadata"]["resourceVersion"] = json!(rv.to_string());
        push(&mut inner, Event { rv, resource: res.plural, namespace: key.1, kind: EventType::Deleted, object: Arc::new(cur.clone()), prev: Some(prev) });
        drop(inner);
        self.changed.send_replace(rv);
        Ok(Deletion::Gone(cur))
    }

    /// The objects of one resource as they were at `rv` (rebuilt from the history), and `rv`;
    /// 410 Gone when the history no longer reaches back that far. What `resourceVersionMatch=Exact`
    /// and a continue token read.
    pub fn list_at(&self, res: &'static Res, ns: Option<&str>, rv: u64, keep: impl Fn(&Value) -> bool) -> Result<(Vec<Value>, u64), ApiError> {
        let inner = self.inner.lock().unwrap();
        if rv < inner.compacted {
            return Err(ApiError::gone("The resourceVersion for the provided list is too old."));
        }
        let from: Key = (res.plural, ns.unwrap_or("").to_string(), String::new());
        let in_scope = |n: &str| ns.is_none_or(|ns| ns == n);
        let mut state: BTreeMap<(String, String), Arc<Value>> = inner
            .objects
            .range(from..)
            .take_while(|((r, n, _), _)| *r == res.plural && in_scope(n))
            .map(|((_, n, name), v)| ((n.clone(), name.clone()), v.clone()))
            .collect();
        // Undo, newest first, every change made after `rv`.
        for e in inner.history.iter().rev().take_while(|e| e.rv > rv) {
            if e.resource != res.plural || !in_scope(&e.namespace) {
                continue;
            }
            let k = (e.namespace.clone(), name_of(&e.object).to_string());
            match (e.kind, &e.prev) {
                (EventType::Added, _) => {
                    state.remove(&k);
                }
                (_, Some(prev)) => {
                    state.insert(k, prev.clone());
                }
                (_, None) => {}
            }
        }
        let at = rv.min(inner.rv);
        Ok((state.values().filter(|v| keep(v)).map(|v| Value::clone(v)).collect(), at))
    }

    /// Events after `rv` and the resourceVersion they lead up to, or 410 when the history no
    /// longer reaches back that far.
    pub fn events_since(&self, rv: u64) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        let inner = self.inner.lock().unwrap();
        if rv < inner.compacted {
            return Err(too_old(rv, inner.compacted));
        }
        // The history is in resourceVersion order.
        let from = inner.history.partition_point(|e| e.rv <= rv);
        Ok((inner.history.range(from..).cloned().collect(), inner.rv))
    }

    /// Checks a watch's starting point without reading the history.
    pub fn check_watch_from(&self, rv: u64) -> Result<(), ApiError> {
        let inner = self.inner.lock().unwrap();
        if rv < inner.compacted {
            return Err(too_old(rv, inner.compacted));
        }
        Ok(())
    }

    /// As an etcd compaction: the history is gone and the revision moves on, so any watch from a
    /// resourceVersion seen before now gets 410 Gone; a fresh list gives a usable one.
    pub fn expire_history(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        inner.compacted = inner.rv;
        inner.history.clear();
        let rv = inner.rv;
        drop(inner);
        self.changed.send_replace(rv);
    }
}

fn too_old(rv: u64, compacted: u64) -> ApiError {
    ApiError::gone(format!("too old resource version: {rv} ({compacted})"))
}

fn push(inner: &mut Inner, ev: Event) {
    inner.history.push_back(Arc::new(ev));
    while inner.history.len() > inner.limit {
        let e = inner.history.pop_front().expect("non-empty");
        inner.compacted = inner.compacted.max(e.rv);
    }
}

pub fn res_ns() -> &'static Res {
    res("namespaces").expect("namespaces")
}

/// What the real server does to a written object of some kinds: Secrets' `stringData` is folded
/// into base64 `data`.
fn normalize(res: &Res, obj: &mut Value) {
    if res.plural == "secrets" {
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            use base64::Engine;
            for (k, v) in sd {
                let s = v.as_str().unwrap_or("").to_string();
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
            }
        }
        if obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
    }
}
