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
    // Zero counts are left out, as the real server serialises them.
    assert_eq!((j.succeeded, j.failed, j.active, j.ready, j.terminating), (Some(1), None, None, Some(0), Some(0)));
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
        stamps.push((chrono::DateTime::parse_from_rfc3339(ts).unwrap(), rest.to_string()));
    }
    assert_eq!(stamps.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["token=s3cret", "hello", "early", "late"]);
    // sinceTime has second precision: from the second "late" was written in (1.2 s after
    // "early", so a later second) it gives "late" only.
    let late = k8s_openapi::jiff::Timestamp::from_second(stamps[3].0.timestamp()).unwrap();
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
    fk.create_pvc("default", "gocache");
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

// ---- what the recordings of a real v1.36 control plane show (tests/kube-recordings) ----

/// Every watch event of some resources of one namespace, as a client on separate streams sees
/// them; ordered by resourceVersion (the global order of writes) when read.
#[derive(Clone)]
struct Recording {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    changed: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
}

/// One watch event: resourceVersion, resource, type, object.
#[derive(Clone, Debug)]
struct Seen {
    rv: u64,
    resource: String,
    kind: String,
    object: Value,
}

impl Seen {
    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }
    fn has_condition(&self, kind: &str) -> bool {
        self.object["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
    }
    fn tracked(&self) -> bool {
        self.object["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == "batch.kubernetes.io/job-tracking"))
    }
}

impl Recording {
    /// Watches jobs, pods and events of `ns` from now on.
    fn start(fk: &FakeKube, ns: &str) -> Recording {
        use kube::core::{ApiResource, DynamicObject};
        let rec = Recording { seen: Default::default(), changed: std::sync::Arc::new(tokio::sync::watch::channel(0).0) };
        let from = fk.resource_version().to_string();
        for ar in [ApiResource::erase::<Job>(&()), ApiResource::erase::<Pod>(&()), ApiResource::erase::<k8s_openapi::api::core::v1::Event>(&())] {
            let api: Api<DynamicObject> = Api::namespaced_with(fk.client(), ns, &ar);
            let (rec, from) = (rec.clone(), from.clone());
            tokio::spawn(async move {
                let mut s = api.watch(&kube::api::WatchParams::default(), &from).await.unwrap().boxed();
                while let Ok(Some(ev)) = s.try_next().await {
                    let (kind, obj) = match ev {
                        kube::api::WatchEvent::Added(o) => ("ADDED", o),
                        kube::api::WatchEvent::Modified(o) => ("MODIFIED", o),
                        kube::api::WatchEvent::Deleted(o) => ("DELETED", o),
                        _ => continue,
                    };
                    let object = serde_json::to_value(&obj).unwrap();
                    let rv = object["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                    rec.seen.lock().unwrap().push(Seen { rv, resource: ar.plural.clone(), kind: kind.into(), object });
                    rec.changed.send_modify(|n| *n += 1);
                }
            });
        }
        rec
    }

    /// Everything so far, in resourceVersion order.
    fn all(&self) -> Vec<Seen> {
        let mut all = self.seen.lock().unwrap().clone();
        all.sort_by_key(|s| s.rv);
        all
    }

    /// Waits until `pred` holds for what was seen (in resourceVersion order); returns it.
    async fn until(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            changes.borrow_and_update();
            let all = self.all();
            if pred(&all) {
                return all;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                panic!("timed out waiting for {what}; seen:\n{}", all.iter().map(|s| format!("{} {} {} {}", s.rv, s.resource, s.kind, s.name())).collect::<Vec<_>>().join("\n"));
            }
        }
    }
}

/// The first position in `seen` where `f` holds (panics with `what` when none does).
fn first(seen: &[Seen], what: &str, f: impl Fn(&Seen) -> bool) -> usize {
    seen.iter().position(f).unwrap_or_else(|| panic!("never seen: {what}"))
}

/// A Job whose pod runs `cmd` in one container.
fn job_running(name: &str, cmd: &[&str]) -> Job {
    job(name, json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": cmd}]}))
}

#[tokio::test]
async fn fake_kube_success_is_success_criteria_met_then_the_finalizer_then_complete() {
    let fk = fake(true);
    let rec = Recording::start(&fk, "team-a");
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    jobs.create(&PostParams::default(), &job_running("ok", &["true"])).await.unwrap();
    let seen = rec.until("Complete", |s| s.iter().any(|e| e.resource == "jobs" && e.has_condition("Complete"))).await;

    let added = first(&seen, "the pod ADDED", |e| e.resource == "pods" && e.kind == "ADDED");
    let pod = seen[added].name().to_string();
    let pod_uid = seen[added].object["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(seen[added].tracked(), "made with the job-tracking finalizer: {:#}", seen[added].object);
    let criteria = first(&seen, "SuccessCriteriaMet", |e| e.resource == "jobs" && e.has_condition("SuccessCriteriaMet"));
    let untracked = first(&seen, "the finalizer removed", |e| e.resource == "pods" && e.kind == "MODIFIED" && !e.tracked());
    let complete = first(&seen, "Complete", |e| e.resource == "jobs" && e.has_condition("Complete"));
    assert!(criteria < untracked && untracked < complete, "order: SuccessCriteriaMet {criteria}, finalizer {untracked}, Complete {complete}");
    let st = &seen[criteria].object["status"];
    assert!(!seen[criteria].has_condition("Complete"), "SuccessCriteriaMet comes in its own update: {st:#}");
    assert_eq!(st["uncountedTerminatedPods"], json!({"succeeded": [pod_uid]}));
    assert_eq!((st.get("active"), st.get("succeeded")), (None, None), "{st:#}");
    assert_eq!(seen[untracked].object["status"]["phase"], "Succeeded");
    let st = &seen[complete].object["status"];
    assert_eq!((st["succeeded"].as_i64(), st["ready"].as_i64(), st["terminating"].as_i64()), (Some(1), Some(0), Some(0)), "{st:#}");
    assert_eq!(st["uncountedTerminatedPods"], json!({}));
    assert!(st["completionTime"].is_string() && st["startTime"].is_string() && st.get("failed").is_none(), "{st:#}");
    let c = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Complete").unwrap();
    assert_eq!((c["reason"].as_str(), c["message"].as_str()), (Some("CompletionsReached"), Some("Reached expected number of succeeded pods")));
    // The pod stays, Succeeded; no pod was ever deleted.
    assert_eq!(fk.get("pods", "team-a", &pod).unwrap()["status"]["phase"], "Succeeded");
    assert!(!seen.iter().any(|e| e.resource == "pods" && e.kind == "DELETED"));

    // The Events: created, scheduled, completed — with the recorded fields.
    let seen = rec.until("the Completed event", |s| s.iter().any(|e| e.resource == "events" && e.object["reason"] == "Completed")).await;
    let events: Vec<&Value> = seen.iter().filter(|e| e.resource == "events").map(|e| &e.object).collect();
    let by = |reason: &str| *events.iter().find(|e| e["reason"] == reason).unwrap_or_else(|| panic!("no {reason} event: {events:#?}"));
    let created = by("SuccessfulCreate");
    assert_eq!(created["message"], format!("Created pod: {pod}"));
    assert_eq!((created["type"].as_str(), created["count"].as_i64()), (Some("Normal"), Some(1)));
    assert_eq!(created["source"], json!({"component": "job-controller"}));
    assert_eq!(created["reportingComponent"], "job-controller");
    assert_eq!(
        (created["involvedObject"]["kind"].as_str(), created["involvedObject"]["name"].as_str(), created["involvedObject"]["apiVersion"].as_str()),
        (Some("Job"), Some("ok"), Some("batch/v1"))
    );
    let scheduled = by("Scheduled");
    assert_eq!(scheduled["message"], format!("Successfully assigned team-a/{pod} to fake-node"));
    assert_eq!((scheduled["reportingComponent"].as_str(), scheduled["action"].as_str()), (Some("default-scheduler"), Some("Binding")));
    assert!(scheduled["eventTime"].is_string() && scheduled.get("count").is_none() && scheduled["involvedObject"]["uid"] == pod_uid.as_str());
    assert_eq!(by("Completed")["message"], "Job completed");
}

#[tokio::test]
async fn fake_kube_failure_is_failure_target_then_the_finalizer_then_failed_and_the_pod_stays() {
    let fk = fake(true);
    let rec = Recording::start(&fk, "team-a");
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    jobs.create(&PostParams::default(), &job_running("bad", &["sh", "-c", "exit 1"])).await.unwrap();
    let seen = rec.until("Failed and its event", |s| {
        s.iter().any(|e| e.resource == "jobs" && e.has_condition("Failed")) && s.iter().any(|e| e.resource == "events" && e.object["reason"] == "BackoffLimitExceeded")
    })
    .await;
    let target = first(&seen, "FailureTarget", |e| e.resource == "jobs" && e.has_condition("FailureTarget"));
    let untracked = first(&seen, "the finalizer removed", |e| e.resource == "pods" && e.kind == "MODIFIED" && !e.tracked());
    let failed = first(&seen, "Failed", |e| e.resource == "jobs" && e.has_condition("Failed"));
    assert!(target < untracked && untracked < failed, "order: FailureTarget {target}, finalizer {untracked}, Failed {failed}");
    assert!(!seen[target].has_condition("Failed"));
    let c = seen[target].object["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "FailureTarget").unwrap().clone();
    assert_eq!((c["reason"].as_str(), c["message"].as_str()), (Some("BackoffLimitExceeded"), Some("Job has reached the specified backoff limit")));
    assert_eq!(seen[target].object["status"]["uncountedTerminatedPods"]["failed"].as_array().map(Vec::len), Some(1));
    let st = &seen[failed].object["status"];
    assert_eq!((st["failed"].as_i64(), st["terminating"].as_i64()), (Some(1), Some(0)), "{st:#}");
    assert!(st.get("completionTime").is_none() && st.get("succeeded").is_none(), "no completionTime on failure: {st:#}");
    let types: Vec<&str> = st["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["FailureTarget", "Failed"]);
    let pod = seen[untracked].name().to_string();
    let p = fk.get("pods", "team-a", &pod).expect("the failed pod stays");
    assert_eq!(p["status"]["phase"], "Failed");
    let e = fk.events_for("team-a", "Job", "bad", "BackoffLimitExceeded");
    assert_eq!((e.len(), e[0]["type"].as_str(), e[0]["message"].as_str()), (1, Some("Warning"), Some("Job has reached the specified backoff limit")));
}

#[tokio::test]
async fn fake_kube_deadline_deletes_the_pod_with_failure_target_and_fails_the_job_only_after_the_pod_is_gone() {
    let fk = fake(true);
    let rec = Recording::start(&fk, "team-a");
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    let mut j = job("late", sleeper());
    // startTime has second precision: the deadline comes 2–3 s after the create, the pod running.
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(3);
    jobs.create(&PostParams::default(), &j).await.unwrap();
    let seen = rec.until("Failed and its event", |s| {
        s.iter().any(|e| e.resource == "jobs" && e.has_condition("Failed")) && s.iter().any(|e| e.resource == "events" && e.object["reason"] == "DeadlineExceeded")
    })
    .await;
    let marked = first(&seen, "the pod marked for deletion", |e| e.resource == "pods" && e.object["metadata"]["deletionTimestamp"].is_string());
    let pod = seen[marked].name().to_string();
    assert_eq!(seen[marked].object["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(seen[marked].tracked(), "the finalizer is still on when the controller deletes the pod");
    assert_ne!(seen[marked].object["status"]["phase"], "Failed", "deleted while running");
    let target = first(&seen, "FailureTarget", |e| e.resource == "jobs" && e.has_condition("FailureTarget"));
    let st = &seen[target].object["status"];
    let c = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "FailureTarget").unwrap();
    assert_eq!((c["reason"].as_str(), c["message"].as_str()), (Some("DeadlineExceeded"), Some("Job was active longer than specified deadline")));
    assert!(!seen[target].has_condition("Failed") && st["terminating"] == 1 && st.get("active").is_none(), "{st:#}");
    assert_eq!(st["uncountedTerminatedPods"]["failed"].as_array().map(Vec::len), Some(1));
    let killed = first(&seen, "the kill", |e| e.resource == "pods" && e.object["status"]["phase"] == "Failed");
    let term = &seen[killed].object["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((term["exitCode"].as_i64(), term["reason"].as_str()), (Some(137), Some("Error")));
    let gone = first(&seen, "the pod DELETED", |e| e.resource == "pods" && e.kind == "DELETED");
    // The DELETED event carries the last stored state: still listing the finalizer, grace 0.
    assert!(seen[gone].tracked(), "{:#}", seen[gone].object);
    assert_eq!(seen[gone].object["metadata"]["deletionGracePeriodSeconds"], 0);
    let failed = first(&seen, "Failed", |e| e.resource == "jobs" && e.has_condition("Failed"));
    assert!(marked < target && target < killed && killed < gone && gone < failed, "order: delete {marked}, FailureTarget {target}, kill {killed}, DELETED {gone}, Failed {failed}");
    let st = &seen[failed].object["status"];
    assert_eq!((st["failed"].as_i64(), st["terminating"].as_i64()), (Some(1), Some(0)), "{st:#}");
    assert!(st.get("completionTime").is_none());
    // Between them, a Job with FailureTarget and no Failed, as a watcher sees it.
    assert!(seen[target..failed].iter().filter(|e| e.resource == "jobs").all(|e| !e.has_condition("Failed")));
    assert!(fk.get("pods", "team-a", &pod).is_none());
    let deleted = fk.events_for("team-a", "Job", "late", "SuccessfulDelete");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["message"], format!("Deleted pod: {pod}"));
    let warning = fk.events_for("team-a", "Job", "late", "DeadlineExceeded");
    assert_eq!((warning.len(), warning[0]["type"].as_str()), (1, Some("Warning")));
}

#[tokio::test]
async fn fake_kube_finalizers_hold_deletion_and_the_deleted_event_carries_the_last_state() {
    let fk = fake(true);
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "team-a");
    let mut c = cm("held", json!({}));
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let rec = Recording::start(&fk, "team-a");
    let cm_watch = {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cms = cms.clone();
        let from = fk.resource_version().to_string();
        tokio::spawn(async move {
            let mut s = cms.watch(&kube::api::WatchParams::default(), &from).await.unwrap().boxed();
            while let Some(ev) = s.try_next().await.unwrap() {
                if let kube::api::WatchEvent::Deleted(o) = ev {
                    let _ = tx.send(o);
                    return;
                }
            }
        });
        rx
    };
    // The delete only marks it (answered with the object): the finalizer holds it.
    let marked = cms.delete("held", &DeleteParams::default()).await.unwrap().left().expect("pending, not deleted");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(0));
    assert!(cms.get("held").await.unwrap().metadata.deletion_timestamp.is_some(), "still there");
    // The write that removes the last finalizer removes the object.
    let before = fk.resource_version();
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());
    let last = tokio::time::timeout(WAIT, cm_watch).await.unwrap().unwrap();
    assert_eq!(last.metadata.finalizers, Some(vec!["example.com/hold".to_string()]), "the DELETED event lists the finalizer");
    assert!(last.metadata.resource_version.unwrap().parse::<u64>().unwrap() > before, "at a new resourceVersion");

    // A running pod with a finalizer: marked with its grace period, killed, confirmed with grace
    // 0 — and still there until the finalizer goes.
    let pods: Api<Pod> = Api::namespaced(fk.client(), "team-a");
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "finalizers": ["example.com/hold"]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["sleep", "30"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    fk.wait_for("pods", "team-a", "p", WAIT, |p| (p?["status"]["phase"] == "Running").then_some(())).await;
    let marked = pods.delete("p", &DeleteParams::default()).await.unwrap().left().expect("pending");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    let p = fk.wait_for("pods", "team-a", "p", WAIT, |p| (p?["metadata"]["deletionGracePeriodSeconds"] == 0).then(|| p.unwrap().clone())).await;
    assert_eq!(p["status"]["phase"], "Failed", "killed: {p:#}");
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);
    pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    let seen = rec.until("the pod DELETED", |s| s.iter().any(|e| e.resource == "pods" && e.kind == "DELETED")).await;
    let gone = seen.iter().find(|e| e.resource == "pods" && e.kind == "DELETED").unwrap();
    assert_eq!(gone.object["metadata"]["finalizers"], json!(["example.com/hold"]));
}

#[tokio::test]
async fn fake_kube_orphaned_pods_lose_the_tracking_finalizer_and_go_without_events() {
    let fk = fake(true);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    jobs.create(&PostParams::default(), &job("bg", sleeper())).await.unwrap();
    let pod = running_pod(&fk, "team-a", "bg").await;
    assert!(fk.get("pods", "team-a", &pod).unwrap()["metadata"]["finalizers"] == json!(["batch.kubernetes.io/job-tracking"]));
    let rec = Recording::start(&fk, "team-a");
    let events_before = fk.events(Some("team-a")).len();
    jobs.delete("bg", &DeleteParams::background()).await.unwrap();
    let seen = rec.until("the pod DELETED", |s| s.iter().any(|e| e.resource == "pods" && e.kind == "DELETED")).await;
    let job_gone = first(&seen, "the Job DELETED", |e| e.resource == "jobs" && e.kind == "DELETED");
    let marked = first(&seen, "the pod marked", |e| e.resource == "pods" && e.object["metadata"]["deletionTimestamp"].is_string());
    let stripped = first(&seen, "the finalizer stripped", |e| e.resource == "pods" && !e.tracked());
    let gone = first(&seen, "the pod DELETED", |e| e.resource == "pods" && e.kind == "DELETED");
    assert!(job_gone < marked && marked <= stripped && stripped <= gone, "order: Job {job_gone}, marked {marked}, stripped {stripped}, DELETED {gone}");
    assert!(!seen.iter().any(|e| e.resource == "jobs" && (e.has_condition("Failed") || e.has_condition("Complete"))));
    assert_eq!(fk.events(Some("team-a")).len(), events_before, "no Events for a deletion");
}

/// The go and dockerfile Jobs Kiln renders (tests/golden), in namespace `ns`.
fn golden_job(kind: &str, ns: &str, name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/golden/{kind}.job.yaml"));
    let mut j: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    j["metadata"]["namespace"] = json!(ns);
    j["metadata"]["name"] = json!(name);
    j
}

#[tokio::test]
async fn fake_kube_pod_security_warns_on_jobs_refuses_pods_and_backs_off_failed_creates() {
    let fk = fake(true);
    fk.create_namespace_with_labels("psa", &[("pod-security.kubernetes.io/enforce", "baseline")]);
    // The account Kiln's templates run build pods as must exist: the ServiceAccount admission
    // plugin (mutating, so before PodSecurity) refuses a pod naming one the namespace lacks.
    let job = golden_job("dockerfile", "psa", "kiln-build-42");
    let pods: Api<Pod> = Api::namespaced(fk.client(), "psa");
    let mut p = json!({"metadata": {"name": "direct"}, "spec": job["spec"]["template"]["spec"].clone()});
    p["spec"]["restartPolicy"] = json!("Never");
    let e = api_error(pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap()).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(e.message, "pods \"direct\" is forbidden: error looking up service account psa/kiln-build: serviceaccount \"kiln-build\" not found");
    fk.create_from_yaml("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kiln-build\n  namespace: psa\n");
    const VIOLATIONS: &str = "forbidden AppArmor profile (container \"compile\" must not set AppArmor profile type to \"Unconfined\"), seccompProfile (container \"compile\" must not set securityContext.seccompProfile.type to \"Unconfined\")";

    // The Job: 201, stored, and one Warning header exactly as S08 recorded it.
    let job = golden_job("dockerfile", "psa", "kiln-build-42");
    let req = axum::http::Request::post("/apis/batch/v1/namespaces/psa/jobs")
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&job).unwrap()))
        .unwrap();
    let started = tokio::time::Instant::now();
    let resp = fk.client().send(req).await.unwrap();
    assert_eq!(resp.status(), 201);
    let warnings: Vec<String> = resp.headers().get_all("warning").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let want = format!("299 - \"would violate PodSecurity \\\"baseline:latest\\\": {}\"", VIOLATIONS.replace('"', "\\\""));
    assert_eq!(warnings, [want]);
    assert!(fk.get("jobs", "psa", "kiln-build-42").is_some());

    // A pod: 403 with the plugin's message.
    let pods: Api<Pod> = Api::namespaced(fk.client(), "psa");
    let mut p = json!({"metadata": {"name": "direct"}, "spec": job["spec"]["template"]["spec"].clone()});
    p["spec"]["restartPolicy"] = json!("Never");
    let e = api_error(pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap()).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(e.message, format!("pods \"direct\" is forbidden: violates PodSecurity \"baseline:latest\": {VIOLATIONS}"));

    // The controller's creates are refused: one FailedCreate Event each, 1 s then 2 s apart.
    let mut at = vec![];
    for n in 1..=3 {
        fk.wait_until(WAIT, &format!("FailedCreate #{n}"), |fk| (fk.events_for("psa", "Job", "kiln-build-42", "FailedCreate").len() >= n).then_some(())).await;
        at.push(started.elapsed());
    }
    let (gap1, gap2) = (at[1] - at[0], at[2] - at[1]);
    assert!(gap1 >= Duration::from_millis(900) && gap2 >= Duration::from_millis(1900) && gap2 > gap1, "attempts at {at:?}");
    let events = fk.events_for("psa", "Job", "kiln-build-42", "FailedCreate");
    let mut names = BTreeMap::new();
    for e in &events {
        let m = e["message"].as_str().unwrap();
        let rest = m.strip_prefix("Error creating: pods \"kiln-build-42-").unwrap_or_else(|| panic!("{m}"));
        let (suffix, why) = rest.split_once("\" is forbidden: ").unwrap();
        assert_eq!(why, format!("violates PodSecurity \"baseline:latest\": {VIOLATIONS}"));
        assert_eq!(suffix.len(), 5);
        names.insert(suffix.to_string(), ());
        assert_eq!((e["type"].as_str(), e["count"].as_i64(), e["source"]["component"].as_str()), (Some("Warning"), Some(1), Some("job-controller")));
    }
    assert_eq!(names.len(), events.len(), "a new pod name each attempt");
    // The Job stays quiet: no pod, no condition.
    assert!(fk.list("pods", Some("psa")).is_empty());
    let j = fk.get("jobs", "psa", "kiln-build-42").unwrap();
    assert!(j["status"].get("conditions").is_none() && j["status"].get("active").is_none() && j["status"]["startTime"].is_string(), "{:#}", j["status"]);

    // A `warn` label: the pod is created, with a warning for the stricter level.
    fk.create_namespace_with_labels("warned", &[("pod-security.kubernetes.io/warn", "restricted")]);
    let body = json!({"metadata": {"name": "loose"}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["true"]}]}});
    let req = axum::http::Request::post("/api/v1/namespaces/warned/pods")
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let resp = fk.client().send(req).await.unwrap();
    assert_eq!(resp.status(), 201);
    let warning = resp.headers().get("warning").unwrap().to_str().unwrap().to_string();
    assert!(warning.starts_with("299 - \"would violate PodSecurity \\\"restricted:latest\\\": allowPrivilegeEscalation != false (container \\\"c\\\" must set securityContext.allowPrivilegeEscalation=false)"), "{warning}");
}

