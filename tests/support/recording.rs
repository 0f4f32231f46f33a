//! The recordings of a real Kubernetes v1.36 control plane (`tests/kube-recordings`, see its
//! README) and what the contract tests compare of them with the fake: the sequences a build
//! service reads — Job conditions, pod phases, container states, finalizers and deletion, Events,
//! the answers to its requests — extracted by the same functions from the recorded watch events
//! and from the fake's, so that a difference is a difference in behaviour, not in extraction.
//!
//! Only what is per-run is normalised: uids, resourceVersions, timestamps, generated name
//! suffixes (`<pod>`), and the name of the one node (the recordings' `node-1` is emulated, the
//! fake's is `fake-node`). Consecutive identical states are one state: how many writes the
//! controllers needed to get there is not behaviour a client can rely on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

/// The folder of the recordings.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/kube-recordings")
}

/// One watch event: recorded (`events.jsonl`) or seen on the fake.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub t_ms: u64,
    pub resource: String,
    /// ADDED, MODIFIED, DELETED, BOOKMARK, ERROR.
    pub kind: String,
    pub object: Value,
}

impl WatchEvent {
    /// The etcd revision of the write: the true global order across resources.
    pub fn rv(&self) -> u64 {
        self.object["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
    }
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// One recorded API request and its answer.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub t_ms: u64,
    pub method: String,
    /// With the query.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
    pub status: u16,
    pub warnings: Vec<String>,
    pub answer: Value,
    pub note: String,
    /// Short watches: every event the server sent until it closed the stream.
    pub stream: Vec<Value>,
}

impl Recorded {
    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
    pub fn resource(&self) -> &str {
        resource_of_path(self.route())
    }
}

/// The plural resource a path names (`/apis/batch/v1/namespaces/x/jobs/y` → `jobs`).
pub fn resource_of_path(route: &str) -> &str {
    let segs: Vec<&str> = route.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return "",
    };
    match rest {
        ["namespaces", _, r, ..] => r,
        [r, ..] => r,
        [] => "",
    }
}

/// One scenario's recording.
pub struct Recording {
    pub name: String,
    pub events: Vec<WatchEvent>,
    pub requests: Vec<Recorded>,
}

impl Recording {
    /// `S04` loads `S04-deadline`.
    pub fn load(id: &str) -> Recording {
        let folder = std::fs::read_dir(dir())
            .expect("tests/kube-recordings")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{id}-"))))
            .unwrap_or_else(|| panic!("no recording {id}"));
        let lines = |f: &str| -> Vec<Value> {
            std::fs::read_to_string(folder.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", folder.join(f).display()))
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect()
        };
        let events = lines("events.jsonl")
            .into_iter()
            .map(|e| WatchEvent {
                t_ms: e["t_ms"].as_u64().unwrap_or(0),
                resource: e["resource"].as_str().unwrap_or("").into(),
                kind: e["type"].as_str().unwrap_or("").into(),
                object: e["object"].clone(),
            })
            .collect();
        let requests = lines("requests.jsonl")
            .into_iter()
            .map(|r| Recorded {
                t_ms: r["t_ms"].as_u64().unwrap_or(0),
                method: r["method"].as_str().unwrap_or("").into(),
                path: r["path"].as_str().unwrap_or("").into(),
                content_type: r["request_content_type"].as_str().map(String::from),
                body: Some(r["request_body"].clone()).filter(|b| !b.is_null()),
                status: r["status"].as_u64().unwrap_or(0) as u16,
                warnings: r["warnings"].as_array().into_iter().flatten().filter_map(|w| w.as_str().map(String::from)).collect(),
                answer: r["body"].clone(),
                note: r["note"].as_str().unwrap_or("").into(),
                stream: r["stream"].as_array().into_iter().flatten().map(|s| s["event"].clone()).collect(),
            })
            .collect();
        Recording { name: folder.file_name().unwrap().to_string_lossy().into_owned(), events, requests }
    }

    /// The namespace of the scenario (the first one it creates).
    pub fn namespace(&self) -> String {
        let ns = self.requests.iter().find(|r| r.method == "POST" && r.route() == "/api/v1/namespaces").expect("a namespace create");
        ns.body.as_ref().unwrap()["metadata"]["name"].as_str().unwrap().to_string()
    }

    /// The requests of one method whose path contains `part`, in order.
    pub fn requests_to(&self, method: &str, part: &str) -> Vec<&Recorded> {
        self.requests.iter().filter(|r| r.method == method && r.path.contains(part)).collect()
    }

    /// The recorded POSTs of Jobs (their bodies are Kiln's golden Jobs).
    pub fn job_creates(&self) -> Vec<&Recorded> {
        self.requests_to("POST", "/jobs")
    }

    /// The recorded watch events of these resources that arrived before `t_ms`.
    pub fn events_before(&self, t_ms: u64) -> Vec<WatchEvent> {
        self.events.iter().filter(|e| e.t_ms < t_ms).cloned().collect()
    }
}

// ---- normalising ----

/// Turns per-run values into placeholders.
#[derive(Clone, Default)]
pub struct Norm {
    /// Prefixes of generated names (`kiln-build-42-`): prefix + 5 characters becomes `<pod>`.
    pub generated: Vec<String>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn looks_like_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5 && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && is_hex(p))
}

fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && s.ends_with('Z')
}

impl Norm {
    pub fn new(generated: &[&str]) -> Norm {
        Norm { generated: generated.iter().map(|s| s.to_string()).collect() }
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        // uids: 8-4-4-4-12 hex.
        let mut i = 0;
        while i + 36 <= out.len() {
            if out.is_char_boundary(i) && out.is_char_boundary(i + 36) && looks_like_uid(&out[i..i + 36]) {
                out.replace_range(i..i + 36, "<uid>");
                i += 5;
            } else {
                i += 1;
            }
        }
        for prefix in &self.generated {
            let mut from = 0;
            while let Some(at) = out[from..].find(prefix.as_str()).map(|p| p + from) {
                let start = at + prefix.len();
                let suffix: String = out[start..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                if suffix.len() == 5 && suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                    out.replace_range(at..start + 5, "<pod>");
                    from = at + 5;
                } else {
                    from = start;
                }
            }
        }
        // The one node is the emulation's (`node-1` recorded, `fake-node` in the fake).
        out.replace("fake-node", "<node>").replace("node-1", "<node>")
    }

    /// A JSON value with its per-run strings replaced.
    pub fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) if looks_like_time(s) => json!("<time>"),
            Value::String(s) => json!(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        let x = if k == "resourceVersion" && x.is_string() { json!("<rv>") } else { self.value(x) };
                        (k.clone(), x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

// ---- the views: what a build service reads, in order ----

/// Watch events of one resource in write order (resourceVersion), without BOOKMARK and ERROR.
pub fn writes<'a>(events: &'a [WatchEvent], resource: &str) -> Vec<&'a WatchEvent> {
    let mut v: Vec<&WatchEvent> = events.iter().filter(|e| e.resource == resource && !matches!(e.kind.as_str(), "BOOKMARK" | "ERROR")).collect();
    v.sort_by_key(|e| e.rv());
    v
}

/// Every write of these resources in write order.
pub fn all_writes(events: &[WatchEvent]) -> Vec<&WatchEvent> {
    let mut v: Vec<&WatchEvent> = events.iter().filter(|e| !matches!(e.kind.as_str(), "BOOKMARK" | "ERROR")).collect();
    v.sort_by_key(|e| e.rv());
    v
}

pub fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.dedup();
    v
}

fn conditions(obj: &Value, sort: bool) -> String {
    let mut cs: Vec<String> = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{}={} {}", c["type"].as_str().unwrap_or(""), c["status"].as_str().unwrap_or(""), c["reason"].as_str().unwrap_or("")))
        .collect();
    if sort {
        cs.sort();
    }
    format!("[{}]", cs.join(", "))
}

/// The Job's conditions (type=status reason, in list order) after each write.
pub fn job_conditions(events: &[WatchEvent], job: &str) -> Vec<String> {
    dedup(
        writes(events, "jobs")
            .into_iter()
            .filter(|e| e.name() == job)
            .map(|e| if e.kind == "DELETED" { format!("DELETED {}", conditions(&e.object, false)) } else { conditions(&e.object, false) })
            .collect(),
    )
}

