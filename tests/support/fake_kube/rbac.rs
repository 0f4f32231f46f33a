//! RBAC, as the real apiserver's authorizer decides it for a client that is not a cluster admin
//! (`FakeKube::client_as`): the request's attributes (verb, API group, resource and subresource,
//! namespace, name) are allowed when a rule of a Role or ClusterRole bound to the user allows
//! them — a ClusterRoleBinding everywhere, a RoleBinding only in its own namespace. A refusal is
//! the real 403 `Status` (S11 shows its shape): `jobs.batch "x" is forbidden: User "…" cannot
//! delete resource "jobs" in API group "batch" in the namespace "y"`.
//!
//! See <https://kubernetes.io/docs/reference/access-authn-authz/rbac/> and
//! <https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb>.

use serde_json::{json, Value};

use super::store::{res, ApiError, Res, Store};

/// Who a client is: the user name and the groups it is in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A ServiceAccount's identity, as its token authenticates: `system:serviceaccount:<ns>:<name>`
    /// in the groups `system:serviceaccounts`, `system:serviceaccounts:<ns>` and
    /// `system:authenticated`.
    pub fn service_account(namespace: &str, name: &str) -> Identity {
        Identity {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()],
        }
    }

    fn is(&self, subject: &Value, binding_ns: &str) -> bool {
        let name = subject["name"].as_str().unwrap_or("");
        match subject["kind"].as_str() {
            Some("ServiceAccount") => {
                let ns = subject["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                self.user == format!("system:serviceaccount:{ns}:{name}")
            }
            Some("User") => self.user == name,
            Some("Group") => self.groups.iter().any(|g| g == name),
            _ => false,
        }
    }
}

/// What a request asks to do, as the authorizer sees it.
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub res: &'static Res,
    pub subresource: Option<&'a str>,
    /// None: across all namespaces (or a cluster-scoped resource).
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

fn rbac(plural: &str) -> &'static Res {
    res(plural).expect("RBAC resources are served")
}

fn listed(list: &Value, wanted: &str) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(|v| v == "*" || v == wanted))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.res.plural),
        None => a.res.plural.to_string(),
    };
    let names_ok = match rule["resourceNames"].as_array().filter(|n| !n.is_empty()) {
        None => true,
        // resourceNames never allow list, watch or create (the object has no name yet).
        Some(names) => a.name.is_some_and(|n| names.iter().any(|v| v == n)),
    };
    listed(&rule["verbs"], a.verb) && listed(&rule["apiGroups"], a.res.group) && listed(&rule["resources"], &resource) && names_ok
}

/// The rules of the role a binding refers to (a Role in the binding's namespace, or a ClusterRole).
fn rules_of(store: &Store, binding: &Value, binding_ns: &str) -> Vec<Value> {
    let role = &binding["roleRef"];
    let name = role["name"].as_str().unwrap_or("");
    let found = match role["kind"].as_str() {
        Some("ClusterRole") => store.get(rbac("clusterroles"), "", name).ok(),
        Some("Role") => store.get(rbac("roles"), binding_ns, name).ok(),
        _ => None,
    };
    found.and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default()
}

/// Allowed, or the real server's 403.
pub fn authorize(store: &Store, who: &Identity, a: &Attributes) -> Result<(), ApiError> {
    let bound_to_me = |b: &Value, ns: &str| b["subjects"].as_array().is_some_and(|s| s.iter().any(|s| who.is(s, ns)));
    // The bindings first, the roles after: the store's lock is held while it scans.
    let mut bindings: Vec<(Value, String)> =
        store.scan(rbac("clusterrolebindings"), None, |b| bound_to_me(b, "").then(|| (b.clone(), String::new())));
    if let Some(ns) = a.namespace.filter(|_| a.res.namespaced) {
        bindings.extend(store.scan(rbac("rolebindings"), Some(ns), |b| bound_to_me(b, ns).then(|| (b.clone(), ns.to_string()))));
    }
    let allowed = bindings.iter().any(|(b, ns)| rules_of(store, b, ns).iter().any(|r| rule_allows(r, a)));
    if allowed {
        return Ok(());
    }
    Err(forbidden(who, a))
}

fn forbidden(who: &Identity, a: &Attributes) -> ApiError {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.res.plural),
        None => a.res.plural.to_string(),
    };
    let what = match a.name {
        Some(n) => format!("{} \"{n}\"", a.res.qualified()),
        None => a.res.qualified(),
    };
    let scope = match a.namespace.filter(|_| a.res.namespaced) {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let mut details = json!({"kind": a.res.plural});
    if let Some(n) = a.name {
        details["name"] = json!(n);
    }
    if !a.res.group.is_empty() {
        details["group"] = json!(a.res.group);
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            who.user, a.verb, a.res.group
        ),
        details: Some(details),
    }
}
