//! The fake Kubernetes API server, driven with kube-rs exactly as Kiln drives a real one: if these
//! pass, Kiln's kube executor tests are testing Kiln, not the fake.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};

use crate::support::fake_kube::{FakeKube, FakeKubeOptions};

const WAIT: Duration = Duration::from_secs(30);

fn fake(kubelet: bool) -> FakeKube {
    crate::support::init();
    FakeKube::start(FakeKubeOptions {
        kubelet,
        kiln_binary: Some(env!("CARGO_BIN_EXE_kiln").into()),
        namespaces: vec!["default".into(), "team-a".into()],
        ..Default::default()
    })
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn job(name: &str, spec: Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kiln.dev/build": name}},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "kiln-build"}}, "spec": spec}}
    }))
    .unwrap()
}

/// The Job's one pod, once the controller made it.
async fn pod_of(fk: &FakeKube, ns: &str, job: &str) -> String {
    fk.wait_until(WAIT, &format!("a pod of job {job}"), |fk| {
        let pods = fk.list("pods", Some(ns));
        pods.iter().find(|p| p["metadata"]["labels"]["job-name"] == job).map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
    })
    .await
}

fn job_condition(j: Option<&Value>) -> Option<(String, String)> {
    j?["status"]["conditions"].as_array()?.iter().find_map(|c| {
        let t = c["type"].as_str()?;
        (matches!(t, "Complete" | "Failed") && c["status"] == "True").then(|| (t.to_string(), c["reason"].as_str().unwrap_or("").to_string()))
    })
}

