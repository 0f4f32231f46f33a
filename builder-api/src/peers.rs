//! What this replica does with what the other replicas on one PostgreSQL database announce
//! (`store::signals`): lines of a build stored by the replica running it reach this replica's
//! followers of that build; a build that ended elsewhere ends their streams; builds queued or
//! ended elsewhere wake the scheduler (a slot, or a tenant's cap, may be free); image events wake
//! the rollout loop. Nothing runs on SQLite (one process).

use std::sync::Arc;
use std::time::Duration;

use crate::context::Context;
use crate::store::Signal;

/// Listens for the life of the service.
pub async fn listen(ctx: Arc<Context>) {
    loop {
        let mut signals = match ctx.store.listen().await {
            Ok(Some(signals)) => signals,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("listening to the other replicas: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            match signals.next().await {
                Ok(Some(signal)) => heard(&ctx, signal).await,
                Ok(None) => {}
                Err(e) => {
                    // The next call connects again; followers and the scheduler read the store
                    // on their own every few seconds, so what was missed meanwhile only waits.
                    tracing::warn!("listening to the other replicas: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

async fn heard(ctx: &Context, signal: Signal) {
    match signal {
        Signal::LogStored { build, first, last } => {
            if let Err(e) = crate::logs::relay(&ctx.store, &ctx.hub, build, first, last).await {
                tracing::warn!(build, "relaying lines stored by another replica: {e}");
            }
        }
        Signal::BuildEnded(build) => {
            ctx.hub.ended_elsewhere(build);
            ctx.scheduler.capacity_freed();
        }
        Signal::BuildsQueued(builds) => ctx.scheduler.arrived(builds),
        Signal::ImageEvents => ctx.rollouts.wake(),
    }
}
