//! Release strategies (issue 23) on the fake API server: blue-green (colour Deployments behind
//! the app's Service, the selector switched only to an Available colour, the old one kept then
//! scaled to zero, a rollback in that window only a switch) and canary (a replica split or
//! Istio VirtualService weights, promotion, abort when canary pods are not Ready). A release
//! starts as in production: a Harbor push webhook.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::config::ClusterConfig;
use serde_json::{json, Value};

use crate::rollouts::{fixture, grant, AUTH, D1, D3, EAST};
use crate::support::fake_kube::{FakeKube, FakeKubeOptions};
use crate::support::kiln::{test_config, TestKiln};

const LIMIT: Duration = Duration::from_secs(60);
const OLD: &str = "harbor.east.example:8443/team/hello:old";

struct World {
    kiln: TestKiln,
    fake: FakeKube,
    token: String,
    subscription: i64,
}

/// One cluster, `east`, with `shop/web` (container `app`, `replicas` replicas, running `OLD`),
/// its Service `web` selecting `app: web`, and a VirtualService `web` routing all traffic to the
/// subset `stable`; app `hello` of tenant `team` subscribed with `strategy`, following `glob:v*`.
async fn world(replicas: i64, strategy: Value) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[]);
    config.clusters = vec![ClusterConfig { name: "east".into(), registry: EAST.into(), ..Default::default() }];
    config.harbor.webhook_auth = Some(AUTH.into());
    config.rollout.deadline_secs = 30;
    let kiln = TestKiln::start_with(dir, config).await;
    let namespaces = ["default", "shop"].map(String::from).to_vec();
    let fake = FakeKube::start(FakeKubeOptions { kubelet: false, namespaces, ..FakeKubeOptions::default() });
    let web = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 30,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web", "kiln.dev/track": "stable"}}, "spec": {"containers": [
                {"name": "app", "image": OLD},
                {"name": "sidecar", "image": "registry.example/mesh/proxy:1"}
            ]}}
        }
    });
    fake.create("shop", "deployments", web).unwrap();
    fake.wait_for("deployments", "shop", "web", LIMIT, |d| (d?["status"]["availableReplicas"] == replicas).then_some(())).await;
    let service = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    fake.create("shop", "services", service).unwrap();
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web"},
        "spec": {"hosts": ["web"], "http": [{"route": [
            {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
            {"destination": {"host": "web", "subset": "canary"}, "weight": 0}
        ]}]}
    });
    fake.create("shop", "virtualservices", vs).unwrap();
    kiln.ctx.clusters.set_client("east", crate::kube_builds::kiln_client(&fake));
    let token = kiln.tenant("team").await;
    grant(&kiln, "team", json!({"deploy_namespaces": ["shop"]})).await;
    let app = json!({"name": "hello", "git_url": "http://127.0.0.1:9/team/hello.git", "image_repository": format!("{EAST}/team/hello"),
                     "webhook_secret": "hello-hook-secret"});
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps", Some(&token), Some(app)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let sub = json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "policy": "glob:v*", "strategy": strategy});
    let (status, body) = kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&token), Some(sub)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let subscription = body["subscription"]["id"].as_i64().unwrap();
    World { kiln, fake, token, subscription }
}

