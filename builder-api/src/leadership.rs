//! Which replica runs the cluster-wide loops (turning image events into rollouts, Deployment
//! discovery, re-driving the rollouts and replications a stopped replica left): one at a time.
//!
//! - SQLite: the one process always does.
//! - PostgreSQL under the kube executor: the holder of the Lease `kiln-singletons` in Kiln's own
//!   namespace (`kube.service_account`'s), as Kubernetes controllers elect their leader: the
//!   holder renews it every [`RETRY`]; another replica takes it once it was not renewed for
//!   `executor.claim_lease_secs`, or at once when the holder gave it up on stopping. A cluster
//!   that refuses Kiln the Lease (no such namespace, no RBAC for it: `deploy/base/leases.yaml`)
//!   gets a warning and the next way instead.
//! - PostgreSQL otherwise: a session advisory lock (`store/leadership.rs`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::context::Context;
use crate::store::{Backend, StoreError};

/// The Lease's name (`deploy/base/leases.yaml` grants get and update on this name only).
pub const LEASE_NAME: &str = "kiln-singletons";

/// How often the holder renews and the others try.
const RETRY: Duration = Duration::from_secs(2);

/// Whether this replica leads, kept up to date in the background.
pub async fn leadership(ctx: &Arc<Context>) -> Result<watch::Receiver<bool>, StoreError> {
    if ctx.store.backend() == Backend::Sqlite {
        return ctx.store.leadership().await;
    }
    let lease = match (&ctx.kube, ctx.config.executor.kind.as_str(), ctx.config.kube.service_account_ref()) {
        (Some(client), "kube", Ok((namespace, _))) => Some(Api::<Lease>::namespaced(client.clone(), namespace)),
        _ => None,
    };
    let Some(api) = lease else { return ctx.store.leadership().await };
    let (tx, rx) = watch::channel(false);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let me = ctx.scheduler.replica.0.clone();
        let duration = Duration::from_secs(ctx.config.executor.claim_lease_secs);
        // Until when this replica may take itself for the holder without another renewal.
        let mut holds_until: Option<tokio::time::Instant> = None;
        loop {
            if ctx.scheduler.is_stopping() {
                tx.send_replace(false);
                return;
            }
            match acquire_or_renew(&api, &me, duration).await {
                Ok(true) => holds_until = Some(tokio::time::Instant::now() + duration),
                Ok(false) => holds_until = None,
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
                    tracing::warn!(
                        "the Lease {LEASE_NAME} is refused ({} {}): the cluster-wide loops are elected by a PostgreSQL lock instead (see deploy/base/leases.yaml)",
                        e.code,
                        e.message
                    );
                    forward(&ctx, tx).await;
                    return;
                }
                // Not known: keep what was known, until it would have run out.
                Err(e) => tracing::warn!("the Lease {LEASE_NAME}: {e}"),
            }
            let leads = holds_until.is_some_and(|until| tokio::time::Instant::now() < until);
            tx.send_if_modified(|was| std::mem::replace(was, leads) != leads);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    Ok(rx)
}

/// Hands the advisory lock's answers on, instead of the Lease's.
async fn forward(ctx: &Context, tx: watch::Sender<bool>) {
    let mut rx = match ctx.store.leadership().await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!("the PostgreSQL lock of the cluster-wide loops: {e}");
            return;
        }
    };
    loop {
        let leads = *rx.borrow_and_update();
        tx.send_if_modified(|was| std::mem::replace(was, leads) != leads);
        if rx.changed().await.is_err() || tx.is_closed() {
            return;
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One round of the election: true when this replica holds the Lease now. A conflict (another
/// replica wrote it first) is a lost round, not an error.
async fn acquire_or_renew(api: &Api<Lease>, me: &str, duration: Duration) -> Result<bool, kube::Error> {
    let secs = duration.as_secs() as i32;
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return lost_on_conflict(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != me {
        let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let expired = renewed.is_none_or(|t| {
            let since = k8s_openapi::jiff::Timestamp::now().duration_since(t);
            since.as_secs() < 0 || since.unsigned_abs() > held_for
        });
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(me.into());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(now());
    // The resourceVersion read above makes this a compare-and-swap.
    lost_on_conflict(api.replace(LEASE_NAME, &PostParams::default(), &lease).await)
}

fn lost_on_conflict(written: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A stopping replica gives the Lease up, so another takes it at its next try instead of after
/// the lease's duration. (The PostgreSQL lock goes with the process's session.)
pub async fn give_up(ctx: &Context) {
    let (Some(client), "kube", Ok((namespace, _))) = (&ctx.kube, ctx.config.executor.kind.as_str(), ctx.config.kube.service_account_ref()) else {
        return;
    };
    if ctx.store.backend() == Backend::Sqlite {
        return;
    }
    let api = Api::<Lease>::namespaced(client.clone(), namespace);
    let Ok(Some(mut lease)) = api.get_opt(LEASE_NAME).await else { return };
    let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(ctx.scheduler.replica.0.as_str())) else { return };
    spec.holder_identity = None;
    if let Err(e) = api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
        tracing::warn!("giving the Lease {LEASE_NAME} up: {e}");
    }
}