#[test]
fn fake_kube_pod_security_levels_of_kilns_job_templates() {
    use crate::support::fake_kube::pod_security::{violations, Level};
    let check = |kind: &str, level: Level| {
        let j = golden_job(kind, "x", "y");
        let t = &j["spec"]["template"];
        violations(&t["metadata"], &t["spec"], level)
    };
    for kind in ["go", "maven"] {
        assert_eq!(check(kind, Level::Restricted), Vec::<String>::new(), "{kind} passes restricted");
    }
    assert_eq!(
        check("dockerfile", Level::Baseline),
        [
            "forbidden AppArmor profile (container \"compile\" must not set AppArmor profile type to \"Unconfined\")",
            "seccompProfile (container \"compile\" must not set securityContext.seccompProfile.type to \"Unconfined\")"
        ]
    );
    assert_eq!(
        check("dockerfile", Level::Restricted),
        [
            "forbidden AppArmor profile (container \"compile\" must not set AppArmor profile type to \"Unconfined\")",
            "allowPrivilegeEscalation != false (container \"compile\" must set securityContext.allowPrivilegeEscalation=false)",
            "unrestricted capabilities (container \"compile\" must set securityContext.capabilities.drop=[\"ALL\"])",
            "seccompProfile (container \"compile\" must not set securityContext.seccompProfile.type to \"Unconfined\")"
        ]
    );
    // The other baseline checks, in the plugin's wording.
    let spec = json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}],
            "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}}]});
    assert_eq!(
        violations(&json!({}), &spec, Level::Baseline),
        [
            "non-default capabilities (container \"c\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)",
            "host namespaces (hostNetwork=true)",
            "hostPath volumes (volume \"h\")",
            "hostPort (container \"c\" uses hostPort 8080)",
            "privileged (container \"c\" must not set securityContext.privileged=true)"
        ]
    );
    let bare = json!({"containers": [{"name": "c", "image": "i"}]});
    assert_eq!(
        violations(&json!({}), &bare, Level::Restricted),
        [
            "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false)",
            "unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"])",
            "runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)",
            "seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        ]
    );
}

