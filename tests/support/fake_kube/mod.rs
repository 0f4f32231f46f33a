//! A fake Kubernetes API server for the tests: an in-process axum `Router` handed to
//! `kube::Client::new`, plus the controllers of a control plane (Job, Deployment, scheduler,
//! garbage collector, quota) and a kubelet that runs pods as host processes (through
//! `builder_api::executor::process`, the local executor's runner).
//!
//! It behaves like the real server where Kiln relies on it, as recorded from a v1.36 control
//! plane in `tests/kube-recordings/` (each module names the scenarios it follows):
//! - objects: resourceVersions from one counter; Services (with their defaults and immutable
//!   cluster IP) and a custom resource, Istio's `networking.istio.io/v1` VirtualService; 409/404/403/410 `Status` bodies; merge /
//!   strategic / JSON patches and server-side apply; the `/status` subresource; the server's
//!   defaults on create (S14: a Job's selector, counts and controller labels, a pod's container
//!   and scheduling defaults, service account, tolerations, priority, `qosClass`); `dryRun=All`
//!   on create, update, patch and delete (admission runs, nothing is stored);
//! - deletion: finalizers and graceful deletion (`deletionTimestamp`, grace periods; the last
//!   finalizer's removal deletes, S04), propagation (Jobs orphan their Pods by default,
//!   Background, Foreground through the garbage collector);
//! - lists and watches: label and field selectors (Events by `involvedObject.*`, `reason`,
//!   `type`), `limit`/`continue` paging with `remainingItemCount`, `resourceVersionMatch=Exact`
//!   (410 once compacted), watches with the initial ADDED burst and the `initial-events-end`
//!   BOOKMARK, periodic bookmarks, a too-old resourceVersion as one ERROR 410 event (S12);
//! - admission: PodSecurity by namespace labels (403 for pods, `Warning` headers for workloads,
//!   S08) and ResourceQuota object counts (403, S11);
//! - RBAC for a client of `client_as` (`rbac`): the 403 of S11's shape, a server-side apply that
//!   creates also needing `create`, a binding's create held to the escalation check (`bind`), and
//!   every refusal kept for the test (`refusals`);
//! - controllers: the Job controller with `job-tracking` finalizers, the order of
//!   `SuccessCriteriaMet`/`FailureTarget` before `Complete`/`Failed`, deadlines that delete the
//!   pod first, `FailedCreate` back-off (S01–S06, S08, S10); the scheduler with PVCs and node
//!   capacity, `FailedScheduling`/`Scheduled` Events (S09); a Deployment controller that reports
//!   rollout status; core/v1 Events for all of these;
//! - the kubelet: init containers then containers, container states, exit codes, OOM,
//!   eviction, image pull failures, termination messages, the kill (137) and the final grace-0
//!   delete of a deleted pod, and the pod `log` subresource with `follow`, `timestamps`,
//!   `sinceTime`, `tailLines`.
//!
//! Fault switches and request counters let tests and benchmarks provoke and measure.
//!
//! It shares the benchmarks' two cores with Kiln, so it must cost what a real server costs Kiln
//! (nothing): objects and events share one copy (`Arc`), controllers read objects in place
//! (`Store::scan`, `peek`) and, as real controllers with a work queue, look again only at the
//! objects a change or a due timer concerns — no polling.
//!
//! Volumes have no bind mounts: a volume is a host directory, and the kubelet rewrites any env
//! value, argument, `workingDir` or `terminationMessagePath` that is a volumeMount's `mountPath`
//! (or below it) to that host directory. `$(VAR)` in command and args expands from the mapped env
//! (so `$(WORKSPACE)/src` is a host path, also inside a `sh -c` script); an argument without a
//! reference is mapped itself. Paths that reach the process another way (written literally inside
//! a script or a file, built by the program at run time) are not rewritten; that is why Kiln passes the workspace path only through the `WORKSPACE` env
//! var. Host paths stand in for image contents: a path below a mount (say a toolchain under the
//! test's temp dir while `/tmp` is a mount) that exists on the host and not in the volume is left
//! as written. `workingDir` is never `$(VAR)`-expanded (Kubernetes does not) and must be absolute.
//! A PersistentVolumeClaim is a directory per namespace and claim under the fake's root; the
//! claim object must exist (`FakeKube::create_pvc`) or the pod is never scheduled.

