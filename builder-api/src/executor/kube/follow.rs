//! Following one build's Job to its end: each container in step order (wait until it starts,
//! stream its log, judge how it ended), with what the cluster says in between — Warning Events
//! and an unschedulable pod — written into the build log as it happens.
//!
//! How a build ends does not depend on the order the control plane reports it in: a container
//! killed (exit 137) or a pod deleted mid-step waits for the Job's verdict ([`verdict`]) before
//! it is judged, so a build past its deadline always ends `TimedOut`, never "exit code 137" or
//! "the pod vanished".

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::pod_logs::{self, LogCursor, PassEnd};
use super::tracker::BuildView;
use super::verdict::{self, JobVerdict};
use crate::executor::{BuildJob, Outcome};
use crate::plan::StepSpec;
use crate::store::{BuildState, StepState};

/// How long a killed container or a vanished pod waits for the Job's verdict before it is judged
/// on its own (the real job controller writes it within about a second).
const VERDICT_WAIT: Duration = Duration::from_secs(15);

/// What the follower knows of one build beyond its view.
pub struct Follower<'a> {
    pub job: &'a BuildJob,
    pub pods: Api<Pod>,
    pub view: watch::Receiver<BuildView>,
    /// Kiln stops waiting on the cluster here: the Job's own deadline plus a grace for the cluster
    /// to say so.
    pub give_up_at: Instant,
    /// A pod unschedulable this long fails the build.
    pub unschedulable_timeout: Duration,
    /// Lines about the cluster already written, so an updated Event or condition is written once.
    written: HashSet<String>,
    /// Since when (Kiln's clock) the pod has been unschedulable.
    unschedulable_since: Option<Instant>,
    /// A pod of the build was seen: from then on, no pod means it is gone.
    saw_pod: bool,
}

impl<'a> Follower<'a> {
    pub fn new(job: &'a BuildJob, pods: Api<Pod>, view: watch::Receiver<BuildView>, give_up_at: Instant, unschedulable_timeout: Duration) -> Self {
        Follower { job, pods, view, give_up_at, unschedulable_timeout, written: HashSet::new(), unschedulable_since: None, saw_pod: false }
    }

    /// Follows the containers in order: waits for each to start, streams its log, records how it
    /// ended. Err is how the build ends early.
    pub async fn steps(&mut self, steps: &[StepSpec]) -> Result<(), Outcome> {
        let job = self.job;
        let recorded = job.store.steps(job.build.id).await.map_err(|e| Outcome::failed(format!("store: {e}")))?;
        for (position, step) in steps.iter().enumerate() {
            let name = step.name.as_str();
            let before = recorded.iter().find(|s| s.name == name);
            // Resumed after a restart: a step that already succeeded is done.
            if before.is_some_and(|s| s.state == "Succeeded") {
                continue;
            }
            let pod_name = self.wait_for_start(name).await?;
            // Step durations come from Kiln's clock (the watch reports a container's start and end
            // within milliseconds); the container's own timestamps have whole-second precision.
            let started_ms = before.and_then(|s| s.started_at).unwrap_or_else(crate::store::now_ms);
            if before.is_none() {
                let _ = job.store.start_step(job.build.id, position as i64, name).await;
                job.log.step_started(name).await;
            }
            // Only a resumed build has stored lines of this container to skip.
            let skip = if job.resumed { job.store.output_line_count(job.build.id, name).await.unwrap_or(0) as u64 } else { 0 };
            let mut cursor = LogCursor::skipping(skip);
            let streamed = self.stream(&pod_name, name, &mut cursor).await;
            let secs = (crate::store::now_ms() - started_ms).max(0) as f64 / 1000.0;
            let ended = match streamed {
                Ok(()) => self.container_end(name, &cursor).await,
                Err(outcome) => Err((outcome, None)),
            };
            // Here, where the step's end is known, rather than from the store at scrape time.
            job.metrics.step_finished(name, secs);
            match ended {
                Ok(()) => {
                    job.log.step_finished(name, "Succeeded", secs, Some(0), None).await;
                    let _ = job.store.finish_step(job.build.id, name, StepState::Succeeded, Some(0)).await;
                }
                Err((outcome, exit_code)) => {
                    job.log.step_finished(name, outcome.state.as_str(), secs, exit_code, outcome.reason.as_deref()).await;
                    let _ = job.store.finish_step(job.build.id, name, StepState::Failed, exit_code).await;
                    return Err(outcome);
                }
            }
        }
        Ok(())
    }

