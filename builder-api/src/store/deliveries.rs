//! Webhook deliveries: every event is recorded before it is answered. The unique
//! (source, delivery_key) row is what makes a redelivered event a no-op.

use serde::{Deserialize, Serialize};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::builds::insert_build;
use super::rollouts::{insert_image_events, NewImageEvent};
use super::{now_ms, NewBuild, Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `gitlab`, `harbor`, …
    pub source: &'static str,
    /// `Idempotency-Key`, `X-Gitlab-Event-UUID`, or a hash of the body.
    pub key: String,
    pub event: String,
    pub app_id: Option<i64>,
}

/// What became of a delivery, stored as JSON so a duplicate can be answered like the original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub build_ids: Vec<i64>,
    /// Why nothing was built, for ignored events.
    pub ignored: Option<String>,
}

/// One delivery waiting for the writer.
struct Pending {
    delivery: NewDelivery,
    builds: Vec<NewBuild>,
    image_events: Vec<NewImageEvent>,
    ignored: Option<String>,
    reply: oneshot::Sender<Result<(DeliveryOutcome, bool)>>,
}

/// Records deliveries through one task: whatever arrived while the last transaction committed
/// goes into the next one. A burst of 200 hooks becomes a handful of commits instead of 200
/// writers queueing for SQLite's single write lock (whose busy handler sleeps, which is what
/// made the tail latency).
#[derive(Clone)]
pub(super) struct DeliveryWriter {
    tx: mpsc::Sender<Pending>,
}

/// Most deliveries per transaction: bounds the latency one commit adds to the first of them.
const GROUP: usize = 64;

impl DeliveryWriter {
    pub(super) fn start(pool: SqlitePool) -> DeliveryWriter {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(GROUP);
            while rx.recv_many(&mut group, GROUP).await > 0 {
                match record_group(&pool, &group).await {
                    Ok(outcomes) => {
                        for (p, outcome) in group.drain(..).zip(outcomes) {
                            let _ = p.reply.send(Ok(outcome));
                        }
                    }
                    // The group's transaction failed as a whole: record each on its own, so one
                    // bad delivery fails only itself.
                    Err(_) => {
                        for p in group.drain(..) {
                            let one = record_group(&pool, std::slice::from_ref(&p)).await.map(|mut v| v.remove(0));
                            let _ = p.reply.send(one);
                        }
                    }
                }
            }
        });
        DeliveryWriter { tx }
    }
}

/// Records a group of deliveries and their builds in one transaction.
async fn record_group(pool: &SqlitePool, group: &[Pending]) -> Result<Vec<(DeliveryOutcome, bool)>> {
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(group.len());
    for p in group {
        outcomes.push(record_one(&mut tx, p).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn record_one(conn: &mut SqliteConnection, p: &Pending) -> Result<(DeliveryOutcome, bool)> {
    let Pending { delivery, builds, image_events, ignored, .. } = p;
    // The INSERT comes first so the transaction takes SQLite's write lock at once.
    let inserted: Option<i64> = sqlx::query(
        "INSERT INTO webhook_deliveries (source, delivery_key, event, app_id, outcome, received_at)
         VALUES (?, ?, ?, ?, '', ?) ON CONFLICT (source, delivery_key) DO NOTHING RETURNING id",
    )
    .bind(delivery.source)
    .bind(&delivery.key)
    .bind(&delivery.event)
    .bind(delivery.app_id)
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.get(0));
    let Some(delivery_id) = inserted else {
        let outcome: String =
            sqlx::query_scalar("SELECT outcome FROM webhook_deliveries WHERE source = ? AND delivery_key = ?")
                .bind(delivery.source)
                .bind(&delivery.key)
                .fetch_one(&mut *conn)
                .await?;
        let outcome = serde_json::from_str(&outcome)
            .unwrap_or(DeliveryOutcome { build_ids: vec![], ignored: Some("recorded earlier".into()) });
        return Ok((outcome, false));
    };
    let mut build_ids = Vec::with_capacity(builds.len());
    for build in builds {
        build_ids.push(insert_build(&mut *conn, build).await?);
    }
    insert_image_events(&mut *conn, image_events).await?;
    let outcome = DeliveryOutcome { build_ids, ignored: ignored.clone() };
    sqlx::query("UPDATE webhook_deliveries SET outcome = ?, build_id = ? WHERE id = ?")
        .bind(serde_json::to_string(&outcome).expect("outcome serialises"))
        .bind(outcome.build_ids.first())
        .bind(delivery_id)
        .execute(&mut *conn)
        .await?;
    Ok((outcome, true))
}

impl Store {
    /// Records a delivery and queues its builds, durably, before it returns. Returns the outcome
    /// and whether this call recorded it (false: the same key was delivered before; nothing new
    /// was queued and the earlier outcome is returned).
    pub async fn record_delivery(
        &self,
        delivery: &NewDelivery,
        builds: &[NewBuild],
        ignored: Option<String>,
    ) -> Result<(DeliveryOutcome, bool)> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { delivery: delivery.clone(), builds: builds.to_vec(), image_events: vec![], ignored, reply };
        let closed = || StoreError::Db(sqlx::Error::PoolClosed);
        self.deliveries.tx.send(pending).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Records a registry webhook delivery with the image arrivals it reports, durably, before it
    /// returns; false when the same key was delivered before (no event is recorded twice).
    pub async fn record_image_delivery(
        &self,
        delivery: &NewDelivery,
        image_events: &[NewImageEvent],
        ignored: Option<String>,
    ) -> Result<(DeliveryOutcome, bool)> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { delivery: delivery.clone(), builds: vec![], image_events: image_events.to_vec(), ignored, reply };
        let closed = || StoreError::Db(sqlx::Error::PoolClosed);
        self.deliveries.tx.send(pending).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    pub async fn delivery_count(&self, source: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE source = ?")
            .bind(source)
            .fetch_one(&self.pool)
            .await?)
    }
}
