//! Webhook deliveries: every event is recorded before it is answered. The unique
//! (source, delivery_key) row is what makes a redelivered event a no-op.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

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
    /// Where it came from (the sender's address), for the audit log.
    pub client_addr: Option<String>,
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
const GROUP: usize = 512;

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

/// Records a group of deliveries, their builds, image events and audit rows in one transaction of
/// five statements, whatever the group's size: each statement takes the whole group as one JSON
/// array (`json_each`), so a burst costs a few round trips to SQLite, not three per delivery.
async fn record_group(pool: &SqlitePool, group: &[Pending]) -> Result<Vec<(DeliveryOutcome, bool)>> {
    let mut tx = pool.begin().await?;
    let now = now_ms();
    // Which keys were recorded before: those deliveries are answered with their first outcome.
    let keys: Vec<Value> = group.iter().map(|p| json!([p.delivery.source, p.delivery.key])).collect();
    let earlier: HashMap<(String, String), String> = sqlx::query(
        "SELECT d.source, d.delivery_key, d.outcome FROM json_each(?1) j
         JOIN webhook_deliveries d ON d.source = j.value->>0 AND d.delivery_key = j.value->>1",
    )
    .bind(Value::Array(keys).to_string())
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect();

    // The new ones: not recorded before, and the first of their key in this group.
    let mut first_of_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut fresh: Vec<usize> = vec![];
    for (i, p) in group.iter().enumerate() {
        let key = (p.delivery.source, p.delivery.key.as_str());
        if !earlier.contains_key(&(key.0.to_string(), key.1.to_string())) && !first_of_key.contains_key(&key) {
            first_of_key.insert(key, i);
            fresh.push(i);
        }
    }

    // Their builds, in order: ids ascend in insertion order (one writer, one statement).
    let builds: Vec<Value> = fresh
        .iter()
        .flat_map(|i| &group[*i].builds)
        .map(|b| json!({"tenant_id": b.tenant_id, "app_id": b.app_id, "git_ref": b.git_ref, "commit": b.commit, "trigger": b.trigger}))
        .collect();
    let mut build_ids: Vec<i64> = if builds.is_empty() {
        vec![]
    } else {
        sqlx::query(
            "INSERT INTO builds (tenant_id, app_id, state, git_ref, commit_sha, trigger, queued_at)
             SELECT j.value->>'tenant_id', j.value->>'app_id', 'Queued', j.value->>'git_ref', j.value->>'commit',
                    j.value->>'trigger', ?2
             FROM json_each(?1) j ORDER BY j.key RETURNING id",
        )
        .bind(Value::Array(builds).to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    build_ids.sort_unstable();
    // Each build a webhook started is in the audit log, like one an API token triggered.
    let audit: Vec<Value> = fresh
        .iter()
        .flat_map(|i| group[*i].builds.iter().map(move |b| (&group[*i].delivery, b)))
        .zip(&build_ids)
        .map(|((d, b), id)| {
            json!({"actor": format!("webhook:{}", d.source), "tenant_id": b.tenant_id, "target": format!("build/{id}"), "client_addr": d.client_addr})
        })
        .collect();
    if !audit.is_empty() {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, tenant_id, action, target, client_addr)
             SELECT ?2, j.value->>'actor', j.value->>'tenant_id', 'build.trigger', j.value->>'target', j.value->>'client_addr'
             FROM json_each(?1) j ORDER BY j.key",
        )
        .bind(Value::Array(audit).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let mut build_ids = build_ids.into_iter();

    let events: Vec<NewImageEvent> = fresh.iter().flat_map(|i| group[*i].image_events.iter().cloned()).collect();
    insert_image_events(&mut tx, &events).await?;

    let mut outcomes: Vec<Option<(DeliveryOutcome, bool)>> = vec![None; group.len()];
    let mut rows = Vec::with_capacity(fresh.len());
    for i in &fresh {
        let p = &group[*i];
        let ids: Vec<i64> = build_ids.by_ref().take(p.builds.len()).collect();
        let outcome = DeliveryOutcome { build_ids: ids, ignored: p.ignored.clone() };
        rows.push(json!({
            "source": p.delivery.source, "key": p.delivery.key, "event": p.delivery.event, "app_id": p.delivery.app_id,
            "build_id": outcome.build_ids.first(), "outcome": serde_json::to_string(&outcome).expect("outcome serialises"),
        }));
        outcomes[*i] = Some((outcome, true));
    }
    if !rows.is_empty() {
        sqlx::query(
            "INSERT INTO webhook_deliveries (source, delivery_key, event, app_id, build_id, outcome, received_at)
             SELECT j.value->>'source', j.value->>'key', j.value->>'event', j.value->>'app_id', j.value->>'build_id',
                    j.value->>'outcome', ?2
             FROM json_each(?1) j ORDER BY j.key",
        )
        .bind(Value::Array(rows).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;

    // The repeats: the outcome of the delivery recorded first.
    for (i, p) in group.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let key = (p.delivery.source, p.delivery.key.as_str());
        let outcome = match first_of_key.get(&key) {
            Some(first) => outcomes[*first].as_ref().expect("recorded above").0.clone(),
            None => earlier
                .get(&(key.0.to_string(), key.1.to_string()))
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(DeliveryOutcome { build_ids: vec![], ignored: Some("recorded earlier".into()) }),
        };
        outcomes[i] = Some((outcome, false));
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every delivery has an outcome")).collect())
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
