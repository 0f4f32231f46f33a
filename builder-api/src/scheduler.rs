//! The scheduler: takes Queued builds while fewer than `max_concurrent_builds` run — round robin
//! across the tenants with waiting builds, oldest first within a tenant, so a tenant with fifty
//! waiting builds does not starve one with a single build — runs each through the executor with
//! its log captured, and records how it ended. Woken by new builds and finished ones; a periodic
//! tick covers anything missed. The queue is the store's Queued builds, so it survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::executor::{BuildJob, Outcome};
use crate::logs::capture::{LogCapture, Masker};
use crate::store::{Build, BuildState, StoreError};

#[derive(Default)]
pub struct Scheduler {
    wake: Notify,
    running: Mutex<HashMap<i64, CancellationToken>>,
    /// Why a running build is being cancelled, when not by a plain cancel request.
    cancel_reasons: Mutex<HashMap<i64, String>>,
    /// The tenant whose build was started last: the round robin goes on after it.
    last_tenant: Mutex<Option<i64>>,
}

/// Up to `free` builds from `queued` (oldest first): one per tenant in turn, the turn starting
/// after `last_tenant`, FIFO within a tenant.
pub fn pick_fair(queued: &[Build], free: usize, last_tenant: Option<i64>) -> Vec<Build> {
    let mut tenants: Vec<i64> = queued.iter().map(|b| b.tenant_id).collect();
    tenants.sort_unstable();
    tenants.dedup();
    // Rotate so the tenant after the last one served comes first.
    if let Some(last) = last_tenant {
        let at = tenants.iter().position(|t| *t > last).unwrap_or(0);
        tenants.rotate_left(at);
    }
    let mut lanes: Vec<std::collections::VecDeque<&Build>> =
        tenants.iter().map(|t| queued.iter().filter(|b| b.tenant_id == *t).collect()).collect();
    let mut picked = Vec::with_capacity(free);
    while picked.len() < free && lanes.iter().any(|l| !l.is_empty()) {
        for lane in lanes.iter_mut() {
            if picked.len() == free {
                break;
            }
            if let Some(b) = lane.pop_front() {
                picked.push(b.clone());
            }
        }
    }
    picked
}

/// Why a cancel request did nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelResult {
    Cancelled,
    /// Running: the executor stops it; the build ends Cancelled shortly.
    Stopping,
    AlreadyFinished(BuildState),
}

impl Scheduler {
    /// A build was queued or a slot freed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

/// Builds left Running by a previous process. An executor whose work outlives Kiln (kube: the
/// Job keeps running) follows them again; otherwise (local: the processes died with Kiln, or are
/// orphans whose output nobody reads) they are marked Failed ("interrupted").
pub async fn recover_interrupted(ctx: &Arc<Context>) -> Result<usize, StoreError> {
    let running = ctx.store.builds_in_state(BuildState::Running).await?;
    if ctx.executor.adopts_running() {
        for build in running {
            let token = CancellationToken::new();
            ctx.scheduler.running.lock().unwrap().insert(build.id, token.clone());
            spawn_execute(ctx.clone(), build, token, true);
        }
        return Ok(0);
    }
    for build in &running {
        let reason = "interrupted: kiln stopped while the build was running";
        let masker = Arc::new(Masker::new(vec![]));
        let capture = LogCapture::start(ctx.store.clone(), ctx.hub.clone(), build.id, masker, u64::MAX).await?;
        capture.sink().system("kiln", format!("[kiln] build {} {reason}", build.id)).await;
        capture.close().await?;
        ctx.store.fail_open_steps(build.id).await?;
        ctx.store.finish_build(build.id, BuildState::Failed, Some(reason)).await?;
        tracing::warn!(build = build.id, "{reason}");
    }
    Ok(running.len())
}

/// The scheduling loop; runs for the life of the service.
pub async fn run(ctx: Arc<Context>) {
    loop {
        if let Err(e) = start_queued(&ctx).await {
            tracing::error!("scheduler: {e}");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.scheduler.wake.notified()).await;
    }
}

async fn start_queued(ctx: &Arc<Context>) -> Result<(), StoreError> {
    let free = ctx.config.executor.max_concurrent_builds.saturating_sub(ctx.scheduler.running_count());
    if free == 0 {
        return Ok(());
    }
    let last_tenant = *ctx.scheduler.last_tenant.lock().unwrap();
    let queued = pick_fair(&ctx.store.builds_in_state(BuildState::Queued).await?, free, last_tenant);
    let Some(last) = queued.last() else { return Ok(()) };
    *ctx.scheduler.last_tenant.lock().unwrap() = Some(last.tenant_id);
    // The tokens are registered first so a cancel that sees a build Running finds it. All the
    // builds taken move to Running in one transaction: a burst of webhooks costs one write here,
    // not one per build.
    let tokens: Vec<CancellationToken> = {
        let mut running = ctx.scheduler.running.lock().unwrap();
        queued.iter().map(|b| running.entry(b.id).or_default().clone()).collect()
    };
    let ids: Vec<i64> = queued.iter().map(|b| b.id).collect();
    let started = match ctx.store.mark_running_many(&ids).await {
        Ok(started) => started,
        Err(e) => {
            let mut running = ctx.scheduler.running.lock().unwrap();
            ids.iter().for_each(|id| drop(running.remove(id)));
            return Err(e);
        }
    };
    for (build, token) in queued.into_iter().zip(tokens) {
        if started.contains(&build.id) {
            spawn_execute(ctx.clone(), build, token, false);
        } else {
            ctx.scheduler.running.lock().unwrap().remove(&build.id); // cancelled meanwhile
        }
    }
    Ok(())
}

fn spawn_execute(ctx: Arc<Context>, build: Build, token: CancellationToken, resumed: bool) {
    tokio::spawn(async move {
        let id = build.id;
        let ended = match execute(&ctx, build, token, resumed).await {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(build = id, "build could not be recorded: {e}");
                let _ = ctx.store.finish_build(id, BuildState::Failed, Some(&format!("kiln store error: {e}"))).await;
                None
            }
        };
        ctx.scheduler.running.lock().unwrap().remove(&id);
        ctx.scheduler.cancel_reasons.lock().unwrap().remove(&id);
        ctx.hub.ended(id);
        ctx.scheduler.wake();
        // A pushed image goes on to every cluster's registry.
        if ended == Some(BuildState::Succeeded) && !ctx.clusters.all().is_empty() {
            crate::replication::spawn(ctx.clone(), id);
        }
    });
}

