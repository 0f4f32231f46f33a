//! Contract tests: the fake Kubernetes API server held to recordings of a real v1.36 control plane
//! (`tests/kube-recordings`, one test per scenario S01–S14). Each test drives the fake through the
//! requests the recording made — the same namespace (with its labels), Secrets, claim, quota, then
//! Kiln's golden Job from the recorded request body — and compares, as data, what a build service
//! reads: Job conditions in order, pod phases, each container's states, finalizers and deletion,
//! the pod's end relative to the Job's, Events, and the answers (status, `Warning` headers,
//! `Status` bodies). Values are compared after normalising only what differs per run
//! (`support::recording`). On a difference the test prints both sequences as a diff.
//!
//! The recordings' kubelet was a script ("compile hangs", "image exits 1" …); the fake's runs
//! containers as host processes, so each test rewrites the Job's commands to act the rule out
//! (`sh -c 'exit 1'`, `sleep 3600`) or flips the fake's fault switch (`oom_kill`, `evict`,
//! `unpullable_image`). Durations (activeDeadlineSeconds, progressDeadlineSeconds) are shortened
//! and never compared; orders and the back-off's growth are.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::fake_kube::{FakeKube, FakeKubeOptions};
use crate::support::recording::{
    self, container_states, deployment_conditions, events_by_source, job_condition_messages, job_conditions, milestones, pod_lifecycle, pod_phases,
    pod_scheduling, progressing_messages, recorded_summary, rollout_verdicts, server_diff, Answer, Contract, Norm, Observed, Recording,
    WatchEvent,
};

/// How long the fake gets to reach the recorded state. Only a fake that differs waits this long.
const WAIT: Duration = Duration::from_secs(20);
/// How long to wait for the recorded state before a mid-scenario request.
const STAGE: Duration = Duration::from_secs(10);

const JOB: &str = "kiln-build-42";

fn fake(opts: FakeKubeOptions) -> FakeKube {
    crate::support::init();
    FakeKube::start(FakeKubeOptions { kiln_binary: Some(env!("CARGO_BIN_EXE_kiln").into()), ..opts })
}

/// The argv that stands in for a container: what the recording's kubelet rule made it do.
fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn succeeds() -> Vec<String> {
    vec!["true".into()]
}

fn hangs() -> Vec<String> {
    vec!["sleep".into(), "3600".into()]
}

/// Writes `message` to the container's terminationMessagePath (a path under its `/workspace`
/// mount, handed over as an argument so the fake's kubelet maps it).
fn writes_termination_message(path: &str, message: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), "mkdir -p \"$(dirname \"$1\")\" && printf %s \"$2\" > \"$1\"".into(), "sh".into(), path.into(), message.into()]
}

/// Every container of the Job's pod (init and main) runs `rules[name]`, or succeeds.
fn with_commands(job: &mut Value, rules: &[(&str, Vec<String>)]) {
    let spec = &mut job["spec"]["template"]["spec"];
    for key in ["initContainers", "containers"] {
        for c in spec[key].as_array_mut().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let argv = rules.iter().find(|(n, _)| *n == name).map(|(_, a)| a.clone()).unwrap_or_else(succeeds);
            c["command"] = json!(argv);
            if let Some(m) = c.as_object_mut() {
                m.remove("args");
            }
        }
    }
}

