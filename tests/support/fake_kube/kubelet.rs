//! The kubelet of the one node `fake-node`: runs the pods the scheduler bound to it, their init
//! containers in order and then their containers as host processes through
//! `builder_api::executor::process`, and reports every state change through the store so watches
//! see it. A pod deleted while it runs has its processes killed (exit 137, phase Failed) and is
//! then deleted again with grace 0, which removes it once its finalizers are gone (S04, S10).
//! Also serves the pod `log` subresource, since the logs are the kubelet's.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use builder_api::executor::process::{self, Pipe, ProcessEnd, ProcessSpec};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use super::logs::{format_ts, ContainerLog};
use super::store::{name_of, now_rfc3339, res, ApiError, Deletion};
use super::Shared;

pub const NODE: &str = "fake-node";
/// The real kubelet's cap on a termination message.
const MAX_TERMINATION_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    Deleted,
    Evicted,
}

/// A pod the kubelet is running.
#[derive(Clone)]
pub(crate) struct PodHandle {
    cancel: CancellationToken,
    cause: Arc<Mutex<Option<Kill>>>,
}

impl PodHandle {
    fn kill(&self, why: Kill) {
        self.cause.lock().unwrap().get_or_insert(why);
        self.cancel.cancel();
    }
    fn cause(&self) -> Option<Kill> {
        *self.cause.lock().unwrap()
    }
}

fn pods() -> &'static super::store::Res {
    res("pods").expect("pods")
}

fn terminal(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changes = sh.store.subscribe();
    // Pods this kubelet has started, by uid: a pod runs once.
    let mut started: HashSet<String> = HashSet::new();
    loop {
        changes.borrow_and_update();
        // Read in place: (uid, the namespace and name of a pod bound here and not started yet).
        let all = sh.store.scan(pods(), None, |pod| {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let fresh = pod["spec"]["nodeName"] == NODE && !started.contains(&uid) && pod["metadata"].get("deletionTimestamp").is_none() && !terminal(pod);
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
            Some((uid, fresh.then(|| (ns.to_string(), name_of(pod).to_string()))))
        });
        // Switched off: the node is not Ready, nothing new starts (running pods go on).
        let on = sh.kubelet_on.load(Ordering::SeqCst);
        for (uid, (ns, name)) in all.iter().filter(|_| on).filter_map(|(uid, fresh)| Some((uid, fresh.as_ref()?))) {
            let Ok(pod) = sh.store.get(pods(), ns, name) else { continue };
            started.insert(uid.clone());
            let handle = PodHandle { cancel: sh.shutdown.child_token(), cause: Arc::new(Mutex::new(None)) };
            sh.pods.lock().unwrap().insert(uid.clone(), handle.clone());
            tokio::spawn(run_pod(sh.clone(), pod, handle));
        }
        // Pods removed outright while running: kill their processes.
        let live: HashSet<&str> = all.iter().map(|(uid, _)| uid.as_str()).collect();
        for (uid, h) in sh.pods.lock().unwrap().iter() {
            if !live.contains(uid.as_str()) {
                h.kill(Kill::Deleted);
            }
        }
        started.retain(|uid| live.contains(uid.as_str()));
        tokio::select! {
            _ = changes.changed() => {}
            _ = sh.shutdown.cancelled() => return,
        }
    }
}

/// What the real server does on a pod delete: a pod running on the node is marked with its grace
/// period (`grace`, else its `terminationGracePeriodSeconds`) and the kubelet kills its
/// processes and confirms with grace 0; a pod that is not running (unscheduled, finished) gets
/// grace 0 at once. Either way finalizers hold the object until they are removed.
pub(crate) fn delete_pod(sh: &Shared, ns: &str, name: &str, grace: Option<i64>, dry_run: bool) -> Result<Deletion, ApiError> {
    let pod = sh.store.get(pods(), ns, name)?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    // Held across the write: a pod whose run ends meanwhile still sees the mark and confirms.
    let running = sh.pods.lock().unwrap();
    let handle = running.get(&uid).cloned();
    let grace = match &handle {
        Some(_) if !terminal(&pod) => grace.unwrap_or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)),
        _ => 0,
    };
    let d = sh.store.delete_with(pods(), ns, name, grace, dry_run)?;
    if let (Some(h), false) = (handle, dry_run) {
        h.kill(Kill::Deleted);
    }
    Ok(d)
}

