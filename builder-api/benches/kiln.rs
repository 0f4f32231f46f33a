//! Kiln's benchmarks (not tests; they print figures):
//!
//! - `intake`: 200 concurrent GitLab Push Hooks for distinct commits over a real socket, on new
//!   connections and then on connections already open (as behind an ingress): p50/p99 time to
//!   the 202, deliveries per second, a check that every one was persisted, and the floor: the
//!   same burst to a route that does nothing. `kiln serve` runs in its own process (the bench
//!   profile's binary), and its CPU time during the bursts is printed.
//! - `build`: one warm build of the sample Go app through Kiln versus the same steps as a shell
//!   script (`git clone --depth 1`, `go build`, `buildah bud` + `buildah push`), in the same run,
//!   against the same git server and registry; prints both medians and the ratio.
//!
//! - `kube`: 200 builds queued at once through the kube executor against the fake API server of
//!   the tests (its kubelet off, so Jobs stay pending): p50/p99 from the webhook's 202 to the Job
//!   created, Kubernetes writes and reads per build over its whole life (create … cancel), and
//!   watch connections opened.
//!
//! - `statuses`: the `kube` case twice in one run, without and with GitLab commit statuses (every
//!   build posting pending, running and canceled to a GitLab double answering in 50 ms): the
//!   pipeline's latencies side by side and the statuses delivered.
//!
//! - `followers`: 1,000 SSE followers of one build whose compile step writes 2,000 timestamped
//!   lines a second, `kiln serve` in its own process: p50/p99 from the step writing a line to a
//!   follower reading it, and the server's resident memory per follower.
//!
//! - `apm`: the image of the layered Maven sample with an APM agent — `kiln step assemble` (Jib-style
//!   layers + agent injection, pushed) versus `buildah bud` of the equivalent Dockerfile +
//!   `buildah push`, same registry, same JRE-sized base, cold and after a one-line code change.
//!
//! - `rollout`: 500 Harbor webhooks for 100 subscribed Deployments on the fake API server:
//!   p50/p99 from the webhook's arrival to the Deployment patched to the pushed digest. Then a
//!   blue-green and a canary run (`[25, 100]`): 20 Deployments of 4 replicas behind their
//!   Services, two pushes each in turn: webhook → traffic on the new digest (blue-green: the
//!   Service switched to the colour running it; canary: its first canary pod Ready behind the
//!   Service, and the stable Deployment rolled out) and the Kubernetes writes per release.
//!
//! - `sync`: 20 images sharing base layers (about 300 MB of unique random blobs) copied from one
//!   real registry to two: Kiln's copy engine versus a `skopeo copy --all --preserve-digests` loop
//!   and versus `skopeo sync` of a YAML list of the 20, one per target (each to two other fresh
//!   registries), in the same run; the ratio is against the faster of the two. Also the floor of
//!   reading every unique blob once from the source; then Kiln again with everything present.
//!   Then the CLI case (alone: `-- sync-cli`): the `kiln sync` command run for 8 images sharing a
//!   70 MiB base, one after another into one registry, versus the same loop of `skopeo copy`;
//!   each keeps its blob cache, so both mount the base after the first image.
//!
//! - `scheduler`: 10,000 queued builds of 100 tenants in the store, every tenant at its cap of 2
//!   running builds; one build ends at a time and the scheduler picks the next: p99 of the pick
//!   (in memory) and of the whole start (read the arrivals, pick, move it to Running), versus
//!   reading the Queued builds from the store on every wake, as the scheduler did before.
//!
//! - `metrics`: GET /metrics through the router with 1,000 and then 100,000 finished builds in the
//!   store (and the families filled as after a busy day): p50/p99 of a scrape and its CPU time
//!   for each, and the ratio; the target is under 5 ms and no growth with the store.
//!
//! `cargo bench -p builder-api --bench kiln [-- intake|build|kube|statuses|followers|rollout|sync|sync-cli|apm|scheduler|metrics]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use builder_api::config::Config;
use builder_api::context::{AppState, Context};
use builder_api::store::BuildState;
use serde_json::json;

const ADMIN: &str = "bench-admin-token";

/// The fake Kubernetes API server of the integration tests, compiled into this benchmark.
#[allow(dead_code)]
#[path = "../../tests/support/fake_kube/mod.rs"]
mod fake_kube;

/// `kiln serve` as its own process (the bench profile's binary), as the tests run it.
#[allow(dead_code)]
#[path = "../../tests/support/serve_process.rs"]
mod serve_process;

/// The real docker-registry and the image builder of the integration tests.
#[allow(dead_code)]
#[path = "../../tests/support/registry.rs"]
mod test_registry;
#[allow(dead_code)]
#[path = "../../tests/support/oci_images.rs"]
mod oci_images;
/// The GitLab API double of the integration tests (commit statuses).
#[allow(dead_code)]
#[path = "../../tests/support/gitlab_api.rs"]
mod gitlab_api;
/// What `registry.rs`'s token-auth registries trust (no bench uses one).
#[allow(dead_code)]
#[path = "../../tests/support/token_service.rs"]
mod token_service;

/// The tests' throwaway PostgreSQL cluster (`intake` runs Kiln on it as well as on SQLite).
#[allow(dead_code)]
#[path = "../../tests/support/postgres.rs"]
pub mod pg_cluster;
/// The name `pg_cluster` (the tests' `support::postgres`) finds the registry support under.
use test_registry as registry;

/// The test support's secret scan, which `registry.rs` and `serve_process.rs` feed: the benchmarks
/// scan no output for secrets (the test suite does), so these are no-ops here.
mod support {
    pub mod secrets {
        pub fn register(_secret: &str) {}
        pub fn capture(_source: &str, _text: &str) {}
        pub fn assert_no_leaks() {}
    }
    pub use crate::pg_cluster;
    /// The benchmarks' stores are SQLite under their data dirs, unless a run names a PostgreSQL
    /// database for the next `kiln serve` it starts.
    pub mod postgres {
        pub static NEXT_DATABASE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        pub fn database_for(_data_dir: &std::path::Path) -> Option<String> {
            NEXT_DATABASE.lock().unwrap().take()
        }
    }
}


/// The claim the benches put on the builds they mark Running themselves (no replica runs them).
const BENCH_CLAIM: builder_api::store::Claim<'static> = builder_api::store::Claim { replica: "bench", until: i64::MAX };

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // One column of `statuses`, in a process of its own (see there).
    if which.first().map(String::as_str) == Some(STATUSES_RUN) {
        rt.block_on(statuses_run());
        return;
    }
    if which.is_empty() || which.iter().any(|w| w == "intake") {
        rt.block_on(intake());
    }
    if which.is_empty() || which.iter().any(|w| w == "failover") {
        rt.block_on(failover());
    }
    if which.is_empty() || which.iter().any(|w| w == "build") {
        rt.block_on(build());
    }
    if which.is_empty() || which.iter().any(|w| w == "kube") {
        rt.block_on(kube());
    }
    if which.is_empty() || which.iter().any(|w| w == "statuses") {
        rt.block_on(statuses());
    }
    if which.is_empty() || which.iter().any(|w| w == "followers") {
        rt.block_on(followers());
    }
    if which.is_empty() || which.iter().any(|w| w == "rollout") {
        rt.block_on(rollout());
        rt.block_on(release_strategy("blue-green", json!({"kind": "blue-green", "min_ready_secs": 0, "keep_previous_secs": 600})));
        rt.block_on(release_strategy("canary", json!({"kind": "canary", "steps": [25, 100], "pause_secs": 0, "window_secs": 60})));
    }
    if which.is_empty() || which.iter().any(|w| w == "sync") {
        rt.block_on(sync());
    }
    if which.is_empty() || which.iter().any(|w| w == "sync" || w == "sync-cli") {
        rt.block_on(sync_cli());
    }
    if which.is_empty() || which.iter().any(|w| w == "apm") {
        rt.block_on(apm());
    }
    if which.is_empty() || which.iter().any(|w| w == "scheduler") {
        rt.block_on(scheduler());
    }
    if which.is_empty() || which.iter().any(|w| w == "metrics") {
        rt.block_on(metrics());
    }
}

async fn scheduler() {
    use builder_api::scheduler::FairQueue;
    use builder_api::store::Store;
    use std::collections::HashMap;

    const TENANTS: i64 = 100;
    const BUILDS: i64 = 10_000;
    const CAP: u32 = 2;
    const PICKS: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let apps = seed_apps(&store, TENANTS).await;
    // Pushes arrive interleaved across the tenants, as in a busy morning.
    let fill = Instant::now();
    for i in 0..BUILDS {
        queue_build(&store, &apps, i).await;
    }
    println!("scheduler: {BUILDS} queued builds of {TENANTS} tenants (stored in {:.1} s), cap {CAP} running per tenant, all at their cap", fill.elapsed().as_secs_f64());

    // Before: every wake read the Queued builds, whole rows.
    let mut reads = vec![];
    for _ in 0..20 {
        let t = Instant::now();
        let queued = store.builds_in_state(BuildState::Queued).await.unwrap();
        reads.push(t.elapsed());
        assert_eq!(queued.len() as i64, BUILDS);
    }
    reads.sort();

    // Now: the queue is read once, then only what arrived since the last id seen.
    let t = Instant::now();
    let mut queue = FairQueue::default();
    let mut seen = 0;
    for (id, tenant) in store.queued_builds_after(0).await.unwrap() {
        queue.push(tenant, id);
        seen = id;
    }
    let load = t.elapsed();
    let caps: HashMap<i64, u32> = apps.iter().map(|a| (a.tenant_id, CAP)).collect();
    let mut running: HashMap<i64, usize> = apps.iter().map(|a| (a.tenant_id, CAP as usize)).collect();
    let (mut picks, mut starts) = (Vec::with_capacity(PICKS), Vec::with_capacity(PICKS));
    for i in 0..PICKS {
        // One build of a tenant ends: that tenant, and only it, has a free slot.
        let ended = apps[i * 37 % TENANTS as usize].tenant_id;
        *running.get_mut(&ended).unwrap() -= 1;
        let start = Instant::now();
        let arrived = store.queued_builds_after(seen).await.unwrap();
        assert!(arrived.is_empty());
        let pick = Instant::now();
        let picked = queue.pick(1, &running, &caps);
        picks.push(pick.elapsed());
        assert_eq!(picked.len(), 1, "the tenant with the free slot has waiting builds");
        assert_eq!(picked[0].0, ended, "only the tenant below its cap may start a build");
        let ids: Vec<i64> = picked.iter().map(|(_, id)| *id).collect();
        assert_eq!(store.start_builds(&ids, BENCH_CLAIM).await.unwrap().started, ids);
        starts.push(start.elapsed());
        *running.get_mut(&ended).unwrap() += 1;
    }
    picks.sort();
    starts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("  pick the next build (in memory): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {PICKS} picks (target p99 < 1 ms)", us(percentile(&picks, 0.5)), us(percentile(&picks, 0.99)), us(picks[PICKS - 1]));
    println!("  whole start (read arrivals + pick + mark Running): p50 {:.2} ms, p99 {:.2} ms", ms(percentile(&starts, 0.5)), ms(percentile(&starts, 0.99)));
    println!("  before, reading every Queued build on each wake: p50 {:.1} ms, p99 {:.1} ms", ms(percentile(&reads, 0.5)), ms(percentile(&reads, 0.99)));
    println!("  whole start now / read before (p99): {:.3}; queue loaded at start in {:.1} ms", ms(percentile(&starts, 0.99)) / ms(percentile(&reads, 0.99)), ms(load));
}