impl World {
    /// Harbor reports `digest` pushed to east's registry as `tag`.
    async fn pushed(&self, digest: &str, tag: &str) {
        let body = fixture("push-default-tag.json").replace(D1, digest).replace("v1.0.0", tag);
        let req = axum::http::Request::post("/hooks/harbor")
            .header("authorization", AUTH)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        let (status, answer) = self.kiln.send(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }

    fn image(digest: &str) -> String {
        format!("{EAST}/team/hello@{digest}")
    }

    /// The subscription's releases, newest first.
    async fn history(&self) -> Vec<Value> {
        let (status, body) = self.kiln.request(Method::GET, "/api/v1/apps/hello/releases", Some(&self.token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["releases"][0]["history"].as_array().unwrap().clone()
    }

    /// Waits until the newest release of the subscription is in `state`; returns it.
    async fn release_in(&self, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let newest = self.history().await.into_iter().next();
            if let Some(r) = newest.filter(|r| r["state"] == state) {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "no release reached {state}: {:#}", json!(self.history().await));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the newest release has a step containing `text`.
    async fn step_reached(&self, text: &str) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let newest = self.history().await.into_iter().next();
            if let Some(r) = newest.filter(|r| steps(r).iter().any(|s| s.contains(text))) {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "no step {text:?}: {:#}", json!(self.history().await));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until any release has a step `text` (a colour scaled to zero is a step added to
    /// a release already over).
    async fn step_recorded(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !self.history().await.iter().flat_map(steps).any(|s| s == text) {
            assert!(tokio::time::Instant::now() < deadline, "no step {text:?}: {:#}", json!(self.history().await));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn decide(&self, decision: &str) -> Value {
        let path = format!("/api/v1/apps/hello/subscriptions/{}/{decision}", self.subscription);
        let (status, body) = self.kiln.request(Method::POST, &path, Some(&self.token), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    fn deployment(&self, name: &str) -> Value {
        self.fake.get("deployments", "shop", name).unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn replicas(&self, name: &str) -> i64 {
        self.deployment(name)["spec"]["replicas"].as_i64().unwrap()
    }

    fn image_of(&self, name: &str) -> String {
        container_image(&self.deployment(name))
    }

    fn selected_colour(&self) -> Option<String> {
        self.fake.get("services", "shop", "web").unwrap()["spec"]["selector"]["kiln.dev/colour"].as_str().map(String::from)
    }
}

fn container_image(d: &Value) -> String {
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    containers.iter().find(|c| c["name"] == "app").unwrap()["image"].as_str().unwrap().to_string()
}

fn steps(release: &Value) -> Vec<String> {
    release["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap().to_string()).collect()
}

/// Whether the Service's selector selects the pods of a Deployment's template.
fn selects(service: &Value, deployment: &Value) -> bool {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    service["spec"]["selector"].as_object().unwrap().iter().all(|(k, v)| labels[k] == *v)
}

/// Replays every change since `rv` and checks that in every state the cluster passed through,
/// the Deployments the Service selects have ready replicas, and that each time the Service's
/// selector changed, everything it selects then had every replica ready. Returns the colours the
/// Service selected, in order.
fn check_every_state_has_ready_endpoints(fake: &FakeKube, rv: u64, mut service: Value, mut deployments: Vec<Value>) -> Vec<Option<String>> {
    let mut switches = vec![];
    for (resource, ns, obj) in fake.changes_since(rv) {
        if ns != "shop" {
            continue;
        }
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        match resource.as_str() {
            "services" if name == "web" => {
                if obj["spec"]["selector"] != service["spec"]["selector"] {
                    for d in deployments.iter().filter(|d| selects(&obj, d)) {
                        let (ready, want) = (d["status"]["readyReplicas"].as_i64().unwrap_or(0), d["spec"]["replicas"].as_i64().unwrap());
                        assert!(want > 0 && ready == want, "the Service switched to {name} with {ready} of {want} replicas ready", name = d["metadata"]["name"]);
                    }
                    switches.push(obj["spec"]["selector"]["kiln.dev/colour"].as_str().map(String::from));
                }
                service = obj;
            }
            "deployments" => match deployments.iter_mut().find(|d| d["metadata"]["name"] == name.as_str()) {
                Some(d) => *d = obj,
                None => deployments.push(obj),
            },
            _ => continue,
        }
        let ready: i64 = deployments.iter().filter(|d| selects(&service, d)).map(|d| d["status"]["readyReplicas"].as_i64().unwrap_or(0)).sum();
        assert!(ready > 0, "a moment without ready endpoints: the Service selects {} at rv {}", service["spec"]["selector"], service["metadata"]["resourceVersion"]);
    }
    switches
}

#[tokio::test]
async fn blue_green_switches_only_to_an_available_colour_and_a_rollback_in_the_window_starts_no_pod() {
    let strategy = json!({"kind": "blue-green", "min_ready_secs": 1, "keep_previous_secs": 8});
    let w = world(2, strategy).await;
    let (status, subs) = w.kiln.request(Method::GET, "/api/v1/apps/hello/subscriptions", Some(&w.token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(subs["subscriptions"][0]["strategy"]["kind"], "blue-green", "{subs}");
    assert_eq!(subs["subscriptions"][0]["strategy"]["promote"], "auto", "the defaults are filled in: {subs}");
    let b1 = w.kiln.succeeded_build("team", "hello", &World::image(D1)).await;
    let rv = w.fake.resource_version();
    let (service, web) = (w.fake.get("services", "shop", "web").unwrap(), w.deployment("web"));

    // First use: blue (the image web runs) takes over from web, then green gets D1 and the traffic.
    w.pushed(D1, "v1.0.0").await;
    let first = w.release_in("Complete").await;
    assert_eq!(w.selected_colour().as_deref(), Some("green"));
    assert_eq!((w.image_of("web-green"), w.image_of("web-blue"), w.image_of("web")), (World::image(D1), OLD.to_string(), OLD.to_string()));
    assert_eq!(w.deployment("web-green")["spec"]["minReadySeconds"], 1);
    assert_eq!(w.deployment("web-green")["spec"]["selector"]["matchLabels"], json!({"app": "web", "kiln.dev/colour": "green"}));
    assert_eq!(w.deployment("web-green")["spec"]["template"]["spec"]["containers"][1]["image"], "registry.example/mesh/proxy:1");
    assert_eq!(first["strategy"]["kind"], "blue-green", "{first}");
    let first_steps = steps(&first);
    assert!(first_steps.iter().any(|s| s == "Service web selects web-blue (was web)"), "{first_steps:?}");
    assert!(first_steps.iter().any(|s| s == "Service web selects web-green (was web-blue)"), "{first_steps:?}");
    assert!(first_steps.iter().any(|s| s.starts_with("web-green Available: 2 replicas ready for 1s")), "{first_steps:?}");
    // The previous colour is kept running.
    assert_eq!((w.replicas("web-blue"), w.replicas("web")), (2, 2));

    // A second release goes to blue, the idle colour.
    w.pushed(D3, "v2.0.0").await;
    w.fake.wait_until(LIMIT, "the Service to select blue", |_| (w.selected_colour().as_deref() == Some("blue")).then_some(())).await;
    w.release_in("Complete").await;
    assert_eq!((w.image_of("web-blue"), w.image_of("web-green"), w.replicas("web-green")), (World::image(D3), World::image(D1), 2));

    // A rollback to build 1 within keep_previous_secs: green still runs D1, so only the Service
    // changes; green's Deployment is not written, no pod starts.
    let green_generation = w.deployment("web-green")["metadata"]["generation"].clone();
    w.fake.reset_counters();
    let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps/hello/rollback", Some(&w.token), Some(json!({"build": b1}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rollback = w.step_reached("Service web selects web-green (was web-blue)").await;
    let rollback = if rollback["state"] == "Complete" { rollback } else { w.release_in("Complete").await };
    assert_eq!(w.selected_colour().as_deref(), Some("green"));
    assert!(steps(&rollback).iter().any(|s| s.contains("web-green still runs the image and is Available: switching back, no pod started")), "{rollback:#}");
    assert_eq!((rollback["trigger"].as_str(), rollback["requested_by"].is_string()), (Some("rollback"), true), "{rollback:#}");
    let writes: Vec<_> = w.fake.requests().into_iter().filter(|r| r.is_write()).collect();
    assert_eq!(writes.iter().filter(|r| r.resource == "services").count(), 1, "{writes:?}");
    assert!(!writes.iter().any(|r| r.resource == "deployments" && r.name.as_deref() == Some("web-green")), "{writes:?}");
    assert_eq!(w.deployment("web-green")["metadata"]["generation"], green_generation);

    // After keep_previous_secs: blue (switched away from by the rollback) and web go to zero;
    // green, which serves, stays.
    for retired in ["web-blue", "web"] {
        w.step_recorded(&format!("{retired} scaled to zero after 8s")).await;
        assert_eq!(w.replicas(retired), 0);
    }
    assert_eq!(w.replicas("web-green"), 2);

    let switches = check_every_state_has_ready_endpoints(&w.fake, rv, service, vec![web]);
    let colour = |c: &str| Some(c.to_string());
    assert_eq!(switches, vec![colour("blue"), colour("green"), colour("blue"), colour("green")]);
}

#[tokio::test]
async fn blue_green_with_manual_promotion_switches_on_promote_and_an_abort_leaves_the_traffic() {
    let strategy = json!({"kind": "blue-green", "min_ready_secs": 0, "keep_previous_secs": 600, "promote": "manual"});
    let w = world(2, strategy).await;
    // Nothing runs yet: nothing to promote.
    let path = format!("/api/v1/apps/hello/subscriptions/{}/promote", w.subscription);
    let (status, body) = w.kiln.request(Method::POST, &path, Some(&w.token), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // First use switches web → blue (same image) on its own; D1 on green waits for a person.
    w.pushed(D1, "v1.0.0").await;
    w.step_reached("web-green waits for promotion").await;
    assert_eq!(w.selected_colour().as_deref(), Some("blue"));
    assert_eq!(w.fake.get("deployments", "shop", "web-green").unwrap()["status"]["readyReplicas"], 2);
    let asked = w.decide("promote").await;
    let done = w.release_in("Complete").await;
    assert_eq!(w.selected_colour().as_deref(), Some("green"));
    let promoted = done["steps"].as_array().unwrap().iter().find(|s| s["step"] == "promoted").cloned().expect("a promoted step");
    assert_eq!(promoted["actor"], asked["by"], "{done:#}");
    assert!(promoted["actor"].as_str().unwrap().starts_with("token:"), "{promoted}");

    // D3 on blue, aborted: the Service stays on green, blue back to zero, recorded Aborted by whom.
    w.pushed(D3, "v2.0.0").await;
    w.step_reached("web-blue waits for promotion").await;
    w.decide("abort").await;
    let aborted = w.release_in("Aborted").await;
    assert_eq!(w.selected_colour().as_deref(), Some("green"));
    assert_eq!((w.image_of("web-green"), w.replicas("web-blue")), (World::image(D1), 0));
    assert!(aborted["reason"].as_str().unwrap().contains("aborted by token:"), "{aborted:#}");
}

#[tokio::test]
async fn canary_25_then_100_with_four_replicas_runs_one_canary_and_three_stable_then_promotes() {
    let strategy = json!({"kind": "canary", "steps": [25, 100], "promote": "manual", "window_secs": 20});
    let w = world(4, strategy).await;
    w.pushed(D1, "v1.0.0").await;
    let at25 = w.step_reached("canary at 25 % waits for promotion").await;
    assert_eq!((w.replicas("web-canary"), w.replicas("web")), (1, 3));
    assert_eq!(w.deployment("web-canary")["status"]["readyReplicas"], 1);
    assert_eq!((w.image_of("web-canary"), w.image_of("web")), (World::image(D1), OLD.to_string()));
    assert_eq!(w.deployment("web-canary")["spec"]["selector"]["matchLabels"], json!({"app": "web", "kiln.dev/track": "canary"}));
    assert!(steps(&at25).iter().any(|s| s == "canary at 25 %: 1 canary, 3 stable pods"), "{at25:#}");
    assert_eq!(at25["state"], "Running");

    w.decide("promote").await;
    let done = w.release_in("Complete").await;
    assert_eq!((w.image_of("web"), w.replicas("web"), w.replicas("web-canary")), (World::image(D1), 4, 0));
    assert_eq!(w.deployment("web")["status"]["availableReplicas"], 4);
    let s = steps(&done);
    assert!(s.iter().any(|s| s == "web runs the image with 4 replicas; web-canary scaled to zero"), "{s:?}");
    assert!(done["steps"].as_array().unwrap().iter().any(|st| st["step"] == "promoted from 25 %" && st["actor"].is_string()), "{done:#}");
    // Every step has its time, in order.
    let times: Vec<i64> = done["steps"].as_array().unwrap().iter().map(|s| s["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] <= t[1]), "{times:?}");
}

#[tokio::test]
async fn a_canary_pod_that_never_becomes_ready_aborts_within_the_window_and_traffic_goes_back_to_stable() {
    let window = 3;
    let w = world(4, json!({"kind": "canary", "steps": [25, 100], "pause_secs": 0, "window_secs": window})).await;
    w.fake.fail_rollouts_of(&D1["sha256:".len()..]);
    let rv = w.fake.resource_version();
    w.pushed(D1, "v1.0.0").await;
    let aborted = w.release_in("Aborted").await;
    let reason = aborted["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("aborted at 25 %: 0 of 1 canary pods Ready within {window}s")), "{reason}");
    assert!(reason.contains("traffic back to stable"), "{reason}");
    let took = aborted["finished_at"].as_i64().unwrap() - aborted["started_at"].as_i64().unwrap();
    assert!(took < (window as i64 + 5) * 1000, "aborted after {took} ms, the window is {window}s");
    // Stable has all its replicas and its image; the canary is at zero.
    assert_eq!((w.replicas("web"), w.image_of("web"), w.replicas("web-canary")), (4, OLD.to_string(), 0));
    // Stable was never scaled down for a canary that was not Ready.
    assert!(!w.fake.changes_since(rv).iter().any(|(r, _, o)| r == "deployments" && o["metadata"]["name"] == "web" && o["spec"]["replicas"] != 4));
}

/// The (stable, canary) weights the VirtualService was written with, in order.
fn weights_written(fake: &FakeKube, rv: u64) -> Vec<(u64, u64)> {
    let mut out = vec![];
    for (_, _, vs) in fake.changes_since(rv).into_iter().filter(|(r, _, _)| r == "virtualservices") {
        let route = vs["spec"]["http"][0]["route"].as_array().unwrap().clone();
        let weight = |subset: &str| route.iter().find(|d| d["destination"]["subset"] == subset).unwrap()["weight"].as_u64().unwrap();
        let w = (weight("stable"), weight("canary"));
        if out.last() != Some(&w) {
            out.push(w);
        }
    }
    out
}

#[tokio::test]
async fn istio_canary_weighs_75_25_then_0_100_and_an_abort_puts_100_0_back() {
    let w = world(4, json!({"kind": "canary", "steps": [25, 100], "pause_secs": 0, "window_secs": 20, "traffic": "istio"})).await;
    let rv = w.fake.resource_version();
    w.pushed(D1, "v1.0.0").await;
    let done = w.release_in("Complete").await;
    assert_eq!(weights_written(&w.fake, rv), vec![(75, 25), (0, 100), (100, 0)]);
    // With Istio the stable Deployment keeps its replicas through the steps and then runs D1.
    assert!(!w.fake.changes_since(rv).iter().any(|(r, _, o)| r == "deployments" && o["metadata"]["name"] == "web" && o["spec"]["replicas"] != 4));
    assert_eq!((w.image_of("web"), w.replicas("web-canary")), (World::image(D1), 0));
    let s = steps(&done);
    assert!(s.iter().any(|s| s == "canary at 25 %: VirtualService web weighs stable 75 / canary 25, 1 canary pods"), "{s:?}");
    // The VirtualService's other fields are as the owner wrote them.
    assert_eq!(w.fake.get("virtualservices", "shop", "web").unwrap()["spec"]["hosts"], json!(["web"]));

    // The next release, aborted by a person at 25 %: weights back to 100/0, canary to zero.
    let strategy = json!({"strategy": {"kind": "canary", "steps": [25, 100], "promote": "manual", "window_secs": 20, "traffic": "istio"}});
    let path = format!("/api/v1/apps/hello/subscriptions/{}/strategy", w.subscription);
    let (status, body) = w.kiln.request(Method::PUT, &path, Some(&w.token), Some(strategy)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rv = w.fake.resource_version();
    w.pushed(D3, "v2.0.0").await;
    w.step_reached("canary at 25 % waits for promotion").await;
    w.decide("abort").await;
    let aborted = w.release_in("Aborted").await;
    assert_eq!(weights_written(&w.fake, rv), vec![(75, 25), (100, 0)]);
    assert_eq!((w.image_of("web"), w.replicas("web"), w.replicas("web-canary")), (World::image(D1), 4, 0));
    let reason = aborted["reason"].as_str().unwrap();
    assert!(reason.contains("aborted at 25 %: aborted by token:"), "{reason}");
    let abort_step = aborted["steps"].as_array().unwrap().last().unwrap().clone();
    assert!(abort_step["actor"].as_str().unwrap().starts_with("token:"), "{abort_step}");
}

#[tokio::test]
async fn a_deployment_kiln_did_not_make_under_a_twins_name_is_not_touched() {
    let w = world(2, json!({"kind": "canary", "steps": [50, 100], "pause_secs": 0, "window_secs": 20})).await;
    let theirs = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-canary"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/theirs:1"}]}}}});
    w.fake.create("shop", "deployments", theirs).unwrap();
    w.fake.reset_counters();
    w.pushed(D1, "v1.0.0").await;
    let failed = w.release_in("Failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("Deployment web-canary exists but was not made by Kiln from web"), "{reason}");
    let written: Vec<String> = w.fake.requests().iter().filter(|r| r.is_write()).map(|r| format!("{} {:?}", r.resource, r.name)).collect();
    assert!(written.iter().all(|w| !w.starts_with("deployments")), "{written:?}");
    let canary = w.deployment("web-canary");
    assert_eq!((canary["metadata"]["generation"].as_i64(), w.image_of("web-canary")), (Some(1), "registry.example/theirs:1".to_string()));
    assert_eq!((w.replicas("web"), w.image_of("web")), (2, OLD.to_string()));
}

#[tokio::test]
async fn a_canary_pod_that_restarts_during_a_step_aborts_the_release() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    let w = world(4, json!({"kind": "canary", "steps": [25, 100], "promote": "manual", "window_secs": 20})).await;
    w.pushed(D1, "v1.0.0").await;
    w.step_reached("canary at 25 % waits for promotion").await;
    // One of the canary's pods (the fake's Deployment controller makes none) restarts its
    // container, as the kubelet reports it.
    let pod = json!({"metadata": {"name": "web-canary-7d4f9-x2x9q", "labels": {"app": "web", "kiln.dev/track": "canary"}},
        "spec": {"containers": [{"name": "app", "image": World::image(D1)}]}});
    w.fake.create("shop", "pods", pod).unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(w.fake.client(), "shop");
    let status = json!({"status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": World::image(D1), "imageID": "", "ready": true,
        "restartCount": 1, "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}});
    pods.patch_status("web-canary-7d4f9-x2x9q", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let aborted = w.release_in("Aborted").await;
    let reason = aborted["reason"].as_str().unwrap();
    assert!(reason.contains("aborted at 25 %: canary pod web-canary-7d4f9-x2x9q restarted (container app restarted 1 times)"), "{reason}");
    assert_eq!((w.replicas("web"), w.image_of("web"), w.replicas("web-canary")), (4, OLD.to_string(), 0));
}