    /// Waits until the container runs (or has already ended) and returns its pod's name.
    async fn wait_for_start(&mut self, step: &str) -> Result<String, Outcome> {
        loop {
            if let Some(end) = self.observe(step).await {
                return Err(end);
            }
            let started = {
                let v = self.view.borrow_and_update();
                v.pod().filter(|p| verdict::container_started(p, step)).map(|p| p.metadata.name.clone().unwrap_or_default())
            };
            if let Some(pod) = started {
                return Ok(pod);
            }
            self.wait_change(&format!("before step {step} started"), step).await?;
        }
    }

    /// Streams one container's log until the container has ended and every line is read.
    async fn stream(&mut self, pod: &str, container: &str, cursor: &mut LogCursor) -> Result<(), Outcome> {
        let job = self.job;
        loop {
            let ended_before = verdict::container_ended(&self.view.borrow(), container);
            let pass = tokio::select! {
                end = pod_logs::pass(&self.pods, pod, container, !ended_before, cursor, &job.log) => end,
                _ = job.cancel.cancelled() => {
                    // Flush what the container wrote so far, then stop the Job.
                    let _ = pod_logs::pass(&self.pods, pod, container, false, cursor, &job.log).await;
                    return Err(Outcome { state: BuildState::Cancelled, reason: Some(format!("cancelled during step {container}")) });
                }
                _ = tokio::time::sleep_until(self.give_up_at) => {
                    let _ = pod_logs::pass(&self.pods, pod, container, false, cursor, &job.log).await;
                    return Err(Outcome::timed_out(job.timeout, container));
                }
            };
            if ended_before {
                // A whole read after the container ended: nothing more can come.
                return Ok(());
            }
            if let PassEnd::Unavailable(e) = pass {
                let gone = { let v = self.view.borrow(); v.pod().is_none() || v.job_deleted };
                if gone {
                    // The container ended with the pod (a deadline, a deletion): judged below.
                    return Ok(());
                }
                tracing::debug!(build = job.build.id, "log of {pod}/{container}: {e}");
            }
            // Ended or cut: if the container is still running, reopen after a pause; once the
            // watch shows it ended, one last read picks up anything the cut stream missed.
            if !verdict::container_ended(&self.view.borrow(), container) {
                let changed = tokio::time::timeout(pod_logs::REOPEN_DELAY, self.view.changed()).await;
                if let Ok(Err(_)) = changed {
                    return Err(Outcome::failed("kiln's Kubernetes watch stopped"));
                }
                self.write_cluster_lines(container).await;
                // Only a failure stops the reading early: a Job that says it succeeded while the
                // pod watch has not caught up (it re-lists after a dropped watch) is read on.
                let stopped = { let v = self.view.borrow(); verdict::pod_going(&v) || job_failed(&v) };
                if stopped && !verdict::container_ended(&self.view.borrow(), container) {
                    // The pod is being killed or the Job failed: read what is left, then judge.
                    let _ = pod_logs::pass(&self.pods, pod, container, false, cursor, &job.log).await;
                    return Ok(());
                }
            }
        }
    }