/// Tenants `team-0` … with one Go app `app` each, in the store.
async fn seed_apps(store: &builder_api::store::Store, tenants: i64) -> Vec<builder_api::store::App> {
    use builder_api::store::{BuildKind, KindSettings, NewApp};
    let mut apps = vec![];
    for t in 0..tenants {
        let tenant = store.create_tenant(&format!("team-{t}")).await.unwrap();
        let app = store
            .create_app(&NewApp {
                tenant_id: tenant.id,
                name: "app".into(),
                git_url: format!("http://git.example/team-{t}/app.git"),
                project_path: None,
                branch_filter: "*".into(),
                kind: BuildKind::Go,
                settings: KindSettings::default(),
                base_image: None,
                image_repository: format!("registry.example/team-{t}/app"),
                webhook_secret: "s".into(),
                git_token: None,
                gitlab_token: None,
            })
            .await
            .unwrap();
        apps.push(app);
    }
    apps
}

/// The `i`-th push's build, queued for the apps in turn (interleaved across the tenants).
async fn queue_build(store: &builder_api::store::Store, apps: &[builder_api::store::App], i: i64) -> i64 {
    let app = &apps[i as usize % apps.len()];
    let commit = format!("{:040x}", i + 1);
    let new = builder_api::store::NewBuild { tenant_id: app.tenant_id, app_id: app.id, git_ref: Some("refs/heads/main".into()), commit, trigger: "webhook".into(), commit_info: Default::default() };
    store.create_build(&new).await.unwrap().id
}

/// `metrics`: GET /metrics through the router (no socket) with 1,000 and then 100,000 finished
/// builds in the store, the families filled as after a busy day (every label set the code makes,
/// the gauges of 100 tenants): p50/p99 per scrape, the CPU time of a scrape, and the ratio of the
/// two sizes. A scrape encodes what is in memory and never reads the store, so the ratio is ~1.
async fn metrics() {
    use axum::body::Body;
    use tower::ServiceExt;

    const TENANTS: i64 = 100;
    const SCRAPES: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.store.data_dir = dir.path().join("data");
    c.server.admin_token = Some(ADMIN.into());
    // No background work: nothing runs the builds stored below, and no scheduler pass competes
    // with the scrapes.
    let ctx = builder_api::server::build_context(c).await.unwrap();
    let router = builder_api::router::router(AppState(ctx.clone()));
    let apps = seed_apps(&ctx.store, TENANTS).await;
    fill_metrics(&ctx.metrics, TENANTS);

    let mut stored = 0i64;
    let mut figures = vec![];
    for size in [1_000i64, 100_000] {
        let (fill, added) = (Instant::now(), size - stored);
        // Finished builds, as the scheduler leaves them: most Succeeded, some Failed or Cancelled.
        while stored < size {
            let ids: Vec<i64> = {
                let mut ids = vec![];
                for _ in 0..500.min(size - stored) {
                    ids.push(queue_build(&ctx.store, &apps, stored).await);
                    stored += 1;
                }
                ids
            };
            ctx.store.start_builds(&ids, BENCH_CLAIM).await.unwrap();
            for id in ids {
                let state = match id % 20 {
                    0 => BuildState::Failed,
                    1 => BuildState::Cancelled,
                    _ => BuildState::Succeeded,
                };
                ctx.store.finish_build(id, state, None).await.unwrap();
            }
        }
        let fill = fill.elapsed();
        let scrape = || async {
            let req = axum::http::Request::get("/metrics").body(Body::empty()).unwrap();
            let res = router.clone().oneshot(req).await.unwrap();
            axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap().len()
        };
        // Warm up (allocator, caches) after the writes above, then measure.
        for _ in 0..200 {
            scrape().await;
        }
        let mut times = Vec::with_capacity(SCRAPES);
        let mut bytes = 0;
        let cpu_before = thread_cpu();
        for _ in 0..SCRAPES {
            let t = Instant::now();
            bytes = scrape().await;
            times.push(t.elapsed());
        }
        let cpu = (thread_cpu() - cpu_before) / SCRAPES as u32;
        times.sort();
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        println!(
            "metrics: {size} builds in the store ({added} stored in {:.1} s): scrape p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, CPU {:.3} ms a scrape, {bytes} bytes, over {SCRAPES} scrapes (target < 5 ms)",
            fill.as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(times[SCRAPES - 1]),
            ms(cpu)
        );
        figures.push((p50, p99, cpu));
    }
    let (small, large) = (figures[0], figures[1]);
    println!(
        "  100,000 builds / 1,000 builds: p50 {:.2}, p99 {:.2}, CPU {:.2} (p99 and max are wall-clock, so they include any time other work on the machine took the core; the CPU time is the scrape's own)",
        ms(large.0) / ms(small.0),
        ms(large.1) / ms(small.1),
        ms(large.2) / ms(small.2)
    );
}

/// Every label set of the families the code can make, with a few observations each, and the
/// queued/running gauges of `tenants` tenants: a scrape of a Kiln after a busy day.
fn fill_metrics(m: &builder_api::metrics::Metrics, tenants: i64) {
    for source in ["gitlab", "harbor"] {
        for outcome in ["accepted", "duplicate", "ignored", "refused"] {
            m.webhook(source, outcome, Instant::now());
        }
    }
    m.queue_wait.observe(3.0);
    for kind in ["go", "maven", "dockerfile", "unknown"] {
        for result in ["Succeeded", "Failed", "Cancelled"] {
            m.build_duration.get_or_create(&builder_api::metrics::BuildLabels { kind: kind.into(), result: result.into() }).observe(90.0);
        }
    }
    for step in ["clone", "compile", "image"] {
        m.step_finished(step, 12.0);
    }
    for result in ["Verified", "Failed"] {
        let labels = builder_api::metrics::ResultLabels { result: result.into() };
        m.replication_duration.get_or_create(&labels).observe(8.0);
        m.replication_bytes.get_or_create(&labels).observe(50e6);
    }
    for result in ["Complete", "Failed", "RolledBack"] {
        m.rollout_duration.get_or_create(&builder_api::metrics::ResultLabels { result: result.into() }).observe(40.0);
    }
    for (verb, code) in [("create", Some(403)), ("get", Some(404)), ("watch", Some(410)), ("list", Some(500)), ("patch", None)] {
        m.kube_api_error(verb, code);
    }
    for outcome in ["delivered", "refused", "not_delivered"] {
        m.gitlab_status(outcome);
        m.notification(outcome);
    }
    for t in 0..tenants {
        m.set_tenant_builds(&format!("team-{t}"), t % 3, t % 2);
    }
}

/// CPU time of this thread (the scrapes run on it: `oneshot` through the router, no task spawned).
fn thread_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn start_kiln(dir: &Path, insecure: &[String], max_builds: usize) -> (Arc<Context>, String) {
    let mut c = Config::default();
    c.store.data_dir = dir.join("data");
    c.server.admin_token = Some(ADMIN.into());
    c.executor.kiln_binary = Some(kiln_binary());
    c.executor.max_concurrent_builds = max_builds;
    // Benchmarks send pushes faster than the per-app webhook rate: they measure what Kiln does
    // with the deliveries it accepts.
    c.hooks.rate_per_app_per_minute = 0;
    c.registry.insecure = insecure.to_vec();
    c.toolchains.goproxy = "off".into();
    let ctx = builder_api::server::build_context(c).await.unwrap();
    let url = serve_in_process(&ctx).await;
    (ctx, url)
}

/// Starts `ctx`'s background work and serves its router in this process, on a listener set up
/// as `kiln serve` sets up its own (backlog, TCP_NODELAY); returns the base URL.
async fn serve_in_process(ctx: &Arc<Context>) -> String {
    builder_api::server::start_background(ctx).await.unwrap();
    let listener = builder_api::server::listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = builder_api::router::router(AppState(ctx.clone()));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| drop(tcp.set_nodelay(true)));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// `kiln serve` in its own process (the bench profile's binary), with its data under
/// `root/data`, the benchmarks' admin token, and `config` appended to a TOML file whose last
/// section is `[executor]` (so `config` may begin with executor keys), ready to answer.
async fn start_serve(root: &Path, config: &str) -> serve_process::ServeProcess {
    let config_file = serve_process::write_config(root, ADMIN, &kiln_binary(), config);
    let serve = serve_process::ServeProcess::start(&config_file, free_port());
    serve.ready().await;
    serve
}

/// target/<profile>/kiln, built by `cargo build --release --bin kiln` (scripts/bench does it).
fn kiln_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let kiln = dir.join("kiln");
    assert!(kiln.exists(), "{} is missing: run `cargo build --release -p builder-api --bin kiln` first", kiln.display());
    kiln
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Tenant `bench`; returns its token.
async fn create_tenant(http: &reqwest::Client, url: &str) -> String {
    let t: serde_json::Value =
        http.post(format!("{url}/api/v1/tenants")).bearer_auth(ADMIN).json(&json!({"name": "bench"})).send().await.unwrap().json().await.unwrap();
    t["token"].as_str().unwrap().to_string()
}

/// Triggers a build of app `hello` at `commit`; its id.
async fn trigger_hello(http: &reqwest::Client, url: &str, token: &str, commit: &str) -> i64 {
    let res: serde_json::Value =
        http.post(format!("{url}/api/v1/apps/hello/builds")).bearer_auth(token).json(&json!({"commit": commit})).send().await.unwrap().json().await.unwrap();
    res["build"]["id"].as_i64().unwrap_or_else(|| panic!("no build: {res}"))
}

async fn setup_tenant(http: &reqwest::Client, url: &str, app: serde_json::Value) -> String {
    let token = create_tenant(http, url).await;
    let res = http.post(format!("{url}/api/v1/apps")).bearer_auth(&token).json(&app).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    token
}

/// `intake`: 200 concurrent pushes, twice, into `kiln serve` with its store on SQLite, then one
/// replica on PostgreSQL (the tests' throwaway cluster), then three replicas on one PostgreSQL
/// database with the pushes spread over them, same run; each column prints its latencies,
/// deliveries/s and the CPU per delivery of Kiln (all replicas) and of the database server.
async fn intake() {
    const N: usize = 200;
    let sqlite = intake_run(N, None, 1).await;
    let postgres = intake_run(N, Some(support::pg_cluster::fresh_database()), 1).await;
    let three = intake_run(N, Some(support::pg_cluster::fresh_database()), 3).await;
    println!("intake: {N} concurrent Push Hooks for distinct commits, twice (target p99 < 50 ms), kiln serve on SQLite, on PostgreSQL, and three replicas on PostgreSQL");
    println!("  {:<52} {:>12} {:>12} {:>12}", "", "SQLite", "PostgreSQL", "PG ×3");
    let row = |what: &str, f: fn(&IntakeFigures) -> f64, unit: &str| {
        println!("  {what:<52} {:>9.1} {unit:<2} {:>9.1} {unit:<2} {:>9.1} {unit:<2}", f(&sqlite), f(&postgres), f(&three));
    };
    row("new connections: time to 202 p50", |r| r.cold_p50, "ms");
    row("new connections: time to 202 p99", |r| r.cold_p99, "ms");
    row("new connections: deliveries/s", |r| r.cold_rate, "/s");
    row("open connections: time to 202 p50", |r| r.warm_p50, "ms");
    row("open connections: time to 202 p99", |r| r.warm_p99, "ms");
    row("open connections: deliveries/s", |r| r.warm_rate, "/s");
    row("floor (a no-op route, new connections) p99", |r| r.floor_p99, "ms");
    row("kiln serve's CPU per delivery (new connections)", |r| r.kiln_cpu_us, "µs");
    row("the database server's CPU per delivery (both bursts)", |r| r.db_cpu_us, "µs");
    println!(
        "  PostgreSQL p99 / SQLite p99: {:.2} new connections, {:.2} open connections (target <= 1.5); SQLite's CPU is in kiln serve's own",
        postgres.cold_p99 / sqlite.cold_p99,
        postgres.warm_p99 / sqlite.warm_p99
    );
    println!(
        "  three replicas / one, deliveries/s: {:.2} new connections, {:.2} open connections (target >= 0.9; they share these cores)",
        three.cold_rate / postgres.cold_rate,
        three.warm_rate / postgres.warm_rate
    );
}

