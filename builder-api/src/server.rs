//! `kiln serve`: open the store, recover interrupted builds, start the scheduler, serve HTTP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::context::{AppState, Context};
use crate::executor::kube::render::Templates;
use crate::executor::kube::{KubeExecutor, KubeSettings};
use crate::executor::local::LocalExecutor;
use crate::logs::LogHub;
use crate::rollout::clusters::Clusters;
use crate::rollout::Rollouts;
use crate::scheduler::{self, Scheduler};
use crate::store::{new_token, Role, Store};

/// Builds the context: store opened and migrated, executor chosen, admin token ensured.
pub async fn build_context(config: Config) -> anyhow::Result<Arc<Context>> {
    build_context_with(config, None).await
}

/// The same, with the Kubernetes client given (tests hand in one for the fake API server);
/// otherwise the kube executor infers it (`KUBECONFIG`, `~/.kube/config`, or in-cluster).
pub async fn build_context_with(config: Config, kube_client: Option<kube::Client>) -> anyhow::Result<Arc<Context>> {
    let key = config.store.secret_key()?;
    let store = Store::connect(config.store.url.as_deref(), &config.store.data_dir, key)
        .await
        .with_context(|| format!("cannot open the store at {}", config.store.location()))?;
    if config.server.admin_token.is_none() && !store.has_admin_token().await? {
        let token = new_token();
        store.add_token(None, "generated admin", Role::Admin, None, &token).await?;
        // Printed once: only its hash is kept.
        eprintln!("kiln: generated admin token (shown once, keep it): {token}");
    }
    let kiln_binary = match &config.executor.kiln_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find the kiln binary")?,
    };
    let data_dir = std::path::absolute(&config.store.data_dir).unwrap_or_else(|_| config.store.data_dir.clone());
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut kube = None;
    let executor: Arc<dyn crate::executor::Executor> = if config.executor.kind == "kube" {
        let templates = match &config.kube.templates_dir {
            Some(dir) => Templates::load(dir)?,
            None => Templates::builtin(),
        };
        let client = match kube_client {
            Some(c) => c,
            None => kube::Client::try_default().await.context("cannot reach the Kubernetes API (executor = kube)")?,
        };
        let client = crate::metrics::metered_kube_client(client, metrics.clone());
        let instance = store.instance_id(config.kube.instance.as_deref()).await?;
        let settings = KubeSettings {
            kube: config.kube.clone(),
            data_dir: data_dir.clone(),
            apm: config.apm.clone(),
            instance,
        };
        kube = Some(client.clone());
        Arc::new(KubeExecutor::new(client, templates, settings, config.toolchains.clone(), config.registry.clone()))
    } else {
        Arc::new(local_executor(&config, kiln_binary, data_dir))
    };
    Ok(Arc::new(Context {
        clusters: Clusters::new(config.clusters.clone(), metrics.clone()),
        replication: crate::replication::SharedCopies::load(&store).await?,
        hook_limits: crate::ratelimit::RateLimiter::new(config.hooks.rate_per_app_per_minute, config.hooks.burst),
        gitlab_statuses: crate::gitlab_status::GitlabStatuses::new(store.clone(), config.server.public_base(), metrics.clone()),
        notifications: crate::notify::Notifier::new(store.clone(), config.server.public_base(), metrics.clone()),
        config,
        store,
        hub: Arc::new(LogHub::default()),
        scheduler: Scheduler::default(),
        executor,
        kube,
        rollouts: Rollouts::default(),
        metrics,
    }))
}

fn local_executor(config: &Config, kiln_binary: PathBuf, data_dir: PathBuf) -> LocalExecutor {
    LocalExecutor {
        kiln_binary,
        data_dir,
        keep_workspaces: config.executor.keep_workspaces,
        toolchains: config.toolchains.clone(),
        registry: config.registry.clone(),
        dockerfile_builder: match config.toolchains.dockerfile_builder.as_deref() {
            Some("buildkit") => crate::plan::DockerfileBuilder::Buildkit,
            _ => crate::plan::DockerfileBuilder::Buildah,
        },
        apm: config.apm.clone(),
        step_nice: config.executor.step_nice,
    }
}

/// Recovers what a previous process (or a stopped replica) left running and starts the
/// background loops: the scheduler, the claims, listening to the other replicas, and — on the
/// replica that leads — the cluster-wide loops.
pub async fn start_background(ctx: &Arc<Context>) -> anyhow::Result<()> {
    ctx.executor.reconcile(&ctx.store).await.context("reconciling the executor's leftovers")?;
    // Taken before looking for orphans, so no other replica takes this one's builds for a
    // stopped replica's.
    ctx.store.hold_liveness(&ctx.scheduler.replica.0).await.context("taking this replica's liveness lock")?;
    let n = scheduler::adopt_orphans(ctx, true).await?;
    if n > 0 {
        tracing::warn!("{n} build(s) were interrupted by the last stop and are marked Failed");
    }
    tokio::spawn(scheduler::run(ctx.clone()));
    tokio::spawn(scheduler::keep_claims(ctx.clone()));
    tokio::spawn(crate::peers::listen(ctx.clone()));
    let leading = crate::leadership::leadership(ctx).await?;
    tokio::spawn(crate::rollout::run(ctx.clone(), leading));
    Ok(())
}

/// The pending connections a listener keeps before it accepts them; the kernel caps it at
/// `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket with a backlog of [`LISTEN_BACKLOG`] instead of the 128 that std's and
/// tokio's `bind` ask for. Webhooks come in bursts (a group-wide push, a redelivery of a
/// backlog): when more connections arrive than the accept queue holds, the kernel drops their
/// SYNs and the senders only try again after a second — a second added to every dropped
/// delivery.
pub fn listen_on(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let listen = config.server.listen;
    let ctx = build_context(config).await?;
    // Before any build is adopted: a replica that cannot listen stops without having taken
    // another's builds over. Connections wait in the backlog until the router serves them.
    let listener = listen_on(listen).with_context(|| format!("cannot listen on {listen}"))?;
    start_background(&ctx).await?;
    eprintln!("kiln: listening on http://{}", listener.local_addr()?);
    let app = crate::router::router(AppState(ctx.clone()));
    // With the peer's address in each request: the audit log records where a change came from.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Small answers and log events go out at once, not held back by Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| drop(tcp.set_nodelay(true)));
    let stopping = ctx.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            drain(&stopping).await;
        })
        .await?;
    // Every answer is out. The builds this replica follows go to the others.
    let handed = scheduler::hand_back(&ctx).await?;
    crate::leadership::give_up(&ctx).await;
    eprintln!("kiln: stopped; {handed} running build(s) handed to the other replicas");
    Ok(())
}

/// SIGTERM: no more builds start here and `/readyz` answers 503, while everything else is still
/// served for `server.drain_secs` (the Service stops routing here a probe period later); then log
/// streams are cut (their clients resume on another replica with `Last-Event-ID`) and the
/// listener closes once the answers in flight are out.
async fn drain(ctx: &Context) {
    ctx.scheduler.stop_starting();
    let secs = ctx.config.server.drain_secs;
    eprintln!("kiln: stopping: /readyz answers 503; serving {secs} s more, then closing");
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    ctx.hub.cut_followers();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
