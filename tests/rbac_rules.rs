//! Every right `deploy/` grants Kiln is one Kiln uses: for each rule of each ClusterRole — in
//! `deploy/base/rbac.yaml` and in the optional `deploy/provisioning/` — broken down to one (apiGroup,
//! resource, verb), a fresh fake API server gets `deploy/`'s RBAC with exactly that one verb taken
//! out, and one Kiln runs everything Kiln does in a cluster against it. The scenario must then
//! visibly fail: Kiln does not start, a step is refused or ends wrong, or the fake refused a
//! request (`FakeKube::refusals`: Kiln carries on without some reads, such as the namespace's
//! PodSecurity label or the registry Secret for the log masker, and only the refusal shows it).
//! With every rule in place the same scenario must succeed with no refusal at all.
//!
//! The scenario, with `kube.provision_namespaces` on (so the provisioning rights count too):
//! - Kiln starts (its start-up cleanup lists Jobs cluster-wide; its watches on Jobs, Pods and
//!   Warning Events start);
//! - an admin creates tenant `team`: Kiln creates the namespace `kiln-team`, its RoleBinding
//!   `kiln-builds` (`bind`) and the ServiceAccount `kiln-build`, under that RoleBinding;
//! - a Go build (a stand-in `go` that compiles nothing) with a git token (the Secret
//!   `kiln-git-svc`, server-side applied: patch and create) and `kube.registry_secret` (read for
//!   the log masker): the PodSecurity label read, the Job created, the pods watched, each
//!   container's log read, the Job deleted when the log is stored;
//! - Kiln's create path when the Job exists already (a retry after a lost answer or a restart of
//!   a second Kiln with the same instance), which one build never meets: called directly, as
//!   `submit` calls it, with a Job planted under the name — it reads the Job (jobs get);
//! - a Harbor delivery rolls an image out to a subscribed Deployment in the deploy namespace
//!   `shop` (granted by `deploy/deploy-namespace/`): the subscription reads it, the rollout reads,
//!   patches and watches it;
//! - the next image, released blue-green to that Deployment (its colours created, the Service
//!   read and switched) and as an Istio canary to another (`api-canary` created, the
//!   VirtualService read and weighed).

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::config::ClusterConfig;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::kube_builds::{fake_options, kiln_identity, kube_config, GIT_TOKEN, SECRET};
use crate::support::fake_kube::FakeKube;
use crate::support::fixtures::{fixture_app, instant_go};
use crate::support::git_server::GitServer;
use crate::support::kiln::{TestKiln, ADMIN};
use crate::support::registry::TestRegistry;

const AUTH: &str = "Basic a2lsbjpoYXJib3ItaG9vay1zZWNyZXQ=";
const EAST: &str = "harbor.east.example:8443";
/// How long one step of a scenario may take before it counts as failed.
const STEP: Duration = Duration::from_secs(30);
/// Scenarios at once (the machine has two cores; each runs a Kiln, a fake and a build).
const PARALLEL: usize = 2;

/// Rules no Kiln code path uses (removing one fails nothing): none. A rule listed here belongs
/// out of `deploy/base/rbac.yaml`; the list lets this test name it until it is removed.
const NOT_USED: &[(&str, &str, &str, &str)] = &[];

fn deploy_file(f: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(f)).unwrap()
}

/// The YAML documents of a manifest, parsed.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

/// One verb of one rule: (ClusterRole, apiGroup, resource, verb).
type Right = (String, String, String, String);

/// The RBAC objects of `deploy/base/rbac.yaml` and `deploy/provisioning/rbac.yaml`.
fn deploy_rbac() -> Vec<Value> {
    let mut all = documents(&deploy_file("base/rbac.yaml"));
    all.extend(documents(&deploy_file("provisioning/rbac.yaml")));
    all
}