#[tokio::test]
async fn fake_kube_crud_errors_patches_status_and_selectors() {
    let fk = fake(false);
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "team-a");
    let pp = PostParams::default();

    let a = cms.create(&pp, &cm("a", json!({"app": "x", "tier": "web"}))).await.unwrap();
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    let rv_a: u64 = a.metadata.resource_version.clone().unwrap().parse().unwrap();
    cms.create(&pp, &cm("b", json!({"app": "y"}))).await.unwrap();
    cms.create(&pp, &cm("c", json!({"app": "z", "canary": "1"}))).await.unwrap();
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "v");

    let e = api_error(cms.create(&pp, &cm("a", json!({}))).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str(), e.message.as_str()), (409, "AlreadyExists", "configmaps \"a\" already exists"));
    let e = api_error(cms.get("nope").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str(), e.message.as_str()), (404, "NotFound", "configmaps \"nope\" not found"));
    let e = api_error(cms.delete("nope", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(e.code, 404);
    let missing_ns: Api<ConfigMap> = Api::namespaced(fk.client(), "ghost");
    let e = api_error(missing_ns.create(&pp, &cm("a", json!({}))).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (404, "namespaces \"ghost\" not found"));

    // Jobs: group-qualified messages.
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    jobs.create(&pp, &job("build-7", json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["true"]}]}))).await.unwrap();
    let e = api_error(jobs.create(&pp, &job("build-7", json!({"containers": []}))).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str(), e.message.as_str()), (409, "AlreadyExists", "jobs.batch \"build-7\" already exists"));
    assert_eq!(e.details.as_ref().unwrap().name, "build-7");

    // Replace with a stale resourceVersion: 409 Conflict; with the current one it works.
    let mut stale = cms.get("a").await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k2": "v2"}}))).await.unwrap();
    stale.data.as_mut().unwrap().insert("k".into(), "lost".into());
    let e = api_error(cms.replace("a", &pp, &stale).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let mut fresh = cms.get("a").await.unwrap();
    assert_eq!(fresh.data.as_ref().unwrap()["k2"], "v2", "merge patch added a key");
    assert!(fresh.metadata.resource_version.as_ref().unwrap().parse::<u64>().unwrap() > rv_a);
    fresh.data.as_mut().unwrap().insert("k".into(), "new".into());
    let replaced = cms.replace("a", &pp, &fresh).await.unwrap();
    assert_eq!(replaced.data.unwrap()["k"], "new");
    // A no-op write keeps the resourceVersion.
    let same = cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "new"}}))).await.unwrap();
    assert_eq!(same.metadata.resource_version, replaced.metadata.resource_version);

    // Strategic merge: containers and env merge by name; merge patch replaces the list.
    let deps: Api<Deployment> = Api::namespaced(fk.client(), "team-a");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "reg/side:1"}
        ]}}}
    }))
    .unwrap();
    let d = deps.create(&pp, &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let d = deps
        .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "reg/app@sha256:abc", "env": [{"name": "B", "value": "3"}]}
        ]}}}})))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));
    let cs = &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers;
    assert_eq!(cs.len(), 2, "sidecar kept");
    assert_eq!(cs[0].image.as_deref(), Some("reg/app@sha256:abc"));
    let env: Vec<(String, String)> = cs[0].env.clone().unwrap().into_iter().map(|e| (e.name, e.value.unwrap())).collect();
    assert_eq!(env, vec![("A".into(), "1".into()), ("B".into(), "3".into())]);
    let d = deps
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}}})))
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().template.spec.unwrap().containers.len(), 1, "merge patch replaces lists");

    // JSON patch (RFC 6902), sent raw: kube's Patch::Json needs a feature the workspace does not enable.
    let req = axum::http::Request::patch("/api/v1/namespaces/team-a/configmaps/b")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&json!([{"op": "add", "path": "/data/j", "value": "p"}, {"op": "remove", "path": "/data/k"}])).unwrap())
        .unwrap();
    let b: ConfigMap = fk.client().request(req).await.unwrap();
    assert_eq!(b.data.unwrap(), BTreeMap::from([("j".to_string(), "p".to_string())]));

    // Server-side apply creates, then updates; a Secret's stringData lands in data.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(fk.client(), "team-a");
    let apply = |token: &str| {
        serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git"}, "stringData": {"token": token}}))
            .unwrap()
    };
    let created = secrets.patch("git", &PatchParams::apply("kiln").force(), &Patch::Apply(&apply("one"))).await.unwrap();
    let updated = secrets.patch("git", &PatchParams::apply("kiln").force(), &Patch::Apply(&apply("two"))).await.unwrap();
    assert_eq!(created.metadata.uid, updated.metadata.uid);
    assert_eq!(updated.data.unwrap()["token"].0, b"two");
    let e = api_error(secrets.patch("git", &PatchParams::default(), &Patch::Apply(&apply("x"))).await.unwrap_err());
    assert_eq!(e.code, 400, "apply needs a field manager");

    // Status subresource: status writes change only status; main writes ignore status.
    let pods: Api<Pod> = Api::namespaced(fk.client(), "team-a");
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap();
    let p = pods.create(&pp, &p).await.unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    let p = pods
        .patch_status("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"ignored": "yes"}}, "status": {"phase": "Running"}})))
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert!(p.metadata.labels.is_none(), "a status write does not change metadata");
    let p = pods
        .patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}, "status": {"phase": "Failed"}})))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"), "a main write ignores status");
    assert_eq!(p.metadata.labels.unwrap()["l"], "1");

    // Label and field selectors.
    let names = |l: Vec<ConfigMap>| l.into_iter().map(|c| c.metadata.name.unwrap()).collect::<Vec<_>>();
    for (sel, want) in [
        ("app=x", vec!["a"]),
        ("app!=x", vec!["b", "c"]),
        ("app in (x, z)", vec!["a", "c"]),
        ("app notin (x,z)", vec!["b"]),
        ("canary", vec!["c"]),
        ("!canary,app", vec!["a", "b"]),
        ("tier=web,app=x", vec!["a"]),
    ] {
        let l = cms.list(&ListParams::default().labels(sel)).await.unwrap();
        assert!(l.metadata.resource_version.is_some());
        assert_eq!(names(l.items), want, "{sel}");
    }
    let l = cms.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert_eq!(names(l.items), vec!["b"]);
    let all: Api<ConfigMap> = Api::all(fk.client());
    let l = all.list(&ListParams::default().fields("metadata.namespace=team-a")).await.unwrap();
    assert_eq!(l.items.len(), 3);

    assert!(fk.count("create", "configmaps") >= 4);
    assert_eq!(fk.writes_for_prefix("build-7"), 2, "two creates of build-7: {:?}", fk.requests_for_prefix("build-7"));
}

