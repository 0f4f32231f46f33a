//! Where a build's Job is handed to the cluster: the PodSecurity check against the namespace's
//! label, the create with the apiserver's `Warning` headers kept (PodSecurity admission only
//! warns about a Job whose pods it will refuse), and the adoption of a Job that already exists.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};

use super::pod_security::{self, Level, ENFORCE_LABEL};
use super::render::{LABEL_BUILD, LABEL_INSTANCE};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The namespace enforces a PodSecurity level the Job's pods do not meet.
    #[error("the namespace {namespace} enforces PodSecurity {enforced:?} (label {ENFORCE_LABEL}={enforced}), but the {kind} Job's pod needs {needed:?}: {violations}; label the namespace {ENFORCE_LABEL}={needed} or give the {kind} template a pod that passes {enforced:?}")]
    PodSecurity { namespace: String, kind: &'static str, enforced: &'static str, needed: &'static str, violations: String },
    /// A Job of that name exists and is not this build's (another installation's, or made by hand).
    #[error("a Job {namespace}/{name} exists that this build did not create (its labels say {labels}); it is left alone")]
    NotOurs { namespace: String, name: String, labels: String },
    #[error("creating Job {namespace}/{name}: {message}")]
    Api { namespace: String, name: String, message: String },
}

/// How the create went.
pub struct Submitted {
    /// The Job as stored (its uid is what the build's pods must be owned by).
    pub job: Job,
    /// The Job existed already (a retry after a lost answer, or a restart): it is followed.
    pub adopted: bool,
    /// The apiserver's `Warning` headers, as text (`would violate PodSecurity …`).
    pub warnings: Vec<String>,
}

/// Refuses a Job whose pods the namespace's `pod-security.kubernetes.io/enforce` level would
/// refuse. A namespace Kiln may not read (or without the label) is not checked: admission will
/// say, and the build log shows its Events.
pub async fn check_pod_security(client: &Client, namespace: &str, kind: &'static str, job: &Job) -> Result<(), SubmitError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let enforced = match namespaces.get_opt(namespace).await {
        Ok(Some(ns)) => ns.metadata.labels.and_then(|l| l.get(ENFORCE_LABEL).cloned()).and_then(|v| Level::parse(&v)),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!("reading namespace {namespace} for its PodSecurity label: {e}");
            None
        }
    };
    let (Some(enforced), Some(pod)) = (enforced, job.spec.as_ref().and_then(|s| s.template.spec.as_ref())) else { return Ok(()) };
    let needed = pod_security::level_needed(pod);
    if needed <= enforced {
        return Ok(());
    }
    Err(SubmitError::PodSecurity {
        namespace: namespace.to_string(),
        kind,
        enforced: enforced.as_str(),
        needed: needed.as_str(),
        violations: pod_security::violations(pod, enforced).join(", "),
    })
}

/// Creates the Job, keeping the apiserver's warnings. A 409 is a Job of the same name: adopted
/// when it carries this instance's and this build's labels, refused otherwise.
pub async fn create_job(client: &Client, job: &Job, instance: &str, build: i64) -> Result<Submitted, SubmitError> {
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let api_error = |message: String| SubmitError::Api { namespace: namespace.clone(), name: name.clone(), message };
    let body = serde_json::to_vec(job).map_err(|e| api_error(e.to_string()))?;
    let request = kube::core::Request::new(format!("/apis/batch/v1/namespaces/{namespace}/jobs"))
        .create(&PostParams::default(), body)
        .map_err(|e| api_error(e.to_string()))?;
    let response = client.send(request.map(kube::client::Body::from)).await.map_err(|e| api_error(e.to_string()))?;
    let status = response.status();
    let warnings: Vec<String> =
        response.headers().get_all("warning").iter().filter_map(|v| v.to_str().ok()).map(warning_text).collect();
    let body = response.into_body().collect_bytes().await.map_err(|e| api_error(e.to_string()))?;
    if status.is_success() {
        let job: Job = serde_json::from_slice(&body).map_err(|e| api_error(format!("the answer is not a Job: {e}")))?;
        return Ok(Submitted { job, adopted: false, warnings });
    }
    let status_body: Option<kube::core::Status> = serde_json::from_slice(&body).ok();
    let message = match &status_body {
        Some(s) => format!("{} ({} {})", s.message, status.as_u16(), s.reason),
        None => format!("{} {}", status.as_u16(), String::from_utf8_lossy(&body[..body.len().min(512)])),
    };
    if status.as_u16() != 409 {
        return Err(api_error(message));
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let existing = jobs.get(&name).await.map_err(|e| api_error(format!("{message}; then reading it: {e}")))?;
    let labels = existing.metadata.labels.clone().unwrap_or_default();
    let ours = labels.get(LABEL_INSTANCE).map(String::as_str) == Some(instance) && labels.get(LABEL_BUILD) == Some(&build.to_string());
    if !ours {
        let shown = [LABEL_INSTANCE, LABEL_BUILD].iter().map(|k| format!("{k}={}", labels.get(*k).map_or("(none)", |v| v))).collect::<Vec<_>>();
        return Err(SubmitError::NotOurs { namespace, name, labels: shown.join(", ") });
    }
    Ok(Submitted { job: existing, adopted: true, warnings })
}

/// The text of a `Warning` header (RFC 7234: code, agent, quoted text, an optional date):
/// `299 - "text"` → `text`.
fn warning_text(header: &str) -> String {
    let rest = header.trim();
    let rest = rest.split_once(' ').map_or(rest, |(_code, r)| r).trim_start();
    let rest = rest.split_once(' ').map_or(rest, |(_agent, r)| r).trim();
    let Some(quoted) = rest.strip_prefix('"') else { return rest.to_string() };
    let mut text = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.extend(chars.next()),
            '"' => break,
            c => text.push(c),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn warning_headers_are_read_as_their_text() {
        let h = r#"299 - "would violate PodSecurity \"baseline:latest\": forbidden AppArmor profile (container \"image\" must not set AppArmor profile type to \"Unconfined\")""#;
        assert_eq!(
            super::warning_text(h),
            r#"would violate PodSecurity "baseline:latest": forbidden AppArmor profile (container "image" must not set AppArmor profile type to "Unconfined")"#
        );
        assert_eq!(super::warning_text("299 - plain"), "plain");
        assert_eq!(super::warning_text(r#"299 - "a \"b\"" "Wed, 02 Dec 2026 10:00:00 GMT""#), r#"a "b""#);
    }
}