pub(crate) fn evict(sh: &Shared, ns: &str, name: &str) {
    let Ok(pod) = sh.store.get(pods(), ns, name) else { return };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    if let Some(h) = sh.pods.lock().unwrap().get(&uid) {
        h.kill(Kill::Evicted);
    }
    update_status(sh, ns, name, |s| {
        s["phase"] = json!("Failed");
        s["reason"] = json!("Evicted");
        s["message"] = json!("The node was low on resource: memory.");
        let mut conds = s["conditions"].as_array().cloned().unwrap_or_default();
        conds.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
            "message": "The node was low on resource: memory.", "lastTransitionTime": now_rfc3339()}));
        s["conditions"] = json!(conds);
    });
}

fn update_status(sh: &Shared, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
    let _ = sh.store.modify(pods(), ns, name, |o| {
        let mut o = o.clone();
        if !o["status"].is_object() {
            o["status"] = json!({});
        }
        f(&mut o["status"]);
        Ok(o)
    });
}

/// One pod's run: everything it needs to know about itself.
struct PodCtx {
    sh: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    volumes: HashMap<String, PathBuf>,
    handle: PodHandle,
}

impl PodCtx {
    fn status(&self, f: impl FnOnce(&mut Value)) {
        update_status(&self.sh, &self.ns, &self.name, f)
    }
    /// Sets the status of container `idx` in `key` (`initContainerStatuses`/`containerStatuses`).
    /// The update that terminates the last container (or fails an init container) carries the
    /// pod's phase too, as one kubelet status sync does: a watcher never sees a terminated
    /// container in a pod that still says Running.
    fn container(&self, key: &str, idx: usize, cs: Value) {
        let cause = self.handle.cause();
        self.status(|s| {
            if let Some(list) = s[key].as_array_mut() {
                if idx < list.len() {
                    list[idx] = cs;
                }
            }
            if cause == Some(Kill::Deleted) && s[key][idx]["state"].get("terminated").is_some() {
                // Killed for a deletion (restartPolicy Never): the pod fails with the kill.
                if !matches!(s["phase"].as_str(), Some("Succeeded" | "Failed")) {
                    s["phase"] = json!("Failed");
                }
                return;
            }
            if cause.is_some() {
                return;
            }
            let code = |c: &Value| c["state"]["terminated"]["exitCode"].as_i64();
            let failed_init = key == "initContainerStatuses" && code(&s[key][idx]).is_some_and(|c| c != 0);
            let mains = s["containerStatuses"].as_array().cloned().unwrap_or_default();
            let all_done = key == "containerStatuses" && mains.iter().all(|c| code(c).is_some());
            if failed_init || all_done {
                let ok = !failed_init && mains.iter().all(|c| code(c) == Some(0));
                s["phase"] = json!(if ok { "Succeeded" } else { "Failed" });
                set_conditions(s, !failed_init, false, "PodCompleted");
            } else if key == "containerStatuses" && cs_running(&s[key][idx]) {
                s["phase"] = json!("Running");
                let ready = mains.iter().all(|c| c["ready"] == true);
                set_conditions(s, true, ready, "ContainersNotReady");
            }
        })
    }
    /// A phase change, unless the pod was killed (an eviction has already said Failed).
    fn phase(&self, phase: &str) {
        if self.handle.cause().is_none() {
            self.status(|s| s["phase"] = json!(phase));
        }
    }
}

fn cs_running(cs: &Value) -> bool {
    cs["state"].get("running").is_some()
}

