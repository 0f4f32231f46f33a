//! The HTTP surface: URL shapes as kube-rs produces them, JSON bodies, errors as `metav1.Status`,
//! `Warning` headers from admission, `dryRun=All`, and lists with `limit`/`continue` paging and
//! `resourceVersionMatch` as S12 recorded them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::rbac::{Attributes, Identity};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{res, ApiError, Res};
use super::{patch, Request, Shared};

/// The API as a cluster admin (`system:masters`) sees it: RBAC allows everything.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    router_as(sh, None)
}

/// The API as `who` sees it: every request is authorized by the RBAC objects in the store.
pub(crate) fn router_as(sh: Arc<Shared>, who: Option<Identity>) -> Router {
    Router::new().fallback(handle).with_state((sh, who.map(Arc::new)))
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response {
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

/// A JSON answer with one `Warning` header per admission warning.
fn warned_response(code: u16, v: &Value, warnings: &[String]) -> Response {
    let mut resp = json_response(code, v);
    for w in warnings {
        if let Ok(h) = axum::http::HeaderValue::from_str(&super::pod_security::warning_header(w)) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

/// `dryRun=All` (query) or `dryRun: ["All"]` (a DeleteOptions body).
fn dry_run(q: &HashMap<String, String>, opts: Option<&Value>) -> Result<bool, ApiError> {
    let from_body = opts.and_then(|o| o["dryRun"].as_array()).is_some_and(|d| d.iter().any(|v| v == "All"));
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(from_body),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("Invalid dryRun value: \"{other}\"; supported values: [\"All\"]"))),
    }
}

/// Where a request points.
struct Target {
    res: &'static Res,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let (r, ns, name, sub) = if rest.len() >= 3 && rest[0] == "namespaces" && res(rest[2]).is_some_and(|r| r.namespaced) {
        (res(rest[2])?, Some(rest[1].to_string()), rest.get(3), rest.get(4))
    } else {
        (res(rest.first()?)?, None, rest.get(1), rest.get(2))
    };
    if r.group != group || rest.len() > 5 {
        return None;
    }
    Some(Target { res: r, ns, name: name.map(|s| s.to_string()), sub: sub.map(|s| s.to_string()) })
}

fn not_served() -> ApiError {
    ApiError { code: 404, reason: "NotFound", message: "the server could not find the requested resource".into(), details: None }
}