#[tokio::test]
async fn fake_kube_quota_refuses_with_the_recorded_body_and_no_event() {
    let fk = fake(true);
    fk.create_namespace("quota");
    fk.create_resource_quota("quota", "no-jobs", &[("count/jobs.batch", "0")]);
    let recorded = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch \"kiln-build-42\" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1, used: count/jobs.batch=0, limited: count/jobs.batch=0",
        "reason": "Forbidden", "details": {"name": "kiln-build-42", "group": "batch", "kind": "jobs"}, "code": 403});
    // Before the quota's status is filled in, through the API …
    let jobs: Api<Job> = Api::namespaced(fk.client(), "quota");
    let req = axum::http::Request::post("/apis/batch/v1/namespaces/quota/jobs")
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&golden_job("go", "quota", "kiln-build-42")).unwrap()))
        .unwrap();
    let resp = fk.client().send(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("warning").is_none());
    let body = resp.into_body().collect_bytes().await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), recorded);
    // … and after: the same answer.
    fk.wait_for("resourcequotas", "quota", "no-jobs", WAIT, |q| (q?["status"]["used"]["count/jobs.batch"] == "0").then_some(())).await;
    let e = api_error(jobs.create(&PostParams::default(), &serde_json::from_value(golden_job("go", "quota", "kiln-build-42")).unwrap()).await.unwrap_err());
    assert_eq!(serde_json::to_value(&*e).unwrap()["message"], recorded["message"]);
    assert_eq!(fk.create("quota", "jobs", golden_job("go", "quota", "kiln-build-42")).unwrap_err(), recorded);
    assert!(fk.list("jobs", Some("quota")).is_empty() && fk.events(Some("quota")).is_empty(), "no Job, no Event");

    // Pods: counted while not finished.
    fk.create_resource_quota("quota", "two-pods", &[("pods", "1")]);
    let pod = |name: &str| json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["sleep", "30"]}]}});
    fk.create("quota", "pods", pod("one")).unwrap();
    let refused = fk.create("quota", "pods", pod("two")).unwrap_err();
    assert_eq!(refused["message"], "pods \"two\" is forbidden: exceeded quota: two-pods, requested: pods=1, used: pods=1, limited: pods=1");
}