mod admission;
pub mod api;
mod defaults;
mod deployment_controller;
mod events;
mod gc;
mod job_controller;
mod kubelet;
pub mod logs;
pub mod patch;
pub mod pod_security;
mod quota;
pub mod rbac;
mod scheduler;
pub mod selectors;
pub mod store;
mod watch;
mod work_queue;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use store::{res, ApiError, Res, Store};

/// How to start a fake.
#[derive(Debug, Clone)]
pub struct FakeKubeOptions {
    /// Where volumes, scratch dirs and termination-message files live; a temp dir when `None`.
    pub root: Option<PathBuf>,
    /// Runs a container whose argv[0] is `kiln`. Without it, `kiln` is looked up on PATH.
    pub kiln_binary: Option<PathBuf>,
    /// The kubelet runs pods from the start (switch with `set_kubelet_running`).
    pub kubelet: bool,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Events kept for watches; a watch from further back gets 410 Gone.
    pub history_limit: usize,
    /// Namespaces that exist at start.
    pub namespaces: Vec<String>,
    /// How long the Job controller batches pod updates before it acts on them (the real one:
    /// about a second). The order of its writes is what a client sees either way.
    pub job_sync_delay: Duration,
}

impl Default for FakeKubeOptions {
    fn default() -> Self {
        FakeKubeOptions {
            root: None,
            kiln_binary: None,
            kubelet: true,
            bookmark_interval: Duration::from_secs(1),
            history_limit: 10_000,
            namespaces: vec!["default".into()],
            job_sync_delay: Duration::from_millis(100),
        }
    }
}

/// One request a client made, as the real server's audit log would name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// get, list, watch, log (reads); create, update, patch, delete (writes).
    pub verb: &'static str,
    pub resource: String,
    /// `status` or `log`.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object's name; for a create, the body's `name` or else its `generateName`.
    pub name: Option<String>,
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(self.verb, "create" | "update" | "patch" | "delete")
    }
}

/// A request RBAC refused (403), as the real server's audit log would show it: the verb and
/// resource asked for (for a binding refused by the escalation check, `bind` on the role), where,
/// and the message the client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub verb: String,
    pub group: String,
    /// With its subresource: `pods/log`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub message: String,
}

#[derive(Default)]
pub(crate) struct Faults {
    /// resource → (status code, remaining refusals; None = always).
    pub refuse: HashMap<String, (u16, Option<usize>)>,
    /// resource → status code for every get, list and watch.
    pub refuse_reads: HashMap<String, u16>,
    /// Follow log streams end after this many more lines; `epoch` tells open streams it changed.
    pub log_reset: Option<usize>,
    pub log_reset_epoch: u64,
    pub unpullable: Vec<String>,
    pub oom: HashSet<String>,
    /// Rollouts to an image containing one of these never become available.
    pub bad_images: Vec<String>,
}

#[derive(Default)]
pub(crate) struct WatchCount {
    pub opened: usize,
    pub open: usize,
}

pub(crate) struct Shared {
    pub store: Store,
    pub logs: logs::Logs,
    pub opts: FakeKubeOptions,
    pub root: PathBuf,
    pub faults: Mutex<Faults>,
    pub requests: Mutex<Vec<Request>>,
    /// Requests RBAC refused, in order.
    pub refusals: Mutex<Vec<Refusal>>,
    pub watches: Mutex<HashMap<String, WatchCount>>,
    /// Bumped by `drop_watches`: every open watch stream ends.
    pub drop_watches: tokio::sync::watch::Sender<u64>,
    pub kubelet_on: AtomicBool,
    /// Pods the kubelet is running, by uid.
    pub pods: Mutex<HashMap<String, kubelet::PodHandle>>,
    pub shutdown: CancellationToken,
}

