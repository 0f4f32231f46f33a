//! How the cluster says a build ends, read as a real control plane writes it.
//!
//! The job controller marks a Job it has decided about first (`SuccessCriteriaMet`, or
//! `FailureTarget` with the reason), removes the `batch.kubernetes.io/job-tracking` finalizer of
//! its pods, and only then writes the terminal `Complete` or `Failed`. Past
//! `activeDeadlineSeconds` it deletes the running pod before `Failed` is written, so a watcher
//! sees the container killed (exit 137) and the pod gone first; only the Job's condition reason
//! (`DeadlineExceeded`) says why. So a failure is judged from the Job's first verdict, whichever
//! condition carries it, and the pod's state names the cause where the Job cannot (which
//! container, OOMKilled, Evicted).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};

use super::tracker::BuildView;

/// The Job's decision, from its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobVerdict {
    /// No decision yet.
    Pending,
    /// `SuccessCriteriaMet` or `Complete`.
    Succeeded,
    /// `FailureTarget` or `Failed`, with the controller's reason and message.
    Failed { reason: String, message: String },
}

/// Reads a Job's conditions: the first True condition of a decision wins (`FailureTarget` comes
/// before `Failed` and carries the same reason).
pub fn job_verdict(job: &Job) -> JobVerdict {
    for c in job.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "FailureTarget" | "Failed" => {
                return JobVerdict::Failed {
                    reason: c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                    message: c.message.clone().unwrap_or_default(),
                }
            }
            "SuccessCriteriaMet" | "Complete" => return JobVerdict::Succeeded,
            _ => {}
        }
    }
    JobVerdict::Pending
}

/// The reason the job controller gives for `activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";

/// Whether the view says the build ran past its deadline.
pub fn deadline_exceeded(v: &BuildView) -> bool {
    matches!(v.job.as_ref().map(job_verdict), Some(JobVerdict::Failed { reason, .. }) if reason == DEADLINE_EXCEEDED)
}

pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()).find(|c| c.name == name)
}

/// The container has run (or is running): its log can be read.
pub fn container_started(pod: &Pod, name: &str) -> bool {
    container_status(pod, name).and_then(|s| s.state.as_ref()).is_some_and(|s| s.running.is_some() || s.terminated.is_some())
}

/// How the build's container ended, once the view shows it.
pub fn terminated(v: &BuildView, name: &str) -> Option<ContainerStateTerminated> {
    v.pod().and_then(|p| container_status(p, name)).and_then(|s| s.state.as_ref()).and_then(|s| s.terminated.clone())
}

pub fn container_ended(v: &BuildView, name: &str) -> bool {
    v.pod().and_then(|p| container_status(p, name)).and_then(|s| s.state.as_ref()).is_some_and(|s| s.terminated.is_some())
}

/// The pod is being deleted or gone (a deadline, an eviction by the API, a person).
pub fn pod_going(v: &BuildView) -> bool {
    v.pod().is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

/// Waiting reasons that do not resolve by themselves for a build. (`ErrImagePull` is left out:
/// the kubelet retries once and reports `ImagePullBackOff` when that fails too.)
const STUCK_REASONS: [&str; 5] =
    ["ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"];

/// A failure the pod itself names: phase Failed with a reason (Evicted), or a container stuck
/// waiting (an image that cannot be pulled, a missing Secret).
pub fn pod_failure(v: &BuildView, step: &str) -> Option<String> {
    let pod = v.pod()?;
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        if let Some(reason) = status.and_then(|s| s.reason.clone()) {
            let msg = status.and_then(|s| s.message.clone()).unwrap_or_default();
            return Some(format!("{reason}: the pod failed during step {step}: {}{}", msg.trim(), disk_hint(&msg)));
        }
    }
    let statuses = status.into_iter().flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
    for cs in statuses {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(reason) = waiting.reason.as_deref().filter(|r| STUCK_REASONS.contains(r)) {
                let msg = waiting.message.clone().unwrap_or_default();
                return Some(format!("{reason}: step {} cannot start: {msg}", cs.name));
            }
        }
    }
    None
}

