//! The Pod Security Standards, as far as a build pod can run into them: which level a rendered
//! Job's pod needs, so that a build for a namespace whose `pod-security.kubernetes.io/enforce`
//! label refuses it fails before its Job is created — the apiserver would take the Job (with
//! only a Warning) and refuse every pod it makes, leaving the build waiting for its timeout.
//!
//! The checks follow <https://kubernetes.io/docs/concepts/security/pod-security-standards/> and
//! name the violations the way PodSecurity admission does.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

/// The namespace label PodSecurity admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Restricted,
    Baseline,
    Privileged,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "restricted" => Some(Level::Restricted),
            "baseline" => Some(Level::Baseline),
            "privileged" => Some(Level::Privileged),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Restricted => "restricted",
            Level::Baseline => "baseline",
            Level::Privileged => "privileged",
        }
    }
}

/// What baseline lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP",
    "SETUID", "SYS_CHROOT",
];
/// The volume types restricted allows.
const RESTRICTED_VOLUMES: [&str; 8] = ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// The least privileged level the pod passes.
pub fn level_needed(pod: &PodSpec) -> Level {
    if !violations(pod, Level::Restricted).is_empty() {
        if !violations(pod, Level::Baseline).is_empty() {
            return Level::Privileged;
        }
        return Level::Baseline;
    }
    Level::Restricted
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[&str]) -> String {
    if names.len() == 1 {
        format!("container {}", quoted(names))
    } else {
        format!("containers {}", quoted(names))
    }
}

/// The names of the containers for which `bad` holds.
fn named<'a>(all: &[&'a Container], bad: impl Fn(&Container) -> bool) -> Vec<&'a str> {
    all.iter().filter(|c| bad(c)).map(|c| c.name.as_str()).collect()
}

fn context(c: &Container) -> Option<&SecurityContext> {
    c.security_context.as_ref()
}