/// The pod conditions the kubelet keeps next to PodScheduled.
fn set_conditions(s: &mut Value, initialized: bool, ready: bool, not_ready_reason: &str) {
    let now = now_rfc3339();
    let mut conds: Vec<Value> = s["conditions"].as_array().cloned().unwrap_or_default();
    for (kind, on) in [("Initialized", initialized), ("ContainersReady", ready), ("Ready", ready)] {
        let mut c = json!({"type": kind, "status": if on { "True" } else { "False" }, "lastTransitionTime": now});
        if !on && kind != "Initialized" {
            c["reason"] = json!(not_ready_reason);
        }
        match conds.iter_mut().find(|x| x["type"] == kind) {
            Some(x) if x["status"] == c["status"] => {}
            Some(x) => *x = c,
            None => conds.push(c),
        }
    }
    s["conditions"] = json!(conds);
}

fn base_status(c: &Value, ready: bool, started: bool, state: Value) -> Value {
    json!({
        "name": c["name"], "image": c["image"], "imageID": "", "ready": ready, "restartCount": 0,
        "started": started, "state": state,
    })
}

fn waiting(c: &Value, reason: &str, message: Option<&str>) -> Value {
    let mut w = json!({"reason": reason});
    if let Some(m) = message {
        w["message"] = json!(m);
    }
    base_status(c, false, false, json!({"waiting": w}))
}

async fn run_pod(sh: Arc<Shared>, pod: Value, handle: PodHandle) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    let name = name_of(&pod).to_string();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let dir = sh.root.join("pods").join(&uid);
    let mut ctx = PodCtx { sh: sh.clone(), ns, name, uid, dir, volumes: HashMap::new(), handle };
    let inits = pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
    let mains = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let first_wait = if inits.is_empty() { "ContainerCreating" } else { "PodInitializing" };
    ctx.status(|s| {
        s["phase"] = json!("Pending");
        s["hostIP"] = json!("10.0.0.1");
        s["startTime"] = json!(now_rfc3339());
        if !inits.is_empty() {
            s["initContainerStatuses"] = json!(inits.iter().map(|c| waiting(c, "PodInitializing", None)).collect::<Vec<_>>());
        }
        s["containerStatuses"] = json!(mains.iter().map(|c| waiting(c, first_wait, None)).collect::<Vec<_>>());
    });
    let ok = prepare_volumes(&mut ctx, &pod).await;
    if ok {
        let mut failed = false;
        for (i, c) in inits.iter().enumerate() {
            match run_container(&ctx, c, "initContainerStatuses", i).await {
                Some(0) => {}
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed && ctx.handle.cause().is_none() {
            ctx.status(|s| s["podIP"] = json!("10.244.0.10"));
            let runs = mains.iter().enumerate().map(|(i, c)| run_container(&ctx, c, "containerStatuses", i));
            // Phase Running as soon as the first container runs is set inside run_container.
            let codes = futures_util::future::join_all(runs).await;
            failed = codes.iter().any(|c| *c != Some(0));
        }
        ctx.phase(if failed { "Failed" } else { "Succeeded" });
    }
    if ctx.handle.cause() == Some(Kill::Deleted) {
        // Killed before any container ran (or between them): the pod fails all the same.
        ctx.status(|s| {
            if !matches!(s["phase"].as_str(), Some("Succeeded" | "Failed")) {
                s["phase"] = json!("Failed");
            }
        });
    }
    // Done: forget the pod. A pod marked for deletion is deleted again with grace 0, now that its
    // processes are dead: it goes when its finalizers have gone too.
    let mut running = sh.pods.lock().unwrap();
    running.remove(&ctx.uid);
    if let Ok(p) = sh.store.get(pods(), &ctx.ns, &ctx.name) {
        if p["metadata"]["uid"] == ctx.uid.as_str() && p["metadata"].get("deletionTimestamp").is_some() {
            let _ = sh.store.delete_with(pods(), &ctx.ns, &ctx.name, 0, false);
        }
    }
}

/// Makes a host directory per volume. A Secret or ConfigMap volume whose object is missing keeps
/// the pod ContainerCreating until it appears (or the pod is killed). Returns false when killed.
async fn prepare_volumes(ctx: &mut PodCtx, pod: &Value) -> bool {
    let sh = ctx.sh.clone();
    let mut changes = sh.store.subscribe();
    for v in pod["spec"]["volumes"].as_array().cloned().unwrap_or_default() {
        let vname = v["name"].as_str().unwrap_or("").to_string();
        let own = ctx.dir.join("volumes").join(&vname);
        let host = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            sh.root.join("pvc").join(&ctx.ns).join(claim)
        } else if let Some(p) = v["hostPath"]["path"].as_str() {
            PathBuf::from(p)
        } else if v.get("secret").is_some() || v.get("configMap").is_some() {
            let (kind, obj_name) = match v["secret"]["secretName"].as_str() {
                Some(s) => ("secrets", s.to_string()),
                None => ("configmaps", v["configMap"]["name"].as_str().unwrap_or("").to_string()),
            };
            loop {
                changes.borrow_and_update();
                if let Ok(obj) = sh.store.get(res(kind).expect("kind"), &ctx.ns, &obj_name) {
                    let _ = std::fs::create_dir_all(&own);
                    for (k, val) in obj["data"].as_object().cloned().unwrap_or_default() {
                        let s = val.as_str().unwrap_or("");
                        let bytes = if kind == "secrets" { b64(s) } else { s.as_bytes().to_vec() };
                        let _ = std::fs::write(own.join(k), bytes);
                    }
                    break;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = ctx.handle.cancel.cancelled() => return false,
                }
            }
            own
        } else {
            own
        };
        let _ = std::fs::create_dir_all(&host);
        ctx.volumes.insert(vname, host);
    }
    true
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
}