/// Runs the build; returns the final state when this call recorded it.
async fn execute(ctx: &Context, build: Build, cancel: CancellationToken, resumed: bool) -> Result<Option<BuildState>, StoreError> {
    let Some(app) = ctx.store.app(build.app_id).await? else {
        ctx.store.finish_build(build.id, BuildState::Failed, Some("the app was deleted")).await?;
        return Ok(None);
    };
    let Some(tenant) = ctx.store.tenant(app.tenant_id).await? else {
        ctx.store.finish_build(build.id, BuildState::Failed, Some("the tenant was deleted")).await?;
        return Ok(None);
    };
    let mut secrets = vec![app.webhook_secret.clone()];
    secrets.extend(app.git_token.clone());
    secrets.extend(ctx.config.registry.password.clone());
    secrets.extend(ctx.config.server.admin_token.clone());
    let masker = Arc::new(Masker::new(secrets));
    let capture = LogCapture::start(ctx.store.clone(), ctx.hub.clone(), build.id, masker.clone(), ctx.config.logs.max_bytes_per_build).await?;
    let log = capture.sink();
    if !resumed {
        log.system("kiln", format!("[kiln] build {} of {}/{} at {}", build.id, build.tenant, build.app, build.commit)).await;
    }
    let deadline = tokio::time::Instant::now() + ctx.config.executor.build_timeout_for(&tenant);
    let job = BuildJob { build: build.clone(), app, tenant, store: ctx.store.clone(), log: log.clone(), masker, cancel, deadline, resumed };
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
    Ok(recorded.then_some(state))
}

/// Cancels a queued build at once, or asks the executor to stop a running one.
pub async fn cancel(ctx: &Context, build: &Build) -> Result<CancelResult, StoreError> {
    cancel_because(ctx, build, None).await
}

/// As [`cancel`], with the reason the build record and its log give (`None`: a cancel request).
pub async fn cancel_because(ctx: &Context, build: &Build, why: Option<&str>) -> Result<CancelResult, StoreError> {
    // Not by the snapshot's state: the scheduler may have started the build since it was read,
    // and a running build must end through its executor (which flushes its log).
    if ctx.store.cancel_queued(build.id, why.unwrap_or("cancelled before it started")).await? {
        return Ok(CancelResult::Cancelled);
    }
    if let Some(token) = ctx.scheduler.running.lock().unwrap().get(&build.id) {
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

#[cfg(test)]
mod tests {
    use super::pick_fair;
    use crate::store::{Build, BuildState};

    fn queued(id: i64, tenant_id: i64) -> Build {
        Build {
            id,
            tenant_id,
            tenant: format!("t{tenant_id}"),
            app_id: tenant_id,
            app: "app".into(),
            state: BuildState::Queued,
            reason: None,
            git_ref: None,
            commit: "0".repeat(40),
            trigger: "webhook".into(),
            kind: None,
            image: None,
            image_digest: None,
            queued_at: 0,
            started_at: None,
            finished_at: None,
            apm_agent: None,
            apm_version: None,
            original_image: None,
        }
    }

    /// Starts builds one slot at a time, as finishing builds free them.
    fn start_order(mut waiting: Vec<Build>, mut last: Option<i64>) -> Vec<i64> {
        let mut order = vec![];
        while let Some(b) = pick_fair(&waiting, 1, last).pop() {
            last = Some(b.tenant_id);
            order.push(b.id);
            waiting.retain(|w| w.id != b.id);
        }
        order
    }

    #[test]
    fn tenants_take_turns_and_each_keeps_its_order() {
        // Tenant 1 queued 30 (ids 1..=30), two already started; tenant 2 queued 3 just after.
        let mut waiting: Vec<Build> = (3..=30).map(|id| queued(id, 1)).collect();
        waiting.extend((31..=33).map(|id| queued(id, 2)));
        let order = start_order(waiting, Some(1));
        assert_eq!(&order[..7], &[31, 3, 32, 4, 33, 5, 6]);
        let a7 = order.iter().position(|id| *id == 7).unwrap();
        assert!(order.iter().position(|id| *id == 33).unwrap() < a7);
        // Within a tenant: first in, first out.
        let a: Vec<i64> = order.iter().copied().filter(|id| *id <= 30).collect();
        assert_eq!(a, (3..=30).collect::<Vec<_>>());
    }

    #[test]
    fn several_free_slots_go_round_the_tenants() {
        let waiting = vec![queued(1, 5), queued(2, 5), queued(3, 5), queued(4, 7), queued(5, 9)];
        let ids: Vec<i64> = pick_fair(&waiting, 4, None).iter().map(|b| b.id).collect();
        assert_eq!(ids, [1, 4, 5, 2]);
        let ids: Vec<i64> = pick_fair(&waiting, 2, Some(7)).iter().map(|b| b.id).collect();
        assert_eq!(ids, [5, 1]);
        assert!(pick_fair(&waiting, 0, None).is_empty());
        assert!(pick_fair(&[], 3, None).is_empty());
    }
}
