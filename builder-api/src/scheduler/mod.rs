//! The scheduler: takes Queued builds while fewer than `max_concurrent_builds` run — round robin
//! across the tenants with waiting builds, oldest first within a tenant, so a tenant with fifty
//! waiting builds does not starve one with a single build, and never more of one tenant's builds
//! than its cap — runs each through the executor with its log captured, and records how it ended.
//! Woken by new builds and finished ones; a periodic tick covers anything missed. The queue is the
//! store's Queued builds, so it survives a restart; `queue.rs` is its in-memory index.
//!
//! With several replicas on PostgreSQL each replica runs this loop: a build starts on the one
//! whose transaction claims it first (`store/claims.rs`, which also holds the tenants' caps
//! across replicas), `keep_claims` renews this replica's claims and adopts the builds of replicas
//! that are gone (`adopt_orphans`), and `hand_back` gives them away when this one stops.

mod queue;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::queue::FairQueue;
pub use self::state::{CancelResult, Scheduler};
use crate::context::Context;
use crate::executor::{BuildJob, Outcome};
use crate::gitlab_status::Status;
use crate::logs::capture::{LogCapture, Masker};
use crate::store::{Build, BuildState, Claim, Started, StoreError};

/// How a build comes to run here.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    /// Taken from the queue.
    Fresh,
    /// Adopted Running, with the line its log gets about why (Kiln restarted; another replica
    /// stopped).
    Adopted(String),
}

/// The claim this replica puts on builds it starts or adopts now.
fn claim_until(ctx: &Context) -> i64 {
    crate::store::now_ms() + (ctx.config.executor.claim_lease_secs * 1000) as i64
}

/// Running builds nobody runs: at start on SQLite every Running build (the previous process's);
/// on PostgreSQL those whose replica is gone (its claim ran out, or its database session ended).
/// An executor whose work outlives Kiln (kube: the Job keeps running) follows them here; otherwise
/// (local: the processes died with their replica, or are orphans whose output nobody reads)
/// they are marked Failed ("interrupted"). Returns how many were marked Failed.
pub async fn adopt_orphans(ctx: &Arc<Context>, at_start: bool) -> Result<usize, StoreError> {
    if ctx.scheduler.is_stopping() {
        return Ok(0);
    }
    let single = ctx.store.backend() == crate::store::Backend::Sqlite;
    let expired_before = if at_start && single { i64::MAX } else { crate::store::now_ms() };
    let me = ctx.scheduler.replica.clone();
    let orphans = ctx.store.adopt_expired_claims(Claim { replica: &me.0, until: claim_until(ctx) }, expired_before).await?;
    // A build this replica still runs is not an orphan (its claim ran out while the replica
    // stalled: the renewal is due at once).
    let orphans: Vec<(Build, Option<String>)> = orphans.into_iter().filter(|(b, _)| !ctx.scheduler.runs(b.id)).collect();
    if orphans.is_empty() {
        return Ok(0);
    }
    let why = |previous: &Option<String>| match (single, previous) {
        (true, _) | (false, None) => "kiln restarted".to_string(),
        (false, Some(previous)) => format!("replica {me} took the build over from replica {previous}, which stopped"),
    };
    if ctx.executor.adopts_running() {
        for (build, previous) in orphans {
            tracing::info!(build = build.id, "{}", why(&previous));
            let token = ctx.scheduler.register(&build);
            spawn_execute(ctx.clone(), build, token, Start::Adopted(format!("[kiln] {}", why(&previous))));
        }
        return Ok(0);
    }
    let failed = orphans.len();
    for (build, previous) in &orphans {
        let reason = match (single, previous) {
            (true, _) | (false, None) => "interrupted: kiln stopped while the build was running".to_string(),
            (false, Some(previous)) => format!("interrupted: replica {previous} stopped while the build was running"),
        };
        let masker = Arc::new(Masker::new(vec![]));
        let capture = LogCapture::start(ctx.store.clone(), ctx.hub.clone(), build.id, masker, u64::MAX).await?;
        capture.sink().system("kiln", format!("[kiln] build {} {reason}", build.id)).await;
        capture.close().await?;
        ctx.store.fail_open_steps(build.id).await?;
        if ctx.store.finish_build(build.id, BuildState::Failed, Some(&reason)).await? {
            observe_build_end(ctx, build.id).await;
            if let Some(app) = ctx.store.app(build.app_id).await? {
                ctx.gitlab_statuses.post(&app, build.into(), Status::Failed, &reason);
            }
            ctx.notifications.build_ended(build.id);
        }
        ctx.hub.ended(build.id);
        tracing::warn!(build = build.id, "{reason}");
    }
    Ok(failed)
}