/// Resolves a container's env as the kubelet does; Err is the CreateContainerConfigError message.
fn resolve_env(sh: &Shared, ns: &str, pod_name: &str, pod_uid: &str, c: &Value) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        let vf = &e["valueFrom"];
        let value = if let Some(r) = vf.get("secretKeyRef").or(vf.get("configMapKeyRef")) {
            let secret = vf.get("secretKeyRef").is_some();
            let (kind, label) = if secret { ("secrets", "Secret") } else { ("configmaps", "ConfigMap") };
            let obj_name = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            let optional = r["optional"] == true;
            match sh.store.get(res(kind).expect("kind"), ns, obj_name) {
                Err(_) if optional => continue,
                Err(_) => return Err(format!("{} \"{obj_name}\" not found", if secret { "secret" } else { "configmap" })),
                Ok(obj) => match obj["data"][key].as_str() {
                    Some(v) if secret => String::from_utf8_lossy(&b64(v)).into_owned(),
                    Some(v) => v.to_string(),
                    None if optional => continue,
                    None => return Err(format!("couldn't find key {key} in {label} {ns}/{obj_name}")),
                },
            }
        } else if let Some(path) = vf["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => ns.to_string(),
                "metadata.uid" => pod_uid.to_string(),
                "spec.nodeName" => NODE.to_string(),
                "status.podIP" => "10.244.0.10".to_string(),
                _ => String::new(),
            }
        } else {
            e["value"].as_str().unwrap_or("").to_string()
        };
        env.push((name, value));
    }
    Ok(process::expand_env(&env))
}

/// The bind-mount stand-in: a path at or under a mountPath becomes the host path. One exception
/// keeps host tools usable: a path below a mount that exists on the host as written and not in
/// the volume (a toolchain in the test's temp dir under a `/tmp` mount) stays as written, since
/// host paths stand in for the image's contents.
fn map_path(mounts: &[(String, PathBuf)], s: &str) -> String {
    for (mp, host) in mounts {
        if s == mp {
            return host.to_string_lossy().into_owned();
        }
        if let Some(rest) = s.strip_prefix(mp.as_str()).filter(|r| r.starts_with('/') || mp.ends_with('/')) {
            let mapped = format!("{}/{}", host.to_string_lossy().trim_end_matches('/'), rest.trim_start_matches('/'));
            if Path::new(s).exists() && !Path::new(&mapped).exists() {
                return s.to_string();
            }
            return mapped;
        }
    }
    s.to_string()
}