/// Every right the ClusterRoles grant.
fn rights(objects: &[Value]) -> Vec<Right> {
    let mut out = vec![];
    for role in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
        let name = role["metadata"]["name"].as_str().unwrap().to_string();
        for rule in role["rules"].as_array().into_iter().flatten() {
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        out.push((name.clone(), g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    out
}

/// The objects with one right taken out: its rule split per (group, resource) so that only that
/// triple loses the verb; a rule left without verbs is dropped.
fn without(objects: &[Value], right: &Right) -> Vec<Value> {
    let (role_name, group, resource, verb) = right;
    objects
        .iter()
        .map(|o| {
            if o["kind"] != "ClusterRole" || o["metadata"]["name"] != role_name.as_str() {
                return o.clone();
            }
            let mut role = o.clone();
            let mut rules = vec![];
            for rule in o["rules"].as_array().into_iter().flatten() {
                for g in strings(&rule["apiGroups"]) {
                    for r in strings(&rule["resources"]) {
                        let mut one = rule.clone();
                        one["apiGroups"] = json!([g]);
                        one["resources"] = json!([r]);
                        if (&g, &r) == (group, resource) {
                            let verbs: Vec<String> = strings(&rule["verbs"]).into_iter().filter(|v| v != verb).collect();
                            if verbs.is_empty() {
                                continue;
                            }
                            one["verbs"] = json!(verbs);
                        }
                        rules.push(one);
                    }
                }
            }
            role["rules"] = json!(rules);
            role
        })
        .collect()
}

/// What the scenarios share: the git server with the app's repository, the registry.
struct World {
    /// Serves the app's repository while the scenarios run.
    _git: GitServer,
    registry: TestRegistry,
    sha: String,
    spec: Value,
}

/// How a scenario went.
#[derive(Debug)]
struct Outcome {
    /// The first thing that did not go as with every right (None: everything did).
    failure: Option<String>,
    refusals: Vec<String>,
    took: Duration,
}

impl Outcome {
    fn detected(&self) -> bool {
        self.failure.is_some() || !self.refusals.is_empty()
    }
    fn why(&self) -> String {
        match (&self.failure, self.refusals.first()) {
            (_, Some(r)) => format!("refused: {r}"),
            (Some(f), None) => f.clone(),
            (None, None) => "nothing".into(),
        }
    }
}

/// Polls `done` until it holds; Err when it does not within `STEP`, or — when `stop_on_refusal`
/// — as soon as the fake refused anything.
async fn until<T, F: std::future::Future<Output = Option<T>>>(fake: &FakeKube, stop_on_refusal: bool, what: &str, mut done: impl FnMut() -> F) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(t) = done().await {
            return Ok(t);
        }
        if stop_on_refusal && !fake.refusals().is_empty() {
            return Err(format!("{what}: stopped at a refusal"));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: not within {STEP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the scenario on a fake with these RBAC objects; `stop_on_refusal` ends it at the first
/// refusal (a reduced set), otherwise it runs to the end.
async fn scenario(world: &World, rbac: Vec<Value>, stop_on_refusal: bool) -> Outcome {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(fake_options(root.path(), &["shop"]));
    for o in &rbac {
        let (plural, ns) = match o["kind"].as_str().unwrap() {
            "ClusterRole" => ("clusterroles", ""),
            "ClusterRoleBinding" => ("clusterrolebindings", ""),
            other => panic!("{other} in deploy's RBAC"),
        };
        fake.create(ns, plural, o.clone()).unwrap();
    }
    // Kiln's right in its own namespace (a Role of its own file, not under test here).
    crate::kube_builds::grant_lease(&fake);
    fake.create_from_yaml(&deploy_file("deploy-namespace/rolebinding.yaml").replace("kind: RoleBinding\nmetadata:\n", "kind: RoleBinding\nmetadata:\n  namespace: shop\n"));
    // 20 replicas take the fake's controller 2 s to replace, one at a time: the rollout is
    // still going when Kiln has patched and starts to wait, so its wait always lists and then
    // watches (with 1 replica a loaded machine could see the rollout complete in the list, and
    // the watch right would go unused).
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 20, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": format!("{EAST}/team/hello:old")}]}}}});
    fake.create("shop", "deployments", web).unwrap();
    let failure = run(world, &fake, stop_on_refusal).await.err();
    let refusals = fake.refusals().into_iter().map(|r| format!("{} {} {:?}/{:?}: {}", r.verb, r.resource, r.namespace, r.name, r.message)).collect();
    Outcome { failure, refusals, took: started.elapsed() }
}

async fn run(world: &World, fake: &FakeKube, stop_on_refusal: bool) -> Result<(), String> {
    let client = fake.client_as(kiln_identity());
    let dir = tempfile::tempdir().unwrap();
    let mut config = kube_config(dir.path(), &world.registry);
    config.kube.provision_namespaces = true;
    config.kube.registry_secret = Some("kiln-registry".into());
    config.toolchains.go = instant_go(dir.path()).display().to_string();
    config.harbor.webhook_auth = Some(AUTH.into());
    config.clusters = vec![ClusterConfig { name: "east".into(), registry: EAST.into(), ..Default::default() }];
    config.rollout.deadline_secs = 20;
    config.executor.build_timeout_secs = 60;
    let kiln = TestKiln::try_start_with_kube(dir, config, Some(client.clone())).await.map_err(|e| format!("Kiln did not start: {e:#}"))?;
    kiln.ctx.clusters.set_client("east", client.clone());
    let ok = |what: &str, (status, body): (StatusCode, Value), want: StatusCode| if status == want { Ok(body) } else { Err(format!("{what}: {status} {body}")) };

    // The tenant, its namespace provisioned.
    let body = ok("creating the tenant", kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(json!({"name": "team"}))).await, StatusCode::CREATED)?;
    let token = body["token"].as_str().unwrap().to_string();
    fake.create_secret("kiln-team", "kiln-registry", &[("username", "robot-team"), ("password", "registry-password-rbac-rules")]);
    ok("granting shop", kiln.request(Method::PUT, "/api/v1/tenants/team/settings", Some(ADMIN), Some(json!({"deploy_namespaces": ["shop"]}))).await, StatusCode::OK)?;

    // The build.
    ok("creating app svc", kiln.request(Method::POST, "/api/v1/apps", Some(&token), Some(world.spec.clone())).await, StatusCode::CREATED)?;
    let body = ok("triggering", kiln.request(Method::POST, "/api/v1/apps/svc/builds", Some(&token), Some(json!({"commit": world.sha}))).await, StatusCode::CREATED)?;
    let id = body["build"]["id"].as_i64().unwrap();
    let build = until(fake, stop_on_refusal, "the build", || async {
        let b = kiln.build(id).await;
        b.state.is_final().then_some(b)
    })
    .await?;
    if build.state != builder_api::store::BuildState::Succeeded {
        return Err(format!("the build ended {:?}: {:?}", build.state, build.reason));
    }
    let job = crate::kube_builds::job_name(id);
    until(fake, stop_on_refusal, "the Job's delete", || async { fake.get("jobs", "kiln-team", &job).is_none().then_some(()) }).await?;

    // Kiln's create of a Job that exists already: it reads it and adopts it when it is its own.
    let planted = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "kiln-rbacprobe-7", "namespace": "kiln-team", "labels": {"kiln.dev/instance": "rbacprobe", "kiln.dev/build": "7"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "serviceAccountName": "kiln-build", "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}});
    fake.create("kiln-team", "jobs", planted.clone()).map_err(|e| format!("planting a Job: {e}"))?;
    let planted: k8s_openapi::api::batch::v1::Job = serde_json::from_value(planted).unwrap();
    let adopted = builder_api::executor::kube::submit::create_job(&client, &planted, "rbacprobe", 7).await.map_err(|e| format!("Job exists: {e}"))?;
    if !adopted.adopted {
        return Err("the existing Job was not adopted".into());
    }

    // The rollout.
    let app = json!({"name": "hello", "git_url": "http://127.0.0.1:9/team/hello.git", "image_repository": format!("{EAST}/team/hello"), "webhook_secret": "hello-hook-secret"});
    ok("creating app hello", kiln.request(Method::POST, "/api/v1/apps", Some(&token), Some(app)).await, StatusCode::CREATED)?;
    let sub = json!({"cluster": "east", "namespace": "shop", "deployment": "web", "container": "app", "policy": "glob:v*"});
    let web_sub = ok("subscribing", kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&token), Some(sub)).await, StatusCode::CREATED)?;
    let delivery = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/harbor/push-default-tag.json")).unwrap();
    let req = Request::post("/hooks/harbor").header("authorization", AUTH).header("content-type", "application/json").body(Body::from(delivery.clone())).unwrap();
    let (status, body) = kiln.send(req).await;
    if status != StatusCode::ACCEPTED {
        return Err(format!("the Harbor delivery: {status} {body}"));
    }
    let state = until(fake, stop_on_refusal, "the rollout", || async {
        let (_, releases) = kiln.request(Method::GET, "/api/v1/apps/hello/releases", Some(&token), None).await;
        let state = releases["releases"][0]["history"][0]["state"].as_str().map(String::from);
        state.filter(|s| s != "Pending" && s != "Running").map(|s| (s, releases))
    })
    .await?;
    if state.0 != "Complete" {
        return Err(format!("the rollout ended {}: {:#}", state.0, state.1));
    }
    let image = fake.get("deployments", "shop", "web").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    if !image.as_str().is_some_and(|i| i.starts_with(&format!("{EAST}/team/hello@sha256:"))) {
        return Err(format!("the Deployment runs {image}"));
    }

    // The next image released blue-green to web (Kiln creates its colours and switches the
    // Service) and as an Istio canary to a second Deployment, api (Kiln creates api-canary and
    // weighs the VirtualService).
    fake.create("shop", "services", json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    fake.create("shop", "virtualservices", json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "api"},
        "spec": {"hosts": ["api"], "http": [{"route": [{"destination": {"host": "api", "subset": "stable"}, "weight": 100},
                                                       {"destination": {"host": "api", "subset": "canary"}, "weight": 0}]}]}})).unwrap();
    let api = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}}, "template": {"metadata": {"labels": {"app": "api"}},
            "spec": {"containers": [{"name": "app", "image": format!("{EAST}/team/hello:old")}]}}}});
    fake.create("shop", "deployments", api).unwrap();
    let path = format!("/api/v1/apps/hello/subscriptions/{}/strategy", web_sub["subscription"]["id"]);
    let blue_green = json!({"strategy": {"kind": "blue-green", "min_ready_secs": 0}});
    ok("blue-green for web", kiln.request(Method::PUT, &path, Some(&token), Some(blue_green)).await, StatusCode::OK)?;
    let canary = json!({"kind": "canary", "steps": [50, 100], "pause_secs": 0, "window_secs": 20, "traffic": "istio"});
    let sub = json!({"cluster": "east", "namespace": "shop", "deployment": "api", "container": "app", "policy": "glob:v*", "strategy": canary});
    ok("subscribing api", kiln.request(Method::POST, "/api/v1/apps/hello/subscriptions", Some(&token), Some(sub)).await, StatusCode::CREATED)?;
    let digest = format!("sha256:{}", "3".repeat(64));
    let delivery = delivery.replace(&format!("sha256:{}", "1".repeat(64)), &digest).replace("v1.0.0", "v2.0.0");
    let req = Request::post("/hooks/harbor").header("authorization", AUTH).header("content-type", "application/json").body(Body::from(delivery)).unwrap();
    let (status, body) = kiln.send(req).await;
    if status != StatusCode::ACCEPTED {
        return Err(format!("the second Harbor delivery: {status} {body}"));
    }
    let releases = until(fake, stop_on_refusal, "the blue-green and canary releases", || async {
        let (_, releases) = kiln.request(Method::GET, "/api/v1/apps/hello/releases", Some(&token), None).await;
        let newest: Vec<Value> = releases["releases"].as_array()?.iter().map(|r| r["history"][0].clone()).collect();
        let done = newest.len() == 2 && newest.iter().all(|h| h["digest"] == digest.as_str() && h["state"] != "Pending" && h["state"] != "Running");
        done.then_some(newest)
    })
    .await?;
    if let Some(r) = releases.iter().find(|r| r["state"] != "Complete") {
        return Err(format!("the {} release ended {}: {}", r["strategy"]["kind"], r["state"], r["reason"]));
    }
    Ok(())
}

