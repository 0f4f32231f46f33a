//! Claims: which replica runs a Running build, and until when. Several `kiln serve` replicas on
//! one PostgreSQL database each start Queued builds; the UPDATE that moves a build to Running
//! also claims it for the replica (`claimed_by`) until `claim_until`, which that replica renews
//! while it runs the build. A replica that dies stops renewing, its claims run out, and another
//! replica adopts those builds: it follows their Jobs and continues their logs (the scheduler's
//! `adopt_orphans`). On SQLite there is one process, and every claim at start is that of a
//! previous process.
//!
//! Tenant caps hold across replicas here, not in any replica's memory: the claiming transaction
//! locks each capped tenant (PostgreSQL: `pg_advisory_xact_lock`; SQLite's one writer connection
//! serialises the transactions anyway), counts that tenant's Running builds in the database, and
//! starts no more than its cap allows.

use std::collections::HashMap;

use sqlx::Row;

use super::tenants::tenant_cap_column;
use super::{now_ms, sql_int_list, Backend, Build, Result, Store};

/// A replica's claim on the builds it starts or adopts.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The replica's id (`hostname-pid-random`), unique per process.
    pub replica: &'a str,
    /// Until when (ms since the epoch) the claim holds unless renewed.
    pub until: i64,
}

/// What [`Store::start_builds`] did with the builds it was given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Started {
    /// Now Running, claimed by the caller.
    pub started: Vec<i64>,
    /// Still Queued: their tenant already runs as many builds as its cap allows (counted over
    /// every replica). The caller tries them again when a build ends.
    pub over_cap: Vec<i64>,
}

/// The namespace of the session advisory locks each replica holds while it lives
/// (`pg_advisory_lock(namespace, hashtext(replica id))`).
const LIVENESS_LOCKS: i32 = 0x6b69_6c6f;

/// A connection of its own holding `replica`'s liveness lock.
async fn take_liveness(url: &str, replica: &str) -> Result<sqlx::PgConnection> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query("SELECT 1 FROM (SELECT pg_advisory_lock($1, hashtext($2))) held").bind(LIVENESS_LOCKS).bind(replica).execute(&mut conn).await?;
    Ok(conn)
}

/// The namespace of the advisory locks that guard a tenant's cap (the two-key form
/// `pg_advisory_xact_lock(namespace, tenant)`); the webhook keys use the one-key form.
const TENANT_CAP_LOCKS: i32 = 0x6b69_6c6e; // "kiln"