/// What keeps the pod from `level`, one entry per check, as PodSecurity names them; empty when
/// it passes.
pub fn violations(pod: &PodSpec, level: Level) -> Vec<String> {
    if level == Level::Privileged {
        return vec![];
    }
    let all: Vec<&Container> = pod.init_containers.iter().flatten().chain(pod.containers.iter()).collect();
    let psc = pod.security_context.as_ref();
    let mut out = vec![];
    let mut check = |title: &str, names: Vec<&str>, what: &str| {
        if !names.is_empty() {
            out.push(format!("{title} ({} {what})", containers_phrase(&names)));
        }
    };

    // Baseline.
    check("privileged", named(&all, |c| context(c).and_then(|s| s.privileged) == Some(true)), "must not set securityContext.privileged=true");
    let added_by = |c: &Container| -> Vec<String> {
        let adds = context(c).and_then(|s| s.capabilities.as_ref()).and_then(|c| c.add.clone()).unwrap_or_default();
        adds.into_iter().filter(|a| !BASELINE_CAPABILITIES.contains(&a.as_str())).collect()
    };
    let added: Vec<String> = all.iter().flat_map(|c| added_by(c)).collect();
    let added: Vec<&str> = added.iter().map(String::as_str).collect();
    let what = format!("must not include {} in securityContext.capabilities.add", quoted(&added));
    check("non-default capabilities", named(&all, |c| !added_by(c).is_empty()), &what);
    check("hostPort", named(&all, |c| c.ports.iter().flatten().any(|p| p.host_port.is_some_and(|h| h != 0))), "must not use hostPort");
    let apparmor_unconfined = |c: &Container| context(c).and_then(|s| s.app_armor_profile.as_ref()).is_some_and(|p| p.type_ == "Unconfined");
    check("forbidden AppArmor profile", named(&all, apparmor_unconfined), "must not set AppArmor profile type to \"Unconfined\"");
    let unmasked = |c: &Container| context(c).and_then(|s| s.proc_mount.as_deref()).is_some_and(|m| m != "Default");
    check("procMount", named(&all, unmasked), "must not set securityContext.procMount to \"Unmasked\"");
    let seccomp_unconfined = |c: &Container| context(c).and_then(|s| s.seccomp_profile.as_ref()).is_some_and(|p| p.type_ == "Unconfined");
    check("seccompProfile", named(&all, seccomp_unconfined), "must not set securityContext.seccompProfile.type to \"Unconfined\"");
    let host: Vec<String> = [("hostNetwork", pod.host_network), ("hostPID", pod.host_pid), ("hostIPC", pod.host_ipc)]
        .iter()
        .filter(|(_, on)| *on == Some(true))
        .map(|(n, _)| format!("{n}=true"))
        .collect();
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }
    if psc.and_then(|s| s.seccomp_profile.as_ref()).is_some_and(|p| p.type_ == "Unconfined") {
        out.push("seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")".into());
    }
    let host_paths: Vec<&str> = pod.volumes.iter().flatten().filter(|v| v.host_path.is_some()).map(|v| v.name.as_str()).collect();
    if !host_paths.is_empty() {
        out.push(format!("hostPath volumes (volumes {})", quoted(&host_paths)));
    }
    if level == Level::Baseline {
        return out;
    }

    // Restricted, on top.
    for v in pod.volumes.iter().flatten() {
        let value = serde_json::to_value(v).unwrap_or_default();
        let kind = value.as_object().and_then(|m| m.keys().find(|k| k.as_str() != "name").cloned()).unwrap_or_default();
        if !kind.is_empty() && !RESTRICTED_VOLUMES.contains(&kind.as_str()) && kind != "hostPath" {
            out.push(format!("restricted volume types (volume {:?} uses restricted volume type {kind:?})", v.name));
        }
    }
    let mut check = |title: &str, names: Vec<&str>, what: &str| {
        if !names.is_empty() {
            out.push(format!("{title} ({} {what})", containers_phrase(&names)));
        }
    };
    let escalating = |c: &Container| context(c).and_then(|s| s.allow_privilege_escalation) != Some(false);
    check("allowPrivilegeEscalation != false", named(&all, escalating), "must set securityContext.allowPrivilegeEscalation=false");
    let caps_kept = |c: &Container| {
        let caps = context(c).and_then(|s| s.capabilities.as_ref());
        let drops_all = caps.and_then(|c| c.drop.as_ref()).is_some_and(|d| d.iter().any(|x| x == "ALL"));
        let adds_more = caps.and_then(|c| c.add.as_ref()).is_some_and(|a| a.iter().any(|x| x != "NET_BIND_SERVICE"));
        !drops_all || adds_more
    };
    check("unrestricted capabilities", named(&all, caps_kept), "must set securityContext.capabilities.drop=[\"ALL\"]");
    let pod_non_root = psc.and_then(|s| s.run_as_non_root) == Some(true);
    let root_allowed = |c: &Container| !context(c).and_then(|s| s.run_as_non_root).unwrap_or(pod_non_root);
    check("runAsNonRoot != true", named(&all, root_allowed), "must set securityContext.runAsNonRoot=true");
    let as_root = |c: &Container| context(c).and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user)) == Some(0);
    check("runAsUser=0", named(&all, as_root), "must not set runAsUser=0");
    let allowed_seccomp = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod_seccomp_ok = psc.and_then(|s| s.seccomp_profile.as_ref()).is_some_and(|p| allowed_seccomp(&p.type_));
    let no_seccomp = |c: &Container| context(c).and_then(|s| s.seccomp_profile.as_ref()).map_or(!pod_seccomp_ok, |p| !allowed_seccomp(&p.type_));
    check("seccompProfile", named(&all, no_seccomp), "must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml_json: serde_json::Value) -> PodSpec {
        serde_json::from_value(yaml_json).unwrap()
    }

    #[test]
    fn an_unconfined_container_needs_privileged_and_a_hardened_one_passes_restricted() {
        let hardened = serde_json::json!({"name": "compile", "image": "x", "securityContext": {
            "allowPrivilegeEscalation": false, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}});
        let spec = pod(serde_json::json!({"containers": [hardened.clone()], "volumes": [{"name": "w", "emptyDir": {}}]}));
        assert_eq!(level_needed(&spec), Level::Restricted, "{:?}", violations(&spec, Level::Restricted));

        let plain = pod(serde_json::json!({"containers": [{"name": "image", "image": "x"}]}));
        assert_eq!(level_needed(&plain), Level::Baseline);
        assert!(violations(&plain, Level::Restricted).iter().any(|v| v.starts_with("allowPrivilegeEscalation != false (container \"image\"")));

        let unconfined = pod(serde_json::json!({"initContainers": [hardened], "containers": [{"name": "image", "image": "x", "securityContext": {
            "seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}}}]}));
        assert_eq!(level_needed(&unconfined), Level::Privileged);
        assert_eq!(
            violations(&unconfined, Level::Baseline),
            vec![
                "forbidden AppArmor profile (container \"image\" must not set AppArmor profile type to \"Unconfined\")".to_string(),
                "seccompProfile (container \"image\" must not set securityContext.seccompProfile.type to \"Unconfined\")".to_string(),
            ]
        );
        let host = pod(serde_json::json!({"hostNetwork": true, "containers": [{"name": "a", "image": "x"}], "volumes": [{"name": "d", "hostPath": {"path": "/"}}]}));
        assert_eq!(violations(&host, Level::Baseline), vec!["host namespaces (hostNetwork=true)".to_string(), "hostPath volumes (volumes \"d\")".to_string()]);
    }
}
