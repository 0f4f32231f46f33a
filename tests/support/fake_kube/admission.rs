//! The create path every writer takes — clients through the API, the test helpers, the Job
//! controller's pods — in the real server's order: the name (a `generateName` is resolved first,
//! so admission messages name the pod as S08's do), the ServiceAccount plugin (mutating, so
//! first: a pod naming an account the namespace lacks is refused), PodSecurity, ResourceQuota,
//! then the store (defaults, uid, resourceVersion). A dry run stops before the write.

use serde_json::{json, Value};

use super::pod_security::Policy;
use super::store::{name_of, random_suffix, res_ns, ApiError, Res};
use super::Shared;

/// What a create answers: the object and the `Warning` texts to send with it.
pub(crate) struct Created {
    pub object: Value,
    pub warnings: Vec<String>,
}

pub(crate) fn create(sh: &Shared, r: &'static Res, ns: &str, mut obj: Value, dry_run: bool) -> Result<Created, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request was in an unknown format"));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if name_of(&obj).is_empty() {
        if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
            obj["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix(5)));
        }
    }
    let name = name_of(&obj).to_string();
    let mut warnings = vec![];
    if r.namespaced && !name.is_empty() {
        if let Ok(namespace) = sh.store.get(res_ns(), "", ns) {
            service_account(sh, r, ns, &obj, &name)?;
            pod_security(&namespace, r, &obj, &name, &mut warnings)?;
            super::quota::admit(sh, r, ns, &name)?;
        }
    }
    let object = sh.store.create_with(r, ns, obj, dry_run)?;
    Ok(Created { object, warnings })
}

/// The ServiceAccount admission plugin: a pod runs as an account that exists in its namespace.
/// `default` always does (the ServiceAccount controller makes it in every namespace).
fn service_account(sh: &Shared, r: &'static Res, ns: &str, obj: &Value, name: &str) -> Result<(), ApiError> {
    let account = obj["spec"]["serviceAccountName"].as_str().or(obj["spec"]["serviceAccount"].as_str()).unwrap_or("default");
    if r.plural != "pods" || account == "default" {
        return Ok(());
    }
    let accounts = super::store::res("serviceaccounts").expect("serviceaccounts");
    if sh.store.get(accounts, ns, account).is_err() {
        let why = format!("error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found");
        return Err(ApiError::forbidden(r, name, &why));
    }
    Ok(())
}

/// The pod template of a workload kind, if `r` is one.
fn template(r: &Res, obj: &Value) -> Option<(Value, Value)> {
    let t = match r.plural {
        "jobs" | "deployments" | "replicasets" | "statefulsets" | "daemonsets" => &obj["spec"]["template"],
        "cronjobs" => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    Some((t["metadata"].clone(), t["spec"].clone()))
}

/// A pod breaking the namespace's `enforce` level is refused; one breaking its `warn` level gets
/// a warning. A workload is never refused: each level its pod template breaks is a warning.
fn pod_security(namespace: &Value, r: &'static Res, obj: &Value, name: &str, warnings: &mut Vec<String>) -> Result<(), ApiError> {
    let enforce = Policy::of(namespace, "enforce");
    let warn = Policy::of(namespace, "warn").filter(|w| Some(w) != enforce.as_ref());
    if r.plural == "pods" {
        if let Some(v) = enforce.as_ref().and_then(|p| p.evaluate(&obj["metadata"], &obj["spec"])) {
            return Err(ApiError::forbidden(r, name, &format!("violates {v}")));
        }
        if let Some(v) = warn.as_ref().and_then(|p| p.evaluate(&obj["metadata"], &obj["spec"])) {
            warnings.push(format!("would violate {v}"));
        }
        return Ok(());
    }
    if let Some((meta, spec)) = template(r, obj) {
        for p in enforce.iter().chain(warn.iter()) {
            if let Some(v) = p.evaluate(&meta, &spec) {
                warnings.push(format!("would violate {v}"));
            }
        }
    }
    Ok(())
}
