//! What a real cluster does to builds, on the fake API server held to the recordings of a real
//! v1.36 control plane (`tests/kube-recordings/`, `kube_contract`): a deadline reported in the
//! job controller's order, pods that can never be created or scheduled, and two Kiln
//! installations sharing one cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use builder_api::store::BuildState;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::kube_builds::{job_name, kiln_client, kube_config, KubeWorld, GIT_TOKEN, INSTANCE, LIMIT, SECRET};
use crate::support::fixtures::{fixture_app, instant_go, push_busybox_base};
use crate::support::kiln::TestKiln;

/// A stand-in for `go` that prints `slow line 1..=lines` (one every `ms`) and appends each line,
/// after printing it, to `written` on the host: what the process had surely written when it was
/// killed.
fn slow_go_recording(dir: &Path, written: &Path, lines: u32, ms: u32) -> PathBuf {
    let body = format!(
        "i=1\nwhile [ $i -le {lines} ]; do echo \"slow line $i\"; echo \"slow line $i\" >> '{}'; i=$((i+1)); sleep {}; done",
        written.display(),
        ms as f64 / 1000.0
    );
    crate::support::fixtures::fake_go(dir, "slow-go-recording", &body)
}

#[tokio::test]
async fn a_build_past_its_deadline_ends_timed_out_naming_the_step_with_every_line_written_before_the_kill() {
    let scratch = tempfile::tempdir().unwrap();
    let written = scratch.path().join("written.txt");
    let w = KubeWorld::new(|c, dir| {
        c.toolchains.go = slow_go_recording(dir, &written, 100_000, 20).display().to_string();
        c.executor.build_timeout_secs = 4;
    })
    .await;
    let sha = w.app(&w.token, "team", "slow", "go-hello", json!({"kind": "go"})).await;
    let id = w.trigger(&w.token, "slow", &sha).await;
    let (build, log) = w.ended(id, BuildState::TimedOut).await;
    assert_eq!(build.reason.as_deref(), Some("exceeded its timeout of 4 s during step compile"), "{log}");

    // The job controller's order, as recorded: FailureTarget came before Failed, and the pod was
    // gone before Failed was written. Kiln judged by the first.
    let stored = w.step_output(id, "compile").await;
    let on_host: Vec<String> = std::fs::read_to_string(&written).unwrap().lines().map(String::from).collect();
    assert!(on_host.len() >= 10, "the compile ran only {} lines before the deadline", on_host.len());
    assert_eq!(&stored[..on_host.len().min(stored.len())], &on_host[..], "a line written before the kill is missing or out of order");
    assert!(stored.len() == on_host.len() || stored.len() == on_host.len() + 1, "{} stored, {} written", stored.len(), on_host.len());
    assert!(log.contains("── step compile ended TimedOut"), "{log}");
}

