//! Replication records: one row per (build, cluster) — where the built image was copied, whether
//! the copy is verified, and what it cost. A re-run replaces the row.

use serde::Serialize;
use sqlx::Row;

use super::{json_doc, now_ms, opt_text, text, Result, Store};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuildSync {
    pub cluster: String,
    /// `registry/repo@sha256:…` in the cluster's registry.
    pub target: String,
    /// `Running`, `Verified` or `Failed`.
    pub state: String,
    pub reason: Option<String>,
    pub bytes_sent: i64,
    pub blobs_sent: i64,
    pub blobs_mounted: i64,
    pub blobs_skipped: i64,
    pub duration_ms: i64,
    pub updated_at: i64,
}

/// How many remembered blob locations a new process loads: hints, so the newest are enough (a
/// blob not among them is looked for with a HEAD and sent, as without hints).
pub const BLOB_LOCATIONS_LOADED: i64 = 200_000;

impl Store {
    /// Records that copies to these (cluster, target) pairs started.
    pub async fn start_syncs(&self, build_id: i64, targets: &[(String, String)]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (cluster, target) in targets {
            sqlx::query(
                "INSERT INTO build_syncs (build_id, cluster, target, state, updated_at) VALUES ($1, $2, $3, 'Running', $4)
                 ON CONFLICT (build_id, cluster) DO UPDATE SET target = excluded.target, state = 'Running', reason = NULL,
                    bytes_sent = 0, blobs_sent = 0, blobs_mounted = 0, blobs_skipped = 0, duration_ms = 0, updated_at = excluded.updated_at",
            )
            .bind(build_id)
            .bind(text(cluster))
            .bind(text(target))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn finish_sync(&self, build_id: i64, s: &BuildSync) -> Result<()> {
        sqlx::query(
            "UPDATE build_syncs SET state = $1, reason = $2, bytes_sent = $3, blobs_sent = $4, blobs_mounted = $5, blobs_skipped = $6,
                duration_ms = $7, updated_at = $8 WHERE build_id = $9 AND cluster = $10",
        )
        .bind(text(&s.state))
        .bind(opt_text(s.reason.as_deref()))
        .bind(s.bytes_sent)
        .bind(s.blobs_sent)
        .bind(s.blobs_mounted)
        .bind(s.blobs_skipped)
        .bind(s.duration_ms)
        .bind(now_ms())
        .bind(build_id)
        .bind(text(&s.cluster))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn syncs(&self, build_id: i64) -> Result<Vec<BuildSync>> {
        let rows = sqlx::query(
            "SELECT cluster, target, state, reason, bytes_sent, blobs_sent, blobs_mounted, blobs_skipped, duration_ms, updated_at
             FROM build_syncs WHERE build_id = $1 ORDER BY cluster",
        )
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| BuildSync {
                cluster: r.get("cluster"),
                target: r.get("target"),
                state: r.get("state"),
                reason: r.get("reason"),
                bytes_sent: r.get("bytes_sent"),
                blobs_sent: r.get("blobs_sent"),
                blobs_mounted: r.get("blobs_mounted"),
                blobs_skipped: r.get("blobs_skipped"),
                duration_ms: r.get("duration_ms"),
                updated_at: r.get("updated_at"),
            })
            .collect())
    }

    /// Remembers where replication put blobs (a later location replaces an earlier one).
    pub async fn remember_blob_locations(&self, locations: &[registry_sync::BlobLocation]) -> Result<()> {
        if locations.is_empty() {
            return Ok(());
        }
        // One statement for them all (rows as a JSON array of [registry, digest, repository]),
        // not a round trip to the writer connection per blob. (`WHERE true`: SQLite needs a WHERE
        // between an INSERT … SELECT and its ON CONFLICT to parse the upsert.)
        let sql = format!(
            "INSERT INTO blob_locations (registry, digest, repository, recorded_at)
             SELECT j.value->>0, j.value->>1, j.value->>2, $2 FROM {} WHERE true
             ON CONFLICT (registry, digest) DO UPDATE SET repository = excluded.repository, recorded_at = excluded.recorded_at",
            self.backend.json_rows("$1", None, "j")
        );
        sqlx::query(&sql)
        .bind(json_doc(locations))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The [`BLOB_LOCATIONS_LOADED`] most recently remembered blob locations.
    pub async fn blob_locations(&self) -> Result<Vec<registry_sync::BlobLocation>> {
        let rows = sqlx::query("SELECT registry, digest, repository FROM blob_locations ORDER BY recorded_at DESC LIMIT $1")
            .bind(BLOB_LOCATIONS_LOADED)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("registry")?, r.try_get("digest")?, r.try_get("repository")?))).collect()
    }

    /// Builds whose replication a previous process left running.
    pub async fn builds_with_running_syncs(&self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT DISTINCT build_id FROM build_syncs WHERE state = 'Running' ORDER BY build_id").fetch_all(&self.pool).await?)
    }
}