#[tokio::test]
async fn removing_any_one_rule_of_deploys_rbac_fails_the_scenario_that_uses_every_one() {
    crate::support::init();
    let started = Instant::now();
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start().await;
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/svc", "go-hello", (SECRET, GIT_TOKEN), json!({"kind": "go"}));
    let world = World { _git: git, registry, sha, spec };

    let all = deploy_rbac();
    // Every right in place: the scenario succeeds and nothing is refused.
    let full = scenario(&world, all.clone(), false).await;
    assert!(!full.detected(), "with every rule of deploy/: {}\nrefusals: {:#?}", full.why(), full.refusals);
    eprintln!("every rule: ok in {:?}", full.took);

    let rights = rights(&all);
    assert!(rights.len() >= 20, "{rights:?}");
    let outcomes: Vec<(Right, Outcome)> = futures_util::stream::iter(rights.iter().cloned())
        .map(|right| {
            let world = &world;
            let rbac = without(&all, &right);
            async move { (right, scenario(world, rbac, true).await) }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    let mut undetected = vec![];
    for ((role, group, resource, verb), outcome) in &outcomes {
        eprintln!("without {role}: {group:?} {resource} {verb} ({:?}): {}", outcome.took, outcome.why());
        if !outcome.detected() {
            undetected.push((role.as_str(), group.as_str(), resource.as_str(), verb.as_str()));
        }
    }
    undetected.sort();
    let mut expected: Vec<_> = NOT_USED.to_vec();
    expected.sort();
    assert_eq!(undetected, expected, "rules whose removal nothing noticed (a right Kiln does not need, or a scenario that misses a use)");
    eprintln!("{} rules in {:?}", outcomes.len(), started.elapsed());
}