/// The fake. Dropping it stops its tasks and kills every process its kubelet started.
pub struct FakeKube {
    shared: Arc<Shared>,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl FakeKube {
    /// Starts the fake's controller and kubelet tasks; call inside a tokio runtime.
    pub fn start(opts: FakeKubeOptions) -> FakeKube {
        let (root, tmp) = match &opts.root {
            Some(r) => (r.clone(), None),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&root).expect("fake kube root");
        let shared = Arc::new(Shared {
            store: Store::new(opts.history_limit),
            logs: logs::Logs::default(),
            kubelet_on: AtomicBool::new(opts.kubelet),
            opts: opts.clone(),
            root,
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            watches: Mutex::new(HashMap::new()),
            drop_watches: tokio::sync::watch::channel(0).0,
            pods: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        });
        for ns in &opts.namespaces {
            shared.store.create(store::res_ns(), "", json!({"metadata": {"name": ns}})).expect("namespace");
        }
        tokio::spawn(job_controller::run(shared.clone()));
        tokio::spawn(deployment_controller::run(shared.clone()));
        tokio::spawn(scheduler::run(shared.clone()));
        tokio::spawn(gc::run(shared.clone()));
        tokio::spawn(kubelet::run(shared.clone()));
        FakeKube { shared, _tmp: tmp }
    }

    /// A client whose every request is served by this fake as a cluster admin (RBAC allows it
    /// everything); default namespace `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(api::router(self.shared.clone()), "default")
    }

    /// A client that authenticates as `who`: the Roles, ClusterRoles and bindings in the fake
    /// decide what it may do, and a refusal is the real server's 403.
    pub fn client_as(&self, who: rbac::Identity) -> kube::Client {
        kube::Client::new(api::router_as(self.shared.clone(), Some(who)), "default")
    }