#[tokio::test]
async fn fake_kube_a_pod_with_a_missing_claim_is_unschedulable_once_then_scheduled_when_the_claim_appears() {
    let fk = fake(true);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    let spec = json!({"restartPolicy": "Never", "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "kiln-cache"}}],
        "containers": [{"name": "c", "image": "i", "command": ["true"], "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}]});
    jobs.create(&PostParams::default(), &job("claims", spec)).await.unwrap();
    let pod = pod_of(&fk, "team-a", "claims").await;
    const WHY: &str = "0/1 nodes are available: persistentvolumeclaim \"kiln-cache\" not found. not found";
    let cond = fk
        .wait_for("pods", "team-a", &pod, WAIT, |p| {
            let c = p?["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "PodScheduled")?;
            (c["status"] == "False").then(|| c.clone())
        })
        .await;
    assert_eq!((cond["reason"].as_str(), cond["message"].as_str(), cond["observedGeneration"].as_i64()), (Some("Unschedulable"), Some(WHY), Some(1)));
    let p = fk.get("pods", "team-a", &pod).unwrap();
    assert!(p["spec"].get("nodeName").is_none() && p["status"]["phase"] == "Pending");
    let failed = fk.events_for("team-a", "Pod", &pod, "FailedScheduling");
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0]["type"].as_str(), failed[0]["message"].as_str(), failed[0]["action"].as_str()), (Some("Warning"), Some(WHY), Some("Scheduling")));
    assert!(failed[0]["eventTime"].is_string() && failed[0]["firstTimestamp"].is_null() && failed[0].get("count").is_none());
    // Changes to the pod do not make the scheduler say it again.
    let pods: Api<Pod> = Api::namespaced(fk.client(), "team-a");
    pods.patch(&pod, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}}))).await.unwrap();
    let j = fk.get("jobs", "team-a", "claims").unwrap();
    assert!(j["status"].get("conditions").is_none() && j["status"]["active"] == 1, "the Job stays quiet: {:#}", j["status"]);

    // The claim appears: scheduled, run, Complete.
    fk.create_pvc("team-a", "kiln-cache");
    let cond = fk.wait_for("jobs", "team-a", "claims", WAIT, job_condition).await;
    assert_eq!(cond.0, "Complete");
    assert_eq!(fk.events_for("team-a", "Pod", &pod, "FailedScheduling").len(), 1, "exactly one FailedScheduling");
    assert_eq!(fk.events_for("team-a", "Pod", &pod, "Scheduled").len(), 1);
    let p = fk.get("pods", "team-a", &pod).unwrap();
    let c = p["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled").unwrap().clone();
    assert_eq!((c["status"].as_str(), c.get("reason")), (Some("True"), None));

    // No node fits: requests beyond the node's 16 CPU / 64Gi.
    for (name, resources, why) in [("big-cpu", json!({"cpu": "32"}), "1 Insufficient cpu."), ("big-mem", json!({"memory": "128Gi"}), "1 Insufficient memory.")] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "i", "command": ["true"], "resources": {"requests": resources}}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        let msg = fk
            .wait_for("pods", "team-a", name, WAIT, |p| {
                let c = p?["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "PodScheduled")?;
                c["message"].as_str().map(String::from)
            })
            .await;
        assert_eq!(msg, format!("0/1 nodes are available: {why}"));
    }
}