/// Keeps this replica's claims and adopts the builds of replicas that are gone: renews every
/// third of the lease; on PostgreSQL looks for orphans every second (a replica whose database
/// session ended is gone at once, without waiting for its lease). A build whose claim another
/// replica took (this one stalled past its lease) is no longer followed here.
pub async fn keep_claims(ctx: Arc<Context>) {
    let lease = Duration::from_secs(ctx.config.executor.claim_lease_secs);
    let mut next_renewal = tokio::time::Instant::now();
    let multi = ctx.store.backend() == crate::store::Backend::Postgres;
    loop {
        if ctx.scheduler.is_stopping() {
            return;
        }
        if tokio::time::Instant::now() >= next_renewal {
            next_renewal = tokio::time::Instant::now() + lease / 3;
            if let Err(e) = renew_claims(&ctx).await {
                tracing::error!("renewing this replica's build claims: {e}");
            }
        }
        if multi {
            if let Err(e) = adopt_orphans(&ctx, false).await {
                tracing::error!("adopting the builds of stopped replicas: {e}");
            }
        }
        tokio::time::sleep(ORPHAN_LOOK.min(lease / 3)).await;
    }
}

/// How often a replica looks for builds whose replica is gone.
const ORPHAN_LOOK: Duration = Duration::from_secs(1);

