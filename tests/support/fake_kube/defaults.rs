//! What the real apiserver writes into an object on create beyond what the client sent, as the
//! recordings show it (S14 `diff.md`): a Job's selector, counts, modes and controller labels; a
//! pod spec's (and a pod template's) container and scheduling defaults; and for a Pod what its
//! admission plugins add (service account, tolerations, priority) and the QoS class it computes.
//! The store applies them on every create, so the pods the Job controller makes get them too.

use serde_json::{json, Value};

use super::store::Res;

pub(crate) fn apply(res: &Res, obj: &mut Value) {
    match res.plural {
        "namespaces" => namespace(obj),
        "pods" => pod(obj),
        "jobs" => job(obj),
        "persistentvolumeclaims" => claim(obj),
        "services" => service(obj),
        "deployments" => deployment(obj),
        _ => {}
    }
}

/// What an update (a PUT, or a patch, which the server turns into one) may not change, and
/// what it keeps from the stored object when the client leaves it out: a Service's cluster IP
/// (`spec.clusterIP` and `clusterIPs` "may not change once set", 422; left out, the stored one).
pub(crate) fn on_update(res: &Res, old: &Value, new: &mut Value) -> Result<(), super::store::ApiError> {
    if res.plural != "services" || !new["spec"].is_object() {
        return Ok(());
    }
    for key in ["clusterIP", "clusterIPs"] {
        match new["spec"].get(key) {
            None | Some(Value::Null) => new["spec"][key] = old["spec"][key].clone(),
            Some(v) if *v != old["spec"][key] && old["spec"][key] != "None" => {
                let name = old["metadata"]["name"].as_str().unwrap_or("");
                return Err(super::store::ApiError::invalid(res, name, format!("spec.{key}: Invalid value: {v}: field is immutable")));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A Service as the server stores it (`SetDefaults_Service` and the IP allocator): type
/// ClusterIP with a cluster IP from the service range (unless headless, `clusterIP: None`),
/// one IPv4 family, session affinity None, traffic policy Cluster, each port TCP with its
/// `targetPort` the port; the status an empty load balancer.
fn service(svc: &mut Value) {
    if !svc["spec"].is_object() {
        svc["spec"] = json!({});
    }
    let spec = &mut svc["spec"];
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if spec["clusterIP"].is_null() || spec["clusterIP"] == "" {
        // From 10.96.0.0/12, as kubeadm's default range; the uid makes it distinct enough.
        let n = svc["metadata"]["uid"].as_str().unwrap_or("").bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        svc["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", (n >> 8) % 256, n % 254 + 1));
    }
    let spec = &mut svc["spec"];
    let ip = spec["clusterIP"].clone();
    default(spec, "clusterIPs", json!([ip]));
    default(spec, "ipFamilies", json!(["IPv4"]));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        default(p, "protocol", json!("TCP"));
        let port = p["port"].clone();
        default(p, "targetPort", port);
    }
    svc["status"] = json!({"loadBalancer": {}});
}

/// `SetDefaults_Deployment`: one replica, the RollingUpdate strategy at 25 %/25 %, ten
/// ReplicaSets of history, a progress deadline of 600 s, and the pod template's defaults.
fn deployment(d: &mut Value) {
    if !d["spec"].is_object() {
        return;
    }
    let spec = &mut d["spec"];
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    default(spec, "strategy", json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}));
    pod_spec(&mut spec["template"]["spec"]);
}

/// Sets `obj[key]` when it is absent (or null), as Go defaulting fills a nil field.
fn default(obj: &mut Value, key: &str, v: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = v;
    }
}

fn namespace(ns: &mut Value) {
    let name = ns["metadata"]["name"].clone();
    if !ns["metadata"]["labels"].is_object() {
        ns["metadata"]["labels"] = json!({});
    }
    ns["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    if !ns["spec"].is_object() {
        ns["spec"] = json!({});
    }
    default(&mut ns["spec"], "finalizers", json!(["kubernetes"]));
    ns["status"] = json!({"phase": "Active"});
}

/// `Always` for `:latest` or an untagged image, `IfNotPresent` for a tag or a digest.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let policy = pull_policy(c["image"].as_str().unwrap_or(""));
    default(c, "imagePullPolicy", json!(policy));
    // An empty `value` is not serialised (omitempty): the env var comes back as just its name.
    // (`get_mut`, not indexing: indexing a missing key would add it as null.)
    for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
        if e.get("value").is_some_and(|v| v == "") {
            if let Some(m) = e.as_object_mut() {
                m.remove("value");
            }
        }
    }
    for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        default(p, "protocol", json!("TCP"));
    }
}