#[tokio::test]
async fn fake_kube_watcher_survives_dropped_watches_and_410() {
    let fk = fake(false);
    let pods: Api<Pod> = Api::namespaced(fk.client(), "default");
    let pp = PostParams::default();
    let pod = |name: &str, app: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap()
    };
    pods.create(&pp, &pod("a", "w")).await.unwrap();

    // What the watcher believes: name → resourceVersion; and how often it (re)listed.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = watcher(pods.clone(), watcher::Config::default().labels("app=w"));
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(w.default_backoff());
        while let Some(ev) = s.next().await {
            if tx.send(ev.ok()).is_err() {
                return;
            }
        }
    });
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut buffer: BTreeMap<String, String> = BTreeMap::new();
    let mut inits = 0;
    let mut deletes: Vec<String> = Vec::new();
    // Applies events until `done(seen)` holds.
    macro_rules! until {
        ($cond:expr) => {{
            let deadline = tokio::time::Instant::now() + WAIT;
            while !$cond(&seen) {
                let ev = tokio::time::timeout_at(deadline, rx.recv()).await.expect("watcher saw the change in time").unwrap();
                let key = |p: &Pod| (p.metadata.name.clone().unwrap(), p.metadata.resource_version.clone().unwrap());
                match ev {
                    Some(watcher::Event::Init) => {
                        inits += 1;
                        buffer.clear();
                    }
                    Some(watcher::Event::InitApply(p)) => {
                        let (k, v) = key(&p);
                        buffer.insert(k, v);
                    }
                    Some(watcher::Event::InitDone) => seen = std::mem::take(&mut buffer),
                    Some(watcher::Event::Apply(p)) => {
                        let (k, v) = key(&p);
                        seen.insert(k, v);
                    }
                    Some(watcher::Event::Delete(p)) => {
                        let (k, _) = key(&p);
                        seen.remove(&k);
                        deletes.push(k);
                    }
                    None => {}
                }
            }
        }};
    }
    let rv_of = |p: Pod| p.metadata.resource_version.unwrap();
    until!(|s: &BTreeMap<String, String>| s.contains_key("a"));
    assert_eq!(inits, 1);

    let b = rv_of(pods.create(&pp, &pod("b", "w")).await.unwrap());
    pods.create(&pp, &pod("other", "q")).await.unwrap();
    until!(|s: &BTreeMap<String, String>| s.get("b") == Some(&b));
    assert!(!seen.contains_key("other"), "label selector");

    // A dropped watch: the watcher re-watches from its last resourceVersion, nothing is missed.
    let opened = fk.watches_opened("pods");
    fk.drop_watches();
    let a2 = rv_of(pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"n": "1"}}}))).await.unwrap());
    let c = rv_of(pods.create(&pp, &pod("c", "w")).await.unwrap());
    until!(|s: &BTreeMap<String, String>| s.get("a") == Some(&a2) && s.get("c") == Some(&c));
    assert!(fk.watches_opened("pods") > opened, "the watcher reconnected");
    assert_eq!(inits, 1, "a dropped watch resumes without a re-list");

    // A label change moving a pod out of the selection is a delete for this watch.
    pods.patch("b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}}))).await.unwrap();
    until!(|s: &BTreeMap<String, String>| !s.contains_key("b"));
    assert!(deletes.contains(&"b".to_string()));

    // 410 Gone: the watcher re-lists and converges on the truth.
    let lists = fk.count("list", "pods");
    fk.expire_history();
    pods.delete("c", &DeleteParams::default()).await.unwrap();
    let d = rv_of(pods.create(&pp, &pod("d", "w")).await.unwrap());
    until!(|s: &BTreeMap<String, String>| s.get("d") == Some(&d) && !s.contains_key("c"));
    assert!(inits >= 2, "re-listed after 410 ({inits} inits)");
    assert!(fk.count("list", "pods") > lists);

    // A stale resourceVersion straight away: 410 as an ERROR event.
    let mut stream = pods.watch(&kube::api::WatchParams::default(), "2").await.unwrap().boxed();
    match stream.try_next().await.unwrap().unwrap() {
        kube::api::WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }

    // Final agreement with the store.
    let truth: BTreeMap<String, String> = fk
        .list("pods", Some("default"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "w")
        .map(|p| (p["metadata"]["name"].as_str().unwrap().to_string(), p["metadata"]["resourceVersion"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(seen, truth);
    task.abort();
}

#[tokio::test]
async fn fake_kube_job_runs_init_and_main_containers_with_logs_secrets_and_termination_message() {
    let fk = fake(true);
    fk.create_secret("team-a", "git", &[("token", "s3cret")]);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    let pods: Api<Pod> = Api::namespaced(fk.client(), "team-a");
    let ws = json!([{"name": "ws", "mountPath": "/workspace"}]);
    let env = json!([{"name": "WORKSPACE", "value": "/workspace"}, {"name": "SRC", "value": "$(WORKSPACE)/src"}]);
    let spec = json!({
        "restartPolicy": "Never",
        "volumes": [{"name": "ws", "emptyDir": {}}],
        "initContainers": [
            {"name": "clone", "image": "kiln", "command": ["sh", "-c"], "args": ["mkdir -p $SRC && echo hello > $SRC/file && echo cloned; echo warning >&2"],
             "env": env, "volumeMounts": ws},
            {"name": "version", "image": "kiln", "command": ["kiln", "--version"]},
        ],
        "containers": [
            {"name": "compile", "image": "golang", "command": ["sh", "-c", "echo token=$TOKEN; cat $(SRC)/file; echo early; sleep 1.2; echo late; printf 'built ok' > $TERM_FILE"],
             "env": [env[0], env[1], {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "git", "key": "token"}}},
                     {"name": "TERM_FILE", "value": "/workspace/out/msg"}],
             "terminationMessagePath": "/workspace/out/msg", "volumeMounts": ws, "workingDir": "/workspace/src"},
        ]
    });
    jobs.create(&PostParams::default(), &job("build-1", spec)).await.unwrap();
    let pod = pod_of(&fk, "team-a", "build-1").await;

    let cond = fk.wait_for("jobs", "team-a", "build-1", WAIT, job_condition).await;
    assert_eq!(cond.0, "Complete", "{:#?}", fk.get("pods", "team-a", &pod));
    let j = jobs.get("build-1").await.unwrap().status.unwrap();
    assert_eq!((j.succeeded, j.failed, j.active), (Some(1), Some(0), Some(0)));
    assert!(j.start_time.is_some() && j.completion_time.is_some());

    let p = pods.get(&pod).await.unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-name"], "build-1");
    let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller, owner.block_owner_deletion), ("Job", Some(true), Some(true)));
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("fake-node"));
    let st = p.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    let main = &st.container_statuses.unwrap()[0];
    let term = main.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((term.exit_code, term.reason.as_deref(), term.message.as_deref()), (0, Some("Completed"), Some("built ok")));
    let inits = st.init_container_statuses.unwrap();
    assert!(inits.iter().all(|c| c.state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code == 0));

    // Logs: stdout and stderr of each container, by container name.
    let lp = |c: &str| LogParams { container: Some(c.into()), ..Default::default() };
    assert_eq!(pods.logs(&pod, &lp("clone")).await.unwrap(), "cloned\nwarning\n");
    let version = pods.logs(&pod, &lp("version")).await.unwrap();
    assert!(version.starts_with("kiln "), "{version}");
    let text = pods.logs(&pod, &lp("compile")).await.unwrap();
    assert_eq!(text, "token=s3cret\nhello\nearly\nlate\n");
    assert_eq!(pods.logs(&pod, &LogParams::default()).await.unwrap(), text, "one main container: no name needed");
    let tail = pods.logs(&pod, &LogParams { tail_lines: Some(2), ..lp("compile") }).await.unwrap();
    assert_eq!(tail, "early\nlate\n");

    // timestamps=true: RFC 3339 with nine fractional digits, then a space.
    let stamped = pods.logs(&pod, &LogParams { timestamps: true, ..lp("compile") }).await.unwrap();
    let mut stamps = Vec::new();
    for line in stamped.lines() {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert_eq!(ts.len(), 30, "{ts}");
        stamps.push((ts.parse::<jiff::Timestamp>().unwrap(), rest.to_string()));
    }
    assert_eq!(stamps.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["token=s3cret", "hello", "early", "late"]);
    // sinceTime has second precision: from the second "late" was written in (1.2 s after
    // "early", so a later second) it gives "late" only.
    let late = stamps[3].0.round(jiff::TimestampRound::new().smallest(jiff::Unit::Second).mode(jiff::RoundMode::Trunc)).unwrap();
    let since = pods.logs(&pod, &LogParams { since_time: Some(late), ..lp("compile") }).await.unwrap();
    assert_eq!(since, "late\n");

    // Following a finished container returns everything and ends.
    let mut follow = pods.log_stream(&pod, &LogParams { follow: true, ..lp("compile") }).await.unwrap().lines();
    let mut got = Vec::new();
    while let Some(l) = follow.try_next().await.unwrap() {
        got.push(l);
    }
    assert_eq!(got, ["token=s3cret", "hello", "early", "late"]);
    assert!(fk.count("log", "pods") >= 7);
}