#[tokio::test]
async fn a_dockerfile_build_in_a_baseline_namespace_fails_before_its_job_or_from_the_refusal_events() {
    let w = KubeWorld::new(|_, _| {}).await;
    w.fake.label_namespace("kiln-team", "pod-security.kubernetes.io/enforce", "baseline");
    let base = push_busybox_base(&w.registry.host());
    let sha = w.app(&w.token, "team", "staged", "dockerfile-hello", json!({"kind": "dockerfile", "settings": {"build_args": {"BASE": base}}})).await;

    // The label is readable: refused before any Job, naming the label and the level needed.
    let started = Instant::now();
    let id = w.trigger(&w.token, "staged", &sha).await;
    let (build, log) = w.ended(id, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(
        reason.contains("enforces PodSecurity \"baseline\" (label pod-security.kubernetes.io/enforce=baseline)")
            && reason.contains("needs \"privileged\"")
            && reason.contains("seccompProfile (container \"compile\" must not set securityContext.seccompProfile.type to \"Unconfined\")"),
        "{reason}\n{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(w.fake.count("create", "jobs"), 0, "a Job was created");

    // The label cannot be read (no right to get namespaces): the Job is created with the
    // apiserver's warning, the job controller's pod creates are refused, and the first
    // FailedCreate Event ends the build.
    w.fake.refuse_reads("namespaces", 403);
    let started = Instant::now();
    let id = w.trigger(&w.token, "staged", &sha).await;
    let (build, log) = w.ended(id, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.starts_with("pod cannot be created: pods \"") && reason.contains("violates PodSecurity \"baseline:latest\""), "{reason}\n{log}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(log.contains("[kiln] the Kubernetes API warns about Job") && log.contains("would violate PodSecurity \"baseline:latest\""), "{log}");
    assert!(log.contains("[kiln] pod cannot be created: pods \""), "{log}");
    // Its Job is deleted all the same.
    w.fake.wait_for("jobs", "kiln-team", &job_name(id), LIMIT, |j| j.is_none().then_some(())).await;
}

#[tokio::test]
async fn a_build_whose_cache_claim_is_missing_says_why_within_seconds_and_fails_after_the_unschedulable_timeout() {
    let w = KubeWorld::new(|c, _| {
        c.kube.cache_claim = Some("team-cache".into());
        c.kube.unschedulable_timeout_secs = 4;
    })
    .await;
    let sha = w.app(&w.token, "team", "hello", "go-hello", json!({"kind": "go"})).await;
    let started = Instant::now();
    let id = w.trigger(&w.token, "hello", &sha).await;
    // The scheduler's message reaches the log while the build waits.
    let wanted = "[kiln] pod cannot be scheduled: 0/1 nodes are available: persistentvolumeclaim \"team-cache\" not found";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut wake = w.kiln.ctx.hub.subscribe(id);
    loop {
        wake.borrow_and_update();
        if w.kiln.log(id).await.contains(wanted) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not in the log within 5 s:\n{}", w.kiln.log(id).await);
        let _ = tokio::time::timeout_at(deadline, wake.changed()).await;
    }
    let seen_after = started.elapsed();
    let (build, log) = w.ended(id, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.starts_with("the pod could not be scheduled for 4 s: 0/1 nodes are available: persistentvolumeclaim \"team-cache\" not found"), "{reason}");
    let failed_after = started.elapsed();
    assert!(failed_after >= Duration::from_secs(4) && failed_after < Duration::from_secs(15), "failed after {failed_after:?}");
    assert_eq!(log.matches(wanted).count(), 1, "the message is written once:\n{log}");
    eprintln!("missing cache claim: message after {seen_after:?}, failed after {failed_after:?}");

    // With the claim there, the next build runs.
    w.fake.create_pvc("kiln-team", "team-cache");
    let id = w.trigger(&w.token, "hello", &sha).await;
    w.ended(id, BuildState::Succeeded).await;
}

#[tokio::test]
async fn two_installations_on_one_cluster_never_touch_each_others_jobs_and_a_planted_pod_changes_no_build() {
    const BUILDS: usize = 20;
    let w = KubeWorld::new(|c, dir| c.toolchains.go = instant_go(dir).display().to_string()).await;
    let sha = w.app(&w.token, "team", "quick", "go-hello", json!({"kind": "go"})).await;
    // A second installation, same tenant and namespace, its own store (so the same build ids).
    let dir = tempfile::tempdir().unwrap();
    let mut config = kube_config(dir.path(), &w.registry);
    config.kube.instance = Some("second".into());
    config.toolchains.go = instant_go(dir.path()).display().to_string();
    let second = TestKiln::start_with_kube(dir, config, Some(kiln_client(&w.fake))).await;
    let token2 = second.tenant("team").await;
    let (sha2, spec) = fixture_app(&w.git, &w.registry.host(), "team/quick2", "go-hello", (SECRET, GIT_TOKEN), json!({"kind": "go"}));
    second.app(&token2, spec).await;

    // A Job with the first installation's labels that its store never made, there from the start.
    let stranger = json!({"metadata": {"name": "kiln-kilntest-9999", "labels": {
        "app.kubernetes.io/managed-by": "kiln", "kiln.dev/instance": INSTANCE, "kiln.dev/build": "9999"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["sleep", "3600"]}]}}}});
    w.fake.create("kiln-team", "jobs", stranger).expect("the stranger Job");

    let mut first_ids = vec![];
    let mut second_ids = vec![];
    for _ in 0..BUILDS {
        first_ids.push(w.trigger(&w.token, "quick", &sha).await);
        second_ids.push(second.trigger(&token2, "quick2", json!({"commit": sha2})).await);
    }
    assert!(first_ids.iter().any(|id| second_ids.contains(id)), "the two stores were meant to hand out the same build ids");
    for (kiln, ids, other) in [(&w.kiln, &first_ids, "second"), (&second, &second_ids, INSTANCE)] {
        for id in ids {
            let (build, log) = kiln.ended(*id, BuildState::Succeeded, LIMIT).await;
            assert!(build.image_digest.is_some());
            assert!(!log.contains(&format!("kiln-{other}-")), "build {id} mentions the other installation's Job:\n{log}");
        }
    }
    // Each Job was created once and deleted once, by its own installation (a delete by the other
    // would have failed a build or shown up as a third write).
    for (instance, ids) in [(INSTANCE, &first_ids), ("second", &second_ids)] {
        for id in ids {
            let name = builder_api::executor::kube::render::job_name(instance, *id);
            let writes: Vec<_> = w.fake.requests().into_iter().filter(|r| r.resource == "jobs" && r.is_write() && r.name.as_deref() == Some(name.as_str())).collect();
            assert_eq!(writes.iter().map(|r| r.verb).collect::<Vec<_>>(), ["create", "delete"], "{name}");
        }
    }

    // The first installation's start-up cleanup, run again now, leaves the Job its store does not
    // know alone (it ran at start too, when the Job was not there yet).
    w.kiln.ctx.executor.reconcile(&w.kiln.ctx.store).await.unwrap();
    assert!(w.fake.get("jobs", "kiln-team", "kiln-kilntest-9999").is_some(), "start-up cleanup deleted a Job of a build it does not know");

    // A pod with a build's labels that its Job does not control, claiming a finished image step,
    // changes nothing: the build waits for its own pod and records its own digest.
    w.fake.set_kubelet_running(false);
    let id = second.trigger(&token2, "quick2", json!({"commit": sha2})).await;
    let name = builder_api::executor::kube::render::job_name("second", id);
    w.fake.wait_for("jobs", "kiln-team", &name, LIMIT, |j| j.map(|_| ())).await;
    let pods: Api<Pod> = Api::namespaced(w.fake.client(), "kiln-team");
    let labels = json!({"app.kubernetes.io/managed-by": "kiln", "kiln.dev/instance": "second", "kiln.dev/build": id.to_string()});
    for (suffix, owner) in [("noowner", None), ("otherowner", Some("0b6d5c1e-0000-4000-a000-000000000000"))] {
        let mut pod = json!({"metadata": {"name": format!("{name}-{suffix}"), "labels": labels},
            "spec": {"nodeName": "elsewhere", "containers": [{"name": "image", "image": "x"}]}});
        if let Some(uid) = owner {
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true}]);
        }
        let pod: Pod = serde_json::from_value(pod).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "image", "image": "x", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
            "message": "{\"image\":\"evil.example.com/x@sha256:0000000000000000000000000000000000000000000000000000000000000bad\",\"digest\":\"sha256:0000000000000000000000000000000000000000000000000000000000000bad\"}"}}}]}});
        pods.patch_status(&format!("{name}-{suffix}"), &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    }
    w.fake.set_kubelet_running(true);
    let (build, log) = second.ended(id, BuildState::Succeeded, LIMIT).await;
    assert!(!build.image_digest.unwrap().ends_with("bad"), "a planted pod's termination message became the digest");
    assert!(log.contains("── step clone"), "{log}");
}