    /// How the container ended, once its log is read: Ok when it exited 0; otherwise the outcome
    /// and the exit code, if it has one.
    async fn container_end(&mut self, step: &str, cursor: &LogCursor) -> Result<(), (Outcome, Option<i32>)> {
        let terminated = match self.terminated(step) {
            Some(t) => Some(t),
            None => self.await_termination(step).await,
        };
        match terminated {
            Some(t) if t.exit_code == 0 => Ok(()),
            Some(t) => {
                let killed = t.exit_code == 137 && t.reason.as_deref() != Some("OOMKilled");
                let going = verdict::pod_going(&self.view.borrow());
                let code = Some(t.exit_code);
                if killed || going {
                    // Killed from outside (a deadline, a deletion, an eviction): the Job says why.
                    return Err((self.conclude(step, Some(&t), cursor).await, code));
                }
                Err((self.container_failure(step, &t, cursor), code))
            }
            None => Err((self.conclude(step, None, cursor).await, None)),
        }
    }

    /// The log ended before the view showed the container's end (the Pod watch lags the Job
    /// watch while it re-lists): waits for the view, unless the pod is going or the Job failed.
    async fn await_termination(&mut self, step: &str) -> Option<ContainerStateTerminated> {
        self.wait_for_view(|v| verdict::container_ended(v, step) || verdict::pod_going(v) || job_failed(v) || v.job_deleted).await;
        self.terminated(step)
    }

    fn terminated(&self, step: &str) -> Option<ContainerStateTerminated> {
        verdict::terminated(&self.view.borrow(), step)
    }