impl Store {
    /// Queued → Running for those of `ids` (in the caller's fair order) that are still Queued and
    /// within their tenant's cap, all in one transaction, claimed for `claim`.
    pub async fn start_builds(&self, ids: &[i64], claim: Claim<'_>) -> Result<Started> {
        if ids.is_empty() {
            return Ok(Started::default());
        }
        let mut tx = self.writer.begin().await?;
        let list = sql_int_list(ids.iter().copied());
        // Every replica hears of every queued build and may try to start the same ones: on
        // PostgreSQL a build another replica is starting right now is skipped, not waited for
        // (it is that one's).
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let queued: Vec<(i64, i64)> = sqlx::query(&format!("SELECT id, tenant_id FROM builds WHERE state = 'Queued' AND id IN ({list}){skip_locked}"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| (r.get::<i64, _>("id"), r.get::<i64, _>("tenant_id")))
            .collect();
        let tenant_of: HashMap<i64, i64> = queued.iter().copied().collect();
        let mut tenants: Vec<i64> = tenant_of.values().copied().collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut room: HashMap<i64, i64> = HashMap::new();
        if !tenants.is_empty() {
            let tenant_list = sql_int_list(tenants.iter().copied());
            let cap = tenant_cap_column(self.backend);
            let capped: Vec<(i64, i64)> = sqlx::query(&format!(
                "SELECT id, cap FROM (SELECT id, {cap} AS cap FROM tenants WHERE id IN ({tenant_list})) t WHERE cap IS NOT NULL ORDER BY id"
            ))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| (r.get::<i64, _>("id"), r.get::<i64, _>("cap")))
            .collect();
            if !capped.is_empty() {
                if self.backend == Backend::Postgres {
                    // In id order, so two replicas never wait on each other in a circle. The
                    // count below is a new statement, so it sees every start committed by
                    // whoever held the lock before.
                    for (tenant, _) in &capped {
                        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1, CAST($2 AS INTEGER))) locked")
                            .bind(TENANT_CAP_LOCKS)
                            .bind(*tenant)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let capped_list = sql_int_list(capped.iter().map(|(t, _)| *t));
                let running: HashMap<i64, i64> = sqlx::query(&format!(
                    "SELECT tenant_id, COUNT(*) AS n FROM builds WHERE state = 'Running' AND tenant_id IN ({capped_list}) GROUP BY tenant_id"
                ))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| (r.get::<i64, _>("tenant_id"), r.get::<i64, _>("n")))
                .collect();
                for (tenant, cap) in capped {
                    room.insert(tenant, (cap - running.get(&tenant).copied().unwrap_or(0)).max(0));
                }
            }
        }
        let mut admitted = vec![];
        let mut over_cap = vec![];
        for id in ids {
            let Some(tenant) = tenant_of.get(id) else { continue };
            match room.get_mut(tenant) {
                Some(0) => over_cap.push(*id),
                Some(left) => {
                    *left -= 1;
                    admitted.push(*id);
                }
                None => admitted.push(*id),
            }
        }
        let mut started = vec![];
        if !admitted.is_empty() {
            let admitted_list = sql_int_list(admitted.iter().copied());
            let sql = format!(
                "UPDATE builds SET state = 'Running', started_at = $1, claimed_by = $2, claim_until = $3,
                        kind = COALESCE(kind, (SELECT NULLIF(a.kind, 'auto') FROM apps a WHERE a.id = builds.app_id))
                 WHERE state = 'Queued' AND id IN ({admitted_list}) RETURNING id"
            );
            let rows = sqlx::query(&sql).bind(now_ms()).bind(claim.replica).bind(claim.until).fetch_all(&mut *tx).await?;
            let done: std::collections::HashSet<i64> = rows.iter().map(|r| r.get::<i64, _>("id")).collect();
            // In the caller's order.
            started = admitted.into_iter().filter(|id| done.contains(id)).collect();
        }
        tx.commit().await?;
        Ok(Started { started, over_cap })
    }

    /// Moves the claims of `replica`'s Running builds to `until`; returns the builds it still
    /// holds (a build missing from the answer ended, or was adopted by another replica because
    /// this one did not renew in time).
    pub async fn renew_claims(&self, replica: &str, until: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query("UPDATE builds SET claim_until = $1 WHERE claimed_by = $2 AND state = 'Running' RETURNING id")
            .bind(until)
            .bind(replica)
            .fetch_all(&self.writer)
            .await?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    /// Claims for `claim` every Running build of another replica that is gone — its claim ran
    /// out before `now`, or (PostgreSQL) the database session in which it holds its liveness
    /// lock ([`Store::hold_liveness`]) ended, as a killed replica's does at once — or that has
    /// no claim (started before claims existed). Returns each with the replica that had it. Two
    /// replicas adopting at once split the builds between them: PostgreSQL skips the rows
    /// another transaction holds.
    pub async fn adopt_expired_claims(&self, claim: Claim<'_>, now: i64) -> Result<Vec<(Build, Option<String>)>> {
        let mut tx = self.writer.begin().await?;
        let sql = match self.backend {
            Backend::Postgres => format!(
                "SELECT id, claimed_by FROM builds
                 WHERE state = 'Running' AND claimed_by IS DISTINCT FROM $1
                   AND (COALESCE(claim_until, 0) < $2 OR claimed_by IS NULL
                        OR pg_try_advisory_xact_lock({LIVENESS_LOCKS}, hashtext(claimed_by)))
                 FOR UPDATE SKIP LOCKED"
            ),
            Backend::Sqlite => "SELECT id, claimed_by FROM builds
                 WHERE state = 'Running' AND (claimed_by IS NULL OR claimed_by <> $1) AND COALESCE(claim_until, 0) < $2"
                .to_string(),
        };
        let orphans: HashMap<i64, Option<String>> = sqlx::query(&sql)
            .bind(claim.replica)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| (r.get::<i64, _>("id"), r.get::<Option<String>, _>("claimed_by")))
            .collect();
        if orphans.is_empty() {
            tx.commit().await?;
            return Ok(vec![]);
        }
        let list = sql_int_list(orphans.keys().copied());
        sqlx::query(&format!("UPDATE builds SET claimed_by = $1, claim_until = $2 WHERE id IN ({list})"))
            .bind(claim.replica)
            .bind(claim.until)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let ids: Vec<i64> = orphans.keys().copied().collect();
        let builds = self.builds_by_ids(&ids).await?;
        Ok(builds.into_iter().map(|b| {
            let previous = orphans.get(&b.id).cloned().flatten();
            (b, previous)
        }).collect())
    }

    /// PostgreSQL: holds this replica's liveness lock for as long as the process lives, on a
    /// connection of its own (reconnecting and taking it again if the connection is lost). Other
    /// replicas adopt the builds of a replica whose lock is free without waiting for its claims
    /// to run out. None on SQLite (one process).
    pub async fn hold_liveness(&self, replica: &str) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(url) = self.database_url.clone() else { return Ok(None) };
        let replica = replica.to_string();
        let mut conn = take_liveness(&url, &replica).await?;
        Ok(Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                if sqlx::query("SELECT 1").execute(&mut conn).await.is_ok() {
                    continue;
                }
                tracing::warn!("the connection holding this replica's liveness lock was lost; taking it again");
                loop {
                    match take_liveness(&url, &replica).await {
                        Ok(fresh) => {
                            conn = fresh;
                            break;
                        }
                        Err(e) => {
                            tracing::error!("taking this replica's liveness lock again: {e}");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        })))
    }

    /// A replica that stops hands its claims back: they run out at once, so another replica
    /// adopts the builds on its next look instead of after the lease.
    pub async fn release_claims(&self, replica: &str) -> Result<u64> {
        let done = sqlx::query("UPDATE builds SET claim_until = 0 WHERE claimed_by = $1 AND state = 'Running'")
            .bind(replica)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    /// Who holds the claim on a build, and until when (for tests and the build's log).
    pub async fn claim_of(&self, id: i64) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT claimed_by, claim_until FROM builds WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.and_then(|r| {
            let by: Option<String> = r.get("claimed_by");
            let until: Option<i64> = r.get("claim_until");
            Some((by?, until.unwrap_or(0)))
        }))
    }
}