/// What to change when the kubelet evicted the pod for passing one of its own disk limits (an
/// emptyDir's sizeLimit, a container's or the pod's ephemeral-storage limit), as opposed to a node
/// that ran short: the user reading the build's reason cannot see the template.
fn disk_hint(message: &str) -> &'static str {
    let over_limit = ["Usage of EmptyDir volume", "ephemeral local storage usage exceeds", "exceeded its local ephemeral storage limit"];
    if over_limit.iter().any(|m| message.contains(m)) {
        " (the build outgrew its disk: the tenant settings workspace_size and ephemeral_storage, or the Job template's sizeLimit and ephemeral-storage values, raise it)"
    } else {
        ""
    }
}

/// Why the build cannot go on: what the pod names, else the Job's failure verdict, else the Job
/// deleted; None while nothing says so. A deadline is not judged here (the caller gives it its
/// own outcome); a failed container is judged by the caller from its exit, which names the cause
/// better than the Job's `BackoffLimitExceeded`.
pub fn failure_cause(v: &BuildView, step: &str) -> Option<String> {
    if let Some(cause) = pod_failure(v, step) {
        return Some(cause);
    }
    if let Some(JobVerdict::Failed { reason, message }) = v.job.as_ref().map(job_verdict) {
        return Some(format!("{reason}: the Job failed during step {step}: {message}"));
    }
    if v.job_deleted {
        return Some(format!("the Job was deleted during step {step}"));
    }
    None
}

/// The pod's scheduling trouble: `PodScheduled=False` with reason `Unschedulable`, and the
/// scheduler's message.
pub fn unschedulable(v: &BuildView) -> Option<String> {
    let pod = v.pod()?;
    let cond = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled")?;
    (cond.status == "False" && cond.reason.as_deref() == Some("Unschedulable")).then(|| cond.message.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn job_with(conditions: &[(&str, &str)]) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, r)| JobCondition { type_: t.to_string(), status: "True".into(), reason: Some(r.to_string()), ..Default::default() })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_eviction_for_the_builds_own_disk_limits_says_which_settings_raise_them() {
        for msg in [
            "Usage of EmptyDir volume \"workspace\" exceeds the limit \"4Gi\". ",
            "Pod ephemeral local storage usage exceeds the total limit of containers 10Gi. ",
            "Container compile exceeded its local ephemeral storage limit \"256Mi\". ",
        ] {
            assert!(disk_hint(msg).contains("workspace_size and ephemeral_storage"), "{msg}");
        }
        // The node ran short: not the build's limits.
        assert_eq!(disk_hint("The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 512Mi. "), "");
        assert_eq!(disk_hint("The node was low on resource: memory. "), "");
    }

    #[test]
    fn the_first_condition_of_a_decision_is_the_verdict_as_the_real_controller_writes_them() {
        assert_eq!(job_verdict(&job_with(&[])), JobVerdict::Pending);
        assert_eq!(job_verdict(&job_with(&[("SuccessCriteriaMet", "CompletionsReached")])), JobVerdict::Succeeded);
        let deadline = JobVerdict::Failed { reason: "DeadlineExceeded".into(), message: String::new() };
        // FailureTarget alone (the pod is still being deleted) already decides.
        assert_eq!(job_verdict(&job_with(&[("FailureTarget", "DeadlineExceeded")])), deadline);
        assert_eq!(job_verdict(&job_with(&[("FailureTarget", "DeadlineExceeded"), ("Failed", "DeadlineExceeded")])), deadline);
        // A Failed written alone (an older controller) decides too.
        assert_eq!(job_verdict(&job_with(&[("Failed", "DeadlineExceeded")])), deadline);
        let view = BuildView { job: Some(job_with(&[("FailureTarget", "DeadlineExceeded")])), ..Default::default() };
        assert!(deadline_exceeded(&view));
        let view = BuildView { job: Some(job_with(&[("FailureTarget", "BackoffLimitExceeded")])), ..Default::default() };
        assert!(!deadline_exceeded(&view));
    }
}