/// Runs one container to its end. Returns its exit code, or None when it never ran to an exit
/// (killed while waiting, image never pulled).
async fn run_container(ctx: &PodCtx, c: &Value, key: &str, idx: usize) -> Option<i32> {
    let sh = &ctx.sh;
    let cname = c["name"].as_str().unwrap_or("").to_string();
    let image = c["image"].as_str().unwrap_or("").to_string();
    let is_main = key == "containerStatuses";
    let cancel = &ctx.handle.cancel;
    if cancel.is_cancelled() {
        return None;
    }

    let unpullable = sh.faults.lock().unwrap().unpullable.iter().any(|s| image.contains(s.as_str()));
    if unpullable {
        let msg = format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found");
        ctx.container(key, idx, waiting(c, "ErrImagePull", Some(&msg)));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled() => return None,
        }
        ctx.container(key, idx, waiting(c, "ImagePullBackOff", Some(&format!("Back-off pulling image \"{image}\""))));
        cancel.cancelled().await;
        return None;
    }

    let mut changes = sh.store.subscribe();
    let env = loop {
        changes.borrow_and_update();
        match resolve_env(sh, &ctx.ns, &ctx.name, &ctx.uid, c) {
            Ok(env) => break env,
            Err(msg) => ctx.container(key, idx, waiting(c, "CreateContainerConfigError", Some(&msg))),
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = cancel.cancelled() => return None,
        }
    };

    // Mounts, longest mountPath first; the termination message file is one more "mount".
    let cdir = ctx.dir.join("containers").join(&cname);
    let _ = std::fs::create_dir_all(&cdir);
    let mut mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let host = ctx.volumes.get(m["name"].as_str()?)?;
            let host = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
                Some(sub) => host.join(sub),
                None => host.clone(),
            };
            let _ = std::fs::create_dir_all(&host);
            Some((m["mountPath"].as_str()?.trim_end_matches('/').to_string(), host))
        })
        .collect();
    mounts.sort_by_key(|(mp, _)| std::cmp::Reverse(mp.len()));
    let tm_path = c["terminationMessagePath"].as_str().unwrap_or("/dev/termination-log").to_string();
    let tm_host = if map_path(&mounts, &tm_path) != tm_path { PathBuf::from(map_path(&mounts, &tm_path)) } else { cdir.join("termination-log") };
    // As the kubelet, which bind-mounts an empty file there: the file exists before the start.
    if let Some(parent) = tm_host.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&tm_host, b"");
    mounts.push((tm_path.clone(), tm_host.clone()));

    let strs = |k: &str| c[k].as_array().map(|a| a.iter().filter_map(|s| s.as_str()).map(String::from).collect::<Vec<_>>()).unwrap_or_default();
    // Env values are mapped; `$(VAR)` in command and args expands from the mapped env (so a path
    // reached through a variable is a host path even inside a `sh -c` script), and an argument
    // without a reference is mapped itself. No path is mapped twice.
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, map_path(&mounts, &v))).collect();
    // No image entrypoint here: without `command`, `args` is the whole argv.
    let argv: Vec<String> = strs("command")
        .into_iter()
        .chain(strs("args"))
        .map(|a| {
            let expanded = builder_api::plan::expand(&a, &env);
            if expanded == a { map_path(&mounts, &a) } else { expanded }
        })
        .collect();
    // Kubernetes expands `$(VAR)` in command, args and env values only, never in `workingDir`;
    // the runtime refuses a relative one.
    let working_dir = c["workingDir"].as_str().filter(|w| !w.is_empty());
    let bad_cwd = working_dir.filter(|w| !w.starts_with('/')).map(|w| {
        format!(
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: \
             the working directory '{w}' is invalid, it needs to be an absolute path: unknown"
        )
    });
    let workdir = match working_dir {
        Some(w) if bad_cwd.is_none() => PathBuf::from(map_path(&mounts, w)),
        _ => cdir.join("rootfs"),
    };
    let _ = std::fs::create_dir_all(&workdir);

    let log = sh.logs.start(&ctx.uid, &cname);
    let started = now_rfc3339();
    let container_id = format!("containerd://{}", super::store::random_suffix(32));
    let mut running = base_status(c, is_main, true, json!({"running": {"startedAt": started}}));
    running["containerID"] = json!(container_id);
    ctx.container(key, idx, running);

    let oomed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctoken = cancel.child_token();
    // One-shot: the next container with that name is killed, later ones run.
    if sh.faults.lock().unwrap().oom.remove(&cname) {
        let (t, o) = (ctoken.clone(), oomed.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            o.store(true, Ordering::SeqCst);
            t.cancel();
        });
    }
    let (code, reason, start_error) = match argv.split_first() {
        _ if bad_cwd.is_some() => (128, "StartError", bad_cwd),
        None => (128, "StartError", Some("no command specified".to_string())),
        Some((prog, args)) => {
            let program = if prog == "kiln" { sh.opts.kiln_binary.clone().unwrap_or_else(|| PathBuf::from("kiln")) } else { PathBuf::from(prog) };
            let spec = ProcessSpec { program, args: args.to_vec(), env: env.clone(), workdir, nice: 0 };
            let pipe = log_pipe(log.clone());
            let far = tokio::time::Instant::now() + Duration::from_secs(7 * 86400);
            match process::run(&spec, &pipe, &ctoken, far).await {
                Ok(f) => match f.end {
                    ProcessEnd::Exited(st) => {
                        let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9));
                        (code, if code == 0 { "Completed" } else { "Error" }, None)
                    }
                    _ if oomed.load(Ordering::SeqCst) => (137, "OOMKilled", None),
                    _ => (137, "Error", None),
                },
                Err(e) => (128, "StartError", Some(format!("failed to create containerd task: exec: \"{prog}\": {e}"))),
            }
        }
    };
    log.terminate();
    if let (128, "StartError", Some(e)) = (code, reason, &start_error) {
        // Shown with the failing test's output: the usual cause is a wrong path in a Job template.
        eprintln!("fake kubelet: pod {}/{} container {cname}: {e}", ctx.ns, ctx.name);
    }

    let mut message = start_error.unwrap_or_else(|| termination_message(&tm_host));
    if message.is_empty() && code != 0 && c["terminationMessagePolicy"] == "FallbackToLogsOnError" {
        message = log_tail(&log);
    }
    let mut term = json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_rfc3339(), "containerID": container_id});
    if !message.is_empty() {
        term["message"] = json!(message);
    }
    let mut done = base_status(c, !is_main && code == 0, false, json!({"terminated": term}));
    done["containerID"] = json!(container_id);
    ctx.container(key, idx, done);
    Some(code)
}