#[tokio::test]
async fn fake_kube_events_are_listed_and_watched_by_field_selectors() {
    let fk = fake(true);
    let jobs: Api<Job> = Api::namespaced(fk.client(), "team-a");
    jobs.create(&PostParams::default(), &job_running("sel", &["true"])).await.unwrap();
    let uid = fk.get("jobs", "team-a", "sel").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
    fk.wait_until(WAIT, "the Completed event", |fk| (!fk.events_for("team-a", "Job", "sel", "Completed").is_empty()).then_some(())).await;
    let pod = pod_of(&fk, "team-a", "sel").await;

    type Ev = k8s_openapi::api::core::v1::Event;
    let events: Api<Ev> = Api::namespaced(fk.client(), "team-a");
    let reasons = |l: Vec<Ev>| {
        let mut r: Vec<String> = l.into_iter().map(|e| e.reason.unwrap()).collect();
        r.sort();
        r
    };
    let l = events.list(&ListParams::default().fields("involvedObject.kind=Job,involvedObject.name=sel")).await.unwrap();
    assert_eq!(reasons(l.items), ["Completed", "SuccessfulCreate"]);
    let l = events.list(&ListParams::default().fields(&format!("involvedObject.uid={uid},reason=Completed"))).await.unwrap();
    assert_eq!(reasons(l.items), ["Completed"]);
    let l = events.list(&ListParams::default().fields(&format!("involvedObject.name={pod},type=Normal"))).await.unwrap();
    assert_eq!(reasons(l.items), ["Scheduled"]);
    let l = events.list(&ListParams::default().fields("type=Warning")).await.unwrap();
    assert!(l.items.is_empty());
    let all: Api<Ev> = Api::all(fk.client());
    let l = all.list(&ListParams::default().fields("involvedObject.namespace=team-a,reason!=Scheduled,metadata.namespace=team-a")).await.unwrap();
    assert_eq!(reasons(l.items), ["Completed", "SuccessfulCreate"]);
    let l = all.list(&ListParams::default().fields("source=job-controller")).await.unwrap();
    assert_eq!(l.items.len(), 2);
    // A field another kind has is refused, as the real server does.
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "team-a");
    let e = api_error(cms.list(&ListParams::default().fields("reason=Completed")).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, "field label not supported: reason"));

    // A watch with a field selector sees only its Events.
    let wp = kube::api::WatchParams::default().fields("reason=SuccessfulCreate").timeout(30);
    let mut s = events.watch(&wp, &fk.resource_version().to_string()).await.unwrap().boxed();
    jobs.create(&PostParams::default(), &job_running("sel2", &["true"])).await.unwrap();
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            if let kube::api::WatchEvent::Added(e) = s.try_next().await.unwrap().unwrap() {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((ev.reason.as_deref(), ev.involved_object.name.as_deref()), (Some("SuccessfulCreate"), Some("sel2")));
}