async fn renew_claims(ctx: &Context) -> Result<(), StoreError> {
    let me = &ctx.scheduler.replica;
    let held: std::collections::HashSet<i64> = ctx.store.renew_claims(&me.0, claim_until(ctx)).await?.into_iter().collect();
    for id in ctx.scheduler.running_ids() {
        if held.contains(&id) {
            continue;
        }
        // Not Running under this replica's claim: starting (not yet marked), ending (final), or
        // taken over by another replica while this one did not renew.
        match ctx.store.claim_of(id).await? {
            Some((by, _)) if by != me.0 && ctx.store.build(id).await?.is_some_and(|b| b.state == BuildState::Running) => {
                tracing::warn!(build = id, "replica {by} took this build over (this replica did not renew its claim in time): no longer following it here");
                ctx.scheduler.detach(id);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The replica stops (SIGTERM): it starts no more builds, stops following the ones it runs
/// (their Jobs run on), waits until their last lines are stored, and hands their claims back so
/// another replica adopts them at once. Returns how many claims it handed back.
pub async fn hand_back(ctx: &Context) -> Result<u64, StoreError> {
    ctx.scheduler.stop_starting();
    for id in ctx.scheduler.running_ids() {
        ctx.scheduler.detach(id);
    }
    if !ctx.hub.writers_done(Duration::from_secs(5)).await {
        tracing::warn!("some build logs were still being written after 5 s; handing their builds over anyway");
    }
    ctx.store.release_claims(&ctx.scheduler.replica.0).await
}

/// Reads the tenants' concurrency caps (`settings.max_concurrent_builds`) into the scheduler: at
/// start and whenever a tenant's settings change (only `PUT …/settings` changes them).
pub async fn reload_tenant_caps(ctx: &Context) -> Result<(), StoreError> {
    ctx.scheduler.set_tenant_caps(ctx.store.tenant_caps().await?);
    Ok(())
}

/// How often a replica on PostgreSQL reads the tenants' caps again.
const CAPS_REREAD: Duration = Duration::from_secs(2);

/// The scheduling loop; runs for the life of the service.
pub async fn run(ctx: Arc<Context>) {
    if let Err(e) = reload_tenant_caps(&ctx).await {
        tracing::error!("scheduler: reading the tenants' caps: {e}");
    }
    let mut caps_read = tokio::time::Instant::now();
    loop {
        // Several replicas: a cap another replica's API changed reaches this one's picks here
        // (the store enforces it anyway; this spares starts it would refuse).
        if ctx.store.backend() == crate::store::Backend::Postgres && caps_read.elapsed() >= CAPS_REREAD {
            caps_read = tokio::time::Instant::now();
            if let Err(e) = reload_tenant_caps(&ctx).await {
                tracing::error!("scheduler: reading the tenants' caps: {e}");
            }
        }
        if let Err(e) = start_queued(&ctx).await {
            tracing::error!("scheduler: {e}");
        }
        // After each pass, which every queued, started and finished build wakes: the gauges
        // follow the scheduler's own queue and running set, seeded from the store by the first
        // pass (and `recover_interrupted`), so a scrape reads no store.
        if let Err(e) = publish_gauges(&ctx).await {
            tracing::error!("scheduler: tenant names for the metrics: {e}");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.scheduler.wake.notified()).await;
    }
}

async fn publish_gauges(ctx: &Context) -> Result<(), StoreError> {
    if ctx.scheduler.has_unnamed_tenants() {
        ctx.scheduler.set_tenant_names(ctx.store.tenants().await?.into_iter().map(|t| (t.id, t.name)).collect());
    }
    ctx.scheduler.publish_gauges(&ctx.metrics);
    Ok(())
}

/// Observes a finished build's duration (started to final state) by kind and result, read back
/// from the store because the executor may have resolved the kind (`auto`) while it ran.
async fn observe_build_end(ctx: &Context, id: i64) {
    match ctx.store.build(id).await {
        Ok(Some(b)) => {
            if let (Some(started), Some(finished)) = (b.started_at, b.finished_at) {
                let labels = crate::metrics::BuildLabels {
                    kind: b.kind.unwrap_or_else(|| "unknown".into()),
                    result: b.state.as_str().to_string(),
                };
                ctx.metrics.build_duration.get_or_create(&labels).observe((finished - started).max(0) as f64 / 1000.0);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(build = id, "reading the build for its duration metric: {e}"),
    }
}

async fn start_queued(ctx: &Arc<Context>) -> Result<(), StoreError> {
    let sched = &ctx.scheduler;
    if sched.is_stopping() {
        return Ok(());
    }
    sched.read_arrivals(&ctx.store).await?;
    loop {
        let free = ctx.config.executor.max_concurrent_builds.saturating_sub(sched.running_count());
        let picked = sched.pick(free);
        if picked.is_empty() {
            return Ok(());
        }
        // Each build's slot and cancel token exist before the store says Running, so a cancel
        // that finds the build Running (a superseding push, `POST …/cancel`) always finds its
        // token too; a token cancelled before the build starts ends it at once.
        let ids: Vec<i64> = picked.iter().map(|(_, id)| *id).collect();
        let tokens: HashMap<i64, CancellationToken> = picked.iter().map(|&(tenant, id)| (id, sched.reserve(tenant, id))).collect();
        // The builds taken move to Running in one transaction: a burst of webhooks costs one
        // write here, not one per build. A build cancelled since it was queued does not move.
        // The store also holds the tenants' caps across replicas: a build of a tenant that other
        // replicas keep at its cap stays Queued and waits here for a build to end.
        let Started { started, over_cap } = match ctx.store.start_builds(&ids, Claim { replica: &sched.replica.0, until: claim_until(ctx) }).await {
            Ok(done) => done,
            Err(e) => {
                sched.release(ids);
                sched.reread_queue();
                return Err(e);
            }
        };
        sched.release(ids.iter().copied().filter(|id| !started.contains(id)));
        if !over_cap.is_empty() {
            let back: Vec<(i64, i64)> = picked.iter().copied().filter(|(_, id)| over_cap.contains(id)).collect();
            sched.at_cap(back.iter().map(|(tenant, _)| *tenant));
            sched.requeue(&back);
        }
        let builds = match ctx.store.builds_by_ids(&started).await {
            Ok(builds) => builds,
            Err(e) => {
                // Running in the store with nobody executing them, and only a restart looks for
                // those again: fail them now rather than leave them Running until then.
                for id in &started {
                    let _ = ctx.store.finish_build(*id, BuildState::Failed, Some(&format!("kiln store error: {e}"))).await;
                }
                sched.release(started);
                return Err(e);
            }
        };
        for build in builds {
            // Here, where the build leaves the queue, from the times the store just recorded.
            if let Some(started) = build.started_at {
                ctx.metrics.queue_wait.observe((started - build.queued_at).max(0) as f64 / 1000.0);
            }
            let token = tokens[&build.id].clone();
            spawn_execute(ctx.clone(), build, token, Start::Fresh);
        }
        if started.len() + over_cap.len() == ids.len() || !over_cap.is_empty() {
            return Ok(());
        }
        // Slots that went to cancelled builds are still free: pick again.
    }
}

fn spawn_execute(ctx: Arc<Context>, build: Build, token: CancellationToken, start: Start) {
    let id = build.id;
    let scheduler_ctx = ctx.clone();
    let task = tokio::spawn(async move {
        let snapshot = build.clone();
        let ended = match execute(&ctx, build, token, start).await {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(build = id, "build could not be recorded: {e}");
                let reason = format!("kiln store error: {e}");
                match ctx.store.finish_build(id, BuildState::Failed, Some(&reason)).await {
                    Ok(true) => {
                        observe_build_end(&ctx, id).await;
                        if let Ok(Some(app)) = ctx.store.app(snapshot.app_id).await {
                            ctx.gitlab_statuses.post(&app, (&snapshot).into(), Status::Failed, &reason);
                        }
                        Some(BuildState::Failed)
                    }
                    _ => None,
                }
            }
        };
        // Cancelled builds tell no one: a person or a newer push cancelled them.
        if ended.is_some_and(|s| s != BuildState::Cancelled) {
            ctx.notifications.build_ended(id);
        }
        ctx.scheduler.running.lock().unwrap().remove(&id);
        ctx.scheduler.cancel_reasons.lock().unwrap().remove(&id);
        ctx.hub.ended(id);
        ctx.scheduler.capacity_freed();
        // A pushed image goes on to every cluster's registry.
        if ended == Some(BuildState::Succeeded) && !ctx.clusters.all().is_empty() {
            crate::replication::spawn(ctx.clone(), id);
        }
    });
    scheduler_ctx.scheduler.set_detach(id, task.abort_handle());
}

/// Runs the build; returns the final state when this call recorded it.
async fn execute(ctx: &Context, build: Build, cancel: CancellationToken, start: Start) -> Result<Option<BuildState>, StoreError> {
    let resumed = matches!(start, Start::Adopted(_));
    let Some((app, tenant)) = ctx.store.app_with_tenant(build.app_id).await? else {
        if ctx.store.finish_build(build.id, BuildState::Failed, Some("the app was deleted")).await? {
            observe_build_end(ctx, build.id).await;
        }
        return Ok(None);
    };
    if app.deleted_at.is_some() {
        // `DELETE /api/v1/apps/{app}?force=1` cancels the builds it finds; these are the ones it
        // did not: queued by a webhook that raced the delete, or running when Kiln stopped.
        let reason = format!("cancelled: app {} was deleted", app.name);
        if !resumed {
            let recorded = ctx.store.finish_build(build.id, BuildState::Cancelled, Some(&reason)).await?;
            if recorded {
                observe_build_end(ctx, build.id).await;
            }
            return Ok(recorded.then_some(BuildState::Cancelled));
        }
        // Stopped through its executor, which keeps its log and removes what runs it.
        ctx.scheduler.cancel_reasons.lock().unwrap().entry(build.id).or_insert(reason);
        cancel.cancel();
    }
    if !resumed {
        ctx.gitlab_statuses.post(&app, (&build).into(), Status::Running, &format!("build {} running", build.id));
    }
    let masker = Arc::new(build_masker(ctx, &app, &tenant).await?);
    let (store, hub, cap) = (ctx.store.clone(), ctx.hub.clone(), ctx.config.logs.max_bytes_per_build);
    let capture = if resumed {
        LogCapture::start(store, hub, build.id, masker.clone(), cap).await?
    } else {
        LogCapture::start_fresh(store, hub, build.id, masker.clone(), cap)
    };
    let log = capture.sink();
    if let Start::Adopted(why) = start {
        log.system("kiln", why).await;
    }
    if !resumed {
        log.system("kiln", format!("[kiln] build {} of {}/{} at {}", build.id, build.tenant, build.app, build.commit)).await;
        if app.gitlab_token.is_none() {
            log.system("kiln", "[kiln] the app has no gitlab_token: no GitLab commit status is posted").await;
        }
    }
    let timeout = ctx.config.executor.build_timeout_for(&tenant);
    let deadline = tokio::time::Instant::now() + timeout;
    let status_app = app.clone();
    let job = BuildJob { build: build.clone(), app, tenant, store: ctx.store.clone(), log: log.clone(), masker, cancel, deadline, timeout, resumed, metrics: ctx.metrics.clone() };
    let Outcome { state, mut reason } = ctx.executor.run(job).await;
    if state == BuildState::Cancelled {
        if let Some(why) = ctx.scheduler.cancel_reasons.lock().unwrap().remove(&build.id) {
            reason = Some(why);
        }
    }
    let summary = match &reason {
        Some(reason) => format!("[kiln] build {} {}: {reason}", build.id, state.as_str()),
        None => format!("[kiln] build {} {}", build.id, state.as_str()),
    };
    log.system("kiln", summary).await;
    drop(log);
    // Every line is stored before the build turns final, so a follower that sees the final
    // state has seen the whole log.
    capture.close().await?;
    ctx.store.fail_open_steps(build.id).await?;
    let recorded = ctx.store.finish_build(build.id, state, reason.as_deref()).await?;
    if recorded {
        observe_build_end(ctx, build.id).await;
        let description = reason.clone().unwrap_or_else(|| format!("build {} {}", build.id, state.as_str().to_lowercase()));
        ctx.gitlab_statuses.post(&status_app, (&build).into(), Status::of_final(state), &description);
    }
    Ok(recorded.then_some(state))
}

/// The masker of one build: every secret the build can see or Kiln holds for it — the app's
/// git token and webhook secret, the registry passwords (the config's, the cluster robots',
/// and under `kube` the one in the tenant's registry Secret, read now), the Harbor webhook
/// secrets and the admin token. A step that prints one stores `***` instead.
async fn build_masker(ctx: &Context, app: &crate::store::App, tenant: &crate::store::Tenant) -> Result<Masker, StoreError> {
    let mut secrets = vec![app.webhook_secret.clone()];
    for target in ctx.store.notification_targets_for_app(tenant.id, app.id).await? {
        secrets.extend(crate::notify::target::secrets_of(&target));
    }
    secrets.extend(app.git_token.clone());
    secrets.extend(app.gitlab_token.clone());
    secrets.extend(ctx.config.registry.password.clone());
    secrets.extend(ctx.config.clusters.iter().filter_map(|c| c.password.clone()));
    secrets.extend(ctx.config.harbor.webhook_auth.clone());
    secrets.extend(ctx.store.harbor_webhook_secret(tenant.id).await?);
    secrets.extend(ctx.config.server.admin_token.clone());
    secrets.extend(ctx.executor.build_secrets(tenant).await);
    Ok(Masker::new(secrets))
}

/// Cancels a queued build at once, or asks the executor to stop a running one.
pub async fn cancel(ctx: &Context, build: &Build) -> Result<CancelResult, StoreError> {
    cancel_because(ctx, build, None).await
}

/// As [`cancel`], with the reason the build record and its log give (`None`: a cancel request).
pub async fn cancel_because(ctx: &Context, build: &Build, why: Option<&str>) -> Result<CancelResult, StoreError> {
    // Not by the snapshot's state: the scheduler may have started the build since it was read,
    // and a running build must end through its executor (which flushes its log).
    let reason = why.unwrap_or("cancelled before it started");
    if ctx.store.cancel_queued(build.id, reason).await? {
        ctx.scheduler.queue.lock().unwrap().fair.remove(build.tenant_id, build.id);
        ctx.scheduler.publish_gauges(&ctx.metrics);
        if let Some(app) = ctx.store.app(build.app_id).await? {
            ctx.gitlab_statuses.post(&app, build.into(), Status::Canceled, reason);
        }
        return Ok(CancelResult::Cancelled);
    }
    if let Some(token) = ctx.scheduler.running.lock().unwrap().get(&build.id).map(|r| r.cancel.clone()) {
        if let Some(why) = why {
            // The first reason stands (two pushes in a row both supersede a running build).
            ctx.scheduler.cancel_reasons.lock().unwrap().entry(build.id).or_insert_with(|| why.to_string());
        }
        token.cancel();
        return Ok(CancelResult::Stopping);
    }
    let now = ctx.store.build(build.id).await?.map(|b| b.state).unwrap_or(build.state);
    Ok(CancelResult::AlreadyFinished(now))
}