#[tokio::test]
async fn fake_kube_log_follow_resets_waiting_containers_and_config_errors() {
    let fk = fake(false);
    let pods: Api<Pod> = Api::namespaced(fk.client(), "default");
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "slow"}, "spec": {"restartPolicy": "Never",
        "initContainers": [{"name": "init", "image": "i", "command": ["true"]}],
        "containers": [
            {"name": "compile", "image": "i", "command": ["sh", "-c", "for i in 1 2 3 4 5 6; do echo n$i; sleep 0.2; done"]},
            {"name": "side", "image": "i", "command": ["true"]}
        ]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    // Not started (the kubelet is off): 400 like the real server.
    let lp = |c: &str| LogParams { container: Some(c.into()), ..Default::default() };
    let e = api_error(pods.logs("slow", &lp("compile")).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, "container \"compile\" in pod \"slow\" is waiting to start: PodInitializing"));
    let e = api_error(pods.logs("slow", &LogParams::default()).await.unwrap_err());
    assert_eq!(e.code, 400);
    assert!(e.message.starts_with("a container name must be specified for pod slow, choose one of: [compile side]"), "{}", e.message);
    assert_eq!(fk.get("pods", "default", "slow").unwrap()["spec"].get("nodeName"), None, "kubelet off: not scheduled");

    fk.reset_log_streams_after(2);
    fk.set_kubelet_running(true);
    fk.wait_for("pods", "default", "slow", WAIT, |p| {
        p?["status"]["containerStatuses"].as_array()?.iter().find(|c| c["name"] == "compile")?["state"].get("running").map(|_| ())
    })
    .await;
    let mut cut = pods.log_stream("slow", &LogParams { follow: true, ..lp("compile") }).await.unwrap().lines();
    let mut got = Vec::new();
    while let Some(l) = cut.try_next().await.unwrap() {
        got.push(l);
    }
    assert_eq!(got, ["n1", "n2"], "cut after two lines");
    fk.no_log_stream_resets();
    let mut whole = pods.log_stream("slow", &LogParams { follow: true, ..lp("compile") }).await.unwrap().lines();
    let mut got = Vec::new();
    while let Some(l) = whole.try_next().await.unwrap() {
        got.push(l);
    }
    assert_eq!(got, ["n1", "n2", "n3", "n4", "n5", "n6"], "follow ends when the container terminates");
    let phase = fk.wait_for("pods", "default", "slow", WAIT, |p| Some(p?["status"]["phase"].as_str()?.to_string()).filter(|ph| ph == "Succeeded")).await;
    assert_eq!(phase, "Succeeded");

    // A missing Secret: CreateContainerConfigError until it exists, then the container runs.
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "needs-secret"}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "i", "command": ["sh", "-c", "echo $(PASS)"], "env": [{"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "reg", "key": "password"}}}]}
    ]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let waiting = fk
        .wait_for("pods", "default", "needs-secret", WAIT, |p| {
            let w = &p?["status"]["containerStatuses"][0]["state"]["waiting"];
            (w["reason"] == "CreateContainerConfigError").then(|| w["message"].as_str().unwrap().to_string())
        })
        .await;
    assert_eq!(waiting, "secret \"reg\" not found");
    assert_eq!(fk.get("pods", "default", "needs-secret").unwrap()["status"]["phase"], "Pending");
    fk.create_secret("default", "reg", &[("password", "hunter2")]);
    fk.wait_for("pods", "default", "needs-secret", WAIT, |p| (p?["status"]["phase"] == "Succeeded").then_some(())).await;
    assert_eq!(fk.pod_log("default", "needs-secret", "c").unwrap(), "hunter2\n");
}