#[tokio::test]
async fn fake_kube_dry_run_admits_and_answers_without_storing() {
    let fk = fake(true);
    let pods: Api<Pod> = Api::namespaced(fk.client(), "team-a");
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "team-a");
    cms.create(&PostParams::default(), &cm("kept", json!({}))).await.unwrap();
    let rv = fk.resource_version();
    let events = fk.events(None).len();
    let dry = PostParams { dry_run: true, ..Default::default() };

    let p: Pod = serde_json::from_value(json!({"metadata": {"generateName": "dry-"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}})).unwrap();
    let answered = pods.create(&dry, &p).await.unwrap();
    let name = answered.metadata.name.clone().unwrap();
    assert!(name.starts_with("dry-") && answered.metadata.uid.is_some() && answered.metadata.resource_version.is_none(), "{:?}", answered.metadata);
    assert_eq!(answered.spec.as_ref().unwrap().containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"), "defaults applied");
    assert!(pods.get_opt(&name).await.unwrap().is_none());

    let patched = cms.patch("kept", &PatchParams::default().dry_run(), &Patch::Merge(json!({"data": {"k": "2"}}))).await.unwrap();
    assert_eq!(patched.data.unwrap()["k"], "2");
    assert_eq!(cms.get("kept").await.unwrap().data.unwrap()["k"], "v");

    let deleted = cms.delete("kept", &DeleteParams::default().dry_run()).await.unwrap();
    assert!(deleted.right().is_some(), "answered as deleted");
    assert!(cms.get_opt("kept").await.unwrap().is_some());
    assert_eq!(fk.resource_version(), rv, "nothing was written");
    assert_eq!(fk.events(None).len(), events, "no Event");

    // Admission runs: PodSecurity and quota refuse a dry run as they refuse the real one.
    fk.create_namespace_with_labels("strict", &[("pod-security.kubernetes.io/enforce", "restricted")]);
    let strict: Api<Pod> = Api::namespaced(fk.client(), "strict");
    let e = api_error(strict.create(&dry, &serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap()).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert!(e.message.starts_with("pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"), "{}", e.message);
    fk.create_resource_quota("strict", "none", &[("count/configmaps", "0")]);
    let strict_cms: Api<ConfigMap> = Api::namespaced(fk.client(), "strict");
    let e = api_error(strict_cms.create(&dry, &cm("c", json!({}))).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (403, "configmaps \"c\" is forbidden: exceeded quota: none, requested: count/configmaps=1, used: count/configmaps=0, limited: count/configmaps=0"));
    assert!(fk.list("pods", Some("strict")).is_empty() && fk.list("configmaps", Some("strict")).is_empty());
}

#[tokio::test]
async fn fake_kube_lists_page_with_continue_and_read_exact_resource_versions() {
    let fk = fake(false);
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "team-a");
    for i in 1..=5 {
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}"), json!({"app": "x"}))).await.unwrap();
    }
    let names = |l: &kube::core::ObjectList<ConfigMap>| l.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect::<Vec<_>>();
    let page1 = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&page1), ["cm-1", "cm-2"]);
    assert_eq!(page1.metadata.remaining_item_count, Some(3));
    let token = page1.metadata.continue_.clone().unwrap();
    use base64::Engine;
    let decoded: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap()).unwrap();
    assert_eq!(decoded, json!({"v": "meta.k8s.io/v1", "rv": page1.metadata.resource_version.clone().unwrap().parse::<u64>().unwrap(), "start": "/cm-2\u{0}"}));
    // Changes after the first page are not in the next ones: the pages are one snapshot.
    cms.create(&PostParams::default(), &cm("cm-0", json!({}))).await.unwrap();
    cms.delete("cm-4", &DeleteParams::default()).await.unwrap();
    let page2 = cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&page2), ["cm-3", "cm-4"]);
    assert_eq!((page2.metadata.remaining_item_count, page2.metadata.resource_version.clone()), (Some(1), page1.metadata.resource_version.clone()));
    let page3 = cms.list(&ListParams::default().limit(2).continue_token(page2.metadata.continue_.as_deref().unwrap())).await.unwrap();
    assert_eq!(names(&page3), ["cm-5"]);
    assert!(page3.metadata.continue_.is_none() && page3.metadata.remaining_item_count.is_none());
    // With a selector the remaining count is unknown, as on the real server.
    let sel = cms.list(&ListParams::default().labels("app=x").limit(1)).await.unwrap();
    assert!(sel.metadata.continue_.is_some() && sel.metadata.remaining_item_count.is_none());

    // Exact: the list as it was at that resourceVersion.
    let at = page1.metadata.resource_version.clone().unwrap();
    let then = cms.list(&ListParams::default().at(&at).matching(kube::api::VersionMatch::Exact)).await.unwrap();
    assert_eq!(names(&then), ["cm-1", "cm-2", "cm-3", "cm-4", "cm-5"]);
    assert_eq!(then.metadata.resource_version.as_deref(), Some(at.as_str()));
    let now = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&now), ["cm-0", "cm-1", "cm-2", "cm-3", "cm-5"]);
    // Older than the history: 410 with the recorded message; the continue token too.
    fk.expire_history();
    let e = api_error(cms.list(&ListParams::default().at(&at).matching(kube::api::VersionMatch::Exact)).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str(), e.message.as_str()), (410, "Expired", "The resourceVersion for the provided list is too old."));
    let e = api_error(cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err());
    assert_eq!(e.code, 410);
    // A resourceVersion the server has not reached: 504 after waiting.
    let future = (fk.resource_version() + 100_000).to_string();
    let e = api_error(cms.list(&ListParams::default().at(&future)).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (504, "Timeout"));
    assert!(e.message.starts_with(&format!("Timeout: Too large resource version: {future}, current: ")), "{}", e.message);
}

