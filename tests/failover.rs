//! Replicas of `kiln serve` as processes on one PostgreSQL database (issue 22), always on
//! PostgreSQL: one is SIGKILLed while its builds compile and another adopts them — every build
//! ends, no second Job, every line the pod wrote stored exactly once; all three are restarted one
//! after the other (SIGTERM, as a rolling update does) while webhooks arrive, and every delivery
//! is answered 2xx by a replica that was ready and recorded once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use builder_api::store::{BuildState, LogLine, SecretKey, Store};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::kube_builds::{slow_go_held, ProcessWorld, GIT_TOKEN, INSTANCE};
use crate::support::fixtures::{fixture_app, GitlabPush};
use crate::support::kiln::ADMIN;
use crate::support::postgres;
use crate::support::registry::free_port;
use crate::support::serve_process::ServeProcess;

const LIMIT: Duration = Duration::from_secs(120);
const SECRET: &str = "failover-hook-secret";

/// The replicas' shared pieces: the database, the secret key (in a file every replica reads),
/// and a store of the test's own on them.
struct Shared {
    url: String,
    key_file: PathBuf,
    store: Store,
    dir: tempfile::TempDir,
}

impl Shared {
    async fn new() -> Shared {
        let url = postgres::fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load(dir.path(), None).unwrap();
        let key_file = dir.path().join("secret.key");
        let store = Store::connect(Some(&url), dir.path(), key).await.unwrap();
        Shared { url, key_file, store, dir }
    }

    /// Replica `n`'s `kiln.toml`: the shared database and key, SIGTERM drains for 2 s (well over
    /// the balancer's probe period, even on a loaded machine), claims last 10 s (as
    /// deploy/postgres/), then `rest` (under `[executor]` until its first table).
    fn config(&self, n: usize, rest: &str) -> PathBuf {
        let dir = self.dir.path().join(format!("replica-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[server]\nadmin_token = \"{ADMIN}\"\ndrain_secs = 2\n[store]\ndata_dir = \"{}\"\nurl = \"{}\"\nsecret_key_file = \"{}\"\n\
             [executor]\nkiln_binary = \"{}\"\nclaim_lease_secs = 10\n{rest}",
            dir.join("data").display(),
            self.url,
            self.key_file.display(),
            env!("CARGO_BIN_EXE_kiln"),
        );
        let file = dir.join("kiln.toml");
        std::fs::write(&file, text).unwrap();
        file
    }
}

fn compile_lines(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.step == "compile" && matches!(l.stream, builder_api::store::Stream::Stdout | builder_api::store::Stream::Stderr))
        .map(|l| l.line.clone())
        .collect()
}