fn sleeper() -> Value {
    json!({"restartPolicy": "Never", "containers": [{"name": "compile", "image": "golang", "command": ["sleep", "30"]}]})
}

async fn running_pod(fk: &FakeKube, ns: &str, job: &str) -> String {
    let pod = pod_of(fk, ns, job).await;
    fk.wait_for("pods", ns, &pod, WAIT, |p| (p?["status"]["phase"] == "Running").then_some(())).await;
    pod
}

#[tokio::test]
async fn fake_kube_job_delete_background_removes_pods_and_no_policy_orphans_them() {
    let fk = fake(true);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "default");
    let pods: Api<Pod> = Api::namespaced(fk.client(), "default");
    jobs.create(&PostParams::default(), &job("bg", sleeper())).await.unwrap();
    let pod = running_pod(&fk, "default", "bg").await;
    jobs.delete("bg", &DeleteParams::background()).await.unwrap();
    assert!(fk.get("jobs", "default", "bg").is_none());
    fk.wait_for("pods", "default", &pod, WAIT, |p| p.is_none().then_some(())).await;
    let e = api_error(pods.logs(&pod, &LogParams::default()).await.unwrap_err());
    assert_eq!(e.code, 404, "the log goes with the pod");

    jobs.create(&PostParams::default(), &job("orphan", sleeper())).await.unwrap();
    let pod = running_pod(&fk, "default", "orphan").await;
    jobs.delete("orphan", &DeleteParams::default()).await.unwrap();
    assert!(fk.get("jobs", "default", "orphan").is_none());
    let p = pods.get(&pod).await.expect("the pod is orphaned, not deleted");
    assert!(p.metadata.owner_references.unwrap_or_default().is_empty());
    let conds = p.status.as_ref().unwrap().conditions.clone().unwrap();
    assert!(conds.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{conds:?}");
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    // Deleting the running pod: marked, processes killed, then gone.
    let marked = pods.delete(&pod, &DeleteParams::default()).await.unwrap();
    assert!(marked.left().is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
    fk.wait_for("pods", "default", &pod, WAIT, |p| p.is_none().then_some(())).await;
}

#[tokio::test]
async fn fake_kube_deadline_oom_image_pull_eviction_and_refused_creates() {
    let fk = fake(true);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "default");

    // activeDeadlineSeconds: DeadlineExceeded, the pod deleted.
    let mut spec = job("slowpoke", sleeper());
    // 2 s: startTime has second precision, so the deadline may come up to a second early, and
    // the pod must live long enough to be seen.
    spec.spec.as_mut().unwrap().active_deadline_seconds = Some(2);
    jobs.create(&PostParams::default(), &spec).await.unwrap();
    let pod = pod_of(&fk, "default", "slowpoke").await;
    let cond = fk.wait_for("jobs", "default", "slowpoke", WAIT, job_condition).await;
    assert_eq!(cond, ("Failed".to_string(), "DeadlineExceeded".to_string()));
    fk.wait_for("pods", "default", &pod, WAIT, |p| p.is_none().then_some(())).await;

    // OOM: the container is killed, 137 OOMKilled, the Job fails (backoffLimit 0, one pod only).
    fk.oom_kill("hungry");
    jobs.create(&PostParams::default(), &job("oom", json!({"restartPolicy": "Never", "containers": [{"name": "hungry", "image": "i", "command": ["sleep", "30"]}]})))
        .await
        .unwrap();
    let pod = pod_of(&fk, "default", "oom").await;
    let cond = fk.wait_for("jobs", "default", "oom", WAIT, job_condition).await;
    assert_eq!(cond, ("Failed".to_string(), "BackoffLimitExceeded".to_string()));
    let p = fk.get("pods", "default", &pod).unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((t["exitCode"].as_i64(), t["reason"].as_str()), (Some(137), Some("OOMKilled")));
    assert_eq!(fk.list("pods", Some("default")).iter().filter(|p| p["metadata"]["labels"]["job-name"] == "oom").count(), 1);
    // One-shot: the next container of that name runs to its end.
    jobs.create(&PostParams::default(), &job("fed", json!({"restartPolicy": "Never", "containers": [{"name": "hungry", "image": "i", "command": ["true"]}]})))
        .await
        .unwrap();
    let cond = fk.wait_for("jobs", "default", "fed", WAIT, job_condition).await;
    assert_eq!(cond.0, "Complete");

    // An image that cannot be pulled: ImagePullBackOff, the pod stays Pending.
    fk.unpullable_image("registry.invalid/");
    jobs.create(&PostParams::default(), &job("nopull", json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.invalid/x:1", "command": ["true"]}]})))
        .await
        .unwrap();
    let pod = pod_of(&fk, "default", "nopull").await;
    let msg = fk
        .wait_for("pods", "default", &pod, WAIT, |p| {
            let w = &p?["status"]["containerStatuses"][0]["state"]["waiting"];
            (w["reason"] == "ImagePullBackOff").then(|| w["message"].as_str().unwrap().to_string())
        })
        .await;
    assert_eq!(msg, "Back-off pulling image \"registry.invalid/x:1\"");
    assert_eq!(fk.get("pods", "default", &pod).unwrap()["status"]["phase"], "Pending");

    // Eviction: processes killed, phase Failed, reason Evicted.
    jobs.create(&PostParams::default(), &job("evicted", sleeper())).await.unwrap();
    let pod = running_pod(&fk, "default", "evicted").await;
    fk.evict("default", &pod);
    let p = fk
        .wait_for("pods", "default", &pod, WAIT, |p| {
            let p = p?;
            p["status"]["containerStatuses"][0]["state"].get("terminated").map(|_| p.clone())
        })
        .await;
    assert_eq!((p["status"]["phase"].as_str(), p["status"]["reason"].as_str()), (Some("Failed"), Some("Evicted")));
    assert_eq!(p["status"]["message"], "The node was low on resource: memory.");

    // Refused creates: 403 once, then allowed.
    fk.refuse_creates("jobs", 403, Some(1));
    let e = api_error(jobs.create(&PostParams::default(), &job("denied", sleeper())).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert!(e.message.starts_with("jobs.batch is forbidden: User"), "{}", e.message);
    fk.refuse_creates("jobs", 500, None);
    let e = api_error(jobs.create(&PostParams::default(), &job("denied", sleeper())).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    fk.stop_refusing_creates("jobs");
    jobs.create(&PostParams::default(), &job("denied", sleeper())).await.unwrap();
    jobs.delete("denied", &DeleteParams::foreground()).await.unwrap();
}

#[tokio::test]
async fn fake_kube_raw_watch_bookmarks_initial_state_timeout_and_streaming_lists() {
    crate::support::init();
    let fk = FakeKube::start(FakeKubeOptions { kubelet: false, bookmark_interval: Duration::from_millis(100), ..Default::default() });
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "default");
    cms.create(&PostParams::default(), &cm("one", json!({"app": "x"}))).await.unwrap();
    let now = fk.resource_version().to_string();

    // resourceVersion "0": the current state as ADDED first; then bookmarks with the current rv;
    // `timeoutSeconds` ends the stream.
    let wp = kube::api::WatchParams::default().labels("app=x").timeout(1);
    let mut s = cms.watch(&wp, "0").await.unwrap().boxed();
    match s.try_next().await.unwrap().unwrap() {
        kube::api::WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("one")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    match s.try_next().await.unwrap().unwrap() {
        kube::api::WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, now),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    cms.create(&PostParams::default(), &cm("two", json!({"app": "x"}))).await.unwrap();
    let mut added_two = false;
    while let Some(ev) = s.try_next().await.unwrap() {
        if let kube::api::WatchEvent::Added(c) = ev {
            added_two |= c.metadata.name.as_deref() == Some("two");
        }
    }
    assert!(added_two, "the stream saw the create and then ended at timeoutSeconds");
    assert_eq!(fk.watches_open("configmaps"), 0);

    // Streaming lists: kube's watcher in that mode gets the state and the end-of-initial bookmark.
    let w = watcher(cms.clone(), watcher::Config::default().labels("app=x").streaming_lists());
    let mut w = std::pin::pin!(w);
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, w.try_next()).await.unwrap().unwrap().unwrap() {
            watcher::Event::InitApply(c) => names.push(c.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    names.sort();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(fk.count("list", "configmaps"), 0, "no list request in streaming-list mode");
}

#[tokio::test]
async fn fake_kube_ttl_after_finished_deletes_the_job_and_its_pods() {
    let fk = fake(true);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "default");
    let mut j = job("short", json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["true"]}]}));
    j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(1);
    jobs.create(&PostParams::default(), &j).await.unwrap();
    let pod = pod_of(&fk, "default", "short").await;
    let cond = fk.wait_for("jobs", "default", "short", WAIT, job_condition).await;
    assert_eq!(cond.0, "Complete");
    fk.wait_for("jobs", "default", "short", WAIT, |j| j.is_none().then_some(())).await;
    fk.wait_for("pods", "default", &pod, WAIT, |p| p.is_none().then_some(())).await;

    // Delete answers: a Status for an object gone at once, the object while a deletion is pending.
    jobs.create(&PostParams::default(), &job("answer", sleeper())).await.unwrap();
    let pod = running_pod(&fk, "default", "answer").await;
    let gone = jobs.delete("answer", &DeleteParams::background()).await.unwrap();
    let status = gone.right().expect("a Status for a Job deleted at once");
    assert_eq!(status.details.unwrap().name, "answer");
    let pods: Api<Pod> = Api::namespaced(fk.client(), "default");
    fk.wait_for("pods", "default", &pod, WAIT, |p| p.is_none().then_some(())).await;
    assert!(pods.get_opt(&pod).await.unwrap().is_none());
}