#[tokio::test]
async fn fake_kube_watch_sends_the_initial_events_end_bookmark_only_without_a_resource_version() {
    let fk = fake(false);
    let cms: Api<ConfigMap> = Api::namespaced(fk.client(), "team-a");
    for n in ["a", "b"] {
        cms.create(&PostParams::default(), &cm(n, json!({}))).await.unwrap();
    }
    let now = fk.resource_version().to_string();
    let first_events = |version: &str, wp: kube::api::WatchParams| {
        let (cms, version) = (cms.clone(), version.to_string());
        async move {
            let mut s = cms.watch(&wp, &version).await.unwrap().boxed();
            let mut out = vec![];
            while let Some(ev) = s.try_next().await.unwrap() {
                out.push(ev);
            }
            out
        }
    };
    // RV unset, bookmarks allowed: ADDED for each, then the annotated BOOKMARK.
    let evs = first_events("", kube::api::WatchParams::default().timeout(1)).await;
    assert!(matches!(&evs[0], kube::api::WatchEvent::Added(c) if c.metadata.name.as_deref() == Some("a")));
    assert!(matches!(&evs[1], kube::api::WatchEvent::Added(c) if c.metadata.name.as_deref() == Some("b")));
    match &evs[2] {
        kube::api::WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, now);
            assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
        }
        other => panic!("expected the initial-events-end BOOKMARK, got {other:?}"),
    }
    // Without bookmarks: the ADDED burst and nothing else.
    let evs = first_events("0", kube::api::WatchParams::default().disable_bookmarks().timeout(2)).await;
    assert_eq!(evs.len(), 2, "{evs:?}");
    // From an explicit resourceVersion: no replay, no initial-events-end bookmark.
    let evs = first_events(&now, kube::api::WatchParams::default().timeout(2)).await;
    assert!(!evs.is_empty(), "the periodic bookmark (every 1 s here)");
    for ev in &evs {
        match ev {
            kube::api::WatchEvent::Bookmark(b) => assert!(b.metadata.annotations.is_empty(), "{:?}", b.metadata.annotations),
            other => panic!("nothing to replay, got {other:?}"),
        }
    }
    // Too old: HTTP 200, then exactly one ERROR event with the 410 Status, and the end.
    fk.expire_history();
    let oldest = fk.resource_version();
    let evs = first_events("1", kube::api::WatchParams::default().timeout(30)).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    match &evs[0] {
        kube::api::WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert_eq!(e.message, format!("too old resource version: 1 ({oldest})"));
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_kube_server_defaults_on_jobs_and_their_pods() {
    let fk = fake(false);
    let created = fk.create("team-a", "jobs", golden_job("go", "team-a", "kiln-build-go")).unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap();
    let spec = &created["spec"];
    assert_eq!((spec["parallelism"].as_i64(), spec["completions"].as_i64(), spec["backoffLimit"].as_i64()), (Some(1), Some(1), Some(0)));
    assert_eq!((spec["completionMode"].as_str(), spec["suspend"].as_bool(), spec["manualSelector"].as_bool()), (Some("NonIndexed"), Some(false), Some(false)));
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
    assert_eq!(spec["selector"], json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!((labels["batch.kubernetes.io/job-name"].as_str(), labels["job-name"].as_str(), labels["controller-uid"].as_str()), (Some("kiln-build-go"), Some("kiln-build-go"), Some(uid)));
    let t = &spec["template"]["spec"];
    assert_eq!((t["terminationGracePeriodSeconds"].as_i64(), t["dnsPolicy"].as_str(), t["schedulerName"].as_str()), (Some(30), Some("ClusterFirst"), Some("default-scheduler")));
    assert_eq!(t["serviceAccountName"], "kiln-build", "the template's own");
    assert!(t.get("serviceAccount").is_none() && t.get("tolerations").is_none(), "admission defaults are the pod's, not the template's");
    let clone = &t["initContainers"][0];
    assert_eq!((clone["terminationMessagePath"].as_str(), clone["terminationMessagePolicy"].as_str(), clone["imagePullPolicy"].as_str()), (Some("/dev/termination-log"), Some("File"), Some("IfNotPresent")));
    let image = &t["containers"][0];
    assert_eq!(image["terminationMessagePath"], "/workspace/.kiln/result.json", "kept as given");
    let insecure = image["env"].as_array().unwrap().iter().find(|e| e["name"] == "KILN_INSECURE_REGISTRIES").unwrap();
    assert_eq!(insecure, &json!({"name": "KILN_INSECURE_REGISTRIES"}), "an empty value is not serialised");
    assert_eq!((created["metadata"]["generation"].as_i64(), created["status"].clone()), (Some(1), json!({})));

    // The pod as the controller makes it (the kubelet is off: as first stored, then unbound).
    fk.create_pvc("team-a", "kiln-cache");
    fk.create_from_yaml("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kiln-build\n  namespace: team-a\n");
    let pod = pod_of(&fk, "team-a", "kiln-build-go").await;
    let p = fk.get("pods", "team-a", &pod).unwrap();
    assert_eq!(p["metadata"]["generateName"], "kiln-build-go-");
    assert_eq!(p["metadata"]["generation"], 1);
    assert_eq!(p["metadata"]["finalizers"], json!(["batch.kubernetes.io/job-tracking"]));
    assert_eq!(p["metadata"]["ownerReferences"], json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "kiln-build-go", "uid": uid, "controller": true, "blockOwnerDeletion": true}]));
    let s = &p["spec"];
    assert_eq!((s["serviceAccountName"].as_str(), s["serviceAccount"].as_str()), (Some("kiln-build"), Some("kiln-build")));
    assert_eq!((s["priority"].as_i64(), s["preemptionPolicy"].as_str(), s["enableServiceLinks"].as_bool()), (Some(0), Some("PreemptLowerPriority"), Some(false)));
    assert_eq!(
        s["tolerations"],
        json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
               {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}])
    );
    assert_eq!(p["status"], json!({"phase": "Pending", "qosClass": "Burstable"}));
    // QoS classes as the apiserver computes them.
    let qos = |resources: Value| {
        let name = format!("q{}", fk.resource_version());
        let p = fk.create("team-a", "pods", json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i:latest", "resources": resources}]}})).unwrap();
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        p["status"]["qosClass"].as_str().unwrap().to_string()
    };
    assert_eq!(qos(json!({})), "BestEffort");
    assert_eq!(qos(json!({"limits": {"cpu": "1", "memory": "1Gi"}})), "Guaranteed");
    assert_eq!(qos(json!({"requests": {"cpu": "100m"}})), "Burstable");
}

