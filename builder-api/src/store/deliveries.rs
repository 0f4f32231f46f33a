//! Webhook deliveries: every event is recorded before it is answered. The unique
//! (source, delivery_key) row is what makes a redelivered event a no-op.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::builds::insert_build;
use super::{now_ms, NewBuild, Result, Store};

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

impl Store {
    /// Records a delivery and queues its builds in one transaction. Returns the outcome and
    /// whether this call recorded it (false: the same key was delivered before; nothing new
    /// was queued and the earlier outcome is returned).
    pub async fn record_delivery(
        &self,
        delivery: &NewDelivery,
        builds: &[NewBuild],
        ignored: Option<String>,
    ) -> Result<(DeliveryOutcome, bool)> {
        let mut tx = self.pool.begin().await?;
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
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0));
        let Some(delivery_id) = inserted else {
            let outcome: String =
                sqlx::query_scalar("SELECT outcome FROM webhook_deliveries WHERE source = ? AND delivery_key = ?")
                    .bind(delivery.source)
                    .bind(&delivery.key)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            let outcome = serde_json::from_str(&outcome)
                .unwrap_or(DeliveryOutcome { build_ids: vec![], ignored: Some("recorded earlier".into()) });
            return Ok((outcome, false));
        };
        let mut build_ids = Vec::with_capacity(builds.len());
        for build in builds {
            build_ids.push(insert_build(&mut tx, build).await?);
        }
        let outcome = DeliveryOutcome { build_ids, ignored };
        sqlx::query("UPDATE webhook_deliveries SET outcome = ?, build_id = ? WHERE id = ?")
            .bind(serde_json::to_string(&outcome).expect("outcome serialises"))
            .bind(outcome.build_ids.first())
            .bind(delivery_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((outcome, true))
    }

    pub async fn delivery_count(&self, source: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE source = ?")
            .bind(source)
            .fetch_one(&self.pool)
            .await?)
    }
}