    /// Creates every object of a YAML manifest (documents split on `---`, comment-only ones
    /// skipped), as `kubectl create -f` would, in the object's namespace or `default`.
    pub fn create_from_yaml(&self, text: &str) -> Vec<Value> {
        let mut made = vec![];
        for doc in text.split("\n---") {
            if doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
                continue;
            }
            let obj: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("a YAML document: {e}\n{doc}"));
            let kind = obj["kind"].as_str().unwrap_or("").to_string();
            let r = store::RESOURCES.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("the fake does not serve {kind}"));
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let ns = if r.namespaced { ns } else { String::new() };
            made.push(self.shared.store.create(r, &ns, obj).unwrap_or_else(|e| panic!("creating a {kind}: {}", e.message)));
        }
        made
    }

    /// Serves the fake on a loopback port too, for a client in another process (`kiln serve` as
    /// a subprocess, which finds it through `KUBECONFIG`), and returns the kubeconfig written for
    /// it. The listener stops with the fake.
    pub async fn serve_tcp(&self) -> PathBuf {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let router = api::router(self.shared.clone());
        let shutdown = self.shared.shutdown.clone();
        // The real API server (Go's net package) answers with TCP_NODELAY set.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| drop(tcp.set_nodelay(true)));
        tokio::spawn(async move {
            tokio::select! {
                _ = axum::serve(listener, router) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        let kubeconfig = self.shared.root.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
            ),
        )
        .expect("write kubeconfig");
        kubeconfig
    }

    /// Rollouts of a Deployment to an image containing `substring` stall, and fail with
    /// `ProgressDeadlineExceeded` after the Deployment's `progressDeadlineSeconds`.
    pub fn fail_rollouts_of(&self, substring: &str) {
        self.shared.faults.lock().unwrap().bad_images.push(substring.to_string());
        self.shared.store.poke();
    }

    /// Where volumes and scratch dirs live.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    // ---- objects, directly (not counted as requests) ----

    pub fn create_namespace(&self, name: &str) {
        self.create_namespace_with_labels(name, &[]);
    }

    /// A namespace with labels, say `pod-security.kubernetes.io/enforce: baseline`.
    pub fn create_namespace_with_labels(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.shared.store.create(store::res_ns(), "", json!({"metadata": {"name": name, "labels": labels}})).expect("create namespace");
    }

    /// Sets one label of an existing namespace (PodSecurity levels are read at each admission).
    pub fn label_namespace(&self, name: &str, key: &str, value: &str) {
        self.shared
            .store
            .modify(store::res_ns(), "", name, |o| {
                let mut o = o.clone();
                o["metadata"]["labels"][key] = json!(value);
                Ok(o)
            })
            .expect("label namespace");
    }

    pub fn create_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let string_data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.create(ns, "secrets", json!({"metadata": {"name": name}, "stringData": string_data})).expect("create secret");
    }

    /// A PersistentVolumeClaim, Bound at once (as a pre-bound claim is on a real cluster). Pods
    /// mounting a claim that does not exist stay Pending, unschedulable.
    pub fn create_pvc(&self, ns: &str, name: &str) {
        let claim = json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}});
        self.create(ns, "persistentvolumeclaims", claim).expect("create persistentvolumeclaim");
    }

    /// A ResourceQuota with these `spec.hard` entries, say `("count/jobs.batch", "0")`.
    pub fn create_resource_quota(&self, ns: &str, name: &str, hard: &[(&str, &str)]) {
        let hard: serde_json::Map<String, Value> = hard.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.create(ns, "resourcequotas", json!({"metadata": {"name": name}, "spec": {"hard": hard}})).expect("create resourcequota");
    }

    /// Creates any object of a served resource (`pods`, `jobs`, …) as a client would: defaults,
    /// PodSecurity and quota admission apply. Err is the `Status` a client would get.
    pub fn create(&self, ns: &str, resource: &str, obj: Value) -> Result<Value, Value> {
        let r = res(resource).expect("served resource");
        admission::create(&self.shared, r, if r.namespaced { ns } else { "" }, obj, false).map(|c| c.object).map_err(|e| e.status())
    }

    /// core/v1 Events, of one namespace or all, oldest first.
    pub fn events(&self, ns: Option<&str>) -> Vec<Value> {
        let mut all = self.list("events", ns);
        all.sort_by_key(|e| e["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse::<u64>().ok()).unwrap_or(0));
        all
    }

    /// Events about one object (by kind and name) with this reason, oldest first.
    pub fn events_for(&self, ns: &str, kind: &str, name: &str, reason: &str) -> Vec<Value> {
        self.events(Some(ns)).into_iter().filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name && e["reason"] == reason).collect()
    }

    /// The object as stored, or None.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let r = res(resource).expect("served resource");
        self.shared.store.get(r, if r.namespaced { ns } else { "" }, name).ok()
    }

    /// Objects of a resource, in one namespace or all.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Value> {
        self.shared.store.list(res(resource).expect("served resource"), ns).0
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// A container's whole log, or None when it has not started (or the pod is unknown).
    pub fn pod_log(&self, ns: &str, pod: &str, container: &str) -> Option<String> {
        let uid = self.get("pods", ns, pod)?["metadata"]["uid"].as_str()?.to_string();
        Some(self.shared.logs.get(&uid, container)?.text())
    }

    /// Waits (on store changes, not a timer) until `pred` holds for the object — `None` when it
    /// does not exist — and returns what `pred` saw. Panics after `timeout`.
    pub async fn wait_for<T>(&self, resource: &str, ns: &str, name: &str, timeout: Duration, mut pred: impl FnMut(Option<&Value>) -> Option<T>) -> T {
        let mut changes = self.shared.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let obj = self.get(resource, ns, name);
            if let Some(t) = pred(obj.as_ref()) {
                return t;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                panic!("timed out after {timeout:?} waiting on {resource} {ns}/{name}; last seen: {obj:#?}");
            }
        }
    }

    /// Waits (on store changes) until `pred` returns Some; panics after `timeout`.
    pub async fn wait_until<T>(&self, timeout: Duration, what: &str, mut pred: impl FnMut(&FakeKube) -> Option<T>) -> T {
        let mut changes = self.shared.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(t) = pred(self) {
                return t;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
        }
    }

    /// Every change after resourceVersion `rv`, in the order written: (resource, namespace,
    /// the object as written — as last stored for a deletion). A test replays them to check
    /// something held in every state the cluster went through, not only in those it happened
    /// to look at.
    pub fn changes_since(&self, rv: u64) -> Vec<(String, String, Value)> {
        let (events, _) = self.shared.store.events_since(rv).expect("history since rv kept");
        events.iter().map(|e| (e.resource.to_string(), e.namespace.clone(), Value::clone(&e.object))).collect()
    }

    // ---- counters ----

    /// Every request clients made, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Every request RBAC refused a client of `client_as` (403), in order: a right the client
    /// lacks shows here even where the client carries on without it.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.refusals.lock().unwrap().clone()
    }

    pub fn reset_counters(&self) {
        self.shared.requests.lock().unwrap().clear();
        for w in self.shared.watches.lock().unwrap().values_mut() {
            w.opened = 0;
        }
    }

    /// Requests with this verb on this resource (any subresource).
    pub fn count(&self, verb: &str, resource: &str) -> usize {
        self.requests().iter().filter(|r| r.verb == verb && r.resource == resource).count()
    }

    pub fn writes_for(&self, resource: &str) -> usize {
        self.requests().iter().filter(|r| r.is_write() && r.resource == resource).count()
    }

    pub fn reads_for(&self, resource: &str) -> usize {
        self.requests().iter().filter(|r| !r.is_write() && r.resource == resource).count()
    }

    pub fn writes(&self) -> usize {
        self.requests().iter().filter(|r| r.is_write()).count()
    }

    pub fn reads(&self) -> usize {
        self.requests().iter().filter(|r| !r.is_write()).count()
    }

    /// Requests naming an object whose name starts with `prefix` (a Job `build-7` and its pods
    /// `build-7-xxxxx`): what one build cost.
    pub fn requests_for_prefix(&self, prefix: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.name.as_deref().is_some_and(|n| n.starts_with(prefix))).collect()
    }

    pub fn writes_for_prefix(&self, prefix: &str) -> usize {
        self.requests_for_prefix(prefix).iter().filter(|r| r.is_write()).count()
    }

    /// Watch connections opened on a resource since the start (or `reset_counters`).
    pub fn watches_opened(&self, resource: &str) -> usize {
        self.shared.watches.lock().unwrap().get(resource).map_or(0, |w| w.opened)
    }

    /// Watch connections open now.
    pub fn watches_open(&self, resource: &str) -> usize {
        self.shared.watches.lock().unwrap().get(resource).map_or(0, |w| w.open)
    }

    // ---- faults ----

    /// Ends every open watch stream now (clients see the response end, as on a server restart).
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|e| *e += 1);
    }

    /// As an etcd compaction: open watches get an ERROR event with 410 Gone and end, and a watch
    /// from any resourceVersion handed out before now gets 410; a fresh list works again.
    pub fn expire_history(&self) {
        self.shared.store.expire_history();
    }

    /// Every follow log stream (open now or opened later) ends after `n` more lines, as when the
    /// apiserver or the connection resets; the client must reopen with `sinceTime`.
    pub fn reset_log_streams_after(&self, n: usize) {
        let mut f = self.shared.faults.lock().unwrap();
        f.log_reset = Some(n);
        f.log_reset_epoch += 1;
    }

    pub fn no_log_stream_resets(&self) {
        let mut f = self.shared.faults.lock().unwrap();
        f.log_reset = None;
        f.log_reset_epoch += 1;
    }

    /// Creates of `resource` are answered with `code` (403 Forbidden, 500 InternalError, 429,
    /// 503) `times` times, or always when `None`.
    pub fn refuse_creates(&self, resource: &str, code: u16, times: Option<usize>) {
        self.shared.faults.lock().unwrap().refuse.insert(resource.to_string(), (code, times));
    }

    pub fn stop_refusing_creates(&self, resource: &str) {
        self.shared.faults.lock().unwrap().refuse.remove(resource);
    }

    /// Gets, lists and watches of `resource` are answered with `code` (403: the client has no
    /// right to read it), until `stop_refusing_reads`.
    pub fn refuse_reads(&self, resource: &str, code: u16) {
        self.shared.faults.lock().unwrap().refuse_reads.insert(resource.to_string(), code);
    }

    pub fn stop_refusing_reads(&self, resource: &str) {
        self.shared.faults.lock().unwrap().refuse_reads.remove(resource);
    }

    /// Off: new pods stay Pending and unscheduled (running ones go on). On again: they start.
    pub fn set_kubelet_running(&self, on: bool) {
        self.shared.kubelet_on.store(on, Ordering::SeqCst);
        self.shared.store.poke();
    }

    /// Images containing `substring` cannot be pulled: ErrImagePull, then ImagePullBackOff.
    pub fn unpullable_image(&self, substring: &str) {
        self.shared.faults.lock().unwrap().unpullable.push(substring.to_string());
    }

    /// The next container with this name to start is killed by the "OOM killer" shortly after
    /// (300 ms): terminated, reason OOMKilled, exit code 137. One-shot: later ones run normally.
    pub fn oom_kill(&self, container: &str) {
        self.shared.faults.lock().unwrap().oom.insert(container.to_string());
    }

    /// The node evicts the pod: its processes are killed, phase Failed, reason Evicted.
    pub fn evict(&self, ns: &str, pod: &str) {
        kubelet::evict(&self.shared, ns, pod);
    }
}

