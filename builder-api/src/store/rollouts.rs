//! Rollouts: subscriptions (a Deployment's container that follows an app's image), image events
//! (an image arrived in a cluster's registry: a Harbor webhook or registry-sync's verified copy)
//! and rollouts (Pending → Running → Complete | Failed | RolledBack | Aborted, or Superseded
//! while Pending by a newer image for the same subscription). A rollout's steps (what its
//! strategy did, when, and who promoted or aborted it) are rows of `rollout_steps`.

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
    /// How a new image is released: `{"kind": "rolling"}`, `blue-green` or `canary` with their
    /// settings (`rollout::strategy` reads it).
    pub strategy: serde_json::Value,
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
    /// None: `{"kind": "rolling"}`.
    pub strategy: Option<serde_json::Value>,
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
    /// The subscription's strategy when the rollout was queued.
    pub strategy: serde_json::Value,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One step of a release, as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStep {
    #[serde(skip)]
    pub rollout_id: i64,
    pub at: i64,
    /// What happened, in words: `Service web selects green`, `canary at 25 %: 1 canary, 3 stable`.
    pub step: String,
    /// Who made it happen when a person did (`promote`, `abort`): the audit log's actor name.
    pub actor: Option<String>,
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
    "id, app_id, cluster, namespace, deployment, container, repository, policy, rollback_on_failure, strategy, created_at";

/// A strategy column: JSON written by Kiln; anything else reads as rolling.
fn strategy_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({"kind": "rolling"}))
}

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
        strategy: strategy_of(r.get("strategy")),
        created_at: r.get("created_at"),
    }
}

const ROLLOUT_SELECT: &str = "SELECT r.id, r.subscription_id, r.app_id, r.cluster, s.namespace, s.deployment, s.container, r.digest,
    r.image, r.previous_image, r.state, r.reason, r.trigger, r.requested_by, r.strategy,
    r.created_at, r.started_at, r.finished_at, s.rollback_on_failure
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
        strategy: strategy_of(r.get("strategy")),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        rollback_on_failure: r.get::<i64, _>("rollback_on_failure") != 0,
    }
}

fn step_from_row(r: &AnyRow) -> RolloutStep {
    RolloutStep { rollout_id: r.get("rollout_id"), at: r.get("at"), step: r.get("step"), actor: r.get("actor") }
}

impl Store {
    pub async fn create_subscription(&self, new: &NewSubscription) -> Result<Subscription> {
        let sql = format!(
            "INSERT INTO subscriptions (app_id, cluster, namespace, deployment, container, repository, policy, rollback_on_failure, strategy, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {SUBSCRIPTION_COLUMNS}"
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
            .bind(json_doc(&new.strategy.clone().unwrap_or_else(|| serde_json::json!({"kind": "rolling"}))))
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

    /// Changes a subscription's strategy (rollouts queued from now on use it); None when the
    /// app has no such subscription.
    pub async fn set_subscription_strategy(&self, app_id: i64, id: i64, strategy: &serde_json::Value) -> Result<Option<Subscription>> {
        let sql = format!("UPDATE subscriptions SET strategy = $1 WHERE id = $2 AND app_id = $3 RETURNING {SUBSCRIPTION_COLUMNS}");
        let row = sqlx::query(&sql).bind(json_doc(strategy)).bind(id).bind(app_id).fetch_optional(&self.writer).await?;
        Ok(row.as_ref().map(subscription_from_row))
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
                "INSERT INTO rollouts (subscription_id, app_id, cluster, digest, image, state, trigger, requested_by, created_at, strategy)
                 VALUES ($1, $2, $3, $4, $5, 'Pending', $6, $7, $8, (SELECT strategy FROM subscriptions WHERE id = $9)) RETURNING id",
            )
            .bind(r.subscription_id)
            .bind(r.app_id)
            .bind(text(&r.cluster))
            .bind(text(&r.digest))
            .bind(text(&r.image))
            .bind(text(&r.trigger))
            .bind(opt_text(r.requested_by.as_deref()))
            .bind(now)
            .bind(r.subscription_id)
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

    /// Appends a step to a rollout's record.
    pub async fn record_rollout_step(&self, rollout_id: i64, step: &str, actor: Option<&str>) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_steps (rollout_id, seq, at, step, actor)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM rollout_steps WHERE rollout_id = $1), $2, $3, $4)",
        )
        .bind(rollout_id)
        .bind(now_ms())
        .bind(text(step))
        .bind(opt_text(actor))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The steps of every rollout of an app, in the order they happened.
    pub async fn rollout_steps_of_app(&self, app_id: i64) -> Result<Vec<RolloutStep>> {
        let rows = sqlx::query(
            "SELECT st.rollout_id, st.at, st.step, st.actor FROM rollout_steps st JOIN rollouts r ON r.id = st.rollout_id
             WHERE r.app_id = $1 ORDER BY st.rollout_id, st.seq",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(step_from_row).collect())
    }

    pub async fn rollout_steps(&self, rollout_id: i64) -> Result<Vec<RolloutStep>> {
        let rows = sqlx::query("SELECT rollout_id, at, step, actor FROM rollout_steps WHERE rollout_id = $1 ORDER BY seq")
            .bind(rollout_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(step_from_row).collect())
    }

    /// Asks the running rollout of a subscription to `promote` or `abort` (the first decision
    /// counts until the rollout acts on it). The rollout's id, or None when none is running.
    pub async fn decide_rollout(&self, subscription_id: i64, decision: &str, actor: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "UPDATE rollouts SET decision = $1, decided_by = $2
             WHERE subscription_id = $3 AND state = 'Running' AND decision IS NULL RETURNING id",
        )
        .bind(text(decision))
        .bind(text(actor))
        .bind(subscription_id)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|r| r.get("id")))
    }

    /// Takes a pending decision of a rollout (it is acted on once): `(decision, who)`. Read on
    /// the readers' pool (a release holding asks every few seconds), cleared only when there is
    /// one, and only if it is still the one read.
    pub async fn take_rollout_decision(&self, rollout_id: i64) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT decision, decided_by FROM rollouts WHERE id = $1 AND decision IS NOT NULL")
            .bind(rollout_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        // `decide_rollout` sets both columns together.
        let (decision, by): (String, String) = (row.get("decision"), row.get::<Option<String>, _>("decided_by").unwrap_or_default());
        let cleared = sqlx::query("UPDATE rollouts SET decision = NULL WHERE id = $1 AND decision = $2 AND decided_by = $3")
            .bind(rollout_id)
            .bind(text(&decision))
            .bind(text(&by))
            .execute(&self.writer)
            .await?;
        Ok((cleared.rows_affected() == 1).then_some((decision, by)))
    }

    /// Rollouts a previous process left Running go back to Pending: the rollout is driven again
    /// (setting the same image twice is a no-op for the Deployment).
    pub async fn requeue_running_rollouts(&self) -> Result<u64> {
        Ok(sqlx::query("UPDATE rollouts SET state = 'Pending' WHERE state = 'Running'").execute(&self.writer).await?.rows_affected())
    }
}
