//! ResourceQuota: object counts (`count/jobs.batch`, `count/pods` and the legacy `pods`,
//! `configmaps`, `secrets`, `persistentvolumeclaims`, `resourcequotas`). Admission refuses a create
//! that would exceed a quota with the real plugin's 403 body (S11) — the same before and after the
//! quota's status is filled in, since the count is taken at admission — and no Event. The quota
//! controller's side (`status.hard`, `status.used`) is kept by `refresh`, which the garbage
//! collector task runs when objects of a namespace with quotas change. Compute-resource quotas
//! (`requests.cpu`, `limits.memory`, …) are not modelled.

use serde_json::{json, Map, Value};

use super::store::{name_of, res, ApiError, Res};
use super::Shared;

/// The quota keys that count objects of `r`.
fn keys(r: &Res) -> Vec<String> {
    let mut k = vec![if r.group.is_empty() { format!("count/{}", r.plural) } else { format!("count/{}.{}", r.plural, r.group) }];
    if matches!(r.plural, "pods" | "configmaps" | "secrets" | "persistentvolumeclaims" | "resourcequotas") {
        k.push(r.plural.to_string());
    }
    k
}

/// The resource a quota key counts.
fn counted(key: &str) -> Option<&'static Res> {
    let plural = key.strip_prefix("count/").unwrap_or(key);
    let found = super::store::RESOURCES.iter().find(|r| r.namespaced && (r.plural == plural || format!("{}.{}", r.plural, r.group) == plural))?;
    (key.starts_with("count/") || keys(found).iter().any(|k| k == key)).then_some(found)
}

/// Objects of `r` in `ns` that count against a quota: pods only while not terminal or deleted.
fn used(sh: &Shared, r: &'static Res, ns: &str) -> i64 {
    let pods = r.plural == "pods";
    sh.store
        .scan(r, Some(ns), |o| {
            let done = pods && (matches!(o["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) || o["metadata"].get("deletionTimestamp").is_some());
            (!done).then_some(())
        })
        .len() as i64
}

fn hard_of(q: &Value) -> Vec<(String, i64, String)> {
    q["spec"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), super::defaults::quantity(v)? as i64, v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))))
        .collect()
}

/// Admission of one new object of `r` named `name` in `ns`.
pub(crate) fn admit(sh: &Shared, r: &'static Res, ns: &str, name: &str) -> Result<(), ApiError> {
    let quotas_r = res("resourcequotas").expect("resourcequotas");
    let mut quotas = sh.store.scan(quotas_r, Some(ns), |q| Some((name_of(q).to_string(), hard_of(q))));
    if quotas.is_empty() {
        return Ok(());
    }
    quotas.sort_by(|a, b| a.0.cmp(&b.0));
    let mine = keys(r);
    let now = used(sh, r, ns);
    for (quota, hard) in quotas {
        let mut exceeded: Vec<(String, String)> = hard.into_iter().filter(|(k, h, _)| mine.contains(k) && now + 1 > *h).map(|(k, _, shown)| (k, shown)).collect();
        if exceeded.is_empty() {
            continue;
        }
        exceeded.sort();
        let list = |f: &dyn Fn(&(String, String)) -> String| exceeded.iter().map(f).collect::<Vec<_>>().join(",");
        let why = format!(
            "exceeded quota: {quota}, requested: {}, used: {}, limited: {}",
            list(&|(k, _)| format!("{k}=1")),
            list(&|(k, _)| format!("{k}={now}")),
            list(&|(k, shown)| format!("{k}={shown}"))
        );
        return Err(ApiError::forbidden(r, name, &why));
    }
    Ok(())
}

/// Brings `status.hard` and `status.used` of the namespace's quotas up to date.
pub(crate) fn refresh(sh: &Shared, ns: &str) {
    let quotas_r = res("resourcequotas").expect("resourcequotas");
    let quotas = sh.store.scan(quotas_r, Some(ns), |q| Some((name_of(q).to_string(), q["spec"]["hard"].clone(), q["status"].clone())));
    for (name, hard, status) in quotas {
        let mut used_now = Map::new();
        for key in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
            if let Some(r) = counted(key) {
                used_now.insert(key.clone(), json!(used(sh, r, ns).to_string()));
            }
        }
        let next = json!({"hard": hard, "used": used_now});
        if next != status {
            let _ = sh.store.modify(quotas_r, ns, &name, |o| {
                let mut o = o.clone();
                o["status"] = next;
                Ok(o)
            });
        }
    }
}
