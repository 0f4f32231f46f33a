//! PodSecurity admission by namespace labels (`pod-security.kubernetes.io/enforce`, `…/warn`,
//! `…-version`): the Pod Security Standards checks a build pod can run into, with the real
//! plugin's wording, so the messages Kiln shows are the ones a cluster gives (S08). A pod that
//! violates the `enforce` level is refused (403); a workload (Job, Deployment) whose pod template
//! would is stored, and the answer carries a `Warning` header — the refusal then falls on every
//! pod its controller makes.
//!
//! Checks: AppArmor, added capabilities, host namespaces, hostPath volumes, host ports,
//! privileged, procMount, seccomp (baseline); allowPrivilegeEscalation, capabilities drop ALL,
//! volume types, runAsNonRoot, runAsUser 0, seccomp required (restricted). Not modelled:
//! SELinux options, sysctls, Windows host process, user namespaces relaxing restricted.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// A label value; an unknown one is evaluated as `restricted`, as the plugin does.
    pub fn parse(s: &str) -> Level {
        match s {
            "privileged" => Level::Privileged,
            "baseline" => Level::Baseline,
            _ => Level::Restricted,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A namespace's policy for one mode (`enforce`, `warn`): level and version, as in
/// `"baseline:latest"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    pub version: String,
}

impl Policy {
    /// The namespace's policy for `mode`; None when unlabelled (the cluster default: privileged).
    pub fn of(namespace: &Value, mode: &str) -> Option<Policy> {
        let labels = &namespace["metadata"]["labels"];
        let level = labels[format!("pod-security.kubernetes.io/{mode}")].as_str()?;
        let version = labels[format!("pod-security.kubernetes.io/{mode}-version")].as_str().unwrap_or("latest").to_string();
        Some(Policy { level: Level::parse(level), version })
    }

    /// `violates PodSecurity "baseline:latest": …` when the pod breaks this policy.
    pub fn evaluate(&self, pod_meta: &Value, pod_spec: &Value) -> Option<String> {
        let found = violations(pod_meta, pod_spec, self.level);
        (!found.is_empty()).then(|| format!("PodSecurity \"{}:{}\": {}", self.level.as_str(), self.version, found.join(", ")))
    }
}

fn pluralize<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    items.iter().map(|s| format!("{:?}", s.as_ref())).collect::<Vec<_>>().join(", ")
}

/// `container "a"` / `containers "a", "b"`.
fn containers(names: &[String]) -> String {
    format!("{} {}", pluralize("container", "containers", names.len()), join_quote(names))
}

/// Init containers, containers, ephemeral containers: the order the plugin visits them in.
fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"].iter().filter_map(|k| spec[*k].as_array()).flatten().collect()
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

/// Sorted, deduplicated (a Go `sets.String`'s `List()`).
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