#[tokio::test]
async fn fake_kube_rbac_allows_what_bindings_grant_and_refuses_the_rest_as_the_real_server() {
    use crate::support::fake_kube::rbac::Identity;
    let fk = fake(false);
    fk.create_namespace("team-b");
    fk.create_from_yaml(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list, watch]}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: reader}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}\n\
         subjects: [{kind: ServiceAccount, name: kiln, namespace: kiln}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: builder, namespace: team-a}\n\
         rules: [{apiGroups: [batch], resources: [jobs], verbs: [create, delete]},\n\
                 {apiGroups: [\"\"], resources: [configmaps], verbs: [get], resourceNames: [allowed]}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: builder, namespace: team-a}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: builder}\n\
         subjects: [{kind: ServiceAccount, name: kiln, namespace: kiln}]\n",
    );
    let kiln = fk.client_as(Identity::service_account("kiln", "kiln"));
    let stranger = fk.client_as(Identity::service_account("kiln", "other"));
    let user = "system:serviceaccount:kiln:kiln";

    // Granted: cluster-wide reads by the ClusterRoleBinding, Job creates in team-a by the RoleBinding.
    Api::<Pod>::all(kiln.clone()).list(&ListParams::default()).await.unwrap();
    let j = job("built", json!({"containers": [{"name": "c", "image": "x", "command": ["true"]}], "restartPolicy": "Never"}));
    Api::<Job>::namespaced(kiln.clone(), "team-a").create(&PostParams::default(), &j).await.unwrap();
    fk.create("team-a", "configmaps", json!({"metadata": {"name": "allowed"}})).unwrap();
    Api::<ConfigMap>::namespaced(kiln.clone(), "team-a").get("allowed").await.unwrap();

    // Refused, with the real server's Status: another namespace, the cluster scope, another name,
    // a subresource, another identity.
    let refusal = |e: kube::Error| {
        let s = api_error(e);
        assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
        s.message
    };
    let e = Api::<Job>::namespaced(kiln.clone(), "team-b").create(&PostParams::default(), &j).await.unwrap_err();
    assert_eq!(refusal(e), format!("jobs.batch is forbidden: User \"{user}\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"team-b\""));
    let e = Api::<Job>::all(kiln.clone()).list(&ListParams::default()).await.unwrap_err();
    assert_eq!(refusal(e), format!("jobs.batch is forbidden: User \"{user}\" cannot list resource \"jobs\" in API group \"batch\" at the cluster scope"));
    let e = Api::<ConfigMap>::namespaced(kiln.clone(), "team-a").get("other").await.unwrap_err();
    assert_eq!(refusal(e), format!("configmaps \"other\" is forbidden: User \"{user}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"team-a\""));
    let e = Api::<Pod>::namespaced(kiln.clone(), "team-a").logs("p", &LogParams::default()).await.unwrap_err();
    assert_eq!(refusal(e), format!("pods \"p\" is forbidden: User \"{user}\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"team-a\""));
    let e = Api::<Pod>::all(stranger).list(&ListParams::default()).await.unwrap_err();
    assert!(refusal(e).starts_with("pods is forbidden: User \"system:serviceaccount:kiln:other\" cannot list"));
    // Nothing refused was done; the admin client is not subject to RBAC.
    assert!(fk.get("jobs", "team-b", "built").is_none());
    Api::<Job>::all(fk.client()).list(&ListParams::default()).await.unwrap();
}

/// Services and a custom resource (Istio's VirtualService) as the real server serves them: a
/// Service's defaults and its immutable cluster IP (422), a selector changed by a strategic merge
/// patch with a watch event; a VirtualService read and written as a `DynamicObject`, a merge
/// patch carrying a stale resourceVersion refused (409 Conflict), a strategic merge patch refused
/// (415: custom resources have none), a missing one 404 — each as a `Status`.
#[tokio::test]
async fn fake_kube_services_and_virtual_services() {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::DynamicObject;
    let fk = FakeKube::start(FakeKubeOptions { kubelet: false, ..FakeKubeOptions::default() });
    let services: Api<Service> = Api::namespaced(fk.client(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    let made = services.create(&PostParams::default(), &svc).await.unwrap();
    let spec = made.spec.clone().unwrap();
    assert_eq!((spec.type_.as_deref(), spec.session_affinity.as_deref(), spec.internal_traffic_policy.as_deref()), (Some("ClusterIP"), Some("None"), Some("Cluster")));
    let ip = spec.cluster_ip.clone().unwrap();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(spec.cluster_ips, Some(vec![ip.clone()]));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.protocol.as_deref(), port.target_port.clone()), (Some("TCP"), Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))));

    let mut watch = services.watch(&kube::api::WatchParams::default(), made.metadata.resource_version.as_deref().unwrap()).await.unwrap().boxed();
    let switched = services.patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"selector": {"colour": "green"}}}))).await.unwrap();
    let selector = switched.spec.unwrap().selector.unwrap();
    assert_eq!(selector, BTreeMap::from([("app".to_string(), "web".to_string()), ("colour".to_string(), "green".to_string())]));
    match watch.try_next().await.unwrap() {
        Some(kube::api::WatchEvent::Modified(s)) => assert_eq!(s.spec.unwrap().selector.unwrap()["colour"], "green"),
        other => panic!("{other:?}"),
    }
    let removed = services.patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"selector": {"colour": null}}}))).await.unwrap();
    assert_eq!(removed.spec.as_ref().unwrap().selector.as_ref().unwrap().len(), 1);
    assert_eq!(removed.spec.unwrap().cluster_ip.as_deref(), Some(ip.as_str()), "a patch keeps the cluster IP");
    let Err(kube::Error::Api(s)) = services.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"clusterIP": "10.96.9.9"}}))).await else { panic!() };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");

    let vs_api: Api<DynamicObject> = Api::namespaced_with(fk.client(), "default", &builder_api::rollout::virtual_service::api_resource());
    let Err(kube::Error::Api(s)) = vs_api.get("web").await else { panic!() };
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"), "{s:?}");
    assert_eq!(s.message, "virtualservices.networking.istio.io \"web\" not found");
    let vs: DynamicObject = serde_json::from_value(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web"},
        "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "stable"}, "weight": 100}]}]}})).unwrap();
    let made = vs_api.create(&PostParams::default(), &vs).await.unwrap();
    assert_eq!(made.metadata.generation, Some(1));
    let stale = made.metadata.resource_version.clone().unwrap();
    let weighed = json!({"metadata": {"resourceVersion": stale}, "spec": {"http": [{"route": [{"destination": {"host": "web", "subset": "stable"}, "weight": 90}]}]}});
    let patched = vs_api.patch("web", &PatchParams::default(), &Patch::Merge(&weighed)).await.unwrap();
    assert_eq!((patched.metadata.generation, patched.data["spec"]["hosts"].clone()), (Some(2), json!(["web"])));
    let Err(kube::Error::Api(s)) = vs_api.patch("web", &PatchParams::default(), &Patch::Merge(&weighed)).await else { panic!("a stale resourceVersion") };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}");
    let Err(kube::Error::Api(s)) = vs_api.patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"hosts": ["x"]}}))).await else { panic!() };
    assert_eq!((s.code, s.reason.as_str()), (415, "UnsupportedMediaType"), "{s:?}");
}