/// The recorded termination message of a container, from the last pod state that has one.
fn recorded_termination_message(rec: &Recording, container: &str) -> String {
    rec.events
        .iter()
        .filter(|e| e.resource == "pods")
        .flat_map(|e| e.object["status"]["containerStatuses"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == container)
        .filter_map(|c| c["state"]["terminated"]["message"].as_str().map(String::from))
        .last()
        .expect("a recorded termination message")
}

/// The sections compared for a Job scenario, by name: the same extraction for both sides.
fn job_views(events: &[WatchEvent], job: &str, n: &Norm) -> Vec<(String, Vec<String>)> {
    let mut v = vec![
        ("Job conditions after each write".to_string(), job_conditions(events, job)),
        ("Job condition messages".to_string(), job_condition_messages(events, job)),
        ("Job and pod milestones, in write order".to_string(), milestones(events, job)),
        ("pod phase".to_string(), pod_phases(events)),
        ("pod scheduling".to_string(), pod_scheduling(events, n)),
        ("pod finalizers and deletion".to_string(), pod_lifecycle(events)),
    ];
    for (c, states) in container_states(events) {
        v.push((format!("container {c}"), states));
    }
    // An Event from a component the recording has none from shows up as a section of its own.
    for (src, evs) in events_by_source(events, n) {
        v.push((format!("Events from {src}"), evs));
    }
    v
}

/// Sections of both sides, aligned by name (a section one side lacks is empty there).
fn aligned(rec: Vec<(String, Vec<String>)>, fake: Vec<(String, Vec<String>)>) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut names: Vec<String> = rec.iter().map(|(n, _)| n.clone()).collect();
    for (n, _) in &fake {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let get = |side: &Vec<(String, Vec<String>)>, n: &str| side.iter().find(|(m, _)| m == n).map(|(_, v)| v.clone()).unwrap_or_default();
    names.into_iter().map(|n| (n.clone(), get(&rec, &n), get(&fake, &n))).collect()
}

/// An exclusion applied to both sides of one section: (section name, lines) → lines.
type Adjust = fn(&str, Vec<String>) -> Vec<String>;

fn keep(_: &str, v: Vec<String>) -> Vec<String> {
    v
}

/// One scenario on a fresh fake: the recording, the fake, watches on it, the answers so far.
struct Run {
    rec: Recording,
    fk: FakeKube,
    client: kube::Client,
    ns: String,
    norm: Norm,
    observed: Observed,
    contract: Contract,
    /// Recorded and fake answers of the replayed requests, as summary lines.
    answers: (Vec<String>, Vec<String>),
    /// Requests already replayed (indexes into `rec.requests`).
    done: Vec<usize>,
}

impl Run {
    async fn start(id: &str, resources: &[&str], opts: FakeKubeOptions, generated: &[&str]) -> Run {
        let rec = Recording::load(id);
        let fk = fake(opts);
        let client = fk.client();
        let ns = rec.namespace();
        // As in the recordings: the watches are open before anything is created.
        let observed = Observed::watch(&client, &ns, resources).await;
        let mut contract = Contract::new(&rec.name);
        for r in observed.refused() {
            contract.note(format!("the fake refused {r}"));
        }
        Run { contract, rec, fk, client, ns, norm: Norm::new(generated), observed, answers: (vec![], vec![]), done: vec![] }
    }

    /// Replays recorded request `i` (with `body` instead of the recorded one when given) and
    /// keeps both answers for the comparison.
    async fn replay(&mut self, i: usize, body: Option<Value>) -> Answer {
        let r = self.rec.requests[i].clone();
        let body = body.or(r.body.clone());
        let a = recording::send(&self.client, &r.method, &r.path, r.content_type.as_deref(), body.as_ref()).await;
        self.answers.0.extend(with_items(recorded_summary(&r, &self.norm), &r.answer));
        self.answers.1.extend(with_items(a.summary(&r.method, r.route(), &self.norm), &a.body));
        self.done.push(i);
        a
    }

    /// Replays every request before the first Job create: namespace (with its labels), Secrets,
    /// the claim, a quota, and the GET probes. PersistentVolumes are skipped: the fake has no
    /// cluster-scoped volumes; its claims stand for a pre-bound PV (the recordings pre-bind them).
    async fn setup(&mut self) {
        let first_job = self.rec.requests.iter().position(|r| r.method == "POST" && r.resource() == "jobs").unwrap_or(self.rec.requests.len());
        self.replay_range(0, first_job).await;
    }

    async fn replay_range(&mut self, from: usize, to: usize) {
        for i in from..to {
            if self.done.contains(&i) || self.rec.requests[i].resource() == "persistentvolumes" {
                continue;
            }
            self.replay(i, None).await;
        }
    }

    /// Index of the `nth` recorded request with this method whose path contains `part`.
    fn request(&self, method: &str, part: &str, nth: usize) -> usize {
        self.rec.requests.iter().enumerate().filter(|(_, r)| r.method == method && r.path.contains(part)).nth(nth).map(|(i, _)| i).expect("recorded request")
    }

    /// Creates the `nth` recorded Job with its commands rewritten by `rules`, and `edit`.
    async fn create_job(&mut self, nth: usize, rules: &[(&str, Vec<String>)], edit: impl FnOnce(&mut Value)) -> Answer {
        let i = self.request("POST", "/jobs", nth);
        let mut body = self.rec.requests[i].body.clone().expect("a Job body");
        with_commands(&mut body, rules);
        edit(&mut body);
        self.replay(i, Some(body)).await
    }

    fn recorded_views(&self, adjust: Adjust, until_ms: Option<u64>) -> Vec<(String, Vec<String>)> {
        let events = match until_ms {
            Some(t) => self.rec.events_before(t),
            None => self.rec.events.clone(),
        };
        job_views(&events, JOB, &self.norm).into_iter().map(|(n, v)| (n.clone(), adjust(&n, v))).collect()
    }

    fn fake_views(events: &[WatchEvent], norm: &Norm, adjust: Adjust) -> Vec<(String, Vec<String>)> {
        job_views(events, JOB, norm).into_iter().map(|(n, v)| (n.clone(), adjust(&n, v))).collect()
    }

    /// Waits until the fake has shown everything the recording showed before recorded request
    /// `i` (all sections equal), so the request comes at the same point of the story.
    async fn stage_before(&self, i: usize, adjust: Adjust) -> bool {
        let want = self.recorded_views(adjust, Some(self.rec.requests[i].t_ms));
        let norm = self.norm.clone();
        self.observed
            .until(STAGE, &format!("the recorded state before {} {}", self.rec.requests[i].method, self.rec.requests[i].path), |ev| {
                aligned(want.clone(), Self::fake_views(ev, &norm, adjust)).iter().all(|(_, r, f)| r == f)
            })
            .await
    }

    /// Waits until the fake shows what the recording shows (or `WAIT` passes), replays the
    /// recorded requests not yet replayed (the final GETs), and compares everything.
    async fn finish(mut self, adjust: Adjust) {
        let want = self.recorded_views(adjust, None);
        let norm = self.norm.clone();
        self.observed
            .until(WAIT, "the recorded end state", |ev| aligned(want.clone(), Self::fake_views(ev, &norm, adjust)).iter().all(|(_, r, f)| r == f))
            .await;
        let got = Self::fake_views(&self.observed.events(), &self.norm, adjust);
        for (name, r, f) in aligned(want, got) {
            self.contract.compare(&name, r, f);
        }
        self.replay_range(0, self.rec.requests.len()).await;
        self.verify()
    }

    fn verify(mut self) {
        let (r, f) = std::mem::take(&mut self.answers);
        self.contract.compare("answers to the requests", r, f);
        self.contract.verify();
    }

    /// The one pod the fake made, by name.
    fn pod_name(&self) -> Option<String> {
        self.observed.events().iter().find(|e| e.resource == "pods" && e.kind == "ADDED").map(|e| e.name().to_string())
    }
}

/// A list answer also says how many items it had (the final `GET pods`: is the pod gone?).
fn with_items(mut lines: Vec<String>, body: &Value) -> Vec<String> {
    if let Some(items) = body["items"].as_array() {
        lines.push(format!("    {} items", items.len()));
    }
    lines
}

fn job_events() -> &'static [&'static str] {
    &["jobs", "pods", "events"]
}