fn termination_message(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let bytes = &bytes[..bytes.len().min(MAX_TERMINATION_MESSAGE)];
    String::from_utf8_lossy(bytes).into_owned()
}

/// FallbackToLogsOnError: the last 80 lines, at most 2048 bytes.
fn log_tail(log: &ContainerLog) -> String {
    let lines = log.since(0);
    let tail: Vec<String> = lines.iter().rev().take(80).rev().map(|(_, l)| l.clone()).collect();
    let text = tail.join("\n");
    let cut = text.len().saturating_sub(2048);
    let mut start = cut;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Both output streams go line by line into the container's log, stamped when read.
fn log_pipe(log: Arc<ContainerLog>) -> Pipe {
    Box::new(move |_stream, reader| {
        let log = log.clone();
        Box::pin(async move {
            let mut r = tokio::io::BufReader::new(reader);
            let mut buf = Vec::new();
            let mut last = None;
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if !line.trim().is_empty() {
                            last = Some(line.clone());
                        }
                        log.push(line);
                    }
                }
            }
            last
        })
    })
}

/// `GET pods/{name}/log`.
pub(crate) fn log_response(sh: Arc<Shared>, ns: &str, name: &str, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let pod = sh.store.get(pods(), ns, name)?;
    let names = |k: &str| pod["spec"][k].as_array().map(|a| a.iter().filter_map(|c| c["name"].as_str()).map(String::from).collect::<Vec<_>>()).unwrap_or_default();
    let (mains, inits) = (names("containers"), names("initContainers"));
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.clone(),
        None if mains.len() == 1 => mains[0].clone(),
        None => {
            let mut m = format!("a container name must be specified for pod {name}, choose one of: [{}]", mains.join(" "));
            if !inits.is_empty() {
                m.push_str(&format!(" or one of the init containers: [{}]", inits.join(" ")));
            }
            return Err(ApiError::bad_request(m));
        }
    };
    if !mains.contains(&container) && !inits.contains(&container) {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let Some(log) = sh.logs.get(uid, &container) else {
        let reason = ["initContainerStatuses", "containerStatuses"]
            .iter()
            .filter_map(|k| pod["status"][*k].as_array())
            .flatten()
            .find(|cs| cs["name"] == container.as_str())
            .and_then(|cs| cs["state"]["waiting"]["reason"].as_str())
            .unwrap_or(if inits.is_empty() { "ContainerCreating" } else { "PodInitializing" });
        let why = match reason {
            "ErrImagePull" => "trying and failing to pull image",
            "ImagePullBackOff" => "image can't be pulled",
            r => r,
        };
        return Err(ApiError::bad_request(format!("container \"{container}\" in pod \"{name}\" is waiting to start: {why}")));
    };
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let (follow, timestamps) = (flag("follow"), flag("timestamps"));
    let mut start = 0;
    if let Some(t) = q.get("sinceTime") {
        let t = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| ApiError::bad_request(format!("sinceTime: {e}")))?;
        start = log.index_at(t.with_timezone(&chrono::Utc));
    }
    if let Some(s) = q.get("sinceSeconds").and_then(|s| s.parse::<i64>().ok()) {
        start = start.max(log.index_at(chrono::Utc::now() - chrono::Duration::seconds(s)));
    }
    if let Some(n) = q.get("tailLines").and_then(|s| s.parse::<usize>().ok()) {
        start = start.max(log.len().saturating_sub(n));
    }
    let fmt = move |(t, l): &(chrono::DateTime<chrono::Utc>, String)| if timestamps { format!("{} {l}\n", format_ts(t)) } else { format!("{l}\n") };
    if !follow {
        let text: String = log.since(start).iter().map(fmt).collect();
        return Ok(Response::builder().status(200).header("content-type", "text/plain").body(text.into()).expect("response"));
    }
    let (tx, resp) = super::api::streamed("text/plain");
    tokio::spawn(async move {
        let mut state = log.subscribe();
        let mut epoch = u64::MAX;
        let mut left: Option<usize> = None;
        let mut idx = start;
        loop {
            let (_, terminated) = *state.borrow_and_update();
            {
                let f = sh.faults.lock().unwrap();
                if f.log_reset_epoch != epoch {
                    epoch = f.log_reset_epoch;
                    left = f.log_reset;
                }
            }
            for entry in log.since(idx) {
                if left == Some(0) {
                    return;
                }
                if tx.send(fmt(&entry).into()).await.is_err() {
                    return;
                }
                idx += 1;
                if let Some(n) = left.as_mut() {
                    *n -= 1;
                }
            }
            if left == Some(0) {
                // The "reset": the response just ends, as when the connection drops.
                return;
            }
            if terminated && idx >= log.len() {
                return;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                _ = sh.shutdown.cancelled() => return,
            }
        }
    });
    Ok(resp)
}