    /// Waits until `done` holds for the view, at most [`VERDICT_WAIT`] (or until the watch stops).
    async fn wait_for_view(&mut self, done: impl Fn(&BuildView) -> bool) {
        let until = Instant::now() + VERDICT_WAIT;
        loop {
            if done(&self.view.borrow_and_update()) {
                return;
            }
            tokio::select! {
                changed = self.view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// A container that failed by itself: OOMKilled, or its exit code and its most telling line.
    fn container_failure(&self, step: &str, t: &ContainerStateTerminated, cursor: &LogCursor) -> Outcome {
        match t.reason.as_deref() {
            Some("OOMKilled") => Outcome::failed(format!("{step} was OOMKilled (exit code {}): the container exceeded its memory limit", t.exit_code)),
            _ => Outcome::failed(crate::executor::step_failure(
                step,
                &format!("exit code {}", t.exit_code),
                cursor.telling.best().map(|l| self.job.masker.mask(l.to_string())),
            )),
        }
    }

    /// The build cannot go on and the pod's state alone does not say why: waits (briefly) for the
    /// Job's verdict, then judges — a deadline is `TimedOut` whatever the container showed.
    async fn conclude(&mut self, step: &str, terminated: Option<&ContainerStateTerminated>, cursor: &LogCursor) -> Outcome {
        self.wait_for_view(|v| v.job_deleted || v.job.is_none() || !matches!(v.job.as_ref().map(verdict::job_verdict), Some(JobVerdict::Pending)))
            .await;
        self.write_cluster_lines(step).await;
        let v = self.view.borrow().clone();
        if verdict::deadline_exceeded(&v) || (Instant::now() >= self.job.deadline && !v.job_deleted) {
            return Outcome::timed_out(self.job.timeout, step);
        }
        if let Some(cause) = verdict::pod_failure(&v, step) {
            return Outcome::failed(cause);
        }
        if let Some(t) = terminated {
            return self.container_failure(step, t, cursor);
        }
        if let Some(cause) = verdict::failure_cause(&v, step) {
            return Outcome::failed(cause);
        }
        Outcome::failed(format!("the pod vanished during step {step}"))
    }

    /// Writes what the cluster says and decides whether the build can go on; Some is how it ends.
    async fn observe(&mut self, step: &str) -> Option<Outcome> {
        if let Some(refused) = self.write_cluster_lines(step).await {
            return Some(refused);
        }
        let v = self.view.borrow().clone();
        if v.pod().is_some() {
            self.saw_pod = true;
        }
        if verdict::deadline_exceeded(&v) {
            return Some(Outcome::timed_out(self.job.timeout, step));
        }
        match verdict::unschedulable(&v) {
            Some(message) => {
                let since = *self.unschedulable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.unschedulable_timeout {
                    return Some(Outcome::failed(format!(
                        "the pod could not be scheduled for {} s: {message}",
                        self.unschedulable_timeout.as_secs()
                    )));
                }
            }
            None => self.unschedulable_since = None,
        }
        // What the pod names ends the build at once (an image that cannot be pulled gets no
        // verdict from the job controller at all).
        if let Some(cause) = verdict::pod_failure(&v, step) {
            return Some(Outcome::failed(cause));
        }
        let gone = (self.saw_pod && verdict::pod_going(&v)) || v.job_deleted;
        if gone || job_failed(&v) {
            return Some(self.conclude(step, None, &LogCursor::default()).await);
        }
        None
    }

    /// Writes the build's new Warning Events and its pod's scheduling trouble into the log, once
    /// each. Returns how the build ends when the cluster refuses to create its pod.
    async fn write_cluster_lines(&mut self, step: &str) -> Option<Outcome> {
        let (lines, refused) = {
            let v = self.view.borrow();
            cluster_lines(&v)
        };
        for line in lines {
            if self.written.insert(line.clone()) {
                self.job.log.system(step, format!("[kiln] {line}")).await;
            }
        }
        refused.map(Outcome::failed)
    }

    async fn wait_change(&mut self, when: &str, step: &str) -> Result<(), Outcome> {
        let job = self.job;
        let unschedulable_end = self.unschedulable_since.map(|s| s + self.unschedulable_timeout);
        tokio::select! {
            changed = self.view.changed() => changed.map_err(|_| Outcome::failed("kiln's Kubernetes watch stopped")),
            _ = job.cancel.cancelled() => Err(Outcome { state: BuildState::Cancelled, reason: Some(format!("cancelled {when}")) }),
            _ = tokio::time::sleep_until(self.give_up_at) => Err(Outcome::timed_out(job.timeout, step)),
            // Wake to fail the build when the pod has been unschedulable too long.
            _ = async { tokio::time::sleep_until(unschedulable_end.expect("guarded")).await }, if unschedulable_end.is_some() => Ok(()),
        }
    }
}

fn job_failed(v: &BuildView) -> bool {
    matches!(v.job.as_ref().map(verdict::job_verdict), Some(JobVerdict::Failed { .. }))
}

/// What the cluster says about the build, as log lines (without the `[kiln] ` prefix): its
/// Warning Events about its own Job and pod (checked by uid), and an unschedulable pod's
/// condition. The second value is set when the Job's pod cannot be created at all (refused by
/// admission): the build ends with it. A refusal by quota is only written: it clears when other
/// pods end.
fn cluster_lines(v: &BuildView) -> (Vec<String>, Option<String>) {
    let job_uid = v.job_uid();
    let pod_uid = v.pod().and_then(|p| p.metadata.uid.as_deref());
    let mut lines = vec![];
    let mut refused = None;
    for w in &v.warnings {
        let about_ours = match w.kind.as_str() {
            "Job" => job_uid == Some(w.object_uid.as_str()),
            _ => pod_uid == Some(w.object_uid.as_str()),
        };
        if !about_ours {
            continue;
        }
        let message = w.message.trim();
        match w.reason.as_str() {
            "FailedCreate" => {
                let message = message.strip_prefix("Error creating: ").unwrap_or(message);
                let line = format!("pod cannot be created: {message}");
                if refused.is_none() && !message.contains("exceeded quota") {
                    refused = Some(line.clone());
                }
                lines.push(line);
            }
            "FailedScheduling" => lines.push(format!("pod cannot be scheduled: {message}")),
            reason => lines.push(format!("{} {reason}: {message}", w.kind.to_lowercase())),
        }
    }
    if let Some(message) = verdict::unschedulable(v) {
        let line = format!("pod cannot be scheduled: {}", message.trim());
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    (lines, refused)
}