fn opts() -> FakeKubeOptions {
    FakeKubeOptions::default()
}

fn container_running(events: &[WatchEvent], container: &str) -> bool {
    container_states(events).get(container).and_then(|s| s.last()).is_some_and(|s| s.starts_with("running"))
}

/// S01: every step exits 0. SuccessCriteriaMet first, the finalizer removed, then Complete in a
/// separate write; the pod stays Succeeded with the `image` container's termination message.
#[tokio::test]
async fn contract_s01_success() {
    let mut run = Run::start("S01", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    let message = recorded_termination_message(&run.rec, "image");
    run.create_job(0, &[("image", writes_termination_message("/workspace/.kiln/result.json", &message))], |_| {}).await;
    run.finish(keep).await;
}

/// S02: the main container exits 1: FailureTarget (BackoffLimitExceeded), the finalizer
/// removed, then Failed; the failed pod stays.
#[tokio::test]
async fn contract_s02_main_container_exits_1() {
    let mut run = Run::start("S02", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    run.create_job(0, &[("image", sh("exit 1"))], |_| {}).await;
    run.finish(keep).await;
}

/// S03: the init container `compile` exits 1: the pod fails with `image` never started; the Job
/// as in S02.
#[tokio::test]
async fn contract_s03_init_container_exits_1() {
    let mut run = Run::start("S03", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    run.create_job(0, &[("compile", sh("exit 1"))], |_| {}).await;
    run.finish(keep).await;
}

/// S04: activeDeadlineSeconds passes while `compile` runs: the pod is deleted and FailureTarget
/// (DeadlineExceeded) written, the pod goes, and only then Failed. The deadline is 3 s here
/// instead of the recording's 20 (durations are not compared).
#[tokio::test]
async fn contract_s04_deadline_exceeded() {
    let mut run = Run::start("S04", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    run.create_job(0, &[("compile", hangs())], |j| j["spec"]["activeDeadlineSeconds"] = json!(3)).await;
    run.finish(keep).await;
}

/// S05: `compile` is OOM-killed (137 OOMKilled): visible only in the container status; the Job
/// as in S03.
#[tokio::test]
async fn contract_s05_oom_killed() {
    let mut run = Run::start("S05", job_events(), opts(), &["kiln-build-42-"]).await;
    run.fk.oom_kill("compile");
    run.setup().await;
    run.create_job(0, &[("compile", hangs())], |_| {}).await;
    run.finish(keep).await;
}

/// S06: the pod is evicted while `compile` runs: Failed (Evicted) with DisruptionTarget; the Job
/// fails with BackoffLimitExceeded.
#[tokio::test]
async fn contract_s06_evicted() {
    let mut run = Run::start("S06", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    run.create_job(0, &[("compile", hangs())], |_| {}).await;
    if run.observed.until(STAGE, "compile running", |ev| container_running(ev, "compile")).await {
        let pod = run.pod_name().expect("a pod");
        run.fk.evict(&run.ns, &pod);
    }
    run.finish(keep).await;
}

/// S07: `clone`'s image cannot be pulled: ErrImagePull, ImagePullBackOff, the pod Pending and the
/// Job without a condition (observed 40 s in the recording; here until the same state).
#[tokio::test]
async fn contract_s07_image_pull_back_off() {
    let mut run = Run::start("S07", job_events(), opts(), &["kiln-build-42-"]).await;
    run.fk.unpullable_image("ghcr.io/kiln-dev/kiln-tools:0.1.0");
    run.setup().await;
    run.create_job(0, &[], |_| {}).await;
    run.finish(keep).await;
}

/// The first FailedCreate attempts of S08 (the recording watched 65 s, seven attempts).
const S08_ATTEMPTS: usize = 3;

/// Only the first `S08_ATTEMPTS` Events of the job controller are compared: the test does not
/// wait a minute for the rest of the back-off.
fn first_attempts(section: &str, v: Vec<String>) -> Vec<String> {
    if section == "Events from job-controller" {
        v.into_iter().take(S08_ATTEMPTS).collect()
    } else {
        v
    }
}

/// S08: a dockerfile Job in an `enforce=baseline` namespace: 201 with a PodSecurity Warning
/// header, no pod ever, FailedCreate Events with a growing back-off (1, 2, 4 s …), the Job never
/// fails.
#[tokio::test]
async fn contract_s08_pod_security_baseline() {
    let mut run = Run::start("S08", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    let created_at = run.observed.now_ms();
    run.create_job(0, &[], |_| {}).await;
    let recorded_job_at = run.rec.job_creates()[0].t_ms;
    let norm = run.norm.clone();
    run.observed
        .until(WAIT, "the first FailedCreate attempts", |ev| {
            events_by_source(ev, &norm).get("job-controller").is_some_and(|v| v.len() >= S08_ATTEMPTS)
        })
        .await;
    // The back-off between attempts, in whole seconds: it doubles.
    let gaps = |times: Vec<u64>, from: u64| -> Vec<String> {
        let mut t: Vec<u64> = vec![from];
        t.extend(times.into_iter().take(S08_ATTEMPTS));
        t.windows(2).skip(1).map(|w| format!("{} s", (w[1].saturating_sub(w[0]) + 500) / 1000)).collect()
    };
    let rec_gaps = gaps(recording::event_times(&run.rec.events, "FailedCreate"), recorded_job_at);
    let fake_gaps = gaps(recording::event_times(&run.observed.events(), "FailedCreate"), created_at);
    run.contract.compare("back-off between FailedCreate attempts", rec_gaps, fake_gaps);
    run.finish(first_attempts).await;
}

/// The PVC appearing races the PV binder (tens of ms) against the scheduler: the recording's
/// one "pod has unbound immediate PersistentVolumeClaims" FailedScheduling (and the PodScheduled
/// message it set) is that race, not behaviour, so it is left out on both sides.
fn without_binder_race(_: &str, v: Vec<String>) -> Vec<String> {
    v.into_iter().filter(|l| !l.contains("unbound immediate PersistentVolumeClaims")).collect()
}

/// S09: the pod mounts a missing PVC: PodScheduled=False Unschedulable and one FailedScheduling,
/// nothing more; then the PVC appears, the pod is scheduled and the Job completes as in S01.
#[tokio::test]
async fn contract_s09_unschedulable_until_the_pvc_appears() {
    let mut run = Run::start("S09", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    let message = recorded_termination_message(&run.rec, "image");
    run.create_job(0, &[("image", writes_termination_message("/workspace/.kiln/result.json", &message))], |_| {}).await;
    // Phase 1 ends when the fake shows what the recording showed before the PV and PVC creates.
    let pvc = run.request("POST", "/persistentvolumeclaims", 0);
    run.stage_before(pvc - 1, without_binder_race).await;
    run.replay_range(0, pvc + 1).await;
    run.finish(without_binder_race).await;
}

/// S10: the Job is deleted with propagationPolicy=Background while `compile` runs: 200 Status,
/// Job DELETED at once, the pod deleted by the garbage collector, its finalizer stripped, gone; no
/// Events.
#[tokio::test]
async fn contract_s10_delete_background() {
    let mut run = Run::start("S10", job_events(), opts(), &["kiln-build-42-"]).await;
    run.setup().await;
    run.create_job(0, &[("compile", hangs())], |_| {}).await;
    let delete = run.request("DELETE", "/jobs/kiln-build-42", 0);
    run.stage_before(delete, keep).await;
    run.replay(delete, None).await;
    run.finish(keep).await;
}

/// S11: a ResourceQuota `count/jobs.batch: 0` refuses the Job with the exact 403 body, before and
/// after the quota's status is computed; nothing is created, no Event.
#[tokio::test]
async fn contract_s11_quota_refuses_the_job() {
    let mut run = Run::start("S11", &["jobs", "pods", "events", "resourcequotas"], opts(), &["kiln-build-42-"]).await;
    let status_computed = run.request("GET", "/resourcequotas/no-jobs", 0);
    run.replay_range(0, status_computed).await;
    // The recording read the quota after its controller filled in the status.
    run.observed
        .until(STAGE, "the quota's status", |ev| ev.iter().any(|e| e.resource == "resourcequotas" && e.object["status"]["used"].is_object()))
        .await;
    let a = run.replay(status_computed, None).await;
    let recorded = run.rec.requests[status_computed].answer.clone();
    run.contract.compare("the quota with its status computed", lines(&run.norm.value(&recorded)), lines(&run.norm.value(&a.body)));
    run.finish(keep).await;
}

/// A JSON value as sorted `path = value` lines, for a readable diff.
fn lines(v: &Value) -> Vec<String> {
    server_diff("", &json!({}), v, &Norm::default()).into_iter().map(|l| l.trim_start_matches("+ .").to_string()).collect()
}

/// S13: a Deployment rolled out by strategic-merge patches, a rollout that never becomes ready
/// (ProgressDeadlineExceeded), a rollback. What a rollout watcher reads of the Deployment is
/// compared; the fake's deployment controller reports status only, with no ReplicaSets or Pods
/// (Kiln's rollout reads only the Deployment), so those and their Events are not compared.
#[tokio::test]
async fn contract_s13_deployment_rollout() {
    let mut run = Run::start("S13", &["deployments"], opts(), &[]).await;
    let create = run.request("POST", "/deployments", 0);
    run.replay_range(0, create).await;
    // 2 s instead of 15: durations are not compared.
    let mut body = run.rec.requests[create].body.clone().unwrap();
    body["spec"]["progressDeadlineSeconds"] = json!(2);
    run.replay(create, Some(body)).await;
    let views = |ev: &[WatchEvent]| -> Vec<(String, Vec<String>)> {
        vec![
            ("rollout verdict after each write".into(), rollout_verdicts(ev, "web")),
            ("Deployment generation and conditions".into(), deployment_conditions(ev, "web")),
            ("Progressing messages".into(), progressing_messages(ev, "web")),
        ]
    };
    let patches: Vec<usize> = (0..3).map(|n| run.request("PATCH", "/deployments/web", n)).collect();
    // The second patch's image never becomes ready (the recording's kubelet rule `ready=never`).
    let never_ready = run.rec.requests[patches[1]].body.as_ref().unwrap()["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string();
    run.fk.fail_rollouts_of(never_ready.rsplit('@').next().unwrap());
    let mut patch_answers = (vec![], vec![]);
    for &p in &patches {
        // Each patch comes once the rollout before it has reached its recorded verdict.
        let want = rollout_verdicts(&run.rec.events_before(run.rec.requests[p].t_ms), "web");
        run.observed.until(STAGE, "the recorded verdict before the patch", |ev| rollout_verdicts(ev, "web").last() == want.last()).await;
        let a = run.replay(p, None).await;
        // The answer: generation bumped, status still the old one.
        let said = |b: &Value| {
            let progressing = b["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Progressing").cloned().unwrap_or(Value::Null);
            format!("generation {} observed {} Progressing {}", b["metadata"]["generation"], b["status"]["observedGeneration"], progressing["reason"])
        };
        patch_answers.0.push(said(&run.rec.requests[p].answer));
        patch_answers.1.push(said(&a.body));
    }
    run.contract.compare("what a PATCH answers", patch_answers.0, patch_answers.1);
    let want = views(&run.rec.events);
    run.observed
        .until(WAIT, "the recorded end of the rollouts", |ev| aligned(want.clone(), views(ev)).iter().all(|(_, r, f)| r == f))
        .await;
    for (name, r, f) in aligned(want, views(&run.observed.events())) {
        run.contract.compare(&name, r, f);
    }
    // The final GETs: the Deployment (ReplicaSets are not served by the fake: see above).
    let final_get = run.request("GET", "/deployments/web", 0);
    run.replay(final_get, None).await;
    run.verify();
}

/// S14: what the server adds to Kiln's three Jobs and their pods (`diff.md`): defaults, labels,
/// selector, finalizer, terminationMessagePath/Policy, tolerations …, compared as key paths and
/// normalised values (uids, resourceVersions, timestamps and generated names are per-run).
#[tokio::test]
async fn contract_s14_server_defaults() {
    let names = ["kiln-build-go", "kiln-build-maven", "kiln-build-dockerfile"];
    let generated: Vec<String> = names.iter().map(|n| format!("{n}-")).collect();
    let generated: Vec<&str> = generated.iter().map(|s| s.as_str()).collect();
    let mut run = Run::start("S14", &["jobs", "pods"], opts(), &generated).await;
    run.setup().await;
    let mut sent = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let idx = run.request("POST", "/jobs", i);
        let mut body = run.rec.requests[idx].body.clone().unwrap();
        with_commands(&mut body, &[]);
        let a = run.replay(idx, Some(body.clone())).await;
        let recorded = &run.rec.requests[idx];
        run.contract.compare(
            &format!("{name}: Job as returned by the create, vs what was sent"),
            server_diff("job", recorded.body.as_ref().unwrap(), &recorded.answer, &run.norm),
            server_diff("job", &body, &a.body, &run.norm),
        );
        sent.insert(name.to_string(), (body, a.body));
    }
    // Each pod as first stored, vs the template it was made from.
    let as_pod = |job: &Value| json!({"metadata": job["spec"]["template"]["metadata"], "spec": job["spec"]["template"]["spec"]});
    let first_pod = |ev: &[WatchEvent], job: &str| -> Option<Value> {
        ev.iter().find(|e| e.resource == "pods" && e.kind == "ADDED" && e.object["metadata"]["generateName"] == format!("{job}-")).map(|e| {
            let mut p = e.object.clone();
            if let Some(m) = p.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            p
        })
    };
    let done = |ev: &[WatchEvent]| names.iter().all(|n| job_conditions(ev, n).last().is_some_and(|c| c.contains("Complete=True")));
    run.observed.until(WAIT, "all three Jobs complete", done).await;
    let observed = run.observed.events();
    for (i, name) in names.iter().enumerate() {
        let recorded_job = run.rec.requests[run.request("POST", "/jobs", i)].body.clone().unwrap();
        let recorded_pod = first_pod(&run.rec.events, name).expect("a recorded pod");
        let (sent_job, created) = &sent[*name];
        let fake_pod = first_pod(&observed, name).unwrap_or(json!({}));
        run.contract.compare(
            &format!("{name}: Pod as first stored, vs the Job's template"),
            server_diff("pod", &as_pod(&recorded_job), &recorded_pod, &run.norm),
            server_diff("pod", &as_pod(sent_job), &fake_pod, &run.norm),
        );
        // The Job after it finished, vs the create's answer (what the job controller adds).
        let get = run.request("GET", &format!("/jobs/{name}"), 0);
        let recorded_final = run.rec.requests[get].answer.clone();
        let recorded_created = run.rec.requests[run.request("POST", "/jobs", i)].answer.clone();
        let a = run.replay(get, None).await;
        run.contract.compare(
            &format!("{name}: Job after it finished, vs the create's answer"),
            server_diff("job", &recorded_created, &recorded_final, &run.norm),
            server_diff("job", created, &a.body, &run.norm),
        );
        run.contract.compare(
            &format!("{name}: Job conditions after each write"),
            job_conditions(&run.rec.events, name),
            job_conditions(&observed, name),
        );
    }
    run.verify();
}

// ---- S12: list and watch semantics ----

/// resourceVersions of the recording mapped to the fake's, learnt from the answers to the same
/// requests (a write's object, a list's metadata).
#[derive(Default)]
struct Versions {
    map: BTreeMap<u64, u64>,
    /// Continue tokens likewise.
    tokens: BTreeMap<String, String>,
}

fn rv_of(v: &Value) -> Option<u64> {
    v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok())
}

impl Versions {
    fn learn(&mut self, recorded: &Value, fake: &Value) {
        if let (Some(r), Some(f)) = (rv_of(recorded), rv_of(fake)) {
            self.map.entry(r).or_insert(f);
        }
        if let (Some(r), Some(f)) = (recorded["metadata"]["continue"].as_str(), fake["metadata"]["continue"].as_str()) {
            self.tokens.insert(r.to_string(), f.to_string());
        }
    }

    /// The recorded path with its resourceVersion and continue token the fake's. RV 1 stays (older
    /// than any window); an RV far ahead of everything recorded stays as far ahead of the fake.
    fn path(&self, path: &str, fake_now: u64, timeout: Option<u64>) -> String {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let max = self.map.keys().max().copied().unwrap_or(0);
        let params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let v = match k {
                    "resourceVersion" => match v.parse::<u64>() {
                        Ok(1) | Ok(0) | Err(_) => v.to_string(),
                        Ok(rv) if rv > max + 1000 => (fake_now + (rv - max)).to_string(),
                        Ok(rv) => self.map.get(&rv).map(|f| f.to_string()).unwrap_or_else(|| v.to_string()),
                    },
                    "continue" => self.tokens.get(v).cloned().unwrap_or_else(|| v.to_string()),
                    "timeoutSeconds" => timeout.map(|t| t.to_string()).unwrap_or_else(|| v.to_string()),
                    _ => v.to_string(),
                };
                format!("{k}={v}")
            })
            .collect();
        if params.is_empty() { route.to_string() } else { format!("{route}?{}", params.join("&")) }
    }
}

/// A watch event as compared: type and name; a BOOKMARK says whether it ends the initial events;
/// an ERROR its Status. Periodic bookmarks are left out where bookmarks were asked for: their
/// cadence is an option of the fake (1 s by default) and ~60 s on the real server.
fn watch_line(e: &Value, bookmarks: bool, n: &Norm) -> Option<String> {
    let kind = e["type"].as_str().unwrap_or("");
    let o = &e["object"];
    match kind {
        "BOOKMARK" if o["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true" => Some("BOOKMARK initial-events-end".into()),
        "BOOKMARK" if bookmarks => None,
        "BOOKMARK" => Some("BOOKMARK".into()),
        "ERROR" => Some(format!("ERROR {} {} {}", o["code"], o["reason"].as_str().unwrap_or(""), rv_digits(o["message"].as_str().unwrap_or("")))),
        _ => Some(format!("{kind} {}", n.text(o["metadata"]["name"].as_str().unwrap_or("")))),
    }
}

/// resourceVersions inside messages ("too old resource version: 1 (2369)", "Too large resource
/// version: 104174, current: 4179") are per-run: every number in them is.
fn rv_digits(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            if !out.ends_with("<rv>") {
                out.push_str("<rv>");
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// A list answer as compared: status, items (name and data), whether the list's RV is the current
/// one or an older write's, paging, or the Status of a refusal.
fn list_lines(status: u16, body: &Value, last_write: u64, label: &dyn Fn(u64) -> String) -> Vec<String> {
    let mut out = vec![format!("→ {status}")];
    if status >= 300 {
        let mut b = body.clone();
        b["message"] = json!(rv_digits(b["message"].as_str().unwrap_or("")));
        out.push(format!("    {b}"));
        return out;
    }
    let names: Vec<String> = body["items"].as_array().into_iter().flatten().map(|i| format!("{}{}", i["metadata"]["name"].as_str().unwrap_or(""), i["data"])).collect();
    out.push(format!("    items {}", names.join(" ")));
    let rv = rv_of(body).unwrap_or(0);
    out.push(format!("    resourceVersion {}", if rv >= last_write { "current".to_string() } else { label(rv) }));
    if body["metadata"]["continue"].is_string() {
        out.push(format!("    continue, remainingItemCount {}", body["metadata"]["remainingItemCount"]));
    }
    out
}

/// S12: lists with RV unset / 0 / NotOlderThan / Exact, paging, a future RV, watches from a
/// too-old RV (an ERROR 410 event in a 200 stream), from an RV in the window (replayed), from now
/// (nothing), streaming lists and the initial-events-end bookmark, no bookmarks unless asked.
///
/// Not replayed as such: the etcd compaction. With the watch cache (the server's default) it has
/// no visible effect in the recording, and the fake's history is its watch cache; its window is
/// `history_limit` events, 8 here, which leaves RV 1 outside it (as 1 was outside the real
/// cache's window, 2369…) and every RV the scenario watches from inside. The ConfigMaps the
/// control plane puts in every namespace (kube-root-ca.crt, and the downstream
/// openshift-service-ca.crt) are created by the test as recorded, so the item sets and page counts
/// compare. Probe watches end after 1 s instead of 3–20 (`timeoutSeconds`): what they carry
/// arrives at once.
#[tokio::test]
async fn contract_s12_watch_semantics() {
    let rec = Recording::load("S12");
    let fk = fake(FakeKubeOptions { history_limit: 8, kubelet: false, ..Default::default() });
    let client = fk.client();
    let ns = rec.namespace();
    let norm = Norm::default();
    let mut contract = Contract::new(&rec.name);
    // The long watches, opened before the namespace exists: configmaps and pods with bookmarks,
    // jobs without.
    let long = Observed::open(
        &client,
        &[
            ("configmaps".into(), format!("{}?watch=1&allowWatchBookmarks=true", recording::collection("configmaps", &ns))),
            ("pods".into(), format!("{}?watch=1&allowWatchBookmarks=true", recording::collection("pods", &ns))),
            ("jobs".into(), format!("{}?watch=1", recording::collection("jobs", &ns))),
        ],
    )
    .await;
    for r in long.refused() {
        contract.note(format!("the fake refused {r}"));
    }
    let mut versions = Versions::default();
    let mut rec_lines = Vec::new();
    let mut fake_lines = Vec::new();
    // The RV of each write, to name the RV a list is at.
    let mut writes: Vec<(u64, u64, String)> = Vec::new(); // (recorded rv, fake rv, what)
    for r in &rec.requests {
        let title = format!("{} {} ({})", r.method, r.path, r.note);
        match r.method.as_str() {
            "ETCD" => continue,
            "POST" | "PUT" | "DELETE" => {
                let a = recording::send(&client, &r.method, &r.path, r.content_type.as_deref(), r.body.as_ref()).await;
                versions.learn(&r.answer, &a.body);
                rec_lines.extend(recorded_summary(r, &norm));
                fake_lines.extend(a.summary(&r.method, r.route(), &norm));
                let what = format!("{} {}", r.method, r.answer["metadata"]["name"].as_str().or(r.answer["details"]["name"].as_str()).unwrap_or(""));
                writes.push((rv_of(&r.answer).unwrap_or(0), rv_of(&a.body).unwrap_or(0), what));
                if r.path == "/api/v1/namespaces" {
                    // What the control plane adds to a new namespace, as recorded.
                    for cm in rec.events.iter().filter(|e| e.resource == "configmaps" && e.name().ends_with(".crt")) {
                        let mut o = cm.object.clone();
                        for k in ["uid", "resourceVersion", "creationTimestamp", "namespace"] {
                            o["metadata"].as_object_mut().unwrap().remove(k);
                        }
                        let a = recording::send(&client, "POST", &recording::collection("configmaps", &ns), None, Some(&o)).await;
                        assert_eq!(a.status, 201, "{}", a.body);
                    }
                }
            }
            "GET" if r.path.contains("watch=1") => {
                let bookmarks = r.path.contains("allowWatchBookmarks=true");
                let recorded: Vec<String> = r.stream.iter().filter_map(|e| watch_line(e, bookmarks, &norm)).collect();
                let path = versions.path(&r.path, fk.resource_version(), Some(1));
                let mut got = Vec::new();
                match recording::open_watch(&client, &path).await {
                    Err(a) => got.push(format!("refused {} {}", a.status, a.body)),
                    Ok(mut rx) => loop {
                        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                            Ok(Some(e)) => got.extend(watch_line(&e, bookmarks, &norm)),
                            Ok(None) => break,
                            Err(_) => {
                                got.push("(the stream did not end)".into());
                                break;
                            }
                        }
                    },
                }
                rec_lines.push(format!("{title}\n      stream: {}", recording::dedup(recorded).join(" | ")));
                fake_lines.push(format!("{title}\n      stream: {}", recording::dedup(got).join(" | ")));
            }
            "GET" => {
                let path = versions.path(&r.path, fk.resource_version(), None);
                let a = recording::send(&client, "GET", &path, None, None).await;
                versions.learn(&r.answer, &a.body);
                let last_rec = writes.iter().map(|w| w.0).max().unwrap_or(0);
                let last_fake = writes.iter().map(|w| w.1).max().unwrap_or(0);
                let rec_label = |rv: u64| writes.iter().find(|w| w.0 == rv).map_or(format!("{rv}?"), |w| format!("at {}", w.2));
                let fake_label = |rv: u64| writes.iter().find(|w| w.1 == rv).map_or(format!("{rv}?"), |w| format!("at {}", w.2));
                rec_lines.push(title.clone());
                rec_lines.extend(list_lines(r.status, &r.answer, last_rec, &rec_label));
                fake_lines.push(title);
                fake_lines.extend(list_lines(a.status, &a.body, last_fake, &fake_label));
            }
            _ => {}
        }
    }
    contract.compare("lists and short watches, in the recorded order", rec_lines, fake_lines);
    // The long watches: everything but the periodic bookmarks (cadence: see `watch_line`).
    let recorded_long = |resource: &str, bookmarks: bool, ev: &[WatchEvent]| -> Vec<String> {
        ev.iter()
            .filter(|e| e.resource == resource)
            .filter_map(|e| watch_line(&json!({"type": e.kind, "object": e.object}), bookmarks, &norm))
            .collect()
    };
    let want: Vec<(String, bool)> = vec![("configmaps".into(), true), ("pods".into(), true), ("jobs".into(), false)];
    long.until(STAGE, "the long watches' events", |ev| {
        want.iter().all(|(r, b)| recorded_long(r, *b, &rec.events) == recorded_long(r, *b, ev))
    })
    .await;
    for (r, b) in &want {
        contract.compare(&format!("long watch on {r}"), recorded_long(r, *b, &rec.events), recorded_long(r, *b, &long.events()));
    }
    contract.verify();
}