fn containers_mut(spec: &mut Value) -> Vec<&mut Value> {
    let Some(m) = spec.as_object_mut() else { return Vec::new() };
    let mut out = Vec::new();
    for (k, v) in m.iter_mut() {
        if k == "initContainers" || k == "containers" {
            out.extend(v.as_array_mut().into_iter().flatten());
        }
    }
    out
}

/// `SetDefaults_PodSpec` and `SetDefaults_Container`: for pods and pod templates alike.
fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for c in containers_mut(spec) {
        container(c);
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
}

fn pod(p: &mut Value) {
    p["metadata"]["generation"] = json!(1);
    let spec = &mut p["spec"];
    pod_spec(spec);
    if spec.is_object() {
        // SetDefaults_Pod: requests default to limits.
        for c in containers_mut(spec) {
            if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
                for (k, v) in limits {
                    if c["resources"]["requests"].get(&k).is_none() {
                        c["resources"]["requests"][k] = v;
                    }
                }
            }
        }
        default(spec, "enableServiceLinks", json!(true));
        // The ServiceAccount, DefaultTolerationSeconds and Priority admission plugins.
        default(spec, "serviceAccountName", json!("default"));
        spec["serviceAccount"] = spec["serviceAccountName"].clone();
        let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            if !tolerations.iter().any(|t| t["key"] == key) {
                tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
        spec["tolerations"] = json!(tolerations);
        default(spec, "priority", json!(0));
        default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    let qos = qos_class(&p["spec"]);
    p["status"] = json!({"phase": "Pending", "qosClass": qos});
}

/// A resource quantity (`100m`, `1`, `1536Mi`, `2G`, `1e3`) as a number of units.
pub(crate) fn quantity(v: &Value) -> Option<f64> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => return n.as_f64(),
        _ => return None,
    };
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse::<f64>().ok()
}

/// `Guaranteed` when every container's cpu and memory limits equal its requests, `BestEffort`
/// when none sets any, `Burstable` otherwise — as the apiserver computes `status.qosClass`.
pub(crate) fn qos_class(spec: &Value) -> &'static str {
    let all: Vec<&Value> = ["initContainers", "containers"].iter().filter_map(|k| spec[*k].as_array()).flatten().collect();
    let set = |c: &Value, side: &str, r: &str| c["resources"][side].get(r).and_then(quantity);
    let any = all.iter().any(|c| ["requests", "limits"].iter().any(|side| ["cpu", "memory"].iter().any(|r| set(c, side, r).is_some())));
    if !any {
        return "BestEffort";
    }
    let guaranteed = !all.is_empty()
        && all.iter().all(|c| {
            ["cpu", "memory"].iter().all(|r| match (set(c, "limits", r), set(c, "requests", r).or(set(c, "limits", r))) {
                (Some(l), Some(q)) => (l - q).abs() < 1e-9,
                _ => false,
            })
        });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

fn job(j: &mut Value) {
    let uid = j["metadata"]["uid"].clone();
    let name = j["metadata"]["name"].clone();
    if !j["spec"].is_object() {
        return;
    }
    let spec = &mut j["spec"];
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    if spec["backoffLimitPerIndex"].is_null() {
        default(spec, "backoffLimit", json!(6));
    }
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let replacement = if spec["podFailurePolicy"].is_null() { "TerminatingOrFailed" } else { "Failed" };
    default(spec, "podReplacementPolicy", json!(replacement));
    if spec["manualSelector"] != true {
        spec["manualSelector"] = json!(false);
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        if !spec["template"]["metadata"]["labels"].is_object() {
            spec["template"]["metadata"]["labels"] = json!({});
        }
        let labels = &mut spec["template"]["metadata"]["labels"];
        labels["batch.kubernetes.io/controller-uid"] = uid.clone();
        labels["batch.kubernetes.io/job-name"] = name.clone();
        labels["controller-uid"] = uid;
        labels["job-name"] = name;
    }
    pod_spec(&mut spec["template"]["spec"]);
}

/// Claims are created Bound (the fake has no PV binder: every claim gets a volume at once).
fn claim(c: &mut Value) {
    let uid = c["metadata"]["uid"].as_str().unwrap_or("").to_string();
    if !c["spec"].is_object() {
        c["spec"] = json!({});
    }
    default(&mut c["spec"], "volumeMode", json!("Filesystem"));
    default(&mut c["spec"], "volumeName", json!(format!("pvc-{uid}")));
    let modes = c["spec"]["accessModes"].clone();
    let storage = c["spec"]["resources"]["requests"]["storage"].clone();
    let mut status = json!({"phase": "Bound"});
    if !modes.is_null() {
        status["accessModes"] = modes;
    }
    if !storage.is_null() {
        status["capacity"] = json!({"storage": storage});
    }
    c["status"] = status;
}