#[tokio::test]
async fn fake_kube_volumes_failed_init_and_termination_message_cap() {
    let fk = fake(true);
    fk.create_secret("default", "reg", &[("password", "hunter2")]);
    let pods: Api<Pod> = Api::namespaced(fk.client(), "default");
    let pp = PostParams::default();
    let succeeded = |p: Option<&Value>| (p?["status"]["phase"] == "Succeeded").then_some(());
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "first"}, "spec": {"restartPolicy": "Never",
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "gocache"}}, {"name": "creds", "secret": {"secretName": "reg"}}],
        "initContainers": [{"name": "fill", "image": "i", "command": ["sh", "-c", "echo warm > \"$1/marker\"; cat \"$2/password\"; echo", "sh", "/cache", "/creds"],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}, {"name": "creds", "mountPath": "/creds", "readOnly": true}]}],
        // The default terminationMessagePath, handed over as an argument (and so rewritten).
        "containers": [{"name": "big", "image": "i", "command": ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x > \"$1\"", "sh", "/dev/termination-log"]}]
    }}))
    .unwrap();
    pods.create(&pp, &p).await.unwrap();
    fk.wait_for("pods", "default", "first", WAIT, succeeded).await;
    assert_eq!(fk.pod_log("default", "first", "fill").unwrap(), "hunter2\n");
    let p = fk.get("pods", "default", "first").unwrap();
    let msg = p["status"]["containerStatuses"][0]["state"]["terminated"]["message"].as_str().unwrap();
    assert_eq!(msg.len(), 4096, "capped as the kubelet does");

    // The claim's directory outlives the pod.
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "second"}, "spec": {"restartPolicy": "Never",
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "gocache"}}],
        "containers": [{"name": "read", "image": "i", "command": ["cat"], "args": ["/cache/marker"], "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}]
    }}))
    .unwrap();
    pods.create(&pp, &p).await.unwrap();
    fk.wait_for("pods", "default", "second", WAIT, succeeded).await;
    assert_eq!(fk.pod_log("default", "second", "read").unwrap(), "warm\n");

    // A failing init container fails the pod; nothing after it starts.
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "broken"}, "spec": {"restartPolicy": "Never",
        "initContainers": [{"name": "clone", "image": "i", "command": ["sh", "-c", "echo no such commit >&2; exit 3"]}, {"name": "later", "image": "i", "command": ["true"]}],
        "containers": [{"name": "compile", "image": "i", "command": ["true"]}]
    }}))
    .unwrap();
    pods.create(&pp, &p).await.unwrap();
    let p = fk.wait_for("pods", "default", "broken", WAIT, |p| (p?["status"]["phase"] == "Failed").then(|| p.unwrap().clone())).await;
    let t = &p["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!((t["exitCode"].as_i64(), t["reason"].as_str()), (Some(3), Some("Error")));
    assert_eq!(p["status"]["initContainerStatuses"][1]["state"]["waiting"]["reason"], "PodInitializing");
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing");
    assert_eq!(pods.logs("broken", &LogParams { container: Some("clone".into()), ..Default::default() }).await.unwrap(), "no such commit\n");
    let e = api_error(pods.logs("broken", &LogParams { container: Some("compile".into()), ..Default::default() }).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, "container \"compile\" in pod \"broken\" is waiting to start: PodInitializing"));

    // A `/tmp` mount: paths below it go to the volume, except a host file that exists as written
    // (a host tool standing in for the image's); `$(VAR)` in args expands before the one mapping.
    let host_dir = tempfile::Builder::new().prefix("tools").tempdir_in("/tmp").unwrap();
    let tool_path = host_dir.path().join("tool");
    std::fs::write(&tool_path, "#!/bin/sh\necho tool ran with \"$@\"\necho out > \"$2\"\n").unwrap();
    std::fs::set_permissions(&tool_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tool = tool_path.to_str().unwrap().to_string();
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "tmp-mount"}, "spec": {"restartPolicy": "Never",
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "ws", "emptyDir": {}}],
        "containers": [{"name": "c", "image": "i", "command": [tool, "$(WORKSPACE)/src", "/tmp/out"],
            "env": [{"name": "WORKSPACE", "value": "/workspace"}],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "ws", "mountPath": "/workspace"}]}]
    }}))
    .unwrap();
    pods.create(&pp, &p).await.unwrap();
    fk.wait_for("pods", "default", "tmp-mount", WAIT, succeeded).await;
    let uid = fk.get("pods", "default", "tmp-mount").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
    let vols = fk.root().join("pods").join(&uid).join("volumes");
    let log = fk.pod_log("default", "tmp-mount", "c").unwrap();
    assert_eq!(log, format!("tool ran with {} {}\n", vols.join("ws/src").display(), vols.join("tmp/out").display()));
    assert_eq!(std::fs::read_to_string(vols.join("tmp/out")).unwrap(), "out\n");
    drop(host_dir);

    // `$(VAR)` is not expanded in workingDir (only in command, args, env): the runtime refuses it.
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "cwd"}, "spec": {"restartPolicy": "Never",
        "containers": [{"name": "c", "image": "i", "command": ["true"], "workingDir": "$(WORKSPACE)/src", "env": [{"name": "WORKSPACE", "value": "/w"}]}]
    }}))
    .unwrap();
    pods.create(&pp, &p).await.unwrap();
    let p = fk.wait_for("pods", "default", "cwd", WAIT, |p| (p?["status"]["phase"] == "Failed").then(|| p.unwrap().clone())).await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((t["exitCode"].as_i64(), t["reason"].as_str()), (Some(128), Some("StartError")));
    assert!(t["message"].as_str().unwrap().contains("the working directory '$(WORKSPACE)/src' is invalid"), "{t}");
}