/// The messages of the Job's conditions, once each.
pub fn job_condition_messages(events: &[WatchEvent], job: &str) -> Vec<String> {
    let set: BTreeSet<String> = writes(events, "jobs")
        .into_iter()
        .filter(|e| e.name() == job)
        .flat_map(|e| e.object["status"]["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| format!("{}: {}", c["type"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
        .collect();
    set.into_iter().collect()
}

/// Pods by order of first appearance: `<pod>` when there is one, `<pod#2>` … after.
fn pod_label(order: &mut Vec<String>, e: &WatchEvent) -> String {
    let uid = e.object["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let i = match order.iter().position(|u| *u == uid) {
        Some(i) => i,
        None => {
            order.push(uid);
            order.len() - 1
        }
    };
    if i == 0 { String::new() } else { format!("<pod#{}> ", i + 1) }
}

/// One line per pod write, by a function of the pod; consecutive repeats dropped per pod.
fn per_pod(events: &[WatchEvent], f: impl Fn(&WatchEvent) -> Option<String>) -> Vec<String> {
    let mut order = Vec::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for e in writes(events, "pods") {
        let label = pod_label(&mut order, e);
        let Some(line) = f(e) else { continue };
        if last.get(&label) != Some(&line) {
            last.insert(label.clone(), line.clone());
            out.push(format!("{label}{line}"));
        }
    }
    out
}

/// Pod phase (and `status.reason`, and the DisruptionTarget condition) after each write; DELETED.
pub fn pod_phases(events: &[WatchEvent]) -> Vec<String> {
    per_pod(events, |e| {
        if e.kind == "DELETED" {
            return Some("DELETED".into());
        }
        let s = &e.object["status"];
        let mut line = s["phase"].as_str().unwrap_or("-").to_string();
        if let Some(r) = s["reason"].as_str() {
            line.push_str(&format!(" ({r})"));
        }
        for c in s["conditions"].as_array().into_iter().flatten().filter(|c| c["type"] == "DisruptionTarget") {
            line.push_str(&format!(" DisruptionTarget={} {}", c["status"].as_str().unwrap_or(""), c["reason"].as_str().unwrap_or("")));
        }
        Some(line)
    })
}

/// The scheduler's part: PodScheduled (status reason: message) and whether a node is set.
pub fn pod_scheduling(events: &[WatchEvent], n: &Norm) -> Vec<String> {
    per_pod(events, |e| {
        if e.kind == "DELETED" {
            return None;
        }
        let c = e.object["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "PodScheduled");
        let node = if e.object["spec"]["nodeName"].as_str().is_some_and(|s| !s.is_empty()) { "on a node" } else { "no node" };
        Some(match c {
            None => format!("no PodScheduled, {node}"),
            Some(c) => format!(
                "PodScheduled={}{}{}, {node}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().filter(|r| !r.is_empty()).map(|r| format!(" {r}")).unwrap_or_default(),
                c["message"].as_str().map(|m| format!(": {}", n.text(m))).unwrap_or_default()
            ),
        })
    })
}

/// Finalizers and deletion: `finalizers=[…]`, ` deleting` once deletionTimestamp is set,
/// `DELETED finalizers=[…]` (the object a DELETED event carries).
pub fn pod_lifecycle(events: &[WatchEvent]) -> Vec<String> {
    per_pod(events, |e| {
        let fins: Vec<&str> = e.object["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
        let mut line = format!("finalizers=[{}]", fins.join(", "));
        if e.kind == "DELETED" {
            line = format!("DELETED {line}");
        } else if e.object["metadata"].get("deletionTimestamp").is_some_and(|d| !d.is_null()) {
            line.push_str(" deleting");
        }
        Some(line)
    })
}

fn container_state(c: &Value) -> String {
    let st = &c["state"];
    if let Some(w) = st.get("waiting") {
        format!("waiting {}", w["reason"].as_str().unwrap_or(""))
    } else if st.get("running").is_some() {
        if c["ready"] == true { "running ready".into() } else { "running".into() }
    } else if let Some(t) = st.get("terminated") {
        let mut s = format!("terminated {} {}", t["exitCode"], t["reason"].as_str().unwrap_or(""));
        if let Some(m) = t["message"].as_str() {
            s.push_str(&format!(" message={m}"));
        }
        s
    } else {
        "-".into()
    }
}

/// Each container's states in order (waiting reason / running (ready) / terminated exit reason
/// and termination message), by container name.
pub fn container_states(events: &[WatchEvent]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut order = Vec::new();
    for e in writes(events, "pods") {
        let label = pod_label(&mut order, e);
        for key in ["initContainerStatuses", "containerStatuses"] {
            for c in e.object["status"][key].as_array().into_iter().flatten() {
                let name = format!("{label}{}", c["name"].as_str().unwrap_or(""));
                let states = out.entry(name).or_default();
                let s = container_state(c);
                if states.last() != Some(&s) {
                    states.push(s);
                }
            }
        }
    }
    out
}

/// What decides a build, across resources in write order: the Job's condition set changing, the
/// pod failing or succeeding on its own (not as the kill after a delete: the kill's timing is the
/// kubelet's), the pod marked for deletion, its job-tracking finalizer removed, the pod gone.
pub fn milestones(events: &[WatchEvent], job: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut job_conds = String::new();
    let mut pods: BTreeMap<String, (String, bool, bool)> = BTreeMap::new(); // uid → (phase, deleting, tracked)
    for e in all_writes(events) {
        match e.resource.as_str() {
            "jobs" if e.name() == job => {
                if e.kind == "DELETED" {
                    out.push("job DELETED".into());
                    continue;
                }
                let c = conditions(&e.object, false);
                if c != job_conds {
                    out.push(format!("job {c}"));
                    job_conds = c;
                }
            }
            "pods" => {
                let uid = e.object["metadata"]["uid"].as_str().unwrap_or("").to_string();
                let phase = e.object["status"]["phase"].as_str().unwrap_or("").to_string();
                let deleting = e.object["metadata"].get("deletionTimestamp").is_some_and(|d| !d.is_null());
                let tracked = e.object["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == "batch.kubernetes.io/job-tracking"));
                let (was_phase, was_deleting, was_tracked) = pods.get(&uid).cloned().unwrap_or_else(|| (String::new(), false, tracked));
                if e.kind == "DELETED" {
                    out.push("pod DELETED".into());
                    pods.remove(&uid);
                    continue;
                }
                if deleting && !was_deleting {
                    out.push("pod marked for deletion".into());
                }
                if phase != was_phase && matches!(phase.as_str(), "Succeeded" | "Failed") && !deleting {
                    out.push(format!("pod {phase}"));
                }
                if was_tracked && !tracked {
                    out.push("pod job-tracking finalizer removed".into());
                }
                pods.insert(uid, (phase, deleting, tracked));
            }
            _ => {}
        }
    }
    dedup(out)
}

/// Who reported an Event: `reportingController`, else `source.component`.
fn event_source(ev: &Value) -> String {
    ev["reportingController"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or(ev["reportingComponent"].as_str().filter(|s| !s.is_empty()))
        .or(ev["source"]["component"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// core/v1 Events as created (ADDED), per reporting component, in order: `type reason on kind:
/// message`. Between components the order is a race of independent controllers, not behaviour.
pub fn events_by_source(events: &[WatchEvent], n: &Norm) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in writes(events, "events").into_iter().filter(|e| e.kind == "ADDED") {
        let o = &e.object;
        out.entry(event_source(o)).or_default().push(format!(
            "{} {} on {}: {}",
            o["type"].as_str().unwrap_or(""),
            o["reason"].as_str().unwrap_or(""),
            o["involvedObject"]["kind"].as_str().or(o["regarding"]["kind"].as_str()).unwrap_or(""),
            n.text(o["message"].as_str().or(o["note"].as_str()).unwrap_or(""))
        ));
    }
    out
}

/// When each Event of a reason was created, in ms after the first write of the scenario's
/// `resource` (say the Job's ADDED): from `eventTime`/`firstTimestamp` are seconds only, so from
/// the watch's arrival time.
pub fn event_times(events: &[WatchEvent], reason: &str) -> Vec<u64> {
    let mut v: Vec<&WatchEvent> = events.iter().filter(|e| e.resource == "events" && e.kind == "ADDED" && e.object["reason"] == reason).collect();
    v.sort_by_key(|e| e.rv());
    v.into_iter().map(|e| e.t_ms).collect()
}

/// A Deployment's generation, observedGeneration and conditions (sorted by type: the list order
/// is no contract) after each write.
pub fn deployment_conditions(events: &[WatchEvent], name: &str) -> Vec<String> {
    dedup(
        writes(events, "deployments")
            .into_iter()
            .filter(|e| e.name() == name)
            .map(|e| {
                format!(
                    "generation {} observed {} {}",
                    e.object["metadata"]["generation"],
                    e.object["status"]["observedGeneration"].as_i64().map_or("-".to_string(), |g| g.to_string()),
                    conditions(&e.object, true)
                )
            })
            .collect(),
    )
}

/// The verdict a rollout watcher reaches after each write: `stale` (status not of this
/// generation), `progressing`, `done` (observedGeneration current, updated = ready = available =
/// spec.replicas, Progressing NewReplicaSetAvailable) or `failed` (Progressing=False
/// ProgressDeadlineExceeded).
pub fn rollout_verdicts(events: &[WatchEvent], name: &str) -> Vec<String> {
    dedup(
        writes(events, "deployments")
            .into_iter()
            .filter(|e| e.name() == name)
            .map(|e| {
                let o = &e.object;
                let generation = o["metadata"]["generation"].as_i64().unwrap_or(0);
                let s = &o["status"];
                let progressing = s["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Progressing");
                let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
                let verdict = if s["observedGeneration"].as_i64() != Some(generation) {
                    "stale"
                } else if progressing.is_some_and(|c| c["status"] == "False" && c["reason"] == "ProgressDeadlineExceeded") {
                    "failed"
                } else if progressing.is_some_and(|c| c["reason"] == "NewReplicaSetAvailable")
                    && ["updatedReplicas", "replicas", "availableReplicas"].iter().all(|k| s[*k].as_i64() == Some(want))
                {
                    "done"
                } else {
                    "progressing"
                };
                format!("generation {generation}: {verdict}")
            })
            .collect(),
    )
}

/// The messages of a Deployment's Progressing condition in order, ReplicaSet names numbered by
/// first appearance (`<rs1>`): the fake names ReplicaSets its own way, but which one a message
/// names (a rollback reuses the earlier one) is behaviour.
pub fn progressing_messages(events: &[WatchEvent], name: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for e in writes(events, "deployments").into_iter().filter(|e| e.name() == name) {
        let Some(c) = e.object["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Progressing") else { continue };
        let msg = c["message"].as_str().unwrap_or("");
        // The one quoted name in these messages.
        let mut parts: Vec<String> = msg.split('"').map(String::from).collect();
        if parts.len() >= 3 {
            let rs = parts[1].clone();
            let i = seen.iter().position(|s| *s == rs).unwrap_or_else(|| {
                seen.push(rs);
                seen.len() - 1
            });
            parts[1] = format!("<rs{}>", i + 1);
        }
        out.push(parts.join("\""));
    }
    dedup(out)
}

/// What the server added, changed or dropped between `before` (what was sent) and `after` (what it
/// answered or stored): one sorted line per path, lists of named objects keyed by name
/// (`containers[image].env[HOME]`), values normalised.
pub fn server_diff(root: &str, before: &Value, after: &Value, n: &Norm) -> Vec<String> {
    fn named(a: &[Value]) -> bool {
        !a.is_empty() && a.iter().all(|x| x["name"].is_string())
    }
    fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, n: &Norm, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    walk(&format!("{path}.{k}"), x.get(k), y.get(k), n, out);
                }
            }
            (Some(Value::Array(x)), Some(Value::Array(y))) if named(x) && named(y) => {
                let mut names: Vec<&str> = x.iter().chain(y.iter()).filter_map(|v| v["name"].as_str()).collect();
                names.dedup();
                let mut uniq = Vec::new();
                for nm in names {
                    if !uniq.contains(&nm) {
                        uniq.push(nm);
                    }
                }
                for nm in uniq {
                    let find = |l: &Vec<Value>| l.iter().find(|v| v["name"] == nm).cloned();
                    walk(&format!("{path}[{nm}]"), find(x).as_ref(), find(y).as_ref(), n, out);
                }
            }
            (None, Some(v)) => out.push(format!("+ {path} = {}", leaf(path, v, n))),
            (Some(v), None) => out.push(format!("- {path} (was {})", leaf(path, v, n))),
            (Some(x), Some(y)) if x != y => {
                let (nx, ny) = (leaf(path, x, n), leaf(path, y, n));
                if nx != ny {
                    out.push(format!("~ {path}: {nx} -> {ny}"));
                }
            }
            _ => {}
        }
    }
    /// A resourceVersion is per-run wherever it is.
    fn leaf(path: &str, v: &Value, n: &Norm) -> Value {
        if path.ends_with(".resourceVersion") && v.is_string() { json!("<rv>") } else { n.value(v) }
    }
    let mut out = Vec::new();
    walk(root, Some(before), Some(after), n, &mut out);
    // A path whose normalised value is per-run only keeps its presence: `+ …uid = "<uid>"`.
    out.sort();
    out
}

// ---- the comparison ----

/// Named comparisons of recorded and fake sequences; `verify` panics with every difference.
#[derive(Default)]
pub struct Contract {
    scenario: String,
    sections: Vec<(String, Vec<String>, Vec<String>)>,
    notes: Vec<String>,
}

impl Contract {
    pub fn new(scenario: &str) -> Contract {
        Contract { scenario: scenario.into(), ..Default::default() }
    }

    /// One aspect: the recorded sequence and the fake's.
    pub fn compare(&mut self, what: &str, recorded: Vec<String>, fake: Vec<String>) {
        self.sections.push((what.into(), recorded, fake));
    }

    /// A map of sequences (per container, per event source): one section per key.
    pub fn compare_map(&mut self, what: &str, recorded: BTreeMap<String, Vec<String>>, fake: BTreeMap<String, Vec<String>>) {
        let keys: BTreeSet<String> = recorded.keys().chain(fake.keys()).cloned().collect();
        if keys.is_empty() {
            self.compare(what, vec![], vec![]);
        }
        for k in keys {
            self.compare(&format!("{what} [{k}]"), recorded.get(&k).cloned().unwrap_or_default(), fake.get(&k).cloned().unwrap_or_default());
        }
    }

    /// Something the fake did that is worth showing next to a failure (a watch it refused).
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    pub fn differences(&self) -> Vec<&str> {
        self.sections.iter().filter(|(_, r, f)| r != f).map(|(w, _, _)| w.as_str()).collect()
    }

    pub fn report(&self) -> String {
        let mut s = format!("contract {}:\n", self.scenario);
        for (what, r, f) in &self.sections {
            if r == f {
                s.push_str(&format!("  ok   {what} ({} states)\n", r.len()));
            } else {
                s.push_str(&format!("  DIFF {what}   (' ' both, '-' recorded only, '+' fake only)\n"));
                for line in line_diff(r, f) {
                    s.push_str(&format!("         {line}\n"));
                }
            }
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }

    /// Passes when every section is equal (the report goes to stderr then); otherwise panics
    /// with the report.
    pub fn verify(self) {
        let report = self.report();
        let diffs = self.differences();
        if diffs.is_empty() {
            eprintln!("{report}");
        }
        assert!(diffs.is_empty(), "the fake differs from the recording {} in: {}\n{report}", self.scenario, diffs.join("; "));
    }
}

/// A line diff (longest common subsequence): `  x` in both, `- x` recorded only, `+ x` fake only.
pub fn line_diff(a: &[String], b: &[String]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut l = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            l[i][j] = if a[i] == b[j] { l[i + 1][j + 1] + 1 } else { l[i + 1][j].max(l[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || l[i][j + 1] >= l[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

// ---- the fake's side, through its HTTP API ----

/// An answer as a client sees it: status, `Warning` headers, the JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub warnings: Vec<String>,
    pub body: Value,
}

impl Answer {
    /// `POST /path → 201`, the Warning headers, and for a refusal the `Status` body (normalised).
    pub fn summary(&self, method: &str, route: &str, n: &Norm) -> Vec<String> {
        summary(method, route, self.status, &self.warnings, &self.body, n)
    }
}

pub fn summary(method: &str, route: &str, status: u16, warnings: &[String], body: &Value, n: &Norm) -> Vec<String> {
    let mut lines = vec![format!("{method} {route} → {status}")];
    for w in warnings {
        lines.push(format!("    Warning: {w}"));
    }
    if status >= 400 || body["kind"] == "Status" {
        lines.push(format!("    {}", n.value(body)));
    }
    lines
}

/// The recorded request's summary lines.
pub fn recorded_summary(r: &Recorded, n: &Norm) -> Vec<String> {
    summary(&r.method, r.route(), r.status, &r.warnings, &r.answer, n)
}

/// Sends a request as kube-rs would (`Client::send`: the raw response, headers included).
pub async fn send(client: &kube::Client, method: &str, path: &str, content_type: Option<&str>, body: Option<&Value>) -> Answer {
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("content-type", content_type.unwrap_or("application/json"));
    }
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let resp = client.send(req.body(kube::client::Body::from(bytes)).unwrap()).await.expect("the fake answers");
    let status = resp.status().as_u16();
    let warnings = resp.headers().get_all("warning").iter().filter_map(|v| v.to_str().ok()).map(String::from).collect();
    let bytes = resp.into_body().collect_bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Answer { status, warnings, body }
}

/// The collection path of a resource in a namespace.
pub fn collection(resource: &str, ns: &str) -> String {
    let group = match resource {
        "jobs" => "/apis/batch/v1",
        "deployments" | "replicasets" => "/apis/apps/v1",
        _ => "/api/v1",
    };
    format!("{group}/namespaces/{ns}/{resource}")
}

/// Opens a watch (raw, as the recordings did) and yields its events until the server ends it;
/// `Err(answer)` when it is refused with a status other than 200.
pub async fn open_watch(client: &kube::Client, path: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<Value>, Answer> {
    let req = axum::http::Request::builder().method("GET").uri(path).body(kube::client::Body::from(Vec::new())).unwrap();
    let resp = client.send(req).await.expect("the fake answers");
    if resp.status().as_u16() != 200 {
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect_bytes().await.unwrap_or_default();
        return Err(Answer { status, warnings: vec![], body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) });
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = axum::body::Body::new(resp.into_body()).into_data_stream();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// The fake's watch events on some resources of a namespace, collected in the background from
/// `?watch=1&allowWatchBookmarks=true` streams opened before anything is created, as the
/// recordings' were.
pub struct Observed {
    events: Arc<Mutex<Vec<WatchEvent>>>,
    changed: tokio::sync::watch::Sender<usize>,
    refused: Arc<Mutex<Vec<String>>>,
    start: tokio::time::Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Observed {
    pub async fn watch(client: &kube::Client, ns: &str, resources: &[&str]) -> Observed {
        let paths: Vec<(String, String)> = resources.iter().map(|r| (r.to_string(), format!("{}?watch=1&allowWatchBookmarks=true", collection(r, ns)))).collect();
        Observed::open(client, &paths).await
    }

    /// Watches on these (resource, path with query) pairs.
    pub async fn open(client: &kube::Client, paths: &[(String, String)]) -> Observed {
        let events = Arc::new(Mutex::new(Vec::new()));
        let changed = tokio::sync::watch::channel(0).0;
        let refused = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for (r, path) in paths {
            match open_watch(client, path).await {
                Err(a) => refused.lock().unwrap().push(format!("watch {path} → {} {}", a.status, a.body)),
                Ok(mut rx) => {
                    let (events, changed, resource) = (events.clone(), changed.clone(), r.to_string());
                    tasks.push(tokio::spawn(async move {
                        while let Some(v) = rx.recv().await {
                            let e = WatchEvent {
                                t_ms: start.elapsed().as_millis() as u64,
                                resource: resource.clone(),
                                kind: v["type"].as_str().unwrap_or("").into(),
                                object: v["object"].clone(),
                            };
                            events.lock().unwrap().push(e);
                            changed.send_modify(|n| *n += 1);
                        }
                    }));
                }
            }
        }
        Observed { events, changed, refused, start, tasks }
    }

    pub fn events(&self) -> Vec<WatchEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Milliseconds since the watches were opened.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Watches the fake refused (a resource it does not serve).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }

    /// Waits (on new events, not a timer) until `pred` holds for the events so far. Returns false
    /// after `timeout` instead of panicking: the comparison that follows shows what differs.
    pub async fn until(&self, timeout: Duration, what: &str, pred: impl Fn(&[WatchEvent]) -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(&self.events()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                eprintln!("contract: gave up after {timeout:?} waiting for {what}");
                return false;
            }
        }
    }
}