#[tokio::test]
async fn a_replica_killed_mid_compile_has_its_builds_adopted_with_no_second_job_and_every_line_once() {
    const LINES: u32 = 150;
    let ProcessWorld { git, registry, fake, kubeconfig, _fake_root } = ProcessWorld::start().await;
    let env = [("KUBECONFIG", kubeconfig.as_str())];
    let shared = Shared::new().await;
    let gate = shared.dir.path().join("go-on");
    let rest = format!(
        "kind = \"kube\"\nmax_concurrent_builds = 3\n[kube]\ninstance = \"{INSTANCE}\"\n\
         [registry]\ninsecure = [\"{}\"]\n[toolchains]\ngo = \"{}\"\ngoproxy = \"off\"\n",
        registry.host(),
        slow_go_held(shared.dir.path(), LINES, 20, &gate).display(),
    );

    // A takes the builds: B is started only once they compile. They hold at line 10 until A is
    // killed, so none has finished its compile by then, however unevenly they started.
    let mut a = ServeProcess::start_with_env(&shared.config(0, &rest), free_port(), &env);
    a.ready().await;
    let token = a.tenant(ADMIN, "team").await;
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/hello", "go-hello", (SECRET, GIT_TOKEN), json!({"kind": "go"}));
    let (status, answer) = a.call(Method::POST, "/api/v1/apps", &token, Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let mut ids = vec![];
    for _ in 0..3 {
        let (_, res) = a.call(Method::POST, "/api/v1/apps/hello/builds", &token, Some(json!({"commit": sha}))).await;
        ids.push(res["build"]["id"].as_i64().unwrap());
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    for id in &ids {
        while !compile_lines(&shared.store.log_after(*id, 0, 1_000_000).await.unwrap()).iter().any(|l| l == "slow line 10") {
            assert!(tokio::time::Instant::now() < deadline, "build {id} never got to compile");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let b = ServeProcess::start_with_env(&shared.config(1, &rest), free_port(), &env);
    b.ready().await;
    let a_replica = shared.store.claim_of(ids[0]).await.unwrap().expect("claimed").0;

    a.kill();
    let killed_at = builder_api::store::now_ms();
    let mut stored_before = vec![];
    for id in &ids {
        stored_before.push(shared.store.log_after(*id, 0, 1_000_000).await.unwrap());
    }
    std::fs::write(&gate, "").unwrap();

    let expected: Vec<String> = (1..=LINES).map(|i| format!("slow line {i}")).collect();
    let mut failovers = vec![];
    for (id, before) in ids.iter().zip(stored_before) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        let build = loop {
            let build = shared.store.build(*id).await.unwrap().unwrap();
            if build.state.is_final() {
                break build;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} did not finish after its replica was killed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let after = shared.store.log_after(*id, 0, 1_000_000).await.unwrap();
        let log: Vec<&str> = after.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(build.state, BuildState::Succeeded, "build {id}: {:?}\n{}", build.reason, log.join("\n"));
        assert_eq!(&after[..before.len()], &before[..], "build {id}: a line stored before the kill changed or vanished");
        assert_eq!(compile_lines(&after), expected, "build {id}: the compile log has a gap, a repeat or a reordering");
        let taken_over = after
            .iter()
            .find(|l| l.line.contains(&format!("took the build over from replica {a_replica}")))
            .unwrap_or_else(|| panic!("build {id}: no line says who took it over:\n{}", log.join("\n")));
        failovers.push(taken_over.at - killed_at);
        let (holder, _) = shared.store.claim_of(*id).await.unwrap().unwrap();
        assert_ne!(holder, a_replica, "build {id} is still claimed by the killed replica");
    }
    println!("kill -9 → first line stored by the adopting replica: {failovers:?} ms (claim lease 10 s)");
    // One create per build, by A; B followed the same Jobs.
    assert_eq!(fake.count("create", "jobs"), 3, "Job creates: {:?}", fake.requests_for_prefix(&format!("kiln-{INSTANCE}-")));
    assert!(failovers.iter().all(|ms| *ms < 5_000), "failover took {failovers:?} ms");
    drop(b);
}

/// Where a load balancer sends requests: the replicas whose last readiness probe (every 100 ms,
/// as a Service's endpoints follow `/readyz`) answered 200, in turn.
struct Endpoints {
    urls: Vec<String>,
    ready: Mutex<Vec<bool>>,
    next: Mutex<usize>,
}

impl Endpoints {
    fn pick(&self) -> Option<String> {
        let ready = self.ready.lock().unwrap().clone();
        let mut next = self.next.lock().unwrap();
        for _ in 0..ready.len() {
            *next = (*next + 1) % ready.len();
            if ready[*next] {
                return Some(self.urls[*next].clone());
            }
        }
        None
    }

    async fn probe(self: Arc<Self>) {
        let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
        loop {
            // All at once, so one slow answer does not leave the others' states old.
            let probes = self.urls.iter().map(|url| {
                let client = client.clone();
                async move { client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) }
            });
            let states = futures_util::future::join_all(probes).await;
            *self.ready.lock().unwrap() = states;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_rolling_restart_of_three_replicas_answers_every_webhook_and_records_each_once() {
    const PUSHES: usize = 50;
    crate::support::init();
    let shared = Shared::new().await;
    // Builds fail at once (nothing answers at their git URL): this is about the deliveries.
    let rest = "max_concurrent_builds = 2\n[hooks]\nrate_per_app_per_minute = 0\n";
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let configs: Vec<PathBuf> = (0..3).map(|n| shared.config(n, rest)).collect();
    let mut replicas: Vec<ServeProcess> = (0..3).map(|n| ServeProcess::start(&configs[n], ports[n])).collect();
    for r in &replicas {
        r.ready().await;
    }
    let token = replicas[0].tenant(ADMIN, "team").await;
    let spec = json!({"name": "hello", "git_url": "http://127.0.0.1:9/team/hello.git", "project_path": "team/hello",
                      "image_repository": "127.0.0.1:9/team/hello", "webhook_secret": SECRET, "kind": "go", "settings": {"supersede": false}});
    let (status, answer) = replicas[0].call(Method::POST, "/api/v1/apps", &token, Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    let endpoints = Arc::new(Endpoints { urls: replicas.iter().map(|r| r.url.clone()).collect(), ready: Mutex::new(vec![true; 3]), next: Mutex::new(0) });
    let prober = tokio::spawn(endpoints.clone().probe());
    let sender = {
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answers = vec![];
            for i in 0..PUSHES {
                let push = GitlabPush::branch("team/hello", "http://127.0.0.1:9/team/hello.git", "main", &format!("{:040x}", i + 1));
                let url = loop {
                    match endpoints.pick() {
                        Some(url) => break url,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                };
                let answer = client
                    .post(format!("{url}/hooks/gitlab"))
                    .header("x-gitlab-event", push.event())
                    .header("x-gitlab-token", SECRET)
                    .header("x-gitlab-event-uuid", format!("0b6c3f0e-0000-4000-8000-{i:012}"))
                    .header("content-type", "application/json")
                    .body(push.body().to_string())
                    .send()
                    .await;
                answers.push((url, answer.map(|r| r.status()).map_err(|e| e.to_string())));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answers
        })
    };
    // One replica after the other: SIGTERM, wait for it to exit, start it again, wait for ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..3 {
        let mut stopping = replicas.remove(n);
        let status = tokio::task::spawn_blocking(move || {
            let status = stopping.terminate(Duration::from_secs(30));
            (status, stopping)
        })
        .await
        .unwrap();
        assert!(status.0.success(), "replica {n} exited with {:?} after SIGTERM:\n{}", status.0, status.1.output());
        let fresh = ServeProcess::start(&configs[n], ports[n]);
        fresh.ready().await;
        replicas.insert(n, fresh);
    }
    let answers = sender.await.unwrap();
    prober.abort();
    let refused: Vec<&(String, Result<StatusCode, String>)> = answers.iter().filter(|(_, a)| !a.as_ref().is_ok_and(|s| s.is_success())).collect();
    assert!(refused.is_empty(), "deliveries not answered 2xx: {refused:?}");
    assert_eq!(answers.len(), PUSHES);
    assert_eq!(shared.store.delivery_count("gitlab").await.unwrap(), PUSHES as i64, "each delivery recorded once");
    assert_eq!(shared.store.builds(None, None, None, 1000).await.unwrap().len(), PUSHES, "one build per delivery");
}