async fn handle(State((sh, who)): State<(Arc<Shared>, Option<Arc<Identity>>)>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    match serve(&sh, who.as_deref(), method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn record(sh: &Shared, verb: &'static str, t: &Target, name: Option<String>) {
    sh.requests.lock().unwrap().push(Request {
        verb,
        resource: t.res.plural.to_string(),
        subresource: t.sub.clone(),
        namespace: t.ns.clone(),
        name,
    });
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}")))
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

async fn serve(sh: &Arc<Shared>, who: Option<&Identity>, method: Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let t = parse_path(uri.path()).ok_or_else(not_served)?;
    let q: HashMap<String, String> = Query::try_from_uri(uri).map(|Query(q)| q).unwrap_or_default();
    let r = t.res;
    if r.namespaced && t.name.is_some() && t.ns.is_none() {
        return Err(not_served());
    }
    if let Some(who) = who {
        // The request verb, as the apiserver derives it from the method.
        let verb = match (&method, &t.name) {
            (&Method::GET, None) if truthy(&q, "watch") => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "",
        };
        let attributes = Attributes { verb, res: r, subresource: t.sub.as_deref(), namespace: t.ns.as_deref(), name: t.name.as_deref() };
        super::rbac::authorize(&sh.store, who, &attributes).map_err(|e| refused(sh, verb, &t, t.name.clone(), e))?;
    }
    let ns = t.ns.clone().unwrap_or_default();
    match (&method, t.name.clone(), t.sub.as_deref()) {
        (&Method::GET, None, None) => {
            let watch = truthy(&q, "watch");
            record(sh, if watch { "watch" } else { "list" }, &t, None);
            refuse_read(sh, r, if watch { "watch" } else { "list" }, &ns)?;
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", |s| s.as_str())).map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse_for(q.get("fieldSelector").map_or("", |s| s.as_str()), r.plural).map_err(ApiError::bad_request)?;
            if watch {
                return super::watch::serve(sh.clone(), r, t.ns.clone(), labels, fields, &q);
            }
            list(sh, r, t.ns.as_deref(), labels, fields, &q).await
        }
        (&Method::GET, Some(name), None | Some("status")) => {
            record(sh, "get", &t, Some(name.clone()));
            refuse_read(sh, r, "get", &ns)?;
            Ok(json_response(200, &sh.store.get(r, &ns, &name)?))
        }
        (&Method::GET, Some(name), Some("log")) if r.plural == "pods" => {
            record(sh, "log", &t, Some(name.clone()));
            super::kubelet::log_response(sh.clone(), &ns, &name, &q)
        }
        (&Method::POST, None, None) => {
            let obj = parse_body(&body)?;
            let md = &obj["metadata"];
            let name = md["name"].as_str().or(md["generateName"].as_str()).map(String::from);
            record(sh, "create", &t, name.clone());
            if r.namespaced && t.ns.is_none() {
                return Err(not_served());
            }
            if let Some(bns) = md["namespace"].as_str() {
                if r.namespaced && !bns.is_empty() && bns != ns {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
            }
            let dry = dry_run(&q, None)?;
            if let Some(who) = who {
                authorize_binding(sh, who, &t, &obj)?;
            }
            refuse(sh, r, &ns)?;
            let created = super::admission::create(sh, r, &ns, obj, dry)?;
            Ok(warned_response(201, &created.object, &created.warnings))
        }
        (&Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            record(sh, "update", &t, Some(name.clone()));
            let obj = parse_body(&body)?;
            let dry = dry_run(&q, None)?;
            if r.plural == "namespaces" && sub.is_none() {
                return Ok(json_response(200, &*sh.store.replace_with(r, "", &name, obj, false, dry)?));
            }
            let status_only = sub == Some("status");
            if status_only && !r.status {
                return Err(not_served());
            }
            Ok(json_response(200, &*sh.store.replace_with(r, &ns, &name, obj, status_only, dry)?))
        }
        (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            record(sh, "patch", &t, Some(name.clone()));
            let status_only = sub == Some("status");
            if status_only && !r.status {
                return Err(not_served());
            }
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
            let p = parse_body(&body)?;
            let dry = dry_run(&q, None)?;
            let key_ns = if r.namespaced { ns.as_str() } else { "" };
            if ct == "application/apply-patch+yaml" {
                return apply(sh, who, &t, key_ns, &name, status_only, p, &q, dry);
            }
            let current = sh.store.get(r, key_ns, &name)?;
            let mut next = current.clone();
            // Custom resources have no schema of merge keys: the real server refuses the
            // strategic kind as an unknown body format.
            if r.custom() && ct == "application/strategic-merge-patch+json" {
                return Err(ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"),
                    details: None,
                });
            }
            match ct.as_str() {
                "application/merge-patch+json" => patch::merge(&mut next, &p),
                "application/strategic-merge-patch+json" => patch::strategic(&mut next, &p),
                "application/json-patch+json" => patch::json_patch(&mut next, &p).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: e,
                    details: None,
                })?,
                other => {
                    return Err(ApiError {
                        code: 415,
                        reason: "UnsupportedMediaType",
                        message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"),
                        details: None,
                    })
                }
            }
            // A resourceVersion the patch itself sets is a precondition; otherwise the patch
            // applies to whatever is stored.
            let patched_rv = next["metadata"]["resourceVersion"].clone();
            if patched_rv != current["metadata"]["resourceVersion"] {
                if let Some(rv) = patched_rv.as_str() {
                    next["metadata"]["resourceVersion"] = json!(rv);
                }
            } else if let Some(m) = next["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            Ok(json_response(200, &*sh.store.replace_with(r, key_ns, &name, next, status_only, dry)?))
        }
        (&Method::DELETE, Some(name), None) => {
            record(sh, "delete", &t, Some(name.clone()));
            let opts: Value = if body.is_empty() { json!({}) } else { parse_body(&body)? };
            let policy = opts["propagationPolicy"].as_str().map(String::from).or_else(|| q.get("propagationPolicy").cloned());
            let policy = policy.or_else(|| match opts["orphanDependents"].as_bool() {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            });
            let grace = opts["gracePeriodSeconds"].as_i64().or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
            let dry = dry_run(&q, Some(&opts))?;
            let key_ns = if r.namespaced { ns.as_str() } else { "" };
            if let Some(pre) = opts["preconditions"]["resourceVersion"].as_str() {
                let cur = sh.store.get(r, key_ns, &name)?;
                if cur["metadata"]["resourceVersion"].as_str() != Some(pre) {
                    return Err(ApiError::conflict(r, &name));
                }
            }
            Ok(json_response(200, &super::delete(sh, r, key_ns, &name, policy.as_deref(), grace, dry)?))
        }
        _ => Err(ApiError { code: 405, reason: "MethodNotAllowed", message: "the server does not allow this method on the requested resource".into(), details: None }),
    }
}

/// Server-side apply (`application/apply-patch+yaml`; kube-rs sends the YAML as JSON). Creates
/// the object when missing — and then, as the real server's patch handler does, the client must
/// also be allowed to `create` it (`patch` alone only changes what exists); otherwise merges it
/// in as a strategic merge patch. Field ownership is not modelled: no conflicts (as if every apply
/// were `force`), and fields a manager stops applying are not removed.
#[allow(clippy::too_many_arguments)]
fn apply(sh: &Shared, who: Option<&Identity>, t: &Target, ns: &str, name: &str, status_only: bool, p: Value, q: &HashMap<String, String>, dry: bool) -> Result<Response, ApiError> {
    let r = t.res;
    if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
    }
    if p["apiVersion"].as_str() != Some(r.api_version().as_str()) || p["kind"].as_str() != Some(r.kind) {
        return Err(ApiError::bad_request(format!("apply patches must set apiVersion {} and kind {}", r.api_version(), r.kind)));
    }
    if p["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!("the name of the object ({}) does not match the name on the URL ({name})", p["metadata"]["name"].as_str().unwrap_or(""))));
    }
    match sh.store.get(r, ns, name) {
        Err(e) if e.code == 404 && !status_only => {
            let mut obj = p;
            obj["metadata"]["name"] = json!(name);
            if let Some(who) = who {
                let create = Attributes { verb: "create", res: r, subresource: None, namespace: t.ns.as_deref(), name: Some(name) };
                super::rbac::authorize(&sh.store, who, &create).map_err(|e| refused(sh, "create", t, Some(name.to_string()), e))?;
                authorize_binding(sh, who, t, &obj)?;
            }
            let created = super::admission::create(sh, r, ns, obj, dry)?;
            Ok(warned_response(201, &created.object, &created.warnings))
        }
        Err(e) => Err(e),
        Ok(current) => {
            let mut next = current.clone();
            patch::strategic(&mut next, &p);
            if let Some(m) = next["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            Ok(json_response(200, &*sh.store.replace_with(r, ns, name, next, status_only, dry)?))
        }
    }
}

/// A list continue token, as the real server writes it: base64 of
/// `{"v":"meta.k8s.io/v1","rv":<rv>,"start":"<key after the last item>\u0000"}`.
fn continue_token(rv: u64, ns: &str, name: &str, cluster_wide: bool) -> String {
    use base64::Engine;
    let key = if cluster_wide { format!("/{ns}/{name}\u{0}") } else { format!("/{name}\u{0}") };
    let t = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": key});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t.to_string())
}

/// The resourceVersion and the (namespace, name) a continue token resumes after.
fn parse_continue(token: &str, ns: Option<&str>) -> Result<(u64, (String, String)), ApiError> {
    use base64::Engine;
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad("illegal base64 data"))?;
    let t: Value = serde_json::from_slice(&raw).map_err(|_| bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let rv = t["rv"].as_u64().ok_or_else(|| bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let start = t["start"].as_str().ok_or_else(|| bad("continue key is not valid"))?.trim_end_matches('\u{0}').trim_start_matches('/');
    let key = match (ns, start.split_once('/')) {
        (Some(ns), _) => (ns.to_string(), start.to_string()),
        (None, Some((n, name))) => (n.to_string(), name.to_string()),
        (None, None) => (String::new(), start.to_string()),
    };
    Ok((rv, key))
}

/// A list: from the current state, from the state at a resourceVersion
/// (`resourceVersionMatch=Exact`, a continue token; 410 once the history is compacted), or —
/// for a resourceVersion the store has not reached — after waiting up to 3 s, 504 as S12
/// recorded. `limit` pages it.
async fn list(sh: &Arc<Shared>, r: &'static Res, ns: Option<&str>, labels: LabelSelector, fields: FieldSelector, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let selective = !labels.is_empty() || !fields.is_empty();
    let keep = |o: &Value| labels.matches(o) && fields.matches(o);
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let rv_param = q.get("resourceVersion").filter(|v| !v.is_empty());
    let parse_rv = |v: &str| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: \"{v}\": strconv.ParseUint: parsing \"{v}\": invalid syntax")));
    let mut after: Option<(String, String)> = None;
    let (items, rv) = if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
        let (rv, key) = parse_continue(token, ns)?;
        after = Some(key);
        sh.store.list_at(r, ns, rv, keep).map_err(|_| {
            ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, \
                 or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an \
                 inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            )
        })?
    } else {
        let wanted = match rv_param {
            Some(v) if v != "0" => Some(parse_rv(v)?),
            _ => None,
        };
        if let Some(want) = wanted {
            // A resourceVersion not reached yet: wait for it, as the watch cache does.
            let mut changes = sh.store.subscribe();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while sh.store.resource_version() < want {
                if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                    return Err(ApiError {
                        code: 504,
                        reason: "Timeout",
                        message: format!("Timeout: Too large resource version: {want}, current: {}", sh.store.resource_version()),
                        details: Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1})),
                    });
                }
            }
        }
        match (wanted, q.get("resourceVersionMatch").map(String::as_str)) {
            (Some(want), Some("Exact")) => sh.store.list_at(r, ns, want, keep)?,
            _ => sh.store.list_matching(r, ns, keep),
        }
    };
    let cluster_wide = r.namespaced && ns.is_none();
    let key_of = |o: &Value| (o["metadata"]["namespace"].as_str().unwrap_or("").to_string(), o["metadata"]["name"].as_str().unwrap_or("").to_string());
    let mut items: Vec<Value> = match &after {
        Some(a) => items.into_iter().filter(|o| key_of(o) > *a).collect(),
        None => items,
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let rest = items.split_off(limit);
        let (last_ns, last_name) = key_of(items.last().expect("limit > 0"));
        metadata["continue"] = json!(continue_token(rv, &last_ns, &last_name, cluster_wide));
        if !selective {
            metadata["remainingItemCount"] = json!(rest.len());
        }
    }
    Ok(json_response(200, &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": metadata, "items": items})))
}

/// Notes an RBAC refusal (`FakeKube::refusals`) and passes it on.
fn refused(sh: &Shared, verb: &str, t: &Target, name: Option<String>, e: ApiError) -> ApiError {
    let resource = match &t.sub {
        Some(sub) => format!("{}/{sub}", t.res.plural),
        None => t.res.plural.to_string(),
    };
    sh.refusals.lock().unwrap().push(super::Refusal {
        verb: verb.to_string(),
        group: t.res.group.to_string(),
        resource,
        namespace: t.ns.clone(),
        name,
        message: e.message.clone(),
    });
    e
}

/// Creating a RoleBinding or ClusterRoleBinding: the escalation check (`rbac::authorize_binding`),
/// a refusal noted as one of `bind`.
fn authorize_binding(sh: &Shared, who: &Identity, t: &Target, obj: &Value) -> Result<(), ApiError> {
    if !matches!(t.res.plural, "rolebindings" | "clusterrolebindings") {
        return Ok(());
    }
    super::rbac::authorize_binding(&sh.store, who, t.res, t.ns.as_deref(), obj).map_err(|e| {
        let role = obj["roleRef"]["name"].as_str().map(String::from);
        let role_res = if obj["roleRef"]["kind"] == "Role" { "roles" } else { "clusterroles" };
        let target = Target { res: res(role_res).expect("served"), ns: t.ns.clone(), name: role.clone(), sub: None };
        refused(sh, "bind", &target, role, e)
    })
}

/// The `refuse_reads` fault: RBAC's answer to a client without the right to read.
fn refuse_read(sh: &Shared, r: &Res, verb: &str, ns: &str) -> Result<(), ApiError> {
    let Some(code) = sh.faults.lock().unwrap().refuse_reads.get(r.plural).copied() else { return Ok(()) };
    let mut details = json!({"kind": r.plural});
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    let scope = if ns.is_empty() || !r.namespaced { " at the cluster scope".to_string() } else { format!(" in the namespace \"{ns}\"") };
    Err(match code {
        403 => ApiError {
            code,
            reason: "Forbidden",
            message: format!(
                "{} is forbidden: User \"system:serviceaccount:kiln:kiln\" cannot {verb} resource \"{}\" in API group \"{}\"{scope}",
                r.qualified(),
                r.plural,
                r.group
            ),
            details: Some(details),
        },
        _ => ApiError { code, reason: "InternalError", message: format!("injected failure {code}"), details: Some(details) },
    })
}

/// The `refuse_creates` fault.
fn refuse(sh: &Shared, r: &Res, ns: &str) -> Result<(), ApiError> {
    let mut f = sh.faults.lock().unwrap();
    let Some((code, left)) = f.refuse.get_mut(r.plural) else { return Ok(()) };
    let code = *code;
    match left {
        Some(0) => return Ok(()),
        Some(n) => *n -= 1,
        None => {}
    }
    let mut details = json!({"kind": r.plural});
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    Err(match code {
        403 => ApiError {
            code,
            reason: "Forbidden",
            message: format!(
                "{} is forbidden: User \"system:serviceaccount:kiln:kiln\" cannot create resource \"{}\" in API group \"{}\" in the namespace \"{ns}\"",
                r.qualified(),
                r.plural,
                r.group
            ),
            details: Some(details),
        },
        500 => {
            details["causes"] = json!([{"message": "injected by the fake"}]);
            ApiError { code, reason: "InternalError", message: "Internal error occurred: injected by the fake".into(), details: Some(details) }
        }
        429 => ApiError { code, reason: "TooManyRequests", message: "the server has received too many requests and has asked us to try again later".into(), details: Some(details) },
        503 => ApiError { code, reason: "ServiceUnavailable", message: "the server is currently unable to handle the request".into(), details: Some(details) },
        _ => ApiError { code, reason: "Unknown", message: format!("injected failure {code}"), details: Some(details) },
    })
}

/// A streamed response body fed by a task: the task learns the client went away when `send`
/// fails.
pub(crate) fn streamed(content_type: &'static str) -> (tokio::sync::mpsc::Sender<Bytes>, Response) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx)) });
    let resp = Response::builder().status(200).header(header::CONTENT_TYPE, content_type).body(Body::from_stream(stream)).expect("response");
    (tx, resp)
}
