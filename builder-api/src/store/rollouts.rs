//! Rollouts: subscriptions (a Deployment's container that follows an app's image), image events
//! (an image arrived in a cluster's registry: a Harbor webhook or registry-sync's verified copy)
//! and rollouts (Pending → Running → Complete | Failed | RolledBack, or Superseded while
//! Pending by a newer image for the same subscription).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, json_doc, now_ms, opt_text, text, Result, Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub id: i64,
    pub app_id: i64,
    pub cluster: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    /// The repository path inside every cluster's registry (`team/hello`).
    pub repository: String,
    /// `branch:NAME`, `glob:PATTERN`, `semver:RANGE` or `manual`.
    pub policy: String,
    pub rollback_on_failure: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub app_id: i64,
    pub cluster: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    pub repository: String,
    pub policy: String,
    pub rollback_on_failure: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageEvent {
    pub id: i64,
    /// `harbor`, `sync`.
    pub source: String,
    /// `host[:port]` of the registry the image is in.
    pub registry: String,
    pub repository: String,
    pub digest: String,
    pub tag: Option<String>,
    pub received_at: i64,
}

/// An image arrival to record; serialised as the row the `image_events` inserts read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewImageEvent {
    pub source: &'static str,
    pub registry: String,
    pub repository: String,
    pub digest: String,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rollout {
    pub id: i64,
    pub subscription_id: i64,
    pub app_id: i64,
    pub cluster: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    pub digest: String,
    /// What the container is set to: `registry/repo@sha256:…`.
    pub image: String,
    /// What the container ran before (the rollback target).
    pub previous_image: Option<String>,
    /// The subscription's: a failed rollout goes back to `previous_image`.
    #[serde(skip)]
    pub rollback_on_failure: bool,
    pub state: String,
    pub reason: Option<String>,
    /// `harbor`, `sync`, `rollback`.
    pub trigger: String,
    /// Who asked for a rollback, as the audit log names them (`token:7:name`, `admin`); None
    /// for a rollout an image arrival started.
    pub requested_by: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewRollout {
    pub subscription_id: i64,
    pub app_id: i64,
    pub cluster: String,
    pub digest: String,
    pub image: String,
    pub trigger: String,
    /// See [`Rollout::requested_by`].
    pub requested_by: Option<String>,
}

const SUBSCRIPTION_COLUMNS: &str =
    "id, app_id, cluster, namespace, deployment, container, repository, policy, rollback_on_failure, created_at";

fn subscription_from_row(r: &AnyRow) -> Subscription {
    Subscription {
        id: r.get("id"),
        app_id: r.get("app_id"),
        cluster: r.get("cluster"),
        namespace: r.get("namespace"),
        deployment: r.get("deployment"),
        container: r.get("container"),
        repository: r.get("repository"),
        policy: r.get("policy"),
        rollback_on_failure: r.get::<i64, _>("rollback_on_failure") != 0,
        created_at: r.get("created_at"),
    }
}

const ROLLOUT_SELECT: &str = "SELECT r.id, r.subscription_id, r.app_id, r.cluster, s.namespace, s.deployment, s.container, r.digest,
    r.image, r.previous_image, r.state, r.reason, r.trigger, r.requested_by, r.created_at, r.started_at, r.finished_at, s.rollback_on_failure
    FROM rollouts r JOIN subscriptions s ON s.id = r.subscription_id";

fn rollout_from_row(r: &AnyRow) -> Rollout {
    Rollout {
        id: r.get("id"),
        subscription_id: r.get("subscription_id"),
        app_id: r.get("app_id"),
        cluster: r.get("cluster"),
        namespace: r.get("namespace"),
        deployment: r.get("deployment"),
        container: r.get("container"),
        digest: r.get("digest"),
        image: r.get("image"),
        previous_image: r.get("previous_image"),
        state: r.get("state"),
        reason: r.get("reason"),
        trigger: r.get("trigger"),
        requested_by: r.get("requested_by"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        rollback_on_failure: r.get::<i64, _>("rollback_on_failure") != 0,
    }
}

impl Store {
    pub async fn create_subscription(&self, new: &NewSubscription) -> Result<Subscription> {
        let sql = format!(
            "INSERT INTO subscriptions (app_id, cluster, namespace, deployment, container, repository, policy, rollback_on_failure, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SUBSCRIPTION_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(new.app_id)
            .bind(text(&new.cluster))
            .bind(text(&new.namespace))
            .bind(text(&new.deployment))
            .bind(text(&new.container))
            .bind(text(&new.repository))
            .bind(text(&new.policy))
            .bind(new.rollback_on_failure as i64)
            .bind(now_ms())
            .fetch_one(&self.writer)
            .await
            .map(|r| subscription_from_row(&r))
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!(
                        "a subscription for container {} of {}/{} in cluster {}",
                        new.container, new.namespace, new.deployment, new.cluster
                    ))
                } else {
                    e.into()
                }
            })
    }

    pub async fn subscriptions_of_app(&self, app_id: i64) -> Result<Vec<Subscription>> {
        let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE app_id = $1 ORDER BY id");
        Ok(sqlx::query(&sql).bind(app_id).fetch_all(&self.pool).await?.iter().map(subscription_from_row).collect())
    }

    /// The subscriptions of every app of a tenant, with the app's name, by id.
    pub async fn subscriptions_of_tenant(&self, tenant_id: i64) -> Result<Vec<(String, Subscription)>> {
        let columns: Vec<String> = SUBSCRIPTION_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
        let sql = format!(
            "SELECT {}, a.name AS app FROM subscriptions s JOIN apps a ON a.id = s.app_id WHERE a.tenant_id = $1 ORDER BY s.id",
            columns.join(", ")
        );
        let rows = sqlx::query(&sql).bind(tenant_id).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| (r.get("app"), subscription_from_row(r))).collect())
    }

    pub async fn subscriptions_for_repository(&self, repository: &str) -> Result<Vec<Subscription>> {
        let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE repository = $1 ORDER BY id");
        Ok(sqlx::query(&sql).bind(text(repository)).fetch_all(&self.pool).await?.iter().map(subscription_from_row).collect())
    }

    pub async fn subscription(&self, id: i64) -> Result<Option<Subscription>> {
        let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1");
        Ok(sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?.as_ref().map(subscription_from_row))
    }

    /// False when the app has no such subscription.
    pub async fn delete_subscription(&self, app_id: i64, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1 AND app_id = $2").bind(id).bind(app_id).execute(&self.writer).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records image arrivals not tied to a webhook delivery (registry-sync's verified copies).
    pub async fn record_image_events(&self, events: &[NewImageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO image_events (source, registry, repository, digest, tag, received_at)
             SELECT j.value->>'source', j.value->>'registry', j.value->>'repository', j.value->>'digest', j.value->>'tag', $2
             FROM {} ORDER BY j.key",
            self.backend.json_rows("$1", None, "j")
        );
        sqlx::query(&sql)
        .bind(json_doc(events))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Image events not yet turned into rollouts, oldest first.
    pub async fn pending_image_events(&self, limit: i64) -> Result<Vec<ImageEvent>> {
        let rows = sqlx::query(
            "SELECT id, source, registry, repository, digest, tag, received_at FROM image_events
             WHERE handled_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ImageEvent {
                id: r.get("id"),
                source: r.get("source"),
                registry: r.get("registry"),
                repository: r.get("repository"),
                digest: r.get("digest"),
                tag: r.get("tag"),
                received_at: r.get("received_at"),
            })
            .collect())
    }

    /// Queues rollouts (and marks the image events that caused them handled) in one transaction.
    /// A Pending rollout of the same subscription is superseded by the newer one.
    pub async fn queue_rollouts(&self, event_ids: &[i64], rollouts: &[NewRollout]) -> Result<Vec<i64>> {
        let mut tx = self.writer.begin().await?;
        let now = now_ms();
        let mut ids = Vec::with_capacity(rollouts.len());
        for r in rollouts {
            let id: i64 = sqlx::query(
                "INSERT INTO rollouts (subscription_id, app_id, cluster, digest, image, state, trigger, requested_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, 'Pending', $6, $7, $8) RETURNING id",
            )
            .bind(r.subscription_id)
            .bind(r.app_id)
            .bind(text(&r.cluster))
            .bind(text(&r.digest))
            .bind(text(&r.image))
            .bind(text(&r.trigger))
            .bind(opt_text(r.requested_by.as_deref()))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .get("id");
            sqlx::query(
                "UPDATE rollouts SET state = 'Superseded', reason = $1, finished_at = $2
                 WHERE subscription_id = $3 AND state = 'Pending' AND id < $4",
            )
            .bind(text(&format!("superseded by rollout {id} ({})", r.image)))
            .bind(now)
            .bind(r.subscription_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            ids.push(id);
        }
        for event_id in event_ids {
            sqlx::query("UPDATE image_events SET handled_at = $1 WHERE id = $2").bind(now).bind(event_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn rollout(&self, id: i64) -> Result<Option<Rollout>> {
        let sql = format!("{ROLLOUT_SELECT} WHERE r.id = $1");
        Ok(sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?.as_ref().map(rollout_from_row))
    }

    pub async fn rollouts_in_state(&self, state: &str) -> Result<Vec<Rollout>> {
        let sql = format!("{ROLLOUT_SELECT} WHERE r.state = $1 ORDER BY r.id");
        Ok(sqlx::query(&sql).bind(text(state)).fetch_all(&self.pool).await?.iter().map(rollout_from_row).collect())
    }

    /// An app's rollouts, newest first.
    pub async fn rollouts_of_app(&self, app_id: i64, limit: i64) -> Result<Vec<Rollout>> {
        let sql = format!("{ROLLOUT_SELECT} WHERE r.app_id = $1 ORDER BY r.id DESC LIMIT $2");
        Ok(sqlx::query(&sql).bind(app_id).bind(limit).fetch_all(&self.pool).await?.iter().map(rollout_from_row).collect())
    }

    /// The rollouts of an app's image `digest` (what one build's image did in the clusters),
    /// newest first.
    pub async fn rollouts_of_digest(&self, app_id: i64, digest: &str, limit: i64) -> Result<Vec<Rollout>> {
        let sql = format!("{ROLLOUT_SELECT} WHERE r.app_id = $1 AND r.digest = $2 ORDER BY r.id DESC LIMIT $3");
        Ok(sqlx::query(&sql).bind(app_id).bind(text(digest)).bind(limit).fetch_all(&self.pool).await?.iter().map(rollout_from_row).collect())
    }

    /// Pending → Running, recording what the container ran before (unless a run of this
    /// rollout before a restart recorded it already). False when it was superseded meanwhile.
    pub async fn start_rollout(&self, id: i64, previous: Option<&str>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE rollouts SET state = 'Running', started_at = $1, previous_image = COALESCE(previous_image, $2) WHERE id = $3 AND state = 'Pending'",
        )
        .bind(now_ms())
        .bind(opt_text(previous))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn finish_rollout(&self, id: i64, state: &str, reason: Option<&str>) -> Result<()> {
        // Not over a rollout superseded before it started.
        sqlx::query("UPDATE rollouts SET state = $1, reason = $2, finished_at = $3 WHERE id = $4 AND state IN ('Pending', 'Running')")
            .bind(text(state))
            .bind(opt_text(reason))
            .bind(now_ms())
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Rollouts a previous process left Running go back to Pending: the rollout is driven again
    /// (setting the same image twice is a no-op for the Deployment).
    pub async fn requeue_running_rollouts(&self) -> Result<u64> {
        Ok(sqlx::query("UPDATE rollouts SET state = 'Pending' WHERE state = 'Running'").execute(&self.writer).await?.rows_affected())
    }
}