/// What the real server answers when an object is gone at once (no finalizers, no grace): a
/// `Status` with `status: Success`. A deletion still pending answers the object itself, which is
/// how kube-rs tells `Either::Left` (deleting) from `Either::Right` (deleted).
pub(crate) fn deleted_status(r: &Res, obj: &Value) -> Value {
    let mut details = json!({"name": obj["metadata"]["name"], "kind": r.plural, "uid": obj["metadata"]["uid"]});
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

fn answer(r: &Res, d: store::Deletion) -> Value {
    match d {
        store::Deletion::Gone(o) => deleted_status(r, &o),
        store::Deletion::Pending(o) => o,
    }
}

/// Deletes with the real server's propagation: `Background` deletes the owner then its
/// dependents, `Foreground` marks the owner (finalizer `foregroundDeletion`) and deletes the
/// dependents, the garbage collector removing the owner once they are gone, `Orphan` strips the
/// owner reference from the dependents. Jobs default to orphaning (batch/v1 legacy); everything
/// else to Background. `grace` is a pod's grace period (its own when None). `dry_run`: the answer
/// without the writes.
pub(crate) fn delete(sh: &Shared, r: &'static Res, ns: &str, name: &str, policy: Option<&str>, grace: Option<i64>, dry_run: bool) -> Result<Value, ApiError> {
    if r.plural == "pods" {
        return kubelet::delete_pod(sh, ns, name, grace, dry_run).map(|d| answer(r, d));
    }
    let obj = sh.store.get(r, ns, name)?;
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let policy = policy.unwrap_or(if r.plural == "jobs" { "Orphan" } else { "Background" });
    if !matches!(policy, "Background" | "Foreground" | "Orphan") {
        return Err(ApiError::bad_request(format!("DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\"")));
    }
    if dry_run {
        if policy == "Foreground" {
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] = json!(store::now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let mut f = marked["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            f.push(json!("foregroundDeletion"));
            marked["metadata"]["finalizers"] = json!(f);
            return Ok(marked);
        }
        return sh.store.delete_with(r, ns, name, 0, true).map(|d| answer(r, d));
    }
    let pods = res("pods").expect("pods");
    let dependents: Vec<String> = if r.plural == "namespaces" {
        Vec::new()
    } else {
        sh.store.scan(pods, Some(ns), |p| owned_by(p, &uid).then(|| store::name_of(p).to_string()))
    };
    let deleted = match policy {
        "Background" => {
            let d = sh.store.delete_with(r, ns, name, 0, false)?;
            for p in &dependents {
                let _ = kubelet::delete_pod(sh, ns, p, None, false);
            }
            answer(r, d)
        }
        "Foreground" => {
            // The answer is the marked owner, as the real server's; the garbage collector
            // removes it when its dependents are gone.
            let marked = sh.store.modify(r, ns, name, |o| {
                let mut o = o.clone();
                if o["metadata"].get("deletionTimestamp").is_none() {
                    o["metadata"]["deletionTimestamp"] = json!(store::now_rfc3339());
                    o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                let mut f = o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                if !f.iter().any(|x| x == "foregroundDeletion") {
                    f.push(json!("foregroundDeletion"));
                }
                o["metadata"]["finalizers"] = json!(f);
                Ok(o)
            })?;
            for p in &dependents {
                let _ = kubelet::delete_pod(sh, ns, p, None, false);
            }
            Value::clone(&marked)
        }
        _ => {
            for p in &dependents {
                let _ = sh.store.modify(pods, ns, p, |o| {
                    let mut o = o.clone();
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                    }
                    Ok(o)
                });
            }
            answer(r, sh.store.delete_with(r, ns, name, 0, false)?)
        }
    };
    if r.plural == "namespaces" {
        // The namespace controller empties a deleted namespace.
        for kind in store::RESOURCES.iter().filter(|k| k.namespaced) {
            for o in sh.store.scan(kind, Some(name), |o| Some(store::name_of(o).to_string())) {
                let _ = delete(sh, kind, name, &o, Some("Background"), Some(0), false);
            }
        }
    }
    Ok(deleted)
}

pub(crate) fn owned_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
}
