//! RBAC, as the real apiserver's authorizer decides it for a client that is not a cluster admin
//! (`FakeKube::client_as`): the request's attributes (verb, API group, resource and subresource,
//! namespace, name) are allowed when a rule of a Role or ClusterRole bound to the user allows
//! them — a ClusterRoleBinding everywhere, a RoleBinding only in its own namespace. A refusal is
//! the real 403 `Status` (S11 shows its shape): `jobs.batch "x" is forbidden: User "…" cannot
//! delete resource "jobs" in API group "batch" in the namespace "y"`.
//!
//! Creating a RoleBinding or ClusterRoleBinding is also held to the real server's escalation
//! check (`pkg/registry/rbac/*binding/policybased`): a client that is not a cluster admin may bind
//! a role only when it holds `bind` on it (verb `bind`, resource `clusterroles` or `roles`, the
//! role's name, in the binding's namespace) or already holds every rule the role grants there;
//! otherwise 403 `… is attempting to grant RBAC permissions not currently held: …`.
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

/// Every rule that applies to `who` in `namespace` (None: cluster-wide only): the rules of the
/// roles its ClusterRoleBindings bind, and in a namespace those of its RoleBindings there too.
fn rules_for(store: &Store, who: &Identity, namespace: Option<&str>) -> Vec<Value> {
    let bound_to_me = |b: &Value, ns: &str| b["subjects"].as_array().is_some_and(|s| s.iter().any(|s| who.is(s, ns)));
    // The bindings first, the roles after: the store's lock is held while it scans.
    let mut bindings: Vec<(Value, String)> =
        store.scan(rbac("clusterrolebindings"), None, |b| bound_to_me(b, "").then(|| (b.clone(), String::new())));
    if let Some(ns) = namespace {
        bindings.extend(store.scan(rbac("rolebindings"), Some(ns), |b| bound_to_me(b, ns).then(|| (b.clone(), ns.to_string()))));
    }
    bindings.iter().flat_map(|(b, ns)| rules_of(store, b, ns)).collect()
}

/// Allowed, or the real server's 403.
pub fn authorize(store: &Store, who: &Identity, a: &Attributes) -> Result<(), ApiError> {
    if allows(store, who, a) {
        return Ok(());
    }
    Err(forbidden(who, a))
}

/// Whether RBAC allows the request. The namespace counts for a namespaced resource, and for the
/// `bind` check of a binding, whose attributes carry the binding's namespace whatever the role's
/// scope (a RoleBinding there may grant `bind` on a ClusterRole).
fn allows(store: &Store, who: &Identity, a: &Attributes) -> bool {
    let ns = a.namespace.filter(|_| a.res.namespaced || a.verb == "bind");
    rules_for(store, who, ns).iter().any(|r| rule_allows(r, a))
}

/// What a missing right is reported by: (API group, resource, resource name); its verbs are merged.
type Missing = (String, String, Option<String>);

/// The escalation check on creating a RoleBinding (in `namespace`) or a ClusterRoleBinding
/// (`namespace` None): allowed with `bind` on the role it refers to, or when `who` already holds
/// every rule of that role where the binding grants it; otherwise the real server's 403.
pub fn authorize_binding(store: &Store, who: &Identity, binding_res: &'static Res, namespace: Option<&str>, binding: &Value) -> Result<(), ApiError> {
    let name = binding["metadata"]["name"].as_str().unwrap_or("");
    let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or("");
    let role_name = binding["roleRef"]["name"].as_str().unwrap_or("");
    let role_res = match role_kind {
        "ClusterRole" => rbac("clusterroles"),
        "Role" if namespace.is_some() => rbac("roles"),
        _ => return Err(ApiError::invalid(binding_res, name, format!("roleRef.kind: Unsupported value: \"{role_kind}\""))),
    };
    let bind = Attributes { verb: "bind", res: role_res, subresource: None, namespace, name: Some(role_name) };
    if allows(store, who, &bind) {
        return Ok(());
    }
    let refused = |why: String| ApiError::forbidden(binding_res, name, &why);
    let role = store.get(role_res, if role_res.namespaced { namespace.unwrap_or("") } else { "" }, role_name).map_err(|e| refused(e.message))?;
    let held = rules_for(store, who, namespace);
    // Each rule of the role broken down to one group, resource, verb (and name), as the real
    // server's `Covers` does; what is not held is reported compacted by (group, resource, name).
    let mut missing: Vec<(Missing, Vec<String>)> = vec![];
    for rule in role["rules"].as_array().into_iter().flatten() {
        let strings = |k: &str| -> Vec<String> { rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect() };
        let names: Vec<Option<String>> = match strings("resourceNames") {
            n if n.is_empty() => vec![None],
            n => n.into_iter().map(Some).collect(),
        };
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                for name in &names {
                    for verb in strings("verbs") {
                        if held.iter().any(|h| covers(h, &group, &resource, &verb, name.as_deref())) {
                            continue;
                        }
                        let key = (group.clone(), resource.clone(), name.clone());
                        match missing.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, verbs)) => verbs.push(verb),
                            None => missing.push((key, vec![verb])),
                        }
                    }
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let quoted = |l: &[String]| format!("[{}]", l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" "));
    let mut rules: Vec<String> = missing
        .iter()
        .map(|((group, resource, name), verbs)| {
            let names = name.as_ref().map(|n| format!(", ResourceNames:{}", quoted(std::slice::from_ref(n)))).unwrap_or_default();
            format!("{{APIGroups:{}, Resources:{}{names}, Verbs:{}}}", quoted(std::slice::from_ref(group)), quoted(std::slice::from_ref(resource)), quoted(verbs))
        })
        .collect();
    rules.sort();
    rules.dedup();
    Err(refused(format!(
        "user \"{}\" (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        who.user,
        quoted(&who.groups),
        rules.join("\n")
    )))
}

/// Whether a rule `who` holds covers one broken-down rule of a role being bound: by a wildcard
/// or the same value, and a rule limited to resource names only covers those names.
fn covers(held: &Value, group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
    let names_ok = match held["resourceNames"].as_array().filter(|n| !n.is_empty()) {
        None => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|v| v == n)),
    };
    listed(&held["verbs"], verb) && listed(&held["apiGroups"], group) && listed(&held["resources"], resource) && names_ok
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