/// `failover`: replica A of two on one PostgreSQL database runs builds when it is SIGKILLed;
/// the time from the kill to the first line of each of those builds that replica B stores (with
/// the local executor B can only end them, "interrupted": the line is its adoption). Claims last
/// 10 s, as deploy/postgres/ sets them. Target: p99 < 5 s.
async fn failover() {
    const ROUNDS: usize = 5;
    const BUILDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let database = support::pg_cluster::fresh_database();
    let key = builder_api::store::SecretKey::load(dir.path(), None).unwrap();
    let key_file = dir.path().join("secret.key").display().to_string();
    let store = builder_api::store::Store::connect(Some(&database), dir.path(), key).await.unwrap();
    // A git server that accepts connections and never answers: the clones hang, so the builds
    // run until their replica dies.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let git_url = format!("http://{}/bench/hello.git", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((socket, _)) = hang.accept().await {
            held.push(socket);
        }
    });
    let config = "max_concurrent_builds = 8\nclaim_lease_secs = 10\n[hooks]\nrate_per_app_per_minute = 0\n";
    let start = |name: String| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        *support::postgres::NEXT_DATABASE.lock().unwrap() = Some(database.clone());
        let config_file = serve_process::write_config(&root, ADMIN, &kiln_binary(), config);
        serve_process::ServeProcess::start_with_env(&config_file, free_port(), &[("KILN_SECRET_KEY_FILE", key_file.as_str())])
    };
    let http = reqwest::Client::new();
    let mut token = None;
    let mut samples = vec![];
    for round in 0..ROUNDS {
        let mut a = start(format!("a-{round}"));
        a.ready().await;
        if token.is_none() {
            token = Some(
                setup_tenant(
                    &http,
                    &a.url,
                    json!({"name": "hello", "git_url": git_url, "project_path": "bench/hello", "kind": "go",
                           "image_repository": "127.0.0.1:9/bench/hello", "webhook_secret": "bench-secret", "settings": {"supersede": false}}),
                )
                .await,
            );
        }
        let token = token.as_deref().unwrap();
        let mut ids = vec![];
        for i in 0..BUILDS {
            ids.push(trigger_hello(&http, &a.url, token, &format!("{:040x}", round * BUILDS + i + 1)).await);
        }
        for id in &ids {
            while store.build(*id).await.unwrap().unwrap().state != builder_api::store::BuildState::Running {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let b = start(format!("b-{round}"));
        b.ready().await;
        a.kill();
        let killed_at = builder_api::store::now_ms();
        for id in &ids {
            let first = loop {
                let lines = store.log_after(*id, 0, 100_000).await.unwrap();
                if let Some(line) = lines.iter().find(|l| l.at >= killed_at) {
                    break line.at;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            samples.push(Duration::from_millis((first - killed_at).max(0) as u64));
        }
        drop(b);
    }
    samples.sort();
    println!("failover: kill -9 of the replica running {BUILDS} builds, {ROUNDS} times; claim lease 10 s, target p99 < 5 s");
    println!(
        "  kill → first line stored by the other replica: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} builds)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

struct IntakeFigures {
    cold_p50: f64,
    cold_p99: f64,
    cold_rate: f64,
    warm_p50: f64,
    warm_p99: f64,
    warm_rate: f64,
    floor_p99: f64,
    /// kiln serve's CPU per delivery of the new-connection burst, µs.
    kiln_cpu_us: f64,
    /// The PostgreSQL server's CPU (all its processes) per delivery of both bursts, µs; 0 on SQLite.
    db_cpu_us: f64,
}

/// CPU time of the PostgreSQL cluster: the postmaster and every process it started.
fn postgres_cpu() -> Duration {
    postgres_processes().values().map(|(_, cpu)| *cpu).sum()
}

/// The PostgreSQL cluster's processes (the postmaster and its children): pid → (what its title
/// says it is, CPU time so far).
fn postgres_processes() -> std::collections::HashMap<u32, (String, Duration)> {
    let cluster = support::pg_cluster::cluster();
    let pid_file = std::fs::read_to_string(cluster.data.join("postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let mut processes = std::collections::HashMap::new();
    let title = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ").trim().to_string();
    processes.insert(postmaster, (title(postmaster), serve_process::cpu_time_of(postmaster).unwrap_or_default()));
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid …`: the comm may hold spaces, so read after its closing paren.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            processes.insert(pid, (title(pid), serve_process::cpu_time_of(pid).unwrap_or_default()));
        }
    }
    processes
}

async fn intake_run(n: usize, database: Option<String>, replicas: usize) -> IntakeFigures {
    let dir = tempfile::tempdir().unwrap();
    let on_postgres = database.is_some();
    let db_cpu = || if on_postgres { postgres_cpu() } else { Duration::ZERO };
    // `kiln serve` in its own process, as it is deployed: the benchmark's client and Kiln do not
    // share a runtime, and Kiln's own CPU time is read from /proc. Builds run (and fail fast:
    // nothing serves the git URL) while hooks arrive.
    let config = "max_concurrent_builds = 2\n[toolchains]\ngoproxy = \"off\"\n\
         # 200 pushes of one app at once are past the per-app webhook rate (burst 120): the\n\
         # benchmark measures what Kiln does with deliveries it accepts.\n\
         [hooks]\nrate_per_app_per_minute = 0\n";
    let mut serves = vec![];
    for r in 0..replicas {
        let root = dir.path().join(format!("replica-{r}"));
        std::fs::create_dir_all(&root).unwrap();
        *support::postgres::NEXT_DATABASE.lock().unwrap() = database.clone();
        let config_file = serve_process::write_config(&root, ADMIN, &kiln_binary(), config);
        // Replicas share the first one's secret key.
        let key_file = dir.path().join("replica-0/data/secret.key").display().to_string();
        let env: Vec<(&str, &str)> = if r == 0 { vec![] } else { vec![("KILN_SECRET_KEY_FILE", key_file.as_str())] };
        let serve = serve_process::ServeProcess::start_with_env(&config_file, free_port(), &env);
        serve.ready().await;
        serves.push(serve);
    }
    let url = serves[0].url.clone();
    let cpu_time = |serves: &[serve_process::ServeProcess]| serves.iter().map(|s| s.cpu_time()).sum::<Duration>();
    let http = reqwest::Client::new();
    setup_tenant(
        &http,
        &url,
        json!({"name": "hello", "git_url": "http://127.0.0.1:9/bench/hello.git", "project_path": "bench/hello",
               "image_repository": "127.0.0.1:9/bench/hello", "webhook_secret": "bench-secret",
               // Every push is built (the benchmark counts them), none superseded.
               "settings": {"supersede": false}}),
    )
    .await;
    // One build of the tenant at a time, however many replicas: every column does the same work
    // beside the deliveries, so the figures compare intake and not how many builds ran.
    let capped = http.put(format!("{url}/api/v1/tenants/bench/settings")).bearer_auth(ADMIN).json(&json!({"max_concurrent_builds": 1})).send().await.unwrap();
    assert!(capped.status().is_success(), "{}", capped.text().await.unwrap());
    // Steady state, as a service that has run a while: the database pools are open and every
    // replica has read the tenant's cap (it reads the caps every 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The client is a few lines of HTTP/1.1 over tokio sockets rather than reqwest: its 200
    // connections share the 2 cores with Kiln, and GitLab's would not, so it should cost little.
    // Request i goes to replica i % replicas, as a Service spreads them.
    let addrs: Vec<String> = serves.iter().map(|s| s.url.trim_start_matches("http://").to_string()).collect();
    let addr = addrs[0].clone();
    // The floor: the same burst of fresh connections to a route that does nothing (`GET /`
    // answers a redirect), so the HTTP cost of this machine is printed beside Kiln's.
    let get_root = |_| raw_http::request(&addr, "GET", "/", &[], b"");
    let (floor, _) = raw_http::burst(&addrs, (0..n).map(get_root).collect(), None).await;
    let statements = StatementProfile::start(database.as_deref());
    // Cold: every delivery on a new connection, as GitLab sends them straight to Kiln.
    let (cpu_before, db_before) = (cpu_time(&serves), db_cpu());
    let (cold_latencies, cold_wall) = raw_http::burst(&addrs, (0..n).map(|i| push(&addr, i)).collect(), None).await;
    let cold_cpu = cpu_time(&serves) - cpu_before;
    // Warm: over connections already open, as an ingress that keeps upstream connections alive
    // forwards them (each opened by a no-op request first).
    let mut open = Vec::new();
    for i in 0..n {
        let mut stream = tokio::net::TcpStream::connect(&addrs[i % addrs.len()]).await.unwrap();
        let status = raw_http::exchange(&mut stream, &get_root(0)).await;
        assert!((300..400).contains(&status), "{status}");
        open.push(stream);
    }
    let (warm_latencies, warm_wall) =
        raw_http::burst(&addrs, (0..n).map(|i| push(&addr, n + i)).collect(), Some(open)).await;
    let db_used = db_cpu() - db_before;
    statements.print(&format!("{replicas} replica(s)"));

    // Counted from the database the processes wrote, after they are gone.
    drop(serves);
    let data = dir.path().join("replica-0/data");
    let key = builder_api::store::SecretKey::load(&data, None).unwrap();
    let store = builder_api::store::Store::connect(database.as_deref(), &data, key).await.unwrap();
    let persisted = store.delivery_count("gitlab").await.unwrap();
    let builds = store.builds(None, None, None, 10_000).await.unwrap().len();
    assert_eq!((persisted as usize, builds), (2 * n, 2 * n), "persisted deliveries and builds");
    let p = |l: &[Duration], q: f64| ms(percentile(l, q));
    IntakeFigures {
        cold_p50: p(&cold_latencies, 0.5),
        cold_p99: p(&cold_latencies, 0.99),
        cold_rate: n as f64 / cold_wall.as_secs_f64(),
        warm_p50: p(&warm_latencies, 0.5),
        warm_p99: p(&warm_latencies, 0.99),
        warm_rate: n as f64 / warm_wall.as_secs_f64(),
        floor_p99: p(&floor, 0.99),
        kiln_cpu_us: cold_cpu.as_secs_f64() * 1e6 / n as f64,
        db_cpu_us: db_used.as_secs_f64() * 1e6 / (2 * n) as f64,
    }
}

/// With `KILN_BENCH_PG_STATEMENTS=1` (the cluster then loads pg_stat_statements): PostgreSQL's
/// statements during the bursts, the costliest first, to see where its time goes.
struct StatementProfile {
    database: Option<String>,
    processes: std::collections::HashMap<u32, (String, Duration)>,
}

impl StatementProfile {
    fn start(url: Option<&str>) -> StatementProfile {
        let database = url.filter(|_| std::env::var_os("KILN_BENCH_PG_STATEMENTS").is_some()).map(|u| u.rsplit('/').next().unwrap().to_string());
        if let Some(db) = &database {
            let cluster = support::pg_cluster::cluster();
            cluster.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
            cluster.psql(db, "SELECT pg_stat_statements_reset()");
        }
        StatementProfile { processes: if database.is_some() { postgres_processes() } else { Default::default() }, database }
    }

    fn print(&self, what: &str) {
        let Some(db) = &self.database else { return };
        let rows = support::pg_cluster::cluster().psql(
            db,
            "SELECT calls, round(total_exec_time::numeric, 1), round(total_plan_time::numeric, 1), rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
             FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY total_exec_time + total_plan_time DESC LIMIT 20",
        );
        let mut used: Vec<(Duration, String)> = postgres_processes()
            .into_iter()
            .map(|(pid, (title, cpu))| (cpu.saturating_sub(self.processes.get(&pid).map_or(Duration::ZERO, |(_, before)| *before)), title))
            .filter(|(cpu, _)| !cpu.is_zero())
            .collect();
        used.sort_by(|a, b| b.0.cmp(&a.0));
        println!("  PostgreSQL processes' CPU during the bursts, {what}:");
        for (cpu, title) in used.iter().take(12) {
            println!("    {:>8.1} ms  {title}", ms(*cpu));
        }
        println!("  PostgreSQL statements during the bursts, {what} (calls | executing ms | planning ms | rows | statement):");
        for row in rows.lines() {
            println!("    {row}");
        }
    }
}

/// One Push Hook for commit number `i`, as the bytes of its HTTP request.
fn push(addr: &str, i: usize) -> Vec<u8> {
    let sha = format!("{:040x}", i + 1);
    let body = json!({"object_kind": "push", "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha,
                      "checkout_sha": sha, "project": {"path_with_namespace": "bench/hello"}});
    let uuid = format!("bench-{i}");
    let headers = [
        ("content-type", "application/json"),
        ("x-gitlab-event", "Push Hook"),
        ("x-gitlab-token", "bench-secret"),
        ("x-gitlab-event-uuid", uuid.as_str()),
    ];
    raw_http::request(addr, "POST", "/hooks/gitlab", &headers, body.to_string().as_bytes())
}

/// HTTP/1.1 by hand, for bursts where the client must cost little: requests are prebuilt bytes,
/// answers are read to the end of their body (`Content-Length`) and only the status is kept.
mod raw_http {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends one request on `stream` and reads its whole answer; returns the status code.
    pub async fn exchange(stream: &mut TcpStream, request: &[u8]) -> u16 {
        stream.write_all(request).await.unwrap();
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the answer's head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).unwrap().to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("answers carry a content-length");
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside the answer's body");
            buf.extend_from_slice(&chunk[..n]);
        }
        status
    }

    /// Sends every request at once, each on a new connection to one of `addrs` in turn (`open` =
    /// None) or on one of the
    /// given open connections; returns each one's time to its whole answer (sorted; a new
    /// connection's connect included) and the wall time. Every answer must be 2xx or 3xx.
    pub async fn burst(addrs: &[String], requests: Vec<Vec<u8>>, open: Option<Vec<TcpStream>>) -> (Vec<Duration>, Duration) {
        let mut open = open.map(|v| v.into_iter());
        let started = Instant::now();
        let sends: Vec<_> = requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| {
                let stream = open.as_mut().map(|o| o.next().expect("a connection per request"));
                // Request i to address i % len (new connections).
                let addr = addrs[i % addrs.len()].clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let mut stream = match stream {
                        Some(s) => s,
                        None => TcpStream::connect(&addr).await.unwrap(),
                    };
                    let status = exchange(&mut stream, &request).await;
                    assert!((200..400).contains(&status), "{status}");
                    t.elapsed()
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(sends.len());
        for send in sends {
            latencies.push(send.await.unwrap());
        }
        let wall = started.elapsed();
        latencies.sort();
        (latencies, wall)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(cmd: &mut Command) {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A real registry and a real git server holding the sample Go app, for benchmarks that build.
struct GoAppWorld {
    registry: std::process::Child,
    /// `127.0.0.1:PORT` of the registry.
    reg: String,
    git_url: String,
    sha: String,
}

impl Drop for GoAppWorld {
    fn drop(&mut self) {
        let _ = self.registry.kill();
        let _ = self.registry.wait();
    }
}

impl GoAppWorld {
    async fn start(root: &Path) -> GoAppWorld {
        let reg_port = free_port();
        std::fs::write(
            root.join("registry.yml"),
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}/registry\nhttp:\n  addr: 127.0.0.1:{reg_port}\n", root.display()),
        )
        .unwrap();
        let registry = Command::new("docker-registry").arg("serve").arg(root.join("registry.yml")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/apps/go-hello");
        let bare = root.join("git/bench/hello.git");
        run(Command::new("git").args(["init", "-q", "--bare", "--initial-branch=main"]).arg(&bare));
        let work = root.join("work");
        run(Command::new("cp").arg("-r").arg(&sample).arg(&work));
        run(Command::new("git").args(["init", "-q", "--initial-branch=main"]).arg(&work));
        run(Command::new("git").arg("-C").arg(&work).args(["add", "-A"]));
        run(Command::new("git").arg("-C").arg(&work).args(["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x"]));
        run(Command::new("git").arg("-C").arg(&work).arg("push").arg("-q").arg(&bare).arg("main"));
        let sha = String::from_utf8(Command::new("git").arg("-C").arg(&work).args(["rev-parse", "HEAD"]).output().unwrap().stdout).unwrap().trim().to_string();
        let git_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let git_url = format!("http://{}/bench/hello.git", git_listener.local_addr().unwrap());
        let git = builder_api::devtools::git_http::GitHttp { root: root.join("git"), token: Some("bench-git-token".into()) };
        tokio::spawn(async move { axum::serve(git_listener, git.router()).await.unwrap() });
        let reg = format!("127.0.0.1:{reg_port}");
        for _ in 0..100 {
            if reqwest::get(format!("http://{reg}/v2/")).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        GoAppWorld { registry, reg, git_url, sha }
    }

    /// The app as the benchmarks register it.
    fn app(&self) -> serde_json::Value {
        json!({"name": "hello", "git_url": self.git_url, "project_path": "bench/hello", "image_repository": format!("{}/bench/hello", self.reg),
               "webhook_secret": "bench-secret", "git_token": "bench-git-token"})
    }
}

async fn build() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let world = GoAppWorld::start(root).await;
    let (reg, git_url, sha) = (world.reg.clone(), world.git_url.clone(), world.sha.clone());
    let (ctx, url) = start_kiln(root, &[reg.clone()], 1).await;
    let http = reqwest::Client::new();
    let token = setup_tenant(&http, &url, world.app()).await;

    const RUNS: usize = 5;
    let mut kiln_times = vec![];
    for i in 0..=RUNS {
        let t = Instant::now();
        let id = trigger_hello(&http, &url, &token, &sha).await;
        let mut wake = ctx.hub.subscribe(id);
        let build = loop {
            let build = ctx.store.build(id).await.unwrap().unwrap();
            if build.state.is_final() {
                break build;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), wake.changed()).await;
        };
        assert_eq!(build.state, BuildState::Succeeded, "{:?}", build.reason);
        if i > 0 {
            kiln_times.push(t.elapsed()); // the first run warms the Go build cache
        }
    }

    // The same steps as a shell script, warm too (Go's default build cache, buildah's storage).
    let script = root.join("script.sh");
    std::fs::write(
        &script,
        format!(
            r#"set -e
W=$(mktemp -d)
git clone -q --depth 1 --branch main "http://oauth2:bench-git-token@{git}" "$W/src"
cd "$W/src"
CGO_ENABLED=0 GOPROXY=off go build -trimpath -ldflags "-s -w" -o "$W/app" .
printf 'FROM scratch\nCOPY app /app/hello\nENTRYPOINT ["/app/hello"]\n' > "$W/Dockerfile"
buildah --storage-driver vfs bud -q --isolation=chroot --layers=false -f "$W/Dockerfile" -t localhost/bench-script "$W" >/dev/null
buildah --storage-driver vfs push -q --tls-verify=false localhost/bench-script docker://{reg}/bench/script:latest
rm -rf "$W"
"#,
            git = git_url.trim_start_matches("http://"),
        ),
    )
    .unwrap();
    let mut script_times = vec![];
    for i in 0..=RUNS {
        let t = Instant::now();
        run(Command::new("bash").arg(&script));
        if i > 0 {
            script_times.push(t.elapsed());
        }
    }
    drop(world);
    kiln_times.sort();
    script_times.sort();
    let (k, s) = (kiln_times[RUNS / 2], script_times[RUNS / 2]);
    println!("build: warm build of the sample Go app, median of {RUNS}");
    println!("  kiln (trigger → Succeeded, digest recorded): {:.0} ms  (all: {:?})", ms(k), kiln_times.iter().map(|d| ms(*d).round()).collect::<Vec<_>>());
    println!("  script (git clone, go build, buildah bud + push): {:.0} ms  (all: {:?})", ms(s), script_times.iter().map(|d| ms(*d).round()).collect::<Vec<_>>());
    println!("  ratio kiln/script: {:.2} (target ≤ 0.70)", k.as_secs_f64() / s.as_secs_f64());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Watches `api` (one watch connection of the benchmark's own) and records when each key
/// (`key` of an object, None to skip it) was first seen. Returns once the initial list is in.
async fn first_seen<K>(
    api: kube::Api<K>,
    key: impl Fn(K) -> Option<String> + Send + 'static,
) -> Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    use futures_util::StreamExt;
    use kube::runtime::watcher;
    let seen: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let record = seen.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = stream.next().await {
            match event {
                watcher::Event::InitDone => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                    if let Some(k) = key(obj) {
                        record.lock().unwrap().entry(k).or_insert_with(Instant::now);
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.await.unwrap();
    seen
}

/// What one run of the kube pipeline measured.
struct KubeRun {
    /// Push sent → 202, sorted.
    answers: Vec<Duration>,
    /// 202 → Job seen by the benchmark's watch, sorted.
    jobs: Vec<Duration>,
    timeline: String,
    writes: usize,
    reads: usize,
    by_verb: std::collections::BTreeMap<String, usize>,
    watches: (usize, usize, usize),
}

async fn kube() {
    const N: usize = 200;
    let run = kube_run(N, None).await;
    println!("kube: {N} builds queued at once, Jobs pending (fake API server, kubelet off)");
    println!(
        "  webhook 202 -> Job created: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 250 ms)",
        ms(percentile(&run.jobs, 0.5)),
        ms(percentile(&run.jobs, 0.99)),
        ms(run.jobs[N - 1])
    );
    println!("  {}", run.timeline);
    println!(
        "  Kubernetes requests per build over its life: {:.2} writes (target <= 2), {:.2} reads ({} writes, {} reads in all)",
        run.writes as f64 / N as f64,
        run.reads as f64 / N as f64,
        run.writes,
        run.reads
    );
    let per_build: Vec<String> = run.by_verb.iter().map(|(k, n)| format!("{k} {:.2}", *n as f64 / N as f64)).collect();
    println!("  requests per build by verb: {}", per_build.join(", "));
    println!(
        "  watch connections opened by Kiln: jobs {}, pods {}, events {} (target: 1 per kind whatever the number of builds)",
        run.watches.0, run.watches.1, run.watches.2
    );
}

/// `statuses`: the kube pipeline's 200 builds three times in one run — without GitLab commit
/// statuses, with every build posting them to a GitLab double that takes 50 ms per answer, and
/// without again — the pipeline's own latencies side by side, and whether every status (pending,
/// running, canceled per build) was delivered. Each column runs in a process of its own (this
/// binary, `statuses-run`): a Kiln's background tasks outlive its run in a process, so columns
/// run one after another in one process each paid for the runs before them (the third column,
/// without statuses, was the slowest).
async fn statuses() {
    const N: usize = 200;
    const TOKEN: &str = "glpat-bench-statuses";
    let gitlab = gitlab_api::GitlabApi::start(TOKEN).await;
    gitlab.delay_every(Duration::from_millis(50));
    // A column's process ends when its stdin closes, once its statuses were delivered (they are
    // sent by the Kiln in that process).
    let column = |gitlab_url: Option<String>| {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
        cmd.arg(STATUSES_RUN).arg(N.to_string());
        if let Some(url) = gitlab_url {
            cmd.env("KILN_BENCH_GITLAB_URL", url).env("KILN_BENCH_GITLAB_TOKEN", TOKEN);
        }
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::inherit());
        let gitlab = &gitlab;
        async move {
            let before = gitlab.delivered().len();
            let mut child = cmd.spawn().unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let mut result = None;
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(r) = line.strip_prefix("RESULT ") {
                    result = Some(serde_json::from_str::<serde_json::Value>(r).unwrap());
                    break;
                }
            }
            let r = result.unwrap_or_else(|| panic!("{STATUSES_RUN} printed no RESULT"));
            let ended = Instant::now();
            let deadline = ended + Duration::from_secs(300);
            let expected = before + if cmd_posts(&r) { 3 * N } else { 0 };
            while gitlab.delivered().len() < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drained = ended.elapsed();
            drop(stdin);
            assert!(child.wait().await.unwrap().success(), "{STATUSES_RUN} failed");
            let durations = |k: &str| -> Vec<Duration> {
                r[k].as_array().unwrap().iter().map(|v| Duration::from_secs_f64(v.as_f64().unwrap() / 1000.0)).collect()
            };
            (durations("answers"), durations("jobs"), drained)
        }
    };
    let without = column(None).await;
    let with = column(Some(gitlab.url())).await;
    let drained = with.2;
    let again = column(None).await;
    let calls = gitlab.calls();
    let delivered = gitlab.delivered().len();
    println!("statuses: {N} builds through the kube pipeline (fake API server), without and with GitLab commit statuses (double answering in 50 ms), a process per column");
    println!("  {:<28} {:>14} {:>14} {:>14}", "", "no statuses", "statuses", "none again");
    let row = |what: &str, pick: fn(&(Vec<Duration>, Vec<Duration>, Duration)) -> &[Duration], p: f64| {
        println!("  {what:<28} {:>11.1} ms {:>11.1} ms {:>11.1} ms", ms(percentile(pick(&without), p)), ms(percentile(pick(&with), p)), ms(percentile(pick(&again), p)))
    };
    row("push -> 202, p50", |r| &r.0, 0.5);
    row("push -> 202, p99", |r| &r.0, 0.99);
    row("202 -> Job created, p50", |r| &r.1, 0.5);
    row("202 -> Job created, p99", |r| &r.1, 0.99);
    println!(
        "  statuses delivered: {delivered} of {} (pending, running, canceled per build); {} calls in all, {} answered other than 201; the last one {:.0} ms after the last build ended",
        3 * N,
        calls.len(),
        calls.iter().filter(|c| c.answered != 201).count(),
        ms(drained)
    );
}

/// The argument that makes this binary run one column of `statuses` and print its latencies.
const STATUSES_RUN: &str = "statuses-run";

/// One column of `statuses`: `statuses-run N`, with `KILN_BENCH_GITLAB_URL`/`_TOKEN` when the
/// builds post commit statuses; prints `RESULT {"answers": [ms…], "jobs": [ms…], "posts": bool}`,
/// then waits for its stdin to close.
async fn statuses_run() {
    let n: usize = std::env::args().skip(1).filter(|a| !a.starts_with('-')).nth(1).and_then(|n| n.parse().ok()).expect("statuses-run N");
    let url = std::env::var("KILN_BENCH_GITLAB_URL").ok();
    let token = std::env::var("KILN_BENCH_GITLAB_TOKEN").ok();
    let gitlab = url.as_deref().zip(token.as_deref());
    let run = kube_run(n, gitlab).await;
    let millis = |ds: &[Duration]| ds.iter().map(|d| ms(*d)).collect::<Vec<f64>>();
    println!("RESULT {}", json!({"answers": millis(&run.answers), "jobs": millis(&run.jobs), "posts": gitlab.is_some()}));
    // Kiln delivers its statuses in this process: stay until the parent has counted them.
    let _ = tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())).await;
}

/// Whether a `statuses-run` column posted commit statuses.
fn cmd_posts(result: &serde_json::Value) -> bool {
    result["posts"].as_bool().unwrap_or(false)
}

/// 200 pushes of one app at once through the kube executor against the fake API server; each
/// build is cancelled once its Job exists. With `gitlab` (base URL, token) the app posts commit
/// statuses there.
async fn kube_run(n: usize, gitlab: Option<(&str, &str)>) -> KubeRun {
    use k8s_openapi::api::batch::v1::Job;

    let dir = tempfile::tempdir().unwrap();
    let fake = fake_kube::FakeKube::start(fake_kube::FakeKubeOptions {
        root: Some(dir.path().join("fake")),
        kubelet: false,
        namespaces: vec!["default".into(), "kiln-bench".into()],
        ..fake_kube::FakeKubeOptions::default()
    });
    // The account build pods run as (deploy/build-namespace/): without it the job controller's
    // pod creates are refused and the builds fail.
    fake.create_from_yaml("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kiln-build\n  namespace: kiln-bench\n");
    let mut c = Config::default();
    c.store.data_dir = dir.path().join("data");
    c.server.admin_token = Some(ADMIN.into());
    c.executor.kind = "kube".into();
    c.kube.instance = Some("bench".into());
    c.hooks.rate_per_app_per_minute = 0; // 200 pushes of one app at once
    // Every build holds a slot while its Job is pending.
    c.executor.max_concurrent_builds = n + 10;
    let ctx = builder_api::server::build_context_with(c, Some(fake.client())).await.unwrap();
    let url = serve_in_process(&ctx).await;
    let http = reqwest::Client::new();
    let mut app = json!({"name": "hello", "kind": "go", "git_url": "http://127.0.0.1:9/bench/hello.git", "project_path": "bench/hello",
           "image_repository": "127.0.0.1:9/bench/hello", "webhook_secret": "bench-secret",
           "settings": {"supersede": false}});
    if let Some((base, token)) = gitlab {
        app["gitlab_token"] = json!(token);
        app["settings"]["gitlab_url"] = json!(base);
    }
    let token = setup_tenant(&http, &url, app).await;

    // The benchmark's own watch sees each Job arrive (one more watch connection, not Kiln's).
    let jobs: kube::Api<Job> = kube::Api::namespaced(fake.client(), "kiln-bench");
    let created = first_seen(jobs, |job: Job| job.metadata.name).await;
    let watches_before = (fake.watches_opened("jobs"), fake.watches_opened("pods"), fake.watches_opened("events"));
    fake.reset_counters();

    let sends = (0..n).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let sha = format!("{:040x}", i + 1);
            let body = json!({"object_kind": "push", "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha,
                              "checkout_sha": sha, "project": {"path_with_namespace": "bench/hello"}});
            let sent = Instant::now();
            let res = http
                .post(format!("{url}/hooks/gitlab"))
                .header("x-gitlab-event", "Push Hook")
                .header("x-gitlab-token", "bench-secret")
                .header("x-gitlab-event-uuid", format!("kube-bench-{i}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let answered = Instant::now();
            assert_eq!(res.status(), 202);
            let body: serde_json::Value = res.json().await.unwrap();
            (body["builds"][0].as_i64().unwrap(), answered, answered - sent)
        }
    });
    let answered: Vec<(i64, Instant, Duration)> = futures_util::future::join_all(sends).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while created.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} Jobs were created", created.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies: Vec<Duration> = {
        let created = created.lock().unwrap();
        answered.iter().map(|(id, at, _)| created[&builder_api::executor::kube::render::job_name("bench", *id)].saturating_duration_since(*at)).collect()
    };
    latencies.sort();
    let mut answers: Vec<Duration> = answered.iter().map(|(_, _, took)| *took).collect();
    answers.sort();
    // Where the time goes: how the answers and the Jobs spread out after the first answer.
    let timeline = {
        let created = created.lock().unwrap();
        let first = answered.iter().map(|(_, at, _)| *at).min().expect("answers");
        let after = |t: Instant| ms(t.saturating_duration_since(first));
        let last_answer = answered.iter().map(|(_, at, _)| *at).max().expect("answers");
        let jobs: Vec<Instant> = answered.iter().map(|(id, _, _)| created[&builder_api::executor::kube::render::job_name("bench", *id)]).collect();
        let (first_job, last_job) = (*jobs.iter().min().expect("jobs"), *jobs.iter().max().expect("jobs"));
        format!("answers over {:.1} ms; Jobs created from {:.1} ms to {:.1} ms after the first answer", after(last_answer), after(first_job), after(last_job))
    };

    // The rest of each build's life: cancelled, so its Job is deleted.
    for (id, _, _) in &answered {
        let res = http.post(format!("{url}/api/v1/builds/{id}/cancel")).bearer_auth(&token).send().await.unwrap();
        let status = res.status();
        assert!(status.is_success(), "cancel build {id}: {status} {}", res.text().await.unwrap_or_default());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = ctx.store.builds(None, None, Some(BuildState::Running), 10_000).await.unwrap().len();
        if running == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{running} builds still running after cancel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // By verb (and resource): what a build costs the apiserver.
    let mut by_verb: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in fake.requests() {
        let sub = r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
        *by_verb.entry(format!("{} {}{sub}", r.verb, r.resource)).or_default() += 1;
    }
    KubeRun {
        answers,
        jobs: latencies,
        timeline,
        writes: fake.writes(),
        reads: fake.reads(),
        by_verb,
        watches: (
            watches_before.0 - 1 + fake.watches_opened("jobs"),
            watches_before.1 + fake.watches_opened("pods"),
            watches_before.2 + fake.watches_opened("events"),
        ),
    }
}

/// What one follower saw.
#[derive(Default)]
struct FollowerReport {
    bytes: u64,
    lines: u64,
    ended: bool,
    /// Write → read latencies of the paced lines (only sampled followers parse them).
    latencies: Vec<Duration>,
}

async fn follow_sse(http: reqwest::Client, url: String, token: String, sampled: bool, connected: Arc<tokio::sync::Barrier>) -> FollowerReport {
    use futures_util::StreamExt;
    let res = http.get(url).bearer_auth(token).header("accept", "text/event-stream").send().await.unwrap();
    assert!(res.status().is_success());
    connected.wait().await;
    let mut report = FollowerReport::default();
    let mut body = res.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let stamp = memchr::memmem::Finder::new(b"\"line\":\"t=");
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        report.bytes += chunk.len() as u64;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        // Whole lines only; the rest waits for the next chunk (most chunks end with a line).
        let buf: &[u8] = if pending.is_empty() { &chunk } else { pending.extend_from_slice(&chunk); &pending };
        let Some(last_nl) = memchr::memrchr(b'\n', buf) else {
            if pending.is_empty() {
                pending.extend_from_slice(&chunk);
            }
            continue;
        };
        let whole = &buf[..last_nl];
        if !sampled {
            // Counting is all an unsampled follower does (one SIMD pass per chunk), so that the
            // 1,000 clients, which share the 2 cores with the server, take as little of them as
            // they can; the sampled ones parse every line.
            report.lines += stamp.find_iter(whole).count() as u64;
            report.ended |= memchr::memmem::find(whole, b"event: end").is_some();
        } else {
            for line in whole.split(|b| *b == b'\n') {
                if line == b"event: end" {
                    report.ended = true;
                }
                if !line.starts_with(b"data: ") {
                    continue;
                }
                let Some(at) = stamp.find(line) else { continue };
                report.lines += 1;
                let rest = &line[at + 10..];
                let end = rest.iter().position(|b| *b == b' ').unwrap();
                let written: f64 = std::str::from_utf8(&rest[..end]).unwrap().parse().unwrap();
                report.latencies.push(Duration::from_secs_f64((now - written).max(0.0)));
            }
        }
        let rest = buf[last_nl + 1..].to_vec();
        pending = rest;
    }
    report
}

/// `followers`: 1,000 SSE followers of one build whose compile step writes 2,000 lines a second.
async fn followers() {
    const FOLLOWERS: usize = 1000;
    const RATE: u32 = 2000;
    const SECS: u32 = 10;
    const SAMPLE_EVERY: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let world = GoAppWorld::start(root).await;
    // The compile step: waits for the go-ahead, writes RATE timestamped lines a second (paced
    // against the clock, not by sleeps that drift), then runs the real Go build.
    let go_ahead = root.join("go-ahead");
    let script = root.join("paced-go");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.01; done\n\
             perl -MTime::HiRes=time,sleep -e '$|=1; my $t0=time; for my $i (1..{n}) {{ my $d=$t0+$i/{RATE}-time; sleep($d) if $d>0; printf \"t=%.6f i=%d\\n\", time, $i }}'\n\
             exec go \"$@\"\n",
            go = go_ahead.display(),
            n = RATE * SECS,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let serve = start_serve(
        root,
        &format!("[registry]\ninsecure = [\"{}\"]\n[toolchains]\ngo = \"{}\"\ngoproxy = \"off\"\n", world.reg, script.display()),
    )
    .await;
    let http = reqwest::Client::new();
    let token = setup_tenant(&http, &serve.url, world.app()).await;
    let id = trigger_hello(&http, &serve.url, &token, &world.sha).await;
    let logs_url = format!("{}/api/v1/builds/{id}/logs", serve.url);
    // Wait until the compile step waits for the go-ahead.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http.get(&logs_url).bearer_auth(&token).send().await.unwrap().text().await.unwrap().contains("── step compile") {
        assert!(Instant::now() < deadline, "the build never reached its compile step");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_before = serve.rss();

    // One client connection per follower, as browsers and `kiln logs -f` would have.
    let connected = Arc::new(tokio::sync::Barrier::new(FOLLOWERS + 1));
    let tasks: Vec<_> = (0..FOLLOWERS)
        .map(|i| {
            let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
            tokio::spawn(follow_sse(http, logs_url.clone(), token.clone(), i % SAMPLE_EVERY == 0, connected.clone()))
        })
        .collect();
    connected.wait().await;
    let rss_connected = serve.rss();
    let started = Instant::now();
    std::fs::write(&go_ahead, "").unwrap();
    let mut rss_peak = rss_connected;
    let mut done = futures_util::future::join_all(tasks);
    let reports: Vec<FollowerReport> = loop {
        tokio::select! {
            reports = &mut done => break reports.into_iter().map(|r| r.unwrap()).collect(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => rss_peak = rss_peak.max(serve.rss()),
        }
    };
    let wall = started.elapsed();
    let build: serde_json::Value = http.get(format!("{}/api/v1/builds/{id}", serve.url)).bearer_auth(&token).send().await.unwrap().json().await.unwrap();

    let expected = (RATE * SECS) as u64;
    let complete = reports.iter().filter(|r| r.ended && r.lines == expected).count();
    let bytes: Vec<u64> = reports.iter().map(|r| r.bytes).collect();
    let mut latencies: Vec<Duration> = reports.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    latencies.sort();
    println!("followers: {FOLLOWERS} SSE followers of one build writing {RATE} lines/s for {SECS} s (kiln serve as its own process)");
    println!(
        "  write -> read latency ({} samples from every {SAMPLE_EVERY}th follower): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 100 ms)",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "  server memory: {:.1} MiB before followers, {:.1} MiB with them connected, {:.1} MiB peak while streaming",
        rss_before as f64 / 1048576.0,
        rss_connected as f64 / 1048576.0,
        rss_peak as f64 / 1048576.0
    );
    println!(
        "  per follower: {:.1} KiB connected, {:.1} KiB at peak (target < 64 KiB)",
        rss_connected.saturating_sub(rss_before) as f64 / FOLLOWERS as f64 / 1024.0,
        rss_peak.saturating_sub(rss_before) as f64 / FOLLOWERS as f64 / 1024.0
    );
    println!(
        "  {complete} of {FOLLOWERS} followers got all {expected} lines and the end event; bytes per follower min {} max {}; build {} in {:.1} s",
        bytes.iter().min().unwrap(),
        bytes.iter().max().unwrap(),
        build["build"]["state"],
        wall.as_secs_f64()
    );
    assert_eq!(complete, FOLLOWERS, "some followers missed lines");
}

/// The Authorization header Harbor's webhooks carry in the rollout benches, and the registry the
/// bench cluster pulls from.
const AUTH: &str = "Basic YmVuY2g6aGFyYm9y";
const REGISTRY: &str = "harbor.bench.example";

/// What the rollout benches run against: a fake API server with `apps` Deployments `shop/web-{i}`
/// of `replicas` pods (each behind its Service when a `strategy` is given, which then goes on
/// every subscription), and a Kiln serving them with tenant `bench` and its apps `app-{i}`, each
/// subscribed to its Deployment with `glob:*`.
struct RolloutBench {
    dir: tempfile::TempDir,
    fake: fake_kube::FakeKube,
    ctx: Arc<Context>,
    url: String,
    http: reqwest::Client,
}

impl RolloutBench {
    async fn start(apps: usize, replicas: u32, strategy: Option<serde_json::Value>) -> RolloutBench {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_kube::FakeKube::start(fake_kube::FakeKubeOptions {
            root: Some(dir.path().join("fake")),
            kubelet: false,
            namespaces: vec!["default".into(), "shop".into()],
            ..fake_kube::FakeKubeOptions::default()
        });
        for i in 0..apps {
            let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("web-{i}")},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": format!("web-{i}")}},
                         "template": {"metadata": {"labels": {"app": format!("web-{i}")}},
                                      "spec": {"containers": [{"name": "app", "image": format!("{REGISTRY}/bench/app-{i}:old")}]}}}});
            fake.create("shop", "deployments", d).unwrap();
            if strategy.is_some() {
                let svc = json!({"metadata": {"name": format!("web-{i}")}, "spec": {"selector": {"app": format!("web-{i}")}, "ports": [{"port": 80}]}});
                fake.create("shop", "services", svc).unwrap();
            }
        }
        let mut c = Config::default();
        c.store.data_dir = dir.path().join("data");
        c.server.admin_token = Some(ADMIN.into());
        c.harbor.webhook_auth = Some(AUTH.into());
        c.clusters = vec![builder_api::config::ClusterConfig { name: "bench".into(), registry: REGISTRY.into(), ..Default::default() }];
        let ctx = builder_api::server::build_context(c).await.unwrap();
        ctx.clusters.set_client("bench", fake.client());
        let url = serve_in_process(&ctx).await;
        let http = reqwest::Client::new();
        let token = create_tenant(&http, &url).await;
        // The tenant deploys only where an admin granted it.
        let grant = json!({"deploy_namespaces": ["shop"]});
        let res = http.put(format!("{url}/api/v1/tenants/bench/settings")).bearer_auth(ADMIN).json(&grant).send().await.unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        for i in 0..apps {
            let app = json!({"name": format!("app-{i}"), "git_url": "http://127.0.0.1:9/bench/app.git", "image_repository": format!("{REGISTRY}/bench/app-{i}"),
                             "webhook_secret": "bench-secret"});
            assert!(http.post(format!("{url}/api/v1/apps")).bearer_auth(&token).json(&app).send().await.unwrap().status().is_success());
            let mut sub = json!({"cluster": "bench", "namespace": "shop", "deployment": format!("web-{i}"), "container": "app", "policy": "glob:*"});
            if let Some(strategy) = &strategy {
                sub["strategy"] = strategy.clone();
            }
            let res = http.post(format!("{url}/api/v1/apps/app-{i}/subscriptions")).bearer_auth(&token).json(&sub).send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        }
        RolloutBench { dir, fake, ctx, url, http }
    }
}

/// `rollout`: 500 Harbor webhooks (5 pushes to each of 100 repositories) for 100 Deployments, each
/// subscribed to one repository, on the fake API server: webhook arrival → Deployment patched.
async fn rollout() {
    use k8s_openapi::api::apps::v1::Deployment;

    const APPS: usize = 100;
    const PUSHES: usize = 5;
    let RolloutBench { dir: _dir, fake, ctx, url, http } = RolloutBench::start(APPS, 1, None).await;

    // The benchmark's own watch sees each image set (the digest says which push it was).
    let api: kube::Api<Deployment> = kube::Api::namespaced(fake.client(), "shop");
    let patched = first_seen(api, |d: Deployment| {
        let image = d.spec.and_then(|s| s.template.spec).and_then(|s| s.containers.into_iter().next()).and_then(|c| c.image)?;
        image.split_once('@').map(|(_, digest)| digest.to_string())
    })
    .await;

    let digest = |app: usize, push: usize| format!("sha256:{:064x}", app * 1000 + push + 1);
    // Five waves: each repository's pushes arrive in push order (as Harbor sends them), the
    // 100 repositories' pushes of a wave at once. A newer push supersedes an older one that has
    // not rolled out yet, so the last wave is what every Deployment must end on.
    let send = |a: usize, p: usize| {
        let (http, url) = (http.clone(), url.clone());
        let d = digest(a, p);
        async move {
            let body = json!({"type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "bench", "event_data": {
                "resources": [{"digest": d, "tag": format!("v1.0.{p}"), "resource_url": format!("{REGISTRY}/bench/app-{a}:v1.0.{p}")}],
                "repository": {"name": format!("app-{a}"), "namespace": "bench", "repo_full_name": format!("bench/app-{a}"), "repo_type": "private"}}});
            let sent = Instant::now();
            let res = http.post(format!("{url}/hooks/harbor")).header("authorization", AUTH).json(&body).send().await.unwrap();
            assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
            (d, sent)
        }
    };
    let started = Instant::now();
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(APPS * PUSHES);
    for p in 0..PUSHES {
        sent.extend(futures_util::future::join_all((0..APPS).map(|a| send(a, p))).await);
    }
    let intake = started.elapsed();
    // Done when every Deployment runs its last push (earlier pushes may be superseded unpatched).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = (0..APPS).filter(|a| patched.lock().unwrap().contains_key(&digest(*a, PUSHES - 1))).count();
        if done == APPS {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {APPS} Deployments reached their last image");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let patched = patched.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = sent.iter().filter_map(|(d, at)| patched.get(d).map(|p| p.saturating_duration_since(*at))).collect();
    latencies.sort();
    let states = ctx.store.rollouts_in_state("Superseded").await.unwrap().len();
    println!("rollout: {} Harbor webhooks ({PUSHES} pushes to each of {APPS} repositories), one subscribed Deployment each (fake API server)", APPS * PUSHES);
    println!(
        "  webhook -> Deployment patched: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over the {} pushes that were rolled out (target p99 < 500 ms)",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        latencies.len()
    );
    println!(
        "  {states} pushes superseded by a newer one before their turn; all {} webhooks answered in {:.0} ms; Deployment patches: {}",
        APPS * PUSHES,
        ms(intake),
        fake.count("patch", "deployments")
    );
}

/// `rollout`, blue-green or canary: 20 Deployments (4 replicas, each behind its Service),
/// subscribed with `strategy`; two waves of one push per Deployment, the second sent when the
/// first is released (the first blue-green release also moves the traffic from the subscribed
/// Deployment to its blue colour). Webhook → traffic on the new digest, p50/p99, and the writes
/// Kiln sent the API server per release, per wave.
async fn release_strategy(kind: &str, strategy: serde_json::Value) {
    use futures_util::StreamExt;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;

    const APPS: usize = 20;
    const WAVES: usize = 2;
    let RolloutBench { dir: _dir, fake, ctx, url, http } = RolloutBench::start(APPS, 4, Some(strategy)).await;

    // The benchmark's own watches. Blue-green: every change of a Service's colour, in order.
    // Canary: the first moment a canary Deployment has a Ready pod of a digest (its first
    // traffic), and the moment the stable one has every replica on it.
    let switches: Arc<std::sync::Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    {
        let record = switches.clone();
        let services: kube::Api<Service> = kube::Api::namespaced(fake.client(), "shop");
        let mut stream = kube::runtime::watcher::watcher(services, Default::default()).boxed();
        tokio::spawn(async move {
            let mut last: std::collections::HashMap<String, String> = Default::default();
            while let Some(Ok(event)) = stream.next().await {
                let kube::runtime::watcher::Event::Apply(svc) = event else { continue };
                let name = svc.metadata.name.clone().unwrap_or_default();
                let colour = svc.spec.and_then(|s| s.selector).and_then(|s| s.get("kiln.dev/colour").cloned()).unwrap_or_default();
                if last.insert(name.clone(), colour.clone()).as_ref() != Some(&colour) {
                    record.lock().unwrap().push((name, colour, Instant::now()));
                }
            }
        });
    }
    let digest_of = |d: &Deployment| {
        let image = d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone()?;
        image.split_once('@').map(|(_, digest)| digest.to_string())
    };
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(fake.client(), "shop");
    let canary_ready = first_seen(deployments.clone(), move |d: Deployment| {
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        (d.metadata.name.as_deref()?.ends_with("-canary") && ready > 0).then(|| digest_of(&d)).flatten()
    })
    .await;
    let stable_done = first_seen(deployments, move |d: Deployment| {
        let st = d.status.as_ref()?;
        let all = st.updated_replicas == Some(4) && st.available_replicas == Some(4) && st.replicas == Some(4);
        (d.metadata.name.as_deref()?.starts_with("web-") && !d.metadata.name.as_deref()?.ends_with("-canary") && all).then(|| digest_of(&d)).flatten()
    })
    .await;

    let digest = |app: usize, wave: usize| format!("sha256:{:064x}", 900_000 + app * 1000 + wave + 1);
    println!("rollout, {kind}: {APPS} Deployments of 4 replicas behind their Services, {WAVES} pushes each, one wave after the other (fake API server)");
    let mut traffic: Vec<Duration> = vec![];
    let mut whole: Vec<Duration> = vec![];
    for wave in 0..WAVES {
        fake.reset_counters();
        let switches_before: Vec<usize> = (0..APPS).map(|a| switches.lock().unwrap().iter().filter(|s| s.0 == format!("web-{a}")).count()).collect();
        let sends = (0..APPS).map(|a| {
            let (http, url, d) = (http.clone(), url.clone(), digest(a, wave));
            async move {
                let body = json!({"type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "bench", "event_data": {
                    "resources": [{"digest": d, "tag": format!("v1.0.{wave}"), "resource_url": format!("{REGISTRY}/bench/app-{a}:v1.0.{wave}")}],
                    "repository": {"name": format!("app-{a}"), "namespace": "bench", "repo_full_name": format!("bench/app-{a}"), "repo_type": "private"}}});
                let sent = Instant::now();
                let res = http.post(format!("{url}/hooks/harbor")).header("authorization", AUTH).json(&body).send().await.unwrap();
                assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
                (a, sent)
            }
        });
        let sent: Vec<(usize, Instant)> = futures_util::future::join_all(sends).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done = ctx.store.rollouts_in_state("Complete").await.unwrap().len();
            let failed = ["Failed", "Aborted", "RolledBack"];
            for state in failed {
                let bad = ctx.store.rollouts_in_state(state).await.unwrap();
                assert!(bad.is_empty(), "{kind}: a release ended {state}: {:?}", bad[0].reason);
            }
            if done == APPS * (wave + 1) {
                break;
            }
            assert!(Instant::now() < deadline, "{kind}: only {done} releases done of {}", APPS * (wave + 1));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut wave_traffic = vec![];
        for (a, at) in &sent {
            let on = if kind == "blue-green" {
                // The last switch of this wave moved the traffic to the new digest.
                let mine: Vec<Instant> = switches.lock().unwrap().iter().filter(|s| s.0 == format!("web-{a}")).map(|s| s.2).collect();
                assert!(mine.len() > switches_before[*a], "{kind}: web-{a} never switched");
                *mine.last().unwrap()
            } else {
                *canary_ready.lock().unwrap().get(&digest(*a, wave)).expect("a canary pod Ready")
            };
            wave_traffic.push(on.saturating_duration_since(*at));
            if let Some(done) = stable_done.lock().unwrap().get(&digest(*a, wave)) {
                whole.push(done.saturating_duration_since(*at));
            }
        }
        traffic.extend(wave_traffic);
        let requests = fake.requests();
        let writes = |resource: &str| requests.iter().filter(|r| r.is_write() && r.resource == resource).count() as f64 / APPS as f64;
        let reads = requests.iter().filter(|r| !r.is_write()).count() as f64 / APPS as f64;
        println!(
            "  wave {}: Kubernetes writes per release {:.1} (Deployments {:.1}, Services {:.1}, VirtualServices {:.1}); reads and watches {:.1}",
            wave + 1,
            fake.writes() as f64 / APPS as f64,
            writes("deployments"),
            writes("services"),
            writes("virtualservices"),
            reads
        );
    }
    traffic.sort();
    whole.sort();
    let what = if kind == "blue-green" { "the Service switched to the colour running it" } else { "a canary pod of it Ready behind the Service" };
    println!(
        "  webhook -> traffic on the new digest ({what}): p50 {:.0} ms, p99 {:.0} ms over {} releases",
        ms(percentile(&traffic, 0.5)),
        ms(percentile(&traffic, 0.99)),
        traffic.len()
    );
    if kind == "canary" {
        println!(
            "  webhook -> stable Deployment rolled out on the new digest (the release's end): p50 {:.0} ms, p99 {:.0} ms",
            ms(percentile(&whole, 0.5)),
            ms(percentile(&whole, 0.99))
        );
    }
}

async fn sync() {
    use futures_util::StreamExt;
    use oci_images::{random_bytes, ImagePusher};
    use registry_sync::{copy_image, CopyOptions, ImageRef, RegistryOptions};
    use test_registry::TestRegistry;

    const IMAGES: usize = 20;
    let source = TestRegistry::start().await;
    let kiln_targets = [TestRegistry::start().await, TestRegistry::start().await];
    let skopeo_targets = [TestRegistry::start().await, TestRegistry::start().await];

    // Two base stacks (90 MB shared by all, 30 MB by half), and 9 MB of each image's own.
    let base: Vec<Vec<u8>> = [40 << 20, 30 << 20, 20 << 20].iter().map(|&n| random_bytes(n)).collect();
    let runtime_a = random_bytes(30 << 20);
    let runtime_b = random_bytes(1 << 20);
    let pusher = ImagePusher::new(&source.host());
    let mut unique: std::collections::BTreeMap<String, u64> = Default::default();
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let own = random_bytes(9 << 20);
        let runtime = if i % 2 == 0 { &runtime_a } else { &runtime_b };
        let layers: Vec<&[u8]> = vec![&base[0], &base[1], &base[2], runtime, &own];
        let repo = format!("bench/app-{i:02}");
        let image = pusher.push_image(&repo, Some("v1"), &layers, "linux", "amd64").await;
        unique.extend(image.blobs.iter().cloned());
        images.push((repo, image));
    }
    let unique_bytes: u64 = unique.values().sum();
    println!(
        "sync: {IMAGES} images, {} unique blobs, {:.1} MiB unique, one source to two targets",
        unique.len(),
        unique_bytes as f64 / (1 << 20) as f64
    );

    // The floor: every unique blob read once from the source (4 at a time, as Kiln streams).
    let http = reqwest::Client::new();
    let blob_urls: Vec<String> = unique
        .keys()
        .map(|d| {
            let repo = &images.iter().find(|(_, img)| img.blobs.iter().any(|(b, _)| b == d)).unwrap().0;
            format!("http://{}/v2/{repo}/blobs/{d}", source.host())
        })
        .collect();
    let t = Instant::now();
    let read: u64 = futures_util::stream::iter(blob_urls)
        .map(|url| {
            let http = http.clone();
            async move {
                let mut stream = http.get(url).send().await.unwrap().bytes_stream();
                let mut n = 0u64;
                while let Some(chunk) = stream.next().await {
                    n += chunk.unwrap().len() as u64;
                }
                n
            }
        })
        .buffer_unordered(4)
        .fold(0, |a, n| async move { a + n })
        .await;
    let floor = t.elapsed();
    assert_eq!(read, unique_bytes);

    // Kiln: the 20 copies at once (as when the builds of one push finish together), sharing one
    // `CopyOptions`: four blob streams at a time across all of them, each to both targets, and a
    // blob that another copy is sending is waited for and mounted rather than sent again.
    let mut registry = RegistryOptions::default();
    registry.insecure_registries = std::iter::once(&source).chain(&kiln_targets).map(|r| r.host()).collect();
    let transfers = std::env::var("KILN_BENCH_TRANSFERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let options = CopyOptions { registry, transfers: registry_sync::TransferSlots::new(transfers), ..CopyOptions::default() };
    let run_kiln = || async {
        let reports = futures_util::future::join_all(images.iter().map(|(repo, _)| {
            let src = ImageRef::parse(&format!("{}/{repo}:v1", source.host())).unwrap();
            let dsts: Vec<ImageRef> =
                kiln_targets.iter().map(|t| ImageRef::parse(&format!("{}/{repo}", t.host())).unwrap()).collect();
            let options = &options;
            async move { copy_image(&src, &dsts, &["v1".into()], options, &|_| {}).await.unwrap() }
        }))
        .await;
        let mut sent = 0u64;
        let mut mounted = 0usize;
        for (report, (_, image)) in reports.iter().zip(&images) {
            assert!(report.all_verified(), "{report:?}");
            assert_eq!(report.digest, image.digest);
            sent += report.targets.iter().map(|t| t.bytes_sent).sum::<u64>();
            mounted += report.targets.iter().map(|t| t.blobs_mounted).sum::<usize>();
        }
        (sent, mounted)
    };
    let cpu_before: Vec<Duration> = kiln_targets.iter().map(TestRegistry::cpu_time).collect();
    let t = Instant::now();
    let (sent, mounted) = run_kiln().await;
    let kiln = t.elapsed();
    let target_cpu: Vec<Duration> =
        kiln_targets.iter().zip(&cpu_before).map(|(r, before)| r.cpu_time().saturating_sub(*before)).collect();
    assert_eq!(sent, 2 * unique_bytes, "each target gets each unique blob once");

    // skopeo: the same images, one `skopeo copy` per image and target, to two fresh registries.
    let t = Instant::now();
    for (repo, image) in &images {
        for target in &skopeo_targets {
            run(Command::new("skopeo")
                .args(["copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("docker://{}/{repo}:v1", source.host()))
                .arg(format!("docker://{}/{repo}:v1", target.host())));
            let got = ImagePusher::new(&target.host()).manifest_digest(repo, "v1").await;
            assert_eq!(got.as_deref(), Some(image.digest.as_str()));
        }
    }
    let skopeo_loop = t.elapsed();

    // skopeo sync: all 20 images listed in one YAML source, one `skopeo sync` per target (each
    // lands them as TARGET/bench/app-NN), to two more fresh registries.
    let sync_targets = [TestRegistry::start().await, TestRegistry::start().await];
    let listing = tempfile::tempdir().unwrap();
    let yaml = listing.path().join("images.yaml");
    let mut listed = format!("{}:\n  tls-verify: false\n  images:\n", source.host());
    for (repo, _) in &images {
        listed.push_str(&format!("    {repo}:\n      - v1\n"));
    }
    std::fs::write(&yaml, listed).unwrap();
    let t = Instant::now();
    for target in &sync_targets {
        run(Command::new("skopeo")
            .args(["sync", "--all", "--preserve-digests", "--src", "yaml", "--dest", "docker", "--dest-tls-verify=false"])
            .arg(&yaml)
            .arg(format!("{}/bench", target.host())));
    }
    let skopeo_sync = t.elapsed();
    for target in &sync_targets {
        for (repo, image) in &images {
            let got = ImagePusher::new(&target.host()).manifest_digest(repo, "v1").await;
            assert_eq!(got.as_deref(), Some(image.digest.as_str()), "skopeo sync: {repo}");
        }
    }
    // Kiln is compared with the faster of the two ways to use skopeo.
    let skopeo = skopeo_loop.min(skopeo_sync);

    let t = Instant::now();
    let (resent, _) = run_kiln().await;
    let rerun = t.elapsed();
    assert_eq!(resent, 0);

    println!("  floor (read each unique blob once): {:>8.0} ms", ms(floor));
    println!(
        "  kiln copy:                          {:>8.0} ms  ({:.1} MiB sent in all, {mounted} blobs mounted)",
        ms(kiln),
        sent as f64 / (1 << 20) as f64
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  the two target registries' own CPU during kiln's copy: {:.0} + {:.0} ms (on {cores} cores: at least {:.0} ms of wall time); {} blob streams at a time, peak {}",
        ms(target_cpu[0]),
        ms(target_cpu[1]),
        ms(target_cpu.iter().sum::<Duration>()) / cores as f64,
        options.transfers.size(),
        options.transfers.peak()
    );
    println!("  skopeo copy --all loop:             {:>8.0} ms", ms(skopeo_loop));
    println!("  skopeo sync (one per target):       {:>8.0} ms", ms(skopeo_sync));
    println!(
        "  kiln/skopeo (the faster) = {:.2} (target <= 0.33), kiln/floor = {:.2} (target <= 1.5)",
        kiln.as_secs_f64() / skopeo.as_secs_f64(),
        kiln.as_secs_f64() / floor.as_secs_f64()
    );
    println!("  kiln re-run, everything present:   {:>8.0} ms (target < 1000 ms)", ms(rerun));
}

/// `sync-cli`: what a person running `kiln sync` by hand sees. 8 images sharing a 70 MiB base
/// (the case issue 21 measured), each with 4 MiB of its own, copied one after another, each by
/// its own process, from one registry to another: `kiln sync` (the release binary) versus
/// `skopeo copy`, each to a fresh registry. Both remember where they put blobs (kiln's cache file,
/// skopeo's blob-info cache), so both should send the base once and mount it 7 times.
async fn sync_cli() {
    use oci_images::{random_bytes, ImagePusher};
    use test_registry::TestRegistry;

    const IMAGES: usize = 8;
    let source = TestRegistry::start().await;
    let kiln_target = TestRegistry::start().await;
    let skopeo_target = TestRegistry::start().await;
    let base = random_bytes(70 << 20);
    let pusher = ImagePusher::new(&source.host());
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let repo = format!("bench/cli-{i}");
        let image = pusher.push_image(&repo, Some("v1"), &[&base, &random_bytes(4 << 20)], "linux", "amd64").await;
        images.push((repo, image));
    }
    println!("sync-cli: {IMAGES} images of a 70 MiB base + 4 MiB each, copied one after another by a process each");

    // kiln's cache starts empty. skopeo's is the machine's (as root,
    // /var/lib/containers/cache/blob-info-cache-v1.boltdb), whose entries of earlier runs name
    // other registries (new ones, on new ports): both know only what this run taught them.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("blob-locations.json");
    let kiln = kiln_binary();
    let mut kiln_times = Vec::new();
    let mut mounted = 0usize;
    for (repo, image) in &images {
        let t = Instant::now();
        let out = Command::new(&kiln)
            .args(["sync", "--insecure", &source.host(), "--insecure", &kiln_target.host(), "--blob-cache"])
            .arg(&cache)
            .arg(format!("{}/{repo}:v1", source.host()))
            .arg(format!("{}/{repo}", kiln_target.host()))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        kiln_times.push(t.elapsed());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        mounted += stdout
            .split("mounted ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no mount count in {stdout}"));
        let got = ImagePusher::new(&kiln_target.host()).manifest_digest(repo, "v1").await;
        assert_eq!(got.as_deref(), Some(image.digest.as_str()));
    }
    // The figures mean nothing if the base crossed every time (an old binary, a broken cache).
    assert_eq!(mounted, IMAGES - 1, "kiln sync mounted the base {mounted} times, expected {}", IMAGES - 1);

    let mut skopeo_times = Vec::new();
    for (repo, image) in &images {
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(format!("docker://{}/{repo}:v1", source.host()))
            .arg(format!("docker://{}/{repo}:v1", skopeo_target.host())));
        skopeo_times.push(t.elapsed());
        let got = ImagePusher::new(&skopeo_target.host()).manifest_digest(repo, "v1").await;
        assert_eq!(got.as_deref(), Some(image.digest.as_str()));
    }

    let total = |times: &[Duration]| times.iter().sum::<Duration>();
    let (kiln_total, skopeo_total) = (total(&kiln_times), total(&skopeo_times));
    for (name, times) in [("kiln sync", &kiln_times), ("skopeo copy", &skopeo_times)] {
        println!(
            "  {name:<12} {:>8.0} ms in all: first image {:>6.0} ms, the other {} {:>6.0} ms ({:.0} ms each)",
            ms(total(times)),
            ms(times[0]),
            IMAGES - 1,
            ms(total(&times[1..])),
            ms(total(&times[1..])) / (IMAGES - 1) as f64
        );
    }
    println!("  kiln sync mounted the base {mounted} times");
    println!("  kiln/skopeo = {:.2} (target <= 0.5)", kiln_total.as_secs_f64() / skopeo_total.as_secs_f64());
}

/// `apm`: the image step alone (Maven has compiled already; both sides start from the same
/// `target/`). Kiln: `kiln step assemble --maven-target` with `KILN_APM_*` — dependencies,
/// resources and classes as layers, pushed, then the agent injected and pushed. buildah: the
/// equivalent Dockerfile (base, dependencies, agent, classes — the cache-friendliest order) with
/// its layer cache on, then `buildah push`. Cold: empty agent cache / empty buildah storage and
/// new repositories. Code change: one string in Main.java, recompiled (not timed), built again.
async fn apm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let world = GoAppWorld::start(root).await; // its registry; the git server is unused
    let reg = world.reg.clone();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/apps");

    // A JRE-sized base: the JDK's module image (what a JRE base layer mostly is) and JAVA_HOME.
    let jre = root.join("jre");
    std::fs::create_dir_all(jre.join("lib")).unwrap();
    std::fs::copy("/usr/lib/jvm/default-java/lib/modules", jre.join("lib/modules")).unwrap();
    let base = format!("{reg}/library/jre:17");
    run(Command::new(kiln_binary())
        .args(["step", "assemble", "--base", "scratch", "--image", &base, "--env", "JAVA_HOME=/opt/java"])
        .arg("--add")
        .arg(format!("{}:/opt/java", jre.display()))
        .arg("--result-file")
        .arg(root.join("base.json"))
        .env("KILN_INSECURE_REGISTRIES", &reg));

    // The agent, and the app with its dependency jar.
    let javac_jar = |name: &str, src: &str, file: &str, manifest: Option<&str>, out: &Path| {
        let d = root.join(format!("javac-{name}"));
        let f = d.join("src").join(file);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, src).unwrap();
        run(Command::new("javac").arg("-d").arg(d.join("classes")).arg(&f));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut jar = Command::new("jar");
        match manifest {
            Some(m) => {
                std::fs::write(d.join("mf"), m).unwrap();
                jar.arg("cfm").arg(out).arg(d.join("mf"))
            }
            None => jar.arg("cf").arg(out),
        };
        run(jar.arg("-C").arg(d.join("classes")).arg("."));
    };
    let agent_dir = root.join("agent");
    javac_jar(
        "agent",
        "package b; public class Agent { public static void premain(String a) { System.out.println(\"agent\"); } }",
        "b/Agent.java",
        Some("Premain-Class: b.Agent\n"),
        &agent_dir.join("tracer.jar"),
    );
    let app = root.join("app");
    run(Command::new("cp").arg("-r").arg(fixtures.join("maven-layered")).arg(&app));
    javac_jar(
        "greeting",
        "package dev.kiln.greeting; public class Greeting { public static String word() { return \"greetings\"; } }",
        "dev/kiln/greeting/Greeting.java",
        None,
        &app.join("lib/greeting-1.0.jar"),
    );
    let main_java = app.join("src/main/java/dev/kiln/layered/Main.java");
    let original_main = std::fs::read_to_string(&main_java).unwrap();
    let compile = |edit: usize| {
        std::fs::write(&main_java, original_main.replace("hello from", &format!("hello ({edit}) from"))).unwrap();
        run(Command::new("mvn")
            .current_dir(&app)
            .args(["-B", "-q", "-o", "-Dmaven.repo.local=/usr/share/maven-repo", "package", "-DskipTests"])
            .arg("-Dproject.build.outputTimestamp=1700000000"));
    };
    let java_options = "-javaagent:/opt/apm/tracer.jar -Dapm.service.name=bench -Dapm.tenant=bench";

    let apm_cache = root.join("apm-cache");
    let kiln_image = |tag: &str| {
        let t = Instant::now();
        run(Command::new(kiln_binary())
            .args(["step", "assemble", "--base", &base, "--image", &format!("{reg}/bench/kiln-apm:{tag}"), "--created", "1700000000"])
            .arg("--maven-target")
            .arg(app.join("target"))
            .arg("--result-file")
            .arg(root.join("result.json"))
            .env("KILN_INSECURE_REGISTRIES", &reg)
            .env("KILN_APM_AGENT", "tracer")
            .env("KILN_APM_VERSION", "1.0")
            .env("KILN_APM_SOURCE", json!({"dir": agent_dir}).to_string())
            .env("KILN_APM_JAVA_OPTIONS", java_options)
            .env("KILN_APM_CACHE", &apm_cache));
        t.elapsed()
    };
    // The equivalent Dockerfile, in the app directory (target/ and the agent copied beside it).
    run(Command::new("cp").arg("-r").arg(&agent_dir).arg(app.join("apm-agent")));
    std::fs::write(
        app.join("Dockerfile.bench"),
        format!(
            "FROM {base}\nCOPY target/dependency/ /app/libs/\nCOPY apm-agent/ /opt/apm/\nCOPY target/classes/ /app/classes/\n\
             ENV JAVA_TOOL_OPTIONS=\"{java_options}\"\n\
             ENTRYPOINT [\"java\", \"-cp\", \"/app/classes:/app/libs/*\", \"dev.kiln.layered.Main\"]\n"
        ),
    )
    .unwrap();
    let storage = root.join("buildah");
    let buildah = |args: &[&str]| {
        let mut c = Command::new("buildah");
        c.arg("--root").arg(storage.join("root")).arg("--runroot").arg(storage.join("run")).args(["--storage-driver", "vfs"]).args(args);
        c
    };
    let buildah_image = |tag: &str| {
        let t = Instant::now();
        let app_s = app.display().to_string();
        let file = app.join("Dockerfile.bench").display().to_string();
        run(&mut buildah(&["bud", "-q", "--isolation=chroot", "--layers", "--tls-verify=false", "-f", &file, "-t", "localhost/bench-apm", &app_s]));
        run(&mut buildah(&["push", "-q", "--tls-verify=false", "localhost/bench-apm", &format!("docker://{reg}/bench/buildah-apm:{tag}")]));
        t.elapsed()
    };

    compile(0);
    let kiln_cold = kiln_image("cold");
    let buildah_cold = buildah_image("cold");
    const RUNS: usize = 3;
    let (mut kiln_change, mut buildah_change) = (vec![], vec![]);
    for edit in 1..=RUNS {
        compile(edit);
        kiln_change.push(kiln_image(&format!("change{edit}")));
        buildah_change.push(buildah_image(&format!("change{edit}")));
    }
    drop(world);
    kiln_change.sort();
    buildah_change.sort();
    let (k, b) = (kiln_change[RUNS / 2], buildah_change[RUNS / 2]);
    let all = |v: &[Duration]| v.iter().map(|d| ms(*d).round()).collect::<Vec<_>>();
    println!("apm: image of the layered Maven sample with an APM agent, pushed (base: {} MiB JRE module image)", std::fs::metadata(jre.join("lib/modules")).unwrap().len() >> 20);
    println!("  cold:        kiln {:.0} ms, buildah bud + push {:.0} ms, ratio kiln/buildah {:.3}", ms(kiln_cold), ms(buildah_cold), kiln_cold.as_secs_f64() / buildah_cold.as_secs_f64());
    println!(
        "  code change: kiln {:.0} ms {:?}, buildah bud + push {:.0} ms {:?} (median of {RUNS}), ratio kiln/buildah {:.3} (target ≤ 0.20)",
        ms(k),
        all(&kiln_change),
        ms(b),
        all(&buildah_change),
        k.as_secs_f64() / b.as_secs_f64()
    );
}