const BASELINE_CAPABILITIES: &[&str] =
    &["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];
const RESTRICTED_VOLUMES: &[&str] = &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret", "image"];

/// Every failed check as `reason (detail)`, in the plugin's order: the baseline checks, then
/// (for restricted) the restricted ones, which replace the baseline capability, hostPath and
/// seccomp checks.
pub fn violations(meta: &Value, spec: &Value, level: Level) -> Vec<String> {
    if level == Level::Privileged {
        return vec![];
    }
    let restricted = level == Level::Restricted;
    let cs = all_containers(spec);
    let psc = &spec["securityContext"];
    let mut out: Vec<String> = vec![];
    let mut fail = |reason: &str, detail: String| out.push(if detail.is_empty() { reason.to_string() } else { format!("{reason} ({detail})") });

    // appArmorProfile
    {
        let mut setters = vec![];
        let mut values = vec![];
        let bad = |p: &Value| p.is_object() && !matches!(p["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
        if bad(&psc["appArmorProfile"]) {
            setters.push("pod".to_string());
            values.push(psc["appArmorProfile"]["type"].as_str().unwrap_or("").to_string());
        }
        let mut names = vec![];
        for c in &cs {
            let p = &c["securityContext"]["appArmorProfile"];
            if bad(p) {
                names.push(cname(c));
                values.push(p["type"].as_str().unwrap_or("").to_string());
            }
        }
        if !names.is_empty() {
            setters.push(containers(&names));
        }
        let annotations: Vec<String> = meta["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                let v = v.as_str().unwrap_or("");
                k.starts_with("container.apparmor.security.beta.kubernetes.io/") && v != "runtime/default" && !v.starts_with("localhost/")
            })
            .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
            .collect();
        let values = sorted(values);
        if !setters.is_empty() {
            let reason = pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", values.len());
            fail(reason, format!("{} must not set AppArmor profile type to {}", setters.join(" and "), join_quote(&values)));
        } else if !annotations.is_empty() {
            let annotations = sorted(annotations);
            fail(pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", annotations.len()), annotations.join(", "));
        }
    }
    // capabilities_baseline (replaced by capabilities_restricted)
    if !restricted {
        let mut names = vec![];
        let mut caps = vec![];
        for c in &cs {
            let added: Vec<String> = c["securityContext"]["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .filter(|a| !BASELINE_CAPABILITIES.contains(a))
                .map(String::from)
                .collect();
            if !added.is_empty() {
                names.push(cname(c));
                caps.extend(added);
            }
        }
        if !names.is_empty() {
            let caps = sorted(caps);
            fail("non-default capabilities", format!("{} must not include {} in securityContext.capabilities.add", containers(&names), join_quote(&caps)));
        }
    }
    // hostNamespaces
    {
        let ns: Vec<&str> = [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")]
            .iter()
            .filter(|(k, _)| spec[*k] == true)
            .map(|(_, s)| *s)
            .collect();
        if !ns.is_empty() {
            fail("host namespaces", ns.join(", "));
        }
    }
    // hostPathVolumes (replaced by restrictedVolumes)
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    if !restricted {
        let host: Vec<String> = volumes.iter().filter(|v| v.get("hostPath").is_some()).map(cname).collect();
        if !host.is_empty() {
            fail("hostPath volumes", format!("{} {}", pluralize("volume", "volumes", host.len()), join_quote(&host)));
        }
    }
    // hostPorts
    {
        let mut names = vec![];
        let mut ports = vec![];
        for c in &cs {
            let used: Vec<String> = c["ports"].as_array().into_iter().flatten().filter_map(|p| p["hostPort"].as_i64()).filter(|p| *p != 0).map(|p| p.to_string()).collect();
            if !used.is_empty() {
                names.push(cname(c));
                ports.extend(used);
            }
        }
        if !names.is_empty() {
            let ports = sorted(ports);
            fail(
                "hostPort",
                format!("{} {} {} {}", containers(&names), pluralize("uses", "use", names.len()), pluralize("hostPort", "hostPorts", ports.len()), ports.join(", ")),
            );
        }
    }
    // privileged
    {
        let names: Vec<String> = cs.iter().filter(|c| c["securityContext"]["privileged"] == true).map(|c| cname(c)).collect();
        if !names.is_empty() {
            fail("privileged", format!("{} must not set securityContext.privileged=true", containers(&names)));
        }
    }
    // procMount
    {
        let mut names = vec![];
        let mut values = vec![];
        for c in &cs {
            if let Some(m) = c["securityContext"]["procMount"].as_str().filter(|m| !m.is_empty() && *m != "Default") {
                names.push(cname(c));
                values.push(m.to_string());
            }
        }
        if !names.is_empty() {
            fail("procMount", format!("{} must not set securityContext.procMount to {}", containers(&names), join_quote(&sorted(values))));
        }
    }
    // seccompProfile_baseline (replaced by seccompProfile_restricted)
    let valid_seccomp = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    if !restricted {
        let mut setters = vec![];
        let mut values = vec![];
        if psc["seccompProfile"].is_object() && !valid_seccomp(psc["seccompProfile"]["type"].as_str()) {
            setters.push("pod".to_string());
            values.push(psc["seccompProfile"]["type"].as_str().unwrap_or("").to_string());
        }
        let mut names = vec![];
        for c in &cs {
            let p = &c["securityContext"]["seccompProfile"];
            if p.is_object() && !valid_seccomp(p["type"].as_str()) {
                names.push(cname(c));
                values.push(p["type"].as_str().unwrap_or("").to_string());
            }
        }
        if !names.is_empty() {
            setters.push(containers(&names));
        }
        if !setters.is_empty() {
            fail("seccompProfile", format!("{} must not set securityContext.seccompProfile.type to {}", setters.join(" and "), join_quote(&sorted(values))));
        }
    }
    if !restricted {
        return out;
    }

    // allowPrivilegeEscalation
    {
        let names: Vec<String> = cs.iter().filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false).map(|c| cname(c)).collect();
        if !names.is_empty() {
            fail("allowPrivilegeEscalation != false", format!("{} must set securityContext.allowPrivilegeEscalation=false", containers(&names)));
        }
    }
    // capabilities_restricted
    {
        let mut missing_drop = vec![];
        let mut adding = vec![];
        let mut caps = vec![];
        for c in &cs {
            let cap = &c["securityContext"]["capabilities"];
            if !cap["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL")) {
                missing_drop.push(cname(c));
            }
            let added: Vec<String> =
                cap["add"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).filter(|a| *a != "NET_BIND_SERVICE").map(String::from).collect();
            if !added.is_empty() {
                adding.push(cname(c));
                caps.extend(added);
            }
        }
        let mut details = vec![];
        if !missing_drop.is_empty() {
            details.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers(&missing_drop)));
        }
        if !adding.is_empty() {
            details.push(format!("{} must not include {} in securityContext.capabilities.add", containers(&adding), join_quote(&sorted(caps))));
        }
        if !details.is_empty() {
            fail("unrestricted capabilities", details.join("; "));
        }
    }
    // restrictedVolumes
    {
        let mut names = vec![];
        let mut types = vec![];
        for v in &volumes {
            let kind = v.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).find(|k| *k != "name");
            if let Some(kind) = kind.filter(|k| !RESTRICTED_VOLUMES.contains(k)) {
                names.push(cname(v));
                types.push(kind.to_string());
            }
        }
        if !names.is_empty() {
            let types = sorted(types);
            fail(
                "restricted volume types",
                format!(
                    "{} {} {} {} {}",
                    pluralize("volume", "volumes", names.len()),
                    join_quote(&names),
                    pluralize("uses", "use", names.len()),
                    pluralize("restricted volume type", "restricted volume types", types.len()),
                    join_quote(&types)
                ),
            );
        }
    }
    // runAsNonRoot
    {
        let mut setters = vec![];
        let pod_non_root = psc["runAsNonRoot"] == true;
        if psc["runAsNonRoot"] == false {
            setters.push("pod".to_string());
        }
        let mut explicit = vec![];
        let mut implicit = vec![];
        for c in &cs {
            match c["securityContext"]["runAsNonRoot"].as_bool() {
                Some(false) => explicit.push(cname(c)),
                Some(true) => {}
                None if !pod_non_root => implicit.push(cname(c)),
                None => {}
            }
        }
        if !explicit.is_empty() {
            setters.push(containers(&explicit));
        }
        if !setters.is_empty() {
            fail("runAsNonRoot != true", format!("{} must not set securityContext.runAsNonRoot=false", setters.join(" and ")));
        } else if !implicit.is_empty() {
            fail("runAsNonRoot != true", format!("pod or {} must set securityContext.runAsNonRoot=true", containers(&implicit)));
        }
    }
    // runAsUser
    {
        let mut setters = vec![];
        if psc["runAsUser"] == 0 {
            setters.push("pod".to_string());
        }
        let names: Vec<String> = cs.iter().filter(|c| c["securityContext"]["runAsUser"] == 0).map(|c| cname(c)).collect();
        if !names.is_empty() {
            setters.push(containers(&names));
        }
        if !setters.is_empty() {
            fail("runAsUser=0", format!("{} must not set runAsUser=0", setters.join(" and ")));
        }
    }
    // seccompProfile_restricted
    {
        let mut setters = vec![];
        let mut values = vec![];
        let mut pod_set = false;
        if psc["seccompProfile"].is_object() {
            if valid_seccomp(psc["seccompProfile"]["type"].as_str()) {
                pod_set = true;
            } else {
                setters.push("pod".to_string());
                values.push(psc["seccompProfile"]["type"].as_str().unwrap_or("").to_string());
            }
        }
        let mut explicit = vec![];
        let mut implicit = vec![];
        for c in &cs {
            let p = &c["securityContext"]["seccompProfile"];
            if p.is_object() {
                if !valid_seccomp(p["type"].as_str()) {
                    explicit.push(cname(c));
                    values.push(p["type"].as_str().unwrap_or("").to_string());
                }
            } else if !pod_set {
                implicit.push(cname(c));
            }
        }
        if !explicit.is_empty() {
            setters.push(containers(&explicit));
        }
        if !setters.is_empty() {
            fail("seccompProfile", format!("{} must not set securityContext.seccompProfile.type to {}", setters.join(" and "), join_quote(&sorted(values))));
        } else if !implicit.is_empty() {
            fail("seccompProfile", format!("pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"", containers(&implicit)));
        }
    }
    out
}

/// An HTTP `Warning` header value as the apiserver writes it: `299 - "<text>"`, with `"` and `\`
/// escaped.
pub fn warning_header(text: &str) -> String {
    format!("299 - \"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
